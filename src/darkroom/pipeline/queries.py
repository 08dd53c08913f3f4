"""Light curves from the registry: find the object, gather its field's measurements, assemble.

Used by ``darkroom lightcurve``, :meth:`darkroom.Repository.lightcurve` and the
``lightcurves`` stage (:mod:`darkroom.pipeline.photometry`). The algorithms are
:mod:`darkroom.timeseries`; this module only queries and joins.

Finding the object
    By sky position, by name or by a pixel of one frame: :mod:`darkroom.pipeline.objects`.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.errors import BadInputError, ConfigError
from darkroom.phot.match import mean_radec
from darkroom.pipeline.objects import (
    find_rough_target,
    find_source,
    latest_provenance,
    resolve_name,
    source_at_pixel,
)
from darkroom.pipeline.rows import bright_source_ids, field_measurements, frame_table, pool_source_ids
from darkroom.repo.models import Exposure, Image, Measurement, Provenance, Source
from darkroom.timeseries.field import assemble_lightcurve, pool_window
from darkroom.timeseries.settings import LightCurveSettings, TargetConfig

if TYPE_CHECKING:
    from darkroom.config import DarkroomConfig
    from darkroom.repo.registry import Registry

__all__ = ["LightCurveContext", "query_lightcurve"]

log = logging.getLogger(__name__)


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
    #: the provenances of the frames' products (extract, quality, astrometry, associate, photometry)
    provenances: tuple[str, ...] | None = None

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
            provenances=tuple(
                stages[n].provenance_id
                for n in ("extract", "quality", "astrometry", "associate", "photometry")
                if n in stages
            ),
        )

    def with_photometry(self, session: Session, photometry_provenance: str) -> LightCurveContext:
        """The same context on another photometry provenance (and the association it read)."""
        import dataclasses

        row = session.get(Provenance, photometry_provenance)
        if row is None or row.stage != "photometry":
            raise BadInputError(f"no photometry provenance {photometry_provenance!r} in the registry")
        chain = _upstream_chain(session, photometry_provenance)
        assoc = next((pid for pid, stage in chain if stage == "associate"), self.associate_provenance)
        return dataclasses.replace(
            self,
            photometry_provenance=photometry_provenance,
            associate_provenance=assoc,
            provenances=tuple(pid for pid, _ in chain),
        )


def _upstream_chain(session: Session, provenance_id: str) -> list[tuple[str, str]]:
    """(id, stage) of a provenance and of every provenance upstream of it."""
    out, todo, seen = [], [provenance_id], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        row = session.get(Provenance, pid)
        if row is None:
            continue
        out.append((pid, row.stage))
        todo.extend(row.upstream or [])
    return out


# ----------------------------------------------------------------------------- assembly


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
            if radius_arcsec is None and target_cfg is not None and target_cfg.search_radius_arcsec:
                # a target placed at a rough position: the source the lightcurves stage took
                src, _why = find_rough_target(
                    s,
                    ra_deg=float(ra_deg),
                    dec_deg=float(dec_deg),
                    exact_radius_arcsec=radius,
                    search_radius_arcsec=target_cfg.search_radius_arcsec,
                    provenance_id=ctx.associate_provenance,
                )  # type: ignore[arg-type]
                radius = target_cfg.search_radius_arcsec
            else:
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
            latest = latest_provenance(
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
        frames, location = frame_table(s, target_images, provenances=ctx.provenances)
        src_id, src_field = src.id, src.field
        t_ra = ra_deg if ra_deg is not None else src.ra_deg
        t_dec = dec_deg if dec_deg is not None else src.dec_deg
        position = "requested" if ra_deg is not None else "source"
        if t_ra is None or t_dec is None:
            tr = meas[np.asarray(meas["source_id"]) == src_id]
            finite = np.isfinite(np.asarray(tr["ra"], float))
            if finite.any():
                t_ra, t_dec = mean_radec(np.asarray(tr["ra"])[finite], np.asarray(tr["dec"])[finite])
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
                t_ra, t_dec = mean_radec(pts[:, 0], pts[:, 1])
                position = "pointing"
                log.warning(
                    "source %d has no sky position: BJD_TDB and airmass use the frames' pointing", src_id
                )
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
