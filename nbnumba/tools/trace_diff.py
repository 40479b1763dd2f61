"""Compare a C trace log with a port trace log and report the first divergence.

Usage::

    nbnumba-trace-diff C.log PY.log [--tol 1e-6] [--atol 0] [--json out.json]
                       [--markdown out.md] [--quiet] [--strict-keys]
    python -m nbnumba.tools.trace_diff ...

Both logs are parsed with :func:`nbnumba.tracefmt.parse_trace` (either prefix,
``TRACE_C`` or ``TRACE_PY``, is accepted in either file, so C-vs-C or
PY-vs-PY diffs work too).  Keys are aligned by name and occurrence (``key``,
``key#2``, ...); per-phi lines by ``(phi_tic, occurrence of that phi_tic)``.

Tolerance rule
--------------
For a key whose values are ``a_1..a_n`` (C) and ``b_1..b_n`` (port), each
numeric component must satisfy::

    |a_i - b_i| <= max(tol * scale, atol),   scale = max_j max(|a_j|, |b_j|)

i.e. a relative test in which the scale is the largest magnitude found in
that key (in either log).  For a scalar this is exactly
``|a-b| <= tol*max(|a|,|b|)``; for a vector, components that are rounding
noise next to a large component (``4e-15`` vs ``0`` in a 70 Å cell vector)
are judged against the vector's size instead of against themselves.
``atol`` (default 0) is an optional absolute floor for keys that are
legitimately all near zero; it is off by default because several trace
values are tiny in SI units (``r_e_sqr`` ~ 8e-30) and a floor would hide
real errors in them.  NaN equals NaN (sign ignored), ±inf equals itself.
Strings must match exactly; a different number of values is a divergence.

The reported component ``rel`` is ``|a-b| / max(|a|,|b|)`` (0 when both are
0); the key-level ``rel`` is ``max|a_i-b_i| / scale``.

Exit status: 0 no divergence, 1 divergence found, 2 usage or I/O error (one
line on stderr).  Keys present in only one log are listed but do not count
as a divergence unless ``--strict-keys`` is given.  Two logs that share no
key and no per-phi row are an input error (exit 2, nothing written): nothing
was compared, so neither MATCH nor DIVERGED would be true (a report made of
such a pair by :func:`render_markdown` says NOTHING COMPARED).

A per-phi line neither program prints (``phi_tic=nan``, ``phi_tic=1.5``, a
field that is not ``name=number``) is an input error naming the log, the line
and the field (:class:`nbnumba.tracefmt.TraceFormatError`).  ``--markdown`` and
``--json`` are written as one all-or-nothing set (:mod:`nbnumba.io.atomic`);
before anything is read or written, an output that is one of the two logs
(same file, a symlink, ``./`` spelling), two outputs naming one file, and an
output that cannot be written (no such folder, a directory) are refused.  The
report is printed after the files are written.  Where ``|a-b|`` overflows
(``1e308`` vs ``-1e308``) abs Δ is ``inf`` and rel Δ is computed on the scaled
values (2).

``--json`` writes an object whose keys are the scaling factors
(``{factor: {"c":, "py":, "abs":, "rel":, "diverged":}}``; values absent from a
log are ``null``, non-finite numbers are strings such as ``"nan"``) plus
``"first_divergence"`` (``null`` or ``{"key", "c", "py", "abs", "rel",
"c_line", "py_line", "reason"}``), ``"diverged"``, ``"tol"``, ``"atol"``,
``"only_in_c"``, ``"only_in_py"``, ``"n_compared"``, ``"n_diverged"`` and
``"phi"`` (list of per-phi rows).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from nbnumba.io.atomic import atomic_open, check_distinct, check_not_input, check_writable, output_set
from nbnumba.tools._common import ToolError, UsageParser, read_text
from nbnumba.tracefmt import PHI_FIELDS, Trace, Value, format_value, parse_trace

PROG = "nbnumba-trace-diff"

#: Factors of the final per-pixel scaling shown in the factor table, in order.
FACTORS = (
    "I_before_scaling",
    "F_cell",
    "F_latt",
    "omega_pixel",
    "polar",
    "capture_fraction",
    "steps",
    "r_e_sqr",
    "fluence_photons_per_m2",
    "I_pixel_final",
)

_PHI_COMPARED = tuple(f for f in PHI_FIELDS if f != "phi_tic")

__all__ = [
    "FACTORS",
    "KeyDiff",
    "FactorDiff",
    "PhiDiff",
    "DiffResult",
    "compare_values",
    "diff_traces",
    "render_markdown",
    "main",
]


# --------------------------------------------------------------------------- comparison


def _is_num(v: Value) -> bool:
    return not isinstance(v, str)


def _abs_rel(a: float, b: float) -> tuple[float, float]:
    """Component abs/rel deltas; NaN-aware (nan==nan, inf==inf of same sign).

    ``rel`` is computed on the values scaled by ``max(|a|,|b|)`` when ``|a-b|``
    overflows (``1e308`` vs ``-1e308``: abs Δ inf, rel Δ 2, not inf).
    """
    a = float(a)
    b = float(b)
    if math.isnan(a) or math.isnan(b):
        if math.isnan(a) and math.isnan(b):
            return 0.0, 0.0
        return math.inf, math.inf
    if math.isinf(a) or math.isinf(b):
        if a == b:
            return 0.0, 0.0
        return math.inf, math.inf
    d = abs(a - b)
    m = max(abs(a), abs(b))
    if m == 0.0:
        return d, 0.0
    return d, (d / m if math.isfinite(d) else abs(a / m - b / m))


def compare_values(
    c: Sequence[Value], py: Sequence[Value], tol: float, atol: float = 0.0
) -> tuple[bool, list[Optional[float]], list[Optional[float]], Optional[float], Optional[float], str]:
    """Compare two value lists with the module's tolerance rule.

    Returns ``(diverged, abs_list, rel_list, max_abs, key_rel, reason)``;
    abs/rel entries are ``None`` for string components.  Where ``|a-b|`` or
    ``tol*scale`` overflows double precision, the test and ``key_rel`` use the
    values divided by the scale instead (same rule, no overflow).
    """
    if len(c) != len(py):
        return True, [], [], None, None, f"value count differs ({len(c)} vs {len(py)})"
    abs_l: list[Optional[float]] = []
    rel_l: list[Optional[float]] = []
    reason = ""
    diverged = False
    scale = 0.0
    for a, b in zip(c, py):
        if _is_num(a) and _is_num(b):
            for v in (a, b):
                fv = abs(float(v))
                if math.isfinite(fv):
                    scale = max(scale, fv)
    thresh = max(tol * scale, atol)
    max_abs: Optional[float] = None
    key_rel: Optional[float] = None
    for a, b in zip(c, py):
        if _is_num(a) and _is_num(b):
            d, r = _abs_rel(a, b)
            abs_l.append(d)
            rel_l.append(r)
            max_abs = d if max_abs is None else max(max_abs, d)
            fa, fb = float(a), float(b)
            if not (math.isfinite(fa) and math.isfinite(fb)):
                kr, bad = d, d > 0.0                # nan/inf: equal or not (d is 0 or inf)
            elif math.isfinite(d) and math.isfinite(thresh):
                kr, bad = (d / scale if scale > 0 else 0.0), d > thresh
            else:                                   # |a-b| or tol*scale overflowed
                kr = abs(fa / scale - fb / scale)
                bad = kr > max(tol, atol / scale)
            key_rel = kr if key_rel is None else max(key_rel, kr)
            if bad:
                diverged = True
                reason = reason or "value differs beyond tolerance"
        else:
            abs_l.append(None)
            rel_l.append(None)
            if isinstance(a, str) != isinstance(b, str) or a != b:
                diverged = True
                reason = reason or "text differs"
    return diverged, abs_l, rel_l, max_abs, key_rel, reason


# --------------------------------------------------------------------------- result types


@dataclass
class KeyDiff:
    """Comparison of one aligned key (``name`` includes any ``#n`` suffix)."""

    name: str
    c: list[Value]
    py: list[Value]
    abs: list[Optional[float]]
    rel: list[Optional[float]]
    max_abs: Optional[float]
    max_rel: Optional[float]
    diverged: bool
    reason: str = ""
    c_line: int = 0
    py_line: int = 0

    def to_dict(self) -> dict:
        return {
            "key": self.name,
            "c": [_json_num(v) for v in self.c],
            "py": [_json_num(v) for v in self.py],
            "abs": _json_num(self.max_abs),
            "rel": _json_num(self.max_rel),
            "c_line": self.c_line,
            "py_line": self.py_line,
            "reason": self.reason,
        }


@dataclass
class FactorDiff:
    """One scaling factor (first occurrence of the key in each log)."""

    name: str
    c: Optional[Value]
    py: Optional[Value]
    abs: Optional[float]
    rel: Optional[float]
    diverged: Optional[bool]

    def to_dict(self) -> dict:
        return {
            "c": _json_num(self.c),
            "py": _json_num(self.py),
            "abs": _json_num(self.abs),
            "rel": _json_num(self.rel),
            "diverged": self.diverged,
        }


@dataclass
class PhiDiff:
    """One aligned per-phi row (``occurrence`` counts repeats of ``phi_tic``)."""

    phi_tic: int
    occurrence: int
    c: dict
    py: dict
    rel: dict  # field -> rel delta
    max_rel: float
    diverged: bool
    diverged_fields: list[str]
    c_line: int = 0
    py_line: int = 0

    @property
    def name(self) -> str:
        occ = "" if self.occurrence == 1 else f"#{self.occurrence}"
        return f"PHI[phi_tic={self.phi_tic}]{occ}"

    def to_dict(self) -> dict:
        return {
            "phi_tic": self.phi_tic,
            "occurrence": self.occurrence,
            "c": {k: _json_num(v) for k, v in self.c.items()},
            "py": {k: _json_num(v) for k, v in self.py.items()},
            "rel": {k: _json_num(v) for k, v in self.rel.items()},
            "diverged": self.diverged,
        }


@dataclass
class DiffResult:
    """Everything :func:`render_markdown` and ``--json`` need."""

    tol: float
    atol: float
    keys: list[KeyDiff]
    factors: dict[str, FactorDiff]
    phi: list[PhiDiff]
    first_divergence: Optional[KeyDiff]
    only_in_c: list[str]
    only_in_py: list[str]
    phi_only_in_c: int = 0
    phi_only_in_py: int = 0
    c_label: str = "C"
    py_label: str = "PY"
    strict_keys: bool = False
    c_source: str = ""
    py_source: str = ""
    c_trace: Optional[Trace] = field(default=None, repr=False)
    py_trace: Optional[Trace] = field(default=None, repr=False)

    @property
    def divergences(self) -> list[KeyDiff]:
        return [k for k in self.keys if k.diverged]

    @property
    def nothing_compared(self) -> bool:
        """No key and no per-phi row is in both logs (a MATCH would be vacuous)."""
        return not self.keys and not self.phi

    @property
    def diverged(self) -> bool:
        if self.first_divergence is not None:
            return True
        if self.strict_keys and (
            self.only_in_c or self.only_in_py or self.phi_only_in_c or self.phi_only_in_py
        ):
            return True
        return False

    def to_json_dict(self) -> dict:
        out: dict[str, Any] = {name: f.to_dict() for name, f in self.factors.items()}
        out["first_divergence"] = (
            self.first_divergence.to_dict() if self.first_divergence is not None else None
        )
        out["diverged"] = self.diverged
        out["tol"] = self.tol
        out["atol"] = self.atol
        out["n_compared"] = len(self.keys)
        out["n_diverged"] = len(self.divergences) + sum(1 for p in self.phi if p.diverged)
        out["only_in_c"] = list(self.only_in_c)
        out["only_in_py"] = list(self.only_in_py)
        out["phi"] = [p.to_dict() for p in self.phi]
        return out


def _json_num(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool)):
        return v
    if isinstance(v, int):
        return v
    fv = float(v)
    if not math.isfinite(fv):
        return format_value(fv)
    return fv


# --------------------------------------------------------------------------- diff


def _phi_keyed(trace: Trace) -> list[tuple[tuple[int, int], dict, int]]:
    seen: dict[int, int] = {}
    out = []
    for row, line in zip(trace.phi, trace.phi_lines):
        tic = int(row.get("phi_tic", -1))
        seen[tic] = seen.get(tic, 0) + 1
        out.append(((tic, seen[tic]), row, line))
    return out


def diff_traces(
    c_text: Union[str, Trace],
    py_text: Union[str, Trace],
    tol: float = 1e-6,
    atol: float = 0.0,
    *,
    c_label: str = "C",
    py_label: str = "PY",
    strict_keys: bool = False,
) -> DiffResult:
    """Diff two trace texts, or traces already parsed (see the module docstring for
    the tolerance rule).  A malformed per-phi line raises
    :class:`nbnumba.tracefmt.TraceFormatError`."""
    ct = c_text if isinstance(c_text, Trace) else parse_trace(c_text)
    pt = py_text if isinstance(py_text, Trace) else parse_trace(py_text)
    py_by_name = {e.name: e for e in pt.entries}
    c_names = {e.name for e in ct.entries}

    keys: list[KeyDiff] = []
    only_in_c: list[str] = []
    for e in ct.entries:
        pe = py_by_name.get(e.name)
        if pe is None:
            only_in_c.append(e.name)
            continue
        dv, abs_l, rel_l, mabs, mrel, reason = compare_values(e.values, pe.values, tol, atol)
        keys.append(
            KeyDiff(e.name, e.values, pe.values, abs_l, rel_l, mabs, mrel, dv, reason, e.line, pe.line)
        )
    only_in_py = [e.name for e in pt.entries if e.name not in c_names]

    factors: dict[str, FactorDiff] = {}
    kd_by_name = {k.name: k for k in keys}
    for name in FACTORS:
        cv = ct.scalar(name)
        pv = pt.scalar(name)
        kd = kd_by_name.get(name)
        if kd is not None and kd.abs and len(kd.c) == len(kd.py):
            factors[name] = FactorDiff(name, cv, pv, kd.abs[0], kd.rel[0], kd.diverged)
        else:
            factors[name] = FactorDiff(name, cv, pv, None, None, None if kd is None else kd.diverged)

    phi_rows: list[PhiDiff] = []
    c_phi = _phi_keyed(ct)
    p_phi = {k: (row, line) for k, row, line in _phi_keyed(pt)}
    c_phi_keys = set()
    for key, crow, cline in c_phi:
        c_phi_keys.add(key)
        if key not in p_phi:
            continue
        prow, pline = p_phi[key]
        rels: dict = {}
        bad: list[str] = []
        for f in _PHI_COMPARED:
            if f not in crow or f not in prow:
                if (f in crow) != (f in prow):
                    bad.append(f)
                continue
            dv, _, rl, _, _, _ = compare_values([crow[f]], [prow[f]], tol, atol)
            rels[f] = rl[0] if rl else None
            if dv:
                bad.append(f)
        finite = [r for r in rels.values() if r is not None]
        phi_rows.append(
            PhiDiff(key[0], key[1], crow, prow, rels, max(finite) if finite else 0.0, bool(bad), bad, cline, pline)
        )
    phi_only_in_c = sum(1 for k, _, _ in c_phi if k not in p_phi)
    phi_only_in_py = sum(1 for k in p_phi if k not in c_phi_keys)

    # first divergence: earliest C line among diverging keys and per-phi fields
    candidates: list[tuple[int, KeyDiff]] = [(k.c_line, k) for k in keys if k.diverged]
    for p in phi_rows:
        if p.diverged:
            f = p.diverged_fields[0]
            cval = p.c.get(f)
            pval = p.py.get(f)
            cl = [cval] if cval is not None else []
            pl = [pval] if pval is not None else []
            _, abs_l, rel_l, mabs, mrel, reason = compare_values(cl, pl, tol, atol)
            candidates.append(
                (
                    p.c_line,
                    KeyDiff(
                        f"{p.name}.{f}", cl, pl, abs_l, rel_l, mabs, mrel, True,
                        reason or "per-phi field missing", p.c_line, p.py_line,
                    ),
                )
            )
    candidates.sort(key=lambda t: t[0])
    first = candidates[0][1] if candidates else None

    return DiffResult(
        tol=tol,
        atol=atol,
        keys=keys,
        factors=factors,
        phi=phi_rows,
        first_divergence=first,
        only_in_c=only_in_c,
        only_in_py=only_in_py,
        phi_only_in_c=phi_only_in_c,
        phi_only_in_py=phi_only_in_py,
        c_label=c_label,
        py_label=py_label,
        strict_keys=strict_keys,
        c_trace=ct,
        py_trace=pt,
    )


# --------------------------------------------------------------------------- markdown


def _fv(v: Any) -> str:
    if v is None:
        return "—"
    return format_value(v)


def _fd(v: Optional[float]) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return format_value(v)
    return "%.3g" % v


def _fvals(vals: Sequence[Value]) -> str:
    return " ".join(format_value(v) for v in vals) if vals else "—"


def render_markdown(result: DiffResult, max_list: int = 40, max_phi_rows: int = 200) -> str:
    """Markdown report: first divergence, factor table, per-phi table, key lists."""
    r = result
    L: list[str] = []
    L.append(f"# Trace diff: {r.c_label} vs {r.py_label}")
    L.append("")
    n_phi_div = sum(1 for p in r.phi if p.diverged)
    if r.c_source or r.py_source:
        L.append(f"- {r.c_label} log: `{r.c_source}`; {r.py_label} log: `{r.py_source}`")
    L.append(
        f"- tolerance: rel {r.tol:g} (per key, relative to its largest |value|), abs floor {r.atol:g}"
    )
    L.append(
        f"- keys compared: {len(r.keys)}, diverging: {len(r.divergences)}; "
        f"per-φ rows compared: {len(r.phi)}, diverging: {n_phi_div}"
    )
    L.append(f"- keys only in {r.c_label}: {len(r.only_in_c)}, only in {r.py_label}: {len(r.only_in_py)}")
    if r.nothing_compared:
        verdict = "NOTHING COMPARED"      # (before DIVERGED: --strict-keys counts the lists)
    else:
        verdict = "DIVERGED" if r.diverged else "MATCH"
    L.append(f"- verdict: **{verdict}**")
    L.append("")

    L.append("## First divergence")
    L.append("")
    fd = r.first_divergence
    if r.nothing_compared:
        L.append("None: the logs share no key and no per-φ row, so nothing was compared.")
    elif fd is None:
        L.append("None: every key present in both logs agrees within tolerance.")
    else:
        L.append(
            f"`{fd.name}` ({r.c_label} line {fd.c_line}, {r.py_label} line {fd.py_line}): {fd.reason}; "
            f"max abs Δ {_fd(fd.max_abs)}, rel Δ {_fd(fd.max_rel)}"
        )
        L.append("")
        if len(fd.c) == len(fd.py) and fd.c:
            L.append(f"| # | {r.c_label} | {r.py_label} | abs Δ | rel Δ |")
            L.append("|---:|---|---|---:|---:|")
            for i, (a, b) in enumerate(zip(fd.c, fd.py)):
                ad = fd.abs[i] if i < len(fd.abs) else None
                rd = fd.rel[i] if i < len(fd.rel) else None
                L.append(f"| {i} | {_fv(a)} | {_fv(b)} | {_fd(ad)} | {_fd(rd)} |")
        else:
            L.append(f"- {r.c_label}: `{_fvals(fd.c)}`")
            L.append(f"- {r.py_label}: `{_fvals(fd.py)}`")
    L.append("")

    L.append("## Scaling factors")
    L.append("")
    L.append(f"| factor | {r.c_label} | {r.py_label} | abs Δ | rel Δ | ok |")
    L.append("|---|---|---|---:|---:|:---:|")
    for name, f in r.factors.items():
        ok = "—" if f.diverged is None else ("✗" if f.diverged else "✓")
        L.append(f"| {name} | {_fv(f.c)} | {_fv(f.py)} | {_fd(f.abs)} | {_fd(f.rel)} | {ok} |")
    L.append("")

    if r.phi:
        L.append("## Per-φ")
        L.append("")
        L.append(
            f"| phi_tic | phi_deg | k_frac {r.c_label} | k_frac {r.py_label} | "
            f"F_latt {r.c_label} | F_latt {r.py_label} | rel Δ (max) | ok |"
        )
        L.append("|---:|---|---|---|---|---|---:|:---:|")
        for p in r.phi[:max_phi_rows]:
            tic = str(p.phi_tic) + ("" if p.occurrence == 1 else f"#{p.occurrence}")
            L.append(
                f"| {tic} | {_fv(p.c.get('phi_deg'))} | {_fv(p.c.get('k_frac'))} | {_fv(p.py.get('k_frac'))} | "
                f"{_fv(p.c.get('F_latt'))} | {_fv(p.py.get('F_latt'))} | {_fd(p.max_rel)} | "
                f"{'✗ ' + ','.join(p.diverged_fields) if p.diverged else '✓'} |"
            )
        if len(r.phi) > max_phi_rows:
            L.append(f"| … | {len(r.phi) - max_phi_rows} more rows | | | | | | |")
        L.append("")
    if r.phi_only_in_c or r.phi_only_in_py:
        L.append(
            f"Per-φ lines without a partner: {r.phi_only_in_c} only in {r.c_label}, "
            f"{r.phi_only_in_py} only in {r.py_label}."
        )
        L.append("")

    divs = r.divergences
    if divs:
        L.append("## All diverging keys")
        L.append("")
        L.append(f"| key | {r.c_label} line | abs Δ | rel Δ | reason |")
        L.append("|---|---:|---:|---:|---|")
        for k in divs[:max_list]:
            L.append(f"| `{k.name}` | {k.c_line} | {_fd(k.max_abs)} | {_fd(k.max_rel)} | {k.reason} |")
        if len(divs) > max_list:
            L.append(f"| … {len(divs) - max_list} more | | | | |")
        L.append("")

    for label, names in ((r.c_label, r.only_in_c), (r.py_label, r.only_in_py)):
        if names:
            L.append(f"## Keys only in {label}")
            L.append("")
            shown = ", ".join(f"`{n}`" for n in names[:max_list])
            more = f" … and {len(names) - max_list} more" if len(names) > max_list else ""
            L.append(shown + more)
            L.append("")
    return "\n".join(L).rstrip() + "\n"


# --------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog=PROG,
        description="Report the first divergence between a C trace log and a port trace log.",
    )
    p.add_argument("c_log", help="trace log from the C program (TRACE_C lines)")
    p.add_argument("py_log", help="trace log from the port (TRACE_PY lines)")
    p.add_argument("--tol", type=float, default=1e-6, help="relative tolerance (default 1e-6)")
    p.add_argument("--atol", type=float, default=0.0, help="absolute floor (default 0)")
    p.add_argument("--json", metavar="OUT.json", help="write factor deltas and first divergence as JSON")
    p.add_argument("--markdown", metavar="OUT.md", help="also write the Markdown report to a file")
    p.add_argument("--quiet", "-q", action="store_true", help="do not print the report")
    p.add_argument(
        "--strict-keys", action="store_true", help="keys present in only one log count as divergence"
    )
    return p


def _some(names: Sequence[str], n: int = 3) -> str:
    """``len`` and the first ``n`` names, for a one-line message."""
    if not names:
        return "none"
    more = ", ..." if len(names) > n else ""
    return f"{len(names)} ({', '.join(names[:n])}{more})"


def _check_outputs(args) -> list[tuple[str, str]]:
    """The ``(option, path)`` outputs, refused before anything is read or written
    when one is an input log (``--json c.log`` replaced the log), two name one
    file, or a path cannot be written (no such directory, a directory)."""
    outs = [(opt, path) for opt, path in (("--markdown", args.markdown), ("--json", args.json))
            if path]
    for opt, path in outs:
        check_not_input(path, (args.c_log, args.py_log), opt)
        check_writable(path, opt)
    check_distinct(outs)
    return outs


def main(argv: Optional[Sequence[str]] = None) -> int:
    # (guarded_main: one line for ToolError / NBError (TraceFormatError,
    # OutputFileError), exit 2; stdout closed or full; Ctrl-C)
    from nbnumba.tools._common import guarded_main
    return guarded_main(PROG, lambda: _main(argv))


def _main(argv: Optional[Sequence[str]]) -> int:
    args = _build_parser().parse_args(argv)
    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise ToolError(f"--tol must be a finite number >= 0 (got {args.tol})", 2)
    if not (math.isfinite(args.atol) and args.atol >= 0):
        raise ToolError(f"--atol must be a finite number >= 0 (got {args.atol})", 2)
    outs = _check_outputs(args)
    traces = []
    for path in (args.c_log, args.py_log):
        tr = parse_trace(read_text(path, path), source=path)   # TraceFormatError names path and line
        if tr.empty:
            raise ToolError(f"no TRACE_C/TRACE_PY lines found in {path}", 2)
        traces.append(tr)
    result = diff_traces(traces[0], traces[1], args.tol, args.atol,
                         strict_keys=args.strict_keys)
    result.c_source, result.py_source = args.c_log, args.py_log
    if result.nothing_compared:
        # an input error like a log without trace lines: "MATCH, exit 0" was vacuous
        raise ToolError(f"{args.c_log} and {args.py_log} share no trace key and no per-phi row: "
                        f"nothing to compare (keys only in {args.c_log}: "
                        f"{_some(result.only_in_c)}; only in {args.py_log}: "
                        f"{_some(result.only_in_py)}); are they traces of the same pixel?", 2)
    md = render_markdown(result)
    texts = {"--markdown": md,
             "--json": json.dumps(result.to_json_dict(), indent=2, ensure_ascii=False) + "\n"}
    # all or nothing: a failing second file leaves the first one as it was
    with output_set():
        for opt, path in outs:
            with atomic_open(path) as fh:
                fh.write(texts[opt].encode("utf-8"))
    if not args.quiet:
        sys.stdout.write(md)
        sys.stdout.flush()
    return 1 if result.diverged else 0


if __name__ == "__main__":
    sys.exit(main())
