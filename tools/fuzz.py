#!/usr/bin/env python
"""Random command lines against nbnumba's promise that a run either writes its
outputs or prints one error line (exit 2), never a traceback or a numpy warning
(docs/reliability.md).

    python tools/fuzz.py cli [--seed S] [--runs N]        # the CLI, in process
    python tools/fuzz.py autodiff [--seed S] [--runs N]   # nbnumba.autodiff.simulate

``cli`` adds 2 to 6 flags drawn from the flag table to a small valid run
(8 x 8 pixels): numbers from a short list of ordinary and edge values, words
from each choice's own and one bogus one, files that exist, do not exist or
hold another format.  ``autodiff`` draws flags from a list of the features the
adjoint covers (and some it refuses) and 1 to 4 keywords requiring grad; each
call must give a finite image and finite gradients, or raise an NBError (or the
ValueError / TypeError of a misused keyword).

Each failure is printed on one line (the drawn arguments, what happened); the
last line counts the outcomes.  Exit status 0 when nothing failed, 1 otherwise,
2 on a usage error.  Everything runs in a fresh temporary directory.  The
suite keeps a deterministic sweep of single flags at extreme values
(tests/test_reliability.py); this draws combinations, for long runs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLI_BASE = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-default_F", "100",
            "-distance", "100", "-detpixels", "8", "-noprogress", "-floatfile", "f.bin",
            "-intfile", "i.img", "-pgmfile", "p.pgm", "-noisefile", "n.img"]
# not drawn: help, the outputs above, and flags that act on the process
# (threads, device) or only print (trace, printout)
CLI_SKIP = {"-h", "-floatfile", "-intfile", "-pgmfile", "-noisefile", "-detpixels", "-threads",
            "-device", "-trace_pixel", "-printout_pixel", "-printout"}
NUMS = ["0", "1", "-1", "2", "0.5", "3", "10", "90", "180", "-90", "1e-6", "1e6", "0.001", "45",
        "100", "5", "1e308", "1e-320"]
INTS = ["0", "1", "2", "3", "-1", "5"]
FILES = ["x.hkl", "a.mat", "s.txt", "out.bin", "missing"]

AD_BASE = ("-cell 70 80 90 85 95 105 -lambda 1.5 -distance 100 -detpixels 10 -pixel 1 "
           "-nonoise -nopgm -noprogress -N 3").split()
AD_EXTRAS = ["-mosaic 0.5 -mosaic_dom 3", "-phi 0 -osc 0.5 -phisteps 2", "-oversample 2",
             "-dispersion 0.1 -dispsteps 2", "-divergence 0.2 -divsteps 2", "-round_xtal",
             "-gauss_xtal", "-tophat_xtal", "-interpolate", "-nointerpolate", "-polar 0.5",
             "-nopolar", "-point_pixel", "-water 100", "-dmin 5", "-twotheta 5",
             "-detector_rotx 3", "-roi 2 7 2 7", "-mosflm", "-xds", "-dials", "-pivot sample",
             "-misset 10 20 30", "-hkl x.hkl", "-default_F 50", "-curved_det",
             "-detector_thick 50", "-c_parity", "-pix0_vector_mm -50 5 5", "-close_distance 100"]
AD_VALUES = dict(cell=[70, 80, 90, 85, 95, 105], misset=[1, 2, 3], distance=[100],
                 beam_center=[5, 5], pix0=[-50, 5, 5], detector_rot=[1, 2, 3], twotheta=[4],
                 wavelength=[1.5], mosaic_spread=[0.5], polarization=[0.6], N=[3, 3, 3],
                 fluence=[1e24])


def _inputs(d: Path) -> None:
    """Small input files of each kind in d."""
    hkl = "".join("%d %d %d %.1f\n" % (h, k, l, 10 + (7 * h + 3 * k + l) % 13)
                  for h in range(-3, 4) for k in range(-3, 4) for l in range(-3, 4))
    (d / "x.hkl").write_text(hkl)
    (d / "a.mat").write_text("0.0142 0 0\n0 0.0125 0\n0 0 0.0111\n0 0 0\n")
    (d / "s.txt").write_text("0 0 -1 1 1.5\n0.01 0 -1 1 1.51\n")


def cli_args(rng: random.Random, specs) -> list:
    """One drawn list of extra flags and values."""
    extra = []
    for sp in rng.sample(specs, rng.randint(2, 6)):
        extra.append(sp.name)
        for _ in range(sp.nargs):
            if sp.kind == "int":
                extra.append(rng.choice(INTS))
            elif sp.kind == "choice":
                extra.append(rng.choice(list(sp.choices) + ["bogus"]))
            elif sp.kind == "str":
                extra.append(rng.choice(FILES))
            else:
                extra.append(rng.choice(NUMS))
    return extra


def run_cli(args) -> tuple:
    """(exit status, None) when the CLI, run in process on ``args``, kept the
    promise: exit 0, or exit 2 with one error line; else (status, why): an
    exception, a traceback, several error lines or a warning."""
    from nbnumba import cli
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = cli.main(list(args))
        except BaseException as e:              # noqa: BLE001 (what this looks for)
            return None, "%s: %s" % (type(e).__name__, str(e)[:120])
    text = err.getvalue()
    errors = [ln for ln in text.splitlines() if ln.startswith("nbnumba: error")]
    if caught:
        return rc, "warning: %s" % caught[0].message
    if rc not in (0, 2) or "Traceback" in text or (rc == 2 and len(errors) != 1):
        return rc, "exit %s: %s" % (rc, text.strip()[-160:])
    return rc, None


def fuzz_cli(seed: int, runs: int, out=sys.stdout) -> dict:
    """Outcome counts of ``runs`` drawn command lines ('fail' among them)."""
    from nbnumba.flags import FLAGS
    specs = [sp for sp in FLAGS if sp.name not in CLI_SKIP]
    rng = random.Random(seed)
    counts = {"exit 0": 0, "exit 2": 0, "fail": 0}
    for _ in range(runs):
        extra = cli_args(rng, specs)
        rc, why = run_cli(CLI_BASE + extra)
        if why is not None:
            print("FAIL %s :: %s" % (" ".join(extra), why), file=out)
            counts["fail"] += 1
        else:
            counts["exit %d" % rc] += 1
    return counts


def fuzz_autodiff(seed: int, runs: int, out=sys.stdout) -> dict:
    """Outcome counts of ``runs`` drawn autodiff calls ('fail' among them)."""
    import torch
    from nbnumba.autodiff import simulate
    from nbnumba.errors import NBError
    rng = random.Random(seed)
    counts = {"finite": 0, "refused": 0, "fail": 0}
    for _ in range(runs):
        argv = list(AD_BASE)
        for e in rng.sample(AD_EXTRAS, rng.randint(0, 5)):
            argv += e.split()
        if "-hkl" not in argv:
            argv += ["-default_F", "100"]
        keys = rng.sample(sorted(AD_VALUES), rng.randint(1, 4))
        kw = {k: torch.tensor([float(x) for x in AD_VALUES[k]], dtype=torch.float64,
                              requires_grad=True) for k in keys}
        why = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                img = simulate(argv, **kw)
                img.sum().backward()
                if not (bool(torch.isfinite(img).all())
                        and all(t.grad is not None and bool(torch.isfinite(t.grad).all())
                                for t in kw.values())):
                    why = "a non-finite image or gradient"
            except (NBError, ValueError, TypeError):
                counts["refused"] += 1
                continue
            except BaseException as e:          # noqa: BLE001 (what this looks for)
                tb = traceback.extract_tb(e.__traceback__)[-1]
                why = "%s: %s (%s:%d)" % (type(e).__name__, str(e)[:100],
                                          os.path.basename(tb.filename), tb.lineno)
        if why is None and caught:
            why = "warning: %s" % caught[0].message
        if why is not None:
            print("FAIL %s %s :: %s" % (" ".join(argv[len(AD_BASE):]), keys, why), file=out)
            counts["fail"] += 1
        else:
            counts["finite"] += 1
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/fuzz.py", description=__doc__.split("\n\n")[0])
    p.add_argument("target", choices=("cli", "autodiff"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs", type=int, default=1000)
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if a.runs < 1:
        print("tools/fuzz.py: --runs must be >= 1", file=sys.stderr)
        return 2
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            _inputs(Path(d))
            counts = (fuzz_cli if a.target == "cli" else fuzz_autodiff)(a.seed, a.runs)
        finally:
            os.chdir(here)
    print("%s, seed %d: %s" % (a.target, a.seed,
                               ", ".join("%s %d" % kv for kv in counts.items())))
    return 1 if counts["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
