"""Roofline-style figures of the CPU image kernel (issue 12's table in
docs/performance.md): sub-paths per CPU-second, GFLOP per CPU-second at a
fixed flop count per sub-path, the fraction of one core's FP64 peak, and the
vector width of the hot loops' compiled code.

    python -m benchmarks.roofline                        # W2 and W3, 2 threads
    python -m benchmarks.roofline --workloads W2 --threads 1 --ghz 2.1

Kernel alone: ``render_float`` on a model built once, one untimed call, then
the median of ``--reps`` calls; CPU seconds from ``time.process_time()`` (all
threads), so the fraction is per CPU-second, a lower bound on the loops'
efficiency (it also counts the per-pixel work, cache misses and the guest's
steal).  The flop count is the one docs/performance.md derives from the
default-mode source (square crystal, every N > 1): **169** per sub-path
(h, k, l 15; per axis 3 + 2 x 22 + 1; the lattice product 3; F lookup and
sum 7).  Peak: ``--ghz`` x ``--fma-units`` x 8 doubles (512-bit) x 2.

The assembly counts come from a child process that compiles the two hot
functions into an empty numba cache (numba cannot list the code of cached
functions): ``_lattice_square_fast`` (float64 sines) and ``_lean_sum``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

#: flops per default-mode sub-path (see the module docstring)
FLOPS_PER_SUBPATH = 169

_ASM_CHILD = r"""
import json, numpy as np
from nbnumba.kernels import cpu as K
n = 64
cells = np.random.default_rng(0).normal(size=(2, 9, n)) * 1e-9
work = np.zeros((K.N_WORK, n))
K._lattice_square_fast(np.int64(1), (1e9, 2e9, 3e9), cells, work, 5.0, 6.0, 7.0, False)
K._lean_sum(work, 0, n, np.ones((2, 2, 2)), 0, 0, 1, 0, 1, 0, 1, 100.0)
out = {}
for fn in (K._lattice_square_fast, K._lean_sum):
    asm = fn.inspect_asm(fn.signatures[-1])
    lines = asm.splitlines()
    out[fn.__name__] = {k: sum(1 for s in lines if k in s)
                        for k in ("zmm", "ymm", "vfmadd", "vdivpd", "gather")}
print(json.dumps(out))
"""


def asm_counts() -> dict:
    """{function: {pattern: lines}} of the hot loops compiled afresh."""
    with tempfile.TemporaryDirectory(prefix="nb-roofline-") as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d, NBNUMBA_AOT="0")
        r = subprocess.run([sys.executable, "-c", _ASM_CHILD], env=env, capture_output=True,
                           text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("assembly probe failed: " + r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(name: str, threads: int, reps: int, workdir: str, pixels=None) -> dict:
    """Kernel CPU seconds (median of reps) and sub-paths of workload name
    (pixels: a pixels x pixels detector instead of the workload's)."""
    from benchmarks import workloads as W
    from nbnumba.api import render_float
    W.set_threads(threads)
    model = W.build_model_for(W.argv(name, workdir, precision="double", pixels=pixels), workdir)
    render_float(model)                 # loads the kernels
    cpu, wall = [], []
    for _ in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        render_float(model)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return dict(workload=name, subpaths=W.model_subpaths(model), cpu_s=statistics.median(cpu),
                cpu_s_all=[round(x, 3) for x in cpu], wall_s=statistics.median(wall))


def roofline_row(m: dict, peak_gflops: float) -> dict:
    """Derived figures of one measure() result against one core's peak."""
    msub = m["subpaths"] / m["cpu_s"] / 1e6
    gflop = msub * FLOPS_PER_SUBPATH / 1e3
    return dict(m, msub_per_cpu_s=msub, gflop_per_cpu_s=gflop, fraction_of_peak=gflop / peak_gflops)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", default=["W2", "W3"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ghz", type=float, default=2.1, help="core clock for the peak (GHz)")
    ap.add_argument("--fma-units", type=int, default=2, help="512-bit FMA units per core")
    ap.add_argument("--no-asm", action="store_true", help="skip the assembly probe")
    a = ap.parse_args(argv)
    from benchmarks import envinfo
    peak = a.ghz * a.fma_units * 8 * 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="nb-roofline-") as d:
        for name in a.workloads:
            rows.append(roofline_row(measure(name, a.threads, a.reps, d), peak))
    asm = None if a.no_asm else asm_counts()
    print("CPU: %s; %d thread(s); git %s; peak %.1f GFLOP/s per core (%.2f GHz x %d FMA x 8 x 2)"
          % (envinfo.cpu_model(), a.threads, envinfo.git_sha(), peak, a.ghz, a.fma_units))
    print("| workload | sub-paths | kernel CPU-s (median; all) | Msub-paths per CPU-s "
          "| GFLOP per CPU-s | fraction of FP64 peak (one core, 512-bit) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %.3f; %s | %.1f | %.1f | %.1f %% |"
              % (r["workload"], r["subpaths"], r["cpu_s"], ", ".join("%.3f" % x for x in r["cpu_s_all"]),
                 r["msub_per_cpu_s"], r["gflop_per_cpu_s"], 100 * r["fraction_of_peak"]))
    if asm:
        for fn, c in asm.items():
            print("- `%s`: %s" % (fn, ", ".join("%d %s" % (v, k) for k, v in c.items())))
    print(json.dumps(dict(cpu=envinfo.cpu_model(), git=envinfo.git_sha(), threads=a.threads,
                          peak_gflops_per_core=peak, flops_per_subpath=FLOPS_PER_SUBPATH,
                          rows=rows, asm=asm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
