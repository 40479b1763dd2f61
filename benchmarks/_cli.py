"""Shared command-line helpers of the benchmark entry points.

Every benchmark's ``main`` parses with :class:`UsageParser` (a usage error is
one stderr line, exit 2) and runs inside :func:`guarded_main`; the argparse
types below refuse values that would be silently ignored or meaningless
(0 repetitions, NaN seconds, unknown workloads) before anything is measured.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from nbnumba.io.atomic import atomic_write_bytes, check_writable
from nbnumba.tools._common import ToolError, UsageParser, guarded_main  # noqa: F401

USAGE_EXIT = 2


def usage_error(message: str) -> ToolError:
    return ToolError(message, USAGE_EXIT)


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError("expected an integer, got %r" % text) from None


def _float(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError("expected a number, got %r" % text) from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError("must be a finite number, got %r" % text)
    return v


def _bounded(conv, lo, strict: bool):
    """argparse type: ``conv(text)``, refused below ``lo`` (or at it when ``strict``)."""
    def check(text: str):
        v = conv(text)
        if v < lo or (strict and v == lo):
            raise argparse.ArgumentTypeError("must be %s %s, got %r"
                                             % (">" if strict else ">=", lo, text))
        return v
    return check


positive_int = _bounded(_int, 1, False)
nonneg_int = _bounded(_int, 0, False)
positive_float = _bounded(_float, 0, True)
nonneg_float = _bounded(_float, 0, False)


def workload_name(text: str) -> str:
    """argparse type: a known workload name (canonical spelling)."""
    from benchmarks import workloads as W
    try:
        return W.get(text).name
    except KeyError:
        raise argparse.ArgumentTypeError("unknown workload %r (known: %s)"
                                         % (text, ", ".join(W.WORKLOADS))) from None


def check_output(path, option: str) -> None:
    """Up-front check that ``path`` (given with ``option``) can be written."""
    if path is None:
        return
    shown = os.fspath(path)
    if not shown:
        raise usage_error("argument %s: empty path" % option)
    try:
        check_writable(shown)
    except Exception as exc:  # OutputFileError (an NBError): name the option
        raise usage_error("argument %s: %s" % (option, exc)) from None


def write_text(path, text: str) -> None:
    """Atomic text output (a reader never sees half a file)."""
    atomic_write_bytes(os.fspath(path), text.encode("utf-8"))


def executable(path: str, option: str) -> str:
    """A program the user named: must be an executable regular file."""
    p = Path(path)
    if not p.exists():
        raise usage_error("argument %s: %s: No such file" % (option, path))
    if not p.is_file():
        raise usage_error("argument %s: %s: not a regular file" % (option, path))
    if not os.access(path, os.X_OK):
        raise usage_error("argument %s: %s: not executable" % (option, path))
    return path


def finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj, **kw) -> str:
    import json
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)
