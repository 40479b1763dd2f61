"""Crystal: unit cell, orientation (matrix file, misset), size, mosaic domains,
and the per-(phi, mosaic-domain) rotated real-space cells used by the kernel.

Real-space vectors are returned in metres (the kernel forms h = a . S with the
scattering vector S in 1/m); reciprocal vectors stay in 1/Angstrom, as in
nanoBragg.c where they are only used for the gauss/tophat spot radius.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from . import rng as rngmod
from .kernels import native
from .errors import ConfigError
from .sampling import ceil_count, exact_ceil_count
from .flags import INT_MAX as N_MAX     # -N takes a C int
from .vecmath import host

# plain-Python vector helpers (same source as the kernel's compiled ones)
cross = host.cross
dot = host.dot
magnitude = host.magnitude
rotate_axis = host.rotate_axis
rotate_umat = host.rotate_umat
rotate_xyz = host.rotate_xyz
scale = host.scale

Vec3 = Tuple[float, float, float]
DBL_MIN = 2.2250738585072014e-308
# nanoBragg.c's c*_z is off by sin(gamma)/sin(gamma*) - 1 (docs/quirks.md #13); below this
# it is right but for rounding (orthogonal, monoclinic, hexagonal cells: ~2e-16)
C_CELL_ROUNDING = 1e-12
RTD = 180.0 * (1.0 / math.pi)


@dataclass
class Crystal:
    a: Vec3            # real-space cell vectors, metres (phi=0, unrotated)
    b: Vec3
    c: Vec3
    astar: Vec3        # reciprocal vectors, 1/Angstrom
    bstar: Vec3
    cstar: Vec3
    cell: Tuple[float, float, float, float, float, float]        # A, degrees
    recip_cell: Tuple[float, float, float, float, float, float]  # 1/A, degrees
    V_cell: float      # A^3
    Na: float
    Nb: float
    Nc: float
    misset: Vec3       # radians actually applied (after random generation)
    log: List[str] = field(default_factory=list)
    # nanoBragg.c builds this -cell with the wrong angles (docs/quirks.md #13)
    c_cell_wrong: bool = False
    # nanoBragg.c's ceiling gives a size that is an exact multiple of an edge
    # one cell more (docs/quirks.md #25)
    c_more_cells: bool = False
    # the beam clips the crystal across the beam, not along b and c as
    # nanoBragg.c does, and that changes a cell count (docs/quirks.md #30)
    c_clip_differs: bool = False


def _clamp_angles(sins, coss):
    out = []
    for s, c in zip(sins, coss):
        s = min(max(s, -1.0), 1.0)
        if c * c > 1.0:
            c = 1.0
        out.append(math.atan2(s, c))
    return out


_RANGE = ("%s under- or overflows double precision in the cell's real and reciprocal vectors "
          "(check -cell / -mat)")


def spot_scale(c_rule, Na, Nb, Nc, astar, bstar, cstar) -> float:
    """The gauss/tophat spot's scale (A^2; the kernels' fopt F_SPOT): it turns
    |dr*|^2, dr* = (h-h0) a* + (k-k0) b* + (l-l0) c* (1/A, the unrotated
    reciprocal vectors), into the squared radius that the shapes' constants
    0.63 and 0.3969 expect: (Na Nb Nc V_cell)^(2/3), V_cell = 1/|a* . (b* x c*)|
    (A^3), the radius relative to the crystal's own size.  Each spot then keeps
    the square crystal's integral, (0.315 pi)^(3/2) = 0.984 (gauss) and
    4 pi 0.63^3 / 3 = 1.047 (tophat) times it, for any cell.  c_rule
    (-c_parity): 0.0, which stands for nanoBragg.c's factor (Na Nb Nc)^2,
    evaluated in the kernels in the C's order: not dimensionless, so the C's
    spots change with the unit of length (docs/quirks.md #16)."""
    if c_rule:
        return 0.0
    v = abs(float(np.dot(astar, np.cross(bstar, cstar))))
    if v == 0.0:            # (a flat cell: refused before any kernel runs)
        return math.inf
    r = cube_root(Na * Nb * Nc / v)
    return r * r


def cube_root(x: float) -> float:
    """x^(1/3) for x > 0 (x itself for 0 and inf), taken as cbrt(m 2^k) 2^q for
    x = m 2^(3q + k): 8 x then gives exactly twice the root, so the spot scale
    keeps its bits when every length doubles (tools/fuzz.py metamorphic,
    'wavelength'); libm's cbrt(8 x) is an ulp off 2 cbrt(x) for about 1 % of
    arguments."""
    if not 0.0 < x < math.inf:
        return x
    m, e = math.frexp(x)
    q, k = divmod(e, 3)
    return math.ldexp(float(np.cbrt(math.ldexp(m, k))), q)


def beam_clipped_size(size, axis, beamsize, beam):
    """The length (m) of a crystal edge of ``size`` (m) along ``axis`` (a cell
    vector, any length) that a square beam ``beamsize`` (m) wide, along the unit
    vector ``beam``, covers: the edge spans size * sin(theta) across the beam
    (theta: its angle to the beam), which is cut to beamsize.  An edge along the
    beam is not cut; one across it is cut to the beam's width, nanoBragg.c's
    rule for its b and c edges under its own convention (beam along x), applied
    to every edge in the direction it has (docs/quirks.md #30).  The crystal is
    taken as mounted (-misset, -mat; the spindle at 0): its cell counts are the
    crystal's, the same in every phi step and every frame of a series."""
    u = scale(axis, 1.0 / magnitude(axis))
    across = magnitude(cross(u, beam))
    if size * across > beamsize:
        return beamsize / across
    return size


def mat_wavelengths(recip_from_mat, cell):
    """The wavelength (A) a MOSFLM matrix was written for, per axis: its rows
    are a*, b*, c* (1/A) times that wavelength, and ``cell`` (A, degrees: the
    file's cell line) gives |a*|, |b*|, |c*|.  Three equal numbers when the
    cell line is the matrix's cell."""
    a, b, c = cell[:3]
    ca, cb, cg = (math.cos(math.radians(x)) for x in cell[3:])
    sa, sb, sg = (math.sin(math.radians(x)) for x in cell[3:])
    V = a * b * c * math.sqrt(max(0.0, 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg))
    if V <= 0.0:
        return None
    true = (b * c * sa / V, c * a * sb / V, a * b * sg / V)
    return tuple(magnitude(tuple(float(x) for x in row)) / t for row, t in zip(recip_from_mat, true))


def mat_cell_line_warning(name, recip_from_mat, cell, lambda0):
    """A log line when a MOSFLM file's cell line says its matrix was written at
    another wavelength than the run's (nanoBragg.c divides the matrix by the
    run's -lambda, so the cell scales by their ratio: docs/quirks.md, "C
    behaviours kept"), or does not match the matrix at all; None when it agrees
    to 1e-3 (the file's printed digits are good to ~1e-6)."""
    lams = mat_wavelengths(recip_from_mat, cell)
    if lams is None:
        return None
    run = lambda0 * 1e10
    spread = (max(lams) - min(lams)) / max(lams)
    if spread > 1e-3:
        return ("WARNING: %s: its cell line (%s) is not its matrix's cell at any wavelength "
                "(%.4g, %.4g, %.4g A along a*, b*, c*); the run reads only the matrix"
                % (name, " ".join("%g" % x for x in cell), *lams))
    lam = sum(lams) / 3.0
    if abs(lam - run) > 1e-3 * run:
        return ("WARNING: %s was written for a wavelength of %.6g A (its cell line %s over its "
                "matrix), but the run's is %.6g A: the matrix's cell is scaled by %.6g. Give "
                "-lambda %.6g for the file's cell, or -cell to set it"
                % (name, lam, " ".join("%g" % x for x in cell), run, run / lam, lam))
    return None


#: MOSFLM's frame, the one a -mat matrix is written in: beam along +x, spindle along +z
MOSFLM_BEAM, MOSFLM_SPINDLE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def mosflm_frame(convention):
    """The rotation Q (3x3, rows) that takes MOSFLM's frame to ``convention``'s
    lab frame: MOSFLM's beam to the convention's beam, its spindle to the
    convention's spindle (and beam x spindle to beam x spindle, so det Q = +1).
    A -mat matrix's a*, b*, c* are MOSFLM's (beam along x, spindle along z),
    whatever the run's convention; the crystal the file describes sits in a
    convention's lab as Q a*, Q b*, Q c*.  XDS and ADXV (beam z, spindle x):
    x->z, y->-y, z->x; DIALS (beam z, spindle y): x->z, y->x, z->y.  None
    where Q is the identity (MOSFLM, DENZO) and for CUSTOM, whose vectors are
    the user's and imply no frame for the file (docs/quirks.md #45)."""
    from .geometry import _CONVENTION_VECTORS
    vecs = _CONVENTION_VECTORS.get(convention)
    if vecs is None:
        return None
    beam, spindle = tuple(map(float, vecs[0])), tuple(map(float, vecs[6]))
    src = (MOSFLM_BEAM, MOSFLM_SPINDLE, cross(MOSFLM_BEAM, MOSFLM_SPINDLE))
    dst = (beam, spindle, cross(beam, spindle))
    # Q = sum_k dst_k src_k^T (src orthonormal)
    Q = tuple(tuple(sum(dst[k][i] * src[k][j] for k in range(3)) for j in range(3))
              for i in range(3))
    if Q == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)):
        return None
    return Q


def _turn(Q, v):
    """Q v for a signed permutation Q (every convention's): each component is
    one of v's, with its sign, so no rounding, and no 0 * inf (a matrix
    scaled past double precision keeps its infinities for the range check)."""
    out = []
    for row in Q:
        j = next(j for j in range(3) if row[j] != 0.0)
        out.append(row[j] * v[j])
    return tuple(out)


#: -cell with -mat: the largest relative spread of -cell's edges over the
#: matrix's, and the largest difference of an angle (radians), that still
#: name the matrix's lattice (crystal.check_cell_with_mat)
MAT_CELL_TOL = 1e-3


def _real_cell(astar, bstar, cstar):
    """(a, b, c, alpha, beta, gamma) (A, radians) of the reciprocal vectors
    (1/A), or None for a flat or non-finite cell."""
    V_star = dot(astar, cross(bstar, cstar))
    if V_star == 0.0 or not math.isfinite(V_star):
        return None
    a, b, c = (scale(v, 1.0 / V_star) for v in (cross(bstar, cstar), cross(cstar, astar),
                                                  cross(astar, bstar)))
    lens = [magnitude(v) for v in (a, b, c)]
    if not all(0.0 < x < math.inf for x in lens):
        return None

    def angle(u, w, lu, lw):
        return math.acos(min(1.0, max(-1.0, dot(u, w) / lu / lw)))
    return (lens[0], lens[1], lens[2], angle(b, c, lens[1], lens[2]),
            angle(c, a, lens[2], lens[0]), angle(a, b, lens[0], lens[1]))


def check_cell_with_mat(name, user, astar, bstar, cstar, lambda0):
    """Refuse (ConfigError) a -cell that is not the -mat matrix's lattice.

    A MOSFLM matrix is U B: B fixes the lattice (its cell), U how it is
    mounted.  nanoBragg.c gives -cell's edge lengths to the matrix's real-axis
    directions and drops -cell's angles without a word; the crystal rendered
    is then neither lattice.  What -cell can say without contradicting the
    matrix is one scale for all three edges: the same lattice, the matrix
    having been written at another wavelength (a MOSFLM matrix carries it), or
    a cell calibrated since.  A different shape (other angles or edge ratios)
    is another lattice, and there is no one way to mount it "in the matrix's
    orientation" (which axes to hold: nanoBragg.c's real axes, MOSFLM's B a*
    and the a*b* plane...), so the run refuses rather than pick one.  The
    tolerances (MAT_CELL_TOL: 1e-3 of the edges, 1e-3 rad = 0.057 deg) move
    a reflection of index h by about 1e-3 h of a reciprocal-cell edge, as a
    cell printed to 4 or 5 digits does.  ``user``: -cell's (a, b, c, alpha,
    beta, gamma), A and radians, its defaults filled in; the vectors in 1/A
    at the run's wavelength lambda0 (m)."""
    mat = _real_cell(astar, bstar, cstar)
    if mat is None:
        return      # (a flat matrix is refused after the misset, naming -mat)
    ratios = [u / m for u, m in zip(user[:3], mat[:3])]
    spread = (max(ratios) - min(ratios)) / max(ratios) if max(ratios) > 0.0 else math.inf
    worst = max(abs(u - m) for u, m in zip(user[3:], mat[3:]))
    if spread <= MAT_CELL_TOL and worst <= MAT_CELL_TOL:
        return
    fmt = lambda c: " ".join("%.6g" % x for x in (*c[:3], *(math.degrees(t) for t in c[3:])))
    raise ConfigError("-cell %s is not the cell of -mat %s (%s at -lambda %.6g): with -mat, "
                      "-cell may only scale the matrix's cell (one factor for a, b and c, within "
                      "%g), not change its angles (within %.3g deg) or edge ratios; drop -cell, "
                      "or give the matrix's cell"
                      % (fmt(user), name, fmt(mat), lambda0 * 1e10, MAT_CELL_TOL,
                         math.degrees(MAT_CELL_TOL)))


def build_crystal(cfg, recip_from_mat, lambda0, rng_state, misset_seed,
                  describe=True, beam_clip=None) -> Crystal:
    """Orientation and cell following nanoBragg.c.

    ``recip_from_mat``: 3x3 array (rows a*, b*, c*) read from the -mat file in
    MOSFLM units (1/A scaled by lambda), or None.  ``describe=False`` leaves
    out the cell's description lines from ``log`` (nbnumba.autodiff's host map
    builds the crystal some 40 times per backward and reads only its vectors).
    ``beam_clip``: None, or (beamsize m, beam unit vector): the default mode's
    cut of -xtal_size/-sample_* across the beam (``beam_clipped_size``); the
    caller has cut the sizes the C's way otherwise.
    """
    log: List[str] = []
    a_len, b_len, c_len = cfg.cell_a, cfg.cell_b, cfg.cell_c
    alpha, beta, gamma = cfg.cell_alpha, cfg.cell_beta, cfg.cell_gamma
    astar = bstar = cstar = (0.0, 0.0, 0.0)
    V_cell_user = 0.0
    c_cell_wrong = False
    if cfg.user_cell:
        if b_len <= 0.0:
            b_len = a_len
        if c_len <= 0.0:
            c_len = a_len
        if alpha <= 0.0:
            alpha = math.pi / 2
        if beta <= 0.0:
            beta = math.pi / 2
        if gamma <= 0.0:
            gamma = math.pi / 2
        if not 0.0 < 2.0 * a_len * b_len * c_len < math.inf:
            # (1e-6 1e-320 1e-320: the product of the edges underflows, and the
            # c* below divides by it; 1 1 1e308: twice it, the volume's first
            # factor, overflows, and c* divides by sin(gamma*) = 0)
            raise ConfigError(_RANGE % ("-cell %g %g %g A" % (a_len, b_len, c_len)))
        aavg = (alpha + beta + gamma) / 2
        skew = math.sin(aavg) * math.sin(aavg - alpha) * math.sin(aavg - beta) * math.sin(aavg - gamma)
        if skew < 0.0:
            skew = -skew
        V = 2.0 * a_len * b_len * c_len * math.sqrt(skew)
        if V <= 0.0:
            log.append("WARNING: impossible unit cell volume: %g" % V)
            V = DBL_MIN
        V_cell_user = V
        Vs = 1.0 / V
        as0 = b_len * c_len * math.sin(alpha) * Vs
        bs0 = c_len * a_len * math.sin(beta) * Vs
        cs0 = a_len * b_len * math.sin(gamma) * Vs
        if as0 <= 0.0 or bs0 <= 0.0 or cs0 <= 0.0:
            log.append("WARNING: impossible reciprocal cell lengths: %g %g %g" % (as0, bs0, cs0))
            as0, bs0, cs0 = (abs(x) if x != 0.0 else DBL_MIN for x in (as0, bs0, cs0))
        cos_as = (math.cos(beta) * math.cos(gamma) - math.cos(alpha)) / (math.sin(beta) * math.sin(gamma))
        cos_bs = (math.cos(gamma) * math.cos(alpha) - math.cos(beta)) / (math.sin(gamma) * math.sin(alpha))
        cos_gs = (math.cos(alpha) * math.cos(beta) - math.cos(gamma)) / (math.sin(alpha) * math.sin(beta))
        sin_gs = c_len * Vs / as0 / bs0
        if not (math.isfinite(as0 + bs0 + cs0) and 0.0 < abs(a_len * b_len * c_len * sin_gs) < math.inf):
            # c* below divides by sin(gamma*) and by a b c sin(gamma*): two edges whose
            # product overflows although twice the three's does not (1e-3 2 1e308: b c =
            # inf, a* = inf, and sin(gamma*) = c/(V a* b*) = 0), or a b c sin(gamma*) that
            # underflows to 0 (1.9e-320 51.5 1.9e-6)
            raise ConfigError(_RANGE % ("-cell %g %g %g A" % (a_len, b_len, c_len)))
        if sin_gs > 1.0:
            sin_gs = 1.0
        if sin_gs < -1.0:
            sin_gs = -1.0
        if cos_as * cos_as > 1.0:
            cos_as = 1.0
        if cos_bs * cos_bs > 1.0:
            cos_bs = 1.0
        if cos_gs * cos_gs > 1.0:
            cos_gs = 1.0
        astar = (as0, 0.0, 0.0)
        bstar = (bs0 * cos_gs, bs0 * sin_gs, 0.0)
        # a* and b* span the xy plane, so c is along z and c . c* = 1 gives
        # c*_z = 1/c.  nanoBragg.c writes c* V/(a b c sin(gamma*)) = sin(gamma)/(c sin(gamma*)),
        # equal only when sin(gamma) = sin(gamma*): triclinic and rhombohedral cells come
        # out with wrong angles (docs/quirks.md #13); -c_parity keeps the C's value.
        # Where the C's value is right but for rounding, its bits are kept: 1/c would move
        # the cell by an ulp, enough to flip N = ceil(sample size/|a|) on exact multiples
        c_cstar_z = cs0 * V / (a_len * b_len * c_len * sin_gs)
        c_cell_wrong = abs(c_cstar_z * c_len - 1.0) > C_CELL_ROUNDING
        cstar_z = 1.0 / c_len if c_cell_wrong and not cfg.c_parity else c_cstar_z
        cstar = (cs0 * cos_bs, cs0 * (cos_as - cos_bs * cos_gs) / sin_gs, cstar_z)

    if recip_from_mat is not None:
        s = 1e-10 / lambda0   # the MOSFLM matrix carries the wavelength
        # as Python floats: a product that overflows (-energy 1e308 makes s
        # huge) is then a silent inf, which the volume check below refuses,
        # rather than a numpy RuntimeWarning on the user's stderr first
        m = [[float(x) for x in row] for row in np.asarray(recip_from_mat, dtype=float)]
        astar = scale(tuple(m[0]), s)
        bstar = scale(tuple(m[1]), s)
        cstar = scale(tuple(m[2]), s)
        c_cell_wrong = False
        if not cfg.c_parity:
            # the matrix is MOSFLM's (beam x, spindle z): nanoBragg.c reads it
            # into every convention's lab as it stands, which turns the crystal
            # against the beam under -xds/-adxv/-dials (docs/quirks.md #45)
            Q = mosflm_frame(cfg.beam_convention)
            if Q is not None:
                astar, bstar, cstar = (_turn(Q, v) for v in (astar, bstar, cstar))
                if describe:
                    log.append("the -mat matrix is in MOSFLM's frame (beam +x, spindle +z): "
                               "turned into the %s frame (x, y, z -> %s)"
                               % (cfg.beam_convention, ", ".join(
                                   ("-" if Q[i][j] < 0 else "") + "xyz"[i]
                                   for j in range(3) for i in range(3) if Q[i][j] != 0.0)))
            if cfg.user_cell:
                # -cell with -mat: the same lattice or none (docs/quirks.md #47)
                check_cell_with_mat(cfg.matfilename, (a_len, b_len, c_len, alpha, beta, gamma),
                                    astar, bstar, cstar, lambda0)

    misset = tuple(cfg.misset)
    mode = cfg.misset_mode
    if mode == -1:
        # the intent is a random orientation: uniform on SO(3) by default;
        # nanoBragg.c draws a mosaic-style rotation with a 90-radian cap
        # (it passes 90.0 to a routine expecting radians; docs/quirks.md)
        idum = np.array([misset_seed], dtype=np.int64)
        if cfg.c_parity:
            u = native.mosaic_rotation_umat(90.0, idum, rng_state.buf, True)
        else:
            u = native.random_orientation_umat(idum, rng_state.buf)
        misset = rngmod.umat2misset(u)
        log.append("random orientation misset angles: %f %f %f deg"
                   % (misset[0] * RTD, misset[1] * RTD, misset[2] * RTD))
        mode = 1
    if mode > 0:
        astar = rotate_xyz(astar, *misset)
        bstar = rotate_xyz(bstar, *misset)
        cstar = rotate_xyz(cstar, *misset)

    a_x_b = cross(astar, bstar)
    b_x_c = cross(bstar, cstar)
    c_x_a = cross(cstar, astar)
    V_star = dot(astar, b_x_c)
    if cfg.user_cell:
        b_x_c = scale(b_x_c, a_len / V_cell_user / _nonzero(magnitude(b_x_c)))
        c_x_a = scale(c_x_a, b_len / V_cell_user / _nonzero(magnitude(c_x_a)))
        a_x_b = scale(a_x_b, c_len / V_cell_user / _nonzero(magnitude(a_x_b)))
        V_star = 1.0 / V_cell_user
    if V_star == 0.0 or not math.isfinite(V_star):
        raise ConfigError("degenerate crystal orientation: reciprocal cell volume is %g "
                          "(check -mat / -cell)" % V_star)
    V_cell = 1.0 / V_star
    a = scale(b_x_c, V_cell)
    b = scale(c_x_a, V_cell)
    c = scale(a_x_b, V_cell)
    astar = scale(cross(b, c), V_star)
    bstar = scale(cross(c, a), V_star)
    cstar = scale(cross(a, b), V_star)

    am, bm, cm = magnitude(a), magnitude(b), magnitude(c)
    asm, bsm, csm = magnitude(astar), magnitude(bstar), magnitude(cstar)
    # (|V_cell|: a left-handed -mat matrix has a negative volume, which
    # nanoBragg.c renders with, as nbnumba does)
    if not all(0.0 < x < math.inf for x in (am, bm, cm, asm, bsm, csm, abs(V_cell))):
        # an edge of 1e-300 A (or 1e300) passes the flag checks but under- or
        # overflows here: the angles below divide by these lengths
        if recip_from_mat is not None:
            # (the matrix carries the wavelength: -energy 1e308 scales it by 1e303)
            given = "the -mat matrix at a wavelength of %g A" % (lambda0 * 1e10)
        elif cfg.user_cell:
            given = "-cell %g %g %g A" % (a_len, b_len, c_len)
        else:
            given = "the cell (volume %g A^3)" % (V_cell * 1e30)
        raise ConfigError(_RANGE % given)
    if V_cell < 0.0 and not cfg.c_parity:
        log.append("WARNING: the -mat matrix is left-handed (cell volume %g A^3): h, k, l index "
                   "a left-handed basis" % (V_cell * 1e30))
    al, be, ga = _clamp_angles(
        (asm * V_cell / bm / cm, bsm * V_cell / am / cm, csm * V_cell / am / bm),
        (dot(b, c) / bm / cm, dot(a, c) / am / cm, dot(a, b) / am / bm))
    als, bes, gas = _clamp_angles(
        (am * V_star / bsm / csm, bm * V_star / asm / csm, cm * V_star / asm / bsm),
        (dot(bstar, cstar) / bsm / csm, dot(astar, cstar) / asm / csm, dot(astar, bstar) / asm / bsm))
    if describe:
        _describe(log, a, b, c, astar, bstar, cstar, (am, bm, cm, al, be, ga),
                  (asm, bsm, csm, als, bes, gas), V_cell)

    a = scale(a, 1e-10)
    b = scale(b, 1e-10)
    c = scale(c, 1e-10)
    am, bm, cm = magnitude(a), magnitude(b), magnitude(c)

    # a size that is an exact multiple of the edge gives that many cells in the
    # default mode; the C's plain ceiling can add one (docs/quirks.md #25)
    count = ceil_count if cfg.c_parity else exact_ceil_count
    N = [cfg.Na, cfg.Nb, cfg.Nc]
    c_more_cells = c_clip_differs = False
    for i, (axis, size, edge, vec) in enumerate((("a", cfg.sample_x, am, a), ("b", cfg.sample_y, bm, b),
                                                 ("c", cfg.sample_z, cm, c))):
        if not size > 0:
            continue
        if beam_clip is not None:
            beamsize = beam_clip[0]
            cut = beam_clipped_size(size, vec, *beam_clip)
            # nanoBragg.c cuts the sizes along b and c to the beam's width
            c_size = min(size, beamsize) if i > 0 and beamsize >= 0 else size
            c_clip_differs |= ceil_count(cut / edge) != ceil_count(c_size / edge)
            if cut != size:
                log.append("WARNING: the beam (%g mm wide) clips the crystal along %s from %g to "
                           "%g mm (the edge at %.4g deg to the beam)"
                           % (beamsize * 1e3, axis, size * 1e3, cut * 1e3,
                              math.degrees(math.asin(min(1.0, beamsize / cut)))))
            size = cut
        # the cell counts the sizes give must be counts the flags could give
        # (-N's integer range; ceil of an infinite ratio raises)
        if not size / edge <= N_MAX:
            raise ConfigError("the crystal's size along %s (%g mm) is %g unit cells, more than "
                              "a -Na/-Nb/-Nc count can hold (%d): check -xtal_size / -sample_x "
                              "/ -sample_y / -sample_z" % (axis, size * 1e3, size / edge, N_MAX))
        N[i] = count(size / edge)
        c_more_cells |= N[i] != ceil_count(size / edge)
    Na, Nb, Nc = N
    Na, Nb, Nc = (float(max(n, 1.0)) for n in (Na, Nb, Nc))

    return Crystal(a=a, b=b, c=c, astar=astar, bstar=bstar, cstar=cstar,
                   cell=(am * 1e10, bm * 1e10, cm * 1e10, al * RTD, be * RTD, ga * RTD),
                   recip_cell=(asm, bsm, csm, als * RTD, bes * RTD, gas * RTD),
                   V_cell=V_cell, Na=Na, Nb=Nb, Nc=Nc, misset=tuple(misset), log=log,
                   c_cell_wrong=c_cell_wrong, c_more_cells=c_more_cells,
                   c_clip_differs=c_clip_differs)


def _describe(log, a, b, c, astar, bstar, cstar, cell, recip, V_cell):
    """build_crystal's description of the cell (the lines nanoBragg prints),
    appended to log: cell and recip are (lengths, angles in radians)."""
    am, bm, cm, al, be, ga = cell
    asm, bsm, csm, als, bes, gas = recip
    log.append("Unit Cell: %g %g %g %g %g %g" % (am, bm, cm, al * RTD, be * RTD, ga * RTD))
    log.append("Recp Cell: %g %g %g %g %g %g" % (asm, bsm, csm, als * RTD, bes * RTD, gas * RTD))
    log.append("volume = %g A^3" % V_cell)
    log.append("real-space cell vectors (Angstrom):")
    log.append("     %-10s  %-10s  %-10s" % ("a", "b", "c"))
    for i, ax in enumerate("XYZ"):
        log.append("%s: %11.8f %11.8f %11.8f" % (ax, a[i], b[i], c[i]))
    log.append("reciprocal-space cell vectors (Angstrom^-1):")
    log.append("     %-10s  %-10s  %-10s" % ("a_star", "b_star", "c_star"))
    for i, ax in enumerate("XYZ"):
        log.append("%s: %11.8f %11.8f %11.8f" % (ax, astar[i], bstar[i], cstar[i]))


def _nonzero(x):
    return x if x > 0.0 else 1.0


def mosaic_umats(spread, domains, rng_state, mosaic_seed, c_rules=False):
    """Mosaic domain rotation matrices (domains x 9), each drawn from the spread.

    c_rules (-c_parity): the first is the identity, as in nanoBragg.c,
    which forces one domain aligned (but still draws its random numbers); the
    image is then biased toward the unrotated crystal by 1/domains
    (docs/quirks.md #29), and the angles are the C's, piled up at the edge of
    the spread (#38; the default mode's are uniform in the ball)."""
    idum = np.array([mosaic_seed], dtype=np.int64)
    out = np.empty((domains, 9))
    if spread <= 0.0 and domains <= 1000:
        # no mosaicity: the matrices are never applied (see rotated_cells), only
        # the three draws per domain matter for the shared RNG state; make them
        # in plain Python rather than loading a compiled kernel
        for i in range(3 * domains):
            rngmod.ran1_py(idum, rng_state.buf)
        out[:] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        return out
    for i in range(domains):
        out[i] = native.mosaic_rotation_umat(float(spread), idum, rng_state.buf, bool(c_rules))
    if c_rules:
        out[0] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return out


def phi_angles(phi0, phistep, phisteps, offset=0.0):
    """Spindle angle of each phi step (radians): phi0 + phistep * t, as
    nanoBragg.c computes it, or from phi0 + offset (Steps.phi_offset: the
    default mode's points centred in the oscillation, docs/quirks.md #28)."""
    if offset == 0.0:
        return [phi0 + phistep * t for t in range(phisteps)]
    start = phi0 + offset
    return [start + phistep * t for t in range(phisteps)]


def _rotate_axis_all(v, axis, phi):
    """rotate_axis for an array of vectors v[..., xyz] (the same operations in
    the same order, vectorised)."""
    s, c = math.sin(phi), math.cos(phi)
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    d = (axis[0] * x + axis[1] * y + axis[2] * z) * (1.0 - c)
    return np.stack((axis[0] * d + x * c + (-axis[2] * y + axis[1] * z) * s,
                     axis[1] * d + y * c + (+axis[2] * x - axis[0] * z) * s,
                     axis[2] * d + z * c + (-axis[1] * x + axis[0] * y) * s), axis=-1)


def rotated_cells(crystal, spindle, phis, umats, mosaic_spread, c_parity):
    """Real-space cells for every (phi step, mosaic domain), shape
    (2, nphi, nmos, 3, 3): [variant, phi, mos, (a|b|c), xyz], metres.

    Variant 0 is the cell used the first time a thread runs the phi loop,
    variant 1 every later time.  They differ only under ``c_parity`` when a phi
    step is exactly 0.0: nanoBragg.c then skips the rotation and reuses the
    vectors left over from the previous step it executed (initially the
    unrotated cell) - the phi=0 carry-over defect.  Otherwise both are the
    correctly rotated cells.
    """
    nphi, nmos = len(phis), umats.shape[0]
    base = (crystal.a, crystal.b, crystal.c)
    out = np.empty((2, nphi, nmos, 3, 3))
    # [m, x, y]: a domain's matrix row by row, as rotate_umat reads its 9 values
    U = np.asarray(umats, dtype=np.float64).reshape(nmos, 3, 3)[:, None]
    if mosaic_spread > 0.0 and not c_parity:
        # the domains are blocks of the crystal: each turns with it about the
        # spindle, U_m first, then the phi rotation.  nanoBragg.c turns the
        # crystal first and misorients it in the lab frame (U_m Phi a), so a
        # block's orientation within the crystal changes with phi: frames of a
        # series show different crystals (docs/quirks.md #41)
        st = np.array(base, dtype=np.float64)
        blocks = U[..., 0] * st[:, None, 0] + U[..., 1] * st[:, None, 1] + U[..., 2] * st[:, None, 2]
        for t, p in enumerate(phis):
            out[0, t] = _rotate_axis_all(blocks, spindle, p) if p != 0.0 else blocks
        out[1] = out[0]
        return out
    last_nonzero = None
    for p in phis:
        if p != 0.0:
            last_nonzero = p
    for variant in range(2):
        if variant == 1 and not (c_parity and last_nonzero is not None):
            out[1] = out[0]         # the same states in the same order: the same cells
            break
        if c_parity and variant == 1:
            state = tuple(rotate_axis(v, spindle, last_nonzero) for v in base)
        else:
            state = base
        for t, p in enumerate(phis):
            if p != 0.0 or not c_parity:
                state = tuple(rotate_axis(v, spindle, p) for v in base) if p != 0.0 else base
            st = np.array(state, dtype=np.float64)            # [j, y]
            if mosaic_spread > 0.0:
                # rotate_umat for every domain and axis at once, with its
                # operations in its order ((u0 v0 + u1 v1) + u2 v2, no fused
                # multiply-add in numpy), so bit for bit the same cells; a
                # Python loop over them took 0.5 ms of each build_model
                # (5 phi steps x 10 domains)
                out[variant, t] = (U[..., 0] * st[:, None, 0] + U[..., 1] * st[:, None, 1]
                                   + U[..., 2] * st[:, None, 2])
            else:
                out[variant, t] = st
    return out
