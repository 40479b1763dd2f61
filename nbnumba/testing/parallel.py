"""pytest plugin (``-p nbnumba.testing.parallel``, set in pyproject's addopts):
the whole suite runs on every core through pytest-xdist.

``python -m pytest -q`` with no tests named gets ``-n auto`` (one worker per
core): most of the suite's time is single-threaded (imports, subprocess CLI
runs, compilers), so on two cores it finishes in about two thirds of the
time.  A run that names tests (files, ``::`` ids), gives ``-n`` itself, runs
inside a worker, or finds pytest-xdist missing or blocked (``-p no:xdist``)
is left as it is: one process, no start-up of workers for a single test.
``NBNUMBA_TEST_WORKERS`` overrides the count (``0``: one process).
"""
from __future__ import annotations

import importlib.util
import os

#: environment variables by which pytest-xdist marks a worker; a pytest run
#: started from inside a test must not inherit them (pytest-benchmark, for
#: one, switches itself off in a worker)
XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


def child_env(env: dict) -> dict:
    """``env`` without pytest-xdist's worker variables, for a pytest process
    that is a run of its own."""
    return {k: v for k, v in env.items() if k not in XDIST_ENV}


def _gives_workers(args) -> bool:
    for a in args:
        if a in ("-n", "--numprocesses", "--dist", "-d") or a.startswith(("--numprocesses=", "--dist=")):
            return True
        if a.startswith("-n") and a[2:].lstrip("=").isalnum():
            return True
    return False


def pytest_load_initial_conftests(early_config, parser, args):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if early_config.pluginmanager.is_blocked("xdist") or importlib.util.find_spec("xdist") is None:
        return
    if getattr(early_config.known_args_namespace, "file_or_dir", None) or _gives_workers(args):
        return
    n = os.environ.get("NBNUMBA_TEST_WORKERS", "auto").strip() or "auto"
    if n == "0":
        return
    args[:] = ["-n", n] + list(args)
