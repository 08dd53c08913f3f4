"""PSF photometry (Gaussian and ePSF) on synthetic Gaussian stars of known flux."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.errors import BadInputError
from darkroom.maskbits import MaskBit
from darkroom.phot import ApertureConfig, PhotFlag, aperture_photometry, noisy_frame
from darkroom.phot.psf import PsfConfig, psf_photometry

FWHM = 3.0
SKY = 200.0


def _grid(seed: int, step: float = 38.0):
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(25, 470, step), np.arange(25, 420, step))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = 10 ** rng.uniform(3.3, 5.0, x.size)
    sci, var, _ = noisy_frame((440, 480), x, y, flux, fwhm_pix=FWHM, sky_adu=SKY, rng=rng)
    return rng, sci, var, x, y, flux


@pytest.mark.parametrize("model", ["gaussian", "epsf"])
def test_isolated_stars_fluxes_positions_and_errors(model):
    rng, sci, var, x, y, flux = _grid(3)
    x0 = x + rng.normal(0, 0.2, x.size)
    y0 = y + rng.normal(0, 0.2, x.size)
    t = psf_photometry(sci, None, var, x0, y0, fwhm_pix=FWHM, config=PsfConfig(model=model, epsf_max_stars=40),
                       exptime_s=2.0)  # fmt: skip
    assert abs(np.median(t["flux"] / flux) - 1) < 0.005
    pull = (t["flux"] - flux) / t["flux_err"]
    assert abs(np.mean(pull)) < 0.3 and 0.75 < np.std(pull) < 1.25
    assert np.median(np.hypot(t["x"] - x, t["y"] - y)) < 0.05  # centroids found from 0.2 px off
    assert np.all(t["flags"] == 0) and t.meta["psf_model"] == model
    np.testing.assert_allclose(t["mag_inst"], -2.5 * np.log10(t["flux"] / 2.0))


def test_blended_pairs_where_apertures_fail():
    rng = np.random.default_rng(4)
    n = 50
    x1 = rng.uniform(20, 460, n)
    y1 = rng.uniform(20, 420, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    x = np.r_[x1, x1 + 1.5 * FWHM * np.cos(ang)]
    y = np.r_[y1, y1 + 1.5 * FWHM * np.sin(ang)]
    flux = np.r_[np.full(n, 2e4), np.full(n, 8e3)]
    sci, var, _ = noisy_frame((440, 480), x, y, flux, fwhm_pix=FWHM, sky_adu=SKY, rng=rng)
    t = psf_photometry(sci, None, var, x, y, fwhm_pix=FWHM, background=SKY)
    ratio = np.asarray(t["flux"]) / flux
    assert abs(np.median(ratio[:n]) - 1) < 0.01 and abs(np.median(ratio[n:]) - 1) < 0.01
    assert np.all(t["flags"] & PhotFlag.BLENDED) and np.all(t["group_size"] >= 2)
    # photutils' errors of grouped fits are ~30 % small (overlapping fit boxes): documented, bounded here
    pull = (t["flux"] - flux) / t["flux_err"]
    assert abs(np.mean(pull)) < 0.4 and np.std(pull) < 1.6
    ap = aperture_photometry(
        sci, None, var, x, y, fwhm_pix=FWHM, config=ApertureConfig(radii_fwhm=(2.0,), ref_aperture=0)
    )
    assert (
        np.median(np.asarray(ap["flux"])[n:] / flux[n:]) > 1.3
    )  # the faint member's aperture holds its neighbour


def test_forced_psf_photometry_of_faint_stars():
    rng = np.random.default_rng(5)
    gx, gy = np.meshgrid(np.arange(25, 470, 30.0), np.arange(25, 420, 30.0))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = np.full(x.size, 250.0)  # peak 250 / (2 pi 1.27^2) = 25 adu against ~11 adu sky noise per pixel
    sci, var, _ = noisy_frame((440, 480), x, y, flux, fwhm_pix=FWHM, sky_adu=SKY, rng=rng)
    t = psf_photometry(sci, None, var, x, y, fwhm_pix=FWHM, forced=True)
    assert np.all(t["flags"] & PhotFlag.FORCED)
    np.testing.assert_array_equal(t["x"], x)
    pull = (t["flux"] - flux) / t["flux_err"]
    assert abs(np.mean(pull)) < 4 / np.sqrt(x.size) + 0.1
    assert 0.8 < np.std(pull) < 1.2


def test_saturated_core_is_masked_and_the_wings_give_the_flux():
    _, sci, var, x, y, flux = _grid(6, step=60.0)
    i = int(np.argmax(flux))
    mask = np.zeros(sci.shape, np.int32)
    yi, xi = round(y[i]), round(x[i])
    core = (slice(yi - 1, yi + 2), slice(xi - 1, xi + 2))
    sci[core] = np.minimum(sci[core], SKY + 0.3 * (sci[core].max() - SKY))  # clipped: saturated
    mask[core] = MaskBit.SAT
    t = psf_photometry(sci, mask, var, x, y, fwhm_pix=FWHM)
    assert t["flags"][i] & PhotFlag.SAT
    assert abs(t["flux"][i] / flux[i] - 1) < 0.02
    ap = aperture_photometry(sci, mask, var, x, y, fwhm_pix=FWHM)
    assert ap["flux"][i] / flux[i] < 0.8


def test_psf_input_errors():
    with pytest.raises(BadInputError, match="FWHM"):
        psf_photometry(np.zeros((20, 20), np.float32), None, None, [5.0], [5.0], fwhm_pix=0.0)
    with pytest.raises(BadInputError, match="1-D"):
        psf_photometry(np.zeros((20, 20), np.float32), None, None, [], [], fwhm_pix=2.0)


def test_psf_fluxes_replace_the_aperture_columns_at_fixed_positions():
    from darkroom.phot.frame import psf_fluxes_at_apertures
    from darkroom.phot.settings import MeasureSettings

    _, sci, var, x, y, flux = _grid(5)
    forced = np.zeros(x.size, bool)
    forced[::7] = True  # no detection matched these: FORCED must survive the swap
    phot = aperture_photometry(sci, None, var, x, y, fwhm_pix=FWHM, config=ApertureConfig(), forced=forced,
                               exptime_s=2.0)  # fmt: skip
    ap_mag = np.array(phot["mag_inst"])
    settings = MeasureSettings(method="psf", psf_moffat=True)  # no Moffat fit given: the Gaussian
    info = psf_fluxes_at_apertures(phot, sci, None, var, fwhm_pix=FWHM, settings=settings, exptime_s=2.0)
    assert info["psf_model"] == "gaussian" and info["psf_fwhm_pix"] == FWHM and info["n_psf_blended"] == 0
    assert abs(np.median(phot["flux"] / flux) - 1) < 0.01  # total fluxes, no aperture correction
    np.testing.assert_array_equal(phot["mag_inst_ap"], ap_mag)
    is_forced = (np.asarray(phot["flags"]) & PhotFlag.FORCED) != 0
    np.testing.assert_array_equal(is_forced, forced)
    assert {"psf_flags", "qfit", "cfit", "group_id", "group_size"} <= set(phot.colnames)


def test_a_fit_with_another_psf_between_changes_nothing():
    # photutils caches the model class of a group of n stars with the PSF it was built from; a
    # frame fitted after another frame with a different PSF must get its own PSF (the crowded
    # night's grouped fluxes moved by up to 2.5 % from run to run before the cache was emptied)
    import gc

    from darkroom.phot.psfmodel import moffat_psf_model

    rng = np.random.default_rng(11)
    n = 30
    x1, y1 = rng.uniform(20, 460, n), rng.uniform(20, 420, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    x = np.r_[x1, x1 + 6.0 * np.cos(ang)]
    y = np.r_[y1, y1 + 6.0 * np.sin(ang)]
    flux = np.r_[np.full(n, 2e4), np.full(n, 8e3)]
    sci, var, _ = noisy_frame((440, 480), x, y, flux, fwhm_pix=5.0, sky_adu=SKY, rng=rng)
    cfg = PsfConfig(group_separation_fwhm=2.0)

    def fit(fwhm: float):
        model = moffat_psf_model(fwhm, 3.0, half_size_pix=12)
        return psf_photometry(
            sci, None, var, x, y, fwhm_pix=5.0, config=cfg, background=SKY, psf_model=model, forced=True
        )

    gc.disable()  # the cached classes live until the collector runs: keep them for the test
    try:
        first = fit(5.0)
        other = fit(2.0)
        again = fit(5.0)
    finally:
        gc.enable()
    assert np.all(first["group_size"] >= 2)
    assert np.median(np.abs(other["flux"] / first["flux"] - 1)) > 0.01  # the other PSF does differ
    np.testing.assert_array_equal(np.asarray(again["flux"]), np.asarray(first["flux"]))
