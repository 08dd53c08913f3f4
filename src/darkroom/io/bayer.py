"""One-shot colour (Bayer) frames: recognise them and bin them to a luminance frame.

A DSLR or colour CMOS camera writes each pixel through one colour of a 2 x 2 filter mosaic
(BAYERPAT / COLORTYP = RGGB, BGGR, GRBG or GBRG). Photometry and astrometry of such a frame
need every pixel to see the same band; darkroom sums each 2 x 2 cell (a "superpixel": one R,
two G, one B) into one luminance pixel. The sum is linear, so bias, dark and flat frames of the
same camera binned the same way calibrate it exactly, the gain [e-/adu] is unchanged, the read
noise doubles (four reads) and the saturation level is four times the raw one.

The header is rewritten to describe the binned frame, so every later step reads it as a
2 x 2-binned camera: NAXIS halved, X/YBINNING doubled, pixel sizes doubled, the WCS
(CRPIX, CD/CDELT) rescaled, SATURATE x 4, RDNOISE x 2, the Bayer keywords removed and a
DEBAYER card and a HISTORY line added. An odd last row or column is dropped.
"""

from __future__ import annotations

import contextlib

import numpy as np
from astropy.io import fits

__all__ = ["BAYER_PATTERNS", "bayer_pattern", "bin_bayer_to_luminance", "luminance_header"]

BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_KEYWORDS = ("BAYERPAT", "COLORTYP", "CFA-PAT", "CFAPAT", "BAYER")


def bayer_pattern(header: fits.Header) -> str | None:
    """The colour-filter mosaic of a frame (RGGB, BGGR, GRBG, GBRG), or None for a mono frame."""
    for key in _KEYWORDS:
        if key in header:
            value = "".join(str(header[key]).split()).upper()
            if value in BAYER_PATTERNS:
                return value
    return None


def _scale(header: fits.Header, key: str, factor: float) -> None:
    if key in header:
        with contextlib.suppress(TypeError, ValueError):
            header[key] = float(header[key]) * factor


def bin_bayer_to_luminance(data: np.ndarray, header: fits.Header) -> tuple[np.ndarray, fits.Header]:
    """Sum each 2 x 2 Bayer cell into one luminance pixel; return the frame and its rewritten header.

    ``data`` is the raw mosaic (ny, nx) [adu]; the result is ((ny // 2), (nx // 2)) float32 [adu].
    """
    ny, nx = data.shape[-2:]
    cut = np.asarray(data[: ny - ny % 2, : nx - nx % 2], dtype=np.float32)
    lum = cut[0::2, 0::2] + cut[0::2, 1::2] + cut[1::2, 0::2] + cut[1::2, 1::2]
    return np.ascontiguousarray(lum), luminance_header(header, (ny, nx))


def luminance_header(header: fits.Header, shape: tuple[int, int]) -> fits.Header:
    """The header of the 2 x 2 luminance frame of a Bayer frame of raw ``shape`` (ny, nx)."""
    pattern = bayer_pattern(header) or "?"
    ny, nx = shape
    h = header.copy()
    h["NAXIS1"], h["NAXIS2"] = nx // 2, ny // 2
    for key in ("XBINNING", "YBINNING"):
        h[key] = int(h.get(key, 1) or 1) * 2
    if "CCDSUM" in h:
        h.remove("CCDSUM")
    for key in ("XPIXSZ", "YPIXSZ", "PIXSIZE1", "PIXSIZE2", "PIXSIZE", "CDELT1", "CDELT2"):
        _scale(h, key, 2.0)
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        _scale(h, key, 2.0)
    for key in ("SCALE", "PIXSCALE", "SECPIX"):
        _scale(h, key, 2.0)
    for key in ("CRPIX1", "CRPIX2"):
        if key in h:
            # FITS pixel p (1-based) of the mosaic lies at (p - 0.5) / 2 + 0.5 of the binned frame
            h[key] = (float(h[key]) - 0.5) / 2.0 + 0.5
    if "SATURATE" not in h and str(h.get("BITPIX", "")) in ("8", "16", "32"):
        # the integer ceiling of the raw pixels (BZERO-shifted), before BZERO is dropped below;
        # a cell with one saturated pixel and three fainter ones is not caught by the sum's level
        bitpix = int(h["BITPIX"])
        ceiling = (255.0 if bitpix == 8 else 2.0 ** (bitpix - 1) - 1) + float(h.get("BZERO", 0) or 0)
        h["SATURATE"] = (ceiling, "[adu] raw saturation level")
    _scale(h, "SATURATE", 4.0)
    _scale(h, "DATAMAX", 4.0)
    for key in ("RDNOISE", "READNOIS"):
        _scale(h, key, 2.0)
    for key in (*_KEYWORDS, "XBAYROFF", "YBAYROFF", "BAYOFFX", "BAYOFFY"):
        h.remove(key, ignore_missing=True, remove_all=True)
    for key in ("BZERO", "BSCALE", "BLANK"):
        h.remove(key, ignore_missing=True, remove_all=True)
    h["DEBAYER"] = (pattern, "Bayer mosaic summed 2x2 to luminance by darkroom")
    h.add_history(f"darkroom.io: {pattern} Bayer frame summed 2x2 to a luminance frame")
    return h
