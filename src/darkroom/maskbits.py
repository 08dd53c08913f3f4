"""Mask plane bits shared by every stage (see docs/conventions.md).

The MASK extension of a calibrated image is an integer bit plane; each bit has the
name below, and the names are written into the MASK header as ``MP_<NAME>`` keys so
a FITS file describes itself.
"""

from __future__ import annotations

from enum import IntFlag

__all__ = ["MaskBit", "mask_header_cards"]


class MaskBit(IntFlag):
    """Bits of the MASK plane (LSST/astropy convention)."""

    BAD = 1  #: permanent detector defect (hot, dead, bad column)
    SAT = 2  #: at or above the saturation level
    CR = 4  #: cosmic ray
    INTRP = 8  #: value interpolated from neighbours
    EDGE = 16  #: too close to the edge for detection or photometry
    NO_DATA = 32  #: no data (outside the resampled footprint, NaN in the input)


def mask_header_cards() -> list[tuple[str, int, str]]:
    """Header cards ``(MP_NAME, value, comment)`` that name every mask bit.

    Keywords stay within FITS's 8 characters (``MP_NODAT`` for NO_DATA); the
    comment carries the full name.
    """
    keyword = {"NO_DATA": "MP_NODAT"}
    return [
        (keyword.get(bit.name, f"MP_{bit.name}"), int(bit.value), f"mask bit {bit.name}") for bit in MaskBit
    ]
