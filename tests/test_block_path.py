"""The block path of the image loop (kernels/cpu.py, ``_block_row``: the lean
default mode with one source and few (sub-pixel, phi, mosaic) lanes per pixel,
pixels taken BLOCK at a time) against ``pixel_value`` run pixel by pixel,
which is what the image loop calls otherwise.

Cases cover an HKL grid with default_F outside it, a mask and an ROI (blocks
that end part-way through a row), -dmin cutting pixels, a thick sensor
(capture fraction), a Kahn factor, -nopolar, float32 sines and oversampled
pixels.  Every lane is computed on its own and the sums are added in
pixel_value's order, so images and solid-angle row sums match bit for bit."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import nbnumba
from nbnumba.kernels import cpu as K
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
    # several sub-pixels per pixel (lanes: pixels x sub-pixels x cells)
    BASE.replace("-oversample 1", "-oversample 2") + " -polar 0.9 -detector_thick 100 "
    "-detector_thicksteps 1 -detector_absorb 300 -dmin 2.5 -roi 2 19 3 20",
    BASE.replace("-oversample 1", "-oversample 4").replace("-phisteps 3", "-phisteps 1")
    + " -nopolar -precision single",
    # more than eight cells per sub-path (the fixed-order sums' partial sums
    # take two cells each), a ROI cutting the blocks short
    BASE.replace("-phisteps 3", "-phisteps 7") + " -mosaic 0.3 -mosaic_dom 3 -roi 1 21 2 18",
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
                                      work, tbuf, tpos, info, np.zeros((2, 9, 1)),
                                      np.empty((K.N_WORK, 1)))
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
        assert np.array_equal(img.view(np.uint32), ref.view(np.uint32))


def test_the_two_image_loops_agree_and_render_blocks_refuses_other_runs(tmp_path, monkeypatch):
    """render_rows (pixel by pixel) renders a block run too, with the same
    bits as render_blocks (what native.render picks for it); render_blocks
    raises on a run block_eligible refuses (-c_parity) instead of drawing it
    wrong."""
    monkeypatch.chdir(tmp_path)
    for name in ("cellA.mat", "cellA_lowres.hkl"):
        shutil.copyfile(GD.inputs_dir() / name, tmp_path / name)
    from nbnumba.kernels import native
    model = build_model(nbnumba.parse_argv(CASES[1].split()))
    args = model.cpu_kernel_args()
    assert native.image_loop(args[0], args[5].shape[2], -1, -1) is native.render_blocks
    S, F = model.shape
    imgs = []
    for loop in (K.render_rows, K.render_blocks):
        img, omega = np.zeros((S, F), dtype=np.float32), np.zeros(S)
        loop(model.active, -1, -1, -1, *args, img, omega, np.zeros((1, 1), np.int32),
             np.zeros((1, 1), np.uint8), 0, S, 1)
        imgs.append((img, omega))
    assert (imgs[0][0] > 0).sum() > 20
    assert np.array_equal(imgs[0][0].view(np.uint32), imgs[1][0].view(np.uint32))
    assert np.array_equal(imgs[0][1], imgs[1][1])
    cp = build_model(nbnumba.parse_argv((CASES[0] + " -c_parity").split()))
    cargs = cp.cpu_kernel_args()
    assert native.image_loop(cargs[0], cargs[5].shape[2], -1, -1) is native.render_rows
    with pytest.raises(ValueError, match="not a block-path run"):
        K.render_blocks(cp.active, -1, -1, -1, *cargs, np.zeros((S, F), np.float32), np.zeros(S),
                        np.zeros((1, 1), np.int32), np.zeros((1, 1), np.uint8), 0, S, 1)


# ---- pixel_value's deferred lattice (several sub-paths of few cells) ---------
DEFER_CASES = [
    # oversample, sources (divergence x dispersion), mosaic, phi; HKL grid and default_F
    # (more lanes per pixel than the block path takes, or several sources)
    BASE.replace("-oversample 1", "-oversample 3") + " -mosaic 0.3 -mosaic_dom 5",
    BASE + " -divergence 0.2 -divsteps 3 -dispersion 0.1 -dispsteps 2 -dmin 2.5 -roi 2 19 3 20",
    BASE.replace("-oversample 1", "-oversample 3") + " -mosaic 0.2 -mosaic_dom 3 -nopolar "
    "-polar 0.8 -precision single",
]


@pytest.mark.parametrize("line", DEFER_CASES)
def test_deferred_lattice_matches_pixel_value_bit_for_bit(line, tmp_path, monkeypatch):
    """render_rows' pixels with several sub-paths of fewer cells than a vector
    loop takes evaluate every sub-path's lattice factors in one loop
    (defer_lanes); the image and the solid-angle sums equal pixel_value's
    without deferral bit for bit (each lane is computed on its own, and the
    lean sums are added in sub-path order)."""
    monkeypatch.chdir(tmp_path)
    for name in ("cellA.mat", "cellA_lowres.hkl", "mask.img"):
        shutil.copyfile(GD.inputs_dir() / name, tmp_path / name)
    model = build_model(nbnumba.parse_argv(line.split()))
    args = model.cpu_kernel_args()
    ncell = args[5].shape[2]
    assert not K.block_eligible(args[0], ncell, -1, -1)
    assert K.defer_lanes(args[0], ncell) > 1
    S, F = model.shape
    img = np.zeros((S, F), dtype=np.float32)
    omega = np.zeros(S)
    K.render(model.active, -1, -1, -1, *args, img, omega, np.zeros((1, 1), dtype=np.int32),
             np.zeros((1, 1), np.uint8), threads=2)
    ref, ref_omega = _per_pixel(model, args)
    assert (img > 0).sum() > 20
    assert np.array_equal(omega, ref_omega)
    assert np.array_equal(img.view(np.uint32), ref.view(np.uint32))
    # and the float64 pixel values themselves (the float32 image could hide
    # a change in the order of the sub-path sums)
    iopt, fopt, vecs, incident, lam, cells, Fhkl = args
    nd = K.defer_lanes(iopt, ncell)
    dcells, dwork = K.lane_buffer(nd, cells), K.lane_work(nd, cells)
    work = np.empty((K.N_WORK, ncell))
    tb, tp, info = np.zeros((1, K.TRACE_COLS)), np.zeros(1, np.int64), np.zeros(3, np.int64)
    n = 0
    for s, f in zip(*np.nonzero(model.active)):
        deferred = K.pixel_value(s, f, False, -1, *args, work, tb, tp, info, dcells, dwork)[0]
        direct = K.pixel_value(s, f, False, -1, *args, work, tb, tp, info, np.zeros((2, 9, 1)),
                               np.empty((K.N_WORK, 1)))[0]
        assert deferred == direct or (np.isnan(deferred) and np.isnan(direct)), (s, f)
        n += deferred > 0
    assert n > 20


def test_defer_lanes_rule():
    """Deferral needs the lean default mode and a pixel of at least
    VECTOR_MIN_LANES (sub-path, cell) lanes whose sub-paths are shorter."""
    iopt = np.zeros(K.N_IOPT, dtype=np.int64)
    iopt[K.I_OVERSAMPLE], iopt[K.I_NSRC], iopt[K.I_THICKSTEPS], iopt[K.I_REDUCED] = 2, 1, 1, 1
    assert K.defer_lanes(iopt, 10) == 40
    assert K.defer_lanes(iopt, K.VECTOR_MIN_LANES) == 1  # vectorises on its own
    if K.WIDE_VECTORS:                                   # 512-bit: 16 lanes up, multiples of 8
        assert (K.VECTOR_MIN_LANES, K.LANE_PAD) == (16, 8)
        assert K.defer_lanes(iopt, 7) == 32              # 28 lanes, padded to 32
        assert K.defer_lanes(iopt, 4) == 16              # 16 lanes, none padded
        assert K.defer_lanes(iopt, 3) == 16              # 12 lanes, padded to 16
        assert K.defer_lanes(iopt, 2) == 1               # 8 lanes: too few
        iopt[K.I_NSRC] = 3
        assert K.defer_lanes(iopt, 3) == 40              # 36 lanes, padded to 40
    else:                                                # 256-bit: 28 lanes up, multiples of 4
        assert (K.VECTOR_MIN_LANES, K.LANE_PAD) == (28, 4)
        assert K.defer_lanes(iopt, 7) == 28              # 28 lanes, none padded
        assert K.defer_lanes(iopt, 6) == 1               # 24 lanes: too few
        iopt[K.I_NSRC] = 3
        assert K.defer_lanes(iopt, 3) == 36
    for flag in (K.I_CPARITY, K.I_INTERP, K.I_OS_POLAR, K.I_SHAPE):
        j = iopt.copy()
        j[flag] = 1
        assert K.defer_lanes(j, 10) == 1, flag
