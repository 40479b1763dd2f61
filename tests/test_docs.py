"""Documentation hygiene: nothing names a path of the machine it was written on."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.])/(work|tmp|root|home|Users)/")


def test_docs_have_no_machine_paths():
    files = [REPO / "README.md", REPO / "golden" / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "examples").glob("*.py"))]
    bad = []
    for p in files:
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if MACHINE_PATH.search(line):
                bad.append("%s:%d: %s" % (p.relative_to(REPO), n, line.strip()))
    assert not bad, "\n".join(bad)


def test_every_config_field_documents_its_meaning_and_unit():
    import ast
    import dataclasses

    from nbnumba.config import Config
    tree = ast.parse((REPO / "nbnumba" / "config.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Config")
    docs = {}
    for stmt, nxt in zip(cls.body, cls.body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[stmt.target.id] = nxt.value.value
    fields = [f.name for f in dataclasses.fields(Config)]
    assert [f for f in fields if f not in docs] == []
    # spot checks of the units the engine relies on
    for name, unit in (("distance", "(m)"), ("pixel_size", "(m)"), ("lambda0", "(m)"),
                       ("phi0", "(radians)"), ("misset", "(radians)"), ("cell_a", "Angstrom"),
                       ("exposure", "(s)"), ("adc_offset", "(counts)"), ("ORGX", "(pixels)")):
        assert unit in docs[name], (name, docs[name])


@pytest.mark.slow
def test_api_reference_builds_from_docstrings(tmp_path):
    import importlib.util
    pytest.importorskip("pdoc")
    spec = importlib.util.spec_from_file_location("_apidocs", REPO / "tools" / "build_api_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    index = mod.build(tmp_path)
    assert index.is_file()
    config = (tmp_path / "nbnumba" / "config.html").read_text(encoding="utf-8")
    assert "sample to beam spot along the beam (m)" in config
    api = (tmp_path / "nbnumba" / "api.html").read_text(encoding="utf-8")
    assert "simulate_argv" in api and "Render the float image" in api
    assert (tmp_path / "nbnumba" / "sf.html").is_file()
