"""Gaussian stars of exact flux: injection of fakes and synthetic frames with known truth.

Each star's flux is integrated exactly over every pixel (error functions, separable in
x and y), so the sum over a large enough box equals the flux given to within 1e-8.
Positions are 0-based pixel centres (``(0.0, 0.0)`` is the centre of the first pixel),
shapes ``(ny, nx)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from darkroom.errors import BadInputError

__all__ = ["add_gaussian_stars", "noisy_frame"]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _pixel_integrals(centre: float, lo: int, hi: int, sigma: float) -> np.ndarray:
    edges = np.arange(lo, hi + 1, dtype=np.float64) - 0.5 - centre
    cdf = 0.5 * (1.0 + erf(edges / (math.sqrt(2.0) * sigma)))
    return np.diff(cdf)


def add_gaussian_stars(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    fwhm_pix: float,
    half_size_sigma: float = 7.0,
) -> np.ndarray:
    """Add circular Gaussian stars to ``image`` in place and return it.

    Parameters
    ----------
    image : (ny, nx) float array
    x, y : arrays
        0-based pixel positions of the star centres.
    flux : array
        Total flux of each star [image unit]; the part falling off the image is lost.
    fwhm_pix : float
        Full width at half maximum [pixel].
    half_size_sigma : float
        Half width of the box each star is drawn in [sigma].
    """
    if fwhm_pix <= 0:
        raise BadInputError(f"fwhm_pix must be > 0, got {fwhm_pix}")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    flux = np.broadcast_to(np.asarray(flux, dtype=np.float64), x.shape)
    ny, nx = image.shape
    sigma = fwhm_pix * _FWHM_TO_SIGMA
    half = math.ceil(half_size_sigma * sigma) + 1
    for xi, yi, fi in zip(x, y, flux, strict=True):
        x0 = max(0, math.floor(xi) - half)
        x1 = min(nx, math.floor(xi) + half + 1)
        y0 = max(0, math.floor(yi) - half)
        y1 = min(ny, math.floor(yi) + half + 1)
        if x1 <= x0 or y1 <= y0:
            continue
        px = _pixel_integrals(xi, x0, x1, sigma)
        py = _pixel_integrals(yi, y0, y1, sigma)
        image[y0:y1, x0:x1] += (fi * np.outer(py, px)).astype(image.dtype)
    return image


def noisy_frame(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    fwhm_pix: float,
    sky_adu: float = 100.0,
    gain_e_per_adu: float = 2.0,
    read_noise_e: float = 8.0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A frame of Gaussian stars on a flat sky with Poisson and read noise.

    Returns ``(sci, var, model)``: ``sci`` float32 [adu] with noise, ``var`` float32
    [adu^2] the true variance of each pixel (``(model * gain + read_noise^2) / gain^2``),
    ``model`` float64 the noise-free image including the sky.
    """
    rng = rng or np.random.default_rng(0)
    model = np.full(shape, float(sky_adu), dtype=np.float64)
    add_gaussian_stars(model, x, y, flux, fwhm_pix=fwhm_pix)
    electrons = rng.poisson(np.clip(model, 0, None) * gain_e_per_adu).astype(np.float64)
    electrons += rng.normal(0.0, read_noise_e, size=shape)
    sci = (electrons / gain_e_per_adu).astype(np.float32)
    var = ((np.clip(model, 0, None) * gain_e_per_adu + read_noise_e**2) / gain_e_per_adu**2).astype(
        np.float32
    )
    return sci, var, model
