"""Writers for a Result: the same files, names and defaults as nanoBragg.c
(floatimage.bin, intimage.img, image.pgm, noiseimage.img), written atomically."""
from __future__ import annotations

import os
from typing import List

from .api import to_host
from .io.atomic import check_not_input
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
    return [_path(cfg, n) for n in names if n]


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


def write_outputs(res, cfg, quiet=False) -> List[str]:
    """Write every file nanoBragg would write for this run; returns the paths.

    SMV headers that outgrow nanoBragg's 512 bytes are written as valid files
    (HEADER_BYTES=1024) by default; -c_parity writes the C's overflowing bytes.
    """
    inputs = input_files(cfg)
    overflow = "c" if cfg.c_parity else "grow"
    written = []
    todo = [(cfg.floatfilename, lambda p: write_float_image(p, to_host(res.float_image)))]
    todo.append((cfg.intfilename, lambda p: write_smv(p, res.int_image, smv_fields(res), header_overflow=overflow)))
    if cfg.write_pgm and res.pgm_image is not None:
        todo.append((cfg.pgmfilename, lambda p: write_pgm(p, res.pgm_image, res.stats["pgm_scale"])))
    if cfg.calculate_noise and res.noise_image is not None:
        todo.append((cfg.noisefilename, lambda p: write_smv(p, res.noise_image, smv_fields(res, True),
                                                          header_overflow=overflow)))
    for name, fn in todo:
        p = _path(cfg, name)
        check_not_input(p, inputs)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, fn in todo:
            p = _path(cfg, name)
            fn(p)
            written.append(p)
    return written


def write_fdump(model):
    """Cache the structure factors read from -hkl, as nanoBragg.c does."""
    from .io.hkl import write_fdump as _w
    if model.fdump_grid is None:
        return None
    p = _path(model.cfg, model.cfg.fdump_path)
    try:
        _w(p, model.fdump_grid)
    except Exception:
        return "WARNING: unable to open dump file: %s" % model.cfg.fdump_path
    return "writing dump file for next time: %s" % model.cfg.fdump_path
