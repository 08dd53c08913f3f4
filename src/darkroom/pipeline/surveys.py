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
are not asked again under the same provenance unless ``refresh``; failed ones are retried on the
next run (:mod:`darkroom.pipeline.survey_stage`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from darkroom.analysis.lcfile import write_lc_file
from darkroom.errors import DarkroomError
from darkroom.io.atomic import TEMP_PREFIX, atomic_path, remove_orphan_temps, sha256_file
from darkroom.pipeline.queries import safe_name
from darkroom.pipeline.runner import one_line
from darkroom.pipeline.stage import Stage, Unit
from darkroom.pipeline.survey_stage import DownloadOutcome, DownloadStage
from darkroom.repo.models import Download, Lightcurve, Provenance, Target, utcnow
from darkroom.repo.registry import Registry
from darkroom.surveys.http import HttpClient
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
    "DriveReport",
    "SurveysConfig",
    "ZtfDownloader",
    "drive_threaded",
    "import_targets",
    "target_rows",
]

log = logging.getLogger(__name__)


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


def drive_stage(
    registry: Registry, stage: Stage, *, progress: Callable[[int, int], None] | None = None
) -> DriveReport:
    """Record the stage's provenance, plan its units and drive them on ``stage.max_in_flight``
    threads (``darkroom survey ...``: the provenance is the one ``darkroom run`` records)."""
    try:
        with registry.session() as s:
            stage.ensure_provenance(s)
    except IntegrityError:  # another driver recorded the same provenance at the same moment
        pass
    with registry.session() as s:
        units = stage.plan(s)
    return drive_threaded(registry, stage, units, workers=stage.max_in_flight, progress=progress)


# --- ZTF -----------------------------------------------------------------------------------------


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
            "path": str(raw),
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
    try:
        return drive_stage(registry, stage, progress=progress)
    finally:
        if client is None and stage._client is not None:
            stage._client.close()


def survey_lightcurves(
    session: Session,
    root: Path,
    *,
    name: str,
    catalog: str | None = None,
    survey: str | None = None,
    provenance: str | None = None,
    current: Mapping[str, str] | None = None,
) -> Table:
    """The survey light curves of the target(s) called ``name`` stacked in time order, with
    ``survey``, ``season`` and ``key`` columns; an empty Table when there are none.

    ``provenance``: only the light curves of that provenance. ``current`` (stage name ->
    provenance id): light curves made by one of those stages only under that id, so the light
    curves of older settings (kept beside) do not enter twice.
    """
    from astropy.table import vstack

    from darkroom.analysis.lcfile import read_lc_file

    q = select(Lightcurve).join(Target, Lightcurve.target_id == Target.id).where(Target.name == name)
    if catalog:
        q = q.where(Target.catalog == catalog)
    if survey:
        q = q.where(Lightcurve.survey == survey)
    if provenance:
        q = q.where(Lightcurve.provenance_id == provenance)
    elif current:
        stale = select(Provenance.id).where(
            Provenance.stage.in_(list(current)), Provenance.id.not_in(list(current.values()))
        )
        q = q.where(Lightcurve.provenance_id.not_in(stale))
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
