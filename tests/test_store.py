"""File store: sha256 and atomic writes."""

from __future__ import annotations

import hashlib

import pytest

from darkroom.repo.store import (
    TEMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    remove_orphan_temps,
    sha256_file,
)


def test_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    blob = bytes(range(256)) * 9000
    p.write_bytes(blob)
    assert sha256_file(p) == hashlib.sha256(blob).hexdigest()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "out.fits"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert [q.name for q in p.parent.iterdir()] == ["out.fits"]


def test_failed_write_keeps_old_file(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(p, boom)
    assert p.read_text() == "old"
    assert not list(tmp_path.glob(f"{TEMP_PREFIX}*"))


def test_atomic_path_with_astropy_writer(tmp_path):
    import numpy as np
    from astropy.io import fits

    p = tmp_path / "img.fits"
    with atomic_path(p) as tmp:
        fits.PrimaryHDU(np.ones((3, 4), dtype=np.float32)).writeto(tmp)
        assert not p.exists()
    assert fits.getdata(p).shape == (3, 4)


def test_remove_orphan_temps(tmp_path):
    (tmp_path / "a").mkdir()
    orphan = tmp_path / "a" / f"{TEMP_PREFIX}abc.fits"
    orphan.write_bytes(b"x")
    keep = tmp_path / "a" / "real.fits"
    keep.write_bytes(b"y")
    assert remove_orphan_temps(tmp_path) == [orphan]
    assert keep.exists() and not orphan.exists()
