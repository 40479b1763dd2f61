"""Multi-column text files (``-sourcefile``, ``-stolfile``...), after
nanoBragg's ``read_text_file``.

Rules shared with C:

* columns are separated by runs of any of `` \\t,;:!``; leading separators
  are skipped;
* a line that is empty after the leading separators is skipped;
* each of the first ``ncols`` fields is converted like ``atof`` (longest
  numeric prefix: ``"1.5A"`` -> 1.5); further fields are ignored;
* missing trailing columns are NaN (C fills its arrays with NaN first).

Deliberate differences (C behaviour in brackets):

* a line whose first field starts with ``#`` is a comment and skipped
  [C reads it as a record whose fields are all 0.0, i.e. a spurious source
  at the origin with zero weight and wavelength -- the C-SOURCEFILE-001
  comment-parsing issue]; text from a ``#`` later in a line is ignored
  too [C turns the ``#`` and the words after it into 0.0 columns];
* a field with no numeric prefix at all (a word, a lone sign) raises
  :class:`InputFileError` naming file and line [C: atof gives 0.0];
* carriage returns, form feeds and vertical tabs count as white space
  (CRLF files read like LF files) [C: a trailing ``\\r`` turns all later
  missing columns into 0.0 instead of NaN]; a trailing non-numeric suffix
  on the last field likewise does not zero the missing columns.
"""

from __future__ import annotations

import re

import numpy as np

from nbnumba.errors import InputFileError
from nbnumba.io._args import read_bytes
from nbnumba.io._cnum import atof_prefix_length, c_atof
from nbnumba.io.sniff import misfed_hint

__all__ = ["read_text_columns", "DELIMITERS"]

#: nanoBragg's column separators
DELIMITERS = " \t,;:!"
_SPLIT_RE = re.compile(r"[ \t,;:!\r\n\v\f]+")


def read_text_columns(path, ncols: int) -> np.ndarray:
    """Read ``path`` into a float64 array of shape ``(records, ncols)``."""
    if ncols < 1:
        raise ValueError("ncols must be at least 1")
    name, raw = read_bytes(path)
    text = raw.decode("latin-1")

    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        body = line.lstrip(DELIMITERS + "\r\v\f")
        if not body or body.startswith("#"):
            continue
        body = body.split("#", 1)[0]
        fields = [t for t in _SPLIT_RE.split(body) if t]
        row = [np.nan] * ncols
        for j, tok in enumerate(fields[:ncols]):
            if atof_prefix_length(tok) == 0:
                raise InputFileError(
                    f"{name} line {lineno}: column {j + 1} is not a number: '{tok[:40]}'"
                    + misfed_hint(raw, name, "columns")
                )
            row[j] = c_atof(tok)
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, ncols)
