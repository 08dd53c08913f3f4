"""Light curves from files into the registry (``darkroom lightcurves import``).

:func:`import_lightcurves` reads CSV/ECSV/Parquet/FITS files (one object each), splits them
per band and season and writes one Parquet file (:mod:`darkroom.analysis.lcfile` format) and
one ``lightcurve`` row each (key ``survey:object:band:season``); files already registered under
the same key are skipped. The light curves the lightcurves stage makes from images are the same
kind of row.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from darkroom.analysis.lcfile import read_survey_table, split_band_season, write_lc_file
from darkroom.errors import DarkroomError
from darkroom.io.atomic import atomic_path, sha256_file
from darkroom.pipeline.analysis import ensure_provenance
from darkroom.provenance import provenance_id
from darkroom.repo.models import Lightcurve, Target

__all__ = ["IMPORT_STAGE", "import_lightcurves"]

IMPORT_STAGE = "lightcurves_import"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def import_lightcurves(
    session: Session,
    root: Path,
    paths: Iterable[Path],
    *,
    survey: str = "import",
    season_gap_days: float = 100.0,
) -> tuple[int, int, list[str]]:
    """Register light-curve files; returns (new rows, already known, one-line failures)."""
    params = {"survey": survey, "season_gap_days": season_gap_days}
    pid = provenance_id(IMPORT_STAGE, params)
    ensure_provenance(session, pid, IMPORT_STAGE, params)
    n_new = n_known = 0
    failures: list[str] = []
    for path in paths:
        try:
            data = read_survey_table(path, survey=survey)
        except DarkroomError as exc:
            failures.append(f"{Path(path).name}: {exc.reason}")
            continue
        tab = data.table
        target_id = None
        if "ra" in tab.colnames and "dec" in tab.colnames and np.isfinite(np.nanmedian(tab["ra"])):
            target = session.scalar(
                select(Target).where(Target.catalog == survey, Target.name == data.object)
            )
            if target is None:
                target = Target(
                    catalog=survey,
                    name=data.object,
                    ra_deg=float(np.nanmedian(tab["ra"])),
                    dec_deg=float(np.nanmedian(tab["dec"])),
                )
                session.add(target)
                session.flush()
            target_id = target.id
        for (band, season), part in split_band_season(tab, season_gap_days=season_gap_days).items():
            key = f"{survey}:{data.object}:{band}:{season}"
            if session.scalar(
                select(Lightcurve.id).where(Lightcurve.provenance_id == pid, Lightcurve.key == key)
            ):
                n_known += 1
                continue
            out = (
                root / "lightcurves" / _safe(survey) / f"{_safe(data.object)}_{_safe(band)}_s{season}.parquet"
            )
            meta = {
                "object": data.object,
                "survey": survey,
                "band": band,
                "season": season,
                "time_scale": data.time_scale,
                "difference": data.difference,
            }
            with atomic_path(out) as tmp:
                write_lc_file(part, tmp, meta=meta)
            session.add(
                Lightcurve(
                    provenance_id=pid,
                    key=key,
                    target_id=target_id,
                    survey=survey,
                    object_id=data.object,
                    band=band,
                    season=str(season),
                    time_scale=data.time_scale,
                    mjd_start=float(part["mjd"].min()),
                    mjd_end=float(part["mjd"].max()),
                    n_points=len(part),
                    n_flagged=int(np.sum(np.asarray(part["catflags"]) != 0)),
                    path=str(out.relative_to(root)),
                    sha256=sha256_file(out),
                    meta={"difference": data.difference, "source_file": str(path)},
                )
            )
            n_new += 1
        session.flush()
    return n_new, n_known, failures
