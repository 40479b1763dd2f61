"""X-ray sources: a divergence grid (round or square) times a wavelength
sweep, or the positions read from -sourcefile.

Returned directions are unit vectors from the sample towards each source (as
nanoBragg.c stores them); the kernel's incident vector is their negative.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

from .sampling import SWEEPS
from .vecmath import host

# plain-Python vector helpers (same source as the kernel's compiled ones)
rotate_axis = host.rotate_axis
unitize = host.unitize

SOURCE_DISTANCE = 10.0   # m, nanoBragg's fixed source distance


@dataclass
class Sources:
    direction: np.ndarray    # (n, 3) unit vectors sample -> source
    wavelength: np.ndarray   # (n,) metres
    weight: np.ndarray       # (n,) as given/generated (printed, as nanoBragg prints them)
    divsteps: int
    log: List[str] = field(default_factory=list)
    #: (n,) the factor each source's terms are multiplied by in the image: the
    #: -sourcefile weights over their mean in the default mode, else 1 (nanoBragg.c
    #: reads the weights but weighs every source equally: docs/quirks.md #20)
    intensity: np.ndarray = None
    #: -sourcefile sources of intensity 0 left out (the default mode)
    dropped: int = 0

    def __post_init__(self):
        if self.intensity is None:
            self.intensity = np.ones(len(self.wavelength))

    @property
    def weighted(self):
        """Whether the sources' terms carry unequal factors (intensity)."""
        return bool(np.any(self.intensity != 1.0))

    @property
    def incident(self):
        return -self.direction


def sweep_offset(steps, sweep, i):
    """Point i's offset from the beam of sweep ``sweep`` ("hdiv", "vdiv": rad;
    "disp": fraction of the wavelength).  The default mode (steps.midpoints)
    samples the band [-width/2, width/2] at the midpoints of its count cells
    of step, width ((i + 1/2)/count - 1/2) (docs/quirks.md #44; a given step
    without a width: count * step wide), so a uniform band's variance is
    width^2/12 (1 - 1/count^2); one point is the beam itself.  nanoBragg.c
    (-c_parity) puts the points at step * i - width / 2, the band's edges
    included: width^2 (count + 1) / (12 (count - 1))."""
    rng, step, n = (getattr(steps, f) for f in SWEEPS[sweep])
    if steps.midpoints:
        return step * (i - 0.5 * (n - 1))
    return step * i - rng / 2.0


def divergence_offset(steps, i, j):
    """(hdiv, vdiv) (rad) of point (i, j) of the divergence grid."""
    return sweep_offset(steps, "hdiv", i), sweep_offset(steps, "vdiv", j)


def divergence_points(steps, round_div):
    """The (i, j) points of the divergence grid that the elliptical cut keeps
    (all of them with -square_div), in nanoBragg's order."""
    kept = []
    for i in range(steps.hdivsteps):
        for j in range(steps.vdivsteps):
            hdiv, vdiv = divergence_offset(steps, i, j)
            if round_div and not _in_ellipse(steps, hdiv, vdiv):
                continue
            kept.append((i, j))
    return kept


def _in_ellipse(steps, hdiv, vdiv):
    """Whether -round_div keeps the point (hdiv, vdiv)."""
    if steps.midpoints:
        # the cell centres inside the ellipse whose axes are the full widths;
        # a direction of width 0 (its one point on the beam) does not cut.
        # Never empty: the innermost centre lies within 1/2 of a half-width
        t = 0.0
        if steps.hdivrange > 0.0:
            t += (hdiv / (steps.hdivrange / 2.0)) ** 2
        if steps.vdivrange > 0.0:
            t += (vdiv / (steps.vdivrange / 2.0)) ** 2
        return t <= 1.0
    # nanoBragg.c's cut, its 1.1 slack included.  It divides by a possibly zero
    # range: NaN never exceeds 1.1, so a degenerate direction keeps its points
    # (IEEE semantics via numpy)
    with np.errstate(divide="ignore", invalid="ignore"):
        hr, vr = np.float64(steps.hdivrange), np.float64(steps.vdivrange)
        test = (hdiv * hdiv - steps.hdivstep * steps.hdivstep / 4.0 * (1 - steps.hdivsteps % 2)) / hr / hr
        test += (vdiv * vdiv - steps.vdivstep * steps.vdivstep / 4.0 * (1 - steps.vdivsteps % 2)) / vr / vr
    return not test * 4.0 > 1.1


def relative_intensities(weights):
    """The factors that weigh each source's terms, from -sourcefile's weight
    column (missing entries already 1): the weights over their mean, so that
    the image keeps the flux (-fluence is the sum over all sources) and equal
    weights give exactly 1.  Divided by the largest weight first, so that no
    finite weights overflow the sum.  The caller has refused negative,
    non-finite and all-zero weights."""
    w = np.asarray(weights, dtype=float)
    if len(w) == 0 or np.all(w == w[0]):
        return np.ones(len(w))
    w = w / w.max()
    return w * (len(w) / w.sum())


def build_sources(steps, beam, polar, vert, lambda0, round_div, file_columns=None,
                  points=None, weigh=False, across=False) -> Sources:
    """The sources of a run: from -sourcefile's columns, else the divergence
    grid's points (``points``: these (i, j) in place of divergence_points',
    as nbnumba.autodiff keeps a run's points while it varies a range) times
    the wavelength sweep.  weigh: the file's weights weigh the sources'
    terms (Sources.intensity; the default mode), else every source counts
    once (nanoBragg.c).  across: the vertical divergence turns the beam about
    the polarization axis made perpendicular to the beam (the default mode);
    nanoBragg.c turns it about the axis as given, which a tilted -polar_vector
    makes shrink and skew the sweep (docs/quirks.md #36)."""
    log: List[str] = []
    weighed = False     # the file's weights weigh the terms (the default mode)
    if file_columns is not None and len(file_columns):
        cols = np.array(file_columns, dtype=float)
        X, Y, Z, I, L = (cols[:, i] for i in range(5))
        X = np.where(np.isnan(X), -SOURCE_DISTANCE * beam[0], X)
        Y = np.where(np.isnan(Y), -SOURCE_DISTANCE * beam[1], Y)
        Z = np.where(np.isnan(Z), -SOURCE_DISTANCE * beam[2], Z)
        I = np.where(np.isnan(I), 1.0, I)
        L = np.where(np.isnan(L), lambda0, L)
        pos = list(zip(X.tolist(), Y.tolist(), Z.tolist()))
        weights, lambdas = I.tolist(), L.tolist()
        divsteps = 0
        weighed = weigh
    else:
        if points is None:
            points = divergence_points(steps, round_div)
        kept = [divergence_offset(steps, i, j) for i, j in points]
        for hdiv, vdiv in kept:
            log.append("divergence deviation: %g %g" % (hdiv, vdiv))
        if steps.midpoints:
            lam = [lambda0 * (1.0 + sweep_offset(steps, "disp", t)) for t in range(steps.dispsteps)]
        else:
            # (the C's order of the sums, for its roundings)
            lam = [lambda0 * (1.0 + steps.dispstep * t - steps.dispersion / 2.0)
                   for t in range(steps.dispsteps)]
        for t, lv in enumerate(lam):
            log.append("lambda%d = %.15g" % (t, lv))
        n = len(kept) * steps.dispsteps
        weight = 1.0 / n if n else 0.0
        pos, weights, lambdas = [], [], []
        d = polar[0] * beam[0] + polar[1] * beam[1] + polar[2] * beam[2]
        if across and d != 0.0:
            perp, size = unitize(tuple(polar[i] - d * beam[i] for i in range(3)))
            if size > 0.0:
                polar = perp
        for hdiv, vdiv in kept:
            v = (-SOURCE_DISTANCE * beam[0], -SOURCE_DISTANCE * beam[1], -SOURCE_DISTANCE * beam[2])
            v = rotate_axis(rotate_axis(v, polar, vdiv), vert, hdiv)
            for lv in lam:
                pos.append(v)
                weights.append(weight)
                lambdas.append(lv)
        divsteps = len(kept)
    log.append("  created a total of %d sources:" % len(pos))
    dirs = np.empty((len(pos), 3))
    for i, p in enumerate(pos):
        u, _ = unitize(tuple(float(x) for x in p))
        dirs[i] = u
        log.append("%g %g %g   %g %g" % (p[0], p[1], p[2], weights[i], lambdas[i]))
    lambdas, weights = np.array(lambdas, dtype=float), np.array(weights, dtype=float)
    intensity = None
    if weighed:
        # a source of weight 0 is no source: the kernels never see it (else the
        # first one would still set a pixel's polarization, which nanoBragg takes
        # from the first source); the others carry their weights over their mean
        keep = weights > 0.0
        dirs, lambdas, weights = dirs[keep], lambdas[keep], weights[keep]
        intensity = relative_intensities(weights)
    return Sources(direction=dirs, wavelength=lambdas, weight=weights, divsteps=divsteps, log=log,
                   intensity=intensity, dropped=len(pos) - len(lambdas))

