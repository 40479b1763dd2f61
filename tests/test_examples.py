"""Every script in examples/ runs, tiny, and does what its docstring says."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EX = REPO / "examples"


def run(script, args, cwd, env_extra=None, drop=()):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.update(env_extra or {})
    for k in drop:
        env.pop(k, None)
    r = subprocess.run([sys.executable, str(EX / script), *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def test_every_example_has_a_test():
    tested = {"single_still.py", "rotation_to_nexus.py", "serial_on_dask.py", "parity_probe.py",
              "torch_round_trip.py",
              "refine.py"}      # tests/test_autodiff.py::test_refine_example_recovers_misset_cell_distance
    assert {p.name for p in EX.glob("*.py")} == tested


def test_single_still(tmp_path):
    r = run("single_still.py", ["--out", "o", "--detpixels", 32], tmp_path)
    names = sorted(os.listdir(tmp_path / "o"))
    assert names == ["floatimage.bin", "image.pgm", "intimage.img", "noiseimage.img"]
    img = np.fromfile(tmp_path / "o" / "floatimage.bin", dtype="<f4")
    assert img.size == 32 * 32 and img.max() > 0
    # the brightest pixel is named by its index (it printed int() of metres: (0, 0))
    s, f = np.unravel_index(np.argmax(img.reshape(32, 32)), (32, 32))
    assert ("max %.4g photons at pixel (slow, fast) = (%d, %d)" % (img.max(), s, f)) in r.stdout
    assert (s, f) != (0, 0)


def test_rotation_to_nexus(tmp_path):
    h5py = pytest.importorskip("h5py")
    run("rotation_to_nexus.py", ["--out", "rot", "--frames", 2, "--detpixels", 16], tmp_path)
    with h5py.File(tmp_path / "rot" / "master.h5", "r") as f:
        assert f["entry/definition"][()].decode() == "NXmx"
        assert f["entry/data/data"].shape == (2, 16, 16)


def test_serial_on_dask(tmp_path):
    pytest.importorskip("distributed")
    r = run("serial_on_dask.py", ["--out", "ser", "--shots", 3, "--workers", 1, "--detpixels", 16],
            tmp_path)
    recs = [json.loads(l) for l in (tmp_path / "ser" / "manifest.jsonl").read_text().splitlines()]
    frames = [x for x in recs if x.get("type") == "frame"]
    assert len(frames) == 3 and len({tuple(x["params"]["misset_deg"]) for x in frames}) == 3
    assert r.stdout.count("shot ") == 3


def test_parity_probe_without_c(tmp_path):
    r = run("parity_probe.py", ["--pixel", 83, 70], tmp_path, drop=("NB_C_BIN",))
    assert any(l.startswith("TRACE_PY:") for l in r.stdout.splitlines())
    assert "pixel (83, 70)" in r.stdout


def test_torch_round_trip(tmp_path):
    pytest.importorskip("torch")
    r = run("torch_round_trip.py", [], tmp_path)
    assert "shares memory: True" in r.stdout and "masked block is zero" in r.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("single_still.py", ["--detpixels", 0, "--out", "s9"], "-detpixels"),
    ("single_still.py", ["--out", "afile"], "--out afile: not a directory"),
    ("parity_probe.py", ["--pixel", 99999, 5], "--pixel 99999 5: outside"),
    ("parity_probe.py", ["--pixel", -1, 5], "--pixel -1 5: outside"),
    ("refine.py", ["--max-iter", 0], "--max-iter"),
    ("refine.py", ["--out", "nodir/r.png"], "--out nodir/r.png"),
])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, script, args, expect):
    """Refused up front: exit 2, one stderr line naming the option, nothing written."""
    if script == "refine.py":
        pytest.importorskip("torch")
    (tmp_path / "afile").write_text("x")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NB_C_BIN", None)
    r = subprocess.run([sys.executable, str(EX / script), *map(str, args)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and expect in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_serial_on_dask_stops_with_the_series_status(tmp_path):
    """A refused series run: its status, not a stale manifest or a traceback."""
    pytest.importorskip("distributed")
    (tmp_path / "ser").mkdir()
    (tmp_path / "ser" / "manifest.jsonl").write_text(
        '{"type": "frame", "frame": 0, "params": {"misset_deg": [1, 2, 3], "cell": [1]}}\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(EX / "serial_on_dask.py"), "--out", "ser",
                        "--shots", "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "--shots" in r.stderr and "Traceback" not in r.stderr
    assert "shot " not in r.stdout
