"""Open a raw FITS file of any common packaging and find its image.

Handles plain FITS, tile-compressed ``.fz`` (the image is in a CompImageHDU), and
gzip/bzip2-compressed files (astropy recognises them by their magic bytes). Every
problem becomes a :class:`~darkroom.errors.BadInputError` whose reason is one line:
empty, not FITS, truncated, corrupt header, no image data, all pixels NaN.
"""

from __future__ import annotations

import bz2
import gzip
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning

from darkroom.errors import BadInputError

__all__ = ["FITS_SUFFIXES", "RawImage", "is_fits_name", "read_raw"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
_COMPRESSED = (".gz", ".bz2")


def is_fits_name(name: str, suffixes: tuple[str, ...] | list[str] = FITS_SUFFIXES) -> bool:
    """True when a file name ends in a FITS suffix, optionally followed by .gz or .bz2."""
    low = name.lower()
    for comp in _COMPRESSED:
        if low.endswith(comp):
            low = low[: -len(comp)]
            break
    return low.endswith(tuple(s.lower() for s in suffixes))


@dataclass(frozen=True)
class RawImage:
    """The image of a raw file: header (primary merged with the image extension's) and data."""

    header: fits.Header
    data: np.ndarray | None
    shape: tuple[int, ...]
    hdu_index: int


def _first_image_hdu(hdul: fits.HDUList) -> int:
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, fits.CompImageHDU):
            return i
        if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU) and hdu.header.get("NAXIS", 0) >= 2:
            return i
    raise BadInputError("no image data: no HDU with a 2-D image")


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    if index == 0:
        return hdul[0].header.copy()
    # Keywords such as DATE-OBS often sit in the primary header of .fz and MEF files.
    merged = hdul[0].header.copy()
    for card in hdul[index].header.cards:
        if card.keyword in ("", "COMMENT", "HISTORY"):
            continue
        merged[card.keyword] = (card.value, card.comment)
    return merged


def read_raw(path: Path | str, *, with_data: bool = True) -> RawImage:
    """Read the first 2-D image of a FITS file; raise BadInputError with a one-line reason.

    The data come back as stored after BZERO/BSCALE scaling (float32 for integer
    frames, so 16-bit unsigned frames keep their values), shape ``(ny, nx)``.
    With ``with_data`` the whole array is read, which also proves the file is not
    truncated.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror or exc}") from exc
    if size == 0:
        raise BadInputError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Only a truncation warning is fatal: other header oddities (null padding,
            # non-standard cards) are common in real files and harmless.
            warnings.simplefilter("ignore", AstropyUserWarning)
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*truncated.*", category=AstropyUserWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=False, ignore_missing_simple=False) as hdul:
                if len(hdul) == 0:
                    raise BadInputError("not a FITS file: no HDU found")
                index = _first_image_hdu(hdul)
                hdu = hdul[index]
                header = _merged_header(hdul, index)
                shape = tuple(int(n) for n in (hdu.shape or ()))
                if len(shape) < 2 or min(shape) == 0:
                    raise BadInputError(f"no image data: image shape {shape}")
                data = None
                if with_data:
                    raw = hdu.data
                    if raw is None:
                        raise BadInputError("no image data: data section is empty")
                    data = np.asarray(raw, dtype=np.float32)
                    if data.ndim > 2:
                        data = data.reshape(data.shape[-2:]) if np.prod(data.shape[:-2]) == 1 else data[0]
                    if not np.isfinite(data).any():
                        raise BadInputError("no image data: every pixel is NaN or infinite")
    except BadInputError:
        raise
    except (
        OSError,
        EOFError,
        zlib.error,
        gzip.BadGzipFile,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AstropyUserWarning,
        fits.VerifyError,
        MemoryError,
        OverflowError,
    ) as exc:
        raise BadInputError(_reason(exc)) from exc
    except Exception as exc:  # astropy raises a wide variety on mangled headers
        raise BadInputError(f"corrupt FITS: {exc.__class__.__name__}: {_short(exc)}") from exc
    return RawImage(header=header, data=data, shape=shape[-2:], hdu_index=index)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    text = _short(exc)
    low = text.lower()
    if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile) or "compressed file ended" in low:
        return f"truncated or corrupt compressed file: {text}"
    if isinstance(exc, bz2.__dict__.get("BZ2Error", OSError)) and "invalid data stream" in low:
        return f"corrupt bzip2 file: {text}"
    if "truncated" in low or "end of file" in low or "smaller than" in low:
        return f"truncated FITS: {text}"
    if "simple" in low or "empty or corrupt" in low or "no simple card" in low:
        return f"not a FITS file: {text}"
    return f"corrupt FITS: {exc.__class__.__name__}: {text}"
