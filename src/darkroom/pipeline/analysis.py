"""Time-domain analysis wired to the registry: ``darkroom analyze`` and rates (light curves come
from :mod:`darkroom.pipeline.lightcurve_import` or from the lightcurves stage).

* :func:`analyze` runs the quality checker and the finders on every object (all its light
  curves together, :func:`~darkroom.pipeline.analysis_object.analyze_object`) and writes
  ``properties`` (one row per object), ``detection`` rows and, with injections, ``injection``
  rows and simulated detections, all under the analysis provenance ``sha256(analysis
  settings)``; a changed parameter makes new rows beside the old. The objects run serially or
  on an executor (Dask: batches of objects go to the workers, the results come back and only
  this process writes them). Results are committed every ``commit_every`` objects or
  ``commit_seconds``, an object's rows all in one transaction with its properties row, which
  marks it done: a run killed midway keeps what it committed, and a re-run skips objects that
  have their properties row and finishes the rest. Rows are recorded in object order whatever
  order the workers finish in, so a serial, a Dask and a resumed run write the same rows.
* The searched epochs (recomputed from every object's light curves, done or not) and the
  injection efficiency (from the recorded injection rows) go to
  ``analysis/<provenance>/searched.nc`` (xarray, netCDF, written atomically), so the file of a
  resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from darkroom.analysis.finders import AnalysisConfig, load_finder
from darkroom.analysis.inject import (
    EFFICIENCY_EDGES_REL,
    fit_efficiency,
    searched_histograms,
    write_netcdf_atomic,
)
from darkroom.pipeline.analysis_object import LcRef, ObjectResult, ObjectUnit, analyze_object, object_table
from darkroom.pipeline.runner import Executor, SerialExecutor, one_line
from darkroom.provenance import code_version, critical_params, provenance_id
from darkroom.repo.models import Detection, Injection, Lightcurve, Properties, Provenance
from darkroom.repo.registry import Registry

__all__ = [
    "AnalyzeReport",
    "analysis_provenance",
    "analyze",
    "ensure_provenance",
    "object_table",
    "plan_objects",
]

log = logging.getLogger(__name__)
ANALYSIS_STAGE = "analysis"
#: fewer objects to analyse than this run in this process: starting Dask workers costs seconds
SERIAL_BELOW = 16


def ensure_provenance(session: Session, pid: str, stage: str, params: dict[str, Any]) -> None:
    if session.get(Provenance, pid) is None:
        session.add(Provenance(id=pid, stage=stage, params=params, code_version=code_version(), upstream=[]))
        session.flush()


def analysis_provenance(config: AnalysisConfig) -> tuple[str, dict[str, Any]]:
    """Provenance id and the parameters that enter it."""
    params = critical_params(config)
    return provenance_id(ANALYSIS_STAGE, params), params


@dataclass
class AnalyzeReport:
    provenance_id: str
    n_objects: int = 0
    n_skipped: int = 0
    n_detections: int = 0
    n_injections: int = 0
    n_recovered: int = 0
    failures: list[str] = field(default_factory=list)
    histogram_path: Path | None = None
    executor: str = "serial"


def plan_objects(session: Session, pid: str) -> list[ObjectUnit]:
    """Every object with light-curve files, in key order (``survey:object``); ``done`` when its
    properties row of analysis provenance ``pid`` exists."""
    groups: dict[str, list[LcRef]] = defaultdict(list)
    for lc in session.scalars(select(Lightcurve).order_by(Lightcurve.id)):
        if lc.path is None:
            continue
        ref = LcRef(
            id=lc.id,
            key=lc.key,
            band=lc.band,
            path=lc.path,
            target_id=lc.target_id,
            difference=bool((lc.meta or {}).get("difference")),
        )
        groups[f"{lc.survey}:{lc.object_id or f'lightcurve{lc.id}'}"].append(ref)
    done = set(session.scalars(select(Properties.object_key).where(Properties.provenance_id == pid)))
    return [ObjectUnit(key=k, lcs=tuple(v), done=k in done) for k, v in sorted(groups.items())]


def _record(session: Session, pid: str, res: ObjectResult) -> tuple[int, int, int]:
    """Add one object's rows; returns (real detections, injections, recovered)."""
    for d in res.detections:
        session.add(Detection(provenance_id=pid, **d))
    session.add(Properties(provenance_id=pid, **(res.properties or {})))
    n_rec = 0
    for row in res.injections:
        fields = {k: v for k, v in row.items() if k != "detection"}
        inj = Injection(provenance_id=pid, **fields)
        session.add(inj)
        session.flush()
        if row["detection"] is not None:
            det = Detection(provenance_id=pid, injection_id=inj.id, **row["detection"])
            session.add(det)
            session.flush()
            inj.detection_id = det.id
            n_rec += 1
    session.flush()
    return len(res.detections), len(res.injections), n_rec


def _commit(registry: Registry, pid: str, batch: list[ObjectResult], report: AnalyzeReport) -> None:
    """Record a batch of objects in one transaction (one per object if another process recorded
    some of them meanwhile: the unique properties row says which)."""
    try:
        with registry.session() as s:
            counts = [_record(s, pid, res) for res in batch]
    except IntegrityError:
        counts = []
        for res in batch:
            try:
                with registry.session() as s:
                    q = select(Properties.id).where(
                        Properties.provenance_id == pid, Properties.object_key == res.key
                    )
                    if s.scalar(q) is None:
                        counts.append(_record(s, pid, res))
            except IntegrityError:
                continue
    report.n_objects += len(counts)
    report.n_skipped += len(batch) - len(counts)
    for n_det, n_inj, n_rec in counts:
        report.n_detections += n_det
        report.n_injections += n_inj
        report.n_recovered += n_rec


def analyze(
    registry: Registry,
    root: Path,
    config: AnalysisConfig,
    *,
    injections: int = 0,
    executor: Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
    commit_every: int = 50,
    commit_seconds: float = 2.0,
    serial_below: int = SERIAL_BELOW,
) -> AnalyzeReport:
    """Quality check, finders and (optionally) ``injections`` events per light curve (module doc).

    ``executor``: where the objects run (serial when None, or when fewer than ``serial_below``
    objects are left to analyse).
    """
    pid, params = analysis_provenance(config)
    for path in config.user_finders:  # a wrong dotted path fails here, before any work
        load_finder(path)
    with registry.session() as s:
        ensure_provenance(s, pid, ANALYSIS_STAGE, params)
    with registry.session() as s:
        units = plan_objects(s, pid)
    report = AnalyzeReport(provenance_id=pid)
    report.n_skipped = sum(u.done for u in units)
    n_todo = len(units) - report.n_skipped
    if executor is None or n_todo < max(serial_below, 2):
        executor = SerialExecutor()
    report.executor = executor.name
    fn = functools.partial(analyze_object, root=root, config=config, injections=injections)
    summaries: list[dict[str, Any]] = []
    pending: list[ObjectResult] = []
    finished: dict[str, tuple[ObjectUnit, ObjectResult | None, BaseException | None]] = {}
    n_in_order, last_commit = 0, time.monotonic()
    if progress:
        progress(0, len(units))
    try:
        for n_done, (unit, result, error) in enumerate(executor.map_units(fn, units), start=1):
            finished[unit.key] = (unit, result, error)
            # recorded in object order whatever order they finish in: the same row ids for a
            # serial, a Dask and a resumed run
            while n_in_order < len(units) and units[n_in_order].key in finished:
                u, res, err = finished.pop(units[n_in_order].key)
                n_in_order += 1
                if err is not None or res is None:
                    report.failures.append(f"{u.key}: {one_line(err) if err else 'no result'}")
                    continue
                summaries.extend(res.summaries)
                report.failures.extend(res.failures)
                if res.properties is not None:
                    pending.append(res)
            if pending and (len(pending) >= commit_every or time.monotonic() - last_commit >= commit_seconds):
                _commit(registry, pid, pending, report)
                pending, last_commit = [], time.monotonic()
            if progress:
                progress(n_done, len(units))
    except BaseException:
        if pending:  # interrupted (Ctrl-C, a lost scheduler): keep what is finished
            try:
                _commit(registry, pid, pending, report)
            except Exception:  # the registry itself failed: the original error is the one to see
                log.exception("analysis: %d finished objects not recorded", len(pending))
        raise
    if pending:
        _commit(registry, pid, pending, report)
    with registry.session() as s:
        inj_rows = [
            {"kind": kind, "snr": snr, "recovered": rec}
            for kind, snr, rec in s.execute(
                select(Injection.kind, Injection.snr, Injection.recovered)
                .where(Injection.provenance_id == pid)
                .order_by(Injection.id)
            )
        ]
    thr = config.transient.snr_threshold
    ds = searched_histograms(
        summaries, injections=inj_rows, inj_snr_edges=tuple(thr * r for r in EFFICIENCY_EDGES_REL)
    )
    ds.attrs["provenance_id"] = pid
    ds.attrs["snr_threshold"] = config.transient.snr_threshold
    report.histogram_path = write_netcdf_atomic(ds, root / "analysis" / pid / "searched.nc")
    return report


def efficiency_curve(session: Session, pid: str, edges: np.ndarray) -> dict[str, Any]:
    """Efficiency vs expected S/N of the injections of one analysis provenance; ``snr50`` (and
    ``width``) from a logistic fitted to every injection (:func:`~darkroom.analysis.inject.fit_efficiency`)."""
    from darkroom.analysis.inject import efficiency_table

    rows = session.execute(
        select(Injection.kind, Injection.snr, Injection.recovered).where(Injection.provenance_id == pid)
    ).all()
    snr = np.array([r[1] for r in rows], float)
    rec = np.array([r[2] for r in rows], bool)
    n, k, eff = efficiency_table(snr, rec, edges)
    centre = np.sqrt(edges[1:] * edges[:-1])
    half, width = (
        fit_efficiency(snr, np.ones(snr.size), rec.astype(float)) if snr.size else (math.nan, math.nan)
    )
    return {"edges": edges, "centre": centre, "n": n, "k": k, "eff": eff, "snr50": half, "width": width}
