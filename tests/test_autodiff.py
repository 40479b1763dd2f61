"""nbnumba.autodiff: gradients of the numba adjoint kernel against finite
differences of the forward kernel (torch.autograd.gradcheck, float64), the
derivative formulas against exact references, and the error contract."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nbnumba import physics  # noqa: E402
from nbnumba.autodiff import simulate, structure_factors  # noqa: E402
from nbnumba.errors import ConfigError  # noqa: E402
from nbnumba.testing import synth  # noqa: E402

FLU = 1e24          # fluence unit of the tests (photons/m^2): keeps inputs O(1)
BASE = ("-cell 70 80 90 85 95 105 -misset 10 5 3 -lambda 1.5 -N 4 -default_F 100 "
        "-distance 100 -Xbeam 12.3 -Ybeam 12.9 -detpixels 12 -pixel 2 -oversample 1 "
        "-fluence 1e24 -nonoise -nopgm -seed 1").split()
VALUES = dict(cell=[70.0, 80.0, 90.0, 85.0, 95.0, 105.0], misset=[10.0, 5.0, 3.0],
              distance=[100.0], beam_center=[12.3, 12.9], detector_rot=[1.5, -2.0, 3.0],
              twotheta=[4.0], wavelength=[1.5], polarization=[0.6], N=[4.0, 4.0, 4.0],
              fluence=[1.0])
EXTRA = {
    "mosaic_phi_sources_os": "-mosaic 0.5 -mosaic_dom 3 -phi 0 -osc 0.6 -phisteps 2 "
                             "-dispersion 0.1 -dispsteps 2 -divergence 0.2 -divsteps 2 "
                             "-oversample 2 -polar 0.9",
    "round": "-round_xtal -N 5",
    "gauss": "-gauss_xtal -N 5 -mosaic 0.3 -mosaic_dom 2",
    "point_pixel_nopolar": "-point_pixel -nopolar -phi 0 -osc 0.4 -phisteps 2",
    # water background (scales with fluence twice) and the -dmin cut-off
    "water_dmin": "-water 200 -dmin 20 -phi 0 -osc 0.5 -phisteps 2",
}


def _tensors(names, vals=VALUES):
    return tuple(torch.tensor(vals[n], dtype=torch.float64, requires_grad=True) for n in names)


def _func(argv, names, norm):
    def f(*ts):
        kw = dict(zip(names, ts))
        if "fluence" in kw:
            kw["fluence"] = kw["fluence"] * FLU
        return simulate(argv, **kw) / norm
    return f


def _norm(argv):
    return float(simulate(argv).max())


def _gradcheck(argv, names, fast=True, vals=VALUES):
    norm = _norm(argv)
    assert norm > 0.0
    assert torch.autograd.gradcheck(_func(argv, names, norm), _tensors(names, vals),
                                    fast_mode=fast, eps=1e-6, atol=1e-6, rtol=1e-4)


ALL = ("cell", "misset", "distance", "beam_center", "detector_rot", "twotheta", "wavelength",
       "polarization", "N", "fluence")


def test_forward_matches_kernel_image():
    import nbnumba
    argv = BASE + EXTRA["mosaic_phi_sources_os"].split()
    img = simulate(argv).numpy()
    ref = nbnumba.simulate_argv(argv).float_image
    assert img.dtype == np.float64 and img.shape == ref.shape
    assert ref.max() > 0.0
    # the production image is the same values stored as float32
    assert np.array_equal(img.astype(np.float32), ref)


@pytest.mark.parametrize("extra, kw", [
    ("", dict(detector_rot=[1.5, -2.0, 3.0])),
    ("", dict(twotheta=[4.0])),
    # the CUSTOM convention (-fdet_vector) keeps the pivot of the flags, and
    # -twotheta selects SAMPLE: the keyword acts as the flag appended ...
    ("-fdet_vector 0 0 1", dict(twotheta=[4.0])),
    # ... or replaces the flag's value, keeping argv's pivot (-pivot beam comes last)
    ("-fdet_vector 0 0 1 -twotheta 1 -pivot beam", dict(twotheta=[4.0])),
    ("", dict(polarization=[0.6])),
    ("-mosaic_dom 4", dict(mosaic_spread=[0.7])),
])
def test_keywords_render_as_the_flags(extra, kw):
    import nbnumba
    argv = BASE + extra.split()
    flags = list(argv)
    if "detector_rot" in kw:
        for axis, v in zip("xyz", kw["detector_rot"]):
            flags += ["-detector_rot" + axis, str(v)]
    elif "polarization" in kw:
        flags += ["-polar", str(kw["polarization"][0])]
    elif "mosaic_spread" in kw:
        flags += ["-mosaic", str(kw["mosaic_spread"][0])]
    elif "-twotheta" in flags:
        flags[flags.index("-twotheta") + 1] = str(kw["twotheta"][0])
    else:
        flags += ["-twotheta", str(kw["twotheta"][0])]
    ref = nbnumba.simulate_argv(flags).float_image
    img = simulate(argv, **{k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()})
    assert ref.max() > 0.0
    assert not np.array_equal(ref, nbnumba.simulate_argv(argv).float_image)
    assert np.array_equal(img.numpy().astype(np.float32), ref)


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_each_parameter_full_jacobian(name):
    # the full Jacobian (every pixel) for one parameter at a time
    _gradcheck(BASE + "-detpixels 6 -pixel 4".split(), (name,), fast=False)


@pytest.mark.parametrize("case", sorted(EXTRA))
def test_gradcheck_all_parameters_together(case):
    _gradcheck(BASE + EXTRA[case].split(), ALL)


def _pix0_argv(argv):
    """argv with its own detector origin given as -pix0_vector_mm (the CUSTOM
    convention, as the flag selects), and that origin in mm."""
    import nbnumba
    from nbnumba.model import build_model
    p0 = [x * 1e3 for x in build_model(nbnumba.parse_argv(list(argv))).det.pix0]
    return list(argv) + ["-pix0_vector_mm"] + [repr(x) for x in p0], p0


def test_pix0_keyword_renders_as_the_flag():
    import nbnumba
    argv, p0 = _pix0_argv(BASE)
    moved = [p0[0] - 0.5, p0[1] + 0.4, p0[2] - 0.3]
    ref = nbnumba.simulate_argv(BASE + ["-pix0_vector_mm"] + [repr(x) for x in moved]).float_image
    img = simulate(argv, pix0=torch.tensor(moved, dtype=torch.float64))
    assert ref.max() > 0.0
    assert not np.array_equal(ref, nbnumba.simulate_argv(argv).float_image)
    assert np.array_equal(img.numpy().astype(np.float32), ref)


@pytest.mark.parametrize("names", [("pix0",), ("pix0", "cell", "misset", "detector_rot",
                                               "twotheta", "wavelength", "N", "fluence")])
def test_gradcheck_pix0(names):
    """pix0 (the detector origin that -pix0_vector_mm gives): alone, over the
    full Jacobian, and with the other keywords on the sources / mosaic / phi /
    oversample case."""
    if len(names) == 1:
        argv, p0 = _pix0_argv(BASE + "-detpixels 6 -pixel 4".split())
    else:
        argv, p0 = _pix0_argv(BASE + EXTRA["mosaic_phi_sources_os"].split())
    _gradcheck(argv, names, fast=len(names) > 1, vals=dict(VALUES, pix0=p0))


def test_pix0_needs_the_flag_and_fixes_the_origin():
    t = torch.tensor([100.0, 13.3, -13.9], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConfigError, match="pix0="):
        simulate(BASE, pix0=t)
    # with the origin given, distance and beam centre do not move the detector:
    # their gradient is 0 (docs/autodiff.md), pix0's is not
    argv, p0 = _pix0_argv(BASE)
    d = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    simulate(argv, distance=d, pix0=p).sum().backward()
    assert float(d.grad[0]) == 0.0 and float(p.grad.abs().max()) > 0.0


@pytest.mark.parametrize("others", [(), ("cell", "detector_rot")])
def test_mosaic_spread_central_differences(others):
    """mosaic_spread (the adjoint pass's per-cell sums and the domains'
    rotation derivatives) against Richardson central differences of the
    forward.  The default mode draws the domains' angles in double (nanoBragg.c
    rounds them to float32, steps of ~6e-8 relative: docs/quirks.md #38), so
    the image is smooth in the spread; Richardson's O(h^4) error decides the
    step: with cell and detector_rot, 1.6e-5 at 0.03 deg, 9.8e-7 at 0.015,
    6.1e-8 at 0.0075 (measured)."""
    argv = BASE + "-mosaic_dom 5 -phi 0 -osc 0.6 -phisteps 2".split()
    sig, h = 0.5, 0.0075
    w = torch.from_numpy(np.random.default_rng(0).uniform(0.5, 1.5, (12, 12)))
    ts = _tensors(others)
    t = torch.tensor([sig], dtype=torch.float64, requires_grad=True)
    (w * simulate(argv, mosaic_spread=t, **dict(zip(others, ts)))).sum().backward()
    an = float(t.grad[0])

    def L(x):
        kw = {n: torch.tensor(VALUES[n], dtype=torch.float64) for n in others}
        return float((w * simulate(argv, mosaic_spread=torch.tensor([x], dtype=torch.float64),
                                   **kw)).sum())
    fd = (8 * (L(sig + h) - L(sig - h)) - (L(sig + 2 * h) - L(sig - 2 * h))) / (12 * h)
    assert abs(an) > 0.0
    assert abs(an - fd) <= 1e-5 * abs(an), (an, fd)
    for n, x in zip(others, ts):           # the other keywords still get their gradients
        assert torch.all(torch.isfinite(x.grad)) and float(x.grad.abs().max()) > 0.0, n


def test_mosaic_spread_needs_a_spread_and_domains():
    for flags, val in (("-mosaic_dom 1", 0.5), ("-mosaic_dom 4", 0.0)):
        t = torch.tensor([val], dtype=torch.float64, requires_grad=True)
        with pytest.raises(ConfigError, match="mosaic_spread="):
            simulate(BASE + flags.split(), mosaic_spread=t)


@pytest.mark.parametrize("extra", ["-N 8 -mosaic_dom 10 -phisteps 3 -osc 0.3", EXTRA["mosaic_phi_sources_os"],
                                   "-gauss_xtal -N 5 -mosaic 0.3 -mosaic_dom 3 -phisteps 2 -osc 0.5",
                                   "-interpolate -mosaic 0.4 -mosaic_dom 3 -hkl {hkl}"])
def test_mosaic_spread_stored_jacobian_equals_the_adjoint_pass(extra, tmp_path):
    """The stored Jacobian's mosaic entry (the kernel contracts each cell's
    derivative in the spread per pixel, adjoint.P_MOS) and the adjoint
    pass's per-cell sums contracted on the host (_Run._from_cell_sums) are two
    routes to d(sum g I)/d spread: they agree to 1e-10, on the square
    crystal's vectorised path (14 domains: padded lanes) and on the general
    one (gauss shape, tricubic F), with every other keyword alongside."""
    hkl = str(tmp_path / "f.hkl")
    synth.write_p1_hkl(hkl, VALUES["cell"], 8.0, 3)
    argv = BASE + extra.format(hkl=hkl).split()
    if "-mosaic " not in " ".join(argv):
        argv += ["-mosaic", "0.5"]
    vals = {k: np.asarray(v, dtype=np.float64) for k, v in VALUES.items()}
    vals["mosaic_spread"] = np.array([0.45])
    g = np.random.default_rng(3).uniform(0.5, 1.5, (12, 12))
    _two_routes_agree(argv, vals, g)


def _three_routes_agree(argv, vals, g):
    """_two_routes_agree, and jacobian()'s columns contracted with g give the
    adjoint pass's gradients to 1e-10."""
    from nbnumba import autodiff as AD
    adjoint = _two_routes_agree(argv, vals, g)
    _, J = AD.jacobian(argv, **vals)
    for k in vals:
        ref = adjoint[k]
        assert np.allclose(np.einsum("sf,sfk->k", g, J[k]), ref, rtol=1e-10,
                           atol=1e-12 * np.abs(ref).max()), k


def _two_routes_agree(argv, vals, g):
    """Every keyword's gradient of sum(g I) through the stored Jacobian and
    through the adjoint pass agree to 1e-10 (and are nonzero); returns the
    adjoint pass's gradients."""
    from nbnumba import autodiff as AD
    grads = []
    for keep in (True, False):
        run = AD._Run(argv, vals, tuple(vals), None, keep_jac=keep)
        run.forward()
        assert (run.pixel_jac is not None) == keep
        grads.append(run.backward(g))
    stored, adjoint = grads
    for k in vals:
        ref = adjoint[k]
        assert np.abs(ref).max() > 0.0, k
        assert np.allclose(stored[k], ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max()), k
    return adjoint


def test_mosaic_spread_derivatives_of_rodrigues_rotations():
    """_umat_spread_derivatives reads each domain's axis v and angle back from
    its matrix: for U = R(v, k sigma) it must give dU/dsigma, here against
    the central difference of R in sigma (1e-9: the difference's own
    error); a domain drawn as the identity (domain 0 here) gets 0."""
    from nbnumba import autodiff as AD

    def R(v, t):
        K_ = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
        return np.eye(3) + math.sin(t) * K_ + (1.0 - math.cos(t)) * K_ @ K_
    rng = np.random.default_rng(7)
    sigma, h = math.radians(0.5), 1e-5
    axes = rng.normal(size=(4, 3))
    axes /= np.linalg.norm(axes, axis=1)[:, None]
    ks = np.array([0.0, 0.8, -1.7, 2.5])
    U = np.stack([R(v, k * sigma).reshape(9) for v, k in zip(axes, ks)])
    dU = AD._umat_spread_derivatives(U, sigma)
    assert np.all(dU[0] == 0.0)
    for v, k, d in zip(axes[1:], ks[1:], dU[1:]):
        fd = (R(v, k * (sigma + h)) - R(v, k * (sigma - h))) / (2 * h)
        assert np.abs(fd).max() > 0.1
        np.testing.assert_allclose(d.reshape(3, 3), fd, rtol=1e-9, atol=1e-9)


def test_jacobian_mosaic_spread_column():
    """jacobian() covers mosaic_spread: its column contracts to the adjoint
    pass's gradient, and matches central differences of the image (a 0.03
    deg step: the image moves in float32 steps of the spread, ~6e-8
    relative, as test_mosaic_spread_central_differences says)."""
    from nbnumba import autodiff as AD
    argv = BASE + "-mosaic 0.5 -mosaic_dom 5 -phi 0 -osc 0.6 -phisteps 2".split()
    image, J = AD.jacobian(argv, mosaic_spread=[0.5], misset=VALUES["misset"])
    col = J["mosaic_spread"][:, :, 0]
    assert J["mosaic_spread"].shape == image.shape + (1,) and np.abs(col).max() > 0.0
    g = np.random.default_rng(4).normal(size=image.shape)
    vals = dict(mosaic_spread=np.array([0.5]), misset=np.asarray(VALUES["misset"], float))
    run = AD._Run(argv, vals, tuple(vals), None, keep_jac=False)
    run.forward()
    ref = run.backward(g)["mosaic_spread"][0]
    assert abs(float(np.sum(g * col)) - ref) <= 1e-10 * abs(ref)

    def at(x):
        return simulate(argv, mosaic_spread=torch.tensor([x], dtype=torch.float64)).numpy()
    h = 0.03
    fd = (8 * (at(0.5 + h) - at(0.5 - h)) - (at(0.5 + 2 * h) - at(0.5 - 2 * h))) / (12 * h)
    assert np.abs(col - fd).max() <= 1e-5 * np.abs(col).max()


SPINDLE = [0.1, -0.2, 0.97]
#: phi steps for the spindle to turn the cells by, and the flag the keyword
#: replaces (it selects the CUSTOM convention)
SPINDLE_ARGV = BASE + "-phi 0 -osc 2 -phisteps 3 -spindle_axis 0 0 1".split()


def _direction_renders_as_the_flag(argv, name, value):
    """The direction keyword ``name`` (value: 3 numbers) gives the image of its
    flag, bit for bit in float32, and moves the image; refused without the
    flag in argv (BASE: MOSFLM fixes the vector) and for the zero vector."""
    import nbnumba
    ref = nbnumba.simulate_argv(argv + ["-" + name] + [str(x) for x in value])
    img = simulate(argv, **{name: torch.tensor(value, dtype=torch.float64)})
    assert ref.float_image.max() > 0.0
    assert not np.array_equal(ref.float_image, nbnumba.simulate_argv(argv).float_image)
    assert np.array_equal(img.numpy().astype(np.float32), ref.float_image)
    t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConfigError, match="%s= replaces" % name):
        simulate(BASE, **{name: t})
    with pytest.raises(ConfigError, match="zero vector"):
        simulate(argv, **{name: torch.zeros(3, dtype=torch.float64)})
    return t


def _direction_central_differences(argv, name, value, others, vals, h):
    """The direction keyword ``name`` against Richardson central differences of
    the forward (step h), per component, to 1e-8 of the largest; the vector is
    made a unit vector, so the derivative along itself is 0 (1e-9).  The
    keywords ``others`` require grad beside it (nonzero gradients)."""
    w = torch.from_numpy(np.random.default_rng(1).uniform(0.5, 1.5, (12, 12)))
    t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    ts = _tensors(others, vals)
    (w * simulate(argv, **{name: t}, **dict(zip(others, ts)))).sum().backward()
    an = t.grad.numpy()

    def L(x):
        kw = {n: torch.tensor(vals[n], dtype=torch.float64) for n in others}
        return float((w * simulate(argv, **{name: torch.from_numpy(x)}, **kw)).sum())
    x0 = np.array(value)
    for i in range(3):
        e = np.eye(3)[i] * h
        fd = (8 * (L(x0 + e) - L(x0 - e)) - (L(x0 + 2 * e) - L(x0 - 2 * e))) / (12 * h)
        assert abs(an[i] - fd) <= 1e-8 * np.abs(an).max(), (i, an, fd)
    assert np.abs(an).max() > 0.0
    assert abs(float(an @ x0)) <= 1e-9 * np.abs(an).max() * np.linalg.norm(x0)
    for n, x in zip(others, ts):
        assert float(x.grad.abs().max()) > 0.0, n


def test_spindle_axis_renders_as_the_flag_and_needs_it():
    _direction_renders_as_the_flag(SPINDLE_ARGV, "spindle_axis", SPINDLE)


@pytest.mark.parametrize("extra, others", [
    ("", ()),
    # the general path (gauss shape, the adjoint's per-cell loop) with the spread's entry
    ("-gauss_xtal -N 5 -mosaic 0.4 -mosaic_dom 3", ("mosaic_spread", "cell"))])
def test_spindle_axis_central_differences(extra, others):
    """spindle_axis against Richardson central differences of the forward, per
    component: the kernel's per-pixel entries fed with the rotated cells'
    derivatives (_Run.spindle_cells, differences of crystal.rotated_cells).
    The axis is made a unit vector, so the derivative along itself is 0."""
    _direction_central_differences(SPINDLE_ARGV + extra.split(), "spindle_axis", SPINDLE, others,
                                   dict(VALUES, mosaic_spread=[0.4]), 1e-4)


def test_spindle_axis_stored_jacobian_equals_the_adjoint_pass():
    """Two routes to d(sum g I)/d spindle_axis: the stored Jacobian's entries
    (P_SPIN, contracted per pixel in the kernel, beside the spread's P_MOS)
    and the adjoint pass's per-cell sums contracted on the host
    (_Run._from_cell_sums); and jacobian()'s columns contract to them.  1e-10."""
    argv = SPINDLE_ARGV + "-mosaic 0.5 -mosaic_dom 3 -oversample 2".split()
    vals = dict(spindle_axis=np.array(SPINDLE), mosaic_spread=np.array([0.45]),
                misset=np.array(VALUES["misset"]), N=np.array(VALUES["N"]))
    g = np.random.default_rng(5).uniform(0.5, 1.5, (12, 12))
    _three_routes_agree(argv, vals, g)


def test_gradcheck_spindle_axis():
    _gradcheck(SPINDLE_ARGV + "-detpixels 6 -pixel 4".split(), ("spindle_axis",), fast=False,
               vals=dict(spindle_axis=SPINDLE))


#: a beam direction off the MOSFLM beam, and the flag the keyword replaces (it
#: selects the CUSTOM convention, whose detector axes are MOSFLM's)
BEAM = [0.98, 0.05, -0.03]
BEAM_ARGV = BASE + "-beam_vector 1 0 0".split()


def test_beam_vector_renders_as_the_flag_and_needs_it():
    _direction_renders_as_the_flag(BEAM_ARGV, "beam_vector", BEAM)


@pytest.mark.parametrize("extra, others, h", [
    # Kahn polarization about a tilted axis, divergence and dispersion about the beam
    ("-polar 0.6 -polar_vector 0 0.6 0.8 -hdivrange 0.4 -vdivrange 0.3 -hdivsteps 3 "
     "-vdivsteps 2 -dispersion 0.1 -dispsteps 2", ("misset",), 1e-4),
    # the sample pivot (the beam moves the close distance) and sub-pixels; the
    # image curves faster in the beam here, hence the smaller step
    ("-pivot sample -oversample 2", ("distance", "beam_center"), 1e-5),
    # the general path (the adjoint's per-cell loop)
    ("-round_xtal -oversample 2", (), 1e-5)])
def test_beam_vector_central_differences(extra, others, h):
    """beam_vector against Richardson central differences of the forward, per
    component: the kernel's per-source entries (S = (d - inc)/lambda and the
    polarization factor) fed with the incident vectors' derivatives
    (_Run.source_blocks), plus the detector's origin and close distance through
    the host map.  The vector is made a unit vector, so the derivative along
    itself is 0."""
    _direction_central_differences(BEAM_ARGV + extra.split(), "beam_vector", BEAM, others, VALUES,
                                   h)


def test_beam_vector_stored_jacobian_equals_the_adjoint_pass():
    """Two routes to d(sum g I)/d beam_vector, the per-source entries computed
    in the kernel on both (P_BEAM): the stored Jacobian and the adjoint pass,
    beside the spindle's and the spread's per-cell entries; and jacobian()'s
    columns contract to them.  1e-10."""
    argv = SPINDLE_ARGV + ("-beam_vector 1 0 0 -mosaic 0.5 -mosaic_dom 2 -polar 0.7 "
                           "-dispersion 0.1 -dispsteps 2").split()
    vals = dict(beam_vector=np.array(BEAM), spindle_axis=np.array(SPINDLE),
                mosaic_spread=np.array([0.45]), distance=np.array([100.0]))
    g = np.random.default_rng(6).uniform(0.5, 1.5, (12, 12))
    _three_routes_agree(argv, vals, g)


def test_gradcheck_beam_vector():
    _gradcheck(BEAM_ARGV + "-detpixels 6 -pixel 4 -polar 0.5".split(), ("beam_vector",),
               fast=False, vals=dict(beam_vector=BEAM))


#: the swept ranges' keywords (mrad, mrad, percent; each named as its flag) and values
#: that move the image: a 3% spectral width, so that its column is not lost in rounding
SWEEPS = dict(hdivrange=[2.0], vdivrange=[1.5], dispersion=[3.0])


def test_sweeps_render_as_the_flags():
    """hdivrange=, vdivrange= and dispersion= give the images of their flags,
    bit for bit in float32, with the step counts the flags' rules resolve
    (auto, given counts, a given step), and move the image."""
    import nbnumba
    for extra in ("", "-hdivsteps 3 -vdivsteps 4 -dispsteps 3", "-hdivstep 0.3 -square_div"):
        argv = BASE + extra.split()
        flags = [x for k, v in SWEEPS.items() for x in ("-" + k, str(v[0]))]
        ref = nbnumba.simulate_argv(argv + flags)
        img = simulate(argv, **{k: torch.tensor(v, dtype=torch.float64) for k, v in SWEEPS.items()})
        assert ref.float_image.max() > 0.0
        # (zero widths: the default mode refuses counts without one, quirk #22)
        plain = argv + ["-hdivrange", "0", "-vdivrange", "0", "-dispersion", "0"]
        assert not np.array_equal(ref.float_image, nbnumba.simulate_argv(plain).float_image)
        assert np.array_equal(img.numpy().astype(np.float32), ref.float_image), extra


def test_sweeps_refusals(tmp_path):
    """A negative range (the C's "not given"), a zero range requiring grad (the
    sweep collapses to one source there: a kink or a step) and a sweep keyword
    beside -sourcefile (which lists the sources itself) are one-line
    ConfigErrors; a zero range without grad renders as the flag's 0."""
    import nbnumba
    for name in SWEEPS:
        with pytest.raises(ConfigError, match="%s= is negative" % name):
            simulate(BASE, **{name: torch.tensor([-1.0], dtype=torch.float64)})
        with pytest.raises(ConfigError, match="%s= of 0 cannot be differentiated" % name):
            simulate(BASE, **{name: torch.tensor([0.0], dtype=torch.float64,
                                                 requires_grad=True)})
        zero = simulate(BASE + ["-" + name, "0.8"],
                        **{name: torch.tensor([0.0], dtype=torch.float64)})
        assert np.array_equal(zero.numpy().astype(np.float32),
                              nbnumba.simulate_argv(BASE).float_image)
    src = tmp_path / "s.txt"
    src.write_text("0 0 -10 1 1.5e-10\n")
    with pytest.raises(ConfigError, match="dispersion= has no effect with -sourcefile"):
        simulate(BASE + ["-sourcefile", str(src)], dispersion=torch.tensor([1.0]))


@pytest.mark.parametrize("extra, rel", [
    # given counts with the round cut, Kahn polarization
    ("-hdivsteps 3 -vdivsteps 3 -dispsteps 3 -polar 0.8", 1e-3),
    # the ranges alone: two points per sweep
    ("", 1e-3),
    # given counts of 5 and 2 (the cut trims the corners), 4 wavelengths
    ("-hdivsteps 5 -vdivsteps 2 -dispsteps 4", 1e-3),
    # all points, sub-pixels, the general path (the per-cell loop); the round
    # shape kinks where a sub-path's nearest node changes, so a smaller step
    # keeps the differences off the kinks
    ("-square_div -round_xtal -N 5 -hdivsteps 4 -vdivsteps 2 -dispsteps 2 -oversample 2",
     1e-4)])
def test_sweeps_central_differences(extra, rel):
    """The per-pixel columns of hdivrange, vdivrange and dispersion (jacobian():
    the kernel's per-source entries fed with the sources' derivatives,
    _Run.source_blocks) against Richardson central differences of the
    forward at a step of rel (divergence; 1e-2 for the dispersion on the
    square shape: its column is small) of the value, to 1e-8 of each
    column's largest entry."""
    from nbnumba import autodiff as AD
    argv = BASE + extra.split()
    img, J = AD.jacobian(argv, **SWEEPS)
    for name, (x0,) in SWEEPS.items():
        def at(x):
            kw = {k: torch.tensor(v, dtype=torch.float64) for k, v in SWEEPS.items()}
            kw[name] = torch.tensor([x], dtype=torch.float64)
            return simulate(argv, **kw).numpy()
        h = (1e-2 if name == "dispersion" and rel == 1e-3 else rel) * x0
        fd = (8 * (at(x0 + h) - at(x0 - h)) - (at(x0 + 2 * h) - at(x0 - 2 * h))) / (12 * h)
        col = J[name][..., 0]
        assert np.abs(col).max() > 0.0, name
        assert np.abs(col - fd).max() <= 1e-8 * np.abs(col).max(), name


def test_sweeps_stored_jacobian_equals_the_adjoint_pass():
    """Three routes to the sweeps' gradients (the stored Jacobian, the adjoint
    pass, jacobian()) agree to 1e-10, beside the beam's per-source entries
    and the spread's and the spindle's per-cell ones."""
    argv = SPINDLE_ARGV + ("-beam_vector 1 0 0 -mosaic 0.5 -mosaic_dom 2 -polar 0.7 "
                           "-hdivsteps 3 -vdivsteps 2 -dispsteps 2").split()
    vals = dict(beam_vector=np.array(BEAM), spindle_axis=np.array(SPINDLE),
                mosaic_spread=np.array([0.45]), **{k: np.array(v) for k, v in SWEEPS.items()})
    g = np.random.default_rng(8).uniform(0.5, 1.5, (12, 12))
    _three_routes_agree(argv, vals, g)


def test_gradcheck_sweeps():
    _gradcheck(BASE + ("-detpixels 6 -pixel 4 -hdivrange 2 -vdivrange 1.5 -dispersion 3 "
                       "-hdivsteps 3 -vdivsteps 2 -dispsteps 2").split(),
               tuple(SWEEPS), fast=False, vals=SWEEPS)


def test_sweep_blocks_hold_the_runs_points():
    """With a count given the points are ((i + 1/2)/n - 1/2) r (docs/quirks.md
    #44): d hdiv/d range = hdiv/r, so each source's incident vector turns about
    the vertical axis by its own share, d inc/d range = hdiv/r vert x inc (per
    rad); the round cut keeps 12 of the 4 x 4 grid, not its corners
    (4 (3/8)^2 + 4 (3/8)^2 = 9/8 > 1), and the wavelengths do not move."""
    from nbnumba import autodiff as AD
    from nbnumba.sources import divergence_offset, divergence_points
    argv = BASE + "-hdivsteps 4 -vdivrange 1 -vdivsteps 4".split()
    run = AD._Run(argv, {"hdivrange": np.array([2.0])}, ("hdivrange",), None)
    inc = run.model.sources.incident
    assert inc.shape[0] == 12       # the four corners cut
    st = run.model.steps
    hdiv = np.array([divergence_offset(st, i, j)[0]
                     for i, j in divergence_points(st, run.cfg.round_div)])
    assert sorted(hdiv / 2e-3) == [-0.375] * 2 + [-0.125] * 4 + [0.125] * 4 + [0.375] * 2
    blk = run.source_blocks("hdivrange")
    expected = (hdiv / 2e-3)[:, None] * 1e-3 * np.cross(run.model.det.vert, inc)
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(blk[:3].T, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    assert not blk[3].any()


def test_sweep_range_with_a_given_step_is_refused_with_grad():
    """A given step sets how many cells the range holds (docs/quirks.md #22,
    #44), a step function of the range.  Without grad the keyword renders as
    the flag."""
    import nbnumba
    argv = BASE + ["-hdivstep", "0.3"]
    with pytest.raises(ConfigError, match="hdivrange= cannot be differentiated with -hdivstep"):
        simulate(argv, hdivrange=torch.tensor([2.0], dtype=torch.float64, requires_grad=True))
    img = simulate(argv, hdivrange=torch.tensor([2.0], dtype=torch.float64))
    ref = nbnumba.simulate_argv(argv + ["-hdivrange", "2"])
    assert ref.model.sources.incident.shape[0] == 7      # ceil(2 / 0.3)
    assert np.array_equal(img.numpy().astype(np.float32), ref.float_image)


@pytest.mark.parametrize("rng, steps", [(2e-3, -1), (2e-3, 5)])
def test_sweep_at_is_the_rule_at_a_kept_count(rng, steps):
    """sampling.sweep_at (the sampling autodiff varies a range on) gives the
    run's own sweep at its range, and resolve_steps' sweep at another range
    whose count is the same: the step scales with the range."""
    from dataclasses import replace
    from nbnumba.config import Config
    from nbnumba.sampling import resolve_steps, sweep_at
    cfg = replace(Config(), hdivrange=rng, hdivsteps=steps)
    st = resolve_steps(cfg)
    assert sweep_at(st, "hdiv", rng) == st
    other = resolve_steps(replace(cfg, hdivrange=rng * 1.01))
    assert other.hdivsteps == st.hdivsteps
    got = sweep_at(st, "hdiv", rng * 1.01)
    assert (got.hdivrange, got.hdivstep, got.hdivsteps) == (other.hdivrange, other.hdivstep,
                                                            other.hdivsteps)


def test_gradcheck_square_N_alone_with_mosaic():
    # N is continuous: the C's sin(N pi h)/sin(pi h) is used when N is refined
    _gradcheck(BASE + "-mosaic 0.5 -mosaic_dom 2".split(), ("N",), vals=dict(N=[4.3, 3.0, 5.0]))


@pytest.fixture(scope="module")
def hkl_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ad") / "p1.hkl"
    synth.write_p1_hkl(str(path), (70.0, 80.0, 90.0, 85.0, 95.0, 105.0), 6.0, seed=7)
    return str(path)


def _F_check(argv):
    F0, ranges = structure_factors(argv)
    assert F0.dtype == torch.float64 and F0.shape[0] == ranges[0][1] - ranges[0][0] + 2
    norm = _norm(argv)

    def f(F, cell):
        return simulate(argv, F_hkl=F, cell=cell) / norm
    F = F0.clone().requires_grad_(True)
    cell = torch.tensor(VALUES["cell"], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (F, cell), fast_mode=True, eps=1e-6, atol=1e-6, rtol=1e-4)
    # the F gradient lands on the grid points the image reads
    F.grad = None
    simulate(argv, F_hkl=F).sum().backward()
    assert F.grad.abs().sum() > 0.0


def test_gradcheck_F_hkl_nearest(hkl_file):
    _F_check(BASE + ["-hkl", hkl_file, "-nointerpolate", "-mosaic", "0.4", "-mosaic_dom", "2"])


def test_gradcheck_interpolate_all_parameters(hkl_file):
    argv = BASE + ["-hkl", hkl_file, "-interpolate", "-N", "2"]
    _F_check(argv)
    _gradcheck(argv, ALL)


def _all_grads(argv, names, F=None):
    ts = _tensors(names)
    kw = dict(zip(names, ts))
    if F is not None:
        kw["F_hkl"] = F.clone().requires_grad_(True)
    img = simulate(argv, **kw)
    # a non-uniform upstream gradient, so every pixel's weight matters
    w = torch.linspace(0.5, 1.5, img.numel(), dtype=torch.float64).reshape(img.shape)
    (img * w).sum().backward()
    out = [t.grad.clone() for t in ts]
    if F is not None:
        out.append(kw["F_hkl"].grad.clone())
    return out


@pytest.mark.parametrize("case", ["mosaic_phi_sources_os", "gauss", "water_dmin", "hkl_nearest",
                                  "interpolate"])
def test_stored_jacobian_and_adjoint_pass_agree(case, hkl_file, monkeypatch):
    # the forward keeps dI/dtheta per pixel (autodiff.JAC_MAX_BYTES); without
    # room for it the backward reruns the adjoint pass (per-cell sums): both
    # routes must give the same gradients
    from nbnumba import autodiff
    F = None
    if case == "hkl_nearest":
        argv = BASE + ["-hkl", hkl_file, "-nointerpolate", "-mosaic", "0.4", "-mosaic_dom", "2"]
    elif case == "interpolate":
        argv = BASE + ["-hkl", hkl_file, "-interpolate", "-N", "2"]
    else:
        argv = BASE + EXTRA[case].split()
    if case in ("hkl_nearest", "interpolate"):
        F = structure_factors(argv)[0]
    a = _all_grads(argv, ALL, F)
    monkeypatch.setattr(autodiff, "JAC_MAX_BYTES", 0)
    b = _all_grads(argv, ALL, F)
    for name, x, y in zip(ALL + ("F_hkl",), a, b):
        assert torch.all(torch.isfinite(x)), name
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12 * float(y.abs().max())), name


def test_gradcheck_all_parameters_adjoint_pass(monkeypatch):
    # the adjoint-pass route (no stored Jacobian) against finite differences
    from nbnumba import autodiff
    monkeypatch.setattr(autodiff, "JAC_MAX_BYTES", 0)
    _gradcheck(BASE + EXTRA["mosaic_phi_sources_os"].split(), ALL)


def test_backward_is_deterministic_and_thread_independent():
    import numba
    argv = BASE + EXTRA["mosaic_phi_sources_os"].split()
    grads = []
    for n in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(n)
        (c,) = _tensors(("cell",))
        simulate(argv, cell=c).square().sum().backward()
        grads.append(c.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_float32_inputs_give_float32_output_and_grads():
    c = torch.tensor(VALUES["cell"], dtype=torch.float32, requires_grad=True)
    img = simulate(BASE, cell=c)
    assert img.dtype == torch.float32
    img.sum().backward()
    assert c.grad.dtype == torch.float32 and torch.all(torch.isfinite(c.grad))


def test_second_derivatives_are_refused_not_zero():
    """create_graph=True gives the same first derivatives, tied to the inputs
    (and to an upstream gradient that depends on them) so that
    differentiating them again raises ConfigError: a Hessian of zeros was the
    silent answer before."""
    names = ("distance", "cell", "N")
    t0 = _tensors(names)
    plain = torch.autograd.grad(simulate(BASE, **dict(zip(names, t0))).sum(), t0)
    ts = _tensors(names)
    img = simulate(BASE, **dict(zip(names, ts)))
    meas = img.detach() * 1.01
    loss = ((img - meas) ** 2).sum()          # the upstream gradient depends on ts too
    for sum_loss in (img.sum(), loss):
        graph = torch.autograd.grad(sum_loss, ts, create_graph=True, retain_graph=True)
        assert all(g.requires_grad for g in graph)
        with pytest.raises(ConfigError, match="^nbnumba.autodiff: second derivatives are not "
                                              "implemented .*nbnumba.autodiff.jacobian"):
            graph[0].sum().backward()
    assert all(torch.equal(a, b.detach()) for a, b in
               zip(plain, torch.autograd.grad(img.sum(), ts, create_graph=True)))
    d = torch.tensor(VALUES["distance"], dtype=torch.float64)
    with pytest.raises(ConfigError, match="second derivatives are not implemented"):
        torch.autograd.functional.hessian(lambda x: simulate(BASE, distance=x).sum(), d)
    # without create_graph, nothing is tied: the gradients are plain tensors
    assert not any(g.requires_grad for g in plain)


def test_keyword_changed_in_place_after_the_call_keeps_the_recorded_gradient():
    """The backward reads the values the call copied: a keyword tensor that
    the caller changes in place before backward() (e.g. a projection step)
    gets the gradient at the value the image was made with, and no error."""
    d0, d1 = _tensors(["distance"]) + _tensors(["distance"])
    simulate(BASE, distance=d0).sum().backward()
    img = simulate(BASE, distance=d1)
    with torch.no_grad():
        d1.add_(1.0)
    img.sum().backward()
    assert torch.equal(d1.grad, d0.grad)


def test_batched_gradients_are_refused_and_the_loop_is_the_jacobian():
    """Batched vector-Jacobian products (is_grads_batched=True, which
    torch.autograd.functional.jacobian(vectorize=True) uses) raise ConfigError;
    torch's error was about a batching rule for aten::detach.  The unbatched
    functional.jacobian (one backward per pixel) equals jacobian()'s columns."""
    argv = BASE[:BASE.index("-detpixels") + 1] + ["5"] + BASE[BASE.index("-detpixels") + 2:]
    vals = {"distance": VALUES["distance"], "beam_center": VALUES["beam_center"]}
    ts = _tensors(list(vals), vals)
    img = simulate(argv, **dict(zip(vals, ts)))
    eye = torch.eye(img.numel(), dtype=torch.float64).reshape((-1,) + tuple(img.shape))
    with pytest.raises(ConfigError, match="^nbnumba.autodiff: batched gradients are not "
                                          "implemented .*nbnumba.autodiff.jacobian"):
        torch.autograd.grad(img, ts, eye, is_grads_batched=True)
    f = lambda d, b: simulate(argv, distance=d, beam_center=b)   # noqa: E731
    with pytest.raises(ConfigError, match="batched gradients are not implemented"):
        torch.autograd.functional.jacobian(f, tuple(t.detach() for t in ts), vectorize=True)
    loop = torch.autograd.functional.jacobian(f, tuple(t.detach() for t in ts))
    _, J = jacobian(argv, **vals)
    for name, col in zip(vals, loop):
        assert np.allclose(col.numpy(), J[name], rtol=1e-12, atol=1e-12 * np.abs(J[name]).max())


def test_torch_func_transforms_are_refused():
    d = torch.tensor(VALUES["distance"], dtype=torch.float64)
    for transform in (torch.func.grad, torch.func.jacrev):
        with pytest.raises(ConfigError, match="^distance=: nbnumba.autodiff does not work under "
                                              "torch.func transforms .*autograd.grad"):
            transform(lambda x: simulate(BASE, distance=x).sum())(d)


_FRESH = """
import sys
import nbnumba.autodiff as ad
from nbnumba.autodiff import simulate
assert "torch" not in sys.modules
import torch
argv = sys.argv[1:]
assert "torch._dynamo" not in sys.modules            # simulate then calls the kernels directly
def loss(x):
    return (simulate(argv, distance=x) ** 2).sum()
d1, d0 = (torch.tensor([100.0], dtype=torch.float64, requires_grad=True) for _ in "ab")
got = torch.compile(loss, backend="eager")(d1)       # the process's first call of the kernels
got.backward()
want = loss(d0)
want.backward()
assert torch.equal(got.detach(), want.detach()) and torch.equal(d1.grad, d0.grad)
d = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
(simulate(argv, None, None, d) ** 2).sum().backward()   # keywords given by position
assert torch.equal(d.grad, d0.grad)
"""


@pytest.mark.slow
def test_fresh_process_imports_torch_late_and_torch_compile_works():
    """A new process: importing nbnumba.autodiff does not import torch;
    torch.compile of a loss around simulate, as its first call, gives the
    eager loss and gradient (simulate is a graph break: torch.compiler.disable).
    Dynamo used to trace into numba's dispatcher, whose first call of a
    kernel in a process loads it, and failed there (an AssertionError)."""
    import subprocess
    import sys
    subprocess.run([sys.executable, "-c", _FRESH] + BASE, check=True)


# ------------------------------------------------------------- formulas
def _sincg_dh_exact(h, N):
    # d/dh of sum_k cos((N-1-2k) pi h) (= sin(N pi h)/sin(pi h), integer N),
    # in extended precision: no cancellation anywhere
    h = np.longdouble(h)
    pi = np.longdouble(math.pi)
    j = np.arange(N, dtype=np.longdouble)
    m = N - 1 - 2 * j
    return float(-pi * np.sum(m * np.sin(m * pi * h)))


@pytest.mark.parametrize("N", [2, 5, 36, 47])
def test_sincg_reduced_grad_is_as_accurate_as_the_value(N):
    rng = np.random.default_rng(N)
    hs = np.concatenate([rng.uniform(-30, 30, 200),
                         np.round(rng.uniform(-30, 30, 50)) + rng.uniform(-1e-6, 1e-6, 50),
                         np.round(rng.uniform(-30, 30, 50)) + 0.5 / N + rng.uniform(-1e-3, 1e-3, 50)])
    scale = np.pi * N * N       # size of the derivative near a peak
    for h in hs:
        dh, dN = physics.sincg_reduced_grad(float(h), float(N))
        assert abs(dh - _sincg_dh_exact(h, N)) <= 1e-12 * scale
        # dN: d/dN sin(N pi h)/sin(pi h) = pi h cos(N pi h)/sin(pi h)
        if abs(h - round(h)) > 1e-3:
            hl = np.longdouble(h)
            ref = float(np.longdouble(math.pi) * hl * np.cos(N * np.longdouble(math.pi) * hl)
                        / np.sin(np.longdouble(math.pi) * hl))
            assert abs(dN - ref) <= 1e-9 * max(1.0, abs(ref))


@pytest.mark.parametrize("N", [2, 5, 8, 47])
def test_sincg_value_grad_value_is_the_forwards(N):
    # the adjoint's lattice values come from sincg_reduced_value_grad: the same
    # operations as the forward's sincg_reduced, so the same bits
    cn = physics.sincg_near_coeffs(float(N))
    rng = np.random.default_rng(N)
    for h in np.concatenate([rng.uniform(-30, 30, 300), np.round(rng.uniform(-30, 30, 20))]):
        f = physics.sincg_reduced_value_grad(float(h), float(N), cn)[0]
        assert f == physics.sincg_reduced(float(h), float(N))


@pytest.mark.parametrize("Ns", [(8.0, 8.0, 8.0), (2.0, 5.0, 47.0), (1.0, 36.0, 0.0)])
def test_unsigned_cell_factors_give_the_signed_products(Ns):
    # the fast path's per-cell factors drop the (-1)^parity sign of the value
    # and its derivatives alike, so every product it forms (f df/dh, f df/dN,
    # f^2) is that of the signed value and derivatives of physics; an axis
    # with N <= 1 is a factor 1 with no derivative
    from nbnumba.kernels import adjoint as A
    cn = [physics.sincg_near_coeffs(N) if N > 1 else np.zeros(7) for N in Ns]
    rng = np.random.default_rng(int(sum(Ns)))
    hs = np.concatenate([rng.uniform(-30, 30, 300), np.round(rng.uniform(-30, 30, 20)),
                         np.round(rng.uniform(-30, 30, 40)) + rng.uniform(-2e-3, 2e-3, 40)])
    for h, k, l in zip(hs, np.roll(hs, 7), np.roll(hs, 19)):
        out = A._cell_lattice_grad(h, k, l, *Ns, *(tuple(c) for c in cn))
        for a, (x, N) in enumerate(zip((h, k, l), Ns)):
            f, g, gN = out[a], out[3 + a], out[6 + a]
            if N <= 1:
                assert (f, g, gN) == (1.0, 0.0, 0.0)
                continue
            fs, dh, dN = physics.sincg_reduced_value_grad(float(x), N, cn[a])
            assert abs(f) == pytest.approx(abs(fs), rel=1e-14, abs=1e-14 * N)
            assert f * g == pytest.approx(fs * dh, rel=1e-13, abs=1e-13 * N ** 3)
            assert f * gN == pytest.approx(fs * dN, rel=1e-13, abs=1e-13 * N * (1 + abs(x)))


@pytest.mark.parametrize("Ns", [(8.0, 8.0, 8.0), (2.0, 5.0, 47.0)])
def test_lean_cell_factors_are_the_full_ones_off_the_planes(Ns):
    # every N > 1: the fast path's loop without the limits' selects gives the
    # full function's values off the lattice planes, and den == 0 on one (where
    # _jac_terms runs the full function again)
    from nbnumba.kernels import adjoint as A
    cn = [tuple(physics.sincg_near_coeffs(N)) for N in Ns]
    rng = np.random.default_rng(int(sum(Ns)))
    hs = np.concatenate([rng.uniform(-30, 30, 300),
                         np.round(rng.uniform(-30, 30, 40)) + rng.uniform(-2e-3, 2e-3, 40)])
    for h, k, l in zip(hs, np.roll(hs, 7), np.roll(hs, 19)):
        lean = A._cell_lattice_grad_lean(h, k, l, *Ns, *cn)
        full = A._cell_lattice_grad(h, k, l, *Ns, *cn)
        assert lean[9] != 0.0
        np.testing.assert_allclose(lean[:9], full, rtol=1e-15, atol=0)
    assert A._cell_lattice_grad_lean(3.0, 0.2, 0.3, *Ns, *cn)[9] == 0.0


def test_jac_terms_takes_the_limit_on_a_lattice_plane():
    # a cell on a lattice plane (h = 3 exactly) sends _jac_terms to its full
    # loop: every cell's terms are then the full function's, finite
    from nbnumba.kernels import adjoint as A
    rng = np.random.default_rng(3)
    n = 20
    cells = np.zeros((2, 9, n))
    cells[1] = rng.uniform(-2.0, 2.0, (9, n))
    cells[1, :3, 0] = (1.0, 0.0, 0.0)      # a of cell 0 along x: h = S0 = 3
    S = (3.0, 0.37, -0.21)
    Ns = (8.0, 8.0, 5.0)
    cn = [tuple(physics.sincg_near_coeffs(N)) for N in Ns]
    work = np.zeros((A.N_JWORK, n))
    F = 100.0
    A._jac_terms(S, cells, work, *Ns, *cn, np.zeros((1, 1, 1)), 0, 0, 0, 0, 0, 0, 0, F)
    assert work[A.J_H, 0] == 3.0
    for j in range(n):
        h, k, l = (sum(cells[1, 3 * a + i, j] * S[i] for i in range(3)) for a in range(3))
        fa, fb, fc, ga, gb, gc, gNa, gNb, gNc = A._cell_lattice_grad(h, k, l, *Ns, *cn)
        Fl = fa * fb * fc
        tFl = 2.0 * F * F * Fl
        want = [(F * Fl) ** 2, tFl * fb * fc * ga, tFl * fa * fc * gb, tFl * fa * fb * gc,
                tFl * fb * fc * gNa, tFl * fa * fc * gNb, tFl * fa * fb * gNc]
        got = [work[r, j] for r in (A.J_T, A.J_TH, A.J_TK, A.J_TL, A.J_NA, A.J_NB, A.J_NC)]
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * abs(want[0]))


def test_config_override_is_dataclasses_replace():
    # _override copies the config and sets fields (no dataclasses.replace, for
    # speed): the same config as replace would give, for every keyword
    from dataclasses import fields, replace
    from nbnumba import autodiff as AD
    cfg = AD._parse(BASE)
    vals = {k: np.asarray(v, dtype=np.float64) for k, v in VALUES.items()}
    vals["mosaic_spread"] = np.array([0.3])
    out = AD._override(cfg, vals)
    assert out is not cfg and AD._override(cfg, {}) == cfg
    ref = replace(cfg, **{f.name: getattr(out, f.name) for f in fields(cfg)})
    assert out == ref and out != cfg
    assert out.distance == 0.1 and out.misset == tuple(math.radians(x) for x in VALUES["misset"])


@pytest.mark.parametrize("extra", ["", "-twotheta 5 -detector_rotx 2 -detector_rotz -3",
                                   "-xds -twotheta 5", "-pivot sample -detector_roty 4",
                                   "-pix0 -twotheta 5 -detector_rotx 2"])
def test_affine_keywords_one_central_difference_is_richardsons(extra):
    # host_jacobian takes one central difference for distance and beam_center
    # (the detector is affine in them): it equals the 4-point Richardson
    # difference the other keywords take, for every convention and pivot
    from nbnumba import autodiff as AD
    argv = BASE + extra.split()
    vals = {k: np.asarray(VALUES[k], dtype=np.float64) for k in ("distance", "beam_center")}
    if "-pix0" in extra:
        # a given origin: pix0 is the keyword that moves it (distance and beam centre: 0)
        argv, p0 = _pix0_argv(BASE + extra.replace("-pix0", "").split())
        vals = {"pix0": np.asarray(p0)}
    run = AD._Run(argv, vals, tuple(vals), None)
    moved = 0
    for name in vals:
        J = run.host_jacobian(name)
        for i in range(vals[name].size):
            h = AD._STEP[name][i]

            def at(t):
                v = dict(vals)
                x = vals[name].copy()
                x[i] += t
                v[name] = x
                return run._host_theta(v, name)
            rich = (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * h)
            # (with -xds the beam centre flags do not move the detector: both 0)
            moved += np.abs(rich).max() > 0.0
            np.testing.assert_allclose(J[:, i], rich, rtol=0, atol=1e-11 * np.abs(rich).max())
    assert moved >= 1


def test_polarization_and_solid_angle_grads_match_finite_differences():
    inc = (1.0, 0.0, 0.0)
    axis = (0.0, 0.0, 1.0)
    pos = (0.1, 0.023, -0.031)
    for kahn in (0.0, 0.9):
        _, g = physics.polarization_factor_grad(kahn, inc, pos, axis)
        for i in range(3):
            e = [0.0, 0.0, 0.0]
            e[i] = 1e-7
            p = tuple(x + y for x, y in zip(pos, e))
            m = tuple(x - y for x, y in zip(pos, e))
            fd = (physics.polarization_factor(kahn, inc, p, axis)[0]
                  - physics.polarization_factor(kahn, inc, m, axis)[0]) / 2e-7
            assert abs(g[i] - fd) <= 1e-7 * max(1.0, abs(fd))
    # ... and in the incident vector (any length), for a tilted axis and along
    # the scattered ray (E = B = 0, where psi is taken as 0)
    rng = np.random.default_rng(11)
    cases = [(k, tuple(rng.normal(size=3)), tuple(rng.normal(size=3)), tuple(rng.normal(size=3)))
             for k in (0.0, 0.5, 1.0, -0.3) for _ in range(5)]
    cases.append((0.7, (2.0, 0.0, 0.0), (0.1, 0.0, 0.0), (0.0, 0.0, 1.0)))
    for kahn, i0, v, ax in cases:
        g = physics.polarization_factor_grad_incident(kahn, i0, v, ax)
        for i in range(3):
            def f(t):
                x = list(i0)
                x[i] += t
                return physics.polarization_factor(kahn, tuple(x), v, ax)[0]
            fd = (8 * (f(1e-5) - f(-1e-5)) - (f(2e-5) - f(-2e-5))) / 12e-5
            assert abs(g[i] - fd) <= 1e-8 * max(1.0, abs(fd)), (kahn, i, g, fd)
    g, gc = physics.solid_angle_grad(1e-4, pos, 0.1, False)
    R = math.sqrt(sum(x * x for x in pos))
    assert math.isclose(gc, physics.solid_angle(1e-4, R, 1.0, False), rel_tol=1e-14)
    fd = (physics.solid_angle(1e-4, R * (1 + 1e-7), 0.1, False)
          - physics.solid_angle(1e-4, R * (1 - 1e-7), 0.1, False)) / (2e-7 * R)
    assert math.isclose(sum(gi * p / R for gi, p in zip(g, pos)), fd, rel_tol=1e-7)


def _columns_match_differences(argv, vals, steps):
    """Each per-pixel column of jacobian(argv, **vals) is nonzero and agrees
    with Richardson central differences of the forward (steps[keyword] per
    component) to 1e-8 of its largest entry."""
    from nbnumba import autodiff as AD
    _, J = AD.jacobian(argv, **vals)
    for name in vals:
        for i in range(vals[name].size):
            def at(t):
                kw = {k: torch.from_numpy(v.copy()) for k, v in vals.items()}
                kw[name][i] += t
                return simulate(argv, **kw).numpy()
            h = steps[name]
            fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
            col = J[name][..., i]
            assert np.abs(col).max() > 0.0, (name, i)
            assert np.abs(col - fd).max() <= 1e-8 * np.abs(col).max(), (name, i)


# ------------------------------------------------ sensor layers, -oversample_*
#: runs whose forward takes the "corrected" sum (kernels.cpu.pixel_value):
#: per-layer capture fractions, per-sub-path factors, water in every sub-path
SENSOR = {
    # three layers, each weighed by its first sub-pixel's capture fraction
    "layers": "-detector_thick 300 -detector_thicksteps 3 -detector_abs 200 -oversample 2 "
              "-water 0.03 -polar 0.7",
    # one layer: the capture fraction is a factor of the pixel, as polarization
    "one_layer": "-detector_thick 300 -detector_thicksteps 1",
    # every switch at once: each sub-path's own capture, polarization, solid angle
    "switches": "-detector_thick 300 -detector_thicksteps 2 -oversample 2 -oversample_thick "
                "-oversample_polar -oversample_omega -water 0.03 -polar 0.8",
    # per-sub-path polarization where -dmin cuts the corners' Bragg terms (the
    # water still fills them, weighed by their polarization), with mosaic
    # domains, phi steps and divergent sources (-dmin 10.5 put a sub-path of the
    # layers' middles, docs/quirks.md #39, within the differences' steps of its
    # edge; so did each of 10.3, 10.35, 10.4, 10.45 and 10.6 once the sources sat
    # at the band's cell centres, #44)
    "polar_dmin": "-detector_thick 200 -detector_thicksteps 2 -oversample 2 -oversample_polar "
                  "-water 0.03 -dmin 10.2 -phi 0 -osc 0.3 -phisteps 2 -mosaic 0.4 -mosaic_dom 2 "
                  "-divergence 0.2 -divsteps 2",
}
#: the keywords the sensor cases differentiate: everything that moves the
#: pixels, the sources or the polarization, and the crystal
SENSOR_KEYS = ("misset", "distance", "beam_center", "detector_rot", "twotheta", "wavelength",
               "polarization", "N")
#: ... and the sensor's own, at the flags' values: with the attenuation length
#: or without it (mu = 1/thickness then follows the thickness; one layer then
#: absorbs 1 - exp(-1/cos) whatever its thickness: a column of 0)
SENSOR_VALUES = {"layers": dict(detector_thick=[300.0], detector_abs=[200.0]),
                 "one_layer": dict(detector_thick=[300.0], detector_abs=[200.0]),
                 "switches": dict(detector_thick=[300.0]),
                 "polar_dmin": dict(detector_thick=[200.0])}


@pytest.mark.parametrize("case", sorted(SENSOR))
def test_sensor_and_switches_render_as_the_flags(case):
    """The float64 forward of a sensor or -oversample_* run is the production
    image's values (bit for bit in float32), and those flags move the image."""
    import nbnumba
    argv = BASE + SENSOR[case].split()
    ref = nbnumba.simulate_argv(argv).float_image
    assert ref.max() > 0.0
    assert np.array_equal(simulate(argv).numpy().astype(np.float32), ref)
    plain = [a for a in argv if not a.startswith("-oversample_")]
    i = plain.index("-detector_thick")
    assert not np.array_equal(ref, nbnumba.simulate_argv(plain[:i] + plain[i + 2:]).float_image)


@pytest.mark.parametrize("case", sorted(SENSOR))
def test_sensor_and_switches_central_differences(case):
    """Each per-pixel column (jacobian()) of a sensor or -oversample_* run
    against Richardson central differences of the forward, to 1e-8 of the
    column's largest entry: the capture fraction's parallax and the layers'
    depth along the detector normal (detector_rot, twotheta move the normal),
    the per-sub-path weights and the water they weigh."""
    argv = BASE + SENSOR[case].split()
    vals = {k: np.asarray(VALUES[k], dtype=np.float64) for k in SENSOR_KEYS}
    vals.update({k: np.array(v) for k, v in SENSOR_VALUES[case].items()})
    if case == "polar_dmin":
        # the cut is a step: it cuts sub-paths of some pixels (none near its edge)
        kw = {k: torch.from_numpy(v) for k, v in vals.items()}
        i = argv.index("-dmin")
        cut = simulate(argv, **kw).numpy() != simulate(argv[:i] + argv[i + 2:], **kw).numpy()
        assert 0 < np.count_nonzero(cut) < cut.size // 4
    _columns_match_differences(argv, vals, dict(
        misset=1e-3, distance=1e-3, beam_center=1e-3, detector_rot=1e-3, twotheta=1e-3,
        wavelength=1e-6, polarization=1e-3, N=1e-4, detector_thick=0.1, detector_abs=0.1))


def test_sensor_and_switches_three_routes_agree(hkl_file):
    """The stored Jacobian, the adjoint pass and jacobian() agree to 1e-10 with
    every switch and the per-source (beam, sweeps) and per-cell (spread,
    spindle) entries, in the CUSTOM convention; the F grid's gradient of the
    two backward routes too."""
    argv = SPINDLE_ARGV + ("-beam_vector 1 0 0 -mosaic 0.5 -mosaic_dom 2 -hdivsteps 2 "
                           "-dispsteps 2 " + SENSOR["switches"]).split()
    vals = dict(beam_vector=np.array(BEAM), spindle_axis=np.array(SPINDLE),
                mosaic_spread=np.array([0.45]), hdivrange=np.array([2.0]),
                dispersion=np.array([3.0]), detector_rot=np.array(VALUES["detector_rot"]),
                distance=np.array([100.0]), polarization=np.array([0.8]),
                detector_thick=np.array([300.0]), detector_abs=np.array([250.0]))
    g = np.random.default_rng(9).uniform(0.5, 1.5, (12, 12))
    _three_routes_agree(argv, vals, g)


def test_sensor_and_switches_F_grid_routes_agree(hkl_file, monkeypatch):
    from nbnumba import autodiff
    argv = BASE + ["-hkl", hkl_file, "-nointerpolate"] + SENSOR["polar_dmin"].split()
    F = structure_factors(argv)[0]
    a = _all_grads(argv, ("cell", "twotheta", "polarization"), F)
    monkeypatch.setattr(autodiff, "JAC_MAX_BYTES", 0)
    b = _all_grads(argv, ("cell", "twotheta", "polarization"), F)
    for x, y in zip(a, b):
        assert float(y.abs().max()) > 0.0
        assert torch.allclose(x, y, rtol=1e-9, atol=1e-12 * float(y.abs().max()))


def test_gradcheck_sensor_and_switches(hkl_file):
    argv = BASE + "-detpixels 6 -pixel 4".split() + SENSOR["switches"].split()
    _gradcheck(argv, ALL + ("detector_thick", "detector_abs"),
               vals=dict(VALUES, detector_thick=[300.0], detector_abs=[250.0]))
    _F_check(BASE + ["-hkl", hkl_file, "-nointerpolate"] + SENSOR["layers"].split())


def test_sensor_keywords_render_as_the_flags_and_refusals():
    """detector_thick= and detector_abs= give the images of their flags (bit
    for bit in float32; the thickness with the flags' automatic mu and layer
    count, given counts, a given attenuation length); nonsense values and
    gradients without a sensor are one-line ConfigErrors."""
    import nbnumba
    for extra, kw in (("", dict(detector_thick=[150.0])),
                      ("-detector_thicksteps 3 -oversample 2 -oversample_omega",
                       dict(detector_thick=[150.0], detector_abs=[90.0])),
                      ("-detector_thick 300 -detector_thicksteps 2 -detector_abs 200",
                       dict(detector_abs=[90.0]))):
        argv = BASE + extra.split()
        flags = argv + [x for k, v in kw.items() for x in ("-" + k, str(v[0]))]
        ref = nbnumba.simulate_argv(flags).float_image
        img = simulate(argv, **{k: torch.tensor(v, dtype=torch.float64) for k, v in kw.items()})
        assert ref.max() > 0.0
        assert not np.array_equal(ref, nbnumba.simulate_argv(argv).float_image)
        assert np.array_equal(img.numpy().astype(np.float32), ref), extra
    t = dict(dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConfigError, match="detector_thick= is negative"):
        simulate(BASE, detector_thick=torch.tensor([-1.0]))
    with pytest.raises(ConfigError, match="detector_thick= of 0 cannot be differentiated"):
        simulate(BASE, detector_thick=torch.tensor([0.0], **t))
    for bad in (0.0, -5.0):
        with pytest.raises(ConfigError, match="detector_abs= must be an attenuation length > 0"):
            simulate(BASE, detector_abs=torch.tensor([bad]))
    with pytest.raises(ConfigError, match="detector_abs= needs a sensor"):
        simulate(BASE, detector_abs=torch.tensor([100.0], **t))


def test_sensor_runs_take_the_sensor_copies_of_the_kernels():
    """adjoint.kernels_for gives a sensor or switch run the _sensor copies and
    a plain run the plain ones; each copy refuses the other's runs (the plain
    copy has the sensor code folded away: it would ignore the sensor)."""
    from nbnumba import autodiff as AD
    from nbnumba.kernels import adjoint as A
    vals = {"distance": np.array([100.0])}
    for extra, sensor in (("", False), ("-detector_thick 100", True),
                          ("-oversample_omega", True), ("-detector_abs 200", False),
                          ("-curved_det", True)):
        run = AD._Run(BASE + extra.split(), vals, ("distance",), None, keep_jac=False)
        assert A.uses_sensor(*run.args[:2]) == sensor, extra
        fj, bw = A.kernels_for(*run.args[:2])
        assert (fj, bw) == ((A.forward_jac_sensor, A.backward_sensor) if sensor
                            else (A.forward_jac, A.backward)), extra
        S, F = run.model.shape
        wrong = A.backward if sensor else A.backward_sensor
        with pytest.raises(ValueError, match="_sensor kernels"):
            wrong(run.model.active, run.box, np.ones((S, F)), *run.args, run.want, 1,
                  np.zeros((S, A.N_PAR)), np.zeros((1, 1, 1, 1)), np.zeros((1, 9, 1)),
                  np.zeros((S, F)), *run.incident_blocks())


def test_capture_fraction_grad_matches_finite_differences():
    """physics.capture_fraction_grad against Richardson differences of
    capture_fraction in the position, (at a fixed position) the normal, the
    layer thickness and mu, for the first and a deeper layer."""
    odet = (0.96, 0.2, -0.195)
    n = math.sqrt(sum(x * x for x in odet))
    odet = tuple(x / n for x in odet)
    pos = (0.1, 0.023, -0.031)

    def cap(p, o, tstep=1e-4, mu=3000.0):
        R = math.sqrt(sum(x * x for x in p))
        return physics.capture_fraction(2.0 if deep else 0.0, tstep, mu,
                                        sum(x * y / R for x, y in zip(p, o)))
    for deep in (False, True):
        R = math.sqrt(sum(x * x for x in pos))
        d = tuple(x / R for x in pos)
        c, gp, go, gt, gm = physics.capture_fraction_grad(2.0 if deep else 0.0, 1e-4, 3000.0,
                                                          d, R, odet)
        assert math.isclose(c, cap(pos, odet), rel_tol=1e-15)
        ft = (8 * (cap(pos, odet, 1e-4 + 1e-9) - cap(pos, odet, 1e-4 - 1e-9))
              - (cap(pos, odet, 1e-4 + 2e-9) - cap(pos, odet, 1e-4 - 2e-9))) / 12e-9
        fm = (8 * (cap(pos, odet, mu=3000.03) - cap(pos, odet, mu=2999.97))
              - (cap(pos, odet, mu=3000.06) - cap(pos, odet, mu=2999.94))) / 0.36
        assert math.isclose(gt, ft, rel_tol=1e-8) and math.isclose(gm, fm, rel_tol=1e-8)
        for i in range(3):
            e = np.eye(3)[i]
            fp = (8 * (cap(pos + 1e-6 * e, odet) - cap(pos - 1e-6 * e, odet))
                  - (cap(pos + 2e-6 * e, odet) - cap(pos - 2e-6 * e, odet))) / 12e-6
            fo = (8 * (cap(pos, odet + 1e-6 * e) - cap(pos, odet - 1e-6 * e))
                  - (cap(pos, odet + 2e-6 * e) - cap(pos, odet - 2e-6 * e))) / 12e-6
            assert abs(gp[i] - fp) <= 1e-8 * max(abs(x) for x in gp), (deep, i)
            assert abs(go[i] - fo) <= 1e-8 * max(abs(x) for x in go), (deep, i)
        # the parallax core alone, at the sphere's p = 1 and at an oblique p
        layer = 2.0 if deep else 0.0
        for p in (1.0, 0.62):
            c1, gpp, gt1, gm1 = physics.capture_fraction_parallax_grad(layer, 1e-4, 3000.0, p)
            assert c1 == physics.capture_fraction(layer, 1e-4, 3000.0, p)
            fp = (8 * (physics.capture_fraction(layer, 1e-4, 3000.0, p + 1e-6)
                       - physics.capture_fraction(layer, 1e-4, 3000.0, p - 1e-6))
                  - (physics.capture_fraction(layer, 1e-4, 3000.0, p + 2e-6)
                     - physics.capture_fraction(layer, 1e-4, 3000.0, p - 2e-6))) / 12e-6
            assert math.isclose(gpp, fp, rel_tol=1e-8), (deep, p)
            if p == 1.0:
                # the thickness and mu slopes at normal incidence: d/dx (e^-lx - e^-(l+1)x)
                x = 1e-4 * 3000.0
                dcdx = (layer + 1) * math.exp(-(layer + 1) * x) - layer * math.exp(-layer * x)
                assert math.isclose(gt1, dcdx * 3000.0, rel_tol=1e-14)
                assert math.isclose(gm1, dcdx * 1e-4, rel_tol=1e-14)


# ------------------------------------------------------------- -curved_det
#: the default mode's curved detector (physics.sphere_position): alone, and
#: with a sensor, sub-pixels and the per-sub-pixel solid angle
CURVED = {"curved": "-curved_det -polar 0.7 -water 0.03",
          # (-detector_abs: with the default mu = 1/thickness a sensor that faces the
          # sample absorbs the same fraction whatever its thickness)
          "curved_sensor": "-curved_det -detector_thick 300 -detector_abs 200 "
                           "-detector_thicksteps 2 -oversample 2 -oversample_omega -water 0.03"}


@pytest.mark.parametrize("case", sorted(CURVED))
def test_curved_det_renders_as_the_flags(case):
    """The float64 forward of a -curved_det run is the production image's
    values (bit for bit in float32), and the flag moves the image."""
    import nbnumba
    argv = BASE + CURVED[case].split()
    ref = nbnumba.simulate_argv(argv).float_image
    assert ref.max() > 0.0
    assert np.array_equal(simulate(argv).numpy().astype(np.float32), ref)
    flat = [a for a in argv if a != "-curved_det"]
    assert not np.array_equal(ref, nbnumba.simulate_argv(flat).float_image)


@pytest.mark.parametrize("case", sorted(CURVED))
def test_curved_det_central_differences(case):
    """Each per-pixel column (jacobian()) of a -curved_det run against
    Richardson central differences of the forward, to 1e-8 of the column's
    largest entry: every position derivative goes back from the sphere to the
    flat position, the sphere's radius (the close distance), the normal it
    touches and the axes its arcs follow.  (The rotation keywords'
    columns at a step of 1e-2 degrees, detector_rot's at 3e-3: at 1e-2 the
    differences' O(h^4) error reached 1.3e-8 of the sensor case's rotx
    column, 4e-11 at 2.5e-3; at 1e-3 their rounding reaches 9e-9.)"""
    argv = BASE + CURVED[case].split()
    keys = SENSOR_KEYS + ("cell",) + (("detector_thick",) if "-detector_thick" in argv else ())
    vals = {k: np.asarray(dict(VALUES, detector_thick=[300.0])[k], dtype=np.float64)
            for k in keys}
    _columns_match_differences(argv, vals, dict(
        misset=1e-3, distance=1e-3, beam_center=1e-3, detector_rot=3e-3, twotheta=1e-2,
        wavelength=1e-6, polarization=1e-3, N=1e-4, cell=1e-3, detector_thick=0.1))


def test_curved_det_beam_vector_central_differences():
    """With -curved_det, beam_vector's and distance's columns (the beam moves
    the detector's origin, so the sphere's point of contact) against
    Richardson differences, to 1e-8 of each column's largest entry, with
    divergent sources and the Kahn factor."""
    argv = BEAM_ARGV + "-curved_det -polar 0.6 -hdivrange 0.3 -hdivsteps 2".split()
    vals = {"beam_vector": np.asarray(BEAM), "distance": np.array([100.0])}
    _columns_match_differences(argv, vals, dict(beam_vector=1e-5, distance=1e-3))


def test_curved_det_three_routes_agree():
    """With -curved_det, the stored Jacobian, the adjoint pass and
    jacobian() agree to 1e-10, the beam direction (which the map turns onto
    each pixel, besides the sources' incident vectors), the spindle, the
    spread and the detector rotations among the keywords."""
    argv = SPINDLE_ARGV + ("-beam_vector 1 0 0 -mosaic 0.5 -mosaic_dom 2 -hdivsteps 2 "
                           "-curved_det -oversample 2").split()
    vals = dict(beam_vector=np.array(BEAM), spindle_axis=np.array(SPINDLE),
                mosaic_spread=np.array([0.45]), hdivrange=np.array([2.0]),
                detector_rot=np.array(VALUES["detector_rot"]), twotheta=np.array([4.0]),
                distance=np.array([100.0]), beam_center=np.array([12.3, 12.9]))
    g = np.random.default_rng(11).uniform(0.5, 1.5, (12, 12))
    _three_routes_agree(argv, vals, g)


def test_gradcheck_curved_det(hkl_file):
    argv = BASE + "-detpixels 6 -pixel 4 -curved_det".split()
    _gradcheck(argv, ALL)
    _F_check(BASE + ["-hkl", hkl_file, "-nointerpolate", "-curved_det"])


@pytest.mark.parametrize("u, v", [(0.012, -0.017), (1e-4, 2e-4), (0.0, 0.0)])
def test_sphere_position_grad_matches_finite_differences(u, v):
    """physics.sphere_position_grad against Richardson differences of
    sphere_position in the surface point, the depth, the close distance, and
    the three axes (tilted, not unit: the formula's own derivative), at arcs
    of 0.19 rad, 2e-3 rad (the sinc series) and 0 (the point of contact); and
    the map's promise: |p| = close + depth, the arc from the contact point is
    the surface offset, and the depth moves the point along its ray alone
    (in a turned frame too: tools/fuzz.py metamorphic, seed 168)."""
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    odet, fdet, sdet = (tuple(Q[:, i] * (1.0 + 0.01 * i)) for i in range(3))
    close, depth = 0.11, 3e-4
    surf = tuple(close * np.array(odet) + u * np.array(fdet) + v * np.array(sdet))
    g = tuple(rng.standard_normal(3))
    gsurf, gd, gc, go, gf, gs = physics.sphere_position_grad(g, surf, depth, close, odet,
                                                             fdet, sdet)

    def L(p=surf, t=depth, c=close, o=odet, f=fdet, s_=sdet):
        return float(np.dot(g, physics.sphere_position(p, t, c, o, f, s_)))

    def rich(fun, h):
        return (8 * (fun(h) - fun(-h)) - (fun(2 * h) - fun(-2 * h))) / (12 * h)
    for arg, got in (("p", gsurf), ("o", go), ("f", gf), ("s_", gs)):
        base = dict(p=surf, o=odet, f=fdet, s_=sdet)[arg]
        for i in range(3):
            def fun(t):
                x = list(base)
                x[i] += t
                return L(**{arg: tuple(x)})
            fd = rich(fun, 1e-6)
            assert abs(got[i] - fd) <= 1e-8 * max(1.0, abs(fd)), (arg, i, got[i], fd)
    for name, got, fun in (("close", gc, lambda h: L(c=close + h)),
                           ("depth", gd, lambda h: L(t=depth + h))):
        fd = rich(fun, 1e-6)
        assert abs(got - fd) <= 1e-8 * max(1.0, abs(fd)), (name, got, fd)
    # unit axes: the point lies on the sphere, at the surface offset's arc
    o, f, s_ = (tuple(Q[:, i]) for i in range(3))
    surf = tuple(close * Q[:, 0] + u * Q[:, 1] + v * Q[:, 2])
    p = np.array(physics.sphere_position(surf, depth, close, o, f, s_))
    assert abs(np.linalg.norm(p) - (close + depth)) <= 1e-15
    ang = math.atan2(np.linalg.norm(np.cross(p, Q[:, 0])), p @ Q[:, 0])
    assert abs(ang * close - math.hypot(u, v)) <= 1e-15
    # a depth of 1e9 m moves it along the same ray (the depth folded into a
    # flat position put 1e9 eps into the offsets of this turned frame)
    deep = np.array(physics.sphere_position(surf, 1e9, close, o, f, s_))
    assert np.abs(deep / np.linalg.norm(deep) - p / np.linalg.norm(p)).max() <= 1e-15


# ------------------------------------------------------------- errors


def test_c_parity_and_bad_inputs_are_errors():
    with pytest.raises(ConfigError, match="c_parity"):
        simulate(BASE + ["-c_parity"])
    with pytest.raises(ValueError, match="takes 6 values"):
        simulate(BASE, cell=torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="float"):
        simulate(BASE, N=torch.tensor([4, 4, 4]))
    with pytest.raises(ConfigError, match="no -hkl"):
        structure_factors(BASE)


def test_clock_seeded_random_misset_is_refused_with_gradients():
    """-misset random without a seed draws from the clock (the C's seed is
    minus the time in seconds): each call of a refiner would see another
    crystal, so with gradients it is refused; a seed, misset= or no grad is fine."""
    i = BASE.index("-seed")
    argv = BASE[:i] + BASE[i + 2:] + ["-misset", "random"]
    cell = torch.tensor(VALUES["cell"], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConfigError, match="-misset random draws a new orientation from the clock"):
        simulate(argv, cell=cell)
    for seeded in (["-misset_seed", "5"], ["-seed", "5"]):
        a = simulate(argv + seeded, cell=cell)
        b = simulate(argv + seeded, cell=cell)
        assert torch.equal(a, b) and float(a.detach().max()) > 0.0
    simulate(argv, cell=cell, misset=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert float(simulate(argv).max()) > 0.0


@pytest.mark.parametrize("name, value, match", [
    # a NaN beam centre read as "-Xbeam not given" (the C's sentinel) and
    # centred the beam silently
    ("beam_center", [math.nan, 12.9], r"beam_center= has a non-finite value \(nan at index 0\)"),
    ("cell", [70.0, 80.0, math.inf, 85.0, 95.0, 105.0], r"cell= .*inf at index 2"),
    ("misset", [0.0, -math.inf, 0.0], r"misset= .*-inf at index 1"),
    ("detector_rot", [0.0, 0.0, math.nan], r"detector_rot= .*index 2"),
    ("polarization", [math.nan], r"polarization= has a non-finite"),
    # continuous N: less than one cell has no lattice factor (it was taken as 1)
    ("N", [0.5, 4.0, 4.0], r"-Na/-N must be >= 1 unit cell \(got 0.5\)"),
    # a zero image carries no derivative in the fluence (it was a ZeroDivisionError)
    ("fluence", [0.0], r"fluence= of 0 cannot be differentiated"),
])
def test_nonsense_keyword_values_are_errors(name, value, match):
    t = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConfigError, match=match):
        simulate(BASE, **{name: t})
    with pytest.raises(ConfigError, match=match):
        jacobian(BASE, **{name: value})
    if name == "fluence":
        # not differentiated, a zero fluence is a zero image, and the other
        # keywords' gradients are zero
        (d,) = _tensors(("distance",))
        img = simulate(BASE, fluence=t.detach(), distance=d)
        assert float(img.detach().abs().max()) == 0.0
        img.sum().backward()
        assert float(d.grad.abs().max()) == 0.0


def test_non_finite_structure_factor_is_an_error(hkl_file):
    argv = BASE + ["-hkl", hkl_file]
    F, _ = structure_factors(argv)
    F[1, 2, 3] = math.nan
    with pytest.raises(ConfigError, match=r"F_hkl= has a non-finite value \(nan at grid "
                                          r"index \(1, 2, 3\)\)"):
        simulate(argv, F_hkl=F.requires_grad_(True))


def test_overflowing_images_and_derivatives_are_errors():
    """An image of inf (it used to come back as inf, and its backward gave NaN
    with a numpy warning), a float32 output above 3.4e38, and a finite image
    whose derivative overflows are ConfigErrors naming what overflowed, from
    simulate and jacobian alike (tools/fuzz.py device found the first)."""
    water = BASE + ["-water", "1e308"]
    wl = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    msg = r"the image has \d+ non-finite pixels: the water background .* overflows"
    with pytest.raises(ConfigError, match=msg):
        simulate(water, wavelength=wl)
    with pytest.raises(ConfigError, match=msg):
        simulate(water)                        # without gradients too, as the CLI
    with pytest.raises(ConfigError, match=msg):
        jacobian(water, wavelength=[1.5])
    # float64 holds 1.4e39; float32 keywords ask for a float32 image
    loud = BASE + ["-fluence", "1e66"]
    assert float(simulate(loud, wavelength=wl).detach().max()) > 3.4e38
    with pytest.raises(ConfigError, match=r"exceeds the float image's limit of 3.4e38"):
        simulate(loud, wavelength=torch.tensor([1.5], dtype=torch.float32, requires_grad=True))
    # an image of 3.5e307 whose N derivative (about 20 times that) overflows
    edge = BASE + ["-default_F", "3e18", "-fluence", "1e300"]
    n = torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64, requires_grad=True)
    img = simulate(edge, N=n)
    assert bool(torch.isfinite(img).all())
    msg = r"the derivative w.r.t. N= is not finite: it overflows double precision"
    with pytest.raises(ConfigError, match=msg):
        img.sum().backward()
    with pytest.raises(ConfigError, match=msg):
        jacobian(edge, N=[4.0, 4.0, 4.0])


def test_interop_refuses_tensors_that_require_grad():
    from nbnumba.interop import as_array
    t = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        as_array(t, "numpy")
    assert as_array(t.detach(), "numpy").sum() == 3.0


# ------------------------------------------------------------- Pilatus-style ROI
def test_pilatus_roi_central_differences(tmp_path):
    """The Pilatus-style command (benchmarks' W3, generated -mat/-hkl) on a
    21 x 21 ROI around pixel (685, 1039): analytic gradients of a weighted sum
    agree with Richardson central differences to 1e-6 relative."""
    from benchmarks import workloads as W
    mat, hkl = str(tmp_path / "a.mat"), str(tmp_path / "p.hkl")
    synth.write_mosflm_mat(mat, W.W3_CELL, W.W3_MISSET, W.W3_LAMBDA)
    synth.write_p1_hkl(hkl, W.W3_CELL, 2.0, 3)
    argv = [a.format(mat=mat, hkl=hkl) for a in W.W3] + "-roi 1029 1049 675 695".split()
    # the detector origin: a spot spans a few 0.172 mm pixels, so its 5th
    # derivative needs a short step (1e-3 mm gave 5e-6, 3e-4 mm 5e-10)
    i0 = argv.index("-pix0_vector_mm")
    vals = dict(misset=[0.0, 0.0, 0.0], wavelength=[W.W3_LAMBDA], N=[36.0, 47.0, 29.0],
                fluence=[1e18], detector_rot=[0.0, 0.0, 0.0], twotheta=[0.0],
                pix0=[float(x) for x in argv[i0 + 1:i0 + 4]])
    steps = dict(misset=1e-4, wavelength=1e-6, N=1e-4, fluence=1e13, detector_rot=1e-4,
                 twotheta=1e-4, pix0=2e-4)
    F0, _ = structure_factors(argv)
    img0 = simulate(argv, F_hkl=F0)
    assert int((img0[675:696, 1029:1050] > 0).sum()) == 441
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, img0.shape))
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in vals.items()}
    F = F0.clone().requires_grad_(True)
    loss = (w * simulate(argv, F_hkl=F, **ts)).sum()
    loss.backward()

    def L(F_hkl=F0, **over):
        kw = {k: torch.tensor(v, dtype=torch.float64) for k, v in vals.items()}
        kw.update(over)
        return float((w * simulate(argv, F_hkl=F_hkl, **kw)).sum())

    for name, v in vals.items():
        for i in range(len(v)):
            def at(t):
                x = torch.tensor(v, dtype=torch.float64)
                x[i] += t
                return L(**{name: x})
            h = steps[name]
            fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
            an = float(ts[name].grad[i])
            if name == "wavelength":
                # an A matrix carries the wavelength: h, k, l do not depend on
                # it, so both are ~0 on the scale L/lambda of a real dependence
                assert abs(an - fd) <= 1e-6 * float(loss.detach()) / v[0]
            else:
                assert abs(an - fd) <= 1e-6 * abs(an), (name, i, an, fd)
    vdir = torch.from_numpy(rng.standard_normal(F0.shape))
    fd = (L(F_hkl=F0 + 1e-3 * vdir) - L(F_hkl=F0 - 1e-3 * vdir)) / 2e-3
    an = float((F.grad * vdir).sum())
    assert abs(an - fd) <= 1e-6 * abs(an)


@pytest.mark.parametrize("extra", ["-polar 0.8",
                                   "-oversample 2 -oversample_polar -polar 0.8 -water 0.03 "
                                   "-dmin 30 -detector_thick 100 -detector_abs 50 -thicksteps 2"])
def test_gradcheck_weighted_sourcefile(tmp_path, extra):
    """-sourcefile's relative intensities 1, 3, 0.5 weigh each source's terms
    (docs/quirks.md #20): the adjoint weighs each source's derivatives as the
    forward weighs its value, the background's per-source polarization
    included (the second case takes the sensor copy of the kernels)."""
    src = tmp_path / "s.txt"
    src.write_text("-10 0.002 0 1 1.5e-10\n-10 0 0.003 3 1.52e-10\n-10 -0.001 0.002 0.5\n")
    argv = BASE + ["-sourcefile", str(src)] + extra.split()
    even = tmp_path / "even.txt"
    even.write_text("-10 0.002 0 1 1.5e-10\n-10 0 0.003 1 1.52e-10\n-10 -0.001 0.002 1\n")
    # (the weights matter here)
    a, b = simulate(argv), simulate(BASE + ["-sourcefile", str(even)] + extra.split())
    assert float((a - b).abs().max()) > 1e-3 * float(b.max())
    _gradcheck(argv, tuple(n for n in ALL if n != "wavelength"))


def test_round_crystal_at_node_centres_central_differences(tmp_path):
    """A round crystal whose sub-paths all sit within ~1e-8 of a node's centre
    (a wavelength of 1.5 m puts h, k, l near 0; found with a -sourcefile line
    that gave it, which is now refused as a wavelength written in Angstrom):
    the N and beam-centre gradients equal Richardson central differences to
    1e-6.  The C's closed-form sinc3 cancels there, so the image was rounding
    noise in N (an N gradient of 130.9 against differences of -5.0, found by
    tools/fuzz.py gradients); the default mode sums its series (test_sinc3.py)."""
    argv = BASE + ["-round_xtal", "-N", "3", "-lambda", "1.5e10"]
    vals = dict(N=[3.0, 3.0, 3.0], beam_center=[12.3, 12.9])
    w = torch.from_numpy(np.random.default_rng(3).normal(size=(12, 12)))
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in vals.items()}
    (w * simulate(argv, **ts)).sum().backward()
    for name, v in vals.items():
        for i in range(len(v)):
            def at(t):
                x = torch.tensor(v, dtype=torch.float64)
                x[i] += t
                with torch.no_grad():
                    return float((w * simulate(argv, **{name: x})).sum())
            h = 1e-4
            fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
            an = float(ts[name].grad[i])
            assert abs(an - fd) <= 1e-6 * abs(an), (name, i, an, fd)


def test_refine_example_recovers_misset_cell_distance(tmp_path):
    """examples/refine.py: +0.5 deg misset, 0.5 % cell, +1 mm distance are
    recovered to 0.01 deg, 0.01 % and 0.01 mm, and the loss plot is written."""
    import runpy
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "refine.py"
    mod = runpy.run_path(str(path))
    out = tmp_path / "loss.png"
    assert mod["main"](["--out", str(out), "--quiet"]) == 0
    # main() returns 0 only when all three tolerances are met
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- jacobian(): the per-pixel Jacobian ---------------------------------------
from nbnumba.autodiff import jacobian  # noqa: E402


@pytest.mark.parametrize("extra", ["", "-roi 2 9 3 10 " + EXTRA["mosaic_phi_sources_os"]])
def test_jacobian_contracts_to_the_backward(extra):
    """sum over pixels of g J equals simulate's backward for a random g (every
    keyword jacobian() covers, with and without an ROI): the pixel order of
    the scatter and the chain rule of the host map are the backward's."""
    argv = BASE + extra.split()
    vals = dict(VALUES, fluence=[FLU])
    image, J = jacobian(argv, **vals)
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in vals.items()}
    img = simulate(argv, **ts)
    assert np.array_equal(image, img.detach().numpy())
    g = np.random.default_rng(3).normal(size=image.shape)
    (img * torch.from_numpy(g)).sum().backward()
    for k in ALL:
        ref = ts[k].grad.numpy()
        got = np.einsum("sf,sfp->p", g, J[k])
        assert J[k].shape == image.shape + (len(vals[k]),)
        assert np.allclose(got, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max()), k
    if extra:
        outside = np.ones(image.shape, bool)
        outside[3:11, 2:10] = False
        assert all(not J[k][outside].any() for k in ALL)


def test_jacobian_pix0_contracts_to_the_backward():
    argv, p0 = _pix0_argv(BASE)
    vals = dict(pix0=p0, misset=VALUES["misset"])
    image, J = jacobian(argv, **vals)
    ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in vals.items()}
    g = np.random.default_rng(5).normal(size=image.shape)
    (simulate(argv, **ts) * torch.from_numpy(g)).sum().backward()
    for k in vals:
        ref = ts[k].grad.numpy()
        assert np.abs(ref).max() > 0.0
        assert np.allclose(np.einsum("sf,sfp->p", g, J[k]), ref, rtol=1e-10,
                           atol=1e-12 * np.abs(ref).max()), k


def test_jacobian_columns_match_central_differences():
    """Two columns against central differences of the image itself: distance
    (step 1e-3 mm) and Nb (step 1e-4), 6th-order-accurate stencils are not
    needed at these steps: agreement 1e-6 relative to the column's scale."""
    argv = BASE
    _, J = jacobian(argv, distance=[100.0], N=[4.0, 4.0, 4.0])
    for name, i, base, h in (("distance", 0, [100.0], 1e-3), ("N", 1, [4.0, 4.0, 4.0], 1e-4)):
        def at(t):
            v = list(base)
            v[i] += t
            return simulate(argv, **{name: torch.tensor(v, dtype=torch.float64)}).numpy()
        fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
        col = J[name][:, :, i]
        assert np.abs(col).max() > 0
        assert np.abs(col - fd).max() <= 1e-6 * np.abs(col).max(), name


def test_jacobian_gauss_newton_recovers_distance_and_beam_center():
    """Gauss-Newton with the per-pixel Jacobian: from distance 100.3 mm and
    beam centre (12.35, 12.85) mm (the truth: 100, (12.3, 12.9)) the steps
    converge quadratically; five land within 1e-9 mm (measured: 4 steps reach
    ~1e-14)."""
    argv = BASE
    truth = simulate(argv).numpy()
    x = np.array([100.3, 12.35, 12.85])
    for _ in range(5):
        img, J = jacobian(argv, distance=[x[0]], beam_center=x[1:])
        A_ = np.concatenate([J["distance"], J["beam_center"]], axis=-1).reshape(-1, 3)
        x = x - np.linalg.lstsq(A_, (img - truth).reshape(-1), rcond=None)[0]
    assert np.abs(x - [100.0, 12.3, 12.9]).max() < 1e-9


def test_jacobian_refusals():
    with pytest.raises(ConfigError, match="mosaic_spread="):      # no spread to differentiate
        jacobian(BASE + "-mosaic_dom 3".split(), mosaic_spread=[0.0])
    with pytest.raises(ConfigError, match="F_hkl"):
        jacobian(BASE, F_hkl=np.ones((2, 2, 2)))
    with pytest.raises(TypeError, match="unknown keyword"):
        jacobian(BASE, celll=[70.0] * 6)
    with pytest.raises(TypeError, match="at least one"):
        jacobian(BASE)
    with pytest.raises(ValueError, match="takes 3 values"):
        jacobian(BASE, misset=[1.0, 2.0])
    with pytest.raises(ConfigError, match="MiB"):
        jacobian(BASE + ["-detpixels", "3000"],
                 cell=VALUES["cell"], misset=VALUES["misset"], N=VALUES["N"])


def test_warmup_second_process_and_usage():
    """python -m nbnumba.autodiff --warmup-second (warmup()'s second process)
    compiles or loads its kernels and ends well also when its stdin ends
    without the pixel_grad line (the first process gone); any other
    argument list: a usage line and exit status 2."""
    import subprocess
    import sys
    from nbnumba.kernels.native import python_process
    p = python_process(["nbnumba.autodiff", "--warmup-second"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    r = subprocess.run([sys.executable, "-m", "nbnumba.autodiff", "--warmup", "--now"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "usage: python -m nbnumba.autodiff --warmup" in r.stderr
    # --help is help, on stdout, exit 0 (it was the usage error)
    r = subprocess.run([sys.executable, "-m", "nbnumba.autodiff", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (0, "") and r.stdout.startswith("usage: python -m "
                                                                      "nbnumba.autodiff --warmup")


def test_backward_reads_the_upstream_gradient_only_inside_the_roi():
    """img.sum()'s backward hands the kernels a stride-0 view of ones, which
    _Run._g64 copies over the -roi box only (not the whole frame): the
    gradients are those of a contiguous g that is 1 inside the ROI and NaN
    outside it, bit for bit, so neither path reads g outside the ROI.  The
    ROI is not square, so a box with rows and columns swapped would fail."""
    argv = BASE + "-roi 2 9 3 10 -mosaic 0.5 -mosaic_dom 2 -phi 0 -osc 0.4 -phisteps 2".split()
    vals = dict(VALUES, fluence=[FLU])
    grads = []
    for contiguous in (False, True):
        ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in vals.items()}
        img = simulate(argv, **ts)
        if contiguous:
            G = torch.full(img.shape, float("nan"), dtype=torch.float64)
            G[3:11, 2:10] = 1.0
            (img * G).sum().backward()
        else:
            img.sum().backward()
        grads.append({k: ts[k].grad.numpy().copy() for k in ALL})
    for k in ALL:
        assert np.all(np.isfinite(grads[1][k])), k
        assert np.array_equal(grads[0][k], grads[1][k]), k


def test_hkl_file_is_parsed_once_per_content(tmp_path, monkeypatch):
    """simulate() parses an -hkl file once while its bytes stay the same
    (autodiff._with_hkl_grid), and again as soon as they change, even within
    the same file-time step: a rewrite with every F doubled (same length,
    same size) quadruples the image at once (-default_F 0: every spot's F is
    the file's)."""
    from nbnumba import autodiff as AD
    from nbnumba.io import hkl as H
    path = tmp_path / "p.hkl"

    def write(F):
        path.write_text("".join("%d %d %d %.1f\n" % (h, k, l, F)
                                for h in range(-4, 5) for k in range(-4, 5) for l in range(-4, 5)))
    calls = []
    real = H.parse_hkl
    monkeypatch.setattr(H, "parse_hkl", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    argv = BASE + ["-hkl", str(path), "-default_F", "0"]
    write(100.0)
    img1 = simulate(argv, distance=torch.tensor([100.0], dtype=torch.float64)).numpy()
    img1b = simulate(argv, distance=torch.tensor([100.0], dtype=torch.float64)).numpy()
    assert len(calls) == 1 and np.array_equal(img1, img1b)
    write(200.0)
    img2 = simulate(argv, distance=torch.tensor([100.0], dtype=torch.float64)).numpy()
    assert len(calls) == 2
    assert img1.max() > 0 and np.allclose(img2, 4.0 * img1, rtol=1e-12, atol=0.0)
    # each run gets its own copy of the grid
    F, _ = AD.structure_factors(argv)
    F.mul_(0.0)
    assert np.array_equal(simulate(argv).numpy(), img2)


def test_roi_only_returns_the_box_with_the_same_values_and_gradients():
    """simulate(..., roi_only=True) is the -roi box of the full image (rows
    ymin..ymax, columns xmin..xmax), and a weighted sum over it has the
    gradients, bit for bit, of the same weights on the full image with zeros
    outside the box."""
    argv = BASE + "-roi 2 9 3 10 -mosaic 0.5 -mosaic_dom 2 -phi 0 -osc 0.4 -phisteps 2".split()
    vals = dict(VALUES, fluence=[FLU])
    w = torch.from_numpy(np.random.default_rng(5).uniform(size=(8, 8)))
    out = []
    for crop in (True, False):
        ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
              for k, v in vals.items()}
        img = simulate(argv, roi_only=crop, **ts)
        if crop:
            W = w
        else:
            W = torch.zeros(img.shape, dtype=torch.float64)
            W[3:11, 2:10] = w
        (W * img).sum().backward()
        out.append((img.detach(), {k: ts[k].grad.numpy().copy() for k in ALL}))
    (box, g_box), (full, g_full) = out
    assert box.shape == (8, 8) and full.shape == (12, 12)
    assert torch.equal(box, full[3:11, 2:10]) and float(box.min()) > 0.0
    for k in ALL:
        assert np.array_equal(g_box[k], g_full[k]), k


def test_jacobian_roi_only_is_the_box_of_the_full_jacobian():
    """jacobian(..., roi_only=True): the image and every keyword's Jacobian
    over the -roi box alone, equal to the box of the full-frame result."""
    argv = BASE + "-roi 2 9 3 10 -phi 0 -osc 0.4 -phisteps 2".split()
    vals = dict(cell=VALUES["cell"], distance=[100.0], N=[4.0, 4.0, 4.0])
    image, J = jacobian(argv, **vals)
    box_img, Jb = jacobian(argv, roi_only=True, **vals)
    assert box_img.shape == (8, 8) and np.array_equal(box_img, image[3:11, 2:10])
    for k in vals:
        assert Jb[k].shape == (8, 8, len(vals[k]))
        assert np.abs(Jb[k]).max() > 0.0
        assert np.array_equal(Jb[k], J[k][3:11, 2:10]), k


# ---- small passes on the calling thread; the host map's shortcuts -------------
def test_small_work_runs_on_one_thread_with_the_same_numbers(monkeypatch):
    """A pass under SMALL_WORK lattice evaluations runs on one thread (the
    numba thread count is restored after it), and its image and gradients
    are those of the threaded pass: the chunks are fixed, not per thread."""
    import numba
    from nbnumba import autodiff as AD
    argv = BASE + "-roi 2 6 3 7".split()
    vals = dict(cell=VALUES["cell"], distance=VALUES["distance"], N=VALUES["N"])
    seen = []
    real = numba.set_num_threads

    def spy(n):
        seen.append(n)
        real(n)
    monkeypatch.setattr(numba, "set_num_threads", spy)

    def run():
        ts = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in vals.items()}
        img = simulate(argv, **ts)
        (img * img).sum().backward()
        return img.detach().numpy(), {k: t.grad.numpy() for k, t in ts.items()}

    before = numba.get_num_threads()
    img1, g1 = run()
    assert seen and seen[0] == 1 and seen[-1] == before == numba.get_num_threads()
    monkeypatch.setattr(AD, "SMALL_WORK", 0)     # every pass threaded
    seen.clear()
    img2, g2 = run()
    assert seen == []
    assert img1.max() > 0.0 and np.array_equal(img1, img2)
    for k in vals:
        assert np.array_equal(g1[k], g2[k]), k


def test_host_map_builds_the_crystal_without_its_description():
    """build_crystal(describe=False): the same vectors, no cell description
    in the log; the wavelength column of the host map is exactly 0 with
    -cell (the cell does not move with it) and not with -mat."""
    from nbnumba import autodiff as AD
    from nbnumba import crystal as xtal
    from nbnumba.rng import RngState
    cfg = AD._parse(BASE)
    full = xtal.build_crystal(cfg, None, cfg.lambda0, RngState(), 1)
    bare = xtal.build_crystal(cfg, None, cfg.lambda0, RngState(), 1, describe=False)
    for f in ("a", "b", "c", "astar", "bstar", "cstar", "cell", "recip_cell", "V_cell"):
        assert getattr(full, f) == getattr(bare, f), f
    assert any(line.startswith("Unit Cell:") for line in full.log)
    assert not any(line.startswith("Unit Cell:") for line in bare.log)
    v = {"wavelength": np.array([1.5]), "cell": np.array(VALUES["cell"])}
    run = AD._Run(BASE, v, ("wavelength", "cell"), None)
    assert not run.host_jacobian("wavelength").any()
    assert run.host_jacobian("cell")[AD.A.P_A:AD.A.P_C + 3].any()


@pytest.mark.parametrize("conv,pivot", [("MOSFLM", "BEAM"), ("XDS", "SAMPLE"),
                                         ("CUSTOM", "SAMPLE"), ("ADXV", "BEAM")])
def test_host_map_builds_the_detector_without_its_trace(conv, pivot):
    """build_detector(trace=False), as the host map calls it: every field
    the same as with the -trace_pixel lines, and no lines."""
    import dataclasses
    from nbnumba import autodiff as AD
    from nbnumba.geometry import build_detector
    cfg = dataclasses.replace(AD._parse(BASE), beam_convention=conv, detector_pivot=pivot,
                              detector_twotheta=0.2, detector_rotx=0.03, detector_rotz=-0.02)
    full, bare = build_detector(cfg), build_detector(cfg, trace=False)
    assert len(full.trace) > 20 and bare.trace == []
    for f in dataclasses.fields(full):
        if f.name != "trace_items":
            assert getattr(full, f.name) == getattr(bare, f.name), f.name


def test_host_map_wavelength_moves_a_mat_cell(tmp_path):
    from nbnumba import autodiff as AD
    mat = tmp_path / "a.mat"
    synth.write_mosflm_mat(str(mat), (70.0, 80.0, 90.0, 90.0, 95.0, 90.0), (0.0, 0.0, 0.0), 1.5)
    argv = ["-mat", str(mat)] + [a for a in BASE[BASE.index("-lambda"):]]
    run = AD._Run(argv, {"wavelength": np.array([1.5])}, ("wavelength",), None)
    J = run.host_jacobian("wavelength")
    # a, b, c scale with lambda / 1.5 (the matrix is in MOSFLM units): da/dlambda = a / 1.5
    a = run._host_theta({"wavelength": np.array([1.5])}, "wavelength")[AD.A.P_A:AD.A.P_A + 3]
    np.testing.assert_allclose(J[AD.A.P_A:AD.A.P_A + 3, 0], a / 1.5, rtol=1e-9)


#: keyword values refused by simulate() and jacobian() alike (numpy's ValueError or
#: TypeError from inside the conversion before, not naming the keyword)
_NONSENSE = [
    (dict(distance="abc"), "^distance=: expected real numbers, got 'abc'$"),        # ValueError
    (dict(distance=100 + 1j), r"^distance=: expected real numbers, got \(100\+1j\)$"),  # TypeError
    (dict(distance=object()), "^distance=: expected real numbers, got <object"),    # TypeError
    (dict(distance=True), "^distance=: expected real numbers, got True$"),          # was 1 mm
    (dict(distance=[[1.0, 2.0], [3.0]]), "^distance=: expected numbers"),           # ValueError
    (dict(distance=[100.0], roi_only="no"), "^roi_only=: expected True or False, got 'no'$"),
]


@pytest.mark.parametrize("kw, msg", _NONSENSE + [
    (dict(distance=torch.tensor([100 + 0j])), "^distance=: expected real numbers, got a torch "
                                                "complex64 tensor$"),
])
def test_jacobian_keyword_values_are_config_errors_naming_the_keyword(kw, msg):
    from nbnumba.autodiff import jacobian
    with pytest.raises(ConfigError, match=msg):
        jacobian(BASE, **kw)


@pytest.mark.parametrize("kw, msg", _NONSENSE + [
    (dict(cell=[70.0, 80.0]), "^cell= takes 6 values"),                             # ValueError
    (dict(N=torch.tensor([4, 4, 4])), "^N= must be a float64 or float32 tensor"),  # TypeError
    # accepted before, with a float16 gradient returned
    (dict(distance=torch.tensor([100.0], dtype=torch.float16, requires_grad=True)),
     r"^distance= must be a float64 or float32 tensor \(got torch.float16\)$"),
    (dict(distance=torch.tensor([100.0], dtype=torch.bfloat16)),
     r"^distance= must be a float64 or float32 tensor \(got torch.bfloat16\)$"),
    # torch's own TypeError / NotImplementedError from reading the values before
    (dict(N=torch.tensor([4.0, 4, 4], dtype=torch.float64).to_sparse()),
     "^N=: expected a dense tensor with values, got a sparse_coo tensor$"),
    (dict(N=torch.empty(3, dtype=torch.float64, device="meta")),
     "^N=: expected a dense tensor with values, got a meta tensor$"),
])
def test_simulate_keyword_values_are_config_errors_naming_the_keyword(kw, msg):
    # numpy's ValueError/TypeError from inside the conversion before; the size and
    # dtype errors stay ValueError/TypeError too (ArgumentValueError, ArgumentTypeError)
    with pytest.raises(ConfigError, match=msg):
        simulate(BASE, **kw)


def test_F_hkl_as_numpy_or_list_keeps_its_grid_shape(hkl_file):
    # a numpy or list F_hkl was flattened by the keyword check and then refused
    # as "shape (36,)": only tensors were tested
    argv = BASE + ["-hkl", hkl_file]
    F, _ = structure_factors(argv)
    ref = simulate(argv, F_hkl=F)
    assert float(ref.sum()) > 0
    for v in (F.numpy(), F.numpy().tolist(), np.asfortranarray(F.numpy())):
        assert torch.equal(simulate(argv, F_hkl=v), ref)


def test_jacobian_keyword_none_means_not_given():
    # as in simulate(): distance=None was refused as a non-finite NaN
    from nbnumba.autodiff import jacobian
    img, J = jacobian(BASE, distance=None, N=VALUES["N"])
    ref_img, ref_J = jacobian(BASE, N=VALUES["N"])
    assert set(J) == {"N"} and np.array_equal(img, ref_img) and np.array_equal(J["N"], ref_J["N"])
    assert np.abs(J["N"]).max() > 0


def test_argv_as_an_iterator_and_plain_numbers_beside_float32_tensors():
    """An iterator argv was used up by the parse, so the twotheta= keyword forced the
    SAMPLE pivot that a list keeps off (-twotheta and -pivot beam in argv): a
    different image.  A plain number beside float32 tensors made the image float64,
    where the documented dtype is that of the keyword tensors."""
    argv = BASE + ["-beam_vector", "1", "0", "0", "-twotheta", "5", "-pivot", "beam"]
    ref = simulate(argv, twotheta=[5.0])
    assert torch.equal(simulate(iter(argv), twotheta=[5.0]), ref)
    other = simulate(argv + ["-pivot", "sample"], twotheta=[5.0])   # (what the iterator gave)
    assert float((other - ref).abs().max()) > 0.1 * float(ref.max())
    cell = torch.tensor(VALUES["cell"], dtype=torch.float32)
    assert simulate(BASE, cell=cell, distance=100.0).dtype == torch.float32
    assert simulate(BASE, cell=cell.double(), distance=100.0).dtype == torch.float64
    assert simulate(BASE, distance=100.0).dtype == torch.float64

def test_argv_given_as_one_string_is_refused():
    # its characters were taken for words: "unknown flag '-'"
    with pytest.raises(ConfigError, match=r"^argv: expected a list of arguments \(words\), got "
                                          r"str: split the command line"):
        structure_factors(" ".join(BASE))
    with pytest.raises(ConfigError, match="^argv: one word holds the whole command line"):
        simulate([" ".join(BASE)])


def test_gradcheck_curved_det_with_weighted_sourcefile(tmp_path):
    """-curved_det with a weighted -sourcefile whose first source has weight 0
    (left out) and another a weight of 1e-300 beside 3 and 0.5: gradcheck on
    a 6x6 detector for the detector rotations, the distance, the beam centre
    and the misset, and every gradient finite."""
    src = tmp_path / "s.txt"
    src.write_text("-10 0.002 0 0 1.5e-10\n-10 0 0.003 3 1.52e-10\n-10 -0.001 0.002 0.5\n"
                   "-10 0.001 0.001 1e-300 1.49e-10\n")
    argv = BASE + ["-detpixels", "6", "-pixel", "4", "-curved_det", "-sourcefile", str(src)]
    names = ("detector_rot", "distance", "beam_center", "misset")
    _gradcheck(argv, names, fast=False)
    ts = _tensors(names)
    simulate(argv, **dict(zip(names, ts))).sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) and bool(t.grad.abs().max() > 0) for t in ts)


def test_a_negated_view_keyword_is_read_with_its_values():
    """distance= given as a float64 view with the negative bit (the imaginary
    part of a conjugated complex tensor) is the distance torch shows (it
    stopped with torch's "Can't call numpy() on Tensor that has negative bit
    set"), and its gradient reaches the view's base with the view's sign."""
    z = torch.tensor([-100j], dtype=torch.complex128, requires_grad=True)
    d = z.conj().imag
    assert d.is_neg() and d.tolist() == [100.0]
    img = simulate(BASE, distance=d)
    ref = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
    want = simulate(BASE, distance=ref)
    assert torch.equal(img.detach(), want.detach())
    img.sum().backward()
    want.sum().backward()
    # d = imag(conj(z)) = -imag(z): dL/d imag(z) = -dL/dd
    assert float(z.grad.imag[0]) == -float(ref.grad[0]) != 0.0


def test_angle_keywords_differentiate_at_large_angles():
    """The host map differences the detector and crystal at each angle reduced
    modulo 360 (exact): a misset x of 10 + 360 x 1e10 degrees renders the image
    of 10 degrees, and its gradient is that of 10 degrees (it drifted by 16 %
    at 3.6e12 and was 0 from 3.6e13 on: the difference's 1e-3 degree step was
    lost in the angle's rounding)."""
    def grad(x):
        t = torch.tensor([x, 20.0, 30.0], dtype=torch.float64, requires_grad=True)
        simulate(BASE, misset=t).sum().backward()
        return t.grad
    g0, g1 = grad(10.0), grad(10.0 + 360.0 * 1e10)
    assert float(g0.abs().max()) > 0.0
    assert torch.allclose(g1, g0, rtol=1e-3, atol=0.0), (g0, g1)
