"""Registry rows as astropy Tables for light curves: measurements, frames, sources, comparison pools."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from darkroom.pipeline.products import image_products
from darkroom.repo.models import Image, Measurement, Source

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation
    from astropy.table import Table

# Imported (through the lightcurves stage) for every `darkroom run`: darkroom.timeseries
# (scipy, astropy.coordinates) loads when frame rows are read.

__all__ = [
    "bright_source_ids",
    "field_measurements",
    "frame_table",
    "measurement_table",
    "pool_source_ids",
    "source_table",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- rows


def measurement_table(rows: Sequence[Any]) -> Table:
    """Measurement rows (with ``mjd_utc``, ``filter``) as a Table; SQL NULL as NaN."""
    from astropy.table import Table

    names = [
        "image_id", "source_id", "x", "y", "ra", "dec", "flux", "flux_err", "mag", "mag_err",
        "flags", "forced", "mjd_utc", "filter",
    ]  # fmt: skip
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    data: dict[str, np.ndarray] = {}
    for name, values in zip(names, cols, strict=True):
        if name in ("image_id", "source_id", "flags"):
            data[name] = np.array(values, dtype=np.int64)
        elif name == "forced":
            data[name] = np.array(values, dtype=bool)
        elif name == "filter":
            data[name] = np.array(["" if v is None else str(v) for v in values], dtype=str)
        else:
            data[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    table = Table(data)
    for name, unit in (("x", "pix"), ("y", "pix"), ("ra", "deg"), ("dec", "deg"), ("flux", "adu")):
        table[name].unit = unit
    table["flux_err"].unit = "adu"
    table["mag"].unit = table["mag_err"].unit = "mag"
    table["mjd_utc"].unit = "d"
    return table


def _measurement_select():
    m, i = Measurement, Image
    return select(
        m.image_id, m.source_id, m.x, m.y, m.ra_deg, m.dec_deg, m.flux, m.flux_err, m.mag, m.mag_err,
        m.flags, m.forced, i.mjd_mid, i.filter,
    ).join(i, i.id == m.image_id)  # fmt: skip


def field_measurements(
    target: Session | Connection,
    *,
    provenance_id: str,
    source_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
) -> Table:
    """Measurements of one photometry provenance as a Table, sorted by time, image, source.

    ``source_ids`` / ``image_ids`` restrict the rows (None: all). Columns: ``image_id,
    source_id, x, y`` [pix, 0-based], ``ra, dec`` [deg], ``flux, flux_err`` [adu], ``mag,
    mag_err`` [mag], ``flags``, ``forced``, ``mjd_utc`` (the image's mid-exposure MJD, UTC),
    ``filter``.
    """
    imgs = None if image_ids is None else sorted({int(i) for i in image_ids})
    in_sql = imgs is not None and len(imgs) <= 2000
    base = _measurement_select().where(Measurement.provenance_id == provenance_id)
    if in_sql:
        base = base.where(Measurement.image_id.in_(imgs))
    rows: list[Any] = []
    if source_ids is None:
        rows.extend(target.execute(base).all())
    else:
        ids = sorted({int(s) for s in source_ids})
        for start in range(0, len(ids), 500):
            rows.extend(target.execute(base.where(Measurement.source_id.in_(ids[start : start + 500]))).all())
    if imgs is not None and not in_sql:
        wanted = set(imgs)
        rows = [r for r in rows if r[0] in wanted]
    rows.sort(key=lambda r: (np.inf if r[12] is None else r[12], r[0], r[1]))
    return measurement_table(rows)


def frame_table(
    session: Session, image_ids: Sequence[int], *, provenances: Sequence[str] | None = None
) -> tuple[Table, EarthLocation | None]:
    """Per-frame information (:data:`darkroom.timeseries.field.FRAME_COLUMNS`) and the observing
    site of most frames.

    FWHM, zero point and the quality verdict (``poor``) are those of ``provenances``
    (the extract, photometry and quality provenances in play; None: the newest of each).
    """
    from astropy.table import Table

    from darkroom.timeseries import site_location
    from darkroom.timeseries.field import FRAME_COLUMNS

    ids = sorted({int(i) for i in image_ids})
    rows = []
    for start in range(0, len(ids), 500):
        rows.extend(image_products(session, provenances, image_ids=ids[start : start + 500], only_ok=False))
    rows.sort(key=lambda r: (r.mjd_mid or 0.0, r.id))
    out = {c: [] for c in FRAME_COLUMNS}
    metas = []
    for image in rows:
        out["image_id"].append(image.id)
        out["mjd_utc"].append(np.nan if image.mjd_mid is None else image.mjd_mid)
        out["filter"].append(image.filter or "")
        out["fwhm"].append(image.quality.get("fwhm_pix") or np.nan)
        zp = image.photcal_row.zp if image.photcal_row is not None else None
        out["zp"].append(np.nan if zp is None else zp)
        out["poor"].append(image.quality_flag == "poor")
        out["exposure_id"].append(image.exposure_id)
        calib = image.image.calib or {}
        # a sky flat holds the pixel response only (scales below its block size), not the
        # vignetting: such frames still get the light curve's illumination fit
        out["flat_fielded"].append(
            bool(
                calib.get("precalibrated")
                or ((calib.get("masters") or {}).get("flat") and calib.get("flat_origin") != "sky")
            )
        )
        metas.append(image.meta)
    table = Table(
        {
            "image_id": np.array(out["image_id"], np.int64),
            "mjd_utc": np.array(out["mjd_utc"], float),
            "filter": np.array(out["filter"], dtype=str) if rows else np.zeros(0, str),
            "fwhm": np.array(out["fwhm"], float),
            "zp": np.array(out["zp"], float),
            "poor": np.array(out["poor"], bool),
            "exposure_id": np.array(out["exposure_id"], np.int64),
            "flat_fielded": np.array(out["flat_fielded"], bool),
        }
    )
    sites = Counter(
        (m.get("site_lat_deg"), m.get("site_lon_deg"), m.get("site_height_m") or 0.0)
        for m in metas
        if m.get("site_lat_deg") is not None and m.get("site_lon_deg") is not None
    )
    location = None
    if sites:
        (lat, lon, height), _ = sites.most_common(1)[0]
        location = site_location(float(lat), float(lon) if lon <= 180 else float(lon) - 360.0, float(height))
    else:
        log.warning("no site latitude/longitude in the frames' metadata: BJD_TDB is geocentric, no airmass")
    return table, location


def pool_source_ids(session: Session, target: Source, *, mag_window: float | None) -> list[int]:
    """The target and the sources of its field (and association) within ``mag_window`` of it."""
    rows = session.execute(
        select(Source.id, Source.mean_mag).where(
            Source.field == target.field, Source.provenance_id == target.provenance_id
        )
    ).all()
    own = target.mean_mag or {}
    ids = [target.id]
    for sid, mags in rows:
        if sid == target.id:
            continue
        if mag_window is None or not own:
            ids.append(sid)
            continue
        diffs = [
            abs(float(v) - float(own[b]))
            for b, v in (mags or {}).items()
            if b in own and v is not None and own[b] is not None
        ]
        if not diffs or min(diffs) <= mag_window:
            ids.append(sid)
    return ids


def bright_source_ids(session: Session, *, field: str | None, provenance_id: str, n: int) -> list[int]:
    """The ``n`` sources of a field with the brightest mean magnitude (any filter)."""
    rows = session.execute(
        select(Source.id, Source.mean_mag).where(Source.field == field, Source.provenance_id == provenance_id)
    ).all()
    ranked = sorted(
        (min((float(v) for v in (m or {}).values() if v is not None), default=np.inf), sid) for sid, m in rows
    )
    return [sid for _, sid in ranked[:n]]


def source_table(session: Session, *, provenance_id: str | None = None, field: str | None = None) -> Table:
    """Source rows as a Table: id, field, ra, dec [deg], x_ref, y_ref [pix], n_epochs, mag_<filter>."""
    from astropy.table import Table

    stmt = select(Source).order_by(Source.id)
    if provenance_id is not None:
        stmt = stmt.where(Source.provenance_id == provenance_id)
    if field is not None:
        stmt = stmt.where(Source.field == field)
    rows = session.scalars(stmt).all()
    bands = sorted({b for s in rows for b in (s.mean_mag or {})})
    table = Table(
        {
            "source_id": np.array([s.id for s in rows], np.int64),
            "field": np.array([s.field or "" for s in rows], dtype=str) if rows else np.zeros(0, str),
            "ra_deg": np.array([np.nan if s.ra_deg is None else s.ra_deg for s in rows], float),
            "dec_deg": np.array([np.nan if s.dec_deg is None else s.dec_deg for s in rows], float),
            "x_ref": np.array([np.nan if s.x_ref is None else s.x_ref for s in rows], float),
            "y_ref": np.array([np.nan if s.y_ref is None else s.y_ref for s in rows], float),
            "n_epochs": np.array([s.n_epochs for s in rows], np.int64),
            "provenance_id": np.array([s.provenance_id for s in rows], dtype=str)
            if rows
            else np.zeros(0, str),
        }
    )
    for band in bands:
        values = [(s.mean_mag or {}).get(band) for s in rows]
        table[f"mag_{band}"] = np.array([np.nan if v is None else v for v in values], float)
        table[f"mag_{band}"].unit = "mag"
    table["ra_deg"].unit = table["dec_deg"].unit = "deg"
    table["x_ref"].unit = table["y_ref"].unit = "pix"
    return table
