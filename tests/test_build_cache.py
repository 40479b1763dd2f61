"""The suite's build cache (conftest._cached_build): a build is reused only
for the same command, compiler and source bytes, and a failed build is not kept.
The start-up library (conftest._start_library) is copied from it when intact,
and built again and replaced when damaged."""
import os
import stat
import subprocess
import sys
import tempfile

from conftest import _cached_build


class _Cache:
    def __init__(self, root):
        self.root = root

    def mkdir(self, name):
        d = self.root / name
        d.mkdir(exist_ok=True)
        return d


class _Config:
    def __init__(self, root):
        self.cache = _Cache(root)


def _fake_compiler(tmp_path):
    """A 'compiler' that copies its source to -o, notes each run in a log, warns
    on stderr, and fails when the source says FAIL; ``--version`` prints 1.0."""
    exe = tmp_path / "fakecc"
    exe.write_text(
        "#!%s\nimport sys\n"
        "if sys.argv[1:] == ['--version']:\n    print('fakecc 1.0'); sys.exit(0)\n"
        "src, out = sys.argv[1], sys.argv[3]\n"
        "open(%r, 'a').write('run\\n')\n"
        "text = open(src).read()\n"
        "sys.stderr.write('warning: built\\n')\n"
        "if 'FAIL' in text:\n    sys.exit(1)\n"
        "open(out, 'w').write(text.upper())\n" % (sys.executable, str(tmp_path / "log")))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def _build(cfg, exe, src, out):
    return _cached_build(cfg, [str(exe), str(src), "-o", str(out)], out, (src,), str(exe))


def test_same_sources_reuse_the_build_and_changed_bytes_rebuild(tmp_path):
    cfg, exe = _Config(tmp_path), _fake_compiler(tmp_path)
    src = tmp_path / "k.cu"
    src.write_text("kernel a")
    runs = lambda: (tmp_path / "log").read_text().count("run")

    assert _build(cfg, exe, src, tmp_path / "o1") == (0, "warning: built\n")
    assert _build(cfg, exe, src, tmp_path / "o2") == (0, "warning: built\n")   # stderr kept
    assert runs() == 1 and (tmp_path / "o2").read_text() == "KERNEL A"

    src.write_text("kernel b")            # one changed byte: built again
    assert _build(cfg, exe, src, tmp_path / "o3")[0] == 0
    assert runs() == 2 and (tmp_path / "o3").read_text() == "KERNEL B"


def test_a_failed_build_is_not_kept(tmp_path):
    cfg, exe = _Config(tmp_path), _fake_compiler(tmp_path)
    src = tmp_path / "k.cu"
    src.write_text("FAIL")
    assert _build(cfg, exe, src, tmp_path / "o1")[0] == 1
    assert _build(cfg, exe, src, tmp_path / "o2")[0] == 1
    assert (tmp_path / "log").read_text().count("run") == 2
    assert not [p for p in os.listdir(tmp_path / "nb_builds")]


# ---- the start-up library (conftest._start_library) -----------------------

def _library_setup(tmp_path, monkeypatch):
    """The compiler a fake, the helper state private to the test: (config,
    the library's cache folder, the library's file name)."""
    import conftest
    from nbnumba.kernels import native
    monkeypatch.setattr(conftest, "_PROCS", [])
    monkeypatch.setattr(conftest, "_DONE", {})
    # the helper folders (conftest._helper_dir) under tmp_path: with _PROCS
    # private, pytest_sessionfinish never removed them (2 per run left in /tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("NBNUMBA_TEST_LIBRARY", "")      # restored afterwards
    exe = _fake_compiler(tmp_path)
    monkeypatch.setattr(conftest, "_c_compiler", lambda: str(exe))
    cfg = _Config(tmp_path)
    return cfg, conftest._library_cache(cfg), os.path.basename(native.library_path())


def _library_run(cfg, monkeypatch, build_bytes=None):
    """conftest._start_library, where a build (a stand-in for
    nbnumba.kernels.aot, run as a process) writes ``build_bytes`` as the
    library; None: no build may start.  (dir, exit status, stderr)."""
    import conftest
    from nbnumba.kernels import native

    def fake_build(numba_cache=False):
        assert build_bytes is not None, "a build started although the cache held the library"
        lib = native.library_path()
        code = ("import hashlib\nb = %r\nopen(%r, 'wb').write(b)\n"
                "open(%r, 'w').write(hashlib.sha256(b).hexdigest() + '\\n')\n"
                % (build_bytes, lib, native.digest_path(lib)))
        return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    monkeypatch.setattr(native, "start_build", fake_build)
    conftest._start_library(cfg)
    out = conftest._wait("LIBRARY", timeout=60)
    for _, _, t in conftest._PROCS:
        if t is not None:
            t.join()            # the watcher stores the build before it writes the status
    return out


def _put(folder, name, data, digest_of=None):
    import hashlib
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    (folder / (name + ".sha256")).write_text(hashlib.sha256(digest_of or data).hexdigest() + "\n")


def test_the_library_is_copied_from_the_cache_without_a_build(tmp_path, monkeypatch):
    from nbnumba.kernels import native
    cfg, hit, name = _library_setup(tmp_path, monkeypatch)
    _put(hit, name, b"LIBRARY BYTES")
    d, rc, err = _library_run(cfg, monkeypatch, build_bytes=None)
    assert (rc, err) == (0, "")
    lib = os.path.join(d, "lib", name)
    assert open(lib, "rb").read() == b"LIBRARY BYTES" and native._intact(lib)


def test_a_damaged_cached_library_is_built_again_and_replaced(tmp_path, monkeypatch):
    from nbnumba.kernels import native
    cfg, hit, name = _library_setup(tmp_path, monkeypatch)
    _put(hit, name, b"LIBRA", digest_of=b"LIBRARY BYTES")     # cut short after its digest
    d, rc, err = _library_run(cfg, monkeypatch, build_bytes=b"NEW BUILD")
    assert rc == 0
    assert (hit / name).read_bytes() == b"NEW BUILD" and native._intact(str(hit / name))
    assert not [p for p in os.listdir(hit.parent) if p.startswith(".tmp-")]
