#!/usr/bin/env python
"""Build the API reference (HTML, from the docstrings) with pdoc.

    python tools/build_api_docs.py [--out docs/api]

Open ``docs/api/index.html``.  The pages are generated, never edited, and git
ignores them; ``tests/test_docs.py`` builds them on every run.  pdoc is in the
dev extra (``pip install -e ".[dev]"``).
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: the public modules, in the order a reader meets them
MODULES = [
    "nbnumba",
    "nbnumba.config",
    "nbnumba.api",
    "nbnumba.interop",
    "nbnumba.series",
    "nbnumba.sf",
    "nbnumba.io",
    "nbnumba.quirks",
    "nbnumba.extras",
]


def build(out: Path) -> Path:
    """Render MODULES into ``out``; returns the index page."""
    sys.path.insert(0, str(REPO))
    try:
        import pdoc
    except ImportError:
        print('build_api_docs.py: error: needs pdoc: pip install -e ".[dev]"', file=sys.stderr)
        raise SystemExit(2) from None
    pdoc.pdoc(*MODULES, output_directory=out)
    return out / "index.html"


def main(argv=None) -> int:
    sys.path.insert(0, str(REPO))
    from nbnumba.tools._common import ToolError, UsageParser, guarded_main
    ap = UsageParser(prog="build_api_docs.py", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "api"), help="output directory")

    def body() -> int:
        a = ap.parse_args(argv)
        out = Path(a.out)
        # up front, before pdoc writes anything
        if out.exists() and not out.is_dir():
            raise ToolError("--out %s: not a directory" % out, 2)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ToolError("--out %s: %s" % (out, exc.strerror or exc), 2) from None
        try:
            index = build(out)
        except OSError as exc:
            raise ToolError("--out %s: %s" % (getattr(exc, "filename", None) or out,
                                              exc.strerror or exc), 2) from None
        print("wrote %s" % index)
        return 0
    return guarded_main("build_api_docs.py", body, io_exit=2)


if __name__ == "__main__":
    sys.exit(main())
