"""Machine / revision facts recorded with every benchmark result."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Dict, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def git_sha(short: int = 7) -> str:
    """Short commit id of the repo's HEAD ('nogit' outside a work tree)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=%d" % short, "HEAD"], cwd=str(REPO_ROOT),
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        return sha if out.returncode == 0 and sha else "nogit"
    except Exception:
        return "nogit"


def git_dirty() -> Optional[bool]:
    """True when tracked files differ from HEAD (None when git is unusable)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=str(REPO_ROOT),
                             capture_output=True, text=True, timeout=20)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except Exception:
        return None


def hostname() -> str:
    """Host name reduced to characters that are safe in a file name."""
    h = socket.gethostname().split(".")[0] or "host"
    return re.sub(r"[^A-Za-z0-9_-]+", "_", h)[:40]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> Optional[tuple]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def result_name(prefix: str = "", suffix: str = "", when: Optional[_dt.datetime] = None,
                sha: Optional[str] = None) -> str:
    """``[prefix-]<YYYYMMDD>-<gitsha7>-<host>[-suffix].json`` (date and sha of
    ``when``/``sha`` if given: pass the ones captured when measuring began)."""
    when = when or _dt.datetime.now()
    parts = ([prefix] if prefix else []) + [when.strftime("%Y%m%d"), (sha or git_sha())[:7], hostname()]
    parts += [suffix] if suffix else []
    return "-".join(parts) + ".json"


def machine_facts() -> Dict[str, object]:
    import numpy
    facts: Dict[str, object] = {
        "host": hostname(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "loadavg": loadavg(), "python": platform.python_version(), "numpy": numpy.__version__,
        "git_sha": git_sha(), "git_dirty": git_dirty(),
        "datetime": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import numba
        facts["numba"] = numba.__version__
    except Exception:
        pass
    # whether CLI runs load the start-up library (no numba at run time) or numba's cache
    try:
        from nbnumba.kernels import native
        facts["startup_library"] = (os.path.basename(native.library_path())
                                    if native.aot_module() is not None else None)
        facts["nbnumba_aot_env"] = os.environ.get("NBNUMBA_AOT", "")
    except Exception:
        pass
    return facts


def save_figure(fig, png):
    """Lay out, write (creating folders) and close a matplotlib figure; returns the Path."""
    import matplotlib.pyplot as plt
    from pathlib import Path
    fig.tight_layout()
    png = Path(png)
    import io
    from nbnumba.io.atomic import atomic_write_bytes
    png.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=110, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(str(png), buf.getvalue())     # a reader never sees half a PNG
    return png
