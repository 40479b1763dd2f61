"""What one probe run knows, passed from step to step (each step fills its part)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class ProbeState:
    # ---- the request (setup) ----------------------------------------------------
    opts: object
    flags: List[str]                 # the nanoBragg flags as given
    argv: List[str]                  # the probe's own command line
    cwd: str
    S: int                           # traced pixel, slow index
    F: int                           # traced pixel, fast index
    c_parity: bool
    base: List[str]                  # flags without -trace_pixel/-c_parity, paths resolved
    py_mode: List[str]               # ["-c_parity"] or []
    trace_args: List[str]
    c_text_src: Optional[str]        # a stored C trace (--c-trace), else None
    c_bin: Optional[str]
    roi: Optional[List[int]]
    roi_args: List[str]
    roi_kind: str
    img_roi: List[int]
    img_roi_args: List[str]
    bundle: str
    made_dirs: List[str] = field(default_factory=list)   # --outdir folders setup created
    commands: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    # ---- traces -------------------------------------------------------------------
    model: object = None             # the port's Model of the traced run
    py_flags: List[str] = field(default_factory=list)
    py_text: str = ""
    c_text: Optional[str] = None
    c_source: Optional[str] = None
    roi_check: Optional[dict] = None
    c_tr: object = None              # parsed traces (nbnumba.tracefmt)
    py_tr: object = None
    diff: object = None              # trace_diff result, None without a C trace
    # ---- evidence ---------------------------------------------------------------------
    cp_model: object = None          # the -c_parity model (attribution)
    present: Dict[str, bool] = field(default_factory=dict)
    alt_I: Dict[str, Optional[float]] = field(default_factory=dict)
    attrib: List[dict] = field(default_factory=list)
    sincg: dict = field(default_factory=dict)
    phistep1: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    pytest: Optional[dict] = None    # --pytest SELECTOR: what ran and how it ended

    def path(self, *parts: str) -> str:
        import os
        return os.path.join(self.bundle, *parts)

    @property
    def diverged(self) -> bool:
        # (two traces that share no key prove nothing: not a match)
        return bool(self.diff is not None and (self.diff.diverged or self.diff.nothing_compared))
