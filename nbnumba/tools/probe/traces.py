"""Evidence 1: the two traces of the pixel and their diff (plus the setup they need)."""
from __future__ import annotations

import math
import os
from typing import List, Optional

from nbnumba.io.atomic import missing_dirs
from nbnumba.tools import _common as C
from nbnumba.tools._common import ToolError, read_text
from nbnumba.tools.sincg_sweep import MAX_POINTS

from .common import EXIT_IO, EXIT_RUNNER, EXIT_USAGE, _json, _write, c_trace_lines
from .runners import _port_model, _port_trace, _run_c
from .state import ProbeState

#: C trace keys whose values the probe computes with (sincg plan, rotation audit,
#: summary), and how many numbers each holds.  nan/inf are numbers nanoBragg.c can
#: print: they are reported, not refused.  Text or a wrong count is an edited trace
#: ("hkl_frac x y z" was a ValueError in float(), "rot_a_angstroms 1 2" numpy's
#: "inhomogeneous shape", both tracebacks after the bundle folder was made).
C_NUMERIC_KEYS = {
    "hkl_frac": 3, "scattering_vec_A_inv": 3,
    "rot_a_angstroms": 3, "rot_b_angstroms": 3, "rot_c_angstroms": 3,
    "rot_a_star_A_inv": 3, "rot_b_star_A_inv": 3, "rot_c_star_A_inv": 3,
    "I_before_scaling": 1, "F_latt_a": 1, "F_latt_b": 1, "F_latt_c": 1,
}


def check_c_trace(text: str, name: str):
    """Parse the lines of a stored C trace that the probe keeps (:func:`c_trace_lines`)
    and refuse, as a usage error naming the file, line and field, what nanoBragg.c
    cannot have printed: a malformed per-φ line (``phi_tic=nan``, a field that is
    not ``name=number``) or a key of :data:`C_NUMERIC_KEYS` without its numbers.
    Line numbers are those of ``name``.  Returns the parsed trace."""
    from nbnumba.tracefmt import TraceFormatError, parse_trace
    keep = set(c_trace_lines(text))
    numbered = "\n".join(ln if ln in keep else "" for ln in text.splitlines())
    try:
        tr = parse_trace(numbered, source=f"--c-trace {name}")
    except TraceFormatError as exc:
        raise ToolError(str(exc), EXIT_USAGE) from None
    for e in tr.entries:
        want = C_NUMERIC_KEYS.get(e.key)
        if want is not None and (len(e.values) != want or not e.is_numeric):
            got = e.raw.strip()
            got = got if len(got) <= 60 else got[:57] + "..."
            raise ToolError(f"--c-trace {name} line {e.line}: {e.key}: expected {want} "
                            f"number{'s' if want > 1 else ''}, got {got!r}", EXIT_USAGE)
    return tr


def setup(opts, flags: List[str], argv: List[str], cwd: Optional[str] = None) -> ProbeState:
    """Check the options, normalise the flags, choose the ROI, create the bundle folder."""
    cwd = cwd or os.getcwd()
    S, F = opts.pixel
    if S < 0 or F < 0:
        raise ToolError("--pixel S F must be >= 0", EXIT_USAGE)
    if opts.roi_radius < 0:
        raise ToolError("--roi-radius must be >= 0", EXIT_USAGE)
    if not (math.isfinite(opts.tol) and opts.tol >= 0):
        raise ToolError("--tol must be a finite number >= 0", EXIT_USAGE)
    if opts.sincg_steps < 2:
        raise ToolError("--sincg-steps must be >= 2", EXIT_USAGE)
    if opts.sincg_steps > MAX_POINTS:
        # (nbnumba-sincg-sweep's limit: 99999999999 asked numpy for 745 GiB)
        raise ToolError("--sincg-steps must be <= %d" % MAX_POINTS, EXIT_USAGE)
    c_parity = bool(opts.c_parity or "-c_parity" in flags)
    base = C.strip_flag(flags, ("-trace_pixel", "-dump_pixel"), 2)
    base = C.strip_flag(base, ("-c_parity",), 0)
    base = C.with_floatfile(C.resolve_paths(base, cwd), "float.bin")
    py_mode = ["-c_parity"] if c_parity else []

    c_text_src = None
    if opts.c_trace:
        try:
            c_text_src = read_text(os.path.join(cwd, opts.c_trace), "--c-trace %s" % opts.c_trace)
        except ToolError as exc:
            raise ToolError(str(exc), EXIT_USAGE) from None
        if not c_trace_lines(c_text_src):
            raise ToolError(f"no TRACE_C lines in {opts.c_trace}", EXIT_USAGE)
        check_c_trace(c_text_src, opts.c_trace)     # before the bundle folder exists
    c_bin = None if opts.no_c else C.find_c_bin(opts.c_bin)
    if c_bin and (os.sep in c_bin):
        c_bin = os.path.abspath(os.path.join(cwd, c_bin))

    # ---- geometry and ROI -------------------------------------------------------
    model0 = _port_model(base + py_mode)
    fp, sp = model0.det.fpixels, model0.det.spixels
    if not (S < sp and F < fp):
        raise ToolError(f"pixel (slow {S}, fast {F}) is outside the {fp}x{sp} detector", EXIT_USAGE)
    user_roi = C.flag_values(base, ("-roi",), 4)
    if user_roi is not None:
        try:
            ur = [int(v) for v in user_roi]
        except ValueError:
            raise ToolError("-roi needs four integers", EXIT_USAGE) from None
        if not (ur[0] <= F <= ur[1] and ur[2] <= S <= ur[3]):
            raise ToolError(f"pixel (slow {S}, fast {F}) is outside the given -roi {' '.join(user_roi)}",
                            EXIT_USAGE)
        roi, roi_args, roi_kind = ur, [], "user -roi (kept as given)"
    elif opts.full_c:
        roi, roi_args, roi_kind = None, [], "none (--full-c: the whole detector)"
    else:
        r = opts.roi_radius
        roi = [max(F - r, 0), min(F + r, fp - 1), max(S - r, 0), min(S + r, sp - 1)]
        roi_args = ["-roi"] + [str(v) for v in roi]
        roi_kind = f"box of radius {r} around the pixel (added to both runs)"
    img_roi = roi if roi is not None else [max(F - opts.roi_radius, 0),
                                           min(F + opts.roi_radius, fp - 1),
                                           max(S - opts.roi_radius, 0),
                                           min(S + opts.roi_radius, sp - 1)]
    img_roi_args = [] if user_roi is not None else ["-roi"] + [str(v) for v in img_roi]

    made_dirs = missing_dirs(os.path.join(cwd, opts.outdir))
    try:
        bundle = C.unique_dir(os.path.join(cwd, opts.outdir), C.utc_stamp())
    except OSError as exc:
        raise ToolError(f"cannot create the bundle folder under {opts.outdir}: "
                        f"{exc.strerror or exc}", EXIT_IO) from None
    return ProbeState(opts=opts, flags=list(flags), argv=list(argv), cwd=cwd, S=S, F=F,
                      c_parity=c_parity, base=base, py_mode=py_mode,
                      trace_args=["-trace_pixel", str(S), str(F)], c_text_src=c_text_src,
                      c_bin=c_bin, roi=roi, roi_args=roi_args, roi_kind=roi_kind,
                      img_roi=img_roi, img_roi_args=img_roi_args, bundle=bundle,
                      made_dirs=made_dirs)


def port_trace(p: ProbeState) -> None:
    """trace_py_phi.log: the port's trace of the pixel (model only, no render)."""
    p.py_flags = p.base + p.py_mode + p.roi_args + p.trace_args
    p.model = _port_model(p.py_flags)
    py_lines = _port_trace(p.model, p.S, p.F)
    p.py_text = "\n".join(py_lines) + "\n"
    _write(p.path("trace_py_phi.log"), p.py_text)
    if py_lines and ("not rendered" in py_lines[0] or "outside" in py_lines[0]):
        raise ToolError(py_lines[0].split(":", 1)[1].strip(), EXIT_USAGE)


def c_trace(p: ProbeState) -> None:
    """trace_c_phi.log (and c_stdout.txt): a stored C trace, or the C program run on the
    ROI; with a box ROI, a second C run checks that the ROI does not change the trace."""
    S, F = p.S, p.F
    c_flags = p.base + p.roi_args + p.trace_args
    if p.c_text_src is not None:
        p.c_text = "\n".join(c_trace_lines(p.c_text_src)) + "\n"
        p.c_source = f"stored trace {p.opts.c_trace}"
    elif p.c_bin:
        rc, _ = _run_c(p.c_bin, c_flags, p.opts.timeout)
        lines = c_trace_lines(rc.stdout)
        _write(p.path("c_stdout.txt"), rc.stdout)
        if not any(ln.startswith("TRACE_C: ") for ln in lines):
            raise ToolError(f"C runner printed no per-pixel TRACE_C lines for pixel ({S}, {F})",
                            EXIT_RUNNER)
        p.c_text = "\n".join(lines) + "\n"
        p.c_source = f"{p.c_bin} (run by the probe, OMP_NUM_THREADS=1)"
        if p.roi_args:
            fp = p.model.det.fpixels
            alt = ([0, F, S, S] if F > 0 else [0, fp - 1, max(S - 1, 0), S])
            ra, _ = _run_c(p.c_bin, p.base + ["-roi"] + [str(v) for v in alt] + p.trace_args,
                           p.opts.timeout)
            same = c_trace_lines(ra.stdout) == lines
            p.roi_check = {"alt_roi": alt, "identical": same,
                           "meaning": "C trace with the ROI = the traced row up to the pixel; "
                                      "identical means the box ROI does not change the C trace"}
            if not same:
                p.notes.append("WARNING: the C trace changes with the ROI (box vs row up to the "
                               "pixel); rerun with --full-c")
        p.commands.append("# C trace (in an empty scratch directory; one OpenMP thread so the φ=0 "
                          "carry-over state is that of a single thread)")
        p.commands.append("OMP_NUM_THREADS=1 " + C.shlex_join([p.c_bin] + c_flags))
    if p.c_text is not None:
        _write(p.path("trace_c_phi.log"), p.c_text)


def trace_diff(p: ProbeState) -> None:
    """diff_trace.md and compare_scaling_traces.json: the first divergence and the factors."""
    from nbnumba.tools.trace_diff import diff_traces, render_markdown
    from nbnumba.tracefmt import parse_trace
    # (a stored trace was checked in setup; the C program's own output is parsed here)
    p.c_tr = parse_trace(p.c_text, source="the C trace") if p.c_text is not None else None
    p.py_tr = parse_trace(p.py_text, source="the port trace")
    if p.c_text is not None:
        p.diff = diff_traces(p.c_tr, p.py_tr, p.opts.tol, c_label="C", py_label="PY")
        p.diff.c_source, p.diff.py_source = "trace_c_phi.log", "trace_py_phi.log"
        _write(p.path("diff_trace.md"), render_markdown(p.diff))
        _json(p.path("compare_scaling_traces.json"), p.diff.to_json_dict())
    else:
        _write(p.path("diff_trace.md"), "# Trace diff\n\nNo C trace: set NB_C_BIN, pass --c-bin or "
                                        "--c-trace FILE.\n")
        _json(p.path("compare_scaling_traces.json"), {"available": False, "diverged": None})
