"""Optional dependencies: one helper that imports them or says which extra to install.

A plain ``pip install nbnumba`` brings what one simulation needs (numpy, numba,
tqdm).  Everything else is an extra, and every optional import goes through
:func:`require`, so a missing one is a one-line error naming the command that
fixes it (the CLIs print it and exit 2)::

    nbnumba-series: error: --format cbf needs fabio: pip install "nbnumba[formats]"
"""
from __future__ import annotations

import importlib

from .errors import NBError

#: top-level module -> the extra that installs it (see pyproject.toml)
EXTRA_OF = {
    "fabio": "formats",
    "h5py": "formats",
    "dask": "series",
    "distributed": "series",
    "matplotlib": "plots",
    "cupy": "gpu",
    "torch": "torch",
    "gemmi": "sf",
    "yaml": "dev",      # only the golden-corpus tooling (nbnumba/testing/golden.py) reads YAML
    "pytest": "dev",    # nbnumba-probe --pytest
}


class MissingExtraError(NBError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def install_hint(module: str) -> str:
    """``pip install "nbnumba[formats]"`` (quoted: shells such as zsh expand brackets)."""
    extra = EXTRA_OF.get(module.split(".")[0])
    return 'pip install "nbnumba[%s]"' % extra if extra else "pip install %s" % module


def _matplotlib_config_dir() -> None:
    """Give matplotlib a private configuration folder where its own would fail.

    matplotlib keeps its font cache in ``$MPLCONFIGDIR``, else
    ``$XDG_CONFIG_HOME/matplotlib`` or ``~/.config/matplotlib``.  Where that cannot
    be made or written (a home that is not writable, as ``nobody``'s
    ``/nonexistent``) it makes a temporary one itself and says so in two lines on
    stderr, which the tools' one-line rule does not allow.  The same temporary
    folder is made here, quietly, and removed at exit (as matplotlib does)."""
    import os
    import sys
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    folder = os.path.join(base, "matplotlib")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK) and os.path.isdir(folder):
            return
    except OSError:
        pass
    import atexit
    import shutil
    import tempfile
    try:
        tmp = tempfile.mkdtemp(prefix="nbnumba-matplotlib-")
    except OSError:
        return          # (no temporary folder either: matplotlib's own words then)
    atexit.register(shutil.rmtree, tmp, True)
    os.environ["MPLCONFIGDIR"] = tmp


def require(module: str, what: str = ""):
    """Import and return ``module``; if it is missing raise :class:`MissingExtraError`
    whose one-line message says ``what`` needs it and how to install it."""
    if module.split(".")[0] == "matplotlib":
        _matplotlib_config_dir()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or top
        if missing.split(".")[0] != top:
            raise   # the package is there but broken inside: show the real error
        raise MissingExtraError("%s needs %s: %s" % (what or "this", top, install_hint(top))) from None


__all__ = ["EXTRA_OF", "MissingExtraError", "install_hint", "require"]


#: distributions named by ``--version``: the engine's, then the extras'
_VERSIONED = ("numpy", "numba", "llvmlite", "tqdm", "torch", "cupy-cuda12x", "cupy-cuda13x",
              "fabio", "h5py", "dask", "gemmi", "matplotlib")


def version_line(prog: str) -> str:
    """``--version`` of every command: nbnumba's version, then Python's and each
    installed dependency's (read from the installed metadata: nothing is
    imported, so it is as quick as ``-h``), for bug reports."""
    import platform
    from importlib import metadata
    from . import __version__
    have = []
    for dist in _VERSIONED:
        try:
            have.append("%s %s" % (dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            pass
    return "%s (nbnumba %s): Python %s, %s" % (prog, __version__, platform.python_version(),
                                               ", ".join(have))
