"""For every golden case with a C trace, the port's -trace_pixel trace of the
same pixel prints exactly the keys nanoBragg.c prints (detector setup, per
pixel, per phi step and the source-2 tap, with their repeat counts) and agrees
with it on every key to 1e-9 relative (in the case's mode)."""
import shutil

import pytest

import nbnumba
from nbnumba.testing import golden
from nbnumba.tools.trace_diff import diff_traces
from nbnumba.tracefmt import parse_trace

TRACE_CASES = [c for c in golden.load_cases() if c.trace_pixel]


def test_enough_trace_cases():
    assert len(TRACE_CASES) >= 8


@pytest.mark.parametrize("case", TRACE_CASES, ids=[c.name for c in TRACE_CASES])
def test_port_trace_matches_c_trace(case, tmp_path):
    for name in case.inputs:
        shutil.copy(golden.inputs_dir() / name, tmp_path / name)
    s, f = case.trace_pixel
    args = list(case.args) + ["-trace_pixel", str(s), str(f)]
    if case.mode == "c_parity":
        args.append("-c_parity")
    res = nbnumba.simulate_argv(args, cwd=tmp_path)
    c_text = (golden.case_dir(case.name) / "trace.log").read_text()
    py_text = "\n".join(res.trace_lines)
    d = diff_traces(c_text, py_text, tol=1e-9)
    assert d.first_divergence is None, (case.name, d.first_divergence)
    assert d.to_json_dict()["n_compared"] >= 30      # the whole per-pixel trace was compared
    # every key the C prints (detector setup included), and no other
    assert not d.only_in_c and not d.only_in_py, (d.only_in_c, d.only_in_py)
    assert _keys(py_text, "TRACE_PY") == _keys(c_text, "TRACE_C")


def _keys(text, tag):
    """Key names with their repeat counts ("key", "key#2", ...), per-phi lines included."""
    return sorted(e.name for e in parse_trace(text).entries) + \
        sorted(line.split()[1] for line in text.splitlines() if line.startswith(tag + "_PHI "))



def test_detector_trace_is_formatted_when_read_and_pickles():
    """Detector.trace formats its lines on reading (build_detector records the
    values only): each line holds the values of its moment (pix0_vector: the
    BEAM pivot's final pix0), and a Detector survives pickling with the same
    lines."""
    import pickle

    from nbnumba.flags import parse_argv
    from nbnumba.geometry import build_detector
    from nbnumba.tracefmt import format_value
    det = build_detector(parse_argv("-detpixels 64 -pixel 0.1 -distance 100 -Xbeam 3 -Ybeam 4 "
                                    "-detector_rotx 2 -twotheta 5".split()))
    lines = det.trace
    assert all(isinstance(x, str) for x in lines) and len(lines) >= 20
    want = "pix0_vector=" + " ".join(format_value(float(x)) for x in det.pix0)
    assert want in lines
    assert pickle.loads(pickle.dumps(det)).trace == lines
