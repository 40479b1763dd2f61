"""Each nanoBragg.c defect in docs/quirks.md: default mode is correct, -c_parity
reproduces the C.  Closed-form or self-consistency checks (no C binary)."""
import math

import numpy as np
import pytest

import nbnumba
from nbnumba.model import build_model
from nbnumba.physics import rotate_axis

BASE = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-N", "5",
        "-default_F", "100", "-distance", "100", "-detpixels", "24", "-pixel", "0.2",
        "-nonoise", "-nopgm"]


def sim(extra, c_parity=False, **kw):
    argv = BASE + list(extra) + (["-c_parity"] if c_parity else [])
    return nbnumba.simulate_argv(argv, **kw)


def k_fracs(trace_lines):
    return [float(l.split("k_frac=")[1].split()[0]) for l in trace_lines if "_PHI " in l]


# 1 ---------------------------------------------------------------------------
def test_phi0_carryover_c_parity_reuses_last_step():
    extra = ["-phi", "0", "-osc", "0.9", "-phisteps", "10", "-oversample", "1", "-trace_pixel", "12", "12"]
    c = sim(extra, c_parity=True)
    d = sim(extra)
    kc, kd = k_fracs(c.trace_lines), k_fracs(d.trace_lines)
    assert len(kc) == len(kd) == 10
    # C: step 0 (phi == 0.0) reuses the cell of step 9
    assert kc[0] == kc[9]
    assert kc[1:] == kd[1:]
    # default: step 0 uses the unrotated cell, a different index
    assert abs(kd[0] - kd[9]) > 1e-6
    assert not np.array_equal(c.float_image, d.float_image)


def test_phi0_carryover_absent_for_nonzero_start():
    extra = ["-phi", "0.05", "-osc", "0.9", "-phisteps", "10"]
    np.testing.assert_array_equal(sim(extra, c_parity=True).float_image, sim(extra).float_image)


def test_phi0_carryover_first_pixel_sees_unrotated_cell():
    m = build_model(nbnumba.parse_argv(BASE + ["-phi", "0", "-osc", "1", "-phisteps", "3", "-c_parity"]))
    cells = m.cells
    # variant 0 (first loop): step 0 unrotated; variant 1: step 0 = last step
    np.testing.assert_array_equal(cells[0, 0, 0, 0], m.crystal.a)
    np.testing.assert_array_equal(cells[1, 0], cells[1, 2])
    rot = rotate_axis(m.crystal.a, m.det.spindle, m.phis[2])
    np.testing.assert_allclose(cells[1, 0, 0, 0], rot, rtol=0, atol=0)


# 2 ---------------------------------------------------------------------------
def test_pix0_vector_honoured_by_default_ignored_under_c_parity():
    pix0 = ["-pix0_vector_mm", "100", "3", "-2", "-Xbeam", "2.4", "-Ybeam", "2.4"]
    d = build_model(nbnumba.parse_argv(BASE + pix0))
    c = build_model(nbnumba.parse_argv(BASE + pix0 + ["-c_parity"]))
    assert d.det.pix0 == pytest.approx((0.1, 0.003, -0.002), abs=1e-15)
    # C recomputes pix0 from the beam centre (CUSTOM: Fbeam=Xbeam, Sbeam=Ybeam)
    exp = tuple(-0.0024 * f - 0.0024 * s + 0.1 * b
                for f, s, b in zip(c.det.fdet, c.det.sdet, c.det.beam))
    assert c.det.pix0 == pytest.approx(exp, abs=1e-15)
    # default mode derives the beam centre and distance from the given pix0
    assert d.det.Fbeam == pytest.approx(0.002, abs=1e-12)
    assert d.det.Sbeam == pytest.approx(0.003, abs=1e-12)
    assert d.det.close_distance == pytest.approx(0.1, abs=1e-12)
    assert c.det.Fbeam == pytest.approx(0.0024, abs=1e-12)


# 4 ---------------------------------------------------------------------------
def test_random_misset_cap():
    from nbnumba.rng import RngState, mosaic_rotation_umat
    seeds = range(-1, -40, -1)

    def angle(cap, seed):
        u = mosaic_rotation_umat(cap, np.array([seed]), RngState().buf)
        return math.degrees(math.acos(max(-1.0, min(1.0, (u[0] + u[4] + u[8] - 1) / 2))))

    assert max(angle(math.pi / 2, s) for s in seeds) <= 90.0 + 1e-6
    # the C's 90-radian cap wraps round many times: rotations reach beyond 90 deg
    assert max(angle(90.0, s) for s in seeds) > 90.0
    d = build_model(nbnumba.parse_argv(BASE + ["-misset", "random", "-misset_seed", "7"]))
    c = build_model(nbnumba.parse_argv(BASE + ["-misset", "random", "-misset_seed", "7", "-c_parity"]))
    assert d.crystal.misset != c.crystal.misset


# 6 ---------------------------------------------------------------------------
@pytest.fixture
def narrow_hkl(tmp_path):
    rng = np.random.default_rng(3)
    p = tmp_path / "narrow.hkl"
    with open(p, "w") as f:
        for h in range(-3, 9):
            for k in range(-3, 9):
                for l in range(-3, 9):
                    f.write("%d %d %d %.2f\n" % (h, k, l, rng.uniform(10, 100)))
    return p


def test_interpolation_latch(narrow_hkl, tmp_path):
    args = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-N", "2",
            "-hkl", str(narrow_hkl), "-distance", "50", "-detpixels", "32", "-pixel", "1",
            "-nonoise", "-nopgm"]
    c = nbnumba.simulate_argv(args + ["-c_parity"], cwd=tmp_path)
    d = nbnumba.simulate_argv(args, cwd=tmp_path)
    nn = nbnumba.simulate_argv(args + ["-nointerpolate"], cwd=tmp_path)
    p, _ = c.model.latch
    assert p >= 0, "test geometry must trigger an out-of-range lookup"
    s, f = divmod(p, 32)
    # every pixel after the latch is nearest-neighbour under -c_parity
    np.testing.assert_array_equal(c.float_image.ravel()[p + 1:], nn.float_image.ravel()[p + 1:])
    np.testing.assert_array_equal(c.float_image.ravel()[:p], d.float_image.ravel()[:p])
    # default mode keeps interpolating where it is safe
    assert not np.array_equal(d.float_image.ravel()[p + 1:], nn.float_image.ravel()[p + 1:])


# 7 ---------------------------------------------------------------------------
def test_oversample_factor_running_sum():
    extra = ["-oversample", "2"]
    plain = sim(extra).float_image.astype(float)
    d = sim(extra + ["-oversample_omega"]).float_image.astype(float)
    c = sim(extra + ["-oversample_omega"], c_parity=True).float_image.astype(float)
    # per-sub-pixel solid angles differ from the per-pixel one by < 1% here
    assert np.allclose(d, plain, rtol=1e-2, atol=1e-6 * plain.max())
    # the C multiplies the running sum by omega after every sub-path, so all but
    # the last sub-path's term are scaled by omega^2 or more: the last one dominates
    s, f = np.unravel_index(np.argmax(plain), plain.shape)
    assert c[s, f] / d[s, f] < 0.7


# 8 ---------------------------------------------------------------------------
def test_sensor_layers_capture():
    one = sim(["-detector_abs", "100", "-detector_thick", "200", "-detector_thicksteps", "1"])
    thin = sim([])
    d = sim(["-detector_abs", "100", "-detector_thick", "200", "-detector_thicksteps", "4"])
    c = sim(["-detector_abs", "100", "-detector_thick", "200", "-detector_thicksteps", "4"], c_parity=True)
    s, f = 12, 12
    pos = np.array(d.model.det.pix0) + (f + 0.5) * 2e-4 * np.array(d.model.det.fdet) \
        + (s + 0.5) * 2e-4 * np.array(d.model.det.sdet)
    cosang = abs(np.dot(pos / np.linalg.norm(pos), d.model.det.odet))
    mu, thick = 1.0 / 100e-6, 200e-6
    # 4 layers spanning 0..4*thickstep with thickstep = thick/3 (C's rule)
    tstep = thick / 3
    total = 1 - math.exp(-4 * tstep * mu / cosang)
    ratio = d.float_image[s, f] / thin.float_image[s, f]
    assert ratio == pytest.approx(total, rel=1e-2)
    last = math.exp(-3 * tstep * mu / cosang) - math.exp(-4 * tstep * mu / cosang)
    assert c.float_image[s, f] / thin.float_image[s, f] / 4 == pytest.approx(last, rel=1e-2)
    assert one.float_image[s, f] < thin.float_image[s, f]
