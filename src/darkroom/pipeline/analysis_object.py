"""One object's analysis, as a unit of work that runs anywhere (in the driver or on a Dask worker).

:func:`analyze_object` reads the object's light curves, runs the quality checker, the finders
and the injection-recovery trials, and returns plain data (:class:`ObjectResult`): no registry,
no session. The driver (:func:`darkroom.pipeline.analysis.analyze`) records the results, so a
serial run and a Dask run write the same rows. Injection draws are seeded per light curve
(``analysis.injection.seed`` and the light curve's key), never by the order objects are
analysed in, so a resumed or parallel run draws the same events as an uninterrupted serial one.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from darkroom.analysis.finders import AnalysisConfig, Finder, load_finder
from darkroom.analysis.inject import inject, match_events, plan_injection
from darkroom.analysis.lcfile import read_lc_file
from darkroom.analysis.periodic import find_period
from darkroom.analysis.quality import check_quality
from darkroom.analysis.transient import Event, NoiseModel, find_transients
from darkroom.errors import DarkroomError

__all__ = ["LcRef", "ObjectResult", "ObjectUnit", "analyze_object", "injection_rng", "object_table"]

#: columns the quality checker reads when every light curve of the object has them
_QUALITY_COLUMNS = ("ra", "dec", "airmass", "fwhm", "limitmag", "transparency", "flags")


@dataclass(frozen=True)
class LcRef:
    """What a worker needs of one registered light curve (no ORM object crosses processes)."""

    id: int
    key: str
    band: str | None
    path: str  # relative to the repository root
    target_id: int | None
    difference: bool


@dataclass(frozen=True)
class ObjectUnit:
    """One object (all its light curves); ``done``: its properties row exists, so only the
    searched-epoch summaries are wanted (for the histograms)."""

    key: str  # survey:object
    lcs: tuple[LcRef, ...]
    done: bool = False


@dataclass
class ObjectResult:
    """What :func:`analyze_object` found, as plain values for the driver to record.

    ``properties``: the Properties row's fields (None when the object was done before);
    ``detections``: Detection fields of the real events; ``injections``: Injection fields, each
    with ``detection`` (the simulated Detection's fields) when it was recovered.
    """

    key: str
    summaries: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, Any] | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)
    injections: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def object_table(root: Path, lcs: tuple[LcRef, ...] | list[LcRef]) -> Table:
    """All light curves of one object stacked in time order, with ``lightcurve_id`` (and the
    quality checker's optional columns that all of them have)."""
    tables = []
    for lc in lcs:
        t = read_lc_file(root / lc.path)
        t.meta.clear()
        t["lightcurve_id"] = np.full(len(t), lc.id, np.int64)
        tables.append(t)
    extra = [c for c in _QUALITY_COLUMNS if all(c in t.colnames for t in tables)]
    parts = [t[["mjd", "mag", "magerr", "band", "catflags", "lightcurve_id", *extra]] for t in tables]
    tab = vstack(parts, metadata_conflicts="silent")
    tab.sort("mjd")
    return tab


def injection_rng(seed: int, lightcurve_key: str) -> np.random.Generator:
    """The generator of one light curve's injections: from the configured seed and the light
    curve's registry key (stable across runs, processes and the order of completion)."""
    digest = int.from_bytes(hashlib.sha256(lightcurve_key.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), digest])


def _limit_mag(table: Table) -> np.ndarray | None:
    """The epochs' limiting magnitudes (``limitmag`` [mag]) for the transient finder's error floor,
    or None when the light curves do not give them."""
    return np.asarray(table["limitmag"], float) if "limitmag" in table.colnames else None


def _search(table: Table, config: AnalysisConfig, difference: bool) -> list[Event]:
    """The transient finder on a quality-checked table (``mjd, mag, magerr, band`` and the
    optional ``limitmag``)."""
    return find_transients(
        table["mjd"],
        table["mag"],
        table["magerr"],
        table["band"],
        difference=difference,
        config=config.transient,
        limit_mag=_limit_mag(table),
    )


@functools.lru_cache(maxsize=8)
def _finders(paths: tuple[str, ...]) -> tuple[Finder, ...]:
    # imported once per process (a worker analyses many objects with the same finders)
    return tuple(load_finder(p) for p in paths)


def _band_values(good: Table) -> dict[str, dict[str, float]]:
    """Per band: epochs, error-weighted mean [mag], rms [mag] and chi^2 of a constant."""
    out = {}
    bands = np.asarray(good["band"]).astype(str)
    for band in np.unique(bands):
        sel = good[bands == band]
        m, e = np.asarray(sel["mag"], float), np.asarray(sel["magerr"], float)
        w = 1 / e**2
        mean = float(np.sum(w * m) / np.sum(w))
        out[str(band)] = {
            "n": len(sel),
            "mean_mag": mean,
            "rms_mag": float(np.std(m)),
            "chi2_const": float(np.sum(w * (m - mean) ** 2)),
        }
    return out


def analyze_object(
    unit: ObjectUnit, *, root: Path, config: AnalysisConfig, injections: int = 0
) -> ObjectResult:
    """Quality check, finders and ``injections`` trials per light curve of one object (module doc).

    A light curve that cannot be read raises (the driver records the object as failed).
    """
    res = ObjectResult(key=unit.key)
    tab = object_table(root, unit.lcs)
    q = check_quality(tab, config.quality)
    good = tab[q == 0]
    for lc in unit.lcs:  # searched-epoch bookkeeping, per light curve
        sel = good[good["lightcurve_id"] == lc.id]
        res.summaries.append(
            {
                "band": lc.band or "",
                "epochs_mag": np.asarray(sel["mag"]),
                "epochs_snr": 1.0857 / np.asarray(sel["magerr"]),
                "mjd": np.asarray(sel["mjd"]),
            }
        )
    if unit.done:
        return res
    difference = any(lc.difference for lc in unit.lcs)
    first = unit.lcs[0]
    values: dict[str, Any] = {"bands": _band_values(good), "n_flagged": int(np.sum(q != 0))}
    period = fap = None
    try:
        pr = find_period(good["mjd"], good["mag"], good["magerr"], good["band"], config.period)
        period, fap = pr.period_d, pr.fap
        values["period"] = {"power": pr.power, "amplitude": pr.amplitude, "chi2": pr.chi2}
    except DarkroomError as exc:
        values["period"] = {"skipped": exc.reason}
    events = _search(good, config, difference)
    best_snr = max((ev.snr for ev in events), default=None)
    by_band = {lc.band: lc.id for lc in unit.lcs}
    for ev in events:
        res.detections.append(
            {
                "finder": "transient",
                "lightcurve_id": by_band.get(ev.band, first.id),
                "target_id": first.target_id,
                "mjd": ev.mjd_peak,
                "duration_d": ev.duration_d,
                "peak_mag": ev.peak_mag,
                "snr": ev.snr,
                "score": ev.snr,
                "simulated": False,
                "meta": {"band": ev.band, "peak_mags": ev.peak_mags, "rise_ratio": ev.rise_ratio},
            }
        )
    for finder in _finders(tuple(config.user_finders)):
        try:
            found = finder.find(good)
        except Exception as exc:  # a user's code: record its failure, go on
            res.failures.append(f"{unit.key}: finder {finder.name}: {type(exc).__name__}: {exc}")
            continue
        values[f"finder:{finder.name}"] = len(found)
        for d in found:
            res.detections.append(
                {
                    "finder": str(finder.name),
                    "lightcurve_id": first.id,
                    "target_id": first.target_id,
                    "mjd": d.get("mjd"),
                    "snr": d.get("snr"),
                    "duration_d": d.get("duration_d"),
                    "peak_mag": d.get("peak_mag"),
                    "score": d.get("score"),
                    "meta": {
                        k: v
                        for k, v in d.items()
                        if k not in ("mjd", "snr", "duration_d", "peak_mag", "score")
                    },
                }
            )
    values["transient"] = {"n_events": len(events), "best_snr": best_snr}
    res.properties = {
        "object_key": unit.key,
        "target_id": first.target_id,
        "n_epochs": len(good),
        "period_d": period,
        "period_fap": fap,
        "best_snr": best_snr,
        "values": values,
    }
    for lc in unit.lcs if injections else ():
        res.injections.extend(_inject_lightcurve(tab, lc, config, injections, difference, first.target_id))
    return res


def _inject_lightcurve(
    tab: Table, lc: LcRef, config: AnalysisConfig, injections: int, difference: bool, target_id: int | None
) -> list[dict[str, Any]]:
    """Injection-recovery on one light curve, in simulation mode: the event is added to every
    epoch, then the same checker and finder run; a detection the light curve gives without the
    event is no recovery."""
    out: list[dict[str, Any]] = []
    lc_tab = tab[tab["lightcurve_id"] == lc.id]
    sel = lc_tab[check_quality(lc_tab, config.quality) == 0]
    t = np.asarray(sel["mjd"], float)
    m, e, b = np.asarray(sel["mag"], float), np.asarray(sel["magerr"], float), np.asarray(sel["band"])
    lim = _limit_mag(sel)  # the limiting magnitude is the image's, unchanged by an injected event
    known = find_transients(t, m, e, b, difference=difference, config=config.transient, limit_mag=lim)
    noise = NoiseModel(t, m, e, b, difference=difference, config=config.transient, limit_mag=lim)
    rng = injection_rng(config.injection.seed, lc.key)
    for _ in range(injections):
        plan = plan_injection(
            t, m, e, b, rng, config.injection, transient=config.transient, difference=difference, noise=noise
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
        found = _search(sim, config, difference)
        hit = match_events(plan, found, config.injection, known)
        row: dict[str, Any] = {
            "lightcurve_id": lc.id,
            "kind": plan.kind,
            "mjd_peak": plan.mjd_peak,
            "duration_d": plan.duration_d,
            "peak_mag": plan.peak_mag,
            "snr": plan.snr,
            "params": {"amplitude": plan.amplitude, "base_mag": plan.base_mag, **plan.params},
            "recovered": hit is not None,
            "detection": None,
        }
        if hit is not None:
            ev = found[hit]
            row["detection"] = {
                "finder": "transient",
                "lightcurve_id": lc.id,
                "target_id": target_id,
                "mjd": ev.mjd_peak,
                "duration_d": ev.duration_d,
                "peak_mag": ev.peak_mag,
                "snr": ev.snr,
                "score": ev.snr,
                "simulated": True,
            }
        out.append(row)
    return out
