"""Trace parsing (nbnumba.tracefmt) and the trace-diff tool on real C traces."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbnumba.tracefmt import (
    format_line,
    format_phi_line,
    format_trace,
    format_value,
    parse_trace,
    parse_values,
)
from nbnumba.tools import trace_diff
from nbnumba.tools.trace_diff import FACTORS, compare_values, diff_traces, render_markdown

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "tests" / "data" / "traces"
SIMPLE = TRACES / "mosflm_phi10_N2.c.log"
OVERSAMPLED = TRACES / "triclinic_os2_twotheta.c.log"
XDS = TRACES / "xds_lambda1p5.c.log"
ALL = [SIMPLE, OVERSAMPLED, XDS]


def _text(p):
    return p.read_text(encoding="utf-8")


def _as_py(text):
    """C log -> port-style log (TRACE_C: -> TRACE_PY:, TRACE_C_PHI -> TRACE_PY_PHI)."""
    out = []
    for line in text.splitlines():
        assert line.startswith("TRACE_C")
        out.append("TRACE_PY" + line[len("TRACE_C"):])
    return "\n".join(out) + "\n"


def _perturb(text, key, factor, occurrence=1):
    """Multiply the single value of the `occurrence`-th 'TRACE_*: key v' line by factor."""
    lines = text.splitlines()
    seen = 0
    for i, line in enumerate(lines):
        head, _, rest = line.partition(": ")
        parts = rest.split()
        if head in ("TRACE_C", "TRACE_PY") and parts and parts[0] == key:
            seen += 1
            if seen == occurrence:
                assert len(parts) == 2
                lines[i] = f"{head}: {key} {format_value(float(parts[1]) * factor)}"
                return "\n".join(lines) + "\n"
    raise AssertionError(f"{key} not found")


def _run_cli(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "nbnumba.tools.trace_diff", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
    )


# ----------------------------------------------------------------------------- format_value


def test_format_value_matches_c_printf():
    assert format_value(1.0) == "1"
    assert format_value(-0.0) == "-0"
    assert format_value(0.1) == "0.1"
    assert format_value(1e-10) == "1e-10"
    assert format_value(1.25932015286227e29) == "1.25932015286227e+29"
    assert format_value(2.81794117756025e-15) == "2.81794117756025e-15"
    assert format_value(1.0 / 3.0) == "0.333333333333333"
    assert format_value(123456789012345.6) == "123456789012346"
    assert format_value(1234567890123456.0) == "1.23456789012346e+15"
    assert format_value(7) == "7"
    assert format_value(-3) == "-3"
    assert format_value(float("nan")) == "nan"
    assert format_value(-float("nan")) == "-nan"
    assert format_value(math.copysign(float("nan"), -1.0)) == "-nan"
    assert format_value(float("inf")) == "inf"
    assert format_value(float("-inf")) == "-inf"
    np = pytest.importorskip("numpy")
    assert format_value(np.float64(0.5)) == "0.5"
    assert format_value(np.int64(12)) == "12"
    assert format_value(np.float32(0.1)) == "%.15g" % float(np.float32(0.1))


def test_format_line_and_phi_line():
    assert format_line("hkl_rounded", [0, 1, -1]) == "TRACE_PY: hkl_rounded 0 1 -1"
    assert format_line("F_cell", [3.0], "TRACE_C") == "TRACE_C: F_cell 3"
    line = format_phi_line(2, 10.666666666666666, 1.23355950606553, -0.75123902364401, -0.84079047320772,
                           prefix="TRACE_C_PHI")
    assert line == ("TRACE_C_PHI phi_tic=2 phi_deg=10.6666666666667 k_frac=1.23355950606553 "
                    "F_latt_b=-0.75123902364401 F_latt=-0.84079047320772")
    assert line in _text(OVERSAMPLED).splitlines()


# ----------------------------------------------------------------------------- parsing


def test_parse_simple_trace_values():
    tr = parse_trace(_text(SIMPLE))
    assert tr["F_cell"] == [1]
    assert tr["steps"] == [10]
    assert isinstance(tr["steps"][0], int)
    assert tr["hkl_rounded"] == [0, 0, 0]
    assert tr["pix0_vector_meters"] == [0.1, 0.0009, -0.0009]
    assert tr["I_before_scaling"] == [624.679533714347]
    assert tr["fluence_photons_per_m2"] == [1.25932015286227e29]
    # key=value setup lines: vectors, matrices, labelled numbers, free text
    assert tr["fdet_after_rotz"] == [0, 0, 1]
    assert tr["fdet_after_rotz#2"] == [0, 0, 1]
    assert tr["Rx"] == [1, 0, 0, 0, 1, -0.0, 0, 0, 1]
    assert math.copysign(1.0, tr["Rx"][5]) < 0
    assert tr["angles_rad"] == [0, 0, 0, 0]
    assert tr.entry("angles_rad").labels == ["rotx", "roty", "rotz", "twotheta"]
    assert tr["beam_center_m"] == [8.5e-07, 8.5e-07, 0.1]
    assert tr["detector_convention"] == ["MOSFLM"]
    assert tr["convention_mapping"][0].startswith("Fbeam")
    assert tr.entry("convention_mapping").style == "eq"
    # order kept, (key, values) iteration
    names = [n for n, _ in tr]
    assert names[0] == "fdet_after_rotz"
    assert names.index("F_latt") < names.index("F_cell") < names.index("I_pixel_final")
    assert names[-1] == "floatimage_accumulated"
    # per-phi lines
    assert [r["phi_tic"] for r in tr.phi] == list(range(10))
    assert tr.phi[3]["phi_deg"] == pytest.approx(0.027)
    assert tr.phi[0]["k_frac"] == 0.0349999810146319
    assert tr.phi[0]["F_latt"] == tr["F_latt"][0]
    assert set(tr.phi[0]) == {"phi_tic", "phi_deg", "k_frac", "F_latt_b", "F_latt"}


def test_parse_repeated_keys_are_numbered():
    tr = parse_trace(_text(OVERSAMPLED))
    assert "F_cell" in tr and "F_cell#4" in tr and "F_cell#5" not in tr
    assert tr["pixel_pos_meters"][2] == 0.00045
    assert tr["pixel_pos_meters#2"][2] == 0.00055
    e = tr.entry("pixel_pos_meters#3")
    assert e.key == "pixel_pos_meters" and e.occurrence == 3
    assert tr["steps"] == [12]
    assert [r["phi_tic"] for r in tr.phi] == [0, 1, 2] * 4


def test_parse_ignores_other_lines_and_reads_tags_and_py_prefix():
    text = "\n".join([
        "nanoBragg nanocrystal diffraction simulator",
        "TRACE: Raw matrix values from file:",
        "TRACE_CONFIG: tracing pixel (spixel=3, fpixel=9)",
        "TRACE_PY: F_cell 2.5",
        "TRACE_PY:distance_m=0.1",
        "TRACE_C_TAP5: I_before_scaling 12.5",
        "TRACE_PY_PHI phi_tic=0 phi_deg=0 k_frac=-nan F_latt_b=inf F_latt=-inf",
        "  5% done",
        "TRACE_PY: weird nan -nan inf\r",
    ])
    tr = parse_trace(text)
    assert tr.names() == ["F_cell", "distance_m", "TAP5:I_before_scaling", "weird"]
    assert tr["F_cell"] == [2.5]
    assert tr["TAP5:I_before_scaling"] == [12.5]
    assert all(math.isnan(v) for v in tr["weird"][:2]) and tr["weird"][2] == math.inf
    assert tr.prefixes == {"PY", "C"}
    assert math.isnan(tr.phi[0]["k_frac"]) and tr.phi[0]["F_latt"] == -math.inf
    assert tr.entry("F_cell").line == 4


def test_parse_values_helper():
    vals, labels = parse_values("[1 -0 2.5; 3 4 5; 6 7 8e-3]")
    assert vals == [1, -0.0, 2.5, 3, 4, 5, 6, 7, 0.008]
    assert labels == []
    vals, labels = parse_values("X:1.3e-06 Y:1.3e-06 pixel_mm:0.2")
    assert vals == [1.3e-06, 1.3e-06, 0.2] and labels == ["X", "Y", "pixel_mm"]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_parse_round_trip(path):
    text = _text(path)
    tr = parse_trace(text)
    assert len(tr) > 50
    # exact text round trip with the C prefix
    assert format_trace(tr, "TRACE_C") == text
    # and with the port prefix: same entries and phi rows
    py_text = format_trace(tr, "TRACE_PY")
    assert py_text == _as_py(text)
    tr2 = parse_trace(py_text)
    assert tr2.items() == tr.items()
    assert tr2.phi == tr.phi
    assert tr2.prefixes == {"PY"}


# ----------------------------------------------------------------------------- diff (library)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_diff_identical_has_no_divergence(path):
    text = _text(path)
    res = diff_traces(text, _as_py(text), tol=1e-12)
    assert res.first_divergence is None
    assert not res.diverged
    assert res.only_in_c == [] and res.only_in_py == []
    assert len(res.keys) == len(parse_trace(text))
    for name in FACTORS:
        f = res.factors[name]
        assert f.c is not None and f.c == f.py and f.abs == 0.0 and f.rel == 0.0 and f.diverged is False
    md = render_markdown(res)
    assert "First divergence" in md and "None:" in md and "MATCH" in md


def test_diff_reports_first_perturbed_key():
    text = _text(SIMPLE)
    py = _perturb(_as_py(text), "F_cell", 1.001)
    res = diff_traces(text, py, tol=1e-6)
    fd = res.first_divergence
    assert fd is not None and fd.name == "F_cell"
    assert fd.c == [1] and fd.py == [1.001]
    assert fd.max_rel == pytest.approx(1e-3, rel=2e-3)
    assert fd.max_abs == pytest.approx(1e-3, rel=1e-9)
    assert res.divergences == [fd]
    f = res.factors["F_cell"]
    assert f.diverged and f.rel == pytest.approx(1e-3, rel=2e-3)
    assert res.factors["I_pixel_final"].diverged is False
    md = render_markdown(res)
    assert "`F_cell`" in md and "DIVERGED" in md and "| F_cell | 1 | 1.001 |" in md
    # loose tolerance accepts it
    assert diff_traces(text, py, tol=2e-3).first_divergence is None


def test_first_divergence_is_earliest_in_c_order():
    text = _as_py(_text(OVERSAMPLED))
    py = _perturb(text, "I_pixel_final", 1.01)
    py = _perturb(py, "polar", 1.0 + 1e-4, occurrence=1)  # earlier in the log
    res = diff_traces(_text(OVERSAMPLED), py, tol=1e-6)
    assert res.first_divergence.name == "polar"
    assert {k.name for k in res.divergences} == {"polar", "I_pixel_final"}
    # second subpixel repeat only
    py2 = _perturb(text, "F_latt", 1.5, occurrence=2)
    res2 = diff_traces(_text(OVERSAMPLED), py2, tol=1e-6)
    assert res2.first_divergence.name == "F_latt#2"
    assert res2.factors["F_latt"].diverged is False  # factor table uses first occurrence


def test_vector_tolerance_is_relative_to_vector_size():
    c = "TRACE_C: rot_a_angstroms 69.9999300491905 0.0989601356245382 4.28626379701574e-15\n"
    p = "TRACE_PY: rot_a_angstroms 69.9999300491905 0.0989601356245382 0\n"
    assert diff_traces(c, p, tol=1e-12).first_divergence is None
    # a 1e-6 change of the small y component is 1.4e-8 of the vector: accepted at 1e-6 ...
    p1 = "TRACE_PY: rot_a_angstroms 69.9999300491905 0.0989611356245382 0\n"
    assert diff_traces(c, p1, tol=1e-6).first_divergence is None
    # ... a 1e-3 change (1.4e-5 of the vector) is not
    p2 = "TRACE_PY: rot_a_angstroms 69.9999300491905 0.0999601356245382 0\n"
    res = diff_traces(c, p2, tol=1e-6)
    assert res.first_divergence.name == "rot_a_angstroms"
    assert res.first_divergence.max_rel == pytest.approx(1e-3 / 69.9999300491905, rel=1e-6)
    # scalar near zero: purely relative unless an absolute floor is given
    c0 = "TRACE_C: F_latt_c 1e-20\n"
    p0 = "TRACE_PY: F_latt_c 3e-20\n"
    assert diff_traces(c0, p0, tol=1e-6).diverged
    assert not diff_traces(c0, p0, tol=1e-6, atol=1e-18).diverged


def test_diff_special_values_and_shapes():
    c = "TRACE_C: a nan\nTRACE_C: b inf\nTRACE_C: c 1 2 3\nTRACE_C:conv=MOSFLM\n"
    same = "TRACE_PY: a -nan\nTRACE_PY: b inf\nTRACE_PY: c 1 2 3\nTRACE_PY:conv=MOSFLM\n"
    assert not diff_traces(c, same).diverged
    assert diff_traces(c, same.replace("b inf", "b -inf")).first_divergence.name == "b"
    assert diff_traces(c, same.replace("a -nan", "a 0")).first_divergence.name == "a"
    r = diff_traces(c, same.replace("c 1 2 3", "c 1 2"))
    assert r.first_divergence.name == "c" and "count" in r.first_divergence.reason
    r = diff_traces(c, same.replace("MOSFLM", "XDS"))
    assert r.first_divergence.name == "conv" and r.first_divergence.reason == "text differs"


def test_keys_in_one_log_only_are_listed():
    text = _text(SIMPLE)
    py_lines = [ln for ln in _as_py(text).splitlines() if not ln.startswith("TRACE_PY:Rx=")]
    py_lines.append("TRACE_PY: extra_key 1 2")
    res = diff_traces(text, "\n".join(py_lines))
    assert res.only_in_c == ["Rx"]
    assert res.only_in_py == ["extra_key"]
    assert res.first_divergence is None and not res.diverged
    md = render_markdown(res)
    assert "Keys only in C" in md and "`Rx`" in md and "`extra_key`" in md
    strict = diff_traces(text, "\n".join(py_lines), strict_keys=True)
    assert strict.diverged


def test_phi_table_and_phi_divergence():
    text = _text(SIMPLE)
    lines = _as_py(text).splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("TRACE_PY_PHI phi_tic=7 "):
            fields = dict(tok.split("=") for tok in ln.split()[1:])
            fields["F_latt"] = format_value(float(fields["F_latt"]) * (1 + 1e-5))
            lines[i] = "TRACE_PY_PHI " + " ".join(f"{k}={v}" for k, v in fields.items())
    res = diff_traces(text, "\n".join(lines), tol=1e-6)
    assert len(res.phi) == 10
    bad = [p for p in res.phi if p.diverged]
    assert [p.phi_tic for p in bad] == [7] and bad[0].diverged_fields == ["F_latt"]
    assert bad[0].rel["F_latt"] == pytest.approx(1e-5, rel=1e-3)
    assert res.first_divergence.name == "PHI[phi_tic=7].F_latt"
    md = render_markdown(res)
    assert "## Per-φ" in md and "✗ F_latt" in md
    assert md.count("\n| ") >= 10


# ----------------------------------------------------------------------------- CLI


def test_cli_identical_exit_0(tmp_path):
    py = tmp_path / "py.log"
    py.write_text(_as_py(_text(SIMPLE)))
    r = _run_cli(SIMPLE, py)
    assert r.returncode == 0, r.stderr
    assert "# Trace diff" in r.stdout and "MATCH" in r.stdout
    assert r.stderr == ""
    # in-process entry point too
    assert trace_diff.main([str(SIMPLE), str(SIMPLE), "--quiet"]) == 0


def test_cli_divergence_exit_1_json_and_markdown(tmp_path):
    py = tmp_path / "py.log"
    py.write_text(_perturb(_as_py(_text(SIMPLE)), "F_cell", 1.001))
    out_json = tmp_path / "d.json"
    out_md = tmp_path / "d.md"
    r = _run_cli(SIMPLE, py, "--tol", "1e-6", "--json", out_json, "--markdown", out_md)
    assert r.returncode == 1, r.stderr
    assert "`F_cell`" in r.stdout
    data = json.loads(out_json.read_text())
    assert data["first_divergence"]["key"] == "F_cell"
    assert data["first_divergence"]["c"] == [1]
    assert data["first_divergence"]["py"] == [1.001]
    assert data["first_divergence"]["rel"] == pytest.approx(1e-3, rel=2e-3)
    assert set(FACTORS) <= set(data)
    assert data["F_cell"]["c"] == 1 and data["F_cell"]["py"] == 1.001
    assert data["F_cell"]["abs"] == pytest.approx(1e-3) and data["F_cell"]["rel"] == pytest.approx(1e-3, rel=2e-3)
    assert data["steps"] == {"c": 10, "py": 10, "abs": 0.0, "rel": 0.0, "diverged": False}
    assert data["diverged"] is True and data["tol"] == 1e-6
    assert len(data["phi"]) == 10
    assert out_md.read_text() == r.stdout


def test_cli_usage_and_io_errors_exit_2(tmp_path):
    cases = [
        (str(SIMPLE),),  # missing PY log
        (str(SIMPLE), str(tmp_path / "missing.log")),
        (str(SIMPLE), str(SIMPLE), "--tol", "abc"),
        (str(SIMPLE), str(SIMPLE), "--tol", "-1"),
        (str(SIMPLE), str(SIMPLE), "--bogus"),
    ]
    empty = tmp_path / "empty.log"
    empty.write_text("no trace here\n")
    cases.append((str(SIMPLE), str(empty)))
    for args in cases:
        r = _run_cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("nbnumba-trace-diff: error:"), err
        assert "\n" not in err and "Traceback" not in err
    r = _run_cli(SIMPLE, SIMPLE, "--json", tmp_path / "no" / "such" / "dir.json")
    assert r.returncode == 2 and "cannot write" in r.stderr


@pytest.mark.parametrize("extra", [[], ["--strict-keys"]])
def test_logs_sharing_no_key_are_an_input_error_not_a_match(tmp_path, capsys, extra):
    # "keys compared: 0 ... verdict: **MATCH**", exit 0 (with --strict-keys: DIVERGED, exit 1)
    c = tmp_path / "c.log"
    c.write_text("TRACE_C: omega 1\n")
    py = tmp_path / "py.log"
    py.write_text(_as_py(_text(SIMPLE)))
    out_json = tmp_path / "o.json"
    rc = trace_diff.main([str(c), str(py), "--json", str(out_json)] + extra)
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    err = cap.err.strip()
    assert "\n" not in err and err.startswith(
        f"nbnumba-trace-diff: error: {c} and {py} share no trace key and no per-phi row: "
        f"nothing to compare (keys only in {c}: 1 (omega); only in {py}: ")
    assert not out_json.exists()
    # the report of such a pair (the probe writes one) does not say MATCH either
    md = render_markdown(diff_traces(_text(c), _text(py)))
    assert "- keys compared: 0," in md and "verdict: **NOTHING COMPARED**" in md
    assert "MATCH" not in md and "nothing was compared" in md
    # one key in common is a comparison: as before
    c.write_text(next(ln for ln in _text(SIMPLE).splitlines() if ln.startswith("TRACE_C: F_cell "))
                 + "\n")
    assert trace_diff.main([str(c), str(py), "-q"]) == 0


# ----------------------------------------------------------------------------- robustness


def _with_phi_tic(value, tic=3):
    """The SIMPLE C log with phi_tic=<tic> spelled `value`, and that line's number."""
    lines = _text(SIMPLE).splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith(f"TRACE_C_PHI phi_tic={tic} "):
            lines[i] = ln.replace(f"phi_tic={tic} ", f"phi_tic={value} ", 1)
            return "\n".join(lines) + "\n", i + 1
    raise AssertionError("no such phi line")


# nan was "ValueError: cannot convert float NaN to integer" (exit 1), inf/1e400 an
# OverflowError, 1.5 silently read as 1; C prints phi_tic with %d, so none is a trace
@pytest.mark.parametrize("value", ["nan", "-nan", "inf", "1e400", "1.5", "x", "3000000000",
                                   "9" * 5000])
def test_phi_tic_that_is_not_a_c_int_is_refused_with_file_and_line(tmp_path, value, capsys):
    text, lineno = _with_phi_tic(value)
    with pytest.raises(ValueError) as ei:         # TraceFormatError is a ValueError too
        parse_trace(text, source="c.log")
    assert ei.value.line == lineno and ei.value.field.startswith("phi_tic=")
    assert str(ei.value).startswith(f"c.log line {lineno}: phi_tic=")
    bad = tmp_path / "bad.log"
    bad.write_text(text)
    py = tmp_path / "py.log"
    py.write_text(_as_py(_text(SIMPLE)))
    assert trace_diff.main([str(bad), str(py), "-q", "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"nbnumba-trace-diff: error: {bad} line {lineno}: phi_tic")
    assert len(err[0]) < 300                      # the 5000-digit value is cut short
    assert not (tmp_path / "o.json").exists()


def test_phi_tic_whole_number_spellings_are_read_and_other_malformed_fields_refused():
    text, _ = _with_phi_tic("3e0")                # a whole number: the same row as "3"
    assert [r["phi_tic"] for r in parse_trace(text).phi] == list(range(10))
    assert isinstance(parse_trace(text).phi[3]["phi_tic"], int)
    for line, field in [("TRACE_C_PHI phi_tic=0 k_frac 0.5", "k_frac"),            # no '='
                        ("TRACE_C_PHI phi_tic=0 k_frac=abc", "k_frac=abc"),       # not a number
                        ("TRACE_C_PHI phi_deg=0 k_frac=0.5", "phi_tic")]:         # no phi_tic
        with pytest.raises(ValueError) as ei:
            parse_trace("TRACE_C: F_cell 1\n" + line + "\n", source="s.log")
        assert ei.value.line == 2 and ei.value.field == field, str(ei.value)
    # nan/inf in the other fields are values the C prints: read, not refused
    tr = parse_trace("TRACE_C_PHI phi_tic=0 phi_deg=0 k_frac=nan F_latt_b=-inf F_latt=inf\n")
    assert math.isnan(tr.phi[0]["k_frac"]) and tr.phi[0]["F_latt_b"] == -math.inf


def test_json_never_overwrites_an_input_log(tmp_path):
    # was: exit 1 and the C log replaced by the JSON report
    c = tmp_path / "c_copy.log"
    c.write_bytes(SIMPLE.read_bytes())
    py = tmp_path / "py.log"
    py.write_text(_perturb(_as_py(_text(SIMPLE)), "F_cell", 1.001))
    (tmp_path / "link.log").symlink_to(c)
    for target, opt in [(c, "--json"), (tmp_path / "." / "c_copy.log", "--json"),
                        (tmp_path / "link.log", "--json"), (py, "--markdown")]:
        r = _run_cli(c, py, "-q", opt, target, cwd=tmp_path)
        assert r.returncode == 2, (target, r.stderr)
        assert f"refusing to write {opt}" in r.stderr and "input file" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert c.read_bytes() == SIMPLE.read_bytes()
    assert "F_cell 1.001" in py.read_text()


def test_outputs_are_one_all_or_nothing_set(tmp_path):
    py = tmp_path / "py.log"
    py.write_text(_as_py(_text(SIMPLE)))
    md = tmp_path / "out.md"
    # was: exit 2 with out.md already written
    r = _run_cli(SIMPLE, py, "-q", "--markdown", md, "--json", tmp_path / "nodir" / "x.json")
    assert r.returncode == 2 and "cannot write --json" in r.stderr and "No such file" in r.stderr
    assert not md.exists()
    md.write_text("old report\n")
    r = _run_cli(SIMPLE, py, "-q", "--markdown", md, "--json", md)
    assert r.returncode == 2 and "--markdown and --json both name" in r.stderr
    (tmp_path / "d.json").mkdir()
    r = _run_cli(SIMPLE, py, "-q", "--markdown", md, "--json", tmp_path / "d.json")
    assert r.returncode == 2 and "is a directory" in r.stderr
    if os.path.exists("/dev/full"):
        # the JSON fails while the set is committed: the report written first is rolled back
        r = _run_cli(SIMPLE, py, "-q", "--markdown", md, "--json", "/dev/full")
        assert r.returncode == 2 and "No space left on device" in r.stderr, r.stderr
    assert md.read_text() == "old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "out.md", "py.log"]  # no temps
    r = _run_cli(SIMPLE, py, "-q", "--markdown", md, "--json", tmp_path / "ok.json")
    assert r.returncode == 0 and r.stdout == "" and "# Trace diff" in md.read_text()
    assert json.loads((tmp_path / "ok.json").read_text())["diverged"] is False


def test_overflowing_difference_keeps_the_true_relative_delta():
    # 1e308 - (-1e308) overflows; the relative difference is 2, not inf
    dv, abs_l, rel_l, mabs, krel, _ = compare_values([1e308], [-1e308], 1e-6)
    assert dv and abs_l == [math.inf] and rel_l == [2.0] and krel == 2.0
    # tol * scale overflows too (1.9e308): judged on the scaled values, 2 > 1.9
    assert compare_values([1e308], [-1e308], 1.9)[0] is True
    assert compare_values([1e308], [-1e308], 2.1)[0] is False
    dv, _, rel_l, _, krel, _ = compare_values([1e308, -1e308, 0], [-1e308, 1e308, 0], 1e-6)
    assert rel_l[:2] == [2.0, 2.0] and krel == 2.0
    # ordinary and non-finite values as before
    assert compare_values([1.0], [1.001], 1e-6)[4] == pytest.approx(0.001 / 1.001)
    assert compare_values([float("nan")], [1.0], 10.0)[0] is True
    assert compare_values([float("nan")], [float("nan")], 0.0)[0] is False
    md = render_markdown(diff_traces("TRACE_C: F_cell 1e308\n", "TRACE_PY: F_cell -1e308\n"))
    assert "| F_cell | 1e+308 | -1e+308 | inf | 2 | ✗ |" in md


def test_an_endless_log_is_one_line(monkeypatch, capsys, tmp_path):
    """nbnumba-trace-diff /dev/zero LOG read until the OOM killer ended it; a
    missing log keeps its message."""
    from nbnumba.io import _args
    monkeypatch.setattr(_args, "STREAM_MAX_BYTES", 1 << 16)
    log = tmp_path / "py.log"
    log.write_text("TRACE_PY: pixel 0 0\n")
    assert trace_diff.main(["/dev/zero", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/zero: more than 0 MiB from a stream" in err, err
    assert trace_diff.main([str(tmp_path / "none.log"), str(log)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read %s: No such file or directory" % (tmp_path / "none.log") in err
