"""docs/quirks.md #31, #32, #33, #35 and #36: what nanoBragg.c reports of the
detector's geometry (distance, beam centre, DIALS origin), its rms, and the
vertical divergence's axis.  Each test holds the default mode to the geometry
the image is rendered with, and -c_parity to the C's numbers (measured with
$NB_C_BIN where quoted)."""
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
    beam: the sweep of -polar_vector 0 0 1, bit for bit, and the note names #36;
    the Kahn factor, which takes the E-vector across each ray, is unchanged."""
    line = ["-vdivrange", "2", "-vdivsteps", "3", "-oversample", "1"]

    def tilt(m):
        inc = np.asarray(m.sources.incident, dtype=float)[:, :3]
        return [math.degrees(math.acos(min(1.0, abs(float(x @ np.array(m.det.beam)))))) for x in inc]

    tilted = ["-polar_vector", "1", "0", "1"]
    d = build_model(nbnumba.parse_argv(BASE + line + tilted))
    c = build_model(nbnumba.parse_argv(BASE + line + tilted + ["-c_parity"]))
    flat = build_model(nbnumba.parse_argv(BASE + line + ["-polar_vector", "0", "0", "1"]))
    assert tilt(d) == pytest.approx([math.degrees(1e-3), 0.0, math.degrees(1e-3)], rel=1e-9)
    assert tilt(c)[0] == pytest.approx(math.degrees(1e-3) / math.sqrt(2), rel=1e-6)
    assert np.array_equal(np.asarray(d.sources.incident), np.asarray(flat.sources.incident))
    assert [n for n, _ in c_differences(d)] == [36]
    assert 36 not in [n for n, _ in c_differences(flat)]
