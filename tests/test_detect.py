"""Known-answer tests of darkroom.detect: SExtractor's own catalog and synthetic stars."""

from __future__ import annotations

import math
import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from numpy.testing import assert_allclose
from scipy.special import erf

from darkroom.detect import (
    BackgroundConfig,
    DetectConfig,
    QualityLimits,
    detect_sources,
    estimate_background,
    extract_frame,
    fit_gaussian_stamps,
    fit_moffat_stamps,
    flag_poor_frames,
    gaussian_kernel,
    measure_image_quality,
    plot_quality,
    select_stars,
    summarize_nights,
)
from darkroom.errors import BadInputError
from darkroom.maskbits import MaskBit
from darkroom.sim import SimConfig, build_scene, truth_image
from darkroom.sim.psf import render_stars

SIGMA_PER_FWHM = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ESO header has non-standard ESO-LOG cards
        return fits.getdata(path)


def render_gaussian_stars(shape, x, y, flux, fwhm_x, fwhm_y=None, *, sky=100.0, noise=0.0, seed=0):
    """Image ``(ny, nx)`` of pixel-integrated Gaussian stars at 0-based (x, y) plus sky and noise."""
    fwhm_y = fwhm_x if fwhm_y is None else fwhm_y
    ny, nx = shape
    img = np.full(shape, sky, dtype=np.float64)
    sx, sy = fwhm_x * SIGMA_PER_FWHM, fwhm_y * SIGMA_PER_FWHM
    half = int(6 * max(sx, sy)) + 2
    for xi, yi, fi in zip(np.atleast_1d(x), np.atleast_1d(y), np.atleast_1d(flux), strict=True):
        x0, x1 = max(0, int(xi) - half), min(nx, int(xi) + half + 1)
        y0, y1 = max(0, int(yi) - half), min(ny, int(yi) + half + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.arange(x0, x1)
        gy = np.arange(y0, y1)
        px = 0.5 * (erf((gx + 0.5 - xi) / (math.sqrt(2) * sx)) - erf((gx - 0.5 - xi) / (math.sqrt(2) * sx)))
        py = 0.5 * (erf((gy + 0.5 - yi) / (math.sqrt(2) * sy)) - erf((gy - 0.5 - yi) / (math.sqrt(2) * sy)))
        img[y0:y1, x0:x1] += fi * np.outer(py, px)
    if noise:
        img += np.random.default_rng(seed).normal(0.0, noise, shape)
    return img.astype(np.float32)


# ---------------------------------------------------------------- SExtractor ---------


@pytest.fixture(scope="module")
def sextractor(data_dir):
    folder = data_dir / "sep-vs-sextractor"
    image = _read(folder / "image.fits")
    back = _read(folder / "back.fits")
    rms = _read(folder / "rms.fits")
    # image.cat columns (see its header): 1 NUMBER, 2-3 X/Y_IMAGE (1-based), 4-5 XWIN/YWIN_IMAGE,
    # 6-8 X2/Y2/XY_IMAGE, 13-14 FLUX_APER/FLUXERR_APER (10 px diameter), 19 FLUX_RADIUS(0.5), 21 FLAGS.
    ref = np.loadtxt(folder / "image.cat")
    return image, back, rms, ref[np.argsort(ref[:, 2])]


def _sextractor_like(image):
    """darkroom settings matching data/sep-vs-sextractor/default.sex (sep's test_vs_sextractor)."""
    bkg = estimate_background(image, config=BackgroundConfig(box_size_pix=64, filter_size=3))
    config = DetectConfig(
        threshold_sigma=1.5,
        noise="global",
        filter="sextractor_default",
        min_area_pix=5,
        deblend_cont=1.0,
        clean=True,
        clean_param=1.0,
        aperture_radius_pix=5.0,
    )
    cat = detect_sources(image, background=bkg, config=config)
    cat.sort("y_iso")
    return bkg, cat


def test_background_matches_sextractor(sextractor):
    image, back, rms, _ = sextractor
    bkg, _ = _sextractor_like(image)
    # MANIFEST: background rtol 1e-5, rms rtol 1e-4 (sep test_vs_sextractor)
    assert_allclose(bkg.level_adu, back, rtol=1e-5)
    assert_allclose(bkg.rms_adu, rms, rtol=1e-4)


def test_sources_and_fluxes_match_sextractor(sextractor):
    image, _, _, ref = sextractor
    _, cat = _sextractor_like(image)
    assert len(cat) == 65
    # SExtractor's X_IMAGE is 1-based; darkroom (sep) is 0-based.
    assert_allclose(cat["x_iso"], ref[:, 1] - 1.0, atol=1e-3)
    assert_allclose(cat["y_iso"], ref[:, 2] - 1.0, atol=1e-3)
    assert_allclose(cat["x2_pix2"], ref[:, 5], atol=1e-4)
    assert_allclose(cat["y2_pix2"], ref[:, 6], atol=1e-4)
    assert_allclose(cat["xy_pix2"], ref[:, 7], atol=1e-4)
    assert_allclose(cat["flux_aper_adu"], ref[:, 12], rtol=2e-4)
    assert_allclose(cat["flux_aper_err_adu"], ref[:, 13], rtol=1e-5)
    assert np.count_nonzero(np.asarray(cat["aper_flag"]) & 16) == 4  # sep.APER_TRUNC
    assert np.count_nonzero(np.asarray(cat["aper_flag"]) & 8) == 0  # sep.APER_HASMASKED


def test_windowed_centroids_close_to_sextractor_xwin(sextractor):
    image, _, _, ref = sextractor
    _, cat = _sextractor_like(image)
    clean = (ref[:, 20] == 0) & (ref[:, 18] > 0) & np.isfinite(cat["x_win"])
    assert clean.sum() >= 40
    # SExtractor's window uses its own half-light radius; ours differs by ~5%, which moves
    # the windowed centroid by a few thousandths of a pixel (measured median 0.003 px).
    dx = np.asarray(cat["x_win"])[clean] - (ref[clean, 3] - 1.0)
    dy = np.asarray(cat["y_win"])[clean] - (ref[clean, 4] - 1.0)
    assert np.median(np.abs(dx)) < 0.01
    assert np.median(np.abs(dy)) < 0.01
    ratio = np.asarray(cat["r_half_pix"])[clean] / ref[clean, 18]
    assert_allclose(np.median(ratio), 1.0, atol=0.1)


def test_catalog_columns_describe_themselves(sextractor):
    image, *_ = sextractor
    _, cat = _sextractor_like(image)
    assert str(cat["x"].unit) == "pix"
    assert str(cat["flux_aper_adu"].unit) == "adu"
    assert "0-based" in cat["x"].description
    assert all(cat[name].description for name in cat.colnames)


# ---------------------------------------------------------------- synthetic ---------


@pytest.fixture(scope="module")
def star_field():
    """101 x 103 image with 40 Gaussian stars (FWHM 3.2 px) on a sky of 500 adu, noise 5 adu."""
    rng = np.random.default_rng(42)
    shape = (101, 103)  # unequal sides catch x/y swaps
    n = 40
    x = rng.uniform(8, shape[1] - 9, n)
    y = rng.uniform(8, shape[0] - 9, n)
    # keep stars apart so that they are not blended
    keep = [0]
    for i in range(1, n):
        if np.min(np.hypot(x[keep] - x[i], y[keep] - y[i])) > 9:
            keep.append(i)
    x, y = x[keep], y[keep]
    flux = rng.uniform(5e3, 5e4, len(x))
    image = render_gaussian_stars(shape, x, y, flux, 3.2, sky=500.0, noise=5.0, seed=1)
    return image, x, y, flux


def _nearest(cat, x, y):
    d = np.hypot(np.asarray(cat["x"])[:, None] - x[None, :], np.asarray(cat["y"])[:, None] - y[None, :])
    return d.argmin(axis=0), d.min(axis=0)


def test_synthetic_positions_fwhm_and_sky(star_field):
    image, x, y, _ = star_field
    result = extract_frame(
        image,
        background_config=BackgroundConfig(box_size_pix=32),
        detect_config=DetectConfig(threshold_sigma=5.0),
        pixel_scale_arcsec=0.5,
    )
    cat = result.catalog
    _idx, dist = _nearest(cat, x, y)
    assert len(cat) == len(x)
    # windowed centroids of isolated Gaussians with S/N > 100: a few hundredths of a pixel
    assert np.median(dist) < 0.02
    assert np.max(dist) < 0.1
    assert cat.meta["centroid"] == "window"  # well sampled: windowed centroids
    q = result.quality
    # the FWHM before pixel sampling (the Moffat fit integrates over pixels and reaches the
    # Gaussian limit, beta -> infinity): 3.2 px; measured 3.208 (the pixel-sampled PSF would be
    # sqrt(3.2^2 + 2.3548^2 / 12) = 3.27 px)
    assert q.fwhm_pix == pytest.approx(3.2, rel=0.01)
    assert cat.meta["psf_beta"] > 20  # Gaussian stars: a Moffat profile of large beta
    assert q.fwhm_arcsec == pytest.approx(0.5 * q.fwhm_pix)
    assert q.ellipticity < 0.05
    assert q.sky_adu == pytest.approx(500.0, abs=1.0)
    assert q.sky_rms_adu == pytest.approx(5.0, rel=0.1)
    assert q.n_sources == len(x)
    assert q.n_saturated == 0


def test_synthetic_elliptical_stars():
    rng = np.random.default_rng(3)
    gx, gy = np.meshgrid(np.arange(12, 190, 22.0), np.arange(12, 140, 22.0))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    image = render_gaussian_stars((151, 201), x, y, np.full(x.size, 2e4), 4.0, 2.8, sky=200.0, noise=3.0)
    result = extract_frame(image, background_config=BackgroundConfig(box_size_pix=32))
    # a = sigma_x, b = sigma_y of the pixel-sampled PSF (variance + 1/12 px^2 per axis)
    var_x = (4.0 * SIGMA_PER_FWHM) ** 2 + 1.0 / 12.0
    var_y = (2.8 * SIGMA_PER_FWHM) ** 2 + 1.0 / 12.0
    assert result.quality.ellipticity == pytest.approx(1.0 - math.sqrt(var_y / var_x), abs=0.02)
    # the geometric mean of the major- and minor-axis FWHM of the elliptical Moffat fits
    # (measured 3.352 against 3.347), and their 1 - minor / major (measured 0.299)
    assert result.quality.fwhm_pix == pytest.approx(math.sqrt(4.0 * 2.8), rel=0.01)
    assert result.catalog.meta["psf_ellipticity"] == pytest.approx(1.0 - 2.8 / 4.0, abs=0.01)


def test_mask_plane_background_and_saturation(star_field):
    image, x, y, flux = star_field
    image = image.copy()
    mask = np.zeros(image.shape, dtype=np.int32)
    # a bad block filling one 32 x 32 mesh box at 5000 adu must not lift the background when masked
    image[64:96, 0:32] = 5000.0
    mask[64:96, 0:32] = MaskBit.BAD
    config = BackgroundConfig(box_size_pix=32, filter_size=1)
    bkg_masked = estimate_background(image, mask=mask, config=config)
    bkg_plain = estimate_background(image, config=config)
    assert np.max(np.abs(bkg_masked.level_adu - 500.0)) < 5.0
    assert np.max(bkg_plain.level_adu) > 1000.0
    # the brightest star is flagged SAT in the mask plane -> one saturated source
    brightest = int(np.argmax(flux))
    iy, ix = round(y[brightest]), round(x[brightest])
    mask[iy, ix] |= MaskBit.SAT
    cat = detect_sources(image, background=bkg_masked, mask=mask, config=DetectConfig(threshold_sigma=5.0))
    idx, _dist = _nearest(cat, x, y)
    assert np.count_nonzero(cat["saturated"]) == 1
    assert bool(cat["saturated"][idx[brightest]])
    # the masked block is not detected as a source
    assert not np.any((cat["x"] < 32) & (cat["y"] > 63) & (cat["y"] < 96))
    # a saturation level below the brightest peaks flags those stars too
    peak_total = np.asarray(cat["peak_adu"]) + np.asarray(cat["sky_adu"])
    level = float(np.sort(peak_total)[-3])
    cat2 = detect_sources(
        image,
        background=bkg_masked,
        mask=mask & MaskBit.BAD,
        config=DetectConfig(threshold_sigma=5.0),
        saturation_adu=level,
    )
    assert np.count_nonzero(cat2["saturated"]) == 3
    q = measure_image_quality(cat2, bkg_masked)
    assert q.n_saturated == 3
    assert q.fwhm_arcsec is None


def test_pixel_masks_are_the_bad_pixel_masks_of_each_step(star_field):
    from darkroom.detect.background import bad_pixel_mask, mask_bits_set, pixel_masks

    image = star_field[0].copy()
    image[5, 7] = np.nan
    rng = np.random.default_rng(1)
    mask = np.where(rng.random(image.shape) < 0.01, rng.integers(1, 64, image.shape), 0).astype(np.int32)
    bg_bits, det_bits = int(MaskBit.BAD | MaskBit.SAT | MaskBit.EDGE), int(MaskBit.BAD | MaskBit.CR)
    for m in (mask, mask.astype(">i4"), mask.astype(np.uint8)):
        masks = pixel_masks(image, m, bg_bits, det_bits)
        assert np.array_equal(masks.background, bad_pixel_mask(image, m, bg_bits))
        assert np.array_equal(masks.detect, bad_pixel_mask(image, m, det_bits))
        assert np.array_equal(masks.saturated, mask_bits_set(m, MaskBit.SAT))
        assert not masks.finite
    boolean = mask != 0
    masks = pixel_masks(image, boolean, bg_bits, det_bits)
    assert np.array_equal(masks.detect, boolean | ~np.isfinite(image))
    assert masks.saturated is None
    clean = star_field[0]
    masks = pixel_masks(clean, np.zeros(clean.shape, np.int16), bg_bits, det_bits)
    assert masks.background is None and masks.detect is None and masks.saturated is None and masks.finite
    # infinities of both signs; finite pixels whose sum overflows
    signed = clean.astype(np.float32)
    signed[0, 0], signed[1, 1] = np.inf, -np.inf
    masks = pixel_masks(signed, None, bg_bits, det_bits)
    assert not masks.finite and np.array_equal(masks.detect, ~np.isfinite(signed))
    huge = np.full((8, 8), 3e38, dtype=np.float32)
    masks = pixel_masks(huge, np.zeros(huge.shape, np.int32), bg_bits, det_bits)
    assert masks.finite and masks.background is None
    # extract_frame finds them once for both steps: the same catalogue as the steps called apart
    mask[int(star_field[2][0]), int(star_field[1][0])] |= MaskBit.SAT
    frame = extract_frame(image, mask=mask)
    bkg = estimate_background(image, mask=mask)
    cat = detect_sources(image, background=bkg, mask=mask)
    assert np.array_equal(frame.background.level_adu, bkg.level_adu)
    assert frame.catalog.meta == cat.meta
    for name in cat.colnames:
        assert np.array_equal(frame.catalog[name], cat[name], equal_nan=True), name


def test_gaussian_kernel_is_normalised():
    k = gaussian_kernel(3.0)
    assert k.shape == (7, 7)
    assert k.sum() == pytest.approx(1.0)
    assert k[3, 3] == k.max()


def test_bad_inputs_raise():
    with pytest.raises(BadInputError, match="2-D"):
        estimate_background(np.zeros((3, 4, 5)))
    with pytest.raises(BadInputError, match="every pixel"):
        estimate_background(np.zeros((64, 64)), mask=np.ones((64, 64), dtype=bool))
    with pytest.raises(BadInputError, match="mask shape"):
        estimate_background(np.zeros((64, 64)), mask=np.zeros((32, 64), dtype=np.int32))
    with pytest.raises(BadInputError, match="background shape"):
        detect_sources(np.zeros((64, 64)), background=estimate_background(np.zeros((32, 32))))


def test_empty_image_gives_empty_catalog():
    image = np.random.default_rng(0).normal(100.0, 3.0, (64, 80)).astype(np.float32)
    cat = detect_sources(image, config=DetectConfig(threshold_sigma=50.0))
    assert len(cat) == 0
    assert "fwhm_pix" in cat.colnames


# ---------------------------------------------------------------- quality filter ---------


def _figures():
    times = Time("2025-06-02T04:00:00") + np.arange(8) * 600.0 * u.s
    times = Time([*list(times.isot), "2025-06-03T04:00:00"])
    return Table(
        {
            "time": times,
            "fwhm_pix": [2.5, 2.6, 2.4, 6.0, 2.5, 2.6, np.nan, 2.5, 3.0],
            "fwhm_arcsec": [1.7, 1.8, 1.6, 4.0, 1.7, 1.8, np.nan, 1.7, 2.0],
            "ellipticity": [0.05, 0.06, 0.05, 0.1, 0.45, 0.05, np.nan, 0.05, 0.05],
            "sky_adu": [1500.0, 1510, 1490, 1505, 1500, 9000, 1500, 1500, 1400],
            "sky_rms_adu": [10.0] * 9,
            "n_sources": [300, 310, 305, 150, 290, 120, 2, 300, 280],
            "n_saturated": [1] * 9,
        }
    )


def test_flag_poor_frames_reasons():
    limits = QualityLimits(max_fwhm_arcsec=3.0, max_ellipticity=0.3, min_n_sources=10, max_sky_adu=5000.0)
    out = flag_poor_frames(_figures(), limits=limits)
    assert out["poor"].tolist() == [False, False, False, True, True, True, True, False, False]
    assert out["poor_reason"][6] == "n_sources 2 < 10"  # unknown FWHM/ellipticity do not count
    assert "fwhm_arcsec 4" in out["poor_reason"][3]
    assert "ellipticity 0.45" in out["poor_reason"][4]
    assert "sky_adu 9e+03" in out["poor_reason"][5]
    assert "n_sources 2" in out["poor_reason"][6]
    assert out["poor_reason"][0] == ""
    ratio = flag_poor_frames(_figures(), limits=QualityLimits(max_ellipticity=None, max_fwhm_ratio=1.5))
    assert ratio["poor"].tolist() == [False, False, False, True, False, False, True, False, False]


def test_summarize_nights_and_plot(tmp_path):
    figures = flag_poor_frames(_figures(), limits=QualityLimits(max_fwhm_arcsec=3.0))
    summary = summarize_nights(figures)
    assert summary["night"].tolist() == ["2025-06-01", "2025-06-02"]
    assert summary["n_frames"].tolist() == [8, 1]
    # FWHM 4 arcsec, ellipticity 0.45 (default limit 0.3), 2 sources (default limit 10)
    assert summary["n_poor"].tolist() == [3, 0]
    assert summary["fwhm_pix_median"][0] == pytest.approx(2.5)
    assert summary["time_first"][0] == "2025-06-02T04:00:00.000"
    path = plot_quality(figures, tmp_path / "plots" / "quality.png", title="test night")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (700, 800)


def test_hot_pixels_are_sharp_and_undersampled_stars_have_no_ellipticity():
    rng = np.random.default_rng(8)
    gx, gy = np.meshgrid(np.arange(15, 190, 30.0), np.arange(15, 140, 30.0))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    n = x.size
    image = render_gaussian_stars((151, 201), x, y, np.full(n, 3e4), 3.0, sky=100.0, noise=2.0)
    hot_x, hot_y = [30, 90, 150], [30, 90, 60]  # between the stars
    image[hot_y, hot_x] += 5000.0  # single hot pixels
    cat = extract_frame(image, background_config=BackgroundConfig(box_size_pix=32)).catalog
    _, dist_hot = _nearest(cat, np.array(hot_x, float), np.array(hot_y, float))
    assert np.all(dist_hot < 0.5)
    hot = (
        np.hypot(np.asarray(cat["x"])[:, None] - hot_x, np.asarray(cat["y"])[:, None] - hot_y).min(axis=1)
        < 0.5
    )
    assert np.all(cat["sharp"][hot])
    assert not np.any(cat["sharp"][~hot])
    # stars of 0.9 px FWHM: the shape is the pixel grid's, no ellipticity is reported
    small = render_gaussian_stars((151, 201), x, y, np.full(n, 3e4), 0.9, sky=100.0, noise=2.0)
    q = extract_frame(small, background_config=BackgroundConfig(box_size_pix=32)).quality
    assert q.fwhm_pix < 1.5
    assert q.ellipticity is None


# ---------------------------------------------------------------- PSF fits and unbiased FWHM ---------


def _moffat_field(fwhm, beta, *, shape=(201, 261), spacing=24.0, sky=100.0, noise=2.0, seed=4):
    """Pixel-integrated Moffat stars (darkroom.sim's renderer, 9 x 9 sub-pixels) on a grid."""
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(12, shape[1] - 12, spacing), np.arange(12, shape[0] - 12, spacing))
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    image = np.full(shape, sky)
    flux = rng.uniform(2e3, 2e4, x.size)
    render_stars(image, x, y, flux, np.full(x.size, fwhm), beta=beta, oversample=9, wing_tolerance=0.1)
    image += rng.normal(0.0, noise, shape)
    return image.astype(np.float32), x, y


@pytest.mark.parametrize(("fwhm", "beta"), [(0.8, 3.0), (1.5, 2.5), (3.0, 3.0), (4.0, 4.5)])
def test_moffat_fit_recovers_fwhm_and_beta(fwhm, beta):
    image, x, y = _moffat_field(fwhm, beta)
    rng = np.random.default_rng(0)
    # starting 0.3 px off, at the half-light (Gaussian-equivalent) FWHM
    fits = fit_moffat_stamps(
        image - 100.0, x + rng.normal(0, 0.3, x.size), y + rng.normal(0, 0.3, x.size), fwhm_pix=1.26 * fwhm
    )
    assert fits.ok.all()
    # measured 1.003-1.004 x the FWHM, beta within 1 %, positions within 0.003 px
    assert np.median(fits.fwhm_pix) == pytest.approx(fwhm, rel=0.01)
    assert np.median(fits.beta) == pytest.approx(beta, rel=0.05)
    assert np.median(np.hypot(fits.x - x, fits.y - y)) < 0.01
    assert np.median(fits.ellipticity) < 0.02
    # a Gaussian fitted to the same stars is wider (its wings pull it: 1.06-1.31 x here)
    gauss = fit_gaussian_stamps(image - 100.0, x, y, fwhm_pix=fwhm, half_size_pix=max(2, math.ceil(2 * fwhm)))
    assert np.median(gauss.fwhm_pix) > 1.04 * fwhm


@pytest.mark.parametrize(("seeing_arcsec", "beta"), [(1.8, 3.0), (1.2, 4.5)])
def test_frame_fwhm_matches_the_simulator_truth(seeing_arcsec, beta):
    """darkroom.sim frame (Moffat PSF, 0.67 arcsec/px): the quality FWHM is the truth FWHM."""
    config = SimConfig(
        shape=(512, 640),
        n_science=1,
        n_bias=0,
        n_dark=0,
        n_flat=0,
        seeing_fwhm_arcsec=seeing_arcsec,
        moffat_beta=beta,
        seeing_field_variation=0.0,  # one FWHM over the frame
        seed=5,
    )
    scene = build_scene(config)
    image = truth_image(scene, 0)
    noise_adu = np.sqrt(
        np.maximum(image, 0) / config.gain_e_per_adu + (config.read_noise_e / config.gain_e_per_adu) ** 2
    )
    image = (image + np.random.default_rng(1).normal(0.0, 1.0, image.shape) * noise_adu).astype(np.float32)
    truth_fwhm = scene.science.fwhm_arcsec[0] / config.pixel_scale_arcsec
    result = extract_frame(image, pixel_scale_arcsec=config.pixel_scale_arcsec)
    cat = result.catalog
    assert cat.meta["n_psf_stars"] >= 10
    # measured within 0.5 % of the truth
    assert result.quality.fwhm_pix == pytest.approx(truth_fwhm, rel=0.02)
    assert result.quality.fwhm_arcsec == pytest.approx(scene.science.fwhm_arcsec[0], rel=0.02)
    assert cat.meta["psf_beta"] == pytest.approx(beta, rel=0.1)
    # every star's fwhm_pix: its half-light radius converted with the frame's profile
    stars = select_stars(cat, shape=image.shape)
    assert np.median(np.asarray(cat["fwhm_pix"])[stars]) == pytest.approx(truth_fwhm, rel=0.05)
    # without the PSF fit, the half-light radius gives the FWHM of a Gaussian: 1.26 x for beta 3
    plain = extract_frame(image, detect_config=DetectConfig(psf_n_stars=0))
    assert plain.quality.fwhm_pix > 1.15 * truth_fwhm


def test_undersampled_stars_get_fitted_centroids():
    """Stars 0.8 px wide: windowed centroids lock onto pixel centres, Gaussian fits do not."""
    image, x, y = _moffat_field(0.8, 3.0, spacing=12.0)
    background = BackgroundConfig(box_size_pix=32)
    auto = extract_frame(image, background_config=background, detect_config=DetectConfig(min_area_pix=2))
    window = extract_frame(
        image, background_config=background, detect_config=DetectConfig(min_area_pix=2, centroid_fit="never")
    )
    assert auto.catalog.meta["centroid"] == "gauss"
    assert window.catalog.meta["centroid"] == "window"
    _, dist_auto = _nearest(auto.catalog, x, y)
    _, dist_window = _nearest(window.catalog, x, y)
    assert len(auto.catalog) == len(x)
    # measured median 0.027 px against 0.16 px for the windowed centroids
    assert np.median(dist_auto) < 0.04
    assert np.median(dist_window) > 0.1
    # and the PSF fit measures the FWHM of these stars, measured 0.801 px
    assert auto.quality.fwhm_pix == pytest.approx(0.8, rel=0.02)
