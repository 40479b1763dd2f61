"""nb-compare: run nanoBragg.c and the port on the same flags and compare images.

Usage::

    nb-compare [options] -- <nanoBragg flags>
    python -m nbnumba.tools.compare [options] -- <nanoBragg flags>

Options:

  --c-bin PATH        C program (default: $NB_C_BIN)
  --outdir DIR        parent of the result folder (default: comparisons)
  --roi XMIN XMAX YMIN YMAX
                      restrict the metrics (and previews) to this inclusive pixel
                      box (x = fast, y = slow, as nanoBragg's -roi)
  --threshold R       minimum correlation for success (default 0.999)
  --resample          if the image shapes differ by integer factors, bring the
                      port image to C's shape (block average when larger,
                      np.kron replication when smaller) instead of exiting 4
  --png-scale P       percentile used as the top of the preview colour scale
                      (default 99.5; the diff uses the P-th percentile of |Δ|)
  --no-png            skip the PNG previews (c.png, py.png, diff.png): no
                      matplotlib needed, and a second or so less per comparison
  --save-diff         also write diff.bin (port - C, float32, C's shape)
  --py-args "ARGS"    extra flags for the port only, e.g. --py-args=-c_parity
  --timeout S         give up on a runner after S seconds (exit 6)
  --serial            run C and the port one after the other (default: both at
                      once; the reported run times then share the CPU)
  --c-threads N       set OMP_NUM_THREADS=N for the C run.  nanoBragg.c's phi=0
                      carry-over state differs for the first pixel each OpenMP
                      thread renders, so exact -c_parity comparisons want 1
  --device cpu|cuda   engine of the port (default cpu); cuda adds -device cuda
                      to the port's flags.  Either way the report includes the
                      GPU parity contract (docs/gpu.md): correlation, the
                      largest relative error and the number of "flipped"
                      pixels, those beyond |port - C| <= 1e-6 |C| + 1e-9 max|C|

Each program runs in its own empty temporary directory.  Input files named by
-hkl/-mat/-img/-mask/-sourcefile/-stol are passed as absolute paths (resolved
against the current directory), output file names are reduced to base names,
and ``-floatfile float.bin`` is forced so both float images can be read.  Both
rules cover every argument nanoBragg.c reads as such a flag (it matches flags
by substring: -intfile_x is its -intfile), in --py-args too; a line they cannot
make safe (one argument both an input and an output flag to C, as -hkl-intfile)
is a usage error.  The image shape comes from the ``(FxS pixels)`` line each
program prints.

With --roi the box is checked against the detector size the port reads from
the flags (no rendering) before anything runs or any folder is made; a flag the
port refuses is then a usage error too.  Every position reported (max |Δ|, max
rel error, flipped and non-finite pixels), on the console and in summary.json,
is in image coordinates, ROI or not.

Results go to ``OUTDIR/<UTC stamp>-<8-hex hash of the flags>/``: c_stdout.txt,
c_stderr.txt, py_stdout.txt, py_stderr.txt, c_float.bin, py_float.bin (as
written by each program), c.png, py.png, diff.png (percentile-scaled previews,
max-pooled to at most 800 px; NaN/inf pixels drawn in lime), summary.json and,
with --save-diff, diff.bin.  summary.json is strict JSON: a non-finite number
is written as the string "nan", "inf" or "-inf" (as nbnumba-trace-diff --json
does).  When a comparison stops after the folder was made (a runner failed,
shapes differ, a float file disagrees with its printed shape, the ROI lies
outside C's image) the folder keeps what was written so far for diagnosis, and
summary.json has "status", "error" and "exit_code"; only a folder that cannot
be written at all is left without it.

Non-finite pixels (NaN, ±inf): the report counts them in each image.  A pixel
holding the same special value in both images agrees; any other is a mismatch,
and then correlation, MSE, RMSE, max |Δ|, the sum ratio and the max rel error
are NaN (the verdict fails, exit 3) and the pixel is flipped.  The figures are
taken over the pixels finite in both, and the contract's tolerance over C's
finite pixels.

Exit status: 0 correlation >= threshold; 2 usage error; 6 a runner failed (the
message names it and quotes its last stderr line); 3 correlation below the
threshold (or no correlation: non-finite pixels differ); 4 image shapes differ
(and --resample cannot fix it); 5 I/O error.  Errors are one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nbnumba.tools import _common as C
from nbnumba.tools._common import ToolError

PROG = "nb-compare"
PREVIEW_MAX = 800
#: previews draw NaN and ±inf pixels in this colour (not in either colour map)
NONFINITE_COLOUR = "lime"

# usage errors exit 2 like the nbnumba CLI; a failed runner is 6
EXIT_OK, EXIT_USAGE, EXIT_RUNNER, EXIT_THRESHOLD, EXIT_SHAPE, EXIT_IO = 0, 2, 6, 3, 4, 5

__all__ = ["metrics", "parity_contract", "resample_to", "json_safe", "main", "compare"]

#: the GPU parity contract (docs/gpu.md): a pixel keeps the contract when
#: |port - C| <= CONTRACT_REL * |C| + CONTRACT_ABS * max|C|; the others are
#: "flipped" (an ulp of CUDA's libm moved a discrete decision)
CONTRACT_REL = 1e-6
CONTRACT_ABS = 1e-9
#: relative errors are taken over pixels above this fraction of max|C|
CONTRACT_FLOOR = 1e-3


# --------------------------------------------------------------------------- numerics


def _positions(flat_idx, shape, origin=(0, 0)) -> List[List[int]]:
    """Image positions ([slow, fast] for a 2-D image) of flat indices into a
    (sub)image whose first pixel sits at ``origin`` of the full image."""
    out = []
    for k in flat_idx:
        pos = [int(v) for v in np.unravel_index(int(k), shape)]
        if len(pos) == len(origin):
            pos = [p + int(o) for p, o in zip(pos, origin)]
        out.append(pos)
    return out


def _finite_split(a: np.ndarray, b: np.ndarray):
    """(finite in both, non-finite mismatch) masks.  A pixel that is NaN in
    both images, or the same infinity in both, agrees (both programs produced
    the same IEEE special value) and is in neither mask; any other pixel with a
    NaN or an infinity in either image is a mismatch."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    both = fa & fb
    # == of two infinities is exact and raises no warning; NaN == NaN is False
    same_special = ~fa & ~fb & ((a == b) | (np.isnan(a) & np.isnan(b)))
    return both, ~both & ~same_special, fa, fb


def metrics(c: np.ndarray, py: np.ndarray, origin=(0, 0)) -> dict:
    """Correlation, MSE, RMSE, max |Δ| (and where), sums and their ratio (py/C).

    Positions are in the coordinates of the full image when ``c``/``py`` are a
    region whose first pixel is ``origin`` (slow, fast).

    Non-finite pixels: ``c_nonfinite``/``py_nonfinite`` count the NaN and ±inf
    pixels of each image.  Every figure is taken over the ``n_finite`` pixels
    finite in both images.  A pixel that holds the same special value in both
    (NaN and NaN, inf and inf) agrees; any other non-finite pixel is a
    mismatch (``nonfinite_mismatch``, first ten at ``nonfinite_first``), and
    then the comparison figures (correlation, MSE, RMSE, max |Δ|, sum ratio)
    are NaN: no number describes how far inf is from 1000, and a correlation
    of the finite rest would read as a pass.
    """
    a = np.asarray(c, dtype=np.float64)
    b = np.asarray(py, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    nan = float("nan")
    both, mismatch, fa, fb = _finite_split(a, b)
    out = {"n_pixels": int(a.size), "n_finite": int(both.sum()),
           "c_nonfinite": int(a.size - fa.sum()), "py_nonfinite": int(b.size - fb.sum()),
           "nonfinite_mismatch": int(mismatch.sum()),
           "nonfinite_first": _positions(np.flatnonzero(mismatch)[:10], a.shape, origin)}
    idx = np.flatnonzero(both)
    A, B = a.ravel()[idx], b.ravel()[idx]
    if A.size == 0:
        out.update(correlation=nan, mse=nan, rmse=nan, max_abs_diff=nan, max_abs_diff_at=None,
                   c_sum=0.0, py_sum=0.0, sum_ratio=nan, c_max=nan, py_max=nan)
        return out
    # finite float32 images cannot overflow these float64 sums; float64 input
    # near 1e308 can, and then the figure is an honest inf (or NaN), not a warning
    with np.errstate(over="ignore", invalid="ignore"):
        d = B - A
        da = A - A.mean()
        db = B - B.mean()
        saa = float((da * da).sum())
        sbb = float((db * db).sum())
        if saa > 0.0 and sbb > 0.0 and math.isfinite(saa * sbb):
            corr = float((da * db).sum() / math.sqrt(saa * sbb))
            corr = max(-1.0, min(1.0, corr)) if math.isfinite(corr) else nan
        elif np.array_equal(A, B):
            corr = 1.0  # two identical constant images
        else:
            corr = nan
        mse = float((d * d).mean())
        absd = np.abs(d)
        k = int(np.argmax(absd))
        c_sum, py_sum = float(A.sum()), float(B.sum())
    if c_sum != 0.0:
        ratio = py_sum / c_sum if math.isfinite(c_sum) and math.isfinite(py_sum) else nan
    else:
        ratio = 1.0 if py_sum == 0.0 else math.copysign(float("inf"), py_sum)
    out.update(
        correlation=corr,
        mse=mse,
        rmse=math.sqrt(mse),
        max_abs_diff=float(absd[k]),
        max_abs_diff_at=_positions([idx[k]], a.shape, origin)[0],
        c_sum=c_sum,
        py_sum=py_sum,
        sum_ratio=ratio,
        c_max=float(A.max()),
        py_max=float(B.max()),
    )
    if out["nonfinite_mismatch"]:
        out.update(correlation=nan, mse=nan, rmse=nan, max_abs_diff=nan, max_abs_diff_at=None,
                   sum_ratio=nan)
    return out


def parity_contract(c: np.ndarray, py: np.ndarray, rel: float = CONTRACT_REL,
                    abs_frac: float = CONTRACT_ABS, floor: float = CONTRACT_FLOOR,
                    origin=(0, 0)) -> dict:
    """The GPU parity contract's figures for two images of the same shape:
    correlation, the largest relative error over pixels above ``floor`` of
    max|C| (and where), and the pixels beyond the per-pixel tolerance
    ``rel * |C| + abs_frac * max|C|`` ("flipped": count, fraction, first few).

    max|C| is taken over C's finite pixels (an inf pixel would make the
    tolerance infinite and let every pixel pass).  A pixel that is NaN or
    ±inf in either image is flipped unless both images hold the same special
    value there (``nonfinite_flipped`` counts those flipped); with any such
    pixel the largest relative error is NaN.  Positions are image coordinates
    when the images are a region starting at ``origin`` (slow, fast)."""
    a = np.asarray(c, dtype=np.float64)
    b = np.asarray(py, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    out = {"rel_tol": rel, "abs_tol_of_max": abs_frac, "floor_of_max": floor,
           "n_pixels": int(a.size)}
    if a.size == 0:
        out.update(correlation=float("nan"), max_rel_error=float("nan"), max_rel_error_at=None,
                   nonfinite_flipped=0, flipped=0, flipped_fraction=0.0, flipped_first=[],
                   within_contract=True)
        return out
    out["correlation"] = metrics(a, b)["correlation"]
    both, mismatch, fa, _ = _finite_split(a, b)
    mx = float(np.abs(a[fa]).max()) if fa.any() else 0.0
    bad = mismatch.copy()
    bad_flat = bad.reshape(-1)          # a view: bad is a fresh contiguous copy
    idx = np.flatnonzero(both)
    af, B = a.ravel()[idx], b.ravel()[idx]
    A = np.abs(af)
    with np.errstate(over="ignore", invalid="ignore"):   # float64 input near 1e308: inf, flipped
        d = np.abs(B - af)
        bad_flat[idx] = ~(d <= rel * A + abs_frac * mx)
    if mismatch.any():
        out["max_rel_error"], out["max_rel_error_at"] = float("nan"), None
    else:
        sel = A > floor * mx
        if sel.any():
            relerr = d[sel] / A[sel]
            k = int(np.argmax(relerr))
            out["max_rel_error"] = float(relerr[k])
            out["max_rel_error_at"] = _positions([idx[sel][k]], a.shape, origin)[0]
        else:          # C is all zeros (finite part): exact agreement or no bound
            out["max_rel_error"] = 0.0 if not d.any() else float("inf")
            out["max_rel_error_at"] = None
    flipped = np.flatnonzero(bad)
    out["nonfinite_flipped"] = int(mismatch.sum())
    out["flipped"] = int(flipped.size)
    out["flipped_fraction"] = float(flipped.size) / a.size
    out["flipped_first"] = _positions(flipped[:10], a.shape, origin)
    out["within_contract"] = out["flipped"] == 0
    return out


def _axis_factor(py_n: int, c_n: int) -> Optional[Tuple[str, int]]:
    if py_n == c_n:
        return ("same", 1)
    if py_n > c_n and py_n % c_n == 0:
        return ("down", py_n // c_n)
    if c_n > py_n and c_n % py_n == 0:
        return ("up", c_n // py_n)
    return None


def resample_to(py: np.ndarray, shape: Tuple[int, int]) -> Tuple[np.ndarray, list]:
    """Bring ``py`` to ``shape`` with integer factors per axis.

    Larger axes are block-averaged, smaller ones replicated (``np.kron`` with a
    block of ones).  Raises ValueError when a factor is not an integer.
    """
    img = np.asarray(py, dtype=np.float64)
    plan = []
    for axis in (0, 1):
        f = _axis_factor(img.shape[axis], shape[axis])
        if f is None:
            raise ValueError(f"axis {axis}: {img.shape[axis]} -> {shape[axis]} is not an integer factor")
        plan.append(f)
    (m0, f0), (m1, f1) = plan
    if m0 == "down" or m1 == "down":
        d0 = f0 if m0 == "down" else 1
        d1 = f1 if m1 == "down" else 1
        s, f = img.shape
        # a block holding inf and -inf averages to NaN (no warning: it is the answer)
        with np.errstate(over="ignore", invalid="ignore"):
            img = img.reshape(s // d0, d0, f // d1, d1).mean(axis=(1, 3))
    if m0 == "up" or m1 == "up":
        u0 = f0 if m0 == "up" else 1
        u1 = f1 if m1 == "up" else 1
        img = np.kron(img, np.ones((u0, u1)))
    return img.astype(np.float32), [[m0, f0], [m1, f1]]


def _pool(img: np.ndarray, signed: bool) -> np.ndarray:
    """Max-pool (max |.| keeping the sign when ``signed``) to <= PREVIEW_MAX pixels a side."""
    s, f = img.shape
    k = max(1, int(math.ceil(max(s, f) / PREVIEW_MAX)))
    if k == 1:
        return img
    ps, pf = (-s) % k, (-f) % k
    a = np.pad(img, ((0, ps), (0, pf)))
    a = a.reshape(a.shape[0] // k, k, a.shape[1] // k, k).transpose(0, 2, 1, 3).reshape(
        a.shape[0] // k, a.shape[1] // k, k * k)
    if signed:
        idx = np.argmax(np.abs(a), axis=2)
        return np.take_along_axis(a, idx[..., None], axis=2)[..., 0]
    return a.max(axis=2)


def _scale_top(values: np.ndarray, pct: float) -> float:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 1.0
    top = float(np.percentile(v, pct))
    if not top > 0.0:
        top = float(v.max())
    return top if top > 0.0 else 1.0


def finish_concurrently(runs, timeout=None):
    """Wait for running programs at the same time; each RunResult's ``seconds`` runs
    from that program's own start to its own end (waiting for one after the other
    would give the faster one the slower one's end time).

    ``runs``: ``[(proc, cmd, cwd, label, t_start), ...]``; returns the results in
    that order, or raises the first runner's ToolError once all have ended.
    """
    import threading
    results = [None] * len(runs)
    errors = [None] * len(runs)

    def wait(i, proc, cmd, cwd, label, t0):
        try:
            results[i] = C.finish(proc, cmd, cwd, label, t0, timeout)
        except ToolError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=wait, args=(i, *r), daemon=True) for i, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def write_previews(c: np.ndarray, py: np.ndarray, outdir: str, pct: float, origin=(0, 0)) -> List[str]:
    from nbnumba.extras import require
    matplotlib = require("matplotlib", "PNG plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with np.errstate(invalid="ignore"):     # inf - inf: NaN, drawn as a non-finite pixel
        d = py.astype(np.float64) - c.astype(np.float64)
    paths = []
    ys, xs = origin
    extent = (xs - 0.5, xs + c.shape[1] - 0.5, ys + c.shape[0] - 0.5, ys - 0.5)
    for name, img, signed, title in (
        ("c.png", c.astype(np.float64), False, "C float image"),
        ("py.png", py.astype(np.float64), False, "port float image"),
        ("diff.png", d, True, "port − C"),
    ):
        # non-finite pixels become NaN, which imshow draws in the colour map's
        # "bad" colour (NaN wins the max-pool, so a lone one stays visible)
        finite = np.isfinite(img)
        img = np.where(finite, img, np.nan)
        pooled = _pool(img, signed)
        fig, ax = plt.subplots(figsize=(7, 6))
        if signed:
            top = _scale_top(np.abs(img), pct)
            cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=NONFINITE_COLOUR)
            im = ax.imshow(pooled, cmap=cmap, vmin=-top, vmax=top, interpolation="nearest",
                           extent=extent)
            label = f"±p{pct:g}(|Δ|) = ±{top:.4g}"
        else:
            top = _scale_top(img, pct)
            bottom = min(0.0, float(img[finite].min())) if finite.any() else 0.0
            cmap = matplotlib.colormaps["magma"].with_extremes(bad=NONFINITE_COLOUR)
            im = ax.imshow(pooled, cmap=cmap, vmin=bottom, vmax=top, interpolation="nearest",
                           extent=extent)
            label = f"0..p{pct:g} = {top:.4g}"
        ax.set_title(f"{title} ({c.shape[1]}x{c.shape[0]} px; scale {label})", fontsize=9)
        ax.set_xlabel("fast pixel")
        ax.set_ylabel("slow pixel")
        fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        p = os.path.join(outdir, name)
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = C.UsageParser(prog=PROG, usage="%(prog)s [options] -- <nanoBragg flags>",
                      description="Compare nanoBragg.c and nbnumba float images for the same flags.",
                      usage_exit=EXIT_USAGE)
    p.add_argument("--c-bin", help="C program (default $NB_C_BIN)")
    p.add_argument("--outdir", default="comparisons", help="parent of the result folder")
    p.add_argument("--roi", nargs=4, type=int, metavar=("XMIN", "XMAX", "YMIN", "YMAX"))
    p.add_argument("--threshold", type=float, default=0.999, help="minimum correlation (0.999)")
    p.add_argument("--resample", action="store_true", help="resample the port image to C's shape")
    p.add_argument("--png-scale", type=float, default=99.5, help="preview percentile (99.5)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG previews")
    p.add_argument("--save-diff", action="store_true", help="also write diff.bin")
    p.add_argument("--py-args", action="append", default=[], help="extra flags for the port only")
    p.add_argument("--timeout", type=C.timeout_seconds, default=None, help="seconds per runner")
    p.add_argument("--serial", action="store_true", help="run C then the port, not both at once")
    p.add_argument("--c-threads", type=int, default=None, help="OMP_NUM_THREADS for the C run")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="engine of the port (cuda: -device cuda); the GPU parity contract is reported")
    return p


def _glue_py_args(opts: List[str]) -> List[str]:
    """``--py-args -c_parity`` -> ``--py-args=-c_parity`` (argparse would take it for an option)."""
    out, i = [], 0
    while i < len(opts):
        if opts[i] == "--py-args" and i + 1 < len(opts):
            out.append("--py-args=" + opts[i + 1])
            i += 2
            continue
        out.append(opts[i])
        i += 1
    return out


def _split_py_args(values: Sequence[str]) -> List[str]:
    """Shell-split every --py-args value; an unbalanced quote is a usage error
    (shlex raised ValueError, a traceback)."""
    import shlex
    out: List[str] = []
    for v in values:
        try:
            out += shlex.split(v)
        except ValueError as exc:
            raise ToolError(f"argument --py-args: cannot split {v!r} into arguments: {exc}",
                            EXIT_USAGE) from None
    return out


def _image_shape_from_flags(argv: Sequence[str], cwd: str) -> Tuple[int, int]:
    """(slow, fast) pixel counts of the detector the port builds from ``argv``,
    without rendering anything (the flag parser and the detector geometry
    only).  A flag the port refuses is a usage error, as one line."""
    from nbnumba.errors import NBError
    from nbnumba.flags import HelpRequested, parse_argv
    from nbnumba.geometry import build_detector
    from nbnumba.validate import check_config
    why = "--roi: cannot tell the image size from the flags"
    try:
        cfg = check_config(parse_argv(argv, cwd=cwd))
        det = build_detector(cfg, trace=False)      # (-pixel <= 0: its ConfigError)
    except HelpRequested:
        raise ToolError(f"{why}: they ask for help (-h); give the flags of a run",
                        EXIT_USAGE) from None
    except NBError as exc:
        raise ToolError(f"{why}: {exc}", EXIT_USAGE) from None
    except (ArithmeticError, ValueError) as exc:    # geometry the engine would refuse later
        raise ToolError(f"{why}: {type(exc).__name__}: {exc}", EXIT_USAGE) from None
    return det.spixels, det.fpixels


def _check_roi(roi, shape: Tuple[int, int], whose: str) -> None:
    x0, x1, y0, y1 = roi
    s, f = shape
    if x1 >= f or y1 >= s:
        raise ToolError(f"--roi {x0} {x1} {y0} {y1} is outside the {f}x{s} {whose} "
                        f"(XMAX <= {f - 1}, YMAX <= {s - 1})", EXIT_USAGE)


def _load_float(path: str, shape, label: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.float32)
    except OSError as exc:
        raise ToolError(f"cannot read the {label} float image {path}: {exc.strerror or exc}",
                        EXIT_IO) from None
    if data.size != shape[0] * shape[1]:
        raise ToolError(f"{label} float image has {data.size} values but stdout says "
                        f"{shape[1]}x{shape[0]} pixels", EXIT_IO)
    return data.reshape(shape)


def _write_bytes(path: str, data: bytes) -> None:
    """Atomic write (nbnumba.io.atomic): a reader never sees half a file.  Any
    failure is the I/O exit, not the engine's usage status of OutputFileError."""
    from nbnumba.errors import NBError
    from nbnumba.io.atomic import atomic_write_bytes
    try:
        atomic_write_bytes(path, data)
    except NBError as exc:
        raise ToolError(str(exc), EXIT_IO) from None
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_IO) from None


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def json_safe(v):
    """``v`` with every non-finite float replaced by its name, as
    nbnumba-trace-diff's --json does: ``"nan"``, ``"inf"``, ``"-inf"``
    (json.dumps would write the bare NaN/Infinity that strict JSON readers reject)."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (bool, int, str)) or v is None:
        return v
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(v, np.integer):
        return int(v)
    return v


def _write_summary(out: str, summary: dict) -> None:
    text = json.dumps(json_safe(summary), indent=2, allow_nan=False)
    _write_text(os.path.join(out, "summary.json"), text + "\n")


def _check_run(r: C.RunResult, float_path: str) -> None:
    if r.returncode != 0:
        why = C.last_line(r.stderr) or C.last_line(r.stdout) or "no output"
        raise ToolError(f"{r.label} runner failed (exit {r.returncode}): {why}", EXIT_RUNNER)
    if not os.path.isfile(float_path):
        why = C.last_line(r.stderr) or C.last_line(r.stdout) or "no output"
        raise ToolError(f"{r.label} runner failed: no float image written (last line: {why})",
                        EXIT_RUNNER)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "%.6g" % v
    return str(v)


#: summary.json "status" of a comparison that stopped with this exit status
_FAILED_STATUS = {EXIT_RUNNER: "runner_failed", EXIT_SHAPE: "shape_mismatch", EXIT_IO: "io_error",
                  EXIT_USAGE: "usage_error"}


def compare(opts: argparse.Namespace, flags: List[str], cwd: Optional[str] = None) -> Tuple[int, dict]:
    cwd = cwd or os.getcwd()
    c_bin = C.find_c_bin(opts.c_bin)
    if not c_bin:
        raise ToolError("no C program: set NB_C_BIN or pass --c-bin PATH", EXIT_USAGE)
    if os.sep in c_bin or (os.altsep and os.altsep in c_bin):
        c_bin = os.path.abspath(os.path.join(cwd, c_bin))
    if not (math.isfinite(opts.threshold)):
        raise ToolError("--threshold must be a finite number", EXIT_USAGE)
    if opts.c_threads is not None and opts.c_threads < 1:
        raise ToolError("--c-threads must be >= 1", EXIT_USAGE)
    if not (0.0 < opts.png_scale <= 100.0):
        raise ToolError(f"--png-scale must be in (0, 100] (got {opts.png_scale:g})", EXIT_USAGE)
    if opts.roi is not None:
        x0, x1, y0, y1 = opts.roi
        if x0 < 0 or y0 < 0 or x1 < x0 or y1 < y0:
            raise ToolError("--roi needs 0 <= XMIN <= XMAX and 0 <= YMIN <= YMAX", EXIT_USAGE)
    py_extra = _split_py_args(opts.py_args)
    # the previews need matplotlib: say so (one line, exit 2) before the runs,
    # not after them with a result folder lacking summary.json
    if not getattr(opts, "no_png", False):
        from nbnumba.extras import require
        require("matplotlib", "nb-compare's PNG previews (or --no-png)")
    device = getattr(opts, "device", "cpu") or "cpu"
    if device == "cuda":
        py_extra += ["-device", "cuda"]
    # the port's own flags may name files too: they stay in its scratch folder
    py_extra = C.resolve_paths(py_extra, cwd)

    run_flags = C.with_floatfile(C.resolve_paths(flags, cwd), "float.bin")
    if opts.roi is not None:
        # before anything runs or any folder is made: the port's reading of the
        # flags gives the detector size (checked against C's image again later)
        _check_roi(opts.roi, _image_shape_from_flags(run_flags + py_extra, cwd), "detector")
    tag = C.args_hash(list(flags) + ["--py-args"] + py_extra)
    try:
        out = C.unique_dir(os.path.join(cwd, opts.outdir), f"{C.utc_stamp()}-{tag}")
    except OSError as exc:
        raise ToolError(f"cannot create the output folder under {opts.outdir}: "
                        f"{exc.strerror or exc}", EXIT_IO) from None

    summary: dict = {
        "tool": PROG,
        "created_utc": C.utc_stamp(),
        "cwd": cwd,
        "args": list(flags),
        "py_args": py_extra,
        "c_bin": c_bin,
        "threshold": opts.threshold,
        "roi": list(opts.roi) if opts.roi else None,
        "concurrent": not opts.serial,
        "device": device,
        "outdir": out,
    }
    try:
        return _compare_into(opts, flags, cwd, c_bin, py_extra, run_flags, out, summary)
    except ToolError as e:
        # the folder exists: it keeps the logs written so far for diagnosis and
        # a summary.json saying why the comparison stopped
        summary.update(status=_FAILED_STATUS.get(e.code, "failed"), error=str(e), exit_code=e.code)
        try:
            _write_summary(out, summary)
        except ToolError:
            pass              # the folder itself is unwritable: report the first error
        raise


def _compare_into(opts, flags, cwd, c_bin, py_extra, run_flags, out, summary) -> Tuple[int, dict]:
    with tempfile.TemporaryDirectory(prefix="nbcmp-c-") as cdir, \
            tempfile.TemporaryDirectory(prefix="nbcmp-py-") as pdir:
        C.stage_fdump(flags, cwd, cdir)
        C.stage_fdump(flags, cwd, pdir)
        c_cmd = [c_bin, *run_flags]
        p_cmd = C.port_command(run_flags + py_extra)
        summary["c_cmd"] = c_cmd
        summary["py_cmd"] = p_cmd
        c_env = None
        if opts.c_threads is not None:
            c_env = dict(os.environ, OMP_NUM_THREADS=str(opts.c_threads))
        summary["c_threads"] = opts.c_threads if opts.c_threads is not None else os.environ.get(
            "OMP_NUM_THREADS")
        if opts.serial:
            rc = C.run(c_cmd, cdir, c_env, "C", opts.timeout)
            rp = C.run(p_cmd, pdir, C.port_env(), "port", opts.timeout)
        else:
            tc = time.perf_counter()
            pc = C.start(c_cmd, cdir, c_env, "C")
            try:
                tp = time.perf_counter()
                pp = C.start(p_cmd, pdir, C.port_env(), "port")
            except ToolError:
                pc.kill()
                pc.communicate()
                raise
            rc, rp = finish_concurrently([(pc, c_cmd, cdir, "C", tc), (pp, p_cmd, pdir, "port", tp)],
                                         opts.timeout)
        for r, pre in ((rc, "c"), (rp, "py")):
            _write_text(os.path.join(out, f"{pre}_stdout.txt"), r.stdout)
            _write_text(os.path.join(out, f"{pre}_stderr.txt"), r.stderr)
        summary["c_seconds"] = round(rc.seconds, 3)
        summary["py_seconds"] = round(rp.seconds, 3)
        summary["c_returncode"], summary["py_returncode"] = rc.returncode, rp.returncode
        cf, pf = os.path.join(cdir, "float.bin"), os.path.join(pdir, "float.bin")
        _check_run(rc, cf)
        _check_run(rp, pf)
        # copied before they are read, so that a float file that disagrees
        # with its program's printed shape (exit 5) is kept for diagnosis
        try:
            shutil.copyfile(cf, os.path.join(out, "c_float.bin"))
            shutil.copyfile(pf, os.path.join(out, "py_float.bin"))
        except OSError as exc:
            raise ToolError(f"cannot copy the float images to {out}: {exc.strerror or exc}",
                            EXIT_IO) from None
        c_shape = C.parse_shape(rc.stdout)
        p_shape = C.parse_shape(rp.stdout)
        for shp, r in ((c_shape, rc), (p_shape, rp)):
            if shp is None:
                raise ToolError(f"{r.label} runner failed: no '(FxS pixels)' line in its stdout",
                                EXIT_RUNNER)
        summary["c_shape"] = list(c_shape)
        summary["py_shape"] = list(p_shape)
        c_img = _load_float(cf, c_shape, "C")
        p_img = _load_float(pf, p_shape, "port")

    summary["resampled"] = None
    if p_shape != c_shape:
        msg = (f"image shapes differ: C {c_shape[1]}x{c_shape[0]} vs port "
               f"{p_shape[1]}x{p_shape[0]} pixels (fast x slow)")
        if not opts.resample:
            raise ToolError(msg + "; --resample handles integer factors", EXIT_SHAPE)
        try:
            p_img, plan = resample_to(p_img, c_shape)
        except ValueError:
            raise ToolError(msg + "; not integer factors, cannot resample", EXIT_SHAPE) from None
        summary["resampled"] = {"from": list(p_shape), "to": list(c_shape), "per_axis": plan}

    origin = (0, 0)
    c_m, p_m = c_img, p_img
    if opts.roi is not None:
        # checked against the detector before the runs; C's printed shape decides
        _check_roi(opts.roi, c_shape, "C image")
        x0, x1, y0, y1 = opts.roi
        c_m, p_m = c_img[y0:y1 + 1, x0:x1 + 1], p_img[y0:y1 + 1, x0:x1 + 1]
        origin = (y0, x0)
    # every position reported (max |Δ|, max rel error, flipped and non-finite
    # pixels) is in image coordinates: the functions add the ROI's origin
    m = metrics(c_m, p_m, origin)
    passed = bool(np.isfinite(m["correlation"]) and m["correlation"] >= opts.threshold)
    code = EXIT_OK if passed else EXIT_THRESHOLD
    summary.update(metrics=m, passed=passed, status="ok" if passed else "below_threshold",
                   exit_code=code, contract=parity_contract(c_m, p_m, origin=origin))
    previews = not getattr(opts, "no_png", False)
    files = ["c_stdout.txt", "c_stderr.txt", "py_stdout.txt", "py_stderr.txt", "c_float.bin",
             "py_float.bin"] + (["c.png", "py.png", "diff.png"] if previews else []) + ["summary.json"]
    try:
        if previews:
            write_previews(c_m, p_m, out, opts.png_scale, origin)
        if opts.save_diff:
            # NaN where both are the same infinity, ±inf where one is: IEEE's answer
            with np.errstate(over="ignore", invalid="ignore"):
                diff = p_img.astype(np.float32) - c_img.astype(np.float32)
            _write_bytes(os.path.join(out, "diff.bin"), diff.tobytes())
            files.append("diff.bin")
    except OSError as exc:
        raise ToolError(f"cannot write previews in {out}: {exc.strerror or exc}", EXIT_IO) from None
    summary["files"] = files
    _write_summary(out, summary)
    return code, summary


def _nonfinite_line(m: dict) -> Optional[str]:
    if not (m.get("c_nonfinite") or m.get("py_nonfinite")):
        return None
    line = (f"  non-finite    C {m['c_nonfinite']}, port {m['py_nonfinite']} pixels (NaN or ±inf); "
            f"figures over the {m['n_finite']} finite in both")
    n = m.get("nonfinite_mismatch")
    if n:
        first = m["nonfinite_first"][0]
        line += f"; {_pixels(n)} not the same in both images"
        if len(first) == 2:
            line += f", first at (slow, fast) = ({first[0]}, {first[1]})"
    else:
        line += "; each is the same value in both images"
    return line


def _pixels(n: int) -> str:
    return f"{n} pixel" if n == 1 else f"{n} pixels"


def _report(summary: dict) -> str:
    m = summary["metrics"]
    cs, ps = summary["c_shape"], summary["py_shape"]
    L = [f"{PROG}: C {cs[1]}x{cs[0]} ({summary['c_seconds']:.2f} s) vs port {ps[1]}x{ps[0]} "
         f"({summary['py_seconds']:.2f} s{', concurrent' if summary['concurrent'] else ''})"]
    if summary.get("resampled"):
        L.append(f"  port image resampled to C's shape: {summary['resampled']['per_axis']}")
    if summary.get("roi"):
        L.append("  roi (x fast, y slow): %d..%d x %d..%d" % tuple(summary["roi"]))
    L.append(f"  pixels        {m['n_pixels']}")
    nf = _nonfinite_line(m)
    if nf:
        L.append(nf)
    L.append(f"  correlation   {_fmt(m['correlation'])}")
    L.append(f"  MSE           {_fmt(m['mse'])}")
    L.append(f"  RMSE          {_fmt(m['rmse'])}")
    at = m.get("max_abs_diff_at")
    L.append(f"  max |Δ|       {_fmt(m['max_abs_diff'])}" + (f"  at (slow, fast) = ({at[0]}, {at[1]})"
                                                              if at and len(at) == 2 else ""))
    L.append(f"  sum C         {_fmt(m['c_sum'])}")
    L.append(f"  sum port      {_fmt(m['py_sum'])}")
    L.append(f"  sum ratio     {_fmt(m['sum_ratio'])}  (port / C)")
    k = summary.get("contract")
    if k:
        at = k.get("max_rel_error_at")
        L.append(f"  device        {summary.get('device', 'cpu')}")
        L.append(f"  max rel error {_fmt(k['max_rel_error'])}" + (
            f"  at (slow, fast) = ({at[0]}, {at[1]})" if at and len(at) == 2 else "")
            + f"  (pixels above {k['floor_of_max']:g} of max)")
        L.append(f"  flipped       {k['flipped']} of {k['n_pixels']} pixels beyond "
                 f"{k['rel_tol']:g} |C| + {k['abs_tol_of_max']:g} max  (GPU parity contract: "
                 f"{'kept' if k['within_contract'] else 'not kept'})")
    verdict = "PASS" if summary["passed"] else "FAIL"
    if m.get("nonfinite_mismatch"):
        why = (f"{_pixels(m['nonfinite_mismatch'])} non-finite in one image and not the same "
               "in the other: no correlation")
    else:
        why = (f"correlation {_fmt(m['correlation'])} "
               f"{'>=' if summary['passed'] else '<'} threshold {summary['threshold']:g}")
    L.append(f"  verdict       {verdict} ({why})")
    L.append(f"  wrote {summary['outdir']}")
    return "\n".join(L)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body():
        split = C.split_or_help(argv, __doc__)
        if split is None:
            return EXIT_OK
        opts_argv, flags = split
        opts = _parser().parse_args(_glue_py_args(opts_argv))
        if not flags:
            raise ToolError("no nanoBragg flags: use nb-compare [options] -- <nanoBragg flags>",
                            EXIT_USAGE)
        code, summary = compare(opts, flags)
        print(_report(summary))
        return code
    return C.guarded_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
