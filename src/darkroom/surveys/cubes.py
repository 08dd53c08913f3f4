"""One target's cube from SDSS frames: frames read once and shared by threads, the target moved
by its proper motion to the frames' epoch, one stamp per band (:func:`~darkroom.surveys.cutouts.cutout_cube`);
and the index table of a set of cubes.

Times: an SDSS frame's ``TAI`` card is TAI seconds since MJD 0; epochs are Julian years (TDB and
TAI differ by ~1 minute, nothing for proper motion).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from darkroom.errors import DarkroomError
from darkroom.surveys.cutouts import cutout_cube
from darkroom.surveys.sdss import read_fpm_mask, read_frame
from darkroom.surveys.targets import propagate_space_motion

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "INDEX_COLUMNS",
    "FrameCache",
    "LoadedFrame",
    "TargetCube",
    "cube_index",
    "tai_to_jyear",
    "target_cube",
]

log = logging.getLogger(__name__)

#: columns (name, type) of a cube set's index table, in order
INDEX_COLUMNS: tuple[tuple[str, type], ...] = (
    ("row", int),
    ("catalog", str),
    ("name", str),
    ("ra_deg", float),
    ("dec_deg", float),
    ("file", str),
    ("run", int),
    ("camcol", int),
    ("field", int),
    ("n_masked", int),
    ("bands_missing", str),
)


def tai_to_jyear(tai_s: float) -> float:
    """Julian year of an SDSS ``TAI`` time [s since MJD 0] (J2000.0 = MJD 51544.5)."""
    return 2000.0 + (tai_s / 86400.0 - 51544.5) / 365.25


@dataclass(frozen=True)
class LoadedFrame:
    """A frame as a cube needs it: image [nanomaggies], WCS, TAI [s] (or None), fpM mask bits (or None)."""

    data: np.ndarray
    wcs: Any
    tai: float | None
    bits: np.ndarray | None


class FrameCache:
    """The last ``capacity`` frames read, shared by worker threads: each frame is read once even
    when several threads ask for it at the same time."""

    def __init__(self, capacity: int = 20) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[str, LoadedFrame] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, path: str, fpm: str | None = None) -> LoadedFrame:
        """The frame file ``path`` with the mask bits of the fpM file ``fpm`` (None: no bits; an
        unreadable fpM file is logged and left out)."""
        with self._lock:
            if path in self._frames:
                self._frames.move_to_end(path)
                return self._frames[path]
            loading = self._loading.setdefault(path, threading.Lock())
        with loading:
            with self._lock:
                if path in self._frames:
                    return self._frames[path]
            data, wcs, info = read_frame(path)
            tai = float(info["TAI"]) if info.get("TAI") is not None else None
            bits = None
            if fpm:
                try:
                    bits = read_fpm_mask(fpm)
                except DarkroomError as exc:  # the cube goes on without those bits
                    log.warning("%s", exc.reason)
            frame = LoadedFrame(data, wcs, tai, bits)
            with self._lock:
                self._frames[path] = frame
                while len(self._frames) > self.capacity:
                    self._frames.popitem(last=False)
                self._loading.pop(path, None)
            return frame


@dataclass(frozen=True)
class TargetCube:
    """A target's cube (band, y, x) [nanomaggies, NaN where no data], its mask bits, each band's
    0-based (x, y) of the target (None: no frame), and the position cut at [deg]."""

    cube: np.ndarray
    mask: np.ndarray
    centres: dict[str, tuple[float, float] | None]
    ra_deg: float
    dec_deg: float


def target_cube(
    frames: Mapping[str, LoadedFrame | None],
    *,
    ra_deg: float,
    dec_deg: float,
    pmra_masyr: float = 0.0,
    pmdec_masyr: float = 0.0,
    epoch_jyear: float | None = None,
    size: int = 32,
    bands: Sequence[str],
) -> TargetCube:
    """The cube of a target at (``ra_deg``, ``dec_deg``) [deg] of ``epoch_jyear``, moved by its
    proper motion [mas/yr; pmra includes cos(dec)] to the epoch of the frames (the first band's
    ``TAI``), so a fast mover sits at the stamp centre too. Without an epoch or a frame time the
    position is used as given."""
    tai = next((f.tai for f in frames.values() if f is not None and f.tai), None)
    ra, dec = float(ra_deg), float(dec_deg)
    if epoch_jyear is not None and np.isfinite(epoch_jyear) and tai is not None:
        moved = propagate_space_motion(
            ra, dec, pmra_masyr, pmdec_masyr, from_epoch_jyear=epoch_jyear, to_epoch_jyear=tai_to_jyear(tai)
        )
        ra, dec = (float(v) for v in moved)
    planes = {b: (f.data, f.wcs, f.bits) if f is not None else None for b, f in frames.items()}
    cube, mask, centres = cutout_cube(planes, ra_deg=ra, dec_deg=dec, size=size, bands=list(bands))
    return TargetCube(cube, mask, centres, ra, dec)


def cube_index(rows: Sequence[Sequence[Any]]) -> Table:
    """The index table of a cube set: one row per cube, columns :data:`INDEX_COLUMNS`."""
    from astropy.table import Table

    names = [n for n, _ in INDEX_COLUMNS]
    if not rows:
        return Table(names=names, dtype=[t for _, t in INDEX_COLUMNS])
    return Table(rows=[tuple(r) for r in rows], names=names)
