"""Cost of nbnumba.autodiff: forward alone vs forward + backward for every
parameter, wall time and peak RSS, one mode per process (peak RSS only grows
within a process, so each mode runs in a fresh one).

    python -m benchmarks.autodiff_perf                     # every case and mode
    python -m benchmarks.autodiff_perf --case issue512 --mode fwdbwd --pixels 64

Cases: ``issue512`` (issue 13's 512^2 command), ``W2`` (benchmarks' W2) and
``pilatus_roi`` (W3 with generated -mat/-hkl on a 21 x 21 ROI around pixel
(685, 1039)).  Modes: ``kernel`` (nbnumba's production float32 render),
``fwd`` (autodiff forward and the loss ``img.sum()``, no grad), ``fwdbwd`` (forward + backward of
``img.sum()`` w.r.t. cell, misset, distance, beam_center, wavelength, N,
fluence; pilatus_roi: misset, wavelength, pix0, N, fluence, F_hkl, since -mat and
-pix0_vector_mm fix the cell and the detector origin there; before 2026-11-29 without
pix0, which was not a keyword yet).  ``--mosaic`` (pair mode; issue512 and W2, which
have -mosaic 0.5 over 10 domains) adds mosaic_spread to the keywords.  Prints one JSON line per
run: best-of-``--reps`` wall seconds, the CPU seconds of that repetition (all
threads: time.process_time) and the process's peak RSS (MiB).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import _cli
from benchmarks import workloads as W

ISSUE512 = ("-cell 70 80 90 85 95 105 -lambda 1.5 -N 8 -default_F 100 -distance 100 "
            "-pixel 0.1 -detpixels 512 -mosaic 0.5 -mosaic_dom 10 -phi 0.1 -osc 1 -phisteps 5 "
            "-oversample 1 -seed 1 -nonoise -nopgm -noprogress").split()
CASES = ("issue512", "W2", "pilatus_roi")
MODES = ("kernel", "fwd", "fwdbwd")
#: kernel-level split (not run by default): see kernel_split
SPLIT = "split"
#: the two modes interleaved in one process, whole calls and kernels: see paired
PAIR = "pair"


def case_argv(case, pixels=None, workdir=None, mosaic=False):
    """(argv, keyword values) of a case; pixels shrinks -detpixels; mosaic adds
    mosaic_spread (the case's -mosaic 0.5) to the keywords."""
    if mosaic and case == "pilatus_roi":
        raise SystemExit("autodiff_perf: pilatus_roi has no mosaic spread to differentiate")
    if case == "pilatus_roi":
        from nbnumba.testing import synth
        workdir = workdir or tempfile.mkdtemp(prefix="nb-ad-")
        mat, hkl = os.path.join(workdir, "a.mat"), os.path.join(workdir, "p.hkl")
        synth.write_mosflm_mat(mat, W.W3_CELL, W.W3_MISSET, W.W3_LAMBDA)
        synth.write_p1_hkl(hkl, W.W3_CELL, 2.0, 3)
        argv = [a.format(mat=mat, hkl=hkl) for a in W.W3] + "-roi 1029 1049 675 695".split()
        i = argv.index("-pix0_vector_mm")
        return argv, dict(misset=[0.0, 0.0, 0.0], wavelength=[W.W3_LAMBDA],
                          pix0=[float(x) for x in argv[i + 1:i + 4]],
                          N=[36.0, 47.0, 29.0], fluence=[1e18], F_hkl="grid")
    argv = list(ISSUE512 if case == "issue512" else W.W2) + ["-nonoise", "-nopgm"]
    if pixels:
        argv += ["-detpixels", str(pixels)]
    beam = (512 if not pixels else pixels) * 0.1 / 2 + 0.05     # MOSFLM default, mm
    misset = [10.0, 5.0, 3.0] if case == "W2" else [0.0, 0.0, 0.0]
    vals = dict(cell=[70.0, 80.0, 90.0, 85.0, 95.0, 105.0], misset=misset,
                distance=[100.0], beam_center=[beam, beam], wavelength=[1.5],
                N=[8.0, 8.0, 8.0], fluence=[1.25932015286227e29])
    if mosaic:
        vals["mosaic_spread"] = [0.5]
    return argv, vals


def _fn(case, mode, pixels, mosaic=False):
    import torch
    from nbnumba.autodiff import simulate, structure_factors
    argv, vals = case_argv(case, pixels, mosaic=mosaic)
    if mode == "kernel":
        from nbnumba.api import render_float
        from nbnumba.flags import parse_argv
        from nbnumba.model import build_model
        model = build_model(parse_argv(argv))
        fn = lambda: render_float(model)   # noqa: E731
    else:
        # the F grid is read once, as a refinement loop would (structure_factors
        # parses the flags and builds a model: about 6 ms on the Pilatus ROI,
        # timed inside each call before 2026-11-29)
        grid = structure_factors(argv)[0] if "grid" in vals.values() else None

        def fn():
            kw = {}
            for k, v in vals.items():
                t = grid.detach().clone() if v == "grid" else torch.tensor(v, dtype=torch.float64)
                kw[k] = t.requires_grad_(mode == "fwdbwd")
            img = simulate(argv, **kw)
            # the loss is part of the forward (as in a refinement step, which needs
            # its value either way): the whole-frame sum costs 1.6 to 1.9 ms on the
            # Pilatus ROI's 6.2-million-pixel output, nothing elsewhere (before
            # 2026-11-29 only fwdbwd computed it)
            loss = img.sum()
            if mode == "fwdbwd":
                loss.backward()
            return img
    return fn


def run_once(case, mode, pixels=None, reps=1):
    """(wall, CPU) seconds of the best of reps runs of one mode (after an
    untimed call on 8 x 8 pixels, which loads the compiled kernels)."""
    _fn(case, mode, 8)()
    fn = _fn(case, mode, pixels)
    best = (float("inf"), float("inf"))
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def _kernel_runs(case, pixels=None, extra=(), mosaic=False):
    """(the run without a stored Jacobian, the run with one, g = ones): the
    case's autodiff runs at kernel level, every keyword requiring grad."""
    import numpy as np
    from nbnumba import autodiff as AD
    argv, vals = case_argv(case, pixels, mosaic=mosaic)
    argv = list(argv) + list(extra)
    F = AD.structure_factors(argv)[0].numpy() if vals.get("F_hkl") == "grid" else None
    v = {k: np.asarray(x, dtype=np.float64).reshape(-1) for k, x in vals.items() if k != "F_hkl"}
    names = tuple(vals)
    r64 = AD._Run(argv, v, names, F, keep_jac=False)
    return r64, AD._Run(argv, v, names, F, keep_jac=True), np.ones(r64.model.shape)


def kernel_split(case, pixels=None, reps=3, extra=()):
    """CPU seconds (best of reps) of the autodiff kernels alone, every keyword
    of the case requiring grad: the float64 forward (render64), the forward
    that stores the per-pixel Jacobian, its contraction, and the adjoint pass
    (the route taken without a stored Jacobian)."""
    r64, rjac, g = _kernel_runs(case, pixels, extra)
    runs = {"fwd64": r64, "fwd_jac": rjac}
    steps = (("fwd64", runs["fwd64"].forward), ("fwd_jac", runs["fwd_jac"].forward),
             ("bwd_contract", lambda: runs["fwd_jac"].theta_grad(g)),
             ("bwd_adjoint_pass", lambda: runs["fwd64"].theta_grad(g)))
    best = {}
    for _ in range(reps + 1):      # the first round loads the kernels
        for name, fn in steps:
            c0 = time.process_time()
            fn()
            t = time.process_time() - c0
            best[name] = min(best.get(name, t), t) if _ else float("inf")
    return {k: round(x, 3) for k, x in best.items()}


def _stats(xs):
    return dict(best=round(min(xs), 4), median=round(statistics.median(xs), 4),
                worst=round(max(xs), 4))


def paired(case, pixels=None, reps=10, threads=None, mosaic=False):
    """The ratio of forward + backward to forward from one interleaved run,
    as the brief asks of every performance figure: in one process, each
    repetition times the forward without grad and then forward + backward
    (whole calls: simulate and backward(), every keyword of the case requiring
    grad), then the kernels alone, render64 and then forward_jac + contract
    (the route simulate takes with grad).  A slow spell of a shared guest then
    lands on both sides of most pairs, so the median of the per-pair ratios is
    steadier than a ratio of bests from separate processes.  Wall
    seconds for the ratios (an idle OpenMP worker spins for a while after a
    kernel, so CPU seconds overstate a short kernel's cost; their medians are
    given beside).  Peak RSS needs one process per mode (the fwd and fwdbwd
    modes)."""
    from benchmarks import envinfo
    threads = W.set_threads(threads)
    fwd, fb = _fn(case, "fwd", pixels, mosaic), _fn(case, "fwdbwd", pixels, mosaic)
    r64, rjac, g = _kernel_runs(case, pixels, mosaic=mosaic)
    if not rjac.keep_jac:
        raise SystemExit("autodiff_perf: this case's forward keeps no Jacobian")

    def jac_route():
        rjac.forward()
        rjac.theta_grad(g)

    sides = (("call_fwd", fwd), ("call_fwdbwd", fb), ("kernel_fwd", r64.forward),
             ("kernel_fwdbwd", jac_route))
    for _, fn in sides:             # load the kernels, first touch of the buffers
        fn()
    wall = {name: [] for name, _ in sides}
    cpu = {name: [] for name, _ in sides}
    for _ in range(reps):
        for name, fn in sides:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = dict(case=case, pixels=pixels, reps=reps, threads=threads,
               keywords=sorted(rjac.needs_grad),     # the kernel-level run's keywords
               cpu_model=envinfo.cpu_model(), git=envinfo.git_sha()[:7],
               loadavg=envinfo.loadavg())
    for level in ("call", "kernel"):
        a, b = wall[level + "_fwd"], wall[level + "_fwdbwd"]
        ratios = [y / x for x, y in zip(a, b)]
        out[level] = dict(fwd=_stats(a), fwdbwd=_stats(b),
                          cpu_median={side: round(statistics.median(cpu[level + "_" + side]), 4)
                                      for side in ("fwd", "fwdbwd")},
                          ratio_of_bests=round(min(b) / min(a), 3),
                          ratio_median=round(statistics.median(ratios), 4),
                          ratio_range=[round(min(ratios), 3), round(max(ratios), 3)],
                          pairs_within_2x=sum(r <= 2.0 for r in ratios))
    return out


def main(argv=None):
    return _cli.guarded_main("benchmarks.autodiff_perf", lambda: _main(argv), io_exit=1)


def _main(argv=None):
    ap = _cli.UsageParser(prog="python -m benchmarks.autodiff_perf",
                          description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--mode", choices=MODES + (SPLIT, PAIR),
                    help="%s: the kernels alone (CPU s), see kernel_split; %s: forward and "
                    "forward + backward interleaved in one process, see paired" % (SPLIT, PAIR))
    ap.add_argument("--extra", default="", help="flags appended to the case's command (split)")
    ap.add_argument("--pixels", type=_cli.positive_int, default=None, help="shrink -detpixels (not pilatus_roi)")
    ap.add_argument("--reps", type=_cli.positive_int, default=2)
    ap.add_argument("--threads", type=_cli.positive_int, default=None, help="numba threads (%s)" % PAIR)
    ap.add_argument("--mosaic", action="store_true",
                    help="add mosaic_spread to the keywords (%s; issue512, W2)" % PAIR)
    a = ap.parse_args(argv)
    # (options a mode does not use -- --extra outside split, --threads/--mosaic
    # outside pair, --pixels with pilatus_roi -- are accepted and ignored)
    if a.mosaic and a.case == "pilatus_roi":
        raise _cli.usage_error("argument --mosaic: pilatus_roi has no mosaic spread to differentiate")
    if a.extra.strip():
        # the flags are checked before any timing: a bad one is a usage error
        from nbnumba.flags import parse_argv
        try:
            parse_argv(list(ISSUE512) + a.extra.split())
        except Exception as exc:
            raise _cli.usage_error("argument --extra: %s" % exc) from None
    if a.mode == PAIR:
        for case in ([a.case] if a.case else CASES):
            print(json.dumps(paired(case, a.pixels, a.reps, a.threads, a.mosaic)), flush=True)
        return 0
    if a.case and a.mode == SPLIT:
        print(json.dumps(dict(case=a.case, pixels=a.pixels, extra=a.extra,
                              cpu_seconds=kernel_split(a.case, a.pixels, a.reps + 1,
                                                       a.extra.split()))))
        return 0
    if a.case and a.mode:
        s, cpu = run_once(a.case, a.mode, a.pixels, a.reps)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(json.dumps(dict(case=a.case, mode=a.mode, pixels=a.pixels, seconds=round(s, 3),
                              cpu_seconds=round(cpu, 3), peak_rss_mib=round(rss, 1))))
        return 0
    for case in ([a.case] if a.case else CASES):
        for mode in ([a.mode] if a.mode else MODES):
            cmd = [sys.executable, "-m", "benchmarks.autodiff_perf", "--case", case, "--mode", mode,
                   "--reps", str(a.reps)] + (["--pixels", str(a.pixels)] if a.pixels else [])
            r = subprocess.run(cmd)
            if r.returncode != 0:
                raise _cli.ToolError("case %s mode %s failed (exit status %s)"
                                     % (case, mode, r.returncode), 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
