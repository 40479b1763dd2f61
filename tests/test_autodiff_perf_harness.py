"""benchmarks.autodiff_perf --mode pair: forward and forward + backward timed
in one process, pair by pair, on a tiny detector (the harness, not a timing)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

from benchmarks import autodiff_perf as P  # noqa: E402


def test_paired_interleaves_both_levels():
    out = P.paired("issue512", pixels=8, reps=3)
    assert out["case"] == "issue512" and out["reps"] == 3 and out["threads"] >= 1
    assert out["cpu_model"] and len(out["git"]) == 7
    for level in ("call", "kernel"):
        r = out[level]
        for side in ("fwd", "fwdbwd"):
            s = r[side]
            assert 0.0 < s["best"] <= s["median"] <= s["worst"]
        lo, hi = r["ratio_range"]
        assert 0.0 < lo <= r["ratio_median"] <= hi
        assert 0 <= r["pairs_within_2x"] <= 3


def test_paired_with_the_mosaic_spread():
    out = P.paired("issue512", pixels=8, reps=2, mosaic=True)
    assert "mosaic_spread" in out["keywords"] and "cell" in out["keywords"]
    assert out["kernel"]["fwdbwd"]["best"] > 0.0
    assert "mosaic_spread" not in P.paired("issue512", pixels=8, reps=1)["keywords"]
    with pytest.raises(SystemExit, match="no mosaic"):
        P.case_argv("pilatus_roi", mosaic=True)


def test_the_f_grid_is_read_outside_the_timed_call(monkeypatch):
    # structure_factors parses the flags and builds a model: a refinement loop
    # calls it once, so the timed call must not
    from nbnumba import autodiff as AD
    calls = []
    real = AD.structure_factors

    def spy(argv):
        calls.append(1)
        return real(argv)
    monkeypatch.setattr(AD, "structure_factors", spy)
    fn = P._fn("pilatus_roi", "fwdbwd", None)
    assert len(calls) == 1
    img = fn()
    fn()
    assert len(calls) == 1 and float(img.detach().max()) > 0.0
