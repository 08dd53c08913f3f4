"""Source detection on a background-subtracted image: matched filter, centroids, FWHM.

The catalog is an astropy Table with one row per source. Positions are 0-based
pixel centres (sep's convention: the centre of the first pixel is (0, 0), x along
the second, fast axis); add 1 for FITS/IRAF/SExtractor coordinates. See
``docs/pixel_conventions.md``.

Centroids are Gaussian-windowed (SExtractor's XWIN_IMAGE), except in undersampled
frames (stars about one pixel wide), where the window locks onto pixel centres and a
pixel-integrated Gaussian fit takes over (:func:`darkroom.detect.psf.fit_gaussian_stamps`).
The FWHM of each source is its half-light radius converted with the frame's PSF profile,
which Moffat fits to the brightest isolated stars measure
(:func:`darkroom.detect.psf.measure_psf`): a half-light radius alone would give the FWHM
of a Gaussian, 1.26 times the FWHM of a Moffat beta = 3 star.
"""

from __future__ import annotations

import logging
import math

import astropy.units as u
import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree

from darkroom.detect.background import (
    Background,
    PixelMasks,
    as_sep_array,
    estimate_background,
    pixel_masks,
)
from darkroom.detect.psf import fit_gaussian_stamps, measure_psf
from darkroom.detect.settings import DetectConfig
from darkroom.errors import BadInputError
from darkroom.sepboxes import detectable_cells, extract_around, pixstack

__all__ = [
    "CATALOG_COLUMNS",
    "DetectConfig",
    "detect_sources",
    "gaussian_kernel",
]

log = logging.getLogger(__name__)

#: SExtractor's default.conv (3x3 "all-ground" kernel, FWHM = 2 pixels), sep's default.
SEXTRACTOR_DEFAULT_KERNEL = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: name -> (unit, description) of every catalog column, in table order.
CATALOG_COLUMNS: dict[str, tuple[u.UnitBase | None, str]] = {
    "id": (None, "running number of the source in this image, from 1"),
    "x": (
        u.pix,
        "best centroid x, 0-based pixel centre: windowed when it converged, or a pixel-integrated "
        "Gaussian fit in undersampled frames (meta 'centroid')",
    ),
    "y": (u.pix, "best centroid y, 0-based pixel centre (as x)"),
    "x_iso": (u.pix, "isophotal barycentre x, 0-based"),
    "y_iso": (u.pix, "isophotal barycentre y, 0-based"),
    "x_win": (u.pix, "windowed (Gaussian-weighted) centroid x, 0-based; NaN when it failed"),
    "y_win": (u.pix, "windowed (Gaussian-weighted) centroid y, 0-based; NaN when it failed"),
    "x2_pix2": (u.pix**2, "second moment along x of the isophotal footprint"),
    "y2_pix2": (u.pix**2, "second moment along y of the isophotal footprint"),
    "xy_pix2": (u.pix**2, "cross moment of the isophotal footprint"),
    "a_pix": (u.pix, "semi-major axis (rms along the major axis)"),
    "b_pix": (u.pix, "semi-minor axis (rms along the minor axis)"),
    "theta_rad": (u.rad, "position angle of the major axis, from +x towards +y"),
    "ellipticity": (
        u.dimensionless_unscaled,
        "1 - b/a from Gaussian-windowed second moments corrected for the window (NaN when unusable)",
    ),
    "r_half_pix": (u.pix, "half-light radius (light within min(6 a, 0.6 nn_dist_pix))"),
    "fwhm_pix": (
        u.pix,
        "FWHM before pixel sampling: the half-light radius converted with the frame's PSF profile "
        "(Moffat fits to bright stars, meta 'psf_fwhm_pix'), else that of a Gaussian",
    ),
    "flux_iso_adu": (u.adu, "isophotal flux above the background"),
    "flux_aper_adu": (u.adu, "flux in a circle of aperture_radius_pix around (x_iso, y_iso)"),
    "flux_aper_err_adu": (
        u.adu,
        "1-sigma error of flux_aper_adu (background noise, plus Poisson with a gain)",
    ),
    "snr": (u.dimensionless_unscaled, "flux_aper_adu / flux_aper_err_adu"),
    "peak_adu": (u.adu, "peak of the background-subtracted image in the footprint"),
    "sky_adu": (u.adu, "background level at the source"),
    "nn_dist_pix": (u.pix, "distance to the nearest other source"),
    "n_pix": (None, "number of pixels above the threshold"),
    "flag": (None, "sep extraction flags (1 merged, 2 truncated at an edge, ...)"),
    "aper_flag": (None, "sep aperture flags (8 hits a masked pixel, 16 truncated)"),
    "saturated": (None, "peak at or above saturation, or a SAT pixel in the footprint"),
    "sharp": (
        None,
        "half-light radius that of a Gaussian narrower than sharp_fwhm_pix: a hot pixel or cosmic ray "
        "(or an undersampled star)",
    ),
}


def gaussian_kernel(fwhm_pix: float) -> np.ndarray:
    """Normalised 2-D Gaussian kernel of a given FWHM [pixels], odd size 2*ceil(fwhm)+1."""
    half = max(1, math.ceil(fwhm_pix))
    grid = np.arange(-half, half + 1, dtype=float)
    sigma = fwhm_pix / _FWHM_PER_SIGMA
    prof = np.exp(-0.5 * (grid / sigma) ** 2)
    kernel = np.outer(prof, prof)
    return kernel / kernel.sum()


def _kernel(config: DetectConfig) -> np.ndarray | None:
    if config.filter == "gauss":
        return gaussian_kernel(config.filter_fwhm_pix)
    if config.filter == "sextractor_default":
        return SEXTRACTOR_DEFAULT_KERNEL
    return None


def _windowed_shapes(
    sub: np.ndarray, x: np.ndarray, y: np.ndarray, sigma_w: np.ndarray, bad: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Shape of each source from Gaussian-weighted second moments, corrected for the window.

    For a Gaussian source of covariance C seen through a circular Gaussian window of
    variance s^2, the weighted moments are M = (C^-1 + I/s^2)^-1, hence
    C = (M^-1 - I/s^2)^-1 (exact for Gaussians; isophotal moments, measured above the
    threshold only, come out too round). Returns (ellipticity 1 - b/a, sqrt(a b)) with
    a^2, b^2 the eigenvalues of C [pixels]; NaN where the moments are not usable.
    """
    ny, nx = sub.shape
    n = len(x)
    ell = np.full(n, np.nan)
    size = np.full(n, np.nan)
    ok_in = np.isfinite(sigma_w) & (sigma_w > 0) & np.isfinite(x) & np.isfinite(y)
    if not ok_in.any():
        return ell, size
    # stamps reach 4 window sigmas of (nearly) every source, within bounds of memory
    half = int(np.clip(np.ceil(4.0 * np.percentile(sigma_w[ok_in], 99)), 3, 40))
    offs = np.arange(-half, half + 1)
    chunk = max(1, 4_000_000 // (2 * half + 1) ** 2)
    for start in range(0, n, chunk):
        idx = np.arange(start, min(n, start + chunk))
        idx = idx[ok_in[idx]]
        if not len(idx):
            continue
        xc = np.rint(x[idx]).astype(int)
        yc = np.rint(y[idx]).astype(int)
        gx = xc[:, None] + offs[None, :]
        gy = yc[:, None] + offs[None, :]
        inside = ((gx >= 0) & (gx < nx))[:, None, :] & ((gy >= 0) & (gy < ny))[:, :, None]
        stamp = sub[np.clip(gy, 0, ny - 1)[:, :, None], np.clip(gx, 0, nx - 1)[:, None, :]].astype(np.float64)
        if bad is not None:
            inside &= ~bad[np.clip(gy, 0, ny - 1)[:, :, None], np.clip(gx, 0, nx - 1)[:, None, :]]
        dx = gx[:, None, :] - x[idx, None, None]
        dy = gy[:, :, None] - y[idx, None, None]
        s2 = sigma_w[idx, None, None] ** 2
        r2 = dx**2 + dy**2
        w = np.exp(-0.5 * r2 / s2) * (r2 <= 16.0 * s2) * inside * stamp
        norm = w.sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            mxx = (w * dx * dx).sum(axis=(1, 2)) / norm
            myy = (w * dy * dy).sum(axis=(1, 2)) / norm
            mxy = (w * dx * dy).sum(axis=(1, 2)) / norm
            det_m = mxx * myy - mxy**2
            inv_s2 = 1.0 / s2[:, 0, 0]
            # M^-1 - I/s^2
            pxx = myy / det_m - inv_s2
            pyy = mxx / det_m - inv_s2
            pxy = -mxy / det_m
            det_p = pxx * pyy - pxy**2
            cxx, cyy, cxy = pyy / det_p, pxx / det_p, -pxy / det_p
            tr = cxx + cyy
            disc = np.sqrt(np.maximum(((cxx - cyy) / 2.0) ** 2 + cxy**2, 0.0))
            a2 = tr / 2.0 + disc
            b2 = tr / 2.0 - disc
            good = (norm > 0) & (det_m > 0) & (det_p > 0) & (pxx > 0) & (b2 > 0) & (half**2 > 4 * s2[:, 0, 0])
            ell[idx] = np.where(good, 1.0 - np.sqrt(b2 / a2), np.nan)
            size[idx] = np.where(good, (a2 * b2) ** 0.25, np.nan)
    return ell, size


def _bright_stars(
    fwhm_gauss: np.ndarray,
    snr: np.ndarray,
    nn_dist: np.ndarray,
    saturated: np.ndarray,
    flag: np.ndarray,
    config: DetectConfig,
) -> np.ndarray:
    """Sources fit to measure the PSF on: unflagged, unsaturated, bright and isolated.

    Sharp sources (hot pixels, cosmic rays) are left out when at least 10 others remain
    (in an undersampled frame the stars are sharp too, and all are kept).
    """
    with np.errstate(invalid="ignore"):
        good = (
            (np.asarray(flag) == 0)
            & ~saturated
            & (snr >= config.psf_min_snr)
            & np.isfinite(fwhm_gauss)
            & (fwhm_gauss > 0)
            & (nn_dist >= config.psf_isolation_fwhm * fwhm_gauss)
        )
        not_sharp = good & (fwhm_gauss >= config.sharp_fwhm_pix)
    return not_sharp if np.count_nonzero(not_sharp) >= 10 else good


def _fit_centroids(
    sub: np.ndarray,
    bad: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    x_iso: np.ndarray,
    y_iso: np.ndarray,
    a: np.ndarray,
    fwhm_gauss: np.ndarray,
    stars: np.ndarray,
    config: DetectConfig,
    current: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Pixel-integrated Gaussian centroids where ``config.centroid_fit`` asks for them.

    ``stars`` marks the bright isolated stars whose median FWHM decides whether the
    frame is undersampled. Returns the best positions and the name of the method
    ('gauss', or ``current``).
    """
    if config.centroid_fit == "never" or not len(x):
        return x, y, current
    finite = np.isfinite(fwhm_gauss) & (fwhm_gauss > 0)
    sample = fwhm_gauss[stars] if np.count_nonzero(stars) >= 3 else fwhm_gauss[finite]
    if not len(sample):
        return x, y, current
    typical = float(np.median(sample))
    if config.centroid_fit == "auto" and typical >= config.undersampled_fwhm_pix:
        return x, y, current
    fits = fit_gaussian_stamps(
        sub,
        x,
        y,
        fwhm_pix=np.where(finite, fwhm_gauss, typical),
        half_size_pix=max(2, math.ceil(1.5 * typical)),
        bad=bad,
    )
    moved = np.hypot(fits.x - x_iso, fits.y - y_iso)
    ok = fits.ok & (moved < np.maximum(2.0 * a, 1.0))
    log.debug("Gaussian centroids of %d of %d sources (median FWHM %.2f pix)", ok.sum(), len(x), typical)
    return np.where(ok, fits.x, x), np.where(ok, fits.y, y), "gauss"


def _psf_fwhm(
    sub: np.ndarray,
    bad: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    fwhm_gauss: np.ndarray,
    stars: np.ndarray,
    flux: np.ndarray,
    config: DetectConfig,
) -> tuple[np.ndarray, dict[str, float | int]]:
    """FWHM per source: the Gaussian-equivalent FWHM scaled by the frame's Moffat PSF fit.

    ``stars`` marks the sources that may be fitted (:func:`_bright_stars`).
    For stars of one profile the ratio of FWHM to half-light radius is the same; the
    Moffat fits of the brightest isolated stars give it. Returns the FWHM [pixels] and
    the catalog meta entries (``psf_fwhm_pix``, ``psf_beta``, ``psf_ellipticity``,
    ``n_psf_stars``, ``fwhm_scale``; NaN / 0 / 1 without a fit).
    """
    meta: dict[str, float | int] = {
        "psf_fwhm_pix": float("nan"),
        "psf_beta": float("nan"),
        "psf_ellipticity": float("nan"),
        "n_psf_stars": 0,
        "fwhm_scale": 1.0,
    }
    if config.psf_n_stars == 0 or not len(x):
        return fwhm_gauss, meta
    psf = measure_psf(
        sub,
        x,
        y,
        fwhm_pix=fwhm_gauss,
        candidates=stars,
        brightness=flux,
        n_stars=config.psf_n_stars,
        bad=bad,
    )
    if psf is None:
        return fwhm_gauss, meta
    scale = psf.fwhm_pix / float(np.median(fwhm_gauss[psf.index]))
    meta.update(
        {
            "psf_fwhm_pix": psf.fwhm_pix,
            "psf_beta": psf.beta,
            "psf_ellipticity": psf.ellipticity,
            "n_psf_stars": psf.n_stars,
            "fwhm_scale": scale,
        }
    )
    log.debug(
        "PSF: FWHM %.3f pix, beta %.2f from %d stars (%.3f x the Gaussian equivalent)",
        psf.fwhm_pix,
        psf.beta,
        psf.n_stars,
        scale,
    )
    return fwhm_gauss * scale, meta


def _empty_catalog() -> Table:
    table = Table()
    for name, (unit, description) in CATALOG_COLUMNS.items():
        dtype = (
            bool
            if name in ("saturated", "sharp")
            else (np.int64 if name in ("id", "n_pix", "flag", "aper_flag") else np.float64)
        )
        table[name] = np.zeros(0, dtype=dtype)
        table[name].unit = unit
        table[name].description = description
    return table


#: cells of the detectable-pixel grid [pixel] and the margin of a box around a region of them
_CELL = 16
_BOX_MARGIN = 8


def _sep_sources(
    sub: np.ndarray,
    err: np.ndarray | float,
    bad: np.ndarray | None,
    sat_pix: np.ndarray | None,
    config: DetectConfig,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """sep's sources of the background-subtracted image ``sub`` (bad pixels 0) and, when SAT
    pixels are given, whether each has one in its footprint; None without sources.

    sep runs in boxes around the cells where the filtered image could pass the threshold
    (:func:`darkroom.sepboxes.detectable_cells`, :func:`darkroom.sepboxes.extract_around`),
    or on the whole frame where that would cost more (a crowded field) or the kernel is not
    separable: the same sources either way, but for the deblender's random split of blended
    pixels (see :mod:`darkroom.sepboxes`). Sources are in the order of their footprints' first
    row, then first column (``ymin``, ``xmin``; then ``ymax``, ``xmax``, ``npix``, ``y``, ``x``),
    whichever way they were found.
    """
    kernel = _kernel(config)
    with_seg = sat_pix is not None

    def run(data, noise, mask, sat) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            out = sep.extract(
                data,
                config.threshold_sigma,
                err=noise,
                mask=mask,
                minarea=config.min_area_pix,
                filter_kernel=kernel,
                filter_type="conv",
                deblend_nthresh=config.deblend_n_thresh,
                deblend_cont=config.deblend_cont,
                clean=config.clean,
                clean_param=config.clean_param,
                segmentation_map=with_seg,
            )
        except Exception as exc:  # sep raises a bare Exception
            raise BadInputError(
                f"source extraction failed ({exc}); raise threshold_sigma or check the background subtraction"
            ) from exc
        if not with_seg:
            return out, None
        objs, segmap = out
        labels = segmap[sat]
        labels = labels[labels > 0]
        flagged = np.zeros(len(objs), dtype=bool)
        flagged[np.unique(labels) - 1] = True
        return objs, flagged

    def box(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        sl = (slice(y0, y1), slice(x0, x1))
        return run(
            np.ascontiguousarray(sub[sl]),
            np.ascontiguousarray(err[sl]) if isinstance(err, np.ndarray) else err,
            None if bad is None else np.ascontiguousarray(bad[sl]),
            None if sat_pix is None else sat_pix[sl],
        )

    def whole() -> tuple[np.ndarray, np.ndarray | None]:
        # sep's default stack (300 000 pixels), or half the frame's pixels (at most 50 million)
        with pixstack(max(300_000, min(sub.size // 2, 50_000_000))):
            return run(sub, err, bad, sat_pix)

    cells = detectable_cells(sub, config.threshold_sigma, noise=err, mask=bad, kernel=kernel, cell=_CELL)
    if cells is None:
        found: tuple[np.ndarray, np.ndarray | None] | None = whole()
    else:
        reach = max(1, (0 if kernel is None else max(kernel.shape) // 2))
        found = extract_around(
            cells, _CELL, sub.shape, box, whole, margin=_BOX_MARGIN, reach=reach, clean=config.clean
        )
    if found is None or len(found[0]) == 0:
        return None, None
    objs, flagged = found
    order = np.lexsort(tuple(objs[key] for key in ("x", "y", "npix", "xmax", "ymax", "xmin", "ymin")))
    return objs[order], None if flagged is None else flagged[order]


def detect_sources(
    data: np.ndarray,
    *,
    background: Background | None = None,
    mask: np.ndarray | None = None,
    config: DetectConfig | None = None,
    saturation_adu: float | None = None,
    gain_e_per_adu: float | None = None,
    masks: PixelMasks | None = None,
) -> Table:
    """Detect and measure sources in an image.

    Parameters
    ----------
    data
        Image ``(ny, nx)`` [adu], background *not* subtracted.
    background
        Background maps (:func:`estimate_background`); estimated with default
        settings when None.
    mask
        MASK bit plane or boolean array ``(ny, nx)``. Pixels with ``config.mask_bits``
        cannot be detected; pixels with the SAT bit make their source ``saturated``.
    config
        Detection parameters.
    saturation_adu
        Level [adu, background included] at which a pixel is saturated; None when unknown.
    gain_e_per_adu
        Gain [electron/adu]; adds the sources' Poisson noise to ``flux_aper_err_adu``.
    masks
        The bad and saturated pixels already found (:func:`~darkroom.detect.background.pixel_masks`
        with ``config.mask_bits``): ``mask`` is then not read.

    Returns
    -------
    astropy.table.Table
        One row per source with the columns of :data:`CATALOG_COLUMNS` (units and
        descriptions set). ``x``, ``y`` are 0-based pixel centres. ``meta`` holds
        the threshold and the global background figures.
    """
    config = config or DetectConfig()
    arr = as_sep_array(data)
    if background is None:
        background = estimate_background(arr, mask=mask)
    if background.shape != arr.shape:
        raise BadInputError(f"background shape {background.shape} differs from image shape {arr.shape}")
    if masks is None:
        masks = pixel_masks(arr, mask, config.mask_bits, config.mask_bits)
    bad = masks.detect
    sub = arr - background.level_adu
    if bad is not None:
        sub[bad] = 0.0
    if config.noise == "map":
        err: np.ndarray | float = np.ascontiguousarray(background.rms_adu, dtype=np.float32)
    else:
        err = background.global_rms_adu
    if not np.isfinite(background.global_rms_adu) or background.global_rms_adu <= 0:
        raise BadInputError(f"background rms is {background.global_rms_adu}: the image is flat or empty")

    objs, sat_in_footprint = _sep_sources(sub, err, bad, masks.saturated, config)

    meta = {
        "threshold_sigma": config.threshold_sigma,
        "sky_adu": background.global_level_adu,
        "sky_rms_adu": background.global_rms_adu,
        "shape": arr.shape,
    }
    if objs is None or len(objs) == 0:
        table = _empty_catalog()
        table.meta.update(meta)
        return table

    x_iso = objs["x"].astype(np.float64)
    y_iso = objs["y"].astype(np.float64)
    a = objs["a"].astype(np.float64)
    b = objs["b"].astype(np.float64)

    flux_aper, flux_aper_err, aper_flag = sep.sum_circle(
        sub,
        x_iso,
        y_iso,
        config.aperture_radius_pix,
        err=err,
        mask=bad,
        gain=gain_e_per_adu,
    )
    if len(objs) > 1:
        nn_dist = cKDTree(np.column_stack([x_iso, y_iso])).query(np.column_stack([x_iso, y_iso]), k=2)[0][
            :, 1
        ]
    else:
        nn_dist = np.full(len(objs), np.inf)
    # 6 a holds all of a star's light; stop short of a neighbour's
    r_max = np.clip(np.minimum(6.0 * a, 0.6 * nn_dist), 2.0, 100.0)
    r_half, _ = sep.flux_radius(sub, x_iso, y_iso, r_max, 0.5, mask=bad, subpix=5)
    r_half = np.where(np.isfinite(r_half) & (r_half > 0), r_half, np.nan)

    # r_half of a Gaussian is sigma*sqrt(2 ln 2) = FWHM/2. sep spreads each pixel's value evenly
    # over the pixel, i.e. convolves once more with the pixel (variance 1/12 pixel^2 per axis);
    # take that out: fwhm_gauss is the FWHM of a Gaussian with this half-light radius.
    sigma_half = r_half / math.sqrt(2.0 * math.log(2.0))
    fwhm_gauss = _FWHM_PER_SIGMA * np.sqrt(np.clip(sigma_half**2 - 1.0 / 12.0, 0.0, None))

    if config.window_centroid:
        sig = np.where(np.isfinite(r_half), 2.0 * r_half / _FWHM_PER_SIGMA, 1.0)
        x_win, y_win, win_flag = sep.winpos(sub, x_iso, y_iso, sig, mask=bad)
        moved = np.hypot(x_win - x_iso, y_win - y_iso)
        ok = (win_flag == 0) & np.isfinite(x_win) & np.isfinite(y_win) & (moved < np.maximum(2.0 * a, 1.0))
        x_win = np.where(ok, x_win, np.nan)
        y_win = np.where(ok, y_win, np.nan)
        x_best = np.where(ok, x_win, x_iso)
        y_best = np.where(ok, y_win, y_iso)
    else:
        x_win = np.full_like(x_iso, np.nan)
        y_win = np.full_like(y_iso, np.nan)
        x_best, y_best = x_iso, y_iso

    iy = np.clip(np.rint(y_iso).astype(int), 0, arr.shape[0] - 1)
    ix = np.clip(np.rint(x_iso).astype(int), 0, arr.shape[1] - 1)
    sky = background.level_adu[iy, ix].astype(np.float64)
    peak = objs["peak"].astype(np.float64)
    saturated = np.zeros(len(objs), dtype=bool) if sat_in_footprint is None else sat_in_footprint.copy()
    if saturation_adu is not None:
        saturated |= peak + sky >= saturation_adu

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(flux_aper_err > 0, flux_aper / flux_aper_err, np.nan)

    stars = _bright_stars(fwhm_gauss, snr, nn_dist, saturated, objs["flag"], config)
    x_best, y_best, centroid = _fit_centroids(
        sub,
        bad,
        x_best,
        y_best,
        x_iso,
        y_iso,
        a,
        fwhm_gauss,
        stars,
        config,
        "window" if config.window_centroid else "isophotal",
    )
    fwhm, psf_meta = _psf_fwhm(sub, bad, x_best, y_best, fwhm_gauss, stars, flux_aper, config)
    meta.update({"centroid": centroid, **psf_meta})
    ellipticity, _ = _windowed_shapes(sub, x_best, y_best, np.maximum(2.0 * sigma_half, 1.0), bad)

    values = {
        "id": np.arange(1, len(objs) + 1, dtype=np.int64),
        "x": x_best,
        "y": y_best,
        "x_iso": x_iso,
        "y_iso": y_iso,
        "x_win": x_win,
        "y_win": y_win,
        "x2_pix2": objs["x2"].astype(np.float64),
        "y2_pix2": objs["y2"].astype(np.float64),
        "xy_pix2": objs["xy"].astype(np.float64),
        "a_pix": a,
        "b_pix": b,
        "theta_rad": objs["theta"].astype(np.float64),
        "ellipticity": ellipticity,
        "r_half_pix": r_half,
        "fwhm_pix": fwhm,
        "flux_iso_adu": objs["flux"].astype(np.float64),
        "flux_aper_adu": np.asarray(flux_aper, dtype=np.float64),
        "flux_aper_err_adu": np.asarray(flux_aper_err, dtype=np.float64),
        "snr": snr,
        "peak_adu": peak,
        "sky_adu": sky,
        "nn_dist_pix": nn_dist,
        "n_pix": objs["npix"].astype(np.int64),
        "flag": objs["flag"].astype(np.int64),
        "aper_flag": np.asarray(aper_flag, dtype=np.int64),
        "saturated": saturated,
        "sharp": ~(fwhm_gauss >= config.sharp_fwhm_pix),
    }
    table = Table()
    for name, (unit, description) in CATALOG_COLUMNS.items():
        table[name] = values[name]
        table[name].unit = unit
        table[name].description = description
    if len(table) > config.max_sources:
        order = np.argsort(-np.nan_to_num(table["flux_aper_adu"], nan=-np.inf), kind="stable")
        table = table[np.sort(order[: config.max_sources])]
        table["id"][:] = np.arange(1, len(table) + 1)
    table.meta.update(meta)
    log.debug("detected %d sources (threshold %.1f sigma)", len(table), config.threshold_sigma)
    return table
