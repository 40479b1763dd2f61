"""sincg evidence: which lattice factor to sweep and the traces' points on the curve."""
from __future__ import annotations

import math




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


def sincg_step(p) -> None:
    """sincg_sweep.*: sincg accuracy around the pixel's fractional index, and whether
    the traces' F_latt_b match an accurate sincg at their own k."""
    from nbnumba.tools import sincg_sweep as SW

    from .common import _write
    plan = _sincg_plan(p.diff, p.c_tr, p.py_tr, p.model)
    info = dict(plan)
    Ni = int(round(float(plan["N"])))
    if plan["k0"] is None or Ni < 1:
        _write(p.path("sincg_sweep.md"), "# sincg sweep\n\nSkipped: no fractional index or N < 1.\n")
        p.sincg = info
        return
    sw = SW.sweep(Ni, plan["k0"], plan["k1"], p.opts.sincg_steps)
    SW.write_outputs(sw, p.bundle, "sincg_sweep")
    info["N_int"] = Ni
    checks = {}
    if plan["axis"] == "b" and p.model.cfg.xtal_shape == "SQUARE":
        for lab, tr in (("C", p.c_tr), ("PY", p.py_tr)):
            if tr is None or not tr.phi:
                continue
            errs = []
            for row in tr.phi:
                ref = float(SW.sincg_reference(row["k_frac"], Ni))
                errs.append(abs(float(row["F_latt_b"]) - ref) / max(abs(ref), 1e-300))
            checks[lab] = max(errs)
    info["F_latt_b_vs_reference_max_rel"] = checks
    info["points_png"] = _points_plot(p.path("sincg_points.png"), sw, plan["axis"], p.c_tr, p.py_tr)
    p.commands.append("# sincg precision sweep")
    p.commands.append(f"nbnumba-sincg-sweep --N {Ni} --k {plan['k0']!r} {plan['k1']!r} "
                      f"--steps {p.opts.sincg_steps} --outdir . --prefix sincg_sweep")
    p.sincg = info
