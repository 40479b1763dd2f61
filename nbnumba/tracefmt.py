"""Parsing and formatting of nanoBragg-style trace logs.

The C reference prints, for one traced pixel, lines of three shapes:

* detector-setup lines, ``TRACE_C:key=value`` (the value may be a vector
  ``0 0 1``, a matrix ``[1 0 0; 0 1 0; 0 0 1]``, labelled numbers
  ``rotx:0 roty:0`` or free text such as ``MOSFLM``);
* per-pixel lines, ``TRACE_C: key v1 v2 ...`` (numbers printed with ``%.15g``
  or ``%d``);
* per-phi lines, ``TRACE_C_PHI phi_tic=%d phi_deg=%.15g k_frac=%.15g
  F_latt_b=%.15g F_latt=%.15g``.

The port prints the same with ``TRACE_PY`` in place of ``TRACE_C``.  Tagged
variants such as ``TRACE_C_TAP5: key v`` are read too; their key is prefixed
with the tag (``TAP5:key``).  Every other line of a log (progress messages,
``TRACE:`` free text, ``TRACE_CONFIG:``) is ignored, so a whole stdout capture
can be handed to :func:`parse_trace`.

Keys can repeat (setup code that runs twice, several subpixels hitting the
trace condition); the n-th occurrence (n >= 2) of ``key`` is named ``key#n``.

A per-phi line that neither program can print is refused with
:class:`TraceFormatError`, naming the line and the field: a field that is not
``name=number``, no ``phi_tic``, or a ``phi_tic`` that is not an integer of C's
``int`` range (``%d`` prints nothing else; ``nan``, ``1.5`` or ``1e400`` were a
ValueError/OverflowError from ``int()``, or silently truncated).  The other
fields may be ``nan``/``inf``: C prints those.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

from .errors import InputFileError

Value = Union[int, float, str]

__all__ = [
    "Value",
    "TraceEntry",
    "Trace",
    "TraceFormatError",
    "parse_trace",
    "parse_values",
    "format_value",
    "format_line",
    "format_phi_line",
    "format_trace",
    "PHI_FIELDS",
]

#: Fields of a per-phi line, in print order.
PHI_FIELDS = ("phi_tic", "phi_deg", "k_frac", "F_latt_b", "F_latt")

# "TRACE_C:" / "TRACE_PY:" optionally followed by a tag ("TRACE_C_TAP5:").
_MAIN_RE = re.compile(r"^TRACE_(C|PY)(?:_([A-Za-z0-9_]+))?:(.*)$")
_PHI_RE = re.compile(r"^TRACE_(C|PY)_PHI\s+(.*)$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_LABEL_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(.+)$")

#: ``phi_tic`` is a C ``int`` printed with ``%d``
_INT_MIN, _INT_MAX = -(2 ** 31), 2 ** 31 - 1


class TraceFormatError(InputFileError, ValueError):
    """A trace line that neither nanoBragg.c nor the port prints.

    The one-line message names the log (when :func:`parse_trace` was given
    ``source``), the 1-based line number and the field; ``line`` and
    ``field`` are also attributes.
    """

    def __init__(self, message: str, line: int = 0, field: str = "", source: str = ""):
        where = f"{source} line {line}" if source else f"line {line}"
        shown = field if len(field) <= 60 else field[:57] + "..."   # a 5-million-digit value
        super().__init__(f"{where}: {shown}: {message}" if field else f"{where}: {message}")
        self.line = line
        self.field = field
        self.source = source


def format_value(x: Value) -> str:
    """Format one trace value the way C's ``printf("%.15g")`` / ``"%d"`` does.

    Integers (Python or NumPy) print as ``%d``; floats as ``%.15g`` with glibc
    spellings for non-finite values (``nan``, ``-nan``, ``inf``, ``-inf``).
    Strings are returned unchanged.
    """
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "%d" % int(x)
    if isinstance(x, int) or (hasattr(x, "dtype") and getattr(x.dtype, "kind", "") in "iu"):
        return "%d" % int(x)
    xf = float(x)
    if math.isnan(xf):
        return "-nan" if math.copysign(1.0, xf) < 0 else "nan"
    if math.isinf(xf):
        return "-inf" if xf < 0 else "inf"
    return "%.15g" % xf


def _parse_token(tok: str) -> Value:
    """Number if the token is one (int for ``%d``-looking text), else the string."""
    # an int of more digits than any %d can print is read as a float: int() of a
    # huge token raises (Python's 4300-digit limit) and costs quadratic time
    if len(tok) <= 24 and _INT_RE.match(tok) and not (tok.startswith("-") and int(tok) == 0):
        return int(tok)  # "-0" stays a float so its sign survives
    try:
        return float(tok)  # handles 1e-05, -0, nan, -nan, inf, -inf
    except ValueError:
        return tok


def parse_values(text: str) -> tuple[list[Value], list[str]]:
    """Split a value text into numbers/strings.

    Matrix punctuation (``[``, ``]``, ``;``) is dropped so a 3x3 matrix becomes
    9 numbers (row-major).  ``label:number`` tokens give the number, and the
    labels are returned as the second element (empty strings for unlabelled
    tokens; an empty list when no token is labelled).
    """
    values: list[Value] = []
    labels: list[str] = []
    cleaned = text.replace("[", " ").replace("]", " ").replace(";", " ")
    for tok in cleaned.split():
        m = _LABEL_RE.match(tok)
        if m and not isinstance(_parse_token(m.group(2)), str):
            labels.append(m.group(1))
            values.append(_parse_token(m.group(2)))
        else:
            labels.append("")
            values.append(_parse_token(tok))
    if not any(labels):
        labels = []
    return values, labels


@dataclass
class TraceEntry:
    """One ``TRACE_*: key ...`` line.

    ``name`` is the key with its occurrence suffix (``key`` or ``key#n``),
    ``values`` the parsed values, ``style`` is ``"space"`` for
    ``TRACE_C: key v ...`` lines and ``"eq"`` for ``TRACE_C:key=value`` lines,
    ``raw`` the exact value text as printed, ``tag`` the optional sub-tag
    (``TAP5`` for ``TRACE_C_TAP5:``), ``line`` the 1-based line number in the log.
    """

    key: str
    occurrence: int
    values: list[Value]
    style: str = "space"
    raw: str = ""
    labels: list[str] = field(default_factory=list)
    tag: str = ""
    line: int = 0
    prefix: str = "C"

    @property
    def name(self) -> str:
        return self.key if self.occurrence == 1 else f"{self.key}#{self.occurrence}"

    @property
    def is_numeric(self) -> bool:
        return all(not isinstance(v, str) for v in self.values)


@dataclass
class Trace:
    """Parsed trace log.

    Iterating yields ``(name, values)`` pairs in log order.  ``trace[name]``
    returns the values of one (possibly ``#n``-suffixed) key.  ``phi`` holds
    one dict per per-phi line (fields of :data:`PHI_FIELDS`, ``phi_tic`` an int)
    and ``phi_lines`` their 1-based line numbers.
    """

    entries: list[TraceEntry] = field(default_factory=list)
    phi: list[dict] = field(default_factory=list)
    phi_lines: list[int] = field(default_factory=list)
    prefixes: set = field(default_factory=set)

    def __iter__(self) -> Iterator[tuple[str, list[Value]]]:
        for e in self.entries:
            yield e.name, e.values

    def __len__(self) -> int:
        return len(self.entries)

    def items(self) -> list[tuple[str, list[Value]]]:
        return list(self)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def entry(self, name: str) -> TraceEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(name)

    def __getitem__(self, name: str) -> list[Value]:
        return self.entry(name).values

    def __contains__(self, name: object) -> bool:
        return any(e.name == name for e in self.entries)

    def get(self, name: str, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def scalar(self, name: str, default=None):
        """First value of ``name`` (or ``default`` when absent/empty)."""
        vals = self.get(name)
        return vals[0] if vals else default

    @property
    def empty(self) -> bool:
        return not self.entries and not self.phi


class _BadField(Exception):
    """(field, reason) of a malformed per-phi line; parse_trace adds the line."""


def _phi_tic(tok: str, pv: Value) -> int:
    """``phi_tic`` as the int C printed (``%d``): a float is accepted only when it
    is a whole number (``1e0``); ``nan``, ``inf``, ``1.5`` are refused."""
    if isinstance(pv, float):
        if not (math.isfinite(pv) and pv == math.floor(pv)):
            raise _BadField(tok, "phi_tic must be an integer (C prints it with %d)")
        pv = int(pv)
    if not _INT_MIN <= pv <= _INT_MAX:
        raise _BadField(tok, f"phi_tic must be within C's int range [{_INT_MIN}, {_INT_MAX}]")
    return pv


def _parse_phi(body: str) -> dict:
    """Fields of a per-phi line (``phi_tic`` an int, the others floats)."""
    row: dict = {}
    for tok in body.split():
        k, sep, v = tok.partition("=")
        if not sep or not k:
            raise _BadField(tok, "expected name=value")
        pv = _parse_token(v)
        if isinstance(pv, str):
            raise _BadField(tok, "not a number")
        row[k] = _phi_tic(tok, pv) if k == "phi_tic" else float(pv)
    if "phi_tic" not in row:
        raise _BadField("phi_tic", "missing: a per-phi line needs phi_tic=N")
    return row


def parse_trace(text: str, source: Optional[str] = None) -> Trace:
    """Parse a C or port trace log (any surrounding non-trace lines are skipped).

    A malformed per-phi line raises :class:`TraceFormatError`, whose message
    names ``source`` (the log's file name, when given), the line and the field.
    """
    trace = Trace()
    counts: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip("\r\n")
        if not line.startswith("TRACE_"):
            continue
        m = _PHI_RE.match(line)
        if m:
            try:
                row = _parse_phi(m.group(2))
            except _BadField as exc:
                raise TraceFormatError(exc.args[1], lineno, exc.args[0], source or "") from None
            trace.phi.append(row)
            trace.phi_lines.append(lineno)
            trace.prefixes.add(m.group(1))
            continue
        m = _MAIN_RE.match(line)
        if not m:
            continue
        prefix, tag, body = m.group(1), m.group(2) or "", m.group(3)
        if tag == "PHI":
            continue
        if body.startswith(" ") or body.startswith("\t"):
            parts = body.split(None, 1)
            if not parts:
                continue
            key = parts[0]
            raw = parts[1] if len(parts) > 1 else ""
            style = "space"
            if "=" in key and tag:
                # e.g. "TRACE_C_TAP5_HKL: subpixel=0 0 hkl_frac=..." -- keep as text
                key, _, rest = body.strip().partition("=")
                raw = rest
                style = "spaceeq"
        else:
            key, sep, raw = body.partition("=")
            if not sep or not key:
                continue
            style = "eq"
        key = key.strip()
        if not key:
            continue
        full_key = f"{tag}:{key}" if tag else key
        values, labels = parse_values(raw)
        if style != "space" and any(isinstance(v, str) for v in values):
            # free text ("MOSFLM", "Fbeam<-Ybeam_mm(+0.5px),...") is one string value
            values, labels = [raw.strip()], []
        counts[full_key] = counts.get(full_key, 0) + 1
        trace.entries.append(
            TraceEntry(
                key=full_key,
                occurrence=counts[full_key],
                values=values,
                style=style,
                raw=raw,
                labels=labels,
                tag=tag,
                line=lineno,
                prefix=prefix,
            )
        )
        trace.prefixes.add(prefix)
    return trace


def format_line(key: str, values: Sequence[Value], prefix: str = "TRACE_PY") -> str:
    """``TRACE_PY: key v1 v2 ...`` with each value through :func:`format_value`."""
    if not values:
        return f"{prefix}: {key}"
    return f"{prefix}: {key} " + " ".join(format_value(v) for v in values)


def format_phi_line(
    phi_tic: int,
    phi_deg: float,
    k_frac: float,
    F_latt_b: float,
    F_latt: float,
    prefix: str = "TRACE_PY_PHI",
) -> str:
    """Per-phi line in the C layout (``prefix`` ``TRACE_PY_PHI`` or ``TRACE_C_PHI``)."""
    return (
        f"{prefix} phi_tic={int(phi_tic)} phi_deg={format_value(float(phi_deg))} "
        f"k_frac={format_value(float(k_frac))} F_latt_b={format_value(float(F_latt_b))} "
        f"F_latt={format_value(float(F_latt))}"
    )


def format_trace(trace: Trace, prefix: str = "TRACE_PY") -> str:
    """Re-emit a parsed trace (entries and per-phi lines in original order).

    ``prefix`` is ``TRACE_PY`` or ``TRACE_C``.  ``eq``-style entries are
    written from their raw text, so parsing the result gives back the same
    entries; numeric per-pixel values are re-formatted with ``%.15g``/``%d``,
    which reproduces C's text exactly.
    """
    items: list[tuple[int, str]] = []
    for e in trace.entries:
        p = f"{prefix}_{e.tag}" if e.tag else prefix
        if e.style == "eq":
            items.append((e.line, f"{p}:{e.key.split(':', 1)[-1] if e.tag else e.key}={e.raw}"))
        elif e.style == "spaceeq":
            items.append((e.line, f"{p}: {e.key.split(':', 1)[-1]}={e.raw}"))
        else:
            key = e.key.split(":", 1)[-1] if e.tag else e.key
            items.append((e.line, format_line(key, e.values, p)))
    for row, ln in zip(trace.phi, trace.phi_lines):
        items.append(
            (
                ln,
                f"{prefix}_PHI "
                + " ".join(
                    f"{k}={format_value(v) if k != 'phi_tic' else int(v)}" for k, v in row.items()
                ),
            )
        )
    items.sort(key=lambda t: t[0])
    return "\n".join(s for _, s in items) + ("\n" if items else "")
