"""The per-pixel noise model of a calibrated CCD frame.

In adu and adu^2. Before the flat division a pixel holds ``S`` adu above the bias
(sky, objects and dark current) and its variance is::

    var_pre = rn_adu**2 + max(S, 0) / gain + var_bias + k**2 var_dark

where ``k`` is the scale of the master dark. Dividing by the flat ``F`` (variance
``var_F``) gives ``sci = (S - k D) / F`` with::

    var = var_pre / F**2 + sci**2 var_F / F**2

(first-order propagation; the masters' variances come with the masters).
"""

from __future__ import annotations

import numpy as np

__all__ = ["divide_by_flat", "flat_divided_variance", "poisson_read_variance"]


def poisson_read_variance(
    signal_adu: np.ndarray, *, gain_e_per_adu: float, read_noise_adu: float
) -> np.ndarray:
    """``rn_adu**2 + max(signal, 0) / gain`` [adu^2], float32."""
    s = np.asarray(signal_adu, dtype=np.float32)
    var = np.maximum(s, np.float32(0.0))
    var *= np.float32(1.0 / gain_e_per_adu)
    var += np.float32(read_noise_adu**2)
    return var


def flat_divided_variance(
    var_pre: np.ndarray,
    sci: np.ndarray,
    flat: np.ndarray,
    flat_variance: np.ndarray | None,
    *,
    out: np.ndarray | None = None,
    flat_square: np.ndarray | None = None,
) -> np.ndarray:
    """Variance after dividing by the flat: ``(var_pre + sci^2 var_F) / F^2`` [adu^2], float32.

    ``out`` may be ``var_pre`` itself (in place, one temporary array); ``flat_square`` is
    ``F^2`` (float32) when already known.
    """
    res = np.array(var_pre, dtype=np.float32, copy=True) if out is None else out
    if out is not None and out is not var_pre:
        res[...] = var_pre
    tmp = np.square(np.asarray(sci, dtype=np.float32))
    if flat_variance is not None:
        tmp *= np.asarray(flat_variance, dtype=np.float32)
        res += tmp
    if flat_square is None:
        flat_square = np.square(np.asarray(flat, dtype=np.float32), out=tmp)
    res /= flat_square
    return res


_ROWS = 32  # rows of a frame at a time in divide_by_flat (a few hundred kB: the chunk stays in cache)


def divide_by_flat(
    sci: np.ndarray,
    var: np.ndarray,
    flat: np.ndarray,
    flat_variance: np.ndarray | None,
    flat_square: np.ndarray,
) -> None:
    """``sci /= flat`` and then ``var = (var + sci^2 var_F) / F^2`` in place (float32 arrays of
    one shape; ``flat_square`` is ``F^2``): :func:`flat_divided_variance` after the division,
    element for element the same operations, done a few rows at a time so that each chunk is
    read from memory once instead of once per operation (2.3 -> 1.1 ms a 1k x 1k frame)."""
    fv = None if flat_variance is None else np.asarray(flat_variance, dtype=np.float32)
    tmp = np.empty((min(_ROWS, sci.shape[0]), *sci.shape[1:]), dtype=np.float32)
    for r0 in range(0, sci.shape[0], _ROWS):
        rows = slice(r0, r0 + _ROWS)
        s, v = sci[rows], var[rows]
        s /= flat[rows]
        if fv is not None:
            t = tmp[: s.shape[0]]
            np.square(s, out=t)
            t *= fv[rows]
            v += t
        v /= flat_square[rows]
