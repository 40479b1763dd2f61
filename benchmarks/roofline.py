"""Roofline-style figures of the CPU image kernel (issue 12's table in
docs/performance.md): sub-paths per CPU-second, GFLOP per CPU-second at a
fixed flop count per sub-path, the fraction of one core's FP64 peak, and the
vector width of the hot loops' compiled code.

    python -m benchmarks.roofline                        # W2 and W3, 2 threads
    python -m benchmarks.roofline --workloads W2 --threads 1
    python -m benchmarks.roofline --peak-only            # the measured peak alone

Kernel alone: ``render_float`` on a model built once, one untimed call, then
the median of ``--reps`` calls; CPU seconds from ``time.process_time()`` (all
threads), so the fraction is per CPU-second, a lower bound on the loops'
efficiency (it also counts the per-pixel work, cache misses and the guest's
steal).  The flop count is the one docs/performance.md derives from the
default-mode source (square crystal, every N > 1): **170** per sub-path
(h, k, l 15; per axis 3 for the reduction, 2 x 22 for the two sine
polynomials and 2 for the lattice fraction's numerator and denominator
products; the fraction's one division; F lookup and sum 7).

The peak is **measured** (``measure_peak``): one core's FP64 FMA throughput,
from a loop of independent vector FMAs that llvmlite compiles for this CPU
(512-bit vectors where it has AVX-512), best of several runs, before and after
the workloads (the better of the two).  A peak from the
nominal clock (``--ghz``) overstates the fraction when the core runs faster
than its nominal clock, as this project's development guest does (nominal
2.1 GHz, about 2.75 GHz under 512-bit load).

The assembly counts come from a child process that compiles the two hot
functions into an empty numba cache (numba cannot list the code of cached
functions): ``_lattice_square_fast`` (float64 sines), ``_lean_sum`` (the
pixel path's fast-math sum) and ``_ordered_lean_sum`` (the fixed-order sum,
whose terms loop is the block path's, W3's).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import _cli

#: flops per default-mode sub-path (see the module docstring)
FLOPS_PER_SUBPATH = 170
#: independent FMA chains of the peak probe: enough to cover the FMA latency
#: (4 cycles) on two FMA ports with room to spare, few enough for 16 registers
PEAK_CHAINS = 12


def peak_probe_ir(width: int, chains: int = PEAK_CHAINS) -> str:
    """LLVM IR of ``double probe(i64 n, double m, double c)``: n iterations of
    ``chains`` independent ``a = fma(a, m, c)`` on <width x double> vectors,
    2 x width x chains flops each; returns one lane of their sum."""
    vt = "<%d x double>" % width
    splat = "shufflevector <1 x double> %%%s, <1 x double> undef, <%d x i32> zeroinitializer"
    out = ["define double @probe(i64 %n, double %m0, double %c0) #0 {", "entry:",
           "  %mi = insertelement <1 x double> undef, double %m0, i32 0",
           "  %m = " + splat % ("mi", width),
           "  %ci = insertelement <1 x double> undef, double %c0, i32 0",
           "  %c = " + splat % ("ci", width),
           "  br label %loop", "loop:", "  %i = phi i64 [0, %entry], [%i1, %loop]"]
    out += ["  %%a%d = phi %s [%%c, %%entry], [%%b%d, %%loop]" % (k, vt, k) for k in range(chains)]
    out += ["  %%b%d = call %s @llvm.fma.v%df64(%s %%a%d, %s %%m, %s %%c)" % (k, vt, width, vt, k, vt, vt)
            for k in range(chains)]
    out += ["  %i1 = add i64 %i, 1", "  %done = icmp eq i64 %i1, %n",
            "  br i1 %done, label %exit, label %loop", "exit:"]
    acc = "%b0"
    for k in range(1, chains):
        out.append("  %%s%d = fadd %s %s, %%b%d" % (k, vt, acc, k))
        acc = "%%s%d" % k
    out += ["  %%r = extractelement %s %s, i32 0" % (vt, acc), "  ret double %r", "}",
            "declare %s @llvm.fma.v%df64(%s, %s, %s)" % (vt, width, vt, vt, vt),
            'attributes #0 = { "prefer-vector-width"="%d" "min-legal-vector-width"="%d" }'
            % (64 * width, 64 * width)]
    return "\n".join(out)


def compile_peak_probe():
    """(callable probe(n, m, c), width, assembly): the probe compiled by
    llvmlite for this CPU with its features (as numba compiles the kernels)."""
    import ctypes
    import llvmlite.binding as ll
    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    feats = ll.get_host_cpu_features().flatten()
    width = 8 if "+avx512f" in feats.split(",") else 4
    mod = ll.parse_assembly(peak_probe_ir(width))
    mod.verify()
    tm = ll.Target.from_default_triple().create_target_machine(
        cpu=ll.get_host_cpu_name(), features=feats, opt=2)
    asm = tm.emit_assembly(mod)
    engine = ll.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_double, ctypes.c_double)(
        engine.get_function_address("probe"))
    fn._engine = engine              # the code lives as long as its engine
    return fn, width, asm


def measure_peak(runs: int = 10, iters: int = 10_000_000) -> dict:
    """One core's measured FP64 peak, GFLOP/s: the best of ``runs`` timings of
    the probe (wall time of a single-threaded call)."""
    fn, width, _ = compile_peak_probe()
    fn(1000, 0.999999, 1e-7)
    best = 0.0
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(iters, 0.999999, 1e-7)
        dt = time.perf_counter() - t0
        best = max(best, iters * PEAK_CHAINS * width * 2 / dt / 1e9)
    return dict(gflops=best, vector_doubles=width, chains=PEAK_CHAINS, runs=runs)

_ASM_CHILD = r"""
import json, numpy as np
from nbnumba.kernels import cpu as K
n = 64
cells = np.random.default_rng(0).normal(size=(2, 9, n)) * 1e-9
work = np.zeros((K.N_WORK, n))
K._lattice_square_fast(np.int64(1), (1e9, 2e9, 3e9), cells, work, 5.0, 6.0, 7.0)
K._lean_sum(work, 0, n, np.ones((2, 2, 2)), 0, 0, 1, 0, 1, 0, 1, 100.0)
K._ordered_lean_sum(work, 0, n, np.ones((2, 2, 2)), 0, 0, 1, 0, 1, 0, 1, 100.0)
out = {}
for fn in (K._lattice_square_fast, K._lean_sum, K._ordered_lean_sum):
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
    return _cli.guarded_main("benchmarks.roofline", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    ap = _cli.UsageParser(prog="python -m benchmarks.roofline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", type=_cli.workload_name, default=["W2", "W3"])
    ap.add_argument("--threads", type=_cli.positive_int, default=2)
    ap.add_argument("--reps", type=_cli.positive_int, default=3)
    ap.add_argument("--ghz", type=_cli.positive_float, default=None,
                    help="use a nominal peak, GHz x FMA units x 8 x 2, instead of the measured one")
    ap.add_argument("--fma-units", type=_cli.positive_int, default=2, help="512-bit FMA units per core (with --ghz)")
    ap.add_argument("--no-asm", action="store_true", help="skip the assembly probe")
    ap.add_argument("--peak-only", action="store_true", help="measure and print the peak only")
    a = ap.parse_args(argv)
    from benchmarks import envinfo
    measured = measure_peak()
    rows = []
    if not a.peak_only:
        with tempfile.TemporaryDirectory(prefix="nb-roofline-") as d:
            for name in a.workloads:
                rows.append(measure(name, a.threads, a.reps, d))
        # the peak again after the workloads, the better of the two: a guest's
        # neighbours can slow one probe as much as the kernel (a probe in a
        # busy minute read 65.5 GFLOP/s where the idle core gives 88)
        again = measure_peak()
        if again["gflops"] > measured["gflops"]:
            measured = again
    if a.ghz is not None:
        peak = a.ghz * a.fma_units * 8 * 2
        how = "nominal: %.2f GHz x %d FMA x 8 x 2; measured %.1f" % (a.ghz, a.fma_units, measured["gflops"])
    else:
        peak = measured["gflops"]
        how = "measured: %d independent %d-double FMA chains, best of %d" % (
            measured["chains"], measured["vector_doubles"], measured["runs"])
    print("CPU: %s; %d thread(s); git %s; peak %.1f GFLOP/s per core (%s)"
          % (envinfo.cpu_model(), a.threads, envinfo.git_sha(), peak, how))
    if a.peak_only:
        print(json.dumps(dict(cpu=envinfo.cpu_model(), peak_gflops_per_core=peak, measured=measured)))
        return 0
    rows = [roofline_row(m, peak) for m in rows]
    try:
        asm = None if a.no_asm else asm_counts()
    except RuntimeError as exc:
        raise _cli.ToolError(str(exc), 1) from None
    print("| workload | sub-paths | kernel CPU-s (median; all) | Msub-paths per CPU-s "
          "| GFLOP per CPU-s | fraction of FP64 peak (one core) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| %s | %d | %.3f; %s | %.1f | %.1f | %.1f %% |"
              % (r["workload"], r["subpaths"], r["cpu_s"], ", ".join("%.3f" % x for x in r["cpu_s_all"]),
                 r["msub_per_cpu_s"], r["gflop_per_cpu_s"], 100 * r["fraction_of_peak"]))
    if asm:
        for fn, c in asm.items():
            print("- `%s`: %s" % (fn, ", ".join("%d %s" % (v, k) for k, v in c.items())))
    print(json.dumps(dict(cpu=envinfo.cpu_model(), git=envinfo.git_sha(), threads=a.threads,
                          peak_gflops_per_core=peak, peak=measured, nominal_ghz=a.ghz,
                          flops_per_subpath=FLOPS_PER_SUBPATH, rows=rows, asm=asm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
