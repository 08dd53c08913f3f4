"""From a field's detections to its sources, around :func:`~darkroom.timeseries.associate`: the match
radius, which detections are associated, which associated groups become (or update) sources,
reference stars that were never detected, and the running means of a source seen again.

Coordinates: ``"sky"`` (RA/Dec [deg], radii [arcsec]) or ``"pixel"`` (the field's reference
frame, 0-based pixels, radii [pixel]); instrumental magnitudes are ``-2.5 log10(flux / exptime_s)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from darkroom.phot.match import match_catalogs, radec_to_unit, sky_to_pixel, unit_to_radec
from darkroom.timeseries.settings import AssociateSettings

__all__ = [
    "SourceMeans",
    "field_sources",
    "match_radius",
    "merge_means",
    "min_epochs_for",
    "on_any_frame",
    "undetected_reference_stars",
    "usable_detections",
]


def match_radius(rms: Sequence[float | None], settings: AssociateSettings, coords: str) -> float:
    """``radius_rms_factor`` times the median astrometric rms of the frames (arcsec on the sky,
    pixels in a reference frame), bounded by the settings' smallest and largest radius."""
    finite = [float(v) for v in rms if v is not None and np.isfinite(v)]
    r = settings.radius_rms_factor * float(np.median(finite)) if finite else 0.0
    if coords == "sky":
        return float(np.clip(r, settings.min_radius_arcsec, settings.max_radius_arcsec))
    return float(np.clip(r, settings.min_radius_pix, settings.max_radius_pix))


def usable_detections(
    catalog: Mapping[str, np.ndarray], settings: AssociateSettings, *, exptime_s: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x, y`` [pixel] and instrumental magnitude (NaN without a positive ``flux_aper_adu``) of the
    detections of one frame that are associated: finite positions, ``snr >= min_snr``, and not
    ``sharp`` (cosmic rays) when ``exclude_sharp``. ``catalog`` maps column names to arrays (a
    Table's ``columns``, or :func:`darkroom.io.tables.read_parquet_columns`); ``x``, ``y`` needed."""
    x = np.asarray(catalog["x"], float)
    y = np.asarray(catalog["y"], float)
    keep = np.isfinite(x) & np.isfinite(y)
    if "snr" in catalog:
        keep &= np.nan_to_num(np.asarray(catalog["snr"], float), nan=0.0) >= settings.min_snr
    if settings.exclude_sharp and "sharp" in catalog:
        keep &= ~np.asarray(catalog["sharp"], bool)
    if "flux_aper_adu" not in catalog:
        return x[keep], y[keep], np.full(int(keep.sum()), np.nan)
    flux = np.asarray(catalog["flux_aper_adu"], float)[keep]
    with np.errstate(all="ignore"):
        mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0) / (exptime_s or 1.0)), np.nan)
    return x[keep], y[keep], mag


def min_epochs_for(settings: AssociateSettings, n_frames: int, *, new_field: bool) -> int:
    """Frames a new source must be detected in: ``min_epochs`` or ``min_epoch_fraction`` of the
    frames, whichever is more; a new field seen in fewer frames (a standard star, a single visit)
    keeps what every one of its frames shows."""
    n = max(settings.min_epochs, math.ceil(settings.min_epoch_fraction * n_frames))
    return min(n, n_frames) if new_field else n


def field_sources(
    summary: Table,
    source_id: np.ndarray,
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    *,
    coords: str,
    known_ids: set[int],
    min_epochs: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(new, updated) sources of an association.

    ``summary`` is :attr:`~darkroom.timeseries.AssociationResult.sources` (``source_id``,
    ``n_epochs``, ``ra``, ``dec`` in sky mode, ``mag_<band>``); ``source_id``, ``x_ref``, ``y_ref``
    are per detection (its source and reference-frame position). Each item holds ``source_id``,
    ``ra``/``dec`` (None in pixel mode), the mean ``x_ref``/``y_ref``, ``n_epochs`` and
    ``mean_mag`` (band -> mag; the band-less ``all`` as ``""``). A known source seen again is
    updated; a new one is kept when seen in at least ``min_epochs`` frames.
    """
    sid = np.asarray(source_id)
    uniq, inv = np.unique(sid, return_inverse=True)
    cnt = np.bincount(inv, minlength=uniq.size) if sid.size else np.zeros(0)
    xr = np.bincount(inv, weights=np.asarray(x_ref, float), minlength=uniq.size) / np.maximum(cnt, 1)
    yr = np.bincount(inv, weights=np.asarray(y_ref, float), minlength=uniq.size) / np.maximum(cnt, 1)
    ref_xy = {int(s): (float(a), float(b)) for s, a, b in zip(uniq, xr, yr, strict=True)}
    bands = [c[4:] for c in summary.colnames if c.startswith("mag_") and not c.startswith("mag_err_")]
    new, updated = [], []
    for row in summary:
        s = int(row["source_id"])
        n = int(row["n_epochs"])
        if n == 0:
            continue
        mags = {}
        for band in bands:
            v = row[f"mag_{band}"]
            if np.isfinite(v):
                mags[band if band != "all" else ""] = float(v)
        item = {
            "source_id": s,
            "ra": float(row["ra"]) if coords == "sky" else None,
            "dec": float(row["dec"]) if coords == "sky" else None,
            "x_ref": ref_xy.get(s, (None, None))[0],
            "y_ref": ref_xy.get(s, (None, None))[1],
            "n_epochs": n,
            "mean_mag": mags,
        }
        if s in known_ids:
            updated.append(item)
        elif n >= min_epochs:
            new.append(item)
    return new, updated


def on_any_frame(
    ra_deg: np.ndarray, dec_deg: np.ndarray, frames: Sequence[tuple[Any, int, int]]
) -> np.ndarray:
    """Whether each sky position [deg] falls on at least one frame (WCS, nx, ny): within
    ``[0, n - 1]`` in 0-based pixels."""
    on = np.zeros(np.asarray(ra_deg).size, bool)
    for wcs, nx, ny in frames:
        fx, fy = sky_to_pixel(wcs, ra_deg, dec_deg)
        on |= (fx >= 0) & (fx <= nx - 1) & (fy >= 0) & (fy <= ny - 1)
    return on


def undetected_reference_stars(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    *,
    on_frames: np.ndarray,
    have_ra: np.ndarray,
    have_dec: np.ndarray,
    radius_arcsec: float,
) -> np.ndarray:
    """Indices of the reference stars on the frames (``on_frames``) with no source within
    ``max(radius_arcsec, 1)`` arcsec of the positions already held (``have_ra``, ``have_dec``
    [deg]; NaN entries ignored): the stars to measure forced, never detected."""
    ra, dec = np.asarray(ra_deg, float), np.asarray(dec_deg, float)
    taken = np.zeros(ra.size, bool)
    hr, hd = np.asarray(have_ra, float), np.asarray(have_dec, float)
    if hr.size:
        ok = np.isfinite(hr) & np.isfinite(hd)
        i_ref, _, _ = match_catalogs(ra, dec, hr[ok], hd[ok], radius_arcsec=max(radius_arcsec, 1.0))
        taken[i_ref] = True
    return np.flatnonzero(np.asarray(on_frames, bool) & ~taken)


@dataclass(frozen=True)
class SourceMeans:
    """A source's mean position [deg] (None in pixel mode), frames with a detection, mean mags."""

    ra_deg: float | None
    dec_deg: float | None
    n_epochs: int
    mean_mag: dict[str, float]


def merge_means(old: SourceMeans, new: SourceMeans) -> SourceMeans:
    """The means over the old and the new detections of one source, weighted by their frame counts:
    the position as the mean unit vector, each band's magnitude (a band new to the source takes
    the new value)."""
    n_old, n_new = old.n_epochs or 0, new.n_epochs
    n_all = n_old + n_new
    ra, dec = old.ra_deg, old.dec_deg
    if new.ra_deg is not None and old.ra_deg is not None and n_old:
        v = radec_to_unit([old.ra_deg], [old.dec_deg])[0] * n_old
        v = v + radec_to_unit([new.ra_deg], [new.dec_deg])[0] * n_new
        r, d = unit_to_radec(v[None, :])
        ra, dec = float(r[0]), float(d[0])
    mags = dict(old.mean_mag or {})
    for band, value in new.mean_mag.items():
        prev = mags.get(band)
        mags[band] = value if prev is None or not n_old else (prev * n_old + value * n_new) / n_all
    return SourceMeans(ra, dec, n_all, mags)
