#!/usr/bin/env python
"""Build the golden corpus: synthetic inputs and reference outputs of nanoBragg.c.

    python tools/make_golden.py inputs                 # regenerate golden/inputs/
    NB_C_BIN=/path/to/nanoBragg \\
    python tools/make_golden.py run [--case NAME ...]  # regenerate golden/data/
    NB_C_BIN=... python tools/make_golden.py brightest --case NAME
                                                       # print the brightest pixel
                                                       # (to choose trace_pixel)

Normally you do not call this directly: ``NB_C_BIN=/path/to/nanoBragg dvc repro``
runs both steps (see golden/README.md).  The outputs are byte-for-byte
reproducible: every case runs in a fresh temporary directory with
``OMP_NUM_THREADS=1``, temp paths and pointer values are scrubbed from the
captured stdout, and every file is written atomically.

``run`` is all or nothing: it first checks that ``$NB_C_BIN`` prints a
``TRACE_C`` trace for a one-pixel probe (a build without the instrumentation
cannot make trace cases), then renders every case into a staging directory
next to ``golden/data`` and swaps it into place only when every case
succeeded.  On any failure ``golden/data`` is left exactly as it was.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load_by_path(modname: str, relpath: str):
    """Import a module from its file without importing the ``nbnumba`` package.

    The golden pipeline must not depend on the simulator importing cleanly.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(modname, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


synth = _load_by_path("_nb_golden_synth", "nbnumba/testing/synth.py")
_golden = _load_by_path("_nb_golden_golden", "nbnumba/testing/golden.py")
Case = _golden.Case
GOLDEN_DIR = _golden.GOLDEN_DIR
load_cases = _golden.load_cases
parse_c_stdout_stats = _golden.parse_c_stdout_stats

INPUTS_DIR = GOLDEN_DIR / "inputs"
DATA_DIR = GOLDEN_DIR / "data"
NO_BIN_MSG = "NB_C_BIN is not set: point it at your nanoBragg build (see golden/README.md)"

# canonical stored name -> what the run must have written (same names: the
# cases use these file names in their args)
STORED_OUTPUTS = ("float.bin", "int.img", "noise.img", "image.pgm")

# ---------------------------------------------------------------------------
# input specification
# ---------------------------------------------------------------------------
CELL_A = (70.0, 80.0, 90.0, 90.0, 90.0, 90.0)
CELL_TRI = (60.0, 70.0, 80.0, 85.0, 95.0, 100.0)
CELL_PIL = (45.0, 65.0, 85.0, 90.0, 104.0, 90.0)
PIL_LAMBDA = 0.9768


def _mosflm_vectors():
    """MOSFLM-like detector basis tilted by small rotations (for CUSTOM cases)."""
    R = synth.misset_matrix((3.0, -2.0, 1.5))
    f = R @ np.array([0.0, 0.0, 1.0])
    s = R @ np.array([0.0, -1.0, 0.0])
    o = R @ np.array([1.0, 0.0, 0.0])
    return f, s, o


def build_inputs(outdir: Path) -> List[str]:
    """Write every input file into ``outdir``; return the sorted file names."""
    outdir.mkdir(parents=True, exist_ok=True)
    written: List[str] = []

    def p(name: str) -> str:
        written.append(name)
        return str(outdir / name)

    # structure factors
    synth.write_p1_hkl(p("cellA.hkl"), CELL_A, dmin=6.0, seed=101)
    synth.write_p1_hkl(p("cellA_lowres.hkl"), CELL_A, dmin=15.0, seed=102)
    synth.write_p1_hkl(p("triclinic.hkl"), CELL_TRI, dmin=6.0, seed=103)
    synth.write_p1_hkl(p("pilatus.hkl"), CELL_PIL, dmin=5.0, seed=104)
    # the implicit Fdump.bin cache (read when -hkl is absent)
    tmp_hkl = outdir / ".fdump_source.hkl"
    synth.write_p1_hkl(str(tmp_hkl), CELL_A, dmin=8.0, seed=105)
    hkl, F = synth.read_hkl_text(str(tmp_hkl))
    tmp_hkl.unlink()
    synth.write_fdump(p("Fdump.bin"), hkl, F, default_F=0.0)

    # cellA.hkl with its indices written "1.0" from the middle on: nanoBragg.c's
    # second pass ("%d%d%d%lg") stops there (docs/quirks.md #17)
    lines = (outdir / "cellA.hkl").read_text().splitlines()
    half = len(lines) // 2
    Path(p("cellA_decimal.hkl")).write_text("\n".join(
        lines[:half] + ["%s.0 %s.0 %s.0 %s" % tuple(l.split()) for l in lines[half:]]) + "\n")

    # orientation matrices
    synth.write_mosflm_mat(p("cellA.mat"), CELL_A, (5.0, 10.0, 15.0), 1.5)
    synth.write_mosflm_mat(p("pilatus.mat"), CELL_PIL, (20.0, -35.0, 50.0), PIL_LAMBDA)

    # source list (MOSFLM frame: beam along +x, sources upstream at -x)
    sources = []
    for i, (dy, dz, dl) in enumerate([(0.0, 0.0, 0.0), (0.003, 0.0, 0.004), (-0.003, 0.0, -0.004),
                                      (0.0, 0.002, 0.002), (0.0, -0.002, -0.002)]):
        sources.append((-10.0, dy, dz, 1.0 - 0.1 * i, 1.5e-10 * (1.0 + dl)))
    synth.write_sourcefile(p("sources.txt"), sources)

    # SMV files for -mask / -img
    synth.write_smv_mask(
        p("mask.img"), 128, 128, 0.2, pattern="block_and_stripes",
        header_extras={"DISTANCE": 100.0, "WAVELENGTH": 1.5,
                       "BEAM_CENTER_X": 12.9, "BEAM_CENTER_Y": 12.1},
    )
    synth.write_smv_header_image(
        p("header.img"), 96, 80, 0.15, distance_mm=120.0, wavelength_A=1.3,
        beam_x_mm=7.5, beam_y_mm=5.8, extras={"PHI": 10.0, "OSC_RANGE": 0.4}, seed=106,
    )
    # same size as header.img, conflicting geometry (the -img header must win)
    synth.write_smv_mask(
        p("mask_conflict.img"), 96, 80, 0.3, pattern="checker",
        header_extras={"DISTANCE": 250.0, "WAVELENGTH": 2.5,
                       "BEAM_CENTER_X": 3.0, "BEAM_CENTER_Y": 4.0},
    )

    # amorphous S(Q) table for -stol/-4stol/-Q (read but unused by nanoBragg)
    synth.write_stol_file(p("stol.txt"))
    return sorted(written)


def _fail(message: str, code: int = 2):
    """One line on stderr and exit status ``code`` (via guarded_main)."""
    from nbnumba.tools._common import ToolError
    return ToolError(message, code)


def cmd_inputs(args) -> int:
    outdir = Path(args.out) if args.out else INPUTS_DIR
    if outdir.exists() and not outdir.is_dir():
        raise _fail("--out %s: not a directory" % outdir)
    try:
        names = build_inputs(outdir)
    except OSError as exc:
        raise _fail("--out %s: %s" % (outdir, exc.strerror or exc)) from None
    # drop anything that is no longer part of the inputs (only in golden/inputs:
    # an --out directory may hold the caller's own files)
    for f in (sorted(outdir.iterdir()) if outdir.resolve() == INPUTS_DIR.resolve() else ()):
        if f.name not in names:
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
    print("wrote %d input files to %s" % (len(names), outdir))
    return 0


# ---------------------------------------------------------------------------
# running the reference program
# ---------------------------------------------------------------------------
_PTR_RE = re.compile(r"(mmap\(.*?\) = )(?:0x[0-9a-fA-F]+|\(nil\))")
_SHAPE_RE = re.compile(r"\((\d+)x(\d+) pixels\)")


def scrub(text: str, tmpdir: str) -> str:
    """Remove run-specific details (temp dir, pointer values) from C stdout."""
    for variant in {tmpdir, os.path.realpath(tmpdir)}:
        text = text.replace(variant + "/", "./").replace(variant, ".")
    return _PTR_RE.sub(lambda m: m.group(1) + "0x0", text)


def _c_bin() -> Optional[str]:
    b = os.environ.get("NB_C_BIN", "").strip()
    return b or None


def run_c(binary: str, case: Case, extra: Sequence[str] = ()) -> Dict[str, object]:
    """Run nanoBragg for ``case`` in a fresh temp dir; return stdout and output bytes."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["LC_ALL"] = "C"
    with tempfile.TemporaryDirectory(prefix="nbgold-") as tmp:
        for name in case.inputs:
            src = INPUTS_DIR / name
            if not src.is_file():
                raise RuntimeError("case %s: input %s missing (run `make_golden.py inputs`)"
                                   % (case.name, src))
            shutil.copyfile(src, Path(tmp) / name)
        argv = [binary] + list(case.args) + list(extra)
        proc = subprocess.run(argv, cwd=tmp, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=1800)
        stdout = proc.stdout.decode("utf-8", "replace")
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0:
            raise RuntimeError("case %s: nanoBragg exited %d\n%s\n%s" % (
                case.name, proc.returncode, stdout[-2000:], stderr[-2000:]))
        outputs = {}
        for name in STORED_OUTPUTS:
            f = Path(tmp) / name
            if f.is_file():
                outputs[name] = f.read_bytes()
        return {"stdout": scrub(stdout, tmp), "stderr": scrub(stderr, tmp), "outputs": outputs}


def _shape_from_stdout(text: str):
    m = None
    for m in _SHAPE_RE.finditer(text):
        pass
    if m is None:
        raise RuntimeError("could not find the '(FxS pixels)' line in stdout")
    fpix, spix = int(m.group(1)), int(m.group(2))
    return spix, fpix


#: a one-pixel probe that any nanoBragg build with the TRACE_C instrumentation traces
PROBE_ARGS = ("-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 100 "
              "-detpixels 4 -pixel 0.1 -nonoise -nopgm -noprogress -floatfile float.bin "
              "-intfile int.img -trace_pixel 1 2").split()


#: a line of the detector set-up trace (nanoBragg.c's ``#ifdef TRACING`` blocks)
SETUP_TRACE = "TRACE_C:detector_convention="


def check_binary(binary: str) -> Optional[str]:
    """None when ``binary`` runs and prints the per-pixel trace and the
    detector set-up trace for a one-pixel probe; otherwise one line saying
    what is wrong."""
    probe = Case(name="binary_probe", args=tuple(PROBE_ARGS), inputs=(), families=(), mode="default",
                 trace_pixel=None, tolerances={}, description="", tolerance_reason="", files=())
    try:
        res = run_c(binary, probe)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return "NB_C_BIN=%s failed on a 4x4-pixel probe: %s" % (binary, str(exc).splitlines()[0])
    lines = res["stdout"].splitlines()
    if not any(ln.startswith("TRACE_C: I_pixel_final") for ln in lines):
        return ("NB_C_BIN=%s prints no TRACE_C trace for -trace_pixel: build nanoBragg with the "
                "TRACE_C instrumentation (golden/README.md); golden/data left unchanged" % binary)
    # the detector set-up lines, which the instrumented nanoBragg.c prints only
    # when compiled with -DTRACING: without them the refreshed traces would
    # lack keys that the port's traces hold, and tests/test_golden_traces fails
    if not any(ln.startswith(SETUP_TRACE) for ln in lines):
        return ("NB_C_BIN=%s prints no detector set-up trace (%s...): build nanoBragg.c with "
                "-DTRACING, as the corpus was (golden/README.md); golden/data left unchanged"
                % (binary, SETUP_TRACE))
    return None


def make_case(binary: str, case: Case, data_dir: Path = DATA_DIR) -> Dict[str, object]:
    res = run_c(binary, case)
    stdout = res["stdout"]
    shape = _shape_from_stdout(stdout)
    outdir = data_dir / case.name
    files: Dict[str, bytes] = {}
    wanted = [f for f in case.files if f in STORED_OUTPUTS]
    for name in wanted:
        if name not in res["outputs"]:
            raise RuntimeError("case %s: nanoBragg did not write %s" % (case.name, name))
        files[name] = res["outputs"][name]
    nfloat = len(files["float.bin"]) // 4
    if nfloat != shape[0] * shape[1]:
        raise RuntimeError("case %s: float.bin has %d values, stdout says %s" % (case.name, nfloat, shape))
    img = np.frombuffer(files["float.bin"], dtype="<f4")
    if not np.all(np.isfinite(img)):
        raise RuntimeError("case %s: non-finite pixels in float image" % case.name)
    files["stdout.txt"] = stdout.encode("utf-8")
    if case.trace_pixel is not None:
        s, f = case.trace_pixel
        tr = run_c(binary, case, ["-trace_pixel", str(s), str(f)])
        lines = [ln for ln in tr["stdout"].splitlines() if ln.startswith("TRACE_C")]
        if not any(ln.startswith("TRACE_C: I_pixel_final") for ln in lines):
            raise RuntimeError("case %s: trace run printed no per-pixel trace" % case.name)
        if tr["outputs"].get("float.bin") != files["float.bin"]:
            raise RuntimeError("case %s: trace run changed the float image" % case.name)
        files["trace.log"] = ("\n".join(lines) + "\n").encode("utf-8")
    stats = parse_c_stdout_stats(stdout)
    warnings = sorted({ln.strip() for ln in stdout.splitlines() if "WARNING" in ln})
    meta = {
        "name": case.name,
        "mode": case.mode,
        "args": list(case.args),
        "inputs": list(case.inputs),
        "families": list(case.families),
        "shape": list(shape),
        "trace_pixel": list(case.trace_pixel) if case.trace_pixel else None,
        "stats": stats,
        "warnings": warnings,
        "stderr": res["stderr"],
        "files": {name: {"md5": _md5_bytes(data), "bytes": len(data)} for name, data in sorted(files.items())},
    }
    files["meta.json"] = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8")
    # write, then drop stale files of this case
    for name, data in files.items():
        synth._atomic_write(outdir / name, data)
    for f in outdir.iterdir():
        if f.name not in files:
            f.unlink()
    return meta


def _md5_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def _restore_interrupted_swap(data_dir: Path) -> None:
    """A run killed between the two renames of the swap leaves the previous corpus
    as ``.data.old-*``: put it back before anything else."""
    if data_dir.exists():
        return
    for old in sorted(data_dir.parent.glob(".%s.old-*" % data_dir.name)):
        os.rename(old, data_dir)
        print("restored %s from an interrupted run" % data_dir)
        return


def swap_in(staging: Path, data_dir: Path) -> None:
    """Replace ``data_dir`` by ``staging`` (two renames on one file system; the old
    corpus is removed only once the new one is in place)."""
    old = None
    if data_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=".%s.old-" % data_dir.name, dir=data_dir.parent))
        os.rmdir(old)
        os.rename(data_dir, old)
    os.rename(staging, data_dir)
    if old is not None:
        shutil.rmtree(old)


def _checked_binary() -> str:
    binary = _c_bin()
    if binary is None:
        raise _fail(NO_BIN_MSG)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise _fail("NB_C_BIN=%s is not an executable file" % binary)
    return binary


def _select_cases(names: Optional[Sequence[str]]) -> List[Case]:
    cases = load_cases()
    if not names:
        return cases
    by_name = {c.name: c for c in cases}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise _fail("--case: unknown case(s): %s" % ", ".join(missing))
    return [by_name[n] for n in names]


def cmd_run(args) -> int:
    binary = _checked_binary()
    todo = _select_cases(args.case)
    # before anything is written: a build without TRACE_C would fail on the trace
    # cases only after rewriting the others
    why = check_binary(binary)
    if why:
        raise _fail(why)
    _restore_interrupted_swap(DATA_DIR)
    DATA_DIR.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".%s.staging-" % DATA_DIR.name, dir=DATA_DIR.parent))
    try:
        if args.case and DATA_DIR.is_dir():
            # one-case refresh: every other case stays as it is
            shutil.copytree(DATA_DIR, staging, dirs_exist_ok=True)
        failures = _run_cases(binary, todo, staging, args.jobs)
        if failures:
            print("%d case(s) failed; golden/data left unchanged" % failures, file=sys.stderr)
            return 1
        swap_in(staging, DATA_DIR)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return 0


def _run_cases(binary: str, todo: Sequence[Case], data_dir: Path, jobs_arg) -> int:
    """Render ``todo`` into ``data_dir``; prints one line per case, returns the failures."""
    jobs = max(1, int(jobs_arg or os.cpu_count() or 1))
    failures = 0
    with cf.ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = {ex.submit(make_case, binary, c, data_dir): c for c in todo}
        for fut in cf.as_completed(futs):
            c = futs[fut]
            try:
                meta = fut.result()
            except Exception as exc:  # report every failing case
                failures += 1
                print("FAIL %s: %s" % (c.name, str(exc).splitlines()[0] if str(exc) else
                                       type(exc).__name__), file=sys.stderr)
                continue
            st = meta["stats"]
            print("ok   %-32s %-8s %4dx%-4d max_I=%-10g mean=%-10g%s" % (
                c.name, c.mode, meta["shape"][1], meta["shape"][0], st.get("max_I", float("nan")),
                st.get("mean", float("nan")), "  [%d warnings]" % len(meta["warnings"]) if meta["warnings"] else ""))
    return failures


def cmd_brightest(args) -> int:
    binary = _checked_binary()
    for c in _select_cases(args.case):
        name = c.name
        try:
            res = run_c(binary, c)
            s, f = _shape_from_stdout(res["stdout"])
            if "float.bin" not in res["outputs"]:
                raise RuntimeError("nanoBragg did not write float.bin")
            img = np.frombuffer(res["outputs"]["float.bin"], dtype="<f4")
            if img.size != s * f or img.size == 0:
                raise RuntimeError("float.bin has %d values, stdout says %dx%d" % (img.size, f, s))
            img = img.reshape(s, f)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            if not why.startswith("case %s:" % name):
                why = "case %s: %s" % (name, why)
            raise _fail(why) from None
        idx = np.unravel_index(int(np.argmax(img)), img.shape)
        print("%s: brightest pixel slow=%d fast=%d value=%g (mean %g)" % (
            name, idx[0], idx[1], img[idx], img.mean()))
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer, got %r" % text) from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1, got %r" % text)
    return v


def main(argv: Optional[Sequence[str]] = None) -> int:
    # (imported here: building golden/inputs must not need the simulator, and
    # these helpers import only nbnumba's light modules)
    from nbnumba.tools._common import UsageParser, guarded_main
    ap = UsageParser(prog="make_golden.py", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    # (subparsers made by add_parser inherit UsageParser's one-line errors)
    p_in = sub.add_parser("inputs", help="regenerate golden/inputs/")
    p_in.add_argument("--out", help="output directory (default golden/inputs)")
    p_run = sub.add_parser("run", help="run nanoBragg ($NB_C_BIN) for the cases")
    p_run.add_argument("--case", action="append", help="only this case (repeatable)")
    p_run.add_argument("--jobs", type=_positive_int, default=None, help="parallel runs (default: CPU count)")
    p_b = sub.add_parser("brightest", help="print each case's brightest pixel")
    p_b.add_argument("--case", action="append", required=True)
    def body() -> int:
        args = ap.parse_args(argv)
        return {"inputs": cmd_inputs, "run": cmd_run, "brightest": cmd_brightest}[args.cmd](args)
    return guarded_main("make_golden.py", body, io_exit=2)


if __name__ == "__main__":
    sys.exit(main())
