"""Array interchange between numpy, CuPy and torch (DLPack, zero-copy where possible).

nbnumba computes on numpy arrays (``-device cpu``) or CuPy arrays
(``-device cuda``).  Inputs such as a pixel mask, an F grid or a preallocated
output image may come from any of the three libraries; :func:`as_array` turns
them into the array type the engine needs, sharing memory whenever the data
already lives on the right device::

    import numpy as np, torch
    from nbnumba.interop import as_array, to_torch

    mask_t = torch.ones(256, 256, dtype=torch.uint8)
    mask = as_array(mask_t, like=np.empty(0))      # numpy view of the tensor's memory
    mask[0, 0] = 0                                  # ... visible in mask_t

    res = nbnumba.simulate_argv([...])
    img_t = to_torch(res.float_image)               # torch view of the image (no copy)
    img_t = res.to_torch()                          # the same, via Result

    # on a GPU (CuPy installed, -device cuda):
    import cupy as cp
    out = torch.empty(256, 256, device="cuda")      # preallocated float32 output
    out_cp = as_array(out, like=cp.empty(0))        # CuPy view of the tensor's memory

Rules of :func:`as_array`:

* the result has the array library and device of ``like`` (a numpy array,
  a CuPy array or a torch tensor; or one of the strings ``"numpy"``,
  ``"cupy"``, ``"torch"``);
* when the source is on the same device, the result shares its memory
  (DLPack, or the buffer protocol for numpy); a modification through one is
  visible through the other;
* across devices (host <-> GPU) the data are copied, which is unavoidable;
* ``dtype`` (optional) converts the element type, which copies if it differs;
* a torch tensor that requires grad is refused (ValueError): nbnumba's plain
  API cannot carry its gradient.  Pass ``t.detach()`` for the values, or use
  :mod:`nbnumba.autodiff` for gradients.  nbnumba's own API (``mask_image``,
  ``hkl_grid.F``, ``out=``) goes through :func:`as_array_arg`, which raises
  a one-line ``ConfigError`` naming the argument for this and for what
  numpy cannot hold (text, a meta-device, sparse or bfloat16 tensor).

torch and CuPy are optional: this module imports them only when an argument
is one of their arrays (``pip install nbnumba[torch]``, ``nbnumba[gpu]``).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

__all__ = ["array_kind", "as_array", "as_array_arg", "array_arg_problem", "to_numpy", "to_host",
           "to_torch", "data_ptr", "shares_memory"]


def to_host(a):
    """A numpy view of a host array, a copy of a CuPy (device) array.

    The engine's one device-to-host step; cheaper than :func:`to_numpy`, which
    also accepts torch tensors and DLPack producers."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def array_kind(obj: Any) -> str:
    """``"numpy"``, ``"cupy"``, ``"torch"`` or ``"other"`` for an array-like object."""
    if isinstance(obj, str):
        if obj in ("numpy", "cupy", "torch"):
            return obj
        raise ValueError("unknown array kind %r (numpy, cupy or torch)" % obj)
    if isinstance(obj, np.ndarray):
        return "numpy"
    mod = type(obj).__module__.split(".")[0]
    if mod == "cupy" or mod == "cupyx":
        return "cupy"
    if mod == "torch":
        return "torch"
    return "other"


def _is_cuda(obj) -> bool:
    """Is the array in GPU memory?  (numpy: no; cupy: yes; torch: tensor.device)"""
    kind = array_kind(obj)
    if kind == "cupy":
        return True
    if kind == "torch":
        return obj.device.type == "cuda"
    if hasattr(obj, "__dlpack_device__"):
        dev_type, _ = obj.__dlpack_device__()
        return int(dev_type) in (2, 3, 13)   # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
    return False


def _torch_src(obj):
    # the engine cannot carry a gradient through a plain array: refuse rather
    # than detach silently (gradients: nbnumba.autodiff)
    if getattr(obj, "requires_grad", False):
        raise ValueError("a torch tensor that requires grad was passed to nbnumba, which would "
                         "drop its gradient: use nbnumba.autodiff.simulate for gradients, or "
                         "pass tensor.detach() to use the values only")
    if getattr(obj, "is_conj", None) is not None and obj.is_conj():
        obj = obj.resolve_conj()
    if getattr(obj, "is_neg", None) is not None and obj.is_neg():
        # (a view such as z.conj().imag: its memory holds minus its values, which
        # DLPack exported as they are)
        obj = obj.resolve_neg()
    return obj


def _not_an_array(obj, fn: str) -> None:
    """TypeError for None or a string given where an array belongs (a string
    would otherwise be read as an array kind's name, None met DLPack's
    "invalid capsule")."""
    if obj is None or isinstance(obj, (str, bytes)):
        raise TypeError("%s: expected an array (numpy, CuPy, torch or a DLPack producer), got %s"
                        % (fn, type(obj).__name__))


def to_numpy(obj: Any, dtype=None) -> np.ndarray:
    """A numpy array of ``obj``: a view for host arrays (numpy, CPU torch,
    any DLPack host array), a copy for GPU arrays."""
    _not_an_array(obj, "to_numpy")
    kind = array_kind(obj)
    if kind == "numpy":
        arr = obj
    elif kind == "cupy":
        arr = obj.get()
    elif kind == "torch":
        t = _torch_src(obj)
        if t.device.type != "cpu":
            t = t.cpu()
        try:
            arr = np.from_dlpack(t)
        except (BufferError, TypeError, RuntimeError):
            arr = t.numpy()
    elif hasattr(obj, "__dlpack__") and not _is_cuda(obj):
        arr = np.from_dlpack(obj)
    elif hasattr(obj, "get") and _is_cuda(obj):
        arr = obj.get()
    else:
        arr = np.asarray(obj)
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def _to_cupy(obj, dtype=None):
    import cupy as cp
    kind = array_kind(obj)
    if kind == "cupy":
        arr = obj
    elif kind == "torch":
        t = _torch_src(obj)
        if t.device.type == "cuda":
            arr = cp.from_dlpack(t)
        else:
            arr = cp.asarray(to_numpy(t))
    elif hasattr(obj, "__dlpack__") and _is_cuda(obj):
        arr = cp.from_dlpack(obj)
    else:
        arr = cp.asarray(to_numpy(obj))
    if dtype is not None and arr.dtype != np.dtype(dtype):
        arr = arr.astype(dtype)
    return arr


def to_torch(arr: Any, device=None):
    """A torch tensor sharing ``arr``'s memory (numpy, CuPy, a Result or any
    DLPack producer; ``torch.from_dlpack``).  ``device`` (optional) moves it,
    which copies if the device differs.  A read-only numpy array is copied:
    torch's tensors are always writable, and numpy 2 exports such an array
    through DLPack all the same (a write through the tensor changed it; in a
    read-only memory map, it would fault)."""
    from .extras import require
    torch = require("torch", "to_torch()")
    _not_an_array(arr, "to_torch")
    if array_kind(arr) == "torch":
        t = arr
    elif not (isinstance(arr, np.ndarray) or hasattr(arr, "__dlpack__")):
        # (torch.from_dlpack said "invalid capsule" of a number or a list)
        raise TypeError("to_torch: expected an array (numpy, CuPy, torch or a DLPack producer), got %s; "
                        "for a list or a number use torch.tensor" % type(arr).__name__)
    elif isinstance(arr, np.ndarray) and not arr.flags.writeable:
        t = torch.from_numpy(np.array(arr, copy=True))
    else:
        try:
            t = torch.from_dlpack(arr)
        except (BufferError, TypeError, RuntimeError):
            if isinstance(arr, np.ndarray):
                t = torch.from_numpy(np.array(arr, copy=True))
            else:
                raise
    if device is not None and t.device != torch.device(device):
        t = t.to(device)
    return t


def as_array(obj: Any, like: Any = "numpy", dtype=None):
    """``obj`` (numpy, CuPy, torch, or anything with ``__dlpack__`` or
    ``__array__``) as an array of the library and device of ``like``.

    Shares memory when ``obj`` is already on that device; copies across
    devices or when ``dtype`` requires a conversion.  Used for masks, F grids
    and preallocated output images handed to nbnumba.
    """
    target = array_kind(like)
    if target == "numpy" or target == "other":
        return to_numpy(obj, dtype=dtype)
    if target == "cupy":
        arr = _to_cupy(obj, dtype=dtype)
        if not isinstance(like, str):
            dev = like.device.id
            if arr.device.id != dev:
                import cupy as cp
                with cp.cuda.Device(dev):
                    arr = cp.asarray(arr)
        return arr
    # torch
    device = None if isinstance(like, str) else like.device
    t = to_torch(obj if array_kind(obj) != "torch" else _torch_src(obj), device=device)
    if dtype is not None:
        import torch
        tdt = getattr(torch, np.dtype(dtype).name)
        if t.dtype != tdt:
            t = t.to(tdt)
    return t


def array_arg_problem(obj: Any) -> Optional[str]:
    """Why ``obj`` cannot be an array argument of nbnumba's API (a mask, an F
    grid, an ``out=`` image), or None.  Checks what :func:`as_array` would
    otherwise fail on deep inside numpy, torch or DLPack: text, a torch tensor
    that requires grad, lives on the meta device, is sparse, or has a dtype
    numpy lacks (bfloat16, float8)."""
    if obj is None or isinstance(obj, (str, bytes)):
        return "expected an array (numpy, torch or CuPy), got %s" % type(obj).__name__
    if array_kind(obj) != "torch":
        return None
    import torch
    if getattr(obj, "requires_grad", False):
        return ("a torch tensor that requires grad, whose gradient nbnumba's plain API would "
                "drop: pass tensor.detach() to use the values, or nbnumba.autodiff for gradients")
    dev = obj.device.type
    if dev not in ("cpu", "cuda"):
        return ("a torch tensor on the '%s' device, whose data nbnumba cannot read: use a CPU "
                "or CUDA tensor" % dev)
    if obj.layout is not torch.strided:
        return ("a torch tensor of layout %s: pass tensor.to_dense()"
                % str(obj.layout).replace("torch.", ""))
    if obj.dtype == torch.bfloat16 or "float8" in str(obj.dtype):
        return ("a torch %s tensor, a type numpy does not have: convert it, e.g. "
                "tensor.float()" % str(obj.dtype).replace("torch.", ""))
    return None


def as_array_arg(obj: Any, like: Any, name: str, dtype=None):
    """:func:`as_array` for an argument ``name`` of nbnumba's API: what it
    cannot take (:func:`array_arg_problem`, or a conversion that fails) is a
    one-line :class:`~nbnumba.errors.ConfigError` naming the argument."""
    from .errors import ConfigError
    why = array_arg_problem(obj)
    if why is not None:
        raise ConfigError("%s: %s" % (name, why))
    try:
        return as_array(obj, like, dtype=dtype)
    except (TypeError, ValueError, NotImplementedError, RuntimeError, BufferError,
            AttributeError) as exc:
        raise ConfigError("%s: cannot be read as an array of numbers (%s: %s)"
                          % (name, type(exc).__name__,
                             (str(exc).strip().splitlines() or [""])[0])) from None


def data_ptr(arr: Any) -> int:
    """Address of the first element (numpy, CuPy or torch)."""
    kind = array_kind(arr)
    if kind == "numpy":
        return int(arr.__array_interface__["data"][0])
    if kind == "cupy":
        return int(arr.data.ptr)
    if kind == "torch":
        return int(arr.data_ptr())
    raise TypeError("data_ptr: unsupported array type %s" % type(arr).__name__)


def shares_memory(a: Any, b: Any) -> bool:
    """True when the two arrays start at the same address (zero-copy views)."""
    return data_ptr(a) == data_ptr(b)
