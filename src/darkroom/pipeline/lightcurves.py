"""Light curves from the registry: find the object, gather its field's measurements, assemble.

Used by ``darkroom lightcurve``, :meth:`darkroom.Repository.lightcurve` and the
``lightcurves`` stage (:mod:`darkroom.pipeline.photometry`). The algorithms are
:mod:`darkroom.timeseries`; this module only queries and joins.

Finding the object
    By sky position (the nearest source of the associate provenance within
    ``match_radius_arcsec``), by name (a target of ``darkroom.yaml``, spaces, case and
    ``-``/``_`` ignored, else a ``source_id`` of the reference catalog file) or by a
    0-based pixel ``(x, y)`` of one frame (through that frame's WCS, or, in a field
    without an absolute WCS, its ``to_reference`` transform into the field's reference
    frame, where the nearest source within ``match_radius_pix`` is taken).

Which rows
    Every measurement of the photometry provenance of the current configuration (the
    latest one that measured the object when the configuration's has not run). The
    comparison pool is the object's field (``Source.field``) within
    ``max_mag_diff + pool_mag_margin`` of its mean magnitude.

Frame quality
    Each frame's *transparency* is the median, over the ``n_transparency_stars``
    brightest unflagged stars of the pool measured in at least 80 % of the frames, of
    the star's flux over its median flux (1 = a clear frame). A frame below
    ``frame_transparency.fraction`` of the reference level (or whose zero point says
    so) is flagged ``LOW_TRANSPARENCY``; the default light curve leaves flagged frames
    out and builds its comparison ensemble from the others (``keep_flagged`` keeps and
    flags them).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table
from sqlalchemy import Connection, and_, select
from sqlalchemy.orm import Session

from darkroom.errors import BadInputError, ConfigError
from darkroom.phot.flags import DEFAULT_BAD_FLAGS
from darkroom.phot.match import match_catalogs, radec_to_unit
from darkroom.repo.models import Exposure, Image, Measurement, Provenance, Source
from darkroom.timeseries import (
    LightCurveFlag,
    TransparencyConfig,
    build_lightcurve,
    site_location,
    split_lightcurve,
    transparency_flags,
)
from darkroom.timeseries.settings import LightCurveSettings, TargetConfig

if TYPE_CHECKING:
    from astropy.coordinates import EarthLocation

    from darkroom.config import DarkroomConfig
    from darkroom.repo.registry import Registry

__all__ = [
    "FRAME_COLUMNS",
    "QUALITY_BITS",
    "LightCurveContext",
    "LightCurveSettings",
    "TargetConfig",
    "assemble_lightcurve",
    "bright_source_ids",
    "comparison_window",
    "field_measurements",
    "find_source",
    "frame_table",
    "frame_transparency",
    "measurement_table",
    "pool_source_ids",
    "pool_window",
    "query_lightcurve",
    "resolve_name",
    "safe_name",
    "source_at_pixel",
    "source_table",
]

log = logging.getLogger(__name__)

#: Light-curve flag bits that leave a point out of the default light curve.
QUALITY_BITS = int(
    LightCurveFlag.LOW_TRANSPARENCY | LightCurveFlag.NO_ENSEMBLE | LightCurveFlag.FEW_COMPARISONS
)

#: Columns of :func:`frame_table`.
FRAME_COLUMNS = ("image_id", "mjd_utc", "filter", "fwhm", "zp", "poor", "exposure_id")


def pool_window(settings: LightCurveSettings) -> float:
    """Magnitude window [mag] of the comparison pool read from the registry."""
    widest = max(settings.lightcurve.comparison.max_mag_diff, settings.max_mag_diff_limit)
    return widest + settings.pool_mag_margin


def safe_name(text: str) -> str:
    """A file-name-safe form of a target name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text.strip())[:80] or "target"


def _norm_name(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text).lower()


# ----------------------------------------------------------------------------- context


@dataclass(frozen=True)
class LightCurveContext:
    """What a light-curve query needs: where to read, which provenances, how to assemble."""

    registry: Registry
    root: Path
    settings: LightCurveSettings
    targets: tuple[TargetConfig, ...]
    associate_provenance: str
    photometry_provenance: str
    reference_catalog: Any = None  #: ReferenceCatalogSource or None (name look-up)

    @classmethod
    def from_config(cls, root: Path, registry: Registry, config: DarkroomConfig) -> LightCurveContext:
        """The context of a repository's configuration (provenances of its stages)."""
        from darkroom.pipeline.run import all_stages

        stages = {s.name: s for s in all_stages(root, config)}
        for needed in ("associate", "photometry"):
            if needed not in stages:
                raise ConfigError(f"the pipeline has no {needed!r} stage")
        measure = stages["photometry"].config
        return cls(
            registry=registry,
            root=Path(root),
            settings=config.photometry.lightcurves,
            targets=tuple(config.targets),
            associate_provenance=stages["associate"].provenance_id,
            photometry_provenance=stages["photometry"].provenance_id,
            reference_catalog=getattr(measure, "reference_catalog", None),
        )


# ----------------------------------------------------------------------------- finding the object


def _sources_near(
    session: Session, ra_deg: float, dec_deg: float, radius_arcsec: float, provenance_id: str | None
) -> list[Source]:
    half = radius_arcsec / 3600.0
    cosd = max(math.cos(math.radians(dec_deg)), 1e-6)
    dra = min(half / cosd, 180.0)
    cond = [Source.dec_deg.between(dec_deg - half, dec_deg + half)]
    lo, hi = ra_deg - dra, ra_deg + dra
    if lo < 0 or hi >= 360:  # the box wraps through RA 0
        cond.append((Source.ra_deg >= lo % 360.0) | (Source.ra_deg <= hi % 360.0))
    else:
        cond.append(Source.ra_deg.between(lo, hi))
    if provenance_id is not None:
        cond.append(Source.provenance_id == provenance_id)
    return list(session.scalars(select(Source).where(and_(*cond))))


def _nearest_on_sky(sources: Sequence[Source], ra_deg: float, dec_deg: float, radius_arcsec: float):
    if not sources:
        return None
    ra = np.array([s.ra_deg for s in sources], float)
    dec = np.array([s.dec_deg for s in sources], float)
    i, j, _ = match_catalogs(np.array([ra_deg]), np.array([dec_deg]), ra, dec, radius_arcsec=radius_arcsec)
    return sources[int(j[0])] if i.size else None


def _latest_provenance(session: Session, stage: str, where) -> str | None:
    row = session.execute(
        select(Provenance.id)
        .where(Provenance.stage == stage, where)
        .order_by(Provenance.created_utc.desc(), Provenance.id)
        .limit(1)
    ).first()
    return None if row is None else row[0]


def find_source(
    session: Session, *, ra_deg: float, dec_deg: float, radius_arcsec: float, provenance_id: str | None
) -> Source | None:
    """The source nearest to (ra_deg, dec_deg) [deg] within ``radius_arcsec``.

    Searches ``provenance_id`` first; when that association has not run (no source of
    it exists at all), the latest associate provenance that has sources near the point.
    """
    near = _sources_near(session, ra_deg, dec_deg, radius_arcsec, provenance_id)
    best = _nearest_on_sky(near, ra_deg, dec_deg, radius_arcsec)
    if best is not None or provenance_id is None:
        return best
    if session.scalar(select(Source.id).where(Source.provenance_id == provenance_id).limit(1)) is not None:
        return None
    near = _sources_near(session, ra_deg, dec_deg, radius_arcsec, None)
    if not near:
        return None
    by_prov: dict[str, list[Source]] = {}
    for s in near:
        by_prov.setdefault(s.provenance_id, []).append(s)
    latest = _latest_provenance(session, "associate", Provenance.id.in_(list(by_prov)))
    if latest is None:
        return None
    log.warning("no association of the current configuration yet: using sources of provenance %s", latest)
    return _nearest_on_sky(by_prov[latest], ra_deg, dec_deg, radius_arcsec)


def resolve_name(ctx: LightCurveContext, name: str) -> tuple[float, float, TargetConfig | None]:
    """RA, Dec [deg] of a named object: a target of darkroom.yaml, else a reference-catalog id.

    Offline only: the reference catalog must be a local file (its ``source_id`` column
    is compared as text).
    """
    key = _norm_name(name)
    for target in ctx.targets:
        if _norm_name(target.name) == key:
            return target.ra_deg, target.dec_deg, target
    source = ctx.reference_catalog
    if source is not None and getattr(source, "kind", None) == "file":
        from darkroom.catalogs import read_catalog_file

        path = Path(source.path)
        path = path if path.is_absolute() else ctx.root / path
        if path.is_file():
            cat = read_catalog_file(path, columns=source.columns)
            ids = np.array([_norm_name(str(v)) for v in cat["source_id"]])
            hit = np.flatnonzero(ids == key)
            if hit.size:
                row = cat[int(hit[0])]
                return float(row["ra_deg"]), float(row["dec_deg"]), None
    known = ", ".join(t.name for t in ctx.targets) or "none"
    raise BadInputError(
        f"no object named {name!r}: not a target in darkroom.yaml (targets: {known}) "
        "nor an id of the local reference catalog; give --ra/--dec instead"
    )


def _frame_image(session: Session, frame: str | Path) -> Image:
    """The image of a raw or calibrated file (path, or a unique file name)."""
    text = str(frame)
    name = Path(text).name
    rows = session.execute(
        select(Image, Exposure.path).join(Exposure, Exposure.id == Image.exposure_id)
    ).all()
    exact = [im for im, raw in rows if text in (raw, im.path) or str(Path(text).resolve()) == raw]
    by_name = [im for im, raw in rows if name in (Path(raw).name, Path(im.path).name)]
    hits = exact or by_name
    if not hits:
        raise BadInputError(f"--frame {name}: no calibrated image of that file in the registry")
    with_astrom = [im for im in hits if im.astrom]
    return max(with_astrom or hits, key=lambda im: im.id)


def source_at_pixel(
    ctx: LightCurveContext, session: Session, *, x: float, y: float, frame: str | Path
) -> Source:
    """The source at 0-based pixel (x, y) of a frame (WCS, or the reference pixel frame)."""
    from darkroom.astrom import AffineTransform
    from darkroom.pipeline.astrometry import wcs_from_astrom

    image = _frame_image(session, frame)
    wcs = wcs_from_astrom(image.astrom or {})
    assoc = (image.photcal or {}).get("association") or {}
    if wcs is not None and assoc.get("coords", "sky") == "sky":
        ra, dec = wcs.all_pix2world([x], [y], 0)
        src = find_source(
            session,
            ra_deg=float(ra[0]) % 360.0,
            dec_deg=float(dec[0]),
            radius_arcsec=ctx.settings.match_radius_arcsec,
            provenance_id=ctx.associate_provenance,
        )
    else:
        t = (image.astrom or {}).get("to_reference")
        if not t or not assoc.get("field"):
            raise BadInputError(
                f"--frame {Path(str(frame)).name}: the frame has no astrometry or association yet"
            )
        xr, yr = AffineTransform(np.asarray(t["matrix"], float), np.asarray(t["offset"], float)).apply(
            np.array([x]), np.array([y])
        )
        cands = session.scalars(
            select(Source).where(
                Source.field == assoc["field"], Source.provenance_id == assoc["provenance_id"]
            )
        ).all()
        src = None
        if cands:
            d = np.hypot(
                np.array([c.x_ref for c in cands]) - xr[0], np.array([c.y_ref for c in cands]) - yr[0]
            )
            k = int(np.argmin(d))
            src = cands[k] if d[k] <= ctx.settings.match_radius_pix else None
    if src is None:
        raise BadInputError(f"no source at pixel ({x:g}, {y:g}) of {Path(str(frame)).name}")
    return src


# ----------------------------------------------------------------------------- rows


def measurement_table(rows: Sequence[Any]) -> Table:
    """Measurement rows (with ``mjd_utc``, ``filter``) as a Table; SQL NULL as NaN."""
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


def frame_table(session: Session, image_ids: Sequence[int]) -> tuple[Table, EarthLocation | None]:
    """Per-frame information (:data:`FRAME_COLUMNS`) and the observing site of most frames."""
    ids = sorted({int(i) for i in image_ids})
    rows = []
    metas = []
    for start in range(0, len(ids), 500):
        rows.extend(
            session.execute(
                select(Image, Exposure.meta)
                .join(Exposure, Exposure.id == Image.exposure_id)
                .where(Image.id.in_(ids[start : start + 500]))
            ).all()
        )
    rows.sort(key=lambda r: (r[0].mjd_mid or 0.0, r[0].id))
    out = {c: [] for c in FRAME_COLUMNS}
    for image, meta in rows:
        out["image_id"].append(image.id)
        out["mjd_utc"].append(np.nan if image.mjd_mid is None else image.mjd_mid)
        out["filter"].append(image.filter or "")
        out["fwhm"].append((image.quality or {}).get("fwhm_pix") or np.nan)
        zp = (image.photcal or {}).get("zp")
        out["zp"].append(np.nan if zp is None else zp)
        out["poor"].append(image.quality_flag == "poor")
        out["exposure_id"].append(image.exposure_id)
        metas.append(meta or {})
    table = Table(
        {
            "image_id": np.array(out["image_id"], np.int64),
            "mjd_utc": np.array(out["mjd_utc"], float),
            "filter": np.array(out["filter"], dtype=str) if rows else np.zeros(0, str),
            "fwhm": np.array(out["fwhm"], float),
            "zp": np.array(out["zp"], float),
            "poor": np.array(out["poor"], bool),
            "exposure_id": np.array(out["exposure_id"], np.int64),
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


# ----------------------------------------------------------------------------- assembly


def frame_transparency(
    meas: Table,
    frames: Table,
    *,
    n_stars: int,
    config: TransparencyConfig,
    bad_flags: int = DEFAULT_BAD_FLAGS,
    exclude_ids: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Relative transparency per frame (``frames`` order; 1 = clear) and its low-transparency flag.

    See the module docstring. Per filter: the stars measured unflagged in at least 80 %
    of that filter's frames (``exclude_ids``, e.g. the target, left out), brightest ``n_stars``
    of them; a frame with none of them
    gets NaN (not flagged). Frames whose zero point is ``config.fraction`` below the
    reference level are flagged as well.
    """
    n = len(frames)
    value = np.full(n, np.nan)
    low = np.zeros(n, bool)
    if n == 0 or len(meas) == 0:
        return value, low
    fids = np.asarray(frames["image_id"], np.int64)
    bands = np.asarray(frames["filter"]).astype(str)
    img = np.asarray(meas["image_id"], np.int64)
    src = np.asarray(meas["source_id"], np.int64)
    flux = np.asarray(meas["flux"], float)
    ok = np.isfinite(flux) & (flux > 0) & ((np.asarray(meas["flags"], np.int64) & bad_flags) == 0)
    ok &= ~np.isin(src, np.asarray(list(exclude_ids), np.int64))
    for band in np.unique(bands):
        sel_f = bands == band
        ids = fids[sel_f]
        rows = np.isin(img, ids) & ok
        if not rows.any():
            continue
        sids = np.unique(src[rows])
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids[order], img[rows])]
        mat = np.full((ids.size, sids.size), np.nan)
        mat[pos, np.searchsorted(sids, src[rows])] = flux[rows]
        coverage = np.isfinite(mat).mean(axis=0)
        keep = coverage >= 0.8
        if not keep.any():
            continue
        with np.errstate(all="ignore"):
            med = np.nanmedian(mat[:, keep], axis=0)
        brightest = np.argsort(-med)[:n_stars]
        ratio = mat[:, keep][:, brightest] / med[brightest]
        with np.errstate(all="ignore"):
            v = np.nanmedian(ratio, axis=1) if ratio.size else np.full(ids.size, np.nan)
        flagged = transparency_flags(ensemble_flux=v, config=config)
        zp = np.asarray(frames["zp"], float)[sel_f] if "zp" in frames.colnames else None
        if zp is not None and np.isfinite(zp).sum() >= 3:
            flagged |= transparency_flags(zero_point=zp, config=config)
        value[np.flatnonzero(sel_f)] = v
        low[np.flatnonzero(sel_f)] = flagged
    return value, low


def comparison_window(meas: Table, *, target_id: int, settings: LightCurveSettings) -> float:
    """The comparison magnitude window [mag]: ``comparison.max_mag_diff``, widened in 0.25 mag steps
    (up to ``max_mag_diff_limit``) until ``min_candidates`` stars qualify in every filter.

    A star qualifies as :func:`~darkroom.timeseries.differential_photometry` would take it:
    measured without ``comparison.bad_flags`` in ``comparison.min_coverage`` of the epochs,
    its magnitude (from its median flux) within the window of the target's.
    """
    comp = settings.lightcurve.comparison
    base = comp.max_mag_diff
    limit = max(base, settings.max_mag_diff_limit)
    src = np.asarray(meas["source_id"], np.int64)
    bands = np.asarray(meas["filter"]).astype(str)
    flux = np.asarray(meas["flux"], float)
    err = np.asarray(meas["flux_err"], float)
    flags = np.asarray(meas["flags"], np.int64) if "flags" in meas.colnames else np.zeros(len(meas), np.int64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(flux) & (flux > 0) & np.isfinite(err) & ((flags & comp.bad_flags) == 0)
    window = base
    for band in np.unique(bands[src == target_id]):
        sel = bands == band
        n_epochs = np.unique(np.asarray(meas["image_id"])[sel]).size
        ids = np.unique(src[sel])
        mags, cover = np.full(ids.size, np.nan), np.zeros(ids.size)
        for k, sid in enumerate(ids):
            good = sel & (src == sid) & valid
            cover[k] = good.sum() / max(n_epochs, 1)
            if good.any():
                mags[k] = -2.5 * np.log10(np.median(flux[good]))
        t = np.flatnonzero(ids == target_id)
        if not t.size or not np.isfinite(mags[t[0]]):
            continue
        ok = (ids != target_id) & np.isfinite(mags) & (cover >= comp.min_coverage - 1e-12)
        dm = np.sort(np.abs(mags[ok] - mags[t[0]]))
        need = settings.min_candidates
        wanted = float(dm[need - 1]) if dm.size >= need else limit
        if wanted > base:
            wanted = base + 0.25 * math.ceil((wanted - base) / 0.25 - 1e-9)
        window = max(window, min(wanted, limit))
    return float(window)


def _label_columns(lc: Table, meas: Table, *, calibrated: bool) -> None:
    """Units (and words) on the light-curve columns, so ECSV and Parquet files carry them.

    Units come from the measurements (flux in adu, positions in pixels...); the ensemble
    flux has the flux's unit, the FWHM is in pixels; an uncalibrated ``mag`` is named
    instrumental (-2.5 log10 of the flux in adu, no zero point).
    """
    for name in lc.colnames:
        if lc[name].unit is None and name in meas.colnames and meas[name].unit is not None:
            lc[name].unit = meas[name].unit
    flux_unit = meas["flux"].unit if "flux" in meas.colnames else None
    for name in ("ens_flux", "ens_flux_err"):
        if name in lc.colnames and lc[name].unit is None and flux_unit is not None:
            lc[name].unit = flux_unit
    if "fwhm" in lc.colnames and lc["fwhm"].unit is None:
        lc["fwhm"].unit = "pix"
        lc["fwhm"].description = "the frame's PSF FWHM"
    if "mag" in lc.colnames and not calibrated:
        lc["mag"].description = "instrumental magnitude: -2.5 log10(flux / adu), no photometric zero point"
        lc.meta["mag_system"] = "instrumental"


def assemble_lightcurve(
    meas: Table,
    frames: Table,
    *,
    target_id: int,
    ra_deg: float,
    dec_deg: float,
    location: EarthLocation | None,
    settings: LightCurveSettings,
    differential: bool = True,
    comparison_ids: Sequence[int] | None = None,
    keep_flagged: bool | None = None,
) -> Table:
    """The light curve of ``target_id`` from its pool's measurements and the frame table.

    ``meas``: rows of :func:`field_measurements` (``mjd_utc``, ``filter`` included);
    ``frames``: :func:`frame_table`. Frames of low transparency (see
    :func:`frame_transparency`), and poor frames with ``exclude_poor_frames``, are left
    out before the ensemble is chosen, and points whose light-curve flags include
    :data:`QUALITY_BITS` are dropped, unless ``keep_flagged`` (default: the
    setting), in which case everything is kept and flagged. Adds ``frame_transparency``,
    ``season`` and ``source_id`` columns; meta ``excluded_image_ids``.
    """
    keep_flagged = settings.keep_flagged if keep_flagged is None else keep_flagged
    if not np.any(np.asarray(meas["source_id"], np.int64) == target_id):
        raise BadInputError(f"source {target_id} has no measurement in this photometry")
    frames = frames.copy()
    value, low = frame_transparency(
        meas,
        frames,
        n_stars=settings.n_transparency_stars,
        config=settings.frame_transparency,
        bad_flags=settings.lightcurve.comparison.bad_flags,
        exclude_ids=(int(target_id),),
    )
    frames["transparency"] = value
    bad_frame = low.copy()
    if settings.exclude_poor_frames:
        bad_frame |= np.asarray(frames["poor"], bool)
    fids = np.asarray(frames["image_id"], np.int64)
    meas = meas.copy()
    order = np.argsort(fids)
    pos = order[np.searchsorted(fids[order], np.asarray(meas["image_id"], np.int64))]
    meas["fwhm"] = np.asarray(frames["fwhm"], float)[pos]
    if np.isfinite(np.asarray(frames["zp"], float)).any():
        meas["zp"] = np.asarray(frames["zp"], float)[pos]
    excluded = set(fids[bad_frame].tolist())
    use = meas if keep_flagged else meas[~np.isin(np.asarray(meas["image_id"], np.int64), list(excluded))]
    if not np.any(np.asarray(use["source_id"], np.int64) == target_id):
        raise BadInputError(
            f"source {target_id}: every frame it was measured in is flagged (use keep_flagged)"
        )
    comparison = settings.lightcurve.comparison
    if differential and comparison_ids is None:
        comparison = comparison.model_copy(
            update={"max_mag_diff": comparison_window(use, target_id=int(target_id), settings=settings)}
        )
    config = settings.lightcurve.model_copy(
        update={"differential": bool(differential), "comparison": comparison}
    )
    lc = build_lightcurve(
        use,
        target_id=int(target_id),
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        location=location,
        comparison_ids=None if comparison_ids is None else [int(c) for c in comparison_ids],
        config=config,
    )
    lc_ids = np.asarray(lc["image_id"], np.int64)
    pos = order[np.searchsorted(fids[order], lc_ids)]
    lc["frame_transparency"] = np.asarray(frames["transparency"], float)[pos]
    lc["frame_transparency"].description = "median flux of the field's bright stars over their medians"
    flags = np.asarray(lc["flags"], np.int64) | np.where(
        np.isin(lc_ids, list(excluded)), int(LightCurveFlag.LOW_TRANSPARENCY), 0
    )
    lc["flags"] = flags
    if not keep_flagged:
        quality = (flags & QUALITY_BITS) != 0
        if differential:
            quality |= ~np.isfinite(np.asarray(lc["rel_flux"], float))
        lc = lc[~quality]
    lc["source_id"] = np.full(len(lc), int(target_id), np.int64)
    seasons = np.zeros(len(lc), np.int64)
    for (_band, season), part in split_lightcurve(lc, season_gap_days=settings.season_gap_days).items():
        seasons[np.isin(np.asarray(lc["image_id"]), np.asarray(part["image_id"]))] = season
    lc["season"] = seasons
    _label_columns(lc, meas, calibrated=bool(np.isfinite(np.asarray(frames["zp"], float)).any()))
    lc.meta["excluded_image_ids"] = sorted(int(i) for i in excluded)
    lc.meta["comparison_window_mag"] = float(comparison.max_mag_diff)
    lc.meta["kept_flagged"] = bool(keep_flagged)
    return lc


def query_lightcurve(
    ctx: LightCurveContext,
    *,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    radius_arcsec: float | None = None,
    name: str | None = None,
    pixel: tuple[float, float] | None = None,
    frame: str | Path | None = None,
    source_id: int | None = None,
    differential: bool = False,
    comparison_ids: Sequence[int] | None = None,
    keep_flagged: bool | None = None,
) -> Table:
    """The light curve of one object from the registry (see the module docstring).

    Give exactly one of: ``ra_deg`` and ``dec_deg`` [deg] (with ``radius_arcsec``,
    default the setting), ``name``, ``pixel=(x, y)`` (0-based) with ``frame`` (a raw or
    calibrated file), or ``source_id``. Named targets bring their own comparison ids
    unless ``comparison_ids`` is given.

    Returns
    -------
    astropy.table.Table
        :func:`~darkroom.timeseries.build_lightcurve` columns (``bjd_tdb, mjd_utc,
        filter, flux, flux_err, mag, mag_err, rel_flux, rel_flux_err, airmass, fwhm,
        flags, image_id``, ...) plus ``frame_transparency``, ``season``, ``source_id``;
        in time order. meta: target, source, provenance, comparison ensemble.
    """
    modes = (
        ra_deg is not None or dec_deg is not None,
        name is not None,
        pixel is not None or frame is not None,
    )
    if (
        sum(modes) + (source_id is not None) != 1
        or (ra_deg is None) != (dec_deg is None)
        or (pixel is None) != (frame is None)
    ):
        raise BadInputError(
            "select the object by one of: --ra/--dec, --name, --pixel with --frame, a source id"
        )
    settings = ctx.settings
    target_cfg = None
    with ctx.registry.session() as s:
        if name is not None:
            ra_deg, dec_deg, target_cfg = resolve_name(ctx, name)
        if source_id is not None:
            src = s.get(Source, int(source_id))
            if src is None:
                raise BadInputError(f"no source with id {source_id}")
        elif pixel is not None:
            src = source_at_pixel(ctx, s, x=float(pixel[0]), y=float(pixel[1]), frame=frame)  # type: ignore[arg-type]
        else:
            radius = radius_arcsec if radius_arcsec is not None else settings.match_radius_arcsec
            src = find_source(
                s,
                ra_deg=float(ra_deg),
                dec_deg=float(dec_deg),
                radius_arcsec=radius,
                provenance_id=ctx.associate_provenance,
            )  # type: ignore[arg-type]
            if src is None:
                raise BadInputError(
                    f"no source within {radius:g} arcsec of RA {ra_deg:.6f}, Dec {dec_deg:+.6f} "
                    "(is the photometry done? widen --radius)"
                )
        if comparison_ids is None and target_cfg is not None:
            comparison_ids = target_cfg.comparison_ids
        prov = ctx.photometry_provenance
        target_images = s.scalars(
            select(Measurement.image_id).where(
                Measurement.source_id == src.id, Measurement.provenance_id == prov
            )
        ).all()
        if not target_images:
            latest = _latest_provenance(
                s,
                "photometry",
                Provenance.id.in_(select(Measurement.provenance_id).where(Measurement.source_id == src.id)),
            )
            if latest is None:
                raise BadInputError(f"source {src.id} has no measurement yet (run the photometry stage)")
            log.warning(
                "source %d has no measurement of the current photometry: using provenance %s", src.id, latest
            )
            prov = latest
            target_images = s.scalars(
                select(Measurement.image_id).where(
                    Measurement.source_id == src.id, Measurement.provenance_id == prov
                )
            ).all()
        window = pool_window(settings)
        pool = [
            src.id,
            *bright_source_ids(
                s, field=src.field, provenance_id=src.provenance_id, n=3 * settings.n_transparency_stars
            ),
        ]
        if differential:
            pool = sorted(
                set(pool)
                | set(pool_source_ids(s, src, mag_window=window))
                | {int(c) for c in comparison_ids or ()}
            )
        meas = field_measurements(s, source_ids=pool, provenance_id=prov, image_ids=target_images)
        frames, location = frame_table(s, target_images)
        src_id, src_field = src.id, src.field
        t_ra = ra_deg if ra_deg is not None else src.ra_deg
        t_dec = dec_deg if dec_deg is not None else src.dec_deg
        position = "requested" if ra_deg is not None else "source"
        if t_ra is None or t_dec is None:
            tr = meas[np.asarray(meas["source_id"]) == src_id]
            finite = np.isfinite(np.asarray(tr["ra"], float))
            if finite.any():
                vec = radec_to_unit(np.asarray(tr["ra"])[finite], np.asarray(tr["dec"])[finite]).sum(axis=0)
                position = "measurements"
            else:
                # a field without absolute WCS: the telescope pointing of the frames (a few
                # arcmin off: ~1 s in BJD_TDB, nothing in airmass)
                pointing = s.execute(
                    select(Exposure.ra_deg, Exposure.dec_deg)
                    .join(Image, Image.exposure_id == Exposure.id)
                    .where(Image.id.in_(sorted(set(target_images))[:2000]))
                ).all()
                pts = np.array([p for p in pointing if p[0] is not None and p[1] is not None], float)
                if not pts.size:
                    raise BadInputError(
                        f"source {src_id} has no sky position (no WCS, no pointing in the headers): "
                        "BJD_TDB needs one; select the object with --ra/--dec"
                    )
                vec = radec_to_unit(pts[:, 0], pts[:, 1]).sum(axis=0)
                position = "pointing"
                log.warning(
                    "source %d has no sky position: BJD_TDB and airmass use the frames' pointing", src_id
                )
            t_ra = float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0)
            t_dec = float(np.degrees(np.arctan2(vec[2], np.hypot(vec[0], vec[1]))))
    lc = assemble_lightcurve(
        meas,
        frames,
        target_id=src_id,
        ra_deg=float(t_ra),
        dec_deg=float(t_dec),
        location=location,
        settings=settings,
        differential=differential,
        comparison_ids=comparison_ids,
        keep_flagged=keep_flagged,
    )
    lc.meta.update(
        {
            "source_id": int(src_id),
            "field": src_field,
            "photometry_provenance": prov,
            "target_name": name if name is not None else (target_cfg.name if target_cfg else None),
            "differential": bool(differential),
            "position_from": position,
        }
    )
    return lc
