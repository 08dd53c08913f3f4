"""Bulk measurements on SQLite and PostgreSQL: exact round trip, light curves, idempotent replace."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.table import MaskedColumn, Table
from sqlalchemy.exc import IntegrityError

from darkroom.errors import BadInputError
from darkroom.repo.bulk import (
    LIGHTCURVE_COLUMNS,
    MEASUREMENT_COLUMNS,
    ReplaceCounts,
    insert_measurements,
    lightcurve_rows,
    replace_measurements_for_images,
)
from darkroom.repo.models import Exposure, Image, Measurement, Provenance, Source
from darkroom.repo.registry import Registry

# Image times deliberately not in id order, so "ordered by time" differs from "ordered by id".
IMAGE_MJD = [60100.30, 60100.10, 60100.50, 60100.20, 60100.40]
IMAGE_FILTER = ["V", "R", "V", "R", "V"]


@pytest.fixture
def registry(db_url):
    reg = Registry(db_url)
    reg.upgrade()
    yield reg
    reg.dispose()


def _populate(reg: Registry, *, n_images: int, n_sources: int, mjd=None, filters=None) -> None:
    """Provenances p1/p2, ``n_images`` images (ids 1..n) and ``n_sources`` sources (ids 1..n)."""
    mjd = mjd if mjd is not None else [60000.0 + 0.01 * i for i in range(n_images)]
    filters = filters if filters is not None else ["V"] * n_images
    with reg.engine.begin() as conn:
        conn.execute(
            sa.insert(Provenance),
            [dict(id=p, stage="phot", params={}, code_version="0", upstream=[]) for p in ("p1", "p2")],
        )
        conn.execute(
            sa.insert(Exposure),
            [
                dict(id=i + 1, sha256=f"{i:064d}", path=f"/raw/{i}.fits", size_bytes=1, state="ok", meta={})
                for i in range(n_images)
            ],
        )
        conn.execute(
            sa.insert(Image),
            [
                dict(
                    id=i + 1,
                    exposure_id=i + 1,
                    provenance_id="p1",
                    path=f"images/{i}.fits",
                    sha256="0",
                    filter=filters[i],
                    mjd_mid=mjd[i],
                    quality={},
                    astrom={},
                    photcal={},
                )
                for i in range(n_images)
            ],
        )
        conn.execute(
            sa.insert(Source), [dict(id=s + 1, provenance_id="p1", mean_mag={}) for s in range(n_sources)]
        )


def _grid(source_ids, image_ids, *, provenance_id="p1", seed=0) -> dict[str, np.ndarray]:
    """One row per (image, source), image-major (the order a photometry run produces)."""
    rng = np.random.default_rng(seed)
    src = np.tile(np.asarray(source_ids, np.int64), len(image_ids))
    img = np.repeat(np.asarray(image_ids, np.int64), len(source_ids))
    n = src.size
    return {
        "source_id": src,
        "image_id": img,
        "provenance_id": provenance_id,
        "x": rng.uniform(0, 2048, n),
        "y": rng.uniform(0, 2048, n),
        "ra_deg": rng.uniform(0, 360, n),
        "dec_deg": rng.uniform(-90, 90, n),
        # flux encodes (source, image) so a row read back can be checked against its key
        "flux": src * 1000.0 + img + rng.uniform(0, 0.5, n),
        "flux_err": rng.uniform(1, 10, n),
        "mag": rng.uniform(10, 20, n),
        "mag_err": rng.uniform(0.001, 0.1, n),
        "flags": rng.integers(0, 64, n),
        "forced": rng.random(n) < 0.5,
        "mjd_mid": np.asarray(IMAGE_MJD * (n // len(IMAGE_MJD) + 1))[:n],
    }


def _count(reg: Registry, **where) -> int:
    stmt = sa.select(sa.func.count()).select_from(Measurement)
    for name, value in where.items():
        stmt = stmt.where(getattr(Measurement, name) == value)
    with reg.engine.connect() as conn:
        return conn.scalar(stmt)


def test_rows_round_trip_exactly(registry):
    _populate(registry, n_images=5, n_sources=40, mjd=IMAGE_MJD, filters=IMAGE_FILTER)
    cols = _grid(range(1, 41), range(1, 6))
    n = cols["source_id"].size
    # values that a decimal text path or float32 would alter
    cols["x"][:4] = [0.1, 1 / 3, 2048 - 2**-40, 5e-324]
    cols["flux"][:6] = [1e300, -1e-300, 2.0**-1074, 123456789.12345679, np.nan, -np.inf]
    cols["mag"][::7] = np.nan
    table = Table(dict(cols, provenance_id=np.full(n, "p1")))
    mask = np.zeros(n, bool)
    mask[3::11] = True
    table["flux_err"] = MaskedColumn(cols["flux_err"], mask=mask)
    del table["mjd_mid"]  # absent optional column -> NULL

    assert insert_measurements(registry, table) == n

    names = ", ".join(MEASUREMENT_COLUMNS)
    with registry.engine.connect() as conn:
        got = conn.execute(sa.text(f"SELECT {names} FROM measurement ORDER BY source_id, image_id")).all()
    order = np.lexsort((cols["image_id"], cols["source_id"]))
    assert len(got) == n
    for row, i in zip(got, order, strict=True):
        rec = dict(zip(MEASUREMENT_COLUMNS, row, strict=True))
        assert (rec["source_id"], rec["image_id"], rec["provenance_id"]) == (
            cols["source_id"][i],
            cols["image_id"][i],
            "p1",
        )
        for name in ("x", "y", "ra_deg", "dec_deg", "flux", "mag", "mag_err"):
            want = float(cols[name][i])
            assert rec[name] == (None if np.isnan(want) else want), (name, i)
        assert rec["flux_err"] == (None if mask[i] else float(cols["flux_err"][i]))
        assert rec["mjd_mid"] is None
        assert rec["flags"] == cols["flags"][i]
        assert bool(rec["forced"]) is bool(cols["forced"][i])
    # the ORM sees the same rows (the table is ordinary SQL)
    with registry.session() as s:
        m = s.scalars(sa.select(Measurement).where(Measurement.flux.is_(None))).all()
    assert len(m) == int(np.isnan(cols["flux"]).sum())


def test_lightcurve_is_one_source_in_time_order(registry):
    _populate(registry, n_images=5, n_sources=30, mjd=IMAGE_MJD, filters=IMAGE_FILTER)
    insert_measurements(registry, _grid(range(1, 31), range(1, 6), provenance_id="p1", seed=1))
    insert_measurements(registry, _grid(range(1, 31), [2, 4], provenance_id="p2", seed=2))

    lc = lightcurve_rows(registry, 17, provenance_id="p1")
    assert lc.colnames == list(LIGHTCURVE_COLUMNS)
    assert len(lc) == 5
    assert set(lc["source_id"]) == {17}
    assert set(lc["provenance_id"]) == {"p1"}
    # image ids ordered by their mid-exposure time: 60100.10 (2), .20 (4), .30 (1), .40 (5), .50 (3)
    assert lc["image_id"].tolist() == [2, 4, 1, 5, 3]
    assert lc["mjd_mid"].tolist() == sorted(IMAGE_MJD)
    assert lc["filter"].tolist() == ["R", "R", "V", "V", "V"]
    assert np.array_equal(np.floor(lc["flux"]), 17 * 1000.0 + lc["image_id"])
    assert lc["mjd_mid"].unit == "d" and lc["flux"].unit == "adu"

    both = lightcurve_rows(registry, 17)
    assert len(both) == 7
    assert np.all(np.diff(both["mjd_mid"]) >= 0)
    assert sorted(both["provenance_id"]) == ["p1"] * 5 + ["p2"] * 2

    empty = lightcurve_rows(registry, 999)
    assert len(empty) == 0 and empty.colnames == list(LIGHTCURVE_COLUMNS)


def test_replace_for_images_does_not_duplicate(registry):
    _populate(registry, n_images=5, n_sources=20)
    insert_measurements(registry, _grid(range(1, 21), range(1, 6), provenance_id="p1", seed=3))
    insert_measurements(registry, _grid(range(1, 21), [2], provenance_id="p2", seed=4))
    assert _count(registry) == 120

    first = replace_measurements_for_images(
        registry, [2, 3], _grid(range(1, 21), [2, 3], seed=5), provenance_id="p1"
    )
    assert first == ReplaceCounts(n_deleted=40, n_inserted=40)
    # the same unit run again (e.g. after a crash between compute and record): still no duplicate
    new = _grid(range(1, 21), [2, 3], seed=6)
    again = replace_measurements_for_images(registry, [2, 3], new, provenance_id="p1")
    assert again == ReplaceCounts(n_deleted=40, n_inserted=40)
    assert _count(registry) == 120
    assert _count(registry, provenance_id="p2") == 20  # another provenance of image 2 untouched
    lc = lightcurve_rows(registry, 7, provenance_id="p1")
    assert len(lc) == 5 and len(set(lc["image_id"].tolist())) == 5
    want = new["flux"][(new["source_id"] == 7) & (new["image_id"] == 3)]
    assert lc["flux"][lc["image_id"] == 3].tolist() == want.tolist()

    # a replace that fails half-way (a source id with no source row) changes nothing
    bad = _grid([1, 2, 999], [2, 3], seed=7)
    with pytest.raises(IntegrityError):
        replace_measurements_for_images(registry, [2, 3], bad, provenance_id="p1")
    assert _count(registry) == 120
    assert lightcurve_rows(registry, 7, provenance_id="p1")["flux"][lc["image_id"] == 3].tolist() == (
        want.tolist()
    )

    # fewer rows than before (a source lost in image 3) and an image with no rows left
    fewer = _grid(range(1, 20), [3], seed=8)
    counts = replace_measurements_for_images(registry, [3, 4], fewer, provenance_id="p1")
    assert counts == ReplaceCounts(n_deleted=40, n_inserted=19)
    assert _count(registry, image_id=4) == 0 and _count(registry, image_id=3) == 19


def test_duplicate_and_invalid_input_write_nothing(registry):
    _populate(registry, n_images=2, n_sources=5)
    rows = _grid(range(1, 6), [1, 2])
    assert insert_measurements(registry, rows) == 10
    with pytest.raises(IntegrityError):
        insert_measurements(registry, _grid(range(1, 6), [2]))
    assert _count(registry) == 10

    bad = dict(rows, x=np.where(np.arange(10) == 3, np.nan, rows["x"]))
    with pytest.raises(BadInputError, match=r"'x'.*finite"):
        insert_measurements(registry, bad)
    with pytest.raises(BadInputError, match=r"lack required column\(s\) \['y'\]"):
        insert_measurements(registry, {k: v for k, v in rows.items() if k != "y"})
    with pytest.raises(BadInputError, match="must hold integers"):
        insert_measurements(registry, dict(rows, source_id=rows["source_id"].astype(float)))
    with pytest.raises(BadInputError, match="not among the images replaced"):
        replace_measurements_for_images(registry, [1], rows, provenance_id="p1")
    with pytest.raises(BadInputError, match="expected only 'p2'"):
        replace_measurements_for_images(registry, [1, 2], rows, provenance_id="p2")
    assert _count(registry) == 10
    assert insert_measurements(registry, {k: v[:0] for k, v in _grid([1], [1]).items()}) == 0


def test_rows_join_the_callers_transaction(registry):
    _populate(registry, n_images=2, n_sources=5)
    with pytest.raises(RuntimeError), registry.session() as s:
        insert_measurements(s, _grid(range(1, 6), [1]))
        raise RuntimeError("driver died before the task was recorded")
    assert _count(registry) == 0
    with registry.engine.begin() as conn:
        assert insert_measurements(conn, _grid(range(1, 6), [1, 2])) == 10
    assert _count(registry) == 10
    assert len(lightcurve_rows(registry, 3)) == 2


def test_50k_rows_insert(registry):
    n_sources, n_images = 500, 100
    _populate(registry, n_images=n_images, n_sources=n_sources)
    total = 0
    for first in range(1, n_images + 1, 25):  # four units of 25 images, as a photometry run records them
        total += insert_measurements(registry, _grid(range(1, n_sources + 1), range(first, first + 25)))
    assert total == 50_000
    assert _count(registry) == 50_000
    lc = lightcurve_rows(registry, 321)
    assert len(lc) == n_images
    assert lc["image_id"].tolist() == list(range(1, n_images + 1))
    assert np.array_equal(np.floor(lc["flux"]), 321 * 1000.0 + lc["image_id"])
