"""tools/fuzz_tools.py: a few runs of each target keep the tools' error policy,
and the checker itself catches what it must (a traceback, a warning, two error
lines, a partial output)."""

import importlib.util
import io
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("fuzz_tools", REPO / "tools" / "fuzz_tools.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FT = _tool()


@pytest.mark.parametrize("target, runs", [("expt", 12), ("series", 6), ("tools", 8)])
def test_a_few_runs_of_each_target_do_not_fail(target, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NB_C_BIN", raising=False)     # nb-compare: its usage errors only
    out = io.StringIO()
    counts = FT.FUZZERS[target](5, runs, out=out)
    assert counts["fail"] == 0, out.getvalue()
    assert sum(counts.values()) == runs
    assert counts["exit 2"] < runs                     # some runs got past the checks


def test_a_few_sf_runs_do_not_fail(tmp_path, monkeypatch):
    pytest.importorskip("gemmi")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    counts = FT.fuzz_sf(5, 12, out=out)
    assert counts["fail"] == 0, out.getvalue()
    assert counts["exit 0"] > 0


def _main_raising(exc):
    def main(argv):
        raise exc
    return main


def test_a_traceback_is_a_fail(tmp_path):
    rc, why, _, _, _ = FT.run_tool("prog", _main_raising(ValueError("boom")), [], cwd=tmp_path)
    assert why.startswith("ValueError: boom (test_fuzz_tools.py:")
    rc, why, _, _, _ = FT.run_tool("prog", _main_raising(SystemExit(2)), [], cwd=tmp_path)
    assert why == "SystemExit(2)"


def test_a_monkeypatched_tool_main_is_counted_fail(tmp_path, monkeypatch):
    from nbnumba.tools import sincg_sweep
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sincg_sweep, "_main", _main_raising(KeyError("k")))
    out = io.StringIO()
    counts = FT.fuzz_tools(1, 3, out=out, which=["sincg-sweep"])
    assert counts["fail"] == 3
    assert out.getvalue().count("FAIL nbnumba-sincg-sweep") == 3
    assert "KeyError: 'k'" in out.getvalue()


def _printing(rc, text, warn=None, write=None):
    def main(argv):
        import sys
        if warn:
            warnings.warn(warn, RuntimeWarning)
        if write:
            Path(write).write_text("partial")
        sys.stderr.write(text)
        return rc
    return main


@pytest.mark.parametrize("rc, text, warn, bad", [
    (2, "prog: error: one line\n", None, None),
    (2, "prog: warning: w\nprog: error: one line\n", None, None),
    (0, "prog: note: fine\n", None, None),
    (2, "prog: error: a\nprog: error: b\n", None, "exit 2 with 2 lines"),
    (2, "something else\n", None, "exit 2 with 1 lines"),
    (1, "prog: error: x\n", None, "exit 1:"),
    (0, "Traceback (most recent call last):\n  x\nValueError: v\n", None, "traceback on stderr"),
    (0, "", "overflow", "warning: RuntimeWarning: overflow"),
    (0, "prog: error: x\n", None, "exit 0 with an error line"),
])
def test_the_error_policy_check(rc, text, warn, bad, tmp_path):
    got_rc, why, _, _, _ = FT.run_tool("prog", _printing(rc, text, warn), [], cwd=tmp_path)
    assert got_rc == rc
    if bad is None:
        assert why is None
    else:
        assert why is not None and why.startswith(bad), why


def test_files_left_behind_are_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.txt").write_text("old")
    _, why, _, _, changed = FT.run_tool("prog", _printing(2, "prog: error: e\n", write="new.txt"),
                                        [], cwd=tmp_path)
    assert why is None and changed == ["new.txt"]
    _, _, _, _, changed = FT.run_tool("prog", _printing(2, "prog: error: e\n", write="old.txt"),
                                      [], cwd=tmp_path)
    assert changed == ["old.txt"]


def test_json_mutations_change_one_value():
    import random
    rng = random.Random(3)
    d = {"a": [1.0, 2.0, 3.0], "b": {"c": 0, "d": "x"}}
    changed, seen = 0, set()
    for _ in range(50):
        m, how = FT.mutate_json(rng, d)
        changed += repr(m) != repr(d)
        seen.add(how)
    assert d == {"a": [1.0, 2.0, 3.0], "b": {"c": 0, "d": "x"}}     # the original untouched
    assert changed >= 40 and len(seen) > 10


def test_series_check_ignores_a_record_of_no_frame_of_the_series(tmp_path):
    # a resumed series whose manifest line of frame 1 was mutated to frame -1:
    # nbnumba-series renders frame 1 again and leaves the stray record (seed 263)
    import json
    (tmp_path / "out").mkdir()
    recs = [{"type": "run"}, {"type": "frame", "frame": 0, "files": {}},
            {"type": "frame", "frame": -1, "files": {}}]
    argv = ["--resume", "--shots", "2", "--workers", "0", "--out", "out"]
    mp = tmp_path / "out" / "manifest.jsonl"
    mp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    # frame 1 not rendered again: a failure
    assert FT._check_series(0, tmp_path, argv) == (
        "exit 0 without a frame record for each of the 2 frames")
    recs.append({"type": "frame", "frame": 1, "files": {}})
    mp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert FT._check_series(0, tmp_path, argv) is None
    # frame 1's latest record 'failed' is no frame record on exit 0
    recs.append({"type": "failed", "frame": 1})
    mp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert FT._check_series(0, tmp_path, argv) is not None


def test_series_check_splits_the_manifest_at_newlines_only(tmp_path):
    # a manifest token replaced by '\r' (seed 463) is JSON whitespace inside the
    # frame's line, which nbnumba-series reads (lines end at b'\n') and skips on
    # --resume; str.splitlines() also ends a line at '\r' and lost the record
    import json
    (tmp_path / "out").mkdir()
    lines = [json.dumps({"type": "run"}),
             json.dumps({"type": "frame", "frame": 0, "files": {}, "p": [1.5, 2.5]}),
             json.dumps({"type": "frame", "frame": 1, "files": {}})]
    lines[1] = lines[1].replace("[1.5, ", "[1.5, \r", 1)
    assert json.loads(lines[1])["frame"] == 0
    argv = ["--resume", "--shots", "2", "--workers", "0", "--out", "out"]
    mp = tmp_path / "out" / "manifest.jsonl"
    mp.write_bytes(("\n".join(lines) + "\n").encode())
    assert FT._check_series(0, tmp_path, argv) is None
    # a record cut in two at a real newline is still no record
    mp.write_bytes(("\n".join(lines).replace("[1.5, \r", "[1.5, \n") + "\n").encode())
    assert FT._check_series(0, tmp_path, argv) == (
        "exit 0 without a frame record for each of the 2 frames")


def test_the_sf_check_reads_its_reflections_in_blocks():
    # one array of a 20-million-line output held several GB (seed 482); the
    # check now reads blocks of lines, and still finds a bad line in a later block
    good = ["%d 0 0 1.5" % i for i in range(450001)]
    assert FT._check_sf_text(iter(good)) is None
    assert FT._check_sf_text(iter(good + ["1 2 3 -1"])).startswith("exit 0 with 4 columns, finite True, min F -1")
    assert FT._check_sf_text(iter(good + ["1 2 x 1"])).startswith("exit 0 with unreadable lines")
    assert FT._check_sf_text(iter(["", " "])) == "exit 0 with no reflection"
    assert FT._check_sf_text(["1 2 3"]).startswith("exit 0 with 3 columns")
