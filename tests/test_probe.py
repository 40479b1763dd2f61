"""nbnumba-probe (nbnumba.tools.probe) with stored C traces (--c-trace, --no-c).

No C program is needed: the C side comes from the golden corpus
(golden/data/pilatus_scaled/trace.log, the scaled-down Pilatus command, when
present) or from the tests/data/traces fixtures.  Tests marked "REAL C" run
only when NB_C_BIN is set.
"""

import csv
import hashlib
import json
import os
import re
import sys
import warnings
from pathlib import Path

import pytest

from nbnumba.tools import probe

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "tests" / "data" / "traces"
GOLDEN = REPO / "golden" / "data" / "pilatus_scaled"
GOLDEN_INPUTS = REPO / "golden" / "inputs"

FIXTURE = {
    "name": "mosflm_phi10_N2",
    "trace": TRACES / "mosflm_phi10_N2.c.log",
    "pixel": (8, 8),
    "args": "-cell 70 70 70 90 90 90 -default_F 1 -N 2 -distance 100 -detpixels 16 -pixel 0.1 "
            "-phi 0 -osc 0.09 -phisteps 10 -nopgm -nonoise -noprogress -floatfile f.bin "
            "-intfile i.img".split(),
}


def _golden_case():
    meta = GOLDEN / "meta.json"
    if not (meta.exists() and (GOLDEN / "trace.log").exists()):
        return None
    m = json.loads(meta.read_text())
    args = list(m["args"])
    for i, a in enumerate(args[:-1]):
        if a in ("-mat", "-hkl"):
            p = GOLDEN_INPUTS / args[i + 1]
            if not p.exists():
                return None
            args[i + 1] = str(p)
    return {"name": "pilatus_scaled", "trace": GOLDEN / "trace.log",
            "pixel": tuple(m["trace_pixel"]), "args": args}


GOLD = _golden_case()
CASES = [FIXTURE] + ([GOLD] if GOLD else [])
needs_golden = pytest.mark.skipif(GOLD is None, reason="golden/data/pilatus_scaled not present")

REQUIRED = {
    "trace_py_phi.log", "trace_c_phi.log", "diff_trace.md", "compare_scaling_traces.json",
    "sincg_sweep.md", "sincg_sweep.csv", "sincg_sweep.png", "rotation_audit.md",
    "roi_metadata.json", "env.json", "commands.txt", "summary.md", "sha256.txt",
    "phistep1/trace_py.log", "phistep1/py_float_roi.bin", "phistep1/notes.txt", "git_sha.txt",
}


#: what the stand-in plots write: a PNG signature, so the bundle's file list and
#: checksums are those of a real run
_PNG_STUB = b"\x89PNG\r\n\x1a\n"


def _stub_plots(monkeypatch):
    """Make matplotlib's layout and PNG encoding, about 1.5 s per bundle, write a
    few bytes instead; the probe's own plotting code still runs.  The bundle
    tests keep the real plots, the tests of attribution and reporting do not
    look at them."""
    from matplotlib.figure import Figure

    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(_PNG_STUB)
        else:
            with open(fname, "wb") as fh:
                fh.write(_PNG_STUB)

    monkeypatch.setattr(Figure, "tight_layout", lambda self, *a, **k: None)
    monkeypatch.setattr(Figure, "savefig", savefig)


def run_probe(tmp_path, monkeypatch, capsys, case, extra=(), trace=None, plots=False):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    if not plots:
        _stub_plots(monkeypatch)
    monkeypatch.chdir(tmp_path)
    s, f = case["pixel"]
    opts = ["--pixel", str(s), str(f), "--outdir", "reports", "--no-c", "--sincg-steps", "101"]
    if trace is not False:
        opts += ["--c-trace", str(trace or case["trace"])]
    code = probe.main(opts + list(extra) + ["--"] + list(case["args"]))
    cap = capsys.readouterr()
    bundles = sorted((tmp_path / "reports").iterdir()) if (tmp_path / "reports").exists() else []
    return code, (bundles[-1] if bundles else None), cap.out, cap.err


def files_of(bundle):
    return {str(p.relative_to(bundle)).replace(os.sep, "/") for p in bundle.rglob("*") if p.is_file()}


def check_sha256(bundle):
    lines = (bundle / "sha256.txt").read_text().splitlines()
    listed = {}
    for ln in lines:
        digest, rel = ln.split("  ", 1)
        listed[rel] = digest
    assert set(listed) == files_of(bundle) - {"sha256.txt"}
    for rel, digest in listed.items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest, rel


# ----------------------------------------------------------------------------- bundle


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bundle_complete_and_checksums(tmp_path, monkeypatch, capsys, case):
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, case, plots=True)
    assert code in (0, 3), err
    assert re.fullmatch(r"\d{8}T\d{6}Z(-\d+)?", bundle.name)
    assert REQUIRED <= files_of(bundle)
    check_sha256(bundle)
    png = (bundle / "sincg_sweep.png").read_bytes()
    assert png.startswith(_PNG_STUB) and len(png) > 10000     # matplotlib's plot, not a stand-in
    summary = (bundle / "summary.md").read_text()
    for sec in ("## 1. Case", "## 2. Result", "## 5. ATTRIBUTION", "## 10. Files"):
        assert sec in summary
    # the report ends with what it leaves open
    last = summary.rstrip().split("\n## ")[-1]
    assert last.split("\n")[0].endswith("Open questions") and "\n1. " in last
    assert (bundle / "git_sha.txt").read_text().strip() == json.loads(
        (bundle / "env.json").read_text())["git_sha"]
    # every file of the bundle is linked from summary.md
    for rel in files_of(bundle):
        assert f"]({rel})" in summary, rel
    meta = json.loads((bundle / "roi_metadata.json").read_text())
    assert meta["pixel"] == {"slow": case["pixel"][0], "fast": case["pixel"][1]}
    assert "fpixels" in meta["detector"] and "pix0" in meta["detector"]
    # the detector's trace lines as text, the ones -trace_pixel prints (they were
    # objects, written as their reprs: "<nbnumba.geometry._Line object at 0x...>")
    trace = meta["detector"]["trace"]
    assert trace and all(isinstance(t, str) and re.match(r"\w+=\S", t) for t in trace), trace[:3]
    assert any(t.startswith("fdet_after_rotz=") for t in trace)
    assert "object at 0x" not in (bundle / "roi_metadata.json").read_text()
    env = json.loads((bundle / "env.json").read_text())
    assert env["versions"]["numpy"] and "git_sha" in env and "gpu" in env
    py = (bundle / "trace_py_phi.log").read_text()
    assert "TRACE_PY: I_before_scaling" in py and "TRACE_PY_PHI phi_tic=0" in py
    assert "TRACE_C_PHI phi_tic=0" in (bundle / "trace_c_phi.log").read_text()
    cmds = (bundle / "commands.txt").read_text()
    assert "nbnumba-probe" in cmds and "nbnumba-trace-diff" in cmds and "nbnumba-sincg-sweep" in cmds
    j = json.loads((bundle / "compare_scaling_traces.json").read_text())
    assert "I_before_scaling" in j and "first_divergence" in j
    audit = (bundle / "rotation_audit.md").read_text()
    assert "a*" in audit and "k_frac" in audit


def test_git_sha_of_a_checkout_another_user_owns(monkeypatch):
    # a shared install (root's checkout, run by another user): git refuses to
    # read it ("dubious ownership"), and bundles said "unknown (not a git checkout)"
    import subprocess
    from nbnumba.testing.users import as_an_ordinary_user, open_folder
    from nbnumba.tools._common import git_sha
    with open_folder("nb-git-", mode=0o755) as top:
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                   GIT_COMMITTER_EMAIL="t@t", HOME=top)
        for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
            subprocess.run(["git", "-C", top] + cmd, check=True, env=env, capture_output=True)
        head = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()
        monkeypatch.setenv("HOME", top)          # (root's home: not this user's to read)
        with as_an_ordinary_user():
            owner = os.stat(top).st_uid != os.geteuid()
            got = git_sha(top)
        assert got == head, (owner, got)


def test_env_names_the_start_up_library_that_was_loaded(monkeypatch):
    # one the install's owner built in the package's folder is loaded by every
    # user; env.json named the user's own folder, where none was
    import types
    from nbnumba.kernels import native
    from nbnumba.tools.probe.environment import _env_info
    loaded = "site-packages/nbnumba/kernels/__pycache__/_nbnumba_aot_k.so"
    monkeypatch.setattr(native, "aot_module", lambda: types.SimpleNamespace(__file__=loaded))
    monkeypatch.setattr(native, "library_path", lambda key=None: "~/.cache/nbnumba/x.so")
    lib = _env_info(None)["startup_library"]
    assert lib["path"] == loaded and lib["present"] is True
    monkeypatch.setattr(native, "aot_module", lambda: None)
    lib = _env_info(None)["startup_library"]
    assert lib["path"] == "~/.cache/nbnumba/x.so" and lib["present"] is False


def test_no_png_bundle_has_no_plots_and_says_so(tmp_path, monkeypatch, capsys):
    # --no-png: for an install without matplotlib; the bundle is otherwise complete
    case = CASES[0]
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # (import matplotlib fails)
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, case, extra=["--no-png"],
                                       plots=True)
    assert code in (0, 3), err
    files = files_of(bundle)
    assert REQUIRED - {"sincg_sweep.png"} <= files
    assert not any(f.endswith(".png") for f in files), files
    check_sha256(bundle)
    summary = (bundle / "summary.md").read_text()
    assert "No plots: the probe ran with --no-png." in summary and ".png" not in summary
    for rel in files:
        assert f"]({rel})" in summary, rel
    sweep = [ln for ln in (bundle / "commands.txt").read_text().splitlines()
             if ln.startswith("nbnumba-sincg-sweep ")]
    assert len(sweep) == 1 and sweep[0].endswith(" --no-png")


def test_plots_without_matplotlib_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # the plots come last: without matplotlib the probe used to trace, diff and
    # sweep, then stop in the sincg step and discard the bundle
    case = CASES[0]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, case, plots=True)
    assert code == 2 and bundle is None and not (tmp_path / "reports").exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--no-png" in lines[0] and 'pip install "nbnumba[plots]"' in lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_c_parity_reports_no_divergence(tmp_path, monkeypatch, capsys, case):
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, case, ["--c-parity"])
    assert code == 0, err
    assert "MATCH" in out
    summary = (bundle / "summary.md").read_text()
    assert "No divergence" in summary and "UNEXPLAINED" not in summary
    j = json.loads((bundle / "compare_scaling_traces.json").read_text())
    assert j["diverged"] is False and j["first_divergence"] is None
    assert j["I_before_scaling"]["rel"] == pytest.approx(0.0, abs=1e-12)


def test_default_mode_carryover_attributed(tmp_path, monkeypatch, capsys):
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE)
    assert code == 3
    summary = (bundle / "summary.md").read_text()
    assert "C-PARITY-001" in summary and "UNEXPLAINED" not in summary
    assert "Every diverging key is explained" in summary
    audit = (bundle / "rotation_audit.md").read_text()
    assert "C phi_tic=0 used the cell of port step 9" in audit


@needs_golden
def test_default_mode_pilatus_attribution(tmp_path, monkeypatch, capsys):
    """Without -c_parity the scaled Pilatus command diverges at pix0 (recomputed by the C from
    -Xbeam/-Ybeam) and at phi_tic=0 (carry-over); both are attributed, nothing unexplained."""
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, GOLD)
    assert code == 3
    assert "first divergence pix0_vector_meters" in out
    summary = (bundle / "summary.md").read_text()
    assert "`pix0_vector_meters`" in summary
    assert "PIX0: C-DESIGN-FLAW-003" in summary and "PHI0: C-PARITY-001" in summary
    assert "UNEXPLAINED" not in summary
    assert re.search(r"Δ = port − C = -?[0-9.e+-]+ \(relative to C: ", summary)
    j = json.loads((bundle / "compare_scaling_traces.json").read_text())
    assert j["first_divergence"]["key"] == "pix0_vector_meters"
    assert j["I_before_scaling"]["diverged"] is True
    notes = (bundle / "phistep1" / "notes.txt").read_text()
    assert "phistep1 control" in notes


def _perturb(text):
    """Scale I_before_scaling by 1.01 and change phi_tic=3's k_frac in a C trace."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("TRACE_C: I_before_scaling "):
            v = float(ln.split()[-1])
            ln = "TRACE_C: I_before_scaling %.15g" % (v * 1.01)
        m = re.match(r"^(TRACE_C_PHI phi_tic=3 .*k_frac=)(\S+)(.*)$", ln)
        if m:
            ln = m.group(1) + "%.15g" % (float(m.group(2)) + 1e-3) + m.group(3)
        out.append(ln)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_perturbed_trace_is_reported(tmp_path, monkeypatch, capsys, case):
    bad = tmp_path / "perturbed.log"
    bad.write_text(_perturb(case["trace"].read_text()))
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, case, ["--c-parity"], trace=bad)
    assert code == 3
    assert "DIVERGED" in out
    summary = (bundle / "summary.md").read_text()
    assert "UNEXPLAINED" in summary
    j = json.loads((bundle / "compare_scaling_traces.json").read_text())
    assert j["first_divergence"]["key"] == "PHI[phi_tic=3].k_frac"
    assert j["I_before_scaling"]["diverged"] is True
    assert j["I_before_scaling"]["rel"] == pytest.approx(0.01 / 1.01, rel=1e-6)
    check_sha256(bundle)


def test_port_only_bundle_without_c(tmp_path, monkeypatch, capsys):
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE, trace=False)
    assert code == 0, err
    assert "no C trace" in out
    names = files_of(bundle)
    assert "trace_c_phi.log" not in names and "trace_py_phi.log" in names
    assert "phistep1/trace_c.log" not in names
    check_sha256(bundle)
    assert "No C trace" in (bundle / "summary.md").read_text()


@pytest.mark.parametrize("extra,needle", [
    (["--pixel", "99", "0"], "outside"),
    (["--c-trace", "no_such_trace.log"], "cannot read"),
])
def test_usage_errors(tmp_path, monkeypatch, capsys, extra, needle):
    monkeypatch.delenv("NB_C_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    opts = ["--pixel", "8", "8", "--outdir", "reports", "--no-c"]
    code = probe.main(opts + extra + ["--"] + FIXTURE["args"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_trace_file_without_trace_lines(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.log").write_text("nothing to see\n")
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE,
                                       trace=tmp_path / "empty.log")
    assert code == 2 and "no TRACE_C lines" in err


def test_missing_pixel_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert probe.main(["--"] + FIXTURE["args"]) == 2
    assert "--pixel" in capsys.readouterr().err


def test_pytest_selector_runs_into_pytest_log(tmp_path, monkeypatch, capsys):
    sel = "tests/test_extras.py::test_require_names_the_extra"
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE,
                                       extra=["--pytest", sel])
    assert code in (0, 3), err
    log = (bundle / "pytest.log").read_text()
    assert sel in log and "1 passed" in log
    summary = (bundle / "summary.md").read_text()
    assert "Tests ([pytest.log](pytest.log))" in summary and "exit 0" in summary
    assert summary.rstrip().split("\n## ")[-1].split("\n")[0].endswith("Open questions")
    check_sha256(bundle)


def test_open_questions_without_c_trace(tmp_path, monkeypatch, capsys):
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE, trace=False)
    assert code == 0, err
    last = (bundle / "summary.md").read_text().rstrip().split("\n## ")[-1]
    assert "Open questions" in last and "No C trace was available" in last


# ----------------------------------------------------------------------------- REAL C (optional)

NB_C_BIN = os.environ.get("NB_C_BIN")
real_c = pytest.mark.skipif(not NB_C_BIN or not os.path.exists(NB_C_BIN),
                            reason="REAL C: set NB_C_BIN to the nanoBragg binary")


@real_c
def test_real_c_probe(tmp_path, monkeypatch, capsys):
    """REAL C: the probe runs the C itself; -c_parity matches, default mode is attributed."""
    monkeypatch.chdir(tmp_path)
    base = ["--pixel", "8", "8", "--outdir", "reports", "--sincg-steps", "101"]
    assert probe.main(base + ["--c-parity", "--"] + FIXTURE["args"]) == 0
    bundle = sorted((tmp_path / "reports").iterdir())[-1]
    meta = json.loads((bundle / "roi_metadata.json").read_text())
    assert meta["roi"]["roi_check"]["identical"] is True
    assert {"phistep1/trace_c.log", "phistep1/c_float_roi.bin", "c_stdout.txt"} <= files_of(bundle)
    check_sha256(bundle)
    assert probe.main(base + ["--"] + FIXTURE["args"]) == 3
    bundle = sorted((tmp_path / "reports").iterdir())[-1]
    assert "UNEXPLAINED" not in (bundle / "summary.md").read_text()


# ----------------------------------------------------------------------------- edited C traces


def _edited(tmp_path, pattern, repl):
    """The fixture's C trace with its first line matching `pattern` rewritten; (path, line)."""
    lines = FIXTURE["trace"].read_text().splitlines()
    for i, ln in enumerate(lines):
        if re.search(pattern, ln):
            lines[i] = re.sub(pattern, repl, ln, count=1)
            break
    else:
        raise AssertionError(pattern)
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    return bad, i + 1


@pytest.mark.parametrize("pattern, repl, needle", [
    # tracebacks (exit 1) after the bundle folder was made, before
    (r"phi_tic=3 ", "phi_tic=nan ", "phi_tic=nan: phi_tic must be an integer"),   # ValueError
    (r"phi_tic=3 ", "phi_tic=1e400 ", "phi_tic=1e400: phi_tic must be an integer"),
    (r"^TRACE_C: hkl_frac .*", "TRACE_C: hkl_frac x y z",                         # float('y')
     "hkl_frac: expected 3 numbers, got 'x y z'"),
    (r"^TRACE_C: rot_a_angstroms .*", "TRACE_C: rot_a_angstroms 1 2",             # inhomogeneous
     "rot_a_angstroms: expected 3 numbers, got '1 2'"),
    (r"^TRACE_C: I_before_scaling .*", "TRACE_C: I_before_scaling big",
     "I_before_scaling: expected 1 number, got 'big'"),
    (r" k_frac=", " k_frac ", "k_frac: expected name=value"),
])
def test_malformed_c_trace_exit_2_before_the_bundle(tmp_path, monkeypatch, capsys, pattern, repl,
                                                    needle):
    bad, line = _edited(tmp_path, pattern, repl)
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE, trace=bad)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"nbnumba-probe: error: --c-trace {bad} line {line}: {needle}"), lines
    assert not (tmp_path / "reports").exists()       # checked before the bundle folder exists


def test_non_finite_c_values_give_a_finite_report_without_warnings(tmp_path, monkeypatch, capsys):
    # k_frac=nan exited 3 with "RuntimeWarning: invalid value encountered in cast"; hkl_frac
    # 1e300 asked zero_crossings for 2e300 zeros ("Maximum allowed size exceeded")
    lines = FIXTURE["trace"].read_text().splitlines()
    edits = {"TRACE_C: hkl_frac ": "TRACE_C: hkl_frac 1e300 1e300 1e300",
             "TRACE_C: rot_a_angstroms ": "TRACE_C: rot_a_angstroms nan inf -1e308",
             "TRACE_C: scattering_vec_A_inv ": "TRACE_C: scattering_vec_A_inv 1e308 1e308 -inf"}
    for i, ln in enumerate(lines):
        for head, new in edits.items():
            if ln.startswith(head):
                lines[i] = new
        if ln.startswith("TRACE_C_PHI phi_tic=3 "):
            lines[i] = re.sub(r"k_frac=\S+", "k_frac=nan", ln)
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE, ["--c-parity"],
                                           trace=bad, plots=True)   # no warning from the plots either
    assert code == 3 and err == ""
    assert REQUIRED <= files_of(bundle)
    check_sha256(bundle)
    j = json.loads((bundle / "compare_scaling_traces.json").read_text())
    phi3 = [r for r in j["phi"] if r["phi_tic"] == 3][0]
    assert phi3["c"]["k_frac"] == "nan" and phi3["diverged"] is True
    summary = (bundle / "summary.md").read_text()
    # the sweep covers the port's fractions (about 0.035), the C's 1e300 is named as left out
    assert "the port's fractional indices ± 0.02" in summary
    assert "the C trace's fractional indices are left out" in summary and "2e+300 zeros" in summary
    with open(bundle / "sincg_sweep.csv", newline="") as fh:
        ks = [float(r["k"]) for r in csv.DictReader(fh)]
    assert len(ks) == 101 and 0.0149 < ks[0] < 0.0151 and 0.0549 < ks[-1] < 0.0551
    audit = (bundle / "rotation_audit.md").read_text()
    assert "| rot_a_angstroms | nan inf -1e+308 |" in audit


def test_a_phi_field_in_one_log_only_is_unexplained_not_a_traceback(tmp_path, monkeypatch, capsys):
    # tools/fuzz_tools.py tools, seed 204: a C trace whose TRACE_C_PHI line lost a field;
    # the attribution held None to the emulated traces (TypeError in compare_values)
    lines = FIXTURE["trace"].read_text().splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("TRACE_C_PHI phi_tic=1 "):
            lines[i] = re.sub(r" F_latt_b=\S+", "", ln)
    bad = tmp_path / "cut.log"
    bad.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE, trace=bad,
                                           plots=True)
    assert code == 3 and err == ""
    assert REQUIRED <= files_of(bundle)
    check_sha256(bundle)
    summary = (bundle / "summary.md").read_text()
    row = [ln for ln in summary.splitlines() if ln.startswith("| `PHI[phi_tic=1].F_latt_b` |")]
    assert len(row) == 1 and "UNEXPLAINED" in row[0] and "in one log only" in row[0], row


def test_a_failing_step_leaves_no_partial_bundle(tmp_path, monkeypatch, capsys):
    from nbnumba.tools._common import ToolError
    from nbnumba.tools.probe import run as run_mod

    def boom(p):
        raise ToolError("sincg step failed", 5)
    monkeypatch.setattr(run_mod, "sincg_step", boom)
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE)
    assert code == 5 and err.strip() == "nbnumba-probe: error: sincg step failed"
    assert not (tmp_path / "reports").exists()         # the bundle and the --outdir it made
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "keep.txt").write_text("x")
    code, bundle, out, err = run_probe(tmp_path, monkeypatch, capsys, FIXTURE)
    assert code == 5
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["keep.txt"]


def test_c_sees_the_fdump_bin_the_port_reads(tmp_path, monkeypatch):
    """Without -hkl the port reads ./Fdump.bin; C ran in an empty directory, so
    with an old Fdump.bin about the probe reported a false divergence at F_cell."""
    from nbnumba.tools.probe.runners import _run_c
    fake = tmp_path / "fake_c"
    fake.write_text("#!/bin/sh\n[ -f Fdump.bin ] && cat Fdump.bin || echo 'no Fdump.bin'\n")
    fake.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    assert _run_c(str(fake), ["-default_F", "100"])[0].stdout == "no Fdump.bin\n"
    (tmp_path / "Fdump.bin").write_text("the caller's cache\n")
    assert _run_c(str(fake), ["-default_F", "100"])[0].stdout == "the caller's cache\n"
    # with -hkl both read the file instead, and C's directory stays empty
    assert _run_c(str(fake), ["-hkl", "x.hkl"])[0].stdout == "no Fdump.bin\n"


def test_help_text_names_every_option(monkeypatch):
    """-h prints the package docstring: each option the parser takes is in it
    (--timeout was missing)."""
    from nbnumba.tools import _common
    from nbnumba.tools.probe import cli as probe_cli
    seen = []
    real = _common.UsageParser.parse_args

    def spy(self, *a, **k):
        seen.append(self)
        return real(self, *a, **k)
    monkeypatch.setattr(_common.UsageParser, "parse_args", spy)
    probe_cli._parse_opts(["--pixel", "1", "2"])
    options = {s for act in seen[0]._actions for s in act.option_strings if s.startswith("--")}
    assert {"--timeout", "--pytest", "--c-trace"} <= options
    assert sorted(o for o in options - {"--help"} if o not in probe.__doc__) == []


def test_traces_that_share_no_key_are_not_a_match():
    """A C trace and a port trace with no key in common proved nothing, and the
    probe's verdict (ProbeState.diverged, which sets its exit status) called it a
    MATCH; trace-diff's own CLI already refused such a pair."""
    import dataclasses
    from nbnumba.tools.probe.state import ProbeState
    from nbnumba.tools.trace_diff import diff_traces
    nothing = diff_traces("TRACE_C: omega 1\n", "TRACE_PY: pixel_pos_meters 0.1 0.2 0.3\n")
    same = diff_traces("TRACE_C: omega_pixel 1\n", "TRACE_PY: omega_pixel 1\n")
    assert nothing.nothing_compared and not nothing.diverged
    required = {f.name: None for f in dataclasses.fields(ProbeState)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert ProbeState(**dict(required, diff=nothing)).diverged
    assert not ProbeState(**dict(required, diff=same)).diverged



def test_pytest_option_without_pytest_is_one_line(tmp_path, monkeypatch, capsys):
    """--pytest on a plain ``pip install nbnumba`` (no pytest): one line naming
    the extra, before any bundle.  (That the probe itself starts without pytest
    is tests/test_extras.py::test_every_console_script_on_a_plain_install: it
    imported pytest at start, a ModuleNotFoundError traceback.)"""
    monkeypatch.setitem(sys.modules, "pytest", None)     # import pytest -> ImportError
    monkeypatch.chdir(tmp_path)
    code = probe.main(["--pixel", "8", "8", "--outdir", "reports", "--no-c", "--c-trace",
                       str(FIXTURE["trace"]), "--pytest", "tests/test_extras.py", "--"]
                      + FIXTURE["args"])
    cap = capsys.readouterr()
    assert code == 2 and cap.err == (
        'nbnumba-probe: error: --pytest needs pytest: pip install "nbnumba[dev]"\n'), cap.err
    assert not (tmp_path / "reports").exists()
