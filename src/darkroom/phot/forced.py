"""Where a field's sources fall on one frame: the prediction of forced photometry.

Sources are known by their sky position (a field associated on the sky: through the
frame's WCS) or by their position in the field's reference frame (a field without an
absolute WCS: through the inverse of the frame's transform to that reference).
Pixel convention: 0-based pixel centres; a pixel spans ``[-0.5, n - 0.5]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from darkroom.errors import SolveError
from darkroom.phot.match import match_xy, sky_to_pixel

__all__ = ["Recentred", "predict_positions", "recentre_on_detections"]


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


@dataclass(frozen=True)
class Recentred:
    """Positions to measure [pixel, 0-based], which of them are forced (no detection matched),
    and how many matched detections measured the prediction's offset (0: not shifted)."""

    x: np.ndarray
    y: np.ndarray
    forced: np.ndarray
    n_offset_stars: int


def recentre_on_detections(
    x: np.ndarray,
    y: np.ndarray,
    det_x: np.ndarray,
    det_y: np.ndarray,
    *,
    radius_pix: float,
    recentre: bool = True,
    min_offset_stars: int = 3,
) -> Recentred:
    """Predicted positions tied to the frame's detections (all in 0-based pixels).

    Predictions are matched to detections within ``radius_pix``; with at least
    ``min_offset_stars`` matches their median offset (the prediction's systematic error: WCS or
    transform) moves *every* prediction, forced ones too, and the match is made again. A
    matched source is then measured at its detection (``recentre``; else at its shifted
    prediction) and is not forced; the others are forced at their shifted predictions.
    """
    x = np.array(x, dtype=float)
    y = np.array(y, dtype=float)
    det_x, det_y = np.asarray(det_x, float), np.asarray(det_y, float)
    forced = np.ones(x.size, bool)
    if not x.size or not det_x.size:
        return Recentred(x, y, forced, 0)
    i_src, i_det, _ = match_xy(x, y, det_x, det_y, radius_pix=radius_pix)
    n_shift = 0
    if i_src.size >= min_offset_stars:
        x = x + float(np.median(det_x[i_det] - x[i_src]))
        y = y + float(np.median(det_y[i_det] - y[i_src]))
        n_shift = int(i_src.size)
        i_src, i_det, _ = match_xy(x, y, det_x, det_y, radius_pix=radius_pix)
    if recentre and i_src.size:
        x[i_src] = det_x[i_det]
        y[i_src] = det_y[i_det]
    forced[i_src] = False
    return Recentred(x, y, forced, n_shift)
