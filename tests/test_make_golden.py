"""tools/make_golden.py run: the binary is checked first, and the corpus is
replaced all at once or not at all (fake binaries and cases; no C needed)."""
import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mg(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("_mg_under_test", REPO / "tools" / "make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DATA_DIR", tmp_path / "golden" / "data")
    return mod


def fake_binary(tmp_path, trace: bool, setup: bool = True) -> str:
    p = tmp_path / (("nb_trace" if trace else "nb_plain") + ("" if setup else "_nosetup"))
    body = "print('  (4x4 pixels)')\n"
    if trace and setup:
        body += "print('TRACE_C:detector_convention=MOSFLM')\n"
    if trace:
        body += "import sys\nif '-trace_pixel' in sys.argv: print('TRACE_C: I_pixel_final 1.5')\n"
    p.write_text("#!%s\n%s" % (sys.executable, body))
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(p)


def test_binary_without_trace_is_refused_before_writing(mg, tmp_path, monkeypatch, capsys):
    assert mg.check_binary(fake_binary(tmp_path, trace=True)) is None
    why = mg.check_binary(fake_binary(tmp_path, trace=False))
    assert "prints no TRACE_C trace" in why and "\n" not in why
    # a build without -DTRACING: the per-pixel trace, no detector set-up lines
    why = mg.check_binary(fake_binary(tmp_path, trace=True, setup=False))
    assert "prints no detector set-up trace" in why and "-DTRACING" in why and "\n" not in why
    data = mg.DATA_DIR
    (data / "old_case").mkdir(parents=True)
    (data / "old_case" / "float.bin").write_bytes(b"old")
    monkeypatch.setenv("NB_C_BIN", fake_binary(tmp_path, trace=False))
    assert mg.main(["run"]) == 2
    err = capsys.readouterr().err
    assert "prints no TRACE_C trace" in err and err.count("\n") == 1
    assert (data / "old_case" / "float.bin").read_bytes() == b"old"


def _cases(mg, names):
    return [mg.Case(name=n, args=("-x",), families=(), mode="default", tolerances={}) for n in names]


def test_a_failing_case_leaves_the_corpus_as_it_was(mg, tmp_path, monkeypatch, capsys):
    data = mg.DATA_DIR
    (data / "a").mkdir(parents=True)
    (data / "a" / "float.bin").write_bytes(b"old a")
    monkeypatch.setenv("NB_C_BIN", fake_binary(tmp_path, trace=True))
    monkeypatch.setattr(mg, "load_cases", lambda: _cases(mg, ["a", "b"]))

    def make_case(binary, case, data_dir):
        if case.name == "b":
            raise RuntimeError("boom")
        (data_dir / case.name).mkdir(parents=True, exist_ok=True)
        (data_dir / case.name / "float.bin").write_bytes(b"new " + case.name.encode())
        return {"stats": {}, "shape": [4, 4], "warnings": []}

    monkeypatch.setattr(mg, "make_case", make_case)
    assert mg.main(["run", "--jobs", "1"]) == 1
    assert "golden/data left unchanged" in capsys.readouterr().err
    assert (data / "a" / "float.bin").read_bytes() == b"old a"
    assert sorted(os.listdir(data.parent)) == ["data"]          # no staging left behind

    # all succeed: the new corpus replaces the old one, stale cases go
    monkeypatch.setattr(mg, "load_cases", lambda: _cases(mg, ["b2", "c"]))
    assert mg.main(["run", "--jobs", "1"]) == 0
    assert sorted(os.listdir(data)) == ["b2", "c"]
    assert (data / "c" / "float.bin").read_bytes() == b"new c"
    # one-case refresh keeps the others
    assert mg.main(["run", "--case", "c", "--jobs", "1"]) == 0
    assert sorted(os.listdir(data)) == ["b2", "c"]
    assert sorted(os.listdir(data.parent)) == ["data"]


def test_interrupted_swap_is_restored(mg, tmp_path):
    data = mg.DATA_DIR
    old = data.parent / ".data.old-x1"
    (old / "a").mkdir(parents=True)
    mg._restore_interrupted_swap(data)
    assert (data / "a").is_dir() and not old.exists()


@pytest.mark.parametrize("argv, binary, expect", [
    (["brightest", "--case", "BOGUS"], "trace", "--case: unknown case(s): BOGUS"),
    (["run", "--case", "BOGUS"], "trace", "--case: unknown case(s): BOGUS"),
    (["run", "--jobs", "0"], "trace", "--jobs: must be >= 1"),
    (["run"], None, "NB_C_BIN is not set"),
    (["brightest", "--case", "X"], "exit1", "nanoBragg exited 1"),
    (["brightest", "--case", "X"], "garbage", "(FxS pixels)"),
])
def test_errors_are_one_stderr_line(mg, tmp_path, monkeypatch, capsys, argv, binary, expect):
    """Bad cases, options and binaries: one line on stderr, exit 2, no traceback."""
    monkeypatch.setattr(mg, "load_cases", lambda: _cases(mg, ["X"]))
    if binary is None:
        monkeypatch.delenv("NB_C_BIN", raising=False)
    elif binary == "trace":
        monkeypatch.setenv("NB_C_BIN", fake_binary(tmp_path, trace=True))
    else:
        p = tmp_path / binary
        p.write_text("#!/bin/sh\n" + ("exit 1\n" if binary == "exit1" else "echo garbage\n"))
        p.chmod(0o755)
        monkeypatch.setenv("NB_C_BIN", str(p))
    assert mg.main(argv) == 2
    out, err = capsys.readouterr()
    assert expect in err and err.count("\n") == 1 and out == ""


def test_inputs_out_must_be_a_directory(mg, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert mg.main(["inputs", "--out", str(tmp_path / "afile")]) == 2
    assert mg.main(["inputs", "--out", "/proc/nbnumba-no-such/x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not a directory" in err[0] and "/proc/nbnumba-no-such/x" in err[1]
    assert (tmp_path / "afile").read_text() == "x"
