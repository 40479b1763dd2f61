"""Where the start-up library (nbnumba.kernels.native) is looked for and
built when the user is not the one who installed the package, or cannot
write their home (a scan run as ``nobody``), and what the build leaves in
the temporary folder.

Another user is emulated in process: os.access says "not writable" for the
folders such a user could not write (this suite may run as root, which may
write everywhere), and ownership is checked with explicit owner and mode
arguments, or with a folder chown'ed to uid 65534 when the suite runs as root."""
from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest

from nbnumba import numba_cache
from nbnumba.kernels import aot, native


def _deny_writes(monkeypatch, *folders):
    """os.access answers "not writable" for ``folders`` and what lies below them."""
    real = os.access
    denied = [os.path.abspath(str(f)) for f in folders]

    def access(path, mode, *a, **k):
        p = os.path.abspath(os.fsdecode(path))
        if mode & os.W_OK and any(p == d or p.startswith(d + os.sep) for d in denied):
            return False
        return real(path, mode, *a, **k)
    monkeypatch.setattr(os, "access", access)


@pytest.fixture
def other_user(tmp_path, monkeypatch):
    """The environment of a user who did not install the package: its folder
    (tmp_path/pkg) not writable, HOME tmp_path/home, the temporary folder
    tmp_path/t; no NBNUMBA_CACHE_DIR, NUMBA_CACHE_DIR or XDG_CACHE_HOME."""
    pkg = tmp_path / "pkg"
    (pkg / "kernels" / "__pycache__").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "t").mkdir()
    for var in ("NBNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NBNUMBA_AOT_AUTOBUILD", "1")
    monkeypatch.setattr(native, "_PKG", str(pkg))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    _deny_writes(monkeypatch, pkg)
    native.forget()
    yield tmp_path
    native.forget()


def test_a_library_in_the_read_only_package_folder_is_used(library, other_user, monkeypatch):
    """Root built the library in the package's kernels/__pycache__: another
    user's runs ignored it (the folder is not theirs to write), compiled for
    about 30 s and built a copy of their own in ~/.cache/nbnumba.  Now it is
    loaded from there (trusted: root's, 0755, its sha256 checked), and
    builds go only to the user's own cache."""
    src = os.path.join(library, os.path.basename(native.library_path()))
    pkg_lib = other_user / "pkg" / "kernels" / "__pycache__" / os.path.basename(src)
    shutil.copyfile(src, pkg_lib)
    shutil.copyfile(native.digest_path(src), native.digest_path(str(pkg_lib)))
    os.chmod(pkg_lib, 0o755)
    mine = str(other_user / "home" / ".cache" / "nbnumba")
    assert native.library_dir() == mine
    mod = native.aot_module()
    assert mod is not None and os.path.samefile(mod.__file__, pkg_lib)
    assert native.background_build_wanted() is False        # nothing to build
    # a copy others may write, or a damaged one, is passed over: the user's own is built
    os.chmod(pkg_lib, 0o775)
    native.forget()
    assert native.aot_module() is None and native.background_build_wanted() is True
    assert native.library_dirs() == [str(other_user / "pkg" / "kernels" / "__pycache__"), mine]
    # with NBNUMBA_CACHE_DIR, that folder alone
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(other_user / "mine"))
    assert native.library_dirs() == [str(other_user / "mine")]


def test_no_writable_home_builds_in_the_per_user_temporary_folder(other_user, monkeypatch):
    """HOME not writable (nobody's is /nonexistent), or NUMBA_CACHE_DIR /
    XDG_CACHE_HOME a folder of root's: the library was never built, silently,
    and every run loaded numba (2.7 s against 0.45 s), although numba's cache
    fell back to $TMPDIR/nbnumba-numba-cache-UID.  The library goes there too."""
    fallback = str(other_user / "t" / ("nbnumba-numba-cache-%d" % os.getuid()))
    assert numba_cache.temp_cache_dir() == fallback
    _deny_writes(monkeypatch, other_user / "pkg", other_user / "home", other_user / "root755")
    (other_user / "root755").mkdir()
    assert native.library_dir() == fallback
    assert native.background_build_wanted() is True
    monkeypatch.setenv("XDG_CACHE_HOME", str(other_user / "root755"))
    assert native.library_dir() == fallback
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(other_user / "root755"))
    assert native.library_dir() == fallback
    # below a file: no build and no word, as before (e823e97)
    (other_user / "afile").write_bytes(b"")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(other_user / "afile" / "sub"))
    assert native.library_dir() == str(other_user / "afile" / "sub" / "nbnumba")
    assert native.background_build_wanted() is False
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    # a fallback folder another user owns (or may write) is never used: no build
    os.mkdir(fallback, 0o700)
    if os.getuid() == 0:
        os.chown(fallback, 65534, 65534)
    else:                       # (not root: a folder others may write stands in)
        os.chmod(fallback, 0o777)
    assert numba_cache.temp_cache_problem() is not None
    assert native.library_dir() == str(other_user / "home" / ".cache" / "nbnumba")
    assert native.background_build_wanted() is False


def test_ownership_rules_with_explicit_owners():
    """The decisions themselves, for a user 1000 who is not root."""
    d = stat.S_IFDIR
    assert native.safe_folder(0, d | 0o755, 1000)               # root's install
    assert native.safe_folder(1000, d | 0o700, 1000)
    assert not native.safe_folder(1001, d | 0o755, 1000)        # another user's
    assert not native.safe_folder(1000, d | 0o775, 1000)        # group may replace files
    assert native.safe_folder(1000, d | 0o1777, 1000)           # sticky: they may not
    p = numba_cache.private_dir_problem
    assert p("/t/c", 1000, d | 0o700, 1000) is None
    assert p("/t/c", 0, d | 0o700, 1000) == "/t/c belongs to another user (uid 0)"
    assert p("/t/c", 1001, d | 0o700, 1000) == "/t/c belongs to another user (uid 1001)"
    assert p("/t/c", 1000, d | 0o770, 1000) == "/t/c may be written by other users (mode 770)"
    assert p("/t/c", 1000, stat.S_IFREG | 0o600, 1000) == "/t/c is not a folder"


def test_a_folder_the_build_cannot_write_is_one_line(tmp_path, monkeypatch, capsys):
    """``nbnumba --warmup`` with HOME=/nonexistent said "start-up library not
    built (runs use numba's cache): PermissionError: [Errno 13] Permission
    denied: '/nonexistent'" (the traceback's last line).  Now one line naming
    the folder and the remedy; nothing is built."""
    def build(key, out):
        raise AssertionError("no build here")
    monkeypatch.setattr(aot, "build", build)
    key = native.library_key()
    (tmp_path / "afile").write_bytes(b"")
    out = str(tmp_path / "afile" / "sub")
    assert aot.main(["--key", key, "--out", out, "--numba-cache"]) == 1
    err = capsys.readouterr().err
    assert err == ("cannot write the start-up library in %s (Not a directory): set "
                   "NBNUMBA_CACHE_DIR to a folder only this user may write\n" % out)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(shared))      # (named by the user: not repaired)
    assert aot.main(["--key", key, "--out", str(shared), "--numba-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(shared) in err and "other users may write" in err
    assert os.listdir(shared) == []


def test_the_build_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    """Every build left two tmpXXXX folders in the temporary folder, with
    temp.c/temp.o: numba's pycc._gentmpfile calls os.remove on a file object
    and swallows the TypeError.  The build now runs with tempfile's folder (and TMPDIR) in a
    private folder it removes; numba's per-user fallback cache is still the
    one the runs use."""
    import warnings
    with warnings.catch_warnings():         # (numba.pycc's pending deprecation)
        warnings.simplefilter("ignore")
        from numba.pycc.platform import _gentmpfile
    tmp = tmp_path / "t"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    seen = {}

    def build(key, out):
        with _gentmpfile(".c") as fh:          # what pycc's compiler check does
            fh.write("int main(void) { return 0; }")
        seen.update(tmp=tempfile.gettempdir(), env=os.environ["TMPDIR"],
                    cache=numba_cache.temp_cache_dir(), left=os.listdir(tempfile.gettempdir()))
    monkeypatch.setattr(aot, "build", build)
    out = tmp_path / "lib"
    assert aot.main(["--key", native.library_key(), "--out", str(out), "--numba-cache"]) == 0
    assert len(seen["left"]) == 1                 # numba's litter, in the private folder
    assert seen["tmp"] == seen["env"] != str(tmp) and seen["tmp"].startswith(str(tmp) + os.sep)
    assert seen["cache"] == os.path.join(str(tmp), "nbnumba-numba-cache-%d" % os.getuid())
    assert os.listdir(tmp) == []                  # nothing left
    assert tempfile.tempdir == str(tmp) and os.environ["TMPDIR"] == str(tmp)
    assert numba_cache.temp_cache_dir() == seen["cache"]     # (pinned only for the build)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert numba_cache.temp_cache_dir().startswith(str(tmp_path) + os.sep + "nbnumba-")


def test_a_build_does_not_run_in_the_runs_folder(tmp_path, monkeypatch):
    """A background build ran in the run's working folder: when that folder
    was removed as the run ended (a script's temporary folder; this scan's),
    the build failed with "FileNotFoundError: [Errno 2] No such file or
    directory", noted for good in .failed, and the library was never built.
    Every helper process (builds, compile helpers) now runs in the package's
    parent folder, its relative cache settings made absolute, and a build's
    --out is absolute (NBNUMBA_CACHE_DIR may be relative)."""
    import subprocess
    started = []

    class Proc:
        def wait(self):
            return 0

    def popen(cmd, **kw):
        started.append((cmd, kw))
        return Proc()
    monkeypatch.setattr(subprocess, "Popen", popen)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", "rel/lib")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "rel/numba")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    native.forget()
    try:
        native.start_build(background=True)
        native.start_build(numba_cache=True)
        native.python_process(["nbnumba.jitcache", "--second", "render_rows"])
    finally:
        native.forget()
    root = os.path.dirname(os.path.dirname(os.path.dirname(native.__file__)))
    assert len(started) == 3
    for cmd, kw in started:
        assert kw["cwd"] == root
        assert kw["env"]["NBNUMBA_CACHE_DIR"] == str(run / "rel" / "lib")
        assert kw["env"]["NUMBA_CACHE_DIR"] == str(run / "rel" / "numba")
        assert kw["env"]["TMPDIR"] == str(tmp_path)
    for cmd, kw in started[:2]:
        assert cmd[cmd.index("--out") + 1] == str(run / "rel" / "lib")


def test_an_own_folder_left_group_writable_is_repaired(tmp_path, monkeypatch, capsys):
    """Under umask 002 (Debian's and Ubuntu's for users with their own group) an
    older nbnumba made ~/.cache/nbnumba 0775: its library is never loaded from
    there (others may write the folder), so every run would fall back to the
    temporary folder.  The build takes group and other write off a folder
    nbnumba names for itself, when it is this user's; never off the folder
    NBNUMBA_CACHE_DIR names, which the user chose."""
    def build(key, out):
        pass
    monkeypatch.setattr(aot, "build", build)
    for var in ("NBNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    mine = tmp_path / "cache" / "nbnumba"
    mine.mkdir(parents=True)
    os.chmod(mine, 0o775)
    assert native.build_place(str(mine)) == "ok"
    assert aot.main(["--key", native.library_key(), "--out", str(mine), "--numba-cache"]) == 0
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o755
    # the same folder named by NBNUMBA_CACHE_DIR: left as it is, one line
    os.chmod(mine, 0o775)
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(mine))
    assert native.build_place(str(mine)) == "denied"
    capsys.readouterr()
    assert aot.main(["--key", native.library_key(), "--out", str(mine), "--numba-cache"]) == 1
    assert "other users may write that folder" in capsys.readouterr().err
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o775


def test_a_delegated_build_holds_its_lock_while_the_kernels_compile(tmp_path, monkeypatch):
    """A cold run hands the library's build to its second compile process
    (jitcache --second ... --build), which compiles for 25 s or more before it
    starts the build.  A run in that time saw no build running and started a
    full one of its own (63 s on 2 cores).  The second process now holds the
    build's lock while it compiles."""
    from nbnumba import jitcache
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(tmp_path / "lib"))
    monkeypatch.setenv("NBNUMBA_AOT_AUTOBUILD", "1")
    monkeypatch.setattr(native, "aot_module", lambda: None)
    monkeypatch.setattr(native, "failed_note", lambda key=None: None)
    seen = []
    monkeypatch.setattr(jitcache, "compile_entry", lambda entry: seen.append(
        (native.build_running(), native.background_build_wanted(), native.take_build_lock())))
    monkeypatch.setattr(jitcache.sys, "stdout", open(os.devnull, "w"))
    builds = []
    monkeypatch.setattr(native, "start_build", lambda **kw: builds.append(kw))
    assert jitcache._second(["--second", "render_rows", "--build"]) == 0
    assert seen == [(True, False, False)]       # running, none wanted, the lock taken
    assert builds == [dict(background=True, numba_cache=True)]
    assert native.build_running() is False      # let go before the build starts
    # a second process for the same key while one holds the lock: no build of its own
    lock = native.take_build_lock()
    try:
        seen.clear()
        builds.clear()
        monkeypatch.setattr(jitcache.sys, "stdout", open(os.devnull, "w"))   # (it closes it)
        assert jitcache._second(["--second", "render_rows", "--build"]) == 0
        assert builds == [] and seen == [(True, False, False)]
    finally:
        lock.close()


def test_a_shared_cache_folder_named_by_the_user_is_one_warning(tmp_path, monkeypatch, capsys):
    """NBNUMBA_CACHE_DIR naming a folder other users may write (a team's shared
    cache, 0777): the library is neither built nor loaded there, and every run
    went on loading numba without a word.  A run that used the JIT now says so
    in one line; a folder only this user may write still gets its build."""
    from nbnumba import cli
    monkeypatch.setattr(native, "aot_module", lambda: None)
    monkeypatch.setattr(native, "failed_note", lambda key=None: None)
    monkeypatch.setenv("NBNUMBA_AOT_AUTOBUILD", "1")
    monkeypatch.delenv("NBNUMBA_AOT", raising=False)
    builds = []
    monkeypatch.setattr(native, "start_build", lambda **kw: builds.append(kw))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(shared))
    cli._background_library_build()
    err = capsys.readouterr().err.splitlines()
    assert err == ["nbnumba: warning: NBNUMBA_CACHE_DIR=%s may be written by other users, so the "
                   "start-up library is neither built nor loaded there and every run loads numba; "
                   "set NBNUMBA_CACHE_DIR to a folder only this user may write" % shared]
    assert builds == [] and os.listdir(shared) == []
    os.chmod(shared, 0o755)
    cli._background_library_build()
    err = capsys.readouterr().err
    assert "warning" not in err and "building the start-up library" in err
    assert builds == [dict(background=True)]


def test_an_append_only_folder_is_no_place_for_the_library(tmp_path, monkeypatch, capsys):
    """The build writes the library under a temporary name and renames it: in a
    folder with chattr +a the rename fails and the temporary stays.  build_place
    passes such a folder over, and a build told to use it says why in one line."""
    from nbnumba.testing.chattr import APPEND, flagged
    built = []
    monkeypatch.setattr(aot, "build", lambda key, out: built.append(out))
    for var in ("NBNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    mine = tmp_path / "lib"
    mine.mkdir()
    assert native.build_place(str(mine)) == "ok"
    with flagged(mine, APPEND, monkeypatch):
        assert native.build_place(str(mine)) == "denied"
        capsys.readouterr()
        assert aot.main(["--key", native.library_key(), "--out", str(mine)]) == 1
        err = capsys.readouterr().err
        assert os.listdir(mine) == [] and built == []
    assert "is append-only (chattr +a)" in err and len(err.strip().splitlines()) == 1, err


def test_a_noexec_file_system_is_no_place_for_the_library(tmp_path, monkeypatch):
    """On a file system mounted noexec (a hardened /tmp or home) the loader may
    not map the library's code: it was built there, failed to load, and every
    run loaded numba and started the 30-second build again ("building the
    start-up library in the background (once; ...)" each time).  Such a folder
    is passed over for the next place, and NBNUMBA_CACHE_DIR naming one gets a
    warning line and no build."""
    noexec = tmp_path / "noexec"
    noexec.mkdir()
    real = os.statvfs

    class Flags:
        def __init__(self, st, extra):
            self.f_flag = st.f_flag | extra

    def statvfs(p):
        st = real(p)
        inside = os.path.realpath(p) == str(noexec) or os.path.realpath(p).startswith(str(noexec) + os.sep)
        return Flags(st, os.ST_NOEXEC if inside else 0)

    monkeypatch.setattr(os, "statvfs", statvfs)
    for var in ("NBNUMBA_CACHE_DIR", "NUMBA_CACHE_DIR", "NBNUMBA_AOT_AUTOBUILD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NBNUMBA_CACHE_DIR", str(noexec))
    assert native.build_place(str(noexec)) == "denied"
    native.forget()
    assert not native.background_build_wanted()
    warning = native.shared_cache_dir_warning()
    assert warning is not None and "is on a file system mounted noexec" in warning, warning
    assert len(warning.splitlines()) == 1
    # without NBNUMBA_CACHE_DIR: the package's folder and the cache home on such
    # a file system, the per-user temporary folder is the place
    monkeypatch.delenv("NBNUMBA_CACHE_DIR")
    monkeypatch.setattr(native, "package_library_dir", lambda: str(noexec / "pkg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(noexec / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    monkeypatch.setattr(numba_cache, "_PINNED_TEMP_CACHE", [])
    tempfile.tempdir = None
    try:
        assert native.library_dir() == numba_cache.temp_cache_dir()
        assert numba_cache.temp_cache_dir().startswith(str(tmp_path / "t"))
    finally:
        tempfile.tempdir = None
    assert native.shared_cache_dir_warning() is None
