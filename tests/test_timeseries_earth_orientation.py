"""The cached IERS table is astropy's own, value for value, and BJD_TDB/airmass do not change."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.utils import iers

from darkroom.timeseries.earth_orientation import use_cached_earth_orientation
from darkroom.timeseries.times import airmass, bjd_tdb, site_location

MJD = 60828.15 + np.arange(40) * 0.004  # an ARCSAT night, 2025-06-02
RA, DEC = 240.549333, 28.169556
SITE = site_location(32.78, -105.82, 2788.0)


@pytest.fixture
def fresh_iers(monkeypatch, tmp_path):
    """No IERS table loaded in this process (restored afterwards); working directory without
    a finals2000A.all."""
    monkeypatch.setattr(iers.IERS_Auto, "iers_table", None)
    monkeypatch.setattr(iers.IERS_B, "iers_table", None)
    monkeypatch.chdir(tmp_path)

    def reset() -> None:
        iers.IERS_Auto.iers_table = None
        iers.IERS_B.iers_table = None

    return reset


def _same_table(a, b) -> None:
    assert type(a) is type(b) and a.colnames == b.colnames and len(a) == len(b)
    for name in a.colnames:
        assert getattr(a[name], "unit", None) == getattr(b[name], "unit", None), name
        assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes(), name
    assert a.meta == b.meta


def test_cache_is_written_then_read_and_values_do_not_change(tmp_path, fresh_iers):
    # astropy's own parse, nothing cached
    own = iers.IERS_Auto.open()
    bjd_own = bjd_tdb(MJD, RA, DEC, location=SITE)
    am_own = airmass(MJD, RA, DEC, location=SITE)

    fresh_iers()
    cache = tmp_path / "cache"
    assert use_cached_earth_orientation(cache) is False  # parsed here, saved
    (saved,) = cache.iterdir()
    assert saved.name.startswith("iers-auto-") and saved.suffix == ".pickle"
    _same_table(iers.IERS_Auto.open(), own)

    fresh_iers()
    assert use_cached_earth_orientation(cache) is True  # from the cache
    _same_table(iers.IERS_Auto.open(), own)
    assert bjd_tdb(MJD, RA, DEC, location=SITE).tobytes() == bjd_own.tobytes()
    assert airmass(MJD, RA, DEC, location=SITE).tobytes() == am_own.tobytes()


def test_torn_cache_is_parsed_again_and_rewritten(tmp_path, fresh_iers):
    cache = tmp_path / "cache"
    use_cached_earth_orientation(cache)
    (saved,) = cache.iterdir()
    good = saved.read_bytes()
    saved.write_bytes(good[: len(good) // 3])
    fresh_iers()
    assert use_cached_earth_orientation(cache) is False
    assert saved.read_bytes() == good
    assert type(iers.IERS_Auto.iers_table) is iers.IERS_Auto


def test_a_loaded_or_local_table_is_left_to_astropy(tmp_path, fresh_iers):
    cache = tmp_path / "cache"
    mine = iers.IERS_Auto.read()
    iers.IERS_Auto.iers_table = mine  # the caller's own table: kept, nothing cached
    assert use_cached_earth_orientation(cache) is False
    assert iers.IERS_Auto.iers_table is mine and not cache.exists()

    fresh_iers()
    (tmp_path / "finals2000A.all").write_text("")  # astropy would read this file instead
    assert use_cached_earth_orientation(cache) is False
    assert iers.IERS_Auto.iers_table is None and not cache.exists()


def test_a_shared_cache_serves_a_new_repository_and_a_torn_one_is_rewritten(tmp_path, fresh_iers):
    import hashlib
    import pickle

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    shared, first, second = tmp_path / "shared", tmp_path / "repo1", tmp_path / "repo2"
    assert use_cached_earth_orientation([shared, first]) is False  # parsed once, kept in both
    own = iers.IERS_Auto.iers_table
    (kept,) = shared.iterdir()
    good = digest(kept)
    assert [digest(p) for p in first.iterdir()] == [good]
    fresh_iers()
    assert use_cached_earth_orientation([shared, second]) is True  # a new repository: not parsed
    _same_table(iers.IERS_Auto.iers_table, own)
    (copied,) = second.iterdir()
    _same_table(pickle.loads(copied.read_bytes()), own)  # and the repository keeps a copy
    assert digest(copied) == good  # of the shared file's bytes
    kept.write_bytes(kept.read_bytes()[:100])  # the shared copy torn: the repository's serves
    fresh_iers()
    assert use_cached_earth_orientation([shared, second]) is True
    _same_table(pickle.loads(kept.read_bytes()), own)  # and the shared copy is mended
