"""The kernels' argument layout: slots of the integer and float option vectors,
rows of the vector table, trace events, crystal shapes.

Plain constants (and block_eligible), with no numba import: the host side
(model, trace, native.render) uses them without loading any compiled code, and
the kernels read them as compile-time globals.
"""

# ---- integer option vector (iopt) layout ------------------------------------
I_OVERSAMPLE, I_THICKSTEPS, I_NSRC, I_NPHI, I_NMOS, I_SHAPE = 0, 1, 2, 3, 4, 5
I_CURVED, I_POINT, I_NOPOLAR, I_OS_THICK, I_OS_POLAR, I_OS_OMEGA = 6, 7, 8, 9, 10, 11
I_INTERP, I_HKLS, I_HMIN, I_HMAX, I_KMIN, I_KMAX, I_LMIN, I_LMAX = 12, 13, 14, 15, 16, 17, 18, 19
I_CPARITY, I_REDUCED, I_FPIXELS = 20, 21, 22
# I_WEIGHTED: 1 when the sources' terms carry unequal factors (column 3 of the
# kernels' incident array, nsrc x 4: the incident unit vector, then that factor)
I_WEIGHTED = 23
N_IOPT = 24

# ---- float option vector (fopt) layout --------------------------------------
F_PIXEL, F_SUBPIXEL, F_DISTANCE, F_CLOSE, F_THICKSTEP, F_MU, F_THICK = 0, 1, 2, 3, 4, 5, 6
F_KAHN, F_DMIN, F_NA, F_NB, F_NC, F_FUDGE, F_DEFAULT_F, F_I_BG = 7, 8, 9, 10, 11, 12, 13, 14
F_WATER, F_SCALE, F_STEPS, F_SPOT = 15, 16, 17, 18
N_FOPT = 19

# ---- vectors (vecs) rows ----------------------------------------------------
V_FDET, V_SDET, V_ODET, V_PIX0, V_BEAM, V_POLAR, V_ASTAR, V_BSTAR, V_CSTAR = range(9)
N_VECS = 9

# ---- trace events: buffer rows [event, values...] ---------------------------
EV_GEOM, EV_HKL, EV_LATT, EV_PHI, EV_FCELL, EV_FINAL, EV_SOURCE2 = 1, 2, 3, 4, 5, 6, 7
TRACE_COLS = 32

# ---- crystal shapes (iopt[I_SHAPE]) ------------------------------------------
SHAPE_SQUARE, SHAPE_ROUND, SHAPE_GAUSS, SHAPE_TOPHAT = 0, 1, 2, 3


# ---- which image loop: kernels.cpu.render_blocks or render_rows ---------------
#: the block path is taken up to this many (sub-pixel, phi, mosaic) lanes per
#: pixel (oversample^2 x cells); with more, pixel_value's loops are long
#: enough to vectorise on their own (or its deferred lattice makes them so)
BLOCK_MAX_CELLS = 64


def block_eligible(iopt, ncell, first_pixel, latch_pixel):
    """Whether a run takes the block path (kernels.cpu.render_blocks): the
    lean default mode with one source, one sensor layer and a flat detector,
    the square crystal on reduced sincg, and few (sub-pixel, cell) lanes per
    pixel (oversample^2 x cells <= BLOCK_MAX_CELLS).  Plain Python: the host
    (native.render) picks the image loop with it, and numba compiles it into
    render_blocks' check."""
    os_ = iopt[I_OVERSAMPLE]
    return (iopt[I_CPARITY] == 0 and iopt[I_INTERP] == 0 and first_pixel < 0 and latch_pixel < 0
            and iopt[I_OS_THICK] == 0 and iopt[I_OS_POLAR] == 0 and iopt[I_OS_OMEGA] == 0
            and iopt[I_THICKSTEPS] == 1 and iopt[I_NSRC] == 1
            and iopt[I_CURVED] == 0 and iopt[I_SHAPE] == 0 and iopt[I_REDUCED] != 0
            and 0 < ncell and os_ * os_ * ncell <= BLOCK_MAX_CELLS)
