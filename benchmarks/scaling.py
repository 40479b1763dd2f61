"""Kernel time versus detector size (W1 at 128^2 ... 2048^2), in-process.

    python -m benchmarks.scaling [--sizes 128 256 512 1024 2048] [--reps 3]
                                 [--threads 2] [--precision double single]
                                 [--png docs/scaling_pixels.png]

For each size the Model is built once, the kernel (``render_float``) is run
once untimed and then ``--reps`` times; the median is plotted against the
pixel count with a least-squares line t = a + b * pixels (a: fixed cost per
call, 1/b: pixel throughput).  JSON goes to
``benchmarks/results/scaling-<date>-<sha>-<host>.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from benchmarks import _cli
from benchmarks import envinfo
from benchmarks import workloads as W

DEFAULT_SIZES = (128, 256, 512, 1024, 2048)
DEFAULT_PNG = envinfo.REPO_ROOT / "docs" / "scaling_pixels.png"


def linear_fit(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Least squares y = a + b x; returns a, b and r^2."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a": float(a), "b": float(b), "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def measure(sizes: Sequence[int], precisions: Sequence[str], reps: int, threads: int, log=print):
    from nbnumba.api import render_float
    W.set_threads(threads)
    out: Dict[str, List[Dict[str, float]]] = {}
    for p in precisions:
        out[p] = []
        for n in sizes:
            with tempfile.TemporaryDirectory() as d:
                model = W.build_model_for(W.argv("W1", d, pixels=int(n), precision=p, threads=threads), d)
                render_float(model)
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    render_float(model)
                    ts.append(time.perf_counter() - t0)
            med = statistics.median(ts)
            out[p].append({"size": int(n), "pixels": int(n) * int(n), "median_s": med, "runs": ts})
            log("scaling: %s %5d^2 %.4f s" % (p, n, med))
    return out


def plot(data, fits, png, title) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for p, pts in data.items():
        x = np.array([q["pixels"] for q in pts], dtype=float)
        y = np.array([q["median_s"] for q in pts])
        f = fits[p]
        line = ax.plot(x / 1e6, y, "o", label="%s (median)" % p)[0]
        xx = np.linspace(0, x.max(), 50)
        ax.plot(xx / 1e6, f["a"] + f["b"] * xx, "-", color=line.get_color(),
                label="fit: %.3g s + %.3g s/Mpix (R^2=%.4f)" % (f["a"], f["b"] * 1e6, f["r2"]))
    ax.set_xlabel("detector pixels (millions)")
    ax.set_ylabel("kernel time (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return envinfo.save_figure(fig, png)


#: distinct sizes the least-squares line needs to mean anything (2 points fit exactly)
MIN_SIZES = 3


def main(argv=None) -> int:
    return _cli.guarded_main("benchmarks.scaling", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    ap = _cli.UsageParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=_cli.positive_int, default=list(DEFAULT_SIZES))
    ap.add_argument("--reps", type=_cli.positive_int, default=3)
    ap.add_argument("--threads", type=_cli.positive_int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", nargs="+", default=["double", "single"], choices=["double", "single"])
    ap.add_argument("--png", default=str(DEFAULT_PNG))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-json", action="store_true")
    opts = ap.parse_args(argv)
    if len(set(opts.sizes)) < MIN_SIZES:
        raise _cli.usage_error("argument --sizes: the fit needs at least %d distinct sizes, got %s"
                               % (MIN_SIZES, " ".join(map(str, opts.sizes))))
    if opts.json and opts.no_json:
        raise _cli.usage_error("argument --json: not allowed with --no-json")
    if not opts.no_json:
        _cli.check_output(opts.json, "--json")
    if os.path.isdir(opts.png) or not opts.png:
        raise _cli.usage_error("argument --png: %r is a directory or empty" % opts.png)
    facts = envinfo.machine_facts()
    data = measure(opts.sizes, opts.precision, opts.reps, opts.threads,
                   log=lambda *a: print(*a, file=sys.stderr, flush=True))
    fits = {p: linear_fit([q["pixels"] for q in pts], [q["median_s"] for q in pts]) for p, pts in data.items()}
    title = "W1 kernel time vs pixels, %d threads, %s, git %s" % (opts.threads, facts["cpu_model"], facts["git_sha"])
    png = plot(data, fits, opts.png, title)
    print("| size | pixels | " + " | ".join("%s s" % p for p in data) + " |")
    print("|---|---|" + "---|" * len(data))
    for i, n in enumerate(opts.sizes):
        print("| %d^2 | %d | " % (n, n * n) + " | ".join("%.4f" % data[p][i]["median_s"] for p in data) + " |")
    for p, f in fits.items():
        print("fit %s: t = %.4g s + %.4g s/Mpixel (R^2 = %.5f) -> %.1f Mpixel/s"
              % (p, f["a"], f["b"] * 1e6, f["r2"], 1e-6 / f["b"] if f["b"] > 0 else float("nan")))
    print("scaling: wrote %s" % png, file=sys.stderr)
    if not opts.no_json:
        path = Path(opts.json) if opts.json else envinfo.RESULTS_DIR / envinfo.result_name(prefix="scaling", sha=facts["git_sha"])
        path.parent.mkdir(parents=True, exist_ok=True)
        _cli.write_text(path, _cli.json_text({"kind": "scaling", "machine": facts, "threads": opts.threads,
                                              "reps": opts.reps, "data": data, "fits": fits}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
