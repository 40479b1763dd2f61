#!/usr/bin/env python
"""Random command lines and mutated input files against nbnumba's secondary
command-line tools, which share one error policy
(nbnumba.tools._common.guarded_main): a run writes what it promised, or prints
one error line, never a traceback or a Python warning.

    python tools/fuzz_tools.py expt [--seed S] [--runs N]     # nbnumba-expt
    python tools/fuzz_tools.py sf [--seed S] [--runs N]       # nbnumba-sf (needs gemmi)
    python tools/fuzz_tools.py series [--seed S] [--runs N]   # nbnumba-series, --workers 0
    python tools/fuzz_tools.py tools [--seed S] [--runs N]    # nb-compare, nbnumba-trace-diff,
                                                              # nbnumba-probe, nbnumba-sincg-sweep

``expt`` writes a few experiment lists with nbnumba.expt.expt_from_flags
(a still, a rotation, a sensor, -twotheta, -mosflm) and mutates one per run:
as bytes (tools/fuzz.py's mutate_file) or as JSON (a key dropped, a value
turned into another type, a list made longer, shorter or empty, a number made
NaN, inf, 1e308, 0, negative or a huge integer, a model index out of range),
with random --experiment/--panel/--image/--mat-out; one run in five is
``--from-flags`` on flags drawn as tools/fuzz.py's cli target draws them.
Exit 0 must print flags that nbnumba itself accepts (parse_argv and
build_model, with -default_F 1 -oversample 1) and a -mat file of nine finite
numbers; --from-flags must write an experiment list that nbnumba-expt reads
back.  ``sf`` mutates a small PDB,
its mmCIF and a small MTZ (a PDB's columns, the CELL/SYMM/NCOL/VALM records of
the MTZ, or bytes) under random -dmin, -column, -intensities, -bulk_solvent,
-k_sol, -B_sol, -B_add, -o; exit 0 must give 'h k l F' lines with finite
F >= 0.  ``series`` draws nbnumba-series options (--frames, --osc-per-frame,
--phisteps-per-frame, --shots, --random-orientation, --jitter-*, --format,
--prefix, --retries, bad --workers / --scheduler / --device values) on an
8 x 8, -N 2 run rendered in process (--workers 0); one run in three resumes
(or overwrites) an earlier series whose manifest or frame file was mutated,
or whose options changed.  Exit 0 must leave every frame file the manifest
lists; exit 1 (some frames failed) a 'failed' record per failure.
``tools`` draws one of nb-compare (flags as the cli target draws them; C
from $NB_C_BIN, else its usage errors only), nbnumba-trace-diff (mutated
copies of tests/data/traces), nbnumba-probe (--no-c, a mutated --c-trace,
random --pixel/--roi-radius/--tol/--sincg-steps) and nbnumba-sincg-sweep
(random --N/--k/--steps/--prefix/--outdir).

A run passes when it exits 0 (or the tool's documented verdict status: 1
for trace-diff's and series' 'diverged'/'frames failed', 3 for nb-compare's
and probe's threshold/divergence) with its outputs in place and readable, or
exits with an error status (2; nb-compare and probe also 4, 5, 6) with exactly
one ``PROG: error: ...`` line on stderr (``PROG: warning:`` lines aside) and
no file left behind or changed (nb-compare's result folder excepted, whose
summary.json must then carry the exit code).  A traceback, another exit
status, a Python warning, or a partial output is a 'fail', printed with the
argv, the file mutation and the last traceback line.  A run past SLOW_S
seconds is stopped and counted 'slow'; a line of nanoBragg flags that
tools/fuzz.py's heavy() finds too costly is not run ('heavy').  The last line counts the outcomes;
exit status 1 when something failed.  Everything runs in a fresh temporary
directory, each run in its own sub-folder.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = ("expt", "sf", "series", "tools")
#: a run longer than this is stopped (SIGALRM) and counted 'slow'
SLOW_S = 60
#: --verbose: print every run, not only the failures
VERBOSE = False
#: --max-seconds: no run starts after this time.monotonic()
DEADLINE = None


def _runs(n: int):
    """range(n), cut short at DEADLINE."""
    for k in range(n):
        if DEADLINE is not None and time.monotonic() > DEADLINE:
            return
        yield k


def _fuzz_module():
    """tools/fuzz.py (not a package): its mutate_file, cli_args and inputs."""
    spec = importlib.util.spec_from_file_location("nbnumba_fuzz", REPO / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FZ = _fuzz_module()


class Slow(BaseException):
    """Raised by SIGALRM in a run past SLOW_S (not an Exception: no tool catches it)."""


def _alarm(signum, frame):
    raise Slow()


# --------------------------------------------------------------------------- running


def _snapshot(d: Path) -> dict:
    out = {}
    for p in d.rglob("*"):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(d))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(d)) + "/"] = "dir"
    return out


def run_tool(prog: str, main, argv, ok=(0,), errors=(2,), cwd=None):
    """Run ``main(argv)`` in process (in ``cwd``).  Returns (rc, why, stdout,
    stderr, new_or_changed): why None when the run kept the error policy: rc in
    ``ok``, or rc in ``errors`` with one ``PROG: error:`` line; else what broke
    it (an exception and its last traceback line, a warning, the exit status,
    the error lines)."""
    cwd = Path(cwd or os.getcwd())
    before = _snapshot(cwd)
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SLOW_S)
    rc = why = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = main(list(argv))
        except Slow:
            why = "slow"
        except SystemExit as e:                 # noqa: (argparse's exit is a defect here)
            why = "SystemExit(%r)" % (e.code,)
        except BaseException as e:              # noqa: BLE001 (what this looks for)
            tb = traceback.extract_tb(e.__traceback__)[-1]
            why = "%s: %s (%s:%d)" % (type(e).__name__, str(e)[:160],
                                      os.path.basename(tb.filename), tb.lineno)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    text = err.getvalue()
    after = _snapshot(cwd)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    if why is None:
        lines = [ln for ln in text.splitlines()
                 if ln.strip() and not ln.startswith("%s: warning: " % prog)]
        errs = [ln for ln in lines if ln.startswith("%s: error: " % prog)]
        if caught:
            w = caught[0]
            why = "warning: %s: %s (%s:%d)" % (w.category.__name__, str(w.message)[:120],
                                               os.path.basename(w.filename), w.lineno)
        elif "Traceback" in text:
            why = "traceback on stderr: %s" % text.strip().splitlines()[-1][:200]
        elif "Warning: " in text:
            why = "warning on stderr: %s" % [ln for ln in text.splitlines() if "Warning: " in ln][0][:200]
        elif rc in ok:
            if errs:
                why = "exit %s with an error line: %s" % (rc, errs[0][:200])
        elif rc in errors:
            if not (len(lines) == 1 and len(errs) == 1):
                why = "exit %s with %d lines: %s" % (rc, len(lines), " | ".join(lines)[-300:])
        else:
            why = "exit %r: %s" % (rc, text.strip()[-200:])
    return rc, why, out.getvalue(), text, changed


def _fresh(base: Path, k: int, inputs: dict) -> Path:
    d = base / ("run%05d" % k)
    d.mkdir()
    for name, data in inputs.items():
        (d / name).write_bytes(data)
    return d


@contextlib.contextmanager
def _chdir(d):
    here = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(here)


def _tally(counts, out, label, rc, why, extra=""):
    if why == "heavy":                      # (a line too long to run: not run)
        counts["heavy"] = counts.get("heavy", 0) + 1
    elif why == "slow":
        counts["slow"] = counts.get("slow", 0) + 1
        print("SLOW %s%s" % (label, extra), file=out)
    elif why is not None:
        counts["fail"] += 1
        print("FAIL %s%s :: %s" % (label, extra, why), file=out)
    else:
        key = "exit %d" % rc
        counts[key] = counts.get(key, 0) + 1
        if VERBOSE:
            print("ok %d %s%s" % (rc, label, extra), file=out)


# --------------------------------------------------------------------------- JSON mutations


#: what a JSON value becomes
JSON_VALUES = [None, True, "x", "", [], {}, 0, -1, 1, 2, 99, 0.0, -0.0, 1e308, -1e308, 1e-320,
               float("nan"), float("inf"), -float("inf"), 10 ** 400, [0, 0, 0], [1.0, 0.0],
               [1.0, 0.0, 0.0, 0.0], [[1, 2, 3]], "0", "nan", 0.5]


def _paths(node, path=()):
    """Every (path, value) in a JSON tree (the root excluded)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((path + (k,), v))
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append((path + (i,), v))
            out += _paths(v, path + (i,))
    return out


def _at(root, path):
    for p in path:
        root = root[p]
    return root


def mutate_json(rng: random.Random, d):
    """(mutated copy, how): one value of the tree changed."""
    d = copy.deepcopy(d)
    paths = _paths(d)
    path, val = rng.choice(paths)
    parent = _at(d, path[:-1])
    key = path[-1]
    where = ".".join(str(p) for p in path)
    k = rng.randrange(6)
    if k == 0 and isinstance(parent, dict):
        del parent[key]
        return d, "%s dropped" % where
    if k == 1 and isinstance(val, list):
        j = rng.randrange(3)
        if j == 0:
            parent[key] = []
            return d, "%s emptied" % where
        if j == 1 and val:
            parent[key] = val[:-1]
            return d, "%s shortened" % where
        parent[key] = val + [copy.deepcopy(val[-1]) if val else 0]
        return d, "%s lengthened" % where
    if k == 2 and isinstance(val, (int, float)) and not isinstance(val, bool):
        big = val if abs(val) < 1e300 else 1.0          # (10**400 * 1e10: OverflowError)
        new = rng.choice([float("nan"), float("inf"), 1e308, 0, -val, big * 1e10, 10 ** 400,
                          val + 1, val - 1, 1e-300, -1])
        parent[key] = new
        return d, "%s %r -> %r" % (where, val, new)
    if k == 3 and isinstance(val, dict) and val:
        sub = rng.choice(sorted(val))
        del val[sub]
        return d, "%s.%s dropped" % (where, sub)
    new = rng.choice(JSON_VALUES)
    parent[key] = copy.deepcopy(new)
    return d, "%s -> %s" % (where, json.dumps(new, allow_nan=True)[:30] if not isinstance(new, int)
                            or abs(new) < 10 ** 20 else "10**400")


# --------------------------------------------------------------------------- expt


EXPT_BASE = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-default_F", "100",
             "-distance", "100", "-detpixels", "8", "-pixel", "0.5", "-N", "2"]
EXPT_CASES = {
    "still.expt": [],
    "rot.expt": ["-phi", "10", "-osc", "0.5"],
    "sensor.expt": ["-detector_thick", "100", "-detector_abs", "300", "-osc", "1"],
    "twotheta.expt": ["-twotheta", "20", "-misset", "10", "20", "30", "-polar", "0.5"],
    "mosflm.expt": ["-mosflm", "-Xbeam", "2", "-Ybeam", "1", "-phi", "-5", "-osc", "2"],
}
EXPT_INDEX = ["0", "1", "-1", "2", "99", "abc", "", "1e3", "0x1", "99999999999999999999"]
EXPT_MAT = ["out.mat", "", "-x.mat", "nodir/x.mat", "in.expt", ".", "still.expt"]
EXPT_HALL = [" P 1", "", "P 21", "\x00", "x" * 300]


def _expt_inputs() -> dict:
    from nbnumba.expt import expt_from_flags
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in EXPT_CASES.items():
            d = expt_from_flags(EXPT_BASE + extra)
            out[name] = d
    return out


def _check_expt_ok(stdout: str, d: Path):
    """None when exit 0 printed flags nbnumba accepts and a -mat file of 9 numbers."""
    import numpy as np
    import nbnumba
    from nbnumba.model import build_model
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return "exit 0 without flags on stdout"
    argv = shlex.split(lines[-1])
    if "-mat" not in argv:
        return "exit 0: no -mat in %s" % lines[-1][:100]
    mat = d / argv[argv.index("-mat") + 1]
    try:
        nums = np.array(mat.read_text().split(), dtype=float)
    except (OSError, ValueError) as e:
        return "exit 0: the -mat file does not read: %s" % e
    if nums.size != 9 or not np.isfinite(nums).all():
        return "exit 0: -mat file of %d numbers, finite %s" % (nums.size, np.isfinite(nums).all())
    with _chdir(d):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                # (F and the sampling are the user's to add: -oversample 1 keeps an
                # auto-selected one of a close panel from refusing the geometry)
                build_model(nbnumba.parse_argv(argv + ["-default_F", "1", "-oversample", "1"]))
        except Exception as e:       # noqa: BLE001
            return "exit 0 printed flags nbnumba refuses: %s: %s" % (type(e).__name__, str(e)[:160])
    return None


def fuzz_expt(seed: int, runs: int, out=sys.stdout) -> dict:
    from nbnumba import expt
    from nbnumba.expt import translate
    rng = random.Random(seed)
    specs = FZ._specs()
    good = _expt_inputs()
    base = Path(os.getcwd())
    FZ._inputs(base)
    shared = {n: (base / n).read_bytes() for n in os.listdir(base) if (base / n).is_file()}
    texts = {n: json.dumps(v, indent=2).encode() for n, v in good.items()}
    counts = {"exit 0": 0, "exit 2": 0, "fail": 0}
    for k in _runs(runs):
        d = _fresh(base, k, {**shared, **texts})
        if rng.randrange(5) == 0:
            flags = EXPT_BASE + FZ.cli_args(rng, specs, 0, 3)
            o = rng.choice(["t.expt", "t.expt", "", "-", "nodir/t.expt", "x.hkl"])
            argv = ["--from-flags", "-o", o]
            if rng.randrange(3) == 0:
                argv += ["--images", rng.choice(["img_####.cbf", "a.img", ""])]
            if rng.randrange(4) == 0:
                argv += ["--hall", rng.choice(EXPT_HALL)]
            argv += ["--"] + flags
            how = ""
        else:
            name = rng.choice(sorted(good))
            if rng.randrange(4) == 0:
                data, how = FZ.mutate_file(rng, name, texts[name])
            else:
                m, how = good[name], "unchanged"
                for _ in range(rng.choice([1, 1, 1, 2, 3])):
                    m, h = mutate_json(rng, m)
                    how = h if how == "unchanged" else how + "; " + h
                data = json.dumps(m, indent=2, allow_nan=True).encode()
            (d / name).write_bytes(data)
            argv = [name]
            for opt in ("--experiment", "--panel", "--image"):
                if rng.randrange(4) == 0:
                    argv += [opt, rng.choice(EXPT_INDEX)]
            if rng.randrange(4) == 0:
                argv += ["--mat-out", rng.choice(EXPT_MAT)]
            if rng.randrange(10) == 0:
                argv += [rng.choice(["--bogus", "-h", "other.expt", "--experiment"])]
            how = " [%s: %s]" % (name, how)
        with _chdir(d):
            rc, why, so, se, changed = run_tool("nbnumba-expt", expt.main, argv, cwd=d)
        if why is None and rc == 0 and argv and argv[0] == "--from-flags":
            if "-h" in argv:
                pass
            else:
                o = argv[argv.index("-o") + 1]
                try:
                    with _chdir(d), warnings.catch_warnings():
                        warnings.simplefilter("error")
                        translate(o, mat_out="rt.mat")
                except Exception as e:     # noqa: BLE001
                    why = "--from-flags wrote a list nbnumba-expt refuses: %s: %s" % (
                        type(e).__name__, str(e)[:160])
        elif why is None and rc == 0 and not any(a in ("-h", "--help") for a in argv):
            why = _check_expt_ok(so, d)
        elif why is None and rc == 2:
            new = [c for c in changed]
            if new:
                why = "exit 2 left %s" % new[:3]
        _tally(counts, out, "nbnumba-expt " + shlex.join(argv)[:300], rc, why, how)
        shutil.rmtree(d, ignore_errors=True)
    return counts


# --------------------------------------------------------------------------- sf


SF_PDB = """\
CRYST1   20.000   25.000   30.000  90.00  90.00  90.00 P 21 21 21    4
ATOM      1  N   GLY A   1       1.000   2.000   3.000  1.00 10.00           N
ATOM      2  CA  GLY A   1       2.200   2.500   3.400  1.00 12.00           C
ATOM      3  O   GLY A   1       3.000   1.500   4.000  0.50 15.00           O
HETATM    4 FE   HEM A   2       5.000   5.000   5.000  1.00 20.00          FE
END
"""
#: PDB columns (0-based slices) a mutation may rewrite, and what they become
PDB_FIELDS = [(30, 38), (38, 46), (46, 54), (54, 60), (60, 66), (76, 78)]
PDB_VALUES = ["nan", "inf", "-inf", "1e30", "*****", "", "-1.00", "0.00", "99999.9", "-9999",
              "XX", "Es", "D", "1e-30", "abc"]
CRYST_VALUES = ["0", "-20", "nan", "1e9", "180", "0.0001", "90", "1e-9", "inf", "abc"]
MTZ_RECORDS = [b"CELL", b"DCELL", b"SYMM", b"NCOL", b"VALM", b"NDIF", b"SYMINF", b"COLUMN", b"END"]
MTZ_VALUES = [b"nan", b"0", b"-1", b"1e30", b"abc", b"", b"999999999", b"inf", b"X, Y, Z"]
SF_DMIN = ["2", "3", "5", "1.5", "100", "0", "-1", "nan", "inf", "1e-300", "abc", "1e308", "2.0e0"]
SF_B = ["0", "10", "-10", "1e6", "-1e6", "nan", "abc", "-2000", "1e308"]


def _sf_inputs() -> dict:
    import gemmi
    import numpy as np
    d = Path(tempfile.mkdtemp())
    try:
        (d / "m.pdb").write_text(SF_PDB)
        st = gemmi.read_structure(str(d / "m.pdb"))
        st.setup_entities()
        st.make_mmcif_document().write_file(str(d / "m.cif"))
        m = gemmi.Mtz(with_base=True)
        m.spacegroup = gemmi.SpaceGroup("P 1 21 1")
        m.set_cell_for_all(gemmi.UnitCell(20, 25, 30, 90, 100, 90))
        m.add_dataset("crystal")
        for label, typ in (("F", "F"), ("SIGF", "Q"), ("I", "J"), ("F(+)", "G"), ("F(-)", "G")):
            m.add_column(label, typ)
        rows = []
        rr = np.random.default_rng(1)
        sg = gemmi.SpaceGroup("P 1 21 1")
        asu, ops, uc = gemmi.ReciprocalAsu(sg), sg.operations(), gemmi.UnitCell(20, 25, 30, 90, 100, 90)
        for h in range(-5, 6):
            for k_ in range(-5, 6):
                for l_ in range(-6, 7):
                    if (h, k_, l_) != (0, 0, 0) and asu.is_in([h, k_, l_]) \
                            and not ops.is_systematically_absent([h, k_, l_]) \
                            and uc.calculate_d([h, k_, l_]) >= 5:
                        f = rr.uniform(1, 100)
                        rows.append([h, k_, l_, f, 1.0, f * f, f, f * 1.01])
        m.set_data(np.array(rows, dtype=np.float32))
        m.write_to_file(str(d / "m.mtz"))
        return {n: (d / n).read_bytes() for n in ("m.pdb", "m.cif", "m.mtz")}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def mutate_pdb(rng: random.Random, data: bytes) -> tuple:
    lines = data.decode("latin-1").split("\n")
    if rng.randrange(3) == 0:
        i = 0
        parts = lines[0][6:54].split()
        j = rng.randrange(6)
        v = rng.choice(CRYST_VALUES)
        parts[j] = v
        lines[i] = "CRYST1" + "".join("%9s" % p for p in parts[:3]) + "".join(
            "%7s" % p for p in parts[3:]) + lines[0][54:]
        return "\n".join(lines).encode("latin-1"), "CRYST1 field %d -> %r" % (j, v)
    i = rng.randrange(1, 5)
    a, b = rng.choice(PDB_FIELDS)
    v = rng.choice(PDB_VALUES)
    ln = lines[i].ljust(80)
    lines[i] = ln[:a] + v.rjust(b - a)[:b - a] + ln[b:]
    return "\n".join(lines).encode("latin-1"), "line %d cols %d-%d -> %r" % (i + 1, a + 1, b, v)


def mutate_mtz(rng: random.Random, data: bytes) -> tuple:
    import re
    if rng.randrange(2) == 0:
        rec = rng.choice(MTZ_RECORDS)
        pos = [m.start() for m in re.finditer(rec, data)]
        if pos:
            p = rng.choice(pos)
            v = rng.choice(MTZ_VALUES)
            field = rng.randrange(1, 7)
            rec80 = data[p:p + 80].decode("latin-1").split()
            if field < len(rec80):
                rec80[field] = v.decode()
            new = " ".join(rec80).encode("latin-1")[:80].ljust(80)
            return data[:p] + new + data[p + 80:], "%s field %d -> %r" % (rec.decode(), field, v)
    return FZ.mutate_file(rng, "m.mtz", data)


def _check_sf_text(lines):
    """Why the reflections ``lines`` (an iterable of text lines) are not an HKL
    file of 4 finite columns with F >= 0, or None.  Read in blocks: a model
    with a 1e9 Å edge at -dmin 100 gives 20 million lines (628 MB), which one
    array of them held as several GB (fuzz_tools sf, seed 482)."""
    import itertools

    import numpy as np
    n = 0
    it = iter(lines)
    while True:
        rows = [ln.split() for ln in itertools.islice(it, 200000) if ln.strip()]
        if not rows:
            break
        n += len(rows)
        try:
            a = np.array(rows, dtype=float)
        except ValueError as e:
            return "exit 0 with unreadable lines: %s" % e
        if a.shape[1] != 4:
            return "exit 0 with %d columns" % a.shape[1]
        if not np.isfinite(a).all() or (a[:, 3] < 0).any():
            return "exit 0 with 4 columns, finite %s, min F %g" % (np.isfinite(a).all(),
                                                                  a[:, 3].min())
    return "exit 0 with no reflection" if n == 0 else None


def fuzz_sf(seed: int, runs: int, out=sys.stdout) -> dict:
    from nbnumba import sf
    rng = random.Random(seed)
    orig = _sf_inputs()
    base = Path(os.getcwd())
    counts = {"exit 0": 0, "exit 2": 0, "fail": 0}
    for k in _runs(runs):
        d = _fresh(base, k, orig)
        name = rng.choice(["m.pdb", "m.pdb", "m.cif", "m.mtz", "m.mtz"])
        how = "unchanged"
        if rng.randrange(5):
            if name == "m.pdb" and rng.randrange(2):
                data, how = mutate_pdb(rng, orig[name])
            elif name == "m.mtz":
                data, how = mutate_mtz(rng, orig[name])
            else:
                data, how = FZ.mutate_file(rng, name, orig[name])
            (d / name).write_bytes(data)
        argv = [name]
        if name != "m.mtz" or rng.randrange(2):
            argv += ["-dmin", rng.choice(SF_DMIN) if rng.randrange(3) == 0 else rng.choice(["2", "3"])]
        if name == "m.mtz":
            if rng.randrange(3) == 0:
                argv += ["-column", rng.choice(["F", "I", "F(+)", "F(-)", "SIGF", "H", "x", " "])]
            if rng.randrange(4) == 0:
                argv += ["-intensities"]
        else:
            if rng.randrange(4) == 0:
                argv += ["-bulk_solvent"]
                for opt in ("-k_sol", "-B_sol"):
                    if rng.randrange(3) == 0:
                        argv += [opt, rng.choice(SF_B)]
            if rng.randrange(4) == 0:
                argv += ["-B_add", rng.choice(SF_B)]
        if rng.randrange(8) == 0:
            argv += [rng.choice(["-bulk_solvent", "-column", "-intensities", "-x", "m.cif"])]
        o = None
        if rng.randrange(2):
            o = rng.choice(["P1.hkl", "P1.hkl", name, "nodir/P1.hkl", "-x", ""])
            argv += ["-o", o]
        with _chdir(d):
            rc, why, so, se, changed = run_tool("nbnumba-sf", sf.main, argv, cwd=d)
        if why is None and rc == 0 and "-h" not in argv:
            if o:
                with open(d / o, encoding="utf-8") as fh:
                    why = _check_sf_text(fh)
            else:
                why = _check_sf_text(so.splitlines())
        elif why is None and rc == 2 and changed:
            why = "exit 2 left or changed %s" % changed[:3]
        _tally(counts, out, "nbnumba-sf " + shlex.join(argv), rc, why, " [%s: %s]" % (name, how))
        shutil.rmtree(d, ignore_errors=True)
    return counts


# --------------------------------------------------------------------------- series


SERIES_BASE = ["-cell", "70", "80", "90", "90", "90", "90", "-default_F", "100", "-N", "2",
               "-lambda", "1", "-distance", "100", "-detpixels", "8", "-pixel", "0.2", "-seed", "1",
               "-noprogress"]
SERIES_ENGINE = [["-nonoise"], ["-nonoise", "-scale", "2"], ["-phi", "5"], ["-osc", "1"],
                 ["-misset", "random"], ["-roi", "1", "6", "1", "6"], ["-phisteps", "3"],
                 ["-floatfile", "f.bin"], ["-mosaic", "0.5", "-mosaic_dom", "2"], ["-seed", "abc"],
                 ["-xtal_size", "0.01"], ["-misset", "10", "0", "0"], ["-threads", "1"],
                 ["-device", "cuda"], ["-hkl", "missing.hkl"], ["-printout"]]
SERIES_NUM = ["1", "2", "3", "0", "-1", "abc", "1e3", "nan", "inf", "100000", "0.5", "1e308", ""]
SERIES_OSC = ["0.1", "1", "0", "-1", "nan", "1e308", "360", "1e-300", "abc"]
SERIES_JITTER = ["0", "1", "50", "100", "101", "-1", "nan", "1e306"]
SERIES_FORMATS = ["smv", "cbf", "nexus", "smv,cbf", "smv,nexus", "bogus", "", "smv,smv", "SMV"]
SERIES_PREFIX = ["frame", "shot", "", ".x", "a/b", "-h", "x" * 240, "\udcff"]


def _pick(rng: random.Random, good, bad, p_bad=0.15):
    """A value of ``good``, or of ``bad`` with probability ``p_bad``."""
    return rng.choice(bad) if rng.random() < p_bad else rng.choice(good)


def _series_argv(rng: random.Random, resume=False) -> list:
    argv = []
    if rng.randrange(3):
        argv += ["--frames", _pick(rng, ["1", "2", "3"], SERIES_NUM, 0.1)]
        if rng.randrange(2):
            argv += ["--osc-per-frame", _pick(rng, ["0.1", "1", "0", "5"], SERIES_OSC)]
        if rng.randrange(4) == 0:
            argv += ["--phisteps-per-frame", _pick(rng, ["1", "2", "3"], SERIES_NUM)]
    else:
        argv += ["--shots", _pick(rng, ["1", "2", "3"], SERIES_NUM, 0.1)]
        if rng.randrange(2):
            argv += ["--random-orientation"]
        for opt in ("--jitter-cell", "--jitter-N"):
            if rng.randrange(3) == 0:
                argv += [opt, _pick(rng, ["0", "1", "5", "50", "100"], SERIES_JITTER)]
    if rng.randrange(3) == 0:
        argv += ["--format", _pick(rng, ["smv", "cbf", "nexus", "smv,cbf", "smv,nexus", "cbf,nexus"],
                                   SERIES_FORMATS)]
    if rng.randrange(6) == 0:
        argv += ["--prefix", _pick(rng, ["frame", "shot", "a_b"], SERIES_PREFIX, 0.4)]
    if rng.randrange(6) == 0:
        argv += ["--retries", _pick(rng, ["0", "1", "3"], SERIES_NUM)]
    w = "0"
    if rng.randrange(20) == 0:
        w = rng.choice(["-1", "abc", "99999", "1.5", ""])
    argv += ["--workers", w]
    if rng.randrange(25) == 0:
        argv += ["--scheduler", rng.choice(["bogus", "tcp://", "http://x:1", ":"])]
    if rng.randrange(25) == 0:
        argv += ["--device", rng.choice(["gpu", "", "CPU"])]
    if rng.randrange(25) == 0:
        argv += [rng.choice(["--bogus", "--resume=1", "--frames", "--overwrite"])]
    argv += ["--out", _pick(rng, ["out"], ["nodir/sub/out", "f.txt", "", "."], 0.1)
             if not resume else "out"]
    argv += SERIES_BASE
    for _ in range(rng.choice([0, 0, 1, 2])):
        argv += _pick(rng, SERIES_ENGINE[:13], SERIES_ENGINE[13:], 0.1)
    return argv


def _check_series(rc: int, d: Path, argv: list):
    """None when the out folder holds what exit ``rc`` promises."""
    o = argv[argv.index("--out") + 1] if "--out" in argv else None
    if not o or "-h" in argv or "--help" in argv:
        return None
    mpath = d / o / "manifest.jsonl"
    if not mpath.is_file():
        return "exit %d without a manifest" % rc
    latest = {}
    # lines end at '\n' only, as nbnumba-series reads them (Manifest.read): a '\r'
    # inside a line is JSON whitespace there, where read_text()'s universal
    # newlines and splitlines() ended the line and lost its record (seed 463)
    for ln in mpath.read_bytes().decode("utf-8", "replace").split("\n"):
        try:
            r = json.loads(ln)
        except (ValueError, RecursionError):     # (Manifest.read skips both)
            continue
        if (isinstance(r, dict) and r.get("type") in ("frame", "failed")
                and isinstance(r.get("frame"), int)):
            latest[r["frame"]] = r
    failed = [r for r in latest.values() if r["type"] == "failed"]
    for r in latest.values():
        files = r.get("files") if r["type"] == "frame" else None
        for name, sha in (files if isinstance(files, dict) else {}).items():
            p = d / o / name
            if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha:
                return "exit %d: frame file %s missing or not the manifest's" % (rc, name)
    n = None
    for opt in ("--frames", "--shots"):
        if opt in argv:
            n = int(argv[len(argv) - 1 - argv[::-1].index(opt) + 1])
    # each of the n frames needs its record; a record of another index is no
    # frame of this series (a mutated manifest line, frame -> -1, stays in the
    # append-only manifest, and nbnumba-series ignores it: seed 263 counted it)
    if rc == 0 and n is not None and any(latest.get(i, {}).get("type") != "frame"
                                         for i in range(n)):
        return "exit 0 without a frame record for each of the %d frames" % n
    if rc == 1 and not failed:
        return "exit 1 without a 'failed' record"
    if any(n.endswith(".tmp") for n in os.listdir(d / o)):
        return "exit %d left a temporary file" % rc
    return None


def fuzz_series(seed: int, runs: int, out=sys.stdout) -> dict:
    from nbnumba import series
    rng = random.Random(seed)
    base = Path(os.getcwd())
    counts = {"exit 0": 0, "exit 1": 0, "exit 2": 0, "fail": 0}
    (base / "f.txt").write_text("a file\n")
    shared = {"f.txt": b"a file\n"}
    for k in _runs(runs):
        d = _fresh(base, k, shared)
        how = ""
        resume = rng.randrange(3) == 0
        if resume:
            first = ["--frames", "2", "--workers", "0", "--out", "out"] + SERIES_BASE
            if rng.randrange(2):
                first = ["--shots", "2", "--random-orientation", "--workers", "0", "--out", "out",
                         "--format", "smv,nexus"] + SERIES_BASE
            with _chdir(d), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                series.main(first)
            j = rng.randrange(4)
            mp = d / "out" / "manifest.jsonl"
            if j == 0 and mp.exists():
                data, how = FZ.mutate_file(rng, "manifest.jsonl", mp.read_bytes())
                mp.write_bytes(data)
            elif j == 1 and mp.exists():
                lines = mp.read_text().splitlines()
                i = rng.randrange(len(lines))
                try:
                    m, how = mutate_json(rng, {"r": json.loads(lines[i])})
                    lines[i] = json.dumps(m["r"], allow_nan=True) if "r" in m else ""
                except ValueError:
                    pass
                how = "manifest line %d: %s" % (i + 1, how)
                mp.write_text("\n".join(lines) + "\n")
            elif j == 2:
                fr = sorted(p for p in (d / "out").glob("*") if p.name != "manifest.jsonl")
                if fr:
                    p = rng.choice(fr)
                    data, h = FZ.mutate_file(rng, p.name, p.read_bytes())
                    p.write_bytes(data)
                    how = "%s: %s" % (p.name, h)
            argv = (first if rng.randrange(2) else _series_argv(rng, resume=True))
            argv = [a for a in argv if a not in ("--resume", "--overwrite")]
            argv = [rng.choice(["--resume", "--resume", "--overwrite"])] + argv
            how = " [resume; %s]" % (how or "as written")
        else:
            argv = _series_argv(rng)
        with _chdir(d):
            rc, why, so, se, changed = run_tool("nbnumba-series", series.main, argv,
                                                ok=(0, 1), cwd=d)
        if why is None and rc in (0, 1):
            why = _check_series(rc, d, argv)
        elif why is None and rc == 2 and not resume and changed:
            why = "exit 2 left %s" % changed[:3]
        _tally(counts, out, "nbnumba-series " + shlex.join(argv), rc, why, how)
        shutil.rmtree(d, ignore_errors=True)
    return counts


# --------------------------------------------------------------------------- tools


TRACES = REPO / "tests" / "data" / "traces"
TRACE_TOKENS = ["nan", "inf", "-inf", "1e308", "-1e308", "abc", "", "1e-320", "0", "-0",
                "phi_tic=nan", "phi_tic=1.5", "x=", "=1", "TRACE_C:", "TRACE_PY_PHI:", "9" * 400]
NUMS = ["1e-6", "0", "-1", "nan", "inf", "1e308", "abc", "1", "0.5", "-0", ""]
COMPARE_BASE = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-default_F", "100",
                "-distance", "100", "-detpixels", "8", "-pixel", "0.5", "-N", "2", "-nonoise",
                "-nopgm", "-noprogress"]
PROBE_ARGS = ("-cell 70 70 70 90 90 90 -default_F 1 -N 2 -distance 100 -detpixels 16 -pixel 0.1 "
              "-phi 0 -osc 0.09 -phisteps 10 -nopgm -nonoise -noprogress").split()


def mutate_trace(rng: random.Random, data: bytes) -> tuple:
    if rng.randrange(3) == 0:
        return FZ.mutate_file(rng, "t.log", data)
    lines = data.decode("latin-1").split("\n")
    i = rng.randrange(len(lines))
    j = rng.randrange(4)
    if j == 0:
        toks = lines[i].split(" ")
        t = rng.randrange(len(toks))
        v = rng.choice(TRACE_TOKENS)
        toks[t] = v if "=" not in toks[t] or rng.randrange(2) else toks[t].split("=")[0] + "=" + v
        lines[i] = " ".join(toks)
        how = "line %d token %r" % (i + 1, v)
    elif j == 1:
        lines.insert(i, lines[i])
        how = "line %d doubled" % (i + 1)
    elif j == 2:
        lines[i] = lines[i].replace("TRACE_C", rng.choice(["TRACE_PY", "TRACE_X", "", "TRACE_C_PHI"]), 1)
        how = "line %d prefix changed" % (i + 1)
    else:
        lines = lines[:i]
        how = "cut at line %d" % (i + 1)
    return "\n".join(lines).encode("latin-1"), how


def _tool_trace_diff(rng, d, logs):
    from nbnumba.tools import trace_diff
    names = sorted(logs)
    c, p = rng.choice(names), rng.choice(names)
    how = []
    (d / "c.log").write_bytes(logs[c])
    py = logs[p].replace(b"TRACE_C", b"TRACE_PY")
    (d / "py.log").write_bytes(py)
    for f in ("c.log", "py.log"):
        if rng.randrange(3):
            data, h = mutate_trace(rng, (d / f).read_bytes())
            (d / f).write_bytes(data)
            how.append("%s: %s" % (f, h))
    argv = ["c.log", "py.log"]
    if rng.randrange(3) == 0:
        argv += ["--tol", _pick(rng, ["1e-6", "0.1", "0"], NUMS, 0.3)]
    if rng.randrange(4) == 0:
        argv += ["--atol", _pick(rng, ["0", "1e-9", "1"], NUMS, 0.3)]
    outs = []
    for opt, nm in (("--json", "o.json"), ("--markdown", "o.md")):
        if rng.randrange(2):
            v = _pick(rng, [nm], ["c.log", "nodir/x", ".", "o.json"])
            argv += [opt, v]
            outs.append((opt, v))
    for opt in ("--quiet", "--strict-keys"):
        if rng.randrange(4) == 0:
            argv.append(opt)
    rc, why, so, se, changed = run_tool("nbnumba-trace-diff", trace_diff.main, argv, ok=(0, 1), cwd=d)
    if why is None and rc in (0, 1):
        for opt, v in outs:
            try:
                text = (d / v).read_text()
                if opt == "--json":
                    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except (OSError, ValueError) as e:
                why = "exit %d: %s %s does not read back: %s" % (rc, opt, v, e)
    elif why is None and rc == 2 and changed:
        why = "exit 2 left or changed %s" % changed[:3]
    return "nbnumba-trace-diff", argv, rc, why, "; ".join(how)


def _tool_sincg(rng, d, logs):
    from nbnumba.tools import sincg_sweep
    argv = ["--N", _pick(rng, ["47", "1", "2", "10", "1000"],
                         ["0", "-1", "9007199254740993", "abc", "1e3"]),
            "--k"] + [_pick(rng, ["-0.61", "-0.58", "0", "1", "0.5", "2", "-3.5"],
                            ["nan", "inf", "1e308", "-1e-300", "1e15", "abc"], 0.1) for _ in range(2)]
    if rng.randrange(2):
        argv += ["--steps", _pick(rng, ["5", "2", "101"], ["1", "0", "-1", "1000000000", "abc"])]
    if rng.randrange(3) == 0:
        argv += ["--outdir", _pick(rng, ["o", "o/p", "."], ["c.log", ""], 0.3)]
    if rng.randrange(3) == 0:
        argv += ["--prefix", _pick(rng, ["s", "x y", "-x"], ["", "a/b", ".", "..", "x" * 300,
                                                            "\udcff"], 0.4)]
    if rng.randrange(3):
        argv.append("--no-png")
    rc, why, so, se, changed = run_tool("nbnumba-sincg-sweep", sincg_sweep.main, argv, cwd=d)
    if why is None and rc == 0 and "-h" not in argv:
        od = argv[argv.index("--outdir") + 1] if "--outdir" in argv else "."
        px = argv[argv.index("--prefix") + 1] if "--prefix" in argv else "sincg_sweep"
        for ext in ("csv", "md") + (() if "--no-png" in argv else ("png",)):
            if not (d / od / ("%s.%s" % (px, ext))).is_file():
                why = "exit 0 without %s/%s.%s" % (od, px, ext)
    elif why is None and rc == 2 and changed:
        why = "exit 2 left or changed %s" % changed[:3]
    return "nbnumba-sincg-sweep", argv, rc, why, ""


def _tool_probe(rng, d, logs):
    from nbnumba.tools import probe
    how = ""
    argv = ["--pixel"] + [_pick(rng, ["8", "0", "15", "3"], ["16", "-1", "abc", "99999"], 0.1)
                          for _ in range(2)]
    argv += ["--outdir", _pick(rng, ["reports", "a/b"], ["c.log", ""], 0.1), "--no-c"]
    if rng.randrange(4):
        data = logs["mosflm_phi10_N2.c.log"]
        if rng.randrange(2):
            data, how = mutate_trace(rng, data)
        (d / "ct.log").write_bytes(data)
        argv += ["--c-trace", _pick(rng, ["ct.log"], ["missing.log", "."], 0.1)]
    if rng.randrange(3) == 0:
        argv += ["--roi-radius", _pick(rng, ["0", "1", "100"], ["-1", "abc"])]
    if rng.randrange(5) == 0:
        argv += ["--full-c"]
    if rng.randrange(4) == 0:
        argv += ["--tol", _pick(rng, ["1e-6", "0.1", "0"], NUMS, 0.3)]
    if rng.randrange(4) == 0:
        argv += ["--c-parity"]
    argv += ["--sincg-steps", _pick(rng, ["31", "2", "5"], ["1", "0", "-1", "abc"], 0.1)]
    if rng.randrange(6) == 0:
        argv += ["--timeout", _pick(rng, ["10"], ["nan", "0", "1e308"], 0.5)]
    extra = FZ.cli_args(rng, FZ._specs(), 0, 2) if rng.randrange(3) == 0 else []
    if FZ._call(lambda: FZ.heavy(PROBE_ARGS + extra))[1] == "heavy":
        return "nbnumba-probe", extra, None, "heavy", ""
    argv += ["--"] + PROBE_ARGS + extra
    rc, why, so, se, changed = run_tool("nbnumba-probe", probe.main, argv, ok=(0, 3),
                                        errors=(2, 5, 6), cwd=d)
    if why is None and rc in (0, 3):
        sums = list(d.rglob("summary.md"))
        if not sums or not (sums[0].parent / "sha256.txt").is_file():
            why = "exit %d without summary.md and sha256.txt" % rc
    elif why is None and changed:
        why = "exit %d left %s" % (rc, changed[:3])
    return "nbnumba-probe", argv, rc, why, how


def _tool_compare(rng, d, logs):
    from nbnumba.tools import compare
    argv = ["--outdir", _pick(rng, ["cmp"], ["c.log", ""], 0.1), "--no-png"]
    if rng.randrange(4) == 0:
        argv += ["--roi"] + [_pick(rng, ["0", "3", "7"], ["8", "-1", "abc"], 0.05) for _ in range(4)]
    if rng.randrange(4) == 0:
        argv += ["--threshold", _pick(rng, ["0.999", "0", "1"], NUMS, 0.3)]
    for opt in ("--resample", "--save-diff", "--serial"):
        if rng.randrange(4) == 0:
            argv.append(opt)
    if rng.randrange(5) == 0:
        argv += ["--png-scale", _pick(rng, ["100", "50"], NUMS + ["101"], 0.3)]
    if rng.randrange(4) == 0:
        argv += ["--py-args", rng.choice(["-c_parity", "-detpixels 4", "-bogus", "", "-hkl x.hkl",
                                          "-floatfile /x/y.bin", "'"])]
    if rng.randrange(5) == 0:
        argv += ["--c-threads", _pick(rng, ["1", "2"], ["0", "-1", "abc"], 0.3)]
    # (a runner past --timeout is killed by nb-compare: SLOW_S's alarm would leave it running)
    argv += ["--timeout", _pick(rng, ["20"], ["nan", "0", "1e308", "-1", "abc"], 0.1)]
    if rng.randrange(8) == 0:
        argv += ["--device", rng.choice(["cpu", "gpu", "cuda"])]
    if rng.randrange(8) == 0:
        argv += ["--c-bin", rng.choice(["missing", "c.log", "."])]
    flags = FZ.cli_args(rng, FZ._specs(), 0, 2)
    if FZ._call(lambda: FZ.heavy(COMPARE_BASE + flags))[1] == "heavy":
        return "nb-compare", flags, None, "heavy", ""
    argv += ["--"] + COMPARE_BASE + flags
    rc, why, so, se, changed = run_tool("nb-compare", compare.main, argv, ok=(0, 3),
                                        errors=(2, 4, 5, 6), cwd=d)
    if why is None:
        sums = list(d.rglob("summary.json"))
        if rc in (0, 3) and not sums:
            why = "exit %d without summary.json" % rc
        elif rc not in (0, 3):
            if sums:
                try:
                    s = json.loads(sums[0].read_text())
                    if s.get("exit_code") != rc:
                        why = "exit %d, summary.json says %s" % (rc, s.get("exit_code"))
                except ValueError as e:
                    why = "summary.json does not read: %s" % e
            elif any(c.endswith("/") or "/" in c for c in changed):
                why = "exit %d left %s without summary.json" % (rc, changed[:3])
    return "nb-compare", argv, rc, why, ""


TOOL_RUNS = {"trace-diff": _tool_trace_diff, "sincg-sweep": _tool_sincg, "probe": _tool_probe,
             "compare": _tool_compare}


def fuzz_tools(seed: int, runs: int, out=sys.stdout, which=None) -> dict:
    rng = random.Random(seed)
    base = Path(os.getcwd())
    FZ._inputs(base)
    shared = {n: (base / n).read_bytes() for n in os.listdir(base) if (base / n).is_file()}
    logs = {p.name: p.read_bytes() for p in sorted(TRACES.glob("*.log"))}
    shared["c.log"] = logs["xds_lambda1p5.c.log"]
    counts = {"exit 0": 0, "exit 2": 0, "fail": 0}
    names = sorted(which or TOOL_RUNS)
    for k in _runs(runs):
        d = _fresh(base, k, shared)
        tool = rng.choice(names)
        with _chdir(d):
            prog, argv, rc, why, how = TOOL_RUNS[tool](rng, d, logs)
        _tally(counts, out, prog + " " + shlex.join(argv)[:400], rc, why,
               " [%s]" % how if how else "")
        shutil.rmtree(d, ignore_errors=True)
    return counts


FUZZERS = {"expt": fuzz_expt, "sf": fuzz_sf, "series": fuzz_series, "tools": fuzz_tools}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/fuzz_tools.py", description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=TARGETS)
    p.add_argument("--seed", type=int, default=1, help="the draws' seed (default 1)")
    p.add_argument("--runs", type=int, default=100, help="runs to draw (default 100)")
    p.add_argument("--verbose", action="store_true", help="print every run")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop drawing runs after this many seconds (the counts say how many ran)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.runs < 1:
        print("tools/fuzz_tools.py: --runs must be >= 1", file=sys.stderr)
        return 2
    global VERBOSE, DEADLINE
    VERBOSE = a.verbose
    if a.max_seconds is not None:
        DEADLINE = time.monotonic() + a.max_seconds
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            counts = FUZZERS[a.target](a.seed, a.runs)
        finally:
            os.chdir(here)
    print("%s, seed %d: %s" % (a.target, a.seed, ", ".join("%s %d" % kv for kv in counts.items())))
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
