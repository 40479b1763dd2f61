"""Access to the golden corpus in ``golden/`` (reference images made by nanoBragg.c).

The corpus is described by ``golden/cases.yaml`` and produced by
``tools/make_golden.py`` through the DVC pipeline in ``dvc.yaml``:

* ``golden/inputs/``        synthetic input files (hkl, mat, SMV, sources, ...)
* ``golden/data/<case>/``   per-case reference outputs:
  ``float.bin`` (always), ``int.img``, ``noise.img``, ``image.pgm`` (when the
  case asks for them), ``stdout.txt`` (scrubbed C stdout), ``trace.log``
  (``TRACE_C`` lines of a ``-trace_pixel`` run, trace cases only) and
  ``meta.json``.

This module only reads; it never runs the C program.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "REPO_ROOT",
    "GOLDEN_DIR",
    "DEFAULT_TOLERANCES",
    "MODES",
    "Case",
    "load_cases",
    "get_case",
    "case_dir",
    "inputs_dir",
    "load_float",
    "load_smv",
    "load_pgm",
    "load_meta",
    "parse_c_stdout_stats",
    "compare_images",
    "stat_close",
    "lock_hashes",
    "lock_entries",
    "md5_of_file",
    "md5_of_dir",
    "output_files_for_args",
    "flag_tokens",
    "is_flag",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(os.environ.get("NB_GOLDEN_DIR", REPO_ROOT / "golden"))

MODES = ("default", "c_parity")

#: Tolerances applied to every case unless the case overrides them (with a reason).
DEFAULT_TOLERANCES: Dict[str, float] = {
    # Pearson correlation of the float images (float64 arithmetic)
    "float_corr_min": 0.99999,
    # max |port - C| over all pixels, relative to max |C|
    "float_max_abs_rel": 1.0e-5,
    # fraction of pixels of the SMV int image that must be identical
    "int_exact_frac_min": 0.999,
    # fraction of pixels of the noise image that must be identical
    "noise_exact_frac_min": 0.999,
    # relative agreement of the printed statistics (on top of %g print rounding)
    "stats_rel": 5.0e-6,
}

#: output flag -> canonical stored file name
_OUTPUT_FLAGS = {
    "-floatfile": "float.bin",
    "-floatimage": "float.bin",
    "-intfile": "int.img",
    "-intimage": "int.img",
    "-noisefile": "noise.img",
    "-noiseimage": "noise.img",
    "-pgmfile": "image.pgm",
    "-pgmimage": "image.pgm",
}


# --------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    args: Tuple[str, ...]
    families: Tuple[str, ...]
    mode: str
    tolerances: Mapping[str, float]
    trace_pixel: Optional[Tuple[int, int]] = None   # (slow, fast)
    inputs: Tuple[str, ...] = ()
    description: str = ""
    tolerance_reason: str = ""
    files: Tuple[str, ...] = field(default=())

    @property
    def c_parity(self) -> bool:
        return self.mode == "c_parity"

    def port_argv(self) -> List[str]:
        """Arguments for nbnumba: the C arguments plus ``-c_parity`` when needed."""
        return list(self.args) + (["-c_parity"] if self.c_parity else [])

    def output_name(self, kind: str) -> Optional[str]:
        """File name the case's args give for ``kind`` in float/int/noise/pgm."""
        flags = {
            "float": ("-floatfile", "-floatimage"),
            "int": ("-intfile", "-intimage"),
            "noise": ("-noisefile", "-noiseimage"),
            "pgm": ("-pgmfile", "-pgmimage"),
        }[kind]
        val = None
        for i, tok in enumerate(self.args[:-1]):
            if tok in flags:
                val = self.args[i + 1]
        return val


_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def is_flag(token: str) -> bool:
    """Is ``token`` an option name (``-word``, ``-4stol``), not a (negative) number?"""
    return token.startswith("-") and len(token) > 1 and not _NUMBER_RE.match(token)


def flag_tokens(args: Sequence[str]) -> List[str]:
    """Tokens of ``args`` that are option names (not negative numbers)."""
    return [t for t in args if is_flag(t)]


def output_files_for_args(args: Sequence[str]) -> List[str]:
    """Canonical stored data files a run with ``args`` produces (besides stdout/meta)."""
    toks = list(args)
    files = {"float.bin"}
    nonoise = "-nonoise" in toks
    nopgm = "-nopgm" in toks
    for i, tok in enumerate(toks[:-1]):
        name = _OUTPUT_FLAGS.get(tok)
        if name is None:
            continue
        if name == "noise.img" and nonoise:
            continue
        if name == "image.pgm" and nopgm:
            continue
        files.add(name)
    return sorted(files)


def _validate_case(raw: Mapping, defaults: Mapping[str, float]) -> Case:
    name = raw["name"]
    if not re.match(r"^[a-z0-9_]+$", name):
        raise ValueError("case name %r: use lower-case letters, digits, _" % name)
    args_raw = raw["args"]
    args = tuple(shlex.split(args_raw) if isinstance(args_raw, str) else map(str, args_raw))
    mode = raw.get("mode", "default")
    if mode not in MODES:
        raise ValueError("case %s: mode must be one of %s" % (name, MODES))
    tol = dict(defaults)
    override = raw.get("tolerances") or {}
    unknown = set(override) - set(DEFAULT_TOLERANCES)
    if unknown:
        raise ValueError("case %s: unknown tolerance keys %s" % (name, sorted(unknown)))
    reason = str(raw.get("tolerance_reason", "") or "")
    for key, val in override.items():
        looser = (val < tol[key]) if key.endswith("_min") else (val > tol[key])
        if looser and not reason.strip():
            raise ValueError("case %s: loosened tolerance %s needs a tolerance_reason" % (name, key))
        tol[key] = float(val)
    tp = raw.get("trace_pixel")
    trace = (int(tp[0]), int(tp[1])) if tp is not None else None
    # conventions every case must follow (see golden/README.md)
    toks = list(args)
    for req in ("-noprogress",):
        if req not in toks:
            raise ValueError("case %s: args must contain %s" % (name, req))
    if "-floatfile" not in toks and "-floatimage" not in toks:
        raise ValueError("case %s: args must write a -floatfile" % name)
    if "-trace_pixel" in toks or "-dump_pixel" in toks:
        raise ValueError("case %s: give the traced pixel as trace_pixel, not in args" % name)
    if "-nonoise" not in toks:
        if "-seed" not in toks:
            raise ValueError("case %s: noise is on, so args need -seed" % name)
        if not any(t in toks for t in ("-noisefile", "-noiseimage")):
            raise ValueError("case %s: noise is on, so args need -noisefile" % name)
    if "-nopgm" not in toks and not any(t in toks for t in ("-pgmfile", "-pgmimage")):
        raise ValueError("case %s: give -nopgm or an explicit -pgmfile" % name)
    for i, tok in enumerate(toks[:-1]):
        if tok in _OUTPUT_FLAGS and toks[i + 1] != _OUTPUT_FLAGS[tok]:
            raise ValueError("case %s: %s must be named %s" % (name, tok, _OUTPUT_FLAGS[tok]))
    if "-misset" in toks and toks[toks.index("-misset") + 1].startswith("rand") and "-misset_seed" not in toks:
        raise ValueError("case %s: -misset random needs -misset_seed" % name)
    files = output_files_for_args(args) + ["stdout.txt", "meta.json"]
    if trace is not None:
        files.append("trace.log")
    return Case(
        name=name,
        args=args,
        families=tuple(raw.get("families") or ()),
        mode=mode,
        tolerances=tol,
        trace_pixel=trace,
        inputs=tuple(raw.get("inputs") or ()),
        description=str(raw.get("description", "") or "").strip(),
        tolerance_reason=reason.strip(),
        files=tuple(sorted(files)),
    )


def load_cases(path: Optional[os.PathLike] = None) -> List[Case]:
    """Parse ``golden/cases.yaml`` into :class:`Case` objects (file order)."""
    import yaml

    path = Path(path) if path is not None else GOLDEN_DIR / "cases.yaml"
    with open(path) as fh:
        doc = yaml.safe_load(fh)
    defaults = dict(DEFAULT_TOLERANCES)
    defaults.update((doc.get("defaults") or {}).get("tolerances") or {})
    cases = [_validate_case(raw, defaults) for raw in doc["cases"]]
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError("duplicate case names: %s" % sorted(dup))
    return cases


def get_case(name: str) -> Case:
    for c in load_cases():
        if c.name == name:
            return c
    raise KeyError(name)


def case_dir(name: str) -> Path:
    return GOLDEN_DIR / "data" / name


def inputs_dir() -> Path:
    return GOLDEN_DIR / "inputs"


def load_meta(name: str) -> dict:
    with open(case_dir(name) / "meta.json") as fh:
        return json.load(fh)


def load_float(name: str) -> np.ndarray:
    """The case's reference float image, float32 of shape (spixels, fpixels)."""
    meta = load_meta(name)
    s, f = meta["shape"]
    data = np.fromfile(case_dir(name) / "float.bin", dtype="<f4")
    if data.size != s * f:
        raise ValueError("%s: float.bin has %d values, expected %d" % (name, data.size, s * f))
    return data.reshape(s, f)


# --------------------------------------------------------------------------
# file readers
# --------------------------------------------------------------------------
def load_smv(path: os.PathLike) -> Tuple[Dict[str, str], np.ndarray]:
    """Minimal SMV reader -> (header dict, uint16 array (SIZE2, SIZE1)).

    nanoBragg.c's header text (up to its closing "}\\f") can run past its own
    HEADER_BYTES=512 (docs/quirks.md #9); the pixels then start right after
    the text, as nanoBragg wrote them."""
    raw = Path(path).read_bytes()
    if not raw.startswith(b"{"):
        raise ValueError("%s: not an SMV file" % path)
    m = re.search(rb"HEADER_BYTES\s*=\s*(\d+)", raw[:1024])
    hsize = int(m.group(1)) if m else 512
    close = raw.find(b"}")
    text_end = close + (2 if raw[close + 1:close + 2] == b"\f" else 1) if close >= 0 else 0
    offset = max(hsize, text_end)
    text = raw[:offset].decode("ascii", "replace")
    header: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip().strip("{}\f ").strip()
        if "=" in line:
            key, val = line.split("=", 1)
            header[key.strip()] = val.strip().rstrip(";").strip()
    nf, ns = int(header["SIZE1"]), int(header["SIZE2"])
    order = header.get("BYTE_ORDER", "little_endian")
    dt = np.dtype("<u2") if order.startswith("little") else np.dtype(">u2")
    data = np.frombuffer(raw, dtype=dt, count=nf * ns, offset=offset)
    return header, data.astype(np.uint16).reshape(ns, nf)


def load_pgm(path: os.PathLike) -> Tuple[str, np.ndarray]:
    """Read nanoBragg's P5 PGM -> (comment line, uint8 array (height, width))."""
    raw = Path(path).read_bytes()
    lines = raw.split(b"\n", 4)
    if lines[0] != b"P5":
        raise ValueError("%s: not a P5 PGM" % path)
    w, h = (int(v) for v in lines[1].split())
    comment = lines[2].decode("ascii")
    body = lines[4] if len(lines) > 4 else b""
    return comment, np.frombuffer(body[: w * h], dtype=np.uint8).reshape(h, w)


# --------------------------------------------------------------------------
# stdout statistics
# --------------------------------------------------------------------------
_NUM = r"([-+]?(?:nan|inf|[0-9.]+(?:e[-+]?[0-9]+)?))"


def parse_c_stdout_stats(text: str) -> Dict[str, float]:
    """Statistics nanoBragg prints at the end of a run.

    Keys (present when the line is in ``text``): ``max_I``, ``max_I_x``,
    ``max_I_y`` (metres), ``mean``, ``rms``, ``rmsd``, ``intfile_scale``,
    ``pgm_scale``, ``photons``, ``overloads``.
    """
    out: Dict[str, float] = {}
    m = re.search(r"^max_I = %s\s+at %s %s" % (_NUM, _NUM, _NUM), text, re.M | re.I)
    if m:
        out["max_I"], out["max_I_x"], out["max_I_y"] = (float(v) for v in m.groups())
    m = re.search(r"^mean= %s rms= %s rmsd= %s" % (_NUM, _NUM, _NUM), text, re.M | re.I)
    if m:
        out["mean"], out["rms"], out["rmsd"] = (float(v) for v in m.groups())
    m = re.search(r"^intfile_scale = %s" % _NUM, text, re.M | re.I)
    if m:
        out["intfile_scale"] = float(m.group(1))
    m = re.search(r"^pgm_scale = %s" % _NUM, text, re.M | re.I)
    if m:
        out["pgm_scale"] = float(m.group(1))
    m = re.search(r"^%s photons on noise image \((\d+) overloads\)" % _NUM, text, re.M | re.I)
    if m:
        out["photons"] = float(m.group(1))
        out["overloads"] = int(m.group(2))
    return out


def _g_half_ulp(printed: float) -> float:
    """Half a unit in the 6th significant digit of a ``%g``-printed value."""
    if printed == 0 or not math.isfinite(printed):
        return 0.0
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(printed))) - 5)


def stat_close(c_printed: float, port_value: float, rel: float = 5e-6, abs_floor: float = 0.0) -> bool:
    """Is ``port_value`` consistent with the C's ``%g``-printed ``c_printed``?

    Allowed difference: ``rel * |c| + half a unit in the 6th significant digit``
    (the rounding of ``%g``) ``+ abs_floor``.
    """
    c = float(c_printed)
    p = float(port_value)
    if math.isnan(c) or math.isnan(p):
        return math.isnan(c) and math.isnan(p)
    return abs(p - c) <= rel * abs(c) + _g_half_ulp(c) + abs_floor


# --------------------------------------------------------------------------
# image comparison
# --------------------------------------------------------------------------
def compare_images(ref: np.ndarray, test: np.ndarray) -> Dict[str, object]:
    """Agreement metrics of ``test`` against the reference ``ref`` (same shape).

    Returns ``corr`` (Pearson, 1.0 for two identical constant images),
    ``max_abs`` (max |test-ref|), ``max_ref`` (max |ref|), ``rel_max``
    (max_abs / max_ref), ``worst_pixel`` ((slow, fast) of max_abs),
    ``worst_ref``/``worst_test`` (values there) and ``exact_frac``
    (fraction of identical pixels).
    """
    r = np.asarray(ref, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError("shape mismatch: ref %s vs test %s" % (r.shape, t.shape))
    diff = np.abs(t - r)
    if diff.size == 0:
        return dict(corr=1.0, max_abs=0.0, max_ref=0.0, rel_max=0.0, worst_pixel=(0, 0),
                    worst_ref=0.0, worst_test=0.0, exact_frac=1.0)
    bad = ~np.isfinite(diff)
    if bad.any():
        diff = np.where(bad, np.inf, diff)
    idx = np.unravel_index(int(np.argmax(diff)), r.shape)
    max_abs = float(diff[idx])
    max_ref = float(np.max(np.abs(r)))
    if max_ref > 0:
        rel_max = max_abs / max_ref
    else:
        rel_max = 0.0 if max_abs == 0 else math.inf
    rc = r.ravel() - r.mean()
    tc = t.ravel() - t.mean()
    den = math.sqrt(float(np.dot(rc, rc)) * float(np.dot(tc, tc)))
    if den > 0 and math.isfinite(den):
        corr = float(np.dot(rc, tc)) / den
    else:
        corr = 1.0 if np.array_equal(r, t) else 0.0
    return dict(
        corr=corr,
        max_abs=max_abs,
        max_ref=max_ref,
        rel_max=rel_max,
        worst_pixel=(int(idx[0]), int(idx[1])),
        worst_ref=float(r[idx]),
        worst_test=float(t[idx]),
        exact_frac=float(np.mean(r == t)),
    )


# --------------------------------------------------------------------------
# DVC lock file
# --------------------------------------------------------------------------
def md5_of_file(path: os.PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5_of_dir(path: os.PathLike) -> Tuple[str, int, int]:
    """DVC's hash of a directory -> (``"<md5>.dir"``, number of files, total bytes).

    DVC lists every file below the directory as ``{"md5": <file md5>,
    "relpath": <posix path>}``, sorts the list by relpath, serializes it with
    ``json.dumps(..., sort_keys=True)`` and takes the md5 of that text.
    """
    root = Path(path)
    entries = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            entries.append({"md5": md5_of_file(p), "relpath": rel})
            total += p.stat().st_size
    entries.sort(key=lambda e: e["relpath"])
    text = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(text).hexdigest() + ".dir", len(entries), total


def lock_entries(lock_path: Optional[os.PathLike] = None) -> Dict[str, Dict[str, Dict[str, object]]]:
    """``{stage: {"deps": {path: entry}, "outs": {path: entry}}}`` from dvc.lock."""
    import yaml

    lock_path = Path(lock_path) if lock_path is not None else REPO_ROOT / "dvc.lock"
    with open(lock_path) as fh:
        doc = yaml.safe_load(fh)
    out: Dict[str, Dict[str, Dict[str, object]]] = {}
    for stage, body in (doc.get("stages") or {}).items():
        out[stage] = {
            kind: {e["path"]: e for e in (body.get(kind) or [])}
            for kind in ("deps", "outs")
        }
    return out


def lock_hashes(lock_path: Optional[os.PathLike] = None, kind: str = "outs") -> Dict[str, str]:
    """``{path: md5}`` for every stage's ``outs`` (or ``deps``) in dvc.lock."""
    res: Dict[str, str] = {}
    for stage in lock_entries(lock_path).values():
        for path, entry in stage[kind].items():
            res[path] = str(entry["md5"])
    return res
