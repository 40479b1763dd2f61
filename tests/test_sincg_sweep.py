"""The sincg precision sweep tool (nbnumba.tools.sincg_sweep)."""

import csv
import io
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from nbnumba.tools import sincg_sweep as ss
from nbnumba.tools.sincg_sweep import (
    CSV_COLUMNS,
    sincg,
    sincg_naive_f32,
    sincg_reduced_f32,
    sincg_reference,
    sweep,
    write_outputs,
    zero_crossings,
)

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-m", "nbnumba.tools.sincg_sweep", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO,
    )


def test_sincg_c_formula():
    assert sincg(0.0, 47) == 47.0
    x = np.array([0.3, -1.1, 2.0])
    np.testing.assert_array_equal(sincg(x, 5), np.sin(5 * x) / np.sin(x))
    assert sincg(np.array([0.0, 0.5]), 3)[0] == 3.0
    assert isinstance(sincg(0.5, 3), float)


@pytest.mark.parametrize("N", [1, 2, 5, 47, 48])
def test_reference_at_integer_k_is_plus_minus_N(N):
    ks = np.arange(-6, 7, dtype=np.float64)
    ref = sincg_reference(ks, N)
    expected = np.array([N * (-1.0) ** (int(n) * (N - 1)) for n in ks])
    np.testing.assert_array_equal(ref, expected)
    np.testing.assert_array_equal(np.abs(ref), N)
    red = sincg_reduced_f32(ks, N)
    assert red.dtype == np.float32
    np.testing.assert_array_equal(red, expected.astype(np.float32))


def test_c_double_formula_is_wrong_at_nonzero_integer_k():
    # both sines are rounding noise there; the reference is not
    assert abs(sincg(np.pi * 1.0, 47) - 47.0) > 1.0
    assert sincg_reference(1.0, 47) == 47.0


def test_reference_agrees_with_c_formula_away_from_integers():
    k = np.linspace(-3.37, 3.41, 2001)
    k = k[np.abs(k - np.rint(k)) > 0.05]
    for N in (3, 8, 47):
        ref = sincg_reference(k, N)
        c = sincg(np.pi * k, N)
        np.testing.assert_allclose(c, ref, rtol=0, atol=1e-12 * N)


def test_sign_identity_by_direct_longdouble():
    # (-1)^(n(N-1)) sin(N pi d)/sin(pi d) == sin(N pi k)/sin(pi k) for non-integer k (moderate k)
    k = np.linspace(-4.9, 4.9, 997)
    k = k[np.abs(k - np.rint(k)) > 1e-3]
    for N in (2, 3, 6, 47):
        ref = sincg_reference(k, N)
        kl = k.astype(np.longdouble)
        direct = (np.sin(N * ss._PI_LD * kl) / np.sin(ss._PI_LD * kl)).astype(np.float64)
        np.testing.assert_allclose(ref, direct, rtol=0, atol=1e-12 * N)


def test_zero_crossings_at_m_over_N():
    z = zero_crossings(47, -0.61, -0.58)
    np.testing.assert_allclose(z, [-28 / 47])
    z = zero_crossings(4, -1.0, 1.0)
    np.testing.assert_allclose(z, [-0.75, -0.5, -0.25, 0.25, 0.5, 0.75])
    ref = sincg_reference(z, 4)
    assert np.all(np.abs(ref) < 1e-15)


def test_sweep_columns_and_zero_flags():
    res = sweep(47, -0.61, -0.58, 301)
    for c in CSV_COLUMNS:
        assert res[c].shape == (301,), c
    assert res["k"][0] == -0.61 and res["k"][-1] == -0.58
    np.testing.assert_allclose(res["x"], np.pi * res["k"])
    assert res["naive_f32"].dtype == np.float32 and res["reduced_f32"].dtype == np.float32
    # exactly one zero crossing (k = -28/47) flagged on the nearest row
    assert res["zero_crossing"].sum() == 1
    i = int(np.argmax(res["zero_crossing"]))
    assert abs(res["k"][i] - (-28 / 47)) <= 0.5 * (0.03 / 300) + 1e-15
    # the reference changes sign across the zero
    assert res["ref_f64"][i - 2] * res["ref_f64"][i + 2] < 0
    np.testing.assert_allclose(res["naive_abs_err"], np.abs(res["naive_f32"].astype(float) - res["ref_f64"]))
    np.testing.assert_allclose(res["reduced_abs_err"], np.abs(res["reduced_f32"].astype(float) - res["ref_f64"]))


def test_naive_f32_loses_accuracy_at_large_k():
    res = sweep(47, 1000.2, 1000.4, 401)
    away = res["away"]
    assert away.sum() > 300
    naive = res["naive_abs_err"][away]
    red = res["reduced_abs_err"][away]
    assert naive.max() > 1e-2           # phase error from f32(pi)*f32(k) at |k| ~ 1e3
    assert red.max() < 1e-4
    assert np.median(naive) > 100 * np.median(red)
    # near k = 1000.3 specifically
    j = int(np.argmin(np.abs(res["k"] - 1000.3)))
    assert res["naive_abs_err"][j] > 100 * max(res["reduced_abs_err"][j], 1e-7)


def test_reduced_f32_relative_error_away_from_zeros():
    # small N: float32-level accuracy everywhere |sin(N pi k)| >= 0.1
    res = sweep(5, -10.0, 10.0, 4001)
    assert res["reduced_rel_err"][res["away"]].max() < 1e-5
    # large N: the float32 argument N*pi*d (up to N*pi/2) limits it, ~ N * eps32 / |sin|
    for N, k0, k1 in [(47, -0.61, -0.58), (47, 1000.2, 1000.4), (48, -3.5, 3.5)]:
        r = sweep(N, k0, k1, 2001)
        kk = r["k"]
        s = np.abs(np.sin(N * np.pi * (kk - np.rint(kk))))
        bound = 8 * N * np.finfo(np.float32).eps / np.maximum(s, 1e-300)
        m = r["away"]
        assert np.all(r["reduced_rel_err"][m] < bound[m])
        assert r["reduced_rel_err"][s >= 0.5].max() < 5e-5


def test_reduced_f32_is_float32_arithmetic():
    k = np.array([0.1, 2.37, -5.61, 1000.3])
    out = sincg_reduced_f32(k, 47)
    f = np.float32
    for kk, o in zip(k, out):
        n = np.rint(kk)
        d = f(kk - n)
        x = f(np.pi) * d
        exp = f(np.sin(f(47) * x) / np.sin(x))
        assert o == exp  # N=47 odd: sign always +1
    with pytest.raises(ValueError):
        sincg_reduced_f32(k, 2.5)
    # naive: x32 = f32(pi)*f32(k)
    x32 = f(np.pi) * f(2.37)
    assert sincg_naive_f32(2.37, 47) == f(np.sin(f(47) * x32) / np.sin(x32))
    assert sincg_naive_f32(0.0, 47) == f(47)


def test_write_outputs(tmp_path):
    res = sweep(47, -0.61, -0.58, 301)
    paths = write_outputs(res, str(tmp_path / "out"), "sw")
    for kind in ("csv", "md", "png"):
        assert os.path.getsize(paths[kind]) > 0
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 301
    assert float(rows[0]["k"]) == -0.61
    assert float(rows[10]["ref_f64"]) == res["ref_f64"][10]
    assert sum(int(r["zero_crossing"]) for r in rows) == 1
    md = Path(paths["md"]).read_text()
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| -0.")]
    assert 2 <= len(table_rows) <= 61
    assert "-0.595744681" in md  # zero crossing k = -28/47 listed
    assert "naive_f32" in md and "reduced_f32" in md
    with open(paths["png"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_writes_files(tmp_path):
    r = _run_cli("--N", 47, "--k", -0.61, -0.58, "--steps", 101, "--outdir", tmp_path, "--prefix", "t")
    assert r.returncode == 0, r.stderr
    for ext in ("csv", "md", "png"):
        assert (tmp_path / f"t.{ext}").stat().st_size > 0
    assert "wrote" in r.stdout
    assert ss.main(["--N", "3", "--k", "0", "1", "--steps", "11", "--outdir", str(tmp_path), "--no-png"]) == 0
    assert (tmp_path / "sincg_sweep.csv").exists() and not (tmp_path / "sincg_sweep.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--k", "0", "1"),                       # --N missing
        ("--N", "47"),                           # --k missing
        ("--N", "47", "--k", "0"),               # one k only
        ("--N", "0", "--k", "0", "1"),
        ("--N", "x", "--k", "0", "1"),
        ("--N", "47", "--k", "0", "1", "--steps", "1"),
        ("--N", "47", "--k", "nan", "1"),
    ],
)
def test_cli_usage_errors_exit_2(args):
    r = _run_cli(*args)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("nbnumba-sincg-sweep: error:") and "\n" not in err
    assert "Traceback" not in err



@pytest.mark.parametrize("args, needle", [
    # were numpy MemoryErrors (745 GiB) and an OverflowError, as tracebacks
    (["--N", "8", "--k", "0", "1", "--steps", "99999999999"], "--steps must be <= 10000000"),
    (["--N", "8", "--k", "0", "1e308"], "holds about inf zeros of sincg"),
    (["--N", "99999999999", "--k", "0", "1", "--steps", "5"], "holds about 1e+11 zeros"),
])
def test_cli_sizes_beyond_memory_exit_2(args, needle, tmp_path, capsys):
    assert ss.main(args + ["--outdir", str(tmp_path), "--no-png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbnumba-sincg-sweep: error:") and needle in err[0]
    assert list(tmp_path.iterdir()) == []

# ------------------------------------------------------------------ engine agreement


def _physics():
    pytest.importorskip("numba")
    try:
        from nbnumba import physics
    except ImportError as exc:  # pragma: no cover - engine not importable
        pytest.skip(f"nbnumba.physics not importable: {exc}")
    return physics


def test_engine_sincg_matches_tool():
    physics = _physics()
    if not hasattr(physics, "sincg"):
        pytest.skip("nbnumba.physics has no sincg")
    rng = np.random.default_rng(7)
    ks = np.concatenate([rng.uniform(-20, 20, 300), [0.0, 0.5, -0.25, 1000.3, 1e-9]])
    for N in (1.0, 2.0, 5.0, 47.0):
        for k in ks:
            x = np.pi * k
            a = float(physics.sincg(x, N))
            b = float(sincg(x, N))
            assert abs(a - b) <= 1e-12 * max(1.0, abs(b)), (k, N, a, b)


def test_engine_reduced_sincg_matches_reference():
    physics = _physics()
    if not hasattr(physics, "sincg_reduced"):
        pytest.skip("nbnumba.physics has no sincg_reduced")
    rng = np.random.default_rng(11)
    ks = np.concatenate([rng.uniform(-50, 50, 300), np.arange(-4.0, 5.0), [1000.3, 0.49999]])
    for N in (1, 2, 5, 47, 48):
        ref = sincg_reference(ks, N)
        for k, r in zip(ks, ref):
            a = float(physics.sincg_reduced(float(k), float(N)))
            assert abs(a - r) <= 1e-12 * N, (k, N, a, r)


# ------------------------------------------------------------------ limits, outputs, speed


@pytest.mark.parametrize("args, needle", [
    # were two RuntimeWarnings (cast of rint(k) to int64) then an OverflowError traceback
    (["--N", "5", "--k", "1e300", "1e300", "--steps", "3"], "N·|k| reaches 5e+300, more than 2**53"),
    (["--N", "5", "--k", "1e19", "1e19", "--steps", "3"], "N·|k| reaches 5e+19"),
    (["--N", "3", "--k", "3002399751580331", "3002399751580331.5"], "N·|k| reaches 9.01e+15"),
    # was an OverflowError (float32 of N)
    (["--N", "1" + "0" * 30, "--k", "0.5", "0.5"], "--N must be <= 2**53 = 9007199254740992"),
    (["--N", str(2 ** 53 + 1), "--k", "0", "0"], "(got 9007199254740993)"),
    (["--N", "9" * 4000, "--k", "0", "1"], "(got a 4000-digit number)"),
])
def test_cli_N_and_k_beyond_exact_doubles_exit_2(args, needle, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # no numpy RuntimeWarning on the way
        assert ss.main(args + ["--outdir", str(tmp_path / "o"), "--no-png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nbnumba-sincg-sweep: error:") and needle in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_limits_are_inclusive_at_2_53(tmp_path, capsys):
    # N = 2**53 and N·|k| = 2**53 are exact doubles: accepted, and the zero at k = 1/2
    # (m = 2**52, not a multiple of N) is found and marked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sweep(2 ** 53, 0.5, 0.5, 3)
        assert res["zeros"].tolist() == [0.5] and res["zero_crossing"].tolist() == [1, 0, 0]
        assert ss.main(["--N", str(2 ** 53), "--k", "-1", "1", "--steps", "2", "--outdir", str(tmp_path),
                        "--no-png"]) == 2   # 2**54 zeros: refused by the zero count first
        res = sweep(2, 2.0 ** 52 - 4, 2.0 ** 52, 3)      # N·|k| = 2**53 at the end
        np.testing.assert_array_equal(res["k"], [2.0 ** 52 - 4, 2.0 ** 52 - 2, 2.0 ** 52])
        np.testing.assert_array_equal(res["ref_f64"], [2.0, 2.0, 2.0])   # integer k: ±N, n even
        assert res["zeros"].size == 4                    # k + 1/2 between the integers
    with pytest.raises(ValueError, match="2\\*\\*53"):
        sweep(3, 2.0 ** 52, 2.0 ** 52, 3)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        zero_crossings(3, 2.0 ** 52, 2.0 ** 52)


def test_library_functions_are_quiet_for_huge_and_nonfinite_k():
    # the probe hands them k values from a stored trace: no warning, nan for nan/inf,
    # and every |k| >= 2**53 is an even integer, so sincg = +N there
    k = np.array([1e300, 2.0 ** 63, 1e19, np.nan, np.inf, -np.inf, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = sincg_reference(k, 4)
        red = sincg_reduced_f32(k, 4)
        naive = sincg_naive_f32(k, 4)
        c64 = sincg(np.pi * k, 4)
    np.testing.assert_array_equal(ref[:3], [4.0, 4.0, 4.0])
    assert np.isnan(ref[3:6]).all() and ref[6] == -4.0        # (-1)^(3*3) * 4
    np.testing.assert_array_equal(red[:3], np.float32([4, 4, 4]))
    assert red[6] == np.float32(-4)
    assert naive.dtype == np.float32 and c64.dtype == np.float64
    with pytest.raises(ValueError):
        sincg_reference(0.5, 2 ** 53 + 1)
    with pytest.raises(ValueError):
        sincg_reference(0.5, 10 ** 400)


def _old_marks(k, zeros):
    """The marking loop this tool had (quadratic: steps x zeros)."""
    zc = np.zeros(k.shape, dtype=np.int64)
    for z in zeros:
        zc[int(np.argmin(np.abs(k - z)))] = 1
    return zc


def test_mark_zeros_equals_the_old_argmin_loop():
    rng = np.random.default_rng(5)
    for t in range(2000):
        n = int(rng.integers(1, 40))
        k0, k1 = rng.uniform(-3, 3, 2)
        k = np.linspace(k0, k0 if t % 5 == 0 else k1, n)   # ascending, descending, constant
        if t % 7 == 0:
            k = np.round(k, 1)                             # runs of equal values
        if t % 11 == 0:
            k = rng.permutation(k)                         # not sorted at all
        z = np.concatenate([rng.uniform(-4, 4, int(rng.integers(0, 10))),
                            k[rng.integers(0, n, 3)],
                            (k[:-1] + k[1:]) / 2])         # exact ties between two rows
        np.testing.assert_array_equal(ss.mark_zeros(k, z), _old_marks(k, z), err_msg=str(t))
    for N, k0, k1, steps in [(47, -0.61, -0.58, 301), (5, 10.0, -10.0, 4001), (40, 0, 1, 41),
                             (1000, 0.0, 1.0, 777)]:
        res = sweep(N, k0, k1, steps)
        np.testing.assert_array_equal(res["zero_crossing"], _old_marks(res["k"], res["zeros"]))
    # (40, 0, 1, 41): the grid holds every zero m/40 exactly: 39 rows marked
    assert sweep(40, 0, 1, 41)["zero_crossing"].sum() == 39


def test_mark_zeros_is_linear_not_steps_times_zeros():
    # 2 million rows and 1 million zeros: 2e12 distance evaluations for the old loop
    # (hours); the sorted search takes well under a second
    k = np.linspace(0.0, 1.0, 2_000_000)
    z = np.arange(1, 1_000_000) / 1e6
    t = time.perf_counter()
    zc = ss.mark_zeros(k, z)
    assert time.perf_counter() - t < 10
    assert zc.sum() == z.size                             # ~2 rows per zero: all distinct
    i = np.flatnonzero(zc)
    assert np.all(np.abs(k[i] - z) <= 0.5 / 1_999_999 + 1e-15)


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_failed_write_keeps_the_old_set_and_leaves_no_temp(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    sw4 = tmp_path / "sw4"
    assert ss.main(["--N", "5", "--k", "0", "1", "--steps", "11", "--outdir", str(sw4)]) == 0
    old = {p.name: p.read_bytes() for p in sw4.iterdir()}
    # was: exit 2 after the .csv and .md were replaced, and sincg_sweep.png.tmp.png left
    (sw4 / "sincg_sweep.png").unlink()
    (sw4 / "sincg_sweep.png").mkdir()
    capsys.readouterr()
    assert ss.main(["--N", "5", "--k", "0", "2", "--steps", "11", "--outdir", str(sw4)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sincg_sweep.png" in err[0] and "directory" in err[0]
    assert _listing(sw4) == ["sincg_sweep.csv", "sincg_sweep.md", "sincg_sweep.png"]
    assert (sw4 / "sincg_sweep.csv").read_bytes() == old["sincg_sweep.csv"]
    assert (sw4 / "sincg_sweep.md").read_bytes() == old["sincg_sweep.md"]
    # was: p.csv.tmp left next to the p.csv folder
    sw5 = tmp_path / "sw5"
    (sw5 / "p.csv").mkdir(parents=True)
    assert ss.main(["--N", "5", "--k", "0", "1", "--steps", "11", "--outdir", str(sw5),
                    "--prefix", "p", "--no-png"]) == 2
    assert _listing(sw5) == ["p.csv"]


def test_write_outputs_failing_writer_changes_nothing(tmp_path, monkeypatch):
    res = sweep(5, 0, 1, 11)
    out = tmp_path / "out"
    write_outputs(res, str(out), "s", png=False)
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken_plot(res, fh):
        fh.write(b"\x89PNG half")
        raise RuntimeError("plot failed")
    monkeypatch.setattr(ss, "_plot", broken_plot)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_outputs(sweep(5, 0, 2, 11), str(out), "s", png=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old     # no temp, no new file
    # a folder the failed call created is removed again
    with pytest.raises(RuntimeError):
        write_outputs(res, str(tmp_path / "new" / "deeper"), "s", png=True)
    assert _listing(tmp_path) == ["out"]


def test_csv_is_the_text_csv_writer_gives(tmp_path):
    res = sweep(47, 1000.2, 1000.4, 41)
    res["naive_rel_err"][3] = np.inf                     # non-finite values as _g spells them
    res["c_f64"][4] = np.nan
    paths = write_outputs(res, str(tmp_path), "t", png=False)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for i in range(res["k"].size):
        w.writerow([str(int(res[c][i])) if c == "zero_crossing" else
                    (repr(float(res[c][i])) if np.isfinite(res[c][i]) else ss._g(res[c][i]))
                    for c in CSV_COLUMNS])
    text = Path(paths["csv"]).read_text()
    assert text == buf.getvalue()
    assert ",inf," in text and ",nan," in text
