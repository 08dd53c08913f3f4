"""Given a raw file read whole inside a keeping block, its next read is what a fresh read gives.

The keeper (darkroom.io.keep) lets `darkroom run --ingest` decompress and parse each raw file
once: ingest leaves what it read, the masters and calibrate take it. Every check here compares
with a read of the file from disk outside any block.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
from astropy.io import fits

from darkroom.io.keep import Keeper, active_keeper, keeping, memory_budget_bytes, release_kept
from darkroom.io.rawfits import RawImage, ReadLimits, read_raw

INGEST = ReadLimits()  # ingest reads with its configured limits: a first read, which keeps


def _same(a: RawImage, b: RawImage) -> None:
    assert a.data.dtype == b.data.dtype == np.float32
    assert np.array_equal(a.data, b.data, equal_nan=True)
    assert a.header.tostring() == b.header.tostring()
    assert (a.shape, a.hdu_index, a.dropped_cards) == (b.shape, b.hdu_index, b.dropped_cards)


def _real_raw_files(data_dir: Path) -> list[Path]:
    """Raw frames of four cameras: gzip 16-bit (ARCSAT, ST-7), plain FITS of the MSU header
    variants and the Feder set (8- to 32-bit, float), and the SDSS bzip2 frames."""
    picks = []
    for folder, pattern, n in (
        ("arcsat-xo1b-transit", "*.fits.gz", 6),
        ("st7-ptc-linearity", "*.gz", 4),
        ("msumastro-header-variants", "*.fit", 6),
        ("feder-eyuma-astrometry-photcal", "*.fit*", 6),
        ("sdss-frames-m2", "*.bz2", 2),
    ):
        found = sorted((data_dir / folder).glob(pattern))[:n]
        assert found, f"no {pattern} in {folder}"
        picks += found
    return picks


def test_a_kept_read_equals_a_fresh_read_on_five_real_sets(data_dir):
    paths = []
    for path in _real_raw_files(data_dir):
        try:
            read_raw(path)
        except Exception:  # a file ingest would quarantine is not kept, and is not the point here
            continue
        paths.append(path)
    assert len(paths) >= 18
    fresh = [read_raw(p) for p in paths]
    with keeping(1 << 30) as keeper:
        for p in paths:
            read_raw(p, limits=INGEST)
        assert keeper.n_kept == len(paths)
        again = [read_raw(p) for p in paths]
        assert keeper.n_taken == len(paths) and keeper.held_bytes == 0
        third = [read_raw(p) for p in paths[:3]]  # handed out once: read from disk now
        assert keeper.n_taken == len(paths)
    for a, b in zip(again + third, fresh + fresh[:3], strict=True):
        _same(a, b)


def test_sixteen_bit_frames_are_kept_in_their_stored_type(arcsat_dir):
    path = sorted(arcsat_dir.glob("*.fits.gz"))[0]
    with keeping(1 << 30) as keeper:
        first = read_raw(path, limits=INGEST)
        assert first.stored_dtype == np.dtype(np.uint16)
        # half the memory of the float32 pixels (plus the header's cards)
        assert first.data.nbytes // 2 <= keeper.held_bytes < first.data.nbytes // 2 + 80 * 200
        _same(read_raw(path), read_raw(path))  # the second from disk


def test_a_float_frame_is_kept_as_float(tmp_path):
    data = np.random.default_rng(1).normal(100.0, 5.0, (40, 50)).astype(np.float32)
    data[3, 4] = np.nan
    path = tmp_path / "float.fits"
    fits.PrimaryHDU(data).writeto(path)
    with keeping(1 << 20) as keeper:
        assert read_raw(path, limits=INGEST).stored_dtype is None
        assert keeper.held_bytes >= data.nbytes
        _same(read_raw(path), read_raw(path))


def test_a_file_changed_between_the_reads_is_read_anew(tmp_path):
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(np.full((30, 30), 100, np.int16)).writeto(path)
    with keeping(1 << 20) as keeper:
        read_raw(path, limits=INGEST)
        fits.PrimaryHDU(np.full((30, 30), 200, np.int16)).writeto(path, overwrite=True)  # same size
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        got = read_raw(path)
        assert keeper.n_taken == 0
    assert float(got.data[0, 0]) == 200.0


def test_the_budget_is_kept_and_what_does_not_fit_is_read_from_disk(arcsat_dir):
    paths = sorted(arcsat_dir.glob("*.fits.gz"))[:5]
    one = read_raw(paths[0])
    budget = int(2.5 * one.data.size * 2)  # room for two 16-bit frames
    with keeping(budget) as keeper:
        for p in paths:
            read_raw(p, limits=INGEST)
        assert keeper.n_kept == 2 and keeper.n_refused == 3 and keeper.held_bytes <= budget
        for p in paths:
            _same(read_raw(p), one if p == paths[0] else read_raw(p))
        assert keeper.n_taken == 2


def test_nothing_is_kept_outside_a_block_with_a_zero_budget_or_after_release(arcsat_dir):
    path = sorted(arcsat_dir.glob("*.fits.gz"))[0]
    assert active_keeper() is None
    with keeping(0) as keeper:
        assert keeper is None and active_keeper() is None
    with keeping(1 << 30) as keeper:
        read_raw(path, with_data=False, limits=INGEST)  # a header-only read keeps nothing
        assert keeper.n_kept == 0
        read_raw(path, limits=INGEST)
        assert keeper.held_bytes > 0
        release_kept()  # the last stage that reads raw frames is done
        assert keeper.held_bytes == 0
        read_raw(path)
        assert keeper.n_taken == 0
    assert active_keeper() is None


def _child_sees_a_keeper(queue) -> None:
    queue.put(active_keeper() is not None)


def test_a_forked_reader_does_not_use_its_parents_keeper():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with keeping(1 << 20):
        assert active_keeper() is not None
        child = ctx.Process(target=_child_sees_a_keeper, args=(queue,))
        child.start()
        child.join(30)
    assert queue.get(timeout=5) is False


def test_a_keeper_hands_an_item_out_once_and_counts_its_bytes():
    keeper = Keeper(100)
    made = []

    def make(item):
        return lambda: made.append(item) or item

    assert keeper.offer("a", make("A"), 60) and not keeper.offer("a", make("A2"), 10)
    assert not keeper.offer("b", make("B"), 50) and keeper.n_refused == 1
    assert made == ["A"]  # an item that is not kept is not made
    assert keeper.take("a") == "A" and keeper.take("a") is None
    assert keeper.held_bytes == 0 and keeper.offer("b", make("B"), 50)


def test_the_memory_budget_is_at_most_a_quarter_of_what_is_available():
    assert memory_budget_bytes(0) == 0
    wanted = memory_budget_bytes(512)
    assert 0 < wanted <= 512 << 20
    # more than any machine has: a quarter of what this one has available
    assert memory_budget_bytes(1e9) < 1e9 * (1 << 20)


def test_a_colour_frame_is_kept_as_the_luminance_it_reads_as(tmp_path):
    """A one-shot colour (Bayer) frame reads as its 2 x 2 luminance sum (sums of four 16-bit values
    need more than 16 bits): it is kept as float32, and a kept read equals a fresh one."""
    rng = np.random.default_rng(3)
    header = fits.Header({"BAYERPAT": "RGGB", "EXPTIME": 30.0, "DATE-OBS": "2025-03-01T03:00:00"})
    path = tmp_path / "dslr.fits"
    fits.PrimaryHDU(rng.integers(60000, 65535, (60, 80)).astype(np.uint16), header=header).writeto(path)
    with keeping(1 << 20) as keeper:
        first = read_raw(path, limits=INGEST)
        assert first.shape == (30, 40) and first.stored_dtype is None
        assert float(first.data.max()) > 65535  # the sums exceed what 16 bits hold
        again = read_raw(path)
        assert keeper.n_taken == 1
    _same(again, read_raw(path))


def test_a_tile_compressed_frame_is_kept_exactly(tmp_path):
    """An fpack (Rice, tile-compressed) 16-bit frame: its pixels are kept in their stored type."""
    rng = np.random.default_rng(4)
    data = rng.integers(0, 60000, (64, 96)).astype(np.uint16)
    path = tmp_path / "frame.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type="RICE_1")]).writeto(path)
    with keeping(1 << 20) as keeper:
        first = read_raw(path, limits=INGEST)
        assert first.stored_dtype == np.dtype(np.uint16)
        again = read_raw(path)
        assert keeper.n_taken == 1
    _same(again, read_raw(path))
    assert np.array_equal(again.data, data.astype(np.float32))
