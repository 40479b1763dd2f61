"""A deliberately plain, slow reference implementation of the default-mode physics.

This module is a referee for the numba/CUDA kernels: it recomputes the image
from the formulas of nanoBragg's model, one sub-path at a time, in float64 and
plain Python.  It shares no code with the kernels: it does not import
``physics``, ``kernels``, ``geometry``, ``sampling``, ``sources`` or the derived
arrays of ``model``.  It takes the parsed ``Config`` (flag parsing is not
physics) and reads input files with the project's readers (``io``).

Random draws are the only thing borrowed: the mosaic domains' deviates come from
``nbnumba.rng.ran1`` (the C-compatible generator; the rotations are made here), and a random
misset (``-misset random``) is the orientation that the project's misset-random
code path (``nbnumba.crystal.build_crystal``) draws for the seed.  Everything the
draws are then used for (rotation of the cell, of the phi steps, ...) is
computed here.

Default mode only (not ``-c_parity``): where nanoBragg.c has a defect, this
module follows the corrected behaviour of docs/quirks.md and issue 11, and
docs/reference.md states each choice.  In particular:

* sensor layers: N layers of thickness thick/N cover exactly the sensor
  (nanoBragg.c: thick/(N-1), and 1 layer becomes 2);
* each layer's intensity is weighted by its own capture fraction, and the
  layer is sampled at its middle, depth (t + 1/2) thick/N (nanoBragg.c: its
  front face, depth t thick/N; docs/quirks.md #39);
* with ``-oversample_omega`` a layer's solid angle has the obliquity of its
  own plane, (close + depth)/R (nanoBragg.c: close/R, the front plane's;
  #42); without it the pixel's one solid angle is its first sub-pixel's on
  the sensor's face (depth 0), as nanoBragg.c's;
* an ``-oversample_*`` switch multiplies each sub-path's term by its own factor
  (no running-sum multiplication);
* the water background gets the same detector factors as the Bragg term: for
  each sensor layer, the mean over the layer's sub-pixels and sources of
  capture x polarization x solid angle, each factor per sub-path when its
  ``-oversample_*`` switch is on, else the pixel's first value; the
  background is not divided by the step count (nanoBragg adds it once per
  pixel and divides it with the sum of the sub-path terms, so that it falls
  as 1/steps: docs/quirks.md #19);
* the water background is scaled by r_e^2 x fluence once (nanoBragg.c twice:
  its background grows as fluence^2; the default fluence is 1/r_e^2, where the
  two agree; docs/quirks.md #14);
* the unit cell is the requested one (nanoBragg.c's default orientation gets
  c*_z = sin(gamma)/(c sin(gamma*)) instead of 1/c, so triclinic and
  rhombohedral cells come out with slightly different angles; docs/quirks.md #13);
* phi = 0 uses the unrotated cell; tricubic interpolation falls back to the
  nearest neighbour per sub-path, and reaches every point whose 4-point
  stencils lie in the table (nanoBragg.c stops one index short of each edge;
  docs/quirks.md #34);
* each -sourcefile source's terms are weighted by its relative intensity,
  the fourth column, over the mean (nanoBragg.c counts every source once;
  docs/quirks.md #20), the background's per-source share too;
* -curved_det rolls the plane onto the sphere that touches it at its point
  nearest the sample, each in-plane offset an arc (nanoBragg.c's map mirrors
  the detector's axes and holds only for a beam along x; docs/quirks.md #21).

Units: lengths in metres, angles in radians, wavelengths in metres,
scattering vectors in 1/m, intensities in photons per pixel.
"""
from __future__ import annotations

import math
import os

import numpy as np

R_E_SQR = 7.94079248018965e-30      # classical electron radius squared, m^2
AVOGADRO = 6.02214179e23            # 1/mol
WATER_F = 2.57                      # electrons, forward scattering of one water molecule
WATER_MW = 18.0                     # g/mol
WATER_DENSITY = 1.0e6               # g/m^3
SOURCE_DISTANCE = 10.0              # m (only its direction matters)
ROUND_NORM = 0.723601254558268      # nanoBragg's normalisation of the round-crystal transform


# ---------------------------------------------------------------- small linear algebra
def _vec(v):
    return np.array([float(v[0]), float(v[1]), float(v[2])])


def _unit(v):
    n = float(np.sqrt(v @ v))
    return (v / n if n != 0.0 else v), n


def axis_rotation(axis, angle):
    """3x3 matrix of a right-handed rotation by ``angle`` (rad) about unit ``axis``
    (Rodrigues: R = cos I + sin [k]x + (1 - cos) k k^T)."""
    k = np.asarray(axis, dtype=float)
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return math.cos(angle) * np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * np.outer(k, k)


def xyz_rotation(rx, ry, rz):
    """Rotation about x by rx, then y by ry, then z by rz (rad): Rz @ Ry @ Rx."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=float)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=float)
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=float)
    return Rz @ Ry @ Rx


# ---------------------------------------------------------------- sampling rules
def _sweep(rng, step, n, count_only_range):
    """A swept range (divergence, dispersion) given any of (range, step, count)
    (-1 / <= 0 = not given), as the default mode samples it: the band of the
    returned range cut into n cells of the returned step, a point at the
    middle of each, step * (i - (n - 1) / 2) (docs/quirks.md #44; nanoBragg.c
    puts its end points on the band's edges, so that a flat band's spread is
    (n + 1)/(n - 1) times too wide).  A range alone is 2 cells; a range and a
    count that count (1: the beam alone); a range and a step ceil(range/step)
    cells (within 1e-12 of an integer: that integer), the step shrunk to fill
    the range; a step alone 2 cells of it, a step and a count that count.
    (count_only_range: the C's width for a count alone, which the default mode
    refuses before it gets here, as it refuses three that disagree.)"""
    if rng == 0.0 or (rng < 0.0 and step <= 0.0):
        return (0.0, 0.0, 1) if n <= 0 or rng == 0.0 else (count_only_range,
                                                             count_only_range / n, n)
    if n <= 0:
        # (a range and a step: at least one cell, though range/step underflow)
        n = 2 if (step <= 0.0 or rng < 0.0) else max(1, _count(rng / step))
    if rng < 0.0:
        return n * step, step, n
    return rng, rng / n, n


def _layers(thick, step, n):
    """Sensor depth sampling (thickness m, layer thickness m, count).  The count
    follows nanoBragg's rules (2 for a bare thickness, thick/step layers for a
    given step, 0.5 um when only a count is given); the layers then always tile
    the sensor: thickness/count each (nanoBragg.c: thick/(count-1), 1 -> 2)."""
    if thick < 0.0:
        if step <= 0.0:
            if n <= 0:
                return 0.0, 0.0, 1
            thick = 0.5e-6
        else:
            thick = step * (n if n > 0 else 1)
    if n <= 0:
        n = 2 if step <= 0.0 else _count(thick / step)
    if thick <= 0.0 or n <= 0:
        return 0.0, 0.0, 1
    return thick, thick / n, n


def _count(ratio):
    """Steps of a range: the ceiling of range/step, where a ratio that exceeds
    an integer by no more than 1e-12 of itself (two decimals that divide
    exactly, rounded to binary: 1.1/0.1) is that integer (docs/quirks.md #25;
    nanoBragg.c takes the plain ceiling)."""
    return int(math.ceil(ratio * (1.0 - 1e-12)))


def _sane(t):
    rng, step, n = t
    return t if (rng > 0.0 and step > 0.0 and n > 0) else (0.0, 0.0, 1)


def sampling(cfg):
    """Resolved step counts: dict of phi0 (the first phi point), phistep, phisteps, hdiv/vdiv
    (range, step, n), disp (range, step, n), thick (m, step m, layers), mu (1/m),
    mosaic spread (rad) and domains."""
    n, osc, step = cfg.phisteps, cfg.osc, cfg.phistep
    if n < 0:
        if osc < 0.0:
            n, osc, step = (1, 0.0, 0.0) if step <= 0.0 else (2, step, step)
        else:
            # (at least one step: -osc 0 with a step is the still)
            n, step = (2, osc / 2.0) if step <= 0.0 else (max(1, _count(osc / step)), step)
            if osc > 0.0:
                # the n steps share the oscillation, whether or not the step
                # divides it (quirk 46; nanoBragg.c renders n whole steps)
                step = osc / n
    else:
        n = max(n, 1)
        if osc < 0.0:
            if step <= 0.0:
                osc = math.pi / 180.0
                step = osc / n
            else:
                osc = step * n      # (nanoBragg.c: one step of 2 points; #28 keeps the count)
        elif step < 0.0:
            step = osc / n
    # the points are a step apart and centred in the oscillation [phi0, phi0 + osc]
    # (docs/quirks.md #28; nanoBragg.c's start at phi0); (a disagreeing -osc,
    # -phistep, -phisteps is refused before this)
    phi_first = cfg.phi0 + 0.5 * (osc - step * (n - 1))
    thick = _layers(cfg.detector_thick, cfg.detector_thickstep, cfg.detector_thicksteps)
    mu = cfg.detector_mu
    if mu == 0.0:
        # no absorption (-detector_abs 0 or inf, before or after -detector_thick):
        # every photon counts, no sensor model (quirk 40)
        thick = (0.0, 0.0, 1)
    if thick[0] > 0.0 and mu < 0.0:
        mu = 1.0 / thick[0]     # attenuation depth = thickness when not given
    thick = _sane(thick)
    spread, doms = cfg.mosaic_spread, cfg.mosaic_domains
    if spread <= 0.0:
        spread, doms = 0.0, 1
    elif doms <= 0:
        doms = 10
    return dict(phi0=phi_first, phistep=step, phisteps=n,
                hdiv=_sane(_sweep(cfg.hdivrange, cfg.hdivstep, cfg.hdivsteps, 1.0)),
                vdiv=_sane(_sweep(cfg.vdivrange, cfg.vdivstep, cfg.vdivsteps, 1.0)),
                disp=_sane(_sweep(cfg.dispersion, cfg.dispstep, cfg.dispsteps, 1.0)),
                thick=thick, mu=mu, mosaic_spread=spread, mosaic_domains=doms)


# ---------------------------------------------------------------- detector
_BASES = {   # beam, fast, slow, normal, twotheta axis, polarization, spindle
    "MOSFLM": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "DENZO": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "ADXV": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "XDS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "DIALS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)),
}


def detector(cfg):
    """Lab-frame detector: dict with fpixels, spixels, pixel (m), fdet, sdet,
    odet (unit), pix0 (m, corner of the first pixel), beam, polar, spindle (unit),
    distance (m, along the beam), close (m, along the normal)."""
    p = cfg.pixel_size
    dsf = p * cfg.fpixels if cfg.fpixels else cfg.detsize_f
    dss = p * cfg.spixels if cfg.spixels else cfg.detsize_s
    nf, ns = int(round(dsf / p)), int(round(dss / p))
    conv = cfg.beam_convention
    if conv in _BASES:
        beam, f, s, o, tt, pol, spin = (_vec(v) for v in _BASES[conv])
    else:
        beam, f, s, o = _vec(cfg.beam_vector), _vec(cfg.fdet_vector), _vec(cfg.sdet_vector), _vec(cfg.odet_vector)
        tt, pol, spin = _vec(cfg.twotheta_axis), _vec(cfg.polar_vector), _vec(cfg.spindle_vector)
    # "close" point: the foot of the normal from the sample (SAMPLE pivot)
    fc = (cfg.ORGX - 0.5) * p if not math.isnan(cfg.ORGX) else dsf / 2.0
    sc = (cfg.ORGY - 0.5) * p if not math.isnan(cfg.ORGY) else dss / 2.0
    xc = fc if math.isnan(cfg.Xclose) else cfg.Xclose
    yc = sc if math.isnan(cfg.Yclose) else cfg.Yclose
    xb, yb = cfg.Xbeam, cfg.Ybeam
    pivot = cfg.detector_pivot
    if conv == "ADXV":
        xb = (dsf + p) / 2.0 if math.isnan(xb) else xb
        yb = (dss - p) / 2.0 if math.isnan(yb) else yb
        fb, sb, pivot = xb, dss - yb, "BEAM"
    elif conv in ("MOSFLM", "DENZO"):
        xb = (dss + p) / 2.0 if math.isnan(xb) else xb
        yb = (dsf + p) / 2.0 if math.isnan(yb) else yb
        shift = 0.5 * p if conv == "MOSFLM" else 0.0
        fb, sb, pivot = yb + shift, xb + shift, "BEAM"
    else:
        xb = xc if math.isnan(xb) else xb
        yb = yc if math.isnan(yb) else yb
        fb, sb = xb, yb
        if conv in ("XDS", "DIALS"):
            pivot = "SAMPLE"
        else:
            fc, sc = xb, yb
    beam, f, s = _unit(beam)[0], _unit(f)[0], _unit(s)[0]
    o, on = _unit(o)
    if on != 1.0:
        # nanoBragg's normal for a -odet_vector not of length 1, on the given
        # vector's side (the C's may face the other way: docs/quirks.md #18)
        g = _unit(np.cross(f, s))[0]
        o = -g if float(g @ o) < 0.0 else g
    pol, spin = _unit(pol)[0], _unit(spin)[0]
    # a rotation's axis is a direction: nanoBragg.c turns the detector about
    # the -twotheta_axis as given, and one not of length 1 stretches and
    # shears the detector's axes (0 2 0 at 10 degrees: |sdet| = 1.0456)
    tt = _unit(tt)[0]
    Rxyz = xyz_rotation(cfg.detector_rotx, cfg.detector_roty, cfg.detector_rotz)
    R = axis_rotation(tt, cfg.detector_twotheta) @ Rxyz
    # the beam distance and the normal distance differ by the tilt: -distance
    # sets the unswung detector's (the two-theta arm's length with the sample
    # pivot), a -close_distance with the beam pivot the swung one's, and the
    # distance that is reported is the beam's path to the final plane
    # (docs/quirks.md #31; nanoBragg.c takes the unswung ratio throughout)
    def _ratio(M):
        r = float(beam @ (M @ o))
        return r if r != 0.0 else 2.2250738585072014e-308
    ratio, swung = _ratio(Rxyz), _ratio(R)
    if math.isnan(cfg.close_distance):
        close = abs(ratio * cfg.distance)
        distance = close / ratio
    else:
        close = cfg.close_distance
        distance = close / (swung if pivot == "BEAM" else ratio)
    if pivot == "SAMPLE":
        pix0 = R @ (-fc * f - sc * s + close * o)
    f, s, o = R @ f, R @ s, R @ o
    if pivot == "BEAM":
        pix0 = -fb * f - sb * s + distance * beam
    if cfg.pix0_set:
        pix0 = _vec(cfg.pix0_vector)
    close = float(pix0 @ o)
    return dict(fpixels=nf, spixels=ns, pixel=p, fdet=f, sdet=s, odet=o, pix0=pix0, beam=beam,
                polar=pol, spindle=spin, distance=close / swung, close=close)


# ---------------------------------------------------------------- crystal
def _cell(cfg):
    """(a, b, c (A), alpha, beta, gamma (rad)) of -cell, with the flags' defaults
    (b, c = a; right angles)."""
    a = cfg.cell_a
    b = cfg.cell_b if cfg.cell_b > 0 else a
    c = cfg.cell_c if cfg.cell_c > 0 else a
    al, be, ga = (x if x > 0 else math.pi / 2 for x in (cfg.cell_alpha, cfg.cell_beta, cfg.cell_gamma))
    return a, b, c, al, be, ga


def cell_volume(a, b, c, al, be, ga):
    """Volume (A^3) of a cell (A, rad)."""
    return a * b * c * math.sqrt(max(0.0, 1 - math.cos(al) ** 2 - math.cos(be) ** 2 - math.cos(ga) ** 2
                                     + 2 * math.cos(al) * math.cos(be) * math.cos(ga)))


def reciprocal_from_cell(a, b, c, al, be, ga):
    """Reciprocal vectors (rows a*, b*, c*; 1/A) of a cell (A, rad) in nanoBragg's
    standard frame: a* along x, b* in the x-y plane."""
    V = cell_volume(a, b, c, al, be, ga)
    ast, bst, cst = b * c * math.sin(al) / V, c * a * math.sin(be) / V, a * b * math.sin(ga) / V
    cas = (math.cos(be) * math.cos(ga) - math.cos(al)) / (math.sin(be) * math.sin(ga))
    cbs = (math.cos(ga) * math.cos(al) - math.cos(be)) / (math.sin(ga) * math.sin(al))
    cgs = (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be))
    sgs = math.sqrt(1.0 - cgs * cgs)
    return np.array([[ast, 0.0, 0.0],
                     [bst * cgs, bst * sgs, 0.0],
                     [cst * cbs, cst * (cas - cbs * cgs) / sgs,
                      cst * math.sqrt(max(0.0, 1 - cbs ** 2 - ((cas - cbs * cgs) / sgs) ** 2))]])


def _random_misset(cfg, rng_state):
    """The misset angles (rad) of -misset random, drawn by the project's code path."""
    from .crystal import build_crystal
    seed = cfg.misset_seed if cfg.misset_seed is not None else cfg.seed
    return build_crystal(cfg, None, cfg.lambda0, rng_state, seed).misset


def crystal(cfg, rng_state, det):
    """Real-space cell (rows a, b, c in metres), reciprocal rows (1/A) after the
    misset, and (Na, Nb, Nc).  det: ``detector(cfg)`` (the beam, for the beam's
    clip)."""
    if cfg.matfilename is not None:
        from .io.mat import read_mosflm_mat
        path = cfg.matfilename
        if cfg.workdir and not os.path.isabs(path):
            path = os.path.join(cfg.workdir, path)
        recip = np.asarray(read_mosflm_mat(path), dtype=float) * (1e-10 / cfg.lambda0)
        if cfg.beam_convention in _BASES:
            # the file's vectors are in MOSFLM's frame (beam x, spindle z): the
            # rotation that takes that beam and spindle to this convention's
            # puts the crystal in its lab (CUSTOM: the user's own frame, kept)
            beam, spin = np.array(_BASES[cfg.beam_convention][0]), np.array(_BASES[cfg.beam_convention][6])
            mos_b, mos_s = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
            turn = (np.column_stack([beam, spin, np.cross(beam, spin)])
                    @ np.column_stack([mos_b, mos_s, np.cross(mos_b, mos_s)]).T)
            recip = recip @ turn.T
    else:
        recip = reciprocal_from_cell(*_cell(cfg))
    if cfg.misset_mode == -1:
        rx, ry, rz = _random_misset(cfg, rng_state)
        recip = (xyz_rotation(rx, ry, rz) @ recip.T).T
    elif cfg.misset_mode > 0:
        recip = (xyz_rotation(*cfg.misset) @ recip.T).T
    # real-space rows: A @ recip^T = identity
    real = np.linalg.inv(recip).T * 1e-10
    if cfg.matfilename is not None and cfg.user_cell:
        # -cell with -mat: nanoBragg makes "any user-supplied cell take".  The
        # real axes keep the matrix's directions (those of b* x c*, c* x a*,
        # a* x b*) and get the -cell edge lengths; the reciprocal rows are then
        # the real cross products over the -cell volume, so the angles are the
        # matrix's and a.a* need not be 1
        cell = _cell(cfg)
        a, b, c = cell[:3]
        V = cell_volume(*cell)
        dirs = [np.cross(recip[1], recip[2]), np.cross(recip[2], recip[0]), np.cross(recip[0], recip[1])]
        real_A = np.array([_unit(d)[0] * L for d, L in zip(dirs, (a, b, c))])
        recip = np.array([np.cross(real_A[1], real_A[2]), np.cross(real_A[2], real_A[0]),
                          np.cross(real_A[0], real_A[1])]) / V
        real = real_A * 1e-10
    lens = np.sqrt((real * real).sum(axis=1))
    Ns = [cfg.Na, cfg.Nb, cfg.Nc]
    sizes = [cfg.sample_x, cfg.sample_y, cfg.sample_z]
    if cfg.beamsize > 0:
        # a beam beamsize wide takes of each edge what it spans across the beam
        # (the crystal as mounted, the spindle at 0); nanoBragg.c cuts its b and
        # c sizes to the width, the rule for a crystal whose a is along the beam
        # (docs/quirks.md #30)
        for i in range(3):
            across = np.linalg.norm(np.cross(real[i] / lens[i], det["beam"]))
            if sizes[i] * across > cfg.beamsize:
                sizes[i] = cfg.beamsize / across
    elif cfg.beamsize == 0:     # (the C's cut to nothing: sizes along b, c not given)
        sizes[1] = min(sizes[1], 0.0)
        sizes[2] = min(sizes[2], 0.0)
    for i, size in enumerate(sizes):
        if size > 0:
            Ns[i] = _count(size / lens[i])
    Ns = [float(max(x, 1.0)) for x in Ns]
    return real, recip, Ns


# ---------------------------------------------------------------- sources
def sources(cfg, det, smp):
    """(incident unit vectors (n, 3), wavelengths (n,), m, relative intensities
    (n,): -sourcefile's weights scaled to sum to n, a missing one 1; all 1 for
    generated sources)."""
    if cfg.sourcefilename is not None:
        from .io.textcols import read_text_columns
        path = cfg.sourcefilename
        if cfg.workdir and not os.path.isabs(path):
            path = os.path.join(cfg.workdir, path)
        inc, lam, wts = [], [], []
        for row in read_text_columns(path, 5):
            x, y, z, w, l = (float(v) for v in row)
            wts.append(1.0 if math.isnan(w) else w)
            pos = np.array([x, y, z])
            # a missing coordinate puts the source on the beam axis
            dflt = -SOURCE_DISTANCE * det["beam"]
            pos = np.where(np.isnan(pos), dflt, pos)
            inc.append(-_unit(pos)[0])
            lam.append(cfg.lambda0 if math.isnan(l) else l)
        # each source's photons in proportion to its weight, the total kept; a
        # source of weight 0 is not there
        wts = np.array(wts)
        on = wts > 0.0
        return np.array(inc)[on], np.array(lam)[on], wts[on] * (on.sum() / wts.sum())
    hr, hs, hn = smp["hdiv"]
    vr, vs, vn = smp["vdiv"]
    dr, ds, dn = smp["disp"]
    vert = _unit(np.cross(det["beam"], det["polar"]))[0]
    # the vertical sweep turns about the E-vector across the beam (docs/quirks.md
    # #36): the polarization axis less its component along the beam
    e_axis = np.cross(vert, det["beam"])
    inc, lam = [], []
    for i in range(hn):
        for j in range(vn):
            h = hs * (i - (hn - 1) / 2.0)
            v = vs * (j - (vn - 1) / 2.0)
            if cfg.round_div:
                # the cell centres inside the ellipse of the full widths; a
                # zero-width direction does not cut
                t = (h / (hr / 2.0)) ** 2 if hr > 0 else 0.0
                t += (v / (vr / 2.0)) ** 2 if vr > 0 else 0.0
                if t > 1.0:
                    continue
            d = axis_rotation(vert, h) @ (axis_rotation(e_axis, v) @ det["beam"])
            for k in range(dn):
                inc.append(_unit(d)[0])
                lam.append(cfg.lambda0 * (1.0 + ds * (k - (dn - 1) / 2.0)))
    return np.array(inc), np.array(lam), np.ones(len(lam))


# ---------------------------------------------------------------- structure factors
def _grid(cfg):
    if cfg.hkl_grid is not None:
        return cfg.hkl_grid
    if cfg.hklfilename is not None:
        from .io.hkl import read_hkl
        path = cfg.hklfilename
        if cfg.workdir and not os.path.isabs(path):
            path = os.path.join(cfg.workdir, path)
        return read_hkl(path, cfg.default_F)
    return None


def _lagrange(x0, x):
    """Weights of the 4-point Lagrange polynomial on nodes x0..x0+3 at x."""
    nodes = [x0 + i for i in range(4)]
    w = []
    for i in range(4):
        t = 1.0
        for j in range(4):
            if j != i:
                t *= (x - nodes[j]) / (nodes[i] - nodes[j])
        w.append(t)
    return w


class StructureFactors:
    """F(h, k, l): nearest neighbour (default_F outside the table) or tricubic."""

    def __init__(self, cfg, Ns=None):
        """``Ns``: the crystal's cell counts (Na, Nb, Nc) after its size and the
        beam's cut, which the automatic -interpolate choice reads (nanoBragg.c
        reads the -N flags before the sizes set them: quirk 43); None: the flags'."""
        g = _grid(cfg)
        self.default_F = cfg.default_F
        self.n = int(g.hkls) if g is not None else 0
        if self.n:
            self.F = np.asarray(g.F, dtype=float)
            self.lo = (g.h_min, g.k_min, g.l_min)
            self.hi = (g.h_max, g.k_max, g.l_max)
        interp = cfg.interpolate
        if interp > 1:
            Na, Nb, Nc = Ns if Ns is not None else (cfg.Na, cfg.Nb, cfg.Nc)
            interp = int(Na <= 2 or Nb <= 2 or Nc <= 2)
        self.interpolate = bool(interp) and self.n > 0

    def nearest(self, i):
        if self.n and all(self.lo[a] <= i[a] <= self.hi[a] for a in range(3)):
            return float(self.F[i[0] - self.lo[0], i[1] - self.lo[1], i[2] - self.lo[2]])
        return self.default_F

    def stencil_fits(self, hkl):
        """Whether the 4-point stencils floor(x)-1 .. floor(x)+2 lie in the
        table on every axis: lo+1 <= floor(x) <= hi-2, integers compared with
        integers.  nanoBragg.c asks for lo+2 <= x <= hi-2, which refuses the
        interpolation its table allows between lo+1 and lo+2 and between hi-2
        and hi-1 (docs/quirks.md #34); the stencil is the only limit here."""
        if not all(math.isfinite(x) for x in hkl):
            return False
        return all(self.lo[a] + 1 <= math.floor(hkl[a]) <= self.hi[a] - 2 for a in range(3))

    def __call__(self, hkl, nearest_idx):
        if self.interpolate and self.stencil_fits(hkl):
            base = [math.floor(x) - 1 for x in hkl]
            w = [_lagrange(base[a], hkl[a]) for a in range(3)]
            tot = 0.0
            for i in range(4):
                for j in range(4):
                    for k in range(4):
                        tot += (w[0][i] * w[1][j] * w[2][k]
                                * self.F[base[0] + i - self.lo[0], base[1] + j - self.lo[1],
                                         base[2] + k - self.lo[2]])
            return tot
        return self.nearest(nearest_idx)


# ---------------------------------------------------------------- lattice transforms
def grating(h, N):
    """sin(N pi h) / sin(pi h) (N at integer h), the interference function of N
    unit cells.  For integer N the periodic identity
    sin(N pi (n + d)) / sin(pi (n + d)) = (-1)^(n (N-1)) sin(N pi d) / sin(pi d)
    keeps the sine arguments small (accurate for any h).  Where |N d| < 1e-8
    the ratio is its series N (1 - ((N pi d)^2 - (pi d)^2) / 6), whose next
    term is below 1e-32 there: the quotient of the sines would keep only the
    digits of two subnormals when pi d is one (h = 2.6e-322 at N = 5 gave
    4.988, not 5)."""
    if N != int(N):
        if abs(N * h) < 1e-8:
            return _grating_series(h, N)
        return math.sin(N * math.pi * h) / math.sin(math.pi * h) if math.sin(math.pi * h) != 0 else N
    n = round(h)
    d = h - n
    sign = -1.0 if (int(n) * (int(N) - 1)) % 2 else 1.0
    if d == 0.0:
        return sign * N
    if abs(N * d) < 1e-8:
        return sign * _grating_series(d, N)
    return sign * math.sin(N * math.pi * d) / math.sin(math.pi * d)


def _grating_series(d, N):
    """sin(N pi d) / sin(pi d) for |N d| < 1e-8, to its second order (the
    squares taken apart, so no N^2 overflows)."""
    t, x = N * math.pi * d, math.pi * d
    return N * (1.0 - (t * t - x * x) / 6.0)


def sphere_transform(x):
    """3 (sin x - x cos x) / x^3, the transform of a uniform sphere (1 at x = 0).
    Below |x| = 1 the closed form cancels (about 6 eps / x^2 of the value), so
    there its Taylor series is summed term by term until the terms vanish:
    t_0 = 1, t_m = -t_(m-1) x^2 / (2m (2m + 3))."""
    if abs(x) < 1.0:
        total, term, m = 1.0, 1.0, 0
        while abs(term) > 1e-18 * abs(total):
            m += 1
            term *= -x * x / (2 * m * (2 * m + 3))
            total += term
        return total
    return 3.0 * (math.sin(x) / x - math.cos(x)) / (x * x)


def lattice_factor(shape, hkl, idx, Ns, recip, fudge):
    """F_latt of one sub-path.  hkl: fractional indices; idx: nearest integers;
    recip: rows a*, b*, c* (1/A, unrotated by phi/mosaic) for the gauss/tophat
    spot radius."""
    Na, Nb, Nc = Ns
    if shape == "SQUARE":
        out = 1.0
        for x, N in zip(hkl, Ns):
            if N > 1:
                out *= grating(x, N)
        return out
    d = [hkl[a] - idx[a] for a in range(3)]
    if shape == "ROUND":
        r2 = (d[0] * Na) ** 2 + (d[1] * Nb) ** 2 + (d[2] * Nc) ** 2
        return Na * Nb * Nc * ROUND_NORM * sphere_transform(math.pi * math.sqrt(r2 * fudge))
    dq = d[0] * recip[0] + d[1] * recip[1] + d[2] * recip[2]
    # the radius in units of the crystal's own reciprocal size: |dq|^2 times the
    # crystal's volume (A^3) to the 2/3 (nanoBragg.c's (Na Nb Nc)^2 is not
    # dimensionless: docs/quirks.md #16)
    crystal_volume = Na * Nb * Nc / abs(float(np.linalg.det(np.asarray(recip, dtype=float))))
    r2 = float(dq @ dq) * crystal_volume ** (2.0 / 3.0)
    if shape == "GAUSS":
        return Na * Nb * Nc * math.exp(-r2 / 0.63 * fudge)
    return Na * Nb * Nc if r2 * fudge < 0.3969 else 0.0


# ---------------------------------------------------------------- detector factors
def polarization(kahn, incident, diffracted, e_axis):
    """Kahn et al. polarization factor 1/2 (1 + cos^2 2th - K cos(2 psi) sin^2 2th)."""
    c2 = float(incident @ diffracted)
    psi = 0.0
    if kahn != 0.0:
        B = _unit(np.cross(e_axis, incident))[0]
        E = _unit(np.cross(incident, B))[0]
        psi = -math.atan2(float(diffracted @ B), float(diffracted @ E))
    return 0.5 * (1.0 + c2 * c2 - kahn * math.cos(2.0 * psi) * (1.0 - c2 * c2))


def solid_angle(pixel, R, close, point):
    """Solid angle (sr) of a pixel seen at distance R: pixel^2/R^2 times the
    obliquity close/R, or 1/R^2 for a point pixel."""
    return 1.0 / (R * R) if point else pixel * pixel / (R * R) * close / R


def capture(layer, step, mu, cos_in):
    """Fraction of photons absorbed in sensor layer ``layer`` (depths
    layer*step .. (layer+1)*step, m) by a sensor of attenuation mu (1/m), for a
    ray at cos_in to the normal."""
    return math.exp(-mu * layer * step / cos_in) - math.exp(-mu * (layer + 1) * step / cos_in)


# ---------------------------------------------------------------- the image
def setup(cfg):
    """Everything the pixel loop needs (a dict)."""
    from .rng import RngState, ran1
    smp = sampling(cfg)
    det = detector(cfg)
    rng_state = RngState()
    real, recip, Ns = crystal(cfg, rng_state, det)
    # mosaic domains: three deviates of the C-compatible generator each, an axis
    # uniform on the sphere and an angle spread |r3|^(1/3), rotation vectors
    # uniform in the ball of the spread (nanoBragg.c's angle, spread (1 -
    # r3^2)^(1/3), piles up at its edge: quirk 38); every domain is a draw
    # (nanoBragg.c makes the first the unrotated crystal: quirk 29)
    idum = np.array([cfg.mosaic_seed], dtype=np.int64)

    def domain():
        r1, r2, r3 = (2.0 * float(ran1(idum, rng_state.buf)) - 1.0 for _ in range(3))
        rho = math.sqrt(1.0 - r2 * r2)
        axis = np.array([rho * math.sin(math.pi * r1), rho * math.cos(math.pi * r1), r2])
        return axis_rotation(axis, smp["mosaic_spread"] * abs(r3) ** (1.0 / 3.0))
    umats = [domain() for _ in range(smp["mosaic_domains"])]
    if smp["mosaic_spread"] <= 0:
        umats = [np.eye(3)] * smp["mosaic_domains"]
    cells = []
    for t in range(smp["phisteps"]):
        Rphi = axis_rotation(det["spindle"], smp["phi0"] + smp["phistep"] * t)
        for U in umats:
            # a block of the crystal turns with it: its misorientation first,
            # then the spindle (quirk 41; nanoBragg.c: U Rphi)
            M = Rphi @ U
            cells.append([M @ real[0], M @ real[1], M @ real[2]])
    inc, lam, wts = sources(cfg, det, smp)
    fluence = cfg.fluence
    if cfg.flux != 0.0 and cfg.exposure > 0.0 and cfg.beamsize >= 0:
        fluence = cfg.flux * cfg.exposure / cfg.beamsize ** 2
    oversample = cfg.oversample
    if oversample <= 0:
        lens = np.sqrt((real * real).sum(axis=1))
        biggest = max(lens[i] * Ns[i] for i in range(3))
        oversample = max(1, int(math.ceil(3.0 * biggest / (cfg.lambda0 * det["distance"] / det["pixel"]))))
    # water background in the units of F^2 (electrons^2): F_water^2 times the number of
    # molecules the beam crosses, a cube of side -water cut to the beam's width across
    # it (quirk 37); r_e^2 * fluence is applied once, with the Bragg term (nanoBragg.c
    # also puts r_e^2 * fluence into I_bg: a fluence^2 background)
    t = cfg.water_size
    width = min(t, cfg.beamsize) if cfg.beamsize > 0 else t
    I_bg = WATER_F ** 2 * t * width ** 2 * WATER_DENSITY * AVOGADRO / WATER_MW
    return dict(cfg=cfg, smp=smp, det=det, recip=recip, Ns=Ns, cells=cells, inc=inc, lam=lam, wts=wts,
                fluence=fluence, oversample=oversample, I_bg=I_bg, F=StructureFactors(cfg, Ns))


def bend_onto_sphere(det, Fd, Sd, depth):
    """-curved_det (the corrected model, quirk 21): the flat detector rolled onto
    the sphere about the sample that it touches at its point nearest the
    sample.  The point (Fd, Sd) of the flat plane, at distance rho from that
    point, goes to the great circle through it in the same direction, at arc
    length rho: the normal turned by rho/close about normal x direction.
    A sensor layer's depth moves it outward along the radius."""
    n = det["odet"]
    foot = det["close"] * n
    flat = det["pix0"] + Fd * det["fdet"] + Sd * det["sdet"]
    off = flat - foot
    off = off - (off @ n) * n          # (in the plane)
    rho = math.sqrt(float(off @ off))
    r = det["close"] + depth
    if rho == 0.0:
        return r * n
    axis = np.cross(n, off / rho)
    return r * (axis_rotation(axis, rho / det["close"]) @ n)


def pixel_value(S_, f_, st):
    """Photons in pixel (slow S_, fast f_), float64."""
    cfg, det, smp = st["cfg"], st["det"], st["smp"]
    os_ = st["oversample"]
    sub = det["pixel"] / os_
    thick, tstep, layers = smp["thick"]
    mu = smp["mu"]
    ncells = len(st["cells"])
    nsrc = len(st["lam"])
    steps = nsrc * ncells * os_ * os_
    omega0 = None      # the pixel's first solid angle, polarization and capture
    polar0 = None
    polar_cut = None
    bragg = 0.0
    bg = 0.0
    for L in range(layers):
        depth = (L + 0.5) * tstep       # the layer's middle (#39)
        cap0 = None
        bg_terms = []   # (capture, polarization or None, omega, source weight) per sub-path
        for sS in range(os_):
            for sF in range(os_):
                Fd = sub * (f_ * os_ + sF) + sub / 2.0
                Sd = sub * (S_ * os_ + sS) + sub / 2.0
                pos = det["pix0"] + Fd * det["fdet"] + Sd * det["sdet"] + depth * det["odet"]
                if cfg.curved_detector:
                    pos = bend_onto_sphere(det, Fd, Sd, depth)
                dvec, R = _unit(pos)
                # (a curved pixel faces the sample: no obliquity; a flat layer's
                # plane lies at close + depth: #42)
                om = solid_angle(det["pixel"], R, R if cfg.curved_detector else det["close"] + depth,
                                 cfg.point_pixel)
                if omega0 is None:
                    # the pixel's one solid angle: on the sensor's face (depth 0)
                    face = det["pix0"] + Fd * det["fdet"] + Sd * det["sdet"]
                    if cfg.curved_detector:
                        face = bend_onto_sphere(det, Fd, Sd, 0.0)
                    R0 = float(np.sqrt(face @ face))
                    omega0 = solid_angle(det["pixel"], R0, R0 if cfg.curved_detector else det["close"],
                                         cfg.point_pixel)
                # (a curved sensor faces the sample: each ray crosses its layers
                # square on)
                tilt = 1.0 if cfg.curved_detector else float(dvec @ det["odet"])
                cap = 1.0 if thick == 0.0 else capture(L, tstep, mu, tilt)
                if cap0 is None:
                    cap0 = cap
                w_om = om if cfg.oversample_omega else omega0
                w_cap = cap if cfg.oversample_thick else cap0
                for src in range(nsrc):
                    inc, lam, wt = st["inc"][src], st["lam"][src], st["wts"][src]
                    Svec = (dvec - inc) / lam
                    stol = 0.5 * math.sqrt(float(Svec @ Svec))
                    P = 1.0 if cfg.nopolar else polarization(cfg.polarization, inc, dvec, det["polar"])
                    if cfg.dmin > 0.0 and stol > 0.0 and cfg.dmin > 0.5 / stol:
                        bg_terms.append((w_cap, P if cfg.oversample_polar else None, w_om, wt))
                        if polar_cut is None:
                            polar_cut = P
                        continue
                    if polar0 is None:
                        polar0 = P
                    w_P = P if cfg.oversample_polar else None
                    bg_terms.append((w_cap, w_P, w_om, wt))
                    tot = 0.0
                    for a, b, c in st["cells"]:
                        hkl = (float(a @ Svec), float(b @ Svec), float(c @ Svec))
                        idx = tuple(math.ceil(x - 0.5) for x in hkl)
                        Fl = lattice_factor(cfg.xtal_shape, hkl, idx, st["Ns"], st["recip"], cfg.fudge)
                        Fc = st["F"](hkl, idx)
                        tot += Fc * Fc * Fl * Fl
                    bragg += tot * wt * w_cap * (P if cfg.oversample_polar else 1.0) * w_om
        if st["I_bg"] != 0.0 and bg_terms:
            bg += sum(c * (1.0 if p is None else p) * o * w for c, p, o, w in bg_terms) / len(bg_terms)
    if polar0 is None:
        # -dmin cut every sub-path: the pixel's factor is its first sub-path's,
        # and its water keeps it (docs/quirks.md #24; nanoBragg's is never set:
        # a blank pixel)
        polar0 = polar_cut
    if not cfg.oversample_polar:
        bragg *= polar0
        bg *= polar0
    # (the Bragg sum's mean over the sub-paths; the background once)
    return R_E_SQR * st["fluence"] * (bragg / steps + st["I_bg"] * bg)


def _pixel_list(pixels, ns, nf):
    """image()'s pixels=: (slow, fast) pairs of whole numbers on the detector,
    or ConfigError naming the first that is not."""
    from .errors import ConfigError
    from .validate import is_whole
    if isinstance(pixels, (str, bytes)) or not hasattr(pixels, "__iter__"):
        raise ConfigError("pixels: expected (slow, fast) pairs, got %s" % type(pixels).__name__)
    out = []
    for p in pixels:
        try:
            s, f = p
        except (TypeError, ValueError):
            raise ConfigError("pixels: expected (slow, fast) pairs, got %r" % (p,)) from None
        if not (is_whole(s) and is_whole(f) and 0 <= s < ns and 0 <= f < nf):
            raise ConfigError("pixels: (%r, %r) is not a pixel (slow, fast) of the %dx%d detector"
                              % (s, f, nf, ns))
        out.append((int(s), int(f)))
    return out


def image(cfg, pixels=None):
    """Reference float64 image (spixels, fpixels) in photons/pixel; pixels outside
    the -roi or masked are 0.  ``pixels``: optional iterable of (slow, fast) to
    compute (others stay 0) - the reference is slow.  F comes from -hkl (or
    cfg.hkl_grid) and default_F only: not from the Fdump.bin cache that a run
    without -hkl reads when the file exists."""
    st = setup(cfg)
    det = st["det"]
    ns, nf = det["spixels"], det["fpixels"]
    out = np.zeros((ns, nf))
    # -roi bounds are inclusive; the detector's last pixel is n - 1 (pixel (8, 0)
    # of an 8x8 detector was an IndexError, and so was an -roi past its edge)
    xmin = max(cfg.roi_xmin, 0)
    xmax = min(cfg.roi_xmax, nf - 1) if cfg.roi_xmax >= 0 else nf - 1
    ymin = max(cfg.roi_ymin, 0)
    ymax = min(cfg.roi_ymax, ns - 1) if cfg.roi_ymax >= 0 else ns - 1
    todo = (_pixel_list(pixels, ns, nf) if pixels is not None
            else [(s, f) for s in range(ns) for f in range(nf)])
    for s, f in todo:
        if not (xmin <= f <= xmax and ymin <= s <= ymax):
            continue
        if cfg.mask_image is not None and np.asarray(cfg.mask_image)[s, f] == 0:
            continue
        out[s, f] = pixel_value(s, f, st)
    return out
