"""Each nanoBragg.c defect in docs/quirks.md: default mode is correct, -c_parity
reproduces the C.  Closed-form or self-consistency checks (no C binary)."""
import math

import numpy as np
import pytest

import nbnumba
from nbnumba.model import build_model
from nbnumba.physics import rotate_axis

# a monoclinic cell (beta != 90): one that nanoBragg.c builds right (#13 needs
# sin(gamma) != sin(gamma*)), so -c_parity and the default mode differ only by the
# defect under test
BASE = ["-cell", "70", "80", "90", "90", "95", "90", "-lambda", "1.5", "-N", "5",
        "-default_F", "100", "-distance", "100", "-detpixels", "24", "-pixel", "0.2",
        "-nonoise", "-nopgm"]


def sim(extra, c_parity=False, **kw):
    argv = BASE + list(extra) + (["-c_parity"] if c_parity else [])
    return nbnumba.simulate_argv(argv, **kw)


def k_fracs(trace_lines):
    return [float(l.split("k_frac=")[1].split()[0]) for l in trace_lines if "_PHI " in l]


# 1 ---------------------------------------------------------------------------
# (-phistep alone samples phi0 and phi0 + step in both modes: #28 keeps the C's
# points where they are centred in the oscillation already)
def test_phi0_carryover_c_parity_reuses_last_step():
    extra = ["-phi", "0", "-phistep", "0.9", "-oversample", "1", "-trace_pixel", "12", "12"]
    c = sim(extra, c_parity=True)
    d = sim(extra)
    assert [float(p) for p in c.model.phis] == [float(p) for p in d.model.phis]
    kc, kd = k_fracs(c.trace_lines), k_fracs(d.trace_lines)
    assert len(kc) == len(kd) == 2
    # C: step 0 (phi == 0.0) reuses the cell of the last step
    assert kc[0] == kc[1]
    assert kc[1:] == kd[1:]
    # default: step 0 uses the unrotated cell, a different index
    assert abs(kd[0] - kd[1]) > 1e-6
    assert not np.array_equal(c.float_image, d.float_image)


def test_phi0_carryover_absent_for_nonzero_start():
    extra = ["-phi", "0.05", "-phistep", "0.9"]
    np.testing.assert_array_equal(sim(extra, c_parity=True).float_image, sim(extra).float_image)


def test_phi0_carryover_first_pixel_sees_unrotated_cell():
    m = build_model(nbnumba.parse_argv(BASE + ["-phi", "0", "-osc", "1", "-phisteps", "3", "-c_parity"]))
    cells = m.cells
    # variant 0 (first loop): step 0 unrotated; variant 1: step 0 = last step
    np.testing.assert_array_equal(cells[0, 0, 0, 0], m.crystal.a)
    np.testing.assert_array_equal(cells[1, 0], cells[1, 2])
    rot = rotate_axis(m.crystal.a, m.det.spindle, m.phis[2])
    np.testing.assert_allclose(cells[1, 0, 0, 0], rot, rtol=0, atol=0)


@pytest.mark.parametrize("c_parity", [False, True])
@pytest.mark.parametrize("phis", [[0.0, 0.3, 0.0, -1.1], [0.2, 0.5], [0.0]])
def test_rotated_cells_apply_each_domain_as_rotate_umat(phis, c_parity):
    """rotated_cells turns every (phi, domain) cell at once with numpy; each
    must be bit for bit the per-vector routines: under -c_parity
    rotate_umat(rotate_axis(v, spindle, phi), U_m), nanoBragg.c's order (with
    the carry-over of the phi == 0 steps, as in its loop); in the default mode
    rotate_axis(rotate_umat(v, U_m), spindle, phi), the block turning with the
    crystal (docs/quirks.md #41)."""
    from types import SimpleNamespace

    from nbnumba import crystal as xtal
    rs = np.random.RandomState(7)
    cr = SimpleNamespace(a=tuple(rs.randn(3) * 7e-9), b=tuple(rs.randn(3) * 8e-9),
                         c=tuple(rs.randn(3) * 9e-9))
    spindle = tuple(rs.randn(3))
    umats = rs.randn(4, 9)
    out = xtal.rotated_cells(cr, spindle, phis, umats, 0.5, c_parity)
    base = (cr.a, cr.b, cr.c)
    nonzero = [p for p in phis if p != 0.0]
    for variant in range(2):
        state = base
        if c_parity and variant == 1 and nonzero:
            state = tuple(xtal.rotate_axis(v, spindle, nonzero[-1]) for v in base)
        for t, p in enumerate(phis):
            if p != 0.0:
                state = tuple(xtal.rotate_axis(v, spindle, p) for v in base)
            elif not c_parity:
                state = base
            for m in range(4):
                for j in range(3):
                    if c_parity:
                        want = xtal.rotate_umat(state[j], umats[m])
                    else:
                        want = xtal.rotate_umat(base[j], umats[m])
                        want = xtal.rotate_axis(want, spindle, p) if p != 0.0 else want
                    assert tuple(out[variant, t, m, j]) == tuple(want)
    # no mosaic spread: the phi-rotated vectors themselves
    flat = xtal.rotated_cells(cr, spindle, phis, umats, 0.0, c_parity)
    assert tuple(flat[1, -1, 3, 2]) == (tuple(xtal.rotate_axis(cr.c, spindle, phis[-1]))
                                        if phis[-1] != 0.0 else
                                        tuple(flat[1, -1, 0, 2]))


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
def _misset_rotation_angle(misset):
    """Rotation angle (deg) of the orientation that the misset angles apply."""
    from nbnumba.physics import host
    m = np.array([host.rotate_xyz(tuple(e), *misset) for e in np.eye(3)])
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(m) - 1) / 2))))


def _ks_pvalue(samples, cdf):
    """One-sample Kolmogorov-Smirnov test, asymptotic p-value (Stephens' n correction)."""
    x = np.sort(np.asarray(samples))
    n = len(x)
    F = cdf(x)
    D = max(np.max(np.arange(1, n + 1) / n - F), np.max(F - np.arange(n) / n))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * D
    k = np.arange(1, 101)
    return float(min(1.0, max(0.0, 2 * np.sum((-1.0) ** (k - 1) * np.exp(-2 * k * k * lam * lam)))))


def _random_missets(c_parity, n):
    from dataclasses import replace
    from nbnumba import crystal as xtal
    from nbnumba.rng import RngState
    cfg = replace(nbnumba.parse_argv(BASE + ["-misset", "random"]), c_parity=c_parity)
    return [xtal.build_crystal(cfg, None, cfg.lambda0, RngState(), -seed).misset for seed in range(1, n + 1)]


def test_random_misset_is_uniform_on_so3():
    """Default mode: the rotation angle of a Haar-uniform rotation has the CDF
    (theta - sin theta)/pi (median 132.4 deg).  The C's capped draw (kept under
    -c_parity) fails this, and so did the earlier 90-degree cap (median 81 deg)."""
    haar_cdf = lambda t: (np.radians(t) - np.sin(np.radians(t))) / math.pi   # noqa: E731
    angles = [_misset_rotation_angle(m) for m in _random_missets(False, 2000)]
    assert _ks_pvalue(angles, haar_cdf) > 1e-3
    assert np.mean(np.array(angles) > 90.0) == pytest.approx(1 - haar_cdf(90.0), abs=0.03)   # 0.818
    capped = [_misset_rotation_angle(m) for m in _random_missets(True, 300)]
    assert _ks_pvalue(capped, haar_cdf) < 1e-6


def test_random_misset_printed_angles_reproduce_orientation():
    args = BASE + ["-misset", "random", "-misset_seed", "11"]
    for extra in ([], ["-c_parity"]):
        m = build_model(nbnumba.parse_argv(args + extra))
        line = [l for l in m.log if l.startswith("random orientation misset angles:")][0]
        given = line.split(":")[1].split()[:3]
        again = build_model(nbnumba.parse_argv(BASE + ["-misset"] + given + extra))
        # printed with %f (1e-6 deg): the cells agree to ~1e-8 relative
        for v1, v2 in ((m.crystal.astar, again.crystal.astar), (m.crystal.cstar, again.crystal.cstar)):
            np.testing.assert_allclose(v2, v1, rtol=0, atol=1e-7 * np.linalg.norm(v1))


def test_random_misset_c_parity_is_the_c_draw():
    """-c_parity: nanoBragg.c's printed angles for -misset_seed 7 (golden case
    misset_random's stdout)."""
    from nbnumba.testing import golden as G
    c_line = [l for l in (G.case_dir("misset_random") / "stdout.txt").read_text().splitlines()
              if l.startswith("random orientation misset angles")][0]
    m = build_model(nbnumba.parse_argv(BASE + ["-misset", "random", "-misset_seed", "7", "-c_parity"]))
    assert [l for l in m.log if l.startswith("random orientation misset angles")][0] == c_line


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
    args = ["-cell", "70", "80", "90", "90", "95", "90", "-lambda", "1.5", "-N", "2",      # see BASE
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


def test_interpolation_fallback_is_reported(narrow_hkl, tmp_path):
    # nanoBragg.c prints "WARNING: out of range for three point interpolation"
    # at its first lookup outside the table (and turns interpolation off);
    # nbnumba said nothing in either mode
    from nbnumba.summary import result_lines
    args = ["-cell", "70", "80", "90", "90", "95", "90", "-lambda", "1.5", "-N", "2",
            "-hkl", str(narrow_hkl), "-distance", "50", "-detpixels", "32", "-pixel", "1",
            "-nonoise", "-nopgm"]
    d = nbnumba.simulate_argv(args, cwd=tmp_path)
    n = d.model.interp_fallback
    assert 0 < n < 32 * 32
    lines = [ln for ln in result_lines(d) if "interpolation" in ln]
    assert lines == ["  nbnumba: note: interpolation: %d pixels had structure-factor lookups outside "
                     "the HKL table's interpolation range; F there is the nearest point's (nanoBragg.c "
                     "turns interpolation off for the rest of the image at the first one: "
                     "docs/quirks.md #6)" % n]
    # counted over the rendered pixels only: two halves of the detector add up
    top = nbnumba.simulate_argv(args + ["-roi", "0", "31", "0", "15"], cwd=tmp_path)
    bottom = nbnumba.simulate_argv(args + ["-roi", "0", "31", "16", "31"], cwd=tmp_path)
    assert top.model.interp_fallback + bottom.model.interp_fallback == n
    assert 0 < top.model.interp_fallback < n
    # no interpolation, nothing to report
    nn = nbnumba.simulate_argv(args + ["-nointerpolate"], cwd=tmp_path)
    assert nn.model.interp_fallback == 0
    assert not [ln for ln in result_lines(nn) if "interpolation" in ln]
    # -c_parity names the pixel where the C's latch turns interpolation off
    c = nbnumba.simulate_argv(args + ["-c_parity"], cwd=tmp_path)
    s, f = divmod(c.model.latch[0], 32)
    assert [ln for ln in result_lines(c) if "interpolation" in ln] == [
        "  nbnumba: -c_parity: interpolation off from pixel (slow %d, fast %d) on, as nanoBragg.c "
        "turns it off after its first lookup outside the HKL table's range (docs/quirks.md #6)"
        % (s, f)]


# 7, and the water background under the -oversample_* switches ------------------
# A structure-factor table of zeros leaves the water background alone in the
# pixel, so every factor it gets can be written down in closed form.
R_E_SQR = 7.94079248018965e-30        # Thomson cross-section (m^2)
WATER_UM = 100


@pytest.fixture
def zero_hkl(tmp_path):
    p = tmp_path / "zero.hkl"
    p.write_text("0 0 0 0.0\n")
    return str(p)


def _bg_only(zero_hkl, extra, c_parity=False):
    args = ["-cell", "70", "80", "90", "90", "90", "90", "-lambda", "1.5", "-N", "5", "-hkl", zero_hkl,
            "-distance", "100", "-detpixels", "24", "-pixel", "0.2", "-water", str(WATER_UM),
            "-oversample", "2", "-nonoise", "-nopgm"] + list(extra)
    return nbnumba.simulate_argv(args + (["-c_parity"] if c_parity else []))


# F_water^2 times the water molecules in a cube of side -water: V N_A / MW (1e6 g/m^3)
WATER_F2N = 2.57 ** 2 * (WATER_UM * 1e-6) ** 3 * 1e6 * 6.02214179e23 / 18.0


def _water_I_bg(fluence):
    # nanoBragg's amorphous water term, r_e^2 fluence F_water^2 N (the default fluence
    # makes r_e^2 fluence exactly 1, where C's and the corrected background agree; #14)
    return R_E_SQR * fluence * WATER_F2N


def _subpixel_geometry(det, s, f, os, odepth=0.0):
    """(solid angle, unit diffracted vector) at the centre of each sub-pixel."""
    out = []
    sub = det.pixel_size / os
    for subS in range(os):
        for subF in range(os):
            pos = (np.array(det.pix0) + (sub * (f * os + subF) + sub / 2) * np.array(det.fdet)
                   + (sub * (s * os + subS) + sub / 2) * np.array(det.sdet) + odepth * np.array(det.odet))
            R = np.linalg.norm(pos)
            out.append((det.pixel_size ** 2 / R ** 2 * det.close_distance / R, pos / R))
    return out


def test_water_background_takes_oversampled_omega(zero_hkl):
    d = _bg_only(zero_hkl, ["-nopolar", "-oversample_omega"])
    c = _bg_only(zero_hkl, ["-nopolar", "-oversample_omega"], c_parity=True)
    s, f = 5, 17
    om = [o for o, _ in _subpixel_geometry(d.model.det, s, f, 2)]
    # the background once (nanoBragg.c: divided by the 4 sub-paths, #19)
    scale = R_E_SQR * d.model.fluence * _water_I_bg(d.model.fluence)
    # default: the background gets the mean sub-pixel solid angle (~1e-5 sr here)
    assert d.float_image[s, f] == pytest.approx(scale * np.mean(om), rel=1e-6)
    # nanoBragg.c multiplies the running sum by each sub-pixel's omega: a product
    assert c.float_image[s, f] == pytest.approx(scale / 4 * np.prod(om), rel=1e-6)


def test_water_background_takes_oversampled_polar(zero_hkl):
    d = _bg_only(zero_hkl, ["-oversample_polar"])
    c = _bg_only(zero_hkl, ["-oversample_polar"], c_parity=True)
    s, f = 0, 23          # a corner: 2theta ~ 1.5 deg differs between sub-pixels
    geo = _subpixel_geometry(d.model.det, s, f, 2)
    beam = np.array(d.model.det.beam)
    # Kahn factor 0: polar = (1 + cos^2 2theta) / 2 per sub-pixel
    pol = [0.5 * (1 + np.dot(beam, u) ** 2) for _, u in geo]
    scale = R_E_SQR * d.model.fluence * _water_I_bg(d.model.fluence) * geo[0][0]
    assert d.float_image[s, f] == pytest.approx(scale * np.mean(pol), rel=1e-6)
    assert c.float_image[s, f] == pytest.approx(scale / 4 * np.prod(pol), rel=1e-6)   # (#19)


def test_water_background_takes_oversampled_capture(zero_hkl):
    mu, thick = 1 / 100e-6, 200e-6
    extra = ["-nopolar", "-oversample_thick", "-detector_abs", "100", "-detector_thick", "200",
             "-detector_thicksteps", "2"]
    d = _bg_only(zero_hkl, extra)
    c = _bg_only(zero_hkl, extra, c_parity=True)
    s, f = 3, 20
    det = d.model.det

    def captures(step):
        out = []
        for t in range(2):
            for _, u in _subpixel_geometry(det, s, f, 2, odepth=t * step):
                par = np.dot(u, det.odet)
                out.append(math.exp(-t * step * mu / par) - math.exp(-(t + 1) * step * mu / par))
        return np.array(out)

    scale = R_E_SQR * d.model.fluence * _water_I_bg(d.model.fluence) \
        * _subpixel_geometry(det, s, f, 2)[0][0]
    cap = captures(thick / 2)       # default: 2 layers of thick/2
    # each layer's mean capture fraction, summed over the layers
    assert d.float_image[s, f] == pytest.approx(scale * cap.reshape(2, 4).mean(axis=1).sum(), rel=1e-6)
    cap_c = captures(thick / 1)     # C: thickstep = thick/(steps-1)
    assert c.float_image[s, f] == pytest.approx(scale / 4 * np.prod(cap_c), rel=1e-6)  # (#19)


def test_oversample_factor_running_sum():
    """-N 1 makes every sub-path's crystal term F^2 (F_latt = 1).  The default
    mode weights each term by its own sub-pixel omega: F^2 sum(omega_k).
    nanoBragg.c multiplies the running sum by omega after every sub-path:
    F^2 (((omega_1 + 1) omega_2 + 1) omega_3 + 1) omega_4."""
    args = ["-cell", "70", "80", "90", "90", "90", "90", "-lambda", "1.5", "-N", "1", "-default_F", "100",
            "-distance", "100", "-detpixels", "24", "-pixel", "0.2", "-nonoise", "-nopgm",
            "-oversample", "2", "-nopolar", "-oversample_omega"]
    d = nbnumba.simulate_argv(args)
    c = nbnumba.simulate_argv(args + ["-c_parity"])
    s, f = 7, 19
    om = [o for o, _ in _subpixel_geometry(d.model.det, s, f, 2)]
    scale = R_E_SQR * d.model.fluence * 100.0 ** 2 / 4
    assert d.float_image[s, f] == pytest.approx(scale * sum(om), rel=1e-6)
    running = 0.0
    for o in om:
        running = (running + 1.0) * o
    assert c.float_image[s, f] == pytest.approx(scale * running, rel=1e-6)


# 8 ---------------------------------------------------------------------------
def _cos_parallax(res, s, f):
    d = res.model.det
    pos = np.array(d.pix0) + (f + 0.5) * d.pixel_size * np.array(d.fdet) \
        + (s + 0.5) * d.pixel_size * np.array(d.sdet)
    return abs(np.dot(pos / np.linalg.norm(pos), d.odet))


@pytest.mark.parametrize("nlayers", [1, 4])
def test_sensor_layers_capture(nlayers):
    mu, thick = 1.0 / 100e-6, 200e-6
    sensor = ["-oversample", "1", "-detector_abs", "100", "-detector_thick", "200",
              "-detector_thicksteps", str(nlayers)]
    thin = sim(["-oversample", "1"])
    d = sim(sensor)
    c = sim(sensor, c_parity=True)
    s, f = 12, 12
    cosang = _cos_parallax(d, s, f)
    ratio_d = d.float_image[s, f] / thin.float_image[s, f]
    ratio_c = c.float_image[s, f] / thin.float_image[s, f]
    # default: the layers split the sensor, so together they absorb 1 - exp(-mu t / cos)
    # (0.864 here; C's layers absorb 0.931 for 4 layers and 0.981 for 1)
    assert d.model.steps.detector_thicksteps == nlayers
    assert ratio_d == pytest.approx(1 - math.exp(-thick * mu / cosang), rel=2e-3)
    # C: max(N, 2) layers of thick/(N-1), summed, times the last layer's capture
    n_c = max(nlayers, 2)
    tstep = thick / (n_c - 1)
    last = math.exp(-(n_c - 1) * tstep * mu / cosang) - math.exp(-n_c * tstep * mu / cosang)
    assert c.model.steps.detector_thicksteps == n_c
    assert ratio_c == pytest.approx(n_c * last, rel=2e-3)


def test_sensor_layer_rules_default_mode():
    from dataclasses import replace
    from nbnumba.sampling import resolve_steps
    cfg = nbnumba.parse_argv(BASE)
    cases = [  # (thick, step, steps) given -> (thick, step, steps) used
        ((200e-6, -1.0, 4), (200e-6, 50e-6, 4)),
        ((200e-6, -1.0, 1), (200e-6, 200e-6, 1)),
        ((200e-6, -1.0, -1), (200e-6, 100e-6, 2)),
        ((200e-6, 30e-6, -1), (200e-6, 200e-6 / 7, 7)),
        ((200e-6, 60e-6, 4), (200e-6, 50e-6, 4)),
        ((0.0, -1.0, -1), (0.0, 0.0, 1)),
        ((0.0, 30e-6, -1), (0.0, 0.0, 1)),      # no thickness: no absorption, as in the C
        ((0.0, -1.0, 4), (0.0, 0.0, 1)),
    ]
    for given, want in cases:
        st = resolve_steps(replace(cfg, detector_thick=given[0], detector_thickstep=given[1],
                                   detector_thicksteps=given[2]))
        got = (st.detector_thick, st.detector_thickstep, st.detector_thicksteps)
        assert got == pytest.approx(want, rel=1e-15), given
        # the layers cover the sensor exactly
        assert st.detector_thickstep * st.detector_thicksteps == pytest.approx(st.detector_thick, rel=1e-15)


# solid angle, statistics, ADC ------------------------------------------------
def test_omega_sum_is_the_detector_solid_angle():
    r1 = sim(["-phi", "0.1", "-osc", "1", "-phisteps", "1", "-oversample", "1"])
    r10 = sim(["-phi", "0.1", "-osc", "1", "-phisteps", "10", "-oversample", "1"])
    c10 = sim(["-phi", "0.1", "-osc", "1", "-phisteps", "10", "-oversample", "1"], c_parity=True)
    det = r1.model.det
    total = sum(_subpixel_geometry(det, s, f, 1)[0][0] for s in range(24) for f in range(24))
    assert r1.stats["omega_sum"] == pytest.approx(total, rel=1e-12)
    assert r10.stats["omega_sum"] == pytest.approx(total, rel=1e-12)
    # nanoBragg.c divides by every step, phi steps included
    assert c10.stats["omega_sum"] == pytest.approx(total / 10, rel=1e-12)


def test_rms_squares_in_float32_under_c_parity():
    """Pixels of ~1e-24 photons: their squares underflow in float32.  nanoBragg.c
    prints rms= 5.23411e-24 for this command ($NB_C_BIN, 32x32 pixels)."""
    args = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5", "-lambda", "1.5",
            "-distance", "100", "-detpixels", "32", "-pixel", "0.2", "-nonoise", "-nopgm", "-fluence", "1e4"]
    c = nbnumba.simulate_argv(args + ["-c_parity"])
    d = nbnumba.simulate_argv(args)
    assert "%g" % c.stats["rms"] == "5.23411e-24"
    v = d.float_image.astype(np.float64).ravel()
    assert d.stats["rms"] == pytest.approx(math.sqrt(np.sum(v * v) / v.size), rel=1e-12)   # (#35)
    assert "%g" % d.stats["rms"] == "5.71514e-24"


def test_noise_of_nan_pixel_is_not_an_integer():
    from nbnumba.rng import RngState, noise_image, poidev
    st = RngState()
    assert math.isnan(poidev(np.float32("nan"), np.array([-5], dtype=np.int64), st.buf, st.gauss))
    img = np.full((2, 3), 20.0, dtype=np.float32)
    img[1, 1] = np.nan
    out, photons, overloads, _ = noise_image(img, -5, RngState().buf, RngState().gauss, 0.0,
                                             np.array([0, 2, 0, 1], dtype=np.int64))
    assert math.isnan(photons) and out[1, 1] == 0 and overloads == 0
    from nbnumba.kernels.cpu import int_image
    ints = int_image(img, np.array([0, 2, 0, 1], dtype=np.int64), 1.0, 0.0)
    assert ints[1, 1] == 0 and ints[0, 0] == 20


def test_negative_adc():
    """nanoBragg.c stores each negative noise count through an int cast, so -5
    becomes 65531 ($NB_C_BIN on this command: 889 pixels of 65531..65535, 23
    zeros, 3849 photons).  The default mode clamps them to 0."""
    args = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5", "-lambda", "1.5",
            "-distance", "100", "-detpixels", "32", "-adc", "-5", "-seed", "12345", "-nopgm"]
    c = nbnumba.simulate_argv(args + ["-c_parity"])
    d = nbnumba.simulate_argv(args)
    assert c.stats["photons"] == d.stats["photons"] == 3849
    assert int((c.noise_image >= 65531).sum()) == 889 and int((c.noise_image == 0).sum()) == 23
    assert int((c.noise_image == 65531).sum()) == 661
    assert int(d.noise_image.max()) < 65531 and int((d.noise_image == 0).sum()) == 23 + 889
    wrapped = c.noise_image >= 65531
    np.testing.assert_array_equal(d.noise_image[~wrapped], c.noise_image[~wrapped])
    from nbnumba.quirks import c_differences
    assert [n for n, _ in c_differences(d.model)] == [12] and not c_differences(c.model)
    assert not c_differences(nbnumba.simulate_argv(args + ["-nonoise"]).model)


# 14 --------------------------------------------------------------------------
def test_water_background_scales_once_with_fluence(zero_hkl):
    """Water alone (F = 0), 2x2 sub-pixels without -oversample_* switches: the pixel
    is r_e^2 fluence F_w^2 N times the first sub-pixel's solid angle.  nanoBragg.c's
    I_bg holds r_e^2 fluence already, so it grows as fluence^2 (and it divides it by
    the 4 sub-paths: #19)."""
    s, f = 5, 17
    d = _bg_only(zero_hkl, ["-nopolar", "-fluence", "1e24"])
    d2 = _bg_only(zero_hkl, ["-nopolar", "-fluence", "2e24"])
    c = _bg_only(zero_hkl, ["-nopolar", "-fluence", "1e24"], c_parity=True)
    om0 = _subpixel_geometry(d.model.det, s, f, 2)[0][0]
    r2f = R_E_SQR * 1e24                                     # 7.9e-6, not 1
    assert d.float_image[s, f] == pytest.approx(r2f * WATER_F2N * om0, rel=1e-6)
    assert c.float_image[s, f] == pytest.approx(r2f * r2f * WATER_F2N / 4 * om0, rel=1e-6)
    # linear in fluence (the C: quadratic)
    np.testing.assert_allclose(d2.float_image, 2 * d.float_image, rtol=2e-7)
    from nbnumba.quirks import c_differences
    assert [n for n, _ in c_differences(d.model)] == [14, 19] and not c_differences(c.model)


# 13 --------------------------------------------------------------------------
def _reciprocal_basis(a, b, c, al, be, ga, cstar_z_factor=1.0):
    """Rows a*, b*, c* of the standard orthogonalisation (a* along x, b* in the xy
    plane), from the textbook formulas; c*_z = 1/c since c is along z.
    ``cstar_z_factor`` scales c*_z (nanoBragg.c: sin(gamma)/sin(gamma*))."""
    al, be, ga = (math.radians(x) for x in (al, be, ga))
    V = a * b * c * math.sqrt(1 - math.cos(al) ** 2 - math.cos(be) ** 2 - math.cos(ga) ** 2
                              + 2 * math.cos(al) * math.cos(be) * math.cos(ga))
    ast, bst, cst = b * c * math.sin(al) / V, c * a * math.sin(be) / V, a * b * math.sin(ga) / V
    cas = (math.cos(be) * math.cos(ga) - math.cos(al)) / (math.sin(be) * math.sin(ga))
    cbs = (math.cos(ga) * math.cos(al) - math.cos(be)) / (math.sin(ga) * math.sin(al))
    cgs = (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be))
    sgs = math.sqrt(1 - cgs * cgs)
    return np.array([[ast, 0, 0], [bst * cgs, bst * sgs, 0],
                     [cst * cbs, cst * (cas - cbs * cgs) / sgs, cstar_z_factor / c]]), sgs


def _cell_of(a, b, c):
    """(|a|, |b|, |c|, alpha, beta, gamma in degrees) of three real-space vectors."""
    a, b, c = (np.asarray(v, dtype=float) for v in (a, b, c))

    def ang(u, v):
        return math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))
    return np.array([np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(c), ang(b, c), ang(a, c), ang(a, b)])


def _cell_model(cell, c_parity=False):
    argv = ["-cell", *cell.split(), "-default_F", "1", "-N", "2", "-misset", "10", "20", "30",
            "-detpixels", "8", "-nonoise", "-nopgm"] + (["-c_parity"] if c_parity else [])
    return build_model(nbnumba.parse_argv(argv))


@pytest.mark.parametrize("cell, c_wrong", [
    ("70 80 90 85 95 100", True), ("50 50 50 80 80 80", True), ("60 70 80 85 95 100", True),
    ("70 80 90 90 100 90", False), ("70 70 90 90 90 120", False), ("70 80 90 90 90 90", False)])
def test_cell_is_the_requested_one(cell, c_wrong):
    """The cell rebuilt from the reciprocal vectors (a = b* x c* / V*, the rows of
    inv(B*)^T) and the real-space vectors the kernel uses both have the requested
    edges and angles, after any misset.  Where nanoBragg.c's cell is right but for
    rounding (sin(gamma) = sin(gamma*)), the default mode keeps the C's bits."""
    m = _cell_model(cell)
    assert m.crystal.c_cell_wrong == c_wrong
    if not c_wrong:
        c = _cell_model(cell, c_parity=True)
        for k in ("a", "b", "c", "astar", "bstar", "cstar"):
            assert np.array_equal(getattr(m.crystal, k), getattr(c.crystal, k)), k
    want = np.array([float(x) for x in cell.split()])
    cr = m.crystal
    real = np.linalg.inv(np.array([cr.astar, cr.bstar, cr.cstar])).T        # Angstrom
    np.testing.assert_allclose(_cell_of(*real), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(_cell_of(*(np.array([cr.a, cr.b, cr.c]) * 1e10)), want, rtol=1e-12, atol=0)
    np.testing.assert_allclose(cr.cell, want, rtol=1e-12, atol=0)
    # the per-(phi, mosaic) cells the kernel reads (metres; one phi step, no mosaic)
    np.testing.assert_allclose(_cell_of(*(m.cells[1, 0, 0] * 1e10)), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cell, printed", [
    ("70 80 90 85 95 100", "Unit Cell: 70 80 90 84.9945 95.0055 100.001"),   # nanoBragg.c's own line
    ("50 50 50 80 80 80", None)])
def test_cell_angles_under_c_parity(cell, printed):
    """nanoBragg.c sets c*_z = sin(gamma)/(c sin(gamma*)): its cell has the real-space
    directions of that reciprocal basis and the requested edge lengths."""
    p = [float(x) for x in cell.split()]
    ok, sgs = _reciprocal_basis(*p)
    bad, _ = _reciprocal_basis(*p, cstar_z_factor=math.sin(math.radians(p[5])) / sgs)
    # the textbook basis itself reproduces the cell: the test's own formulas are right
    np.testing.assert_allclose(_cell_of(*np.linalg.inv(ok).T), p, rtol=1e-12, atol=0)
    expect = _cell_of(*np.linalg.inv(bad).T)[3:]
    c = _cell_model(cell, c_parity=True)
    np.testing.assert_allclose(c.crystal.cell[:3], p[:3], rtol=1e-12, atol=0)
    np.testing.assert_allclose(c.crystal.cell[3:], expect, rtol=0, atol=1e-9)
    assert np.max(np.abs(expect - p[3:])) > 1e-3          # the defect is real here
    if printed:
        assert printed in c.crystal.log
    # the default mode announces the difference, -c_parity does not
    from nbnumba.quirks import c_differences
    assert 13 in [n for n, _ in c_differences(_cell_model(cell))] and not c_differences(c)



# 15 --------------------------------------------------------------------------
def test_nopolar_wins_over_oversample_polar_in_the_default_mode():
    """nanoBragg.c recomputes the polarization factor whenever -oversample_polar
    is on ("if (polar == 0.0 || oversample_polar)"), so -nopolar is lost; found by
    tools/fuzz.py reference.  The default mode keeps the factor 1."""
    extra = ["-oversample", "2", "-nopolar", "-divergence", "2", "-divsteps", "2"]
    d = sim(extra + ["-oversample_polar"])
    np.testing.assert_array_equal(d.float_image, sim(extra).float_image)
    c = sim(extra + ["-oversample_polar"], c_parity=True)
    polarized = sim(extra[:2] + extra[3:] + ["-oversample_polar"], c_parity=True)
    np.testing.assert_array_equal(c.float_image, polarized.float_image)     # the C's defect
    assert np.max(np.abs(c.float_image / d.float_image - 1.0)) > 1e-3
    from nbnumba.quirks import c_differences
    # (#22: the divergence's 2 points at the middles of its halves, #44)
    assert [n for n, _ in c_differences(d.model)] == [7, 15, 44] and not c_differences(c.model)


# 16 --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["-gauss_xtal", "-tophat_spots"])
def test_spot_scale_in_both_modes(shape):
    """The gauss/tophat radius scale (fopt F_SPOT): (Na Nb Nc V_cell)^(2/3) in A^2
    by default, 0 under -c_parity, which makes the kernels form the C's
    (Na Nb Nc)^2 in its own order (the golden gauss/tophat cases hold those
    images bit for bit).  The two modes' images differ, and the note names #16."""
    from nbnumba.kernels import layout as K
    from nbnumba.quirks import c_differences
    extra = [shape, "-Na", "4", "-Nb", "5", "-Nc", "6"]
    d, c = sim(extra), sim(extra, c_parity=True)
    cell = d.model.crystal
    volume = 1.0 / abs(np.dot(cell.astar, np.cross(cell.bstar, cell.cstar)))     # A^3
    spot = d.model.kernel_args(np.float64)[1][K.F_SPOT]
    assert spot == pytest.approx((4 * 5 * 6 * volume) ** (2.0 / 3.0), rel=1e-15)
    assert c.model.kernel_args(np.float64)[1][K.F_SPOT] == 0.0
    assert np.count_nonzero(d.float_image != c.float_image) > 0
    assert [n for n, _ in c_differences(d.model)] == [16] and not c_differences(c.model)
    assert [n for n, _ in c_differences(sim([]).model)] == []


def test_spot_scale_doubles_its_root_exactly():
    """Every length doubled makes the spot scale's argument 8 times larger; its cube
    root must then double exactly, so that the radius keeps its bits.  libm's cbrt
    (numpy's) misses that for about 1 % of arguments; crystal.cube_root does not,
    and agrees with it to an ulp.  spot_scale of halved a*, b*, c* is 4 times."""
    from nbnumba.crystal import cube_root, spot_scale
    rng = np.random.default_rng(0)
    x = rng.random(20000) * 10.0 ** rng.uniform(-30, 30, 20000)
    assert np.count_nonzero(np.cbrt(8 * x) != 2 * np.cbrt(x)) > 50
    for v in x:
        r = cube_root(float(v))
        assert cube_root(8.0 * v) == 2.0 * r
        assert abs(r - np.cbrt(v)) <= np.spacing(r)
    for _ in range(1000):
        a, b, c = (rng.uniform(0.001, 0.05, 3) for _ in range(3))
        N = [float(n) for n in rng.integers(1, 30, 3)]
        s = spot_scale(False, *N, a, b, c)
        assert spot_scale(False, *N, a / 2, b / 2, c / 2) == 4.0 * s
        assert s == pytest.approx((N[0] * N[1] * N[2] / abs(np.dot(a, np.cross(b, c))))
                                  ** (2.0 / 3.0), rel=1e-14)


# 18 --------------------------------------------------------------------------
def test_non_unit_odet_keeps_its_side_in_the_default_mode():
    """nanoBragg.c replaces a -odet_vector whose length is not exactly 1 by fdet x sdet;
    in a left-handed frame (ADXV's, here as custom vectors) that is the opposite
    normal.  Found by tools/fuzz.py metamorphic ('rotation': a turned frame's
    rounded normal is an ulp off length 1, and the run was refused as facing away).
    The default mode keeps the given side: the same image as the unit vector."""
    from nbnumba import parse_argv
    from nbnumba.geometry import build_detector
    from nbnumba.quirks import c_differences
    adxv = ["-beam_vector", "0", "0", "1", "-fdet_vector", "1", "0", "0", "-sdet_vector", "0",
            "-1", "0", "-polar_vector", "1", "0", "0", "-spindle_axis", "1", "0", "0"]
    unit = sim(adxv + ["-odet_vector", "0", "0", "1"])
    for odet in (["0", "0", "2"], ["0", "0.6", "0.8000001"]):
        d = sim(adxv + ["-odet_vector"] + odet)
        if odet[0] == "0" and odet[1] == "0":
            np.testing.assert_array_equal(d.float_image, unit.float_image)
        assert d.model.det.odet == (0.0, 0.0, 1.0)
        assert 18 in [n for n, _ in c_differences(d.model)]
        c = build_detector(parse_argv(BASE + adxv + ["-odet_vector"] + odet + ["-c_parity"]))
        assert c.odet == (0.0, 0.0, -1.0) and not c.odet_side_kept      # the C's fdet x sdet
    assert 18 not in [n for n, _ in c_differences(unit.model)]



@pytest.mark.parametrize("frame", [["-mosflm"], ["-xds"], ["-mosflm", "-Xbeam", "1", "-Ybeam", "1.5"],
                                   ["-adxv"]])
def test_curved_detector_in_both_modes(frame):
    """#21: nanoBragg's -curved_det turns distance x beam about sdet by the flat
    pixel's lab y and about fdet by its lab z: under -mosflm that mirrors the
    image about the beam centre's anti-diagonal (a fast offset lands on the
    slow axis), and under -xds (beam along z) it is no sphere at all.  The
    default mode rolls the plane onto the sphere that touches it at its point
    nearest the sample: on a detector 4.8 mm across at 100 mm, where sphere
    and plane differ by ~1e-4 of a pixel, its image is the flat one's (the C's
    correlates at 0.42 with it, 0.11 under -xds, where it sums 26 photons
    against 20680).  The note names #21; -c_parity keeps the C's map."""
    from nbnumba.quirks import c_differences
    flat = sim(["-oversample", "1"] + frame).float_image.astype(float)
    d = sim(["-oversample", "1", "-curved_det"] + frame)
    c = sim(["-oversample", "1", "-curved_det"] + frame, c_parity=True)
    corr = [np.corrcoef(flat.ravel(), r.float_image.astype(float).ravel())[0, 1] for r in (d, c)]
    assert corr[0] > 0.9999 and corr[1] < 0.6, corr
    assert abs(d.float_image.sum() / flat.sum() - 1.0) < 0.01
    assert 21 in [n for n, _ in c_differences(d.model)] and not c_differences(c.model)


def test_error_exit_status_is_the_documented_one(tmp_path, capsys):
    """The CLI docstring and docs/quirks.md promise exit status 2 for every error."""
    from pathlib import Path
    from nbnumba import cli, errors
    # HelpRequested is an NBError so callers catch one type, but help is not an error
    classes = [c for c in [errors.NBError] + errors.NBError.__subclasses__() if c.__name__ != "HelpRequested"]
    assert {c.exit_code for c in classes} == {2}
    from nbnumba.flags import HelpRequested
    assert HelpRequested.exit_code == 0
    assert "exit status 2" in cli.__doc__ and "is not reproduced" in cli.__doc__
    quirks = (Path(__file__).resolve().parents[1] / "docs" / "quirks.md").read_text()
    assert "is exit status 2" in quirks
    missing = str(tmp_path / "missing.hkl")
    assert cli.main(BASE + ["-hkl", missing]) == 2
    assert cli.main(BASE + ["-distance", "banana"]) == 2
    err = capsys.readouterr().err
    assert "missing.hkl" in err and "Traceback" not in err


# 20 --------------------------------------------------------------------------
def test_sourcefile_weights_in_both_modes(tmp_path):
    """nanoBragg.c reads -sourcefile's weights and counts every source once; the
    default mode weighs each source's terms by its weight over the mean, so
    equal weights (whatever their value) give the unweighted image bit for bit,
    and the run's note names #20 only when the weights differ."""
    from nbnumba.quirks import c_differences
    files = {"w13": "1 1.5e-10\n-10 0.01 0.004 3 1.51e-10\n",
             "w11": "1 1.5e-10\n-10 0.01 0.004 1 1.51e-10\n",
             "w22": "2 1.5e-10\n-10 0.01 0.004 2 1.51e-10\n"}
    img = {}
    for name, tail in files.items():
        (tmp_path / name).write_text("-10 0 0.003 " + tail)
        for c in (False, True):
            r = sim(["-oversample", "1", "-sourcefile", str(tmp_path / name)], c_parity=c)
            img[name, c] = r.float_image
            notes = [n for n, _ in c_differences(r.model)]
            assert (20 in notes) == (name == "w13" and not c), (name, c, notes)
    assert img["w13", False].max() > 0.0
    # the C: the weights change nothing
    assert np.array_equal(img["w13", True], img["w11", True])
    assert np.array_equal(img["w22", True], img["w11", True])
    # the default mode: 1 and 3 are 0.5 and 1.5 of the mean; 2 and 2 are 1 and 1
    assert np.array_equal(img["w22", False], img["w11", False])
    d = np.abs(img["w13", False].astype(float) - img["w11", False])
    assert d.max() > 0.05 * img["w11", False].max()


def test_a_source_of_intensity_zero_is_no_source(tmp_path):
    """In the default mode a -sourcefile source of weight 0 is left out: listed
    first, it no longer sets the pixels' polarization (nanoBragg takes it from
    the first source), so the image is that of the file without it, bit for
    bit; nanoBragg.c counts it like any other (the note names #20 even when the
    other weights are equal)."""
    from nbnumba.quirks import c_differences
    (tmp_path / "z.txt").write_text("-10 0.02 -0.01 0 1.4e-10\n-10 0 0.003 1\n-10 0.01 0.004 1\n")
    (tmp_path / "n.txt").write_text("-10 0 0.003 1\n-10 0.01 0.004 1\n")
    z, n = (sim(["-oversample", "1", "-polar", "0.3", "-sourcefile", str(tmp_path / f)])
            for f in ("z.txt", "n.txt"))
    assert n.float_image.max() > 0.0 and np.array_equal(z.float_image, n.float_image)
    assert len(z.model.sources.wavelength) == 2 and z.model.sources.dropped == 1
    assert [k for k, _ in c_differences(z.model)] == [20] and not c_differences(n.model)
    c = sim(["-oversample", "1", "-polar", "0.3", "-sourcefile", str(tmp_path / "z.txt")],
            c_parity=True)
    assert len(c.model.sources.wavelength) == 3
    assert not np.array_equal(c.float_image, z.float_image)


@pytest.mark.parametrize("weights, why", [("1 -0.5", "source 2 has relative intensity -0.5"),
                                          ("inf 1", "source 1 has relative intensity inf"),
                                          ("0 0", "every source has relative intensity 0")])
def test_sourcefile_weights_the_default_mode_cannot_use_are_refused(tmp_path, capsys, monkeypatch,
                                                                   weights, why):
    from nbnumba import cli
    monkeypatch.chdir(tmp_path)     # (-c_parity writes intimage.img as the C does)
    w1, w2 = weights.split()
    (tmp_path / "s.txt").write_text("-10 0 0.003 %s\n-10 0.01 0.004 %s\n" % (w1, w2))
    argv = BASE + ["-oversample", "1", "-sourcefile", str(tmp_path / "s.txt"),
                   "-floatfile", str(tmp_path / "f.bin")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and "s.txt" in err[0], err
    assert not (tmp_path / "f.bin").exists()
    # nanoBragg.c reads any weight (and ignores it): -c_parity runs
    assert cli.main(argv + ["-c_parity"]) == 0
    assert (tmp_path / "f.bin").exists()


# -------------------------------------------------------- #22 divergence grid
def _hdiv_points(r):
    """The horizontal divergence points (mrad) of a run, from its sources."""
    from nbnumba.sources import divergence_offset, divergence_points
    st = r.model.steps
    return sorted({round(divergence_offset(st, i, j)[0] * 1e3, 12)
                   for i, j in divergence_points(st, r.model.cfg.round_div)})


@pytest.mark.parametrize("flags, c_points, points", [
    # a width and a step: nanoBragg.c's ceil(width/step) points from -width/2
    # leave the last out; the default mode's ceil(width/step) cells tile the
    # width, a point at the middle of each (#44)
    ("-hdivrange 1 -hdivstep 1", [-0.5], [0.0]),
    ("-hdivrange 1 -hdivstep 0.5", [-0.5, 0.0], [-0.25, 0.25]),
    ("-hdivrange 1 -hdivstep 0.3", [-0.5, -0.2, 0.1, 0.4], [-0.375, -0.125, 0.125, 0.375]),
    ("-hdivrange 0.5 -hdivstep 1", [-0.25], [0.0]),
    # a step and a count: the C drops the count
    ("-hdivstep 0.1 -hdivsteps 5", [-0.05, 0.05], [-0.2, -0.1, 0.0, 0.1, 0.2]),
])
def test_divergence_points_centred_in_the_default_mode(flags, c_points, points):
    """docs/quirks.md #22: with a given step the C's divergence points are not
    centred on the beam (one point at -0.5 mrad tilts the whole beam); the
    default mode keeps them the step apart and centred, and its note names #22."""
    from nbnumba.quirks import c_differences
    extra = ["-oversample", "1", "-square_div"] + flags.split()
    c, d = sim(extra, c_parity=True), sim(extra)
    assert _hdiv_points(c) == pytest.approx(c_points, abs=1e-12)
    assert _hdiv_points(d) == pytest.approx(points, abs=1e-12)
    assert 22 in [n for n, _ in c_differences(d.model)]
    assert not np.array_equal(c.float_image, d.float_image)


@pytest.mark.parametrize("flags", ["-hdivstep 0.2", "-hdivstep 0.2 -vdivstep 0.1 -round_div"])
def test_divergence_the_c_already_centres_is_unchanged(flags):
    """A step alone: the C's two points a step apart about the beam are the
    midpoints of the default mode's two cells (#44); both modes give the same
    image, bit for bit, and no note.  (A width, with a count or not, and three
    that agree: the C's points on the width's edges, #44,
    tests/test_sources_midpoint.py.)"""
    from nbnumba.quirks import c_differences
    extra = ["-oversample", "1"] + flags.split()
    c, d = sim(extra, c_parity=True), sim(extra)
    assert len(d.model.sources.wavelength) > 1
    assert np.array_equal(c.float_image, d.float_image)
    assert 22 not in [n for n, _ in c_differences(d.model)]


@pytest.mark.parametrize("flags, why", [
    ("-hdivsteps 3", "-hdivsteps/-divsteps 3 needs a width"),
    ("-divsteps 2", "-hdivsteps/-divsteps 2 needs a width"),
    ("-vdivsteps 4 -hdivrange 0.3", "-vdivsteps/-divsteps 4 needs a width"),
    ("-dispersion -5 -dispsteps 3", "-dispsteps 3 needs a width (-dispersion, %) of 0 or more"),
    ("-hdivrange 1 -hdivstep 0.1 -hdivsteps 3", "-hdivstep 0.1 and -hdivsteps 3 disagree"),
])
def test_divergence_sweeps_the_default_mode_refuses(flags, why, tmp_path, capsys, monkeypatch):
    """A count without a width sweeps 1 rad (57 degrees; the dispersion 100 %)
    in nanoBragg.c, and three numbers that disagree put the points on one side
    of the beam: one line, exit 2, no output; -c_parity runs them."""
    from nbnumba import cli
    monkeypatch.chdir(tmp_path)     # (-c_parity writes intimage.img as the C does)
    argv = BASE + ["-oversample", "1", "-floatfile", str(tmp_path / "f.bin")] + flags.split()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0], err
    assert not (tmp_path / "f.bin").exists()
    assert cli.main(argv + ["-c_parity"]) == 0
    assert (tmp_path / "f.bin").exists()


# ------------------------------------------------------- #23 -twotheta_axis
def test_twotheta_axis_is_a_direction_in_the_default_mode():
    """docs/quirks.md #23: nanoBragg.c turns the detector about -twotheta_axis
    as given, so 0 2 0 at 10 degrees swings fdet by 19.4 degrees and stretches
    sdet to 1.0456; the default mode turns about the axis' direction (the
    image of 0 1 0 bit for bit) and its note names #23."""
    from nbnumba.quirks import c_differences
    # (the axis first: nanoBragg.c also reads -twotheta_axis as -twotheta, #5)
    def run(y, c_parity=False):
        return sim(["-oversample", "1", "-twotheta_axis", "0", y, "0", "-twotheta", "10"],
                   c_parity=c_parity)
    unit, long_, c = run("1"), run("2"), run("2", True)
    assert unit.float_image.max() > 0.0
    assert np.array_equal(long_.float_image, unit.float_image)
    assert [n for n, _ in c_differences(long_.model)] == [23]
    assert not c_differences(unit.model)
    assert np.linalg.norm(c.model.det.sdet) == pytest.approx(1.0456, abs=1e-4)
    assert math.degrees(math.acos(c.model.det.fdet[2] / np.linalg.norm(c.model.det.fdet))) \
        == pytest.approx(19.4, abs=0.1)
    assert not np.array_equal(c.float_image, unit.float_image)


# ------------------------------------------- #24 -dmin and the water background
DMIN_WATER = ("-cell 70 80 90 85 95 105 -lambda 1.5 -default_F 1e-30 -N 3 -distance 15 -pixel 0.5 "
              "-detpixels 16 -Xbeam 1 -Ybeam 2 -fluence 1e24 -water 0.5 -nonoise -nopgm").split()


@pytest.mark.parametrize("extra", ["-polar 0.5 -oversample 1", "-polar 0.5 -oversample 2",
                                   "-polar 0.5 -oversample 2 -oversample_polar",
                                   "-polar 0.5 -oversample 2 -oversample_omega",
                                   "-polar 0.5 -oversample 2 -detector_thick 100 "
                                   "-detector_thicksteps 2 -oversample_thick", "-nopolar -oversample 1"])
def test_dmin_leaves_the_water_background_alone(extra):
    """docs/quirks.md #24: with F ~ 0 the image is the water background, which
    -dmin (a cut of the Bragg term) must leave as it is.  nanoBragg.c takes a
    pixel's polarization factor at its first sub-path that -dmin does not cut,
    from 0, so a pixel cut whole was 0 (55 of 256 here: pixel (15, 15) held
    142.379 photons without -dmin, 0 with).  The default mode gives such a
    pixel its first sub-path's factor: the image without the cut, bit for
    bit.  A pixel cut in part keeps the C's choice (its first uncut
    sub-path's factor: 0.14 % off here, at one pixel); with
    -oversample_polar, each sub-path's own factor, the whole image is equal."""
    plain = nbnumba.simulate_argv(DMIN_WATER + extra.split()).float_image
    cut = nbnumba.simulate_argv(DMIN_WATER + extra.split() + ["-dmin", "4"]).float_image
    assert plain.min() > 0.0 and cut.min() > 0.0
    if "-oversample 1" in extra or "-oversample_polar" in extra:
        assert np.array_equal(cut, plain), extra
        if "-nopolar" in extra or "-oversample_polar" in extra:
            return
    # the pixels nanoBragg.c leaves blank (cut whole) are the uncut image's
    c = nbnumba.simulate_argv(DMIN_WATER + extra.split() + ["-dmin", "4", "-c_parity"]).float_image
    whole = c == 0.0
    assert whole.sum() > 20
    assert np.array_equal(cut[whole], plain[whole])
    rel = np.abs(cut.astype(float) - plain) / plain
    assert rel.max() < 2e-3 and (rel > 0).sum() <= 4, (rel.max(), (rel > 0).sum())
    from nbnumba.quirks import c_differences
    m = nbnumba.simulate_argv(DMIN_WATER + extra.split() + ["-dmin", "4"]).model
    assert 24 in [n for n, _ in c_differences(m)]


# ------------------------------------------- #25 ranges that are exact multiples
def test_exact_multiples_give_the_typed_count_in_the_default_mode():
    """docs/quirks.md #25: nanoBragg.c counts a range over its step with a
    plain ceiling, so a ratio that binary rounding puts an ulp above an integer
    gains one: -osc 1.1 -phistep 0.1 (11.000000000000002) takes a 12th phi
    point past the range, and a 0.09 um crystal over a 90 A edge 11 cells.
    The default mode counts 11 and 10: the images of the same run with the
    count given, bit for bit, and its note names #25; -c_parity keeps the C's."""
    from nbnumba.quirks import c_differences
    phi = ["-phi", "10", "-osc", "1.1", "-phistep", "0.1", "-oversample", "1"]
    got, given, c = (sim(phi), sim(phi + ["-phisteps", "11"]), sim(phi, c_parity=True))
    assert (got.model.steps.phisteps, c.model.steps.phisteps) == (11, 12)
    assert np.array_equal(got.float_image, given.float_image)
    # (and both runs' points are the steps' midpoints, #28)
    assert [n for n, _ in c_differences(got.model)] == [25, 28]
    assert [n for n, _ in c_differences(given.model)] == [28]
    assert not np.array_equal(c.float_image, got.float_image)
    size = ["-sample_x", "0.00007", "-sample_y", "0.00008", "-sample_z", "0.00009",
            "-cell", "70", "80", "90", "90", "90", "90", "-oversample", "1"]
    got, c = sim(size), sim(size, c_parity=True)
    assert [got.model.crystal.Na, got.model.crystal.Nb, got.model.crystal.Nc] == [10, 10, 10]
    assert [c.model.crystal.Na, c.model.crystal.Nb, c.model.crystal.Nc] == [10, 10, 11]
    assert np.array_equal(got.float_image,
                          sim(["-cell", "70", "80", "90", "90", "90", "90", "-oversample", "1",
                               "-N", "10"]).float_image)
    assert [n for n, _ in c_differences(got.model)] == [25]
    # a size just past the multiple is still rounded up, as it must be
    assert sim(size[:5] + ["0.0000900001"] + size[6:]).model.crystal.Nc == 11
    # 10.5 um over this triclinic cell's 70 A edge: 1500 cells, the C's 1501
    tri = ["-cell", "70", "80", "90", "85", "95", "105", "-xtal_size", "0.0105"]
    assert build_model(nbnumba.parse_argv(BASE + tri + ["-oversample", "1"])).crystal.Na == 1500
    assert build_model(nbnumba.parse_argv(BASE + tri + ["-oversample", "1", "-c_parity"])).crystal.Na == 1501


# --------------------------------------- #26 the noise image's fractional -adc
def test_noise_image_rounds_a_fractional_adc_like_the_int_image():
    """docs/quirks.md #26: nanoBragg.c rounds photons*scale + adc for the int
    image but truncates count + adc for the noise image, so -adc 40.7 is a
    pedestal of 41 in one and 40 in the other (the header says 40.7 for both).
    The default mode rounds both: each noise pixel is the C's plus 1 for the
    same Poisson draws; a fraction under a half changes nothing, bit for bit."""
    from nbnumba.quirks import c_differences
    line = ["-water", "0.05", "-default_F", "0.001", "-seed", "3", "-oversample", "1",
            "-noisefile", "noise.img"]     # (after BASE's -nonoise; simulate_argv writes nothing)
    got, c = sim(line + ["-adc", "40.7"]), sim(line + ["-adc", "40.7"], c_parity=True)
    assert np.array_equal(got.float_image, c.float_image)
    d = got.noise_image.astype(np.int64) - c.noise_image.astype(np.int64)
    assert np.all(d == 1) and c.noise_image.min() >= 40
    assert [n for n, _ in c_differences(got.model)] == [26]
    low, c_low = sim(line + ["-adc", "40.3"]), sim(line + ["-adc", "40.3"], c_parity=True)
    assert np.array_equal(low.noise_image, c_low.noise_image)
    assert not c_differences(low.model)


# ------------------------------------------------- #27 rmsd over the mask
def test_rmsd_is_the_spread_of_the_unmasked_pixels():
    """docs/quirks.md #27: nanoBragg.c's rmsd sums (pixel - mean)^2 over the whole
    ROI, masked pixels (0) included, about the mean of the unmasked ones, so a
    mask shrinks it (and brightens the automatic PGM, 250/(5 rmsd)).  The
    default mode takes it over the pixels the mean uses."""
    from nbnumba.quirks import c_differences
    mask = np.ones((24, 24), dtype=np.uint16)
    mask[:12] = 0
    got = sim(["-oversample", "1"], mask_image=mask)
    c = sim(["-oversample", "1"], c_parity=True, mask_image=mask)
    img = got.float_image.astype(np.float64)
    on = img[12:]
    assert got.stats["rmsd"] == pytest.approx(float(np.std(on, ddof=1)), rel=1e-12)
    dev = np.concatenate([on.ravel() - on.mean(), np.full(img[:12].size, -on.mean())])
    assert c.stats["rmsd"] == pytest.approx(math.sqrt((dev ** 2).sum() / (img.size - 1)), rel=1e-12)
    assert c.stats["rmsd"] < 0.9 * got.stats["rmsd"]
    assert [n for n, _ in c_differences(got.model)] == [27]
    assert got.stats["mean"] == c.stats["mean"]


# -------------------------------------------- #28 phi points in the oscillation
def test_phi_points_centred_in_the_oscillation():
    """docs/quirks.md #28: nanoBragg.c samples phi at phi0 + i step, each step
    at its start; the default mode centres the points in [phi0, phi0 + osc]
    (the steps' midpoints when osc = n step), keeps the C's where they are
    centred already (-phistep alone), keeps a count given with a step (the C
    drops it), and refuses three numbers that disagree."""
    from nbnumba.quirks import c_differences

    def degs(extra, c_parity=False):
        cfg = nbnumba.parse_argv(BASE + extra + (["-c_parity"] if c_parity else []))
        return [round(math.degrees(p), 12) for p in build_model(cfg).phis]
    assert degs(["-osc", "1"]) == [0.25, 0.75]
    assert degs(["-osc", "1"], True) == [0.0, 0.5]
    assert degs(["-phi", "5", "-osc", "3", "-phisteps", "6"]) == [5.25 + 0.5 * i for i in range(6)]
    assert degs(["-phi", "5", "-osc", "3", "-phisteps", "6"], True) == [5.0 + 0.5 * i for i in range(6)]
    assert degs(["-osc", "0.1", "-phisteps", "1"]) == [0.05]
    assert degs(["-phistep", "0.1", "-phisteps", "4"]) == [0.05, 0.15, 0.25, 0.35]
    assert degs(["-phistep", "0.1", "-phisteps", "4"], True) == [0.0, 0.1]
    assert degs(["-phi", "3", "-phistep", "0.5"]) == degs(["-phi", "3", "-phistep", "0.5"], True) \
        == [3.0, 3.5]
    with pytest.raises(nbnumba.ConfigError, match="-osc 1, -phistep 0.1 and -phisteps 5 disagree"):
        build_model(nbnumba.parse_argv(BASE + ["-osc", "1", "-phistep", "0.1", "-phisteps", "5"]))
    # an image: the midpoints are the same run stated as -phistep alone from phi0 + step/2
    line = ["-phi", "10", "-osc", "2", "-phisteps", "2", "-oversample", "1"]
    got, c = sim(line), sim(line, c_parity=True)
    same = sim(["-phi", "10.5", "-phistep", "1", "-oversample", "1"])
    assert np.array_equal(got.float_image, same.float_image)
    assert not np.array_equal(got.float_image, c.float_image)
    assert [n for n, _ in c_differences(got.model)] == [28]
    assert not c_differences(same.model)
    st = got.model.steps
    assert math.degrees(st.phi0) == 10 and math.degrees(st.osc) == pytest.approx(2, abs=1e-12)


# ------------------------------------------- #29 the first mosaic domain drawn
def test_every_mosaic_domain_is_drawn_in_the_default_mode():
    """docs/quirks.md #29: nanoBragg.c draws every domain's rotation but makes
    the first the unrotated crystal, so the image leans toward it by
    1/domains.  The default mode keeps the first draw: every domain turns
    about the C's axis (the same deviates; its angle follows #38), the first a
    rotation like the others (within the spread's reach), and the image
    differs; the note names #29 (and #38)."""
    from nbnumba.quirks import c_differences
    line = ["-mosaic", "0.8", "-mosaic_dom", "6", "-mosaic_seed", "42", "-oversample", "1"]
    got, c = sim(line), sim(line, c_parity=True)
    U, Uc = got.model.umats.reshape(-1, 3, 3), c.model.umats.reshape(-1, 3, 3)
    axis = lambda R: np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) \
        / np.linalg.norm([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    assert np.array_equal(Uc[0], np.eye(3)) and not np.array_equal(U[0], np.eye(3))
    assert all(np.allclose(axis(a), axis(b), atol=1e-12) for a, b in zip(U[1:], Uc[1:]))
    angle = lambda R: math.degrees(math.acos(min(1.0, (np.trace(R) - 1) / 2)))
    reach = max(angle(R) for R in Uc[1:])
    assert 0.0 < angle(U[0]) <= 1.5 * reach
    assert not np.array_equal(got.float_image, c.float_image)
    assert [n for n, _ in c_differences(got.model)] == [29, 38]
    # without a spread every domain is the crystal itself, in both modes
    flat = ["-mosaic", "0", "-mosaic_dom", "6", "-oversample", "1"]
    assert np.array_equal(sim(flat).float_image, sim(flat, c_parity=True).float_image)


# ------------------------------------ #30 the beam clips the crystal across the beam
def test_the_beam_clips_the_crystal_across_the_beam():
    """docs/quirks.md #30: nanoBragg.c cuts -sample_y/-sample_z (the sizes
    along b and c) to -beamsize whatever the beam's direction, which is right
    only for a crystal whose a lies along the beam.  The default mode cuts each
    edge by what it spans across the beam, with the crystal as mounted (the
    spindle at 0: the counts are the crystal's, the same in every phi step and
    frame): the C's counts for a along the beam, turned about the beam or not;
    others under -xds or a misset, and the note names #30.  A 0.2 um cube of
    100 A cells in a 0.1 um beam: 20 x 10 x 10 cells."""
    from nbnumba.quirks import c_differences
    cube = ["-cell", "100", "100", "100", "90", "90", "90", "-xtal_size", "0.0002",
            "-beamsize", "0.0001", "-oversample", "1"]

    def cells(extra, c_parity=False):
        m = build_model(nbnumba.parse_argv(BASE + cube + extra + (["-c_parity"] if c_parity else [])))
        return [m.crystal.Na, m.crystal.Nb, m.crystal.Nc], [n for n, _ in c_differences(m)]

    same = [[], ["-misset", "37", "0", "0"], ["-xds", "-misset", "0", "90", "0"],
            ["-phi", "90"], ["-osc", "180", "-phisteps", "2"]]
    for extra in same:      # a along the beam (turned about it, or a spindle turn): the C's cut
        assert cells(extra)[0] == [20, 10, 10], extra
        assert 30 not in cells(extra)[1], extra
    moved = {("-xds",): [10, 10, 20],                       # the beam along c
             ("-misset", "0", "0", "45"): [15, 15, 10]}     # a, b at 45 deg: 0.1/sin 45 um
    for extra, want in moved.items():
        got, notes = cells(list(extra))
        assert got == want and 30 in notes, extra
        assert cells(list(extra), c_parity=True) == ([20, 10, 10], [])
    # the counts reach the kernel: the image of the same counts given with -N
    img = sim(cube + ["-xds"]).float_image
    given = sim(cube[:7] + ["-xds", "-Na", "10", "-Nb", "10", "-Nc", "20", "-oversample", "1"])
    assert np.array_equal(img, given.float_image)
    assert not np.array_equal(img, sim(cube + ["-xds"], c_parity=True).float_image)
    # the log says which edge, from what to what; -c_parity prints the C's lines
    log = "\n".join(sim(cube + ["-xds"]).model.log)
    assert "clips the crystal along a from 0.0002 to 0.0001 mm (the edge at 90 deg" in log
    assert "clipping sample" in "\n".join(sim(cube + ["-xds"], c_parity=True).model.log)
    # a beam of no width keeps the C's rule in both modes (the sizes along b, c
    # dropped, -N's counts), a negative one clips nothing
    assert cells(["-xds", "-beamsize", "0"]) == ([20, 5, 5], [])
    assert cells(["-xds", "-beamsize", "-1"]) == ([20, 20, 20], [])


# ------------------------------------ #34 tricubic interpolation to the grid's edge
def test_tricubic_interpolation_reaches_the_grid_edge(tmp_path):
    """docs/quirks.md #34: nanoBragg.c interpolates only where hmin+2 <= h <=
    hmax-2, though the stencil floor(h)-1 .. floor(h)+2 fits from hmin+1 up to
    hmax-1.  On a linear F table (which tricubic interpolation reproduces
    exactly) the default mode gives the linear F at a sub-path with h, k in
    [hmax-2, hmax-1) and l in [lmin+1, lmin+2), where -c_parity takes the
    nearest F; the image differs.  The note leaves #34 out, as #6: whether a
    sub-path falls in those bands the geometry decides."""
    from nbnumba.physics import interp_in_range
    from nbnumba.quirks import c_differences
    lin = lambda h, k, l: 100.0 + 10.0 * h + 5.0 * k + 2.0 * l
    with open(tmp_path / "lin.hkl", "w") as f:
        for h in range(-3, 4):
            for k in range(-3, 4):
                for l in range(-3, 4):
                    f.write("%d %d %d %g\n" % (h, k, l, lin(h, k, l)))
    line = ["-hkl", "lin.hkl", "-cell", "30", "30", "30", "90", "90", "90", "-N", "1",
            "-interpolate", "-distance", "100", "-detpixels", "64", "-pixel", "0.3",
            "-misset", "10", "20", "30", "-oversample", "1", "-nonoise", "-nopgm"]

    def traced(extra):
        r = nbnumba.simulate_argv(line + extra + ["-trace_pixel", "10", "10"], cwd=tmp_path)
        tr = [t for t in r.trace_lines if " hkl_frac " in t or " F_cell " in t]
        hkl = [float(x) for x in tr[0].split("hkl_frac")[1].split()]
        return r, hkl, float(tr[1].split("F_cell")[1])

    d, hkl, F_d = traced([])
    c, hkl_c, F_c = traced(["-c_parity"])
    assert hkl == hkl_c
    h, k, l = hkl
    assert 1 <= h < 2 and 1 <= k < 2 and -2 <= l < -1      # in the bands the C refuses
    assert F_d == pytest.approx(lin(h, k, l), rel=1e-13)    # 119.05
    assert F_c == lin(round(h), round(k), round(l)) == 126.0
    assert not np.array_equal(d.float_image, c.float_image)
    assert 34 not in [n for n, _ in c_differences(d.model)]
    # the bounds, exactly: grid -3..3; the default mode's [-2, 2), the C's [-1, 1]
    below = lambda x: np.nextafter(x, -np.inf)
    inside = lambda x, c_rules: interp_in_range(x, 0.0, 0.0, -3, 3, -3, 3, -3, 3, c_rules)
    assert [inside(x, False) for x in (-2.0, below(-2.0), below(2.0), 2.0)] == \
        [True, False, True, False]
    # (the C's h-2 and h-hmin+3 round: an ulp past its bounds still passes)
    assert [inside(x, True) for x in (-1.0, -1.5, 1.0, 1.5)] == [True, False, True, False]
    assert not inside(np.nan, False) and not inside(np.inf, False)


# 39 --------------------------------------------------------------------------
def _layer_positions(res):
    """The lab position (m) of each sensor layer's sub-path in a one-sub-pixel
    trace, in layer order."""
    return [np.array([float(x) for x in l.split(" pixel_pos_meters ")[1].split()[:3]])
            for l in res.trace_lines if " pixel_pos_meters " in l]


# the audit's run: the beam spot in the detector's corner, so that rays cross
# the sensor steeply (strong parallax)
LAYERS = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-lambda", "1",
          "-distance", "50", "-detpixels", "24", "-pixel", "0.172", "-N", "8",
          "-misset", "10", "20", "30", "-Xbeam", "0", "-Ybeam", "0", "-nopolar",
          "-detector_thick", "450", "-detector_abs", "300", "-oversample", "1",
          "-nonoise", "-nopgm"]


def test_sensor_layers_are_sampled_at_their_middle():
    """#39: layer t of a sensor of N layers of thick/N is sampled at depth
    (t + 1/2) thick/N (the midpoint rule), nanoBragg.c at its front face t
    thick/(N-1) (-c_parity; its layer depth is #8b's).  The midpoint rule
    converges as 1/N^2 in the layer count, the C's front face as 1/N."""
    s, f = 20, 17
    runs = {}
    for c_parity in (False, True):
        argv = LAYERS + ["-detector_thicksteps", "3", "-trace_pixel", str(s), str(f)]
        r = nbnumba.simulate_argv(argv + (["-c_parity"] if c_parity else []))
        d = r.model.det
        face = (np.array(d.pix0) + (f + 0.5) * d.pixel_size * np.array(d.fdet)
                + (s + 0.5) * d.pixel_size * np.array(d.sdet))
        depths = [float(np.dot(p - face, d.odet)) for p in _layer_positions(r)]
        step = r.model.steps.detector_thickstep
        runs[c_parity] = (depths, step)
    depths, step = runs[False]
    assert step == pytest.approx(150e-6, rel=1e-12)
    np.testing.assert_allclose(depths, [75e-6, 225e-6, 375e-6], rtol=0, atol=1e-15)
    depths, step = runs[True]
    assert step == pytest.approx(225e-6, rel=1e-12)     # the C's thick/(N-1)
    np.testing.assert_allclose(depths, [0.0, 225e-6, 450e-6], rtol=0, atol=1e-15)
    # convergence in the layer count against 32 layers (L1): the middle of
    # one layer is 4.3x as far off as the middles of two (the front faces: 1.8x)
    img = {n: nbnumba.simulate_argv(LAYERS + ["-detector_thicksteps", str(n)]).float_image
           .astype(float) for n in (1, 2, 32)}
    off = {n: np.abs(img[n] - img[32]).sum() / img[32].sum() for n in (1, 2)}
    assert off[1] < 0.15
    assert off[1] / off[2] > 3.5


# 42 --------------------------------------------------------------------------
def test_a_deeper_layers_solid_angle_is_of_its_own_plane():
    """#42: with -oversample_omega a sub-path of the layer at depth z sees the
    pixel at the obliquity of its own plane, (close + z)/R, not the front
    plane's close/R.  A water-only image (F ~ 0, no polarization) has pixel
    r_e^2 fluence I_bg sum_t cap_t omega_t with the switch and r_e^2 fluence
    I_bg omega_face sum_t cap_t without it (the pixel's one solid angle, on
    the sensor's face): their ratio is closed-form."""
    argv = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "1e-30", "-lambda", "1",
            "-distance", "50", "-detpixels", "33", "-pixel", "0.172", "-water", "100",
            "-nopolar", "-detector_thick", "1000", "-detector_abs", "1000",
            "-detector_thicksteps", "4", "-oversample", "1", "-Xbeam", "1", "-Ybeam", "2",
            "-nonoise", "-nopgm"]
    per_layer = nbnumba.simulate_argv(argv + ["-oversample_omega"])
    once = nbnumba.simulate_argv(argv)
    d, st = once.model.det, once.model.steps
    step, mu, n = st.detector_thickstep, st.detector_mu, st.detector_thicksteps
    close, px = d.close_distance, d.pixel_size
    assert (step, n) == (250e-6, 4)
    for s, f in ((16, 16), (30, 31), (0, 32)):
        face = (np.array(d.pix0) + (f + 0.5) * px * np.array(d.fdet)
                + (s + 0.5) * px * np.array(d.sdet))
        R0 = np.linalg.norm(face)
        om_face = px * px / R0 ** 2 * close / R0
        num = den = 0.0
        for t in range(n):
            z = (t + 0.5) * step
            pos = face + z * np.array(d.odet)
            R = np.linalg.norm(pos)
            x = step * mu / np.dot(pos / R, d.odet)
            cap = math.exp(-t * x) - math.exp(-(t + 1) * x)
            num += cap * px * px / R ** 2 * (close + z) / R
            den += cap
        want = num / (om_face * den)
        got = per_layer.float_image[s, f] / once.float_image[s, f]
        # (float32 images: 1e-6; the front plane's obliquity is ~1 % off here)
        assert got == pytest.approx(want, rel=2e-6)
