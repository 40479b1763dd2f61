"""nbnumba.autodiff benchmarks: forward alone vs forward + backward for every
parameter (pytest-benchmark; cases and modes from benchmarks.autodiff_perf).

    python -m pytest benchmarks/test_autodiff.py                     # 512^2 (issue 13)
    NB_BENCH_QUICK=1 python -m pytest benchmarks/test_autodiff.py    # 64^2, CI

Peak RSS needs one process per mode: ``python -m benchmarks.autodiff_perf``.
"""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks import autodiff_perf as P  # noqa: E402

QUICK_PIXELS = 64


@pytest.mark.parametrize("mode", P.MODES)
@pytest.mark.parametrize("case", P.CASES)
def test_autodiff(benchmark, case, mode, quick, threads, rounds):
    from benchmarks import workloads as W
    W.set_threads(threads)
    pixels = QUICK_PIXELS if quick and case != "pilatus_roi" else None
    benchmark.group = "autodiff-%s" % case
    P._fn(case, mode, 8)()                       # load the compiled kernels (untimed)
    fn = P._fn(case, mode, pixels)
    img = benchmark.pedantic(fn, rounds=rounds, iterations=1)
    if mode != "kernel":
        assert float(img.detach().max()) > 0.0
    benchmark.extra_info.update(case=case, mode=mode, pixels=pixels, threads=threads, quick=quick,
                                kind="autodiff")
