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


def parse_argv(argv, cwd=None):
    """nanoBragg command-line flags (a list of words) -> Config (raises
    UsageError; ConfigError for an argv that is not a list of words).
    Relative input and output paths resolve in ``cwd`` (default: the
    process's working directory, when the run reads or writes them)."""
    from .validate import argv_words, resolve_cwd
    from .flags import parse_argv as _p
    return _p(argv_words(argv), cwd=resolve_cwd(cwd))


def simulate(cfg, backend=None, progress=None, out=None):
    """Config -> Result (float image, statistics, derived images).

    ``progress``: optional callable(done_rows, total_rows), called as rows
    finish.  ``out``: optional preallocated float32 (S, F) image (numpy, torch
    or CuPy) that receives the float image without a copy."""
    from .api import simulate as _s
    return _s(cfg, backend=backend, progress=progress, out=out)


def simulate_argv(argv, cwd=None, **overrides):
    """Parse nanoBragg flags (a list of words) and simulate; relative paths
    resolve in cwd, without changing the process's working directory."""
    from .api import simulate_argv as _s
    return _s(argv, cwd=cwd, **overrides)


def write_outputs(result, cfg=None, quiet=False):
    """Write the float/int/PGM/noise files like nanoBragg.c (atomically, all or
    none); returns their paths.  Not the Fdump.bin cache, which the command
    line also writes.  ``cfg``: whose file names to use (default: the run's).
    ``quiet`` is accepted and has no effect."""
    from .outputs import write_outputs as _w
    return _w(result, cfg, quiet=quiet)


def simulate_many(argvs, cwd=None, workers=None, threads=None, write=False, **kw):
    """Simulate many nanoBragg command lines in one process (parallel on a
    thread pool); one ``BatchItem`` (ok, result, error, exit_code) per line,
    in order.  A failing line does not stop the others.  See nbnumba.batch."""
    from .batch import simulate_many as _m
    return _m(argvs, cwd=cwd, workers=workers, threads=threads, write=write, **kw)


__all__ = ["Config", "ConfigError", "InputFileError", "NBError", "UsageError",
           "parse_argv", "simulate", "simulate_argv", "simulate_many", "write_outputs",
           "__version__"]
