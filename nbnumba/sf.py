"""``nbnumba-sf``: a P1 structure-factor file (``-hkl``) from an atomic model, with gemmi.

::

    nbnumba-sf model.pdb -dmin 2.0 > P1.hkl
    nbnumba-sf model.cif -dmin 1.5 -bulk_solvent -o P1.hkl

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
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, InputFileError, NBError, UsageError, quiet_broken_pipes
from .io.atomic import OutputFileError

PROG = "nbnumba-sf"

USAGE = """\
usage: nbnumba-sf MODEL -dmin D [-o FILE] [-bulk_solvent] [-k_sol K] [-B_sol B] [-B_add B]

Structure factors of an atomic model (PDB or mmCIF, read with gemmi), expanded
to P1 over the whole sphere, as 'h k l F' lines for nanoBragg's -hkl.

  MODEL            model file: .pdb, .ent, .cif, .mmcif (gzip allowed)
  -dmin D          resolution limit in Angstrom (required, > 0)
  -o FILE          write FILE (atomically) instead of standard output
  -bulk_solvent    add a flat bulk-solvent contribution (gemmi solvent mask)
  -k_sol K         solvent electron density in e/A^3, >= 0 (default 0.35; needs -bulk_solvent)
  -B_sol B         solvent B factor in A^2 (default 46; needs -bulk_solvent)
  -B_add B         add B (A^2) to every atom's B factor (default 0); every B must
                   stay >= -320 D^2 (exp(-B s^2/4) within e^80 at -dmin D)
  -h, --help       this text

Example: nbnumba-sf model.pdb -dmin 2.0 > P1.hkl
         nbnumba -hkl P1.hkl -cell <the cell printed on stderr> ...
Needs gemmi: pip install "nbnumba[sf]"."""


@dataclass
class SFOptions:
    model: str = ""
    dmin: float = 0.0
    output: Optional[str] = None
    bulk_solvent: bool = False
    k_sol: float = 0.35     # e/A^3
    B_sol: float = 46.0     # A^2
    B_add: float = 0.0      # A^2


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
        if a in values or a in ("-o", "-output"):
            if i + 1 >= len(args):
                raise UsageError("%s needs a value" % a)
            v = args[i + 1]
            if a in ("-o", "-output"):
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
        elif a.startswith("-") and len(a) > 1:
            raise UsageError("unknown flag '%s'" % a)
        elif o.model:
            raise UsageError("one model file only (got '%s' and '%s')" % (o.model, a))
        else:
            o.model = a
        i += 1
    if not o.model:
        raise UsageError("no model file given")
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
    if not os.path.isfile(path):
        raise InputFileError("%s: no such model file" % path)
    try:
        st = gemmi.read_structure(path)
    except Exception as exc:   # gemmi raises RuntimeError/ValueError/OSError with its own text
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError("%s: cannot read model: %s" % (path, first)) from None
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputFileError("%s: the model has no atoms" % path)
    check_cell(st, path)
    if st.find_spacegroup() is None:
        raise InputFileError("%s: unknown space group '%s'" % (path, st.spacegroup_hm))
    check_atoms(st, path)
    st.setup_cell_images()
    return st


def check_cell(st, path: str) -> None:
    """InputFileError unless the model's cell is a real cell.  gemmi leaves
    1 1 1 90 90 90 when there is no CRYST1 / _cell; for angles 170 170 170 its
    volume is NaN (and ``volume <= 1.0`` is False for NaN: 0 reflections and a
    -cell that nbnumba refuses), for alpha = nan the file came out empty."""
    c = st.cell
    par = (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)
    if c.a == c.b == c.c == 1.0 and c.alpha == c.beta == c.gamma == 90.0:
        raise InputFileError("%s: no unit cell (CRYST1 / _cell) in the model" % path)
    if not (all(math.isfinite(x) for x in par) and min(par[:3]) > 1.0
            and all(0.0 < x < 180.0 for x in par[3:]) and c.volume > 1.0):
        raise InputFileError("%s: impossible unit cell %s (volume %g A^3): the edges must be "
                             "> 1 A, the angles between 0 and 180 degrees, and the volume > 1 A^3"
                             % (path, " ".join("%g" % x for x in par), c.volume))


#: |x|, |y|, |z| above this (A) are not a model's atoms: at 1e300 A the phase
#: 2 pi h.x has no significant digit left and F was quietly wrong
COORD_MAX = 1.0e6


def _atom_name(cra) -> str:
    return "atom %d (%s)" % (cra.atom.serial, cra)


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


def _solvent_f(gemmi, st, hkl: np.ndarray, dmin: float) -> np.ndarray:
    """Complex structure factors of the solvent mask (1 inside solvent, 0 in protein)."""
    grid = gemmi.FloatGrid()
    grid.setup_from(st, spacing=min(dmin / 3.0, 1.0))
    masker = gemmi.SolventMasker(gemmi.AtomicRadiiSet.Refmac)
    masker.put_mask_on_float_grid(grid, st[0])
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
            fmask = _solvent_f(gemmi, st, hkl, dmin)
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
    c = st.cell
    return "-cell %g %g %g %g %g %g" % (c.a, c.b, c.c, c.alpha, c.beta, c.gamma)


def _check_stdout_not_model(out, model: str) -> None:
    """``nbnumba-sf in.pdb -dmin 3 >> in.pdb`` would append to the model."""
    import stat
    try:
        so = os.fstat(out.fileno())
        sm = os.stat(model)
    except (AttributeError, OSError, ValueError):     # no descriptor (a StringIO), no model
        return
    if stat.S_ISREG(so.st_mode) and os.path.samestat(so, sm):
        raise OutputFileError("refusing to write standard output: it is the model file '%s'" % model)


def run(opts: SFOptions, out=None, err=None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from .io.atomic import atomic_write_bytes, check_not_input, check_writable
    if opts.output:
        # before anything is computed: '-o in.pdb' (or a link to it) replaced the model
        check_not_input(opts.output, [opts.model], "-o")
        check_writable(opts.output, "-o")
    else:
        _check_stdout_not_model(out, opts.model)
    st = read_model(opts.model)
    hkl, F = structure_factors(st, opts.dmin, opts.bulk_solvent, opts.k_sol, opts.B_sol, opts.B_add,
                               source=opts.model)
    text = hkl_text(hkl, F)
    if opts.output:
        atomic_write_bytes(opts.output, text.encode("ascii"))
    else:
        # (main's quiet_broken_pipes: a full disk is one line, exit 2 (it was an
        # OSError traceback); a closed pipe or descriptor takes the text nowhere)
        out.write(text)
        out.flush()
    print("%s: %d reflections to %g A from %d atoms in %s, expanded to P1; use with %s"
          % (PROG, len(F), opts.dmin, st[0].count_atom_sites(), st.find_spacegroup().hm,
             cell_flags(st)), file=err)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # stderr closed (2>&-): print(file=None) put the summary line (or the error)
    # into the HKL text on stdout; stdout closed: an AttributeError traceback.
    # The usage text goes through the same guard (a full disk or a reader that
    # left was a traceback there too).
    with quiet_broken_pipes(stdout_error=OutputFileError):
        try:
            if not argv or any(a in ("-h", "-help", "--help") for a in argv):
                print(USAGE)
                return 0 if argv else 2
            return run(parse_sf_argv(argv))
        except NBError as exc:
            print("%s: error: %s" % (PROG, exc), file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("%s: interrupted; no output written" % PROG, file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
