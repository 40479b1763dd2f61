"""nb-compare (nbnumba.tools.compare).

The main tests need no C program: ``--c-bin`` points at a small fake written
into tmp_path that mimics nanoBragg's interface by running the port
(``python -m nbnumba.cli``) and then, depending on its mode, perturbing,
shrinking or failing.  Tests marked "REAL C" run only when NB_C_BIN is set.
"""

import json
import os
import stat
import sys
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


def run(tmp_path, monkeypatch, capsys, opts, flags=FLAGS):
    monkeypatch.chdir(tmp_path)
    code = compare.main(list(opts) + ["--"] + list(flags))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def only_dir(parent):
    dirs = [d for d in Path(parent).iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


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
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--c-bin", fake, "--outdir", "cmp"])
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


def test_roi_and_save_diff(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--roi", "0", "15", "4", "11",
                          "--save-diff", "--png-scale", "90"])
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
])
def test_usage_errors_exit2(tmp_path, monkeypatch, capsys, opts, flags, needle):
    code, out, err = run(tmp_path, monkeypatch, capsys, opts, flags)
    assert code == 2
    assert needle in one_line_error(err)


def test_no_c_program_configured_exit2(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    code, out, err = run(tmp_path, monkeypatch, capsys, ["--outdir", "cmp"])
    assert code == 2
    assert "NB_C_BIN" in one_line_error(err)


def test_roi_outside_image_exit2(tmp_path, monkeypatch, capsys):
    fake = make_fake(tmp_path, "same")
    code, out, err = run(tmp_path, monkeypatch, capsys,
                         ["--c-bin", fake, "--outdir", "cmp", "--roi", "0", "40", "0", "3"])
    assert code == 2
    assert "outside" in one_line_error(err)


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
