"""Install weight: the core imports without the extras, and a missing extra is
one line naming the pip command, from every place an optional import happens."""
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
