"""The CLI as a user meets it: files identical to nanoBragg.c's, clear one-line
errors with exit status 2, atomic outputs that never clobber inputs."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nbnumba.testing import golden

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "nbnumba.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def stage(case, tmp_path):
    for name in case.inputs:
        shutil.copy(golden.inputs_dir() / name, tmp_path / name)


def c_stdout_lines(case):
    return (golden.case_dir(case.name) / "stdout.txt").read_text().splitlines()


def _smv_split(raw):
    from nbnumba.io.smv import header_value, _parse_entries
    text = raw.split(b"}", 1)[0].decode("latin-1")
    size = int(header_value({"HEADER_BYTES": text.split("HEADER_BYTES=")[1].split(";")[0]},
                            "HEADER_BYTES", exact=True))
    return list(_parse_entries(text + "}").items()), raw[size:]


def assert_c_header_plus_reader_keys(ours, theirs, fname):
    """Default mode: C's pixels and C's header keys in C's order and text, then
    the keys image readers need (HEADER_BYTES may grow to hold them)."""
    mine, my_pixels = _smv_split(ours)
    c, c_pixels = _smv_split(theirs)
    assert my_pixels == c_pixels, fname
    assert [kv for kv in mine[:len(c)] if kv[0] != "HEADER_BYTES"] == \
        [kv for kv in c if kv[0] != "HEADER_BYTES"], fname
    assert [k for k, _ in mine[len(c):]] == ["ADC_OFFSET", "IMAGE_PEDESTAL", "TIME", "DATE"], fname


def test_cli_c_parity_smv_is_byte_identical_for_a_default_case(tmp_path):
    case = golden.get_case("mosflm_xbeam_misset")
    stage(case, tmp_path)
    r = run_cli(list(case.args) + ["-c_parity"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "int.img").read_bytes() == (golden.case_dir(case.name) / "int.img").read_bytes()


@pytest.mark.parametrize("name", ["noise_seed", "mosflm_xbeam_misset", "pgm_scale"])
def test_cli_files_identical_to_c(name, tmp_path):
    case = golden.get_case(name)
    stage(case, tmp_path)
    args = list(case.args) + (["-c_parity"] if case.mode == "c_parity" else [])
    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    ref = golden.case_dir(name)
    for fname in ("float.bin", "int.img", "noise.img", "image.pgm"):
        if not (ref / fname).exists():
            continue
        ours, theirs = (tmp_path / fname).read_bytes(), (ref / fname).read_bytes()
        if case.mode == "c_parity" or not fname.endswith(".img"):
            assert ours == theirs, fname
        else:
            assert_c_header_plus_reader_keys(ours, theirs, fname)
    # the summary figures scripts grep for are printed with the C's wording
    for key in ("max_I = ", "mean= ", "intfile_scale = ", "photons on noise image"):
        c_line = [l for l in c_stdout_lines(case) if key in l]
        p_line = [l for l in r.stdout.splitlines() if key in l]
        if key == "mean= " and case.mode == "default":
            # the default mode's rms divides by n, the C's by n - 1 (docs/quirks.md #35)
            drop = lambda ls: [re.sub(r" rms= \S+", "", l) for l in ls]
            c_line, p_line = drop(c_line), drop(p_line)
        assert c_line == p_line, key


def test_cli_help_lists_every_flag(tmp_path):
    from nbnumba.flags import flag_names
    r = run_cli(["-h"], tmp_path)
    assert r.returncode == 0
    missing = [f for f in flag_names() if f not in r.stdout]
    assert not missing


@pytest.mark.parametrize("args, needle", [
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-bogus"], "-bogus"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-distance", "abc"], "-distance"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-pixel", "0"], "pixel"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-detpixels", "1000000"], "too large"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-distance", "nan"], "-distance"),
    (["-default_F", "1"], "unit cell"),
    (["-cell", "50", "50", "50", "90", "90", "90"], "structure factors"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-hkl", "missing.hkl"], "missing.hkl"),
    (["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-oversample_thick"],
     "-oversample_thick needs a sensor"),
])
def test_cli_errors_are_one_line(args, needle, tmp_path):
    r = run_cli(args + ["-detpixels", "8"] if "-detpixels" not in args else args, tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    first = r.stderr.strip().splitlines()[0]
    assert needle in first, first
    assert not any(p.name.endswith((".bin", ".img", ".pgm")) for p in tmp_path.iterdir())


def test_oversample_thick_without_a_sensor_is_refused_outside_c_parity():
    """Without a sensor depth nanoBragg's capture fraction is 0 in every
    sub-path under -oversample_thick: a blank image.  The default mode refuses
    the switch there (no thickness, or absorption turned off), -c_parity keeps
    the C's blank image, and with a sensor the switch renders."""
    import nbnumba
    from nbnumba.errors import ConfigError
    base = "-cell 50 50 50 90 90 90 -default_F 1 -lambda 1 -distance 100 -detpixels 8 -nonoise".split()
    for extra in ([], ["-detector_thick", "100", "-detector_abs", "inf"]):
        with pytest.raises(ConfigError, match="-oversample_thick needs a sensor"):
            nbnumba.simulate_argv(base + extra + ["-oversample_thick"])
    assert nbnumba.simulate_argv(base + ["-oversample_thick", "-c_parity"]).float_image.max() == 0.0
    img = nbnumba.simulate_argv(base + ["-oversample_thick", "-detector_thick", "100"]).float_image
    assert img.max() > 0.0


def test_cli_malformed_hkl_names_file_and_line(tmp_path):
    (tmp_path / "bad.hkl").write_text("1 2 3 10.0\n1 2 x 4.0\n2 2 2 3.0\n")
    r = run_cli(["-cell", "50", "50", "50", "90", "90", "90", "-hkl", "bad.hkl", "-detpixels", "8"], tmp_path)
    assert r.returncode == 2
    assert "bad.hkl" in r.stderr and "line 2" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_never_clobbers_inputs(tmp_path):
    (tmp_path / "F.hkl").write_text("0 0 0 10\n1 0 0 5\n")
    before = (tmp_path / "F.hkl").read_bytes()
    r = run_cli(["-cell", "50", "50", "50", "90", "90", "90", "-hkl", "F.hkl", "-detpixels", "8",
                 "-floatfile", "F.hkl", "-nonoise", "-nopgm"], tmp_path)
    assert r.returncode != 0
    assert "F.hkl" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "F.hkl").read_bytes() == before


def test_cli_piped_into_head_still_writes_its_files(tmp_path):
    """`nbnumba ... | head -1`: the reader leaving ends the text, not the run (as
    a closed stdout does): no BrokenPipeError traceback, the files, exit 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO), NBNUMBA_SERVER="0")
    args = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
            "-detpixels 32 -nopgm -nonoise -printout").split()
    p = subprocess.Popen([sys.executable, "-m", "nbnumba.cli", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"nanoBragg")
    p.stdout.close()            # head -1 exits
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err
    assert err == ""
    assert (tmp_path / "floatimage.bin").stat().st_size == 32 * 32 * 4
    assert (tmp_path / "intimage.img").exists()


def test_cli_failed_write_leaves_no_partial_file(tmp_path):
    (tmp_path / "out").write_text("a regular file, not a directory")
    r = run_cli(["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-detpixels", "8",
                 "-floatfile", "out/img.bin", "-nonoise", "-nopgm"], tmp_path)
    assert r.returncode != 0
    assert "out/img.bin" in r.stderr and "Traceback" not in r.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("out",)]
    assert all(not n.startswith((".", "tmp")) for n in leftovers), leftovers


def test_cli_writes_fdump_cache_and_reuses_it_loudly(tmp_path):
    (tmp_path / "F.hkl").write_text("".join("%d %d %d %.1f\n" % (h, k, l, 10 + h + k + l)
                                            for h in range(-2, 3) for k in range(-2, 3) for l in range(-2, 3)))
    base = ["-cell", "50", "50", "50", "90", "90", "90", "-detpixels", "16", "-N", "3", "-nonoise", "-nopgm"]
    r1 = run_cli(base + ["-hkl", "F.hkl", "-floatfile", "a.bin"], tmp_path)
    assert r1.returncode == 0 and (tmp_path / "Fdump.bin").exists()
    r2 = run_cli(base + ["-floatfile", "b.bin"], tmp_path)
    assert r2.returncode == 0
    assert "reading Fs from Fdump.bin" in r2.stdout
    a = np.fromfile(tmp_path / "a.bin", np.float32)
    b = np.fromfile(tmp_path / "b.bin", np.float32)
    np.testing.assert_array_equal(a, b)


def test_cli_device_cuda_without_gpu_fails_cleanly(tmp_path):
    from nbnumba.kernels import gpu
    if gpu.available():
        pytest.skip("a CUDA device is present: -device cuda is expected to work here")
    r = run_cli(["-cell", "50", "50", "50", "90", "90", "90", "-default_F", "1", "-detpixels", "8",
                 "-device", "cuda", "-nonoise"], tmp_path)
    assert r.returncode == 2
    assert "-device cuda" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_a_removed_working_directory_is_one_line(tmp_path):
    """A run started in a directory that was then removed (absolute output
    paths): one error line and exit 2; it was a FileNotFoundError traceback
    from os.path.realpath, exit 1."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = ("import os, sys; os.chdir(%r); os.rmdir(%r); from nbnumba import cli; "
            "sys.exit(cli.main(sys.argv[1:]))" % (str(gone), str(gone)))
    env = dict(os.environ, PYTHONPATH=str(REPO), NBNUMBA_SERVER="0")
    r = subprocess.run([sys.executable, "-c", code, "-cell", "70", "80", "90", "90", "90", "90",
                        "-default_F", "100", "-N", "2", "-lambda", "1.5", "-detpixels", "8",
                        "-floatfile", str(tmp_path / "f.bin"), "-nonoise", "-nopgm"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "working directory no longer exists" in r.stderr
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize("module, argv", [
    ("nbnumba.series", ["--frames", "1", "--out", "o", "-N", "1"]),
    ("nbnumba.expt", ["x.expt"]),
    ("nbnumba.sf", ["x.pdb", "-dmin", "2"]),
    ("nbnumba.tools.compare", ["--", "-N", "1"]),
    ("nbnumba.tools.probe.cli", ["--pixel", "1", "1", "--", "-N", "1"]),
    ("nbnumba.tools.trace_diff", ["a.log", "b.log"]),
    ("nbnumba.tools.sincg_sweep", []),
])
def test_every_command_in_a_removed_working_directory_is_one_line(module, argv, tmp_path,
                                                                  monkeypatch, capsys):
    """The CLI's one line for a removed working directory, in every command:
    nbnumba-series, nbnumba-expt and nb-compare ended in a FileNotFoundError
    traceback (os.path.abspath)."""
    import importlib
    main = importlib.import_module(module).main
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.endswith(": error: the working directory no longer exists (it was removed): cd to "
                        "an existing directory\n") and err.count("\n") == 1, err


@pytest.mark.parametrize("tool", ["nbnumba.cli", "nbnumba.tools.compare", "nbnumba.tools.probe"])
def test_help_on_a_stdout_that_cannot_encode_it(tmp_path, tool):
    """-h on a stdout whose encoding lacks a character of the text
    (PYTHONIOENCODING=ascii; the flags' Angstrom sign): it was a
    UnicodeEncodeError traceback, exit 1.  Now the character is escaped as
    Python's stderr escapes it, and the help exits 0."""
    env = dict(os.environ, PYTHONIOENCODING="ascii", PYTHONPATH=str(REPO), NBNUMBA_SERVER="0")
    r = subprocess.run([sys.executable, "-m", tool, "-h"], cwd=tmp_path, env=env,
                       capture_output=True, timeout=300)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr[-400:]
    out = r.stdout.decode("ascii")          # every byte ASCII
    assert "\\x" in out or "\\u" in out
    if tool == "nbnumba.cli":
        assert "\\xc5" in out and "-distance" in out


@pytest.mark.parametrize("tool, prog", [("nbnumba.cli", "python -m nbnumba.cli"),
                                        ("nbnumba.sf", "nbnumba-sf"),
                                        ("nbnumba.series", "nbnumba-series"),
                                        ("nbnumba.expt", "nbnumba-expt")])
def test_version(tmp_path, tool, prog):
    """--version: one line with nbnumba's version and the installed numpy and
    numba (for bug reports); it was an unknown flag in all four, exit 2."""
    import numba
    import nbnumba
    env = dict(os.environ, PYTHONPATH=str(REPO), NBNUMBA_SERVER="0")
    r = subprocess.run([sys.executable, "-m", tool, "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    line = r.stdout.strip()
    assert "\n" not in line and line.startswith("%s (nbnumba %s): Python " % (prog, nbnumba.__version__))
    assert ("numpy %s" % np.__version__) in line and ("numba %s" % numba.__version__) in line
    assert list(tmp_path.iterdir()) == []
    if tool == "nbnumba.cli":
        r = subprocess.run([sys.executable, "-m", tool, "--version", "-N", "5"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr == "nbnumba: error: --version takes no arguments\n"


@pytest.mark.parametrize("module", ["nbnumba.cli", "nbnumba.sf", "nbnumba.series", "nbnumba.expt"])
def test_main_called_from_python_with_no_list_of_words(module, capsys, tmp_path, monkeypatch):
    """main(argv) from Python given a string (its characters were taken for
    words: "unknown flag '-'"), a number or a path (TypeError tracebacks), or
    a list holding None, bytes or True (AttributeError and TypeError
    tracebacks in the tools): one line naming the problem, exit 2."""
    import importlib
    import pathlib
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    for argv, why in [("-N 5", "argv: expected a list of arguments (words), got str: split the "
                               "command line, e.g. shlex.split(line)"),
                      (5, "argv: expected a list of arguments (words), got int"),
                      (pathlib.Path("x"), "argv: expected a list of arguments (words), got PosixPath"),
                      (["-N 5 -default_F 1"], "argv: one word holds the whole command line "
                                              "'-N 5 -default_F 1': pass a list of words, e.g. "
                                              "shlex.split(line)"),
                      (["-N", None], "argv[1]: expected a word (str), got NoneType"),
                      ([b"-N"], "argv[0]: expected a word (str), got bytes"),
                      ([True], "argv[0]: expected a word (str), got bool")]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.endswith(": error: %s\n" % why) and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
    # numbers, paths and numpy's strings are words
    assert main([pathlib.Path("-h")]) == 0 and "usage" in capsys.readouterr().out.lower()
