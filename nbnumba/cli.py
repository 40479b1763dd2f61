"""``python -m nbnumba.cli <nanoBragg flags>``: a thin layer over the API.

Prints nanoBragg's summary, runs the engine, writes nanoBragg's files.
Errors are one line on stderr with exit status 2 (bad flags/values) or 9
(like nanoBragg.c's fatal input errors are reported, but still one line).
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PROGRAM_MODES:
        return _program_mode(argv)
    from .errors import NBError, UsageError
    from . import flags
    if not argv or any(a in ("-h", "-help", "--help") for a in argv):
        print(flags.usage_text())
        return 0 if argv else 2
    try:
        cfg = flags.parse_argv(argv)
        return run(cfg)
    except UsageError as e:
        print("nbnumba: error: %s" % e, file=sys.stderr)
        print(flags.short_usage(), file=sys.stderr)
        return 2
    except NBError as e:
        print("nbnumba: error: %s" % e, file=sys.stderr)
        return e.exit_code
    except MemoryError:
        print("nbnumba: error: out of memory for this detector/sampling size", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nbnumba: interrupted; no output written", file=sys.stderr)
        return 130


def run(cfg) -> int:
    from .api import run_model
    from .model import build_model
    from .outputs import write_fdump, write_outputs
    from .summary import result_lines, setup_lines
    out = sys.stdout
    if cfg.device == "cuda":
        # fail before printing or writing anything when CuPy or a GPU is missing
        from .kernels.gpu import require_device
        require_device()
    model = build_model(cfg)
    for line in setup_lines(model):
        print(line, file=out)
    msg = write_fdump(model)
    if msg:
        print(msg, file=out)
    out.flush()
    _announce_compile(model)
    bar = None
    progress = None
    if cfg.progress_meter and not cfg.noprogress and sys.stdout.isatty():
        from tqdm import tqdm
        bar = tqdm(total=model.shape[0], unit="row", desc="rendering", leave=False)

        def progress(done, total):
            bar.n = done
            bar.refresh()
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
    write_outputs(res, cfg)
    for line in result_lines(res):
        print(line, file=out)
    return 0


# ---- whole-program modes of nbnumba (not nanoBragg flags) ---------------------
_PROGRAM_MODES = ("--warmup", "--batch")


def _program_mode(argv) -> int:
    """``nbnumba --warmup`` (compile every kernel once) and
    ``nbnumba --batch FILE`` (many command lines in one process)."""
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
