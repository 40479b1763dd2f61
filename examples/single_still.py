"""A single still: simulate, look at the numbers, write nanoBragg's files.

    python examples/single_still.py [--out DIR] [--detpixels N]

Runs a 100 A cubic cell with 5x5x5 unit cells at 6.2 A (nanoBragg's classic
demo) and writes floatimage.bin, intimage.img (SMV), image.pgm and
noiseimage.img into DIR (default: examples_out/still, ignored by git).
"""
import os
import sys

import nbnumba
from nbnumba.tools._common import UsageParser, guarded_main   # one-line errors, exit 2


def main(argv=None):
    ap = UsageParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("examples_out", "still"))
    ap.add_argument("--detpixels", type=int, default=256)
    a = ap.parse_args(argv)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        ap.error("--out %s: not a directory" % a.out)

    flags = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
             "-detpixels %d -seed 1" % a.detpixels).split()
    cfg = nbnumba.parse_argv(flags)          # typed Config, internal units (m, rad)
    os.makedirs(a.out, exist_ok=True)        # (after the flags are known to be valid)
    res = nbnumba.simulate(cfg)
    print("image %s, max %.4g photons at pixel %s, mean %.4g"
          % (res.float_image.shape, res.stats["max_I"],
             (int(res.stats["max_I_y"]), int(res.stats["max_I_x"])), res.stats["mean"]))
    from dataclasses import replace
    written = nbnumba.write_outputs(res, replace(cfg, workdir=a.out))
    for path in written:
        print("wrote", path)


if __name__ == "__main__":
    sys.exit(guarded_main("single_still.py", main, io_exit=2))
