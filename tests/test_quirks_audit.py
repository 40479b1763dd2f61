"""docs/quirks.md #31 to #41 (but #34 and #39, in tests/test_quirks.py), found
by the C audits of stop 48: what nanoBragg.c reports of the detector's
geometry (distance, beam centre, DIALS origin), its rms, the vertical
divergence's axis, the water the beam crosses, the sensor's absorption flags
and the mosaic domains.  Each test holds the default mode to the physics (or
the geometry the image is rendered with), and -c_parity to the C's numbers
(measured with $NB_C_BIN where quoted)."""
import math

import numpy as np
import pytest

import nbnumba
from nbnumba.geometry import build_detector
from nbnumba.model import build_model
from nbnumba.outputs import smv_fields
from nbnumba.quirks import c_differences

BASE = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "5",
        "-distance", "100", "-detpixels", "64", "-pixel", "0.5", "-nonoise", "-nopgm"]


def det_of(extra, c_parity=False):
    return build_detector(nbnumba.parse_argv(BASE + list(extra) + (["-c_parity"] if c_parity else [])))


def beam_spot(d):
    """(distance along the beam, Fbeam, Sbeam) in mm where the beam meets the
    detector's plane, from its final pix0 and axes."""
    n, p0, b = (np.array(v, dtype=float) for v in (d.odet, d.pix0, d.beam))
    t = float(p0 @ n) / float(b @ n)
    hit = t * b - p0
    return t * 1e3, float(hit @ np.array(d.fdet)) * 1e3, float(hit @ np.array(d.sdet)) * 1e3


@pytest.mark.parametrize("extra", [["-twotheta", "20"], ["-xds", "-twotheta", "20"],
                                   ["-twotheta", "20", "-detector_rotx", "5"],
                                   ["-close_distance", "100", "-twotheta", "20"]])
def test_twotheta_reports_the_swung_detectors_beam_spot(extra):
    """#31: nanoBragg.c finds the beam spot and the distance with the beam/normal
    ratio taken before -twotheta swings the detector.  With the beam pivot the
    spot stays at 16.5, 16.5 mm and 100 mm along the beam, but the C reports
    Sbeam 18.5626 mm and DISTANCE 93.9693 (its header, $NB_C_BIN).  The default
    mode reports the point where the beam meets the final plane."""
    d, c = det_of(extra), det_of(extra, c_parity=True)
    truth = beam_spot(d)
    assert (d.distance * 1e3, d.Fbeam * 1e3, d.Sbeam * 1e3) == pytest.approx(truth, abs=1e-9)
    assert beam_spot(c) != pytest.approx((c.distance * 1e3, c.Fbeam * 1e3, c.Sbeam * 1e3), abs=1e-3)
    if extra == ["-twotheta", "20"]:
        assert "%g %g" % (c.distance * 1e3, c.Sbeam * 1e3) == "93.9693 18.5626"
        assert "%g %g %g" % truth == "100 16.5 16.5"
        # and the SMV header says so
        r = nbnumba.simulate_argv(BASE + extra + ["-detpixels", "8"])
        hdr = dict(smv_fields(r))
        assert (hdr["DISTANCE"], hdr["MOSFLM_CENTER_X"]) == ("100", "2.25")


def test_a_close_distance_with_the_beam_pivot_is_the_swung_detectors():
    """#31: -close_distance 100 -twotheta 20 (beam pivot) gave a detector 93.97 mm
    from the sample in the C; the default mode places it at 100 mm, as
    -detector_roty 20 does in both modes, and the image moves; the note names
    #31.  Under the sample pivot (-xds) the given close distance held already."""
    line = ["-close_distance", "100", "-twotheta", "20"]
    assert det_of(line).close_distance == pytest.approx(0.1, rel=1e-15)
    assert det_of(line, c_parity=True).close_distance == pytest.approx(0.1 * math.cos(math.radians(20)))
    assert det_of(["-close_distance", "100", "-detector_roty", "20"], True).close_distance == \
        pytest.approx(0.1, rel=1e-15)
    assert det_of(["-xds"] + line, True).close_distance == pytest.approx(0.1, rel=1e-15)
    small = ["-detpixels", "16", "-pixel", "2", "-oversample", "1"]
    got, c = (nbnumba.simulate_argv(BASE + line + small + m) for m in ([], ["-c_parity"]))
    assert not np.allclose(got.float_image, c.float_image)
    assert 31 in [n for n, _ in c_differences(got.model)]
    # a -twotheta with a given -oversample and -distance: the image is the C's
    same = BASE + ["-twotheta", "20"] + small
    assert np.array_equal(nbnumba.simulate_argv(same).float_image,
                          nbnumba.simulate_argv(same + ["-c_parity"]).float_image)
    assert 31 not in [n for n, _ in c_differences(nbnumba.simulate_argv(same).model)]


@pytest.mark.parametrize("extra,want", [
    (["-xds", "-Xbeam", "10", "-Ybeam", "12"], (16.0, 16.0)),       # not used under XDS
    (["-pix0_vector", "0.1", "0.010", "-0.012"], (12.0, 10.0)),     # CUSTOM: F, S
    (["-twotheta", "20", "-xds"], (16.0, 52.397)),
    (["-mosflm", "-Xbeam", "10", "-Ybeam", "12"], (10.0, 12.0)),    # as given
    (["-adxv"], (16.25, 15.75)),
])
def test_header_beam_centre_is_the_rendered_one(extra, want):
    """#32: nanoBragg.c's BEAM_CENTER_X/Y repeat the -Xbeam/-Ybeam it was given
    (or their defaults), which -xds/-dials do not use, and which a -pix0_vector
    (honoured by the default mode) or a two-theta swing moves.  The default mode
    writes the flags that put the beam where the image has it, in the run's
    convention; -c_parity the C's.  -Xbeam/-Ybeam under -xds draw a warning."""
    d, c = det_of(extra), det_of(extra, c_parity=True)
    assert (d.Xbeam * 1e3, d.Ybeam * 1e3) == pytest.approx(want, abs=1e-3)
    if extra[0] in ("-xds", "-pix0_vector"):
        assert (c.Xbeam * 1e3, c.Ybeam * 1e3) != pytest.approx(want, abs=1e-3)
    # the same convention given these flags renders the same detector
    conv = [x for x in extra if x in ("-xds", "-mosflm", "-adxv")] or ["-custom"]
    if conv != ["-custom"] and "-twotheta" not in extra:
        again = det_of(conv + ["-Xbeam", "%r" % (d.Xbeam * 1e3), "-Ybeam", "%r" % (d.Ybeam * 1e3)])
        if conv != ["-xds"]:
            assert np.allclose(again.pix0, d.pix0, atol=1e-12)
    warned = [l for l in d.log if "-Xbeam/-Ybeam are not used under -xds" in l]
    assert bool(warned) == (extra[:2] == ["-xds", "-Xbeam"])


@pytest.mark.parametrize("conv,want", [("-mosflm", (-16.5, 16.5, -100.0)), ("-xds", (-16.0, 16.0, -100.0)),
                                       ("-dials", (-16.0, -16.0, -100.0)),
                                       ("-adxv", (-16.25, -16.25, -100.0))])
def test_dials_origin_in_the_dials_frame_of_every_convention(conv, want):
    """#33: nanoBragg.c writes DIALS_ORIGIN as (z, y, -x) of pix0, MOSFLM's map
    (beam along x): under -xds (beam along z) that is (100, -16, 16) mm, the
    corner 100 mm to the side of the beam.  The default mode maps pix0 into the
    DIALS frame of the run's beam and polarization axis (z against the beam,
    x along the E-vector): the detector 100 mm down the beam, at z = -100, in
    every convention; MOSFLM's is the C's, bit for bit."""
    d, c = det_of([conv]), det_of([conv], c_parity=True)
    assert d.dials_origin == pytest.approx(want, abs=1e-9)
    if conv == "-mosflm":
        assert d.dials_origin == c.dials_origin
    else:
        assert c.dials_origin[0] == pytest.approx(100.0)     # the C's: along the old x


def test_rms_is_over_the_pixels_not_one_fewer():
    """#35: nanoBragg.c prints rms = sqrt(sum of squares / (n - 1)), more than a
    root mean square: over -roi 3 4 5 5 (2 pixels) it exceeds max_I.  The
    default mode divides by n; -c_parity keeps n - 1.  rms is printout only: no
    note."""
    line = BASE + ["-roi", "3", "4", "5", "5"]
    got, c = nbnumba.simulate_argv(line), nbnumba.simulate_argv(line + ["-c_parity"])
    v = got.float_image.astype(np.float64)[5, 3:5]
    assert np.array_equal(got.float_image, c.float_image) and v.min() > 0
    assert got.stats["rms"] == pytest.approx(math.sqrt(np.mean(v * v)), rel=1e-7)   # (float32 file)
    assert c.stats["rms"] == pytest.approx(math.sqrt(np.sum(v * v)), rel=1e-7)
    assert got.stats["rms"] <= got.stats["max_I"] < c.stats["rms"]
    assert 35 not in [n for n, _ in c_differences(got.model)]


def test_vertical_divergence_turns_about_the_e_vector_across_the_beam():
    """#36: nanoBragg.c makes -polar_vector a unit vector, not one across the
    beam, and turns the beam about it for the vertical divergence: with
    -polar_vector 1 0 1 (45 degrees from the beam) a 2 mrad sweep spans
    2 x 0.707 mrad.  The default mode turns about the E-vector across the
    beam: the sweep of -polar_vector 0 0 1, bit for bit (its 3 points at the
    cells' middles, +-2/3 mrad, #44), and the note names #36;
    the Kahn factor, which takes the E-vector across each ray, is unchanged."""
    line = ["-vdivrange", "2", "-vdivsteps", "3", "-oversample", "1"]

    def tilt(m):
        inc = np.asarray(m.sources.incident, dtype=float)[:, :3]
        return [math.degrees(math.acos(min(1.0, abs(float(x @ np.array(m.det.beam)))))) for x in inc]

    tilted = ["-polar_vector", "1", "0", "1"]
    d = build_model(nbnumba.parse_argv(BASE + line + tilted))
    c = build_model(nbnumba.parse_argv(BASE + line + tilted + ["-c_parity"]))
    flat = build_model(nbnumba.parse_argv(BASE + line + ["-polar_vector", "0", "0", "1"]))
    assert tilt(d) == pytest.approx([math.degrees(2e-3 / 3), 0.0, math.degrees(2e-3 / 3)], rel=1e-9)
    assert tilt(c)[0] == pytest.approx(math.degrees(1e-3) / math.sqrt(2), rel=1e-6)
    assert np.array_equal(np.asarray(d.sources.incident), np.asarray(flat.sources.incident))
    assert [n for n, _ in c_differences(d)] == [36, 44]
    assert [n for n, _ in c_differences(flat)] == [44]


def test_the_water_is_cut_to_the_beams_width():
    """#37: nanoBragg.c counts a cube of side -water whatever the beam, so at
    a fixed flux a narrower beam (a higher fluence) lights more water: a 10 um
    beam through 100 um of water gave 100 times the background of a 100 um
    beam, on top of #14's fluence^2 (-c_parity, as the C: 5.57e-3 against
    5.57e-7 photons at pixel (8, 8) of this run).  The default mode cuts the cube across the
    beam to its width, as it cuts the crystal (#30): the same background for
    every beam narrower than the water, and the note names #37."""
    line = ["-default_F", "1e-30", "-lambda", "1", "-detpixels", "16", "-pixel", "0.2",
            "-water", "100", "-nopolar", "-flux", "1e12", "-exposure", "1", "-oversample", "1"]

    def run(b, c_parity=False):
        r = nbnumba.simulate_argv(BASE + line + ["-beamsize", b] + (["-c_parity"] if c_parity else []))
        return float(r.float_image[8, 8]), r

    wide, r_wide = run("0.1")                 # the beam as wide as the water: the C's cube
    narrow, r_narrow = run("0.01")
    huge, _ = run("1")
    assert narrow == pytest.approx(wide, rel=1e-6)
    assert huge == pytest.approx(wide / 100.0, rel=1e-6)        # the cube inside a 1 mm beam
    assert 37 in [n for n, _ in c_differences(r_narrow.model)]
    assert 37 not in [n for n, _ in c_differences(r_wide.model)]
    assert any("crosses 0.1 mm of water" in l for l in r_narrow.model.log)
    c_wide, c_narrow = run("0.1", True)[0], run("0.01", True)[0]
    assert c_narrow == pytest.approx(1e4 * c_wide, rel=1e-6)     # 100 (the cube) x 100 (#14)


def test_detector_abs_off_and_a_thickness_commute():
    """#40: -detector_abs 0 (or inf) turns absorption off and sets the thickness
    to 0 where it stands, so nanoBragg.c gives `-detector_abs 0 -detector_thick
    100` a sensor that captures nothing: a blank image (sum 0, exit 0, no
    warning), and the other order the image without a sensor.  The default mode
    makes the flags commute, with a warning, and the note names #40."""
    line = ["-detpixels", "16", "-pixel", "2", "-oversample", "1"]
    a, b = ["-detector_abs", "0", "-detector_thick", "100"], ["-detector_thick", "100", "-detector_abs", "inf"]
    plain = nbnumba.simulate_argv(BASE + line).float_image
    assert plain.sum() > 0
    for order in (a, b):
        r = nbnumba.simulate_argv(BASE + line + order)
        assert np.array_equal(r.float_image, plain)
    r = nbnumba.simulate_argv(BASE + line + a)
    assert any("turns the sensor's absorption off" in l for l in r.model.log)
    assert 40 in [n for n, _ in c_differences(r.model)]
    assert nbnumba.simulate_argv(BASE + line + a + ["-c_parity"]).float_image.sum() == 0.0
    assert np.array_equal(nbnumba.simulate_argv(BASE + line + b + ["-c_parity"]).float_image,
                          nbnumba.simulate_argv(BASE + line + ["-c_parity"]).float_image)


def test_flux_without_an_exposure_is_refused(tmp_path, capsys, monkeypatch):
    """-flux with -exposure 0: nanoBragg.c drops the flux without a word and
    renders at the default fluence; nbnumba refuses it in one line, in both
    modes (docs/quirks.md, "Where nbnumba refuses")."""
    from nbnumba import cli
    from nbnumba.errors import ConfigError
    line = BASE + ["-flux", "1e12", "-exposure", "0", "-detpixels", "8"]
    with pytest.raises(ConfigError, match="-flux needs an -exposure > 0"):
        nbnumba.simulate_argv(line)
    with pytest.raises(ConfigError, match="-flux needs an -exposure > 0"):
        nbnumba.simulate_argv(line + ["-c_parity"])
    monkeypatch.chdir(tmp_path)
    assert cli.main(line) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-exposure" in err


def test_mosaic_rotation_vectors_are_uniform_in_the_ball():
    """#38: nanoBragg.c turns each domain by spread (1 - r3^2)^(1/3), r3 uniform
    on [-1, 1]: P(angle <= t spread) = 1 - sqrt(1 - t^3), a median of 0.9086
    spread and half the domains beyond 0.9 spread (a flat-topped rocking
    curve).  The default mode takes spread |r3|^(1/3), rotation vectors
    uniform in the ball (P = t^3, median 2^(-1/3) = 0.7937), from the same
    three deviates: the same axes, bit for bit."""
    from nbnumba import crystal, rng
    n, spread = 20000, math.radians(0.5)

    def draws(c_rules):
        U = crystal.mosaic_umats(spread, n, rng.RngState(), 1234, c_rules=c_rules).reshape(n, 3, 3)
        sv = 0.5 * np.stack([U[:, 2, 1] - U[:, 1, 2], U[:, 0, 2] - U[:, 2, 0], U[:, 1, 0] - U[:, 0, 1]], 1)
        s = np.linalg.norm(sv, axis=1)
        angle = np.arctan2(s, 0.5 * (np.trace(U, axis1=1, axis2=2) - 1.0)) / spread
        return angle, sv / np.where(s > 0.0, s, 1.0)[:, None]

    t, axis = draws(False)
    tc, axis_c = draws(True)
    t, tc = t[1:], tc[1:]       # (-c_parity's first domain is the identity, #29)
    assert np.abs(axis[1:] - axis_c[1:]).max() < 1e-12
    se = 0.5 / math.sqrt(n)       # the sample median's spread in probability
    for x, cdf in ((t, lambda q: q ** 3), (tc, lambda q: 1.0 - np.sqrt(1.0 - q ** 3))):
        for q in (0.5, 0.8, 0.95):
            assert abs(np.mean(x <= q) - cdf(q)) < 5 * se
    assert abs(np.median(t) - 2 ** (-1 / 3)) < 0.01 and abs(np.median(tc) - 0.9086) < 0.01
    assert t.max() <= 1.0 and tc.max() <= 1.0 + 1e-6


def test_mosaic_blocks_turn_with_the_crystal():
    """#41: nanoBragg.c turns the crystal about the spindle and then misorients
    it by each domain's U_m in the lab frame (U_m Phi a), so a block's
    orientation within the crystal, Phi^T U_m Phi, changes with phi: the
    frames of a series show different crystals.  The default mode turns the
    blocks with the crystal (Phi U_m a); at phi = 0 the two agree, bit for bit,
    and the note names #41 only where a phi point is not 0."""
    from nbnumba.crystal import _rotate_axis_all
    line = BASE + ["-misset", "10", "20", "30", "-mosaic", "0.5", "-mosaic_dom", "4", "-detpixels", "8"]
    for phi, moved in (("0", False), ("30", True)):
        d = build_model(nbnumba.parse_argv(line + ["-phi", phi]))
        c = build_model(nbnumba.parse_argv(line + ["-phi", phi, "-c_parity"]))
        U = d.umats.reshape(-1, 3, 3)
        a0 = np.array((d.crystal.a, d.crystal.b, d.crystal.c))
        blocks = np.einsum("mxy,jy->mjx", U, a0)
        want = _rotate_axis_all(blocks, d.det.spindle, math.radians(float(phi))) if moved else blocks
        np.testing.assert_allclose(d.cells[0, 0], want, rtol=0, atol=1e-15 * np.abs(a0).max())
        assert (41 in [n for n, _ in c_differences(d)]) == moved
        if moved:       # the C's: the turn first (its other domains are drawn alike but for #38)
            Uc = c.umats.reshape(-1, 3, 3)
            turned = _rotate_axis_all(a0, c.det.spindle, math.radians(30.0))
            np.testing.assert_allclose(c.cells[0, 0], np.einsum("mxy,jy->mjx", Uc, turned),
                                       rtol=0, atol=1e-15 * np.abs(a0).max())
