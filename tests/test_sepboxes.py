"""Extraction in boxes (darkroom.sepboxes) against one sep extraction of the whole frame, its
reference: detect_sources finds the same sources with the same values whichever way it runs,
on the calibrated ARCSAT night, the other folders' real frames, the SDSS M2 frames (crowded: the
whole frame is extracted once) and simulated fields that break the comfortable assumptions
(undersampled stars, saturated stars with SAT pixels, masked columns, blends, stars on the
edges, one global noise value, sextractor's kernel, no filter). And the cells it extracts around
hold every pixel sep detects on the whole frame."""

from __future__ import annotations

import bz2
import glob
import io
import math

import numpy as np
import pytest
import sep
from astropy.io import fits
from scipy.special import erf

import darkroom.detect.extract as extract_module
from darkroom.detect import detect_sources
from darkroom.detect.background import estimate_background
from darkroom.detect.settings import DetectConfig
from darkroom.maskbits import MaskBit
from darkroom.sepboxes import detectable_cells, separable

# the columns that follow from the centroid: sep adds the box's offset to a box centroid, one
# rounding more than on the whole frame (a few 1e-13 pixel)
_POSITIONS = ("x", "y", "x_iso", "y_iso", "x_win", "y_win")
# what sep measures on a source's isophotal pixels, which a deblended pair shares at random
_ISOPHOTAL = ("x2_pix2", "y2_pix2", "xy_pix2", "a_pix", "b_pix", "theta_rad", "flux_iso_adu", "n_pix")


def _whole_frame_only(monkeypatch) -> None:
    monkeypatch.setattr(extract_module, "detectable_cells", lambda *a, **k: None)


def _counted_extractions(monkeypatch) -> list[tuple[int, int]]:
    shapes: list[tuple[int, int]] = []
    real = sep.extract

    def counted(data, *a, **k):
        shapes.append(data.shape)
        return real(data, *a, **k)

    monkeypatch.setattr(extract_module.sep, "extract", counted)
    return shapes


def both_ways(monkeypatch, data, **kw):
    """detect_sources(data, **kw) in boxes and on the whole frame; the image shapes sep saw in
    the first."""
    with monkeypatch.context() as m:
        shapes = _counted_extractions(m)
        boxed = detect_sources(data, **kw)
    with monkeypatch.context() as m:
        _whole_frame_only(m)
        whole = detect_sources(data, **kw)
    return boxed, whole, shapes


def assert_same_catalog(boxed, whole) -> None:
    """The same sources with the same values; deblended ones (flag 1) to the deblender's random
    split of their shared pixels (isophotal values within 5 %, two pixels, 0.1 px^2 of cross
    moment, orientation not compared; positions and other values 1 %, 0.01 px)."""
    assert len(boxed) == len(whole)
    assert boxed.colnames == whole.colnames
    np.testing.assert_array_equal(boxed["flag"], whole["flag"])
    blended = (np.asarray(whole["flag"]) & 1) > 0
    for name in boxed.colnames:
        a, b = np.asarray(boxed[name]), np.asarray(whole[name])
        for rows, exact in ((~blended, True), (blended, False)):
            x, y = a[rows], b[rows]
            if not exact and name == "theta_rad":
                continue  # the orientation of a nearly round isophote is not defined to a few %
            if not exact and name in _ISOPHOTAL:
                atol = {"n_pix": 2.0, "xy_pix2": 0.1}.get(name, 0.0)
                np.testing.assert_allclose(x, y, rtol=0.05, atol=atol, err_msg=name)
            elif name in _POSITIONS:
                np.testing.assert_allclose(
                    x, y, rtol=0, atol=1e-9 if exact else 0.01, equal_nan=True, err_msg=name
                )
            elif a.dtype.kind == "f":
                np.testing.assert_allclose(
                    x, y, rtol=1e-9 if exact else 0.01, atol=0, equal_nan=True, err_msg=name
                )
            else:
                np.testing.assert_array_equal(x, y, err_msg=name)
    assert boxed.meta["centroid"] == whole.meta["centroid"]
    rel = 1e-9 if not blended.any() else 0.01
    for key in ("psf_fwhm_pix", "psf_beta", "n_psf_stars", "sky_adu", "sky_rms_adu"):
        assert boxed.meta[key] == pytest.approx(whole.meta[key], rel=rel, nan_ok=True), key


# ------------------------------------------------------------------ real frames


def test_arcsat_night_in_boxes_equals_the_whole_frame(arcsat_images, monkeypatch):
    """The calibrated ARCSAT frames (~25 stars, bad columns and SAT pixels in the MASK plane),
    with the extract stage's settings: the same catalogue, from boxes."""
    from darkroom.io.calibrated import read_calibrated

    repo, stage, paths = arcsat_images
    cfg = stage.config
    for rel in paths[::8]:
        image = read_calibrated(repo.root / rel, planes=("SCI", "MASK"))
        bkg = estimate_background(image.sci, mask=image.mask, config=cfg.background)
        boxed, whole, shapes = both_ways(
            monkeypatch, image.sci, background=bkg, mask=image.mask, config=cfg.detect
        )
        assert 5 <= len(whole) <= 60, rel  # 43 Bet Com: 8 sources; XO-1: ~25
        assert len(shapes) > 1 and image.sci.shape not in shapes, rel  # boxes, not the frame
        assert_same_catalog(boxed, whole)


OTHER_FRAMES = (
    "ccdproc-saao-and-sip/a8280271.fits",
    "astroscrappy-gmos-cr/gmos.fits",
    "feder-eyuma-astrometry-photcal/thumbnail-image.fit.gz",
    "feder-eyuma-astrometry-photcal/cutout_for_fwhm_test.fits",
    "msumastro-header-variants/aspen_trimmed.fit",
    "sep-vs-sextractor/image.fits",
)


def _frame(path) -> np.ndarray:
    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
        return np.ascontiguousarray(hdu.data, dtype=np.float32)


@pytest.mark.parametrize("name", OTHER_FRAMES)
@pytest.mark.parametrize("threshold", [1.5, 3.0])
def test_other_real_frames_in_boxes_equal_the_whole_frame(data_dir, monkeypatch, name, threshold):
    img = _frame(data_dir / name)
    bkg = estimate_background(img)
    config = DetectConfig(threshold_sigma=threshold)
    boxed, whole, _ = both_ways(monkeypatch, img, background=bkg, config=config)
    assert len(whole) > 0, name
    assert_same_catalog(boxed, whole)


@pytest.mark.parametrize("name", OTHER_FRAMES)
def test_a_wide_filter_in_boxes_equals_the_whole_frame(data_dir, monkeypatch, name):
    """A 4.5-pixel Gaussian filter (11 x 11, wider than the 7-tap kernel's: the general one, and
    boxes that must keep 5 pixels from their inner edges) on the real frames."""
    img = _frame(data_dir / name)
    config = DetectConfig(filter_fwhm_pix=4.5)
    assert extract_module._kernel(config).shape == (11, 11)
    boxed, whole, _ = both_ways(monkeypatch, img, background=estimate_background(img), config=config)
    assert len(whole) > 0, name
    assert_same_catalog(boxed, whole)


def test_sdss_m2_frames_crowded_are_extracted_whole(data_dir, monkeypatch):
    """M2's crowded SDSS frames (2048 x 1489, thousands of sources): boxes would cost more than
    the frame, so sep runs once on the whole frame, as before."""
    paths = sorted(glob.glob(str(data_dir / "sdss-frames-m2" / "frame-[gr]-002583-2-0136.fits.bz2")))
    assert len(paths) == 2
    for p in paths:
        with fits.open(io.BytesIO(bz2.decompress(open(p, "rb").read()))) as hdul:
            img = hdul[0].data.astype(np.float32)
        boxed, whole, shapes = both_ways(monkeypatch, img, config=DetectConfig())
        assert len(whole) > 1000
        assert shapes == [img.shape]
        assert_same_catalog(boxed, whole)


def test_detectable_cells_hold_every_pixel_sep_detects(arcsat_images, data_dir):
    """Each pixel of sep's segmentation map on the whole frame lies in a marked cell (the cells
    are a superset of what sep can detect), for the ARCSAT frames and the other real frames,
    with kernels of 7 taps or fewer (the padded kernel) and of 9 (the general one)."""
    from darkroom.io.calibrated import read_calibrated

    repo, _, paths = arcsat_images
    frames = [read_calibrated(repo.root / rel, planes=("SCI",)).sci for rel in paths[::20]]
    frames += [_frame(data_dir / name) for name in OTHER_FRAMES]
    kernels = [
        extract_module.gaussian_kernel(3.0),  # 7 x 7
        extract_module.gaussian_kernel(4.0),  # 9 x 9
        extract_module.SEXTRACTOR_DEFAULT_KERNEL,  # 3 x 3
    ]
    for img in frames:
        bkg = sep.Background(img)
        sub = (img - bkg.back()).astype(np.float32)
        err = bkg.rms().astype(np.float32)
        for kernel in kernels:
            for thresh in (1.5, 3.0):
                _, seg = sep.extract(
                    sub, thresh, err=err, filter_kernel=kernel, filter_type="conv", segmentation_map=True
                )
                cells = detectable_cells(sub, thresh, noise=err, mask=None, kernel=kernel, cell=16)
                ys, xs = np.nonzero(seg)
                assert ys.size > 0
                assert cells[ys // 16, xs // 16].all()
                if thresh == 3.0:  # and not much more (at 1.5 sigma the noise marks cells too)
                    held = len(np.unique(np.column_stack([ys // 16, xs // 16]), axis=0))
                    assert cells.sum() <= 3 * held + 10


# ------------------------------------------------------------------ simulated fields


def _pixel_gaussian(shape, stars, fwhm, *, sky=200.0, noise=5.0, seed=0) -> np.ndarray:
    """Pixel-integrated Gaussian stars (x, y, flux) on a flat sky with Gaussian noise [adu]."""
    ny, nx = shape
    img = np.full(shape, sky)
    s = fwhm / (2 * math.sqrt(2 * math.log(2))) * math.sqrt(2.0)
    half = int(4 * fwhm) + 2
    for x, y, flux in stars:
        x0, y0 = round(x), round(y)
        gx = np.arange(max(0, x0 - half), min(nx, x0 + half + 1))
        gy = np.arange(max(0, y0 - half), min(ny, y0 + half + 1))
        px = 0.5 * (erf((gx + 0.5 - x) / s) - erf((gx - 0.5 - x) / s))
        py = 0.5 * (erf((gy + 0.5 - y) / s) - erf((gy - 0.5 - y) / s))
        img[gy[0] : gy[-1] + 1, gx[0] : gx[-1] + 1] += flux * np.outer(py, px)
    img += np.random.default_rng(seed).normal(0.0, noise, shape)
    return img.astype(np.float32)


def _field(seed: int, *, n=40, fwhm=3.0, shape=(800, 900)):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    stars = [
        (rng.uniform(-2, nx + 1), rng.uniform(-2, ny + 1), 10 ** rng.uniform(2.5, 5.0)) for _ in range(n)
    ]
    stars += [(200.0, 150.0, 2e5), (204.5, 152.0, 4e4), (230.0, 160.0, 3e3)]  # a blend, a neighbour
    stars += [(0.3, 100.0, 5e4), (nx - 1.2, ny - 0.8, 5e4)]  # on the edges
    return _pixel_gaussian(shape, stars, fwhm, seed=seed)


@pytest.mark.parametrize(
    "case",
    [
        "default",
        "undersampled",
        "saturated with SAT pixels",
        "masked columns",
        "global noise",
        "sextractor kernel",
        "no filter",
        "low threshold",
    ],
)
def test_simulated_fields_in_boxes_equal_the_whole_frame(monkeypatch, case):
    img = _field(7, fwhm=1.1 if case == "undersampled" else 3.0)
    mask = None
    kw: dict = {}
    if case == "saturated with SAT pixels":
        top = np.float32(5000.0)
        sat = img >= top
        img = np.minimum(img, top)
        mask = np.where(sat, np.uint16(MaskBit.SAT), np.uint16(0))
        kw["saturation_adu"] = float(top)
        assert sat.sum() > 10
    if case == "masked columns":
        mask = np.zeros(img.shape, np.uint16)
        mask[:, 150:152] = MaskBit.BAD
        mask[300:, 400] = MaskBit.BAD
    config = DetectConfig(
        noise="global" if case == "global noise" else "map",
        filter={"sextractor kernel": "sextractor_default", "no filter": "none"}.get(case, "gauss"),
        threshold_sigma=1.5 if case == "low threshold" else 3.0,
    )
    boxed, whole, shapes = both_ways(monkeypatch, img, mask=mask, config=config, **kw)
    assert len(whole) >= 30
    assert_same_catalog(boxed, whole)
    if case == "saturated with SAT pixels":
        assert np.count_nonzero(whole["saturated"]) >= 3
    if case == "default":
        assert len(shapes) > 1  # in boxes


def test_blended_sources_split_alike(monkeypatch):
    """Blends are deblended in their box as on the whole frame: the same sources, positions and
    aperture fluxes; sep's random split of the pixels a pair shares restarts in every call, so
    the second pair's isophotal values differ a little (here 0.25 % in flux, 1 % in a) while the
    first pair's, split first in either call, are the same."""
    stars = [(100.0, 100.0, 5e4), (106.0, 101.5, 2.5e4), (300.0, 220.0, 8e4), (303.5, 226.0, 6e4)]
    img = _pixel_gaussian((320, 420), stars, 3.0, seed=2)
    boxed, whole, shapes = both_ways(monkeypatch, img, config=DetectConfig())
    assert len(shapes) == 2
    assert np.count_nonzero(np.asarray(whole["flag"]) & 1) == 4  # every one a deblended child
    assert_same_catalog(boxed, whole)
    for name in _ISOPHOTAL:  # moments about the box's first pixel: to rounding
        np.testing.assert_allclose(boxed[name][:2], whole[name][:2], rtol=1e-12, err_msg=name)
    np.testing.assert_array_equal(boxed["flux_aper_adu"], whole["flux_aper_adu"])


def test_a_non_separable_kernel_means_the_whole_frame():
    kernel = np.array([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]])
    assert separable(kernel) is None
    img = np.zeros((32, 32), np.float32)
    assert detectable_cells(img, 3.0, noise=1.0, mask=None, kernel=kernel, cell=16) is None
    ky, kx = separable(extract_module.gaussian_kernel(3.0))
    gk = extract_module.gaussian_kernel(3.0)
    np.testing.assert_allclose(np.outer(ky, kx), gk / gk.sum(), atol=1e-7)


def test_an_empty_frame_has_no_sources_and_no_extraction(monkeypatch):
    img = np.random.default_rng(1).normal(100.0, 3.0, (256, 256)).astype(np.float32)
    shapes = _counted_extractions(monkeypatch)
    cat = detect_sources(img, config=DetectConfig(threshold_sigma=5.0))
    assert len(cat) == 0 and shapes == []
