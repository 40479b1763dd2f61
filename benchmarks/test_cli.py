"""End-to-end benchmarks: ``python -m nbnumba.cli <flags>`` as a subprocess
(interpreter start-up, imports, kernel cache load, HKL reading, rendering
and file writing all included), each round in a fresh directory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from benchmarks import workloads as W

PRECISIONS = ("double", "single")
CASES = [(w, p) for w in W.MAIN_WORKLOADS for p in PRECISIONS]
STARTUP_PIXELS = 64


def _runner(workload, precision, threads, quick, files, base, pixels=None):
    info = {}

    def setup():
        if info.get("outdir"):
            shutil.rmtree(info["outdir"], ignore_errors=True)     # keep disk use flat (W3: 37 MB a run)
        d = tempfile.mkdtemp(dir=str(base))
        args = W.argv(workload, d, quick=quick, precision=precision, threads=threads, files=files,
                      pixels=pixels)
        return (d, args), {}

    def run(d, args):
        r = subprocess.run([sys.executable, "-m", "nbnumba.cli"] + args, cwd=d, capture_output=True,
                           text=True, env=dict(os.environ), timeout=1800)
        if r.returncode != 0:
            raise RuntimeError("nbnumba.cli failed (%d): %s" % (r.returncode, r.stderr.strip()[-2000:]))
        info.update(W.parse_run_info(r.stdout))
        info["outdir"] = d
        return d

    return setup, run, info


def _finish(benchmark, info, workload, precision, threads, quick, kind="cli"):
    img = np.fromfile(os.path.join(info["outdir"], "float.bin"), dtype="<f4")
    shutil.rmtree(info["outdir"], ignore_errors=True)
    assert img.size == info.get("pixels", img.size) and np.isfinite(img).all()
    benchmark.extra_info.update(workload=workload, precision=precision, threads=threads, quick=quick,
                                kind=kind, backend="cpu",
                                **{k: info[k] for k in ("pixels", "steps", "subpaths") if k in info})


@pytest.mark.parametrize("workload,precision", CASES, ids=["%s-%s" % c for c in CASES])
def test_cli(benchmark, workload, precision, quick, threads, rounds, files, tmp_path):
    benchmark.group = "cli-" + workload
    setup, run, info = _runner(workload, precision, threads, quick, files, tmp_path)
    benchmark.pedantic(run, setup=setup, rounds=rounds, iterations=1)
    _finish(benchmark, info, workload, precision, threads, quick)


def test_cli_startup(benchmark, threads, rounds, tmp_path):
    """Start-up target: W1 on 64x64 (warm kernel cache) should take < 1.5 s."""
    benchmark.group = "cli-startup"
    setup, run, info = _runner("W1", "double", threads, True, None, tmp_path, pixels=STARTUP_PIXELS)
    if benchmark.enabled:
        run(*setup()[0])                # make sure the kernel cache is warm
    benchmark.pedantic(run, setup=setup, rounds=max(rounds, 3) if benchmark.enabled else 1, iterations=1)
    _finish(benchmark, info, "startup64", "double", threads, True, kind="startup")
    benchmark.extra_info["target_s"] = 1.5
