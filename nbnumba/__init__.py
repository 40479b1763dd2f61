"""nbnumba: a fast, faithful Python port of nanoBragg.

    import nbnumba
    res = nbnumba.simulate_argv(["-cell", "100", "100", "100", "90", "90", "90",
                                 "-default_F", "100", "-N", "5", "-lambda", "6.2",
                                 "-distance", "100", "-detpixels", "256"])
    res.float_image      # float32 (slow, fast) photons/pixel
"""
from .config import Config
from .errors import ConfigError, InputFileError, NBError, UsageError

__version__ = "0.1.0"


def parse_argv(argv):
    """nanoBragg command-line flags -> Config (raises UsageError)."""
    from .flags import parse_argv as _p
    return _p(list(argv))


def simulate(cfg, backend=None, out=None):
    """Config -> Result (float image, statistics, derived images).

    ``out``: optional preallocated float32 (S, F) image (numpy, torch or CuPy)
    that receives the float image without a copy."""
    from .api import simulate as _s
    return _s(cfg, backend=backend, out=out)


def simulate_argv(argv, cwd=None, **overrides):
    """Parse nanoBragg flags and simulate (relative paths resolve in cwd)."""
    from .api import simulate_argv as _s
    return _s(argv, cwd=cwd, **overrides)


def write_outputs(result, cfg=None, quiet=False):
    """Write the float/int/PGM/noise files like nanoBragg.c (atomically)."""
    from .outputs import write_outputs as _w
    return _w(result, cfg or result.model.cfg, quiet=quiet)


def simulate_many(argvs, cwd=None, workers=None, threads=None, write=False, **kw):
    """Simulate many nanoBragg command lines in one process (parallel on a
    thread pool); one ``BatchItem`` (ok, result, error, exit_code) per line,
    in order.  A failing line does not stop the others.  See nbnumba.batch."""
    from .batch import simulate_many as _m
    return _m(argvs, cwd=cwd, workers=workers, threads=threads, write=write, **kw)


__all__ = ["Config", "ConfigError", "InputFileError", "NBError", "UsageError",
           "parse_argv", "simulate", "simulate_argv", "simulate_many", "write_outputs",
           "__version__"]
