"""``nbnumba-series``: render a rotation series or a serial (still-shot) set on a
Dask cluster, one task per frame, with a manifest that makes runs resumable.

    nbnumba-series --frames 100 --osc-per-frame 0.1 --out run1 --format smv,nexus \\
        -cell 70 80 90 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 \\
        -detpixels 64 -pixel 0.2 -seed 1

    nbnumba-series --shots 200 --random-orientation --jitter-cell 0.5 --out shots \\
        -cell 70 80 90 90 90 90 -default_F 100 -N 5 -lambda 1 -distance 100 \\
        -detpixels 64 -pixel 0.2 -seed 1

Options of this command start with ``--``; every other argument is a nanoBragg
flag (single dash) and goes to nbnumba's own parser, which sets up the
frame everything else is derived from.

Frames
  Rotation (``--frames N --osc-per-frame DEG [--phisteps-per-frame K]``):
  frame i (0-based) covers phi0 + i*DEG to phi0 + (i+1)*DEG, sampled with K
  phi steps (default: nanoBragg's rule for ``-osc``, i.e. 2 steps, or what
  ``-phisteps``/``-phistep`` say) at their midpoints (nanoBragg.c, -c_parity:
  at their starts; docs/quirks.md #28).  Serial (``--shots N``): every shot uses the
  flags' phi/osc; with ``--random-orientation`` each shot gets a uniformly
  random crystal orientation, applied as explicit misset angles (so it cannot
  be combined with ``-misset``); ``--jitter-cell PCT`` / ``--jitter-N PCT``
  (0 to 100) scale a, b, c / Na, Nb, Nc by independent Gaussian factors
  (1 + PCT/100 * g) (N rounded to an integer).  The N scaled are the counts the
  image uses: ``-N``/``-Na``..., or those ``-xtal_size``/``-sample_*`` give for
  the unjittered cell; a shot renders with the jittered counts (recorded in the
  manifest) in place of the crystal size.  A shot whose jittered cell or N is
  impossible (an edge <= 0, N < 1) fails alone.
  Shot i draws all of these from ``numpy.random.SeedSequence([base_seed, i])``
  (one spawned child stream per quantity), so a shot's parameters depend only
  on the base seed and its index.  The base seed is ``-seed`` (or the clock
  when absent; it is stored in the manifest and reused by ``--resume``); the
  noise seed of frame i is base seed + i.  ``-misset random`` draws a single
  orientation for the whole series.

Files (in ``--out DIR``, image numbers start at 1: frame i -> ``frame_%05d`` of i+1)
  smv    ``frame_00001.img``  nanoBragg's SMV: the noise image when noise is on,
         else the scaled integer image (``-nonoise``), with nanoBragg's header.
         With ``-nonoise`` every frame uses one scale: ``-scale S`` when given,
         else the one nanoBragg picks for frame 1 (max pixel -> 55000), found
         by a pilot render of frame 1 before the series starts and printed
         (of the first shot that can be rendered, when frame 1's jittered
         cell or N is impossible).
  cbf    ``frame_00001.cbf``  miniCBF (fabio) with a Pilatus-style miniheader
  nexus  ``frame_00001.h5`` per frame, plus ``master.h5`` (NXmx, virtual (N, S, F)
         stack over the frame files) once every frame exists
  ``manifest.jsonl``: one JSON line for the run, then one per finished frame
  (index, parameters, files with sha256, statistics) or failed frame.

Execution
  ``--workers N`` (default: one per CPU) starts a local Dask cluster on
  127.0.0.1 (one single-threaded process per worker, no dashboard);
  ``--workers 0`` renders in this process without Dask; ``--scheduler ADDR``
  uses an existing cluster (its workers must see ``--out`` and the input files).
  Each worker runs the engine with ``-threads 1`` unless the flags say otherwise
  (``--workers 0`` uses every core for each frame instead; pixels do not
  depend on the thread count either);
  ``--device cpu|cuda`` picks the engine's device on the workers.  A frame's
  pixels depend only on its parameters, never on the worker count, order or
  retries.  Tasks are retried (``--retries``, default 2) when a worker dies or
  raises; a frame that fails deterministically (impossible parameters, a file
  that cannot be written) is reported and the run exits 1 after the others.
  ``--resume`` skips frames whose files exist with the sha256 recorded in the
  manifest and renders the rest.

Not in a series: ``-floatfile``, ``-intfile``, ``-noisefile``, ``-pgmfile``,
``-pgmscale`` (the series writes its own frames), ``-printout``,
``-printout_pixel``, ``-trace_pixel`` and ``-progress`` are refused (one line,
exit 2) rather than ignored.

Output: stdout has the pilot-scale line (``-nonoise``) and the summary.  A
reader that goes away (``| head``) does not stop the run: the rest of the text
is dropped and the exit status is the run's.  stdout that cannot be written
(``> /dev/full``) is one error line and exit 2; frames finished by then stay,
with their manifest lines.  A setup error (or interrupt) before the manifest is
written removes the DIR it created, when it is still empty.

Exit status: 0 all frames written, 1 some frames failed, 2 usage or setup
error, 3 stopped early by ``--max-frames`` (a testing aid), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, when run as a program).  With local Dask
workers, a Ctrl-C stops the client alone (the workers ignore SIGINT), which
closes the cluster: stderr has the one ``interrupted`` line.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import socket
import stat
import sys
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from .errors import (ConfigError, InputFileError, NBError, UsageError, quiet_broken_pipes,
                     warnings_as_lines, did_you_mean, main_args)
from .flags import _FLOAT_RE, _INT_RE, INT_MAX, HelpRequested
from .io.frames import FORMATS, FrameGeometry, FrameInfo, frame_filename, parse_formats
from .io.atomic import (NAME_MAX, OutputFileError, folder_refusal, may_access, missing_dirs,
                        output_set, remove_empty_dirs, replace_refusal, same_file)
from .io._args import sha256_file
from .io.smv import RTD

PROG = "nbnumba-series"
MANIFEST = "manifest.jsonl"
MASTER = "master.h5"
MANIFEST_VERSION = 1
MAX_FAILURE_LINES = 20      # failures printed one by one; the manifest has them all

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143       # SIGTERM, as the CLI (128 + 15)

USAGE = """\
usage: nbnumba-series (--frames N --osc-per-frame DEG [--phisteps-per-frame K]
                       | --shots N [--random-orientation] [--jitter-cell PCT] [--jitter-N PCT])
                      --out DIR [--format smv|cbf|nexus ...] [--workers N | --scheduler ADDR]
                      [--device cpu|cuda] [--resume | --overwrite] [--retries N]
                      [--progress | --no-progress] [--prefix NAME] <nanoBragg flags>

Renders one image per frame with nbnumba (one Dask task per frame) and writes
each frame atomically to DIR, with a resumable manifest (DIR/manifest.jsonl).

  --frames N              rotation series of N frames
  --osc-per-frame DEG     rotation width of each frame (default: -osc)
  --phisteps-per-frame K  phi samples per frame (default: nanoBragg's rule)
  --shots N               serial set of N still shots
  --random-orientation    a uniformly random crystal orientation per shot
  --jitter-cell PCT       Gaussian jitter (sigma, percent, <= 100) of a, b, c per shot
  --jitter-N PCT          Gaussian jitter (sigma, percent, <= 100) of Na, Nb, Nc per shot
  --out DIR               output directory (created if needed)
  --format F              smv (default), cbf, nexus; repeat or comma-separate
  --workers N             local cluster size (default: CPUs); 0 = in-process, no Dask
  --scheduler ADDR        use a running Dask scheduler (e.g. tcp://host:8786)
  --device cpu|cuda       engine device on the workers (default: -device or cpu)
  --retries N             retries of a task whose worker died or raised (default 2)
  --resume                skip frames already written (files match the manifest)
  --overwrite             start over in a DIR that holds an earlier run
  --progress/--no-progress  progress bar on stderr (default: only on a terminal)
  --prefix NAME           file-name prefix (default: frame; at most 245 bytes)

Every other argument is a nanoBragg flag (see `nbnumba -h`); -seed sets the
base seed (frame i gets noise seed base+i).  With -nonoise all frames share one
int-image scale: -scale S, else frame 1's (from a pilot render, printed).
--version prints nbnumba's version and its dependencies'."""

_VALUE_OPTS = {"frames", "osc-per-frame", "phisteps-per-frame", "shots", "jitter-cell",
               "jitter-n", "out", "format", "scheduler", "workers", "device", "retries",
               "prefix", "max-frames", "test-delay", "test-fail-frames"}
_FLAG_OPTS = {"random-orientation", "resume", "overwrite", "progress", "no-progress", "help"}


class SeriesUsageError(UsageError):
    """Bad series option (one line, exit 2)."""


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

@dataclass
class SeriesOptions:
    engine_argv: List[str]
    out: Optional[str] = None
    frames: Optional[int] = None
    osc_per_frame: Optional[float] = None
    phisteps_per_frame: Optional[int] = None
    shots: Optional[int] = None
    random_orientation: bool = False
    jitter_cell: float = 0.0
    jitter_N: float = 0.0
    formats: Tuple[str, ...] = ("smv",)
    scheduler: Optional[str] = None
    workers: Optional[int] = None
    device: Optional[str] = None
    retries: int = 2
    resume: bool = False
    overwrite: bool = False
    progress: Optional[bool] = None
    prefix: str = "frame"
    max_frames: Optional[int] = None      # hidden: stop after K newly rendered frames
    test_delay: float = 0.0               # hidden: seconds each task sleeps first
    test_fail_frames: FrozenSet[int] = frozenset()   # hidden: frames whose task fails
    help: bool = False

    @property
    def mode(self) -> str:
        return "rotation" if self.frames is not None else "serial"

    @property
    def count(self) -> int:
        return int(self.frames if self.frames is not None else self.shots)


#: frames of one series: frame_%05d names (and the image templates of DIALS
#: and XDS, frame_#####) hold five digits; --frames 99999999999 used to plan
#: that many frames in memory before the first one was rendered
MAX_FRAMES = 99999

#: largest --jitter-cell / --jitter-N (sigma, percent)
MAX_JITTER_PCT = 100.0


def _num(name, text, kind, minimum=None, maximum=None):
    # nbnumba's number rules (nbnumba.flags): plain ASCII decimals only, so
    # '３' (fullwidth), '1_0' (Python's digit separator) and ' 5' are refused,
    # not read as 3, 10 and 5 as int()/float() would
    ok = (_INT_RE if kind is int else _FLOAT_RE).match(text) if isinstance(text, str) else None
    if not ok:
        raise SeriesUsageError("--%s needs %s, got '%s'"
                               % (name, "an integer" if kind is int else "a number", text))
    v = kind(text)
    if kind is float and not math.isfinite(v):
        raise SeriesUsageError("--%s must be finite, got '%s'" % (name, text))
    if minimum is not None and v < minimum:
        raise SeriesUsageError("--%s must be >= %s, got '%s'" % (name, minimum, text))
    if maximum is not None and v > maximum:
        raise SeriesUsageError("--%s must be <= %s, got '%s'" % (name, maximum, text))
    return v


#: nanoBragg's spellings of help; as an option of this command (not as the value
#: of one: --prefix -h is a prefix) they print the usage
_HELP_WORDS = ("-h", "-help")


def _split_argv(argv: Sequence[str]):
    """(our options by name, the engine's flags, the first error or None); a help
    word among the options wins over every error, so the errors are kept."""
    engine: List[str] = []
    raw: Dict[str, List[str]] = {}
    error: Optional[SeriesUsageError] = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a[2:].partition("=")
            key = name.lower() if name.lower() in ("jitter-n",) else name
            if key in _FLAG_OPTS:
                if eq and error is None:
                    error = SeriesUsageError("option --%s takes no value" % name)
                raw.setdefault(key, []).append("1")
                i += 1
                continue
            if key in _VALUE_OPTS:
                if not eq:
                    if i + 1 >= len(argv):
                        error = error or SeriesUsageError("option --%s needs a value" % name)
                        i += 1
                        continue
                    val = argv[i + 1]
                    i += 1
                raw.setdefault(key, []).append(val)
                i += 1
                continue
            from .flags import _BY_SPELLING
            hint = ("" if "-" + name in _BY_SPELLING else
                    did_you_mean("--" + name, ["--" + k for k in list(_FLAG_OPTS) + list(_VALUE_OPTS)]))
            error = error or SeriesUsageError("unknown option --%s%s" % (
                name, hint or " (nanoBragg flags take a single dash; see --help)"))
            i += 1
            continue
        if a in _HELP_WORDS:
            raw.setdefault("help", []).append("1")
        else:
            engine.append(a)
        i += 1
    return raw, engine, error


def parse_series_argv(argv: Sequence[str]) -> SeriesOptions:
    """Split ``--options`` (ours) from nanoBragg flags (everything else)."""
    raw, engine, error = _split_argv(list(argv))
    if "help" in raw:
        return SeriesOptions(engine_argv=engine, help=True)
    if error is not None:
        raise error

    o = SeriesOptions(engine_argv=engine)

    def last(key):
        return raw[key][-1] if key in raw else None

    if last("frames") is not None:
        o.frames = _num("frames", last("frames"), int, 1, MAX_FRAMES)
    if last("shots") is not None:
        o.shots = _num("shots", last("shots"), int, 1, MAX_FRAMES)
    if last("osc-per-frame") is not None:
        o.osc_per_frame = _num("osc-per-frame", last("osc-per-frame"), float, 0.0)
    if last("phisteps-per-frame") is not None:
        # (-phisteps is a C int)
        o.phisteps_per_frame = _num("phisteps-per-frame", last("phisteps-per-frame"), int, 1,
                                    INT_MAX)
    o.random_orientation = "random-orientation" in raw
    # the jitter is a Gaussian sigma in percent: at 100 % a shot's factor 1 + g is
    # already <= 0 (an impossible cell, fewer than one unit cell) for 16 % of the
    # draws; larger values only fail more shots, and 1e306 overflowed the edges
    # and counts (an OverflowError traceback after DIR was created)
    for key, name, attr in (("jitter-cell", "jitter-cell", "jitter_cell"),
                            ("jitter-n", "jitter-N", "jitter_N")):
        if last(key) is not None:
            v = _num(name, last(key), float, 0.0)
            if v > MAX_JITTER_PCT:
                raise SeriesUsageError("--%s must be <= %g (a Gaussian sigma in percent), got '%s'"
                                       % (name, MAX_JITTER_PCT, last(key)))
            setattr(o, attr, v)
    o.out = last("out")
    if "format" in raw:
        try:
            o.formats = parse_formats(raw["format"])
        except ValueError as e:
            raise SeriesUsageError("--format: %s" % e) from None
        if not o.formats:
            raise SeriesUsageError("--format: no format given (choose from %s)" % ", ".join(FORMATS))
    o.scheduler = last("scheduler")
    if o.scheduler is not None:
        _check_scheduler_address(o.scheduler)
    if last("workers") is not None:
        o.workers = _num("workers", last("workers"), int, 0)
        cap = max_local_workers()
        if o.workers > cap:
            # each worker is a process of ~150 MB that imports numba: 100000 of them never start
            raise SeriesUsageError("--workers %d is more than this machine can run (at most %d: "
                                   "4 per CPU)" % (o.workers, cap))
    if last("device") is not None:
        o.device = last("device").lower()
        if o.device not in ("cpu", "cuda"):
            raise SeriesUsageError("--device must be cpu or cuda, got '%s'" % last("device"))
    if last("retries") is not None:
        o.retries = _num("retries", last("retries"), int, 0)
    o.resume = "resume" in raw
    o.overwrite = "overwrite" in raw
    if "progress" in raw and "no-progress" in raw:
        raise SeriesUsageError("--progress and --no-progress contradict each other")
    if "progress" in raw:
        o.progress = True
    if "no-progress" in raw:
        o.progress = False
    if last("prefix") is not None:
        o.prefix = last("prefix")
        if not o.prefix or os.sep in o.prefix or o.prefix.startswith("."):
            raise SeriesUsageError("--prefix must be a plain file-name prefix, got '%s'" % o.prefix)
    _check_prefix(o.prefix, o.formats)
    if last("max-frames") is not None:
        o.max_frames = _num("max-frames", last("max-frames"), int, 1)
    if last("test-delay") is not None:
        o.test_delay = _num("test-delay", last("test-delay"), float, 0.0)
    fail = raw.get("test-fail-frames", []) + [os.environ.get("NBNUMBA_SERIES_FAIL_FRAMES", "")]
    o.test_fail_frames = frozenset(_num("test-fail-frames", x.strip(), int, 0)
                                   for v in fail for x in v.split(",") if x.strip())

    if o.frames is None and o.shots is None:
        raise SeriesUsageError("give --frames N (rotation series) or --shots N (serial set)")
    if o.frames is not None and o.shots is not None:
        raise SeriesUsageError("--frames and --shots cannot be combined")
    if o.frames is not None:
        for flag, bad in (("--random-orientation", o.random_orientation),
                          ("--jitter-cell", o.jitter_cell > 0), ("--jitter-N", o.jitter_N > 0)):
            if bad:
                raise SeriesUsageError("%s applies to serial sets (--shots), not to --frames" % flag)
    elif o.osc_per_frame is not None or o.phisteps_per_frame is not None:
        raise SeriesUsageError("--osc-per-frame/--phisteps-per-frame apply to --frames, not to --shots")
    if not o.out:
        raise SeriesUsageError("--out DIR is required")
    if o.resume and o.overwrite:
        raise SeriesUsageError("--resume and --overwrite contradict each other")
    return o


def _check_prefix(prefix: str, formats: Sequence[str]) -> None:
    """SeriesUsageError for a prefix whose files cannot be written: a name
    longer than NAME_MAX, which failed every frame (their temporary names are
    shortened to fit: io.atomic.temp_name), and a name HDF5 cannot store in
    the master file."""
    longest = max(len(os.fsencode(frame_filename(prefix, MAX_FRAMES, f))) for f in formats)
    if longest > NAME_MAX:
        room = NAME_MAX - (longest - len(os.fsencode(prefix)))
        raise SeriesUsageError("--prefix is too long (%d bytes): the frame files' names would "
                               "have up to %d bytes, over the %d of a file name; use at most "
                               "%d bytes" % (len(os.fsencode(prefix)), longest, NAME_MAX, room))
    if "nexus" in formats:
        try:
            prefix.encode("utf-8")
        except UnicodeError:
            # (bytes that are no UTF-8 reach Python as surrogates; master.h5 names its frames in UTF-8)
            raise SeriesUsageError("--prefix with --format nexus must be UTF-8 text: master.h5 "
                                   "stores the frame file names") from None


_SCHEDULER_RE = re.compile(r"(?:(?:tcp|tls|inproc|ucx|ws|wss)://)?[A-Za-z0-9_.\-\[\]:]+:[0-9]+/?\Z")


def _check_scheduler_address(addr: str) -> None:
    """``tcp://host:port`` (or ``host:port``, other Dask schemes), before anything is written."""
    if not _SCHEDULER_RE.match(addr):
        raise SeriesUsageError("--scheduler: '%s' is not a Dask scheduler address "
                               "(expected e.g. tcp://host:8786)" % addr)


def max_local_workers() -> int:
    return 4 * default_workers()


# ---------------------------------------------------------------------------
# frame planning (client side, deterministic)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameSpec:
    """Everything that distinguishes one frame from the base configuration."""
    index: int
    number: int
    phi_deg: float
    osc_deg: float
    seed: int                                   # user-style noise seed (C stores -seed)
    phisteps: Optional[int] = None              # rotation: --phisteps-per-frame
    rotation: bool = True                       # False: serial shot (phi/osc as the flags say)
    misset: Optional[Tuple[float, float, float]] = None   # radians, serial random orientation
    cell: Optional[Tuple[float, float, float]] = None     # Angstrom, serial cell jitter
    N: Optional[Tuple[float, float, float]] = None        # serial N jitter

    def params(self) -> dict:
        p = {"phi_start_deg": self.phi_deg, "osc_deg": self.osc_deg, "seed": self.seed}
        if self.rotation:
            p["phisteps"] = self.phisteps
        else:
            p["misset_deg"] = None if self.misset is None else [m * RTD for m in self.misset]
            p["cell"] = None if self.cell is None else list(self.cell)
            p["N"] = None if self.N is None else list(self.N)
        return p


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation matrix (normalised Gaussian quaternion)."""
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _frame_osc_deg(cfg, opts: SeriesOptions) -> float:
    """A rotation frame's width (deg): --osc-per-frame, else -osc."""
    if opts.osc_per_frame is not None:
        return opts.osc_per_frame
    if cfg.osc < 0:
        raise SeriesUsageError("--frames needs --osc-per-frame DEG (or -osc DEG)")
    return cfg.osc * RTD


def _check_rotation_finite(cfg, opts: SeriesOptions) -> None:
    """SeriesUsageError when the last frame's rotation overflows double
    precision (--osc-per-frame 1e308 --frames 3: its -phi would be inf, and
    the frames before it would render first)."""
    if opts.mode != "rotation":
        return
    osc = _frame_osc_deg(cfg, opts)
    end = cfg.phi0 * RTD + opts.count * osc
    if not math.isfinite(end):
        raise SeriesUsageError("--frames %d of %g deg each overflow the rotation (the last "
                               "frame would end at phi = %g deg)" % (opts.count, osc, end))


#: nanoBragg flags that do nothing in a series: it writes its own frames
#: (--format, --out, --prefix) and renders without the engine's printouts
_NOT_IN_A_SERIES = {
    "-floatfile": "%s writes its own frames (--format, --out, --prefix)" % PROG,
    "-intfile": "%s writes its own frames (--format, --out, --prefix)" % PROG,
    "-noisefile": "%s writes its own frames (--format, --out, --prefix)" % PROG,
    "-pgmfile": "%s writes its own frames (--format, --out, --prefix); no PGM images" % PROG,
    "-pgmscale": "%s writes no PGM images" % PROG,
    "-printout": "%s renders without the engine's pixel printout" % PROG,
    "-printout_pixel": "%s renders without the engine's pixel printout" % PROG,
    "-trace_pixel": "%s renders without the engine's pixel trace" % PROG,
    "-progress": "the engine's progress meter is off in a series; --progress shows a bar of frames",
}


def _check_engine_flags(opts: SeriesOptions, cfg) -> None:
    """SeriesUsageError for a nanoBragg flag the series would ignore (it used to
    exit 0 without the file -floatfile named), or one --random-orientation replaces."""
    from .flags import c_blocks_matching, flag_names, spec_for
    known = flag_names()
    for arg in opts.engine_argv:
        if not arg.startswith("-") or _FLOAT_RE.match(arg):
            continue            # a value
        names = set()
        if arg in known:
            names.add(spec_for(arg).name)
        if cfg.c_parity:        # nanoBragg.c's strstr tests: -floatfile_x is -floatfile there
            names.update(n for label in c_blocks_matching(arg) for n in _NOT_IN_A_SERIES
                         if '"%s"' % n in label)
        for name in sorted(names & set(_NOT_IN_A_SERIES)):
            raise SeriesUsageError("%s is not used by %s: %s" % (arg, PROG, _NOT_IN_A_SERIES[name]))
    if cfg.seed is not None and -cfg.seed < 1:
        # frame i's noise seed is -seed + i; nanoBragg's generator (ran1) takes
        # 0 as 1, so -seed 0 gave frames 0 and 1 the same draws, and it does
        # not reseed from a negative value (cfg.seed is stored negated)
        raise SeriesUsageError("-seed %d: a series needs a seed of 1 or more (frame i draws its "
                               "noise from seed + i, and nanoBragg's generator takes 0 as 1 and "
                               "does not reseed from a negative seed)" % -cfg.seed)
    if opts.random_orientation and cfg.misset_mode != 0:
        raise SeriesUsageError("--random-orientation gives every shot its own orientation, which "
                               "replaces -misset; drop one of them")
    geometric = [f for f in opts.formats if f in ("cbf", "nexus")]
    if cfg.curved_detector and geometric:
        # their headers state a flat detector (pix0 and two axes), which the
        # sphere's pixels leave by ~rho^3/(6 R^2): 2 mm at 50 mm off the
        # normal at 100 mm, some ten pixels at the rim for a processing program
        raise SeriesUsageError("-curved_det with --format %s: its header describes a flat "
                               "detector, which the curved one's outer pixels leave by up to "
                               "rho^3/(6 R^2); use --format smv (nanoBragg's flat header, as "
                               "the C writes it) or drop -curved_det" % geometric[0])


def _engine_N(cfg) -> Tuple[float, float, float]:
    """The unit-cell counts a render of ``cfg`` uses: -N/-Na/-Nb/-Nc, or the ones
    -xtal_size / -sample_* give (the crystal's size over its edge, as the engine
    derives them)."""
    if not (cfg.sample_x > 0 or cfg.sample_y > 0 or cfg.sample_z > 0):
        return (float(cfg.Na), float(cfg.Nb), float(cfg.Nc))
    from .model import build_model
    cr = build_model(replace(cfg, seed=cfg.seed if cfg.seed is not None else -1,
                             threads=None)).crystal
    return (cr.Na, cr.Nb, cr.Nc)


def plan_frames(cfg, opts: SeriesOptions, base_seed: int,
                base_N: Optional[Tuple[float, float, float]] = None) -> List[FrameSpec]:
    """The FrameSpec of every frame of the series (pure function of its inputs).

    ``base_N``: the unit-cell counts of the unjittered crystal (what ``--jitter-N``
    scales); None: derived from ``cfg`` (:func:`_engine_N`)."""
    from .rng import umat2misset
    from .sampling import resolve_steps
    phi0_deg = cfg.phi0 * RTD
    specs: List[FrameSpec] = []
    if opts.mode == "rotation":
        osc_deg = _frame_osc_deg(cfg, opts)
        for i in range(opts.count):
            specs.append(FrameSpec(index=i, number=i + 1, phi_deg=phi0_deg + i * osc_deg,
                                   osc_deg=float(osc_deg), seed=base_seed + i,
                                   phisteps=opts.phisteps_per_frame, rotation=True))
        return specs
    osc_deg = resolve_steps(cfg).osc * RTD
    if opts.jitter_cell > 0 and not cfg.user_cell:
        raise SeriesUsageError("--jitter-cell needs the cell from -cell (not -mat)")
    pc, pn = opts.jitter_cell / 100.0, opts.jitter_N / 100.0
    if pn > 0 and base_N is None:
        base_N = _engine_N(cfg)
    entropy = int(base_seed) % (1 << 64)
    for i in range(opts.count):
        s_orient, s_cell, s_N = np.random.SeedSequence([entropy, i]).spawn(3)
        misset = cell = N = None
        if opts.random_orientation:
            R = random_rotation(np.random.default_rng(s_orient))
            misset = tuple(float(a) for a in umat2misset(R.ravel()))
        # (Python floats: the edges and counts are finite, --jitter-* being at most
        # 100 %; frame_config refuses a shot whose values are impossible)
        if pc > 0:
            g = np.random.default_rng(s_cell).standard_normal(3).tolist()
            cell = tuple(float(L) * (1.0 + pc * gi)
                         for L, gi in zip((cfg.cell_a, cfg.cell_b or cfg.cell_a,
                                           cfg.cell_c or cfg.cell_a), g))
        if pn > 0:
            g = np.random.default_rng(s_N).standard_normal(3).tolist()
            N = tuple(float(round(n * (1.0 + pn * gi))) for n, gi in zip(base_N, g))
        specs.append(FrameSpec(index=i, number=i + 1, phi_deg=phi0_deg, osc_deg=float(osc_deg),
                               seed=base_seed + i, rotation=False, misset=misset, cell=cell, N=N))
    return specs


# ---------------------------------------------------------------------------
# the task: render one frame and write its files
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """Per-run settings every task needs (small, picklable)."""
    out_dir: str
    formats: Tuple[str, ...]
    prefix: str
    threads: Optional[int]       # numba threads per frame; None: leave numba's setting
    device: str
    header_overflow: str = "grow"
    test_delay: float = 0.0
    test_fail_frames: FrozenSet[int] = frozenset()


def frame_config(cfg, spec: FrameSpec, job: Job):
    """The engine Config of one frame."""
    kw = dict(seed=-int(spec.seed), write_pgm=False, threads=job.threads, device=job.device,
              noprogress=True, progress_meter=False, trace_spixel=-1, trace_fpixel=-1,
              printout=False)
    if spec.rotation:
        kw.update(phi0=spec.phi_deg / RTD, osc=spec.osc_deg / RTD)
        if spec.phisteps is not None:
            kw.update(phisteps=int(spec.phisteps), phistep=-1.0)
    if spec.misset is not None:
        kw.update(misset_mode=1, misset=tuple(spec.misset))
    if spec.cell is not None:
        if not all(0.0 < c < math.inf for c in spec.cell):
            raise ConfigError("shot %d: --jitter-cell gave an impossible cell (a, b, c = %s A)"
                              % (spec.index, ", ".join("%.4g" % c for c in spec.cell)))
        kw.update(cell_a=spec.cell[0], cell_b=spec.cell[1], cell_c=spec.cell[2])
    if spec.N is not None:
        if min(spec.N) < 1.0:
            raise ConfigError("shot %d: --jitter-N gave fewer than one unit cell (N = %s)"
                              % (spec.index, ", ".join("%g" % n for n in spec.N)))
        if max(spec.N) > INT_MAX:
            raise ConfigError("shot %d: --jitter-N gave more unit cells than -N can hold "
                              "(N = %s, at most %d)"
                              % (spec.index, ", ".join("%g" % n for n in spec.N), INT_MAX))
        # the shot renders these counts, whether the flags gave -N or a crystal
        # size (-xtal_size / -sample_*), which would otherwise win over them
        kw.update(Na=spec.N[0], Nb=spec.N[1], Nc=spec.N[2],
                  sample_x=0.0, sample_y=0.0, sample_z=0.0)
    return replace(cfg, **kw)


def _pilot_spec(cfg, specs: Sequence["FrameSpec"]) -> "FrameSpec":
    """The first frame whose parameters are possible (frame_config accepts them);
    the first frame when none is (its error is then the run's)."""
    probe = Job(out_dir="", formats=(), prefix="", threads=None, device=cfg.device)
    for spec in specs:
        try:
            frame_config(cfg, spec, probe)
        except ConfigError:
            continue
        return spec
    return specs[0]


def _pilot_scale(cfg, spec: "FrameSpec"):
    """(cfg with intfile_scale fixed, the line saying so): the scale nanoBragg would
    pick for the first frame (max pixel -> 55000), rendered here as a pilot.  The
    pilot has no noise, so it is the same on every run and on --resume."""
    from .api import in_chunks, simulate
    pilot = Job(out_dir="", formats=(), prefix="", threads=None, device=cfg.device)
    scale = float(simulate(frame_config(cfg, spec, pilot), progress=in_chunks).stats["intfile_scale"])
    note = ("%s: -nonoise: every frame uses the int-image scale of frame %d, %s "
            "(from a pilot render; -scale S sets it)" % (PROG, spec.number, "%g" % scale))
    return replace(cfg, intfile_scale=scale), note


def _stat_value(v):
    v = float(v)
    return v if math.isfinite(v) else None


def render_frame(cfg, spec: FrameSpec, job: Job) -> dict:
    """Dask task: render one frame, write every requested format atomically, as
    one set (all of the frame's files or none).

    Returns a manifest record.  Deterministic errors (nbnumba's NBError family:
    impossible parameters, unwritable files) come back as a ``failed`` record
    so they are not retried; anything else raises and Dask retries the task.
    """
    t0 = time.perf_counter()
    base = {"frame": spec.index, "image_number": spec.number, "params": spec.params(),
            "host": socket.gethostname(), "pid": os.getpid()}
    try:
        if spec.index in job.test_fail_frames:
            raise ConfigError("injected failure for frame %d (test hook)" % spec.index)
        if job.test_delay > 0:
            time.sleep(job.test_delay)
        from .api import in_chunks, simulate
        from .io import cbf as cbf_fmt
        from .io import nexus as nexus_fmt
        from .io import smv as smv_fmt
        fcfg = frame_config(cfg, spec, job)
        res = simulate(fcfg, progress=in_chunks)     # (a signal stops it within a row chunk)
        noise = res.noise_image is not None
        image = res.noise_image if noise else res.int_image
        geom = FrameGeometry.from_result(res)
        info = FrameInfo(index=spec.index, number=spec.number, phi_start=spec.phi_deg,
                         phi_range=spec.osc_deg, exposure=float(fcfg.exposure), noise=noise,
                         pedestal=float(fcfg.adc_offset))
        names = [frame_filename(job.prefix, spec.number, fmt) for fmt in job.formats]
        # a frame's formats are one set, all or nothing (as the CLI's outputs): a
        # failed .h5 left the frame's .cbf behind, a complete file of a frame
        # the manifest calls failed
        with output_set():
            for fmt, name in zip(job.formats, names):
                path = os.path.join(job.out_dir, name)
                if fmt == "smv":
                    smv_fmt.write_frame(path, res, image, noise, job.header_overflow,
                                        seconds_after_epoch=spec.index * max(float(fcfg.exposure), 0.0))
                elif fmt == "cbf":
                    # (the pixels outside -roi / -mask hold -1, not minus the pedestal)
                    cbf_fmt.write_frame(path, image, geom, info, excluded=res.model.active == 0)
                elif fmt == "nexus":
                    nexus_fmt.write_frame(path, image, info)
                else:  # pragma: no cover - parse_formats prevents this
                    raise ConfigError("unknown format %s" % fmt)
        files = {}
        for name in names:
            path = os.path.join(job.out_dir, name)
            try:
                files[name] = sha256_file(path)
            except OSError as exc:
                raise OutputFileError("cannot read back '%s': %s" % (path, exc.strerror or exc)) from exc
        st = res.stats
        stats = {k: _stat_value(st[k]) for k in ("max_I", "mean", "rms", "intfile_scale",
                                                  "photons", "overloads") if k in st}
        base.update(type="frame", noise=noise, files=files, stats=stats,
                    seconds=round(time.perf_counter() - t0, 6))
        return base
    except NBError as exc:
        base.update(type="failed", error="%s: %s" % (type(exc).__name__, exc),
                    seconds=round(time.perf_counter() - t0, 6))
        return base


def _failed_record(spec: FrameSpec, exc: BaseException) -> dict:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"type": "failed", "frame": spec.index, "image_number": spec.number,
            "params": spec.params(), "error": "%s: %s" % (type(exc).__name__, msg)}


# ---------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------

class Manifest:
    """Append-only JSON-lines log; every line is flushed and fsync'ed."""

    def __init__(self, path: str):
        self.path = path
        self._fd = None

    @staticmethod
    def read(path: str) -> List[dict]:
        """All complete, parseable lines (a torn last line is ignored)."""
        out = []
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise InputFileError("cannot read the manifest '%s': %s"
                                 % (path, exc.strerror or exc)) from None
        if not stat.S_ISREG(st.st_mode):
            # a directory (IsADirectoryError) or a FIFO (open() would wait for a writer)
            raise InputFileError("the manifest '%s' is not a regular file; remove it or choose "
                                 "another --out" % path)
        offset = 0
        try:
            with open(path, "rb") as fh:
                for raw in fh:
                    try:
                        # every line this command writes is ASCII JSON (json.dumps
                        # escapes the rest): bytes that are not UTF-8 are not ours
                        line = raw.decode("utf-8").strip()
                    except UnicodeDecodeError as exc:
                        raise InputFileError(
                            "the manifest '%s' is not a manifest of %s (byte %d is not UTF-8 "
                            "text); remove it or choose another --out"
                            % (path, PROG, offset + exc.start)) from None
                    offset += len(raw)
                    if not line:
                        continue
                    try:
                        rec = json.loads(line)
                    except (ValueError, RecursionError):    # a torn last line, or not ours
                        continue
                    if isinstance(rec, dict):
                        out.append(rec)
        except OSError as exc:
            raise InputFileError("cannot read the manifest '%s': %s"
                                 % (path, exc.strerror or exc)) from None
        return out

    def open(self, truncate: bool = False) -> None:
        # unbuffered appends on a descriptor (os.write): a failed append is cut
        # off again (_write), and nothing is left in a buffer for close() to
        # write (a full disk left a torn line, then an OSError traceback from
        # the buffered file's close)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        try:
            needs_newline = False
            if not truncate and os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                with open(self.path, "rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise OutputFileError("cannot write '%s': %s" % (self.path, exc.strerror or exc)) from None
        if needs_newline:       # (a torn last line of an earlier run's crash: ended)
            self._write(b"\n")

    def _write(self, data: bytes) -> None:
        """Append ``data`` and fsync; on a failure (a full disk, a quota) the
        file is cut back to its length before, so no torn line stays for the
        next append to run into (the reader would drop that record)."""
        start = None
        try:
            start = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError as exc:
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
            raise OutputFileError("cannot write '%s': %s" % (self.path, exc.strerror or exc)) from None

    def append(self, rec: dict) -> None:
        self._write((json.dumps(rec, sort_keys=True) + "\n").encode("ascii"))

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:     # (every line was fsync'ed as it was written)
                pass


def _run_header(opts: SeriesOptions, base_seed: int) -> dict:
    return {"type": "run", "version": MANIFEST_VERSION, "mode": opts.mode, "count": opts.count,
            "base_seed": base_seed, "engine_argv": list(opts.engine_argv),
            "series": {"osc_per_frame": opts.osc_per_frame,
                       "phisteps_per_frame": opts.phisteps_per_frame,
                       "random_orientation": opts.random_orientation,
                       "jitter_cell": opts.jitter_cell, "jitter_N": opts.jitter_N,
                       "prefix": opts.prefix}}


def _input_digests(paths: Sequence[str]) -> List[Optional[str]]:
    """sha256 of each input file (None: unreadable here; the render reports it)."""
    out: List[Optional[str]] = []
    for p in paths:
        try:
            out.append(sha256_file(p))
        except OSError:
            out.append(None)
    return out


def _same_run(old: dict, new: dict) -> Optional[str]:
    for key in ("mode", "count", "engine_argv", "series"):
        if old.get(key) != new.get(key):
            return key
    return None


def _clean_temp_files(out_dir: str, prefix: str) -> None:
    """Remove temporary files left by writers that were killed mid-write."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return
    for name in names:
        if name.endswith(".tmp") and (name.startswith(".%s_" % prefix)
                                      or name.startswith(".%s." % MASTER)):
            try:
                os.unlink(os.path.join(out_dir, name))
            except OSError:
                pass


class _DirLock:
    """flock held on the directory itself (no lock file is left in DIR)."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self):
        self.release()


def _lock_out_dir(out_dir: str) -> _DirLock:
    """An exclusive lock on DIR (flock on the directory), or NBError when another run holds it."""
    import fcntl
    try:
        fd = os.open(out_dir, os.O_RDONLY)
    except OSError as exc:
        raise OutputFileError("cannot open '%s': %s" % (out_dir, exc.strerror or exc)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise NBError("another %s run is writing to '%s'; wait for it to finish"
                          % (PROG, out_dir)) from None
        # a file system without flock (ENOLCK on some NFS mounts, EOPNOTSUPP):
        # every run was refused as "another run is writing"; run unlocked
        print("%s: warning: cannot lock '%s' on this file system (%s): make sure no other run "
              "writes to it" % (PROG, out_dir, exc.strerror or exc), file=sys.stderr)
        return _DirLock(None)
    # the folder locked must still be DIR: a run that gave up removes the empty
    # folder it created (holding the lock), and one that opened it just before
    # that would lock a removed folder and fail on its manifest
    try:
        st, cur = os.fstat(fd), os.stat(out_dir)
        same = (st.st_dev, st.st_ino) == (cur.st_dev, cur.st_ino)
    except OSError:
        same = False
    if not same:
        os.close(fd)
        raise NBError("another %s run removed '%s' while this one started; run again"
                      % (PROG, out_dir))
    return _DirLock(fd)


def _check_outputs_not_inputs(cfg, opts, specs, out_dir: str) -> None:
    """Refuse up front a frame, master or manifest file that is an input of the run
    (e.g. -hkl x_00001.img with --prefix x would be overwritten by frame 1)."""
    from .outputs import input_files
    inputs = [os.path.abspath(p) for p in input_files(cfg)]
    if not inputs:
        return
    ids = {}
    for p in inputs:
        ids[os.path.normcase(os.path.realpath(p))] = p
        try:
            st = os.stat(p)
            ids[(st.st_dev, st.st_ino)] = p
        except OSError:
            pass
    names = [MANIFEST, MASTER] + [frame_filename(opts.prefix, s.number, f)
                                  for s in specs for f in opts.formats]
    for name in names:
        path = os.path.join(out_dir, name)
        hit = ids.get(os.path.normcase(os.path.realpath(path)))
        if hit is None and os.path.exists(path):
            st = os.stat(path)
            hit = ids.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise OutputFileError("refusing to write '%s': it is also an input file of this run "
                                  "('%s')" % (path, hit))


def _previous_outputs(out_dir: str, records: List[dict]) -> List[str]:
    """The files an earlier run recorded in its manifest (frames of every format,
    the master file): only plain names, inside DIR, that are regular files."""
    out: List[str] = []
    seen = set()
    for name in _previous_names(records):
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            continue
        p = os.path.join(out_dir, name)
        if p not in seen and os.path.isfile(p) and not os.path.islink(p):
            seen.add(p)
            out.append(p)
    return out


def _old_prefix(records: List[dict]) -> Optional[str]:
    """The --prefix of the earlier run's header, when it is one this command accepts."""
    header = next((r for r in records if r.get("type") == "run"), None)
    series_opts = header.get("series") if header is not None else None
    prefix = series_opts.get("prefix") if isinstance(series_opts, dict) else None
    if (not isinstance(prefix, str) or not prefix or os.sep in prefix or prefix.startswith(".")
            or "\0" in prefix):
        return None
    return prefix


def _previous_names(records: List[dict]):
    """File names of the earlier run: those its manifest records, then every frame
    name of its header's prefix and count in every format.  A frame written but
    not recorded (the run was killed between the rename and the manifest line, or
    a Dask worker finished it while the client was being interrupted) is a file of
    that run too: --overwrite with fewer frames left it next to the new set."""
    for rec in records:
        files = rec.get("files")
        if isinstance(files, dict):
            yield from files
    header = next((r for r in records if r.get("type") == "run"), None)
    prefix = _old_prefix(records)
    count = header.get("count") if header is not None else None
    if prefix is None or isinstance(count, bool) or not isinstance(count, int):
        return
    for number in range(1, min(count, MAX_FRAMES) + 1):
        for fmt in FORMATS:
            yield frame_filename(prefix, number, fmt)
    yield MASTER


def _check_removals_not_inputs(out_dir: str, records: List[dict], inputs: Sequence[str]) -> None:
    """OutputFileError, before anything is removed, when --overwrite would delete an
    input of this run (``--overwrite --prefix b -mask DIR/frame_00001.img`` deleted
    the mask the new frames were being rendered with)."""
    inputs = [os.path.abspath(p) for p in inputs]
    for p in _previous_outputs(out_dir, records):
        for q in inputs:
            if same_file(p, q):
                raise OutputFileError("--overwrite: refusing to remove '%s' (a file of the earlier "
                                      "run): it is an input file of this run ('%s')" % (p, q))


def _check_overwrite_rights(out_dir: str, mpath: str, records: List[dict],
                            targets: Sequence[str]) -> None:
    """OutputFileError, before --overwrite removes anything, when the run could not
    go on after the removal: as another user in a shared DIR (mode 777) the earlier
    run's frames were deleted, then the manifest could not be written (root's, 0644),
    and that manifest still listed the deleted frames.  Checked here: the manifest
    can be opened as Manifest.open opens it (the same open, without O_TRUNC, on the
    existing file), DIR can be written in, and each file to be removed (the earlier
    run's) or replaced (``targets``, this run's files that exist) is one this user
    may write (atomic.py's rule: fopen refuses it) and may unlink or rename over
    (a sticky DIR, mode 1777: only the file's or DIR's owner, or root): the rule
    of ``io.atomic.replace_refusal``."""
    try:
        fd = os.open(mpath, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputFileError("--overwrite: cannot write '%s': %s; nothing was removed"
                              % (mpath, exc.strerror or exc)) from None
    os.close(fd)
    try:
        os.stat(out_dir)
    except OSError as exc:
        raise OutputFileError("--overwrite: cannot write in '%s': %s; nothing was removed"
                              % (out_dir, exc.strerror or exc)) from None
    if not may_access(out_dir, os.W_OK | os.X_OK):
        raise OutputFileError("--overwrite: cannot write in '%s': Permission denied; nothing "
                              "was removed" % out_dir)
    removals = _previous_outputs(out_dir, records)
    removed = set(removals)
    for p in removals + [t for t in dict.fromkeys(targets) if t not in removed]:
        why = replace_refusal(p)
        if why:
            raise OutputFileError("--overwrite: cannot %s '%s': %s; nothing was removed"
                                  % ("remove" if p in removed else "replace", p, why))


def _remove_previous_outputs(out_dir: str, records: List[dict]) -> None:
    """--overwrite: delete the files an earlier run recorded in its manifest (frames of
    every format, the master file) so no stale frame survives next to the new set.
    Only plain names recorded in the manifest, inside DIR, are touched (none of them
    an input of this run: _setup_run checked that, _check_removals_not_inputs)."""
    for p in _previous_outputs(out_dir, records):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputFileError("--overwrite: cannot remove '%s': %s"
                                  % (p, exc.strerror or exc)) from None
    prefix = _old_prefix(records)
    if prefix is not None:
        _clean_temp_files(out_dir, prefix)     # temporaries of writers killed mid-write


# ---------------------------------------------------------------------------
# execution back ends
# ---------------------------------------------------------------------------

def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _run_inprocess(cfg, specs, job, handle: Callable[[dict], bool]) -> bool:
    import numba
    prev = numba.get_num_threads()
    try:
        for spec in specs:
            try:
                rec = render_frame(cfg, spec, job)
            except Exception as exc:   # non-NBError: report, like an exhausted retry
                rec = _failed_record(spec, exc)
            if handle(rec):
                return True
        return False
    finally:
        numba.set_num_threads(prev)


def _connect(opts: SeriesOptions):
    from .extras import require
    dist = require("distributed", "running frames on Dask (--workers N or --scheduler)")
    Client, LocalCluster = dist.Client, dist.LocalCluster
    if opts.scheduler:
        try:
            return Client(opts.scheduler, timeout="30s"), None
        except Exception as exc:      # OSError, TimeoutError, ValueError (bad address), ...
            raise NBError("cannot connect to the Dask scheduler at %s: %s" % (opts.scheduler, exc)) from None
    n = opts.workers if opts.workers is not None else default_workers()
    cluster = client = None
    try:
        _start_resource_tracker()
        with _signals_held():
            try:
                with warnings.catch_warnings():
                    # no dashboard; the scheduler's small HTTP endpoint still binds to
                    # 127.0.0.1 and moves to a free port when 8787 is taken (another
                    # cluster): that is fine, say nothing
                    warnings.filterwarnings("ignore", message=r"Port \d+ is already in use",
                                            category=UserWarning)
                    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None,
                                           silence_logs=logging.CRITICAL,
                                           preload=[_WORKER_PRELOAD])
                    client = Client(cluster)
            except Exception as exc:    # RuntimeError: Nanny failed to start, ...
                _close_conn((client, cluster))
                msg = str(exc).strip().splitlines()
                raise NBError("cannot start a local Dask cluster of %d worker%s: %s"
                              % (n, "" if n == 1 else "s", msg[0] if msg else type(exc).__name__)
                              ) from None
        return client, cluster
    except BaseException:   # a Ctrl-C or SIGTERM held back while the cluster started
        _close_conn((client, cluster))
        raise


#: run by each local worker process as it starts (distributed's preload: the text
#: of a module): the worker ignores SIGINT, see _signals_held
_WORKER_PRELOAD = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)  "
                   "# nbnumba-series: Ctrl-C is for the client, which closes the cluster")


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker now, in this thread: started by
    the cluster's event loop instead, its start unblocks SIGINT and SIGTERM in
    that thread (CPython's ensure_running blocks them around the spawn, then
    unblocks them whatever the mask was), and the workers that thread spawns
    would take Ctrl-C again (_signals_held)."""
    try:
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()
    except Exception:       # no tracker (another platform): nothing to unblock
        pass


@contextlib.contextmanager
def _signals_held():
    """SIGINT blocked in this thread, SIGTERM deferred, while the local cluster
    starts.

    A Ctrl-C reaches the whole process group: each worker process raised
    KeyboardInterrupt in its event loop and printed ~30 lines of tracebacks,
    while this process, which handles the interrupt, shuts the cluster down
    anyway.  So the workers do not take SIGINT: their preload ignores it
    (_WORKER_PRELOAD, also for a worker the nanny restarts), and before it
    runs the block keeps it away from them: the threads the cluster starts
    meanwhile (its event loop, which spawns the worker processes) inherit the
    blocked signal, and so do the processes (a signal mask survives fork and
    exec).  A Ctrl-C here is not lost: this process takes it in a thread that
    does not block it or when the block is lifted, as a KeyboardInterrupt.

    SIGTERM (the CLI's Terminated) raised inside LocalCluster() left a cluster
    this process could not close (an AssertionError traceback at exit from
    distributed's atexit hook); it is handled once the cluster exists.  Its
    workers keep the default SIGTERM (a Python handler does not survive exec):
    the nanny stops a worker that hangs with it.
    """
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deferred: List[int] = []
    try:
        old_term = signal.signal(signal.SIGTERM, lambda signum, frame: deferred.append(signum))
        term_set = True
    except (ValueError, OSError):
        term_set = False
    old_mask = None
    if hasattr(signal, "pthread_sigmask"):
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        try:
            if term_set:
                signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
        finally:
            if old_mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)   # a held Ctrl-C arrives
        if deferred:
            signal.raise_signal(signal.SIGTERM)


def _warm_worker(threads: Optional[int]) -> int:
    """Import the engine and load its compiled kernels (numba's on-disk cache) in a
    worker before the first frame, so frame timings are steady-state."""
    import numba
    from .api import simulate
    from .flags import parse_argv
    prev = numba.get_num_threads()
    cfg = parse_argv(["-cell", "10", "10", "10", "90", "90", "90", "-default_F", "1", "-N", "2",
                      "-detpixels", "2", "-seed", "1", "-nopgm"])
    simulate(replace(cfg, threads=threads, noprogress=True, progress_meter=False))
    numba.set_num_threads(prev)
    return os.getpid()


def _run_dask(cfg, specs, job, opts, handle: Callable[[dict], bool], timing: dict, conn=None) -> bool:
    from distributed import as_completed
    conn = conn if conn is not None else _connect(opts)
    client = conn[0]
    try:
        try:
            client.run(_warm_worker, job.threads)
        except Exception:       # a worker that cannot warm up will report on its first frame
            pass
        timing["ready"] = time.perf_counter()
        token = uuid.uuid4().hex[:12]
        futures = {}
        for spec in specs:
            fut = client.submit(render_frame, cfg, spec, job, key="nbnumba-series-%s-%06d" % (token, spec.index),
                                retries=opts.retries, pure=False)
            futures[fut] = spec
        stopped = False
        ac = as_completed(list(futures))
        for fut in ac:
            spec = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:
                rec = _failed_record(spec, exc)
            if handle(rec):
                stopped = True
                break
        if stopped:
            client.cancel([f for f in futures if not f.done()])
        return stopped
    finally:
        _close_conn(conn)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------

def _err(msg: str) -> None:
    print("%s: error: %s" % (PROG, msg), file=sys.stderr)


def _working_directory(local_workers: bool) -> str:
    """The working directory's absolute name, which the workers resolve relative
    inputs in; NBError when ``local_workers`` could not start in it.
    multiprocessing starts each local worker with a chdir to this name, and the
    kernel refuses one longer than PATH_MAX (or below a folder it may not search):
    each worker died with a traceback, then "Nanny failed to start".  (In this
    process, a relative input or --out in such a folder is one line already; the
    CLI writes there.)"""
    cwd = os.getcwd()       # (a removed one: main() said so already)
    if local_workers:
        try:
            os.stat(cwd)
        except OSError as exc:
            raise NBError("local workers cannot start in the working directory, whose absolute "
                          "name (%d bytes) cannot be used: %s; run from a shallower folder, "
                          "or use --workers 0" % (len(os.fsencode(cwd)), exc.strerror or exc)
                          ) from None
    return cwd


def run_series(opts: SeriesOptions) -> int:
    """Render the series ``opts`` describes (``parse_series_argv``'s result)
    into ``opts.out``: frames, manifest.jsonl, notes.txt and any NeXus master.
    Returns the exit status (0 every frame done, 1 some failed, 3 stopped by
    ``--max-frames``, to be continued with ``--resume``); raises NBError (one line) for a setup error, before
    any frame.  ``main`` is the command line around it."""
    from . import flags
    from .model import build_model

    t_start = time.perf_counter()
    # optional libraries first: a missing extra is one line before any frame is rendered
    from .extras import require
    for fmt, module in (("cbf", "fabio"), ("nexus", "h5py")):
        if fmt in opts.formats:
            require(module, "--format %s" % fmt)
    cfg = flags.parse_argv(list(opts.engine_argv))
    _check_engine_flags(opts, cfg)
    cwd = _working_directory(local_workers=not opts.scheduler and opts.workers != 0)
    if cfg.workdir is None:
        cfg = replace(cfg, workdir=cwd)    # workers resolve relative inputs here
    # the whole setup once, before anything is created: ConfigError/InputFileError -> exit 2
    base_model = build_model(replace(cfg, seed=cfg.seed if cfg.seed is not None else -1,
                                     threads=None))
    # the unit-cell counts the image uses (-N, or derived from -xtal_size / -sample_*):
    # what --jitter-N scales
    base_N = (base_model.crystal.Na, base_model.crystal.Nb, base_model.crystal.Nc)
    # the pixels the frames render (-roi and -mask): the others are flagged in
    # the NeXus master's pixel_mask
    active = np.array(base_model.active) if "nexus" in opts.formats else None
    del base_model
    _check_rotation_finite(cfg, opts)
    if (opts.device or cfg.device) == "cuda" and not opts.scheduler:
        # local workers share this machine's GPUs: refuse once, before DIR exists
        from .kernels.gpu import require_device
        require_device()
    out_dir = os.path.abspath(opts.out)
    created = missing_dirs(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise OutputFileError("cannot create output directory '%s': %s"
                              % (out_dir, exc.strerror or exc)) from None
    if not os.path.isdir(out_dir):
        raise OutputFileError("cannot create output directory '%s': not a directory" % out_dir)
    why = folder_refusal(out_dir)
    if why:
        # each frame would render, then fail at its rename (temporaries left)
        raise OutputFileError("cannot write the frames: %s" % why)
    conn = dir_lock = None
    try:
        # one run per directory: a second --resume must not render the same frames
        # (released when this function returns)
        dir_lock = _lock_out_dir(out_dir)
        setup = _setup_run(cfg, opts, out_dir, base_N)
        setup["active"] = active
        cfg = setup["cfg"]
        if setup["todo"] and not setup["in_process"]:
            conn = _connect(opts)       # a bad scheduler fails before the manifest is touched
        if opts.overwrite and setup["header"] is not None:
            _remove_previous_outputs(out_dir, setup["records"])
        manifest = Manifest(setup["mpath"])
        manifest.open(truncate=not setup["resuming"])
    except BaseException:
        # a setup error or Ctrl-C before the manifest exists: no cluster left
        # running, and no empty DIR left behind by this run
        _close_conn(conn)
        if dir_lock is not None:
            # only the run that holds DIR's lock removes the folders it created:
            # a run that lost the lock to another one (both found DIR missing and
            # created it) removed DIR under the winner, whose manifest then could
            # not be written; removed before the lock is released, so no run can
            # lock the folder in between
            remove_empty_dirs(created)
            dir_lock.release()
        raise
    try:
        if not setup["resuming"]:
            manifest.append(setup["new_header"])
    except BaseException:
        _close_conn(conn)
        manifest.close()
        dir_lock.release()
        raise
    try:
        return _render_all(cfg, opts, setup, manifest, conn, t_start)   # closes conn
    finally:
        manifest.close()
        dir_lock.release()


def _close_conn(conn) -> None:
    """Close a (client, cluster) pair; either may be None (a remote scheduler has no
    cluster of ours)."""
    if conn is None:
        return
    for part in conn:
        if part is not None:
            try:
                part.close()
            except Exception:
                pass


def _setup_run(cfg, opts: SeriesOptions, out_dir: str, base_N) -> dict:
    """Everything between the directory lock and the manifest: the earlier run,
    the base seed, the plan, the checks, the pilot scale, what is already done."""
    from .outputs import input_files
    # ---- manifest and base seed -------------------------------------------------
    mpath = os.path.join(out_dir, MANIFEST)
    records = Manifest.read(mpath)
    header = next((r for r in records if r.get("type") == "run"), None)
    if header is not None and not (opts.resume or opts.overwrite):
        raise NBError("'%s' holds an earlier run; use --resume to continue it or --overwrite "
                      "to start over" % mpath)
    if header is not None and "base_seed" in header:
        # a hand-edited seed (1e30, true) failed every frame with an OverflowError,
        # or was read as 1; this command writes a C int
        seed = header["base_seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 1 <= seed <= INT_MAX:
            raise NBError("'%s': base_seed %s is not a seed this command writes (an integer "
                          "from 1 to %d)" % (mpath, json.dumps(seed), INT_MAX))
    if cfg.seed is not None:
        base_seed = -int(cfg.seed)
    elif opts.resume and header is not None and isinstance(header.get("base_seed"), int):
        base_seed = int(header["base_seed"])
    else:
        base_seed = int(time.time())
    new_header = _run_header(opts, base_seed)
    # the contents of the input files (-hkl, -mat, -mask, ...): the same flags with
    # an edited -hkl gave a resumed series of frames rendered from two inputs
    new_header["inputs_sha256"] = _input_digests(input_files(cfg))
    resuming = opts.resume and header is not None
    if resuming and header.get("version") != MANIFEST_VERSION:
        # another layout of the records: what --resume reads from them (the frames
        # done, their files' digests) may not mean what this version reads
        raise NBError("--resume: '%s' is manifest version %s; this nbnumba-series reads "
                      "version %d (use --overwrite to start over)"
                      % (mpath, json.dumps(header.get("version")), MANIFEST_VERSION))
    if resuming:
        key = _same_run(header, new_header)
        if key is None and header.get("base_seed") != base_seed:
            key = "base_seed"
        if (key is None and "inputs_sha256" in header
                and header.get("inputs_sha256") != new_header["inputs_sha256"]):
            raise NBError("--resume: an input file of '%s' has changed since that run started "
                          "(its frames would mix both versions); use --overwrite to start over"
                          % mpath)
        if key is not None:
            raise NBError("--resume: '%s' was written by a different command (%s differs)"
                          % (mpath, key.replace("_", " ")))

    # ---- the base configuration: pinned misset seed, validated once --------------
    if cfg.misset_seed is None:
        cfg = replace(cfg, misset_seed=-base_seed)
    specs = plan_frames(cfg, opts, base_seed, base_N=base_N)
    _check_outputs_not_inputs(cfg, opts, specs, out_dir)
    if opts.overwrite and header is not None:
        # before anything is removed (or rendered): --overwrite deletes the earlier
        # run's files, and one of them may be an input of this run (-mask frame_00001.img)
        _check_removals_not_inputs(out_dir, records, input_files(cfg))
        # and that the run can go on once they are removed (the manifest, DIR, each file)
        targets = [os.path.join(out_dir, frame_filename(opts.prefix, s.number, f))
                   for s in specs for f in opts.formats]
        if "nexus" in opts.formats:
            targets.append(os.path.join(out_dir, MASTER))
        _check_overwrite_rights(out_dir, mpath, records, targets)
    device = opts.device or cfg.device
    if not cfg.calculate_noise and not cfg.intfile_scale > 0:
        # -nonoise: nanoBragg scales each image by its own maximum, which would give
        # every frame a different scale; the series uses the scale of frame 1 for all
        # (of the first shot that can be rendered: a serial shot whose jittered cell
        # or N is impossible fails alone, and used to fail the whole run here)
        cfg, pilot_note = _pilot_scale(cfg, _pilot_spec(cfg, specs))
        print(pilot_note, flush=True)
    in_process = opts.workers == 0 and not opts.scheduler
    if cfg.threads:
        threads = int(cfg.threads)
    else:   # one thread per Dask worker; in-process renders use every core
        threads = None if in_process else 1
    job = Job(out_dir=out_dir, formats=tuple(opts.formats), prefix=opts.prefix,
              threads=threads, device=device,
              header_overflow="c" if cfg.c_parity else "grow", test_delay=opts.test_delay,
              test_fail_frames=opts.test_fail_frames)

    # ---- what is already done ---------------------------------------------------------
    done_records: Dict[int, dict] = {}
    if resuming:
        _clean_temp_files(out_dir, opts.prefix)
        latest: Dict[int, dict] = {}
        for r in records:
            if r.get("type") in ("frame", "failed") and isinstance(r.get("frame"), int):
                latest[r["frame"]] = r
        for spec in specs:
            r = latest.get(spec.index)
            if r is None or r.get("type") != "frame":
                continue
            want = [frame_filename(opts.prefix, spec.number, f) for f in opts.formats]
            files = r.get("files")
            files = files if isinstance(files, dict) else {}
            ok = True
            for name in want:
                p = os.path.join(out_dir, name)
                if name not in files or not os.path.isfile(p) or sha256_file(p) != files[name]:
                    ok = False
                    break
            if ok:
                done_records[spec.index] = r
    todo = [s for s in specs if s.index not in done_records]
    return dict(cfg=cfg, mpath=mpath, records=records, header=header, new_header=new_header,
                resuming=resuming, specs=specs, job=job, in_process=in_process,
                done_records=done_records, todo=todo)


def _render_all(cfg, opts: SeriesOptions, setup: dict, manifest: "Manifest", conn,
                t_start: float) -> int:
    specs, todo, job = setup["specs"], setup["todo"], setup["job"]
    done_records, mpath, in_process = setup["done_records"], setup["mpath"], setup["in_process"]
    out_dir = job.out_dir
    bar = None
    state = {"rendered": 0, "failed": []}
    finished: Dict[int, dict] = dict(done_records)

    def handle(rec: dict) -> bool:
        idx = rec.get("frame")
        if idx in finished:         # a duplicate completion must not be recorded twice
            return False
        rec["completed_at"] = round(time.time(), 3)
        manifest.append(rec)
        if rec.get("type") == "frame":
            finished[idx] = rec
            state["rendered"] += 1
        else:
            state["failed"].append(rec)
            nfail = len(state["failed"])
            msg = None
            if nfail <= MAX_FAILURE_LINES:
                msg = "frame %d failed: %s" % (idx, rec.get("error"))
            elif nfail == MAX_FAILURE_LINES + 1:
                msg = "more frames failed; every error is in %s" % mpath
            if msg is not None:
                if bar is not None:
                    bar.write("%s: %s" % (PROG, msg), file=sys.stderr)
                else:
                    print("%s: %s" % (PROG, msg), file=sys.stderr)
        if bar is not None:
            bar.update(1)
        return opts.max_frames is not None and state["rendered"] >= opts.max_frames

    timing = {"ready": time.perf_counter()}
    stopped = False
    master_note = ""
    try:
        try:
            # ---- progress -------------------------------------------------------------
            show = opts.progress if opts.progress is not None else sys.stderr.isatty()
            if show:
                from tqdm import tqdm
                bar = tqdm(total=len(specs), initial=len(done_records), unit="frame",
                           file=sys.stderr, dynamic_ncols=True, desc=PROG, smoothing=0.1)
            if todo:
                if in_process:
                    stopped = _run_inprocess(cfg, todo, job, handle)
                else:
                    owned, conn = conn, None        # _run_dask closes it
                    stopped = _run_dask(cfg, todo, job, opts, handle, timing, conn=owned)
        finally:
            _close_conn(conn)       # not handed to _run_dask (an interrupt before it)
            if bar is not None:
                bar.close()
        t_end = time.perf_counter()

        # ---- master file ---------------------------------------------------------------
        complete = not stopped and len(finished) == len(specs)
        if complete and "nexus" in opts.formats:
            _write_master(cfg, opts, specs, out_dir, manifest, setup["active"])
        elif "nexus" in opts.formats:
            master_note = "; %s not written (frames missing)" % MASTER
    finally:
        manifest.close()
    if complete:
        _clean_temp_files(out_dir, opts.prefix)

    n_rendered, n_failed = state["rendered"], len(state["failed"])
    busy = max(t_end - timing["ready"], 1e-9)
    rate = n_rendered / busy if n_rendered else 0.0
    startup = timing["ready"] - t_start
    print("%s: %d/%d frames done (%d rendered, %d skipped, %d failed) in %.2f s: "
          "%.2f frames/s (setup %.2f s)%s"
          % (PROG, len(finished), len(specs), n_rendered, len(done_records), n_failed,
             t_end - t_start, rate, startup, master_note))
    if stopped:
        print("%s: stopped after %d frames (--max-frames); continue with --resume"
              % (PROG, n_rendered), file=sys.stderr)
        return EXIT_STOPPED
    if n_failed:
        return EXIT_FAILED
    return EXIT_OK


def _write_master(cfg, opts, specs, out_dir, manifest: Manifest, active=None) -> None:
    """The NXmx master over the frame files; active: the rendered pixels (0 where
    -roi or -mask leaves a pixel out, which pixel_mask flags)."""
    from .io import nexus as nexus_fmt
    geom = FrameGeometry.from_config(cfg)
    # HDF5 reads a virtual dataset's source file name as a pattern: "%b" is the
    # block number and "%%" a literal "%" (H5Pset_virtual); --prefix '50%' pointed
    # the master at missing files (its data read as 0), 'x%b' raised in h5py
    names = [frame_filename(opts.prefix, s.number, "nexus").replace("%", "%%") for s in specs]
    extra = {}
    if any(s.misset is not None for s in specs):
        extra["misset_angles"] = (np.array([[m * RTD for m in (s.misset or (0.0, 0.0, 0.0))]
                                            for s in specs]), "deg")
    if any(s.cell is not None for s in specs):
        extra["unit_cell_abc"] = (np.array([s.cell or (cfg.cell_a, cfg.cell_b, cfg.cell_c)
                                            for s in specs]), "angstrom")
    if any(s.N is not None for s in specs):
        extra["crystal_cells_N"] = (np.array([s.N or (cfg.Na, cfg.Nb, cfg.Nc) for s in specs]), None)
    path = os.path.join(out_dir, MASTER)
    osc = specs[0].osc_deg if specs else 0.0
    nexus_fmt.write_master(path, names, geom, [s.phi_deg for s in specs], osc,
                           noise=bool(cfg.calculate_noise), extra_sample=extra or None,
                           pixel_mask=cfg.mask_image if active is None else active)
    manifest.append({"type": "master", "files": {MASTER: sha256_file(path)},
                     "frames": len(specs)})


def main(argv=None) -> int:
    """``nbnumba-series``: ``argv`` (default ``sys.argv[1:]``) as its command line;
    returns the exit status (0, 1 frames failed, 2 usage or setup error,
    3 stopped by --max-frames, 130/143 interrupted)."""
    if argv is None:            # a program: SIGTERM cleans up like Ctrl-C (temps, cluster)
        from .cli import _term_as_interrupt
        _term_as_interrupt()
    argv = main_args(argv, PROG)
    if argv is None:
        return EXIT_USAGE
    # a closed pipe ends the text, not the run; a full disk on stdout is one line
    with quiet_broken_pipes(stdout_error=OutputFileError):
        try:
            return _main(argv)
        except OutputFileError as exc:  # raised by a print outside _main's handlers
            _err(str(exc))
            return EXIT_USAGE


def _main(argv: List[str]) -> int:
    from .cli import Terminated
    if not argv:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    if argv == ["--version"]:
        from .extras import version_line
        print(version_line(PROG))
        return EXIT_OK
    try:
        opts = parse_series_argv(argv)
        if opts.help:           # --help, -h or -help as an option (not --prefix -h)
            print(USAGE)
            return EXIT_OK
        with warnings_as_lines(PROG):
            return run_series(opts)
    except HelpRequested as exc:      # the engine's help spellings it knows and we do not
        print(exc.text)
        return EXIT_OK
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except NBError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except MemoryError:
        _err("out of memory")
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("%s: interrupted; finished frames are in the manifest, continue with --resume"
              % PROG, file=sys.stderr)
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


__all__ = ["main", "run_series", "parse_series_argv", "plan_frames", "render_frame",
           "frame_config", "FrameSpec", "Job", "SeriesOptions", "Manifest", "random_rotation"]

if __name__ == "__main__":
    sys.exit(main())
