"""The extract stage: background, sources and image-quality figures of each calibrated image.

Wiring only: :func:`darkroom.detect.extract_frame` does the work.

``extract`` (one unit per calibrated image, parallel)
    Background and sources of the SCI plane with the MASK plane honoured. The source
    catalog goes to ``catalogs/<provenance>/<image>.parquet`` (a ``source_catalog`` row);
    the figures go to that row's ``values``: ``fwhm_pix``,
    ``fwhm_arcsec``, ``ellipticity``, ``sky_adu``, ``sky_rms_adu``, ``n_sources``,
    ``n_saturated``, ``n_stars``, ``pixel_scale_arcsec`` and ``detect`` (provenance
    and catalog path).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.detect.settings import ExtractSettings
from darkroom.io.calibrated import read_calibrated
from darkroom.io.tables import parquet_bytes
from darkroom.pipeline._products import jsonable, raw_stem
from darkroom.pipeline.deferred import DeferredWrites
from darkroom.pipeline.stage import Stage, Unit, quarantine_exposure
from darkroom.repo.models import Exposure, Image, SourceCatalog

# This module is imported for every `darkroom run` (pipeline.stages lists every stage); the
# extraction (sep, scipy) and WCS handling (astropy.wcs) load when a unit runs.

__all__ = ["FIGURE_KEYS", "ExtractSettings", "ExtractStage"]

log = logging.getLogger(__name__)


#: Image-quality figures the extract stage records (``source_catalog.values``).
FIGURE_KEYS = (
    "fwhm_pix",
    "fwhm_arcsec",
    "ellipticity",
    "sky_adu",
    "sky_rms_adu",
    "n_sources",
    "n_saturated",
    "n_stars",
)


class ExtractStage(DeferredWrites, Stage):
    """Background, sources and image-quality figures of each calibrated image."""

    name = "extract"
    reads = ("calibrate",)
    settings = ("astrometry.extract",)

    def plan(self, session: Session) -> list[Unit]:
        rows = session.execute(
            select(Image, Exposure.meta)
            .join(Exposure, Exposure.id == Image.exposure_id)
            .where(Image.provenance_id.in_(self.upstream), Exposure.state == "ok")
            .order_by(Image.mjd_mid, Image.id)
        ).all()
        done = set(
            session.scalars(
                select(SourceCatalog.image_id).where(SourceCatalog.provenance_id == self.provenance_id)
            )
        )
        units = []
        for image, meta in rows:
            if image.id in done:
                continue
            calib = image.calib or {}
            units.append(
                Unit(
                    key=f"img:{image.id}",
                    payload={
                        "image_id": image.id,
                        "path": image.path,
                        "gain_e_per_adu": calib.get("gain_e_per_adu"),
                        "pixel_scale_arcsec": (meta or {}).get("pixel_scale_arcsec"),
                        "exposure_id": image.exposure_id,
                    },
                )
            )
        return units

    def run(self, unit: Unit) -> dict[str, Any]:
        from darkroom.astrom import pixel_scale_arcsec
        from darkroom.astrom.wcscards import header_wcs
        from darkroom.detect import extract_frame

        cfg: ExtractSettings = self.config
        p = unit.payload
        path = self.root / p["path"]
        scale = p.get("pixel_scale_arcsec")
        # SCI's header only for a pixel scale from its WCS (parsing it costs ~1 ms a frame)
        image = read_calibrated(path, planes=("SCI", "MASK"), header=not scale)
        sci, mask = image.sci, image.mask
        if not scale:
            wcs = header_wcs(image.header)
            scale = pixel_scale_arcsec(wcs) if wcs is not None else None
        extraction = extract_frame(
            sci,
            mask=mask,
            background_config=cfg.background,
            detect_config=cfg.detect,
            quality_config=cfg.quality,
            gain_e_per_adu=p.get("gain_e_per_adu"),
            pixel_scale_arcsec=scale,
        )
        figures = extraction.quality.model_dump()
        catalog = extraction.catalog
        catalog.meta.update(
            {
                # No registry id in the file: ids depend on the order drivers record in, and
                # products must be byte-identical whoever made them.
                "image": p["path"],
                "provenance_id": self.provenance_id,
                "quality": jsonable(figures),
                "pixel_scale_arcsec": scale,
            }
        )
        out = self.product_path("catalogs", self.provenance_id, f"{raw_stem(p['path'])}.parquet")
        # encoded here, written and fsynced (~8 ms of waiting a frame) while the next frame is
        # measured (deferred writes)
        data = parquet_bytes(catalog)
        return {
            "catalog_path": self.relative(out),
            "sha256": self.write_bytes_in_thread(out, data),
            "figures": jsonable(figures),
            "pixel_scale_arcsec": scale,
        }

    def quarantine(self, session: Session, unit: Unit, reason: str) -> None:
        quarantine_exposure(session, unit.payload.get("exposure_id"), f"{self.name}: {reason}")

    def record(self, session: Session, unit: Unit, result: dict[str, Any]) -> None:
        figures = dict(result["figures"])
        figures["pixel_scale_arcsec"] = result["pixel_scale_arcsec"]
        session.add(
            SourceCatalog(
                image_id=unit.payload["image_id"],
                provenance_id=self.provenance_id,
                path=result["catalog_path"],
                sha256=result.get("sha256"),
                n_sources=figures.get("n_sources"),
                values=figures,
            )
        )

    def forget_products(self, session: Session) -> None:
        """Delete this provenance's catalogue rows and their Parquet files."""
        rows = session.scalars(
            select(SourceCatalog).where(SourceCatalog.provenance_id == self.provenance_id)
        ).all()
        paths = [r.path for r in rows]
        session.execute(delete(SourceCatalog).where(SourceCatalog.provenance_id == self.provenance_id))
        self.remove_files(paths)
