"""Suite-wide settings.

CLI runs started by the tests (in-process or as subprocesses) must not start
background builds of the start-up library (nbnumba.kernels.native).  The
tests of the library (tests/test_startup_library.py) use one built on purpose
in a temporary directory: when they are collected, the build starts at once
in a second process and their ``library`` fixture waits for it.  It takes
the kernels from numba's cache (``--numba-cache``, as ``nbnumba --warmup``
does): seconds in a warm cache; in a cold one it compiles them there, on the
core that pytest leaves idle, and the tests then find them compiled.

Likewise the autodiff kernels (about a minute of compiling in a cold cache):
``python -m nbnumba.autodiff --warmup`` starts at collection in a second
process at low priority, tests/test_autodiff.py runs last, and the first
test that needs those kernels waits for the warm-up (in a warm cache it takes
about a second).

Under pytest-xdist (the full suite runs on every core: nbnumba.testing.parallel)
the controller starts both helpers before its workers, and the workers wait
for them through files (``_start``, ``_wait``).
"""
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

os.environ.setdefault("NBNUMBA_AOT_AUTOBUILD", "0")


@contextlib.contextmanager
def _cache_dir(d):
    """NBNUMBA_CACHE_DIR=d inside, restored after; native looks again both times."""
    from nbnumba.kernels import native
    old = os.environ.get("NBNUMBA_CACHE_DIR")
    os.environ["NBNUMBA_CACHE_DIR"] = d
    native.forget()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NBNUMBA_CACHE_DIR", None)
        else:
            os.environ["NBNUMBA_CACHE_DIR"] = old
        native.forget()


# ---- helper processes started once per run --------------------------------
# Under pytest-xdist (nbnumba.testing.parallel) the controller starts them
# before its workers exist, and the workers, which inherit its environment,
# wait for them through files: NBNUMBA_TEST_<NAME> names a directory where a
# thread of the starting process writes the helper's stderr ("err") and then
# its exit status ("rc").  In a one-process run the same files are used.
_PROCS = []
_DONE = {}


def _start(name, popen):
    """Run ``popen()`` (a Popen whose stderr is a text pipe) once for this run."""
    d = tempfile.mkdtemp(prefix="nbnumba-test-%s-" % name.lower())
    os.environ["NBNUMBA_TEST_" + name] = d
    p = popen(d)

    def watch():
        err = p.communicate()[1] or ""
        with open(os.path.join(d, "err"), "w") as f:
            f.write(err)
        with open(os.path.join(d, "rc.tmp"), "w") as f:
            f.write(str(p.returncode))
        os.replace(os.path.join(d, "rc.tmp"), os.path.join(d, "rc"))
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    _PROCS.append((p, d, t))


def _wait(name, timeout=900.0):
    """(dir, exit status, stderr) of helper ``name``, once it has ended."""
    if name not in _DONE:
        d = os.environ["NBNUMBA_TEST_" + name]
        t_end = time.monotonic() + timeout
        while not os.path.exists(os.path.join(d, "rc")):
            assert time.monotonic() < t_end, "helper %s did not end in %.0f s" % (name, timeout)
            time.sleep(0.05)
        with open(os.path.join(d, "err")) as f:
            err = f.read()
        with open(os.path.join(d, "rc")) as f:
            _DONE[name] = (d, int(f.read()), err)
    return _DONE[name]


def _start_library():
    """The start-up library's build (tests/test_startup_library.py), in a
    directory of its own."""
    from nbnumba.kernels import native

    def popen(d):
        os.mkdir(os.path.join(d, "lib"))
        with _cache_dir(os.path.join(d, "lib")):
            return native.start_build(numba_cache=True)
    _start("LIBRARY", popen)


def _start_warmup():
    _start("WARMUP", lambda d: subprocess.Popen(
        [sys.executable, "-m", "nbnumba.autodiff", "--warmup"], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(10)))


#: test files whose tests run the autodiff kernels (they wait for the warm-up)
_AUTODIFF_FILES = ("test_autodiff.py", "test_gpu_adjoint.py", "test_gpu_check.py")


def _xdist_controller(config):
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    # the controller collects nothing: it starts both helpers for its workers
    if _xdist_controller(config):
        _start_library()
        _start_warmup()


def pytest_collection_modifyitems(session, config, items):
    if not hasattr(config, "workerinput") and not _xdist_controller(config):
        if any("library" in getattr(item, "fixturenames", ()) for item in items):
            _start_library()
        if any(item.path.name in _AUTODIFF_FILES for item in items):
            _start_warmup()
    # (stable: the other files keep their order)
    items.sort(key=lambda item: item.path.name == "test_autodiff.py")


def pytest_runtest_setup(item):
    if item.path.name in _AUTODIFF_FILES and "NBNUMBA_TEST_WARMUP" in os.environ:
        _, rc, err = _wait("WARMUP")
        assert rc == 0, "python -m nbnumba.autodiff --warmup failed:\n" + err


def pytest_sessionfinish(session, exitstatus):
    for p, d, t in _PROCS:
        if p.poll() is None:
            p.kill()
            p.wait()
        t.join()        # its files are written before the directory goes (a short run)
        shutil.rmtree(d, ignore_errors=True)


def _c_compiler():
    """The C compiler Python's build tools would use, if it is installed."""
    import sysconfig
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.fixture(scope="module")
def library():
    """The directory of a start-up library built for this session's sources,
    set as NBNUMBA_CACHE_DIR while the requesting module's tests run."""
    from nbnumba.kernels import native
    d, rc, err = _wait("LIBRARY")
    if rc != 0 and not _c_compiler():
        pytest.skip("the start-up library needs a C compiler (numba.pycc); none found")
    assert rc == 0, err
    with _cache_dir(os.path.join(d, "lib")):
        assert native.aot_module() is not None
        yield os.path.join(d, "lib")


@pytest.fixture(scope="session")
def host_build(tmp_path_factory):
    """nanobragg.cu built once per session (per xdist worker) as host C++:
    ``(library path, compiler stderr)``.  Built with ``-Wall -Wextra`` so that
    tests/test_gpu_source.py can hold the same build to no warnings; warning
    flags do not change the generated code."""
    from nbnumba.kernels import gpu
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cxx is None:
        pytest.fail("g++ not found on PATH: it is required to build nanobragg.cu as host C++",
                    pytrace=False)
    out = tmp_path_factory.mktemp("nb_host") / "libnb_host.so"
    cmd = gpu.host_build_command(out, cxx)
    proc = subprocess.run(cmd[:1] + ["-Wall", "-Wextra"] + cmd[1:], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


@pytest.fixture(scope="session")
def nvcc_ptx(tmp_path_factory):
    """``compile(arch, dtype, trace=False) -> (returncode, stderr, ptx text)``:
    nanobragg.cu through nvcc with CuPy's options (kernels.gpu.nvcc_command),
    once per process for each (arch, dtype, trace).  The render, adjoint and
    trace tests check the same builds; each took 5 to 7 s."""
    from nbnumba.kernels import gpu
    cache = {}

    def compile(arch, dtype, trace=False):
        key = (arch, dtype, bool(trace))
        if key not in cache:
            nvcc = shutil.which("nvcc")
            if nvcc is None:
                pytest.fail("nvcc not found on PATH: it is required to check that "
                            "nbnumba/kernels/nanobragg.cu compiles for the GPU", pytrace=False)
            out = tmp_path_factory.mktemp("ptx") / ("nanobragg_%s_%s_%d.ptx" % key)
            proc = subprocess.run(gpu.nvcc_command(arch, dtype, out, nvcc=nvcc, trace=trace),
                                  capture_output=True, text=True)
            cache[key] = (proc.returncode, proc.stderr,
                          out.read_text() if proc.returncode == 0 else "")
        return cache[key]
    return compile
