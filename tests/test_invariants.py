"""Physical invariants of the default mode, checked on the kernel without the
reference implementation: closed forms (absorption, solid angle of a
rectangle, lattice peak, Kahn polarization, Darwin's integrated intensity),
Bragg spot positions from the Laue condition in each detector convention,
symmetries (Friedel), linearity, sampling independence (sub-pixels as a finer
detector, vanishing spreads), and the distribution of random orientations.

Float64 pixel values come from ``kernels.cpu.trace_pixel`` (the kernel's own
pixel body; the API image is float32).  Ratios of images are used wherever an
absolute constant (r_e^2, fluence) would otherwise enter; the Darwin test
holds that absolute scale itself.
"""
import math
from dataclasses import replace

import numpy as np
import pytest

import nbnumba
from nbnumba.crystal import build_crystal
from nbnumba.io.hkl import HKLGrid
from nbnumba.kernels import cpu as K
from nbnumba.model import build_model
from nbnumba.rng import RngState


def parse(argv, **over):
    cfg = nbnumba.parse_argv(argv.split())
    return replace(cfg, **over) if over else cfg


def kernel64(cfg, pixels=None):
    """Kernel float64 image (or only ``pixels``, a list of (slow, fast))."""
    m = build_model(cfg)
    args = m.cpu_kernel_args()
    out = np.zeros(m.shape)
    todo = pixels if pixels is not None else list(zip(*np.nonzero(m.active)))
    for s, f in todo:
        out[s, f] = K.trace_pixel(int(s), int(f), False, -1, *args, 1)[0]
    return out


# MOSFLM frame: beam and detector normal along x, pixel centre (s, f) at
# (D, -((s + 0.5) p - Xbeam - p/2), (f + 0.5) p - Ybeam - p/2) with the beam centre
# given by -Xbeam/-Ybeam (MOSFLM adds half a pixel).
D_MM, P_MM = 5.0, 2.0
GEOM = "-distance %g -pixel %g -detpixels 4 -Xbeam 3 -Ybeam 3 " % (D_MM, P_MM)
BASE = "-cell 70 80 90 90 90 90 -lambda 1.5 -default_F 10 -nonoise -nopgm -seed 1 " + GEOM


def centre_offsets_mm(s, f):
    """(fast, slow) offsets (mm) of pixel (s, f)'s centre from the beam spot."""
    return (f + 0.5) * P_MM - 3.0 - P_MM / 2, (s + 0.5) * P_MM - 3.0 - P_MM / 2


# ---- sensor absorption --------------------------------------------------------
def absorbed_fraction(geom, pixel, layers, t_um=100.0, att_um=50.0):
    """Kernel image with a sensor / without (N = 1: no lattice factor to vary
    between the layers' positions) at one pixel."""
    s, f = pixel
    thin = parse(geom + "-N 1 -oversample 1")
    thick = parse(geom + "-N 1 -oversample 1 -detector_thick %g -detector_abs %g -thicksteps %d"
                  % (t_um, att_um, layers))
    return kernel64(thick, [(s, f)])[s, f] / kernel64(thin, [(s, f)])[s, f]


@pytest.mark.parametrize("layers", [1, 2, 3, 5])
def test_absorbed_fraction_normal_incidence(layers):
    """Known defect 2 until fixed.  The sum over the layers of the capture
    fractions = 1 - exp(-mu t) for the pixel on the detector normal (every
    layer sees the same ray there: exact)."""
    # pixel (1, 1) is centred on the direct beam (MOSFLM: beam centre + half a pixel)
    geom = BASE.replace("-Xbeam 3 -Ybeam 3", "-Xbeam 2 -Ybeam 2")
    assert absorbed_fraction(geom, (1, 1), layers) == pytest.approx(1.0 - math.exp(-2.0), rel=1e-12)


@pytest.mark.parametrize("layers", [1, 3])
def test_absorbed_fraction_oblique(layers):
    """Known defect 2 until fixed.  1 - exp(-mu t / cos psi) at an oblique
    pixel.  Each layer is evaluated at its own depth along the normal, so the
    layers' rays differ by O(t/R): a far detector (R ~ 1.3 m) and a 1 um sensor
    of attenuation depth 0.5 um (mu t = 2 as above) make that ~1e-8."""
    geom = BASE.replace(GEOM, "-distance 1000 -pixel 400 -detpixels 4 -Xbeam 600 -Ybeam 600 ")
    s, f = 3, 0                      # centre offsets (-600, +600) mm from the beam
    cos_psi = 1000.0 / math.sqrt(1000.0 ** 2 + 2 * 600.0 ** 2)
    assert cos_psi < 0.8
    expected = 1.0 - math.exp(-2.0 / cos_psi)
    assert absorbed_fraction(geom, (s, f), layers, 1.0, 0.5) == pytest.approx(expected, rel=1e-6)


# ---- solid angle --------------------------------------------------------------
def rectangle_solid_angle(x1, x2, y1, y2, d):
    """Exact solid angle of the rectangle [x1,x2]x[y1,y2] in a plane at distance d."""
    def g(x, y):
        return math.atan(x * y / (d * math.sqrt(d * d + x * x + y * y)))
    return g(x2, y2) - g(x1, y2) - g(x2, y1) + g(x1, y1)


def test_subpixel_solid_angles_converge_to_the_pixel():
    """With -oversample_omega, the mean over sub-pixels of pixel^2 cos/R^2 is a
    midpoint-rule integral of the pixel's solid angle: second-order convergence
    to the closed form of a rectangle."""
    s, f = 3, 3
    flat = "-N 1 -nopolar -oversample_omega -oversample %d "
    # -point_pixel at the pixel centre gives 1/R_c^2 with the same prefactor
    point = kernel64(parse(BASE + "-N 1 -nopolar -point_pixel -oversample 1"), [(s, f)])[s, f]
    df, ds = centre_offsets_mm(s, f)
    Rc2 = D_MM ** 2 + df ** 2 + ds ** 2
    exact = rectangle_solid_angle(df - P_MM / 2, df + P_MM / 2, ds - P_MM / 2, ds + P_MM / 2, D_MM)
    errs = []
    for n in (1, 16, 32):
        v = kernel64(parse(BASE + flat % n), [(s, f)])[s, f]
        omega = v / point / (Rc2 * 1e-6)     # sr: v/point = omega R_c^2 (R in m)
        errs.append(abs(omega / exact - 1.0))
    assert errs[0] > 5e-4                       # one sample is visibly off for this big pixel
    assert 3.5 < errs[1] / errs[2] < 4.5        # midpoint rule: error ~ h^2
    assert errs[2] < 1e-7


# ---- rotation sampling --------------------------------------------------------
@pytest.mark.parametrize("water", ["", "-water 100 "])
def test_phi_steps_without_motion_leave_the_image_unchanged(water):
    """Four phi steps at one angle: the same image, background included
    (nanoBragg.c adds the water background once and divides it by the step
    count with the rest: a quarter of it here, docs/quirks.md #19)."""
    one = kernel64(parse(BASE + water + "-N 3 -oversample 1 -phi 10"))
    four = kernel64(parse(BASE + water + "-N 3 -oversample 1 -phi 10 -osc 0 -phisteps 4"))
    np.testing.assert_allclose(four, one, rtol=1e-13, atol=0)
    if water:
        c_four = kernel64(parse(BASE + water + "-N 3 -oversample 1 -phi 10 -osc 0 -phisteps 4 "
                                "-c_parity"))
        c_one = kernel64(parse(BASE + water + "-N 3 -oversample 1 -phi 10 -c_parity"))
        assert np.max(np.abs(c_four / c_one - 1)) > 0.1
    # the same steps with motion do change it
    moving = kernel64(parse(BASE + "-N 3 -oversample 1 -phi 10 -osc 5 -phisteps 4"))
    assert np.max(np.abs(moving / one - 1)) > 1e-3


def test_omega_sum_does_not_depend_on_phisteps():
    """Known defect 4 until fixed: the solid-angle sum was divided by phisteps."""
    a = nbnumba.simulate(parse(BASE + "-N 3 -oversample 1")).stats["omega_sum"]
    b = nbnumba.simulate(parse(BASE + "-N 3 -oversample 1 -osc 1 -phisteps 3")).stats["omega_sum"]
    expected = 0.0
    for s in range(4):
        for f in range(4):
            df, ds = centre_offsets_mm(s, f)
            R = math.sqrt(D_MM ** 2 + df ** 2 + ds ** 2)
            expected += P_MM ** 2 / R ** 2 * D_MM / R
    assert a == pytest.approx(expected, rel=1e-12)
    assert b == pytest.approx(expected, rel=1e-12)


# ---- symmetry -----------------------------------------------------------------
FRIEDEL_GEOM = ("-cell 30 40 50 90 105 90 -lambda 1.0 -N 3 -nonoise -nopgm -pixel 0.5 -detpixels 6 "
                "-oversample 2 -misset 13 27 41 -distance 20 ")


def friedel_image(grid, sign):
    """The experiment, or (sign = -1) its point reflection through the sample:
    reversed beam, detector at -r.  Every scattering vector S becomes -S."""
    v = lambda *x: " ".join("%.12g" % (sign * c) for c in x)
    argv = (FRIEDEL_GEOM + "-beam_vector %s -fdet_vector %s -sdet_vector %s -odet_vector %s "
            "-pix0_vector %s -default_F 1" % (v(1, 0, 0), v(0, 0.1, 1), v(0, -1, 0.1), v(1, 0, 0),
                                               v(0.02, 0.0021, -0.0013)))
    return kernel64(parse(argv, hkl_grid=grid))


def _grid(friedel_symmetric):
    rng = np.random.default_rng(7)
    lo, hi = -6, 6
    n = hi - lo + 1
    F = rng.uniform(1.0, 100.0, size=(n + 1, n + 1, n + 1))
    if friedel_symmetric:
        core = F[:n, :n, :n]
        F[:n, :n, :n] = 0.5 * (core + core[::-1, ::-1, ::-1])   # F(h) = F(-h)
    return HKLGrid(lo, hi, lo, hi, lo, hi, F, hkls=n ** 3)


def test_friedel_symmetry():
    """I(S) = I(-S) when F(h) = F(-h): the point-reflected experiment gives the
    same image; a table without Friedel symmetry does not."""
    g = _grid(True)
    a, b = friedel_image(g, 1), friedel_image(g, -1)
    assert np.count_nonzero(a) == a.size
    np.testing.assert_allclose(b, a, rtol=1e-12)
    g = _grid(False)
    assert np.max(np.abs(friedel_image(g, -1) / friedel_image(g, 1) - 1)) > 1e-2


def test_friedel_symmetry_default_F():
    """With default_F only (no table), the reflected experiment is identical."""
    a, b = friedel_image(None, 1), friedel_image(None, -1)
    np.testing.assert_allclose(b, a, rtol=1e-12)


# ---- lattice transform --------------------------------------------------------
@pytest.mark.parametrize("shape", ["-square_xtal", "-gauss_xtal", "-tophat_spots"])
def test_lattice_factor_peaks_at_Na_Nb_Nc(shape):
    """At S = 0 (the pixel centred on the direct beam) F_latt = Na Nb Nc, so the
    pixel is (Na Nb Nc)^2 times the single-cell value, and the image maximum."""
    geom = ("-cell 70 80 90 90 90 90 -lambda 1.5 -default_F 10 -nonoise -nopgm -distance 100 "
            "-pixel 0.1 -detpixels 5 -Xbeam 0.2 -Ybeam 0.2 -point_pixel -oversample 1 %s " % shape)
    crystal = kernel64(parse(geom + "-Na 2 -Nb 3 -Nc 4"))
    cell = kernel64(parse(geom + "-N 1"))
    assert crystal[2, 2] / cell[2, 2] == pytest.approx(24.0 ** 2, rel=1e-12)
    assert np.argmax(crystal) == 2 * 5 + 2



SPOT_CELLS = [("70 80 90 85 95 105", (5, 5, 5)), ("50 60 120 90 90 90", (10, 6, 3)),
              ("30 30 30 90 90 90", (5, 5, 5))]
#: (0.315 pi)^(3/2): the gauss spot's integral over the square crystal's, for a
#: radius relative to the crystal's size
GAUSS_INTEGRAL = (0.315 * math.pi) ** 1.5


def _mean_F2(shape, model, n):
    """The mean of F_latt^2 over one reciprocal cell (n^3 midpoints in h, k, l,
    with the kernels' lattice_factor and the model's spot scale, fopt F_SPOT)."""
    from numba import njit
    from nbnumba import physics

    @njit
    def mean(shape, Na, Nb, Nc, spot, astar, bstar, cstar, n):
        tot = 0.0
        for i in range(n):
            for j in range(n):
                for q in range(n):
                    F = physics.lattice_factor(shape, (i + 0.5) / n - 0.5, (j + 0.5) / n - 0.5,
                                               (q + 0.5) / n - 0.5, 0, 0, 0, Na, Nb, Nc, 1.0,
                                               spot, astar, bstar, cstar, 1)[0]
                    tot += F * F
        return tot / n ** 3
    c, fopt = model.crystal, model.kernel_args(np.float64)[1]
    return mean(shape, float(c.Na), float(c.Nb), float(c.Nc), fopt[K.F_SPOT], tuple(c.astar),
                tuple(c.bstar), tuple(c.cstar), n)


@pytest.mark.parametrize("cell, N", SPOT_CELLS)
def test_gauss_and_tophat_spots_keep_the_square_crystals_integral(cell, N):
    """Integrated over a reciprocal cell, F_latt^2 of the square crystal is Na Nb Nc
    (Parseval: the mean of sincg^2 over a period is N).  The gauss and tophat
    spots keep it, (0.315 pi)^(3/2) = 0.984 and 4 pi 0.63^3 / 3 = 1.047 times,
    whatever the cell: their radius is relative to the crystal's size,
    |dr*|^2 (Na Nb Nc V_cell)^(2/3) (docs/quirks.md #16).  Gauss: the midpoint
    sum over the cell (61^3 points) is exact for the square crystal's
    trigonometric polynomial and accurate to 1e-5 for the smooth gauss; nanoBragg.c's
    (Na Nb Nc)^2 (-c_parity) gives 26, 10 and 1.7 times on these cells.  Tophat (a
    step, which a grid sums poorly): F is Na Nb Nc just inside the radius
    sqrt(0.3969 / scale) and 0 just outside it, along random directions, whose
    sphere holds 4 pi 0.63^3 / 3 of the square crystal's integral."""
    from nbnumba import physics
    argv = "-cell %s -Na %d -Nb %d -Nc %d -lambda 1 -default_F 1 -detpixels 2" % ((cell,) + N)
    default, c_rule = build_model(parse(argv)), build_model(parse(argv + " -c_parity"))
    n, NNN = 61, N[0] * N[1] * N[2]
    assert _mean_F2(physics.SHAPE_SQUARE, default, n) == pytest.approx(NNN, rel=1e-12)
    assert _mean_F2(physics.SHAPE_GAUSS, default, n) / NNN == pytest.approx(GAUSS_INTEGRAL,
                                                                            rel=1e-4)
    # the C's factor: a ratio far from the square crystal's, different on each cell
    assert _mean_F2(physics.SHAPE_GAUSS, c_rule, n) / NNN > 1.5
    # the tophat's edge, from the cell's own volume (A^3; not the kernels' a* . b* x c*)
    a, b, c, al, be, ga = (float(x) for x in cell.split())
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    volume = a * b * c * math.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    edge = math.sqrt(0.3969) / (NNN * volume) ** (1.0 / 3.0)        # 1/A
    cr = default.crystal
    real = np.linalg.inv(np.array([cr.astar, cr.bstar, cr.cstar])).T     # rows a, b, c (A)
    spot = default.kernel_args(np.float64)[1][K.F_SPOT]
    rng = np.random.default_rng(5)
    for u in rng.normal(size=(20, 3)):
        u /= np.linalg.norm(u)
        for f, want in ((0.999, NNN), (1.001, 0.0)):
            dh, dk, dl = real @ (f * edge * u)
            F = physics.lattice_factor(physics.SHAPE_TOPHAT, dh, dk, dl, 0, 0, 0, *map(float, N),
                                       1.0, spot, tuple(cr.astar), tuple(cr.bstar),
                                       tuple(cr.cstar), 1)[0]
            assert F == want, (u, f)


def test_tophat_spot_edge_itself_is_dark_as_in_the_c():
    """nanoBragg.c lights a tophat spot's sub-path where rad_star_sqr * fudge
    < 0.3969, strictly: a point exactly on the edge gives 0 (a <= would give
    Na Nb Nc).  dh = 1 along a* = (1, 0, 0) with spot scale 1 makes
    rad_star_sqr exactly 1, so fudge = 0.3969 puts it on the edge exactly."""
    from nbnumba import physics
    N = (3.0, 4.0, 5.0)
    axes = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    for fudge, want in ((0.3969, 0.0), (float(np.nextafter(0.3969, 0.0)), 60.0),
                        (float(np.nextafter(0.3969, 1.0)), 0.0)):
        F = physics.lattice_factor(physics.SHAPE_TOPHAT, 1.0, 0.0, 0.0, 0, 0, 0, *N, fudge, 1.0,
                                   *axes, 1)[0]
        assert F == want, (fudge, F)


# ---- units: every length doubled --------------------------------------------------
SCALE_BASE = ("-misset 10 20 30 -N 5 -default_F 100 -detpixels 16 -oversample 2 -nonoise "
              "-nopgm -seed 1 ")
CRYSTAL_1 = "-cell 70 80 90 85 95 105 -lambda 1.5 -distance 100 -pixel 0.6 "
CRYSTAL_2 = "-cell 140 160 180 85 95 105 -lambda 3 -distance 100 -pixel 0.6 "


@pytest.mark.parametrize("shape", ["-square_xtal", "-round_xtal", "-gauss_xtal", "-tophat_spots"])
def test_image_unchanged_when_the_wavelength_and_the_cell_double(shape):
    """Doubling the wavelength and the cell leaves every h = a . S, and so every
    pixel: the same image bit for bit (a factor of 2 is exact in binary floating
    point).  The C's gauss and tophat spots, scaled by (Na Nb Nc)^2 (a factor
    with no length in it), change (docs/quirks.md #16)."""
    one = nbnumba.simulate_argv((SCALE_BASE + CRYSTAL_1 + shape).split()).float_image
    two = nbnumba.simulate_argv((SCALE_BASE + CRYSTAL_2 + shape).split()).float_image
    assert np.count_nonzero(one) >= 10          # (the tophat's spots: 11 pixels)
    assert np.array_equal(one, two)
    if shape in ("-gauss_xtal", "-tophat_spots"):
        c1 = nbnumba.simulate_argv((SCALE_BASE + CRYSTAL_1 + shape + " -c_parity").split())
        c2 = nbnumba.simulate_argv((SCALE_BASE + CRYSTAL_2 + shape + " -c_parity").split())
        assert not np.array_equal(c1.float_image, c2.float_image)


@pytest.mark.parametrize("extra, factor", [("", 1.0), ("-curved_det", 1.0),
                                           ("-point_pixel", 0.25)])
def test_image_unchanged_when_the_detector_doubles(extra, factor):
    """Doubling the distance, the pixel, the beam centre and the sensor's thickness
    and attenuation length keeps each pixel's direction, solid angle and
    absorption: the same image, bit for bit; a point pixel's 1/R^2 falls 4 times."""
    geom = "-cell 70 80 90 85 95 105 -lambda 1.5 -detector_thicksteps 2 %s " % extra
    one = nbnumba.simulate_argv((SCALE_BASE + geom + "-distance 50 -pixel 0.3 -Xbeam 2 -Ybeam 3 "
                                 "-detector_thick 50 -detector_abs 30").split()).float_image
    two = nbnumba.simulate_argv((SCALE_BASE + geom + "-distance 100 -pixel 0.6 -Xbeam 4 -Ybeam 6 "
                                 "-detector_thick 100 -detector_abs 60").split()).float_image
    assert np.count_nonzero(one) > one.size // 2
    assert np.array_equal(two, (one.astype(np.float64) * factor).astype(np.float32))


# ---- linearity ------------------------------------------------------------------
def test_linear_in_fluence():
    a = kernel64(parse(BASE + "-N 3 -oversample 2 -fluence 1e24"))
    b = kernel64(parse(BASE + "-N 3 -oversample 2 -fluence 3e24"))
    np.testing.assert_allclose(b, 3.0 * a, rtol=1e-12)


def test_water_background_linear_in_fluence():
    """New finding (docs/reference.md): nanoBragg's I_bg already holds
    r_e^2 * fluence and the pixel is multiplied by r_e^2 * fluence again, so the
    background grows as fluence^2 (invisible at the default fluence, where
    r_e^2 * fluence = 1).  Scattered photons are linear in the incident ones."""
    extra = "-N 1 -oversample 1 -water 5 "
    a = kernel64(parse(BASE + extra + "-fluence 1e24"))
    b = kernel64(parse(BASE + extra + "-fluence 3e24"))
    assert np.all(a > 0)
    np.testing.assert_allclose(b, 3.0 * a, rtol=1e-12)


@pytest.mark.parametrize("extra", ["-nopolar", "-oversample 2 -oversample_polar -water 0.3"])
def test_weighted_sources_are_the_weighted_mean_of_each_source_alone(tmp_path, extra):
    """-sourcefile's relative intensities (docs/quirks.md #20): with weights
    w_s (mean 1), the image is the mean over s of w_s times the image of
    source s alone.  The pixel's polarization is its first source's unless
    -oversample_polar (a C rule that both modes keep), so the relation is
    exact with -nopolar or with that switch; the second case also weighs the
    water background's per-source polarization.  (Not with -dmin: a pixel
    where it cuts every sub-path of a source alone is 0, background included,
    as in nanoBragg; tests/test_reference.py::test_sourcefile has -dmin.)"""
    lines = ["-10 0.9 0.1 1 1.5e-10", "-10 -0.4 1.2 3 1.56e-10", "-10 0.2 -0.8 0.5 1.44e-10",
             "-10 0 0 0"]
    (tmp_path / "all.txt").write_text("\n".join(lines) + "\n")
    argv = BASE + "-N 3 -oversample 1 " + extra + " -sourcefile "
    img = kernel64(parse(argv + str(tmp_path / "all.txt")))
    w = np.array([1.0, 3.0, 0.5, 0.0])
    w *= len(w) / w.sum()
    mean = np.zeros_like(img)
    for i, line in enumerate(lines[:3]):       # (the fourth, of weight 0, adds 0)
        (tmp_path / ("s%d.txt" % i)).write_text(line + "\n")
        mean += w[i] * kernel64(parse(argv + str(tmp_path / ("s%d.txt" % i)))) / len(lines)
    assert img.max() > 0.0
    np.testing.assert_allclose(img, mean, rtol=1e-12, atol=1e-14 * img.max())
    # the unweighted mean is not it (the weights reach the image)
    (tmp_path / "even.txt").write_text("-10 0.9 0.1 1 1.5e-10\n-10 -0.4 1.2 1 1.56e-10\n"
                                       "-10 0.2 -0.8 1 1.44e-10\n-10 0 0 1\n")
    even = kernel64(parse(argv + str(tmp_path / "even.txt")))
    assert np.abs(even - img).max() > 1e-3 * img.max()


def test_linear_in_F_squared():
    a = kernel64(parse(BASE + "-N 3 -oversample 2 -default_F 10"))
    b = kernel64(parse(BASE + "-N 3 -oversample 2 -default_F 30"))
    np.testing.assert_allclose(b, 9.0 * a, rtol=1e-12)


# ---- random orientation -----------------------------------------------------------
def rotation_angle(rx, ry, rz):
    """Angle (rad) of the rotation Rz(rz) Ry(ry) Rx(rx)."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    # trace of Rz Ry Rx
    tr = cz * cy + (sz * sy * sx + cz * cx) + cy * cx
    return math.acos(max(-1.0, min(1.0, 0.5 * (tr - 1.0))))


def ks_uniform_so3(angles):
    """Kolmogorov-Smirnov distance and asymptotic p-value of rotation angles
    against the Haar measure on SO(3): density (1 - cos t)/pi, CDF (t - sin t)/pi."""
    t = np.sort(np.asarray(angles))
    n = len(t)
    cdf = (t - np.sin(t)) / math.pi
    d = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2.0 * sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def test_misset_random_is_uniform_on_SO3():
    """Known defect 3 until fixed: -misset random drew from a 90-degree cap.
    2000 seeds through the project's random-misset path (no image rendered)."""
    cfg = parse("-cell 70 80 90 90 90 90 -default_F 1 -misset random")
    angles = []
    for seed in range(1, 2001):
        m = build_crystal(cfg, None, cfg.lambda0, RngState(), -seed).misset
        angles.append(rotation_angle(*m))
    d, p = ks_uniform_so3(angles)
    assert p > 1e-3, "KS distance %.3f (p = %.2g): median angle %.1f deg" % (
        d, p, math.degrees(float(np.median(angles))))


def test_ks_statistic_detects_a_capped_distribution():
    """The KS check itself: uniform angles on [0, pi/2] are rejected, Haar
    samples are accepted."""
    rng = np.random.default_rng(3)
    _, p = ks_uniform_so3(rng.uniform(0, math.pi / 2, 2000))
    assert p < 1e-6
    # Haar samples by inverting the CDF numerically
    u = rng.uniform(0, 1, 2000)
    grid = np.linspace(0, math.pi, 20001)
    haar = np.interp(u, (grid - np.sin(grid)) / math.pi, grid)
    _, p = ks_uniform_so3(haar)
    assert p > 1e-3


# ---- Bragg spot positions -------------------------------------------------------
def _rotate(v, axis, deg):
    """v turned by deg about axis, right-handed (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    v, t = np.asarray(v, float), math.radians(deg)
    return v * math.cos(t) + np.cross(a, v) * math.sin(t) + a * (a @ v) * (1.0 - math.cos(t))


def _write_mat(path, s, lam, turn=lambda v: v, argv=""):
    """A MOSFLM matrix (reciprocal vectors times lambda, one component per row)
    of the cubic lattice with a* = turn(s) (1/A) in the lab of ``argv``'s
    convention, b* and c* square to it.  The file holds them in MOSFLM's frame
    (beam x, spindle z), out of which the run turns them (docs/quirks.md #45)."""
    from nbnumba.crystal import mosflm_frame
    e1 = s / np.linalg.norm(s)
    e2 = np.cross(e1, (0.3, 0.5, 0.8))
    e2 /= np.linalg.norm(e2)
    recip = np.array([turn(e1), turn(e2), turn(np.cross(e1, e2))]) * np.linalg.norm(s)
    conv = [c for c in ("XDS", "ADXV", "DIALS") if "-" + c.lower() in argv.split()]
    if conv:
        recip = recip @ np.array(mosflm_frame(conv[0]))     # lab -> MOSFLM's frame
    path.write_text("".join("%.17g %.17g %.17g\n" % tuple(r) for r in recip.T * lam))


def _one_reflection():
    """F(1 0 0) = 1 and every other F = 0 (-default_F 0): one spot on the image."""
    F = np.zeros((4, 4, 4))
    F[2, 1, 1] = 1.0
    return HKLGrid(-1, 1, -1, 1, -1, 1, F, hkls=1)


SP, SD, SN = 1.0, 50.0, 48            # pixel (mm), distance (mm), pixels a side
SPOT_GEOM = "-pixel %g -distance %g -detpixels %d " % (SP, SD, SN)
SX, SY, ORG = 10.0, 13.0, (12.0, 15.0)  # -Xbeam/-Ybeam (mm), -ORGX/-ORGY (pixels)
X_, Y_, Z_ = np.eye(3)


def _flat(beam_pt, fdet, sdet, fbeam, sbeam):
    """Lab position (mm) of pixel (s, f)'s centre: the point beam_pt sits at
    (fbeam, sbeam) mm from the first pixel's corner along (fdet, sdet)."""
    return lambda s, f: beam_pt + ((f + 0.5) * SP - fbeam) * fdet + ((s + 0.5) * SP - sbeam) * sdet


def _tilted(v):
    """-detector_rotx 5 -detector_roty -7 -detector_rotz 4 -twotheta 10 (MOSFLM's
    two-theta axis is -z): rotations about x, then y, then z, then two-theta."""
    for axis, deg in ((X_, 5.0), (Y_, -7.0), (Z_, 4.0), (-Z_, 10.0)):
        v = _rotate(v, axis, deg)
    return v


def _sample_pivot(twotheta, axis):
    """XDS/DIALS: the detector (beam along z, fdet x, sdet y, the normal from the
    sample meeting it at ORGX/ORGY, pixel centres 1-based) swung about the sample."""
    plain = _flat(SD * Z_, X_, Y_, (ORG[0] - 0.5) * SP, (ORG[1] - 0.5) * SP)
    return lambda s, f: _rotate(plain(s, f), axis, twotheta)


def _curved(turn):
    """MOSFLM's flat detector (turned by turn) rolled onto the sphere about the
    sample that touches its plane at the foot of the normal (docs/quirks.md
    #21): offset (du, dv) from there goes along that direction's great circle,
    at arc length |(du, dv)|."""
    fd, sd = turn(Z_), turn(-Y_)
    n = np.cross(fd, sd)
    pix0 = SD * X_ - (SY + SP / 2) * fd - (SX + SP / 2) * sd
    fc, sc, R = -pix0 @ fd, -pix0 @ sd, pix0 @ n

    def pos(s, f):
        du, dv = (f + 0.5) * SP - fc, (s + 0.5) * SP - sc
        rho = math.hypot(du, dv)
        return R * (math.cos(rho / R) * n + math.sin(rho / R) * (du * fd + dv * sd) / rho)
    return pos


_FD, _SDV = _rotate(Z_, (0.2, 1, 0.3), 25), _rotate(-Y_, (0.2, 1, 0.3), 25)
_PIX0 = np.array([45.0, 20.0, -30.0])
_V = lambda x: " ".join("%.17g" % c for c in x)
TILT = "-detector_rotx 5 -detector_roty -7 -detector_rotz 4 -twotheta 10"
MOS = "-mosflm -Xbeam %g -Ybeam %g " % (SX, SY)
SPOT_CASES = {
    # MOSFLM: beam x, fdet z, sdet -y; Fbeam = Ybeam + p/2, Sbeam = Xbeam + p/2
    "mosflm": (MOS, X_, _flat(SD * X_, Z_, -Y_, SY + SP / 2, SX + SP / 2)),
    # the BEAM pivot keeps the direct beam's spot at the beam centre, whatever the turn
    "mosflm_tilted": (MOS + TILT, X_,
                      _flat(SD * X_, _tilted(Z_), _tilted(-Y_), SY + SP / 2, SX + SP / 2)),
    "denzo": ("-denzo -Xbeam %g -Ybeam %g" % (SX, SY), X_, _flat(SD * X_, Z_, -Y_, SY, SX)),
    # ADXV: beam z, fdet x, sdet -y; Fbeam = Xbeam, Sbeam = detector height - Ybeam
    "adxv": ("-adxv -Xbeam %g -Ybeam %g" % (SX, SY), Z_, _flat(SD * Z_, X_, -Y_, SX, SN * SP - SY)),
    "xds_twotheta": ("-xds -ORGX %g -ORGY %g -twotheta 20" % ORG, Z_, _sample_pivot(20.0, X_)),
    "dials_twotheta": ("-dials -ORGX %g -ORGY %g -twotheta 15" % ORG, Z_, _sample_pivot(15.0, Y_)),
    # default mode only (docs/quirks.md #2): -pix0_vector is the first pixel's corner
    "pix0_vector": ("-beam_vector 1 0 0 -fdet_vector %s -sdet_vector %s -odet_vector %s "
                    "-pix0_vector_mm %s" % (_V(_FD), _V(_SDV), _V(np.cross(_FD, _SDV)), _V(_PIX0)),
                    X_, lambda s, f: _PIX0 + (f + 0.5) * SP * _FD + (s + 0.5) * SP * _SDV),
    "curved": (MOS + "-curved_det", X_, _curved(lambda v: v)),
    "curved_tilted": (MOS + "-curved_det " + TILT, X_, _curved(_tilted)),
}


def _spot_image(tmp_path, case, target, extra=""):
    geom, beam, pos = SPOT_CASES[case]
    u = pos(*target)
    _write_mat(tmp_path / "A.mat", u / np.linalg.norm(u) - beam, 1.0, argv=geom)   # s = k_out - k_in
    cfg = parse(SPOT_GEOM + geom + " -mat %s -lambda 1 -N 40 -default_F 0 -nopolar -nonoise "
                "-nopgm -oversample 1 %s" % (tmp_path / "A.mat", extra), hkl_grid=_one_reflection())
    return nbnumba.simulate(cfg).float_image.astype(np.float64)


def _assert_spot_at(img, target):
    """The brightest pixel is ``target`` and the 5x5 window about it holds the
    spot (over 99 % of the photons), its centroid within 0.05 pixel."""
    s, f = np.unravel_index(np.argmax(img), img.shape)
    assert (s, f) == tuple(target)
    w = img[s - 2:s + 3, f - 2:f + 3]
    ss, ff = np.mgrid[s - 2:s + 3, f - 2:f + 3]
    assert w.sum() > 0.99 * img.sum()
    assert abs((w * ss).sum() / w.sum() - s) < 0.05
    assert abs((w * ff).sum() / w.sum() - f) < 0.05


@pytest.mark.parametrize("case", sorted(SPOT_CASES))
def test_bragg_spot_lands_where_the_lab_geometry_puts_it(tmp_path, case):
    """Laue condition: a lattice whose (1 0 0) has 2 pi H = k_out - k_in for the ray
    through a chosen pixel's centre (k_out from that convention's stated axes, beam
    centre, pivot and rotations) puts its spot's brightest pixel there and the
    spot's centroid within 0.05 pixel of its centre (N = 40: 99.6 % of the photons
    in 5x5 pixels; measured within 0.007)."""
    for target in ((30, 40), (5, 9)):
        img = _spot_image(tmp_path, case, target)
        _assert_spot_at(img, target)
    if case in ("pix0_vector", "curved"):
        # nanoBragg.c's geometry (docs/quirks.md #2, #21) puts it elsewhere
        c = _spot_image(tmp_path, case, target, "-c_parity")
        assert np.unravel_index(np.argmax(c), c.shape) != target


def _reciprocal_cell(a, b, c, al, be, ga):
    """a*, b*, c* (1/A) in nanoBragg's unrotated frame (a* along x, b* in the xy
    plane), from the textbook reciprocal cell, c*_z from |c*| itself."""
    ca, cb, cg = (math.cos(math.radians(x)) for x in (al, be, ga))
    sa, sb, sg = (math.sin(math.radians(x)) for x in (al, be, ga))
    V = a * b * c * math.sqrt(1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg)
    na, nb, nc = b * c * sa / V, c * a * sb / V, a * b * sg / V
    cas, cbs = (cb * cg - ca) / (sb * sg), (cg * ca - cb) / (sg * sa)
    cgs = (ca * cb - cg) / (sa * sb)
    sgs = math.sqrt(1 - cgs * cgs)
    cx, cy = nc * cbs, nc * (cas - cbs * cgs) / sgs
    return (np.array([na, 0, 0]), nb * np.array([cgs, sgs, 0]),
            np.array([cx, cy, math.sqrt(nc * nc - cx * cx - cy * cy)]))


def test_bragg_spot_of_a_triclinic_cell_turned_by_misset():
    """The Laue condition again, the crystal given as -cell and -misset rx ry rz
    (the cell turned about x, then y, then z, right-handed): the turn that takes
    (1 1 1)'s reciprocal vector onto k_out - k_in of a chosen pixel (MOSFLM), with
    lambda fitted to |H|, decomposed into those angles by hand; brightest pixel
    and centroid as above (measured: centroid within 0.001 pixel)."""
    cell = (5.0, 6.0, 7.0, 75.0, 85.0, 100.0)
    H = sum(_reciprocal_cell(*cell))                  # (1 1 1)
    F = np.zeros((4, 4, 4))
    F[2, 2, 2] = 1.0
    grid = HKLGrid(-1, 1, -1, 1, -1, 1, F, hkls=1)
    geom, beam, pos = SPOT_CASES["mosflm"]
    for target in ((30, 40), (5, 9)):
        u = pos(*target)
        k = u / np.linalg.norm(u) - beam
        lam = np.linalg.norm(k) / np.linalg.norm(H)
        axis = np.cross(H, k)
        # the turn that takes H onto k, then 33 deg about k
        turn = math.degrees(math.atan2(np.linalg.norm(axis), H @ k))
        R = np.array([_rotate(_rotate(e, axis, turn), k, 33.0) for e in np.eye(3)]).T
        assert np.linalg.norm(R @ H * lam - k) < 1e-12
        rx, ry, rz = _misset_angles(R)
        cfg = parse(SPOT_GEOM + geom + " -cell %g %g %g %g %g %g -misset %r %r %r -lambda %r -N 40 "
                    "-default_F 0 -nopolar -nonoise -nopgm -oversample 1"
                    % (cell + (rx, ry, rz, float(lam))), hkl_grid=grid)
        img = nbnumba.simulate(cfg).float_image.astype(np.float64)
        _assert_spot_at(img, target)


# ---- integrated intensity of a rotation sweep (Darwin) ---------------------------
def _swept_reflection(tmp_path, N, extra=""):
    """(sum over pixels and phi of the image, Darwin's integral) for (1 0 0) of a
    cubic gauss crystal crossing the Ewald sphere at 2theta = 30 deg mid-sweep.
    XDS: beam z, spindle x, the detector swung by 30 deg so its normal is the
    reflection's k_out; the sweep spans +-4.5 of the rocking curve's sigmas."""
    tt, lam, fluence = 30.0, 1.0, 1e24
    osc, steps, npx = 12.0 * 20 / N, 120, 64
    u = np.array([0.0, -math.sin(math.radians(tt)), math.cos(math.radians(tt))])
    s = (u - Z_) / lam
    # at phi = osc/2 (right-handed about the spindle) a* = s
    _write_mat(tmp_path / "D.mat", s, lam, lambda v: _rotate(v, X_, -osc / 2), argv="-xds")
    pixel = 0.1 * 20 / N
    argv = ("-xds -twotheta %g -distance 50 -pixel %g -detpixels %d -ORGX %g -ORGY %g -mat %s "
            "-lambda %g -N %d -gauss_xtal -default_F 0 -nopolar -nonoise -nopgm -oversample 1 "
            "-phi 0 -osc %g -phisteps %d -fluence %g %s"
            % (tt, pixel, npx, npx / 2 + 0.5, npx / 2 + 0.5, tmp_path / "D.mat", lam, N, osc,
               steps, fluence, extra))
    img = nbnumba.simulate(parse(argv, hkl_grid=_one_reflection())).float_image.astype(np.float64)
    edge = max(img[0].max(), img[-1].max(), img[:, 0].max(), img[:, -1].max())
    assert edge < 1e-6 * img.max()                     # the whole spot is on the detector
    v_cell = 1.0 / np.linalg.norm(s) ** 3               # A^3 (a = 1/|s|)
    r_e2 = 2.8179403262e-15 ** 2                        # m^2
    gauss = (0.315 * math.pi) ** 1.5        # its integral over the square crystal's
    darwin = r_e2 * fluence * gauss * N ** 3 * lam ** 3 / (v_cell * math.sin(math.radians(tt)))
    return img.sum() * math.radians(osc), darwin


def test_rotation_sweep_integrates_to_the_darwin_formula(tmp_path):
    """Kinematic integrated intensity: sum over pixels of the image (the mean over
    the phi steps) times the sweep (rad) = r_e^2 fluence |F|^2 Nc lambda^3 /
    (V_cell sin 2theta) (Lorentz factor 1/sin 2theta, spindle normal to the
    scattering plane; Nc = Na Nb Nc and the gauss spot's 0.984 of the square
    crystal's integral of F_latt^2, docs/quirks.md #16).  The remainder is the
    variation of the Lorentz factor across the spot, O(1/N^2): measured 2.3e-4
    at N = 20, 5.7e-5 at N = 40 (2.4e-4 with 30 mosaic domains of 0.5 deg)."""
    got, want = _swept_reflection(tmp_path, 20)
    err20 = got / want - 1.0
    assert abs(err20) < 3e-4
    got, want = _swept_reflection(tmp_path, 40)
    assert abs(got / want - 1.0) < 0.3 * abs(err20)          # converging as 1/N^2
    got, want = _swept_reflection(tmp_path, 20, "-mosaic 0.5 -mosaic_dom 30")
    assert abs(got / want - 1.0) < 3e-4          # a mosaic spread moves, not makes, photons


# ---- sub-pixel sampling is a finer detector ----------------------------------------
REBIN = ("-cell 70 80 90 85 95 105 -misset 10 20 30 -lambda 1.5 -default_F 100 -N 5 -distance 60 "
         "-nonoise -nopgm -detector_thick 200 -detector_abs 300 -detector_thicksteps 3 -polar 0.7 "
         "-water 0.03 -twotheta 12 -detector_rotx 4 -oversample_omega -oversample_polar "
         "-oversample_thick ")


@pytest.mark.parametrize("extra", ["", "-curved_det",
                                   "-divergence 1 -divsteps 2 -phi 3 -osc 1 -phisteps 2"])
def test_fine_pixels_sum_to_the_oversampled_coarse_pixel(extra):
    """Photons are additive over area: with every factor taken per sub-pixel
    (-oversample_omega/_polar/_thick), a pixel of -oversample 2 is the sum of the
    2x2 pixels of half its size centred on its sub-pixels (MOSFLM adds half of
    each run's own pixel to the beam centre: the fine run's is a quarter of a
    coarse pixel more).  Bragg term,
    sensor layers, polarization and water background alike: measured 1e-14.
    nanoBragg.c's running-sum factors (docs/quirks.md #7, #7b) break it."""
    p, n = 0.4, 12
    coarse = REBIN + extra + " -pixel %g -detpixels %d -Xbeam 2.5 -Ybeam 1.9 -oversample 2" % (p, n)
    fine = REBIN + extra + " -pixel %g -detpixels %d -Xbeam %r -Ybeam %r -oversample 1" % (
        p / 2, 2 * n, 2.5 + p / 4, 1.9 + p / 4)
    c, f = kernel64(parse(coarse)), kernel64(parse(fine))
    summed = f.reshape(n, 2, n, 2).sum(axis=(1, 3))
    assert c.max() > 5 * c.min() > 0              # Bragg peaks over the background
    np.testing.assert_allclose(summed, c, rtol=1e-12, atol=0)
    if not extra:
        cp = kernel64(parse(coarse + " -c_parity"))
        fp = kernel64(parse(fine + " -c_parity")).reshape(n, 2, n, 2).sum(axis=(1, 3))
        assert np.max(np.abs(fp / cp - 1)) > 0.1


# ---- polarization ---------------------------------------------------------------------
KP = 1.0
K_PIX0 = np.array([20.0, 9.0, -12.0])
K_FD, K_SD = np.array([0, 0.28, 0.96]), np.array([0, -0.96, 0.28])
KAHN = ("-cell 70 80 90 90 90 90 -lambda 1.5 -default_F 10 -N 1 -nonoise -nopgm -pixel %g "
        "-detpixels 24 -oversample 1 -beam_vector 1 0 0 -fdet_vector %s -sdet_vector %s "
        "-odet_vector 1 0 0 -pix0_vector_mm %s " % (KP, _V(K_FD), _V(K_SD), _V(K_PIX0)))


@pytest.mark.parametrize("source", ["", "-10 3 -2"])
def test_polarization_is_the_kahn_closed_form(tmp_path, source):
    """Kahn: a beam of polarization K along E (the -polar_vector's part normal to
    the incident ray) scatters P = ((1 + K) (1 - (d.E)^2) + (1 - K) (1 - (d.B)^2)) / 2
    along d, B = i x E: the dipole factor 1 - (d.E)^2 of each linear part.  The
    image over the -nopolar one at pixels of 2theta = 25 to 43 deg, for K = 0, 0.5,
    1, -0.4 and E normal, tilted in and out of the plane normal to the beam; the
    beam along x, or one source 20 deg off it (measured: 7e-16)."""
    inc = np.array([1.0, 0.0, 0.0])
    src = ""
    if source:
        (tmp_path / "src.txt").write_text(source + "\n")
        src = "-sourcefile %s " % (tmp_path / "src.txt")
        inc = -np.array([float(x) for x in source.split()])      # from the source to the sample
    inc /= np.linalg.norm(inc)
    pixels = [(0, 23), (20, 3), (2, 2), (12, 18)]
    plain = kernel64(parse(KAHN + src + "-nopolar"), pixels)
    for kahn in (0.0, 0.5, 1.0, -0.4):
        for axis in ((0, 0, 1), (0, 0.6, 0.8), (0.3, 0.6, 0.8)):
            argv = KAHN + src + "-polar %g -polar_vector %s" % (kahn, _V(axis))
            img = kernel64(parse(argv), pixels)
            B = np.cross(inc, axis)
            B /= np.linalg.norm(B)
            E = np.cross(B, inc)
            for s, f in pixels:
                d = K_PIX0 + (f + 0.5) * KP * K_FD + (s + 0.5) * KP * K_SD
                d /= np.linalg.norm(d)
                want = 0.5 * ((1 + kahn) * (1 - (d @ E) ** 2) + (1 - kahn) * (1 - (d @ B) ** 2))
                assert img[s, f] / plain[s, f] == pytest.approx(want, rel=1e-13), (kahn, axis, s, f)


# ---- vanishing spreads ------------------------------------------------------------------
@pytest.mark.parametrize("spread", ["-mosaic 1e-12 -mosaic_dom 7", "-dispersion 1e-8 -dispsteps 3",
                                    "-divergence 1e-8 -divsteps 3",
                                    "-hdivrange 1e-8 -hdivsteps 3 -vdivrange 1e-8 -vdivsteps 2 "
                                    "-square_div"])
def test_a_vanishing_spread_is_the_plain_image(spread):
    """A mosaic, wavelength or divergence spread -> 0 leaves each sample the
    plain run's, so their mean is its image, the water background included
    (added once, not divided by the samples: docs/quirks.md #19, which
    -c_parity keeps).  The spreads here move a pixel by < 5e-12 (measured; the
    mosaic's random domains move it to first order: 1e-8 deg, 1e-7)."""
    base = BASE + "-N 3 -oversample 1 -misset 10 20 30 -water 0.002 "
    plain = kernel64(parse(base))
    assert plain.max() > 3 * plain.min()      # background ~100 photons, Bragg peaks ~200 more
    np.testing.assert_allclose(kernel64(parse(base + spread)), plain, rtol=1e-10, atol=0)
    c_plain = kernel64(parse(base + "-c_parity"))
    assert np.max(np.abs(kernel64(parse(base + spread + " -c_parity")) / c_plain - 1)) > 0.1



# ---- second round: spindle, -dmin, water, interpolation, fluence ---------------------------
ROUND2 = ("-cell 70 80 90 85 95 105 -lambda 1.5 -nonoise -nopgm -N 5 -pixel 0.5 -detpixels 16 "
          "-oversample 1 ")


def _turn(axis, deg):
    """Matrix of the right-handed turn by deg about axis (columns: the turned x, y, z)."""
    return np.array([_rotate(e, axis, deg) for e in np.eye(3)]).T


def _misset_angles(R):
    """(rx, ry, rz) in degrees with R = Rz(rz) Ry(ry) Rx(rx), -misset's order."""
    return (math.degrees(math.atan2(R[2, 1], R[2, 2])), math.degrees(-math.asin(R[2, 0])),
            math.degrees(math.atan2(R[1, 0], R[0, 0])))


def test_spindle_turn_equals_the_same_turn_given_as_misset():
    """A still at -phi p about -spindle_axis u is the crystal turned by R(u, p)
    after its misset M: the run with -misset of R(u, p) M and phi 0 gives the same
    image (measured 3e-15 of the maximum); the opposite turn does not."""
    u = np.array([1.0, 2.0, 3.0]) / math.sqrt(14.0)
    base = ROUND2 + "-default_F 10 -distance 60 -spindle_axis %s " % _V(u)
    M = _turn(Z_, 25) @ _turn(Y_, -14) @ _turn(X_, 8)
    spun = kernel64(parse(base + "-misset 8 -14 25 -phi 40"))
    same = kernel64(parse(base + "-misset %r %r %r" % _misset_angles(_turn(u, 40) @ M)))
    assert np.count_nonzero(spun > 1e-3 * spun.max()) > 20
    np.testing.assert_allclose(same, spun, rtol=0, atol=1e-13 * spun.max())
    other = kernel64(parse(base + "-misset %r %r %r" % _misset_angles(_turn(u, -40) @ M)))
    assert np.max(np.abs(other - spun)) > 0.1 * spun.max()


def _centre_directions(cfg):
    """Unit vectors from the sample to each pixel's centre, and the model."""
    m = build_model(cfg)
    d = m.det
    s, f = np.mgrid[0:d.spixels, 0:d.fpixels]
    pos = (np.array(d.pix0) + ((f + 0.5) * d.pixel_size)[..., None] * np.array(d.fdet)
           + ((s + 0.5) * d.pixel_size)[..., None] * np.array(d.sdet))
    R = np.linalg.norm(pos, axis=2)
    return pos / R[..., None], R, m


@pytest.mark.parametrize("dmin", [3.0, 5.0])
def test_dmin_cuts_the_bragg_image_at_its_resolution_ring(dmin):
    """-dmin d drops the scattering of |S| = 2 sin(theta)/lambda > 1/d: with point
    pixels each pixel is one scattering vector, so the image is 0 beyond the
    ring and bit for bit the uncut one inside it."""
    base = ROUND2 + "-default_F 10 -distance 15 -point_pixel -Xbeam 0 -Ybeam 0 "
    plain, cut = kernel64(parse(base)), kernel64(parse(base + "-dmin %g" % dmin))
    d, _, m = _centre_directions(parse(base))
    S = np.linalg.norm(d - np.array(m.det.beam), axis=2) / 1.5        # 1/A
    beyond = S > 1.0 / dmin
    assert 20 < beyond.sum() < beyond.size - 20
    assert np.all(plain[beyond] > 0) and np.all(cut[beyond] == 0)
    assert np.array_equal(cut[~beyond], plain[~beyond])


@pytest.mark.parametrize("polar", ["-nopolar", "-polar 0.3", "-polar 1 -polar_vector 0 0.6 0.8",
                                   "-nopolar -point_pixel"])
def test_water_background_is_its_closed_form(polar):
    """Water alone (F ~ 0): r_e^2 fluence F_w^2 n Omega P, n = the molecules of a
    1 g/cm^3 cube of side -water (um) at 18 g/mol, F_w = 2.57, Omega = p^2 d/R^3
    (1/R^2 for a point pixel), P Kahn's factor of the beam's polarization K along
    E (measured: 1e-15)."""
    water_m, fluence, r_e2, avogadro = 0.5e-6, 1e24, 7.94079248018965e-30, 6.02214179e23
    cfg = parse(ROUND2.replace("-N 5", "-N 3") + "-default_F 1e-30 -distance 15 -Xbeam 1 "
                "-Ybeam 2 -fluence %g -water %g %s" % (fluence, water_m * 1e6, polar))
    img = kernel64(cfg)
    d, R, m = _centre_directions(cfg)
    p = m.det.pixel_size
    omega = 1.0 / R ** 2 if "-point_pixel" in polar else p * p * m.det.close_distance / R ** 3
    molecules = water_m ** 3 * 1e6 * avogadro / 18.0
    want = r_e2 * fluence * 2.57 ** 2 * molecules * omega
    if "-nopolar" not in polar:
        K = cfg.polarization
        inc, E = np.array(m.det.beam), np.array(m.det.polar)
        E = E - (E @ inc) * inc
        E /= np.linalg.norm(E)
        B = np.cross(inc, E)
        P = 0.5 * ((1 + K) * (1 - (d @ E) ** 2) + (1 - K) * (1 - (d @ B) ** 2))
        assert P.min() < 0.98
        want = want * P
    np.testing.assert_allclose(img, want, rtol=1e-13, atol=0)


def test_tricubic_interpolation_reproduces_a_cubic_polynomial():
    """-interpolate is 4-point Lagrange interpolation along h, k and l: exact for
    a table sampled from a polynomial of degree <= 3 in each index (measured:
    7e-16 at 200 random fractional points)."""
    from nbnumba import physics
    lo, hi = -5, 5
    p = lambda h, k, l: (50 + 0.3 * h ** 3 - 0.2 * h * k * l + 0.1 * k * k * l + 0.05 * l ** 3
                         - h * k + 2 * l + 0.07 * h * h * k + 0.01 * (h * k * l) ** 3)
    h, k, l = np.meshgrid(*(np.arange(lo, hi + 2, dtype=float),) * 3, indexing="ij")
    F = p(h, k, l)
    rng = np.random.default_rng(1)
    for x in rng.uniform(-3.0, 3.0, size=(200, 3)):
        assert physics.tricubic_F(F, lo, lo, lo, *x) == pytest.approx(p(*x), rel=1e-13)
    # a quartic term is not reproduced
    F4 = F + h ** 4
    x = (0.5, 0.25, -0.3)
    assert abs(physics.tricubic_F(F4, lo, lo, lo, *x) - p(*x) - 0.5 ** 4) > 1e-3


def test_flux_times_exposure_over_beam_area_is_the_fluence():
    """-flux f -exposure t -beamsize b is the fluence f t / b^2 (photons/m^2):
    the same image, background included."""
    base = ROUND2 + "-default_F 10 -distance 30 -water 0.1 "
    a = kernel64(parse(base + "-fluence %r" % (1e12 * 0.5 / 0.02e-3 ** 2)))
    b = kernel64(parse(base + "-flux 1e12 -exposure 0.5 -beamsize 0.02"))
    assert a.min() > 0
    np.testing.assert_allclose(b, a, rtol=1e-14, atol=0)


# ---- turns about the beam, beam-centre moves, mosaic domains ---------------------------
TRICLINIC = (30.0, 40.0, 50.0, 80.0, 95.0, 105.0)
TRICLINIC_M = _turn(Z_, 25) @ _turn(Y_, -14) @ _turn(X_, 8)      # -misset 8 -14 25


def _quarter(v):
    """v turned by +90 deg about x (the beam): (x, y, z) -> (x, -z, y), exact in
    floating point (a permutation and a sign)."""
    return np.array([v[0], -v[2], v[1]])


def _write_recip_mat(path, recip, lam):
    """A MOSFLM matrix of the reciprocal vectors recip (rows a*, b*, c*, 1/A)."""
    path.write_text("".join("%.17g %.17g %.17g\n" % tuple(r) for r in np.array(recip).T * lam))


@pytest.mark.parametrize("case", ["mosflm_nopolar", "polar_and_spindle_turned"])
def test_a_quarter_turn_about_the_beam_turns_the_image(tmp_path, case):
    """Turning the crystal (and the polarization and spindle axes) by +90 deg
    about the beam (x) turns the image of a square detector centred on the beam:
    the pixel at (D, -v, u) (u along fdet = z, v along sdet = -y, from the centre)
    goes to (D, -u, -v), pixel (s, f) to (f, n-1-s): np.rot90(image, -1).  The
    turned -mat is the original with its rows permuted and one negated, so both
    runs differ only by float64 rounding in the order of sums (cell vectors, pixel
    positions: ~1 ulp), which the lattice factor's slope (pi N h, h ~ 20)
    magnifies: measured 4e-14 of the maximum.  With -oversample 2 the
    per-sub-pixel factors are needed: without -oversample_omega a pixel takes one
    corner sub-pixel's solid angle (nanoBragg's rule, kept), which the turn moves
    to another corner (2.6 % of the maximum)."""
    n, p = 16, 0.5
    recip = [TRICLINIC_M @ v for v in _reciprocal_cell(*TRICLINIC)]
    _write_recip_mat(tmp_path / "A.mat", recip, 1.0)
    _write_recip_mat(tmp_path / "B.mat", [_quarter(v) for v in recip], 1.0)
    base = ("-lambda 1 -default_F 10 -N 4 -nonoise -nopgm -distance 8 -pixel %g -detpixels %d "
            "-oversample 2 -oversample_omega -oversample_polar " % (p, n))
    if case == "mosflm_nopolar":
        # MOSFLM adds half a pixel: the beam meets the detector at its centre, n p / 2
        centre = (n - 1) * p / 2
        geom_a = geom_b = base + "-mosflm -Xbeam %r -Ybeam %r -nopolar " % (centre, centre)
    else:
        # -polar_vector selects CUSTOM: -Xbeam/-Ybeam are the centre itself
        pol, spin = np.array([0.0, 0.6, 0.8]), np.array([0.3, 0.5, 0.8]) / math.sqrt(0.98)
        geom = base + "-Xbeam %r -Ybeam %r -polar 0.7 -phi 3 -osc 4 -phisteps 2 " % (n * p / 2,
                                                                                       n * p / 2)
        axes = "-polar_vector %s -spindle_axis %s "
        geom_a = geom + axes % (_V(pol), _V(spin))
        geom_b = geom + axes % (_V(_quarter(pol)), _V(_quarter(spin)))
    a = kernel64(parse(geom_a + "-mat %s" % (tmp_path / "A.mat")))
    b = kernel64(parse(geom_b + "-mat %s" % (tmp_path / "B.mat")))
    assert np.count_nonzero(a > 1e-3 * a.max()) > 100
    np.testing.assert_allclose(b, np.rot90(a, -1), rtol=0, atol=1e-12 * a.max())
    # the image has no such symmetry of its own, and the other turn is not it
    assert np.max(np.abs(np.rot90(a, -1) - a)) > 0.5 * a.max()
    assert np.max(np.abs(b - np.rot90(a, 1))) > 0.5 * a.max()


@pytest.mark.parametrize("extra", ["", "-curved_det"])
def test_moving_the_beam_centre_by_a_pixel_shifts_the_image(extra):
    """A flat detector moved by one pixel in its own plane (the beam centre, in
    binary-exact mm, moved by the pixel size) shows the same lab positions one
    pixel along: MOSFLM's -Xbeam is along the slow axis, -Ybeam along the fast
    one; raising it moves the detector back, so pixel (s + 1) sees what s saw.
    A tilted detector (BEAM pivot), a two-layer sensor, sub-pixels, the Kahn factor
    and water background on a 16 x 20 detector: measured 1.2e-13 per pixel (pixel
    positions to an ulp, magnified by the lattice factor's slope).  The default
    mode's curved detector is that flat one rolled onto the sphere from the foot
    of its normal (docs/quirks.md #21), which moves with it: the same (1.7e-13)."""
    p, S, F = 0.125, 16, 20
    base = ("-cell %g %g %g %g %g %g -misset 8 -14 25 -lambda 1 -default_F 10 -N 4 -nonoise "
            "-nopgm -distance 3 -pixel %g -detpixels_s %d -detpixels_f %d -oversample 2 "
            "-polar 0.6 -water 0.003 -detector_rotx 3 -detector_roty -4 -detector_rotz 5 "
            "-detector_thick 100 -detector_abs 200 -detector_thicksteps 2 %s "
            % (TRICLINIC + (p, S, F, extra)))
    X, Y = 1.0, 1.25
    a = kernel64(parse(base + "-Xbeam %r -Ybeam %r" % (X, Y)))
    slow = kernel64(parse(base + "-Xbeam %r -Ybeam %r" % (X + p, Y)))
    fast = kernel64(parse(base + "-Xbeam %r -Ybeam %r" % (X, Y - p)))
    assert a.max() > 5 * np.median(a) and a.min() > 0       # spots over the background
    np.testing.assert_allclose(slow[1:, :], a[:-1, :], rtol=1e-12, atol=0)
    np.testing.assert_allclose(fast[:, :-1], a[:, 1:], rtol=1e-12, atol=0)
    # the other axis or the other direction is not it
    assert np.max(np.abs(slow[:, 1:] - a[:, :-1])) > 0.5 * a.max()
    assert np.max(np.abs(slow[:-1, :] - a[1:, :])) > 0.5 * a.max()
    assert np.max(np.abs(fast[:, 1:] - a[:, :-1])) > 0.5 * a.max()


@pytest.mark.parametrize("phi", ["", "-phi 30 -spindle_axis 0.3 0.5 0.8 "])
def test_a_mosaic_image_is_the_mean_of_its_domains_images(phi):
    """-mosaic_dom N draws N rotations U_i (the first too, docs/quirks.md #29) that
    misorient blocks of the misset crystal, which turn with it about the
    spindle (cell Phi U_i M a, #41): the image is the mean of the N images of a
    crystal of misset U_i M alone, at any phi; the step count that divides the
    pixel sum holds the N domains, and the water background is added once in
    both.  Each domain alone is given as -misset angles of U_i M (decomposed by
    hand: its cell vectors within 6e-16 of the model's own): measured 9e-14 per
    pixel.  At -phi 30 nanoBragg.c's blocks, misoriented in the lab frame after
    the turn (U_i Phi M a), are not these crystals (-c_parity: 0.39 of the
    maximum off, measured ad hoc with the -c_parity images of the same lines)."""
    base = ("-cell %g %g %g %g %g %g -lambda 1 -default_F 10 -N 6 -nonoise -nopgm -distance 20 "
            "-pixel 0.25 -detpixels 24 -oversample 1 -polar 0.6 -water 0.003 " % TRICLINIC) + phi
    mosaic = parse(base + "-misset 8 -14 25 -mosaic 2 -mosaic_dom 5 -mosaic_seed 7")
    U = build_model(mosaic).umats.reshape(-1, 3, 3)
    assert len(U) == 5 and not np.array_equal(U[0], np.eye(3))
    img = kernel64(mosaic)
    alone = [kernel64(parse(base + "-misset %r %r %r" % _misset_angles(u @ TRICLINIC_M)))
             for u in U]
    assert img.min() > 0
    np.testing.assert_allclose(img, np.mean(alone, axis=0), rtol=1e-12, atol=0)
    # the domains are distinct orientations, each one's image far from the first's
    assert min(np.max(np.abs(x - alone[0])) for x in alone[1:]) > 0.1 * img.max()
    # and leaving one out is not the image
    assert np.max(np.abs(img - np.mean(alone[1:], axis=0))) > 0.03 * img.max()


@pytest.mark.parametrize("steps", [1, 4])
def test_a_reversed_spindle_sweeping_back_gives_the_same_image(steps):
    """An oscillation from phi0 through osc about the spindle u is the same
    exposure as the one from -phi0 - osc through osc about -u, swept the other
    way: the same crystal orientations, so the same image.  The default mode's
    points, centred in the oscillation (docs/quirks.md #28), are the same set
    in both; nanoBragg.c's, at the start of each step, are not (measured here
    under -c_parity: 10 % of the maximum with 4 steps, 40 % with 1)."""
    base = ("-cell %g %g %g %g %g %g -misset 8 -14 25 -lambda 1 -default_F 10 -N 6 -nonoise "
            "-nopgm -distance 20 -pixel 0.25 -detpixels 24 -oversample 1 -polar 0.6 "
            "-osc 1.2 -phisteps %d " % (TRICLINIC + (steps,)))
    fwd = base + "-spindle_axis 0.3 0.5 0.8 -phi 2 "
    back = base + "-spindle_axis -0.3 -0.5 -0.8 -phi -3.2 "
    a, b = kernel64(parse(fwd)), kernel64(parse(back))
    assert np.count_nonzero(a > 1e-3 * a.max()) > 20
    # the points' order differs (rounding of the sum) and the turns are about the
    # negated axis: measured 0 (1 step) and 3e-16 (4 steps) of the maximum
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * a.max())
    ac, bc = kernel64(parse(fwd + "-c_parity")), kernel64(parse(back + "-c_parity"))
    assert np.max(np.abs(bc - ac)) > 0.05 * ac.max()


def test_a_curved_detectors_point_lies_at_its_depth_below_the_sphere():
    """-curved_det in the default mode: a point of the surface plane at depth d
    below it lands at radius close + d from the sample, at the angle rho/close
    from the detector normal (the arc keeps its length).  The sign of the depth
    was caught only by a 1e15 m sensor (a mutation audit): here it is the
    closed form, on a turned frame."""
    from nbnumba import physics
    rng = np.random.default_rng(5)
    R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    odet, fdet, sdet = (tuple(float(x) for x in R[:, i]) for i in range(3))
    close = 0.1
    for depth in (0.0, 1e-4, 4.5e-4):
        apex = physics.sphere_position(tuple(close * o for o in odet), depth, close, odet, fdet, sdet)
        assert np.allclose(apex, np.multiply(close + depth, odet), rtol=0, atol=1e-16)
        for u, v in ((0.01, 0.0), (-0.02, 0.03), (0.004, -0.05)):
            surf = tuple(close * o + u * f + v * s for o, f, s in zip(odet, fdet, sdet))
            p = np.array(physics.sphere_position(surf, depth, close, odet, fdet, sdet))
            r = np.linalg.norm(p)
            assert r == pytest.approx(close + depth, rel=1e-14), (depth, u, v)
            assert math.acos(np.dot(p / r, odet)) == pytest.approx(math.hypot(u, v) / close, rel=1e-9)
