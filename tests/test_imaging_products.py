"""Image arithmetic, continuum subtraction and colour composites.

Known answers: a simulated H-alpha / R pair (darkroom.sim's Moffat stars, a Gaussian
emission region in the narrow band only) and the SDSS g, r, i frames of M2 with the
bright star of the data set's MANIFEST.
"""

from __future__ import annotations

import numpy as np
import pytest
import sep
from PIL import Image as PILImage

from darkroom.imaging.arith import continuum_subtract, image_arith
from darkroom.imaging.planes import ImagePlanes, read_planes
from darkroom.imaging.resample import grid_from_centre
from darkroom.imaging.rgb import make_rgb, rgb_fits_hdus, thumbnail, write_rgb
from darkroom.maskbits import MaskBit
from darkroom.sim import render_stars

SHAPE = (240, 260)
S_TRUE = 0.062  # narrow / broad flux of every star (no line emission in stars)
EMISSION = (130.0, 118.0, 6.0, 4.0e4)  # x, y, Gaussian sigma [pix], flux in the narrow image [adu]


def _stars(seed: int = 5):
    rng = np.random.default_rng(seed)
    gx, gy = np.meshgrid(np.arange(22, SHAPE[1] - 20, 42.0), np.arange(22, SHAPE[0] - 20, 42.0))
    x = gx.ravel() + rng.uniform(-2, 2, gx.size)
    y = gy.ravel() + rng.uniform(-2, 2, gx.size)
    far = np.hypot(x - EMISSION[0], y - EMISSION[1]) > 50
    flux = 10 ** rng.uniform(4.3, 5.7, x.size)
    return x[far], y[far], flux[far]


def _frame(wcs_grid, x, y, flux, fwhm, sky, rng, *, emission=0.0) -> ImagePlanes:
    img = np.full(SHAPE, sky, float)
    render_stars(img, x, y, flux, fwhm, beta=3.0, wing_tolerance=0.05)
    if emission:
        ex, ey, sig, _ = EMISSION
        yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
        img += emission * np.exp(-((xx - ex) ** 2 + (yy - ey) ** 2) / (2 * sig**2)) / (2 * np.pi * sig**2)
    gain, rn = 1.5, 5.0
    var = (img * gain + rn**2) / gain**2
    sci = (rng.poisson(img * gain) + rng.normal(0, rn, SHAPE)) / gain
    return ImagePlanes(
        sci=sci.astype(np.float32),
        var=var.astype(np.float32),
        mask=np.zeros(SHAPE, np.int32),
        wcs=wcs_grid.wcs,
        name="frame",
        exptime_s=300.0,
    )


def test_continuum_subtraction_removes_stars_and_keeps_the_emission():
    rng = np.random.default_rng(11)
    x, y, flux = _stars()
    narrow_grid = grid_from_centre(83.8, -5.4, pixel_scale_arcsec=0.6, shape=SHAPE, rotation_deg=0.0)
    broad_grid = grid_from_centre(83.80005, -5.40004, pixel_scale_arcsec=0.6, shape=SHAPE, rotation_deg=1.0)
    ra, dec = narrow_grid.wcs.all_pix2world(x, y, 0)
    bx, by = broad_grid.wcs.all_world2pix(ra, dec, 0)
    narrow = _frame(narrow_grid, x, y, S_TRUE * flux * 10, 3.2, 20.0, rng, emission=EMISSION[3])
    broad = _frame(broad_grid, bx, by, flux * 10, 2.8, 400.0, rng)

    result = continuum_subtract(narrow, broad)
    assert result.scale == pytest.approx(S_TRUE, rel=0.01)
    assert result.scale_err < 0.01 * S_TRUE and result.n_stars >= 10
    assert result.image.header["CONTSCAL"] == pytest.approx(result.scale)

    sub = np.nan_to_num(result.image.sci).astype(float)
    sub -= np.median(sub)
    star_flux = S_TRUE * flux * 10
    bright = star_flux > 5e4  # 1 % of the flux is above 5 sigma of the aperture noise
    resid, _, _ = sep.sum_circle(sub, x[bright], y[bright], 10.0, bkgann=(14.0, 20.0))
    assert np.max(np.abs(resid) / star_flux[bright]) < 0.01
    ex, ey, sig, e_flux = EMISSION
    kept, _, _ = sep.sum_circle(sub, [ex], [ey], 3.5 * sig, bkgann=(4.0 * sig, 5.0 * sig))
    assert kept[0] / (0.9977 * e_flux) == pytest.approx(1.0, abs=0.02)  # 99.77 % within 3.5 sigma
    # VAR is carried: the narrow's plus s^2 times the broad's (resampled)
    assert np.nanmedian(result.image.var) > np.median(narrow.var)


def test_arithmetic_propagates_var_and_mask():
    rng = np.random.default_rng(2)
    grid = grid_from_centre(10.0, 10.0, pixel_scale_arcsec=1.0, shape=(50, 60))
    a = ImagePlanes(
        sci=rng.normal(100, 1, (50, 60)).astype(np.float32),
        var=np.full((50, 60), 4.0, np.float32),
        mask=np.zeros((50, 60), np.int32),
        wcs=grid.wcs,
    )
    mask_b = np.zeros((50, 60), np.int32)
    mask_b[5, 7] = MaskBit.CR
    b = a.with_planes(np.full((50, 60), 2.0, np.float32), np.full((50, 60), 0.01, np.float32), mask_b)
    q = image_arith(a, "/", b)
    assert np.allclose(q.sci, a.sci / 2.0)
    assert np.allclose(q.var, (4.0 + (a.sci / 2.0) ** 2 * 0.01) / 4.0, rtol=1e-5)
    assert q.mask[5, 7] == MaskBit.CR
    d = image_arith(a, "-", 3.0, b_err=1.0)
    assert np.allclose(d.var, 5.0)
    zero = image_arith(a, "/", 0.0)
    assert np.all((zero.mask & MaskBit.NO_DATA) != 0) and np.all(np.isnan(zero.sci))


# --------------------------------------------------------------------------- SDSS composite

STAR_RADEC = (323.342574, -0.682047)  # the MANIFEST's bright star


@pytest.fixture(scope="module")
def sdss(data_dir):
    folder = data_dir / "sdss-frames-m2"
    return {b: read_planes(folder / f"frame-{b}-002583-2-0136.fits.bz2") for b in "gri"}


def _centroid(plane: np.ndarray, x0: float, y0: float, half: int = 6) -> tuple[float, float]:
    ix, iy = round(x0), round(y0)
    box = plane[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    box = box - np.median(box)
    box[box < 0] = 0
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return ix + float((box * xx).sum() / box.sum()), iy + float((box * yy).sum() / box.sum())


@pytest.mark.slow  # three 2048 x 1489 frames, bzip2-compressed
def test_sdss_gri_composite_is_aligned_on_the_r_grid(sdss, tmp_path):
    red, green, blue = sdss["i"], sdss["r"], sdss["g"]
    image = make_rgb(red, green, blue, reference="green")
    assert image.rgb.shape == (*green.shape, 3)
    x, y = green.wcs.all_world2pix([STAR_RADEC[0]], [STAR_RADEC[1]], 0)
    x, y = float(x[0]), float(y[0])
    assert abs(x - 1496) < 1.5 and abs(y - 742) < 1.5  # the MANIFEST's r pixel
    png = write_rgb(image, tmp_path / "m2.png")
    pixels = np.asarray(PILImage.open(png))[::-1]  # back to FITS row order
    assert pixels.shape == image.rgb.shape and np.array_equal(pixels, image.rgb)
    found = [_centroid(pixels[:, :, k], x, y) for k in range(3)]
    for cx, cy in found:
        assert abs(cx - x) < 0.5 and abs(cy - y) < 0.5, found
    # without resampling the g star sits ~11 px away: the composite did move it
    gx, gy = blue.wcs.all_world2pix([STAR_RADEC[0]], [STAR_RADEC[1]], 0)
    assert np.hypot(gx[0] - x, gy[0] - y) > 5
    cube = rgb_fits_hdus(image)
    assert cube[0].data.shape == (3, *green.shape)
    assert cube[0].header["CTYPE1"].startswith("RA---TAN")
    tif = write_rgb(image, tmp_path / "m2.tif")
    assert PILImage.open(tif).size == (green.shape[1], green.shape[0])
    thumb = thumbnail(green.sci, tmp_path / "r.png", max_size=256)
    assert max(PILImage.open(thumb).size) <= 256


def test_night_report_shows_coadd_pictures(tmp_path):
    from darkroom.report import NightPicture, NightReport, render_night_report

    grey = np.zeros((20, 30), np.uint8)
    png = tmp_path / "t.png"
    PILImage.fromarray(grey).save(png)
    report = NightReport(
        "2025-06-02", tmp_path, pictures=[NightPicture("XO1-b z coadd", png.read_bytes(), "52 images")]
    )
    html = render_night_report(report)
    assert 'id="coadds"' in html and "XO1-b z coadd" in html and "data:image/png;base64," in html
    assert 'id="coadds"' not in render_night_report(NightReport("2025-06-02", tmp_path))
