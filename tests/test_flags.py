"""Tests of nbnumba.flags: the flag table, parse_argv (default and c_parity), help."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nbnumba.config import Config
from nbnumba.errors import InputFileError, UsageError
from nbnumba.flags import (
    FLAGS,
    GROUPS,
    RTD,
    HelpRequested,
    c_blocks_matching,
    flag_names,
    parse_argv,
    short_usage,
    spec_for,
    usage_text,
)

CELL = ["-cell", "100", "100", "100", "90", "90", "90"]


# ---------------------------------------------------------------------------
# helpers: a tiny SMV file written by hand
# ---------------------------------------------------------------------------

def write_smv(path, size1, size2, extra_lines="", data=None, pad=b" "):
    text = ("{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
            f"SIZE1={size1};\nSIZE2={size2};\n{extra_lines}}}").encode("latin-1")
    assert len(text) <= 512
    if data is None:
        data = np.arange(size1 * size2, dtype="<u2")
    path.write_bytes(text.ljust(512, pad) + np.asarray(data, dtype="<u2").tobytes())
    return str(path)


@pytest.fixture
def mask_file(tmp_path):
    data = np.array([0, 1, 2, 3, 4, 0, 6, 7, 8, 9, 10, 0], dtype="<u2")
    return write_smv(tmp_path / "mask.img", 4, 3, "PIXEL_SIZE=0.1;\nBEAM_CENTER_Y=0.1;\n", data)


@pytest.fixture
def img_file(tmp_path):
    return write_smv(tmp_path / "in.img", 5, 2,
                     "PIXEL_SIZE=0.2;\nDISTANCE=150;\nWAVELENGTH=1.5;\nBEAM_CENTER_X=0.3;\n"
                     "BEAM_CENTER_Y=0.1;\nPHI=10;\nOSC_RANGE=0.5;\nTWOTHETA=20;\n")


# ---------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------

# every spelling the brief lists (C patterns and synonyms) plus nbnumba's extras
EXPECTED_SPELLINGS = """
-Na -Nb -Nc -N -cell -misset -samplesize -sample_size -sample_thick -sample_x -sample_width
-sample_y -width -sample_heigh -sample_height -sample_z -heigh -height -xtalsize -xtal_size
-xtal_thick -xtal_x -xtal_width -xtal_y -xtal_height -xtal_heigh -xtal_z -density -sample_den
-sample_density -MW -molecular_weight -molec -Xbeam -Ybeam -Xclose -Yclose -ORGX -ORGY -pivot
-mosflm -xds -adxv -denzo -dials -fdet_vector -sdet_vector -odet_vector -beam_vector
-polar_vector -spindle_axis -twotheta_axis -pix0_vector -pix0_vector_mm -distance
-close_distance -detector_abs -detector_absorb -detector_thick -detector_thicksteps -thicksteps
-twotheta -detector_rotx -detector_roty -detector_rotz -detsize -detsize_f -detsize_s -detpixels
-detpixels_f -detpixels_x -detpixels_s -detpixels_y -curved_det -pixel -point_pixel -polar
-nopolar -oversample_thick -oversample_polar -oversample_omega -oversample -roi -lambda -wave
-wavelength -energy -fluence -flux -exposure -beamsize -mosaic -mosaici -mosaicity -mosaic_spr
-mosaic_spread -mosaic_dom -mosaic_domains -dispersion -dispsteps -divergence -hdivrange
-vdivrange -hdivstep -hdivsteps -vdivstep -vdivsteps -divsteps -round_div -square_div -adc -phi
-osc -phistep -phisteps -dmin -mat -hkl -default_F -img -mask -stolout -stol -4stol -Q
-sourcefile -floatfile -floatimage -intfile -intimage -pgmfile -pgmimage -noisefile -noiseimage
-nonoise -nopgm -scale -pgmscale -coherent -printout -printout_pixel -noprogress -progress
-interpolate -nointerpolate -round_xtal -square_xtal -gauss_xtal -binary_spots -tophat_spots
-fudge -trace_pixel -dump_pixel -seed -mosaic_seed -misset_seed -water
-c_parity -precision -threads -device -h -help --help
""".split()


def test_flag_names_cover_every_listed_spelling():
    names = flag_names()
    missing = [s for s in EXPECTED_SPELLINGS if s not in names]
    assert missing == []
    assert len(set(EXPECTED_SPELLINGS)) == len(EXPECTED_SPELLINGS)


def test_table_is_consistent():
    seen = set()
    for spec in FLAGS:
        assert spec.group in GROUPS
        assert spec.help and "\n" not in spec.help
        assert spec.kind in ("float", "int", "str", "vec3", "choice", "misset", "abs", None)
        assert (spec.nargs == 0) == (spec.kind is None)
        if spec.kind == "vec3":
            assert spec.nargs == 3
        if spec.kind == "choice":
            assert spec.choices
        for n in spec.spellings:
            assert n not in seen
            seen.add(n)
            assert spec_for(n) is spec
        for f in spec.fields:
            assert hasattr(Config(), f), (spec.name, f)
        if spec.name != "-h":
            assert spec.fields, spec.name
        if spec.nargs and spec.name not in ("-img", "-mask"):
            assert len(spec.example) in (spec.nargs, 1), spec.name
    assert seen == set(flag_names())


def test_every_c_flag_spelling_triggers_a_c_block():
    for spec in FLAGS:
        if spec.group == "nbnumba extras":
            continue
        for n in spec.spellings:
            assert c_blocks_matching(n), n


# Flags whose example value equals the default state: start from a prefix that
# changes the fields first, so that the flag must visibly change them back.
PREFIX = {
    "-mosflm": ["-xds"],
    "-adxv": ["-xds"],
    "-denzo": ["-xds"],
    "-dials": ["-xds"],
    "-distance": ["-xds"],
    "-Xbeam": ["-xds"],
    "-Ybeam": ["-xds"],
    "-square_xtal": ["-round_xtal"],
    "-round_div": ["-square_div"],
    "-progress": ["-noprogress"],
    "-pgmfile": ["-nopgm"],
    "-pgmscale": ["-nopgm"],
    "-noisefile": ["-nonoise"],
    "-polar": ["-nopolar"],
    "-stol": ["-Q", "other.Q"],
}

ALL_SPELLINGS = [(spec.name, n) for spec in FLAGS for n in spec.spellings if spec.name != "-h"]


def _differs(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (a is None) != (b is None) or not np.array_equal(a, b)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return False
    return a != b


def _example_argv(canonical, spelling, mask_file, img_file):
    spec = spec_for(canonical)
    if canonical == "-mask":
        values = [mask_file]
    elif canonical == "-img":
        values = [img_file]
    else:
        values = list(spec.example)
    return PREFIX.get(canonical, []) + [spelling] + values


@pytest.mark.parametrize("c_parity", [False, True], ids=["default", "c_parity"])
@pytest.mark.parametrize("canonical,spelling", ALL_SPELLINGS, ids=[s for _, s in ALL_SPELLINGS])
def test_every_flag_changes_its_fields(canonical, spelling, c_parity, mask_file, img_file):
    spec = spec_for(canonical)
    argv = _example_argv(canonical, spelling, mask_file, img_file)
    tail = ["-c_parity"] if c_parity and canonical != "-c_parity" else []
    before = parse_argv(PREFIX.get(canonical, []) + tail)
    after = parse_argv(argv + tail)
    for f in spec.fields:
        if f == "c_parity" and c_parity:
            continue
        assert _differs(getattr(before, f), getattr(after, f)), (spelling, f)


def test_empty_argv_gives_defaults():
    cfg = parse_argv([])
    ref = Config()
    for f in ("distance", "pixel_size", "lambda0", "detector_pivot", "beam_convention", "Na",
              "seed", "mosaic_seed", "write_pgm", "calculate_noise", "c_parity", "precision"):
        assert not _differs(getattr(cfg, f), getattr(ref, f)), f


# ---------------------------------------------------------------------------
# unit conversions (C formulas, exact)
# ---------------------------------------------------------------------------

def test_length_conversions():
    cfg = parse_argv(["-distance", "231.27466", "-pixel", "0.172", "-detsize", "50",
                      "-Xbeam", "51.2", "-close_distance", "150", "-beamsize", "0.05",
                      "-samplesize", "0.05", "-detector_thick", "450", "-water", "100",
                      "-dmin", "2.5", "-lambda", "6.2"])
    assert cfg.distance == 231.27466 / 1000.0
    assert cfg.distance == pytest.approx(0.23127466, rel=1e-15)
    assert cfg.pixel_size == 0.172 / 1000.0
    assert cfg.detsize_f == cfg.detsize_s == 50 / 1000.0
    assert cfg.Xbeam == 51.2 / 1000.0
    assert cfg.close_distance == 0.15
    assert cfg.beamsize == 0.05 / 1000
    assert cfg.sample_x == cfg.sample_y == cfg.sample_z == 0.05 / 1000
    assert cfg.detector_thick == 450 * 1e-6
    assert cfg.water_size == 100 / 1e6
    assert cfg.dmin == 2.5 * 1e-10
    assert cfg.lambda0 == 6.2 / 1e10


def test_energy_to_wavelength():
    cfg = parse_argv(["-energy", "12398.42"])
    assert cfg.lambda0 == pytest.approx(1e-10, rel=1e-15)
    cfg = parse_argv(["-energy", "6000"])
    assert cfg.lambda0 == (12398.42 / 6000.0) / 1e10
    # command-line order: the later of -lambda/-energy wins
    assert parse_argv(["-energy", "6000", "-lambda", "1.5"]).lambda0 == 1.5 / 1e10
    assert parse_argv(["-lambda", "1.5", "-energy", "6000"]).lambda0 == (12398.42 / 6000.0) / 1e10


def test_angle_and_fraction_conversions():
    cfg = parse_argv(CELL[:1] + ["70", "80", "90", "75", "85", "95"]
                     + ["-misset", "10", "20", "30", "-phi", "10", "-osc", "0.1",
                        "-phistep", "0.01", "-mosaic", "0.5", "-twotheta", "15",
                        "-detector_rotx", "5", "-divergence", "0.28", "-hdivstep", "0.02",
                        "-dispersion", "0.1"])
    assert cfg.user_cell is True
    assert (cfg.cell_a, cfg.cell_b, cfg.cell_c) == (70.0, 80.0, 90.0)
    assert cfg.cell_alpha == 75 / RTD and cfg.cell_gamma == 95 / RTD
    assert cfg.cell_beta == pytest.approx(math.radians(85), rel=1e-15)
    assert cfg.misset_mode == 1
    assert cfg.misset == (10 / RTD, 20 / RTD, 30 / RTD)
    assert cfg.phi0 == 10 / RTD and cfg.osc == 0.1 / RTD and cfg.phistep == 0.01 / RTD
    assert cfg.mosaic_spread == 0.5 / RTD
    assert cfg.detector_twotheta == 15 / RTD
    assert cfg.detector_rotx == 5 / RTD
    assert cfg.hdivrange == cfg.vdivrange == 0.28 / 1000.0
    assert cfg.hdivstep == 0.02 / 1000.0
    assert cfg.dispersion == 0.1 / 100.0
    assert RTD == 180.0 / math.pi


def test_integers_seeds_and_misc():
    cfg = parse_argv(["-N", "5", "-Nb", "7", "-seed", "7", "-mosaic_seed", "5",
                      "-misset_seed", "3", "-density", "1.2", "-MW", "25000",
                      "-detpixels", "64", "-detpixels_s", "32", "-roi", "1", "2", "3", "4",
                      "-printout_pixel", "3", "4", "-trace_pixel", "5", "6",
                      "-mosaic_dom", "10", "-oversample", "2"])
    assert (cfg.Na, cfg.Nb, cfg.Nc) == (5.0, 7.0, 5.0)
    assert isinstance(cfg.Na, float)
    assert (cfg.seed, cfg.mosaic_seed, cfg.misset_seed) == (-7, -5, -3)
    assert cfg.density == 1.2 * 1e6
    assert cfg.molecular_weight == 25000.0
    assert (cfg.fpixels, cfg.spixels) == (64, 32)
    assert (cfg.roi_xmin, cfg.roi_xmax, cfg.roi_ymin, cfg.roi_ymax) == (1, 2, 3, 4)
    # -printout_pixel is fast then slow; -trace_pixel is slow then fast
    assert (cfg.printout_fpixel, cfg.printout_spixel, cfg.printout) == (3, 4, True)
    assert (cfg.trace_spixel, cfg.trace_fpixel) == (5, 6)
    assert cfg.mosaic_domains == 10 and cfg.oversample == 2


def test_detector_abs():
    cfg = parse_argv(["-detector_thick", "450", "-detector_abs", "50"])
    assert cfg.detector_mu == 1.0 / (50 * 1e-6)
    assert cfg.detector_thick == 450e-6
    for off in ("inf", "0"):
        cfg = parse_argv(["-detector_thick", "450", "-detector_abs", off])
        assert cfg.detector_mu == 0.0 and cfg.detector_thick == 0.0
        cfg = parse_argv(["-detector_thick", "450", "-detector_abs", off, "-c_parity"])
        assert cfg.detector_mu == 0.0 and cfg.detector_thick == 0.0
    # the later -detector_thick wins again
    assert parse_argv(["-detector_abs", "inf", "-detector_thick", "300"]).detector_thick == 300e-6


def test_stol_multipliers():
    assert parse_argv(["-stol", "a"]).stol_file_mult == 1e10
    assert parse_argv(["-4stol", "a"]).stol_file_mult == 1e10 / 4
    cfg = parse_argv(["-Q", "a"])
    assert cfg.stol_file_mult == 1e10 / math.pi / 4 and cfg.stolfilename == "a"
    assert parse_argv(["-stolout", "x.stol"]).stoloutfilename == "x.stol"


def test_output_switches():
    cfg = parse_argv(["-nopgm", "-pgmfile", "a.pgm"])
    assert cfg.write_pgm and cfg.pgmfilename == "a.pgm"
    cfg = parse_argv(["-nopgm", "-pgmscale", "3"])
    assert cfg.write_pgm and cfg.pgm_scale == 3.0
    assert not parse_argv(["-pgmfile", "a.pgm", "-nopgm"]).write_pgm
    cfg = parse_argv(["-nonoise", "-noisefile", "n.img"])
    assert cfg.calculate_noise and cfg.noisefilename == "n.img"
    assert not parse_argv(["-noisefile", "n.img", "-nonoise"]).calculate_noise
    cfg = parse_argv(["-nopolar", "-polar", "0.99"])
    assert cfg.polarization == 0.99 and cfg.nopolar is False
    cfg = parse_argv(["-noprogress"])
    assert cfg.progress_meter is False and cfg.noprogress is True
    cfg = parse_argv(["-noprogress", "-progress"])
    assert cfg.progress_meter is True and cfg.noprogress is False
    cfg = parse_argv(["-scale", "2.5", "-adc", "10", "-floatfile", "f.bin", "-intimage", "i.img"])
    assert (cfg.intfile_scale, cfg.adc_offset) == (2.5, 10.0)
    assert (cfg.floatfilename, cfg.intfilename) == ("f.bin", "i.img")


def test_misset_random():
    cfg = parse_argv(["-misset", "random"])
    assert cfg.misset_mode == -1
    assert parse_argv(["-misset", "randomly"]).misset_mode == -1
    cfg = parse_argv(["-misset", "10", "20", "30", "-misset", "random"])
    assert cfg.misset_mode == -1
    cfg = parse_argv(["-c_parity", "-misset", "random", "-N", "2"])
    assert cfg.misset_mode == -1 and cfg.Na == 2.0


def test_pix0_vector_units():
    cfg = parse_argv(["-pix0_vector", "0.1", "0.05", "-0.05"])
    assert cfg.pix0_vector == (0.1, 0.05, -0.05)
    assert cfg.pix0_set and cfg.beam_convention == "CUSTOM"
    cfg = parse_argv(["-pix0_vector_mm", "100", "50", "-50"])
    assert cfg.pix0_vector == (100 / 1000.0, 50 / 1000.0, -50 / 1000.0)
    assert cfg.pix0_set and cfg.beam_convention == "CUSTOM"
    # c_parity: nanoBragg.c's -pix0_vector block takes the mm numbers as metres
    cfg = parse_argv(["-c_parity", "-pix0_vector_mm", "100", "50", "-50"])
    assert cfg.pix0_vector == (100.0, 50.0, -50.0)
    assert cfg.pix0_set and cfg.beam_convention == "CUSTOM"


def test_vectors_and_negative_values():
    for mode in ([], ["-c_parity"]):
        cfg = parse_argv(mode + ["-fdet_vector", "0", "-1", "0", "-sdet_vector", "-0.5", "0", "1e-3"])
        assert cfg.fdet_vector == (0.0, -1.0, 0.0)
        assert cfg.sdet_vector == (-0.5, 0.0, 0.001)
        assert cfg.beam_convention == "CUSTOM"
        assert parse_argv(mode + ["-seed", "-5"]).seed == 5
        assert parse_argv(mode + ["-detector_rotz", "-2"]).detector_rotz == -2 / RTD


# ---------------------------------------------------------------------------
# pivot / convention side effects
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv,pivot", [
    (["-Xbeam", "10"], "BEAM"), (["-Ybeam", "10"], "BEAM"), (["-distance", "100"], "BEAM"),
    (["-Xclose", "10"], "SAMPLE"), (["-Yclose", "10"], "SAMPLE"), (["-ORGX", "10"], "SAMPLE"),
    (["-ORGY", "10"], "SAMPLE"), (["-close_distance", "100"], "SAMPLE"),
    (["-twotheta", "10"], "SAMPLE"), (["-xds"], "SAMPLE"), (["-pivot", "sample"], "SAMPLE"),
    (["-mosflm"], "BEAM"), (["-adxv"], "BEAM"), (["-denzo"], "BEAM"), (["-dials"], "BEAM"),
    (["-pivot", "beam"], "BEAM"),
])
def test_pivot_side_effects(argv, pivot):
    start = ["-pivot", "beam"] if pivot == "SAMPLE" else ["-pivot", "sample"]
    assert parse_argv(start + argv).detector_pivot == pivot
    assert parse_argv(start + argv + ["-c_parity"]).detector_pivot == pivot


def test_pivot_and_convention_order():
    assert parse_argv(["-xds", "-distance", "100"]).detector_pivot == "BEAM"
    assert parse_argv(["-distance", "100", "-xds"]).detector_pivot == "SAMPLE"
    assert parse_argv(["-twotheta", "5", "-pivot", "beam"]).detector_pivot == "BEAM"
    for flag in ("-mosflm", "-xds", "-adxv", "-denzo", "-dials"):
        assert parse_argv([flag]).beam_convention == flag[1:].upper()
    for flag in ("-fdet_vector", "-sdet_vector", "-odet_vector", "-beam_vector", "-polar_vector",
                 "-spindle_axis", "-twotheta_axis", "-pix0_vector", "-pix0_vector_mm"):
        assert parse_argv(["-xds", flag, "0", "0", "1"]).beam_convention == "CUSTOM"
        # a convention flag after the vector wins (command-line order)
        assert parse_argv([flag, "0", "0", "1", "-adxv"]).beam_convention == "ADXV"
    assert parse_argv(["-spindle_axis", "1", "0", "0"]).spindle_vector == (1.0, 0.0, 0.0)


# ---------------------------------------------------------------------------
# c_parity: nanoBragg.c's strstr matching
# ---------------------------------------------------------------------------

def test_twotheta_axis_collision():
    argv = ["-twotheta_axis", "1", "0", "0"]
    cfg = parse_argv(argv)
    assert cfg.twotheta_axis == (1.0, 0.0, 0.0)
    assert cfg.detector_twotheta == 0.0 and cfg.detector_pivot == "BEAM"
    cfg = parse_argv(["-c_parity"] + argv)
    assert cfg.twotheta_axis == (1.0, 0.0, 0.0)
    assert cfg.detector_twotheta == 1.0 / RTD and cfg.detector_pivot == "SAMPLE"
    assert c_blocks_matching("-twotheta_axis") == ['strstr "-twotheta_axis"', 'strstr "-twotheta"']


@pytest.mark.parametrize("arg,n_blocks", [
    ("-misset_seed", 1),          # "_seed" is not "-seed"; strcmp keeps -misset out
    ("-mosaic_seed", 1),          # not -seed, not -mosaic (strlen 7), not -mosaic_dom
    ("-detector_thicksteps", 1),  # "_thicksteps" does not contain "-thicksteps"
    ("-pgmscale", 1),             # "mscale" does not contain "-scale"
    ("-point_pixel", 1),          # "_pixel" does not contain "-pixel"
    ("-trace_pixel", 1),
    ("-nonoise", 1),              # no "-noisefile" inside
    ("-nopolar", 1),              # "-polar" needs a '-' right before it
    ("-polar_vector", 1),         # -polar has strlen==6
    ("-oversample_thick", 1),     # `continue` before -oversample
    ("-noprogress", 1),           # "oprogress": no "-progress"
    ("-nointerpolate", 1),
    ("-close_distance", 1),       # "_distance"
    ("-hdivsteps", 1),            # "hdivsteps" does not contain "-divsteps"
    ("-detsize_f", 1),            # -detsize has strlen==8
    ("-phisteps", 1),             # -phi has strlen==4, -phistep strlen==8
    ("-stolout", 1),              # -stol has strlen==5
    ("-4stol", 1),
    ("-mosaic_domains", 1),
    ("-sample_width", 1),         # "_width" is not "-width"
    ("-width", 2),                # both -sample_width and -xtal_width blocks
    ("-height", 2),
    ("-printout_pixel", 2),       # also "-printout"
    ("-twotheta_axis", 2),        # also "-twotheta"
])
def test_c_block_matching(arg, n_blocks):
    assert len(c_blocks_matching(arg)) == n_blocks, c_blocks_matching(arg)


def test_c_parity_collisions_effects():
    cfg = parse_argv(["-c_parity", "-oversample_thick", "-oversample", "3"])
    assert cfg.oversample_thick and cfg.oversample == 3
    cfg = parse_argv(["-c_parity", "-oversample_polar"])
    assert cfg.oversample_polar and cfg.oversample == -1
    cfg = parse_argv(["-c_parity", "-detector_thicksteps", "4"])
    assert cfg.detector_thicksteps == 4 and cfg.detector_thick == 0.0
    cfg = parse_argv(["-c_parity", "-mosaic_seed", "9", "-misset_seed", "8"])
    assert (cfg.mosaic_seed, cfg.misset_seed, cfg.seed) == (-9, -8, None)
    assert cfg.mosaic_spread == -1.0 and cfg.mosaic_domains == -1 and cfg.misset_mode == 0
    cfg = parse_argv(["-c_parity", "-pgmscale", "2"])
    assert cfg.pgm_scale == 2.0 and cfg.intfile_scale == 0.0
    cfg = parse_argv(["-c_parity", "-width", "0.2", "-height", "0.3"])
    assert (cfg.sample_y, cfg.sample_z) == (0.2 / 1000, 0.3 / 1000)
    cfg = parse_argv(["-c_parity", "-printout_pixel", "3", "4"])
    assert (cfg.printout, cfg.printout_fpixel, cfg.printout_spixel, cfg.pixel_size) == (True, 3, 4, 0.1e-3)
    # spellings C accepts through strstr but that are not in the table
    cfg = parse_argv(["-c_parity", "-mosaic_domainz", "4", "-wavelengths", "2"])
    assert cfg.mosaic_domains == 4 and cfg.lambda0 == 2 / 1e10
    with pytest.raises(UsageError, match="unknown flag '-mosaic_domainz'"):
        parse_argv(["-mosaic_domainz", "4"])


def test_c_parity_curved_det_needs_a_following_argument():
    with pytest.raises(UsageError, match="-curved_det"):
        parse_argv(["-c_parity", "-curved_det"])
    assert parse_argv(["-c_parity", "-curved_det", "-nonoise"]).curved_detector
    assert parse_argv(["-curved_det"]).curved_detector


def test_c_parity_partial_cell():
    cfg = parse_argv(["-c_parity", "-cell", "50", "60", "70", "-N", "2"])
    assert cfg.user_cell and (cfg.cell_a, cfg.cell_b, cfg.cell_c) == (50.0, 60.0, 70.0)
    assert cfg.cell_alpha == 0.0 and cfg.Na == 2.0
    with pytest.raises(UsageError, match="-cell"):
        parse_argv(["-cell", "50", "60", "70", "-N", "2"])


def test_c_parity_errors():
    with pytest.raises(UsageError, match="unknown flag '-foo'"):
        parse_argv(["-c_parity", "-foo"])
    with pytest.raises(UsageError, match="-distance: expected a number"):
        parse_argv(["-c_parity", "-distance", "abc"])
    with pytest.raises(UsageError, match="-distance"):
        parse_argv(["-c_parity", "-distance"])
    with pytest.raises(UsageError, match="unexpected argument '7'"):
        parse_argv(["-c_parity", "-N", "5", "7"])
    with pytest.raises(UsageError, match="-twotheta_axis"):
        parse_argv(["-c_parity", "-twotheta_axis", "1"])
    with pytest.raises(UsageError, match="-misset"):
        parse_argv(["-c_parity", "-misset", "1", "2"])


def test_c_parity_flag_is_position_independent():
    a = parse_argv(["-c_parity", "-twotheta_axis", "1", "0", "0"])
    b = parse_argv(["-twotheta_axis", "1", "0", "0", "-c_parity"])
    assert a.c_parity and b.c_parity
    assert a.detector_twotheta == b.detector_twotheta == 1 / RTD


def test_modes_agree_on_a_typical_command():
    argv = CELL + ["-default_F", "100", "-N", "5", "-lambda", "6.2", "-distance", "100",
                   "-detpixels", "64", "-pixel", "0.1", "-Xbeam", "3.2", "-Ybeam", "3.2",
                   "-mosaic", "0.5", "-mosaic_dom", "5", "-phisteps", "3", "-osc", "0.3",
                   "-oversample", "2", "-floatfile", "f.bin", "-nonoise", "-nopgm",
                   "-seed", "1", "-roi", "0", "10", "0", "10", "-fdet_vector", "0", "0", "1"]
    a, b = parse_argv(argv), parse_argv(argv + ["-c_parity"])
    for f in Config.__dataclass_fields__:
        if f in ("c_parity", "mask_image", "img_image"):
            continue
        assert not _differs(getattr(a, f), getattr(b, f)), f


# ---------------------------------------------------------------------------
# errors (default mode)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv,pattern", [
    (["-foo"], r"unknown flag '-foo'.*-h"),
    (["-distanse", "100"], r"unknown flag '-distanse' \(did you mean -distance\?\)"),
    # flags are case-sensitive (nanoBragg.c's strcmp); the lower-case one is named
    (["-DISTANCE", "100"], r"unknown flag '-DISTANCE' \(did you mean -distance\?\)"),
    (["-Mosaic_Dom", "4"], r"unknown flag '-Mosaic_Dom' \(did you mean -mosaic_dom\?\)"),
    (["-Distance", "100"], r"unknown flag '-Distance'"),
    (["-twotheta_ax", "1", "0", "0"], r"unknown flag"),
    (["-hdiv", "0.2"], r"unknown flag '-hdiv'"),
    (["-dispstep", "3"], r"unknown flag '-dispstep'"),
    (["-distance", "abc"], r"-distance: expected a number \(mm\), got 'abc'"),
    (["-distance"], r"-distance: expected a number \(mm\), but the command line ends"),
    (["-distance", "nan"], r"-distance: .*'nan'"),
    (["-distance", "inf"], r"-distance: .*'inf'"),
    (["-distance", "1e999"], r"-distance: .*out of range"),
    (["-distance", "1_000"], r"-distance"),
    (["-N", "5.5"], r"-N: expected an integer"),
    (["-detpixels", "abc"], r"-detpixels: expected an integer"),
    (["-fdet_vector", "0", "1"], r"-fdet_vector: expected 3 numbers"),
    (["-fdet_vector", "0", "x", "1"], r"-fdet_vector: expected 3 numbers.*'x'"),
    (["-cell", "1", "2", "3"], r"-cell: expected 6 numbers"),
    (["-misset", "a", "b", "c"], r"-misset: expected 'random' or 3 angles"),
    (["-pivot", "detector"], r"-pivot: expected one of sample\|beam"),
    (["-precision", "half"], r"-precision: expected one of double\|single"),
    (["-device", "tpu"], r"-device: expected one of cpu\|cuda"),
    (["-threads", "0"], r"-threads: expected an integer >= 1"),
    (["-threads", "two"], r"-threads"),
    (["-detector_abs", "deep"], r"-detector_abs: expected a number \(um\) or 'inf'"),
    (["-floatfile", "-nonoise"], r"-floatfile: expected a file name, got '-nonoise'"),
    (["-hkl"], r"-hkl: expected a file name"),
    (["100"], r"unexpected argument '100'"),
    (["-N", "5", "6"], r"unexpected argument '6'"),
    (["-0.5"], r"unexpected argument '-0.5'"),
    (["-nonoise", "extra"], r"unexpected argument 'extra'"),
    (["-curved_det", "1"], r"unexpected argument '1'"),
])
def test_usage_errors(argv, pattern):
    with pytest.raises(UsageError, match=pattern) as info:
        parse_argv(argv)
    assert "\n" not in str(info.value)


def test_nbnumba_extras():
    cfg = parse_argv(["-precision", "single", "-threads", "3", "-device", "cuda", "-c_parity"])
    assert (cfg.precision, cfg.threads, cfg.device, cfg.c_parity) == ("single", 3, "cuda", True)
    cfg = parse_argv([])
    assert (cfg.precision, cfg.threads, cfg.device, cfg.c_parity) == ("double", None, "cpu", False)


def test_help():
    for h in ("-h", "-help", "--help"):
        with pytest.raises(HelpRequested) as info:
            parse_argv(CELL + [h])
        assert info.value.text == usage_text()
    text = usage_text()
    for name in flag_names():
        assert name in text, name
    for group in GROUPS:
        assert f"\n{group}:\n" in text
    assert "[default: 100 mm]" in text
    line = short_usage()
    assert "\n" not in line and line.startswith("usage:") and "-h" in line


# ---------------------------------------------------------------------------
# SMV header ingestion (-mask, -img)
# ---------------------------------------------------------------------------

def test_mask_header(mask_file):
    cfg = parse_argv(["-mask", mask_file])
    assert (cfg.fpixels, cfg.spixels) == (4, 3)
    assert cfg.pixel_size == 0.1 / 1000.0
    assert cfg.detsize_f == cfg.pixel_size * 4 and cfg.detsize_s == cfg.pixel_size * 3
    # the mask's BEAM_CENTER_Y counts from the other edge
    assert cfg.Ybeam == cfg.detsize_s - 0.1 / 1000.0
    assert cfg.Ybeam == pytest.approx(0.0002, rel=1e-12)
    assert math.isnan(cfg.Xbeam)
    assert cfg.maskfilename == mask_file
    assert cfg.mask_image.dtype == np.uint16 and cfg.mask_image.shape == (3, 4)
    assert cfg.mask_image[0, 0] == 0 and cfg.mask_image[0, 1] == 1 and cfg.mask_image[2, 3] == 0
    assert cfg.img_image is None
    # header values never change the pivot
    assert cfg.detector_pivot == "BEAM"
    assert parse_argv(["-c_parity", "-mask", mask_file]).Ybeam == cfg.Ybeam


def test_img_header(img_file):
    cfg = parse_argv(["-img", img_file])
    assert (cfg.fpixels, cfg.spixels) == (5, 2)
    assert cfg.pixel_size == 0.2 / 1000.0
    assert cfg.distance == 150 / 1000.0
    assert cfg.lambda0 == 1.5 / 1e10
    assert cfg.Xbeam == 0.3 / 1000.0 and cfg.Ybeam == 0.1 / 1000.0
    assert cfg.phi0 == 10 / RTD and cfg.osc == 0.5 / RTD
    assert cfg.detector_twotheta == 0.0          # TWOTHETA is read but unused by C
    assert cfg.img_image.dtype == np.float32 and cfg.img_image.shape == (2, 5)
    assert cfg.img_image[1, 4] == 9.0
    assert cfg.imginfilename == img_file


def test_headers_applied_before_flags_mask_then_img(mask_file, img_file):
    # flags override header values wherever they appear
    cfg = parse_argv(["-pixel", "0.05", "-distance", "80", "-img", img_file])
    assert cfg.pixel_size == 0.05 / 1000.0 and cfg.distance == 0.08
    assert cfg.detsize_f == 0.2 / 1000.0 * 5       # computed from the header pixel, as in C
    # the img header is applied after the mask header, whatever the order on the line
    for argv in (["-img", img_file, "-mask", mask_file], ["-mask", mask_file, "-img", img_file]):
        cfg = parse_argv(argv)
        assert (cfg.fpixels, cfg.spixels) == (5, 2)
        assert cfg.Ybeam == 0.1 / 1000.0
        assert cfg.mask_image.shape == (3, 4) and cfg.img_image.shape == (2, 5)


def test_header_relative_path_and_errors(tmp_path, mask_file):
    cfg = parse_argv(["-mask", "mask.img"], cwd=str(tmp_path))
    assert cfg.fpixels == 4 and cfg.workdir == str(tmp_path)
    with pytest.raises(InputFileError, match="nothere.img"):
        parse_argv(["-mask", str(tmp_path / "nothere.img")])
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"not an smv file" * 50)
    with pytest.raises(InputFileError, match="bad.img"):
        parse_argv(["-img", str(bad)])


def test_header_key_rules_default_vs_c_parity(tmp_path):
    # nanoBragg's own headers: DISTANCE is followed by CLOSE_DISTANCE, and the
    # beam centre is written as XDS_ORGX/XDS_ORGY.
    path = write_smv(tmp_path / "nb.img", 2, 2,
                     "PIXEL_SIZE=0.1;\nDISTANCE=100;\nXDS_ORGX=12.5;\nXDS_ORGY=7.5;\n"
                     "CLOSE_DISTANCE=90;\n")
    cfg = parse_argv(["-img", path])
    assert cfg.distance == 0.1 and cfg.close_distance == 0.09
    assert (cfg.ORGX, cfg.ORGY) == (12.5, 7.5)
    cfg = parse_argv(["-img", path, "-c_parity"])
    assert cfg.distance == 0.09 and cfg.close_distance == 0.09   # C's ValueOf substring match
    assert (cfg.ORGX, cfg.ORGY) == (12.5, 7.5)
    assert cfg.detector_pivot == "BEAM"
