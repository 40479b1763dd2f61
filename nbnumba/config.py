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
from dataclasses import dataclass, field, fields
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
    """Everything one simulation needs, in nanoBragg's internal units.

    Lengths in metres, angles in radians, wavelength in metres, divergence in
    radians, dispersion as a fraction, fluence in photons/m^2 -- except the
    unit-cell edges (Angstrom) and the XDS beam centre (pixels), which nanoBragg
    keeps that way.  Each field below says its unit.  ``nbnumba.parse_argv``
    fills it from nanoBragg's flags (which take mm and degrees); sentinels:
    NaN = "not given", -1 = "auto".
    """

    # --- crystal -----------------------------------------------------------
    Na: float = 1.0
    """number of unit cells along a (dimensionless; set by -Na/-N or from sample_x)"""
    Nb: float = 1.0
    """number of unit cells along b (dimensionless)"""
    Nc: float = 1.0
    """number of unit cells along c (dimensionless)"""
    user_cell: bool = False
    """True when -cell gave the cell (else it comes from -mat)"""
    cell_a: float = 0.0
    """unit-cell edge a (Angstrom, as nanoBragg stores it)"""
    cell_b: float = 0.0
    """unit-cell edge b (Angstrom)"""
    cell_c: float = 0.0
    """unit-cell edge c (Angstrom)"""
    cell_alpha: float = 0.0
    """unit-cell angle alpha (radians)"""
    cell_beta: float = 0.0
    """unit-cell angle beta (radians)"""
    cell_gamma: float = 0.0
    """unit-cell angle gamma (radians)"""
    misset_mode: int = 0
    """0: no misset, 1: explicit angles (misset), -1: random (-misset random)"""
    misset: Vec3 = (0.0, 0.0, 0.0)
    """misset rotations about lab x, y, z (radians), applied in that order"""
    sample_x: float = 0.0
    """crystal size along a (m); 0: use Na"""
    sample_y: float = 0.0
    """crystal size along b (m); 0: use Nb"""
    sample_z: float = 0.0
    """crystal size along c (m); 0: use Nc"""
    density: float = 1.0e6
    """crystal density (g/m^3; -density takes g/cm^3); read, unused (as in nanoBragg.c)"""
    molecular_weight: float = 18.0
    """molecular weight (g/mol); read, unused (as in nanoBragg.c)"""
    xtal_shape: str = "SQUARE"
    """lattice-transform shape: SQUARE, ROUND, GAUSS or TOPHAT"""
    fudge: float = 1.0
    """shape-transform width factor (dimensionless)"""
    matfilename: Optional[str] = None
    """MOSFLM orientation matrix file (-mat), or None"""
    hklfilename: Optional[str] = None
    """structure-factor text file (-hkl), or None: without hkl_grid, the fdump_path cache
    if it exists, else default_F"""
    default_F: float = 0.0
    """structure factor of reflections absent from -hkl (electrons)"""
    interpolate: int = 2
    """tricubic F interpolation: 2 auto (on if any N <= 2), 1 on, 0 off"""
    dmin: float = 0.0
    """skip contributions with d-spacing below this (m); 0: no limit"""

    # --- detector ----------------------------------------------------------
    Xbeam: float = NAN
    """beam centre along the detector's X (m); NaN: not given"""
    Ybeam: float = NAN
    """beam centre along the detector's Y (m); NaN: not given"""
    Xclose: float = NAN
    """point of closest approach, X (m); NaN: not given"""
    Yclose: float = NAN
    """point of closest approach, Y (m); NaN: not given"""
    ORGX: float = NAN
    """XDS beam centre, fast (pixels); NaN: not given"""
    ORGY: float = NAN
    """XDS beam centre, slow (pixels); NaN: not given"""
    detector_pivot: str = "BEAM"
    """BEAM or SAMPLE: what stays fixed when the detector rotates"""
    beam_convention: str = "MOSFLM"
    """MOSFLM, XDS, DIALS, ADXV, DENZO or CUSTOM (sets vectors and beam-centre rules)"""
    fdet_vector: Vec3 = (0.0, 0.0, 1.0)
    """unit vector of increasing fast pixel index (lab frame)"""
    sdet_vector: Vec3 = (0.0, -1.0, 0.0)
    """unit vector of increasing slow pixel index (lab frame)"""
    odet_vector: Vec3 = (1.0, 0.0, 0.0)
    """unit detector normal, away from the sample (lab frame)"""
    beam_vector: Vec3 = (1.0, 0.0, 0.0)
    """unit vector of the incident beam (lab frame)"""
    polar_vector: Vec3 = (0.0, 0.0, 1.0)
    """unit polarisation (E-vector) direction (lab frame)"""
    spindle_vector: Vec3 = (0.0, 0.0, 1.0)
    """unit rotation axis of phi (lab frame)"""
    twotheta_axis: Vec3 = (0.0, 1.0, 0.0)
    """unit axis of the detector two-theta rotation (lab frame)"""
    pix0_vector: Vec3 = (0.0, 0.0, 0.0)
    """lab position of the outer corner of the first pixel (m)"""
    pix0_set: bool = False
    """True when -pix0_vector/-pix0_vector_mm was given"""
    distance: float = 100.0e-3
    """sample to beam spot along the beam (m)"""
    close_distance: float = NAN
    """sample to detector plane along odet (m); NaN: derive"""
    detector_mu: float = -1.0
    """sensor attenuation coefficient (1/m); -1: auto"""
    detector_thick: float = 0.0
    """sensor thickness (m); 0: no absorption model"""
    detector_thickstep: float = -1.0
    """thickness of one sensor layer (m); -1: auto"""
    detector_thicksteps: int = -1
    """number of sensor layers; -1: auto"""
    detector_twotheta: float = 0.0
    """detector two-theta angle (radians)"""
    detector_rotx: float = 0.0
    """detector rotation about lab x (radians)"""
    detector_roty: float = 0.0
    """detector rotation about lab y (radians)"""
    detector_rotz: float = 0.0
    """detector rotation about lab z (radians)"""
    detsize_f: float = 102.4e-3
    """detector size along the fast axis (m)"""
    detsize_s: float = 102.4e-3
    """detector size along the slow axis (m)"""
    fpixels: int = 0
    """pixels along the fast axis; 0: from detsize_f / pixel_size"""
    spixels: int = 0
    """pixels along the slow axis; 0: from detsize_s / pixel_size"""
    pixel_size: float = 0.1e-3
    """pixel edge (m)"""
    curved_detector: bool = False
    """all pixels at the same distance from the sample"""
    point_pixel: bool = False
    """pixels as points: no obliquity (solid-angle) factor"""
    roi_xmin: int = -1
    """region of interest, first fast index (pixels); -1: whole detector"""
    roi_xmax: int = -1
    """region of interest, last fast index (pixels); -1: whole detector"""
    roi_ymin: int = -1
    """region of interest, first slow index (pixels); -1: whole detector"""
    roi_ymax: int = -1
    """region of interest, last slow index (pixels); -1: whole detector"""

    # --- beam ----------------------------------------------------------------
    lambda0: float = 1.0e-10
    """central wavelength (m)"""
    fluence: float = 125932015286227086360700780544.0
    """incident fluence (photons/m^2)"""
    flux: float = 0.0
    """incident flux (photons/s); 0: use fluence"""
    exposure: float = 1.0
    """exposure time (s)"""
    beamsize: float = 1e-4
    """beam width (m), square beam"""
    polarization: float = 0.0
    """Kahn polarisation factor (dimensionless, -1..1)"""
    nopolar: bool = False
    """switch the polarisation factor off"""
    dispersion: float = 0.0
    """spectral width (fraction of lambda0, e.g. 0.002 for 0.2%)"""
    dispstep: float = -1.0
    """spectral step (fraction); -1: auto"""
    dispsteps: int = -1
    """number of wavelengths; -1: auto"""
    hdivrange: float = -1.0
    """horizontal beam divergence, full range (radians); -1: auto"""
    vdivrange: float = -1.0
    """vertical beam divergence, full range (radians); -1: auto"""
    hdivstep: float = -1.0
    """horizontal divergence step (radians); -1: auto"""
    vdivstep: float = -1.0
    """vertical divergence step (radians); -1: auto"""
    hdivsteps: int = -1
    """number of horizontal divergence steps; -1: auto"""
    vdivsteps: int = -1
    """number of vertical divergence steps; -1: auto"""
    round_div: bool = True
    """keep only divergence points inside an ellipse (nanoBragg's default)"""
    sourcefilename: Optional[str] = None
    """source list file (-sourcefile), or None"""
    coherent: bool = False
    """-coherent (read; no effect, as in nanoBragg.c)"""

    # --- rotation / mosaicity -------------------------------------------------
    phi0: float = 0.0
    """starting spindle angle (radians)"""
    osc: float = -1.0
    """rotation range of the image (radians); -1: auto"""
    phistep: float = -1.0
    """spindle step (radians); -1: auto"""
    phisteps: int = -1
    """number of spindle steps; -1: auto"""
    mosaic_spread: float = -1.0
    """isotropic mosaic spread: each domain is turned by up to this angle about a random axis
    (radians); 0 or -1: none"""
    mosaic_domains: int = -1
    """number of mosaic domains; -1: auto"""

    # --- sampling ----------------------------------------------------------
    oversample: int = -1
    """sub-pixels per pixel edge; -1: auto"""
    oversample_thick: bool = False
    """apply the sensor capture fraction per sub-pixel"""
    oversample_polar: bool = False
    """apply the polarisation factor per sub-pixel"""
    oversample_omega: bool = False
    """apply the solid-angle factor per sub-pixel"""

    # --- background --------------------------------------------------------
    water_size: float = 0.0
    """water-droplet size for the background (m); 0: none"""
    stolfilename: Optional[str] = None
    """S(Q) table (-stol/-4stol/-Q; read, unused as in nanoBragg.c), or None"""
    stol_file_mult: float = 1.0e10
    """factor that turns the table's first column into 1/m (1e10 for 1/Angstrom)"""
    stoloutfilename: str = "output.stol"
    """file name of -stolout (not written, as in nanoBragg.c)"""

    # --- randomness --------------------------------------------------------
    seed: Optional[int] = None
    """noise seed as the C holds it (already negated); None: -time()"""
    mosaic_seed: int = -12345678
    """seed of the mosaic-domain orientations, as the C holds it (negated: -mosaic_seed 5
    gives -5)"""
    misset_seed: Optional[int] = None
    """seed of -misset random, as the C holds it (negated); None: same as seed"""

    # --- outputs -----------------------------------------------------------
    floatfilename: str = "floatimage.bin"
    """float image file (float32, photons per pixel)"""
    intfilename: str = "intimage.img"
    """SMV integer image file (counts: photons * intfile_scale + adc_offset)"""
    pgmfilename: str = "image.pgm"
    """PGM preview file"""
    noisefilename: str = "noiseimage.img"
    """SMV noise image file (Poisson photons + adc_offset, counts)"""
    write_pgm: bool = True
    """write the PGM preview"""
    calculate_noise: bool = True
    """render and write the Poisson noise image"""
    intfile_scale: float = 0.0
    """counts per photon of the integer image; 0: auto (max pixel -> 55000)"""
    pgm_scale: float = 0.0
    """grey levels per photon of the PGM; 0: auto"""
    adc_offset: float = 40.0
    """pedestal added to every SMV pixel (counts)"""
    printout: bool = False
    """print pixel values (-printout; the command line prints them, simulate() does not)"""
    printout_fpixel: int = -1
    """fast index of the one pixel -printout_pixel prints; -1: all"""
    printout_spixel: int = -1
    """slow index of the one pixel -printout_pixel prints; -1: all"""
    trace_spixel: int = -1
    """slow index of the pixel -trace_pixel traces; -1: none"""
    trace_fpixel: int = -1
    """fast index of the pixel -trace_pixel traces; -1: none"""
    progress_meter: bool = True
    """the command line's progress bar on stderr (a terminal only); simulate() shows none
    (use its progress=)"""

    # --- SMV inputs (header values are already applied to the fields above) --
    imginfilename: Optional[str] = None
    """SMV file whose header and pixels -img reads, or None"""
    maskfilename: Optional[str] = None
    """SMV mask file (-mask; 0 = skip the pixel), or None"""
    mask_image: Optional[np.ndarray] = field(default=None, repr=False)
    """mask pixels, uint16 (slow, fast); 0 = skip; or None"""
    img_image: Optional[np.ndarray] = field(default=None, repr=False)
    """pixels of -img, float32 (slow, fast), or None; kept, not used by the render (its
    header values are)"""
    # API only: an nbnumba.io.hkl.HKLGrid used instead of -hkl (its F may be a
    # numpy, torch or CuPy array; see nbnumba.interop)
    hkl_grid: Optional[object] = field(default=None, repr=False)
    """API only: an nbnumba.io.hkl.HKLGrid used instead of -hkl (F may be numpy, torch or CuPy)"""

    # --- nbnumba's own switches --------------------------------------------
    c_parity: bool = False
    """reproduce nanoBragg.c's defects (docs/quirks.md)"""
    c_reads_flags_otherwise: bool = False
    """set by the default-mode parse: nanoBragg.c's substring matching reads these
    flags into other settings, or refuses or drops one (docs/quirks.md #5)"""
    sample_pivot_flags: Tuple[str, ...] = ()
    """set by the default-mode parse: the -ORGX/-ORGY/-Xclose/-Yclose flags the
    command line gives (an -img/-mask header's ORGX is not one), which a
    BEAM-pivot convention does not use"""
    precision: str = "double"
    """"double" or "single" arithmetic in the kernel"""
    threads: Optional[int] = None
    """CPU threads; None: all cores"""
    device: str = "cpu"
    """"cpu" (numba) or "cuda" (CuPy)"""
    noprogress: bool = False
    """-noprogress was given"""
    fdump_path: str = "Fdump.bin"
    """structure-factor cache nanoBragg reads and writes (Fdump.bin)"""
    max_memory: float = 0.0
    """bytes a run may use (-max_memory, given in MB); 0: the machine's available memory"""
    workdir: Optional[str] = None
    """directory relative input/output paths resolve in; None: the current one"""


def differing_fields(a: Config, b: Config, ignore=()) -> list:
    """Names of the fields (bar ``ignore``) in which two Configs differ: arrays
    and tuples compared by value, NaN equal to NaN."""
    import numpy as np

    def same(x, y):
        if x is y:
            return True
        try:
            return bool(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True))
        except (TypeError, ValueError):     # (words, None, objects)
            try:
                return bool(x == y)
            except ValueError:
                return False
    return [f.name for f in fields(Config)
            if f.name not in ignore and not same(getattr(a, f.name), getattr(b, f.name))]
