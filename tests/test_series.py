"""nbnumba-series: frame planning, formats read back, Dask execution (worker count,
worker death), failures, resume."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nbnumba
from nbnumba import series
from nbnumba.io import cbf as cbf_fmt
from nbnumba.io import nexus as nexus_fmt
from nbnumba.io.frames import FrameGeometry, lab_to_mcstas, parse_formats
from nbnumba.io.smv import read_smv
from nbnumba.testing.users import as_an_ordinary_user, open_folder

BASE = ("-cell 70 80 90 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 "
        "-detpixels 64 -pixel 0.2 -seed 7").split()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def warm_numba_cache():
    """Compile (or load) the kernels once in-process; workers then load the on-disk cache."""
    nbnumba.simulate(nbnumba.parse_argv(BASE + ["-phisteps", "2", "-osc", "1"]))


def run(argv, capsys=None):
    rc = series.main([str(a) for a in argv])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def shas(d, skip=("manifest.jsonl",)):
    out = {}
    for name in sorted(os.listdir(d)):
        if name in skip:
            continue
        with open(os.path.join(d, name), "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


def manifest(d):
    return series.Manifest.read(os.path.join(d, "manifest.jsonl"))


def frame_records(d):
    return [r for r in manifest(d) if r.get("type") == "frame"]


def direct(extra):
    """The engine run nanoBragg-style for one frame (the reference for a series frame)."""
    cfg = nbnumba.parse_argv(BASE[:-2] + [str(x) for x in extra])
    return nbnumba.simulate(cfg)


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--bogus", "--frames", "2", "--out", "x"], "unknown option --bogus"),
    (["--frame", "2", "--out", "x"], "unknown option --frame (did you mean --frames?)"),
    (["--distance", "2", "--frames", "2", "--out", "x"],
     "unknown option --distance (nanoBragg flags take a single dash"),
    (["--frames", "2"], "--out DIR is required"),
    (["--frames", "2", "--shots", "3", "--out", "x"], "cannot be combined"),
    (["--frames", "two", "--out", "x"], "--frames needs an integer"),
    (["--frames", "2", "--out", "x", "--format", "tiff"], "unknown format 'tiff'"),
    (["--frames", "2", "--random-orientation", "--out", "x"], "serial sets"),
    (["--frames", "2", "--out", "x", "--device", "tpu"], "--device must be cpu or cuda"),
    # more frames than five-digit names hold: 99999999999 used to be planned
    # in memory (GBs) before the first frame
    (["--frames", "99999999999", "--osc-per-frame", "1", "--out", "x"],
     "--frames must be <= 99999"),
    (["--shots", "100000", "--out", "x"], "--shots must be <= 99999"),
    (["--frames", "3", "--osc-per-frame", "1", "--phisteps-per-frame", "99999999999",
      "--out", "x"], "--phisteps-per-frame must be <= 2147483647"),
    # the flags' number rules: int() read '３' as 3 and '1_0' as 10 (frames rendered)
    (["--frames", "３", "--out", "x"], "--frames needs an integer, got '３'"),
    (["--frames", "1_0", "--out", "x"], "--frames needs an integer, got '1_0'"),
    (["--frames", "2", "--workers", "１", "--out", "x"], "--workers needs an integer"),
    (["--shots", "2", "--jitter-cell", "1_0", "--out", "x"], "--jitter-cell needs a number"),
    # jitter sigmas beyond 100 %: 1e306 overflowed N (RuntimeWarning, OverflowError)
    (["--shots", "2", "--jitter-N", "1e306", "--out", "x"], "--jitter-N must be <= 100"),
    (["--shots", "2", "--jitter-cell", "100.5", "--out", "x"], "--jitter-cell must be <= 100"),
    # a prefix whose frame names pass NAME_MAX (255 bytes) failed every frame
    (["--frames", "1", "--out", "x", "--prefix", "p" * 250], "--prefix is too long (250 bytes)"),
    # a byte that is not UTF-8 (a surrogate here): h5py's encode raised after every frame
    (["--frames", "1", "--out", "x", "--format", "nexus", "--prefix", "a\udcff"],
     "--prefix with --format nexus must be UTF-8 text"),
])
def test_usage_errors_one_line_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)         # (--out x: a regression must not write into the repo)
    rc, out = run(argv + BASE, capsys)
    assert rc == 2
    assert os.listdir(tmp_path) == []   # refused before DIR exists
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.err


def test_rotation_that_overflows_refused_before_dir(tmp_path, capsys):
    # --osc-per-frame 1e308: the third frame's -phi was inf, so two frames
    # rendered and the third failed (exit 1); now one line before DIR exists
    rc, out = run(["--frames", "3", "--osc-per-frame", "1e308", "--workers", "0",
                   "--out", tmp_path / "o"] + BASE, capsys)
    assert rc == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "--frames 3 of 1e+308 deg each overflow the rotation" in lines[0]
    assert not (tmp_path / "o").exists()


def test_engine_flag_error_exit_2(tmp_path, capsys):
    rc, out = run(["--frames", "2", "--out", tmp_path / "o", "--workers", "0",
                   "-cell", "70", "80"], capsys)
    assert rc == 2 and out.err.count("\n") == 1 and "error" in out.err


def test_parse_formats_and_options():
    assert parse_formats(["smv,cbf", "nexus", "smv"]) == ("smv", "cbf", "nexus")
    o = series.parse_series_argv(["--shots", "3", "--jitter-N=5", "--out", "d", "-N", "5"])
    assert o.mode == "serial" and o.jitter_N == 5.0 and o.engine_argv == ["-N", "5"]


# ---------------------------------------------------------------------------
# frame planning
# ---------------------------------------------------------------------------

def test_serial_plan_is_a_function_of_seed_and_index():
    cfg = nbnumba.parse_argv(BASE)
    o6 = series.parse_series_argv(["--shots", "6", "--random-orientation", "--jitter-cell", "2",
                                   "--jitter-N", "20", "--out", "d"])
    o3 = series.parse_series_argv(["--shots", "3", "--random-orientation", "--jitter-cell", "2",
                                   "--jitter-N", "20", "--out", "d"])
    a = series.plan_frames(cfg, o6, 7)
    assert a == series.plan_frames(cfg, o6, 7)
    assert a[:3] == series.plan_frames(cfg, o3, 7)
    assert a != series.plan_frames(cfg, o6, 8)
    assert len({s.misset for s in a}) == 6 and len({s.cell for s in a}) == 6
    assert [s.seed for s in a] == [7 + i for i in range(6)]
    # the misset angles reproduce the drawn rotation matrix
    from nbnumba.physics import rotate_xyz
    s0 = np.random.SeedSequence([7, 0]).spawn(3)[0]
    R = series.random_rotation(np.random.default_rng(s0))
    v = (0.3, -0.2, 0.9)
    assert np.allclose(rotate_xyz(v, *a[0].misset), R @ np.array(v), atol=1e-12)


def test_random_rotation_is_uniform_ish():
    rng = np.random.default_rng(0)
    z = np.array([series.random_rotation(rng)[:, 2] for _ in range(4000)])
    assert np.allclose(z.mean(axis=0), 0, atol=0.05)       # image of an axis covers the sphere
    assert np.allclose((z ** 2).mean(axis=0), 1 / 3, atol=0.03)


# ---------------------------------------------------------------------------
# formats: every file read back with the right pixels and geometry
# ---------------------------------------------------------------------------

def test_rotation_series_all_formats_read_back(tmp_path, capsys, monkeypatch):
    out = tmp_path / "rot"
    rc, o = run(["--frames", 3, "--osc-per-frame", 0.5, "--phisteps-per-frame", 2,
                 "--workers", 0, "--out", out, "--format", "smv", "--format", "cbf,nexus"] + BASE,
                capsys)
    assert rc == 0, o.err
    assert "3/3 frames done" in o.out and "frames/s" in o.out
    ref = direct(["-phi", 1.0, "-osc", 0.5, "-phisteps", 2, "-seed", 9])   # frame 2
    img = ref.noise_image
    det = ref.model.det

    # SMV: nanoBragg's noise-file header, read with fabio and nbnumba
    import fabio
    smv = fabio.open(str(out / "frame_00003.img"))
    assert np.array_equal(smv.data, img)
    hdr, data = read_smv(out / "frame_00003.img")
    assert np.array_equal(data, img)
    assert float(hdr["PIXEL_SIZE"]) == pytest.approx(0.2)
    assert float(hdr["DISTANCE"]) == pytest.approx(100.0)
    assert float(hdr["WAVELENGTH"]) == pytest.approx(1.0)
    assert float(hdr["BEAM_CENTER_X"]) == pytest.approx(det.Xbeam * 1000)
    assert float(hdr["BEAM_CENTER_Y"]) == pytest.approx(det.Ybeam * 1000)
    assert float(hdr["OSC_START"]) == pytest.approx(1.0)
    assert float(hdr["OSC_RANGE"]) == pytest.approx(0.5)

    # CBF through fabio, with the miniheader
    meta, data = cbf_fmt.read_frame(out / "frame_00003.cbf")
    assert np.array_equal(data, img.astype(np.int32) - 40)   # Pilatus-style: no pedestal
    assert meta["count_cutoff"] == 65535 - 40
    assert float(hdr["ADC_OFFSET"]) == 40
    assert meta["header_convention"] == "GENERIC_MINI"     # 64x64 is no Pilatus tiling
    assert meta["pixel_size_fast"] == pytest.approx(200e-6)
    assert meta["pixel_size_slow"] == pytest.approx(200e-6)
    assert meta["distance"] == pytest.approx(0.1)
    assert meta["wavelength"] == pytest.approx(1.0)
    assert meta["beam_x"] == pytest.approx(det.Fbeam / det.pixel_size)
    assert meta["beam_y"] == pytest.approx(det.Sbeam / det.pixel_size)
    assert meta["start_angle"] == pytest.approx(1.0)
    assert meta["angle_increment"] == pytest.approx(0.5)
    assert meta["exposure_time"] == pytest.approx(1.0)
    assert "Detector" in fabio.open(str(out / "frame_00003.cbf")).header["_array_data.header_contents"]

    # NeXus: per-frame file and the NXmx master (read from another directory)
    assert np.array_equal(nexus_fmt.read_frame(out / "frame_00003.h5"), img)
    import h5py
    monkeypatch.chdir(tmp_path)
    with h5py.File(out / "master.h5", "r") as f:
        e = f["entry"]
        assert e.attrs["NX_class"] == "NXentry" and e["definition"][()].decode() == "NXmx"
        assert e["data"].attrs["signal"] == "data"
        stack = e["data/data"]
        assert stack.is_virtual and stack.shape == (3, 64, 64)
        assert np.array_equal(stack[2], img)
        assert np.array_equal(stack[0], nexus_fmt.read_frame(out / "frame_00001.h5"))
        assert e["instrument/beam/incident_wavelength"][()] == pytest.approx(1.0)
        assert e["instrument/beam/incident_wavelength"].attrs["units"] == "angstrom"
        d = e["instrument/detector"]
        assert d["depends_on"][()].decode() == "/entry/instrument/detector/transformations/det_z"
        assert d["transformations/det_z"][()] == pytest.approx(100.0)
        assert d["module/fast_pixel_direction"][()] == pytest.approx(0.2)
        assert d["module/slow_pixel_direction"][()] == pytest.approx(0.2)
        assert d["x_pixel_size"][()] == pytest.approx(0.0002)
        assert d["distance"][()] == pytest.approx(100.0)
        assert d["beam_center_x"][()] == pytest.approx(det.Fbeam / det.pixel_size)
        assert d["beam_center_y"][()] == pytest.approx(det.Sbeam / det.pixel_size)
        assert list(d["module/data_size"][()]) == [64, 64]
        # following the depends_on chain gives nanoBragg's pix0; in the imgCIF
        # (dxtbx) frame that is the DIALS_ORIGIN of nanoBragg's header
        R = lab_to_mcstas(det.beam, det.polar)
        corner = nexus_fmt.pixel_position(f, 0.0, 0.0)
        assert np.allclose(corner, R @ np.array(det.pix0) * 1000, atol=1e-9)
        assert np.allclose(np.diag([-1, 1, -1]) @ corner, det.dials_origin, atol=1e-9)
        far = nexus_fmt.pixel_position(f, 64.0, 64.0)
        lab_far = (np.array(det.pix0) + 64 * det.pixel_size * (np.array(det.fdet) + np.array(det.sdet)))
        assert np.allclose(far, R @ lab_far * 1000, atol=1e-9)
        assert np.allclose(R @ np.array(det.beam), [0, 0, 1])
        g = e["sample/transformations/phi"]
        assert e["sample/depends_on"][()].decode() == "/entry/sample/transformations/phi"
        assert g.attrs["transformation_type"] == "rotation" and g.attrs["units"] == "deg"
        assert np.allclose(g[()], [0.0, 0.5, 1.0])
        assert np.allclose(np.diag([-1, 1, -1]) @ g.attrs["vector"], [1, 0, 0])  # DIALS axis
        assert e["sample/transformations/phi_increment_set"][()] == pytest.approx(0.5)


def test_nonoise_series_stores_the_int_image(tmp_path, capsys):
    out = tmp_path / "nn"
    rc, o = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out,
                 "--format", "smv"] + BASE + ["-nonoise"], capsys)
    assert rc == 0, o.err
    # one int-image scale for the series: frame 1's, from a pilot render, and said so
    s1 = direct(["-phi", 0.0, "-osc", 1, "-seed", 7, "-nonoise"]).stats["intfile_scale"]
    own = direct(["-phi", 1.0, "-osc", 1, "-seed", 8, "-nonoise"]).stats["intfile_scale"]
    assert own != s1                     # frame 2 alone would have picked another scale
    assert "int-image scale of frame 1" in o.out and ("%g" % s1) in o.out
    ref = direct(["-phi", 1.0, "-osc", 1, "-seed", 8, "-nonoise", "-scale", repr(s1)])
    hdr, data = read_smv(out / "frame_00002.img")
    assert np.array_equal(data, ref.int_image)
    assert [r["stats"]["intfile_scale"] for r in frame_records(out)] == [s1, s1]


def test_series_dash_h_prints_help(capsys):
    assert series.main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: nbnumba-series")


def test_geometry_from_config_equals_result():
    cfg = nbnumba.parse_argv(BASE + ["-twotheta", "10", "-detector_rotx", "2"])
    res = nbnumba.simulate(cfg)
    assert FrameGeometry.from_config(cfg) == FrameGeometry.from_result(res)


def test_nexus_master_beam_centre_is_fast_slow_and_distance_is_along_the_beam(tmp_path):
    """NXmx's detector/beam_center_x, _y are the direct beam's (fast, slow)
    pixel from the first pixel's corner and detector/distance the sample to
    that beam centre (mm); transformations/det_z is the close distance (to
    the plane along its normal).  MOSFLM's -Xbeam 5 -Ybeam 8 with 0.2 mm
    pixels put the beam at fast (8 + 0.1) / 0.2 = 40.5, slow (5 + 0.1) / 0.2
    = 25.5; -detector_roty 20 about the beam spot keeps the distance at
    100 mm and brings the plane to 100 cos(20 deg) = 93.97 mm.  The other
    series tests have the beam on the diagonal and no tilt, where a swapped
    pair or the close distance read the same."""
    import math
    import h5py
    cfg = nbnumba.parse_argv(BASE + ["-Xbeam", "5", "-Ybeam", "8", "-detector_roty", "20"])
    geom = FrameGeometry.from_config(cfg)
    nexus_fmt.write_master(tmp_path / "master.h5", ["f.h5"], geom, [0.0], 0.1, False)
    with h5py.File(tmp_path / "master.h5", "r") as f:
        d = f["entry/instrument/detector"]
        assert d["beam_center_x"][()] == pytest.approx(40.5, rel=1e-12)
        assert d["beam_center_y"][()] == pytest.approx(25.5, rel=1e-12)
        assert d["distance"][()] == pytest.approx(100.0, rel=1e-12)
        assert d["transformations/det_z"][()] == pytest.approx(100.0 * math.cos(math.radians(20.0)),
                                                              rel=1e-12)


# ---------------------------------------------------------------------------
# serial sets and failures
# ---------------------------------------------------------------------------

def test_serial_set_with_invalid_jittered_cells(tmp_path, capsys):
    out = tmp_path / "ser"
    opts = ["--shots", 6, "--random-orientation", "--jitter-cell", 100, "--workers", 0,
            "--out", out, "--format", "smv,nexus"]
    cfg = nbnumba.parse_argv(BASE)
    plan = series.plan_frames(cfg, series.parse_series_argv([str(x) for x in opts]), 7)
    bad = {s.index for s in plan if min(s.cell) <= 0}
    assert bad and len(bad) <= 3         # seed 7 gives both kinds
    rc, o = run(opts + BASE, capsys)
    assert rc == 1
    for i in bad:
        assert "frame %d failed" % i in o.err and "shot %d" % i in o.err
        assert not (out / ("frame_%05d.img" % (i + 1))).exists()
    good = sorted(set(range(6)) - bad)
    for i in good:
        assert (out / ("frame_%05d.img" % (i + 1))).exists()
    assert not (out / "master.h5").exists()
    recs = manifest(out)
    assert sorted(r["frame"] for r in recs if r["type"] == "failed") == sorted(bad)
    assert sorted(r["frame"] for r in recs if r["type"] == "frame") == good
    assert "%d failed" % len(bad) in o.out
    # distinct orientations give distinct images
    imgs = [read_smv(out / ("frame_%05d.img" % (i + 1)))[1] for i in good[:2]]
    assert not np.array_equal(*imgs)


def test_injected_failure_reported_others_finish(tmp_path, capsys):
    out = tmp_path / "inj"
    rc, o = run(["--frames", 4, "--osc-per-frame", 1, "--workers", 0, "--out", out,
                 "--test-fail-frames", 2] + BASE, capsys)
    assert rc == 1
    assert "frame 2 failed" in o.err and "injected" in o.err
    assert sorted(os.listdir(out)) == ["frame_00001.img", "frame_00002.img", "frame_00004.img",
                                       "manifest.jsonl"]


def test_out_dir_under_a_regular_file_names_the_path(tmp_path, capsys):
    blocker = tmp_path / "plainfile"
    blocker.write_text("x")
    target = blocker / "out"
    rc, o = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", target] + BASE,
                capsys)
    assert rc == 2
    assert str(target) in o.err and "Not a directory" in o.err and o.err.count("\n") == 1


def test_unwritable_frame_file_names_the_file(tmp_path, capsys):
    out = tmp_path / "blocked"
    (out / "frame_00002.img").mkdir(parents=True)      # a directory where the file should go
    rc, o = run(["--frames", 3, "--osc-per-frame", 1, "--workers", 0, "--out", out] + BASE, capsys)
    assert rc == 1
    assert "frame 1 failed" in o.err and str(out / "frame_00002.img") in o.err
    assert (out / "frame_00003.img").exists()


def test_a_frame_whose_last_format_fails_leaves_none_of_its_files(tmp_path, capsys):
    """A frame's formats are written as one set: when its .h5 cannot be written
    the frame's .img and .cbf are not left behind either (they were: complete
    files of a frame the manifest calls failed), and --resume then writes all."""
    out = tmp_path / "blocked"
    (out / "frame_00002.h5").mkdir(parents=True)       # a directory where the file should go
    args = ["--frames", 3, "--osc-per-frame", 1, "--workers", 0, "--format", "smv,cbf,nexus",
            "--out", out] + BASE
    rc, o = run(args, capsys)
    assert rc == 1
    assert "frame 1 failed" in o.err and str(out / "frame_00002.h5") in o.err
    left = sorted(p.name for p in out.iterdir())
    assert left == ["frame_00001.cbf", "frame_00001.h5", "frame_00001.img", "frame_00002.h5",
                    "frame_00003.cbf", "frame_00003.h5", "frame_00003.img", "manifest.jsonl"]
    (out / "frame_00002.h5").rmdir()
    rc, o = run(args + ["--resume"], capsys)
    assert rc == 0 and "(1 rendered, 2 skipped, 0 failed)" in o.out, o.out + o.err
    assert {"frame_00002.img", "frame_00002.cbf", "frame_00002.h5"} <= {p.name for p in out.iterdir()}


def test_a_manifest_append_that_fails_leaves_no_torn_line(tmp_path, monkeypatch):
    """A full disk during an append: the line is cut off again (a torn line
    stayed, and the next record appended after it was unreadable, so lost),
    the error is one OutputFileError naming the manifest, and closing raises
    nothing (its buffer's retry raised OSError from close(): a traceback)."""
    import errno
    path = str(tmp_path / "manifest.jsonl")
    m = series.Manifest(path)
    m.open(truncate=True)
    m.append({"type": "run", "n": 1})
    before = open(path, "rb").read()
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 8:
            return real(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(series.os, "write", half_then_full)
    with pytest.raises(series.OutputFileError, match="manifest.jsonl': No space left on device"):
        m.append({"type": "frame", "frame": 0, "files": {"a": "b" * 40}})
    assert open(path, "rb").read() == before
    monkeypatch.setattr(series.os, "write", real)
    m.append({"type": "frame", "frame": 1})
    m.close()
    m.close()
    assert series.Manifest.read(path) == [{"type": "run", "n": 1}, {"type": "frame", "frame": 1}]


def test_a_directory_that_cannot_be_locked_is_written_unlocked(tmp_path, capsys, monkeypatch):
    """A file system without flock (ENOLCK on some NFS mounts): every run was
    refused as "another nbnumba-series run is writing"; it runs unlocked now,
    with one warning line.  A lock another run holds still refuses."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "nfs"
    rc, o = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out] + BASE, capsys)
    assert rc == 0, o.err
    assert o.err.count("warning: cannot lock '%s' on this file system (No locks available)" % out) == 1
    assert len(frame_records(out)) == 2

    def held(fd, op):
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")
    monkeypatch.setattr(fcntl, "flock", held)
    rc, o = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out, "--resume"]
                + BASE, capsys)
    assert rc == 2 and "another nbnumba-series run is writing to" in o.err


# ---------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------

def test_resume_after_interruption_gives_the_clean_files(tmp_path, capsys):
    args = ["--frames", 6, "--osc-per-frame", 0.25, "--workers", 0, "--format", "smv,cbf,nexus"]
    clean, part = tmp_path / "clean", tmp_path / "part"
    rc, _ = run(args + ["--out", clean] + BASE, capsys)
    assert rc == 0
    rc, o = run(args + ["--out", part, "--max-frames", 3] + BASE, capsys)
    assert rc == 3 and "--resume" in o.err
    assert len(frame_records(part)) == 3 and not (part / "master.h5").exists()
    # a recorded frame that was damaged afterwards, and a torn manifest line
    with open(part / "frame_00002.cbf", "r+b") as fh:
        fh.truncate(100)
    with open(part / "manifest.jsonl", "a") as fh:
        fh.write('{"type": "frame", "frame": 5, "fil')
    rc, o = run(args + ["--out", part] + BASE, capsys)
    assert rc == 2 and "--resume" in o.err          # refuses to mix runs silently
    rc, o = run(args + ["--out", part, "--resume"] + BASE, capsys)
    assert rc == 0, o.err
    assert "(4 rendered, 2 skipped, 0 failed)" in o.out
    assert shas(part) == shas(clean)
    recs = frame_records(part)
    assert sorted(r["frame"] for r in recs) == [0, 1, 1, 2, 3, 4, 5]   # frame 1 re-rendered
    # nothing left to do
    rc, o = run(args + ["--out", part, "--resume"] + BASE, capsys)
    assert rc == 0 and "(0 rendered, 6 skipped" in o.out
    assert shas(part) == shas(clean)


def test_resume_refuses_a_different_command(tmp_path, capsys):
    out = tmp_path / "r"
    rc, _ = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out] + BASE, capsys)
    assert rc == 0
    rc, o = run(["--frames", 2, "--osc-per-frame", 2, "--workers", 0, "--out", out, "--resume"]
                + BASE, capsys)
    assert rc == 2 and "different command" in o.err


def test_progress_bar_on_request(tmp_path, capsys):
    rc, o = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--progress",
                 "--out", tmp_path / "p"] + BASE, capsys)
    assert rc == 0 and "2/2" in o.err and "frame" in o.err


# ---------------------------------------------------------------------------
# Dask: worker count and worker death do not change a single bit
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_two_local_workers_match_in_process_bit_for_bit(tmp_path, capsys):
    args = ["--frames", 8, "--osc-per-frame", 0.5, "--format", "smv,cbf,nexus"] + BASE
    rc, o = run(args + ["--workers", 0, "--out", tmp_path / "serial"], capsys)
    assert rc == 0, o.err
    rc, o = run(args + ["--workers", 2, "--out", tmp_path / "dask"], capsys)
    assert rc == 0, o.err
    assert shas(tmp_path / "dask") == shas(tmp_path / "serial")
    pids = {r["pid"] for r in frame_records(tmp_path / "dask")}
    assert os.getpid() not in pids


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Port .* is already in use")
def test_worker_killed_mid_run_every_frame_written_once(tmp_path):
    from distributed import Client, LocalCluster
    n = 12
    args = ["--frames", n, "--osc-per-frame", 0.5, "--format", "smv,nexus"] + BASE
    assert series.main([str(a) for a in args + ["--workers", 0, "--out", tmp_path / "ref"]]) == 0

    out = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)          # {worker address: pid}
        assert len(pids) == 2
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-m", "nbnumba.series", "--scheduler", cluster.scheduler_address,
             "--test-delay", "0.3", "--out", str(out)] + [str(a) for a in args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        try:
            deadline = time.time() + 60
            while time.time() < deadline:
                if (out / "manifest.jsonl").exists() and len(frame_records(out)) >= 2:
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
            assert busy, "no worker is running a frame"
            victim = pids[busy[0]]               # kill a worker while it renders a frame
            done_before = len(frame_records(out))
            assert done_before < n
            os.kill(victim, signal.SIGKILL)
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr.decode()
    recs = frame_records(out)
    assert sorted(r["frame"] for r in recs) == list(range(n))       # each exactly once
    assert victim not in {r["pid"] for r in recs[done_before + 2:]}  # later frames elsewhere
    assert shas(out) == shas(tmp_path / "ref")
    assert b"%d/%d frames done" % (n, n) in stdout


def test_manifest_lines_are_json_with_sha(tmp_path, capsys):
    out = tmp_path / "m"
    rc, _ = run(["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out,
                 "--format", "smv,nexus"] + BASE, capsys)
    assert rc == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert recs[0]["type"] == "run" and recs[0]["base_seed"] == 7
    assert recs[-1]["type"] == "master"
    for r in recs[1:-1]:
        for name, sha in r["files"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
        assert r["params"]["seed"] == 7 + r["frame"]


# ---------------------------------------------------------------------------
# robustness: every failure is one line (exit 2) or a complete run
# ---------------------------------------------------------------------------

# a 32x32 detector: these tests are about the command, not the pixels
SMALL = [("32" if a == "64" else a) for a in BASE]
ROT2 = ["--frames", 2, "--osc-per-frame", 0.1, "--workers", 0]


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_overwrite_refuses_to_delete_an_input_of_the_run(tmp_path, capsys):
    out = tmp_path / "ov"
    rc, _ = run(ROT2 + ["--out", out] + SMALL, capsys)
    assert rc == 0
    before = shas(out, skip=())
    # the new run reads frame 1 of the old one as its mask; --overwrite deleted it
    # (and exited 0 with frames rendered from it)
    rc, o = run(ROT2 + ["--out", out, "--overwrite", "--prefix", "b"] + SMALL
                + ["-mask", out / "frame_00001.img"], capsys)
    assert rc == 2
    line = one_line(o.err)
    assert "--overwrite: refusing to remove" in line and str(out / "frame_00001.img") in line
    assert shas(out, skip=()) == before          # nothing removed, rendered or appended


@pytest.mark.parametrize("prefix", ["50%", "x%b", "r%%", "%d%s"])
def test_nexus_master_reads_the_frames_of_a_prefix_with_percent(prefix, tmp_path, capsys):
    # HDF5 reads a VDS source name as a pattern: '50%' pointed at missing files
    # (the master's data summed to 0), 'x%b' raised ValueError after every frame
    import h5py
    out = tmp_path / "nx"
    rc, o = run(ROT2 + ["--out", out, "--format", "nexus", "--prefix", prefix] + SMALL, capsys)
    assert rc == 0, o.err
    frames = [nexus_fmt.read_frame(out / ("%s_%05d.h5" % (prefix, i))) for i in (1, 2)]
    with h5py.File(out / "master.h5", "r") as f:
        stack = f["entry/data/data"][()]
    assert stack.shape == (2, 32, 32)
    assert stack.sum() > 0 and not np.array_equal(frames[0], frames[1])
    assert np.array_equal(stack[0], frames[0]) and np.array_equal(stack[1], frames[1])


def test_nexus_master_flags_the_pixels_outside_the_roi(tmp_path, capsys):
    # the frames hold 0 outside -roi, which the master's pixel_mask did not say
    # (only -mask's pixels were flagged): a processing program read them as counts
    import h5py
    out = tmp_path / "roi"
    rc, o = run(ROT2 + ["--out", out, "--format", "nexus"] + SMALL + ["-roi", "3", "20", "5", "12"],
                capsys)
    assert rc == 0, o.err
    with h5py.File(out / "master.h5", "r") as f:
        mask = f["entry/instrument/detector/pixel_mask"][()]
    inside = np.zeros((32, 32), dtype=bool)
    inside[5:13, 3:21] = True          # -roi xmin xmax ymin ymax: fast 3-20, slow 5-12
    assert np.all(mask[inside] == 0) and np.all(mask[~inside] == 1 << 8)


def test_cbf_pixels_outside_the_roi_hold_minus_one(tmp_path, capsys):
    # they hold 0 in the SMV file; with the pedestal taken off they read -40,
    # which no Pilatus reader knows: -1 marks a pixel without a measurement
    out = tmp_path / "roicbf"
    rc, o = run(ROT2 + ["--out", out, "--format", "smv,cbf"] + SMALL + ["-roi", "3", "20", "5", "12"],
                capsys)
    assert rc == 0, o.err
    inside = np.zeros((32, 32), dtype=bool)
    inside[5:13, 3:21] = True
    for n in (1, 2):
        meta, data = cbf_fmt.read_frame(out / ("frame_%05d.cbf" % n))
        _, smv = read_smv(out / ("frame_%05d.img" % n))
        assert np.all(smv[~inside] == 0) and np.all(data[~inside] == -1)
        assert np.array_equal(data[inside], smv[inside].astype(np.int64) - 40)
        assert data[inside].min() >= 0
        text = (out / ("frame_%05d.cbf" % n)).read_bytes()
        assert b"# Excluded_pixels: %d not rendered" % (~inside).sum() in text


@pytest.mark.parametrize("prefix, formats", [("é", "smv,cbf,nexus"), ("a\udcff b", "smv,cbf")])
def test_non_ascii_prefix_writes_every_format(prefix, formats, tmp_path, capsys):
    # fabio names the CIF data block after the file and writes it as ASCII:
    # every frame failed with a UnicodeEncodeError after rendering, so
    # smv,cbf,nexus wrote the .img alone
    out = tmp_path / "na"
    rc, o = run(["--frames", 1, "--osc-per-frame", 0.1, "--workers", 0, "--out", out,
                 "--format", formats, "--prefix", prefix] + SMALL, capsys)
    assert rc == 0, o.err
    exts = {"smv": ".img", "cbf": ".cbf", "nexus": ".h5"}
    for fmt in formats.split(","):
        assert (out / ("%s_00001%s" % (prefix, exts[fmt]))).is_file(), fmt
    cbf_path = out / ("%s_00001.cbf" % prefix)
    meta, data = cbf_fmt.read_frame(cbf_path)
    _, smv = read_smv(out / ("%s_00001.img" % prefix))
    assert data.shape == (32, 32) and data.sum() > 0
    assert np.array_equal(data, smv.astype(np.int64) - 40)     # the pedestal removed
    blocks = [ln for ln in cbf_path.read_bytes().split(b"\r\n") if ln.startswith(b"data_")]
    assert blocks == [b"data_" + cbf_fmt.data_block_file_name(prefix + "_00001").encode("ascii")]
    assert all(33 <= c <= 126 for c in blocks[0])


@pytest.mark.parametrize("jitter, flags", [
    (["--jitter-N", "1e306"], ["-N", "1000000", "-oversample", "1"]),   # N overflowed
    (["--jitter-cell", "1e307"], ["-cell", "1000", "1000", "1000", "90", "90", "90"]),
])
def test_jitter_out_of_range_refused_before_dir(jitter, flags, tmp_path, capsys):
    out = tmp_path / "st"
    rc, o = run(["--shots", 2, "--workers", 0, "--out", out] + jitter + SMALL + flags, capsys)
    assert rc == 2
    assert "must be <= 100" in one_line(o.err)      # (a RuntimeWarning would be a 2nd line)
    assert not out.exists()


def test_jitter_at_the_bound_gives_finite_values_and_per_shot_errors():
    # at 100 %, with -N at its C-int limit and a large cell: every drawn value is
    # a finite float (no numpy warning: they are errors here), and a shot whose
    # values are impossible is refused by frame_config alone (a failed frame)
    import warnings
    cfg = nbnumba.parse_argv(SMALL + ["-N", "2147483647", "-cell", "1e50", "1e50", "1e50",
                                      "90", "90", "90"])
    opts = series.parse_series_argv(["--shots", "40", "--jitter-N", "100", "--jitter-cell", "100",
                                     "--out", "d"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = series.plan_frames(cfg, opts, 7)
    assert all(np.isfinite(s.N).all() and np.isfinite(s.cell).all() for s in plan)
    job = series.Job(out_dir="", formats=(), prefix="", threads=None, device="cpu")
    too_many = [s for s in plan if max(s.N) > 2147483647 and min(s.N) >= 1 and min(s.cell) > 0]
    assert too_many                     # g > 0 at the C-int limit: more than -N holds
    with pytest.raises(nbnumba.NBError, match="more unit cells than -N can hold"):
        series.frame_config(cfg, too_many[0], job)


@pytest.mark.parametrize("damage", ["directory", "binary"])
@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]])
def test_damaged_manifest_is_one_line(damage, mode, tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    m = out / "manifest.jsonl"
    if damage == "directory":
        m.mkdir()       # was IsADirectoryError
    else:               # was UnicodeDecodeError
        m.write_bytes(bytes(range(256)) * 8)
    rc, o = run(ROT2 + ["--out", out] + mode + SMALL, capsys)
    assert rc == 2
    line = one_line(o.err)
    assert str(m) in line and "manifest" in line
    assert sorted(os.listdir(out)) == ["manifest.jsonl"]
    if damage == "binary":
        assert m.read_bytes() == bytes(range(256)) * 8     # not truncated by --overwrite


@pytest.mark.parametrize("seed", ["1e+30", "1000000000000000000000000000000", "true", '"7"', "0",
                                  "-5"])
def test_hand_edited_base_seed_is_one_line(seed, tmp_path, capsys):
    # 10**30 failed every frame with an OverflowError (one line per frame, exit 1),
    # true was read as seed 1
    out = tmp_path / "m"
    rc, o = run(ROT2 + ["--out", out] + SMALL, capsys)
    assert rc == 0, o.err
    m = out / "manifest.jsonl"
    lines = m.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["type"] == "run"
    lines[0] = json.dumps(head).replace('"base_seed": %d' % head["base_seed"], '"base_seed": ' + seed)
    m.write_text("\n".join(lines[:1]) + "\n")
    rc, o = run(ROT2 + ["--out", out, "--resume"] + SMALL, capsys)
    assert rc == 2
    assert "base_seed %s is not a seed this command writes" % seed in one_line(o.err)


def test_jitter_N_scales_the_counts_the_crystal_size_gives(tmp_path, capsys):
    # -xtal_size 0.001 mm gives ceil(1 um / edge) cells; --jitter-N was applied to
    # the default -N 1 and then lost to the size: the frame was the unjittered one
    # and the manifest said "N": [2, 1, 1]
    xtal = SMALL + ["-xtal_size", "0.001", "-oversample", "1"]
    cfg = nbnumba.parse_argv(xtal)
    base_N = series._engine_N(cfg)
    assert base_N == (143.0, 125.0, 112.0)      # 10000 A over 70, 80 and 90 A, rounded up
    rc, o = run(["--shots", 1, "--workers", 0, "--jitter-N", 50, "--out", tmp_path / "j"] + xtal,
                capsys)
    assert rc == 0, o.err
    rc, o = run(["--shots", 1, "--workers", 0, "--out", tmp_path / "plain"] + xtal, capsys)
    assert rc == 0, o.err
    g = np.random.default_rng(np.random.SeedSequence([7, 0]).spawn(3)[2]).standard_normal(3)
    want = [float(round(n * (1 + 0.5 * gi))) for n, gi in zip(base_N, g)]
    N = frame_records(tmp_path / "j")[0]["params"]["N"]
    assert N == want and N != list(base_N)
    # the frame is what nanoBragg renders with those counts (and no crystal size)
    ref = nbnumba.simulate(nbnumba.parse_argv(SMALL + ["-oversample", "1", "-Na", "%d" % N[0],
                                                       "-Nb", "%d" % N[1], "-Nc", "%d" % N[2]]))
    jit = read_smv(tmp_path / "j" / "frame_00001.img")[1]
    assert np.array_equal(jit, ref.noise_image)
    assert not np.array_equal(jit, read_smv(tmp_path / "plain" / "frame_00001.img")[1])


@pytest.mark.parametrize("flag, named", [
    (["-floatfile", "f.bin"], "-floatfile"), (["-intfile", "i.img"], "-intfile"),
    (["-noisefile", "n.img"], "-noisefile"), (["-pgmfile", "p.pgm"], "-pgmfile"),
    (["-floatimage", "f.bin"], "-floatimage"), (["-pgmscale", "2"], "-pgmscale"),
    (["-printout"], "-printout"), (["-trace_pixel", "1", "1"], "-trace_pixel"),
    (["-progress"], "-progress"),
    (["-c_parity", "-intfile_x", "i.img"], "-intfile_x"),     # nanoBragg.c's strstr match
])
def test_engine_flags_a_series_ignores_are_refused(flag, named, tmp_path, capsys, monkeypatch):
    # they exited 0 and the files they name were never written
    monkeypatch.chdir(tmp_path)
    rc, o = run(ROT2 + ["--out", "o"] + SMALL + flag, capsys)
    assert rc == 2
    assert one_line(o.err).startswith("nbnumba-series: error: %s is not used by nbnumba-series"
                                      % named)
    assert os.listdir(tmp_path) == []


def test_random_orientation_with_misset_is_refused(tmp_path, capsys):
    # the shot's random orientation replaced -misset 10 20 30 without a word
    rc, o = run(["--shots", 1, "--random-orientation", "--workers", 0, "--out", tmp_path / "r"]
                + SMALL + ["-misset", "10", "20", "30"], capsys)
    assert rc == 2 and "replaces -misset" in one_line(o.err)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("fmt", ["cbf", "nexus"])
def test_curved_detector_with_a_flat_header_format_is_refused(tmp_path, capsys, fmt):
    # NXmx and the CBF miniheader state a flat detector: the sphere's outer
    # pixels would be misplaced by a processing program, without a word
    pytest.importorskip({"cbf": "fabio", "nexus": "h5py"}[fmt])
    frame = ["--frames", 1, "--osc-per-frame", 1, "--workers", 0]
    rc, o = run(frame + ["--format", fmt, "--out", tmp_path / "c"] + SMALL + ["-curved_det"], capsys)
    assert rc == 2 and "-curved_det with --format %s" % fmt in one_line(o.err)
    assert not (tmp_path / "c").exists()
    # SMV keeps nanoBragg's flat header, as the C writes it
    rc, o = run(frame + ["--out", tmp_path / "s"] + SMALL + ["-curved_det"], capsys)
    assert rc == 0, o.err


def test_dash_h_is_help_only_as_an_option(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the values of --prefix and --out: a prefix and a directory (they printed the usage)
    rc, o = run(ROT2 + ["--out", "o", "--prefix", "-h"] + SMALL, capsys)
    assert rc == 0, o.err
    assert sorted(os.listdir("o")) == ["-h_00001.img", "-h_00002.img", "manifest.jsonl"]
    rc, o = run(ROT2 + ["--out=-h"] + SMALL, capsys)
    assert rc == 0, o.err
    assert sorted(os.listdir("-h")) == ["frame_00001.img", "frame_00002.img", "manifest.jsonl"]
    # an option anywhere, even after an error: the usage
    for argv in (["--frames", "2", "-h"], ["--bogus", "-help"], ["--frames", "x", "--help"]):
        rc, o = run(argv, capsys)
        assert rc == 0 and o.out.startswith("usage: nbnumba-series") and o.err == ""


def test_longest_prefix_that_fits_works(tmp_path, capsys):
    # 245 bytes: frame_00001.img's name is 255 bytes, and its temporary name is
    # shortened to fit too (211 bytes was the limit while it was not); 246 is refused
    out = tmp_path / "lp"
    rc, o = run(["--frames", 1, "--osc-per-frame", 0.1, "--workers", 0, "--out", out,
                 "--prefix", "p" * 245] + SMALL, capsys)
    assert rc == 0, o.err
    assert (out / ("p" * 245 + "_00001.img")).exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    rc, o = run(["--frames", 1, "--osc-per-frame", 0.1, "--workers", 0, "--out", tmp_path / "x",
                 "--prefix", "p" * 246] + SMALL, capsys)
    assert rc == 2 and "use at most 245 bytes" in one_line(o.err)
    assert not (tmp_path / "x").exists()


def _series_cmd(args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return [sys.executable, "-m", "nbnumba.series"] + [str(a) for a in args], env


def test_closed_stdout_pipe_does_not_stop_the_run(tmp_path):
    # `| true`: a BrokenPipeError traceback and exit 1 at the summary line; with
    # -nonoise at the pilot line, before any frame (an empty DIR was left)
    out = tmp_path / "bp"
    cmd, env = _series_cmd(ROT2 + ["--out", out] + SMALL + ["-nonoise"])
    r, w = os.pipe()
    os.close(r)                     # the reader is gone before the first line
    try:
        p = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()
    assert [r["frame"] for r in frame_records(out)] == [0, 1]
    assert (out / "frame_00002.img").exists()


@pytest.mark.parametrize("nonoise", [True, False])
def test_stdout_on_a_full_disk_is_one_line(nonoise, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "bf"
    cmd, env = _series_cmd(ROT2 + ["--out", out] + SMALL + (["-nonoise"] if nonoise else []))
    with open("/dev/full", "w") as full:
        p = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 2
    assert one_line(p.stderr.decode()) == ("nbnumba-series: error: cannot write to standard "
                                           "output: No space left on device")
    if nonoise:     # the pilot line comes before the manifest: the new DIR is removed
        assert not out.exists()
    else:           # the summary comes last: the frames stay, recorded in the manifest
        assert [r["frame"] for r in frame_records(out)] == [0, 1]
        for r in frame_records(out):
            for name, sha in r["files"].items():
                assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha


def _interrupt_mid_run(args, sig, tmp_path):
    """Start a series in its own process group, send ``sig`` to the whole group once
    a frame is recorded (as Ctrl-C in a terminal does), return (rc, stderr, DIR)."""
    out = tmp_path / "sig"
    cmd, env = _series_cmd(args + ["--out", out] + SMALL)
    # Ctrl-C as a terminal delivers it: a shell's background job (CI started with
    # `&`, no job control) inherits SIGINT ignored, and the series, like any
    # Unix program, keeps it so and ran to the end (exit 0); the child takes the
    # default disposition back, which Python turns into KeyboardInterrupt
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT,
                         start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 90
        while time.time() < deadline and p.poll() is None:
            if (out / "manifest.jsonl").exists() and frame_records(out):
                break
            time.sleep(0.05)
        assert p.poll() is None, p.communicate()
        os.killpg(p.pid, sig)
        _, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    deadline = time.time() + 30     # the workers went with the cluster
    while time.time() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("processes of the series are still running")
    return p.returncode, err.decode(), out


@pytest.mark.slow
def test_ctrl_c_with_dask_workers_prints_one_line(tmp_path):
    # each worker printed a CancelledError/KeyboardInterrupt traceback (~34 lines)
    rc, err, out = _interrupt_mid_run(["--workers", 1, "--frames", 10, "--osc-per-frame", 0.1,
                                       "--test-delay", 0.3], signal.SIGINT, tmp_path)
    assert rc == 130, err
    assert one_line(err).startswith("nbnumba-series: interrupted")
    assert 1 <= len(frame_records(out)) < 10


def test_sigterm_exits_143(tmp_path):
    # it was 130, the status of Ctrl-C; the CLI exits 143 for SIGTERM
    rc, err, out = _interrupt_mid_run(["--workers", 0, "--frames", 10, "--osc-per-frame", 0.1,
                                       "--test-delay", 0.3], signal.SIGTERM, tmp_path)
    assert rc == 143, err
    assert one_line(err).startswith("nbnumba-series: interrupted")
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_run_that_loses_the_lock_race_leaves_the_winners_dir(tmp_path, capsys, monkeypatch):
    """Two runs that both find DIR missing: the one that loses the lock must not
    remove the (still empty) DIR the winner created and holds (the winner could
    then not write its manifest)."""
    import fcntl
    out = tmp_path / "new" / "sub"
    real_makedirs = os.makedirs
    held = []

    def makedirs_then_other_run_locks(path, *a, **kw):
        real_makedirs(path, *a, **kw)
        if os.path.abspath(path) == str(out) and not held:
            fd = os.open(path, os.O_RDONLY)     # the other run wins the lock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(fd)

    monkeypatch.setattr(os, "makedirs", makedirs_then_other_run_locks)
    try:
        rc, cap = run(["--frames", 1, "--osc-per-frame", 1, "--workers", 0, "--out", out]
                      + BASE + ["-detpixels", "8"], capsys)
        assert rc == 2
        assert "another nbnumba-series run" in cap.err
        assert out.is_dir()         # the winner's folder is still there
        # and the winner's open folder is still DIR
        assert os.path.samestat(os.fstat(held[0]), os.stat(out))
    finally:
        for fd in held:
            os.close(fd)


def test_lock_on_a_folder_removed_meanwhile_is_refused(tmp_path):
    """A run that opened DIR just before another run removed it must not lock
    (and write into) the removed folder."""
    d = tmp_path / "d"
    d.mkdir()
    real_open = os.open

    def open_then_removed(path, flags, *a, **kw):
        fd = real_open(path, flags, *a, **kw)
        if os.path.abspath(path) == str(d):
            os.rmdir(d)
            d.mkdir()
        return fd

    import unittest.mock
    with unittest.mock.patch.object(series.os, "open", open_then_removed):
        with pytest.raises(series.NBError, match="removed"):
            series._lock_out_dir(str(d))


def test_overwrite_removes_frames_the_earlier_run_wrote_but_did_not_record(tmp_path, capsys):
    """A run killed between a frame's rename and its manifest line (or whose Dask
    worker finished a frame while the client was interrupted) leaves that frame
    unrecorded; --overwrite with fewer frames left it next to the new set."""
    out = tmp_path / "o"
    args = ["--osc-per-frame", 1, "--workers", 0, "--format", "smv,cbf", "--out", out]
    base = BASE + ["-detpixels", "8"]
    rc, _ = run(["--frames", 3] + args + base, capsys)
    assert rc == 0
    mpath = out / "manifest.jsonl"
    lines = mpath.read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln).get("frame") != 2]     # frame 3 unrecorded
    assert len(kept) == len(lines) - 1
    mpath.write_text("\n".join(kept) + "\n")
    (out / ".frame_00003.img.x1y2.tmp").write_bytes(b"torn")            # a killed writer's temp
    (out / "notes.txt").write_text("mine")
    rc, _ = run(["--frames", 2, "--overwrite"] + args + base + ["-N", "4"], capsys)
    assert rc == 0
    assert sorted(os.listdir(out)) == ["frame_00001.cbf", "frame_00001.img", "frame_00002.cbf",
                                       "frame_00002.img", "manifest.jsonl", "notes.txt"]


@pytest.mark.parametrize("case", ["manifest", "frame", "sticky"])
def test_overwrite_checks_what_the_run_must_write_before_it_removes_anything(case, capsys):
    """Another user's --overwrite in a shared DIR (mode 777) deleted the earlier run's
    frames, then could not write its manifest (root's, 0644: exit 2), which still
    listed the deleted frames.  Now every right the run needs is checked first: the
    manifest, and each file to be removed (this user may write it, as fopen would; in
    a sticky DIR, mode 1777, may unlink it): one line, nothing removed or created.
    As root the earlier run is root's and the new one nobody's; as another user the
    files are made read-only instead (a sticky DIR then holds only the user's own
    files, which --overwrite replaces)."""
    with open_folder("nb-ov-") as top:
        out = os.path.join(top, "o")
        argv = ROT2 + ["--out", out] + BASE + ["-detpixels", "8"]
        assert run(argv, capsys)[0] == 0
        # every module the overwrite path imports is loaded now: as nobody, Python
        # cannot import what it has not yet imported from root's folders
        assert run(argv + ["--overwrite"], capsys)[0] == 0
        os.chmod(out, 0o1777 if case == "sticky" else 0o777)
        mpath, f1, f2 = (os.path.join(out, n) for n in ("manifest.jsonl", "frame_00001.img",
                                                         "frame_00002.img"))
        root = os.geteuid() == 0
        if case == "manifest":
            bad, why = mpath, "cannot write '%s': Permission denied; nothing was removed"
            if not root:
                os.chmod(mpath, 0o444)          # root's 0644 file is read-only to nobody
        else:
            os.chmod(mpath, 0o666)
            for p in (f1, f2):
                os.chmod(p, 0o666 if case == "sticky" else 0o644)
            if root:        # frame 1 nobody's own: the old code removed it, then failed
                os.chown(f1, 65534, 65534)
            elif case == "frame":
                os.chmod(f2, 0o444)
            bad = f2
            why = ("cannot remove '%s': Permission denied (the file exists and this user may "
                   "not write it); nothing was removed" if case == "frame" else
                   "cannot remove '%s': Operation not permitted (the file is another user's, in a "
                   "folder with the sticky bit, '" + out + "', where only its owner may replace or "
                   "remove it); nothing was removed")
        before = shas(out, skip=())
        with as_an_ordinary_user():
            rc, o = run(argv + ["--overwrite"], capsys)
        if case == "sticky" and not root:       # the user's own files in a sticky DIR
            assert rc == 0, o.err
            assert sorted(os.listdir(out)) == sorted(before)
            assert len(frame_records(out)) == 2
        else:
            assert rc == 2
            assert shas(out, skip=()) == before     # nothing removed, created or appended
            assert one_line(o.err) == "nbnumba-series: error: --overwrite: " + why % bad


def test_resume_refuses_an_input_file_edited_since_the_run_started(tmp_path, capsys):
    """Same flags, but the -hkl file changed between the interrupted run and
    --resume: the resumed frames came from the new file next to the old ones."""
    hkl = tmp_path / "in.hkl"
    hkl.write_text("1 0 0 100\n")
    out = tmp_path / "o"
    argv = (["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out]
            + BASE + ["-detpixels", "8", "-hkl", hkl])
    rc, _ = run(argv + ["--max-frames", 1], capsys)
    assert rc == series.EXIT_STOPPED
    hkl.write_text("1 0 0 900\n")
    rc, cap = run(argv + ["--resume"], capsys)
    assert rc == 2
    assert "input file" in one_line(cap.err) and "changed" in cap.err
    assert len(frame_records(out)) == 1                 # nothing rendered from the edit
    hkl.write_text("1 0 0 100\n")                       # the original again: resumes
    rc, _ = run(argv + ["--resume"], capsys)
    assert rc == 0 and len(frame_records(out)) == 2


@pytest.mark.parametrize("version", [2, None, "1"])
def test_resume_refuses_another_manifest_version(version, tmp_path, capsys):
    """A manifest of another layout (a later nbnumba's, or a hand-edited header)
    was resumed as if it were this one's: its records decided which frames to skip."""
    out = tmp_path / "v"
    argv = ["--frames", 2, "--osc-per-frame", 1, "--workers", 0, "--out", out] + BASE
    rc, _ = run(argv + ["--max-frames", 1], capsys)
    assert rc == series.EXIT_STOPPED
    mpath = out / series.MANIFEST
    lines = mpath.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["type"] == "run" and head["version"] == series.MANIFEST_VERSION
    if version is None:
        del head["version"]
    else:
        head["version"] = version
    mpath.write_text("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    rc, cap = run(argv + ["--resume"], capsys)
    assert rc == 2
    assert "manifest version %s" % json.dumps(version) in one_line(cap.err)
    assert len(frame_records(out)) == 1                 # nothing rendered
    rc, _ = run(argv + ["--overwrite"], capsys)
    assert rc == 0 and len(frame_records(out)) == 2


def test_nonoise_pilot_skips_an_impossible_first_shot(tmp_path, capsys):
    """-nonoise takes the scale from a pilot render of frame 1; a serial set whose
    shot 0 has an impossible jittered cell exited 2 (no frame), though such a shot
    fails alone."""
    out = tmp_path / "s"
    argv = ["--shots", 6, "--jitter-cell", 100, "--workers", 0, "--out", out,
            "-cell", 70, 80, 90, 90, 90, 90, "-default_F", 100, "-N", 5, "-lambda", 1,
            "-distance", 100, "-detpixels", 8, "-pixel", 1, "-seed", 1, "-nonoise"]
    rc, cap = run(argv, capsys)
    assert rc == series.EXIT_FAILED
    assert "scale of frame 2" in cap.out
    failed = sorted(r["frame"] for r in manifest(out) if r.get("type") == "failed")
    assert failed[0] == 0 and len(frame_records(out)) == 6 - len(failed)


@pytest.mark.parametrize("seed", ["0", "-3"])
def test_a_seed_below_1_is_refused(seed, tmp_path, capsys):
    """Frame i draws its noise from seed + i, and nanoBragg's generator takes 0
    as 1: -seed 0 gave frames 0 and 1 the same Poisson draws; a negative seed
    is no reseed at all (the draws go on from the mosaic generator's table).
    Refused in one line, before anything is written."""
    out = tmp_path / "m"
    rc, o = run(ROT2 + ["--out", out] + SMALL + ["-seed", seed], capsys)
    assert rc == 2
    assert "-seed %s: a series needs a seed of 1 or more" % seed in one_line(o.err)
    assert not out.exists()


def test_a_working_directory_deeper_than_path_max(tmp_path, monkeypatch, capfd):
    """A working directory whose absolute name passes PATH_MAX (4.5 kB here): local
    workers start with a chdir to that name, which the kernel refuses; each died
    with a traceback, then "Nanny failed to start".  Refused in one line before DIR
    is created; --workers 0 (this process) still renders there."""
    out = tmp_path / "o"
    monkeypatch.chdir(tmp_path)
    for _ in range(45):
        os.mkdir("d" * 100)
        os.chdir("d" * 100)
    assert len(os.getcwd()) > 4096
    rc, _ = run(ROT2[:-2] + ["--out", out, "--workers", 1] + SMALL)
    err = capfd.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert ("local workers cannot start in the working directory, whose absolute name "
            "(%d bytes) cannot be used: File name too long" % len(os.fsencode(os.getcwd()))
            in one_line(err))
    assert not out.exists()
    rc, _ = run(ROT2[:-2] + ["--out", out, "--workers", 0] + SMALL)
    assert rc == 0 and len(frame_records(out)) == 2


def test_an_append_only_dir_is_refused_before_any_frame(tmp_path, capsys, monkeypatch):
    """In a DIR with chattr +a every frame rendered, then failed at its rename
    (exit 1), and left its temporary there, which no one but root with chattr -a
    can remove.  Now one line before the first frame, and DIR stays empty."""
    from nbnumba.testing.chattr import APPEND, flagged
    out = tmp_path / "o"
    out.mkdir()
    with flagged(out, APPEND, monkeypatch):
        rc, o = run(ROT2 + ["--out", out] + BASE + ["-detpixels", "8"], capsys)
        assert os.listdir(out) == []
    assert rc == 2
    assert one_line(o.err) == ("nbnumba-series: error: cannot write the frames: Operation not "
                               "permitted (the folder '%s' is append-only (chattr +a): files may be "
                               "added to it but not renamed or removed, and each output is written "
                               "under a temporary name, then renamed into place)" % out)
