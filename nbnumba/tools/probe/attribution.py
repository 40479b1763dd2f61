"""Which documented nanoBragg.c defect explains each diverging trace key."""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

from nbnumba.tools._common import ToolError
from .common import _trace_value


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
        if any(v is None for v in list(cv) + list(pv)):
            # a per-φ field in one log only (a C trace cut or edited by hand): there is no
            # value to hold to the emulations (compare_values met None: a TypeError traceback)
            evidence = "the field is in one log only; no emulated C defect adds or drops a field"
        elif not c_parity:
            geo, cp = alt.get("geo"), alt.get("cp")
            gv = _trace_value(geo, name) if geo is not None else None
            cpv = _trace_value(cp, name) if cp is not None else None
            pyv = _trace_value(py_trace, name)
            if gv is not None and not compare_values(cv, gv, tol)[0] and present.get("PIX0"):
                label = ["PIX0"]
                evidence = "the port reproduces the C value when given nanoBragg.c's recomputed pix0"
            elif cpv is not None and not compare_values(cv, cpv, tol)[0]:
                geo_moves = gv is not None and pyv is not None and compare_values(pyv, gv, tol)[0]
                if present.get("PHI0") or present.get("PHICENTRE"):
                    label = ((["PIX0"] if present.get("PIX0") and geo_moves else [])
                             + [k for k in ("PHI0", "PHICENTRE") if present.get(k)])
                    evidence = ("reproduced only by the port's -c_parity trace ("
                                + " and ".join(w for k, w in (
                                    ("PHI0", "φ=0 carry-over"),
                                    ("PHICENTRE", "the C's φ points")) if present.get(k))
                                + (" on top of nanoBragg.c's pix0)" if label[0] == "PIX0" else ")"))
                else:
                    label = ["CPARITY"]
                    evidence = "reproduced by the port's -c_parity trace"
        rows.append({"key": name, "c": cv, "py": pv, "abs": mabs, "rel": mrel,
                     "explained_by": label, "evidence": evidence})
    return rows


def attribution_step(p) -> None:
    """Recompute the trace with the C's geometry (geo) and the full -c_parity emulation (cp);
    each diverging key is explained by the defect whose emulation reproduces the C value."""
    from nbnumba.tracefmt import parse_trace

    from .runners import _port_model, _port_trace
    p.present = {"PIX0": False, "PHI0": False, "PHICENTRE": False}
    alt_traces: Dict[str, object] = {}
    if not p.c_parity:
        try:
            p.cp_model = _port_model(p.base + ["-c_parity"] + p.roi_args + p.trace_args)
        except ToolError as e:
            p.notes.append(f"could not build the -c_parity model for attribution: {e}")
    model = p.model
    if p.cp_model is not None:
        pix0_d = np.array(p.cp_model.det.pix0) - np.array(model.det.pix0)
        p.present["PIX0"] = bool(model.cfg.pix0_set and float(np.max(np.abs(pix0_d))) > 1e-12)
        geo_model = dataclasses.replace(model, det=p.cp_model.det)
        alt_traces["geo"] = parse_trace("\n".join(_port_trace(geo_model, p.S, p.F)))
        alt_traces["cp"] = parse_trace("\n".join(_port_trace(p.cp_model, p.S, p.F)))
        p.alt_I = {k: (tr.scalar("I_before_scaling")) for k, tr in alt_traces.items()}
    # the carry-over acts on the C's φ points, which the -c_parity model holds; the
    # default mode's are centred in the oscillation (docs/quirks.md #28)
    phis = list((p.cp_model or model).phis)
    has_zero = any(ph == 0.0 for ph in phis) and any(ph != 0.0 for ph in phis)
    p.present["PHI0"] = bool(not p.c_parity and has_zero)
    p.present["PHICENTRE"] = bool(not p.c_parity and p.cp_model is not None
                                  and [float(x) for x in phis] != [float(x) for x in model.phis])
    p.attrib = attribute(p.diff, p.c_parity, alt_traces, p.present, p.opts.tol, p.py_tr) \
        if p.diverged else []
