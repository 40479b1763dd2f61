"""The device check: everything a GPU machine must show about ``-device cuda``, in one run.

Usage (from the checkout, nothing to install)::

    tools/gpu_check.sh [--out DIR] [--budget-s S] [--no-pytest] [--quick] [--cases A,B]
    PYTHONPATH=. python -m benchmarks.gpu_check [same options]

It imports only numpy, numba, cupy (any ``cupy-cuda1Nx``), torch, h5py,
matplotlib and pytest (no pyyaml, fabio or dask: golden cases are read from
``golden/data/<case>/meta.json``), and writes ``gpu_check.json`` and
``gpu_check.md`` into ``--out`` (default ``gpu_check_out``).  Steps:

1. environment: versions of Python, numpy, numba, CuPy (and its wheel),
   torch; CUDA runtime, driver and NVRTC versions; the device;
2. compile both kernels (NVRTC through CuPy, timed) and report their
   registers, local memory (spills) and max threads per block
   (``RawKernel.attributes``);
3. DLPack/torch round trips (CuPy <-> torch, ``Result.to_torch()``, a torch
   ``out=`` tensor written on a non-default torch stream); the row-chunked
   launch path (one launch and bands of 8 rows give the same bits);
4. throughput: W2 and the Pilatus command (W3) in float32 and float64 (G
   sub-paths/s from CUDA-event kernel time, wall time per image), and the
   fixed cost per image on a 64x64 detector; the longest single launch
   (against the 100 ms launch budget);
5. the golden suite with ``-device cuda`` in float64 and float32: per case,
   pass/fail against the C reference with the corpus tolerances, and the
   GPU parity contract against the numba engine (float64 against float64,
   float32 against ``-precision single``: flipped pixels, max relative error);
6. ``-trace_pixel`` on the device: the golden trace cases traced by the CUDA
   kernel (one-thread trace launch) against the numba trace, line by line;
7. the CUDA adjoint of nbnumba.autodiff (``adjoint_f64``): a small case
   (16x16, mosaic x phi, interpolated F grid; and with sensor layers, the
   -oversample_* switches and -curved_det) against the numba adjoint
   (max relative difference of the values, gradient vector, per-cell sums
   and F-grid gradient, bound ADJOINT_REL), two runs against each other
   (atomicAdd order: cacc and gF may differ in the last bits), the kernel's
   registers, and CUDA-event time against the numba adjoint's wall time on
   a larger case;
8. ``pytest -m gpu tests/test_gpu_source.py tests/test_gpu_adjoint.py``.

``--quick`` shrinks the throughput and chunking workloads to 64x64 windows and
``--cases`` picks golden cases by name (CI runs the script that way against
``nbnumba.testing.fake_cupy``).  Without a GPU (CuPy missing or no device) it writes the report up to the
environment with ``status: no_gpu`` and exits 0.  Exit 1 when a check failed
or a step crashed, 0 otherwise.  Steps stop being started once ``--budget-s``
(default 420 s) is spent; the report marks them ``skipped``.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from nbnumba.testing.parallel import child_env

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "golden"

#: float32 acceptance against the C reference (as tests/test_gpu_source.py
#: holds the float32 kernel against the float64 image)
F32_CORR_MIN = 0.99999
F32_REL_MAX = 1e-3
F32_FLOOR = 1e-3
#: targets from the GPU issue (H100)
#: the CUDA adjoint against the numba adjoint (tests/test_gpu_adjoint.py's bound)
ADJOINT_REL = 1e-9
TARGETS = {"W2_float32_gsps": 150.0, "W2_float64_gsps": 50.0, "fixed_cost_ms": 2.0,
           "W3_image_ms": 50.0}


# ------------------------------------------------------------------ environment
def _version(dist_name: str) -> Optional[str]:
    """The installed distribution's version, None if it is not installed
    (from its metadata: importing torch only to read it took 2 s)."""
    try:
        from importlib import metadata
        return metadata.version(dist_name)
    except Exception:
        return None


def _cupy_wheel() -> Optional[str]:
    try:
        from importlib import metadata
        for dist in metadata.distributions():
            name = (dist.metadata.get("Name") or "").lower()
            if name == "cupy" or name.startswith("cupy-cuda"):
                return "%s %s" % (name, dist.version)
    except Exception:
        pass
    return None


def env_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "numba": _version("numba"), "torch": _version("torch"),
            "cupy": None, "cupy_wheel": _cupy_wheel()}
    try:
        import cupy as cp
        info["cupy"] = cp.__version__
    except Exception as exc:
        info["cupy_error"] = "%s: %s" % (type(exc).__name__, exc)
    return info


def device_info(cp) -> dict:
    rt = cp.cuda.runtime
    dev = rt.getDevice()
    props = rt.getDeviceProperties(dev)
    name = props.get("name", b"?")
    info = {"index": int(dev), "name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": "%d.%d" % (props.get("major", 0), props.get("minor", 0)),
            "multiprocessors": int(props.get("multiProcessorCount", 0)),
            "memory_gib": round(float(props.get("totalGlobalMem", 0)) / 2 ** 30, 1),
            "runtime_version": int(rt.runtimeGetVersion()),
            "driver_version": int(rt.driverGetVersion())}
    try:
        major, minor = cp.cuda.nvrtc.getVersion()
        info["nvrtc_version"] = "%d.%d" % (major, minor)
    except Exception as exc:
        info["nvrtc_version"] = "unknown (%s)" % exc
    return info


# ------------------------------------------------------------------ golden corpus (no yaml)
def golden_defaults() -> Dict[str, float]:
    """The corpus's default tolerances, read from cases.yaml without pyyaml
    (``key: number`` lines of its ``defaults: tolerances:`` block)."""
    tol = {"float_corr_min": 0.99999, "float_max_abs_rel": 1e-5}
    try:
        text = (GOLDEN / "cases.yaml").read_text()
        block = text.split("defaults:", 1)[1].split("cases:", 1)[0]
        for key, val in re.findall(r"^\s+(\w+):\s*([-+0-9.eE]+)\s*$", block, re.M):
            tol[key] = float(val)
    except (OSError, IndexError, ValueError):
        pass
    return tol


def golden_cases() -> List[dict]:
    """[{name, args, inputs, mode}] from golden/data/*/meta.json, by name."""
    out = []
    for meta in sorted((GOLDEN / "data").glob("*/meta.json")):
        with open(meta) as fh:
            m = json.load(fh)
        if (meta.parent / "float.bin").is_file():
            out.append({"name": meta.parent.name, "args": list(m["args"]),
                        "inputs": list(m.get("inputs") or []), "mode": m.get("mode", "default"),
                        "shape": tuple(m["shape"])})
    return out


def _case_config(case: dict, workdir: Path, precision: str):
    from nbnumba.flags import parse_argv
    for fname in case["inputs"]:
        shutil.copy(GOLDEN / "inputs" / fname, workdir / fname)
    argv = case["args"] + (["-c_parity"] if case["mode"] == "c_parity" else [])
    old = os.getcwd()
    os.chdir(str(workdir))
    try:
        cfg = parse_argv(argv)
    finally:
        os.chdir(old)
    return replace(cfg, workdir=str(workdir), precision=precision)


def _rel_above_floor(ref, test, floor):
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    sel = np.abs(ref) > floor * float(np.abs(ref).max() or 1.0)
    if not sel.any():
        return 0.0
    return float((np.abs(test[sel] - ref[sel]) / np.abs(ref[sel])).max())


def run_golden(cp, deadline: float, names: Optional[List[str]] = None) -> dict:
    from nbnumba import api
    from nbnumba.kernels import gpu
    from nbnumba.model import build_model
    from nbnumba.testing.golden import compare_images
    from nbnumba.tools.compare import parity_contract
    tol = golden_defaults()
    rows = []
    cases = golden_cases()
    if names:
        known = {c["name"] for c in cases}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError("unknown golden case(s): %s" % ", ".join(missing))
        cases = [c for c in cases if c["name"] in names]
    for case in cases:
        if time.monotonic() > deadline:
            rows.append({"case": case["name"], "status": "skipped", "reason": "time budget"})
            continue
        c_img = np.fromfile(GOLDEN / "data" / case["name"] / "float.bin", dtype="<f4")
        c_img = c_img.reshape(case["shape"])
        for precision, dt in (("double", np.float64), ("single", np.float32)):
            row = {"case": case["name"], "mode": case["mode"], "precision": str(np.dtype(dt))}
            try:
                with tempfile.TemporaryDirectory(prefix="nbgpu-") as tmp:
                    cfg = _case_config(case, Path(tmp), precision)
                    t0 = time.perf_counter()
                    gm = build_model(cfg)
                    img, _ = gpu.render(gm, dt)
                    g = cp.asnumpy(img)
                    row["gpu_s"] = round(time.perf_counter() - t0, 4)
                    cpu_img, _ = api.render_float(build_model(cfg))
                    cpu_img = np.asarray(cpu_img)
                    iopt = gpu.kernel_args(gm, dt)[0]
                m = compare_images(c_img, g)
                row.update(corr_vs_c=m["corr"], rel_max_vs_c=m["rel_max"])
                if dt is np.float64:
                    ok = m["corr"] >= tol["float_corr_min"] and m["rel_max"] <= tol["float_max_abs_rel"]
                    cpu_ok = True
                else:
                    rel = _rel_above_floor(c_img, g, F32_FLOOR)
                    row["rel_above_floor_vs_c"] = rel
                    ok = m["corr"] >= F32_CORR_MIN and rel <= F32_REL_MAX
                k = parity_contract(cpu_img, g)
                row.update(contract_flipped=k["flipped"], contract_max_rel=k["max_rel_error"],
                           bit_identical_to_cpu=bool(np.array_equal(cpu_img, g)))
                # where the numba kernel takes a fast-math section (its FMAs
                # cannot be reproduced), the ulp distance and its bound
                # (gpu.numba_parity; on the host build: within the bound)
                par = gpu.numba_parity(cpu_img, g, iopt, dt)
                row.update(cpu_fast_math=par["fast_math"], ulp_vs_cpu=par["max_ulp"],
                           allowed_ulp_vs_cpu=par["allowed_ulp"])
                # what the CPU engine itself reaches against C on this case: a GPU
                # failure that the CPU shares is the port's, not the GPU's
                mc = compare_images(c_img, cpu_img)
                row.update(cpu_corr_vs_c=mc["corr"], cpu_rel_max_vs_c=mc["rel_max"])
                if dt is np.float64:
                    cpu_ok = (mc["corr"] >= tol["float_corr_min"]
                              and mc["rel_max"] <= tol["float_max_abs_rel"])
                else:
                    cpu_ok = (mc["corr"] >= F32_CORR_MIN
                              and _rel_above_floor(c_img, cpu_img, F32_FLOOR) <= F32_REL_MAX)
                row["status"] = "pass" if ok else ("fail_cpu_too" if not cpu_ok else "fail")
            except Exception as exc:
                row.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
            rows.append(row)
    summary = {}
    for prec in ("float64", "float32"):
        sel = [r for r in rows if r.get("precision") == prec]
        summary[prec] = {s: sum(1 for r in sel if r["status"] == s)
                         for s in ("pass", "fail", "fail_cpu_too", "error")}
        summary[prec]["flipped_total"] = int(sum(r.get("contract_flipped", 0) for r in sel))
        summary[prec]["bit_identical_cases"] = int(sum(1 for r in sel if r.get("bit_identical_to_cpu")))
        summary[prec]["cpu_fast_math_cases"] = int(sum(1 for r in sel if r.get("cpu_fast_math")))
    return {"tolerances": tol, "float32_tolerances": {"corr_min": F32_CORR_MIN, "rel_max": F32_REL_MAX,
                                                        "floor": F32_FLOOR},
            "rows": rows, "summary": summary,
            "ok": all(r["status"] in ("pass", "fail_cpu_too", "skipped") for r in rows)}


# ------------------------------------------------------------------ trace on the device
def run_trace(cp, deadline: float, names: Optional[List[str]] = None) -> dict:
    """TRACE_PY lines of the CUDA kernel (``-device cuda``) against the numba
    kernel's, for the golden cases that store a trace pixel."""
    from nbnumba import api
    from nbnumba.model import build_model
    from nbnumba.trace import trace_lines
    rows = []
    for case in golden_cases():
        meta = json.loads((GOLDEN / "data" / case["name"] / "meta.json").read_text())
        tp = meta.get("trace_pixel")
        if not tp or (names and case["name"] not in names):
            continue
        if time.monotonic() > deadline:
            rows.append({"case": case["name"], "status": "skipped", "reason": "time budget"})
            continue
        row = {"case": case["name"], "pixel": list(tp)}
        try:
            with tempfile.TemporaryDirectory(prefix="nbgpu-tr-") as tmp:
                cfg = _case_config(case, Path(tmp), "double")
                mc = build_model(cfg)
                api.render_float(mc)
                want = trace_lines(mc, int(tp[0]), int(tp[1]))
                md = build_model(replace(cfg, device="cuda"))
                api.render_float(md, backend="cuda")
                got = trace_lines(md, int(tp[0]), int(tp[1]))
            diff = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
            row.update(lines=len(want), same_count=len(want) == len(got), differing_lines=len(diff),
                       first_difference=[want[diff[0]], got[diff[0]]] if diff else None,
                       status="identical" if (not diff and len(want) == len(got)) else "differs")
        except Exception as exc:
            row.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
        rows.append(row)
    # a difference in a libm-dependent line is allowed by the parity contract;
    # a different number of lines or an error is not
    return {"rows": rows, "ok": all(r["status"] in ("identical", "differs", "skipped")
                                    and r.get("same_count", True) for r in rows)}


# ------------------------------------------------------------------ kernels
def compile_kernels(cp) -> dict:
    from nbnumba.kernels import gpu
    out = {"options": {k: list(v) for k, v in gpu.COMPILE_OPTIONS.items()}}
    for name in ("float64", "float32"):
        t0 = time.perf_counter()
        k = gpu.get_kernel(np.dtype(name), cp)
        attrs = dict(getattr(k, "attributes", {}) or {})
        out[name] = {"entry": gpu.ENTRY_POINTS[name], "compile_s": round(time.perf_counter() - t0, 2),
                     "num_regs": attrs.get("num_regs"), "local_size_bytes": attrs.get("local_size_bytes"),
                     "max_threads_per_block": attrs.get("max_threads_per_block"),
                     "block_used": gpu.block_size(k),
                     "attributes": {a: (int(v) if isinstance(v, (int, np.integer)) else str(v))
                                    for a, v in attrs.items()}}
    return out


# ------------------------------------------------------------------ pytest -m gpu
def run_pytest(timeout: float, out_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/test_gpu_source.py", "tests/test_gpu_adjoint.py", "--junitxml", str(out_dir / "pytest_gpu.xml")]
    env = dict(child_env(os.environ), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True,
                           timeout=max(30.0, timeout))
    except subprocess.TimeoutExpired:
        return {"ok": False, "status": "timeout", "seconds": round(time.perf_counter() - t0, 1)}
    tail = (p.stdout + p.stderr).strip().splitlines()
    counts = {}
    last = tail[-1] if tail else ""
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", last):
        counts[what] = int(n)
    (out_dir / "pytest_gpu.log").write_text(p.stdout + p.stderr)
    return {"ok": p.returncode == 0 and counts.get("passed", 0) > 0, "returncode": p.returncode,
            "counts": counts, "summary_line": last, "seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ the CUDA adjoint
ADJOINT_ARGV = ("-cell 70 80 90 85 95 105 -misset 10 20 30 -lambda 1.5 -distance 100 -nonoise "
                "-nopgm -noprogress -pixel 0.4 -fluence 1e24 -hkl adj.hkl -interpolate -N 5 "
                "-mosaic 0.4 -mosaic_dom 3 -phi 0 -osc 1 -phisteps 2 -polar 0.6 "
                "-beam_vector 1 0 0 -hdivrange 0.3 -hdivsteps 2 -dispersion 1 -dispsteps 2")
#: the keywords whose per-source blocks the adjoint step differentiates (four
#: sources; the vertical range's entry, between them, not needed: the kernel
#: gets a zero block for it)
ADJOINT_SOURCES = {"beam_vector": [0.98, 0.05, -0.03], "hdivrange": [0.3], "dispersion": [1.0]}
#: the same case with sensor layers and the -oversample_* switches (each
#: sub-path weighed by its capture, polarization and solid angle) on a
#: curved detector (every position moved onto the sphere)
ADJOINT_SENSOR = (" -detector_thick 300 -detector_thicksteps 3 -detector_abs 200 -oversample 2"
                  " -oversample_polar -oversample_omega -water 30 -curved_det")


def _adjoint_numba(run, g, want_F):
    """adjoint.backward as nbnumba.autodiff calls it: (values, gpar rows, cacc, gF)."""
    from nbnumba import autodiff as AD
    from nbnumba.api import PARALLEL_KERNEL_LOCK
    from nbnumba.kernels import adjoint as A
    S, F = run.model.shape
    # the forward first, as autodiff runs them (see tests/test_gpu_adjoint.py's
    # _numba: compiled first under pixel_grad's fast-math flags, physics.py's
    # helpers would be cached fast and move the golden step's numba images)
    run.forward()
    nchunk = max(1, min(S, AD.N_CHUNKS))
    gpar = np.zeros((S, A.N_PAR))
    gF = np.zeros((nchunk,) + run.model.Fhkl.shape if want_F else (nchunk, 1, 1, 1))
    # every gradient (the CUDA adjoint computes them all)
    want = A.W_N | A.W_GEO | A.W_POL | (A.W_F if want_F else 0)
    cacc = np.zeros((nchunk, 9, run.rots.shape[0]))
    val = np.zeros((S, F))
    with PARALLEL_KERNEL_LOCK:
        A.kernels_for(*run.args[:2])[1](run.model.active, run.box, g, *run.args, want,
                                        nchunk, gpar, gF, cacc, val, *run.incident_blocks())
    return (val, gpar[:, :A.N_PAR_DEVICE], cacc.sum(axis=0),
            (gF.sum(axis=0) if want_F else None))


def run_adjoint(quick: bool = False) -> dict:
    """adjoint_f64 on the device against the numba adjoint: a 16x16 case for
    the differences, and a 64x64 (quick) or 256x256 one for the time."""
    import cupy as cp
    from nbnumba import autodiff as AD
    from nbnumba.kernels import adjoint as A
    from nbnumba.kernels import gpu
    rng = np.random.default_rng(3)
    out = {"bound": ADJOINT_REL}
    kern = gpu.get_kernel(np.float64, cp, entry=gpu.ADJOINT_ENTRY_POINT)
    attrs = dict(getattr(kern, "attributes", {}) or {})
    out["kernel"] = {"entry": gpu.ADJOINT_ENTRY_POINT, "num_regs": attrs.get("num_regs"),
                     "local_size_bytes": attrs.get("local_size_bytes"),
                     "max_threads_per_block": attrs.get("max_threads_per_block"),
                     "block_used": gpu.block_size(kern)}
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="nbgpu-adj-") as tmp:
        lines = ["%d %d %d %.3f" % (h, k, l, 20.0 + 180.0 * rng.random())
                 for h in range(-6, 7) for k in range(-6, 7) for l in range(-6, 7)]
        Path(tmp, "adj.hkl").write_text("\n".join(lines) + "\n")
        os.chdir(tmp)
        try:
            def run_for(pixels, extra=""):
                argv = (ADJOINT_ARGV + extra + " -detpixels %d" % pixels).split()
                vals = {k: np.array(v, dtype=np.float64) for k, v in ADJOINT_SOURCES.items()}
                return AD._Run(argv, vals, ("F_hkl",) + tuple(vals), None)

            def on_device(r, args, g):
                return gpu.adjoint(args, r.model.active, g, True,
                                   dinc=r.incident_blocks(dense=True)[0])

            run = run_for(16)
            g = rng.standard_normal(run.model.shape)
            ref = _adjoint_numba(run, g, True)
            args = gpu.layout_args(run.args, np.float64)
            got = [[cp.asnumpy(x) for x in on_device(run, args, g)] for _ in range(2)]
            val, gpar, cacc, gF = got[0]

            def rel(a, b):
                s = float(np.abs(b).max())
                return float(np.abs(a - b).max() / (s if s > 0 else 1.0))

            scale = np.abs(ref[1]).sum(axis=0)
            diff = {"values": rel(val, ref[0]),
                    "gpar": float(np.max(np.abs(gpar - ref[1].sum(axis=0))
                                         / np.where(scale > 0, scale, 1.0))),
                    "cacc": rel(cacc, ref[2]), "gF": rel(gF, ref[3]),
                    "forward_values": rel(cp.asnumpy(gpu.adjoint(args, run.model.active)[0]),
                                          run.forward())}
            out["max_rel_vs_numba"] = diff
            # the sensor layers, the switches and the curved detector, 16x16
            srun = run_for(16, ADJOINT_SENSOR)
            sg = rng.standard_normal(srun.model.shape)
            sref = _adjoint_numba(srun, sg, True)
            sargs = gpu.layout_args(srun.args, np.float64)
            sval, sgpar, scacc, sgF = [cp.asnumpy(x) for x in on_device(srun, sargs, sg)]
            sscale = np.abs(sref[1]).sum(axis=0)
            out["max_rel_vs_numba_sensor"] = {
                "values": rel(sval, sref[0]),
                "gpar": float(np.max(np.abs(sgpar - sref[1].sum(axis=0))
                                     / np.where(sscale > 0, sscale, 1.0))),
                "cacc": rel(scacc, sref[2]), "gF": rel(sgF, sref[3])}
            src = slice(A.P_BEAM, A.P_DISP + 1)
            out["per_source_entries"] = [float(x) for x in ref[1].sum(axis=0)[src]]
            out["run_to_run"] = {name: rel(a, b) for name, a, b in
                                 zip(("values", "gpar", "cacc", "gF"), got[0], got[1])}
            # time: CUDA events for the kernel, wall for the whole call (uploads,
            # reductions, copies back), the numba adjoint's wall on the same case
            big = run_for(64 if quick else 256)
            gb = rng.standard_normal(big.model.shape)
            bargs = gpu.layout_args(big.args, np.float64)
            on_device(big, bargs, gb)                              # warm-up
            dinc = big.incident_blocks(dense=True)[0]
            timing = {}
            t0 = time.perf_counter()
            res = gpu.adjoint(bargs, big.model.active, gb, True, timing=timing, dinc=dinc)
            cp.asnumpy(res[1])
            wall = time.perf_counter() - t0
            _adjoint_numba(big, gb, True)                          # compile / warm
            t0 = time.perf_counter()
            _adjoint_numba(big, gb, True)
            numba_wall = time.perf_counter() - t0
            S, F = big.model.shape
            out["timing"] = {"pixels": "%dx%d" % (S, F), "kernel_ms": round(timing["kernel_ms"], 3),
                             "launches": timing["launches"], "wall_ms": round(1e3 * wall, 3),
                             "numba_wall_ms": round(1e3 * numba_wall, 3),
                             "numba_threads": int(__import__("numba").get_num_threads())}
        finally:
            os.chdir(old)
    out["ok"] = all(v <= ADJOINT_REL for key in ("max_rel_vs_numba", "max_rel_vs_numba_sensor")
                    for v in out[key].values())
    return out


# ------------------------------------------------------------------ DLPack / torch
def run_interop(cp) -> dict:
    import nbnumba
    from nbnumba import api
    from nbnumba.flags import parse_argv
    from nbnumba.kernels import gpu
    from nbnumba.model import build_model
    res = {}
    import torch
    if not torch.cuda.is_available():
        return {"ok": False, "status": "torch has no CUDA"}
    a = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    t = torch.from_dlpack(a)
    b = cp.from_dlpack(t)
    t[1, 1] = -1.0
    cp.cuda.get_current_stream().synchronize()
    res["cupy_torch_cupy_shared"] = bool(t.data_ptr() == a.data.ptr == b.data.ptr
                                         and float(a[1, 1]) == -1.0)
    argv = ("-cell 70 80 90 90 90 90 -misset 10 20 30 -lambda 1.5 -distance 100 -default_F 100 "
            "-N 5 -detpixels 64 -pixel 0.4 -nonoise -nopgm -noprogress -device cuda").split()
    r = nbnumba.simulate_argv(argv)
    tt = r.to_torch()
    res["result_to_torch_zero_copy"] = bool(tt.device.type == "cuda"
                                            and tt.data_ptr() == r.float_image.data.ptr)
    # torch out= on a side stream: the render must be ordered on that stream
    cfg = parse_argv(argv[:-2])
    ref, _ = api.render_float(build_model(cfg), np.float64)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = torch.full(tuple(ref.shape), float("nan"), dtype=torch.float32, device="cuda")
        gpu.render(build_model(cfg), np.float64, out=out)
        total = out.sum()           # queued on the same stream, after the render
    side.synchronize()
    got = out.cpu().numpy()
    tol = np.abs(ref) * 2.0 ** -23 + 1e-9 * float(np.abs(ref).max())
    res["torch_out_on_side_stream"] = bool(np.all(np.abs(got - ref) <= tol)
                                           and np.isfinite(float(total)))
    res["ok"] = all(v for k, v in res.items())
    return res


# ------------------------------------------------------------------ chunked launches
#: detector of the quick (CI) workloads
QUICK_PIXELS = 64


def run_chunking(quick: bool = False) -> dict:
    """The row-chunked launch path on the device: W2 (128x128 window; 64x64
    with ``quick``) rendered in one launch and in bands of 8 rows must give
    the same bits."""
    from benchmarks import workloads as W
    from nbnumba.kernels import gpu
    import cupy as cp
    out = {}
    with tempfile.TemporaryDirectory(prefix="nbgpu-ch-") as tmp:
        model = _model(W.argv("W2", tmp, pixels=QUICK_PIXELS if quick else 128), Path(tmp))
        S, F = model.shape
        per_pixel = gpu.subpaths_per_pixel(gpu.kernel_args(model, np.float64)[0])
        old = os.environ.get("NB_CUDA_SUBPATHS_PER_LAUNCH")
        try:
            for label, cap in (("one_launch", S * F * per_pixel), ("bands_of_8_rows", 8 * F * per_pixel)):
                os.environ["NB_CUDA_SUBPATHS_PER_LAUNCH"] = str(cap)
                for dt in (np.float64, np.float32):
                    timing = {}
                    img, _ = gpu.render(model, dt, timing=timing)
                    out.setdefault(np.dtype(dt).name, {})[label] = (cp.asnumpy(img), timing["launches"])
        finally:
            if old is None:
                os.environ.pop("NB_CUDA_SUBPATHS_PER_LAUNCH", None)
            else:
                os.environ["NB_CUDA_SUBPATHS_PER_LAUNCH"] = old
    res = {}
    for name, d in out.items():
        (a, na), (b, nb) = d["one_launch"], d["bands_of_8_rows"]
        res[name] = {"launches": [na, nb], "identical": bool(np.array_equal(a, b))}
    res["ok"] = all(v["identical"] and v["launches"][0] == 1 and v["launches"][1] > 1
                    for k, v in res.items() if isinstance(v, dict))
    return res


# ------------------------------------------------------------------ throughput
def _model(args, workdir):
    from benchmarks.workloads import build_model_for
    return build_model_for(args, workdir)


def _time_render(model, dt, repeats: int) -> dict:
    import cupy as cp
    from nbnumba.kernels import gpu
    gpu.render(model, dt)                       # warm-up (allocations, module load)
    cp.cuda.Device().synchronize()
    kern, wall, longest = [], [], []
    for _ in range(repeats):
        timing = {}
        t0 = time.perf_counter()
        gpu.render(model, dt, timing=timing)
        cp.cuda.Device().synchronize()
        wall.append(time.perf_counter() - t0)
        kern.append(timing["kernel_ms"])
        longest.append(timing["max_launch_ms"])
    subpaths = int(model.active.sum()) * int(model.nsteps)
    kms = float(np.median(kern))
    return {"subpaths": subpaths, "kernel_ms": round(kms, 3), "wall_ms": round(1e3 * float(np.median(wall)), 3),
            "gsps": float("%.4g" % (subpaths / (kms * 1e-3) / 1e9)) if kms > 0 else None,
            "launches": timing.get("launches"), "max_launch_ms": round(max(longest), 3),
            "block": timing.get("block"), "repeats": repeats}


def run_throughput(deadline: float, quick: bool = False) -> dict:
    from benchmarks import workloads as W
    out = {"rows": []}
    with tempfile.TemporaryDirectory(prefix="nbgpu-tp-") as tmp:
        tmp = Path(tmp)
        for name in ("W2", "W3"):
            args = W.argv(name, tmp, pixels=QUICK_PIXELS) if quick else W.argv(name, tmp, quick=False)
            model = _model(args, tmp)
            for dt in (np.float32, np.float64):
                if time.monotonic() > deadline:
                    out["rows"].append({"workload": name, "precision": np.dtype(dt).name,
                                        "status": "skipped", "reason": "time budget"})
                    continue
                row = {"workload": name, "precision": np.dtype(dt).name,
                       "pixels": "%dx%d" % (model.shape[1], model.shape[0])}
                if name == "W3":
                    row["w3_data"] = W.w3_data_source()
                try:
                    row.update(_time_render(model, dt, 1 if quick else 3))
                    row["status"] = "ok"
                except Exception as exc:
                    row.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
                out["rows"].append(row)
        # fixed cost per image: a 64x64 detector, one sub-path per pixel
        small = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
                 "-detpixels 64 -nonoise -nopgm -noprogress").split()
        fixed = {}
        try:
            import nbnumba
            from nbnumba.kernels import gpu
            import cupy as cp
            model = _model(small, tmp)
            for dt in (np.float32, np.float64):
                r = _time_render(model, dt, 3 if quick else 20)
                fixed[np.dtype(dt).name] = {"render_wall_ms": r["wall_ms"], "kernel_ms": r["kernel_ms"]}
            t = []
            for _ in range(2 if quick else 10):
                t0 = time.perf_counter()
                nbnumba.simulate_argv(small + ["-device", "cuda"])
                cp.cuda.Device().synchronize()
                t.append(time.perf_counter() - t0)
            fixed["simulate_wall_ms"] = round(1e3 * float(np.median(t)), 3)
            fixed["status"] = "ok"
        except Exception as exc:
            fixed.update(status="error", error="%s: %s" % (type(exc).__name__, exc))
        out["fixed_cost_64x64"] = fixed
    rows = {(r["workload"], r["precision"]): r for r in out["rows"]}
    checks = {}
    for prec, key in (("float32", "W2_float32_gsps"), ("float64", "W2_float64_gsps")):
        g = rows.get(("W2", prec), {}).get("gsps")
        checks[key] = {"value": g, "target": TARGETS[key], "met": bool(g is not None and g >= TARGETS[key])}
    w3 = [rows.get(("W3", p), {}).get("wall_ms") for p in ("float32", "float64")]
    w3 = [v for v in w3 if v is not None]
    checks["W3_image_ms"] = {"value": min(w3) if w3 else None, "target": TARGETS["W3_image_ms"],
                             "met": bool(w3 and min(w3) <= TARGETS["W3_image_ms"])}
    fc = fixed.get("float32", {}).get("render_wall_ms")
    checks["fixed_cost_ms"] = {"value": fc, "target": TARGETS["fixed_cost_ms"],
                               "met": bool(fc is not None and fc <= TARGETS["fixed_cost_ms"])}
    longest = [r.get("max_launch_ms") for r in out["rows"] if r.get("max_launch_ms") is not None]
    from nbnumba.kernels import gpu
    checks["max_launch_ms"] = {"value": max(longest) if longest else None,
                               "target": 1e3 * gpu.LAUNCH_BUDGET_S,
                               "met": bool(longest and max(longest) <= 1e3 * gpu.LAUNCH_BUDGET_S)}
    out["targets"] = checks
    out["ok"] = all(r.get("status") in ("ok", "skipped") for r in out["rows"]) and fixed.get("status") == "ok"
    return out


# ------------------------------------------------------------------ report
def _md(report: dict) -> str:
    L = ["# nbnumba GPU check", ""]
    dev = report.get("device") or {}
    L.append("* status: **%s**" % report["status"])
    if report.get("reason"):
        L.append("* reason: %s" % report["reason"])
    if dev:
        L.append("* device: %s (cc %s, %s SMs, %s GiB), CUDA runtime %s, driver %s, NVRTC %s"
                 % (dev.get("name"), dev.get("compute_capability"), dev.get("multiprocessors"),
                    dev.get("memory_gib"), dev.get("runtime_version"), dev.get("driver_version"),
                    dev.get("nvrtc_version")))
    env = report.get("env", {})
    L.append("* python %s, numpy %s, numba %s, cupy %s (%s), torch %s"
             % (env.get("python"), env.get("numpy"), env.get("numba"), env.get("cupy"),
                env.get("cupy_wheel"), env.get("torch")))
    L.append("* wall time: %.1f s" % report.get("seconds", 0.0))
    steps = report.get("steps", {})
    comp = steps.get("compile")
    if isinstance(comp, dict) and "float64" in comp:
        L += ["", "## Kernels", "", "| kernel | compile s | registers | local bytes | max threads/block | block used |",
              "|---|---|---|---|---|---|"]
        for name in ("float64", "float32"):
            c = comp[name]
            L.append("| %s | %s | %s | %s | %s | %s |" % (c["entry"], c["compile_s"], c["num_regs"],
                                                         c["local_size_bytes"], c["max_threads_per_block"],
                                                         c["block_used"]))
    tr = steps.get("trace")
    if isinstance(tr, dict) and "rows" in tr:
        L += ["", "## -trace_pixel on the device", "", "| case | pixel | status | lines | differing lines |",
              "|---|---|---|---|---|"]
        for r in tr["rows"]:
            L.append("| %s | %s | %s | %s | %s |" % (r["case"], r.get("pixel", ""), r["status"],
                                                   r.get("lines", ""), r.get("differing_lines", "")))
    gold = steps.get("golden")
    if isinstance(gold, dict) and "rows" in gold:
        L += ["", "## Golden suite on the GPU", "",
              "Summary: %s" % json.dumps(gold["summary"]), "",
              "| case | precision | status | corr vs C | rel max vs C | flipped vs CPU | max rel vs CPU | bit-identical to CPU | CPU fast-math | ulp vs CPU (bound) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in gold["rows"]:
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["case"], r.get("precision", ""), r["status"], _g(r.get("corr_vs_c")),
                _g(r.get("rel_max_vs_c")), r.get("contract_flipped", ""), _g(r.get("contract_max_rel")),
                r.get("bit_identical_to_cpu", ""), r.get("cpu_fast_math", ""),
                "%s (%s)" % (r["ulp_vs_cpu"], r["allowed_ulp_vs_cpu"]) if "ulp_vs_cpu" in r else ""))
    adj = steps.get("adjoint")
    if isinstance(adj, dict) and "max_rel_vs_numba" in adj:
        L += ["", "## CUDA adjoint (nbnumba.autodiff)", "",
              "* max relative difference vs the numba adjoint (bound %g): `%s`"
              % (adj["bound"], json.dumps(adj["max_rel_vs_numba"])),
              "* the same with sensor layers, the switches and -curved_det: `%s`"
              % json.dumps(adj.get("max_rel_vs_numba_sensor")),
              "* run to run (atomicAdd order): `%s`" % json.dumps(adj["run_to_run"]),
              "* kernel: `%s`" % json.dumps(adj["kernel"]),
              "* time: `%s`" % json.dumps(adj.get("timing"))]
    py = steps.get("pytest_gpu")
    if isinstance(py, dict):
        L += ["", "## pytest -m gpu", "", "`%s` (ok: %s)" % (py.get("summary_line", py.get("status")), py.get("ok"))]
    ch = steps.get("chunking")
    if isinstance(ch, dict):
        L += ["", "## Row-chunked launches", ""] + ["* %s: %s" % (k, v) for k, v in ch.items()]
    inter = steps.get("interop")
    if isinstance(inter, dict):
        L += ["", "## DLPack / torch", ""] + ["* %s: %s" % (k, v) for k, v in inter.items()]
    tp = steps.get("throughput")
    if isinstance(tp, dict) and "rows" in tp:
        L += ["", "## Throughput", "", "| workload | precision | pixels | sub-paths | kernel ms (CUDA events) | wall ms/image | G sub-paths/s | launches | longest launch ms |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in tp["rows"]:
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                r["workload"], r["precision"], r.get("pixels", ""), r.get("subpaths", ""),
                r.get("kernel_ms", r.get("status")), r.get("wall_ms", ""), r.get("gsps", ""),
                r.get("launches", ""), r.get("max_launch_ms", "")))
        L += ["", "Fixed cost per image (64x64): `%s`" % json.dumps(tp.get("fixed_cost_64x64")), "",
              "Targets: `%s`" % json.dumps(tp.get("targets"))]
    for name, st in steps.items():
        if isinstance(st, dict) and st.get("status") in ("error", "skipped") and "rows" not in st:
            L.append("")
            L.append("* step %s: %s %s" % (name, st.get("status"), st.get("error", st.get("reason", ""))))
    return "\n".join(L) + "\n"


def _g(v):
    return "" if v is None else ("%.6g" % v if isinstance(v, float) else str(v))


def _write(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    report["third_party_imported"] = sorted(
        {m.split(".")[0] for m in sys.modules if "." not in m and m not in sys.stdlib_module_names
         and m.split(".")[0] not in ("nbnumba", "benchmarks", "tests", "__main__", "_distutils_hack")
         and not m.startswith("_")})
    from benchmarks import _cli
    _cli.write_text(out_dir / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    _cli.write_text(out_dir / "gpu_check.md", _md(report))


def _step(report: dict, name: str, fn, *args):
    t0 = time.perf_counter()
    try:
        res = fn(*args)
    except Exception as exc:
        res = {"ok": False, "status": "error", "error": "%s: %s" % (type(exc).__name__, exc),
               "traceback": traceback.format_exc(limit=6)}
    res.setdefault("seconds", round(time.perf_counter() - t0, 1))
    report["steps"][name] = res
    print("gpu_check: %-10s %s (%.1f s)" % (name, "ok" if res.get("ok", True) else "FAILED",
                                            res["seconds"]), flush=True)
    return res


def _out_dir(path: str) -> Path:
    """The report folder, created now (before any step runs): a usage error
    naming --out when it cannot be."""
    from benchmarks import _cli
    out_dir = Path(path)
    if not path:
        raise _cli.usage_error("argument --out: empty path")
    if out_dir.exists() and not out_dir.is_dir():
        raise _cli.usage_error("argument --out: %s exists and is not a folder" % path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cli.usage_error("argument --out: cannot create %s: %s" % (path, exc.strerror or exc)) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise _cli.usage_error("argument --out: %s: Permission denied" % path)
    return out_dir


def main(argv=None) -> int:
    from benchmarks import _cli
    return _cli.guarded_main("gpu_check", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    from benchmarks import _cli
    p = _cli.UsageParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check_out", help="report folder (gpu_check_out)")
    p.add_argument("--budget-s", type=_cli.positive_float, default=420.0,
                   help="stop starting steps after this many seconds (420)")
    p.add_argument("--no-pytest", action="store_true", help="skip pytest -m gpu")
    p.add_argument("--quick", action="store_true", help="64x64 throughput/chunking workloads, fewer repeats")
    p.add_argument("--cases", default=None, help="comma-separated golden case names (default: all)")
    opts = p.parse_args(argv)
    out_dir = _out_dir(opts.out)
    t_start = time.monotonic()
    deadline = t_start + opts.budget_s
    report = {"tool": "benchmarks.gpu_check", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "env": env_info(), "steps": {}}
    from nbnumba.kernels import gpu
    if not gpu.available():
        reason = report["env"].get("cupy_error") or "CuPy imports but no CUDA device is visible"
        report.update(status="no_gpu", reason="no GPU: " + reason, seconds=time.monotonic() - t_start)
        _write(report, out_dir)
        print("gpu_check: no GPU (%s); report in %s" % (reason, out_dir.resolve()), flush=True)
        return 0
    import cupy as cp
    report["device"] = device_info(cp)
    print("gpu_check: %s" % json.dumps(report["device"]), flush=True)
    _step(report, "compile", compile_kernels, cp)
    _step(report, "interop", run_interop, cp)
    _step(report, "chunking", run_chunking, opts.quick)
    _step(report, "adjoint", run_adjoint, opts.quick)
    report["quick"] = bool(opts.quick)
    _step(report, "throughput", run_throughput, t_start + 0.75 * opts.budget_s, opts.quick)
    names = [n for n in (opts.cases or "").split(",") if n]
    _step(report, "golden", run_golden, cp, t_start + 0.75 * opts.budget_s, names or None)
    _step(report, "trace", run_trace, cp, t_start + 0.8 * opts.budget_s, names or None)
    if opts.no_pytest:
        report["steps"]["pytest_gpu"] = {"status": "skipped", "reason": "--no-pytest", "ok": True}
    elif time.monotonic() < deadline:
        _step(report, "pytest_gpu", run_pytest, deadline - time.monotonic() + 60.0, out_dir)
    else:
        report["steps"]["pytest_gpu"] = {"status": "skipped", "reason": "time budget", "ok": False}
    ok = all(st.get("ok", True) for st in report["steps"].values())
    report.update(status="ok" if ok else "failed", seconds=time.monotonic() - t_start)
    _write(report, out_dir)
    print("gpu_check: %s; report in %s" % (report["status"], out_dir.resolve()), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
