"""A stand-in for the ``cupy`` module, for testing the GPU launch path without a GPU.

Arrays are numpy arrays; ``RawModule(...).get_function(entry)`` returns a
kernel whose launches run ``nanobragg.cu`` compiled as host C++
(:class:`nbnumba.kernels.gpu.HostKernel`) with the launch's exact argument
tuple.  Streams, events and the device queries that ``kernels/gpu.py`` and
``benchmarks/gpu_check.py`` use are imitated: ``cuda.ExternalStream`` pushes
its pointer on ``fake.current_stream`` while it is entered, every render launch
is recorded in ``fake.calls`` as ``(entry, first_pixel, latch_pixel,
latch_sub, row0, row1, stream)`` (a trace launch as ``(entry, s, f,
latch_sub, -1, -1, stream)``, an adjoint launch as ``(entry, mode, -1, -1,
row0, row1, stream)``).

Install it with ``monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(host))``
(and reset ``gpu._MODULES``).  For tests only.
"""
from __future__ import annotations

import time
import types
from typing import Callable, Optional

import numpy as np

from ..kernels import gpu


def make_fake_cupy(host: "gpu.HostKernel", check_args: Optional[Callable] = None,
                   max_threads_per_block: int = 1024):
    """The fake module.  ``check_args(entry, args)`` (optional) is called on
    every launch before it runs; ``max_threads_per_block`` is what the
    kernels' attributes report."""
    fake = types.ModuleType("cupy")
    fake.__version__ = "0.0+fake"
    for name in ("asarray", "zeros", "full", "empty", "arange", "float32", "float64", "int64",
                 "uint8", "flatnonzero", "ndarray", "from_dlpack", "isfinite"):
        setattr(fake, name, getattr(np, name))
    fake.asnumpy = lambda a: np.array(a, copy=True)
    fake.current_stream = [0]      # stack of stream pointers; 0 = CuPy's default stream
    fake.streams_made = []
    fake.calls = []

    class ExternalStream:
        def __init__(self, ptr):
            self.ptr = int(ptr)
            fake.streams_made.append(self.ptr)

        def __enter__(self):
            fake.current_stream.append(self.ptr)
            return self

        def __exit__(self, *exc):
            fake.current_stream.pop()
            return False

        def synchronize(self):
            return None

    class _NullStream:
        ptr = 0

        def __enter__(self):
            fake.current_stream.append(0)
            return self

        def __exit__(self, *exc):
            fake.current_stream.pop()
            return False

    class Event:
        def __init__(self):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()

        def synchronize(self):
            return None

    def get_elapsed_time(a, b):
        return 1e3 * (b.t - a.t)

    class Device:
        def __init__(self, index=0):
            self.id = index

        def synchronize(self):
            return None

    props = {"name": b"fake CUDA device (host build of nanobragg.cu)", "major": 0, "minor": 0,
             "multiProcessorCount": 1, "totalGlobalMem": 0}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                    getDeviceProperties=lambda i: dict(props),
                                    runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0)
    fake.cuda = types.SimpleNamespace(
        runtime=runtime, ExternalStream=ExternalStream, Event=Event,
        Stream=types.SimpleNamespace(null=_NullStream()),
        get_elapsed_time=get_elapsed_time, Device=Device,
        get_current_stream=lambda: ExternalStream.__new__(ExternalStream),
        nvrtc=types.SimpleNamespace(getVersion=lambda: (0, 0)))

    def _check_rows_launch(grid, block, S, F, row0, row1):
        """One thread per pixel of rows row0..row1-1, in 1-D blocks."""
        assert 0 <= row0 < row1 <= S, (row0, row1, S)
        assert len(block) == 1 and block[0] <= max_threads_per_block
        assert grid[0] * block[0] >= (row1 - row0) * F          # every pixel covered
        assert (grid[0] - 1) * block[0] < (row1 - row0) * F     # no idle block

    class _RowKernel:
        """A kernel launched one thread per pixel (RawKernel's attributes)."""

        def __init__(self, entry):
            self.entry = entry
            self.max_threads_per_block = max_threads_per_block
            self.attributes = {"num_regs": 0, "local_size_bytes": 0,
                               "max_threads_per_block": max_threads_per_block}

    class Kernel(_RowKernel):
        def __init__(self, entry, dtname):
            super().__init__(entry)
            self.dtname = dtname

        def __call__(self, grid, block, args):
            if check_args is not None:
                check_args(self.entry, args)
            S, F, row0, row1 = (int(a) for a in args[1:5])
            _check_rows_launch(grid, block, S, F, row0, row1)
            fake.calls.append((self.entry, int(args[5]), int(args[6]), int(args[7]), row0, row1,
                               fake.current_stream[-1]))
            conv = [a.ctypes.data if isinstance(a, np.ndarray) else int(a) for a in args]
            host._render[self.dtname](*conv)

    class TraceKernel:
        def __init__(self, entry, dtname):
            self.entry = entry
            self.dtname = dtname

        def __call__(self, grid, block, args):
            if check_args is not None:
                check_args(self.entry, args)
            assert tuple(grid) == (1,) and tuple(block) == (1,)     # one thread
            fake.calls.append((self.entry, int(args[0]), int(args[1]), int(args[3]), -1, -1,
                               fake.current_stream[-1]))
            conv = [a.ctypes.data if isinstance(a, np.ndarray) else int(a) for a in args]
            host._trace[self.dtname](*conv)

    class AdjointKernel(_RowKernel):
        def __call__(self, grid, block, args):
            if check_args is not None:
                check_args(self.entry, args)
            S, F, row0, row1, mode = (int(a) for a in args[2:7])
            _check_rows_launch(grid, block, S, F, row0, row1)
            gpar = args[-6]     # (..., gpar, cacc, gF, val, dinc, ninc)
            assert mode == gpu.ADJOINT_VALUES or gpar.shape == ((row1 - row0) * F,
                                                                   gpu.ADJOINT_N_PAR)
            fake.calls.append((self.entry, mode, -1, -1, row0, row1, fake.current_stream[-1]))
            conv = [a.ctypes.data if isinstance(a, np.ndarray) else int(a) for a in args]
            host._adjoint(*conv)

    class RawModule:
        def __init__(self, code, options=()):
            assert code == gpu.source_text()
            self.options = tuple(options)

        def get_function(self, name):
            render = {v: k for k, v in gpu.ENTRY_POINTS.items()}
            trace = {v: k for k, v in gpu.TRACE_ENTRY_POINTS.items()}
            if name == gpu.ADJOINT_ENTRY_POINT:
                assert self.options == gpu.COMPILE_OPTIONS["float64"]
                return AdjointKernel(name)
            if name in trace:
                assert self.options == gpu.COMPILE_OPTIONS[trace[name]] + (gpu.TRACE_OPTION,)
                return TraceKernel(name, trace[name])
            assert self.options == gpu.COMPILE_OPTIONS[render[name]]
            return Kernel(name, render[name])

    fake.RawModule = RawModule
    return fake
