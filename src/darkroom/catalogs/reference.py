"""The standard form of a reference catalog, column mapping, cone selection and proper motion.

Every reader in :mod:`darkroom.catalogs` returns a *reference table*: an astropy
Table whose first columns are

========== ======= ==========================================================
column     unit    meaning
========== ======= ==========================================================
ra_deg     deg     right ascension (ICRS) at ``meta["epoch_jyear"]``
dec_deg    deg     declination (ICRS) at ``meta["epoch_jyear"]``
mag        mag     brightness used to rank stars (NaN when the catalog has none)
pmra_masyr mas/yr  proper motion in RA, times cos(Dec) (0 when unknown)
pmdec_masyr mas/yr proper motion in Dec (0 when unknown)
source_id          identifier in the catalog (a string)
========== ======= ==========================================================

followed by every column of the source table, unchanged. Rows are sorted by
``mag`` (brightest first, NaN last).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.errors import BadInputError

if TYPE_CHECKING:
    import astropy.units as u
    from astropy.table import Table

__all__ = [
    "STANDARD_COLUMNS",
    "CatalogColumns",
    "angular_separation_deg",
    "cone_select",
    "propagate_proper_motion",
    "standardize_catalog",
]

log = logging.getLogger(__name__)

STANDARD_COLUMNS = ("ra_deg", "dec_deg", "mag", "pmra_masyr", "pmdec_masyr", "source_id")


class CatalogColumns(BaseModel):
    """Which columns of a catalog hold what, and in which units."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ra: str = Field("ra", description="right ascension column")
    dec: str = Field("dec", description="declination column")
    angle_unit: Literal["deg", "rad"] = Field(
        "deg", description="unit of ra/dec when the columns carry no unit of their own"
    )
    mag: str | None = Field(None, description="magnitude column used to rank stars [mag]")
    pmra: str | None = Field(
        None, description="proper motion in RA column, mu_alpha* = mu_alpha cos(dec) [mas/yr]"
    )
    pmdec: str | None = Field(None, description="proper motion in Dec column [mas/yr]")
    epoch_jyear: float = Field(
        2000.0, ge=1800, le=2200, description="epoch of the positions [Julian year], e.g. 2016.0 for Gaia DR3"
    )
    epoch_column: str | None = Field(
        None, description="column with a per-row epoch of position [Julian year]; overrides epoch_jyear"
    )
    source_id: str | None = Field(None, description="identifier column")


def _values(table: Table, name: str, *, default_unit: u.UnitBase | None = None) -> np.ndarray:
    """Column as float64 with masked entries as NaN, converted from its unit to ``default_unit``."""
    import astropy.units as u

    col = table[name]
    arr = np.ma.filled(np.ma.asarray(col).astype(np.float64), np.nan)
    unit = getattr(col, "unit", None)
    if default_unit is not None and unit is not None:
        try:
            arr = (arr * u.Unit(unit)).to_value(default_unit)
        except u.UnitConversionError as exc:
            raise BadInputError(
                f"column {name!r} has unit {unit}, expected one convertible to {default_unit}"
            ) from exc
    return np.asarray(arr, dtype=np.float64)


def _require(table: Table, name: str | None, what: str) -> None:
    if name is not None and name not in table.colnames:
        raise BadInputError(
            f"catalog has no {what} column {name!r} (columns: {', '.join(table.colnames[:20])}); "
            "set CatalogColumns accordingly"
        )


def standardize_catalog(
    table: Table, *, columns: CatalogColumns, epoch_jyear: float | None = None, name: str = ""
) -> Table:
    """Reference table (see module doc) from any table, with positions moved to ``epoch_jyear``.

    Parameters
    ----------
    table
        The catalog as read.
    columns
        Which columns hold RA, Dec, magnitude, proper motion and their epoch.
    epoch_jyear
        Epoch of the frame [Julian year, e.g. ``Time(...).jyear``]; positions are
        propagated by their proper motion to it. None keeps the catalog epoch.
    name
        Catalog name, stored in ``meta["catalog"]``.
    """
    import astropy.units as u
    from astropy.table import Column, Table

    for what, col in (
        ("ra", columns.ra),
        ("dec", columns.dec),
        ("mag", columns.mag),
        ("pmra", columns.pmra),
        ("pmdec", columns.pmdec),
        ("epoch", columns.epoch_column),
        ("source_id", columns.source_id),
    ):
        _require(table, col, what)
    default = u.deg if columns.angle_unit == "deg" else u.rad
    ra = _values(table, columns.ra)
    dec = _values(table, columns.dec)
    ra_unit = getattr(table[columns.ra], "unit", None)
    dec_unit = getattr(table[columns.dec], "unit", None)
    ra = (ra * (u.Unit(ra_unit) if ra_unit is not None else default)).to_value(u.deg)
    dec = (dec * (u.Unit(dec_unit) if dec_unit is not None else default)).to_value(u.deg)
    good = np.isfinite(ra) & np.isfinite(dec)
    if np.any(np.abs(dec[good]) > 90.0):
        raise BadInputError(
            f"declinations beyond +-90 deg in column {columns.dec!r}: are the angles in radians? "
            "set CatalogColumns.angle_unit"
        )
    n = len(table)
    mag = _values(table, columns.mag) if columns.mag else np.full(n, np.nan)
    pmra = _values(table, columns.pmra, default_unit=u.mas / u.yr) if columns.pmra else np.zeros(n)
    pmdec = _values(table, columns.pmdec, default_unit=u.mas / u.yr) if columns.pmdec else np.zeros(n)
    pmra = np.where(np.isfinite(pmra), pmra, 0.0)
    pmdec = np.where(np.isfinite(pmdec), pmdec, 0.0)
    epoch = _values(table, columns.epoch_column) if columns.epoch_column else np.full(n, columns.epoch_jyear)
    epoch = np.where(np.isfinite(epoch), epoch, columns.epoch_jyear)
    if columns.source_id:
        ids = np.array(
            [str(v) for v in np.ma.filled(np.ma.asarray(table[columns.source_id]).astype(str), "")]
        )
    else:
        ids = np.array([str(i) for i in range(n)])

    out = Table()
    out["ra_deg"] = Column(
        np.mod(ra, 360.0), unit=u.deg, description="right ascension (ICRS) at meta['epoch_jyear']"
    )
    out["dec_deg"] = Column(dec, unit=u.deg, description="declination (ICRS) at meta['epoch_jyear']")
    out["mag"] = Column(mag, unit=u.mag, description=f"ranking magnitude ({columns.mag or 'none'})")
    out["pmra_masyr"] = Column(pmra, unit=u.mas / u.yr, description="proper motion in RA times cos(Dec)")
    out["pmdec_masyr"] = Column(pmdec, unit=u.mas / u.yr, description="proper motion in Dec")
    out["source_id"] = Column(ids, description="identifier in the catalog")
    for col in table.colnames:
        if col not in out.colnames:
            out[col] = table[col]
    out = out[good]
    target = float(epoch_jyear) if epoch_jyear is not None else None
    out.meta.update(
        {
            "catalog": name,
            "epoch_jyear": target if target is not None else float(columns.epoch_jyear),
        }
    )
    if target is not None:
        propagate_proper_motion(out, from_epoch_jyear=epoch[good], to_epoch_jyear=target)
    order = np.argsort(np.where(np.isfinite(out["mag"]), out["mag"], np.inf), kind="stable")
    return out[order]


def propagate_proper_motion(
    table: Table, *, from_epoch_jyear: float | np.ndarray, to_epoch_jyear: float
) -> Table:
    """Move ``ra_deg``/``dec_deg`` of a reference table by proper motion, in place.

    Linear motion on the sky: dDec = mu_delta dt, dRA = mu_alpha* dt / cos(Dec); the
    neglected terms are (mu dt)^2 tan(Dec), below 1e-5 arcsec for 1 arcsec of motion
    away from the poles. Sets ``meta["epoch_jyear"]``.
    """
    import astropy.units as u
    from astropy.table import Column

    dt = to_epoch_jyear - np.asarray(from_epoch_jyear, dtype=float)
    mas_to_deg = 1.0 / 3.6e6
    dec = np.asarray(table["dec_deg"], dtype=float)
    d_dec = np.asarray(table["pmdec_masyr"], dtype=float) * dt * mas_to_deg
    mid_dec = np.radians(dec + 0.5 * d_dec)
    d_ra = np.asarray(table["pmra_masyr"], dtype=float) * dt * mas_to_deg / np.maximum(np.cos(mid_dec), 1e-6)
    table["ra_deg"] = Column(
        np.mod(np.asarray(table["ra_deg"], dtype=float) + d_ra, 360.0),
        unit=u.deg,
        description=table["ra_deg"].description,
    )
    table["dec_deg"] = Column(
        np.clip(dec + d_dec, -90.0, 90.0), unit=u.deg, description=table["dec_deg"].description
    )
    table.meta["epoch_jyear"] = float(to_epoch_jyear)
    return table


def angular_separation_deg(ra1_deg, dec1_deg, ra2_deg, dec2_deg) -> np.ndarray:
    """Great-circle distance [deg] (Vincenty formula, exact at all distances)."""
    ra1, dec1, ra2, dec2 = (
        np.radians(np.asarray(v, dtype=float)) for v in (ra1_deg, dec1_deg, ra2_deg, dec2_deg)
    )
    dra = ra2 - ra1
    num = np.hypot(
        np.cos(dec2) * np.sin(dra), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra)
    )
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


def cone_select(table: Table, *, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
    """Rows of a reference table within ``radius_deg`` of (ra_deg, dec_deg) [deg]."""
    if not 0 < radius_deg <= 180:
        raise BadInputError(f"cone radius must be in (0, 180] deg, got {radius_deg}")
    sep = angular_separation_deg(ra_deg, dec_deg, table["ra_deg"], table["dec_deg"])
    return table[sep <= radius_deg]
