"""Time-domain analysis wired to the registry: ``darkroom analyze`` and rates (light curves come
from :mod:`darkroom.pipeline.lightcurve_import` or from the lightcurves stage).

* :func:`analyze` runs the quality checker and the finders on every object (all its
  light curves together) and writes ``properties`` (one row per object), ``detection``
  rows and, with injections, ``injection`` rows and simulated detections, all under the
  analysis provenance ``sha256(analysis settings)``: a re-run skips objects that have
  their properties row; a changed parameter makes new rows beside the old. The searched
  epochs and the injection efficiency go to ``analysis/<provenance>/searched.nc``
  (xarray, netCDF, written atomically).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.analysis.finders import AnalysisConfig, load_finder
from darkroom.analysis.inject import (
    EFFICIENCY_EDGES_REL,
    fit_efficiency,
    inject,
    match_events,
    plan_injection,
    searched_histograms,
    write_netcdf_atomic,
)
from darkroom.analysis.lcfile import read_lc_file
from darkroom.analysis.periodic import find_period
from darkroom.analysis.quality import check_quality
from darkroom.analysis.transient import NoiseModel, find_transients
from darkroom.errors import DarkroomError
from darkroom.provenance import code_version, critical_params, provenance_id
from darkroom.repo.models import Detection, Injection, Lightcurve, Properties, Provenance

__all__ = ["AnalyzeReport", "analysis_provenance", "analyze", "ensure_provenance", "object_table"]

log = logging.getLogger(__name__)
ANALYSIS_STAGE = "analysis"


def ensure_provenance(session: Session, pid: str, stage: str, params: dict[str, Any]) -> None:
    if session.get(Provenance, pid) is None:
        session.add(Provenance(id=pid, stage=stage, params=params, code_version=code_version(), upstream=[]))
        session.flush()


def analysis_provenance(config: AnalysisConfig) -> tuple[str, dict[str, Any]]:
    """Provenance id and the parameters that enter it."""
    params = critical_params(config)
    return provenance_id(ANALYSIS_STAGE, params), params


#: columns the quality checker reads when every light curve of the object has them
_QUALITY_COLUMNS = ("ra", "dec", "airmass", "fwhm", "limitmag", "transparency", "flags")


def object_table(root: Path, rows: list[Lightcurve]) -> Table:
    """All light curves of one object stacked in time order, with ``lightcurve_id`` (and the
    quality checker's optional columns that all of them have)."""
    tables = []
    for lc in rows:
        t = read_lc_file(root / lc.path)
        t.meta.clear()
        t["lightcurve_id"] = np.full(len(t), lc.id, np.int64)
        tables.append(t)
    extra = [c for c in _QUALITY_COLUMNS if all(c in t.colnames for t in tables)]
    parts = [t[["mjd", "mag", "magerr", "band", "catflags", "lightcurve_id", *extra]] for t in tables]
    tab = vstack(parts, metadata_conflicts="silent")
    tab.sort("mjd")
    return tab


def _limit_mag(table: Table) -> np.ndarray | None:
    """The epochs' limiting magnitudes (``limitmag`` [mag]) for the transient finder's error floor,
    or None when the light curves do not give them."""
    return np.asarray(table["limitmag"], float) if "limitmag" in table.colnames else None


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


def analyze(
    session: Session,
    root: Path,
    config: AnalysisConfig,
    *,
    injections: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> AnalyzeReport:
    """Quality check, finders and (optionally) ``injections`` events per light curve (module doc)."""
    pid, params = analysis_provenance(config)
    ensure_provenance(session, pid, ANALYSIS_STAGE, params)
    report = AnalyzeReport(provenance_id=pid)
    finders = [load_finder(p) for p in config.user_finders]
    groups: dict[tuple[str, str], list[Lightcurve]] = defaultdict(list)
    for lc in session.scalars(select(Lightcurve).order_by(Lightcurve.id)):
        if lc.path is None:
            continue
        groups[(lc.survey, lc.object_id or f"lightcurve{lc.id}")].append(lc)
    done = set(session.scalars(select(Properties.object_key).where(Properties.provenance_id == pid)))
    rng = np.random.default_rng(config.injection.seed)
    summaries: list[dict[str, Any]] = []
    inj_rows: list[dict[str, Any]] = []
    for k, ((survey, obj), rows) in enumerate(sorted(groups.items())):
        if progress:
            progress(k, len(groups))
        key = f"{survey}:{obj}"
        try:
            tab = object_table(root, rows)
        except (OSError, DarkroomError, ValueError) as exc:
            report.failures.append(f"{key}: {exc}")
            continue
        q = check_quality(tab, config.quality)
        good = tab[q == 0]
        difference = any(bool((lc.meta or {}).get("difference")) for lc in rows)
        for lc in rows:  # searched-epoch bookkeeping, per light curve
            sel = good[good["lightcurve_id"] == lc.id]
            summaries.append(
                {
                    "band": lc.band or "",
                    "epochs_mag": np.asarray(sel["mag"]),
                    "epochs_snr": 1.0857 / np.asarray(sel["magerr"]),
                    "mjd": np.asarray(sel["mjd"]),
                }
            )
        if key in done:
            report.n_skipped += 1
            continue
        report.n_objects += 1
        target_id = rows[0].target_id
        values: dict[str, Any] = {"bands": {}, "n_flagged": int(np.sum(q != 0))}
        for band in np.unique(np.asarray(good["band"]).astype(str)):
            sel = good[np.asarray(good["band"]).astype(str) == band]
            m, e = np.asarray(sel["mag"], float), np.asarray(sel["magerr"], float)
            w = 1 / e**2
            mean = float(np.sum(w * m) / np.sum(w))
            values["bands"][band] = {
                "n": len(sel),
                "mean_mag": mean,
                "rms_mag": float(np.std(m)),
                "chi2_const": float(np.sum(w * (m - mean) ** 2)),
            }
        period = fap = None
        try:
            pr = find_period(good["mjd"], good["mag"], good["magerr"], good["band"], config.period)
            period, fap = pr.period_d, pr.fap
            values["period"] = {"power": pr.power, "amplitude": pr.amplitude, "chi2": pr.chi2}
        except DarkroomError as exc:
            values["period"] = {"skipped": exc.reason}
        events = find_transients(
            good["mjd"],
            good["mag"],
            good["magerr"],
            good["band"],
            difference=difference,
            config=config.transient,
            limit_mag=_limit_mag(good),
        )
        best_snr = max((ev.snr for ev in events), default=None)
        by_band = {lc.band: lc.id for lc in rows}
        for ev in events:
            session.add(
                Detection(
                    provenance_id=pid,
                    finder="transient",
                    lightcurve_id=by_band.get(ev.band, rows[0].id),
                    target_id=target_id,
                    mjd=ev.mjd_peak,
                    duration_d=ev.duration_d,
                    peak_mag=ev.peak_mag,
                    snr=ev.snr,
                    score=ev.snr,
                    simulated=False,
                    meta={"band": ev.band, "peak_mags": ev.peak_mags, "rise_ratio": ev.rise_ratio},
                )
            )
        report.n_detections += len(events)
        for finder in finders:
            try:
                found = finder.find(good)
            except Exception as exc:  # a user's code: record its failure, go on
                report.failures.append(f"{key}: finder {finder.name}: {type(exc).__name__}: {exc}")
                continue
            values[f"finder:{finder.name}"] = len(found)
            for d in found:
                extra = {
                    k2: v
                    for k2, v in d.items()
                    if k2 not in ("mjd", "snr", "duration_d", "peak_mag", "score")
                }
                session.add(
                    Detection(
                        provenance_id=pid,
                        finder=str(finder.name),
                        lightcurve_id=rows[0].id,
                        target_id=target_id,
                        mjd=d.get("mjd"),
                        snr=d.get("snr"),
                        duration_d=d.get("duration_d"),
                        peak_mag=d.get("peak_mag"),
                        score=d.get("score"),
                        meta=extra,
                    )
                )
            report.n_detections += len(found)
        values["transient"] = {"n_events": len(events), "best_snr": best_snr}
        session.add(
            Properties(
                provenance_id=pid,
                object_key=key,
                target_id=target_id,
                n_epochs=len(good),
                period_d=period,
                period_fap=fap,
                best_snr=best_snr,
                values=values,
            )
        )
        # injection-recovery on each light curve of the object, in simulation mode: the event is
        # added to every epoch, then the same checker and finder run; a detection the light curve
        # gives without the event is no recovery
        for lc in rows if injections else ():
            lc_tab = tab[tab["lightcurve_id"] == lc.id]
            sel = lc_tab[check_quality(lc_tab, config.quality) == 0]
            t = np.asarray(sel["mjd"], float)
            m, e, b = np.asarray(sel["mag"], float), np.asarray(sel["magerr"], float), np.asarray(sel["band"])
            # the limiting magnitude is the image's, unchanged by an injected event
            lim = _limit_mag(sel)
            known = find_transients(t, m, e, b, difference=difference, config=config.transient, limit_mag=lim)
            noise = NoiseModel(t, m, e, b, difference=difference, config=config.transient, limit_mag=lim)
            for _ in range(injections):
                plan = plan_injection(
                    t,
                    m,
                    e,
                    b,
                    rng,
                    config.injection,
                    transient=config.transient,
                    difference=difference,
                    noise=noise,
                )
                if plan is None:
                    break
                sim = lc_tab.copy(copy_data=True)
                sim["mag"], sim["magerr"] = inject(
                    np.asarray(sim["mjd"], float),
                    np.asarray(sim["mag"], float),
                    np.asarray(sim["magerr"], float),
                    plan,
                )
                sim = sim[check_quality(sim, config.quality) == 0]
                found = find_transients(
                    sim["mjd"],
                    sim["mag"],
                    sim["magerr"],
                    sim["band"],
                    difference=difference,
                    config=config.transient,
                    limit_mag=_limit_mag(sim),
                )
                hit = match_events(plan, found, config.injection, known)
                inj = Injection(
                    provenance_id=pid,
                    lightcurve_id=lc.id,
                    kind=plan.kind,
                    mjd_peak=plan.mjd_peak,
                    duration_d=plan.duration_d,
                    peak_mag=plan.peak_mag,
                    snr=plan.snr,
                    params={"amplitude": plan.amplitude, "base_mag": plan.base_mag, **plan.params},
                    recovered=hit is not None,
                )
                session.add(inj)
                session.flush()
                if hit is not None:
                    ev = found[hit]
                    det = Detection(
                        provenance_id=pid,
                        finder="transient",
                        lightcurve_id=lc.id,
                        target_id=target_id,
                        mjd=ev.mjd_peak,
                        duration_d=ev.duration_d,
                        peak_mag=ev.peak_mag,
                        snr=ev.snr,
                        score=ev.snr,
                        simulated=True,
                        injection_id=inj.id,
                    )
                    session.add(det)
                    session.flush()
                    inj.detection_id = det.id
                    report.n_recovered += 1
                report.n_injections += 1
        session.flush()
    for inj in session.scalars(select(Injection).where(Injection.provenance_id == pid)):
        inj_rows.append({"kind": inj.kind, "snr": inj.snr, "recovered": inj.recovered})
    thr = config.transient.snr_threshold
    ds = searched_histograms(
        summaries, injections=inj_rows, inj_snr_edges=tuple(thr * r for r in EFFICIENCY_EDGES_REL)
    )
    ds.attrs["provenance_id"] = pid
    ds.attrs["snr_threshold"] = config.transient.snr_threshold
    report.histogram_path = write_netcdf_atomic(ds, root / "analysis" / pid / "searched.nc")
    if progress:
        progress(len(groups), len(groups))
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
