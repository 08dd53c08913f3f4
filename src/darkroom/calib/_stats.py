"""Robust statistics shared by the calibration modules (private)."""

from __future__ import annotations

import bottleneck as bn
import numpy as np

from darkroom.robust import MAD_TO_SIGMA, clipped_mean_std, clipped_mean_std_mad, median, robust_std

__all__ = [
    "MAD_TO_SIGMA",
    "clipped_mean_std",
    "clipped_mean_std_mad",
    "frame_median",
    "median",
    "robust_std",
    "subsample_rows",
]


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
    # bn.nanmedian's value: bn.median's when no value is NaN (found ~5x faster by median()),
    # else the NaN-aware median itself
    m = median(sub, middle=bn.median)
    return float(bn.nanmedian(sub) if np.isnan(m) else m)
