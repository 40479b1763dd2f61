"""Suite-wide settings.

CLI runs started by the tests (in-process or as subprocesses) must not start
background builds of the start-up library (nbnumba.kernels.native).  The
tests of the library (tests/test_startup_library.py) use one built on purpose
in a temporary directory: when they are collected, the build starts at once
in a second process and their ``library`` fixture waits for it.  It takes
the kernels from numba's cache (``--numba-cache``, as ``nbnumba --warmup``
does); in a cold one it compiles them there, on the core that pytest leaves
idle, and the tests then find them compiled.  Its result is kept in pytest's
build cache (``.pytest_cache``), keyed by everything the build reads, and a
warm run copies it from there instead of building again.

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


def _helper_dir(name):
    """A new directory for helper ``name``, named in NBNUMBA_TEST_<NAME>."""
    d = tempfile.mkdtemp(prefix="nbnumba-test-%s-" % name.lower())
    os.environ["NBNUMBA_TEST_" + name] = d
    return d


def _write_status(d, rc, err):
    """A helper's stderr, then its exit status: _wait reads them once "rc" exists."""
    with open(os.path.join(d, "err"), "w") as f:
        f.write(err)
    with open(os.path.join(d, "rc.tmp"), "w") as f:
        f.write(str(rc))
    os.replace(os.path.join(d, "rc.tmp"), os.path.join(d, "rc"))


def _start(name, popen, on_success=None):
    """Run ``popen()`` (a Popen whose stderr is a text pipe) once for this run;
    ``on_success(dir)`` runs when it exits 0, before its status is written."""
    d = _helper_dir(name)
    p = popen(d)

    def watch():
        err = p.communicate()[1] or ""
        if p.returncode == 0 and on_success is not None:
            on_success(d)
        _write_status(d, p.returncode, err)
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


def _library_cache(config):
    """The build cache's folder for the start-up library these sources,
    settings, CPU and C compiler give (``native.library_key`` holds all but
    the compiler), or None without pytest's cache.  The build compiles for
    about 13 CPU-s even from a warm numba cache, while both workers collect."""
    from nbnumba.kernels import native
    cc = _c_compiler()
    if cc is None:
        return None
    try:
        cache = config.cache.mkdir("nb_builds")
    except (AttributeError, OSError):   # -p no:cacheprovider, or a read-only tree
        return None
    import hashlib
    h = hashlib.sha256((native.library_key() + "\n" + _compiler_id(cc)).encode())
    return cache / ("library-" + h.hexdigest()[:24])


def _start_library(config):
    """The start-up library's build (tests/test_startup_library.py), in a
    directory of its own; a warm run copies the library an earlier run built
    from the same key out of the build cache (as ``_cached_build``)."""
    from nbnumba.kernels import native
    # the names now, not in the watcher thread: library_path reads os.environ,
    # which a test may be changing then
    name = os.path.basename(native.library_path())
    names = (name, native.digest_path(name))            # the library and its digest
    hit = _library_cache(config)
    if hit is not None and native._intact(os.path.join(str(hit), name)):
        d = _helper_dir("LIBRARY")
        os.mkdir(os.path.join(d, "lib"))
        for n in names:
            shutil.copyfile(os.path.join(str(hit), n), os.path.join(d, "lib", n))
        _write_status(d, 0, "")
        _PROCS.append((None, d, None))
        return

    def popen(d):
        os.mkdir(os.path.join(d, "lib"))
        with _cache_dir(os.path.join(d, "lib")):
            return native.start_build(numba_cache=True)

    def keep(d):
        if not native._intact(os.path.join(str(hit), name)):
            shutil.rmtree(str(hit), ignore_errors=True)     # a damaged copy
        _store_build(hit, {n: os.path.join(d, "lib", n) for n in names})
    _start("LIBRARY", popen, on_success=keep if hit is not None else None)


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
        _start_library(config)
        _start_warmup()


def pytest_collection_modifyitems(session, config, items):
    if not hasattr(config, "workerinput") and not _xdist_controller(config):
        if any("library" in getattr(item, "fixturenames", ()) for item in items):
            _start_library(config)
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
        if p is None:           # taken from the build cache: nothing ran
            shutil.rmtree(d, ignore_errors=True)
            continue
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


def _compiler_id(exe):
    """The compiler's resolved path and its ``--version`` text (part of a build's key)."""
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return os.path.realpath(exe) + "\n" + proc.stdout


def _cached_build(pytestconfig, cmd, output, sources, exe):
    """Run the build ``cmd``, which writes ``output``, unless a build with the
    same command, compiler and source bytes already succeeded: then copy its
    output from pytest's cache (``.pytest_cache``, absent in a fresh clone).
    ``(returncode, stderr)``; stderr is the first build's, so the tests' "no
    warnings" checks see it.  The key holds every byte the build reads, so a
    cached result is the result this tree's sources give; failures are not
    kept.  It spares the warm suite the same compiles run after run (nvcc 5 to
    9 s for each PTX, g++ about 3.5 s in each worker)."""
    import hashlib
    import json
    output = str(output)
    h = hashlib.sha256(json.dumps([a if a != output else "<out>" for a in map(str, cmd)]).encode())
    h.update(_compiler_id(exe).encode())
    for src in sources:
        with open(src, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    try:
        cache = pytestconfig.cache.mkdir("nb_builds")
    except (AttributeError, OSError):   # -p no:cacheprovider, or a read-only tree
        cache = None
    if cache is not None:
        hit = cache / h.hexdigest()
        if (hit / "out").is_file() and (hit / "stderr").is_file():
            shutil.copyfile(hit / "out", output)
            return 0, (hit / "stderr").read_text()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0 and cache is not None:
        _store_build(cache / h.hexdigest(), {"out": output}, {"stderr": proc.stderr})
    return proc.returncode, proc.stderr


def _store_build(dest, files, texts=None):
    """Put copies of ``files`` ({name in dest: source path}) and ``texts``
    ({name: str}) into the build cache's folder ``dest`` as one unit.
    Another run may store the same key at once: each fills a folder of its
    own and renames it into place, and the loser drops its copy.  Nothing is
    raised: a build whose result cannot be kept still succeeded (and a
    watcher thread writes its status next)."""
    tmp = ""
    try:
        tmp = tempfile.mkdtemp(dir=str(dest.parent), prefix=".tmp-")
        for name, src in files.items():
            shutil.copyfile(src, os.path.join(tmp, name))
        for name, text in (texts or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        os.rename(tmp, str(dest))
    except OSError:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def host_build(tmp_path_factory, pytestconfig):
    """nanobragg.cu built once per session (per xdist worker) as host C++:
    ``(library path, compiler stderr)``.  Built with ``-Wall -Wextra`` so that
    tests/test_gpu_source.py can hold the same build to no warnings; warning
    flags do not change the generated code.  A warm run takes the library
    from the build cache (``_cached_build``)."""
    from nbnumba.kernels import gpu
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if cxx is None:
        pytest.fail("g++ not found on PATH: it is required to build nanobragg.cu as host C++",
                    pytrace=False)
    out = tmp_path_factory.mktemp("nb_host") / "libnb_host.so"
    cmd = gpu.host_build_command(out, cxx)
    rc, err = _cached_build(pytestconfig, cmd[:1] + ["-Wall", "-Wextra"] + cmd[1:], out,
                            (gpu.SOURCE, gpu.COMPAT_HEADER), cxx)
    assert rc == 0, err
    return out, err


@pytest.fixture(scope="session")
def nvcc_ptx(tmp_path_factory, pytestconfig):
    """``compile(arch, dtype, trace=False) -> (returncode, stderr, ptx text)``:
    nanobragg.cu through nvcc with CuPy's options (kernels.gpu.nvcc_command),
    once per process for each distinct command (both precisions share one:
    their options are the same and one module holds both entry points), and
    from the build cache (``_cached_build``) in a warm run.  The render,
    adjoint and trace tests check the same builds; each took 5 to 9 s."""
    from nbnumba.kernels import gpu
    cache = {}

    def compile(arch, dtype, trace=False):
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            pytest.fail("nvcc not found on PATH: it is required to check that "
                        "nbnumba/kernels/nanobragg.cu compiles for the GPU", pytrace=False)
        key = tuple(gpu.nvcc_command(arch, dtype, "<out>", nvcc=nvcc, trace=trace))
        if key not in cache:
            out = tmp_path_factory.mktemp("ptx") / "nanobragg.ptx"
            rc, err = _cached_build(pytestconfig, gpu.nvcc_command(arch, dtype, out, nvcc=nvcc,
                                                                   trace=trace),
                                    out, (gpu.SOURCE,), nvcc)
            cache[key] = (rc, err, out.read_text() if rc == 0 else "")
        return cache[key]
    return compile


@pytest.fixture(autouse=True)
def _numba_cache_dir_unchanged():
    """No test may leave NUMBA_CACHE_DIR changed: every later subprocess would
    compile the kernels into that folder (an in-process aot.main set it to a
    removed private folder, and the warm suite took 305 s instead of ~130)."""
    before = os.environ.get("NUMBA_CACHE_DIR")
    yield
    after = os.environ.get("NUMBA_CACHE_DIR")
    assert after == before, ("the test left NUMBA_CACHE_DIR=%r (it was %r)" % (after, before))
