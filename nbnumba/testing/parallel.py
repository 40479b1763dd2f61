"""pytest plugin (``-p nbnumba.testing.parallel``, set in pyproject's addopts):
the whole suite runs on every core through pytest-xdist.

``python -m pytest -q`` with no tests named gets ``-n auto`` (one worker per
core): most of the suite's time is single-threaded (imports, subprocess CLI
runs, compilers), so on two cores it finishes in about two thirds of the
time.  A run that names tests (files, ``::`` ids), gives ``-n`` itself, runs
inside a worker, or finds pytest-xdist missing or blocked (``-p no:xdist``)
is left as it is: one process, no start-up of workers for a single test.
``NBNUMBA_TEST_WORKERS`` overrides the count (``0``: one process).

The same whole-suite run leaves out the long checks (``@pytest.mark.slow``:
nvcc builds for a second architecture, torch.compile in a fresh process,
Dask clusters, the API reference build, the benchmark harness, the GPU check
end to end), so that it stays a tool to run many
times a day; ``python -m pytest -q -m slow`` runs them (CI runs both).  A run
that names tests, or gives ``-m`` itself, selects as it says.  pytest-xdist
starts its workers with the command line as typed, so the controller passes
that choice to them in ``NBNUMBA_TEST_MARKERS``.

pytest rewrites the asserts of each test module when it imports it, and
caches the result beside the module (``__pycache__/*-pytest-*.pyc``), unless
bytecode writing is off.  Machines that set ``PYTHONDONTWRITEBYTECODE`` (this
project's CI does) would have every process of every run rewrite all the test
modules again (``--collect-only``: 15 s, against 5 s with the cache).  So the
plugin lets Python write bytecode while pytest imports conftest.py and the
test modules (git ignores ``__pycache__``), and sets the flag back after each.
``NBNUMBA_TEST_NO_PYC=1`` keeps the flag as the environment gives it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

import pytest

#: environment variables by which pytest-xdist marks a worker; a pytest run
#: started from inside a test must not inherit them (pytest-benchmark, for
#: one, switches itself off in a worker)
XDIST_ENV = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
             "NBNUMBA_TEST_MARKERS")
#: the marker expression of a whole-suite run that gives none
WHOLE_SUITE_MARKERS = "not slow"


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


def _gives_markers(args) -> bool:
    return any(a == "-m" or (a.startswith("-m") and len(a) > 2) for a in args)


@contextlib.contextmanager
def _writing_bytecode():
    """Bytecode writing on for the block (pytest's assertion-rewrite cache),
    then the flag as it was; a no-op under NBNUMBA_TEST_NO_PYC=1."""
    before = sys.dont_write_bytecode
    if os.environ.get("NBNUMBA_TEST_NO_PYC", "").strip() in ("", "0"):
        sys.dont_write_bytecode = False
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    # a test module is imported (and its asserts rewritten) when it is collected
    if isinstance(collector, pytest.Module):
        with _writing_bytecode():
            return (yield)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    _choose_workers_and_markers(early_config, args)
    # pytest's own implementation of this hook imports the initial conftest.py
    with _writing_bytecode():
        return (yield)


def _choose_workers_and_markers(early_config, args):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        markers = os.environ.get("NBNUMBA_TEST_MARKERS")
        if markers and not _gives_markers(args):
            args[:] = ["-m", markers] + list(args)
        return
    os.environ.pop("NBNUMBA_TEST_MARKERS", None)
    whole = not getattr(early_config.known_args_namespace, "file_or_dir", None)
    if whole and not _gives_markers(args):
        args[:] = ["-m", WHOLE_SUITE_MARKERS] + list(args)
        os.environ["NBNUMBA_TEST_MARKERS"] = WHOLE_SUITE_MARKERS    # for xdist's workers
    if early_config.pluginmanager.is_blocked("xdist") or importlib.util.find_spec("xdist") is None:
        return
    if not whole or _gives_workers(args):
        return
    n = os.environ.get("NBNUMBA_TEST_WORKERS", "auto").strip() or "auto"
    if n == "0":
        return
    args[:] = ["-n", n] + list(args)
