"""Robust statistics shared by the calibration modules (private)."""

from __future__ import annotations

import bottleneck as bn
import numpy as np

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


def subsample_rows(shape: tuple[int, int], n_rows: int) -> np.ndarray:
    """Evenly spaced row indices (at most ``n_rows``) of an image of ``shape``."""
    ny = shape[0]
    n = max(1, min(ny, n_rows))
    return np.unique(np.linspace(0, ny - 1, n).round().astype(int))


def frame_median(data: np.ndarray, *, max_pixels: int = 1_000_000) -> float:
    """Median of the finite pixels, from an even subsample when the frame is large."""
    a = np.asarray(data)
    step = max(1, int(np.ceil(np.sqrt(a.size / max_pixels))))
    sub = a[::step, ::step] if a.ndim == 2 else a.ravel()[:: step * step]
    return float(bn.nanmedian(sub))
