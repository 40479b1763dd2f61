"""Many images in one process: nbnumba.simulate_many and ``nbnumba --batch``
(per-line status, failure isolation, exit status), and the start-up savings
(plain-Python RNG draws for runs without mosaicity)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import nbnumba
from nbnumba import cli, rng
from nbnumba.testing import synth

BASE = "-cell 70 80 90 90 90 90 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.5 " \
       "-distance 100 -pixel 0.4 -nopgm -seed 1"


def _argv(n, extra=""):
    return ("%s -detpixels %d %s" % (BASE, n, extra)).split()


def test_simulate_many_matches_one_by_one_and_isolates_failures(tmp_path):
    argvs = [_argv(8), _argv(12, "-nonoise"), ["-cell", "1", "2"], _argv(10, "-mosaic 0.3 -mosaic_dom 2"),
             _argv(9, "-lambda -1"), _argv(8, "-c_parity -nonoise")]
    items = nbnumba.simulate_many(argvs, cwd=str(tmp_path), workers=2)
    assert [it.index for it in items] == list(range(len(argvs)))
    assert [it.ok for it in items] == [True, True, False, True, False, True]
    assert items[2].exit_code == 2 and "-cell" in items[2].error
    assert items[4].exit_code != 0 and items[4].error
    for i in (0, 1, 3, 5):
        one = nbnumba.simulate_argv(argvs[i], cwd=str(tmp_path))
        assert np.array_equal(items[i].result.float_image, one.float_image)
        if one.noise_image is not None:
            assert np.array_equal(items[i].result.noise_image, one.noise_image)
    assert not list(tmp_path.iterdir())          # write=False writes nothing


def test_simulate_many_threads_per_image_gives_the_same_images(tmp_path):
    argvs = [_argv(16, "-nonoise -mosaic 0.3 -mosaic_dom 3"), _argv(16, "-nonoise -oversample 2")]
    pool = nbnumba.simulate_many(argvs, workers=2)
    multi = nbnumba.simulate_many(argvs, workers=1, threads=2)
    for a, b in zip(pool, multi):
        assert a.ok and b.ok
        assert np.array_equal(a.result.float_image, b.result.float_image)


def test_batch_cli_status_lines_and_exit_status(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [
        "# a comment, then a blank line",
        "",
        "nanoBragg " + " ".join(_argv(8, "-floatfile a.bin -intfile a.img -noisefile a_noise.img")),
        " ".join(_argv(8, "-floatfile b.bin -intfile b.img -nonoise -bogus_flag")),
        " ".join(_argv(8, "-floatfile c.bin -intfile c.img -nonoise")),
    ]
    (tmp_path / "cmds.txt").write_text("\n".join(lines) + "\n")
    rc = cli.main(["--batch", "cmds.txt", "--workers", "2"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1                               # one line failed
    status = {l.split(":")[0]: l for l in out if l.startswith("line ")}
    assert set(status) == {"line 3", "line 4", "line 5"}
    assert "ok" in status["line 3"] and "ok" in status["line 5"]
    assert "error (exit 2)" in status["line 4"] and "bogus_flag" in status["line 4"]
    assert out[-1].startswith("batch: 2 of 3 command lines ok, 1 failed")
    for name in ("a.bin", "a.img", "a_noise.img", "c.bin", "c.img"):
        assert (tmp_path / name).stat().st_size > 0
    assert not (tmp_path / "b.bin").exists()
    # all lines good -> 0
    (tmp_path / "good.txt").write_text(lines[4] + "\n")
    assert cli.main(["--batch", "good.txt"]) == 0
    capsys.readouterr()


def test_batch_line_with_an_unclosed_quote_is_its_own_error(tmp_path, capsys, monkeypatch):
    # the line used to run as the argv ['--unparsable-line--', why], whose
    # error named that made-up flag; the other lines still run
    monkeypatch.chdir(tmp_path)
    good = " ".join(_argv(8, "-floatfile a.bin -nonoise"))
    (tmp_path / "cmds.txt").write_text(good + "\n" + "-cell 70 80 90 90 90 90 -hkl 'x.hkl\n")
    assert cli.main(["--batch", "cmds.txt"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "line 2: error (exit 2): cannot split the line into arguments: No closing quotation" in out
    assert any(l.startswith("line 1: ok") for l in out)
    assert out[-1].startswith("batch: 1 of 2 command lines ok, 1 failed")
    assert not any("unparsable" in l for l in out)


_TINY = ("-cell 100 100 100 90 90 90 -default_F 1 -detpixels 8 -nonoise -nopgm -noprogress "
         "-lambda 1 -distance 100")


def test_batch_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    # a Latin-1 byte in a comment was a UnicodeDecodeError traceback
    p = tmp_path / "l1.txt"
    p.write_bytes(b"# caf\xe9\n")
    assert cli.main(["--batch", str(p)]) == 2
    err = capsys.readouterr().err
    assert err == "nbnumba: error: %s line 1: not UTF-8 text (byte 0xe9): a batch file holds " \
                  "command lines\n" % p


def test_batch_file_that_never_ends_is_one_line(monkeypatch, capsys):
    """--batch /dev/zero was read until the OOM killer ended the process (after
    52 s, 23.2 GiB resident); a stream is read to io._args.STREAM_MAX_BYTES."""
    from nbnumba.io import _args
    monkeypatch.setattr(_args, "STREAM_MAX_BYTES", 1 << 16)
    assert cli.main(["--batch", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err == ("nbnumba: error: /dev/zero: more than 0 MiB from a stream (not a regular file) "
                   "and no end in sight: an endless device such as /dev/zero?\n")


def test_batch_lines_never_write_the_batch_file_or_each_others_files(tmp_path, capsys,
                                                                      monkeypatch):
    # a line's -floatfile replaced the batch file; two lines naming one output
    # both said "ok" and the file held whichever finished last
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "b.txt"
    text = "\n".join(["%s -floatfile b.txt -intfile i0.img" % _TINY,
                      "%s -floatfile same.bin -intfile i1.img" % _TINY,
                      "%s -floatfile same.bin -intfile i2.img -detpixels 9" % _TINY,
                      "%s -floatfile f3.bin" % _TINY,
                      "%s -floatfile f4.bin" % _TINY]) + "\n"
    p.write_text(text)
    assert cli.main(["--batch", str(p), "--workers", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert p.read_text() == text
    assert ("line 1: error (exit 2): refusing to write -floatfile 'b.txt': it is also an input "
            "file of this run ('%s')" % p) in out
    assert ("line 3: error (exit 2): -floatfile 'same.bin' is also line 2's -floatfile: the lines "
            "run at once, give each its own file") in out
    assert ("line 5: error (exit 2): -intfile 'intimage.img' is also line 4's -intfile: the lines "
            "run at once, give each its own file") in out
    assert out[-1].startswith("batch: 2 of 5 command lines ok, 3 failed")
    assert (tmp_path / "same.bin").stat().st_size == 8 * 8 * 4      # line 2's image
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "b.txt", "f3.bin", "i1.img", "intimage.img", "same.bin"]



def test_batch_lines_share_the_fdump_cache_only_from_one_hkl_file(tmp_path, capsys,
                                                                   monkeypatch):
    """The Fdump.bin cache that -hkl lines write was exempt from the batch's output
    check: two -hkl files filled it in either order, and a line without -hkl read
    it or not depending on the threads' timing (it reads the cache when it exists)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.hkl").write_text("0 0 0 1\n")
    (tmp_path / "k2.hkl").write_text("0 0 0 2\n")
    p = tmp_path / "b.txt"
    p.write_text("\n".join(["%s -floatfile a.bin -intfile a.img -hkl k.hkl" % _TINY,
                            "%s -floatfile b.bin -intfile b.img -hkl k2.hkl" % _TINY,
                            "%s -floatfile c.bin -intfile c.img -hkl k.hkl" % _TINY,
                            "%s -floatfile d.bin -intfile d.img" % _TINY,
                            "%s -floatfile Fdump.bin -intfile e.img -hkl k.hkl" % _TINY]) + "\n")
    assert cli.main(["--batch", str(p), "--workers", "2"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert ("line 2: error (exit 2): line 2 would fill the Fdump.bin cache from -hkl k2.hkl, and "
            "line 1 from -hkl k.hkl: the lines run at once, run them in two folders") in out
    assert ("line 4: error (exit 2): line 4 would read the Fdump.bin cache that line 1 writes: "
            "the lines run at once, so its F would depend on the timing; give it -hkl, or run it "
            "in another folder") in out
    assert any(l.startswith("line 5: error (exit 2): ") and "Fdump.bin" in l for l in out)
    assert out[-1].startswith("batch: 2 of 5 command lines ok, 3 failed")
    # what the two lines of k.hkl wrote: k.hkl's F
    from nbnumba.io.hkl import read_fdump
    assert float(read_fdump(str(tmp_path / "Fdump.bin")).F.max()) == 1.0


def test_batch_cli_bad_requests(tmp_path, capsys):
    assert cli.main(["--batch", str(tmp_path / "missing.txt")]) != 0
    err = capsys.readouterr().err
    assert "missing.txt" in err and "Traceback" not in err
    # one line each (the usage in it), and counts as the flags' integers are
    for bad in (["--batch"], ["--batch", "x.txt", "--workers", "0"],
                ["--batch", "x.txt", "--threads", "\uff13"], ["--batch", "x.txt", "--workers", "1_0"]):
        assert cli.main(bad) == 2, bad
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "usage: nbnumba --batch" in err, (bad, err)
    # --help is help (as --serve --help), not "bad --batch arguments"
    for ask in ("--help", "-h"):
        assert cli.main(["--batch", ask]) == 0
        o = capsys.readouterr()
        assert o.err == "" and o.out.startswith("usage: nbnumba --batch COMMANDS.txt"), o


def test_ran1_py_matches_compiled_ran1():
    for seed in (-1, 0, 5, -123456):
        b1 = np.zeros(2 + rng.NTAB, np.int64)
        b2 = b1.copy()
        i1 = np.array([seed], np.int64)
        i2 = i1.copy()
        a = [rng.ran1(i1, b1) for _ in range(40)]
        b = [rng.ran1_py(i2, b2) for _ in range(40)]
        assert a == b and np.array_equal(b1, b2) and i1[0] == i2[0]


def test_run_without_mosaic_keeps_the_noise_image(tmp_path):
    """The plain-Python draws leave the RNG exactly as the compiled ones did:
    the noise image of a positive seed (state carried over) is unchanged."""
    from nbnumba import crystal
    st1, st2 = rng.RngState(), rng.RngState()
    crystal.mosaic_umats(0.0, 3, st1, 7)
    idum = np.array([7], np.int64)
    for _ in range(3):
        rng.mosaic_rotation_umat(0.0, idum, st2.buf)
    assert np.array_equal(st1.buf, st2.buf)


def test_kernel_threads_follow_numba_setting():
    """Without -threads the kernel uses numba's thread count when the caller set
    it (the benchmarks do), else the usable cores."""
    import numba
    from nbnumba.kernels import cpu as K
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert K.default_threads() == 1
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        assert K.default_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(saved)


def test_simulate_many_fails_a_line_that_is_no_list_of_words_alone():
    """[None, argv] and [5, argv] raised TypeError for the whole batch, and a
    string line ran as its characters ("unknown flag '-'"): now that line
    fails with its own error and the others run (as the docs promise)."""
    good = _argv(8, "-nonoise")
    items = nbnumba.simulate_many([None, good, 5, " ".join(good), [" ".join(good)]], workers=1)
    assert [it.ok for it in items] == [False, True, False, False, False]
    assert [it.exit_code for it in items] == [2, 0, 2, 2, 2]
    assert items[0].error == "argvs[0]: expected a list of arguments (words), got NoneType"
    assert items[2].error == "argvs[2]: expected a list of arguments (words), got int"
    assert items[3].error.startswith("argvs[3]: expected a list of arguments (words), got str: "
                                     "split the command line, e.g. shlex.split(line)")
    assert items[4].error.startswith("argvs[4]: one word holds the whole command line")
    one = nbnumba.simulate_argv(good)
    assert np.array_equal(items[1].result.float_image, one.float_image)
    # any iterable of lines: a generator (it had no len())
    gen = nbnumba.simulate_many((a for a in [good, good]), workers=2)
    assert [it.ok for it in gen] == [True, True]
    assert np.array_equal(gen[1].result.float_image, one.float_image)


def test_simulate_many_refuses_bad_arguments_naming_them(tmp_path):
    import pytest
    from nbnumba.errors import ConfigError
    good = [_argv(8, "-nonoise")]
    for kw, msg in [(dict(argvs=None), "^argvs: expected a list of command lines"),
                    (dict(argvs=" ".join(good[0])), "got str: split each line"),
                    # "x" was a ValueError; -5 and 0 ran on 1 worker or all cores
                    (dict(workers="x"), r"^workers: expected a whole number >= 1 .*got 'x'$"),
                    (dict(workers=-5), "^workers: .* got -5$"),
                    (dict(workers=0), "^workers: .* got 0$"),
                    # 1.5 was 1 thread, 0 the default
                    (dict(threads=1.5), "^threads: .* got 1.5$"),
                    (dict(threads=0), "^threads: .* got 0$"),
                    (dict(write="no"), "^write: expected True or False"),
                    # a FileNotFoundError / NotADirectoryError from os.chdir
                    (dict(cwd=str(tmp_path / "missing")), "^cwd: .*missing: no such directory$"),
                    (dict(cwd=__file__), "^cwd: .*: not a directory$"),
                    # one name was read as one-character names (nothing protected);
                    # a NUL byte was a ValueError from os.path.realpath
                    (dict(protect="a.img", write=True), "^protect: .* got str: wrap one name in a list$"),
                    (dict(protect=[3], write=True), "^protect: expected file names .*got 3$"),
                    (dict(protect=["a\x00b"], write=True), "^protect: expected file names .*NUL"),
                    # a string's letters were the lines' names; a short list an IndexError
                    (dict(labels="ab"), "^labels: expected one name .* got str$"),
                    (dict(labels=[]), "^labels: expected 1 name\\(s\\) .* got 0$"),
                    (dict(labels=[5]), "^labels: expected 1 name\\(s\\) .* got 5$")]:
        args = dict(dict(argvs=good), **kw)
        with pytest.raises(ConfigError, match=msg):
            nbnumba.simulate_many(args.pop("argvs"), **args)


def _half_mask(path, full):
    """An 8 x 8 SMV mask: all ones, or (not full) zeros in the left half."""
    data = np.ones((8, 8), dtype=np.uint16)
    data[:, :4] = 1 if full else 0
    synth.write_smv(str(path), data, {})


def test_simulate_many_cwd_in_threads_reads_its_own_files(tmp_path, monkeypatch):
    """simulate_many(cwd=) changed the process's directory while it parsed:
    two threads' batches read each other's -mask (silently wrong images).
    Now relative paths resolve against cwd, and os.chdir is never called."""
    import os
    import threading
    chdirs = []
    real_chdir = os.chdir
    monkeypatch.setattr(os, "chdir", lambda p: (chdirs.append(p), real_chdir(p)))
    for name, full in (("full", True), ("half", False)):
        (tmp_path / name).mkdir()
        _half_mask(tmp_path / name / "mask.img", full)
    start = os.getcwd()
    argv = _argv(8, "-nonoise -mask mask.img")
    got, errors = [], []

    def go(name):
        try:
            for it in nbnumba.simulate_many([argv] * 3, cwd=str(tmp_path / name), workers=1):
                img = it.result.float_image
                got.append((name, int(np.count_nonzero(img[:, :4])),
                            int(np.count_nonzero(img[:, 4:]))))
        except Exception as exc:          # noqa: B902 - reported below
            errors.append(exc)
    ts = [threading.Thread(target=go, args=(n,)) for n in ("full", "half") * 2]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and len(got) == 12
    for name, left, right in got:
        assert right == 32 and left == (32 if name == "full" else 0), (name, left, right)
    assert os.getcwd() == start and chdirs == []


def test_batch_hash_inside_a_word_is_no_comment(tmp_path, capsys, monkeypatch):
    # shlex's comments=True cut `-floatfile run#1.bin -nonoise` to `-floatfile run`:
    # the image went to `run`, and intimage.img plus a noise image were written
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cmds.txt").write_text(
        " ".join(_argv(8, "-floatfile run#1.bin -intfile r.img -nonoise")) + "  # a comment\n")
    assert cli.main(["--batch", "cmds.txt"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmds.txt", "r.img", "run#1.bin"]


def test_batch_lines_end_only_at_newlines_and_a_bom_is_skipped(tmp_path, capsys, monkeypatch):
    # str.splitlines split a comment at a form feed (its tail ran as a command line)
    # and shifted every later line number; a UTF-8 BOM was part of the first word
    monkeypatch.chdir(tmp_path)
    data = ("\ufeff" + " ".join(_argv(8, "-floatfile a.bin -intfile a.img -nonoise")) + "\r\n"
            "# page\x0c -detpixels 9 -floatfile b.bin\n"
            "-bogus_flag\r"
            "-other_bogus\n")
    (tmp_path / "cmds.txt").write_bytes(data.encode())
    assert cli.main(["--batch", "cmds.txt"]) == 1
    out = capsys.readouterr().out.splitlines()
    status = {l.split(":")[0]: l for l in out if l.startswith("line ")}
    assert set(status) == {"line 1", "line 3", "line 4"}
    assert " ok " in status["line 1"]
    assert "-bogus_flag" in status["line 3"] and "-other_bogus" in status["line 4"]
    assert not (tmp_path / "b.bin").exists()


def test_batch_line_with_a_nul_byte_fails_alone(tmp_path, capsys, monkeypatch):
    # it was a ValueError traceback ("embedded null byte") for the whole batch
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cmds.txt").write_bytes(
        (" ".join(_argv(8, "-floatfile a.bin -intfile a\x00.img -nonoise")) + "\n"
         + " ".join(_argv(8, "-floatfile b.bin -intfile b.img -nonoise")) + "\n").encode())
    assert cli.main(["--batch", "cmds.txt"]) == 1
    out = capsys.readouterr().out
    assert "line 1: error (exit 2): " in out and "NUL" in out and "line 2: ok" in out
    items = nbnumba.simulate_many([_argv(8, "-floatfile x\x00.bin"), _argv(8)], cwd=str(tmp_path),
                                  write=True)
    assert not items[0].ok and items[0].exit_code == 2 and "NUL" in items[0].error
    assert items[1].ok


def test_batch_line_never_writes_another_lines_input(tmp_path, capsys, monkeypatch):
    # `-mat m.mat` on line 1 and `-floatfile m.mat` on line 2: both "ok", the matrix
    # replaced by an image while (or before) line 1 read it
    monkeypatch.chdir(tmp_path)
    # (the matrix of BASE's -cell at its -lambda: a -cell beside -mat may only
    # scale the matrix's cell, docs/quirks.md #47)
    (tmp_path / "m.mat").write_text("0.0214285714 0 0\n0 0.01875 0\n0 0 0.0166666667\n")
    before = (tmp_path / "m.mat").read_bytes()
    assert nbnumba.simulate_many([_argv(8, "-nonoise -floatfile /dev/null -intfile a.img")],
                                 cwd=str(tmp_path), write=True)[0].ok
    lines = [" ".join(_argv(8, "-nonoise -mat m.mat -floatfile c.bin -intfile c.img")),
             " ".join(_argv(8, "-nonoise -floatfile ./m.mat -intfile d.img")),
             " ".join(_argv(8, "-nonoise -floatfile e.bin -intfile a.img")),
             " ".join(_argv(8, "-nonoise -img a.img -floatfile f.bin -intfile f.img"))]
    (tmp_path / "cmds.txt").write_text("\n".join(lines) + "\n")
    assert cli.main(["--batch", "cmds.txt", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    status = {l.split(":")[0]: l for l in out.splitlines() if l.startswith("line ")}
    assert "ok" in status["line 1"] and "ok" in status["line 3"]
    assert "error (exit 2)" in status["line 2"] and "line 1's input" in status["line 2"]
    assert "error (exit 2)" in status["line 4"] and "line 3's -intfile" in status["line 4"]
    assert (tmp_path / "m.mat").read_bytes() == before
    assert not (tmp_path / "d.img").exists() and not (tmp_path / "f.bin").exists()


def test_batch_lines_may_all_write_dev_null(tmp_path, capsys, monkeypatch):
    # refused as "also line 1's -floatfile", though one run may send several outputs there
    monkeypatch.chdir(tmp_path)
    lines = [" ".join(_argv(8, "-nonoise -floatfile /dev/null -intfile %s.img" % n)) for n in "ab"]
    (tmp_path / "cmds.txt").write_text("\n".join(lines) + "\n")
    assert cli.main(["--batch", "cmds.txt"]) == 0
    assert (tmp_path / "a.img").exists() and (tmp_path / "b.img").exists()


def test_batch_in_a_removed_working_directory_is_one_line(tmp_path, capsys, monkeypatch):
    # a FileNotFoundError traceback from os.path.realpath, even with absolute paths
    cmds = tmp_path / "cmds.txt"
    cmds.write_text(" ".join(_argv(8, "-nonoise -floatfile %s -intfile %s"
                                   % (tmp_path / "a.bin", tmp_path / "a.img"))) + "\n")
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert cli.main(["--batch", str(cmds)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "working directory" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmds.txt"]
    import pytest
    from nbnumba.errors import CWD_GONE
    with pytest.raises(nbnumba.NBError, match="^" + re.escape(CWD_GONE) + "$"):
        nbnumba.simulate_many([_argv(8)])
    # write_outputs from Python, absolute paths: os.path.realpath's FileNotFoundError
    res = nbnumba.simulate(nbnumba.parse_argv(_argv(8, "-nonoise -floatfile %s" % (tmp_path / "w.bin"))))
    with pytest.raises(nbnumba.NBError, match="^" + re.escape(CWD_GONE) + "$"):
        nbnumba.write_outputs(res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmds.txt"]


def test_batch_sigterm_exits_143_and_leaves_no_file(tmp_path):
    # SIGTERM gave 130, the exit status of Ctrl-C
    import os
    import signal
    import subprocess
    import sys
    import time
    slow = ("-cell 70 80 90 90 90 90 -default_F 100 -N 5 -lambda 1.5 -distance 100 "
            "-detpixels 1024 -pixel 0.05 -nopgm -nonoise -oversample 6 -mosaic 0.5 -mosaic_dom 40")
    (tmp_path / "cmds.txt").write_text(slow + " -floatfile t.bin -intfile t.img\n")
    # one thread: the render only has to outlast the sleep, not hold both cores
    env = dict(os.environ, NBNUMBA_SERVER="0", NUMBA_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "nbnumba.cli", "--batch", "cmds.txt"],
                         cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, (out, err)
    assert err.splitlines() == ["nbnumba: interrupted"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["cmds.txt"]


def test_a_signal_inside_a_compiled_code_callback_is_sent_again_later(monkeypatch):
    # SIGTERM while numba compiled (LLVM calling llvmlite's object cache back):
    # the handler's exception could not unwind through LLVM, and the run died
    # by SIGSEGV (-11) instead of exiting 143 without temporary files
    import os
    import signal
    import sys
    import time
    import types
    saved = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cli._term_as_interrupt()
        handler = signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is handler
        code = types.SimpleNamespace(co_filename=os.path.join(
            "site-packages", "llvmlite", "binding", "executionengine.py"))
        inside = types.SimpleNamespace(f_code=code, f_back=sys._getframe())
        for signum in (signal.SIGTERM, signal.SIGINT):
            handler(signum, inside)                 # no exception inside the callback
        for _ in range(100):
            if len(sent) == 2:
                break
            time.sleep(0.01)
        assert sorted(sent) == sorted([(os.getpid(), signal.SIGTERM), (os.getpid(), signal.SIGINT)])
        with pytest.raises(cli.Terminated):
            handler(signal.SIGTERM, sys._getframe())
        with pytest.raises(KeyboardInterrupt) as ei:
            handler(signal.SIGINT, sys._getframe())
        assert not isinstance(ei.value, cli.Terminated)
    finally:
        for n, h in saved.items():
            signal.signal(n, h)


def test_batch_line_with_a_word_longer_than_an_argument_is_its_own_error(tmp_path, capsys,
                                                                        monkeypatch):
    # shlex's time grows as a word's length squared: a 4.8 MB line ran for minutes;
    # a word beyond Linux's 128 KiB per argument is refused at once, alone
    monkeypatch.chdir(tmp_path)
    good = " ".join(_argv(8, "-floatfile a.bin -nonoise"))
    (tmp_path / "cmds.txt").write_text(good + "\n-floatfile " + "x" * 3_000_000 + "\n")
    assert cli.main(["--batch", "cmds.txt"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(l.startswith("line 2: error (exit 2): cannot split the line into arguments: "
                            "a word longer than 131072 characters") for l in out), out
    assert any(l.startswith("line 1: ok") for l in out)


def test_cli_and_batch_render_in_interruptible_row_chunks(tmp_path, monkeypatch):
    """The command-line tools render in row chunks (api.in_chunks) even with no
    progress bar, so Python's signal handlers run between chunks: SIGTERM on a
    --batch line that renders for 10 s used to wait for the whole render (the
    process exited 5 to 10 s after the signal; 0.15 s now, measured by hand)."""
    from nbnumba import api
    seen = []
    real = api.render_float

    def spy(model, *a, **kw):
        seen.append(kw.get("progress"))
        return real(model, *a, **kw)
    monkeypatch.setattr(api, "render_float", spy)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBNUMBA_SERVER", "0")
    line = _argv(8, "-floatfile a.bin -nonoise")
    (tmp_path / "cmds.txt").write_text(" ".join(line) + "\n")
    assert cli.main(["--batch", "cmds.txt"]) == 0
    assert cli.main(_argv(8, "-floatfile b.bin -nonoise")) == 0
    assert seen == [api.in_chunks, api.in_chunks]


def test_batch_file_lines_continued_with_a_backslash(tmp_path, capsys, monkeypatch):
    """A command written over several lines, as in a shell script, is one
    command: each line's last word was its own run ("No escaped character",
    then a line without structure factors)."""
    from nbnumba.batch import read_batch_file
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "c.txt"
    words = _TINY.split()
    p.write_text("# a comment that ends in a backslash does not go on \\\n"
                 "%s \\\n  %s \\\n%s -floatfile a.bin -intfile a.img\n"
                 "\n"
                 "nanoBragg %s -intfile b.img -floatfile 'b \\\nc.bin'\n"   # quoted: the shell drops \-newline too
                 "%s -intfile e.img -floatfile e.bin \\"                    # the file ends the command
                 % (" ".join(words[:6]), " ".join(words[6:12]), " ".join(words[12:]), _TINY, _TINY))
    got = read_batch_file(str(p))
    assert [(no, why) for no, _, why in got] == [(2, None), (6, None), (8, None)]
    assert got[0][1] == words + ["-floatfile", "a.bin", "-intfile", "a.img"]
    assert got[1][1] == words + ["-intfile", "b.img", "-floatfile", "b c.bin"]
    assert got[2][1] == words + ["-intfile", "e.img", "-floatfile", "e.bin"]
    assert cli.main(["--batch", str(p)]) == 0
    out = capsys.readouterr().out
    # (lines report as they finish, in any order, when the batch runs them at once)
    done = sorted(l.split(":")[0] for l in out.splitlines() if l.startswith("line ") and ": ok " in l)
    assert done == ["line 2", "line 6", "line 8"]
    for name in ("a.bin", "b c.bin", "e.bin"):
        assert (tmp_path / name).stat().st_size == 8 * 8 * 4
