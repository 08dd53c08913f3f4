"""SDSS frames and cutout cubes for the registered targets, wired to the registry.

Three steps, each resumable:

``sdss_fields``
    For each target, the covering fields (a local field table, or SkyServer's search):
    a ``download`` row of survey ``sdss-field`` per target, ``done`` with the fields in its
    ``meta``, ``empty`` when no field covers it, or ``failed``.
``sdss``
    Each distinct file those fields need (five frames, their fpM masks, the photoObj table), once however many
    targets share it: a ``download`` row of survey ``sdss`` per file name. The file is kept in
    the shared cache as served (frames stay bzip2-compressed). A file the archive does not have
    (HTTP 404) and an object table without rows are ``empty`` with the reason, not asked again
    unless ``refresh``; other errors are ``failed`` and retried next time.
``cutouts``
    One cube per target with a covering field (:mod:`darkroom.surveys.cutouts`), written as
    FITS under ``OUT/cubes/raDDD/``; targets whose cube file exists are skipped. Then all cubes
    are gathered into ``OUT/cubes.h5`` and ``OUT/index.csv``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from darkroom.errors import DarkroomError
from darkroom.io.atomic import atomic_path, atomic_write_bytes, remove_orphan_temps, sha256_file
from darkroom.pipeline._products import jsonable
from darkroom.pipeline.queries import safe_name
from darkroom.pipeline.stage import Stage, Unit
from darkroom.pipeline.surveys import (
    DownloadRecorder,
    DriveReport,
    atomic_write_path,
    drive_threaded,
    resolve_cache_dir,
    target_rows,
)
from darkroom.repo.models import Download, Target, utcnow
from darkroom.repo.registry import Registry
from darkroom.surveys.cutouts import cutout_cube, read_cube, write_cube, write_cube_set
from darkroom.surveys.http import DownloadError, HttpClient, load_credentials
from darkroom.surveys.sdss import (
    FieldId,
    SdssConfig,
    fields_from_table,
    fpm_name,
    fpm_url,
    frame_name,
    frame_url,
    photoobj_name,
    photoobj_rows,
    photoobj_url,
    read_field_table,
    read_fpm_mask,
    read_frame,
    search_fields,
)
from darkroom.surveys.settings import SurveysConfig

__all__ = [
    "CutoutReport",
    "CutoutStage",
    "SdssDownloader",
    "SdssFieldFinder",
    "cut_cubes",
    "cutout_jobs",
    "run_cutouts",
    "run_sdss",
]

log = logging.getLogger(__name__)

FIELD_SURVEY = "sdss-field"
FILE_SURVEY = "sdss"


def _target_key(t: Target) -> str:
    return f"{t.catalog}/{t.name}"


class SdssFieldFinder(DownloadRecorder, Stage):
    """``sdss_fields``: the fields covering each target."""

    name = "sdss_fields"
    family = "survey"
    reads = ()
    settings = ("surveys.sdss", "surveys.cache_dir")
    executor = "thread"
    survey = FIELD_SURVEY

    @classmethod
    def enabled(cls, config) -> bool:
        return "sdss" in config.surveys.run or "cutouts" in config.surveys.run

    def __init__(
        self,
        root: Path,
        config: SurveysConfig,
        *,
        upstream: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
        critical: dict[str, Any] | None = None,
        client: HttpClient | None = None,
        refresh: bool = False,
        limit: int | None = None,
    ):
        extra = {"inputs": inputs} if inputs else {}
        super().__init__(root, config.sdss, upstream=upstream, **extra)
        # twice the HTTP slots: threads parse and write files while others wait on the archive;
        # the client's semaphore still bounds the requests in flight
        self.max_in_flight = 2 * config.sdss.http.concurrency
        self._client = client
        self.refresh = refresh
        self.limit = limit
        self._table: Table | None = None
        self._table_lock = threading.Lock()

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            self._client = _client(self.config)
        return self._client

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

    def run(self, unit: Unit) -> list[FieldId]:
        ra, dec = unit.payload["ra_deg"], unit.payload["dec_deg"]
        table = self.field_table
        if table is not None:
            return fields_from_table(table, ra_deg=ra, dec_deg=dec, max_fields=self.config.max_fields)
        return search_fields(self.client, self.config, ra_deg=ra, dec_deg=dec)

    def record(self, session: Session, unit: Unit, result: list[FieldId]) -> str:
        row, _ = self._row(session, unit)
        row.state = "done" if result else "empty"
        row.reason = None if result else "no SDSS field covers the target"
        row.meta = {"fields": [[f.run, f.rerun, f.camcol, f.field] for f in result]}
        row.n_rows, row.fetched_utc = len(result), utcnow()
        return row.state


@dataclass
class FileOutcome:
    state: str
    reason: str | None
    path: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    n_rows: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class SdssDownloader(DownloadRecorder, Stage):
    """``sdss``: every frame and object table the covering fields need, once each."""

    name = "sdss"
    family = "survey"
    reads = ("sdss_fields",)
    settings = ("surveys.sdss", "surveys.cache_dir")
    executor = "thread"
    survey = FILE_SURVEY

    @classmethod
    def enabled(cls, config) -> bool:
        return "sdss" in config.surveys.run or "cutouts" in config.surveys.run

    def __init__(
        self,
        root: Path,
        config: SurveysConfig,
        *,
        upstream: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
        critical: dict[str, Any] | None = None,
        client: HttpClient | None = None,
        refresh: bool = False,
    ):
        extra = {"inputs": inputs} if inputs else {}
        super().__init__(root, config.sdss, upstream=upstream, **extra)
        # twice the HTTP slots: threads parse and write files while others wait on the archive;
        # the client's semaphore still bounds the requests in flight
        self.max_in_flight = 2 * config.sdss.http.concurrency
        self.cache_dir = resolve_cache_dir(root, config)
        self._client = client
        self.refresh = refresh

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            self._client = _client(self.config)
        return self._client

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

    def run(self, unit: Unit) -> FileOutcome:
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
            try:
                content = self.client.get(url).content
            except DownloadError as exc:
                if exc.details.get("status") == 404:
                    return FileOutcome("empty", "not in the archive (HTTP 404)", meta=meta)
                return FileOutcome("failed", exc.reason, meta=meta)
            if len(kind) == 1 and content[:3] != b"BZh":
                return FileOutcome("failed", "reply is not a bzip2-compressed frame", meta=meta)
            atomic_write_bytes(path, content)
        common = {"path": str(path), "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
        if kind == "photoObj":
            try:
                n = photoobj_rows(content)
            except DarkroomError as exc:
                return FileOutcome("failed", exc.reason, meta=meta, **common)
            if n == 0:
                return FileOutcome("empty", "photoObj file holds no objects", n_rows=0, meta=meta, **common)
            return FileOutcome("done", None, n_rows=n, meta=meta, **common)
        return FileOutcome("done", None, meta=meta, **common)

    def record(self, session: Session, unit: Unit, result: FileOutcome) -> str:
        row, _ = self._row(session, unit)
        row.state, row.reason = result.state, result.reason
        row.path, row.sha256, row.size_bytes, row.n_rows = (
            result.path,
            result.sha256,
            result.size_bytes,
            result.n_rows,
        )
        meta = jsonable(result.meta)
        row.meta = self._count_failure(row, meta) if result.state == "failed" else meta
        row.fetched_utc = utcnow()
        return row.state


def _client(config: SdssConfig) -> HttpClient:
    http = config.http
    return HttpClient(
        http, credentials=load_credentials(env_prefix="DARKROOM_SDSS", file=http.credentials_file)
    )


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
    """Find the covering fields of the targets that need them, then download the missing files."""
    own = client is None
    client = client or _client(config.sdss)
    workers = 2 * config.sdss.http.concurrency  # see SdssFieldFinder.max_in_flight
    try:
        finder = SdssFieldFinder(root, config, client=client, refresh=refresh, limit=limit)
        with registry.session() as s:
            units = finder.plan(s)
        reports = [
            drive_threaded(
                registry,
                finder,
                units,
                workers=workers,
                progress=(lambda d, t: progress("fields", d, t)) if progress else None,
            )
        ]
        downloader = SdssDownloader(root, config, client=client, refresh=refresh)
        with registry.session() as s:
            units = downloader.plan(s)
        reports.append(
            drive_threaded(
                registry,
                downloader,
                units,
                workers=workers,
                progress=(lambda d, t: progress("files", d, t)) if progress else None,
            )
        )
        return reports
    finally:
        if own:
            client.close()


# --- cutouts -------------------------------------------------------------------------------------


@dataclass
class CutoutReport:
    """What a cutout run did."""

    n_targets: int = 0
    n_written: int = 0
    n_existing: int = 0
    n_masked: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    hdf5: Path | None = None
    index: Path | None = None


class _FrameCache:
    """The last ``capacity`` frames read, shared by the worker threads (one read per frame)."""

    def __init__(self, capacity: int = 20) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[str, tuple] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, path: str, fpm: str | None = None) -> tuple:
        """(image, WCS, TAI [s], mask bits from the fpM file ``fpm`` or None) of a frame file."""
        with self._lock:
            if path in self._frames:
                self._frames.move_to_end(path)
                return self._frames[path]
            loading = self._loading.setdefault(path, threading.Lock())
        with loading:
            with self._lock:
                if path in self._frames:
                    return self._frames[path]
            data, wcs, info = read_frame(path)
            tai = float(info["TAI"]) if info.get("TAI") is not None else None
            bits = None
            if fpm:
                try:
                    bits = read_fpm_mask(fpm)
                except DarkroomError as exc:  # the cube goes on without those bits
                    log.warning("%s", exc.reason)
            with self._lock:
                self._frames[path] = (data, wcs, tai, bits)
                while len(self._frames) > self.capacity:
                    self._frames.popitem(last=False)
                self._loading.pop(path, None)
            return data, wcs, tai, bits


def cube_path(out_dir: Path, catalog: str, name: str, ra_deg: float) -> Path:
    """Where one target's cube goes (binned by integer RA degree)."""
    return (
        out_dir
        / "cubes"
        / f"ra{int(np.floor(ra_deg)) % 360:03d}"
        / f"{safe_name(catalog)}_{safe_name(name)}.fits"
    )


def cutout_jobs(session: Session, *, out_dir: Path, bands: str) -> list[dict]:
    """One job per target with a covering field: its position, motion, frame and fpM files and
    the cube's path (driver side: reads the registry)."""
    files = {
        key: path
        for key, path in session.execute(
            select(Download.key, Download.path).where(
                Download.survey == FILE_SURVEY, Download.state == "done"
            )
        ).all()
    }
    jobs = []
    for t, meta in session.execute(
        select(Target, Download.meta)
        .join(Download, Download.target_id == Target.id)
        .where(Download.survey == FIELD_SURVEY, Download.state == "done")
        .order_by(Target.id)
    ).all():
        run, rerun, camcol, fld = meta["fields"][0]
        f = FieldId(run, rerun, camcol, fld)
        jobs.append(
            {
                "catalog": t.catalog,
                "name": t.name,
                "ra": t.ra_deg,
                "dec": t.dec_deg,
                "motion": (t.pmra_masyr or 0.0, t.pmdec_masyr or 0.0, t.epoch_jyear),
                "field": f,
                "frames": {b: files.get(frame_name(b, f)) for b in bands},
                "fpm": {b: files.get(fpm_name(b, f)) for b in bands},
                "path": cube_path(Path(out_dir), t.catalog, t.name, t.ra_deg),
            }
        )
    return jobs


def cut_cubes(
    jobs: list[dict],
    *,
    out_dir: Path,
    size: int,
    bands: str,
    workers: int,
    durable: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CutoutReport:
    """Cut the cubes not written yet (threads), then gather all into ``cubes.h5`` and
    ``index.csv`` (worker side: files only). ``durable=False`` skips the fsync of each cube
    file (``surveys.fsync``)."""
    from darkroom.surveys.targets import propagate_space_motion

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(out_dir)
    t0 = time.perf_counter()
    report = CutoutReport()
    report.n_targets = len(jobs)
    # targets of one field together: the frame cache then reads each frame once
    jobs.sort(key=lambda j: (j["field"], j["name"]))
    frames = _FrameCache()

    def one(job: dict) -> str:
        if job["path"].is_file():
            return "existing"
        loaded = {b: (frames.get(p, job["fpm"].get(b)) if p else None) for b, p in job["frames"].items()}
        planes = {b: (v[0], v[1], v[3]) if v else None for b, v in loaded.items()}
        ra, dec = job["ra"], job["dec"]
        pmra, pmdec, epoch = job["motion"]
        tai = next((v[2] for v in loaded.values() if v and v[2]), None)
        if epoch is not None and tai is not None:
            # TAI of SDSS frames: seconds since MJD 0
            frame_epoch = 2000.0 + (tai / 86400.0 - 51544.5) / 365.25
            ra, dec = (
                float(v)
                for v in propagate_space_motion(
                    ra, dec, pmra, pmdec, from_epoch_jyear=epoch, to_epoch_jyear=frame_epoch
                )
            )
        cube, mask, centres = cutout_cube(planes, ra_deg=ra, dec_deg=dec, size=size, bands=list(bands))
        f = job["field"]
        meta = {
            "TARGET": job["name"], "CATALOG": job["catalog"], "RA": ra, "DEC": dec,
            "RUN": f.run, "RERUN": f.rerun, "CAMCOL": f.camcol, "FIELD": f.field, "SIZE": size,
        }  # fmt: skip
        for b, c in centres.items():
            if c is not None:
                meta[f"X_{b}"], meta[f"Y_{b}"] = round(c[0], 3), round(c[1], 3)
        with atomic_write_path(job["path"], durable=durable) as tmp:
            write_cube(tmp, cube, mask, bands=list(bands), meta=meta)
        return "masked" if mask.any() else "written"

    n_done = 0
    if progress:
        progress(0, len(jobs))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="darkroom-cutouts") as pool:
        futures = [(job, pool.submit(one, job)) for job in jobs]
        for job, fut in futures:
            try:
                state = fut.result()
            except DarkroomError as exc:
                report.failures.append((f"{job['catalog']}/{job['name']}", exc.reason))
                state = "failed"
            if state == "existing":
                report.n_existing += 1
            elif state in ("written", "masked"):
                report.n_written += 1
                report.n_masked += state == "masked"
            n_done += 1
            if progress:
                progress(n_done, len(jobs))
    report.hdf5, report.index = _gather(out_dir, jobs, bands=bands, size=size)
    report.seconds = time.perf_counter() - t0
    return report


def run_cutouts(
    root: Path,
    registry: Registry,
    config: SurveysConfig,
    *,
    out_dir: Path,
    size: int | None = None,
    bands: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CutoutReport:
    """Cut a cube for every target with a covering field whose cube is not written yet; then
    gather every cube into ``cubes.h5`` and ``index.csv`` under ``out_dir``.

    A target with an epoch is moved by its proper motion to the epoch of the frames (their
    ``TAI`` header), so fast movers sit at the centre too.
    """
    cfg = config.cutouts
    bands = bands or cfg.bands
    with registry.session() as s:
        jobs = cutout_jobs(s, out_dir=out_dir, bands=bands)
    return cut_cubes(
        jobs,
        out_dir=out_dir,
        size=size or cfg.size,
        bands=bands,
        workers=workers or cfg.workers,
        durable=config.fsync,
        progress=progress,
    )


class CutoutStage(Stage):
    """``cutouts`` (``darkroom run``): the cubes of every target with SDSS frames, one unit for
    all (its key names the set of targets and files, so new ones make a new unit)."""

    name = "cutouts"
    family = "survey"
    reads = ("sdss",)
    settings = ("surveys.cutouts", "surveys.fsync")

    @classmethod
    def enabled(cls, config) -> bool:
        return "cutouts" in config.surveys.run

    def __init__(self, root: Path, config, *, upstream: tuple[str, ...] = (), inputs=None, critical=None):
        cutouts = config.cutouts if isinstance(config, SurveysConfig) else config
        extra = {"inputs": inputs} if inputs else {}
        super().__init__(root, cutouts, upstream=upstream, **extra)
        self.durable = config.fsync if isinstance(config, SurveysConfig) else True

    @property
    def out_dir(self) -> Path:
        out = Path(self.config.out_dir).expanduser()
        return out if out.is_absolute() else self.root / out

    def plan(self, session: Session) -> list[Unit]:
        jobs = cutout_jobs(session, out_dir=self.out_dir, bands=self.config.bands)
        if not jobs:
            return []
        import hashlib

        blob = repr([(j["catalog"], j["name"], sorted((j["frames"] | j["fpm"]).items())) for j in jobs])
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return [Unit(key=f"cubes of {len(jobs)} targets {digest}", payload={"jobs": jobs})]

    def run(self, unit: Unit) -> CutoutReport:
        cfg = self.config
        return cut_cubes(
            unit.payload["jobs"],
            out_dir=self.out_dir,
            size=cfg.size,
            bands=cfg.bands,
            workers=cfg.workers,
            durable=self.durable,
        )

    def record(self, session: Session, unit: Unit, result: CutoutReport) -> str:
        if result.failures:
            log.warning(
                "cutouts: %d targets failed, first: %s: %s", len(result.failures), *result.failures[0]
            )
        return "done"


def _gather(out_dir: Path, jobs: list[dict], *, bands: str, size: int) -> tuple[Path, Path]:
    """One HDF5 file and one index table for every cube file present (in target order)."""
    present = sorted((j for j in jobs if j["path"].is_file()), key=lambda j: (j["catalog"], j["name"]))
    n = len(present)
    cubes = np.full((n, len(bands), size, size), np.nan, dtype=np.float32)
    masks = np.zeros((n, len(bands), size, size), dtype=np.uint8)
    rows = []
    for i, job in enumerate(present):
        cube, mask, header = read_cube(job["path"])
        if cube.shape != cubes.shape[1:] or header.get("BANDS") != bands:
            raise DarkroomError(
                f"{job['path'].name} holds a {header.get('BANDS')} cube of shape {cube.shape}, not {bands} x {size}; "
                "use a new output folder for other sizes or bands"
            )
        cubes[i], masks[i] = cube, mask
        f = job["field"]
        rows.append(
            (i, job["catalog"], job["name"], job["ra"], job["dec"], str(job["path"].relative_to(out_dir)),
             f.run, f.camcol, f.field, int(np.count_nonzero(mask)),
             "".join(b for b, p in job["frames"].items() if p is None))
        )  # fmt: skip
    names = (
        "row",
        "catalog",
        "name",
        "ra_deg",
        "dec_deg",
        "file",
        "run",
        "camcol",
        "field",
        "n_masked",
        "bands_missing",
    )
    index = Table(rows=rows or None, names=names if rows else None)
    if not rows:
        index = Table(names=names, dtype=[int, str, str, float, float, str, int, int, int, int, str])
    h5_path, index_path = out_dir / "cubes.h5", out_dir / "index.csv"
    with atomic_path(h5_path) as tmp:
        write_cube_set(
            tmp, cubes, masks, names=[f"{j['catalog']}/{j['name']}" for j in present],
            ra_deg=[j["ra"] for j in present], dec_deg=[j["dec"] for j in present], bands=bands,
        )  # fmt: skip
    with atomic_path(index_path) as tmp:
        index.write(tmp, format="ascii.csv")
    return h5_path, index_path


def forget_sdss(session: Session) -> None:
    """Remove the SDSS download rows (files in the cache stay)."""
    session.execute(delete(Download).where(Download.survey.in_((FIELD_SURVEY, FILE_SURVEY))))
