// cuda_compat.h: compile nbnumba's CUDA kernel source as plain host C++.
//
//     g++ -O2 -std=c++17 -ffp-contract=off -shared -fPIC -x c++
//         -include cuda_compat.h nanobragg.cu -o libnb_host.so
// (one command line)
//
// The kernel file itself includes nothing (NVRTC, which CuPy uses, has no
// host headers); this header, force-included ahead of it, supplies what the
// device compilers otherwise provide:
//   * the CUDA keywords (__global__, __device__, __host__, __forceinline__,
//     __restrict__) as plain C++;
//   * the math functions (sqrt/sin/... and their float versions sinf, rintf,
//     sincos, ...) from the C library;
//   * atomicAdd(double*, double) as a plain addition (threads run one by one);
//   * threadIdx/blockIdx/blockDim/gridDim and nb_host_launch(), which runs a
//     __global__ function for every (block, thread) of a 1-D grid in a plain
//     loop, so that the unmodified kernel body executes once per pixel.
// NB_HOST_BUILD is defined so the kernel file can add its ctypes entry points.
//
// -ffp-contract=off matters: without it the compiler may fuse a*b+c into one
// FMA on targets that have it, and the host build would no longer perform the
// exact operations of the numba engine (which never contracts).
#ifndef NBNUMBA_CUDA_COMPAT_H
#define NBNUMBA_CUDA_COMPAT_H

#if defined(__CUDACC__)
#error "cuda_compat.h is for host builds only; do not include it when compiling with nvcc/NVRTC"
#endif

#define NB_HOST_BUILD 1

#include <math.h>
#include <cmath>
#include <cstddef>
#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

// CUDA's sincos/sincosf(x, &s, &c): glibc has them (GNU extension, on by
// default in g++); elsewhere define them from sin and cos.
#if !(defined(__GLIBC__) && defined(_GNU_SOURCE))
static inline void sincos(double x, double* s, double* c) {
    *s = sin(x);
    *c = cos(x);
}
static inline void sincosf(float x, float* s, float* c) {
    *s = sinf(x);
    *c = cosf(x);
}
#endif

// __ldg (read-only cache load) is a plain load on the host
template <typename T>
static inline T __ldg(const T* p) {
    return *p;
}

// atomicAdd (the adjoint kernel's shared sums): the host loop runs one thread
// at a time, so a plain read-add-write is atomic here
static inline double atomicAdd(double* address, double val) {
    const double old = *address;
    *address = old + val;
    return old;
}

// ---- thread-index shim -------------------------------------------------------
struct nb_compat_dim3 {
    unsigned int x, y, z;
};

static thread_local nb_compat_dim3 threadIdx = {0u, 0u, 0u};
static thread_local nb_compat_dim3 blockIdx = {0u, 0u, 0u};
static thread_local nb_compat_dim3 blockDim = {1u, 1u, 1u};
static thread_local nb_compat_dim3 gridDim = {1u, 1u, 1u};

// Run `kernel(args...)` once for every thread of a grid<<<grid, block>>>
// (1-D), sequentially, with threadIdx/blockIdx set as the device would.
// Only for kernels without block-level cooperation (no __shared__ memory,
// no __syncthreads), which is what nanobragg.cu is: one pixel per thread.
template <typename... Params, typename... Args>
static inline void nb_host_launch(void (*kernel)(Params...), unsigned int grid,
                                  unsigned int block, Args... args) {
    gridDim = {grid, 1u, 1u};
    blockDim = {block, 1u, 1u};
    for (unsigned int b = 0; b < grid; ++b) {
        blockIdx = {b, 0u, 0u};
        for (unsigned int t = 0; t < block; ++t) {
            threadIdx = {t, 0u, 0u};
            kernel(args...);
        }
    }
    // back to a one-thread "launch", so a kernel called directly afterwards
    // (the trace entry points) sees thread 0 of block 0
    gridDim = {1u, 1u, 1u};
    blockDim = {1u, 1u, 1u};
    blockIdx = {0u, 0u, 0u};
    threadIdx = {0u, 0u, 0u};
}

#endif  // NBNUMBA_CUDA_COMPAT_H
