"""``nbnumba-sf``: a P1 structure-factor file (``-hkl``) from an atomic model or an MTZ, with gemmi.

::

    nbnumba-sf model.pdb -dmin 2.0 > P1.hkl
    nbnumba-sf model.cif -dmin 1.5 -bulk_solvent -o P1.hkl
    nbnumba-sf data.mtz -column FP -dmin 2.0 -o P1.hkl

nanoBragg applies no symmetry: every reflection it may meet must be in its
``-hkl`` file, Friedel mates included.  This tool reads a PDB or mmCIF model
(gemmi), applies the model's space-group operators, and writes ``h k l F``
for every index with ``d >= dmin`` over the whole sphere (``0 0 0`` left
out, as reflection files do).

F is ``|sum_j occ_j f_j(s) exp(-B_j s^2/4) exp(2 pi i h.x_j)|`` over all
symmetry copies of every atom: X-ray form factors f_j of the International
Tables (IT92 coefficients, no anomalous terms), isotropic or anisotropic B
from the model, computed by direct summation (exact, no FFT grid).  Friedel
mates get the same F.  ``-bulk_solvent`` adds a flat solvent model,
``k_sol exp(-B_sol s^2/4) F_mask``, with the mask from gemmi's solvent
masker (defaults k_sol 0.35 e/A^3, B_sol 46 A^2).

The cell the file belongs to is printed on stderr with the nanoBragg flag
that goes with it (``-cell a b c alpha beta gamma``).  Errors are one line,
exit status 2, and leave an old ``-o`` file as it was.  Refused, before
anything is written: an atom with a non-finite (or out-of-range) coordinate,
occupancy or B factor, a negative occupancy, or an element gemmi has no
X-ray form factor for (named by file, serial and chain/residue/atom); an
impossible cell (non-finite, angles outside (0, 180) degrees, volume not
> 1 A^3); a -dmin that selects no reflection (the cell's largest d-spacing is
named); B factors so negative (model, ``-B_add``, ``-B_sol``) that
``exp(-B s^2/4)`` passes e^80 at -dmin (gemmi takes it in single precision,
which overflows at e^88.7): ``B >= -320 dmin^2``; any F that would not be
finite, or every F zero; ``-o`` naming the model file (or a link to it);
``-k_sol``/``-B_sol`` without ``-bulk_solvent``.

MTZ input (a file named ``*.mtz`` or ``*.mtz.gz``, or any file that starts
with ``MTZ ``): the amplitudes of a merged file, usually the asymmetric unit
of its space group, are expanded to P1 over the whole sphere.  Each
reflection ``h`` of the file goes to every ``h R`` (R the rotation parts of
gemmi's space-group operations; centring leaves Miller indices alone) and
to their Friedel mates ``-h R``; an index reached twice, from one row or
from two symmetry-equivalent rows, must get the same value (a file that holds
two different values for equivalent reflections is not merged data and is
refused).  Systematic absences stay out of the list (nanoBragg gives a
missing reflection -default_F, 0 unless set), and so does ``0 0 0``: a
screw-axis or glide absence the file holds anyway is left out and counted,
an index off a centred lattice (h + k odd in C 1 2 1) is refused (the
indices belong to another cell or setting).

The column: ``-column LABEL``, else the first column of type F (amplitude);
stderr names the one used.  Intensities (type J, or K for I(+)/I(-)) only
with ``-intensities`` (then the first J column by default), as
``F = sqrt(max(I, 0))``, the negative ones counted.  An anomalous pair
(type G amplitudes, K intensities) is taken whole whichever half is named:
the partner's label is the name with its last ``+`` and ``-`` swapped
(``F(+)``/``F(-)``, ``I+``/``I-``), in the same data set.  The ``(+)``
value of row ``h`` goes to the ``h R``, the ``(-)`` value to the ``-h R``:
a list with Bijvoet differences (nanoBragg, which reads every index of the
list on its own, simulates them); for a centric reflection both sets are
the same and both halves must agree.  For a plain Friedel-symmetric
simulation choose the mean column (F, FP, IMEAN).  Missing values (NaN, or
the file's VALM) are left out and counted; a negative or infinite
amplitude is refused.  ``-dmin`` is optional (every reflection of the file
without it).  The cell is the data set's (DCELL), else the file's (CELL),
and must fit the space group; the space group gemmi takes (from SYMINF, and
for an R group from the cell: 'R 3' with a rhombohedral cell is R 3:R) must
have the rotations and the absences of the file's SYMM operators.

Refused with one line (exit 2): a file that is not an MTZ or is cut short
(no END / MTZENDOFHEADERS record, data past the header) or whose NCOL
record does not fill the data exactly, a header text that is not UTF-8, a
column of an undeclared data set, an unmerged file (batches), no space
group, an unknown column (the amplitude columns are listed), a label two
columns share, a column of another type, an index that is not an integer,
no reflection left, the model-only flags (``-bulk_solvent``, ``-k_sol``,
``-B_sol``, ``-B_add``) with an MTZ and ``-column``/``-intensities`` with a
model.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import (ConfigError, InputFileError, NBError, UsageError, did_you_mean, main_args,
                     quiet_broken_pipes)
from .io.atomic import OutputFileError

PROG = "nbnumba-sf"

USAGE = """\
usage: nbnumba-sf MODEL -dmin D [-o FILE] [-bulk_solvent] [-k_sol K] [-B_sol B] [-B_add B]
       nbnumba-sf DATA.mtz [-dmin D] [-column LABEL] [-intensities] [-o FILE]

Structure factors of an atomic model (PDB or mmCIF, read with gemmi), or the
amplitudes of a merged MTZ file, expanded to P1 over the whole sphere, as
'h k l F' lines for nanoBragg's -hkl.

  MODEL            model file: .pdb, .ent, .cif, .mmcif (gzip allowed)
  DATA.mtz         MTZ file (.mtz, .mtz.gz, or any file starting with 'MTZ ')
  -dmin D          resolution limit in Angstrom (> 0; required for a model,
                   optional for an MTZ: every reflection of the file without it)
  -o FILE          write FILE (atomically) instead of standard output
  -h, --help       this text
 for a model:
  -bulk_solvent    add a flat bulk-solvent contribution (gemmi solvent mask)
  -k_sol K         solvent electron density in e/A^3, >= 0 (default 0.35; needs -bulk_solvent)
  -B_sol B         solvent B factor in A^2 (default 46; needs -bulk_solvent)
  -B_add B         add B (A^2) to every atom's B factor (default 0); every B must
                   stay >= -320 D^2 (exp(-B s^2/4) within e^80 at -dmin D)
 for an MTZ:
  -column LABEL    the column to use (default: the first of type F, amplitude);
                   one half of an anomalous pair (F(+) or F(-)) brings the other:
                   F(+) goes to the symmetry mates of h, F(-) to those of -h
  -intensities     the column holds intensities (type J, or K for I(+)/I(-);
                   default the first of type J): F = sqrt(max(I, 0))

Every symmetry mate and Friedel mate is written; systematic absences and
missing values (NaN) stay out of the list (counted on stderr).
Example: nbnumba-sf model.pdb -dmin 2.0 > P1.hkl
         nbnumba-sf data.mtz -column FP -o P1.hkl
         nbnumba -hkl P1.hkl -cell <the cell printed on stderr> ...
Needs gemmi: pip install "nbnumba[sf]".
--version prints nbnumba's version and its dependencies'."""


@dataclass
class SFOptions:
    model: str = ""
    dmin: float = 0.0
    output: Optional[str] = None
    bulk_solvent: bool = False
    k_sol: float = 0.35     # e/A^3
    B_sol: float = 46.0     # A^2
    B_add: float = 0.0      # A^2
    column: Optional[str] = None    # MTZ column label (None: the first of its type)
    intensities: bool = False       # the MTZ column holds intensities


def _number(flag: str, text: str, positive: bool = False) -> float:
    # nbnumba's number syntax (plain ASCII decimal): float() alone took '３'
    # (full-width digit) and '1_0' (= 10), which nbnumba itself refuses
    from .flags import _is_number
    if not _is_number(text):
        raise UsageError("%s: '%s' is not a number" % (flag, text))
    v = float(text)
    if not math.isfinite(v) or (positive and v <= 0):
        raise UsageError("%s must be a %snumber, not '%s'" % (flag, "positive " if positive else "finite ", text))
    return v


def parse_sf_argv(argv: Sequence[str]) -> SFOptions:
    o = SFOptions()
    args = list(argv)
    i = 0
    values = {"-dmin": "dmin", "-k_sol": "k_sol", "-B_sol": "B_sol", "-B_add": "B_add"}
    given = set()
    while i < len(args):
        a = args[i]
        if a in values or a in ("-o", "-output", "-column"):
            if i + 1 >= len(args):
                raise UsageError("%s needs a value" % a)
            v = args[i + 1]
            if a == "-column":
                if not v.strip():
                    raise UsageError("-column: expected a column label, got '%s'" % v)
                o.column = v
                given.add(a)
            elif a in ("-o", "-output"):
                # '-o ""' fell back to standard output; '-o -bulk_solvent' wrote a
                # file of that name: a name that looks like a flag is a mistake
                if v == "" or v.startswith("-"):
                    raise UsageError("%s: expected a file name, got '%s'" % (a, v))
                o.output = v
            else:
                setattr(o, values[a], _number(a, v, positive=(a == "-dmin")))
                given.add(a)
            i += 2
            continue
        if a == "-bulk_solvent":
            o.bulk_solvent = True
            given.add(a)
        elif a == "-intensities":
            o.intensities = True
            given.add(a)
        elif a.startswith("-") and len(a) > 1:
            raise UsageError("unknown flag '%s'%s" % (a, did_you_mean(a, list(values) + [
                "-o", "-output", "-column", "-bulk_solvent", "-intensities"])))
        elif o.model:
            raise UsageError("one model file only (got '%s' and '%s')" % (o.model, a))
        else:
            o.model = a
        i += 1
    if not o.model:
        raise UsageError("no model file given")
    if is_mtz(o.model):
        # the model's options would be ignored: say so instead
        for flag in ("-bulk_solvent", "-k_sol", "-B_sol", "-B_add"):
            if flag in given:
                raise UsageError("%s is for an atomic model: %s is an MTZ file, whose amplitudes "
                                 "are used as they are" % (flag, o.model))
        return o
    for flag in ("-column", "-intensities"):
        if flag in given:
            raise UsageError("%s chooses the data of an MTZ file: %s is a model file" % (flag, o.model))
    if o.dmin <= 0:
        raise UsageError("-dmin D is required (resolution limit in Angstrom)")
    # without -bulk_solvent these were ignored without a word
    for flag in ("-k_sol", "-B_sol"):
        if flag in given and not o.bulk_solvent:
            raise UsageError("%s sets the bulk-solvent model: it needs -bulk_solvent" % flag)
    if o.k_sol < 0:
        raise UsageError("-k_sol must be >= 0 (solvent electron density, e/A^3), not %g" % o.k_sol)
    return o


def _gemmi():
    from .extras import require
    return require("gemmi", PROG)


def read_model(path: str):
    """The gemmi Structure of ``path`` with its symmetry set up; one-line errors."""
    gemmi = _gemmi()
    if not os.path.exists(path):
        raise InputFileError("%s: no such model file" % path)
    if not os.path.isfile(path):    # (it said "no such model file" for a directory or FIFO)
        raise InputFileError("%s: not a regular file (%s)" % (path, "a directory" if os.path.isdir(path)
                                                            else "a FIFO, socket or device"))
    try:
        with open(path, "rb"):      # (gemmi's words name the file twice, with an errno)
            pass
    except OSError as exc:
        raise InputFileError("%s: cannot read model: %s" % (path, exc.strerror or exc)) from None
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:   # gemmi raises RuntimeError/ValueError/OSError with its own text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError("%s: cannot read model: %s" % (path, first)) from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputFileError("%s: the model has no atoms" % path)
    check_pdb_columns(st, path)
    check_cell(st, path)
    if st.find_spacegroup() is None:
        raise InputFileError("%s: unknown space group '%s'"
                             % (path, _gemmi_text(lambda: st.spacegroup_hm)))
    check_atoms(st, path)
    st.setup_cell_images()
    return st


#: the number columns of a PDB ATOM/HETATM record (1-based, inclusive), and
#: whether the field may be left out (a blank field at the end of the line)
_PDB_NUMBERS = (("x", 31, 38, False), ("y", 39, 46, False), ("z", 47, 54, False),
                ("occupancy", 55, 60, True), ("B factor", 61, 66, True))


def check_pdb_columns(st, path: str) -> None:
    """InputFileError naming the line and field of the first model's first
    ATOM/HETATM record whose coordinate, occupancy or B factor is not a number.
    gemmi reads such a field without a word: '*****' (a value too wide for its
    columns), 'abc' or a blank coordinate became 0, '1.2.3' became 1.2, and a
    blank occupancy or B before the element columns 0, and F came out for an
    atom that was not the file's.  A record cut short after z keeps gemmi's
    defaults for the occupancy and B (1 and 20), as PDB files written so do.
    Only a file gemmi read as PDB (``st``): mmCIF is left to gemmi (a missing
    value there is NaN, refused by check_atoms)."""
    from .flags import _is_number
    if st.input_format != _gemmi().CoorFormat.Pdb:
        return
    try:
        with _open_raw(path) as fh:
            raw = fh.read()
    except (OSError, EOFError, ValueError):
        return                                   # (gemmi has read it: it said what it could)
    for n, line in enumerate(raw.decode("latin-1").splitlines(), 1):
        if line.startswith("ENDMDL"):
            return                               # the first model is the one used
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        for name, a, b, optional in _PDB_NUMBERS:
            field = line[a - 1:b].strip()
            if field and (_is_number(field)
                          or field.lower().lstrip("+-") in ("nan", "inf", "infinity")):
                continue                         # (NaN and inf: check_atoms names the atom)
            if not field and optional and not line[a - 1:].strip():
                continue                         # the line ends before it
            raise InputFileError("%s: line %d (%s): %s in columns %d-%d is %s, not a number"
                                 % (path, n, line[:27].strip()[:27], name, a, b,
                                    "'%s'" % field if field else "blank"))


def check_cell(st, path: str) -> None:
    """InputFileError unless the model's cell is a real cell.  gemmi leaves
    1 1 1 90 90 90 when there is no CRYST1 / _cell; for angles 170 170 170 its
    volume is NaN (and ``volume <= 1.0`` is False for NaN: 0 reflections and a
    -cell that nbnumba refuses), for alpha = nan the file came out empty."""
    _check_unit_cell(st.cell, path, "no unit cell (CRYST1 / _cell) in the model")


def _check_unit_cell(c, path: str, missing: str) -> None:
    """check_cell's rules for any gemmi UnitCell; ``missing`` says what gemmi's
    placeholder cell (1 1 1 90 90 90) means for this kind of file."""
    par = (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)
    if c.a == c.b == c.c == 1.0 and c.alpha == c.beta == c.gamma == 90.0:
        raise InputFileError("%s: %s" % (path, missing))
    if not (all(math.isfinite(x) for x in par) and min(par[:3]) > 1.0
            and all(0.0 < x < 180.0 for x in par[3:]) and c.volume > 1.0):
        raise InputFileError("%s: impossible unit cell %s (volume %g A^3): the edges must be "
                             "> 1 A, the angles between 0 and 180 degrees, and the volume > 1 A^3"
                             % (path, " ".join("%g" % x for x in par), c.volume))


#: |x|, |y|, |z| above this (A) are not a model's atoms: at 1e300 A the phase
#: 2 pi h.x has no significant digit left and F was quietly wrong
COORD_MAX = 1.0e6


def _gemmi_text(get) -> str:
    """A name gemmi holds, for a message: gemmi gives its bytes to Python as
    UTF-8, and a byte that is not (a latin-1 residue name, space group) was a
    UnicodeDecodeError traceback where the message named it."""
    try:
        return str(get())
    except UnicodeDecodeError:
        return "(not UTF-8 text)"


def _atom_name(cra) -> str:
    return "atom %d (%s)" % (cra.atom.serial, _gemmi_text(lambda: cra))


def check_atoms(st, path: str) -> None:
    """InputFileError naming the file and the first atom (serial, chain/residue/atom)
    of the model's first model (the one used) whose coordinates, occupancy or
    B factor are not finite (a NaN gave NaN in every F, exit 0), whose occupancy
    is negative, or whose element has no X-ray form factor (an unknown element,
    read by gemmi as X, scattered like oxygen; Es and heavier were a traceback).
    Also refused: a model in which every occupancy is 0 (nothing scatters)."""
    scatters = False
    for cra in st[0].all():
        a = cra.atom
        for axis, v in (("x", a.pos.x), ("y", a.pos.y), ("z", a.pos.z)):
            if not abs(v) <= COORD_MAX:          # NaN fails too
                raise InputFileError("%s: %s: coordinate %s = %s A is %s" % (
                    path, _atom_name(cra), axis, v,
                    "not a number" if math.isnan(v) else "out of range (|%s| <= %g A)" % (axis, COORD_MAX)))
        if not (math.isfinite(a.occ) and a.occ >= 0.0):
            raise InputFileError("%s: %s: occupancy %s is not %s" % (
                path, _atom_name(cra), a.occ, "finite" if not math.isfinite(a.occ) else ">= 0"))
        if not math.isfinite(a.b_iso):
            raise InputFileError("%s: %s: B factor %s is not finite" % (path, _atom_name(cra), a.b_iso))
        u = a.aniso.elements_pdb()
        if not all(math.isfinite(x) for x in u):
            raise InputFileError("%s: %s: anisotropic U (ANISOU / _atom_site_anisotrop) %s is not "
                                 "finite" % (path, _atom_name(cra), " ".join("%g" % x for x in u)))
        el = a.element
        if el.atomic_number == 0:
            raise InputFileError("%s: %s: unknown element (gemmi reads it as '%s'): no X-ray "
                                 "form factor for it" % (path, _atom_name(cra), el.name))
        if el.it92 is None:
            raise InputFileError("%s: %s: gemmi has no X-ray form factor (IT92) for element %s"
                                 % (path, _atom_name(cra), el.name))
        scatters = scatters or a.occ > 0.0
    if not scatters:
        raise InputFileError("%s: every atom has occupancy 0: nothing scatters" % path)


#: bytes per point of the index box: h, k, l and their stack (int64), the
#: reciprocal vectors, the masks (on the high side, as validate's costs)
_B_BOX = 110


def _check_box(a: float, b: float, c: float, dmin: float) -> None:
    """ConfigError when the index box |h| <= a/dmin (likewise k, l) needs more
    memory than the machine has: -dmin 0.01 on a 20 A cell asked numpy for
    477 GiB (a traceback), -dmin 1e-320 for an infinite box."""
    from .validate import format_bytes, memory_limit
    n = 1.0
    for x in (a, b, c):
        n *= 2.0 * (x / dmin) + 1.0      # (no floor: it raises on inf)
    need = n * _B_BOX
    limit, what = memory_limit()
    if not need <= limit:
        raise ConfigError("-dmin %g: the index box holds %.3g points (|h| <= %.3g A / dmin, "
                          "likewise k and l), about %s of memory, more than %s; give a "
                          "larger -dmin" % (dmin, n, a, format_bytes(need), what))


def half_sphere_indices(cell_abc_angles: Tuple[float, ...], frac_matrix: np.ndarray,
                        dmin: float) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (N, 3) with ``d >= dmin`` of one Friedel half (h > 0; h = 0, k > 0;
    h = k = 0, l > 0) and their ``s^2 = 1/d^2`` (1/A^2).

    ``frac_matrix`` is the fractionalisation matrix: reciprocal vector of (h, k, l)
    is ``hkl @ frac_matrix``.  ``|h| <= a/dmin`` bounds the search box.
    """
    a, b, c = cell_abc_angles[:3]
    _check_box(a, b, c, dmin)
    hm, km, lm = (int(math.floor(x / dmin)) for x in (a, b, c))
    h, k, l = np.meshgrid(np.arange(-hm, hm + 1), np.arange(-km, km + 1), np.arange(-lm, lm + 1),
                          indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    half = (hkl[:, 0] > 0) | ((hkl[:, 0] == 0) & ((hkl[:, 1] > 0) | ((hkl[:, 1] == 0) & (hkl[:, 2] > 0))))
    hkl = hkl[half]
    s = hkl @ np.asarray(frac_matrix, dtype=float)
    s2 = np.einsum("ij,ij->i", s, s)
    keep = s2 <= 1.0 / (dmin * dmin) * (1 + 1e-12)
    return hkl[keep], s2[keep]


#: bytes per reflection of the half sphere, from the direct sums to the written
#: text (both Friedel mates' lines): 685 MB peak for 1e6 of them, the index box
#: included (1e9 A along b at -dmin 100: 1e7 of them, 6.0 GB, an OOM kill on a
#: smaller machine instead of an error)
_B_REFLECTION = 700


def _check_reflections(n: int, dmin: float, st) -> None:
    """ConfigError when ``n`` reflections (one Friedel half) need more memory
    than the machine has, before their direct sums."""
    from .validate import format_bytes, memory_limit
    need = n * float(_B_REFLECTION)
    limit, what = memory_limit()
    if not need <= limit:
        raise ConfigError("-dmin %g: the %s cell has %d reflections with d >= %g A, about %s "
                          "of memory to compute and write, more than %s; give a larger -dmin"
                          % (dmin, cell_flags(st)[len("-cell "):], 2 * n, dmin,
                             format_bytes(need), what))


#: bytes per point of the solvent mask's grid: the float mask, its complex
#: transform and gemmi's work copies (on the high side)
_B_GRID = 32


def _check_solvent_grid(st, spacing: float) -> None:
    """ConfigError when the solvent mask's grid needs more memory than the machine
    has: a 1e9 A cell edge asked gemmi for 3e12 bytes (std::bad_alloc, a
    MemoryError traceback).  gemmi's grid has about d(100) / spacing points along
    a (likewise b, c), rounded up to sizes its FFT takes: a / spacing + 1 bounds
    that from above, whatever the angles."""
    from .validate import format_bytes, memory_limit
    cell = st.cell
    n = 1.0
    for x in (cell.a, cell.b, cell.c):
        n *= x / spacing + 1.0
    need = n * _B_GRID
    limit, what = memory_limit()
    if not need <= limit:
        raise ConfigError("-bulk_solvent: the solvent mask's grid (%g A spacing over the "
                          "%g x %g x %g A cell) holds %.3g points, about %s of memory, more "
                          "than %s; leave out -bulk_solvent"
                          % (spacing, cell.a, cell.b, cell.c, n, format_bytes(need), what))


def _solvent_f(gemmi, st, hkl: np.ndarray, dmin: float) -> np.ndarray:
    """Complex structure factors of the solvent mask (1 inside solvent, 0 in protein)."""
    spacing = min(dmin / 3.0, 1.0)
    _check_solvent_grid(st, spacing)      # (called before the long direct sums)
    grid = gemmi.FloatGrid()
    try:
        grid.setup_from(st, spacing=spacing)
    except MemoryError:
        raise ConfigError("-bulk_solvent: no memory for the solvent mask's grid (%g A spacing "
                          "over the %g x %g x %g A cell); leave out -bulk_solvent"
                          % (spacing, st.cell.a, st.cell.b, st.cell.c)) from None
    masker = gemmi.SolventMasker(gemmi.AtomicRadiiSet.Refmac)
    try:
        masker.put_mask_on_float_grid(grid, st[0])
    except RuntimeError as e:
        # gemmi masks each atom's sphere within one cell: a cell narrower across a
        # face than twice that radius is refused ("radius bigger than half the unit
        # cell?"; a 20 A cell with gamma = 4 deg is 1.4 A across)
        rec = st.cell.reciprocal()
        why = ("is %.4g x %.4g x %.4g A across its faces, narrower than twice an atom's masking "
               "radius" % (1.0 / rec.a, 1.0 / rec.b, 1.0 / rec.c)
               if "radius bigger" in str(e) else "cannot be masked")
        raise ConfigError("-bulk_solvent: gemmi cannot build the solvent mask: the cell (%s) %s "
                          "(gemmi: %s); leave out -bulk_solvent" % (cell_flags(st), why, e)) from None
    fphi = gemmi.transform_map_to_f_phi(grid, half_l=False)
    # gemmi scales the transform by V/N, so F(000) = solvent volume (A^3): times k_sol
    # (e/A^3) that is electrons
    return np.array([fphi.get_value(int(h), int(k), int(l)) for h, k, l in hkl], dtype=complex)


#: the largest exponent -B s^2/4 allowed at s = 1/dmin: gemmi evaluates
#: exp(-B s^2/4) in single precision (inf past e^88.7: -B_add -3300 at -dmin 3
#: gave inf F), and the bulk-solvent term is held to the same rule
EXP_MAX = 80.0


def lowest_b(dmin: float) -> float:
    """The most negative B (A^2) whose ``exp(-B s^2/4)`` stays within e^EXP_MAX at ``dmin``."""
    return -4.0 * EXP_MAX * dmin * dmin


def _effective_b(model):
    """(lowest B over the atoms, its CRA): B_iso, or 8 pi^2 times the smallest
    eigenvalue of U where the atom is anisotropic (gemmi then uses U)."""
    low, where = math.inf, None
    for cra in model.all():
        a = cra.atom
        if a.aniso.nonzero():
            u = a.aniso
            m = np.array([[u.u11, u.u12, u.u13], [u.u12, u.u22, u.u23], [u.u13, u.u23, u.u33]])
            b = 8 * math.pi ** 2 * float(np.linalg.eigvalsh(m)[0])
        else:
            b = a.b_iso
        if b < low:
            low, where = b, cra
    return low, where


def _largest_d(cell_abc: Tuple[float, float, float], frac_matrix: np.ndarray) -> float:
    """The cell's largest d-spacing, 1 / (shortest reciprocal-lattice vector).
    Its indices obey |h| <= a |s| (likewise k, l) and |s| <= the shortest of
    a*, b*, c*, which bounds the search (capped: a sane cell needs |h| <= 1 or 2)."""
    fm = np.asarray(frac_matrix, dtype=float)
    m = float(min(np.linalg.norm(fm, axis=1)))
    r = [min(int(math.floor(x * m * (1 + 1e-9))), 50) for x in cell_abc]
    h, k, l = np.meshgrid(*(np.arange(-n, n + 1) for n in r), indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), l.ravel()], axis=1)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    s = hkl @ fm
    return 1.0 / math.sqrt(float(np.min(np.einsum("ij,ij->i", s, s))))


def structure_factors(st, dmin: float, bulk_solvent: bool = False, k_sol: float = 0.35,
                      B_sol: float = 46.0, B_add: float = 0.0,
                      source: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(hkl (N, 3) int, F (N,) float) for the whole sphere ``d >= dmin`` (A), Friedel
    mates included, ``0 0 0`` excluded, sorted by h, k, l.  F in electrons.

    One-line NBErrors (``source``, the model's file name, for the messages)
    instead of a result that is empty, not finite, or all zero; see the module
    notes for the rules."""
    gemmi = _gemmi()
    source = source or st.name or "the model"
    if B_add:
        # on a copy: the caller's structure kept the added B (a second call added
        # it again), and a refusal part-way left some atoms changed
        st = st.clone()
    model = st[0]
    if B_add:
        for res in model.all():
            res.atom.b_iso += B_add
            if res.atom.aniso.nonzero():
                u = B_add / (8 * math.pi ** 2)
                a = res.atom.aniso
                res.atom.aniso = gemmi.SMat33f(a.u11 + u, a.u22 + u, a.u33 + u, a.u12, a.u13, a.u23)
            # gemmi keeps B and U in single precision: -B_add -1e39 made them -inf
            if not (math.isfinite(res.atom.b_iso) and all(math.isfinite(x) for x in res.atom.aniso.elements_pdb())):
                raise UsageError("-B_add %g: %s's B factor leaves single precision (gemmi's storage)"
                                 % (B_add, _atom_name(res)))
    floor = lowest_b(dmin)
    low, where = _effective_b(model)
    if where is not None and low < floor:
        why = ("exp(-B s^2/4) would pass e^%g at -dmin %g (B >= %g A^2 there, -320 dmin^2)"
               % (EXP_MAX, dmin, floor))
        if B_add < 0 and low - B_add >= floor:
            raise UsageError("-B_add %g: %s's B becomes %g A^2, and %s" % (B_add, _atom_name(where), low, why))
        raise InputFileError("%s: %s: B = %g A^2%s%s, and %s"
                             % (source, _atom_name(where), low,
                                " (8 pi^2 times U's smallest eigenvalue)" if where.atom.aniso.nonzero() else "",
                                " with -B_add %g" % B_add if B_add else "", why))
    if bulk_solvent and B_sol < floor:
        raise UsageError("-B_sol %g: exp(-B_sol s^2/4) would pass e^%g at -dmin %g (-B_sol >= %g "
                         "A^2 there, -320 dmin^2)" % (B_sol, EXP_MAX, dmin, floor))
    cell = st.cell
    frac = np.array(cell.frac.mat)
    hkl, s2 = half_sphere_indices((cell.a, cell.b, cell.c), frac, dmin)
    if len(hkl) == 0:
        # an empty file, exit 0, that nbnumba then refused
        raise ConfigError("-dmin %g: no reflections with d >= %g A in %s's cell (%s); its largest "
                          "d-spacing is %.4g A" % (dmin, dmin, source, cell_flags(st)[len("-cell "):],
                                                   _largest_d((cell.a, cell.b, cell.c), frac)))
    _check_reflections(len(hkl), dmin, st)
    # the mask first: a cell gemmi cannot mask is refused before the long direct sums
    fmask = _solvent_f(gemmi, st, hkl, dmin) if bulk_solvent else None
    calc = gemmi.StructureFactorCalculatorX(cell)
    # overflow is what the checks below look for: no numpy warning on the way
    with np.errstate(over="ignore", invalid="ignore"):
        f = np.array([calc.calculate_sf_from_model(model, [int(h), int(k), int(l)]) for h, k, l in hkl],
                     dtype=complex)
        if not np.all(np.isfinite(f)):
            occ = max(cra.atom.occ for cra in model.all())
            raise InputFileError("%s: the atoms' structure factors are not finite at -dmin %g "
                                 "(occupancies up to %g, B down to %g A^2%s)"
                                 % (source, dmin, occ, low, ", with -B_add %g" % B_add if B_add else ""))
        if bulk_solvent:
            fs = k_sol * np.exp(-B_sol * s2 / 4.0) * fmask
            f = f + fs
            if not np.all(np.isfinite(f)):     # (f was finite: so is fs then)
                # -k_sol 1e308 overflowed with a numpy warning and wrote inf
                raise UsageError("-k_sol %g: the bulk-solvent term k_sol exp(-B_sol s^2/4) F_mask "
                                 "is not finite at -dmin %g (|F_mask| up to %.4g, -B_sol %g)"
                                 % (k_sol, dmin, float(np.max(np.abs(fmask))), B_sol))
        amp = np.abs(f)
        if not np.all(np.isfinite(amp)):
            raise ConfigError("%s: |F| overflows at -dmin %g (the model's and the bulk solvent's "
                              "terms together)" % (source, dmin))
    if not np.any(amp > 0):
        # -B_add 1e30: every atom damped away, an all-zero file
        raise ConfigError("%s: every F is 0 at -dmin %g: the B factors (lowest %g A^2%s) damp "
                          "every reflection away" % (source, dmin, low,
                                                     ", with -B_add %g" % B_add if B_add else ""))
    full = np.concatenate([hkl, -hkl])
    famp = np.concatenate([amp, amp])
    order = np.lexsort((full[:, 2], full[:, 1], full[:, 0]))
    return full[order], famp[order]


def hkl_text(hkl: np.ndarray, F: np.ndarray) -> str:
    """``h k l F`` lines, the layout nanoBragg's -hkl reads."""
    return "".join("%4d %4d %4d %12.4f\n" % (h, k, l, f) for (h, k, l), f in zip(hkl.tolist(), F.tolist()))


def cell_flags(st) -> str:
    return _cell_flags_of(st.cell)


def _cell_flags_of(c) -> str:
    # %.10g: every digit of the file's cell (an MTZ's 123.4567 was printed 123.457 by %g)
    return "-cell %.10g %.10g %.10g %.10g %.10g %.10g" % (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)


# ---------------------------------------------------------------------------
# MTZ input: measured or refined amplitudes, expanded to P1
# ---------------------------------------------------------------------------

MTZ_MAGIC = b"MTZ "

#: |h|, |k|, |l| above this are no crystal's reflections (and keep the packed
#: index keys of _expand_p1 inside int64)
MTZ_INDEX_MAX = 100000

#: bytes per expanded entry in _expand_p1 (indices, value, row, key, order,
#: the sorted copies), on the high side
_B_ENTRY = 120

#: MTZ column types, for the messages
MTZ_TYPES = {
    "H": "Miller index", "J": "intensity", "F": "amplitude", "D": "anomalous difference",
    "Q": "standard deviation", "G": "anomalous amplitude", "L": "standard deviation (anomalous)",
    "K": "anomalous intensity", "M": "standard deviation (anomalous intensity)",
    "E": "normalised amplitude", "P": "phase", "W": "weight", "A": "Hendrickson-Lattman coefficient",
    "B": "batch number", "Y": "M/ISYM", "I": "integer", "R": "real",
}


def _open_raw(path: str):
    """``path`` for reading, decompressed when it is gzip (gemmi reads .mtz.gz too)."""
    import gzip
    fh = open(path, "rb")
    if fh.read(2) == b"\x1f\x8b":
        fh.close()
        return gzip.open(path, "rb")
    fh.seek(0)
    return fh


def is_mtz(path: str) -> bool:
    """An MTZ by its name (.mtz, .mtz.gz) or by its first four bytes."""
    import zlib
    if path.lower().endswith((".mtz", ".mtz.gz")):
        return True
    if not os.path.isfile(path):       # (a FIFO would block the peek; read_model says what is wrong)
        return False
    try:
        with _open_raw(path) as fh:
            return fh.read(4) == MTZ_MAGIC
    except (OSError, EOFError, zlib.error):
        return False


def _check_mtz_layout(path: str) -> List[str]:
    """InputFileError when ``path`` is not an MTZ or is cut short.  gemmi reads
    headers up to the end of the file without a word: a file cut 10 bytes into
    its header came back with no columns, one cut before its last records as
    complete.  An MTZ is 'MTZ ', the header's position (4-byte words, counted
    from 1), the data from byte 80, then 80-byte header records up to END,
    history and batch headers, and MTZENDOFHEADERS.  The data must fill the
    bytes from 80 to the header exactly: gemmi reads the number of reflections
    NCOL names and said nothing when it was smaller (the rest were dropped).
    Returns the operators of the header's SYMM records (text)."""
    import struct
    import zlib
    try:
        with _open_raw(path) as fh:
            head = fh.read(12)
            if len(head) < 4 and MTZ_MAGIC.startswith(head):
                raise InputFileError("%s: %s" % (path, "empty file, not an MTZ" if not head else
                                                 "truncated MTZ file (%d bytes)" % len(head)))
            if head[:4] != MTZ_MAGIC:
                raise InputFileError("%s: not an MTZ file (it does not start with 'MTZ ')" % path)
            if len(head) < 12:
                raise InputFileError("%s: truncated MTZ file (%d bytes)" % (path, len(head)))
            # the machine stamp's second byte: 1 in its high half-byte is big-endian (as gemmi reads it)
            big = (head[9] & 0xF0) == 0x10
            word = struct.unpack(">i" if big else "<i", head[4:8])[0]
            if word < 21:
                raise InputFileError("%s: not a valid MTZ file (header position %d, before the data)"
                                     % (path, word))
            start = 4 * (word - 1)
            fh.seek(start)
            tail = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InputFileError("%s: cannot read MTZ: %s" % (path, exc)) from None
    if not tail:
        raise InputFileError("%s: truncated MTZ file: its header (at byte %d) is past the end of the file"
                             % (path, start))
    ncol = nrefl = None
    end = None
    symm = []
    for i in range(0, len(tail) - 79, 80):
        rec = tail[i:i + 80]
        if rec[:5] == b"SYMM ":
            symm.append(rec[5:].decode("latin-1").strip())
        if rec[:4] == b"NCOL":
            try:
                ncol, nrefl = (int(x) for x in rec[4:].split()[:2])
            except ValueError:
                raise InputFileError("%s: bad NCOL record in the MTZ header: %r"
                                     % (path, rec.decode("latin-1").strip())) from None
        elif rec[:3] == b"END":
            end = i + 80
            break
    if end is None:
        raise InputFileError("%s: truncated MTZ file: its header (from byte %d) has no END record"
                             % (path, start))
    last = tail.find(b"MTZENDOFHEADERS", end)
    if last < 0 or len(tail) - last < 80:       # (the last record, 80 bytes like the others)
        raise InputFileError("%s: truncated MTZ file: no MTZENDOFHEADERS record after the header" % path)
    if ncol is None:
        raise InputFileError("%s: the MTZ header has no NCOL record (columns, reflections)" % path)
    if 80 + 4 * ncol * nrefl > start:
        raise InputFileError("%s: truncated MTZ file: %d columns x %d reflections need %d bytes of data "
                             "from byte 80, and the header starts at byte %d"
                             % (path, ncol, nrefl, 4 * ncol * nrefl, start))
    if 80 + 4 * ncol * nrefl != start:
        raise InputFileError("%s: the NCOL record says %d columns x %d reflections (%d bytes of data from "
                             "byte 80), but the header starts at byte %d: a damaged header"
                             % (path, ncol, nrefl, 4 * ncol * nrefl, start))
    return symm


def read_mtz(path: str):
    """The gemmi Mtz of ``path``, merged, with a space group, H K L columns and
    at least one reflection; one-line errors."""
    gemmi = _gemmi()
    if not os.path.exists(path):
        raise InputFileError("%s: no such MTZ file" % path)
    if not os.path.isfile(path):
        raise InputFileError("%s: not a regular file (%s)" % (path, "a directory" if os.path.isdir(path)
                                                            else "a FIFO, socket or device"))
    symm = _check_mtz_layout(path)
    try:
        mtz = _gemmi_read_mtz(gemmi, path)
    except Exception as exc:   # gemmi's RuntimeError, with its own text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError("%s: cannot read MTZ: %s" % (path, first)) from None
    _check_mtz_text(mtz, path)
    if len(mtz.batches):
        # symmetry mates of unmerged data hold different values: refused below anyway,
        # but this says why
        raise InputFileError("%s: unmerged MTZ file (%d batches): merge it first (e.g. with aimless)"
                             % (path, len(mtz.batches)))
    if mtz.spacegroup is None:
        raise InputFileError("%s: unknown space group ('%s', number %d) in the MTZ header"
                             % (path, mtz.spacegroup_name, mtz.spacegroup_number))
    _check_symm(gemmi, mtz.spacegroup, symm, path)
    cols = list(mtz.columns)
    if len(cols) < 3 or [c.type for c in cols[:3]] != ["H", "H", "H"]:
        raise InputFileError("%s: the MTZ file does not start with H K L columns (type H)" % path)
    ids = {d.id for d in mtz.datasets}
    for c in cols:
        # (gemmi raised a RuntimeError at c.dataset or get_cell)
        if c.dataset_id not in ids:
            raise InputFileError("%s: column %s belongs to data set %d, which the header does not "
                                 "declare (no PROJECT / DATASET record with that number)"
                                 % (path, c.label, c.dataset_id))
    if mtz.nreflections == 0:
        raise InputFileError("%s: the MTZ file holds no reflections" % path)
    return mtz


def _gemmi_read_mtz(gemmi, path: str):
    """gemmi.read_mtz_file, also for a name that is not UTF-8 (gemmi takes a str
    it can encode, and refused 'incompatible function arguments'): read from a
    copy with a plain name then."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        import shutil
        import tempfile
        with tempfile.TemporaryDirectory(prefix="nbnumba-sf-") as tmp:
            copy = os.path.join(tmp, "input.mtz")
            with _open_raw(path) as src, open(copy, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return gemmi.read_mtz_file(copy)
    return gemmi.read_mtz_file(path)


def _check_mtz_text(mtz, path: str) -> None:
    """InputFileError when a header text this tool shows is not UTF-8 (gemmi
    hands it over as str: a UnicodeDecodeError traceback at first use)."""
    what = "the space group name"
    try:
        mtz.spacegroup_name
        for i, c in enumerate(mtz.columns, 1):
            what = "column %d's label" % i
            c.label
            what = "column %d's type" % i
            c.type
        for i, d in enumerate(mtz.datasets):
            what = "data set %d's project, crystal or data set name" % d.id
            d.project_name, d.crystal_name, d.dataset_name
    except UnicodeDecodeError:
        raise InputFileError("%s: the MTZ header holds bytes that are not text (UTF-8) in %s"
                             % (path, what)) from None


def _ops_arrays(ops):
    """(rotations (n, 3, 3), translations (n, 3), both in gemmi.Op.DEN units)."""
    return (np.array([op.rot for op in ops], dtype=np.int64).reshape(-1, 3, 3),
            np.array([op.tran for op in ops], dtype=np.int64).reshape(-1, 3))


def _absent(hkl: np.ndarray, rots: np.ndarray, trans: np.ndarray, den: int) -> np.ndarray:
    """True where ``hkl`` is systematically absent under the operators (R, t):
    h R = h with h.t not an integer (R and t in ``den`` units)."""
    out = np.zeros(len(hkl), dtype=bool)
    for r, t in zip(rots, trans):
        fixed = np.all(hkl @ r == hkl * den, axis=1)
        out |= fixed & ((hkl @ t) % den != 0)
    return out


def _check_symm(gemmi, sg, symm: List[str], path: str) -> None:
    """InputFileError when the header's SYMM operators and the space group gemmi
    took (from SYMINF, and for R groups from the cell) are not the same
    symmetry: the same rotations, as often, and the same systematic absences
    (an origin shift may differ).  gemmi reads 'R 3' with a rhombohedral cell
    as R 3:R, and a SYMINF that names another group than the SYMM records
    without a word: the list came out with the wrong mates."""
    if not symm or sg is None:
        return
    ops = []
    for t in symm:
        try:
            ops.append(gemmi.Op(t))
        except Exception:
            raise InputFileError("%s: bad SYMM record in the MTZ header: '%s'" % (path, t)) from None
    den = gemmi.Op.DEN
    fr, ft = _ops_arrays(ops)
    gr, gt = _ops_arrays(list(sg.operations()))
    same = sorted(map(tuple, fr.reshape(-1, 9).tolist())) == sorted(map(tuple, gr.reshape(-1, 9).tolist()))
    if same:
        n = 12      # enough for every screw and glide component (4_1, 6_1, d)
        g = np.arange(-n, n + 1)
        hkl = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
        same = np.array_equal(_absent(hkl, fr, ft, den), _absent(hkl, gr, gt, den))
    if not same:
        raise InputFileError("%s: the space group of the SYMINF record, %s, does not match the file's %d "
                             "SYMM operators (rotations or systematic absences differ): a damaged or "
                             "inconsistent header (for R groups gemmi picks the setting from the cell)"
                             % (path, sg.xhm(), len(ops)))


def _column_list(cols, types) -> str:
    names = ["%s (%s)" % (c.label, c.type) for c in cols if c.type in types]
    return ", ".join(names) if names else "none"


def _bijvoet_partner(mtz, col, path: str):
    """The other half of the anomalous pair ``col`` belongs to: the label with
    its last '+' or '-' swapped, the same type, the same data set."""
    label = col.label
    i = max(label.rfind("+"), label.rfind("-"))
    if i < 0:
        raise UsageError("-column %s: a type %s column (%s) is half of a Bijvoet pair, and its label "
                         "has no + or - that names the other half" % (label, col.type, MTZ_TYPES[col.type]))
    other = label[:i] + ("-" if label[i] == "+" else "+") + label[i + 1:]
    mate = next((c for c in mtz.columns
                 if c.label == other and c.type == col.type and c.dataset_id == col.dataset_id), None)
    if mate is None:
        raise InputFileError("%s: -column %s is half of an anomalous pair (type %s); its other half "
                             "'%s' (type %s, the same data set) is not in the file"
                             % (path, label, col.type, other, col.type))
    return (col, mate) if label[i] == "+" else (mate, col)


def pick_mtz_columns(mtz, path: str, label: Optional[str] = None, intensities: bool = False):
    """(columns, how): ``[col]`` for a mean amplitude (or intensity), ``[plus,
    minus]`` for an anomalous pair; ``how`` says how it was chosen."""
    cols = list(mtz.columns)
    mean, pair = ("J", "K") if intensities else ("F", "G")
    if label is None:
        first = next((c for c in cols if c.type == mean), None)
        if first is not None:
            return [first], "the first column of type %s" % mean
        if intensities:
            raise InputFileError("%s: -intensities: no intensity column (type J); choose one with "
                                 "-column (intensity columns: %s)" % (path, _column_list(cols, "JK")))
        hint = (("; intensity columns (with -intensities): %s" % _column_list(cols, "JK"))
                if any(c.type in "JK" for c in cols) else "")
        raise InputFileError("%s: no amplitude column (type F); choose one with -column (amplitude "
                             "columns: %s%s)" % (path, _column_list(cols, "FG"), hint))
    found = [c for c in cols if c.label == label]
    if not found:
        hint = (("; intensity columns (with -intensities): %s" % _column_list(cols, "JK"))
                if any(c.type in "JK" for c in cols) else "")
        raise UsageError("-column %s: no such column in %s (amplitude columns: %s%s)"
                         % (label, path, _column_list(cols, "FG"), hint))
    if len(found) > 1:
        raise UsageError("-column %s: %d columns of %s have this label (data sets %s): it does not say "
                         "which one" % (label, len(found), path,
                                        ", ".join("'%s'" % c.dataset.dataset_name for c in found)))
    col = found[0]
    kind = MTZ_TYPES.get(col.type, "unknown type")
    if col.type in "JK" and not intensities:
        raise UsageError("-column %s is an %s column (type %s): add -intensities to take "
                         "F = sqrt(max(I, 0))" % (label, kind, col.type))
    if col.type in "FG" and intensities:
        raise UsageError("-intensities: column %s is an %s (type %s), not an intensity"
                         % (label, kind, col.type))
    if col.type not in (mean, pair):
        raise UsageError("-column %s has type %s (%s): nbnumba-sf takes an amplitude (type F, or G "
                         "for F(+)/F(-)) or, with -intensities, an intensity (J, or K)"
                         % (label, col.type, kind))
    if col.type == pair:
        return list(_bijvoet_partner(mtz, col, path)), "chosen with -column"
    return [col], "chosen with -column"


def _hkl_rotations(gemmi, sg, friedel: bool, path: str) -> np.ndarray:
    """The distinct rotation parts of ``sg``'s operations, as integer matrices
    acting on row vectors (h' = h R), with their negatives when ``friedel``."""
    den = gemmi.Op.DEN
    rots = set()
    for op in sg.operations().sym_ops:
        r = np.array(op.rot, dtype=np.int64)
        if np.any(r % den):
            raise InputFileError("%s: space group %s: operation %s has a non-integer rotation"
                                 % (path, sg.hm, op.triplet()))
        rots.add(tuple((r // den).ravel().tolist()))
        if friedel:
            rots.add(tuple((-(r // den)).ravel().tolist()))
    return np.array(sorted(rots), dtype=np.int64).reshape(-1, 3, 3)


def _expand_p1(parts, path: str, what: str, sgname: str):
    """(hkl (N, 3), F (N,)) sorted by h, k, l: every ``hkl @ R`` of each part
    ``(hkl, F, (file_hkl, suffix), rotations)``, each index once.  An index
    reached with two different values is an InputFileError naming both rows
    (by their indices in the file, ``file_hkl``, and ``suffix``)."""
    n = sum(len(p[0]) * len(p[3]) for p in parts)
    from .validate import format_bytes, memory_limit
    limit, lim_what = memory_limit()
    if not n * _B_ENTRY <= limit:
        raise ConfigError("%s: the P1 expansion has %d entries before merging, about %s of memory, "
                          "more than %s; give a larger -dmin" % (path, n, format_bytes(n * _B_ENTRY), lim_what))
    hs, fs, src = [], [], []
    base = 0
    for hkl, F, _names, rots in parts:
        idx = np.arange(base, base + len(hkl))
        for r in rots:
            hs.append(hkl @ r)
            fs.append(F)
            src.append(idx)
        base += len(hkl)
    file_hkl = np.concatenate([p[2][0] for p in parts])
    suffix = [p[2][1] for p in parts]
    part_of = np.repeat(np.arange(len(parts)), [len(p[0]) for p in parts])

    def name(i):
        return "%d %d %d%s" % (*file_hkl[i].tolist(), suffix[part_of[i]])
    h = np.concatenate(hs)
    f = np.concatenate(fs)
    s = np.concatenate(src)
    m = MTZ_INDEX_MAX + 1
    w = 2 * m + 1
    # (h, k, l) packed in one int64 whose order is the lexicographic order of the indices
    key = ((h[:, 0] + m) * w + (h[:, 1] + m)) * w + (h[:, 2] + m)
    order = np.argsort(key, kind="stable")
    key, h, f, s = key[order], h[order], f[order], s[order]
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    lo = np.minimum.reduceat(f, starts)
    hi = np.maximum.reduceat(f, starts)
    bad = np.flatnonzero(lo != hi)
    if len(bad):
        g = bad[0]
        stop = starts[g + 1] if g + 1 < len(starts) else len(f)
        grp = np.arange(starts[g], stop)
        a, b = grp[np.argmin(f[grp])], grp[np.argmax(f[grp])]
        raise InputFileError("%s: %s %s and %s are symmetry or Friedel mates in %s (both reach %d %d %d) "
                             "with different values, %.6g and %.6g: the file is not merged data (one "
                             "value per unique reflection)"
                             % (path, what, name(s[a]), name(s[b]), sgname, *h[a].tolist(), f[a], f[b]))
    return h[starts], f[starts]


@dataclass
class MTZReport:
    """What mtz_structure_factors did, for the stderr lines."""
    columns: List[str]
    types: str
    dataset: str
    how: str
    rows: int = 0
    missing: int = 0
    beyond_dmin: int = 0
    origin: int = 0
    negative_I: int = 0
    absent: int = 0
    d_min: float = 0.0
    spacegroup: str = ""
    cell: object = None


def mtz_structure_factors(mtz, path: str, column: Optional[str] = None, intensities: bool = False,
                          dmin: Optional[float] = None):
    """(hkl (N, 3) int, F (N,) float, MTZReport): the chosen amplitudes of ``mtz``
    (or sqrt(max(I, 0)) of its intensities) expanded to P1 over the whole
    sphere, d >= ``dmin`` if given, ``0 0 0`` and missing values left out,
    sorted by h, k, l.  See the module notes for the rules."""
    gemmi = _gemmi()
    cols, how = pick_mtz_columns(mtz, path, column, intensities)
    anomalous = len(cols) == 2
    report = MTZReport(columns=[c.label for c in cols], types=cols[0].type,
                       dataset=cols[0].dataset.dataset_name, how=how)
    cell = mtz.get_cell(cols[0].dataset_id)
    _check_unit_cell(cell, path, "no unit cell (CELL / DCELL) in the MTZ header")
    sg = mtz.spacegroup
    # (xhm: 'R 3:H' or 'R 3:R', where hm is 'R 3' for both)
    if not cell.is_compatible_with_spacegroup(sg):
        raise InputFileError("%s: the cell %s does not fit the space group %s"
                             % (path, _cell_flags_of(cell)[len("-cell "):], sg.xhm()))
    report.spacegroup, report.cell = sg.xhm(), cell
    with np.errstate(invalid="ignore"):
        # a signalling NaN (a float32 the file holds as such) raised "invalid value
        # encountered in cast" in the widening: it is a NaN, a missing value, as any other
        data = np.array(mtz.array, dtype=np.float64)
    report.rows = len(data)
    raw = data[:, :3]
    bad = ~(np.isfinite(raw) & (raw == np.round(raw)) & (np.abs(raw) <= MTZ_INDEX_MAX))
    if bad.any():
        r = int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputFileError("%s: reflection %d has Miller index %s: not an integer within +-%d"
                             % (path, r + 1, " ".join("%g" % x for x in raw[r]), MTZ_INDEX_MAX))
    hkl = raw.astype(np.int64)
    den = gemmi.Op.DEN
    rots, trans = _ops_arrays(list(sg.operations()))
    # an index off the centred lattice is no reflection of this crystal: the file's
    # indices belong to another cell or setting (they were written out as they were)
    cen = np.array(sg.operations().cen_ops, dtype=np.int64).reshape(-1, 3)
    off = np.any((hkl @ cen.T) % den != 0, axis=1)
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise InputFileError("%s: reflection %d %d %d (row %d) violates the %s centring of %s: %d such "
                             "rows, the indices do not belong to this space group"
                             % (path, *hkl[r].tolist(), r + 1, sg.hm[0], sg.xhm(), int(off.sum())))
    keep_rows = np.ones(len(hkl), dtype=bool)
    origin = np.all(hkl == 0, axis=1)
    report.origin = int(origin.sum())
    keep_rows &= ~origin
    if dmin is not None:
        s = hkl @ np.array(cell.frac.mat, dtype=float)
        s2 = np.einsum("ij,ij->i", s, s)
        # (1 / dmin^2 was a ZeroDivisionError for -dmin 1e-300: dmin^2 is 0 there)
        near = s2 * (dmin * dmin) <= 1 + 1e-12
        report.beyond_dmin = int((keep_rows & ~near).sum())
        if not np.any(keep_rows & near):
            d = 1.0 / np.sqrt(s2[keep_rows]) if np.any(keep_rows) else np.array([math.nan])
            raise UsageError("-dmin %g: no reflection of %s has d >= %g A (its largest d-spacing is %.4g A)"
                             % (dmin, path, dmin, float(np.max(d))))
        keep_rows &= near
    # screw-axis and glide absences are 0 in the crystal whatever the file holds
    # there: left out like the file's missing values, and counted
    absent = keep_rows & _absent(hkl, rots, trans, den)
    report.absent = int(absent.sum())
    keep_rows &= ~absent
    valm = mtz.valm
    parts = []
    missing = 0
    halves = [(cols[0], 1)] + ([(cols[1], -1)] if anomalous else [])
    for col, sign in halves:
        v = data[:, col.idx]
        gone = np.isnan(v) | ((v == valm) if not math.isnan(valm) else False)
        use = keep_rows & ~gone
        missing += int((keep_rows & gone).sum())
        v = v[use]
        rows = np.flatnonzero(use)
        if not np.all(np.isfinite(v)):
            r = rows[np.flatnonzero(~np.isfinite(v))[0]]
            raise InputFileError("%s: column %s holds %g at %d %d %d: not a finite value"
                                 % (path, col.label, data[r, col.idx], *hkl[r].tolist()))
        if intensities:
            neg = v < 0
            report.negative_I += int(neg.sum())
            v = np.sqrt(np.where(neg, 0.0, v))
        elif np.any(v < 0):
            r = rows[np.flatnonzero(v < 0)[0]]
            raise InputFileError("%s: column %s (type %s, %s) holds %d negative values (first %g at "
                                 "%d %d %d): amplitudes are >= 0"
                                 % (path, col.label, col.type, MTZ_TYPES[col.type], int((v < 0).sum()),
                                    data[r, col.idx], *hkl[r].tolist()))
        # the (-) half of row h is the value at -h
        rots = _hkl_rotations(gemmi, sg, not anomalous, path)
        parts.append((sign * hkl[rows], v, (hkl[rows], " (%s)" % col.label if anomalous else ""), rots))
    report.missing = missing
    if sum(len(p[1]) for p in parts) == 0:
        raise InputFileError("%s: no reflections left in column%s %s: %d rows, %d missing values%s%s"
                             % (path, "s" if anomalous else "", " and ".join(report.columns), report.rows,
                                missing, ", %d beyond -dmin %g" % (report.beyond_dmin, dmin)
                                if dmin is not None else "",
                                ", 0 0 0 left out" if report.origin else "")
                             + (", %d systematic absences left out" % report.absent if report.absent else ""))
    what = "column%s %s: reflections" % ("s" if anomalous else "", " and ".join(report.columns))
    out_hkl, out_F = _expand_p1(parts, path, what, sg.xhm())
    s = out_hkl @ np.array(cell.frac.mat, dtype=float)
    report.d_min = float(1.0 / math.sqrt(float(np.max(np.einsum("ij,ij->i", s, s)))))
    return out_hkl, out_F, report


def _mtz_summary(path: str, report: MTZReport, n_out: int, dmin: Optional[float]) -> List[str]:
    if len(report.columns) == 2:
        col = ("columns %s and %s (type %s, %s pair; data set '%s'), %s: %s at the symmetry mates "
               "of h, %s at those of -h" % (report.columns[0], report.columns[1], report.types,
                                            MTZ_TYPES[report.types], report.dataset, report.how,
                                            report.columns[0], report.columns[1]))
    else:
        col = ("column %s (type %s, %s; data set '%s'), %s"
               % (report.columns[0], report.types, MTZ_TYPES[report.types], report.dataset, report.how))
    if report.types in "JK":
        col += "; F = sqrt(max(I, 0)), %d negative intensities gave F = 0" % report.negative_I
    left = ["%d missing (NaN) left out" % report.missing]
    if dmin is not None:
        left.append("%d beyond -dmin %g left out" % (report.beyond_dmin, dmin))
    if report.absent:
        left.append("%d systematic absence%s left out" % (report.absent, "" if report.absent == 1 else "s"))
    if report.origin:
        left.append("0 0 0 left out")
    reso = "%g" % dmin if dmin is not None else "%.4g" % report.d_min
    return ["%s: %s: using %s" % (PROG, path, col),
            "%s: %d reflections in %s, %s; %d reflections to %s A, expanded to P1; use with %s"
            % (PROG, report.rows, report.spacegroup, ", ".join(left), n_out, reso,
               _cell_flags_of(report.cell))]


def _check_stdout_not_model(out, model: str, what: str = "model") -> None:
    """``nbnumba-sf in.pdb -dmin 3 >> in.pdb`` would append to the model."""
    import stat
    try:
        so = os.fstat(out.fileno())
        sm = os.stat(model)
    except (AttributeError, OSError, ValueError):     # no descriptor (a StringIO), no model
        return
    if stat.S_ISREG(so.st_mode) and os.path.samestat(so, sm):
        raise OutputFileError("refusing to write standard output: it is the %s file '%s'" % (what, model))


def _write_hkl(opts: SFOptions, out, text: str) -> None:
    from .io.atomic import atomic_write_bytes
    if opts.output:
        atomic_write_bytes(opts.output, text.encode("ascii"))
    else:
        # (main's quiet_broken_pipes: a full disk is one line, exit 2 (it was an
        # OSError traceback); a closed pipe or descriptor takes the text nowhere)
        out.write(text)
        out.flush()


def _printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogates) written as
    escapes: a stream that encodes strictly raised UnicodeEncodeError on them."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run(opts: SFOptions, out=None, err=None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from .io.atomic import check_not_input, check_writable
    if opts.output:
        # before anything is computed: '-o in.pdb' (or a link to it) replaced the model
        check_not_input(opts.output, [opts.model], "-o")
        check_writable(opts.output, "-o")
    else:
        _check_stdout_not_model(out, opts.model, "MTZ" if is_mtz(opts.model) else "model")
    if is_mtz(opts.model):
        mtz = read_mtz(opts.model)
        hkl, F, report = mtz_structure_factors(mtz, opts.model, opts.column, opts.intensities,
                                               opts.dmin if opts.dmin > 0 else None)
        _write_hkl(opts, out, hkl_text(hkl, F))
        for line in _mtz_summary(opts.model, report, len(F), opts.dmin if opts.dmin > 0 else None):
            print(_printable(line), file=err)
        return 0
    st = read_model(opts.model)
    hkl, F = structure_factors(st, opts.dmin, opts.bulk_solvent, opts.k_sol, opts.B_sol, opts.B_add,
                               source=opts.model)
    _write_hkl(opts, out, hkl_text(hkl, F))
    print("%s: %d reflections to %g A from %d atoms in %s, expanded to P1; use with %s"
          % (PROG, len(F), opts.dmin, st[0].count_atom_sites(), st.find_spacegroup().hm,
             cell_flags(st)), file=err)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = main_args(argv, PROG)
    if argv is None:
        return 2
    # stderr closed (2>&-): print(file=None) put the summary line (or the error)
    # into the HKL text on stdout; stdout closed: an AttributeError traceback.
    # The usage text goes through the same guard (a full disk or a reader that
    # left was a traceback there too).
    with quiet_broken_pipes(stdout_error=OutputFileError):
        try:
            if not argv or any(a in ("-h", "-help", "--help") for a in argv):
                print(USAGE)
                return 0 if argv else 2
            if argv == ["--version"]:
                from .extras import version_line
                print(version_line(PROG))
                return 0
            return run(parse_sf_argv(argv))
        except NBError as exc:
            print(_printable("%s: error: %s" % (PROG, exc)), file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("%s: interrupted; no output written" % PROG, file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
