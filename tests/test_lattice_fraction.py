"""The image kernel's square-crystal lattice loop forms F_latt as one fraction,
(n_a n_b n_c) / (d_a d_b d_c), one division per cell instead of one per axis
(benchmarks.hotspots found the three divisions holding ~25 % of W2's samples).
Checked here against the per-axis reduced sincg of physics, cell by cell: up
to its sign, which the loop drops (its readers square the factor; the trace
restores the sign from the per-axis factors)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from nbnumba import physics
from nbnumba.kernels import cpu as K


def _cells(h, k, l):
    """Cells whose indices along S = (1, 0, 0) are exactly h, k, l (variant 1)."""
    n = len(h)
    cells = np.zeros((2, 9, n))
    cells[1, 0], cells[1, 3], cells[1, 6] = h, k, l
    return cells


@pytest.mark.parametrize("N", [(5.0, 6.0, 7.0), (8.0, 1.0, 47.0), (2.0, 2.0, 2.0)])
def test_fraction_matches_per_axis_product(N):
    rng = np.random.default_rng(int(sum(N)))
    n = 203                                  # not a multiple of the vector width
    h = rng.uniform(-40, 40, n)
    k = rng.uniform(-40, 40, n)
    l = rng.uniform(-40, 40, n)
    # exact peaks (d == 0 on one, two or three axes) and near-peak cells
    h[:10] = np.round(h[:10])
    k[5:15] = np.round(k[5:15])
    l[:3] = np.round(l[:3])
    k[0] = np.round(k[0])                    # cell 0: a peak on every axis
    h[20:30] = np.round(h[20:30]) + 1e-9
    cells = _cells(h, k, l)
    work = np.zeros((K.N_WORK, n))
    K._lattice_square_fast(np.int64(1), (1.0, 0.0, 0.0), cells, work, *N)
    assert np.array_equal(work[K.W_H], h) and np.array_equal(work[K.W_L], l)
    for j in range(n):
        ref = 1.0
        for x, Nx in zip((h[j], k[j], l[j]), N):
            if Nx > 1:
                ref *= physics.sincg_reduced(float(x), Nx)
        got = work[K.W_F, j]
        # up to its sign (the loop's readers square it), and a few ulps: the
        # fraction rounds differently from the product of quotients
        assert abs(abs(got) - abs(ref)) <= 8 * np.finfo(float).eps * abs(ref) + 1e-300, (j, got, ref)
        # the trace's sign: that of the per-axis factors' product
        fa, fb, fc = K._axis_factors(work, j, h[j], k[j], l[j], *N, 1)
        assert np.signbit(fa * fb * fc) == np.signbit(ref), (j, ref)
    # at an exact peak on every axis the value is the product of the N, exactly
    assert abs(work[K.W_F, 0]) == np.prod([x for x in N if x > 1])


def _per_axis_reference(h, k, l, N, f32):
    """The loop's factor from sincg_reduced_frac calls, in a scalar function
    with the loop's fast-math flags (the same FMA contraction of the
    polynomials): the product of the unsigned fractions of the axes with
    N > 1, in axis order, as the loop formed it with a branch per axis."""
    return _per_axis_reference_fn(f32)(h, k, l, *N)


@functools.lru_cache(maxsize=None)
def _per_axis_reference_fn(f32):
    """One compiled reference per precision and process (f32 is a compile-time
    constant of sincg_reduced_frac): a compile per parametrized test cost
    about a second each."""
    from numba import njit

    @njit(fastmath=K.FAST_MATH, error_model="numpy")
    def ref(h, k, l, Na, Nb, Nc):
        out = np.empty(h.size)
        for j in range(h.size):
            num = 1.0
            den = 1.0
            for x, N in ((h[j], Na), (k[j], Nb), (l[j], Nc)):
                if N > 1:
                    n_, d_, _, _, _ = physics.sincg_reduced_frac(x, N, f32, False)
                    num = num * n_
                    den = den * d_
            out[j] = num / den
        return out
    return ref


@pytest.mark.parametrize("N", [(5.0, 8.0, 3.0), (5.0, 1.0, 3.0), (1.0, 1.0, 2.0), (0.5, 1.0, 1.0)])
@pytest.mark.parametrize("f32", [False, True])
def test_branch_free_loop_bits(f32, N):
    """The loop's branch-free bodies: with float64 sines and every N > 1,
    the six sines' polynomials interleaved (sinpi_poly64_x6) and the d == 0
    limit applied afterwards (_plane_factor), only to the cells on a lattice
    plane; otherwise one axis after another, an axis with N <= 1 evaluated
    at 1/2 (a factor of exactly 1).  Their factors are those of the
    per-axis fractions with a branch per axis, bit for bit, on the plane
    cells too (without the second pass they would be 0 / 0)."""
    rng = np.random.default_rng(11)
    n = 157
    h, k, l = (rng.uniform(-30, 30, n) for _ in range(3))
    h[7] = 3.0                               # one axis on a plane
    h[40], k[40], l[40] = -2.0, 5.0, 0.0     # every axis
    k[100] = np.round(k[100]) + 1e-12        # near a plane, not on it
    cells = _cells(h, k, l)
    work = np.zeros((K.N_WORK, n))
    (K._lattice_square_fast32 if f32 else K._lattice_square_fast)(
        np.int64(1), (1.0, 0.0, 0.0), cells, work, *N)
    ref = _per_axis_reference(h, k, l, N, f32)
    assert np.array_equal(work[K.W_F], ref)
    assert np.all(np.isfinite(work[K.W_F]))
    assert work[K.W_F, 40] == np.prod([x for x in N if x > 1])


def test_sine_polynomial_accuracy():
    """sinpi_poly64 (SINPI_F64's degree-8 fit, strict and contracted) is within
    4.5 ulp of libm's sin(pi x) over 0 < |x| <= 1/2 (the fit's own worst
    error is 2.47 ulp against a 50-digit sine, tools/fit_sinpi.py; libm and
    the rounding of pi x add up to about 1.5 more), and odd."""
    from numba import njit
    x = np.concatenate([np.linspace(0.0, 0.5, 50001)[1:],
                        np.random.default_rng(4).uniform(0.0, 0.5, 50000),
                        10.0 ** np.random.default_rng(5).uniform(-12, -1, 2000)])
    ref = np.sin(np.pi * x)
    for flags in (K.FAST_MATH, False):
        f = njit(fastmath=flags)(lambda v: np.array([physics.sinpi_poly64(a) for a in v]))
        got = f(x)
        assert np.max(np.abs(got - ref) / np.spacing(ref)) <= 4.5, flags
        assert np.array_equal(f(-x), -got)


def test_sine_of_one_half_is_one():
    """_axis_in's premise: the sine polynomials give exactly 1 at 1/2 (and
    so sin(pi/2) / sin(pi/2) == 1), in float64 and float32, with the lattice
    loop's FMA contraction and without."""
    from numba import njit
    for flags in (K.FAST_MATH, False):
        f64 = njit(fastmath=flags)(lambda x: physics.sinpi_poly64(x))
        f32 = njit(fastmath=flags)(lambda x: physics.sinpi_poly32(x))
        assert f64(0.5) == 1.0 and f32(np.float32(0.5)) == np.float32(1.0)
    d, e, _ = physics.reduce_phase(0.5, 1.0)     # both sines see 1/2
    assert d == e == 0.5


def test_six_interleaved_sines_bits():
    """sinpi_poly64_x6 gives each argument sinpi_poly64's bits (the same
    operations, only interleaved), here compiled with the loop's fast-math
    flags as in the lattice loop."""
    from numba import njit

    @njit(fastmath=K.FAST_MATH, error_model="numpy")
    def both(x):
        one = np.empty(x.size)
        six = np.empty(x.size)
        for i in range(x.size):
            one[i] = physics.sinpi_poly64(x[i])
        for i in range(0, x.size, 6):
            r = physics.sinpi_poly64_x6(x[i], x[i + 1], x[i + 2], x[i + 3], x[i + 4], x[i + 5])
            for j in range(6):
                six[i + j] = r[j]
        return one, six

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-0.5, 0.5, 594), [0.0, -0.0, 0.5, -0.5, 1e-300, -3e-9]])
    one, six = both(x)
    assert np.array_equal(one, six)
    assert abs(one[594 + 2] - 1.0) < 2e-16 and one[594] == 0.0


def test_padding_and_spare_lanes_avoid_planes():
    """The lanes the sums never read must not lie on a lattice plane (d == 0
    would send the loop to its second pass on every call): lattice_cells pads
    with copies of the last real cell, and lane_work's lanes start at
    h = k = l = 1/4 (lane_buffer only carries the lane count)."""
    from nbnumba.kernels.layout import N_IOPT, I_SHAPE, I_REDUCED
    iopt = np.zeros(N_IOPT, dtype=np.int64)
    iopt[I_SHAPE], iopt[I_REDUCED] = 0, 1
    n = max(3 * K.LANE_PAD, K.VECTOR_MIN_LANES) + 1     # padded, and not a multiple of LANE_PAD
    cells = np.random.default_rng(2).normal(size=(2, 9, n))
    padded = K.lattice_cells(iopt, cells)
    assert padded.shape[2] % K.LANE_PAD == 0 and padded.shape[2] > n
    assert np.array_equal(padded[:, :, :n], cells)
    assert np.all(padded[:, :, n:] == cells[:, :, n - 1:n])
    lanes = K.lane_buffer(24, cells)
    assert lanes.shape == (1, 1, 24) and lanes.dtype == cells.dtype
    lwork = K.lane_work(24, cells)
    assert lwork.shape == (K.N_WORK, 24)
    assert np.all(lwork[[K.W_H, K.W_K, K.W_L]] == 0.25) and np.count_nonzero(lwork) == 3 * 24


def test_float32_sines_fraction():
    rng = np.random.default_rng(3)
    n = 64
    h, k, l = (rng.uniform(-20, 20, n) for _ in range(3))
    cells = _cells(h, k, l)
    work = np.zeros((K.N_WORK, n))
    K._lattice_square_fast32(np.int64(1), (1.0, 0.0, 0.0), cells, work, 5.0, 6.0, 7.0)
    for j in range(n):
        ref = np.prod([physics.sincg_reduced(float(x), Nx, True)
                       for x, Nx in zip((h[j], k[j], l[j]), (5.0, 6.0, 7.0))])
        assert abs(abs(work[K.W_F, j]) - abs(ref)) <= 3e-6 * abs(ref) + 1e-30, (j, work[K.W_F, j], ref)


def test_parity_from_low_bits():
    """reduce_phase's parity, formed from the low bits (n AND (N-1)) XOR m, is
    (n (N-1) + m) mod 2 for negative and positive n, m and odd and even N."""
    rng = np.random.default_rng(7)
    h = np.concatenate([rng.uniform(-3000, 3000, 4000), np.arange(-20.0, 20.0, 0.37)])
    checked = set()
    for N in (2.0, 3.0, 5.0, 8.0, 47.0, 100.0):
        for x in h:
            d, e, parity = physics.reduce_phase(x, N)
            n = int(np.rint(x))
            m = int(np.rint(N * (x - n)))
            assert parity == (n * (int(N) - 1) + m) % 2, (x, N)
            checked.add((n % 2, m % 2, int(N) % 2))
    assert len(checked) == 8                 # every combination of low bits met


def test_wide_vector_request():
    """_prefer_512bit_vectors makes LLVM vectorise the calling function with
    512-bit registers where numba's target has AVX-512 (WIDE_VECTORS), and
    the same loop without it keeps LLVM's default (256-bit on AVX-512 CPUs)."""
    from numba import njit

    def body(x, y):
        for i in range(x.size):
            y[i] = x[i] + 2.0 * x[i]

    def wide(x, y):
        K._prefer_512bit_vectors()
        for i in range(x.size):
            y[i] = x[i] + 2.0 * x[i]

    x = np.linspace(0.0, 1.0, 100)
    asm = {}
    for fn in (body, wide):
        jf = njit(fastmath=K.FAST_MATH)(fn)
        y = np.zeros_like(x)
        jf(x, y)
        assert np.array_equal(y, x + 2.0 * x)    # one rounding, contracted or not
        asm[fn.__name__] = jf.inspect_asm(jf.signatures[0])
    assert ("zmm" in asm["wide"]) == K.WIDE_VECTORS
    assert "zmm" not in asm["body"]


def test_inline_into_callers():
    """_inline_into_callers (used by _lean_sum) marks the compiled function
    alwaysinline for LLVM; a caller's code then has no call of it left, and
    the fast-math callee's result is unchanged."""
    from numba import njit

    @njit(fastmath=K.FAST_MATH)
    def callee(x):
        K._inline_into_callers()
        acc = 0.0
        for i in range(x.size):
            acc += x[i] * x[i]
        return acc

    @njit(fastmath=K.FAST_MATH)
    def plain(x):
        acc = 0.0
        for i in range(x.size):
            acc += x[i] * x[i]
        return acc

    @njit
    def caller(x):
        return callee(x) + 1.0

    x = np.linspace(0.0, 1.0, 101)
    assert caller(x) == plain(x) + 1.0

    def defines(ir_text):
        return [ln for ln in ir_text.splitlines() if ln.startswith("define") and "callee" in ln
                or ln.startswith("define") and "plain" in ln]
    ir_callee = callee.inspect_llvm(callee.signatures[0])
    ir_plain = plain.inspect_llvm(plain.signatures[0])
    attr_groups = {ln.split("=")[0].split()[1]: ln for ln in ir_callee.splitlines()
                   if ln.startswith("attributes #")}
    (fn,) = [ln for ln in defines(ir_callee) if "cpython" not in ln and "cfunc" not in ln]
    assert "alwaysinline" in fn or any("alwaysinline" in attr_groups.get(t, "")
                                       for t in fn.split() if t.startswith("#"))
    assert "alwaysinline" not in ir_plain
    asm = caller.inspect_asm(caller.signatures[0])
    assert not [ln for ln in asm.splitlines()
                if ln.split()[:1] in (["call"], ["callq"]) and "callee" in ln]
