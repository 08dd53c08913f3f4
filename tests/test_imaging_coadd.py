"""Resampling and coadds against the simulator's truth (darkroom.sim).

Frames: small simulated nights (drift, jitter, SIP distortion, seeing changes), rendered
noiseless by ``light_electrons`` and given Poisson + read noise here, cosmic rays that are
*not* flagged and a flagged garbage column per frame. The noiseless twin of each frame
goes through the same resampling and coadd, so ``coadd - coadd(noiseless)`` is the noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.wcs import WCS

from darkroom.detect import detect_sources, estimate_background
from darkroom.imaging.coadd import CoaddConfig, coadd_grid, coadd_images
from darkroom.imaging.depth import empty_aperture_depth
from darkroom.imaging.planes import ImagePlanes, read_planes
from darkroom.imaging.resample import (
    ResampleConfig,
    grid_covering,
    grid_from_centre,
    pixel_map,
    resample,
)
from darkroom.maskbits import MaskBit
from darkroom.sim import SimConfig, build_scene, light_electrons, render_stars

SHAPE = (200, 220)


def _sim_frames(n: int, *, seed: int = 3, n_cr: int = 8):
    """n calibrated frames (adu) with truth: planes, noiseless planes, stars, CR pixels."""
    cfg = SimConfig(
        seed=seed,
        shape=SHAPE,
        n_bias=0,
        n_dark=0,
        n_flat=0,
        n_science=n,
        n_stars=110,
        r_mag_range=(13.0, 20.0),  # no stars near the coadd limit: its depth is a noise law, not confusion
        mag_slope=0.12,
        jitter_pix=2.0,
        drift_pix_per_h=(6.0, -4.0),
        sip_amplitude_pix=0.5,
    )
    scene = build_scene(cfg)
    g, rn = cfg.gain_e_per_adu, cfg.read_noise_e
    frames, models, truth = [], [], []
    for i in range(n):
        e, stars = light_electrons(scene, i)
        rng = np.random.default_rng(seed * 1000 + i)
        model = (e / g).astype(np.float32)
        var = ((e + rn**2) / g**2).astype(np.float32)
        sci = ((rng.poisson(e) + rng.normal(0.0, rn, e.shape)) / g).astype(np.float32)
        cr = rng.choice(sci.size, n_cr, replace=False)
        sci.ravel()[cr] += rng.uniform(500.0, 4000.0, n_cr).astype(np.float32)  # not flagged
        mask = np.zeros(SHAPE, np.int32)
        col = 30 + (11 * i) % 160
        mask[:, col] |= MaskBit.BAD
        sci[:, col] = 3.0e4  # flagged garbage
        wcs = WCS(scene.science.wcs_headers[i])
        header = fits.Header()
        header["EXPTIME"] = cfg.exptime_s
        planes = ImagePlanes(
            sci=sci,
            var=var,
            mask=mask,
            wcs=wcs,
            header=header,
            name=f"f{i:02d}",
            exptime_s=cfg.exptime_s,
            mjd_mid=float(scene.science.jd_utc_mid[i] - 2400000.5),
            gain_e_per_adu=g,
        )
        frames.append(planes)
        models.append(planes.with_planes(model, var, np.zeros(SHAPE, np.int32)))
        truth.append({"stars": stars, "cr": cr, "col": col})
    return scene, frames, models, truth


def _robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# --------------------------------------------------------------------------- resampling


def _star_field(shape=(200, 220), spacing=45, fwhm=3.0):
    """Isolated Moffat stars on a grid of positions (truth), noiseless."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.arange(35, nx - 30, spacing), np.arange(35, ny - 30, spacing))
    rng = np.random.default_rng(7)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gy.size)
    flux = rng.uniform(1e4, 1e5, x.size)
    img = np.zeros(shape)
    render_stars(img, x, y, flux, fwhm, beta=3.0, wing_tolerance=0.01)
    return img.astype(np.float32), x, y


@pytest.mark.parametrize("method", ["exact", "adaptive", "bilinear"])
@pytest.mark.parametrize("factor", [0.7, 1 / 0.7])
def test_flux_of_isolated_stars_is_kept_across_scale_change_and_rotation(method, factor):
    img, x, y = _star_field()
    src = grid_from_centre(150.0, 20.0, pixel_scale_arcsec=0.5, shape=img.shape, rotation_deg=5.0)
    planes = ImagePlanes(
        sci=img, var=np.ones_like(img), mask=np.zeros(img.shape, np.int32), wcs=src.wcs, name="stars"
    )
    ny, nx = img.shape
    out_shape = (int(1.45 * ny / factor), int(1.45 * nx / factor))
    target = grid_from_centre(
        150.0, 20.0, pixel_scale_arcsec=0.5 * factor, shape=out_shape, rotation_deg=5.0 + 30.0
    )
    res = resample(planes, target, ResampleConfig(method=method))
    ra, dec = src.wcs.all_pix2world(x, y, 0)
    xo, yo = target.wcs.all_world2pix(ra, dec, 0)
    r_in = 12.0
    f_in, _, _ = sep.sum_circle(img.astype(float), x, y, r_in)
    f_out, _, _ = sep.sum_circle(np.nan_to_num(res.sci).astype(float), xo, yo, r_in / factor)
    err = np.abs(f_out / f_in - 1.0)
    assert err.max() < 0.005, f"{method} x{factor:.2f}: worst star {100 * err.max():.3f} %"
    assert res.jacobian == pytest.approx(factor**2, rel=1e-3)


def test_coarse_pixel_map_matches_the_exact_wcs_mapping():
    _, frames, _, _ = _sim_frames(2, n_cr=0)
    grid = grid_covering([(f.wcs, f.shape) for f in frames], rotation_deg=25.0)
    pmap = pixel_map(frames[1].wcs, grid, step=16)
    xm, ym = pmap.coords(0, grid.shape[0])
    rows, cols = np.mgrid[0 : grid.shape[0] : 7, 0 : grid.shape[1] : 7]
    ra, dec = grid.wcs.all_pix2world(cols.ravel(), rows.ravel(), 0)
    xe, ye = frames[1].wcs.all_world2pix(ra, dec, 0, tolerance=1e-9)
    d = np.hypot(xm[rows, cols].ravel() - xe, ym[rows, cols].ravel() - ye)
    assert d.max() < 1e-3


def test_masked_pixels_are_not_interpolated_and_the_footprint_is_reported():
    _, frames, models, _truth = _sim_frames(1, n_cr=0)
    f = frames[0]
    target = grid_from_centre(
        *f.wcs.all_pix2world([[109.5, 99.5]], 0)[0], pixel_scale_arcsec=0.67, shape=(260, 280)
    )
    res = resample(f, target)
    clean = resample(models[0], target)
    flagged = (res.mask & MaskBit.BAD) != 0
    assert flagged.sum() > 150  # the bad column is carried into the output
    z = (res.sci - clean.sci)[flagged] / np.sqrt(res.var[flagged])
    assert np.nanmax(np.abs(z)) < 6.0  # its 3e4 garbage never leaks in: neighbours interpolate
    outside = (res.mask & MaskBit.NO_DATA) != 0
    assert outside.any() and np.all(np.isnan(res.sci[outside]))
    assert np.all(res.coverage[outside] < 0.5) and np.median(res.coverage[~outside]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- coadds


@pytest.fixture(scope="module", params=[4, 16])
def coadded(request):
    n = request.param
    scene, frames, models, truth = _sim_frames(n)
    grid = coadd_grid(frames)
    # plain linear combination, so the noise of coadd - coadd(noiseless) is the coadd's noise
    cfg = CoaddConfig(background="none", flux_scale="exptime", weight="equal")
    noisy = coadd_images(frames, grid, cfg)
    clean = coadd_images(models, grid, cfg)
    return n, scene, frames, models, truth, grid, noisy, clean


def test_coadd_noise_falls_as_one_over_sqrt_n_and_var_predicts_it(coadded):
    n, _, frames, models, _, grid, noisy, clean = coadded
    full = noisy.nimg >= n - 1
    # SCI is scaled to the total exposure (n frames): per-frame units are SCI / n
    sigma_coadd = _robust_std((noisy.sci - clean.sci)[full] / n)
    singles = [
        _robust_std((resample(f, grid).sci - resample(m, grid).sci)[full])
        for f, m in zip(frames, models, strict=True)
    ]
    expected = np.sqrt(np.mean(np.square(singles)) / n)
    assert sigma_coadd / expected == pytest.approx(1.0, abs=0.05)
    predicted = np.sqrt(np.median(noisy.var[full])) / n
    assert predicted / sigma_coadd == pytest.approx(1.0, abs=0.05)
    assert noisy.header["NCOMBINE"] == n
    assert noisy.header["EXPTIME"] == pytest.approx(60.0 * n)
    assert noisy.mjd_start < noisy.mjd_mid < noisy.mjd_end
    assert noisy.header["IMCMB001"] == "f00"


def test_cosmic_rays_and_masked_pixels_are_absent_from_the_clipped_coadd(coadded):
    n, _, frames, _, truth, grid, noisy, clean = coadded
    z = (noisy.sci - clean.sci) / np.sqrt(noisy.var)
    for f, t in zip(frames, truth, strict=True):
        cy, cx = np.unravel_index(t["cr"], f.shape)
        ra, dec = f.wcs.all_pix2world(cx, cy, 0)
        gx, gy = grid.wcs.all_world2pix(ra, dec, 0)
        ix, iy = np.round(gx).astype(int), np.round(gy).astype(int)
        ok = (ix > 1) & (iy > 1) & (ix < grid.shape[1] - 2) & (iy < grid.shape[0] - 2)
        for x0, y0 in zip(ix[ok], iy[ok], strict=True):
            patch = z[y0 - 1 : y0 + 2, x0 - 1 : x0 + 2]
            if noisy.nimg[y0 - 1 : y0 + 2, x0 - 1 : x0 + 2].min() < 3:
                continue  # fewer than 3 inputs at the edge: clipping cannot tell which one is wrong
            assert np.nanmax(np.abs(patch)) < 5.0, f"cosmic ray of {f.name} left at ({x0}, {y0})"
    finite = np.isfinite(z)
    assert np.nanmax(noisy.sci[finite]) < 2.0e4 * n  # no garbage column
    assert np.mean(np.abs(z[finite]) > 5) < 2e-4
    assert sum(i.n_clipped for i in noisy.inputs) > 0


def test_coadd_star_positions_match_the_truth(coadded):
    n, scene, _frames, _, _, grid, noisy, _ = coadded
    cat = detect_sources(noisy.sci, mask=noisy.mask)
    ra, dec = np.asarray(scene.catalog["ra_deg"]), np.asarray(scene.catalog["dec_deg"])
    tx, ty = grid.wcs.all_world2pix(ra, dec, 0)
    d = np.hypot(np.asarray(cat["x"])[:, None] - tx[None, :], np.asarray(cat["y"])[:, None] - ty[None, :])
    j = np.argmin(d, axis=1)
    dist = d[np.arange(len(cat)), j]
    others = np.sort(np.hypot(tx[:, None] - tx[None, :], ty[:, None] - ty[None, :]), axis=1)[:, 1]
    snr = np.asarray(cat["flux_aper_adu"]) / np.asarray(cat["flux_aper_err_adu"])
    full = noisy.nimg[np.round(cat["y"]).astype(int), np.round(cat["x"]).astype(int)] == n
    bright = (snr > 100) & (dist < 1.0) & (others[j] > 12) & full
    assert bright.sum() >= 8
    dx = np.asarray(cat["x"])[bright] - tx[j[bright]]
    dy = np.asarray(cat["y"])[bright] - ty[j[bright]]
    assert np.sqrt(np.mean(dx**2 + dy**2)) < 0.05  # rms distance [coadd pixel]


def _aperture_zero_point(sci: np.ndarray, wcs: WCS, scene, radius: float) -> float:
    """Magnitude of 1 adu in an aperture of ``radius`` [mag], from isolated bright truth stars."""
    cat = scene.catalog
    x, y = wcs.all_world2pix(np.asarray(cat["ra_deg"]), np.asarray(cat["dec_deg"]), 0)
    mags = np.asarray(cat["r_mag"])
    ny, nx = sci.shape
    nearest = np.sort(np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]), axis=1)[:, 1]
    use = (mags < 17.5) & (nearest > 15) & (x > 10) & (x < nx - 11) & (y > 10) & (y < ny - 11)
    sub = np.nan_to_num(sci - estimate_background(np.nan_to_num(sci)).level_adu).astype(float)
    flux, _, _ = sep.sum_circle(sub, x[use], y[use], radius)
    return float(np.median(mags[use] + 2.5 * np.log10(flux)))


def test_coadd_limiting_magnitude_is_deeper_by_sqrt_n(coadded):
    n, scene, frames, _, _, grid, _, _ = coadded
    coadd = coadd_images(frames, grid, CoaddConfig())  # the default: background matched, star scaling
    radius = 3.0  # ~ the FWHM
    single = []
    for f in frames:
        zp = _aperture_zero_point(f.sci, f.wcs, scene, radius)
        single.append(empty_aperture_depth(f.sci, f.mask, radius_pix=radius).limit_mag(zp))
    zp = _aperture_zero_point(coadd.sci, grid.wcs, scene, radius)
    deep = empty_aperture_depth(coadd.sci, coadd.mask, radius_pix=radius).limit_mag(zp)
    gain = deep - float(np.median(single))
    assert gain == pytest.approx(2.5 * np.log10(np.sqrt(n)), abs=0.1)


def test_coadd_written_and_read_back(coadded, tmp_path):
    n, *_, noisy, _ = coadded
    path = tmp_path / "coadd.fits"
    noisy.to_hdus().writeto(path)
    back = read_planes(path)
    assert back.exptime_s == pytest.approx(60.0 * n)
    assert back.mjd_mid == pytest.approx(noisy.mjd_mid)
    with fits.open(path) as hdul:
        assert [h.name for h in hdul][1:] == ["SCI", "MASK", "VAR", "WEIGHT", "EXPMAP", "NIMG"]
        assert hdul["NIMG"].data.max() == n
