"""nbnumba.autodiff side by side with hoidn/nanoBragg's PyTorch port (nanobrag_torch).

The torch port is not a dependency: install it in a scratch virtual environment
of its own (torch, numpy, and the port's ``src`` on its path) and name that
environment's interpreter::

    python -m benchmarks.autodiff_peers --peer-python PEER_VENV/bin/python            # small case
    python -m benchmarks.autodiff_peers --peer-python PEER_VENV/bin/python --case issue512 --no-fd
    NB_PEER_PYTHON=PEER_VENV/bin/python python -m benchmarks.autodiff_peers --json out.json

(``--peer-path DIR`` makes DIR, e.g. the port's ``src``, the peer's
PYTHONPATH when it is not installed in that environment.)

Cases: ``small`` (64^2), ``issue512`` (issue 13's command), ``W2_256`` (benchmarks'
W2 at 256^2: oversample 2 and three wavelengths, whose sources nbnumba passes to the
port) and ``pilatus_roi`` (benchmarks.autodiff_perf's 21 x 21 ROI of the Pilatus
command, with misset, wavelength, N, fluence and the F grid as parameters).  The
last is built on the port's side by its own command-line code (``_port_cli_objects``),
with the detector origin pinned to nanoBragg's; the port renders the whole frame and
the ROI is cut from it, where nbnumba renders the box alone (``roi_only=True``).

Each side runs in its own subprocess (this file, ``--worker ours|peer``): one
process per mode, because peak RSS (``resource.getrusage``) only grows within a
process.  The protocol is a JSON request file in, a JSON result (plus ``.npy``
images) out, in a temporary directory.  Modes:

``fwd``    forward only, no parameter requires grad: best-of-``--reps`` seconds.
``grad``   forward + backward of ``sum(img)`` and of ``sum(w * img)`` (w: fixed
           random weights in [0, 1)) w.r.t. every compared parameter at once;
           best-of-``--reps`` seconds of each and the gradients.
``fd``     central differences (Richardson, steps h and 2h) of both losses with
           the side's own forward, one scalar parameter at a time: the referee
           where the two autograd gradients disagree.

Both sides run float64 with 2 threads (torch.set_num_threads(2), NUMBA_NUM_THREADS=2)
and the port eagerly (NANOBRAGG_DISABLE_COMPILE=1).  To make the two runs the same
physics, the port's mosaic domains (its own Gaussian axis-angle draws, not
nanoBragg's) are replaced by nbnumba's (nanoBragg's RNG), passed in the request,
and two of nbnumba's corrections of nanoBragg.c are carried over to the port: its first
phi point is moved to nbnumba's (nbnumba samples each phi step at its middle, the port at
its start, as nanoBragg.c does: docs/quirks.md #28), and its mosaic domains turn with the
crystal, Phi U_m a, where the port, as nanoBragg.c, computes U_m Phi a (#41: the port is
given Phi U_m Phi^T for each phi step, ``_blocks_turn_with_the_crystal``);
everything else is given explicitly on both sides (MOSFLM convention, beam pivot,
explicit beam centre, oversample 1, square shape, default_F only).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

#: the compared parameters: name -> (number of values, Richardson FD step per value)
PARAMS = {
    "cell": (6, (1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3)),   # A, deg
    "misset": (3, (1e-3, 1e-3, 1e-3)),                   # deg
    "distance": (1, (1e-3,)),                            # mm
    "beam_center": (2, (1e-4, 1e-4)),                    # mm (Xbeam, Ybeam)
    "wavelength": (1, (1e-7,)),                          # A
    "N": (3, (1e-4, 1e-4, 1e-4)),                        # cells
    "fluence": (1, (1e23,)),                             # photons/m^2
}

CASES = {
    # small: 64 x 64 pixels, 3 phi steps x 3 mosaic domains
    "small": dict(pixels=64, cell=[70., 80., 90., 85., 95., 105.], misset=[5., 10., 15.],
                  N=[8., 8., 8.], default_F=100., wavelength=1.5, distance=100., pixel=0.1,
                  beam_center=[3.25, 3.15], fluence=1.25932015286227e29,
                  phi=0.1, osc=0.6, phisteps=3, mosaic=0.5, mosaic_domains=3),
    # issue 13's 512^2 case: mosaic 0.5 deg x 10 domains, phi 0.1 + 1 deg in 5 steps
    "issue512": dict(pixels=512, cell=[70., 80., 90., 85., 95., 105.], misset=[5., 10., 15.],
                     N=[8., 8., 8.], default_F=100., wavelength=1.5, distance=100., pixel=0.1,
                     beam_center=[25.6, 25.6], fluence=1.25932015286227e29,
                     phi=0.1, osc=1.0, phisteps=5, mosaic=0.5, mosaic_domains=10),
    # benchmarks' W2 (misset 10 5 3, oversample 2, 3 wavelengths over a 0.2 % dispersion)
    # at 256^2: the port's autograd tape at 512^2 would not fit this machine's 23 GiB
    "W2_256": dict(pixels=256, cell=[70., 80., 90., 85., 95., 105.], misset=[10., 5., 3.],
                   N=[8., 8., 8.], default_F=100., wavelength=1.5, distance=100., pixel=0.1,
                   beam_center=[12.8, 12.8], fluence=1.25932015286227e29,
                   phi=0.1, osc=1.0, phisteps=5, mosaic=0.5, mosaic_domains=10,
                   oversample=2, dispersion=0.2, dispsteps=3),
    # benchmarks.autodiff_perf's pilatus_roi: the Pilatus command (W3) with a generated
    # -mat/-hkl, a 21 x 21 -roi around pixel (685, 1039); the F grid is a parameter too
    "pilatus_roi": dict(roi=(1029, 1049, 675, 695), misset=[0., 0., 0.], wavelength=0.9768,
                        N=[36., 47., 29.], fluence=1e24, params=("misset", "wavelength", "N",
                                                                 "fluence", "F_hkl")),
}

#: why --cell exists (printed by --help)
CELL_NOTE = ("The cases' cell (70 80 90 85 95 105) is triclinic.  nbnumba's default mode builds "
             "the requested cell; nanoBragg.c sets c*_z = sin(gamma)/(c sin(gamma*)) instead of "
             "1/c (docs/quirks.md #13), and the port does as the C, so on such a cell the two "
             "lattices differ (issue512: 0.8 % of the brightest pixel) and so do the gradients.  "
             "A cell with sin(gamma) = sin(gamma*), such as --cell 70 80 90 90 95 90, gives both "
             "sides the same lattice; the time and memory of a run do not depend on the cell.")


def case_argv(c):
    """nanoBragg flags of a case (every compared parameter is also passed as a keyword)."""
    if "argv" in c:
        return list(c["argv"])
    f = lambda xs: [repr(float(x)) for x in xs]
    return (["-cell"] + f(c["cell"]) + ["-misset"] + f(c["misset"])
            + ["-Na", "%d" % c["N"][0], "-Nb", "%d" % c["N"][1], "-Nc", "%d" % c["N"][2],
               "-default_F", repr(c["default_F"]), "-lambda", repr(c["wavelength"]),
               "-distance", repr(c["distance"]), "-pixel", repr(c["pixel"]),
               "-detpixels", str(c["pixels"]), "-Xbeam", repr(c["beam_center"][0]),
               "-Ybeam", repr(c["beam_center"][1]), "-fluence", repr(c["fluence"]),
               "-phi", repr(c["phi"]), "-osc", repr(c["osc"]), "-phisteps", str(c["phisteps"]),
               "-mosaic", repr(c["mosaic"]), "-mosaic_dom", str(c["mosaic_domains"]),
               "-oversample", str(c.get("oversample", 1)), "-mosflm", "-seed", "1", "-nonoise",
               "-nopgm", "-noprogress"]
            + (["-dispersion", repr(c["dispersion"]), "-dispsteps", str(c["dispsteps"])]
               if c.get("dispsteps") else [])
            + (["-nopolar"] if c.get("nopolar") else []))


def _values(c, names):
    return {n: list(map(float, c[n] if isinstance(c[n], list) else [c[n]])) for n in names}


# --------------------------------------------------------------------------- workers

def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _make_ours(req):
    import torch
    from nbnumba.autodiff import simulate
    argv = case_argv(req["case"])
    roi = "roi" in req["case"]

    def sim(t):
        return simulate(argv, roi_only=roi, **t)
    return torch, sim


def _F_grid(side, req):
    """(F grid tensor, (h_min, k_min, l_min)) of the case's -hkl, read by the side's own code."""
    if side == "ours":
        from nbnumba.autodiff import structure_factors
        F, ((h0, _), (k0, _), (l0, _)) = structure_factors(case_argv(req["case"]))
        return F, (h0, k0, l0)
    import nanobrag_torch.__main__ as M
    _, crystal, _, _ = _port_cli_objects(M, case_argv(req["case"]))
    m = crystal.hkl_metadata
    return crystal.hkl_data.detach().clone(), (m["h_min"], m["k_min"], m["l_min"])


class _Built(BaseException):
    """Carries the port's objects out of its main() (not an Exception: main catches those)."""


#: the port's structure-factor readers, which its main() calls without a dtype: they
#: default to float32 whatever -dtype says
PORT_HKL_READERS = ("read_hkl_file", "try_load_hkl_or_fdump")


def _port_cli_objects(M, argv):
    """(crystal config, crystal, detector config, beam config) as the port's own command
    line builds them from argv: its main() runs up to the Simulator, which is not built.
    It runs at -dtype float64 (the port's default is float32), and its -hkl reader is
    given dtype float64 too: its main() reads the file at float32 whatever -dtype says,
    and the F grid so read (F rounded to float32, a float32 leaf) moved the Pilatus ROI's
    image by 1.6e-8 and its F-grid gradient by 1.5e-6 to 1.9e-6 (docs/autodiff_peers.md)."""
    import torch

    def stop(self, crystal, detector, *a, **k):
        raise _Built(crystal, detector, k.get("beam_config"))

    def at_float64(read):
        return lambda *a, **k: read(*a, **dict(k, dtype=torch.float64))
    orig = M.Simulator.__init__
    readers = {n: getattr(M, n) for n in PORT_HKL_READERS if hasattr(M, n)}
    M.Simulator.__init__ = stop
    for n, read in readers.items():
        setattr(M, n, at_float64(read))
    old = sys.argv
    sys.argv = ["nanoBragg"] + _with_value(argv, "-dtype", "float64")
    try:
        M.main()
    except _Built as b:
        crystal, detector, beam = b.args
        return crystal.config, crystal, detector.config, beam
    finally:
        sys.argv = old
        M.Simulator.__init__ = orig
        for n, read in readers.items():
            setattr(M, n, read)
    raise RuntimeError("the port's main() ended without building a simulator")


def _with_value(argv, flag, *values):
    """argv with FLAG's values replaced (FLAG and them appended when absent)."""
    argv = list(argv)
    if flag in argv:
        i = argv.index(flag) + 1
        argv[i:i + len(values)] = values
    else:
        argv += [flag, *values]
    return argv


#: the detector and beam flags nanoBragg.c makes unit vectors (and an odet that is not
#: unit, fdet x sdet); the port takes their values as given
UNIT_FLAGS = (("-fdet_vector", "fdet"), ("-sdet_vector", "sdet"), ("-odet_vector", "odet"),
              ("-beam_vector", "beam"))


def unit_vectors(det):
    """{flag: nbnumba's unit vector} for UNIT_FLAGS, from an nbnumba detector."""
    return {f: [float(x) for x in getattr(det, a)] for f, a in UNIT_FLAGS}


def peer_argv(argv, req):
    """The port's command line: nbnumba's phi0 for the port (peer_phi0), and the unit
    vectors nbnumba (as nanoBragg.c) made of the flags' vectors (req["unit_vectors"]).
    The Pilatus command's -beam_vector has length 1 - 8e-9: taken as it is, it moved the
    ROI's image by 4.4e-5 of its brightest pixel and Nb's gradient by 13 %."""
    import numpy as np
    argv = _with_value(argv, "-phi", repr(req["peer_phi0"]))
    for flag, v in (req.get("unit_vectors") or {}).items():
        if flag in argv:
            # positional, exact digits: the port's argparse takes "-8.8e-05" for an option
            argv = _with_value(argv, flag, *[np.format_float_positional(float(x), unique=True)
                                             for x in v])
    return argv


def peer_phi0(phis_deg, osc_deg, steps):
    """The port's -phi (deg) for nbnumba's phi points ``phis_deg``: the port samples
    phi0 + i * osc / steps, so its phi0 is nbnumba's first point (half a step past
    nbnumba's phi0, docs/quirks.md #28).  A ValueError if the port's points, so
    placed, are not nbnumba's."""
    step = osc_deg / steps if steps > 0 else 0.0
    port = [phis_deg[0] + i * step for i in range(max(steps, 1))]
    if len(port) != len(phis_deg) or any(abs(a - b) > 1e-9 * max(1.0, abs(b))
                                         for a, b in zip(port, phis_deg)):
        raise ValueError("the port cannot sample nbnumba's phi points %s (-osc %g in %d steps)"
                         % (phis_deg, osc_deg, steps))
    return phis_deg[0]


def ports_mosaic_matrices(model):
    """Phi_p U_m Phi_p^T for each phi point p and mosaic domain m of nbnumba's model,
    as nested lists (N_phi, N_mos, 3, 3), or None without a mosaic spread: the matrices
    that make the port's U_m Phi a nbnumba's Phi U_m a (_blocks_turn_with_the_crystal)."""
    import numpy as np
    from nbnumba.crystal import _rotate_axis_all
    if not model.steps.mosaic_spread > 0.0:
        return None
    U = np.asarray(model.umats, dtype=np.float64).reshape(-1, 3, 3)
    # rows of _rotate_axis_all(I) are the turned unit vectors: its transpose is Phi
    Phi = [_rotate_axis_all(np.eye(3), model.det.spindle, p).T for p in model.phis]
    return [[(R @ u @ R.T).tolist() for u in U] for R in Phi]


def peer_environment(peer_path, repo):
    """The peer worker's environment additions: the port eagerly on 2 threads, and a
    PYTHONPATH of ``peer_path`` (the port's src, when it is not installed) and this
    checkout, since the worker is this file and imports benchmarks._cli."""
    return {"NANOBRAGG_DISABLE_COMPILE": "1", "OMP_NUM_THREADS": "2", "KMP_DUPLICATE_LIB_OK": "TRUE",
            "PYTHONPATH": os.pathsep.join(p for p in (peer_path, repo) if p)}


def _make_peer_cli(req):
    """The port from its own command-line parsing (the Pilatus ROI case: -mat, -hkl,
    custom detector vectors), with the keyword tensors put into fresh configs."""
    import dataclasses
    import torch
    import nanobrag_torch.__main__ as M
    from nanobrag_torch.models.crystal import Crystal
    from nanobrag_torch.models.detector import Detector
    from nanobrag_torch.simulator import Simulator
    cc0, crystal0, dc0, bc0 = _port_cli_objects(M, peer_argv(case_argv(req["case"]), req))
    meta = crystal0.hkl_metadata
    x0, x1, y0, y1 = req["case"]["roi"]
    dt, cpu = torch.float64, torch.device("cpu")

    def sim(t):
        mis, N = t["misset"], t["N"]
        cc = dataclasses.replace(cc0, misset_deg=(mis[0], mis[1], mis[2]), N_cells=(N[0], N[1], N[2]))
        # flux and exposure 0: the fluence given is not recomputed from them
        bc = dataclasses.replace(bc0, wavelength_A=t["wavelength"][0], fluence=t["fluence"][0],
                                 flux=0.0, exposure=0.0)
        crystal = Crystal(cc, beam_config=bc, device=cpu, dtype=dt)
        crystal.hkl_data = t["F_hkl"]
        crystal.hkl_metadata = meta
        crystal.interpolation_enabled = crystal0.interpolation_enabled
        det = Detector(dc0, device=cpu, dtype=dt)
        # the port moves a given -pix0_vector (its origin here is ~1 mm off the flag's):
        # nanoBragg's origin and close distance instead, as nbnumba builds them
        # (its own recomputation, which .to() calls, pinned to it as well)
        pix0 = torch.tensor(req["pix0"], dtype=dt)
        det._calculate_pix0_vector = lambda: setattr(det, "pix0_vector", pix0.clone())
        det.pix0_vector = pix0.clone()
        det._close_distance_cached = torch.tensor(req["close_distance"], dtype=dt)
        img = Simulator(crystal, det, crystal_config=cc, beam_config=bc, device=cpu, dtype=dt).run()
        return img[y0:y1 + 1, x0:x1 + 1]      # the port renders the frame; the ROI box
    return torch, sim


def _blocks_turn_with_the_crystal(torch, req):
    """The port's mosaic step (rotate_umat of the phi-rotated vectors, shape (N_phi, 1, 3),
    by the domains' matrices, (1, N_mos, 3, 3)) with the request's per-phi matrices
    Phi_p U_m Phi_p^T instead: Phi_p U_m a, nbnumba's cells (docs/quirks.md #41).  The
    port's other calls of rotate_umat (the misset) are left alone."""
    import nanobrag_torch.utils.geometry as G
    per_phi = torch.tensor(req["umats_phi"], dtype=torch.float64)      # (N_phi, N_mos, 3, 3)
    plain = G.rotate_umat

    def rotate_umat(v, umat):
        if umat.dim() == 4 and umat.shape[:2] == (1, per_phi.shape[1]) and v.dim() == 3 \
                and v.shape[:2] == (per_phi.shape[0], 1):
            return torch.matmul(per_phi.to(v), v.unsqueeze(-1)).squeeze(-1)
        return plain(v, umat)
    G.rotate_umat = rotate_umat


def _make_peer(req):
    import torch
    from nanobrag_torch.config import (BeamConfig, CrystalConfig, CrystalShape, DetectorConfig,
                                       DetectorConvention, DetectorPivot)
    from nanobrag_torch.models.crystal import Crystal
    from nanobrag_torch.models.detector import Detector
    from nanobrag_torch.simulator import Simulator
    c = req["case"]
    dt = torch.float64
    umats = torch.tensor(req["umats"], dtype=dt).reshape(-1, 3, 3)
    # nanoBragg's sources (from nbnumba): the port's directions point from the
    # sample to the source; its wavelengths (m) follow the wavelength tensor
    src = req.get("sources")
    # nanoBragg's mosaic domains (from nbnumba) instead of the port's own draws
    Crystal._generate_mosaic_rotations = lambda self, config: umats.to(self.device, self.dtype)
    if req.get("umats_phi") is not None:
        _blocks_turn_with_the_crystal(torch, req)

    def sim(t):
        cell, mis, N = t["cell"], t["misset"], t["N"]
        cc = CrystalConfig(cell_a=cell[0], cell_b=cell[1], cell_c=cell[2], cell_alpha=cell[3],
                           cell_beta=cell[4], cell_gamma=cell[5], misset_deg=(mis[0], mis[1], mis[2]),
                           N_cells=(N[0], N[1], N[2]), default_F=c["default_F"],
                           phi_start_deg=req["peer_phi0"], osc_range_deg=c["osc"], phi_steps=c["phisteps"],
                           mosaic_spread_deg=c["mosaic"], mosaic_domains=c["mosaic_domains"],
                           shape=CrystalShape.SQUARE)
        dc = DetectorConfig(distance_mm=t["distance"][0], pixel_size_mm=c["pixel"],
                            spixels=c["pixels"], fpixels=c["pixels"],
                            detector_convention=DetectorConvention.MOSFLM,
                            detector_pivot=DetectorPivot.BEAM, oversample=c.get("oversample", 1),
                            beam_center_source="explicit")
        # as the port's CLI maps MOSFLM -Xbeam/-Ybeam (its Detector adds the 0.5 pixel)
        dc.beam_center_s = t["beam_center"][0]
        dc.beam_center_f = t["beam_center"][1]
        bc = BeamConfig(wavelength_A=t["wavelength"][0], fluence=t["fluence"][0],
                        nopolar=bool(c.get("nopolar")))
        if src is not None:
            bc.source_directions = torch.tensor(src["directions"], dtype=dt)
            bc.source_weights = torch.ones(len(src["ratios"]), dtype=dt)
            bc.source_wavelengths = t["wavelength"][0] * 1e-10 * torch.tensor(src["ratios"], dtype=dt)
        crystal = Crystal(cc, beam_config=bc, device=torch.device("cpu"), dtype=dt)
        det = Detector(dc, device=torch.device("cpu"), dtype=dt)
        return Simulator(crystal, det, crystal_config=cc, beam_config=bc,
                         device=torch.device("cpu"), dtype=dt).run()
    return torch, sim


def worker(side, reqfile, outdir):
    import numpy as np
    with open(reqfile) as fh:
        req = json.load(fh)
    cli = "argv" in req["case"]
    torch, sim = (_make_ours if side == "ours" else _make_peer_cli if cli else _make_peer)(req)
    torch.set_num_threads(2)
    names = req["params"]
    base = _values(req["case"], [n for n in PARAMS if n in req["case"]])
    F0, F_origin = _F_grid(side, req) if "F_hkl" in names else (None, None)
    res = {"side": side, "mode": req["mode"], "rss_after_import_mib": _peak_mib()}
    w = torch.from_numpy(np.load(os.path.join(outdir, "weights.npy")))

    def tensors(grad=(), shift=None):
        t = {}
        for n, v in base.items():
            x = torch.tensor(v, dtype=torch.float64)
            if shift is not None and shift[0] == n:
                x[shift[1]] += shift[2]
            t[n] = x.requires_grad_(n in grad)
        if F0 is not None:
            t["F_hkl"] = F0.clone().requires_grad_("F_hkl" in grad)
        return t

    reps = req["reps"]
    if req["mode"] == "fwd":
        times = []
        for _ in range(reps + 1):             # the first is the warm-up
            t0 = time.perf_counter()
            with torch.no_grad():
                img = sim(tensors())
            times.append(time.perf_counter() - t0)
        res["times_s"] = times[1:]
        np.save(os.path.join(outdir, side + "_image.npy"), img.detach().numpy())
    elif req["mode"] == "grad":
        for loss in ("sum", "weighted"):
            times = []
            for _ in range(reps + 1):
                t = tensors(grad=names)
                t0 = time.perf_counter()
                img = sim(t)
                L = img.sum() if loss == "sum" else (w * img).sum()
                L.backward()
                times.append(time.perf_counter() - t0)
            res[loss] = {"times_s": times[1:], "value": float(L.detach()),
                         "grad": {n: (None if t[n].grad is None else t[n].grad.tolist())
                                  for n in names if n != "F_hkl"}}
            if "F_hkl" in names:
                # the grid gradient as a file, with its origin (the sides' grids may differ in extent)
                np.save(os.path.join(outdir, "%s_%s_gF.npy" % (side, loss)), t["F_hkl"].grad.numpy())
                res[loss]["F_origin"] = [int(x) for x in F_origin]
    elif req["mode"] == "fd":
        def losses(shift):
            with torch.no_grad():
                img = sim(tensors(shift=shift))
            return np.array([float(img.sum()), float((w * img).sum())])
        fd = {}
        for n in [x for x in names if x != "F_hkl"]:
            col = []
            for i, h in enumerate(PARAMS[n][1]):
                f = {k: losses((n, i, k * h)) for k in (-2, -1, 1, 2)}
                col.append(((8.0 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12.0 * h)).tolist())
            fd[n] = col                         # [value index][sum, weighted]
        res["fd"] = fd
    res["peak_rss_mib"] = _peak_mib()
    with open(os.path.join(outdir, side + "_" + req["mode"] + ".json"), "w") as fh:
        json.dump(res, fh)


# --------------------------------------------------------------------------- driver

def _run_worker(python, side, req, tmp, env_extra):
    reqfile = os.path.join(tmp, "req_%s_%s.json" % (side, req["mode"]))
    with open(reqfile, "w") as fh:
        json.dump(req, fh)
    env = dict(os.environ)
    env.update(env_extra)
    cmd = [python, os.path.abspath(__file__), "--worker", side, "--request", reqfile, "--outdir", tmp]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    except OSError as exc:
        raise RuntimeError("%s %s worker failed: cannot execute %s: %s"
                           % (side, req["mode"], python, exc.strerror or exc)) from None
    if r.returncode != 0:
        raise RuntimeError("%s %s worker failed (rc %d):\n%s" % (side, req["mode"], r.returncode,
                                                                 r.stderr[-4000:]))
    with open(os.path.join(tmp, "%s_%s.json" % (side, req["mode"]))) as fh:
        return json.load(fh)


def _compare_grids(tmp, loss, results):
    """The two F-grid gradients over the Miller indices both grids hold: their
    largest difference over the largest magnitude, and the count of entries."""
    import numpy as np
    g, o = {}, {}
    for side in ("ours", "peer"):
        g[side] = np.load(os.path.join(tmp, "%s_%s_gF.npy" % (side, loss)))
        o[side] = results["%s_grad" % side][loss]["F_origin"]
    lo = [max(o["ours"][i], o["peer"][i]) for i in range(3)]
    hi = [min(o[s][i] + g[s].shape[i] for s in g) for i in range(3)]
    cut = {s: g[s][tuple(slice(lo[i] - o[s][i], hi[i] - o[s][i]) for i in range(3))] for s in g}
    scale = max(np.abs(cut["ours"]).max(), np.abs(cut["peer"]).max(), 1e-300)
    return {"max_abs_diff_over_max": float(np.abs(cut["ours"] - cut["peer"]).max() / scale),
            "nonzero_ours": int(np.count_nonzero(g["ours"])),
            "nonzero_peer": int(np.count_nonzero(g["peer"])),
            "sum_ours": float(g["ours"].sum()), "sum_peer": float(g["peer"].sum()),
            "common_shape": [hi[i] - lo[i] for i in range(3)]}


def _flat(d, names):
    out = []
    for n in [x for x in names if x != "F_hkl"]:
        v = d[n]
        out.extend([float("nan")] * PARAMS[n][0] if v is None else v)
    return out


MODES = ("fwd", "grad", "fd")


def main(argv=None):
    # (a worker's output is read by the driver: tracebacks go to it unchanged)
    if argv is None and "--worker" in sys.argv[1:] or argv is not None and "--worker" in argv:
        return _main(argv)
    from benchmarks import _cli
    return _cli.guarded_main("benchmarks.autodiff_peers", lambda: _main(argv), io_exit=1)


def _main(argv=None):
    from benchmarks import _cli
    ap = _cli.UsageParser(prog="python -m benchmarks.autodiff_peers",
                          description=__doc__.split("\n")[0], epilog=CELL_NOTE)
    ap.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    ap.add_argument("--request", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    ap.add_argument("--peer-python", default=os.environ.get("NB_PEER_PYTHON"),
                    help="interpreter of the environment holding nanobrag_torch (or NB_PEER_PYTHON)")
    ap.add_argument("--peer-path", default=os.environ.get("NB_PEER_PATH"),
                    help="the PYTHONPATH of the peer process (e.g. the port's src, when it is not installed; "
                         "or NB_PEER_PATH)")
    ap.add_argument("--case", choices=sorted(CASES), default="small", help="default small")
    ap.add_argument("--params", default=",".join(PARAMS),
                    help="comma-separated subset of %s" % ",".join(PARAMS))
    ap.add_argument("--modes", default="fwd,grad,fd",
                    help="comma-separated subset of %s (default fwd,grad,fd)" % ",".join(MODES))
    ap.add_argument("--reps", type=_cli.positive_int, default=2, help="default 2")
    ap.add_argument("--no-fd", action="store_true", help="drop the fd mode from --modes")
    ap.add_argument("--nopolar", action="store_true",
                    help="both sides without the polarization factor (-nopolar): isolates the "
                         "port's eps-biased polarization (see docs/autodiff_peers.md)")
    ap.add_argument("--cell", nargs=6, type=_cli.positive_float, metavar=("A", "B", "C", "AL", "BE", "GA"),
                    help="the case's cell instead (A, deg); see below")
    ap.add_argument("--oversample", type=_cli.positive_int, help="the case's -oversample instead (not pilatus_roi)")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.request, a.outdir)
    if not a.peer_python:
        ap.error("give --peer-python (or NB_PEER_PYTHON): the torch port's interpreter")
    _cli.executable(a.peer_python, "--peer-python")
    known = set(PARAMS) | ({"F_hkl"} if a.case == "pilatus_roi" else set())
    bad = [n for n in a.params.split(",") if n and n not in known]
    if bad or not [n for n in a.params.split(",") if n]:
        raise _cli.usage_error("argument --params: %s (known: %s)" % (
            "unknown %s" % ", ".join(map(repr, bad)) if bad else "empty", ", ".join(sorted(known))))
    bad = [m for m in a.modes.split(",") if m and m not in MODES]
    if bad or not [m for m in a.modes.split(",") if m and not (a.no_fd and m == "fd")]:
        raise _cli.usage_error("argument --modes: %s (known: %s)" % (
            "unknown %s" % ", ".join(map(repr, bad)) if bad else "no mode left to run", ",".join(MODES)))
    _cli.check_output(a.json, "--json")
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    c = dict(CASES[a.case], nopolar=a.nopolar)
    if a.cell:
        c["cell"] = list(a.cell)
    if a.oversample:
        c["oversample"] = a.oversample
    names = [n for n in a.params.split(",") if n]
    keep = tempfile.mkdtemp(prefix="nb-peers-")      # the generated -mat/-hkl of pilatus_roi
    if "roi" in c:
        from benchmarks.autodiff_perf import case_argv as perf_case_argv
        c["argv"] = perf_case_argv("pilatus_roi", workdir=keep)[0]
        if a.params == ",".join(PARAMS):
            names = list(c["params"])
        x0, x1, y0, y1 = c["roi"]
        c["shape"] = [y1 - y0 + 1, x1 - x0 + 1]
        if a.nopolar:
            c["argv"].append("-nopolar")
    else:
        c["shape"] = [c["pixels"], c["pixels"]]
    cfg = parse_argv(case_argv(c))
    model = build_model(cfg)
    umats_phi = ports_mosaic_matrices(model)
    try:
        phi0 = peer_phi0([math.degrees(p) for p in model.phis], math.degrees(cfg.osc), cfg.phisteps)
    except ValueError as exc:
        raise _cli.usage_error("--case %s: %s" % (a.case, exc)) from None
    umats = np.asarray(model.umats, dtype=np.float64).reshape(-1, 9).tolist()
    sources = None
    if len(model.sources.wavelength) > 1:
        sources = {"directions": np.asarray(model.sources.direction).tolist(),
                   "ratios": (np.asarray(model.sources.wavelength) / (c["wavelength"] * 1e-10)).tolist()}
    modes = [m for m in a.modes.split(",") if m and not (a.no_fd and m == "fd")]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours_env = {"NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2",
                "PYTHONPATH": repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
    peer_env = peer_environment(a.peer_path, repo)
    out = {"case": c, "argv": case_argv(c), "params": names, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(13)
        np.save(os.path.join(tmp, "weights.npy"), rng.random(tuple(c["shape"])))
        for mode in modes:
            req = {"case": c, "params": names, "mode": mode, "reps": a.reps, "umats": umats,
                   "sources": sources, "pix0": [float(x) for x in model.det.pix0],
                   "close_distance": float(model.det.close_distance), "peer_phi0": phi0,
                   "umats_phi": umats_phi,
                   "unit_vectors": unit_vectors(model.det)}
            for side, py, env in (("ours", sys.executable, ours_env), ("peer", a.peer_python, peer_env)):
                try:
                    r = _run_worker(py, side, req, tmp, env)
                except RuntimeError as e:
                    if side == "ours":
                        raise
                    # (a peer killed for memory ends with -9: say so and go on)
                    r = {"side": side, "mode": mode, "failed": str(e)[-1500:]}
                    out["results"]["%s_%s" % (side, mode)] = r
                    print(json.dumps(r), flush=True)
                    continue
                out["results"]["%s_%s" % (side, mode)] = r
                print(json.dumps({k: v for k, v in r.items() if k not in ("fd",)})[:2000], flush=True)
            if "failed" in out["results"]["peer_%s" % mode]:
                continue
            if mode == "fwd":
                A = np.load(os.path.join(tmp, "ours_image.npy"))
                B = np.load(os.path.join(tmp, "peer_image.npy"))
                out["forward"] = {"corr": float(np.corrcoef(A.ravel(), B.ravel())[0, 1]),
                                  "max_rel": float(np.max(np.abs(A - B)) / np.max(np.abs(A))),
                                  "sum_ours": float(A.sum()), "sum_peer": float(B.sum()),
                                  "argmax_ours": list(np.unravel_index(int(A.argmax()), A.shape)),
                                  "argmax_peer": list(np.unravel_index(int(B.argmax()), B.shape))}
                out["forward"]["argmax_ours"] = [int(x) for x in out["forward"]["argmax_ours"]]
                out["forward"]["argmax_peer"] = [int(x) for x in out["forward"]["argmax_peer"]]
                print(json.dumps({"forward": out["forward"]}), flush=True)
            if mode == "grad" and "F_hkl" in names:
                out["F_hkl_grad"] = {loss: _compare_grids(tmp, loss, out["results"])
                                     for loss in ("sum", "weighted")}
                print(json.dumps({"F_hkl_grad": out["F_hkl_grad"]}), flush=True)
    R = out["results"]
    if "ours_grad" in R and "peer_grad" in R and "failed" not in R["peer_grad"]:
        table = []
        for loss in ("sum", "weighted"):
            g1 = _flat(R["ours_grad"][loss]["grad"], names)
            g2 = _flat(R["peer_grad"][loss]["grad"], names)
            fd1 = fd2 = None
            if "ours_fd" in R:
                col = 0 if loss == "sum" else 1
                fd1 = [x[col] for n in names if n != "F_hkl" for x in R["ours_fd"]["fd"][n]]
                fd2 = [x[col] for n in names if n != "F_hkl" for x in R["peer_fd"]["fd"][n]]
            k = 0
            for n in [x for x in names if x != "F_hkl"]:
                for i in range(PARAMS[n][0]):
                    row = {"loss": loss, "param": "%s[%d]" % (n, i), "ours": g1[k], "peer": g2[k],
                           "rel": abs(g1[k] - g2[k]) / max(abs(g1[k]), abs(g2[k]), 1e-300)}
                    if fd1 is not None:
                        row.update(fd_ours=fd1[k], fd_peer=fd2[k],
                                   rel_ours_fd=abs(g1[k] - fd1[k]) / max(abs(fd1[k]), 1e-300),
                                   rel_peer_fd=abs(g2[k] - fd2[k]) / max(abs(fd2[k]), 1e-300))
                    table.append(row)
                    k += 1
        out["gradients"] = table
        for row in table:
            print(" ".join("%s=%s" % (k, ("%.6g" % v) if isinstance(v, float) else v)
                           for k, v in row.items()))
    for key, r in sorted(R.items()):
        if key.endswith("_fd"):
            continue
        if "times_s" in r:
            print("%-10s fwd       best %.3f s  peak RSS %.0f MiB (after import %.0f)"
                  % (key, min(r["times_s"]), r["peak_rss_mib"], r["rss_after_import_mib"]))
        for loss in ("sum", "weighted"):
            if loss in r:
                print("%-10s fwd+bwd %-8s best %.3f s  peak RSS %.0f MiB (after import %.0f)"
                      % (key, loss, min(r[loss]["times_s"]), r["peak_rss_mib"],
                         r["rss_after_import_mib"]))
    if a.json:
        # (the generated -mat/-hkl's temporary directory named, not its path)
        text = _cli.json_text(out, indent=1).replace(keep, "GENERATED")
        _cli.write_text(a.json, text)
    import shutil
    shutil.rmtree(keep, ignore_errors=True)
    failed = [k for k, r in R.items() if k.startswith("peer_") and "failed" in r]
    if failed and len(failed) == len([k for k in R if k.startswith("peer_")]):
        print("autodiff_peers: every peer run failed (%s)" % ", ".join(sorted(failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
