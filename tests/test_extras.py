"""Install weight: the core imports without the extras, and a missing extra is
one line naming the pip command, from every place an optional import happens."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from nbnumba.extras import EXTRA_OF, MissingExtraError, install_hint, require

REPO = Path(__file__).resolve().parents[1]


def test_require_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fabio", None)      # import fabio -> ImportError
    with pytest.raises(MissingExtraError) as e:
        require("fabio", "writing miniCBF")
    assert str(e.value) == 'writing miniCBF needs fabio: pip install "nbnumba[formats]"'
    assert require("numpy") is np


def test_every_extra_named_exists_in_pyproject():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert set(EXTRA_OF.values()) <= set(extras)
    core = {d.split(">")[0].split("=")[0].split("[")[0] for d in meta["dependencies"]}
    assert core == {"numpy", "numba", "tqdm"}
    assert extras["torch"] == ["torch==2.13.0"]
    assert any("cuda12x" in d for d in extras["gpu"]) and any("cuda13x" in d for d in extras["gpu-cuda13"])
    dev = " ".join(extras["dev"])
    for name in ("formats", "series", "plots", "sf"):      # every extra the tests use but gpu
        assert name in dev
    assert "gpu" not in dev and install_hint("h5py") == 'pip install "nbnumba[formats]"'


def test_core_simulation_imports_no_extra():
    # a single simulation must work on numpy + numba + tqdm alone (yaml is not
    # checked: numba itself imports it when it happens to be installed)
    code = ("import sys, nbnumba\n"
            "r = nbnumba.simulate_argv('-cell 50 50 50 90 90 90 -default_F 1 -detpixels 4 -nonoise'.split())\n"
            "bad = sorted(m for m in ('fabio', 'h5py', 'dask', 'distributed', 'matplotlib', 'torch',"
            " 'cupy', 'gemmi') if m in sys.modules)\n"
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_series_without_fabio_is_one_line(monkeypatch, tmp_path, capsys):
    from nbnumba import series
    monkeypatch.setitem(sys.modules, "fabio", None)
    monkeypatch.setitem(sys.modules, "fabio.cbfimage", None)
    rc = series.main(["--frames", "1", "--workers", "0", "--out", str(tmp_path / "o"),
                      "--format", "cbf", "--", "-cell", "50", "50", "50", "90", "90", "90",
                      "-default_F", "1", "-detpixels", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert 'pip install "nbnumba[formats]"' in err[0] and "--format cbf" in err[0]
    assert not (tmp_path / "o").exists()


def test_to_torch_without_torch_is_one_line(monkeypatch):
    import nbnumba
    res = nbnumba.simulate_argv("-cell 50 50 50 90 90 90 -default_F 1 -detpixels 4 -nonoise".split())
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtraError, match=r'nbnumba\[torch\]'):
        res.to_torch()



#: what ``pip install nbnumba`` leaves out (pytest: the dev extra)
_EXTRA_MODULES = ("pytest", "_pytest", "matplotlib", "fabio", "h5py", "dask", "distributed",
                  "gemmi", "torch", "cupy", "yaml")

#: (module, argv, the extra its one-line error names; None: it runs)
_PLAIN_INSTALL_RUNS = [
    ("nbnumba.cli", ["-floatfile", "f.bin"], None),
    ("nbnumba.series", ["--frames", "1", "--osc-per-frame", "1", "--workers", "0", "--out", "s0"],
     None),
    ("nbnumba.series", ["--frames", "1", "--osc-per-frame", "1", "--out", "s1"], "series"),
    ("nbnumba.series", ["--frames", "1", "--osc-per-frame", "1", "--workers", "0", "--format",
                        "cbf", "--out", "s2"], "formats"),
    ("nbnumba.tools.compare", ["--c-bin", "SELF", "--"], "plots"),
    ("nbnumba.tools.probe", ["--pixel", "4", "4", "--no-c", "--c-trace", "TRACE", "--"], "plots"),
    ("nbnumba.tools.probe", ["--pixel", "4", "4", "--no-c", "--c-trace", "TRACE", "--no-png",
                             "--sincg-steps", "11", "--"], None),
    ("nbnumba.tools.sincg_sweep", ["--N", "5", "--k", "0", "1", "--steps", "11"], "plots"),
    ("nbnumba.tools.sincg_sweep", ["--N", "5", "--k", "0", "1", "--steps", "11", "--no-png"], None),
    ("nbnumba.tools.trace_diff", ["TRACE", "TRACE"], None),
    ("nbnumba.sf", ["m.pdb", "-dmin", "3"], "sf"),
    ("nbnumba.expt", ["--from-flags", "-o", "g.expt", "--"], None),
]

_PLAIN_INSTALL_CODE = r'''
import contextlib, io, sys
for m in %(blocked)r:
    sys.modules[m] = None                    # import m -> ImportError
from importlib import import_module
FL = "-cell 50 50 50 90 90 90 -default_F 1 -N 2 -distance 100 -detpixels 8 -nonoise".split()
for mod, argv, extra in %(runs)r:
    argv = [{"TRACE": %(trace)r, "SELF": sys.executable}.get(a, a) for a in argv]
    if mod not in ("nbnumba.tools.sincg_sweep", "nbnumba.tools.trace_diff", "nbnumba.sf"):
        argv = argv + FL                     # the nanoBragg flags last
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = import_module(mod).main(argv)
        except SystemExit as e:
            rc = e.code
        except BaseException as e:           # what the test is about
            rc = "raised %%s: %%s" %% (type(e).__name__, e)
    print(repr((mod, extra, rc, err.getvalue().strip().splitlines())))
'''


def test_every_console_script_on_a_plain_install(tmp_path):
    """``pip install nbnumba`` brings numpy, numba and tqdm only.  Each console
    script then runs, or stops in one line (exit 2) that names the extra to
    install.  nbnumba-probe stopped in a ModuleNotFoundError traceback: it
    imported pytest at start."""
    import ast
    code = _PLAIN_INSTALL_CODE % {
        "blocked": _EXTRA_MODULES, "runs": _PLAIN_INSTALL_RUNS,
        "trace": str(REPO / "tests" / "data" / "traces" / "mosflm_phi10_N2.c.log")}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    got = [ast.literal_eval(ln) for ln in r.stdout.strip().splitlines()]
    assert len(got) == len(_PLAIN_INSTALL_RUNS), r.stdout
    for mod, extra, rc, err in got:
        if extra is None:
            # (trace-diff's exit 1 and the probe's 3 are verdicts: the traces differ)
            ok = {"nbnumba.tools.trace_diff": (0, 1), "nbnumba.tools.probe": (0, 3)}.get(mod, (0,))
            assert rc in ok, (mod, rc, err)
            assert not any("Traceback" in ln for ln in err), (mod, err)
        else:
            assert rc == 2 and len(err) == 1, (mod, rc, err)
            assert err[0].endswith('pip install "nbnumba[%s]"' % extra), (mod, err)


def test_plots_with_a_home_matplotlib_cannot_use_are_quiet(tmp_path):
    # a home that is not a writable folder (nobody's /nonexistent; here a file):
    # matplotlib printed two lines about its configuration folder
    pytest.importorskip("matplotlib")
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmpdir), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "nbnumba.tools.sincg_sweep", "--N", "5", "--k", "0", "1",
                        "--steps", "11", "--outdir", str(tmp_path)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "sincg_sweep.png").stat().st_size > 10000
    assert os.listdir(tmpdir) == []          # the private folder is removed at exit
