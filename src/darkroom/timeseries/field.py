"""A field's light curves from its measurements: frame transparency, the comparison magnitude
window, and one object's light curve assembled with its flags.

Inputs are plain tables: measurements (``source_id, image_id, flux, flux_err, mag, mag_err,
flags, ...``, as the registry gives them) and frames (:data:`FRAME_COLUMNS`: ``image_id,
mjd_utc`` (MJD UTC, mid-exposure), ``filter, fwhm`` [pixel], ``zp`` [mag], ``poor``,
``exposure_id``). No registry: the pipeline reads the tables and hands them in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from astropy.coordinates import EarthLocation
from astropy.table import Table

from darkroom.errors import BadInputError
from darkroom.phot.flags import DEFAULT_BAD_FLAGS
from darkroom.timeseries.lightcurve import build_lightcurve, split_lightcurve
from darkroom.timeseries.quality import LightCurveFlag, TransparencyConfig, transparency_flags
from darkroom.timeseries.settings import LightCurveSettings

__all__ = [
    "FRAME_COLUMNS",
    "QUALITY_BITS",
    "assemble_lightcurve",
    "comparison_window",
    "frame_transparency",
    "pool_window",
]

#: Light-curve flag bits that leave a point out of the default light curve.
QUALITY_BITS = int(
    LightCurveFlag.LOW_TRANSPARENCY | LightCurveFlag.NO_ENSEMBLE | LightCurveFlag.FEW_COMPARISONS
)

#: Columns of :func:`frame_table`.
FRAME_COLUMNS = ("image_id", "mjd_utc", "filter", "fwhm", "zp", "poor", "exposure_id", "flat_fielded")


def pool_window(settings: LightCurveSettings) -> float:
    """Magnitude window [mag] of the comparison pool read from the registry."""
    widest = max(settings.lightcurve.comparison.max_mag_diff, settings.max_mag_diff_limit)
    return widest + settings.pool_mag_margin


def frame_transparency(
    meas: Table,
    frames: Table,
    *,
    n_stars: int,
    config: TransparencyConfig,
    bad_flags: int = DEFAULT_BAD_FLAGS,
    exclude_ids: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Relative transparency per frame (``frames`` order; 1 = clear) and its low-transparency flag.

    See the module docstring. Per filter: the stars measured unflagged in at least 80 %
    of that filter's frames (``exclude_ids``, e.g. the target, left out), brightest ``n_stars``
    of them; a frame with none of them
    gets NaN (not flagged). Frames whose zero point is ``config.fraction`` below the
    reference level are flagged as well.
    """
    n = len(frames)
    value = np.full(n, np.nan)
    low = np.zeros(n, bool)
    if n == 0 or len(meas) == 0:
        return value, low
    fids = np.asarray(frames["image_id"], np.int64)
    bands = np.asarray(frames["filter"]).astype(str)
    img = np.asarray(meas["image_id"], np.int64)
    src = np.asarray(meas["source_id"], np.int64)
    flux = np.asarray(meas["flux"], float)
    ok = np.isfinite(flux) & (flux > 0) & ((np.asarray(meas["flags"], np.int64) & bad_flags) == 0)
    ok &= ~np.isin(src, np.asarray(list(exclude_ids), np.int64))
    for band in np.unique(bands):
        sel_f = bands == band
        ids = fids[sel_f]
        rows = np.isin(img, ids) & ok
        if not rows.any():
            continue
        sids = np.unique(src[rows])
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids[order], img[rows])]
        mat = np.full((ids.size, sids.size), np.nan)
        mat[pos, np.searchsorted(sids, src[rows])] = flux[rows]
        coverage = np.isfinite(mat).mean(axis=0)
        keep = coverage >= 0.8
        if not keep.any():
            continue
        with np.errstate(all="ignore"):
            med = np.nanmedian(mat[:, keep], axis=0)
        brightest = np.argsort(-med)[:n_stars]
        ratio = mat[:, keep][:, brightest] / med[brightest]
        with np.errstate(all="ignore"):
            v = np.nanmedian(ratio, axis=1) if ratio.size else np.full(ids.size, np.nan)
        flagged = transparency_flags(ensemble_flux=v, config=config)
        zp = np.asarray(frames["zp"], float)[sel_f] if "zp" in frames.colnames else None
        if zp is not None and np.isfinite(zp).sum() >= 3:
            flagged |= transparency_flags(zero_point=zp, config=config)
        value[np.flatnonzero(sel_f)] = v
        low[np.flatnonzero(sel_f)] = flagged
    return value, low


def comparison_window(meas: Table, *, target_id: int, settings: LightCurveSettings) -> float:
    """The comparison magnitude window [mag]: ``comparison.max_mag_diff``, widened in 0.25 mag steps
    (up to ``max_mag_diff_limit``) until ``min_candidates`` stars qualify in every filter.

    A star qualifies as :func:`~darkroom.timeseries.differential_photometry` would take it:
    measured without ``comparison.bad_flags`` in ``comparison.min_coverage`` of the epochs,
    its magnitude (from its median flux) within the window of the target's.
    """
    comp = settings.lightcurve.comparison
    base = comp.max_mag_diff
    limit = max(base, settings.max_mag_diff_limit)
    src = np.asarray(meas["source_id"], np.int64)
    bands = np.asarray(meas["filter"]).astype(str)
    flux = np.asarray(meas["flux"], float)
    err = np.asarray(meas["flux_err"], float)
    flags = np.asarray(meas["flags"], np.int64) if "flags" in meas.colnames else np.zeros(len(meas), np.int64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(flux) & (flux > 0) & np.isfinite(err) & ((flags & comp.bad_flags) == 0)
    window = base
    for band in np.unique(bands[src == target_id]):
        sel = bands == band
        n_epochs = np.unique(np.asarray(meas["image_id"])[sel]).size
        ids = np.unique(src[sel])
        mags, cover = np.full(ids.size, np.nan), np.zeros(ids.size)
        for k, sid in enumerate(ids):
            good = sel & (src == sid) & valid
            cover[k] = good.sum() / max(n_epochs, 1)
            if good.any():
                mags[k] = -2.5 * np.log10(np.median(flux[good]))
        t = np.flatnonzero(ids == target_id)
        if not t.size or not np.isfinite(mags[t[0]]):
            continue
        ok = (ids != target_id) & np.isfinite(mags) & (cover >= comp.min_coverage - 1e-12)
        dm = np.sort(np.abs(mags[ok] - mags[t[0]]))
        need = settings.min_candidates
        wanted = float(dm[need - 1]) if dm.size >= need else limit
        if wanted > base:
            wanted = base + 0.25 * math.ceil((wanted - base) / 0.25 - 1e-9)
        window = max(window, min(wanted, limit))
    return float(window)


def _label_columns(lc: Table, meas: Table, *, calibrated: bool) -> None:
    """Units (and words) on the light-curve columns, so ECSV and Parquet files carry them.

    Units come from the measurements (flux in adu, positions in pixels...); the ensemble
    flux has the flux's unit, the FWHM is in pixels; an uncalibrated ``mag`` is named
    instrumental (-2.5 log10 of the flux in adu, no zero point).
    """
    for name in lc.colnames:
        if lc[name].unit is None and name in meas.colnames and meas[name].unit is not None:
            lc[name].unit = meas[name].unit
    flux_unit = meas["flux"].unit if "flux" in meas.colnames else None
    for name in ("ens_flux", "ens_flux_err"):
        if name in lc.colnames and lc[name].unit is None and flux_unit is not None:
            lc[name].unit = flux_unit
    if "fwhm" in lc.colnames and lc["fwhm"].unit is None:
        lc["fwhm"].unit = "pix"
        lc["fwhm"].description = "the frame's PSF FWHM"
    if "mag" in lc.colnames and not calibrated:
        lc["mag"].description = "instrumental magnitude: -2.5 log10(flux / adu), no photometric zero point"
        lc.meta["mag_system"] = "instrumental"


def assemble_lightcurve(
    meas: Table,
    frames: Table,
    *,
    target_id: int,
    ra_deg: float,
    dec_deg: float,
    location: EarthLocation | None,
    settings: LightCurveSettings,
    differential: bool = True,
    comparison_ids: Sequence[int] | None = None,
    keep_flagged: bool | None = None,
) -> Table:
    """The light curve of ``target_id`` from its pool's measurements and the frame table.

    ``meas``: rows of :func:`field_measurements` (``mjd_utc``, ``filter`` included);
    ``frames``: :func:`frame_table`. Frames of low transparency (see
    :func:`frame_transparency`), and poor frames with ``exclude_poor_frames``, are left
    out before the ensemble is chosen, and points whose light-curve flags include
    :data:`QUALITY_BITS` are dropped, unless ``keep_flagged`` (default: the
    setting), in which case everything is kept and flagged. Adds ``frame_transparency``,
    ``season`` and ``source_id`` columns; meta ``excluded_image_ids``.
    """
    keep_flagged = settings.keep_flagged if keep_flagged is None else keep_flagged
    if not np.any(np.asarray(meas["source_id"], np.int64) == target_id):
        raise BadInputError(f"source {target_id} has no measurement in this photometry")
    frames = frames.copy()
    value, low = frame_transparency(
        meas,
        frames,
        n_stars=settings.n_transparency_stars,
        config=settings.frame_transparency,
        bad_flags=settings.lightcurve.comparison.bad_flags,
        exclude_ids=(int(target_id),),
    )
    frames["transparency"] = value
    bad_frame = low.copy()
    if settings.exclude_poor_frames:
        bad_frame |= np.asarray(frames["poor"], bool)
    fids = np.asarray(frames["image_id"], np.int64)
    meas = meas.copy()
    order = np.argsort(fids)
    pos = order[np.searchsorted(fids[order], np.asarray(meas["image_id"], np.int64))]
    meas["fwhm"] = np.asarray(frames["fwhm"], float)[pos]
    if "flat_fielded" in frames.colnames:
        meas["flat_fielded"] = np.asarray(frames["flat_fielded"], bool)[pos]
    if np.isfinite(np.asarray(frames["zp"], float)).any():
        meas["zp"] = np.asarray(frames["zp"], float)[pos]
    excluded = set(fids[bad_frame].tolist())
    use = meas if keep_flagged else meas[~np.isin(np.asarray(meas["image_id"], np.int64), list(excluded))]
    if not np.any(np.asarray(use["source_id"], np.int64) == target_id):
        raise BadInputError(
            f"source {target_id}: every frame it was measured in is flagged (use keep_flagged)"
        )
    comparison = settings.lightcurve.comparison
    if differential and comparison_ids is None:
        comparison = comparison.model_copy(
            update={"max_mag_diff": comparison_window(use, target_id=int(target_id), settings=settings)}
        )
    config = settings.lightcurve.model_copy(
        update={"differential": bool(differential), "comparison": comparison}
    )
    lc = build_lightcurve(
        use,
        target_id=int(target_id),
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        location=location,
        comparison_ids=None if comparison_ids is None else [int(c) for c in comparison_ids],
        config=config,
    )
    lc_ids = np.asarray(lc["image_id"], np.int64)
    pos = order[np.searchsorted(fids[order], lc_ids)]
    lc["frame_transparency"] = np.asarray(frames["transparency"], float)[pos]
    lc["frame_transparency"].description = "median flux of the field's bright stars over their medians"
    flags = np.asarray(lc["flags"], np.int64) | np.where(
        np.isin(lc_ids, list(excluded)), int(LightCurveFlag.LOW_TRANSPARENCY), 0
    )
    lc["flags"] = flags
    if not keep_flagged:
        quality = (flags & QUALITY_BITS) != 0
        if differential:
            quality |= ~np.isfinite(np.asarray(lc["rel_flux"], float))
        lc = lc[~quality]
    lc["source_id"] = np.full(len(lc), int(target_id), np.int64)
    seasons = np.zeros(len(lc), np.int64)
    for (_band, season), part in split_lightcurve(lc, season_gap_days=settings.season_gap_days).items():
        seasons[np.isin(np.asarray(lc["image_id"]), np.asarray(part["image_id"]))] = season
    lc["season"] = seasons
    _label_columns(lc, meas, calibrated=bool(np.isfinite(np.asarray(frames["zp"], float)).any()))
    lc.meta["excluded_image_ids"] = sorted(int(i) for i in excluded)
    lc.meta["comparison_window_mag"] = float(comparison.max_mag_diff)
    lc.meta["kept_flagged"] = bool(keep_flagged)
    return lc
