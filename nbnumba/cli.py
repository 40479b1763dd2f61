"""``python -m nbnumba.cli <nanoBragg flags>``: a thin layer over the API.

Prints nanoBragg's summary, runs the engine, writes nanoBragg's files.
Every error (bad flag or value, unreadable input, impossible geometry) is one
line on stderr and exit status 2; nanoBragg.c's exit status 9 for fatal file
errors is not reproduced (docs/quirks.md).
"""
from __future__ import annotations

import sys


def prog_name(argv0=None) -> str:
    """How the user started us, for usage lines: ``nbnumba`` (the installed script)
    or ``python -m nbnumba.cli``."""
    import os
    base = os.path.basename(sys.argv[0] if argv0 is None else argv0)
    if base in ("", "-c", "-m", "cli.py", "__main__.py") or base.startswith("python"):
        return "python -m nbnumba.cli"
    return base


def main(argv=None) -> int:
    if argv is None:            # a program, not a call from Python
        _closed_stdio_to_devnull()
        args = sys.argv[1:]
        if not args or args[0] != "--serve":
            # a warm server started with `nbnumba --serve` runs it for us (nbnumba.server)
            from .server import forward
            status = forward(args)
            if status is not None:
                return status
        _term_as_interrupt()    # own SIGTERM
    from .errors import main_args
    argv = main_args(argv, "nbnumba")
    if argv is None:
        return 2
    from .errors import quiet_broken_pipes
    # `nbnumba ... | head`: the reader's leaving ends the text, not the run
    with quiet_broken_pipes():
        if argv and argv[0] == "--version":
            if len(argv) > 1:
                print("nbnumba: error: --version takes no arguments", file=sys.stderr)
                return 2
            from .extras import version_line
            print(version_line(prog_name()))
            return 0
        if argv and argv[0] in _PROGRAM_MODES:
            return _program_mode(argv)
        from . import flags
        if not argv or any(a in ("-h", "-help", "--help") for a in argv):
            print(flags.usage_text(prog_name()))
            return 0 if argv else 2
        from .errors import warnings_as_lines
        with warnings_as_lines("nbnumba"):
            return _run_argv(argv)


def _run_argv(argv) -> int:
    from .errors import NBError, UsageError, working_directory_gone
    from . import flags
    if working_directory_gone("nbnumba"):      # (a line of --batch, a served run)
        return 2
    try:
        cfg = flags.parse_argv(argv)
        return run(cfg)
    except UsageError as e:
        # one line: the message names the flag (unknown flags add "see -h")
        print("nbnumba: error: %s" % e, file=sys.stderr)
        return 2
    except NBError as e:
        print("nbnumba: error: %s" % e, file=sys.stderr)
        return e.exit_code
    except MemoryError:
        print("nbnumba: error: out of memory for this detector/sampling size", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # output sets are all-or-nothing: an interrupt leaves the old files and no temps
        print("nbnumba: interrupted; no output written", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


def _closed_stdio_to_devnull():
    """Started with stdout/stderr closed (``>&-``), Python has None there; like
    nanoBragg.c, whose printf then fails silently, write the messages nowhere."""
    import os
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` removes its temp files."""


def _inside_compiled_callback(frame) -> bool:
    """Whether the interrupted Python code is a callback of compiled code:
    llvmlite's object cache, which LLVM calls while numba compiles or loads a
    kernel.  An exception raised there cannot unwind through LLVM's frames
    ("Exception ignored on calling ctypes callback function"), and the run
    then died by SIGSEGV (exit -11) instead of removing its temporary files
    and exiting 143 (a SIGTERM two seconds into a cold --batch run)."""
    import os
    for _ in range(64):
        if frame is None:
            return False
        if "llvmlite" in frame.f_code.co_filename.split(os.sep):
            return True
        frame = frame.f_back
    return False


def _term_as_interrupt():
    """SIGTERM (and Ctrl-C where Python's own handler is in place) raise in
    the main thread, unless they arrive inside a compiled-code callback: then
    the signal is sent again 50 ms later, until it lands where the exception
    can unwind."""
    import os
    import signal
    import threading

    def handler(signum, frame):
        if _inside_compiled_callback(frame):
            t = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            t.daemon = True
            t.start()
            return
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if threading.current_thread() is threading.main_thread():
        try:
            signal.signal(signal.SIGTERM, handler)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, handler)
        except (ValueError, OSError):
            pass


def run(cfg) -> int:
    import time
    t0 = time.perf_counter()
    from .api import in_chunks, run_model
    from .model import build_model
    from .outputs import check_output_set, fdump_message, write_outputs
    from .summary import result_lines, run_summary_line, setup_lines
    from .kernels import native
    from . import numba_cache
    native.look_again()                # a library built since this process's last line
    calls = dict(native.COUNTS)        # this run's kernel calls: the difference
    cache_failures = len(numba_cache.SAVE_FAILURES)
    out = sys.stdout
    numba_cache.check_environment()    # (the start-up library's runs too, before any output)
    if native.jit_disabled():
        from .kernels import cpu  # noqa: F401  (its one-line refusal, before any output)
    if cfg.device == "cuda":
        # fail before printing or writing anything when CuPy or a GPU is missing
        from .kernels.gpu import require_device
        require_device()
    # every output (the Fdump.bin cache included) checked before any work is done
    check_output_set(cfg, fdump=True)
    model = build_model(cfg)
    for line in setup_lines(model):
        print(line, file=out)
    fdump, msg = fdump_message(cfg)
    if model.fdump_grid is None:
        fdump, msg = False, None
    if msg:
        print(msg, file=out)
    out.flush()
    _announce_compile(model)
    bar = None
    progress = in_chunks        # (interruptible between row chunks, bar or not)
    # the bar goes to stderr, so it shows whenever stderr is a terminal (also with | tee)
    if cfg.progress_meter and not cfg.noprogress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=model.shape[0], unit="row", desc="rendering", leave=False, file=sys.stderr)

        def show(done, total):
            bar.n = done
            bar.refresh()
        progress = show
    try:
        res = run_model(model, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if cfg.trace_spixel >= 0:
        print("TRACE_CONFIG: tracing pixel (spixel=%d, fpixel=%d)" % (cfg.trace_spixel, cfg.trace_fpixel))
        for line in res.trace_lines:
            print(line, file=out)
    if cfg.printout:
        from .trace import printout_lines
        for line in printout_lines(res):
            print(line, file=out)
    write_outputs(res, cfg, fdump=fdump)
    for line in result_lines(res):
        print(line, file=out)
    aot = native.COUNTS["aot"] > calls["aot"]
    jit = native.COUNTS["jit"] > calls["jit"]
    print(run_summary_line(cfg, time.perf_counter() - t0, aot=aot and not jit), file=out)
    note = numba_cache.save_failure_note(cache_failures)
    if note:
        print(note, file=sys.stderr)
    if jit:
        _background_library_build()
    return 0


_ANNOUNCED = []      # the delegated build's line was printed (this process)


def _background_library_build() -> None:
    """After a run that needed numba for its kernels, build the start-up
    library (kernels.native) in the background, once: later runs load it
    instead of numba."""
    from .kernels import native
    from .jitcache import LIBRARY_DELEGATED
    if not LIBRARY_DELEGATED:           # else a cold run's second process builds it
        if not native.background_build_wanted():
            warning = native.shared_cache_dir_warning()
            if warning:
                print(warning, file=sys.stderr)
            return
        try:
            native.start_build(background=True)
        except OSError:
            return
    elif _ANNOUNCED:                    # (said once by a long-lived process: --batch, --serve)
        return
    _ANNOUNCED.append(True)
    print("nbnumba: building the start-up library in the background (once; later runs "
          "start without loading numba)", file=sys.stderr)


# ---- whole-program modes of nbnumba (not nanoBragg flags) ---------------------
_PROGRAM_MODES = ("--warmup", "--batch", "--serve")


def _program_mode(argv) -> int:
    """``nbnumba --warmup`` (compile the image kernels once), ``nbnumba --batch FILE``
    (many command lines in one process) and ``nbnumba --serve`` (a warm server
    that runs later command lines: nbnumba.server)."""
    if argv[0] == "--serve":
        from .server import main as serve_main
        return serve_main(argv[1:])
    if argv[0] == "--warmup":
        if len(argv) > 1:
            print("nbnumba: error: --warmup takes no arguments", file=sys.stderr)
            return 2
        from .jitcache import warmup
        return warmup()
    from .batch import batch_main
    return batch_main(argv[1:])


def _announce_compile(model) -> None:
    """Say so on stderr before a run that has to compile its kernel."""
    from .jitcache import announce_compile
    announce_compile(model)


if __name__ == "__main__":
    sys.exit(main())
