"""Refine a crystal's orientation, unit cell and the detector distance against
an image, by gradient descent through nbnumba.autodiff.

A "measured" image is simulated at the true parameters.  The model starts
from a perturbed guess (misset +0.5 deg on each axis, every cell parameter
changed by 0.5 %, distance +1 mm) and torch.optim.LBFGS minimises the squared
difference.  The script prints the remaining errors, checks them against
0.01 deg, 0.01 % and 0.01 mm, and writes the loss per iteration as a PNG.

    python examples/refine.py [--out refine_loss.png]

Needs torch and matplotlib (pip install nbnumba[torch] matplotlib).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from nbnumba.tools._common import UsageParser, guarded_main   # one-line errors, exit 2

# small crystal (N 2): spots several pixels wide, so the perturbed start still
# overlaps the measured spots (with sharp spots the squared residual is flat)
ARGV = ("-cell 70 80 90 85 95 105 -lambda 1.5 -N 2 -default_F 100 -distance 60 "
        "-detpixels 96 -pixel 0.25 -phi 0 -osc 1 -phisteps 2 -oversample 1 "
        "-nonoise -nopgm -seed 1").split()
TRUE = dict(cell=[70.0, 80.0, 90.0, 85.0, 95.0, 105.0], misset=[10.0, 5.0, 3.0], distance=[60.0])
#: optimisation variables are (value - start) / SCALE: O(1) steps for LBFGS
SCALE = dict(cell=[0.1, 0.1, 0.1, 0.1, 0.1, 0.1], misset=[0.1, 0.1, 0.1], distance=[0.1])
TOL_MISSET_DEG, TOL_CELL_PCT, TOL_DIST_MM = 0.01, 0.01, 0.01


def start_values():
    """The perturbed starting point: +0.5 deg, +-0.5 %, +1 mm."""
    sign = np.array([1, -1, 1, -1, 1, -1], dtype=float)
    return dict(cell=list(np.array(TRUE["cell"]) * (1 + 0.005 * sign)),
                misset=[m + 0.5 for m in TRUE["misset"]],
                distance=[TRUE["distance"][0] + 1.0])


def refine(max_iter=60, verbose=True):
    """Run the refinement; returns (final values, losses, errors) where errors
    = (max misset error deg, max cell error %, distance error mm)."""
    import torch
    from nbnumba.autodiff import simulate

    def tensors(vals):
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in vals.items()}

    measured = simulate(ARGV, **tensors(TRUE))
    norm = float((measured ** 2).mean())
    start = tensors(start_values())
    scale = tensors(SCALE)
    x = {k: torch.zeros_like(v, requires_grad=True) for k, v in start.items()}
    opt = torch.optim.LBFGS(list(x.values()), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-14, tolerance_change=1e-20,
                            line_search_fn="strong_wolfe")
    losses = []

    def closure():
        opt.zero_grad()
        params = {k: start[k] + scale[k] * x[k] for k in x}
        loss = ((simulate(ARGV, **params) - measured) ** 2).mean() / norm
        loss.backward()
        losses.append(float(loss.detach()))
        if verbose:
            print("eval %3d  loss %.3e" % (len(losses), losses[-1]))
        return loss

    opt.step(closure)
    final = {k: (start[k] + scale[k] * x[k]).detach().numpy() for k in x}
    true = {k: np.array(v) for k, v in TRUE.items()}
    errors = (float(np.max(np.abs(final["misset"] - true["misset"]))),
              float(np.max(np.abs(final["cell"] / true["cell"] - 1)) * 100),
              float(abs(final["distance"][0] - true["distance"][0])))
    return final, losses, errors


def plot(losses, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(np.arange(1, len(losses) + 1), losses, marker=".")
    ax.set_xlabel("loss evaluation (LBFGS)")
    ax.set_ylabel("relative squared residual")
    ax.set_title("nbnumba.autodiff: misset, cell, distance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = UsageParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="refine_loss.png", help="loss-vs-iteration PNG")
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if a.max_iter < 1:
        ap.error("--max-iter must be >= 1, got %d" % a.max_iter)
    # before the fit, not after it: can the plot be written there?
    where = os.path.dirname(os.path.abspath(a.out))
    if os.path.isdir(a.out) or not os.path.isdir(where) or not os.access(where, os.W_OK):
        ap.error("--out %s: not a writable file path" % a.out)
    t0 = time.perf_counter()
    final, losses, (e_mis, e_cell, e_dist) = refine(a.max_iter, verbose=not a.quiet)
    plot(losses, a.out)
    ok = e_mis <= TOL_MISSET_DEG and e_cell <= TOL_CELL_PCT and e_dist <= TOL_DIST_MM
    print("%d evaluations in %.1f s; errors: misset %.2e deg, cell %.2e %%, distance %.2e mm: %s"
          % (len(losses), time.perf_counter() - t0, e_mis, e_cell, e_dist,
             "converged" if ok else "NOT converged"))
    print("wrote", a.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(guarded_main("refine.py", main, io_exit=2))
