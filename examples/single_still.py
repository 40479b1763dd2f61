"""A single still: simulate, look at the numbers, write nanoBragg's files.

    python examples/single_still.py [--out DIR] [--detpixels N]

Runs a 100 A cubic cell with 5x5x5 unit cells at 6.2 A (nanoBragg's classic
demo) and writes floatimage.bin, intimage.img (SMV), image.pgm and
noiseimage.img into DIR (default: examples_out/still, ignored by git).
"""
import os
import sys

import numpy as np

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
    # stats["max_I_x"], ["max_I_y"] are nanoBragg's position of the brightest
    # pixel (m, its last sub-pixel); the (slow, fast) index is the image's argmax
    img = res.float_image
    brightest = tuple(int(i) for i in np.unravel_index(np.argmax(img), img.shape))
    print("image %s, max %.4g photons at pixel (slow, fast) = %s (x, y = %.5g, %.5g mm), mean %.4g"
          % (img.shape, res.stats["max_I"], brightest, res.stats["max_I_x"] * 1e3,
             res.stats["max_I_y"] * 1e3, res.stats["mean"]))
    from dataclasses import replace
    written = nbnumba.write_outputs(res, replace(cfg, workdir=a.out))
    for path in written:
        print("wrote", path)


if __name__ == "__main__":
    sys.exit(guarded_main("single_still.py", main, io_exit=2))
