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
from darkroom.pipeline.queries import safe_name
from darkroom.pipeline.stage import Unit
from darkroom.pipeline.survey_stage import DownloadOutcome, DownloadStage, SurveyStage
from darkroom.pipeline.surveys import DriveReport, atomic_write_path, drive_stage, target_rows
from darkroom.repo.models import Download, Target
from darkroom.repo.registry import Registry
from darkroom.surveys.cutouts import cutout_cube, read_cube, write_cube, write_cube_set
from darkroom.surveys.http import DownloadError, HttpClient
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


class CutoutStage(SurveyStage):
    """``cutouts`` (``darkroom run``): the cubes of every target with SDSS frames, one unit for
    all (its key names the set of targets and files, so new ones make a new unit)."""

    name = "cutouts"
    reads = ("sdss",)
    settings = ("surveys.cutouts", "surveys.fsync")
    section = "cutouts"
    steps = ("cutouts",)

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
