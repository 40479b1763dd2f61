"""Port versus nanoBragg.c, alternating runs on the same workload.

    python -m benchmarks.vs_c [--workloads W1 W2 W3 W4] [--reps 3] [--threads 2]
                              [--precision double single] [--out table.md]
                              [--json results.json] [--budget 570] [--quick]

For every repetition and workload the C program (``$NB_C_BIN``, with
``OMP_NUM_THREADS=N``) and the port (``python -m nbnumba.cli ... -threads N
-precision P``) run one after the other (the order flips every repetition),
each in a fresh directory.  Reported per workload and precision: median wall
time, throughput (sub-paths/s = pixels x steps / time, steps = sources x mosaic
domains x phi steps x oversample^2 parsed from the programs' stdout), peak RSS
of the child (GNU time, else ``os.wait4``), port/C speed ratio (C time / port time: > 1 means
the port is faster), CPU seconds (user + sys of the child, less sensitive
than wall time to other load on the machine), the 1-minute load average seen
during the runs, and correlation and max relative error of the float images
(port vs C; float32 port vs float64 port).

Also measured: interpreter + import start-up (``python -c 'import
nbnumba.cli'``), the 64x64 CLI start-up case, and for W1 the port inside one
warm process (parse + model + kernel + statistics + files; and the kernel
alone), i.e. excluding interpreter start-up.

Repetitions run "rep-major" (rep 1 of every workload, then rep 2, ...); a
further repetition is started only if the last one fits in what is left of
``--budget`` seconds (0 = no limit), so a re-run stays within ~10 minutes.

Without ``NB_C_BIN`` (or ``--c-bin``) the C runs are skipped and the table
says so.  The Markdown table goes to stdout and ``--out``; everything to
``--json`` (default ``benchmarks/results/vs_c-<date>-<sha>-<host>.json``).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from benchmarks import _cli
from benchmarks import envinfo
from benchmarks import workloads as W

DEFAULT_BUDGET_S = 570.0
REL_FLOOR = 1e-3          # max-rel-error over pixels above this fraction of the max
RSS_SLACK_MB = 300.0      # W3 memory target: 2 x image bytes + 300 MB
EXIT_C = 6                # the C program misbehaved (as nb-compare's runner failure)


# ---------------------------------------------------------------------------
# helpers (unit-tested in tests/test_benchmarks_quick.py)
# ---------------------------------------------------------------------------
def c_binary(explicit: Optional[str] = None) -> Optional[str]:
    """The C program to compare with, or None (unset or not executable)."""
    path = explicit or os.environ.get("NB_C_BIN") or ""
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else None


def throughput(subpaths: Optional[int], seconds: Optional[float]) -> Optional[float]:
    if not subpaths or not seconds or seconds <= 0:
        return None
    return subpaths / seconds


def speed_ratio(c_s: Optional[float], port_s: Optional[float]) -> Optional[float]:
    """C time / port time: how many times faster the port is (> 1: faster)."""
    if not c_s or not port_s or port_s <= 0:
        return None
    return c_s / port_s


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (1.0 when both are identical constants)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return float("nan")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    with np.errstate(all="ignore"):
        da, db = a - a.mean(), b - b.mean()
        na, nb = math.sqrt(float(da @ da)), math.sqrt(float(db @ db))
    if not (math.isfinite(na) and math.isfinite(nb)):
        return float("nan")
    if na == 0.0 or nb == 0.0:
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float(da @ db) / (na * nb)


def max_rel_error(test: np.ndarray, ref: np.ndarray, floor: float = REL_FLOOR) -> float:
    """max |test - ref| / |ref| over pixels where ref > floor * max(ref)."""
    t = np.asarray(test, dtype=np.float64).ravel()
    r = np.asarray(ref, dtype=np.float64).ravel()
    if t.shape != r.shape:
        return float("nan")
    m = float(r.max()) if r.size else 0.0
    if m <= 0.0:
        return 0.0 if np.array_equal(t, r) else float("inf")
    if not math.isfinite(m):
        return float("nan")
    sel = r > floor * m
    if not sel.any():
        return float("nan")
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(t[sel] - r[sel]) / np.abs(r[sel])))


def rss_target_mb(pixels: int) -> float:
    """W3 memory target: 2 x output float-image bytes + 300 MB."""
    return 2.0 * pixels * 4 / 1e6 + RSS_SLACK_MB


def fmt(v, spec: str = "%.3g", none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return spec % v


_GNU_TIME: Optional[str] = None
_GNU_TIME_CHECKED = False


def gnu_time() -> Optional[str]:
    """Path of GNU time (``-f %M`` gives the child's own peak RSS), or None.

    ``os.wait4`` alone over-reports small programs: Linux carries the forking
    (Python) process's peak RSS into the child's ``ru_maxrss`` across exec.
    GNU time is a tiny process, so the floor it adds is ~2 MB.
    """
    global _GNU_TIME, _GNU_TIME_CHECKED
    if not _GNU_TIME_CHECKED:
        _GNU_TIME_CHECKED = True
        for cand in ("/usr/bin/time", shutil.which("time") or ""):
            if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
                try:
                    with tempfile.NamedTemporaryFile() as tf:
                        r = subprocess.run([cand, "-f", "%M", "-o", tf.name, "true"], capture_output=True,
                                           timeout=10)
                        if r.returncode == 0 and Path(tf.name).read_text().strip().isdigit():
                            _GNU_TIME = cand
                            break
                except Exception:
                    pass
    return _GNU_TIME


def run_timed(cmd: Sequence[str], cwd, env: Dict[str, str], timeout: float = 1800.0) -> Dict[str, object]:
    """Run ``cmd``; wall time, exit status, peak RSS in MB, stdout.

    Peak RSS comes from GNU time when available (``rss_method`` 'gnu-time'),
    else from ``os.wait4`` (``'wait4'``: an upper bound, floored at this
    process's own peak RSS).
    """
    out_path = Path(cwd) / "stdout.txt"
    err_path = Path(cwd) / "stderr.txt"
    rss_path = Path(cwd) / "maxrss.txt"
    gt = gnu_time()
    full = ([gt, "-f", "%M", "-o", str(rss_path)] if gt else []) + list(cmd)
    with open(out_path, "wb") as fo, open(err_path, "wb") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen(full, cwd=str(cwd), env=env, stdout=fo, stderr=fe)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    rss, method = ru.ru_maxrss / 1024.0, "wait4"
    if gt:
        try:
            rss, method = int(rss_path.read_text().split()[-1]) / 1024.0, "gnu-time"
        except (OSError, ValueError, IndexError):
            pass
    stdout = out_path.read_text(errors="replace")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "rc": p.returncode, "rss_mb": rss,
            "rss_method": method, "load1": _load1(),
            "stdout": stdout, "stderr": err_path.read_text(errors="replace")[-2000:]}


def _load1() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def read_float_image(path) -> Optional[np.ndarray]:
    try:
        return np.fromfile(str(path), dtype="<f4")
    except (OSError, ValueError):
        return None


def check_c_image(cbin: str, name: str, args: Sequence[str], img: Optional[np.ndarray]) -> None:
    """A C run that exited 0 must have written a usable float image (right size,
    finite values); otherwise its time means nothing: a one-line error."""
    prog = os.path.basename(cbin)
    s, f = W.detector_shape(args)
    if img is None:
        raise _cli.ToolError("C program %s (%s) exited 0 but wrote no float image (-floatfile)"
                             % (prog, name), EXIT_C)
    if img.size != s * f:
        raise _cli.ToolError("C program %s (%s) wrote a float image of %d values, expected %dx%d"
                             % (prog, name, img.size, f, s), EXIT_C)
    if not np.isfinite(img).all():
        raise _cli.ToolError("C program %s (%s) wrote non-finite values in its float image"
                             % (prog, name), EXIT_C)


def port_cmd() -> List[str]:
    return [sys.executable, "-m", "nbnumba.cli"]


def child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONPATH", str(envinfo.REPO_ROOT))
    # a developer's `nbnumba --serve` must not time the port for us (--served does that on purpose)
    env["NBNUMBA_SERVER"] = "0"
    return env


def start_server(env: Dict[str, str], work: Path) -> Dict[str, str]:
    """Start a private `nbnumba --serve` (its socket under ``work``); the
    environment whose port runs go through it."""
    senv = dict(env, TMPDIR=str(work / "srv"), NBNUMBA_SERVER="1")
    senv.pop("XDG_RUNTIME_DIR", None)
    (work / "srv").mkdir(exist_ok=True)
    r = subprocess.run(port_cmd() + ["--serve", "start", "--idle-timeout", "900"], env=senv,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("nbnumba --serve start failed: %s" % r.stderr.strip())
    return senv


def stop_server(senv: Dict[str, str]) -> None:
    subprocess.run(port_cmd() + ["--serve", "stop"], env=senv, capture_output=True)


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------
def measure_startup(threads: int, reps: int, work: Path) -> Dict[str, object]:
    """Import time and the 64x64 CLI case (warm kernel cache), medians."""
    env = child_env(threads)
    imp, cli = [], []
    for i in range(reps):
        d = Path(tempfile.mkdtemp(dir=str(work)))
        imp.append(run_timed([sys.executable, "-c", "import nbnumba.cli"], d, env)["wall_s"])
        args = W.argv("W1", d, pixels=64, precision="double", threads=threads)
        r = run_timed(port_cmd() + args, d, env)
        if r["rc"] == 0:
            cli.append(r["wall_s"])
        shutil.rmtree(d, ignore_errors=True)
    return {"import_s": median(imp), "import_runs": imp, "cli64_s": median(cli), "cli64_runs": cli}


def warm_up(names: Sequence[str], precisions: Sequence[str], threads: int, files, work: Path) -> float:
    """Tiny untimed port runs so numba's on-disk cache is compiled/loaded."""
    t0 = time.perf_counter()
    env = child_env(threads)
    for p in precisions:
        for n in names:
            d = Path(tempfile.mkdtemp(dir=str(work)))
            wl = W.get(n)
            for extra in ((), wl.parity_flags) if wl.parity_flags else ((),):
                run_timed(port_cmd() + W.argv(n, d, pixels=8, precision=p, threads=threads, files=files,
                                              extra=extra), d, env)
            shutil.rmtree(d, ignore_errors=True)
    return time.perf_counter() - t0


def measure_inprocess(name: str, precision: str, threads: int, reps: int, files, work: Path,
                      quick: bool) -> Dict[str, object]:
    """The port inside this (warm) process: whole CLI path and kernel alone."""
    import nbnumba
    from nbnumba.api import render_float
    W.set_threads(threads)
    d = Path(tempfile.mkdtemp(dir=str(work)))
    args = W.argv(name, d, quick=quick, precision=precision, threads=threads, files=files)
    total, kern, model_s = [], [], []
    try:
        for i in range(reps + 1):                   # first round warms caches
            t0 = time.perf_counter()
            res = nbnumba.simulate_argv(args, cwd=str(d))
            nbnumba.write_outputs(res, res.model.cfg, quiet=True)
            t1 = time.perf_counter()
            model = W.build_model_for(args, d)
            t2 = time.perf_counter()
            render_float(model)
            t3 = time.perf_counter()
            if i:
                total.append(t1 - t0)
                model_s.append(t2 - t1)
                kern.append(t3 - t2)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"total_s": median(total), "kernel_s": median(kern), "model_s": median(model_s),
            "total_runs": total, "kernel_runs": kern, "subpaths": W.model_subpaths(model)}


def quality_image(name, precision, threads, files, quick, flags, work: Path, env, log):
    """Untimed port run with ``flags`` (e.g. -c_parity) whose image is compared
    with C's, for workloads where the port's default geometry differs from
    nanoBragg.c's on purpose."""
    d = Path(tempfile.mkdtemp(dir=str(work)))
    try:
        r = run_timed(port_cmd() + W.argv(name, d, quick=quick, precision=precision, threads=threads,
                                          files=files, extra=flags), d, env)
        if r["rc"] != 0:
            log("vs_c: %s %s %s quality run failed: %s" % (name, precision, " ".join(flags), r["stderr"][-300:]))
            return None
        return read_float_image(d / "float.bin")
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Cell:
    """Accumulates the runs of one (workload, program/precision) variant."""

    def __init__(self):
        self.walls: List[float] = []
        self.cpus: List[float] = []
        self.loads: List[float] = []
        self.rss: List[float] = []
        self.info: Dict[str, int] = {}
        self.errors: List[str] = []
        self.same: List[bool] = []      # served runs: float image identical to in-process


def compare_images(imgs: Dict[str, np.ndarray], precisions: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Correlation / max rel error: port vs C, float32 port vs float64 port."""
    out: Dict[str, Dict[str, float]] = {}
    for p in precisions:
        a = imgs.get(p)
        if a is None:
            continue
        m: Dict[str, float] = {}
        if imgs.get("C") is not None:
            m["corr_vs_c"] = correlation(a, imgs["C"])
            m["maxrel_vs_c"] = max_rel_error(a, imgs["C"])
        if p == "single" and imgs.get("double") is not None:
            m["corr_vs_f64"] = correlation(a, imgs["double"])
            m["maxrel_vs_f64"] = max_rel_error(a, imgs["double"])
        out[p] = m
    return out


def run_all(opts) -> Dict[str, object]:
    t_start = time.perf_counter()
    cbin = _cli.executable(opts.c_bin, "--c-bin") if opts.c_bin else c_binary()
    names = [W.get(n).name for n in opts.workloads]
    threads = int(opts.threads)
    files = W.input_files([n[:2] for n in names if n[:2] in ("W3", "W4")]) if names else {}
    work = Path(tempfile.mkdtemp(prefix="nbnumba-vs_c-"))
    env = child_env(threads)
    c_threads = int(opts.c_threads or threads)
    c_env = child_env(c_threads)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if not opts.silent else (lambda *a: None)
    if cbin is None:
        log("vs_c: NB_C_BIN is not set (or not executable): C runs skipped, port timings only")
    result: Dict[str, object] = {
        "kind": "vs_c", "machine": envinfo.machine_facts(),
        # the program's name only: no path of this machine goes into a committed result
        "c_bin": os.path.basename(cbin) if cbin else None, "threads": threads,
        "c_threads": c_threads,
        "workloads": names, "precisions": list(opts.precision), "reps_requested": opts.reps,
        "budget_s": opts.budget, "quick": bool(opts.quick), "w3_data": W.w3_data_source(),
        "command": "python -m benchmarks.vs_c " + " ".join(
            os.path.basename(a) if os.path.isabs(a) else a for a in opts.argv_used),
        "rss_method": "gnu-time" if gnu_time() else "wait4",
    }
    senv = None
    try:
        result["warmup_s"] = warm_up(names, opts.precision, threads, files, work)
        if opts.served:
            senv = start_server(env, work)
            result["served"] = True
        log("vs_c: warm-up %.1f s" % result["warmup_s"])
        if not opts.no_startup:
            result["startup"] = measure_startup(threads, 3, work)
            log("vs_c: start-up: import %s s, 64x64 CLI %s s" % (
                fmt(result["startup"]["import_s"]), fmt(result["startup"]["cli64_s"])))
        ports = list(opts.precision) + ([p + "/served" for p in opts.precision] if opts.served else [])
        variants = (["C"] if cbin else []) + ports
        cells = {(n, v): Cell() for n in names for v in variants}
        quality: Dict[str, Dict[str, Dict[str, float]]] = {}
        reps_done = 0
        served_ref: Dict[tuple, np.ndarray] = {}
        for rep in range(opts.reps):
            t_rep = time.perf_counter()
            for n in names:
                wl = W.get(n)
                order = variants if rep % 2 == 0 else variants[::-1]
                imgs: Dict[str, np.ndarray] = {}
                for v in order:
                    d = Path(tempfile.mkdtemp(dir=str(work)))
                    if v == "C":
                        cmd = [cbin] + W.argv(n, d, quick=opts.quick, files=files, for_c=True)
                    else:
                        timed_extra = wl.parity_flags if opts.parity_timed else ()
                        cmd = port_cmd() + W.argv(n, d, quick=opts.quick, precision=v.split("/")[0],
                                                  threads=threads, files=files, extra=timed_extra)
                    served = v.endswith("/served")
                    r = run_timed(cmd, d, c_env if v == "C" else (senv if served else env))
                    if served:      # GNU time sees the client; the run's memory and CPU are the server child's
                        r["rss_mb"] = None
                        r["cpu_s"] = None
                    cell = cells[(n, v)]
                    if v == "C" and r["rc"] == 0:
                        check_c_image(cbin, n, cmd[1:], read_float_image(d / "float.bin"))
                    if r["rc"] != 0:
                        cell.errors.append("rc=%s: %s" % (r["rc"], r["stderr"].strip().splitlines()[-1:]))
                        log("vs_c: %s %s FAILED rc=%s %s" % (n, v, r["rc"], r["stderr"][-300:]))
                    else:
                        cell.walls.append(r["wall_s"])
                        if r["cpu_s"] is not None:
                            cell.cpus.append(r["cpu_s"])
                        if r["load1"] is not None:
                            cell.loads.append(r["load1"])
                        if r["rss_mb"] is not None:
                            cell.rss.append(r["rss_mb"])
                        cell.info = cell.info or W.parse_run_info(r["stdout"])
                        if served:
                            # a served run must give the in-process run's file, bit for bit
                            same = cells[(n, v)].same
                            mine = read_float_image(d / "float.bin")
                            ref = served_ref.get((n, v.split("/")[0]))
                            if ref is not None and mine is not None:
                                same.append(bool(np.array_equal(mine, ref)))
                        elif v != "C":
                            served_ref[(n, v)] = read_float_image(d / "float.bin")
                        if n not in quality and not served:
                            imgs[v] = read_float_image(d / "float.bin")
                            if v != "C" and wl.parity_flags and not opts.parity_timed:
                                imgs[v] = quality_image(n, v, threads, files, opts.quick, wl.parity_flags,
                                                        work, env, log)
                        log("vs_c: rep %d %-6s %-6s %7.2f s wall %7s s cpu %6s MB  load %s" % (
                            rep + 1, n, v, r["wall_s"], fmt(r["cpu_s"], "%.2f", "-"), fmt(r["rss_mb"], "%.0f", "-"),
                            fmt(r["load1"], "%.1f")))
                    shutil.rmtree(d, ignore_errors=True)
                if n not in quality:
                    quality[n] = compare_images(imgs, opts.precision)
                imgs.clear()
            reps_done = rep + 1
            rep_s = time.perf_counter() - t_rep
            elapsed = time.perf_counter() - t_start
            if opts.budget and rep + 1 < opts.reps and elapsed + rep_s > opts.budget:
                log("vs_c: stopping after %d repetition(s): another would pass the %.0f s budget"
                    % (reps_done, opts.budget))
                break
        result["reps_done"] = reps_done
        inproc: Dict[str, Dict[str, object]] = {}
        for n in opts.inprocess:
            if n in names:
                inproc[n] = {}
                for p in opts.precision:
                    inproc[n][p] = measure_inprocess(n, p, threads, max(1, min(opts.reps, 5)), files,
                                                     work, opts.quick)
                    log("vs_c: in-process %s %s: total %s s, kernel %s s" % (
                        n, p, fmt(inproc[n][p]["total_s"]), fmt(inproc[n][p]["kernel_s"])))
        result["inprocess"] = inproc
        result["rows"] = make_rows(names, ports, cells, quality, cbin is not None, opts.parity_timed)
        result["parity_timed"] = bool(opts.parity_timed)
        result["targets"] = evaluate_targets(result)
    finally:
        if senv is not None:
            stop_server(senv)
        shutil.rmtree(work, ignore_errors=True)
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


def make_rows(names, precisions, cells, quality, have_c: bool, parity_timed: bool = False) -> List[Dict[str, object]]:
    rows = []
    for n in names:
        c = cells.get((n, "C"))
        c_med = median(c.walls) if c else None
        for p in precisions:
            cell = cells[(n, p)]
            info = cell.info or (c.info if c else {})
            sub = info.get("subpaths")
            if c and c.info.get("subpaths") and sub and c.info["subpaths"] != sub:
                cell.errors.append("sub-path counts differ: C %s, port %s" % (c.info["subpaths"], sub))
            p_med = median(cell.walls)
            row = {
                "workload": n, "precision": p, "pixels": info.get("pixels"), "steps": info.get("steps"),
                "subpaths": sub, "reps": len(cell.walls), "port_flags": list(W.get(n).parity_flags),
                "port_flags_timed": bool(parity_timed),
                "c_s": c_med, "port_s": p_med, "c_runs": list(c.walls) if c else [],
                "port_runs": list(cell.walls), "speedup": speed_ratio(c_med, p_med),
                "c_cpu_s": median(c.cpus) if c else None, "port_cpu_s": median(cell.cpus),
                "cpu_ratio": speed_ratio(median(c.cpus) if c else None, median(cell.cpus)),
                "load1_max": max((c.loads if c else []) + cell.loads, default=None),
                "c_subpaths_per_s": throughput(sub, c_med), "port_subpaths_per_s": throughput(sub, p_med),
                "c_rss_mb": max(c.rss) if c and c.rss else None,
                "port_rss_mb": max(cell.rss) if cell.rss else None,
                "errors": cell.errors + (c.errors if c else []),
            }
            if p.endswith("/served"):
                row["served_identical"] = all(cell.same) if cell.same else None
            row.update(quality.get(n, {}).get(p, {}))
            rows.append(row)
    return rows


def evaluate_targets(res: Dict[str, object]) -> List[Dict[str, object]]:
    """The performance targets of docs/performance.md, met or missed."""
    rows = {(r["workload"], r["precision"]): r for r in res.get("rows", [])}
    out: List[Dict[str, object]] = []

    def add(name, value, target, met, note=""):
        out.append({"target": name, "value": value, "goal": target,
                    "met": None if met is None else bool(met), "note": note})

    for n in ("W2", "W3"):
        r = rows.get((n, "double"))
        if r:
            s = r.get("speedup")
            add("%s float64 port/C speed >= 1.5x" % n, s, 1.5, None if s is None else s >= 1.5)
        r = rows.get((n, "single"))
        if r:
            s = r.get("speedup")
            add("%s float32 port/C speed >= 4x" % n, s, 4.0, None if s is None else s >= 4.0)
            c, e = r.get("corr_vs_f64"), r.get("maxrel_vs_f64")
            add("%s float32 vs float64 correlation >= 0.99999" % n, c, 0.99999,
                None if c is None else c >= 0.99999)
            add("%s float32 vs float64 max rel error <= 1e-3" % n, e, 1e-3, None if e is None else e <= 1e-3)
    ip = (res.get("inprocess") or {}).get("W1", {}).get("double")
    r = rows.get(("W1", "double"))
    if ip and r:
        s = speed_ratio(r.get("c_s"), ip.get("total_s"))
        add("W1 float64 port/C speed excluding start-up >= 1.0x", s, 1.0, None if s is None else s >= 1.0,
            "C wall vs port in one warm process (parse+model+kernel+stats+files)")
    st = res.get("startup") or {}
    if st.get("cli64_s") is not None:
        add("start-up: python -m nbnumba.cli 64x64 < 1.5 s", st["cli64_s"], 1.5, st["cli64_s"] < 1.5)
    for p in ("double", "single"):
        r = rows.get(("W3", p))
        if r and r.get("port_rss_mb") and r.get("pixels"):
            lim = rss_target_mb(r["pixels"])
            add("W3 %s peak RSS <= 2 x image + 300 MB (%.0f MB)" % (p, lim), r["port_rss_mb"], lim,
                r["port_rss_mb"] <= lim)
    return out


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------
def markdown(res: Dict[str, object]) -> str:
    m = res.get("machine", {})
    lines = []
    ct = res.get("c_threads")
    lines.append("Measured %s on %s (%s, %s CPUs, load average at start %s), git %s%s, %d thread(s)%s, "
                 "%s repetition(s)%s; W3 data: %s." % (
                     m.get("datetime", "?"), m.get("host", "?"), m.get("cpu_model", "?"), m.get("cpu_count", "?"),
                     m.get("loadavg"), m.get("git_sha", "?"), " (dirty)" if m.get("git_dirty") else "",
                     res.get("threads", 0),
                     "" if not ct or ct == res.get("threads") else " (C: %d)" % ct, res.get("reps_done", "?"),
                     ", quick mode" if res.get("quick") else "", res.get("w3_data")))
    lines.append("")
    if not res.get("c_bin"):
        lines.append("**NB_C_BIN not set: C runs skipped; port timings only.**")
        lines.append("")
    lines.append("| workload | precision | pixels x steps | C s | port s | port/C speed | C Msub/s | port Msub/s "
                 "| C cpu s | port cpu s | C RSS MB | port RSS MB | corr vs C | max rel err vs C | corr vs f64 "
                 "| max rel err vs f64 | reps | max load |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res.get("rows", []):
        mega = lambda v: None if v is None else v / 1e6
        lines.append("| %s | %s | %s x %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["workload"] + ((" (%s%s)" % (" ".join(r["port_flags"]), "" if r.get("port_flags_timed") else
                                            " for corr/err")) if r.get("port_flags") else ""),
            r["precision"], fmt(r.get("pixels"), "%d"), fmt(r.get("steps"), "%d"),
            fmt(r.get("c_s"), "%.3f"), fmt(r.get("port_s"), "%.3f"), fmt(r.get("speedup"), "%.2fx"),
            fmt(mega(r.get("c_subpaths_per_s")), "%.1f"), fmt(mega(r.get("port_subpaths_per_s")), "%.1f"),
            fmt(r.get("c_cpu_s"), "%.2f"), fmt(r.get("port_cpu_s"), "%.2f"), fmt(r.get("c_rss_mb"), "%.0f"), fmt(r.get("port_rss_mb"), "%.0f"),
            fmt(r.get("corr_vs_c"), "%.7f"), fmt(r.get("maxrel_vs_c"), "%.2e"),
            fmt(r.get("corr_vs_f64"), "%.8f", "-"), fmt(r.get("maxrel_vs_f64"), "%.2e", "-"), r.get("reps"),
            fmt(r.get("load1_max"), "%.1f")))
    errs = [(r["workload"], r["precision"], e) for r in res.get("rows", []) for e in r.get("errors", [])]
    for w, p, e in errs:
        lines.append("")
        lines.append("- error %s %s: %s" % (w, p, e))
    for r in res.get("rows", []):
        if r["precision"].endswith("/served"):
            lines.append("")
            lines.append("- %s %s: through a private `nbnumba --serve` (client process timed; its RSS is "
                         "not the run's); float image identical to the in-process run's: %s" % (
                             r["workload"], r["precision"],
                             {True: "yes", False: "**no**", None: "n/a"}[r.get("served_identical")]))
    st = res.get("startup")
    ip = res.get("inprocess") or {}
    if st or ip:
        lines.append("")
    if st:
        lines.append("- start-up: `python -c 'import nbnumba.cli'` %s s; `python -m nbnumba.cli` W1 64x64 "
                     "(warm cache) %s s (median of %d)" % (fmt(st.get("import_s"), "%.3f"),
                                                          fmt(st.get("cli64_s"), "%.3f"), len(st.get("cli64_runs", []))))
    rows = {(r["workload"], r["precision"]): r for r in res.get("rows", [])}
    for n, per in ip.items():
        for p, v in per.items():
            r = rows.get((n, p), {})
            imp = (st or {}).get("import_s")
            sub = r.get("port_s") - imp if (r.get("port_s") and imp) else None
            lines.append("- %s %s excluding start-up: in one warm process %s s total (model %s s, kernel %s s); "
                         "CLI wall minus import time %s s; C %s s -> port/C %s (in-process), %s (kernel only)" % (
                             n, p, fmt(v.get("total_s"), "%.3f"), fmt(v.get("model_s"), "%.3f"),
                             fmt(v.get("kernel_s"), "%.3f"), fmt(sub, "%.3f"), fmt(r.get("c_s"), "%.3f"),
                             fmt(speed_ratio(r.get("c_s"), v.get("total_s")), "%.2fx"),
                             fmt(speed_ratio(r.get("c_s"), v.get("kernel_s")), "%.2fx")))
    if res.get("targets"):
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("|---|---|---|")
        for t in res["targets"]:
            v = t["value"]
            vs = fmt(v, "%.3g") if not (isinstance(v, float) and v < 1e-2 and v > 0) else "%.2e" % v
            if "correlation" in t["target"] and v is not None:
                vs = "%.8f" % v
            lines.append("| %s | %s | %s |" % (t["target"], vs,
                                                {True: "yes", False: "**no**", None: "n/a"}[t["met"]]))
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = _cli.UsageParser(prog="python -m benchmarks.vs_c", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", nargs="+", type=_cli.workload_name, default=list(W.MAIN_WORKLOADS),
                    help="workload names (default: %s)" % " ".join(W.MAIN_WORKLOADS))
    ap.add_argument("--reps", type=_cli.positive_int, default=3, help="repetitions (default 3)")
    ap.add_argument("--threads", type=_cli.positive_int, default=os.cpu_count() or 1,
                    help="threads of each program (the C's too, unless --c-threads; default: all CPUs)")
    ap.add_argument("--precision", nargs="+", default=["double", "single"], choices=["double", "single"],
                    help="default: both")
    ap.add_argument("--out", help="also write the Markdown table to this file")
    ap.add_argument("--json", help="JSON results path (default benchmarks/results/vs_c-<date>-<sha>-<host>.json)")
    ap.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    ap.add_argument("--budget", type=_cli.nonneg_float, default=DEFAULT_BUDGET_S,
                    help="seconds; no further repetition starts that would pass it (default %g; 0: no limit)"
                    % DEFAULT_BUDGET_S)
    ap.add_argument("--quick", action="store_true", help="shrink workloads to <= 128x128 (like NB_BENCH_QUICK)")
    ap.add_argument("--inprocess", nargs="*", type=_cli.workload_name, default=["W1"],
                    help="workloads also timed inside one warm process (default W1)")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up measurements")
    ap.add_argument("--c-bin", help="C program (default $NB_C_BIN)")
    ap.add_argument("--c-threads", type=_cli.positive_int, default=None,
                    help="OMP_NUM_THREADS for C (default: --threads; 1 avoids nanoBragg.c's data race "
                         "under -interpolate, see docs/performance.md)"),
    ap.add_argument("--parity-timed", action="store_true",
                    help="time the port with the workload's parity flags (W3: -c_parity); by default the "
                         "port is timed in its default mode and an extra untimed parity run gives the "
                         "image compared with C")
    ap.add_argument("--served", action="store_true",
                    help="also time each precision through a private `nbnumba --serve` (rows "
                         "'double/served'; their images are checked against the in-process runs')")
    ap.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    opts = ap.parse_args(argv)
    if opts.c_bin is not None:
        _cli.executable(opts.c_bin, "--c-bin")
    if opts.json and opts.no_json:
        raise _cli.usage_error("argument --json: not allowed with --no-json")
    _cli.check_output(opts.out, "--out")
    if not opts.no_json:
        _cli.check_output(opts.json, "--json")
    opts.argv_used = list(sys.argv[1:] if argv is None else argv)
    opts.quick = opts.quick or W.is_quick()
    return opts


def main(argv=None) -> int:
    return _cli.guarded_main("benchmarks.vs_c", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    opts = parse_args(argv)
    res = run_all(opts)
    table = markdown(res)
    print(table)
    if opts.out:
        _cli.write_text(opts.out, table)
    if not opts.no_json:
        m = res.get("machine", {})
        when = _dt.datetime.fromisoformat(m["datetime"]) if m.get("datetime") else None
        path = Path(opts.json) if opts.json else envinfo.RESULTS_DIR / envinfo.result_name(
            prefix="vs_c", suffix="quick" if opts.quick else "", when=when, sha=m.get("git_sha"))
        path.parent.mkdir(parents=True, exist_ok=True)
        _cli.write_text(path, _cli.json_text(res, indent=2, default=float))
        print("vs_c: wrote %s (%.0f s)" % (path, res["elapsed_s"]), file=sys.stderr)
    bad = [e for r in res.get("rows", []) for e in r.get("errors", [])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
