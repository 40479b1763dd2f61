"""The kernels against nbnumba.reference, an independent plain-Python model of
the default-mode physics, on tiny detectors (6x6 pixels, few steps).

Which kernel image is compared: the API's float image is float32 (as
floatimage.bin), which hides anything below ~6e-8.  The kernel's float64 pixel
value comes from ``kernels.cpu.trace_pixel`` (the same ``pixel_value`` body as
the image loop, run for one pixel with tracing on); it is compared with the
reference at 1e-12 relative.  The parallel image loop (``simulate``), which
takes a different branch for the common case, is compared too, at float32
rounding.

Tolerance: |kernel - reference| <= 1e-12 |reference| + 1e-14 max|reference|.
The second term covers pixels next to a zero of the grating function, where
the one-ulp difference between the two ways of forming h = a.S is amplified
(both are correct to ~1e-16 in h).

Tests marked "known defect" describe the correct physics that the kernel does
not implement yet (issue 11, section 2); docs/reference.md lists them.
"""
from dataclasses import replace

import numpy as np
import pytest

import nbnumba
from nbnumba.errors import ConfigError
from nbnumba import reference as ref
from nbnumba.io.hkl import HKLGrid
from nbnumba.testing.refcheck import compare

BASE = ("-cell 70 80 90 90 100 90 -lambda 1.5 -default_F 10 -distance 50 -pixel 0.5 "
        "-detpixels 6 -N 3 -nonoise -nopgm -seed 3 ")


def check(cfg):
    """Kernel (float64 and the float32 image) == reference; returns the reference
    (nbnumba.testing.refcheck.compare, which tools/fuzz.py reference runs too)."""
    r, why = compare(cfg)
    assert why is None, why
    return r


def cfg_of(extra, **over):
    cfg = nbnumba.parse_argv((BASE + extra).split())
    return replace(cfg, **over) if over else cfg


# ---- features on which kernel and reference agree today ---------------------
AGREE = {
    "square_misset_oversample": "-oversample 2 -misset 10 20 30",
    "round": "-oversample 1 -round_xtal -misset 5 0 0",
    "gauss": "-oversample 1 -gauss_xtal -fudge 2",
    "tophat": "-oversample 1 -tophat_spots -fudge 0.05 -N 5",
    "phi_mosaic": "-oversample 1 -N 2 -phi 5 -osc 3 -phisteps 3 -mosaic 2 -mosaic_dom 3",
    "phi0_default": "-oversample 1 -phi 0 -osc 2 -phisteps 2",
    "divergence_dispersion": "-oversample 1 -divergence 2 -divsteps 3 -dispersion 10 -dispsteps 3",
    "square_divergence": "-oversample 1 -hdivrange 2 -vdivrange 1 -hdivsteps 2 -vdivsteps 3 -square_div",
    "curved": "-oversample 2 -curved_det",
    # the default mode's sphere in any frame (nanoBragg.c's needs the beam on x)
    "curved_xds_twotheta": "-oversample 2 -curved_det -xds -twotheta 20 -detector_rotx 3",
    "curved_adxv_sensor": "-oversample 1 -curved_det -adxv -Xbeam 1 -detector_thick 100 "
                          "-detector_abs 50 -thicksteps 2 -water 1",
    "point_pixel_kahn": "-oversample 1 -point_pixel -polar 0.8",
    "nopolar": "-oversample 1 -nopolar",
    "water": "-oversample 2 -water 10",
    "water_layers": "-oversample 2 -water 10 -detector_thick 100 -detector_abs 50 -thicksteps 3",
    "xds_twotheta_rot": "-oversample 1 -xds -twotheta 20 -detector_rotx 3 -detector_roty 4 -detector_rotz 5",
    "adxv_rot": "-oversample 1 -adxv -detector_rotx 3 -detector_roty 4 -detector_rotz 5",
    "dials_twotheta": "-oversample 1 -dials -twotheta 10",
    "denzo_beam": "-oversample 1 -denzo -Xbeam 1 -Ybeam 2",
    "mosflm_sample_pivot": "-oversample 1 -twotheta 15 -pivot sample -Xbeam 1.2",
    "nonsquare_adxv": "-oversample 1 -detpixels_f 5 -detpixels_s 7 -adxv",
    "nonsquare_xds_sample_pivot": "-oversample 1 -detpixels_f 5 -detpixels_s 7 -xds -twotheta 5",
    "xds_orgx": "-oversample 1 -xds -ORGX 2.5 -ORGY 4 -close_distance 40",
    "custom_pix0": ("-oversample 1 -fdet_vector 0 0.2 1 -sdet_vector 0 -1 0.2 -odet_vector 1 0 0 "
                    "-beam_vector 1 0.05 0 -pix0_vector 0.05 0.0013 -0.0017 -spindle_axis 0 1 1"),
    "os_omega_polar": "-oversample 2 -oversample_omega -oversample_polar -polar 0.5 -divergence 2 -divsteps 2",
    "os_thick_one_layer": "-oversample 2 -oversample_thick -detector_thick 100 -detector_abs 50 -thicksteps 1",
    "dmin": "-oversample 2 -dmin 12",
    # -dmin cuts the Bragg term only: the background's polarization mean keeps the
    # cut sub-paths; the outer pixels are cut altogether (0, as without the switch)
    "dmin_water_os_polar": "-oversample 2 -dmin 40 -water 10 -oversample_polar -divergence 2 -divsteps 2",
    "flux": "-oversample 1 -flux 1e12 -beamsize 0.05 -exposure 2",
    "xtalsize_roi": "-xtalsize 0.0003 -roi 1 3 2 4",
    "auto_oversample": "-N 6",
    "misset_random": "-oversample 1 -misset random -misset_seed 5 -mosaic 3 -mosaic_dom 3",
    # every sub-path of the outer pixels cut by -dmin: nanoBragg's polarization
    # factor is never set there (0: no signal), but -nopolar starts it at 1 and the
    # background stays (tools/fuzz.py reference, seed 13; the reference gave 0)
    "dmin_water_nopolar": "-oversample 1 -water 10 -dmin 40 -nopolar",
    # (#24: pixels -dmin cuts whole keep their water with their first
    # sub-path's polarization; the partly cut take their first uncut one's)
    "dmin_water_polar": "-oversample 2 -water 10 -dmin 40 -polar 0.5",
    "dmin_water_polar_os1": "-oversample 1 -water 10 -dmin 40 -polar 0.5",
    "dmin_water_nopolar_os_polar": "-oversample 1 -water 10 -dmin 40 -nopolar -oversample_polar",
    # (#25: ranges an exact multiple of their step: 11 phi points, 10 x 10 x 10
    # cells, where nanoBragg.c's ceiling takes 12 and 10 x 10 x 11)
    "phi_exact_multiple": "-oversample 1 -N 2 -phi 5 -osc 1.1 -phistep 0.1",
    "xtalsize_exact_multiple": "-oversample 1 -cell 70 80 90 90 90 90 -sample_x 0.00007 "
                               "-sample_y 0.00008 -sample_z 0.00009",
    # the beam clips each edge by its extent across the beam (docs/quirks.md #30):
    # a beam along z (the crystal as mounted, whatever the phi sweep); a and b
    # at 45 degrees to a beam along x
    "beam_clip_xds_phi": "-oversample 1 -xds -misset 10 20 30 -sample_x 0.0007 -sample_y 0.0008 "
                         "-sample_z 0.0009 -beamsize 0.0004 -phi 10 -osc 40 -phisteps 2",
    "beam_clip_turned": "-oversample 1 -misset 0 0 45 -xtal_size 0.0006 -beamsize 0.0003",
    # the swung detector's distance (docs/quirks.md #31): a beam-pivot
    # -close_distance, and the automatic oversampling (6, the C's 8)
    "twotheta_close_beam_pivot": "-oversample 1 -twotheta 20 -close_distance 50 -misset 5 0 0",
    "twotheta_auto_oversample": "-twotheta 40",
    # the vertical divergence about the E-vector across the beam (#36)
    "vdiv_tilted_polar": "-oversample 1 -vdivrange 2 -vdivsteps 3 -polar_vector 1 0 1",
    # sensor layers sampled at their middles (#39), the beam spot in a corner
    # (steep rays), a thick sensor and a short distance
    "layers_at_their_middle": "-oversample 1 -detector_thick 2000 -detector_abs 800 -thicksteps 3 "
                              "-distance 20 -Xbeam 0 -Ybeam 0",
    # -oversample_omega: each layer's own plane (#42), with water and -oversample_thick
    "layers_own_plane_omega": "-oversample 2 -oversample_omega -oversample_thick -detector_thick 2000 "
                              "-detector_abs 800 -thicksteps 3 -distance 20 -water 1 -Xbeam 1",
    # the water cut to the beam's width (#37)
    "water_narrow_beam": "-oversample 1 -water 100 -beamsize 0.01 -default_F 0.01",
    # absorption off, then a thickness: no sensor (#40)
    "detector_abs_off_then_thick": "-oversample 1 -detector_abs 0 -detector_thick 100",
}


@pytest.mark.parametrize("name", sorted(AGREE))
def test_kernel_matches_reference(name):
    extra = AGREE[name]
    if name == "os_thick_one_layer":
        # one layer: the kernel's layer rule today gives 2 layers; the everything-given
        # form (thick, step, steps) is resolved identically by both
        cfg = cfg_of(extra, detector_thickstep=100e-6, detector_thicksteps=1)
    elif name == "water_layers":
        # several layers, each weighted by its own capture fraction (background
        # included); (thick, step, steps) all given, so the layer rule does not enter
        cfg = cfg_of(extra, detector_thickstep=100e-6 / 3)
    else:
        cfg = cfg_of(extra)
    check(cfg)


@pytest.mark.parametrize("extra", ["-oversample 1", "-oversample 2 -water 1 -oversample_polar -dmin 40",
                                   "-oversample 2 -water 0.01 -detector_thick 100 -detector_abs 50 "
                                   "-thicksteps 2 -oversample_thick"])
def test_sourcefile(tmp_path, extra):
    # two sources off the beam axis (one with its own wavelength) and one on it,
    # with relative intensities 1, 2 and (missing) 1, and one of intensity 0:
    # the default mode weighs each source's terms (docs/quirks.md #20)
    (tmp_path / "src.txt").write_text("-10 0.01 0 1 1.4e-10\n-10 0 -0.02 2\n# comment\n-10 0 0\n"
                                      "-10 0.02 0.01 0\n")
    r = check(cfg_of(extra + " -sourcefile src.txt", workdir=str(tmp_path)))
    # and the weights matter: the same sources counted once each differ (with
    # -dmin 40 the Bragg term is cut in most pixels: the background, weighted
    # by its sources' polarization, still differs, by ~3e-5)
    (tmp_path / "even.txt").write_text("-10 0.01 0 1 1.4e-10\n-10 0 -0.02 1\n-10 0 0\n-10 0.02 0.01 1\n")
    even = ref.image(cfg_of(extra + " -sourcefile even.txt", workdir=str(tmp_path)))
    assert np.abs(r - even).max() > 1e-5 * np.abs(even).max()


def test_mat_file(tmp_path):
    # a triclinic orientation given as a MOSFLM matrix (reciprocal vectors times
    # lambda, one lab component per row); no -cell, so the cell is the matrix's
    lam = 1.5
    recip = np.array([[0.0142, 0.0011, -0.0009], [0.0007, 0.0123, 0.0021], [-0.0013, 0.0017, 0.0109]])
    rows = (recip.T * lam).tolist()
    (tmp_path / "A.mat").write_text("\n".join(" %.10f %.10f %.10f" % tuple(r) for r in rows) + "\n")
    argv = BASE.replace("-cell 70 80 90 90 100 90 ", "") + "-oversample 1 -mat A.mat"
    cfg = replace(nbnumba.parse_argv(argv.split()), workdir=str(tmp_path))
    check(cfg)


def test_mat_file_with_cell(tmp_path):
    # -cell with -mat: nanoBragg makes the user's cell "take": the real axes keep
    # the matrix's directions and get the -cell edge lengths (tools/fuzz.py
    # reference, seed 1; the reference used the matrix alone: pixel (0, 4) kernel
    # 1.06296, reference 3.23869).  The default mode takes a -cell that scales
    # the matrix's cell (here by 1.02) and refuses another lattice (quirk 47)
    recip = np.array([[0.0142, 0.0011, -0.0009], [0.0007, 0.0123, 0.0021], [-0.0013, 0.0017, 0.0109]])
    (tmp_path / "A.mat").write_text("\n".join(" %.10f %.10f %.10f" % tuple(r) for r in
                                              (recip.T * 1.5).tolist()) + "\n")
    check(cfg_of("-oversample 1 -mat A.mat -cell 73.7437 87.3026 98.8824 109.648 77.5261 100.596",
                 workdir=str(tmp_path)))
    with pytest.raises(ConfigError, match="is not the cell of -mat A.mat"):
        check(cfg_of("-oversample 1 -mat A.mat", workdir=str(tmp_path)))


def test_nopolar_with_oversample_polar():
    """Found by tools/fuzz.py reference (seed 1): under -oversample_polar the C's
    "if (polar == 0.0 || oversample_polar)" computes the factor whatever -nopolar
    says, and the kernel followed it; pixel (0, 2): kernel 2.68617, reference
    2.68812.  The default mode now keeps -nopolar's 1 (docs/quirks.md #15)."""
    check(cfg_of("-oversample 1 -nopolar -oversample_polar -divergence 2 -divsteps 2"))


def _grid(lo, hi, seed):
    rng = np.random.default_rng(seed)
    n = hi - lo + 1
    F = rng.uniform(1.0, 50.0, size=(n + 1, n + 1, n + 1))
    return HKLGrid(lo, hi, lo, hi, lo, hi, F, hkls=n ** 3)


def test_structure_factors_nearest_and_default():
    # a table covering only part of the pattern: the rest takes default_F
    check(cfg_of("-oversample 2 -N 4 -misset 3 7 11", hkl_grid=_grid(-1, 1, 1), default_F=7.0))


def test_tricubic_interpolation_with_fallback():
    # N = 2 turns interpolation on; with a -3..3 table part of the sub-paths lie
    # outside the safe range and fall back to the nearest neighbour, each on its own
    cfg = cfg_of("-oversample 2 -N 2 -misset 3 7 11", hkl_grid=_grid(-3, 3, 2))
    r = check(cfg)
    # interpolation really was used: nearest-neighbour F gives another image
    r0 = ref.image(replace(cfg, interpolate=0))
    assert np.max(np.abs(r0 - r) / r) > 1e-3


def test_tricubic_interpolation_reaches_the_table_edge():
    """docs/quirks.md #34: both interpolate wherever the 4-point stencils fit,
    lo+1 <= h < hi-1 (nanoBragg.c: lo+2 <= h <= hi-2).  On a linear table,
    which tricubic interpolation reproduces exactly, the reference gives the
    linear F in the bands the C refuses and the nearest F past them; kernel
    and reference agree on a run whose sub-paths cross those bands.  The
    padding plane (index hi+1) holds 1e6, so a stencil reaching it shows."""
    lin = lambda h, k, l: 100.0 + 10.0 * h + 5.0 * k + 2.0 * l
    i = np.arange(-2, 4, dtype=float)          # -2..2 and the padding plane
    F = lin(i[:, None, None], i[None, :, None], i[None, None, :])
    F[-1, :, :] = F[:, -1, :] = F[:, :, -1] = 1e6
    cfg = cfg_of("-oversample 3 -N 1 -interpolate -misset 10 20 30",
                 hkl_grid=HKLGrid(-2, 2, -2, 2, -2, 2, F, hkls=125))
    sf = ref.StructureFactors(cfg)
    for hkl in [(-1.0, 0.5, 0.999), (0.99, -0.7, -1.0), (-0.5, 0.25, 0.75)]:
        assert sf(hkl, (0, 0, 0)) == pytest.approx(lin(*hkl), rel=1e-14), hkl
    for hkl, near in [((1.0, 0.0, 0.0), (1, 0, 0)), ((0.0, np.nextafter(-1.0, -2), 0.0), (0, -1, 0))]:
        assert sf(hkl, near) == lin(*near), hkl
    r = check(cfg)
    # the bands matter here: the C's rule (only h = k = l = 0 interpolates on
    # a -2..2 table) gives another image
    c_rule = lambda self, hkl: all(-2 + 2 <= x <= 2 - 2 for x in hkl)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref.StructureFactors, "stencil_fits", c_rule)
        assert np.max(np.abs(ref.image(cfg) - r) / r) > 1e-3


def test_mask_skips_pixels():
    mask = np.ones((6, 6), dtype=np.uint16)
    mask[2, 3] = mask[0, 0] = 0
    r = check(cfg_of("-oversample 1", mask_image=mask, maskfilename="m.img"))
    assert r[2, 3] == 0.0 and r[0, 0] == 0.0 and r[1, 1] > 0.0


# ---- known defects (issue 11 section 2): correct physics, kernel to be fixed ---
def layers_cfg(extra=""):
    return cfg_of("-oversample 1 -detector_thick 100 -detector_abs 50 " + extra)


def test_sensor_layers_tile_the_sensor():
    """Known defect 2: N layers of thick/N (C: thick/(N-1))."""
    check(layers_cfg("-thicksteps 3"))


def test_single_sensor_layer_stays_single():
    """Known defect 2: one layer of the full thickness (C: 1 becomes 2)."""
    check(layers_cfg("-thicksteps 1"))


def test_water_background_gets_solid_angle_and_polarization_one_subpixel():
    """Known defect 1: with -oversample_omega/-oversample_polar the background
    must still be multiplied by the solid angle and the polarization.  One
    sub-pixel and one source: every reading of "per sub-path" agrees."""
    r = check(cfg_of("-oversample 1 -water 10 -oversample_omega -oversample_polar -polar 0.3"))
    # and it equals the image without the switches (same single sub-path)
    np.testing.assert_allclose(r, ref.image(cfg_of("-oversample 1 -water 10 -polar 0.3")), rtol=1e-14)


def test_water_background_oversampled_factors():
    """Known defect 1: with -oversample 2 and the switches, the background is
    weighted by the mean over sub-pixels (and sources) of its factors."""
    check(cfg_of("-oversample 2 -water 10 -oversample_omega -oversample_polar -divergence 2 -divsteps 2"))


def test_water_background_oversample_thick():
    """Known defect 1 (-oversample_thick part): the background's capture fraction
    is the mean over the layer's sub-pixels, not the first sub-pixel's."""
    cfg = cfg_of("-oversample 2 -water 10 -oversample_thick -detector_thick 100 -detector_abs 50 "
                 "-thicksteps 3")
    # everything given explicitly, so the layer rule (defect 2) does not enter
    check(replace(cfg, detector_thickstep=100e-6 / 3))


def test_water_background_scales_once_with_fluence():
    """New finding: nanoBragg.c's I_bg holds r_e^2 * fluence and is multiplied by
    r_e^2 * fluence again (fluence^2 background; equal at the default fluence)."""
    check(cfg_of("-oversample 1 -water 10 -fluence 1e24"))


def test_triclinic_cell():
    """New finding: the default orientation of a triclinic cell has
    c*_z = sin(gamma)/(c sin(gamma*)) instead of 1/c in nanoBragg.c (kept under
    -c_parity, docs/quirks.md #13), so -cell 70 80 90 85 95 100 is built as
    70 80 90 84.9945 95.0055 100.001 (the summary's "Unit Cell" line)."""
    check(cfg_of("-oversample 1 -cell 70 80 90 85 95 100"))


@pytest.mark.parametrize("extra", ["-lambda 1e107", "-lambda 1e109", "-distance 1e60 -pixel 1e-50",
                                   "-lambda 1e40 -precision single"])
def test_forward_scattering_where_the_indices_underflow(extra):
    """Every index of every cell below ~1e-100: the reduced factor's three
    sines multiplied underflowed (-lambda 1e107: 4e-4 off the reference at the
    direct beam; 1e109: NaN, and the run refused), and float32 sines went
    subnormal (-precision single from -lambda 1e40).  The default mode takes
    |S| < physics.S_FORWARD as forward scattering, where the factor is N."""
    cfg = nbnumba.parse_argv(("-cell 70 80 90 90 95 90 -detpixels 6 -pixel 0.5 -distance 50 "
                              "-N 5 -default_F 100 -oversample 1 -nonoise -nopgm " + extra).split())
    if cfg.precision == "single":
        r = ref.image(cfg)
        k = nbnumba.simulate(cfg).float_image
        assert r.max() > 0.0 and np.abs(k - r).max() <= 1e-6 * r.max()
    else:
        r, why = compare(cfg)
        assert why is None, why


def test_grating_is_N_where_the_phase_is_subnormal():
    """sin(N pi d) / sin(pi d) -> N as d -> 0.  At a subnormal d the two sines
    keep only a few bits, and their quotient wandered: d = 2.6e-322 (a sub-path
    on the beam, with sources 1e-323 rad apart: -divergence 1e-320) gave
    4.98802 for N = 5, the kernel's own value.  The reference takes the
    series there; above 1e-8 / N the closed form is unchanged."""
    for d in (2.61854792295861e-322, 5e-324, -3.1e-310, 1e-200, 1e-12):
        for N in (2, 5, 37):
            assert ref.grating(d, N) == N
    # near an integer h, with the sign of n (N - 1): (-1)^(3 * 4) at h = 3
    assert ref.grating(3.0 + 2.0 ** -40, 5) == pytest.approx(5.0, rel=1e-15)
    assert ref.grating(1.0 + 2.0 ** -40, 4) == pytest.approx(-4.0, rel=1e-15)
    # the series and the closed form meet at |N d| = 1e-8 to an ulp or two
    for N in (3, 5, 11):
        below, above = 1e-8 / N * (1 - 1e-12), 1e-8 / N * (1 + 1e-12)
        closed = [np.sin(N * np.pi * d) / np.sin(np.pi * d) for d in (below, above)]
        assert abs(ref.grating(below, N) - closed[0]) <= 4e-16 * N
        assert ref.grating(above, N) == closed[1]
    # a whole pixel: two sources 1e-323 rad apart put one of pixel (17, 17)'s
    # nine sub-paths on the beam, k = 2.6e-322; turned by any rotation, the
    # same experiment has k ~ 1e-17 and the reference gave 1020.4767 there
    cfg = nbnumba.parse_argv(
        "-cell 70 80 90 90 95 90 -lambda 1.5 -distance 100 -detpixels 33 "
        "-pixel 0.30303030303030304 -N 5 -default_F 100 -nonoise -nopgm -oversample 3 "
        "-hdivrange 0.2 -hdivstep 0.1 -divergence 1e-320".split())
    assert ref.pixel_value(17, 17, ref.setup(cfg)) == pytest.approx(1020.4767128360309,
                                                                     rel=1e-12)


def test_twotheta_axis_is_a_direction():
    """-twotheta_axis names the axis the detector turns about; its length is no
    part of it.  nanoBragg.c rotates by Rodrigues' formula with the vector as
    given, so -twotheta_axis 0 2 0 at -twotheta 10 makes a detector whose slow
    axis is 1.0456 long and whose fast axis leans 19.4 degrees, not 10; the
    reference turns it about the unit axis, the same detector as 0 1 0, as the
    kernel's geometry does since docs/quirks.md #23 (found by tools/fuzz.py
    metamorphic, 'vectors', seeds 51 to 53)."""
    line = ("-oversample 1 -twotheta 10 -detpixels 8 -pixel 1.25 -distance 100 -N 5 "
            "-twotheta_axis %s")
    unit = ref.setup(cfg_of(line % "0 1 0"))
    for axis in ("0 2 0", "0 0.001 0", "0 90 0"):
        st = ref.setup(cfg_of(line % axis))
        for k in ("fdet", "sdet", "odet", "pix0"):
            assert np.allclose(st["det"][k], unit["det"][k], rtol=0.0, atol=1e-15), (axis, k)
        for s, f in ((0, 0), (3, 5), (7, 7)):
            assert ref.pixel_value(s, f, st) == pytest.approx(ref.pixel_value(s, f, unit),
                                                              rel=1e-13)


def test_pixel_arguments_are_checked():
    """reference.image(pixels=) and trace.trace_lines with pixels that are not on
    the detector or not whole numbers (an ad-hoc scan): the last row or column
    plus one, (8, 0) of an 8x8 detector, was an IndexError; 1.5 an IndexError;
    a bare number a TypeError; True an array's truth value in trace_lines."""
    from nbnumba.errors import ConfigError
    from nbnumba.model import build_model
    from nbnumba.trace import trace_lines
    cfg = cfg_of("-detpixels 8 -oversample 1")
    for px, msg in [([(8, 0)], r"^pixels: \(8, 0\) is not a pixel .* of the 8x8 detector$"),
                    ([(0, 8)], r"^pixels: \(0, 8\) is not a pixel"),
                    ([(-1, 0)], r"^pixels: \(-1, 0\) is not a pixel"),
                    ([(1.5, 2)], r"^pixels: \(1.5, 2\) is not a pixel"),
                    ([(0,)], r"^pixels: expected \(slow, fast\) pairs, got \(0,\)$"),
                    (5, "^pixels: expected .* got int$")]:
        with pytest.raises(ConfigError, match=msg):
            ref.image(cfg, pixels=px)
    one = ref.image(cfg, pixels=np.array([[7, 7]]))
    assert np.count_nonzero(one) == 1 and one[7, 7] == ref.image(cfg)[7, 7] > 0
    m = build_model(cfg)
    for s, f in [(1.5, 2), (None, 1), (True, 1), (np.ones(2), 1)]:
        with pytest.raises(ConfigError, match="^trace_lines: spixel must be a whole number"):
            trace_lines(m, s, f)
    assert trace_lines(m, np.int64(3), np.int32(2)) == trace_lines(m, 3, 2)
