"""Small jitted physics functions: the one implementation of each formula.

Shared by the CPU kernel, the pixel trace, the host-side setup and the tests.
Vectors are 3-tuples (x, y, z).  Every function is written so that, given
float64 inputs, it performs the same floating-point operations in the same
order as nanoBragg.c (so images agree to the last bits); given float32 inputs
it stays in float32 (``like`` casts literals to the working precision).

Units: lengths in metres, wavelengths in metres, angles in radians,
scattering vectors in 1/m (so h = a . S is dimensionless).
"""
from __future__ import annotations

import math

import numpy as np

from . import numba_cache

numba_cache.check_environment()     # (a NUMBA_NUM_THREADS numba cannot start with)
numba_cache.import_numba()          # (a NUMBA_* value it cannot read: one line)

from numba import njit, types  # noqa: E402
from numba.extending import overload  # noqa: E402

numba_cache.install()     # cached kernels also depend on the files they inline


def like(value, proto):
    """Return ``value`` in the floating type of ``proto`` (float32 or float64)."""
    return type(proto)(value)


@overload(like, jit_options={"cache": True, "error_model": "numpy", "fastmath": False})
def _like_impl(value, proto):
    if isinstance(proto, types.Float) and proto.bitwidth == 32:
        return lambda value, proto: np.float32(value)
    return lambda value, proto: np.float64(value)


# ---------------------------------------------------------------- vectors
# The formulas live in vecmath (plain Python, no numba: the host-side setup
# calls them as they are); compiled here for the kernels.
from .vecmath import (_cross, _dot, _magnitude, _rotate_axis, _rotate_umat, _rotate_xyz,  # noqa: E402
                      _scale, _unitize, host)  # noqa: F401  (physics.host: the plain versions)

_jit_inline = njit(cache=True, inline="always", error_model="numpy")
dot = _jit_inline(_dot)
cross = _jit_inline(_cross)
magnitude = _jit_inline(_magnitude)
unitize = _jit_inline(_unitize)
scale = _jit_inline(_scale)
rotate_umat = _jit_inline(_rotate_umat)
rotate_axis = njit(cache=True, error_model="numpy", fastmath=False)(_rotate_axis)
rotate_xyz = njit(cache=True, error_model="numpy", fastmath=False)(_rotate_xyz)


# ---------------------------------------------------------------- scattering
#: |S| (1/m, as |S_x| + |S_y| + |S_z|) below which the default mode scatters
#: forward, S = 0: h = a . S stays below 1e-30 for any cell under 10 um, where
#: sin(N pi h)/sin(pi h) is N to far below an ulp, while the reduced factor's
#: sines, multiplied over three axes, underflow (all three |d| < ~1e-100) or
#: keep a few bits (a subnormal d): -lambda 1e107 was 4e-4 off at the direct
#: beam, -lambda 1e109 NaN.  No real sub-path gets near it: a computed S is
#: 0 or about 1e-16 / lambda (float64; 6e-8 / lambda in float32) or more.
S_FORWARD = 1e-25


@njit(cache=True, inline="always", error_model="numpy")
def forward_scatter(S0, S1, S2, on):
    """(S0, S1, S2), or zeros of their type where ``on`` (the default mode's
    reduced lattice factor) and |S| < S_FORWARD; branch-free (a select), so
    the block path's geometry loop stays vectorised."""
    tiny = on and abs(S0) + abs(S1) + abs(S2) < S_FORWARD
    z = S0 * 0
    return (z if tiny else S0), (z if tiny else S1), (z if tiny else S2)


# ---------------------------------------------------------------- lattice
@njit(cache=True, error_model="numpy", fastmath=False)
def sincg(x, N):
    """Grating interference function sin(N x)/sin(x) (N at x == 0); x = pi*h."""
    if x == 0.0:
        return N
    return np.sin(x * N) / np.sin(x)


# sin(pi x) on |x| <= 1/2 as an odd polynomial in x (Horner, branch-free, so
# loops over it vectorise).  float32: 6 coefficients fitted for relative error
# (2e-11 in exact arithmetic, ~2 ulp in float32).  float64: 9 coefficients, a
# Chebyshev (near-minimax) fit of sin(pi x) / x in t = x^2 over |x| <= 1/2,
# degree 8 in t (tools/fit_sinpi.py): truncation error 6.5e-19, and evaluated
# by float64 Horner its worst error on 4e4 sampled arguments is 2.5 ulp, as
# for the Taylor series to x^21 it replaced, with 8 multiply-adds instead of 10
# (the image kernel's lattice loop evaluates six per cell).  sin(pi / 2) is
# exactly 1, contracted or not (tests/test_lattice_fraction.py).
SINPI_F32 = (3.141592653523054, -5.167712762071032, 2.550163239008298,
             -0.5992513161608369, 0.08204641711375768, -0.007022066957742263)
SINPI_F64 = (3.141592653589793, -5.167712780049969, 2.5501640398773007, -0.5992645293189447,
             0.0821458865731029, -0.007370430505916944, 0.0004662998161898394,
             -2.1903497074626018e-05, 7.697826768224191e-07)


def _horner_odd(x, coeffs):
    t = x * x
    p = coeffs[-1]
    for c in coeffs[-2::-1]:
        p = p * t + c
    return x * p


def sinpi_reduced(x):
    """sin(pi*x) for |x| <= 0.5 in the precision of x (polynomial)."""
    if isinstance(x, np.float32):
        return np.float32(_horner_odd(x, tuple(np.float32(c) for c in SINPI_F32)))
    return _horner_odd(float(x), SINPI_F64)


_S32 = tuple(np.float32(c) for c in SINPI_F32)
_S64 = SINPI_F64


# The polynomials and the phase reduction as inline="always" functions: inlined,
# they take the fast-math flags of the function they land in (a separately called
# helper would be compiled once, with the flags of whichever caller came first),
# so the strict and the fast-math kernels share this one source.
@_jit_inline
def sinpi_poly32(x):
    """sin(pi x), |x| <= 1/2, float32 polynomial (Horner)."""
    t = x * x
    return x * (((((_S32[5] * t + _S32[4]) * t + _S32[3]) * t + _S32[2]) * t + _S32[1]) * t + _S32[0])


@_jit_inline
def sinpi_poly64(x):
    """sin(pi x), |x| <= 1/2, float64 polynomial (SINPI_F64, Horner)."""
    t = x * x
    p = _S64[8]
    p = p * t + _S64[7]
    p = p * t + _S64[6]
    p = p * t + _S64[5]
    p = p * t + _S64[4]
    p = p * t + _S64[3]
    p = p * t + _S64[2]
    p = p * t + _S64[1]
    p = p * t + _S64[0]
    return x * p


@_jit_inline
def sinpi_poly64_x6(x1, x2, x3, x4, x5, x6):
    """sinpi_poly64 of six arguments: each result is formed by the same
    operations in the same order, so it has the same bits; only the six Horner
    chains are interleaved, step by step, in one block with no branch between
    them, for the out-of-order core to overlap.  (LLVM's scheduler lays the
    chains out one after another again; the lattice loop's gain came mostly
    from losing its branches between the axes: docs/performance.md, eighth
    round.)"""
    t1 = x1 * x1
    t2 = x2 * x2
    t3 = x3 * x3
    t4 = x4 * x4
    t5 = x5 * x5
    t6 = x6 * x6
    c = _S64[8]
    p1 = p2 = p3 = p4 = p5 = p6 = c
    for i in range(7, -1, -1):
        c = _S64[i]
        p1 = p1 * t1 + c
        p2 = p2 * t2 + c
        p3 = p3 * t3 + c
        p4 = p4 * t4 + c
        p5 = p5 * t5 + c
        p6 = p6 * t6 + c
    return x1 * p1, x2 * p2, x3 * p3, x4 * p4, x5 * p5, x6 * p6


@_jit_inline
def reduce_phase(h, N):
    """The reduction of sincg_reduced: (d, e, parity) with n = rint(h), d = h - n,
    m = rint(N d), e = N d - m and parity = (n (N-1) + m) mod 2."""
    n = np.rint(h)
    d = h - n
    Nd = N * d
    m = np.rint(Nd)
    e = Nd - m
    # the low bit of a product is the AND of the factors' low bits, of a sum
    # their XOR: no integer multiply (a 3-uop vpmullq per axis in the vector
    # loop), the same bit as (n (N-1) + m) & 1 in wrapping int32
    parity = ((np.int32(n) & (np.int32(N) - np.int32(1))) ^ np.int32(m)) & np.int32(1)
    return d, e, parity


# fastmath stated: an overload without it is compiled with the flags of the
# first caller that reaches it, so a fast-math caller compiled first (the
# adjoint's pixel_grad) would leave FMA-contracted polynomials in the cache
# for every later strict caller (sincg_reduced: the trace, lattice_factor)
@overload(sinpi_reduced, jit_options={"cache": True, "error_model": "numpy", "fastmath": False})
def _sinpi_reduced_impl(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def f32(x):
            return sinpi_poly32(x)
        return f32

    def f64(x):
        return sinpi_poly64(x)
    return f64


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced(h, N, f32_sines=False):
    """sincg(pi*h, N) evaluated on reduced arguments (the default path).

    With n = rint(h), d = h - n and m = rint(N d), e = N d - m:
    sin(N pi h) / sin(pi h) = (-1)^(n (N-1) + m) sin(pi e) / sin(pi d),
    so both sines see arguments within +-1/2 (times pi).  In float64 this is more
    accurate than nanoBragg.c's sin(N*pi*h), whose argument carries a rounding
    error of ~|pi h N| ulp.  ``f32_sines`` (-precision single) evaluates only the
    two sines in float32: the reduction stays in the precision of h, which keeps
    the phase exact where float32 h would not be.  Written without data-dependent
    branches so it vectorises.  -c_parity uses ``sincg``."""
    d, e, parity = reduce_phase(h, N)
    if f32_sines:
        val = like(sinpi_reduced(np.float32(e)) / sinpi_reduced(np.float32(d)), h)
    else:
        val = sinpi_reduced(e) / sinpi_reduced(d)
    val = N if d == 0.0 else val
    return -val if parity != 0 else val


@njit(cache=True, error_model="numpy", fastmath=False)
def sinc3(x):
    """Fourier transform of a sphere: 3 (sin x / x - cos x) / x^2 (1 at 0)."""
    if x == 0.0:
        return like(1.0, x)
    return like(3.0, x) * (np.sin(x) / x - np.cos(x)) / (x * x)


#: below this |x| the default mode sums sinc3 and (d sinc3/dx)/x as Taylor
#: series: the closed form 3 (sin x / x - cos x) / x^2 loses about 6 eps / x^2
#: of its value to cancellation, all of it by |x| ~ 1e-8 (a sub-path at a
#: node's centre); above 1 it is good to a few ulp
SINC3_SERIES_BELOW = 1.0
#: sinc3(x) = sum_m c_m x^(2m), c_m = (-1)^m 3 (2m + 2) / (2m + 3)!, m = 0..8
#: (the first term left out is below 1.2e-18 for |x| < 1)
SINC3_SERIES = (1.0, -0.1, 0.0035714285714285713, -6.613756613756614e-05,
                7.515632515632515e-07, -5.7812557812557815e-09, 3.2118087673643227e-11,
                -1.34949948208585e-13, 4.439143033177138e-16)
#: (d sinc3/dx) / x = sum_m 2 (m + 1) c_(m+1) x^(2m), m = 0..8 (first left out
#: below 6e-20)
SINC3_DX_SERIES = (-0.2, 0.014285714285714285, -0.0003968253968253968, 6.012506012506012e-06,
                   -5.781255781255781e-08, 3.8541705208371877e-10, -1.88929927492019e-12,
                   7.102628853083421e-15, -2.1138776348462563e-17)


@njit(cache=True, error_model="numpy", fastmath=False)
def _even_series(coeffs, x):
    """sum_m coeffs[m] x^(2m) by Horner's scheme, in x's precision."""
    t = x * x
    s = like(coeffs[len(coeffs) - 1], x)
    for m in range(len(coeffs) - 2, -1, -1):
        s = s * t + like(coeffs[m], x)
    return s


@njit(cache=True, error_model="numpy", fastmath=False)
def sinc3_accurate(x):
    """sinc3 as the default mode evaluates it: its Taylor series below
    |x| = SINC3_SERIES_BELOW, where the closed form cancels, the closed form
    above.  -c_parity keeps the C's closed form (sinc3) everywhere."""
    if abs(x) < like(SINC3_SERIES_BELOW, x):
        return _even_series(SINC3_SERIES, x)
    return sinc3(x)


from .kernels.layout import SHAPE_GAUSS, SHAPE_ROUND, SHAPE_SQUARE, SHAPE_TOPHAT  # noqa: E402,F401


@njit(cache=True, error_model="numpy", fastmath=False)
def _spot_radius_sqr(r2, Na, Nb, Nc, spot):
    """The spot's squared radius from |dr*|^2 (crystal.spot_scale, the host's
    fopt F_SPOT; 0: the C's product in its order of multiplication, for
    -c_parity's bits)."""
    if spot == 0.0:
        return r2 * Na * Na * Nb * Nb * Nc * Nc
    return r2 * spot


@njit(cache=True, error_model="numpy", fastmath=False)
def lattice_factor(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar, cstar,
                   reduced):
    """F_latt for one sub-path and the per-axis factors (a, b, c; 1 unless SQUARE).

    ``astar``/``bstar``/``cstar`` are the *unrotated* reciprocal vectors (1/A), as
    nanoBragg.c uses them for the gauss/tophat radius; ``spot`` its scale
    (crystal.spot_scale).  ``reduced``: 0 = the C's sin(N x)/sin(x); 1 = reduced-argument
    sincg; 2 = the same with float32 sines."""
    one = like(1.0, h)
    fa = one
    fb = one
    fc = one
    if shape == SHAPE_SQUARE:
        F = one
        if Na > 1:
            fa = sincg_reduced(h, Na, reduced == 2) if reduced else sincg(like(math.pi, h) * h, Na)
            F *= fa
        if Nb > 1:
            fb = sincg_reduced(k, Nb, reduced == 2) if reduced else sincg(like(math.pi, h) * k, Nb)
            F *= fb
        if Nc > 1:
            fc = sincg_reduced(l, Nc, reduced == 2) if reduced else sincg(like(math.pi, h) * l, Nc)
            F *= fc
        return F, fa, fb, fc
    dh = h - h0
    dk = k - k0
    dl = l - l0
    if shape == SHAPE_ROUND:
        hrad_sqr = dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc
        x = like(math.pi, h) * np.sqrt(hrad_sqr * fudge)
        F = Na * Nb * Nc * like(0.723601254558268, h) * (sinc3_accurate(x) if reduced else sinc3(x))
        return F, fa, fb, fc
    dx = dh * astar[0] + dk * bstar[0] + dl * cstar[0]
    dy = dh * astar[1] + dk * bstar[1] + dl * cstar[1]
    dz = dh * astar[2] + dk * bstar[2] + dl * cstar[2]
    rad_star_sqr = _spot_radius_sqr(dx * dx + dy * dy + dz * dz, Na, Nb, Nc, spot)
    if shape == SHAPE_GAUSS:
        F = Na * Nb * Nc * np.exp(-(rad_star_sqr / like(0.63, h) * fudge))
    else:
        F = Na * Nb * Nc * (one if rad_star_sqr * fudge < like(0.3969, h) else like(0.0, h))
    return F, fa, fb, fc


# ---------------------------------------------------------------- structure factors
@njit(cache=True, error_model="numpy", fastmath=False)
def polint4(xa0, y0, y1, y2, y3, x):
    """4-point Lagrange interpolation at x through (xa0+i, y_i), i = 0..3,
    written term by term as nanoBragg.c's polint.  With integer nodes one apart
    the C's denominators are exactly -6, 2, -2 and 6, so using the constants
    gives the same bits."""
    x0_, x1_, x2_, x3_ = xa0, xa0 + like(1.0, xa0), xa0 + like(2.0, xa0), xa0 + like(3.0, xa0)
    t0 = (x - x1_) * (x - x2_) * (x - x3_) * y0 / like(-6.0, x)
    t1 = (x - x0_) * (x - x2_) * (x - x3_) * y1 / like(2.0, x)
    t2 = (x - x0_) * (x - x1_) * (x - x3_) * y2 / like(-2.0, x)
    t3 = (x - x0_) * (x - x1_) * (x - x2_) * y3 / like(6.0, x)
    return t0 + t1 + t2 + t3


@njit(cache=True, error_model="numpy", fastmath=False)
def _interp_l(Fhkl, ih, ik, l0, xl, l):
    return polint4(xl, Fhkl[ih, ik, l0], Fhkl[ih, ik, l0 + 1], Fhkl[ih, ik, l0 + 2],
                   Fhkl[ih, ik, l0 + 3], l)


@njit(cache=True, error_model="numpy", fastmath=False)
def _interp_kl(Fhkl, ih, k0, l0, xk, xl, k, l):
    return polint4(xk, _interp_l(Fhkl, ih, k0, l0, xl, l), _interp_l(Fhkl, ih, k0 + 1, l0, xl, l),
                   _interp_l(Fhkl, ih, k0 + 2, l0, xl, l), _interp_l(Fhkl, ih, k0 + 3, l0, xl, l), k)


@njit(cache=True, error_model="numpy", fastmath=False)
def tricubic_F(Fhkl, hmin, kmin, lmin, h, k, l):
    """Tricubic interpolation (nanoBragg.c's polin3: along l, then k, then h)
    of the F grid at fractional (h, k, l); the caller guarantees that the
    4x4x4 neighbourhood lies inside the grid."""
    hf = np.int64(np.floor(h)) - 1
    kf = np.int64(np.floor(k)) - 1
    lf = np.int64(np.floor(l)) - 1
    xh, xk, xl = like(hf, h), like(kf, h), like(lf, h)
    h0, k0, l0 = hf - hmin, kf - kmin, lf - lmin
    return polint4(xh, _interp_kl(Fhkl, h0, k0, l0, xk, xl, k, l),
                   _interp_kl(Fhkl, h0 + 1, k0, l0, xk, xl, k, l),
                   _interp_kl(Fhkl, h0 + 2, k0, l0, xk, xl, k, l),
                   _interp_kl(Fhkl, h0 + 3, k0, l0, xk, xl, k, l), h)


@njit(cache=True, error_model="numpy", fastmath=False, inline="always")
def _stencil_inside(x, lo, hi):
    """Whether floor(x)-1 .. floor(x)+2 lie in lo..hi: floor(x) is an integer
    (kept in floating point, so NaN and infinities compare false rather than
    converting), compared with integer bounds, exactly."""
    f = np.floor(x)
    return f >= lo + 1 and f <= hi - 2


@njit(cache=True, error_model="numpy", fastmath=False)
def interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax, c_rules):
    """Whether tricubic_F may interpolate at (h, k, l): its 4x4x4 stencil,
    floor(x)-1 .. floor(x)+2 per axis, lies in the grid (hmin+1 <= h < hmax-1).

    c_rules (-c_parity): nanoBragg.c's test instead, (h-hmin+3) > range or
    h-2 < hmin (range = max-min+1) is out, i.e. hmin+2 <= h <= hmax-2, one
    index narrower than the stencil allows at each edge (docs/quirks.md #34)."""
    if c_rules:
        hr = hmax - hmin + 1
        kr = kmax - kmin + 1
        lr = lmax - lmin + 1
        return not ((h - hmin + 3) > hr or (h - 2) < hmin or
                    (k - kmin + 3) > kr or (k - 2) < kmin or
                    (l - lmin + 3) > lr or (l - 2) < lmin)
    return (_stencil_inside(h, hmin, hmax) and _stencil_inside(k, kmin, kmax)
            and _stencil_inside(l, lmin, lmax))


@njit(cache=True, error_model="numpy", inline="always")
def nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0, default_F):
    """Nearest-neighbour F, default_F outside the grid (or when no hkl list).

    Written with selects (the index is clamped to 0 outside) rather than
    branches, so loops calling it can vectorise."""
    inside = (hkls > 0 and h0 >= hmin and h0 <= hmax and k0 >= kmin and k0 <= kmax
              and l0 >= lmin and l0 <= lmax)
    # unsigned indices (>= 0 here by the test above): no negative-index
    # wraparound selects in the vectorised loops
    zero = np.uint64(0)
    i = np.uint64(h0 - hmin) if inside else zero
    j = np.uint64(k0 - kmin) if inside else zero
    k = np.uint64(l0 - lmin) if inside else zero
    v = Fhkl[i, j, k]
    return v if inside else default_F + v * 0


@njit(cache=True, error_model="numpy", inline="always")
def nearest_F_frac(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, h, k, l, default_F):
    """nearest_F at the grid point nearest to the fractional indices (h, k, l):
    the same value as nearest_F(Fhkl, ..., h0, k0, l0, default_F) with
    h0 = int64(ceil(h - 1/2)) (nanoBragg's rounding) and so on, for every h,
    including NaN, infinities and |h| >= 2^63 (default_F: outside the grid
    either way; tests/test_lean_sum.py), computed in floating point
    throughout: the bounds test and the flat index ((h0 - hmin) nk + k0 -
    kmin) nl + l0 - lmin are exact in float64 (integers far below 2^53), so
    a vector loop needs one conversion per lookup, not three conversions and
    two 64-bit integer multiplies (W3's terms loop: about 5 % of the run).

    The arguments are nearest_F's, but the fractional indices; Fhkl is read
    through .flat (C-contiguous), which compiles to a plain load or gather
    where a reshaped view would call numba's reshape helper.  The bounds'
    conversions to float are loop-invariant: a loop calling this (inlined)
    makes them once."""
    half = like(0.5, h)
    h0 = np.ceil(h - half)
    k0 = np.ceil(k - half)
    l0 = np.ceil(l - half)
    fhmin, fkmin, flmin = like(hmin, h), like(kmin, h), like(lmin, h)
    inside = ((hkls > 0) & (h0 >= fhmin) & (h0 <= like(hmax, h)) & (k0 >= fkmin)
              & (k0 <= like(kmax, h)) & (l0 >= flmin) & (l0 <= like(lmax, h)))
    nk = like(Fhkl.shape[1], h)
    nl = like(Fhkl.shape[2], h)
    q = ((h0 - fhmin) * nk + (k0 - fkmin)) * nl + (l0 - flmin)
    # (outside, q may be anything, NaN included: its conversion is not used)
    u = np.uint64(q) if inside else np.uint64(0)
    v = Fhkl.flat[u]
    return v if inside else default_F + v * 0


# ---------------------------------------------------------------- detector factors
@njit(cache=True, inline="always", error_model="numpy")
def _polarization_terms(kahn, incident, diffracted, axis):
    """polarization_factor's work, keeping what its derivative reuses:
    (factor, d, |diffracted|, i, B_in, E_in, E_out, B_out), d and i the unit
    diffracted and incident vectors (zero B_in, E_in, E_out, B_out where
    kahn == 0).  Inlined: the callers' (strict) flags."""
    incident, _ = unitize(incident)
    diffracted, mag = unitize(diffracted)
    axis, _ = unitize(axis)
    cos2theta = dot(incident, diffracted)
    cos2theta_sqr = cos2theta * cos2theta
    sin2theta_sqr = 1 - cos2theta_sqr
    z = 0.0 * cos2theta
    B_in = E_in = (z, z, z)
    E_out = B_out = z
    if kahn != 0.0:
        B_in, _ = unitize(cross(axis, incident))
        E_in, _ = unitize(cross(incident, B_in))
        E_out = dot(diffracted, E_in)
        B_out = dot(diffracted, B_in)
        psi = -np.arctan2(B_out, E_out)
        factor = like(0.5, cos2theta) * (1.0 + cos2theta_sqr - kahn * np.cos(2 * psi) * sin2theta_sqr)
    else:
        # kahn = 0: the subtracted term is 0 * cos(0) * sin2theta_sqr = +-0, and
        # x - (+-0) == x (NaN stays NaN), so the cos call is skipped, same bits
        factor = like(0.5, cos2theta) * (1.0 + cos2theta_sqr)
    return factor, diffracted, mag, incident, B_in, E_in, E_out, B_out


@njit(cache=True, error_model="numpy", fastmath=False)
def polarization_factor(kahn, incident, diffracted, axis):
    """Kahn polarization factor and the re-normalised diffracted vector.

    nanoBragg.c re-unitizes its incident, diffracted and axis vectors *in place*
    here; the caller keeps using the returned diffracted vector for the rest of
    the sub-pixel so that the last bits match the reference."""
    t = _polarization_terms(kahn, incident, diffracted, axis)
    return t[0], t[1]


@njit(cache=True, error_model="numpy", fastmath=False)
def polarization_kahn_slope(incident, diffracted, axis):
    """d polarization_factor / d kahn: the factor is affine in the Kahn factor,
    so its slope is the factor at 1 minus the factor at 0."""
    return (polarization_factor(1.0, incident, diffracted, axis)[0]
            - polarization_factor(0.0, incident, diffracted, axis)[0])


@njit(cache=True, error_model="numpy", fastmath=False)
def solid_angle(pixel_size, airpath, close_distance, point_pixel):
    """Pixel solid angle (sr): pixel^2/R^2 * obliquity (close_distance/R), or
    1/R^2 for -point_pixel."""
    if point_pixel:
        return 1.0 / airpath / airpath
    return pixel_size * pixel_size / airpath / airpath * close_distance / airpath


@njit(cache=True, error_model="numpy", fastmath=False)
def curved_position(pos, distance, beam, sdet, fdet):
    """nanoBragg's -curved_det: the flat detector position pos (m) moved onto
    the sphere of radius ``distance`` (m) about the sample.  The beam vector
    times the distance is turned about sdet by pos's lab y over the distance
    (rad), then about fdet by its lab z over the distance; pos's x is unused
    (the C's model)."""
    v0 = (distance * beam[0], distance * beam[1], distance * beam[2])
    v1 = rotate_axis(v0, sdet, pos[1] / distance)
    return rotate_axis(v1, fdet, pos[2] / distance)


@njit(cache=True, inline="always", error_model="numpy", fastmath=False)
def _sphere_coords(surf, depth, close, odet, fdet, sdet):
    """(q, u, v, A, rho): the point surf (m) of the detector's surface plane,
    depth (m) below it, in sphere_position's terms: q = surf - close odet, its
    offsets u = q.fdet and v = q.sdet from the point of contact, the radius
    A = close + q.odet + depth and rho = |(u, v)|.  The depth is added to the
    radius alone: folded into the flat position it would put eps times the
    depth into u and v in a turned frame (tools/fuzz.py metamorphic, seed 168)."""
    q = (surf[0] - close * odet[0], surf[1] - close * odet[1], surf[2] - close * odet[2])
    u = dot(q, fdet)
    v = dot(q, sdet)
    return q, u, v, close + dot(q, odet) + depth, np.sqrt(u * u + v * v)


@njit(cache=True, error_model="numpy", fastmath=False)
def sphere_position(surf, depth, close, odet, fdet, sdet):
    """The default mode's -curved_det: the point surf (m) of the detector's
    surface plane, at depth (m) below it (a sensor layer's; 0 on the face), on
    the sphere about the sample that touches the detector plane at its point
    nearest the sample, close odet (close: the close distance, m).  surf's
    offsets u = q.fdet, v = q.sdet from that point (q = surf - close odet)
    become arcs: the point at angle rho/close (rho = |(u, v)|) from odet,
    towards u fdet + v sdet, so the pixels keep their places on the detector
    (nanoBragg.c's curved_position swaps and mirrors the two axes: docs/quirks.md
    #21).  The depth moves the point outward along its ray, to the radius
    close + q.odet + depth.  Every pixel of the surface lies at the close
    distance and faces the sample (the kernels take its parallax as 1 and its
    solid angle without obliquity)."""
    q, u, v, A, rho = _sphere_coords(surf, depth, close, odet, fdet, sdet)
    if rho == 0.0:
        return (A * odet[0], A * odet[1], A * odet[2])
    th = rho / close
    c = np.cos(th)
    sg = np.sin(th) / rho
    return (A * (c * odet[0] + sg * (u * fdet[0] + v * sdet[0])),
            A * (c * odet[1] + sg * (u * fdet[1] + v * sdet[1])),
            A * (c * odet[2] + sg * (u * fdet[2] + v * sdet[2])))


@njit(cache=True, error_model="numpy", fastmath=False)
def capture_fraction(layer, thickstep, mu, parallax):
    """Fraction of photons absorbed in sensor layer ``layer`` (0-based) of
    thickness ``thickstep`` (m) for attenuation coefficient mu (1/m) and
    parallax = cos of the angle to the detector normal."""
    return (np.exp(-layer * thickstep * mu / parallax)
            - np.exp(-(layer + 1) * thickstep * mu / parallax))


# ---------------------------------------------------------------- derivatives
# First derivatives for nbnumba.autodiff's adjoint kernel (kernels/adjoint.py).
# Each function takes the arguments of the formula it differentiates and, where
# it also returns the value, gets it by calling that formula: the value has one
# implementation.  Same units as the formulas above.
#: below this |N d| the closed-form df/dh loses more than ~30 ulp: use the series
SINCG_NEAR = 0.1

#: x / sin(x) = sum_k X_OVER_SIN_SERIES[k] x^(2k), k = 0..8: the exact
#: rationals 1, 1/6, 7/360, 31/15120, ... rounded to float64
X_OVER_SIN_SERIES = (1.0, 0.16666666666666666, 0.019444444444444445, 0.00205026455026455,
                     0.0002099867724867725, 2.1336045641601196e-05, 2.1633474427786596e-06,
                     2.192327134456764e-07, 2.2213930853920414e-08)


@njit(cache=True, error_model="numpy", fastmath=False)
def sincg_near_dh(x, N):
    """d/dh of f = sin(N x)/sin(x), x = pi h, for any real N, by its Taylor
    series: sincg_grad's form where |N h| < SINCG_NEAR, whose bracket
    N cos(N x) - f cos(x) cancels there (relative error ~3 eps / (N x)^2: 2e-6
    at h = 1e-6, all of it at h = 1e-9 for N = 3.7).

    f = N A(u) B(u) with u = x^2, A = sin(N x)/(N x) and B = x / sin(x)
    (X_OVER_SIN_SERIES).  At N = 1, f = 1, so every coefficient of u^k,
    k >= 1, carries the factor m = 1 - N^2 = (1 - N)(1 + N): with
    A_i = (-1)^i N^(2i) / (2i+1)! and N^(2i) - 1 = -m G_i,
    G_i = 1 + N^2 + ... + N^(2i-2), the coefficient is m q_k with
    q_k = sum_(i=1..k) (-1)^(i+1) G_i / (2i+1)! B_(k-i), summed without the
    cancellation near N = 1.  df/dh = pi N x m sum_(k=1..8) 2k q_k u^(k-1).
    For |N x| < pi SINCG_NEAR the first term left out is below 1e-20 of the
    sum."""
    u = x * x
    n2 = N * N
    acc = 0.0
    for k in range(8, 0, -1):
        q = 0.0
        g = 1.0                 # G_i
        a = 1.0                 # 1 / (2i+1)! with its sign (-1)^(i+1)
        for i in range(1, k + 1):
            a = a / ((2.0 * i) * (2.0 * i + 1.0))
            q += a * g * X_OVER_SIN_SERIES[k - i]
            g = g * n2 + 1.0
            a = -a
        acc = acc * u + 2.0 * k * q
    return math.pi * N * x * (1.0 - N) * (1.0 + N) * acc


@njit(cache=True, error_model="numpy", fastmath=False)
def sincg_grad(h, N):
    """(d/dh, d/dN) of sin(N pi h)/sin(pi h) written as in nanoBragg.c (any real
    N; used when N itself is refined).  At h == 0 the C returns N: (0, 1).
    Where |N h| < SINCG_NEAR, d/dh is sincg_near_dh's series (the closed form
    cancels there); d/dN = x cos(N x)/sin(x) does not cancel."""
    x = math.pi * h
    if x == 0.0:
        return 0.0 * h, 1.0 + 0.0 * h
    s = np.sin(x)
    cN = np.cos(N * x)
    if abs(N * h) < SINCG_NEAR:
        return sincg_near_dh(x, N), x * cN / s
    f = np.sin(x * N) / s
    return math.pi * (N * cN - f * np.cos(x)) / s, x * cN / s


@njit(cache=True, error_model="numpy", fastmath=False)
def sincg_near_coeffs(N):
    """Coefficients (c_0 .. c_6) of df/dh = s_n sum_k c_k (pi d)^(2k+1) near a
    peak (|N d| < SINCG_NEAR) of f = sincg_reduced(h, N), integer N.

    There f = s_n sum_{k=0}^{N-1} cos((N-1-2k) pi d), s_n = (-1)^(n (N-1)),
    so df/dh = -2 pi s_n sum_j j sin(j pi d) over j = N-1, N-3, ... > 0;
    expanding each sine, c_k = -2 pi (-1)^k P_(2k+2) / (2k+1)!, with
    P_m = sum_j j^m.  Every |j pi d| < 0.1 pi, so the first omitted term is
    below 1e-19 of the sum (all P_m > 0: no cancellation)."""
    p = np.zeros(7)             # P_2, P_4, ..., P_14
    j = np.int64(N) - 1
    while j > 0:
        t = float(j) * float(j)
        q = t
        for m in range(7):
            p[m] += q
            q *= t
        j -= 2
    c = -2.0 * math.pi
    return (c * p[0], -c * p[1] / 6.0, c * p[2] / 120.0, -c * p[3] / 5040.0,
            c * p[4] / 362880.0, -c * p[5] / 39916800.0, c * p[6] / 6227020800.0)


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_frac(h, N, f32, signed):
    """(num, den, d, e, parity): sincg_reduced(h, N) as the fraction num / den,
    num = +-sin(pi e) and den = sin(pi d), or (+-N, 1) where d == 0, with its
    phase reduction (reduce_phase).  The one source of the reduced sincg's
    fraction: the image kernel's lattice loop multiplies the three axes'
    numerators and denominators and divides once per cell; the adjoint's fast
    path forms one reciprocal of the three denominators for its values and
    derivatives.  ``f32`` (a literal at the call site: one polynomial is
    compiled, not both) evaluates the sines in float32.  ``signed`` (a
    literal too): with False, num carries no (-1)^parity sign, so the value
    is sincg_reduced's up to its sign; the image kernel's lattice loop, whose
    factor is only ever squared, skips the parity's integer work that way
    (docs/performance.md, seventh round).  Inlined, the polynomials take the
    caller's flags (FMA contraction in the fast-math loops)."""
    d, e, parity = reduce_phase(h, N)
    if f32:
        num = np.float64(sinpi_poly32(np.float32(e)))
        den = np.float64(sinpi_poly32(np.float32(d)))
    else:
        num = sinpi_poly64(e)
        den = sinpi_poly64(d)
    num = N if d == 0.0 else num
    den = 1.0 if d == 0.0 else den
    if signed:
        num = -num if parity != 0 else num
    return num, den, d, e, parity


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_frac3(h, k, l, Na, Nb, Nc):
    """(num, den): the products over the three axes of sincg_reduced_frac's
    unsigned (num, den) in float64, in the same operations (the same bits as
    multiplying the three calls' results in axis order), except its d == 0
    limit: an axis with d == 0 makes num = den = 0 (both its sines are
    sin(0)).  The image kernel's lattice loop: with no branch between the
    axes the loop body is one block, and the six sines' polynomials run
    interleaved (sinpi_poly64_x6); the loop finds the rare cells on a
    lattice plane by den == 0 and evaluates them again with the limit (the
    limit's compares and selects were about 5 % of the loop's time:
    docs/performance.md, eighth round)."""
    da, ea, _ = reduce_phase(h, Na)
    db, eb, _ = reduce_phase(k, Nb)
    dc, ec, _ = reduce_phase(l, Nc)
    na, sa, nb, sb, nc, sc = sinpi_poly64_x6(ea, da, eb, db, ec, dc)
    return na * nb * nc, sa * sb * sc


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_parts(h, N):
    """(f, d, e, parity, den): f = sincg_reduced(h, N) (float64 sines: the
    same operations, so the same value), its phase reduction and the
    denominator of sincg_reduced_frac (sin(pi d), 1 at d == 0), for
    sincg_reduced_grad_from.  The polynomials are called directly
    (inline="always", not through the sinpi_reduced overload, which is
    compiled once with strict flags): inlined, they take the caller's flags."""
    num, den, d, e, parity = sincg_reduced_frac(h, N, False, True)
    # -(x / y) == (-x) / y and x / 1 == x: the bits of sincg_reduced
    return num / den, d, e, parity, den


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_grad_core(h, N, cn, f, d, e, sgn, inv):
    """(df/dh, df/dN) of f = sincg_reduced(h, N) off the lattice planes
    (d != 0), from its reduction (d, e), sgn = (-1)^parity (1 for the
    unsigned factor, whose derivatives come out unsigned alike) and
    inv = 1/sin(pi d).  Branch-free (both forms, then a select), so loops
    over it vectorise:

    * the closed form: f = sgn sin(pi e)/sin(pi d), so
      df/dh = pi [sgn N cos(pi e) - f cos(pi d)] / sin(pi d) and
      df/dN = pi h sgn cos(pi e) / sin(pi d), with cos(pi x) = sin(pi (1/2 - |x|))
      (the same polynomial).  Near a peak its bracket cancels (relative error
      ~3 ulp / (pi N d)^2), so
    * where |N d| < SINCG_NEAR, df/dh is the series of sincg_near_coeffs
      (cn = sincg_near_coeffs(N); there m = rint(N d) = 0, so the sign is
      that of n (N-1)).

    As accurate as the value everywhere.  At d == 0 the caller applies the
    limit (sincg_reduced_grad_from)."""
    sce = sgn * sinpi_poly64(0.5 - abs(e))
    cd = sinpi_poly64(0.5 - abs(d))
    dh = math.pi * (N * sce - f * cd) * inv
    dN = math.pi * h * sce * inv
    x = math.pi * d
    t = x * x
    ser = x * (cn[0] + t * (cn[1] + t * (cn[2] + t * (cn[3] + t * (cn[4] + t * (cn[5]
                                                                             + t * cn[6]))))))
    near = abs(N * d) < SINCG_NEAR
    return (sgn * ser if near else dh), dN


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_grad_from(h, N, cn, f, d, e, parity, inv):
    """(df/dh, df/dN) of f = sincg_reduced(h, N) from sincg_reduced_parts'
    (f, d, e, parity) and inv = 1/sd (the caller may form it jointly with
    other axes: one division for several; any value where d == 0);
    cn = sincg_near_coeffs(N).  sincg_reduced_grad_core with the lattice
    planes' limit: at d == 0, f = +-N, df/dh = 0 (the series there) and
    df/dN is taken as that of the value, +-1."""
    sgn = 1.0 - 2.0 * parity
    dh, dN = sincg_reduced_grad_core(h, N, cn, f, d, e, sgn, inv)
    return dh, (dN if d != 0.0 else sgn)


@njit(cache=True, inline="always", error_model="numpy")
def sincg_reduced_value_grad(h, N, cn):
    """(f, df/dh, df/dN) with f = sincg_reduced(h, N), integer N, float64;
    cn = sincg_near_coeffs(N).  Value and derivatives share one phase
    reduction and one sin(pi d) (sincg_reduced_parts, sincg_reduced_grad_from)."""
    f, d, e, parity, sd = sincg_reduced_parts(h, N)
    dh, dN = sincg_reduced_grad_from(h, N, cn, f, d, e, parity, 1.0 / (sd if d != 0.0 else 1.0))
    return f, dh, dN


@njit(cache=True, error_model="numpy", fastmath=False)
def sincg_reduced_grad(h, N):
    """(d/dh, d/dN) of sincg_reduced(h, N) (integer N), float64, as accurate
    as the value everywhere (sincg_reduced_value_grad)."""
    f, dh, dN = sincg_reduced_value_grad(h, N, sincg_near_coeffs(N))
    return dh, dN


@njit(cache=True, error_model="numpy", fastmath=False)
def sinc3_dx_over_x(x):
    """(d sinc3/dx) / x, finite at 0: its Taylor series below |x| =
    SINC3_SERIES_BELOW (the closed form there cancels as sinc3's does), the
    closed form 3 (sin x / x^2 - sinc3(x) / x) / x above."""
    if abs(x) < SINC3_SERIES_BELOW:
        return _even_series(SINC3_DX_SERIES, x)
    return (3.0 * np.sin(x) / (x * x) - 3.0 * sinc3(x) / x) / x


@njit(cache=True, error_model="numpy", fastmath=False)
def lattice_factor_grad(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar,
                        cstar, reduced):
    """(F_latt, dF/dh, dF/dk, dF/dl, dF/dNa, dF/dNb, dF/dNc), float64.

    Same arguments as lattice_factor.  h0, k0, l0 (the nearest integers) are
    constant between half-integers, so round/gauss/tophat differentiate through
    h - h0.  Tophat: the edge of the top hat is a step, whose derivative (a
    delta) is left out: dF/dh = 0 and dF/dN = F/N.  An axis with N <= 1 has a
    factor of 1 (as in the value), hence zero derivative."""
    F, fa, fb, fc = lattice_factor(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot,
                                   astar, bstar, cstar, reduced)
    z = 0.0 * h
    if shape == SHAPE_SQUARE:
        ga = gb = gc = gNa = gNb = gNc = z
        if Na > 1:
            ga, gNa = sincg_reduced_grad(h, Na) if reduced else sincg_grad(h, Na)
        if Nb > 1:
            gb, gNb = sincg_reduced_grad(k, Nb) if reduced else sincg_grad(k, Nb)
        if Nc > 1:
            gc, gNc = sincg_reduced_grad(l, Nc) if reduced else sincg_grad(l, Nc)
        return (F, ga * fb * fc, fa * gb * fc, fa * fb * gc,
                gNa * fb * fc, fa * gNb * fc, fa * fb * gNc)
    dh = h - h0
    dk = k - k0
    dl = l - l0
    if shape == SHAPE_ROUND:
        hrad_sqr = dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc
        x = math.pi * np.sqrt(hrad_sqr * fudge)
        # dF/d(hrad_sqr), with dx/d(hrad_sqr) = pi^2 fudge / (2 x)
        dr = Na * Nb * Nc * 0.723601254558268 * sinc3_dx_over_x(x) * math.pi * math.pi * fudge / 2.0
        return (F, dr * 2.0 * dh * Na * Na, dr * 2.0 * dk * Nb * Nb, dr * 2.0 * dl * Nc * Nc,
                F / Na + dr * 2.0 * dh * dh * Na, F / Nb + dr * 2.0 * dk * dk * Nb,
                F / Nc + dr * 2.0 * dl * dl * Nc)
    if shape == SHAPE_GAUSS:
        dx = dh * astar[0] + dk * bstar[0] + dl * cstar[0]
        dy = dh * astar[1] + dk * bstar[1] + dl * cstar[1]
        dz = dh * astar[2] + dk * bstar[2] + dl * cstar[2]
        n2, pN = _spot_n2(Na, Nb, Nc, spot)
        rad_star_sqr = (dx * dx + dy * dy + dz * dz) * n2
        q = -F * fudge / 0.63             # dF/d(rad_star_sqr)
        return (F, q * n2 * 2.0 * dot((dx, dy, dz), astar), q * n2 * 2.0 * dot((dx, dy, dz), bstar),
                q * n2 * 2.0 * dot((dx, dy, dz), cstar),
                F / Na + q * pN * rad_star_sqr / Na, F / Nb + q * pN * rad_star_sqr / Nb,
                F / Nc + q * pN * rad_star_sqr / Nc)
    return F, z, z, z, F / Na, F / Nb, F / Nc


@njit(cache=True, error_model="numpy", inline="always")
def polint4_dx(xa0, y0, y1, y2, y3, x):
    """d/dx of polint4 (the same four Lagrange terms, each differentiated)."""
    x0_, x1_, x2_, x3_ = xa0, xa0 + 1.0, xa0 + 2.0, xa0 + 3.0
    a0, a1, a2, a3 = x - x0_, x - x1_, x - x2_, x - x3_
    return ((a2 * a3 + a1 * a3 + a1 * a2) * y0 / -6.0
            + (a2 * a3 + a0 * a3 + a0 * a2) * y1 / 2.0
            + (a1 * a3 + a0 * a3 + a0 * a1) * y2 / -2.0
            + (a1 * a2 + a0 * a2 + a0 * a1) * y3 / 6.0)


@njit(cache=True, error_model="numpy", inline="always")
def _lagrange4(xa0, x):
    """Weights and their x-derivatives of the 4-point interpolation at x
    (polint4 / polint4_dx applied to the unit vectors)."""
    return ((polint4(xa0, 1.0, 0.0, 0.0, 0.0, x), polint4(xa0, 0.0, 1.0, 0.0, 0.0, x),
             polint4(xa0, 0.0, 0.0, 1.0, 0.0, x), polint4(xa0, 0.0, 0.0, 0.0, 1.0, x)),
            (polint4_dx(xa0, 1.0, 0.0, 0.0, 0.0, x), polint4_dx(xa0, 0.0, 1.0, 0.0, 0.0, x),
             polint4_dx(xa0, 0.0, 0.0, 1.0, 0.0, x), polint4_dx(xa0, 0.0, 0.0, 0.0, 1.0, x)))


@njit(cache=True, error_model="numpy", fastmath=False)
def tricubic_F_grad(Fhkl, hmin, kmin, lmin, h, k, l, G, gch, c, scatter):
    """(dF/dh, dF/dk, dF/dl) of tricubic_F at (h, k, l); with ``scatter``, also
    adds c * dF/dFhkl[...] (the 64 interpolation weights)
    into G[gch] (G: (chunks,) + Fhkl's shape; indexed, not sliced, by the caller).  tricubic_F is linear in the grid: F = sum wh wk wl F[...]."""
    hf = np.int64(np.floor(h)) - 1
    kf = np.int64(np.floor(k)) - 1
    lf = np.int64(np.floor(l)) - 1
    wh, dwh = _lagrange4(like(hf, h), h)
    wk, dwk = _lagrange4(like(kf, h), k)
    wl, dwl = _lagrange4(like(lf, h), l)
    h0, k0, l0 = hf - hmin, kf - kmin, lf - lmin
    gh = gk = gl = 0.0 * h
    for a in range(4):
        for b in range(4):
            for e in range(4):
                v = Fhkl[h0 + a, k0 + b, l0 + e]
                gh += dwh[a] * wk[b] * wl[e] * v
                gk += wh[a] * dwk[b] * wl[e] * v
                gl += wh[a] * wk[b] * dwl[e] * v
                if scatter:
                    G[gch, h0 + a, k0 + b, l0 + e] += c * wh[a] * wk[b] * wl[e]
    return gh, gk, gl


@njit(cache=True, error_model="numpy", fastmath=False)
def polarization_factor_grad(kahn, incident, v, axis):
    """(factor, d factor / dv) for polarization_factor(kahn, incident, v, axis),
    v the (not necessarily unit) diffracted vector, e.g. a pixel position.

    factor = (1 + c^2 - K cos(2 psi) (1 - c^2)) / 2 with c = i.d, d = v/|v|,
    cos(2 psi) = (E^2 - B^2)/(E^2 + B^2), E = d.E_in, B = d.B_in.  Along the
    beam (E = B = 0) psi is taken as 0, as atan2(0, 0) gives, with zero slope."""
    # the value and the vectors it is built from: polarization_factor's own work
    factor, d, mag, inc, B_in, E_in, E, B = _polarization_terms(kahn, incident, v, axis)
    c = dot(inc, d)
    c2p = 1.0 + 0.0 * c
    gE = gB = 0.0 * c
    if kahn != 0.0:
        q = E * E + B * B
        if q > 0.0:
            c2p = (E * E - B * B) / q
            gE = 4.0 * E * B * B / (q * q)
            gB = -4.0 * B * E * E / (q * q)
    ci = c * (1.0 + kahn * c2p)
    w = -0.5 * kahn * (1.0 - c * c)
    g = (ci * inc[0] + w * (gE * E_in[0] + gB * B_in[0]),
         ci * inc[1] + w * (gE * E_in[1] + gB * B_in[1]),
         ci * inc[2] + w * (gE * E_in[2] + gB * B_in[2]))
    # factor depends on v only through d = v/|v|: project out the radial part
    gd = dot(g, d)
    return factor, ((g[0] - gd * d[0]) / mag, (g[1] - gd * d[1]) / mag, (g[2] - gd * d[2]) / mag)


@njit(cache=True, error_model="numpy", fastmath=False)
def polarization_factor_grad_incident(kahn, incident, v, axis):
    """d factor / d incident for polarization_factor(kahn, incident, v, axis),
    incident the (not necessarily unit) incident vector.

    With i, d and a the unit incident, diffracted and axis vectors, c = i.d
    and E_in, B_in the unit vectors across the beam that the value builds,
    E_in = (a - (a.i) i)/s and B_in = (a x i)/s with s = |a x i|, so
    E^2 + B^2 = 1 - c^2 and factor = (1 + c^2 - K (E^2 - B^2)) / 2.  Hence
    d factor/di = c d - K (E dE/di - B dB/di), with
    dE/di = -(c a + (a.i) d)/s + E (a.i) a/s^2 and
    dB/di = (d x a)/s + B (a.i) a/s^2.  Along the scattered ray (E = B = 0)
    psi is taken as 0, as the value takes it: factor = (1 + c^2 - K (1 - c^2))/2
    there, slope (1 + K) c d.  The radial part is projected out (the value
    depends on incident only through i)."""
    factor, d, mag, inc, B_in, E_in, E, B = _polarization_terms(kahn, incident, v, axis)
    c = dot(inc, d)
    g = (c * d[0], c * d[1], c * d[2])
    if kahn != 0.0:
        if E * E + B * B > 0.0:
            a, _ = unitize(axis)
            al = dot(a, inc)
            s = np.sqrt(1.0 - al * al)
            da = cross(d, a)
            ks = kahn / s
            kt = kahn * al * (E * E - B * B) / (s * s)
            g = (g[0] + ks * (E * (c * a[0] + al * d[0]) + B * da[0]) - kt * a[0],
                 g[1] + ks * (E * (c * a[1] + al * d[1]) + B * da[1]) - kt * a[1],
                 g[2] + ks * (E * (c * a[2] + al * d[2]) + B * da[2]) - kt * a[2])
        else:
            g = ((1.0 + kahn) * g[0], (1.0 + kahn) * g[1], (1.0 + kahn) * g[2])
    _, r = unitize(incident)
    gi = dot(g, inc)
    return ((g[0] - gi * inc[0]) / r, (g[1] - gi * inc[1]) / r, (g[2] - gi * inc[2]) / r)


@njit(cache=True, error_model="numpy", fastmath=False)
def solid_angle_grad(pixel_size, pos, close_distance, point_pixel):
    """(d omega / d pos (1/m per m, 3-vector), d omega / d close_distance) for
    solid_angle(pixel_size, |pos|, close_distance, point_pixel)."""
    d, R = unitize(pos)
    return solid_angle_grad_at(pixel_size, d, R, solid_angle(pixel_size, R, close_distance,
                                                             point_pixel), point_pixel)


@njit(cache=True, inline="always", error_model="numpy")
def solid_angle_grad_at(pixel_size, d, R, om, point_pixel):
    """solid_angle_grad from what its caller has at hand: (d, R) = unitize(pos)
    and om = solid_angle(pixel_size, R, close_distance, point_pixel)."""
    if point_pixel:
        k = -2.0 * om / R
        return (k * d[0], k * d[1], k * d[2]), 0.0 * R
    k = -3.0 * om / R
    return (k * d[0], k * d[1], k * d[2]), pixel_size * pixel_size / R / R / R


@njit(cache=True, error_model="numpy", fastmath=False)
def _sinc_and_slope(th):
    """(sin(th)/th, its derivative (th cos th - sin th)/th^2), by their Taylor
    series below th = 0.1 (where the derivative's difference cancels: its
    relative error would be ~eps/th^2); th >= 0."""
    if th < 0.1:
        t2 = th * th
        return (1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0))),
                -th / 3.0 * (1.0 - t2 / 10.0 * (1.0 - t2 / 28.0 * (1.0 - t2 / 54.0
                                                                  * (1.0 - t2 / 88.0)))))
    sn = np.sin(th)
    return sn / th, (th * np.cos(th) - sn) / (th * th)


@njit(cache=True, error_model="numpy", fastmath=False)
def sphere_position_grad(g, surf, depth, close, odet, fdet, sdet):
    """For p = sphere_position(surf, depth, close, odet, fdet, sdet) and
    g = dL/dp: (dL/dsurf, dL/ddepth, dL/dclose, dL/dodet, dL/dfdet, dL/dsdet),
    the axes as the formula uses them (not held unit).

    p = A (C odet + sg w) with q = surf - close odet, u = q.fdet, v = q.sdet,
    A = close + q.odet + depth, w = u fdet + v sdet, rho = |(u, v)|,
    th = rho/close, C = cos th and sg = sin(th)/rho = sinc(th)/close.  So
    dL/ddepth = dL/dA, dC/drho = -sin(th)/close, dsg/drho = sinc'(th)/close^2,
    dC/dclose = sin(th) rho/close^2 and dsg/dclose = -C/close^2 (sin th = th sinc th)."""
    q, u, v, A, rho = _sphere_coords(surf, depth, close, odet, fdet, sdet)
    th = rho / close
    C = np.cos(th)
    sc, dsc = _sinc_and_slope(th)
    sg = sc / close
    w = (u * fdet[0] + v * sdet[0], u * fdet[1] + v * sdet[1], u * fdet[2] + v * sdet[2])
    gn = dot(g, odet)
    gw = dot(g, w)
    gA = C * gn + sg * gw           # dL/dA (= dL/ddepth)
    gC = A * gn                     # dL/dC
    gsg = A * gw                    # dL/dsg
    # dL/dw = A sg g; dL/dodet (direct) = A C g
    Asg = A * sg
    gu = Asg * dot(g, fdet)
    gv = Asg * dot(g, sdet)
    if rho > 0.0:
        grho = -gC * np.sin(th) / close + gsg * dsc / (close * close)
        gu += grho * u / rho
        gv += grho * v / rho
    gclose = gA + gC * np.sin(th) * rho / (close * close) - gsg * C / (close * close)
    # through q = surf - close odet: u = q.fdet, v = q.sdet, A - close - depth = q.odet
    gq = (gu * fdet[0] + gv * sdet[0] + gA * odet[0],
          gu * fdet[1] + gv * sdet[1] + gA * odet[1],
          gu * fdet[2] + gv * sdet[2] + gA * odet[2])
    gclose -= dot(gq, odet)
    AC = A * C
    god = (AC * g[0] + gA * q[0] - close * gq[0],
           AC * g[1] + gA * q[1] - close * gq[1],
           AC * g[2] + gA * q[2] - close * gq[2])
    gf = (gu * q[0] + u * Asg * g[0], gu * q[1] + u * Asg * g[1], gu * q[2] + u * Asg * g[2])
    gs = (gv * q[0] + v * Asg * g[0], gv * q[1] + v * Asg * g[1], gv * q[2] + v * Asg * g[2])
    return gq, gA, gclose, god, gf, gs


@njit(cache=True, error_model="numpy", fastmath=False)
def capture_fraction_parallax_grad(layer, thickstep, mu, p):
    """(capture, d capture / d p, d capture / d thickstep (1/m), d capture /
    d mu (m)) for capture_fraction(layer, thickstep, mu, p) at parallax p.

    With x = thickstep mu / p, capture = exp(-layer x) - exp(-(layer + 1) x),
    so d capture / dx = (layer + 1) exp(-(layer + 1) x) - layer exp(-layer x),
    dx/dp = -x/p, dx/dthickstep = mu/p and dx/dmu = thickstep/p.  The curved
    detector's sensor faces the sample (p = 1 at every pixel) and calls this
    alone; a flat one chains d/dp through the position (capture_fraction_grad)."""
    cap = capture_fraction(layer, thickstep, mu, p)
    x = thickstep * mu / p
    dcdx = (layer + 1) * np.exp(-(layer + 1) * x) - layer * np.exp(-layer * x)
    return cap, -(x / p) * dcdx, dcdx * mu / p, dcdx * thickstep / p


@njit(cache=True, error_model="numpy", fastmath=False)
def capture_fraction_grad(layer, thickstep, mu, d, R, odet):
    """(capture, d capture / d pos (1/m, 3-vector), d capture / d odet at a
    fixed position, d capture / d thickstep (1/m), d capture / d mu (m)) for
    capture_fraction(layer, thickstep, mu, d . odet), with (d, R) =
    unitize(pos) and odet the detector normal (unit vector): the parallax
    p = d . odet has dp/dpos = (odet - p d)/R (d = pos/|pos|) and dp/dodet = d."""
    p = dot(d, odet)
    cap, dcdp, dcdt, dcdm = capture_fraction_parallax_grad(layer, thickstep, mu, p)
    k = dcdp / R
    return (cap, (k * (odet[0] - p * d[0]), k * (odet[1] - p * d[1]), k * (odet[2] - p * d[2])),
            (dcdp * d[0], dcdp * d[1], dcdp * d[2]), dcdt, dcdm)


@njit(cache=True, error_model="numpy", fastmath=False)
def _spot_n2(Na, Nb, Nc, spot):
    """(the spot's scale, d ln(scale) / d ln N of each axis): (Na Nb Nc)^2 and 2
    for the C's (spot 0), spot and 2/3 otherwise (crystal.spot_scale)."""
    if spot == 0.0:
        return Na * Na * Nb * Nb * Nc * Nc, 2.0
    return spot, 2.0 / 3.0


@njit(cache=True, error_model="numpy", fastmath=False)
def lattice_factor_star_grad(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar,
                             cstar):
    """The gauss shape's dependence on the reciprocal vectors: (dF/dastar,
    dF/dbstar, dF/dcstar), 3-tuples in 1/A units as astar; zero for the other
    shapes (square and round do not use them; the top hat is flat between its
    edges).  Through dr* = (h-h0) a* + ... and, unless spot is the C's (0),
    through the scale (Na Nb Nc / |a* . (b* x c*)|)^(2/3) (crystal.spot_scale), whose
    d ln / d a* is -2/3 (b* x c*) / (a* . (b* x c*))."""
    dh = h - h0
    dk = k - k0
    dl = l - l0
    v = (dh * astar[0] + dk * bstar[0] + dl * cstar[0],
         dh * astar[1] + dk * bstar[1] + dl * cstar[1],
         dh * astar[2] + dk * bstar[2] + dl * cstar[2])
    z = 0.0 * h
    if shape != SHAPE_GAUSS:
        return (z, z, z), (z, z, z), (z, z, z)
    n2, pN = _spot_n2(Na, Nb, Nc, spot)
    rad = dot(v, v) * n2
    q = -(Na * Nb * Nc * np.exp(-(rad / 0.63 * fudge))) * fudge / 0.63   # dF/d(rad)
    ga, gb, gc = q * n2 * 2.0 * dh, q * n2 * 2.0 * dk, q * n2 * 2.0 * dl
    if spot == 0.0:
        return ((ga * v[0], ga * v[1], ga * v[2]), (gb * v[0], gb * v[1], gb * v[2]),
                (gc * v[0], gc * v[1], gc * v[2]))
    bc, ca, ab = cross(bstar, cstar), cross(cstar, astar), cross(astar, bstar)
    t = -q * rad * (2.0 / 3.0) / dot(astar, bc)
    return ((ga * v[0] + t * bc[0], ga * v[1] + t * bc[1], ga * v[2] + t * bc[2]),
            (gb * v[0] + t * ca[0], gb * v[1] + t * ca[1], gb * v[2] + t * ca[2]),
            (gc * v[0] + t * ab[0], gc * v[1] + t * ab[1], gc * v[2] + t * ab[2]))
