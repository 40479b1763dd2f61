"""The probe itself: the steps that fill one bundle, in order.

Each step is a function of the shared :class:`ProbeState`; it writes its files
into the bundle and records what the later steps and summary.md need.
"""
from __future__ import annotations

import shutil
from typing import List, Optional, Tuple

from nbnumba.io.atomic import remove_empty_dirs
from nbnumba.tools import _common as C

from .attribution import attribution_step
from .common import EXIT_DIVERGED, EXIT_OK
from .environment import commands_step, metadata_step, pytest_step
from .phistep1 import phistep1_step
from .rotation_audit import audit_step
from .sincg import sincg_step
from .summary import summary_step
from .traces import c_trace, port_trace, setup, trace_diff


def probe(opts, flags: List[str], argv: List[str], cwd: Optional[str] = None) -> Tuple[int, str, dict]:
    """Write one bundle; returns (exit status, bundle folder, what was found)."""
    p = setup(opts, flags, argv, cwd)   # options, flags, C trace checked, ROI, bundle folder
    try:
        port_trace(p)                   # trace_py_phi.log
        c_trace(p)                      # trace_c_phi.log, c_stdout.txt, the ROI check
        trace_diff(p)                   # diff_trace.md, compare_scaling_traces.json
        attribution_step(p)             # which defect explains each diverging key
        sincg_step(p)                   # sincg_sweep.*, sincg_points.png
        phistep1_step(p)                # phistep1/
        audit_step(p)                   # rotation_audit.md
        metadata_step(p)                # roi_metadata.json, env.json, git_sha.txt
        pytest_step(p)                  # pytest.log (--pytest SELECTOR)
        commands_step(p)                # commands.txt
        summary_step(p)                 # summary.md, ending with "Open questions"
        C.write_sha256s(p.bundle)       # sha256.txt
    except BaseException:
        _discard(p)                     # no partial bundle (an error, Ctrl-C)
        raise
    diff = p.diff
    info = {"bundle": p.bundle, "diverged": p.diverged, "diff": diff, "attribution": p.attrib,
            "first_divergence": (diff.first_divergence.name
                                 if p.diverged and diff.first_divergence else None),
            "phistep1": p.phistep1, "sincg": p.sincg, "audit": p.audit, "alt_I": p.alt_I,
            "pytest": p.pytest}
    return (EXIT_DIVERGED if p.diverged else EXIT_OK), p.bundle, info


def _discard(p) -> None:
    """Remove the bundle folder this run created (with what it holds so far), and
    the --outdir folders setup made for it when they are empty again."""
    shutil.rmtree(p.bundle, ignore_errors=True)
    remove_empty_dirs(p.made_dirs)
