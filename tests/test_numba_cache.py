"""numba's cache stamp for this package's kernels covers the files they
inline (nbnumba/numba_cache.py): an edit of physics.py alone must recompile
kernels/cpu.py's cached loops, which numba's own stamp (a hash of the
function's file) would keep, with the old formula."""
from __future__ import annotations

import time

from nbnumba import numba_cache
from nbnumba.kernels import cpu as K


def _locator(disp):
    """The cache locator numba picked for a cache=True dispatcher."""
    return disp._cache._impl.locator


def test_kernel_stamp_covers_inlined_sources():
    loc = _locator(K._lattice_square_fast)
    stamp = loc.get_source_stamp()
    assert isinstance(stamp, tuple) and stamp[1] == numba_cache.sources_digest()
    assert {"physics.py", "vecmath.py", "kernels/cpu.py"} <= set(numba_cache.KERNEL_SOURCES)


def test_digest_follows_the_contents(tmp_path, monkeypatch):
    f = tmp_path / "physics_copy.py"
    f.write_text("A = 1\n")
    # an absolute path in KERNEL_SOURCES stands for itself (os.path.join)
    monkeypatch.setattr(numba_cache, "KERNEL_SOURCES", (str(f),))
    d1 = numba_cache.sources_digest()
    time.sleep(0.01)
    f.write_text("A = 2\n")
    d2 = numba_cache.sources_digest()
    assert d1 != d2
    assert numba_cache.sources_digest() == d2


def test_other_code_keeps_numbas_stamp(tmp_path):
    from numba import njit
    src = tmp_path / "mod_elsewhere.py"
    src.write_text("def f(x):\n    return x + 1\n")
    import importlib.util
    spec = importlib.util.spec_from_file_location("mod_elsewhere", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    disp = njit(cache=True)(mod.f)
    assert not numba_cache.in_package(str(src))
    assert isinstance(_locator(disp).get_source_stamp(), bytes)
    numba_cache.install()            # a second call changes nothing
    assert isinstance(_locator(disp).get_source_stamp(), bytes)
