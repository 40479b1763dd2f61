#!/usr/bin/env python
"""Build the API reference (HTML, from the docstrings) with pdoc.

    python tools/build_api_docs.py [--out docs/api]

Open ``docs/api/index.html``.  The pages are generated, never edited, and git
ignores them; ``tests/test_docs.py`` builds them on every run.  pdoc is in the
dev extra (``pip install -e ".[dev]"``).
"""
from __future__ import annotations

import argparse
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
        raise SystemExit('build_api_docs: needs pdoc: pip install -e ".[dev]"') from None
    pdoc.pdoc(*MODULES, output_directory=out)
    return out / "index.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "api"), help="output directory")
    a = ap.parse_args(argv)
    index = build(Path(a.out))
    print("wrote %s" % index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
