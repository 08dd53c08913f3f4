"""Frame quality flags of a light curve: transparency loss and thin ensembles.

Light-curve ``flags`` keep the target's :class:`~darkroom.phot.flags.PhotFlag` bits in
the low 16 bits and add the bits below (16 and up).

A frame loses transparency (clouds, dew, a dome slit) when the comparison ensemble's
total flux, or the flux scale of the zero point ``10^(0.4 zp)``, falls below
``fraction`` of a reference level: the ``reference_percentile`` percentile of the
series, over the whole series or a running window of ``window_epochs`` epochs.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np

from darkroom.errors import BadInputError
from darkroom.timeseries.settings import TransparencyConfig

__all__ = ["LightCurveFlag", "TransparencyConfig", "reference_level", "transparency_flags"]


class LightCurveFlag(IntFlag):
    """Epoch-level flags (bits 16+) of a light curve."""

    LOW_TRANSPARENCY = 1 << 16  #: ensemble flux or zero point below the configured fraction
    FEW_COMPARISONS = 1 << 17  #: fewer comparison stars measured than required
    NO_ENSEMBLE = 1 << 18  #: no differential flux at this epoch


def reference_level(values: np.ndarray, *, percentile: float = 90.0, window_epochs: int = 0) -> np.ndarray:
    """Upper reference level of a series (NaN ignored), whole-series or running."""
    v = np.asarray(values, float)
    if v.ndim != 1:
        raise BadInputError(f"values must be 1-D, got shape {v.shape}")
    finite = np.isfinite(v)
    if not finite.any():
        return np.full(v.size, np.nan)
    if window_epochs <= 0 or window_epochs >= v.size:
        return np.full(v.size, np.percentile(v[finite], percentile))
    half = window_epochs // 2
    out = np.full(v.size, np.nan)
    for i in range(v.size):
        seg = v[max(0, i - half) : i + half + 1]
        seg = seg[np.isfinite(seg)]
        if seg.size:
            out[i] = np.percentile(seg, percentile)
    return out


def transparency_flags(
    *,
    ensemble_flux: np.ndarray | None = None,
    zero_point: np.ndarray | None = None,
    config: TransparencyConfig | None = None,
) -> np.ndarray:
    """Boolean per epoch: True where the transparency dropped (see the module docstring).

    Give the ensemble's total flux [any unit] or the per-frame zero points [mag] (or
    both: either one flags the epoch). NaN epochs are not flagged.
    """
    config = config or TransparencyConfig()
    if ensemble_flux is None and zero_point is None:
        raise BadInputError("transparency_flags needs ensemble_flux or zero_point")
    zp_scale = None
    if zero_point is not None:
        zp = np.asarray(zero_point, float)
        top = np.max(zp[np.isfinite(zp)]) if np.isfinite(zp).any() else 0.0
        zp_scale = 10.0 ** (0.4 * (zp - top))
    out = None
    for series in (None if ensemble_flux is None else np.asarray(ensemble_flux, float), zp_scale):
        if series is None:
            continue
        ref = reference_level(
            series, percentile=config.reference_percentile, window_epochs=config.window_epochs
        )
        with np.errstate(invalid="ignore"):
            low = np.isfinite(series) & (series < config.fraction * ref)
        out = low if out is None else (out | low)
    assert out is not None
    return out
