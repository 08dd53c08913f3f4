"""PSF models and masks for forced PSF photometry: a pixel-integrated circular Moffat stamp,
discs around positions, the fit's noise-equivalent area.

Pixel convention: 0-based pixel centres; shapes ``(ny, nx)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from astropy.table import Table
from scipy.ndimage import uniform_filter

from darkroom.errors import BadInputError

if TYPE_CHECKING:
    from photutils.psf import ImagePSF

__all__ = ["disc_mask", "moffat_psf_model", "psf_noise_area"]


def moffat_psf_model(
    fwhm_pix: float, beta: float, *, half_size_pix: int, oversampling: int = 5, n_sub: int = 3
) -> ImagePSF:
    """A circular Moffat PSF of unit total flux, pixel-integrated, as a photutils ``ImagePSF``.

    ``I(r) = (beta - 1) / (pi alpha^2) (1 + r^2 / alpha^2) ** -beta`` with
    ``FWHM = 2 alpha sqrt(2 ** (1 / beta) - 1)`` [pixel]. ``data[j, i]`` is the fraction of
    the flux that falls in a pixel whose centre lies ``((i - c) / oversampling,
    (j - c) / oversampling)`` pixels from the star (``c`` the central element; photutils'
    ePSF convention): the mean of ``I`` over ``oversampling * n_sub`` (odd) samples per
    axis of that pixel. The stamp covers ``half_size_pix`` pixels each side; the light
    beyond it is not renormalised into the stamp, so a fitted flux is the total flux.
    """
    if not (fwhm_pix > 0 and beta > 1 and half_size_pix >= 2):
        raise BadInputError(
            f"Moffat PSF needs fwhm_pix > 0, beta > 1, half_size_pix >= 2 (got {fwhm_pix}, {beta}, {half_size_pix})"
        )
    n_cell = oversampling * n_sub
    if n_cell % 2 == 0:
        raise BadInputError(f"oversampling * n_sub must be odd, got {oversampling} * {n_sub}")
    alpha = fwhm_pix / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    n_half = half_size_pix * n_cell + n_cell // 2  # the stamp plus half a pixel each side
    u = np.arange(-n_half, n_half + 1) / n_cell
    profile = (
        (beta - 1.0) / (math.pi * alpha**2) * (1.0 + (u[None, :] ** 2 + u[:, None] ** 2) / alpha**2) ** -beta
    )
    pixel_mean = uniform_filter(profile, size=n_cell, mode="constant")  # = the pixel integral (area 1)
    take = n_half + np.arange(-half_size_pix * oversampling, half_size_pix * oversampling + 1) * n_sub
    from photutils.psf import ImagePSF  # photutils (and matplotlib) when a PSF fit runs

    return ImagePSF(pixel_mean[np.ix_(take, take)], oversampling=oversampling)


def disc_mask(shape: tuple[int, int], x: np.ndarray, y: np.ndarray, *, radius_pix: float) -> np.ndarray:
    """Boolean ``(ny, nx)`` plane, True within ``radius_pix`` of any 0-based position ``(x, y)``."""
    ny, nx = shape
    out = np.zeros(shape, bool)
    r = math.ceil(radius_pix)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = np.isfinite(x) & np.isfinite(y)
    xk, yk = x[keep], y[keep]
    cx, cy = np.rint(xk).astype(np.int64), np.rint(yk).astype(np.int64)
    for ox, oy in zip(dx.ravel(), dy.ravel(), strict=True):
        px, py = cx + ox, cy + oy
        inside = (
            (px >= 0) & (px < nx) & (py >= 0) & (py < ny) & ((px - xk) ** 2 + (py - yk) ** 2 <= radius_pix**2)
        )
        out[py[inside], px[inside]] = True
    return out


def psf_noise_area(phot: Table, sky_rms: float) -> float | None:
    """Noise-equivalent area of the PSF fit [pixel^2]: ``(flux_err / sky_rms)^2`` of the sky-limited
    quarter of the measurements (smallest errors); None without a usable error."""
    err = np.asarray(phot["flux_err"], float)
    err = np.sort(err[np.isfinite(err) & (err > 0)])
    if not err.size or not sky_rms > 0:
        return None
    faint = err[: max(1, err.size // 4)]
    return float(np.median((faint / sky_rms) ** 2))
