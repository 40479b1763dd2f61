"""The text nanoBragg prints: same wording and number formats, so scripts
that grep nanoBragg output keep working.  Pure functions returning lines."""
from __future__ import annotations

import math
from typing import List

from .io.smv import format_g as g

RTD = 180.0 * (1.0 / math.pi)
BANNER = "nanoBragg nanocrystal diffraction simulator - James Holton and Ken Frankel 5-17-17"


def setup_lines(model) -> List[str]:
    """Everything printed before the pixel loop."""
    cfg, det, st, cr = model.cfg, model.det, model.steps, model.crystal
    out = [BANNER] + list(model.log)
    shape = {"ROUND": "ellipsoidal", "SQUARE": "parallelpiped", "GAUSS": "gaussian",
             "TOPHAT": "tophat-spot"}[cfg.xtal_shape]
    out.append("  %d initialized hkls (all others =%s)" % (model.hkls, g(cfg.default_F)))
    out.append("  %s xtal: %.0fx%.0fx%.0f cells" % (shape, cr.Na, cr.Nb, cr.Nc))
    out.append("  wave=%s meters +/- %s%% in %d steps" % (g(cfg.lambda0), g(st.dispersion * 100), st.dispsteps))
    out.append("  polarization effect disabled" if cfg.nopolar
               else "  Kahn polarization factor: %f" % cfg.polarization)
    if det.curved:
        out.append("  curved detector: all pixels same distance from origin")
    if det.point_pixel:
        out.append("  pixel obliquity effect disabled")
    out.append("  incident fluence: %s photons/m^2" % g(model.fluence))
    out.append("  distance=%s detsize=%sx%s  pixel=%s meters (%dx%d pixels)"
               % (g(det.distance), g(det.detsize_f), g(det.detsize_s), g(det.pixel_size),
                  det.fpixels, det.spixels))
    out.append("  sensor is %s m thick in %d layers with mu= %s"
               % (g(st.detector_thick), st.detector_thicksteps, g(st.detector_mu)))
    out.append("  Xbeam=%s Ybeam=%s" % (g(det.Xbeam), g(det.Ybeam)))
    out.append("  Fbeam=%s Sbeam=%s" % (g(det.Fbeam), g(det.Sbeam)))
    out.append("  Xclose=%s Yclose=%s" % (g(det.Xclose), g(det.Yclose)))
    out.append("  Fclose=%s Sclose=%s" % (g(det.Fclose), g(det.Sclose)))
    out.append("  DIRECTION_OF_DETECTOR_X-AXIS= %s %s %s" % tuple(g(x) for x in det.fdet))
    out.append("  DIRECTION_OF_DETECTOR_Y-AXIS= %s %s %s" % tuple(g(x) for x in det.sdet))
    out.append("  DIRECTION_OF_DETECTOR_Z-AXIS= %s %s %s" % tuple(g(x) for x in det.odet))
    out.append("  INCIDENT_BEAM_DIRECTION= %s %s %s" % tuple(g(x) for x in det.beam))
    out.append("  spindle ROTATION_AXIS= %s %s %s" % tuple(g(x) for x in det.spindle))
    b, p = det.beam, det.polar
    n = (b[1] * p[2] - b[2] * p[1], b[2] * p[0] - b[0] * p[2], b[0] * p[1] - b[1] * p[0])
    out.append("  POLARIZATION_PLANE_NORMAL= %s %s %s" % tuple(g(x) for x in n))
    out.append("  dials origin= %s %s %s" % tuple(g(x) for x in det.dials_origin))
    out.append("  roi: %d < x < %d && %d < y < %d" % det.roi)
    out.append("  hdivrange=%s hdivstep=%s  radians" % (g(st.hdivrange), g(st.hdivstep)))
    out.append("  vdivrange=%s vdivstep=%s  radians" % (g(st.vdivrange), g(st.vdivstep)))
    out.append("  %d divergence steps" % model.sources.divsteps)
    out.append("  %d sources" % len(model.sources.wavelength))
    out.append("  %d mosaic domains over mosaic spread of %s degrees"
               % (st.mosaic_domains, g(st.mosaic_spread * RTD)))
    out.append("  %d phi steps from %s to %s degrees" % (st.phisteps, g(st.phi0 * RTD), g((st.phi0 + st.osc) * RTD)))
    extra = "".join(s for s, on in ((" +thick", cfg.oversample_thick), (" +polar", cfg.oversample_polar),
                                    (" +omega", cfg.oversample_omega)) if on)
    out.append("  %dx%d pixel oversample steps%s" % (model.oversample, model.oversample, extra))
    if cfg.mask_image is not None:
        out.append("  skipping zero-flagged pixels in %s" % cfg.maskfilename)
    if cfg.calculate_noise:
        out += ["", "  noise image paramters:", "  seed: %d" % model.seed,
                "  water droplet size: %s m" % g(cfg.water_size)]
    if cfg.c_parity:
        out.append("  nbnumba: -c_parity: reproducing nanoBragg.c defects (docs/quirks.md)")
    else:
        from .quirks import notice_line
        note = notice_line(model)
        if note:
            out.append(note)
    return out


def run_summary_line(cfg, seconds: float, aot: bool = False) -> str:
    """nbnumba's own last line: precision, threads, backend and elapsed time (s).
    aot: the run's kernels all came from the start-up library (kernels.native)."""
    if cfg.device == "cuda":
        backend, threads = "cuda (CuPy)", ""
    else:
        # the threads the image loop ran on (kernels.native.render)
        from .kernels import native
        n = max(1, int(cfg.threads)) if cfg.threads else native.default_threads()
        backend = "cpu (numba AOT)" if aot else "cpu (numba)"
        threads = ", %d thread%s" % (n, "" if n == 1 else "s")
    return "nbnumba: %s precision%s, backend %s, %.2f s" % (cfg.precision, threads, backend, seconds)


def interpolation_lines(model) -> List[str]:
    """What the pixel loop met with -interpolate: nanoBragg.c prints "WARNING:
    out of range for three point interpolation" at its first lookup outside
    the table's range and turns interpolation off for the rest of the image
    (docs/quirks.md #6); nbnumba says where and how often instead."""
    if model.cfg.c_parity:
        p = model.latch[0]
        if p < 0:
            return []
        s, f = divmod(p, model.shape[1])
        return ["  nbnumba: -c_parity: interpolation off from pixel (slow %d, fast %d) on, as "
                "nanoBragg.c turns it off after its first lookup outside the HKL table's "
                "range (docs/quirks.md #6)" % (s, f)]
    n = model.interp_fallback
    if not n:
        return []
    return ["  nbnumba: note: interpolation: %d pixel%s had structure-factor lookups outside the "
            "HKL table's interpolation range; F there is the nearest point's (nanoBragg.c turns "
            "interpolation off for the rest of the image at the first one: docs/quirks.md #6)"
            % (n, "" if n == 1 else "s")]


def result_lines(res, written=None) -> List[str]:
    """Everything printed after the pixel loop (statistics and file names)."""
    m, st = res.model, res.stats
    cfg = m.cfg
    S, F = m.shape
    out = interpolation_lines(m) + [
        "", "solid angle subtended by detector = %s steradian ( %s%% sphere)"
        % (g(st["omega_sum"]), g(100 * st["omega_sum"] / 4 / math.pi))]
    out.append("writing %s as %d 4-byte floats" % (cfg.floatfilename, S * F))
    out.append("max_I = %s  at %s %s" % (g(st["max_I"]), g(st["max_I_x"]), g(st["max_I_y"])))
    out.append("mean= %s rms= %s rmsd= %s" % (g(st["mean"]), g(st["rms"]), g(st["rmsd"])))
    out.append("intfile_scale = %s" % g(st["intfile_scale"]))
    out.append("writing %s as 2-byte integers" % cfg.intfilename)
    if cfg.write_pgm:
        out.append("pgm_scale = %s" % g(st["pgm_scale"]))
        out.append("writing %s as 1-byte integers" % cfg.pgmfilename)
    if cfg.calculate_noise:
        out.append("%.0f photons on noise image (%d overloads)" % (st["photons"], st["overloads"]))
        out.append("writing %s as 2-byte integers" % cfg.noisefilename)
    return out
