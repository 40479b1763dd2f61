"""benchmarks.autodiff_peers' own parts that need no torch port: the cases'
commands and the F-grid comparison over the Miller indices both grids hold."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import autodiff_peers as P
from nbnumba.flags import parse_argv
from nbnumba.model import build_model


def test_w2_case_has_oversample_and_three_wavelengths():
    m = build_model(parse_argv(P.case_argv(P.CASES["W2_256"])))
    assert m.shape == (256, 256)
    lam = np.sort(m.sources.wavelength) / 1.5e-10
    # -dispersion 0.2 (per cent) in 3 steps, each at the middle of its third of
    # the band (docs/quirks.md #44): 1 -+ 0.002/3 of lambda0
    np.testing.assert_allclose(lam, [1 - 0.002 / 3, 1.0, 1 + 0.002 / 3], rtol=1e-12)
    assert m.cfg.oversample == 2
    # the case given its own flags (pilatus_roi) is passed through as it is
    assert P.case_argv({"argv": ["-cell", "1"]}) == ["-cell", "1"]


def _save(tmp_path, side, loss, grid, origin, results):
    np.save(tmp_path / ("%s_%s_gF.npy" % (side, loss)), grid)
    results.setdefault("%s_grad" % side, {})[loss] = {"F_origin": list(origin)}


def test_compare_grids_aligns_by_miller_index(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.random((6, 5, 4))            # h -3..2, k -2..2, l -2..1
    small = big[1:5, 1:4, 0:3].copy()      # h -2..1, k -1..1, l -2..0
    small[2, 1, 1] += 0.25                 # (h, k, l) = (0, 0, -1)
    res = {}
    _save(tmp_path, "ours", "sum", big, (-3, -2, -2), res)
    _save(tmp_path, "peer", "sum", small, (-2, -1, -2), res)
    out = P._compare_grids(str(tmp_path), "sum", res)
    assert out["common_shape"] == [4, 3, 3]
    scale = max(np.abs(big[1:5, 1:4, 0:3]).max(), np.abs(small).max())
    assert out["max_abs_diff_over_max"] == pytest.approx(0.25 / scale, rel=1e-12)
    assert out["nonzero_ours"] == big.size and out["sum_peer"] == pytest.approx(small.sum())
    json.dumps(out)                         # what the driver writes
