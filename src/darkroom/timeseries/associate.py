"""Association: measurements of one object in many frames become one source.

Frames are taken in time order. Each frame's measurements are matched one-to-one
(closest pairs first, KD-tree) to the running mean positions of the sources known so
far, within a radius; the unmatched ones start new sources. Positions are on the sky
(RA/Dec, radius in arcsec; set it to ~3-5x the astrometric rms) or, for a field with no
absolute WCS, in the field's reference pixel frame (x/y, radius in pixels): the same
code on 3-D unit vectors or 2-D points. One frame never contributes two measurements to
one source.

Cost: one KD-tree build and query per frame; 100 frames x 1000 stars take ~0.1 s.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
from astropy.table import Table, vstack
from pydantic import BaseModel, ConfigDict, Field

from darkroom.errors import BadInputError
from darkroom.phot.match import chord_from_arcsec, match_points, radec_to_unit, unit_to_radec

__all__ = ["AssociationConfig", "AssociationResult", "associate", "summarise_sources"]

log = logging.getLogger(__name__)


class AssociationConfig(BaseModel):
    """Positions, radius and column names of :func:`associate`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coords: Literal["sky", "pixel"] = Field("sky", description="match on RA/Dec or on reference-frame x/y")
    radius_arcsec: float = Field(1.5, gt=0, le=60, description="match radius on the sky [arcsec]")
    radius_pix: float = Field(2.0, gt=0, le=100, description="match radius in pixel mode [pixel]")
    image_col: str = Field("image_id", description="frame identifier column")
    time_col: str | None = Field("mjd_utc", description="frame time column used for ordering, if present")
    ra_col: str = Field("ra", description="[deg]")
    dec_col: str = Field("dec", description="[deg]")
    x_col: str = Field("x", description="reference-frame x [pixel]")
    y_col: str = Field("y", description="reference-frame y [pixel]")
    mag_col: str = Field("mag", description="magnitude column averaged per filter [mag]")
    mag_err_col: str | None = Field("mag_err", description="its error, for weights [mag]")
    filter_col: str | None = Field("filter", description="filter column; None: one band")


@dataclass
class AssociationResult:
    """``source_id`` per input row (same order) and the summary table of the sources."""

    source_id: np.ndarray
    sources: Table


def _positions(table: Table, config: AssociationConfig) -> np.ndarray:
    cols = (config.ra_col, config.dec_col) if config.coords == "sky" else (config.x_col, config.y_col)
    for c in cols:
        if c not in table.colnames:
            raise BadInputError(f"association in {config.coords} mode needs column {c!r}")
    a = np.asarray(table[cols[0]], float)
    b = np.asarray(table[cols[1]], float)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise BadInputError(f"columns {cols} contain NaN positions")
    return radec_to_unit(a, b) if config.coords == "sky" else np.column_stack([a, b])


def associate(
    measurements: Table,
    *,
    config: AssociationConfig | None = None,
    sources: Table | None = None,
) -> AssociationResult:
    """Give every measurement a ``source_id``; summarise the sources.

    Parameters
    ----------
    measurements : Table
        One row per detection: image id, position (RA/Dec [deg] or x/y [pixel]),
        optionally time, magnitude, error and filter (names in the config).
    sources : Table, optional
        Known sources (``source_id`` and position columns, e.g. from an earlier night):
        measurements are matched to them first; new sources get ids above their maximum.

    Returns
    -------
    AssociationResult
        ``source_id`` (int64, input order) and ``sources`` from :func:`summarise_sources`
        (every source seen in ``measurements`` plus the unmatched known ones, n_epochs 0).
    """
    config = config or AssociationConfig()
    if config.image_col not in measurements.colnames:
        raise BadInputError(f"measurements lack the image column {config.image_col!r}")
    pos = _positions(measurements, config)
    radius = chord_from_arcsec(config.radius_arcsec) if config.coords == "sky" else config.radius_pix
    images = np.asarray(measurements[config.image_col])
    uniq, first = np.unique(images, return_index=True)
    if config.time_col and config.time_col in measurements.colnames:
        times = np.asarray(measurements[config.time_col], float)
        order = np.argsort(times[first], kind="stable")
    else:
        order = np.argsort(first, kind="stable")
    inverse = np.searchsorted(uniq, images)
    rows_by_image = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[rows_by_image], np.arange(uniq.size + 1))

    dim = pos.shape[1]
    if sources is not None and len(sources) and "source_id" not in sources.colnames:
        raise BadInputError("known sources need a 'source_id' column")
    if sources is not None and len(sources):
        # a summary table (ra/dec or x/y) or a table with the configured column names
        names = {"ra_col": "ra", "dec_col": "dec", "x_col": "x", "y_col": "y"}
        fallback = {k: v for k, v in names.items() if getattr(config, k) not in sources.colnames}
        src_cfg = config.model_copy(update=fallback)
        known_pos = _positions(sources, src_cfg)
        known_ids = np.asarray(sources["source_id"], dtype=np.int64)
    else:
        known_pos = np.zeros((0, dim))
        known_ids = np.zeros(0, dtype=np.int64)
    n_known = known_ids.size
    cap = max(16, n_known + len(measurements))
    # running sums of positions (unit vectors or x/y) and counts; a known source with no
    # measurement yet keeps its catalogue position as its centre
    sums = np.zeros((cap, dim))
    sums[:n_known] = known_pos
    counts = np.zeros(cap, dtype=np.int64)
    ids = np.zeros(cap, dtype=np.int64)
    ids[:n_known] = known_ids
    n_src = n_known
    next_id = int(known_ids.max()) + 1 if n_known else 0
    index_of_row = np.full(len(measurements), -1, dtype=np.int64)
    for img in order:
        rows = rows_by_image[bounds[img] : bounds[img + 1]]
        if rows.size == 0:
            continue
        if n_src:
            centres = sums[:n_src] / np.maximum(counts[:n_src], 1)[:, None]
            qi, ti, _ = match_points(centres, pos[rows], radius)
        else:
            qi = ti = np.zeros(0, dtype=np.int64)
        fresh = ti[counts[ti] == 0]
        sums[fresh] = 0.0  # drop the catalogue seed at the first real measurement
        np.add.at(sums, ti, pos[rows[qi]])
        np.add.at(counts, ti, 1)
        index_of_row[rows[qi]] = ti
        unmatched = np.ones(rows.size, bool)
        unmatched[qi] = False
        new_rows = rows[unmatched]
        k = new_rows.size
        if k:
            new_idx = np.arange(n_src, n_src + k)
            sums[new_idx] = pos[new_rows]
            counts[new_idx] = 1
            ids[new_idx] = np.arange(next_id, next_id + k)
            index_of_row[new_rows] = new_idx
            n_src += k
            next_id += k
    source_id = ids[index_of_row]
    log.debug(
        "associated %d measurements from %d frames into %d sources", len(measurements), uniq.size, n_src
    )
    summary = summarise_sources(measurements, source_id, config=config)
    if sources is not None and len(sources):
        missing = np.setdiff1d(np.asarray(sources["source_id"], np.int64), np.asarray(summary["source_id"]))
        if missing.size:
            keep = np.isin(np.asarray(sources["source_id"], np.int64), missing)
            extra = Table({"source_id": np.asarray(sources["source_id"], np.int64)[keep]})
            if config.coords == "sky":
                extra["ra"] = np.asarray(sources[src_cfg.ra_col], float)[keep]
                extra["dec"] = np.asarray(sources[src_cfg.dec_col], float)[keep]
            else:
                extra["x"] = np.asarray(sources[src_cfg.x_col], float)[keep]
                extra["y"] = np.asarray(sources[src_cfg.y_col], float)[keep]
            extra["n_epochs"] = np.zeros(keep.sum(), dtype=np.int64)
            summary = vstack([summary, extra], metadata_conflicts="silent")
            summary.sort("source_id")
    return AssociationResult(source_id=source_id, sources=summary)


def _band_name(band: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", str(band)).strip("_") or "band"


def summarise_sources(
    measurements: Table, source_id: np.ndarray, *, config: AssociationConfig | None = None
) -> Table:
    """One row per source: mean position, number of epochs, mean magnitude per filter.

    Columns: ``source_id``; ``ra, dec`` [deg] (mean unit vector) or ``x, y`` [pixel];
    ``n_epochs`` (distinct frames); per filter F: ``mag_F`` (inverse-variance weighted
    mean when errors exist, else the mean) [mag], ``mag_err_F`` (its error, or the
    standard error of the mean without errors) [mag], ``n_F`` [count].
    """
    config = config or AssociationConfig()
    sid = np.asarray(source_id, np.int64)
    uniq, inv = np.unique(sid, return_inverse=True)
    n = uniq.size
    out = Table({"source_id": uniq})
    pos = _positions(measurements, config)
    sums = np.zeros((n, pos.shape[1]))
    np.add.at(sums, inv, pos)
    cnt = np.bincount(inv, minlength=n)
    if config.coords == "sky":
        ra, dec = unit_to_radec(sums)
        out["ra"], out["dec"] = ra, dec
        out["ra"].unit = out["dec"].unit = "deg"
    else:
        out["x"] = sums[:, 0] / cnt
        out["y"] = sums[:, 1] / cnt
    images = np.asarray(measurements[config.image_col])
    pairs = np.unique(np.column_stack([inv, np.unique(images, return_inverse=True)[1]]), axis=0)
    out["n_epochs"] = np.bincount(pairs[:, 0], minlength=n).astype(np.int64)
    if config.mag_col in measurements.colnames:
        mag = np.asarray(measurements[config.mag_col], float)
        err = (
            np.asarray(measurements[config.mag_err_col], float)
            if config.mag_err_col and config.mag_err_col in measurements.colnames
            else None
        )
        bands = (
            np.asarray(measurements[config.filter_col]).astype(str)
            if config.filter_col and config.filter_col in measurements.colnames
            else np.full(len(measurements), "")
        )
        for band in np.unique(bands):
            sel = (bands == band) & np.isfinite(mag)
            name = _band_name(band) if band else "all"
            if err is not None:
                sel &= np.isfinite(err) & (err > 0)
                w = np.where(sel, 1.0 / np.where(sel, err, 1.0) ** 2, 0.0)
            else:
                w = sel.astype(float)
            sw = np.bincount(inv, weights=w, minlength=n)
            swm = np.bincount(inv, weights=w * np.where(sel, mag, 0.0), minlength=n)
            nb = np.bincount(inv, weights=sel.astype(float), minlength=n).astype(np.int64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(sw > 0, swm / sw, np.nan)
                if err is not None:
                    mean_err = np.where(sw > 0, 1.0 / np.sqrt(sw), np.nan)
                else:
                    sq = np.bincount(inv, weights=np.where(sel, (mag - mean[inv]) ** 2, 0.0), minlength=n)
                    mean_err = np.where(
                        nb > 1, np.sqrt(sq / np.maximum(nb - 1, 1) / np.maximum(nb, 1)), np.nan
                    )
            out[f"mag_{name}"] = mean
            out[f"mag_err_{name}"] = mean_err
            out[f"n_{name}"] = nb
            out[f"mag_{name}"].unit = out[f"mag_err_{name}"].unit = "mag"
    return out
