"""Aperture corrections and the PSF-normalisation check, from bright isolated stars of one frame.

Input: the table of :func:`darkroom.phot.aperture_photometry` (``flux_ap<k>``, ``flux_err_ap<k>``,
``flags_ap<k>`` per aperture, meta ``aperture_radii_pix`` and ``ref_aperture``), with the PSF
columns (``flux``, ``flags``, ``group_size``) for :func:`psf_minus_aperture`. Magnitudes.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.table import Table

from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag

__all__ = [
    "APCORR_BAD_FLAGS",
    "aperture_correction",
    "bright_clean",
    "contaminated_mean",
    "psf_minus_aperture",
]

_MAG_ERR_FACTOR = 2.5 / math.log(10.0)

#: measurements unfit to measure an aperture correction (or compare PSF and aperture fluxes)
APCORR_BAD_FLAGS = DEFAULT_BAD_FLAGS | int(PhotFlag.BLENDED) | int(PhotFlag.CR) | int(PhotFlag.FORCED)


def bright_clean(phot: Table, *, min_snr: float) -> np.ndarray:
    """Stars that measure aperture corrections: detected, unblended and unflagged in the reference
    and the largest aperture, S/N >= ``min_snr`` in the reference aperture."""
    radii = phot.meta["aperture_radii_pix"]
    ref = int(phot.meta["ref_aperture"])
    big = int(np.argmax(radii))
    f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
    f_big = np.asarray(phot[f"flux_ap{big}"], float)
    flags = np.asarray(phot[f"flags_ap{big}"], np.int64) | np.asarray(phot[f"flags_ap{ref}"], np.int64)
    with np.errstate(all="ignore"):
        snr = f_ref / np.asarray(phot[f"flux_err_ap{ref}"], float)
        return ((flags & APCORR_BAD_FLAGS) == 0) & (snr >= min_snr) & (f_ref > 0) & (f_big > 0)


def psf_minus_aperture(phot: Table, *, min_snr: float) -> tuple[float | None, int]:
    """Median PSF minus largest-aperture magnitude of bright isolated stars [mag]: a check of the
    PSF model's normalisation (~0 when both measure the total flux).

    Isolated: the PSF fluxes of all other measured sources (detected or forced) within the
    largest radius plus one FWHM add up to less than 1 % of the star's; a PSF group of one;
    clean flags in both apertures and the fit.
    """
    if not len(phot):
        return None, 0
    from scipy.spatial import cKDTree

    radii = phot.meta["aperture_radii_pix"]
    big = int(np.argmax(radii))
    reach = float(radii[big]) + float(phot.meta.get("fwhm_pix") or 1.0)
    xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
    flux = np.nan_to_num(np.asarray(phot["flux"], float), nan=0.0).clip(0.0)
    near = cKDTree(xy).query_ball_point(xy, r=reach)
    light = np.array([flux[v].sum() for v in near]) - flux
    use = bright_clean(phot, min_snr=min_snr) & (
        (np.asarray(phot["flags"], np.int64) & APCORR_BAD_FLAGS) == 0
    )
    use &= (np.asarray(phot["group_size"]) == 1) & (light < 0.01 * flux)
    with np.errstate(all="ignore"):
        d = -2.5 * np.log10(
            np.asarray(phot["flux"], float)[use] / np.asarray(phot[f"flux_ap{big}"], float)[use]
        )
    d = d[np.isfinite(d)]
    if d.size < 3:
        return None, int(d.size)
    return float(np.median(d)), int(d.size)


def _isolated(phot: Table, use: np.ndarray, *, max_neighbour_frac: float) -> np.ndarray:
    """The stars of ``use`` whose large aperture holds no other star's light, by the strictest test
    that leaves at least 5 (else 3) of them.

    1. No other measured source (detected or forced) inside the large aperture and its sky annulus:
       in a crowded field (a globular cluster) the neighbours' light makes every magnitude too
       bright (SDSS M2, r: 0.05 mag with all bright stars, 0.027 with a flux-sum isolation, 0.007
       so).
    2. Else, the reference-aperture fluxes of all other sources within the large radius plus one
       FWHM add up to at most ``max_neighbour_frac`` of the star's: a small crowded frame has no
       star alone within 30 px, and there all bright stars overcorrect (simulated 256 x 256
       frames at FWHM 2.7 px: -0.15 mag against the true -0.11, the zero points 0.03-0.07 mag
       too bright).
    3. Else the least contaminated 5 stars.
    """
    from scipy.spatial import cKDTree

    radii = phot.meta["aperture_radii_pix"]
    ref = int(phot.meta["ref_aperture"])
    big = int(np.argmax(radii))
    annulus = phot.meta.get("annulus_pix") or [0.0, 0.0]
    xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
    tree = cKDTree(xy)
    reach = float(radii[big]) + max(float(annulus[-1]), float(radii[big]))
    dist, _ = tree.query(xy, k=2)
    alone = use & (dist[:, 1] > reach)
    if alone.sum() >= 5:
        return alone
    flux = np.nan_to_num(np.asarray(phot[f"flux_ap{ref}"], float), nan=0.0).clip(0.0)
    reach = float(radii[big]) + float(phot.meta.get("fwhm_pix") or 1.0)
    idx = np.flatnonzero(use)
    near = tree.query_ball_point(xy[idx], r=reach)
    with np.errstate(all="ignore"):
        frac = np.array([flux[v].sum() for v in near]) / flux[idx] - 1.0
    frac = np.where(np.isfinite(frac), frac, np.inf)
    clean = frac <= max_neighbour_frac
    if clean.sum() < 5:
        clean = np.zeros(idx.size, bool)
        clean[np.argsort(frac, kind="stable")[:5]] = True
    out = np.zeros(len(phot), bool)
    out[idx[clean]] = True
    return out


def aperture_correction(
    phot: Table, *, min_snr: float, max_neighbour_frac: float = 0.01, sys_err_mag: float = 0.02
) -> tuple[float, float | None, int]:
    """Magnitude difference from the reference to the largest aperture [mag], its error and the
    stars it rests on, from bright clean stars that are isolated from the measured sources (see
    :func:`_isolated`; ``max_neighbour_frac`` the neighbours' light allowed in the large aperture),
    combined by :func:`contaminated_mean` (``sys_err_mag`` per star in quadrature: the large
    aperture's sky and the light of unseen stars err by ~2 % even for bright stars in a crowded
    frame). (0, None, n) with fewer than 3 stars."""
    radii = phot.meta["aperture_radii_pix"]
    ref = int(phot.meta["ref_aperture"])
    big = int(np.argmax(radii))
    if big == ref or not len(phot):
        return 0.0, None, 0
    f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
    f_big = np.asarray(phot[f"flux_ap{big}"], float)
    use = bright_clean(phot, min_snr=min_snr)
    if len(phot) > 1:
        use = _isolated(phot, use, max_neighbour_frac=max_neighbour_frac)
    with np.errstate(all="ignore"):
        d = -2.5 * np.log10(f_big[use] / f_ref[use])
        # the light between the two apertures is measured on pixels the reference aperture
        # does not hold: its noise is the difference of the two apertures' variances
        e_ref = np.asarray(phot[f"flux_err_ap{ref}"], float)[use]
        e_big = np.asarray(phot[f"flux_err_ap{big}"], float)[use]
        ratio = f_big[use] / f_ref[use]
        var_out = np.clip(e_big**2 - e_ref**2, 0.0, None) + (ratio * e_ref) ** 2
        sigma = _MAG_ERR_FACTOR * np.sqrt(var_out) / f_big[use]
    ok = np.isfinite(d) & np.isfinite(sigma)
    if ok.sum() < 3:
        return 0.0, None, int(ok.sum())
    return contaminated_mean(d[ok], sigma[ok], floor=sys_err_mag)


def contaminated_mean(
    values: np.ndarray,
    sigma: np.ndarray,
    *,
    floor: float = 0.02,
    tail_mag: float = 1.0,
    outlier_frac: float = 0.05,
) -> tuple[float, float | None, int]:
    """The true value of magnitude differences that unseen neighbours only ever make more negative.

    A faint star inside the large aperture but not in the source list (undetected, or merged into
    the detection) adds light to the large aperture only, so each star's correction is the true
    one plus its noise ``sigma`` [mag] (``floor`` added in quadrature: PSF changes over the frame)
    or, for a contaminated star, below it by anything up to ``tail_mag``. In a crowded frame most
    stars can be contaminated, and a median or a symmetric clip then lands among them. The model
    is a mixture: clean stars ``N(mu, sigma)``, a fraction ``p`` spread uniformly over
    ``[mu - tail_mag, mu]`` (convolved with the noise) and ``outlier_frac`` anywhere (a sky
    annulus on a neighbour errs the other way); ``mu`` and ``p`` maximise the likelihood (a grid
    in ``mu``, coarse then fine, and in ``p``; then the membership-weighted mean). The clean stars sit at the top of the
    distribution, tight: a ``mu`` among the contaminated ones leaves them unexplained.
    Returns ``(mu, its error from the stars' clean-membership weights, n_clean)``.
    """
    from scipy.special import log_ndtr, ndtr

    v = np.asarray(values, float)
    s = np.sqrt(np.asarray(sigma, float) ** 2 + floor**2)
    w = 1.0 / s**2
    flat = 1.0 / (float(np.ptp(v)) + tail_mag)
    p_grid = np.linspace(0.0, 0.95 - outlier_frac, 20)

    def components(mu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = (v[None, :] - mu[:, None]) / s[None, :]
        gauss = np.exp(-0.5 * z * z) / (math.sqrt(2.0 * math.pi) * s[None, :])
        # P(mu - tail_mag < d + noise < mu) / tail_mag, for d below mu
        tail = np.clip(ndtr(-z) - np.exp(log_ndtr(-z - tail_mag / s[None, :])), 0.0, None) / tail_mag
        return gauss, tail

    def best(mu: np.ndarray) -> tuple[float, float]:
        gauss, tail = components(mu)
        total = np.array(
            [
                np.log((1.0 - p - outlier_frac) * gauss + p * tail + outlier_frac * flat).sum(axis=1)
                for p in p_grid
            ]
        )  # (p, mu)
        ip, im = np.unravel_index(int(np.argmax(total)), total.shape)
        return float(mu[im]), float(p_grid[ip])

    # the likelihood has peaks about sigma wide: a grid of a third of the smallest sigma (at most
    # 1000 steps over the central 98 % of the values), then finer
    lo, hi = np.percentile(v, [1.0, 99.0])
    step = max(float(np.min(s)) / 3.0, (hi - lo) / 1000.0, 1e-4)
    mu, _ = best(np.arange(lo - 3 * step, hi + 3 * step, step))
    mu, p = best(np.arange(mu - 2 * step, mu + 2 * step, step / 20.0))
    gauss, tail = components(np.array([mu]))
    clean = (1.0 - p - outlier_frac) * gauss[0]
    member = clean / (clean + p * tail[0] + outlier_frac * flat)
    weight = float(np.sum(member * w))
    if weight <= 0:
        return mu, None, 0
    # the grid's value refined: the mean of the stars weighted by clean membership / variance
    mu = float(np.sum(member * w * v) / weight)
    return mu, 1.0 / math.sqrt(weight), int(np.count_nonzero(member > 0.5))
