"""Benchmark history: one table per workload and a plot, from every results
JSON under benchmarks/results/ (pytest-benchmark files ``<YYYYMMDD>-<sha7>-<host>.json``
and ``vs_c-...json`` files written by ``python -m benchmarks.vs_c``).

    python -m benchmarks.history [--results DIR] [--png PATH] [--no-plot] [--include-quick]

Rows: date, sha, host, kind (kernel / cli / startup / vs_c-port / vs_c-C),
precision, median seconds, throughput (sub-paths per second).  The plot
(``benchmarks/results/history.png``) shows throughput per run for every
workload, so a regression shows up as a drop.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_NAME = re.compile(r"^(?:(?P<prefix>[A-Za-z_]+)-)?(?P<date>\d{8})-(?P<sha>[0-9a-f]{4,40}|nogit)-(?P<host>.+?)"
                   r"(?P<quick>-quick)?\.json$")
_PARAM = re.compile(r"\[(?P<param>[^\]]+)\]")


def parse_name(name: str) -> Dict[str, object]:
    """Fields of a results file name (empty dict when it does not match)."""
    m = _NAME.match(Path(name).name)
    if not m:
        return {}
    return {"prefix": m.group("prefix") or "", "date": m.group("date"), "sha": m.group("sha"),
            "host": m.group("host"), "quick": bool(m.group("quick"))}


def _throughput(sub, med):
    try:
        return float(sub) / float(med) if sub and med and float(med) > 0 else None
    except (TypeError, ValueError):
        return None


def records_from_json(data: dict, filename: str = "") -> List[Dict[str, object]]:
    """Flat records (one per benchmark / vs_c row) from one results file."""
    meta = parse_name(filename)
    out: List[Dict[str, object]] = []
    if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
        nb = data.get("nbnumba") or {}
        stamp = data.get("datetime") or nb.get("datetime") or ""
        sha = meta.get("sha") or ((data.get("commit_info") or {}).get("id") or "")[:7] or "?"
        host = meta.get("host") or (data.get("machine_info") or {}).get("node") or "?"
        date = meta.get("date") or stamp[:10].replace("-", "")
        quick = bool(nb.get("quick", meta.get("quick", False)))
        for b in data["benchmarks"]:
            ei = b.get("extra_info") or {}
            name = b.get("name", "")
            wl = ei.get("workload")
            if not wl:
                m = _PARAM.search(name)
                wl = (m.group("param").split("-")[0] if m else name)
            kind = ei.get("kind") or ("kernel" if "kernel" in name else "cli")
            med = (b.get("stats") or {}).get("median")
            sub = ei.get("subpaths")
            out.append({"file": filename, "date": date, "stamp": stamp, "sha": sha, "host": host,
                        "quick": quick, "workload": wl, "kind": kind,
                        "precision": ei.get("precision", ""), "backend": ei.get("backend", "cpu"),
                        "median_s": med, "subpaths": sub, "throughput": _throughput(sub, med)})
    elif isinstance(data, dict) and data.get("kind") == "vs_c":
        mach = data.get("machine") or {}
        stamp = mach.get("datetime", "")
        date = meta.get("date") or stamp[:10].replace("-", "")
        sha = meta.get("sha") or mach.get("git_sha", "?")
        host = meta.get("host") or mach.get("host", "?")
        quick = bool(data.get("quick", meta.get("quick", False)))
        for r in data.get("rows", []):
            base = {"file": filename, "date": date, "stamp": stamp, "sha": sha, "host": host, "quick": quick,
                    "workload": r.get("workload"), "precision": r.get("precision", ""), "backend": "cpu",
                    "subpaths": r.get("subpaths")}
            out.append(dict(base, kind="vs_c-port", median_s=r.get("port_s"),
                            throughput=_throughput(r.get("subpaths"), r.get("port_s"))))
            if r.get("c_s") is not None and r.get("precision") == "double":
                out.append(dict(base, kind="vs_c-C", precision="C", median_s=r.get("c_s"),
                                throughput=_throughput(r.get("subpaths"), r.get("c_s"))))
    return out


def load_results(results_dir=RESULTS_DIR, include_quick: bool = False) -> List[Dict[str, object]]:
    """Every record from every readable JSON file in ``results_dir``."""
    recs: List[Dict[str, object]] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            print("history: skipping unreadable %s" % path.name, file=sys.stderr)
            continue
        for r in records_from_json(data, path.name):
            if include_quick or not r["quick"]:
                recs.append(r)
    recs.sort(key=lambda r: (str(r["workload"]), str(r["stamp"] or r["date"]), str(r["kind"]),
                             str(r["precision"])))
    return recs


def _f(v, spec):
    return "-" if v is None else spec % v


def format_tables(recs: List[Dict[str, object]]) -> str:
    """One Markdown table per workload."""
    by: Dict[str, List[Dict[str, object]]] = {}
    for r in recs:
        by.setdefault(str(r["workload"]), []).append(r)
    lines: List[str] = []
    for wl in sorted(by):
        lines.append("### %s" % wl)
        lines.append("")
        lines.append("| date | sha | host | kind | precision | median s | Msub-paths/s |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in by[wl]:
            tp = r.get("throughput")
            lines.append("| %s | %s | %s | %s%s | %s | %s | %s |" % (
                r["date"], r["sha"], r["host"], r["kind"], " (quick)" if r.get("quick") else "",
                r["precision"] or "-", _f(r.get("median_s"), "%.4f"), _f(None if tp is None else tp / 1e6, "%.2f")))
        lines.append("")
    return "\n".join(lines)


def plot(recs: List[Dict[str, object]], png) -> Optional[Path]:
    """Throughput per run (x: runs in date order) for every workload."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    def yval(r):
        # start-up runs are about seconds, not throughput
        if r.get("kind") == "startup":
            return r.get("median_s")
        return None if r.get("throughput") is None else r["throughput"] / 1e6

    wls = sorted({str(r["workload"]) for r in recs if yval(r) is not None})
    if not wls:
        return None
    runs = sorted({(str(r["stamp"] or r["date"]), r["sha"], r["file"]) for r in recs})
    xpos = {k: i for i, k in enumerate(runs)}
    n = len(wls)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, wl in zip(axes.ravel(), wls):
        series: Dict[str, List] = {}
        for r in recs:
            if str(r["workload"]) == wl and yval(r) is not None:
                key = "%s %s" % (r["kind"], r["precision"])
                series.setdefault(key, []).append((xpos[(str(r["stamp"] or r["date"]), r["sha"], r["file"])],
                                                   yval(r)))
        for key, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.set_title(wl)
        ax.set_ylabel("seconds" if all(k.startswith("startup") for k in series) else "Msub-paths/s")
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(["%s\n%s" % (k[0][:10], k[1]) for k in runs], fontsize=6, rotation=45, ha="right")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    from benchmarks.envinfo import save_figure
    return save_figure(fig, png)


def main(argv=None) -> int:
    from benchmarks import _cli
    return _cli.guarded_main("benchmarks.history", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    from benchmarks import _cli
    ap = _cli.UsageParser(prog="python -m benchmarks.history", description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS_DIR))
    ap.add_argument("--png", default=None, help="plot path (default RESULTS/history.png)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--include-quick", action="store_true", help="also show quick-mode (CI) runs")
    opts = ap.parse_args(argv)
    if not os.path.isdir(opts.results):
        raise _cli.usage_error("argument --results: %s: no such directory" % opts.results)
    if opts.png is not None and (not opts.png or os.path.isdir(opts.png)):
        raise _cli.usage_error("argument --png: %r is a directory or empty" % opts.png)
    recs = load_results(opts.results, include_quick=opts.include_quick)
    if not recs:
        print("history: no results in %s" % opts.results, file=sys.stderr)
        return 0
    print(format_tables(recs))
    if not opts.no_plot:
        out = plot(recs, opts.png or Path(opts.results) / "history.png")
        if out:
            print("history: wrote %s" % out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
