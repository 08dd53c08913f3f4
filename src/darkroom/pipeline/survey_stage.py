"""What the survey stages share: built from the ``surveys`` section, provenance from the declared
settings, and (for downloads) one ``download`` row per thing asked of an archive.

A survey stage is built two ways with the same provenance: by ``darkroom run``
(:func:`darkroom.pipeline.stages.build_stages` hands in the settings view and the critical
values of its declared keys) and by ``darkroom survey ...`` (from the ``surveys`` section
alone: the stage computes the same critical values itself with
:func:`~darkroom.pipeline.stage.declared_critical`). So the two record the same provenance,
and what one did the other does not do again.

A download row (``survey``, ``key``) is the last answer the archive gave for one thing asked
(a target's light curves, a target's fields, one file); its ``meta`` names the provenance it
was asked under. A key is *settled* for a provenance when its row is ``done`` or ``empty``
under that provenance: a changed critical parameter therefore asks again (from the shared
cache where the request is the same), and its products are made beside the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.pipeline._products import jsonable, shared_folder
from darkroom.pipeline.stage import Stage, Unit, declared_critical
from darkroom.repo.models import Download, utcnow
from darkroom.surveys.settings import SurveysConfig

if TYPE_CHECKING:
    from darkroom.surveys.http import HttpClient

__all__ = ["DownloadOutcome", "DownloadStage", "SurveyStage", "resolve_cache_dir"]


def resolve_cache_dir(root: Path, config: SurveysConfig) -> Path:
    """The shared cache folder (``~`` expanded; a relative path is relative to the repository)."""
    return shared_folder(root, config.cache_dir)


class SurveyStage(Stage):
    """Base of the survey stages: built from the ``surveys`` section, ``self.config`` its
    sub-section ``section``; enabled when ``surveys.run`` lists one of ``steps``."""

    family = "survey"
    #: the sub-section of ``surveys`` this stage works from (``self.config``)
    section: ClassVar[str]
    #: entries of ``surveys.run`` that make ``darkroom run`` run this stage
    steps: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        root: Path,
        config: SurveysConfig,
        *,
        upstream: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
        critical: dict[str, Any] | None = None,
        lineage: tuple[str, ...] | None = None,
        refresh: bool = False,
        limit: int | None = None,
    ) -> None:
        if critical is None:  # built from the surveys section: the same values build_stages gives
            critical = declared_critical(config, self.settings, below="surveys")
        super().__init__(
            root,
            getattr(config, self.section),
            upstream=upstream,
            inputs=inputs,
            critical=critical,
            lineage=lineage,
        )
        self.cache_dir = resolve_cache_dir(self.root, config)
        self.durable = config.fsync
        self.refresh = refresh
        self.limit = limit

    @classmethod
    def enabled(cls, config: Any) -> bool:
        return any(step in config.surveys.run for step in cls.steps)


@dataclass
class DownloadOutcome:
    """One unit's answer, computed on a worker thread (files written, registry untouched)."""

    state: str  # done | empty | failed
    reason: str | None
    path: str | None = None  # the raw reply or file, as kept in the shared cache
    sha256: str | None = None
    size_bytes: int | None = None
    n_rows: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class DownloadStage(SurveyStage):
    """A survey stage whose units end as ``download`` rows of one ``survey``: one SELECT per
    batch (:meth:`prefetch`), then rows updated in place or added.

    A unit's key is its download key, with `` (retry N)`` appended when the download failed N
    times before: each retry is a new unit of work, so a runner that remembers done units by
    key (the task table) still asks again for a thing whose download failed.
    """

    executor = "thread"
    #: the ``download.survey`` of this stage's rows
    survey: ClassVar[str]
    #: environment prefix of the archive's credentials (None: the section's ``http.credentials_env``)
    credentials_env: ClassVar[str | None] = None

    def __init__(self, root: Path, config: SurveysConfig, *, client: HttpClient | None = None, **kw: Any):
        super().__init__(root, config, **kw)
        # twice the HTTP slots: threads parse, reduce and write while others wait on the archive;
        # the client's semaphore still bounds the requests in flight
        self.max_in_flight = 2 * self.config.http.concurrency
        self._client = client
        self._rows: dict[str, Download] | None = None

    @property
    def client(self) -> HttpClient:
        """The archive's HTTP client (made on first use, with the credentials of the environment)."""
        if self._client is None:
            # requests and tenacity load when an archive is asked, not for every darkroom run
            from darkroom.surveys.http import HttpClient, load_credentials

            http = self.config.http
            env = self.credentials_env or http.credentials_env
            self._client = HttpClient(
                http, credentials=load_credentials(env_prefix=env, file=http.credentials_file)
            )
        return self._client

    @staticmethod
    def download_key(unit: Unit) -> str:
        return str(unit.payload.get("download_key", unit.key))

    @staticmethod
    def unit_key(download_key: str, failed_runs: int) -> str:
        return f"{download_key} (retry {failed_runs})" if failed_runs else download_key

    def prefetch(self, session: Session, units: list[Unit]) -> None:
        """Load the rows of a batch of units in one SELECT (the threaded driver calls this)."""
        keys = [self.download_key(u) for u in units]
        self._rows = {
            row.key: row
            for row in session.scalars(
                select(Download).where(Download.survey == self.survey, Download.key.in_(keys))
            )
        }

    def _row(self, session: Session, unit: Unit) -> tuple[Download, bool]:
        """The unit's row and whether it existed before."""
        key = self.download_key(unit)
        rows = self._rows
        row = rows.get(key) if rows is not None else None
        if row is None and rows is None:
            row = session.scalars(
                select(Download).where(Download.survey == self.survey, Download.key == key)
            ).one_or_none()
        if row is not None:
            return row, True
        row = Download(survey=self.survey, key=key, target_id=unit.payload.get("target_id"), state="failed")
        session.add(row)
        if rows is not None:
            rows[key] = row
        return row, False

    @staticmethod
    def _count_failure(row: Download, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """``meta`` (or the row's) with ``failed_runs`` counted up for a failed download."""
        out = dict(meta if meta is not None else row.meta or {})
        out["failed_runs"] = int((row.meta or {}).get("failed_runs", 0)) + 1
        return out

    def record_outcome(self, session: Session, unit: Unit, result: DownloadOutcome) -> tuple[Download, bool]:
        """Write the unit's row from its outcome (under this provenance); returns (row, existed)."""
        row, existed = self._row(session, unit)
        row.state, row.reason = result.state, result.reason
        row.path, row.sha256, row.size_bytes, row.n_rows = (
            result.path,
            result.sha256,
            result.size_bytes,
            result.n_rows,
        )
        meta = jsonable({**result.meta, "provenance_id": self.provenance_id})
        row.meta = self._count_failure(row, meta) if result.state == "failed" else meta
        row.fetched_utc = utcnow()
        return row, existed

    def record(self, session: Session, unit: Unit, result: DownloadOutcome) -> str:
        return self.record_outcome(session, unit, result)[0].state

    def record_failure(self, session: Session, unit: Unit, reason: str) -> None:
        row, _ = self._row(session, unit)
        row.meta = self._count_failure(row)
        row.state, row.reason, row.fetched_utc = "failed", reason, utcnow()

    def _own_rows(self, session: Session, states: tuple[str, ...]) -> list[tuple[str, int]]:
        """(key, id) of this survey's rows in ``states`` recorded under this provenance."""
        rows = session.execute(
            select(Download.key, Download.id, Download.meta).where(
                Download.survey == self.survey, Download.state.in_(states)
            )
        ).all()
        return [
            (key, rid) for key, rid, meta in rows if (meta or {}).get("provenance_id") == self.provenance_id
        ]

    def settled(self, session: Session) -> set[str]:
        """Keys done or empty under this provenance (not asked again without refresh)."""
        return {key for key, _ in self._own_rows(session, ("done", "empty"))}

    def failed_runs(self, session: Session) -> dict[str, int]:
        """Download key -> how many runs failed to get it (of the rows now failed)."""
        return {
            key: int((meta or {}).get("failed_runs", 1))
            for key, meta in session.execute(
                select(Download.key, Download.meta).where(
                    Download.survey == self.survey, Download.state == "failed"
                )
            ).all()
        }

    def forget_products(self, session: Session) -> None:
        """Forget the rows settled under this provenance, so ``--redo`` asks again (the shared
        cache keeps the raw replies, so the same request is answered from it)."""
        ids = [rid for _, rid in self._own_rows(session, ("done", "empty"))]
        for start in range(0, len(ids), 500):
            session.execute(delete(Download).where(Download.id.in_(ids[start : start + 500])))
