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

__all__ = ["flat_divided_variance", "poisson_read_variance"]


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
