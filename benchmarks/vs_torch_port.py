"""Side-by-side with hoidn/nanoBragg's PyTorch port (nanobrag_torch): image,
autograd gradients w.r.t. the cell and the distance, wall times and peak RSS.

The port is not a dependency: point ``--port-src`` at a checkout's ``src``
directory (the one holding ``nanobrag_torch/``).  Each side runs in its own
process (peak RSS), float64, 2 torch/numba threads, eager mode.

    python -m benchmarks.vs_torch_port --port-src PATH/src                 # 32^2 agreement
    python -m benchmarks.vs_torch_port --port-src PATH/src --issue --pixels 512

``--issue``: issue 13's case (N 8, mosaic 0.5 deg x 10 domains, phi 0.1 + 1 deg
in 5 steps).  The two programs draw different mosaic orientations, so only the
timings and memory are comparable there; agreement is checked on the plain
command (no mosaic, one phi step).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CELL = [70.0, 80.0, 90.0, 85.0, 95.0, 105.0]
DIST = 100.0


def _ours(npix, issue):
    from nbnumba.autodiff import simulate
    argv = ("-cell 70 80 90 85 95 105 -lambda 1.5 -N %d -default_F 100 -distance 100 "
            "-detpixels %d -pixel 0.1 -oversample 1 -nonoise -nopgm -seed 1"
            % (8 if issue else 5, npix)).split()
    if issue:
        argv += "-mosaic 0.5 -mosaic_dom 10 -phi 0.1 -osc 1 -phisteps 5".split()
    return lambda cell, dist: simulate(argv, cell=cell, distance=dist)


def _port(npix, issue, src):
    import torch
    sys.path.insert(0, src)
    from nanobrag_torch.config import BeamConfig, CrystalConfig, DetectorConfig
    from nanobrag_torch.models.crystal import Crystal
    from nanobrag_torch.models.detector import Detector
    from nanobrag_torch.simulator import Simulator

    def run(cell, dist):
        cc = CrystalConfig(cell_a=cell[0], cell_b=cell[1], cell_c=cell[2], cell_alpha=cell[3],
                           cell_beta=cell[4], cell_gamma=cell[5],
                           N_cells=(8, 8, 8) if issue else (5, 5, 5), default_F=100.0,
                           mosaic_spread_deg=0.5 if issue else 0.0,
                           mosaic_domains=10 if issue else 1, phi_start_deg=0.1 if issue else 0.0,
                           osc_range_deg=1.0 if issue else 0.0, phi_steps=5 if issue else 1,
                           mosaic_seed=-12345678)
        dc = DetectorConfig(distance_mm=dist[0], pixel_size_mm=0.1, spixels=npix, fpixels=npix,
                            oversample=1)
        bc = BeamConfig(wavelength_A=1.5)
        cr = Crystal(config=cc, beam_config=bc, device="cpu", dtype=torch.float64)
        de = Detector(config=dc, device="cpu", dtype=torch.float64)
        return Simulator(cr, de, crystal_config=cc, beam_config=bc, device="cpu",
                         dtype=torch.float64).run()
    return run


def one(side, npix, issue, src, out):
    os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
    os.environ.setdefault("NANOBRAGG_DISABLE_COMPILE", "1")
    import numpy as np
    import torch
    torch.set_num_threads(2)
    import numba
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    run = _ours(npix, issue) if side == "nbnumba" else _port(npix, issue, src)
    cell = torch.tensor(CELL, dtype=torch.float64, requires_grad=True)
    dist = torch.tensor([DIST], dtype=torch.float64, requires_grad=True)
    run(cell.detach(), dist.detach())                       # warm-up (JIT cache, imports)
    t0 = time.perf_counter()
    run(cell.detach(), dist.detach())
    tf = time.perf_counter() - t0
    t0 = time.perf_counter()
    img = run(cell, dist)
    img.sum().backward()
    tfb = time.perf_counter() - t0
    np.save(out, img.detach().numpy())
    return dict(side=side, pixels=npix, issue=issue, fwd_s=round(tf, 3), fwdbwd_s=round(tfb, 3),
                peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                image_sum=float(img.detach().sum()), grad_cell=cell.grad.tolist(),
                grad_distance=dist.grad.tolist())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port-src", required=True, help="directory holding nanobrag_torch/")
    ap.add_argument("--pixels", type=int, default=32)
    ap.add_argument("--issue", action="store_true")
    ap.add_argument("--side", choices=("nbnumba", "port"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.side:
        print(json.dumps(one(a.side, a.pixels, a.issue, a.port_src, a.out)))
        return 0
    import tempfile
    import numpy as np
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for side in ("nbnumba", "port"):
            out = os.path.join(d, side + ".npy")
            cmd = [sys.executable, "-m", "benchmarks.vs_torch_port", "--port-src", a.port_src,
                   "--pixels", str(a.pixels), "--side", side, "--out", out] + (["--issue"] if a.issue else [])
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res[side] = json.loads(line)
            res[side]["img"] = np.load(out)
    ours, port = res["nbnumba"], res["port"]
    rel = lambda x, y: float(np.max(np.abs(np.subtract(x, y))) / np.max(np.abs(y)))  # noqa: E731
    summary = dict(
        pixels=a.pixels, issue=a.issue,
        image_max_rel_diff=rel(ours["img"], port["img"]),
        grad_cell_max_rel_diff=rel(ours["grad_cell"], port["grad_cell"]),
        grad_distance_rel_diff=rel(ours["grad_distance"], port["grad_distance"]),
        nbnumba={k: ours[k] for k in ("fwd_s", "fwdbwd_s", "peak_rss_mib")},
        port={k: port[k] for k in ("fwd_s", "fwdbwd_s", "peak_rss_mib")})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
