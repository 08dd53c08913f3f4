"""Known-answer tests of darkroom.phot.aperture (analytic images and synthetic stars)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats
from pydantic import ValidationError

from darkroom.errors import BadInputError, ConfigError
from darkroom.maskbits import MaskBit
from darkroom.phot import (
    ApertureConfig,
    PhotFlag,
    add_gaussian_stars,
    aperture_photometry,
    clipped_annulus_stats,
    describe_flags,
    noisy_frame,
)

# Unequal sides so that an x/y swap cannot go unnoticed (ny=101, nx=143).
SHAPE = (101, 143)
NO_BKG = ApertureConfig(
    radii_pix=(2.0, 3.0, 4.5),
    radii_fwhm=(),
    annulus_in_pix=8,
    annulus_out_pix=12,
    do_local_background=False,
    ref_aperture=1,
)
WITH_BKG = NO_BKG.model_copy(update={"do_local_background": True})


def test_ones_sum_to_pi_r2_and_errors_are_sqrt_sum_var():
    sci = np.ones(SHAPE, np.float32)
    var = np.full(SHAPE, 4.0, np.float32)
    x = np.array([40.3, 120.0, 70.77])
    y = np.array([50.6, 30.25, 80.0])
    t = aperture_photometry(sci, None, var, x, y, config=NO_BKG)
    for k, r in enumerate((2.0, 3.0, 4.5)):
        np.testing.assert_allclose(t[f"flux_ap{k}"], math.pi * r * r, rtol=1e-6)
        # constant VAR: the error is sqrt(sum VAR) = sqrt(pi r^2 * 4)
        np.testing.assert_allclose(t[f"flux_err_ap{k}"], math.sqrt(math.pi * r * r * 4.0), rtol=1e-6)
        assert np.all(t[f"flags_ap{k}"] == 0)
    # the annulus of a constant image has zero scatter: the background adds no error
    t2 = aperture_photometry(sci, None, var, x, y, config=WITH_BKG)
    np.testing.assert_allclose(t2["bkg"], 1.0, rtol=1e-7)
    np.testing.assert_allclose(t2["flux"], 0.0, atol=1e-5)
    np.testing.assert_allclose(t2["flux_err"], math.sqrt(math.pi * 9 * 4.0), rtol=1e-6)
    assert list(t2["x"]) == list(x) and t2.meta["aperture_radii_pix"] == [2.0, 3.0, 4.5]


def test_annulus_background_removes_constant_sky():
    x = np.array([30.2, 100.7, 71.4])
    y = np.array([25.9, 70.1, 50.5])
    flux = np.array([5000.0, 12000.0, 800.0])
    stars = add_gaussian_stars(np.zeros(SHAPE), x, y, flux, fwhm_pix=2.5).astype(np.float32)
    cfg = ApertureConfig(radii_fwhm=(1.0, 2.0, 3.0), annulus_in_fwhm=4, annulus_out_fwhm=6, ref_aperture=2)
    bare = aperture_photometry(stars, None, None, x, y, fwhm_pix=2.5, config=cfg)
    sky = aperture_photometry(stars + np.float32(137.5), None, None, x, y, fwhm_pix=2.5, config=cfg)
    np.testing.assert_allclose(sky["bkg"], 137.5, rtol=1e-6)
    for k in range(3):
        np.testing.assert_allclose(sky[f"flux_ap{k}"], bare[f"flux_ap{k}"], rtol=1e-5, atol=1e-2)
    # 3 FWHM = 7.06 sigma holds the whole Gaussian
    np.testing.assert_allclose(sky["flux_ap2"], flux, rtol=1e-5)
    # a wide star: pixelation negligible, enclosed fraction at r = 1 FWHM is 1 - exp(-4 ln 2) = 15/16
    wide = add_gaussian_stars(np.full(SHAPE, 20.0, np.float32), [70.2], [50.6], [1e4], fwhm_pix=9.0)
    cfg_wide = ApertureConfig(radii_fwhm=(1.0,), ref_aperture=0, annulus_in_pix=40, annulus_out_pix=49)
    t = aperture_photometry(wide, None, None, [70.2], [50.6], fwhm_pix=9.0, config=cfg_wide)
    # (pixel-box smoothing and pixel-mean weighting of the exact overlaps: 0.2 % at FWHM 9)
    np.testing.assert_allclose(t["flux"], 1e4 * (1 - 2.0**-4), rtol=3e-3)


def test_annulus_median_ignores_a_neighbour_and_masked_pixels():
    sky = 50.0
    rng = np.random.default_rng(3)
    sci = (sky + rng.normal(0, 2.0, SHAPE)).astype(np.float32)
    # a bright neighbour sitting in the annulus of the target
    add_gaussian_stars(sci, [70.0 + 10.0], [50.0], [2e5], fwhm_pix=2.0)
    mask = np.zeros(SHAPE, np.int32)
    sci[45, 62] = 1e5  # a hot pixel in the annulus, masked BAD
    mask[45, 62] = MaskBit.BAD
    cfg = ApertureConfig(
        radii_pix=(3.0,), radii_fwhm=(), ref_aperture=0, annulus_in_pix=8, annulus_out_pix=12
    )
    t = aperture_photometry(sci, mask, None, [70.0, 80.0], [50.0, 50.0], fwhm_pix=2.0, config=cfg)
    assert abs(t["bkg"][0] - sky) < 0.3
    assert abs(t["bkg_rms"][0] - 2.0) < 0.3
    assert t["flags"][0] & PhotFlag.BLENDED == 0  # 10 px apart > 3 + 1*2 px
    assert t["flags"][0] & PhotFlag.BAD == 0  # the hot pixel is in the annulus, not the aperture


def test_clipped_stats_match_astropy():
    rng = np.random.default_rng(7)
    vals = rng.normal(10.0, 2.0, (30, 400))
    vals[:, :25] += rng.uniform(20, 200, (30, 25))  # contaminating star light
    vals[:, -30:] = np.nan
    med, std, cnt = clipped_annulus_stats(vals, clip_sigma=3.0, max_iters=10)
    for i in range(30):
        v = vals[i][np.isfinite(vals[i])]
        _mean_a, med_a, std_a = sigma_clipped_stats(v, sigma=3.0, maxiters=10)
        assert med[i] == pytest.approx(med_a, abs=1e-9)
        assert std[i] == pytest.approx(std_a, abs=1e-9)
    assert np.all(cnt < 370) and np.all(cnt > 330)
    empty = clipped_annulus_stats(np.full((2, 5), np.nan))
    assert np.all(np.isnan(empty[0])) and np.all(empty[2] == 0)
    for i in range(3):
        v = vals[i][np.isfinite(vals[i])]
        mean_a, med_a, std_a = sigma_clipped_stats(v, sigma=3.0, maxiters=10)
        mean_d, _, _ = clipped_annulus_stats(vals[i : i + 1], clip_sigma=3.0, max_iters=10, statistic="mean")
        mode_d, _, _ = clipped_annulus_stats(vals[i : i + 1], clip_sigma=3.0, max_iters=10, statistic="mode")
        assert mean_d[0] == pytest.approx(mean_a, abs=1e-9)
        assert mode_d[0] == pytest.approx(2.5 * med_a - 1.5 * mean_a, abs=1e-9)


def test_mean_background_has_no_integer_steps():
    """Integer (raw) pixels: the clipped median sits on half-integers, the mean does not."""
    rng = np.random.default_rng(12)
    sci = np.rint(rng.normal(100.3, 3.0, (400, 600))).astype(np.float32)
    cfg = ApertureConfig(
        radii_pix=(3.0,), radii_fwhm=(), ref_aperture=0, annulus_in_pix=8, annulus_out_pix=20
    )
    gx, gy = np.meshgrid(np.arange(30.0, 580, 50), np.arange(30.0, 380, 50))  # 88 separate annuli
    x, y = gx.ravel(), gy.ravel()
    med = aperture_photometry(sci, None, None, x, y, config=cfg)["bkg"]
    mean = aperture_photometry(
        sci, None, None, x, y, config=cfg.model_copy(update={"annulus_statistic": "mean"})
    )["bkg"]
    assert np.all(np.asarray(med) * 2 == np.rint(np.asarray(med) * 2))
    assert abs(np.mean(mean) - 100.3) < 0.04  # 3 / sqrt(88 * 1000) = 0.01 expected scatter


@pytest.mark.parametrize("bit", [MaskBit.CR, MaskBit.SAT, MaskBit.BAD, MaskBit.INTRP, MaskBit.EDGE])
def test_mask_flags_follow_the_aperture(bit):
    sci = np.ones(SHAPE, np.float32)
    mask = np.zeros(SHAPE, np.int32)
    xc, yc = 60.0, 40.0
    # one pixel at distance 2.5 px: inside r=3 and r=4.5, outside r=2 (nearest edge at 2.0 -> not touching)
    mask[int(yc), int(xc + 2.5 + 0.5)] = bit  # pixel centre (63, 40): nearest edge 2.5 from the centre
    # one pixel far away
    mask[90, 130] = bit
    t = aperture_photometry(sci, mask, None, [xc, 120.0], [yc, 80.0], config=NO_BKG)
    assert t["flags_ap0"][0] & bit == 0  # r = 2.0: pixel edge at 2.5
    assert t["flags_ap1"][0] & bit
    assert t["flags_ap2"][0] & bit
    assert t["flags"][0] & bit and bit.name in describe_flags(int(t["flags"][0]))
    assert np.all(t["flags_ap2"][1:] == 0)  # (120, 80) is 14 px from (130, 90)
    if bit == MaskBit.BAD:  # excluded from the sum and area-corrected: the ones still sum to pi r^2
        np.testing.assert_allclose(t["flux_ap2"][0], math.pi * 4.5**2, rtol=1e-6)


def test_touching_pixel_at_the_edge_of_the_circle():
    sci = np.ones(SHAPE, np.float32)
    mask = np.zeros(SHAPE, np.int32)
    mask[40, 63] = MaskBit.CR  # pixel spans x 62.5..63.5: r=2.4 from x=60.0 misses it, r=2.6 touches it
    cfg = ApertureConfig(
        radii_pix=(2.4, 2.6),
        radii_fwhm=(),
        ref_aperture=0,
        annulus_in_pix=8,
        annulus_out_pix=12,
        do_local_background=False,
    )
    t = aperture_photometry(sci, mask, None, [60.0], [40.0], config=cfg)
    assert t["flags_ap0"][0] == 0
    assert t["flags_ap1"][0] == PhotFlag.CR


def test_nan_pixels_are_no_data_and_excluded():
    sci = np.ones(SHAPE, np.float32)
    sci[40, 61] = np.nan
    t = aperture_photometry(sci, None, None, [60.0], [40.0], config=NO_BKG)
    assert t["flags"][0] & PhotFlag.NO_DATA
    np.testing.assert_allclose(t["flux"][0], math.pi * 9.0, rtol=1e-6)


def test_pixels_out_of_reach_of_every_aperture_and_annulus_change_nothing():
    """Only the pixels an aperture or annulus can touch are tested for NaN and mask bits."""
    rng = np.random.default_rng(3)
    sci = (100.0 + rng.normal(0.0, 5.0, SHAPE)).astype(np.float32)
    var = np.full(SHAPE, 25.0, np.float32)
    mask = np.zeros(SHAPE, np.int32)
    mask[40, 61] = MaskBit.BAD  # inside the first aperture
    x, y = [60.0, 30.0], [40.0, 70.0]
    cfg = ApertureConfig(radii_pix=(3.0,), radii_fwhm=(), ref_aperture=0, annulus_in_pix=6, annulus_out_pix=9)
    clean = aperture_photometry(sci, mask, var, x, y, config=cfg)
    far_sci, far_var, far_mask = sci.copy(), var.copy(), mask.copy()
    far_sci[5, 140], far_var[90, 5] = np.nan, np.inf  # > 9 px from both sources
    far_mask[2, 100] = MaskBit.BAD | MaskBit.NO_DATA
    far = aperture_photometry(far_sci, far_mask, far_var, x, y, config=cfg)
    for name in clean.colnames:
        np.testing.assert_array_equal(far[name], clean[name])
    assert clean["flags"][0] & PhotFlag.BAD and not clean["flags"][1] & PhotFlag.BAD


def test_truncated_aperture_at_the_border():
    sci = np.full(SHAPE, 3.0, np.float32)
    t = aperture_photometry(sci, None, None, [1.0, 70.0], [50.0, 99.5], config=NO_BKG)
    assert t["flags"][0] & PhotFlag.TRUNCATED and t["flags"][1] & PhotFlag.TRUNCATED
    # circle of r=3 centred 1 px from the left border (edge at x=-0.5): segment of depth 1.5 cut away
    d = 1.5
    seg = 9.0 * math.acos(d / 3.0) - d * math.sqrt(9.0 - d * d)
    np.testing.assert_allclose(t["flux"][0], 3.0 * (math.pi * 9.0 - seg), rtol=1e-6)
    # with a local background the constant is removed over the in-image area only
    t2 = aperture_photometry(sci, None, None, [1.0, 70.0], [50.0, 99.5], config=WITH_BKG)
    np.testing.assert_allclose(t2["flux"], 0.0, atol=1e-4)


def test_blend_flag_uses_radius_plus_margin():
    sci = np.zeros(SHAPE, np.float32)
    cfg = NO_BKG.model_copy(update={"blend_margin_fwhm": 1.0})
    # fwhm 2: margin 2 px. Pair at 4.5 px: blended for r=3 (3+2=5) but not for r=2 (2+2=4)
    t = aperture_photometry(
        sci, None, None, [50.0, 54.5, 110.0], [50.0, 50.0, 20.0], fwhm_pix=2.0, config=cfg
    )
    assert t["flags_ap0"][0] & PhotFlag.BLENDED == 0
    assert t["flags_ap1"][0] & PhotFlag.BLENDED and t["flags_ap1"][1] & PhotFlag.BLENDED
    assert t["flags_ap2"][2] & PhotFlag.BLENDED == 0


def test_x_y_order_on_unequal_sides():
    sci = np.zeros(SHAPE, np.float32)
    add_gaussian_stars(sci, [130.0], [20.0], [1000.0], fwhm_pix=2.0)
    t = aperture_photometry(
        sci,
        None,
        None,
        [130.0, 20.0],
        [20.0, 90.0],
        fwhm_pix=2.0,
        config=ApertureConfig(radii_fwhm=(3.0,), ref_aperture=0, do_local_background=False),
    )
    np.testing.assert_allclose(t["flux"], [1000.0, 0.0], atol=1e-3)


def test_noise_errors_are_calibrated_on_a_synthetic_frame():
    rng = np.random.default_rng(11)
    n = 150
    x = rng.uniform(25, 487, n)
    y = rng.uniform(25, 475, n)
    flux = 10 ** rng.uniform(3.0, 5.0, n)
    sci, var, _ = noisy_frame((500, 512), x, y, flux, fwhm_pix=3.0, sky_adu=200.0, rng=rng)
    t = aperture_photometry(
        sci,
        None,
        var,
        x,
        y,
        fwhm_pix=3.0,
        config=ApertureConfig(radii_fwhm=(1.0, 2.0, 3.0), ref_aperture=2),
        exptime_s=10.0,
    )
    ok = (t["flags"] & PhotFlag.BLENDED) == 0
    pull = ((t["flux"] - flux) / t["flux_err"])[ok]
    assert ok.sum() > 80
    assert abs(np.mean(pull)) < 0.3
    assert 0.85 < np.std(pull) < 1.15
    np.testing.assert_allclose(t["mag_inst"], -2.5 * np.log10(t["flux"] / 10.0))


def test_forced_photometry_below_the_detection_limit():
    """Stars with a peak S/N per pixel < 1 (undetectable) measured at their true positions."""
    rng = np.random.default_rng(5)
    gx, gy = np.meshgrid(np.arange(30, 480, 30.0), np.arange(30, 470, 30.0))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = np.full(x.size, 300.0)  # adu
    fwhm = 4.0  # sigma 1.70 px: peak = 300 / (2 pi 1.70^2) = 16.5 adu against 22 adu sky noise
    sci, var, model = noisy_frame(
        (500, 512), x, y, flux, fwhm_pix=fwhm, sky_adu=1000.0, gain_e_per_adu=2.0, read_noise_e=10.0, rng=rng
    )
    sky_noise = math.sqrt(1000.0 / 2.0 + 25.0)
    assert 300.0 / (2 * math.pi * (fwhm / 2.3548) ** 2) < sky_noise
    cfg = ApertureConfig(radii_fwhm=(1.0,), ref_aperture=0)
    t = aperture_photometry(sci, None, var, x, y, fwhm_pix=fwhm, config=cfg, forced=True)
    assert np.all(t["forced"]) and np.all(t["flags"] & PhotFlag.FORCED)
    # truth: the same aperture on the noise-free model (sky removed exactly)
    truth = aperture_photometry(
        (model - 1000.0).astype(np.float32),
        None,
        None,
        x,
        y,
        fwhm_pix=fwhm,
        config=cfg.model_copy(update={"do_local_background": False}),
    )["flux"]
    assert np.all(np.abs(truth / 300.0 - 0.93) < 0.02)
    pull = (t["flux"] - truth) / t["flux_err"]
    assert abs(np.mean(pull)) < 4 / math.sqrt(x.size)  # unbiased
    assert 0.8 < np.std(pull) < 1.2  # errors right
    assert np.median(t["snr"]) < 5  # indeed below a 5-sigma detection
    assert np.all(np.abs(pull) < 4.5)


def test_config_and_input_errors():
    with pytest.raises(ValidationError, match="ref_aperture"):
        ApertureConfig(radii_fwhm=(1.0,), ref_aperture=3)
    with pytest.raises(ValidationError, match="empty"):
        ApertureConfig(radii_fwhm=())
    sci = np.zeros(SHAPE, np.float32)
    with pytest.raises(BadInputError, match="FWHM"):
        aperture_photometry(sci, None, None, [10.0], [10.0], config=ApertureConfig())
    with pytest.raises(ConfigError, match="annulus inner radius"):
        aperture_photometry(
            sci,
            None,
            None,
            [10.0],
            [10.0],
            fwhm_pix=2.0,
            config=ApertureConfig(radii_fwhm=(5.0,), ref_aperture=0),
        )
    with pytest.raises(BadInputError, match="shape"):
        aperture_photometry(sci, np.zeros((3, 3), np.int32), None, [10.0], [10.0], config=NO_BKG)
    empty = aperture_photometry(sci, None, None, [], [], config=NO_BKG)
    assert len(empty) == 0 and "flux" in empty.colnames


def test_big_endian_input_as_read_from_fits():
    sci = np.ones(SHAPE, dtype=">f4")
    mask = np.zeros(SHAPE, dtype=">i2")
    t = aperture_photometry(sci, mask, sci, [50.0], [50.0], config=NO_BKG)
    np.testing.assert_allclose(t["flux"], math.pi * 9.0, rtol=1e-6)


def test_same_sums_as_photutils():
    from photutils.aperture import CircularAperture
    from photutils.aperture import aperture_photometry as pu_phot

    rng = np.random.default_rng(2)
    sci = rng.normal(100, 10, SHAPE).astype(np.float32)
    x = rng.uniform(10, 130, 20)
    y = rng.uniform(10, 90, 20)
    t = aperture_photometry(sci, None, None, x, y, config=NO_BKG)
    ref = pu_phot(sci.astype(float), CircularAperture(np.column_stack([x, y]), r=4.5), method="exact")
    np.testing.assert_allclose(t["flux_ap2"], ref["aperture_sum"], rtol=1e-6)


def test_annulus_statistics_match_a_brute_force_crowded_field():
    """Crowded field: every annulus pixel choice (ring, image, mask, neighbour discs) against a
    direct per-source computation on the full pixel grid."""
    rng = np.random.default_rng(21)
    shape = (120, 150)
    n = 80
    x = rng.uniform(-3, shape[1] + 3, n)  # some off the image: annuli cut by the border
    y = rng.uniform(-3, shape[0] + 3, n)
    sci = rng.normal(100.0, 5.0, shape).astype(np.float32)
    sci[rng.random(shape) < 0.002] = 1e4  # hot pixels for the clipping
    mask = np.zeros(shape, np.int32)
    mask[rng.random(shape) < 0.01] = MaskBit.CR
    cfg = ApertureConfig(radii_pix=(3.0,), radii_fwhm=(), ref_aperture=0, annulus_in_pix=6.0, annulus_out_pix=10.0,
                         neighbour_mask_fwhm=2.0, annulus_min_pixels=3)  # fmt: skip
    t = aperture_photometry(sci, mask, None, x, y, fwhm_pix=2.0, config=cfg)
    gy, gx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for i in range(n):
        d2 = (gx - x[i]) ** 2 + (gy - y[i]) ** 2
        use = (d2 >= 36.0) & (d2 < 100.0) & (mask == 0)
        for j in range(n):
            if j != i and (x[j] - x[i]) ** 2 + (y[j] - y[i]) ** 2 > 1.0:
                use &= (gx - x[j]) ** 2 + (gy - y[j]) ** 2 >= 16.0
        vals = sci[use].astype(float)
        if vals.size < 3:
            assert t["flags"][i] & PhotFlag.BKG_POOR
            continue
        _, med, std = sigma_clipped_stats(vals, sigma=3.0, maxiters=5)
        assert t["n_bkg_pix"][i] <= vals.size
        assert t["bkg"][i] == pytest.approx(med, abs=1e-4), i
        assert t["bkg_rms"][i] == pytest.approx(std, rel=1e-4), i


@pytest.mark.parametrize("case", ["plain", "nan_in_reach", "no_usable_annulus"])
def test_big_endian_planes_of_a_large_frame_give_the_native_answer(case):
    """Big-endian planes (views of a mapped FITS file) with few sources: only the pixels around
    them are converted; the table is the one of native planes to the last bit, sources at the
    edges and the whole-frame fallbacks (a NaN in reach, no usable annulus) included."""
    rng = np.random.default_rng(11)
    shape = (640, 720)
    x = np.array([0.2, 719.4, 350.6, 122.5, 600.0, 351.0])
    y = np.array([320.4, 639.3, 0.0, 200.7, 45.2, 8.0])
    sci = (200.0 + rng.normal(0.0, 8.0, shape)).astype(np.float32)
    sci = add_gaussian_stars(sci, x, y, np.full(x.size, 3e4), fwhm_pix=3.0).astype(np.float32)
    var = (sci / 2.0 + 30.0).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    mask[rng.integers(0, shape[0], 800), rng.integers(0, shape[1], 800)] = MaskBit.CR
    sci[5, 5] = np.nan  # out of reach: the frame's spread ignores it
    if case == "nan_in_reach":
        sci[202, 121] = np.nan
    if case == "no_usable_annulus":
        mask[:] |= MaskBit.BAD
    cfg = ApertureConfig(radii_fwhm=(1.0, 1.5, 2.0), annulus_in_fwhm=4.0, annulus_out_fwhm=6.0)
    native = aperture_photometry(sci, mask, var, x, y, fwhm_pix=3.0, config=cfg)
    big = aperture_photometry(
        sci.astype(">f4"), mask.astype(">i4"), var.astype(">f4"), x, y, fwhm_pix=3.0, config=cfg
    )
    assert native.colnames == big.colnames
    for name in native.colnames:
        assert native[name].tobytes() == big[name].tobytes(), name
    if case == "no_usable_annulus":
        assert np.all(native["flags"] & PhotFlag.BKG_POOR)


def test_a_call_on_big_endian_planes_owes_nothing_to_the_one_before():
    """Big-endian planes convert into planes the thread keeps from one call to the next: what
    the call before converted (NaN and masked pixels beside this call's sources) changes
    nothing."""
    rng = np.random.default_rng(12)
    shape = (500, 600)
    sci = (100.0 + rng.normal(0.0, 5.0, shape)).astype(np.float32)
    var = np.full(shape, 25.0, np.float32)
    mask = np.zeros(shape, np.int32)
    cfg = ApertureConfig(radii_pix=(3.0,), radii_fwhm=(), ref_aperture=0, annulus_in_pix=6, annulus_out_pix=9)
    first_sci = sci.copy()
    first_sci[100:140, 100:140] = np.nan  # around the first call's source, in reach of the second's
    first_mask = mask.copy()
    first_mask[100:140, 100:140] = MaskBit.BAD
    aperture_photometry(
        first_sci.astype(">f4"), first_mask.astype(">i4"), var.astype(">f4"), [120.0], [120.0], config=cfg
    )
    x, y = [132.0, 400.0], [135.0, 300.0]
    want = aperture_photometry(sci, mask, var, x, y, config=cfg)
    got = aperture_photometry(sci.astype(">f4"), mask.astype(">i4"), var.astype(">f4"), x, y, config=cfg)
    for name in want.colnames:
        assert want[name].tobytes() == got[name].tobytes(), name
