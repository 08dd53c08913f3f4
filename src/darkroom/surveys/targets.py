"""Target catalogues: read a table of objects to follow, map its columns, move positions by proper motion.

A *target table* is an astropy Table with the columns

============== ======= ==============================================================
column         unit    meaning
============== ======= ==============================================================
name                   identifier, unique within the catalogue
ra_deg         deg     right ascension (ICRS) at ``epoch_jyear``
dec_deg        deg     declination (ICRS) at ``epoch_jyear``
epoch_jyear    yr      Julian year of the position (NaN: unknown, no motion applied)
pmra_masyr     mas/yr  proper motion in RA times cos(Dec) (0 when unknown)
pmdec_masyr    mas/yr  proper motion in Dec (0 when unknown)
parallax_mas   mas     parallax (NaN when unknown)
mag_<band>     mag     one column per mapped magnitude (NaN when unknown)
============== ======= ==============================================================

Files: CSV, ECSV, FITS, Parquet and HDF5, chosen by the suffix. The default catalogue
``wd`` (Gentile Fusillo et al. 2021, Gaia EDR3 white dwarfs, VizieR J/MNRAS/508/3877) is
fetched through :mod:`darkroom.catalogs.online` with its on-disk cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from darkroom.catalogs.local import read_table
from darkroom.catalogs.online import VIZIER_URL, OnlineCatalogConfig, query_table
from darkroom.catalogs.reference import CatalogColumns
from darkroom.errors import BadInputError

if TYPE_CHECKING:
    import astropy.units as u
    from astropy.table import Table

__all__ = [
    "DEFAULT_CATALOGS",
    "TargetColumns",
    "default_catalog",
    "fetch_default_catalog",
    "parse_columns",
    "propagate_space_motion",
    "read_target_file",
    "standardize_targets",
    "targets_at_epoch",
    "wd_gf21",
]

log = logging.getLogger(__name__)

_MAS_TO_RAD = np.pi / (180.0 * 3.6e6)


class TargetColumns(BaseModel):
    """Which columns of a target file hold what. Optional columns left as None are looked up
    under their default name and used when present."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(
        None, description="identifier column; None: 'name' if present, else the row number"
    )
    ra: str = Field("ra", description="right ascension column [deg unless the column has a unit]")
    dec: str = Field("dec", description="declination column [deg unless the column has a unit]")
    epoch: str | None = Field(None, description="column with the epoch of each position [Julian year]")
    epoch_jyear: float | None = Field(
        None, ge=1800, le=2200, description="epoch of all positions [Julian year] when no epoch column"
    )
    pmra: str | None = Field(None, description="proper motion in RA times cos(Dec) column [mas/yr]")
    pmdec: str | None = Field(None, description="proper motion in Dec column [mas/yr]")
    parallax: str | None = Field(None, description="parallax column [mas]")
    mags: dict[str, str] = Field(
        default_factory=dict, description="band -> magnitude column, e.g. {'G': 'Gmag', 'r': 'rmag'} [mag]"
    )

    @field_validator("mags")
    @classmethod
    def _bands_are_names(cls, value: dict[str, str]) -> dict[str, str]:
        for band in value:
            if not band or not all(ch.isalnum() or ch == "_" for ch in band):
                raise ValueError(f"band name {band!r} must be letters, digits or '_'")
        return value


_DEFAULT_OPTIONAL = {
    "name": "name",
    "epoch": "epoch",
    "pmra": "pmra",
    "pmdec": "pmdec",
    "parallax": "parallax",
}


def parse_columns(text: str | None) -> TargetColumns:
    """Column mapping from ``key=column,...`` (the ``--columns`` option).

    Keys: name, ra, dec, epoch (a column, or a number for one epoch [Julian year]), pmra,
    pmdec, parallax, and ``mag.BAND`` (or ``mag_BAND``) for magnitudes. Example:
    ``name=GaiaEDR3,ra=RA_ICRS,dec=DE_ICRS,epoch=2016.0,pmra=pmRA,pmdec=pmDE,mag.G=Gmag``.
    """
    if not text:
        return TargetColumns()
    fields: dict[str, object] = {}
    mags: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise BadInputError(f"--columns item {item!r} is not of the form key=column")
        key, value = (s.strip() for s in item.split("=", 1))
        if key.startswith(("mag.", "mag_")):
            mags[key[4:]] = value
        elif key == "epoch":
            try:
                fields["epoch_jyear"] = float(value)
            except ValueError:
                fields["epoch"] = value
        elif key in ("name", "ra", "dec", "pmra", "pmdec", "parallax"):
            fields[key] = value
        else:
            raise BadInputError(
                f"--columns key {key!r} unknown; use name, ra, dec, epoch, pmra, pmdec, parallax, mag.BAND"
            )
    try:
        return TargetColumns(**fields, mags=mags)
    except Exception as exc:
        raise BadInputError(f"--columns: {exc}") from exc


def read_target_file(path: str | Path, *, hdf5_path: str | None = None) -> Table:
    """The table in a CSV, ECSV, FITS, Parquet or HDF5 (``.h5``, ``.hdf5``) file, as stored."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"target file not found: {path}")
    if path.suffix.lower() in (".h5", ".hdf5", ".he5"):
        try:
            return Table.read(path, format="hdf5", path=hdf5_path) if hdf5_path else _first_hdf5_table(path)
        except BadInputError:
            raise
        except Exception as exc:
            raise BadInputError(f"cannot read HDF5 target file {path.name}: {exc}") from exc
    return read_table(path)


def _first_hdf5_table(path: Path) -> Table:
    import h5py
    from astropy.table import Table

    found: list[str] = []
    with h5py.File(path, "r") as h5:

        def visit(name: str, obj) -> None:
            if (
                isinstance(obj, h5py.Dataset)
                and obj.dtype.names
                and not name.endswith(".__table_column_meta__")
            ):
                found.append(name)

        h5.visititems(visit)
    if not found:
        raise BadInputError(f"{path.name}: no table (compound dataset) in the HDF5 file")
    return Table.read(path, format="hdf5", path=found[0])


def _float(table: Table, name: str, unit: u.UnitBase | None = None) -> np.ndarray:
    import astropy.units as u

    col = table[name]
    try:
        arr = np.ma.filled(np.ma.asarray(col).astype(np.float64), np.nan)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"column {name!r} is not numeric") from exc
    col_unit = getattr(col, "unit", None)
    if unit is not None and col_unit is not None:
        try:
            arr = (arr * u.Unit(col_unit)).to_value(unit)
        except (u.UnitConversionError, ValueError) as exc:
            raise BadInputError(f"column {name!r} has unit {col_unit}, expected {unit}") from exc
    return np.asarray(arr, dtype=np.float64)


def standardize_targets(table: Table, columns: TargetColumns, *, catalog: str = "") -> Table:
    """Target table (see the module doc) from any table and a column mapping.

    Rows without a finite position are dropped (counted in ``meta["n_dropped"]``);
    a repeated name keeps its first row (counted in ``meta["n_duplicates"]``).
    """
    import astropy.units as u
    from astropy.table import Column, Table

    present = set(table.colnames)
    chosen: dict[str, str | None] = {}
    for key, default in _DEFAULT_OPTIONAL.items():
        given = getattr(columns, key)
        if given is not None and given not in present:
            raise BadInputError(
                f"target table has no {key} column {given!r} (columns: {', '.join(table.colnames[:25])})"
            )
        chosen[key] = given if given is not None else (default if default in present else None)
    for key in ("ra", "dec"):
        if getattr(columns, key) not in present:
            raise BadInputError(
                f"target table has no {key} column {getattr(columns, key)!r} "
                f"(columns: {', '.join(table.colnames[:25])}); map it with --columns {key}=NAME"
            )
    for band, col in columns.mags.items():
        if col not in present:
            raise BadInputError(f"target table has no magnitude column {col!r} for band {band}")
    n = len(table)
    ra = _float(table, columns.ra, u.deg)
    dec = _float(table, columns.dec, u.deg)
    good = np.isfinite(ra) & np.isfinite(dec)
    if np.any(np.abs(dec[good]) > 90):
        raise BadInputError(f"declinations beyond +-90 deg in column {columns.dec!r}")
    if chosen["name"]:
        names = np.array(
            [str(v).strip() for v in np.ma.filled(np.ma.asarray(table[chosen["name"]]).astype(str), "")]
        )
    else:
        names = np.array([f"{catalog or 'target'}-{i}" for i in range(n)])
    if chosen["epoch"]:
        epoch = _float(table, chosen["epoch"])
    else:
        epoch = np.full(n, np.nan if columns.epoch_jyear is None else columns.epoch_jyear)
    pmra = _float(table, chosen["pmra"], u.mas / u.yr) if chosen["pmra"] else np.zeros(n)
    pmdec = _float(table, chosen["pmdec"], u.mas / u.yr) if chosen["pmdec"] else np.zeros(n)
    plx = _float(table, chosen["parallax"], u.mas) if chosen["parallax"] else np.full(n, np.nan)
    out = Table()
    out["name"] = Column(names, description="identifier in the catalogue")
    out["ra_deg"] = Column(np.mod(ra, 360.0), unit=u.deg, description="right ascension (ICRS) at epoch_jyear")
    out["dec_deg"] = Column(dec, unit=u.deg, description="declination (ICRS) at epoch_jyear")
    out["epoch_jyear"] = Column(epoch, unit=u.yr, description="Julian year of the position")
    out["pmra_masyr"] = Column(np.where(np.isfinite(pmra), pmra, 0.0), unit=u.mas / u.yr)
    out["pmdec_masyr"] = Column(np.where(np.isfinite(pmdec), pmdec, 0.0), unit=u.mas / u.yr)
    out["parallax_mas"] = Column(plx, unit=u.mas)
    for band, col in columns.mags.items():
        out[f"mag_{band}"] = Column(_float(table, col), unit=u.mag, description=f"{band} magnitude ({col})")
    keep = good & (out["name"] != "")
    _, first = np.unique(names, return_index=True)
    unique = np.zeros(n, bool)
    unique[first] = True
    n_dup = int(np.sum(keep & ~unique))
    out = out[keep & unique]
    out.meta.update({"catalog": catalog, "n_dropped": int(np.sum(~keep)), "n_duplicates": n_dup})
    if n_dup or np.any(~keep):
        log.warning(
            "%s: %d rows without position or name dropped, %d repeated names", catalog, np.sum(~keep), n_dup
        )
    return out


def propagate_space_motion(
    ra_deg: np.ndarray | float,
    dec_deg: np.ndarray | float,
    pmra_masyr: np.ndarray | float,
    pmdec_masyr: np.ndarray | float,
    *,
    from_epoch_jyear: np.ndarray | float,
    to_epoch_jyear: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions moved along straight lines in space (no radial velocity) to another epoch.

    The unit vector ``p`` of each position gets ``dt * (mu_alpha* e_alpha + mu_delta e_delta)``
    added and is normalised again: the rectilinear motion that astropy's
    ``SkyCoord.apply_space_motion`` (ERFA ``pmsafe``) applies when the radial velocity is
    zero, without its light-time terms (below 1 microarcsec here). Exact at the poles and for
    any interval, unlike the linear ``dRA = mu_alpha* dt / cos(Dec)``.

    Parameters
    ----------
    ra_deg, dec_deg
        ICRS position at ``from_epoch_jyear`` [deg].
    pmra_masyr, pmdec_masyr
        Proper motion, RA component including cos(Dec) [mas/yr]. NaN counts as 0.
    from_epoch_jyear, to_epoch_jyear
        Julian years; a NaN start epoch leaves that position unchanged.

    Returns
    -------
    ra_deg, dec_deg at ``to_epoch_jyear`` [deg], RA in [0, 360).
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    dt = float(to_epoch_jyear) - np.asarray(from_epoch_jyear, dtype=float)
    dt = np.where(np.isfinite(dt), dt, 0.0)
    mua = np.nan_to_num(np.asarray(pmra_masyr, dtype=float)) * _MAS_TO_RAD * dt
    mud = np.nan_to_num(np.asarray(pmdec_masyr, dtype=float)) * _MAS_TO_RAD * dt
    sa, ca, sd, cd = np.sin(ra), np.cos(ra), np.sin(dec), np.cos(dec)
    x = cd * ca + mua * (-sa) + mud * (-sd * ca)
    y = cd * sa + mua * ca + mud * (-sd * sa)
    z = sd + mud * cd
    norm = np.sqrt(x * x + y * y + z * z)
    new_ra = np.mod(np.degrees(np.arctan2(y, x)), 360.0)
    new_dec = np.degrees(np.arcsin(np.clip(z / norm, -1.0, 1.0)))
    return new_ra, new_dec


def targets_at_epoch(targets: Table, epoch_jyear: float) -> Table:
    """A copy of a target table with positions moved to ``epoch_jyear`` (rows with an unknown
    epoch stay where they are)."""
    import astropy.units as u
    from astropy.table import Column

    out = targets.copy(copy_data=True)
    ra, dec = propagate_space_motion(
        out["ra_deg"],
        out["dec_deg"],
        out["pmra_masyr"],
        out["pmdec_masyr"],
        from_epoch_jyear=out["epoch_jyear"],
        to_epoch_jyear=epoch_jyear,
    )
    known = np.isfinite(np.asarray(out["epoch_jyear"], dtype=float))
    out["ra_deg"] = Column(ra, unit=u.deg)
    out["dec_deg"] = Column(dec, unit=u.deg)
    out["epoch_jyear"] = Column(np.where(known, float(epoch_jyear), np.nan), unit=u.yr)
    return out


# --- default catalogues -------------------------------------------------------------------


def wd_gf21(
    *, base_url: str = VIZIER_URL, min_pwd: float = 0.75
) -> tuple[OnlineCatalogConfig, TargetColumns, dict]:
    """Gaia EDR3 white dwarfs of Gentile Fusillo et al. 2021 (VizieR J/MNRAS/508/3877/maincat).

    Positions at epoch 2016.0; ``min_pwd`` keeps the high-confidence white dwarfs (the
    paper's P_WD > 0.75 sample, about 359,000 objects). Returns the online-catalogue
    config, the column mapping and the VizieR column constraints.
    """
    config = OnlineCatalogConfig(
        service="vizier",
        base_url=base_url,
        catalog="J/MNRAS/508/3877/maincat",
        columns=CatalogColumns(
            ra="RA_ICRS", dec="DE_ICRS", mag="Gmag", pmra="pmRA", pmdec="pmDE", epoch_jyear=2016.0
        ),
        out_columns=(
            "WDJname",
            "GaiaEDR3",
            "RA_ICRS",
            "DE_ICRS",
            "Plx",
            "pmRA",
            "pmDE",
            "Gmag",
            "BPmag",
            "RPmag",
            "Pwd",
        ),
        max_rows=2_000_000,
        timeout_s=600.0,
    )
    columns = TargetColumns(
        name="WDJname",
        ra="RA_ICRS",
        dec="DE_ICRS",
        epoch_jyear=2016.0,
        pmra="pmRA",
        pmdec="pmDE",
        parallax="Plx",
        mags={"G": "Gmag", "BP": "BPmag", "RP": "RPmag"},
    )
    return config, columns, {"Pwd": f">{min_pwd:g}"}


DEFAULT_CATALOGS = {"wd": wd_gf21}


def default_catalog(
    name: str, *, base_url: str = VIZIER_URL
) -> tuple[OnlineCatalogConfig, TargetColumns, dict]:
    """The online config, column mapping and constraints of a named default catalogue."""
    if name not in DEFAULT_CATALOGS:
        raise BadInputError(f"no default catalogue {name!r}; known: {', '.join(sorted(DEFAULT_CATALOGS))}")
    return DEFAULT_CATALOGS[name](base_url=base_url)


def fetch_default_catalog(
    name: str, *, base_url: str = VIZIER_URL, cache_dir: str | Path | None = None, refresh: bool = False
) -> Table:
    """Target table of a named default catalogue, fetched once and kept in ``cache_dir``."""
    config, columns, constraints = default_catalog(name, base_url=base_url)
    raw = query_table(config, constraints=constraints, cache_dir=cache_dir, refresh=refresh)
    return standardize_targets(raw, columns, catalog=name)
