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
"""
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("NBNUMBA_AOT_AUTOBUILD", "0")

_BUILD = {}


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


#: test files whose tests run the autodiff kernels (they wait for the warm-up)
_AUTODIFF_FILES = ("test_autodiff.py", "test_gpu_adjoint.py", "test_gpu_check.py")
_WARM = {}


def pytest_collection_modifyitems(session, config, items):
    if any("library" in getattr(item, "fixturenames", ()) for item in items):
        from nbnumba.kernels import native
        d = tempfile.mkdtemp(prefix="nbnumba-test-aot-")
        with _cache_dir(d):
            _BUILD.update(dir=d, proc=native.start_build(numba_cache=True))
    if any(item.path.name in _AUTODIFF_FILES for item in items):
        _WARM["proc"] = subprocess.Popen(
            [sys.executable, "-m", "nbnumba.autodiff", "--warmup"], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(10))
        # (stable: the other files keep their order)
        items.sort(key=lambda item: item.path.name == "test_autodiff.py")


def pytest_runtest_setup(item):
    p = _WARM.get("proc")
    if p is not None and item.path.name in _AUTODIFF_FILES and "err" not in _WARM:
        _WARM["err"] = p.communicate(timeout=900)[1]
        assert p.returncode == 0, "python -m nbnumba.autodiff --warmup failed:\n" + _WARM["err"]


def pytest_sessionfinish(session, exitstatus):
    for p in (_BUILD.get("proc"), _WARM.get("proc")):
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    if _BUILD.get("dir"):
        shutil.rmtree(_BUILD["dir"], ignore_errors=True)


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
    p = _BUILD["proc"]
    if "err" not in _BUILD:
        _BUILD["err"] = p.communicate(timeout=900)[1]
    err = _BUILD["err"]
    if p.returncode != 0 and not _c_compiler():
        pytest.skip("the start-up library needs a C compiler (numba.pycc); none found")
    assert p.returncode == 0, err
    with _cache_dir(_BUILD["dir"]):
        assert native.aot_module() is not None
        yield _BUILD["dir"]
