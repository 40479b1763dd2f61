"""Typed run configuration: the user's request, in nanoBragg's internal units.

`Config` holds exactly the state nanoBragg.c has after its argument loop (and the
-img/-mask header ingestion that precedes it), with the same sentinel values
(NaN = "not given", -1 = "auto") so that the derivation stages in `geometry`,
`crystal` and `sources` can follow the reference's precedence rules one to one.

Units (as in nanoBragg.c after parsing): lengths in metres, angles in radians,
wavelength in metres, divergence in radians, dispersion as a fraction,
fluence in photons/m^2, flux in photons/s, exposure in s, density in g/m^3.
Vectors are plain 3-tuples (x, y, z) in the lab frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Tuple

if TYPE_CHECKING:              # annotations only: `import nbnumba` stays light
    import numpy as np

NAN = math.nan
Vec3 = Tuple[float, float, float]

CONVENTIONS = ("CUSTOM", "ADXV", "MOSFLM", "XDS", "DIALS", "DENZO")
PIVOTS = ("SAMPLE", "BEAM")
SHAPES = ("SQUARE", "ROUND", "GAUSS", "TOPHAT")


@dataclass
class Config:
    # --- crystal -----------------------------------------------------------
    Na: float = 1.0
    Nb: float = 1.0
    Nc: float = 1.0
    user_cell: bool = False
    cell_a: float = 0.0          # Angstrom
    cell_b: float = 0.0          # Angstrom
    cell_c: float = 0.0          # Angstrom
    cell_alpha: float = 0.0      # radians
    cell_beta: float = 0.0       # radians
    cell_gamma: float = 0.0      # radians
    misset_mode: int = 0         # 0: none, 1: explicit angles, -1: random
    misset: Vec3 = (0.0, 0.0, 0.0)   # radians about x, y, z
    sample_x: float = 0.0        # m (crystal size along a); 0 = use N
    sample_y: float = 0.0
    sample_z: float = 0.0
    density: float = 1.0e6       # g/m^3
    molecular_weight: float = 18.0
    xtal_shape: str = "SQUARE"
    fudge: float = 1.0
    matfilename: Optional[str] = None
    hklfilename: Optional[str] = None
    default_F: float = 0.0
    interpolate: int = 2         # 2 = auto (on if any N <= 2), 1 on, 0 off
    dmin: float = 0.0            # m

    # --- detector ----------------------------------------------------------
    Xbeam: float = NAN           # m
    Ybeam: float = NAN
    Xclose: float = NAN
    Yclose: float = NAN
    ORGX: float = NAN            # pixels
    ORGY: float = NAN
    detector_pivot: str = "BEAM"
    beam_convention: str = "MOSFLM"
    fdet_vector: Vec3 = (0.0, 0.0, 1.0)
    sdet_vector: Vec3 = (0.0, -1.0, 0.0)
    odet_vector: Vec3 = (1.0, 0.0, 0.0)
    beam_vector: Vec3 = (1.0, 0.0, 0.0)
    polar_vector: Vec3 = (0.0, 0.0, 1.0)
    spindle_vector: Vec3 = (0.0, 0.0, 1.0)
    twotheta_axis: Vec3 = (0.0, 1.0, 0.0)
    pix0_vector: Vec3 = (0.0, 0.0, 0.0)   # m (already unit-converted by the parser)
    pix0_set: bool = False
    distance: float = 100.0e-3   # m
    close_distance: float = NAN  # m
    detector_mu: float = -1.0    # 1/m
    detector_thick: float = 0.0  # m
    detector_thickstep: float = -1.0
    detector_thicksteps: int = -1
    detector_twotheta: float = 0.0   # radians
    detector_rotx: float = 0.0
    detector_roty: float = 0.0
    detector_rotz: float = 0.0
    detsize_f: float = 102.4e-3  # m
    detsize_s: float = 102.4e-3
    fpixels: int = 0
    spixels: int = 0
    pixel_size: float = 0.1e-3   # m
    curved_detector: bool = False
    point_pixel: bool = False
    roi_xmin: int = -1
    roi_xmax: int = -1
    roi_ymin: int = -1
    roi_ymax: int = -1

    # --- beam ----------------------------------------------------------------
    lambda0: float = 1.0e-10     # m
    fluence: float = 125932015286227086360700780544.0  # photons/m^2
    flux: float = 0.0            # photons/s
    exposure: float = 1.0        # s
    beamsize: float = 1e-4       # m
    polarization: float = 0.0    # Kahn factor
    nopolar: bool = False
    dispersion: float = 0.0      # fraction
    dispstep: float = -1.0
    dispsteps: int = -1
    hdivrange: float = -1.0      # radians
    vdivrange: float = -1.0
    hdivstep: float = -1.0
    vdivstep: float = -1.0
    hdivsteps: int = -1
    vdivsteps: int = -1
    round_div: bool = True
    sourcefilename: Optional[str] = None
    coherent: bool = False

    # --- rotation / mosaicity -------------------------------------------------
    phi0: float = 0.0            # radians
    osc: float = -1.0
    phistep: float = -1.0
    phisteps: int = -1
    mosaic_spread: float = -1.0  # radians
    mosaic_domains: int = -1

    # --- sampling ----------------------------------------------------------
    oversample: int = -1
    oversample_thick: bool = False
    oversample_polar: bool = False
    oversample_omega: bool = False

    # --- background --------------------------------------------------------
    water_size: float = 0.0      # m
    stolfilename: Optional[str] = None
    stol_file_mult: float = 1.0e10
    stoloutfilename: str = "output.stol"

    # --- randomness --------------------------------------------------------
    seed: Optional[int] = None          # C value (already negated); None = -time()
    mosaic_seed: int = -12345678
    misset_seed: Optional[int] = None   # None = same as seed

    # --- outputs -----------------------------------------------------------
    floatfilename: str = "floatimage.bin"
    intfilename: str = "intimage.img"
    pgmfilename: str = "image.pgm"
    noisefilename: str = "noiseimage.img"
    write_pgm: bool = True
    calculate_noise: bool = True
    intfile_scale: float = 0.0
    pgm_scale: float = 0.0
    adc_offset: float = 40.0
    printout: bool = False
    printout_fpixel: int = -1
    printout_spixel: int = -1
    trace_spixel: int = -1
    trace_fpixel: int = -1
    progress_meter: bool = True

    # --- SMV inputs (header values are already applied to the fields above) --
    imginfilename: Optional[str] = None
    maskfilename: Optional[str] = None
    mask_image: Optional[np.ndarray] = field(default=None, repr=False)   # uint16 (S, F)
    img_image: Optional[np.ndarray] = field(default=None, repr=False)    # float32 (S, F)
    # API only: an nbnumba.io.hkl.HKLGrid used instead of -hkl (its F may be a
    # numpy, torch or CuPy array; see nbnumba.interop)
    hkl_grid: Optional[object] = field(default=None, repr=False)

    # --- nbnumba's own switches --------------------------------------------
    c_parity: bool = False       # reproduce nanoBragg.c defects (docs/quirks.md)
    precision: str = "double"    # "double" | "single"
    threads: Optional[int] = None
    device: str = "cpu"          # "cpu" | "cuda"
    noprogress: bool = False
    fdump_path: str = "Fdump.bin"
    workdir: Optional[str] = None    # relative input/output paths resolve here
