"""``nbnumba-probe`` command line: options, then the probe, then a one-line verdict."""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from nbnumba.tools import _common as C
from nbnumba.tools._common import ToolError, UsageParser
from .common import EXIT_IO, EXIT_OK, EXIT_USAGE, PROG


def _parse_opts(argv: List[str]):
    p = UsageParser(prog=PROG, usage="%(prog)s --pixel S F [options] -- <nanoBragg flags>",
                    usage_exit=EXIT_USAGE)
    p.add_argument("--pixel", nargs=2, type=int, required=True, metavar=("S", "F"))
    p.add_argument("--outdir", default="reports")
    p.add_argument("--c-parity", action="store_true", help="run the port with -c_parity")
    p.add_argument("--c-bin", help="C program (default $NB_C_BIN)")
    p.add_argument("--c-trace", help="use this stored C trace instead of running C")
    p.add_argument("--no-c", action="store_true", help="never run the C program")
    p.add_argument("--roi-radius", type=int, default=4)
    p.add_argument("--full-c", action="store_true", help="no -roi: trace over the whole detector")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--sincg-steps", type=int, default=401)
    p.add_argument("--no-png", action="store_true",
                   help="draw no plots (sincg_sweep.png, sincg_points.png); needed without matplotlib")
    p.add_argument("--timeout", type=C.timeout_seconds, default=None)
    p.add_argument("--pytest", action="append", metavar="SELECTOR",
                   help="also run these tests (pytest node id or -k style path) into pytest.log; "
                        "repeatable")
    return p.parse_args(argv)



def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body():
        from nbnumba.tools import probe as package   # its docstring is the --help text
        split = C.split_or_help(argv, package.__doc__)
        if split is None:
            return EXIT_OK
        opts_argv, flags = split
        opts = _parse_opts(opts_argv)
        from nbnumba.extras import require
        if opts.pytest:
            require("pytest", "--pytest")       # (one line before the bundle is made)
        if not opts.no_png:
            # the plots come after the traces: say so before any work, not after it
            require("matplotlib", "nbnumba-probe's PNG plots (or --no-png)")
        if not flags:
            raise ToolError("no nanoBragg flags: use nbnumba-probe --pixel S F [options] -- <flags>",
                            EXIT_USAGE)
        from .run import probe
        code, bundle, info = probe(opts, flags, argv)
        fd = info.get("first_divergence")
        if info["diff"] is None:
            verdict = "no C trace (port side only)"
        elif info["diverged"]:
            unex = sum(1 for r in info["attribution"] if r["explained_by"] == ["UNEXPLAINED"])
            verdict = f"DIVERGED, first divergence {fd}; {unex} unexplained key(s)"
        else:
            verdict = "MATCH (no divergence)"
        print(f"{PROG}: {verdict}")
        print(f"{PROG}: wrote {bundle}/summary.md")
        return code
    return C.guarded_main(PROG, body, io_exit=EXIT_IO)


if __name__ == "__main__":
    sys.exit(main())
