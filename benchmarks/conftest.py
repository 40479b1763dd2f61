"""pytest-benchmark configuration for the nbnumba benchmark suite.

Environment:
  NB_BENCH_QUICK=1     shrink every workload to <= 128x128 pixels (CI mode)
  NB_BENCH_THREADS=N   threads for the port (default: all CPUs)
  NB_BENCH_ROUNDS=N    timed rounds per benchmark (default 2; quick mode 1)
  NB_BENCH_SAVE=0      do not write benchmarks/results/<date>-<sha>-<host>.json

Unless ``--benchmark-disable`` or ``--benchmark-json PATH`` is given, results
are written to ``benchmarks/results/<YYYYMMDD>-<gitsha7>-<host>.json``
(``...-quick.json`` in quick mode).
"""
from __future__ import annotations

import os

import pytest

from benchmarks import envinfo
from benchmarks import workloads as W


def _int_env(name, default):
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def pytest_sessionstart(session):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or bs.disabled or bs.json or os.environ.get("NB_BENCH_SAVE", "1") == "0":
        return
    envinfo.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    bs.json = envinfo.RESULTS_DIR / envinfo.result_name(suffix="quick" if W.is_quick() else "")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    facts = envinfo.machine_facts()
    facts.update(quick=W.is_quick(), threads=_int_env("NB_BENCH_THREADS", os.cpu_count() or 1),
                 w3_data=W.w3_data_source(), suite="pytest-benchmark")
    output_json["nbnumba"] = facts


@pytest.fixture(scope="session")
def quick():
    return W.is_quick()


@pytest.fixture(scope="session")
def threads():
    return _int_env("NB_BENCH_THREADS", os.cpu_count() or 1)


@pytest.fixture(scope="session")
def rounds(quick):
    return max(1, _int_env("NB_BENCH_ROUNDS", 1 if quick else 2))


@pytest.fixture(scope="session")
def files():
    """Input files for the {mat}/{hkl}/{w4hkl} placeholders (generated once)."""
    return W.input_files(["W3", "W4"])


def gpu_available() -> bool:
    try:
        from nbnumba.kernels import gpu
        return bool(gpu.available())
    except Exception:
        return False
