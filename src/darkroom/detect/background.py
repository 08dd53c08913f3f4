"""Sky background and its noise, on a mesh (SExtractor's algorithm as sep computes it, by
:mod:`darkroom.skymesh`: the same values as ``sep.Background``, compiled).

Arrays are ``(ny, nx)``; the background maps have the shape of the image. Pixels
whose MASK bits intersect :attr:`BackgroundConfig.mask_bits` (or that are not
finite) are left out of the background estimate. See ``docs/pixel_conventions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from darkroom.detect.settings import BackgroundConfig
from darkroom.errors import BadInputError
from darkroom.maskbits import MaskBit
from darkroom.skymesh import sky_background

__all__ = [
    "Background",
    "BackgroundConfig",
    "PixelMasks",
    "as_sep_array",
    "bad_pixel_mask",
    "estimate_background",
    "mask_bits_set",
    "native_mask",
    "pixel_masks",
]


@dataclass(frozen=True)
class Background:
    """Background level and noise maps, in the unit of the image (adu)."""

    level_adu: np.ndarray  #: (ny, nx) float32 background level [adu]
    rms_adu: np.ndarray  #: (ny, nx) float32 background noise (1 sigma) [adu]
    global_level_adu: float  #: median level over the mesh [adu]
    global_rms_adu: float  #: median noise over the mesh [adu]

    @property
    def shape(self) -> tuple[int, int]:
        return self.level_adu.shape  # type: ignore[return-value]


def as_sep_array(data: np.ndarray) -> np.ndarray:
    """``data`` as a C-contiguous, native-byte-order float32/float64 array (what sep needs).

    Integer images become float32; a float32 image is not copied unless it is
    big-endian (as read from FITS) or not contiguous.
    """
    arr = np.asarray(data)
    if arr.ndim != 2:
        raise BadInputError(f"image must be 2-D (ny, nx), got shape {arr.shape}")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    return np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("="))


def native_mask(mask: np.ndarray) -> np.ndarray:
    """The MASK plane in native byte order (FITS planes are big-endian; numpy's bit operations
    on them go through a slow cast); not copied when it already is."""
    mask = np.asarray(mask)
    return mask if mask.dtype.isnative else mask.astype(mask.dtype.newbyteorder("="))


def mask_bits_set(mask: np.ndarray, bits: int) -> np.ndarray:
    """Boolean array, True where the integer ``mask`` has any of ``bits`` set."""
    mask = native_mask(mask)
    bits = int(bits)
    out = np.empty(mask.shape, dtype=bool)
    if mask.dtype.kind in "iu" and 0 <= bits <= np.iinfo(mask.dtype).max:
        # the integer AND cast to bool as it is written: no integer temporary the size of the mask
        return np.bitwise_and(mask, mask.dtype.type(bits), out=out, casting="unsafe")
    return np.not_equal(mask.astype(np.int64) & bits, 0, out=out)


def _bits_planes(mask: np.ndarray, bits: tuple[int, ...]) -> list[np.ndarray | None]:
    """``mask_bits_set(mask, b)`` for each ``b`` (None where no pixel has ``b``), the mask read
    once: the union of the bits is tested on every pixel, each ``b`` only on the (few) pixels
    with one of them set."""
    union = 0
    for b in bits:
        union |= int(b)
    hit = mask_bits_set(mask, union)
    idx = np.flatnonzero(hit)
    if not len(idx):
        return [None] * len(bits)
    values = mask.ravel()[idx]
    planes: list[np.ndarray | None] = []
    for b in bits:
        if int(b) == union:
            planes.append(hit)
            continue
        where = idx[mask_bits_set(values, b)]
        if not len(where):
            planes.append(None)
            continue
        plane = np.zeros(mask.shape, dtype=bool)
        plane.ravel()[where] = True
        planes.append(plane)
    return planes


@dataclass(frozen=True)
class PixelMasks:
    """The pixels a frame's extraction leaves out, found at once (:func:`pixel_masks`).

    Boolean ``(ny, nx)`` arrays (True = bad), None where no pixel is.
    """

    background: np.ndarray | None  #: left out of the background: ``bad_pixel_mask`` with its bits
    detect: np.ndarray | None  #: cannot be detected: ``bad_pixel_mask`` with the detection's bits
    saturated: np.ndarray | None  #: SAT bit set (None as well for a boolean mask)
    finite: bool  #: every pixel of the image is finite


def pixel_masks(
    data: np.ndarray, mask: np.ndarray | None, background_bits: int, detect_bits: int
) -> PixelMasks:
    """:func:`bad_pixel_mask` for the background's and the detection's bits and the SAT pixels
    of an integer MASK plane, with one pass over the image and over the mask.

    ``mask`` is as in :func:`bad_pixel_mask`.
    """
    data = np.asarray(data)
    # a sum is finite only when every term is (a finite sum proves it without a boolean image)
    with np.errstate(all="ignore"):  # inf - inf, or an overflow (then the pixels are tested)
        any_nonfinite = not (np.isfinite(data.sum()) or np.isfinite(data).all())
    nonfinite = ~np.isfinite(data) if any_nonfinite else None
    if mask is None:
        return PixelMasks(background=nonfinite, detect=nonfinite, saturated=None, finite=not any_nonfinite)
    mask = np.asarray(mask)
    if mask.shape != data.shape:
        raise BadInputError(f"mask shape {mask.shape} differs from image shape {data.shape}")
    if mask.dtype == bool:
        planes: list[np.ndarray | None] = [mask, mask]
        saturated = None
    else:
        mask = native_mask(mask)
        *planes, saturated = _bits_planes(mask, (background_bits, detect_bits, int(MaskBit.SAT)))
    out = []
    for plane in planes:
        if nonfinite is not None:
            plane = nonfinite if plane is None else plane | nonfinite
        out.append(plane if plane is not None and plane.any() else None)
    return PixelMasks(background=out[0], detect=out[1], saturated=saturated, finite=not any_nonfinite)


def bad_pixel_mask(data: np.ndarray, mask: np.ndarray | None, mask_bits: int) -> np.ndarray | None:
    """Boolean ``(ny, nx)`` array, True where a pixel must be ignored.

    ``mask`` is the integer MASK plane (bits of :class:`darkroom.maskbits.MaskBit`) or a
    boolean array (True = bad). Non-finite pixels of ``data`` are always bad. Returns
    None when no pixel is bad (sep is faster without a mask).
    """
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != data.shape:
            raise BadInputError(f"mask shape {mask.shape} differs from image shape {data.shape}")
        bad |= mask if mask.dtype == bool else mask_bits_set(mask, mask_bits)
    return bad if bad.any() else None


def estimate_background(
    data: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    config: BackgroundConfig | None = None,
    masks: PixelMasks | None = None,
) -> Background:
    """Background level and rms maps of an image (SExtractor's estimator: the values of
    ``sep.Background``, by :func:`darkroom.skymesh.sky_background`).

    Parameters
    ----------
    data
        Image ``(ny, nx)`` [adu].
    mask
        MASK bit plane or boolean array ``(ny, nx)``; pixels with any of
        ``config.mask_bits`` set (or True) and non-finite pixels are ignored.
    config
        Mesh size and filter.
    masks
        The bad pixels already found (:func:`pixel_masks` with ``config.mask_bits``): ``mask``
        is then not read.

    Returns
    -------
    Background
        Maps of the level and 1-sigma noise [adu], and their global (median) values.
    """
    config = config or BackgroundConfig()
    arr = as_sep_array(data)
    bad = bad_pixel_mask(arr, mask, config.mask_bits) if masks is None else masks.background
    if bad is not None:
        if bad.all():
            raise BadInputError("every pixel is masked or not finite: no background can be measured")
        # sep skips the masked pixels whatever their value; a non-finite one would still go
        # through a float-to-integer cast (undefined), so those are zeroed
        if not (np.isfinite(arr).all() if masks is None else masks.finite):
            arr = np.where(bad, arr.dtype.type(0), arr)
    bkg = sky_background(
        arr,
        mask=bad,
        bw=config.box_size_pix,
        bh=config.box_size_pix,
        fw=config.filter_size,
        fh=config.filter_size,
        fthresh=config.filter_threshold_adu,
    )
    return Background(
        level_adu=bkg.back(dtype=np.float32),
        rms_adu=bkg.rms(dtype=np.float32),
        global_level_adu=float(bkg.globalback),
        global_rms_adu=float(bkg.globalrms),
    )
