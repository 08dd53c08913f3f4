"""Robust statistics shared by every package: the MAD as a sigma, clipped means and medians.

numpy and scipy only, at the foundation layer, so that calibration, detection,
photometry and the time-series code use one implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "MAD_TO_SIGMA",
    "clipped_mean_std",
    "clipped_mean_std_mad",
    "clipped_median",
    "median",
    "robust_std",
]

MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^-1(3/4): MAD of a normal sample -> its sigma

_SELECT_MIN = 1 << 16  # below this many values np.median itself is as fast
_SAMPLE = 1 << 14  # values in the pivot sample of :func:`median`


def median(
    values: np.ndarray,
    *,
    middle: Callable[[np.ndarray], np.floating] = np.median,
    where: np.ndarray | None = None,
) -> np.floating:
    """Exactly ``np.median(values)`` (value and dtype; NaN when any value is NaN) of all the
    values, ~3x faster on large float arrays; with ``where`` (boolean, the shape of
    ``values``) exactly ``np.median(values[where])``, without making that copy. ``middle`` is
    the median function to match (``bottleneck.median`` rounds the mean of the two middle
    values its own way): it is applied to the middle value(s), or to everything on the
    fallback.

    The median's two order statistics are selected among the values between two pivots
    taken from an evenly strided sample (a few % of the values) instead of partitioning a
    copy of the whole array: two comparison passes, one compress and one small
    partition. When the pivots do not bracket the median (or NaN is present) it falls
    back to ``np.median``.
    """
    a = np.asarray(values).ravel()
    w = None if where is None else np.asarray(where, dtype=bool).ravel()
    if w is not None and w.size != a.size:
        raise ValueError(f"where has {w.size} values, values {a.size}")
    n = a.size if w is None else int(np.count_nonzero(w))
    if n < _SELECT_MIN or a.dtype.kind != "f":
        return middle(a if w is None else a[w])
    k_lo, k_hi = (n - 1) // 2, n // 2  # the order statistics np.median averages
    step = max(1, a.size // _SAMPLE)
    strided = a[::step][:_SAMPLE] if w is None else a[::step][w[::step]]
    sample = np.sort(strided)
    m = sample.size
    if m < 64:  # too few of the values in the sample (a sparse ``where``)
        return middle(a if w is None else a[w])
    # the sample median's rank scatters by sqrt(m) / 2: pivots 4 of those away either side
    half = int(2.0 * math.sqrt(m)) + 1
    lo, hi = sample[max(0, m // 2 - half)], sample[min(m - 1, m // 2 + half)]
    if not (lo <= hi):  # NaN in the sample
        return middle(a if w is None else a[w])
    from_lo = a >= lo  # NaN is in neither of these two
    to_hi = a <= hi
    if w is not None:
        np.logical_and(from_lo, w, out=from_lo)
        np.logical_and(to_hi, w, out=to_hi)
    n_from_lo, n_to_hi = int(np.count_nonzero(from_lo)), int(np.count_nonzero(to_hi))
    np.logical_and(from_lo, to_hi, out=from_lo)
    band = a[from_lo]
    below, above = n_to_hi - band.size, n_from_lo - band.size
    if below + band.size + above != n:
        return middle(a if w is None else a[w])  # NaN among the values
    if not (below <= k_lo and below + band.size > k_hi):
        return middle(a if w is None else a[w])  # the pivots missed
    i, j = k_lo - below, k_hi - below
    part = np.partition(band, (i, j) if i != j else i)
    # the median function's own mean of the middle value(s), for the same rounding and dtype
    return middle(part[i : j + 1])


def robust_std(values: np.ndarray) -> float:
    """Sigma from the median absolute deviation (NaNs ignored); NaN when empty."""
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.size == 0:
        return float("nan")
    dev = np.subtract(v, median(v))
    return float(MAD_TO_SIGMA * median(np.abs(dev, out=dev)))


def clipped_mean_std(
    values: np.ndarray, *, n_sigma: float = 4.0, n_iter: int = 5
) -> tuple[float, float, int]:
    """Mean and standard deviation after iterative clipping around the median.

    The clipping scale starts from the MAD and then uses the standard deviation of
    the kept values; the returned std is corrected for the truncation of a normal
    distribution at ``n_sigma`` (so it estimates the sigma of the core).
    Returns ``(mean, std, n_kept)``.
    """
    mean, std, n_kept, _ = clipped_mean_std_mad(values, n_sigma=n_sigma, n_iter=n_iter)
    return mean, std, n_kept


def clipped_mean_std_mad(
    values: np.ndarray, *, n_sigma: float = 4.0, n_iter: int = 5
) -> tuple[float, float, int, float]:
    """:func:`clipped_mean_std` and, fourth, :func:`robust_std` of the same values, both from one
    pass: the clipping starts from that MAD sigma (the same float64 values, medians and
    product, so the same number to the last bit)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.size == 0:
        return float("nan"), float("nan"), 0, float("nan")
    # median() is np.median's value, found without partitioning a copy of every value
    center = float(median(v))
    dev = np.subtract(v, center)
    np.abs(dev, out=dev)
    mad_sigma = MAD_TO_SIGMA * float(median(dev))
    scale = mad_sigma
    if scale == 0:
        scale = float(np.std(v))
    truncation = _truncation_factor(n_sigma)
    keep = np.ones(v.size, dtype=bool)
    work = np.empty_like(v)  # scratch for the deviations
    kept = v
    stats = None  # (mean, std) of `kept` once computed: the last pass's are the answer's
    for _ in range(n_iter):
        np.subtract(v, center, out=dev)
        np.abs(dev, out=dev)
        new_keep = dev <= n_sigma * scale
        n_new = int(np.count_nonzero(new_keep))
        if n_new < 2:
            break
        kept = v[new_keep]
        stats = center, std = _mean_std(kept, work)
        scale = std / truncation
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if kept.size != int(np.count_nonzero(keep)):  # the last pass's values were not kept
        kept = v[keep]
        stats = None
    mean, std = _mean_std(kept, work) if stats is None else stats
    return mean, std / truncation, int(kept.size), mad_sigma


def _mean_std(values: np.ndarray, work: np.ndarray) -> tuple[float, float]:
    """``(values.mean(), values.std(ddof=1))`` to the last bit, as numpy computes them (one
    pairwise sum for the mean, shared by the deviations), with ``work`` (at least as long)
    as scratch space."""
    n = values.size
    mean = np.add.reduce(values) / n
    dev = np.subtract(values, mean, out=work[:n])
    np.multiply(dev, dev, out=dev)
    return float(mean), math.sqrt(float(np.add.reduce(dev) / (n - 1)))


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
