"""nbnumba.testing.parallel: which pytest runs get pytest-xdist's workers."""
from __future__ import annotations

import types

import pytest

from nbnumba.testing import parallel


class _PM:
    def __init__(self, blocked=()):
        self.blocked = set(blocked)

    def is_blocked(self, name):
        return name in self.blocked


def _decide(args, files=(), blocked=(), env=None, monkeypatch=None):
    for k in ("PYTEST_XDIST_WORKER", "NBNUMBA_TEST_WORKERS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    cfg = types.SimpleNamespace(pluginmanager=_PM(blocked),
                                known_args_namespace=types.SimpleNamespace(file_or_dir=list(files)))
    args = list(args)
    parallel.pytest_load_initial_conftests(cfg, None, args)
    return args


def test_whole_suite_gets_workers(monkeypatch):
    assert _decide(["-q"], monkeypatch=monkeypatch) == ["-n", "auto", "-q"]
    assert _decide(["-q", "-k", "cli"], monkeypatch=monkeypatch)[:2] == ["-n", "auto"]
    assert _decide(["-q"], env={"NBNUMBA_TEST_WORKERS": "3"}, monkeypatch=monkeypatch)[:2] == ["-n", "3"]


@pytest.mark.parametrize("args, files, blocked, env", [
    (["-q", "tests/test_cli.py"], ["tests/test_cli.py"], (), {}),       # named tests
    (["-q", "-n", "4"], [], (), {}),                                    # workers given
    (["-q", "-n0"], [], (), {}),
    (["-q", "--numprocesses=2"], [], (), {}),
    (["-q", "-p", "no:xdist"], [], ("xdist",), {}),                     # xdist blocked
    (["-q"], [], (), {"NBNUMBA_TEST_WORKERS": "0"}),                    # one process asked for
    (["-q"], [], (), {"PYTEST_XDIST_WORKER": "gw1"}),                   # inside a worker
])
def test_left_as_it_is(monkeypatch, args, files, blocked, env):
    assert _decide(args, files, blocked, env, monkeypatch) == args


def test_child_env_drops_the_worker_variables():
    env = {"PATH": "/bin", "PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2",
           "PYTEST_XDIST_TESTRUNUID": "x", "NB_C_BIN": "c"}
    assert parallel.child_env(env) == {"PATH": "/bin", "NB_C_BIN": "c"}
