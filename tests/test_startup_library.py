"""The start-up library (nbnumba.kernels.native / aot): numba's kernels
compiled ahead of time so that a run loads no numba.

It must give the JIT's results bit for bit (same numba code, same LLVM, same
CPU features), release the GIL like the JIT kernel, fall back to numba for
anything it was not built for, and never be used when it does not match
these sources, settings or this CPU.  One library is built per session, in a
temporary directory, from numba's cache (``--numba-cache``, as ``nbnumba
--warmup`` builds it): the ``library`` fixture (tests/conftest.py) starts the
build when these tests are collected."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nbnumba
from nbnumba.kernels import native
from nbnumba.testing import golden as G

CELL = "-cell 70 80 90 85 95 105 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.5"
DET = "-distance 100 -detpixels 24 -pixel 0.4 -seed 1 -nopgm"
MAT = "-mat cellA.mat -hkl cellA.hkl -lambda 1.5 " + DET

LINES = [
    CELL + " " + DET,
    CELL + " " + DET + " -c_parity",
    CELL + " " + DET + " -precision single",
    CELL + " " + DET + " -c_parity -precision single -adc 0",
    MAT + " -N 3 -interpolate -c_parity",
    MAT + " -N 3 -nointerpolate",
    CELL + " " + DET + " -mosaic 0.5 -mosaic_dom 4 -mosaic_seed 4 -misset random",
    CELL + " " + DET + " -c_parity -mosaic 0.5 -mosaic_dom 4 -misset random",
    CELL + " " + DET + " -round_xtal -oversample 2 -phi 0 -osc 1 -phisteps 3",
    CELL + " " + DET + " -gauss_xtal -hdivrange 0.5 -hdivsteps 2 -dispersion 0.1 -dispsteps 2",
    CELL + " " + DET + " -tophat_spots -curved_det -water 50 -roi 2 20 3 18",
    CELL + " " + DET + " -oversample 2 -oversample_thick -detector_absorb 320 "
    "-detector_thick 100 -detector_thicksteps 2 -point_pixel",
]


def _run(line, work, aot):
    os.environ["NBNUMBA_AOT"] = "1" if aot else "0"
    try:
        before = dict(native.COUNTS)
        res = nbnumba.simulate_argv(line.split(), cwd=str(work))
        used = {k: native.COUNTS[k] - before[k] for k in before}
    finally:
        os.environ.pop("NBNUMBA_AOT", None)
    return res, used


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


@pytest.mark.parametrize("line", LINES)
def test_library_matches_the_jit_bit_for_bit(library, tmp_path, line):
    for name in ("cellA.mat", "cellA.hkl"):
        (tmp_path / name).write_bytes((G.inputs_dir() / name).read_bytes())
    jit, used_jit = _run(line, tmp_path, aot=False)
    aot, used_aot = _run(line, tmp_path, aot=True)
    assert used_jit["aot"] == 0 and used_jit["jit"] > 0
    assert used_aot["jit"] == 0 and used_aot["aot"] > 0      # every call from the library
    assert np.asarray(jit.float_image).max() > 0
    assert _same(jit.float_image, aot.float_image)
    assert _same(jit.int_image, aot.int_image)
    if jit.noise_image is not None or aot.noise_image is not None:
        assert _same(jit.noise_image, aot.noise_image)
    assert jit.stats == aot.stats


def test_a_run_with_the_library_loads_no_numba(library, tmp_path):
    code = ("import sys, nbnumba.cli as c; "
            "rc = c.main(%r.split()); "
            "print(rc, 'numba' in sys.modules, 'llvmlite' in sys.modules)"
            % (CELL + " " + DET + " -mosaic 0.5 -mosaic_dom 3 -misset random"))
    env = dict(os.environ, NBNUMBA_CACHE_DIR=str(library), NBNUMBA_SERVER="0",
               PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "0 False False", out.stderr
    assert "backend cpu (numba AOT)" in out.stdout.splitlines()[-2]
    assert (tmp_path / "floatimage.bin").stat().st_size == 24 * 24 * 4


def test_other_argument_types_go_to_numba(library):
    img = np.ones((4, 4), dtype=np.float64)              # the library has float32
    active = np.ones((4, 4), dtype=np.uint8)
    roi = np.array([0, 3, 0, 3], dtype=np.int64)
    before = dict(native.COUNTS)
    r64 = native.image_stats(img, active, roi, False)
    assert native.COUNTS["jit"] == before["jit"] + 1
    r32 = native.image_stats(img.astype(np.float32), active, roi, False)
    assert native.COUNTS["aot"] == before["aot"] + 1
    assert r64 == r32 and r32[2] == 16.0
    # a read-only or non-contiguous array is not the library's type either
    ro = img.astype(np.float32)
    ro.flags.writeable = False
    native.image_stats(ro, active, roi, False)
    native.image_stats(np.ones((4, 8), np.float32)[:, ::2], active, roi, False)
    assert native.COUNTS["jit"] == before["jit"] + 3


def test_the_library_releases_the_gil(library):
    """While the library's image loop runs in one thread, this thread keeps
    running Python (no wall-clock bound: it only asks whether it ran at all)."""
    cfg = nbnumba.parse_argv((CELL + " -distance 100 -detpixels 96 -pixel 0.1 -mosaic 0.5 "
                              "-mosaic_dom 20 -phi 0 -osc 1 -phisteps 5 -oversample 2").split())
    from nbnumba.model import build_model
    model = build_model(cfg)
    args = model.cpu_kernel_args()
    S, F = model.shape
    out = np.zeros((S, F), np.float32)
    span = []

    def work():
        t0 = time.perf_counter()
        native.render_rows(model.active, -1, -1, -1, *args, out, np.zeros(S),
                           np.zeros((1, 1), np.int32), np.zeros((1, 1), np.uint8), 0, S, 1)
        span.extend((t0, time.perf_counter()))
    before = native.COUNTS["aot"]
    th = threading.Thread(target=work)
    stamps = []
    th.start()
    while th.is_alive():
        stamps.append(time.perf_counter())
    th.join()
    assert native.COUNTS["aot"] == before + 1 and out.max() > 0
    t0, t1 = span
    inside = [t for t in stamps if t0 < t < t1]
    assert len(inside) > 10, (len(stamps), t1 - t0)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty library directory with background builds allowed."""
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NBNUMBA_AOT_AUTOBUILD", "1")
    native.forget()
    yield tmp_path / native.module_name(native.library_key())
    native.forget()


def test_a_foreign_or_damaged_library_is_not_used(empty_cache, tmp_path, monkeypatch):
    with open(native.library_path(), "wb") as fh:
        fh.write(b"\x7fELF not really")
    assert native.aot_module() is None
    res = nbnumba.simulate_argv((CELL + " " + DET + " -nonoise").split(), cwd=str(tmp_path))
    assert np.asarray(res.float_image).max() > 0
    # another NUMBA_* setting names another library
    key = native.library_key()
    monkeypatch.setenv("NUMBA_OPT", "2")
    # read from os.environ's own dict (fast): the same settings os.environ gives
    assert native._numba_env() == tuple(sorted(
        (k, v) for k, v in os.environ.items()
        if k.startswith("NUMBA_") and k not in native._ENV_IGNORED))
    assert ("NUMBA_OPT", "2") in native._numba_env()
    assert native.library_key() != key
    monkeypatch.delenv("NUMBA_OPT")
    assert native.library_key() == key
    # off switch
    monkeypatch.setenv("NBNUMBA_AOT", "0")
    assert not native.enabled() and native.aot_module() is None
    assert native.background_build_wanted() is False


@pytest.fixture
def built_library(library):
    """The session's library file (taken before empty_cache switches directory)."""
    return native.library_path()


def test_a_library_others_may_write_is_not_loaded(built_library, empty_cache):
    """Loading the library runs its code: a copy that group or others may
    write (a shared cache directory) is refused; the run uses numba."""
    import shutil
    dst = native.library_path()
    shutil.copyfile(built_library, dst)
    shutil.copyfile(native.digest_path(built_library), native.digest_path(dst))
    os.chmod(dst, 0o775)
    assert native.aot_module() is None
    native.forget()
    os.chmod(dst, 0o755)
    assert native.aot_module() is not None


def test_a_library_in_a_folder_others_may_write_is_not_loaded(built_library, empty_cache):
    """A library in a folder group or others may write (a shared cache) could
    be replaced by their file at any time: not loaded, unless the folder is
    sticky (then only its owner may rename or remove it)."""
    import shutil
    dst = native.library_path()
    shutil.copyfile(built_library, dst)
    shutil.copyfile(native.digest_path(built_library), native.digest_path(dst))
    os.chmod(dst, 0o755)
    folder = os.path.dirname(dst)
    try:
        for mode, loads in ((0o777, False), (0o775, False), (0o1777, True), (0o755, True)):
            os.chmod(folder, mode)
            native.forget()
            assert (native.aot_module() is not None) is loads, oct(mode)
    finally:
        os.chmod(folder, 0o700)


def test_a_damaged_library_is_built_again(built_library, empty_cache, monkeypatch):
    """A library file whose bytes are not the ones its build recorded (emptied
    by a power loss after its rename, cut short by an interrupted copy) is not
    loaded: a cut-short library killed the process with SIGBUS as the dynamic
    loader mapped it.  The next build replaces it; a damaged file used to be
    kept, and every run fell back to numba and said it was building the
    library.  A library that is intact is left alone."""
    import shutil
    from nbnumba.kernels import aot
    key, path = native.library_key(), native.library_path()
    whole = open(built_library, "rb").read()
    assert open(native.digest_path(built_library)).read().strip() == hashlib.sha256(whole).hexdigest()
    builds = []

    def build(k, out):
        builds.append(k)
        shutil.copyfile(native.digest_path(built_library), native.digest_path(path))
        shutil.copyfile(built_library, path)
        os.chmod(path, 0o755)
        return path
    monkeypatch.setattr(aot, "build", build)
    # (--numba-cache: without it aot.main, meant to run in its own process, sets
    # NUMBA_CACHE_DIR to a private folder, which later tests' subprocesses inherited)
    args = ["--key", key, "--out", os.path.dirname(path), "--numba-cache"]
    shutil.copyfile(native.digest_path(built_library), native.digest_path(path))
    for damaged in (b"", whole[:5000], whole[:-4096] + bytes(4096)):
        with open(path, "wb") as fh:
            fh.write(damaged)
        os.chmod(path, 0o755)
        native.forget()
        assert native.aot_module() is None and native.background_build_wanted() is True
        assert aot.main(args) == 0
    assert builds == [key] * 3
    native.forget()
    assert native.aot_module() is not None
    assert aot.main(args) == 0 and builds == [key] * 3
    os.unlink(native.digest_path(path))         # (a library built before the digest)
    native.forget()
    assert native.aot_module() is None


def test_no_second_background_build_while_one_runs(empty_cache):
    import fcntl
    with open(str(empty_cache) + ".lock", "w") as fh:
        assert native.build_running() is False
        fcntl.flock(fh, fcntl.LOCK_EX)          # as aot.main holds it
        assert native.build_running() is True
        assert native.background_build_wanted() is False
    assert native.build_running() is False
    assert native.background_build_wanted() is True


def test_a_library_folder_without_flock_still_builds(empty_cache, monkeypatch):
    """A library folder on a file system without flock (ENOLCK on an NFS home):
    build_running() said a build held the lock, so no background build ever
    started, and aot.main failed; now it builds unlocked."""
    import errno
    import fcntl

    from nbnumba.kernels import aot

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with open(str(empty_cache) + ".lock", "w"):
        pass
    assert native.build_running() is False
    assert native.background_build_wanted() is True
    builds = []
    monkeypatch.setattr(aot, "build", lambda key, out: builds.append(key))
    key = native.library_key()
    assert aot.main(["--key", key, "--out", os.path.dirname(native.library_path()),
                     "--numba-cache"]) == 0
    assert builds == [key]


def test_a_failed_build_is_noted_once(empty_cache):
    assert native.background_build_wanted() is True
    with open(str(empty_cache) + ".failed", "w") as fh:
        fh.write("CompileError: no C compiler\n")
    assert native.failed_note() == "CompileError: no C compiler"
    assert native.background_build_wanted() is False



def test_no_background_build_below_a_file(tmp_path, monkeypatch):
    """NBNUMBA_CACHE_DIR (or NUMBA_CACHE_DIR) below a file: no build can write
    there, not even its .failed note.  The folder walk skipped the file, found
    tmp_path writable and started a build that failed at once, so every run
    said "building the start-up library in the background (once; ...)"."""
    (tmp_path / "afile").write_bytes(b"")
    monkeypatch.setenv("NBNUMBA_AOT_AUTOBUILD", "1")
    native.forget()
    try:
        monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(tmp_path / "afile" / "sub"))
        assert native.background_build_wanted() is False
        monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(tmp_path / "new" / "sub"))
        assert native.background_build_wanted() is True     # a folder it may create
    finally:
        native.forget()


def test_a_long_lived_process_builds_once_and_takes_the_library_when_it_appears(
        built_library, empty_cache, tmp_path, monkeypatch, capsys):
    """A process that runs many command lines (--batch, --serve, the fuzzers)
    remembered "no library" from its first line: each later line used numba,
    started one more background build (three to five alive at once in a fuzz
    run) and said "building ... (once; ...)" again, also after the library
    had been built.  Now one build per process, one line, and the library is
    taken as soon as it is on disk."""
    import shutil
    from nbnumba import cli, jitcache
    spawned = []
    real = native.python_process

    def spy(args, **kw):
        if args[0] == "nbnumba.kernels.aot":
            spawned.append(args)
            return None
        return real(args, **kw)
    monkeypatch.setattr(native, "python_process", spy)
    monkeypatch.setattr(native, "reap_in_background", lambda proc: proc)
    monkeypatch.setattr(jitcache, "LIBRARY_DELEGATED", False)
    work = tmp_path / "w"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = (CELL + " " + DET + " -nonoise -nopgm -noprogress").split()
    said = []
    for line in range(3):
        if line == 2:       # another process built it meanwhile
            dst = native.library_path()
            shutil.copyfile(native.digest_path(built_library), native.digest_path(dst))
            shutil.copyfile(built_library, dst)
            os.chmod(dst, 0o755)
        assert cli.main(argv) == 0
        o = capsys.readouterr()
        said.append(o.err.count("building the start-up library in the background"))
        last = o.out.strip().splitlines()[-1]
    assert len(spawned) == 1 and said == [1, 0, 0], (spawned, said)
    assert "backend cpu (numba AOT)" in last, last
