"""Survey and imported light curves: the file format, readers and the band/season split.

The light-curve file (one per registry ``lightcurve`` row)
----------------------------------------------------------
Parquet (written with pyarrow, one object, one band, one season), columns:

==========  =======  ==============================================================
``mjd``     float64  time of mid-exposure, MJD, in the scale named by the row's
                     ``time_scale`` (and the file's ``time_scale`` metadata):
                     ``utc`` for ZTF/IRSA and our own photometry, ``tdb`` for BJD
``mag``     float64  magnitude (NaN where only a flux is known)
``magerr``  float64  1-sigma magnitude error (> 0)
``flux``    float64  optional: linear flux (any unit; relative for differential)
``fluxerr`` float64  optional: 1-sigma flux error, same unit
``band``    string   survey band (ZTF ``zg/zr/zi`` become ``g/r/i``)
``catflags`` int64   optional: the survey's own quality bits (0 = good)
``qflag``   int64    quality bits set by :func:`darkroom.analysis.quality.check_quality`
                     (0 = good; written by the analysis, absent or 0 on import)
==========  =======  ==============================================================

Optional columns kept when present: ``ra, dec`` [deg], ``airmass``, ``fwhm``, ``limitmag``,
``expid``, ``oid``, ``programid``, ``field``, ``transparency``, ``flags`` (darkroom PhotFlag
bits), ``bjd_tdb``. Schema metadata key ``darkroom`` holds JSON
``{"object": ..., "survey": ..., "band": ..., "season": ..., "time_scale": ...,
"difference": bool}`` (``difference``: difference-image photometry, whose baseline flux
is zero, such as alert light curves).

Readers accept CSV, ECSV, Parquet and FITS tables with a time column (``mjd``, ``time``,
``jd`` / ``hjd`` / ``bjd`` converted to MJD) and either ``mag, magerr`` or ``flux, fluxerr``,
plus the IRSA ZTF light-curve CSV columns (``oid, mjd, mag, magerr, catflags, filtercode,
ra, dec, airmass, limitmag...``; a leading unnamed pandas index is dropped). One object per
file, named by an id column (``object``, ``name``, ``objectid``) or else the file stem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from darkroom.errors import BadInputError

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "LC_COLUMNS",
    "LightCurveData",
    "read_lc_file",
    "read_survey_table",
    "split_band_season",
    "write_lc_file",
]

LC_COLUMNS = ("mjd", "mag", "magerr", "flux", "fluxerr", "band", "catflags", "qflag")
_KEEP = (
    "ra", "dec", "airmass", "fwhm", "limitmag", "expid", "oid", "programid", "field",
    "transparency", "flags", "bjd_tdb", "image_id",
)  # fmt: skip
_TIME_ALIASES = ("mjd", "time", "mjd_utc", "jd", "hjd", "bjd", "bjd_tdb", "t")
_BAND_ALIASES = ("band", "filter", "filtercode", "passband", "filt")
_ID_ALIASES = ("object", "name", "objectid", "object_id", "id")
_MAGERR_ALIASES = ("magerr", "mag_err", "emag", "sigma_mag", "e_mag")
_FLUXERR_ALIASES = ("fluxerr", "flux_err", "eflux", "sigma_flux")
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)


@dataclass
class LightCurveData:
    """One object's light curve (all bands): the normalised table and what it came from."""

    object: str
    table: Table  #: columns as in the module docstring, sorted by time
    time_scale: str = "utc"
    difference: bool = False  #: difference photometry (baseline flux zero)
    meta: dict[str, Any] = field(default_factory=dict)


def _find(names: Sequence[str], aliases: Sequence[str]) -> str | None:
    lower = {n.lower(): n for n in names}
    for a in aliases:
        if a in lower:
            return lower[a]
    return None


def _read_any(path: Path) -> Table:
    from astropy.table import Table

    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() == ".gz" else path.suffix.lower()
    try:
        if suffix in (".csv", ".csv.gz", ".txt"):
            return Table.read(path, format="ascii.csv")
        if suffix == ".ecsv":
            return Table.read(path, format="ascii.ecsv")
        if suffix == ".parquet":
            return read_lc_file(path)
        if suffix in (".fits", ".fit", ".fits.gz", ".fts"):
            return Table.read(path, format="fits")
    except (OSError, ValueError, KeyError) as exc:
        raise BadInputError(f"{path.name}: cannot read as a table ({exc})") from exc
    raise BadInputError(f"{path.name}: unknown light-curve format {suffix!r} (use CSV, ECSV, Parquet, FITS)")


def _ztf_band(value: str) -> str:
    v = value.strip()
    if len(v) == 2 and v[0] == "z" and v[1] in "gri":
        return v[1]
    return v


def read_survey_table(
    path: str | Path,
    *,
    survey: str = "import",
    time_scale: str | None = None,
    object_name: str | None = None,
    difference: bool | None = None,
) -> LightCurveData:
    """Read one object's light curve from a CSV/ECSV/Parquet/FITS file.

    Parameters
    ----------
    path
        The file (one object per file).
    survey
        Survey label; ``'ztf'`` (or a file with ``filtercode``) maps ``zg/zr/zi`` to ``g/r/i``.
    time_scale
        Scale of the time column (default ``utc``; ``tdb`` when the column is ``bjd*``).
    object_name
        Override the object's name (default: an id column, else the file stem).
    difference
        The photometry is difference photometry (zero baseline). Default: True for files
        with no quiescent epochs flagged as such by ``meta['difference']``, else False.

    Raises
    ------
    BadInputError
        No time column, no mag/flux column, or no rows.
    """
    from astropy.table import Table

    path = Path(path)
    raw = _read_any(path)
    names = list(raw.colnames)
    # pandas' index column written without a name (IRSA replies saved through pandas)
    for junk in ("", "Unnamed: 0", "col0"):
        if junk in names and junk != _find(names, _TIME_ALIASES):
            raw.remove_column(junk)
            names.remove(junk)
    if len(raw) == 0:
        raise BadInputError(f"{path.name}: no rows")
    tcol = _find(names, _TIME_ALIASES)
    if tcol is None:
        raise BadInputError(f"{path.name}: no time column (one of {', '.join(_TIME_ALIASES)})")
    t = np.asarray(raw[tcol], float)
    scale = time_scale or ("tdb" if tcol.lower().startswith("bjd") else "utc")
    if tcol.lower() in ("jd", "hjd", "bjd") or np.nanmedian(t) > 2_400_000:
        t = t - 2_400_000.5
    out = Table()
    out["mjd"] = t
    mcol = _find(names, ("mag", "magnitude", "psfmag"))
    fcol = _find(names, ("flux",))
    if mcol is None and fcol is None:
        raise BadInputError(f"{path.name}: no mag or flux column")
    n = len(raw)
    nan = np.full(n, np.nan)
    if mcol is not None:
        ecol = _find(names, _MAGERR_ALIASES)
        if ecol is None:
            raise BadInputError(
                f"{path.name}: column {mcol!r} has no error column ({', '.join(_MAGERR_ALIASES)})"
            )
        out["mag"] = np.asarray(raw[mcol], float)
        out["magerr"] = np.asarray(raw[ecol], float)
    else:
        out["mag"], out["magerr"] = nan, nan.copy()
    if fcol is not None:
        ecol = _find(names, _FLUXERR_ALIASES)
        if ecol is None and mcol is None:
            raise BadInputError(f"{path.name}: column {fcol!r} has no error column")
        out["flux"] = np.asarray(raw[fcol], float)
        out["fluxerr"] = np.asarray(raw[ecol], float) if ecol else nan.copy()
        if mcol is None:  # magnitudes of positive fluxes, errors by propagation
            f, fe = np.asarray(out["flux"]), np.asarray(out["fluxerr"])
            with np.errstate(divide="ignore", invalid="ignore"):
                out["mag"] = np.where(f > 0, -2.5 * np.log10(f), np.nan)
                out["magerr"] = np.where(f > 0, _MAG_ERR_FACTOR * fe / f, np.nan)
    bcol = _find(names, _BAND_ALIASES)
    is_ztf = survey.lower() == "ztf" or (bcol is not None and bcol.lower() == "filtercode")
    bands = np.asarray(raw[bcol]).astype(str) if bcol else np.full(n, "unknown")
    if is_ztf:
        bands = np.array([_ztf_band(b) for b in bands])
    out["band"] = bands
    fl = _find(names, ("catflags", "flag", "flags_survey", "infobits"))
    out["catflags"] = np.asarray(raw[fl], np.int64) if fl else np.zeros(n, np.int64)
    out["qflag"] = np.zeros(n, np.int64)
    for name in _KEEP:
        col = _find(names, (name,))
        if col is not None and name not in out.colnames:
            out[name] = raw[col]
    ok = np.isfinite(out["mjd"])
    out = out[ok]
    out.sort("mjd")
    idcol = _find(names, _ID_ALIASES)
    name = object_name or (str(raw[idcol][0]) if idcol and idcol != tcol else path.stem)
    diff = bool(raw.meta.get("difference", False)) if difference is None else difference
    return LightCurveData(
        object=name,
        table=out,
        time_scale=scale,
        difference=diff,
        meta={"source_file": str(path), "survey": survey},
    )


def split_band_season(table: Table, *, season_gap_days: float | None = 100.0) -> dict[tuple[str, int], Table]:
    """Split a normalised light curve by ``band`` and by season.

    A gap longer than ``season_gap_days`` between consecutive epochs of a band starts a new
    season (None: one season per band). Keys ``(band, season)``, seasons numbered from 0.
    """
    if season_gap_days is not None and season_gap_days <= 0:
        raise BadInputError(f"season_gap_days must be > 0, got {season_gap_days}")
    out: dict[tuple[str, int], Table] = {}
    bands = np.asarray(table["band"]).astype(str)
    for band in np.unique(bands):
        sub = table[bands == band]
        sub.sort("mjd")
        t = np.asarray(sub["mjd"], float)
        seasons = (
            np.zeros(t.size, np.int64)
            if season_gap_days is None or t.size == 0
            else np.concatenate([[0], np.cumsum(np.diff(t) > season_gap_days)])
        )
        for s in np.unique(seasons):
            out[(str(band), int(s))] = sub[seasons == s]
    return out


def write_lc_file(table: Table, path: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """Write a light curve as Parquet (the module's format) to ``path`` (caller makes it atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    for col in ("mjd", "mag", "magerr", "band"):
        if col not in table.colnames:
            raise BadInputError(f"light curve lacks column {col!r}")
    arrays = {}
    for name in table.colnames:
        values = np.asarray(table[name])
        if values.dtype.kind in "US":
            arrays[name] = pa.array(values.astype(str).tolist(), pa.string())
        else:
            arrays[name] = pa.array(values)
    schema_meta = {b"darkroom": json.dumps(meta or {}, default=str).encode()}
    pq.write_table(pa.table(arrays).replace_schema_metadata(schema_meta), path)
    return path


def read_lc_file(path: str | Path) -> Table:
    """Read a light-curve Parquet file; ``meta`` gets the ``darkroom`` JSON metadata."""
    import pyarrow.parquet as pq
    from astropy.table import Table

    arrow = pq.read_table(path)
    table = Table({name: arrow.column(name).to_numpy(zero_copy_only=False) for name in arrow.column_names})
    for name in table.colnames:
        if table[name].dtype.kind == "O":
            table[name] = np.asarray(table[name]).astype(str)
    raw = (arrow.schema.metadata or {}).get(b"darkroom")
    if raw:
        table.meta.update(json.loads(raw.decode()))
    return table
