"""Light curves of a target from a table of measurements.

Input: one row per (image, source) with at least ``image_id, source_id, flux,
flux_err, mjd_utc, filter``; optional ``flags`` (:class:`~darkroom.phot.flags.PhotFlag`),
``mag, mag_err`` (calibrated), ``fwhm``, ``x, y``, ``ra, dec``, ``colour``, ``zp``.
``mjd_utc`` is the **mid-exposure** time.

Output columns: ``image_id, mjd_utc, bjd_tdb, filter, flux, flux_err, mag, mag_err,
rel_flux, rel_flux_err, ens_flux, ens_flux_err, n_comp, airmass, fwhm, flags`` (plus
``x, y`` when given), sorted by time. ``flags`` holds the target's PhotFlag bits and
the :class:`~darkroom.timeseries.quality.LightCurveFlag` bits. Each filter is handled
separately (its own comparison ensemble).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.coordinates import EarthLocation
from astropy.table import Table, vstack

from darkroom.errors import BadInputError, SolveError
from darkroom.phot.match import radec_to_unit, unit_to_radec
from darkroom.timeseries.differential import (
    check_curves,
    differential_photometry,
    pointing_segments,
)
from darkroom.timeseries.illumination import fit_illumination
from darkroom.timeseries.quality import LightCurveFlag, transparency_flags
from darkroom.timeseries.settings import LightCurveConfig
from darkroom.timeseries.times import airmass, bjd_tdb

__all__ = [
    "LightCurveConfig",
    "bin_lightcurve",
    "build_lightcurve",
    "pivot_measurements",
    "point_to_point_scatter",
    "read_lightcurve",
    "split_lightcurve",
    "write_lightcurve",
]

log = logging.getLogger(__name__)
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)
_REQUIRED = ("image_id", "source_id", "flux", "flux_err", "mjd_utc")


def pivot_measurements(
    measurements: Table, column: str, *, image_ids: np.ndarray, source_ids: np.ndarray, fill: float = np.nan
) -> np.ndarray:
    """Matrix ``[image, source]`` of one column (``fill`` where a source was not measured)."""
    img = np.asarray(measurements["image_id"])
    src = np.asarray(measurements["source_id"])
    ii = np.searchsorted(image_ids, img)
    jj = np.searchsorted(source_ids, src)
    ok = (ii < image_ids.size) & (jj < source_ids.size)
    ok[ok] &= (image_ids[ii[ok]] == img[ok]) & (source_ids[jj[ok]] == src[ok])
    values = np.asarray(measurements[column])
    out = np.full(
        (image_ids.size, source_ids.size), fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype)
    )
    out[ii[ok], jj[ok]] = values[ok]
    return out


def build_lightcurve(
    measurements: Table,
    *,
    target_id: int,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    location: EarthLocation | None = None,
    comparison_ids: Sequence[int] | None = None,
    colours: Mapping[int, float] | None = None,
    config: LightCurveConfig | None = None,
) -> Table:
    """Light curve of source ``target_id`` (see the module docstring).

    Parameters
    ----------
    measurements : Table
        All measurements of the field (the ensemble is chosen from them).
    ra_deg, dec_deg : float, optional
        Target ICRS position [deg] for BJD_TDB and airmass; default: the mean of the
        target's ``ra``/``dec`` columns.
    location : EarthLocation, optional
        Observatory. Without it BJD_TDB is geocentric (<= 21 ms off) and airmass is
        taken from an ``airmass`` column if present, else NaN.
    comparison_ids : sequence of int, optional
        User-named comparison source ids (no automatic choice).
    colours : mapping source_id -> colour index [mag], optional
        For the colour match of comparison stars (default: a ``colour`` column if any).

    Raises
    ------
    BadInputError
        Required columns missing, or the target has no measurement.
    """
    config = config or LightCurveConfig()
    for col in _REQUIRED:
        if col not in measurements.colnames:
            raise BadInputError(f"measurements lack column {col!r}")
    src_all = np.asarray(measurements["source_id"], np.int64)
    tmask = src_all == target_id
    if not tmask.any():
        raise BadInputError(f"source {target_id} has no measurement")
    tgt = measurements[tmask]
    if ra_deg is None or dec_deg is None:
        if "ra" in tgt.colnames and "dec" in tgt.colnames:
            ra_m, dec_m = unit_to_radec(
                radec_to_unit(np.asarray(tgt["ra"], float), np.asarray(tgt["dec"], float)).sum(axis=0)[
                    None, :
                ]
            )
            ra_deg, dec_deg = float(ra_m[0]), float(dec_m[0])
        else:
            raise BadInputError(
                "target RA/Dec needed for BJD_TDB: pass ra_deg/dec_deg or give ra/dec columns"
            )
    has_filter = "filter" in measurements.colnames
    bands = np.asarray(measurements["filter"]).astype(str) if has_filter else np.full(len(measurements), "")
    parts = []
    meta_comp: dict[str, dict[str, object]] = {}
    for band in np.unique(bands[tmask]):
        sub = measurements[bands == band]
        part, info = _one_band(
            sub,
            target_id=target_id,
            band=band,
            comparison_ids=comparison_ids,
            colours=colours,
            config=config,
        )
        parts.append(part)
        meta_comp[band] = info
    lc = vstack(parts, metadata_conflicts="silent") if len(parts) > 1 else parts[0]
    mjd = np.asarray(lc["mjd_utc"], float)
    lc["bjd_tdb"] = bjd_tdb(mjd, ra_deg, dec_deg, location=location)
    if location is not None:
        lc["airmass"] = airmass(mjd, ra_deg, dec_deg, location=location, model=config.airmass_model)
    elif "airmass" not in lc.colnames:
        lc["airmass"] = np.full(len(lc), np.nan)
    lc.sort("mjd_utc")
    order = [
        "image_id", "mjd_utc", "bjd_tdb", "filter", "flux", "flux_err", "mag", "mag_err",
        "rel_flux", "rel_flux_err", "ens_flux", "ens_flux_err", "n_comp", "airmass", "fwhm", "flags",
    ]  # fmt: skip
    extra = [c for c in lc.colnames if c not in order]
    lc = lc[order + extra]
    units = {"mjd_utc": "d", "bjd_tdb": "d", "mag": "mag", "mag_err": "mag"}
    for col, unit in units.items():
        lc[col].unit = unit
    lc["bjd_tdb"].description = "barycentric Julian date (TDB) at mid-exposure"
    lc["mjd_utc"].description = "MJD (UTC) at mid-exposure"
    lc["rel_flux"].description = "target flux / comparison ensemble, median 1"
    lc.meta.update(
        {
            "target_id": int(target_id),
            "ra_deg": float(ra_deg),
            "dec_deg": float(dec_deg),
            "site": None
            if location is None
            else {
                "lat_deg": float(location.lat.deg),
                "lon_deg": float(location.lon.deg),
                "height_m": float(location.height.to_value("m")),
            },
            "comparison": meta_comp,
            "flag_bits": {f.name: int(f) for f in LightCurveFlag},
        }
    )
    return lc


def _illumination(
    flux: np.ndarray,
    err: np.ndarray,
    usable: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    flat_fielded: bool,
    tcol: int,
    config: LightCurveConfig,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Fluxes and errors with the illumination pattern of a drifting, unflattened field removed
    (every star's, the target's included: rel_flux is built on them), and what was done."""
    cfg = config.illumination
    if cfg.mode == "off":
        return flux, err, "illumination correction off"
    if cfg.mode == "auto" and flat_fielded:
        # a flat removed the pattern; what a static fit would find on top is weather and aperture
        # systematics it cannot describe
        return flux, err, "frames flat-fielded: no illumination correction"
    fit = fit_illumination(flux, err, xs, ys, usable=usable, exclude=(tcol,), config=cfg)
    if fit.applied:
        return flux * fit.factor, err * fit.factor, fit.reason
    return flux, err, fit.reason


def _one_band(
    sub: Table,
    *,
    target_id: int,
    band: str,
    comparison_ids: Sequence[int] | None,
    colours: Mapping[int, float] | None,
    config: LightCurveConfig,
) -> tuple[Table, dict[str, object]]:
    image_ids = np.unique(np.asarray(sub["image_id"]))
    source_ids = np.unique(np.asarray(sub["source_id"], np.int64))
    tcol = int(np.searchsorted(source_ids, target_id))
    flux = pivot_measurements(sub, "flux", image_ids=image_ids, source_ids=source_ids).astype(float)
    err = pivot_measurements(sub, "flux_err", image_ids=image_ids, source_ids=source_ids).astype(float)
    flags = (
        pivot_measurements(sub, "flags", image_ids=image_ids, source_ids=source_ids, fill=0).astype(np.int64)
        if "flags" in sub.colnames
        else np.zeros(flux.shape, np.int64)
    )
    # epoch times: one per image (the median of its rows, they should agree)
    mjd_mat = pivot_measurements(sub, "mjd_utc", image_ids=image_ids, source_ids=source_ids).astype(float)
    with np.errstate(all="ignore"):
        mjd = np.nanmedian(mjd_mat, axis=1)
    order = np.argsort(mjd, kind="stable")
    image_ids, flux, err, flags, mjd = image_ids[order], flux[order], err[order], flags[order], mjd[order]
    has_target = np.isfinite(flux[:, tcol])
    info: dict[str, object] = {}
    n_ep = image_ids.size
    rel = rel_err = ens = ens_err = np.full(n_ep, np.nan)
    checks: dict[str, np.ndarray] = {}  # check_<source id>: a comparison star over the others
    n_comp = np.zeros(n_ep, np.int64)
    qflags = np.zeros(n_ep, np.int64)
    segments = None
    if "x" in sub.colnames and "y" in sub.colnames:
        # positions of every star in every epoch: the target's segments and the field's illumination
        xs = pivot_measurements(sub, "x", image_ids=image_ids, source_ids=source_ids).astype(float)
        ys = pivot_measurements(sub, "y", image_ids=image_ids, source_ids=source_ids).astype(float)
        if config.segment_jump_pix is not None:
            segments = pointing_segments(xs[:, tcol], ys[:, tcol], jump_pix=config.segment_jump_pix, time=mjd)
        if config.differential:
            flat_fielded = "flat_fielded" in sub.colnames and bool(np.all(sub["flat_fielded"]))
            flux, err, info["illumination"] = _illumination(
                flux,
                err,
                (flags & config.comparison.bad_flags) == 0,
                xs,
                ys,
                flat_fielded=flat_fielded,
                tcol=tcol,
                config=config,
            )
    if config.differential:
        colour_arr = None
        if colours is not None:
            colour_arr = np.array([colours.get(int(s), np.nan) for s in source_ids], float)
        elif "colour" in sub.colnames:
            cmat = pivot_measurements(sub, "colour", image_ids=image_ids, source_ids=source_ids).astype(float)
            with np.errstate(all="ignore"):
                colour_arr = np.nanmedian(cmat, axis=0)
        named = None
        if comparison_ids is not None:
            named = [int(np.searchsorted(source_ids, c)) for c in comparison_ids]
            missing = [
                c
                for c, j in zip(comparison_ids, named, strict=True)
                if j >= source_ids.size or source_ids[j] != c
            ]
            if missing:
                raise BadInputError(
                    f"named comparison sources {missing} have no measurement in filter {band!r}"
                )
        try:
            res = differential_photometry(
                flux,
                err,
                target=tcol,
                flags=flags,
                time=mjd,
                colour=colour_arr,
                comparison=named,
                segments=segments,
                config=config.comparison,
            )
        except SolveError as exc:
            log.warning("filter %s: no differential light curve: %s", band, exc.reason)
            info = {**info, "error": exc.reason}
            qflags |= int(LightCurveFlag.NO_ENSEMBLE)
        else:
            rel, rel_err = res.rel_flux, res.rel_flux_err
            curves = check_curves(flux, res.comparison, res.weights)
            checks = {f"check_{int(source_ids[j])}": curves[:, k] for k, j in enumerate(res.comparison)}
            ens, ens_err, n_comp = res.ensemble_flux, res.ensemble_flux_err, res.n_comparisons
            low = transparency_flags(ensemble_flux=ens, config=config.transparency)
            qflags |= np.where(low, int(LightCurveFlag.LOW_TRANSPARENCY), 0)
            qflags |= np.where(
                n_comp < config.comparison.min_comparisons, int(LightCurveFlag.FEW_COMPARISONS), 0
            )
            qflags |= np.where(~np.isfinite(rel) & has_target, int(LightCurveFlag.NO_ENSEMBLE), 0)
            info = {
                **info,
                "source_ids": [int(source_ids[j]) for j in res.comparison],
                "weights": [float(w) for w in res.weights],
                "rejected": {int(source_ids[j]): why for j, why in res.rejected.items()},
                "normalisation": res.normalisation,
            }
    if "zp" in sub.colnames:
        # per-frame zero points [mag] (one value per image; the median of its rows)
        zmat = pivot_measurements(sub, "zp", image_ids=image_ids, source_ids=source_ids).astype(float)
        with np.errstate(all="ignore"):
            zp_epoch = np.nanmedian(zmat, axis=1)
        if np.isfinite(zp_epoch).any():
            low_zp = transparency_flags(zero_point=zp_epoch, config=config.transparency)
            qflags |= np.where(low_zp, int(LightCurveFlag.LOW_TRANSPARENCY), 0)
    tr = sub[np.asarray(sub["source_id"], np.int64) == target_id]
    # target rows in the epoch order
    pos = {v: i for i, v in enumerate(np.asarray(tr["image_id"]).tolist())}
    take = np.array([pos.get(v, -1) for v in image_ids.tolist()])
    keep = (take >= 0) & has_target
    rows = tr[take[keep]]
    out = Table()
    out["image_id"] = image_ids[keep]
    out["mjd_utc"] = mjd[keep]
    out["filter"] = np.full(keep.sum(), band, dtype=object).astype(str)
    out["flux"] = np.asarray(rows["flux"], float)
    out["flux_err"] = np.asarray(rows["flux_err"], float)
    if "mag" in rows.colnames and "mag_err" in rows.colnames:
        out["mag"] = np.asarray(rows["mag"], float)
        out["mag_err"] = np.asarray(rows["mag_err"], float)
    else:
        f = out["flux"].data
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mag"] = np.where(f > 0, -2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)
            out["mag_err"] = np.where(f > 0, _MAG_ERR_FACTOR * out["flux_err"].data / f, np.nan)
    out["rel_flux"] = rel[keep]
    out["rel_flux_err"] = rel_err[keep]
    out["ens_flux"] = ens[keep]
    out["ens_flux_err"] = ens_err[keep]
    out["n_comp"] = n_comp[keep]
    for name, curve in checks.items():
        out[name] = curve[keep]
    if "airmass" in rows.colnames:
        out["airmass"] = np.asarray(rows["airmass"], float)
    out["fwhm"] = np.asarray(rows["fwhm"], float) if "fwhm" in rows.colnames else np.full(keep.sum(), np.nan)
    phot_flags = (
        np.asarray(rows["flags"], np.int64) if "flags" in rows.colnames else np.zeros(keep.sum(), np.int64)
    )
    out["flags"] = (phot_flags & 0xFFFF) | qflags[keep]
    for col in ("x", "y"):
        if col in rows.colnames:
            out[col] = np.asarray(rows[col], float)
    if segments is not None:
        out["segment"] = segments[keep]
    return out, info


def point_to_point_scatter(values: np.ndarray) -> float:
    """RMS of successive differences / sqrt(2) (NaN skipped): white-noise scatter per point,
    insensitive to slow trends."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    d = np.diff(v)
    return float(np.sqrt(np.mean(d * d)) / math.sqrt(2.0))


def bin_lightcurve(
    time_d: np.ndarray, values: np.ndarray, errors: np.ndarray | None = None, *, bin_minutes: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin a series in time.

    Returns ``(time, value, error, n)`` per non-empty bin: mean time; inverse-variance
    weighted mean and its error when ``errors`` are given, else the mean and the
    standard error (NaN for single points).
    """
    if bin_minutes <= 0:
        raise BadInputError(f"bin_minutes must be > 0, got {bin_minutes}")
    t = np.asarray(time_d, float)
    v = np.asarray(values, float)
    e = None if errors is None else np.asarray(errors, float)
    ok = np.isfinite(t) & np.isfinite(v)
    if e is not None:
        ok &= np.isfinite(e) & (e > 0)
    t, v = t[ok], v[ok]
    if e is not None:
        e = e[ok]
    if t.size == 0:
        z = np.zeros(0)
        return z, z, z, np.zeros(0, np.int64)
    width = bin_minutes / 1440.0
    idx = np.floor((t - t.min()) / width).astype(np.int64)
    _uniq, inv = np.unique(idx, return_inverse=True)
    n = np.bincount(inv)
    tb = np.bincount(inv, weights=t) / n
    if e is not None:
        w = 1.0 / e**2
        sw = np.bincount(inv, weights=w)
        vb = np.bincount(inv, weights=w * v) / sw
        eb = 1.0 / np.sqrt(sw)
    else:
        vb = np.bincount(inv, weights=v) / n
        sq = np.bincount(inv, weights=(v - vb[inv]) ** 2)
        with np.errstate(invalid="ignore", divide="ignore"):
            eb = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1) / n), np.nan)
    return tb, vb, eb, n.astype(np.int64)


def split_lightcurve(
    table: Table, *, season_gap_days: float | None = 60.0, time_col: str = "mjd_utc"
) -> dict[tuple[str, int], Table]:
    """Split by filter and by season: a gap longer than ``season_gap_days`` starts a new
    season (None: no split in time). Keys are ``(filter, season_index)``, seasons
    numbered from 0 in time order within each filter."""
    if season_gap_days is not None and season_gap_days <= 0:
        raise BadInputError(f"season_gap_days must be > 0, got {season_gap_days}")
    bands = np.asarray(table["filter"]).astype(str) if "filter" in table.colnames else np.full(len(table), "")
    out: dict[tuple[str, int], Table] = {}
    for band in np.unique(bands):
        sub = table[bands == band]
        sub.sort(time_col)
        t = np.asarray(sub[time_col], float)
        if season_gap_days is None or t.size == 0:
            seasons = np.zeros(t.size, np.int64)
        else:
            seasons = np.concatenate([[0], np.cumsum(np.diff(t) > season_gap_days)])
        for s in np.unique(seasons):
            out[(str(band), int(s))] = sub[seasons == s]
    return out


def write_lightcurve(table: Table, path: str | Path) -> Path:
    """Write by suffix: ``.csv``, ``.ecsv`` or ``.parquet``; returns the path.

    CSV keeps only the values; ECSV and Parquet keep units, descriptions and metadata.
    The caller chooses the path (and does the atomic rename, if it wants one).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".parquet": "parquet"}.get(suffix)
    if fmt is None:
        raise BadInputError(f"light-curve file {path.name!r}: use a .csv, .ecsv or .parquet suffix")
    table.write(path, format=fmt, overwrite=True)
    return path


def read_lightcurve(path: str | Path) -> Table:
    """Read a light curve written by :func:`write_lightcurve` (suffix decides the format).

    Parquet is read with pyarrow directly (astropy's reader needs pandas, which darkroom
    does not depend on); units, descriptions and ``meta`` are restored from astropy's
    ``table_meta_yaml`` schema entry.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".ecsv"):
        return Table.read(path, format="ascii.csv" if suffix == ".csv" else "ascii.ecsv")
    if suffix != ".parquet":
        raise BadInputError(f"light-curve file {path.name!r}: use a .csv, .ecsv or .parquet suffix")
    import pyarrow.parquet as pq
    from astropy.table.meta import get_header_from_yaml

    arrow = pq.read_table(path)
    table = Table({name: arrow.column(name).to_numpy(zero_copy_only=False) for name in arrow.column_names})
    raw = (arrow.schema.metadata or {}).get(b"table_meta_yaml")
    if raw:
        header = get_header_from_yaml(raw.decode("utf-8").splitlines())
        for col in header.get("datatype", []):
            name = col.get("name")
            if name in table.colnames:
                if col.get("unit"):
                    table[name].unit = col["unit"]
                if col.get("description"):
                    table[name].description = col["description"]
                if col.get("datatype") == "string":
                    table[name] = table[name].astype(str)
        table.meta.update(header.get("meta", {}))
    return table
