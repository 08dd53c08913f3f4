"""What a header does not say, inferred from what it does say and from the pixels.

Three questions a profile-less camera leaves open, each answered with a reason that
goes into the frame's warnings:

* :func:`companion_kind` -- is the file a weight, mask, inverse-variance or exposure map
  travelling with a science frame (Legacy Survey ``*-oow*``/``*-ood*``, Drizzle
  ``*.wht.fits``, ``*_mask*``, DECam ``PRODTYPE``) rather than a frame to reduce?
* :func:`type_from_header` -- with no type keyword and no file-name hint: a zero-second
  exposure is a bias; an exposure with a target name or a pointing is a light.
* :func:`type_from_pixels` -- with the data: bias (zero exposure, flat), dark (no
  compact sources, low level), flat (bright and smooth), light (compact sources).

Pure functions: header views (upper-case keyword -> value) and arrays in, plain results out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from darkroom.instruments._parse import value_text

__all__ = ["PixelTypeVerdict", "companion_kind", "type_from_header", "type_from_pixels"]

# File-name conventions of companion products (case-insensitive, searched in the base name).
_COMPANION_NAMES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("weight map", re.compile(r"[._-](oow|wht|weight|weights|wtmap|weightmap)[._-]", re.I)),
    ("data-quality mask", re.compile(r"[._-](ood|dqmask|dq|bpm|badpix|maskbits)[._-]", re.I)),
    ("inverse-variance map", re.compile(r"[._-](invvar|ivar|ivm)[._-]", re.I)),
    ("exposure map", re.compile(r"([._-](expmap|exp_?map|exposure_?map|nexp)[._-])", re.I)),
    ("mask", re.compile(r"([._-]mask(s)?[._-])", re.I)),
    ("uncertainty map", re.compile(r"([._-](unc|err|sigma|rms|noise)[._-]?map[._-])", re.I)),
)
# Keyword values naming a companion product (whole value, case-insensitive).
_COMPANION_VALUES: dict[str, str] = {
    "wtmap": "weight map",
    "weight": "weight map",
    "weight map": "weight map",
    "invvar": "inverse-variance map",
    "inverse variance": "inverse-variance map",
    "dqmask": "data-quality mask",
    "mask": "mask",
    "bad pixel mask": "mask",
    "expmap": "exposure map",
    "exposure map": "exposure map",
    "sigma": "uncertainty map",
}
_COMPANION_KEYWORDS = ("PRODTYPE", "PROCTYPE", "IMAGETYP", "OBSTYPE", "FILETYPE", "EXTNAME", "BUNIT")


def companion_kind(view: Mapping[str, Any], filename: str | None) -> tuple[str, str] | None:
    """``(kind, evidence)`` when the file is a companion map of a science frame, else None.

    ``kind`` is e.g. ``'weight map'``; ``evidence`` names the keyword or the file-name
    pattern that said so.
    """
    for keyword in _COMPANION_KEYWORDS:
        if keyword not in view or view[keyword] is None:
            continue
        text = " ".join(value_text(view[keyword]).lower().split())
        if keyword == "BUNIT":
            # a 1/variance unit marks an inverse-variance map
            if re.fullmatch(r"(1/|/|inverse ).*(\*\*2|\^2|2)|.*\*\*-2|.*\^-2", text):
                return "inverse-variance map", f"BUNIT={view[keyword]!r}"
            continue
        kind = _COMPANION_VALUES.get(text)
        if kind is not None:
            return kind, f"{keyword}={view[keyword]!r}"
    if filename:
        base = Path(filename).name
        # strip compression suffixes, keep the FITS suffix as a delimiter
        stem = re.sub(r"\.(gz|bz2|fz)$", "", base, flags=re.I)
        for kind, pattern in _COMPANION_NAMES:
            if pattern.search(stem):
                return kind, f"file name {base!r}"
    return None


def type_from_header(
    *,
    exptime_s: float | None,
    object_name: str | None,
    has_pointing: bool,
    has_wcs: bool,
) -> tuple[str, str] | None:
    """``(frame type, reason)`` from the header's content when no keyword names the type.

    A zero-second exposure is a bias; an exposure of more than 0 s that names a target
    or carries a pointing or a celestial WCS is a light. None when the header does not
    decide (then the pixels may).
    """
    if exptime_s is not None and exptime_s == 0:
        return "bias", "0 s exposure"
    if exptime_s is not None and exptime_s > 0:
        clues = [
            c
            for c, ok in (
                (f"OBJECT {object_name!r}", bool(object_name) and _names_a_target(object_name or "")),
                ("a pointing", has_pointing),
                ("a celestial WCS", has_wcs),
            )
            if ok
        ]
        if clues:
            return "light", f"{exptime_s:g} s exposure with {' and '.join(clues)}"
    return None


def _names_a_target(name: str) -> bool:
    """Whether an OBJECT value names a sky target rather than a calibration."""
    low = name.strip().lower()
    return bool(low) and not re.search(r"(?<![a-z])(bias|zero|dark|flat|dome|twilight|sky ?flat|test)", low)


@dataclass(frozen=True)
class PixelTypeVerdict:
    """Frame type decided from the pixels, with the figures that decided it."""

    frame_type: str
    reason: str
    median_adu: float
    noise_adu: float
    n_compact: int


def type_from_pixels(
    data: np.ndarray,
    *,
    exptime_s: float | None,
    saturation_adu: float | None,
    max_pixels: int = 1_000_000,
) -> PixelTypeVerdict | None:
    """Frame type from image statistics; None when the data cannot tell.

    * 0 s exposure -> bias (whatever the pixels);
    * bright and smooth (median above 15 % of saturation, fewer than 5 compact sources
      per megapixel) -> flat;
    * at least 10 compact sources (>= 5 connected pixels 5 sigma above the local
      level, so single hot pixels and most cosmic rays do not count) -> light;
    * otherwise, with an exposure time -> dark (closed shutter).

    ``data`` raw pixels [adu]; large frames are read on a regular subgrid of blocks
    (up to ``max_pixels``) to keep this cheap.
    """
    from scipy import ndimage

    arr = np.asarray(data)
    if arr.ndim != 2 or arr.size == 0:
        return None
    if exptime_s is not None and exptime_s == 0:
        return PixelTypeVerdict("bias", "0 s exposure", float("nan"), float("nan"), 0)
    img = arr.astype(np.float32, copy=False)
    ny, nx = img.shape
    # a centred cut of at most max_pixels keeps star images whole (a subsample would not)
    if img.size > max_pixels:
        side = int(np.sqrt(max_pixels))
        y0, x0 = max(0, (ny - side) // 2), max(0, (nx - side) // 2)
        img = img[y0 : y0 + side, x0 : x0 + side]
    finite = np.isfinite(img)
    if finite.sum() < 100:
        return None
    img = np.where(finite, img, np.nanmedian(img))
    median = float(np.median(img))
    # pixel-to-pixel noise from neighbour differences: blind to vignetting and gradients
    diff = np.diff(img, axis=1).ravel()
    noise = float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))
    if not noise > 0:
        noise = float(np.std(img)) or 1.0
    local = ndimage.median_filter(img, size=9, mode="nearest")
    above = (img - local) > 5.0 * noise
    labels, n = ndimage.label(above)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        n_compact = int(np.count_nonzero(sizes >= 5))
    else:
        n_compact = 0
    per_mpix = n_compact / (img.size / 1e6)
    figures = f"median {median:.0f} adu, noise {noise:.1f} adu, {n_compact} compact sources"
    bright = saturation_adu is not None and median > 0.15 * saturation_adu
    if bright and per_mpix < 5:
        return PixelTypeVerdict("flat", f"bright and smooth ({figures})", median, noise, n_compact)
    if n_compact >= 10:
        return PixelTypeVerdict("light", f"compact sources ({figures})", median, noise, n_compact)
    if exptime_s is not None and exptime_s > 0 and not bright:
        return PixelTypeVerdict("dark", f"no sources, low level ({figures})", median, noise, n_compact)
    return None
