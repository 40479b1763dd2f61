"""nbnumba-probe: one-pixel parity investigation bundle (C trace vs port trace).

Usage::

    nbnumba-probe --pixel S F [--outdir reports] [--c-parity] [--c-bin PATH]
                  [--c-trace FILE] [--no-c] [--roi-radius R | --full-c]
                  [--tol 1e-6] [--sincg-steps 401] -- <nanoBragg flags>

Writes ``OUTDIR/<UTC stamp>/`` holding:

  trace_py_phi.log          the port's TRACE_PY / TRACE_PY_PHI lines for the pixel
  trace_c_phi.log           the C's TRACE_C / TRACE_C_PHI lines (when a C trace exists)
  c_stdout.txt              the whole stdout of the C trace run (when C was run)
  diff_trace.md             trace_diff report: first divergence, factors, per-φ table
  compare_scaling_traces.json  trace_diff's JSON (per-factor deltas, first divergence)
  sincg_sweep.md/.csv/.png  sincg precision sweep around the pixel's fractional index
  phistep1/                 the same pixel with -phisteps 1 -osc 0: both traces, both
                            float images over the ROI, notes.txt
  rotation_audit.md         a, b, c and a*, b*, c* per φ step (port) next to the C's values
  roi_metadata.json         pixel, ROI, detector geometry (model.det)
  env.json                  versions, GPU availability, git SHA, C binary checksum
  commands.txt              commands that reproduce every file
  summary.md                numbered report with an ATTRIBUTION section
  sha256.txt                sha256sum-compatible checksums of every other file

Where the C trace comes from: ``--c-trace FILE`` (a stored log), else the C
program (``--c-bin`` or ``$NB_C_BIN``) run in an empty scratch directory with
``-trace_pixel S F`` and ``OMP_NUM_THREADS=1``, else nowhere (port-only bundle).
``--no-c`` never runs the C program.

ROI: to keep big detectors fast, C and port both get ``-roi`` over a small box
(``--roi-radius``, default 4 pixels) around the traced pixel, unless the flags
already carry ``-roi`` or ``--full-c`` is given.  nanoBragg.c's φ=0 carry-over
state comes from the pixel rendered before the traced one, so a one-pixel ROI
would change the C trace (the pixel would see the unrotated cell).  With the
box, and a single thread, the pixel before the traced one is inside the box,
giving the same steady state as a full run (any pixel but the first).  The
probe checks this: it runs the C a second time with the ROI set to the traced
pixel's row up to the pixel and records whether the two C traces are identical
(roi_metadata.json ``roi_check``).

The port side never renders the full image: it calls
``nbnumba.model.build_model`` and ``nbnumba.trace.trace_lines``.  Under
-c_parity ``trace_lines`` gives the traced pixel the steady carry-over state
unless it is the first pixel rendered.  (The interpolation latch of -c_parity,
which depends on every earlier pixel, is not emulated without a render.)

Exit status: 0 bundle written and the traces agree (or no C trace); 3 bundle
written and the traces diverge; 1 usage error; 2 a runner failed; 5 I/O error.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nbnumba.tools import _common as C
from nbnumba.tools._common import ToolError

PROG = "nbnumba-probe"
EXIT_OK, EXIT_USAGE, EXIT_RUNNER, EXIT_DIVERGED, EXIT_IO = 0, 1, 2, 3, 5
RTD = 180.0 / math.pi

GEOMETRY_KEYS = {
    "pix0_vector_meters", "pixel_pos_meters", "R_distance_meters", "omega_pixel_sr",
    "close_distance_meters", "obliquity_factor", "diffracted_vec", "scattering_vec_A_inv",
    "polar", "omega_pixel", "cos_2theta",
}

DEFECTS = {
    "PIX0": (
        "C-DESIGN-FLAW-003 / NANO-C-BUG-002 (and NANO-C-BUG-001)",
        "nanoBragg.c ignores -pix0_vector/-pix0_vector_mm (beam pivot): it recomputes the "
        "detector origin pix0 from -Xbeam/-Ybeam (Fbeam/Sbeam) and the beam vector; the port "
        "honours the given vector (in mm for -pix0_vector_mm)",
    ),
    "PHI0": (
        "C-PARITY-001",
        "nanoBragg.c skips the spindle rotation when φ == 0 and reuses the cell rotated for the "
        "last φ step it ran (the previous pixel's last step), so phi_tic=0 uses the last step's "
        "cell and its k_frac equals the last step's; the port rotates by 0 (the unrotated cell)",
    ),
    "CPARITY": (
        "-c_parity",
        "another nanoBragg.c behaviour that the port reproduces only under -c_parity "
        "(see docs/quirks.md)",
    ),
}

__all__ = ["main", "probe", "attribute"]


# --------------------------------------------------------------------------- small helpers


def _g(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return "%d" % int(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "%.15g" % x


def _s(x, digits=4) -> str:
    if x is None:
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return _g(x)
    return f"%.{digits}g" % x


def _write(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_IO) from None


def _json(path: str, obj) -> None:
    _write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def c_trace_lines(text: str) -> List[str]:
    """The ``TRACE_C:`` / ``TRACE_C_*`` lines of a C stdout (TRACE_CONFIG excluded)."""
    return [ln for ln in text.splitlines() if re.match(r"^TRACE_C(:|_)", ln)]


def _trace_value(trace, name: str):
    """Values of a key, or of ``PHI[phi_tic=T]#n.field`` (a per-φ field) in a parsed Trace."""
    m = re.match(r"^PHI\[phi_tic=(-?\d+)\](?:#(\d+))?\.(\w+)$", name)
    if not m:
        return trace.get(name)
    tic, occ, field = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    seen = 0
    for row in trace.phi:
        if int(row.get("phi_tic", -1)) == tic:
            seen += 1
            if seen == occ:
                return [row[field]] if field in row else None
    return None


# --------------------------------------------------------------------------- port side


def _port_model(flags: List[str]):
    from nbnumba.errors import NBError, UsageError
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    try:
        cfg = parse_argv(list(flags))
        return build_model(cfg)
    except UsageError as e:
        raise ToolError(f"the port rejected the flags: {e}", EXIT_USAGE) from None
    except NBError as e:
        raise ToolError(f"port runner failed: {e}", EXIT_RUNNER) from None


def _port_trace(model, s: int, f: int) -> List[str]:
    from nbnumba.trace import trace_lines
    return trace_lines(model, s, f, prefix="TRACE_PY")


def _port_render(flags: List[str]):
    from nbnumba.errors import NBError, UsageError
    from nbnumba.flags import parse_argv
    from nbnumba.api import simulate
    try:
        return simulate(parse_argv(list(flags)))
    except UsageError as e:
        raise ToolError(f"the port rejected the flags: {e}", EXIT_USAGE) from None
    except NBError as e:
        raise ToolError(f"port runner failed: {e}", EXIT_RUNNER) from None


# --------------------------------------------------------------------------- C side


def _run_c(c_bin: str, flags: List[str], timeout=None) -> Tuple[C.RunResult, Optional[np.ndarray]]:
    """Run C in a scratch dir (one OpenMP thread); returns (run, float image or None)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory(prefix="nbprobe-c-") as d:
        r = C.run([c_bin, *flags], d, env, "C", timeout)
        if r.returncode != 0:
            why = C.last_line(r.stderr) or C.last_line(r.stdout) or "no output"
            raise ToolError(f"C runner failed (exit {r.returncode}): {why}", EXIT_RUNNER)
        img = None
        shape = C.parse_shape(r.stdout)
        fpath = os.path.join(d, "float.bin")
        if shape is not None and os.path.isfile(fpath):
            data = np.fromfile(fpath, dtype=np.float32)
            if data.size == shape[0] * shape[1]:
                img = data.reshape(shape)
    return r, img


# --------------------------------------------------------------------------- attribution


def attribute(diff, c_parity: bool, alt: Dict[str, object], present: Dict[str, bool], tol: float,
              py_trace) -> List[dict]:
    """Explain each diverging key by the documented C defect whose emulation reproduces it.

    ``alt`` maps ``"geo"`` (port, default mode, but with nanoBragg.c's detector
    geometry) and ``"cp"`` (port under -c_parity) to parsed traces;
    ``present`` says which defects apply to this command (``PIX0``, ``PHI0``).
    Each row: key, c, py, abs, rel, explained_by (list of defect ids or
    ``["UNEXPLAINED"]``), evidence.
    """
    from nbnumba.tools.trace_diff import compare_values

    rows = []
    items = [(k.name, k.c, k.py, k.max_abs, k.max_rel) for k in diff.divergences]
    for p in diff.phi:
        if p.diverged:
            for fld in p.diverged_fields:
                name = f"{p.name}.{fld}"
                cv, pv = p.c.get(fld), p.py.get(fld)
                _, _, _, mabs, mrel, _ = compare_values([cv], [pv], tol) if (
                    cv is not None and pv is not None) else (0, 0, 0, None, None, "")
                items.append((name, [cv], [pv], mabs, mrel))
    for name, cv, pv, mabs, mrel in items:
        label, evidence = ["UNEXPLAINED"], "no emulated C defect reproduces the C value"
        if not c_parity:
            geo, cp = alt.get("geo"), alt.get("cp")
            gv = _trace_value(geo, name) if geo is not None else None
            cpv = _trace_value(cp, name) if cp is not None else None
            pyv = _trace_value(py_trace, name)
            if gv is not None and not compare_values(cv, gv, tol)[0] and present.get("PIX0"):
                label = ["PIX0"]
                evidence = "the port reproduces the C value when given nanoBragg.c's recomputed pix0"
            elif cpv is not None and not compare_values(cv, cpv, tol)[0]:
                geo_moves = gv is not None and pyv is not None and compare_values(pyv, gv, tol)[0]
                if present.get("PHI0"):
                    label = (["PIX0", "PHI0"] if present.get("PIX0") and geo_moves else ["PHI0"])
                    evidence = ("reproduced only by the port's -c_parity trace (φ=0 carry-over"
                                + (" on top of nanoBragg.c's pix0)" if len(label) == 2 else ")"))
                else:
                    label = ["CPARITY"]
                    evidence = "reproduced by the port's -c_parity trace"
        rows.append({"key": name, "c": cv, "py": pv, "abs": mabs, "rel": mrel,
                     "explained_by": label, "evidence": evidence})
    return rows


# --------------------------------------------------------------------------- rotation audit


def _recip(a, b, c):
    v = float(np.dot(a, np.cross(b, c)))
    return np.cross(b, c) / v, np.cross(c, a) / v, np.cross(a, b) / v


def rotation_audit(model, c_tr, py_tr) -> Tuple[str, dict]:
    """Markdown table of the port's cells per φ step next to the C trace's values."""
    cells = np.asarray(model.cells)           # (2, nphi, nmos, 3, 3), metres
    phis = list(model.phis)
    nphi, nmos = cells.shape[1], cells.shape[2]
    A = 1e10
    L = ["# Rotation audit", ""]
    L.append(f"Port: `model.cells` (variant, φ step, mosaic domain, a|b|c, xyz), {nphi} φ step(s), "
             f"{nmos} mosaic domain(s); domain 0 shown.  Real-space vectors in Å, reciprocal "
             "vectors in Å⁻¹ computed from them (a* = b×c / V, ...).  Variant 1 is the cell a "
             "pixel uses in the steady state (every pixel but the first rendered), variant 0 the "
             "first-rendered pixel's; they differ only under -c_parity at φ = 0.")
    L.append("")
    info: dict = {"matches": {}, "k_match": []}
    L.append("## 1. Port cells per φ step (steady-state variant)")
    L.append("")
    L.append("| φ step | φ (deg) | vector | x | y | z | differs from variant 0 |")
    L.append("|---:|---:|---|---:|---:|---:|:---:|")
    for t in range(nphi):
        a, b, c = (cells[1, t, 0, j] for j in range(3))
        a0, b0, c0 = (cells[0, t, 0, j] for j in range(3))
        ast, bst, cst = _recip(a, b, c)
        differs = not np.array_equal(cells[1, t, 0], cells[0, t, 0])
        for nm, v in (("a", a * A), ("b", b * A), ("c", c * A),
                      ("a*", ast / A), ("b*", bst / A), ("c*", cst / A)):
            L.append(f"| {t} | {_g(phis[t] * RTD)} | {nm} | {_g(v[0])} | {_g(v[1])} | {_g(v[2])} | "
                     f"{'yes' if differs and nm == 'a' else ''} |")
    L.append("")

    # correct rotations for matching: variant 0 is the correctly rotated cell at every step
    # (under -c_parity it differs from the truth only when a φ=0 step follows a non-zero one)
    ref = cells[0, :, 0]
    L.append("## 2. The C trace's cell (printed once, for phi_tic = 0) against the port's steps")
    L.append("")
    if c_tr is None or "rot_a_angstroms" not in c_tr:
        L.append("No C trace (or no rot_a_angstroms line in it).")
        L.append("")
    else:
        cvec = np.array([c_tr["rot_a_angstroms"], c_tr["rot_b_angstroms"], c_tr["rot_c_angstroms"]],
                        dtype=float)
        pvec = None
        if py_tr is not None and "rot_a_angstroms" in py_tr:
            pvec = np.array([py_tr["rot_a_angstroms"], py_tr["rot_b_angstroms"],
                             py_tr["rot_c_angstroms"]], dtype=float)
        L.append("| vector | C (phi_tic 0) | port trace (phi_tic 0) |")
        L.append("|---|---|---|")
        for j, nm in enumerate(("rot_a_angstroms", "rot_b_angstroms", "rot_c_angstroms")):
            L.append(f"| {nm} | {' '.join(_g(v) for v in cvec[j])} | "
                     f"{' '.join(_g(v) for v in pvec[j]) if pvec is not None else '—'} |")
        for nm in ("rot_a_star_A_inv", "rot_b_star_A_inv", "rot_c_star_A_inv"):
            cv = c_tr.get(nm)
            pv = py_tr.get(nm) if py_tr is not None else None
            L.append(f"| {nm} | {' '.join(_g(v) for v in cv) if cv else '—'} | "
                     f"{' '.join(_g(v) for v in pv) if pv else '—'} |")
        L.append("")
        dists = [float(np.max(np.abs(ref[t] * A - cvec))) for t in range(nphi)]
        best = int(np.argmin(dists))
        info["matches"]["c_rot_phi_tic0"] = {"best_port_step": best, "max_abs_A": dists[best],
                                             "per_step_max_abs_A": dists}
        L.append("Max |Δ| (Å) between the C's printed a, b, c and the port's correctly rotated "
                 "cell of each φ step:")
        L.append("")
        L.append("| port φ step | φ (deg) | max abs Δ (Å) |")
        L.append("|---:|---:|---:|")
        for t in range(nphi):
            mark = " ← best" if t == best else ""
            L.append(f"| {t} | {_g(phis[t] * RTD)} | {_s(dists[t], 3)}{mark} |")
        L.append("")
        verdict = (f"The C's phi_tic=0 cell is the port's φ step {best} cell "
                   f"(φ = {_g(phis[best] * RTD)}°, max |Δ| {_s(dists[best], 3)} Å).")
        if best != 0 and nphi > 1:
            verdict += " It is not the φ = 0 cell: the C reused a rotated cell at φ = 0."
        L.append(verdict)
        L.append("")
        cst = [c_tr.get(n) for n in ("rot_a_star_A_inv", "rot_b_star_A_inv", "rot_c_star_A_inv")]
        if all(cst):
            cst = np.array(cst, dtype=float)
            cr = model.crystal
            unrot = np.array(_recip(np.array(cr.a), np.array(cr.b), np.array(cr.c))) / A
            du = float(np.max(np.abs(cst - unrot)))
            per = [float(np.max(np.abs(cst - np.array(_recip(*ref[t])) / A))) for t in range(nphi)]
            info["matches"]["c_recip"] = {"unrotated_max_abs": du, "per_step_max_abs": per}
            L.append(f"The traces' rot_a/b/c_star_A_inv vs the reciprocal of the unrotated cell: "
                     f"max |Δ| {_s(du, 3)} Å⁻¹; vs each φ step's: "
                     + ", ".join(f"{t}: {_s(v, 2)}" for t, v in enumerate(per)) + ".")
            if du <= 1e-12 * max(1.0, float(np.max(np.abs(cst)))) * 1e3:
                L.append("Both programs print the unrotated reciprocal vectors there (not "
                         "re-derived per φ step), so the real-space vectors above are the ones "
                         "to compare.")
            L.append("")

    L.append("## 3. k_frac per φ step")
    L.append("")
    if c_tr is None or not c_tr.phi:
        L.append("No C per-φ lines.")
        L.append("")
    else:
        S = c_tr.get("scattering_vec_A_inv")
        Svec = np.array(S, dtype=float) if S else None
        L.append("k_recomputed[j] = b_port[j] · S_C, with the C's scattering vector S_C "
                 "(printed as `scattering_vec_A_inv`, in m⁻¹) and the port's correctly rotated b "
                 "of step j (m): it isolates the rotation from the detector geometry.  "
                 "'best j' is the port step whose cell reproduces the C's k_frac.")
        L.append("")
        L.append("| phi_tic | φ (deg) | k_frac C | k_frac port | k(b_port[phi_tic]·S_C) | best j | "
                 "k(b_port[best j]·S_C) − k_frac C |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|")
        py_phi = {}
        if py_tr is not None:
            for row in py_tr.phi:
                py_phi.setdefault(int(row["phi_tic"]), row)
        seen = set()
        for row in c_tr.phi:
            t = int(row["phi_tic"])
            if t in seen:
                continue
            seen.add(t)
            kc = row.get("k_frac")
            kp = py_phi.get(t, {}).get("k_frac")
            if Svec is not None:
                ks = [float(np.dot(ref[j, 1], Svec)) for j in range(nphi)]
                own = ks[t] if 0 <= t < nphi else None
                j = int(np.argmin([abs(k - kc) for k in ks]))
                res = ks[j] - kc
                info["k_match"].append({"phi_tic": t, "k_c": kc, "k_py": kp, "k_own": own,
                                        "best_j": j, "residual": res})
                L.append(f"| {t} | {_g(row.get('phi_deg'))} | {_g(kc)} | {_g(kp)} | {_g(own)} | {j} | "
                         f"{_s(res, 3)} |")
            else:
                L.append(f"| {t} | {_g(row.get('phi_deg'))} | {_g(kc)} | {_g(kp)} | — | — | — |")
        L.append("")
        odd = [m for m in info["k_match"] if m["best_j"] != m["phi_tic"]]
        if odd:
            for m in odd:
                L.append(f"- C phi_tic={m['phi_tic']} used the cell of port step {m['best_j']} "
                         f"(residual {_s(m['residual'], 3)}).")
        elif info["k_match"]:
            L.append("- Every C φ step used the cell of the same port step.")
        L.append("")
    return "\n".join(L).rstrip() + "\n", info


# --------------------------------------------------------------------------- sincg


def _sincg_plan(diff, c_tr, py_tr, model) -> dict:
    axes = ("a", "b", "c")
    worst, worst_rel = "b", -1.0
    rels = {}
    if diff is not None:
        kd = {k.name: k for k in diff.keys}
        for ax in axes:
            k = kd.get(f"F_latt_{ax}")
            rels[ax] = k.max_rel if k is not None and k.max_rel is not None else None
        finite = {a: r for a, r in rels.items() if r is not None and math.isfinite(r)}
        if finite and max(finite.values()) > 0.0:
            worst = max(finite, key=lambda a: finite[a])
            worst_rel = finite[worst]
    idx = axes.index(worst)
    ks = []
    for tr in (c_tr, py_tr):
        if tr is None:
            continue
        hf = tr.get("hkl_frac")
        if hf and len(hf) == 3:
            ks.append(float(hf[idx]))
        if worst == "b":
            ks += [float(r["k_frac"]) for r in tr.phi if "k_frac" in r]
    N = {"a": model.crystal.Na, "b": model.crystal.Nb, "c": model.crystal.Nc}[worst]
    return {"axis": worst, "N": N, "rel_by_axis": rels, "worst_rel": worst_rel,
            "fracs": ks, "k0": (min(ks) - 0.02) if ks else None, "k1": (max(ks) + 0.02) if ks else None}


def _trace_points(tr, axis: str):
    """(k, F_latt_<axis>, label) points of a trace: per φ step for b, else the single hkl point."""
    if tr is None:
        return []
    idx = "abc".index(axis)
    if axis == "b" and tr.phi:
        return [(float(r["k_frac"]), float(r["F_latt_b"]), int(r["phi_tic"]))
                for r in tr.phi if "k_frac" in r and "F_latt_b" in r]
    hf, fl = tr.get("hkl_frac"), tr.scalar(f"F_latt_{axis}")
    if hf and len(hf) == 3 and fl is not None:
        return [(float(hf[idx]), float(fl), 0)]
    return []


def _points_plot(path: str, sw: dict, axis: str, c_tr, py_tr) -> bool:
    """Reference sincg curve with the traces' (fractional index, F_latt) points on it."""
    cpts, ppts = _trace_points(c_tr, axis), _trace_points(py_tr, axis)
    if not cpts and not ppts:
        return False
    from nbnumba.extras import require
    matplotlib = require("matplotlib", "PNG plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(sw["k"], sw["ref_f64"], "k-", lw=1, label=f"sincg(π·{'hkl'['abc'.index(axis)]}, N={sw['N']})")
    ax.axhline(0.0, color="0.75", lw=0.5)
    for pts, mk, col, lab in ((cpts, "o", "tab:red", "C trace"), (ppts, "s", "tab:blue", "port trace")):
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], mk, color=col, ms=6, mfc="none", label=lab)
        for k, v, t in pts:
            ax.annotate(str(t), (k, v), textcoords="offset points", xytext=(3, 4), fontsize=7, color=col)
    ax.set_xlabel(f"{'hkl'['abc'.index(axis)]}_frac")
    ax.set_ylabel(f"F_latt_{axis}")
    ax.set_title(f"F_latt_{axis} per φ step (labels: phi_tic) on the sincg curve", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main work


def _parse_opts(argv: List[str]):
    class P(argparse.ArgumentParser):
        def error(self, message):
            raise ToolError(message, EXIT_USAGE)

    p = P(prog=PROG, usage="%(prog)s --pixel S F [options] -- <nanoBragg flags>")
    p.add_argument("--pixel", nargs=2, type=int, required=True, metavar=("S", "F"))
    p.add_argument("--outdir", default="reports")
    p.add_argument("--c-parity", action="store_true", help="run the port with -c_parity")
    p.add_argument("--c-bin", help="C program (default $NB_C_BIN)")
    p.add_argument("--c-trace", help="use this stored C trace instead of running C")
    p.add_argument("--no-c", action="store_true", help="never run the C program")
    p.add_argument("--roi-radius", type=int, default=4)
    p.add_argument("--full-c", action="store_true", help="no -roi: trace over the whole detector")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--sincg-steps", type=int, default=401)
    p.add_argument("--timeout", type=float, default=None)
    return p.parse_args(argv)


def _env_info(c_bin: Optional[str]) -> dict:
    env = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": C.package_versions(),
        "git_sha": C.git_sha(),
        "nbnumba_path": C.repo_root(),
        "NB_C_BIN": os.environ.get("NB_C_BIN") or None,
        "c_bin": c_bin,
        "c_bin_sha256": None,
        "gpu": None,
    }
    if c_bin and os.path.isfile(c_bin):
        try:
            env["c_bin_sha256"] = C.sha256_file(c_bin)
        except OSError:
            pass
    import importlib.util
    try:
        spec = importlib.util.find_spec("nbnumba.kernels.gpu")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        env["gpu"] = {"module": "absent (nbnumba.kernels.gpu not found)", "available": None}
    else:
        try:
            from nbnumba.kernels import gpu  # type: ignore
            env["gpu"] = {"module": "nbnumba.kernels.gpu", "available": bool(gpu.available())}
        except Exception as exc:  # noqa: BLE001 - report, do not fail the probe
            env["gpu"] = {"module": "nbnumba.kernels.gpu", "available": False,
                          "error": f"{type(exc).__name__}: {exc}"}
    return env


def _det_dict(det) -> dict:
    d = dataclasses.asdict(det)
    d.pop("log", None)
    return d


def probe(opts, flags: List[str], argv: List[str], cwd: Optional[str] = None) -> Tuple[int, str, dict]:
    from nbnumba.tools.trace_diff import diff_traces, render_markdown
    from nbnumba.tools import sincg_sweep as SW
    from nbnumba.tracefmt import parse_trace

    cwd = cwd or os.getcwd()
    S, F = opts.pixel
    if S < 0 or F < 0:
        raise ToolError("--pixel S F must be >= 0", EXIT_USAGE)
    if opts.roi_radius < 0:
        raise ToolError("--roi-radius must be >= 0", EXIT_USAGE)
    if not (math.isfinite(opts.tol) and opts.tol >= 0):
        raise ToolError("--tol must be a finite number >= 0", EXIT_USAGE)
    if opts.sincg_steps < 2:
        raise ToolError("--sincg-steps must be >= 2", EXIT_USAGE)
    c_parity = bool(opts.c_parity or "-c_parity" in flags)
    base = C.strip_flag(flags, ("-trace_pixel", "-dump_pixel"), 2)
    base = C.strip_flag(base, ("-c_parity",), 0)
    base = C.with_floatfile(C.resolve_paths(base, cwd), "float.bin")
    py_mode = ["-c_parity"] if c_parity else []
    trace_args = ["-trace_pixel", str(S), str(F)]

    c_text_src = None
    if opts.c_trace:
        try:
            with open(os.path.join(cwd, opts.c_trace), "r", encoding="utf-8", errors="replace") as fh:
                c_text_src = fh.read()
        except OSError as exc:
            raise ToolError(f"cannot read --c-trace {opts.c_trace}: {exc.strerror or exc}",
                            EXIT_USAGE) from None
        if not c_trace_lines(c_text_src):
            raise ToolError(f"no TRACE_C lines in {opts.c_trace}", EXIT_USAGE)
    c_bin = None if opts.no_c else C.find_c_bin(opts.c_bin)
    if c_bin and (os.sep in c_bin):
        c_bin = os.path.abspath(os.path.join(cwd, c_bin))

    # ---- geometry and ROI -------------------------------------------------------
    model0 = _port_model(base + py_mode)
    fp, sp = model0.det.fpixels, model0.det.spixels
    if not (S < sp and F < fp):
        raise ToolError(f"pixel (slow {S}, fast {F}) is outside the {fp}x{sp} detector", EXIT_USAGE)
    user_roi = C.flag_values(base, ("-roi",), 4)
    if user_roi is not None:
        try:
            ur = [int(v) for v in user_roi]
        except ValueError:
            raise ToolError("-roi needs four integers", EXIT_USAGE) from None
        if not (ur[0] <= F <= ur[1] and ur[2] <= S <= ur[3]):
            raise ToolError(f"pixel (slow {S}, fast {F}) is outside the given -roi {' '.join(user_roi)}",
                            EXIT_USAGE)
        roi, roi_args, roi_kind = ur, [], "user -roi (kept as given)"
    elif opts.full_c:
        roi, roi_args, roi_kind = None, [], "none (--full-c: the whole detector)"
    else:
        r = opts.roi_radius
        roi = [max(F - r, 0), min(F + r, fp - 1), max(S - r, 0), min(S + r, sp - 1)]
        roi_args = ["-roi"] + [str(v) for v in roi]
        roi_kind = f"box of radius {r} around the pixel (added to both runs)"
    img_roi = roi if roi is not None else [max(F - opts.roi_radius, 0),
                                           min(F + opts.roi_radius, fp - 1),
                                           max(S - opts.roi_radius, 0),
                                           min(S + opts.roi_radius, sp - 1)]
    img_roi_args = [] if user_roi is not None else ["-roi"] + [str(v) for v in img_roi]

    try:
        bundle = C.unique_dir(os.path.join(cwd, opts.outdir), C.utc_stamp())
    except OSError as exc:
        raise ToolError(f"cannot create the bundle folder under {opts.outdir}: "
                        f"{exc.strerror or exc}", EXIT_IO) from None
    J = lambda *p: os.path.join(bundle, *p)  # noqa: E731
    commands: List[str] = []
    notes: List[str] = []

    # ---- port trace -------------------------------------------------------------
    py_flags = base + py_mode + roi_args + trace_args
    model = _port_model(py_flags)
    py_lines = _port_trace(model, S, F)
    py_text = "\n".join(py_lines) + "\n"
    _write(J("trace_py_phi.log"), py_text)
    if py_lines and ("not rendered" in py_lines[0] or "outside" in py_lines[0]):
        raise ToolError(py_lines[0].split(":", 1)[1].strip(), EXIT_USAGE)

    # ---- C trace ----------------------------------------------------------------
    c_flags = base + roi_args + trace_args
    c_source = None
    roi_check = None
    c_text = None
    if c_text_src is not None:
        c_text = "\n".join(c_trace_lines(c_text_src)) + "\n"
        c_source = f"stored trace {opts.c_trace}"
    elif c_bin:
        rc, _ = _run_c(c_bin, c_flags, opts.timeout)
        lines = c_trace_lines(rc.stdout)
        _write(J("c_stdout.txt"), rc.stdout)
        if not any(ln.startswith("TRACE_C: ") for ln in lines):
            raise ToolError(f"C runner printed no per-pixel TRACE_C lines for pixel ({S}, {F})",
                            EXIT_RUNNER)
        c_text = "\n".join(lines) + "\n"
        c_source = f"{c_bin} (run by the probe, OMP_NUM_THREADS=1)"
        if roi_args:
            alt = ([0, F, S, S] if F > 0 else [0, fp - 1, max(S - 1, 0), S])
            ra, _ = _run_c(c_bin, base + ["-roi"] + [str(v) for v in alt] + trace_args, opts.timeout)
            alt_lines = [ln for ln in c_trace_lines(ra.stdout)]
            same = alt_lines == lines
            roi_check = {"alt_roi": alt, "identical": same,
                         "meaning": "C trace with the ROI = the traced row up to the pixel; "
                                    "identical means the box ROI does not change the C trace"}
            if not same:
                notes.append("WARNING: the C trace changes with the ROI (box vs row up to the "
                             "pixel); rerun with --full-c")
        commands.append("# C trace (in an empty scratch directory; one OpenMP thread so the φ=0 "
                        "carry-over state is that of a single thread)")
        commands.append("OMP_NUM_THREADS=1 " + C.shlex_join([c_bin] + c_flags))
    if c_text is not None:
        _write(J("trace_c_phi.log"), c_text)
    c_tr = parse_trace(c_text) if c_text is not None else None
    py_tr = parse_trace(py_text)

    # ---- diff ---------------------------------------------------------------------
    diff = None
    if c_text is not None:
        diff = diff_traces(c_text, py_text, opts.tol, c_label="C", py_label="PY")
        diff.c_source, diff.py_source = "trace_c_phi.log", "trace_py_phi.log"
        _write(J("diff_trace.md"), render_markdown(diff))
        _json(J("compare_scaling_traces.json"), diff.to_json_dict())
    else:
        _write(J("diff_trace.md"), "# Trace diff\n\nNo C trace: set NB_C_BIN, pass --c-bin or "
                                   "--c-trace FILE.\n")
        _json(J("compare_scaling_traces.json"), {"available": False, "diverged": None})

    # ---- attribution ----------------------------------------------------------------
    present = {"PIX0": False, "PHI0": False}
    alt_traces: Dict[str, object] = {}
    alt_I: Dict[str, Optional[float]] = {}
    cp_model = None
    if not c_parity:
        try:
            cp_model = _port_model(base + ["-c_parity"] + roi_args + trace_args)
        except ToolError as e:
            notes.append(f"could not build the -c_parity model for attribution: {e}")
    if cp_model is not None:
        pix0_d = np.array(cp_model.det.pix0) - np.array(model.det.pix0)
        present["PIX0"] = bool(model.cfg.pix0_set and float(np.max(np.abs(pix0_d))) > 1e-12)
        geo_model = dataclasses.replace(model, det=cp_model.det)
        alt_traces["geo"] = parse_trace("\n".join(_port_trace(geo_model, S, F)))
        alt_traces["cp"] = parse_trace("\n".join(_port_trace(cp_model, S, F)))
        alt_I = {k: (tr.scalar("I_before_scaling")) for k, tr in alt_traces.items()}
    phis = list(model.phis)
    has_zero = any(p == 0.0 for p in phis) and any(p != 0.0 for p in phis)
    present["PHI0"] = bool(not c_parity and has_zero)
    attrib = attribute(diff, c_parity, alt_traces, present, opts.tol, py_tr) if (
        diff is not None and diff.diverged) else []

    # ---- sincg ------------------------------------------------------------------------
    plan = _sincg_plan(diff, c_tr, py_tr, model)
    sincg_info = dict(plan)
    Ni = int(round(float(plan["N"])))
    if plan["k0"] is not None and Ni >= 1:
        sw = SW.sweep(Ni, plan["k0"], plan["k1"], opts.sincg_steps)
        SW.write_outputs(sw, bundle, "sincg_sweep")
        sincg_info["N_int"] = Ni
        # does sincg(π k, N) reproduce the traces' F_latt_<axis> at their own k?
        checks = {}
        if plan["axis"] == "b" and model.cfg.xtal_shape == "SQUARE":
            for lab, tr in (("C", c_tr), ("PY", py_tr)):
                if tr is None or not tr.phi:
                    continue
                errs = []
                for row in tr.phi:
                    ref = float(SW.sincg_reference(row["k_frac"], Ni))
                    got = float(row["F_latt_b"])
                    errs.append(abs(got - ref) / max(abs(ref), 1e-300))
                checks[lab] = max(errs)
        sincg_info["F_latt_b_vs_reference_max_rel"] = checks
        sincg_info["points_png"] = _points_plot(J("sincg_points.png"), sw, plan["axis"], c_tr, py_tr)
        commands.append("# sincg precision sweep")
        commands.append(f"nbnumba-sincg-sweep --N {Ni} --k {plan['k0']!r} {plan['k1']!r} "
                        f"--steps {opts.sincg_steps} --outdir . --prefix sincg_sweep")
    else:
        _write(J("sincg_sweep.md"), "# sincg sweep\n\nSkipped: no fractional index or N < 1.\n")

    # ---- phistep1 control ---------------------------------------------------------------
    p1_info = _phistep1(J("phistep1"), base, py_mode, img_roi, img_roi_args, trace_args, c_bin,
                        S, F, opts, commands)

    # ---- rotation audit ------------------------------------------------------------------
    audit_md, audit_info = rotation_audit(model, c_tr, py_tr)
    _write(J("rotation_audit.md"), audit_md)

    # ---- metadata --------------------------------------------------------------------------
    det = model.det
    meta = {
        "pixel": {"slow": S, "fast": F},
        "roi": {"xmin_xmax_ymin_ymax": roi, "kind": roi_kind, "args": roi_args,
                "image_roi": img_roi, "roi_check": roi_check},
        "detector": _det_dict(det),
        "detector_c_parity_pix0": list(cp_model.det.pix0) if cp_model is not None else None,
        "mode": "c_parity" if c_parity else "default",
        "phis_deg": [p * RTD for p in phis],
        "crystal_N": [model.crystal.Na, model.crystal.Nb, model.crystal.Nc],
    }
    _json(J("roi_metadata.json"), meta)
    env = _env_info(c_bin)
    _json(J("env.json"), env)

    # ---- commands.txt ------------------------------------------------------------------------
    head = [f"# nbnumba-probe bundle {os.path.basename(bundle)}",
            f"# probe working directory: {cwd}",
            "# the probe itself",
            f"cd {C.shlex_join([cwd])} && nbnumba-probe " + C.shlex_join(argv),
            "# port trace (equivalent CLI; the probe calls nbnumba.model.build_model + "
            "nbnumba.trace.trace_lines without rendering the image)",
            "python -m nbnumba.cli " + C.shlex_join(py_flags),
            "# trace diff (writes the same diff_trace.md / compare_scaling_traces.json)",
            f"nbnumba-trace-diff trace_c_phi.log trace_py_phi.log --tol {opts.tol!r} "
            "--json compare_scaling_traces.json --markdown diff_trace.md"]
    _write(J("commands.txt"), "\n".join(head + commands) + "\n")

    # ---- summary.md --------------------------------------------------------------------------
    diverged = bool(diff is not None and diff.diverged)
    summary = _summary_md(bundle, S, F, flags, c_parity, c_source, roi_kind, roi, roi_check,
                          opts.tol, diff, attrib, present, alt_I, model, cp_model, sincg_info,
                          p1_info, audit_info, env, notes)
    _write(J("summary.md"), summary)
    C.write_sha256s(bundle)
    code = EXIT_DIVERGED if diverged else EXIT_OK
    info = {"bundle": bundle, "diverged": diverged, "diff": diff, "attribution": attrib,
            "first_divergence": diff.first_divergence.name if diverged and diff.first_divergence else None,
            "phistep1": p1_info, "sincg": sincg_info, "audit": audit_info, "alt_I": alt_I}
    return code, bundle, info


def _phistep1(outdir, base, py_mode, roi, roi_args, trace_args, c_bin, S, F, opts, commands) -> dict:
    """-phisteps 1 -osc 0 control run: no φ=0 carry-over possible (one step, C never rotates
    when φ0 = 0, and then uses the unrotated cell)."""
    from nbnumba.tools.trace_diff import diff_traces
    from nbnumba.tracefmt import parse_trace

    os.makedirs(outdir, exist_ok=True)
    f1 = C.strip_flag(base, ("-phisteps", "-phistep", "-osc"), 1) + ["-phisteps", "1", "-osc", "0"]
    # the saved float images: the ROI, but at most the --roi-radius box around the pixel
    r = opts.roi_radius
    x0, x1 = max(roi[0], F - r), min(roi[1], F + r)
    y0, y1 = max(roi[2], S - r), min(roi[3], S + r)
    info: dict = {"roi": roi, "crop": [x0, x1, y0, y1]}
    res = _port_render(f1 + py_mode + roi_args + trace_args)
    py_img = np.asarray(res.float_image)[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
    py_text = "\n".join(res.trace_lines) + "\n"
    _write(os.path.join(outdir, "trace_py.log"), py_text)
    py_img.tofile(os.path.join(outdir, "py_float_roi.bin"))
    commands.append("# phistep1 control: port (float image cropped to the ROI)")
    commands.append("python -m nbnumba.cli " + C.shlex_join(f1 + py_mode + roi_args + trace_args))
    c_img = None
    c_text = None
    if c_bin:
        rc, full = _run_c(c_bin, f1 + roi_args + trace_args, opts.timeout)
        c_text = "\n".join(c_trace_lines(rc.stdout)) + "\n"
        _write(os.path.join(outdir, "trace_c.log"), c_text)
        commands.append("# phistep1 control: C")
        commands.append("OMP_NUM_THREADS=1 " + C.shlex_join([c_bin] + f1 + roi_args + trace_args))
        if full is not None:
            c_img = full[y0:y1 + 1, x0:x1 + 1].astype(np.float32)
            c_img.tofile(os.path.join(outdir, "c_float_roi.bin"))
    N = [f"phistep1 control for pixel (slow {S}, fast {F})",
         "flags: the probe's flags with -phisteps/-osc replaced by -phisteps 1 -osc 0",
         f"ROI rendered (xmin xmax ymin ymax): {' '.join(str(v) for v in roi)}",
         f"float images c_float_roi.bin / py_float_roi.bin: pixels x {x0}..{x1}, y {y0}..{y1}, "
         f"float32, shape {y1 - y0 + 1} x {x1 - x0 + 1} (slow x fast), row-major",
         "why: with a single φ step at φ0 = 0 nanoBragg.c never rotates the cell, so the φ=0 "
         "carry-over (C-PARITY-001) cannot act; what still differs is not the carry-over.", ""]
    pt = parse_trace(py_text)
    info["I_before_scaling_py"] = pt.scalar("I_before_scaling")
    if c_text is not None:
        d = diff_traces(c_text, py_text, opts.tol)
        info["diverged"] = d.diverged
        info["first_divergence"] = d.first_divergence.name if d.first_divergence else None
        ct = parse_trace(c_text)
        info["I_before_scaling_c"] = ct.scalar("I_before_scaling")
        info["n_diverging_keys"] = len(d.divergences)
        info["diverging_keys"] = [k.name for k in d.divergences]
        N.append(f"trace verdict: {'DIVERGED' if d.diverged else 'MATCH'} (tol {opts.tol:g})")
        N.append(f"first divergence: {info['first_divergence']}")
        N.append(f"diverging keys: {', '.join(info['diverging_keys']) or 'none'}")
        N.append(f"I_before_scaling C {_g(info['I_before_scaling_c'])} port {_g(info['I_before_scaling_py'])}")
    else:
        N.append("no C run (no C program available or --no-c): port side only")
        N.append(f"I_before_scaling port {_g(info['I_before_scaling_py'])}")
    if c_img is not None:
        dd = py_img.astype(np.float64) - c_img.astype(np.float64)
        info["image_max_abs_diff"] = float(np.max(np.abs(dd))) if dd.size else 0.0
        info["image_max_c"] = float(c_img.max()) if c_img.size else 0.0
        info["pixel_c"] = float(c_img[S - y0, F - x0])
        info["pixel_py"] = float(py_img[S - y0, F - x0])
        N.append(f"float image ROI: max |port - C| = {_g(info['image_max_abs_diff'])} "
                 f"(C max {_g(info['image_max_c'])}); traced pixel C {_g(info['pixel_c'])} "
                 f"port {_g(info['pixel_py'])}")
    _write(os.path.join(outdir, "notes.txt"), "\n".join(N) + "\n")
    return info


# --------------------------------------------------------------------------- summary.md


def _summary_md(bundle, S, F, flags, c_parity, c_source, roi_kind, roi, roi_check, tol, diff,
                attrib, present, alt_I, model, cp_model, sincg, p1, audit, env, notes) -> str:
    L: List[str] = []
    mode = "-c_parity" if c_parity else "default (spec-correct) mode"
    L.append(f"# Parity probe: pixel (slow {S}, fast {F}), port in {mode}")
    L.append("")
    L.append(f"Bundle `{os.path.basename(bundle)}`.  Every file is listed in §10; checksums in "
             "[sha256.txt](sha256.txt).")
    L.append("")
    L.append("## 1. Case")
    L.append("")
    L.append("```")
    L.append(C.shlex_join(flags))
    L.append("```")
    L.append("")
    L.append(f"- traced pixel: slow {S}, fast {F} (`-trace_pixel {S} {F}`)")
    L.append(f"- port mode: {mode}")
    L.append(f"- C trace: {c_source or 'none (no C program, no --c-trace)'}")
    L.append(f"- ROI: {roi_kind}" + (f": `-roi {' '.join(str(v) for v in roi)}`" if roi else ""))
    if roi_check is not None:
        L.append(f"- ROI check: C trace with `-roi {' '.join(str(v) for v in roi_check['alt_roi'])}` "
                 f"(row up to the pixel) is {'identical' if roi_check['identical'] else 'DIFFERENT'}")
    L.append(f"- tolerance: relative {tol:g} per key (trace_diff rule)")
    for n in notes:
        L.append(f"- {n}")
    L.append("")

    L.append("## 2. Result and first divergence")
    L.append("")
    if diff is None:
        L.append("No C trace, so no comparison: the bundle holds the port side only.")
    elif not diff.diverged:
        L.append(f"**MATCH**: all {len(diff.keys)} per-pixel keys and {len(diff.phi)} per-φ rows "
                 f"present in both traces agree within {tol:g}.  No divergence.")
    else:
        fd = diff.first_divergence
        ndiv = len(diff.divergences) + sum(1 for p in diff.phi if p.diverged)
        L.append(f"**DIVERGED**: {ndiv} of {len(diff.keys) + len(diff.phi)} compared keys/φ rows differ.")
        L.append("")
        if fd is not None:
            L.append(f"First divergence (in C trace order): `{fd.name}` (C line {fd.c_line}, port "
                     f"line {fd.py_line}), max abs Δ {_s(fd.max_abs)}, rel Δ {_s(fd.max_rel)}")
            L.append("")
            L.append(f"- C:    `{' '.join(_g(v) for v in fd.c)}`")
            L.append(f"- port: `{' '.join(_g(v) for v in fd.py)}`")
    L.append("")
    L.append("Details: [diff_trace.md](diff_trace.md), [compare_scaling_traces.json](compare_scaling_traces.json).")
    L.append("")

    L.append("## 3. Scaling factors")
    L.append("")
    if diff is None:
        L.append("No C trace.")
    else:
        L.append("| factor | C | port | abs Δ | rel Δ | ok |")
        L.append("|---|---|---|---:|---:|:---:|")
        for name, fct in diff.factors.items():
            ok = "—" if fct.diverged is None else ("✗" if fct.diverged else "✓")
            L.append(f"| {name} | {_g(fct.c)} | {_g(fct.py)} | {_s(fct.abs)} | {_s(fct.rel)} | {ok} |")
    L.append("")

    L.append("## 4. Per-φ lattice factor")
    L.append("")
    if diff is not None and diff.phi:
        L.append("| phi_tic | φ (deg) | k_frac C | k_frac port | Δk (port − C) | F_latt C | F_latt port |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|")
        for p in diff.phi:
            kc, kp = p.c.get("k_frac"), p.py.get("k_frac")
            dk = (kp - kc) if kc is not None and kp is not None else None
            tic = str(p.phi_tic) + ("" if p.occurrence == 1 else f"#{p.occurrence}")
            L.append(f"| {tic} | {_g(p.c.get('phi_deg'))} | {_g(kc)} | {_g(kp)} | {_s(dk)} | "
                     f"{_g(p.c.get('F_latt'))} | {_g(p.py.get('F_latt'))} |")
        last = [p for p in diff.phi if p.occurrence == 1]
        if len(last) > 1:
            k0, kl = last[0].c.get("k_frac"), last[-1].c.get("k_frac")
            if k0 is not None and kl is not None:
                L.append("")
                L.append(f"C: k_frac at phi_tic=0 {'equals' if k0 == kl else 'differs from'} the last "
                         f"step's (phi_tic={last[-1].phi_tic}): {_g(k0)} vs {_g(kl)}.")
    else:
        L.append("No per-φ rows to compare.")
    L.append("")

    L.append("## 5. ATTRIBUTION")
    L.append("")
    if diff is None:
        L.append("No C trace, nothing to attribute.")
    elif not diff.diverged:
        L.append("Nothing to attribute: the traces agree."
                 + (" The port ran with -c_parity, which reproduces nanoBragg.c's defects "
                    "(pix0 recomputed from -Xbeam/-Ybeam, φ=0 carry-over, ...)." if c_parity else ""))
    else:
        L.append("Method: each diverging key is recomputed by the port twice more: (geo) default "
                 "mode but with nanoBragg.c's detector geometry (the pix0 the C derives from "
                 "-Xbeam/-Ybeam), and (cp) the full -c_parity emulation.  A key is explained by "
                 "the defect whose emulation reproduces the C value within the tolerance.")
        L.append("")
        by: Dict[str, List[str]] = {}
        for r in attrib:
            by.setdefault("+".join(r["explained_by"]), []).append(r["key"])
        for lab, keys in by.items():
            L.append(f"- **{lab}** ({len(keys)} key(s)): " + ", ".join(f"`{k}`" for k in keys[:30])
                     + (" …" if len(keys) > 30 else ""))
        L.append("")
        n = 1
        if present.get("PIX0") and cp_model is not None:
            ref, text = DEFECTS["PIX0"]
            d = np.array(cp_model.det.pix0) - np.array(model.det.pix0)
            px = model.det.pixel_size
            dF = float(np.dot(d, model.det.fdet)) / px
            dS = float(np.dot(d, model.det.sdet)) / px
            L.append(f"### 5.{n} PIX0: {ref}")
            L.append("")
            L.append(text + ".")
            L.append("")
            L.append(f"- port pix0 (m): `{' '.join(_g(v) for v in model.det.pix0)}` (as given by -pix0_vector/-pix0_vector_mm)")
            L.append(f"- C pix0 (m):    `{' '.join(_g(v) for v in cp_model.det.pix0)}` (recomputed)")
            L.append(f"- difference C − port: |Δ| = {_s(float(np.linalg.norm(d)) * 1e3)} mm, i.e. "
                     f"{_s(dF)} px along fast and {_s(dS)} px along slow: every geometry key "
                     "(pixel_pos, diffracted and scattering vectors, ...) and so every Miller "
                     "fraction moves.")
            L.append("")
            n += 1
        if present.get("PHI0"):
            ref, text = DEFECTS["PHI0"]
            L.append(f"### 5.{n} PHI0: {ref}")
            L.append("")
            L.append(text + ".")
            L.append("")
            if diff.phi:
                rows = [p for p in diff.phi if p.occurrence == 1]
                if rows:
                    k0c, klc = rows[0].c.get("k_frac"), rows[-1].c.get("k_frac")
                    L.append(f"- C k_frac: phi_tic=0 {_g(k0c)}, last step (phi_tic={rows[-1].phi_tic}) "
                             f"{_g(klc)}: {'identical' if k0c == klc else 'different'}.")
                    L.append(f"- port k_frac at phi_tic=0: {_g(rows[0].py.get('k_frac'))} "
                             "(the unrotated cell, with the port's geometry).")
            km = (audit or {}).get("k_match") or []
            odd = [m for m in km if m["best_j"] != m["phi_tic"]]
            for m in odd:
                L.append(f"- rotation audit: the C's phi_tic={m['phi_tic']} k_frac is reproduced by "
                         f"the port's cell of step {m['best_j']} with the C's scattering vector "
                         f"(residual {_s(m['residual'], 3)}).")
            L.append("")
            n += 1
        unexplained = [r for r in attrib if r["explained_by"] == ["UNEXPLAINED"]]
        L.append(f"### 5.{n} I_before_scaling")
        L.append("")
        f_ib = diff.factors.get("I_before_scaling")
        if f_ib is not None and f_ib.c is not None and f_ib.py is not None:
            Ic, Ip = float(f_ib.c), float(f_ib.py)
            L.append(f"- C: {_g(Ic)}; port: {_g(Ip)}")
            L.append(f"- Δ = port − C = {_g(Ip - Ic)} (relative to C: {_s((Ip - Ic) / Ic if Ic else float('nan'))}; "
                     f"C / port = {_s(Ic / Ip if Ip else float('nan'))})")
            Ig, Icp = (alt_I or {}).get("geo"), (alt_I or {}).get("cp")
            if Ig is not None and Icp is not None and not c_parity:
                L.append(f"- decomposition: port with the C's pix0 only gives {_g(Ig)} "
                         f"(geometry share {_g(Ig - Ip)}); adding the φ=0 carry-over "
                         f"(-c_parity) gives {_g(Icp)} (carry-over share {_g(Icp - Ig)}); "
                         f"-c_parity {'reproduces' if abs(Icp - Ic) <= tol * max(abs(Ic), abs(Icp)) else 'does NOT reproduce'} the C value.")
        else:
            L.append("- not in both traces")
        L.append("")
        n += 1
        L.append(f"### 5.{n} Per-key table")
        L.append("")
        L.append("| key | C | port | rel Δ | explained by | evidence |")
        L.append("|---|---|---|---:|---|---|")
        for r in attrib:
            cv = " ".join(_g(v) for v in r["c"]) if r["c"] is not None else "—"
            pv = " ".join(_g(v) for v in r["py"]) if r["py"] is not None else "—"
            L.append(f"| `{r['key']}` | {cv} | {pv} | {_s(r['rel'])} | {' + '.join(r['explained_by'])} | "
                     f"{r['evidence']} |")
        L.append("")
        if unexplained:
            L.append(f"**{len(unexplained)} key(s) are UNEXPLAINED** by the documented defects: a port "
                     "bug, a C state the probe does not emulate, or a tampered trace.  Start from "
                     f"`{unexplained[0]['key']}`.")
        else:
            L.append("Every diverging key is explained by a documented nanoBragg.c defect; run "
                     "with --c-parity to confirm the traces then agree.")
    L.append("")

    L.append("## 6. φ-step-1 control ([phistep1/notes.txt](phistep1/notes.txt))")
    L.append("")
    if p1.get("diverged") is None:
        L.append(f"Port only: I_before_scaling {_g(p1.get('I_before_scaling_py'))}.")
    else:
        L.append(f"With `-phisteps 1 -osc 0` the traces {'DIVERGE' if p1['diverged'] else 'MATCH'}"
                 + (f" (first divergence `{p1['first_divergence']}`, {p1['n_diverging_keys']} keys)"
                    if p1["diverged"] else "")
                 + f"; I_before_scaling C {_g(p1.get('I_before_scaling_c'))}, port "
                   f"{_g(p1.get('I_before_scaling_py'))}.")
        if "image_max_abs_diff" in p1:
            L.append(f"Float image over the ROI: max |port − C| = {_g(p1['image_max_abs_diff'])} "
                     f"(C max {_g(p1['image_max_c'])}).")
        if p1["diverged"] and present.get("PIX0"):
            L.append("One φ step rules out the carry-over, so what remains is the detector geometry (PIX0).")
        elif not p1["diverged"] and diff is not None and diff.diverged:
            L.append("With the carry-over ruled out the traces agree: the φ loop is the culprit.")
    L.append("")

    L.append("## 7. sincg sweep ([sincg_sweep.md](sincg_sweep.md), [csv](sincg_sweep.csv), "
             "[png](sincg_sweep.png))")
    L.append("")
    if sincg.get("k0") is not None:
        rels = sincg.get("rel_by_axis") or {}
        L.append(f"- axis: {sincg['axis']} (N = {sincg.get('N_int')}); F_latt rel Δ by axis: "
                 + ", ".join(f"{a}: {_s(r)}" for a, r in rels.items()) if rels else
                 f"- axis: {sincg['axis']} (N = {sincg.get('N_int')}) (default: no C trace)")
        L.append(f"- k range: {_g(sincg['k0'])} … {_g(sincg['k1'])} (the traces' fractional indices ± 0.02)")
        chk = sincg.get("F_latt_b_vs_reference_max_rel") or {}
        for lab, v in chk.items():
            L.append(f"- {lab}: F_latt_b vs accurate sincg(π k_frac, N) at its own k_frac: max rel "
                     f"err {_s(v, 3)}")
        if chk:
            L.append("- so the lattice factor is evaluated consistently; differences come from k_frac itself.")
        L.append("")
        L.append("![sincg sweep](sincg_sweep.png)")
        if sincg.get("points_png"):
            L.append("")
            L.append("[sincg_points.png](sincg_points.png): the traces' (fractional index, F_latt) "
                     "points on the reference curve.")
            L.append("")
            L.append("![trace points](sincg_points.png)")
    else:
        L.append("Skipped.")
    L.append("")

    L.append("## 8. Rotation audit ([rotation_audit.md](rotation_audit.md))")
    L.append("")
    m = (audit or {}).get("matches", {}).get("c_rot_phi_tic0")
    if m:
        L.append(f"The C's printed cell (phi_tic=0) matches the port's φ step {m['best_port_step']} "
                 f"cell (max |Δ| {_s(m['max_abs_A'], 3)} Å).")
    else:
        L.append("No C cell to audit.")
    L.append("")

    L.append("## 9. Environment ([env.json](env.json))")
    L.append("")
    v = env.get("versions", {})
    L.append(f"python {env.get('python')}, numpy {v.get('numpy')}, numba {v.get('numba')}, "
             f"git {env.get('git_sha')}, GPU: {env.get('gpu', {}).get('available')}")
    L.append("")

    L.append("## 10. Files")
    L.append("")
    desc = {
        "summary.md": "this report",
        "trace_py_phi.log": "port trace (TRACE_PY, TRACE_PY_PHI)",
        "trace_c_phi.log": "C trace (TRACE_C, TRACE_C_PHI)",
        "c_stdout.txt": "complete stdout of the C trace run",
        "diff_trace.md": "trace_diff report",
        "compare_scaling_traces.json": "trace_diff JSON: per-factor deltas, first divergence",
        "sincg_sweep.md": "sincg sweep table", "sincg_sweep.csv": "sincg sweep data",
        "sincg_sweep.png": "sincg sweep plot",
        "sincg_points.png": "the traces' F_latt points on the sincg curve",
        "phistep1/notes.txt": "φ-step-1 control notes",
        "phistep1/trace_py.log": "φ-step-1 port trace", "phistep1/trace_c.log": "φ-step-1 C trace",
        "phistep1/py_float_roi.bin": "φ-step-1 port float image (ROI, float32)",
        "phistep1/c_float_roi.bin": "φ-step-1 C float image (ROI, float32)",
        "rotation_audit.md": "a, b, c, a*, b*, c* per φ step",
        "roi_metadata.json": "pixel, ROI, detector geometry",
        "env.json": "versions, GPU, git SHA", "commands.txt": "commands to reproduce",
        "sha256.txt": "checksums of every file",
    }
    present_files = []
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        for fn in sorted(files):
            present_files.append(os.path.relpath(os.path.join(root, fn), bundle).replace(os.sep, "/"))
    for rel in sorted(set(present_files) | {"summary.md", "sha256.txt"}):
        L.append(f"- [{rel}]({rel}): {desc.get(rel, '')}")
    L.append("")
    L.append("## 11. Reproduce")
    L.append("")
    L.append("See [commands.txt](commands.txt).")
    return "\n".join(L) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body():
        split = C.split_or_help(argv, __doc__)
        if split is None:
            return EXIT_OK
        opts_argv, flags = split
        opts = _parse_opts(opts_argv)
        if not flags:
            raise ToolError("no nanoBragg flags: use nbnumba-probe --pixel S F [options] -- <flags>",
                            EXIT_USAGE)
        code, bundle, info = probe(opts, flags, argv)
        fd = info.get("first_divergence")
        if info["diff"] is None:
            verdict = "no C trace (port side only)"
        elif info["diverged"]:
            unex = sum(1 for r in info["attribution"] if r["explained_by"] == ["UNEXPLAINED"])
            verdict = f"DIVERGED, first divergence {fd}; {unex} unexplained key(s)"
        else:
            verdict = "MATCH (no divergence)"
        print(f"{PROG}: {verdict}")
        print(f"{PROG}: wrote {bundle}/summary.md")
        return code
    return C.guarded_main(PROG, body, io_exit=EXIT_IO)


if __name__ == "__main__":
    sys.exit(main())
