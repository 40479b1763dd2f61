"""A warm nbnumba process that renders command lines for short-lived clients.

Every ``python -m nbnumba.cli`` pays most of a second before its first pixel:
``import numba`` maps llvmlite's 180 MB library, and numba's first use of a
compiled function loads its typing and lowering tables.  nanoBragg users drive
the program from shell loops of small images, where that start-up is most of
the cost.  ``nbnumba --serve start`` keeps one process with numba imported and
every kernel loaded; while it runs, each ``nbnumba ...`` command (the CLI's
``main``) hands its argument list to it and waits for the exit status.

How one request runs:

* The client sends its argv, working directory, environment, umask and CPU
  affinity, and its stdin/stdout/stderr file descriptors (``SCM_RIGHTS``), over
  a Unix socket in a directory only the user can enter.
* The server forks.  The child takes over those descriptors, directory,
  environment, umask and affinity, runs the CLI's ``main(argv)`` exactly as a
  fresh process would (same flags, same messages, same atomic output rules),
  and sends back the exit status.  The server itself never renders, so a crash
  or an interrupted run cannot damage it, and runs may overlap.
* Ctrl-C or SIGTERM on the client is forwarded to the child (exit 130/143,
  no partial files, as in-process).  If the client dies, the child is
  terminated the same way.

The client only uses the server when it was started from the same
interpreter, the same nbnumba sources (their sizes and modification times)
and the same ``NUMBA_*`` settings, which all go into the socket's name; any
other server is invisible to it.  ``NBNUMBA_SERVER=0`` turns the client side
off.  Limits: resource limits (``ulimit``) are the server's, not the client's.

This module's client half imports only the standard library: it runs before
numpy or numba would be imported.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

#: seconds without a request after which a server exits (``--idle-timeout``)
DEFAULT_IDLE_TIMEOUT = 900.0

_MAX_REQUEST = 1 << 22          # bytes of JSON a request may carry (argv + environment)


# ---- where the socket lives ------------------------------------------------------
def _package_fingerprint() -> str:
    """sizes and mtimes of the package's Python sources: a changed source is
    another server (the running one holds the old code)."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha1(root.encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith((".py", ".cu", ".h")):
                st = os.stat(os.path.join(dirpath, name))
                h.update(("%s/%s %d %d;" % (dirpath, name, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def server_key(environ=None) -> str:
    """What a server must share with a client to serve it."""
    env = os.environ if environ is None else environ
    numba_env = sorted((k, v) for k, v in env.items() if k.startswith("NUMBA_"))
    h = hashlib.sha1()
    # the interpreter's real path: `nbnumba` runs under the venv's bin/python3, and
    # `python -m nbnumba.cli` under bin/python, two names of one interpreter
    # (sys.prefix tells the venvs apart); with the names, each missed the other's server
    h.update(json.dumps([os.path.realpath(sys.executable), sys.prefix, sys.version,
                         _package_fingerprint(), numba_env]).encode())
    return h.hexdigest()[:16]


def socket_dir() -> str:
    """A directory only this user can enter: ``$XDG_RUNTIME_DIR/nbnumba`` when
    that exists and this user may write it, else ``$TMPDIR/nbnumba-<uid>``
    (after ``su``, XDG_RUNTIME_DIR may still name the first user's folder: the
    server did not start, "Permission denied")."""
    from .io.atomic import may_access
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and may_access(base, os.W_OK | os.X_OK):
        return os.path.join(base, "nbnumba")
    import tempfile
    return os.path.join(tempfile.gettempdir(), "nbnumba-%d" % os.getuid())


def socket_path(key=None) -> str:
    return os.path.join(socket_dir(), "server-%s.sock" % (key or server_key()))


class _Addr:
    """A socket path short enough for AF_UNIX (108 bytes): a long one is
    reached through /proc/self/fd/N/NAME, N a descriptor of its directory."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        if len(os.fsencode(self.path)) < 100:
            return self.path
        d, name = os.path.split(self.path)
        self.fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        return "/proc/self/fd/%d/%s" % (self.fd, name)

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)


def _private_dir(path) -> None:
    """Create ``path`` mode 0700, or check that an existing one is ours and private."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    import stat
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError("%s is not a private directory of this user" % path)


# ---- framing -------------------------------------------------------------------------
def _send_msg(sock, obj, fds=()) -> None:
    data = json.dumps(obj).encode()
    payload = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [payload], list(fds))
    else:
        sock.sendall(payload)


def _recv_exact(sock, n) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def _recv_msg(sock, want_fds=0):
    """(object, fds) of one framed message."""
    fds = []
    if want_fds:
        first, fds, _flags, _addr = socket.recv_fds(sock, 65536, want_fds)
        if not first:
            raise EOFError("connection closed")
    else:
        first = _recv_exact(sock, 4)
    if len(first) < 4:
        first += _recv_exact(sock, 4 - len(first))
    (n,) = struct.unpack("!I", first[:4])
    if n > _MAX_REQUEST:
        raise ValueError("request too large")
    data = first[4:]
    if len(data) < n:
        data += _recv_exact(sock, n - len(data))
    return json.loads(data[:n].decode()), fds


# ---- client ------------------------------------------------------------------------
def forward(argv, argv0=None):
    """Run ``argv`` on a matching server; its exit status, or None when no
    server is there (the caller then runs in-process)."""
    if os.environ.get("NBNUMBA_SERVER", "1") == "0":
        return None
    try:
        path = socket_path()
    except OSError:     # no usable temporary directory (gettempdir): no server either
        return None
    if not os.path.exists(path):
        return None
    try:
        for fd in (0, 1, 2):    # a closed one would be reused by the socket below
            os.fstat(fd)
    except OSError:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _Addr(path) as addr:
            sock.connect(addr)
    except OSError:             # a stale socket: the server is gone
        sock.close()
        return None
    umask = os.umask(0)
    os.umask(umask)
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        # (a removed working directory or a closed stdio descriptor: in-process
        # gives the usual message)
        req = {"op": "run", "argv": list(argv), "argv0": argv0 or sys.argv[0], "cwd": os.getcwd(),
               "env": dict(os.environ), "umask": umask, "affinity": affinity,
               "stdio": [_text_mode(f) for f in (sys.stdin, sys.stdout, sys.stderr)]}
        _send_msg(sock, req, fds=(0, 1, 2))
        reply, _ = _recv_msg(sock)
    except (OSError, EOFError, ValueError):
        sock.close()
        return None             # nothing ran yet: run in-process instead
    try:
        # (a reply that is no {"pid": N} object: no run started, run in-process)
        if not isinstance(reply, dict) or reply.get("refused"):
            raise ValueError("refused")
        child = int(reply["pid"])
    except (KeyError, TypeError, ValueError):
        sock.close()
        return None

    def relay(signum, frame):
        try:
            os.kill(child, signum)
        except OSError:
            pass
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            old[sig] = signal.signal(sig, relay)
        except (ValueError, OSError):
            pass
    try:
        while True:
            try:
                done, _ = _recv_msg(sock)
                return int(done["status"])
            except InterruptedError:
                continue
            except (OSError, EOFError, ValueError, KeyError, TypeError):
                print("nbnumba: error: the nbnumba server's worker for this run died; "
                      "run again with NBNUMBA_SERVER=0", file=sys.stderr)
                return 1
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        sock.close()


def _text_mode(stream):
    """(encoding, errors) of one of the client's text streams: the worker opens
    the same descriptor with the same ones, so that what prints in-process
    (a file name that is not UTF-8, under surrogateescape) prints there too."""
    return [getattr(stream, "encoding", None) or "utf-8",
            getattr(stream, "errors", None) or "strict"]


def _control(op, key=None):
    """Send a control request (status, stop); the reply, or None with no server."""
    path = socket_path(key)
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _Addr(path) as addr:
            sock.connect(addr)
        _send_msg(sock, {"op": op}, fds=(0,))   # every request carries fds
        return _recv_msg(sock)[0]
    except (OSError, EOFError, ValueError):
        return None
    finally:
        sock.close()


# ---- server --------------------------------------------------------------------------
def _warm() -> None:
    """Import and load everything a run needs, so that children start warm."""
    from .jitcache import warmup
    with open(os.devnull, "w") as null:
        warmup(file=null)
    import importlib
    for name in ("api", "flags", "model", "outputs", "summary"):   # for the children
        importlib.import_module("nbnumba." + name)


def _serve_child(conn, req, fds) -> None:
    """In the forked child: become the client's process and run its argv."""
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.umask(int(req["umask"]))
        if req.get("affinity"):
            try:
                os.sched_setaffinity(0, req["affinity"])
            except OSError:
                pass
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        (ienc, ierr), (oenc, oerr), (eenc, eerr) = req["stdio"]
        sys.stdin = open(0, "r", encoding=ienc, errors=ierr, closefd=False)
        sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=oenc,
                          errors=oerr, closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding=eenc, errors=eerr, closefd=False)
        sys.argv = [req["argv0"]] + list(req["argv"])
        _send_msg(conn, {"pid": os.getpid()})
    except Exception as e:      # the client has not been told a pid: it runs in-process
        try:
            _send_msg(conn, {"refused": str(e)})
        finally:
            os._exit(0)
    import threading
    running = [True]

    def watch():
        # the client went away (killed): stop like SIGTERM (temporaries removed)
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        if running[0]:
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, daemon=True).start()
    status = 1
    try:
        from . import cli
        cli._term_as_interrupt()
        status = cli.main(list(req["argv"]))
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        status = 130
    except BaseException:                     # a bug: the traceback goes to the client
        import traceback
        traceback.print_exc()
        status = 1
    finally:
        # done: a late SIGTERM (the client closing) must not interrupt the reply
        running[0] = False
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        try:
            _send_msg(conn, {"status": int(status)})
        except OSError:
            pass
        os._exit(0)


def _reap(children) -> None:
    """Forget the finished runs in ``children`` (pids), without waiting."""
    while children:
        try:
            pid, _st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)


#: a lock file of another key, unheld and at least this old (s), is removed at a
#: server's start: every edit of the sources is a new key, and each left its file
STALE_LOCK_AGE = 3600.0


def _lock_key(lock_path):
    """An exclusive lock on ``lock_path`` (its descriptor), or None when another
    process holds it.  A server removes its lock file as it stops; one opened
    just before that removal is not the path's any more, so the lock is taken
    again on the new file (else two servers could each hold a lock of one key)."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:         # no flock here (Lustre's noflock: ENOSYS; NFS: ENOLCK)
            os.close(fd)
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release_key(lock_path, fd) -> None:
    """Remove the lock file (while still holding it), then drop the lock."""
    try:
        if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
            os.unlink(lock_path)
    except OSError:
        pass
    os.close(fd)


def _sweep_stale(directory, own_lock) -> None:
    """Remove the lock files (and sockets) of servers of other keys that are no
    longer running: their lock is free and the file is STALE_LOCK_AGE old."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        if not (name.startswith("server-") and name.endswith(".lock")):
            continue
        lp = os.path.join(directory, name)
        if lp == own_lock:
            continue
        try:
            if now - os.stat(lp).st_mtime < STALE_LOCK_AGE:
                continue        # (a server of that key may be starting right now)
        except OSError:
            continue
        try:
            fd = _lock_key(lp)
        except OSError:
            continue
        if fd is None:
            continue            # its server is running
        try:
            os.unlink(lp[:-len(".lock")] + ".sock")     # left by a killed server
        except OSError:
            pass
        _release_key(lp, fd)


def serve(idle_timeout=DEFAULT_IDLE_TIMEOUT, ready=None, log=None, busy=None) -> int:
    """Run a server in this process until ``stop`` or ``idle_timeout`` seconds
    without requests.  ``ready(path)`` is called once it accepts requests;
    ``busy()`` (its value returned) when another server holds this key."""
    log = log or sys.stderr
    key = server_key()
    path = socket_path(key)
    _private_dir(socket_dir())
    # One server per key: an exclusive lock held for the server's life (the
    # kernel drops it when the process dies, even by SIGKILL).  Checking for a
    # socket and then binding let two `start`s at the same moment both bind;
    # the loser served on an unlinked socket nobody could reach or stop.
    lock_path = path[:-len(".sock")] + ".lock"
    try:
        lock = _lock_key(lock_path)
    except OSError as exc:      # (it said "a server is already running")
        print("nbnumba: error: cannot lock %s (%s): the server needs a file system with flock; "
              "set XDG_RUNTIME_DIR or TMPDIR to a local directory"
              % (lock_path, exc.strerror or exc), file=log)
        return 2
    if lock is None:
        if busy is not None:
            return busy()
        print("nbnumba: error: a server is already running (or starting) on %s" % path, file=log)
        return 2
    try:
        _sweep_stale(os.path.dirname(path), lock_path)
        return _serve_locked(key, path, lock, idle_timeout, ready, log)
    finally:
        _release_key(lock_path, lock)


def _serve_locked(key, path, lock, idle_timeout, ready, log) -> int:
    """serve() once this process holds the key's lock."""
    if os.path.lexists(path):
        os.unlink(path)         # left by a server that was killed: it held the lock
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    _warm()
    tmp = path + ".%d.tmp" % os.getpid()
    with _Addr(tmp) as addr:
        sock.bind(addr)
    os.chmod(tmp, 0o600)
    sock.listen(64)
    os.replace(tmp, path)       # clients never see a socket that does not answer yet
    ino = os.stat(path).st_ino
    started = time.time()
    served = 0
    children = set()
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    if ready is not None:
        ready(path)
    last = time.monotonic()
    try:
        while not stop:
            _reap(children)
            if not children and time.monotonic() - last > idle_timeout:
                break
            sock.settimeout(1.0)
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            last = time.monotonic()
            fds = []
            _reap(children)      # (again, so that status counts only live runs)
            try:
                conn.settimeout(10.0)
                cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
                _pid, uid, _gid = struct.unpack("3i", cred)
                if uid != os.getuid():
                    raise PermissionError("peer uid %d" % uid)
                req, fds = _recv_msg(conn, want_fds=3)
                if not isinstance(req, dict):
                    # (a JSON list or number: an AttributeError on .get stopped the server)
                    raise ValueError("not a request object")
                op = req.get("op")
                if op == "status":
                    _send_msg(conn, {"pid": os.getpid(), "since": started, "served": served,
                                     "running": len(children), "key": key})
                elif op == "stop":
                    _send_msg(conn, {"stopping": True})
                    stop = True
                elif op == "run" and len(fds) == 3:
                    conn.settimeout(None)
                    pid = os.fork()
                    if pid == 0:
                        try:        # the child never returns into this loop
                            sock.close()
                            os.close(lock)  # (the lock is the server's, not a run's)
                            _serve_child(conn, req, fds)
                        finally:
                            os._exit(1)
                    children.add(pid)
                    served += 1
            except (OSError, EOFError, ValueError, RecursionError) as e:
                # (RecursionError: JSON nested past the parser's depth)
                print("nbnumba: server: dropped a request: %s" % e, file=log)
            finally:
                for fd in fds:
                    os.close(fd)
                conn.close()
    finally:
        try:        # only our own socket: a newer server may have replaced it
            if os.stat(path).st_ino == ino:
                os.unlink(path)
        except OSError:
            pass
        sock.close()
    return 0


def main(argv) -> int:
    """``nbnumba --serve [start|run|stop|status] [--idle-timeout S]``."""
    from .tools._common import ToolError, UsageParser
    p = UsageParser(prog="nbnumba --serve",
                                description="a warm nbnumba process that runs the CLI's command "
                                            "lines for it (see docs/performance.md)")
    p.add_argument("action", nargs="?", default="start", choices=("start", "run", "stop", "status"),
                   help="start: in the background, return once it answers (default); run: in "
                        "the foreground; stop; status")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, metavar="S",
                   help="exit after S seconds without a request (default %(default)g; inf: "
                        "never)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:         # -h
        return 0 if e.code == 0 else 2
    except ToolError as e:          # one line, no usage dump
        print("nbnumba --serve: error: %s" % e, file=sys.stderr)
        return e.code
    if not a.idle_timeout > 0:      # (NaN too: a NaN timeout never expires)
        print("nbnumba: error: --idle-timeout must be a number of seconds > 0 (got %s)"
              % a.idle_timeout, file=sys.stderr)
        return 2
    try:
        socket_dir()
    except OSError as exc:      # (gettempdir: no usable temporary directory)
        print("nbnumba --serve: error: no directory for the server's socket: %s; set TMPDIR or "
              "XDG_RUNTIME_DIR to a writable directory" % (exc.strerror or exc), file=sys.stderr)
        return 2
    if a.action == "status":
        st = _control("status")
        if st is None:
            print("nbnumba: no server for this installation")
            return 1
        print("nbnumba: server pid %d, up %.0f s, %d runs served, %d running, socket %s"
              % (st["pid"], time.time() - st["since"], st["served"], st["running"], socket_path()))
        return 0
    if a.action == "stop":
        st = _control("stop")
        print("nbnumba: server stopped" if st else "nbnumba: no server for this installation")
        return 0 if st else 1
    if a.action == "run":
        return serve(a.idle_timeout, ready=lambda path: print(
            "nbnumba: server ready on %s" % path, file=sys.stderr, flush=True))
    return _start_background(a.idle_timeout)


def _start_background(idle_timeout) -> int:
    """Fork a detached server and return when it answers (or say why not)."""
    if _control("status") is not None:
        print("nbnumba: a server is already running (%s)" % socket_path())
        return 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                 # detach: new session, no terminal, cwd /
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        status = 1
        try:
            def ready(path):
                os.write(w, b"ok " + path.encode())
                os.close(w)
                os.dup2(null, 2)

            def busy():         # another `start` won the lock a moment ago
                os.write(w, b"busy")
                return 0
            status = serve(idle_timeout, ready=ready, busy=busy)
        except BaseException as e:   # tell the waiting parent why
            try:
                os.write(w, ("error %s" % e).encode())
            except OSError:
                pass
        os._exit(status)
    os.close(w)
    os.waitpid(pid, 0)
    msg = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        msg += chunk
    os.close(r)
    text = msg.decode(errors="replace")
    if text == "busy":          # the winner warms up (seconds), then answers
        for _ in range(600):
            if _control("status") is not None:
                print("nbnumba: a server is already running (%s)" % socket_path())
                return 0
            time.sleep(0.1)
        print("nbnumba: error: another server was starting and did not answer within 60 s",
              file=sys.stderr)
        return 1
    if text.startswith("ok "):
        print("nbnumba: server ready on %s (stops after %g s idle; `nbnumba --serve stop`)"
              % (text[3:], idle_timeout))
        return 0
    print("nbnumba: error: the server did not start: %s" % (text[6:] or "it exited"),
          file=sys.stderr)
    return 1
