"""Helpers shared by ``nb-compare`` and ``nbnumba-probe``.

Both tools run nanoBragg-style command lines twice (the C reference and the
port), each in its own scratch directory.  To make that safe and repeatable:

* input files named on the command line (``-hkl``, ``-mat``, ...) are turned
  into absolute paths against the caller's working directory;
* output files (``-floatfile``, ``-intfile``, ...) are reduced to their base
  names so that nothing is written outside the scratch directory;
* both rules follow nanoBragg.c's reading of the flags, which matches them by
  substring: ``-intfile_x out.img`` names C's -intfile too (a line on which
  one argument both reads and writes a file is refused, exit 2);
* ``Fdump.bin`` (read silently by nanoBragg.c when ``-hkl`` is absent) is
  copied into the scratch directory when the caller's directory has one.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from nbnumba.errors import (NBError, one_line, quiet_broken_pipes, warnings_as_lines,
                            working_directory_gone)
from nbnumba.io._args import sha256_file  # noqa: F401  (the tools' C.sha256_file)

#: flags whose single argument is a file the program reads
INPUT_FLAGS = ("-hkl", "-mat", "-img", "-mask", "-sourcefile", "-stol", "-4stol", "-Q")
#: flags whose single argument is a file the program writes
OUTPUT_FLAGS = ("-floatfile", "-floatimage", "-intfile", "-intimage", "-pgmfile", "-pgmimage",
                "-noisefile", "-noiseimage", "-stolout")
FLOAT_FLAGS = ("-floatfile", "-floatimage")

_SHAPE_RE = re.compile(r"\((\d+)x(\d+) pixels\)")


#: exit status of a failed runner (C or port), shared by nb-compare and nbnumba-probe;
#: 2 is the usage-error status, as for the nbnumba CLI
EXIT_RUNNER = 6


class ToolError(Exception):
    """A one-line error with the process exit status to use."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        # one line wherever it is shown (stderr, reports): as NBError's
        return one_line(super().__str__())


class UsageParser(argparse.ArgumentParser):
    """argparse with the tools' usage-error rule: one line (no usage dump), as a
    ToolError with exit status ``usage_exit`` (2 unless the tool says otherwise)."""

    def __init__(self, *args, usage_exit: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.usage_exit = usage_exit

    def error(self, message):
        raise ToolError(message, self.usage_exit)


def timeout_seconds(text: str) -> float:
    """argparse type of ``--timeout S``: a number of seconds in (0, the longest
    wait the platform's timers take].  NaN and 1e308 reached
    ``communicate(timeout=...)``, which failed inside its wait, and a
    traceback followed; -1 timed out at once."""
    import threading
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected seconds, got %r" % text) from None
    if not 0.0 < v <= threading.TIMEOUT_MAX:
        raise argparse.ArgumentTypeError("must be > 0 and <= %.4g s, got %r"
                                         % (threading.TIMEOUT_MAX, text))
    return v


# --------------------------------------------------------------------------- argv handling


def split_double_dash(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """``[options] -- <nanoBragg flags>`` -> (options, flags); flags empty if no ``--``."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def strip_flag(args: Sequence[str], names: Iterable[str], nargs: int) -> List[str]:
    """Remove every occurrence of the flags ``names`` together with their ``nargs`` values."""
    names = set(names)
    out: List[str] = []
    i = 0
    args = list(args)
    while i < len(args):
        if args[i] in names:
            i += 1 + nargs
            continue
        out.append(args[i])
        i += 1
    return out


def flag_values(args: Sequence[str], names: Iterable[str], nargs: int) -> Optional[List[str]]:
    """Values of the last occurrence of a flag (``None`` when absent)."""
    names = set(names)
    found = None
    args = list(args)
    for i, a in enumerate(args):
        if a in names and len(args) - i - 1 >= nargs:
            found = args[i + 1:i + 1 + nargs]
    return found


@functools.lru_cache(maxsize=None)
def _c_block_roles() -> Tuple[frozenset, frozenset]:
    """(labels of nanoBragg.c's input-file blocks, labels of its output-file
    blocks), taken from what the exact spellings trigger, so that they follow
    nbnumba.flags' table of the C option loop."""
    from nbnumba.flags import c_blocks_matching
    ins = frozenset(lab for f in INPUT_FLAGS for lab in c_blocks_matching(f))
    outs = frozenset(lab for f in OUTPUT_FLAGS for lab in c_blocks_matching(f))
    return ins, outs


def c_file_role(arg: str) -> Tuple[bool, bool]:
    """(reads a file, writes a file): what nanoBragg.c does with the argument
    after ``arg``.  C tests every argument that starts with '-' (values too)
    with strstr, so ``-intfile_x`` is its -intfile; the exact spellings of
    INPUT_FLAGS/OUTPUT_FLAGS are a subset of this."""
    if not arg.startswith("-"):
        return False, False
    from nbnumba.flags import c_blocks_matching
    ins, outs = _c_block_roles()
    labels = set(c_blocks_matching(arg))
    return bool(labels & ins), bool(labels & outs)


def resolve_paths(args: Sequence[str], cwd: str) -> List[str]:
    """Absolute input paths (against ``cwd``) and base-name-only output paths,
    for every argument nanoBragg.c takes as an input or output flag (the port
    reads a subset of these spellings).  A line this cannot make safe is a
    usage error (ToolError, exit 2)."""
    from nbnumba.flags import c_blocks_matching
    args = list(args)
    out = list(args)
    for i, a in enumerate(args[:-1]):
        reads, writes = c_file_role(a)
        if not (reads or writes):
            continue
        v = args[i + 1]
        if reads and writes:
            # one value both read and written: no path serves both, in scratch or not
            raise ToolError(f"argument {a}: nanoBragg.c reads it as both an input and an "
                            f"output file flag (it matches flags by substring); no one path "
                            f"for its file keeps the run inside the scratch directory", 2)
        if reads:
            new = v if os.path.isabs(v) else os.path.abspath(os.path.join(cwd, v))
        else:
            new = os.path.basename(v.rstrip("/\\")) or "out"
        if new != v and c_blocks_matching(v):
            # the value is itself a flag to C: rewriting it would change the line's meaning
            raise ToolError(f"argument {a}: its file name {v!r} is also a flag to nanoBragg.c; "
                            f"cannot make it {'absolute' if reads else 'a base name'}", 2)
        out[i + 1] = new
    return out


def with_floatfile(args: Sequence[str], name: str = "float.bin") -> List[str]:
    """Force the float image to ``name`` (in the run directory).  Other
    spellings C reads as -floatfile (``-floatfile_x``) may stay: the flag
    added last wins in C and in the port, and resolve_paths has already made
    their names base names."""
    return strip_flag(args, FLOAT_FLAGS, 1) + ["-floatfile", name]


def stage_fdump(args: Sequence[str], src_cwd: str, run_dir: str) -> bool:
    """Copy the caller's Fdump.bin into ``run_dir`` when the command relies on it."""
    if "-hkl" in args:
        return False
    src = os.path.join(src_cwd, "Fdump.bin")
    if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(run_dir, "Fdump.bin"))
        return True
    return False


# --------------------------------------------------------------------------- running


def find_c_bin(explicit: Optional[str] = None) -> Optional[str]:
    """``--c-bin`` if given, else ``$NB_C_BIN`` (``None`` when neither is set)."""
    if explicit:
        return explicit
    env = os.environ.get("NB_C_BIN", "").strip()
    return env or None


def port_command(args: Sequence[str]) -> List[str]:
    return [sys.executable, "-m", "nbnumba.cli", *args]


def port_env() -> Dict[str, str]:
    """Environment for ``python -m nbnumba.cli`` using this very nbnumba package."""
    env = dict(os.environ)
    root = repo_root()
    pp = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = root + (os.pathsep + pp if pp else "")
    return env


def repo_root() -> str:
    import nbnumba
    return os.path.dirname(os.path.dirname(os.path.abspath(nbnumba.__file__)))


@dataclass
class RunResult:
    label: str
    cmd: List[str]
    cwd: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def start(cmd: Sequence[str], cwd: str, env: Optional[Dict[str, str]], label: str):
    """Start a runner; a missing/unrunnable program is a runner failure (exit 6)."""
    try:
        return subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise ToolError(f"{label} runner failed: cannot execute {cmd[0]}: "
                        f"{exc.strerror or exc}", EXIT_RUNNER) from None


def finish(proc, cmd, cwd, label, t0, timeout=None) -> RunResult:
    import time
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise ToolError(f"{label} runner failed: timed out after {timeout} s", EXIT_RUNNER) from None
    return RunResult(label, list(cmd), cwd, proc.returncode,
                     out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                     time.perf_counter() - t0)


def run(cmd: Sequence[str], cwd: str, env=None, label="", timeout=None) -> RunResult:
    import time
    t0 = time.perf_counter()
    p = start(cmd, cwd, env, label)
    return finish(p, cmd, cwd, label, t0, timeout)


def last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


def parse_shape(stdout: str) -> Optional[Tuple[int, int]]:
    """(slow, fast) from nanoBragg's ``(FxS pixels)`` summary line (last occurrence)."""
    m = None
    for m in _SHAPE_RE.finditer(stdout):
        pass
    if m is None:
        return None
    f, s = int(m.group(1)), int(m.group(2))
    return s, f


# --------------------------------------------------------------------------- bundles


def utc_stamp(now: Optional[_dt.datetime] = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ")


def args_hash(args: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(args).encode("utf-8")).hexdigest()[:8]


def unique_dir(parent: str, name: str) -> str:
    """Create ``parent/name`` (``name-2``, ``name-3``, ... if taken) and return it."""
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, name)
    n = 1
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
            path = os.path.join(parent, f"{name}-{n}")


def read_text(path: str, what: str) -> str:
    """The text of file ``path`` (UTF-8, bad bytes replaced, universal
    newlines), read within nbnumba.io's limits (a stream such as /dev/zero
    ran into the OOM killer); ToolError naming ``what`` otherwise."""
    from nbnumba.errors import NBError
    from nbnumba.io._args import read_all
    try:
        with open(path, "rb") as fh:
            data = read_all(fh, path)
    except OSError as exc:
        raise ToolError(f"cannot read {what}: {exc.strerror or exc}", 2) from None
    except NBError as exc:
        raise ToolError(str(exc), 2) from None
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")


def write_sha256s(bundle: str, name: str = "sha256.txt") -> str:
    """``sha256sum``-compatible list of every file under ``bundle`` (except itself)."""
    lines = []
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        for fn in sorted(files):
            p = os.path.join(root, fn)
            rel = os.path.relpath(p, bundle).replace(os.sep, "/")
            if rel == name:
                continue
            lines.append(f"{sha256_file(p)}  {rel}")
    path = os.path.join(bundle, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def git_sha(path: Optional[str] = None) -> Optional[str]:
    """The checkout's commit (``-dirty`` with uncommitted edits), None outside git."""
    path = path or repo_root()
    # a checkout another user owns (a shared install) is one git refuses to read
    # ("dubious ownership"): this process runs its code already, so reading its
    # commit is trusted for these two read-only commands
    git = ["git", "-c", "safe.directory=" + os.path.realpath(path), "-C", path]
    try:
        out = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        sha = out.stdout.strip()
        st = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
        return sha + ("-dirty" if st.returncode == 0 and st.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names=("numpy", "numba", "dvc", "cupy", "cupy-cuda12x", "torch",
                            "matplotlib", "nbnumba")) -> Dict[str, Optional[str]]:
    """Installed versions (``None`` = not installed), without importing the packages."""
    from importlib import metadata
    out: Dict[str, Optional[str]] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def shlex_join(args: Sequence[str]) -> str:
    import shlex
    return " ".join(shlex.quote(a) for a in args)


def guarded_main(prog: str, body, io_exit: Optional[int] = None) -> int:
    """Run a tool's ``body()`` with the shared error policy: ToolError -> its
    one-line message and exit code; OSError -> ``io_exit`` when given; Ctrl-C
    -> 130.  stdout: a closed pipe or descriptor ends the text, not the run
    (the files are still written); any other failure to write it (a full disk)
    is one line and ``io_exit`` (2 without it).  Never a traceback for these."""
    def stdout_error(message):
        return ToolError(message, 2 if io_exit is None else io_exit)
    # (the messages below go through the guarded streams too: with stderr
    # closed, print(file=None) would write them into stdout)
    with warnings_as_lines(prog), quiet_broken_pipes(stdout_error=stdout_error):
        if working_directory_gone(prog):
            return 2
        try:
            return body()
        except ToolError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return e.code
        except NBError as e:      # a request the engine refuses: exit 2, like the CLI
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            if io_exit is None:
                raise
            print(f"{prog}: error: {e.strerror or e}", file=sys.stderr)
            return io_exit
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130


def split_or_help(argv: Sequence[str], doc: str):
    """(tool options, nanoBragg flags) from ``argv``; None after printing ``doc``
    when -h/--help is among the tool's options."""
    opts_argv, flags = split_double_dash(argv)
    if any(a in ("-h", "--help") for a in opts_argv):
        print(doc.strip())
        return None
    return opts_argv, flags
