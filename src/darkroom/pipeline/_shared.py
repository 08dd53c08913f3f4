"""Inputs shared by the associate, photometry and lightcurves stages: the reference catalogue's cone
(cached per worker), its photometric columns and transforms from product rows."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from darkroom.astrom import AffineTransform
from darkroom.catalogs import (
    ReferenceCatalogSource,
    load_reference_catalog,
    resolve_catalog_source,
)
from darkroom.errors import BadInputError
from darkroom.phot.settings import MeasureSettings

if TYPE_CHECKING:
    from astropy.table import Table

# Imported by the stage modules, which every `darkroom run` imports: darkroom.phot.calibrate
# (scipy, astropy.coordinates) loads when a unit looks up its reference columns.

__all__ = ["affine_from_dict", "load_reference", "photometric_reference"]


def affine_from_dict(d: dict[str, Any] | None) -> AffineTransform | None:
    if not d:
        return None
    return AffineTransform(np.asarray(d["matrix"], float), np.asarray(d["offset"], float))


@lru_cache(maxsize=8)
def _catalog_cached(source_json: str, ra: float, dec: float, radius: float, epoch: float | None, cache: str):
    from pydantic import TypeAdapter

    source = TypeAdapter(ReferenceCatalogSource).validate_json(source_json)
    return load_reference_catalog(
        source, ra_deg=ra, dec_deg=dec, radius_deg=radius, epoch_jyear=epoch, cache_dir=cache
    )


def load_reference(root: Path, source, *, ra: float, dec: float, radius: float, mjd: float | None) -> Table:
    """Reference stars in a cone (cached per worker; the cone is rounded so frames share it)."""
    from astropy.time import Time

    source = resolve_catalog_source(source, root)
    epoch = None if mjd is None else round(float(Time(mjd, format="mjd").jyear), 1)
    return _catalog_cached(
        source.model_dump_json(),
        round(ra, 2),
        round(dec, 2),
        round(radius + 0.02, 2),
        epoch,
        str(root / "catalogs" / "cache"),
    )


_BANDS = {"u", "g", "r", "i", "z", "y", "b", "v", "j", "h", "k", "ks", "bp", "rp", "rc", "ic"}


def reference_columns(columns: list[str], cfg: MeasureSettings, filter_name: str | None):
    """(magnitude column, error column, how) of the reference catalogue for a frame's filter;
    the magnitude column is None (and ``how`` the reason) when none fits the filter."""
    from darkroom.phot.calibrate import _band_key, ref_columns_for_filter

    mag, err, how = ref_columns_for_filter(filter_name, columns, mapping=cfg.ref_mag_columns)
    if mag is not None:
        if mag == cfg.ref_mag_column and cfg.ref_mag_err_column:
            err = cfg.ref_mag_err_column
        return mag, err, how
    legacy = cfg.ref_mag_column
    if cfg.ref_mag_columns and filter_name:
        return None, None, how  # the bands are mapped: an unmapped filter has no column
    if legacy in columns and (not filter_name or _band_key(legacy) not in _BANDS):
        return legacy, cfg.ref_mag_err_column, f"ref_mag_column {legacy!r}"
    return None, None, how


def photometric_reference(table: Table, cfg: MeasureSettings, filter_name: str | None = None):
    """The columns calibrate_photometry reads (ra, dec, mag, mag_err, colour) and how the magnitude
    column was chosen; (None, reason) when the catalogue has no column for the frame's filter."""
    from astropy.table import Table

    mag_col, err_col, how = reference_columns(list(table.colnames), cfg, filter_name)
    if mag_col is None:
        return None, how
    for col in (err_col, *(cfg.ref_colour_columns or ())):
        if col is not None and col not in table.colnames:
            raise BadInputError(
                f"reference catalog has no column {col!r} (columns: {', '.join(table.colnames[:20])}); "
                "set photometry.measure.ref_mag_column / ref_colour_columns"
            )
    out = Table()
    out["ra"] = np.asarray(table["ra_deg"], float)
    out["dec"] = np.asarray(table["dec_deg"], float)
    out["mag"] = np.ma.filled(np.ma.asarray(table[mag_col], float), np.nan)
    if err_col:
        out["mag_err"] = np.ma.filled(np.ma.asarray(table[err_col], float), np.nan)
    if cfg.ref_colour_columns:
        a, b = cfg.ref_colour_columns
        out["colour"] = np.ma.filled(np.ma.asarray(table[a], float), np.nan) - np.ma.filled(
            np.ma.asarray(table[b], float), np.nan
        )
    return out, how
