"""nb-compare (nbnumba.tools.compare).

The main tests need no C program: ``--c-bin`` points at a small fake written
into tmp_path that mimics nanoBragg's interface by running the port
(``python -m nbnumba.cli``) and then, depending on its mode, perturbing,
shrinking or failing.  Tests that need chosen pixels (an inf, an all-zero
image, errors at known places) replace both programs by stand-ins that print a
shape line and write a fixed image (``static_pair``).  Tests marked "REAL C"
run only when NB_C_BIN is set.
"""

import json
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from nbnumba.tools import compare
from nbnumba.tools.compare import metrics, resample_to

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "3",
         "-lambda", "1.5", "-distance", "80", "-pixel", "0.2", "-detpixels", "32",
         "-nonoise", "-nopgm", "-noprogress"]
EXPECTED = {"c_stdout.txt", "c_stderr.txt", "py_stdout.txt", "py_stderr.txt", "c_float.bin",
            "py_float.bin", "c.png", "py.png", "diff.png", "summary.json"}

FAKE = r'''#!{python}
"""Fake nanoBragg: runs the port, then applies MODE to its outputs."""
import os, re, subprocess, sys
import numpy as np
MODE = {mode!r}
args = sys.argv[1:]
if MODE == "fail":
    sys.stdout.write("nanoBragg fake starting\n")
    sys.stderr.write("some warning\nERROR: simulated C failure\n")
    sys.exit(1)
env = dict(os.environ, PYTHONPATH={repo!r})
p = subprocess.run([sys.executable, "-m", "nbnumba.cli", *args], capture_output=True, text=True, env=env)
out = p.stdout
fname = args[args.index("-floatfile") + 1] if "-floatfile" in args else "floatimage.bin"
m = re.search(r"\((\d+)x(\d+) pixels\)", out)
if p.returncode == 0 and m:
    F, S = int(m.group(1)), int(m.group(2))
    img = np.fromfile(fname, dtype=np.float32).reshape(S, F)
    if MODE == "perturb":
        rng = np.random.default_rng(1)
        img = rng.permutation(img.ravel()).reshape(S, F).astype(np.float32)
    elif MODE == "half":
        img = img.reshape(S // 2, 2, F // 2, 2).mean(axis=(1, 3)).astype(np.float32)
    elif MODE == "double":
        img = np.kron(img, np.ones((2, 2))).astype(np.float32)
    elif MODE == "crop":
        img = np.ascontiguousarray(img[:S - 5, :F - 5])
    if MODE in ("half", "double", "crop"):
        out = out.replace(m.group(0), "(%dx%d pixels)" % (img.shape[1], img.shape[0]))
    if MODE == "noshape":
        out = out.replace(m.group(0), "")
    img.tofile(fname)
sys.stdout.write(out)
sys.stderr.write(p.stderr)
sys.exit(p.returncode)
'''


def make_fake(tmp_path, mode):
    path = tmp_path / f"fake_nanoBragg_{mode}"
    path.write_text(FAKE.format(python=sys.executable, mode=mode, repo=str(REPO)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def run(tmp_path, monkeypatch, capsys, opts, flags=FLAGS, png=False):
    """nb-compare in-process; without the PNG previews (about 1 s of matplotlib
    per comparison) unless the test looks at them."""
    monkeypatch.chdir(tmp_path)
    code = compare.main(list(opts) + ([] if png else ["--no-png"]) + ["--"] + list(flags))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def only_dir(parent):
    dirs = [d for d in Path(parent).iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


STATIC = r'''#!{python}
"""Stand-in for nanoBragg or the port: prints a shape line and writes a fixed image."""
import sys
import numpy as np
args = sys.argv[1:]
img = np.load({npy!r})
s, f = {prints!r} or img.shape
sys.stdout.write("stand-in (%dx%d pixels)\n" % (f, s))
img.astype(np.float32).tofile(args[args.index("-floatfile") + 1])
'''


def make_static(tmp_path, name, img, prints=None):
    """A program that prints ``(FxS pixels)`` for ``prints`` (slow, fast; default
    the image's shape) and writes ``img`` as its float image: no rendering, so
    the test controls every pixel and runs in a fraction of a second."""
    npy = tmp_path / f"{name}.npy"
    np.save(npy, np.asarray(img, dtype=np.float32))
    path = tmp_path / name
    path.write_text(STATIC.format(python=sys.executable, npy=str(npy),
                                  prints=tuple(prints) if prints else None))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def static_pair(tmp_path, monkeypatch, c_img, py_img, c_prints=None):
    """Stand-ins for both sides: tmp_path/static_c as the C program (pass it
    as --c-bin) and one for the port, put in place of ``python -m nbnumba.cli``."""
    make_static(tmp_path, "static_c", c_img, c_prints)
    port = make_static(tmp_path, "static_port", py_img)
    monkeypatch.setattr(compare.C, "port_command", lambda args: [port, *args])


def _no_bare_constant(name):
    raise AssertionError(f"summary.json holds the bare constant {name} (not JSON)")


def strict_json(path):
    """summary.json parsed as strict JSON: NaN/Infinity/-Infinity are refused."""
    return json.loads(Path(path).read_text(), parse_constant=_no_bare_constant)


def one_line_error(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("nb-compare: error:")
    return lines[0]


# ----------------------------------------------------------------------------- unit level


def test_metrics_identical_and_scaled():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = metrics(a, a)
    assert m["correlation"] == pytest.approx(1.0)
    assert m["mse"] == 0.0 and m["rmse"] == 0.0 and m["max_abs_diff"] == 0.0
    assert m["sum_ratio"] == 1.0 and m["c_sum"] == pytest.approx(66.0)
    m2 = metrics(a, 2 * a)
    assert m2["correlation"] == pytest.approx(1.0)
    assert m2["sum_ratio"] == pytest.approx(2.0)
    assert m2["max_abs_diff"] == pytest.approx(11.0)
    assert m2["max_abs_diff_at"] == [2, 3]
    assert m2["mse"] == pytest.approx(float((a.astype(float) ** 2).mean()))
    m3 = metrics(a, -a)
    assert m3["correlation"] == pytest.approx(-1.0)


def test_metrics_constant_images():
    z = np.zeros((4, 4))
    assert metrics(z, z)["correlation"] == 1.0
    assert np.isnan(metrics(z, z + 1)["correlation"])
    assert metrics(z, z)["sum_ratio"] == 1.0


def test_resample_down_up_and_mixed():
    big = np.arange(16, dtype=np.float32).reshape(4, 4)
    small, plan = resample_to(big, (2, 2))
    assert plan == [["down", 2], ["down", 2]]
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    up, plan = resample_to(small, (4, 4))
    assert plan == [["up", 2], ["up", 2]]
    np.testing.assert_allclose(up, np.kron(small, np.ones((2, 2))))
    mixed, plan = resample_to(np.ones((4, 2)), (2, 4))
    assert mixed.shape == (2, 4) and plan == [["down", 2], ["up", 2]]
    with pytest.raises(ValueError):
        resample_to(big, (3, 4))


# ----------------------------------------------------------------------------- CLI, fake C


def test_identical_images_exit0_and_files(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"],
                         png=True)
    assert code == 0, err
    d = only_dir(tmp_path / "cmp")
    assert set(os.listdir(d)) == EXPECTED
    assert len(d.name.split("-")[-1]) == 8  # <stamp>-<8 hex>
    s = json.loads((d / "summary.json").read_text())
    m = s["metrics"]
    assert m["correlation"] == pytest.approx(1.0)
    assert m["mse"] == 0.0 and m["rmse"] == 0.0 and m["max_abs_diff"] == 0.0
    assert m["sum_ratio"] == 1.0 and m["c_sum"] == m["py_sum"] > 0
    assert m["n_pixels"] == 32 * 32
    assert s["passed"] is True and s["exit_code"] == 0 and s["c_shape"] == [32, 32]
    assert (d / "c_float.bin").stat().st_size == 32 * 32 * 4
    assert (d / "py_float.bin").read_bytes() == (d / "c_float.bin").read_bytes()
    for png in ("c.png", "py.png", "diff.png"):
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "correlation" in out and "sum ratio" in out and "PASS" in out
    # -floatfile of the user is redirected into the scratch dir: nothing in the cwd
    assert not (tmp_path / "floatimage.bin").exists()


def test_no_png_needs_no_matplotlib_and_writes_no_previews(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if it were not installed
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 0, err
    d = only_dir(tmp_path / "cmp")
    assert set(os.listdir(d)) == EXPECTED - {"c.png", "py.png", "diff.png"}
    s = json.loads((d / "summary.json").read_text())
    assert s["passed"] is True and "c.png" not in s["files"]
    # without --no-png the missing matplotlib is one line before anything runs
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp2"],
                         png=True)
    assert code == 2 and "matplotlib" in err and "--no-png" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cmp2").exists()


def test_roi_and_save_diff(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--roi", "0", "15", "4", "11",
                          "--save-diff", "--png-scale", "90"], png=True)
    assert code == 0, err
    d = only_dir(tmp_path / "cmp")
    assert set(os.listdir(d)) == EXPECTED | {"diff.bin"}
    s = json.loads((d / "summary.json").read_text())
    assert s["metrics"]["n_pixels"] == 16 * 8
    assert s["roi"] == [0, 15, 4, 11]
    diff = np.fromfile(d / "diff.bin", dtype=np.float32)
    assert diff.size == 32 * 32 and not diff.any()


def test_below_threshold_exit3(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "perturb")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 3
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["passed"] is False and s["status"] == "below_threshold"
    assert s["metrics"]["correlation"] < 0.999
    assert s["metrics"]["sum_ratio"] == pytest.approx(1.0, rel=1e-5)  # a permutation keeps the sum
    assert "FAIL" in out


def test_threshold_option(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "perturb")
    code, _, err = run(tmp_path, monkeypatch, capsys,
                       ["--c-bin", fake, "--outdir", "cmp", "--threshold", "-1"])
    assert code == 0, err


def test_shape_mismatch_exit4(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "half")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 4
    assert "shapes differ" in one_line_error(err)
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["status"] == "shape_mismatch"


def test_resample_block_average(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "half")       # C image = 2x2 block average of the port's
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--resample"])
    assert code == 0, err
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["resampled"]["per_axis"] == [["down", 2], ["down", 2]]
    assert s["c_shape"] == [16, 16] and s["py_shape"] == [32, 32]
    assert s["metrics"]["max_abs_diff"] < 1e-5 * s["metrics"]["c_max"]


def test_resample_kron(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "double")     # C image = port image replicated 2x2
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--resample"])
    assert code == 0, err
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["resampled"]["per_axis"] == [["up", 2], ["up", 2]]
    assert s["metrics"]["max_abs_diff"] == 0.0


def test_resample_non_integer_exit4(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "crop")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--resample"])
    assert code == 4
    assert "not integer" in one_line_error(err)


def test_c_runner_failure_exit6(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "fail")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 6
    line = one_line_error(err)
    assert "C runner failed" in line and "ERROR: simulated C failure" in line
    d = only_dir(tmp_path / "cmp")
    assert "simulated C failure" in (d / "c_stderr.txt").read_text()


def test_port_runner_failure_exit6(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--py-args", "-no_such_flag_xyz"])
    assert code == 6
    assert "port runner failed" in one_line_error(err)


def test_missing_binary_exit6(tmp_path, monkeypatch, capsys):
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "no_such_program"), "--outdir", "cmp"])
    assert code == 6
    assert "C runner failed" in one_line_error(err)


def test_no_shape_line_exit6(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "noshape")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 6
    assert "pixels" in one_line_error(err)
    s = strict_json(only_dir(tmp_path / "cmp") / "summary.json")
    assert s["status"] == "runner_failed" and s["exit_code"] == 6


@pytest.mark.parametrize("opts,flags,needle", [
    (["--c-bin", "X"], [], "no nanoBragg flags"),
    (["--c-bin", "X", "--roi", "5", "1", "0", "3"], FLAGS, "--roi"),
    (["--c-bin", "X", "--png-scale", "0"], FLAGS, "--png-scale"),
    (["--c-bin", "X", "--bogus"], FLAGS, "unrecognized"),
    (["--c-bin", "X", "--threshold", "abc"], FLAGS, "threshold"),
    # NaN and 1e308 failed inside communicate()'s wait (a traceback); -1 timed
    # out at once and blamed the runner (exit 6)
    (["--c-bin", "X", "--timeout", "nan"], FLAGS, "argument --timeout: must be > 0"),
    (["--c-bin", "X", "--timeout", "1e308"], FLAGS, "argument --timeout: must be > 0"),
    (["--c-bin", "X", "--timeout", "-1"], FLAGS, "argument --timeout: must be > 0"),
    # an unbalanced quote was shlex's ValueError traceback, exit 1
    (["--c-bin", "X", '--py-args="-N'], FLAGS,
     "argument --py-args: cannot split '\"-N' into arguments: No closing quotation"),
    (["--c-bin", "X", "--py-args", "-N 'x"], FLAGS, "argument --py-args: cannot split"),
])
def test_usage_errors_exit2(tmp_path, monkeypatch, capsys, opts, flags, needle):
    code, out, err = run(tmp_path, monkeypatch, capsys, opts, flags)
    assert code == 2
    assert needle in one_line_error(err)
    assert not (tmp_path / "comparisons").exists()     # refused before any folder


def test_no_c_program_configured_exit2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--outdir", "cmp"])
    assert code == 2
    assert "NB_C_BIN" in one_line_error(err)


@pytest.mark.parametrize("roi,extra,needle", [
    # the detector is 32x32: XMAX 40 was found only after both programs ran,
    # leaving a result folder of logs without summary.json
    (["0", "40", "0", "3"], [], "--roi 0 40 0 3 is outside the 32x32 detector (XMAX <= 31"),
    (["0", "3", "0", "32"], [], "outside the 32x32 detector (XMAX <= 31, YMAX <= 31)"),
    (["0", "25", "0", "3"], ["-detpixels_f", "20"], "outside the 20x32 detector"),
    # the flags themselves are read then: a refused flag is one line naming --roi
    (["0", "3", "0", "3"], ["-no_such_flag_xyz"], "--roi: cannot tell the image size from the "
                                                 "flags: unknown flag '-no_such_flag_xyz'"),
    (["0", "3", "0", "3"], ["-pixel", "0"], "-pixel must be > 0"),
    (["0", "3", "0", "3"], ["-h"], "they ask for help"),
])
def test_roi_checked_against_the_detector_before_anything_runs(tmp_path, monkeypatch, capsys,
                                                               roi, extra, needle):
    # a C program that does not exist: had it been started, the exit would be 6
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "no_such_program"), "--outdir", "cmp",
                          "--roi", *roi], FLAGS + extra)
    assert code == 2
    assert needle in one_line_error(err)
    assert not (tmp_path / "cmp").exists()      # no result folder either


def test_roi_outside_cs_printed_image_after_the_runs(tmp_path, monkeypatch, capsys):
    """The detector is 32x32 but C prints 16x16 (resampled): the box passes the
    early check, fails against C's image, and the folder says why."""
    img = np.ones((32, 32), np.float32)
    static_pair(tmp_path, monkeypatch, img[:16, :16], img)
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "static_c"), "--outdir", "cmp", "--resample",
                          "--roi", "0", "20", "0", "3"])
    assert code == 2
    assert "outside the 16x16 C image (XMAX <= 15" in one_line_error(err)
    d = only_dir(tmp_path / "cmp")
    s = strict_json(d / "summary.json")
    assert s["status"] == "usage_error" and s["exit_code"] == 2 and "outside" in s["error"]
    assert "(16x16 pixels)" in (d / "c_stdout.txt").read_text()


def test_float_file_shorter_than_its_shape_exit5_keeps_the_logs(tmp_path, monkeypatch, capsys):
    img = np.ones((32, 32), np.float32)
    static_pair(tmp_path, monkeypatch, img.ravel()[:1000], img, c_prints=(32, 32))
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "static_c"), "--outdir", "cmp"])
    assert code == 5
    assert "C float image has 1000 values but stdout says 32x32 pixels" in one_line_error(err)
    d = only_dir(tmp_path / "cmp")
    assert {"c_stdout.txt", "c_stderr.txt", "py_stdout.txt", "py_stderr.txt", "c_float.bin",
            "py_float.bin", "summary.json"} <= set(os.listdir(d))
    assert (d / "c_float.bin").stat().st_size == 4000          # kept as C wrote it
    s = strict_json(d / "summary.json")
    assert s["status"] == "io_error" and s["exit_code"] == 5 and s["c_shape"] == [32, 32]


def test_io_error_exit5(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    (tmp_path / "afile").write_text("not a directory")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "afile"])
    assert code == 5
    one_line_error(err)


def test_input_paths_resolved(tmp_path, monkeypatch, capsys):
    """Relative -hkl paths are resolved against the caller's directory."""
    fake = make_fake(tmp_path, "same")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.hkl").write_text("1 0 0 10\n0 1 0 20\n0 0 1 30\n1 1 1 40\n")
    flags = [a for a in FLAGS] + ["-hkl", "in/t.hkl"]
    flags[flags.index("-default_F") + 1] = "0"
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"], flags)
    assert code == 0, err


SUBSTRING_C = r'''#!{python}
"""Stand-in for nanoBragg.c's flag reading: like C it tests every argument that
starts with '-' by substring, reads the file after any '-hkl'/'-img' match,
writes the one after any '-intfile'/'-intimage' match, then a fixed image."""
import sys
import numpy as np
args = sys.argv[1:]
float_name = "floatimage.bin"
for i, a in enumerate(args[:-1]):
    if not a.startswith("-"):
        continue
    if "-hkl" in a or "-img" in a:
        try:
            open(args[i + 1]).close()
        except OSError as exc:
            sys.exit("ERROR: cannot read %s: %s" % (args[i + 1], exc.strerror))
    if "-intfile" in a or "-intimage" in a:
        with open(args[i + 1], "w") as fh:
            fh.write("written by the stand-in")
    if "-floatfile" in a:
        float_name = args[i + 1]
sys.stdout.write("stand-in (4x4 pixels)\n")
np.ones((4, 4), np.float32).tofile(float_name)
'''


def substring_pair(tmp_path, monkeypatch):
    """The C program and the port both replaced by SUBSTRING_C (returns the
    path to pass as --c-bin)."""
    path = tmp_path / "substring_c"
    path.write_text(SUBSTRING_C.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setattr(compare.C, "port_command", lambda args: [str(path), *args])
    return str(path)


def test_c_substring_output_flag_is_written_in_scratch(tmp_path, monkeypatch, capsys):
    """nanoBragg.c takes -intfile_x for -intfile (strstr): its absolute name
    was passed on unchanged and C overwrote the caller's file."""
    c = substring_pair(tmp_path, monkeypatch)
    keep = tmp_path / "keep.img"
    keep.write_text("precious")
    before = sorted(os.listdir(tmp_path))
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", c, "--outdir", "cmp"],
                         FLAGS + ["-intfile_x", str(keep)])
    assert code == 0, err
    assert keep.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["cmp"])
    s = strict_json(only_dir(tmp_path / "cmp") / "summary.json")
    i = s["c_cmd"].index("-intfile_x")
    assert s["c_cmd"][i + 1] == "keep.img"


def test_py_args_output_flag_is_written_in_scratch(tmp_path, monkeypatch, capsys):
    """--py-args went to the port unresolved: -intfile /abs/path wrote there."""
    c = substring_pair(tmp_path, monkeypatch)
    keep = tmp_path / "keep.img"
    keep.write_text("precious")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", c, "--outdir", "cmp", "--py-args", f"-intimage {keep}"])
    assert code == 0, err
    assert keep.read_text() == "precious"


@pytest.mark.parametrize("flag", ["-hkl_x", "-img2"])
def test_c_substring_input_flag_is_made_absolute(tmp_path, monkeypatch, capsys, flag):
    """-hkl_x/-img2 are C's -hkl/-img: a relative name was passed on as it was
    typed and C, in its scratch folder, could not read it (exit 6)."""
    c = substring_pair(tmp_path, monkeypatch)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "t.hkl").write_text("1 0 0 10\n")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", c, "--outdir", "cmp"],
                         FLAGS + [flag, "in/t.hkl"])
    assert code == 0, err
    s = strict_json(only_dir(tmp_path / "cmp") / "summary.json")
    assert s["c_cmd"][s["c_cmd"].index(flag) + 1] == str(tmp_path / "in" / "t.hkl")


@pytest.mark.parametrize("flags,needle", [
    # both an input (-hkl) and an output (-intfile) flag to C: no path serves both
    (["-hkl-intfile", "x.img"], "argument -hkl-intfile: nanoBragg.c reads it as both"),
    # the value is itself C's -intfile: made absolute it would no longer be a flag
    (["-hkl", "-intfile_x", "out.img"], "argument -hkl: its file name '-intfile_x' is also"),
])
def test_line_that_cannot_stay_in_scratch_is_refused(tmp_path, monkeypatch, capsys, flags,
                                                     needle):
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "no_such_program"), "--outdir", "cmp"],
                         FLAGS + flags)
    assert code == 2
    assert needle in one_line_error(err)
    assert not (tmp_path / "cmp").exists()


def test_resolve_paths_follows_cs_reading_of_the_flags(tmp_path):
    from nbnumba.tools import _common as C
    cwd = str(tmp_path)
    out = C.resolve_paths(["-noiseimage.x", "/a/n.img", "-pgmfile2", "d/p.pgm",
                           "-mask_x", "m.img", "-Q", "q.txt", "-Qx", "q2.txt",
                           # C's -Na block ends with `continue`: -intfile is never tested
                           "-Na-intfile", "/a/kept"], cwd)
    assert out == ["-noiseimage.x", "n.img", "-pgmfile2", "p.pgm",
                   "-mask_x", os.path.join(cwd, "m.img"), "-Q", os.path.join(cwd, "q.txt"),
                   "-Qx", "q2.txt", "-Na-intfile", "/a/kept"]


def test_console_script_entry_point():
    """`nb-compare` -> nbnumba.tools.compare:main (declared in pyproject.toml)."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'nb-compare = "nbnumba.tools.compare:main"' in text


# ----------------------------------------------------------------------------- REAL C (optional)

NB_C_BIN = os.environ.get("NB_C_BIN")
real_c = pytest.mark.skipif(not NB_C_BIN or not os.path.exists(NB_C_BIN),
                            reason="REAL C: set NB_C_BIN to the nanoBragg binary")


@real_c
def test_real_c_parity_small_case(tmp_path, monkeypatch, capsys):
    """REAL C: the port under -c_parity reproduces nanoBragg.c (one OpenMP thread)."""
    flags = FLAGS[:-1] + ["-phi", "0", "-osc", "1", "-phisteps", "4"]
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--outdir", "cmp", "--py-args=-c_parity", "--c-threads", "1"], flags)
    assert code == 0, err
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["metrics"]["correlation"] > 0.999999
    assert s["metrics"]["max_abs_diff"] <= 1e-6 * s["metrics"]["c_max"]


def test_concurrent_runners_are_timed_each_to_its_own_end(tmp_path):
    import time
    from nbnumba.tools import _common as C
    slow_cmd = [sys.executable, "-c", "import time; time.sleep(1.2)"]
    fast_cmd = [sys.executable, "-c", "pass"]
    t_slow = time.perf_counter()
    slow = C.start(slow_cmd, str(tmp_path), None, "C")
    t_fast = time.perf_counter()
    fast = C.start(fast_cmd, str(tmp_path), None, "port")
    rs, rf = compare.finish_concurrently(
        [(slow, slow_cmd, str(tmp_path), "C", t_slow), (fast, fast_cmd, str(tmp_path), "port", t_fast)])
    assert rs.returncode == 0 and rf.returncode == 0
    assert rs.seconds >= 1.2
    assert rf.seconds < rs.seconds - 0.5      # not the slow one's end time


# ----------------------------------------------------------------------------- GPU parity contract
def test_parity_contract_counts_flipped_pixels():
    from nbnumba.tools.compare import CONTRACT_REL, parity_contract
    rng = np.random.default_rng(3)
    c = rng.random((40, 50)) * 100.0 + 1.0
    same = parity_contract(c, c.copy())
    assert same["flipped"] == 0 and same["max_rel_error"] == 0.0 and same["within_contract"]
    assert same["correlation"] == pytest.approx(1.0)
    py = c * (1.0 + 0.1 * CONTRACT_REL * rng.standard_normal(c.shape))   # inside the tolerance
    py[3, 4] *= 1.0 + 30 * CONTRACT_REL                                   # three flipped pixels
    py[10, 0] *= 1.0 - 20 * CONTRACT_REL
    py[39, 49] = np.nan
    k = parity_contract(c, py)
    assert k["flipped"] == 3 and k["flipped_first"] == [[3, 4], [10, 0], [39, 49]]
    assert k["flipped_fraction"] == pytest.approx(3 / c.size)
    assert not k["within_contract"]
    ok = np.isfinite(py)
    k2 = parity_contract(c[ok].reshape(1, -1), py[ok].reshape(1, -1))
    assert k2["max_rel_error"] == pytest.approx(30 * CONTRACT_REL, rel=0.05)
    assert k2["flipped"] == 2
    with pytest.raises(ValueError):
        parity_contract(c, c[:, :10])


def test_report_includes_contract(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
    assert code == 0, err
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["device"] == "cpu"
    assert s["contract"]["flipped"] == 0 and s["contract"]["max_rel_error"] == 0.0
    assert "flipped       0 of 1024 pixels" in out and "max rel error" in out


def test_device_cuda_runs_the_port_on_the_gpu(tmp_path, monkeypatch, capsys):
    """--device cuda adds -device cuda to the port only; without a GPU the port
    fails with its one-line reason (the runner-failure exit), with one the
    contract is reported."""
    from nbnumba.kernels import gpu
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--device", "cuda"])
    s = json.loads((only_dir(tmp_path / "cmp") / "summary.json").read_text())
    assert s["device"] == "cuda"
    assert s["py_cmd"][-2:] == ["-device", "cuda"] and "cuda" not in s["c_cmd"]
    if gpu.available():
        assert code == 0, err
        assert "flipped" in out and s["contract"]["n_pixels"] == 32 * 32
    else:
        assert code == compare.EXIT_RUNNER
        line = one_line_error(err)
        assert "-device cuda" in line and ("CuPy is not installed" in line or "no CUDA device" in line)


# ----------------------------------------------------------------------------- non-finite pixels
def test_parity_contract_nonfinite_c_pixel_is_flipped_not_kept():
    """An inf in C made the tolerance 1e-9 * max|C| infinite: every pixel
    "kept" the contract, with numpy's "invalid value" warning on the way."""
    from nbnumba.tools.compare import parity_contract
    c = np.ones((4, 4))
    c[0, 0] = np.inf
    py = np.ones((4, 4))
    py[1, 1] = 1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # any numpy RuntimeWarning fails the test
        k = parity_contract(c, py)
        m = metrics(c, py)
    assert k["flipped"] == 2 and k["flipped_first"] == [[0, 0], [1, 1]]
    assert k["nonfinite_flipped"] == 1 and not k["within_contract"]
    assert np.isnan(k["max_rel_error"]) and k["max_rel_error_at"] is None
    assert m["c_nonfinite"] == 1 and m["py_nonfinite"] == 0 and m["n_finite"] == 15
    assert m["nonfinite_mismatch"] == 1 and m["nonfinite_first"] == [[0, 0]]
    for key in ("correlation", "mse", "rmse", "max_abs_diff", "sum_ratio"):
        assert np.isnan(m[key]), key
    assert m["max_abs_diff_at"] is None
    assert m["c_sum"] == 15.0 and m["py_sum"] == 1014.0     # over the 15 finite in both


def test_identical_nonfinite_pixels_agree_and_tolerance_uses_finite_max():
    """The same special value at the same pixel in both images agrees (both
    programs produced it); the tolerance comes from C's finite pixels."""
    from nbnumba.tools.compare import CONTRACT_REL, parity_contract
    c = np.arange(1.0, 26.0).reshape(5, 5)
    c[0, 0], c[0, 1], c[0, 2] = np.inf, -np.inf, np.nan
    py = c.copy()
    py[3, 3] *= 1.0 + 50 * CONTRACT_REL     # beyond 1e-6 |C| + 1e-9 * 25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k = parity_contract(c, py)
        m = metrics(c, py)
    assert k["flipped"] == 1 and k["flipped_first"] == [[3, 3]] and k["nonfinite_flipped"] == 0
    assert k["max_rel_error"] == pytest.approx(50 * CONTRACT_REL, rel=1e-6)
    assert k["max_rel_error_at"] == [3, 3]
    assert m["c_nonfinite"] == m["py_nonfinite"] == 3 and m["nonfinite_mismatch"] == 0
    assert m["n_finite"] == 22 and m["correlation"] > 0.999999
    assert m["max_abs_diff_at"] == [3, 3]
    # a different special value is a mismatch: inf vs -inf, NaN vs inf
    for a, b in ((np.inf, -np.inf), (np.nan, np.inf)):
        py2 = c.copy()
        py2[0, 0], c2 = b, c.copy()
        c2[0, 0] = a
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            k2 = parity_contract(c2, py2)
        assert k2["nonfinite_flipped"] == 1 and k2["flipped_first"][0] == [0, 0]


def test_nonfinite_positions_in_image_coordinates():
    c = np.ones((3, 4))
    py = c.copy()
    py[2, 1] = np.nan
    m = metrics(c, py, origin=(10, 20))
    k = compare.parity_contract(c, py, origin=(10, 20))
    assert m["nonfinite_first"] == [[12, 21]] and k["flipped_first"] == [[12, 21]]


def test_cli_nonfinite_c_pixel_reported_and_fails(tmp_path, monkeypatch, capsys):
    c = np.ones((32, 32), np.float32)
    c[0, 0] = np.inf
    py = np.ones((32, 32), np.float32)
    py[1, 1] = 1000.0
    static_pair(tmp_path, monkeypatch, c, py)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # metrics, previews, diff.bin
        code, out, err = run(tmp_path, monkeypatch, capsys,
                             ["--c-bin", str(tmp_path / "static_c"), "--outdir", "cmp",
                              "--save-diff"], png=True)
    assert code == 3, err
    assert err == ""
    assert ("non-finite    C 1, port 0 pixels (NaN or ±inf); figures over the 1023 finite in "
            "both; 1 pixel not the same in both images, first at (slow, fast) = (0, 0)") in out
    assert "flipped       2 of 1024 pixels" in out and "GPU parity contract: not kept" in out
    assert "FAIL (1 pixel non-finite in one image and not the same in the other" in out
    d = only_dir(tmp_path / "cmp")
    s = strict_json(d / "summary.json")
    assert s["metrics"]["correlation"] == "nan" and s["metrics"]["c_nonfinite"] == 1
    assert s["contract"]["flipped"] == 2 and s["contract"]["within_contract"] is False
    assert s["contract"]["flipped_first"] == [[0, 0], [1, 1]]
    diff = np.fromfile(d / "diff.bin", dtype=np.float32).reshape(32, 32)
    assert diff[0, 0] == -np.inf and diff[1, 1] == 999.0
    for png in ("c.png", "py.png", "diff.png"):
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_json_is_strict_for_all_zero_c(tmp_path, monkeypatch, capsys):
    """An all-zero C image gave "correlation": NaN and "sum_ratio": Infinity,
    which strict JSON readers refuse; they are strings now."""
    static_pair(tmp_path, monkeypatch, np.zeros((32, 32)), np.ones((32, 32)))
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "static_c"), "--outdir", "cmp"])
    assert code == 3, err
    s = strict_json(only_dir(tmp_path / "cmp") / "summary.json")
    m, k = s["metrics"], s["contract"]
    assert m["correlation"] == "nan" and m["sum_ratio"] == "inf"
    assert m["c_sum"] == 0.0 and m["py_sum"] == 1024.0 and m["mse"] == 1.0
    assert k["max_rel_error"] == "inf" and k["flipped"] == 1024


def test_json_safe_names_non_finite_numbers():
    from nbnumba.tools.compare import json_safe
    v = {"a": [float("nan"), np.float32("inf"), -np.inf], "b": (1, np.int64(2), 0.5, None, True)}
    assert json_safe(v) == {"a": ["nan", "inf", "-inf"], "b": [1, 2, 0.5, None, True]}
    json.dumps(json_safe(v), allow_nan=False)          # raises if anything slipped through


# ----------------------------------------------------------------------------- ROI coordinates
def test_roi_positions_are_image_coordinates(tmp_path, monkeypatch, capsys):
    """With --roi, max rel error's position and contract.flipped_first were
    ROI-relative; only max |Δ| had the ROI origin added."""
    c = 1.0 + np.arange(32 * 32, dtype=np.float32).reshape(32, 32)
    py = c.copy()
    py[20, 10] *= 1.5                   # inside x 8..15, y 16..23: the largest error
    py[21, 11] *= 1.0 + 1e-3            # inside, a second flipped pixel
    py[0, 0] = 1e6                      # outside the box: must not count
    static_pair(tmp_path, monkeypatch, c, py)
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", str(tmp_path / "static_c"), "--outdir", "cmp",
                          "--roi", "8", "15", "16", "23", "--threshold", "-1"])
    assert code == 0, err
    s = strict_json(only_dir(tmp_path / "cmp") / "summary.json")
    m, k = s["metrics"], s["contract"]
    assert m["n_pixels"] == 64 and k["flipped"] == 2
    assert m["max_abs_diff_at"] == [20, 10]
    assert k["max_rel_error_at"] == [20, 10] and k["max_rel_error"] == pytest.approx(0.5)
    assert k["flipped_first"] == [[20, 10], [21, 11]]
    assert out.count("at (slow, fast) = (20, 10)") == 2         # max |Δ| and max rel error
