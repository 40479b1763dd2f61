"""Command-line flags of nanoBragg, and ``parse_argv`` (argv -> :class:`Config`).

The flag table :data:`FLAGS` lists every option that the argument loop of
nanoBragg.c recognises (with every synonym it accepts), plus nbnumba's own
switches.  Each entry says how many values the flag takes, their kind and
units, the default, a one-line help text, and how the values land in
:class:`~nbnumba.config.Config` (already converted to the C program's internal
units: metres, radians, fractions, ...).

Two matching modes
------------------
*default*
    A flag matches only its exact spelling (case-sensitive) or a listed
    synonym.  Values are taken positionally and parsed strictly; unknown flags,
    missing or malformed values and stray arguments raise
    :class:`~nbnumba.errors.UsageError` with a one-line message.

*c_parity* (``-c_parity`` anywhere on the command line)
    Reproduces nanoBragg.c's matching: every argument that starts with ``-``
    is run through the C option blocks *in C order*, each block testing
    ``strstr(argv[i], pattern)`` (some with ``strlen``/``strcmp`` guards),
    with the C ``argc > i+k`` guards and ``continue`` statements.  One argument
    can therefore trigger several options, e.g. ``-twotheta_axis 1 0 0`` also
    sets ``-twotheta 1`` (and the SAMPLE pivot), and ``-pix0_vector_mm`` is
    handled by the ``-pix0_vector`` block (values taken as metres,
    NANO-C-BUG-001).  Values are still parsed strictly (C's ``atof`` would
    turn garbage into 0; we refuse), an argument that triggers no C block is
    still an error, and an argument that parses as a number is a value, never
    a flag (in C, ``-0.5`` is examined as an option and matches nothing).

In both modes the SMV headers of ``-mask`` and then ``-img`` are applied before
any flag, whatever their position on the command line (nanoBragg.c reads both
files in a first pass over argv).

Public functions: :func:`parse_argv`, :func:`usage_text`, :func:`short_usage`,
:func:`flag_names`, :func:`c_blocks_matching`; exception :class:`HelpRequested`.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nbnumba.config import Config, differing_fields
from nbnumba.errors import NBError, UsageError, did_you_mean

__all__ = [
    "RTD",
    "FlagSpec",
    "FLAGS",
    "GROUPS",
    "HelpRequested",
    "parse_argv",
    "usage_text",
    "short_usage",
    "flag_names",
    "spec_for",
    "c_blocks_matching",
]

#: C's ``M_1_PI`` (the double nearest 1/pi; ``1/math.pi`` rounds to the same double).
M_1_PI = 1.0 / math.pi
#: nanoBragg's degrees-per-radian factor ``RTD = 180.0*M_1_PI``; angles are stored as ``deg/RTD``.
RTD = 180.0 * M_1_PI

GROUPS = (
    "crystal",
    "detector",
    "beam",
    "rotation/mosaic",
    "sampling",
    "inputs",
    "outputs",
    "noise/background/random",
    "nbnumba extras",
)

_HELP_SPELLINGS = ("-h", "-help", "--help")


class HelpRequested(NBError):
    """Raised by :func:`parse_argv` when ``-h``/``-help``/``--help`` is present.

    ``.text`` is the full usage text (:func:`usage_text`); the CLI prints it and
    exits with status 0.
    """

    def __init__(self, text: str):
        super().__init__("help requested")
        self.text = text

    exit_code = 0      # help is not an error


Apply = Callable[[Config, tuple], None]


@dataclass(frozen=True)
class FlagSpec:
    """One command-line flag.

    name     canonical spelling, e.g. ``"-distance"``
    nargs    number of values that follow the flag (``-misset random`` takes 1 of its 3)
    kind     value kind: 'float', 'int', 'str', 'vec3', 'choice', 'misset'
             ('random' or 3 angles), 'abs' (number or 'inf'), or None (a switch)
    units    units of the values as typed on the command line
    default  the default, as text, for the help
    help     one line
    apply    ``apply(cfg, values)``: writes the converted values into ``cfg``
    fields   the Config fields ``apply`` writes
    aliases  other accepted spellings
    group    section of the help text (one of :data:`GROUPS`)
    choices  accepted words for kind 'choice'
    metavar  how the values are shown in the help
    example  sample values (used by the tests and nowhere else)
    minimum  smallest accepted value (pixel and unit-cell counts, ``-threads``)
    """

    name: str
    nargs: int
    kind: Optional[str]
    units: str
    default: str
    help: str
    apply: Apply = field(repr=False, compare=False)
    fields: Tuple[str, ...] = ()
    aliases: Tuple[str, ...] = ()
    group: str = "crystal"
    choices: Tuple[str, ...] = ()
    metavar: str = ""
    example: Tuple[str, ...] = ()
    minimum: Optional[float] = None

    @property
    def spellings(self) -> Tuple[str, ...]:
        return (self.name,) + self.aliases

    @property
    def expect(self) -> str:
        """What the values should look like, for error messages."""
        u = f" ({self.units})" if self.units else ""
        k = self.kind
        if k == "float":
            return f"a number{u}" if self.nargs == 1 else f"{self.nargs} numbers ({self.metavar})"
        if k == "int":
            if self.nargs == 1:
                lo = f" >= {int(self.minimum)}" if self.minimum is not None else ""
                return f"an integer{lo}{u}"
            return f"{self.nargs} integers ({self.metavar})"
        if k == "vec3":
            return f"3 numbers (x y z{', ' + self.units if self.units else ''})"
        if k == "str":
            return "a file name"
        if k == "choice":
            return "one of " + "|".join(self.choices)
        if k == "misset":
            return "'random' or 3 angles (deg)"
        if k == "abs":
            return "a number (um) or 'inf'"
        return "no value"


# ---------------------------------------------------------------------------
# appliers: small factories that write converted values into a Config
# ---------------------------------------------------------------------------

def _set(*names: str, conv: Callable = lambda v: v, **extra) -> Apply:
    """Set every field in ``names`` to ``conv(values[0])``, then the ``extra`` constants."""

    def apply(cfg: Config, vals: tuple) -> None:
        v = conv(vals[0])
        for n in names:
            setattr(cfg, n, v)
        for k, x in extra.items():
            setattr(cfg, k, x)

    return apply


def _const(**kv) -> Apply:
    """A switch: set constant field values."""

    def apply(cfg: Config, vals: tuple) -> None:
        for k, x in kv.items():
            setattr(cfg, k, x)

    return apply


def _setseq(names: Sequence[str], conv: Callable = lambda v: v, **extra) -> Apply:
    """Set ``names[j] = conv(values[j])`` for the values given, then ``extra``."""

    def apply(cfg: Config, vals: tuple) -> None:
        for n, v in zip(names, vals):
            setattr(cfg, n, conv(v))
        for k, x in extra.items():
            setattr(cfg, k, x)

    return apply


def _vec(name: str, conv: Callable = lambda v: v, **extra) -> Apply:
    """Store a 3-vector (one conversion per component), then ``extra``."""

    def apply(cfg: Config, vals: tuple) -> None:
        setattr(cfg, name, tuple(conv(v) for v in vals[:3]))
        for k, x in extra.items():
            setattr(cfg, k, x)

    return apply


def _mm(v: float) -> float:          # C: atof(v)/1000.0  (mm -> m)
    return v / 1000.0


def _deg(v: float) -> float:         # C: atof(v)/RTD     (deg -> rad)
    return v / RTD


def _mrad(v: float) -> float:        # C: atof(v)/1000.0  (mrad -> rad)
    return v / 1000.0


def _seed(v: int) -> int:            # C: seed = -atoi(v)  (stored negated)
    return -v


def _energy_to_lambda(v: float) -> float:   # C: lambda = 12398.42/atof(v) A
    if v <= 0.0:
        raise UsageError("-energy must be > 0 eV (got %g)" % v)
    return (12398.42 / v) / 1.0e10


def _apply_cell(cfg: Config, vals: tuple) -> None:
    """-cell a b c alpha beta gamma (Å, deg).  C keeps any missing trailing values
    at their defaults (only reachable in c_parity mode: default mode wants all 6)."""
    cfg.user_cell = True
    names = ("cell_a", "cell_b", "cell_c", "cell_alpha", "cell_beta", "cell_gamma")
    for j, v in enumerate(vals[:6]):
        setattr(cfg, names[j], v if j < 3 else v / RTD)


def _apply_misset(cfg: Config, vals: tuple) -> None:
    """-misset random | rotx roty rotz (deg).  'random' leaves the angles alone (as C)."""
    if vals and vals[0] == "random":
        cfg.misset_mode = -1
        return
    cfg.misset_mode = 1
    cfg.misset = (vals[0] / RTD, vals[1] / RTD, vals[2] / RTD)


def _apply_detector_abs(cfg: Config, vals: tuple) -> None:
    """-detector_abs <um>|inf: 'inf' or 0 turns absorption off (thickness 0, mu 0);
    otherwise mu = 1/(v*1e-6) in 1/m (C keeps the thickness as it was)."""
    v = vals[0]
    if math.isinf(v) or v == 0.0:
        cfg.detector_thick = 0.0
        cfg.detector_mu = 0.0
    else:
        # as the C's division: an attenuation length that underflows in m
        # (1e-320 um) is an infinite mu, not a ZeroDivisionError
        d = v * 1e-6
        cfg.detector_mu = 1.0 / d if d != 0.0 else math.copysign(math.inf, v)


def _apply_pix0_m(cfg: Config, vals: tuple) -> None:
    """-pix0_vector x y z in metres; selects the CUSTOM convention."""
    cfg.pix0_vector = (vals[0], vals[1], vals[2])
    cfg.pix0_set = True
    cfg.beam_convention = "CUSTOM"


def _apply_pix0_mm(cfg: Config, vals: tuple) -> None:
    """-pix0_vector_mm x y z in mm -> metres (default mode only: in c_parity the C
    ``-pix0_vector`` block takes these numbers as metres, NANO-C-BUG-001)."""
    cfg.pix0_vector = (vals[0] / 1000.0, vals[1] / 1000.0, vals[2] / 1000.0)
    cfg.pix0_set = True
    cfg.beam_convention = "CUSTOM"


def _noop(cfg: Config, vals: tuple) -> None:
    pass


# ---------------------------------------------------------------------------
# the flag table
# ---------------------------------------------------------------------------

def _F(name, nargs, kind, units, default, help, apply, fields=(), aliases=(), group="crystal",
       choices=(), metavar="", example=(), minimum=None) -> FlagSpec:
    if not metavar:
        if kind in ("float", "int", "abs"):
            metavar = f"<{units}>" if units else ("<int>" if kind == "int" else "<value>")
        elif kind == "vec3":
            metavar = "x y z"
        elif kind == "str":
            metavar = "<file>"
        elif kind == "choice":
            metavar = "|".join(choices)
    return FlagSpec(name=name, nargs=nargs, kind=kind, units=units, default=default, help=help,
                    apply=apply, fields=tuple(fields), aliases=tuple(aliases), group=group,
                    choices=tuple(choices), metavar=metavar, example=tuple(example), minimum=minimum)


_SAMPLE_XYZ = ("sample_x", "sample_y", "sample_z")
_CELL_FIELDS = ("user_cell", "cell_a", "cell_b", "cell_c", "cell_alpha", "cell_beta", "cell_gamma")

FLAGS: Tuple[FlagSpec, ...] = (
    # ------------------------------------------------------------------ crystal
    _F("-cell", 6, "float", "Å, deg", "none (use -mat)",
       "direct unit cell a b c (Å) alpha beta gamma (deg); alternative to -mat",
       _apply_cell, _CELL_FIELDS, metavar="a b c alpha beta gamma",
       example=("70", "80", "90", "75", "85", "95")),
    _F("-misset", 3, "misset", "deg", "0 0 0",
       "crystal misset rotations about x, y, z (deg), or 'random' for a random orientation",
       _apply_misset, ("misset_mode", "misset"), metavar="rotx roty rotz | random",
       example=("10", "20", "30")),
    _F("-Na", 1, "int", "", "1", "number of unit cells along a (integer)",
       _set("Na", conv=float), ("Na",), example=("7",), minimum=1),
    _F("-Nb", 1, "int", "", "1", "number of unit cells along b (integer)",
       _set("Nb", conv=float), ("Nb",), example=("7",), minimum=1),
    _F("-Nc", 1, "int", "", "1", "number of unit cells along c (integer)",
       _set("Nc", conv=float), ("Nc",), example=("7",), minimum=1),
    _F("-N", 1, "int", "", "1", "number of unit cells along a, b and c (integer)",
       _set("Na", "Nb", "Nc", conv=float), ("Na", "Nb", "Nc"), example=("5",), minimum=1),
    _F("-samplesize", 1, "float", "mm", "0 (use -N)",
       "crystal full width along x, y and z (mm); alternative to -N",
       _set(*_SAMPLE_XYZ, conv=_mm), _SAMPLE_XYZ, aliases=("-sample_size",), example=("0.05",)),
    _F("-sample_thick", 1, "float", "mm", "0 (use -Na)", "crystal thickness along x (mm)",
       _set("sample_x", conv=_mm), ("sample_x",), aliases=("-sample_x",), example=("0.05",)),
    _F("-sample_width", 1, "float", "mm", "0 (use -Nb)", "crystal width along y (mm)",
       _set("sample_y", conv=_mm), ("sample_y",), aliases=("-sample_y", "-width"), example=("0.05",)),
    _F("-sample_height", 1, "float", "mm", "0 (use -Nc)", "crystal height along z (mm)",
       _set("sample_z", conv=_mm), ("sample_z",),
       aliases=("-sample_heigh", "-sample_z", "-height", "-heigh"), example=("0.05",)),
    _F("-xtalsize", 1, "float", "mm", "0 (use -N)", "same as -samplesize",
       _set(*_SAMPLE_XYZ, conv=_mm), _SAMPLE_XYZ, aliases=("-xtal_size",), example=("0.05",)),
    _F("-xtal_thick", 1, "float", "mm", "0 (use -Na)", "same as -sample_thick",
       _set("sample_x", conv=_mm), ("sample_x",), aliases=("-xtal_x",), example=("0.05",)),
    _F("-xtal_width", 1, "float", "mm", "0 (use -Nb)", "same as -sample_width",
       _set("sample_y", conv=_mm), ("sample_y",), aliases=("-xtal_y",), example=("0.05",)),
    _F("-xtal_height", 1, "float", "mm", "0 (use -Nc)", "same as -sample_height",
       _set("sample_z", conv=_mm), ("sample_z",), aliases=("-xtal_heigh", "-xtal_z"),
       example=("0.05",)),
    _F("-density", 1, "float", "g/cm^3", "1 g/cm^3",
       "crystal density (stored in g/m^3; accepted, not used, as in nanoBragg.c)",
       _set("density", conv=lambda v: v * 1e6), ("density",),
       aliases=("-sample_den", "-sample_density"), example=("1.2",)),
    _F("-MW", 1, "float", "g/mol", "18", "molecular weight (accepted, not used, as in nanoBragg.c)",
       _set("molecular_weight"), ("molecular_weight",), aliases=("-molecular_weight", "-molec"),
       example=("25000",)),
    _F("-square_xtal", 0, None, "", "on", "parallelepiped crystal: sincg lattice transform",
       _const(xtal_shape="SQUARE"), ("xtal_shape",)),
    _F("-round_xtal", 0, None, "", "off", "ellipsoidal crystal: sinc3 lattice transform",
       _const(xtal_shape="ROUND"), ("xtal_shape",)),
    _F("-gauss_xtal", 0, None, "", "off", "Gaussian spots: no inter-Bragg maxima",
       _const(xtal_shape="GAUSS"), ("xtal_shape",)),
    _F("-tophat_spots", 0, None, "", "off", "lattice transform clipped at its FWHM: no inter-Bragg maxima",
       _const(xtal_shape="TOPHAT"), ("xtal_shape",), aliases=("-binary_spots",)),
    _F("-fudge", 1, "float", "", "1", "scale factor on the spot-shape argument",
       _set("fudge"), ("fudge",), example=("2",)),
    _F("-default_F", 1, "float", "electrons", "0",
       "structure factor for every h,k,l not given by -hkl; alternative to -hkl",
       _set("default_F"), ("default_F",), example=("100",)),
    _F("-interpolate", 0, None, "", "auto (on if any N <= 2)",
       "force tricubic interpolation of F between Bragg peaks",
       _const(interpolate=1), ("interpolate",)),
    _F("-nointerpolate", 0, None, "", "auto (on if any N <= 2)",
       "disable interpolation of F between Bragg peaks",
       _const(interpolate=0), ("interpolate",)),
    _F("-dmin", 1, "float", "Å", "0 (no cut-off)", "skip contributions with d-spacing below this",
       _set("dmin", conv=lambda v: v * 1e-10), ("dmin",), example=("2.5",)),

    # ----------------------------------------------------------------- detector
    _F("-distance", 1, "float", "mm", "100 mm",
       "sample to detector-centre distance along the beam; selects the BEAM pivot (kept under CUSTOM only)",
       _set("distance", conv=_mm, detector_pivot="BEAM"), ("distance", "detector_pivot"),
       group="detector", example=("231.27466",)),
    _F("-close_distance", 1, "float", "mm", "derived",
       "sample to detector-plane distance along the detector normal; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("close_distance", conv=_mm, detector_pivot="SAMPLE"),
       ("close_distance", "detector_pivot"), group="detector", example=("150",)),
    _F("-Xbeam", 1, "float", "mm", "detector centre (MOSFLM, DENZO, ADXV: half a pixel off)",
       "fast coordinate of the direct-beam spot; selects the BEAM pivot (kept under CUSTOM only)",
       _set("Xbeam", conv=_mm, detector_pivot="BEAM"), ("Xbeam", "detector_pivot"),
       group="detector", example=("51.2",)),
    _F("-Ybeam", 1, "float", "mm", "detector centre (MOSFLM, DENZO, ADXV: half a pixel off)",
       "slow coordinate of the direct-beam spot; selects the BEAM pivot (kept under CUSTOM only)",
       _set("Ybeam", conv=_mm, detector_pivot="BEAM"), ("Ybeam", "detector_pivot"),
       group="detector", example=("51.2",)),
    _F("-Xclose", 1, "float", "mm", "detector centre",
       "fast coordinate of the point nearest the sample; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("Xclose", conv=_mm, detector_pivot="SAMPLE"), ("Xclose", "detector_pivot"),
       group="detector", example=("51.2",)),
    _F("-Yclose", 1, "float", "mm", "detector centre",
       "slow coordinate of the point nearest the sample; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("Yclose", conv=_mm, detector_pivot="SAMPLE"), ("Yclose", "detector_pivot"),
       group="detector", example=("51.2",)),
    _F("-ORGX", 1, "float", "pixels", "detector centre",
       "XDS-style fast beam centre; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("ORGX", detector_pivot="SAMPLE"), ("ORGX", "detector_pivot"),
       group="detector", example=("512.5",)),
    _F("-ORGY", 1, "float", "pixels", "detector centre",
       "XDS-style slow beam centre; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("ORGY", detector_pivot="SAMPLE"), ("ORGY", "detector_pivot"),
       group="detector", example=("512.5",)),
    _F("-pivot", 1, "choice", "", "set by the convention (CUSTOM: by the flags)",
       "rotate the detector about the beam spot or the sample (CUSTOM convention only: the others fix the pivot)",
       _set("detector_pivot", conv=str.upper), ("detector_pivot",), group="detector",
       choices=("sample", "beam"), example=("sample",)),
    _F("-mosflm", 0, None, "", "on", "MOSFLM beam/detector convention; BEAM pivot",
       _const(beam_convention="MOSFLM", detector_pivot="BEAM"),
       ("beam_convention", "detector_pivot"), group="detector"),
    _F("-xds", 0, None, "", "off", "XDS convention; SAMPLE pivot",
       _const(beam_convention="XDS", detector_pivot="SAMPLE"),
       ("beam_convention", "detector_pivot"), group="detector"),
    _F("-adxv", 0, None, "", "off", "ADXV convention; BEAM pivot",
       _const(beam_convention="ADXV", detector_pivot="BEAM"),
       ("beam_convention", "detector_pivot"), group="detector"),
    _F("-denzo", 0, None, "", "off", "DENZO convention; BEAM pivot",
       _const(beam_convention="DENZO", detector_pivot="BEAM"),
       ("beam_convention", "detector_pivot"), group="detector"),
    _F("-dials", 0, None, "", "off", "DIALS convention; SAMPLE pivot (as in nanoBragg.c)",
       _const(beam_convention="DIALS", detector_pivot="BEAM"),
       ("beam_convention", "detector_pivot"), group="detector"),
    _F("-fdet_vector", 3, "vec3", "", "per convention (MOSFLM: 0 0 1)",
       "unit vector of increasing fast pixel index; selects the CUSTOM convention",
       _vec("fdet_vector", beam_convention="CUSTOM"), ("fdet_vector", "beam_convention"),
       group="detector", example=("0", "1", "0")),
    _F("-sdet_vector", 3, "vec3", "", "per convention (MOSFLM: 0 -1 0)",
       "unit vector of increasing slow pixel index; selects the CUSTOM convention",
       _vec("sdet_vector", beam_convention="CUSTOM"), ("sdet_vector", "beam_convention"),
       group="detector", example=("0", "0", "1")),
    _F("-odet_vector", 3, "vec3", "", "per convention (MOSFLM: 1 0 0)",
       "unit detector normal, away from the sample; selects the CUSTOM convention",
       _vec("odet_vector", beam_convention="CUSTOM"), ("odet_vector", "beam_convention"),
       group="detector", example=("0", "0", "-1")),
    _F("-twotheta_axis", 3, "vec3", "", "per convention (MOSFLM: 0 0 -1)",
       "rotation axis of -twotheta; selects the CUSTOM convention",
       _vec("twotheta_axis", beam_convention="CUSTOM"), ("twotheta_axis", "beam_convention"),
       group="detector", example=("1", "0", "0")),
    _F("-pix0_vector", 3, "vec3", "m", "derived from the beam centre",
       "sample-to-first-pixel vector (metres); selects the CUSTOM convention",
       _apply_pix0_m, ("pix0_vector", "pix0_set", "beam_convention"), group="detector",
       example=("0.1", "0.05", "-0.05")),
    _F("-pix0_vector_mm", 3, "vec3", "mm", "derived from the beam centre",
       "as -pix0_vector but in mm (c_parity: taken as metres like nanoBragg.c, NANO-C-BUG-001)",
       _apply_pix0_mm, ("pix0_vector", "pix0_set", "beam_convention"), group="detector",
       example=("100", "50", "-50")),
    _F("-twotheta", 1, "float", "deg", "0",
       "detector rotation about -twotheta_axis; selects the SAMPLE pivot (kept under CUSTOM only)",
       _set("detector_twotheta", conv=_deg, detector_pivot="SAMPLE"),
       ("detector_twotheta", "detector_pivot"), group="detector", example=("15",)),
    _F("-detector_rotx", 1, "float", "deg", "0", "detector rotation about the lab x axis",
       _set("detector_rotx", conv=_deg), ("detector_rotx",), group="detector", example=("5",)),
    _F("-detector_roty", 1, "float", "deg", "0", "detector rotation about the lab y axis",
       _set("detector_roty", conv=_deg), ("detector_roty",), group="detector", example=("5",)),
    _F("-detector_rotz", 1, "float", "deg", "0", "detector rotation about the lab z axis",
       _set("detector_rotz", conv=_deg), ("detector_rotz",), group="detector", example=("5",)),
    _F("-detsize", 1, "float", "mm", "102.4 mm", "square detector side (fast and slow)",
       _set("detsize_f", "detsize_s", conv=_mm), ("detsize_f", "detsize_s"), group="detector",
       example=("50",)),
    _F("-detsize_f", 1, "float", "mm", "102.4 mm", "detector size along the fast axis",
       _set("detsize_f", conv=_mm), ("detsize_f",), group="detector", example=("50",)),
    _F("-detsize_s", 1, "float", "mm", "102.4 mm", "detector size along the slow axis",
       _set("detsize_s", conv=_mm), ("detsize_s",), group="detector", example=("50",)),
    _F("-detpixels", 1, "int", "pixels", "detsize/pixel (1024)", "square detector: pixels per side",
       _set("fpixels", "spixels"), ("fpixels", "spixels"), group="detector", example=("64",), minimum=1),
    _F("-detpixels_f", 1, "int", "pixels", "detsize_f/pixel", "number of fast-axis pixels",
       _set("fpixels"), ("fpixels",), aliases=("-detpixels_x",), group="detector", example=("64",), minimum=1),
    _F("-detpixels_s", 1, "int", "pixels", "detsize_s/pixel", "number of slow-axis pixels",
       _set("spixels"), ("spixels",), aliases=("-detpixels_y",), group="detector", example=("64",), minimum=1),
    _F("-pixel", 1, "float", "mm", "0.1 mm", "pixel size",
       _set("pixel_size", conv=_mm), ("pixel_size",), group="detector", example=("0.172",)),
    _F("-point_pixel", 0, None, "", "off", "solid angle 1/R^2 only (no obliquity factor)",
       _const(point_pixel=True), ("point_pixel",), group="detector"),
    _F("-curved_det", 0, None, "", "off", "all pixels at the same distance from the sample",
       _const(curved_detector=True), ("curved_detector",), group="detector"),
    _F("-detector_abs", 1, "abs", "um", "equal to -detector_thick if that is given, else no absorption",
       "sensor attenuation depth; 'inf' or 0 turns absorption (and thickness) off",
       _apply_detector_abs, ("detector_mu",), aliases=("-detector_absorb", "-detector_absorption"),
       group="detector", example=("50",)),
    _F("-detector_thick", 1, "float", "um", "0", "sensor thickness",
       _set("detector_thick", conv=lambda v: v * 1e-6), ("detector_thick",), group="detector",
       example=("450",)),
    _F("-detector_thicksteps", 1, "int", "", "auto (2 with a -detector_thick, else 1)",
       "number of sensor layers",
       _set("detector_thicksteps"), ("detector_thicksteps",), aliases=("-thicksteps",),
       group="detector", example=("3",)),

    # --------------------------------------------------------------------- beam
    _F("-lambda", 1, "float", "Å", "1 Å", "central wavelength",
       _set("lambda0", conv=lambda v: v / 1.0e10), ("lambda0",), aliases=("-wave", "-wavelength"),
       group="beam", example=("6.2",)),
    _F("-energy", 1, "float", "eV", "12398.42 eV (1 Å)", "central photon energy (sets the wavelength)",
       _set("lambda0", conv=_energy_to_lambda), ("lambda0",), group="beam",
       example=("6000",)),
    _F("-fluence", 1, "float", "photons/m^2", "1.25932e+29", "integrated incident fluence",
       _set("fluence"), ("fluence",), group="beam", example=("1e24",)),
    _F("-flux", 1, "float", "photons/s", "0 (use -fluence)",
       "incident flux; with -exposure and -beamsize gives the fluence",
       _set("flux"), ("flux",), group="beam", example=("1e12",)),
    _F("-exposure", 1, "float", "s", "1 s", "exposure time (with -flux)",
       _set("exposure"), ("exposure",), group="beam", example=("0.1",)),
    _F("-beamsize", 1, "float", "mm", "0.1 mm", "beam width (with -flux); clips the crystal across the beam",
       _set("beamsize", conv=_mm), ("beamsize",), group="beam", example=("0.05",)),
    _F("-beam_vector", 3, "vec3", "", "per convention (MOSFLM: 1 0 0)",
       "unit vector of the beam direction; selects the CUSTOM convention",
       _vec("beam_vector", beam_convention="CUSTOM"), ("beam_vector", "beam_convention"),
       group="beam", example=("0", "0", "1")),
    _F("-polar_vector", 3, "vec3", "", "per convention (MOSFLM: 0 0 1)",
       "unit E-vector of the beam polarisation; selects the CUSTOM convention",
       _vec("polar_vector", beam_convention="CUSTOM"), ("polar_vector", "beam_convention"),
       group="beam", example=("0", "1", "0")),
    _F("-polar", 1, "float", "", "0", "Kahn polarisation factor, -1 to 1 (turns -nopolar off)",
       _set("polarization", nopolar=False), ("polarization", "nopolar"), group="beam",
       example=("0.99",)),
    _F("-nopolar", 0, None, "", "off", "no polarisation correction (factor 1)",
       _const(nopolar=True), ("nopolar",), group="beam"),
    _F("-dispersion", 1, "float", "%", "0", "spectral width delta-lambda/lambda",
       _set("dispersion", conv=lambda v: v / 100.0), ("dispersion",), group="beam",
       example=("0.1",)),
    _F("-dispsteps", 1, "int", "", "auto", "number of wavelengths across -dispersion",
       _set("dispsteps"), ("dispsteps",), group="beam", example=("3",)),
    _F("-divergence", 1, "float", "mrad", "0", "horizontal and vertical divergence range",
       _set("hdivrange", "vdivrange", conv=_mrad), ("hdivrange", "vdivrange"), group="beam",
       example=("0.28",)),
    _F("-hdivrange", 1, "float", "mrad", "0", "horizontal divergence range",
       _set("hdivrange", conv=_mrad), ("hdivrange",), group="beam", example=("0.28",)),
    _F("-vdivrange", 1, "float", "mrad", "0", "vertical divergence range",
       _set("vdivrange", conv=_mrad), ("vdivrange",), group="beam", example=("0.28",)),
    _F("-hdivstep", 1, "float", "mrad", "auto", "horizontal divergence step",
       _set("hdivstep", conv=_mrad), ("hdivstep",), group="beam", example=("0.02",)),
    _F("-vdivstep", 1, "float", "mrad", "auto", "vertical divergence step",
       _set("vdivstep", conv=_mrad), ("vdivstep",), group="beam", example=("0.02",)),
    _F("-hdivsteps", 1, "int", "", "auto", "number of horizontal divergence steps",
       _set("hdivsteps"), ("hdivsteps",), group="beam", example=("3",)),
    _F("-vdivsteps", 1, "int", "", "auto", "number of vertical divergence steps",
       _set("vdivsteps"), ("vdivsteps",), group="beam", example=("3",)),
    _F("-divsteps", 1, "int", "", "auto", "horizontal and vertical divergence steps",
       _set("hdivsteps", "vdivsteps"), ("hdivsteps", "vdivsteps"), group="beam", example=("3",)),
    _F("-round_div", 0, None, "", "on", "cut the divergence grid to an ellipse",
       _const(round_div=True), ("round_div",), group="beam"),
    _F("-square_div", 0, None, "", "off", "keep the full rectangular divergence grid",
       _const(round_div=False), ("round_div",), group="beam"),
    _F("-coherent", 0, None, "", "off", "add amplitudes of all sources coherently",
       _const(coherent=True), ("coherent",), group="beam"),

    # ---------------------------------------------------------- rotation/mosaic
    _F("-phi", 1, "float", "deg", "0", "starting spindle rotation",
       _set("phi0", conv=_deg), ("phi0",), group="rotation/mosaic", example=("10",)),
    _F("-osc", 1, "float", "deg", "auto (0)", "oscillation range",
       _set("osc", conv=_deg), ("osc",), group="rotation/mosaic", example=("0.1",)),
    _F("-phistep", 1, "float", "deg", "auto", "rotation step",
       _set("phistep", conv=_deg), ("phistep",), group="rotation/mosaic", example=("0.01",)),
    _F("-phisteps", 1, "int", "", "auto (1)", "number of rotation steps",
       _set("phisteps"), ("phisteps",), group="rotation/mosaic", example=("10",)),
    _F("-spindle_axis", 3, "vec3", "", "per convention (MOSFLM: 0 0 1)",
       "unit phi rotation axis (right-handed); selects the CUSTOM convention",
       _vec("spindle_vector", beam_convention="CUSTOM"), ("spindle_vector", "beam_convention"),
       group="rotation/mosaic", example=("1", "0", "0")),
    _F("-mosaic", 1, "float", "deg", "0 (no mosaicity)", "isotropic mosaic spread",
       _set("mosaic_spread", conv=_deg), ("mosaic_spread",),
       aliases=("-mosaici", "-mosaicity", "-mosaic_spr", "-mosaic_spread"),
       group="rotation/mosaic", example=("0.5",)),
    _F("-mosaic_dom", 1, "int", "", "auto", "number of mosaic domains",
       _set("mosaic_domains"), ("mosaic_domains",), aliases=("-mosaic_domains",),
       group="rotation/mosaic", example=("10",)),

    # ----------------------------------------------------------------- sampling
    _F("-oversample", 1, "int", "", "auto", "sub-pixels per pixel edge",
       _set("oversample"), ("oversample",), group="sampling", example=("2",)),
    _F("-oversample_thick", 0, None, "", "off", "recompute sensor absorption per sub-pixel",
       _const(oversample_thick=True), ("oversample_thick",), group="sampling"),
    _F("-oversample_polar", 0, None, "", "off", "recompute polarisation per sub-pixel",
       _const(oversample_polar=True), ("oversample_polar",), group="sampling"),
    _F("-oversample_omega", 0, None, "", "off", "recompute solid angle per sub-pixel",
       _const(oversample_omega=True), ("oversample_omega",), group="sampling"),
    _F("-roi", 4, "int", "pixels", "whole detector",
       "render only pixels xmin..xmax (fast), ymin..ymax (slow), inclusive",
       _setseq(("roi_xmin", "roi_xmax", "roi_ymin", "roi_ymax")),
       ("roi_xmin", "roi_xmax", "roi_ymin", "roi_ymax"), group="sampling",
       metavar="xmin xmax ymin ymax", example=("1", "2", "3", "4")),

    # ------------------------------------------------------------------- inputs
    _F("-hkl", 1, "str", "", "none (Fdump.bin if present)", "text file of h k l F",
       _set("hklfilename"), ("hklfilename",), group="inputs", example=("P1.hkl",)),
    _F("-mat", 1, "str", "", "none (use -cell)",
       "MOSFLM-style orientation matrix (reciprocal vectors scaled by 1/lambda)",
       _set("matfilename"), ("matfilename",), group="inputs", example=("A.mat",)),
    _F("-img", 1, "str", "", "none",
       "SMV image whose header sets detector size, pixel, distance, beam centre, wavelength, phi",
       _set("imginfilename"), ("imginfilename", "img_image"), group="inputs", example=("in.img",)),
    _F("-mask", 1, "str", "", "none",
       "SMV mask: pixels equal to 0 are skipped; its header is read like -img's",
       _set("maskfilename"), ("maskfilename", "mask_image"), group="inputs", example=("mask.img",)),
    _F("-sourcefile", 1, "str", "", "none", "sources: X Y Z (m), relative intensity, lambda (m) per line",
       _set("sourcefilename"), ("sourcefilename",), group="inputs", example=("sources.txt",)),
    _F("-stol", 1, "str", "", "none", "S(Q) table, first column sin(theta)/lambda in 1/Å (read; not used further)",
       _set("stolfilename", stol_file_mult=1e10), ("stolfilename", "stol_file_mult"),
       group="inputs", example=("water.stol",)),
    _F("-4stol", 1, "str", "", "none", "S(Q) table, first column 4*sin(theta)/lambda in 1/Å (read; not used further)",
       _set("stolfilename", stol_file_mult=1e10 / 4), ("stolfilename", "stol_file_mult"),
       group="inputs", example=("water.4stol",)),
    _F("-Q", 1, "str", "", "none", "S(Q) table, first column Q = 4*pi*sin(theta)/lambda in 1/Å (read; not used further)",
       _set("stolfilename", stol_file_mult=1e10 / math.pi / 4), ("stolfilename", "stol_file_mult"),
       group="inputs", example=("water.Q",)),

    # ------------------------------------------------------------------ outputs
    _F("-floatfile", 1, "str", "", "floatimage.bin", "raw 4-byte float image",
       _set("floatfilename"), ("floatfilename",), aliases=("-floatimage",), group="outputs",
       example=("out.bin",)),
    _F("-intfile", 1, "str", "", "intimage.img", "noiseless SMV image (scaled by -scale)",
       _set("intfilename"), ("intfilename",), aliases=("-intimage",), group="outputs",
       example=("out.img",)),
    _F("-pgmfile", 1, "str", "", "image.pgm", "8-bit PGM image (turns -nopgm off)",
       _set("pgmfilename", write_pgm=True), ("pgmfilename", "write_pgm"),
       aliases=("-pgmimage",), group="outputs", example=("out.pgm",)),
    _F("-noisefile", 1, "str", "", "noiseimage.img", "SMV image with Poisson noise (turns -nonoise off)",
       _set("noisefilename", calculate_noise=True), ("noisefilename", "calculate_noise"),
       aliases=("-noiseimage",), group="outputs", example=("noise.img",)),
    _F("-nopgm", 0, None, "", "off", "do not write the PGM file",
       _const(write_pgm=False), ("write_pgm",), group="outputs"),
    _F("-scale", 1, "float", "", "auto (max pixel -> 55000)", "scale factor for -intfile",
       _set("intfile_scale"), ("intfile_scale",), group="outputs", example=("2.5",)),
    _F("-pgmscale", 1, "float", "", "auto", "scale factor for -pgmfile (turns -nopgm off)",
       _set("pgm_scale", write_pgm=True), ("pgm_scale", "write_pgm"), group="outputs",
       example=("3",)),
    _F("-adc", 1, "float", "counts", "40", "offset added to -intfile and -noisefile pixels",
       _set("adc_offset"), ("adc_offset",), group="outputs", example=("10",)),
    _F("-stolout", 1, "str", "", "output.stol", "output name for an S(Q) table (accepted; nothing is written to it)",
       _set("stoloutfilename"), ("stoloutfilename",), group="outputs", example=("my.stol",)),
    _F("-printout", 0, None, "", "off", "print pixel values to the screen",
       _const(printout=True), ("printout",), group="outputs"),
    _F("-printout_pixel", 2, "int", "pixels", "all pixels",
       "limit -printout to one pixel: fast then slow index (also turns -printout on, as C)",
       _setseq(("printout_fpixel", "printout_spixel"), printout=True),
       ("printout_fpixel", "printout_spixel", "printout"), group="outputs",
       metavar="fpixel spixel", example=("3", "4")),
    _F("-trace_pixel", 2, "int", "pixels", "none",
       "print a TRACE of every quantity for one pixel: slow then fast index",
       _setseq(("trace_spixel", "trace_fpixel")), ("trace_spixel", "trace_fpixel"),
       aliases=("-dump_pixel",), group="outputs", metavar="spixel fpixel", example=("5", "6")),
    _F("-noprogress", 0, None, "", "off", "no progress meter",
       _const(progress_meter=False, noprogress=True), ("progress_meter", "noprogress"),
       group="outputs"),
    _F("-progress", 0, None, "", "on", "show the progress meter (on stderr, when it is a terminal)",
       _const(progress_meter=True, noprogress=False), ("progress_meter", "noprogress"),
       group="outputs"),

    # -------------------------------------------------- noise/background/random
    _F("-nonoise", 0, None, "", "off", "do not compute or write the noise image",
       _const(calculate_noise=False), ("calculate_noise",), group="noise/background/random"),
    _F("-seed", 1, "int", "", "current time", "random seed of the Poisson noise (stored negated)",
       _set("seed", conv=_seed), ("seed",), group="noise/background/random", example=("7",)),
    _F("-mosaic_seed", 1, "int", "", "12345678", "random seed of the mosaic domains (stored negated)",
       _set("mosaic_seed", conv=_seed), ("mosaic_seed",), group="noise/background/random",
       example=("5",)),
    _F("-misset_seed", 1, "int", "", "same as -seed", "random seed of -misset random (stored negated)",
       _set("misset_seed", conv=_seed), ("misset_seed",), group="noise/background/random",
       example=("3",)),
    _F("-water", 1, "float", "um", "0", "thickness of water around the crystal (background)",
       _set("water_size", conv=lambda v: v / 1e6), ("water_size",),
       group="noise/background/random", example=("100",)),

    # ------------------------------------------------------------ nbnumba extras
    _F("-c_parity", 0, None, "", "off",
       "reproduce nanoBragg.c quirks: strstr flag matching, -pix0_vector_mm in metres, ...",
       _const(c_parity=True), ("c_parity",), group="nbnumba extras"),
    _F("-precision", 1, "choice", "", "double", "floating-point precision of the kernels",
       _set("precision"), ("precision",), group="nbnumba extras", choices=("double", "single"),
       example=("single",)),
    _F("-threads", 1, "int", "", "all cores", "number of CPU threads",
       _set("threads"), ("threads",), group="nbnumba extras", example=("4",), minimum=1),
    _F("-device", 1, "choice", "", "cpu", "run the kernels on the CPU or an NVIDIA GPU",
       _set("device"), ("device",), group="nbnumba extras", choices=("cpu", "cuda"),
       example=("cuda",)),
    _F("-max_memory", 1, "float", "MB", "available memory",
       "refuse runs estimated to need more memory than this (docs/reliability.md)",
       _set("max_memory", conv=lambda v: v * 1e6), ("max_memory",), group="nbnumba extras",
       example=("4000",)),
    _F("-h", 0, None, "", "", "print this help and exit",
       _noop, (), aliases=("-help", "--help"), group="nbnumba extras"),
)

_BY_SPELLING: Dict[str, FlagSpec] = {}
for _s in FLAGS:
    for _n in _s.spellings:
        assert _n not in _BY_SPELLING, f"duplicate flag spelling {_n}"
        _BY_SPELLING[_n] = _s
_BY_NAME: Dict[str, FlagSpec] = {s.name: s for s in FLAGS}
_EXTRAS = {n: s for n, s in _BY_SPELLING.items() if s.group == "nbnumba extras"}


def flag_names() -> frozenset:
    """Every accepted flag spelling (canonical names, synonyms and nbnumba extras)."""
    return frozenset(_BY_SPELLING)


def spec_for(flag: str) -> FlagSpec:
    """The FlagSpec for an exact spelling (KeyError if there is none)."""
    return _BY_SPELLING[flag]


# ---------------------------------------------------------------------------
# strict value parsing
# ---------------------------------------------------------------------------

# [0-9], not \d: \d also matches fullwidth and other Unicode digits ('１００')
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
INT_MAX = 2**31 - 1         # C stores these values in an int (or long for seeds)


def _is_number(s: str) -> bool:
    """True for a plain decimal number ('-5', '1e-3', '.5'): such an argument is a value."""
    return bool(_FLOAT_RE.match(s))


def _bad(flag: str, spec: FlagSpec, got: str) -> UsageError:
    return UsageError(f"{flag}: expected {spec.expect}, got {got!r}")


def _to_float(flag: str, spec: FlagSpec, s: str) -> float:
    if not _FLOAT_RE.match(s):
        raise _bad(flag, spec, s)
    v = float(s)
    if not math.isfinite(v):
        raise UsageError(f"{flag}: value {s!r} is out of range")
    return v


def _to_int(flag: str, spec: FlagSpec, s: str) -> int:
    if not _INT_RE.match(s):
        raise _bad(flag, spec, s)
    v = int(s)
    if abs(v) > INT_MAX:
        raise UsageError(f"{flag}: value {s!r} is out of range")
    if spec.minimum is not None and v < spec.minimum:
        raise _bad(flag, spec, s)
    return v


def _to_str(flag: str, spec: FlagSpec, s: str) -> str:
    # nanoBragg.c would take '-nonoise' as a file name *and* examine it as an
    # option; a value that looks like a flag is almost certainly a mistake.
    if s.startswith("-") or s == "":
        raise UsageError(f"{flag}: expected {spec.expect}, got {s!r}")
    return s


def _convert(flag: str, spec: FlagSpec, raw: Sequence[str]) -> tuple:
    """Parse the raw value strings of ``spec`` (typed as ``flag``) strictly."""
    k = spec.kind
    if k in ("float", "vec3"):
        return tuple(_to_float(flag, spec, s) for s in raw)
    if k == "int":
        return tuple(_to_int(flag, spec, s) for s in raw)
    if k == "str":
        return (_to_str(flag, spec, raw[0]),)
    if k == "choice":
        if raw[0] not in spec.choices:
            raise _bad(flag, spec, raw[0])
        return (raw[0],)
    if k == "misset":
        if "rand" in raw[0]:               # C: strstr(argv[i+1], "rand")
            return ("random",)
        return tuple(_to_float(flag, spec, s) for s in raw)
    if k == "abs":
        if raw[0].lower() in ("inf", "+inf", "infinity", "+infinity"):
            return (math.inf,)
        return (_to_float(flag, spec, raw[0]),)
    return ()


# ---------------------------------------------------------------------------
# tokenised command line
# ---------------------------------------------------------------------------

@dataclass
class _Op:
    """One application of a flag (or of one C block) to the Config."""

    flag: str                 # the argument as typed
    name: str                 # canonical flag name (or C block label)
    apply: Apply
    values: tuple


@dataclass
class _Parsed:
    ops: List[_Op]
    maskfile: Optional[str]
    imgfile: Optional[str]


def _unknown(arg: str) -> UsageError:
    # (flags are case-sensitive, as nanoBragg.c's strcmp: -DISTANCE had no hint)
    hint = did_you_mean(arg, _BY_SPELLING)
    return UsageError(f"unknown flag {arg!r}{hint}; see -h for the list of flags")


def _stray(arg: str) -> UsageError:
    return UsageError(f"unexpected argument {arg!r}: not a flag and not a value of the flag before it")


def _missing(flag: str, spec: FlagSpec) -> UsageError:
    return UsageError(f"{flag}: expected {spec.expect}, but the command line ends")


def _take(flag: str, spec: FlagSpec, argv: Sequence[str], i: int) -> Tuple[tuple, int]:
    """Default-mode values of the flag at ``argv[i]``: (converted values, count consumed)."""
    n = spec.nargs
    if spec.kind == "misset" and i + 1 < len(argv) and "rand" in argv[i + 1]:
        n = 1
    raw = list(argv[i + 1:i + 1 + n])
    if len(raw) < n:
        if raw:
            # report the malformed value first if there is one (e.g. '-cell 1 2 x')
            _convert(flag, spec, raw + ["0"] * (n - len(raw)))
        raise _missing(flag, spec)
    return _convert(flag, spec, raw), n


def _tokenize_default(argv: Sequence[str]) -> _Parsed:
    ops: List[_Op] = []
    mask = img = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or _is_number(arg):
            raise _stray(arg)
        spec = _BY_SPELLING.get(arg)
        if spec is None:
            raise _unknown(arg)
        vals, used = _take(arg, spec, argv, i)
        ops.append(_Op(arg, spec.name, spec.apply, vals))
        if spec.name == "-mask":
            mask = vals[0]
        elif spec.name == "-img":
            img = vals[0]
        i += 1 + used
    return _Parsed(ops, mask, img)


# ---------------------------------------------------------------------------
# c_parity: the nanoBragg.c option blocks, in C order
# ---------------------------------------------------------------------------

Runner = Callable[[str, Sequence[str], int], Tuple[List[_Op], range, bool]]


@dataclass(frozen=True)
class _CBlock:
    label: str                         # the C test, for docs and messages
    test: Callable[[str], bool]        # does argv[i] trigger this block?
    need: int                          # C guard: argc > i+need (values that must follow)
    spec: Optional[str] = None         # FlagSpec whose apply/kind is used
    run: Optional[Runner] = None       # custom block body
    stop: bool = False                 # the block ends with `continue`


def _has(*pats: str) -> Callable[[str], bool]:
    return lambda a: any(p in a for p in pats)


def _has_len(pat: str, n: int) -> Callable[[str], bool]:
    return lambda a: pat in a and len(a) == n


def _eq(word: str) -> Callable[[str], bool]:
    return lambda a: a == word


def _spec_block(arg: str, argv: Sequence[str], i: int, spec: FlagSpec) -> Tuple[List[_Op], range]:
    raw = argv[i + 1:i + 1 + spec.nargs]
    vals = _convert(arg, spec, raw)
    return [_Op(arg, spec.name, spec.apply, vals)], range(i + 1, i + 1 + spec.nargs)


def _run_cell(arg, argv, i):
    """C: set user_cell, then read up to 6 values, stopping at the end of argv or
    at the first value that starts with '-' (a partial cell keeps zeros)."""
    spec = _BY_NAME["-cell"]
    raw = []
    for j in range(i + 1, min(i + 7, len(argv))):
        if argv[j].startswith("-"):
            break
        raw.append(argv[j])
    vals = tuple(_to_float(arg, spec, s) for s in raw)
    return [_Op(arg, "-cell", _apply_cell, vals)], range(i + 1, i + 1 + len(raw)), False


def _run_misset(arg, argv, i):
    """C: two blocks on strcmp(argv[i], "-misset"): 'rand' in the next argument ->
    random orientation and `continue`; otherwise, if 3 values follow, the angles."""
    spec = _BY_NAME["-misset"]
    if "rand" in argv[i + 1]:
        return [_Op(arg, "-misset", _apply_misset, ("random",))], range(i + 1, i + 2), True
    if i + 3 >= len(argv):
        raise _missing(arg, spec)
    vals = tuple(_to_float(arg, spec, s) for s in argv[i + 1:i + 4])
    return [_Op(arg, "-misset", _apply_misset, vals)], range(i + 1, i + 4), False


def _run_pix0(arg, argv, i):
    """C's -pix0_vector block also catches -pix0_vector_mm and stores the numbers
    unconverted, i.e. as metres (NANO-C-BUG-001)."""
    spec = _BY_NAME["-pix0_vector"]
    vals = _convert(arg, spec, argv[i + 1:i + 4])
    return [_Op(arg, "-pix0_vector", _apply_pix0_m, vals)], range(i + 1, i + 4), False


def _run_detector_abs(arg, argv, i):
    """C: strstr(value, "inf") or atof(value) == 0 -> no absorption."""
    spec = _BY_NAME["-detector_abs"]
    v = argv[i + 1]
    val = math.inf if "inf" in v else _to_float(arg, spec, v)
    return [_Op(arg, "-detector_abs", _apply_detector_abs, (val,))], range(i + 1, i + 2), False


def _B(label, test, need, spec=None, run=None, stop=False) -> _CBlock:
    return _CBlock(label, test, need, spec, run, stop)


# The order, patterns, strlen/strcmp guards, argc guards and `continue`s below
# follow nanoBragg.c's option loop block by block.  Blocks written with
# `argc >= (i+1)` in C (always true, so a flag at the very end reads argv[argc],
# a NULL pointer) are given need=1: we report the missing value instead.
_C_BLOCKS: Tuple[_CBlock, ...] = (
    _B('strstr "-Na"', _has("-Na"), 1, "-Na", stop=True),
    _B('strstr "-Nb"', _has("-Nb"), 1, "-Nb", stop=True),
    _B('strstr "-Nc"', _has("-Nc"), 1, "-Nc", stop=True),
    _B('strcmp "-N"', _eq("-N"), 1, "-N", stop=True),
    _B('strstr "-cell"', _has("-cell"), 1, "-cell", run=_run_cell),
    _B('strcmp "-misset"', _eq("-misset"), 1, "-misset", run=_run_misset),
    _B('strstr "-samplesize"|"-sample_size"', _has("-samplesize", "-sample_size"), 1, "-samplesize"),
    _B('strstr "-sample_thick"|"-sample_x"', _has("-sample_thick", "-sample_x"), 1, "-sample_thick"),
    _B('strstr "-sample_width"|"-sample_y"|"-width"', _has("-sample_width", "-sample_y", "-width"), 1,
       "-sample_width"),
    _B('strstr "-sample_heigh"|"-sample_z"|"-heigh"', _has("-sample_heigh", "-sample_z", "-heigh"), 1,
       "-sample_height"),
    _B('strstr "-xtalsize"|"-xtal_size"', _has("-xtalsize", "-xtal_size"), 1, "-xtalsize"),
    _B('strstr "-xtal_thick"|"-xtal_x"', _has("-xtal_thick", "-xtal_x"), 1, "-xtal_thick"),
    _B('strstr "-xtal_width"|"-xtal_y"|"-width"', _has("-xtal_width", "-xtal_y", "-width"), 1,
       "-xtal_width"),
    _B('strstr "-xtal_heigh"|"-xtal_z"|"-heigh"', _has("-xtal_heigh", "-xtal_z", "-heigh"), 1,
       "-xtal_height"),
    _B('strstr "-density"|"-sample_den"', _has("-density", "-sample_den"), 1, "-density"),
    _B('strcmp "-MW" or strstr "-molec"', lambda a: a == "-MW" or "-molec" in a, 1, "-MW"),
    _B('strstr "-Xbeam"', _has("-Xbeam"), 1, "-Xbeam"),
    _B('strstr "-Ybeam"', _has("-Ybeam"), 1, "-Ybeam"),
    _B('strstr "-Xclose"', _has("-Xclose"), 1, "-Xclose"),
    _B('strstr "-Yclose"', _has("-Yclose"), 1, "-Yclose"),
    _B('strstr "-ORGX"', _has("-ORGX"), 1, "-ORGX"),
    _B('strstr "-ORGY"', _has("-ORGY"), 1, "-ORGY"),
    _B('strstr "-pivot"', _has("-pivot"), 1, "-pivot"),
    _B('strstr "-mosflm"', _has("-mosflm"), 0, "-mosflm"),
    _B('strstr "-xds"', _has("-xds"), 0, "-xds"),
    _B('strstr "-adxv"', _has("-adxv"), 0, "-adxv"),
    _B('strstr "-denzo"', _has("-denzo"), 0, "-denzo"),
    _B('strstr "-dials"', _has("-dials"), 0, "-dials"),
    _B('strstr "-fdet_vector"', _has("-fdet_vector"), 3, "-fdet_vector"),
    _B('strstr "-sdet_vector"', _has("-sdet_vector"), 3, "-sdet_vector"),
    _B('strstr "-odet_vector"', _has("-odet_vector"), 3, "-odet_vector"),
    _B('strstr "-beam_vector"', _has("-beam_vector"), 3, "-beam_vector"),
    _B('strstr "-polar_vector"', _has("-polar_vector"), 3, "-polar_vector"),
    _B('strstr "-spindle_axis"', _has("-spindle_axis"), 3, "-spindle_axis"),
    _B('strstr "-twotheta_axis"', _has("-twotheta_axis"), 3, "-twotheta_axis"),
    _B('strstr "-pix0_vector"', _has("-pix0_vector"), 3, "-pix0_vector", run=_run_pix0),
    _B('strstr "-distance"', _has("-distance"), 1, "-distance"),
    _B('strstr "-close_distance"', _has("-close_distance"), 1, "-close_distance"),
    _B('strstr "-detector_abs"', _has("-detector_abs"), 1, "-detector_abs", run=_run_detector_abs),
    _B('strstr "-detector_thick" && strlen==15', _has_len("-detector_thick", 15), 1, "-detector_thick"),
    _B('strstr "-detector_thicksteps"', _has("-detector_thicksteps"), 1, "-detector_thicksteps"),
    _B('strstr "-thicksteps"', _has("-thicksteps"), 1, "-detector_thicksteps"),
    _B('strstr "-twotheta"', _has("-twotheta"), 1, "-twotheta"),
    _B('strstr "-detector_rotx"', _has("-detector_rotx"), 1, "-detector_rotx"),
    _B('strstr "-detector_roty"', _has("-detector_roty"), 1, "-detector_roty"),
    _B('strstr "-detector_rotz"', _has("-detector_rotz"), 1, "-detector_rotz"),
    _B('strstr "-detsize" && strlen==8', _has_len("-detsize", 8), 1, "-detsize"),
    _B('strstr "-detsize_f"', _has("-detsize_f"), 1, "-detsize_f"),
    _B('strstr "-detsize_s"', _has("-detsize_s"), 1, "-detsize_s"),
    _B('strstr "-detpixels" && strlen==10', _has_len("-detpixels", 10), 1, "-detpixels"),
    _B('strstr "-detpixels_f"|"-detpixels_x"', _has("-detpixels_f", "-detpixels_x"), 1, "-detpixels_f"),
    _B('strstr "-detpixels_s"|"-detpixels_y"', _has("-detpixels_s", "-detpixels_y"), 1, "-detpixels_s"),
    # C guards -curved_det with argc > i+1 although it reads no value
    _B('strstr "-curved_det"', _has("-curved_det"), 1, "-curved_det"),
    _B('strstr "-pixel"', _has("-pixel"), 1, "-pixel"),
    _B('strstr "-point_pixel"', _has("-point_pixel"), 0, "-point_pixel"),
    _B('strstr "-polar" && strlen==6', _has_len("-polar", 6), 1, "-polar"),
    _B('strstr "-nopolar"', _has("-nopolar"), 0, "-nopolar"),
    _B('strstr "-oversample_thick"', _has("-oversample_thick"), 0, "-oversample_thick", stop=True),
    _B('strstr "-oversample_polar"', _has("-oversample_polar"), 0, "-oversample_polar", stop=True),
    _B('strstr "-oversample_omega"', _has("-oversample_omega"), 0, "-oversample_omega", stop=True),
    _B('strstr "-oversample"', _has("-oversample"), 1, "-oversample"),
    _B('strstr "-roi"', _has("-roi"), 4, "-roi"),
    _B('strstr "-lambda"|"-wave"', _has("-lambda", "-wave"), 1, "-lambda"),
    _B('strstr "-energy"', _has("-energy"), 1, "-energy"),
    _B('strstr "-fluence"', _has("-fluence"), 1, "-fluence"),
    _B('strstr "-flux"', _has("-flux"), 1, "-flux"),
    _B('strstr "-exposure"', _has("-exposure"), 1, "-exposure"),
    _B('strstr "-beamsize"', _has("-beamsize"), 1, "-beamsize"),
    _B('(strstr "-mosaic" && strlen==7) | strstr "-mosaici"|"-mosaic_spr"',
       lambda a: ("-mosaic" in a and len(a) == 7) or "-mosaici" in a or "-mosaic_spr" in a, 1, "-mosaic"),
    _B('strstr "-mosaic_dom"', _has("-mosaic_dom"), 1, "-mosaic_dom"),
    _B('strstr "-dispersion"', _has("-dispersion"), 1, "-dispersion"),
    _B('strstr "-dispsteps"', _has("-dispsteps"), 1, "-dispsteps"),
    _B('strstr "-divergence"', _has("-divergence"), 1, "-divergence"),
    _B('strstr "-hdivrange"', _has("-hdivrange"), 1, "-hdivrange"),
    _B('strstr "-vdivrange"', _has("-vdivrange"), 1, "-vdivrange"),
    _B('strstr "-hdivstep" && strlen==9', _has_len("-hdivstep", 9), 1, "-hdivstep"),
    _B('strstr "-hdivsteps"', _has("-hdivsteps"), 1, "-hdivsteps"),
    _B('strstr "-vdivstep" && strlen==9', _has_len("-vdivstep", 9), 1, "-vdivstep"),
    _B('strstr "-vdivsteps"', _has("-vdivsteps"), 1, "-vdivsteps"),
    _B('strstr "-divsteps"', _has("-divsteps"), 1, "-divsteps"),
    _B('strstr "-round_div"', _has("-round_div"), 0, "-round_div"),
    _B('strstr "-square_div"', _has("-square_div"), 0, "-square_div"),
    _B('strstr "-adc"', _has("-adc"), 1, "-adc"),
    _B('strstr "-phi" && strlen==4', _has_len("-phi", 4), 1, "-phi"),
    _B('strstr "-osc"', _has("-osc"), 1, "-osc"),
    _B('strstr "-phistep" && strlen==8', _has_len("-phistep", 8), 1, "-phistep"),
    _B('strstr "-phisteps"', _has("-phisteps"), 1, "-phisteps"),
    _B('strstr "-dmin"', _has("-dmin"), 1, "-dmin"),
    _B('strstr "-mat"', _has("-mat"), 1, "-mat"),
    _B('strstr "-hkl"', _has("-hkl"), 1, "-hkl"),
    _B('strstr "-default_F"', _has("-default_F"), 1, "-default_F"),
    _B('strstr "-img"', _has("-img"), 1, "-img"),
    _B('strstr "-stolout" && strlen>7', lambda a: "-stolout" in a and len(a) > 7, 1, "-stolout"),
    _B('strstr "-stol" && strlen==5', _has_len("-stol", 5), 1, "-stol"),
    _B('strstr "-4stol" && strlen==6', _has_len("-4stol", 6), 1, "-4stol"),
    _B('strstr "-Q" && strlen==2', _has_len("-Q", 2), 1, "-Q"),
    _B('strstr "-sourcefile"', _has("-sourcefile"), 1, "-sourcefile"),
    _B('strstr "-floatfile"|"-floatimage"', _has("-floatfile", "-floatimage"), 1, "-floatfile"),
    _B('strstr "-intfile"|"-intimage"', _has("-intfile", "-intimage"), 1, "-intfile"),
    _B('strstr "-pgmfile"|"-pgmimage"', _has("-pgmfile", "-pgmimage"), 1, "-pgmfile"),
    _B('strstr "-noisefile"|"-noiseimage"', _has("-noisefile", "-noiseimage"), 1, "-noisefile"),
    _B('strstr "-nonoise"', _has("-nonoise"), 0, "-nonoise"),
    _B('strstr "-nopgm"', _has("-nopgm"), 0, "-nopgm"),
    _B('strstr "-scale"', _has("-scale"), 1, "-scale"),
    _B('strstr "-pgmscale"', _has("-pgmscale"), 1, "-pgmscale"),
    _B('strstr "-coherent"', _has("-coherent"), 0, "-coherent"),
    _B('strstr "-printout"', _has("-printout"), 0, "-printout"),
    _B('strstr "-noprogress"', _has("-noprogress"), 0, "-noprogress"),
    _B('strstr "-progress"', _has("-progress"), 0, "-progress"),
    _B('strstr "-interpolate"', _has("-interpolate"), 0, "-interpolate"),
    _B('strstr "-nointerpolate"', _has("-nointerpolate"), 0, "-nointerpolate"),
    _B('strstr "-round_xtal"', _has("-round_xtal"), 0, "-round_xtal"),
    _B('strstr "-square_xtal"', _has("-square_xtal"), 0, "-square_xtal"),
    _B('strstr "-gauss_xtal"', _has("-gauss_xtal"), 0, "-gauss_xtal"),
    _B('strstr "-binary_spots"|"-tophat_spots"', _has("-binary_spots", "-tophat_spots"), 0,
       "-tophat_spots"),
    _B('strstr "-fudge"', _has("-fudge"), 1, "-fudge"),
    # C sets only printout_fpixel/spixel here; -printout is switched on by the
    # "-printout" block above matching the same argument.
    _B('strstr "-printout_pixel"', _has("-printout_pixel"), 2, "-printout_pixel"),
    _B('strstr "-trace_pixel"|"-dump_pixel"', _has("-trace_pixel", "-dump_pixel"), 2, "-trace_pixel"),
    _B('strstr "-seed"', _has("-seed"), 1, "-seed"),
    _B('strstr "-mosaic_seed"', _has("-mosaic_seed"), 1, "-mosaic_seed"),
    _B('strstr "-misset_seed"', _has("-misset_seed"), 1, "-misset_seed"),
    _B('strstr "-water"', _has("-water"), 1, "-water"),
)

# The first pass over argv (before the option loop) that only looks for the
# SMV files; the same strstr semantics and argc > i+1 guard.
_C_FIRST_PASS = (("-img", "-img"), ("-mask", "-mask"))


def c_blocks_matching(arg: str) -> List[str]:
    """Labels of the nanoBragg.c option blocks that argument ``arg`` triggers, in
    C order, honouring `continue` (argc guards ignored; first-pass -img/-mask included)."""
    out = [f'first pass: strstr "{p}"' for p, _ in _C_FIRST_PASS if p in arg]
    for blk in _C_BLOCKS:
        if blk.test(arg):
            out.append(blk.label)
            if blk.stop:
                break
    return out


def _tokenize_c(argv: Sequence[str]) -> _Parsed:
    n = len(argv)
    ops: List[_Op] = []
    consumed: set = set()
    mask = img = None

    # C pass 1: -img / -mask file names (last occurrence wins)
    for i, arg in enumerate(argv):
        if not arg.startswith("-") or _is_number(arg) or arg in _EXTRAS:
            continue
        for pat, name in _C_FIRST_PASS:
            if pat in arg and i + 1 < n:
                val = _to_str(arg, _BY_NAME[name], argv[i + 1])
                consumed.add(i + 1)
                if name == "-mask":
                    mask = val             # Config.maskfilename is set by the ingestion
                else:
                    img = val

    # C pass 2: the option loop
    for i, arg in enumerate(argv):
        if i in consumed and not arg.startswith("-"):
            continue
        if not arg.startswith("-") or _is_number(arg):
            continue                       # a value; checked for strays below
        extra = _EXTRAS.get(arg)
        if extra is not None:              # nbnumba's own flags: exact spelling
            vals, used = _take(arg, extra, argv, i)
            ops.append(_Op(arg, extra.name, extra.apply, vals))
            consumed.update(range(i + 1, i + 1 + used))
            continue
        matched = False
        for pat, name in _C_FIRST_PASS:    # -img/-mask were taken by pass 1
            if pat in arg:
                if i + 1 >= n:
                    raise _missing(arg, _BY_NAME[name])
                matched = True
        for blk in _C_BLOCKS:
            if not blk.test(arg):
                continue
            if i + blk.need >= n:          # C's argc > i+need guard fails
                if blk.spec == "-curved_det":
                    raise UsageError(
                        f"{arg}: nanoBragg.c ignores this switch when it is the last argument "
                        "(c_parity mode); move it before another argument")
                raise _missing(arg, _BY_NAME[blk.spec])
            matched = True
            if blk.run is not None:
                new_ops, used, stop = blk.run(arg, argv, i)
            else:
                new_ops, used = _spec_block(arg, argv, i, _BY_NAME[blk.spec])
                stop = False
            ops.extend(new_ops)
            consumed.update(used)
            if stop or blk.stop:
                break
        if not matched:
            raise _unknown(arg)

    for i, arg in enumerate(argv):
        if i in consumed:
            continue
        if arg.startswith("-") and not _is_number(arg):
            continue                       # examined as a flag above
        raise _stray(arg)
    return _Parsed(ops, mask, img)


# ---------------------------------------------------------------------------
# SMV header ingestion (-mask, then -img), before any flag is applied
# ---------------------------------------------------------------------------

def _ingest_smv(cfg: Config, path: str, is_mask: bool, c_like: bool, cwd: Optional[str]) -> None:
    """Apply an SMV header like nanoBragg.c does for -mask/-img, and keep the pixels.

    Header units: PIXEL_SIZE, DISTANCE, CLOSE_DISTANCE, BEAM_CENTER_X/Y in mm;
    WAVELENGTH in Å; ORGX/ORGY in pixels; PHI, OSC_RANGE in degrees.

    Key lookup: in c_parity mode nanoBragg's ValueOf rules (last occurrence of
    the key as a substring anywhere in the header): on nanoBragg's own headers
    DISTANCE then reads CLOSE_DISTANCE, and ORGX reads XDS_ORGX.  In default
    mode keys are exact, except that ORGX/ORGY fall back to XDS_ORGX/XDS_ORGY
    (the spelling nanoBragg writes), so its images still round-trip.
    """
    from nbnumba.io.smv import header_value, read_smv   # raises InputFileError

    full = path if (cwd is None or os.path.isabs(path)) else os.path.join(cwd, path)
    header, data = read_smv(full, c_like=c_like)

    def value(key: str) -> float:
        if c_like:
            return header_value(header, key)
        v = header_value(header, key, exact=True)
        if math.isnan(v) and key in ("ORGX", "ORGY"):
            v = header_value(header, "XDS_" + key, exact=True)
        return v

    spixels, fpixels = data.shape
    cfg.fpixels = int(fpixels)
    cfg.spixels = int(spixels)
    v = value("PIXEL_SIZE")
    if not math.isnan(v):
        cfg.pixel_size = v / 1000.0
    cfg.detsize_f = cfg.pixel_size * cfg.fpixels
    cfg.detsize_s = cfg.pixel_size * cfg.spixels
    v = value("DISTANCE")
    if not math.isnan(v):
        cfg.distance = v / 1000.0
    v = value("CLOSE_DISTANCE")
    if not math.isnan(v):
        cfg.close_distance = v / 1000.0
    v = value("WAVELENGTH")
    if not math.isnan(v):
        cfg.lambda0 = v / 1e10
    v = value("BEAM_CENTER_X")
    if not math.isnan(v):
        cfg.Xbeam = v / 1000.0
    v = value("BEAM_CENTER_Y")
    if not math.isnan(v):
        # C: the mask header's Y centre is measured from the other edge
        cfg.Ybeam = (cfg.detsize_s - v / 1000.0) if is_mask else v / 1000.0
    v = value("ORGX")
    if not math.isnan(v):
        cfg.ORGX = v
    v = value("ORGY")
    if not math.isnan(v):
        cfg.ORGY = v
    v = value("PHI")
    if not math.isnan(v):
        cfg.phi0 = v / RTD
    v = value("OSC_RANGE")
    if not math.isnan(v):
        cfg.osc = v / RTD
    # TWOTHETA: nanoBragg.c reads it into a variable `twotheta` that nothing
    # uses afterwards (detector_twotheta is untouched), so it is ignored here.
    # Header values also never change the detector pivot (only flags do).
    if is_mask:
        cfg.maskfilename = path
        cfg.mask_image = np.asarray(data, dtype=np.uint16)
    else:
        cfg.imginfilename = path
        cfg.img_image = np.asarray(data).astype(np.float32)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------

def parse_argv(argv: Sequence[str], cwd: Optional[str] = None) -> Config:
    """Parse nanoBragg command-line arguments (without the program name) into a Config.

    ``cwd``: directory against which relative -img/-mask paths are read (also
    stored as ``Config.workdir``); None means the process's working directory.

    Raises :class:`UsageError` (bad flag/value), :class:`InputFileError`
    (unreadable -img/-mask) or :class:`HelpRequested` (-h, -help, --help).
    """
    argv = [a if isinstance(a, str) else (os.fspath(a) if hasattr(a, "__fspath__") else str(a))
            for a in argv]
    if any(a in _HELP_SPELLINGS for a in argv):
        raise HelpRequested(usage_text())
    c_parity = "-c_parity" in argv
    parsed = _tokenize_c(argv) if c_parity else _tokenize_default(argv)

    cfg = Config()
    if cwd is not None:
        cfg.workdir = os.fspath(cwd)
    # nanoBragg.c reads the mask first, then the image, before the option loop
    if parsed.maskfile is not None:
        _ingest_smv(cfg, parsed.maskfile, True, c_parity, cwd)
    if parsed.imgfile is not None:
        _ingest_smv(cfg, parsed.imgfile, False, c_parity, cwd)
    for op in parsed.ops:                  # command-line order: later wins, as in C
        op.apply(cfg, op.values)
    cfg.c_parity = c_parity
    if not c_parity:
        _refuse_negative_rotation(parsed)
        cfg.c_reads_flags_otherwise = _c_reads_otherwise(argv, parsed)
        cfg.sample_pivot_flags = tuple(dict.fromkeys(
            op.name for op in parsed.ops if op.name in ("-ORGX", "-ORGY", "-Xclose", "-Yclose")))
    return cfg


def _refuse_negative_rotation(parsed: _Parsed) -> None:
    """nanoBragg.c keeps -1 for "not given" in its oscillation and step, and
    takes any -osc < 0 or -phistep <= 0 as not given: `-osc -1` renders a still
    at -phi, `-osc -1 -phisteps 10` a sweep of +1 deg (docs/quirks.md #46).  The
    default mode refuses such a value; -c_parity reads it the C's way."""
    for op in parsed.ops:
        if op.name in ("-osc", "-phistep") and op.values and (
                op.values[0] < 0.0 or (op.name == "-phistep" and op.values[0] == 0.0)):
            hint = ("give -phisteps for a count" if op.values[0] == 0.0 else
                    "to turn the other way, start at -phi and sweep forwards, or reverse "
                    "-spindle_axis")
            raise UsageError("%s %g: %s (%s; nanoBragg.c reads it as not given, and "
                             "-c_parity does too)"
                             % (op.flag, op.values[0], "the oscillation must be >= 0"
                                if op.name == "-osc" else "the step must be > 0", hint))


def _settings(parsed: _Parsed) -> Config:
    """The settings ``parsed``'s options give a fresh Config (-mask and -img
    aside: the C reading takes them in a pass of their own, _Parsed's names)."""
    cfg = Config()
    for op in parsed.ops:
        if op.name not in ("-mask", "-img"):
            op.apply(cfg, op.values)
    return cfg


def _c_reads_otherwise(argv: Sequence[str], parsed: _Parsed) -> bool:
    """Would nanoBragg.c's substring matching (the -c_parity reading, without
    -c_parity itself) give these flags other settings than the exact reading
    ``parsed`` did, or refuse one that it drops (-curved_det last)?  Quirk #5,
    for c_differences' note; the flags alone decide it."""
    try:
        c = _tokenize_c(argv)
    except NBError:
        return True
    if (c.maskfile, c.imgfile) != (parsed.maskfile, parsed.imgfile):
        return True
    try:
        return bool(differing_fields(_settings(parsed), _settings(c)))
    except NBError:
        return True


def short_usage(prog: str = "nbnumba") -> str:
    """One-line hint printed with usage errors; ``prog`` is the command as the user ran it."""
    return ("usage: %s -cell a b c al be ga | -mat A.mat  "
            "-hkl F.hkl|-default_F F  [options]; -h lists every flag" % prog)


def _help_width() -> int:
    # the terminal's width (COLUMNS when set, 80 when not a terminal), at least 60
    import shutil
    return max(60, shutil.get_terminal_size((80, 24)).columns)


def usage_text(prog: str = "nbnumba", width: int = 0) -> str:
    """The -h text: every flag, its synonyms, values/units, default and help, by group,
    wrapped to ``width`` columns (default: the terminal's)."""
    import textwrap
    width = width or _help_width()
    col = 40 if width >= 90 else 24
    lines = textwrap.wrap(
        "usage: %s -cell a b c al be ga | -mat A.mat  -hkl F.hkl | -default_F F  [options]" % prog,
        width, subsequent_indent="         ", break_on_hyphens=False)
    lines += [
        "",
        "nbnumba: a Python port of nanoBragg (perfect-lattice nanocrystal diffraction).",
        "Flags match exactly (with -c_parity: nanoBragg.c's substring matching).",
        "Lengths in mm unless noted, angles in degrees, wavelength in Å, divergence in mrad.",
        "The conventions fix the pivot (MOSFLM, DENZO, ADXV: BEAM; XDS, DIALS: SAMPLE); "
        "the pivot a flag selects is kept only under the CUSTOM convention (set by a vector flag).",
    ]
    lines = lines[:1] + [w for l in lines[1:] for w in (textwrap.wrap(l, width) or [""])]
    for group in GROUPS:
        lines.append("")
        lines.append(f"{group}:")
        for s in FLAGS:
            if s.group != group:
                continue
            names = "|".join(s.spellings)
            left = f"  {names} {s.metavar}".rstrip()
            right = s.help
            if s.default:
                right += f" [default: {s.default}]"
            body = textwrap.wrap(right, width - col, break_on_hyphens=False) or [""]
            if len(left) > col - 2:
                lines += textwrap.wrap(left, width, subsequent_indent="      ", break_on_hyphens=False)
                lines += [" " * col + b for b in body]
            else:
                lines.append(f"{left:<{col}}{body[0]}")
                lines += [" " * col + b for b in body[1:]]
    lines += ["", "whole-program modes (instead of flags):"]
    for left, right in _PROGRAM_MODE_HELP:
        body = textwrap.wrap(right, width - col, break_on_hyphens=False)
        if len(left) > col - 2:
            lines += ["  " + left] + [" " * col + b for b in body]
        else:
            lines.append(f"{'  ' + left:<{col}}{body[0]}")
            lines += [" " * col + b for b in body[1:]]
    return "\n".join(lines) + "\n"


_PROGRAM_MODE_HELP = (
    ("--warmup", "compile the image kernels into numba's on-disk cache and build the start-up "
     "library, which lets later runs start without loading numba (once per install; not the "
     "trace; NBNUMBA_AOT=0 turns the library off)"),
    ("--batch FILE [--workers N] [--threads N]",
     "run one command line per line of FILE in one process"),
    ("--serve [start|run|stop|status] [--idle-timeout S]",
     "keep a warm process that runs this installation's later commands (a 256x256 run "
     "in about 0.1 s instead of 0.2 s; NBNUMBA_SERVER=0 bypasses it)"),
    ("--version", "print nbnumba's version and its dependencies' (for bug reports)"),
)
