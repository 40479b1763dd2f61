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
exit status 2.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import ConfigError, InputFileError, NBError, UsageError

PROG = "nbnumba-sf"

USAGE = """\
usage: nbnumba-sf MODEL -dmin D [-o FILE] [-bulk_solvent] [-k_sol K] [-B_sol B] [-B_add B]

Structure factors of an atomic model (PDB or mmCIF, read with gemmi), expanded
to P1 over the whole sphere, as 'h k l F' lines for nanoBragg's -hkl.

  MODEL            model file: .pdb, .ent, .cif, .mmcif (gzip allowed)
  -dmin D          resolution limit in Angstrom (required, > 0)
  -o FILE          write FILE (atomically) instead of standard output
  -bulk_solvent    add a flat bulk-solvent contribution (gemmi solvent mask)
  -k_sol K         solvent electron density in e/A^3 (default 0.35)
  -B_sol B         solvent B factor in A^2 (default 46)
  -B_add B         add B (A^2) to every atom's B factor (default 0)
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
    try:
        v = float(text)
    except ValueError:
        raise UsageError("%s: '%s' is not a number" % (flag, text)) from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise UsageError("%s must be a %snumber, not '%s'" % (flag, "positive " if positive else "finite ", text))
    return v


def parse_sf_argv(argv: Sequence[str]) -> SFOptions:
    o = SFOptions()
    args = list(argv)
    i = 0
    values = {"-dmin": "dmin", "-k_sol": "k_sol", "-B_sol": "B_sol", "-B_add": "B_add"}
    while i < len(args):
        a = args[i]
        if a in values or a in ("-o", "-output"):
            if i + 1 >= len(args):
                raise UsageError("%s needs a value" % a)
            v = args[i + 1]
            if a in ("-o", "-output"):
                o.output = v
            else:
                setattr(o, values[a], _number(a, v, positive=(a == "-dmin")))
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
    c = st.cell
    if not (c.a > 1.0 and c.b > 1.0 and c.c > 1.0) or c.volume <= 1.0:
        raise InputFileError("%s: no unit cell (CRYST1 / _cell) in the model" % path)
    if st.find_spacegroup() is None:
        raise InputFileError("%s: unknown space group '%s'" % (path, st.spacegroup_hm))
    st.setup_cell_images()
    return st


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


def structure_factors(st, dmin: float, bulk_solvent: bool = False, k_sol: float = 0.35,
                      B_sol: float = 46.0, B_add: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """(hkl (N, 3) int, F (N,) float) for the whole sphere ``d >= dmin`` (A), Friedel
    mates included, ``0 0 0`` excluded, sorted by h, k, l.  F in electrons."""
    gemmi = _gemmi()
    if B_add:
        for res in st[0].all():
            res.atom.b_iso += B_add
            if res.atom.aniso.nonzero():
                u = B_add / (8 * math.pi ** 2)
                a = res.atom.aniso
                res.atom.aniso = gemmi.SMat33f(a.u11 + u, a.u22 + u, a.u33 + u, a.u12, a.u13, a.u23)
    cell = st.cell
    hkl, s2 = half_sphere_indices((cell.a, cell.b, cell.c), np.array(cell.frac.mat), dmin)
    calc = gemmi.StructureFactorCalculatorX(cell)
    model = st[0]
    f = np.array([calc.calculate_sf_from_model(model, [int(h), int(k), int(l)]) for h, k, l in hkl],
                 dtype=complex)
    if bulk_solvent:
        f = f + k_sol * np.exp(-B_sol * s2 / 4.0) * _solvent_f(gemmi, st, hkl, dmin)
    amp = np.abs(f)
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


def run(opts: SFOptions, out=None, err=None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    st = read_model(opts.model)
    hkl, F = structure_factors(st, opts.dmin, opts.bulk_solvent, opts.k_sol, opts.B_sol, opts.B_add)
    text = hkl_text(hkl, F)
    if opts.output:
        from .io.atomic import atomic_write_bytes
        atomic_write_bytes(opts.output, text.encode("ascii"))
    else:
        out.write(text)
        out.flush()
    print("%s: %d reflections to %g A from %d atoms in %s, expanded to P1; use with %s"
          % (PROG, len(F), opts.dmin, st[0].count_atom_sites(), st.find_spacegroup().hm,
             cell_flags(st)), file=err)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "-help", "--help") for a in argv):
        print(USAGE)
        return 0 if argv else 2
    try:
        return run(parse_sf_argv(argv))
    except NBError as exc:
        print("%s: error: %s" % (PROG, exc), file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("%s: interrupted; no output written" % PROG, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
