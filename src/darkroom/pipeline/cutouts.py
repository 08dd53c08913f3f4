"""``cutouts``: one cube per target with SDSS frames, wired to the registry and the file store.

One cube per target with a covering field (:mod:`darkroom.surveys.cubes`), written as FITS under
``OUT/cubes/raDDD/``; targets whose cube file exists are skipped. Then all cubes are gathered
into ``OUT/cubes.h5`` and ``OUT/index.csv``. ``darkroom cutouts`` runs :func:`run_cutouts`,
``darkroom run`` the :class:`CutoutStage` (one unit for all targets).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.errors import DarkroomError
from darkroom.io.atomic import atomic_path, atomic_write_path, remove_orphan_temps
from darkroom.pipeline._products import safe_name
from darkroom.pipeline.sdss import FIELD_SURVEY, FILE_SURVEY
from darkroom.pipeline.stage import Unit
from darkroom.pipeline.survey_stage import SurveyStage
from darkroom.repo.models import Download, Target
from darkroom.repo.registry import Registry
from darkroom.surveys.cubes import FrameCache, cube_index, target_cube
from darkroom.surveys.cutouts import read_cube, write_cube, write_cube_set
from darkroom.surveys.sdss import FieldId, fpm_name, frame_name
from darkroom.surveys.settings import SurveysConfig

__all__ = ["CutoutReport", "CutoutStage", "cube_path", "cut_cubes", "cutout_jobs", "run_cutouts"]

log = logging.getLogger(__name__)


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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(out_dir)
    t0 = time.perf_counter()
    report = CutoutReport()
    report.n_targets = len(jobs)
    # targets of one field together: the frame cache then reads each frame once
    jobs.sort(key=lambda j: (j["field"], j["name"]))
    cache = FrameCache()

    def one(job: dict) -> str:
        if job["path"].is_file():
            return "existing"
        frames = {b: (cache.get(p, job["fpm"].get(b)) if p else None) for b, p in job["frames"].items()}
        pmra, pmdec, epoch = job["motion"]
        made = target_cube(
            frames,
            ra_deg=job["ra"],
            dec_deg=job["dec"],
            pmra_masyr=pmra,
            pmdec_masyr=pmdec,
            epoch_jyear=epoch,
            size=size,
            bands=list(bands),
        )
        ra, dec, cube, mask, centres = made.ra_deg, made.dec_deg, made.cube, made.mask, made.centres
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
    index = cube_index(rows)
    h5_path, index_path = out_dir / "cubes.h5", out_dir / "index.csv"
    with atomic_path(h5_path) as tmp:
        write_cube_set(
            tmp, cubes, masks, names=[f"{j['catalog']}/{j['name']}" for j in present],
            ra_deg=[j["ra"] for j in present], dec_deg=[j["dec"] for j in present], bands=bands,
        )  # fmt: skip
    with atomic_path(index_path) as tmp:
        index.write(tmp, format="ascii.csv")
    return h5_path, index_path
