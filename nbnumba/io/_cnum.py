"""C-compatible number parsing shared by the readers (strtod/atof syntax)."""

from __future__ import annotations

import math
import re
from typing import Optional

__all__ = ["c_atof", "parse_c_number", "atof_prefix_length"]

_NUM = (
    r"[+-]?(?:"
    r"0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
    r"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?"
    r"|[nN][aA][nN](?:\([0-9A-Za-z_]*\))?"
    r")"
)
_PREFIX_RE = re.compile(r"[ \t\n\v\f\r]*(" + _NUM + ")")
_FULL_RE = re.compile(_NUM + r"\Z")


def _to_float(text: str) -> float:
    t = text.lower()
    sign = -1.0 if t.startswith("-") else 1.0
    body = t.lstrip("+-")
    if body.startswith("0x"):
        return sign * float.fromhex(body)
    if body.startswith("nan"):
        return math.copysign(math.nan, sign)
    if body.startswith("inf"):
        return sign * math.inf
    return float(t)


def c_atof(text: str, default: float = math.nan) -> float:
    """Value of the longest numeric prefix of ``text`` (after leading
    whitespace), like C ``atof``/``strtod``.  C's ``atof`` gives 0.0 when
    there is no number at all; this gives ``default`` (NaN by default)."""
    m = _PREFIX_RE.match(text)
    if m is None:
        return default
    return _to_float(m.group(1))


def atof_prefix_length(text: str) -> int:
    """Number of characters ``strtod`` would consume (0 if no number)."""
    m = _PREFIX_RE.match(text)
    return 0 if m is None else m.end()


def parse_c_number(token: str) -> Optional[float]:
    """``token`` as a number if the *whole* token is one strtod number, else None."""
    if not _FULL_RE.match(token):
        return None
    return _to_float(token)
