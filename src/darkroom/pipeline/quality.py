"""The quality stage: poor frames by the configured limits, a table and a plot per night.

Wiring only: :func:`darkroom.detect.flag_poor_frames` decides.

``quality`` (one unit per night)
    The configured :class:`~darkroom.detect.QualityLimits` flag poor frames:
    the ``image_quality`` row's ``flag`` is ``good`` or ``poor``, its ``reason``
    says why. A per-frame table (with the night's summary in its metadata) and a plot
    of FWHM, sky and source count against time go to
    ``reports/quality/<provenance>/quality_<night>.ecsv`` and ``.png`` (recorded in the
    rows' ``values``), so other limits make files beside these, not over them. Per night
    because a limit may be relative to the night's median.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.detect.settings import QualityLimits
from darkroom.pipeline._products import jsonable, safe_file_name
from darkroom.pipeline.extract import FIGURE_KEYS
from darkroom.pipeline.products import ImageProducts, extracted_images
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import ImageQuality
from darkroom.repo.store import atomic_path

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# flagging and plotting (darkroom.detect.quality: sep, astropy.stats) load when a unit runs.

__all__ = ["QualityStage"]

log = logging.getLogger(__name__)


class QualityStage(Stage):
    """Flag poor frames by the configured limits; a per-night table and plot in ``reports/``."""

    name = "quality"
    reads = ("extract",)
    settings = ("astrometry.limits",)

    def plan(self, session: Session) -> list[Unit]:
        done = set(
            session.scalars(
                select(ImageQuality.image_id).where(ImageQuality.provenance_id == self.provenance_id)
            )
        )
        by_night: dict[str, list[tuple[ImageProducts, dict]]] = defaultdict(list)
        for image, meta in extracted_images(session, self.upstream):
            by_night[image.night or "unknown"].append((image, meta))
        units = []
        for night, items in sorted(by_night.items()):
            if all(im.id in done for im, _ in items):
                continue
            frames = []
            for image, meta in items:
                q = image.quality or {}
                frames.append(
                    {
                        "image_id": image.id,
                        "file": Path(meta["raw_path"]).name,
                        "field": image.field or "",
                        "filter": image.filter or "",
                        "time_utc": image.time_mid_utc.isoformat() if image.time_mid_utc else "",
                        "mjd": image.mjd_mid,
                        **{k: q.get(k) for k in FIGURE_KEYS},
                    }
                )
            units.append(Unit(key=f"night:{night}", payload={"night": night, "frames": frames}))
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        from astropy.table import Table
        from astropy.time import Time

        from darkroom.detect import flag_poor_frames, plot_quality, summarize_nights

        limits: QualityLimits = self.config
        night = unit.payload["night"]
        frames = unit.payload["frames"]
        columns: dict[str, Any] = {
            "image_id": np.array([f["image_id"] for f in frames], dtype=np.int64),
            "file": np.array([f["file"] for f in frames], dtype=str),
            "field": np.array([f["field"] for f in frames], dtype=str),
            "filter": np.array([f["filter"] for f in frames], dtype=str),
            "time_utc": np.array([f["time_utc"] for f in frames], dtype=str),
            "mjd": np.array([np.nan if f["mjd"] is None else f["mjd"] for f in frames], dtype=float),
        }
        for key in FIGURE_KEYS:
            values = [f.get(key) for f in frames]
            columns[key] = np.array([np.nan if v is None else v for v in values], dtype=float)
        figures = Table(columns)
        figures["night"] = np.array([night] * len(frames), dtype=str)
        units = {"fwhm_pix": "pix", "fwhm_arcsec": "arcsec", "sky_adu": "adu", "sky_rms_adu": "adu"}
        for key, unit_name in units.items():
            figures[key].unit = unit_name
        flagged = flag_poor_frames(figures, limits=limits)
        timed = flagged[np.isfinite(flagged["mjd"])]
        timed["time"] = Time(np.asarray(timed["mjd"], dtype=float), format="mjd", scale="utc")
        summary = summarize_nights(timed if len(timed) else flagged, night_column="night")
        name = f"quality_{safe_file_name(night)}"
        table_path = self.product_path("reports", "quality", self.provenance_id, f"{name}.ecsv")
        plot_path = self.product_path("reports", "quality", self.provenance_id, f"{name}.png")
        out = flagged.copy()
        out.meta["night"] = night
        out.meta["provenance_id"] = self.provenance_id
        out.meta["limits"] = limits.model_dump(mode="json")
        out.meta["summary"] = jsonable({c: summary[c][0] for c in summary.colnames}) if len(summary) else {}
        with atomic_path(table_path) as tmp:
            out.write(tmp, format="ascii.ecsv")
        if len(timed):
            with atomic_path(plot_path) as tmp:
                plot_quality(timed, tmp, title=f"image quality, night {night}")
        return {
            "flags": [
                (int(i), bool(poor), str(reason))
                for i, poor, reason in zip(
                    flagged["image_id"], flagged["poor"], flagged["poor_reason"], strict=True
                )
            ],
            "table_path": self.relative(table_path),
            "plot_path": self.relative(plot_path) if len(timed) else None,
            "n_poor": int(np.count_nonzero(flagged["poor"])),
        }

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        figures = {f["image_id"]: f for f in unit.payload["frames"]}
        for image_id, poor, reason in result["flags"]:
            f = figures.get(image_id, {})
            session.add(
                ImageQuality(
                    image_id=image_id,
                    provenance_id=self.provenance_id,
                    fwhm_pix=f.get("fwhm_pix"),
                    ellipticity=f.get("ellipticity"),
                    sky_adu=f.get("sky_adu"),
                    sky_rms_adu=f.get("sky_rms_adu"),
                    n_sources=f.get("n_sources"),
                    flag="poor" if poor else "good",
                    reason=reason or None,
                    values={"table": result["table_path"], "plot": result["plot_path"]},
                )
            )
        if result["n_poor"]:
            log.info("night %s: %d poor frames", unit.payload["night"], result["n_poor"])

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's quality rows and its per-night tables and plots."""
        rows = session.scalars(
            select(ImageQuality.values).where(ImageQuality.provenance_id == self.provenance_id)
        ).all()
        self.remove_files(sorted({p for v in rows for p in (v or {}).values() if isinstance(p, str)}))
        session.execute(delete(ImageQuality).where(ImageQuality.provenance_id == self.provenance_id))
