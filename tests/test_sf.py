"""nbnumba-sf: P1 structure factors from a model, checked against analytic cases."""
import math

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
    (["empty.pdb", "-dmin", "2"], "empty.pdb"),
    # an index box beyond memory: numpy's MemoryError (477 GiB) and an
    # OverflowError (1e-320) were tracebacks
    (["m.pdb", "-dmin", "0.01"], "-dmin 0.01: the index box holds 6.4e+10 points"),
    (["m.pdb", "-dmin", "1e-320"], "the index box holds inf points"),
])
def test_errors_are_one_line(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pdb").write_text(pdb((20.0,) * 3 + (90.0,) * 3, "P 1", [("C", 0, 0, 0, 0.0)]))
    (tmp_path / "empty.pdb").write_text("END\n")
    assert sf.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("nbnumba-sf: error:")


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
