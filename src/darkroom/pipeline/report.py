"""Night reports from the registry: fill :class:`~darkroom.report.NightReport` and write HTML.

Wiring only: this module reads the recorded products through
:mod:`darkroom.pipeline.products` (the per-image product tables, the night's masters,
coadds and target light curves, of chosen provenances), reads their files, and hands
plain tables and arrays to :mod:`darkroom.report`, which renders them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from astropy.io import fits
from astropy.table import Table
from sqlalchemy import func, select

from darkroom.pipeline._products import safe_name
from darkroom.pipeline.products import (
    ImageProducts,
    image_products,
    night_coadds,
    night_masters,
    target_lightcurves,
)
from darkroom.repo.models import Exposure, Image, Task
from darkroom.report import (
    AnalysisSummary,
    MasterSummary,
    NightPicture,
    NightReport,
    QuarantinedFile,
    TargetLightCurve,
    TaskFailure,
    write_analysis_page,
    write_index,
    write_night_reports,
)

if TYPE_CHECKING:  # the facade hands itself in; the pipeline never imports it
    from darkroom.facade import Repository

__all__ = ["build_night_reports", "write_reports"]

log = logging.getLogger(__name__)


def _frames(repo: Repository, night: str, provenances: Iterable[str] | None) -> Table:
    cols: dict[str, list] = {
        k: []
        for k in (
            "image_id",
            "file",
            "time_utc",
            "filter",
            "exptime_s",
            "fwhm_arcsec",
            "ellipticity",
            "sky_adu",
            "n_sources",
            "zero_point",
            "zero_point_err",
            "zero_point_reason",
            "astrom_rms_arcsec",
            "astrom_flag",
            "quality_flag",
            "state",
        )
    }
    with repo.registry.session() as s:
        # One row per exposure: the newest calibrated image (highest id) with its products.
        latest: dict[int, ImageProducts] = {}
        for ip in image_products(s, provenances, nights=[night], only_ok=False):
            if ip.exposure_id not in latest or ip.id > latest[ip.exposure_id].id:
                latest[ip.exposure_id] = ip
        for image in sorted(latest.values(), key=lambda ip: (ip.mjd_mid or 0, ip.id)):
            exp = image.exposure
            q, a, p = image.quality, image.astrom, image.photcal
            cols["image_id"].append(image.id)
            cols["file"].append(Path(exp.path).name)
            cols["time_utc"].append(image.time_mid_utc.isoformat() if image.time_mid_utc else None)
            cols["filter"].append(image.filter)
            cols["exptime_s"].append(exp.exptime_s)
            cols["fwhm_arcsec"].append(q.get("fwhm_arcsec"))
            cols["ellipticity"].append(q.get("ellipticity"))
            cols["sky_adu"].append(q.get("sky_adu"))
            cols["n_sources"].append(q.get("n_sources"))
            cols["zero_point"].append(p.get("zp", p.get("zero_point")))
            cols["zero_point_err"].append(p.get("zp_err", p.get("zero_point_err")))
            cols["zero_point_reason"].append(_zero_point_reason(image))
            cols["astrom_rms_arcsec"].append(a.get("rms_arcsec"))
            cols["astrom_flag"].append(image.astrom_flag)
            # poor by the quality limits or, under the chosen light-curve provenance, by clouds
            cols["quality_flag"].append("poor" if image.poor else image.quality_flag)
            cols["state"].append(exp.state)
    return Table({k: np.array(v, dtype=object) for k, v in cols.items()})


def _zero_point_reason(image: ImageProducts) -> str | None:
    """Why a frame has no zero point (None when it has one)."""
    row = image.photcal_row
    if row is None:
        return "no photometry for this frame yet"
    if row.zp is not None:
        return None
    return row.reason or f"photometry {row.flag or 'instrumental'}: no zero point"


def _thumbnail(path: Path) -> np.ndarray | None:
    """The image of a master file (its primary HDU), or None when it cannot be read."""
    try:
        with fits.open(path, memmap=False) as hdul:
            return np.asarray(hdul[0].data, dtype=np.float32)
    except (OSError, TypeError, ValueError) as exc:
        log.warning("no thumbnail for %s: %s", path, exc)
        return None


def _masters(repo: Repository, night: str, provenances: Iterable[str] | None) -> list[MasterSummary]:
    with repo.registry.session() as s:
        calibs = night_masters(s, night, provenances)
    out = []
    for c in calibs:
        stats = {
            k: v
            for k, v in (c.stats or {}).items()
            if k not in ("record", "counts", "bad_columns", "bad_rows")
        }
        out.append(
            MasterSummary(
                kind=c.kind,
                name=Path(c.path or "").name,
                n_inputs=c.n_inputs,
                stats=stats,
                thumbnail=_thumbnail(repo.path(c.path)) if c.path else None,
                flag=c.flag,
            )
        )
    return out


def _light_curves(
    repo: Repository, frames: Table, provenances: Iterable[str] | None
) -> list[TargetLightCurve]:
    """The newest light curve of each target (the lightcurves stage's rows), cut to this night's frames."""
    ids = {int(i) for i in frames["image_id"]} if len(frames) else set()
    with repo.registry.session() as s:
        rows = [(row.object_id or row.key, row.path) for row in target_lightcurves(s, provenances)]
    out = []
    for name, rel in rows:
        path = repo.path(rel)
        try:
            table = Table.read(path, format="ascii.ecsv")
        except (OSError, ValueError) as exc:
            log.warning("cannot read light curve %s: %s", path, exc)
            continue
        excluded = [int(i) for i in table.meta.get("excluded_image_ids", []) if int(i) in ids]
        if "image_id" in table.colnames:
            table = table[[int(i) in ids for i in table["image_id"]]]
        if len(table):
            contacts = _contacts(repo, name, table)
            excluded_times = _excluded_times(frames, excluded, table)
            out.append(
                TargetLightCurve(
                    name=safe_name(name),
                    table=table,
                    contacts=contacts,
                    contacts_source="NASA Exoplanet Archive" if contacts else "",
                    excluded_times=excluded_times,
                )
            )
    return out


def _excluded_times(frames: Table, excluded: list[int], table: Table) -> tuple[float, ...]:
    """Times of the excluded frames on the light curve's time axis (BJD_TDB or MJD UTC [d]).

    Frames carry UTC mid-exposure times; for a BJD_TDB axis the light curve's own offset
    between its ``bjd_tdb`` and ``mjd_utc`` columns (the barycentric and TDB corrections,
    constant to a few seconds over a night) is added.
    """
    if not excluded or "time_utc" not in frames.colnames:
        return ()
    from astropy.time import Time

    wanted = set(excluded)
    utc = [t for i, t in zip(frames["image_id"], frames["time_utc"], strict=True) if int(i) in wanted and t]
    if not utc:
        return ()
    mjd = Time([str(t) for t in utc], scale="utc").mjd
    if "bjd_tdb" in table.colnames and "mjd_utc" in table.colnames:
        offset = float(
            np.nanmedian(np.asarray(table["bjd_tdb"], float) - np.asarray(table["mjd_utc"], float))
        )
        return tuple(float(x) for x in mjd + offset)
    if "mjd_utc" in table.colnames:
        return tuple(float(x) for x in mjd)
    return ()


def _contacts(repo: Repository, name: str, table: Table) -> dict[str, float] | None:
    """Predicted transit times of a known planet near this light curve (cached ephemeris only)."""
    from darkroom.pipeline.targets import planet_ephemerides
    from darkroom.timeseries.ephemeris import predict_transit

    if "bjd_tdb" not in table.colnames:
        return None
    target = next((t.name for t in repo.config.targets if name in (t.name, safe_name(t.name))), name)
    eph = planet_ephemerides(repo.root, [target], repo.config.names, online=False).get(target)
    if eph is None:
        return None
    t = np.asarray(table["bjd_tdb"], float)
    t = t[np.isfinite(t)]
    return predict_transit(eph, float(np.median(t))).as_dict() if len(t) else None


def build_night_reports(
    repo: Repository, *, nights: list[str] | None = None, provenances: Iterable[str] | None = None
) -> list[NightReport]:
    """One report per night that has exposures (or the nights asked for), with the products of
    ``provenances`` (None: the newest of each kind, :mod:`darkroom.pipeline.products`)."""
    with repo.registry.session() as s:
        all_nights = sorted(n for n in s.scalars(select(Exposure.night).distinct()) if n)
        failures_all = s.execute(
            select(Task.stage, Task.key, Task.reason).where(Task.state == "failed")
        ).all()
        quarantined_all = s.execute(
            select(Exposure.night, Exposure.path, Exposure.reason).where(Exposure.state == "quarantined")
        ).all()
        exp_night = dict(s.execute(select(Exposure.id, Exposure.night)).all())
        image_night = dict(s.execute(select(Image.id, Image.night)).all())
    reports = []
    for night in nights or all_nights:
        frames = _frames(repo, night, provenances)
        failures = [
            TaskFailure(stage, key, reason or "")
            for stage, key, reason in failures_all
            if _task_night(key, exp_night, image_night) in (night, None)
        ]
        quarantined = [
            QuarantinedFile(Path(path).name, reason or "")
            for n, path, reason in quarantined_all
            if n == night or n is None
        ]
        summary: dict[str, str | float] = {}  # the page adds frame, failure and master counts itself
        if len(frames):
            summary["good quality"] = float(sum(1 for f in frames["quality_flag"] if f == "good"))
            summary["astrometry good"] = float(sum(1 for f in frames["astrom_flag"] if f == "good"))
        reports.append(
            NightReport(
                night,
                repo.root,
                frames=frames,
                masters=_masters(repo, night, provenances),
                failures=failures,
                quarantined=quarantined,
                light_curves=_light_curves(repo, frames, provenances),
                pictures=_pictures(repo, night, provenances),
                summary=summary,
            )
        )
    return reports


# reddest first: the order in which filters become R, G, B of a night's colour composite
_WAVELENGTH_ORDER = ("y", "z", "i", "ha", "r", "v", "g", "b", "u")


def _pictures(repo: Repository, night: str, provenances: Iterable[str] | None) -> list[NightPicture]:
    """The night's coadds (thumbnails) and, per field with three filters, a colour composite."""
    from darkroom.imaging import make_rgb, read_planes

    with repo.registry.session() as s:
        rows = [
            (c.field, c.filter, c.path, c.n_inputs, c.exptime_s, dict(c.values or {}))
            for c in night_coadds(s, night, provenances)
        ]
    pictures = []
    by_field: dict[str, dict[str, Path]] = {}
    for field, band, path, n, exptime, values in rows:
        by_field.setdefault(field or "", {})[band or ""] = repo.root / path
        thumb = values.get("thumbnail")
        if not thumb or not (repo.root / thumb).exists():
            continue
        limit = values.get("mag_limit")
        caption = f"{n} images, {exptime or 0:.0f} s" + (f", 5-sigma limit {limit:.2f} mag" if limit else "")
        pictures.append(NightPicture(f"{field} {band} coadd", (repo.root / thumb).read_bytes(), caption))
    wanted = repo.config.coadd.rgb_filters
    for field, bands in by_field.items():
        if wanted:
            chosen = list(wanted) if all(b in bands for b in wanted) else []
        else:
            order = sorted(
                bands,
                key=lambda b: next(
                    (i for i, w in enumerate(_WAVELENGTH_ORDER) if b.lower().startswith(w)), 99
                ),
            )
            chosen = order[:3] if len(order) >= 3 else []
        if not chosen:
            continue
        try:
            image = make_rgb(*(read_planes(bands[b]) for b in chosen), reference="green")
        except Exception as exc:  # a composite is a picture: never stop the report for it
            log.warning("no colour composite of %s: %s", field, exc)
            continue
        pictures.append(
            NightPicture(
                f"{field} colour", _rgb_png(image.rgb), f"R {chosen[0]}, G {chosen[1]}, B {chosen[2]}"
            )
        )
    return pictures


def _rgb_png(rgb: np.ndarray, max_size: int = 768) -> bytes:
    import io

    from PIL import Image as PILImage

    picture = PILImage.fromarray(np.ascontiguousarray(rgb[::-1]))
    picture.thumbnail((max_size, max_size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _task_night(key: str, exp_night: dict, image_night: dict) -> str | None:
    """The night a task key refers to (``exp:ID``, ``img:ID`` or a key that names the night)."""
    kind, _, rest = key.partition(":")
    if rest.isdigit():
        if kind == "exp":
            return exp_night.get(int(rest))
        if kind in ("img", "image"):
            return image_night.get(int(rest))
    for part in key.split(":"):
        if len(part) == 10 and part[4] == "-" and part[7] == "-":
            return part
    return None


def analysis_summaries(repo: Repository) -> list[AnalysisSummary]:
    """One summary per analysis provenance whose searched-epoch histograms are on disk."""
    import xarray as xr

    from darkroom.analysis.inject import EFFICIENCY_EDGES_REL
    from darkroom.pipeline.analysis import ANALYSIS_STAGE, efficiency_curve
    from darkroom.repo.models import Detection, Provenance

    out = []
    with repo.registry.session() as s:
        pids = s.scalars(
            select(Provenance.id).where(Provenance.stage == ANALYSIS_STAGE).order_by(Provenance.created_utc)
        ).all()
        for pid in pids:
            nc = repo.root / "analysis" / pid / "searched.nc"
            if not nc.is_file():
                continue
            try:
                ds = xr.load_dataset(nc, engine="h5netcdf")
            except (OSError, ValueError) as exc:
                log.warning("analysis %s left out of the report: %s", pid, exc)
                continue
            n_real = s.scalar(
                select(func.count()).where(Detection.provenance_id == pid, Detection.simulated.is_(False))
            )
            thr = float(ds.attrs.get("snr_threshold", 5.0))
            curve = efficiency_curve(s, pid, thr * np.asarray(EFFICIENCY_EDGES_REL))
            out.append(
                AnalysisSummary(
                    provenance_id=pid,
                    n_lightcurves=int(ds["n_lightcurves"].sum()),
                    n_epochs=int(ds["n_epochs"].sum()),
                    days_searched=float(ds["time_searched_d"].sum()),
                    n_detections=int(n_real or 0),
                    snr_threshold=float(ds.attrs.get("snr_threshold", np.nan)),
                    snr_centre=np.asarray(curve["centre"], float),
                    n_injected=np.asarray(curve["n"], np.int64),
                    n_recovered=np.asarray(curve["k"], np.int64),
                    snr50=float(curve["snr50"]),
                    histograms=str(nc.relative_to(repo.root)),
                )
            )
    return out


def write_reports(
    repo: Repository, out_dir: Path | None = None, *, nights: list[str] | None = None
) -> list[Path]:
    """Write ``night-<night>.html`` per night (and ``index.html``) into ``out_dir`` (default REPO/reports);
    with analyses in the repository, also ``analysis.html`` (linked from the index, which is then
    always written). Returns the pages written, the index last."""
    out = Path(out_dir) if out_dir is not None else repo.root / "reports"
    paths = write_night_reports(build_night_reports(repo, nights=nights), out)
    summaries = analysis_summaries(repo)
    if not summaries:
        return paths
    page = write_analysis_page(summaries, out)
    return [*paths, page, write_index(paths, out, analysis=page)]
