"""Robust statistics shared by every package: the MAD as a sigma, clipped means and medians.

numpy and scipy only, at the foundation layer, so that calibration, detection,
photometry and the time-series code use one implementation.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAD_TO_SIGMA", "clipped_mean_std", "clipped_median", "robust_std"]

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal sample -> its sigma


def robust_std(values: np.ndarray) -> float:
    """Sigma from the median absolute deviation (NaNs ignored); NaN when empty."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    med = np.median(v)
    return float(MAD_TO_SIGMA * np.median(np.abs(v - med)))


def clipped_mean_std(
    values: np.ndarray, *, n_sigma: float = 4.0, n_iter: int = 5
) -> tuple[float, float, int]:
    """Mean and standard deviation after iterative clipping around the median.

    The clipping scale starts from the MAD and then uses the standard deviation of
    the kept values; the returned std is corrected for the truncation of a normal
    distribution at ``n_sigma`` (so it estimates the sigma of the core).
    Returns ``(mean, std, n_kept)``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    center = float(np.median(v))
    scale = MAD_TO_SIGMA * float(np.median(np.abs(v - center)))
    if scale == 0:
        scale = float(np.std(v))
    keep = np.ones(v.size, dtype=bool)
    for _ in range(n_iter):
        new_keep = np.abs(v - center) <= n_sigma * scale
        if new_keep.sum() < 2:
            break
        kept = v[new_keep]
        center = float(kept.mean())
        scale = float(kept.std(ddof=1)) / _truncation_factor(n_sigma)
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    kept = v[keep]
    return float(kept.mean()), float(kept.std(ddof=1)) / _truncation_factor(n_sigma), int(kept.size)


def _truncation_factor(n_sigma: float) -> float:
    """std of a standard normal truncated at +-n_sigma."""
    from scipy.special import erf

    z = float(n_sigma)
    phi = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    mass = erf(z / np.sqrt(2))
    return float(np.sqrt(1 - 2 * z * phi / mass))


def clipped_median(
    values: np.ndarray, *, n_sigma: float = 3.0, floor: float = 0.0
) -> tuple[float, float | None, int]:
    """One-pass MAD clip around the median: ``(median of the kept values, error of that median, n_kept)``.

    Values farther than ``max(n_sigma * 1.4826 MAD, floor)`` from the median are dropped; the
    error is ``1.2533 * std / sqrt(n)`` (the median's efficiency for a normal sample), None
    with fewer than 2 kept values. NaNs are ignored; ``(nan, None, 0)`` when nothing is finite.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), None, 0
    centre = float(np.median(v))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(v - centre)))
    keep = np.abs(v - centre) <= max(n_sigma * spread, floor)
    kept = v[keep]
    centre = float(np.median(kept))
    err = 1.2533 * float(np.std(kept)) / math.sqrt(kept.size) if kept.size >= 2 else None
    return centre, err, int(kept.size)
