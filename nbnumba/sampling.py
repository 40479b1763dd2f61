"""Step-count resolution: nanoBragg's rules for filling in phi, divergence,
dispersion, sensor-layer and mosaic sampling from whatever the user gave.

Each rule takes (range, step, steps) with the C sentinels (-1 = not given) and
returns the resolved triple; warnings are returned as text for the summary.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import List

from .errors import ConfigError


#: a count that stands for "more than any run can hold": a range over a step
#: that under- or overflows (1e-320 mrad) makes the ratio infinite, whose ceil
#: is no integer; the memory rule then refuses the run with its estimate
HUGE_COUNT = 2 ** 62


def ceil_count(ratio):
    """ceil(ratio) as an int, HUGE_COUNT from there up (inf included)."""
    return int(math.ceil(ratio)) if ratio < HUGE_COUNT else HUGE_COUNT


#: how far above an integer (relative) a ratio of two typed numbers may land
#: by rounding alone: the decimal-to-binary reads and the unit conversions of
#: both (mm to m, degrees to radians, a cell edge built from six parameters)
#: are good to well under 1e-13; a thousand times that is still no real excess
EXACT_RATIO = 1e-12


def exact_ceil_count(ratio):
    """The default mode's count for a range over a step (docs/quirks.md #25):
    ceil(ratio), but a ratio within EXACT_RATIO above an integer counts as that
    integer.  ``-osc 1.1 -phistep 0.1`` is 11.000000000000002 in binary, whose
    ceiling, nanoBragg.c's count, adds a 12th point past the range;
    ``-xtal_size`` 10.5 um over a 70 A edge likewise gives 1501 cells."""
    n = ceil_count(ratio)
    if n < HUGE_COUNT and n > 1 and ratio - (n - 1) <= EXACT_RATIO * ratio:
        return n - 1
    return n


def _range_rule(rng, step, steps, steps_only_range, range_only_divisor=1):
    """nanoBragg's rule for a swept range (divergence, dispersion, sensor depth).

    (range, step, steps) use -1 for "not given".  ``steps_only_range``: the range
    assumed when only a count is given; ``range_only_divisor``: the step is
    range/divisor when only the range is given (2 sensor layers split the
    thickness, while divergence and dispersion take the whole range as step).
    """
    if steps <= 0:
        if rng < 0.0:
            if step <= 0.0:
                return 0.0, 0.0, 1
            return step, step, 2
        if step <= 0.0:
            return rng, rng / range_only_divisor, 2
        return rng, step, ceil_count(rng / step)
    if rng < 0.0:
        if step <= 0.0:
            rng = steps_only_range
            return rng, rng / steps, steps
        return step, step, 2
    if step <= 0.0:
        if steps <= 1:
            steps = 2
        return rng, rng / (steps - 1), steps
    return rng, step, steps


#: each swept range's flags (width, step, count; None: no such flag), and its
#: unit on the command line (the flag's value times scale is the resolved one)
_SWEEP_FLAGS = {"hdiv": ("-hdivrange", "-hdivstep", "-hdivsteps", 1e3, "mrad"),
                "vdiv": ("-vdivrange", "-vdivstep", "-vdivsteps", 1e3, "mrad"),
                "disp": ("-dispersion", None, "-dispsteps", 1e2, "%")}

#: |count steps - width| within this fraction of the width: the three agree
_SPAN_AGREES = 1e-9
_RTD = 180.0 / math.pi


def centred_sweep(sweep, rng, step, steps):
    """The default mode's divergence or dispersion sweep (docs/quirks.md #22,
    #44): (width, step, count), -1 for "not given", resolved so that the
    points are the midpoints of ``count`` cells of ``step`` that tile the band
    [-width/2, width/2]: width = count * step, and point i lies at
    step * (i - (count - 1) / 2) (sources.sweep_offset).  nanoBragg.c
    (_range_rule, points step * i - width / 2) puts its first and last points on
    the band's edges, so a uniform band's spread comes out (N+1)/(N-1) times too
    wide (2 points: 3 times), and off-centre for some flags.  The counts:

    * a width alone: 2 points, as the C's (at +-width/4; the C's at the edges);
    * a width and a count: that count, 1 included (the beam itself; the C
      makes it 2, which its width/(count-1) needs);
    * a width and a step: ceil(width/step) cells (a ratio within 1e-12 above
      an integer is that integer, #25), the step shrunk to tile the width
      exactly (the C: ceil(width/step) points from -width/2, the last missing);
    * a step alone, or a step and a count (2 when none): the points a step
      apart, the band count * step wide (the C drops the count: 2 points);
    * a count alone (or with a negative width): the C sweeps a width of
      1 rad (57 degrees; 100 % for the dispersion), off-centre: refused;
    * all three when count * step is not the width: refused.
    """
    fr, fs, fn, scale, unit = _SWEEP_FLAGS[sweep]
    given_width = fr + ("/-divergence" if sweep != "disp" else "")
    if steps > 0 and rng < 0.0 and step <= 0.0:
        raise ConfigError("%s %d needs a width (%s, %s)%s: nanoBragg.c would sweep %g %s "
                          "(%s), off-centre (-c_parity reproduces it)"
                          % (fn + ("/-divsteps" if sweep != "disp" else ""), steps, given_width,
                             unit, " or a step (%s)" % fs if fs else " of 0 or more", scale,
                             unit, "57 degrees" if sweep != "disp" else "half to 1.5 times the "
                             "wavelength"))
    if rng == 0.0 or (rng < 0.0 and step <= 0.0):
        return 0.0, 0.0, 1          # no width, or nothing given: the beam alone
    if step <= 0.0:                 # a width, and a count or not
        n = steps if steps > 0 else 2
        return rng, rng / n, n
    if rng < 0.0:                   # a step, and a count or not
        n = steps if steps > 0 else 2
        return step * n, step, n
    if steps <= 0:                  # a width and a step
        # (at least one cell: a width of 1e-320 over a step of 1e3 underflows to 0)
        n = max(1, exact_ceil_count(rng / step))
        if n >= HUGE_COUNT:
            return rng, step, HUGE_COUNT    # (the memory rule refuses it)
        return rng, rng / n, n
    band = step * steps
    if abs(band - rng) > _SPAN_AGREES * max(rng, band):
        raise ConfigError("%s %g, %s %g and %s %d disagree: %d cells of %g %s cover %g %s; "
                          "give two of the three (nanoBragg.c would put the points from %g to "
                          "%g %s; -c_parity reproduces it)"
                          % (given_width, rng * scale, fs, step * scale, fn, steps, steps,
                             step * scale, unit, band * scale, unit, -rng / 2 * scale,
                             (step * (steps - 1) - rng / 2) * scale, unit))
    return rng, rng / steps, steps


def _sensor_layers(thick, step, steps):
    """Default mode: ``steps`` layers of ``thick/steps`` that cover the sensor
    exactly, so the absorbed fraction is 1 - exp(-mu thick / cos).  nanoBragg.c
    (kept under -c_parity) uses thick/(steps-1) and turns 1 layer into 2, so its
    layers reach N/(N-1) of the thickness (docs/quirks.md)."""
    if thick < 0.0:
        # a negative -detector_thick is the C's "not given" (its default is 0)
        if step <= 0.0:
            if steps <= 0:
                return 0.0, 0.0, 1
            thick = 0.5e-6          # C's thickness when only a layer count is given
        else:
            thick = step * (steps if steps > 0 else 1)
    if steps <= 0:
        # the C's counts: 2 layers for a bare thickness, else enough steps of ~step
        steps = 2 if step <= 0.0 else exact_ceil_count(thick / step)
    if thick <= 0.0 or steps <= 0:
        return 0.0, 0.0, 1          # no sensor depth: one thin layer (the C's sanity rule)
    return thick, thick / steps, steps


def c_sensor_layers(cfg):
    """(thickness, layer depth, layer count) by nanoBragg.c's rule (-c_parity;
    docs/quirks.md #8b), in metres."""
    return _range_rule(cfg.detector_thick, cfg.detector_thickstep, cfg.detector_thicksteps,
                       0.5e-6, 2)


def c_sweep(sweep, rng, step, steps):
    """nanoBragg.c's divergence and dispersion sweep (-c_parity; the default
    mode's differs: centred_sweep)."""
    return _range_rule(rng, step, steps, 1.0)


def sweeps_differ_from_c(cfg, steps: "Steps") -> List[str]:
    """The sweeps (SWEEPS names) whose points in ``steps`` are not nanoBragg.c's
    for the same flags (docs/quirks.md #22, #44): the C's counts and positions
    (c_sweep, sources.sweep_offset), compared point by point.  A step alone
    gives the C's two points in both modes; -c_parity, the C's always."""
    from .sources import sweep_offset
    c = copy.copy(steps)
    c.midpoints = False
    out = []
    for name, fields in SWEEPS.items():
        for f, x in zip(fields, c_sweep_of(cfg, name)):
            setattr(c, f, x)
        n = getattr(steps, fields[2])
        if n != getattr(c, fields[2]) or any(sweep_offset(steps, name, i) != sweep_offset(c, name, i)
                                             for i in range(n)):
            out.append(name)
    return out


def c_sweep_of(cfg, name):
    """nanoBragg.c's (width, step, count) of sweep ``name`` (a SWEEPS name) for
    ``cfg``'s flags, a degenerate one as the beam alone (0, 0, 1)."""
    return _sanity(*c_sweep(name, *(getattr(cfg, f) for f in SWEEPS[name])))


def _sanity(rng, step, steps):
    if rng <= 0.0 or step <= 0.0 or steps <= 0:
        return 0.0, 0.0, 1
    return rng, step, steps


@dataclass
class Steps:
    phi0: float
    phistep: float
    phisteps: int
    osc: float
    hdivrange: float
    hdivstep: float
    hdivsteps: int
    vdivrange: float
    vdivstep: float
    vdivsteps: int
    dispersion: float
    dispstep: float
    dispsteps: int
    detector_thick: float
    detector_thickstep: float
    detector_thicksteps: int
    detector_mu: float
    mosaic_spread: float
    mosaic_domains: int
    warnings: List[str] = field(default_factory=list)
    #: the first phi point's angle past phi0 (radians): 0 in nanoBragg.c
    #: (-c_parity), which samples each step at its start; the default mode
    #: centres the points in the oscillation (docs/quirks.md #28)
    phi_offset: float = 0.0
    #: the divergence and dispersion points are the midpoints of count cells of
    #: step across the width (the default mode, docs/quirks.md #44), else
    #: nanoBragg.c's step * i - width / 2 (-c_parity; sources.sweep_offset)
    midpoints: bool = False


def c_phi_sweep(osc, step, steps):
    """nanoBragg.c's phi sampling (-c_parity): (oscillation, step, count), in
    radians, from the flags (-1 for "not given").  The points are
    phi0 + step * i, i < count: each step sampled at its start."""
    if steps < 0:
        if osc < 0.0:
            if step <= 0.0:
                return 0.0, 0.0, 1
            return step, step, 2
        if step <= 0.0:
            return osc, osc / 2.0, 2
        return osc, step, ceil_count(osc / step)
    steps = max(steps, 1)
    if osc < 0.0:
        if step <= 0.0:
            osc = math.pi / 180.0            # a count alone: one degree
            return osc, osc / steps, steps
        return step, step, 2                 # (a step and a count: the count dropped)
    if step < 0.0:
        step = osc / steps
    return osc, step, steps


def centred_phi_sweep(osc, step, steps):
    """The default mode's phi sampling (docs/quirks.md #28): (oscillation,
    step, count, offset of the first point past phi0), radians.  An image
    integrates its oscillation [phi0, phi0 + osc]; the points lie a step apart
    and centred in it, so osc = n * step gives the midpoints of the n steps,
    phi0 + (i + 1/2) step.  nanoBragg.c samples each step at its start
    (c_phi_sweep), half a step off: the same oscillation turned the other way
    about the reversed spindle gave another image.  Where its points are
    centred already (a step alone: phi0 and phi0 + step) they are kept.  A step
    and a count keep the count (the C drops it), and a step, a count and an
    oscillation that disagree are refused, as for the divergence (#22)."""
    if step > 0.0 and steps >= 0:              # a step and a count
        n = max(steps, 1)
        if osc < 0.0:
            osc = step * n
        elif abs(step * n - osc) > _SPAN_AGREES * max(osc, step * n):
            raise ConfigError("-osc %g, -phistep %g and -phisteps %d disagree: %d steps of %g "
                              "deg cover %g deg; give two of the three (nanoBragg.c would sample "
                              "from -phi to -phi + %g deg; -c_parity reproduces it)"
                              % (osc * _RTD, step * _RTD, steps, n, step * _RTD, step * n * _RTD,
                                 step * (n - 1) * _RTD))
    elif step > 0.0 and osc >= 0.0:            # an oscillation and a step
        # (#25: 1.1 / 0.1 is 11 steps; at least one: -osc 0 with a step is a
        # still, where the C counts 0 steps and divides the image by them)
        n = max(1, exact_ceil_count(osc / step))
        if n < HUGE_COUNT and osc > 0.0 and step * n - osc > _SPAN_AGREES * osc:
            # the step does not divide the oscillation: n steps of it would
            # render n * step (-osc 1 -phistep 0.3: 1.2 deg, the header saying
            # 1); the n steps share the oscillation instead (#46)
            step = osc / n
    else:
        osc, step, n = c_phi_sweep(osc, step, steps)
    if n >= HUGE_COUNT:
        return osc, step, n, 0.0                 # (the memory rule refuses it)
    return osc, step, n, (osc - step * (n - 1)) / 2.0


def resolve_steps(cfg) -> Steps:
    """Apply nanoBragg.c's "default sampling logic" to a Config."""
    warnings: List[str] = []

    # --- phi --------------------------------------------------------------
    if cfg.c_parity:
        osc, phistep, phisteps = c_phi_sweep(cfg.osc, cfg.phistep, cfg.phisteps)
        phi_offset = 0.0
        if phisteps == 0:
            # (the image would be NaN, refused as a geometry that overflows)
            raise ConfigError("-osc %g with -phistep %g makes 0 phi steps, by which nanoBragg.c "
                              "divides the image (every pixel NaN); give -osc > 0 or drop "
                              "-phistep (the default mode renders the still)"
                              % (osc * _RTD, phistep * _RTD))
    else:
        osc, phistep, phisteps, phi_offset = centred_phi_sweep(cfg.osc, cfg.phistep,
                                                               cfg.phisteps)
        if cfg.phistep > 0.0 and phistep != cfg.phistep:
            warnings.append("WARNING: -osc %g is not a multiple of -phistep %g: %d steps of %.6g deg "
                            "(nanoBragg.c renders %d steps of %g, %g deg)"
                            % (osc * _RTD, cfg.phistep * _RTD, phisteps, phistep * _RTD,
                               phisteps, cfg.phistep * _RTD, phisteps * cfg.phistep * _RTD))

    # --- divergence, dispersion and sensor layers ------------------------
    sweep = c_sweep if cfg.c_parity else centred_sweep
    h = sweep("hdiv", cfg.hdivrange, cfg.hdivstep, cfg.hdivsteps)
    v = sweep("vdiv", cfg.vdivrange, cfg.vdivstep, cfg.vdivsteps)
    d = sweep("disp", cfg.dispersion, cfg.dispstep, cfg.dispsteps)
    if not cfg.c_parity:
        for name, which, width in (("hdiv", "horizontal", h[0]), ("vdiv", "vertical", v[0])):
            if width > math.pi:
                # (-divergence 4000 rendered an image: sources turned up to 115 deg from
                # the beam; -divergence 1e6 -hdivstep 0.1, 1e7 of them, built for minutes)
                fr, fs, fn = _SWEEP_FLAGS[name][:3]
                raise ConfigError("%s/-divergence (or %s x %s): the %s divergence spans %g "
                                  "mrad, more than pi rad (3141.59 mrad): its outer sources would "
                                  "lie more than 90 deg off the beam, behind the sample "
                                  "(-c_parity renders nanoBragg.c's image)"
                                  % (fr, fs, fn, which, width * 1e3))
    if cfg.c_parity:
        thick, tstep, tsteps = c_sensor_layers(cfg)
    else:
        thick, tstep, tsteps = _sensor_layers(cfg.detector_thick, cfg.detector_thickstep,
                                              cfg.detector_thicksteps)
    mu = cfg.detector_mu
    if not cfg.c_parity and mu == 0.0 and thick > 0.0:
        # -detector_abs 0 or inf turns absorption off, and sets the thickness to
        # 0 where it stands: a -detector_thick after it gave nanoBragg.c a sensor
        # that captures nothing, a blank image (docs/quirks.md #40); the flags
        # commute in the default mode
        warnings.append("WARNING: -detector_abs 0 (or inf) turns the sensor's absorption off: "
                        "the %g um -detector_thick is not modelled (every photon counts)"
                        % (thick * 1e6))
        thick, tstep, tsteps = 0.0, 0.0, 1
    if thick > 0.0 and mu < 0.0:
        mu = 1.0 / thick
        if cfg.c_parity:
            warnings.append("WARNING: setting detector attenuation depth to %g m" % mu)
        else:
            # (nanoBragg.c prints mu, 1/m, as the depth)
            warnings.append("WARNING: setting detector attenuation depth to %g m "
                            "(the thickness; mu = %g /m)" % (thick, mu))

    # --- mosaic domains ----------------------------------------------------
    spread, domains = cfg.mosaic_spread, cfg.mosaic_domains
    if domains <= 0:
        if spread < 0.0:
            domains, spread = 1, 0.0
        elif spread == 0.0:
            domains = 1
        else:
            warnings.append("WARNING: finite mosaicity with only one domain! upping to 10 mosaic domains")
            domains = 10
    else:
        if spread < 0.0:
            warnings.append("WARNING: no mosaic spread specified.  setting mosaic_domains = 1")
            spread, domains = 0.0, 1
        elif spread == 0.0:
            warnings.append("WARNING: zero mosaic spread specified.  setting mosaic_domains = 1")
            domains = 1

    # --- sanity checks (C resets degenerate sweeps to a single step) ---------
    h = _sanity(*h)
    v = _sanity(*v)
    d = _sanity(*d)
    thick, tstep, tsteps = _sanity(thick, tstep, tsteps)

    return Steps(phi0=cfg.phi0, phistep=phistep, phisteps=phisteps, osc=osc, phi_offset=phi_offset,
                 midpoints=not cfg.c_parity,
                 hdivrange=h[0], hdivstep=h[1], hdivsteps=h[2],
                 vdivrange=v[0], vdivstep=v[1], vdivsteps=v[2],
                 dispersion=d[0], dispstep=d[1], dispsteps=d[2],
                 detector_thick=thick, detector_thickstep=tstep, detector_thicksteps=tsteps,
                 detector_mu=mu, mosaic_spread=spread, mosaic_domains=domains,
                 warnings=warnings)


#: the swept ranges whose width nbnumba.autodiff differentiates: name ->
#: (range, step, count) fields of Steps (and of Config: range, step, count)
SWEEPS = {"hdiv": ("hdivrange", "hdivstep", "hdivsteps"),
          "vdiv": ("vdivrange", "vdivstep", "vdivsteps"),
          "disp": ("dispersion", "dispstep", "dispsteps")}


def sweep_at(steps: Steps, sweep: str, rng: float) -> Steps:
    """``steps`` with sweep ``sweep`` (a SWEEPS name) at range ``rng``, its point
    count kept and its step rng/count (the default mode's cells, #44) or
    rng/(count - 1) (nanoBragg.c's), as resolve_steps derives it from a range
    (a given step fixes the points whatever the range under -c_parity,
    docs/quirks.md #22, and nbnumba.autodiff refuses to differentiate such a
    range); a sweep collapsed to one point at range 0 stays collapsed.  This is
    the sampling the run's image is a smooth function of near its own range."""
    r_name, s_name, n_name = SWEEPS[sweep]
    n = getattr(steps, n_name)
    if getattr(steps, r_name) == 0.0 and n == 1:
        return steps
    out = copy.copy(steps)
    setattr(out, r_name, rng)
    setattr(out, s_name, rng / (n if steps.midpoints else n - 1))
    return out
