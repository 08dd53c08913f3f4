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


def test_remove_orphan_temps_spares_live_writers(tmp_path):
    import os
    import subprocess
    import sys

    from darkroom.io.atomic import _HOST

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "a").mkdir()
    orphan = tmp_path / "a" / f"{TEMP_PREFIX}{_HOST}-{dead.stdout.strip()}-abc.fits"
    orphan.write_bytes(b"x")
    live = tmp_path / "a" / f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-def.fits"
    live.write_bytes(b"z")
    old_unknown = tmp_path / "a" / f"{TEMP_PREFIX}xyz.fits"
    old_unknown.write_bytes(b"w")
    os.utime(old_unknown, (1, 1))
    keep = tmp_path / "a" / "real.fits"
    keep.write_bytes(b"y")
    assert sorted(remove_orphan_temps(tmp_path)) == sorted([orphan, old_unknown])
    assert keep.exists() and live.exists() and not orphan.exists()


def test_atomic_path_writes_in_a_private_folder_and_applies_the_mode(tmp_path):
    import os
    import stat

    p = tmp_path / "secret.yaml"
    with atomic_path(p, mode=0o600) as tmp:
        # Created exclusively by mkdtemp: nobody else can make or swap the name meanwhile.
        assert tmp.parent != tmp_path and tmp.parent.name.startswith(TEMP_PREFIX)
        assert stat.S_IMODE(tmp.parent.stat().st_mode) == 0o700
        assert not tmp.exists()
        tmp.write_text("password: x")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert sorted(q.name for q in tmp_path.iterdir()) == ["secret.yaml"]
    # An orphan private folder (its writer is gone) is cleared like an orphan file.
    orphan = tmp_path / f"{TEMP_PREFIX}otherhost-1-abc"
    orphan.mkdir()
    (orphan / "x.fits").write_bytes(b"half")
    os.utime(orphan, (1, 1))
    assert remove_orphan_temps(tmp_path) == [orphan] and not orphan.exists()


def test_quick_path_renames_into_place_and_leaves_nothing_on_failure(tmp_path):
    from darkroom.io.atomic import atomic_write_path, quick_path, sha256_bytes

    target = tmp_path / "a" / "lc.parquet"
    with quick_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(TEMP_PREFIX) and tmp.suffix == ".parquet"
        assert (tmp.stat().st_mode & 0o777) == 0o600  # made exclusively, private until renamed
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sha256_bytes(b"new") == sha256_file(target)
    with pytest.raises(RuntimeError), quick_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new" and sorted(p.name for p in target.parent.iterdir()) == ["lc.parquet"]
    for durable in (True, False):  # fsynced or quick: the same file in the end
        with atomic_write_path(target, durable=durable) as tmp:
            tmp.write_bytes(b"x%d" % durable)
        assert target.read_bytes() == b"x%d" % durable
    assert sorted(p.name for p in target.parent.iterdir()) == ["lc.parquet"]
