"""Documentation hygiene: nothing names a path of the machine it was written on."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|tmp|root|home|Users)/")


def test_docs_have_no_machine_paths():
    files = [REPO / "README.md", REPO / "golden" / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "examples").glob("*.py"))]
    bad = []
    for p in files:
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if MACHINE_PATH.search(line):
                bad.append("%s:%d: %s" % (p.relative_to(REPO), n, line.strip()))
    assert not bad, "\n".join(bad)
