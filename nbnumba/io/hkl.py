"""Structure-factor input: ``-hkl`` text files and the ``Fdump.bin`` cache.

The grid follows nanoBragg's memory layout exactly: ``F[h-h_min, k-k_min,
l-l_min]`` for indices in ``h_min..h_max`` etc., plus one extra index plane
at the top of each axis (C allocates ``range+1`` entries per axis).  The
extra planes are always 0.0; ``default_F`` pre-fills only the
``range**3`` block of real indices, as in C.

HKL text format: whitespace separated ``h k l F`` records.  nanoBragg scans
it as a stream of numbers and stops silently at the first one it cannot
parse.  This reader is stricter:

* every non-blank line must hold exactly four numbers;
* a bad line followed only by blank lines is ignored, like C's silent stop
  (a note is added to ``HKLGrid.warnings``);
* a bad line with data after it raises :class:`InputFileError` with file
  name, line number and the offending text;
* non-finite h, k or l raise, and so do indices beyond a C ``int`` (C keeps
  them, and the grid's bounds, in ints: such a file is undefined behaviour
  there); non-integer h, k, l give C's warning text, with the 1-based line of
  the file, and are truncated toward zero for the second pass (C would re-read
  them with ``%d`` and stop early);
* a non-finite F (``nan``, ``inf``, or a number beyond double range) raises,
  unless ``allow_nonfinite_F`` (``-c_parity``: nanoBragg.c reads it with
  ``%lg`` and renders NaN or inf pixels);
* a file with no records raises (C: "not enough HKL indices"), and says why
  when a line was not a record.

Lines end at LF (a CR before it is whitespace).  A file with no LF at all but
CRs (classic Mac OS line ends) has its CRs read as line ends: nanoBragg.c reads
numbers as a stream, and CR is whitespace to ``fscanf``, so it reads such a
file record by record, and so does this reader (a CR inside an LF-terminated
line stays whitespace, as before).
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from nbnumba.errors import InputFileError
from nbnumba.io._args import IOArgumentError, read_bytes
from nbnumba.io._cnum import parse_c_number
from nbnumba.io.atomic import atomic_open
from nbnumba.io.smv import format_g
from nbnumba.io.sniff import misfed_hint

__all__ = ["HKLGrid", "read_hkl", "parse_hkl", "write_fdump", "read_fdump", "fdump_bytes"]

#: refuse grids larger than this many doubles (8 GiB)
MAX_GRID_ELEMENTS = 1 << 30
#: nanoBragg.c keeps Miller indices and the grid's bounds in C ints
C_INT_MIN, C_INT_MAX = -(1 << 31), (1 << 31) - 1


@dataclass
class HKLGrid:
    h_min: int
    h_max: int
    k_min: int
    k_max: int
    l_min: int
    l_max: int
    F: np.ndarray  # float64, shape (h_range+1, k_range+1, l_range+1)
    hkls: int = 0
    warnings: List[str] = field(default_factory=list)
    #: how many records nanoBragg.c's second pass ("%d%d%d%lg") stores when
    #: fewer than all: it stops at the first index not written as a C integer
    #: ('1.0', '1e1', '1.5'); None when it stores them all (docs/quirks.md #17)
    c_stored: Optional[int] = None

    @property
    def h_range(self) -> int:
        return self.h_max - self.h_min + 1

    @property
    def k_range(self) -> int:
        return self.k_max - self.k_min + 1

    @property
    def l_range(self) -> int:
        return self.l_max - self.l_min + 1

    def expected_shape(self) -> Tuple[int, int, int]:
        return (self.h_range + 1, self.k_range + 1, self.l_range + 1)


_SIMPLE_DECIMAL = re.compile(r"[0-9eE.+\-\s]*\Z")
_W = r"[ \t\r\f\v]"
#: a non-blank line whose first three words are not all C integers (a sign
#: and digits): where nanoBragg.c's "%d%d%d%lg" re-read stops
_NOT_C_INTS = re.compile(r"(?m)^(?!{w}*[+-]?[0-9]+{w}+[+-]?[0-9]+{w}+[+-]?[0-9]+(?:{w}|$)){w}*\S"
                         .format(w=_W))
#: bytes that str.split() treats as whitespace in latin-1 text
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[ord(c) for c in map(chr, range(256)) if c.isspace()]] = True


def _parse_fast(text: str) -> Optional[np.ndarray]:
    """All records as an (n, 4) array, or None if anything is unusual."""
    if not _SIMPLE_DECIMAL.match(text):
        return None  # letters, underscores, nan/inf, hex...: let the slow path judge
    # tokens per line (lines end at "\n", tokens are str.split()'s, whose
    # whitespace in latin-1 text is _WHITESPACE), counted with numpy: every
    # line must hold 0 or 4
    raw = np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    ws = _WHITESPACE[raw]
    if raw.size:
        starts = ~ws
        starts[1:] &= ws[:-1]
        line = np.cumsum(raw == 10)
        counts = np.bincount(line[starts], minlength=int(line[-1]) + 1)
        if not np.all((counts == 0) | (counts == 4)):
            return None
    tokens = text.split()
    try:
        arr = np.array(tokens, dtype=np.float64)
    except ValueError:
        return None
    return arr.reshape(-1, 4)


def _parse_slow(text: str, name: str, warn: List[str]) -> Tuple[np.ndarray, Optional[str]]:
    """(records, why): why describes the trailing line that was not a record
    (None if every non-blank line was one); a bad line with data after it raises."""
    rows: List[List[float]] = []
    why = None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        toks = line.split()
        if not toks:
            continue
        vals = [parse_c_number(t) for t in toks] if len(toks) == 4 else None
        if vals is not None and all(v is not None for v in vals):
            rows.append(vals)
            continue
        shown = line.strip()
        if len(shown) > 80:
            shown = shown[:77] + "..."
        # (a CR between a line's words, not at its ends, where it is whitespace
        # (CRLF, LFCR): the file mixes CR-only and LF line ends)
        hint = ("; it holds a carriage return (CR) inside the line, so the file mixes "
                "CR-only and LF line ends" if "\r" in line.strip() else "")
        if any(rest.strip() for rest in lines[i + 1:]):
            raise InputFileError(f"{name} line {i + 1}: expected 'h k l F', got '{shown}'{hint}")
        why = f"line {i + 1} is '{shown}', not 'h k l F'{hint}"
        warn.append(f"{name} line {i + 1}: ignoring trailing text '{shown}' (not 'h k l F'){hint}")
        break
    return np.array(rows, dtype=np.float64).reshape(-1, 4), why


def _record_lines(text: str, n: int) -> List[int]:
    """1-based file line of each of the first n records: both parsers read
    every non-blank line before the last record as a record, in order."""
    out: List[int] = []
    if n <= 0:
        return out
    for i, line in enumerate(text.split("\n")):
        if line.split():
            out.append(i + 1)
            if len(out) == n:
                break
    return out


def _c_stored(text: str, n: int) -> Optional[int]:
    """How many of the n records nanoBragg.c's second pass stores, when fewer:
    %d reads '1.0' as 1 and then fails on '.0', so the loop ends at the first
    record with such an index (its first pass, %lg, read them all).  None when
    it stores every record."""
    m = _NOT_C_INTS.search(text)
    if m is None:
        return None
    line = text.count("\n", 0, m.start()) + 1
    stored = sum(1 for x in _record_lines(text, n) if x < line)
    return stored if stored < n else None


def _nonint_warnings(hkl: np.ndarray, text: str) -> List[str]:
    """C's warning text, but with the file's 1-based line (C prints its 0-based
    record count there, which is the line before, or no line at all when the
    file has blank lines)."""
    out: List[str] = []
    bad = hkl != np.ceil(hkl - 0.4)
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size == 0:
        return out
    line_of = _record_lines(text, int(rows[-1]) + 1)
    for n in rows:
        for j, axis in enumerate("hkl"):
            if bad[n, j]:
                out.append(f"WARNING: non-integer value for {axis} ({format_g(hkl[n, j])}) "
                           f"at line {line_of[n]}")
    return out


def read_hkl(path, default_F: float = 0.0, memory=None,
             allow_nonfinite_F: bool = False, c_second_pass: bool = False) -> HKLGrid:
    """Read an ``h k l F`` text file into nanoBragg's structure-factor grid.

    ``memory``: optional (bytes, description) limit; a grid whose index ranges
    need more is refused before it is allocated (see nbnumba.validate).
    ``allow_nonfinite_F``: read a NaN or infinite F as nanoBragg.c does
    (``-c_parity``); by default it is refused with the file's line.
    ``c_second_pass``: store F only for the records nanoBragg.c's second pass
    reads (``-c_parity``; HKLGrid.c_stored); by default every record."""
    name, raw = read_bytes(path)
    return parse_hkl(raw, name, default_F, memory, allow_nonfinite_F, c_second_pass)


def _real_arg(what: str, v) -> float:
    """A real number (numpy scalars too) as a float, or IOArgumentError naming it
    (a list was a TypeError from float(), 10**400 an OverflowError)."""
    if not isinstance(v, (bool, np.bool_)) and isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:
            pass
    raise IOArgumentError("%s must be a number within double precision, got %.40r" % (what, v))


def _bool_arg(what: str, v) -> None:
    """True or False (an array's truth value was a ValueError)."""
    if not isinstance(v, (bool, np.bool_)):
        raise IOArgumentError("%s must be True or False, got %.40r" % (what, v))


def parse_hkl(data: bytes, name: str, default_F: float = 0.0, memory=None,
              allow_nonfinite_F: bool = False, c_second_pass: bool = False) -> HKLGrid:
    """read_hkl of a file's bytes; name is the file's name in messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):    # (an AttributeError on .decode)
        raise IOArgumentError("data must be the file's bytes, got %s%s"
                              % (type(data).__name__, " (read_hkl takes a file name)"
                                 if isinstance(data, str) else ""))
    default_F = _real_arg("default_F", default_F)
    _bool_arg("allow_nonfinite_F", allow_nonfinite_F)
    _bool_arg("c_second_pass", c_second_pass)
    text = bytes(data).decode("latin-1")
    if "\n" not in text and "\r" in text:
        # CR-only line ends (classic Mac OS): nanoBragg.c's fscanf stream reads
        # CR as whitespace, so it reads every record; read each CR as a line end
        # (a line per record, and the line numbers an editor shows)
        text = text.replace("\r", "\n")
    warn: List[str] = []
    why = None
    rec = _parse_fast(text)
    if rec is None:
        try:
            rec, why = _parse_slow(text, name, warn)
        except InputFileError as exc:
            raise InputFileError(str(exc) + misfed_hint(data, name, "hkl")) from None
    if rec.shape[0] == 0:
        # (the note on the ignored line is the reason: say it, it is not printed
        # otherwise; for a file of a known other kind, the kind is the reason)
        hint = misfed_hint(data, name, "hkl")
        raise InputFileError(f"{name}: no 'h k l F' records found"
                             + (hint if hint else " (not enough HKL indices)"
                                + (f": {why}" if why else "")))

    hkl = rec[:, :3]
    if not np.all(np.isfinite(hkl)):
        n = int(np.flatnonzero(~np.isfinite(hkl).all(axis=1))[0])
        raise InputFileError(f"{name} line {_record_lines(text, n + 1)[n]}: "
                             "record has a non-finite Miller index")
    # C converts each index to an int (truncation toward zero): beyond a C int
    # that is undefined there, and here int64 grid arithmetic would overflow
    # (an OverflowError after numpy's invalid-cast warning)
    trunc = np.trunc(hkl)
    outside = (trunc < C_INT_MIN) | (trunc > C_INT_MAX)
    if outside.any():
        n, j = (int(v) for v in np.argwhere(outside)[0])
        raise InputFileError(
            f"{name} line {_record_lines(text, n + 1)[n]}: Miller index {'hkl'[j]} = "
            f"{format_g(hkl[n, j])} is outside nanoBragg's int range ({C_INT_MIN}..{C_INT_MAX})")
    if not allow_nonfinite_F:
        # default mode: a NaN or infinite F gives NaN or inf pixels wherever its
        # reflection is sampled, and the image check could only blame the run
        # (nanoBragg.c reads it with %lg; -c_parity passes allow_nonfinite_F)
        badF = ~np.isfinite(rec[:, 3])
        if badF.any():
            n = int(np.flatnonzero(badF)[0])
            raise InputFileError(
                f"{name} line {_record_lines(text, n + 1)[n]}: structure factor F = "
                f"{format_g(rec[n, 3])} is not finite (h k l = {format_g(hkl[n, 0])} "
                f"{format_g(hkl[n, 1])} {format_g(hkl[n, 2])})")
    warn = _nonint_warnings(hkl, text) + warn
    n_records = int(rec.shape[0])

    # C keeps the running minima/maxima in ints (truncation toward zero);
    # since truncation is monotonic this equals truncating the float extremes.
    lo = [int(v) for v in hkl.min(axis=0)]
    hi = [int(v) for v in hkl.max(axis=0)]
    ranges = [hi[j] - lo[j] + 1 for j in range(3)]
    n_elem = (ranges[0] + 1) * (ranges[1] + 1) * (ranges[2] + 1)
    if n_elem > MAX_GRID_ELEMENTS:
        raise InputFileError(
            f"{name}: Miller index ranges {lo[0]}..{hi[0]}, {lo[1]}..{hi[1]}, "
            f"{lo[2]}..{hi[2]} need a grid that is too large"
        )
    if memory is not None:
        from nbnumba.validate import check_grid_memory
        check_grid_memory(name, n_elem, memory)

    F = np.zeros((ranges[0] + 1, ranges[1] + 1, ranges[2] + 1), dtype=np.float64)
    default_F = float(default_F)
    if default_F != 0.0:  # NaN counts as "set", like C's test
        F[: ranges[0], : ranges[1], : ranges[2]] = default_F

    c_stored = _c_stored(text, int(rec.shape[0]))
    if c_second_pass and c_stored is not None:
        rec, hkl = rec[:c_stored], hkl[:c_stored]     # the C's bounds, its F of these only
    idx = np.trunc(hkl).astype(np.int64) - np.array(lo, dtype=np.int64)
    flat = np.ravel_multi_index((idx[:, 0], idx[:, 1], idx[:, 2]), F.shape)
    # later duplicates win, as in the C loop
    rev_flat = flat[::-1]
    _, first_in_rev = np.unique(rev_flat, return_index=True)
    keep = len(flat) - 1 - first_in_rev
    F.reshape(-1)[flat[keep]] = rec[keep, 3]
    if len(keep) < len(flat):
        # (nanoBragg.c keeps the last one silently and counts every record)
        first = int(np.flatnonzero(np.bincount(flat)[flat] > 1)[0])
        same = np.flatnonzero(flat == flat[first])
        lines = _record_lines(text, int(same[-1]) + 1)
        n_rep = len(flat) - len(keep)
        warn.append(f"WARNING: {name}: {n_rep} record{' repeats' if n_rep == 1 else 's repeat'} "
                    f"a reflection given before, and the last one's F is kept (h k l = "
                    f"{' '.join(format_g(x) for x in hkl[first])} on lines "
                    f"{', '.join(str(lines[i]) for i in same)})")

    return HKLGrid(lo[0], hi[0], lo[1], hi[1], lo[2], hi[2], F, n_records, warn, c_stored)


# ---------------------------------------------------------------------------
# Fdump.bin
# ---------------------------------------------------------------------------

def fdump_bytes(grid: HKLGrid) -> bytes:
    """The exact bytes nanoBragg writes to ``Fdump.bin`` for ``grid``."""
    if not isinstance(grid, HKLGrid):       # (an AttributeError on .h_min)
        raise IOArgumentError("grid must be an HKLGrid (see read_hkl), got %s"
                              % type(grid).__name__)
    bounds = (grid.h_min, grid.h_max, grid.k_min, grid.k_max, grid.l_min, grid.l_max)
    for label, v in zip(("h_min", "h_max", "k_min", "k_max", "l_min", "l_max"), bounds):
        # (read_fdump, and nanoBragg.c's %d, read nothing else back)
        if (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                or not C_INT_MIN <= int(v) <= C_INT_MAX):
            raise IOArgumentError(f"HKLGrid.{label} must be a whole number within a C int, "
                                  f"got {v!r:.40}")
    F = np.asarray(grid.F)
    if F.shape != grid.expected_shape():
        raise IOArgumentError(f"HKLGrid.F has shape {F.shape}, expected {grid.expected_shape()}")
    head = "%d %d %d %d %d %d\n\f" % tuple(int(v) for v in bounds)
    return head.encode("ascii") + np.ascontiguousarray(F, dtype="<f8").tobytes()


def write_fdump(path, grid: HKLGrid) -> None:
    """Write the structure-factor cache like nanoBragg (atomically):
    ``"h_min h_max k_min k_max l_min l_max\\n\\f"`` then all
    ``(h_range+1)*(k_range+1)*(l_range+1)`` doubles, little-endian, h outermost."""
    payload = fdump_bytes(grid)
    with atomic_open(path, "wb") as fh:
        fh.write(payload)


_FDUMP_HEAD = re.compile(
    rb"[ \t\r\n\v]*([+-]?[0-9]+)[ \t]+([+-]?[0-9]+)[ \t]+([+-]?[0-9]+)[ \t]+"
    rb"([+-]?[0-9]+)[ \t]+([+-]?[0-9]+)[ \t]+([+-]?[0-9]+)\n\f"
)


def read_fdump(path, memory=None, allow_nonfinite_F: bool = False) -> HKLGrid:
    """Read an ``Fdump.bin`` written by nanoBragg or :func:`write_fdump`.

    ``hkls`` is set to ``h_range*k_range*l_range`` as in C.  A file shorter
    than its header promises raises :class:`InputFileError` (C would keep
    zeros); extra trailing bytes are ignored.  Header bounds beyond a C int
    raise (C reads them with ``%d``), and so does a NaN or infinite double
    unless ``allow_nonfinite_F`` (``-c_parity``: C reads the doubles as they are).
    """
    _bool_arg("allow_nonfinite_F", allow_nonfinite_F)
    name, raw = read_bytes(path)
    m = _FDUMP_HEAD.match(raw[:512])
    if m is None:
        raise InputFileError(
            f"{name}: not an Fdump file (expected header 'h_min h_max k_min k_max l_min l_max' "
            "followed by newline and form feed)"
        )
    for label, g in zip(("h_min", "h_max", "k_min", "k_max", "l_min", "l_max"), m.groups()):
        if not C_INT_MIN <= int(g) <= C_INT_MAX:
            shown = g.decode("ascii")
            if len(shown) > 24:
                shown = shown[:21] + "..."
            raise InputFileError(f"{name}: Fdump header: {label} = {shown} is outside "
                                 f"nanoBragg's int range ({C_INT_MIN}..{C_INT_MAX})")
    h_min, h_max, k_min, k_max, l_min, l_max = (int(g) for g in m.groups())
    hr, kr, lr = h_max - h_min + 1, k_max - k_min + 1, l_max - l_min + 1
    if hr < 0 or kr < 0 or lr < 0:
        raise InputFileError(f"{name}: invalid index ranges in Fdump header")
    shape = (hr + 1, kr + 1, lr + 1)
    count = shape[0] * shape[1] * shape[2]
    if count > MAX_GRID_ELEMENTS:
        raise InputFileError(f"{name}: Fdump index ranges are too large")
    if memory is not None:
        from nbnumba.validate import check_grid_memory
        check_grid_memory(name, count, memory)
    offset = m.end()
    need = 8 * count
    have = len(raw) - offset
    if have < need:
        raise InputFileError(
            f"{name}: truncated Fdump data: expected {need} bytes of doubles after the header, "
            f"found {have}"
        )
    F = np.frombuffer(raw, dtype="<f8", count=count, offset=offset).astype(np.float64)
    F = F.reshape(shape)
    if not allow_nonfinite_F:
        # default mode (see read_hkl): name the double, its h k l and its byte
        bad = ~np.isfinite(F)
        if bad.any():
            flat = int(np.flatnonzero(bad.reshape(-1))[0])
            i, j, k = np.unravel_index(flat, shape)
            raise InputFileError(
                f"{name}: double {flat + 1} of the F grid (h k l = {h_min + int(i)} "
                f"{k_min + int(j)} {l_min + int(k)}, byte {offset + 8 * flat}) is "
                f"{format_g(F.reshape(-1)[flat])}, not a finite structure factor")
    return HKLGrid(h_min, h_max, k_min, k_max, l_min, l_max, F, hr * kr * lr)
