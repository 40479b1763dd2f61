"""Documentation hygiene: nothing names a path of the machine it was written on,
and the command lines the docs show still parse."""
import re
import shlex
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


# ---- the documented command lines still parse ------------------------------
# README.md and docs/*.md show many command lines.  The commonest doc rot is a
# flag renamed or removed in the code and left in the docs; this test reads
# every command line in them and asks the programs' own parsers about it,
# without running anything.  docs/autodiff_rounds.md (a historical log) is
# included: its commands parse today too.

_TOOLS = {   # command word -> the entry point it is (pyproject.toml [project.scripts])
    "nbnumba": "cli", "nb-compare": "compare", "nbnumba-probe": "probe",
    "nbnumba-trace-diff": "trace_diff", "nbnumba-sincg-sweep": "sincg_sweep",
    "nbnumba-series": "series", "nbnumba-sf": "sf", "nbnumba-expt": "expt",
}
_MODULES = {   # python -m MODULE -> the same entry points
    "nbnumba.cli": "cli", "nbnumba.tools.compare": "compare", "nbnumba.tools.probe": "probe",
    "nbnumba.tools.trace_diff": "trace_diff", "nbnumba.tools.sincg_sweep": "sincg_sweep",
    "nbnumba.series": "series", "nbnumba.sf": "sf", "nbnumba.expt": "expt",
}


def _doc_shell_lines(text):
    """Every shell line of a markdown text: the lines of its fenced blocks
    (sh, bash or no language; backslash continuations, multi-line quotes and
    indented ``[...]`` synopsis lines joined), each with the variables that
    the page's blocks assigned so far, and every inline code span outside them."""
    out, block, lang, infence, env = [], [], "", False, {}
    for line in text.splitlines():
        m = re.match(r"\s*```(\S*)", line)
        if m:
            if infence and lang in ("", "sh", "bash", "shell"):
                out.extend(_join_block(block, env))
            infence, lang, block = not infence, m.group(1), []
        elif infence:
            block.append(line)
        else:
            for span in re.findall(r"`([^`]+)`", line):
                out.append((span.replace("\\|", "|"), {}))
    return out


def _join_block(lines, env):
    """A fenced block's logical lines, each with the variables (NAME="...")
    assigned in ``env`` (updated: a later block of the page uses $FLAGS too)."""
    joined, cur = [], ""
    for line in lines:
        if cur and (cur.endswith("\\") or cur.count('"') % 2 or line.lstrip().startswith("[")):
            cur = cur.rstrip("\\") + " " + line.strip()
        else:
            if cur:
                joined.append(cur)
            cur = line.strip()
    if cur:
        joined.append(cur)
    for line in joined:
        m = re.match(r'(?:export\s+)?([A-Za-z_]\w*)=(?:"([^"]*)"|(\S*))\s*(#.*)?$', line)
        if m:
            value = m.group(2) if m.group(2) is not None else m.group(3)
            value = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda v: env.get(v.group(1), ""), value)
            env[m.group(1)] = " ".join(value.split())
    return [(line, dict(env)) for line in joined]


def _commands(line, env):
    """(entry point, argv) for each command of one of the entry points in a
    shell line: ``$(...)`` dropped, ``$VAR`` expanded from ``env``, split at
    ``&&``, ``;`` and ``|``, a comment and redirections cut, leading
    ``NAME=value``, ``env`` and ``/usr/bin/time -f FMT`` skipped, and the
    placeholders ``...``, ``<flags>``, ``FLAGS...`` left out."""
    line = re.sub(r"\$\([^)]*\)", " ", line)
    line = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda m: env.get(m.group(1), ""), line)
    line = re.sub(r"<[^<>]*>", " ", line)
    # a '|' inside [...] is a synopsis' alternative, not a pipe
    line = re.sub(r"\[[^\]]*\]", lambda m: m.group(0).replace("|", " "), line)
    for seg in re.split(r"&&|;|\|", line):
        try:
            words = shlex.split(seg, comments=True)
        except ValueError:
            continue
        words = [w for w in words if w not in ("...", "…", "[...]") and not w.endswith("...")]
        for stop in (">", ">>", "2>", "2>&1", "<"):     # (a pipe was split off above)
            if stop in words:
                words = words[:words.index(stop)]
        while words and (re.match(r"[A-Za-z_]\w*=", words[0]) or words[0] in ("env", "exec", "time")):
            words = words[1:]
        if words[:2] == ["/usr/bin/time", "-f"]:
            words = words[3:]
        if words and words[0] in _TOOLS:
            yield _TOOLS[words[0]], words[1:]
        elif len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m" \
                and words[2] in _MODULES:
            yield _MODULES[words[2]], words[3:]


def _argparse_options(build):
    """The option strings of the argparse parser that ``build()`` makes; a
    builder that parses at once (the probe, ``nbnumba --serve``) is stopped at
    its parse_args and its parser taken from there."""
    import argparse
    from unittest import mock

    class _Got(Exception):
        pass

    def grab(self, *a, **k):
        raise _Got(self)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab):
        try:
            p = build()
        except _Got as got:
            p = got.args[0]
    return {o for o in p._option_string_actions if o.startswith("--")}


def _option_checkers():
    """Per entry point, whether a ``--long`` option exists (from its parser)."""
    from nbnumba import expt, series, server
    from nbnumba.errors import UsageError
    from nbnumba.tools import compare, sincg_sweep, trace_diff
    from nbnumba.tools.probe import cli as probe_cli

    def argparse_known(build):
        known = _argparse_options(build) | {"--help"}
        return lambda opt, words: opt in known

    def series_known(opt, words):      # its own splitter: an unknown --option is an error
        return opt in ("--help", "--version") or series._split_argv([opt, "1"])[2] is None

    def expt_known(opt, words):
        if opt in ("--help", "--version", "--from-flags"):
            return True
        try:
            if "--from-flags" in words:     # nothing after '--': stops after the options
                expt._main_from_flags([opt, "x", "--"])
            else:
                expt._parse([opt, "0", "x.expt"])
        except UsageError as exc:
            return "unknown option" not in str(exc)
        return True

    serve = _argparse_options(lambda: server.main([]))
    return {
        "compare": argparse_known(compare._parser),
        "probe": argparse_known(lambda: probe_cli._parse_opts([])),
        "trace_diff": argparse_known(trace_diff._build_parser),
        "sincg_sweep": argparse_known(sincg_sweep._build_parser),
        "series": series_known,
        "sf": lambda opt, words: opt in ("--help", "--version"),   # its options are -dmin, -o, ...
        "expt": expt_known,
        # nbnumba's whole-program modes (cli._PROGRAM_MODES); --batch's two
        # options are read by nbnumba.batch.batch_main's own loop
        "cli": lambda opt, words: opt in ("--help", "--version", "--warmup", "--batch", "--serve")
        or (words[:1] == ["--batch"] and opt in ("--workers", "--threads"))
        or (words[:1] == ["--serve"] and opt in serve),
    }


def _doc_command_problems(texts, cwd):
    """(problems, number of nbnumba argument lists parsed, number of tool
    lines checked) for the markdown ``texts`` ({name: text})."""
    from nbnumba import series, sf
    from nbnumba.errors import InputFileError, UsageError
    from nbnumba.flags import HelpRequested, parse_argv
    known = _option_checkers()
    problems, n_cli, n_tools = [], 0, 0
    for name, text in texts.items():
        for line, env in _doc_shell_lines(text):
            for tool, words in _commands(line, env):
                head, _, tail = (words[:words.index("--")], "--", words[words.index("--") + 1:]) \
                    if "--" in words else (words, "", [])
                for w in head:
                    opt = w.strip("[]").partition("=")[0]      # [--image N], --py-args=...
                    if re.fullmatch(r"--[A-Za-z][\w-]*", opt) and not known[tool](opt, words):
                        problems.append("%s: %r: %s has no option %s" % (name, line, tool, opt))
                if tool != "cli":
                    n_tools += 1
                if tool == "sf" and not {"-h", "--help", "--version"} & set(words):
                    try:        # nbnumba-sf's options have one dash (-dmin, -o, -column, ...)
                        sf.parse_sf_argv(words)
                    except UsageError as exc:
                        if "unknown flag" in str(exc):
                            problems.append("%s: %r: %s" % (name, line, exc))
                # nanoBragg flags: the CLI's arguments, and what follows '--' for
                # the tools that pass it to the engine (nb-compare, the probe, --from-flags)
                argv = None
                if tool == "cli" and words and not words[0].startswith("--"):
                    argv = words
                elif tool in ("compare", "probe", "expt") and tail:
                    argv = tail
                elif tool == "series":
                    argv = series._split_argv(words)[1]      # the words that are no option
                if not argv:
                    continue
                n_cli += 1
                # the tools hand their flags to nanoBragg.c as well, which also
                # reads its substring spellings (-intfile_x): -c_parity's reading
                for extra in ([], ["-c_parity"]) if tool != "cli" else ([],):
                    try:
                        parse_argv(argv + extra, cwd=str(cwd))
                    except (InputFileError, HelpRequested):
                        # an -img/-mask the reader makes first (read at parse time,
                        # relative to the empty cwd): a missing file, not a bad flag
                        break
                    except UsageError as exc:
                        error = exc
                    else:
                        break
                else:
                    problems.append("%s: %r: %s" % (name, line, error))
    return problems, n_cli, n_tools


def test_documented_command_lines_parse(tmp_path):
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    texts = {p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8") for p in docs}
    problems, n_cli, n_tools = _doc_command_problems(texts, tmp_path)
    assert problems == [], "\n".join(problems)
    # the extraction found the commands (a reader that finds none passes vacuously)
    assert n_cli >= 20 and n_tools >= 40, (n_cli, n_tools)
    # and the checker reports what it is there for
    bad = {"x.md": "```sh\nnbnumba -cell 70 80 90 90 90 90 -detpixls 64\n```\n"
                   "`nb-compare --treshold 0.9 -- -N 5`, `nbnumba-series --frames 3 --ressume -N 5`, "
                   "`nbnumba-sf m.pdb -dmn 2` and `nbnumba-expt --from-flags -o t.expt --image x -- -N 5`"}
    found, _, _ = _doc_command_problems(bad, tmp_path)
    wanted = ("'-detpixls'", "option --treshold", "option --ressume", "'-dmn'", "option --image")
    assert [w for w in wanted if sum(w in f for f in found) != 1] == [] \
        and len(found) == len(wanted), found
