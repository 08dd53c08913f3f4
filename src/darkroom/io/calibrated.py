"""The calibrated-image file: one reader and one writer for every stage.

A calibrated exposure is a FITS file with an empty primary HDU and three image
extensions: ``SCI`` (float32, adu; its header carries the raw header's cards and any
WCS), ``MASK`` (integer bit plane, :class:`darkroom.maskbits.MaskBit`, the bits named in
its header) and ``VAR`` (float32, adu^2, the variance of SCI). Shapes ``(ny, nx)``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError
from darkroom.io.atomic import atomic_path
from darkroom.maskbits import mask_header_cards

__all__ = ["CalibratedImage", "read_calibrated", "write_calibrated"]


@dataclass(frozen=True)
class CalibratedImage:
    """The planes of a calibrated exposure (``mask`` / ``var`` None when the file has none)."""

    sci: np.ndarray
    header: fits.Header
    mask: np.ndarray | None = None
    var: np.ndarray | None = None


def read_calibrated(path: Path | str, *, planes: tuple[str, ...] = ("SCI", "MASK", "VAR")) -> CalibratedImage:
    """Read the planes asked for (SCI always); a file that cannot be read raises
    :class:`~darkroom.errors.BadInputError` with a one-line reason."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
            header = hdul["SCI"].header.copy()
            mask = np.asarray(hdul["MASK"].data) if "MASK" in planes and "MASK" in hdul else None
            var = (
                np.asarray(hdul["VAR"].data, dtype=np.float32) if "VAR" in planes and "VAR" in hdul else None
            )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"cannot read calibrated image {path.name}: {exc}") from exc
    return CalibratedImage(sci=sci, header=header, mask=mask, var=var)


def calibrated_hdus(image: CalibratedImage) -> fits.HDUList:
    """HDUs ``[primary, SCI, MASK, VAR]`` of a calibrated image (not written anywhere)."""
    sci_h = image.header.copy()
    sci_h["EXTNAME"] = "SCI"
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(image.sci, header=sci_h)]
    if image.mask is not None:
        mask_h = fits.Header()
        mask_h["EXTNAME"] = "MASK"
        for key, value, comment in mask_header_cards():
            mask_h[key] = (value, comment)
        hdus.append(fits.ImageHDU(image.mask, header=mask_h))
    if image.var is not None:
        var_h = fits.Header()
        var_h["EXTNAME"] = "VAR"
        var_h["BUNIT"] = ("adu2", "variance of SCI")
        hdus.append(fits.ImageHDU(image.var, header=var_h))
    return fits.HDUList(hdus)


def write_calibrated(path: Path | str, image: CalibratedImage) -> Path:
    """Write a calibrated image atomically (temporary name, fsync, rename); long header cards are
    truncated quietly. Returns ``path``."""
    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        calibrated_hdus(image).writeto(tmp)
    return path
