"""Moffat point-spread function, pixel-integrated, rendered in postage stamps.

Pixel convention (sep): pixel ``(i, j)`` of an ``(ny, nx)`` array covers
``x in [j - 0.5, j + 0.5)``, ``y in [i - 0.5, i + 0.5)``; its centre is ``(x, y) = (j, i)``.

The Moffat surface brightness with total flux 1 is::

    I(r) = (beta - 1) / (pi alpha^2) * (1 + r^2 / alpha^2) ** -beta,
    FWHM = 2 alpha sqrt(2 ** (1 / beta) - 1).

A stamp is integrated over each pixel by sampling ``oversample x oversample`` points
inside the pixel within three FWHM of the centre and at the pixel centre further out
(where the profile is smooth: the error of a centre sample is below 0.03 % of the
star's flux). Its half-size grows with the flux, so that the flux beyond the stamp
is below ``wing_tolerance_e``; the stamp is then normalised to sum to exactly 1, so
the electrons put into an image are exactly the star's flux (less what falls off
the detector).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["moffat_alpha", "moffat_psf", "render_stars", "stamp_half_size"]

_HALF_SIZES = (6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)
_CHUNK_ELEMENTS = 3_000_000  # samples evaluated at once, bounds the memory of a batch


def moffat_alpha(fwhm_pix: float | np.ndarray, beta: float) -> float | np.ndarray:
    """Moffat core width alpha [pixel] for a FWHM [pixel] and beta."""
    return np.asarray(fwhm_pix) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def stamp_half_size(
    flux_e: np.ndarray,
    fwhm_pix: np.ndarray,
    *,
    beta: float,
    wing_tolerance_e: float = 1.0,
    max_half_size: int = 256,
) -> np.ndarray:
    """Stamp half-size [pixel] so that the flux outside is below ``wing_tolerance_e``.

    The flux of a Moffat profile outside radius R is ``(1 + R^2/alpha^2) ** (1 - beta)``.
    The result is at least ``3 FWHM`` and is rounded up to one of a few sizes so stars
    can be rendered in batches.
    """
    flux = np.maximum(np.asarray(flux_e, dtype=float), wing_tolerance_e)
    alpha = moffat_alpha(np.asarray(fwhm_pix, dtype=float), beta)
    radius = alpha * np.sqrt(np.maximum((flux / wing_tolerance_e) ** (1.0 / (beta - 1.0)) - 1.0, 0.0))
    radius = np.maximum(radius, 3.0 * np.asarray(fwhm_pix) + 1.0)
    sizes = np.array([s for s in _HALF_SIZES if s < max_half_size] + [max_half_size])
    idx = np.searchsorted(sizes, np.ceil(radius))
    return sizes[np.minimum(idx, len(sizes) - 1)]


def _profile(u: np.ndarray, beta: float) -> np.ndarray:
    """``(1 + u) ** -beta`` computed in place on ``u`` (float32), fast for beta 3 and 2.5."""
    u += np.float32(1.0)
    if beta == 3.0:
        np.reciprocal(u, out=u)
        r = u * u
        r *= u
        return r
    if beta == 2.5:
        np.reciprocal(u, out=u)
        r = np.sqrt(u)
        r *= u
        r *= u
        return r
    return np.power(u, np.float32(-beta), out=u)


def _radius2(frac_x: np.ndarray, frac_y: np.ndarray, grid: np.ndarray, inv_a2: np.ndarray) -> np.ndarray:
    """``(dx^2 + dy^2) / alpha^2`` on the grid, shape ``(n, len(grid), len(grid))``, float32."""
    dx = grid[None, :] - frac_x[:, None]
    dy = grid[None, :] - frac_y[:, None]
    ux = (dx * dx * inv_a2[:, None]).astype(np.float32)
    uy = (dy * dy * inv_a2[:, None]).astype(np.float32)
    return uy[:, :, None] + ux[:, None, :]


def _stamps(
    frac_x: np.ndarray,
    frac_y: np.ndarray,
    alpha: np.ndarray,
    *,
    half: int,
    core: int,
    beta: float,
    oversample: int,
) -> np.ndarray:
    """Normalised float64 stamps ``(n, 2 half + 1, 2 half + 1)`` for sub-pixel offsets in [-0.5, 0.5]."""
    n = len(frac_x)
    size = 2 * half + 1
    inv_a2 = 1.0 / (alpha * alpha)
    out = _profile(_radius2(frac_x, frac_y, np.arange(-half, half + 1, dtype=float), inv_a2), beta)
    core = min(core, half)
    if oversample > 1 and core > 0:
        os_ = oversample
        sub = (np.arange(os_) + 0.5) / os_ - 0.5
        cgrid = (np.arange(-core, core + 1, dtype=float)[:, None] + sub[None, :]).ravel()
        fine = _profile(_radius2(frac_x, frac_y, cgrid, inv_a2), beta)
        csize = 2 * core + 1
        fine = fine.reshape(n, csize, os_, csize, os_).sum(axis=(2, 4), dtype=np.float64)
        out[:, half - core : half + core + 1, half - core : half + core + 1] = fine / (os_ * os_)
    stamps = out.astype(np.float64)
    stamps /= stamps.reshape(n, size * size).sum(axis=1)[:, None, None]
    return stamps


def moffat_psf(
    fwhm_pix: float,
    *,
    beta: float = 3.0,
    half_size: int | None = None,
    x_offset: float = 0.0,
    y_offset: float = 0.0,
    oversample: int = 5,
) -> np.ndarray:
    """A pixel-integrated Moffat stamp of shape ``(2 h + 1, 2 h + 1)`` summing to 1.

    Parameters
    ----------
    fwhm_pix
        Full width at half maximum [pixel].
    beta
        Moffat beta (> 1).
    half_size
        Half-size h of the stamp [pixel]; default ``ceil(4 FWHM)``.
    x_offset, y_offset
        Position of the star relative to the centre of the central pixel [pixel],
        each in [-0.5, 0.5].
    oversample
        Sub-pixel samples per axis in the core.
    """
    if fwhm_pix <= 0 or beta <= 1:
        raise ValueError(f"fwhm_pix ({fwhm_pix}) must be > 0 and beta ({beta}) > 1")
    if not (-0.5 <= x_offset <= 0.5 and -0.5 <= y_offset <= 0.5):
        raise ValueError(f"offsets ({x_offset}, {y_offset}) must lie in [-0.5, 0.5] pixel")
    half = math.ceil(4 * fwhm_pix) if half_size is None else int(half_size)
    alpha = np.atleast_1d(moffat_alpha(fwhm_pix, beta)).astype(float)
    stamp = _stamps(
        np.array([float(x_offset)]),
        np.array([float(y_offset)]),
        alpha,
        half=half,
        core=math.ceil(3 * fwhm_pix),
        beta=beta,
        oversample=oversample,
    )
    return stamp[0]


def render_stars(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm_pix: np.ndarray,
    *,
    beta: float = 3.0,
    oversample: int = 5,
    wing_tolerance: float = 1.0,
    max_half_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Add Moffat stars to ``image`` in place.

    Parameters
    ----------
    image
        Float array ``(ny, nx)`` receiving the stars (same unit as ``flux``).
    x, y
        Star centres, 0-based pixel coordinates (sep convention).
    flux
        Total flux of each star (e.g. electrons).
    fwhm_pix
        FWHM of each star [pixel].
    wing_tolerance
        Flux allowed beyond the stamp edge, in the unit of ``flux``.

    Returns
    -------
    frac_on_chip, peak
        Fraction of each star's flux that landed on the image, and its brightest
        pixel value (unit of ``flux``), both before any noise.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    flux = np.asarray(flux, dtype=float)
    fwhm = np.broadcast_to(np.asarray(fwhm_pix, dtype=float), x.shape)
    ny, nx = image.shape
    n = len(x)
    frac_on = np.zeros(n)
    peak = np.zeros(n)
    if n == 0:
        return frac_on, peak
    half = stamp_half_size(
        flux, fwhm, beta=beta, wing_tolerance_e=wing_tolerance, max_half_size=max_half_size
    )
    ix = np.floor(x + 0.5).astype(np.int64)
    iy = np.floor(y + 0.5).astype(np.int64)
    fx = x - ix
    fy = y - iy
    core = math.ceil(3.0 * float(fwhm.max()))
    visible = (ix + half >= 0) & (ix - half < nx) & (iy + half >= 0) & (iy - half < ny) & (flux > 0)
    for h in np.unique(half[visible]):
        members = np.flatnonzero(visible & (half == h))
        size = 2 * int(h) + 1
        per_star = size * size + (2 * min(core, int(h)) + 1) ** 2 * oversample**2
        chunk = max(1, _CHUNK_ELEMENTS // per_star)
        for start in range(0, len(members), chunk):
            sel = members[start : start + chunk]
            stamps = _stamps(
                fx[sel],
                fy[sel],
                np.asarray(moffat_alpha(fwhm[sel], beta), dtype=float),
                half=int(h),
                core=core,
                beta=beta,
                oversample=oversample,
            )
            stamps *= flux[sel][:, None, None]
            for k, s in enumerate(sel):
                x0, y0 = ix[s] - h, iy[s] - h
                xa, xb = max(x0, 0), min(x0 + size, nx)
                ya, yb = max(y0, 0), min(y0 + size, ny)
                piece = stamps[k, ya - y0 : yb - y0, xa - x0 : xb - x0]
                image[ya:yb, xa:xb] += piece
                frac_on[s] = piece.sum() / flux[s]
                peak[s] = piece.max()
    return frac_on, peak
