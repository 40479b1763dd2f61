"""summary.md: the numbered report of one probe."""
from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from nbnumba.tools import _common as C
from .common import DEFECTS, RTD, _g, _s


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
        if present.get("PHICENTRE") and cp_model is not None:
            ref, text = DEFECTS["PHICENTRE"]
            L.append(f"### 5.{n} PHICENTRE: {ref}")
            L.append("")
            L.append(text + ".")
            L.append("")
            L.append("- C φ points (deg): " + ", ".join(_g(float(x) * RTD) for x in cp_model.phis))
            L.append("- port φ points (deg): " + ", ".join(_g(float(x) * RTD) for x in model.phis))
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

    if sincg.get("k0") is not None:
        L.append("## 7. sincg sweep ([sincg_sweep.md](sincg_sweep.md), [csv](sincg_sweep.csv)"
                 + (", [png](sincg_sweep.png))" if sincg.get("png", True) else ")"))
    else:
        L.append("## 7. sincg sweep ([sincg_sweep.md](sincg_sweep.md))")
    L.append("")
    if sincg.get("k0") is not None:
        rels = sincg.get("rel_by_axis") or {}
        L.append(f"- axis: {sincg['axis']} (N = {sincg.get('N_int')}); F_latt rel Δ by axis: "
                 + ", ".join(f"{a}: {_s(r)}" for a, r in rels.items()) if rels else
                 f"- axis: {sincg['axis']} (N = {sincg.get('N_int')}) (default: no C trace)")
        of = sincg.get("range_of") or "the traces' fractional indices"
        L.append(f"- k range: {_g(sincg['k0'])} … {_g(sincg['k1'])} ({of} ± 0.02)")
        if sincg.get("left_out"):
            L.append("- the C trace's fractional indices are left out: a range with them is "
                     f"beyond nbnumba-sincg-sweep's limits ({sincg['left_out']})")
        chk = sincg.get("F_latt_b_vs_reference_max_rel") or {}
        for lab, v in chk.items():
            L.append(f"- {lab}: F_latt_b vs accurate sincg(π k_frac, N) at its own k_frac: max rel "
                     f"err {_s(v, 3)}")
        if chk:
            L.append("- so the lattice factor is evaluated consistently; differences come from k_frac itself.")
        L.append("")
        if sincg.get("png", True):
            L.append("![sincg sweep](sincg_sweep.png)")
        else:
            L.append("No plots: the probe ran with --no-png.")
        if sincg.get("points_png"):
            L.append("")
            L.append("[sincg_points.png](sincg_points.png): the traces' (fractional index, F_latt) "
                     "points on the reference curve.")
            L.append("")
            L.append("![trace points](sincg_points.png)")
    else:
        L.append(f"Skipped: {sincg.get('skipped') or 'no fractional index'}.")
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
        "git_sha.txt": "the nbnumba commit that made this bundle (-dirty: uncommitted edits)",
        "pytest.log": "output of the tests named with --pytest",
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


def open_questions(p) -> List[str]:
    """What this bundle leaves open, one question per line (never empty)."""
    q: List[str] = []
    unexplained = [r["key"] for r in p.attrib if r["explained_by"] == ["UNEXPLAINED"]]
    if p.diff is None:
        q.append("How does nanoBragg.c compare? No C trace was available: set NB_C_BIN, "
                 "pass --c-bin, or give a stored trace with --c-trace FILE.")
    if unexplained:
        q.append(f"Why do {len(unexplained)} key(s) diverge with no documented defect to explain "
                 f"them (first: `{unexplained[0]}`)? A port bug, C state the probe does not "
                 "emulate, or an edited trace.")
    if p.diverged and not p.c_parity and not unexplained:
        q.append("Do the traces agree once the C's defects are reproduced? Rerun with --c-parity.")
    if p.roi_check is not None and not p.roi_check.get("identical"):
        q.append("The C trace depends on the ROI: does a --full-c run change the verdict?")
    if p.c_parity and p.model is not None and p.model.cfg.interpolate:
        q.append("-c_parity's interpolation latch depends on every earlier pixel and is not "
                 "emulated without a full render: does a full nb-compare run agree?")
    if p.phistep1.get("diverged") and not p.present.get("PIX0"):
        q.append("With one φ step the traces still diverge and no pix0 defect applies: what "
                 "else differs in the geometry or the lattice factor?")
    if p.pytest is not None and p.pytest.get("returncode") not in (0, None):
        q.append(f"The tests run with --pytest failed ({p.pytest.get('summary')}): are they "
                 "about this pixel's divergence? See pytest.log.")
    if not q:
        q.append("None raised by the probe's own checks: the traces "
                 + ("agree." if p.diff is not None and not p.diverged else "are explained.")
                 + " Record what you conclude here before closing the investigation.")
    return q


def summary_step(p) -> None:
    """summary.md: sections 1-11, the tests run (--pytest) and, last, Open questions."""
    from .common import _write
    text = _summary_md(p.bundle, p.S, p.F, p.flags, p.c_parity, p.c_source, p.roi_kind, p.roi,
                       p.roi_check, p.opts.tol, p.diff, p.attrib, p.present, p.alt_I, p.model,
                       p.cp_model, p.sincg, p.phistep1, p.audit, p.env, p.notes)
    L = [text.rstrip("\n"), ""]
    n = 12
    if p.pytest is not None:
        L += [f"## {n}. Tests ([pytest.log](pytest.log))", "",
              f"`python -m pytest -q {' '.join(p.pytest['selectors'])}` at git "
              f"`{p.env.get('git_sha')}`: exit {p.pytest['returncode']}, {p.pytest['summary']}", ""]
        n += 1
    L += [f"## {n}. Open questions", ""]
    L += [f"{i}. {text}" for i, text in enumerate(open_questions(p), 1)]
    _write(p.path("summary.md"), "\n".join(L) + "\n")
