"""The suite's build cache (conftest._cached_build): a build is reused only
for the same command, compiler and source bytes, and a failed build is not kept."""
import os
import stat
import sys

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
