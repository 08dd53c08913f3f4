"""An image with its SCI/MASK/VAR planes and celestial WCS, read from and written to FITS.

Conventions (docs/conventions.md): ``sci`` float32 [adu, or the file's BUNIT], NaN where
``NO_DATA``; ``mask`` int32 :class:`~darkroom.maskbits.MaskBit` bits; ``var`` float32
[unit^2]; shapes ``(ny, nx)``; the WCS is used with 0-based pixels (``origin=0``).

A file without SCI/MASK/VAR extensions (an archive frame such as SDSS's) is read from its
first image HDU: MASK is zero (NaN pixels get ``NO_DATA``) and VAR is estimated as the
background variance (a robust per-pixel rms squared), so such frames can be resampled and
combined like darkroom's own.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.errors import BadInputError
from darkroom.maskbits import MaskBit, mask_header_cards

__all__ = ["ImagePlanes", "celestial_wcs", "planes_to_hdus", "read_planes", "wcs_header"]


@dataclass(frozen=True)
class ImagePlanes:
    """One image: planes, WCS and the few header figures combining needs.

    ``exptime_s`` [s] and ``mjd_start``/``mjd_mid`` (MJD UTC of the start and middle of the
    exposure) are None when unknown; ``gain_e_per_adu`` is the SCI unit's gain.
    """

    sci: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    wcs: WCS | None
    header: fits.Header = field(default_factory=fits.Header)
    name: str = ""
    exptime_s: float | None = None
    mjd_mid: float | None = None
    gain_e_per_adu: float | None = None
    filter: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sci.shape)  # type: ignore[return-value]

    def with_planes(self, sci: np.ndarray, var: np.ndarray, mask: np.ndarray, **changes) -> ImagePlanes:
        """A copy with new planes (and any other field changed)."""
        return replace(self, sci=sci, var=var, mask=mask, **changes)


def celestial_wcs(header: fits.Header) -> WCS | None:
    """The celestial WCS of a header (SIP kept), or None when it has none."""
    if "CTYPE1" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # RADECSYS, CDELT beside CD, ...
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # astropy raises many types on broken cards
            return None
    return wcs.celestial if wcs.has_celestial else None


def wcs_header(wcs: WCS) -> fits.Header:
    """FITS cards of a celestial WCS (SIP included when present)."""
    return wcs.to_header(relax=True)


def _float(header: fits.Header, *keys: str) -> float | None:
    for key in keys:
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _mjd_mid(header: fits.Header, exptime_s: float | None) -> float | None:
    """MJD (UTC) of mid-exposure from MJD-MID, MJD-OBS or DATE-OBS (+ EXPTIME / 2)."""
    mid = _float(header, "MJD-MID")
    if mid is not None:
        return mid
    start = _float(header, "MJD-OBS")
    if start is None and isinstance(header.get("DATE-OBS"), str):
        from astropy.time import Time

        text = header["DATE-OBS"]
        if "T" not in text and isinstance(header.get("TAIHMS") or header.get("TIME-OBS"), str):
            text = f"{text}T{header.get('TIME-OBS') or header.get('TAIHMS')}"
        try:
            start = float(Time(text, scale="utc").mjd)
        except ValueError:
            return None
    if start is None:
        return None
    return start + (exptime_s or 0.0) / 2.0 / 86400.0


def robust_background_variance(sci: np.ndarray) -> float:
    """Variance of the background [unit^2]: (1.4826 MAD)^2 of the finite pixels, 3-sigma clipped."""
    values = sci[np.isfinite(sci)]
    if values.size == 0:
        return float("nan")
    if values.size > 1_000_000:
        values = values[:: values.size // 1_000_000]
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    keep = np.abs(values - med) < 3.0 * mad if mad > 0 else np.ones(values.size, bool)
    mad = 1.4826 * np.median(np.abs(values[keep] - np.median(values[keep])))
    return float(mad * mad)


def read_planes(path: Path | str, *, name: str | None = None) -> ImagePlanes:
    """Read an image (darkroom SCI/MASK/VAR, or any FITS image) with its WCS.

    Raises :class:`~darkroom.errors.BadInputError` with a one-line reason when the file
    holds no 2-D image.
    """
    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path.name}: not a readable FITS file ({exc})") from exc
    with hdul:
        names = [h.name for h in hdul]
        if "SCI" in names:
            header = hdul["SCI"].header.copy()
            sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
            mask = (
                np.asarray(hdul["MASK"].data, dtype=np.int32)
                if "MASK" in names
                else np.zeros(sci.shape, np.int32)
            )
            var = np.asarray(hdul["VAR"].data, dtype=np.float32) if "VAR" in names else None
        else:
            image = next(
                (h for h in hdul if h.data is not None and getattr(h.data, "ndim", 0) == 2 and h.is_image),
                None,
            )
            if image is None:
                raise BadInputError(f"{path.name}: no 2-D image in the file")
            header = image.header.copy()
            sci = np.asarray(image.data, dtype=np.float32)
            mask = np.zeros(sci.shape, np.int32)
            var = None
    if sci.ndim != 2:
        raise BadInputError(f"{path.name}: SCI is {sci.ndim}-D, not an image")
    bad = ~np.isfinite(sci)
    mask = mask | np.where(bad, np.int32(MaskBit.NO_DATA), np.int32(0))
    if var is None:
        var = np.full(sci.shape, robust_background_variance(sci), dtype=np.float32)
    exptime = _float(header, "EXPTIME", "EXPOSURE")
    return ImagePlanes(
        sci=sci,
        var=var,
        mask=mask.astype(np.int32),
        wcs=celestial_wcs(header),
        header=header,
        name=name or path.name,
        exptime_s=exptime,
        mjd_mid=_mjd_mid(header, exptime),
        gain_e_per_adu=_float(header, "GAIN", "EGAIN"),
        filter=str(header["FILTER"]).strip() if "FILTER" in header else None,
    )


_STRUCTURAL = (
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "BSCALE",
    "BZERO",
)


def planes_to_hdus(
    sci: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    header: fits.Header,
    *,
    extra: dict[str, np.ndarray] | None = None,
) -> fits.HDUList:
    """HDUs ``[primary, SCI, MASK, VAR, *extra]``; ``header`` (WCS and cards) goes to SCI.

    ``extra`` maps EXTNAME to further float32 planes (e.g. WEIGHT, EXPMAP), each carrying
    the WCS cards of ``header`` as well.
    """
    sci_h = header.copy()
    for key in _STRUCTURAL:
        sci_h.remove(key, ignore_missing=True, remove_all=True)
    sci_h["EXTNAME"] = "SCI"
    mask_h = fits.Header()
    mask_h["EXTNAME"] = "MASK"
    for key, value, comment in mask_header_cards():
        mask_h[key] = (value, comment)
    var_h = fits.Header()
    var_h["EXTNAME"] = "VAR"
    var_h["BUNIT"] = ("adu2", "variance of SCI")
    wcs = celestial_wcs(header)
    if wcs is not None:
        for h in (mask_h, var_h):
            h.update(wcs_header(wcs))
    hdus = [
        fits.PrimaryHDU(),
        fits.ImageHDU(np.asarray(sci, np.float32), header=sci_h),
        fits.ImageHDU(np.asarray(mask, np.int32), header=mask_h),
        fits.ImageHDU(np.asarray(var, np.float32), header=var_h),
    ]
    for extname, plane in (extra or {}).items():
        h = fits.Header()
        h["EXTNAME"] = extname
        if wcs is not None:
            h.update(wcs_header(wcs))
        hdus.append(fits.ImageHDU(np.asarray(plane, np.float32), header=h))
    return fits.HDUList(hdus)
