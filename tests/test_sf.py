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
