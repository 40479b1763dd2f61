"""Kernel-level benchmarks: the Model is built once (not timed), the kernel
is called once untimed (JIT compile / cache load), then
``nbnumba.api.render_float(model)`` is timed.

    python -m pytest benchmarks/test_kernels.py                      # full size
    NB_BENCH_QUICK=1 python -m pytest benchmarks -q --benchmark-disable  # CI
"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import workloads as W
from benchmarks.conftest import gpu_available
from nbnumba.api import render_float

PRECISIONS = ("double", "single")
CASES = [(w, p) for w in W.MAIN_WORKLOADS for p in PRECISIONS]


def _record(benchmark, model, workload, precision, threads, quick, backend="cpu"):
    S, F = model.shape
    sub = W.model_subpaths(model)
    benchmark.extra_info.update(
        workload=workload, precision=precision, threads=threads, quick=quick, backend=backend,
        kind="kernel", pixels=int(S * F), steps=int(model.nsteps), subpaths=sub)
    st = getattr(benchmark, "stats", None)
    if st is not None and getattr(st, "stats", None) is not None and st.stats.median > 0:
        benchmark.extra_info["subpaths_per_s"] = sub / st.stats.median


def _warm(workload, precision, threads, files, tmp_path, extra=(), backend="cpu"):
    """Compile / load the cached kernel for this dtype on an 8x8 copy (untimed)."""
    d = tmp_path / "warm"
    d.mkdir(exist_ok=True)
    small = W.build_model_for(W.argv(workload, d, pixels=8, precision=precision, threads=threads,
                                     files=files, extra=extra), d)
    render_float(small, backend=backend)


def _check(img, model):
    assert img.shape == model.shape
    assert np.isfinite(img).all()
    assert float(img.max()) > 0.0


@pytest.mark.parametrize("workload,precision", CASES, ids=["%s-%s" % c for c in CASES])
def test_kernel(benchmark, workload, precision, quick, threads, rounds, files, tmp_path):
    benchmark.group = "kernel-" + workload
    args = W.argv(workload, tmp_path, quick=quick, precision=precision, threads=threads, files=files)
    model = W.build_model_for(args, tmp_path)
    W.set_threads(threads)
    if benchmark.enabled:
        _warm(workload, precision, threads, files, tmp_path)
    img, _ = benchmark.pedantic(render_float, args=(model,), rounds=rounds, iterations=1)
    _check(img, model)
    _record(benchmark, model, workload, precision, threads, quick)


@pytest.mark.parametrize("domains", W.CPU_MOSAIC_DOMAINS)
def test_kernel_w5_cpu(benchmark, domains, threads, rounds, quick, tmp_path):
    """W5 mosaic sweep on the CPU: D = 1, 10 on a 128x128 detector only."""
    name = "W5-D%d" % domains
    benchmark.group = "kernel-W5-cpu"
    args = W.argv(name, tmp_path, pixels=W.QUICK_PIXELS, precision="double", threads=threads)
    model = W.build_model_for(args, tmp_path)
    W.set_threads(threads)
    if benchmark.enabled:
        _warm(name, "double", threads, None, tmp_path)
    img, _ = benchmark.pedantic(render_float, args=(model,), rounds=rounds, iterations=1)
    _check(img, model)
    _record(benchmark, model, name, "double", threads, True)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="nbnumba.kernels.gpu.available() is false (no GPU/CuPy)")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("domains", W.GPU_MOSAIC_DOMAINS)
def test_kernel_w5_gpu(benchmark, domains, precision, rounds, quick, tmp_path):
    """W5 mosaic sweep on the GPU (1024^2; 128^2 in quick mode)."""
    import cupy
    name = "W5-D%d" % domains
    benchmark.group = "kernel-W5-gpu-" + precision
    args = W.argv(name, tmp_path, quick=quick, precision=precision, extra=["-device", "cuda"])
    model = W.build_model_for(args, tmp_path)

    def run():
        out = render_float(model, backend="cuda")
        cupy.cuda.runtime.deviceSynchronize()
        return out

    if benchmark.enabled:
        run()
    img, _ = benchmark.pedantic(run, rounds=rounds, iterations=1)
    img = img.get() if hasattr(img, "get") else np.asarray(img)
    _check(img, model)
    _record(benchmark, model, name, precision, 0, quick, backend="cuda")
