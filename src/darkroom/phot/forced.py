"""Where a field's sources fall on one frame: the prediction of forced photometry.

Sources are known by their sky position (a field associated on the sky: through the
frame's WCS) or by their position in the field's reference frame (a field without an
absolute WCS: through the inverse of the frame's transform to that reference).
Pixel convention: 0-based pixel centres; a pixel spans ``[-0.5, n - 0.5]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from darkroom.errors import SolveError
from darkroom.phot.match import sky_to_pixel

__all__ = ["predict_positions"]


def predict_positions(
    sources: Mapping[str, np.ndarray],
    *,
    coords: str,
    wcs: Any,
    to_reference: Any,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted ``(x, y)`` [pixel, 0-based] of every source and whether it lies on the frame.

    ``sources`` holds ``ra``, ``dec`` [deg] (``coords == "sky"``, with ``wcs``, an astropy
    WCS) or ``x_ref``, ``y_ref`` [pixel of the reference frame] (``coords == "pixel"``, with
    ``to_reference``, the frame-to-reference transform having ``inverse().apply(x, y)``).
    NaN positions are never on the frame. Raises :class:`~darkroom.errors.SolveError` when
    the frame lacks what its field's coordinates need.
    """
    if coords == "sky":
        if wcs is None:
            raise SolveError("the frame has no WCS but its field was associated on the sky")
        ra = np.asarray(sources["ra"], float)
        dec = np.asarray(sources["dec"], float)
        ok = np.isfinite(ra) & np.isfinite(dec)
        x = np.full(ra.size, np.nan)
        y = np.full(ra.size, np.nan)
        if ok.any():
            x[ok], y[ok] = sky_to_pixel(wcs, ra[ok], dec[ok])
    else:
        if to_reference is None:
            raise SolveError("the frame has no transform to its field's reference frame")
        x, y = to_reference.inverse().apply(
            np.asarray(sources["x_ref"], float), np.asarray(sources["y_ref"], float)
        )
    ny, nx = shape
    on = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    return x, y, on
