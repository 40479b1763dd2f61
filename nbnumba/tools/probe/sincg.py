"""sincg evidence: which lattice factor to sweep and the traces' points on the curve."""
from __future__ import annotations

import math




def _finite(v) -> bool:
    return not isinstance(v, str) and math.isfinite(float(v))


def _fracs(tr, idx: int, axis: str) -> list:
    """The finite fractional indices of a trace along ``axis`` (hkl_frac, and per φ
    step for b); a non-finite one (nan printed by the C) is left out."""
    if tr is None:
        return []
    ks = []
    hf = tr.get("hkl_frac")
    if hf and len(hf) == 3 and _finite(hf[idx]):
        ks.append(float(hf[idx]))
    if axis == "b":
        ks += [float(r["k_frac"]) for r in tr.phi if "k_frac" in r and _finite(r["k_frac"])]
    return ks


def _sincg_plan(diff, c_tr, py_tr, model, steps: int = 401) -> dict:
    """Axis, N and k range of the sweep: the traces' fractional indices ± 0.02,
    or the port's alone when the C's make a range the sweep cannot hold (a
    fraction of 1e300 in an edited trace, far from the port's); ``skipped``
    says why when neither fits (nbnumba-sincg-sweep's limits)."""
    from nbnumba.tools.sincg_sweep import check_limits
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
    c_ks, py_ks = _fracs(c_tr, idx, worst), _fracs(py_tr, idx, worst)
    N = {"a": model.crystal.Na, "b": model.crystal.Nb, "c": model.crystal.Nc}[worst]
    plan = {"axis": worst, "N": N, "rel_by_axis": rels, "worst_rel": worst_rel,
            "fracs": c_ks + py_ks, "k0": None, "k1": None, "range_of": None, "left_out": None,
            "skipped": None}
    Ni = int(round(float(N))) if math.isfinite(float(N)) else 0
    if Ni < 1:
        plan["skipped"] = f"N = {N} along {worst} is not a positive integer"
        return plan
    why = []
    for label, ks in (("the traces' fractional indices", c_ks + py_ks),
                      ("the port's fractional indices", py_ks)):
        if not ks:
            continue
        k0, k1 = min(ks) - 0.02, max(ks) + 0.02
        try:
            check_limits(Ni, k0, k1, steps)
        except ValueError as exc:
            why.append(str(exc))
            continue
        plan.update(k0=k0, k1=k1, range_of=label, left_out=why[0] if why else None)
        return plan
    plan["skipped"] = why[-1] if why else "no finite fractional index in the traces"
    return plan


def _trace_points(tr, axis: str, lo: float = -math.inf, hi: float = math.inf):
    """(k, F_latt_<axis>, label) points of a trace: per φ step for b, else the single
    hkl point; only finite points with k in [lo, hi] (the swept range)."""
    if tr is None:
        return []
    idx = "abc".index(axis)
    if axis == "b" and tr.phi:
        pts = [(float(r["k_frac"]), float(r["F_latt_b"]), int(r["phi_tic"]))
               for r in tr.phi if "k_frac" in r and "F_latt_b" in r]
    else:
        hf, fl = tr.get("hkl_frac"), tr.scalar(f"F_latt_{axis}")
        pts = ([(float(hf[idx]), float(fl), 0)]
               if hf and len(hf) == 3 and fl is not None and not isinstance(fl, str) else [])
    return [(k, v, t) for k, v, t in pts if math.isfinite(k) and math.isfinite(v) and lo <= k <= hi]


def _points_plot(path: str, sw: dict, axis: str, c_tr, py_tr) -> bool:
    """Reference sincg curve with the traces' (fractional index, F_latt) points on it."""
    lo, hi = float(min(sw["k"][0], sw["k"][-1])), float(max(sw["k"][0], sw["k"][-1]))
    cpts, ppts = _trace_points(c_tr, axis, lo, hi), _trace_points(py_tr, axis, lo, hi)
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
    plan = _sincg_plan(p.diff, p.c_tr, p.py_tr, p.model, p.opts.sincg_steps)
    info = dict(plan)
    if plan["k0"] is None:
        _write(p.path("sincg_sweep.md"), f"# sincg sweep\n\nSkipped: {plan['skipped']}.\n")
        p.sincg = info
        return
    Ni = int(round(float(plan["N"])))
    png = not getattr(p.opts, "no_png", False)
    sw = SW.sweep(Ni, plan["k0"], plan["k1"], p.opts.sincg_steps)
    SW.write_outputs(sw, p.bundle, "sincg_sweep", png=png)
    info["png"] = png
    info["N_int"] = Ni
    checks = {}
    if plan["axis"] == "b" and p.model.cfg.xtal_shape == "SQUARE":
        for lab, tr in (("C", p.c_tr), ("PY", p.py_tr)):
            if tr is None or not tr.phi:
                continue
            errs = []
            for row in tr.phi:
                k, fb = row.get("k_frac"), row.get("F_latt_b")
                if k is None or fb is None or not (math.isfinite(k) and math.isfinite(fb)):
                    continue        # nan printed by the C: shown in the diff, not a sincg point
                ref = float(SW.sincg_reference(k, Ni))
                errs.append(abs(fb - ref) / max(abs(ref), 1e-300))
            if errs:
                checks[lab] = max(errs)
    info["F_latt_b_vs_reference_max_rel"] = checks
    info["points_png"] = png and _points_plot(p.path("sincg_points.png"), sw, plan["axis"],
                                              p.c_tr, p.py_tr)
    p.commands.append("# sincg precision sweep")
    p.commands.append(f"nbnumba-sincg-sweep --N {Ni} --k {plan['k0']!r} {plan['k1']!r} "
                      f"--steps {p.opts.sincg_steps} --outdir . --prefix sincg_sweep"
                      + ("" if png else " --no-png"))
    p.sincg = info
