"""A serial-crystallography set: still shots of randomly oriented crystals on Dask.

    python examples/serial_on_dask.py [--out DIR] [--shots N] [--workers N] [--scheduler ADDR]

Each shot gets a uniformly random orientation and a 1% jitter of the cell,
drawn reproducibly from -seed and the shot index, so a shot's image never
depends on which worker rendered it.  --workers N starts a local cluster;
--scheduler tcp://host:8786 uses a running one (its workers must see --out).
Needs the series extra: pip install "nbnumba[series]".
"""
import json
import os
import sys

from nbnumba import series
from nbnumba.tools._common import UsageParser, guarded_main   # one-line errors, exit 2


def main(argv=None):
    ap = UsageParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("examples_out", "serial"))
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--detpixels", type=int, default=128)
    a = ap.parse_args(argv)
    where = ["--scheduler", a.scheduler] if a.scheduler else ["--workers", str(a.workers)]
    rc = series.main([
        "--shots", str(a.shots), "--random-orientation", "--jitter-cell", "1",
        "--out", a.out, "--format", "smv", "--overwrite", "--no-progress", *where,
        "-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5",
        "-lambda", "1.0", "-distance", "100", "-detpixels", str(a.detpixels), "-pixel", "0.2",
        "-seed", "7",
    ])
    if rc != 0:             # the series said why (one line): an older manifest is stale
        return rc
    # the manifest says what each shot was: orientation, cell, files and their sha256
    with open(os.path.join(a.out, "manifest.jsonl")) as fh:
        shots = [r for r in map(json.loads, fh) if r.get("type") == "frame"]
    for rec in sorted(shots, key=lambda r: r["frame"])[:3]:
        p = rec["params"]
        print("shot %d: misset %s deg, cell %s A" % (
            rec["frame"], " ".join("%.1f" % m for m in p["misset_deg"]),
            " ".join("%.2f" % c for c in p["cell"])))
    return rc


if __name__ == "__main__":
    sys.exit(guarded_main("serial_on_dask.py", main, io_exit=2))
