"""Registry benchmark: bulk measurement inserts and the light-curve query.

Builds a SQLite registry of ``n_sources x n_images`` synthetic measurements (10^7 by
default: 10^4 sources x 10^3 images), written the way a photometry run records them
(one ``insert_measurements`` call per ``--images-per-call`` images), and reports

- insert rate (rows/s) of darkroom's bulk path on SQLite (executemany) and
  PostgreSQL (binary COPY), against plain SQLAlchemy at ``--baseline-rows`` rows:
  ORM ``session.add_all`` and Core ``insert()`` executemany (list of dicts);
- PostgreSQL at ``--pg-rows`` rows (10^6 by default) to keep the run short;
- light-curve query time (``lightcurve_rows`` of one source, all its epochs) over
  ``--queries`` random sources, warm cache (each query run once before timing):
  median and 95th percentile; also the bare SQL (fetchall) without the Table;
- database size on disk.

"seconds" are untraced; "peak MB" is the tracemalloc peak of the same stage run
again on a fresh registry (for the builds: of one call). "ratio" is the speed-up over
ORM ``add_all`` on the same backend (rows/s over rows/s; for queries: none).
Everything is written under /tmp and deleted at the end.

Run: .venv/bin/python bench/bench_registry.py [--n-sources 10000 --n-images 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import sqlalchemy as sa

from _common import print_table
from darkroom.repo.bulk import MEASUREMENT_COLUMNS, insert_measurements, lightcurve_rows
from darkroom.repo.models import Exposure, Image, Measurement, Provenance, Source
from darkroom.repo.registry import Registry

PG_URL = os.environ.get("DARKROOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# -- helpers --------------------------------------------------------------------------
def traced_peak_mb(fn) -> float:
    """Peak Python memory [MB] allocated while ``fn()`` runs (tracemalloc; run untimed)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def populate(reg: Registry, n_sources: int, n_images: int) -> None:
    """One provenance, ``n_images`` images (ids 1..n, 2 filters, 5 min apart) and ``n_sources`` sources."""
    with reg.engine.begin() as conn:
        conn.execute(
            sa.insert(Provenance), [dict(id="phot1", stage="phot", params={}, code_version="0", upstream=[])]
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
                    provenance_id="phot1",
                    path=f"images/{i}.fits",
                    sha256="0",
                    filter="gr"[i % 2],
                    mjd_mid=60000.0 + i * 300 / 86400,
                    calib={},
                )
                for i in range(n_images)
            ],
        )
        conn.execute(
            sa.insert(Source),
            [
                dict(id=s + 1, provenance_id="phot1", ra_deg=s * 1e-3, dec_deg=10.0, mean_mag={})
                for s in range(n_sources)
            ],
        )


def synthetic(n_sources: int, image_ids: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All sources in each image, image-major (as photometry produces them)."""
    src = np.tile(np.arange(1, n_sources + 1, dtype=np.int64), image_ids.size)
    img = np.repeat(image_ids.astype(np.int64), n_sources)
    n = src.size
    flux = rng.lognormal(8, 1.5, n)
    flux_err = np.sqrt(flux + 100.0)
    mag = 25.0 - 2.5 * np.log10(flux)
    return {
        "source_id": src,
        "image_id": img,
        "provenance_id": "phot1",
        "x": rng.uniform(0, 4096, n),
        "y": rng.uniform(0, 4096, n),
        "ra_deg": rng.uniform(0, 1, n),
        "dec_deg": rng.uniform(10, 11, n),
        "flux": flux,
        "flux_err": flux_err,
        "mag": mag,
        "mag_err": 1.0857 * flux_err / flux,
        "flags": rng.integers(0, 4, n),
        "forced": np.zeros(n, bool),
        "mjd_mid": 60000.0 + (img - 1) * 300 / 86400,
    }


@contextlib.contextmanager
def sqlite_registry(tmp: Path, name: str) -> Iterator[tuple[Registry, Path]]:
    path = tmp / f"{name}.db"
    reg = Registry(f"sqlite:///{path}")
    reg.upgrade()
    try:
        yield reg, path
    finally:
        reg.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def pg_registry() -> Iterator[tuple[Registry, str]]:
    name = f"darkroom_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    reg = Registry(f"{PG_URL.rsplit('/', 1)[0]}/{name}")
    try:
        reg.upgrade()
        yield reg, name
    finally:
        reg.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def orm_add_all(reg: Registry, cols: dict[str, np.ndarray]) -> None:
    n = cols["source_id"].size
    lists = {k: np.broadcast_to(np.asarray(v), (n,)).tolist() for k, v in cols.items()}
    with reg.session() as s:
        s.add_all(
            [Measurement(**dict(zip(lists, vals, strict=True))) for vals in zip(*lists.values(), strict=True)]
        )


def core_executemany(reg: Registry, cols: dict[str, np.ndarray]) -> None:
    n = cols["source_id"].size
    lists = {k: np.broadcast_to(np.asarray(v), (n,)).tolist() for k, v in cols.items()}
    rows = [dict(zip(lists, vals, strict=True)) for vals in zip(*lists.values(), strict=True)]
    with reg.engine.begin() as conn:
        conn.execute(sa.insert(Measurement), rows)


def time_queries(reg: Registry, source_ids: np.ndarray) -> tuple[list[float], list[float]]:
    """Seconds per light curve: through lightcurve_rows, and the bare SQL (fetchall)."""
    names = ", ".join(f"m.{c}" for c in MEASUREMENT_COLUMNS)
    sql = sa.text(
        f"SELECT {names}, i.mjd_mid, i.filter FROM measurement m JOIN image i ON i.id = m.image_id "
        "WHERE m.source_id = :sid ORDER BY i.mjd_mid"
    )
    for sid in source_ids:  # warm the caches (OS page cache, SQLAlchemy statement cache)
        lightcurve_rows(reg, int(sid))
    t_api, t_sql = [], []
    for sid in source_ids:
        t0 = time.perf_counter()
        lc = lightcurve_rows(reg, int(sid))
        t_api.append(time.perf_counter() - t0)
        assert len(lc) > 0 and np.all(np.diff(lc["mjd_mid"]) >= 0)
    with reg.engine.connect() as conn:
        for sid in source_ids:
            t0 = time.perf_counter()
            conn.execute(sql, {"sid": int(sid)}).all()
            t_sql.append(time.perf_counter() - t0)
    return t_api, t_sql


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


# -- stages -----------------------------------------------------------------------------
def insert_stage(label: str, backend: str, fn, make_registry, n_sources: int, cols: dict, base) -> dict:
    """Time ``fn`` on a fresh registry; then trace its memory on another (untimed)."""
    n = cols["source_id"].size
    n_img = int(np.unique(cols["image_id"]).size)
    with make_registry() as (reg, _):
        populate(reg, n_sources, n_img)
        t0 = time.perf_counter()
        fn(reg, cols)
        dt = time.perf_counter() - t0
    with make_registry() as (reg, _):
        populate(reg, n_sources, n_img)
        peak = traced_peak_mb(lambda: fn(reg, cols))
    rate = n / dt
    return {
        "stage": label,
        "backend": backend,
        "rows": n,
        "seconds": dt,
        "p95 s": "",
        "peak MB": peak,
        "rows/s": rate,
        "ratio": rate / base if base else 1.0,
    }


def baselines(backend: str, make_registry, n_sources: int, n_rows: int, rng) -> tuple[list[dict], float]:
    n_img = max(1, n_rows // n_sources)
    cols = synthetic(n_sources, np.arange(1, n_img + 1), rng)
    rows: list[dict] = []
    base = None
    for label, fn in (
        ("ORM session.add_all", orm_add_all),
        ("Core insert() executemany", core_executemany),
        ("darkroom insert_measurements", insert_measurements),
    ):
        row = insert_stage(label, backend, fn, make_registry, n_sources, cols, base)
        base = base or row["rows/s"]
        rows.append(row)
    return rows, base


def build(reg: Registry, n_sources: int, n_images: int, per_call: int, rng, label: str) -> dict:
    """Insert all rows in calls of ``per_call`` images; time only the inserts.

    The first call runs under tracemalloc for the peak memory of one call and is
    left out of the timing (a call's memory does not depend on the registry size).
    """
    populate(reg, n_sources, n_images)
    t_total = 0.0
    n_timed = 0
    n_total = 0
    peak = float("nan")
    starts = range(1, n_images + 1, per_call)
    for k, first in enumerate(starts):
        ids = np.arange(first, min(first + per_call, n_images + 1))
        cols = synthetic(n_sources, ids, rng)
        if k == 0:
            peak = traced_peak_mb(lambda cols=cols: insert_measurements(reg, cols))
            n_total += cols["source_id"].size
            continue
        t0 = time.perf_counter()
        n = insert_measurements(reg, cols)
        dt = time.perf_counter() - t0
        t_total += dt
        n_timed += n
        n_total += n
        if (k + 1) % max(1, len(starts) // 10) == 0:
            print(
                f"  {label}: {n_total:,} rows, {n_timed / t_total:,.0f} rows/s so far, last call {n / dt:,.0f} rows/s",
                file=sys.stderr,
                flush=True,
            )
    return {"rows": n_total, "seconds": t_total, "peak MB": peak, "rows/s": n_timed / t_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-sources", type=int, default=10_000)
    ap.add_argument("--n-images", type=int, default=1_000, help="SQLite build: rows = n_sources x n_images")
    ap.add_argument("--images-per-call", type=int, default=10)
    ap.add_argument("--pg-rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(20250601)
    query_ids = rng.choice(np.arange(1, args.n_sources + 1), size=args.queries, replace=False)
    table: list[dict] = []

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="darkroom_bench_registry_") as tmp_name:
        tmp = Path(tmp_name)
        counter = iter(range(100))

        def make_sqlite():
            return sqlite_registry(tmp, f"base{next(counter)}")

        for backend, make in (("sqlite", make_sqlite), ("postgresql", pg_registry)):
            rows, _ = baselines(backend, make, args.n_sources, args.baseline_rows, rng)
            table += rows
        base = {r["backend"]: r["rows/s"] for r in table if r["stage"].startswith("ORM")}

        # PostgreSQL: build at --pg-rows, then the query there
        n_img_pg = max(1, args.pg_rows // args.n_sources)
        with pg_registry() as (reg, name):
            res = build(reg, args.n_sources, n_img_pg, args.images_per_call, rng, "postgresql")
            table.append(
                {"stage": "darkroom build (COPY)", "backend": "postgresql", **res, "p95 s": ""}
                | {"ratio": res["rows/s"] / base["postgresql"]}
            )
            t_api, t_sql = time_queries(reg, query_ids)
            with reg.engine.connect() as conn:
                size_mb = conn.scalar(sa.text("SELECT pg_database_size(:n)"), {"n": name}) / 1e6
            table += _query_rows("postgresql", res["rows"], t_api, t_sql)
            pg_size = (res["rows"], size_mb)

        # SQLite: the full build
        with sqlite_registry(tmp, "big") as (reg, path):
            res = build(reg, args.n_sources, args.n_images, args.images_per_call, rng, "sqlite")
            table.append(
                {"stage": "darkroom build (executemany)", "backend": "sqlite", **res, "p95 s": ""}
                | {"ratio": res["rows/s"] / base["sqlite"]}
            )
            size_mb = sum(
                Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
            )
            size_mb /= 1e6
            t_api, t_sql = time_queries(reg, query_ids)
            table += _query_rows("sqlite", res["rows"], t_api, t_sql)
            sqlite_size = (res["rows"], size_mb)

    cols = ["stage", "backend", "rows", "seconds", "p95 s", "peak MB", "rows/s", "ratio"]
    print_table([{c: r.get(c, "") for c in cols} for r in table])
    print(
        f"database size: sqlite {sqlite_size[1]:.0f} MB at {sqlite_size[0]:,} rows "
        f"({sqlite_size[1] * 1e6 / sqlite_size[0]:.0f} B/row); "
        f"postgresql {pg_size[1]:.0f} MB at {pg_size[0]:,} rows ({pg_size[1] * 1e6 / pg_size[0]:.0f} B/row)"
    )
    print(
        f"inserts in calls of {args.images_per_call} images x {args.n_sources} sources; "
        f"queries: {args.queries} random sources, warm, seconds = median; ratio = rows/s over ORM add_all"
    )


def _query_rows(backend: str, n_rows: int, t_api: list[float], t_sql: list[float]) -> list[dict]:
    return [
        {
            "stage": label,
            "backend": backend,
            "rows": n_rows,
            "seconds": statistics.median(t),
            "p95 s": p95(t),
            "peak MB": float("nan"),
            "rows/s": "",
            "ratio": "",
        }
        for label, t in (("lightcurve_rows (1 source)", t_api), ("  bare SQL fetchall", t_sql))
    ]


if __name__ == "__main__":
    main()
