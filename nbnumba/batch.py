"""Many images in one process: ``nbnumba.simulate_many(list_of_argv)`` and
``nbnumba --batch commands.txt``.

Each command line is an independent nanoBragg run (its own flags, inputs and
output files).  Lines are parsed in order in the calling thread (relative
paths resolve in ``cwd``), then rendered on a thread pool: by default one
worker per core, each rendering its images with a single-threaded kernel,
which beats one multi-threaded kernel per image for small images (see
docs/performance.md).  A failing line is reported with its message and exit
status and does not stop the others.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional, Sequence

import numpy as np


@dataclass
class BatchItem:
    """Outcome of one command line of a batch."""
    index: int                    # 0-based position in the batch
    argv: List[str]
    ok: bool = False
    result: Optional[object] = None   # nbnumba.api.Result (None when failed or not kept)
    error: Optional[str] = None       # one-line message when failed
    exit_code: int = 0                # what ``nbnumba <argv>`` would have returned
    seconds: float = 0.0
    written: List[str] = field(default_factory=list)
    line: int = 0                     # line number in the batch file (1-based), if any


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _fail(item: BatchItem, exc: BaseException) -> BatchItem:
    from .errors import NBError
    item.ok = False
    item.result = None
    if isinstance(exc, NBError):
        item.error = str(exc)
        item.exit_code = exc.exit_code
    elif isinstance(exc, MemoryError):
        item.error = "out of memory for this detector/sampling size"
        item.exit_code = 2
    else:
        item.error = "internal error: %s: %s" % (type(exc).__name__, exc)
        item.exit_code = 1
    return item


def _count_arg(name: str, v) -> Optional[int]:
    """workers=/threads= of simulate_many: None (the default) or a whole number
    >= 1 (1.5, "x", 0 and -5 were taken as 1, a ValueError or all cores)."""
    if v is None:
        return None
    from .validate import is_whole
    if not is_whole(v) or v < 1:
        from .errors import ConfigError
        raise ConfigError("%s: expected a whole number >= 1 (or None for the default), got %r"
                          % (name, v))
    return int(v)


def _paths_arg(protect) -> list:
    """protect= of simulate_many: file names (text or os.PathLike); one name
    on its own was read as a list of one-character names (nothing protected)."""
    from .errors import ConfigError
    if protect is None:
        return []
    if isinstance(protect, (str, bytes, os.PathLike)) or not hasattr(protect, "__iter__"):
        raise ConfigError("protect: expected a list of file names, got %s%s"
                          % (type(protect).__name__, ": wrap one name in a list"
                             if isinstance(protect, (str, os.PathLike)) else ""))
    protect = list(protect)
    for p in protect:
        if not isinstance(p, (str, os.PathLike)) or "\x00" in str(os.fspath(p)):
            raise ConfigError("protect: expected file names (text, without NUL bytes), got %r"
                              % (p,))
    return protect


def simulate_many(argvs: Sequence[Sequence[str]], cwd: Optional[str] = None,
                  workers: Optional[int] = None, threads: Optional[int] = None,
                  write: bool = False, keep_results: bool = True,
                  on_done: Optional[Callable[[BatchItem], None]] = None,
                  protect: Sequence[str] = (), labels: Optional[Sequence[str]] = None
                  ) -> List[BatchItem]:
    """Simulate every command line of ``argvs``; returns one BatchItem per line,
    in input order (``item.ok``, ``item.result``, ``item.error``).

    argvs: command lines, each a list of words (any iterable of them); one
        that is not (None, a string) fails alone, with its own error.
    cwd: directory that relative paths resolve in (default: the process's
        working directory), which is never changed: calls from several
        threads with different ``cwd`` do not disturb each other.
    workers: images rendered at once, a whole number >= 1 (default: the
        usable cores).
    threads: kernel threads per image, a whole number >= 1 (default: 1 when
        workers > 1, else all cores); a line's own ``-threads`` wins.
    write: also write each line's nanoBragg files (float/int/noise/PGM images,
        Fdump.bin), as ``nbnumba <argv>`` would.
    keep_results: False drops each Result once it is written (saves memory).
    on_done: called with each finished item, in completion order (from the
        calling thread's pool workers; keep it quick).
    protect: with ``write``, files no line may write (``--batch`` passes its
        command file).  With ``write``, a line that would write a file an
        earlier line writes fails alone, before anything renders (the lines
        run at once: which image ended up there depended on the threads'
        timing).  The Fdump.bin cache counts as an output of each line with
        -hkl, and lines of one -hkl file may share it (they write the same
        bytes); a line without -hkl, which reads the cache when it exists,
        fails when another line writes it.
    labels: names of the lines for those messages (default ``argvs[i]``)."""
    from concurrent.futures import ThreadPoolExecutor
    from .validate import argv_words, resolve_cwd
    from .errors import ConfigError
    from .flags import parse_argv

    if argvs is None or isinstance(argvs, (str, bytes)):
        raise ConfigError("argvs: expected a list of command lines, each a list of arguments "
                          "(words), got %s%s" % (type(argvs).__name__, ": split each line, e.g. "
                                                 "shlex.split(line)" if argvs is not None else ""))
    try:
        argvs = list(argvs)          # (any iterable: a generator has no len())
    except TypeError:
        raise ConfigError("argvs: expected a list of command lines (lists of words), got %s"
                          % type(argvs).__name__) from None
    workers = _count_arg("workers", workers)
    threads = _count_arg("threads", threads)
    for name, v in (("write", write), ("keep_results", keep_results)):
        if not isinstance(v, (bool, np.bool_)):
            raise ConfigError("%s: expected True or False, got %r" % (name, v))
    protect = _paths_arg(protect)
    if labels is not None:
        # (a string's characters were taken as the lines' names; a short list
        # raised an IndexError while another line's error was being reported)
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
            raise ConfigError("labels: expected one name (text) per command line, got %s"
                              % type(labels).__name__)
        labels = list(labels)
        if len(labels) != len(argvs) or not all(isinstance(x, str) for x in labels):
            raise ConfigError("labels: expected %d name(s) (text), one per command line, got %s"
                              % (len(argvs), "%d" % len(labels) if len(labels) != len(argvs)
                                 else repr(next(x for x in labels if not isinstance(x, str)))))
    if on_done is not None and not callable(on_done):
        raise ConfigError("on_done: expected a function of one BatchItem, got %s"
                          % type(on_done).__name__)
    # relative paths resolve in cwd through Config.workdir and parse_argv's cwd:
    # no os.chdir, which two threads' calls would undo for each other
    cwd = resolve_cwd(cwd)
    from .errors import CWD_GONE, cwd_gone
    if cwd is None and cwd_gone():     # (a FileNotFoundError traceback from realpath)
        raise ConfigError(CWD_GONE)

    n = len(argvs)
    workers = max(1, min(workers or _cores(), max(n, 1)))
    per_image = threads if threads else (1 if workers > 1 else None)
    items, unusable = [], {}
    for i, argv in enumerate(argvs):
        try:       # a line that is no list of words fails alone, with its own error
            w = [str(a) for a in argv_words(argv, "argvs[%d]" % i)]
            for j, a in enumerate(w):   # (an os-level ValueError traceback when written)
                if "\x00" in a:
                    raise ConfigError("%s: word %d (%r) holds a NUL byte, which no argument "
                                      "can hold" % (labels[i] if labels else "argvs[%d]" % i,
                                                    j + 1, a[:40]))
        except ConfigError as exc:
            w, unusable[i] = [], exc
        items.append(BatchItem(index=i, argv=w))
    cfgs: List[Optional[object]] = [None] * n
    # parse in order, in this thread
    for it in items:
        t0 = time.perf_counter()
        try:
            if it.index in unusable:
                raise unusable[it.index]
            cfg = parse_argv(list(it.argv), cwd=cwd)
            over = dict(noprogress=True, progress_meter=False)
            if per_image and not cfg.threads:
                over["threads"] = int(per_image)
            cfgs[it.index] = replace(cfg, **over)
        except BaseException as exc:     # noqa: B902 - reported per line
            if isinstance(exc, KeyboardInterrupt):
                raise
            _fail(it, exc)
            it.seconds = time.perf_counter() - t0
            if on_done:
                on_done(it)

    if write:
        _refuse_shared_outputs(items, cfgs, protect, labels, on_done)

    def one(it: BatchItem) -> BatchItem:
        from .api import in_chunks, simulate
        t0 = time.perf_counter()
        try:
            # (row chunks: a signal stops the line within one, not at its end)
            res = simulate(cfgs[it.index], progress=in_chunks)
            if write:
                from .outputs import write_fdump, write_outputs
                write_fdump(res.model)
                it.written = list(write_outputs(res, res.model.cfg, quiet=True) or [])
            it.ok = True
            it.result = res if keep_results else None
        except Exception as exc:
            _fail(it, exc)
        it.seconds = time.perf_counter() - t0
        if on_done:
            on_done(it)
        return it

    todo = [it for it in items if cfgs[it.index] is not None]
    if workers == 1 or len(todo) <= 1:
        for it in todo:
            one(it)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nbnumba-batch") as pool:
            for _ in pool.map(one, todo):
                pass
    return items


def _refuse_shared_outputs(items, cfgs, protect, labels, on_done) -> None:
    """Fail (alone, before any render) each parsed line that would write a file
    in ``protect`` or one that an earlier line writes or reads, or that reads a
    file an earlier line writes; cfgs[i] = None for it.  Character devices
    (/dev/null) may be written by any number of lines."""
    from .errors import ConfigError, NBError
    from .io.atomic import check_not_input
    from .model import reads_fdump
    from .outputs import _path, input_files, output_paths

    def name(i):
        return labels[i] if labels else "argvs[%d]" % i

    def hkl_of(cfg):        # the -hkl file a line fills its Fdump.bin cache from
        return os.path.realpath(_path(cfg, cfg.hklfilename))

    # every cache some line writes: its first writer
    caches = {}
    for it in items:
        cfg = cfgs[it.index]
        if cfg is not None and cfg.hklfilename and cfg.hkl_grid is None:
            caches.setdefault(os.path.realpath(_path(cfg, cfg.fdump_path)), it.index)

    def key(path):          # one file, whatever its name (./a, a symlink, a hard link)
        try:
            st = os.stat(path)
            return ("inode", st.st_dev, st.st_ino)
        except (OSError, ValueError):
            return ("path", os.path.realpath(path))

    def is_device(path):    # /dev/null & co: any number of lines may write them
        try:
            return stat.S_ISCHR(os.stat(path).st_mode)
        except (OSError, ValueError):
            return False

    # the lines run at once, so an output of one line that another line reads
    # replaced that input while it was read (or before): the image depended on
    # the threads' timing, and the input was gone.  As for two lines writing one
    # file, the later line of the two fails.
    seen = {}       # file -> (line, what) of the accepted lines' outputs
    reads = {}      # file -> (line, name) of the accepted lines' inputs
    for it in items:
        cfg = cfgs[it.index]
        if cfg is None:
            continue
        try:
            cache = os.path.realpath(_path(cfg, cfg.fdump_path))
            if reads_fdump(cfg) and cache in caches:
                raise ConfigError("%s would read the %s cache that %s writes: the lines run at "
                                  "once, so its F would depend on the timing; give it -hkl, or "
                                  "run it in another folder"
                                  % (name(it.index), cfg.fdump_path, name(caches[cache])))
            mine_in = [(key(p), p) for p in input_files(cfg)]
            for k, p in mine_in:
                if k in seen:
                    first, first_what = seen[k]
                    raise ConfigError("input '%s' is %s's %s: the lines run at once, so it "
                                      "would be read while it is written; run them in two "
                                      "batches" % (p, name(first), first_what))
            mine = []
            for what, path in output_paths(cfg, fdump=True):
                check_not_input(path, list(protect), what)
                if is_device(path):
                    continue
                k = key(path)
                if k in reads:
                    first, p = reads[k]
                    raise ConfigError("%s '%s' is %s's input '%s': the lines run at once, so "
                                      "it would be replaced while it is read; give each its "
                                      "own file" % (what, path, name(first), p))
                is_cache = what.startswith("the ")
                if k in seen and seen[k][0] != it.index:
                    first, first_what = seen[k]
                    if is_cache and first_what == what:
                        if hkl_of(cfgs[first]) == hkl_of(cfg):
                            continue            # the same -hkl: the same cache
                        raise ConfigError("%s would fill the %s cache from -hkl %s, and %s from "
                                          "-hkl %s: the lines run at once, run them in two "
                                          "folders" % (name(it.index), cfg.fdump_path,
                                                       cfg.hklfilename, name(first),
                                                       cfgs[first].hklfilename))
                    raise ConfigError("%s '%s' is also %s's %s: the lines run at once, give "
                                      "each its own file" % (what, path, name(first), first_what))
                mine.append((k, what))
            for k, what in mine:        # (a refused line claims none of its files)
                seen.setdefault(k, (it.index, what))
            for k, p in mine_in:
                reads.setdefault(k, (it.index, p))
        except NBError as exc:
            _fail(it, exc)
            cfgs[it.index] = None
            if on_done:
                on_done(it)


_LINE_END = re.compile(r"\r\n|\r|\n")
#: the longest word a command line can pass (Linux's MAX_ARG_STRLEN, 32 pages):
#: a longer one is refused before shlex, whose time grows as a word's length
#: squared (a 1.2 M-character word took 25 s)
MAX_WORD = 131072


def split_line(line: str) -> List[str]:
    """The words of one command line, as a POSIX shell splits it: quotes and
    backslashes as shlex, and ``#`` starts a comment only at the start of a
    word (shlex's ``comments=True`` also cut ``-floatfile run#1.bin -nonoise``
    to ``-floatfile run``, so another file was written and -nonoise dropped).
    ValueError for an unclosed quote, a trailing backslash, or a word longer
    than MAX_WORD characters."""
    quote, i, n = None, 0, len(line)
    word_start = True
    start = 0           # where the current word began
    while i < n:
        c = line[i]
        if word_start:
            start = i
        elif i - start > MAX_WORD:
            raise ValueError("a word longer than %d characters, more than a command line "
                             "can pass" % MAX_WORD)
        if quote == "'":
            if c == "'":
                quote = None
        elif quote == '"':
            if c == "\\":
                i += 1              # (\" and \\ do not end the quotes)
            elif c == '"':
                quote = None
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "#" and word_start:
            line = line[:i]
            break
        word_start = quote is None and c in " \t\r\n"
        i += 1
    return shlex.split(line, comments=False)


def _ends_continued(line: str) -> bool:
    """Does the line end in an unescaped backslash (a shell's line
    continuation)?  A backslash followed by a blank is not one: as in a
    shell, it escapes the blank."""
    tail = len(line) - len(line.rstrip("\\"))
    return tail % 2 == 1


def _joined_lines(lines):
    """(first line's number, text) with each backslash-newline removed, as a
    POSIX shell joins a command written over several lines.  A comment line
    ends a command, continued or not (its backslash is part of the comment)."""
    buf, first = None, 0
    for no, raw in enumerate(lines, 1):
        if buf is None:
            if raw.strip(" \t").startswith("#"):
                yield no, raw
                continue
            buf, first = raw, no
        else:
            buf += raw
        if _ends_continued(buf):
            buf = buf[:-1]
            continue
        yield first, buf
        buf = None
    if buf is not None:         # a last line that ends in a backslash: the file ended the command
        yield first, buf


def read_batch_file(path: str) -> List[tuple]:
    """(line number, argv, None) for each command line of a batch file, or
    (line number, None, why) for a line shlex cannot split (an unclosed
    quote).  Blank lines and lines starting with '#' are skipped; a leading
    program name (nanoBragg, nbnumba, ...) is dropped.  A line that ends in a
    backslash goes on on the next line, as in a shell script (the command's
    number is its first line's)."""
    from .errors import InputFileError
    from .io._args import read_all
    try:
        with open(path, "rb") as fh:
            data = read_all(fh, path)   # (--batch /dev/zero ran into the OOM killer)
    except OSError as exc:
        raise InputFileError("%s: cannot read batch file (%s)" % (path, exc.strerror or exc)) from None
    if data.startswith(b"\xef\xbb\xbf"):   # a UTF-8 byte-order mark (Windows editors)
        data = data[3:]                     # was part of line 1's first word
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:   # (a Latin-1 byte in a comment was a traceback)
        raise InputFileError("%s line %d: not UTF-8 text (byte 0x%02x): a batch file holds "
                             "command lines" % (path, data[:exc.start].count(b"\n") + 1,
                                                data[exc.start])) from None
    out = []
    # lines end at \n, \r\n or \r only: str.splitlines also splits at \f, \v,
    # \x1c-\x1e, \x85 and U+2028/9, so a form feed in a comment ran the rest of
    # the comment as a command line, and every later line number was off
    for no, raw in _joined_lines(_LINE_END.split(text)):
        s = raw.strip(" \t")
        if not s or s.startswith("#"):
            continue
        if "\x00" in s:        # (an os-level ValueError traceback for the whole batch)
            out.append((no, None, "the line holds a NUL byte (column %d), which no argument "
                                  "can hold" % (raw.index("\x00") + 1)))
            continue
        try:
            argv = split_line(s)
        except ValueError as exc:
            # (a sentinel argv ran instead, and its error named a flag
            # '--unparsable-line--' that nobody wrote)
            out.append((no, None, "cannot split the line into arguments: %s" % exc))
            continue
        if argv and not argv[0].startswith("-"):
            base = os.path.basename(argv[0])
            if base.lower().startswith(("nanobragg", "nbnumba")):
                argv = argv[1:]
        if argv:
            out.append((no, argv, None))
    return out


def batch_main(argv: Sequence[str], out=None) -> int:
    """``nbnumba --batch FILE [--workers N] [--threads N]``: run every line of
    FILE, print one status line per command, then a summary.  Exit status 0
    when every line succeeded, 1 when any failed, 2 for a bad batch request."""
    out = out or sys.stdout
    args = list(argv)
    usage = "usage: nbnumba --batch COMMANDS.txt [--workers N] [--threads N]"
    path = None
    workers = threads = None
    if args in (["-h"], ["--help"]):        # (as --serve --help; it was "bad --batch arguments")
        print(usage + "\n\nRuns one nanoBragg command line per line of COMMANDS.txt (blank "
              "lines and '#' comments skipped, a line ending in '\\' continued), each with its "
              "own output files, in one process, --workers at a time. A bad line does not stop "
              "the others; the exit status is 1 if any failed (README.md, \"Using it\").")
        return 0
    i = 0
    try:
        while i < len(args):
            a = args[i]
            if a in ("--workers", "--threads"):
                from .flags import _INT_RE
                text = args[i + 1]
                if not _INT_RE.match(text):     # as the flags' integers: no "３", no "1_0"
                    raise ValueError
                v = int(text)
                if v < 1:
                    raise ValueError
                if a == "--workers":
                    workers = v
                else:
                    threads = v
                i += 2
            elif path is None and not a.startswith("--"):
                path = a
                i += 1
            else:
                raise ValueError
    except (ValueError, IndexError):
        print("nbnumba: error: bad --batch arguments: %s (%s)" % (" ".join(args), usage),
              file=sys.stderr)
        return 2
    if path is None:
        print("nbnumba: error: --batch needs a file of command lines (%s)" % usage,
              file=sys.stderr)
        return 2
    from .errors import NBError
    try:
        lines = read_batch_file(path)
    except NBError as e:
        print("nbnumba: error: %s" % e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # (a traceback while a long file was read)
        return _interrupted(e)
    total = len(lines)
    t0 = time.perf_counter()
    import threading
    lock = threading.Lock()
    for no, _, why in lines:
        if why is not None:
            print("line %d: error (exit 2): %s" % (no, why), file=out)
    unsplit = sum(1 for _, argv, _ in lines if argv is None)
    lines = [(no, argv) for no, argv, _ in lines if argv is not None]

    def report(it: BatchItem):
        no = lines[it.index][0]
        with lock:
            if it.ok:
                print("line %d: ok %.3f s %s" % (no, it.seconds, " ".join(it.written)), file=out)
            else:
                print("line %d: error (exit %d): %s" % (no, it.exit_code, it.error), file=out)
            out.flush()

    try:
        items = simulate_many([a for _, a in lines], workers=workers, threads=threads, write=True,
                              keep_results=False, on_done=report, protect=[path],
                              labels=["line %d" % no for no, _ in lines])
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except NBError as e:            # the batch as a whole (a working directory that is gone)
        print("nbnumba: error: --batch: %s" % e, file=sys.stderr)
        return e.exit_code
    bad = unsplit + sum(1 for it in items if not it.ok)
    print("batch: %d of %d command lines ok, %d failed (%.2f s)"
          % (total - bad, total, bad, time.perf_counter() - t0), file=out)
    return 1 if bad else 0


def _interrupted(exc) -> int:
    """Ctrl-C exits 130 and SIGTERM 143, as the CLI (SIGTERM was 130)."""
    # (under `python -m nbnumba.cli` the handler raises __main__.Terminated, a
    # class other than nbnumba.cli.Terminated: match it by name)
    term = any(c.__name__ == "Terminated" and c.__module__ in ("nbnumba.cli", "__main__")
               for c in type(exc).__mro__)
    print("nbnumba: interrupted", file=sys.stderr)
    return 143 if term else 130
