"""The block path of the image loop (kernels/cpu.py, ``_block_row``: the lean
default mode with one sub-path per pixel and few (phi, mosaic) cells, pixels
taken eight at a time) against ``pixel_value`` run pixel by pixel, which is
what the image loop calls otherwise.

Cases cover an HKL grid with default_F outside it, a mask and an ROI (blocks
that end part-way through a row), -dmin cutting pixels, a thick sensor
(capture fraction), a Kahn factor, -nopolar and float32 sines.  Allowed
difference: the lean sum's order of additions only (docs/gpu.md's fast-math
bound, ``gpu.fast_pixel_rel``); the solid-angle row sums must match exactly."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import nbnumba
from nbnumba.kernels import cpu as K
from nbnumba.kernels import gpu as G
from nbnumba.model import build_model
from nbnumba.testing import golden as GD

BASE = ("-mat cellA.mat -hkl cellA_lowres.hkl -default_F 3 -lambda 1.5 -distance 80 -detpixels 23 "
        "-pixel 0.6 -oversample 1 -N 5 -phi 0 -osc 0.3 -phisteps 3 -nointerpolate -nonoise -nopgm")
CASES = [
    BASE,
    BASE + " -polar 0.9 -detector_thick 100 -detector_thicksteps 1 -detector_absorb 300 -mosaic 0.3 -mosaic_dom 2",
    BASE + " -dmin 2.5 -roi 2 19 3 20",
    BASE + " -nopolar -precision single",
    BASE.replace("-detpixels 23", "-detpixels 128 -pixel 0.12") + " -mask mask.img -Na 1 -Nc 7",
]


def _per_pixel(model, args):
    """pixel_value for every active pixel (value, solid-angle row sums)."""
    iopt, fopt, vecs, incident, lam, cells, Fhkl = args
    S, F = model.shape
    work = np.empty((K.N_WORK, cells.shape[2]))
    tbuf = np.zeros((1, K.TRACE_COLS))
    tpos = np.zeros(1, dtype=np.int64)
    info = np.zeros(3, dtype=np.int64)
    img = np.zeros((S, F), dtype=np.float32)
    omega = np.zeros(S)
    for s in range(S):
        for f in range(F):
            if model.active[s, f]:
                v, om = K.pixel_value(s, f, False, -1, iopt, fopt, vecs, incident, lam, cells, Fhkl,
                                      work, tbuf, tpos, info)
                img[s, f] = np.float32(v)
                omega[s] += om
    return img, omega


@pytest.mark.parametrize("line", CASES)
def test_block_path_matches_pixel_value(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("cellA.mat", "cellA_lowres.hkl", "mask.img"):
        shutil.copyfile(GD.inputs_dir() / name, tmp_path / name)
    model = build_model(nbnumba.parse_argv(line.split()))
    args = model.cpu_kernel_args()
    assert K.block_eligible(args[0], args[5].shape[2], -1, -1)
    S, F = model.shape
    img = np.zeros((S, F), dtype=np.float32)
    omega = np.zeros(S)
    none = np.zeros((1, 1), dtype=np.int32)
    for threads in (1, 2):
        img[...] = 0.0
        K.render(model.active, -1, -1, -1, *args, img, omega, none, np.zeros((1, 1), np.uint8),
                 threads=threads)
        ref, ref_omega = _per_pixel(model, args)
        assert np.array_equal(omega, ref_omega)
        assert np.array_equal(img == 0, ref == 0)
        assert (img > 0).sum() > 20                  # spots, not only background
        rel = np.abs(img.astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)
        assert rel.max() <= G.fast_pixel_rel(args[0]) + 2.0 ** -24
        assert G.float32_ulps(img, ref).max() <= G.FAST_MAX_ULP["float64"]
