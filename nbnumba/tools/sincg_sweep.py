"""Precision sweep of the lattice factor sincg(πk, N) = sin(Nπk)/sin(πk).

Usage::

    nbnumba-sincg-sweep --N 47 --k -0.61 -0.58 [--steps 301] [--outdir DIR]
                        [--prefix sincg_sweep]
    python -m nbnumba.tools.sincg_sweep ...

For each k of ``linspace(k0, k1, steps)`` it evaluates

* ``ref_f64``: an accurate reference.  It is *not* the literal double-precision
  ``sin(N x)/sin(x)``: that formula loses everything near integer k, where both
  sines are rounding noise (for N=47 it returns about -40 instead of 47 at
  k=1).  The reference uses the reduction below, in extended precision
  (``np.longdouble``) when the platform has it, rounded to float64.
* ``naive_f32``: everything in float32: ``x = f32(π)·f32(k)``,
  ``sin(f32(N)·x)/sin(x)`` (N where x == 0).
* ``reduced_f32``: ``d = k - rint(k)`` computed in float64 then cast to float32,
  ``n = rint(k)``, and ``(-1)^(n(N-1)) · sin(Nπd)/sin(πd)`` in float32
  (``N`` times the sign where d == 0).
* ``c_f64`` (extra column): the C program's own double expression
  ``sin(N x)/sin(x)`` with ``x = π k`` and N at x == 0, i.e. :func:`sincg`.

The reduction: write k = n + d with n an integer and |d| <= 1/2.  Then
``sin(Nπ(n+d)) = sin(Nπd + nNπ) = (-1)^(nN) sin(Nπd)`` and
``sin(π(n+d)) = (-1)^n sin(πd)``, so
``sincg(πk, N) = (-1)^(nN - n) sin(Nπd)/sin(πd) = (-1)^(n(N-1)) sin(Nπd)/sin(πd)``,
valid for integer N.  At d = 0 the limit of the ratio is N.

Zeros of sincg are at ``k = m/N`` for integers m that are not multiples of N
(multiples of N give integer k, the peaks).  The CSV column ``zero_crossing``
is 1 on the grid row nearest to each such zero inside [k0, k1], else 0.

Outputs DIR/PREFIX.csv, DIR/PREFIX.md (table of at most 61 evenly subsampled
rows plus error summary and zero list) and DIR/PREFIX.png (top: the three
curves; bottom: absolute errors on a log axis; zeros marked), written as one
all-or-nothing set (:func:`nbnumba.io.atomic.output_set`): if one cannot be
written, none changes and no temporary file is left.  Exit status: 0 success,
2 usage or I/O error (one line on stderr).

Limits (:func:`check_limits`): at most :data:`MAX_POINTS` samples and zeros,
``N <= 2**53`` and ``N·max(|k0|, |k1|) <= 2**53`` (:data:`MAX_NK`), so that N,
k and the zero indices m = N·k are exact in double precision.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

PROG = "nbnumba-sincg-sweep"

CSV_COLUMNS = (
    "k",
    "x",
    "ref_f64",
    "naive_f32",
    "naive_abs_err",
    "naive_rel_err",
    "reduced_f32",
    "reduced_abs_err",
    "reduced_rel_err",
    "zero_crossing",
    "c_f64",
    "c_f64_abs_err",
)

__all__ = [
    "CSV_COLUMNS",
    "MAX_POINTS",
    "MAX_NK",
    "check_limits",
    "sincg",
    "sincg_reference",
    "sincg_naive_f32",
    "sincg_reduced_f32",
    "zero_crossings",
    "mark_zeros",
    "sweep",
    "write_outputs",
    "main",
]

#: the most samples, and the most zeros m/N in the k range, that a sweep
#: holds: every one is a CSV row (--steps 99999999999 asked numpy for 745 GiB;
#: --k 0 1e308 gave an infinite zero count, whose ceil raised)
MAX_POINTS = 10_000_000

#: the largest N, and the largest N·|k|, a sweep takes: 2**53, up to which every
#: integer is a double.  Below it N is the exact factor sincg multiplies by, the
#: zero indices m = N·k (ceil/floor of a double product) are the true integers,
#: m/N is the double nearest each zero, and rint(k) fits int64 with room
#: (--k 1e19 1e19 and --k 1e300 1e300 failed casting rint(k) to int64, with two
#: RuntimeWarnings; --N 1e30 overflowed float32).  Float32 and float64 still
#: hold N·π·|k| (< 3e16) as finite numbers.
MAX_NK = 2.0 ** 53


def check_limits(N, k0: float, k1: float, steps: int) -> None:
    """Raise ValueError (one line naming the option) for a sweep outside the
    limits above; the messages use the command line's option names."""
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)):
        try:
            fN = float(N)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"--N must be an integer (got {N!r})") from None
        if not (math.isfinite(fN) and fN == math.floor(fN)):
            raise ValueError(f"--N must be an integer (got {N!r})")
        N = int(fN)
    N = int(N)
    if N < 1:
        raise ValueError(f"--N must be >= 1 (got {N})")
    if N > MAX_NK:
        shown = str(N) if N < 10 ** 20 else f"a {len(str(N))}-digit number"
        raise ValueError(f"--N must be <= 2**53 = {int(MAX_NK)}, where integers stop being "
                         f"exact doubles (got {shown})")
    steps = int(steps)
    if steps < 2:
        raise ValueError(f"--steps must be >= 2 (got {steps})")
    if steps > MAX_POINTS:
        raise ValueError(f"--steps must be <= {MAX_POINTS} (got {steps})")
    k0, k1 = float(k0), float(k1)
    if not (math.isfinite(k0) and math.isfinite(k1)):
        raise ValueError("--k values must be finite")
    zeros = abs(k1 - k0) * N
    if not zeros <= MAX_POINTS:
        raise ValueError(f"--k {_g(k0)} {_g(k1)} with --N {N} holds about "
                         f"{zeros:.3g} zeros of sincg (|k1 - k0| N), more than {MAX_POINTS}: "
                         f"give a narrower range")
    nk = max(abs(k0), abs(k1)) * N
    if not nk <= MAX_NK:
        raise ValueError(f"--k {_g(k0)} {_g(k1)} with --N {N}: N·|k| reaches {nk:.3g}, more "
                         f"than 2**53 = {MAX_NK:.4g}, where the zero indices N·k stop being "
                         f"exact doubles: give smaller |k| or N")


_PI_LD = np.longdouble("3.14159265358979323846264338327950288419716939937510")


def sincg(x, N):
    """C nanoBragg's sincg in float64: ``sin(N x)/sin(x)``, and ``N`` where ``x == 0``.

    Vectorised over ``x`` (and ``N``); returns a float for scalar input.
    """
    x = np.asarray(x, dtype=np.float64)
    Nf = np.asarray(N, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        val = np.sin(Nf * x) / np.sin(x)
    out = np.where(x == 0.0, Nf, val)
    return out[()] if out.ndim == 0 else out


def _check_int_N(N) -> int:
    """N as an int in [1, 2**53], else ValueError."""
    try:
        f = float(N)
        Ni = int(f) if math.isfinite(f) else 0
    except (TypeError, ValueError, OverflowError):
        f, Ni = math.nan, 0
    exact = not isinstance(N, (int, np.integer)) or int(N) == Ni     # 2**53 + 1 rounds to 2**53
    if Ni != f or not 1 <= Ni <= MAX_NK or not exact:
        raise ValueError(f"N must be a positive integer <= 2**53 for the reduced form (got {N})")
    return Ni


def _split(k):
    """k -> (n, d) with n = rint(k) (as a float64: every |k| >= 2**53 is an even
    integer, beyond int64 from 2**63) and d = k - n (exact in float64); a
    non-finite k gives d = nan, without warnings."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        nf = np.rint(k)
        d = k - nf  # exact: k and nf are within 1/2 of each other
    return nf, d


def _sign(n, N: int):
    """(-1)^(n (N-1)) as float (n integer-valued floats from :func:`_split`)."""
    with np.errstate(invalid="ignore"):
        odd = (np.fmod(np.abs(n), 2.0) == 1.0) & ((N - 1) % 2 == 1)
    return np.where(odd, -1.0, 1.0)


def sincg_reference(k, N):
    """Accurate sincg(πk, N) for integer N via the integer/fraction split.

    Evaluated in ``np.longdouble`` (80-bit on x86) and returned as float64.
    """
    Ni = _check_int_N(N)
    n, d = _split(k)
    sign = _sign(n, Ni)
    dl = d.astype(np.longdouble)
    Nl = np.longdouble(Ni)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sin(Nl * _PI_LD * dl) / np.sin(_PI_LD * dl)
    ratio = np.where(d == 0.0, Nl, ratio)
    out = (sign * ratio.astype(np.float64)).astype(np.float64)
    return out[()] if out.ndim == 0 else out


def sincg_naive_f32(k, N):
    """All-float32 sincg(πk, N): x = f32(π)·f32(k); sin(N x)/sin(x); N where x == 0."""
    f = np.float32
    # beyond float32's range (|k| > 3.4e38, outside check_limits) it gives inf/nan quietly
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        k32 = np.asarray(k, dtype=np.float64).astype(f)
        N32 = f(N)
        x32 = (f(np.pi) * k32).astype(f)
        val = (np.sin((N32 * x32).astype(f)) / np.sin(x32)).astype(f)
    out = np.where(x32 == f(0), N32, val).astype(f)
    return out[()] if out.ndim == 0 else out


def sincg_reduced_f32(k, N):
    """Float32 sincg(πk, N) after removing the integer part of k (see module doc).

    ``d = k - rint(k)`` is formed in float64 and cast to float32; the rest is
    float32: ``(-1)^(n(N-1)) · sin(N·π·d)/sin(π·d)``, ``±N`` at d == 0.
    Requires a positive integer N.
    """
    Ni = _check_int_N(N)
    f = np.float32
    n, d = _split(k)
    sign = _sign(n, Ni).astype(f)
    d32 = d.astype(f)
    N32 = f(Ni)
    pid = (f(np.pi) * d32).astype(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (np.sin((N32 * pid).astype(f)) / np.sin(pid)).astype(f)
    ratio = np.where(d32 == f(0), N32, ratio).astype(f)
    out = (sign * ratio).astype(f)
    return out[()] if out.ndim == 0 else out


def zero_crossings(N, k0: float, k1: float) -> np.ndarray:
    """Zeros k = m/N of sincg(πk, N) in [min(k0,k1), max(k0,k1)] (m not a multiple of N).

    ValueError beyond the limits of :func:`check_limits` (more than
    :data:`MAX_POINTS` zeros, N·|k| over 2**53), which the probe's ranges reach too.
    """
    Ni = _check_int_N(N)
    lo, hi = min(k0, k1), max(k0, k1)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("k range must be finite")
    if not max(abs(lo), abs(hi)) * Ni <= MAX_NK:
        raise ValueError(f"N·|k| must be <= 2**53 (N={Ni}, k in [{_g(lo)}, {_g(hi)}])")
    m0 = math.ceil(lo * Ni - 1e-9)
    m1 = math.floor(hi * Ni + 1e-9)
    if m1 - m0 > MAX_POINTS + 1:    # (check_limits' |k1 - k0| N, with rounding slack)
        raise ValueError(f"[{_g(lo)}, {_g(hi)}] holds about {m1 - m0} zeros of sincg for N={Ni}, "
                         f"more than {MAX_POINTS}")
    ms = np.arange(m0, m1 + 1, dtype=np.int64)
    ms = ms[ms % Ni != 0]
    ks = ms / float(Ni)
    return ks[(ks >= lo - 1e-12) & (ks <= hi + 1e-12)]


def mark_zeros(k, zeros) -> np.ndarray:
    """int64 0/1 flags: 1 on the row of ``k`` nearest to each zero.

    The same rows as ``zc[argmin(|k - z|)] = 1`` for every z (the first row
    on a tie) in O(len(k) + len(zeros)·log len(k)) for the sweep's grids: the
    nearest row is next to where z sorts into k (``np.searchsorted``), since
    |k - z| computed in double precision falls and then rises along a sorted k
    (rounding is monotone).  ``k`` may be ascending (k0 < k1), descending or
    constant.  (Other arrays can differ from argmin on a tie that rounding
    makes between rows that are not neighbours in k's order, e.g. a subnormal
    step: mark_zeros([0, 5e-324, 1], [0.5]) marks row 1, argmin row 0; a
    linspace grid of the sweep's sizes has no such ties.)
    """
    k = np.asarray(k, dtype=np.float64)
    z = np.asarray(zeros, dtype=np.float64)
    zc = np.zeros(k.shape, dtype=np.int64)
    n = k.size
    if n == 0 or z.size == 0:
        return zc
    if np.all(k[1:] >= k[:-1]):
        order = np.arange(n)
    elif np.all(k[1:] <= k[:-1]):
        order = np.arange(n - 1, -1, -1)
    else:
        order = np.argsort(k, kind="stable")
    ks = k[order]
    pos = np.searchsorted(ks, z)
    best_i = np.full(z.shape, n, dtype=np.int64)      # original row chosen so far
    best_d = np.full(z.shape, np.inf)
    for cand in (pos - 1, pos):                       # largest below z, smallest at/above
        ok = (cand >= 0) & (cand < n)
        c = np.clip(cand, 0, n - 1)
        v = ks[c]
        # argmin takes the first row of equal values: the smallest original index
        # among the rows holding v (ends of its run in ks; the run is in index order
        # for ascending k and the stable sort, reversed for descending k)
        left = np.searchsorted(ks, v, side="left")
        right = np.searchsorted(ks, v, side="right") - 1
        first = np.minimum(order[left], order[right])
        d = np.abs(v - z)
        better = ok & ((d < best_d) | ((d == best_d) & (first < best_i)))
        best_i = np.where(better, first, best_i)
        best_d = np.where(better, d, best_d)
    zc[best_i[best_i < n]] = 1
    return zc


def _errors(val, ref):
    val = np.asarray(val, dtype=np.float64)
    ab = np.abs(val - ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref != 0.0, ab / np.abs(ref), np.where(ab == 0.0, 0.0, np.inf))
    return ab, rel


def sweep(N: int, k0: float, k1: float, steps: int = 301) -> dict:
    """Evaluate all variants on ``linspace(k0, k1, steps)``; dict of equal-length arrays.

    Keys are :data:`CSV_COLUMNS` plus ``zeros`` (exact zero positions m/N,
    a shorter array), ``away`` (bool: |sin(Nπk)| >= 0.1, i.e. not near a zero)
    and ``N``.
    """
    check_limits(N, k0, k1, steps)
    Ni = _check_int_N(N)
    k = np.linspace(float(k0), float(k1), int(steps))
    ref = sincg_reference(k, Ni)
    naive = sincg_naive_f32(k, Ni)
    red = sincg_reduced_f32(k, Ni)
    c64 = sincg(np.pi * k, Ni)
    naive_abs, naive_rel = _errors(naive, ref)
    red_abs, red_rel = _errors(red, ref)
    c_abs, _ = _errors(c64, ref)
    zeros = zero_crossings(Ni, k0, k1)
    zc = mark_zeros(k, zeros)   # was a loop over zeros of argmin over k: quadratic
    _, d = _split(k)
    away = np.abs(np.sin(Ni * np.pi * d)) >= 0.1
    return {
        "N": Ni,
        "k": k,
        "x": np.pi * k,
        "ref_f64": ref,
        "naive_f32": naive,
        "naive_abs_err": naive_abs,
        "naive_rel_err": naive_rel,
        "reduced_f32": red,
        "reduced_abs_err": red_abs,
        "reduced_rel_err": red_rel,
        "zero_crossing": zc,
        "c_f64": c64,
        "c_f64_abs_err": c_abs,
        "zeros": zeros,
        "away": away,
    }


def _g(v) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "%.9g" % v


def _summary(res: dict) -> dict:
    away = res["away"]

    def mx(a, mask=None):
        a = np.asarray(a, dtype=np.float64)
        if mask is not None:
            a = a[mask]
        a = a[np.isfinite(a)]
        return float(a.max()) if a.size else float("nan")

    return {
        "naive_max_abs": mx(res["naive_abs_err"]),
        "reduced_max_abs": mx(res["reduced_abs_err"]),
        "c_f64_max_abs": mx(res["c_f64_abs_err"]),
        "naive_max_rel_away": mx(res["naive_rel_err"], away),
        "reduced_max_rel_away": mx(res["reduced_rel_err"], away),
        "n_away": int(np.count_nonzero(away)),
    }


def _markdown(res: dict, max_rows: int = 61) -> str:
    k = res["k"]
    N = res["N"]
    n = k.size
    idx = np.unique(np.round(np.linspace(0, n - 1, min(max_rows, n))).astype(int))
    s = _summary(res)
    L = [f"# sincg(πk, N) precision sweep: N = {N}, k ∈ [{_g(k[0])}, {_g(k[-1])}], {n} steps", ""]
    L.append("ref = accurate reference (integer/fraction split, extended precision); "
             "naive = all-float32 sin(Nx)/sin(x); reduced = float32 on d = k - rint(k) "
             "with sign (-1)^(n(N-1)); c_f64 = the C double expression.")
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append("| variant | max abs err | max rel err (away from zeros) |")
    L.append("|---|---:|---:|")
    L.append(f"| naive_f32 | {_g(s['naive_max_abs'])} | {_g(s['naive_max_rel_away'])} |")
    L.append(f"| reduced_f32 | {_g(s['reduced_max_abs'])} | {_g(s['reduced_max_rel_away'])} |")
    L.append(f"| c_f64 | {_g(s['c_f64_max_abs'])} | — |")
    L.append("")
    L.append(f"'Away from zeros' = the {s['n_away']} rows with |sin(Nπk)| ≥ 0.1.")
    L.append("")
    zeros = res["zeros"]
    L.append(f"## Zero crossings (N·k integer, k not integer): {zeros.size}")
    L.append("")
    if zeros.size:
        shown = ", ".join(_g(z) for z in zeros[:50])
        more = f" … ({zeros.size} total)" if zeros.size > 50 else ""
        L.append(f"k = {shown}{more}")
    else:
        L.append("none in range")
    L.append("")
    L.append(f"## Values ({idx.size} of {n} rows)")
    L.append("")
    L.append("| k | ref_f64 | naive_f32 | naive rel err | reduced_f32 | reduced rel err | zero |")
    L.append("|---:|---:|---:|---:|---:|---:|:---:|")
    for i in idx:
        L.append(
            f"| {_g(k[i])} | {_g(res['ref_f64'][i])} | {_g(res['naive_f32'][i])} | "
            f"{_g(res['naive_rel_err'][i])} | {_g(res['reduced_f32'][i])} | "
            f"{_g(res['reduced_rel_err'][i])} | {'●' if res['zero_crossing'][i] else ''} |"
        )
    return "\n".join(L) + "\n"


def _plot(res: dict, path) -> None:
    """The PNG, to ``path`` (a file name or a binary file object)."""
    from nbnumba.extras import require
    matplotlib = require("matplotlib", "PNG plots")

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    k = res["k"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    ax1.plot(k, res["ref_f64"], "k-", lw=1.5, label="reference (f64)")
    ax1.plot(k, res["naive_f32"], "r--", lw=1, label="naive f32")
    ax1.plot(k, res["reduced_f32"], "b:", lw=1.2, label="reduced f32")
    ax1.axhline(0.0, color="0.7", lw=0.5)
    ax1.set_ylabel(f"sincg(πk, {res['N']})")
    ax1.legend(loc="best", fontsize=8)
    tiny = 1e-300

    def pos(a):
        a = np.asarray(a, dtype=np.float64)
        return np.where(a > 0, a, np.nan)

    ax2.semilogy(k, np.clip(pos(res["naive_abs_err"]), tiny, None), "r-", lw=1, label="naive f32")
    ax2.semilogy(k, np.clip(pos(res["reduced_abs_err"]), tiny, None), "b-", lw=1, label="reduced f32")
    ax2.semilogy(k, np.clip(pos(res["c_f64_abs_err"]), tiny, None), "g-", lw=0.8, alpha=0.7,
                 label="C double sin(Nx)/sin(x)")
    ax2.set_ylabel("|value − reference|")
    ax2.set_xlabel("k")
    ax2.legend(loc="best", fontsize=8)
    zeros = res["zeros"]
    if 0 < zeros.size <= 200:
        for z in zeros:
            ax1.axvline(z, color="0.5", lw=0.6, ls="--")
            ax2.axvline(z, color="0.5", lw=0.6, ls="--")
        ax1.plot(zeros, np.zeros_like(zeros), "ko", ms=3, label="_zeros")
    fig.suptitle(f"sincg precision sweep, N={res['N']}")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)


def _write_csv(res: dict, fh, chunk: int = 65536) -> None:
    """The CSV into binary ``fh``, ``chunk`` rows at a time (10 million rows are
    about 2.5 GB of text).  Same text as ``csv.writer`` row by row: no value holds
    a comma, quote or line break, so nothing is quoted; ``tolist`` gives the
    doubles ``float(v)`` would."""
    fh.write((",".join(CSV_COLUMNS) + "\n").encode("utf-8"))
    n = res["k"].size
    for i0 in range(0, n, chunk):
        cols = []
        for c in CSV_COLUMNS:
            vals = np.asarray(res[c][i0:i0 + chunk]).tolist()
            if c == "zero_crossing":
                cols.append([str(int(v)) for v in vals])
            else:
                cols.append([repr(v) if math.isfinite(v) else _g(v) for v in map(float, vals)])
        fh.write("".join(",".join(row) + "\n" for row in zip(*cols)).encode("utf-8"))


def output_paths(outdir: str, prefix: str, png: bool = True) -> dict:
    """``{"csv": path, "md": path, "png": path-or-None}`` of :func:`write_outputs`."""
    base = os.path.join(outdir, prefix)
    return {"csv": base + ".csv", "md": base + ".md", "png": base + ".png" if png else None}


def write_outputs(res: dict, outdir: str = ".", prefix: str = "sincg_sweep", png: bool = True) -> dict:
    """Write PREFIX.csv, PREFIX.md and (unless ``png`` is False) PREFIX.png into ``outdir``.

    One all-or-nothing set (:func:`nbnumba.io.atomic.output_set`): if any file
    cannot be made (a folder in the way, no matplotlib, a full disk) no file
    changes, no temporary is left, and folders this call created are removed
    again; the error (:class:`nbnumba.io.atomic.OutputFileError` naming the
    file, or the writer's) propagates.  Returns :func:`output_paths`.
    """
    from nbnumba.io.atomic import atomic_open, missing_dirs, output_set, remove_empty_dirs

    paths = output_paths(outdir, prefix, png)
    created = missing_dirs(outdir)
    try:
        os.makedirs(outdir, exist_ok=True)
        with output_set():
            with atomic_open(paths["csv"]) as fh:
                _write_csv(res, fh)
            with atomic_open(paths["md"]) as fh:
                fh.write(_markdown(res).encode("utf-8"))
            if png:
                with atomic_open(paths["png"]) as fh:
                    _plot(res, fh)
    except BaseException:
        remove_empty_dirs(created)      # only the empty folders this call made
        raise
    return paths


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    from nbnumba.tools._common import UsageParser
    p = UsageParser(prog=PROG, description="float32 vs float64 precision sweep of sincg(πk, N).")
    p.add_argument("--N", type=int, required=True, help="number of unit cells along the axis (integer >= 1)")
    p.add_argument("--k", type=float, nargs=2, required=True, metavar=("K0", "K1"), help="k range")
    p.add_argument("--steps", type=int, default=301, help="number of k samples (default 301)")
    p.add_argument("--outdir", default=".", help="output directory (default .)")
    p.add_argument("--prefix", default="sincg_sweep", help="output file prefix (default sincg_sweep)")
    p.add_argument("--no-png", action="store_true", help="skip the plot")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    # (guarded_main: one line for ToolError / NBError (OutputFileError,
    # MissingExtraError), exit 2; stdout closed or full; Ctrl-C)
    from nbnumba.tools._common import guarded_main
    return guarded_main(PROG, lambda: _main(argv))


def _main(argv: Optional[Sequence[str]]) -> int:
    from nbnumba.io.atomic import check_writable
    from nbnumba.tools._common import ToolError
    args = _build_parser().parse_args(argv)
    try:
        check_limits(args.N, args.k[0], args.k[1], args.steps)
    except ValueError as exc:
        raise ToolError(str(exc), 2) from None
    if not args.prefix or os.sep in args.prefix or (os.altsep and os.altsep in args.prefix):
        raise ToolError(f"--prefix must be a plain file name prefix (got {args.prefix!r})", 2)
    paths = output_paths(args.outdir, args.prefix, png=not args.no_png)
    if os.path.exists(args.outdir) and not os.path.isdir(args.outdir):
        raise ToolError(f"cannot write outputs in {args.outdir}: it is not a directory", 2)
    if os.path.isdir(args.outdir):
        for kind in ("csv", "md", "png"):   # before the sweep: a folder in the way, ...
            if paths[kind]:
                check_writable(paths[kind])
    if not args.no_png:
        from nbnumba.extras import require
        require("matplotlib", "the PNG plot (or give --no-png)")
    res = sweep(args.N, args.k[0], args.k[1], args.steps)
    try:
        write_outputs(res, args.outdir, args.prefix, png=not args.no_png)
    except OSError as exc:          # creating --outdir
        raise ToolError(f"cannot write outputs in {args.outdir}: {exc.strerror or exc}", 2) from None
    s = _summary(res)
    print(
        f"N={res['N']} k=[{_g(args.k[0])}, {_g(args.k[1])}] steps={args.steps}: "
        f"max abs err naive_f32={_g(s['naive_max_abs'])} reduced_f32={_g(s['reduced_max_abs'])}; "
        f"zeros={res['zeros'].size}"
    )
    for kind in ("csv", "md", "png"):
        if paths[kind]:
            print(f"wrote {paths[kind]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
