"""Writers for a Result: the same files, names and defaults as nanoBragg.c
(floatimage.bin, intimage.img, image.pgm, noiseimage.img), written atomically."""
from __future__ import annotations

import os
from typing import List, Tuple

from .interop import to_host
from .io.atomic import check_distinct, check_not_input, check_writable, output_set
from .io.floatimage import write_float_image
from .io.pgm import write_pgm
from .io.smv import nanobragg_smv_fields, reader_smv_fields, write_smv


def _path(cfg, name):
    if cfg.workdir and not os.path.isabs(name):
        return os.path.join(cfg.workdir, name)
    return name


def input_files(cfg) -> List[str]:
    names = [cfg.matfilename, cfg.hklfilename, cfg.imginfilename, cfg.maskfilename,
             cfg.sourcefilename, cfg.stolfilename]
    out = [_path(cfg, n) for n in names if n]
    from .model import reads_fdump
    cache = _path(cfg, cfg.fdump_path)
    if reads_fdump(cfg) and os.path.exists(cache):
        out.append(cache)       # an output over it would destroy the F it was read from
    return out


def smv_fields(res, noise=False, seconds_after_epoch=0.0):
    """nanoBragg's SMV header for ``res``; in default mode followed by the keys
    image readers need (ADC_OFFSET, DATE, ...: see ``reader_smv_fields``)."""
    m = res.model
    d, st = m.det, m.steps
    fields = nanobragg_smv_fields(
        d.fpixels, d.spixels, d.pixel_size, d.distance, m.cfg.lambda0, d.Xbeam, d.Ybeam,
        d.Fbeam, d.Sbeam, d.detsize_s, d.dials_origin, d.ORGX, d.ORGY, d.close_distance,
        st.phi0, st.osc, d.twotheta, denzo_sign=1 if noise else -1)
    if not m.cfg.c_parity:
        fields += reader_smv_fields(m.cfg.adc_offset, m.cfg.exposure, seconds_after_epoch)
    return fields


def output_paths(cfg, fdump: bool = False) -> List[Tuple[str, str]]:
    """``(flag, path)`` of every file this run will write, in writing order.

    ``fdump``: include the structure-factor cache (written when -hkl is read)."""
    out = [("-floatfile", _path(cfg, cfg.floatfilename)), ("-intfile", _path(cfg, cfg.intfilename))]
    if cfg.write_pgm:
        out.append(("-pgmfile", _path(cfg, cfg.pgmfilename)))
    if cfg.calculate_noise:
        out.append(("-noisefile", _path(cfg, cfg.noisefilename)))
    if fdump and cfg.hklfilename and cfg.hkl_grid is None:
        out.append(("the %s cache" % cfg.fdump_path, _path(cfg, cfg.fdump_path)))
    return out


def check_output_set(cfg, fdump: bool = False) -> None:
    """Refuse, before anything is computed, an output set that would destroy
    data: two outputs naming one file, an output that is an input of the run
    (the Fdump.bin cache included), or a target that cannot be written."""
    from .errors import CWD_GONE, cwd_gone
    if cwd_gone():      # (write_outputs from Python: os.path.realpath's traceback)
        from .io.atomic import OutputFileError
        raise OutputFileError(CWD_GONE)
    outs = output_paths(cfg, fdump)
    check_distinct(outs)
    inputs = input_files(cfg)
    for what, p in outs:
        check_not_input(p, inputs, what)
        if not what.startswith("the "):     # an unwritable cache is only a warning, as in C
            check_writable(p, what)


def fdump_message(cfg):
    """(write it?, the line nanoBragg prints) for the Fdump.bin cache of -hkl."""
    if not cfg.hklfilename or cfg.hkl_grid is not None:
        return False, None
    try:
        check_writable(_path(cfg, cfg.fdump_path))
    except Exception:
        return False, "WARNING: unable to open dump file: %s" % cfg.fdump_path
    return True, "writing dump file for next time: %s" % cfg.fdump_path


def write_outputs(res, cfg=None, quiet=False, fdump: bool = False) -> List[str]:
    """Write every file nanoBragg would write for this run; returns the paths.

    All or nothing: every file is staged first and the set is renamed into
    place only when all of them were written; on any error (or Ctrl-C) the old
    files are all kept and no temporary file remains.  ``fdump``: also write the
    Fdump.bin cache of the -hkl structure factors (the CLI does, as nanoBragg).

    SMV headers that outgrow nanoBragg's 512 bytes are written as valid files
    (HEADER_BYTES=1024) by default; -c_parity writes the C's overflowing bytes.
    """
    from .api import Result
    from .config import Config
    from .errors import ConfigError
    if not isinstance(res, Result):
        raise ConfigError("write_outputs: expected an nbnumba Result (from nbnumba.simulate), got %s"
                          % type(res).__name__)
    if cfg is None:
        cfg = res.model.cfg
    elif not isinstance(cfg, Config):
        raise ConfigError("write_outputs: cfg must be an nbnumba.Config or None, got %s"
                          % type(cfg).__name__)
    check_output_set(cfg, fdump)
    overflow = "c" if cfg.c_parity else "grow"
    todo = [(cfg.floatfilename, lambda p: write_float_image(p, to_host(res.float_image)))]
    todo.append((cfg.intfilename, lambda p: write_smv(p, res.int_image, smv_fields(res), header_overflow=overflow)))
    if cfg.write_pgm and res.pgm_image is not None:
        todo.append((cfg.pgmfilename, lambda p: write_pgm(p, res.pgm_image, res.stats["pgm_scale"])))
    if cfg.calculate_noise and res.noise_image is not None:
        todo.append((cfg.noisefilename, lambda p: write_smv(p, res.noise_image, smv_fields(res, True),
                                                          header_overflow=overflow)))
    if fdump and getattr(res.model, "fdump_grid", None) is not None:
        from .io.hkl import write_fdump as _wf
        todo.append((cfg.fdump_path, lambda p: _wf(p, res.model.fdump_grid)))
    written = []
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with output_set():
            for name, fn in todo:
                p = _path(cfg, name)
                fn(p)
                written.append(p)
    return written


def write_fdump(model):
    """Cache the structure factors read from -hkl, as nanoBragg.c does (alone;
    the CLI writes the cache inside the output set, see write_outputs)."""
    from .io.hkl import write_fdump as _w
    if model.fdump_grid is None:
        return None
    p = _path(model.cfg, model.cfg.fdump_path)
    try:
        _w(p, model.fdump_grid)
    except Exception:
        return "WARNING: unable to open dump file: %s" % model.cfg.fdump_path
    return "writing dump file for next time: %s" % model.cfg.fdump_path
