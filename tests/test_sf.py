"""nbnumba-sf: P1 structure factors from a model, checked against analytic cases."""
import errno
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("gemmi")

from nbnumba import sf  # noqa: E402
from nbnumba.io.hkl import read_hkl  # noqa: E402

# International Tables Vol. C, Table 6.1.1.4 (IT92) Cromer-Mann coefficients of carbon
C_A = (2.31, 1.02, 1.5886, 0.865)
C_B = (20.8439, 10.2075, 0.5687, 51.6512)
C_C = 0.2156


def f_carbon(stol2):
    return sum(a * np.exp(-b * stol2) for a, b in zip(C_A, C_B)) + C_C


def pdb(cell, sg, atoms, z=1):
    lines = ["CRYST1%9.3f%9.3f%9.3f%7.2f%7.2f%7.2f %-11s%4d" % (*cell, sg, z)]
    for i, (el, x, y, zc, b) in enumerate(atoms, 1):
        lines.append("ATOM  %5d  %-3s GLY A%4d    %8.3f%8.3f%8.3f  1.00%6.2f          %2s"
                     % (i, el, i, x, y, zc, b, el))
    return "\n".join(lines + ["END", ""])


def calc(tmp_path, text, dmin, **kw):
    p = tmp_path / "m.pdb"
    p.write_text(text)
    return sf.structure_factors(sf.read_model(str(p)), dmin, **kw)


def test_one_atom_at_origin_gives_its_form_factor(tmp_path):
    cell = (20.0, 22.0, 25.0, 90.0, 90.0, 90.0)
    hkl, F = calc(tmp_path, pdb(cell, "P 1", [("C", 0, 0, 0, 0.0)]), 2.5)
    s2 = (hkl[:, 0] / 20.0) ** 2 + (hkl[:, 1] / 22.0) ** 2 + (hkl[:, 2] / 25.0) ** 2
    assert np.all(s2 <= 1 / 2.5 ** 2 + 1e-12)
    assert np.allclose(F, f_carbon(s2 / 4), rtol=1e-5)      # F = f(sin(theta)/lambda)
    # the whole sphere, 0 0 0 excluded: count lattice points by brute force
    n = sum(1 for h in range(-8, 9) for k in range(-8, 9) for l in range(-10, 11)
            if 0 < (h / 20) ** 2 + (k / 22) ** 2 + (l / 25) ** 2 <= 1 / 6.25 + 1e-12)   # d = dmin kept
    assert len(F) == n
    assert not np.any(np.all(hkl == 0, axis=1))


def test_friedel_mates_equal_and_b_factor(tmp_path):
    cell = (15.0, 17.0, 19.0, 90.0, 100.0, 90.0)
    atoms = [("C", 1.0, 2.0, 3.0, 20.0), ("O", 4.0, -1.5, 7.0, 20.0), ("N", -2.0, 5.0, 1.0, 20.0)]
    hkl, F = calc(tmp_path, pdb(cell, "P 1", atoms), 3.0)
    lookup = {tuple(x): f for x, f in zip(hkl.tolist(), F.tolist())}
    assert all(lookup[(-h, -k, -l)] == f for (h, k, l), f in lookup.items())
    # B = 20 A^2 on a single atom at the origin scales F by exp(-B s^2 / 4)
    hkl1, F1 = calc(tmp_path, pdb((20.0,) * 3 + (90.0,) * 3, "P 1", [("C", 0, 0, 0, 20.0)]), 3.0)
    s2 = (hkl1 ** 2).sum(axis=1) / 400.0
    assert np.allclose(F1, f_carbon(s2 / 4) * np.exp(-20.0 * s2 / 4), rtol=1e-5)


def test_space_group_is_expanded_to_p1(tmp_path):
    # one atom in P 1 21 1 == the atom and its screw copy (-x, y+1/2, -z) in P1
    cell = (20.0, 25.0, 30.0, 90.0, 90.0, 90.0)
    x, y, z = 2.0, 3.0, 4.0
    hkl_a, F_a = calc(tmp_path, pdb(cell, "P 1 21 1", [("O", x, y, z, 10.0)], 2), 3.0)
    hkl_b, F_b = calc(tmp_path, pdb(cell, "P 1", [("O", x, y, z, 10.0), ("O", -x, y + 12.5, -z, 10.0)]), 3.0)
    assert np.array_equal(hkl_a, hkl_b)
    assert np.allclose(F_a, F_b, rtol=1e-5, atol=1e-4)
    absent = {tuple(h): f for h, f in zip(hkl_a.tolist(), F_a.tolist()) if h[0] == 0 and h[2] == 0}
    assert absent[(0, 1, 0)] < 1e-4 and absent[(0, 2, 0)] > 1.0   # 0k0 with k odd vanish


def test_cli_writes_a_file_nanobragg_reads(tmp_path, capsys):
    (tmp_path / "m.pdb").write_text(pdb((20.0,) * 3 + (90.0,) * 3, "P 1", [("C", 0, 0, 0, 0.0)]))
    out = tmp_path / "P1.hkl"
    assert sf.main([str(tmp_path / "m.pdb"), "-dmin", "4", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "-cell 20 20 20 90 90 90" in err
    grid = read_hkl(str(out))
    assert not grid.warnings
    f100 = f_carbon(1 / 400 / 4)
    text = out.read_text().splitlines()
    assert any(l.split()[:3] == ["-1", "0", "0"] and math.isclose(float(l.split()[3]), f100, rel_tol=1e-4)
               for l in text)
    # stdout is the default
    assert sf.main([str(tmp_path / "m.pdb"), "-dmin", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == text


@pytest.mark.parametrize("args, needle", [
    (["missing.pdb", "-dmin", "2"], "missing.pdb"),
    (["m.pdb"], "-dmin"),
    (["m.pdb", "-dmin", "-1"], "-dmin"),
    (["m.pdb", "-dmin", "2", "-bogus"], "-bogus"),
    (["m.pdb", "-DMIN", "2"], "unknown flag '-DMIN' (did you mean -dmin?)"),
    (["m.pdb", "-dmin", "2", "-bulksolvent"], "unknown flag '-bulksolvent' (did you mean -bulk_solvent?)"),
    (["empty.pdb", "-dmin", "2"], "empty.pdb"),
    # an index box beyond memory: numpy's MemoryError (477 GiB) and an
    # OverflowError (1e-320) were tracebacks
    (["m.pdb", "-dmin", "0.01"], "-dmin 0.01: the index box holds 6.4e+10 points"),
    (["m.pdb", "-dmin", "1e-320"], "the index box holds inf points"),
    # float() took these; nbnumba's number syntax does not
    (["m.pdb", "-dmin", "\uff13"], "-dmin: '\uff13' is not a number"),
    (["m.pdb", "-dmin", "1_0"], "-dmin: '1_0' is not a number"),
    # '-o ""' fell back to standard output; '-o -bulk_solvent' named a file
    (["m.pdb", "-dmin", "3", "-o", ""], "-o: expected a file name, got ''"),
    (["m.pdb", "-dmin", "3", "-o", "-bulk_solvent"], "-o: expected a file name"),
    # ignored without a word before
    (["m.pdb", "-dmin", "3", "-k_sol", "0.3"], "-k_sol sets the bulk-solvent model: it needs -bulk_solvent"),
    (["m.pdb", "-dmin", "3", "-B_sol", "20"], "-B_sol sets the bulk-solvent model: it needs -bulk_solvent"),
    (["m.pdb", "-dmin", "3", "-bulk_solvent", "-k_sol", "-1"], "-k_sol must be >= 0"),
])
def test_errors_are_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pdb").write_text(pdb((20.0,) * 3 + (90.0,) * 3, "P 1", [("C", 0, 0, 0, 0.0)]))
    (tmp_path / "empty.pdb").write_text("END\n")
    assert sf.main(args) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("nbnumba-sf: error:")
    assert cap.out == ""


def test_bulk_solvent_changes_low_resolution_most(tmp_path):
    cell = (20.0,) * 3 + (90.0,) * 3
    atoms = [("C", 1.0, 2.0, 3.0, 15.0), ("O", 3.0, 2.5, 4.0, 15.0)]
    hkl, F0 = calc(tmp_path, pdb(cell, "P 1", atoms), 2.5)
    _, F1 = calc(tmp_path, pdb(cell, "P 1", atoms), 2.5, bulk_solvent=True)
    s2 = (hkl ** 2).sum(axis=1) / 400.0
    low, high = s2 < 1 / 10 ** 2, s2 > 1 / 3 ** 2
    d = np.abs(F1 - F0)
    assert d[low].mean() > 10 * d[high].mean() and d[low].mean() > 0.5


def test_b_add_equals_a_larger_b(tmp_path):
    cell = (20.0,) * 3 + (90.0,) * 3
    _, Fa = calc(tmp_path, pdb(cell, "P 1", [("C", 1, 2, 3, 5.0)]), 3.0, B_add=15.0)
    _, Fb = calc(tmp_path, pdb(cell, "P 1", [("C", 1, 2, 3, 20.0)]), 3.0)
    assert np.allclose(Fa, Fb, rtol=1e-5)



# ---------------------------------------------------------------------------
# robustness: every refusal is one line on stderr, exit 2, nothing written
# ---------------------------------------------------------------------------

CUBE = (20.0,) * 3 + (90.0,) * 3
THREE = [("C", 1.0, 2.0, 3.0, 10.0), ("O", 3.0, 4.0, 5.0, 10.0), ("N", 5.0, 6.0, 7.0, 10.0)]


def edit_atom2(text, cols, value):
    """``text`` with columns ``cols`` (PDB, 1-based inclusive) of atom 2 set to ``value``."""
    lines = text.splitlines()
    a, b = cols
    lines[2] = lines[2][:a - 1] + value.rjust(b - a + 1) + lines[2][b:]
    return "\n".join(lines) + "\n"


def one_error(capsys, args, code=2):
    """Run nbnumba-sf in process with warnings as errors (a numpy RuntimeWarning
    becomes a traceback here); its only stderr line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sf.main([str(a) for a in args]) == code
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbnumba-sf: error:"), cap.err
    assert cap.out == ""
    return err[0]


@pytest.mark.parametrize("cols, value, needle", [
    ((55, 60), "nan", "occupancy nan is not finite"),      # NaN in every F, exit 0
    ((31, 38), "nan", "coordinate x = nan A is not a number"),
    ((31, 38), "inf", "coordinate x = inf A is out of range"),
    ((61, 66), "nan", "B factor nan is not finite"),
    ((55, 60), "-0.50", "occupancy -0.5 is not >= 0"),
    # an unknown symbol is element X to gemmi, which scattered it like oxygen
    ((77, 78), "Xx", "unknown element (gemmi reads it as 'X')"),
    # gemmi has no IT92 form factor past Cf: a RuntimeError traceback
    ((77, 78), "ES", "gemmi has no X-ray form factor (IT92) for element Es"),
])
def test_bad_atom_fields_name_file_and_atom(cols, value, needle, tmp_path, capsys):
    p = tmp_path / "bad.pdb"
    p.write_text(edit_atom2(pdb(CUBE, "P 1", THREE), cols, value))
    out = tmp_path / "out.hkl"
    out.write_text("old\n")
    err = one_error(capsys, [p, "-dmin", "3", "-o", out])
    assert str(p) in err and "atom 2 (A/GLY 2/O)" in err and needle in err
    assert out.read_text() == "old\n"          # the old file is untouched


@pytest.mark.parametrize("cols, value, field", [
    # gemmi read each of these as 0 (or 1.2), and F came out for another atom, exit 0
    # (tools/fuzz_tools.py sf, seed 7 drew '*****')
    ((31, 38), "*****", "x in columns 31-38 is '*****'"),
    ((39, 46), "abc", "y in columns 39-46 is 'abc'"),
    ((47, 54), "", "z in columns 47-54 is blank"),
    ((31, 38), "1.2.3", "x in columns 31-38 is '1.2.3'"),
    ((55, 60), "*****", "occupancy in columns 55-60 is '*****'"),
    ((55, 60), "", "occupancy in columns 55-60 is blank"),
    ((61, 66), "x", "B factor in columns 61-66 is 'x'"),
])
def test_a_pdb_field_that_is_not_a_number_is_refused(cols, value, field, tmp_path, capsys):
    p = tmp_path / "bad.pdb"
    p.write_text(edit_atom2(pdb(CUBE, "P 1", THREE), cols, value))
    out = tmp_path / "out.hkl"
    err = one_error(capsys, [p, "-dmin", "3", "-o", out])
    assert err == "nbnumba-sf: error: %s: line 3 (ATOM      2  O   GLY A   2): %s, not a number" % (
        p, field)
    assert not out.exists()


def test_names_that_are_not_utf8_are_one_line_errors(tmp_path, capsys):
    # gemmi gives its names to Python as UTF-8: the message naming a latin-1 space group
    # or residue was a UnicodeDecodeError traceback (tools/fuzz_tools.py sf, seed 202)
    text = pdb(CUBE, "P 1", THREE)
    p = tmp_path / "sg.pdb"
    p.write_bytes(text.replace("P 1       ", "P 2\xca 1    ").encode("latin-1"))
    err = one_error(capsys, [p, "-dmin", "3"])
    assert err == "nbnumba-sf: error: %s: unknown space group '(not UTF-8 text)'" % p
    p = tmp_path / "res.pdb"
    lines = text.splitlines()
    lines[2] = lines[2][:17] + "G\xcaY" + lines[2][20:76] + "XX"
    p.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    err = one_error(capsys, [p, "-dmin", "3"])
    assert err == ("nbnumba-sf: error: %s: atom 2 ((not UTF-8 text)): unknown element (gemmi reads "
                   "it as 'X'): no X-ray form factor for it" % p)


def test_a_solvent_grid_past_memory_is_one_line(tmp_path, capsys):
    # a 1e9 A edge: gemmi's mask grid at 1 A spacing asked for terabytes, std::bad_alloc
    # (a MemoryError traceback; tools/fuzz_tools.py sf, seed 202)
    lines = pdb(CUBE, "P 1", THREE).splitlines()
    lines[0] = "CRYST1" + "%9s" % "1e9" + lines[0][15:]
    p = tmp_path / "long.pdb"
    p.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.hkl"
    err = one_error(capsys, [p, "-dmin", "1000", "-bulk_solvent", "-o", out])
    assert err.startswith("nbnumba-sf: error: -bulk_solvent: the solvent mask's grid (1 A spacing "
                          "over the 1e+09 x 20 x 20 A cell) holds 4.41e+11 points, about "), err
    assert err.endswith("; leave out -bulk_solvent")
    assert not out.exists()


def test_a_cell_too_thin_for_the_solvent_mask_is_one_line(tmp_path, capsys):
    # gamma = 4 deg: the 20 x 25 A face is 1.4 A across, and gemmi refuses to mask an
    # atom's sphere in it ("radius bigger than half the unit cell?", a RuntimeError
    # traceback; tools/fuzz_tools.py sf, seed 242); refused before the direct sums
    p = tmp_path / "thin.pdb"
    p.write_text(pdb((20.0, 25.0, 30.0, 90.0, 90.0, 4.0), "P 1", THREE) + "\n")
    out = tmp_path / "out.hkl"
    err = one_error(capsys, [p, "-dmin", "2", "-bulk_solvent", "-o", out])
    assert err.startswith("nbnumba-sf: error: -bulk_solvent: gemmi cannot build the solvent mask: "
                          "the cell (-cell 20 25 30 90 90 4) is 1.395 x 1.744 x 30 A across its "
                          "faces, narrower than twice an atom's masking radius"), err
    assert err.endswith("; leave out -bulk_solvent")
    assert not out.exists()
    # without the mask the same model runs
    assert sf.main([str(p), "-dmin", "2", "-o", str(out)]) == 0 and out.stat().st_size > 0


def test_a_pdb_record_cut_after_the_coordinates_keeps_gemmis_defaults(tmp_path, capsys):
    # occupancy and B left out at the end of the line: 1 and gemmi's 20, as before
    full = pdb(CUBE, "P 1", THREE)
    lines = full.splitlines()
    lines[2] = lines[2][:54]
    p = tmp_path / "cut.pdb"
    p.write_text("\n".join(lines) + "\n")
    assert sf.main([str(p), "-dmin", "3", "-o", str(tmp_path / "o.hkl")]) == 0
    assert (tmp_path / "o.hkl").read_text().count("\n") > 10


def test_non_finite_anisotropic_u_and_all_zero_occupancy(tmp_path):
    # gemmi reads ANISOU's integers without NaN, but mmCIF and the API give it
    gemmi = pytest.importorskip("gemmi")
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    st = gemmi.read_structure(str(p))
    st[0]["A"][1][0].aniso = gemmi.SMat33f(float("nan"), 0.1, 0.1, 0, 0, 0)
    with pytest.raises(sf.InputFileError, match=r"atom 2 \(A/GLY 2/O\): anisotropic U .* is not finite"):
        sf.check_atoms(st, "m.pdb")
    text = pdb(CUBE, "P 1", THREE)
    for i in (1, 2, 3):                       # every occupancy 0: an all-zero file before
        lines = text.splitlines()
        lines[i] = lines[i][:54] + "  0.00" + lines[i][60:]
        text = "\n".join(lines) + "\n"
    p.write_text(text)
    with pytest.raises(sf.InputFileError, match="every atom has occupancy 0"):
        sf.read_model(str(p))


def test_output_that_is_the_model_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = pdb(CUBE, "P 1", THREE)
    (tmp_path / "in.pdb").write_text(text)
    (tmp_path / "in2.pdb").write_text(text)
    os.symlink("in2.pdb", tmp_path / "lnk.hkl")
    # '-o in.pdb' replaced the model with its own reflections
    err = one_error(capsys, ["in.pdb", "-dmin", "3", "-o", "in.pdb"])
    assert "refusing to write -o 'in.pdb'" in err
    # the same through a symbolic link (file identity)
    err = one_error(capsys, ["in2.pdb", "-dmin", "3", "-o", "lnk.hkl"])
    assert "-o 'lnk.hkl'" in err and "in2.pdb" in err
    assert (tmp_path / "in.pdb").read_text() == text and (tmp_path / "in2.pdb").read_text() == text
    # 'nbnumba-sf in.pdb -dmin 3 >> in.pdb': standard output is the model
    with open(tmp_path / "in.pdb", "a") as fh:
        with pytest.raises(sf.OutputFileError, match="standard output: it is the model file 'in.pdb'"):
            sf.run(sf.parse_sf_argv(["in.pdb", "-dmin", "3"]), out=fh)
    assert (tmp_path / "in.pdb").read_text() == text


@pytest.mark.parametrize("angles, shown", [
    ((170.0, 170.0, 170.0), "20 20 20 170 170 170 (volume nan"),   # 0 reflections, exit 0
    ((float("nan"), 90.0, 90.0), "20 20 20 nan 90 90 (volume nan"),  # a 0-byte file, exit 0
    ((90.0, 90.0, 180.0), "20 20 20 90 90 180 (volume"),
])
def test_impossible_cell_is_refused(angles, shown, tmp_path, capsys):
    p = tmp_path / "m.pdb"
    p.write_text(pdb((20.0,) * 3 + angles, "P 1", THREE))
    err = one_error(capsys, [p, "-dmin", "3"])
    assert "impossible unit cell " + shown in err and "-cell" not in err


def test_no_reflections_names_the_largest_d_spacing(tmp_path, capsys):
    gemmi = pytest.importorskip("gemmi")
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    out = tmp_path / "out.hkl"
    out.write_text("old\n")
    # an empty file with exit 0 before, which nbnumba then refused
    err = one_error(capsys, [p, "-dmin", "100", "-o", out])
    assert "-dmin 100: no reflections with d >= 100 A" in err and "largest d-spacing is 20 A" in err
    assert out.read_text() == "old\n"
    small = tmp_path / "small.pdb"
    small.write_text(pdb((1.5,) * 3 + (90.0,) * 3, "P 1", [("C", 0, 0, 0, 10.0)]))
    assert "largest d-spacing is 1.5 A" in one_error(capsys, [small, "-dmin", "3"])
    # a skewed cell whose largest d-spacing is (1 -1 0), 19.83 A, while the
    # axial ones are 5.18, 5.18 and 5 A: checked by brute force
    cell = (20.0, 20.0, 5.0, 90.0, 90.0, 165.0)
    uc = gemmi.UnitCell(*cell)
    want = max(uc.calculate_d([h, k, l]) for h in range(-6, 7) for k in range(-6, 7)
               for l in range(-6, 7) if (h, k, l) != (0, 0, 0))
    assert math.isclose(want, uc.calculate_d([1, -1, 0])) and uc.calculate_d([1, 0, 0]) < 5.2
    skew = tmp_path / "skew.pdb"
    skew.write_text(pdb(cell, "P 1", [("C", 0, 0, 0, 10.0)]))
    err = one_error(capsys, [skew, "-dmin", "25"])
    assert "largest d-spacing is %.4g A" % want in err and "19.83" in err
    # and at -dmin 19.8 that reflection and its mate are the whole file
    hkl, F = sf.structure_factors(sf.read_model(str(skew)), 19.8)
    assert sorted(map(tuple, hkl.tolist())) == [(-1, 1, 0), (1, -1, 0)]


@pytest.mark.parametrize("args, needle", [
    # inf/NaN F with exit 0 before
    (["-B_add", "-100000"], "-B_add -100000: atom 1 (A/GLY 1/C)'s B becomes -99990 A^2"),
    (["-B_add", "-1e39"], "-B_add -1e+39: atom 1 (A/GLY 1/C)'s B factor leaves single precision"),
    # +inf B: U = inf times a zero component of s is NaN
    (["-B_add", "1e39"], "-B_add 1e+39"),
    # a numpy overflow warning, then inf in the file
    (["-bulk_solvent", "-B_sol", "-1e6"], "-B_sol -1e+06: exp(-B_sol s^2/4) would pass e^80 at -dmin 3"),
    (["-bulk_solvent", "-k_sol", "1e308"], "-k_sol 1e+308: the bulk-solvent term"),
    # every atom damped to 0: an all-zero file
    (["-B_add", "1e30"], "every F is 0 at -dmin 3"),
])
def test_overflowing_values_are_refused_without_warnings(args, needle, tmp_path, capsys):
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    err = one_error(capsys, [p, "-dmin", "3"] + args)
    assert needle in err


def test_b_bound_is_where_single_precision_still_holds(tmp_path):
    # -320 dmin^2 = -2880 A^2 at -dmin 3: just above it F is finite (gemmi's
    # single-precision exp overflows at e^88.7, -B_add -3300 gave inf); the
    # largest F, at s = 1/3, is about f exp(2875/36) = e^79.9 times a few
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    st = sf.read_model(str(p))
    assert sf.lowest_b(3.0) == -2880.0
    _, F = sf.structure_factors(st, 3.0, B_add=-2885.0)     # B = 10 - 2885 = -2875
    assert np.all(np.isfinite(F)) and 1e33 < F.max() < 1e38
    with pytest.raises(sf.UsageError, match="-B_add -2895"):
        sf.structure_factors(sf.read_model(str(p)), 3.0, B_add=-2895.0)


def test_non_finite_f_is_caught_after_the_bounds(tmp_path, monkeypatch):
    # the result itself is checked: with the B bound lifted, gemmi's inf F is
    # refused instead of written
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    monkeypatch.setattr(sf, "EXP_MAX", 500.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(sf.InputFileError, match="structure factors are not finite at -dmin 3"):
            sf.structure_factors(sf.read_model(str(p)), 3.0, B_add=-5000.0, source="m.pdb")


class _Full:
    def __init__(self, exc):
        self.exc = exc

    def write(self, text):
        raise self.exc

    def flush(self):
        pass


def test_stdout_errors(tmp_path, capsys, monkeypatch):
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    # a full disk was an OSError traceback, exit 1
    monkeypatch.setattr(sys, "stdout", _Full(OSError(errno.ENOSPC, "No space left on device")))
    assert sf.main([str(p), "-dmin", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nbnumba-sf: error: cannot write to standard output: "
                   "No space left on device"]
    # a closed pipe ends the text, not the run: exit 0, the summary on stderr
    monkeypatch.setattr(sys, "stdout", _Full(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert sf.main([str(p), "-dmin", "3"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nbnumba-sf: 1236 reflections to 3 A")


@pytest.mark.parametrize("argv,usage_status", [(["-h"], 0), ([], 2)])
def test_usage_text_on_a_broken_stdout(capsys, monkeypatch, argv, usage_status):
    # the usage was printed before the stdout guard: an OSError (full disk) or
    # BrokenPipeError traceback, exit 1
    monkeypatch.setattr(sys, "stdout", _Full(OSError(errno.ENOSPC, "No space left on device")))
    assert sf.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        "nbnumba-sf: error: cannot write to standard output: No space left on device"]
    # a reader that left: silence, and the status the usage has anyway
    monkeypatch.setattr(sys, "stdout", _Full(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    assert sf.main(argv) == usage_status
    assert capsys.readouterr().err == ""


def _sf_env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__))), os.environ.get("PYTHONPATH")])))


def test_help_to_a_pipe_whose_reader_left_is_silent_in_a_real_process():
    # `nbnumba-sf -h | true`: a BrokenPipeError traceback, exit 1
    r_fd, w_fd = os.pipe()
    os.close(r_fd)              # the reader is gone before anything is written
    try:
        r = subprocess.run([sys.executable, "-m", "nbnumba.sf", "-h"], stdout=w_fd,
                           stderr=subprocess.PIPE, text=True, env=_sf_env(), timeout=120)
    finally:
        os.close(w_fd)
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_help_to_dev_full_is_one_line_in_a_real_process():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nbnumba.sf", "-h"], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=_sf_env(), timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["nbnumba-sf: error: cannot write to standard output: "
                                     "No space left on device"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_is_one_line_in_a_real_process(tmp_path):
    # what Python flushes at exit must not fail again ("Exception ignored ...")
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(sf.__file__))), os.environ.get("PYTHONPATH")])))
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nbnumba.sf", str(p), "-dmin", "3"], stdout=full,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["nbnumba-sf: error: cannot write to standard output: "
                                     "No space left on device"]


# ---------------------------------------------------------------------------
# MTZ input: amplitudes of an asymmetric unit expanded to P1
# ---------------------------------------------------------------------------

def write_mtz(path, sg, cell, rows, columns=(("F", "F"), ("SIGF", "Q")), valm=None):
    """An MTZ made with gemmi: H K L and ``columns`` (label, type), ``rows`` a list of
    (h, k, l, values...)."""
    import gemmi
    m = gemmi.Mtz(with_base=True)
    m.spacegroup = gemmi.SpaceGroup(sg)
    m.set_cell_for_all(gemmi.UnitCell(*cell))
    m.add_dataset("crystal")
    for label, typ in columns:
        m.add_column(label, typ)
    if valm is not None:
        m.valm = valm
    m.set_data(np.array(rows, dtype=np.float32).reshape(-1, 3 + len(columns)))
    m.write_to_file(str(path))
    return path


def asu_rows(sg, cell, dmin, rng, extra=1):
    """Every reflection of the reciprocal ASU of ``sg`` with d >= dmin, systematic
    absences left out (as in a merged file), with random values >= 1."""
    import gemmi
    sgo = gemmi.SpaceGroup(sg)
    asu, ops, uc = gemmi.ReciprocalAsu(sgo), sgo.operations(), gemmi.UnitCell(*cell)
    lim = [int(x / dmin) + 1 for x in cell[:3]]
    rows = []
    for h in range(-lim[0], lim[0] + 1):
        for k in range(-lim[1], lim[1] + 1):
            for l in range(-lim[2], lim[2] + 1):
                if (h, k, l) != (0, 0, 0) and asu.is_in([h, k, l]) \
                        and not ops.is_systematically_absent([h, k, l]) \
                        and uc.calculate_d([h, k, l]) >= dmin:
                    rows.append([h, k, l] + list(rng.uniform(1.0, 500.0, extra)))
    return rows


def read_list(path):
    out = {}
    for line in open(path):
        h, k, l, f = line.split()
        out[(int(h), int(k), int(l))] = float(f)
    return out


#: reflection conditions of the International Tables, written out by hand (the
#: test's own rule, independent of gemmi's): True where the reflection is absent
ABSENT = {
    "P 21 21 21": lambda h, k, l: (h == k == 0 and l % 2) or (k == l == 0 and h % 2)
                                   or (h == l == 0 and k % 2),
    "P 41 21 2": lambda h, k, l: (h == k == 0 and l % 4) or (k == l == 0 and h % 2)
                                  or (h == l == 0 and k % 2),
    "C 1 2 1": lambda h, k, l: (h + k) % 2 == 1,
}
CELLS = {"P 21 21 21": (21.0, 25.0, 29.0, 90.0, 90.0, 90.0),
         "P 41 21 2": (22.0, 22.0, 31.0, 90.0, 90.0, 90.0),
         "C 1 2 1": (30.0, 18.0, 16.0, 90.0, 103.0, 90.0)}


def whole_sphere(sg, cell, dmin):
    """The closed form of a full ASU's P1 expansion: every lattice point with
    0 < 1/d^2 <= 1/dmin^2 but the systematic absences (1/d^2 from the metric
    of the cell, computed here)."""
    a, b, c, al, be, ga = cell
    uc = np.array([[a, 0, 0], [0, b, 0], [0, 0, c]], dtype=float)
    if (al, ga) == (90.0, 90.0):        # monoclinic b unique: a in the xz plane
        r = math.radians(be)
        uc = np.array([[a, 0, 0], [0, b, 0], [c * math.cos(r), 0, c * math.sin(r)]])
    recip = np.linalg.inv(uc)           # columns: a*, b*, c*
    n = [int(x / dmin) + 2 for x in cell[:3]]
    want = set()
    for h in range(-n[0], n[0] + 1):
        for k in range(-n[1], n[1] + 1):
            for l in range(-n[2], n[2] + 1):
                s = recip @ np.array([h, k, l])
                if (h, k, l) != (0, 0, 0) and s @ s <= 1 / dmin ** 2 * (1 + 1e-12) \
                        and not ABSENT[sg](h, k, l):
                    want.add((h, k, l))
    return want


@pytest.mark.parametrize("sg", ["P 21 21 21", "P 41 21 2", "C 1 2 1"])
def test_mtz_asu_expands_to_every_symmetry_and_friedel_mate(sg, tmp_path, capsys):
    import gemmi
    cell = CELLS[sg]
    rows = asu_rows(sg, cell, 3.0, np.random.default_rng(7))
    path = write_mtz(tmp_path / "asu.mtz", sg, cell, [r + [1.0] for r in rows])
    out = tmp_path / "P1.hkl"
    assert sf.main([str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("nbnumba-sf: %s: using column F (type F, amplitude; data set 'crystal'), the "
                      "first column of type F" % path)
    assert "%d reflections in %s, 0 missing (NaN) left out" % (len(rows), sg) in err[1]
    assert err[1].endswith("use with -cell %g %g %g %g %g %g" % cell)
    got = read_list(out)
    want = whole_sphere(sg, cell, 3.0)
    assert set(got) == want                      # every mate once, absences absent
    assert "%d reflections to" % len(want) in err[1]
    # each index maps back to its ASU reflection (gemmi's own map) and carries its value
    sgo = gemmi.SpaceGroup(sg)
    asu, ops = gemmi.ReciprocalAsu(sgo), sgo.operations()
    value = {tuple(r[:3]): float(np.float32(r[3])) for r in rows}
    for hkl, f in got.items():
        rep = tuple(asu.to_asu(list(hkl), ops)[0])
        assert abs(f - value[rep]) <= 5e-5, (hkl, rep)
    # -dmin cuts the same expansion at 4.5 A, the file's rows beyond it counted
    assert sf.main([str(path), "-dmin", "4.5", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    uc = gemmi.UnitCell(*cell)
    beyond = sum(1 for r in rows if uc.calculate_d(r[:3]) < 4.5 * (1 - 1e-12))
    assert "%d beyond -dmin 4.5 left out" % beyond in err[1] and "to 4.5 A" in err[1]
    assert set(read_list(out)) == whole_sphere(sg, cell, 4.5)
    assert 0 < beyond < len(rows)


def test_mtz_anomalous_pair_puts_f_minus_at_minus_h(tmp_path, capsys):
    import gemmi
    sg, cell = "P 21 21 21", CELLS["P 21 21 21"]
    sgo = gemmi.SpaceGroup(sg)
    asu, ops = gemmi.ReciprocalAsu(sgo), sgo.operations()
    rows = asu_rows(sg, cell, 4.0, np.random.default_rng(3), extra=2)
    for r in rows:                         # centric: F(+) = F(-), as merged data have them
        if ops.is_reflection_centric(r[:3]):
            r[4] = r[3]
    cols = (("F(+)", "G"), ("SIGF(+)", "L"), ("F(-)", "G"), ("SIGF(-)", "L"))
    path = write_mtz(tmp_path / "ano.mtz", sg, cell, [r[:4] + [1.0, r[4], 1.0] for r in rows], cols)
    plus = {tuple(r[:3]): float(np.float32(r[3])) for r in rows}
    minus = {tuple(r[:3]): float(np.float32(r[4])) for r in rows}
    out = tmp_path / "P1.hkl"
    assert sf.main([str(path), "-column", "F(-)", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "columns F(+) and F(-) (type G, anomalous amplitude pair" in err[0]
    got = read_list(out)
    assert set(got) == whole_sphere(sg, cell, 4.0)
    differs = 0
    for hkl, f in got.items():
        rep, isym = asu.to_asu(list(hkl), ops)
        # gemmi's ISYM: odd for an index reached by a rotation (I+), even with inversion (I-)
        assert abs(f - (plus if isym % 2 else minus)[tuple(rep)]) <= 5e-5, hkl
        differs += abs(f - got[tuple(-x for x in hkl)]) > 1e-3
    assert differs > 100                    # Bijvoet differences are kept
    # naming the other half gives the same list
    assert sf.main([str(path), "-column", "F(+)"]) == 0
    assert capsys.readouterr().out == out.read_text()
    # a centric reflection whose halves differ is not merged data
    bad = [list(r) for r in rows]
    c = next(r for r in bad if ops.is_reflection_centric(r[:3]))
    c[4] = c[3] + 1.0
    write_mtz(path, sg, cell, [r[:4] + [1.0, r[4], 1.0] for r in bad], cols)
    err = one_error(capsys, [path, "-column", "F(+)"])
    assert "are symmetry or Friedel mates in P 21 21 21" in err and "not merged" in err
    assert "%d %d %d (F(+))" % tuple(c[:3]) in err and "%d %d %d (F(-))" % tuple(c[:3]) in err


def test_mtz_signalling_nan_is_a_missing_value_without_a_warning(tmp_path, capsys):
    # a float32 signalling NaN in the data: widening it to float64 printed "RuntimeWarning:
    # invalid value encountered in cast" (tools/fuzz_tools.py sf, seed 202, bytes changed)
    import struct
    sg, cell = "P 21 21 21", CELLS["P 21 21 21"]
    rows = [[1, 2, 3, 16.0, 1.0], [2, 0, 1, 4.0, 1.0], [1, 1, 1, 9.0, 1.0]]
    path = write_mtz(tmp_path / "s.mtz", sg, cell, rows)
    raw = bytearray(path.read_bytes())
    assert struct.unpack("<f", raw[80 + 12:80 + 16])[0] == 16.0      # row 1, column F
    raw[80 + 12:80 + 16] = struct.pack("<I", 0x7FA00000)              # signalling NaN
    path.write_bytes(bytes(raw))
    out = tmp_path / "P1.hkl"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sf.main([str(path), "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "3 reflections in P 21 21 21, 1 missing (NaN) left out" in err[1], err
    got = read_list(out)
    assert (1, 2, 3) not in got and got[(2, 0, 1)] == 4.0 and got[(1, 1, 1)] == 9.0


def test_mtz_intensities_missing_values_and_duplicates(tmp_path, capsys):
    sg, cell = "P 21 21 21", CELLS["P 21 21 21"]
    cols = (("IMEAN", "J"), ("SIGIMEAN", "Q"), ("FP", "F"))
    rows = [[1, 2, 3, 16.0, 1.0, 4.5], [2, 0, 1, -4.0, 1.0, 3.0], [0, 2, 2, float("nan"), 1.0, 7.0],
            [1, 1, 1, -0.5, 1.0, float("nan")], [3, 2, 1, 9.0, 1.0, -999.0],
            [-1, 2, 3, 16.0, 1.0, 4.5]]      # a symmetry mate of the first row, same values
    path = write_mtz(tmp_path / "i.mtz", sg, cell, rows, cols, valm=-999.0)
    out = tmp_path / "P1.hkl"
    assert sf.main([str(path), "-intensities", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "column IMEAN (type J, intensity" in err[0] and "the first column of type J" in err[0]
    assert "F = sqrt(max(I, 0)), 2 negative intensities gave F = 0" in err[0]
    assert "6 reflections in P 21 21 21, 1 missing (NaN) left out" in err[1]
    got = read_list(out)
    # 1 2 3 (and its mate in the file): 8 mates; 2 0 1 and 0 2 2 lie on mirror
    # planes of the Laue group: 4 each; 1 1 1: 8; 3 2 1: 8
    assert len(got) == 8 + 4 + 8 + 8
    assert got[(-1, -2, 3)] == 4.0 and got[(2, 0, -1)] == 0.0 and got[(-1, 1, -1)] == 0.0
    assert (0, 2, 2) not in got and (0, -2, 2) not in got
    # the FP column: the NaN and the VALM (-999) values are left out
    assert sf.main([str(path), "-column", "FP", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "2 missing (NaN) left out" in err[1]
    got = read_list(out)
    assert len(got) == 8 + 4 + 4 and got[(1, -2, -3)] == 4.5 and (3, 2, 1) not in got


def mtz_error_cases(tmp_path):
    sg, cell = "P 21 21 21", CELLS["P 21 21 21"]
    cols = (("F", "F"), ("SIGF", "Q"), ("IMEAN", "J"), ("FC", "F"))
    rows = [[1, 2, 3, 10.0, 1.0, 100.0, 9.0], [2, 1, 1, 5.0, 1.0, 25.0, 4.0]]
    good = write_mtz(tmp_path / "good.mtz", sg, cell, rows, cols)
    data = good.read_bytes()
    (tmp_path / "text.mtz").write_text("CRYST1 not an MTZ\n")
    (tmp_path / "cut_data.mtz").write_bytes(data[:100])       # inside the reflections
    (tmp_path / "cut_head.mtz").write_bytes(data[:300])       # inside the header records
    (tmp_path / "cut_end.mtz").write_bytes(data[:-40])        # inside MTZENDOFHEADERS
    write_mtz(tmp_path / "nan.mtz", sg, cell, [[1, 2, 3, float("nan"), 1.0]])
    write_mtz(tmp_path / "half.mtz", sg, cell, [[1.5, 2, 3, 10.0, 1.0]])
    write_mtz(tmp_path / "neg.mtz", sg, cell, [[1, 2, 3, -10.0, 1.0]])
    write_mtz(tmp_path / "conflict.mtz", sg, cell, [[1, 2, 3, 10.0, 1.0], [1, -2, 3, 11.0, 1.0]])
    write_mtz(tmp_path / "badcell.mtz", "P 41 21 2", (20.0, 21.0, 30.0, 90.0, 90.0, 90.0),
              [[1, 2, 3, 10.0, 1.0]])
    write_mtz(tmp_path / "onlyI.mtz", sg, cell, [[1, 2, 3, 10.0, 1.0]], (("I", "J"), ("SIGI", "Q")))
    write_mtz(tmp_path / "ano.mtz", sg, cell, [[1, 2, 3, 10.0, 1.0]], (("DANO", "D"), ("Fano", "G")))
    (tmp_path / "m.pdb").write_text(pdb(CUBE, "P 1", THREE))


def _refused_leaving_out_alone(tmp_path, capsys, args, needle):
    """One error line holding ``needle``, and the earlier -o file untouched."""
    (tmp_path / "out.hkl").write_text("old\n")
    err = one_error(capsys, args + ["-o", "out.hkl"])
    assert needle in err, err
    assert (tmp_path / "out.hkl").read_text() == "old\n"


@pytest.mark.parametrize("args, needle", [
    (["text.mtz"], "text.mtz: not an MTZ file (it does not start with 'MTZ ')"),
    (["cut_data.mtz"], "cut_data.mtz: truncated MTZ file: its header (at byte"),
    (["cut_head.mtz"], "cut_head.mtz: truncated MTZ file: its header (from byte"),
    (["cut_end.mtz"], "cut_end.mtz: truncated MTZ file: no MTZENDOFHEADERS record"),
    (["missing.mtz"], "missing.mtz: no such MTZ file"),
    (["good.mtz", "-column", "FOO"],
     "-column FOO: no such column in good.mtz (amplitude columns: F (F), FC (F); intensity "
     "columns (with -intensities): IMEAN (J))"),
    (["good.mtz", "-column", "SIGF"], "-column SIGF has type Q (standard deviation)"),
    (["good.mtz", "-column", "IMEAN"], "-column IMEAN is an intensity column (type J): add -intensities"),
    (["good.mtz", "-column", "FC", "-intensities"],
     "-intensities: column FC is an amplitude (type F), not an intensity"),
    (["onlyI.mtz"], "onlyI.mtz: no amplitude column (type F); choose one with -column (amplitude "
                    "columns: none; intensity columns (with -intensities): I (J))"),
    (["ano.mtz", "-column", "Fano"], "-column Fano: a type G column (anomalous amplitude) is half"),
    (["ano.mtz", "-column", "DANO"], "-column DANO has type D (anomalous difference)"),
    (["nan.mtz"], "nan.mtz: no reflections left in column F: 1 rows, 1 missing values"),
    (["good.mtz", "-dmin", "30"], "-dmin 30: no reflection of good.mtz has d >= 30 A (its largest "
                                  "d-spacing is 9.183 A)"),
    (["half.mtz"], "half.mtz: reflection 1 has Miller index 1.5 2 3: not an integer"),
    (["neg.mtz"], "neg.mtz: column F (type F, amplitude) holds 1 negative values (first -10 at 1 2 3)"),
    (["conflict.mtz"], "conflict.mtz: column F: reflections 1 2 3 and 1 -2 3 are symmetry or Friedel "
                       "mates in P 21 21 21"),
    (["badcell.mtz"], "badcell.mtz: the cell 20 21 30 90 90 90 does not fit the space group P 41 21 2"),
    (["good.mtz", "-bulk_solvent"], "-bulk_solvent is for an atomic model: good.mtz is an MTZ file"),
    (["good.mtz", "-B_add", "5"], "-B_add is for an atomic model"),
    (["good.mtz", "-k_sol", "0.3"], "-k_sol is for an atomic model"),
    (["good.mtz", "-B_sol", "40"], "-B_sol is for an atomic model"),
    (["m.pdb", "-dmin", "3", "-column", "F"], "-column chooses the data of an MTZ file: m.pdb is a model"),
    (["m.pdb", "-dmin", "3", "-intensities"], "-intensities chooses the data of an MTZ file"),
    (["good.mtz", "-column", ""], "-column: expected a column label"),
])
def test_mtz_errors_are_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mtz_error_cases(tmp_path)
    _refused_leaving_out_alone(tmp_path, capsys, args, needle)


def test_mtz_unmerged_file_is_refused(tmp_path, capsys):
    import gemmi
    path = write_mtz(tmp_path / "u.mtz", "P 21 21 21", CELLS["P 21 21 21"], [[1, 2, 3, 10.0, 1.0]])
    m = gemmi.read_mtz_file(str(path))
    b = gemmi.Mtz.Batch()
    b.number = 1
    m.batches.append(b)
    m.write_to_file(str(path))
    assert "u.mtz: unmerged MTZ file (1 batches)" in one_error(capsys, [path])


def test_mtz_of_a_models_structure_factors_gives_the_models_image(tmp_path, capsys):
    """End to end: a P 21 21 21 model's F (nbnumba-sf's model path), reduced to the
    ASU without its absences and stored in an MTZ, comes back from the MTZ path as
    the same list, and nbnumba renders the same image from both lists."""
    import gemmi
    import nbnumba
    sg, cell = "P 21 21 21", (20.0, 25.0, 30.0, 90.0, 90.0, 90.0)
    atoms = [("C", 1.0, 2.0, 3.0, 10.0), ("O", 4.3, 7.1, 5.2, 12.0), ("N", 8.2, 3.3, 11.7, 8.0),
             ("S", 12.0, 15.5, 2.2, 15.0)]
    (tmp_path / "m.pdb").write_text(pdb(cell, sg, atoms, 4))
    model_list = tmp_path / "model.hkl"
    assert sf.main([str(tmp_path / "m.pdb"), "-dmin", "2.5", "-o", str(model_list)]) == 0
    direct = read_list(model_list)
    sgo = gemmi.SpaceGroup(sg)
    asu, ops = gemmi.ReciprocalAsu(sgo), sgo.operations()
    rows = [[*h, f, 1.0] for h, f in direct.items()
            if asu.is_in(list(h)) and not ops.is_systematically_absent(list(h))]
    write_mtz(tmp_path / "m.mtz", sg, cell, rows)
    mtz_list = tmp_path / "mtz.hkl"
    assert sf.main([str(tmp_path / "m.mtz"), "-dmin", "2.5", "-o", str(mtz_list)]) == 0
    err = capsys.readouterr().err
    assert "use with -cell 20 25 30 90 90 90" in err
    via_mtz = read_list(mtz_list)
    # the same values at every index of the MTZ list; the model list has, in
    # addition, only the systematic absences, at 0 to the printed digits
    assert set(via_mtz) <= set(direct)
    assert all(via_mtz[h] == direct[h] for h in via_mtz)
    extra = set(direct) - set(via_mtz)
    assert extra == {h for h in direct if ABSENT[sg](*h)} and all(direct[h] == 0.0 for h in extra)
    assert set(via_mtz) == whole_sphere(sg, cell, 2.5)
    flags = ("-cell 20 25 30 90 90 90 -lambda 1 -distance 60 -detpixels 48 -pixel 0.8 -N 3 "
             "-oversample 1 -misset 10 20 30 -nonoise -nopgm").split()
    img_model = nbnumba.simulate_argv(flags + ["-hkl", str(model_list)]).float_image
    img_mtz = nbnumba.simulate_argv(flags + ["-hkl", str(mtz_list)]).float_image
    assert img_model.max() > 0 and np.count_nonzero(img_model > 1e-3 * img_model.max()) > 100
    assert np.max(np.abs(img_mtz - img_model)) <= 1e-6 * img_model.max()


# ---------------------------------------------------------------------------
# MTZ input: damaged or self-contradictory headers, lattice absences, odd paths
# ---------------------------------------------------------------------------

def edit_record(data, tag, text, nth=0):
    """``data`` (an MTZ's bytes) with its ``nth`` header record starting with
    ``tag`` replaced by ``text`` (bytes, padded to the 80-byte record)."""
    start = 4 * (int.from_bytes(data[4:8], "little") - 1)
    b = bytearray(data)
    hits = [i for i in range(start, len(data), 80) if data[i:i + len(tag)] == tag]
    i = hits[nth]
    b[i:i + 80] = text.ljust(80)[:80]
    return bytes(b)


def header_defect_cases(tmp_path):
    sg, cell = "P 21 21 21", CELLS["P 21 21 21"]
    rows = [[h, k, l, 10.0 + h + 2 * k + 3 * l, 1.0] for h in range(3) for k in range(3) for l in range(1, 3)]
    data = write_mtz(tmp_path / "src.mtz", sg, cell, rows).read_bytes()
    # NCOL promises 5 of the 18 reflections: gemmi read those 5 and the rest was dropped
    (tmp_path / "nrefl.mtz").write_bytes(edit_record(data, b"NCOL", b"NCOL        5            5        0"))
    # SYMINF names P 1 21 1 over the SYMM records of P 21 21 21: the list had half the mates
    (tmp_path / "syminf.mtz").write_bytes(
        edit_record(data, b"SYMINF", b"SYMINF   2  2 P     4                  'P 1 21 1' PG2"))
    # a column of a data set that the header does not declare: a RuntimeError traceback
    (tmp_path / "dataset.mtz").write_bytes(edit_record(
        data, b"COLUMN F ", b"COLUMN F                              F       1.0             100.0    7"))
    # bytes that are not UTF-8 in a label or the space group's name: UnicodeDecodeError tracebacks
    (tmp_path / "label.mtz").write_bytes(edit_record(
        data, b"COLUMN F ", b"COLUMN F\xff                             F       1.0             100.0    1"))
    (tmp_path / "sgname.mtz").write_bytes(
        edit_record(data, b"SYMINF", b"SYMINF   4  4 P \xff  19           'P 21 21 21' PG222"))
    # gemmi writes R 3 (hexagonal setting) and, for a rhombohedral cell, reads it
    # back as R 3:R: the rows' indices meant the other setting
    write_mtz(tmp_path / "r3.mtz", "R 3", (30.0, 30.0, 30.0, 70.0, 70.0, 70.0), [[1, 0, 0, 5.0, 1.0]])
    write_mtz(tmp_path / "dup.mtz", sg, cell, [[1, 2, 3, 10.0, 20.0]], (("F", "F"), ("F", "F")))
    write_mtz(tmp_path / "lattice.mtz", "C 1 2 1", CELLS["C 1 2 1"],
              [[1, 1, 1, 5.0, 1.0], [1, 0, 1, 6.0, 1.0]])
    (tmp_path / "dir.mtz").mkdir()
    os.mkfifo(str(tmp_path / "fifo.mtz"))


@pytest.mark.parametrize("args, needle", [
    (["nrefl.mtz"], "nrefl.mtz: the NCOL record says 5 columns x 5 reflections (100 bytes of data "
                    "from byte 80), but the header starts at byte 440"),
    (["syminf.mtz"], "syminf.mtz: the space group of the SYMINF record, P 1 21 1, does not match "
                     "the file's 4 SYMM operators (rotations"),
    (["dataset.mtz"], "dataset.mtz: column F belongs to data set 7, which the header does not declare"),
    (["label.mtz"], "label.mtz: the MTZ header holds bytes that are not text (UTF-8) in column 4's label"),
    (["sgname.mtz"], "sgname.mtz: the MTZ header holds bytes that are not text (UTF-8) in the space "
                     "group name"),
    (["r3.mtz"], "r3.mtz: the space group of the SYMINF record, R 3:R, does not match the file's 9 "
                 "SYMM operators"),
    (["dup.mtz", "-column", "F"], "-column F: 2 columns of dup.mtz have this label"),
    (["lattice.mtz"], "lattice.mtz: reflection 1 0 1 (row 2) violates the C centring of C 1 2 1"),
    (["src.mtz", "-dmin", "1e300"], "-dmin 1e+300: no reflection of src.mtz has d >= 1e+300 A"),
    (["dir.mtz"], "dir.mtz: not a regular file (a directory)"),
    (["fifo.mtz"], "fifo.mtz: not a regular file"),
])
def test_mtz_header_defects_are_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header_defect_cases(tmp_path)
    _refused_leaving_out_alone(tmp_path, capsys, args, needle)


@pytest.mark.parametrize("name, needle", [
    ("missing.pdb", "missing.pdb: no such model file"),
    ("dir.pdb", "dir.pdb: not a regular file (a directory)"),
    ("fifo.cif", "fifo.cif: not a regular file (a FIFO, socket or device)"),
])
def test_a_model_that_is_no_regular_file_is_named_so(name, needle, tmp_path, capsys, monkeypatch):
    """A directory or a FIFO given as the model was "no such model file"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.pdb").mkdir()
    os.mkfifo(str(tmp_path / "fifo.cif"))
    _refused_leaving_out_alone(tmp_path, capsys, [name, "-dmin", "2"], needle)


def test_a_model_this_user_may_not_read():
    # gemmi's words named the file twice, with an errno: "m.pdb: cannot read
    # model: [Errno 13] Failed to open m.pdb: Permission denied"
    from nbnumba.testing.users import as_an_ordinary_user, open_folder
    sf._gemmi()                     # (imported before the block)
    with open_folder("nb-sf-") as top:
        model = os.path.join(top, "m.pdb")
        with open(model, "w") as fh:
            fh.write("CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1\n")
        os.chmod(model, 0o000 if os.geteuid() == 0 else 0o200)
        with as_an_ordinary_user():
            with pytest.raises(sf.InputFileError) as err:
                sf.read_model(model)
        assert str(err.value) == "%s: cannot read model: Permission denied" % model


def test_mtz_systematic_absences_left_out_and_tiny_dmin(tmp_path, capsys):
    # 0 0 1 of P 21 21 21 is absent whatever the file says; 1 1 1 has 8 mates
    path = write_mtz(tmp_path / "abs.mtz", "P 21 21 21", CELLS["P 21 21 21"],
                     [[0, 0, 1, 5.0, 1.0], [1, 1, 1, 3.0, 1.0], [0, 0, 2, 4.0, 1.0]])
    out = tmp_path / "P1.hkl"
    # -dmin 1e-300: 1/dmin^2 was a ZeroDivisionError traceback; it keeps every row
    assert sf.main([str(path), "-dmin", "1e-300", "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "1 systematic absence left out" in err[1] and "0 beyond -dmin 1e-300 left out" in err[1]
    got = read_list(out)
    assert set(got) == {(h, k, l) for h in (-1, 1) for k in (-1, 1) for l in (-1, 1)} | {(0, 0, 2), (0, 0, -2)}
    assert (0, 0, 1) not in got and got[(0, 0, -2)] == 4.0


def test_mtz_with_a_non_utf8_name_and_a_precise_cell(tmp_path, capsys):
    # gemmi takes str paths only (UTF-8): such a name was 'incompatible function arguments'
    cell = (123.4567, 45.6789, 67.8912, 90.0, 101.2345, 90.0)
    name = os.fsdecode(b"d\xe9\xff.mtz")
    path = write_mtz(tmp_path / "plain.mtz", "P 1 21 1", cell, [[1, 2, 3, 10.0, 1.0]])
    os.rename(str(path), str(tmp_path / name))
    out = tmp_path / "P1.hkl"
    assert sf.main([str(tmp_path / name), "-o", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(read_list(out)) == 4
    # the MTZ's cell (single precision) to its last digit: %g gave 123.457
    assert err[1].endswith("use with -cell 123.4567 45.6789 67.8912 90 101.2345 90"), err[1]


def test_b_add_leaves_the_callers_structure_as_it_was(tmp_path):
    """structure_factors(st, B_add=...) added B to the caller's own atoms: a second
    call on the same structure added it again (other F), and a refusal part-way
    left the atoms changed."""
    p = tmp_path / "m.pdb"
    p.write_text(pdb(CUBE, "P 1", THREE))
    st = sf.read_model(str(p))
    before = [cra.atom.b_iso for cra in st[0].all()]
    _, F1 = sf.structure_factors(st, 3.0, B_add=20.0)
    _, F2 = sf.structure_factors(st, 3.0, B_add=20.0)
    assert np.array_equal(F1, F2)
    assert [cra.atom.b_iso for cra in st[0].all()] == before
    _, F0 = sf.structure_factors(st, 3.0)
    assert np.all(F1 < F0)          # the added B damps every reflection (s > 0)
    with pytest.raises(sf.UsageError, match="-B_add -2895"):
        sf.structure_factors(st, 3.0, B_add=-2895.0)
    assert [cra.atom.b_iso for cra in st[0].all()] == before


def test_reflections_past_memory_are_refused_before_the_direct_sums(tmp_path, capsys, monkeypatch):
    """A 1e9 A edge at -dmin 100 passed every check and wrote 2e7 lines, 6.0 GB
    at its peak (tools/fuzz_tools.py sf, seed 302): on a machine with less
    memory, an OOM kill.  The reflections' memory is weighed before the direct
    sums, as the index box's is (here against a 50 MB limit)."""
    from nbnumba import validate
    lines = pdb(CUBE, "P 1", THREE).splitlines()
    lines[0] = "CRYST1" + "%9s" % "1e7" + lines[0][15:]
    p = tmp_path / "long.pdb"
    p.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.hkl"
    monkeypatch.setattr(validate, "memory_limit", lambda cfg=None: (50e6, "a 50 MB test limit"))
    err = one_error(capsys, [p, "-dmin", "100", "-o", out])
    assert err.startswith("nbnumba-sf: error: -dmin 100: the 10000000 20 20 90 90 90 cell has 200000 "
                          "reflections with d >= 100 A, about 70 MB of memory to compute and "
                          "write, more than a 50 MB test limit; give a larger -dmin"), err
    assert not out.exists()
    monkeypatch.setattr(validate, "memory_limit", lambda cfg=None: (80e6, "80 MB"))
    assert sf.main([str(p), "-dmin", "100", "-o", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 200000
