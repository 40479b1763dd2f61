"""Running the two sides: the port (model and trace, no render) and the C program."""
from __future__ import annotations

import os
import tempfile
from typing import List, Optional, Tuple

import numpy as np

from nbnumba.tools import _common as C
from nbnumba.tools._common import ToolError
from .common import EXIT_RUNNER, EXIT_USAGE


def _port_model(flags: List[str]):
    from nbnumba.errors import NBError, UsageError
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    try:
        cfg = parse_argv(list(flags))
        return build_model(cfg)
    except UsageError as e:
        raise ToolError(f"the port rejected the flags: {e}", EXIT_USAGE) from None
    except NBError as e:       # a refused request (ConfigError, InputFileError): exit 2 like the CLI
        raise ToolError(f"the port refused the request: {e}", EXIT_USAGE) from None


def _port_trace(model, s: int, f: int) -> List[str]:
    from nbnumba.trace import trace_lines
    return trace_lines(model, s, f, prefix="TRACE_PY")


def _port_render(flags: List[str]):
    from nbnumba.errors import NBError, UsageError
    from nbnumba.flags import parse_argv
    from nbnumba.api import simulate
    try:
        return simulate(parse_argv(list(flags)))
    except UsageError as e:
        raise ToolError(f"the port rejected the flags: {e}", EXIT_USAGE) from None
    except NBError as e:       # a refused request (ConfigError, InputFileError): exit 2 like the CLI
        raise ToolError(f"the port refused the request: {e}", EXIT_USAGE) from None


# --------------------------------------------------------------------------- C side


def _run_c(c_bin: str, flags: List[str], timeout=None) -> Tuple[C.RunResult, Optional[np.ndarray]]:
    """Run C in a scratch dir (one OpenMP thread); returns (run, float image or None)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="nbprobe-c-") as d:
        # the port reads ./Fdump.bin when there is no -hkl (as nanoBragg does):
        # C gets the same file, or the two compared different structure factors
        # (a "divergence" at F_cell that the inputs made, as nb-compare stages it)
        C.stage_fdump(flags, os.getcwd(), d)
        r = C.run([c_bin, *flags], d, env, "C", timeout)
        if r.returncode != 0:
            why = C.last_line(r.stderr) or C.last_line(r.stdout) or "no output"
            raise ToolError(f"C runner failed (exit {r.returncode}): {why}", EXIT_RUNNER)
        img = None
        shape = C.parse_shape(r.stdout)
        fpath = os.path.join(d, "float.bin")
        if shape is not None and os.path.isfile(fpath):
            data = np.fromfile(fpath, dtype=np.float32)
            if data.size == shape[0] * shape[1]:
                img = data.reshape(shape)
    return r, img
