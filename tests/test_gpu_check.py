"""benchmarks/gpu_check.py, the device check, on a machine without a GPU.

* Without CuPy it writes a "no GPU" report and exits 0, and it gets there
  without pyyaml, fabio, dask or tqdm (the GPU machine has none of them).
* Run against nbnumba.testing.fake_cupy (the kernel source built as host C++),
  every step it would run on a GPU runs here: compile/attributes, golden cases
  in float64 and float32 (bit-identical to the numba engine through the host
  build), throughput rows and the fixed cost, and both reports.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check
from nbnumba.kernels import gpu

REPO = Path(__file__).resolve().parents[1]

BLOCKER = r"""
import importlib.abc, runpy, sys
BLOCKED = ("cupy", "yaml", "fabio", "dask", "distributed", "tqdm")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked by the test: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_check"] + sys.argv[1:]
runpy.run_module("benchmarks.gpu_check", run_name="__main__")
"""


def test_no_gpu_report_and_exit_0(tmp_path):
    out = tmp_path / "report"
    # a relative --out, from another folder: the last line names the folder in full
    p = subprocess.run([sys.executable, "-c", BLOCKER, "--out", "report"], cwd=str(tmp_path),
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no GPU" in p.stdout
    assert p.stdout.rstrip().endswith("; report in %s" % out.resolve()), p.stdout
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["status"] == "no_gpu" and rep["reason"].startswith("no GPU")
    assert rep["steps"] == {}
    assert rep["env"]["numpy"] == np.__version__ and rep["env"]["cupy"] is None
    assert not {"yaml", "fabio", "dask", "tqdm"} & set(rep["third_party_imported"])
    md = (out / "gpu_check.md").read_text()
    assert "status: **no_gpu**" in md and "no GPU" in md


def test_golden_defaults_without_yaml_match_yaml():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((REPO / "golden" / "cases.yaml").read_text())
    want = {k: float(v) for k, v in doc["defaults"]["tolerances"].items()}
    assert gpu_check.golden_defaults() == want
    from nbnumba.testing import golden
    ref = golden.load_cases()          # the yaml reader of the test suite
    cases = gpu_check.golden_cases()
    assert len(cases) == len(ref) >= 40
    by_name = {c["name"]: c for c in cases}
    for case in ref:
        c = by_name[case.name]
        assert c["args"] == list(case.args)
        assert c["mode"] == case.mode and c["inputs"] == list(case.inputs)


CASES = "binary_spots,phi_zero_carryover,hkl_interpolate_out_of_range,mosaic_domains_seed"


@pytest.mark.slow
def test_gpu_check_through_fake_cupy(tmp_path, monkeypatch, host_build):
    from nbnumba.testing.fake_cupy import make_fake_cupy
    host = gpu.HostKernel(host_build[0])
    fake = make_fake_cupy(host)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_MODULES", {})
    monkeypatch.setenv("NB_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    rc = gpu_check.main(["--out", str(out), "--quick", "--no-pytest", "--cases", CASES])
    rep = json.loads((out / "gpu_check.json").read_text())
    steps = rep["steps"]
    # torch here has no CUDA: the interop step says so and fails; all else passes
    assert steps["interop"] == {"ok": False, "status": "torch has no CUDA", "seconds": steps["interop"]["seconds"]}
    assert rc == 1 and rep["status"] == "failed"
    assert rep["device"]["name"].startswith("fake CUDA device")
    comp = steps["compile"]
    assert comp["float64"]["entry"] == "render_f64" and comp["float32"]["entry"] == "render_f32"
    assert comp["options"]["float64"] == list(gpu.COMPILE_OPTIONS["float64"])
    assert comp["float64"]["block_used"] == gpu.BLOCK
    gold = steps["golden"]
    assert gold["ok"] is True
    assert len(gold["rows"]) == 2 * len(CASES.split(","))
    for r in gold["rows"]:
        # the host build performs the numba engine's operations: identical
        # images, except where the numba kernel takes a fast-math section
        # (gpu.numba_fast_math): then within gpu.FAST_MAX_ULP
        assert r["status"] == "pass", r
        assert r["contract_flipped"] == 0, r
        assert r["bit_identical_to_cpu"] is (r["ulp_vs_cpu"] == 0), r
        if r["cpu_fast_math"]:
            assert r["ulp_vs_cpu"] <= r["allowed_ulp_vs_cpu"] == gpu.FAST_MAX_ULP[r["precision"]], r
        else:
            assert r["bit_identical_to_cpu"] is True and r["allowed_ulp_vs_cpu"] == 0, r
    # -c_parity float64 (phi_zero_carryover, hkl_interpolate_out_of_range, binary_spots:
    # docs/quirks.md #16, mosaic_domains_seed: #29) is strict
    strict = [r for r in gold["rows"] if r["mode"] == "c_parity" and r["precision"] == "float64"]
    assert len(strict) == 4 and all(not r["cpu_fast_math"] and r["bit_identical_to_cpu"] for r in strict)
    assert gold["summary"]["float64"]["pass"] == gold["summary"]["float32"]["pass"] == 4
    tp = steps["throughput"]
    assert tp["ok"] is True
    assert [(r["workload"], r["precision"]) for r in tp["rows"]] == [
        ("W2", "float32"), ("W2", "float64"), ("W3", "float32"), ("W3", "float64")]
    for r in tp["rows"]:
        assert r["status"] == "ok" and r["pixels"] == "64x64", r
        assert r["subpaths"] > 0 and r["kernel_ms"] > 0 and r["gsps"] > 0 and r["launches"] >= 1
        assert 0 < r["max_launch_ms"] <= r["kernel_ms"] + 1e-9
    w2 = tp["rows"][0]
    assert w2["subpaths"] == 64 * 64 * 600
    assert tp["fixed_cost_64x64"]["status"] == "ok"
    assert tp["fixed_cost_64x64"]["float32"]["render_wall_ms"] > 0
    assert set(tp["targets"]) == {"W2_float32_gsps", "W2_float64_gsps", "fixed_cost_ms", "W3_image_ms",
                                  "max_launch_ms"}
    ch = steps["chunking"]
    assert ch["ok"] is True
    for name in ("float64", "float32"):
        assert ch[name]["identical"] is True and ch[name]["launches"] == [1, 8]
    assert tp["targets"]["max_launch_ms"]["value"] > 0
    adj = steps["adjoint"]
    assert adj["ok"] is True and adj["bound"] == gpu_check.ADJOINT_REL
    assert adj["kernel"]["entry"] == gpu.ADJOINT_ENTRY_POINT
    assert set(adj["max_rel_vs_numba"]) == {"values", "gpar", "cacc", "gF", "forward_values"}
    assert all(0.0 <= v <= gpu_check.ADJOINT_REL for v in adj["max_rel_vs_numba"].values())
    # the sensor layers, the switches and the curved detector
    assert set(adj["max_rel_vs_numba_sensor"]) == {"values", "gpar", "cacc", "gF"}
    assert all(0.0 <= v <= gpu_check.ADJOINT_REL
               for v in adj["max_rel_vs_numba_sensor"].values())
    # the per-source entries (P_BEAM..P_DISP) compared: the beam's three, the
    # horizontal range's and the dispersion's nonzero, the vertical range's
    # (not requested: a zero block) 0
    per = adj["per_source_entries"]
    assert len(per) == 6 and all(per[i] != 0.0 for i in (0, 1, 2, 3, 5)) and per[4] == 0.0
    # the host build adds in pixel order: two runs are identical
    assert adj["run_to_run"] == {"values": 0.0, "gpar": 0.0, "cacc": 0.0, "gF": 0.0}
    assert adj["timing"]["pixels"] == "64x64" and adj["timing"]["kernel_ms"] > 0
    assert adj["timing"]["numba_wall_ms"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "## CUDA adjoint" in md and "the same with sensor layers, the switches and -curved_det" in md
    tr = steps["trace"]
    assert tr["ok"] is True
    # of CASES, phi_zero_carryover and mosaic_domains_seed store a trace pixel
    assert sorted(r["case"] for r in tr["rows"]) == ["mosaic_domains_seed", "phi_zero_carryover"]
    assert all(r["status"] == "identical" and r["lines"] > 20 for r in tr["rows"]), tr
    assert steps["pytest_gpu"]["status"] == "skipped"
    md = (out / "gpu_check.md").read_text()
    for head in ("## Kernels", "## Golden suite on the GPU", "## Throughput", "## DLPack / torch",
                 "## -trace_pixel on the device", "## Row-chunked launches"):
        assert head in md
    assert "| binary_spots | float64 | pass |" in md
