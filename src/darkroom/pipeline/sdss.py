"""SDSS frames for the registered targets, wired to the registry. Two steps, each resumable:

``sdss_fields``
    For each target, the covering fields (a local field table, or SkyServer's search):
    a ``download`` row of survey ``sdss-field`` per target, ``done`` with the fields in its
    ``meta``, ``empty`` when no field covers it, or ``failed``.
``sdss``
    Each distinct file those fields need (five frames, their fpM masks, the photoObj table), once
    however many targets share it: a ``download`` row of survey ``sdss`` per file name. The file is
    kept in the shared cache as served (frames stay bzip2-compressed). A file the archive does not
    have (HTTP 404) and an object table without rows are ``empty`` with the reason, not asked again
    unless ``refresh``; other errors are ``failed`` and retried next time.

The cubes cut from those frames are :mod:`darkroom.pipeline.cutouts`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.errors import DarkroomError
from darkroom.io.atomic import atomic_write_bytes, remove_orphan_temps, sha256_file
from darkroom.pipeline.stage import Unit
from darkroom.pipeline.survey_stage import DownloadOutcome, DownloadStage
from darkroom.pipeline.survey_targets import target_rows
from darkroom.pipeline.threaded import DriveReport, drive_stage
from darkroom.repo.models import Download, Target
from darkroom.repo.registry import Registry
from darkroom.surveys.sdss import (
    FieldId,
    fields_from_table,
    fpm_name,
    fpm_url,
    frame_name,
    frame_url,
    photoobj_name,
    photoobj_rows,
    photoobj_url,
    read_field_table,
    search_fields,
)
from darkroom.surveys.settings import SurveysConfig

if TYPE_CHECKING:
    from astropy.table import Table

    from darkroom.surveys.http import HttpClient

__all__ = ["FIELD_SURVEY", "FILE_SURVEY", "SdssDownloader", "SdssFieldFinder", "run_sdss"]

FIELD_SURVEY = "sdss-field"
FILE_SURVEY = "sdss"


def _target_key(t: Target) -> str:
    return f"{t.catalog}/{t.name}"


class SdssFieldFinder(DownloadStage):
    """``sdss_fields``: the fields covering each target."""

    name = "sdss_fields"
    reads = ()
    settings = ("surveys.sdss", "surveys.cache_dir")
    section = "sdss"
    steps = ("sdss", "cutouts")
    survey = FIELD_SURVEY
    credentials_env = "DARKROOM_SDSS"

    def __init__(self, root: Path, config: SurveysConfig, **kw: Any) -> None:
        super().__init__(root, config, **kw)
        self._table: Table | None = None
        self._table_lock = threading.Lock()

    @property
    def field_table(self) -> Table | None:
        """The local field tables (read once), or None to ask the search service."""
        if not self.config.field_table:
            return None
        with self._table_lock:
            if self._table is None:
                paths = [Path(p) if Path(p).is_absolute() else self.root / p for p in self.config.field_table]
                self._table = read_field_table(paths)
        return self._table

    def plan(self, session: Session) -> list[Unit]:
        settled = set() if self.refresh else self.settled(session)
        failed = self.failed_runs(session)
        units = []
        for t in target_rows(session):
            key = _target_key(t)
            if key in settled:
                continue
            payload = {"download_key": key, "target_id": t.id, "ra_deg": t.ra_deg, "dec_deg": t.dec_deg}
            units.append(Unit(key=self.unit_key(key, failed.get(key, 0)), payload=payload))
            if self.limit is not None and len(units) >= self.limit:
                break
        return units

    def run(self, unit: Unit) -> DownloadOutcome:
        ra, dec = unit.payload["ra_deg"], unit.payload["dec_deg"]
        table = self.field_table
        if table is not None:
            found = fields_from_table(table, ra_deg=ra, dec_deg=dec, max_fields=self.config.max_fields)
        else:
            found = search_fields(self.client, self.config, ra_deg=ra, dec_deg=dec)
        return DownloadOutcome(
            "done" if found else "empty",
            None if found else "no SDSS field covers the target",
            n_rows=len(found),
            meta={"fields": [[f.run, f.rerun, f.camcol, f.field] for f in found]},
        )


class SdssDownloader(DownloadStage):
    """``sdss``: every frame and object table the covering fields need, once each."""

    name = "sdss"
    reads = ("sdss_fields",)
    settings = ("surveys.sdss", "surveys.cache_dir")
    section = "sdss"
    steps = ("sdss", "cutouts")
    survey = FILE_SURVEY
    credentials_env = "DARKROOM_SDSS"

    def file_path(self, f: FieldId, name: str) -> Path:
        return (
            self.cache_dir
            / "sdss"
            / self.config.data_release
            / str(f.rerun)
            / str(f.run)
            / str(f.camcol)
            / name
        )

    def wanted(self, session: Session) -> list[tuple[str, FieldId, str]]:
        """(file name, field, kind) of every file the targets' fields need, in field order."""
        fields: set[FieldId] = set()
        for meta in session.scalars(
            select(Download.meta).where(Download.survey == FIELD_SURVEY, Download.state == "done")
        ):
            for run, rerun, camcol, fld in (meta or {}).get("fields", []):
                fields.add(FieldId(run, rerun, camcol, fld))
        out = []
        for f in sorted(fields):
            out += [(frame_name(b, f), f, b) for b in self.config.bands]
            if self.config.photoobj:
                out.append((photoobj_name(f), f, "photoObj"))
            if self.config.fpm:
                out += [(fpm_name(b, f), f, f"fpM-{b}") for b in self.config.bands]
        return out

    def plan(self, session: Session) -> list[Unit]:
        if (self.cache_dir / "sdss").is_dir():
            remove_orphan_temps(self.cache_dir / "sdss")  # left by a run killed mid-write
        settled = set() if self.refresh else self.settled(session)
        failed = self.failed_runs(session)
        return [
            Unit(
                key=self.unit_key(name, failed.get(name, 0)),
                payload={"download_key": name, "field": [f.run, f.rerun, f.camcol, f.field], "kind": kind},
            )
            for name, f, kind in self.wanted(session)
            if name not in settled
        ]

    def run(self, unit: Unit) -> DownloadOutcome:
        f = FieldId(*unit.payload["field"])
        kind = unit.payload["kind"]
        path = self.file_path(f, self.download_key(unit))
        meta = {"run": f.run, "rerun": f.rerun, "camcol": f.camcol, "field": f.field, "kind": kind}
        if kind == "photoObj":
            url = photoobj_url(self.config, f)
        elif kind.startswith("fpM-"):
            url = fpm_url(self.config, kind[4:], f)
        else:
            url = frame_url(self.config, kind, f)
        if path.is_file() and not self.refresh:
            content = path.read_bytes()
            meta["cached"] = True
        else:
            from darkroom.surveys.http import DownloadError

            try:
                content = self.client.get(url).content
            except DownloadError as exc:
                if exc.details.get("status") == 404:
                    return DownloadOutcome("empty", "not in the archive (HTTP 404)", meta=meta)
                return DownloadOutcome("failed", exc.reason, meta=meta)
            if len(kind) == 1 and content[:3] != b"BZh":
                return DownloadOutcome("failed", "reply is not a bzip2-compressed frame", meta=meta)
            atomic_write_bytes(path, content)
        common = {"path": str(path), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
        if kind == "photoObj":
            try:
                n = photoobj_rows(content)
            except DarkroomError as exc:
                return DownloadOutcome("failed", exc.reason, meta=meta, **common)
            if n == 0:
                return DownloadOutcome(
                    "empty", "photoObj file holds no objects", n_rows=0, meta=meta, **common
                )
            return DownloadOutcome("done", None, n_rows=n, meta=meta, **common)
        return DownloadOutcome("done", None, meta=meta, **common)


def run_sdss(
    root: Path,
    registry: Registry,
    config: SurveysConfig,
    *,
    refresh: bool = False,
    limit: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    client: HttpClient | None = None,
) -> list[DriveReport]:
    """Find the covering fields of the targets that need them, then download the missing files
    (the provenances are those ``darkroom run`` records)."""
    own = client is None
    finder = SdssFieldFinder(root, config, client=client, refresh=refresh, limit=limit)
    client = finder.client  # one client (and one politeness budget) for both steps
    try:
        reports = [
            drive_stage(
                registry, finder, progress=(lambda d, t: progress("fields", d, t)) if progress else None
            )
        ]
        downloader = SdssDownloader(
            root, config, upstream=(finder.provenance_id,), client=client, refresh=refresh
        )
        reports.append(
            drive_stage(
                registry, downloader, progress=(lambda d, t: progress("files", d, t)) if progress else None
            )
        )
        return reports
    finally:
        if own:
            client.close()
