"""Finding the object of a light-curve query in the registry: by sky position, by name, or by a
pixel of one frame.

By sky position: the nearest source of the associate provenance within the radius (the latest
association that has sources there when the configuration's has not run). By name: a target of
``darkroom.yaml`` (spaces, case and ``-``/``_`` ignored), else a ``source_id`` of the local
reference catalogue. By pixel ``(x, y)`` (0-based) of a frame: through that frame's WCS, or, in
a field without an absolute WCS, its ``to_reference`` transform into the field's reference
frame, where the nearest source within ``match_radius_pix`` is taken.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from darkroom.catalogs import resolve_catalog_source
from darkroom.errors import BadInputError
from darkroom.pipeline.products import ImageProducts, image_products
from darkroom.repo.models import Exposure, Image, Provenance, Source
from darkroom.timeseries.settings import TargetConfig

if TYPE_CHECKING:
    from darkroom.pipeline.queries import LightCurveContext

# Imported (through the lightcurves stage) for every `darkroom run`: the sky matching
# (darkroom.phot.match: scipy, astropy.coordinates) loads when a source is looked up.

__all__ = ["find_source", "latest_provenance", "resolve_name", "source_at_pixel"]

log = logging.getLogger(__name__)


def _norm_name(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text).lower()


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
    from darkroom.phot.match import match_catalogs

    if not sources:
        return None
    ra = np.array([s.ra_deg for s in sources], float)
    dec = np.array([s.dec_deg for s in sources], float)
    i, j, _ = match_catalogs(np.array([ra_deg]), np.array([dec_deg]), ra, dec, radius_arcsec=radius_arcsec)
    return sources[int(j[0])] if i.size else None


def _brightness(src: Source) -> float:
    """The source's brightest mean magnitude over its bands (inf when it has none)."""
    mags = [float(m) for m in (src.mean_mag or {}).values() if m is not None and math.isfinite(float(m))]
    return min(mags) if mags else math.inf


def find_rough_target(
    session: Session,
    *,
    ra_deg: float,
    dec_deg: float,
    exact_radius_arcsec: float,
    search_radius_arcsec: float,
    provenance_id: str | None,
) -> tuple[Source | None, str]:
    """The source a roughly known position (a frame's pointing, RA/Dec [deg]) stands for, and why.

    A source within ``exact_radius_arcsec`` means the pointing keywords hold the target's own
    coordinates (as observatory schedulers write them): the nearest is taken. Otherwise the
    position is the telescope's pointing, off the target by the mount's error, and the nearest
    star is as often a faint neighbour as the target; observers point at their target, so the
    brightest source within ``search_radius_arcsec`` is taken.
    """
    src = find_source(
        session,
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        radius_arcsec=exact_radius_arcsec,
        provenance_id=provenance_id,
    )
    if src is not None:
        return src, "the source at that position"
    near = _sources_near(session, ra_deg, dec_deg, search_radius_arcsec, provenance_id)
    if not near:
        return None, f"no source within {search_radius_arcsec:g} arcsec"
    from darkroom.catalogs.reference import angular_separation_deg

    ra = np.array([s.ra_deg for s in near], float)
    dec = np.array([s.dec_deg for s in near], float)
    sep_arcsec = 3600.0 * np.asarray(angular_separation_deg(ra_deg, dec_deg, ra, dec), float)
    inside = [s for s, d in zip(near, sep_arcsec, strict=True) if d <= search_radius_arcsec]
    if not inside:
        return None, f"no source within {search_radius_arcsec:g} arcsec"
    best = min(inside, key=lambda s: (_brightness(s), s.id))
    return (
        best,
        f"the brightest source within {search_radius_arcsec:g} arcsec (none within {exact_radius_arcsec:g})",
    )


def describe_nearest(src: Source, ra_deg: float, dec_deg: float, why: str) -> str:
    """One line naming the source taken for a rough position (RA, Dec [deg]) and why."""
    from darkroom.catalogs.reference import angular_separation_deg

    sep = 3600.0 * float(angular_separation_deg(ra_deg, dec_deg, src.ra_deg, src.dec_deg))
    mags = ", ".join(f"{band} {m:.2f}" for band, m in sorted((src.mean_mag or {}).items()) if m is not None)
    mag = f", mean magnitude {mags}" if mags else ""
    return (
        f"taking source {src.id} at RA {src.ra_deg:.5f}, Dec {src.dec_deg:+.5f}{mag}, {sep:.1f} arcsec from "
        f"RA {ra_deg:.5f}, Dec {dec_deg:+.5f}: {why}"
    )


def latest_provenance(session: Session, stage: str, where) -> str | None:
    """The newest provenance of ``stage`` among those ``where`` selects (None: none)."""
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
    latest = latest_provenance(session, "associate", Provenance.id.in_(list(by_prov)))
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
    source = resolve_catalog_source(ctx.reference_catalog, ctx.root)
    if source is not None and getattr(source, "kind", None) == "file":
        from darkroom.catalogs import read_catalog_file

        path = Path(source.path)
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


def _frame_image(
    session: Session, frame: str | Path, provenances: Sequence[str] | None = None
) -> ImageProducts:
    """The image of a raw or calibrated file (path, or a unique file name) with its products."""
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
    products = image_products(session, provenances, image_ids=[im.id for im in hits], only_ok=False)
    with_astrom = [im for im in products if im.astrom_row is not None]
    return max(with_astrom or products, key=lambda im: im.id)


def source_at_pixel(
    ctx: LightCurveContext, session: Session, *, x: float, y: float, frame: str | Path
) -> Source:
    """The source at 0-based pixel (x, y) of a frame (WCS, or the reference pixel frame)."""
    from darkroom.astrom import AffineTransform
    from darkroom.pipeline.astrometry import wcs_from_astrom

    image = _frame_image(session, frame, ctx.provenances)
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
