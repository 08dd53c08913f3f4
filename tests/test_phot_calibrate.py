"""Zero point, colour term, limiting magnitude and catalog matching on synthetic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from darkroom.errors import BadInputError, SolveError
from darkroom.maskbits import MaskBit
from darkroom.phot import (
    ApertureConfig,
    PhotFlag,
    ZeroPointConfig,
    aperture_photometry,
    calibrate_photometry,
    fit_zero_point,
    limiting_flux,
    limiting_magnitude,
    match_catalogs,
    match_xy,
    noisy_frame,
    pixel_to_sky,
    sky_to_pixel,
)

ZP_TRUE = 21.30  # mag of 1 adu/s
C_TRUE = 0.12  # colour term [mag/mag]
EXPTIME = 30.0
SHAPE = (700, 760)


def _wcs(ra0: float = 359.95, dec0: float = 28.2) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [380.5, 350.5]  # 1-based FITS reference pixel
    scale = 0.67 / 3600.0
    w.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    return w


def _field(rng: np.random.Generator, n: int = 220):
    """A synthetic frame and reference catalog with known zero point and colour term."""
    x = rng.uniform(20, SHAPE[1] - 20, n)
    y = rng.uniform(20, SHAPE[0] - 20, n)
    m_ref = rng.uniform(12.0, 18.0, n)
    colour = rng.uniform(-0.2, 1.6, n)
    # m_ref = m_inst + zp + c * colour  ->  flux = exptime * 10^(-0.4 (m_ref - zp - c colour))
    flux = EXPTIME * 10 ** (-0.4 * (m_ref - ZP_TRUE - C_TRUE * colour))
    sci, var, _ = noisy_frame(SHAPE, x, y, flux, fwhm_pix=3.0, sky_adu=300.0, rng=rng)
    mask = np.zeros(SHAPE, np.int32)
    # saturate the three brightest stars: clip their cores and mark them
    sat_level = 0.8 * float(sci.max())
    saturated = np.argsort(m_ref)[:3]
    for i in saturated:
        yi, xi = round(y[i]), round(x[i])
        core = (slice(yi - 1, yi + 2), slice(xi - 1, xi + 2))
        sci[core] = np.minimum(sci[core], sat_level * 0.3)
        mask[core] |= MaskBit.SAT
    w = _wcs()
    ra, dec = pixel_to_sky(w, x, y)
    ref_err = np.full(n, 0.01)
    ref = Table(
        {
            "ra": ra + rng.normal(0, 0.1 / 3600, n),
            "dec": dec + rng.normal(0, 0.1 / 3600, n),
            "mag": m_ref + rng.normal(0, 0.01, n),
            "mag_err": ref_err,
            "colour": colour,
        },
        meta={"saturated": saturated},
    )
    # five reference stars are wrong by 0.5 mag (variables, blends in the catalog)
    ref["mag"][rng.choice(n, 5, replace=False)] += 0.5
    return sci, mask, var, x, y, w, ref


def _phot_with_sky(sci, mask, var, x, y, w):
    t = aperture_photometry(
        sci,
        mask,
        var,
        x,
        y,
        fwhm_pix=3.0,
        exptime_s=EXPTIME,
        config=ApertureConfig(radii_fwhm=(1.0, 2.5), ref_aperture=1),
    )
    t["ra"], t["dec"] = pixel_to_sky(w, t["x"], t["y"])
    return t


def test_zero_point_and_colour_term_recovered():
    rng = np.random.default_rng(42)
    sci, mask, var, x, y, w, ref = _field(rng)
    t = _phot_with_sky(sci, mask, var, x, y, w)
    res, out = calibrate_photometry(t, ref, config=ZeroPointConfig(match_radius_arcsec=1.5))
    assert res.calibrated and res.colour_fitted
    assert abs(res.zp - ZP_TRUE) < 0.01
    assert abs(res.colour_term - C_TRUE) < 0.02
    assert res.zp_err < 0.01 and res.colour_term_err < 0.02
    assert res.rms < 0.05
    assert res.n_matched == len(ref)
    assert 100 < res.n_used < len(ref) - 5  # faint, saturated, blended and wrong stars left out
    sat = (np.asarray(out["flags"]) & PhotFlag.SAT) != 0
    assert np.all(sat[ref.meta["saturated"]])
    assert sat.sum() >= 3 and not np.any(np.asarray(out["zp_used"])[sat])
    # calibrated magnitudes of the good stars agree with the truth
    good = np.asarray(out["zp_used"])
    resid = np.asarray(out["mag"])[good] - np.asarray(ref["mag"])[np.asarray(out["ref_index"])[good]]
    assert abs(np.median(resid)) < 0.01
    assert out.meta["mag_system"] == "calibrated"
    # the limiting magnitude is finite and fainter than the faintest used star
    assert res.mag_limit is not None and res.mag_limit > np.max(
        np.asarray(ref["mag"])[np.asarray(out["ref_index"])[good]]
    )


def test_no_reference_keeps_instrumental_magnitudes():
    rng = np.random.default_rng(1)
    sci, mask, var, x, y, w, _ = _field(rng, n=30)
    t = _phot_with_sky(sci, mask, var, x, y, w)
    res, out = calibrate_photometry(t, None)
    assert not res.calibrated and res.zp is None and "no reference" in res.reason
    np.testing.assert_array_equal(out["mag"], t["mag_inst"])
    assert out.meta["mag_system"] == "instrumental"
    far = Table({"ra": [10.0], "dec": [-40.0], "mag": [12.0]})
    res2, _out2 = calibrate_photometry(t, far)
    assert not res2.calibrated and res2.n_matched == 0


def test_fit_zero_point_clips_outliers_and_fixes_colour_term():
    rng = np.random.default_rng(3)
    n = 60
    m_inst = rng.uniform(-12, -6, n)
    colour = rng.uniform(0, 1.5, n)
    err = np.full(n, 0.01)
    m_ref = m_inst + 25.0 + 0.05 * colour + rng.normal(0, 0.01, n)
    m_ref[:4] += 1.0
    res, used = fit_zero_point(m_inst, err, m_ref, colour=colour)
    assert not used[:4].any() and used[4:].sum() >= 54
    assert res.zp == pytest.approx(25.0, abs=0.01) and res.colour_term == pytest.approx(0.05, abs=0.02)
    fixed, _ = fit_zero_point(
        m_inst, err, m_ref - 0.05 * colour, config=ZeroPointConfig(fit_colour_term=False)
    )
    assert (
        fixed.colour_term == 0.0
        and fixed.colour_term_err is None
        and fixed.zp == pytest.approx(25.0, abs=0.01)
    )
    narrow, _ = fit_zero_point(m_inst, err, m_ref, colour=np.full(n, 0.7))  # no colour spread: c held
    assert not narrow.colour_fitted
    with pytest.raises(SolveError, match="usable stars"):
        fit_zero_point(m_inst[:2], err[:2], m_ref[:2])


def test_limiting_flux_formula_and_empirical_snr():
    # background-limited: F = 5 sqrt(A s^2 (1 + A / n_bkg))
    a = math.pi * 9.0
    assert limiting_flux(sky_rms=10.0, radius_pix=3.0) == pytest.approx(5 * math.sqrt(a * 100.0))
    assert limiting_flux(sky_rms=10.0, radius_pix=3.0, n_bkg_pix=a) == pytest.approx(
        5 * math.sqrt(2 * a * 100.0)
    )
    f = limiting_flux(sky_rms=10.0, radius_pix=3.0, gain_e_per_adu=2.0)
    assert f / math.sqrt(f / 2.0 + a * 100.0) == pytest.approx(5.0)  # S/N = 5 with the source's own noise
    assert limiting_magnitude(zp=25.0, sky_rms=10.0, radius_pix=3.0, exptime_s=10.0) == pytest.approx(
        25.0 - 2.5 * math.log10(5 * math.sqrt(a * 100.0) / 10.0)
    )
    # inject stars at the 5-sigma flux: the measured S/N is 5
    rng = np.random.default_rng(8)
    gx, gy = np.meshgrid(np.arange(40, 720, 40.0), np.arange(40, 660, 40.0))
    x, y = gx.ravel(), gy.ravel()
    cfg = ApertureConfig(radii_fwhm=(1.0,), ref_aperture=0)
    blank, var, _ = noisy_frame(SHAPE, x[:0], y[:0], [], fwhm_pix=3.0, sky_adu=400.0, rng=rng)
    t0 = aperture_photometry(blank, None, var, x, y, fwhm_pix=3.0, config=cfg)
    f5 = limiting_flux(
        sky_rms=float(np.median(t0["bkg_rms"])),
        radius_pix=3.0,
        n_bkg_pix=float(np.median(t0["n_bkg_pix"])),
        gain_e_per_adu=2.0,
    )
    ap_frac = 0.93  # ~ fraction of a pixelated FWHM-3 Gaussian inside r = 1 FWHM
    sci, var, _ = noisy_frame(
        SHAPE, x, y, np.full(x.size, f5 / ap_frac), fwhm_pix=3.0, sky_adu=400.0, rng=rng
    )
    t = aperture_photometry(sci, None, var, x, y, fwhm_pix=3.0, config=cfg)
    assert abs(np.median(t["snr"]) - 5.0) < 0.5
    with pytest.raises(BadInputError):
        limiting_flux(sky_rms=1.0, radius_pix=0.0)


def test_match_catalogs_one_to_one_across_ra_zero():
    ra1 = np.array([359.9999, 0.0002, 120.0])
    dec1 = np.array([10.0, 10.0, -30.0])
    ra2 = np.array([0.00005, 359.99985, 0.0003, 200.0])
    dec2 = np.array([10.0, 10.0, 10.0001, 5.0])
    i1, i2, sep = match_catalogs(ra1, dec1, ra2, dec2, radius_arcsec=1.0)
    assert list(i1) == [0, 1] and list(i2) == [1, 2]
    assert np.all(sep < 1.0)
    # one-to-one: two detections near one reference star give one pair (the closer)
    j1, j2, d = match_xy([10.0, 10.4], [10.0, 10.0], [10.3], [10.0], radius_pix=1.0)
    assert list(j1) == [1] and list(j2) == [0] and d[0] == pytest.approx(0.1)


def test_sky_pixel_round_trip_is_zero_based():
    w = _wcs()
    x, y = sky_to_pixel(w, *pixel_to_sky(w, np.array([0.0, 379.5]), np.array([0.0, 349.5])))
    np.testing.assert_allclose(y, [0.0, 349.5], atol=1e-8)
    np.testing.assert_allclose(x, [0.0, 379.5], atol=1e-8)
    ra, dec = pixel_to_sky(w, np.array([379.5]), np.array([349.5]))  # CRPIX (1-based 380.5) is 0-based 379.5
    assert ra[0] == pytest.approx(359.95) and dec[0] == pytest.approx(28.2)


def test_calibrate_frame_zero_point_unit_and_implausible_scatter():
    from darkroom.phot.frame import calibrate_frame, frame_cone
    from darkroom.phot.settings import MeasureSettings

    rng = np.random.default_rng(42)
    sci, mask, var, x, y, w, ref = _field(rng)
    settings = MeasureSettings(ref_colour_columns=("b", "v"), zero_point={"match_radius_arcsec": 1.5})
    t = _phot_with_sky(sci, mask, var, x, y, w)
    cal = calibrate_frame(t, ref, settings=settings, exptime_s=EXPTIME, zp_source="ref_mag_column 'v'")
    # the largest aperture is the reference one: the aperture correction is ~0 and the zero point true
    assert abs(cal["apcorr_mag"]) < 0.01 and abs(cal["zp"] + cal["apcorr_mag"] - ZP_TRUE) < 0.015
    assert abs(cal["colour_term"] - C_TRUE) < 0.02 and cal["mag_system"] == "calibrated"
    assert cal["zp_flag"] is None and cal["zp_source"] == "ref_mag_column 'v'"
    used = np.asarray(t["zp_used"], bool)
    faintest_used = np.max(np.asarray(ref["mag"])[np.asarray(t["ref_index"])[used]])
    assert (
        cal["mag_limit"] > faintest_used and cal["ref_aperture"] == 1 and len(cal["aperture_radii_pix"]) == 2
    )
    assert "mag" in t.colnames and "mag_inst_ap" in t.colnames
    # a catalogue in another band: the scatter is named, not silently used
    strict = settings.model_copy(update={"max_zp_rms_mag": 0.001})
    flagged = calibrate_frame(
        _phot_with_sky(sci, mask, var, x, y, w), ref, settings=strict, exptime_s=EXPTIME
    )
    assert flagged["zp_flag"].startswith("implausible zero-point scatter")
    # no reference: instrumental, with the reason given; the image's own unit: that zero point
    none = calibrate_frame(
        _phot_with_sky(sci, mask, var, x, y, w), None, settings=settings, exptime_s=EXPTIME, reason="no WCS"
    )
    assert none["mag_system"] == "instrumental" and none["zp"] is None and none["reason"] == "no WCS"
    unit = calibrate_frame(
        _phot_with_sky(sci, mask, var, x, y, w),
        None,
        settings=settings,
        unit_zero_point_mag=22.5,
        exptime_s=EXPTIME,
    )
    assert unit["zp_source"] == "image unit" and unit["zp"] == pytest.approx(22.5 - 2.5 * math.log10(EXPTIME))
    # the reference cone holds the whole frame
    ra, dec, radius = frame_cone(w, SHAPE)
    corners = pixel_to_sky(w, np.array([0.0, SHAPE[1] - 1.0]), np.array([0.0, SHAPE[0] - 1.0]))
    half_diagonal = math.hypot(*SHAPE) / 2 * 0.67 / 3600
    assert radius == pytest.approx(1.1 * half_diagonal, rel=1e-6) and abs(dec - 28.2) < 0.01
    assert abs((ra - 359.95 + 180.0) % 360.0 - 180.0) < 0.01  # the centre, across RA 0
    assert all(abs(d - dec) < radius for d in corners[1])


def test_recentre_on_detections_shifts_every_prediction_and_forces_the_undetected():
    from darkroom.phot.forced import recentre_on_detections

    rng = np.random.default_rng(3)
    true_x, true_y = rng.uniform(20, 300, 12), rng.uniform(20, 300, 12)
    det_x, det_y = true_x[:8] + rng.normal(0, 0.05, 8), true_y[:8] + rng.normal(0, 0.05, 8)
    # predictions off by a systematic (1.6, -1.1) pixels: more than half the 2-pixel radius
    pred_x, pred_y = true_x - 1.6, true_y + 1.1
    tied = recentre_on_detections(pred_x, pred_y, det_x, det_y, radius_pix=2.0)
    assert tied.n_offset_stars >= 3 and list(tied.forced) == [False] * 8 + [True] * 4
    np.testing.assert_array_equal(tied.x[:8], det_x)  # measured at the detections
    np.testing.assert_allclose(tied.x[8:], true_x[8:], atol=0.1)  # the forced ones shifted too
    np.testing.assert_allclose(tied.y[8:], true_y[8:], atol=0.1)
    at_prediction = recentre_on_detections(pred_x, pred_y, det_x, det_y, radius_pix=2.0, recentre=False)
    np.testing.assert_allclose(at_prediction.x, true_x, atol=0.1)
    lone = recentre_on_detections(pred_x, pred_y, det_x[:2], det_y[:2], radius_pix=2.0)
    assert lone.n_offset_stars == 0 and np.array_equal(lone.x[2:], pred_x[2:])  # two matches: no shift
    assert np.array_equal(lone.x[:2], det_x[:2]) and list(lone.forced) == [False] * 2 + [True] * 10
    nothing = recentre_on_detections(pred_x, pred_y, np.zeros(0), np.zeros(0), radius_pix=2.0)
    assert nothing.forced.all()
