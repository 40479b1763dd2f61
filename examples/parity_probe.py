"""Parity probe of one pixel: the port's trace, and with $NB_C_BIN the C's too.

    python examples/parity_probe.py [--pixel S F] [--out DIR]

Without NB_C_BIN this prints the port's TRACE_PY lines for the pixel (every
factor of its intensity, key for key like nanoBragg's TRACE_C).  With
NB_C_BIN=/path/to/nanoBragg it runs nbnumba-probe, which also runs the C,
diffs the two traces and writes an evidence bundle under DIR/reports/.
"""
import os
import sys

import nbnumba
from nbnumba.tools._common import UsageParser, guarded_main   # one-line errors, exit 2

FLAGS = ("-cell 70 80 90 90 90 90 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.5 "
         "-distance 100 -detpixels 128 -pixel 0.2 -nonoise -nopgm -noprogress").split()
DETPIXELS = 128                                  # (-detpixels above)


def main(argv=None):
    ap = UsageParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pixel", nargs=2, type=int, default=(83, 70), metavar=("S", "F"))
    ap.add_argument("--out", default=os.path.join("examples_out", "probe"))
    a = ap.parse_args(argv)
    s, f = a.pixel
    if not (0 <= s < DETPIXELS and 0 <= f < DETPIXELS):
        ap.error("--pixel %d %d: outside the %dx%d detector" % (s, f, DETPIXELS, DETPIXELS))
    if os.environ.get("NB_C_BIN"):
        from nbnumba.tools import probe
        if os.path.exists(a.out) and not os.path.isdir(a.out):
            ap.error("--out %s: not a directory" % a.out)
        os.makedirs(a.out, exist_ok=True)
        os.chdir(a.out)
        return probe.main(["--pixel", str(s), str(f), "--", *FLAGS])
    res = nbnumba.simulate_argv(FLAGS + ["-trace_pixel", str(s), str(f)])
    for line in res.trace_lines:
        print(line)
    print("pixel (%d, %d) = %.6g photons; set NB_C_BIN to compare with nanoBragg.c"
          % (s, f, float(res.float_image[s, f])))
    return 0


if __name__ == "__main__":
    sys.exit(guarded_main("parity_probe.py", main, io_exit=2))
