"""Compiled kernels of :mod:`darkroom.phot.aperture`: the annulus pixels and their clipped
statistics (numba).

Imported by :func:`darkroom.phot.aperture.clipped_annulus_stats` (and the annulus background)
when it first runs (numba is
not imported with :mod:`darkroom.phot`, nor at the CLI's start-up). Compiled on first use and
cached on disk (``cache=True``); the GIL is released. ``error_model="numpy"``: a division by
zero gives inf or NaN as in numpy.

The arithmetic is that of the numpy implementation it replaced (kept as the reference in
``tests/test_phot_aperture_compiled.py``), row by row: the same reference value, sequential
running sums (``np.cumsum`` adds in order), the same median, mean, variance and clipping
thresholds, so the same results bit for bit. The numpy version stopped when no row changed
in a pass; a row that does not change in a pass never changes again (its thresholds are the
same), so stopping each row on its own gives the same rows. The sort stays in numpy.
The annulus pixels are tested as the numpy version did (float32 squared distances, bounds,
finite values, MASK bits), in one pass without its temporaries.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["annulus_values", "clipped_sorted_rows"]

_MAX_FLOAT = np.finfo(np.float64).max


@njit(cache=True, nogil=True, error_model="numpy")
def _window_stats(z, c1, c2, lo, hi):
    """Count, median, mean and std of the sorted values ``z[lo:hi]`` (``c1``, ``c2``: running sums
    of ``z`` and ``z**2``, one longer than ``z``); an empty window gives the values at its edge."""
    m = z.shape[0]
    cnt = hi - lo
    safe = max(cnt, 1)
    i1 = min(lo + (safe - 1) // 2, m - 1)
    i2 = min(lo + safe // 2, m - 1)
    med = 0.5 * (z[i1] + z[i2])
    mean = (c1[hi] - c1[lo]) / safe
    var = (c2[hi] - c2[lo]) / safe - mean * mean
    return cnt, med, mean, math.sqrt(max(var, 0.0))


@njit(cache=True, nogil=True, error_model="numpy")
def clipped_sorted_rows(
    s: np.ndarray, clip_sigma: float, max_iters: int, statistic: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped centre, std and count of each row of ``s`` (float64, each row sorted, NaN last).

    ``statistic``: 0 median, 1 mean, 2 mode. Returns ``(centre, std, n_used)`` with NaN / 0
    for rows without a value (see :func:`darkroom.phot.aperture.clipped_annulus_stats`).
    """
    n_rows, m = s.shape
    centre_out = np.empty(n_rows)
    std_out = np.empty(n_rows)
    cnt_out = np.empty(n_rows, dtype=np.int64)
    z = np.empty(m)
    c1 = np.empty(m + 1)
    c2 = np.empty(m + 1)
    for r in range(n_rows):
        n_valid = 0
        for j in range(m):
            if not math.isnan(s[r, j]):
                n_valid += 1
        ref = s[r, (max(n_valid - 1, 0)) // 2] if n_valid > 0 else 0.0
        c1[0] = 0.0
        c2[0] = 0.0
        for j in range(m):
            v = s[r, j] - ref
            if math.isnan(v):
                v = 0.0
            elif v == math.inf:
                v = _MAX_FLOAT
            elif v == -math.inf:
                v = -_MAX_FLOAT
            z[j] = v
            c1[j + 1] = c1[j] + v
            c2[j + 1] = c2[j] + v * v
        lo = 0
        hi = n_valid
        cnt, med, mean, std = _window_stats(z, c1, c2, lo, hi)
        for _ in range(max_iters):
            thr_lo = med - clip_sigma * std
            thr_hi = med + clip_sigma * std
            n_lo = 0
            n_hi = 0
            for j in range(n_valid):  # zc: NaN (compares false) beyond the valid values
                if z[j] < thr_lo:
                    n_lo += 1
                if z[j] <= thr_hi:
                    n_hi += 1
            new_lo = max(lo, n_lo)
            new_hi = max(min(hi, n_hi), new_lo)
            if new_lo == lo and new_hi == hi:
                break
            lo = new_lo
            hi = new_hi
            cnt, med, mean, std = _window_stats(z, c1, c2, lo, hi)
        if statistic == 1:
            centre = mean
        elif statistic == 2:
            centre = med if abs(mean - med) > 0.3 * std else 2.5 * med - 1.5 * mean
        else:
            centre = med
        if cnt == 0:
            centre_out[r] = math.nan
            std_out[r] = math.nan
        else:
            centre_out[r] = centre + ref
            std_out[r] = std
        cnt_out[r] = cnt
    return centre_out, std_out, cnt_out


@njit(cache=True, nogil=True, error_model="numpy")
def annulus_values(
    sci: np.ndarray,
    mask: np.ndarray,
    use_mask: bool,
    exclude_bits: int,
    cx: np.ndarray,
    cy: np.ndarray,
    fx: np.ndarray,
    fy: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    dxf: np.ndarray,
    dyf: np.ndarray,
    r_in2: np.float32,
    r_out2: np.float32,
) -> np.ndarray:
    """``(n_src, n_stencil)`` float64 values of the annulus pixels around each source, NaN where a
    pixel does not count: its centre outside ``r_in2 <= d^2 < r_out2`` (float32, from the source's
    offset ``fx, fy`` to its nearest pixel ``cx, cy``), outside the image, not finite, or (with
    ``use_mask``) with one of ``exclude_bits`` set in ``mask``. ``sci`` is float32, ``mask``
    int32; ``dx, dy`` the stencil's offsets (int64) and ``dxf, dyf`` the same as float32."""
    n = cx.size
    m = dx.size
    ny, nx = sci.shape
    out = np.empty((n, m))
    for i in range(n):
        for j in range(m):
            ex = dxf[j] - fx[i]
            ey = dyf[j] - fy[i]
            d2 = ex * ex + ey * ey
            ix = cx[i] + dx[j]
            iy = cy[i] + dy[j]
            v = math.nan
            if d2 >= r_in2 and d2 < r_out2 and ix >= 0 and ix < nx and iy >= 0 and iy < ny:
                value = np.float64(sci[iy, ix])
                if math.isfinite(value) and not (use_mask and (np.int64(mask[iy, ix]) & exclude_bits) != 0):
                    v = value
            out[i, j] = v
    return out
