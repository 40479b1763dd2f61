"""A -mat matrix is MOSFLM's (docs/quirks.md #45), and -cell with -mat names
one lattice (#47).

#45: a MOSFLM A matrix is written in MOSFLM's frame, beam along +x and spindle
along +z.  nanoBragg.c reads it into every convention's lab as it stands, so
under -xds/-adxv (beam z, spindle x) and -dials (beam z, spindle y) the crystal
is another one with respect to the beam.  The default mode turns the matrix by
the rotation taking MOSFLM's beam and spindle to the convention's: an -xds run
then renders MOSFLM's image bit for bit (XDS's detector axes are MOSFLM's
turned the same way), a -dials run that image turned by a quarter.

#47: nanoBragg.c gives -cell's edges to the matrix's axes and drops -cell's
angles; the default mode takes -cell only as a scale of the matrix's cell.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import nbnumba
from nbnumba.config import Config
from nbnumba.crystal import build_crystal, mosflm_frame
from nbnumba.errors import ConfigError
from nbnumba.geometry import _CONVENTION_VECTORS
from nbnumba.rng import RngState

#: a general orientation of an orthorhombic 70 80 90 cell at 1 A (rows a*, b*,
#: c*, 1/A), and the same for a hexagonal 100 100 100 90 90 120 cell
ORTH = np.array([[0.01323856, 0.00462152, -0.00273196],
                 [-0.00376190, 0.01179519, 0.00172384],
                 [0.00250076, -0.00078050, 0.01079786]])
HEX = np.array([[0.00752945, 0.00868303, -0.00111616],
                [-0.00347510, 0.01089593, 0.00159242],
                [0.00225068, -0.00070245, 0.00971807]])
RUN = ("-default_F 100 -lambda 1 -distance 100 -detpixels 32 -pixel 0.8 -N 5 -seed 1 "
       "-oversample 1 -phi 10 -osc 5 -phisteps 2 -nonoise -nopgm")


def write_mat(path, recip):
    """A -mat file: row i holds component i of a*, b*, c* (times lambda = 1)."""
    path.write_text("".join(" %.8f %.8f %.8f\n" % tuple(recip[:, i]) for i in range(3)))


def image(tmp_path, flags, c_parity=False):
    argv = (RUN + " " + flags).split() + (["-c_parity"] if c_parity else [])
    cfg = nbnumba.parse_argv(argv, cwd=str(tmp_path))
    return np.asarray(nbnumba.simulate(cfg).float_image, dtype=np.float64)


def test_the_frame_rotation_takes_mosflm_beam_and_spindle_to_each_conventions():
    for conv, vecs in _CONVENTION_VECTORS.items():
        Q = mosflm_frame(conv)
        if conv in ("MOSFLM", "DENZO"):
            assert Q is None
            continue
        Q = np.array(Q)
        assert np.array_equal(Q @ [1, 0, 0], vecs[0]) and np.array_equal(Q @ [0, 0, 1], vecs[6])
        assert np.array_equal(Q @ Q.T, np.eye(3)) and np.linalg.det(Q) == pytest.approx(1.0)
    assert np.array_equal(mosflm_frame("XDS"), [[0, 0, 1], [0, -1, 0], [1, 0, 0]])
    assert np.array_equal(mosflm_frame("DIALS"), [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert mosflm_frame("ADXV") == mosflm_frame("XDS") and mosflm_frame("CUSTOM") is None


@pytest.mark.parametrize("recip", [ORTH, HEX], ids=["orthorhombic", "hexagonal"])
def test_a_mat_run_is_the_same_crystal_under_xds_and_dials_as_under_mosflm(tmp_path, recip):
    write_mat(tmp_path / "A.mat", recip)
    # the beam on the middle of the 32 x 32 pixels in each convention's terms
    mos = image(tmp_path, "-mat A.mat -mosflm -Xbeam 12.4 -Ybeam 12.4")
    assert np.count_nonzero(mos > 1e-3 * mos.max()) > 20
    assert np.array_equal(image(tmp_path, "-mat A.mat -xds -ORGX 16.5 -ORGY 16.5"), mos)
    assert np.array_equal(image(tmp_path, "-mat A.mat -denzo -Xbeam 12.8 -Ybeam 12.8"), mos)
    # DIALS' detector is MOSFLM's turned by the same rotation but for a quarter
    # turn about the beam: MOSFLM's fast axis is DIALS' slow one
    dials = image(tmp_path, "-mat A.mat -dials -ORGX 16.5 -ORGY 16.5")
    assert np.array_equal(dials, np.rot90(mos, -1))
    # nanoBragg.c's (-c_parity) XDS crystal is another one: the old image
    c_xds = image(tmp_path, "-mat A.mat -xds -ORGX 16.5 -ORGY 16.5", c_parity=True)
    assert np.abs(c_xds - mos).sum() > 0.3 * np.abs(mos).sum()


def _crystal(**kw):
    cfg = Config(**kw)
    return build_crystal(cfg, np.array(ORTH), cfg.lambda0, RngState(), 1)


def test_custom_vectors_keep_the_matrix_as_it_stands():
    # -beam_vector (CUSTOM) names the frame: no turn, the C's crystal
    a = _crystal(beam_convention="CUSTOM", lambda0=1e-10).a
    b = _crystal(beam_convention="MOSFLM", lambda0=1e-10).a
    x = _crystal(beam_convention="XDS", lambda0=1e-10).a
    assert a == b and x == (b[2], -b[1], b[0])
    assert _crystal(beam_convention="XDS", lambda0=1e-10, c_parity=True).a == b
    # the turn comes before -misset (a lab-frame rotation): the XDS crystal is
    # the one of the matrix written in XDS's lab, read without a turn
    Q = np.array(mosflm_frame("XDS"))
    turned = build_crystal(Config(beam_convention="CUSTOM", misset=_rad(3, -7, 11), misset_mode=1),
                           ORTH @ Q.T, 1e-10, RngState(), 1)
    xds = _crystal(beam_convention="XDS", lambda0=1e-10, misset=_rad(3, -7, 11), misset_mode=1)
    assert (xds.a, xds.b, xds.c) == (turned.a, turned.b, turned.c)


def _rad(*deg):
    return tuple(math.radians(d) for d in deg)


def test_cell_with_mat_is_a_scale_of_the_matrix_cell_or_refused():
    # the matrix's own cell, and that cell scaled by one factor (a matrix
    # written at another wavelength): the -cell edges with the matrix's angles
    same = _crystal(user_cell=True, cell_a=70.0, cell_b=80.0, cell_c=90.0,
                    cell_alpha=_rad(90)[0], cell_beta=_rad(90)[0], cell_gamma=_rad(90)[0],
                    matfilename="A.mat", lambda0=1e-10)
    assert same.cell == pytest.approx((70, 80, 90, 90, 90, 90), rel=1e-6)
    big = _crystal(user_cell=True, cell_a=77.0, cell_b=88.0, cell_c=99.0,
                   cell_alpha=_rad(90)[0], cell_beta=_rad(90)[0], cell_gamma=_rad(90.02)[0],
                   matfilename="A.mat", lambda0=1e-10)
    assert big.cell[:3] == pytest.approx((77, 88, 99), rel=1e-12)
    # another shape: other angles, or edges in other ratios
    for cell, ang in (((100.0, 100.0, 100.0), (90, 90, 120)), ((70.0, 80.0, 90.0), (90, 90, 90.1)),
                      ((70.0, 80.0, 91.0), (90, 90, 90))):
        al, be, ga = _rad(*ang)
        with pytest.raises(ConfigError) as e:
            _crystal(user_cell=True, cell_a=cell[0], cell_b=cell[1], cell_c=cell[2], cell_alpha=al,
                     cell_beta=be, cell_gamma=ga, matfilename="A.mat", lambda0=1e-10)
        msg = str(e.value)
        assert "\n" not in msg and "-cell %g %g %g" % cell in msg and "-mat A.mat (70 80 90 90 90 90" in msg
    # -c_parity: nanoBragg.c's cell, the -cell edges on the matrix's axes, its angles dropped
    c = _crystal(user_cell=True, cell_a=100.0, cell_b=100.0, cell_c=100.0, cell_alpha=_rad(90)[0],
                 cell_beta=_rad(90)[0], cell_gamma=_rad(120)[0], matfilename="A.mat",
                 lambda0=1e-10, c_parity=True)
    assert c.cell == pytest.approx((100, 100, 100, 90, 90, 90), rel=1e-6)


def test_cell_with_mat_refused_from_the_command_line(tmp_path, capsys, monkeypatch):
    from nbnumba import cli
    monkeypatch.chdir(tmp_path)
    write_mat(tmp_path / "A.mat", ORTH)
    argv = (RUN + " -mat A.mat -cell 100 100 100 90 90 120 -floatfile f.bin").split()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "-cell 100 100 100 90 90 120 is not the cell of -mat A.mat (70 80 90 90 90 90" in err
    assert not (tmp_path / "f.bin").exists()
    # the matrix's cell at another wavelength: -lambda 2 makes it 140 160 180
    assert cli.main((RUN + " -mat A.mat -lambda 2 -cell 70 80 90 90 90 90 -floatfile f.bin").split()) == 0
    assert "Unit Cell: 70 80 90 90 90 90" in capsys.readouterr().out


#: tests/test_reference.py's run (6 x 6 pixels), with a triclinic matrix at 1.5 A
REF_RUN = ("-lambda 1.5 -default_F 10 -distance 50 -pixel 0.5 -detpixels 6 -N 3 -nonoise -nopgm "
           "-seed 3 -oversample 1 -mat R.mat -phi 4 -osc 3 -phisteps 2 ")
TRICLINIC = np.array([[0.0142, 0.0011, -0.0009], [0.0007, 0.0123, 0.0021], [-0.0013, 0.0017, 0.0109]])


@pytest.mark.parametrize("extra", ["-xds -misset 20 -10 5", "-dials -twotheta 10", "-adxv",
                                   # the matrix's cell (72.2977 85.5908 96.9435 109.648
                                   # 77.5261 100.596 at 1.5 A) scaled by 1.02
                                   "-xds -cell 73.7437 87.3026 98.8824 109.648 77.5261 100.596"])
def test_the_reference_turns_the_matrix_too(tmp_path, extra):
    from dataclasses import replace

    from nbnumba.testing.refcheck import compare
    write_mat(tmp_path / "R.mat", TRICLINIC * 1.5)
    cfg = replace(nbnumba.parse_argv((REF_RUN + extra).split()), workdir=str(tmp_path))
    r, why = compare(cfg)
    assert why is None, why


def test_the_note_names_45_where_the_matrix_is_turned(tmp_path):
    """The default mode's note names #45 for a -mat run under -xds, -adxv and
    -dials, and not under -mosflm, -denzo or custom vectors; -c_parity has no note."""
    from nbnumba.quirks import c_differences
    (tmp_path / "o.mat").write_text(" 0.0142857 0 0\n 0 0.0125 0\n 0 0 0.0111111\n")
    line = ["-mat", "o.mat", "-default_F", "100", "-N", "5", "-lambda", "1", "-distance", "100",
            "-detpixels", "8", "-pixel", "0.4", "-oversample", "1", "-nonoise", "-nopgm"]
    for conv, named in (("-xds", True), ("-adxv", True), ("-dials", True), ("-mosflm", False),
                        ("-denzo", False)):
        r = nbnumba.simulate_argv(line + [conv], cwd=tmp_path)
        assert (45 in [n for n, _ in c_differences(r.model)]) == named, conv
    r = nbnumba.simulate_argv(line + ["-beam_vector", "1", "0", "0"], cwd=tmp_path)   # CUSTOM
    assert 45 not in [n for n, _ in c_differences(r.model)]
    r = nbnumba.simulate_argv(line + ["-xds", "-c_parity"], cwd=tmp_path)
    assert c_differences(r.model) == []
