"""Synthetic CCD frames with known truth, for the calibration tests and benchmarks.

Everything here is deterministic for a given ``seed``. Shapes are ``(ny, nx)``;
positions ``(x, y)`` are 0-based pixel centres. Values are in adu unless the name
says otherwise; the camera converts electrons to adu with ``gain_e_per_adu``.

The cosmic-ray model is a straight track of random direction whose charge is
deposited along the path (step 0.1 pixel, bilinear weights), so a track covers one
to a few pixels across and 1-40 pixels along: sharper than any star, as on a real
detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SyntheticFrame",
    "cosmic_ray_image",
    "star_image",
    "synthetic_sky_frame",
]


@dataclass(frozen=True)
class SyntheticFrame:
    """A noisy frame and its truth.

    Attributes
    ----------
    data : ndarray, float32, (ny, nx)
        Sky + stars + cosmic rays + noise [adu] (no bias).
    truth : ndarray, float32, (ny, nx)
        Noise-free sky + stars [adu] (no cosmic rays).
    cosmic_rays : ndarray, float32, (ny, nx)
        Cosmic-ray charge [adu] (noise-free).
    variance : ndarray, float32, (ny, nx)
        Per-pixel variance of the noise on ``truth`` [adu^2] (Poisson of sky and
        stars plus read noise; pixels hit by a cosmic ray have more).
    sky_adu : float
        Sky level [adu].
    star_xy : ndarray, float64, (n, 2)
        Star centres (x, y), 0-based.
    star_flux_adu : ndarray, float64, (n,)
        Star total fluxes [adu].
    """

    data: np.ndarray
    truth: np.ndarray
    cosmic_rays: np.ndarray
    variance: np.ndarray
    sky_adu: float
    star_xy: np.ndarray
    star_flux_adu: np.ndarray

    def cosmic_ray_truth_mask(self, *, n_sigma: float = 5.0) -> np.ndarray:
        """Pixels whose cosmic-ray charge exceeds ``n_sigma`` times the pixel noise."""
        return self.cosmic_rays > n_sigma * np.sqrt(self.variance)


def cosmic_ray_image(
    shape: tuple[int, int],
    n_tracks: int,
    *,
    rng: np.random.Generator,
    gain_e_per_adu: float = 1.0,
    charge_e_per_pix: float = 1500.0,
    mean_length_pix: float = 4.0,
    max_length_pix: float = 40.0,
) -> np.ndarray:
    """Noise-free image of ``n_tracks`` straight cosmic-ray tracks [adu].

    Track lengths are exponential (mean ``mean_length_pix``, capped at
    ``max_length_pix``); the charge per pixel of path is log-normal with median
    ``charge_e_per_pix`` electrons (sigma 0.6 in ln).
    """
    ny, nx = shape
    out = np.zeros(shape, dtype=np.float64)
    if n_tracks <= 0:
        return out.astype(np.float32)
    x0 = rng.uniform(0, nx - 1, n_tracks)
    y0 = rng.uniform(0, ny - 1, n_tracks)
    length = np.minimum(rng.exponential(mean_length_pix, n_tracks), max_length_pix)
    angle = rng.uniform(0, np.pi, n_tracks)
    dedx = charge_e_per_pix * np.exp(0.6 * rng.standard_normal(n_tracks))
    step = 0.1
    n_steps = np.maximum(1, np.ceil(length / step).astype(int))
    idx = np.repeat(np.arange(n_tracks), n_steps)
    t = np.concatenate([np.arange(k) for k in n_steps]) * step
    x = x0[idx] + t * np.cos(angle[idx])
    y = y0[idx] + t * np.sin(angle[idx])
    q = dedx[idx] * step  # electrons per sample
    # a point-like event (length ~0) still deposits a pixel's worth of charge
    q = np.where(n_steps[idx] == 1, dedx[idx], q)
    keep = (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    x, y, q = x[keep], y[keep], q[keep]
    ix = np.minimum(np.floor(x).astype(int), nx - 2)
    iy = np.minimum(np.floor(y).astype(int), ny - 2)
    fx = x - ix
    fy = y - iy
    for dy, dx, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        np.add.at(out, (iy + dy, ix + dx), q * w)
    return (out / gain_e_per_adu).astype(np.float32)


def star_image(
    shape: tuple[int, int],
    xy: np.ndarray,
    flux_adu: np.ndarray,
    *,
    fwhm_pix: float,
    stamp_radius_pix: int | None = None,
) -> np.ndarray:
    """Noise-free image of circular Gaussian stars (pixel-integrated) [adu]."""
    from scipy.special import erf

    ny, nx = shape
    out = np.zeros(shape, dtype=np.float64)
    sigma = fwhm_pix / 2.3548200450309493
    r = stamp_radius_pix if stamp_radius_pix is not None else int(np.ceil(5 * sigma)) + 1
    edges = np.arange(0, 2 * r + 3) - 0.5  # pixel edges relative to the stamp origin
    for (x, y), f in zip(np.asarray(xy), np.asarray(flux_adu), strict=True):
        ix0 = int(np.floor(x)) - r
        iy0 = int(np.floor(y)) - r
        ex = erf((ix0 + edges - x) / (np.sqrt(2) * sigma))
        ey = erf((iy0 + edges - y) / (np.sqrt(2) * sigma))
        px = 0.5 * np.diff(ex)
        py = 0.5 * np.diff(ey)
        stamp = f * np.outer(py, px)
        ys = slice(max(iy0, 0), min(iy0 + len(py), ny))
        xs = slice(max(ix0, 0), min(ix0 + len(px), nx))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        out[ys, xs] += stamp[ys.start - iy0 : ys.stop - iy0, xs.start - ix0 : xs.stop - ix0]
    return out


def synthetic_sky_frame(
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    sky_adu: float = 500.0,
    gain_e_per_adu: float = 1.5,
    read_noise_e: float = 8.0,
    n_stars: int = 200,
    fwhm_pix: float = 3.0,
    peak_max_adu: float = 20000.0,
    n_cosmic_rays: int = 100,
    cr_charge_e_per_pix: float = 1500.0,
) -> SyntheticFrame:
    """A sky frame with Gaussian stars, cosmic rays, Poisson and read noise.

    Star peak values follow a power law between 5 times the sky noise and
    ``peak_max_adu``; positions avoid the outer 5 pixels. Noise: Poisson in
    electrons on sky + stars + cosmic rays, plus Gaussian read noise.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    sigma = fwhm_pix / 2.3548200450309493
    xy = np.column_stack([rng.uniform(5, nx - 6, n_stars), rng.uniform(5, ny - 6, n_stars)])
    sky_noise = np.sqrt(sky_adu / gain_e_per_adu + (read_noise_e / gain_e_per_adu) ** 2)
    lo, hi = 5 * sky_noise, peak_max_adu
    u = rng.uniform(0, 1, n_stars)
    peak = lo * (hi / lo) ** u**2  # many faint, few bright
    flux = peak * 2 * np.pi * sigma**2
    stars = star_image(shape, xy, flux, fwhm_pix=fwhm_pix)
    truth = (sky_adu + stars).astype(np.float64)
    crs = cosmic_ray_image(
        shape, n_cosmic_rays, rng=rng, gain_e_per_adu=gain_e_per_adu, charge_e_per_pix=cr_charge_e_per_pix
    )
    electrons = rng.poisson(np.maximum((truth + crs) * gain_e_per_adu, 0)).astype(np.float64)
    electrons += read_noise_e * rng.standard_normal(shape)
    data = (electrons / gain_e_per_adu).astype(np.float32)
    variance = (truth / gain_e_per_adu + (read_noise_e / gain_e_per_adu) ** 2).astype(np.float32)
    return SyntheticFrame(
        data=data,
        truth=truth.astype(np.float32),
        cosmic_rays=crs,
        variance=variance,
        sky_adu=float(sky_adu),
        star_xy=xy,
        star_flux_adu=flux,
    )
