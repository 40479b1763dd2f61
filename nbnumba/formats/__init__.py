"""Moved: the series file formats now live in :mod:`nbnumba.io` with nanoBragg's own
files (one module per format: ``io.smv``, ``io.cbf``, ``io.nexus``; frame geometry in
``io.frames``).  This alias keeps ``nbnumba.formats`` imports working; new code
imports from ``nbnumba.io``."""
import sys as _sys

from ..io import cbf, nexus, smv  # noqa: F401
from ..io.frames import *  # noqa: F401,F403
from ..io.frames import __all__  # noqa: F401

for _name, _mod in (("cbf", cbf), ("nexus", nexus), ("smv", smv)):
    _sys.modules[__name__ + "." + _name] = _mod
