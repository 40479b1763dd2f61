"""nbnumba-expt: nanoBragg flags from a DIALS experiment list (nbnumba/expt.py).

The experiment lists are written here by hand, in dxtbx's JSON layout
(docs/expt.md lists what the translation reads and where that is defined).
"""
import copy
import json
import math
import shlex
import warnings

import numpy as np
import pytest

import nbnumba
from nbnumba.model import build_model
from nbnumba.expt import expt_from_flags, flags_from_expt, main, write_expt, write_mat
from nbnumba.geometry import build_detector
from nbnumba.io.mat import read_mosflm_mat

RENDER = ["-N", "10", "-default_F", "100", "-nonoise", "-nopgm", "-noprogress"]


def rot(axis, deg):
    """Right-handed rotation matrix about ``axis`` (any length) by ``deg``."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def cell_rows(a, b, c, al, be, ga):
    """Real-space a, b, c (rows, Angstrom) of a cell, a along x, b in the xy plane."""
    al, be, ga = (math.radians(x) for x in (al, be, ga))
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    return np.array([[a, 0, 0], [b * math.cos(ga), b * math.sin(ga), 0],
                     [cx, cy, math.sqrt(c * c - cx * cx - cy * cy)]])


def expt_dict(beam_dir, lam, fast, slow, origin, npix, pixel, rows, gon=None, scan=None,
              thickness=0.0, mu=0.0, polar=((0.0, 1.0, 0.0), 0.999), hierarchy=None):
    """A one-experiment list in dxtbx's to_dict layout."""
    beam = {"__id__": "monochromatic", "direction": list(map(float, beam_dir)),
            "wavelength": lam, "divergence": 0.0, "sigma_divergence": 0.0}
    if polar is not None:
        beam["polarization_normal"] = list(map(float, polar[0]))
        beam["polarization_fraction"] = polar[1]
    panel = {"name": "panel", "type": "SENSOR_PAD", "fast_axis": list(map(float, fast)),
             "slow_axis": list(map(float, slow)), "origin": list(map(float, origin)),
             "pixel_size": [pixel, pixel], "image_size": list(npix), "thickness": thickness,
             "mu": mu, "trusted_range": [-1.0, 1e6]}
    det = {"panels": [panel]}
    if hierarchy is not None:
        det["hierarchy"] = hierarchy
    exp = {"__id__": "Experiment", "beam": 0, "detector": 0, "crystal": 0}
    d = {"__id__": "ExperimentList", "experiment": [exp], "beam": [beam], "detector": [det],
         "crystal": [{"__id__": "crystal", "real_space_a": list(map(float, rows[0])),
                      "real_space_b": list(map(float, rows[1])),
                      "real_space_c": list(map(float, rows[2])),
                      "space_group_hall_symbol": " P 1"}]}
    if gon is not None:
        exp["goniometer"] = 0
        d["goniometer"] = [gon]
    if scan is not None:
        exp["scan"] = 0
        d["scan"] = [scan]
    return d


def write(tmp_path, d, name="x.expt"):
    p = tmp_path / name
    p.write_text(json.dumps(d, indent=1))
    return p


def render(argv, tmp_path, extra=()):
    return nbnumba.simulate_argv(list(argv) + RENDER + list(extra), cwd=str(tmp_path)).float_image


# ---------------------------------------------------------------------------
# 1. spot positions predicted with numpy from the JSON alone
# ---------------------------------------------------------------------------

def _tilted_rotation_case():
    lam = 1.0
    d = unit([0.03, -0.02, 1.0])                 # sample -> source (dxtbx's beam.direction)
    b = -d
    ray = rot(np.cross(b, [0.0, 1.0, 0.0]), 12.0) @ b
    C = 120.0 * ray                              # panel centre, mm
    T = rot([0.2, 1.0, 0.0], 20.0) @ rot([1.0, 0.0, 0.0], 8.0)
    f, s = T @ [1.0, 0.0, 0.0], T @ [0.0, -1.0, 0.0]
    npix, px = 128, 0.5
    origin = C - 0.5 * npix * px * (f + s)
    assert origin @ np.cross(f, s) > 0           # the panel faces the sample
    rows = cell_rows(42.0, 48.0, 55.0, 88.0, 95.0, 92.0) @ rot([1, 2, 3], 37.0).T
    e = unit([1.0, 0.05, 0.0])
    F = rot([0.3, 1.0, 0.2], 25.0)
    S = rot([0.0, 0.2, 1.0], 12.0)
    gon = {"rotation_axis": list(e), "fixed_rotation": list(F.ravel()),
           "setting_rotation": list(S.ravel())}
    scan = {"image_range": [1, 50], "batch_offset": 0, "oscillation": [28.0, 0.5],
            "exposure_time": [0.1], "epochs": [0.0], "valid_image_ranges": {}}
    return expt_dict(d, lam, f, s, origin, (npix, npix), px, rows, gon=gon, scan=scan)


def _predict(d, phi_deg, order="SRF"):
    """Independent prediction from the JSON: r = S R(e, phi) F A h (dxtbx's
    order; ``order`` picks a wrong one for the control), s1 = s0 + r, and where
    s1's ray meets the panel: (miss, fast px, slow px, hkl), miss the largest
    fractional-index distance of the lattice point from the Ewald sphere."""
    beam, det = d["beam"][0], d["detector"][0]["panels"][0]
    xl = d["crystal"][0]
    s0 = -np.array(beam["direction"]) / beam["wavelength"]
    A = np.linalg.inv(np.array([xl["real_space_a"], xl["real_space_b"], xl["real_space_c"]]))
    if d.get("goniometer"):
        gon = d["goniometer"][0]
        F = np.array(gon["fixed_rotation"]).reshape(3, 3)
        S = np.array(gon["setting_rotation"]).reshape(3, 3)
        R = rot(gon["rotation_axis"], phi_deg)
    else:                                        # a still: the crystal as it is
        F = S = R = np.eye(3)
    UB = {"SRF": S @ R @ F, "FRS": F @ R @ S, "RF": R @ F}[order] @ A
    f, s, o = (np.array(det[k]) for k in ("fast_axis", "slow_axis", "origin"))
    n = np.cross(f, s)
    px, (nf, ns) = det["pixel_size"][0], det["image_size"]
    spots = []
    r = np.arange(-12, 13)
    for h in np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3):
        if not h.any():
            continue
        s1 = s0 + UB @ h
        # the Ewald-sphere point nearest the lattice point, in fractional indices
        p = s1 / np.linalg.norm(s1) * np.linalg.norm(s0) - s0
        miss = np.abs(np.linalg.solve(UB, p) - h).max()
        if miss > 0.3 or s1 @ n <= 0:
            continue
        t = (o @ n) / (s1 @ n)
        x, y = (t * s1 - o) @ f / px, (t * s1 - o) @ s / px
        if 3 <= x < nf - 3 and 3 <= y < ns - 3:
            spots.append((miss, x, y, tuple(h)))
    # spots near the Ewald sphere with no other candidate within 5 pixels
    return [sp for sp in spots if sp[0] < 0.04
            and all(np.hypot(sp[1] - o[1], sp[2] - o[2]) > 5 for o in spots if o is not sp)]


def _found(img, spots):
    """How many predicted spots have a bright pixel within 1 pixel (the
    brightest pixel of a 5x5 window, far above the image's median)."""
    floor = max(float(np.median(img)), 1e-30)
    hits = []
    for miss, x, y, hkl in spots:
        i, j = int(y), int(x)
        win = img[i - 2:i + 3, j - 2:j + 3]
        k, l = np.unravel_index(np.argmax(win), win.shape)
        sy, sx = i - 2 + k + 0.5, j - 2 + l + 0.5       # brightest pixel's centre
        hits.append(win.max() > 50 * floor and abs(sx - x) <= 1.0 and abs(sy - y) <= 1.0)
    return hits


def test_spots_land_where_an_independent_prediction_puts_them(tmp_path):
    d = _tilted_rotation_case()
    path = write(tmp_path, d)
    image = 5
    phi = 28.0 + (image - 1) * 0.5
    argv, mat = flags_from_expt(path, image=image, mat_out=tmp_path / "x.mat")
    write_mat(tmp_path / "x.mat", mat)
    assert argv[argv.index("-phi") + 1] == "30.0"
    # a still at the image's start angle: one phi step (-osc stays 0.5)
    img = render(argv, tmp_path, ["-phisteps", "1"])
    spots = _predict(d, phi)
    assert len(spots) >= 5, len(spots)
    hits = _found(img, spots)
    assert all(hits), [sp[3] for sp, h in zip(spots, hits) if not h]
    # control: the check tells the conventions apart.  The rotations in the
    # wrong order, the setting rotation left out, or phi turned the other way
    # predict spots that are mostly not there
    for order, angle in (("FRS", phi), ("RF", phi), ("SRF", -phi)):
        wrong = _predict(d, angle, order)
        assert len(wrong) >= 5 and sum(_found(img, wrong)) <= len(wrong) // 3, (order, angle)


def test_a_detector_hierarchy_is_composed_into_the_lab_frame(tmp_path):
    d = _tilted_rotation_case()
    flat = flags_from_expt(write(tmp_path, d, "flat.expt"), mat_out="m")[0]
    panel = d["detector"][0]["panels"][0]
    f, s, o = (np.array(panel[k]) for k in ("fast_axis", "slow_axis", "origin"))
    # the same panel under a turned, shifted root group: local = root^-1 (lab)
    gf, gs = rot([1, 1, 0], 30.0) @ [1.0, 0, 0], rot([1, 1, 0], 30.0) @ [0, 1.0, 0]
    go = np.array([5.0, -7.0, 40.0])
    P = np.column_stack((gf, gs, np.cross(gf, gs)))
    panel.update(fast_axis=list(P.T @ f), slow_axis=list(P.T @ s), origin=list(P.T @ (o - go)))
    d["detector"][0]["hierarchy"] = {"name": "root", "fast_axis": list(gf), "slow_axis": list(gs),
                                     "origin": list(go), "children": [{"panel": 0}]}
    tree = flags_from_expt(write(tmp_path, d, "tree.expt"), mat_out="m")[0]
    assert [a for a in tree if not _isnum(a)] == [a for a in flat if not _isnum(a)]
    np.testing.assert_allclose([float(a) for a in tree if _isnum(a)],
                               [float(a) for a in flat if _isnum(a)], rtol=0, atol=1e-12)
    # ignoring the hierarchy would put the panel elsewhere
    assert np.abs(np.array(panel["origin"]) - o).max() > 10


def _isnum(a):
    try:
        float(a)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# 2. a known nanoBragg command, described by hand as an experiment list
# ---------------------------------------------------------------------------

def test_round_trip_reproduces_a_custom_vector_command(tmp_path):
    lam = 1.3
    b = unit([0.1, -0.05, -1.0])                          # propagation direction
    E = unit(np.cross(b, [0.3, 1.0, 0.0]))                # polarisation E vector, _|_ b
    T = rot([1.0, -0.4, 0.2], 14.0)
    f, s = T @ [1.0, 0.0, 0.0], T @ [0.0, -1.0, 0.0]
    o = np.cross(f, s)
    pix0 = np.array([-3.1, 4.2, -80.0])
    u = unit([0.9, 0.3, -0.1])                            # spindle axis, lab frame
    M0 = lam * np.linalg.inv(cell_rows(31.0, 37.0, 43.0, 85.0, 97.0, 101.0)
                             @ rot([2, -1, 1], 50.0).T)  # file layout: row i = comp. i
    write_mat(tmp_path / "orig.mat", M0)
    vec = lambda v: [repr(float(x)) for x in v]  # noqa: E731
    orig = (["-lambda", "1.3", "-beam_vector", *vec(b), "-polar", "0.5", "-polar_vector", *vec(E),
             "-fdet_vector", *vec(f), "-sdet_vector", *vec(s), "-odet_vector", *vec(o),
             "-pix0_vector_mm", *vec(pix0), "-pixel", "0.2", "-detpixels_x", "48",
             "-detpixels_y", "40", "-detector_thick", "300", "-detector_abs", "500",
             "-mat", "orig.mat", "-spindle_axis", *vec(u), "-phi", "12", "-osc", "0.5"])
    # the experiment list: a goniometer whose setting and fixed rotations are
    # not the identity, so the translation must fold them back in
    S = rot([0.2, 0.1, 1.0], 20.0)
    F = rot([1.0, 1.0, 0.0], 35.0)
    A = F.T @ S.T @ (M0 / lam)
    gon = {"rotation_axis": list(S.T @ u), "fixed_rotation": list(F.ravel()),
           "setting_rotation": list(S.ravel())}
    scan = {"image_range": [1, 10], "batch_offset": 0,
            "properties": {"oscillation": [11.0 + 0.5 * i for i in range(10)]},
            "valid_image_ranges": {}}
    d = expt_dict(-b, lam, f, s, pix0, (48, 40), 0.2, np.linalg.inv(A), gon=gon, scan=scan,
                  thickness=0.3, mu=2.0, polar=(unit(np.cross(b, E)), 0.75))
    argv, mat = flags_from_expt(write(tmp_path, d), image=3, mat_out="new.mat")
    write_mat(tmp_path / "new.mat", mat)
    np.testing.assert_allclose(read_mosflm_mat(tmp_path / "new.mat"), M0.T, rtol=0, atol=1e-15)
    a = render(orig, tmp_path, ["-phisteps", "3"])
    c = render(argv, tmp_path, ["-phisteps", "3"])
    assert a.max() > 0 and np.count_nonzero(a > 1e-3 * a.max()) > 20
    np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12 * a.max())
    # nanoBragg.c (and -c_parity) ignores -pix0_vector_mm: the -distance,
    # -Xbeam and -Ybeam that come with it put the panel in the same place
    cfg = nbnumba.parse_argv(argv + ["-c_parity"], cwd=str(tmp_path))
    det = build_detector(cfg, trace=False)
    np.testing.assert_allclose(np.array(det.pix0) * 1e3, pix0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(det.fdet, f, atol=1e-15)
    # the sensor: 0.3 mm and mu 2/mm are 300 um and an attenuation length of 500 um
    cfg = nbnumba.parse_argv(argv, cwd=str(tmp_path))
    assert cfg.detector_thick == pytest.approx(300e-6) and cfg.detector_mu == pytest.approx(2000.0)


def test_cli_prints_one_quoted_line_and_writes_the_mat_file(tmp_path, capsys, monkeypatch):
    d = _tilted_rotation_case()
    d["detector"][0]["panels"].append(copy.deepcopy(d["detector"][0]["panels"][0]))
    path = write(tmp_path, d, "my run.expt")
    monkeypatch.chdir(tmp_path)
    assert main(["my run.expt", "--image", "2", "--panel", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    argv = shlex.split(out)
    assert argv == flags_from_expt("my run.expt", image=2, panel=1)[0]
    assert argv[argv.index("-mat") + 1] == "my run.mat"
    assert "panel 1 of 2" in err
    np.testing.assert_allclose(read_mosflm_mat(tmp_path / "my run.mat"),
                               flags_from_expt(path, image=2)[1].T, rtol=0, atol=0)
    assert argv[argv.index("-phi") + 1] == "28.5" and argv[argv.index("-osc") + 1] == "0.5"
    assert main(["my run.expt", "--mat-out", "sub.mat"]) == 0
    assert (tmp_path / "sub.mat").is_file()


def test_a_left_handed_panel_faces_the_sample_in_nanobragg_c_too(tmp_path):
    # nanoBragg.c keeps -odet_vector only when sqrt(x*x + y*y + z*z) is exactly
    # 1.0, else it takes fdet x sdet (docs/quirks.md #18): for this left-handed
    # panel the far side, and -c_parity (as the C) put it behind the sample
    d = _tilted_rotation_case()
    p = d["detector"][0]["panels"][0]
    centre = np.array(p["origin"]) + 64 * 0.5 * (np.array(p["fast_axis"]) + p["slow_axis"])
    T = rot([0.2, 1.0, 0.0], 28.0) @ rot([1.0, 0.0, 0.0], 8.0)
    f, s = T @ [0.0, -1.0, 0.0], T @ [1.0, 0.0, 0.0]
    assert np.cross(f, s) @ centre < 0                 # fast x slow points away
    p.update(fast_axis=list(f), slow_axis=list(s), origin=list(centre - 64 * 0.5 * (f + s)))
    argv, mat = flags_from_expt(write(tmp_path, d), mat_out="m.mat")
    write_mat(tmp_path / "m.mat", mat)
    x, y, z = (float(w) for w in argv[argv.index("-odet_vector") + 1:][:3])
    assert math.sqrt(x * x + y * y + z * z) == 1.0
    dets = [nbnumba.simulate_argv(argv + RENDER + extra + ["-detpixels", "4"],
                                  cwd=str(tmp_path)).model.det for extra in ([], ["-c_parity"])]
    np.testing.assert_allclose(dets[1].pix0, np.array(p["origin"]) * 1e-3, rtol=0, atol=1e-15)
    np.testing.assert_allclose(dets[1].odet, dets[0].odet, rtol=0, atol=1e-15)


def test_a_scan_turning_backwards_is_the_same_sweep_about_the_opposite_axis(tmp_path):
    # nanoBragg reads -osc < 0 as "not given": the old flags rendered a still
    back = _tilted_rotation_case()
    back["scan"][0]["oscillation"] = [28.0, -0.5]
    fwd = copy.deepcopy(back)
    fwd["goniometer"][0]["rotation_axis"] = list(-np.array(back["goniometer"][0]["rotation_axis"]))
    fwd["scan"][0]["oscillation"] = [-28.0, 0.5]
    imgs = []
    for name, d in (("back", back), ("fwd", fwd)):
        argv, mat = flags_from_expt(write(tmp_path, d, name + ".expt"), image=3,
                                    mat_out=name + ".mat")
        write_mat(tmp_path / (name + ".mat"), mat)
        assert argv[argv.index("-osc") + 1] == "0.5"
        assert argv[argv.index("-phi") + 1] == "-27.0"       # image 3 of 28, 27.5, 27, ...
        imgs.append(render(argv, tmp_path))
    assert imgs[0].max() > 0
    np.testing.assert_array_equal(imgs[0], imgs[1])


def test_a_still_gets_no_rotation_flags(tmp_path):
    d = _tilted_rotation_case()
    rows = np.array([d["crystal"][0][k] for k in ("real_space_a", "real_space_b", "real_space_c")])
    del d["goniometer"], d["scan"], d["experiment"][0]["goniometer"], d["experiment"][0]["scan"]
    argv, mat = flags_from_expt(write(tmp_path, d), mat_out="m")
    assert not {"-phi", "-spindle_axis"} & set(argv)
    # no goniometer: the crystal is already in the lab frame
    np.testing.assert_allclose(mat, np.linalg.inv(rows) * 1.0, rtol=0, atol=1e-16)
    # "-osc 0" keeps it a still when -phisteps is added by hand, as the notes
    # ask: nanoBragg turns -phisteps N without -osc into a 1 degree sweep
    assert argv[argv.index("-osc") + 1] == "0"
    write_mat(tmp_path / "m", mat)
    one = render(argv, tmp_path)
    assert one.max() > 0
    np.testing.assert_allclose(render(argv, tmp_path, ["-phisteps", "3"]), one,
                               rtol=1e-12, atol=1e-12 * one.max())


def test_multi_axis_goniometer_folds_the_other_axes(tmp_path):
    d = _tilted_rotation_case()
    omega, kappa, phi = [1.0, 0.0, 0.0], list(unit([0.914, 0.279, -0.297])), [1.0, 0.0, 0.0]
    # a phi scan: kappa and omega (mounted below phi) form the setting rotation
    d["goniometer"] = [{"axes": [phi, kappa, omega], "angles": [0.0, 40.0, -25.0],
                        "names": ["PHI", "KAPPA", "OMEGA"], "scan_axis": 0}]
    argv, mat = flags_from_expt(write(tmp_path, d), mat_out="m")
    S = rot(omega, -25.0) @ rot(kappa, 40.0)
    spindle = [float(x) for x in argv[argv.index("-spindle_axis") + 1:][:3]]
    np.testing.assert_allclose(spindle, S @ phi, atol=1e-15)
    rows = np.array([d["crystal"][0][k] for k in ("real_space_a", "real_space_b", "real_space_c")])
    np.testing.assert_allclose(mat, S @ np.linalg.inv(rows), atol=1e-15)
    # an omega scan: phi and kappa (mounted on omega) form the fixed rotation
    d["goniometer"][0].update(angles=[15.0, 40.0, 0.0], scan_axis=2)
    argv, mat = flags_from_expt(write(tmp_path, d), mat_out="m")
    F = rot(kappa, 40.0) @ rot(phi, 15.0)
    spindle = [float(x) for x in argv[argv.index("-spindle_axis") + 1:][:3]]
    np.testing.assert_allclose(spindle, omega, atol=1e-15)
    np.testing.assert_allclose(mat, F @ np.linalg.inv(rows), atol=1e-15)


# ---------------------------------------------------------------------------
# 3. bad input: one line naming the file and key, exit 2
# ---------------------------------------------------------------------------

def _bad(mutate):
    def f(d):
        mutate(d)
        return d
    return f


BAD = [
    ("missing-wavelength", _bad(lambda d: d["beam"][0].pop("wavelength")), "beam[0]: missing key 'wavelength'"),
    ("short-fast-axis", _bad(lambda d: d["detector"][0]["panels"][0].update(fast_axis=[1.0, 0.0])),
     "detector[0].panels[0].fast_axis: expected a list of 3 numbers"),
    ("nan-origin", _bad(lambda d: d["detector"][0]["panels"][0]["origin"].__setitem__(1, float("nan"))),
     "detector[0].panels[0].origin[1]: non-finite"),
    ("inf-wavelength", _bad(lambda d: d["beam"][0].update(wavelength=float("inf"))),
     "beam[0].wavelength: non-finite"),
    # an integer literal past the largest double (float() raised OverflowError)
    ("huge-int-wavelength", _bad(lambda d: d["beam"][0].update(wavelength=10 ** 400)),
     "beam[0].wavelength: non-finite"),
    ("huge-int-thickness", _bad(lambda d: d["detector"][0]["panels"][0].update(thickness=-10 ** 400)),
     "detector[0].panels[0].thickness: non-finite"),
    ("string-number", _bad(lambda d: d["crystal"][0]["real_space_a"].__setitem__(0, "12")),
     "crystal[0].real_space_a[0]: expected a number"),
    ("non-unit-axis", _bad(lambda d: d["goniometer"][0].update(rotation_axis=[0.0, 2.0, 0.0])),
     "goniometer[0].rotation_axis: not a unit vector"),
    ("zero-direction", _bad(lambda d: d["beam"][0].update(direction=[0.0, 0.0, 0.0])),
     "beam[0].direction: degenerate"),
    ("skew-panel", _bad(lambda d: d["detector"][0]["panels"][0].update(
        slow_axis=list(unit(np.array(d["detector"][0]["panels"][0]["fast_axis"]) + [0, 0, 1.0])))),
     "detector[0].panels[0]: fast_axis and slow_axis are not perpendicular"),
    ("rect-pixels", _bad(lambda d: d["detector"][0]["panels"][0].update(pixel_size=[0.5, 0.4])),
     "detector[0].panels[0].pixel_size: 0.5 x 0.4 mm: nanoBragg models square pixels"),
    ("bad-fixed", _bad(lambda d: d["goniometer"][0].update(fixed_rotation=[1, 0, 0, 0, 1, 0, 0, 0, 2])),
     "goniometer[0].fixed_rotation: not a proper rotation"),
    ("mirror-setting", _bad(lambda d: d["goniometer"][0].update(setting_rotation=[-1, 0, 0, 0, 1, 0, 0, 0, 1])),
     "goniometer[0].setting_rotation: not a proper rotation"),
    ("flat-cell", _bad(lambda d: d["crystal"][0].update(real_space_c=[84.0, 96.0, 0.0],
                                                         real_space_a=[42.0, 0.0, 0.0],
                                                         real_space_b=[0.0, 48.0, 0.0])),
     "crystal[0]: degenerate cell"),
    ("beam-index", _bad(lambda d: d["experiment"][0].update(beam=3)),
     "experiment[0].beam: index 3 out of range"),
    ("no-crystal", _bad(lambda d: d["experiment"][0].pop("crystal")),
     "experiment[0]: missing key 'crystal'"),
    ("scan-shape", _bad(lambda d: d["scan"][0].update(oscillation=[28.0])),
     "scan[0].oscillation: expected a list of 2 numbers"),
    ("props-length", _bad(lambda d: d["scan"][0].update(properties={"oscillation": [1.0, 2.0]})),
     "scan[0].properties.oscillation: expected a list of 50 start angles"),
    # dxtbx refuses unevenly spaced images; the old reader put image N at
    # start + (N - first) * (second - first), whatever the list said
    ("props-uneven", _bad(lambda d: d["scan"][0].update(properties={
        "oscillation": [28.0 + 0.5 * i + (0.25 if i >= 10 else 0.0) for i in range(50)],
        "oscillation_width": [0.5]})),
     "scan[0].properties.oscillation: images not evenly spaced: 0.5 deg from image 1 to 2, "
     "0.75 deg from 10 to 11"),
    ("zero-pixels", _bad(lambda d: d["detector"][0]["panels"][0].update(image_size=[0, 128])),
     "detector[0].panels[0].image_size: pixel counts must be >= 1"),
    ("no-panels", _bad(lambda d: d["detector"][0].update(panels=[])),
     "detector[0].panels: expected a non-empty list"),
    ("hierarchy-missing-panel", _bad(lambda d: d["detector"][0].update(
        hierarchy={"name": "", "children": []})), "detector[0].hierarchy: panel 0 is not in"),
    ("polar-fraction", _bad(lambda d: d["beam"][0].update(polarization_fraction=1.5)),
     "beam[0].polarization_fraction: must be in [0, 1]"),
    # flags nbnumba refuses were printed, exit 0 (tools/fuzz_tools.py expt, seed 201):
    # an edge of 1e308 A, and a -mat value past what the -mat reader takes
    ("huge-cell-edge", _bad(lambda d: d["crystal"][0]["real_space_a"].__setitem__(0, 1e308)),
     "experiment[0]: nbnumba cannot render this geometry: the -mat matrix at a wavelength of "
     "1 A under- or overflows double precision"),
    ("huge-wavelength", _bad(lambda d: d["beam"][0].update(wavelength=1e308)),
     "experiment[0]: nbnumba cannot render this geometry: the crystal's -mat: orientation-matrix "
     "value"),
    ("panel-past-overflow", _bad(lambda d: d["detector"][0]["panels"][0]["origin"].__setitem__(
        0, 1e308)), "experiment[0]: nbnumba cannot render this geometry: "),
]


@pytest.mark.parametrize("label,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_bad_experiment_lists_are_one_line_errors(tmp_path, capsys, label, mutate, message):
    d = mutate(_tilted_rotation_case())
    path = write(tmp_path, d, "bad.expt")
    assert main([str(path), "--mat-out", str(tmp_path / "o.mat")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("nbnumba-expt: error: %s: " % path), err
    assert message in err, err
    assert not (tmp_path / "o.mat").exists()


@pytest.mark.parametrize("text,message", [
    ("{not json", "not a JSON experiment list"),
    ("[1, 2]", "top level is not an object"),
    ('{"__id__": "DataBlock"}', "__id__: expected 'ExperimentList'"),
    ('{"__id__": "ExperimentList"}', "missing key 'experiment'"),
    ("\xff\xfe", "not a JSON experiment list"),
])
def test_files_that_are_not_experiment_lists(tmp_path, capsys, text, message):
    path = tmp_path / "junk.expt"
    path.write_bytes(text.encode("latin-1"))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err, err


@pytest.mark.parametrize("args,message", [
    (["--panel", "1"], "--panel 1 is out of range"),
    (["--panel", "-1"], "--panel -1 is out of range"),
    (["--experiment", "2"], "--experiment 2 is out of range"),
    (["--image", "51"], "--image 51 is outside the scan's image range 1..50"),
    (["--image", "x"], "--image expects an integer"),
    (["--panel"], "--panel needs a value"),
    (["--bogus"], "unknown option '--bogus'"),
    (["--PANEL", "0"], "unknown option '--PANEL' (did you mean --panel?)"),
    (["--mat_out", "x.mat"], "unknown option '--mat_out' (did you mean --mat-out?)"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    path = write(tmp_path, _tilted_rotation_case())
    assert main([str(path)] + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_mat_file_named_like_a_flag_is_still_a_file(tmp_path, capsys, monkeypatch):
    # "-mat -m.mat" was refused by nbnumba ("-mat: expected a file name")
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, _tilted_rotation_case())
    assert main([str(path), "--mat-out=-m.mat"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[argv.index("-mat") + 1] == "./-m.mat"
    assert (tmp_path / "-m.mat").exists()
    cfg = nbnumba.parse_argv(argv + RENDER, cwd=str(tmp_path))
    assert cfg.matfilename == "./-m.mat"


def test_missing_file_and_mat_out_onto_the_input(tmp_path, capsys):
    assert main([str(tmp_path / "nope.expt")]) == 2
    assert "nope.expt: cannot read" in capsys.readouterr().err
    path = write(tmp_path, _tilted_rotation_case())
    before = path.read_bytes()
    assert main([str(path), "--mat-out", str(path)]) == 2
    assert "--mat-out" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_script_entry_point_is_declared():
    import tomllib
    from pathlib import Path
    conf = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert conf["project"]["scripts"]["nbnumba-expt"] == "nbnumba.expt:main"


# ---------------------------------------------------------------------------
# 4. the other direction: the ground truth of a simulation (expt_from_flags)
# ---------------------------------------------------------------------------

CELL = ["-cell", "40", "50", "60", "88", "95", "100", "-lambda", "1.1", "-pixel", "0.2",
        "-detpixels", "48", "-distance", "80"]
MISSET = ["-misset", "10", "20", "30"]
_b = unit([0.05, -0.03, 1.0])
_f = unit(np.cross([0.0, 1.0, 0.1], _b))
_s = np.cross(_b, _f)                         # f x s = b: the panel faces the sample
_vec = lambda v: [repr(float(x)) for x in v]  # noqa: E731
CUSTOM = (["-beam_vector", *_vec(_b), "-fdet_vector", *_vec(_f), "-sdet_vector", *_vec(_s),
           "-odet_vector", *_vec(_b), "-pix0_vector_mm", *_vec(75.0 * _b - 4.1 * _f - 5.3 * _s),
           "-spindle_axis", *_vec(unit([1.0, 0.2, -0.1])),
           "-polar_vector", *_vec(_f), "-polar", "0.6"])
#: how finely the run is sampled is not part of an experiment list: both renders get it
SAMPLING = {"custom-vectors": ["-phisteps", "3"]}

ROUND_TRIPS = {
    "mosflm-rotation": CELL + MISSET + ["-mosflm", "-phi", "3", "-osc", "0.5"],
    "xds-twotheta": CELL + MISSET + ["-xds", "-twotheta", "10", "-phi", "-20", "-osc", "1"],
    "still-dials-rotated-sensor": CELL + MISSET + [
        "-dials", "-detector_rotx", "5", "-detector_roty", "-3", "-detector_rotz", "2",
        "-polar", "0.8", "-detector_thick", "300", "-detector_abs", "400"],
    "still-mosflm-beam-centre": CELL + MISSET + ["-mosflm", "-Xbeam", "4", "-Ybeam", "5.5",
                                           "-twotheta", "-7", "-detector_rotz", "4"],
    "custom-vectors": CELL + MISSET + CUSTOM + ["-phi", "40", "-osc", "0.25"],
    # ADXV's panel is left-handed (fast x slow points away from the sample)
    "mat-file-adxv": ["-mat", "in.mat", "-lambda", "1.1", "-pixel", "0.2", "-detpixels", "48",
                 "-distance", "80", "-adxv", "-phi", "5", "-osc", "0.4"],
    "still-at-phi": CELL + MISSET + ["-mosflm", "-phi", "17"],
}


def _truth_round_trip(tmp_path, flags):
    """flags -> expt_from_flags -> written .expt -> flags_from_expt -> flags."""
    write_mat(tmp_path / "in.mat",
              1.1 * np.linalg.inv(cell_rows(38.0, 45.0, 52.0, 91.0, 84.0, 97.0)
                                  @ rot([1, -2, 0.5], 33.0).T))
    notes = []
    d = expt_from_flags(flags, cwd=str(tmp_path), notes=notes)
    write_expt(tmp_path / "truth.expt", d)
    argv, mat = flags_from_expt(tmp_path / "truth.expt", mat_out="truth.mat")
    write_mat(tmp_path / "truth.mat", mat)
    return d, argv, notes


@pytest.mark.parametrize("label", list(ROUND_TRIPS))
def test_ground_truth_round_trips_to_the_same_image(tmp_path, label):
    flags = ROUND_TRIPS[label]
    d, argv, notes = _truth_round_trip(tmp_path, flags)
    still = label.startswith("still")
    assert bool(d["scan"]) is not still and bool(d["goniometer"]) is not still
    a = render(flags, tmp_path, SAMPLING.get(label, []))
    c = render(argv, tmp_path, SAMPLING.get(label, []))
    assert a.max() > 0 and np.count_nonzero(a > 1e-3 * a.max()) > 20
    np.testing.assert_allclose(c, a, rtol=1e-12, atol=1e-12 * a.max())
    # the crystal written is the cell nbnumba renders at phi = 0 (a still's at its
    # -phi); a rotation's scan starts at -phi, and its first point lies a half
    # step into it (docs/quirks.md #28)
    model = nbnumba.simulate_argv(flags + RENDER + SAMPLING.get(label, []), cwd=str(tmp_path)).model
    rows = np.array([d["crystal"][0][k] for k in ("real_space_a", "real_space_b", "real_space_c")])
    if still:
        np.testing.assert_allclose(rows * 1e-10, model.cells[0, 0, 0], rtol=0, atol=1e-24)
    else:
        phi0 = d["scan"][0]["properties"]["oscillation"][0]
        e = d["goniometer"][0]["rotation_axis"]
        first = phi0 + math.degrees(model.steps.phi_offset)
        assert math.radians(first) == pytest.approx(float(model.phis[0]), abs=1e-15)
        np.testing.assert_allclose(rows @ rot(e, first).T * 1e-10, model.cells[0, 0, 0],
                                   rtol=0, atol=1e-24)
        assert phi0 == pytest.approx(float(flags[flags.index("-phi") + 1]), abs=1e-12)
    if label == "still-dials-rotated-sensor":
        p = d["detector"][0]["panels"][0]
        assert p["thickness"] == pytest.approx(0.3) and p["mu"] == pytest.approx(2.5)
        assert d["beam"][0]["polarization_fraction"] == pytest.approx(0.9)


def test_ground_truth_json_has_dxtbx_layout(tmp_path):
    flags = ROUND_TRIPS["custom-vectors"]
    d = expt_from_flags(flags + ["-default_F", "1"], image="img_####.cbf")
    text = json.loads(json.dumps(d))             # plain JSON, nothing numpy left
    assert text == d
    assert d["__id__"] == "ExperimentList"
    exp, = d["experiment"]
    assert exp["__id__"] == "Experiment"
    for name in ("beam", "detector", "goniometer", "scan", "crystal", "imageset"):
        assert type(exp[name]) is int and exp[name] == 0 and len(d[name]) == 1
    assert d["imageset"][0]["__id__"] == "ImageSequence"
    assert d["imageset"][0]["template"] == "img_####.cbf"
    assert d["crystal"][0]["space_group_hall_symbol"] == " P 1"
    assert "mosaicity" not in d["crystal"][0]
    panel = d["detector"][0]["panels"][0]
    np.testing.assert_allclose(panel["fast_axis"], _f, atol=1e-15)
    np.testing.assert_allclose(panel["origin"], 75.0 * _b - 4.1 * _f - 5.3 * _s, atol=1e-12)
    assert panel["image_size"] == [48, 48] and panel["pixel_size"] == [0.2, 0.2]
    assert d["detector"][0]["hierarchy"]["children"] == [{"panel": 0}]
    np.testing.assert_allclose(d["beam"][0]["direction"], -_b, atol=1e-15)
    assert d["beam"][0]["wavelength"] == pytest.approx(1.1, rel=1e-15)
    # -polar_vector E = fast: the polarization normal is beam x E = slow
    np.testing.assert_allclose(d["beam"][0]["polarization_normal"], _s, atol=1e-15)
    assert d["beam"][0]["polarization_fraction"] == pytest.approx(0.8)
    assert d["scan"][0]["properties"]["oscillation_width"] == [pytest.approx(0.25)]
    # a still names its image files in an ImageSet; none: no imageset at all
    still = expt_from_flags(CELL + ["-default_F", "1"], image=["a.img", "b.img"])
    assert still["imageset"] == [dict(still["imageset"][0], __id__="ImageSet",
                                      images=["a.img", "b.img"])]
    bare = expt_from_flags(CELL + ["-default_F", "1"])
    assert bare["imageset"] == [] and "imageset" not in bare["experiment"][0]
    assert bare["goniometer"] == [] and bare["scan"] == []


def test_ground_truth_crystal_predicts_the_rendered_spots(tmp_path):
    # a still with a turned crystal, a tilted panel and a two-theta arm
    flags = ["-cell", "42", "48", "55", "88", "95", "92", "-misset", "20", "35", "-10",
             "-lambda", "1.0", "-distance", "120", "-detpixels", "128", "-pixel", "0.5",
             "-xds", "-twotheta", "8", "-detector_rotx", "3", "-phi", "12"]
    out = tmp_path / "truth.expt"
    assert main(["--from-flags", "-o", str(out), "--"] + flags + ["-default_F", "1"]) == 0
    d = json.loads(out.read_text())
    img = render(flags, tmp_path)
    spots = _predict(d, 0.0)
    assert len(spots) >= 5, len(spots)
    hits = _found(img, spots)
    assert all(hits), [sp[3] for sp, h in zip(spots, hits) if not h]
    # control: the crystal before its -phi turn predicts spots that are not there
    unturned = json.loads(json.dumps(d))
    e = [1.0, 0.0, 0.0]                          # XDS's spindle axis
    for k in ("real_space_a", "real_space_b", "real_space_c"):
        unturned["crystal"][0][k] = list(rot(e, -12.0) @ d["crystal"][0][k])
    wrong = _predict(unturned, 0.0)
    assert len(wrong) >= 5 and sum(_found(img, wrong)) <= len(wrong) // 3


def test_no_usable_temporary_directory_is_one_line(tmp_path, capsys, monkeypatch):
    """Both directions check their output through scratch files in a temporary
    folder: with no usable temporary directory (a read-only root file system)
    gettempdir's FileNotFoundError was a traceback (exit 1); now one line
    saying to set TMPDIR, exit 2, nothing written."""
    import tempfile
    monkeypatch.chdir(tmp_path)
    base = CELL + ["-default_F", "1"]
    assert main(["--from-flags", "-o", "ok.expt", "--"] + base) == 0
    capsys.readouterr()

    def nowhere():
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp']")
    monkeypatch.setattr(tempfile, "gettempdir", nowhere)
    for argv in (["--from-flags", "-o", "n.expt", "--"] + base, ["ok.expt", "--mat-out", "n.mat"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "set TMPDIR to a writable directory" in err, err
        assert "No usable temporary directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.expt"]


def test_ground_truth_notes_and_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = CELL + ["-default_F", "1"]
    # what an experiment list cannot hold: one note each on stderr
    assert main(["--from-flags", "-o", "n.expt", "--"] + base
                + ["-mosaic", "0.5", "-mosaic_dom", "4", "-roi", "0", "20", "0", "20",
                   "-dispersion", "2", "-dispsteps", "3"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert any("mosaic spread 0.5 deg in 4 domains" in x for x in lines)
    assert any("-roi 0 20 0 20" in x for x in lines)
    assert any("3 sources" in x for x in lines)
    assert json.loads((tmp_path / "n.expt").read_text())["__id__"] == "ExperimentList"
    # a curved detector is refused, nothing written
    assert main(["--from-flags", "-o", "c.expt", "--"] + base + ["-curved_det"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-curved_det" in err and "Traceback" not in err
    assert not (tmp_path / "c.expt").exists()
    with pytest.raises(nbnumba.ConfigError, match="curved"):
        expt_from_flags(base + ["-curved_det"])
    # an output that cannot be written, or that is an input of the run
    assert main(["--from-flags", "-o", "no/such/dir/t.expt", "--"] + base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write -o" in err
    write_mat(tmp_path / "in.mat", 1.1 * np.linalg.inv(cell_rows(40, 50, 60, 90, 90, 90)))
    before = (tmp_path / "in.mat").read_bytes()
    flags = ["-mat", "in.mat", "-lambda", "1.1", "-default_F", "1", "-detpixels", "48"]
    assert main(["--from-flags", "-o", "in.mat", "--"] + flags) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to write -o 'in.mat'" in err
    assert (tmp_path / "in.mat").read_bytes() == before
    # usage: the flags go after '--', -o is required
    assert main(["--from-flags", "-o", "x.expt"] + base) == 2
    assert "after '--'" in capsys.readouterr().err
    assert main(["--from-flags", "--"] + base) == 2
    assert "-o OUT.expt" in capsys.readouterr().err
    # '-o -' wrote a file named '-' (not standard output), '-o --hall' one named '--hall'
    for bad, why in (("-", "-o: expected a file name, got '-' (write ./- for a file of that name)"),
                     ("--hall", "-o: expected a file name, got '--hall' (write ./--hall for a file"),
                     ("--images=a.img", "-o: expected a file name, got '--images=a.img'")):
        assert main(["--from-flags", "-o", bad, "--"] + base) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and why in err, err
    assert main(["--from-flags", "--out=", "--"] + base) == 2
    assert "--out: expected a file name, got ''\n" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mat", "n.expt"]


def test_a_panel_whose_plane_holds_the_sample_is_refused(tmp_path, capsys):
    # tools/fuzz_tools.py expt, seed 201: origin.x 100 -> 0 (the panel's normal is x) printed
    # "-distance 0", which nbnumba refuses, exit 0
    d = expt_from_flags(CELL + ["-default_F", "1", "-phi", "10", "-osc", "0.5"])
    d["detector"][0]["panels"][0]["origin"][0] = 0.0
    path = write(tmp_path, d, "p.expt")
    assert main([str(path), "--mat-out", str(tmp_path / "o.mat")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("nbnumba-expt: error: %s: detector[0].panels[0].origin: the "
                                 "panel's plane passes through the sample (distance 0 along the "
                                 "beam)\n" % path)
    assert not (tmp_path / "o.mat").exists()


@pytest.mark.parametrize("extra, message", [
    # -polar 90 wrote polarization_fraction 45.5, which nbnumba-expt (and dxtbx) refuse
    (["-polar", "90"], "-polar 90: a Kahn factor outside [-1, 1]"),
    (["-polar", "-1.5"], "-polar -1.5: a Kahn factor outside [-1, 1]"),
    # skewed detector axes (nbnumba renders them) wrote a panel nbnumba-expt refuses
    (["-fdet_vector", "0.5", "10", "45"], "-fdet_vector and -sdet_vector are not perpendicular"),
    # the written list is read back: an -fdet_vector along the beam (nbnumba rendered it)
    # and -lambda 1e308 wrote lists nbnumba-expt refused (seed 201, after the fixes above)
    (["-fdet_vector", "45", "0", "0"], "the experiment list of these flags does not read back: "
     "experiment[0]: nbnumba cannot render this geometry: the detector faces away"),
    (["-lambda", "1e308"], "the experiment list of these flags does not read back: experiment[0]: "
     "nbnumba cannot render this geometry: the crystal's -mat: orientation-matrix value"),
    # pix0 * 1000 overflowed with a numpy RuntimeWarning printed before the error line
    (["-c_parity", "-pix0_vector", "45", "1e308", "3"],
     "the geometry over- or underflows double precision: no experiment list"),
])
def test_ground_truth_refuses_what_no_reader_takes_back(tmp_path, capsys, monkeypatch, extra,
                                                         message):
    # tools/fuzz_tools.py expt, seed 201: --from-flags wrote lists nbnumba-expt refused
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # (a numpy warning is a failure)
        assert main(["--from-flags", "-o", "t.expt", "--"] + CELL + ["-default_F", "1"] + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nbnumba-expt: error: " + message), err
    assert not (tmp_path / "t.expt").exists()
    # the limits themselves still write a list that reads back
    for ok in (["-polar", "1"], ["-polar", "-1"]):
        assert main(["--from-flags", "-o", "t.expt", "--"] + CELL + ["-default_F", "1"] + ok) == 0
        flags_from_expt(tmp_path / "t.expt")


def test_an_auto_oversample_after_twotheta_round_trips(tmp_path):
    # nanoBragg.c takes the beam/normal ratio of its distance before -twotheta
    # turns the panel (61.28 mm here, the beam's path is 80 mm) and sizes the
    # automatic -oversample from it (6, where the path gives 5); flags made from
    # the list give the path.  The default mode takes the path too
    # (docs/quirks.md #31): no note, the same sampling, the same image
    flags = CELL + MISSET + ["-mosflm", "-twotheta", "40", "-N", "10"]
    assert build_model(nbnumba.parse_argv(flags + RENDER + ["-c_parity"])).oversample == 6
    assert build_model(nbnumba.parse_argv(flags + RENDER)).oversample == 5
    notes = []
    d = expt_from_flags(flags, notes=notes)
    assert notes == []
    write_expt(tmp_path / "t.expt", d)
    argv, mat = flags_from_expt(tmp_path / "t.expt", mat_out="t.mat")
    write_mat(tmp_path / "t.mat", mat)
    a = render(flags, tmp_path)
    assert a.max() > 0
    np.testing.assert_allclose(render(argv, tmp_path), a, rtol=1e-12, atol=1e-12 * a.max())
    # without -twotheta both pick the same sampling: no note
    notes = []
    expt_from_flags(CELL + MISSET + ["-mosflm", "-N", "10"], notes=notes)
    assert notes == []


def test_api_arguments_of_the_wrong_kind_are_one_line_nberrors(tmp_path, monkeypatch):
    """translate / expt_from_flags / write_mat / write_expt given arguments of the
    wrong kind (an ad-hoc scan): each was a TypeError, ValueError or OverflowError
    from list(), json, numpy or open(); True was experiment 1.  Nothing is written."""
    from nbnumba.expt import translate
    monkeypatch.chdir(tmp_path)
    base = CELL + ["-default_F", "1", "-osc", "0.5"]
    d = expt_from_flags(base)
    write_expt("a.expt", d)
    before = sorted(p.name for p in tmp_path.iterdir())
    for call, msg in [
            (lambda: translate("a.expt", experiment=True), "^experiment: expected a whole number, got True$"),
            (lambda: translate("a.expt", panel=np.ones((3, 3))), "^panel: expected a whole number, got array"),
            (lambda: translate("a.expt", image=[1]), r"^image: expected a whole number, got \[1\]$"),
            (lambda: translate("a.expt", mat_out={"a": 1}), "^mat_out must be a file name .* not dict$"),
            (lambda: translate("a\x00b"), "^path 'a\\\\x00b' holds a NUL byte"),
            (lambda: expt_from_flags(base, image=3), "^--images: expected a file name or template .*got 3$"),
            (lambda: expt_from_flags(base, image=["x.img", b"y"]), "^--images: .*got b'y'$"),
            (lambda: expt_from_flags(base, notes="P 1"), "^notes: expected a list .* got str$"),
            (lambda: write_mat("m.mat", []), r"^mat: expected a 3x3 array of finite numbers, got shape \(0,\)$"),
            (lambda: write_mat("m.mat", np.full((3, 3), np.inf)), "^mat: .*got a value inf$"),
            (lambda: write_mat("m.mat", [[10 ** 400] * 3] * 3), "^mat: expected a 3x3 array of numbers"),
            (lambda: write_mat("m\x00.mat", np.eye(3)), "holds a NUL byte"),
            (lambda: write_expt("o.expt", [d]), "^d: expected an experiment list .* got list$"),
            (lambda: write_expt("o.expt", {"x": np.float32(1.5)}), "^d: cannot be written as JSON: .*float32"),
            (lambda: write_expt("o.expt", {"x": float("inf")}), "^d: cannot be written as JSON: .*inf")]:
        with pytest.raises(nbnumba.NBError, match=msg):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # numpy integers and a path-like mat_out are taken as they are
    argv, mat, _ = translate("a.expt", experiment=np.int64(0), panel=np.int32(0),
                             mat_out=tmp_path / "b.mat")
    assert argv[argv.index("-mat") + 1] == str(tmp_path / "b.mat")
