"""``ztf``: ZTF light curves of the registered targets from IRSA, wired to the registry.

Each target's request ends as one ``download`` row (:mod:`darkroom.pipeline.survey_stage`):
``done`` (the raw reply's path and sha256, and its light curves as ``lightcurve`` rows),
``empty`` (the archive has nothing there, or a skip rule applied: the reason says which) or
``failed`` with the reason. Done and empty targets are not asked again under the same
provenance unless ``refresh``; failed ones are retried on the next run. The reply is kept raw in
the shared cache; the light curves are written under ``lightcurves/ztf/<provenance>/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from darkroom.analysis.lcfile import write_lc_file
from darkroom.errors import DarkroomError
from darkroom.io.atomic import atomic_write_path, remove_orphan_temps, sha256_bytes, sha256_file
from darkroom.pipeline._products import safe_name
from darkroom.pipeline.stage import Unit
from darkroom.pipeline.survey_stage import DownloadOutcome, DownloadStage
from darkroom.pipeline.survey_targets import target_rows
from darkroom.pipeline.threaded import DriveReport, drive_stage
from darkroom.repo.models import Lightcurve, Target, utcnow
from darkroom.repo.registry import Registry
from darkroom.surveys.settings import SurveysConfig
from darkroom.surveys.ztf import (
    ZtfConfig,
    cache_path,
    fetch_lightcurves,
    parse_reply,
    query_for_target,
    reduce_reply,
    skip_reason,
)

if TYPE_CHECKING:
    from darkroom.surveys.http import HttpClient

__all__ = ["ZtfDownloader", "ZtfOutcome", "run_ztf"]


@dataclass
class ZtfOutcome(DownloadOutcome):
    """One target's request: the raw reply kept, and the light curves it reduced to."""

    lightcurves: list[dict[str, Any]] = field(default_factory=list)


class ZtfDownloader(DownloadStage):
    """``ztf``: one IRSA light-curve request per target, kept raw, reduced to light curves.

    Built from the ``surveys`` section; its provenance is that of its declared settings
    (``surveys.ztf``), however it is built (``darkroom survey ztf`` or ``darkroom run``), so both
    record the same light curves. A changed critical parameter makes new light curves (files
    under the new provenance) beside the old ones.
    """

    name = "ztf"
    reads = ()
    settings = ("surveys.ztf", "surveys.cache_dir", "surveys.fsync")
    section = "ztf"
    steps = ("ztf",)
    survey = "ztf"

    def key(self, target: Target) -> str:
        return f"{target.catalog}/{target.name}@{self.config.collection}"

    def plan(self, session: Session) -> list[Unit]:
        cfg: ZtfConfig = self.config
        for folder in (self.cache_dir / "ztf", self.root / "lightcurves" / "ztf"):
            if folder.is_dir():
                remove_orphan_temps(folder)  # left by a run killed mid-write
        settled = set() if self.refresh else self.settled(session)
        failed = self.failed_runs(session)
        units = []
        for t in target_rows(session):
            key = self.key(t)
            if key in settled:
                continue
            units.append(
                Unit(
                    key=self.unit_key(key, failed.get(key, 0)),
                    payload={
                        "download_key": key,
                        "target_id": t.id,
                        "catalog": t.catalog,
                        "name": t.name,
                        "ra_deg": t.ra_deg,
                        "dec_deg": t.dec_deg,
                        "epoch_jyear": t.epoch_jyear,
                        "pmra_masyr": t.pmra_masyr or 0.0,
                        "pmdec_masyr": t.pmdec_masyr or 0.0,
                        "mag": (t.mags or {}).get(cfg.mag_band) if cfg.mag_band else None,
                    },
                )
            )
            if self.limit is not None and len(units) >= self.limit:
                break
        return units

    def run(self, unit: Unit) -> ZtfOutcome:
        cfg: ZtfConfig = self.config
        p = unit.payload
        skip = skip_reason(cfg, dec_deg=p["dec_deg"], mag=p.get("mag"))
        if skip:
            return ZtfOutcome("empty", skip, meta={"skipped": True})
        query = query_for_target(
            cfg,
            ra_deg=p["ra_deg"],
            dec_deg=p["dec_deg"],
            pmra_masyr=p["pmra_masyr"],
            pmdec_masyr=p["pmdec_masyr"],
            epoch_jyear=p["epoch_jyear"],
        )
        raw = cache_path(self.cache_dir, query)
        meta: dict[str, Any] = {"params": query.params(), "cached": False}
        if raw.is_file() and not self.refresh:
            content = raw.read_bytes()
            meta["cached"] = True
        else:
            try:
                reply = fetch_lightcurves(self.client, cfg, query)
            except DarkroomError as exc:
                return ZtfOutcome("failed", exc.reason, meta=meta)
            content = reply.content
            meta.update({"attempts": reply.attempts, "seconds": round(reply.seconds, 3)})
            with atomic_write_path(raw, durable=self.durable) as tmp:
                tmp.write_bytes(content)
        common = {
            "path": str(raw),
            "sha256": sha256_bytes(content),
            "size_bytes": len(content),
        }
        try:
            table = parse_reply(content)
        except DarkroomError as exc:
            return ZtfOutcome("failed", exc.reason, meta=meta, **common)
        if len(table) == 0:
            return ZtfOutcome("empty", "no ZTF epochs within the cone", n_rows=0, meta=meta, **common)
        reduction = reduce_reply(
            table, ra_deg=query.ra_deg, dec_deg=query.dec_deg, config=cfg, catalogue_mag=p.get("mag")
        )
        meta.update({"rejected": reduction.rejected, "n_seasons": reduction.n_seasons})
        # under the provenance: light curves of other settings stay beside these
        folder = self.product_path(
            "lightcurves",
            "ztf",
            self.provenance_id,
            f"ra{int(np.floor(query.ra_deg)) % 360:03d}",
            f"{safe_name(p['catalog'])}_{safe_name(p['name'])}",
        )
        lcs = []
        for lc in reduction.lightcurves:
            path = folder / f"{lc.object_id}_{lc.band}_s{lc.season}.parquet"
            lc_meta = {
                **lc.table.meta,
                "difference": False,
                "target": p["name"],
                "catalog": p["catalog"],
                "provenance_id": self.provenance_id,
            }
            with atomic_write_path(path, durable=self.durable) as tmp:
                write_lc_file(lc.table, tmp, meta=lc_meta)
            mjd = np.asarray(lc.table["mjd"])
            lcs.append(
                {
                    "key": f"ztf:{p['target_id']}:{lc.object_id}:{lc.band}:s{lc.season}",
                    "object_id": lc.object_id,
                    "band": lc.band,
                    "season": str(lc.season),
                    "path": self.relative(path),
                    "sha256": sha256_file(path),
                    "n_points": len(lc.table),
                    "n_flagged": lc.n_flagged,
                    "mjd_start": float(mjd.min()),
                    "mjd_end": float(mjd.max()),
                }
            )
        if not lcs:
            reason = "no object passed the distance and magnitude cuts"
            return ZtfOutcome("empty", reason, n_rows=reduction.n_epochs, meta=meta, **common)
        return ZtfOutcome("done", None, n_rows=reduction.n_epochs, meta=meta, lightcurves=lcs, **common)

    def record(self, session: Session, unit: Unit, result: ZtfOutcome) -> str:
        _, existed = self.record_outcome(session, unit, result)
        target_id = unit.payload["target_id"]
        if existed:  # asked before (refresh, or a retry): its light curves are replaced
            session.execute(
                delete(Lightcurve).where(
                    Lightcurve.target_id == target_id,
                    Lightcurve.survey == "ztf",
                    Lightcurve.provenance_id == self.provenance_id,
                )
            )
        if result.lightcurves:
            session.execute(
                insert(Lightcurve),
                [
                    {
                        **lc,
                        "provenance_id": self.provenance_id,
                        "target_id": target_id,
                        "survey": "ztf",
                        "time_scale": "utc",
                        "meta": {
                            "collection": self.config.collection,
                            "download_key": self.download_key(unit),
                        },
                        "created_utc": utcnow(),
                    }
                    for lc in result.lightcurves
                ],
            )
        return result.state

    def forget_products(self, session: Session) -> None:
        """This provenance's light curves (rows and files) and the download rows settled under it."""
        paths = list(
            session.scalars(select(Lightcurve.path).where(Lightcurve.provenance_id == self.provenance_id))
        )
        session.execute(delete(Lightcurve).where(Lightcurve.provenance_id == self.provenance_id))
        self.remove_files(paths)
        super().forget_products(session)


def run_ztf(
    root: Path,
    registry: Registry,
    config: SurveysConfig,
    *,
    refresh: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    client: HttpClient | None = None,
) -> DriveReport:
    """Download and reduce ZTF light curves for the registered targets that need them."""
    stage = ZtfDownloader(root, config, refresh=refresh, limit=limit, client=client)
    try:
        return drive_stage(registry, stage, progress=progress)
    finally:
        if client is None and stage._client is not None:
            stage._client.close()
