"""The φ-step-1 control: one φ step, so no φ=0 carry-over is possible."""
from __future__ import annotations

import os

import numpy as np

from nbnumba.tools import _common as C
from .common import _g, _write, c_trace_lines
from .runners import _port_render, _run_c


def _phistep1(outdir, base, py_mode, roi, roi_args, trace_args, c_bin, S, F, opts, commands) -> dict:
    """-phisteps 1 -osc 0 control run: no φ=0 carry-over possible (one step, C never rotates
    when φ0 = 0, and then uses the unrotated cell)."""
    from nbnumba.tools.trace_diff import diff_traces
    from nbnumba.tracefmt import parse_trace

    os.makedirs(outdir, exist_ok=True)
    f1 = C.strip_flag(base, ("-phisteps", "-phistep", "-osc"), 1) + ["-phisteps", "1", "-osc", "0"]
    # the saved float images: the ROI, but at most the --roi-radius box around the pixel
    r = opts.roi_radius
    x0, x1 = max(roi[0], F - r), min(roi[1], F + r)
    y0, y1 = max(roi[2], S - r), min(roi[3], S + r)
    info: dict = {"roi": roi, "crop": [x0, x1, y0, y1]}
    res = _port_render(f1 + py_mode + roi_args + trace_args)
    py_img = np.asarray(res.float_image)[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
    py_text = "\n".join(res.trace_lines) + "\n"
    _write(os.path.join(outdir, "trace_py.log"), py_text)
    py_img.tofile(os.path.join(outdir, "py_float_roi.bin"))
    commands.append("# phistep1 control: port (float image cropped to the ROI)")
    commands.append("python -m nbnumba.cli " + C.shlex_join(f1 + py_mode + roi_args + trace_args))
    c_img = None
    c_text = None
    if c_bin:
        rc, full = _run_c(c_bin, f1 + roi_args + trace_args, opts.timeout)
        c_text = "\n".join(c_trace_lines(rc.stdout)) + "\n"
        _write(os.path.join(outdir, "trace_c.log"), c_text)
        commands.append("# phistep1 control: C")
        commands.append("OMP_NUM_THREADS=1 " + C.shlex_join([c_bin] + f1 + roi_args + trace_args))
        if full is not None:
            c_img = full[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
            c_img.tofile(os.path.join(outdir, "c_float_roi.bin"))
    N = [f"phistep1 control for pixel (slow {S}, fast {F})",
         "flags: the probe's flags with -phisteps/-osc replaced by -phisteps 1 -osc 0",
         f"ROI rendered (xmin xmax ymin ymax): {' '.join(str(v) for v in roi)}",
         f"float images c_float_roi.bin / py_float_roi.bin: pixels x {x0}..{x1}, y {y0}..{y1}, "
         f"float32, shape {y1 - y0 + 1} x {x1 - x0 + 1} (slow x fast), row-major",
         "why: with a single φ step at φ0 = 0 nanoBragg.c never rotates the cell, so the φ=0 "
         "carry-over (C-PARITY-001) cannot act; what still differs is not the carry-over.", ""]
    pt = parse_trace(py_text)
    info["I_before_scaling_py"] = pt.scalar("I_before_scaling")
    if c_text is not None:
        d = diff_traces(c_text, py_text, opts.tol)
        info["diverged"] = d.diverged or d.nothing_compared
        info["first_divergence"] = d.first_divergence.name if d.first_divergence else None
        ct = parse_trace(c_text)
        info["I_before_scaling_c"] = ct.scalar("I_before_scaling")
        info["n_diverging_keys"] = len(d.divergences)
        info["diverging_keys"] = [k.name for k in d.divergences]
        verdict = ("NOTHING COMPARED" if d.nothing_compared else
                   "DIVERGED" if d.diverged else "MATCH")
        N.append(f"trace verdict: {verdict} (tol {opts.tol:g})")
        N.append(f"first divergence: {info['first_divergence']}")
        N.append(f"diverging keys: {', '.join(info['diverging_keys']) or 'none'}")
        N.append(f"I_before_scaling C {_g(info['I_before_scaling_c'])} port {_g(info['I_before_scaling_py'])}")
    else:
        N.append("no C run (no C program available or --no-c): port side only")
        N.append(f"I_before_scaling port {_g(info['I_before_scaling_py'])}")
    if c_img is not None:
        dd = py_img.astype(np.float64) - c_img.astype(np.float64)
        info["image_max_abs_diff"] = float(np.max(np.abs(dd))) if dd.size else 0.0
        info["image_max_c"] = float(c_img.max()) if c_img.size else 0.0
        info["pixel_c"] = float(c_img[S - y0, F - x0])
        info["pixel_py"] = float(py_img[S - y0, F - x0])
        N.append(f"float image ROI: max |port - C| = {_g(info['image_max_abs_diff'])} "
                 f"(C max {_g(info['image_max_c'])}); traced pixel C {_g(info['pixel_c'])} "
                 f"port {_g(info['pixel_py'])}")
    _write(os.path.join(outdir, "notes.txt"), "\n".join(N) + "\n")
    return info


def phistep1_step(p) -> None:
    """phistep1/: the same pixel with -phisteps 1 -osc 0, both sides."""
    p.phistep1 = _phistep1(p.path("phistep1"), p.base, p.py_mode, p.img_roi, p.img_roi_args,
                           p.trace_args, p.c_bin, p.S, p.F, p.opts, p.commands)
