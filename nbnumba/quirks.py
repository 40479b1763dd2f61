"""Which of nanoBragg.c's defects (docs/quirks.md) a default-mode run meets.

The default mode does the physically correct thing where nanoBragg.c has a
defect, so on these runs its image differs from the C's.  The CLI prints one
line naming them, so a user comparing with nanoBragg.c knows why and that
``-c_parity`` reproduces the C.  Only defects that the request alone decides
are detected; the interpolation latch (docs/quirks.md #6) depends on where
the first out-of-range lookup falls and is not announced.  The flags nanoBragg.c
reads otherwise (#5) come from the parse (Config.c_reads_flags_otherwise).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np

from .model import R_E_SQR
from .sampling import SWEEPS, c_phi_sweep, c_sensor_layers, c_sweep_of, sweeps_differ_from_c


def c_differences(model) -> List[Tuple[int, str]]:
    """``[(docs/quirks.md entry number, short name), ...]`` that make this default-mode
    run differ from nanoBragg.c; empty under ``-c_parity``."""
    cfg = model.cfg
    if cfg.c_parity:
        return []
    out = []
    # the C's phi points (c_phi_sweep), which #1 reads; the default mode's are centred (#28)
    _, c_step, c_n = c_phi_sweep(cfg.osc, cfg.phistep, cfg.phisteps)
    phis = [cfg.phi0 + c_step * t for t in range(min(c_n, 1 << 20))]
    if any(p == 0.0 for p in phis) and any(p != 0.0 for p in phis):
        out.append((1, "phi=0 carry-over"))
    if len(phis) != len(model.phis) or any(float(a) != b for a, b in zip(model.phis, phis)):
        out.append((28, "phi points centred in the oscillation"))
    if cfg.pix0_set:
        out.append((2, "-pix0_vector"))
    if cfg.misset_mode == -1:
        out.append((4, "-misset random"))
    if cfg.c_reads_flags_otherwise:
        out.append((5, "flags that nanoBragg.c reads otherwise"))
    if cfg.oversample_thick or cfg.oversample_polar or cfg.oversample_omega:
        out.append((7, "-oversample_thick/_polar/_omega"))
    st = model.steps
    last_layer_only = (st.detector_thicksteps > 1 and st.detector_thick > 0
                       and not cfg.oversample_thick)
    # #8b: the C's layers of thick/(N-1), and 2 for 1 (a layer count of 1 included)
    other_layers = st.detector_thick > 0 and (
        (st.detector_thick, st.detector_thickstep, st.detector_thicksteps) != c_sensor_layers(cfg))
    if last_layer_only or other_layers:
        out.append((8, "sensor layers"))
    if st.detector_thick > 0 and st.detector_thickstep > 0:
        # the C samples each layer at its front face, the default mode at its middle
        out.append((39, "sensor layers sampled at their middle"))
        if cfg.oversample_omega and not cfg.point_pixel and not model.det.curved:
            # (every layer lies below the face: a point pixel has no obliquity, the
            # default mode's sphere none either)
            out.append((42, "-oversample_omega: each layer's own plane"))
    if cfg.calculate_noise and cfg.adc_offset < 0.0:
        # a pixel's Poisson count plus a negative offset can fall below 0
        out.append((12, "negative noise counts (-adc < 0)"))
    if model.crystal.c_cell_wrong:
        out.append((13, "cell angles"))
    if cfg.water_size > 0.0 and model.fluence * R_E_SQR != 1.0:
        out.append((14, "water background with -fluence"))
    if cfg.nopolar and cfg.oversample_polar:
        out.append((15, "-nopolar with -oversample_polar"))
    if cfg.xtal_shape in ("GAUSS", "TOPHAT"):
        out.append((16, "gauss/tophat spot size"))
    if getattr(model.fdump_grid, "c_stored", None) is not None:     # (the -hkl file's grid)
        out.append((17, "-hkl indices that nanoBragg.c re-reads with %d"))
    if model.det.odet_side_kept:
        out.append((18, "-odet_vector of a left-handed detector frame"))
    if cfg.water_size != 0.0 and model.nsteps > 1:
        out.append((19, "water background over %d steps" % model.nsteps))
    if model.sources.weighted or model.sources.dropped:
        out.append((20, "-sourcefile weights"))
    if model.det.curved:
        out.append((21, "-curved_det sphere"))
    if model.det.tt_axis_scaled:
        out.append((23, "-twotheta_axis of length %.6g" % float(np.linalg.norm(cfg.twotheta_axis))))
    if cfg.dmin > 0.0 and cfg.water_size != 0.0 and not cfg.nopolar:
        # a pixel -dmin cuts whole keeps its water (the C's is blank): whether
        # one is, the geometry decides; the request makes it possible
        out.append((24, "-dmin with -water: pixels cut whole keep their background"))
    # #25: counts of a range that is an exact multiple of its step (the C's
    # ceiling adds one where the ratio rounds up by an ulp)
    exact = ["-xtal_size/-sample_* over the cell"] if model.crystal.c_more_cells else []
    if cfg.phisteps < 0 and cfg.osc >= 0.0 and cfg.phistep > 0.0 and c_n != st.phisteps:
        exact.append("-osc over -phistep")
    if exact:
        out.append((25, "exact multiples (%s)" % ", ".join(exact)))
    if cfg.calculate_noise and cfg.adc_offset - math.floor(cfg.adc_offset) >= 0.5:
        # the C truncates count + adc, which differs from rounding from a half up
        out.append((26, "noise image rounded with -adc %g" % cfg.adc_offset))
    x0, x1, y0, y1 = model.det.roi
    inside = model.active[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1]
    if inside.size and not np.all(inside):
        out.append((27, "rmsd over the unmasked pixels"))
    if cfg.detector_mu == 0.0 and cfg.detector_thick > 0.0:
        # (-detector_abs 0 or inf, then -detector_thick: the C's sensor captures nothing)
        out.append((40, "-detector_thick after -detector_abs 0/inf"))
    if cfg.water_size > 0.0 and 0.0 < cfg.beamsize < cfg.water_size:
        out.append((37, "the water cut to the beam's width"))
    if model.crystal.c_clip_differs:
        out.append((30, "the beam clips the crystal across the beam"))
    d = model.det
    if d.twotheta != 0.0 and ((d.pivot == "BEAM" and not math.isnan(cfg.close_distance))
                              or (cfg.oversample <= 0 and _c_auto_oversample(model) != model.oversample)):
        # a BEAM-pivot -close_distance is of the swung detector, and the automatic
        # oversampling reads the swung detector's distance (headers: always)
        out.append((31, "-twotheta: the swung detector's distance"))
    if (cfg.sourcefilename is None and st.vdivsteps > 1
            and float(np.dot(d.polar, d.beam)) != 0.0):
        out.append((36, "vertical divergence about the E-vector across the beam"))
    if st.mosaic_spread > 0.0:
        # the C's first domain is the unrotated crystal, the default mode's a draw
        out.append((29, "every mosaic domain drawn"))
        # and its angles pile up at the edge of the spread, the default mode's
        # are uniform in the ball
        out.append((38, "mosaic rotations uniform in the spread's ball"))
        if any(float(p) != 0.0 for p in model.phis):
            # the blocks turn with the crystal (the C misorients them in the lab)
            out.append((41, "mosaic blocks turn with the crystal"))
    if cfg.interpolate > 1 and model.hkls:
        # the C's automatic choice reads the -N flags, before a crystal size sets
        # the counts; the default mode's reads the counts rendered
        from .model import auto_interpolates
        if int(auto_interpolates(cfg.Na, cfg.Nb, cfg.Nc)) != int(model.interpolate):
            out.append((43, "automatic -interpolate from the crystal's cell counts"))
    if cfg.matfilename is not None:
        from .crystal import mosflm_frame
        if mosflm_frame(cfg.beam_convention) is not None:
            # the C reads a MOSFLM matrix into the XDS/ADXV/DIALS lab as it stands
            out.append((45, "-mat matrix turned out of MOSFLM's frame"))
    if cfg.phistep > 0.0 and st.phistep != cfg.phistep:
        # -osc not a multiple of -phistep: the C renders its whole steps past the oscillation
        out.append((46, "the phi steps share the oscillation"))
    elif cfg.phistep > 0.0 and c_n == 0:
        # -osc 0 with a step: the C counts 0 steps, an image of NaN; here the still
        out.append((46, "-osc 0 with -phistep: the still"))
    moved = sweeps_differ_from_c(cfg, st) if cfg.sourcefilename is None else []
    if moved:
        # the default mode samples each cell of the band at its middle (#44) ...
        out.append((44, "%s at the band's cell centres" % _sweep_names(moved)))
        # ... and #22 where the C's own points were off the beam, or not as many
        off = [m for m in moved if _c_sweep_off_centre(cfg, st, m)]
        if off:
            out.append((22, "%s points centred on the beam" % _sweep_names(off)))
    return sorted(out)


def _sweep_names(sweeps) -> str:
    """"divergence", "dispersion" or both, for SWEEPS names."""
    return "/".join(dict.fromkeys("dispersion" if m == "disp" else "divergence" for m in sweeps))


def _c_sweep_off_centre(cfg, st, name) -> bool:
    """Whether nanoBragg.c's points of sweep ``name`` (step i - range/2, i <
    count) are not centred on the beam, or not as many as the default mode's
    (docs/quirks.md #22: a range and a step, a step and a count)."""
    rng, step, n = c_sweep_of(cfg, name)
    return n != getattr(st, SWEEPS[name][2]) or abs(step * (n - 1) - rng) > 1e-9 * max(rng, step)


def _c_auto_oversample(model) -> int:
    """The automatic -oversample nanoBragg.c picks: from its distance along the
    beam before the two-theta swing (docs/quirks.md #31)."""
    from .model import recommended_oversample
    cr, d = model.crystal, model.det
    xmax = max(math.sqrt(sum(x * x for x in v)) * n for v, n in ((cr.a, cr.Na), (cr.b, cr.Nb), (cr.c, cr.Nc)))
    return recommended_oversample(xmax, model.cfg.lambda0, d.c_distance, d.pixel_size)[2]


def notice_line(model) -> Optional[str]:
    """One line for the run's output, or None when the run matches nanoBragg.c."""
    hits = c_differences(model)
    if not hits:
        return None
    what = ", ".join("%s (#%d)" % (name, n) for n, name in hits)
    return ("  nbnumba: note: nanoBragg.c would differ here: %s, see docs/quirks.md; "
            "-c_parity reproduces it" % what)


__all__ = ["c_differences", "notice_line"]
