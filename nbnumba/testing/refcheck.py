"""The kernel against nbnumba.reference on one run: the comparison that
tests/test_reference.py asserts and ``tools/fuzz.py reference`` draws lines
for (docs/reference.md).

Two images of the kernel are compared with the reference's float64 image:

* the float64 value of each active pixel from ``kernels.cpu.trace_pixel``
  (the same ``pixel_value`` body as the image loop, for one pixel with
  tracing on), to |kernel - ref| <= 1e-12 |ref| + 1e-14 max|ref|; the second
  term covers pixels next to a zero of the grating function, where the
  one-ulp difference between the two ways of forming h = a.S is amplified;
* the API's float32 image (the parallel image loop), to float32 rounding:
  |image - ref| <= 6.1e-8 |ref| + 1e-37.
"""
from __future__ import annotations

import numpy as np

#: |kernel - ref| <= REL * |ref| + FLOOR * max|ref| (float64 pixels)
REL, FLOOR = 1e-12, 1e-14
#: |image - ref| <= REL32 * |ref| + ATOL32 (the float32 image)
REL32, ATOL32 = 6.1e-8, 1e-37


def kernel64(cfg):
    """The kernel's float64 image (active pixels; others 0), pixel by pixel."""
    from nbnumba.kernels import cpu as K
    from nbnumba.model import build_model
    m = build_model(cfg)
    args = m.cpu_kernel_args()
    out = np.zeros(m.shape)
    for s, f in zip(*np.nonzero(m.active)):
        out[s, f] = K.trace_pixel(int(s), int(f), False, -1, *args, 1)[0]
    return out


def compare(cfg, nonzero: bool = True, slack=None) -> tuple:
    """(reference image, None) when the kernel agrees with the reference on
    ``cfg`` (a parsed default-mode Config), else (reference image, one line
    saying where and by how much): the worst float64 pixel ("float64 pixel
    (s, f): kernel K reference R"), else the worst float32 pixel.
    ``nonzero``: an all-zero reference image is a failure too.  ``slack``:
    None (the bound above, as tests/test_reference.py holds it), or a
    callable (s, f) -> a relative tolerance for a float64 pixel outside the
    bound (``spread``, for the fuzzer: called for at most SLACK_PIXELS of
    them, worst first; the pixel passes within it)."""
    import nbnumba
    from nbnumba import reference as ref
    r = ref.image(cfg)
    if not np.all(np.isfinite(r)):
        return r, "reference image not finite"
    if nonzero and np.count_nonzero(r) == 0:
        return r, "reference image all zero"
    k = kernel64(cfg)
    if k.shape != r.shape:
        return r, "kernel image %s, reference %s" % (k.shape, r.shape)
    bound = REL * np.abs(r) + FLOOR * np.abs(r).max()
    err = np.abs(k - r)
    bad = ~(err <= bound)               # NaN fails
    if bad.any():
        excess = np.where(bad, np.nan_to_num(err - bound, nan=np.inf), -np.inf)
        order = [np.unravel_index(int(i), r.shape) for i in np.argsort(-excess, axis=None)
                 [:int(bad.sum())]]
        for n, w in enumerate(order):
            if slack is None or n >= SLACK_PIXELS or not err[w] <= slack(*w) * abs(r[w]):
                w = order[0] if slack is None else w
                return r, "float64 pixel (%d, %d): kernel %.17g reference %.17g (rel %.3g)" % (
                    w[0], w[1], k[w], r[w], _rel(k[w], r[w]))
    img = np.asarray(nbnumba.simulate(cfg).float_image, dtype=np.float64)
    err = np.abs(img - r)
    bad = ~(err <= ATOL32 + REL32 * np.abs(r))
    if bad.any():
        w = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1.0))),
                             r.shape)
        return r, "float32 pixel (%d, %d): image %.9g reference %.17g (rel %.3g)" % (
            w[0], w[1], img[w], r[w], _rel(img[w], r[w]))
    return r, None


#: compare(slack=...): the most pixels outside the bound that are weighed
SLACK_PIXELS = 8


def spread(cfg, s, f, trials: int = 16, seed: int = 0, st=None) -> float:
    """How far the reference's own float64 value of pixel (s, f) moves when
    its inputs are rounded differently: the largest relative change over
    ``trials`` runs of nbnumba.reference.pixel_value with every incident
    direction, wavelength, detector vector (origin, fast, slow) and cell
    vector multiplied by 1 + e, e ~ N(0, 2^-52) drawn for each component.
    The kernel forms the same vectors by other formulas, so a difference of a
    few times this is rounding, amplified by the pixel's conditioning (a
    sub-path next to a zero of the grating or sphere transform, a large N,
    a steep rotation), not physics.  ``st``: reference.setup(cfg), if made."""
    from nbnumba import reference as ref
    st = ref.setup(cfg) if st is None else st
    r0 = ref.pixel_value(s, f, st)
    if r0 == 0.0:
        return 0.0
    rng = np.random.default_rng(seed)

    def jig(v):
        v = np.asarray(v, dtype=float)
        return v * (1.0 + rng.normal(size=v.shape) * 2.0 ** -52)
    worst = 0.0
    for _ in range(trials):
        st2 = dict(st)
        st2["inc"], st2["lam"] = jig(st["inc"]), jig(st["lam"])
        st2["det"] = dict(st["det"], pix0=jig(st["det"]["pix0"]), fdet=jig(st["det"]["fdet"]),
                          sdet=jig(st["det"]["sdet"]))
        st2["cells"] = [[jig(v) for v in c] for c in st["cells"]]
        worst = max(worst, abs(ref.pixel_value(s, f, st2) - r0) / abs(r0))
    return worst


def _rel(a, b):
    return abs(a - b) / abs(b) if b != 0 else float("inf")
