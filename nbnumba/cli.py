"""``python -m nbnumba.cli <nanoBragg flags>``: a thin layer over the API.

Prints nanoBragg's summary, runs the engine, writes nanoBragg's files.
Errors are one line on stderr with exit status 2 (bad flags/values) or 9
(like nanoBragg.c's fatal input errors are reported, but still one line).
"""
from __future__ import annotations

import sys
import time


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
    from .api import compute_stats, simulate
    from .outputs import write_fdump, write_outputs
    from .summary import result_lines, setup_lines
    t0 = time.perf_counter()
    res = simulate(cfg)
    out = sys.stdout
    for line in setup_lines(res.model):
        print(line, file=out)
    msg = write_fdump(res.model)
    if msg:
        print(msg, file=out)
    if res.model.cfg.trace_spixel >= 0:
        print("TRACE_CONFIG: tracing pixel (spixel=%d, fpixel=%d)" % (cfg.trace_spixel, cfg.trace_fpixel))
        for line in res.trace_lines:
            print(line, file=out)
    write_outputs(res, cfg)
    for line in result_lines(res):
        print(line, file=out)
    if cfg.progress_meter and not cfg.noprogress and sys.stdout.isatty():
        print("  nbnumba: %.2f s" % (time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
