"""Survey data for the registered targets: target import, ZTF light curves (and SDSS frames and
cutouts, :mod:`darkroom.pipeline.sdss`), wired to the registry.

Workers (threads: the work is waiting on the network and on bzip2/zlib, which release the GIL)
fetch, keep the raw reply in the shared cache and write the product files, each atomically
under a deterministic name; only the driver thread writes the registry, in small batches. A
run killed at any moment therefore leaves no half-written file and no row without its file; the
next run asks again for what has no row (and overwrites the same names).

Each target's request ends as one ``download`` row: ``done`` (the raw reply's path and sha256,
and its light curves as ``lightcurve`` rows), ``empty`` (the archive has nothing there, or a
skip rule applied: the reason says which) or ``failed`` with the reason. Done and empty targets
are not asked again unless ``refresh``; failed ones are retried on the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from darkroom.analysis.lcfile import write_lc_file
from darkroom.errors import DarkroomError
from darkroom.io.atomic import TEMP_PREFIX, atomic_path, remove_orphan_temps, sha256_file
from darkroom.pipeline._products import jsonable
from darkroom.pipeline.queries import safe_name
from darkroom.pipeline.runner import one_line
from darkroom.pipeline.stage import Stage, Unit
from darkroom.repo.models import Download, Lightcurve, Target, utcnow
from darkroom.repo.registry import Registry
from darkroom.surveys.http import HttpClient, load_credentials
from darkroom.surveys.settings import SurveysConfig
from darkroom.surveys.ztf import (
    ZtfConfig,
    cache_path,
    fetch_lightcurves,
    parse_reply,
    query_for_target,
    reduce_reply,
)

__all__ = [
    "DownloadRecorder",
    "DriveReport",
    "SurveysConfig",
    "ZtfDownloader",
    "drive_threaded",
    "import_targets",
    "resolve_cache_dir",
    "target_rows",
]

log = logging.getLogger(__name__)


def resolve_cache_dir(root: Path, config: SurveysConfig) -> Path:
    """The shared cache folder (``~`` expanded; a relative path is relative to the repository)."""
    path = Path(config.cache_dir).expanduser()
    return path if path.is_absolute() else Path(root) / path


# --- targets -----------------------------------------------------------------------------------


def import_targets(
    registry: Registry, targets: Table, *, catalog: str, batch_size: int = 2000
) -> tuple[int, int]:
    """Register a target table (:mod:`darkroom.surveys.targets`) under ``catalog``.

    Targets already registered under the same catalogue and name are kept as they are.
    Returns (new, already known).
    """
    mag_cols = [c for c in targets.colnames if c.startswith("mag_")]
    with registry.session() as s:
        known = set(s.scalars(select(Target.name).where(Target.catalog == catalog)))
    rows = []
    n_known = 0
    names = np.asarray(targets["name"]).astype(str)
    cols = {
        c: np.asarray(targets[c], dtype=float)
        for c in ("ra_deg", "dec_deg", "epoch_jyear", "pmra_masyr", "pmdec_masyr", "parallax_mas")
    }
    mags = {c[4:]: np.asarray(targets[c], dtype=float) for c in mag_cols}
    now = utcnow()
    for i, name in enumerate(names):
        if name in known:
            n_known += 1
            continue
        known.add(name)

        def num(c: str, i: int = i) -> float | None:
            v = cols[c][i]
            return float(v) if np.isfinite(v) else None

        rows.append(
            {
                "catalog": catalog,
                "name": name,
                "ra_deg": float(cols["ra_deg"][i]),
                "dec_deg": float(cols["dec_deg"][i]),
                "epoch_jyear": num("epoch_jyear"),
                "pmra_masyr": num("pmra_masyr"),
                "pmdec_masyr": num("pmdec_masyr"),
                "parallax_mas": num("parallax_mas"),
                "mags": {b: float(v[i]) for b, v in mags.items() if np.isfinite(v[i])},
                "meta": {},
                "created_utc": now,
            }
        )
    for start in range(0, len(rows), batch_size):
        with registry.session() as s:
            s.execute(insert(Target), rows[start : start + batch_size])
    return len(rows), n_known


def target_rows(session: Session, *, ids: Iterable[int] | None = None) -> list[Target]:
    """Registered targets (all, or these ids) in id order."""
    q = select(Target).order_by(Target.id)
    if ids is not None:
        q = q.where(Target.id.in_(list(ids)))
    return list(session.scalars(q))


# --- the threaded driver -------------------------------------------------------------------------


@dataclass
class DriveReport:
    """What a threaded survey step did."""

    step: str
    n_planned: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, state: str) -> None:
        self.counts[state] = self.counts.get(state, 0) + 1


def drive_threaded(
    registry: Registry,
    stage: Stage,
    units: list[Unit],
    *,
    workers: int,
    progress: Callable[[int, int], None] | None = None,
    commit_every: int = 64,
    commit_seconds: float = 1.0,
) -> DriveReport:
    """Run ``stage.run`` on a pool of threads with at most ``2 * workers`` units in flight; the
    calling thread alone records the results (``stage.record``), committing every
    ``commit_every`` results or ``commit_seconds``. A unit whose ``run`` raises is recorded by
    ``stage.record_failure`` with the one-line reason."""
    t0 = time.perf_counter()
    report = DriveReport(step=stage.name, n_planned=len(units))
    if progress:
        progress(0, len(units))
    pending: list[tuple[Unit, Any, BaseException | None]] = []
    last_commit = time.monotonic()
    n_done = 0

    def record_batch(batch: list[tuple[Unit, Any, BaseException | None]]) -> None:
        with registry.session() as s:
            prefetch = getattr(stage, "prefetch", None)
            if prefetch is not None:
                prefetch(s, [unit for unit, _, _ in batch])
            for unit, result, error in batch:
                if error is None:
                    state = stage.record(s, unit, result)
                else:
                    reason = one_line(error)
                    log.warning("%s %s failed: %s", stage.name, unit.key, reason)
                    stage.record_failure(s, unit, reason)
                    report.failures.append((unit.key, reason))
                    state = "failed"
                report.add(str(state))

    def flush() -> None:
        nonlocal last_commit
        if not pending:
            return
        saved = dict(report.counts), len(report.failures)
        try:
            record_batch(pending)
        except Exception:
            # one result could not be recorded: undo the batch's counts, record one by one
            report.counts, report.failures = saved[0], report.failures[: saved[1]]
            for item in pending:
                try:
                    record_batch([item])
                except Exception as exc:
                    record_batch([(item[0], None, exc)])
        pending.clear()
        last_commit = time.monotonic()

    source: Iterator[Unit] = iter(units)
    in_flight: dict[Future, Unit] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"darkroom-{stage.name}") as pool:
        for unit in source:
            in_flight[pool.submit(stage.run, unit)] = unit
            if len(in_flight) >= 2 * workers:
                break
        while in_flight:
            finished, _ = wait(list(in_flight), timeout=commit_seconds, return_when=FIRST_COMPLETED)
            for fut in finished:
                unit = in_flight.pop(fut)
                exc = fut.exception()
                pending.append((unit, None if exc else fut.result(), exc))
                n_done += 1
                nxt = next(source, None)
                if nxt is not None:
                    in_flight[pool.submit(stage.run, nxt)] = nxt
            if len(pending) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                flush()
            if progress:
                progress(n_done, len(units))
    flush()
    report.seconds = time.perf_counter() - t0
    return report


# --- ZTF -----------------------------------------------------------------------------------------


class DownloadRecorder:
    """Driver-side helpers of a stage whose units end as ``download`` rows of one survey: one
    SELECT per batch (:meth:`prefetch`), then rows updated in place or added.

    A unit's key is its download key, with `` (retry N)`` appended when the download failed N
    times before: each retry is a new unit of work, so a runner that remembers done units by
    key (the task table) still asks again for a target whose download failed.
    """

    survey: str
    _rows: dict[str, Download] | None = None

    @staticmethod
    def download_key(unit: Unit) -> str:
        return str(unit.payload.get("download_key", unit.key))

    @staticmethod
    def unit_key(download_key: str, failed_runs: int) -> str:
        return f"{download_key} (retry {failed_runs})" if failed_runs else download_key

    def prefetch(self, session: Session, units: list[Unit]) -> None:
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

    def record_failure(self, session: Session, unit: Unit, reason: str) -> None:
        row, _ = self._row(session, unit)
        row.meta = self._count_failure(row)
        row.state, row.reason, row.fetched_utc = "failed", reason, utcnow()

    def settled(self, session: Session) -> set[str]:
        """Keys already done or empty (not asked again without refresh)."""
        return set(
            session.scalars(
                select(Download.key).where(
                    Download.survey == self.survey, Download.state.in_(("done", "empty"))
                )
            )
        )

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


@dataclass
class ZtfOutcome:
    """One target's request, computed on a worker thread (files written, registry untouched)."""

    state: str  # done | empty | failed
    reason: str | None
    raw_path: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    n_rows: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    lightcurves: list[dict[str, Any]] = field(default_factory=list)


class ZtfDownloader(DownloadRecorder, Stage):
    """``ztf``: one IRSA light-curve request per target, kept raw, reduced to light curves.

    Built from the ``surveys`` section (``config``: :class:`SurveysConfig`); its provenance is
    that of ``surveys.ztf`` alone, however it is built (``darkroom survey ztf`` or
    ``darkroom run``), so both record the same light curves.
    """

    name = "ztf"
    family = "survey"
    reads = ()
    settings = ("surveys.ztf", "surveys.cache_dir", "surveys.fsync")
    executor = "thread"
    survey = "ztf"

    @classmethod
    def enabled(cls, config) -> bool:
        return "ztf" in config.surveys.run

    def __init__(
        self,
        root: Path,
        config: SurveysConfig,
        *,
        upstream: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
        critical: dict[str, Any] | None = None,
        refresh: bool = False,
        limit: int | None = None,
        client: HttpClient | None = None,
    ) -> None:
        extra = {"inputs": inputs} if inputs else {}
        super().__init__(root, config.ztf, upstream=upstream, **extra)
        self.surveys = config
        # twice the HTTP slots: threads parse, reduce and write while others wait on the archive;
        # the client's semaphore still bounds the requests in flight
        self.max_in_flight = 2 * config.ztf.http.concurrency
        self.durable = config.fsync
        self.cache_dir = resolve_cache_dir(root, config)
        self.refresh = refresh
        self.limit = limit
        self._client = client

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            http = self.config.http
            self._client = HttpClient(
                http,
                credentials=load_credentials(env_prefix=http.credentials_env, file=http.credentials_file),
            )
        return self._client

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

    def _skip_reason(self, p: dict[str, Any]) -> str | None:
        cfg: ZtfConfig = self.config
        if p["dec_deg"] < cfg.dec_min_deg:
            return f"skipped: Dec {p['dec_deg']:+.2f} deg south of dec_min_deg {cfg.dec_min_deg:+.1f}"
        mag = p.get("mag")
        if mag is not None and np.isfinite(mag) and mag > cfg.mag_limit:
            return f"skipped: {cfg.mag_band} = {mag:.2f} fainter than mag_limit {cfg.mag_limit:.2f}"
        return None

    def run(self, unit: Unit) -> ZtfOutcome:
        cfg: ZtfConfig = self.config
        p = unit.payload
        skip = self._skip_reason(p)
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
            "raw_path": str(raw),
            "sha256": _sha256(content),
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
        folder = self.product_path(
            "lightcurves",
            "ztf",
            f"ra{int(np.floor(query.ra_deg)) % 360:03d}",
            f"{safe_name(p['catalog'])}_{safe_name(p['name'])}",
        )
        lcs = []
        for lc in reduction.lightcurves:
            path = folder / f"{lc.object_id}_{lc.band}_s{lc.season}.parquet"
            meta = {
                **lc.table.meta,
                "difference": False,
                "target": p["name"],
                "catalog": p["catalog"],
                "provenance_id": self.provenance_id,
            }
            with atomic_write_path(path, durable=self.durable) as tmp:
                write_lc_file(lc.table, tmp, meta=meta)
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
        row, existed = self._row(session, unit)
        row.state, row.reason = result.state, result.reason
        row.path, row.sha256, row.size_bytes, row.n_rows = (
            result.raw_path,
            result.sha256,
            result.size_bytes,
            result.n_rows,
        )
        meta = jsonable({**result.meta, "provenance_id": self.provenance_id})
        row.meta = self._count_failure(row, meta) if result.state == "failed" else meta
        row.fetched_utc = utcnow()
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
        session.execute(delete(Lightcurve).where(Lightcurve.provenance_id == self.provenance_id))


@contextlib.contextmanager
def _quick_path(path: Path) -> Iterator[Path]:
    """Like :func:`darkroom.io.atomic.atomic_path` without fsyncs or a private folder (``surveys.fsync:
    false``, for many small files): a temporary file made exclusively (mkstemp, 0600, named so that
    ``remove_orphan_temps`` knows its writer), overwritten by the writer, renamed into place. A
    kill -9 leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{TEMP_PREFIX}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_path(path: Path, *, durable: bool):
    """The atomic-write context for ``path``: fsynced (default) or quick."""
    return atomic_path(path) if durable else _quick_path(path)


def _sha256(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()


def download_counts(session: Session) -> list[tuple[str, str, str, int]]:
    """(survey, state, reason, count) of the download rows: what ``darkroom status`` shows."""
    rows = session.execute(
        select(Download.survey, Download.state, Download.reason, func.count())
        .group_by(Download.survey, Download.state, Download.reason)
        .order_by(Download.survey, Download.state)
    ).all()
    return [(s, st, r or "", n) for s, st, r, n in rows]


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
    with registry.session() as s:
        stage.ensure_provenance(s)
        units = stage.plan(s)
    try:
        return drive_threaded(registry, stage, units, workers=stage.max_in_flight, progress=progress)
    finally:
        if client is None and stage._client is not None:
            stage._client.close()


def survey_lightcurves(
    session: Session, root: Path, *, name: str, catalog: str | None = None, survey: str | None = None
) -> Table:
    """The survey light curves of the target(s) called ``name`` stacked in time order, with
    ``survey``, ``season`` and ``key`` columns; an empty Table when there are none."""
    from astropy.table import vstack

    from darkroom.analysis.lcfile import read_lc_file

    q = select(Lightcurve).join(Target, Lightcurve.target_id == Target.id).where(Target.name == name)
    if catalog:
        q = q.where(Target.catalog == catalog)
    if survey:
        q = q.where(Lightcurve.survey == survey)
    parts = []
    for row in session.scalars(q.order_by(Lightcurve.mjd_start)):
        if not row.path:
            continue
        t = read_lc_file(Path(root) / row.path)
        t.meta.clear()
        t["survey"] = row.survey
        t["season"] = row.season or ""
        t["key"] = row.key
        parts.append(t)
    if not parts:
        return Table()
    out = vstack(parts, metadata_conflicts="silent")
    out.sort("mjd")
    out.meta.update({"target": name, "n_lightcurves": len(parts)})
    return out
