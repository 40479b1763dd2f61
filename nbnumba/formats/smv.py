"""SMV frames exactly as nanoBragg writes its ``-intfile``/``-noisefile``.

The header is nanoBragg's (``nbnumba.outputs.smv_fields``), so PHI/OSC_START
and OSC_RANGE carry the frame's own rotation start and width.  The noise
image is stored when noise is on (nanoBragg's ``-noisefile`` header), else the
scaled integer image (``-intfile`` header).
"""
from __future__ import annotations

from ..io.smv import read_smv, write_smv
from ..outputs import smv_fields


def write_frame(path, res, image, noise: bool, header_overflow: str = "grow",
                seconds_after_epoch: float = 0.0) -> None:
    """Write ``image`` (uint16 (S, F)) with the header nanoBragg would give ``res``;
    ``seconds_after_epoch`` (s) dates the frame (DATE key, default mode only)."""
    write_smv(path, image, smv_fields(res, noise=noise, seconds_after_epoch=seconds_after_epoch),
              header_overflow=header_overflow)


def read_frame(path):
    """(header dict, uint16 (S, F) pixels)."""
    return read_smv(path)


__all__ = ["write_frame", "read_frame"]
