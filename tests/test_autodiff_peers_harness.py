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


@pytest.mark.parametrize("case", ["small", "issue512", "W2_256", "pilatus_roi"])
def test_the_port_is_given_nbnumbas_phi_points(case, tmp_path):
    """nbnumba samples each phi step at its middle (docs/quirks.md #28), the port at its
    start: the harness gives the port -phi at nbnumba's first point, so that its points
    phi0 + i osc/n are nbnumba's."""
    c = dict(P.CASES[case])
    if "roi" in c:
        from benchmarks.autodiff_perf import case_argv as perf_case_argv
        c["argv"] = perf_case_argv("pilatus_roi", workdir=str(tmp_path))[0]
    cfg = parse_argv(P.case_argv(c))
    m = build_model(cfg)
    deg = np.degrees(m.phis)
    phi0 = P.peer_phi0(list(deg), np.degrees(cfg.osc), cfg.phisteps)
    n = cfg.phisteps
    np.testing.assert_allclose(phi0 + np.arange(n) * np.degrees(cfg.osc) / n, deg, rtol=0, atol=1e-12)
    # half a step past the case's own -phi
    start = c["phi"] if "phi" in c else 0.0
    assert phi0 == pytest.approx(start + np.degrees(cfg.osc) / n / 2, abs=1e-12)
    argv = P.peer_argv(P.case_argv(c), {"peer_phi0": phi0})
    assert argv[argv.index("-phi") + 1] == repr(phi0) and argv.count("-phi") == 1


def test_phi_points_the_port_cannot_sample_are_refused():
    with pytest.raises(ValueError, match="cannot sample"):
        P.peer_phi0([0.25, 0.5], 1.0, 2)          # a step of 0.25, where the port's is 0.5
    with pytest.raises(ValueError, match="cannot sample"):
        P.peer_phi0([0.25, 0.75, 1.25], 1.0, 2)   # three points for two steps
    assert P.peer_phi0([0.05], 0.1, 1) == 0.05


def test_the_ports_mosaic_step_gives_nbnumbas_cells(monkeypatch):
    """The port, as nanoBragg.c, turns the crystal about the spindle and then by each
    domain's U_m (U_m Phi a); nbnumba's domains turn with the crystal (Phi U_m a,
    docs/quirks.md #41).  With the harness's per-phi matrices in its rotate_umat, the
    port's own composition gives nbnumba's cells; its other calls are unchanged."""
    import sys
    import types
    torch = pytest.importorskip("torch")
    from nbnumba.crystal import _rotate_axis_all

    # the port's rotate_umat (nanobrag_torch.utils.geometry): umat @ v over leading dims
    geometry = types.ModuleType("nanobrag_torch.utils.geometry")
    geometry.rotate_umat = lambda v, umat: torch.matmul(umat, v.unsqueeze(-1)).squeeze(-1)
    for name in ("nanobrag_torch", "nanobrag_torch.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "nanobrag_torch.utils.geometry", geometry)
    plain = geometry.rotate_umat

    m = build_model(parse_argv(P.case_argv(P.CASES["small"])))
    nphi, nmos = len(m.phis), m.umats.shape[0]
    assert nphi == 3 and nmos == 3
    P._blocks_turn_with_the_crystal(torch, {"umats_phi": P.ports_mosaic_matrices(m)})
    U = torch.tensor(np.asarray(m.umats, dtype=np.float64).reshape(-1, 3, 3))
    for j, v in enumerate((m.crystal.a, m.crystal.b, m.crystal.c)):
        # the port: the unrotated vector turned by each phi, then by the domains
        v_phi = torch.tensor(np.array([_rotate_axis_all(np.asarray(v, dtype=np.float64),
                                                        m.det.spindle, p) for p in m.phis]))
        port = geometry.rotate_umat(v_phi.unsqueeze(1), U.unsqueeze(0)).numpy()
        ours = m.cells[0][:, :, j, :]                 # [phi, mos, xyz]
        np.testing.assert_allclose(port, ours, rtol=0, atol=1e-15 * np.abs(ours).max())
        # without the harness's matrices the port's cells are the C's, U_m Phi a: not ours
        c_cells = plain(v_phi.unsqueeze(1), U.unsqueeze(0)).numpy()
        assert np.abs(c_cells - ours).max() > 1e-6 * np.abs(ours).max()
    # the misset's call (a vector and one matrix) goes to the port's own function
    R = torch.tensor(_rotate_axis_all(np.eye(3), (0.0, 0.0, 1.0), 0.3))
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert torch.equal(geometry.rotate_umat(x, R), plain(x, R))
    # and a run without a mosaic spread gives the port nothing to change
    still = dict(P.CASES["small"], mosaic=0.0)
    assert P.ports_mosaic_matrices(build_model(parse_argv(P.case_argv(still)))) is None


def test_the_peer_worker_finds_this_checkout(tmp_path):
    """The peer's interpreter runs this file as its worker, which imports
    benchmarks._cli: its PYTHONPATH holds this checkout as well as --peer-path
    (with --peer-path alone it stopped at "No module named 'benchmarks'")."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(P.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(P.peer_environment(str(tmp_path / "port_src"), repo))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "port_src"), repo]
    missing = tmp_path / "no_request.json"
    r = subprocess.run([sys.executable, os.path.abspath(P.__file__), "--worker", "peer",
                        "--request", str(missing), "--outdir", str(tmp_path)],
                       cwd=str(tmp_path), env=env, capture_output=True, text=True)
    # past the imports, to the request file this test did not write
    assert r.returncode != 0 and "No module named" not in r.stderr
    assert "no_request.json" in r.stderr, r.stderr[-2000:]


def test_the_port_is_given_unit_detector_and_beam_vectors(tmp_path):
    """nanoBragg.c (and nbnumba) make -fdet/-sdet/-beam_vector unit vectors and an
    -odet_vector that is not one fdet x sdet; the port takes the values as given.  The
    Pilatus command's -beam_vector is 8e-9 short of unit length, so the port's command
    line gets nbnumba's vectors, and nbnumba's phi0 (peer_phi0)."""
    from benchmarks.autodiff_perf import case_argv as perf_case_argv
    argv = perf_case_argv("pilatus_roi", workdir=str(tmp_path))[0]
    m = build_model(parse_argv(argv))
    req = {"peer_phi0": 0.005, "unit_vectors": P.unit_vectors(m.det)}
    out = P.peer_argv(argv, req)
    assert len(out) == len(argv) and out[out.index("-phi") + 1] == repr(0.005)

    def vec(words, flag):
        i = words.index(flag) + 1
        return np.array([float(x) for x in words[i:i + 3]])
    for flag, name in P.UNIT_FLAGS:
        v = vec(out, flag)
        assert np.array_equal(v, np.asarray(getattr(m.det, name), dtype=float)), flag
        assert abs(np.linalg.norm(v) - 1.0) < 1e-15, flag
        # no exponent: an argparse parser takes "-8.8e-05" for an option
        assert not [w for w in out[out.index(flag) + 1:out.index(flag) + 4] if "e" in w.lower()], flag
    assert abs(np.linalg.norm(vec(argv, "-beam_vector")) - 1.0) > 5e-9       # as given
    np.testing.assert_allclose(vec(out, "-odet_vector"),
                               np.cross(vec(out, "-fdet_vector"), vec(out, "-sdet_vector")), atol=1e-15)
    # a flag the command does not give is not added
    assert "-polar_vector" not in P.peer_argv(argv, dict(req, unit_vectors={"-polar_vector": [0, 0, 1]}))


#: the parts of the port's command-line module (nanobrag_torch/__main__.py) that
#: _port_cli_objects uses, as the port has them: main() reads -hkl with read_hkl_file(path,
#: default_F=...), whose dtype defaults to float32 whatever -dtype says, then casts the grid to
#: -dtype (default float32), and builds the Simulator from the crystal
_PORT_MAIN = '''
import sys
from types import SimpleNamespace
import torch


class Simulator:
    def __init__(self, crystal, detector, crystal_config=None, beam_config=None, **k):
        raise AssertionError("the harness stops the port's main() before its simulator")


def read_hkl_file(filepath, default_F=0.0, device=None, dtype=torch.float32):
    rows = [line.split() for line in open(filepath) if line.strip()]
    hkl = [[int(round(float(x))) for x in r[:3]] for r in rows]
    lo = [min(r[i] for r in hkl) for i in range(3)]
    hi = [max(r[i] for r in hkl) for i in range(3)]
    F = torch.full(tuple(hi[i] - lo[i] + 1 for i in range(3)), default_F, dtype=dtype)
    for (h, k, l), r in zip(hkl, rows):
        F[h - lo[0], k - lo[1], l - lo[2]] = float(r[3])
    return F, dict(h_min=lo[0], k_min=lo[1], l_min=lo[2], h_max=hi[0], k_max=hi[1], l_max=hi[2])


def main():
    argv = sys.argv[1:]
    value = lambda flag, default: argv[argv.index(flag) + 1] if flag in argv else default
    dtype = torch.float32 if value("-dtype", "float32") == "float32" else torch.float64
    F, meta = read_hkl_file(value("-hkl", None), default_F=float(value("-default_F", 0.0)))
    crystal = SimpleNamespace(config="cc", hkl_data=F.clone().detach().to(dtype=dtype),
                              hkl_metadata=meta, interpolation_enabled=False)
    Simulator(crystal, SimpleNamespace(config="dc"), crystal_config="cc", beam_config="bc")
'''


def test_the_ports_f_grid_is_read_at_float64(monkeypatch, tmp_path):
    """The port's main() reads -hkl at float32 whatever -dtype says, and its own -dtype
    defaults to float32: the Pilatus ROI's F grid was given to the port as a float32 leaf
    of float32-rounded values (300.69 -> 300.69000244, F^2 1.6e-8 high), which moved the
    ROI's image by 1.6e-8 and the F grid's gradient, accumulated at float32, by 1.5e-6 to
    1.9e-6.  The harness runs the port's main() at -dtype float64 with a float64 reader."""
    import sys
    import types
    torch = pytest.importorskip("torch")
    pkg, M = types.ModuleType("nanobrag_torch"), types.ModuleType("nanobrag_torch.__main__")
    exec(compile(_PORT_MAIN, "nanobrag_torch/__main__.py", "exec"), M.__dict__)
    monkeypatch.setitem(sys.modules, "nanobrag_torch", pkg)
    monkeypatch.setitem(sys.modules, "nanobrag_torch.__main__", M)
    reader, argv0 = M.read_hkl_file, list(sys.argv)
    # the Pilatus case's generated -hkl, read by nbnumba and by the port's code
    from benchmarks.autodiff_perf import case_argv as perf_case_argv
    from nbnumba.autodiff import structure_factors
    argv = perf_case_argv("pilatus_roi", workdir=str(tmp_path))[0]
    ours, ((h0, _), (k0, _), (l0, _)) = structure_factors(argv)
    F, origin = P._F_grid("peer", {"case": {"argv": argv}})
    assert F.dtype == torch.float64 and tuple(origin) == (h0, k0, l0)
    n = F.shape
    assert torch.equal(F, ours[:n[0], :n[1], :n[2]])          # nbnumba's values, to the bit
    assert float(F[5 - h0, 13 - k0, -2 - l0]) == 300.69          # the ROI's brightest reflection
    # float32 would have rounded it (what the port's main() alone gives)
    assert float(torch.tensor(300.69, dtype=torch.float32)) != 300.69
    plain = reader(argv[argv.index("-hkl") + 1])[0]
    assert plain.dtype == torch.float32 and not torch.equal(plain.double(), F)
    # the port's module and sys.argv are left as they were; a -dtype given is replaced
    assert M.read_hkl_file is reader and sys.argv == argv0
    cc, crystal, dc, bc = P._port_cli_objects(M, argv + ["-dtype", "float32"])
    assert crystal.hkl_data.dtype == torch.float64 and (cc, dc, bc) == ("cc", "dc", "bc")
