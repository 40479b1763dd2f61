"""nbnumba.testing.parallel: which pytest runs get pytest-xdist's workers, and
which leave out the long checks (``-m "not slow"``)."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from nbnumba.testing import parallel


class _PM:
    def __init__(self, blocked=()):
        self.blocked = set(blocked)

    def is_blocked(self, name):
        return name in self.blocked


def _decide(args, files=(), blocked=(), env=None, monkeypatch=None):
    for k in ("PYTEST_XDIST_WORKER", "NBNUMBA_TEST_WORKERS", "NBNUMBA_TEST_MARKERS"):
        monkeypatch.setenv(k, "")       # recorded, so that what the plugin sets is undone
        monkeypatch.delenv(k)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    cfg = types.SimpleNamespace(pluginmanager=_PM(blocked),
                                known_args_namespace=types.SimpleNamespace(file_or_dir=list(files)))
    args = list(args)
    parallel._choose_workers_and_markers(cfg, args)
    return args


FAST = ["-m", "not slow"]


def test_whole_suite_gets_workers_and_leaves_out_the_long_checks(monkeypatch):
    assert _decide(["-q"], monkeypatch=monkeypatch) == ["-n", "auto"] + FAST + ["-q"]
    assert _decide(["-q", "-k", "cli"], monkeypatch=monkeypatch)[:4] == ["-n", "auto"] + FAST
    assert _decide(["-q"], env={"NBNUMBA_TEST_WORKERS": "3"}, monkeypatch=monkeypatch)[:4] == ["-n", "3"] + FAST


@pytest.mark.parametrize("args", [["-q", "-m", "slow"], ["-q", "-mslow"], ["-m", "slow or not slow"]])
def test_markers_given_select_as_they_say(monkeypatch, args):
    assert _decide(args, monkeypatch=monkeypatch) == ["-n", "auto"] + args


@pytest.mark.parametrize("args, blocked, env", [
    (["-q", "-n", "4"], (), {}),
    (["-q", "-p", "no:xdist"], ("xdist",), {}),
    (["-q"], (), {"NBNUMBA_TEST_WORKERS": "0"}),
])
def test_one_process_whole_suite_still_leaves_out_the_long_checks(monkeypatch, args, blocked, env):
    assert _decide(args, (), blocked, env, monkeypatch) == FAST + args


@pytest.mark.parametrize("args, files, blocked, env", [
    (["-q", "tests/test_cli.py"], ["tests/test_cli.py"], (), {}),       # named tests
    (["-q", "-n", "4", "-m", "slow"], [], (), {}),                      # workers and markers given
    (["-q", "-n0", "-m", "gpu"], [], (), {}),
    (["-q", "--numprocesses=2", "-m", "not gpu"], [], (), {}),
    (["-q", "-p", "no:xdist", "-m", "slow"], [], ("xdist",), {}),       # xdist blocked
    (["-q", "-m", "slow"], [], (), {"NBNUMBA_TEST_WORKERS": "0"}),      # one process asked for
    (["-q"], [], (), {"PYTEST_XDIST_WORKER": "gw1"}),                   # inside a worker
])
def test_left_as_it_is(monkeypatch, args, files, blocked, env):
    assert _decide(args, files, blocked, env, monkeypatch) == args


def test_workers_get_the_whole_suite_markers(monkeypatch):
    _decide(["-q", "-n", "3"], monkeypatch=monkeypatch)
    assert os.environ["NBNUMBA_TEST_MARKERS"] == "not slow"
    # a worker is started with the command line as typed: it takes them from there
    worker = {"PYTEST_XDIST_WORKER": "gw0", "NBNUMBA_TEST_MARKERS": "not slow"}
    assert _decide(["-q", "-n", "3"], env=worker, monkeypatch=monkeypatch) == FAST + ["-q", "-n", "3"]
    # markers given: the controller passes none, and a worker keeps its own
    _decide(["-q", "-m", "slow"], monkeypatch=monkeypatch)
    assert "NBNUMBA_TEST_MARKERS" not in os.environ
    assert _decide(["-q", "-m", "slow"], env=worker, monkeypatch=monkeypatch) == ["-q", "-m", "slow"]
    _decide(["-q", "tests/test_cli.py"], ["tests/test_cli.py"], monkeypatch=monkeypatch)
    assert "NBNUMBA_TEST_MARKERS" not in os.environ


def test_child_env_drops_the_worker_variables():
    env = {"PATH": "/bin", "PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2",
           "PYTEST_XDIST_TESTRUNUID": "x", "NBNUMBA_TEST_MARKERS": "not slow", "NB_C_BIN": "c"}
    assert parallel.child_env(env) == {"PATH": "/bin", "NB_C_BIN": "c"}


def _run_pytest_with_bytecode_off(tmp_path, extra_env=None):
    (tmp_path / "conftest.py").write_text("import sys\n")
    (tmp_path / "test_one.py").write_text(
        "import sys\n"
        "def test_flag_is_back():\n"
        "    assert sys.dont_write_bytecode\n"
        "    assert 1 + 1 == 2\n")
    env = parallel.child_env(os.environ)
    env.pop("NBNUMBA_TEST_NO_PYC", None)
    env.update(PYTHONDONTWRITEBYTECODE="1", **(extra_env or {}))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "nbnumba.testing.parallel",
                        "-p", "no:cacheprovider", "-p", "no:randomly", "test_one.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cache = tmp_path / "__pycache__"
    return sorted(p.name.split(".")[0] for p in cache.glob("*-pytest-*.pyc")) if cache.exists() else []


def test_assertion_rewrite_cache_is_written_where_bytecode_is_off(tmp_path):
    # the test module and the conftest get pytest's cached rewrite; the flag
    # is back on (the test itself asserts it) once they are imported
    assert _run_pytest_with_bytecode_off(tmp_path) == ["conftest", "test_one"]


def test_assertion_rewrite_cache_can_be_refused(tmp_path):
    assert _run_pytest_with_bytecode_off(tmp_path, {"NBNUMBA_TEST_NO_PYC": "1"}) == []
