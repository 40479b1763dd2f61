"""nbnumba's compute kernels: numba on the CPU (cpu, adjoint, rng_kernels), the
start-up library (native, aot) and the CUDA source (gpu)."""
from .. import numba_cache as _numba_cache

_numba_cache.check_environment()    # (before any kernel module imports numba)
