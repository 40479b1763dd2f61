"""Tests for nbnumba.io: byte layouts of nanoBragg's files, readers, atomic writes."""

from __future__ import annotations

import math
import re
import os
import stat
import subprocess

import numpy as np
import pytest

from nbnumba.errors import InputFileError, NBError
from nbnumba.io.atomic import (
    OutputFileError,
    atomic_open,
    atomic_write_bytes,
    check_not_input,
)
from nbnumba.io.floatimage import read_float_image, write_float_image
from nbnumba.io.hkl import HKLGrid, fdump_bytes, read_fdump, read_hkl, write_fdump
from nbnumba.io.mat import read_mosflm_mat
from nbnumba.io.pgm import pgm_bytes_from_float, pgm_header, read_pgm, write_pgm
from nbnumba.io.smv import (
    RTD,
    format_g,
    header_value,
    nanobragg_smv_fields,
    read_smv,
    smv_header_text,
    write_smv,
)
from nbnumba.io.textcols import read_text_columns
from nbnumba.testing.users import as_an_ordinary_user, open_folder


# ---------------------------------------------------------------------------
# format_g == C printf("%g")  (expected strings produced by glibc printf)
# ---------------------------------------------------------------------------

C_PRINTF_G = [
    (0.0001, "0.0001"),
    (1e-05, "1e-05"),
    (100000.0, "100000"),
    (1e6, "1e+06"),
    (231.27466, "231.275"),
    (-0.0, "-0"),
    (0.0, "0"),
    (1.5, "1.5"),
    (123456.5, "123456"),  # exact tie -> even
    (123457.5, "123458"),
    (1e100, "1e+100"),
    (1.23456789e-300, "1.23457e-300"),
    (5e-324, "4.94066e-324"),
    (1.7976931348623157e308, "1.79769e+308"),
    (999999.5, "1e+06"),
    (999995.0, "999995"),
    (0.00001234, "1.234e-05"),
    (0.1 + 0.2, "0.3"),
    (57.29577951308232, "57.2958"),
    (-1e-7, "-1e-07"),
    (0.000099999949, "9.99999e-05"),
    (0.0000999999951, "0.0001"),
    (1e15, "1e+15"),
    (1234567.0, "1.23457e+06"),
    (-0.5, "-0.5"),
    (3.0000000000000004, "3"),
    (2.9999999999999996, "3"),
    (math.inf, "inf"),
    (-math.inf, "-inf"),
    (math.nan, "nan"),
    (-math.nan, "-nan"),
    (math.inf - math.inf, "-nan"),  # x86 default NaN has the sign bit set
    (np.float32(0.1), "0.1"),
    (7, "7"),
]


@pytest.mark.parametrize("value,expected", C_PRINTF_G)
def test_format_g_matches_c_printf(value, expected):
    assert format_g(value) == expected


def test_rtd_is_c_value():
    assert RTD == 180.0 * float.fromhex("0x1.45f306dc9c883p-2")
    assert RTD == 57.29577951308232


# ---------------------------------------------------------------------------
# SMV
# ---------------------------------------------------------------------------

# Header nanoBragg wrote for: -cell 50 50 50 90 90 90 -N 2 -detpixels 8 -distance 100
SHORT_HEADER_TEXT = (
    "{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
    "SIZE1=8;\nSIZE2=8;\nPIXEL_SIZE=0.1;\nDISTANCE=100;\nWAVELENGTH=1;\n"
    "BEAM_CENTER_X=0.45;\nBEAM_CENTER_Y=0.45;\nADXV_CENTER_X=0.5;\nADXV_CENTER_Y=0.3;\n"
    "MOSFLM_CENTER_X=0.45;\nMOSFLM_CENTER_Y=0.45;\nDENZO_X_BEAM=0.5;\nDENZO_Y_BEAM=0.5;\n"
    "DIALS_ORIGIN=-0.5,0.5,-100\nXDS_ORGX=5.5;\nXDS_ORGY=5.5;\nCLOSE_DISTANCE=100;\n"
    "PHI=0;\nOSC_START=0;\nOSC_RANGE=0;\nTWOTHETA=0;\n"
    "DETECTOR_SN=000;\nBEAMLINE=fake;\n}\f"
)
SHORT_ARGS = ["-detpixels", "8", "-distance", "100"]


def _short_fields(denzo_sign=-1):
    return nanobragg_smv_fields(
        fpixels=8, spixels=8, pixel_size_m=0.0001, distance_m=0.1, lambda_m=1e-10,
        Xbeam_m=0.00045, Ybeam_m=0.00045, Fbeam_m=0.0005, Sbeam_m=0.0005,
        detsize_s_m=0.0008, dials_origin_mm=(-0.5, 0.5, -100.0), ORGX=5.5, ORGY=5.5,
        close_distance_m=0.1, phi0_rad=0.0, osc_rad=0.0, twotheta_rad=0.0,
        denzo_sign=denzo_sign,
    )


# Header nanoBragg wrote for: -detpixels_f 8 -detpixels_s 6 -pixel 0.1 -distance 100
# -Xbeam 0.37 -Ybeam 0.41 -detector_rotx 5 -twotheta 10 -phi 3 -osc 0.5 -lambda 1.2345
# Its text is 515 bytes: nanoBragg overflows its own HEADER_BYTES=512.
LONG_HEADER_TEXT = (
    "{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
    "SIZE1=8;\nSIZE2=6;\nPIXEL_SIZE=0.1;\nDISTANCE=98.4808;\nWAVELENGTH=1.2345;\n"
    "BEAM_CENTER_X=0.37;\nBEAM_CENTER_Y=0.41;\n"
    "ADXV_CENTER_X=0.482993;\nADXV_CENTER_Y=-0.0828067;\n"
    "MOSFLM_CENTER_X=0.632807;\nMOSFLM_CENTER_Y=0.432993;\n"
    "DENZO_X_BEAM=0.682807;\nDENZO_Y_BEAM=0.482993;\n"
    "DIALS_ORIGIN=-0.421644,0.451528,-100.08\n"
    "XDS_ORGX=20.2344;\nXDS_ORGY=177.687;\nCLOSE_DISTANCE=98.4808;\n"
    "PHI=3;\nOSC_START=3;\nOSC_RANGE=0.5;\nTWOTHETA=10;\n"
    "DETECTOR_SN=000;\nBEAMLINE=fake;\n}\f"
)
LONG_ARGS = [
    "-detpixels_f", "8", "-detpixels_s", "6", "-pixel", "0.1", "-distance", "100",
    "-Xbeam", "0.37", "-Ybeam", "0.41", "-detector_rotx", "5", "-twotheta", "10",
    "-phi", "3", "-osc", "0.5", "-lambda", "1.2345",
]


def _long_fields(denzo_sign=-1):
    # numbers as printed by nanoBragg (%g), Sbeam from the ADXV value
    return nanobragg_smv_fields(
        fpixels=8,
        spixels=6,
        pixel_size_m=0.0001,
        distance_m=0.0984808,
        lambda_m=1.2345e-10,
        Xbeam_m=0.00037,
        Ybeam_m=0.00041,
        Fbeam_m=0.000482993,
        Sbeam_m=0.0006828067,
        detsize_s_m=0.0006,
        dials_origin_mm=(-0.421644, 0.451528, -100.08),
        ORGX=20.2344,
        ORGY=177.687,
        close_distance_m=0.0984808,
        phi0_rad=3.0 / RTD,
        osc_rad=0.5 / RTD,
        twotheta_rad=10.0 / RTD,
        denzo_sign=denzo_sign,
    )


def test_smv_header_text_matches_nanobragg_padded():
    text = smv_header_text(_short_fields())
    assert len(text) == 512
    expected = SHORT_HEADER_TEXT.encode("ascii")
    assert text == expected + b" " * (512 - len(expected))
    # noise-file variant gives the same numbers here
    assert smv_header_text(_short_fields(+1)) == text


def test_smv_header_overflow_like_nanobragg():
    with pytest.warns(RuntimeWarning, match="515 bytes"):
        text = smv_header_text(_long_fields())
    assert text == LONG_HEADER_TEXT.encode("ascii")
    assert len(text) == 515
    with pytest.raises(ValueError, match="515 bytes"):
        smv_header_text(_long_fields(), header_overflow="error")
    grown = smv_header_text(_long_fields(), header_overflow="grow")
    assert len(grown) == 1024
    assert grown.startswith(b"{\nHEADER_BYTES=1024;\nDIM=2;")
    assert grown.rstrip(b" ").endswith(b"BEAMLINE=fake;\n}\f")


def test_smv_overflow_file_grow_mode_reads_back(tmp_path):
    img = np.arange(48, dtype=np.uint16).reshape(6, 8)
    p = tmp_path / "g.img"
    write_smv(p, img, _long_fields(), header_overflow="grow")
    assert p.stat().st_size == 1024 + 96
    header, data = read_smv(p)
    assert np.array_equal(data, img) and header["HEADER_BYTES"] == "1024"
    fabio = pytest.importorskip("fabio")
    assert np.array_equal(np.asarray(fabio.open(str(p)).data), img)

    c_like = tmp_path / "c.img"
    with pytest.warns(RuntimeWarning):
        write_smv(c_like, img, _long_fields())
    raw = c_like.read_bytes()
    assert raw == LONG_HEADER_TEXT.encode() + img.astype("<u2").tobytes()
    # like nanoBragg's own reader: pixels from byte 512, with a warning
    with pytest.warns(RuntimeWarning, match="runs past HEADER_BYTES"):
        _, shifted = read_smv(c_like)
    assert shifted.shape == (6, 8)
    assert shifted.reshape(-1)[0] == int.from_bytes(raw[512:514], "little")


def test_smv_denzo_sign_only_matters_for_negative_zero():
    kw = dict(
        fpixels=2, spixels=2, pixel_size_m=1e-4, distance_m=0.1, lambda_m=1e-10,
        Xbeam_m=0.0, Ybeam_m=0.0, Fbeam_m=-0.0, Sbeam_m=-0.0, detsize_s_m=2e-4,
        dials_origin_mm=(0, 0, 0), ORGX=0.5, ORGY=0.5, close_distance_m=0.1,
        phi0_rad=0.0, osc_rad=0.0, twotheta_rad=0.0,
    )
    a = dict(nanobragg_smv_fields(denzo_sign=-1, **kw))
    b = dict(nanobragg_smv_fields(denzo_sign=+1, **kw))
    assert a["DENZO_X_BEAM"] == "-0" and b["DENZO_X_BEAM"] == "0"
    assert a["ADXV_CENTER_X"] == "-0"


def test_smv_field_arithmetic_and_nan():
    fields = dict(
        nanobragg_smv_fields(
            fpixels=3, spixels=4, pixel_size_m=0.000172, distance_m=0.23127466,
            lambda_m=0.9768e-10, Xbeam_m=0.217742295, Ybeam_m=0.21390708,
            Fbeam_m=0.2139, Sbeam_m=0.2177, detsize_s_m=0.434644,
            dials_origin_mm=(1.0, -2.5, math.nan), ORGX=math.nan, ORGY=-math.nan,
            close_distance_m=0.2312, phi0_rad=0.0, osc_rad=0.1 / RTD, twotheta_rad=0.0,
        )
    )
    assert fields["PIXEL_SIZE"] == "0.172"
    assert fields["DISTANCE"] == "231.275"
    assert fields["WAVELENGTH"] == "0.9768"
    assert fields["BEAM_CENTER_X"] == "217.742"
    assert fields["ADXV_CENTER_Y"] == format_g((0.434644 - 0.2177) * 1000)
    assert fields["MOSFLM_CENTER_X"] == format_g((0.2177 - 0.5 * 0.000172) * 1000.0)
    assert fields["DIALS_ORIGIN"] == "1,-2.5,nan"
    assert fields["XDS_ORGX"] == "nan" and fields["XDS_ORGY"] == "-nan"
    assert fields["OSC_RANGE"] == "0.1"
    assert list(fields)[:4] == ["HEADER_BYTES", "DIM", "BYTE_ORDER", "TYPE"]


def test_smv_round_trip_bytes_and_fabio(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    p = tmp_path / "int.img"
    write_smv(p, img, _short_fields())
    raw = p.read_bytes()
    assert len(raw) == 512 + 2 * img.size
    assert raw[:512] == smv_header_text(_short_fields())
    assert raw[512:] == img.astype("<u2").tobytes()

    header, data = read_smv(p)
    assert data.dtype == np.uint16 and data.shape == (8, 8)
    assert np.array_equal(data, img)
    assert header["SIZE1"] == "8" and header["SIZE2"] == "8"
    assert header["DIALS_ORIGIN"] == "-0.5,0.5,-100"
    assert header["BEAMLINE"] == "fake"
    assert header_value(header, "PIXEL_SIZE") == 0.1
    assert header_value(header, "WAVELENGTH") == 1.0
    assert math.isnan(header_value(header, "NO_SUCH_KEY"))

    fabio = pytest.importorskip("fabio")
    fimg = fabio.open(str(p))
    assert np.array_equal(np.asarray(fimg.data), img)
    assert fimg.header["SIZE1"] == "8"
    assert float(fimg.header["PIXEL_SIZE"]) == 0.1
    assert fimg.header["BEAM_CENTER_X"] == "0.45"

    # non-square: SIZE1 is the fast (column) count
    rect = rng.integers(0, 65536, size=(3, 5), dtype=np.uint16)
    fields = [(k, {"SIZE1": "5", "SIZE2": "3"}.get(k, v)) for k, v in _short_fields()]
    write_smv(p, rect, fields)
    assert np.array_equal(read_smv(p)[1], rect)
    assert np.array_equal(np.asarray(fabio.open(str(p)).data), rect)


def test_header_value_uses_c_substring_last_occurrence_rules(tmp_path):
    fields = _short_fields()
    fields = [(k, "123.5" if k == "CLOSE_DISTANCE" else v) for k, v in fields]
    fields = [(k, "20.2344" if k == "XDS_ORGX" else v) for k, v in fields]
    p = tmp_path / "a.img"
    write_smv(p, np.zeros((8, 8), np.uint16), fields)
    header, _ = read_smv(p)
    # nanoBragg's ValueOf("DISTANCE") finds the later CLOSE_DISTANCE entry
    assert header_value(header, "DISTANCE") == 123.5
    assert header_value(header, "DISTANCE", exact=True) == 100.0
    # ValueOf("ORGX") finds XDS_ORGX
    assert header_value(header, "ORGX") == 20.2344
    assert math.isnan(header_value(header, "ORGX", exact=True))
    # a plain dict works the same way
    assert header_value(dict(header), "ORGY") == 5.5


def test_read_smv_last_occurrence_big_endian_and_other_header_size(tmp_path):
    img = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000 + 7
    text = (
        "{\nHEADER_BYTES=1024;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
        "SIZE1=4;\nSIZE2=3;\nPIXEL_SIZE=0.1;\nPIXEL_SIZE=0.2;\nBYTE_ORDER=big_endian;\n}\f"
    ).encode()
    p = tmp_path / "be.img"
    p.write_bytes(text + b" " * (1024 - len(text)) + img.astype(">u2").tobytes() + b"xx")
    header, data = read_smv(p)
    assert np.array_equal(data, img)
    assert header.size == 1024
    assert header["PIXEL_SIZE"] == "0.2"
    assert header_value(header, "PIXEL_SIZE") == 0.2
    assert header["BYTE_ORDER"] == "big_endian"


def test_read_smv_errors_name_the_file(tmp_path):
    p = tmp_path / "mask.img"
    p.write_bytes(b"P5\n2 2\n255\n" + b"\0" * 600)
    with pytest.raises(InputFileError, match=r"mask\.img: not an SMV/ADSC file \(header does not start with '\{'\)"):
        read_smv(p)

    p.write_bytes(b"{\nDIM=2;\n}\f" + b" " * 600)
    with pytest.raises(InputFileError, match=r"mask\.img: .*HEADER_BYTES"):
        read_smv(p)

    good = tmp_path / "good.img"
    write_smv(good, np.ones((8, 8), np.uint16), _short_fields())
    p.write_bytes(good.read_bytes()[:512 + 50])
    with pytest.raises(InputFileError) as ei:
        read_smv(p)
    msg = str(ei.value)
    assert "mask.img" in msg and "128" in msg and "50" in msg and "truncated" in msg

    with pytest.raises(InputFileError, match="nope.img"):
        read_smv(tmp_path / "nope.img")

    txt = smv_header_text(
        [(k, "float" if k == "TYPE" else v) for k, v in _short_fields()]
    )
    p.write_bytes(txt + b"\0" * 128)
    with pytest.raises(InputFileError, match="TYPE"):
        read_smv(p)


def test_write_smv_checks_shape_and_is_atomic(tmp_path):
    p = tmp_path / "x.img"
    with pytest.raises(ValueError):
        write_smv(p, np.zeros((5, 8), np.uint16), _short_fields())
    with pytest.raises(ValueError):
        write_smv(p, np.zeros((8, 8), np.int32), _short_fields())
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# HKL + Fdump
# ---------------------------------------------------------------------------

HKL_TEXT = "1 2 3 100\n-1 0 2 50.5\n\n0 0 0 7\n  2 -1 1   12.25\n"


def test_read_hkl_two_pass_default_and_extra_plane(tmp_path):
    p = tmp_path / "x.hkl"
    p.write_text(HKL_TEXT)
    g = read_hkl(p, default_F=10.0)
    assert (g.h_min, g.h_max, g.k_min, g.k_max, g.l_min, g.l_max) == (-1, 2, -1, 2, 0, 3)
    assert g.hkls == 4
    assert g.F.dtype == np.float64
    assert g.F.shape == (5, 5, 5)  # range + 1 in each direction
    assert g.F[1 - -1, 2 - -1, 3 - 0] == 100.0
    assert g.F[-1 - -1, 0 - -1, 2] == 50.5
    assert g.F[1, 1, 0] == 7.0
    assert g.F[3, 0, 1] == 12.25
    # extra planes stay zero, the rest is default_F
    assert np.all(g.F[4, :, :] == 0) and np.all(g.F[:, 4, :] == 0) and np.all(g.F[:, :, 4] == 0)
    inner = g.F[:4, :4, :4].copy()
    for idx in [(2, 3, 3), (0, 1, 2), (1, 1, 0), (3, 0, 1)]:
        inner[idx] = 10.0
    assert np.all(inner == 10.0)
    assert g.warnings == []

    g0 = read_hkl(p, default_F=0.0)
    assert np.count_nonzero(g0.F) == 4


def test_read_hkl_duplicates_last_wins_and_noninteger_warning(tmp_path):
    p = tmp_path / "d.hkl"
    p.write_text("0 0 0 1\n1 1 1 2\n0 0 0 3\n1.5 0 0 4\n")
    g = read_hkl(p, 0.0)
    assert g.F[0, 0, 0] == 3.0
    assert g.h_max == 1  # int() truncation of 1.5
    assert g.F[1, 0, 0] == 4.0
    # the file's 1-based line (C prints its 0-based record count, 3, there)
    assert g.warnings == ["WARNING: non-integer value for h (1.5) at line 4",
                          "WARNING: %s: 1 record repeats a reflection given before, and the "
                          "last one's F is kept (h k l = 0 0 0 on lines 1, 3)" % p]



@pytest.mark.parametrize("second", ["2.0 3 4 20", "2 3 4.5 20", "2 3 4e0 20", "+2 0x3 4 20"])
def test_hkl_decimal_indices_in_both_modes(tmp_path, second):
    """nanoBragg.c re-reads the file with %d%d%d%lg: at an index written 2.0, 4.5,
    4e0 or 0x3 (a hex float to %lg) the %d after it fails and the loop ends, so
    F is stored for the records before it only (docs/quirks.md #17).  -c_parity
    does the same; the default mode stores every record; the bounds come from
    the first pass in both.  A '+' sign is a C integer."""
    import nbnumba
    from nbnumba.quirks import c_differences
    f = tmp_path / "x.hkl"
    f.write_text("1 2 3 10\n%s\n1 1 1 30\n" % second)
    g, c = read_hkl(str(f), default_F=5.0), read_hkl(str(f), default_F=5.0, c_second_pass=True)
    assert g.c_stored == c.c_stored == 1 and g.hkls == c.hkls == 3
    assert (g.h_min, g.h_max, g.l_min, g.l_max) == (c.h_min, c.h_max, c.l_min, c.l_max) == (1, 2, 1, 4)
    at = lambda grid, h, k, l: grid.F[h - grid.h_min, k - grid.k_min, l - grid.l_min]   # noqa: E731
    assert at(c, 1, 2, 3) == 10.0 and at(c, 2, 3, 4) == 5.0 and at(c, 1, 1, 1) == 5.0
    assert at(g, 1, 2, 3) == 10.0 and at(g, 2, 3, 4) == 20.0 and at(g, 1, 1, 1) == 30.0
    f.write_text("1 2 3 10\n+2 3 4 20\n1 1 1 30\n")
    assert read_hkl(str(f), c_second_pass=True).c_stored is None
    argv = ("-cell 70 80 90 90 90 90 -N 3 -lambda 1.5 -distance 100 -detpixels 4 -nonoise "
            "-nopgm -hkl x.hkl").split()
    f.write_text("1 2 3 10\n%s\n1 1 1 30\n" % second)
    d = nbnumba.simulate_argv(argv, cwd=str(tmp_path))
    assert [n for n, _ in c_differences(d.model)] == [17]
    cp = nbnumba.simulate_argv(argv + ["-c_parity"], cwd=str(tmp_path))
    assert cp.model.Fhkl[0, 0, 0] == 0.0 and d.model.Fhkl[0, 0, 0] == 30.0    # (1, 1, 1)


def test_read_hkl_bad_line_in_middle_names_file_and_line(tmp_path):
    lines = [f"{h} 0 0 {h + 1}.0" for h in range(20)]
    lines[16] = "7 8 oops 9"
    p = tmp_path / "scaled.hkl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as ei:
        read_hkl(p, 0.0)
    assert str(ei.value) == "scaled.hkl line 17: expected 'h k l F', got '7 8 oops 9'".replace(
        "scaled.hkl", str(p)
    )

    lines[16] = "1 2 3"  # too few numbers
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"line 17: expected 'h k l F', got '1 2 3'"):
        read_hkl(p, 0.0)


def test_read_hkl_trailing_garbage_is_ignored_like_c(tmp_path):
    p = tmp_path / "t.hkl"
    p.write_text("0 0 0 5\n1 0 0 6\nEND\n\n")
    g = read_hkl(p, 0.0)
    assert g.hkls == 2 and g.h_max == 1
    assert any("line 3" in w for w in g.warnings)


def test_read_hkl_empty_and_nonfinite(tmp_path):
    p = tmp_path / "e.hkl"
    p.write_text("\n\n")
    with pytest.raises(InputFileError, match="e.hkl"):
        read_hkl(p, 0.0)
    p.write_text("nan 0 0 1\n")
    with pytest.raises(InputFileError, match="non-finite"):
        read_hkl(p, 0.0)


def test_read_hkl_slow_path_formats(tmp_path):
    # hex floats, CRLF and tabs go through the strict slow parser
    p = tmp_path / "s.hkl"
    p.write_text("0x1 0 0\t1e1\r\n-1 0 0 inf\r\n")
    # (an infinite F is read as nanoBragg.c reads it only when asked: -c_parity)
    g = read_hkl(p, 0.0, allow_nonfinite_F=True)
    assert (g.h_min, g.h_max) == (-1, 1)
    assert g.F[2, 0, 0] == 10.0 and g.F[0, 0, 0] == math.inf
    with pytest.raises(InputFileError, match=r"s\.hkl line 2: structure factor F = inf"):
        read_hkl(p, 0.0)


def test_real_scaled_hkl_loads():
    # the real-world pair lies in shared/ beside the repository (CI has a copy);
    # it is not the project's to commit
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                        "supervisor", "scaled.hkl")
    if not os.path.exists(path):
        pytest.skip("reference data not present")
    g = read_hkl(path, 0.0)
    assert g.hkls == 64333
    assert (g.h_min, g.h_max, g.k_min, g.k_max, g.l_min, g.l_max) == (-24, 24, -28, 28, -31, 30)
    assert g.F[23 + 24, 15 + 28, -1 + 31] == 23.00


def test_fdump_exact_layout_and_round_trip(tmp_path):
    p = tmp_path / "x.hkl"
    p.write_text(HKL_TEXT)
    g = read_hkl(p, default_F=10.0)
    d = tmp_path / "Fdump.bin"
    write_fdump(d, g)
    raw = d.read_bytes()
    head = b"-1 2 -1 2 0 3\n\f"
    assert raw[: len(head)] == head
    assert len(raw) == len(head) + 8 * 5 * 5 * 5
    body = np.frombuffer(raw[len(head):], dtype="<f8").reshape(5, 5, 5)
    assert np.array_equal(body, g.F)
    # h outermost, l innermost: the second double is F[0,0,1]
    assert np.frombuffer(raw[len(head) + 8: len(head) + 16], "<f8")[0] == g.F[0, 0, 1]
    assert raw == fdump_bytes(g)

    r = read_fdump(d)
    assert (r.h_min, r.h_max, r.k_min, r.k_max, r.l_min, r.l_max) == (-1, 2, -1, 2, 0, 3)
    assert np.array_equal(r.F, g.F)
    assert r.hkls == 4 * 4 * 4


def test_fdump_errors(tmp_path):
    d = tmp_path / "Fdump.bin"
    d.write_bytes(b"0 1 0 1 0 1\n\f" + b"\0" * 16)
    with pytest.raises(InputFileError, match=r"Fdump\.bin: truncated Fdump data: expected 216"):
        read_fdump(d)
    d.write_bytes(b"hello")
    with pytest.raises(InputFileError, match="not an Fdump"):
        read_fdump(d)
    bad = HKLGrid(0, 1, 0, 1, 0, 1, np.zeros((2, 2, 2)), 1)
    with pytest.raises(ValueError):
        write_fdump(tmp_path / "F2.bin", bad)
    assert not (tmp_path / "F2.bin").exists()


# ---------------------------------------------------------------------------
# PGM, float image
# ---------------------------------------------------------------------------

def test_pgm_header_and_bytes(tmp_path):
    fl = np.array([[0.0, 1.0, 2.9, 300.0], [-1.5, -0.4, np.nan, 255.9]], dtype=np.float32)
    px = pgm_bytes_from_float(fl, 1.0)
    assert px.dtype == np.uint8
    assert px.tolist() == [[0, 1, 2, 255], [255, 0, 0, 255]]
    px2 = pgm_bytes_from_float(fl, 2.0, roi=(1, 2, 0, 0))
    assert px2.tolist() == [[0, 2, 5, 0], [0, 0, 0, 0]]

    p = tmp_path / "image.pgm"
    write_pgm(p, px, 95007.4)
    raw = p.read_bytes()
    head = b"P5\n4 2\n# pixels scaled by 95007.4\n255\n"
    assert raw == head + px.tobytes()
    assert pgm_header(4, 2, 1e-7) == b"P5\n4 2\n# pixels scaled by 1e-07\n255\n"
    img, scale = read_pgm(p)
    assert np.array_equal(img, px) and scale == 95007.4


def test_float_image_round_trip_and_size_check(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    p = tmp_path / "floatimage.bin"
    write_float_image(p, a)
    assert p.read_bytes() == a.astype("=f4").tobytes()
    assert np.array_equal(read_float_image(p, (3, 4)), a)
    with pytest.raises(InputFileError, match=r"floatimage\.bin: size 48 bytes .* 4x4 .*64"):
        read_float_image(p, (4, 4))


# ---------------------------------------------------------------------------
# MOSFLM matrix, text columns
# ---------------------------------------------------------------------------

def test_read_mosflm_mat_columns_are_reciprocal_vectors(tmp_path):
    p = tmp_path / "A.mat"
    p.write_text(
        "-0.02837711 -0.00305386 0.02535816\n"
        "-0.02871390 0.01019549 -0.01400049\n"
        "0.01050048 -0.03209440 -0.01036054\n"
        "  0.0 0.0 0.0\n  1 0 0\n"
    )
    r = read_mosflm_mat(p)
    assert r.shape == (3, 3)
    assert r[0].tolist() == [-0.02837711, -0.02871390, 0.01050048]  # a*
    assert r[1].tolist() == [-0.00305386, 0.01019549, -0.03209440]  # b*
    assert r[2].tolist() == [0.02535816, -0.01400049, -0.01036054]  # c*

    p.write_text("1 2 3\n4 5 6\n7 8\n")
    with pytest.raises(InputFileError, match=r"A\.mat line 3: .*8 of the 9"):
        read_mosflm_mat(p)
    p.write_text("1 2 3\n4 x 6\n7 8 9\n")
    with pytest.raises(InputFileError, match=r"A\.mat line 2: .*'x'"):
        read_mosflm_mat(p)


def test_read_text_columns(tmp_path):
    p = tmp_path / "sources.txt"
    p.write_text(
        "# X Y Z I lambda\n"
        "\n"
        "  ,; \n"
        "1 2 3 4 5e-10\n"
        "\t-1,0;0:1!6.2e-10 extra ignored\n"
        "7 8\n"
        "9.5A 10   # trailing comment\n"
        "1 2 3 4 5\r\n"
    )
    a = read_text_columns(p, 5)
    assert a.shape == (5, 5)
    assert a[0].tolist() == [1, 2, 3, 4, 5e-10]
    assert a[1].tolist() == [-1, 0, 0, 1, 6.2e-10]
    assert a[2, :2].tolist() == [7, 8] and np.all(np.isnan(a[2, 2:]))
    assert a[3, :2].tolist() == [9.5, 10] and np.all(np.isnan(a[3, 2:]))
    assert a[4].tolist() == [1, 2, 3, 4, 5]

    two = read_text_columns(p, 2)
    assert two.shape == (5, 2) and two[1].tolist() == [-1, 0]

    p.write_text("0.1 1\nfoo 2\n")
    with pytest.raises(InputFileError, match=r"sources\.txt line 2: column 1 is not a number: 'foo'"):
        read_text_columns(p, 2)

    p.write_text("")
    assert read_text_columns(p, 2).shape == (0, 2)


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------

def test_atomic_write_bytes_and_no_temp_left(tmp_path):
    p = tmp_path / "out.bin"
    atomic_write_bytes(p, b"hello")
    assert p.read_bytes() == b"hello"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    mode = os.stat(p).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_atomic_open_failure_keeps_old_file_and_removes_temp(tmp_path):
    p = tmp_path / "int.img"
    p.write_bytes(b"old contents")

    class Boom(RuntimeError):
        pass

    with pytest.raises(Boom):
        with atomic_open(p, "wb") as fh:
            fh.write(b"partial new data")
            raise Boom("simulated crash mid-write")
    assert p.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["int.img"]

    # also when the target did not exist before
    q = tmp_path / "new.img"
    with pytest.raises(Boom):
        with atomic_open(q, "wb") as fh:
            fh.write(b"x" * 1000)
            raise Boom()
    assert not q.exists()
    assert sorted(os.listdir(tmp_path)) == ["int.img"]


def test_atomic_write_errors_name_the_file(tmp_path):
    missing = tmp_path / "no_such_dir" / "x.img"
    with pytest.raises(OutputFileError, match=r"cannot write '.*x\.img': No such file or directory"):
        atomic_write_bytes(missing, b"1")
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(OutputFileError, match=r"cannot write '.*adir': "):
        atomic_write_bytes(d, b"1")
    assert os.listdir(d) == []
    assert sorted(os.listdir(tmp_path)) == ["adir"]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        try:
            with pytest.raises(OutputFileError, match=r"cannot write '.*x\.img': Permission denied"):
                atomic_write_bytes(ro / "x.img", b"1")
        finally:
            os.chmod(ro, 0o700)
    assert issubclass(OutputFileError, NBError)


def test_a_file_this_user_may_not_write_is_not_replaced():
    # nanoBragg.c's fopen() refuses a file the user may not write (chmod a-w,
    # another user's file) and stops with "Permission denied"; the rename needs
    # only the folder's permission, and replaced the file
    from nbnumba.io.atomic import check_writable, output_set
    with open_folder("nb-ro-") as top:     # (not under pytest's 0700 folder)
        ro = os.path.join(top, "ro.bin")
        rw = os.path.join(top, "rw.bin")
        link = os.path.join(top, "link.bin")
        for name in (ro, rw):
            with open(name, "wb") as fh:
                fh.write(b"old")
        os.chmod(ro, 0o444)
        os.chmod(rw, 0o666)
        os.symlink(ro, link)
        with as_an_ordinary_user():
            with pytest.raises(OutputFileError, match=r"cannot write -floatfile '.*ro\.bin': "
                               r"Permission denied \(the file exists and this user may not write it\)"):
                check_writable(ro, "-floatfile")
            for target in (ro, link):
                with pytest.raises(OutputFileError, match="Permission denied"):
                    atomic_write_bytes(target, b"new")
            # a set with one such file writes none of its files
            with pytest.raises(OutputFileError, match="Permission denied"):
                with output_set():
                    atomic_write_bytes(rw, b"new")
                    atomic_write_bytes(ro, b"new")
            with open(rw, "rb") as fh:
                assert fh.read() == b"old"
            # the same user may still replace a file it may write
            atomic_write_bytes(rw, b"new")
        for name, want in ((ro, b"old"), (rw, b"new")):
            with open(name, "rb") as fh:
                assert fh.read() == want
        assert sorted(os.listdir(top)) == ["link.bin", "ro.bin", "rw.bin"]
        assert os.stat(ro).st_mode & 0o777 == 0o444


def test_folders_that_stop_an_ordinary_user_are_named_with_the_reason():
    # a sticky folder (as /tmp) holding another user's file: the rename fails
    # with EPERM, after the render, and left the backup link behind; a folder
    # this user may not write or enter was blamed on the file
    from nbnumba.io.atomic import check_writable, output_set
    with open_folder("nb-dirs-") as top:     # (not under pytest's 0700 folder)
        sticky, ro, shut = (os.path.join(top, n) for n in ("sticky", "ro", "shut"))
        root = os.geteuid() == 0       # (as another user, the folders are its own: closed by mode)
        for d in (sticky, ro, shut):
            os.mkdir(d)
        for d in (sticky, ro):
            with open(os.path.join(d, "f.out"), "wb") as fh:
                fh.write(b"old")
            os.chmod(os.path.join(d, "f.out"), 0o666)
        for d, mode in ((sticky, 0o1777), (ro, 0o755 if root else 0o555), (shut, 0o700 if root else 0)):
            os.chmod(d, mode)
        mine = os.path.join(top, "mine.out")
        with as_an_ordinary_user():
            if os.geteuid() == 0:
                pytest.fail("the block must run as an ordinary user")
            s_out = os.path.join(sticky, "f.out")
            if os.stat(s_out).st_uid != os.geteuid():     # (as root: the file is root's)
                with pytest.raises(OutputFileError, match=r"Operation not permitted \(the file is "
                                   r"another user's, in a folder with the sticky bit"):
                    check_writable(s_out, "-floatfile")
                with pytest.raises(OutputFileError, match="Operation not permitted"):
                    with output_set():
                        atomic_write_bytes(mine, b"new")
                        atomic_write_bytes(s_out, b"new")
                assert not os.path.exists(mine)
            # a file it may write, in a folder it may not: the folder is named
            with pytest.raises(OutputFileError, match=r"Permission denied \(this user may not write "
                               r"the folder '.*ro'"):
                check_writable(os.path.join(ro, "f.out"), "-floatfile")
            with pytest.raises(OutputFileError, match=r"Permission denied \(this user may not write "
                               r"the folder"):
                atomic_write_bytes(os.path.join(ro, "f.out"), b"new")
            # a folder it may not enter: not "No such file or directory"
            with pytest.raises(OutputFileError, match=r"cannot write -floatfile '.*f\.bin': "
                               r"Permission denied"):
                check_writable(os.path.join(shut, "f.bin"), "-floatfile")
        for d in (sticky, ro):
            with open(os.path.join(d, "f.out"), "rb") as fh:
                assert fh.read() == b"old"
            assert os.listdir(d) == ["f.out"]          # no temporary, no backup link
        assert sorted(os.listdir(top)) == ["ro", "shut", "sticky"]


def test_another_users_link_in_a_sticky_folder_is_not_followed():
    # a link planted in /tmp by another user pointed at a file of this user's:
    # nbnumba resolved it itself and replaced that file, where the kernel's
    # protected_symlinks rule (on by default) makes fopen() refuse it
    from nbnumba.io.atomic import check_writable
    with open_folder("nb-link-") as top:     # (not under pytest's 0700 folder)
        shared, mine = os.path.join(top, "shared"), os.path.join(top, "mine")
        os.mkdir(shared)
        os.mkdir(mine)
        os.chmod(shared, 0o1777)
        os.chmod(mine, 0o777)
        victim = os.path.join(mine, "victim.txt")
        with open(victim, "wb") as fh:
            fh.write(b"precious")
        os.chmod(victim, 0o666)
        planted, own = os.path.join(shared, "out.bin"), os.path.join(shared, "own.bin")
        os.symlink(victim, planted)
        root = os.geteuid() == 0
        if root:
            os.lchown(planted, 4242, 4242)          # a third user's link
        with as_an_ordinary_user():
            if root:
                for call in (lambda: check_writable(planted, "-floatfile"),
                             lambda: atomic_write_bytes(planted, b"image")):
                    with pytest.raises(OutputFileError, match=r"cannot write '.*out\.bin': Permission "
                                       r"denied \(a symbolic link of another user's in a folder "
                                       r"with the sticky bit"):
                        call()
            os.symlink(victim, own)                 # this user's own link: followed
            atomic_write_bytes(own, b"mine")
        with open(victim, "rb") as fh:
            assert fh.read() == b"mine"
        assert os.path.islink(own) and (not root or os.path.islink(planted))


def test_a_replaced_output_keeps_its_group_and_loses_set_id_bits():
    # fopen() writes into the old inode: its owner and group stay, and a write
    # by a user without CAP_FSETID clears set-user-ID; the rename gave the file
    # this user's group and kept the bits
    with open_folder("nb-ids-") as top:     # (not under pytest's 0700 folder)
        grp, suid = os.path.join(top, "g.bin"), os.path.join(top, "s.bin")
        for p in (grp, suid):
            with open(p, "wb") as fh:
                fh.write(b"old")
        root = os.geteuid() == 0
        if root:        # files of nobody's, the first in group 4242, of which nobody is a member
            os.chown(grp, 65534, 4242)
            os.chown(suid, 65534, 65534)
            want_gid = 4242
        else:           # (a group of this user's other than its own, when it has one)
            want_gid = ([g for g in os.getgroups() if g != os.getegid()] or [os.getegid()])[0]
            os.chown(grp, -1, want_gid)
        os.chmod(grp, 0o640)
        os.chmod(suid, 0o4755)
        with as_an_ordinary_user(groups=[4242]):
            atomic_write_bytes(grp, b"new")
            atomic_write_bytes(suid, b"new")
        st = os.stat(grp)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (want_gid, 0o640)
        assert stat.S_IMODE(os.stat(suid).st_mode) == 0o755
        if root:        # root writes: owner, group and bits kept, as fopen's write keeps them
            os.chmod(suid, 0o4755)
            atomic_write_bytes(grp, b"root's")
            atomic_write_bytes(suid, b"root's")
            assert (os.stat(grp).st_uid, os.stat(grp).st_gid) == (65534, 4242)
            assert stat.S_IMODE(os.stat(suid).st_mode) == 0o4755
            assert os.stat(suid).st_uid == 65534


def test_atomic_write_through_symlink_and_keeps_mode(tmp_path):
    real = tmp_path / "real.img"
    real.write_bytes(b"a")
    os.chmod(real, 0o640)
    link = tmp_path / "link.img"
    link.symlink_to(real)
    atomic_write_bytes(link, b"bb")
    assert link.is_symlink()
    assert real.read_bytes() == b"bb"
    assert os.stat(real).st_mode & 0o777 == 0o640


def test_outputs_in_a_working_directory_deeper_than_path_max(tmp_path, monkeypatch):
    # nanoBragg.c's fopen("f.bin") writes there; the absolute name (4.5 kB)
    # cannot be opened, so the writer must name the folder as the caller does
    from nbnumba.io.atomic import check_writable, output_set
    monkeypatch.chdir(tmp_path)
    for _ in range(45):
        os.mkdir("d" * 100)
        os.chdir("d" * 100)
    assert len(os.getcwd()) > 4096
    check_writable("f.bin", "-floatfile")
    atomic_write_bytes("f.bin", b"one")
    os.mkdir("sub")
    with output_set():
        atomic_write_bytes("f.bin", b"two")
        atomic_write_bytes(os.path.join("sub", "g.bin"), b"three")
    assert open("f.bin", "rb").read() == b"two"
    assert open(os.path.join("sub", "g.bin"), "rb").read() == b"three"
    assert sorted(os.listdir(".")) == ["f.bin", "sub"]
    assert os.listdir("sub") == ["g.bin"]


def test_check_not_input(tmp_path, monkeypatch):
    inp = tmp_path / "in.img"
    inp.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputFileError, match="in.img"):
        check_not_input("./in.img", [None, str(inp)])
    with pytest.raises(OutputFileError):
        check_not_input(tmp_path / "sub" / ".." / "in.img", ["in.img"])
    check_not_input("out.img", ["in.img", None])  # no error
    check_not_input("new.img", ["other_new.img"])  # neither exists: no error


# ---------------------------------------------------------------------------
# cross-check with the reference C program when available
# ---------------------------------------------------------------------------

C_BIN = os.environ.get("NB_C_BIN")


def _run_c(tmp_path, extra):
    (tmp_path / "x.hkl").write_text(HKL_TEXT)
    args = [
        C_BIN, "-cell", "50", "50", "50", "90", "90", "90", "-default_F", "10", "-N", "2",
        "-seed", "1", "-hkl", "x.hkl", "-intfile", "int.img", "-noisefile", "noise.img",
        "-pgmfile", "img.pgm", "-floatfile", "float.bin",
    ] + extra
    subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, timeout=120)


needs_c = pytest.mark.skipif(not (C_BIN and os.access(C_BIN, os.X_OK)), reason="NB_C_BIN not set")


@needs_c
@pytest.mark.parametrize("case", ["short", "long"])
def test_against_reference_binary(tmp_path, case):
    extra, fields, shape = {
        "short": (SHORT_ARGS, _short_fields, (8, 8)),
        "long": (LONG_ARGS, _long_fields, (6, 8)),
    }[case]
    _run_c(tmp_path, extra)

    # Fdump.bin byte for byte
    ours = fdump_bytes(read_hkl(tmp_path / "x.hkl", 10.0))
    assert ours == (tmp_path / "Fdump.bin").read_bytes()
    g = read_fdump(tmp_path / "Fdump.bin")
    assert g.F.shape == (5, 5, 5)

    # SMV: header text for the C run's numbers, then the whole file
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, sign in (("int.img", -1), ("noise.img", +1)):
            raw = (tmp_path / name).read_bytes()
            head = smv_header_text(fields(sign))
            assert raw[: len(head)] == head
            data = np.frombuffer(raw[len(head):], dtype="<u2").reshape(shape)
            out = tmp_path / ("re_" + name)
            write_smv(out, data, fields(sign))
            assert out.read_bytes() == raw
            h, d = read_smv(tmp_path / name)
            assert h["SIZE1"] == "8"
            if len(head) == 512:
                assert np.array_equal(d, data)

    # float image and PGM
    fl = read_float_image(tmp_path / "float.bin", shape)
    pgm, scale = read_pgm(tmp_path / "img.pgm")
    assert pgm.shape == shape
    ours_pgm = pgm_bytes_from_float(fl, scale).astype(int)
    # scale in the PGM comment is rounded to 6 digits: allow one count
    assert np.max(np.abs(ours_pgm - pgm.astype(int))) <= 1
    raw = (tmp_path / "img.pgm").read_bytes()
    assert raw == pgm_header(shape[1], shape[0], scale) + pgm.tobytes()


def test_fabio_written_smv_mask(tmp_path):
    """fabio writes 'BYTE_ORDER= little_endian;' (a blank after the '='): the
    default mode reads such a -mask as the one nbnumba writes (it was refused as
    an unknown byte order); -c_parity refuses it in one line, since nanoBragg.c
    would swap every pixel's bytes."""
    fabio = pytest.importorskip("fabio")
    import nbnumba
    from fabio.adscimage import AdscImage
    mask = np.ones((16, 16), dtype=np.uint16)
    mask[3:9, 5:12] = 0
    AdscImage(data=mask, header={}).write(str(tmp_path / "fab.img"))
    assert b"BYTE_ORDER= little_endian" in (tmp_path / "fab.img").read_bytes()[:512]
    assert np.array_equal(fabio.open(str(tmp_path / "fab.img")).data, mask)
    base = ("-cell 70 80 90 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 -detpixels 16 "
            "-nonoise -nopgm -mask").split()
    got = nbnumba.simulate_argv(base + [str(tmp_path / "fab.img")])
    free = nbnumba.simulate_argv(base[:-1])
    img = np.asarray(got.float_image)
    assert np.all(img[mask == 0] == 0) and np.array_equal(img[mask != 0],
                                                          np.asarray(free.float_image)[mask != 0])
    with pytest.raises(InputFileError, match="after a blank: nanoBragg.c would swap the bytes"):
        nbnumba.simulate_argv(base + [str(tmp_path / "fab.img"), "-c_parity"])


def _mosflm_file(path, cell, lam, U, cell_line=None):
    """A whole MOSFLM matrix file for ``cell`` (A, degrees) turned by U, written
    at wavelength ``lam`` (A), with ``cell_line`` (default: the cell) as its
    cell line."""
    import math
    a, b, c = cell[:3]
    al, be, ga = (math.radians(x) for x in cell[3:])
    V = a * b * c * math.sqrt(1 - math.cos(al) ** 2 - math.cos(be) ** 2 - math.cos(ga) ** 2
                              + 2 * math.cos(al) * math.cos(be) * math.cos(ga))
    real = np.array([[a, 0, 0], [b * math.cos(ga), b * math.sin(ga), 0],
                     [c * math.cos(be), c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga),
                      0.0]])
    real[2, 2] = math.sqrt(c * c - real[2, 0] ** 2 - real[2, 1] ** 2)
    recip = np.array([np.cross(real[1], real[2]), np.cross(real[2], real[0]),
                      np.cross(real[0], real[1])]) / V            # rows a*, b*, c*
    M = (U @ recip.T) * lam                                         # column j: vector j
    rows = [" ".join("%12.8f" % x for x in r) for r in M]
    rows += ["0 0 0"] + [" ".join("%10.7f" % x for x in r) for r in U]
    rows += [" ".join("%10.4f" % x for x in (cell_line or cell)), "0 0 0"]
    path.write_text("\n".join(rows) + "\n")


def test_mosflm_cell_line_names_the_matrix_wavelength(tmp_path):
    """nanoBragg.c divides a -mat matrix by the run's -lambda, so a MOSFLM file
    written at 0.9795 A read at 1 A gives a cell 2.1 % too large, silently.  The
    default mode reads the file's cell line and names the file's wavelength;
    it says nothing where they agree, under -c_parity, or with -cell."""
    import nbnumba
    from nbnumba.io.mat import read_mosflm_cell
    from nbnumba.model import build_model
    U = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])
    cell = (78.24, 78.24, 37.47, 90.0, 90.0, 120.0)
    _mosflm_file(tmp_path / "A.mat", cell, 0.9795, U)
    assert read_mosflm_cell(tmp_path / "A.mat") == cell
    base = ["-mat", "A.mat", "-default_F", "1", "-N", "3", "-detpixels", "8"]

    def log(*extra):
        m = build_model(nbnumba.parse_argv(base + list(extra), cwd=str(tmp_path)))
        return m, [l for l in m.log if "A.mat" in l and "WARNING" in l]

    m, warn = log("-lambda", "0.9795")
    assert warn == [] and np.allclose(m.crystal.cell, cell, rtol=1e-6)
    m, warn = log("-lambda", "1")
    assert len(warn) == 1 and "wavelength of 0.9795 A" in warn[0] and "scaled by 1.02093" in warn[0]
    assert m.crystal.cell[0] == pytest.approx(78.24 / 0.9795, rel=1e-6)     # (the image is the C's)
    assert log("-lambda", "1", "-c_parity")[1] == []
    assert log("-lambda", "1", "-cell", "78.24", "78.24", "37.47", "90", "90", "120")[1] == []
    # a cell line that fits no wavelength (c doubled) is named as such
    _mosflm_file(tmp_path / "A.mat", cell, 0.9795, U, cell_line=(78.24, 78.24, 74.94, 90, 90, 120))
    warn = log("-lambda", "0.9795")[1]
    assert len(warn) == 1 and "not its matrix's cell at any wavelength" in warn[0]
    # nine numbers, or text after them: no cell line, no warning, no error
    (tmp_path / "A.mat").write_text((tmp_path / "A.mat").read_text().split("0 0 0")[0])
    assert read_mosflm_cell(tmp_path / "A.mat") is None and log("-lambda", "1")[1] == []
    (tmp_path / "A.mat").write_text((tmp_path / "A.mat").read_text() + "written by hand\n")
    assert read_mosflm_cell(tmp_path / "A.mat") is None


@pytest.mark.parametrize("flag", ["append", "immutable"])
def test_append_only_and_immutable_folders_and_files_are_refused_before_writing(tmp_path, flag,
                                                                                 monkeypatch):
    # a folder with chattr +a takes new files but no rename or unlink: the output
    # was rendered, its rename failed with EPERM, and the temporary stayed (one
    # more each run); an append-only file failed only at the rename, after the
    # render. Both are refused up front now, naming the flag.
    from nbnumba.io.atomic import check_writable
    from nbnumba.testing.chattr import APPEND, IMMUTABLE, flagged
    bit, words = (APPEND, "append-only (chattr +a)") if flag == "append" else \
        (IMMUTABLE, "immutable (chattr +i)")
    folder = tmp_path / "d"
    folder.mkdir()
    inside = str(folder / "f.bin")
    with flagged(folder, bit, monkeypatch):
        with pytest.raises(OutputFileError, match=r"cannot write -floatfile '.*f\.bin': Operation not "
                           r"permitted \(the folder '.*d' is " + re.escape(words)):
            check_writable(inside, "-floatfile")
        with pytest.raises(OutputFileError, match=r"Operation not permitted \(the folder .* is "
                           + re.escape(words)):
            atomic_write_bytes(inside, b"image")
        assert os.listdir(folder) == []                   # no temporary left
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    with flagged(old, bit, monkeypatch):
        for call in (lambda: check_writable(str(old), "-floatfile"),
                     lambda: atomic_write_bytes(str(old), b"new")):
            with pytest.raises(OutputFileError, match=r"Operation not permitted \(the file is "
                               + re.escape(words)):
                call()
    assert old.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["d", "old.bin"]
    # without the flags, both take outputs again
    atomic_write_bytes(inside, b"image")
    atomic_write_bytes(str(old), b"new")
    assert old.read_bytes() == b"new"


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    # os.access says only "denied": the message blamed this user's rights on the
    # folder ("Permission denied (this user may not write the folder ...)"),
    # where nanoBragg.c's fopen says "Read-only file system"
    from nbnumba.io.atomic import check_writable
    from nbnumba.testing.chattr import read_only
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder, monkeypatch):
        for call in (lambda: check_writable(str(folder / "f.bin"), "-floatfile"),
                     lambda: atomic_write_bytes(str(folder / "f.bin"), b"image")):
            with pytest.raises(OutputFileError, match=r"cannot write (-floatfile )?'.*f\.bin': "
                               r"Read-only file system \(the folder '.*ro' is on a file system "
                               r"mounted read-only\)$"):
                call()
        assert os.listdir(folder) == []
    atomic_write_bytes(str(folder / "f.bin"), b"image")
    assert os.listdir(folder) == ["f.bin"]
