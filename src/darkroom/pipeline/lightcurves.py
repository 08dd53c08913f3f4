"""The lightcurves stage: frame transparency, mean magnitudes and the targets' light curves, per field.

Wiring only: :mod:`darkroom.timeseries.field` measures the transparency and assembles the curves;
the registry queries live in :mod:`darkroom.pipeline.rows` and :mod:`darkroom.pipeline.objects`.

``lightcurves`` (one unit per field)
    Per frame, the transparency relative to a clear frame
    (:func:`~darkroom.timeseries.field.frame_transparency`): one ``transparency`` row
    (``value``: over the median frame; ``flag`` 'poor' with the reason "low transparency
    (0.42 of clear)" or 'clear'; ``values``: ``of_clear`` over the clear-sky level the flag
    compares with, ``low``). The quality stage's verdict is never edited: a poor frame is
    one whose quality or transparency row says so (:mod:`darkroom.pipeline.products`). Per source, the mean measured magnitude per filter into
    ``Source.mean_mag``; and for each target of ``darkroom.yaml`` in the field its light
    curve, ``lightcurves/<provenance>/<name>.ecsv`` (a ``lightcurve`` row) and one PNG per
    filter and season ``<name>_<filter>_s<season>.png``.

Pixel convention: 0-based pixel centres (sep); shapes ``(ny, nx)``; fluxes in the SCI
unit (adu); times MJD UTC at mid-exposure.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from darkroom.errors import BadInputError, SolveError
from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag
from darkroom.pipeline._products import safe_name, shared_folder, short_hash
from darkroom.pipeline.objects import describe_nearest, find_rough_target, find_source
from darkroom.pipeline.products import ImageProducts, image_products
from darkroom.pipeline.rows import bright_source_ids, field_measurements, frame_table, pool_source_ids
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import (
    Image,
    Lightcurve,
    Measurement,
    Source,
    Transparency,
)
from darkroom.repo.store import atomic_path, sha256_file
from darkroom.timeseries.settings import LightCurveSettings, TargetConfig

if TYPE_CHECKING:
    from astropy.table import Table

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# light-curve algorithms (darkroom.timeseries: scipy, astropy.coordinates) load when the
# stage plans or a unit runs.

__all__ = ["LightCurveSettings", "LightCurvesStage"]

log = logging.getLogger(__name__)


class LightCurvesStage(Stage):
    """Frame transparency, mean magnitudes and the targets' light curves, per field."""

    name = "lightcurves"
    reads = ("quality", "associate", "photometry")
    settings = ("photometry.lightcurves",)
    extra_inputs = ("targets",)
    # a unit is one field's curves (~0.2 s for 80 frames once its libraries are loaded); a worker
    # first loads astropy.coordinates and matplotlib (~0.5 s): up to 3 fields, the driver is faster
    min_units_for_workers = 4

    @property
    def targets(self) -> tuple[TargetConfig, ...]:
        return tuple(self.inputs.get("targets") or ())

    def critical(self) -> dict[str, Any]:
        crit = super().critical()
        if not self.targets:
            crit.pop("input:targets", None)
        return crit

    def plan(self, session: Session) -> list[Unit]:
        from darkroom.timeseries.field import pool_window

        cfg: LightCurveSettings = self.config
        by_field: dict[tuple[str, str], list[ImageProducts]] = defaultdict(list)
        for im in image_products(session, self.upstream, need=("photcal", "association")):
            by_field[(im.association.field or "", im.association.provenance_id)].append(im)
        done = set(
            session.scalars(
                select(Transparency.image_id).where(Transparency.provenance_id == self.provenance_id)
            )
        )
        units = []
        for (field, assoc_prov), images in sorted(by_field.items()):
            if all(im.id in done for im in images):
                continue
            phot_prov = images[0].photcal_row.provenance_id
            image_ids = [im.id for im in images]
            # 'poor' is the verdict of the quality provenance this stage reads
            frames, location = frame_table(session, image_ids, provenances=self.lineage)
            # the brightest sources of the field for the frame transparency
            pool = set(
                bright_source_ids(
                    session, field=field, provenance_id=assoc_prov, n=3 * cfg.n_transparency_stars
                )
            )
            targets = []
            window = pool_window(cfg)
            for t in self.targets:
                where = dict(ra_deg=t.ra_deg, dec_deg=t.dec_deg, provenance_id=assoc_prov)
                if t.search_radius_arcsec:  # a rough position (a pointing): say which source was taken
                    src, why = find_rough_target(
                        session,
                        **where,
                        exact_radius_arcsec=cfg.match_radius_arcsec,
                        search_radius_arcsec=t.search_radius_arcsec,
                    )
                else:
                    src = find_source(session, **where, radius_arcsec=cfg.match_radius_arcsec)
                if src is None or src.field != field:
                    log.debug("target %s: no source of field %r within the match radius", t.name, field)
                    continue
                if t.search_radius_arcsec:
                    log.warning("target %s: %s", t.name, describe_nearest(src, t.ra_deg, t.dec_deg, why))
                members = pool_source_ids(session, src, mag_window=window)
                pool.update(members)
                pool.update(t.comparison_ids or ())
                targets.append({"target": t.model_dump(mode="json"), "source_id": src.id})
            meas = field_measurements(
                session, source_ids=sorted(pool), provenance_id=phot_prov, image_ids=image_ids
            )
            units.append(
                Unit(
                    key=f"field:{short_hash(field + assoc_prov)}:{short_hash(','.join(str(im.exposure_id) for im in images))}",
                    payload={
                        "field": field,
                        "association": assoc_prov,
                        "photometry": phot_prov,
                        "frames": frames,
                        "location": location,
                        "measurements": meas,
                        "targets": targets,
                    },
                )
            )
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        from darkroom.timeseries import plot_lightcurve, reference_level
        from darkroom.timeseries.earth_orientation import use_cached_earth_orientation
        from darkroom.timeseries.field import assemble_lightcurve, frame_transparency

        cfg: LightCurveSettings = self.config
        p = unit.payload
        if p["targets"]:
            # BJD_TDB and airmass need astropy's IERS table: parsed once for all the user's
            # repositories (the shared cache; the repository's own when that cannot be written)
            use_cached_earth_orientation(
                [
                    shared_folder(self.root, cfg.earth_orientation_cache_dir),
                    self.product_path("cache", "iers"),
                ]
            )
        frames: Table = p["frames"]
        value, low = frame_transparency(
            p["measurements"],
            frames,
            n_stars=cfg.n_transparency_stars,
            config=cfg.frame_transparency,
            bad_flags=cfg.lightcurve.comparison.bad_flags,
        )
        # the same per filter over the clear-sky level that the flags compare with
        of_clear = np.full(len(value), np.nan)
        bands = np.asarray(frames["filter"]).astype(str)
        for band in np.unique(bands):
            sel = bands == band
            level = reference_level(
                value[sel],
                percentile=cfg.frame_transparency.reference_percentile,
                window_epochs=cfg.frame_transparency.window_epochs,
            )
            with np.errstate(all="ignore"):
                of_clear[sel] = value[sel] / level
        products = []
        for item in p["targets"]:
            t = TargetConfig.model_validate(item["target"])
            try:
                lc = assemble_lightcurve(
                    p["measurements"],
                    frames,
                    target_id=item["source_id"],
                    ra_deg=t.ra_deg,
                    dec_deg=t.dec_deg,
                    location=p["location"],
                    settings=cfg,
                    differential=cfg.lightcurve.differential,
                    comparison_ids=t.comparison_ids,
                )
            except (BadInputError, SolveError) as exc:
                log.warning("target %s: no light curve: %s", t.name, exc.reason)
                products.append({"target": t.name, "source_id": item["source_id"], "error": exc.reason})
                continue
            lc.meta.update({"target_name": t.name, "source_id": item["source_id"], "field": p["field"]})
            stem = safe_name(t.name)
            path = self.product_path("lightcurves", self.provenance_id, f"{stem}.ecsv")
            with atomic_path(path) as tmp:
                lc.write(tmp, format="ascii.ecsv")
            plots = []
            for band in np.unique(np.asarray(lc["filter"]).astype(str)):
                for season in np.unique(np.asarray(lc["season"])):
                    part = lc[
                        (np.asarray(lc["filter"]).astype(str) == band) & (np.asarray(lc["season"]) == season)
                    ]
                    if not len(part):
                        continue
                    png = self.product_path(
                        "lightcurves",
                        self.provenance_id,
                        f"{stem}_{safe_name(band or 'none')}_s{int(season)}.png",
                    )
                    with atomic_path(png) as tmp:
                        plot_lightcurve(
                            part,
                            tmp,
                            bin_minutes=cfg.bin_minutes,
                            title=f"{t.name} ({band}, season {season})",
                        )
                    plots.append(self.relative(png))
            bjd = np.asarray(lc["bjd_tdb"], float) if "bjd_tdb" in lc.colnames else np.zeros(0)
            products.append(
                {
                    "target": t.name,
                    "source_id": item["source_id"],
                    "path": self.relative(path),
                    "sha256": sha256_file(path),
                    "plots": plots,
                    "n_points": len(lc),
                    "n_flagged": int(np.count_nonzero(np.asarray(lc["flags"])))
                    if "flags" in lc.colnames
                    else 0,
                    "bands": sorted({str(b) for b in lc["filter"]}),
                    "mjd_start": float(np.nanmin(bjd)) - 2400000.5 if bjd.size else None,
                    "mjd_end": float(np.nanmax(bjd)) - 2400000.5 if bjd.size else None,
                }
            )
        return {
            "image_ids": [int(i) for i in frames["image_id"]],
            "transparency": [None if not np.isfinite(v) else float(v) for v in value],
            "of_clear": [None if not np.isfinite(v) else float(v) for v in of_clear],
            "low": [bool(b) for b in low],
            "products": products,
        }

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        p = unit.payload
        for image_id, value, of_clear, low in zip(
            result["image_ids"], result["transparency"], result["of_clear"], result["low"], strict=True
        ):
            session.add(
                Transparency(
                    image_id=image_id,
                    provenance_id=self.provenance_id,
                    value=value,
                    flag="poor" if low else "clear",
                    reason=_transparency_reason(of_clear) if low else None,
                    values={"of_clear": of_clear, "low": low},
                )
            )
        for product in result["products"]:
            if "path" in product:
                session.add(self._lightcurve_row(p, product))
        n_low = sum(result["low"])
        if n_low:
            log.info("field %s: %d of %d frames of low transparency", p["field"], n_low, len(result["low"]))
        self._update_mean_mags(session, p)
        for product in result["products"]:
            if "error" in product:
                log.warning("light curve of %s not written: %s", product["target"], product["error"])

    def _update_mean_mags(self, session: Session, p: dict[str, Any]) -> None:
        """Source.mean_mag per filter: weighted mean of the unflagged measurements (SQL aggregate)."""
        m, i = Measurement, Image
        w = 1.0 / (m.mag_err * m.mag_err)
        bad = DEFAULT_BAD_FLAGS | int(PhotFlag.CR)
        stmt = (
            select(m.source_id, i.filter, func.sum(m.mag * w) / func.sum(w))
            .join(i, i.id == m.image_id)
            .join(Source, Source.id == m.source_id)
            .where(
                m.provenance_id == p["photometry"],
                Source.field == p["field"],
                Source.provenance_id == p["association"],
                m.mag.is_not(None),
                m.mag_err > 0,
                m.flags.op("&")(bad) == 0,
            )
            .group_by(m.source_id, i.filter)
        )
        means: dict[int, dict[str, float]] = defaultdict(dict)
        for sid, band, mean in session.execute(stmt).all():
            if mean is not None:
                means[int(sid)][band or ""] = float(mean)
        for src in session.scalars(select(Source).where(Source.id.in_(list(means)))):
            src.mean_mag = means[src.id]

    def _lightcurve_row(self, p: dict[str, Any], product: dict[str, Any]) -> Lightcurve:
        return Lightcurve(
            provenance_id=self.provenance_id,
            key=f"darkroom:{product['target']}:{p['field']}",
            source_id=product["source_id"],
            survey="darkroom",
            object_id=product["target"],
            band=",".join(product.get("bands", [])) or None,
            season=None,
            time_scale="tdb",
            mjd_start=product.get("mjd_start"),
            mjd_end=product.get("mjd_end"),
            n_points=product["n_points"],
            n_flagged=product.get("n_flagged", 0),
            path=product["path"],
            sha256=product.get("sha256"),
            meta={"plots": product.get("plots", []), "field": p["field"]},
        )

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's transparency rows, light-curve rows and their files."""
        rows = session.scalars(select(Lightcurve).where(Lightcurve.provenance_id == self.provenance_id)).all()
        paths = [r.path for r in rows] + [pl for r in rows for pl in (r.meta or {}).get("plots", [])]
        session.execute(delete(Lightcurve).where(Lightcurve.provenance_id == self.provenance_id))
        session.execute(delete(Transparency).where(Transparency.provenance_id == self.provenance_id))
        self.remove_files(paths)


def _transparency_reason(of_clear: float | None) -> str:
    return "low transparency" if of_clear is None else f"low transparency ({of_clear:.2f} of clear)"
