"""Invariants of the integer and noise images and of the printed statistics.

The noise image is Poisson deviates of the float image (photons, not scaled
by -scale) plus -adc, rounded to uint16 (nanoBragg.c, -c_parity: truncated,
docs/quirks.md #26) and clipped at 65535 (an overload);
the integer image is floorf(float * scale + adc + 0.5) after clipping to
0..65535, with the scale 55000/max_I when -scale is not given.  Pixels outside
-roi are 0 in both.  Statistical checks use fixed seeds, so they are
deterministic; each threshold is stated with the chance that a correct
generator with another seed would exceed it.
"""
import math
import re

import numpy as np
import pytest

import nbnumba
from nbnumba import cli
from nbnumba.io.smv import format_g, read_smv
from nbnumba.rng import RngState

# |z| < 5 for a statistic that is normal under the hypothesis: a false alarm
# once in 1.7e6 (two-sided; 1 in 3.5e6 for the one-sided chi-square), so the
# 23 statistics below would all pass for all but about 1 seed in 80 000.
Z_MAX = 5.0

BRAGG = ("-cell 70 80 90 90 90 90 -lambda 1.5 -default_F 500 -N 5 -distance 100 -detpixels 64 "
         "-pixel 0.2 -water 0.02 -oversample 1 -nopgm").split()


def _noise(img, seed, adc=40.0, roi=None, wrap=False):
    """nbnumba's noise image of ``img`` with a fresh generator (as a run's -seed)."""
    from nbnumba.rng import noise_image
    st = RngState()
    S, F = img.shape
    roi = np.array(roi if roi is not None else (0, F - 1, 0, S - 1), dtype=np.int64)
    return noise_image(np.ascontiguousarray(img, dtype=np.float32), -seed, st.buf, st.gauss,
                       float(adc), roi, wrap)


def _pmf(ks, lam):
    return np.exp(ks * math.log(lam) - lam - np.array([math.lgamma(k + 1.0) for k in ks]))


def poisson_z(counts, lam):
    """(z of the mean, z of the variance, z of a chi-square against the pmf).

    The mean of N Poisson(lam) deviates has variance lam/N; the sample variance
    has variance mu4/N - lam^2 (N-3)/(N(N-1)) with mu4 = lam (1 + 3 lam).  The
    chi-square groups consecutive counts until each bin expects >= 25 (the
    first and last bins take the tails) and is turned into a normal z by the
    Wilson-Hilferty cube root (one-sided: only a large chi-square is a misfit)."""
    x = np.asarray(counts, dtype=np.float64).ravel()
    n = x.size
    z_mean = (x.mean() - lam) / math.sqrt(lam / n)
    var_s2 = lam * (1 + 3 * lam) / n - lam * lam * (n - 3) / (n * (n - 1))
    z_var = (x.var(ddof=1) - lam) / math.sqrt(var_s2)
    sd = math.sqrt(lam)
    lo, hi = max(0, int(lam - 10 * sd - 5)), int(lam + 10 * sd + 10)
    ks = np.arange(lo, hi + 1)
    expect = n * _pmf(ks.astype(np.float64), lam)
    obs = np.bincount(np.clip(x.astype(np.int64), lo, hi) - lo, minlength=len(ks)).astype(float)
    edges, acc = [0], 0.0
    for i, e in enumerate(expect):
        acc += e
        if acc >= 25.0:
            edges.append(i + 1)
            acc = 0.0
    edges[-1] = len(ks)             # a short last bin joins the one before
    E = np.add.reduceat(expect, edges[:-1])
    O = np.add.reduceat(obs, edges[:-1])
    E *= n / E.sum()                # the tails beyond +-10 sd go to the end bins
    chi2, df = float(((O - E) ** 2 / E).sum()), len(E) - 1
    if df < 1:
        return z_mean, z_var, 0.0
    c = 2.0 / (9.0 * df)
    z_chi = ((chi2 / df) ** (1.0 / 3.0) - (1.0 - c)) / math.sqrt(c)
    return z_mean, z_var, z_chi


def _stats_ok(z):
    zm, zv, zc = z
    return abs(zm) < Z_MAX and abs(zv) < Z_MAX and zc < Z_MAX


# poidev: the direct method below 12, rejection from 12 to 1e6; 11.9 and 12.0
# straddle the switch, 6e4 is about the largest mean an SMV pixel can hold
@pytest.mark.parametrize("lam", [0.05, 3.0, 11.9, 12.0, 150.0, 6.0e4])
def test_noise_image_is_poisson_in_each_branch(lam):
    lam32 = float(np.float32(lam))      # the float image holds float32
    img = np.full((128, 128), lam32, dtype=np.float32)
    out, photons, overloads, _ = _noise(img, 20261, adc=40.0)
    counts = out.astype(np.int64) - 40
    assert overloads == 0 and counts.min() >= 0
    assert photons == counts.sum()      # the printed photons are the image's
    z = poisson_z(counts, lam32)
    assert _stats_ok(z), (lam, z)


def test_gaussian_branch_above_a_million_photons():
    """Above 1e6 poidev returns xm + sqrt(xm) g (a normal deviate, not an
    integer, as nanoBragg.c): mean and variance xm; such a pixel is an overload."""
    from nbnumba.rng import poidev
    lam = 4.0e6
    st = RngState()
    idum = np.array([-777], dtype=np.int64)
    x = np.array([poidev(lam, idum, st.buf, st.gauss) for _ in range(4000)], dtype=np.float64)
    n = x.size
    zm = (x.mean() - lam) / math.sqrt(lam / n)
    zv = (x.var(ddof=1) - lam) / (lam * math.sqrt(2.0 / (n - 1)))   # normal: Var(s^2) = 2 s^4/(n-1)
    assert abs(zm) < Z_MAX and abs(zv) < Z_MAX, (zm, zv)
    out, photons, overloads, _ = _noise(np.full((2, 3), lam, dtype=np.float32), 5)
    assert (out == 65535).all() and overloads == 6
    assert abs(photons - 6 * lam) < Z_MAX * math.sqrt(6 * lam)


def test_noise_of_a_bragg_image_is_poisson_pixel_by_pixel():
    """Standardised residuals r = (n - lam)/sqrt(lam) of the run's noise image
    against its own float image: mean 0 and sum of r^2 = N, whose variance is
    sum(2 + 1/lam) for Poisson counts.  Measured on this image: noise shifted by
    a pixel gives z = 2.5e5, an -adc off by one count z = -14, the noise of
    1.02 times the float image z = 15, counts of variance 2 lam z = 49."""
    res = nbnumba.simulate_argv(BRAGG + ["-seed", "11"])
    lam = res.float_image.astype(np.float64)
    n = res.noise_image.astype(np.float64) - 40.0
    # both poidev branches, on many pixels each
    assert (lam < 12).sum() > 1000 and (lam >= 12).sum() > 1000 and lam.max() > 1e4
    m = lam >= 0.5          # r^2 is far from normal for lam << 1
    r = (n[m] - lam[m]) / np.sqrt(lam[m])
    N = int(m.sum())
    z_mean = r.sum() / math.sqrt(N)
    z_sq = ((r * r).sum() - N) / math.sqrt((2.0 + 1.0 / lam[m]).sum())
    assert abs(z_mean) < Z_MAX and abs(z_sq) < Z_MAX, (z_mean, z_sq)
    assert res.stats["photons"] == n.sum() and res.stats["overloads"] == 0


def test_noise_is_a_function_of_the_float_image_and_seed():
    """Same seed, same noise; other seeds, other noise; and the draws of
    -misset random and the mosaic domains (the same shared generator) do not
    reach the noise: -seed re-seeds it, as in nanoBragg.c."""
    args = BRAGG + ["-misset", "random", "-mosaic", "0.5", "-mosaic_domains", "3"]
    runs = {s: nbnumba.simulate_argv(args + ["-seed", str(s)]) for s in (3, 4, 12345)}
    again = nbnumba.simulate_argv(args + ["-seed", "3"])
    np.testing.assert_array_equal(again.noise_image, runs[3].noise_image)
    # -misset random takes -seed too, so each run has its own float image
    for s, r in runs.items():
        ref, photons, _, _ = _noise(r.float_image, s)
        np.testing.assert_array_equal(r.noise_image, ref)
        assert photons == r.stats["photons"]
    same_float = nbnumba.simulate_argv(BRAGG + ["-seed", "4"])
    other = nbnumba.simulate_argv(BRAGG + ["-seed", "5"])
    np.testing.assert_array_equal(same_float.float_image, other.float_image)
    differ = np.mean(same_float.noise_image != other.noise_image)
    # two independent Poisson draws of the same means differ in most pixels
    assert differ > 0.5, differ
    c = nbnumba.simulate_argv(args + ["-seed", "3", "-c_parity"])
    np.testing.assert_array_equal(c.noise_image, _noise(c.float_image, 3)[0])


def _int_rule(img, scale, adc, roi=None):
    """floorf(clip(float*scale + adc, 0, 65535) + 0.5) in the ROI, 0 outside."""
    t = np.clip(img.astype(np.float64) * scale + adc, 0.0, 65535.0)
    out = np.floor(np.float32(t + 0.5)).astype(np.uint16)
    if roi is not None:
        x0, x1, y0, y1 = roi
        keep = np.zeros(img.shape, dtype=bool)
        keep[y0:y1 + 1, x0:x1 + 1] = True
        out[~keep] = 0
    return out


@pytest.mark.parametrize("extra, scale, n_high, n_zero", [
    ([], None, False, False),                                    # auto scale: max -> 55000 + adc
    (["-scale", "300", "-adc", "10"], 300.0, True, False),      # bright pixels clip at 65535
    (["-scale", "0.75", "-adc", "-20"], 0.75, False, True),     # dim ones clip at 0
    (["-scale", "2.5", "-adc", "0.5", "-roi", "5", "40", "10", "50"], 2.5, False, False),
])
def test_int_image_is_the_closed_form_of_the_float_image(extra, scale, n_high, n_zero):
    res = nbnumba.simulate_argv(BRAGG + ["-seed", "1", "-nonoise"] + extra)
    img = res.float_image
    st = res.stats
    if scale is None:
        assert st["intfile_scale"] == 55000.0 / float(img.max())
        assert int(res.int_image.max()) == 55040          # 55000 + the default -adc
        assert np.unravel_index(np.argmax(res.int_image), img.shape) == \
            np.unravel_index(np.argmax(img), img.shape)
        scale = st["intfile_scale"]
    else:
        assert st["intfile_scale"] == scale
    cfg = res.model.cfg
    roi = None
    if "-roi" in extra:
        roi = tuple(int(v) for v in extra[extra.index("-roi") + 1:][:4])
        outside = np.ones(img.shape, dtype=bool)
        outside[roi[2]:roi[3] + 1, roi[0]:roi[1] + 1] = False
        assert not img[outside].any() and not res.int_image[outside].any()
        assert res.int_image[~outside].min() > 0
    else:
        outside = np.zeros(img.shape, dtype=bool)
    np.testing.assert_array_equal(res.int_image, _int_rule(img, scale, cfg.adc_offset, roi))
    # the clipping cases reach the clip (and only they do)
    inside = res.int_image[~outside]
    assert bool((inside == 65535).any()) == n_high and bool((inside == 0).any()) == n_zero


def test_int_rounding_and_clipping_edges():
    """Half counts round up, values clip to 0..65535, and the sum is rounded to
    float32 before the floor (nanoBragg.c's floorf(test + 0.5)): with -adc
    98.4999999999 a pixel of 1 photon is 99.4999999999 counts, whose +0.5 is
    100.0 in float32, so the count is 100, not 99."""
    from nbnumba.kernels.cpu import int_image
    img = np.array([[0.0, 0.49, 0.5, 1.5, 2.5, -3.0, 65534.6, 70000.0, 1e30]], dtype=np.float32)
    roi = np.array([0, img.shape[1] - 1, 0, 0], dtype=np.int64)
    got = int_image(img, roi, 1.0, 0.0)
    assert got.tolist() == [[0, 0, 1, 2, 3, 0, 65535, 65535, 65535]]
    one = np.ones((1, 1), dtype=np.float32)
    assert int(int_image(one, np.zeros(4, dtype=np.int64), 1.0, 98.4999999999)[0, 0]) == 100
    np.testing.assert_array_equal(int_image(one, np.zeros(4, dtype=np.int64), 1.0, 98.4999999999),
                                  _int_rule(one, 1.0, 98.4999999999))
    # a scale and an offset that move values across the edges
    img2 = np.linspace(-10.0, 30000.0, 257, dtype=np.float32).reshape(1, -1)
    roi2 = np.array([0, 256, 0, 0], dtype=np.int64)
    np.testing.assert_array_equal(int_image(img2, roi2, 2.37, 13.25), _int_rule(img2, 2.37, 13.25))


def _printed(out, key):
    return re.search(r"^%s" % key, out, re.M)


@pytest.mark.parametrize("c_parity", [False, True])
def test_printed_statistics_are_those_of_the_written_float_image(tmp_path, monkeypatch, capsys,
                                                                  c_parity):
    """max_I, mean, rms (about 0: over N, over N - 1 in nanoBragg.c, #35), rmsd, intfile_scale,
    pgm_scale and the photons line, recomputed with numpy from the files the run
    wrote; every file is 0 outside -roi."""
    monkeypatch.chdir(tmp_path)
    argv = BRAGG + ["-seed", "9", "-adc", "25", "-roi", "3", "60", "2", "58",
                    "-floatfile", "f.bin", "-intfile", "i.img", "-noisefile", "n.img", "-pgmfile", "p.pgm"]
    assert cli.main(argv + (["-c_parity"] if c_parity else [])) == 0
    out = capsys.readouterr().out
    img = np.fromfile(tmp_path / "f.bin", dtype=np.float32).reshape(64, 64)
    roi = img[2:59, 3:61]
    v = roi.astype(np.float64)
    n = v.size
    mean = v.sum() / n
    sq = (roi * roi).astype(np.float64) if c_parity else v * v      # quirk #11
    rms = math.sqrt(sq.sum() / ((n - 1) if c_parity else n))
    rmsd = math.sqrt(((v - mean) ** 2).sum() / (n - 1))
    g = format_g
    assert _printed(out, re.escape("max_I = %s  at " % g(float(img.max()))))
    assert _printed(out, re.escape("mean= %s rms= %s rmsd= %s" % (g(mean), g(rms), g(rmsd))))
    scale = 55000.0 / float(img.max())
    assert _printed(out, re.escape("intfile_scale = %s" % g(scale)))
    _, ints = read_smv(tmp_path / "i.img")
    np.testing.assert_array_equal(ints, _int_rule(img, scale, 25.0, (3, 60, 2, 58)))
    _, noise = read_smv(tmp_path / "n.img")
    outside = np.ones(img.shape, dtype=bool)
    outside[2:59, 3:61] = False
    assert not noise[outside].any() and not img[outside].any()
    photons = int(noise[~outside].astype(np.int64).sum()) - 25 * n
    assert _printed(out, "%d photons on noise image \\(0 overloads\\)" % photons)
    np.testing.assert_array_equal(noise, _noise(img, 9, adc=25.0, roi=(3, 60, 2, 58))[0])
    # the PGM: 250 grey levels for 5 rmsd, truncated, clipped at 255
    pscale = 250.0 / (5.0 * rmsd)
    assert _printed(out, re.escape("pgm_scale = %s" % g(pscale)))
    raw = (tmp_path / "p.pgm").read_bytes()
    pgm = np.frombuffer(raw[len(raw) - img.size:], dtype=np.uint8).reshape(img.shape)
    want = np.trunc(np.minimum(img.astype(np.float64) * pscale, 255.0)).astype(np.uint8)
    want[outside] = 0
    assert (pgm == 255).any() and (pgm[~outside] < 255).any()
    np.testing.assert_array_equal(pgm, want)


def test_statistics_with_a_mask():
    """Masked pixels are not rendered (0 in the float image) and leave max_I,
    mean, rms and rmsd (the spread of the unmasked pixels).  nanoBragg.c
    (-c_parity) takes rmsd about that mean over the whole ROI, masked zeros
    included (docs/quirks.md #27): 1290.6 against the unmasked pixels' 1519.7
    here.  Their integer pixel is the -adc pedestal and their noise pixel too
    (Poisson of 0 photons)."""
    rs = np.random.RandomState(4)
    mask = (rs.rand(64, 64) > 0.3).astype(np.uint16)
    res = nbnumba.simulate_argv(BRAGG + ["-seed", "2"], mask_image=mask)
    img = res.float_image.astype(np.float64)
    on = mask != 0
    assert not img[~on].any()
    v = img[on]
    mean = v.mean()
    st = res.stats
    assert st["max_I"] == v.max()
    assert st["mean"] == pytest.approx(mean, rel=1e-13)
    assert st["rms"] == pytest.approx(math.sqrt((v * v).sum() / v.size), rel=1e-13)
    assert st["rmsd"] == pytest.approx(math.sqrt(((v - mean) ** 2).sum() / (v.size - 1)),
                                       rel=1e-13)
    c = nbnumba.simulate_argv(BRAGG + ["-seed", "2", "-c_parity"], mask_image=mask).stats
    assert c["rmsd"] == pytest.approx(math.sqrt(((img - mean) ** 2).sum() / (img.size - 1)),
                                      rel=1e-13)
    assert c["rmsd"] < 0.9 * st["rmsd"]
    assert (res.int_image[~on] == 40).all() and (res.noise_image[~on] == 40).all()
