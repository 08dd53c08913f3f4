"""Calibration against the truth of a simulated night (darkroom.sim): cosmic rays, chi-square, defects."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage as ndi

from darkroom.calib.masters import make_master_bias, make_master_dark
from darkroom.calib.process import calibrate_frame
from darkroom.maskbits import MaskBit
from darkroom.sim import SimConfig, truth_image


def _read(paths):
    return [fits.getdata(p).astype(np.float32) for p in paths]


@pytest.fixture(scope="module")
def sim(tmp_path_factory, simulate_calibration):
    # a cosmic-ray rate 100x the default (~150 events per 60 s frame) gives the recall test statistics
    cfg = SimConfig(shape=(512, 600), n_science=2, n_stars=400, seed=3, cosmic_ray_rate_cm2_s=5.0)
    night, masters, lights = simulate_calibration(tmp_path_factory.mktemp("simnight"), cfg)
    results = [calibrate_frame(raw, meta, header=hdr, **masters) for raw, hdr, meta in lights]
    bpm = masters["bad_pixels"]
    return cfg, night, bpm, results


def test_sim_cosmic_rays_recall_and_false_pixels(sim):
    """Recall >= 95% of the simulated cosmic-ray pixels; false pixels <= 0.01% of the frame.

    Not counted: pixels within 3 of the border (L.A.Cosmic's median filters do not reach
    them) and pixels already BAD or SAT. False: flagged with no cosmic-ray pixel within 2.
    """
    _cfg, night, _, results = sim
    for path, res in zip(night.raw_paths["light"], results, strict=True):
        truth = night.truth.cr_masks[path.name].copy()
        assert truth.sum() > 50
        countable = (res.mask & (MaskBit.BAD | MaskBit.SAT)) == 0
        countable[:3] = countable[-3:] = False
        countable[:, :3] = countable[:, -3:] = False
        flagged = (res.mask & MaskBit.CR) != 0
        recall = (flagged & truth & countable).sum() / (truth & countable).sum()
        near = ndi.binary_dilation(truth, structure=np.ones((3, 3), dtype=bool), iterations=2)
        false_frac = (flagged & ~near).sum() / flagged.size
        assert recall >= 0.95, recall
        assert false_frac <= 1e-4, false_frac


def test_sim_calibrated_frame_equals_truth_within_variance(sim):
    """Reduced chi-square of (SCI - truth) / sqrt(VAR) over sky pixels is 1 +- 0.1."""
    cfg, night, _, results = sim
    for i, res in enumerate(results):
        truth = truth_image(night, i)  # (sky + stars) / gain [adu]
        sky_level = float(np.median(truth))
        star_free = np.abs(truth - sky_level) < 0.1 * np.sqrt(sky_level / cfg.gain_e_per_adu)
        cr = ndi.binary_dilation(night.truth.cr_masks[night.raw_paths["light"][i].name], iterations=2)
        sky = star_free & ~cr & (res.mask == 0)
        assert sky.sum() > 0.3 * sky.size
        chi = (res.sci - truth)[sky] / np.sqrt(res.var[sky])
        assert float(np.mean(chi**2)) == pytest.approx(1.0, abs=0.1)
        assert abs(float(np.mean(chi))) < 0.05


def test_sim_hot_pixels_and_bad_columns_are_masked(sim):
    _cfg, night, bpm, results = sim
    det = night.truth.detector
    hx = np.asarray(det.hot_pixels["x"], dtype=int)
    hy = np.asarray(det.hot_pixels["y"], dtype=int)
    assert bpm.mask[hy, hx].all()
    for col in det.bad_columns:
        assert bpm.mask[:, col].all()
        assert col in bpm.bad_columns
    for res in results:
        assert np.all(res.mask[hy, hx] & MaskBit.BAD)
        assert np.all(res.mask[hy, hx] & MaskBit.INTRP)
    # little else is flagged
    assert bpm.n_bad < det.bad_pixel_mask().sum() + 0.005 * bpm.mask.size


def test_sim_denoised_master_dark_is_closer_to_the_true_dark_current(sim):
    """The denoised master dark errs less than the plain mean, keeps hot pixels, says its error.

    What a light of the darks' exposure time has subtracted is master bias + master dark,
    compared with the true bias + dark signal. Five biases and five 60 s darks: the measured
    mean carries the darks' read noise; the dark signal's own pixel-to-pixel scatter (10 %
    of 0.9 adu) is far below it and the bias's structure is columns, rows and a gradient, so
    the model (smooth level, column and row profiles) errs far less, its VAR plane says how
    much, and hot pixels keep their measured value.
    """
    from darkroom.calib.masters import DarkModelConfig, MasterConfig

    cfg, night, _, _ = sim
    mb = make_master_bias(_read(night.raw_paths["bias"]))
    darks = _read(night.raw_paths["dark"])
    as_measured = MasterConfig(dark_model=DarkModelConfig(method="measured"))
    measured = make_master_dark(darks, exptime_s=cfg.dark_exptime_s, bias=mb, config=as_measured)
    as_denoised = MasterConfig(dark_model=DarkModelConfig(method="denoised"))
    denoised = make_master_dark(darks, exptime_s=cfg.dark_exptime_s, bias=mb, config=as_denoised)
    assert measured.dark_model == "measured" and measured.measured is None
    assert denoised.dark_model == "denoised" and 0.99 < denoised.modelled_fraction < 1.0
    np.testing.assert_array_equal(denoised.measured_data, measured.data)  # the mean is kept alongside
    det = night.truth.detector
    truth = det.bias_adu + det.dark_current_e_s * cfg.dark_exptime_s / cfg.gain_e_per_adu  # [adu]
    good = np.ones(truth.shape, bool)
    good[:, list(det.bad_columns)] = False
    good[np.asarray(det.hot_pixels["y"], int), np.asarray(det.hot_pixels["x"], int)] = False
    err_measured = (mb.data + measured.data - truth)[good]
    err_denoised = (mb.data + denoised.data - truth)[good]
    var_measured, var_denoised = float(np.mean(err_measured**2)), float(np.mean(err_denoised**2))
    assert var_denoised < 0.05 * var_measured, (var_denoised, var_measured)  # 0.11 against 17.7 adu^2
    # its VAR plane predicts its error (chi-square over the good pixels). The combine's noise
    # model, which both VAR planes come from, is 20 % high here (the measured mean's chi-square
    # is 0.83), and the model's variance inherits it: measured 0.86.
    chi2 = float(np.mean(err_denoised**2 / denoised.variance[good]))
    assert chi2 == pytest.approx(0.85, abs=0.1), chi2
    # hot pixels well above the noise keep their measured value
    hy, hx = np.asarray(det.hot_pixels["y"], int), np.asarray(det.hot_pixels["x"], int)
    rate_adu = np.asarray(det.hot_pixels["rate_e_s"]) * cfg.dark_exptime_s / cfg.gain_e_per_adu
    bright = rate_adu > 10 * np.sqrt(measured.variance[hy, hx])
    assert bright.sum() >= 10
    np.testing.assert_array_equal(
        denoised.data[hy[bright], hx[bright]], measured.data[hy[bright], hx[bright]]
    )


def test_sim_master_dark_default_denoises_few_darks_only(sim):
    """``auto`` (the default) denoises a master of 2-9 darks and keeps the mean of one dark
    (no measured noise to deconvolve) or of ``denoise_below_frames`` darks and more; the
    master says which (DARKMODL)."""
    from darkroom.calib.masters import (
        DarkModelConfig,
        MasterConfig,
        dark_model_method,
        master_from_hdus,
        master_to_hdus,
    )

    cfg, night, _, _ = sim
    mb = make_master_bias(_read(night.raw_paths["bias"]))
    darks = _read(night.raw_paths["dark"])
    assert len(darks) == 5
    auto = DarkModelConfig()
    assert auto.method == "auto" and auto.denoise_below_frames == 10
    assert [dark_model_method(auto, n) for n in (1, 2, 9, 10, 40)] == ["measured", "denoised", "denoised"] + [
        "measured"
    ] * 2
    default = make_master_dark(darks, exptime_s=cfg.dark_exptime_s, bias=mb)
    assert default.dark_model == "denoised" and default.measured is not None
    assert master_to_hdus(default)[0].header["DARKMODL"] == "denoised"
    assert master_from_hdus(master_to_hdus(default)).dark_model == "denoised"
    few = MasterConfig(dark_model=DarkModelConfig(denoise_below_frames=5))  # 5 darks: not fewer than 5
    kept = make_master_dark(darks, exptime_s=cfg.dark_exptime_s, bias=mb, config=few)
    assert kept.dark_model == "measured" and kept.measured is None
    one = make_master_dark(darks[:1], exptime_s=cfg.dark_exptime_s, bias=mb)
    assert one.dark_model == "measured"
