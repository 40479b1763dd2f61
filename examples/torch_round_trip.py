"""The torch round trip: images to torch and inputs from torch, without copies.

    python examples/torch_round_trip.py

Needs the torch extra: pip install "nbnumba[torch]".  The float image becomes
a torch tensor that shares the result's memory (DLPack); a mask made in torch
goes into the next run through nbnumba.interop.as_array, again without a copy.
"""
import sys
from dataclasses import replace

import numpy as np
import torch

import nbnumba
from nbnumba.interop import as_array, shares_memory
from nbnumba.tools._common import UsageParser, guarded_main   # one-line errors, exit 2

FLAGS = "-cell 50 50 50 90 90 90 -default_F 100 -N 3 -lambda 1 -distance 80 -detpixels 64 -nonoise".split()


def main(argv=None):
    UsageParser(description=__doc__.splitlines()[0]).parse_args(argv)   # no options
    cfg = nbnumba.parse_argv(FLAGS)
    res = nbnumba.simulate(cfg)
    img = res.to_torch()                                   # float32 (slow, fast), no copy
    print("torch image", tuple(img.shape), img.dtype, "shares memory:",
          shares_memory(img, res.float_image))

    # a torch mask (1 = use the pixel) with the central 16x16 block switched off
    mask_t = torch.ones(64, 64, dtype=torch.int32)
    mask_t[24:40, 24:40] = 0
    mask = as_array(mask_t, like=np.empty(0), dtype=np.uint16)   # uint16: nanoBragg's mask type
    masked = nbnumba.simulate(replace(cfg, mask_image=mask)).to_torch()
    assert float(masked[24:40, 24:40].abs().sum()) == 0.0
    assert torch.equal(masked[:8], img[:8])                # untouched rows are unchanged
    print("masked block is zero; other pixels identical; total %.4g -> %.4g photons"
          % (float(img.sum()), float(masked.sum())))
    return 0


if __name__ == "__main__":
    sys.exit(guarded_main("torch_round_trip.py", main, io_exit=2))
