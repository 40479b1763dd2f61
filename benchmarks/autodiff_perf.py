"""Cost of nbnumba.autodiff: forward alone vs forward + backward for every
parameter, wall time and peak RSS, one mode per process (peak RSS only grows
within a process, so each mode runs in a fresh one).

    python -m benchmarks.autodiff_perf                     # every case and mode
    python -m benchmarks.autodiff_perf --case issue512 --mode fwdbwd --pixels 64

Cases: ``issue512`` (issue 13's 512^2 command), ``W2`` (benchmarks' W2) and
``pilatus_roi`` (W3 with generated -mat/-hkl on a 21 x 21 ROI around pixel
(685, 1039)).  Modes: ``kernel`` (nbnumba's production float32 render),
``fwd`` (autodiff forward, no grad), ``fwdbwd`` (forward + backward of
``img.sum()`` w.r.t. cell, misset, distance, beam_center, wavelength, N,
fluence; pilatus_roi: misset, wavelength, N, fluence, F_hkl, since -mat and
-pix0_vector fix the cell and the detector there).  Prints one JSON line per
run: best-of-``--reps`` wall seconds, the CPU seconds of that repetition (all
threads: time.process_time) and the process's peak RSS (MiB).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import workloads as W

ISSUE512 = ("-cell 70 80 90 85 95 105 -lambda 1.5 -N 8 -default_F 100 -distance 100 "
            "-pixel 0.1 -detpixels 512 -mosaic 0.5 -mosaic_dom 10 -phi 0.1 -osc 1 -phisteps 5 "
            "-oversample 1 -seed 1 -nonoise -nopgm -noprogress").split()
CASES = ("issue512", "W2", "pilatus_roi")
MODES = ("kernel", "fwd", "fwdbwd")
#: kernel-level split (not run by default): see kernel_split
SPLIT = "split"


def case_argv(case, pixels=None, workdir=None):
    """(argv, keyword values) of a case; pixels shrinks -detpixels."""
    if case == "pilatus_roi":
        from nbnumba.testing import synth
        workdir = workdir or tempfile.mkdtemp(prefix="nb-ad-")
        mat, hkl = os.path.join(workdir, "a.mat"), os.path.join(workdir, "p.hkl")
        synth.write_mosflm_mat(mat, W.W3_CELL, W.W3_MISSET, W.W3_LAMBDA)
        synth.write_p1_hkl(hkl, W.W3_CELL, 2.0, 3)
        argv = [a.format(mat=mat, hkl=hkl) for a in W.W3] + "-roi 1029 1049 675 695".split()
        return argv, dict(misset=[0.0, 0.0, 0.0], wavelength=[W.W3_LAMBDA],
                          N=[36.0, 47.0, 29.0], fluence=[1e18], F_hkl="grid")
    argv = list(ISSUE512 if case == "issue512" else W.W2) + ["-nonoise", "-nopgm"]
    if pixels:
        argv += ["-detpixels", str(pixels)]
    beam = (512 if not pixels else pixels) * 0.1 / 2 + 0.05     # MOSFLM default, mm
    misset = [10.0, 5.0, 3.0] if case == "W2" else [0.0, 0.0, 0.0]
    return argv, dict(cell=[70.0, 80.0, 90.0, 85.0, 95.0, 105.0], misset=misset,
                      distance=[100.0], beam_center=[beam, beam], wavelength=[1.5],
                      N=[8.0, 8.0, 8.0], fluence=[1.25932015286227e29])


def _fn(case, mode, pixels):
    import torch
    from nbnumba.autodiff import simulate, structure_factors
    argv, vals = case_argv(case, pixels)
    if mode == "kernel":
        from nbnumba.api import render_float
        from nbnumba.flags import parse_argv
        from nbnumba.model import build_model
        model = build_model(parse_argv(argv))
        fn = lambda: render_float(model)   # noqa: E731
    else:
        def fn():
            kw = {}
            for k, v in vals.items():
                t = structure_factors(argv)[0] if v == "grid" else torch.tensor(v, dtype=torch.float64)
                kw[k] = t.requires_grad_(mode == "fwdbwd")
            img = simulate(argv, **kw)
            if mode == "fwdbwd":
                img.sum().backward()
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


def kernel_split(case, pixels=None, reps=3, extra=()):
    """CPU seconds (best of reps) of the autodiff kernels alone, every keyword
    of the case requiring grad: the float64 forward (render64), the forward
    that stores the per-pixel Jacobian, its contraction, and the adjoint pass
    (the route taken without a stored Jacobian)."""
    import numpy as np
    from nbnumba import autodiff as AD
    argv, vals = case_argv(case, pixels)
    argv = list(argv) + list(extra)
    F = AD.structure_factors(argv)[0].numpy() if vals.get("F_hkl") == "grid" else None
    v = {k: np.asarray(x, dtype=np.float64).reshape(-1) for k, x in vals.items() if k != "F_hkl"}
    names = tuple(vals)
    runs = {"fwd64": AD._Run(argv, v, names, F, keep_jac=False),
            "fwd_jac": AD._Run(argv, v, names, F, keep_jac=True)}
    g = np.ones(runs["fwd64"].model.shape)
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--mode", choices=MODES + (SPLIT,),
                    help="%s: the kernels alone (CPU s), see kernel_split" % SPLIT)
    ap.add_argument("--extra", default="", help="flags appended to the case's command (split)")
    ap.add_argument("--pixels", type=int, default=None, help="shrink -detpixels (not pilatus_roi)")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args(argv)
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
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
