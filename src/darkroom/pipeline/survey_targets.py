"""The targets of a survey repository: registering a target table, listing the targets, and
reading back their survey light curves (``darkroom lightcurve --name``, the Python API)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from darkroom.repo.models import Lightcurve, Provenance, Target, utcnow
from darkroom.repo.registry import Registry

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["import_targets", "survey_lightcurves", "target_rows"]


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
    from astropy.table import Table, vstack

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
