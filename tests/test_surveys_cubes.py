"""A target's cube from frames (no archive, no registry): proper motion to the frames' epoch, the
frame cache reads each file once, the index table of a cube set."""

from __future__ import annotations

import threading

import numpy as np
from astropy.wcs import WCS

from darkroom.maskbits import MaskBit
from darkroom.surveys import cubes
from darkroom.surveys.cubes import (
    INDEX_COLUMNS,
    FrameCache,
    LoadedFrame,
    cube_index,
    tai_to_jyear,
    target_cube,
)

MJD0_J2000 = 51544.5  # J2000.0


def test_tai_seconds_to_julian_year():
    assert tai_to_jyear(MJD0_J2000 * 86400.0) == 2000.0
    assert abs(tai_to_jyear((MJD0_J2000 + 10 * 365.25) * 86400.0) - 2010.0) < 1e-12


def _frame(ra0: float, dec0: float, star: tuple[float, float] | None, tai: float | None) -> LoadedFrame:
    """A 101 x 101 frame, 0.4 arcsec pixels, centred on (ra0, dec0), with a star at sky ``star``."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [51.0, 51.0]  # 1-based: pixel 50 (0-based) is the centre
    wcs.wcs.cdelt = [-0.4 / 3600, 0.4 / 3600]
    data = np.zeros((101, 101), np.float32)
    if star is not None:
        x, y = wcs.all_world2pix([star[0]], [star[1]], 0)
        yy, xx = np.mgrid[:101, :101]
        data += np.exp(-((xx - x[0]) ** 2 + (yy - y[0]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    return LoadedFrame(data, wcs, tai, None)


def test_a_fast_mover_is_moved_to_the_frames_epoch_and_sits_at_the_centre():
    ra, dec = 150.0, 20.0  # catalogue position at 2000.0
    pmdec = 1000.0  # mas/yr: 10 arcsec = 25 pixels north by 2010.0
    tai = (MJD0_J2000 + 10 * 365.25) * 86400.0
    moved = (ra, dec + 10.0 / 3600)
    frames = {"g": _frame(ra, dec, moved, tai), "r": _frame(ra, dec, moved, tai), "z": None}
    made = target_cube(
        frames, ra_deg=ra, dec_deg=dec, pmdec_masyr=pmdec, epoch_jyear=2000.0, size=16, bands="grz"
    )
    assert abs(made.dec_deg - moved[1]) * 3600 < 0.01 and abs(made.ra_deg - ra) * 3600 < 0.01
    for b in range(2):  # the star at the stamp centre (7.5, 7.5) in both bands
        y, x = np.unravel_index(np.nanargmax(made.cube[b]), made.cube[b].shape)
        assert abs(x - 7.5) <= 0.5 and abs(y - 7.5) <= 0.5
    assert made.centres["z"] is None and np.all(made.mask[2] == MaskBit.NO_DATA)
    # without an epoch (or without a frame time) the position is cut as given: the star is off
    still = target_cube(
        frames, ra_deg=ra, dec_deg=dec, pmdec_masyr=pmdec, epoch_jyear=None, size=16, bands="grz"
    )
    assert (still.ra_deg, still.dec_deg) == (ra, dec) and np.nanmax(still.cube[0]) < 0.01


def test_frame_cache_reads_each_frame_once_across_threads(monkeypatch):
    reads: list[str] = []
    lock = threading.Lock()

    def fake_read(path):
        with lock:
            reads.append(path)
        return np.zeros((2, 2), np.float32), None, {"TAI": 1.0}

    monkeypatch.setattr(cubes, "read_frame", fake_read)
    cache = FrameCache(capacity=2)
    threads = [threading.Thread(target=cache.get, args=(p,)) for p in ["a", "b", "a", "b", "a"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(reads) == ["a", "b"]
    assert cache.get("a").tai == 1.0 and cache.get("c").bits is None
    cache.get("a")  # "b" is now the oldest of three: dropped, read again when asked
    cache.get("b")
    assert sorted(reads) == ["a", "b", "b", "c"]


def test_index_table_columns_with_and_without_rows():
    empty = cube_index([])
    assert empty.colnames == [n for n, _ in INDEX_COLUMNS] and len(empty) == 0
    one = cube_index([(0, "m2", "star", 1.5, -0.5, "cubes/ra001/m2_star.fits", 2583, 2, 136, 3, "z")])
    assert list(one["name"]) == ["star"] and int(one["n_masked"][0]) == 3 and one["ra_deg"][0] == 1.5
