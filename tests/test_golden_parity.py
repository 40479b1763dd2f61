"""nbnumba reproduces the golden nanoBragg.c outputs (golden/cases.yaml).

Each case is simulated once (cached for the module) with the case's arguments,
plus ``-c_parity`` for c_parity-mode cases, in a temporary directory holding
the case's input files.  Tolerances come from the case (see golden/README.md).
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import nbnumba
from nbnumba.testing import golden as G

CASES = G.load_cases()
IDS = [c.name for c in CASES]

_RESULTS = {}


@pytest.fixture(scope="module")
def simulate_case(tmp_path_factory):
    """Run (once) and return nbnumba's Result for a golden case."""

    def run(case):
        if case.name not in _RESULTS:
            work = tmp_path_factory.mktemp(case.name)
            for name in case.inputs:
                shutil.copyfile(G.inputs_dir() / name, work / name)
            _RESULTS[case.name] = nbnumba.simulate_argv(case.port_argv(), cwd=str(work))
        return _RESULTS[case.name]

    yield run
    _RESULTS.clear()


def _fmt_metrics(label, m):
    s, f = m["worst_pixel"]
    return ("%s: corr=%.9f max|d|=%.6g (%.3g of max|ref|=%.6g) worst pixel (slow=%d, fast=%d) "
            "ref=%.9g port=%.9g exact=%.5f" % (
                label, m["corr"], m["max_abs"], m["rel_max"], m["max_ref"], s, f,
                m["worst_ref"], m["worst_test"], m["exact_frac"]))


def _as_numpy(a):
    if a is None:
        return None
    get = getattr(a, "get", None)          # CuPy arrays
    return np.asarray(get() if callable(get) and not isinstance(a, np.ndarray) else a)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_images_match_c(case, simulate_case):
    res = simulate_case(case)
    tol = case.tolerances
    ref = G.load_float(case.name)
    got = _as_numpy(res.float_image)
    assert got.shape == ref.shape, "%s: shape %s, C %s" % (case.name, got.shape, ref.shape)
    m = G.compare_images(ref, got)
    problems = []
    if not m["corr"] >= tol["float_corr_min"]:
        problems.append("corr %.9f < %g" % (m["corr"], tol["float_corr_min"]))
    if not m["rel_max"] <= tol["float_max_abs_rel"]:
        problems.append("max|d|/max|ref| %.3g > %g" % (m["rel_max"], tol["float_max_abs_rel"]))
    msgs = [_fmt_metrics("float", m)] if problems else []

    d = G.case_dir(case.name)
    for fname, attr, key in (("int.img", "int_image", "int_exact_frac_min"),
                             ("noise.img", "noise_image", "noise_exact_frac_min")):
        if fname not in case.files:
            continue
        _, ref_i = G.load_smv(d / fname)
        got_i = _as_numpy(getattr(res, attr))
        if got_i is None:
            problems.append("%s: port produced no %s" % (fname, attr))
            continue
        mi = G.compare_images(ref_i, got_i)
        if not mi["exact_frac"] >= tol[key]:
            problems.append("%s identical on %.5f of pixels < %g" % (fname, mi["exact_frac"], tol[key]))
            msgs.append(_fmt_metrics(fname, mi))
    if "image.pgm" in case.files:
        _, ref_p = G.load_pgm(d / "image.pgm")
        got_p = _as_numpy(getattr(res, "pgm_image", None))
        if got_p is None:
            problems.append("image.pgm: port produced no pgm_image")
        else:
            mp = G.compare_images(ref_p, got_p)
            if not mp["exact_frac"] >= tol["int_exact_frac_min"]:
                problems.append("image.pgm identical on %.5f of pixels" % mp["exact_frac"])
                msgs.append(_fmt_metrics("pgm", mp))
    assert not problems, "%s (%s mode): %s\n%s" % (case.name, case.mode, "; ".join(problems), "\n".join(msgs))


STAT_KEYS = ("max_I", "mean", "rms", "rmsd", "intfile_scale", "pgm_scale")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_stats_match_c_stdout(case, simulate_case):
    res = simulate_case(case)
    c_stats = G.parse_c_stdout_stats((G.case_dir(case.name) / "stdout.txt").read_text())
    rel = case.tolerances["stats_rel"]
    bad = []
    for key in STAT_KEYS:
        if key not in c_stats:
            continue
        if key not in res.stats:
            bad.append("%s missing from port stats" % key)
            continue
        c_val, p_val = c_stats[key], float(res.stats[key])
        if not G.stat_close(c_val, p_val, rel=rel):
            bad.append("%s: C %g, port %.9g (rel diff %.3g)" % (
                key, c_val, p_val, abs(p_val - c_val) / abs(c_val) if c_val else float("inf")))
    assert not bad, "%s (%s mode): %s" % (case.name, case.mode, "; ".join(bad))
