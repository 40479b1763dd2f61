"""numpy <-> torch interchange on the CPU (DLPack, no copies).

torch is an optional extra (``pip install nbnumba[torch]``): without it these
tests are skipped.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nbnumba  # noqa: E402
from nbnumba.interop import array_kind, as_array, data_ptr, shares_memory, to_numpy, to_torch  # noqa: E402

ARGV = ("-cell 70 80 90 90 90 90 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.5 "
        "-distance 100 -detpixels 24 -pixel 0.4 -nonoise -nopgm -noprogress").split()


@pytest.fixture(scope="module")
def result():
    return nbnumba.simulate_argv(ARGV)


def np_ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_result_to_torch_shares_memory(result):
    img = result.float_image
    t = result.to_torch()
    assert t.dtype == torch.float32
    assert tuple(t.shape) == img.shape
    assert t.data_ptr() == np_ptr(img)
    assert torch.equal(t, torch.from_numpy(img.copy()))
    old = float(img[3, 4])
    t[3, 4] = -7.5                       # write through torch ...
    assert img[3, 4] == np.float32(-7.5)  # ... seen by numpy
    img[5, 6] = 42.0                     # and the other way round
    assert float(t[5, 6]) == 42.0
    img[3, 4] = old


def test_result_speaks_dlpack(result):
    t = torch.from_dlpack(result)
    assert t.data_ptr() == np_ptr(result.float_image)
    back = np.from_dlpack(t)
    assert np_ptr(back) == np_ptr(result.float_image)


def test_numpy_torch_roundtrip_without_copy():
    a = np.arange(24, dtype=np.float64).reshape(4, 6)
    t = torch.from_dlpack(a)
    b = np.from_dlpack(t)
    assert t.data_ptr() == np_ptr(a) == np_ptr(b)
    b[2, 3] = -1.0
    assert a[2, 3] == -1.0 and float(t[2, 3]) == -1.0
    # strided views survive the trip, still without a copy
    v = a[:, ::2]
    tv = torch.from_dlpack(v)
    assert tv.data_ptr() == np_ptr(v)
    assert tv.stride() == (6, 2)
    assert np.array_equal(np.from_dlpack(tv), v)


def test_to_torch_helper(result):
    t = to_torch(result.float_image)
    assert shares_memory(t, result.float_image)
    assert to_torch(t) is t
    ro = np.arange(6.0)
    ro.setflags(write=False)
    t_ro = to_torch(ro)                   # copied, never an error
    assert torch.equal(t_ro, torch.arange(6.0, dtype=torch.float64))
    # numpy 2 exports a read-only array through DLPack, and torch's tensor is
    # writable: a write through it changed the "read-only" array
    t_ro[0] = 5.0
    assert ro[0] == 0.0 and not shares_memory(t_ro, ro)


def test_to_torch_of_a_read_only_memory_map_is_a_copy(tmp_path):
    # (a shared export of a read-only map: a write through the tensor faults)
    p = tmp_path / "f.bin"
    np.arange(8, dtype=np.float32).tofile(p)
    m = np.memmap(p, dtype=np.float32, mode="r")
    t = to_torch(m)
    t += 1
    assert float(m[0]) == 0.0 and float(t[0]) == 1.0
    assert np.array_equal(np.fromfile(p, dtype=np.float32), np.arange(8, dtype=np.float32))


def test_as_array_numpy_inputs():
    mask = np.ones((8, 8), dtype=np.uint8)
    same = as_array(mask, like=np.empty(0))
    assert same is mask
    conv = as_array(mask, like="numpy", dtype=np.float32)
    assert conv.dtype == np.float32 and not shares_memory(conv, mask)
    t = as_array(mask, like=torch.empty(0))
    assert isinstance(t, torch.Tensor) and t.data_ptr() == np_ptr(mask)
    t2 = as_array(mask, like="torch", dtype=np.float64)
    assert t2.dtype == torch.float64


def test_as_array_torch_inputs():
    # a mask, an F grid and a preallocated output coming from torch
    mask_t = torch.ones(6, 7, dtype=torch.uint8)
    mask = as_array(mask_t, like=np.empty(0))
    assert isinstance(mask, np.ndarray) and np_ptr(mask) == mask_t.data_ptr()
    mask[0, 0] = 0
    assert int(mask_t[0, 0]) == 0

    F_t = torch.rand(5, 5, 5, dtype=torch.float64)
    F = as_array(F_t, like="numpy")
    assert np_ptr(F) == F_t.data_ptr()
    assert np.array_equal(F, F_t.numpy())
    # a tensor that requires grad is refused, not silently detached
    with pytest.raises(ValueError, match="requires grad"):
        as_array(F_t.clone().requires_grad_(True), like="numpy")

    out_t = torch.zeros(4, 4, dtype=torch.float32)
    out = as_array(out_t, like=np.empty(0, dtype=np.float32))
    out[...] = 3.0
    assert float(out_t.sum()) == 48.0
    assert as_array(out_t, like=torch.empty(0)) is out_t


def test_array_kind_and_to_numpy():
    a = np.zeros(3)
    t = torch.zeros(3)
    assert array_kind(a) == "numpy" and array_kind(t) == "torch"
    assert array_kind("cupy") == "cupy"
    assert array_kind([1, 2]) == "other"
    with pytest.raises(ValueError):
        array_kind("jax")
    assert np_ptr(to_numpy(t)) == t.data_ptr()
    assert np.array_equal(to_numpy([1, 2, 3], dtype=np.int64), np.array([1, 2, 3]))
    assert data_ptr(a) == np_ptr(a)
    with pytest.raises(TypeError):
        data_ptr([1, 2])


def test_api_accepts_torch_mask_grid_and_output():
    torch = pytest.importorskip("torch")
    import nbnumba
    from dataclasses import replace
    from nbnumba.io.hkl import HKLGrid
    base = ["-cell", "50", "50", "50", "90", "90", "90", "-N", "3", "-distance", "100",
            "-detpixels", "16", "-nonoise", "-nopgm"]
    F = np.zeros((4, 4, 4))
    F[:3, :3, :3] = 7.0            # h,k,l in -1..1, extra zero plane as nanoBragg allocates
    grid = HKLGrid(-1, 1, -1, 1, -1, 1, torch.from_numpy(F), hkls=27)
    mask = torch.ones((16, 16), dtype=torch.int32)
    mask[:, :8] = 0
    cfg = replace(nbnumba.parse_argv(base), hkl_grid=grid, mask_image=mask)
    out = torch.empty((16, 16), dtype=torch.float32)
    res = nbnumba.simulate(cfg, out=out)
    ref = nbnumba.simulate_argv(base + ["-default_F", "7"]).float_image
    # the result lives in the caller's tensor (no copy) and masked pixels stay 0
    assert res.float_image.__array_interface__["data"][0] == out.data_ptr()
    assert float(out[:, :8].abs().max()) == 0.0
    np.testing.assert_array_equal(out.numpy()[:, 8:], ref[:, 8:])


def test_api_refuses_an_output_it_cannot_fill():
    """out= of the wrong shape, dtype or layout, or read-only: one ConfigError
    naming out= (a read-only array gave numpy's 'assignment destination is
    read-only'), and the array is left as it was."""
    from nbnumba.errors import ConfigError
    cfg = nbnumba.parse_argv(ARGV)
    shape = nbnumba.simulate(cfg).float_image.shape
    ro = np.full(shape, 3.0, np.float32)
    ro.setflags(write=False)
    bad = [np.zeros(shape), np.zeros(shape[::-1] + (1,), np.float32),
           np.zeros((shape[0], 2 * shape[1]), np.float32)[:, ::2],
           np.asfortranarray(np.zeros(shape, np.float32)), ro]
    for out in bad:
        with pytest.raises(ConfigError, match=r"^out= must be a writable, contiguous float32 "
                                              r"array of shape \(%d, %d\)$" % shape):
            nbnumba.simulate(cfg, out=out)
    assert (ro == 3.0).all()


def test_api_and_trace_do_not_import_each_other():
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "nbnumba"

    def imports(mod):
        tree = ast.parse((root / (mod + ".py")).read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "api" not in imports("trace") and "trace" not in imports("interop")
    from nbnumba import api, interop
    assert api.to_host is interop.to_host


def test_as_array_arg_names_the_argument():
    """as_array's refusals come from inside torch or numpy (ValueError,
    TypeError, NotImplementedError) and name nothing; the API's arguments go
    through as_array_arg, which says which argument and why."""
    from nbnumba.errors import ConfigError
    from nbnumba.interop import as_array_arg
    for obj, msg in [("abc", "^out=: expected an array .* got str$"),
                     (torch.zeros(2, 2, device="meta"), "^out=: a torch tensor on the 'meta' device"),
                     (torch.zeros(2, 2, requires_grad=True), "^out=: a torch tensor that requires grad"),
                     (torch.zeros(2, 2).to_sparse(), "^out=: a torch tensor of layout sparse_coo"),
                     (torch.zeros(2, 2, dtype=torch.bfloat16), "^out=: a torch bfloat16 tensor")]:
        with pytest.raises(ConfigError, match=msg):
            as_array_arg(obj, "numpy", "out=")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    a = as_array_arg(t, "numpy", "out=")
    assert shares_memory(a, t) and a[1, 2] == 5.0


def test_api_refuses_an_output_it_would_fill_through_a_copy():
    """out= that would have been filled through a copy, leaving the caller's
    object as it was, is refused with one ConfigError naming out=: a list (of
    float32 numbers; numpy made a new array of it and the list kept its
    zeros), and a float32 tensor with torch's negative bit (z.conj().imag),
    which the kernel filled through its raw memory so that the tensor read
    minus the image.  The object is left as it was."""
    if not hasattr(torch.Tensor, "_neg_view"):
        pytest.skip("this torch has no Tensor._neg_view")
    from nbnumba.errors import ConfigError
    cfg = nbnumba.parse_argv(ARGV)
    S, F = nbnumba.simulate(cfg).float_image.shape
    rows = [[np.float32(0.0)] * F for _ in range(S)]
    with pytest.raises(ConfigError, match=r"^out=: expected an array that nbnumba can fill in "
                                          r"place .* got list$"):
        nbnumba.simulate(cfg, out=rows)
    assert rows[S // 2][F // 2] == 0.0
    # (z.conj().imag has the bit, strided: refused as not contiguous; the
    # contiguous kind comes from torch's _neg_view)
    neg = torch.zeros((S, F), dtype=torch.float32)._neg_view()
    assert neg.is_neg() and neg.is_contiguous()
    with pytest.raises(ConfigError, match=r"^out=: a torch tensor with the negative bit set"):
        nbnumba.simulate(cfg, out=neg)
    assert float(neg.abs().max()) == 0.0
    # what exports its memory is filled in place: the buffer protocol (array.array)
    import array
    buf = array.array("f", [0.0] * (S * F))
    res = nbnumba.simulate(cfg, out=memoryview(buf).cast("B").cast("f", (S, F)))
    assert max(buf) > 0.0 and np.array_equal(np.frombuffer(buf, np.float32).reshape(S, F),
                                             res.float_image)


def test_a_negated_view_is_read_with_its_values():
    """A torch tensor with the negative bit set (z.conj().imag) is read with
    the values torch shows, not its raw memory (DLPack exported the memory as
    it is, the negation lost)."""
    neg = torch.tensor([1j, -2j, 3j]).conj().imag
    assert neg.is_neg() and neg.tolist() == [-1.0, 2.0, -3.0]
    assert to_numpy(neg).tolist() == [-1.0, 2.0, -3.0]
    assert as_array(neg, "numpy").tolist() == [-1.0, 2.0, -3.0]


def test_progress_and_overrides_arguments_are_checked():
    """progress= that cannot be called was "'int' object is not callable"
    (TypeError) after the first chunk of rows; a Config field given both in
    overrides= and as a keyword kept the keyword's value without a word."""
    from nbnumba import api
    from nbnumba.errors import ConfigError
    cfg = nbnumba.parse_argv(ARGV)
    with pytest.raises(ConfigError, match=r"^progress=: expected a callable"):
        api.simulate(cfg, progress=5)
    seen = []
    api.simulate(cfg, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1]
    with pytest.raises(ConfigError, match=r"^simulate_argv: distance given both in overrides= "
                                          r"and as a keyword$"):
        nbnumba.simulate_argv(ARGV, overrides={"distance": 0.1}, distance=0.2)
    a = nbnumba.simulate_argv(ARGV, overrides={"distance": 0.1}).float_image
    b = nbnumba.simulate_argv(ARGV, distance=0.1).float_image
    assert np.array_equal(a, b)


def test_result_converts_with_numpy(result):
    """np.asarray(result) is the float image (a view), as np.from_dlpack(result)
    and torch.as_tensor(result) give; it was a 0-d object array holding the
    Result."""
    a = np.asarray(result)
    assert a.shape == result.float_image.shape and a.dtype == np.float32
    assert np_ptr(a) == np_ptr(result.float_image)
    assert np.asarray(result, dtype=np.float64).dtype == np.float64
    c = np.array(result)
    assert c.flags.owndata and np.array_equal(c, result.float_image)
    assert torch.equal(torch.as_tensor(result), result.to_torch())


def test_conversions_name_a_non_array():
    """to_torch(None) was torch's "from_dlpack received an invalid capsule",
    to_numpy("abc") "unknown array kind 'abc'" (a string read as a kind's name)."""
    from nbnumba.interop import to_numpy, to_torch
    for bad, name in ((None, "NoneType"), ("abc", "str"), (b"x", "bytes")):
        for fn, fname in ((to_numpy, "to_numpy"), (to_torch, "to_torch")):
            with pytest.raises(TypeError, match=r"^%s: expected an array \(numpy, CuPy, torch or a "
                               r"DLPack producer\), got %s" % (fname, name)):
                fn(bad)
    for bad, name in ((3, "int"), ([1.0, 2.0], "list")):
        with pytest.raises(TypeError, match=r"^to_torch: .*got %s; for a list or a number use torch.tensor$"
                           % name):
            to_torch(bad)
    # what still converts: numbers and lists to numpy, a read-only array to torch (copied)
    assert to_numpy([1.0, 2.0]).tolist() == [1.0, 2.0]
    ro = np.arange(3.0)
    ro.flags.writeable = False
    assert to_torch(ro).tolist() == [0.0, 1.0, 2.0]
