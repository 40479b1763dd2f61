"""A rotation series written as NeXus/NXmx (one file per frame plus master.h5).

    python examples/rotation_to_nexus.py [--out DIR] [--frames N] [--detpixels N]

Needs the formats extra (h5py): pip install "nbnumba[formats]".  Frames are
rendered in this process (--workers 0); give --workers N to use a local Dask
cluster instead (pip install "nbnumba[series]").  DIALS reads master.h5 directly:
dials.import DIR/master.h5
"""
import argparse
import os
import sys

from nbnumba import series


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("examples_out", "rotation"))
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--detpixels", type=int, default=128)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args(argv)
    rc = series.main([
        "--frames", str(a.frames), "--osc-per-frame", "0.5", "--out", a.out,
        "--format", "nexus", "--workers", str(a.workers), "--overwrite", "--no-progress",
        # the nanoBragg flags of frame 0 (single dash)
        "-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5",
        "-lambda", "1.0", "-distance", "100", "-detpixels", str(a.detpixels), "-pixel", "0.2",
        "-seed", "1",
    ])
    if rc == 0:
        print("NXmx master:", os.path.join(a.out, "master.h5"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
