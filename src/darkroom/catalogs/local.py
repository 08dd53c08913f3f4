"""Reference catalogs from local files: one file, or a folder of sharded files.

Formats: FITS (binary table), ECSV, CSV and Parquet, chosen by file extension
(``.fits``, ``.fit``, ``.fits.gz``, ``.ecsv``, ``.csv``, ``.parquet``/``.pq``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from darkroom.catalogs.reference import CatalogColumns, cone_select, standardize_catalog
from darkroom.errors import BadInputError
from darkroom.io.tables import read_parquet

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["CATALOG_SUFFIXES", "read_catalog_file", "read_catalog_shards", "read_table"]

log = logging.getLogger(__name__)

CATALOG_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts", ".ecsv", ".csv", ".parquet", ".pq")


def _format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")):
        return "fits"
    if name.endswith(".ecsv"):
        return "ascii.ecsv"
    if name.endswith(".csv"):
        return "ascii.csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise BadInputError(f"unknown catalog format of {path.name}; use one of {', '.join(CATALOG_SUFFIXES)}")


def _read_parquet(path: Path) -> Table:
    """Parquet through pyarrow (astropy's reader wants pandas), keeping astropy's column units
    and descriptions (not the table meta: see :func:`darkroom.io.tables.read_parquet_meta`)."""
    return read_parquet(path)


def read_table(path: str | Path) -> Table:
    """The table stored in a FITS, ECSV, CSV or Parquet file, as astropy reads it."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"reference catalog file not found: {path}")
    try:
        fmt = _format(path)
        return _read_parquet(path) if fmt == "parquet" else Table.read(path, format=fmt)
    except BadInputError:
        raise
    except Exception as exc:  # astropy raises many types for unreadable files
        raise BadInputError(f"cannot read catalog {path.name}: {exc}") from exc


def read_catalog_file(
    path: str | Path,
    *,
    columns: CatalogColumns,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    radius_deg: float | None = None,
    epoch_jyear: float | None = None,
) -> Table:
    """Reference table (see :mod:`darkroom.catalogs.reference`) from one local file.

    With ``ra_deg``, ``dec_deg`` and ``radius_deg`` [deg] only the stars in that cone
    are kept (the cone is applied at the catalog epoch; give it a margin for fast
    movers). ``epoch_jyear`` propagates positions by proper motion.
    """
    path = Path(path)
    table = standardize_catalog(read_table(path), columns=columns, epoch_jyear=epoch_jyear, name=path.name)
    if radius_deg is not None:
        if ra_deg is None or dec_deg is None:
            raise BadInputError("a cone needs ra_deg, dec_deg and radius_deg")
        table = cone_select(table, ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg)
    return table


def read_catalog_shards(
    folder: str | Path,
    *,
    columns: CatalogColumns,
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    epoch_jyear: float | None = None,
    pattern: str = "*",
) -> Table:
    """Reference table of the stars within a cone, gathered from a folder of catalog shards.

    Every file in ``folder`` matching ``pattern`` with a catalog suffix is a shard (any
    sky partition: declination bands, HEALPix cells, ...). Shards whose stars all lie
    outside the cone contribute nothing. Rows are sorted by magnitude.
    """
    from astropy.table import vstack

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"catalog shard folder not found: {folder}")
    files = sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.name.lower().endswith(CATALOG_SUFFIXES)
    )
    if not files:
        raise BadInputError(
            f"no catalog files ({', '.join(CATALOG_SUFFIXES)}) matching {pattern!r} in {folder}"
        )
    parts = []
    for path in files:
        part = read_catalog_file(
            path,
            columns=columns,
            ra_deg=ra_deg,
            dec_deg=dec_deg,
            radius_deg=radius_deg,
            epoch_jyear=epoch_jyear,
        )
        log.debug("shard %s: %d stars in the cone", path.name, len(part))
        if len(part):
            parts.append(part)
    if not parts:
        empty = read_catalog_file(files[0], columns=columns, epoch_jyear=epoch_jyear)[:0]
        empty.meta["catalog"] = folder.name
        return empty
    table = vstack(parts, metadata_conflicts="silent")
    table.meta.update({"catalog": folder.name, "epoch_jyear": parts[0].meta["epoch_jyear"]})
    order = np.argsort(np.where(np.isfinite(table["mag"]), table["mag"], np.inf), kind="stable")
    return table[order]
