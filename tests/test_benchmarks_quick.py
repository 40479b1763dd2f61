"""The benchmark suite in quick mode, and unit tests of the benchmark tools
(benchmarks.history parsing, benchmarks.vs_c helpers).  No timing assertions;
nothing here needs the C program."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import history, vs_c
from benchmarks import workloads as W
from nbnumba.testing.parallel import child_env

REPO = Path(__file__).resolve().parents[1]

C_STDOUT = """nanoBragg nanocrystal diffraction simulator - James Holton and Ken Frankel 5-17-17
  created a total of 3 sources:
  distance=0.1 detsize=0.0512x0.0512  pixel=0.0001 meters (512x512 pixels)
  sensor is 0 m thick in 1 layers with mu= 0
  3 sources
  10 mosaic domains over mosaic spread of 0.5 degrees
  5 phi steps from 0.1 to 1.1 degrees
  2x2 pixel oversample steps
"""


# ---------------------------------------------------------------- the harness
@pytest.mark.slow
def test_benchmark_harness_writes_well_formed_results(tmp_path):
    """One cheap slice of the suite (W5 on 128x128, D = 1 and 10), timed for
    real by pytest-benchmark: the JSON it writes has what benchmarks.history
    and docs/performance.md read.  No assertion on speed."""
    out = tmp_path / "bench.json"
    # (a run of its own: in an xdist worker's variables pytest-benchmark switches off)
    env = dict(child_env(os.environ), NB_BENCH_QUICK="1", NB_BENCH_ROUNDS="1", NB_BENCH_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_kernels.py::test_kernel_w5_cpu",
                        "-q", "-p", "no:cacheprovider", "--benchmark-json", str(out)],
                       cwd=str(REPO), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    doc = json.loads(out.read_text())
    facts = doc["nbnumba"]
    assert facts["quick"] is True and facts["threads"] == 1 and facts["suite"] == "pytest-benchmark"
    assert facts["numba"] and facts["cpu_model"] and facts["cpu_count"] >= 1
    rows = doc["benchmarks"]
    assert sorted(b["extra_info"]["workload"] for b in rows) == ["W5-D1", "W5-D10"]
    for b in rows:
        x, st = b["extra_info"], b["stats"]
        assert b["group"] == "kernel-W5-cpu" and x["kind"] == "kernel" and x["backend"] == "cpu"
        assert x["pixels"] == 128 * 128 and x["threads"] == 1 and x["precision"] == "double"
        domains = int(x["workload"].split("D")[1])
        assert x["steps"] == 4 * domains               # automatic 2x2 oversampling
        assert x["subpaths"] == x["pixels"] * x["steps"]
        assert st["rounds"] == 1 and 0 < st["min"] <= st["median"] <= st["max"]
        assert x["subpaths_per_s"] == pytest.approx(x["subpaths"] / st["median"])
    # benchmarks.history reads it back as two kernel rows with their throughput
    recs = history.records_from_json(doc, out.name)
    assert sorted(r["workload"] for r in recs) == ["W5-D1", "W5-D10"]
    for rec in recs:
        assert rec["kind"] == "kernel" and rec["quick"] is True
        assert rec["throughput"] and rec["throughput"] > 0


# ---------------------------------------------------------------- workloads
def test_workload_definitions():
    assert W.W1 == ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
                    "-detpixels 1024").split()
    assert W.flag_values(W.W4, "-N") == ["2"] and "-interpolate" in W.W4
    assert W.flag_values(W.W2, "-N") == ["8"]
    assert W.w5_args(100)[-2:] == ["-mosaic_dom", "100"]
    assert set(W.MAIN_WORKLOADS) <= set(W.WORKLOADS)


def test_argv_quick_and_c(tmp_path):
    a = W.argv("W2", tmp_path, quick=True, precision="single", threads=2)
    assert W.detector_shape(a) == (128, 128)
    assert a[-4:] == ["-precision", "single", "-threads", "2"]
    for f in W.COMMON_FLAGS:
        assert f in a
    assert W.flag_values(a, "-floatfile")[0] == str(tmp_path / "float.bin")
    c = W.argv("W2", tmp_path, quick=False, precision="single", threads=2, for_c=True, extra=["-c_parity"])
    assert "-precision" not in c and "-threads" not in c and "-c_parity" not in c
    assert W.detector_shape(c) == (512, 512)


def test_shrink_w3_window_moves_beam_and_pix0():
    full = list(W.W3)
    q = W.shrink(full, 128, (685, 1039))
    assert W.detector_shape(q) == (128, 128)
    f0, s0 = 1039 - 64, 685 - 64
    assert float(W.flag_values(q, "-Xbeam")[0]) == pytest.approx(217.742295 - f0 * 0.172)
    assert float(W.flag_values(q, "-Ybeam")[0]) == pytest.approx(213.907080 - s0 * 0.172)
    p0 = [float(x) for x in W.flag_values(q, "-pix0_vector_mm", 3)]
    fd = np.array([0.999982, -0.005998, -0.000118])
    sd = np.array([-0.005998, -0.999970, -0.004913])
    want = np.array([-216.336293, 215.205512, -230.200866]) + (f0 * fd + s0 * sd) * 0.172
    assert np.allclose(p0, want)


def test_parse_run_info():
    info = W.parse_run_info(C_STDOUT)
    assert info["pixels"] == 512 * 512
    assert info["steps"] == 3 * 10 * 5 * 4 == 600
    assert info["subpaths"] == 512 * 512 * 600
    assert W.parse_run_info("nothing here") == {}


# ---------------------------------------------------------------- vs_c helpers
def test_vs_c_image_metrics():
    rng = np.random.default_rng(0)
    a = rng.random(1000).astype(np.float32)
    assert vs_c.correlation(a, a) == pytest.approx(1.0)
    assert vs_c.correlation(a, -a) == pytest.approx(-1.0)
    assert vs_c.correlation(np.ones(5), np.ones(5)) == 1.0
    assert np.isnan(vs_c.correlation(np.ones(5), np.ones(4)))
    ref = np.array([100.0, 50.0, 1e-6, 0.0])
    test = np.array([100.1, 50.0, 5.0, 0.0])       # the tiny pixel is below the floor
    assert vs_c.max_rel_error(test, ref) == pytest.approx(1e-3)
    assert vs_c.max_rel_error(np.zeros(3), np.zeros(3)) == 0.0


def test_vs_c_small_helpers(monkeypatch):
    assert vs_c.median([3.0, 1.0, 2.0]) == 2.0
    assert vs_c.median([]) is None
    assert vs_c.speed_ratio(2.0, 1.0) == 2.0
    assert vs_c.speed_ratio(None, 1.0) is None
    assert vs_c.throughput(600, 2.0) == 300.0
    assert vs_c.throughput(None, 2.0) is None
    assert vs_c.rss_target_mb(1000000) == pytest.approx(308.0)
    assert vs_c.fmt(None) == "n/a" and vs_c.fmt(1.23456, "%.2f") == "1.23"
    monkeypatch.delenv("NB_C_BIN", raising=False)
    assert vs_c.c_binary() is None
    monkeypatch.setenv("NB_C_BIN", "/nonexistent/nanoBragg")
    assert vs_c.c_binary() is None


def test_vs_c_compare_and_targets():
    img = np.linspace(0, 1, 100).astype(np.float32)
    q = vs_c.compare_images({"C": img, "double": img, "single": img * (1 + 1e-6)}, ["double", "single"])
    assert q["double"]["corr_vs_c"] == pytest.approx(1.0)
    assert q["single"]["maxrel_vs_f64"] == pytest.approx(1e-6, rel=1e-2)
    assert "corr_vs_f64" not in q["double"]
    res = {"rows": [
        {"workload": "W2", "precision": "double", "speedup": 2.0},
        {"workload": "W2", "precision": "single", "speedup": 3.0, "corr_vs_f64": 0.999999, "maxrel_vs_f64": 2e-4},
        {"workload": "W3", "precision": "double", "speedup": 1.0, "pixels": 6224001, "port_rss_mb": 500.0},
        {"workload": "W1", "precision": "double", "c_s": 0.1},
    ], "inprocess": {"W1": {"double": {"total_s": 0.05}}}, "startup": {"cli64_s": 2.0}}
    t = {x["target"]: x["met"] for x in vs_c.evaluate_targets(res)}
    assert t["W2 float64 port/C speed >= 1.5x"] is True
    assert t["W2 float32 port/C speed >= 4x"] is False
    assert t["W2 float32 vs float64 correlation >= 0.99999"] is True
    assert t["W3 float64 port/C speed >= 1.5x"] is False
    assert t["W1 float64 port/C speed excluding start-up >= 1.0x"] is True
    assert t["start-up: python -m nbnumba.cli 64x64 < 1.5 s"] is False
    assert [v for k, v in t.items() if k.startswith("W3 double peak RSS")] == [False]


def test_vs_c_markdown_without_c():
    res = {"machine": {"host": "h", "cpu_model": "cpu", "git_sha": "abc1234"}, "threads": 2, "reps_done": 1,
           "c_bin": None, "rows": [{"workload": "W1", "precision": "double", "pixels": 16384, "steps": 1,
                                    "port_s": 0.5, "reps": 1, "port_flags": [], "errors": []}]}
    md = vs_c.markdown(res)
    assert "C runs skipped" in md
    assert "| W1 | double | 16384 x 1 | n/a | 0.500 | n/a |" in md


def test_vs_c_runs_port_only_without_c(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    out_md = tmp_path / "table.md"
    rc = vs_c.main(["--quick", "--workloads", "W1", "--reps", "1", "--precision", "double", "--threads", "1",
                    "--no-startup", "--inprocess", "--no-json", "--out", str(out_md)])
    cap = capsys.readouterr()
    assert rc == 0
    assert "C runs skipped" in cap.err
    assert "C runs skipped" in out_md.read_text()
    assert "| W1 | double | 16384 x 1 | n/a |" in cap.out


# ---------------------------------------------------------------- history
def _pytest_benchmark_json():
    return {
        "datetime": "2026-11-25T17:00:44", "commit_info": {"id": "3ceb7a9ffff"},
        "machine_info": {"node": "vm"}, "nbnumba": {"quick": False},
        "benchmarks": [
            {"name": "test_kernel[W2-double]", "stats": {"median": 2.0},
             "extra_info": {"workload": "W2", "precision": "double", "kind": "kernel", "subpaths": 600}},
            {"name": "test_cli[W1-single]", "stats": {"median": 0.5}, "extra_info": {}},
        ],
    }


def test_history_parse_name():
    m = history.parse_name("20261125-3ceb7a9-vm.json")
    assert m == {"prefix": "", "date": "20261125", "sha": "3ceb7a9", "host": "vm", "quick": False}
    m = history.parse_name("vs_c-20261125-3ceb7a9-my-host-quick.json")
    assert m["prefix"] == "vs_c" and m["host"] == "my-host" and m["quick"]
    assert history.parse_name("history.png") == {}


def test_history_records_and_tables(tmp_path):
    recs = history.records_from_json(_pytest_benchmark_json(), "20261125-3ceb7a9-vm.json")
    assert len(recs) == 2
    k = recs[0]
    assert (k["workload"], k["kind"], k["precision"], k["sha"]) == ("W2", "kernel", "double", "3ceb7a9")
    assert k["throughput"] == pytest.approx(300.0)
    assert recs[1]["workload"] == "W1" and recs[1]["kind"] == "cli" and recs[1]["throughput"] is None
    vs = {"kind": "vs_c", "machine": {"datetime": "2026-11-26T10:00:00", "git_sha": "1234567", "host": "vm"},
          "rows": [{"workload": "W2", "precision": "double", "subpaths": 600, "c_s": 3.0, "port_s": 1.5}]}
    (tmp_path / "20261125-3ceb7a9-vm.json").write_text(json.dumps(_pytest_benchmark_json()))
    (tmp_path / "vs_c-20261126-1234567-vm.json").write_text(json.dumps(vs))
    (tmp_path / "20261127-1234567-vm-quick.json").write_text(json.dumps(
        dict(_pytest_benchmark_json(), nbnumba={"quick": True})))
    (tmp_path / "broken.json").write_text("{not json")
    recs = history.load_results(tmp_path)
    kinds = sorted({r["kind"] for r in recs})
    assert kinds == ["cli", "kernel", "vs_c-C", "vs_c-port"]
    assert not any(r["quick"] for r in recs)
    assert len(history.load_results(tmp_path, include_quick=True)) == len(recs) + 2
    md = history.format_tables(recs)
    assert "### W2" in md and "| 20261126 | 1234567 | vm | vs_c-port | double | 1.5000 | 0.00 |" in md
    png = history.plot(recs, tmp_path / "h.png")
    assert png is not None and png.stat().st_size > 0
    assert history.main(["--results", str(tmp_path), "--png", str(tmp_path / "m.png")]) == 0


def test_roofline_row_arithmetic():
    """benchmarks.roofline's derived figures: 2e8 sub-paths in 2 CPU-s at 170
    flops each are 100 Msub/s, 17 GFLOP/s, a quarter of a 68 GFLOP/s peak."""
    from benchmarks import roofline
    assert roofline.FLOPS_PER_SUBPATH == 170
    r = roofline.roofline_row(dict(workload="X", subpaths=200_000_000, cpu_s=2.0), 68.0)
    assert r["msub_per_cpu_s"] == pytest.approx(100.0)
    assert r["gflop_per_cpu_s"] == pytest.approx(17.0)
    assert r["fraction_of_peak"] == pytest.approx(0.25)
    assert r["workload"] == "X"


def test_peak_probe_computes_and_vectorises():
    """The peak probe runs its chains as written: 12 chains from c, each
    a <- a m + c, summed (2 iterations with m = 1/2, c = 1: 12 x 1.75 = 21,
    exact); its code is 12 vector FMAs of the CPU's widest doubles per
    iteration (zmm where numba's target has AVX-512), not scalar ones."""
    from benchmarks import roofline
    from nbnumba.kernels import cpu as K
    fn, width, asm = roofline.compile_peak_probe()
    assert fn(2, 0.5, 1.0) == 21.0
    assert fn(1, 0.5, 1.0) == 18.0
    reg = "zmm" if width == 8 else "ymm"
    fmas = [ln for ln in asm.splitlines() if "vfmadd" in ln]
    assert len(fmas) == roofline.PEAK_CHAINS and all(reg in ln for ln in fmas)
    assert (width == 8) == K.WIDE_VECTORS
    m = roofline.measure_peak(runs=1, iters=10_000)
    assert m["gflops"] > 0 and m["vector_doubles"] == width and m["chains"] == 12


def test_roofline_measures_a_small_workload(tmp_path):
    """measure() on W2 at 64 x 64: its sub-paths are 64^2 pixels x 600 steps
    (4 sub-pixels x 3 wavelengths x 5 phi steps x 10 domains)."""
    from benchmarks import roofline
    m = roofline.measure("W2", 1, 2, str(tmp_path), pixels=64)
    assert m["subpaths"] == 64 * 64 * 600
    assert m["cpu_s"] > 0 and len(m["cpu_s_all"]) == 2


# --------------------------------------------------------------------------- usage errors
# Each bad command line is refused before any timing run: one stderr line, exit 2.
_BAD_ARGV = [
    ("vs_c", ["--workloads", "BOGUS"], "--workloads"),
    ("vs_c", ["--inprocess", "BOGUS"], "--inprocess"),
    ("vs_c", ["--reps", "0"], "--reps"),
    ("vs_c", ["--threads", "0"], "--threads"),
    ("vs_c", ["--budget", "nan"], "--budget"),
    ("vs_c", ["--c-bin", "/nonexistent"], "--c-bin"),
    ("vs_c", ["--out", "/nonexistent-dir/t.md"], "--out"),
    ("vs_c", ["--json", "/"], "--json"),
    ("autodiff_perf", ["--pixels", "-1"], "--pixels"),
    ("autodiff_perf", ["--reps", "0"], "--reps"),
    ("autodiff_perf", ["--extra=-bogus"], "--extra"),
    ("hotspots", ["--region", "0"], "--region"),
    ("hotspots", ["--workload", "BOGUS"], "--workload"),
    ("hotspots", ["--freq", "0"], "--freq"),
    ("roofline", ["--workloads", "BOGUS"], "--workloads"),
    ("roofline", ["--ghz", "nan"], "--ghz"),
    ("roofline", ["--ghz", "0"], "--ghz"),
    ("scaling", ["--sizes", "0"], "--sizes"),
    ("scaling", ["--sizes", "8"], "--sizes"),
    ("scaling", ["--reps", "0"], "--reps"),
    ("history", ["--results", "/nonexistent"], "--results"),
    ("autodiff_peers", ["--peer-python", "/nonexistent"], "--peer-python"),
    ("autodiff_peers", ["--peer-python", "/bin/false", "--modes", "bogus"], "--modes"),
    ("autodiff_peers", ["--peer-python", "/bin/false", "--params", "bogus"], "--params"),
    ("autodiff_peers", ["--peer-python", "/bin/false", "--cell", "0", "1", "1", "90", "90", "90"], "--cell"),
    ("gpu_check", ["--out", "/proc/x"], "--out"),
]


@pytest.mark.parametrize("mod,argv,option", _BAD_ARGV, ids=lambda v: v if isinstance(v, str) else None)
def test_benchmark_usage_errors_are_one_line(mod, argv, option, capsys):
    import importlib
    m = importlib.import_module("benchmarks." + mod)
    rc = m.main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and option in err and "Traceback" not in err, err


def test_gpu_check_out_existing_file(tmp_path, capsys):
    from benchmarks import gpu_check
    f = tmp_path / "f"
    f.write_text("x")
    assert gpu_check.main(["--out", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err


def test_vs_c_checks_c_image():
    import numpy as np
    from benchmarks import vs_c
    from nbnumba.tools._common import ToolError
    args = ["-detpixels", "4"]
    vs_c.check_c_image("/x/nanoBragg", "W1", args, np.ones(16, np.float32))
    for img in (None, np.ones(15, np.float32), np.full(16, np.nan, np.float32)):
        with pytest.raises(ToolError, match="nanoBragg"):
            vs_c.check_c_image("/x/nanoBragg", "W1", args, img)
    with np.errstate(all="raise"):
        bad = np.full(16, np.inf)
        assert np.isnan(vs_c.correlation(bad, np.ones(16)))
        assert np.isnan(vs_c.max_rel_error(np.ones(16), np.full(16, np.nan)))
