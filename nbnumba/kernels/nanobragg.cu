// nbnumba GPU pixel kernel: one CUDA thread renders one detector pixel.
//
// This is a transcription of nbnumba/kernels/cpu.py (`pixel_value`, `render`)
// and of the jitted formulas in nbnumba/physics.py.  Every __device__ helper
// below carries the name of the physics.py function it mirrors and performs
// the same floating-point operations in the same order (the sub-path loops
// are fused: no per-thread work buffer), so that the float64 entry point
// reproduces the numba engine to the last bit when both use the same math
// library (the host build, see below, gives identical images) and, compiled
// with --fmad=false, up to the ulp-level differences of CUDA's sin/cos/exp
// on a GPU.  The float32 entry point performs the arithmetic of the numba
// engine's -precision single: see pixel_value.  The exception is the numba
// kernel's fast-math code (cpu.FAST_MATH: the square-crystal reduced-sincg
// lattice loop and the default mode's lean F sum), where LLVM may fuse into
// FMAs, depending on the CPU, what this kernel rounds separately: there the
// bounds of gpu.numba_fast_math / gpu.FAST_MAX_ULP apply (docs/gpu.md).
//
// The same file compiles three ways:
//   * by CuPy/NVRTC at run time (nbnumba/kernels/gpu.py): no #include at all,
//     NVRTC provides the math functions;
//   * by nvcc (tests/test_gpu_source.py builds PTX for sm_80 and sm_90);
//   * as plain host C++ with g++ and `-include cuda_compat.h`, which turns the
//     CUDA keywords into nothing, provides threadIdx/blockIdx and a host loop
//     that "launches" the kernel pixel by pixel (NB_HOST_BUILD is then
//     defined and a few extern "C" host entry points are added at the end).
//
// Entry points (extern "C", so no name mangling):
//   render_f64 / render_f32 (active, S, F, row0, row1, first_pixel, latch_pixel,
//       latch_sub, iopt, fopt, vecs, incident, lam, cells, Fhkl, out, omega, oor, ran)
// with the argument meaning and layout of cpu.render (one launch covers the
// detector rows row0 <= s < row1: gpu.py splits long renders into several
// launches):
//   active   uint8[S*F]     1 = render this pixel (ROI and mask)
//   iopt     int64[N_IOPT+2] integer options, I_* offsets below, followed by
//                           the F grid's 2nd and 3rd dimensions (I_FHKL_*)
//   (real = double in both entry points; fgrid = double in render_f64 and
//    float in render_f32, the only array whose type differs)
//   fopt     real[N_FOPT]   float options, F_* offsets below
//   vecs     real[9*3]      fdet, sdet, odet, pix0, beam, polar, a*, b*, c*
//   incident real[nsrc*4]   per source: the incident unit vector, then the factor
//                           its terms carry (1 unless iopt[I_WEIGHTED]);
//                           lam real[nsrc] wavelengths
//   cells    real[2*nphi*nmos*3*3]  [variant][phi][mosaic][a|b|c][xyz]
//   Fhkl     fgrid[dim0*dim1*dim2], C order (h outermost), index [h-hmin][k-kmin][l-lmin]
//   out      float32[S*F]   photons per pixel
//   omega    real[S*F]      sum of the pixel solid angle over sub-pixels
//   oor      int64[S*F]     first out-of-range interpolation sub-path, or -1
//   ran      int64[S*F]     1 if any phi loop ran for the pixel
// Pixels with active == 0 are not written (callers pre-fill the outputs).
//
// Adjoint entry point (nbnumba.autodiff, float64 only; see its comment below):
//   adjoint_f64 (active, g, S, F, row0, row1, mode, iopt, fopt, vecs, incident,
//       lam, cells, Fhkl, gpar, cacc, gF, val)
//
// Trace entry points (compiled only with -DNB_TRACE, and in the host build):
//   trace_f64 / trace_f32 (s, f, first_exec, latch_sub, iopt, fopt, vecs,
//       incident, lam, cells, Fhkl, tbuf, tpos, maxrows, value, omega_sum, info)
// run pixel (s, f) in one thread and record cpu.py's trace events (EV_*
// below) into tbuf, double[maxrows * NB_TRACE_COLS], rows [event, values...],
// counting rows in tpos[0] (rows past maxrows are counted, not written):
// the -trace_pixel of -device cuda (gpu.trace_pixel).

typedef long long nb_i64;
typedef unsigned char nb_u8;

// threads per block used by nbnumba/kernels/gpu.py (and the host loop)
#ifndef NB_BLOCK
#define NB_BLOCK 256
#endif

// ---- option vector layouts: must match nbnumba/kernels/cpu.py ---------------
#define I_OVERSAMPLE 0
#define I_THICKSTEPS 1
#define I_NSRC 2
#define I_NPHI 3
#define I_NMOS 4
#define I_SHAPE 5
#define I_CURVED 6
#define I_POINT 7
#define I_NOPOLAR 8
#define I_OS_THICK 9
#define I_OS_POLAR 10
#define I_OS_OMEGA 11
#define I_INTERP 12
#define I_HKLS 13
#define I_HMIN 14
#define I_HMAX 15
#define I_KMIN 16
#define I_KMAX 17
#define I_LMIN 18
#define I_LMAX 19
#define I_CPARITY 20
#define I_REDUCED 21
#define I_FPIXELS 22
// 1 when the sources' terms carry unequal factors (incident's 4th column):
// the default mode's -sourcefile weights; 0 under -c_parity
#define I_WEIGHTED 23
#define N_IOPT 24
// Two entries appended by the launchers (gpu.kernel_iopt): the allocated
// second and third dimensions of the F grid.  The numba kernel reads them
// from the 3-D array's shape; the grid is allocated one larger than the
// Miller index ranges (as nanoBragg.c does), so they are not derivable from
// the bounds.
#define I_FHKL_KDIM (N_IOPT + 0)
#define I_FHKL_LDIM (N_IOPT + 1)
#define N_IOPT_EXT (N_IOPT + 2)

#define F_PIXEL 0
#define F_SUBPIXEL 1
#define F_DISTANCE 2
#define F_CLOSE 3
#define F_THICKSTEP 4
#define F_MU 5
#define F_THICK 6
#define F_KAHN 7
#define F_DMIN 8
#define F_NA 9
#define F_NB 10
#define F_NC 11
#define F_FUDGE 12
#define F_DEFAULT_F 13
#define F_I_BG 14
#define F_WATER 15
#define F_SCALE 16
#define F_STEPS 17
#define F_SPOT 18
#define N_FOPT 19

#define V_FDET 0
#define V_SDET 1
#define V_ODET 2
#define V_PIX0 3
#define V_BEAM 4
#define V_POLAR 5
#define V_ASTAR 6
#define V_BSTAR 7
#define V_CSTAR 8
#define N_VECS 9

#define SHAPE_SQUARE 0
#define SHAPE_ROUND 1
#define SHAPE_GAUSS 2
#define SHAPE_TOPHAT 3

// trace events: must match nbnumba/kernels/cpu.py (EV_*, TRACE_COLS)
#define EV_GEOM 1
#define EV_HKL 2
#define EV_LATT 3
#define EV_PHI 4
#define EV_FCELL 5
#define EV_FINAL 6
#define EV_SOURCE2 7
#define NB_TRACE_COLS 32

// math.pi as a double literal; like(math.pi, x) is (real)NB_PI
#define NB_PI 3.141592653589793

// ---- precision-dispatched math (float -> the f-suffixed libm functions) -----
__device__ __forceinline__ double nb_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float nb_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double nb_sin(double x) { return sin(x); }
__device__ __forceinline__ float nb_sin(float x) { return sinf(x); }
__device__ __forceinline__ double nb_cos(double x) { return cos(x); }
__device__ __forceinline__ float nb_cos(float x) { return cosf(x); }
__device__ __forceinline__ double nb_exp(double x) { return exp(x); }
__device__ __forceinline__ float nb_exp(float x) { return expf(x); }
__device__ __forceinline__ double nb_atan2(double y, double x) { return atan2(y, x); }
__device__ __forceinline__ float nb_atan2(float y, float x) { return atan2f(y, x); }
__device__ __forceinline__ double nb_ceil(double x) { return ceil(x); }
__device__ __forceinline__ float nb_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double nb_floor(double x) { return floor(x); }
__device__ __forceinline__ float nb_floor(float x) { return floorf(x); }
__device__ __forceinline__ double nb_rint(double x) { return rint(x); }
__device__ __forceinline__ float nb_rint(float x) { return rintf(x); }

// 3-vector (physics.py uses 3-tuples)
template <typename real>
struct vec3 {
    real x, y, z;
};

template <typename real>
__device__ __forceinline__ vec3<real> mk(real x, real y, real z) {
    vec3<real> v;
    v.x = x;
    v.y = y;
    v.z = z;
    return v;
}

// three consecutive array elements as a vector in the (possibly wider) type W
template <typename real, typename W>
__device__ __forceinline__ vec3<W> load3w(const real* p) {
    return mk<W>((W)p[0], (W)p[1], (W)p[2]);
}

// ============================================================== physics.py
template <typename real>
__device__ __forceinline__ real dot(vec3<real> u, vec3<real> v) {
    return u.x * v.x + u.y * v.y + u.z * v.z;
}

template <typename real>
__device__ __forceinline__ vec3<real> cross(vec3<real> u, vec3<real> v) {
    return mk<real>(u.y * v.z - u.z * v.y,
                    u.z * v.x - u.x * v.z,
                    u.x * v.y - u.y * v.x);
}

template <typename real>
__device__ __forceinline__ real magnitude(vec3<real> u) {
    return nb_sqrt(u.x * u.x + u.y * u.y + u.z * u.z);
}

// unitize: returns the magnitude, *unit receives u/|u| (the zero vector maps to itself)
template <typename real>
__device__ __forceinline__ real unitize(vec3<real> u, vec3<real>* unit) {
    real mag = magnitude(u);
    if (mag != (real)0.0) {
        *unit = mk<real>(u.x / mag, u.y / mag, u.z / mag);
    } else {
        *unit = mk<real>((real)0, (real)0, (real)0);
    }
    return mag;
}

template <typename real>
__device__ __forceinline__ vec3<real> scale(vec3<real> u, real s) {
    return mk<real>(s * u.x, s * u.y, s * u.z);
}

// rotate v by phi (rad) about the unit vector axis (right-handed)
template <typename real>
__device__ vec3<real> rotate_axis(vec3<real> v, vec3<real> axis, real phi) {
    real sinphi = nb_sin(phi);
    real cosphi = nb_cos(phi);
    real d = (axis.x * v.x + axis.y * v.y + axis.z * v.z) * ((real)1.0 - cosphi);
    return mk<real>(axis.x * d + v.x * cosphi + (-axis.z * v.y + axis.y * v.z) * sinphi,
                    axis.y * d + v.y * cosphi + (+axis.z * v.x - axis.x * v.z) * sinphi,
                    axis.z * d + v.z * cosphi + (-axis.y * v.x + axis.x * v.y) * sinphi);
}
// (physics.rotate_xyz and rotate_umat only run in the host-side setup.)

// physics.curved_position: -curved_det's flat position pos moved onto the
// sphere of radius distance (pos's lab y and z read as angles; x unused)
template <typename real>
__device__ __forceinline__ vec3<real> curved_position(vec3<real> pos, real distance,
                                                      vec3<real> beam, vec3<real> sdet,
                                                      vec3<real> fdet) {
    const vec3<real> v0 = mk<real>(distance * beam.x, distance * beam.y, distance * beam.z);
    const vec3<real> v1 = rotate_axis(v0, sdet, pos.y / distance);
    return rotate_axis(v1, fdet, pos.z / distance);
}

// physics._sphere_coords: the surface point surf, depth below it, in the
// sphere's terms, q = surf - close odet, its offsets u = q.fdet, v = q.sdet
// from the point of contact, the radius A = close + q.odet + depth and
// rho = |(u, v)| (the depth in the radius alone: in the flat position it put
// eps times the depth into u and v in a turned frame)
template <typename real>
__device__ __forceinline__ vec3<real> sphere_coords(vec3<real> surf, real depth, real close,
                                                    vec3<real> odet, vec3<real> fdet,
                                                    vec3<real> sdet, real* u, real* v, real* A,
                                                    real* rho) {
    const vec3<real> q = mk<real>(surf.x - close * odet.x, surf.y - close * odet.y,
                                  surf.z - close * odet.z);
    *u = dot(q, fdet);
    *v = dot(q, sdet);
    *A = close + dot(q, odet) + depth;
    *rho = nb_sqrt(*u * *u + *v * *v);
    return q;
}

// physics.sphere_position: the default mode's -curved_det, the surface point
// surf at depth below it moved onto the sphere of radius close about the
// sample that touches the detector plane at close odet; surf's offsets
// u = q.fdet, v = q.sdet from that point (q = surf - close odet) become arcs,
// the depth a larger radius (close + q.odet + depth)
template <typename real>
__device__ __forceinline__ vec3<real> sphere_position(vec3<real> surf, real depth, real close,
                                                      vec3<real> odet, vec3<real> fdet,
                                                      vec3<real> sdet) {
    real u, v, A, rho;
    sphere_coords(surf, depth, close, odet, fdet, sdet, &u, &v, &A, &rho);
    if (rho == (real)0.0) return mk<real>(A * odet.x, A * odet.y, A * odet.z);
    const real th = rho / close;
    const real c = nb_cos(th);
    const real sg = nb_sin(th) / rho;
    return mk<real>(A * (c * odet.x + sg * (u * fdet.x + v * sdet.x)),
                    A * (c * odet.y + sg * (u * fdet.y + v * sdet.y)),
                    A * (c * odet.z + sg * (u * fdet.z + v * sdet.z)));
}

// grating interference function sin(N x)/sin(x), N at x == 0; x = pi*h
template <typename real>
__device__ real sincg(real x, real N) {
    if (x == (real)0.0) return N;
    return nb_sin(x * N) / nb_sin(x);
}

// sin(pi x) for |x| <= 1/2 as an odd polynomial, physics.sinpi_reduced: the
// same coefficients (checked by tests/test_gpu_source.py) evaluated by the
// same Horner scheme, so no libm sine is involved and CPU and GPU agree to
// the bit.  float64: a degree-8 fit in x^2 (9 coefficients).
#define NB_SINPI_F64_0 (3.141592653589793)
#define NB_SINPI_F64_1 (-5.167712780049969)
#define NB_SINPI_F64_2 (2.5501640398773007)
#define NB_SINPI_F64_3 (-0.5992645293189447)
#define NB_SINPI_F64_4 (0.0821458865731029)
#define NB_SINPI_F64_5 (-0.007370430505916944)
#define NB_SINPI_F64_6 (0.0004662998161898394)
#define NB_SINPI_F64_7 (-2.1903497074626018e-05)
#define NB_SINPI_F64_8 (7.697826768224191e-07)
// float32 (-precision single): 6 coefficients fitted for relative error,
// each rounded to float as np.float32(c) rounds it
#define NB_SINPI_F32_0 (3.141592653523054)
#define NB_SINPI_F32_1 (-5.167712762071032)
#define NB_SINPI_F32_2 (2.550163239008298)
#define NB_SINPI_F32_3 (-0.5992513161608369)
#define NB_SINPI_F32_4 (0.08204641711375768)
#define NB_SINPI_F32_5 (-0.007022066957742263)

__device__ __forceinline__ double sinpi_reduced(double x) {
    const double t = x * x;
    double p = NB_SINPI_F64_8;
    p = p * t + NB_SINPI_F64_7;
    p = p * t + NB_SINPI_F64_6;
    p = p * t + NB_SINPI_F64_5;
    p = p * t + NB_SINPI_F64_4;
    p = p * t + NB_SINPI_F64_3;
    p = p * t + NB_SINPI_F64_2;
    p = p * t + NB_SINPI_F64_1;
    p = p * t + NB_SINPI_F64_0;
    return x * p;
}

__device__ __forceinline__ float sinpi_reduced(float x) {
    const float c0 = (float)NB_SINPI_F32_0, c1 = (float)NB_SINPI_F32_1;
    const float c2 = (float)NB_SINPI_F32_2, c3 = (float)NB_SINPI_F32_3;
    const float c4 = (float)NB_SINPI_F32_4, c5 = (float)NB_SINPI_F32_5;
    const float t = x * x;
    return x * (((((c5 * t + c4) * t + c3) * t + c2) * t + c1) * t + c0);
}

// physics.reduce_phase (d, e and the parity), as sincg_reduced computes them:
// the parity of n (N-1) + m from the low bits (AND for the product, XOR for the
// sum), which int64 or wrapping int32 arithmetic gives alike
template <typename real>
__device__ __forceinline__ void reduce_phase(real h, real N, real* d, real* e, nb_i64* parity) {
    const real n = nb_rint(h);
    *d = h - n;
    const real Nd = N * *d;
    const real m = nb_rint(Nd);
    *e = Nd - m;
    *parity = (((nb_i64)n & ((nb_i64)N - 1)) ^ (nb_i64)m) & 1;
}

// physics.forward_scatter: S as computed, or 0 where the default mode (on)
// scatters forward, |S| < NB_S_FORWARD (1/m): the reduced lattice factor's
// sines of such tiny indices underflow when multiplied over three axes
#define NB_S_FORWARD 1e-25
template <typename real>
__device__ __forceinline__ vec3<real> forward_scatter(vec3<real> S, bool on) {
    // (the sum in real, compared in double: physics.py's numba promotion)
    const bool tiny = on && (double)(fabs(S.x) + fabs(S.y) + fabs(S.z)) < NB_S_FORWARD;
    return tiny ? mk<real>((real)0, (real)0, (real)0) : S;
}

// sincg(pi*h, N) on reduced arguments, physics.sincg_reduced, as a fraction
// (physics.sincg_reduced_frac): with n = rint(h), d = h - n, m = rint(N d),
// e = N d - m the value is (-1)^(n (N-1) + m) sin(pi e) / sin(pi d); *num
// gets the signed numerator, *den the denominator ((+-N, 1) at d == 0), so
// that a product of axes takes one division.  The reduction is done in the
// precision of h; f32_sines (-precision single) evaluates the two sines in
// float32.
template <typename real>
__device__ void sincg_reduced_parts(real h, real N, bool f32_sines, real* num, real* den) {
    real d, e;
    nb_i64 parity;
    reduce_phase(h, N, &d, &e, &parity);
    if (d == (real)0.0) {
        *num = N;
        *den = (real)1.0;
    } else if (f32_sines) {
        *num = (real)sinpi_reduced((float)e);
        *den = (real)sinpi_reduced((float)d);
    } else {
        *num = sinpi_reduced(e);
        *den = sinpi_reduced(d);
    }
    if (parity != 0) *num = -*num;
}

// the value itself, float64 sines (physics.sincg_reduced; the adjoint's)
template <typename real>
__device__ real sincg_reduced(real h, real N) {
    real num, den;
    sincg_reduced_parts<real>(h, N, false, &num, &den);
    return num / den;
}

// Fourier transform of a sphere: 3 (sin x / x - cos x) / x^2, 1 at 0
template <typename real>
__device__ real sinc3(real x) {
    if (x == (real)0.0) return (real)1.0;
    return (real)3.0 * (nb_sin(x) / x - nb_cos(x)) / (x * x);
}

// physics.SINC3_SERIES / SINC3_DX_SERIES (checked by tests/test_gpu_source.py):
// the Taylor coefficients in x^2 of sinc3 and of (d sinc3/dx)/x, summed below
// |x| = NB_SINC3_SERIES_BELOW, where the closed form cancels
#define NB_SINC3_SERIES_BELOW (1.0)
#define NB_SINC3_0 (1.0)
#define NB_SINC3_1 (-0.1)
#define NB_SINC3_2 (0.0035714285714285713)
#define NB_SINC3_3 (-6.613756613756614e-05)
#define NB_SINC3_4 (7.515632515632515e-07)
#define NB_SINC3_5 (-5.7812557812557815e-09)
#define NB_SINC3_6 (3.2118087673643227e-11)
#define NB_SINC3_7 (-1.34949948208585e-13)
#define NB_SINC3_8 (4.439143033177138e-16)
#define NB_SINC3_DX_0 (-0.2)
#define NB_SINC3_DX_1 (0.014285714285714285)
#define NB_SINC3_DX_2 (-0.0003968253968253968)
#define NB_SINC3_DX_3 (6.012506012506012e-06)
#define NB_SINC3_DX_4 (-5.781255781255781e-08)
#define NB_SINC3_DX_5 (3.8541705208371877e-10)
#define NB_SINC3_DX_6 (-1.88929927492019e-12)
#define NB_SINC3_DX_7 (7.102628853083421e-15)
#define NB_SINC3_DX_8 (-2.1138776348462563e-17)

// physics._even_series: sum_m c_m x^(2m) by Horner's scheme, in type T
#define NB_EVEN_SERIES9(T, P, t) \
    ((((((((((T)P##8 * t + (T)P##7) * t + (T)P##6) * t + (T)P##5) * t + \
           (T)P##4) * t + (T)P##3) * t + (T)P##2) * t + (T)P##1) * t + (T)P##0))

// physics.sinc3_accurate: the default mode's sinc3 (the series near 0)
template <typename real>
__device__ real sinc3_accurate(real x) {
    if (x < (real)NB_SINC3_SERIES_BELOW && -x < (real)NB_SINC3_SERIES_BELOW) {
        const real t = x * x;
        return NB_EVEN_SERIES9(real, NB_SINC3_, t);
    }
    return sinc3(x);
}

// The gauss/tophat spot's squared radius from |dr*|^2 (physics._spot_radius_sqr):
// spot (crystal.spot_scale) times it, or 0 for nanoBragg.c's (Na Nb Nc)^2 in its
// order of multiplication (-c_parity's bits; docs/quirks.md #16)
template <typename wide>
__device__ wide spot_radius_sqr(wide r2, wide Na, wide Nb, wide Nc, wide spot) {
    if (spot == (wide)0.0) return r2 * Na * Na * Nb * Nb * Nc * Nc;
    return r2 * spot;
}

// F_latt of one sub-path; *fa, *fb, *fc get the per-axis factors (1 unless
// SQUARE).  h, k, l, the reciprocal vectors and the spot radius are in
// `wide`; the sines, cosines and exponentials in `real` (see pixel_value).
template <typename real, typename wide>
__device__ real lattice_factor(nb_i64 shape, wide h, wide k, wide l, nb_i64 h0, nb_i64 k0,
                               nb_i64 l0, real Na, real Nb, real Nc, real fudge, wide spot,
                               vec3<wide> astar, vec3<wide> bstar, vec3<wide> cstar,
                               nb_i64 reduced, real* fa, real* fb, real* fc) {
    const real one = (real)1.0;
    *fa = one;
    *fb = one;
    *fc = one;
    if (shape == SHAPE_SQUARE && reduced) {
        // kernels.cpu._lattice_square: F = (n_a n_b n_c) / (d_a d_b d_c), one
        // division per cell; the per-axis quotients are for the trace and the
        // adjoint (compiled away where unused)
        wide num = (wide)1.0, den = (wide)1.0, n, d;
        if (Na > (real)1) {
            sincg_reduced_parts<wide>(h, (wide)Na, reduced == 2, &n, &d);
            num *= n;
            den *= d;
            *fa = (real)(n / d);
        }
        if (Nb > (real)1) {
            sincg_reduced_parts<wide>(k, (wide)Nb, reduced == 2, &n, &d);
            num *= n;
            den *= d;
            *fb = (real)(n / d);
        }
        if (Nc > (real)1) {
            sincg_reduced_parts<wide>(l, (wide)Nc, reduced == 2, &n, &d);
            num *= n;
            den *= d;
            *fc = (real)(n / d);
        }
        return (real)(num / den);
    }
    if (shape == SHAPE_SQUARE) {
        real F = one;
        if (Na > (real)1) {
            *fa = sincg((real)NB_PI * (real)h, Na);
            F *= *fa;
        }
        if (Nb > (real)1) {
            *fb = sincg((real)NB_PI * (real)k, Nb);
            F *= *fb;
        }
        if (Nc > (real)1) {
            *fc = sincg((real)NB_PI * (real)l, Nc);
            F *= *fc;
        }
        return F;
    }
    const wide wNa = (wide)Na, wNb = (wide)Nb, wNc = (wide)Nc, wfudge = (wide)fudge;
    const wide dh = h - (wide)h0;
    const wide dk = k - (wide)k0;
    const wide dl = l - (wide)l0;
    if (shape == SHAPE_ROUND) {
        const wide hrad_sqr = dh * dh * wNa * wNa + dk * dk * wNb * wNb + dl * dl * wNc * wNc;
        const real x = (real)((wide)NB_PI * nb_sqrt(hrad_sqr * wfudge));
        return Na * Nb * Nc * (real)0.723601254558268 * (reduced ? sinc3_accurate(x) : sinc3(x));
    }
    const wide dx = dh * astar.x + dk * bstar.x + dl * cstar.x;
    const wide dy = dh * astar.y + dk * bstar.y + dl * cstar.y;
    const wide dz = dh * astar.z + dk * bstar.z + dl * cstar.z;
    const wide rad_star_sqr = spot_radius_sqr<wide>(dx * dx + dy * dy + dz * dz, wNa, wNb, wNc,
                                                    spot);
    if (shape == SHAPE_GAUSS) {
        return Na * Nb * Nc * nb_exp((real)(-(rad_star_sqr / (wide)0.63 * wfudge)));
    }
    return Na * Nb * Nc * (rad_star_sqr * wfudge < (wide)0.3969 ? one : (real)0.0);
}

// 4-point Lagrange interpolation through (xa0+i, ya[i]), term by term
template <typename real>
__device__ real polint4(real xa0, const real* ya, real x) {
    real x0_ = xa0;
    real x1_ = xa0 + (real)1.0;
    real x2_ = xa0 + (real)2.0;
    real x3_ = xa0 + (real)3.0;
    real t0 = (x - x1_) * (x - x2_) * (x - x3_) * ya[0] / ((x0_ - x1_) * (x0_ - x2_) * (x0_ - x3_));
    real t1 = (x - x0_) * (x - x2_) * (x - x3_) * ya[1] / ((x1_ - x0_) * (x1_ - x2_) * (x1_ - x3_));
    real t2 = (x - x0_) * (x - x1_) * (x - x3_) * ya[2] / ((x2_ - x0_) * (x2_ - x1_) * (x2_ - x3_));
    real t3 = (x - x0_) * (x - x1_) * (x - x2_) * ya[3] / ((x3_ - x0_) * (x3_ - x1_) * (x3_ - x2_));
    return t0 + t1 + t2 + t3;
}

// flat index into the F grid (h outermost)
__device__ __forceinline__ nb_i64 fhkl_index(nb_i64 ih, nb_i64 ik, nb_i64 il, nb_i64 kdim,
                                             nb_i64 ldim) {
    return (ih * kdim + ik) * ldim + il;
}

// tricubic interpolation of the F grid; caller checked interp_in_range
template <typename real, typename fgrid>
__device__ real tricubic_F(const fgrid* Fhkl, nb_i64 hmin, nb_i64 kmin, nb_i64 lmin,
                           nb_i64 kdim, nb_i64 ldim, real h, real k, real l) {
    nb_i64 hf = (nb_i64)nb_floor(h);
    nb_i64 kf = (nb_i64)nb_floor(k);
    nb_i64 lf = (nb_i64)nb_floor(l);
    real ya[4], yk[4], yh[4];
    for (int i1 = 0; i1 < 4; ++i1) {
        for (int i2 = 0; i2 < 4; ++i2) {
            for (int i3 = 0; i3 < 4; ++i3) {
                ya[i3] = (real)Fhkl[fhkl_index(hf - 1 + i1 - hmin, kf - 1 + i2 - kmin,
                                         lf - 1 + i3 - lmin, kdim, ldim)];
            }
            yk[i2] = polint4((real)(lf - 1), ya, l);
        }
        yh[i1] = polint4((real)(kf - 1), yk, k);
    }
    return polint4((real)(hf - 1), yh, h);
}

// physics._stencil_inside: floor(x)-1 .. floor(x)+2 lie in lo..hi; floor(x)
// stays a double (NaN and infinities compare false), exact against the bounds
__device__ __forceinline__ bool stencil_inside(double x, nb_i64 lo, nb_i64 hi) {
    const double f = floor(x);
    return f >= (double)(lo + 1) && f <= (double)(hi - 2);
}

// physics.interp_in_range: whether tricubic_F's 4x4x4 stencil lies in the grid
// (hmin+1 <= h < hmax-1 per axis); c_rules (-c_parity): nanoBragg.c's test
// (ranges = max-min+1), one index narrower at each edge (docs/quirks.md #34).
// Evaluated in double whatever the working precision (h arrives in `wide`;
// tricubic_F gets (real)h, the same value: real is double in every build).
template <typename real>
__device__ bool interp_in_range(real h_, real k_, real l_, nb_i64 hmin, nb_i64 hmax,
                                nb_i64 kmin, nb_i64 kmax, nb_i64 lmin, nb_i64 lmax,
                                bool c_rules) {
    double h = (double)h_, k = (double)k_, l = (double)l_;
    if (!c_rules) {
        return stencil_inside(h, hmin, hmax) && stencil_inside(k, kmin, kmax) &&
               stencil_inside(l, lmin, lmax);
    }
    double hr = (double)(hmax - hmin + 1);
    double kr = (double)(kmax - kmin + 1);
    double lr = (double)(lmax - lmin + 1);
    return !((h - (double)hmin + 3) > hr || (h - 2) < (double)hmin ||
             (k - (double)kmin + 3) > kr || (k - 2) < (double)kmin ||
             (l - (double)lmin + 3) > lr || (l - 2) < (double)lmin);
}

// nearest-neighbour F, default_F outside the grid or without an hkl list
template <typename real, typename fgrid>
__device__ real nearest_F(const fgrid* Fhkl, nb_i64 hkls, nb_i64 hmin, nb_i64 hmax, nb_i64 kmin,
                          nb_i64 kmax, nb_i64 lmin, nb_i64 lmax, nb_i64 kdim, nb_i64 ldim,
                          nb_i64 h0, nb_i64 k0, nb_i64 l0, real default_F) {
    if (hkls > 0 && hmin <= h0 && h0 <= hmax && kmin <= k0 && k0 <= kmax && lmin <= l0 &&
        l0 <= lmax) {
        return (real)Fhkl[fhkl_index(h0 - hmin, k0 - kmin, l0 - lmin, kdim, ldim)];
    }
    return default_F;
}

// Kahn polarization factor; *diffracted_out receives the re-unitized
// diffracted vector, which the caller keeps using (as nanoBragg.c does)
template <typename real>
__device__ real polarization_factor(real kahn, vec3<real> incident, vec3<real> diffracted,
                                    vec3<real> axis, vec3<real>* diffracted_out) {
    unitize(incident, &incident);
    unitize(diffracted, &diffracted);
    unitize(axis, &axis);
    real cos2theta = dot(incident, diffracted);
    real cos2theta_sqr = cos2theta * cos2theta;
    real sin2theta_sqr = (real)1 - cos2theta_sqr;
    real psi = (real)0;
    if (kahn != (real)0.0) {
        vec3<real> B_in, E_in;
        unitize(cross(axis, incident), &B_in);
        unitize(cross(incident, B_in), &E_in);
        real E_out = dot(diffracted, E_in);
        real B_out = dot(diffracted, B_in);
        psi = -nb_atan2(B_out, E_out);
    }
    *diffracted_out = diffracted;
    return (real)0.5 *
           ((real)1.0 + cos2theta_sqr - kahn * nb_cos((real)2 * psi) * sin2theta_sqr);
}

// pixel solid angle (sr)
template <typename real>
__device__ real solid_angle(real pixel_size, real airpath, real close_distance, bool point_pixel) {
    if (point_pixel) return (real)1.0 / airpath / airpath;
    return pixel_size * pixel_size / airpath / airpath * close_distance / airpath;
}

// fraction of the photons absorbed in sensor layer `layer` (0-based)
template <typename real>
__device__ real capture_fraction(real layer, real thickstep, real mu, real parallax) {
    return nb_exp(-layer * thickstep * mu / parallax) -
           nb_exp(-(layer + (real)1) * thickstep * mu / parallax);
}

// one trace row [ev, v[0], ..., v[N-1]] (cpu._record)
template <int N>
__device__ __forceinline__ void nb_record(double* tbuf, nb_i64* tpos, nb_i64 maxrows, int ev,
                                          const double (&v)[N]) {
    const nb_i64 r = *tpos;
    if (r < maxrows) {
        double* row = tbuf + r * NB_TRACE_COLS;
        row[0] = (double)ev;
        for (int i = 0; i < N; ++i) row[i + 1] = v[i];
    }
    *tpos = r + 1;
}

// ============================================================== cpu.py
// info[0]: first out-of-range interpolation sub-path or -1; info[1]: 1 if any
// phi loop ran; info[2]: number of sub-paths that reached the F lookup.
//
// Types.  `real` (input arrays) and `wide` (geometry, indices, sums) are
// both double in the two entry points; the templates are kept so that a
// narrower type can be tried in experiments.  `fgrid` is the element type of
// the F grid.  render_f32 is the numba engine's -precision single, operation
// for operation: everything in double except the F grid, stored as float
// (values widened exactly on load), and the two sines of the reduced sincg
// with their quotient, in float32 (I_REDUCED == 2).  One float32 design
// that reads geometry and cells as float was dropped: a float32 h = a.S
// carries an absolute error near 1e-5, a sincg phase error pi*N*1e-5, and
// float32 positions flip sub-paths across -tophat_spots/-binary_spots edges.
//
// The default mode without interpolation and -oversample_* switches sums
// the (phi, mosaic) terms of each source into their own partial sum first
// (times the source's factor with weighted sources), as cpu.py's lean path
// does; every other mode adds term by term (C order).
// TRACE (compile time): record cpu.py's trace events into tbuf (see the
// trace entry points); false in the render kernels, which then carry no
// trace code at all.
template <typename real, typename wide, typename fgrid, bool TRACE>
__device__ void pixel_value(nb_i64 spixel, nb_i64 fpixel, bool first_exec, nb_i64 latch_sub,
                            const nb_i64* __restrict__ iopt, const real* __restrict__ fopt,
                            const real* __restrict__ vecs, const real* __restrict__ incident,
                            const real* __restrict__ lam, const real* __restrict__ cells,
                            const fgrid* __restrict__ Fhkl, wide* value, real* omega_sum,
                            nb_i64* info, double* tbuf, nb_i64* tpos, nb_i64 maxrows) {
    const wide z = (wide)0;
    const wide one = (wide)1;
    const nb_i64 os = iopt[I_OVERSAMPLE];
    const nb_i64 nthick = iopt[I_THICKSTEPS];
    const nb_i64 nsrc = iopt[I_NSRC], nphi = iopt[I_NPHI], nmos = iopt[I_NMOS];
    const nb_i64 shape = iopt[I_SHAPE];
    const bool c_parity = iopt[I_CPARITY] != 0;
    const nb_i64 reduced = iopt[I_REDUCED];  // 0: C's sincg, 1: reduced, 2: float32 sines
    const bool os_thick = iopt[I_OS_THICK] != 0;
    const bool os_polar = iopt[I_OS_POLAR] != 0;
    const bool os_omega = iopt[I_OS_OMEGA] != 0;
    // -curved_det: 1 nanoBragg.c's lab-frame map (-c_parity), 2 the default
    // mode's sphere (model.py; docs/quirks.md #21)
    const nb_i64 curved = iopt[I_CURVED];
    const bool point_pixel = iopt[I_POINT] != 0;
    const bool interp = iopt[I_INTERP] != 0 && latch_sub != -2;
    // -sourcefile's relative intensities (incident's 4th column) weigh each
    // source's terms: the default mode's correction of nanoBragg.c, which
    // counts every source once (docs/quirks.md #20); 0 under -c_parity
    const bool weighted = iopt[I_WEIGHTED] != 0;
    const nb_i64 hkls = iopt[I_HKLS];
    const nb_i64 hmin = iopt[I_HMIN], hmax = iopt[I_HMAX];
    const nb_i64 kmin = iopt[I_KMIN], kmax = iopt[I_KMAX];
    const nb_i64 lmin = iopt[I_LMIN], lmax = iopt[I_LMAX];
    const nb_i64 kdim = iopt[I_FHKL_KDIM], ldim = iopt[I_FHKL_LDIM];
    const wide pixel = (wide)fopt[F_PIXEL], subpixel = (wide)fopt[F_SUBPIXEL];
    const wide distance = (wide)fopt[F_DISTANCE], close_distance = (wide)fopt[F_CLOSE];
    const wide thickstep = (wide)fopt[F_THICKSTEP], mu = (wide)fopt[F_MU];
    const wide thick = (wide)fopt[F_THICK];
    const wide kahn = (wide)fopt[F_KAHN], dmin = (wide)fopt[F_DMIN];
    const real Na = fopt[F_NA], Nb = fopt[F_NB], Nc = fopt[F_NC], fudge = fopt[F_FUDGE];
    const wide spot = (wide)fopt[F_SPOT];
    const real default_F = fopt[F_DEFAULT_F], water = fopt[F_WATER];
    const wide I_bg = (wide)fopt[F_I_BG];
    const vec3<wide> fdet = load3w<real, wide>(vecs + 3 * V_FDET);
    const vec3<wide> sdet = load3w<real, wide>(vecs + 3 * V_SDET);
    const vec3<wide> odet = load3w<real, wide>(vecs + 3 * V_ODET);
    const vec3<wide> pix0 = load3w<real, wide>(vecs + 3 * V_PIX0);
    const vec3<wide> beam = load3w<real, wide>(vecs + 3 * V_BEAM);
    const vec3<wide> polar_axis = load3w<real, wide>(vecs + 3 * V_POLAR);
    const vec3<wide> astar = load3w<real, wide>(vecs + 3 * V_ASTAR);
    const vec3<wide> bstar = load3w<real, wide>(vecs + 3 * V_BSTAR);
    const vec3<wide> cstar = load3w<real, wide>(vecs + 3 * V_CSTAR);

    // nanoBragg.c's arithmetic unless a corrected formula is needed: several
    // sensor layers without -oversample_thick, or any -oversample_* switch
    const bool corrected = (!c_parity) && (nthick > 1 || os_thick || os_polar || os_omega);
    // cpu.py's lean path: one partial sum per source, no per-sub-path state
    const bool lean = (!c_parity) && (!interp) && (!TRACE) && !(os_thick || os_polar || os_omega);

    wide I = I_bg;
    wide polar = iopt[I_NOPOLAR] != 0 ? one : z;
    wide polar_cut = z;  // the first sub-path's factor where -dmin cuts it (#24)
    wide omega_pixel = z;
    wide omega_acc = z;
    wide capture = z;
    wide acc = z;     // corrected path: weighted crystal sum
    wide capsum = z;  // corrected path: background weight summed over layers
    nb_i64 variant = first_exec ? 0 : 1;
    nb_i64 first_oor = -1;
    nb_i64 ran_phi = 0;
    nb_i64 sub_count = 0;
    vec3<wide> diffracted = mk<wide>(z, z, z);
    vec3<wide> last_incident = mk<wide>(z, z, z);  // for the trace's final record
    wide last_Fdet = z, last_Sdet = z;

    // a sensor layer is sampled at its middle in the default mode (docs/quirks.md
    // #39); nanoBragg.c (-c_parity) takes its front face
    const wide half_layer = c_parity ? z : (wide)0.5;
    for (nb_i64 thick_tic = 0; thick_tic < nthick; ++thick_tic) {
        const wide Odet = ((wide)thick_tic + half_layer) * thickstep;
        capture = z;
        if (thick == (wide)0.0) capture = one;
        wide layer_sum = z;
        wide layer_capture = z;
        wide layer_bg = z;  // corrected path: sum of the sub-paths' background weights
        for (nb_i64 subS = 0; subS < os; ++subS) {
            for (nb_i64 subF = 0; subF < os; ++subF) {
                const wide Fdet = subpixel * (wide)(fpixel * os + subF) + subpixel / (wide)2.0;
                const wide Sdet = subpixel * (wide)(spixel * os + subS) + subpixel / (wide)2.0;
                last_Fdet = Fdet;
                last_Sdet = Sdet;
                vec3<wide> pos;
                if (curved == 2) {
                    // the default mode's sphere: detector coordinates become arcs;
                    // the surface point and the layer's depth go in apart (the
                    // depth is a radius: in the flat position it would put its
                    // rounding into the arcs in a turned frame)
                    const vec3<wide> surf = mk<wide>(Fdet * fdet.x + Sdet * sdet.x + pix0.x,
                                                     Fdet * fdet.y + Sdet * sdet.y + pix0.y,
                                                     Fdet * fdet.z + Sdet * sdet.z + pix0.z);
                    pos = sphere_position(surf, Odet, close_distance, odet, fdet, sdet);
                } else {
                    pos = mk<wide>(Fdet * fdet.x + Sdet * sdet.x + Odet * odet.x + pix0.x,
                                   Fdet * fdet.y + Sdet * sdet.y + Odet * odet.y + pix0.y,
                                   Fdet * fdet.z + Sdet * sdet.z + Odet * odet.z + pix0.z);
                    if (curved == 1) {
                        // -c_parity: nanoBragg.c's sphere, the lab y and z as angles
                        pos = curved_position(pos, distance, beam, sdet, fdet);
                    }
                }
                const wide airpath = unitize(pos, &diffracted);
                if (os_omega) {
                    // (a pixel of the default mode's sphere faces the sample: obliquity 1)
                    // the plane of a layer at depth Odet lies at close + Odet (#42;
                    // nanoBragg.c takes the front plane's close distance)
                    const wide plane = c_parity ? close_distance : close_distance + Odet;
                    omega_pixel = solid_angle(pixel, airpath, curved == 2 ? airpath : plane,
                                              point_pixel);
                } else if (omega_pixel == (wide)0.0) {
                    // the pixel's one solid angle: at its first sub-pixel on the
                    // sensor's face (depth 0, the C's), wherever #39 puts the layer
                    wide face = airpath;
                    if (Odet != (wide)0.0) {
                        vec3<wide> p0 = mk<wide>(Fdet * fdet.x + Sdet * sdet.x + pix0.x,
                                                 Fdet * fdet.y + Sdet * sdet.y + pix0.y,
                                                 Fdet * fdet.z + Sdet * sdet.z + pix0.z);
                        if (curved == 2)
                            p0 = sphere_position(p0, z, close_distance, odet, fdet, sdet);
                        vec3<wide> unused;
                        face = unitize(p0, &unused);
                    }
                    omega_pixel = solid_angle(pixel, face, curved == 2 ? face : close_distance,
                                              point_pixel);
                }
                omega_acc += omega_pixel;
                if (capture == (wide)0.0 || os_thick) {
                    // (on the default mode's sphere the sensor faces the sample)
                    const wide parallax = curved == 2 ? one : dot(diffracted, odet);
                    capture = capture_fraction((wide)thick_tic, thickstep, mu, parallax);
                }
                if (subS == 0 && subF == 0) layer_capture = capture;
                // the water background fills the pixel: it takes the mean over the
                // sub-paths of the product of the oversampled factors, as each Bragg
                // term does (fixed factors apply at the end); with -oversample_polar
                // the product is formed per source below
                wide w = one;
                if (os_thick) w *= capture;
                if (os_omega) w *= omega_pixel;
                if (corrected && !os_polar) layer_bg += w;
                for (nb_i64 source = 0; source < nsrc; ++source) {
                    const vec3<wide> incident_v = load3w<real, wide>(incident + 4 * source);
                    const wide lambda_ = (wide)lam[source];
                    const wide w_src = (wide)incident[4 * source + 3];
                    const vec3<wide> S = forward_scatter<wide>(
                        mk<wide>((diffracted.x - incident_v.x) / lambda_,
                                 (diffracted.y - incident_v.y) / lambda_,
                                 (diffracted.z - incident_v.z) / lambda_), !c_parity);
                    last_incident = incident_v;
                    if (TRACE && source == 0) {
                        const double v[26] = {
                            (double)pix0.x, (double)pix0.y, (double)pix0.z, (double)fdet.x,
                            (double)fdet.y, (double)fdet.z, (double)sdet.x, (double)sdet.y,
                            (double)sdet.z, (double)pos.x, (double)pos.y, (double)pos.z,
                            (double)airpath, (double)omega_pixel, (double)close_distance,
                            // (the obliquity at this sub-path: 1 on the sphere; its
                            // layer's own plane with -oversample_omega, #42)
                            curved == 2 ? 1.0
                                        : (double)((close_distance +
                                                    (os_omega && !c_parity ? Odet : z)) /
                                                   airpath),
                            (double)diffracted.x,
                            (double)diffracted.y, (double)diffracted.z, (double)incident_v.x,
                            (double)incident_v.y, (double)incident_v.z, (double)lambda_,
                            (double)S.x, (double)S.y, (double)S.z};
                        nb_record(tbuf, tpos, maxrows, EV_GEOM, v);
                    }
                    const wide stol = (wide)0.5 * nb_sqrt(S.x * S.x + S.y * S.y + S.z * S.z);
                    if (dmin > (wide)0.0 && stol > (wide)0.0) {
                        if (dmin > (wide)0.5 / stol) {
                            if (corrected && os_polar) {
                                // -dmin cuts the Bragg term only: water still fills this
                                // sub-path (diffracted is left as it is)
                                vec3<wide> dn;
                                const wide pf = polarization_factor(kahn, incident_v, diffracted,
                                                                    polar_axis, &dn);
                                layer_bg += weighted ? w * pf * w_src : w * pf;
                            } else if (polar_cut == (wide)0.0 && polar == (wide)0.0 &&
                                       !c_parity) {
                                // a pixel that -dmin cuts whole takes its first
                                // sub-path's factor, which its water keeps
                                // (kernels.cpu.pixel_value; docs/quirks.md #24)
                                vec3<wide> dn;
                                polar_cut = polarization_factor(kahn, incident_v, diffracted,
                                                                polar_axis, &dn);
                            }
                            continue;
                        }
                    }
                    if (polar == (wide)0.0 || os_polar) {
                        polar = polarization_factor(kahn, incident_v, diffracted, polar_axis,
                                                    &diffracted);
                        if (corrected && os_polar)
                            layer_bg += weighted ? w * polar * w_src : w * polar;
                    }
                    ran_phi = 1;
                    wide acc_s = z;  // lean path: this source's partial sum
                    for (nb_i64 phi_tic = 0; phi_tic < nphi; ++phi_tic) {
                        for (nb_i64 mos = 0; mos < nmos; ++mos) {
                            const real* cell = cells + ((variant * nphi + phi_tic) * nmos + mos) * 9;
                            const wide h = (wide)cell[0] * S.x + (wide)cell[1] * S.y + (wide)cell[2] * S.z;
                            const wide k = (wide)cell[3] * S.x + (wide)cell[4] * S.y + (wide)cell[5] * S.z;
                            const wide l = (wide)cell[6] * S.x + (wide)cell[7] * S.y + (wide)cell[8] * S.z;
                            const nb_i64 h0 = (nb_i64)nb_ceil(h - (wide)0.5);
                            const nb_i64 k0 = (nb_i64)nb_ceil(k - (wide)0.5);
                            const nb_i64 l0 = (nb_i64)nb_ceil(l - (wide)0.5);
                            real fa, fb, fc;
                            const real F_latt = lattice_factor<real, wide>(
                                shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar,
                                cstar, reduced, &fa, &fb, &fc);
                            if (lean) {
                                const real Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin,
                                                          lmax, kdim, ldim, h0, k0, l0, default_F);
                                acc_s += (wide)(Fc * Fc * F_latt * F_latt);
                                continue;
                            }
                            if (TRACE && source == 0 && mos == 0) {
                                if (phi_tic == 0) {
                                    const double v[24] = {
                                        (double)cell[0] * 1e10, (double)cell[1] * 1e10,
                                        (double)cell[2] * 1e10, (double)cell[3] * 1e10,
                                        (double)cell[4] * 1e10, (double)cell[5] * 1e10,
                                        (double)cell[6] * 1e10, (double)cell[7] * 1e10,
                                        (double)cell[8] * 1e10, (double)astar.x, (double)astar.y,
                                        (double)astar.z, (double)bstar.x, (double)bstar.y,
                                        (double)bstar.z, (double)cstar.x, (double)cstar.y,
                                        (double)cstar.z, (double)h, (double)k, (double)l,
                                        (double)h0, (double)k0, (double)l0};
                                    nb_record(tbuf, tpos, maxrows, EV_HKL, v);
                                }
                                if (shape == SHAPE_SQUARE) {
                                    if (phi_tic == 0) {
                                        const double v[4] = {(double)fa, (double)fb, (double)fc,
                                                             (double)F_latt};
                                        nb_record(tbuf, tpos, maxrows, EV_LATT, v);
                                    }
                                    const double v[5] = {(double)phi_tic, (double)variant, (double)k,
                                                         (double)fb, (double)F_latt};
                                    nb_record(tbuf, tpos, maxrows, EV_PHI, v);
                                }
                            }
                            if (F_latt == (real)0.0 && water == (real)0.0) continue;
                            // structure factor of the unit cell
                            bool use_interp = interp && (latch_sub < 0 || sub_count < latch_sub);
                            if (use_interp &&
                                !interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax,
                                                 c_parity)) {
                                if (first_oor < 0) first_oor = sub_count;
                                use_interp = false;
                            }
                            real F_cell;
                            if (use_interp) {
                                F_cell = tricubic_F(Fhkl, hmin, kmin, lmin, kdim, ldim, (real)h,
                                                    (real)k, (real)l);
                            } else {
                                F_cell = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                   kdim, ldim, h0, k0, l0, default_F);
                            }
                            sub_count += 1;
                            if (TRACE && source == 0 && mos == 0 && phi_tic == 0) {
                                const double v[1] = {(double)F_cell};
                                nb_record(tbuf, tpos, maxrows, EV_FCELL, v);
                            }
                            if (TRACE && source == 2 && mos == 0 && phi_tic == 0) {
                                // the C's per-source tap (TRACE_C_SOURCE2), every sub-pixel
                                const double v[5] = {(double)F_cell, (double)F_latt, (double)polar,
                                                     (double)dot(incident_v, diffracted),
                                                     (double)lambda_};
                                nb_record(tbuf, tpos, maxrows, EV_SOURCE2, v);
                            }
                            wide term = (wide)(F_cell * F_cell * F_latt * F_latt);
                            if (weighted) term *= w_src;  // (before the sub-path's factors)
                            if (corrected) {
                                if (os_thick) term *= capture;
                                if (os_polar) term *= polar;
                                if (os_omega) term *= omega_pixel;
                                layer_sum += term;
                            } else {
                                I += term;
                                // nanoBragg.c multiplies the running sum (a defect
                                // only -c_parity reaches: see docs/quirks.md)
                                if (os_thick) I *= capture;
                                if (os_polar) I *= polar;
                                if (os_omega) I *= omega_pixel;
                            }
                        }
                    }
                    if (lean) {
                        if (weighted) acc_s *= w_src;
                        if (corrected) {
                            layer_sum += acc_s;
                        } else {
                            I += acc_s;
                        }
                    }
                    if (c_parity) variant = 1;
                }
            }
        }
        if (corrected) {
            acc += os_thick ? layer_sum : layer_sum * layer_capture;
            const wide bg_w = layer_bg / (wide)(os * os * (os_polar ? nsrc : 1));
            capsum += os_thick ? bg_w : bg_w * layer_capture;
        }
    }

    const wide r2f = (wide)fopt[F_SCALE];  // r_e^2 * fluence
    if (polar == (wide)0.0 && ran_phi == 0) polar = polar_cut;  // (z under -c_parity)
    const wide steps = (wide)fopt[F_STEPS];
    wide test;
    if (corrected) {
        // (every sub-path cut by -dmin: the water's share still, #24)
        const wide bg = I_bg * capsum;
        I = acc + bg;
        test = r2f * I / steps;
        if (!os_polar) test *= polar;
        if (!os_omega) test *= omega_pixel;
    } else {
        test = r2f * I / steps;
        if (!os_thick) test *= capture;
        if (!os_polar) test *= polar;
        if (!os_omega) test *= omega_pixel;
    }
    if (TRACE) {
        const double v[12] = {(double)I, (double)steps, (double)os_thick, (double)os_polar,
                              (double)os_omega, (double)capture, (double)polar,
                              (double)omega_pixel, (double)dot(last_incident, diffracted),
                              (double)test, (double)last_Fdet, (double)last_Sdet};
        nb_record(tbuf, tpos, maxrows, EV_FINAL, v);
    }
    info[0] = first_oor;
    info[1] = ran_phi;
    info[2] = sub_count;
    *value = test;
    *omega_sum = (real)omega_acc;
}

// one pixel of cpu.render: latch bookkeeping, then pixel_value
template <typename real, typename fgrid>
__device__ void render_pixel(nb_i64 p, const nb_u8* __restrict__ active, nb_i64 S, nb_i64 F,
                             nb_i64 row0, nb_i64 row1, nb_i64 first_pixel, nb_i64 latch_pixel, nb_i64 latch_sub,
                             const nb_i64* __restrict__ iopt, const real* __restrict__ fopt,
                             const real* __restrict__ vecs, const real* __restrict__ incident,
                             const real* __restrict__ lam, const real* __restrict__ cells,
                             const fgrid* __restrict__ Fhkl, float* __restrict__ out,
                             real* __restrict__ omega_out, nb_i64* __restrict__ oor_out,
                             nb_i64* __restrict__ ran_out) {
    if (row0 < 0) row0 = 0;
    if (row1 > S) row1 = S;
    if (p < row0 * F || p >= row1 * F) return;
    if (active[p] == 0) return;
    const nb_i64 s = p / F;
    const nb_i64 f = p - s * F;
    nb_i64 ls = -1;
    if (latch_pixel >= 0) {
        if (p > latch_pixel) {
            ls = -2;
        } else if (p == latch_pixel) {
            ls = latch_sub;
        }
    }
    typedef double wide;
    wide val;
    real om;
    nb_i64 info[3];
    pixel_value<real, wide, fgrid, false>(s, f, p == first_pixel, ls, iopt, fopt, vecs, incident,
                                          lam, cells, Fhkl, &val, &om, info, (double*)0,
                                          (nb_i64*)0, 0);
    out[p] = (float)val;
    omega_out[p] = om;
    oor_out[p] = info[0];
    ran_out[p] = info[1];
}

#define NB_DEFINE_KERNEL(NAME, REAL, FGRID)                                                         \
    extern "C" __global__ void NAME(                                                           \
        const nb_u8* __restrict__ active, nb_i64 S, nb_i64 F, nb_i64 row0, nb_i64 row1,        \
        nb_i64 first_pixel, nb_i64 latch_pixel, nb_i64 latch_sub,                              \
        const nb_i64* __restrict__ iopt,                                                       \
        const REAL* __restrict__ fopt, const REAL* __restrict__ vecs,                          \
        const REAL* __restrict__ incident, const REAL* __restrict__ lam,                       \
        const REAL* __restrict__ cells, const FGRID* __restrict__ Fhkl,                        \
        float* __restrict__ out, REAL* __restrict__ omega, nb_i64* __restrict__ oor,           \
        nb_i64* __restrict__ ran) {                                                            \
        const nb_i64 p = row0 * F + (nb_i64)blockIdx.x * (nb_i64)blockDim.x +                  \
                         (nb_i64)threadIdx.x;                                                  \
        render_pixel<REAL, FGRID>(p, active, S, F, row0, row1, first_pixel, latch_pixel,      \
                                  latch_sub, iopt, fopt, vecs, incident, lam, cells, Fhkl,    \
                                  out, omega, oor, ran);                                      \
    }

NB_DEFINE_KERNEL(render_f64, double, double)
NB_DEFINE_KERNEL(render_f32, double, float)

// ============================================================== adjoint (nbnumba.autodiff)
// adjoint_f64: the vector-Jacobian product of the default-mode image, the GPU
// counterpart of nbnumba/kernels/adjoint.py (pixel_grad).  float64 only
// (autodiff computes in float64).  One thread per active pixel with g != 0
// (mode 1, 2) or per active pixel (mode 0: values only, the forward pass of
// -device cuda):
//   active uint8[S*F]; g double[S*F] upstream gradient (unused in mode 0)
//   mode   0: values only; 1: gradients; 2: gradients and the F-grid gradient
//   iopt .. Fhkl: as render_f64 (cells [variant][phi][mosaic][a|b|c][xyz];
//          the adjoint reads variant 1, the cells every default-mode pixel uses)
//   gpar   double[(row1-row0)*F][N_PAR]: one row per pixel of the launch's band
//          (pixel p at row p - row0*F), written, not added: the host sums the
//          rows in a fixed order
//   cacc   double[9][ncell]: sum over pixels of g dI/dh_j S (rows 0-2; k: 3-5,
//          l: 6-8) per (phi, mosaic) cell j, as pixel_grad's cacc
//   gF     double[dim0*dim1*dim2]: g dI/dFhkl (mode 2)
//   val    double[S*F]: the pixel values (photons)
//   dinc   double[4*ninc][nsrc]: rows 4q..4q+2, d(source s's incident
//          vector)/d(theta[P_BEAM + q]), row 4q+3 d(ln lambda_s)/d(theta[P_BEAM + q]),
//          contracted into the pixel's row as pixel_grad contracts its
//          per-source blocks (the host pads the entries it does not need with
//          zero blocks); ninc (<= NB_MAX_INC) 0: none
// Accumulation.  gpar is per pixel (deterministic).  cacc and gF are shared
// by all threads and accumulated with atomicAdd: the F-grid gradient is a
// scatter to data-dependent indices (per-block copies of the grid would cost
// grid size x blocks of memory), so the order of the additions, hence the
// last bits of cacc and gF, may change from run to run on a GPU (the host
// build runs the threads in order and is reproducible).  To keep the atomics
// few, the loops run cell-outermost: a thread sums its own contributions to
// the 9 cacc entries of cell j over every sub-pixel and source in registers
// and adds them once (9 atomics per pixel and cell, not per sub-path).  The
// sums therefore run in another order than pixel_grad's (sub-path outermost):
// results agree to rounding, not bit for bit (tests/test_gpu_adjoint.py).
// Sensor layers and the -oversample_thick/_polar/_omega switches: each
// sub-path is weighed by its oversampled factors, as pixel_grad weighs it.
// A first pass without cells fixes the per-pixel factors and the water
// background's weights; in the cell loop each sub-path's weights (capture,
// polarization, solid angle) are evaluated again, and their derivatives,
// times the cell's term, are added term by term (pixel_grad adds them once
// per sub-path, times its sum over cells: the same sum by linearity).
// The formulas are physics.py's *_grad functions, transcribed below with the
// same operations and the same branch points (SINCG_NEAR, d == 0, q > 0).

// theta layout: must match nbnumba/kernels/adjoint.py (P_*)
#define P_A 0
#define P_B 3
#define P_C 6
#define P_PIX0 9
#define P_CLOSE 12
#define P_ASTAR 13
#define P_BSTAR 16
#define P_CSTAR 19
#define P_FDET 22
#define P_SDET 25
#define P_LAM 28
#define P_NA 29
#define P_NB 30
#define P_NC 31
#define P_FLU 32
#define P_KAHN 33
// the mosaic spread's entry: the CPU's stored Jacobian only (adjoint.P_MOS); this
// kernel leaves it 0 and gives the per-cell sums (cacc) that the host contracts
// (as it does for the spindle axis, whose entries the CPU's theta has after the
// beam's: adjoint.N_PAR_DEVICE is this N_PAR)
#define P_MOS 34
// the per-source entries (adjoint.P_BEAM..P_DISP: the beam direction's three,
// the two divergence ranges, the dispersion): the per-source blocks dinc
// contracted per sub-path, as pixel_grad contracts them
#define P_BEAM 35
#define P_DIV 38
#define P_DISP 40
// (41..43: the spindle axis's entries, left 0: the host contracts them from cacc)
// the sensor's: the detector normal (layer depth, parallax), the layer
// thickness (m) and the attenuation coefficient (1/m)
#define P_ODET 44
#define P_TSTEP 47
#define P_MU 48
// (-curved_det's sphere, physics.sphere_position, is made of the close
// distance, odet, fdet and sdet: its derivatives land in their entries)
#define N_PAR 49
// at most this many per-source blocks (P_BEAM + q for q < ninc)
#define NB_MAX_INC 6

// physics.SINCG_NEAR: below this |N d| d/dh of sincg is summed, not closed-form
#define NB_SINCG_NEAR 0.1

// physics.X_OVER_SIN_SERIES: x / sin(x) = sum_k NB_XSIN_k x^(2k)
#define NB_XSIN_0 (1.0)
#define NB_XSIN_1 (0.16666666666666666)
#define NB_XSIN_2 (0.019444444444444445)
#define NB_XSIN_3 (0.00205026455026455)
#define NB_XSIN_4 (0.0002099867724867725)
#define NB_XSIN_5 (2.1336045641601196e-05)
#define NB_XSIN_6 (2.1633474427786596e-06)
#define NB_XSIN_7 (2.192327134456764e-07)
#define NB_XSIN_8 (2.2213930853920414e-08)

__device__ double nb_xsin(int k) {
    switch (k) {
        case 0: return NB_XSIN_0; case 1: return NB_XSIN_1; case 2: return NB_XSIN_2;
        case 3: return NB_XSIN_3; case 4: return NB_XSIN_4; case 5: return NB_XSIN_5;
        case 6: return NB_XSIN_6; case 7: return NB_XSIN_7; default: return NB_XSIN_8;
    }
}

// physics.sincg_near_dh: d/dh of sin(N x)/sin(x), x = pi h, any real N, by its
// Taylor series (the closed form's bracket cancels where |N h| < NB_SINCG_NEAR);
// the same loops and operations as physics.py
__device__ double sincg_near_dh(double x, double N) {
    const double u = x * x;
    const double n2 = N * N;
    double acc = 0.0;
    for (int k = 8; k > 0; --k) {
        double q = 0.0, g = 1.0, a = 1.0;
        for (int i = 1; i <= k; ++i) {
            a = a / ((2.0 * i) * (2.0 * i + 1.0));
            q += a * g * nb_xsin(k - i);
            g = g * n2 + 1.0;
            a = -a;
        }
        acc = acc * u + 2.0 * k * q;
    }
    return NB_PI * N * x * (1.0 - N) * (1.0 + N) * acc;
}

// physics.sincg_grad: (d/dh, d/dN) of sin(N pi h)/sin(pi h), any real N
__device__ void sincg_grad(double h, double N, double* gh, double* gN) {
    const double x = NB_PI * h;
    if (x == 0.0) {
        *gh = 0.0;
        *gN = 1.0;
        return;
    }
    const double s = sin(x);
    const double cN = cos(N * x);
    const double f = sin(x * N) / s;
    *gh = fabs(N * h) < NB_SINCG_NEAR ? sincg_near_dh(x, N) : NB_PI * (N * cN - f * cos(x)) / s;
    *gN = x * cN / s;
}

// physics.sincg_reduced_grad_core: the closed form, f = sincg_reduced(h, N)
__device__ void sincg_reduced_grad_far(double h, double N, double f, double* gh, double* gN) {
    double d, e;
    nb_i64 parity;
    reduce_phase(h, N, &d, &e, &parity);
    const double sgn = 1.0 - 2.0 * (double)parity;
    const double sd = sinpi_reduced(d);
    const double inv = 1.0 / (d != 0.0 ? sd : 1.0);
    const double sce = sgn * sinpi_reduced(0.5 - fabs(e));
    const double cd = sinpi_reduced(0.5 - fabs(d));
    const double dh = NB_PI * (N * sce - f * cd) * inv;
    const double dN = NB_PI * h * sce * inv;
    *gh = d != 0.0 ? dh : 0.0;
    *gN = d != 0.0 ? dN : sgn;
}

// physics.sincg_reduced_grad: the closed form, or near a peak the derivative
// of the exact cosine sum (no cancellation).  physics.py sums the same series
// by its Taylor coefficients (sincg_near_coeffs, branch-free for numba's
// vectoriser); here each thread has one sub-path, so the direct sum costs
// nothing extra, and the two agree to rounding (tests/test_gpu_adjoint.py)
__device__ void sincg_reduced_grad(double h, double N, double* gh, double* gN) {
    sincg_reduced_grad_far(h, N, sincg_reduced<double>(h, N), gh, gN);
    const double n = rint(h);
    const double d = h - n;
    if (d == 0.0 || fabs(N * d) >= NB_SINCG_NEAR) return;
    const double sgn = (((nb_i64)n * ((nb_i64)N - 1)) & 1) ? -1.0 : 1.0;
    double acc = 0.0;
    for (nb_i64 j = (nb_i64)N - 1; j > 0; j -= 2) acc += (double)j * sin((double)j * NB_PI * d);
    *gh = -2.0 * NB_PI * sgn * acc;
}

// physics.sinc3_dx_over_x: (d sinc3/dx) / x, finite at 0
__device__ double sinc3_dx_over_x(double x) {
    if (fabs(x) < NB_SINC3_SERIES_BELOW) {
        const double t = x * x;
        return NB_EVEN_SERIES9(double, NB_SINC3_DX_, t);
    }
    return (3.0 * sin(x) / (x * x) - 3.0 * sinc3(x) / x) / x;
}

// physics._spot_n2: the spot's scale, and d ln(scale) / d ln N of each axis
__device__ double spot_n2(double Na, double Nb, double Nc, double spot, double* pN) {
    *pN = spot == 0.0 ? 2.0 : 2.0 / 3.0;
    return spot == 0.0 ? Na * Na * Nb * Nb * Nc * Nc : spot;
}

// physics.lattice_factor_grad: returns F_latt; g[0..2] = dF/dh, dk, dl,
// g[3..5] = dF/dNa, dNb, dNc
__device__ double lattice_factor_grad(nb_i64 shape, double h, double k, double l, nb_i64 h0,
                                      nb_i64 k0, nb_i64 l0, double Na, double Nb, double Nc,
                                      double fudge, double spot, vec3<double> astar,
                                      vec3<double> bstar, vec3<double> cstar, nb_i64 reduced,
                                      double* g) {
    double fa, fb, fc;
    const double F = lattice_factor<double, double>(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge,
                                                    spot, astar, bstar, cstar, reduced, &fa, &fb,
                                                    &fc);
    if (shape == SHAPE_SQUARE) {
        double ga = 0.0, gb = 0.0, gc = 0.0, gNa = 0.0, gNb = 0.0, gNc = 0.0;
        if (Na > 1) {
            if (reduced) sincg_reduced_grad(h, Na, &ga, &gNa); else sincg_grad(h, Na, &ga, &gNa);
        }
        if (Nb > 1) {
            if (reduced) sincg_reduced_grad(k, Nb, &gb, &gNb); else sincg_grad(k, Nb, &gb, &gNb);
        }
        if (Nc > 1) {
            if (reduced) sincg_reduced_grad(l, Nc, &gc, &gNc); else sincg_grad(l, Nc, &gc, &gNc);
        }
        g[0] = ga * fb * fc;
        g[1] = fa * gb * fc;
        g[2] = fa * fb * gc;
        g[3] = gNa * fb * fc;
        g[4] = fa * gNb * fc;
        g[5] = fa * fb * gNc;
        return F;
    }
    const double dh = h - (double)h0;
    const double dk = k - (double)k0;
    const double dl = l - (double)l0;
    if (shape == SHAPE_ROUND) {
        const double hrad_sqr = dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc;
        const double x = NB_PI * sqrt(hrad_sqr * fudge);
        // dF/d(hrad_sqr), with dx/d(hrad_sqr) = pi^2 fudge / (2 x)
        const double dr = Na * Nb * Nc * 0.723601254558268 * sinc3_dx_over_x(x) * NB_PI * NB_PI *
                          fudge / 2.0;
        g[0] = dr * 2.0 * dh * Na * Na;
        g[1] = dr * 2.0 * dk * Nb * Nb;
        g[2] = dr * 2.0 * dl * Nc * Nc;
        g[3] = F / Na + dr * 2.0 * dh * dh * Na;
        g[4] = F / Nb + dr * 2.0 * dk * dk * Nb;
        g[5] = F / Nc + dr * 2.0 * dl * dl * Nc;
        return F;
    }
    if (shape == SHAPE_GAUSS) {
        const vec3<double> v = mk<double>(dh * astar.x + dk * bstar.x + dl * cstar.x,
                                          dh * astar.y + dk * bstar.y + dl * cstar.y,
                                          dh * astar.z + dk * bstar.z + dl * cstar.z);
        double pN;
        const double n2 = spot_n2(Na, Nb, Nc, spot, &pN);
        const double rad_star_sqr = (v.x * v.x + v.y * v.y + v.z * v.z) * n2;
        const double q = -F * fudge / 0.63;  // dF/d(rad_star_sqr)
        g[0] = q * n2 * 2.0 * dot(v, astar);
        g[1] = q * n2 * 2.0 * dot(v, bstar);
        g[2] = q * n2 * 2.0 * dot(v, cstar);
        g[3] = F / Na + q * pN * rad_star_sqr / Na;
        g[4] = F / Nb + q * pN * rad_star_sqr / Nb;
        g[5] = F / Nc + q * pN * rad_star_sqr / Nc;
        return F;
    }
    // tophat: flat between its edges (the step's delta is left out)
    g[0] = g[1] = g[2] = 0.0;
    g[3] = F / Na;
    g[4] = F / Nb;
    g[5] = F / Nc;
    return F;
}

// physics.lattice_factor_star_grad: the gauss shape's dF/da*, dF/db*, dF/dc*
// into d[0..8] (0 for the other shapes): through dr* = (h-h0) a* + ... and,
// unless spot is the C's (0), through the scale (Na Nb Nc / |a* . b* x c*|)^(2/3)
__device__ void lattice_factor_star_grad(nb_i64 shape, double h, double k, double l,
                                         nb_i64 h0, nb_i64 k0, nb_i64 l0, double Na, double Nb,
                                         double Nc, double fudge, double spot, vec3<double> astar,
                                         vec3<double> bstar, vec3<double> cstar, double* d) {
    for (int m = 0; m < 9; ++m) d[m] = 0.0;
    if (shape != SHAPE_GAUSS) return;
    const double dh = h - (double)h0;
    const double dk = k - (double)k0;
    const double dl = l - (double)l0;
    const vec3<double> v = mk<double>(dh * astar.x + dk * bstar.x + dl * cstar.x,
                                      dh * astar.y + dk * bstar.y + dl * cstar.y,
                                      dh * astar.z + dk * bstar.z + dl * cstar.z);
    double pN;
    const double n2 = spot_n2(Na, Nb, Nc, spot, &pN);
    const double rad = dot(v, v) * n2;
    const double q = -(Na * Nb * Nc * exp(-(rad / 0.63 * fudge))) * fudge / 0.63;  // dF/d(rad)
    const double g[3] = {q * n2 * 2.0 * dh, q * n2 * 2.0 * dk, q * n2 * 2.0 * dl};
    const double vm[3] = {v.x, v.y, v.z};
    for (int i = 0; i < 3; ++i)
        for (int m = 0; m < 3; ++m) d[3 * i + m] = g[i] * vm[m];
    if (spot == 0.0) return;
    const vec3<double> bc = cross(bstar, cstar), ca = cross(cstar, astar), ab = cross(astar, bstar);
    const double t = -q * rad * (2.0 / 3.0) / dot(astar, bc);
    const double w[9] = {bc.x, bc.y, bc.z, ca.x, ca.y, ca.z, ab.x, ab.y, ab.z};
    for (int m = 0; m < 9; ++m) d[m] += t * w[m];
}

// physics.polint4_dx: d/dx of polint4
__device__ __forceinline__ double polint4_dx(double xa0, const double* y, double x) {
    const double a0 = x - xa0, a1 = x - (xa0 + 1.0), a2 = x - (xa0 + 2.0), a3 = x - (xa0 + 3.0);
    return ((a2 * a3 + a1 * a3 + a1 * a2) * y[0] / -6.0 +
            (a2 * a3 + a0 * a3 + a0 * a2) * y[1] / 2.0 +
            (a1 * a3 + a0 * a3 + a0 * a1) * y[2] / -2.0 +
            (a1 * a2 + a0 * a2 + a0 * a1) * y[3] / 6.0);
}

// physics._lagrange4: the 4 interpolation weights at x and their derivatives
__device__ __forceinline__ void lagrange4(double xa0, double x, double* w, double* dw) {
    for (int i = 0; i < 4; ++i) {
        double e[4] = {0.0, 0.0, 0.0, 0.0};
        e[i] = 1.0;
        w[i] = polint4(xa0, e, x);
        dw[i] = polint4_dx(xa0, e, x);
    }
}

// physics.tricubic_F_grad: *g = (dF/dh, dF/dk, dF/dl); with scatter, adds
// c * dF/dFhkl (the 64 weights) to G
template <typename fgrid>
__device__ vec3<double> tricubic_F_grad(const fgrid* Fhkl, nb_i64 hmin, nb_i64 kmin, nb_i64 lmin,
                                        nb_i64 kdim, nb_i64 ldim, double h, double k, double l,
                                        double* G, double c, bool scatter) {
    const nb_i64 hf = (nb_i64)floor(h) - 1;
    const nb_i64 kf = (nb_i64)floor(k) - 1;
    const nb_i64 lf = (nb_i64)floor(l) - 1;
    double wh[4], dwh[4], wk[4], dwk[4], wl[4], dwl[4];
    lagrange4((double)hf, h, wh, dwh);
    lagrange4((double)kf, k, wk, dwk);
    lagrange4((double)lf, l, wl, dwl);
    const nb_i64 h0 = hf - hmin, k0 = kf - kmin, l0 = lf - lmin;
    double gh = 0.0, gk = 0.0, gl = 0.0;
    for (int a = 0; a < 4; ++a) {
        for (int b = 0; b < 4; ++b) {
            for (int e = 0; e < 4; ++e) {
                const nb_i64 idx = fhkl_index(h0 + a, k0 + b, l0 + e, kdim, ldim);
                const double v = (double)Fhkl[idx];
                gh += dwh[a] * wk[b] * wl[e] * v;
                gk += wh[a] * dwk[b] * wl[e] * v;
                gl += wh[a] * wk[b] * dwl[e] * v;
                if (scatter) atomicAdd(G + idx, c * wh[a] * wk[b] * wl[e]);
            }
        }
    }
    return mk<double>(gh, gk, gl);
}

// physics.polarization_factor_grad: the factor, and *g = d factor / dv for
// the (not necessarily unit) diffracted vector v
__device__ double polarization_factor_grad(double kahn, vec3<double> incident, vec3<double> v,
                                           vec3<double> axis, vec3<double>* g) {
    vec3<double> unused;
    const double factor = polarization_factor(kahn, incident, v, axis, &unused);
    vec3<double> inc, d, ax;
    unitize(incident, &inc);
    const double mag = unitize(v, &d);
    unitize(axis, &ax);
    const double c = dot(inc, d);
    double c2p = 1.0, gE = 0.0, gB = 0.0;
    vec3<double> E_in = mk<double>(0.0, 0.0, 0.0), B_in = mk<double>(0.0, 0.0, 0.0);
    if (kahn != 0.0) {
        unitize(cross(ax, inc), &B_in);
        unitize(cross(inc, B_in), &E_in);
        const double E = dot(d, E_in);
        const double B = dot(d, B_in);
        const double q = E * E + B * B;
        if (q > 0.0) {
            c2p = (E * E - B * B) / q;
            gE = 4.0 * E * B * B / (q * q);
            gB = -4.0 * B * E * E / (q * q);
        }
    }
    const double ci = c * (1.0 + kahn * c2p);
    const double w = -0.5 * kahn * (1.0 - c * c);
    const vec3<double> gg = mk<double>(ci * inc.x + w * (gE * E_in.x + gB * B_in.x),
                                       ci * inc.y + w * (gE * E_in.y + gB * B_in.y),
                                       ci * inc.z + w * (gE * E_in.z + gB * B_in.z));
    // the factor depends on v only through v/|v|: project out the radial part
    const double gd = dot(gg, d);
    *g = mk<double>((gg.x - gd * d.x) / mag, (gg.y - gd * d.y) / mag, (gg.z - gd * d.z) / mag);
    return factor;
}

// physics.polarization_factor_grad_incident: d factor / d incident for the
// (not necessarily unit) incident vector; factor = (1 + c^2 - K (E^2 - B^2))/2
// with E^2 + B^2 = 1 - c^2 across the beam (psi taken as 0 along the ray)
__device__ vec3<double> polarization_factor_grad_incident(double kahn, vec3<double> incident,
                                                          vec3<double> v, vec3<double> axis) {
    vec3<double> inc, d, ax;
    const double r = unitize(incident, &inc);
    unitize(v, &d);
    unitize(axis, &ax);
    const double c = dot(inc, d);
    vec3<double> gg = mk<double>(c * d.x, c * d.y, c * d.z);
    if (kahn != 0.0) {
        vec3<double> E_in, B_in;
        unitize(cross(ax, inc), &B_in);
        unitize(cross(inc, B_in), &E_in);
        const double E = dot(d, E_in);
        const double B = dot(d, B_in);
        if (E * E + B * B > 0.0) {
            const double al = dot(ax, inc);
            const double s = sqrt(1.0 - al * al);
            const vec3<double> da = cross(d, ax);
            const double ks = kahn / s;
            const double kt = kahn * al * (E * E - B * B) / (s * s);
            gg = mk<double>(gg.x + ks * (E * (c * ax.x + al * d.x) + B * da.x) - kt * ax.x,
                            gg.y + ks * (E * (c * ax.y + al * d.y) + B * da.y) - kt * ax.y,
                            gg.z + ks * (E * (c * ax.z + al * d.z) + B * da.z) - kt * ax.z);
        } else {
            gg = mk<double>((1.0 + kahn) * gg.x, (1.0 + kahn) * gg.y, (1.0 + kahn) * gg.z);
        }
    }
    // the factor depends on incident only through its unit vector
    const double gi = dot(gg, inc);
    return mk<double>((gg.x - gi * inc.x) / r, (gg.y - gi * inc.y) / r, (gg.z - gi * inc.z) / r);
}

// physics.solid_angle_grad_at: from (d, R) = unitize(pos) and om =
// solid_angle(pixel_size, R, close_distance, point_pixel): *g = d omega / d pos;
// returns d omega / d close_distance
__device__ double solid_angle_grad_at(double pixel_size, vec3<double> d, double R, double om,
                                      bool point_pixel, vec3<double>* g) {
    if (point_pixel) {
        const double k = -2.0 * om / R;
        *g = mk<double>(k * d.x, k * d.y, k * d.z);
        return 0.0;
    }
    const double k = -3.0 * om / R;
    *g = mk<double>(k * d.x, k * d.y, k * d.z);
    return pixel_size * pixel_size / R / R / R;
}

// physics.capture_fraction_parallax_grad: the capture fraction of layer
// ``layer`` at parallax p; *gp = d capture / d p, *gtau, *gmu: d / d thickstep,
// d mu (the curved detector's sensor faces the sample: p = 1, this alone)
__device__ double capture_fraction_parallax_grad(double layer, double thickstep, double mu,
                                                 double p, double* gp, double* gtau,
                                                 double* gmu) {
    const double cap = capture_fraction(layer, thickstep, mu, p);
    const double x = thickstep * mu / p;
    const double dcdx = (layer + 1.0) * exp(-(layer + 1.0) * x) - layer * exp(-layer * x);
    *gp = -(x / p) * dcdx;
    *gtau = dcdx * mu / p;
    *gmu = dcdx * thickstep / p;
    return cap;
}

// physics.capture_fraction_grad: the same at a position with (d, R) =
// unitize(pos), p = d . odet; *gpos = d capture / d pos, *godet = d capture /
// d odet at a fixed position
__device__ double capture_fraction_grad(double layer, double thickstep, double mu,
                                        vec3<double> d, double R, vec3<double> odet,
                                        vec3<double>* gpos, vec3<double>* godet, double* gtau,
                                        double* gmu) {
    const double p = dot(d, odet);
    double dcdp;
    const double cap = capture_fraction_parallax_grad(layer, thickstep, mu, p, &dcdp, gtau, gmu);
    const double k = dcdp / R;
    *gpos = mk<double>(k * (odet.x - p * d.x), k * (odet.y - p * d.y), k * (odet.z - p * d.z));
    *godet = mk<double>(dcdp * d.x, dcdp * d.y, dcdp * d.z);
    return cap;
}

// the detector as the adjoint's positions need it: the axes, pix0, the
// sensor's layer thickness and, for -curved_det, the sphere's radius (the
// close distance; autodiff runs the default mode only: its sphere)
struct det_map {
    vec3<double> fdet, sdet, odet, pix0;
    double tstep, close;
    bool curved;
};

// sub-pixel (subS, subF) of sensor layer t: its lab position pix0 + Fdet fdet +
// Sdet sdet + t thickstep odet, moved onto the sphere with -curved_det, as
// pixel_grad forms it; *Fo, *So: its Fdet, Sdet (m)
__device__ __forceinline__ vec3<double> adjoint_position(nb_i64 spixel, nb_i64 fpixel, nb_i64 os,
                                                        nb_i64 subS, nb_i64 subF, double subpixel,
                                                        double Odet, const det_map& m,
                                                        double* Fo, double* So) {
    const double Fdet = subpixel * (double)(fpixel * os + subF) + subpixel / 2.0;
    const double Sdet = subpixel * (double)(spixel * os + subS) + subpixel / 2.0;
    *Fo = Fdet;
    *So = Sdet;
    if (m.curved) {
        // the surface point and the layer's depth apart (physics.sphere_position)
        const vec3<double> surf = mk<double>(Fdet * m.fdet.x + Sdet * m.sdet.x + m.pix0.x,
                                             Fdet * m.fdet.y + Sdet * m.sdet.y + m.pix0.y,
                                             Fdet * m.fdet.z + Sdet * m.sdet.z + m.pix0.z);
        return sphere_position(surf, Odet, m.close, m.odet, m.fdet, m.sdet);
    }
    return mk<double>(Fdet * m.fdet.x + Sdet * m.sdet.x + Odet * m.odet.x + m.pix0.x,
                      Fdet * m.fdet.y + Sdet * m.sdet.y + Odet * m.odet.y + m.pix0.y,
                      Fdet * m.fdet.z + Sdet * m.sdet.z + Odet * m.odet.z + m.pix0.z);
}

// physics._sinc_and_slope: (sin(th)/th, its derivative (th cos th - sin th)/th^2),
// by their Taylor series below th = 0.1 (where the derivative's difference
// cancels); th >= 0
__device__ __forceinline__ void sinc_and_slope(double th, double* sc, double* dsc) {
    if (th < 0.1) {
        const double t2 = th * th;
        *sc = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0)));
        *dsc = -th / 3.0 * (1.0 - t2 / 10.0 * (1.0 - t2 / 28.0 * (1.0 - t2 / 54.0
                                                                   * (1.0 - t2 / 88.0))));
        return;
    }
    const double sn = sin(th);
    *sc = sn / th;
    *dsc = (th * cos(th) - sn) / (th * th);
}

// physics.sphere_position_grad: for p = sphere_position(surf, depth, close,
// odet, fdet, sdet) and g = dL/dp, returns dL/dsurf; *gdepth, *gclose, *god,
// *gf, *gs: dL/d depth, close, odet, fdet, sdet (the axes as the formula uses
// them, not held unit).
// p = A (C odet + sg w), q = surf - close odet, u = q.fdet, v = q.sdet,
// A = close + q.odet + depth, w = u fdet + v sdet, rho = |(u, v)|,
// th = rho/close, C = cos th, sg = sin(th)/rho = sinc(th)/close
__device__ vec3<double> sphere_position_grad(vec3<double> g, vec3<double> surf, double depth,
                                             double close, vec3<double> odet,
                                             vec3<double> fdet, vec3<double> sdet,
                                             double* gdepth, double* gclose,
                                             vec3<double>* god, vec3<double>* gf,
                                             vec3<double>* gs) {
    double u, v, A, rho;
    const vec3<double> q = sphere_coords(surf, depth, close, odet, fdet, sdet, &u, &v, &A, &rho);
    const double th = rho / close;
    const double C = cos(th);
    double sc, dsc;
    sinc_and_slope(th, &sc, &dsc);
    const double sg = sc / close;
    const vec3<double> w = mk<double>(u * fdet.x + v * sdet.x, u * fdet.y + v * sdet.y,
                                      u * fdet.z + v * sdet.z);
    const double gn = dot(g, odet);
    const double gw = dot(g, w);
    const double gA = C * gn + sg * gw;  // dL/dA (= dL/d depth)
    const double gC = A * gn;            // dL/dC
    const double gsg = A * gw;           // dL/dsg
    // dL/dw = A sg g; dL/dodet (direct) = A C g
    const double Asg = A * sg;
    double gu = Asg * dot(g, fdet);
    double gv = Asg * dot(g, sdet);
    if (rho > 0.0) {
        const double grho = -gC * sin(th) / close + gsg * dsc / (close * close);
        gu += grho * u / rho;
        gv += grho * v / rho;
    }
    double gcl = gA + gC * sin(th) * rho / (close * close) - gsg * C / (close * close);
    // through q = surf - close odet: u = q.fdet, v = q.sdet, A - close - depth = q.odet
    const vec3<double> gq = mk<double>(gu * fdet.x + gv * sdet.x + gA * odet.x,
                                       gu * fdet.y + gv * sdet.y + gA * odet.y,
                                       gu * fdet.z + gv * sdet.z + gA * odet.z);
    gcl -= dot(gq, odet);
    *gdepth = gA;
    *gclose = gcl;
    const double AC = A * C;
    *god = mk<double>(AC * g.x + gA * q.x - close * gq.x, AC * g.y + gA * q.y - close * gq.y,
                      AC * g.z + gA * q.z - close * gq.z);
    *gf = mk<double>(gu * q.x + u * Asg * g.x, gu * q.y + u * Asg * g.y,
                     gu * q.z + u * Asg * g.z);
    *gs = mk<double>(gv * q.x + v * Asg * g.x, gv * q.y + v * Asg * g.y,
                     gv * q.z + v * Asg * g.z);
    return gq;
}

// theta entries that a position derivative reaches (pix0, fdet, sdet; below
// the first sensor layer odet and the layer thickness; with -curved_det the
// sphere's radius, the close distance, and odet): fixed indices, so that the
// compiler keeps them in registers
struct pos_grad {
    double p[3], f[3], s[3], o[3], ts, close;
};

// adjoint.py _add_pos: *a += c gp, gp the derivative of a factor in the
// position pix0 + F fdet + S sdet + t tstep odet where it was evaluated (or,
// with -curved_det, in the surface point pix0 + F fdet + S sdet at depth
// t tstep moved onto the sphere)
__device__ __forceinline__ void add_pos(pos_grad* a, double c, vec3<double> gp, double F,
                                        double S, double t, const det_map& m) {
    const double O = t * m.tstep;
    double gdepth = 0.0;
    if (m.curved) {
        // back from the sphere to the surface point and the depth, and the
        // map's own radius (the close distance) and axes
        const vec3<double> surf = mk<double>(F * m.fdet.x + S * m.sdet.x + m.pix0.x,
                                             F * m.fdet.y + S * m.sdet.y + m.pix0.y,
                                             F * m.fdet.z + S * m.sdet.z + m.pix0.z);
        double gclose;
        vec3<double> god, gf, gs;
        gp = sphere_position_grad(gp, surf, O, m.close, m.odet, m.fdet, m.sdet, &gdepth, &gclose,
                                  &god, &gf, &gs);
        a->close += c * gclose;
        const double oo[3] = {god.x, god.y, god.z}, ss[3] = {gs.x, gs.y, gs.z},
                     ff[3] = {gf.x, gf.y, gf.z};
        for (int i = 0; i < 3; ++i) {
            a->o[i] += c * oo[i];
            a->s[i] += c * ss[i];
            a->f[i] += c * ff[i];
        }
    }
    const double x[3] = {c * gp.x, c * gp.y, c * gp.z};
    for (int i = 0; i < 3; ++i) {
        a->p[i] += x[i];
        a->f[i] += x[i] * F;
        a->s[i] += x[i] * S;
    }
    if (t > 0.0) {
        if (m.curved) {
            // the sphere's depth is a radius, which odet does not multiply
            a->ts += t * (c * gdepth);
        } else {
            a->o[0] += x[0] * O;
            a->o[1] += x[1] * O;
            a->o[2] += x[2] * O;
            a->ts += t * (x[0] * m.odet.x + x[1] * m.odet.y + x[2] * m.odet.z);
        }
    }
}

// adjoint.py _add_capture: c times the capture fraction's direct derivatives
// (the detector normal, the layer thickness; the attenuation coefficient in *dmu)
__device__ __forceinline__ void add_capture(pos_grad* a, double* dmu, double c, vec3<double> go,
                                            double gtau, double gmu) {
    a->o[0] += c * go.x;
    a->o[1] += c * go.y;
    a->o[2] += c * go.z;
    a->ts += c * gtau;
    *dmu += c * gmu;
}

// source s's incident vector's per-source blocks contracted with gi (d/d inc)
__device__ __forceinline__ double incident_term(const double* dinc, nb_i64 q, nb_i64 nsrc,
                                                nb_i64 s, vec3<double> gi) {
    const double* dq = dinc + 4 * q * nsrc + s;
    return gi.x * dq[0] + gi.y * dq[nsrc] + gi.z * dq[2 * nsrc];
}

// one sub-path's oversampled factors (-oversample_thick/_polar/_omega, sensor
// layers; 1 where not oversampled) and their derivatives, as pixel_grad's
// wc, wo, wp
struct sub_weights {
    double wc, wo, wp;
    vec3<double> dwo;       // d wo / d pos
    double dwoc;            // d wo / d close distance
    vec3<double> dwp, dwpi; // d wp / d pos, / d incident
    double dwpk;            // d wp / d kahn
    vec3<double> dc, dco;   // d wc / d pos (at Fc, Sc), / d odet (direct)
    double dct, dcm;        // d wc / d thickstep, / d mu (direct)
    double Fc, Sc;          // where wc was evaluated (its layer: the sub-path's)
};

// adds c dw/dtheta of a sub-path's weight w = wc wo wp (c: what w multiplies)
// at (F, S, t), source s; *dclose, *dkahn, *dmu, dbeam[q]: the other entries
__device__ __forceinline__ void add_weight_grad(pos_grad* a, double* dclose, double* dkahn,
                                                double* dmu, double* dbeam, double c,
                                                const sub_weights& sw, bool os_polar,
                                                bool os_omega, double F, double S,
                                                double t, const det_map& m,
                                                const double* dinc, nb_i64 ninc, nb_i64 nsrc,
                                                nb_i64 s) {
    if (os_polar) {
        const double k = c * sw.wc * sw.wo;
        add_pos(a, k, sw.dwp, F, S, t, m);
        *dkahn += k * sw.dwpk;
        for (nb_i64 q = 0; q < ninc; ++q) dbeam[q] += k * incident_term(dinc, q, nsrc, s, sw.dwpi);
    }
    if (os_omega) {
        const double k = c * sw.wc * sw.wp;
        add_pos(a, k, sw.dwo, F, S, t, m);
        *dclose += k * sw.dwoc;
        // (the layer's plane at close + t tstep: #42)
        a->ts += k * sw.dwoc * t;
    }
    // the capture: the sub-pixel's (-oversample_thick) or the layer's first
    // sub-pixel's, which weighs the whole layer
    const double k = c * sw.wo * sw.wp;
    add_pos(a, k, sw.dc, sw.Fc, sw.Sc, t, m);
    add_capture(a, dmu, k, sw.dco, sw.dct, sw.dcm);
}

// physics.polarization_kahn_slope: the factor is affine in kahn, its slope P(1) - P(0)
__device__ __forceinline__ double polarization_kahn_slope(vec3<double> inc, vec3<double> v,
                                                          vec3<double> axis) {
    vec3<double> unused;
    return polarization_factor(1.0, inc, v, axis, &unused) -
           polarization_factor(0.0, inc, v, axis, &unused);
}

// a sub-pixel's solid angle weight (-oversample_omega; else 1) and, with grad,
// its derivatives (pixel_grad's wo, dwo, dwoc); (d, R) = unitize(pos); on
// -curved_det's sphere (curved) the obliquity is 1: pixel^2/R^2, a point
// pixel's derivatives
__device__ __forceinline__ void omega_weight(sub_weights* sw, bool os_omega, bool grad,
                                             double pixel, vec3<double> d, double R,
                                             double close, bool point, bool curved) {
    sw->wo = 1.0;
    sw->dwo = mk<double>(0.0, 0.0, 0.0);
    sw->dwoc = 0.0;
    if (!os_omega) return;
    sw->wo = solid_angle(pixel, R, curved ? R : close, point);
    if (grad) sw->dwoc = solid_angle_grad_at(pixel, d, R, sw->wo, point || curved, &sw->dwo);
}

// a sub-path's polarization weight (-oversample_polar; else 1) and, with grad,
// its derivatives (pixel_grad's wp, dwp, dwpi, dwpk)
__device__ __forceinline__ void polar_weight(sub_weights* sw, bool os_polar, bool grad,
                                             double kahn, vec3<double> inc, vec3<double> pos,
                                             vec3<double> axis) {
    sw->wp = 1.0;
    sw->dwp = mk<double>(0.0, 0.0, 0.0);
    if (!os_polar) return;
    sw->wp = polarization_factor_grad(kahn, inc, pos, axis, &sw->dwp);
    if (!grad) return;
    sw->dwpi = polarization_factor_grad_incident(kahn, inc, pos, axis);
    sw->dwpk = polarization_kahn_slope(inc, pos, axis);
}

// one pixel of adjoint_f64 (see its comment above); pixel_grad's quantities
template <typename fgrid>
__device__ void adjoint_pixel(nb_i64 p, const nb_u8* __restrict__ active,
                              const double* __restrict__ g, nb_i64 S, nb_i64 F, nb_i64 row0,
                              nb_i64 row1, nb_i64 mode, const nb_i64* __restrict__ iopt,
                              const double* __restrict__ fopt, const double* __restrict__ vecs,
                              const double* __restrict__ incident, const double* __restrict__ lam,
                              const double* __restrict__ cells, const fgrid* __restrict__ Fhkl,
                              double* __restrict__ gpar, double* cacc, double* gF,
                              double* __restrict__ val, const double* __restrict__ dinc,
                              nb_i64 ninc) {
    if (row0 < 0) row0 = 0;
    if (row1 > S) row1 = S;
    if (p < row0 * F || p >= row1 * F) return;
    if (active[p] == 0) return;
    const bool grad = mode != 0;
    const bool want_F = mode == 2;
    const double gp = grad ? g[p] : 1.0;
    if (gp == 0.0) return;
    const nb_i64 spixel = p / F;
    const nb_i64 fpixel = p - spixel * F;
    const nb_i64 os = iopt[I_OVERSAMPLE];
    const nb_i64 nsrc = iopt[I_NSRC], nphi = iopt[I_NPHI], nmos = iopt[I_NMOS];
    const nb_i64 ncell = nphi * nmos;
    const nb_i64 shape = iopt[I_SHAPE];
    const nb_i64 reduced = iopt[I_REDUCED];
    const bool interp = iopt[I_INTERP] != 0;
    const bool point = iopt[I_POINT] != 0;
    const nb_i64 hkls = iopt[I_HKLS];
    const nb_i64 hmin = iopt[I_HMIN], hmax = iopt[I_HMAX];
    const nb_i64 kmin = iopt[I_KMIN], kmax = iopt[I_KMAX];
    const nb_i64 lmin = iopt[I_LMIN], lmax = iopt[I_LMAX];
    const nb_i64 kdim = iopt[I_FHKL_KDIM], ldim = iopt[I_FHKL_LDIM];
    const double pixel = fopt[F_PIXEL], subpixel = fopt[F_SUBPIXEL];
    const double close = fopt[F_CLOSE];
    const double kahn = fopt[F_KAHN], dmin = fopt[F_DMIN];
    const double Na = fopt[F_NA], Nb = fopt[F_NB], Nc = fopt[F_NC], fudge = fopt[F_FUDGE];
    const double spot = fopt[F_SPOT];
    const double default_F = fopt[F_DEFAULT_F], I_bg = fopt[F_I_BG];
    const vec3<double> fdet = load3w<double, double>(vecs + 3 * V_FDET);
    const vec3<double> sdet = load3w<double, double>(vecs + 3 * V_SDET);
    const vec3<double> odet = load3w<double, double>(vecs + 3 * V_ODET);
    const vec3<double> pix0 = load3w<double, double>(vecs + 3 * V_PIX0);
    const vec3<double> polar_axis = load3w<double, double>(vecs + 3 * V_POLAR);
    const vec3<double> astar = load3w<double, double>(vecs + 3 * V_ASTAR);
    const vec3<double> bstar = load3w<double, double>(vecs + 3 * V_BSTAR);
    const vec3<double> cstar = load3w<double, double>(vecs + 3 * V_CSTAR);
    const double C = fopt[F_SCALE] / fopt[F_STEPS];
    const double* cells1 = cells + ncell * 9;  // variant 1
    // sensor layers and the -oversample_* switches: the "corrected" sum weighs
    // each sub-path by the factors it oversamples and each layer by its capture
    // fraction (pixel_grad's, pixel_value's)
    const nb_i64 nthick = iopt[I_THICKSTEPS];
    const bool os_thick = iopt[I_OS_THICK] != 0;
    const bool os_polar = iopt[I_OS_POLAR] != 0;
    const bool os_omega = iopt[I_OS_OMEGA] != 0;
    const double thick = fopt[F_THICK], thickstep = fopt[F_THICKSTEP], mu = fopt[F_MU];
    const bool corrected = nthick > 1 || os_thick || os_polar || os_omega;
    // -sourcefile weights: every term of a source's sub-paths, its background
    // share under -oversample_polar, and their derivatives carry its factor
    // (incident's 4th column), as the forward weighs them
    const bool weighted = iopt[I_WEIGHTED] != 0;
    // the positions' map (-curved_det: onto the sphere of radius close,
    // physics.sphere_position; autodiff runs the default mode only)
    det_map dm;
    dm.fdet = fdet;
    dm.sdet = sdet;
    dm.odet = odet;
    dm.pix0 = pix0;
    dm.tstep = thickstep;
    dm.close = close;
    dm.curved = iopt[I_CURVED] != 0;
    // the water background's share of one sub-pixel, of one sub-path
    const double bg_sub = I_bg / (double)(os * os);
    const double bg_src = bg_sub / (double)nsrc;
    if (ninc > NB_MAX_INC) ninc = NB_MAX_INC;  // (the host passes at most six)
    const vec3<double> zero3 = mk<double>(0.0, 0.0, 0.0);

    // the terms that take the per-pixel factors at the end: every sub-path's
    // lattice and weight derivatives (pos_grad, dbeam, ...), before g C P omega
    pos_grad dpos = {{0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}, {0.0, 0.0, 0.0},
                     0.0, 0.0};
    double dclose_w = 0.0, dkahn_w = 0.0, dmu = 0.0;
    double dbeam[NB_MAX_INC] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  // P_BEAM..P_DISP

    // first pass, no cells: polarization and solid angle once per pixel, at
    // its first sub-pixel and source that -dmin does not cut (else its first:
    // #24), as pixel_grad
    // and the forward fix them (1 where a switch oversamples them); the
    // capture factor of a single layer; the water background's weights and
    // their derivatives (corrected sum)
    bool have_polar = iopt[I_NOPOLAR] != 0 || os_polar;
    bool have_cut_polar = false;  // polar holds a -dmin-cut sub-path's factor (#24)
    double polar = have_polar ? 1.0 : 0.0;
    vec3<double> dP = zero3;
    double omega = os_omega ? 1.0 : 0.0;
    vec3<double> dOm = zero3;
    double dOmc = 0.0;
    // the (Fdet, Sdet, layer) of the sub-pixel where omega and polar were
    // evaluated (their position derivatives reach fdet, sdet, odet through it)
    double F_om = 0.0, S_om = 0.0, t_om = 0.0, F_po = 0.0, S_po = 0.0, t_po = 0.0;
    double dPk = 0.0;  // d polar / d kahn
    // the source of the polarization point, and d polar / d its incident vector
    nb_i64 src_po = 0;
    vec3<double> dPi = zero3;
    // a single layer's capture (the forward's factor at the end) where last computed
    double capture = 1.0;
    vec3<double> dcap = zero3, dcapo = zero3;
    double dcapt = 0.0, dcapm = 0.0, F_c = 0.0, S_c = 0.0;
    double capsum = 0.0;  // corrected sum: the background's weight, as the forward's
    // a layer's positions at its middle, depth (t + 1/2) thickstep (the default
    // mode's, docs/quirks.md #39; td: the depth in layers, which add_pos reads)
    const double half = thick != 0.0 ? 0.5 : 0.0;
    for (nb_i64 t = 0; t < nthick; ++t) {
        const double tf = (double)t;
        const double td = tf + half;
        const double Odet = td * thickstep;
        capture = thick == 0.0 ? 1.0 : 0.0;
        sub_weights sw;
        double layer_bg = 0.0;
        for (nb_i64 subS = 0; subS < os; ++subS) {
            for (nb_i64 subF = 0; subF < os; ++subF) {
                double Fd, Sd;
                const vec3<double> pos = adjoint_position(spixel, fpixel, os, subS, subF, subpixel,
                                                          Odet, dm, &Fd, &Sd);
                vec3<double> d;
                const double R = unitize(pos, &d);
                if (omega == 0.0) {
                    // (on the sphere each pixel faces the sample: obliquity 1, so its
                    // solid angle pixel^2/R^2 varies as a point pixel's, not with close)
                    // the pixel's one solid angle: on the sensor's face (depth 0)
                    vec3<double> d0 = d;
                    double R0 = R;
                    if (Odet != 0.0) {
                        double F0, S0;
                        const vec3<double> p0 = adjoint_position(spixel, fpixel, os, subS, subF,
                                                                 subpixel, 0.0, dm, &F0, &S0);
                        R0 = unitize(p0, &d0);
                    }
                    omega = solid_angle(pixel, R0, dm.curved ? R0 : close, point);
                    dOmc = solid_angle_grad_at(pixel, d0, R0, omega, point || dm.curved, &dOm);
                    F_om = Fd;
                    S_om = Sd;
                    t_om = 0.0;
                }
                // (with -oversample_omega: the layer's own plane, at close + Odet: #42)
                omega_weight(&sw, os_omega, grad, pixel, d, R, close + Odet, point, dm.curved);
                if (capture == 0.0 || os_thick) {
                    if (dm.curved) {
                        // the sphere's sensor faces the sample: parallax 1, no
                        // derivative in the position or the normal
                        double dcdp;
                        capture = capture_fraction_parallax_grad(tf, thickstep, mu, 1.0, &dcdp,
                                                                 &dcapt, &dcapm);
                        dcap = dcapo = zero3;
                    } else {
                        capture = capture_fraction_grad(tf, thickstep, mu, d, R, odet, &dcap,
                                                        &dcapo, &dcapt, &dcapm);
                    }
                    F_c = Fd;
                    S_c = Sd;
                }
                if ((subS == 0 && subF == 0) || os_thick) {
                    // the weight: this sub-pixel's capture, or the layer's
                    // (its first sub-pixel's)
                    sw.wc = corrected ? capture : 1.0;
                    const bool c = corrected && thick != 0.0;
                    sw.dc = c ? dcap : zero3;
                    sw.dco = c ? dcapo : zero3;
                    sw.dct = c ? dcapt : 0.0;
                    sw.dcm = c ? dcapm : 0.0;
                    sw.Fc = F_c;
                    sw.Sc = S_c;
                }
                // the forward's background weight of this sub-pixel
                const double wos = (os_thick ? capture : 1.0) * sw.wo;
                if (corrected && !os_polar) layer_bg += wos;
                for (nb_i64 source = 0; source < nsrc; ++source) {
                    const vec3<double> inc = load3w<double, double>(incident + 4 * source);
                    const double lam_s = lam[source];
                    const double ws = incident[4 * source + 3];  // the source's factor
                    const vec3<double> Sv = forward_scatter<double>(
                        mk<double>((d.x - inc.x) / lam_s, (d.y - inc.y) / lam_s,
                                   (d.z - inc.z) / lam_s), true);
                    const double stol = 0.5 * sqrt(Sv.x * Sv.x + Sv.y * Sv.y + Sv.z * Sv.z);
                    const bool cut = dmin > 0.0 && stol > 0.0 && dmin > 0.5 / stol;
                    polar_weight(&sw, os_polar, grad, kahn, inc, pos, polar_axis);
                    if (os_polar) {
                        // the water fills every sub-path, -dmin's cut ones too (a
                        // per-source share: weighed by the source's factor)
                        layer_bg += weighted ? wos * sw.wp * ws : wos * sw.wp;
                        if (grad)
                            add_weight_grad(&dpos, &dclose_w, &dkahn_w, &dmu, dbeam,
                                            weighted ? bg_src * ws : bg_src, sw, os_polar,
                                            os_omega, Fd, Sd, td, dm, dinc, ninc, nsrc, source);
                    }
                    // the pixel's factor: its first sub-path that -dmin does not
                    // cut, else (a pixel cut whole, whose water keeps it) its first
                    // sub-path's (kernels.cpu.pixel_value; docs/quirks.md #24)
                    if (have_polar || (cut && have_cut_polar)) continue;
                    polar = polarization_factor_grad(kahn, inc, pos, polar_axis, &dP);
                    if (cut)
                        have_cut_polar = true;
                    else
                        have_polar = true;
                    F_po = Fd;
                    S_po = Sd;
                    t_po = td;
                    dPk = polarization_kahn_slope(inc, pos, polar_axis);
                    src_po = source;
                    if (grad && ninc > 0)
                        dPi = polarization_factor_grad_incident(kahn, inc, pos, polar_axis);
                }
                if (grad && corrected && !os_polar) {
                    // the water's share of the sub-pixel (sw.wp: 1 without the switch)
                    add_weight_grad(&dpos, &dclose_w, &dkahn_w, &dmu, dbeam, bg_sub, sw, false,
                                    os_omega, Fd, Sd, td, dm, dinc, ninc, nsrc,
                                    0);
                }
            }
        }
        if (corrected) {
            // (sw.wc: the layer's capture unless -oversample_thick)
            const double bg_w = layer_bg / (double)(os * os * (os_polar ? nsrc : 1));
            capsum += os_thick ? bg_w : bg_w * sw.wc;
        }
    }
    const double capf = corrected ? 1.0 : capture;  // the forward's factor at the end
    const double cF = gp * C * polar * omega * capf;  // dI/dT

    // sum over sub-paths of w d(F_cell^2 F_latt^2)/dtheta, before the per-pixel factors
    double sumT = 0.0;
    double dlam = 0.0, dNa = 0.0, dNb = 0.0, dNc = 0.0;
    double dstar[9] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  // P_ASTAR..P_CSTAR
    for (nb_i64 j = 0; j < ncell; ++j) {
        const double* cell = cells1 + j * 9;
        double ca[9] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};  // this pixel's cacc[:, j]
        for (nb_i64 t = 0; t < nthick; ++t) {
            const double tf = (double)t;
            const double td = tf + half;
            const double Odet = td * thickstep;
            sub_weights sw;
            sw.wc = 1.0;
            for (nb_i64 subS = 0; subS < os; ++subS) {
                for (nb_i64 subF = 0; subF < os; ++subF) {
                    double Fd, Sd;
                    const vec3<double> pos = adjoint_position(
                        spixel, fpixel, os, subS, subF, subpixel, Odet, dm, &Fd, &Sd);
                    vec3<double> d;
                    const double R = unitize(pos, &d);
                    // this sub-path's oversampled factors (as the first pass's)
                    omega_weight(&sw, os_omega, grad, pixel, d, R, close + Odet, point,
                                 dm.curved);
                    if (corrected && thick != 0.0 && ((subS == 0 && subF == 0) || os_thick)) {
                        if (dm.curved) {
                            // (parallax 1 on the sphere, as the first pass)
                            double dcdp;
                            sw.wc = capture_fraction_parallax_grad(tf, thickstep, mu, 1.0, &dcdp,
                                                                   &sw.dct, &sw.dcm);
                            sw.dc = sw.dco = zero3;
                        } else {
                            sw.wc = capture_fraction_grad(tf, thickstep, mu, d, R, odet, &sw.dc,
                                                          &sw.dco, &sw.dct, &sw.dcm);
                        }
                        sw.Fc = Fd;
                        sw.Sc = Sd;
                    } else if (corrected && thick == 0.0) {
                        sw.wc = 1.0;
                        sw.dc = sw.dco = zero3;
                        sw.dct = sw.dcm = sw.Fc = sw.Sc = 0.0;
                    }
                    for (nb_i64 source = 0; source < nsrc; ++source) {
                        const vec3<double> inc = load3w<double, double>(incident + 4 * source);
                        const double lam_s = lam[source];
                        const double ws = incident[4 * source + 3];  // the source's factor
                        const vec3<double> Sv = forward_scatter<double>(mk<double>(
                            (d.x - inc.x) / lam_s, (d.y - inc.y) / lam_s, (d.z - inc.z) / lam_s),
                            true);
                        const double stol = 0.5 * sqrt(Sv.x * Sv.x + Sv.y * Sv.y + Sv.z * Sv.z);
                        // a step in the image: no derivative
                        if (dmin > 0.0 && stol > 0.0 && dmin > 0.5 / stol) continue;
                        polar_weight(&sw, os_polar, grad, kahn, inc, pos, polar_axis);
                        // this sub-path's weight (1 unless the sum is corrected or
                        // the sources weighted): it multiplies the term and every
                        // derivative of it below
                        double w = sw.wc * sw.wo * sw.wp;
                        if (weighted) w *= ws;
                        const double cFw = cF * w;
                        const double h = cell[0] * Sv.x + cell[1] * Sv.y + cell[2] * Sv.z;
                        const double k = cell[3] * Sv.x + cell[4] * Sv.y + cell[5] * Sv.z;
                        const double l = cell[6] * Sv.x + cell[7] * Sv.y + cell[8] * Sv.z;
                        const nb_i64 h0 = (nb_i64)ceil(h - 0.5);
                        const nb_i64 k0 = (nb_i64)ceil(k - 0.5);
                        const nb_i64 l0 = (nb_i64)ceil(l - 0.5);
                        double gl[6];
                        const double Fl = lattice_factor_grad(shape, h, k, l, h0, k0, l0, Na, Nb,
                                                              Nc, fudge, spot, astar, bstar,
                                                              cstar, reduced, gl);
                        vec3<double> cg = zero3;  // nearest F: flat in h, k, l
                        double Fc;
                        if (interp &&
                            interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax,
                                            false)) {  // the default mode's range
                            Fc = tricubic_F(Fhkl, hmin, kmin, lmin, kdim, ldim, h, k, l);
                            if (grad) {
                                cg = tricubic_F_grad(Fhkl, hmin, kmin, lmin, kdim, ldim, h, k, l,
                                                     gF, cFw * 2.0 * Fc * Fl * Fl, want_F);
                            }
                        } else {
                            Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, kdim,
                                           ldim, h0, k0, l0, default_F);
                            if (want_F && hkls > 0 && h0 >= hmin && h0 <= hmax && k0 >= kmin &&
                                k0 <= kmax && l0 >= lmin && l0 <= lmax) {
                                atomicAdd(gF + fhkl_index(h0 - hmin, k0 - kmin, l0 - lmin, kdim,
                                                          ldim),
                                          cFw * 2.0 * Fc * Fl * Fl);
                            }
                        }
                        const double T = Fc * Fc * Fl * Fl;
                        sumT += w * T;
                        if (!grad) continue;
                        // the weight's own derivative times the term it weighs
                        // (and the source's factor: sw holds wc wo wp only)
                        if (corrected)
                            add_weight_grad(&dpos, &dclose_w, &dkahn_w, &dmu, dbeam,
                                            weighted ? T * ws : T, sw, os_polar, os_omega, Fd,
                                            Sd, td, dm, dinc, ninc, nsrc, source);
                        const double tFl = 2.0 * Fc * Fc * Fl * w;
                        const double tFc = 2.0 * Fc * Fl * Fl * w;
                        const double Th = tFl * gl[0] + tFc * cg.x;
                        const double Tk = tFl * gl[1] + tFc * cg.y;
                        const double Tl = tFl * gl[2] + tFc * cg.z;
                        // d/dS of the term (h = a_j . S, ...)
                        const double gx = Th * cell[0] + Tk * cell[3] + Tl * cell[6];
                        const double gy = Th * cell[1] + Tk * cell[4] + Tl * cell[7];
                        const double gz = Th * cell[2] + Tk * cell[5] + Tl * cell[8];
                        const double gs = -(Th * h + Tk * k + Tl * l);  // d/d ln lambda_s: dh = -h
                        dlam += gs;  // every source's wavelength scaled (lambda -> s lambda)
                        dNa += tFl * gl[3];
                        dNb += tFl * gl[4];
                        dNc += tFl * gl[5];
                        if (shape == SHAPE_GAUSS) {  // F_latt also depends on a*, b*, c*
                            double d9[9];
                            lattice_factor_star_grad(shape, h, k, l, h0, k0, l0, Na, Nb, Nc,
                                                     fudge, spot, astar, bstar, cstar, d9);
                            for (int m = 0; m < 9; ++m) dstar[m] += tFl * d9[m];
                        }
                        const double th = cF * Th, tk = cF * Tk, tl = cF * Tl;
                        ca[0] += th * Sv.x;
                        ca[1] += th * Sv.y;
                        ca[2] += th * Sv.z;
                        ca[3] += tk * Sv.x;
                        ca[4] += tk * Sv.y;
                        ca[5] += tk * Sv.z;
                        ca[6] += tl * Sv.x;
                        ca[7] += tl * Sv.y;
                        ca[8] += tl * Sv.z;
                        // S = (pos/|pos| - inc)/lam: dS/dpos = (1 - d d^T)/(|pos| lam)
                        const double gd = gx * d.x + gy * d.y + gz * d.z;
                        const double r = 1.0 / (R * lam_s);
                        add_pos(&dpos, 1.0,
                                mk<double>((gx - gd * d.x) * r, (gy - gd * d.y) * r,
                                           (gz - gd * d.z) * r),
                                Fd, Sd, td, dm);
                        // the source's incident vector (dS/dinc = -1/lam) and wavelength
                        for (nb_i64 q = 0; q < ninc; ++q) {
                            const double* dq = dinc + 4 * q * nsrc + source;
                            dbeam[q] += gs * dq[3 * nsrc] -
                                        incident_term(dinc, q, nsrc, source,
                                                      mk<double>(gx, gy, gz)) / lam_s;
                        }
                    }
                }
            }
        }
        if (grad) {
            for (int i = 0; i < 9; ++i) {
                if (ca[i] != 0.0) atomicAdd(cacc + i * ncell + j, ca[i]);
            }
        }
    }
    const double total = corrected ? sumT + I_bg * capsum : I_bg + sumT;
    const double po = polar * omega * capf;
    val[p] = C * po * total;
    if (!grad) return;
    const double gC = gp * C;
    const double gT = gC * total;
    double* row = gpar + (p - row0 * F) * N_PAR;
    for (int i = 0; i < N_PAR; ++i) row[i] = 0.0;
    const double wt = gC * po;
    // the per-pixel factors' derivatives: polarization, solid angle, a single
    // layer's capture, each where the forward evaluated it
    pos_grad fin = dpos;
    for (int i = 0; i < 3; ++i) {
        fin.p[i] *= wt;
        fin.f[i] *= wt;
        fin.s[i] *= wt;
        fin.o[i] *= wt;
    }
    fin.ts *= wt;
    fin.close *= wt;
    double dmu_f = wt * dmu;
    add_pos(&fin, gT * omega * capf, dP, F_po, S_po, t_po, dm);
    add_pos(&fin, gT * polar * capf, dOm, F_om, S_om, t_om, dm);
    if (!corrected && thick != 0.0) {
        add_pos(&fin, gT * polar * omega, dcap, F_c, S_c, half, dm);
        add_capture(&fin, &dmu_f, gT * polar * omega, dcapo, dcapt, dcapm);
    }
    for (int i = 0; i < 3; ++i) {
        row[P_PIX0 + i] = fin.p[i];
        row[P_FDET + i] = fin.f[i];
        row[P_SDET + i] = fin.s[i];
        row[P_ODET + i] = fin.o[i];
    }
    row[P_TSTEP] = fin.ts;
    row[P_MU] = dmu_f;
    // (the sphere's radius under -curved_det is the close distance: fin.close)
    row[P_CLOSE] = fin.close + wt * dclose_w + gT * polar * capf * dOmc;
    row[P_KAHN] = wt * dkahn_w + gT * omega * capf * dPk;
    for (nb_i64 q = 0; q < ninc; ++q) {
        row[P_BEAM + q] = wt * dbeam[q] +
                          gT * omega * capf * incident_term(dinc, q, nsrc, src_po, dPi);
    }
    for (int i = 0; i < 9; ++i) row[P_ASTAR + i] = wt * dstar[i];
    row[P_LAM] = wt * dlam;
    row[P_NA] = wt * dNa;
    row[P_NB] = wt * dNb;
    row[P_NC] = wt * dNc;
    row[P_FLU] = wt * total;
}

#define NB_DEFINE_ADJOINT(NAME, REAL, FGRID)                                                   \
    extern "C" __global__ void NAME(                                                           \
        const nb_u8* __restrict__ active, const REAL* __restrict__ g, nb_i64 S, nb_i64 F,      \
        nb_i64 row0, nb_i64 row1, nb_i64 mode, const nb_i64* __restrict__ iopt,                \
        const REAL* __restrict__ fopt, const REAL* __restrict__ vecs,                          \
        const REAL* __restrict__ incident, const REAL* __restrict__ lam,                       \
        const REAL* __restrict__ cells, const FGRID* __restrict__ Fhkl,                        \
        REAL* __restrict__ gpar, REAL* cacc, REAL* gF, REAL* __restrict__ val,                 \
        const REAL* __restrict__ dinc, nb_i64 ninc) {                                          \
        const nb_i64 p = row0 * F + (nb_i64)blockIdx.x * (nb_i64)blockDim.x +                  \
                         (nb_i64)threadIdx.x;                                                  \
        adjoint_pixel<FGRID>(p, active, g, S, F, row0, row1, mode, iopt, fopt, vecs, incident, \
                             lam, cells, Fhkl, gpar, cacc, gF, val, dinc, ninc);               \
    }

NB_DEFINE_ADJOINT(adjoint_f64, double, double)

#if defined(NB_TRACE) || defined(NB_HOST_BUILD)
// one-thread trace launch of pixel (s, f): see the header comment
#define NB_DEFINE_TRACE(NAME, REAL, FGRID)                                                     \
    extern "C" __global__ void NAME(                                                           \
        nb_i64 s, nb_i64 f, nb_i64 first_exec, nb_i64 latch_sub, const nb_i64* iopt,           \
        const REAL* fopt, const REAL* vecs, const REAL* incident, const REAL* lam,             \
        const REAL* cells, const FGRID* Fhkl, double* tbuf, nb_i64* tpos, nb_i64 maxrows,      \
        double* value, REAL* omega_sum, nb_i64* info) {                                        \
        if (blockIdx.x != 0 || threadIdx.x != 0) return;                                       \
        double val;                                                                            \
        pixel_value<REAL, double, FGRID, true>(s, f, first_exec != 0, latch_sub, iopt, fopt,   \
                                               vecs, incident, lam, cells, Fhkl, &val,         \
                                               omega_sum, info, tbuf, tpos, maxrows);          \
        *value = val;                                                                          \
    }

NB_DEFINE_TRACE(trace_f64, double, double)
NB_DEFINE_TRACE(trace_f32, double, float)
#endif

#ifdef NB_HOST_BUILD
// ---- host build only (g++ -include cuda_compat.h): ctypes entry points -----
#define NB_DEFINE_HOST(NAME, KERNEL, REAL, FGRID)                                                   \
    extern "C" int NAME(const nb_u8* active, nb_i64 S, nb_i64 F, nb_i64 row0, nb_i64 row1,     \
                        nb_i64 first_pixel, nb_i64 latch_pixel, nb_i64 latch_sub,              \
                        const nb_i64* iopt,                                                    \
                        const REAL* fopt, const REAL* vecs, const REAL* incident,              \
                        const REAL* lam, const REAL* cells, const FGRID* Fhkl, float* out,     \
                        REAL* omega, nb_i64* oor, nb_i64* ran) {                               \
        const nb_i64 n = (row1 - row0) * F;                                                    \
        const unsigned int block = NB_BLOCK;                                                   \
        const unsigned int grid = (unsigned int)((n + block - 1) / block);                     \
        nb_host_launch(KERNEL, grid, block, active, S, F, row0, row1, first_pixel, latch_pixel,\
                       latch_sub,                                                              \
                       iopt, fopt, vecs, incident, lam, cells, Fhkl, out, omega, oor, ran);    \
        return 0;                                                                              \
    }

#define NB_DEFINE_HOST_PIXEL(NAME, REAL, FGRID)                                                     \
    extern "C" void NAME(nb_i64 s, nb_i64 f, int first_exec, nb_i64 latch_sub,                 \
                         const nb_i64* iopt, const REAL* fopt, const REAL* vecs,               \
                         const REAL* incident, const REAL* lam, const REAL* cells,             \
                         const FGRID* Fhkl, double* value, REAL* omega_sum, nb_i64* info) {    \
        typedef double wide;                                                                   \
        wide val;                                                                              \
        pixel_value<REAL, wide, FGRID, false>(s, f, first_exec != 0, latch_sub, iopt, fopt, vecs,     \
                                incident, lam, cells, Fhkl, &val, omega_sum, info, (double*)0, \
                                (nb_i64*)0, 0);                                                \
        *value = (double)val;                                                                  \
    }

NB_DEFINE_HOST(nb_host_render_f64, render_f64, double, double)
NB_DEFINE_HOST(nb_host_render_f32, render_f32, double, float)
NB_DEFINE_HOST_PIXEL(nb_host_pixel_f64, double, double)
NB_DEFINE_HOST_PIXEL(nb_host_pixel_f32, double, float)

// the adjoint kernel (adjoint_f64's arguments; one host "launch" over the band)
extern "C" int nb_host_adjoint_f64(const nb_u8* active, const double* g, nb_i64 S, nb_i64 F,
                                   nb_i64 row0, nb_i64 row1, nb_i64 mode, const nb_i64* iopt,
                                   const double* fopt, const double* vecs, const double* incident,
                                   const double* lam, const double* cells, const double* Fhkl,
                                   double* gpar, double* cacc, double* gF, double* val,
                                   const double* dinc, nb_i64 ninc) {
    const nb_i64 n = (row1 - row0) * F;
    const unsigned int block = NB_BLOCK;
    const unsigned int grid = (unsigned int)((n + block - 1) / block);
    nb_host_launch(adjoint_f64, grid, block, active, g, S, F, row0, row1, mode, iopt, fopt, vecs,
                   incident, lam, cells, Fhkl, gpar, cacc, gF, val, dinc, ninc);
    return 0;
}

extern "C" int nb_host_layout(nb_i64* out) {
    // lets the Python side check that the option layouts agree with cpu.py
    out[0] = N_IOPT_EXT;
    out[1] = N_FOPT;
    out[2] = N_VECS;
    out[3] = NB_BLOCK;
    out[4] = N_PAR;
    out[5] = P_LAM;
    return 6;
}
#endif
