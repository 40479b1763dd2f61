"""Single-pixel trace: ``TRACE_PY:`` lines with the keys, order and %.15g
format of nanoBragg.c's ``TRACE_C:`` lines (and ``TRACE_PY_PHI`` per phi step).

The per-pixel numbers come from the kernel's own ``pixel_value`` run with
tracing on, so the trace cannot drift from the image.  The detector-setup keys
(``TRACE_PY:key=value``: initial and rotated axes, pivot terms, pix0 before and
after each rotation, ...) come from the geometry stage (``Detector.trace``),
and ``TRACE_PY_SOURCE2:`` lines repeat the C's per-sub-pixel tap of source 2.
Every key nanoBragg.c prints without an environment switch is printed (its
``TRACE_C_TAP5*`` taps need ``TRACE_C_TAP5``/``TRACE_C_TAP5_HKL`` set and are not).
With ``-device cuda`` the per-pixel numbers come from the CUDA kernel
(``gpu.trace_pixel``: a one-thread launch of its trace build).
"""
from __future__ import annotations

import math

import numpy as np

from .kernels import cpu as K
from .tracefmt import format_value
from .model import R_E_SQR
from .validate import is_whole

RTD = 180.0 * (1.0 / math.pi)
MAX_ROWS = 200000


def _g(x):
    # C's %.15g for one float (glibc spellings of nan/inf)
    return format_value(float(x))


def _vec(vals):
    return " ".join(_g(v) for v in vals)


def trace_lines(model, spixel, fpixel, prefix="TRACE_PY"):
    """Trace of pixel (slow, fast) as a list of text lines."""
    for name, v in (("spixel", spixel), ("fpixel", fpixel)):
        # (1.5 was an IndexError, None a TypeError, True an array's truth value)
        if not is_whole(v):
            from .errors import ConfigError
            raise ConfigError("trace_lines: %s must be a whole number, got %r" % (name, v))
    spixel, fpixel = int(spixel), int(fpixel)
    cfg = model.cfg
    S, F = model.shape
    if not (0 <= spixel < S and 0 <= fpixel < F):
        return ["%s: pixel (%d, %d) is outside the %dx%d detector" % (prefix, spixel, fpixel, F, S)]
    if not model.active[spixel, fpixel]:
        return ["%s: pixel (%d, %d) is not rendered (outside -roi or masked)" % (prefix, spixel, fpixel)]
    args = model.cpu_kernel_args()
    p = spixel * F + fpixel
    if cfg.c_parity:
        first = model.first_exec_pixel
        if first < 0:
            flat = np.flatnonzero(model.active.ravel())
            first = int(flat[0]) if len(flat) else -1
        lp, ls = model.latch
        latch_sub = -1 if lp < 0 or p < lp else (ls if p == lp else -2)
    else:
        first, latch_sub = -1, -1
    if getattr(cfg, "device", "cpu") == "cuda":
        # the CUDA kernel's own pixel, in a one-thread trace launch
        from .kernels import gpu
        val, rows, n = gpu.trace_pixel(model, None, spixel, fpixel, p == first, latch_sub, MAX_ROWS)
    else:
        val, rows, n = K.trace_pixel(spixel, fpixel, p == first, latch_sub, *args, MAX_ROWS)
    P = prefix + ":"
    # the detector-setup keys first (host-side geometry, as the C prints them)
    out = [P + line for line in model.det.trace]
    for r in rows[:min(n, MAX_ROWS)]:
        ev, v = int(r[0]), r[1:]
        if ev == K.EV_GEOM:
            out += [f"{P} pix0_vector_meters {_vec(v[0:3])}", f"{P} fdet_vec {_vec(v[3:6])}",
                    f"{P} sdet_vec {_vec(v[6:9])}", f"{P} pixel_pos_meters {_vec(v[9:12])}",
                    f"{P} R_distance_meters {_g(v[12])}", f"{P} omega_pixel_sr {_g(v[13])}",
                    f"{P} close_distance_meters {_g(v[14])}", f"{P} obliquity_factor {_g(v[15])}",
                    f"{P} diffracted_vec {_vec(v[16:19])}", f"{P} incident_vec {_vec(v[19:22])}",
                    f"{P} lambda_meters {_g(v[22])}", f"{P} lambda_angstroms {_g(v[22] * 1e10)}",
                    f"{P} scattering_vec_A_inv {_vec(v[23:26])}"]
        elif ev == K.EV_HKL:
            out += [f"{P} rot_a_angstroms {_vec(v[0:3])}", f"{P} rot_b_angstroms {_vec(v[3:6])}",
                    f"{P} rot_c_angstroms {_vec(v[6:9])}", f"{P} rot_a_star_A_inv {_vec(v[9:12])}",
                    f"{P} rot_b_star_A_inv {_vec(v[12:15])}", f"{P} rot_c_star_A_inv {_vec(v[15:18])}",
                    f"{P} hkl_frac {_vec(v[18:21])}",
                    f"{P} hkl_rounded {int(v[21])} {int(v[22])} {int(v[23])}"]
        elif ev == K.EV_LATT:
            out += [f"{P} F_latt_a {_g(v[0])}", f"{P} F_latt_b {_g(v[1])}",
                    f"{P} F_latt_c {_g(v[2])}", f"{P} F_latt {_g(v[3])}"]
        elif ev == K.EV_PHI:
            tic = int(v[0])
            out.append(f"{prefix}_PHI phi_tic={tic} phi_deg={_g(model.phis[tic] * RTD)} "
                       f"k_frac={_g(v[2])} F_latt_b={_g(v[3])} F_latt={_g(v[4])}")
        elif ev == K.EV_FCELL:
            out.append(f"{P} F_cell {_g(v[0])}")
        elif ev == K.EV_SOURCE2:
            T = prefix + "_SOURCE2:"
            out += [f"{T} F_cell {_g(v[0])}", f"{T} F_latt {_g(v[1])}",
                    f"{T} F_cell_squared {_g(v[0] * v[0])}", f"{T} F_latt_squared {_g(v[1] * v[1])}",
                    f"{T} I_contribution {_g(v[0] * v[0] * v[1] * v[1])}", f"{T} polar {_g(v[2])}",
                    f"{T} cos2theta {_g(v[3])}", f"{T} lambda_angstroms {_g(v[4] * 1e10)}",
                    f"{T} source_index 2"]
        elif ev == K.EV_FINAL:
            out += [f"{P} I_before_scaling {_g(v[0])}", f"{P} r_e_meters {_g(math.sqrt(R_E_SQR))}",
                    f"{P} r_e_sqr {_g(R_E_SQR)}", f"{P} fluence_photons_per_m2 {_g(model.fluence)}",
                    f"{P} steps {int(v[1])}", f"{P} oversample_thick {int(v[2])}",
                    f"{P} oversample_polar {int(v[3])}", f"{P} oversample_omega {int(v[4])}",
                    f"{P} capture_fraction {_g(v[5])}", f"{P} polar {_g(v[6])}",
                    f"{P} omega_pixel {_g(v[7])}", f"{P} cos_2theta {_g(v[8])}",
                    f"{P} I_pixel_final {_g(v[9])}",
                    f"{P} floatimage_accumulated {_g(np.float32(v[9]))}"]
    if n > MAX_ROWS:
        out.append(f"{P} (trace truncated after {MAX_ROWS} records)")
    return out


def printout_lines(res):
    """-printout / -printout_pixel: nanoBragg's per-pixel console block.

    For the selected pixel the block is rebuilt from the kernel's own trace
    (values of the last sub-path, as the C prints them); without a pixel
    every rendered pixel gets its coordinates and value."""
    model = res.model
    cfg = model.cfg
    S, F = model.shape
    from .interop import to_host
    img = to_host(res.float_image)
    if cfg.printout_fpixel < 0 or cfg.printout_spixel < 0:
        ss, ff = np.nonzero(model.active)
        return ["%4d %4d : pixel %15.10g" % (f, s, img[s, f]) for s, f in zip(ss, ff)]
    s, f = cfg.printout_spixel, cfg.printout_fpixel
    if not (0 <= s < S and 0 <= f < F) or not model.active[s, f]:
        return ["printout pixel (%d, %d) is not rendered" % (f, s)]
    lines = trace_lines(model, s, f, prefix="P")
    val = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "P:":
            val[parts[1]] = parts[2:]
    pos = [float(x) for x in val.get("pixel_pos_meters", ["0", "0", "0"])]
    lam = float(val.get("lambda_meters", ["1e-10"])[0])
    Svec = [float(x) for x in val.get("scattering_vec_A_inv", ["0", "0", "0"])]
    stol = 0.5 * math.sqrt(sum(x * x for x in Svec))
    if cfg.c_parity:
        # nanoBragg.c takes the scattering angle from +x, MOSFLM's beam, in every
        # convention: under -xds its second stol was 107 times the first
        two_theta = math.atan2(math.sqrt(pos[1] ** 2 + pos[2] ** 2), pos[0])
    else:
        beam = [float(x) for x in model.det.beam]
        along = sum(p * b for p, b in zip(pos, beam))
        across = math.sqrt(max(0.0, sum(p * p for p in pos) - along * along))
        two_theta = math.atan2(across, along)
    hkl = [float(x) for x in val.get("hkl_frac", ["0", "0", "0"])]
    hkl0 = val.get("hkl_rounded", ["0", "0", "0"])
    I = float(val.get("I_before_scaling", ["0"])[0])
    out = ["%4d %4d : stol = %g or %g" % (f, s, stol, math.sin(two_theta / 2.0) / (cfg.lambda0 * 1e10)),
           "at %g %g %g" % tuple(pos),
           "hkl= %f %f %f  hkl0= %s %s %s" % (hkl[0], hkl[1], hkl[2], *hkl0),
           " F_cell=%g  F_latt=%g   I = %g" % (float(val.get("F_cell", ["0"])[0]),
                                              float(val.get("F_latt", ["0"])[0]), I),
           "I/steps %15.10g" % (I / model.nsteps),
           "polar   %15.10g" % float(val.get("polar", ["0"])[0]),
           "omega   %15.10g" % float(val.get("omega_pixel", ["0"])[0]),
           "capfrac %15.10g" % float(val.get("capture_fraction", ["0"])[0]),
           "pixel   %15.10g" % img[s, f]]
    # the C prints the cell of the last (phi, mosaic) sub-path
    last = model.cells[1 if cfg.c_parity else 0, -1, -1] * 1e10
    out += ["real-space cell vectors (Angstrom):", "     %-10s  %-10s  %-10s" % ("a", "b", "c")]
    for i, ax in enumerate("XYZ"):
        out.append("%s: %11.8f %11.8f %11.8f" % (ax, last[0, i], last[1, i], last[2, i]))
    del lam
    return out
