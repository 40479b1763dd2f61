"""numba's cache stamp for this package's kernels covers the files they
inline (nbnumba/numba_cache.py): an edit of physics.py alone must recompile
kernels/cpu.py's cached loops, which numba's own stamp (a hash of the
function's file) would keep, with the old formula."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from nbnumba import numba_cache
from nbnumba.kernels import cpu as K


def _locator(disp):
    """The cache locator numba picked for a cache=True dispatcher."""
    return disp._cache._impl.locator


def test_kernel_stamp_covers_inlined_sources():
    loc = _locator(K._lattice_square_fast)
    stamp = loc.get_source_stamp()
    assert isinstance(stamp, tuple) and stamp[1] == numba_cache.sources_digest()
    assert {"physics.py", "vecmath.py", "kernels/cpu.py"} <= set(numba_cache.KERNEL_SOURCES)


def test_digest_follows_the_contents(tmp_path, monkeypatch):
    f = tmp_path / "physics_copy.py"
    f.write_text("A = 1\n")
    # an absolute path in KERNEL_SOURCES stands for itself (os.path.join)
    monkeypatch.setattr(numba_cache, "KERNEL_SOURCES", (str(f),))
    d1 = numba_cache.sources_digest()
    time.sleep(0.01)
    f.write_text("A = 2\n")
    d2 = numba_cache.sources_digest()
    assert d1 != d2
    assert numba_cache.sources_digest() == d2


def test_other_code_keeps_numbas_stamp(tmp_path):
    from numba import njit
    src = tmp_path / "mod_elsewhere.py"
    src.write_text("def f(x):\n    return x + 1\n")
    import importlib.util
    spec = importlib.util.spec_from_file_location("mod_elsewhere", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    disp = njit(cache=True)(mod.f)
    assert not numba_cache.in_package(str(src))
    assert isinstance(_locator(disp).get_source_stamp(), bytes)
    numba_cache.install()            # a second call changes nothing
    assert isinstance(_locator(disp).get_source_stamp(), bytes)


def _cached_call(cache_dir, expr, before=""):
    """Run ``expr`` (an nbnumba kernel call) in a fresh process with its own
    numba cache, after the statements ``before``; (exit status, stdout, stderr)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), NBNUMBA_AOT="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    code = before + "\nfrom nbnumba import physics, numba_cache; print(repr(%s))" % expr
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return p.returncode, p.stdout.strip(), p.stderr


@pytest.mark.slow      # (subprocesses compiling into fresh caches: ~5 s)
def test_a_damaged_cache_entry_is_compiled_again(tmp_path):
    """numba renames its cache files into place without an fsync, so a power
    loss can leave them empty; an emptied or cut-short entry of a package
    kernel raised pickle's EOFError / UnpicklingError from every later run.
    It is now a miss: compiled again, the same value, cached again."""
    expr = "physics.sinc3_accurate(0.3)"
    rc, first, err = _cached_call(tmp_path, expr)
    assert rc == 0 and float(first) > 0, err
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
             if f.endswith((".nbi", ".nbc"))]
    assert any(f.endswith(".nbc") for f in files) and any(f.endswith(".nbi") for f in files)

    def damage(cut, names):
        out = {}
        for f in names:
            with open(f, "rb") as fh:
                data = fh.read()
            with open(f, "wb") as fh:
                fh.write(cut(data))
            out[f] = cut(data)
        return out
    # every file emptied (a power loss), then the data files alone cut short
    damage(lambda b: b"", files)
    rc, again, err = _cached_call(tmp_path, expr)
    assert rc == 0 and again == first, err
    cut = damage(lambda b: b[:len(b) // 2], [os.path.join(d, f) for d, _, fs in os.walk(tmp_path)
                                             for f in fs if f.endswith(".nbc")])
    rc, again, err = _cached_call(tmp_path, expr)
    assert rc == 0 and again == first, err
    rewritten = [f for f, data in cut.items() if "sinc3_accurate" in f
                 and open(f, "rb").read() != data and len(data) > 0]
    assert rewritten        # cached anew, whole


def test_other_codes_damaged_entries_are_left_to_numba(tmp_path):
    """The damaged-entry rule covers this package's kernels alone: for them the
    load is a miss and the function's index is removed (so the next save
    writes a new one); other code's error is numba's, as before."""
    from types import SimpleNamespace

    import pytest
    from numba.core import caching
    numba_cache.install()

    class Damaged(caching.Cache):
        def __init__(self, py_file, index):
            self._impl = SimpleNamespace(locator=SimpleNamespace(_py_file=py_file))
            self._cache_file = SimpleNamespace(_index_path=str(index))

        def _load_overload(self, sig, target_context):
            raise EOFError("Ran out of input")
    ctx = SimpleNamespace(refresh=lambda: None)
    index = tmp_path / "f-1.py311.nbi"
    index.write_bytes(b"")
    ours = Damaged(os.path.abspath(numba_cache.__file__), index)
    assert ours.load_overload(None, ctx) is None and not index.exists()
    index.write_bytes(b"")
    with pytest.raises(EOFError):
        Damaged(str(tmp_path / "mod_elsewhere.py"), index).load_overload(None, ctx)
    assert index.exists()


FULL_DISK = """
import errno
from numba.core import caching
def _full(self, name, data):
    raise OSError(errno.ENOSPC, "No space left on device")
caching.IndexDataCacheFile._save_data = _full
"""


@pytest.mark.slow      # (subprocesses compiling into fresh caches: ~5 s)
def test_a_cache_that_cannot_be_written_costs_a_compile_not_the_run(tmp_path):
    """numba's OSError from writing a cache entry (a full disk, a quota) ended
    the run in a traceback after the compile; now the kernel's value comes
    back, the failure is noted once (the CLI prints save_failure_note), and
    nothing half-written stays in the cache."""
    rc, out, err = _cached_call(tmp_path, "(physics.sinc3_accurate(0.3), "
                                "numba_cache.save_failure_note())", before=FULL_DISK)
    assert rc == 0, err
    value, note = eval(out)
    assert value > 0 and note.startswith("nbnumba: warning: numba's cache could not be written in ")
    assert note.endswith("(No space left on device): the next run compiles the kernels again")
    assert str(tmp_path) in note
    assert not [f for d, _, fs in os.walk(tmp_path) for f in fs if ".tmp." in f or f.endswith(".nbc")]
    rc, again, err = _cached_call(tmp_path, "physics.sinc3_accurate(0.3)")
    assert rc == 0 and float(again) == value, err
    assert numba_cache.save_failure_note(len(numba_cache.SAVE_FAILURES)) is None


def test_the_cli_says_once_that_the_cache_was_not_written(tmp_path, monkeypatch, capsys):
    """A run whose kernels could not be cached ends with one warning line on
    stderr (exit 0, outputs written); a run that caches nothing new says
    nothing."""
    from nbnumba import api, cli
    monkeypatch.chdir(tmp_path)
    argv = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
            "-detpixels 8 -nonoise -nopgm -noprogress").split()
    real = api.run_model

    def failing_save(model, **kw):
        numba_cache.SAVE_FAILURES.append(("/cache/dir", "No space left on device"))
        return real(model, **kw)
    monkeypatch.setattr(numba_cache, "SAVE_FAILURES", [])
    monkeypatch.setattr(api, "run_model", failing_save)
    assert cli.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert err.count("nbnumba: warning: numba's cache could not be written in /cache/dir (No space "
                     "left on device): the next run compiles the kernels again") == 1
    assert (tmp_path / "floatimage.bin").stat().st_size == 8 * 8 * 4
    monkeypatch.setattr(api, "run_model", real)
    assert cli.main(argv) == 0
    assert "cache could not be written" not in capsys.readouterr().err


def _last_resort():
    from numba.core import caching
    numba_cache.install()
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    found = [c for c in impl._locator_classes if getattr(c, "_nbnumba", False)]
    assert len(found) == 1 and impl._locator_classes[-1] is found[0]     # numba's come first
    return impl, found[0]


def test_a_read_only_install_and_home_cache_in_a_private_temporary_directory(tmp_path, monkeypatch):
    """A read-only package and a read-only home (a container's read-only root
    file system): numba found no place for the cache and its decorator raised
    "cannot cache function '_dot': no locator available".  The package's
    kernels then go to temp_cache_dir() (0700, this user's); a directory
    someone else could write is not used (entries are unpickled), and other
    code is not cached there."""
    import tempfile

    from nbnumba import physics
    _, locator = _last_resort()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fn = physics.sinc3_accurate.py_func
    loc = locator.from_function(fn, fn.__code__.co_filename)
    d = numba_cache.temp_cache_dir()
    assert d == os.path.join(str(tmp_path), "nbnumba-numba-cache-%d" % os.getuid())
    assert loc is not None and loc.get_cache_path().startswith(d + os.sep)
    assert os.stat(d).st_mode & 0o777 == 0o700
    other = tmp_path / "elsewhere.py"
    other.write_text("def f(x):\n    return x\n")
    assert locator.from_function(fn, str(other)) is None
    os.chmod(d, 0o777)
    assert locator.from_function(fn, fn.__code__.co_filename) is None


def test_no_writable_cache_anywhere_compiles_without_one(monkeypatch):
    """With no writable place at all (no temporary directory either) a package
    kernel is compiled without a cache, and the run says so once; other code
    keeps numba's RuntimeError."""
    import pytest
    from numba import njit

    from nbnumba import physics
    impl, _ = _last_resort()
    monkeypatch.setattr(impl, "_locator_classes", [])
    monkeypatch.setattr(numba_cache, "SAVE_FAILURES", [])
    disp = njit(cache=True, error_model="numpy")(physics.sinc3_accurate.py_func)
    assert disp(0.3) == physics.sinc3_accurate(0.3)
    note = numba_cache.save_failure_note()
    assert note.startswith("nbnumba: warning: no writable directory for numba's cache")
    assert note.endswith("set NUMBA_CACHE_DIR to a writable directory")

    def elsewhere(x):
        return x
    with pytest.raises(RuntimeError, match="no locator available"):
        njit(cache=True)(elsewhere)


def test_a_temporary_cache_folder_of_another_user_is_the_reason_given(tmp_path, monkeypatch):
    """$TMPDIR/nbnumba-numba-cache-UID made by another user (or one others may
    write) is never used: its entries would be unpickled.  With no other place,
    a run said "compiling kernels (first run only ...)" and then that there was
    no writable directory: two lines that contradict, and a wrong reason (the
    folder is there, but another user's).  The note now names the folder and
    why it is not used, and that every run compiles, not only the first."""
    import tempfile

    from numba import njit

    from nbnumba import physics
    impl, locator = _last_resort()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = numba_cache.temp_cache_dir()
    os.mkdir(d, 0o700)
    if os.getuid() == 0:
        os.chown(d, 65534, 65534)
        why = "%s belongs to another user (uid 65534)" % d
    else:                   # (not root: a folder others may write stands in)
        os.chmod(d, 0o777)
        why = "%s may be written by other users (mode 777)" % d
    fn = physics.sinc3_accurate.py_func
    assert locator.from_function(fn, fn.__code__.co_filename) is None       # not used
    monkeypatch.setattr(impl, "_locator_classes", [])     # numba's own places: none either
    monkeypatch.setattr(numba_cache, "SAVE_FAILURES", [])
    disp = njit(cache=True, error_model="numpy")(fn)
    assert disp(0.3) == physics.sinc3_accurate(0.3)
    assert numba_cache.save_failure_note() == (
        "nbnumba: warning: no writable directory for numba's cache (NUMBA_CACHE_DIR, the "
        "package's __pycache__, ~/.cache, a temporary directory; %s, so it is not used): every "
        "run compiles the kernels, not only the first; set NUMBA_CACHE_DIR to a writable "
        "directory" % why)
    assert numba_cache.temp_cache_problem() == why and os.listdir(d) == []


def test_a_thread_count_numba_cannot_start_with_is_one_line(tmp_path, monkeypatch):
    """NUMBA_NUM_THREADS=0 (say cores - 2 on a 2-core machine) made ``import
    numba`` raise "ValueError: Number of threads specified must be > 0", a
    traceback from the CLI, while a run on the start-up library took every
    core; a word was a multi-line warning.  Now one line, exit 2, in both, and
    a ConfigError from the API's first kernel import."""
    import pytest

    from nbnumba.errors import ConfigError
    for bad in ("0", "-3", "abc", "4.0"):
        monkeypatch.setenv("NUMBA_NUM_THREADS", bad)
        with pytest.raises(ConfigError, match="NUMBA_NUM_THREADS=%s: numba needs a whole number "
                                              "of threads >= 1" % re.escape(bad)):
            numba_cache.check_environment()
    for good in ("1", " 2 ", ""):
        monkeypatch.setenv("NUMBA_NUM_THREADS", good)
        numba_cache.check_environment()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_NUM_THREADS="0", PYTHONPATH=root)
    argv = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 10 -distance 100 -detpixels 8 "
            "-nopgm -noprogress -nonoise").split()
    for aot in ("0",):      # (cli.run checks before either path: the library's is the same)
        p = subprocess.run([sys.executable, "-m", "nbnumba.cli"] + argv, cwd=str(tmp_path),
                           env=dict(env, NBNUMBA_AOT=aot), capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr == (
            "nbnumba: error: NUMBA_NUM_THREADS=0: numba needs a whole number of threads >= 1; "
            "unset it (nbnumba then uses every core) or give -threads N\n"), p.stderr
    code = ("from nbnumba.errors import ConfigError\ntry:\n    import nbnumba.physics\n"
            "except ConfigError as e:\n    print('ConfigError', e)")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.stdout.startswith("ConfigError NUMBA_NUM_THREADS=0: numba needs"), p.stdout + p.stderr
    assert not list(tmp_path.iterdir())


def test_a_numba_setting_numba_cannot_read_is_one_warning_line(tmp_path):
    """NUMBA_OPT=x: numba warned with the whole text of a traceback (11 lines
    on stderr) and used its default.  Now one ``nbnumba: warning:`` line naming
    the variable and numba's reason; the image is the one without it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 10 -distance 100 -detpixels 8 "
            "-nopgm -noprogress -nonoise -floatfile").split()
    env = dict(os.environ, PYTHONPATH=root, NBNUMBA_AOT="0", NBNUMBA_SERVER="0")
    env.pop("NUMBA_OPT", None)
    images = []
    for i, opt in enumerate((None, "x")):
        e = dict(env, NUMBA_OPT=opt) if opt is not None else env
        p = subprocess.run([sys.executable, "-m", "nbnumba.cli"] + argv + ["f%d.bin" % i],
                           cwd=str(tmp_path), env=e, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        images.append((tmp_path / ("f%d.bin" % i)).read_bytes())
    assert p.stderr == ("nbnumba: warning: NUMBA_OPT=x: numba cannot read this value and uses its "
                        "default (ValueError: Environment variable `NUMBA_OPT` is set to an "
                        "unsupported value 'x', supported values are 0, 1, 2, 3, and 'max')\n"), p.stderr
    assert images[0] == images[1]
