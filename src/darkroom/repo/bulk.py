"""Measurements in the registry: bulk inserts and the light-curve query.

A photometry unit produces one row per (source, image); a night of a crowded
field produces millions. The ORM (one Python object per row) is far too slow for
that, so this module writes straight through the DBAPI connection:

- SQLite: ``executemany`` of a multi-row ``INSERT ... VALUES (...), (...)`` inside
  one transaction, with the rows converted from numpy by one object-array cast
  (no per-row Python loop) and a larger page cache for the duration of the call;
- PostgreSQL: ``COPY measurement (...) FROM STDIN (FORMAT BINARY)`` through
  psycopg 3's ``cursor.copy``.

Rows are sorted by ``(source_id, image_id)`` before they are written: both
indexes that lead with ``source_id`` then grow by appending runs instead of at
random places, and the rows of one source sit together in the table, which is what
the light-curve query reads.

Input columns (an astropy Table or a mapping of names to arrays; a scalar is
broadcast to every row; other columns are ignored):

=============  ========  ==========================================================
column         required  meaning
=============  ========  ==========================================================
source_id      yes       ``source.id`` (integer)
image_id       yes       ``image.id`` (integer)
provenance_id  yes       provenance of the photometry run (str, at most 32 chars)
x, y           yes       position in the image [pixel], 0-based, centre of the
                         first pixel at (0, 0) (the sep convention); finite
ra_deg         no        right ascension [deg]
dec_deg        no        declination [deg]
flux           no        flux [adu] in the best aperture
flux_err       no        its 1-sigma uncertainty [adu]
mag, mag_err   no        calibrated magnitude and its uncertainty [mag]
flags          no        :class:`~darkroom.phot.flags.PhotFlag` bits (default 0)
forced         no        forced photometry at a known position (default False)
mjd_mid        no        mid-exposure time, MJD (UTC) [d]
=============  ========  ==========================================================

NaN, masked entries and absent optional columns are stored as SQL ``NULL``; the
light-curve table gives them back as NaN. The natural key ``(source_id,
image_id, provenance_id)`` is unique: inserting a row twice raises
:class:`sqlalchemy.exc.IntegrityError` and writes nothing. Re-running a
photometry unit goes through :func:`replace_measurements_for_images`, which
deletes that unit's rows and inserts the new ones in one transaction.

The same rows are plain SQL; one light curve is::

    SELECT m.*, i.mjd_mid, i.filter FROM measurement m JOIN image i ON i.id = m.image_id
    WHERE m.source_id = :source_id ORDER BY i.mjd_mid
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Select, bindparam, case, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from darkroom.errors import BadInputError
from darkroom.repo.models import Image, Measurement
from darkroom.repo.registry import Registry

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "LIGHTCURVE_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "ReplaceCounts",
    "insert_measurements",
    "lightcurve_rows",
    "replace_measurements_for_images",
]

log = logging.getLogger(__name__)

_ID_COLUMNS = ("source_id", "image_id")
_REQUIRED_FLOAT = ("x", "y")
_NULLABLE_FLOAT = ("ra_deg", "dec_deg", "flux", "flux_err", "mag", "mag_err", "mjd_mid")

#: Columns written to the ``measurement`` table, in the order of the INSERT / COPY.
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "source_id",
    "image_id",
    "provenance_id",
    "x",
    "y",
    "ra_deg",
    "dec_deg",
    "flux",
    "flux_err",
    "mag",
    "mag_err",
    "flags",
    "forced",
    "mjd_mid",
)

#: Columns of :func:`lightcurve_rows`: name -> (unit, description).
LIGHTCURVE_COLUMNS: dict[str, tuple[str | None, str]] = {
    "image_id": (None, "image.id of the measurement"),
    "mjd_mid": ("d", "mid-exposure time of the image, MJD (UTC)"),
    "filter": (None, "filter of the image ('' when unknown)"),
    "source_id": (None, "source.id"),
    "provenance_id": (None, "provenance of the photometry run"),
    "x": ("pix", "x in the image, 0-based pixel centres"),
    "y": ("pix", "y in the image, 0-based pixel centres"),
    "ra_deg": ("deg", "right ascension"),
    "dec_deg": ("deg", "declination"),
    "flux": ("adu", "flux in the best aperture"),
    "flux_err": ("adu", "1-sigma uncertainty of flux"),
    "mag": ("mag", "calibrated magnitude"),
    "mag_err": ("mag", "1-sigma uncertainty of mag"),
    "flags": (None, "PhotFlag bits"),
    "forced": (None, "forced photometry at a known position"),
}

# SQLite: rows per INSERT statement (14 parameters each, far below SQLite's 32766
# limit; 64-row statements measured 1.3-1.5x faster than one row per statement) and
# the page cache given to the connection during a bulk call [KiB] (the indexes of a
# large table do not fit the 2 MiB default; measured +10 % at 10^6 rows, a larger
# cache gained nothing more at 3x10^6). The previous cache size is restored.
_SQLITE_ROWS_PER_STATEMENT = 64
_SQLITE_BULK_CACHE_KIB = 131072
# How many image ids one DELETE names (bounded parameter lists on both backends).
_DELETE_BATCH = 500
_PG_COPY_TYPES = ("int4", "int4", "varchar", *("float8",) * 8, "int4", "bool", "float8")

Target = Registry | Connection | Session


@dataclass(frozen=True)
class ReplaceCounts:
    """What :func:`replace_measurements_for_images` did."""

    n_deleted: int
    n_inserted: int


# -- public API -------------------------------------------------------------------
def insert_measurements(target: Target, table_or_columns: Table | Mapping[str, Any]) -> int:
    """Insert measurement rows in bulk, in one transaction.

    Parameters
    ----------
    target : Registry, sqlalchemy Connection or Session
        A :class:`~darkroom.repo.registry.Registry` (the rows are committed when the
        call returns), or an open Connection / Session, whose transaction the rows
        join (the caller commits, e.g. together with the task that made them).
    table_or_columns : astropy Table or mapping of name -> array
        The columns listed in the module docstring; units as named there.

    Returns
    -------
    int
        The number of rows inserted.

    Raises
    ------
    BadInputError
        A required column is missing, ids are not integers, ``x``/``y`` are not
        finite, or the columns differ in length.
    sqlalchemy.exc.IntegrityError
        A ``(source_id, image_id, provenance_id)`` already in the registry (or twice
        in the input), or an id with no ``source`` / ``image`` row; nothing is written.
    """
    cols = _normalise(table_or_columns)
    with _transaction(target) as conn:
        return _write(conn, cols)


def replace_measurements_for_images(
    target: Target,
    image_ids: Iterable[int],
    table_or_columns: Table | Mapping[str, Any],
    *,
    provenance_id: str,
) -> ReplaceCounts:
    """Replace the measurements of some images under one provenance, atomically.

    Deletes every row whose ``image_id`` is in ``image_ids`` and whose
    ``provenance_id`` equals ``provenance_id``, then inserts ``table_or_columns``,
    in one transaction: a photometry unit re-run after a crash (or on purpose)
    leaves exactly its new rows, never duplicates and never a half-written set.
    Rows of other images or other provenances are untouched.

    Parameters
    ----------
    target : Registry, sqlalchemy Connection or Session
        As in :func:`insert_measurements`.
    image_ids : iterable of int
        The images the unit measured (rows of these images are replaced, also when
        the new table has no row for one of them).
    table_or_columns : astropy Table or mapping of name -> array
        The new rows; ``provenance_id`` may be left out (it is then filled in).
    provenance_id : str
        The provenance of the photometry run.

    Raises
    ------
    BadInputError
        A row names an image outside ``image_ids`` or another provenance, or the
        columns are invalid (see :func:`insert_measurements`).
    """
    ids = sorted({int(i) for i in image_ids})
    source = dict(_as_mapping(table_or_columns))
    source.setdefault("provenance_id", provenance_id)
    cols = _normalise(source)
    if cols["n"] and not np.all(cols["provenance_id"] == provenance_id):
        other = sorted(set(cols["provenance_id"].tolist()) - {provenance_id})
        raise BadInputError(f"rows carry provenance_id {other[:3]}, expected only {provenance_id!r}")
    stray = np.setdiff1d(cols["image_id"], np.asarray(ids, dtype=np.int64))
    if stray.size:
        raise BadInputError(
            f"{stray.size} image id(s) in the rows are not among the images replaced, e.g. {stray[:5].tolist()}"
        )
    table = Measurement.__table__
    n_deleted = 0
    with _transaction(target) as conn:
        for start in range(0, len(ids), _DELETE_BATCH):
            batch = ids[start : start + _DELETE_BATCH]
            result = conn.execute(
                table.delete().where(table.c.provenance_id == provenance_id, table.c.image_id.in_(batch))
            )
            n_deleted += max(result.rowcount, 0)
        n_inserted = _write(conn, cols)
    log.info(
        "replaced measurements of %d image(s), provenance %s: %d deleted, %d inserted",
        len(ids),
        provenance_id,
        n_deleted,
        n_inserted,
    )
    return ReplaceCounts(n_deleted=n_deleted, n_inserted=n_inserted)


def lightcurve_rows(target: Target, source_id: int, *, provenance_id: str | None = None) -> Table:
    """All measurements of one source, with their image's time and filter, in time order.

    One query, answered from the index on ``measurement.source_id`` plus primary-key
    lookups in ``image``.

    Parameters
    ----------
    target : Registry, sqlalchemy Connection or Session
        Where to read.
    source_id : int
        ``source.id``.
    provenance_id : str, optional
        Only rows of this photometry provenance (default: all).

    Returns
    -------
    astropy.table.Table
        Columns of :data:`LIGHTCURVE_COLUMNS` (units and descriptions set), one row
        per measurement, sorted by ``mjd_mid`` (the image's mid-exposure MJD, UTC;
        the measurement's own ``mjd_mid`` when the image has none; rows without a
        time last), then ``image_id``. SQL ``NULL`` comes back as NaN in float
        columns. No row: an empty table with the same columns.
    """
    params: dict[str, Any] = {"source_id": int(source_id)}
    if provenance_id is not None:
        params["provenance_id"] = provenance_id
    stmt = _LIGHTCURVE_SQL[provenance_id is not None]
    with _connection(target) as conn:
        rows = conn.execute(stmt, params).all()
    return _lightcurve_table(rows)


def _lightcurve_statements() -> tuple[Select, Select]:
    """The light-curve SELECT without and with the provenance condition (built once)."""
    m = Measurement.__table__
    i = Image.__table__
    mjd = func.coalesce(i.c.mjd_mid, m.c.mjd_mid)
    columns = {name: m.c[name] for name in LIGHTCURVE_COLUMNS if name in m.c}
    columns["mjd_mid"] = mjd.label("mjd_mid")
    columns["filter"] = i.c.filter
    stmt = (
        select(*(columns[name] for name in LIGHTCURVE_COLUMNS))
        .join(i, i.c.id == m.c.image_id)
        .where(m.c.source_id == bindparam("source_id"))
        .order_by(case((mjd.is_(None), 1), else_=0), mjd, m.c.image_id, m.c.provenance_id)
    )
    return stmt, stmt.where(m.c.provenance_id == bindparam("provenance_id"))


_LIGHTCURVE_SQL = _lightcurve_statements()


# -- input normalisation ------------------------------------------------------------
def _normalise(table_or_columns: Table | Mapping[str, Any]) -> dict[str, Any]:
    """Validated numpy columns (NaN marks NULL in float columns), sorted by source, image."""
    source = _as_mapping(table_or_columns)
    missing = [c for c in (*_ID_COLUMNS, "provenance_id", *_REQUIRED_FLOAT) if c not in source]
    if missing:
        raise BadInputError(f"measurements lack required column(s) {missing}")
    n = _row_count(source)
    out: dict[str, Any] = {"n": n}
    for name in _ID_COLUMNS:
        out[name] = _int_column(source[name], name, n)
    out["provenance_id"] = _str_column(source["provenance_id"], "provenance_id", n, max_len=32)
    for name in _REQUIRED_FLOAT:
        values = _float_column(source[name], name, n)
        if not np.all(np.isfinite(values)):
            raise BadInputError(
                f"column {name!r} [pixel] must be finite; {np.sum(~np.isfinite(values))} row(s) are not"
            )
        out[name] = values
    for name in _NULLABLE_FLOAT:
        out[name] = _float_column(source[name], name, n) if name in source else np.full(n, np.nan)
    out["flags"] = _int_column(source["flags"], "flags", n) if "flags" in source else np.zeros(n, np.int64)
    out["forced"] = _bool_column(source["forced"], "forced", n) if "forced" in source else np.zeros(n, bool)
    if n > 1:
        order = np.lexsort((out["image_id"], out["source_id"]))
        if not np.all(order[1:] > order[:-1]):
            for name in MEASUREMENT_COLUMNS:
                out[name] = out[name][order]
    return out


def _as_mapping(table_or_columns: Table | Mapping[str, Any]) -> Mapping[str, Any]:
    from astropy.table import Table

    if isinstance(table_or_columns, Table):
        return {name: table_or_columns[name] for name in table_or_columns.colnames}
    if isinstance(table_or_columns, Mapping):
        return table_or_columns
    raise BadInputError(
        f"measurements must be an astropy Table or a mapping of columns, got {type(table_or_columns).__name__}"
    )


def _row_count(source: Mapping[str, Any]) -> int:
    lengths = {name: np.shape(source[name])[0] for name in source if np.ndim(source[name]) > 0}
    if not lengths:
        return 0
    values = set(lengths.values())
    if len(values) > 1:
        raise BadInputError(f"measurement columns differ in length: {lengths}")
    return values.pop()


def _values(col: Any, name: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The column as an array of length ``n`` (scalars broadcast) and its mask (or None)."""
    mask = None
    if isinstance(col, np.ma.MaskedArray):
        m = np.ma.getmaskarray(col)
        mask = m if m.any() else None
        col = col.data
    arr = np.asarray(col)
    if arr.ndim == 0:
        arr = np.full(n, arr[()])
    if arr.ndim != 1:
        raise BadInputError(f"column {name!r} must be one-dimensional, got shape {arr.shape}")
    return arr, mask


def _int_column(col: Any, name: str, n: int) -> np.ndarray:
    arr, mask = _values(col, name, n)
    if mask is not None:
        raise BadInputError(f"column {name!r} has {int(mask.sum())} masked row(s); it cannot be NULL")
    if arr.dtype.kind not in "iu":
        raise BadInputError(f"column {name!r} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _float_column(col: Any, name: str, n: int) -> np.ndarray:
    arr, mask = _values(col, name, n)
    if arr.dtype.kind not in "fiu":
        raise BadInputError(f"column {name!r} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)  # a copy: the caller's array is never modified
    if mask is not None:
        arr[mask] = np.nan
    return arr


def _bool_column(col: Any, name: str, n: int) -> np.ndarray:
    arr, mask = _values(col, name, n)
    if mask is not None:
        raise BadInputError(f"column {name!r} has {int(mask.sum())} masked row(s); it cannot be NULL")
    if arr.dtype.kind not in "biu":
        raise BadInputError(f"column {name!r} must hold booleans, got dtype {arr.dtype}")
    return arr.astype(bool, copy=False)


def _str_column(col: Any, name: str, n: int, *, max_len: int) -> np.ndarray:
    arr, mask = _values(col, name, n)
    if mask is not None:
        raise BadInputError(f"column {name!r} has {int(mask.sum())} masked row(s); it cannot be NULL")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind != "U":
        raise BadInputError(f"column {name!r} must hold strings, got dtype {arr.dtype}")
    if arr.dtype.itemsize // 4 > max_len and n and max(len(s) for s in np.unique(arr)) > max_len:
        raise BadInputError(f"column {name!r} holds strings longer than {max_len} characters")
    return arr


def _object_rows(cols: dict[str, Any]) -> np.ndarray:
    """An ``(n, 14)`` object array of Python scalars in :data:`MEASUREMENT_COLUMNS` order, None for NULL.

    One numpy cast per column turns float64/int64/bool/str into Python float, int,
    bool, str (exact values); no Python loop over rows.
    """
    rows = np.empty((cols["n"], len(MEASUREMENT_COLUMNS)), dtype=object)
    for j, name in enumerate(MEASUREMENT_COLUMNS):
        rows[:, j] = cols[name]
        if name in _NULLABLE_FLOAT:
            null = np.isnan(cols[name])
            if null.any():
                rows[null, j] = None
    return rows


# -- writing ------------------------------------------------------------------------
@contextlib.contextmanager
def _transaction(target: Target) -> Iterator[Connection]:
    """A Connection inside a transaction: our own for a Registry, the caller's otherwise."""
    if isinstance(target, Registry):
        with target.engine.begin() as conn:
            yield conn
    elif isinstance(target, Session):
        yield target.connection()
    elif isinstance(target, Connection):
        yield target
    else:
        raise BadInputError(f"expected a Registry, Connection or Session, got {type(target).__name__}")


@contextlib.contextmanager
def _connection(target: Target) -> Iterator[Connection]:
    if isinstance(target, Registry):
        with target.engine.connect() as conn:
            yield conn
    else:
        with _transaction(target) as conn:
            yield conn


def _write(conn: Connection, cols: dict[str, Any]) -> int:
    n = cols["n"]
    if n == 0:
        return 0
    t0 = time.perf_counter()
    rows = _object_rows(cols)
    dbapi = conn.connection.dbapi_connection
    backend = conn.dialect.name
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        if backend == "sqlite":
            _sqlite_insert(dbapi, rows)
        elif backend == "postgresql":
            _postgres_copy(dbapi, rows)
        else:
            _generic_insert(conn, rows)
    except driver_error as err:
        # The same exception classes as any SQLAlchemy statement (IntegrityError, ...).
        raise DBAPIError.instance(
            f"bulk insert of {n} measurement rows", None, err, driver_error, dialect=conn.dialect
        ) from err
    dt = time.perf_counter() - t0
    log.debug("inserted %d measurements on %s in %.3f s (%.0f rows/s)", n, backend, dt, n / max(dt, 1e-9))
    return n


def _sqlite_insert(dbapi: Any, rows: np.ndarray) -> None:
    n, n_cols = rows.shape
    k = _SQLITE_ROWS_PER_STATEMENT
    names = ", ".join(MEASUREMENT_COLUMNS)
    one = "(" + ", ".join("?" * n_cols) + ")"
    head = f"INSERT INTO {Measurement.__tablename__} ({names}) VALUES "
    n_full = (n // k) * k
    cur = dbapi.cursor()
    try:
        previous_cache = cur.execute("PRAGMA cache_size").fetchone()[0]
        cur.execute(f"PRAGMA cache_size = -{_SQLITE_BULK_CACHE_KIB}")
        try:
            if n_full:
                cur.executemany(head + ", ".join([one] * k), rows[:n_full].reshape(-1, n_cols * k).tolist())
            if n_full < n:
                cur.executemany(head + one, rows[n_full:].tolist())
        finally:
            cur.execute(f"PRAGMA cache_size = {int(previous_cache)}")
    finally:
        cur.close()


def _postgres_copy(dbapi: Any, rows: np.ndarray) -> None:
    names = ", ".join(MEASUREMENT_COLUMNS)
    with (
        dbapi.cursor() as cur,
        cur.copy(f"COPY {Measurement.__tablename__} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(list(_PG_COPY_TYPES))
        for row in rows.tolist():
            copy.write_row(row)


def _generic_insert(conn: Connection, rows: np.ndarray) -> None:
    """Other SQLAlchemy backends: Core executemany (correct, not tuned)."""
    conn.execute(
        Measurement.__table__.insert(),
        [dict(zip(MEASUREMENT_COLUMNS, r, strict=True)) for r in rows.tolist()],
    )


# -- reading ------------------------------------------------------------------------
def _lightcurve_table(rows: list[Any]) -> Table:
    from astropy.table import Table

    names = list(LIGHTCURVE_COLUMNS)
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    data: dict[str, np.ndarray] = {}
    for name, values in zip(names, columns, strict=True):
        if name in ("image_id", "source_id", "flags"):
            data[name] = np.array(values, dtype=np.int64)
        elif name == "forced":
            data[name] = np.array(values, dtype=bool)
        elif name in ("filter", "provenance_id"):
            data[name] = np.array(["" if v is None else v for v in values], dtype=str)
        else:
            data[name] = np.array(values, dtype=np.float64)  # None (SQL NULL) -> NaN
    table = Table(data)
    for name, (unit, description) in LIGHTCURVE_COLUMNS.items():
        table[name].unit = unit
        table[name].description = description
    return table
