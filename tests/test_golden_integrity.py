"""The golden corpus is complete, unedited, up to date and covers every flag.

These tests never run nanoBragg or the simulator; they only read golden/,
dvc.lock and the flag table.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from nbnumba.testing import golden as G

CASES = G.load_cases()
BY_NAME = {c.name: c for c in CASES}

# Flags of the CLI flag table that need not appear in any case.  Everything
# else in nbnumba.flags.flag_names() must be used by at least one case.
ALLOWED_UNCOVERED = {
    # help / usage: no image at all
    "-h", "-help", "--help",
    # console output only; -printout without a pixel prints every pixel (huge stdout)
    "-printout",
    # the traced pixel is given as `trace_pixel` and added by tools/make_golden.py;
    # -dump_pixel is the C's synonym of -trace_pixel
    "-trace_pixel", "-dump_pixel",
    # nbnumba's own switches (no nanoBragg equivalent)
    "-c_parity", "-precision", "-threads", "-device",
    # a resource limit, not physics (tests/test_reliability.py)
    "-max_memory",
}

# Used when nbnumba.flags is not importable: every nanoBragg spelling.
FALLBACK_FLAGS = set("""
-img -mask -Na -Nb -Nc -N -cell -misset -misset_seed -samplesize -sample_size -sample_thick -sample_x
-sample_width -sample_y -width -sample_heigh -sample_height -sample_z -heigh -height -xtalsize -xtal_size
-xtal_thick -xtal_x -xtal_width -xtal_y -xtal_heigh -xtal_height -xtal_z -density -sample_den -MW -molec
-Xbeam -Ybeam -Xclose -Yclose -ORGX -ORGY -pivot -mosflm -xds -adxv -denzo -dials -fdet_vector
-sdet_vector -odet_vector -beam_vector -polar_vector -spindle_axis -twotheta_axis -pix0_vector
-pix0_vector_mm -distance -close_distance -detector_abs -detector_thick -detector_thicksteps -thicksteps
-twotheta -detector_rotx -detector_roty -detector_rotz -detsize -detsize_f -detsize_s -detpixels
-detpixels_f -detpixels_x -detpixels_s -detpixels_y -curved_det -pixel -point_pixel -polar -nopolar
-oversample_thick -oversample_polar -oversample_omega -oversample -roi -lambda -wave -energy -fluence
-flux -exposure -beamsize -mosaic -mosaici -mosaic_spr -mosaic_dom -dispersion -dispsteps -divergence
-hdivrange -vdivrange -hdivstep -hdivsteps -vdivstep -vdivsteps -divsteps -round_div -square_div -adc
-phi -osc -phistep -phisteps -dmin -mat -hkl -default_F -stolout -stol -4stol -Q -sourcefile
-floatfile -floatimage -intfile -intimage -pgmfile -pgmimage -noisefile -noiseimage -nonoise -nopgm
-scale -pgmscale -coherent -printout -noprogress -progress -interpolate -nointerpolate -round_xtal
-square_xtal -gauss_xtal -binary_spots -tophat_spots -fudge -printout_pixel -trace_pixel -dump_pixel
-seed -mosaic_seed -water
""".split())

# Feature families the corpus must cover (golden/README.md, issue text).
REQUIRED_FAMILIES = {
    "convention_mosflm", "convention_xds", "convention_adxv", "convention_denzo", "convention_dials",
    "convention_custom", "fdet_vector", "sdet_vector", "odet_vector", "beam_vector", "polar_vector",
    "spindle_axis", "twotheta_axis", "pivot_sample", "pivot_beam",
    "beam_center_xbeam_ybeam", "beam_center_xclose_yclose", "beam_center_orgx_orgy",
    "beam_center_close_distance", "pix0_vector", "pix0_vector_mm",
    "detector_rotations", "twotheta", "curved_det", "point_pixel",
    "detpixels_xy", "detpixels_fs", "detsize_fs", "detsize", "nonsquare",
    "cell", "mat", "misset_angles", "misset_random", "misset_seed",
    "mosaic", "mosaic_dom", "mosaic_seed",
    "phi_nonzero_start", "phi_zero_carryover", "osc", "phisteps", "phistep",
    "oversample", "oversample_thick", "oversample_polar", "oversample_omega",
    "detector_absorption", "thicksteps", "polar", "nopolar",
    "shape_square", "shape_round", "shape_gauss", "shape_tophat", "fudge",
    "divergence", "hdivrange", "vdivrange", "hdivstep", "vdivstep", "hdivsteps", "vdivsteps",
    "divsteps", "square_div", "round_div", "dispersion", "dispsteps", "sourcefile",
    "hkl", "interpolate", "nointerpolate", "interpolate_out_of_range", "interpolate_auto", "default_F",
    "dmin", "roi", "mask", "img", "smv_header", "water",
    "flux_exposure_beamsize", "fluence", "energy", "wave",
    "noise", "seed", "scale", "adc", "pgm", "pgmscale",
    "N", "Na_Nb_Nc", "xtalsize", "sample_size", "stol", "pilatus", "fdump", "strstr_collision",
}


def _flag_table():
    try:
        from nbnumba.flags import flag_names
    except ImportError:
        return set(FALLBACK_FLAGS)
    return set(flag_names())


def _flag_values(args, flag):
    """Values following the last occurrence of ``flag`` (up to the next option)."""
    args = list(args)
    idx = [i for i, t in enumerate(args) if t == flag]
    if not idx:
        return None
    out = []
    for t in args[idx[-1] + 1:]:
        if G.is_flag(t):
            break
        out.append(t)
    return out


# ---------------------------------------------------------------- (a) hashes
def test_outputs_match_dvc_lock():
    """golden/inputs and golden/data are exactly what `dvc repro` recorded."""
    outs = G.lock_hashes(kind="outs")
    assert {"golden/inputs", "golden/data"} <= set(outs), "dvc.lock lacks the golden outputs"
    for rel in ("golden/inputs", "golden/data"):
        got, nfiles, _ = G.md5_of_dir(G.REPO_ROOT / rel)
        if got != outs[rel]:
            # name the edited files using the per-case manifests
            changed = []
            for c in CASES:
                meta_path = G.case_dir(c.name) / "meta.json"
                if not meta_path.exists():
                    changed.append("%s (missing)" % c.name)
                    continue
                meta = json.loads(meta_path.read_text())
                for fname, info in meta["files"].items():
                    p = G.case_dir(c.name) / fname
                    if not p.exists() or G.md5_of_file(p) != info["md5"]:
                        changed.append("%s/%s" % (c.name, fname))
            pytest.fail("%s does not match dvc.lock (%s != %s, %d files). Changed: %s. "
                        "Regenerate with: NB_C_BIN=/path/to/nanoBragg dvc repro"
                        % (rel, got, outs[rel], nfiles, ", ".join(changed[:20]) or "?"))


def test_pipeline_dependencies_unchanged():
    """cases.yaml, the generator and the inputs are the versions the corpus was built from."""
    stale = []
    for stage, body in G.lock_entries().items():
        for rel, entry in body["deps"].items():
            p = G.REPO_ROOT / rel
            got = G.md5_of_dir(p)[0] if p.is_dir() else G.md5_of_file(p)
            if got != entry["md5"]:
                stale.append("%s (stage %s)" % (rel, stage))
    assert not stale, ("golden corpus is stale, changed since the last `dvc repro`: %s. "
                       "Run: NB_C_BIN=/path/to/nanoBragg dvc repro" % ", ".join(stale))


def test_md5_of_dir_matches_dvc_format(tmp_path):
    """md5_of_dir reproduces DVC's directory hash (json of sorted md5/relpath entries)."""
    import hashlib

    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b" / "c.bin").write_bytes(b"\x00\x01")
    entries = [
        {"md5": hashlib.md5(b"alpha\n").hexdigest(), "relpath": "a.txt"},
        {"md5": hashlib.md5(b"\x00\x01").hexdigest(), "relpath": "b/c.bin"},
    ]
    expect = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert G.md5_of_dir(tmp_path) == (expect, 2, 8)


# ---------------------------------------------------------------- (b) completeness
def test_case_count_and_modes():
    assert len(CASES) >= 40
    n_default = sum(c.mode == "default" for c in CASES)
    assert n_default >= 15, "need at least 15 default-mode cases, have %d" % n_default
    assert any(c.mode == "c_parity" for c in CASES)


def test_enough_trace_cases():
    traced = [c.name for c in CASES if c.trace_pixel is not None]
    assert len(traced) >= 8, traced


def test_no_stray_case_directories():
    on_disk = {p.name for p in (G.GOLDEN_DIR / "data").iterdir()}
    assert on_disk == set(BY_NAME), "data dirs vs cases: extra %s, missing %s" % (
        sorted(on_disk - set(BY_NAME)), sorted(set(BY_NAME) - on_disk))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_data_complete(case):
    d = G.case_dir(case.name)
    present = sorted(p.name for p in d.iterdir())
    assert present == sorted(case.files), "%s: files %s, expected %s" % (case.name, present, sorted(case.files))
    meta = G.load_meta(case.name)
    assert meta["args"] == list(case.args)
    assert meta["mode"] == case.mode
    S, F = meta["shape"]
    assert 32 <= S <= 256 and 32 <= F <= 256, "keep images between 32x32 and 256x256"
    img = G.load_float(case.name)
    assert img.shape == (S, F) and np.all(np.isfinite(img))
    assert float(img.max()) > 0.0, "%s: empty image" % case.name
    stats = meta["stats"]
    for key in ("max_I", "mean", "rms", "rmsd", "intfile_scale"):
        assert key in stats, "%s: stdout lacks %s" % (case.name, key)
    for name in ("int.img", "noise.img"):
        if name in case.files:
            header, data = G.load_smv(d / name)
            assert data.shape == (S, F)
            assert int(header["SIZE1"]) == F and int(header["SIZE2"]) == S
    if "noise.img" in case.files:
        assert "photons" in stats
    if "image.pgm" in case.files:
        comment, pgm = G.load_pgm(d / "image.pgm")
        assert pgm.shape == (S, F) and comment.startswith("# pixels scaled by")
    if case.trace_pixel is not None:
        text = (d / "trace.log").read_text()
        assert "TRACE_C: I_pixel_final" in text
        assert all(line.startswith("TRACE_C") for line in text.splitlines())
        s, f = case.trace_pixel
        assert 0 <= s < S and 0 <= f < F
    stdout = (d / "stdout.txt").read_text()
    assert "/tmp/" not in stdout and "nbgold-" not in stdout, "temp paths must be scrubbed"
    for line in stdout.splitlines():
        if line.startswith("mmap("):
            assert line.endswith("= 0x0"), "pointer values must be scrubbed"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_inputs_exist(case):
    for name in case.inputs:
        assert (G.inputs_dir() / name).is_file(), "%s: missing input %s" % (case.name, name)
    # every file argument the case names must be one of its inputs
    file_flags = {"-hkl", "-mat", "-sourcefile", "-img", "-mask", "-stol", "-4stol", "-Q"}
    args = list(case.args)
    for i, tok in enumerate(args[:-1]):
        if tok in file_flags:
            assert args[i + 1] in case.inputs, "%s: %s %s not listed in inputs" % (case.name, tok, args[i + 1])
    if "Fdump.bin" in case.inputs:
        assert "-hkl" not in args


# ---------------------------------------------------------------- mode rules
def _c_cell_angles_differ(a, b, c, al=90.0, be=90.0, ga=90.0):
    """nanoBragg.c's default orientation has c*_z = sin(gamma)/(c sin(gamma*)), not 1/c
    (docs/quirks.md #13): its cell is the requested one only where sin(gamma) = sin(gamma*)."""
    import math
    al, be, ga = (math.radians(x) for x in (al, be, ga))
    cos_gs = (math.cos(al) * math.cos(be) - math.cos(ga)) / (math.sin(al) * math.sin(be))
    return abs(math.sin(ga) - math.sqrt(1.0 - cos_gs * cos_gs)) > 1e-12


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mode_rules(case):
    """Cases that touch a reproduced nanoBragg defect must be c_parity."""
    args = list(case.args)
    toks = set(G.flag_tokens(args))
    reasons = []
    if toks & {"-pix0_vector", "-pix0_vector_mm"}:
        reasons.append("pix0_vector")
    if "-misset" in toks and (_flag_values(args, "-misset") or [""])[0].startswith("rand"):
        reasons.append("misset random")
    if "-twotheta_axis" in toks:
        reasons.append("strstr collision -twotheta_axis")
    if toks & {"-oversample_thick", "-oversample_polar", "-oversample_omega"}:
        reasons.append("oversample_* switch")
    thick = _flag_values(args, "-detector_thick")
    if thick and float(thick[0]) > 0:
        reasons.append("sensor layers")
    if toks & {"-osc", "-phisteps", "-phistep"}:
        start = _flag_values(args, "-phi")
        phisteps = _flag_values(args, "-phisteps")
        several = not (phisteps and int(phisteps[0]) <= 1 and "-osc" not in toks and "-phistep" not in toks)
        if several and (start is None or float(start[0]) == 0.0):
            reasons.append("phi=0 carryover")
    cell = _flag_values(args, "-cell")
    if cell and "-mat" not in toks and _c_cell_angles_differ(*[float(x) for x in cell]):
        reasons.append("cell angles")
    water = _flag_values(args, "-water")
    if water and float(water[0]) > 0 and toks & {"-fluence", "-flux"}:
        reasons.append("water background with a fluence")
    stdout = (G.case_dir(case.name) / "stdout.txt").read_text()
    if "out of range for three point interpolation" in stdout:
        reasons.append("interpolation switched off")
    if reasons:
        assert case.mode == "c_parity", "%s must be c_parity: %s" % (case.name, "; ".join(reasons))


# ---------------------------------------------------------------- (c) coverage
def test_every_flag_is_covered():
    used = set()
    for c in CASES:
        used.update(G.flag_tokens(c.args))
    table = _flag_table()
    missing = sorted(table - used - ALLOWED_UNCOVERED)
    assert not missing, "flags used by no golden case (add a case or, with a reason, to ALLOWED_UNCOVERED): %s" % missing
    stale_allow = sorted(ALLOWED_UNCOVERED - table)
    assert not stale_allow or table == FALLBACK_FLAGS, "ALLOWED_UNCOVERED names unknown flags: %s" % stale_allow


def test_every_case_flag_is_known():
    table = _flag_table()
    for c in CASES:
        unknown = sorted(set(G.flag_tokens(c.args)) - table)
        assert not unknown, "%s uses flags the CLI table does not know: %s" % (c.name, unknown)


def test_required_families_covered():
    have = set()
    for c in CASES:
        have.update(c.families)
    missing = sorted(REQUIRED_FAMILIES - have)
    assert not missing, "feature families without a case: %s" % missing


def test_pilatus_style_case():
    c = BY_NAME["pilatus_scaled"]
    args = list(c.args)
    assert c.mode == "c_parity"
    for flag in ("-pix0_vector_mm", "-spindle_axis", "-mat", "-hkl", "-fdet_vector", "-sdet_vector",
                 "-odet_vector", "-beam_vector"):
        assert flag in args
    assert _flag_values(args, "-phi") == ["0"] and _flag_values(args, "-phisteps") == ["10"]
    assert _flag_values(args, "-osc") == ["0.1"]


# ---------------------------------------------------------------- (d) docs
def test_readme_names_refresh_command():
    text = (G.GOLDEN_DIR / "README.md").read_text()
    assert "NB_C_BIN=" in text and "dvc repro" in text
    for key in G.DEFAULT_TOLERANCES:
        assert key in text, "README does not explain tolerance %s" % key


def test_cases_yaml_tolerance_defaults_match_code():
    import yaml

    doc = yaml.safe_load((G.GOLDEN_DIR / "cases.yaml").read_text())
    assert (doc.get("defaults") or {}).get("tolerances") == G.DEFAULT_TOLERANCES

