"""Bit flags of one photometric measurement (one source, one aperture, one image).

The six lowest bits repeat :class:`darkroom.maskbits.MaskBit`: a bit is set when at
least one pixel that touches the aperture (any overlap with the circle) carries that
mask bit. The higher bits describe the measurement itself.

=============  =====  ==========================================================
name           value  meaning
=============  =====  ==========================================================
BAD            1      a permanent detector defect inside the aperture
SAT            2      a saturated pixel inside the aperture (flux is a lower limit)
CR             4      a cosmic-ray pixel inside the aperture (its value was cleaned)
INTRP          8      an interpolated pixel inside the aperture
EDGE           16     an EDGE-masked pixel inside the aperture
NO_DATA        32     a no-data pixel inside the aperture (excluded, area corrected)
TRUNCATED      64     the aperture runs off the image: flux covers the inside part only
BLENDED        128    another source lies within radius + blend margin
FORCED         256    measured at a given position, not at a detection
BKG_POOR       512    too few annulus pixels: the frame's median background was used
NON_POSITIVE   1024   flux <= 0: no magnitude
ALL_MASKED     2048   no usable pixel in the aperture: flux is NaN
=============  =====  ==========================================================

Bits 16 and up are left to the light-curve layer (frame quality, see
:mod:`darkroom.timeseries.quality`).
"""

from __future__ import annotations

from enum import IntFlag

from darkroom.maskbits import MaskBit

__all__ = ["DEFAULT_BAD_FLAGS", "PhotFlag", "describe_flags"]


class PhotFlag(IntFlag):
    """Flags of a photometric measurement; the low six bits equal :class:`MaskBit`."""

    BAD = int(MaskBit.BAD)
    SAT = int(MaskBit.SAT)
    CR = int(MaskBit.CR)
    INTRP = int(MaskBit.INTRP)
    EDGE = int(MaskBit.EDGE)
    NO_DATA = int(MaskBit.NO_DATA)
    TRUNCATED = 64
    BLENDED = 128
    FORCED = 256
    BKG_POOR = 512
    NON_POSITIVE = 1024
    ALL_MASKED = 2048


#: flags that make a measurement unfit for zero points and comparison stars
DEFAULT_BAD_FLAGS: int = int(
    PhotFlag.SAT
    | PhotFlag.BAD
    | PhotFlag.NO_DATA
    | PhotFlag.TRUNCATED
    | PhotFlag.NON_POSITIVE
    | PhotFlag.ALL_MASKED
)


def describe_flags(value: int) -> str:
    """Names of the bits set in ``value``, joined by ``|`` (``""`` for 0)."""
    return "|".join(flag.name for flag in PhotFlag if int(value) & int(flag) and flag.name)
