"""Rotation audit: the cell per φ step (port) next to the C's printed values."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .common import RTD, _g, _s


def _recip(a, b, c):
    v = float(np.dot(a, np.cross(b, c)))
    return np.cross(b, c) / v, np.cross(c, a) / v, np.cross(a, b) / v


_ROT = ("rot_a_angstroms", "rot_b_angstroms", "rot_c_angstroms")


def rotation_audit(model, c_tr, py_tr) -> Tuple[str, dict]:
    """Markdown table of the port's cells per φ step next to the C trace's values.

    The C's numbers may be nan, inf or huge (a stored trace): the distances are
    then nan/inf in the tables, computed without numpy warnings."""
    with np.errstate(all="ignore"):
        return _rotation_audit(model, c_tr, py_tr)


def _rotation_audit(model, c_tr, py_tr) -> Tuple[str, dict]:
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
    if c_tr is None or not all(n in c_tr for n in _ROT):
        L.append("No C trace (or not all of its rot_a/b/c_angstroms lines).")
        L.append("")
    else:
        cvec = np.array([c_tr["rot_a_angstroms"], c_tr["rot_b_angstroms"], c_tr["rot_c_angstroms"]],
                        dtype=float)
        pvec = None
        if py_tr is not None and all(n in py_tr for n in _ROT):
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
            if Svec is not None and kc is not None:
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


def audit_step(p) -> None:
    """rotation_audit.md: a, b, c and a*, b*, c* per φ step next to the C's values."""
    from .common import _write
    # (the C's φ points: the -c_parity model's where the default mode centres them, #28)
    cp = getattr(p, "cp_model", None)
    model = p.model
    if cp is not None and [float(x) for x in cp.phis] != [float(x) for x in model.phis]:
        model = cp
    md, p.audit = rotation_audit(model, p.c_tr, p.py_tr)
    _write(p.path("rotation_audit.md"), md)
