"""The bundle's record of where it ran: versions, GPU, git SHA, C binary."""
from __future__ import annotations

import platform

import dataclasses
import os
import sys
from typing import Optional

from nbnumba.tools import _common as C


def _env_info(c_bin: Optional[str]) -> dict:
    env = {
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": C.package_versions(),
        "git_sha": C.git_sha(),
        "nbnumba_path": C.repo_root(),
        "NB_C_BIN": os.environ.get("NB_C_BIN") or None,
        "c_bin": c_bin,
        "c_bin_sha256": None,
        "gpu": None,
    }
    if c_bin and os.path.isfile(c_bin):
        try:
            env["c_bin_sha256"] = C.sha256_file(c_bin)
        except OSError:
            pass
    # which compiled kernels a run loads: the start-up library or numba's cache
    try:
        from nbnumba.kernels import native
        mod = native.aot_module()
        # the file loaded (the package's folder may hold one built by the
        # install's owner), else where this user's build would put it
        lib = getattr(mod, "__file__", None) or native.library_path()
        env["startup_library"] = {
            "enabled": native.enabled(), "path": lib, "present": mod is not None,
            "failed_build": native.failed_note() or None}
    except Exception as exc:  # noqa: BLE001 - report, do not fail the probe
        env["startup_library"] = {"error": f"{type(exc).__name__}: {exc}"}
    import importlib.util
    try:
        spec = importlib.util.find_spec("nbnumba.kernels.gpu")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        env["gpu"] = {"module": "absent (nbnumba.kernels.gpu not found)", "available": None}
    else:
        try:
            from nbnumba.kernels import gpu  # type: ignore
            env["gpu"] = {"module": "nbnumba.kernels.gpu", "available": bool(gpu.available())}
        except Exception as exc:  # noqa: BLE001 - report, do not fail the probe
            env["gpu"] = {"module": "nbnumba.kernels.gpu", "available": False,
                          "error": f"{type(exc).__name__}: {exc}"}
    return env


def _det_dict(det) -> dict:
    """The detector's fields; its trace lines as text (the recorded lines are
    objects formatted when read: json wrote their reprs, 0x addresses)."""
    d = dataclasses.asdict(det)
    d.pop("log", None)
    d.pop("trace_items", None)
    d["trace"] = det.trace
    return d


def metadata_step(p) -> None:
    """roi_metadata.json, env.json and git_sha.txt (the nbnumba commit that made the bundle)."""
    from .common import RTD, _json, _write
    model = p.model
    meta = {
        "pixel": {"slow": p.S, "fast": p.F},
        "roi": {"xmin_xmax_ymin_ymax": p.roi, "kind": p.roi_kind, "args": p.roi_args,
                "image_roi": p.img_roi, "roi_check": p.roi_check},
        "detector": _det_dict(model.det),
        "detector_c_parity_pix0": list(p.cp_model.det.pix0) if p.cp_model is not None else None,
        "mode": "c_parity" if p.c_parity else "default",
        "phis_deg": [ph * RTD for ph in model.phis],
        "crystal_N": [model.crystal.Na, model.crystal.Nb, model.crystal.Nc],
    }
    _json(p.path("roi_metadata.json"), meta)
    p.env = _env_info(p.c_bin)
    _json(p.path("env.json"), p.env)
    sha = p.env.get("git_sha")
    _write(p.path("git_sha.txt"), (sha or "unknown (not a git checkout)") + "\n")


def pytest_step(p) -> None:
    """pytest.log: ``--pytest SELECTOR`` runs those tests of this checkout and keeps the log."""
    from .common import _write
    selectors = list(p.opts.pytest or [])
    if not selectors:
        return
    # (it imports pytest, which only --pytest needs: the probe of a plain
    # ``pip install nbnumba`` stopped in a ModuleNotFoundError traceback)
    from nbnumba.testing.parallel import child_env
    root = C.repo_root()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selectors]
    # (a run of its own, also when the probe itself runs in a pytest-xdist worker)
    env = dict(child_env(os.environ), PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = C.run(cmd, root, env, "pytest", p.opts.timeout)
    _write(p.path("pytest.log"), "$ cd %s && python %s\n\n%s%s" % (
        C.shlex_join([root]), C.shlex_join(cmd[1:]), r.stdout, r.stderr))
    p.pytest = {"selectors": selectors, "returncode": r.returncode,
                "summary": C.last_line(r.stdout) or C.last_line(r.stderr)}
    p.commands.append("# the tests asked for with --pytest (pytest.log)")
    p.commands.append("cd %s && python -m pytest -q %s" % (C.shlex_join([root]), C.shlex_join(selectors)))


def commands_step(p) -> None:
    """commands.txt: commands that reproduce every file of the bundle."""
    from .common import _write
    head = [f"# nbnumba-probe bundle {os.path.basename(p.bundle)}",
            f"# probe working directory: {p.cwd}",
            "# the probe itself",
            f"cd {C.shlex_join([p.cwd])} && nbnumba-probe " + C.shlex_join(p.argv),
            "# port trace (equivalent CLI; the probe calls nbnumba.model.build_model + "
            "nbnumba.trace.trace_lines without rendering the image)",
            "python -m nbnumba.cli " + C.shlex_join(p.py_flags),
            "# trace diff (writes the same diff_trace.md / compare_scaling_traces.json)",
            f"nbnumba-trace-diff trace_c_phi.log trace_py_phi.log --tol {p.opts.tol!r} "
            "--json compare_scaling_traces.json --markdown diff_trace.md"]
    _write(p.path("commands.txt"), "\n".join(head + p.commands) + "\n")
