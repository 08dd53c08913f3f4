"""darkroom.sim: determinism, headers, and self-consistency of the simulated night with its truth."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from pydantic import ValidationError

from darkroom.sim import (
    PointingJump,
    SimConfig,
    TransitConfig,
    build_scene,
    light_electrons,
    load_truth,
    make_star_catalog,
    moffat_psf,
    render_frame,
    simulate_night,
    solve_transit,
    transit_model,
    truth_image,
    variable_star,
)

# A small night that still has every ingredient: 512 x 512, a high cosmic-ray rate so every
# exposure has hits, and enough bright stars for photometry.
SMALL = SimConfig(
    seed=7,
    shape=(512, 512),
    n_bias=3,
    n_dark=3,
    n_flat=3,
    n_science=4,
    n_stars=200,
    r_mag_range=(10.0, 19.0),
    n_hot_pixels=40,
    cosmic_ray_rate_cm2_s=1.0,
)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_night(tmp_path_factory.mktemp("night"), SMALL)


def _calibrated(night, index: int) -> np.ndarray:
    """(raw - bias - dark) / flat with the truth calibration [adu]."""
    c = night.config
    det = night.truth.detector
    raw = fits.getdata(night.raw_paths["light"][index]).astype(np.float64)
    return (raw - det.bias_adu - det.dark_current_e_s * c.exptime_s / c.gain_e_per_adu) / det.flat


def _variance_adu2(night, truth_adu: np.ndarray) -> np.ndarray:
    """Variance of a calibrated pixel [adu^2]: Poisson + read noise + quantisation, through the flat."""
    c = night.config
    flat = night.truth.detector.flat
    g = c.gain_e_per_adu
    return (truth_adu * flat / g + (c.read_noise_e / g) ** 2 + 1.0 / 12.0) / flat**2


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _isolated(stars: Table, shape: tuple[int, int], *, radius: float, border: float) -> np.ndarray:
    """Unsaturated stars away from the edges with no neighbour above 0.5 % of their flux within
    ``radius`` and none more than 5 times brighter within ``2 radius``."""
    x, y, f = np.asarray(stars["x"]), np.asarray(stars["y"]), np.asarray(stars["flux_e"])
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(d, np.inf)
    crowded = ((d < radius) & (f[None, :] > 5e-3 * f[:, None])) | (
        (d < 2 * radius) & (f[None, :] > 5 * f[:, None])
    )
    ny, nx = shape
    inside = (x > border) & (x < nx - 1 - border) & (y > border) & (y < ny - 1 - border)
    return inside & ~crowded.any(axis=1) & ~np.asarray(stars["saturated"])


# ------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    cfg = SimConfig(seed=3, shape=(96, 128), n_bias=1, n_dark=1, n_flat=1, n_science=2, n_stars=40)
    a = simulate_night(tmp_path / "a", cfg)
    b = simulate_night(tmp_path / "b", cfg)
    c = simulate_night(tmp_path / "c", cfg.model_copy(update={"seed": 4}))
    da, db, dc = _digest(a.out_dir), _digest(b.out_dir), _digest(c.out_dir)
    assert len(da) > 15 and da == db
    raw_a = {k: v for k, v in da.items() if k.startswith("raw/")}
    raw_c = {k: v for k, v in dc.items() if k.startswith("raw/")}
    assert len(raw_a) == 5
    # names can coincide (same schedule) but no raw frame has the same bytes
    assert not set(raw_a.values()) & set(raw_c.values())


def test_render_frame_alone_equals_the_file_of_the_night(night):
    raw, truth = render_frame(SMALL, kind="light", index=2)
    path = night.raw_paths["light"][2]
    assert path.name == truth.spec.filename
    np.testing.assert_array_equal(raw, fits.getdata(path))
    raw_d, _ = render_frame(night.scene, kind="dark", index=1)
    np.testing.assert_array_equal(raw_d, fits.getdata(night.raw_paths["dark"][1]))
    # truth_image from the config alone equals the one from the night
    np.testing.assert_array_equal(truth_image(SMALL, 1), truth_image(night, 1))


# ------------------------------------------------------------------------------------------
# headers and files

REQUIRED = [
    "TELESCOP",
    "INSTRUME",
    "SWCREATE",
    "IMAGETYP",
    "EXPTIME",
    "EXPOSURE",
    "DATE-OBS",
    "XBINNING",
    "YBINNING",
    "CCD-TEMP",
    "SET-TEMP",
    "OBJECT",
    "OBJCTRA",
    "OBJCTDEC",
    "SITELAT",
    "SITELONG",
    "LAT-OBS",
    "LONG-OBS",
    "ALT-OBS",
    "FOCALLEN",
    "XPIXSZ",
    "EGAIN",
    "RDNOISE",
    "SATURATE",
]


def test_headers_are_maxim_like(night):
    names = {
        "bias": r"Bias_BIN1_\d{8}_\d{6}\.fits",
        "dark": r"Dark_BIN1_\d{8}_\d{6}\.fits",
        "flat": r"Flat_r_\d{8}_\d{6}\.fits",
        "light": r"SIM-1b_r_\d{8}_\d{6}\.fits",
    }
    for kind, paths in night.raw_paths.items():
        assert len(paths) == {"bias": 3, "dark": 3, "flat": 3, "light": 4}[kind]
        for path in paths:
            assert re.fullmatch(names[kind], path.name), path.name
            with fits.open(path, do_not_scale_image_data=True) as hdul:
                h = hdul[0].header
                assert hdul[0].data.dtype == np.dtype(">i2")
            assert h["BITPIX"] == 16 and h["BZERO"] == 32768
            missing = [k for k in REQUIRED if k not in h]
            assert not missing, f"{path.name} lacks {missing}"
            assert h["IMAGETYP"] == kind.upper()
            assert h["TELESCOP"] == "darkroom-sim" and h["INSTRUME"] == "simcam"
            assert h["SWCREATE"] == "MaxIm DL Version 6.50 (darkroom sim)"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}", h["DATE-OBS"])
            stamp = datetime.fromisoformat(h["DATE-OBS"]).strftime("%Y%m%d_%H%M%S")
            assert path.name.endswith(stamp + ".fits")
            assert re.fullmatch(r"\d\d \d\d \d\d\.\d\d", h["OBJCTRA"])
            assert re.fullmatch(r"[+-]\d\d \d\d \d\d\.\d", h["OBJCTDEC"])
            assert h["SITELAT"] == "32 46 49" and h["SITELONG"] == "-105 49 13"
            assert h["EGAIN"] == 1.3 and h["RDNOISE"] == 12.0 and h["SATURATE"] == 60000.0
            assert math.isclose(h["FOCALLEN"] * 1e3 / h["XPIXSZ"], 206264.8 / 0.67, rel_tol=1e-4)
            if kind in ("flat", "light"):
                assert h["FILTER"] == "r"
            if kind == "light":
                assert h["AIRMASS"] >= 1.0 and h["AIRMASS"] < 1.3
                assert h["EXPTIME"] == 60.0
                assert "CTYPE1" not in h  # no WCS by default
    # the header pointing is within the configured error of the true centre
    h = fits.getheader(night.raw_paths["light"][0])
    ra_h = 15 * sum(float(v) / 60**i for i, v in enumerate(h["OBJCTRA"].split()))
    dec_parts = h["OBJCTDEC"].split()
    dec_h = math.copysign(sum(abs(float(v)) / 60**i for i, v in enumerate(dec_parts)), float(dec_parts[0]))
    ra_t, dec_t = night.scene.light_centre_sky(0)
    offset = math.hypot((ra_h - ra_t) * math.cos(math.radians(dec_t)), dec_h - dec_t) * 3600
    assert abs(offset - SMALL.header_pointing_error_arcsec) < 0.3


@pytest.mark.filterwarnings("ignore:'datfix' made the change:astropy.wcs.FITSFixedWarning")
def test_header_wcs_options(tmp_path):
    base = SimConfig(seed=2, shape=(128, 128), n_bias=0, n_dark=0, n_flat=0, n_science=1, n_stars=30)
    truth_night = simulate_night(tmp_path / "t", base.model_copy(update={"header_wcs": "truth"}))
    h = fits.getheader(truth_night.raw_paths["light"][0])
    assert h["CTYPE1"] == "RA---TAN-SIP" and h["A_ORDER"] == 3
    w_hdr, w_truth = WCS(h), truth_night.truth.light_wcs(0)
    xy = np.array([[0.0, 0.0], [127.0, 127.0], [40.0, 90.0]])
    np.testing.assert_allclose(w_hdr.all_pix2world(xy, 0), w_truth.all_pix2world(xy, 0), atol=1e-10)

    pert = simulate_night(tmp_path / "p", base.model_copy(update={"header_wcs": "perturbed"}))
    h = fits.getheader(pert.raw_paths["light"][0])
    assert h["CTYPE1"] == "RA---TAN"
    t = pert.truth.light_wcs_headers[0]
    shift = math.hypot(
        (h["CRVAL1"] - t["CRVAL1"]) * math.cos(math.radians(t["CRVAL2"])), h["CRVAL2"] - t["CRVAL2"]
    )
    assert shift * 3600 == pytest.approx(base.perturbed_wcs_shift_arcsec, abs=0.01)


def test_truth_files_round_trip(night):
    loaded = load_truth(night.truth_dir)
    mem = night.truth
    assert loaded.config == SMALL
    assert loaded.summary == mem.summary
    assert len(loaded.catalog) == len(mem.catalog)
    np.testing.assert_array_equal(loaded.catalog["ra_deg"], mem.catalog["ra_deg"])
    for a, b in zip(loaded.light_stars, mem.light_stars, strict=True):
        for col in ("id", "x", "y", "flux_e", "flux_adu", "saturated"):
            np.testing.assert_array_equal(a[col], b[col])
    assert loaded.cr_masks.keys() == mem.cr_masks.keys()
    for name, mask in mem.cr_masks.items():
        np.testing.assert_array_equal(loaded.cr_masks[name], mask)
    for attr in ("bias_adu", "dark_current_e_s", "flat"):
        np.testing.assert_array_equal(getattr(loaded.detector, attr), getattr(mem.detector, attr))
    assert loaded.detector.bad_columns == mem.detector.bad_columns == SMALL.bad_columns_x
    np.testing.assert_array_equal(loaded.lightcurve["host_rel_flux"], mem.lightcurve["host_rel_flux"])
    ref = Table.read(night.refcat_path)
    assert {"ra_deg", "dec_deg", "g_mag", "r_mag"} <= set(ref.colnames)
    assert np.all(ref["r_mag"] <= SMALL.refcat_mag_limit)


# ------------------------------------------------------------------------------------------
# self-consistency of pixels and truth


def test_calibrated_frame_matches_truth_image_within_the_noise(night):
    cal = _calibrated(night, 1)
    truth = truth_image(night, 1)
    det = night.truth.detector
    raw = fits.getdata(night.raw_paths["light"][1])
    cr = night.truth.cr_masks[night.raw_paths["light"][1].name]
    good = ~cr & ~det.bad_pixel_mask() & (raw < SMALL.saturation_adu)
    z = (cal - truth)[good] / np.sqrt(_variance_adu2(night, truth)[good])
    assert abs(z.mean()) < 0.01
    assert abs(z.std() - 1.0) < 0.02
    # the sky level is what the config says: sky_e_s * t / gain at the centre
    assert np.median(truth) == pytest.approx(SMALL.sky_e_s * SMALL.exptime_s / SMALL.gain_e_per_adu, rel=0.02)


# A sparse field of bright stars for aperture photometry (many isolated stars).
PHOT = SimConfig(
    seed=7, shape=(512, 512), n_bias=0, n_dark=0, n_flat=0, n_science=3, n_stars=100, r_mag_range=(11.0, 18.0)
)


def test_aperture_flux_of_isolated_stars_matches_truth():
    """sep.sum_circle (r = 15 px, local annulus) on truth-calibrated frames finds the truth fluxes."""
    c = PHOT
    scene = build_scene(c)
    det = scene.detector
    g = c.gain_e_per_adu
    measured, expected, errors, zp = [], [], [], []
    for i in range(c.n_science):
        raw, ftruth = render_frame(scene, kind="light", index=i)
        cal = (raw - det.bias_adu - det.dark_current_e_s * c.exptime_s / g) / det.flat
        truth = truth_image(scene, i)
        var = (truth * det.flat / g + (c.read_noise_e / g) ** 2 + 1.0 / 12.0) / det.flat**2
        stars = ftruth.stars
        iso = _isolated(stars, c.shape, radius=34.0, border=30.0)
        cr_y, cr_x = np.nonzero(ftruth.cr_mask(c.shape))
        if len(cr_x):  # no cosmic ray inside the aperture or the background annulus
            dist = np.hypot(stars["x"][:, None] - cr_x[None, :], stars["y"][:, None] - cr_y[None, :])
            iso &= dist.min(axis=1) > 27
        sel = np.flatnonzero(iso)
        x, y = np.asarray(stars["x"])[sel], np.asarray(stars["y"])[sel]
        flux, ferr, _ = sep.sum_circle(
            np.ascontiguousarray(cal, dtype=np.float64), x, y, 15.0, bkgann=(20.0, 26.0), err=np.sqrt(var)
        )
        measured.append(flux)
        expected.append(np.asarray(stars["flux_adu"])[sel])
        errors.append(ferr)
        # photometric model: r - r_inst = zp - k X + c (g - r)
        ids = np.asarray(stars["id"])[sel]
        r_inst = -2.5 * np.log10(flux * g / c.exptime_s)
        cat = scene.catalog
        zp.append(
            np.asarray(cat["r_mag"])[ids]
            - r_inst
            + c.extinction_mag_per_airmass * scene.science.airmass[i]
            - c.colour_term * np.asarray(cat["g_r"])[ids]
        )
    flux, truth_flux, ferr = np.concatenate(measured), np.concatenate(expected), np.concatenate(errors)
    assert len(flux) >= 25
    brightest = int(np.argmax(truth_flux))
    assert truth_flux[brightest] > 5e4
    assert abs(flux[brightest] - truth_flux[brightest]) < 3 * ferr[brightest]
    pulls = (flux - truth_flux) / ferr
    assert np.all(np.abs(pulls) < 4.0)
    assert abs(np.mean(pulls)) < 3 / math.sqrt(len(pulls))
    assert 0.6 < np.std(pulls) < 1.4
    # the sum of many stars
    assert abs(np.sum(flux - truth_flux)) < 3 * math.sqrt(np.sum(ferr**2))
    zps = np.concatenate(zp)
    w = (flux / ferr) ** 2
    assert np.average(zps, weights=w) == pytest.approx(c.zero_point_mag, abs=0.005)


def test_wcs_truth_maps_refcat_to_truth_positions(night):
    ref = Table.read(night.refcat_path)
    for i, path in enumerate(night.raw_paths["light"]):
        hdr = fits.getheader(night.truth_dir / "wcs" / path.name.replace(".fits", ".wcs.fits"))
        del hdr["NAXIS"]  # a header-only file; keeps astropy from warning about 0 image axes
        wcs = WCS(hdr)
        assert wcs.sip is not None
        stars = night.truth.light_stars[i]
        pos = {
            int(s): (float(x), float(y)) for s, x, y in zip(stars["id"], stars["x"], stars["y"], strict=True)
        }
        common = [k for k, s in enumerate(ref["source_id"]) if int(s) in pos]
        assert len(common) > 100
        x, y = wcs.all_world2pix(ref["ra_deg"][common], ref["dec_deg"][common], 0, tolerance=1e-8)
        tx = np.array([pos[int(ref["source_id"][k])][0] for k in common])
        ty = np.array([pos[int(ref["source_id"][k])][1] for k in common])
        assert np.max(np.hypot(x - tx, y - ty)) < 0.01
    # the distortion is real: TAN alone is off by ~ sip_amplitude_pix in a corner
    tan = WCS(night.truth.light_wcs_headers[0])
    tan.sip = None
    corner_sky = night.truth.light_wcs(0).all_pix2world([[0.0, 0.0]], 0)
    xt, yt = tan.wcs_world2pix(corner_sky, 0)[0]
    assert 0.5 < math.hypot(xt, yt) < 3.0


def test_pointing_drifts_and_jumps():
    cfg = SimConfig(
        seed=5,
        shape=(64, 64),
        n_bias=0,
        n_dark=0,
        n_flat=0,
        n_science=6,
        cadence_s=600.0,
        jitter_pix=0.0,
        drift_pix_per_h=(6.0, -3.0),
        jumps=(PointingJump(frame_index=4, dx_pix=10.0, dy_pix=5.0),),
        n_stars=20,
        sip_amplitude_pix=0.0,  # the distortion is fixed to the detector: with it, shifts vary across the field
    )
    scene = build_scene(cfg)
    sci = scene.science
    np.testing.assert_allclose(
        sci.shift_x_pix[:4], 6.0 * np.arange(4) / 6.0, atol=2e-3
    )  # start times carry ms jitter
    np.testing.assert_allclose(sci.shift_x_pix[4:], 6.0 * np.arange(4, 6) / 6.0 + 10.0, atol=2e-3)
    np.testing.assert_allclose(sci.shift_y_pix[4:], -3.0 * np.arange(4, 6) / 6.0 + 5.0, atol=2e-3)
    _, s0 = light_electrons(scene, 0)
    _, s5 = light_electrons(scene, 5)
    host0 = s0[s0["id"] == scene.host_id]
    host5 = s5[s5["id"] == scene.host_id]
    assert float(host5["x"][0] - host0["x"][0]) == pytest.approx(15.0, abs=0.05)
    assert float(host5["y"][0] - host0["y"][0]) == pytest.approx(2.5, abs=0.05)


def test_cosmic_ray_masks_mark_brighter_pixels(night):
    c = night.config

    def sigma_adu(expected_adu: np.ndarray) -> np.ndarray:
        charge_e = np.maximum(expected_adu - night.truth.detector.bias_adu, 0) * c.gain_e_per_adu
        return np.sqrt(charge_e + c.read_noise_e**2) / c.gain_e_per_adu

    n_checked = 0
    for i, path in enumerate(night.raw_paths["light"]):
        mask = night.truth.cr_masks[path.name]
        expected = truth_image(night, i, calibrated=False)
        raw = fits.getdata(path).astype(np.float64)
        hit = mask & (expected < c.saturation_adu - 2000)
        excess = (raw - expected)[hit] / sigma_adu(expected)[hit]
        assert np.all(excess > 5.0)
        n_checked += int(hit.sum())
        # outside the mask nothing is that bright (hot pixels excluded: they are in `expected`)
        free = ~mask & (expected < c.saturation_adu - 2000)
        assert np.max((raw - expected)[free] / sigma_adu(expected)[free]) < 7.0
    assert n_checked > 50
    # darks: the mask marks pixels above dark + bias
    det = night.truth.detector
    path = night.raw_paths["dark"][0]
    raw = fits.getdata(path).astype(np.float64)
    mask = night.truth.cr_masks[path.name]
    expected = det.bias_adu + det.dark_current_e_s * c.dark_exptime_s / c.gain_e_per_adu
    assert mask.sum() > 5
    assert np.all((raw - expected)[mask & (expected < 50000)] > 5 * c.read_noise_e / c.gain_e_per_adu)


def test_hot_pixels_are_hot_in_the_darks_and_bad_columns_in_the_flats(night):
    c = night.config
    det = night.truth.detector
    darks = np.stack([fits.getdata(p).astype(np.float64) for p in night.raw_paths["dark"]])
    dark_adu = np.median(darks, axis=0) - det.bias_adu
    hot = det.hot_pixels
    assert len(hot) == SMALL.n_hot_pixels
    hx, hy = np.asarray(hot["x"]), np.asarray(hot["y"])
    expected = det.dark_current_e_s[hy, hx] * c.dark_exptime_s / c.gain_e_per_adu
    noise = np.sqrt(expected / c.gain_e_per_adu + (c.read_noise_e / c.gain_e_per_adu) ** 2)
    assert np.all(dark_adu[hy, hx] > 5 * c.read_noise_e / c.gain_e_per_adu)
    assert np.all(np.abs(dark_adu[hy, hx] - np.minimum(expected, c.saturation_adu)) < 5 * noise + 1)
    typical = np.median(dark_adu)
    assert typical < 3 * c.read_noise_e / c.gain_e_per_adu
    # bad columns respond at bad_column_response in the flats
    flats = np.stack(
        [
            (fits.getdata(p).astype(np.float64) - det.bias_adu) / fits.getheader(p)["FLATLVL"]
            for p in night.raw_paths["flat"]
        ]
    )
    flat = np.median(flats, axis=0)
    for col in det.bad_columns:
        ratio = np.median(flat[:, col]) / np.median(flat[:, col - 3 : col])
        assert ratio == pytest.approx(SMALL.bad_column_response, abs=0.02)
    # the measured flat follows the truth flat to the Poisson noise of three flats
    assert np.std((flat / det.flat)[:, 5:20]) < 0.01


# ------------------------------------------------------------------------------------------
# light curves


def test_transit_model_known_answers():
    # uniform disc: the flux drop is the overlap area over pi (p = 0.1, z = 0 -> 0.01)
    flux = transit_model(
        np.array([0.0]), t0=0.0, period_d=3.0, rp_rs=0.1, a_rs=10.0, inc_deg=90.0, u1=0, u2=0
    )
    assert flux[0] == pytest.approx(0.99, abs=2e-7)
    # out of transit, and never below the limb-darkened central depth
    g = solve_transit(depth=0.015, duration_h=2.0, impact_parameter=0.3, period_d=3.0, u1=0.45, u2=0.2)
    t = np.linspace(-0.1, 0.1, 2001)
    f = transit_model(t, t0=0.0, period_d=3.0, rp_rs=g.rp_rs, a_rs=g.a_rs, inc_deg=g.inc_deg, u1=0.45, u2=0.2)
    assert f.min() == pytest.approx(0.985, abs=1e-6)
    assert f[1000] == pytest.approx(0.985, abs=1e-9)
    in_transit = t[f < 1.0]
    assert in_transit.max() - in_transit.min() == pytest.approx(2.0 / 24.0, abs=2e-4)
    assert g.impact_parameter == pytest.approx(0.3, abs=1e-9)
    # limb darkening deepens a central transit beyond (Rp/Rs)^2
    assert g.rp_rs**2 < 0.015
    # a half period away the planet is behind the star: no eclipse modelled
    assert transit_model(np.array([1.5]), t0=0.0, period_d=3.0, rp_rs=0.1, a_rs=10.0, inc_deg=90.0)[0] == 1.0
    v = variable_star(np.linspace(0, 1, 1001), amplitude=0.05, period_d=0.5, t_ref=0.0)
    assert v.max() == pytest.approx(1.05, abs=1e-5) and v.min() == pytest.approx(0.95, abs=1e-5)


def test_transit_host_dips_by_the_configured_depth():
    cfg = SimConfig(
        seed=11,
        shape=(64, 64),
        n_bias=0,
        n_dark=0,
        n_flat=0,
        n_science=41,
        cadence_s=300.0,
        n_stars=10,
        planet=TransitConfig(depth=0.02, duration_h=2.0, mid_offset_h=100 * 60 / 3600 + 30 / 3600),
    )
    scene = build_scene(cfg)
    host = scene.science.host_rel_flux
    mid = 20  # 20 * 300 s + 30 s (half the exposure) = mid_offset_h
    assert host[mid] == pytest.approx(1.0 - 0.02, abs=1e-5)
    assert np.argmin(host) == mid
    assert host[0] == 1.0 and host[-1] == 1.0
    # the rendered truth flux of the host relative to another star follows the same curve
    ratios = []
    for i in (0, mid):
        _, stars = light_electrons(scene, i)
        f = {int(s): float(v) for s, v in zip(stars["id"], stars["flux_e"], strict=True)}
        ratios.append(f[scene.host_id] / f[scene.variable_id] * scene.science.variable_rel_flux[i])
    assert ratios[1] / ratios[0] == pytest.approx(0.98, abs=1e-5)
    var = scene.science.variable_rel_flux
    assert var.max() - var.min() == pytest.approx(2 * cfg.variable.amplitude, rel=0.05)


# ------------------------------------------------------------------------------------------
# building blocks


def test_moffat_psf_is_normalised_and_centred():
    for fwhm, dx, dy in ((2.7, 0.0, 0.0), (3.5, 0.3, -0.45)):
        stamp = moffat_psf(fwhm, beta=3.0, half_size=40, x_offset=dx, y_offset=dy)
        assert stamp.shape == (81, 81)
        assert stamp.sum() == pytest.approx(1.0, abs=1e-12)
        yy, xx = np.mgrid[-40:41, -40:41]
        assert (stamp * xx).sum() == pytest.approx(dx, abs=2e-3)
        assert (stamp * yy).sum() == pytest.approx(dy, abs=2e-3)
    # FWHM from a finely sampled, centred stamp (pixel integration broadens it only slightly)
    stamp = moffat_psf(8.0, beta=3.0, half_size=40)
    row = stamp[40]
    above = np.flatnonzero(row >= row.max() / 2)
    width = above[-1] - above[0] + 1
    assert 7 <= width <= 9


def test_star_catalog_power_law_and_colours():
    scene = build_scene(SimConfig(seed=1, shape=(256, 256), n_stars=3000, n_science=1))
    wcs = scene.light_wcs(0)
    cat = make_star_catalog(
        20000,
        wcs=wcs,
        shape=(256, 256),
        margin_pix=10,
        r_mag_range=(10.0, 20.0),
        mag_slope=0.3,
        rng=np.random.Generator(np.random.PCG64(1)),
    )
    r = np.asarray(cat["r_mag"])
    assert r.min() >= 10.0 and r.max() <= 20.0
    n_bright = np.sum((r > 14) & (r < 15))
    n_faint = np.sum((r > 18) & (r < 19))
    assert n_faint / n_bright == pytest.approx(10 ** (0.3 * 4), rel=0.2)
    g_r = np.asarray(cat["g_r"])
    assert g_r.min() >= 0.2 and g_r.max() <= 1.4 and 0.5 < np.median(g_r) < 0.9
    np.testing.assert_allclose(cat["g_mag"] - cat["r_mag"], g_r)
    x, y = wcs.all_world2pix(cat["ra_deg"], cat["dec_deg"], 0)
    assert x.min() > -11 and x.max() < 266 and y.min() > -11 and y.max() < 266


def test_default_night_has_many_stars_a_few_saturated_and_varying_seeing():
    scene = build_scene(SimConfig())
    _, stars = light_electrons(scene, 0)
    on = stars[stars["in_frame"]]
    assert 500 <= len(on) <= 1500
    n_saturated = int(np.sum(on["saturated"]))
    assert n_saturated >= 1 and n_saturated <= 20
    host = stars[stars["id"] == scene.host_id]
    assert not host["saturated"][0]
    # FWHM grows towards the corners and changes from frame to frame
    centre = np.hypot(on["x"] - 511.5, on["y"] - 511.5) < 100
    corner = np.hypot(on["x"] - 511.5, on["y"] - 511.5) > 650
    assert np.mean(on["fwhm_pix"][corner]) > np.mean(on["fwhm_pix"][centre]) * 1.02
    fwhm = scene.science.fwhm_arcsec
    assert np.ptp(fwhm) > 0.01 and abs(np.mean(fwhm) - 1.8) < 0.5


def test_config_is_frozen_and_validated():
    cfg = SimConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="cadence_s"):
        SimConfig(exptime_s=60, cadence_s=60)
    with pytest.raises(ValidationError, match="bad_columns"):
        SimConfig(shape=(256, 256), bad_columns=(300,))
    with pytest.raises(ValidationError, match="calib_lead_min"):
        SimConfig(calib_lead_min=1.0)
    with pytest.raises(ValidationError, match="jumps"):
        SimConfig(n_science=3, jumps=(PointingJump(frame_index=5, dx_pix=1, dy_pix=0),))
    with pytest.raises(ValidationError, match="object_name"):
        SimConfig(object_name="../escape")
    assert SimConfig(shape=(256, 256)).bad_columns_x == (43, 153)
    aware = datetime.fromisoformat("2025-06-01T22:10:00-06:00")
    assert SimConfig(start_utc=aware).start_utc == datetime(2025, 6, 2, 4, 10)
