"""What other programs need from our image files.

dxtbx cannot be installed from the package index, so its SMV and miniCBF
readers' rules (FormatSMV / FormatSMVJHSim / FormatSMVADSC / FormatCBFMini,
read from its source) are encoded here and applied to the files we write;
fabio reads the same files back for pixels, geometry and wavelength.
"""
import calendar
import time

import numpy as np
import pytest

import nbnumba
from nbnumba.io import cbf as cbf_fmt
from nbnumba.io.frames import FrameGeometry, FrameInfo
from nbnumba.io.smv import read_smv, smv_date, write_smv
from nbnumba.outputs import smv_fields

ARGS = ("-cell 60 60 60 90 90 90 -lambda 1.2 -N 3 -default_F 100 -distance 80 "
        "-detpixels 24 -pixel 0.3 -seed 5 -noprogress").split()


@pytest.fixture(scope="module")
def res():
    return nbnumba.simulate_argv(ARGS)


def dxtbx_smv_header(raw: bytes):
    """FormatSMV.understand + get_smv_header, as dxtbx does them."""
    assert raw[:15] == b"{\nHEADER_BYTES="
    size = int(raw[:45].decode("ascii", "ignore").split("\n")[1].split("=")[1].replace(";", "").strip())
    hdr = {}
    for record in raw[:size].decode("ascii", "ignore").split("\n"):
        if record == "}":
            break
        if "=" not in record:
            continue
        key, value = record.replace(";", "").split("=")   # more than one '=' would raise
        hdr[key.strip()] = value.strip()
    return size, hdr


def test_smv_header_satisfies_dxtbx_jhsim_and_adsc(res, tmp_path):
    p = tmp_path / "noise.img"
    write_smv(p, res.noise_image, smv_fields(res, noise=True), header_overflow="grow")
    raw = p.read_bytes()
    size, hdr = dxtbx_smv_header(raw)
    # BEAMLINE=fake routes the file to FormatSMVJHSim, whose pedestal is int(ADC_OFFSET)
    assert hdr["BEAMLINE"] == "fake"
    pedestal = int(hdr["ADC_OFFSET"])
    assert pedestal == 40 and float(hdr["IMAGE_PEDESTAL"]) == 40
    data = np.frombuffer(raw, "<u2", offset=size).reshape(24, 24)
    assert np.array_equal(data, res.noise_image)
    assert data.min() >= pedestal           # the pedestal the header states is in the pixels
    # every key JHSim and ADSC turn into numbers (ADSC's understand() list plus TIME)
    for key in ("DISTANCE", "BEAM_CENTER_X", "BEAM_CENTER_Y", "PIXEL_SIZE", "SIZE1", "SIZE2",
                "WAVELENGTH", "OSC_START", "OSC_RANGE", "TIME", "TWOTHETA"):
        float(hdr[key])
    assert hdr["BYTE_ORDER"] == "little_endian"
    assert float(hdr["WAVELENGTH"]) == pytest.approx(1.2)
    assert float(hdr["DISTANCE"]) == pytest.approx(80.0)
    assert (int(hdr["SIZE1"]), int(hdr["SIZE2"])) == (24, 24)
    # DATE in the format JHSim/ADSC parse; nominal, so files do not change run to run
    epoch = calendar.timegm(time.strptime(hdr["DATE"], "%a %b %d %H:%M:%S %Y"))
    assert epoch == 946684800
    assert "DTREK_DATE_TIME" not in hdr     # would make ADSC reject the file


def test_smv_date_is_locale_free_and_advances():
    assert smv_date(0) == "Sat Jan 01 00:00:00 2000"
    assert smv_date(86400 + 61) == "Sun Jan 02 00:01:01 2000"


def test_c_parity_header_has_only_c_keys(tmp_path):
    r = nbnumba.simulate_argv(ARGS + ["-c_parity"])
    keys = [k for k, _ in smv_fields(r)]
    assert keys[-1] == "BEAMLINE" and "ADC_OFFSET" not in keys and "DATE" not in keys


def test_smv_round_trip_with_fabio(res, tmp_path):
    fabio = pytest.importorskip("fabio")
    p = tmp_path / "int.img"
    write_smv(p, res.int_image, smv_fields(res), header_overflow="grow")
    img = fabio.open(str(p))
    assert np.array_equal(img.data, res.int_image)
    assert float(img.header["WAVELENGTH"]) == pytest.approx(1.2)
    assert float(img.header["PIXEL_SIZE"]) == pytest.approx(0.3)
    assert float(img.header["BEAM_CENTER_X"]) == pytest.approx(res.model.det.Xbeam * 1000)
    assert int(img.header["ADC_OFFSET"]) == 40
    ours, data = read_smv(p)
    assert np.array_equal(data, res.int_image) and ours["DATE"] == smv_date(0)


def dxtbx_minicbf_header(text: str):
    """FormatCBFMini._start's parsing of the ``#`` miniheader lines."""
    out = {}
    for record in text.replace("\r", "").split("\n"):
        if record[:1] != "#":
            continue
        if len(record[1:].split()) <= 2 and record.count(":") == 2:
            out["timestamp"] = record[1:].strip()
            continue
        tokens = record.replace("=", "").replace(":", "").split()
        out[tokens[1]] = " ".join(tokens[2:])
    return out


def test_minicbf_satisfies_dxtbx_and_round_trips_with_fabio(res, tmp_path):
    fabio = pytest.importorskip("fabio")
    geom = FrameGeometry.from_result(res)
    info = FrameInfo(index=2, number=3, phi_start=1.5, phi_range=0.25, exposure=2.0,
                     noise=True, pedestal=res.model.cfg.adc_offset)
    p = tmp_path / "f.cbf"
    cbf_fmt.write_frame(p, res.noise_image, geom, info)
    img = fabio.open(str(p))
    conv = img.header["_array_data.header_convention"]
    assert "GENERIC_MINI" in conv                      # FormatCBFMini.understand()
    h = dxtbx_minicbf_header(img.header["_array_data.header_contents"])
    # pixels: counts above zero, the pedestal taken off; the overload is shifted with them
    assert np.array_equal(img.data, res.noise_image.astype(np.int32) - 40)
    assert int(h["Count_cutoff"].split()[0]) == 65535 - 40
    assert "pedestal 40 removed" in h["Image_type"]
    assert float(h["Detector_distance"].split()[0]) == pytest.approx(0.08)
    assert float(h["Wavelength"].split()[0]) == pytest.approx(1.2)
    px = [float(v) for v in h["Pixel_size"].replace("m", "").replace("x", "").split()]
    assert px == pytest.approx([3e-4, 3e-4])
    bx, by = map(float, h["Beam_xy"].replace("(", "").replace(")", "").replace(",", "").split()[:2])
    assert (bx, by) == pytest.approx(geom.beam_center_px, abs=1e-6)
    assert float(h["Exposure_period"].split()[0]) == 2.0
    assert float(h["Start_angle"].split()[0]) == 1.5
    assert float(h["Angle_increment"].split()[0]) == 0.25
    time.strptime(h["timestamp"], "%Y-%m-%dT%H:%M:%S.%f")   # the Pilatus timestamp dxtbx reads
    assert b"X-Binary-Size-Fastest-Dimension: 24" in p.read_bytes()


def test_minicbf_beam_xy_is_fast_then_slow_and_two_theta_in_degrees(res):
    """dxtbx's FormatCBFMini reads Beam_xy as (fast, slow) pixels from the
    first pixel's corner and Detector_2theta in degrees.  The module's run has
    its beam on the diagonal (Fbeam == Sbeam) and no swing, where a swapped
    pair or radians read the same: here the beam is off the diagonal (3 mm
    fast, 4.5 mm slow: 10 and 15 pixels of 0.3 mm) and the detector swung by
    20 degrees."""
    import math
    from dataclasses import replace
    geom = replace(FrameGeometry.from_result(res), Fbeam=3.0e-3, Sbeam=4.5e-3,
                   twotheta=math.radians(20.0))
    info = FrameInfo(index=0, number=1, phi_start=0.0, phi_range=0.1, exposure=1.0,
                     noise=False, pedestal=40.0)
    h = dxtbx_minicbf_header(cbf_fmt.miniheader(geom, info))
    bx, by = map(float, h["Beam_xy"].replace("(", "").replace(")", "").replace(",", "").split()[:2])
    assert (bx, by) == pytest.approx((10.0, 15.0), abs=1e-6)
    assert float(h["Detector_2theta"].split()[0]) == pytest.approx(20.0, abs=1e-6)
    # the package's own reader: the same pair, fast first
    meta = cbf_fmt.parse_miniheader(cbf_fmt.miniheader(geom, info))
    assert (meta["beam_x"], meta["beam_y"]) == pytest.approx((10.0, 15.0), abs=1e-6)


def test_minicbf_writer_refuses_images_it_cannot_store(res, tmp_path):
    # (fabio's own errors, or int32 wraparound, came out of it before)
    pytest.importorskip("fabio")
    from nbnumba.io._args import IOArgumentError
    geom = FrameGeometry.from_result(res)
    info = FrameInfo(index=0, number=1, phi_start=0.0, phi_range=0.1, exposure=1.0,
                     noise=False, pedestal=40.0)
    p = tmp_path / "f.cbf"
    for image, needle in [(np.zeros((0, 24), np.uint16), "non-empty 2-D array of integers"),
                          (np.zeros(24, np.uint16), "non-empty 2-D array of integers"),
                          (np.zeros((24, 24)), "got float64"),
                          (np.full((24, 24), 1 << 40), "fit a 32-bit int")]:
        with pytest.raises(IOArgumentError, match=needle):
            cbf_fmt.write_frame(p, image, geom, info)
    assert not p.exists()
    # a valid frame reads back through cbf.read_frame, pedestal removed
    cbf_fmt.write_frame(p, res.int_image, geom, info)
    meta, data = cbf_fmt.read_frame(p)
    assert np.array_equal(data, res.int_image.astype(np.int32) - 40)
    assert meta["count_cutoff"] == 65535 - 40
