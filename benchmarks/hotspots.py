"""Where a kernel's CPU time goes, instruction by instruction, on a machine
without hardware counters (a VM: ``perf stat`` shows no cycles there).

    python -m benchmarks.hotspots --workload W3 --pixels 256
    python -m benchmarks.hotspots --autodiff issue512 --top 12

A child process compiles the kernels into an empty numba cache (numba keeps
the object code of functions it compiled, not of those it loaded), renders
the workload once, then again and again for ``--seconds`` under
``perf record -e cpu-clock`` (a timer, so it works in a guest).  The child
writes the object code of the image loop (``render_rows``, or
``render_blocks`` on a block-path workload such as W3) or of the
autodiff forward (``forward_jac``) and the address it was loaded at; the
parent disassembles it (``objdump``) and attributes each sampled instruction
pointer to its function and instruction.  Out come, per function, the share
of the kernel's samples and how they split between vector instructions
(ymm/zmm), scalar floating point (xmm) and the rest, then the hottest
``--region``-byte stretches of code with their instruction mix.

What it measured is in docs/performance.md and docs/autodiff_rounds.md ("where the
time goes").  Sampling skid puts a sample on the instruction after the slow
one, so read regions, not single instructions.  Needs ``perf`` and
``objdump`` (binutils); a missing one is a one-line error and exit 2.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import _cli

#: (module, dispatchers) of each target (the image loop the workload takes)
TARGETS = {"image": ("nbnumba.kernels.cpu", "render_rows render_blocks"),
           "autodiff": ("nbnumba.kernels.adjoint", "forward_jac")}

_SYM = re.compile(r"^([0-9a-f]+)\s+\S.*\sF\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s*$")
_INS = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")


def parse_symbols(text):
    """[(name, offset, size, section)] of the function symbols in ``objdump
    -t`` text (offsets within their section)."""
    out = []
    for line in text.splitlines():
        m = _SYM.match(line)
        if m and int(m.group(3), 16) > 0:
            out.append((m.group(4), int(m.group(1), 16), int(m.group(3), 16), m.group(2)))
    return sorted(out, key=lambda s: (s[3], s[1]))


def parse_disassembly(text):
    """[(section, offset, instruction text)] of ``objdump -d
    --no-show-raw-insn`` text."""
    out, section = [], ""
    for line in text.splitlines():
        if line.startswith("Disassembly of section "):
            section = line[len("Disassembly of section "):].rstrip(":").strip()
            continue
        m = _INS.match(line)
        if m and m.group(2).strip():
            out.append((section, int(m.group(1), 16), m.group(2).strip()))
    return out


def samples_in_window(text, t0, t1):
    """Instruction pointers of ``perf script -F time,ip`` lines ("SECONDS: IP")
    whose time lies in [t0, t1] (the timed calls, not the compile before)."""
    ips = []
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) == 2:
            try:
                t, ip = float(parts[0]), int(parts[1], 16)
            except ValueError:
                continue
            if t0 <= t <= t1:
                ips.append(ip)
    return ips


def short_name(symbol):
    """'nbnumba.kernels.cpu._lean_sum' from numba's mangled symbol."""
    i = symbol.find("_ZN")
    if i < 0:
        return symbol
    s, parts, j = symbol[i + 3:], [], 0
    while j < len(s) and s[j].isdigit():
        k = j
        while k < len(s) and s[k].isdigit():
            k += 1
        n = int(s[j:k])
        parts.append(s[k:k + n])
        j = k + n
    prefix = symbol[:i].rstrip(".")
    name = ".".join(p for p in parts if p)
    return (prefix + ":" + name) if prefix else name


def kind(ins):
    """'vector' (ymm/zmm operands), 'scalar-fp' (xmm only) or 'other'."""
    if "ymm" in ins or "zmm" in ins:
        return "vector"
    if "xmm" in ins:
        return "scalar-fp"
    return "other"


def attribute(ips, functions):
    """Samples per function and per offset: ips are absolute addresses,
    functions [(name, start address, size)].  Returns (per-function Counter,
    {name: Counter(offset within the function)}, samples outside all)."""
    funcs = sorted(functions, key=lambda f: f[1])
    starts = [f[1] for f in funcs]
    per_fn, per_off, outside = collections.Counter(), collections.defaultdict(collections.Counter), 0
    for ip in ips:
        i = bisect.bisect_right(starts, ip) - 1
        if i >= 0 and ip < funcs[i][1] + funcs[i][2]:
            per_fn[funcs[i][0]] += 1
            per_off[funcs[i][0]][ip - funcs[i][1]] += 1
        else:
            outside += 1
    return per_fn, per_off, outside


def summarise(per_fn, per_off, insns, region=512, top=8):
    """Report rows: per function (share of the kernel's samples, split by
    instruction kind) and its hottest regions.  insns: {name: [(offset,
    text)]} with offsets relative to the function's start."""
    total = sum(per_fn.values()) or 1
    rows = []
    for name, n in per_fn.most_common(top):
        ins = insns.get(name, [])
        text_at = dict(ins)
        split = collections.Counter()
        for off, c in per_off[name].items():
            split[kind(text_at.get(off, ""))] += c
        regions = collections.Counter()
        for off, c in per_off[name].items():
            regions[off // region] += c
        hot = []
        for r, c in regions.most_common(4):
            seg = [t for o, t in ins if r * region <= o < (r + 1) * region]
            hot.append(dict(offset=r * region, share=c / total, instructions=len(seg),
                            vector=sum(kind(t) == "vector" for t in seg),
                            divides=sum("div" in t.split()[0] for t in seg if t.split()),
                            gathers=sum("gather" in t for t in seg)))
        r0 = regions.most_common(1)[0][0] if regions else 0
        listing = [(o, per_off[name].get(o, 0) / total, t) for o, t in ins
                   if r0 * region <= o < (r0 + 1) * region]
        rows.append(dict(function=name, share=n / total,
                         split={k: v / n for k, v in split.items()}, regions=hot,
                         listing=listing))
    return rows


# ---- the child: runs the workload and writes the kernel's object code ----

class record_libraries:
    """``with record_libraries() as libs:`` keeps the object code of every
    library numba finalizes inside the block and lists the libraries (the
    parallel kernels run their loop bodies from libraries of their own, not
    from the dispatcher's)."""

    def __enter__(self):
        from numba.core import codegen
        self._cls, self._orig, libs = codegen.CPUCodeLibrary, codegen.CPUCodeLibrary.finalize, []
        orig = self._orig

        def finalize(lib):
            if not lib._object_caching_enabled:
                lib.enable_object_caching()
            libs.append(lib)
            return orig(lib)
        self._cls.finalize = finalize
        return libs

    def __exit__(self, *exc):
        self._cls.finalize = self._orig


def library_objects(libs, out):
    """Write each library's object code into directory out; returns
    [{path, entry, address}]: entry, a global function the engine resolves,
    and address, where it was loaded (a code section is loaded as one piece,
    so each symbol of entry's section is at address - entry's offset + its
    own)."""
    objs = []
    for i, lib in enumerate(libs):
        try:
            obj = lib._get_compiled_object()
        except RuntimeError:
            continue
        path = os.path.join(out, "lib%d.o" % i)
        with open(path, "wb") as fh:
            fh.write(obj)
        for name in _defined_functions(path):
            try:
                addr = lib.get_pointer_to_function(name)
            except Exception:
                addr = 0
            if addr:
                objs.append(dict(path=path, entry=name, address=addr))
                break
    return objs


def load_functions(objs):
    """([(label, start address, size)], {label: [(offset, instruction)]}) of
    every function of library_objects' objects; label: the short name and
    the object's index (numba links a copy of each callee into every library)."""
    objdump = _tool("objdump")
    functions, insns = [], {}
    for i, o in enumerate(objs):
        syms = parse_symbols(subprocess.run([objdump, "-t", o["path"]], capture_output=True,
                                            text=True).stdout)
        entry = [s for s in syms if s[0] == o["entry"]]
        if not entry:
            continue
        # the entry's code section is loaded as one piece: its functions only
        base, section = o["address"] - entry[0][1], entry[0][3]
        dis = parse_disassembly(subprocess.run([objdump, "-d", "--no-show-raw-insn", o["path"]],
                                               capture_output=True, text=True).stdout)
        for name, off, size, sec in syms:
            if sec != section:
                continue
            label = "%s@%d" % (short_name(name), i)
            functions.append((label, base + off, size))
            insns[label] = [(x - off, t) for s_, x, t in dis
                            if s_ == section and off <= x < off + size]
    return functions, insns


def _child(a):
    import numpy as np
    rec = record_libraries()
    libs = rec.__enter__()          # for the whole child process
    from benchmarks import workloads as W
    W.set_threads(a.threads)
    work = tempfile.mkdtemp(prefix="nb-hotspots-")
    if a.autodiff:
        from benchmarks import autodiff_perf as P
        from nbnumba import autodiff as AD
        argv, vals = P.case_argv(a.autodiff, a.pixels)
        argv = list(argv) + a.extra.split()
        v = {k: np.asarray(x, dtype=np.float64).reshape(-1) for k, x in vals.items()
             if k != "F_hkl"}
        F = AD.structure_factors(argv)[0].numpy() if vals.get("F_hkl") == "grid" else None
        run = AD._Run(argv, v, tuple(vals), F, keep_jac=True)     # as autodiff_perf's split
        fn, target = run.forward, "autodiff"
    else:
        from nbnumba.api import render_float
        model = W.build_model_for(W.argv(a.workload, work, precision=a.precision,
                                         pixels=a.pixels), work)
        fn, target = (lambda: render_float(model)), "image"
    fn()                                  # compiles (into an empty cache)
    calls, c0, t0 = 0, time.process_time(), time.perf_counter()
    m0 = time.clock_gettime(time.CLOCK_MONOTONIC)     # perf records this clock (-k)
    while calls < 2 or time.perf_counter() - t0 < a.seconds:
        fn()
        calls += 1
    cpu = time.process_time() - c0
    m1 = time.clock_gettime(time.CLOCK_MONOTONIC)
    objs = library_objects(libs, a.out)
    with open(os.path.join(a.out, "child.json"), "w") as fh:
        json.dump(dict(objects=objs, calls=calls, cpu_s=cpu, target=target, window=[m0, m1]), fh)
    return 0


def _defined_functions(path):
    """Names of the global function symbols of an object file (objdump -t)."""
    text = subprocess.run([_tool("objdump"), "-t", path], capture_output=True, text=True).stdout
    return [line.split()[-1] for line in text.splitlines()
            if " F " in line and line.split()[1] == "g"]


def _tool(name):
    path = shutil.which(name)
    if not path:
        raise _cli.ToolError("`%s` not found (install linux-tools / binutils)" % name, 1)
    return path


def profile(a):
    """Run the child under perf; returns (summary rows, meta)."""
    perf = _tool("perf")
    _tool("objdump")
    with tempfile.TemporaryDirectory(prefix="nb-hotspots-") as d:
        data = os.path.join(d, "perf.data")
        child = [sys.executable, "-m", "benchmarks.hotspots", "--child", "--out", d,
                 "--threads", str(a.threads), "--seconds", str(a.seconds),
                 "--precision", a.precision]
        child += (["--autodiff", a.autodiff] if a.autodiff else ["--workload", a.workload])
        if a.pixels:
            child += ["--pixels", str(a.pixels)]
        if a.extra:
            child += ["--extra=" + a.extra]
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(d, "numba"), NBNUMBA_AOT="0")
        r = subprocess.run([perf, "record", "-q", "-e", "cpu-clock", "-k", "CLOCK_MONOTONIC",
                            "-F", str(a.freq), "-o", data, "--"] + child, env=env,
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(os.path.join(d, "child.json")):
            last = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
            raise _cli.ToolError("the profiled run failed: " + last, 1)
        with open(os.path.join(d, "child.json")) as fh:
            meta = json.load(fh)
        s = subprocess.run([perf, "script", "-i", data, "-F", "time,ip"], capture_output=True,
                           text=True)
        ips = samples_in_window(s.stdout, *meta["window"])
        functions, insns = load_functions(meta["objects"])
    per_fn, per_off, outside = attribute(ips, functions)
    meta.update(samples=len(ips), kernel_samples=sum(per_fn.values()))
    rows = summarise(per_fn, per_off, insns, a.region, a.top)
    names = collections.Counter(r["function"].rsplit("@", 1)[0] for r in rows)
    for r in rows:          # the library suffix only where a name repeats
        base_name = r["function"].rsplit("@", 1)[0]
        if names[base_name] == 1:
            r["function"] = base_name
    return rows, meta


def main(argv=None) -> int:
    return _cli.guarded_main("benchmarks.hotspots", lambda: _main(argv), io_exit=1)


def _main(argv=None) -> int:
    ap = _cli.UsageParser(prog="python -m benchmarks.hotspots", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--workload", type=_cli.workload_name, default="W2", help="benchmarks.workloads name (default W2)")
    g.add_argument("--autodiff", choices=("issue512", "W2", "pilatus_roi"),
                   help="profile the autodiff forward (forward_jac) of this case")
    ap.add_argument("--pixels", type=_cli.positive_int, default=None, help="a pixels x pixels detector")
    ap.add_argument("--extra", default="", help="flags appended to the --autodiff case's command")
    ap.add_argument("--precision", default="double", choices=("double", "single"))
    ap.add_argument("--threads", type=_cli.positive_int, default=1)
    ap.add_argument("--seconds", type=_cli.positive_float, default=10.0, help="profiled time (CPU-bound)")
    ap.add_argument("--freq", type=_cli.positive_int, default=2000, help="samples per second")
    ap.add_argument("--region", type=_cli.positive_int, default=512, help="bytes of code per region")
    ap.add_argument("--top", type=_cli.positive_int, default=8, help="functions to list")
    ap.add_argument("--listing", nargs="?", const="top", metavar="NAME",
                    help="also print the hottest region of the top function (or of the first "
                         "listed one whose name contains NAME), instruction by instruction")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.extra.strip() and not a.child:
        if not a.autodiff:
            raise _cli.usage_error("argument --extra: only used with --autodiff")
        from nbnumba.flags import parse_argv
        from benchmarks import autodiff_perf as P
        try:
            parse_argv(list(P.ISSUE512) + a.extra.split())
        except Exception as exc:
            raise _cli.usage_error("argument --extra: %s" % exc) from None
    if a.child:
        return _child(a)
    rows, meta = profile(a)
    if a.json:
        print(json.dumps(dict(meta, rows=rows)))
        return 0
    from benchmarks import envinfo
    what = ("autodiff forward, " + a.autodiff) if a.autodiff else a.workload
    print("%s, %d thread(s), %s; CPU: %s; git %s" % (what, a.threads, a.precision,
                                                      envinfo.cpu_model(), envinfo.git_sha()))
    print("%d calls, %.2f CPU-s; %d samples while timed, %d of them in numba-compiled code (%.0f %%)"
          % (meta["calls"], meta["cpu_s"], meta["samples"], meta["kernel_samples"],
             100.0 * meta["kernel_samples"] / max(1, meta["samples"])))
    print("| function | share | vector | scalar FP | other |")
    print("|---|---|---|---|---|")
    for r in rows:
        sp = r["split"]
        print("| `%s` | %.1f %% | %.0f %% | %.0f %% | %.0f %% |"
              % (r["function"], 100 * r["share"], 100 * sp.get("vector", 0),
                 100 * sp.get("scalar-fp", 0), 100 * sp.get("other", 0)))
    for r in rows[:3]:
        print("- `%s`, hottest %d-byte regions: %s" % (
            r["function"], a.region, "; ".join(
                "+0x%x %.1f %% (%d instr., %d vector, %d div, %d gather)"
                % (h["offset"], 100 * h["share"], h["instructions"], h["vector"], h["divides"],
                   h["gathers"]) for h in r["regions"])))
    if a.listing:
        pick = [r for r in rows if a.listing in r["function"]] if a.listing != "top" else rows
        if not pick:
            raise SystemExit("hotspots: no listed function matches %r" % a.listing)
        r = pick[0]
        print("\nhottest region of `%s` (share of the kernel's samples per instruction):"
              % r["function"])
        for off, share, text in r["listing"]:
            print("%6.2f %%  +0x%05x  %s" % (100 * share, off, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
