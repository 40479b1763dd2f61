"""Compile once: after one pass over twenty varied command lines, a second
pass compiles nothing (numba's dispatchers report no new signatures and no
cache misses, and no compile event fires), and the image kernel has one
compiled signature per variant for both precisions (the trace, -trace_pixel,
has a second copy of the pixel function, compiled once by the first trace run).
Runs use numba here, not the start-up library (tests/test_startup_library.py).

Checks counts, not wall time."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from numba.core import event as ev

import nbnumba
from nbnumba import jitcache
from nbnumba.kernels import cpu as K
from nbnumba.testing import golden as G

CELL = "-cell 70 80 90 90 90 90 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.5"
DET = "-distance 100 -detpixels 8 -pixel 0.4 -seed 1 -nopgm"
MAT = "-mat cellA.mat -hkl cellA.hkl -lambda 1.5 " + DET

LINES = [
    CELL + " " + DET + " -nonoise",
    CELL + " " + DET,                                           # noise image
    CELL + " " + DET + " -nonoise -precision single",
    CELL + " " + DET + " -nonoise -c_parity",
    CELL + " " + DET + " -nonoise -c_parity -precision single",
    MAT + " -N 5 -nointerpolate -nonoise",
    MAT + " -N 2 -interpolate -nonoise",
    MAT + " -N 2 -interpolate -nonoise -c_parity",
    CELL + " " + DET + " -nonoise -mosaic 0.5 -mosaic_dom 3 -mosaic_seed 4",
    CELL + " " + DET + " -nonoise -round_xtal -fudge 1.5",
    CELL + " " + DET + " -nonoise -gauss_xtal",
    CELL + " " + DET + " -nonoise -tophat_spots",
    CELL + " " + DET + " -nonoise -hdivrange 0.5 -vdivrange 0.3 -hdivsteps 2 -vdivsteps 2 "
    "-dispersion 0.1 -dispsteps 2",
    CELL + " " + DET + " -nonoise -sourcefile sources.txt",
    CELL + " " + DET + " -nonoise -oversample 2 -oversample_thick -detector_absorb 320 "
    "-detector_thick 100 -detector_thicksteps 2",
    CELL + " " + DET + " -nonoise -oversample 2 -oversample_polar -oversample_omega -polar 0.9",
    CELL + " " + DET + " -nonoise -roi 1 5 2 6 -phi 0 -osc 1 -phisteps 3",
    CELL + " -nonoise -nopgm -seed 1 -mask mask.img",
    CELL + " " + DET + " -nonoise -curved_det -water 50 -trace_pixel 3 4",
    CELL + " " + DET + " -nonoise -point_pixel -c_parity -trace_pixel 3 4 -precision single",
]


@pytest.fixture(autouse=True)
def _numba_kernels(monkeypatch):
    """These tests are about numba's dispatchers: runs here use the JIT even
    where a start-up library (kernels.native) is installed."""
    monkeypatch.setenv("NBNUMBA_AOT", "0")


def _pass(work):
    out = []
    for line in LINES:
        res = nbnumba.simulate_argv(line.split(), cwd=str(work))
        out.append(np.array(res.float_image, copy=True))
    return out


def test_second_pass_compiles_nothing(tmp_path):
    for name in ("cellA.mat", "cellA.hkl", "sources.txt", "mask.img"):
        shutil.copyfile(G.inputs_dir() / name, tmp_path / name)
    first = _pass(tmp_path)                 # compiles, or loads from the cache
    assert len(LINES) == 20
    assert all(np.isfinite(img).all() and img.max() > 0 for img in first)
    before = jitcache.compile_counts()
    rec = ev.RecordingListener()
    with ev.install_listener("numba:compile", rec):
        second = _pass(tmp_path)
    after = jitcache.compile_counts()
    compiled = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in rec.buffer})
    assert compiled == [], "second pass compiled %s" % compiled
    changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    assert changed == {}, "signatures / cache misses changed: %s" % changed
    # the listener does see compilations
    from numba import njit
    probe = ev.RecordingListener()
    with ev.install_listener("numba:compile", probe):
        njit(lambda x: x + 1)(1)
    assert probe.buffer
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    # one signature of each image loop for every mode and both precisions (the
    # lines above take both: render_blocks for the default-mode lines with few
    # cells, render_rows for the others)
    assert len(K.render_rows.overloads) == 1
    assert len(K.render_blocks.overloads) == 1
    # (the functions it calls are linked into its cached code: loaded from the
    # cache they are not even loaded themselves)
    assert len(K.pixel_value.overloads) <= 1
    assert len(K._lattice_square_fast.overloads) <= 1      # float64 sines
    assert len(K._lattice_square_fast32.overloads) <= 1    # float32 sines
    # one signature of the lean sum for the pixel function and the block path
    # (a literal 0 for its first cell once compiled it a second time)
    assert len(K._lean_sum.overloads) <= 1
    # the trace has its own copy of the pixel function (the -trace_pixel lines
    # above compiled it once, the second pass not again), from the same body:
    # TRACE is the only difference, so numba prunes the trace out of the image copy
    assert len(K._pixel_value_trace.overloads) <= 1
    assert K._pixel_value_trace.py_func.__code__ is K.pixel_value.py_func.__code__
    assert K.pixel_value.py_func.__globals__["TRACE"] is False
    assert K._pixel_value_trace.py_func.__globals__["TRACE"] is True


def test_split_compile_uses_the_image_kernels_signatures(tmp_path):
    """A cold first run on two cores compiles the lattice loops and its image
    loop itself, and in a second process the pixel function's last callees
    or the block path's geometry, the helpers and the other image loop
    (jitcache._split_compile): their argument types must be the ones the
    kernels pass, or they would be compiled again.  After runs that took
    both image loops, the same calls compile nothing."""
    nbnumba.simulate_argv((CELL + " " + DET + " -nonoise").split(), cwd=str(tmp_path))
    nbnumba.simulate_argv((CELL + " " + DET + " -nonoise -c_parity").split(), cwd=str(tmp_path))
    rec = ev.RecordingListener()
    with ev.install_listener("numba:compile", rec):
        jitcache.compile_lattice()
        jitcache.compile_pixel_callees()
        jitcache.compile_buffers()
        jitcache.compile_block_geometry()
        jitcache.compile_helpers()
        jitcache.compile_entry("render_rows")
        jitcache.compile_entry("render_blocks")
    compiled = sorted({e.data["dispatcher"].py_func.__qualname__ for _, e in rec.buffer})
    assert compiled == []


def test_each_run_names_its_own_image_loop():
    """cold_kernels and native.render agree on which image loop a run uses:
    render_blocks for a default-mode run with few cells per pixel,
    render_rows otherwise (here: -c_parity, and 100 cells)."""
    from nbnumba.model import build_model
    cases = [(CELL + " " + DET + " -nonoise", "render_blocks"),
             (CELL + " " + DET + " -nonoise -c_parity", "render_rows"),
             (CELL + " " + DET + " -nonoise -mosaic 0.5 -mosaic_dom 20 -phisteps 5 -osc 1",
              "render_rows")]
    for line, name in cases:
        model = build_model(nbnumba.parse_argv(line.split()))
        assert jitcache._entry_name(model.cpu_kernel_args()) == name, line


def test_cold_cache_is_detected(tmp_path):
    cfg = nbnumba.parse_argv((CELL + " " + DET + " -nonoise").split())
    from nbnumba.model import build_model
    model = build_model(cfg)
    nbnumba.simulate(cfg)                  # now in memory: nothing to announce
    assert jitcache.cold_kernels(model) == []
    import io
    buf = io.StringIO()
    assert jitcache.announce_compile(model, file=buf) is False and buf.getvalue() == ""


def test_cold_check_reads_the_cache_index(tmp_path):
    """Cold (no index entry) -> compiled in memory -> a new dispatcher of the
    same function finds it in the on-disk index."""
    from numba import njit
    src = tmp_path / "probe_mod.py"
    src.write_text("def f(x):\n    return x + 1\n")
    ns = {"__name__": "probe_mod"}
    exec(compile(src.read_text(), str(src), "exec"), ns)
    disp = njit(cache=True)(ns["f"])
    assert jitcache._cached(disp, (1,)) is False
    assert disp(1) == 2
    assert jitcache._cached(disp, (1,)) is True
    again = njit(cache=True)(ns["f"])
    assert jitcache._cached(again, (1,)) is True
    assert jitcache._cached(again, (1.5,)) is False


def test_every_called_kernel_function_sets_fastmath():
    """numba compiles a jitted callee that does not set ``fastmath`` with its
    first caller's flags, and caches it under a key without them: a fast-math
    caller (the adjoint, the default-mode sum) compiled first would hand its
    flags to a strict helper for every later run.  So every separately compiled
    function says which it is (inline="always" bodies take their caller's)."""
    from numba.core.registry import CPUDispatcher
    from nbnumba import physics, rng
    from nbnumba.kernels import adjoint, cpu
    missing = []
    for mod in (physics, rng, cpu, adjoint):
        for name, d in vars(mod).items():
            if not isinstance(d, CPUDispatcher) or d.py_func.__module__ != mod.__name__:
                continue
            if d.targetoptions.get("inline", "never") == "always":
                continue
            if "fastmath" not in d.targetoptions:
                missing.append("%s.%s" % (mod.__name__, name))
    assert missing == []


def test_every_overload_sets_fastmath():
    """The same holds for ``@overload`` implementations (their jit_options):
    sinpi_reduced's overload without ``fastmath`` took pixel_grad's FMA
    contraction when the adjoint was the first to compile it, and every later
    sincg_reduced call lost its last bit against the forward's
    (test_autodiff.test_sincg_value_grad_value_is_the_forwards failed after it)."""
    import re
    from pathlib import Path
    import nbnumba
    found, missing = 0, []
    for path in sorted(Path(nbnumba.__file__).parent.rglob("*.py")):
        for m in re.finditer(r"^@overload\((.*)\)\s*$", path.read_text(), re.M):
            found += 1
            if not re.search(r"[\"']fastmath[\"']\s*:", m.group(1)):
                missing.append("%s: %s" % (path.name, m.group(0)))
    assert found >= 2
    assert missing == []


def test_second_process_says_helpers_then_compiles_the_other_loop(tmp_path):
    """The split's second process (python -m nbnumba.jitcache --second ...)
    writes "helpers" once its helpers are in the cache, before it compiles the
    other image loop; wait_helpers reads that line and closes the pipe, and
    the process still ends well (its later writes would go nowhere).  Bad
    arguments: exit status 2."""
    import subprocess
    from nbnumba.kernels.native import python_process
    nbnumba.simulate_argv((CELL + " " + DET).split(), cwd=str(tmp_path))   # a warm cache
    p = python_process(["nbnumba.jitcache", "--second", "render_rows", "--geometry", "--helpers"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jitcache._HELPERS = p
    try:
        jitcache.wait_helpers()                 # reads the line, closes the pipe
        assert jitcache._HELPERS is None and p.stdout.closed
        assert p.wait(timeout=300) == 0, p.stderr.read()
    finally:
        jitcache._HELPERS = None
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    # (any argument but these two ran the whole warm-up: --help and --bogus too)
    for bad in (["--second"], ["--second", "render_everything"],
                ["--second", "render_rows", "--fast"], ["--bogus"], ["--help"]):
        r = subprocess.run([sys.executable, "-m", "nbnumba.jitcache"] + bad, capture_output=True,
                           timeout=120, text=True)
        assert r.returncode == (0 if bad == ["--help"] else 2), bad
        if bad[0] != "--second":
            assert "usage: python -m nbnumba.jitcache" in r.stdout + r.stderr
            assert "compiling" not in r.stdout + r.stderr


def test_detached_second_process_is_reaped_without_a_resource_warning():
    """After wait_helpers has read "helpers", the second process runs on
    (the other image loop) while the run drops it: it is reaped by a daemon
    thread, never garbage-collected while running (Popen.__del__'s
    ResourceWarning "subprocess N is still running", which tools/fuzz.py cli,
    showing every warning, reported for 2045 in-process runs after a cold
    start)."""
    import gc
    import subprocess
    import warnings
    p = subprocess.Popen([sys.executable, "-c",
                          "import time; print('helpers', flush=True); time.sleep(1.5)"],
                         stdout=subprocess.PIPE, text=True)
    pid = p.pid
    jitcache._HELPERS = p
    del p
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jitcache.wait_helpers()
        gc.collect()
    assert jitcache._HELPERS is None
    assert [str(w.message) for w in caught] == []
    reapers = [t for t in __import__("threading").enumerate() if t.name == "nbnumba-reaper"]
    assert reapers
    for t in reapers:
        t.join(timeout=30)
    # reaped: the pid is no child of this process any more
    with pytest.raises(ChildProcessError):
        __import__("os").waitpid(pid, 0)
