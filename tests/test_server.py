"""nbnumba --serve: a warm process that runs the CLI's command lines.

Each test runs real CLI processes against a real server (in a private
TMPDIR, so a developer's own server is never touched) and checks that a
served run is indistinguishable from an in-process one: the same files bit
for bit, the same messages and exit statuses, the same cleanup on Ctrl-C.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
         "-detpixels 64 -seed 1").split()
# a run long enough to interrupt (about 3-10 s on 2 cores)
LONG = ("-cell 70 80 90 85 95 105 -misset 10 5 3 -lambda 1.5 -N 8 -default_F 100 -distance 100 "
        "-detpixels 1024 -mosaic 0.5 -mosaic_dom 50 -phi 0.1 -osc 1 -phisteps 10 -oversample 2 "
        "-seed 1 -nonoise -nopgm -noprogress").split()


def _env(tmpdir, **extra):
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPATH=str(REPO))
    env.pop("XDG_RUNTIME_DIR", None)
    env.pop("NBNUMBA_SERVER", None)
    env.update(extra)
    return env


def _cli(args, cwd, env, **kw):
    return subprocess.run([sys.executable, "-m", "nbnumba.cli"] + list(args), cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)


def _served(env):
    r = _cli(["--serve", "status"], REPO, env)
    if r.returncode != 0:
        return None
    return int(r.stdout.split(" runs served")[0].rsplit(" ", 1)[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("srv")
    env = _env(tmp)
    r = _cli(["--serve", "start", "--idle-timeout", "120"], REPO, env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "server ready on" in r.stdout
    yield env
    r = _cli(["--serve", "stop"], REPO, env)
    assert r.returncode == 0 and "stopped" in r.stdout


def test_served_run_is_the_in_process_run(server, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    n0 = _served(server)
    out = ["-floatfile", "f.bin", "-intfile", "i.img", "-noisefile", "n.img", "-pgmfile", "p.pgm"]
    ra = _cli(SMALL + out, a, server)
    assert _served(server) == n0 + 1          # this one went through the server
    rb = _cli(SMALL + out, b, dict(server, NBNUMBA_SERVER="0"))
    assert _served(server) == n0 + 1          # and this one did not
    assert ra.returncode == rb.returncode == 0
    for name in ("f.bin", "i.img", "n.img", "p.pgm"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # the same messages, but for the closing line's run time
    strip = lambda s: [ln for ln in s.splitlines() if not ln.startswith("nbnumba: double")]
    assert strip(ra.stdout) == strip(rb.stdout)
    assert ra.stderr == rb.stderr
    img = np.fromfile(a / "f.bin", dtype=np.float32)
    assert img.size == 64 * 64 and img.max() > 0


def test_relative_inputs_resolve_in_the_clients_directory(server, tmp_path):
    (tmp_path / "P1.hkl").write_text("0 0 0 10\n1 0 0 20\n0 1 0 30\n0 0 1 40\n")
    r = _cli(SMALL + ["-hkl", "P1.hkl", "-floatfile", "sub/f.bin"], tmp_path, server)
    # a directory that does not exist is refused like in-process: one line, exit 2
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "sub/f.bin" in r.stderr
    r = _cli(SMALL + ["-hkl", "P1.hkl", "-floatfile", "f.bin", "-nopgm", "-nonoise"], tmp_path,
             server)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "f.bin").stat().st_size == 64 * 64 * 4
    assert (tmp_path / "Fdump.bin").exists()      # nanoBragg's cache, beside the inputs


def test_bad_input_through_the_server(server, tmp_path):
    n0 = _served(server)
    r = _cli(SMALL + ["-bogus"], tmp_path, server)
    assert _served(server) == n0 + 1
    assert r.returncode == 2
    assert r.stderr.strip() == "nbnumba: error: unknown flag '-bogus'; see -h for the list of flags"
    r = _cli(["-cell", "1", "2"], tmp_path, server)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_malformed_requests_do_not_stop_the_server(server, tmp_path):
    """A request that is JSON but no object (a list, a number), JSON nested past
    the parser's depth, or bytes that are no UTF-8 is dropped: the first of
    them stopped the server (an AttributeError on .get in its loop)."""
    import socket
    import struct
    before = _served(server)
    path = subprocess.run([sys.executable, "-c", "from nbnumba import server; print(server.socket_path())"],
                          env=server, capture_output=True, text=True, check=True).stdout.strip()
    for body in (b"[1]", b"5", b"null", b'{"op": ["run"]}', b"[" * 100000 + b"]" * 100000,
                 b"\xff\xfe"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(path)
            s.sendall(struct.pack("!I", len(body)) + body)
            assert s.recv(100) == b""           # dropped: closed without a reply
    assert _served(server) == before            # still there, and answering
    out = tmp_path / "o.bin"
    r = _cli(SMALL + ["-floatfile", str(out), "-nonoise", "-nopgm"], tmp_path, server)
    assert r.returncode == 0 and out.stat().st_size == 64 * 64 * 4
    assert _served(server) == before + 1


def test_closed_stdout_is_not_an_error(server, tmp_path):
    # like nanoBragg.c (printf fails silently): messages go nowhere, the files are written
    r = subprocess.run([sys.executable, "-m", "nbnumba.cli"] + SMALL + ["-nopgm", "-nonoise"],
                       cwd=tmp_path, env=server, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, pass_fds=(), close_fds=True,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert (tmp_path / "floatimage.bin").stat().st_size == 64 * 64 * 4


def test_file_names_that_are_not_utf8(server, tmp_path):
    """The worker prints with the client's encoding and error handler: a file
    name in-process Python prints (surrogateescape) prints through the server."""
    names = [os.fsdecode(b"f\xff.bin"), os.fsdecode(b"i\xfe.img")]
    args = SMALL + ["-nopgm", "-nonoise", "-floatfile", names[0], "-intfile", names[1]]
    env = dict(server, LC_ALL="C.UTF-8")
    out = {}
    for mode in ("served", "in-process"):
        d = tmp_path / mode
        d.mkdir()
        e = dict(env, NBNUMBA_SERVER="0") if mode == "in-process" else env
        before = _served(server)
        r = subprocess.run([sys.executable, "-m", "nbnumba.cli"] + args, cwd=d, env=e,
                           capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stderr == b""
        assert b"i\xfe.img" in r.stdout
        if mode == "served":
            assert _served(server) == before + 1
        out[mode] = r.stdout.splitlines()[:-1]      # (the last line: time and backend)
        assert sorted(os.listdir(os.fsencode(d))) == [b"f\xff.bin", b"i\xfe.img"]
    assert out["served"] == out["in-process"]


def test_ctrl_c_is_forwarded_and_leaves_nothing(server, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "nbnumba.cli"] + LONG + ["-floatfile", "f.bin"],
                         cwd=tmp_path, env=server, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    # wait until the child has printed its set-up lines (it is rendering then)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "pixel oversample steps" not in p.stdout.readline():
        pass
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted; no output written" in err
    assert [f.name for f in tmp_path.iterdir()] == []


def test_killed_client_stops_its_run(server, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "nbnumba.cli"] + LONG + ["-floatfile", "f.bin"],
                         cwd=tmp_path, env=server, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "pixel oversample steps" not in p.stdout.readline():
        pass
    p.kill()
    p.wait()
    # the orphaned run notices (at its next kernel chunk: seconds on a slow
    # machine), stops, removes its temporaries and writes nothing (a run that
    # went on to the end would have written f.bin)
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = _cli(["--serve", "status"], REPO, server).stdout
        if ", 0 running," in status:
            break
        time.sleep(0.5)
    assert ", 0 running," in status
    assert [f.name for f in tmp_path.iterdir()] == []


def test_other_numba_settings_do_not_use_this_server(server, tmp_path):
    env = dict(server, NUMBA_OPT="2")
    assert _served(env) is None           # its socket name differs
    n0 = _served(server)
    r = _cli(SMALL + ["-nopgm", "-nonoise"], tmp_path, env)
    assert r.returncode == 0
    assert _served(server) == n0


def test_a_runtime_folder_this_user_may_not_write_is_passed_over(monkeypatch):
    # after `su`, XDG_RUNTIME_DIR may name the first user's folder: the server
    # did not start ("Permission denied"); its socket now goes to TMPDIR
    import tempfile
    from nbnumba import server as srv
    from nbnumba.testing.users import as_an_ordinary_user, open_folder
    with open_folder("nb-run-", mode=0o755) as top:
        shut = os.path.join(top, "run")
        os.mkdir(shut)
        os.chmod(shut, 0o700 if os.geteuid() == 0 else 0o500)
        monkeypatch.setenv("XDG_RUNTIME_DIR", shut)
        with as_an_ordinary_user():
            got = srv.socket_dir()
        assert got == os.path.join(tempfile.gettempdir(), "nbnumba-%d" % os.getuid())
        os.chmod(shut, 0o700)
        assert srv.socket_dir() == os.path.join(shut, "nbnumba")     # its own: used


def test_lifecycle_and_stale_socket(tmp_path):
    env = _env(tmp_path)
    assert _cli(["--serve", "status"], REPO, env).returncode == 1
    r = _cli(["--serve", "start", "--idle-timeout", "60"], REPO, env, timeout=300)
    assert r.returncode == 0, r.stderr
    sock = r.stdout.split("server ready on ")[1].split(" ")[0]
    assert Path(sock).exists()
    assert oct(Path(sock).parent.stat().st_mode & 0o777) == "0o700"
    again = _cli(["--serve", "start"], REPO, env)
    assert again.returncode == 0 and "already running" in again.stdout
    assert _cli(["--serve", "stop"], REPO, env).returncode == 0
    deadline = time.monotonic() + 10
    while Path(sock).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(sock).exists()
    assert not Path(sock[:-len(".sock")] + ".lock").exists()   # (it was left behind)
    # a socket file nobody listens on (a server killed with SIGKILL): runs in-process
    import socket
    from nbnumba.server import _Addr
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _Addr(sock) as addr:
        s.bind(addr)
    s.close()
    r = _cli(SMALL + ["-nopgm", "-nonoise", "-floatfile", "f.bin"], tmp_path, env)
    assert r.returncode == 0 and (tmp_path / "f.bin").exists()
    assert _cli(["--serve", "bogus"], REPO, env).returncode == 2


def test_start_removes_the_lock_files_of_servers_long_gone(tmp_path):
    """Every edit of the sources is a new server key; each key's lock file
    stayed in the socket directory for good."""
    import fcntl
    env = _env(tmp_path)
    d = tmp_path / ("nbnumba-%d" % os.getuid())
    d.mkdir(mode=0o700)
    old = time.time() - 7200
    files = {}
    for name in ("gone", "held", "recent"):
        files[name] = d / ("server-%s.lock" % name)
        files[name].touch()
        if name != "recent":
            os.utime(files[name], (old, old))
    (d / "server-gone.sock").touch()        # the socket of a server killed with SIGKILL
    held = os.open(files["held"], os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)        # a running server of another key
    try:
        r = _cli(["--serve", "start", "--idle-timeout", "60"], REPO, env, timeout=300)
        assert r.returncode == 0, r.stderr
        try:
            assert not files["gone"].exists() and not (d / "server-gone.sock").exists()
            assert files["held"].exists() and files["recent"].exists()
        finally:
            assert _cli(["--serve", "stop"], REPO, env).returncode == 0
    finally:
        os.close(held)


def test_lock_taken_again_when_its_file_was_removed(tmp_path, monkeypatch):
    """A lock opened just before a stopping server removed the file is not the
    path's: _lock_key takes the lock of the file now at the path."""
    from nbnumba import server
    lp = str(tmp_path / "server-k.lock")
    real_open = os.open
    calls = []

    def racing_open(path, *a, **kw):
        fd = real_open(path, *a, **kw)
        if path == lp and not calls:
            calls.append(1)
            os.unlink(lp)           # the server stops between our open and our flock
        return fd
    monkeypatch.setattr(server.os, "open", racing_open)
    fd = server._lock_key(lp)
    monkeypatch.undo()
    try:
        assert fd is not None and os.fstat(fd).st_ino == os.stat(lp).st_ino
        assert server._lock_key(lp) is None          # and it excludes the next one
    finally:
        server._release_key(lp, fd)
    assert not os.path.exists(lp)


def test_server_key_is_the_same_for_every_name_of_the_interpreter(tmp_path, monkeypatch):
    # bin/python3 (the `nbnumba` script) and bin/python (`python -m`) had other keys
    from nbnumba import server
    key = server.server_key()
    link = tmp_path / "python3"
    link.symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setattr(sys, "executable", str(link))
    assert server.server_key() == key
    monkeypatch.setattr(sys, "prefix", str(tmp_path))      # another venv: another server
    assert server.server_key() != key


def test_serve_usage_errors_are_one_line(capsys):
    # (argparse printed its usage line too); a NaN timeout would never expire
    from nbnumba import server
    for bad in (["bogus"], ["run", "--idle-timeout", "0"], ["run", "--idle-timeout", "nan"],
                ["start", "--idle-timeout", "abc"]):
        assert server.main(bad) == 2, bad
        out, err = capsys.readouterr()
        assert out == "" and len(err.splitlines()) == 1 and "error:" in err, (bad, err)


def test_no_usable_temporary_directory(monkeypatch, capsys):
    """No writable temporary directory (a read-only root file system) and no
    XDG_RUNTIME_DIR: every CLI run ended in gettempdir's FileNotFoundError
    traceback as the client looked for a server, and ``--serve start`` /
    ``status`` did too.  Now the run goes on in-process, and --serve says why
    in one line (exit 2)."""
    import tempfile

    from nbnumba import server

    def nowhere():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("NBNUMBA_SERVER", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", nowhere)
    assert server.forward(SMALL) is None
    for action in ("start", "status", "stop", "run"):
        assert server.main([action]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(
            "nbnumba --serve: error: no directory for the server's socket: No usable temporary "
            "directory found in ['/tmp']; set TMPDIR or XDG_RUNTIME_DIR")


def test_a_socket_folder_without_flock_is_named(tmp_path, monkeypatch, capsys):
    """TMPDIR on a file system without flock (Lustre's noflock: ENOSYS): the
    server said "a server is already running (or starting)"; now it names the
    lock and the fix, exit 2."""
    import errno
    import fcntl

    from nbnumba import server

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(fcntl, "flock", no_flock)
    assert server.serve(5.0, ready=lambda path: None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot lock " in err and "(Function not implemented): the " \
        "server needs a file system with flock; set XDG_RUNTIME_DIR or TMPDIR to a local " \
        "directory" in err, err


def test_two_starts_at_once_leave_one_reachable_server(tmp_path):
    """Both `start`s at the same moment used to bind: the loser served on an
    unlinked socket that neither `status` nor `stop` could reach."""
    env = _env(tmp_path)
    cmd = [sys.executable, "-m", "nbnumba.cli", "--serve", "start", "--idle-timeout", "60"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    try:
        assert [p.returncode for p in procs] == [0, 0], outs
        said = sorted(o[0].split(" on ")[0].split(" (")[0] for o in outs)
        assert said == ["nbnumba: a server is already running", "nbnumba: server ready"], outs
        assert _served(env) == 0
    finally:
        assert _cli(["--serve", "stop"], REPO, env).returncode == 0
    # nothing else answers, and no second server process is left
    deadline = time.monotonic() + 10
    left = _server_pids(tmp_path)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _server_pids(tmp_path)
    assert left == []
    assert _cli(["--serve", "status"], REPO, env).returncode == 1


def _server_pids(tmpdir):
    """Live processes whose environment has this TMPDIR and that run --serve."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--serve" in cmd and ("TMPDIR=%s" % tmpdir).encode() in env:
            pids.append(int(d.name))
    return pids


@pytest.mark.parametrize("reply", [b"[1]", b"{}", b'{"pid": "x"}', b"null"])
def test_client_runs_in_process_when_the_reply_is_malformed(tmp_path, monkeypatch, reply):
    """A server that answers a run with no {"pid": N} object: the client ran
    into an AttributeError or KeyError traceback; now it runs in-process."""
    import socket
    import struct
    import threading
    from nbnumba import server as S
    path = str(tmp_path / "s.sock")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)

    def answer():
        conn, _ = lsock.accept()
        with conn:
            socket.recv_fds(conn, 1 << 22, 3)
            conn.sendall(struct.pack("!I", len(reply)) + reply)
    t = threading.Thread(target=answer)
    t.start()
    monkeypatch.setattr(S, "socket_path", lambda key=None: path)
    monkeypatch.delenv("NBNUMBA_SERVER", raising=False)
    try:
        assert S.forward(["-h"]) is None
    finally:
        t.join(10)
        lsock.close()
