"""Readers and writers of nbnumba.io on inputs that used to escape as bare
exceptions, numpy warnings or files that do not read back (docs/reliability.md,
"What was tried").  A reader returns consistent data or raises one
InputFileError naming the file (and line or record); a writer writes a file
that reads back or raises one IOArgumentError (an NBError, and a ValueError as
the old checks were) naming the argument."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import nbnumba.cli
from nbnumba.errors import ConfigError, InputFileError, NBError
from nbnumba.flags import parse_argv
from nbnumba.io import cbf, nexus
from nbnumba.io._args import IOArgumentError
from nbnumba.io.floatimage import read_float_image, write_float_image
from nbnumba.io.hkl import parse_hkl, read_fdump, read_hkl
from nbnumba.io.mat import read_mosflm_mat
from nbnumba.io.pgm import pgm_bytes_from_float, read_pgm, write_pgm
from nbnumba.io.smv import read_smv, smv_header_text, write_smv
from nbnumba.io.textcols import read_text_columns
from nbnumba.model import build_model

RUN = "-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -distance 100 -detpixels 16".split()


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    # "never a numpy warning": any warning a reader or writer lets out fails the test
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _cli(argv, cwd, monkeypatch, capsys):
    monkeypatch.chdir(cwd)
    rc = nbnumba.cli.main(list(argv))
    err = capsys.readouterr().err
    return rc, err


# ---------------------------------------------------------------------------
# finding 3: Miller indices beyond a C int (HKL and Fdump.bin)
# ---------------------------------------------------------------------------

def test_hkl_index_beyond_c_int_is_refused_with_its_line():
    # was: numpy "invalid value encountered in cast", then an OverflowError traceback
    with pytest.raises(InputFileError, match=r"^big\.hkl line 3: Miller index h = 1e\+19 is "
                                             r"outside nanoBragg's int range"):
        parse_hkl(b"0 0 0 1\n\n1e19 0 0 100\n", "big.hkl")
    with pytest.raises(InputFileError, match=r"line 1: Miller index l = -2\.14748e\+09"):
        parse_hkl(b"0 0 -2147483649 1\n", "x.hkl")
    # the extremes of a C int are still indices (one record: a 2x2x2 grid),
    # and C's truncation toward zero brings 2147483647.7 back into range
    g = parse_hkl(b"2147483647.7 -2147483648 0 5\n", "edge.hkl")
    assert (g.h_min, g.h_max, g.k_min, g.k_max) == (2147483647, 2147483647, -2147483648, -2147483648)
    assert g.F[0, 0, 0] == 5.0 and g.F.shape == (2, 2, 2)


def test_fdump_header_beyond_c_int_is_refused(tmp_path):
    # was: read as Python ints, then an OverflowError traceback in model.kernel_args
    p = tmp_path / "Fdump.bin"
    p.write_bytes(b"0 0 0 0 -5 99999999999999999999\n\f" + b"\0" * 64)
    with pytest.raises(InputFileError, match=r"Fdump\.bin: Fdump header: l_max = "
                                             r"99999999999999999999 is outside"):
        read_fdump(p)


def test_cli_exits_2_for_huge_indices_in_hkl_and_fdump(tmp_path, monkeypatch, capsys):
    (tmp_path / "big.hkl").write_text("1e19 0 0 100\n")
    rc, err = _cli(["-hkl", "big.hkl"] + RUN, tmp_path, monkeypatch, capsys)
    assert rc == 2 and err.startswith("nbnumba: error: big.hkl line 1: Miller index h = 1e+19")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # the cache of a run without -hkl: the same refusal, from the header
    (tmp_path / "Fdump.bin").write_bytes(b"99999999999999999999 99999999999999999999 0 0 0 0\n\f"
                                         + b"\0" * 64)
    rc, err = _cli(RUN, tmp_path, monkeypatch, capsys)
    assert rc == 2 and "Fdump.bin: Fdump header: h_min = 99999999999999999999" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------
# finding 4: non-finite F, refused in the default mode, read under -c_parity
# ---------------------------------------------------------------------------

def test_nonfinite_F_in_hkl_refused_by_default_read_when_allowed():
    data = b"0 0 0 1\n\n1 2 3 nan\n"
    with pytest.raises(InputFileError, match=r"^x\.hkl line 3: structure factor F = nan is not "
                                             r"finite \(h k l = 1 2 3\)"):
        parse_hkl(data, "x.hkl")
    with pytest.raises(InputFileError, match=r"line 1: structure factor F = -inf"):
        parse_hkl(b"1 1 1 -1e400\n", "x.hkl")     # beyond double range reads as -inf
    g = parse_hkl(data, "x.hkl", allow_nonfinite_F=True)
    assert np.isnan(g.F[1, 2, 3]) and g.F[0, 0, 0] == 1.0


def test_nonfinite_F_in_fdump_names_the_double_and_its_hkl(tmp_path):
    F = np.zeros((3, 2, 2))
    F[2, 1, 0] = np.inf        # h = 1 + 2, k = -1 + 1, l = 0
    p = tmp_path / "Fdump.bin"
    p.write_bytes(b"1 2 -1 -1 0 0\n\f" + F.astype("<f8").tobytes())
    with pytest.raises(InputFileError, match=r"Fdump\.bin: double 11 of the F grid "
                                             r"\(h k l = 3 0 0, byte 95\) is inf"):
        read_fdump(p)
    assert np.isinf(read_fdump(p, allow_nonfinite_F=True).F[2, 1, 0])


def test_model_refuses_nan_F_by_default_and_reads_it_under_c_parity(tmp_path):
    # the default mode's message names the file and line (the run used to go on
    # and blame the geometry for the NaN image); -c_parity reads the NaN as
    # nanoBragg.c's %lg does, so its F grid holds it
    (tmp_path / "n.hkl").write_text("0 0 0 nan\n1 0 0 5\n")
    with pytest.raises(InputFileError, match=r"n\.hkl line 1: structure factor F = nan"):
        build_model(parse_argv(["-hkl", "n.hkl"] + RUN, cwd=tmp_path))
    m = build_model(parse_argv(["-hkl", "n.hkl", "-c_parity"] + RUN, cwd=tmp_path))
    assert np.isnan(m.Fhkl[0, 0, 0]) and m.Fhkl[1, 0, 0] == 5.0
    # the same for the Fdump.bin cache of a run without -hkl
    (tmp_path / "Fdump.bin").write_bytes(b"0 0 0 0 0 0\n\f" + np.full(8, np.nan).tobytes())
    with pytest.raises(InputFileError, match=r"Fdump\.bin: double 1 of the F grid"):
        build_model(parse_argv(RUN, cwd=tmp_path))
    m = build_model(parse_argv(RUN + ["-c_parity"], cwd=tmp_path))
    assert np.isnan(m.Fhkl).all()


# ---------------------------------------------------------------------------
# finding 9: HKL messages that lost their reason; CR-only files; line numbers
# ---------------------------------------------------------------------------

def test_hkl_with_no_record_says_why():
    # was only "no 'h k l F' records found (not enough HKL indices)"
    with pytest.raises(InputFileError) as ei:
        parse_hkl(b"1 2 3 4 5\n", "one.hkl")
    assert str(ei.value) == ("one.hkl: no 'h k l F' records found (not enough HKL indices): "
                             "line 1 is '1 2 3 4 5', not 'h k l F'")


def test_cr_only_hkl_is_read_record_by_record_like_c(tmp_path):
    # nanoBragg.c's fscanf reads CR as whitespace: every record of a classic
    # Mac OS file counts; line numbers are the CR-separated lines
    p = tmp_path / "mac.hkl"
    p.write_bytes(b"1 2 3 4\r5 6 7 8\r\r-1 0 0 2.5\r")
    g = read_hkl(p)
    assert g.hkls == 3 and (g.h_min, g.h_max, g.k_min, g.k_max) == (-1, 5, 0, 6)
    assert g.F[1 + 1, 2, 3 - 0] == 4.0 and g.F[5 + 1, 6, 7] == 8.0 and g.F[0, 0, 0] == 2.5
    with pytest.raises(InputFileError, match=r"mac\.hkl line 2: expected 'h k l F', got '5 6 x 8'"):
        parse_hkl(b"1 2 3 4\r5 6 x 8\r9 9 9 9\r", "mac.hkl")
    # a CR inside an LF file: the message says what is going on
    with pytest.raises(InputFileError, match=r"line 1: .*carriage return \(CR\) inside the line"):
        parse_hkl(b"1 2 3 4\r5 6 7 8\n9 9 9 9\n", "mixed.hkl")
    # but a CR at a line's start or end is whitespace (LFCR, CRLF line ends): no such hint
    with pytest.raises(InputFileError) as e:
        parse_hkl(b"1 2 3 4\n\rEND\n\r2 2 2 2\n", "lfcr.hkl")
    assert str(e.value) == "lfcr.hkl line 2: expected 'h k l F', got 'END'"


def test_nonint_warning_gives_the_files_line():
    # was "at line 0" (C's 0-based record count) for the file's line 2
    g = parse_hkl(b"\n1.5 0 0 4\n2 0.25 0 1\n", "w.hkl")
    assert g.warnings == ["WARNING: non-integer value for h (1.5) at line 2",
                          "WARNING: non-integer value for k (0.25) at line 3"]


# ---------------------------------------------------------------------------
# finding 7: cbf / nexus frame readers
# ---------------------------------------------------------------------------

def test_frame_readers_name_the_file(tmp_path):
    pytest.importorskip("fabio")
    h5py = pytest.importorskip("h5py")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world garbage" * 10)
    for reader, missing in ((cbf.read_frame, "nope.cbf"), (nexus.read_frame, "nope.h5")):
        with pytest.raises(InputFileError, match=r"nope\.(cbf|h5): cannot read: No such file"):
            reader(tmp_path / missing)
    # was AttributeError from inside fabio, and h5py's "file signature not found"
    with pytest.raises(InputFileError, match=r"junk\.bin: not a CBF file fabio can read"):
        cbf.read_frame(junk)
    with pytest.raises(InputFileError, match=r"junk\.bin: not an HDF5 file"):
        nexus.read_frame(junk)
    # an SMV file fabio opens is not a CBF frame
    smv = tmp_path / "x.img"
    write_smv(smv, np.ones((2, 3), np.uint16), {"HEADER_BYTES": "512"})
    with pytest.raises(InputFileError, match=r"x\.img: not a CBF file \(fabio reads it as"):
        cbf.read_frame(smv)
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()                        # was KeyError
    with pytest.raises(InputFileError, match=r"empty\.h5: no dataset /entry/data/data"):
        nexus.read_frame(empty)
    with h5py.File(empty, "w") as f:
        f.create_dataset("entry/data/data", data=np.zeros((0, 2, 2)))   # was IndexError
    with pytest.raises(InputFileError, match=r"has shape \(0, 2, 2\), expected"):
        nexus.read_frame(empty)
    # the writer refuses the frame the reader would refuse; a real one reads back
    from nbnumba.io.frames import FrameInfo
    info = FrameInfo(index=0, number=1, phi_start=0.0, phi_range=0.1, exposure=1.0, noise=False)
    with pytest.raises(IOArgumentError, match=r"frame image must be 2-D \(S, F\) with pixels"):
        nexus.write_frame(tmp_path / "f0.h5", np.zeros((0, 2), np.uint16), info)
    nexus.write_frame(tmp_path / "f1.h5", IMG, info)
    assert np.array_equal(nexus.read_frame(tmp_path / "f1.h5"), IMG)


def test_miniheader_number_beyond_double_range_names_the_line():
    # was OverflowError from int(inf)
    with pytest.raises(InputFileError, match=r"^f\.cbf: miniheader line '# Count_cutoff 1e400 "
                                             r"counts': Count_cutoff is beyond double range"):
        cbf.parse_miniheader("# Wavelength 1.0 A\r\n# Count_cutoff 1e400 counts", "f.cbf")
    assert cbf.parse_miniheader("# Count_cutoff 65495 counts")["count_cutoff"] == 65495


# ---------------------------------------------------------------------------
# finding 8: writers
# ---------------------------------------------------------------------------

FIELDS = [("HEADER_BYTES", "512"), ("DIM", "2"), ("BYTE_ORDER", "little_endian"),
          ("TYPE", "unsigned_short"), ("SIZE1", "3"), ("SIZE2", "2")]
IMG = np.arange(6, dtype=np.uint16).reshape(2, 3)


@pytest.mark.parametrize("key,value,needle", [
    ("BEAMLINE", "fake;\nSIZE1=1;\nSIZE2=1", "value of BEAMLINE holds ';'"),   # read back as (1, 1)
    ("BEAMLINE", "a\nSIZE1=1", "value of BEAMLINE holds '\\\\n'"),
    ("BEAMLINE", "a}b", "value of BEAMLINE holds '}'"),
    ("BEAMLINE", "a\0b", "value of BEAMLINE holds '\\\\x00'"),
    ("BEAMLINE", "x=1", "value of BEAMLINE holds '='"),
    ("BEAMLINE", "\u20ac", "value of BEAMLINE holds '\u20ac', which is not latin-1"),   # was UnicodeEncodeError
    ("BAD KEY", "1", "key 'BAD KEY' must be"),
    ("BEAMLINE", None, "value of BEAMLINE must be a str or a number, not NoneType"),
    ("BEAMLINE", "SIZE1 is here", "SIZE1 reads back as 0, not 3"),     # ValueOf's substring match
])
def test_write_smv_refuses_values_that_break_the_header(tmp_path, key, value, needle):
    p = tmp_path / "inj.img"
    with pytest.raises(IOArgumentError, match=needle):
        write_smv(p, IMG, FIELDS + [(key, value)])
    assert not p.exists()


def test_write_smv_adds_what_read_smv_needs_and_accepts_paths_and_byte_orders(tmp_path):
    # fields without HEADER_BYTES, BYTE_ORDER, SIZE1 and SIZE2 used to give a
    # file read_smv refuses; the writer knows their only right values
    p = tmp_path / "bare.img"
    write_smv(p, IMG, [("BEAMLINE", "fake")])
    header, data = read_smv(p)
    assert np.array_equal(data, IMG)
    assert list(header) == ["HEADER_BYTES", "BYTE_ORDER", "SIZE1", "SIZE2", "BEAMLINE"]
    # a big-endian uint16 array is uint16 (was "must be uint16, got >u2")
    write_smv(p, IMG.astype(">u2"), FIELDS)
    assert np.array_equal(read_smv(p)[1], IMG)
    # a bytes path, as open() takes it (was TypeError)
    write_smv(bytes(tmp_path / "b.img"), IMG, FIELDS)
    assert np.array_equal(read_smv(tmp_path / "b.img")[1], IMG)
    # numbers are written as text
    write_smv(p, IMG, FIELDS + [("TIME", 1.5)])
    assert read_smv(p)[0]["TIME"] == "1.5"
    # a HEADER_BYTES of 1024 pads the header to 1024 bytes (it used to pad to 512)
    write_smv(p, IMG, [("HEADER_BYTES", "1024")] + FIELDS[1:])
    header, data = read_smv(p)
    assert header.size == 1024 and p.stat().st_size == 1024 + 12 and np.array_equal(data, IMG)


def test_write_smv_argument_errors_are_one_line_nberrors(tmp_path):
    p = tmp_path / "x.img"
    for args, needle in [
        ((IMG, None), "fields must be a mapping or a sequence"),          # was TypeError
        ((np.zeros((0, 3), np.uint16), FIELDS), r"no pixels \(shape \(0, 3\)\)"),
        ((IMG, FIELDS + [("SIZE1", "4")]), "SIZE1=4 does not match"),
        ((IMG.astype(np.int32), FIELDS), "must be uint16, got int32"),
        ((IMG, [("HEADER_BYTES", "abc")]), "HEADER_BYTES must be a whole number"),
        ((IMG, [("BYTE_ORDER", "big_endian")]), "BYTE_ORDER must say so"),
    ]:
        with pytest.raises(IOArgumentError, match=needle) as ei:
            write_smv(p, *args)
        # an NBError for the CLI and the API, a ValueError for old callers
        assert isinstance(ei.value, ConfigError) and isinstance(ei.value, ValueError)
        assert "\n" not in str(ei.value)
    with pytest.raises(IOArgumentError, match="header_overflow must be"):
        smv_header_text(FIELDS, header_overflow="nope")
    with pytest.raises(IOArgumentError, match="path must be a file name"):
        write_smv(3.5, IMG, FIELDS)
    assert list(tmp_path.iterdir()) == []


def test_write_float_image_refuses_values_float32_cannot_hold(tmp_path):
    p = tmp_path / "f.bin"
    # was: numpy's overflow warning and inf in the file
    with pytest.raises(IOArgumentError, match=r"pixel \(1, 0\) = -1e\+300 is beyond float32"):
        write_float_image(p, np.array([[1.0, 2.0], [-1e300, 0.0]]))
    with pytest.raises(IOArgumentError, match="must hold real numbers, got complex128"):
        write_float_image(p, np.array([[1j]]))                 # was ComplexWarning
    class Tensor:       # what the check reads of a torch tensor (importing torch: 2.5 s)
        requires_grad = True
    with pytest.raises(IOArgumentError, match="requires grad: pass its .detach()"):
        write_float_image(p, Tensor())              # a torch tensor: was a RuntimeError
    assert not p.exists()
    # NaN and inf pixels (a -c_parity image) and float64 within range are written as they are
    a = np.array([[np.nan, np.inf], [3.4e38, -0.5]])
    write_float_image(p, a)
    back = read_float_image(p, (2, 2))
    assert np.isnan(back[0, 0]) and back[0, 1] == np.inf and back[1, 0] == np.float32(3.4e38)


def test_read_float_image_checks_shape(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"\0" * 16)
    for shape in [(-1, -4), (0, 4), (2.5, 2), (4,), "ab", None]:
        with pytest.raises(IOArgumentError, match="shape must be"):   # was a bare ValueError
            read_float_image(p, shape)
    assert read_float_image(p, (np.int64(2), 2)).shape == (2, 2)


def test_pgm_arguments(tmp_path):
    img = np.ones((2, 2))
    with pytest.raises(IOArgumentError, match=r"roi must be 4 whole numbers .* got \(0,\)"):
        pgm_bytes_from_float(img, 1.0, roi=(0,))
    with pytest.raises(IOArgumentError, match="pgm_scale must be a number, got 'abc'"):
        pgm_bytes_from_float(img, "abc")
    with pytest.raises(IOArgumentError, match="pgm_scale must be a number"):
        write_pgm(tmp_path / "a.pgm", np.zeros((2, 2), np.uint8), None)
    with pytest.raises(IOArgumentError, match="no pixels"):
        write_pgm(tmp_path / "a.pgm", np.zeros((0, 2), np.uint8), 1.0)
    assert list(tmp_path.iterdir()) == []
    # inf * 0 is NaN, stored as 0 as the C's conversion does, without numpy's warning
    assert pgm_bytes_from_float(np.array([[np.inf, 1.0]]), 0.0).tolist() == [[0, 0]]
    write_pgm(bytes(tmp_path / "b.pgm"), np.full((1, 2), 7, np.uint8), 2)
    assert read_pgm(tmp_path / "b.pgm")[0].tolist() == [[7, 7]]


def test_io_argument_error_is_an_nberror():
    assert issubclass(IOArgumentError, NBError) and IOArgumentError.exit_code == 2


def test_fdump_writer_refuses_bounds_read_fdump_would_refuse(tmp_path):
    from nbnumba.io.hkl import HKLGrid, write_fdump
    big = HKLGrid(1 << 31, 1 << 31, 0, 0, 0, 0, np.zeros((2, 2, 2)), 1)
    with pytest.raises(IOArgumentError, match=r"HKLGrid\.h_min must be a whole number within a C int"):
        write_fdump(tmp_path / "Fdump.bin", big)
    frac = HKLGrid(0, 0, 0.5, 0, 0, 0, np.zeros((2, 2, 2)), 1)     # "%d" used to truncate it
    with pytest.raises(IOArgumentError, match=r"HKLGrid\.k_min"):
        write_fdump(tmp_path / "Fdump.bin", frac)
    assert list(tmp_path.iterdir()) == []


def test_pgm_roi_takes_whole_numbers_of_any_type():
    img = np.arange(4.0).reshape(2, 2)
    assert pgm_bytes_from_float(img, 1.0, roi=(1.0, np.int64(1), 0, 1)).tolist() == [[0, 1], [0, 3]]
    for roi in [(0.5, 1, 0, 1), (0, np.nan, 0, 1), (0, 1, 0, "1"), 5]:
        with pytest.raises(IOArgumentError, match="roi must be 4 whole numbers"):
            pgm_bytes_from_float(img, 1.0, roi=roi)


def test_every_text_and_image_reader_names_the_file_it_cannot_read(tmp_path):
    """One message for a missing file, whichever reader; a bytes path is named
    as text (read_mosflm_mat and read_text_columns wrote "b'...'"), and a path
    of the wrong type is an IOArgumentError (they raised TypeError)."""
    readers = (read_mosflm_mat, lambda p: read_text_columns(p, 3), read_hkl, read_fdump,
               read_pgm, read_smv)
    missing = tmp_path / "nope"
    for read in readers:
        for p in (missing, str(missing), bytes(missing)):
            with pytest.raises(InputFileError) as e:
                read(p)
            assert str(e.value) == "%s: cannot read: No such file or directory" % missing
        with pytest.raises(IOArgumentError, match="must be a file name"):
            read(3.5)


def _misfed_files(d):
    """Files of the kinds people give -hkl, -mat or -mask by mistake, written
    by the libraries that make them."""
    import gzip
    import json

    import gemmi
    import h5py
    m = gemmi.Mtz(with_base=True)
    m.spacegroup = gemmi.find_spacegroup_by_name("P 1")
    m.set_cell_for_all(gemmi.UnitCell(100, 100, 100, 90, 90, 90))
    m.add_dataset("d")
    m.add_column("FP", "F")
    m.set_data(np.array([[1, 0, 0, 10.0], [0, 1, 0, 20.0]], dtype=np.float32))
    m.write_to_file(str(d / "data.mtz"))
    (d / "model.pdb").write_text(
        "CRYST1  100.000  100.000  100.000  90.00  90.00  90.00 P 1           1\n"
        "ATOM      1  CA  ALA A   1      11.104   6.134  -6.504  1.00  0.00           C\nEND\n")
    st = gemmi.read_structure(str(d / "model.pdb"))
    st.setup_entities()
    st.make_mmcif_document().write_file(str(d / "model.cif"))
    (d / "exp.expt").write_text(json.dumps({"__id__": "ExperimentList", "experiment": [{}]}, indent=2))
    (d / "F.hkl.gz").write_bytes(gzip.compress(b"1 0 0 10\n"))
    with h5py.File(d / "frame.h5", "w") as f:
        f["entry/data/data"] = np.zeros((1, 4, 4), np.uint16)


@pytest.mark.parametrize("flag, name, says", [
    ("-hkl", "data.mtz", "data.mtz: no 'h k l F' records found; it is an MTZ reflection file: "
                         "'nbnumba-sf data.mtz -o P1.hkl' writes its amplitudes as an 'h k l F' table, "
                         "expanded to P1"),
    ("-hkl", "model.pdb", "model.pdb line 1: expected 'h k l F', got 'CRYST1 .*'; it is an atomic "
                          r"model \(PDB or mmCIF\): 'nbnumba-sf model.pdb -dmin 2 -o P1.hkl' computes "
                          "its structure factors"),
    ("-hkl", "model.cif", "model.cif line 1: expected 'h k l F', got 'data_.*'; it is an atomic model"),
    ("-hkl", "F.hkl.gz", "F.hkl.gz: no 'h k l F' records found; it is gzip-compressed: decompress it first"),
    ("-hkl", "exp.expt", r"exp.expt line 1: expected 'h k l F', got '{'; it is a DIALS experiment list, "
                         r"not structure factors \('nbnumba-expt exp.expt' gives its flags\)"),
    ("-mat", "exp.expt", "exp.expt line 1: expected a number of the orientation matrix, got '{'; it is a "
                         "DIALS experiment list: 'nbnumba-expt exp.expt --mat-out A.mat' writes its crystal"),
    ("-mat", "data.mtz", "data.mtz line 1: .* got 'MTZ'; it is an MTZ reflection file, not a MOSFLM "
                         "orientation matrix"),
    ("-mask", "frame.h5", r"frame.h5: not an SMV/ADSC file \(header does not start with '{'\); it is an "
                          r"HDF5 \(NeXus\) file: -img and -mask read SMV \(ADSC\) images only"),
    ("-img", "data.mtz", "data.mtz: not an SMV/ADSC file .*; it is an MTZ reflection file: -img and -mask"),
    ("-sourcefile", "model.pdb", "model.pdb line 1: column 1 is not a number: 'CRYST1'; it is an atomic "
                                 r"model \(PDB or mmCIF\), not a table of numbers"),
])
@pytest.mark.parametrize("parity", [False, True])
def test_a_file_of_another_kind_is_named_in_the_one_error_line(tmp_path, monkeypatch, capsys, flag,
                                                               name, says, parity):
    """The message said only what the file is not ("no 'h k l F' records
    found ... line 1 is 'MTZ !\\x00\\x00...'"); it now says what it is and
    what makes the wanted file of it."""
    monkeypatch.chdir(tmp_path)
    _misfed_files(tmp_path)
    argv = RUN + ["-nonoise", "-nopgm", flag, name] + (["-c_parity"] if parity else [])
    if flag != "-hkl":
        argv += ["-default_F", "1"]
    assert nbnumba.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert re.match("nbnumba: error: " + says, err), err


def test_kind_of_tells_the_formats_apart():
    from nbnumba.io.sniff import kind_of
    smv = smv_header_text({"HEADER_BYTES": 512, "DIM": 2, "SIZE1": 4, "SIZE2": 4})
    assert [kind_of(b) for b in (b"MTZ \x00\x01", b"\x89HDF\r\n\x1a\n", b"\x1f\x8b\x08", b"BZh91AY",
                                 b"II*\x00", b"###CBF: VERSION 1.5", b"P5\n4 4\n255\n", smv,
                                 b'{\n  "__id__": "ExperimentList"', b"data_x\nloop_\n_refln.index_h\n",
                                 b"HEADER    x\nATOM      1", b"REMARK 1\n1 0 0 1\n", b"1 0 0 10.0\n",
                                 b"", b"{ }")] == \
        ["mtz", "hdf5", "gzip", "bzip2", "tiff", "cbf", "pgm", "smv", "expt", "refln_cif", "model", None,
         None, None, None]


def test_reader_and_writer_arguments_of_the_wrong_kind_are_one_line_nberrors(tmp_path):
    """An ad-hoc scan of nbnumba.io's readers and writers: each call below was a
    TypeError, AttributeError, IndexError, ValueError or OverflowError from
    deep inside (an array's truth value, float() of a list, .h_min of a list).
    Nothing is written."""
    from nbnumba.io.hkl import fdump_bytes, write_fdump
    (tmp_path / "a.hkl").write_text("0 0 0 5\n1 0 0 3\n")
    grid = read_hkl(tmp_path / "a.hkl")
    write_fdump(tmp_path / "F.bin", grid)
    img = np.zeros((2, 2), np.uint16)
    fields = {"SIZE1": "2", "SIZE2": "2"}
    for call, kind, msg in [
            (lambda: read_hkl(tmp_path / "a.hkl", default_F=[1.0]), IOArgumentError,
             r"^default_F must be a number within double precision, got \[1.0\]$"),
            (lambda: read_hkl(tmp_path / "a.hkl", default_F=10 ** 400), IOArgumentError,
             "^default_F must be a number within double precision"),
            (lambda: parse_hkl(b"0 0 0 5\n", "x", allow_nonfinite_F=np.ones(3)), IOArgumentError,
             r"^allow_nonfinite_F must be True or False, got array"),
            (lambda: parse_hkl(str(tmp_path / "a.hkl"), "x"), IOArgumentError,
             r"^data must be the file's bytes, got str \(read_hkl takes a file name\)$"),
            (lambda: parse_hkl(None, "x"), IOArgumentError, "^data must be the file's bytes, got NoneType$"),
            (lambda: read_hkl(tmp_path / "a.hkl", memory=2), ConfigError,
             r"^memory: expected \(bytes, description\)"),
            (lambda: read_fdump(tmp_path / "F.bin", memory=""), ConfigError, "^memory: expected"),
            (lambda: read_fdump(tmp_path / "F.bin", allow_nonfinite_F="c"), IOArgumentError,
             "^allow_nonfinite_F must be True or False, got 'c'$"),
            (lambda: fdump_bytes([0, 1]), IOArgumentError, "^grid must be an HKLGrid .* got list$"),
            (lambda: write_fdump(tmp_path / "G.bin", None), IOArgumentError, "^grid must be an HKLGrid"),
            (lambda: pgm_bytes_from_float(np.ones((2, 2)), 10 ** 400), IOArgumentError,
             "^pgm_scale must be a number, got 1000"),
            (lambda: write_smv(tmp_path / "b.img", img, fields, header_overflow=np.ones(2)),
             IOArgumentError, "^header_overflow must be 'c', 'grow' or 'error', not array"),
            (lambda: write_smv(tmp_path / "b\x00.img", img, fields), IOArgumentError,
             "holds a NUL byte, which no file name can hold$")]:
        with pytest.raises(kind, match=msg):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["F.bin", "a.hkl"]
    # numpy scalars are numbers and switches
    g2 = read_hkl(tmp_path / "a.hkl", default_F=np.float32(2.0), allow_nonfinite_F=np.bool_(True),
                  memory=(np.int64(2 ** 30), "1 GiB"))
    assert g2.F.shape == grid.F.shape and float(g2.F.max()) == 5.0


def test_endless_or_oversized_inputs_are_refused_before_memory_runs_out(tmp_path, monkeypatch,
                                                                       capsys):
    """-hkl /dev/zero (or -mat, -mask, -sourcefile, -stol) was read until the
    kernel's OOM killer ended the process (23.2 GiB resident of the
    machine's 23.5 GiB).  A stream
    (device, pipe) is read to at most STREAM_MAX_BYTES, a regular file only when
    it fits the memory available; both refusals are one line naming the file.
    A short pipe (an HKL table on /dev/stdin) still reads."""
    import os
    import threading

    from nbnumba import validate
    from nbnumba.io import _args
    monkeypatch.setattr(_args, "STREAM_MAX_BYTES", 1 << 16)
    with pytest.raises(InputFileError, match=r"^/dev/zero: more than 0 MiB from a stream .* "
                                             r"/dev/zero\?$"):
        read_hkl("/dev/zero")
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as fh:
            fh.write(b"0 0 0 5\n1 0 0 3\n")
    t = threading.Thread(target=feed)
    t.start()
    grid = read_hkl("/dev/fd/%d" % r)
    t.join()
    os.close(r)
    assert grid.hkls == 2 and (grid.h_min, grid.h_max) == (0, 1)
    assert grid.F[0, 0, 0] == 5.0 and grid.F[1, 0, 0] == 3.0
    big = tmp_path / "big.hkl"
    big.write_bytes(b"0 0 0 5\n" * 4096)
    monkeypatch.setattr(validate, "available_memory", lambda: 1000)
    with pytest.raises(InputFileError, match="big.hkl: the file holds 32.8 kB, more than the "
                                             "1 kB of memory available to read it"):
        read_hkl(str(big))
    monkeypatch.chdir(tmp_path)
    argv = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -distance 100 -detpixels 8 -nonoise "
            "-nopgm -noprogress -default_F 1").split()
    monkeypatch.setattr(validate, "available_memory", lambda: 1 << 40)
    for flag in ("-hkl", "-mat", "-sourcefile", "-mask", "-stol"):
        assert nbnumba.cli.main(argv + [flag, "/dev/zero"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "/dev/zero: more than" in err, (flag, err)
