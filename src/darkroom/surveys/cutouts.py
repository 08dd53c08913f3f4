"""Cutout cubes: one size x size stamp per band around a sky position, stacked into a cube.

Each band is cut through its *own* WCS (SDSS bands are exposed at different times along the
drift scan, so the same star sits up to ~11 px apart in the five frames): the stamp of band b
puts the target within half a pixel of its centre, 0-based ``((size - 1) / 2, (size - 1) / 2)``,
in every band (pixel copies, no resampling).
Where the stamp leaves the frame, or a band has no frame, the cube holds NaN and the mask plane
has :attr:`darkroom.maskbits.MaskBit.NO_DATA` set.

Files: :func:`write_cube` writes one FITS per target (primary HDU: the cube, float32, shape
(band, y, x); ``MASK`` HDU: uint8 of the same shape; the header names the bands and target);
:func:`write_cube_set` gathers many into one HDF5 file (datasets ``cubes``, ``masks``,
``names``, ``ra``, ``dec``) for machine learning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from darkroom.maskbits import MaskBit, mask_header_cards
from darkroom.surveys.settings import CutoutConfig

__all__ = ["CutoutConfig", "cutout_cube", "read_cube", "write_cube", "write_cube_set"]


log = logging.getLogger(__name__)


def cutout_cube(
    frames: Mapping[str, tuple[np.ndarray, object] | tuple[np.ndarray, object, np.ndarray | None] | None],
    *,
    ra_deg: float,
    dec_deg: float,
    size: int = 32,
    bands: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[float, float] | None]]:
    """A (band, size, size) cube centred on (ra, dec) through each band's WCS.

    Parameters
    ----------
    frames
        band -> (image (ny, nx), astropy WCS) or (image, WCS, mask bits (ny, nx) uint8, e.g. from
        the fpM file), or None when the band has no frame.
    ra_deg, dec_deg
        ICRS position [deg].
    size
        Side of the square stamp [pixel].
    bands
        Order of the cube's planes (default: the mapping's order).

    Returns
    -------
    cube (float32, NaN outside), mask (uint8, NO_DATA outside), and per band the 0-based (x, y)
    of the position in its frame (None when the band has no frame).
    """
    from astropy.coordinates import SkyCoord

    bands = list(bands) if bands is not None else list(frames)
    cube = np.full((len(bands), size, size), np.nan, dtype=np.float32)
    mask = np.full((len(bands), size, size), int(MaskBit.NO_DATA), dtype=np.uint8)
    position = SkyCoord(ra_deg, dec_deg, unit="deg")
    centres: dict[str, tuple[float, float] | None] = {}
    for i, band in enumerate(bands):
        item = frames.get(band)
        if item is None:
            centres[band] = None
            continue
        data, wcs = item[0], item[1]
        bits = item[2] if len(item) > 2 else None
        if bits is not None and bits.shape != data.shape:
            log.warning(
                "band %s: mask of shape %s does not fit the image %s; ignored", band, bits.shape, data.shape
            )
            bits = None
        x, y = wcs.world_to_pixel(position)
        centres[band] = (float(x), float(y))
        # the stamp's first pixel: the target lies within half a pixel of its centre (size - 1) / 2
        x0 = int(np.floor(float(x) - (size - 1) / 2 + 0.5))
        y0 = int(np.floor(float(y) - (size - 1) / 2 + 0.5))
        ny, nx = data.shape
        ya, yb, xa, xb = max(y0, 0), min(y0 + size, ny), max(x0, 0), min(x0 + size, nx)
        if ya >= yb or xa >= xb:
            continue  # no overlap with this frame
        plane = np.full((size, size), np.nan, dtype=np.float32)
        plane[ya - y0 : yb - y0, xa - x0 : xb - x0] = data[ya:yb, xa:xb]
        cube[i] = plane
        mask[i] = np.where(np.isfinite(plane), 0, int(MaskBit.NO_DATA)).astype(np.uint8)
        if bits is not None:
            mask[i, ya - y0 : yb - y0, xa - x0 : xb - x0] |= bits[ya:yb, xa:xb]
    return cube, mask, centres


def write_cube(
    path: str | Path,
    cube: np.ndarray,
    mask: np.ndarray,
    *,
    bands: Sequence[str],
    meta: Mapping[str, object],
) -> Path:
    """One target's cube as FITS (primary: cube in nanomaggies; ``MASK``: uint8). The caller
    makes the write atomic."""
    from astropy.io import fits

    primary = fits.PrimaryHDU(np.asarray(cube, dtype=np.float32))
    h = primary.header
    h["BUNIT"] = ("nanomaggy", "SDSS calibrated flux per pixel")
    h["BANDS"] = ("".join(bands), "band of each plane, first axis")
    for key, value in meta.items():
        if value is None:
            continue
        card = key.upper()[:8]
        h[card] = value if not isinstance(value, (np.floating, np.integer)) else value.item()
    mhdu = fits.ImageHDU(np.asarray(mask, dtype=np.uint8), name="MASK")
    for name, value, comment in mask_header_cards():
        mhdu.header[name] = (value, comment)
    fits.HDUList([primary, mhdu]).writeto(path, overwrite=True)
    return Path(path)


def read_cube(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A cube written by :func:`write_cube`: (cube, mask, primary header as a dict)."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul[0].data), np.asarray(hdul["MASK"].data), dict(hdul[0].header)


def write_cube_set(
    path: str | Path,
    cubes: np.ndarray,
    masks: np.ndarray,
    *,
    names: Sequence[str],
    ra_deg: Sequence[float],
    dec_deg: Sequence[float],
    bands: Sequence[str],
) -> Path:
    """All targets' cubes in one HDF5 file: ``cubes`` (N, band, y, x) float32 [nanomaggy],
    ``masks`` uint8, ``names``, ``ra``, ``dec`` [deg]; attribute ``bands``. The caller makes the
    write atomic."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset(
            "cubes",
            data=np.asarray(cubes, dtype=np.float32),
            chunks=True,
            compression="gzip",
            compression_opts=1,
        )
        h5.create_dataset(
            "masks",
            data=np.asarray(masks, dtype=np.uint8),
            chunks=True,
            compression="gzip",
            compression_opts=1,
        )
        h5.create_dataset("names", data=np.asarray([str(n) for n in names], dtype=h5py.string_dtype()))
        h5.create_dataset("ra", data=np.asarray(ra_deg, dtype=np.float64))
        h5.create_dataset("dec", data=np.asarray(dec_deg, dtype=np.float64))
        h5.attrs["bands"] = "".join(bands)
        h5.attrs["unit"] = "nanomaggy"
        h5.attrs["mask_no_data"] = int(MaskBit.NO_DATA)
    return Path(path)
