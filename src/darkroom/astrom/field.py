"""Solving the frames of one field together: a reference frame absolutely, the others by alignment.

The reference frame is the first frame with a header WCS, else the one with most usable sources;
with a reference catalogue, the first of the leading candidates that solves. Every other frame is
aligned to it (:func:`~darkroom.astrom.solve_frame_series`); a frame that does not align is solved
on its own when it can and tied to the reference through the sky. A field whose reference frame is
not solved near its pointing is searched again in a widening cone (:func:`widening`). A field with
no header WCS and no pointing at all can be solved blind (:func:`blind_reference`).

Pixels are 0-based; shapes ``(ny, nx)``; angles in degrees unless named otherwise.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS

from darkroom.astrom.blind import blind_solve
from darkroom.astrom.relative import FrameSources, solve_frame_series
from darkroom.astrom.settings import SolveSettings
from darkroom.astrom.solve import SolveResult, solve_frame, source_positions
from darkroom.astrom.transform import AffineTransform, fit_affine
from darkroom.astrom.wcsfit import pixel_scale_arcsec
from darkroom.catalogs import FileCatalogSource, ShardCatalogSource, angular_separation_deg
from darkroom.errors import SolveError

__all__ = [
    "CatalogCone",
    "FieldSolution",
    "affine_between",
    "blind_reference",
    "catalog_cone",
    "choose_reference",
    "failed_result",
    "scaled_by_fwhm",
    "solve_alone",
    "solve_field",
    "source_counts",
    "widening",
]

log = logging.getLogger(__name__)


def scaled_by_fwhm(cfg: SolveSettings, fwhms: Sequence[float | None]) -> SolveSettings:
    """Match radii and rms limits of the solver no tighter than the field's seeing allows: a
    centroid is good to ~0.1-0.2 FWHM, so a 5-pixel DSLR star is not held to a 1-pixel rms."""
    values = [float(f) for f in fwhms if f]
    if not values:
        return cfg
    fwhm = float(np.median(values))
    solve = cfg.series.solve
    scaled = solve.model_copy(
        update={
            "good_rms_pix": max(solve.good_rms_pix, 0.2 * fwhm),
            "marginal_rms_pix": max(solve.marginal_rms_pix, 0.4 * fwhm),
            "match_radius_pix": max(solve.match_radius_pix, 1.5 * fwhm),
            "min_match_radius_pix": max(solve.min_match_radius_pix, 0.4 * fwhm),
        }
    )
    if scaled == solve:
        return cfg
    return cfg.model_copy(update={"series": cfg.series.model_copy(update={"solve": scaled})})


def widening(cfg: SolveSettings, frames: Sequence[FrameSources]) -> Iterator[SolveSettings]:
    """The near-blind search ladder: the configured pointing uncertainty, then 5x and 25x it
    (at least 0.5 and 2 deg), then, for a local catalogue file or shards, 10 deg around the
    pointing. Only frames with a pointing and no header WCS need more than the first step."""
    yield cfg
    if cfg.reference_catalog is None or not any(f.wcs is None and f.hint is not None for f in frames):
        return
    base = cfg.pointing_uncertainty_deg
    steps = [max(0.5, 5 * base), max(2.0, 25 * base)]
    if isinstance(cfg.reference_catalog, FileCatalogSource | ShardCatalogSource):
        steps.append(10.0)
    solve = cfg.series.solve
    for unc in sorted({u for u in steps if u > base}):
        wide = solve.model_copy(update={"search_radius_deg": min(30.0, max(solve.search_radius_deg, unc))})
        yield cfg.model_copy(
            update={
                "pointing_uncertainty_deg": min(30.0, unc),
                "series": cfg.series.model_copy(update={"solve": wide}),
            }
        )


def failed_result(reason: str, method: str) -> SolveResult:
    """A frame's solution that failed, with the reason."""
    return SolveResult(
        wcs=None,
        method=method,  # type: ignore[arg-type]
        n_matched=0,
        rms_arcsec=float("nan"),
        rms_pix=float("nan"),
        quality="failed",
        reason=reason,
    )


def affine_between(wcs: WCS, reference: WCS, shape: tuple[int, int]) -> AffineTransform:
    """Affine transform from a frame's pixels to the reference frame's, through the sky (0-based)."""
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 12), np.linspace(0, ny - 1, 12))
    ra, dec = wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
    rx, ry = reference.all_world2pix(ra, dec, 0)
    return fit_affine(gx.ravel(), gy.ravel(), rx, ry)


def source_counts(frames: Sequence[FrameSources], *, flux_column: str) -> list[int]:
    """Usable sources (finite positions, not sharp) of each frame."""
    counts = []
    for frame in frames:
        if len(frame.sources):
            x, y, _ = source_positions(frame.sources, flux_column=flux_column, exclude_sharp=True)
            counts.append(int(np.count_nonzero(np.isfinite(x) & np.isfinite(y))))
        else:
            counts.append(0)
    return counts


@dataclass(frozen=True)
class CatalogCone:
    """The reference-catalogue cone over a field: centre, radius [deg], epoch [Julian year] or None."""

    ra_deg: float
    dec_deg: float
    radius_deg: float
    epoch_jyear: float | None


def catalog_cone(
    frames: Sequence[FrameSources], mjds: Sequence[float | None], *, pointing_uncertainty_deg: float
) -> CatalogCone | None:
    """The cone holding every frame of a field (by its header WCS, else its pointing hint): the mean
    direction of the frames' centres, their spread plus 1.15 half diagonals plus the pointing
    uncertainty; the epoch is the frames' mean time. None when no frame can be placed."""
    centres, radii = [], []
    for frame in frames:
        ny, nx = frame.shape
        if frame.wcs is not None:
            ra, dec = frame.wcs.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
            scale = pixel_scale_arcsec(frame.wcs)
            centres.append((float(ra[0]), float(dec[0])))
        elif frame.hint is not None:
            centres.append((frame.hint.ra_deg, frame.hint.dec_deg))
            scale = frame.hint.pixel_scale_arcsec
        else:
            continue
        radii.append(0.5 * math.hypot(nx, ny) * scale / 3600.0)
    if not centres:
        return None
    ra = np.radians([c[0] for c in centres])
    dec = np.radians([c[1] for c in centres])
    vec = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]).mean(axis=1)
    ra0 = float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0)
    dec0 = float(np.degrees(np.arctan2(vec[2], np.hypot(vec[0], vec[1]))))
    spread = float(np.max(angular_separation_deg(ra0, dec0, np.degrees(ra), np.degrees(dec))))
    times = [m for m in mjds if m is not None]
    epoch = float(Time(np.mean(times), format="mjd").jyear) if times else None
    return CatalogCone(ra0, dec0, spread + 1.15 * max(radii) + pointing_uncertainty_deg, epoch)


def choose_reference(
    frames: Sequence[FrameSources], counts: Sequence[int], catalog: Table | None, cfg: SolveSettings
) -> int:
    """The reference frame: header WCS first, then the most usable sources; with a catalog,
    the first of the ``max_reference_tries`` leading candidates that solves."""
    order = _reference_order(frames, counts)
    first = next(order)
    if catalog is None or not len(catalog):
        return first
    for i in itertools.islice(itertools.chain([first], order), cfg.max_reference_tries):
        f = frames[i]
        if f.wcs is None and f.hint is None:
            continue
        try:
            result = _solve_own(f, catalog, cfg)
        except SolveError as exc:
            log.info("reference candidate %s not solved: %s", f.name, exc.reason)
            continue
        if result.ok:
            return i
    return first


def _reference_order(frames: Sequence[FrameSources], counts: Sequence[int]) -> Iterator[int]:
    """The frames by (no header WCS, fewest usable sources, index), made as they are asked for: a
    frame's header WCS is looked at only when the frames before it do not decide (a frame may
    make its WCS when first asked for it)."""
    without: list[int] = []
    for i in sorted(range(len(frames)), key=lambda k: (-counts[k], k)):
        if frames[i].wcs is None:
            without.append(i)
        else:
            yield i
    yield from without


def _solve_own(frame: FrameSources, catalog: Table | None, cfg: SolveSettings) -> SolveResult:
    """One frame solved on its own: its header WCS, else its pointing hint, against ``catalog``."""
    return solve_frame(
        frame.sources,
        shape=frame.shape,
        catalog=catalog,
        header_wcs=frame.wcs,
        hint=frame.hint,
        config=cfg.series.solve,
    )


def solve_alone(
    frame: FrameSources, aligned: SolveResult, catalog: Table | None, ref_wcs: WCS | None, cfg: SolveSettings
) -> SolveResult:
    """A frame that did not align: its own header WCS or hint, tied to the reference through the sky
    (``aligned``, with the reasons of both attempts, when that fails too)."""
    if frame.wcs is None and (catalog is None or frame.hint is None):
        return aligned
    try:
        alone = _solve_own(frame, catalog, cfg)
    except SolveError as exc:
        aligned.reason = f"{aligned.reason}; alone: {exc.reason}"
        return aligned
    if not alone.ok:
        aligned.reason = f"{aligned.reason}; alone: {alone.reason}"
        return aligned
    if ref_wcs is not None and alone.wcs is not None:
        alone.to_reference = affine_between(alone.wcs, ref_wcs, frame.shape)
    alone.reason = "; ".join(
        r for r in (aligned.reason, f"solved on its own ({alone.method})", alone.reason) if r
    )
    return alone


def blind_reference(
    frames: list[FrameSources],
    counts: Sequence[int],
    pixel_scales: Sequence[float | None],
    cfg: SolveSettings,
) -> tuple[int, str] | None:
    """Blind-solve the frame with most sources when no frame of the field has a header WCS or a
    pointing; its solution becomes that frame's "header" WCS in ``frames`` (refined and checked
    like one). Returns (frame index, engine used) or None."""
    if (
        cfg.blind.engine == "none"
        or not frames
        or any(f.wcs is not None or f.hint is not None for f in frames)
    ):
        return None
    i = int(np.argmax(counts))
    frame = frames[i]
    x, y, flux = source_positions(frame.sources, flux_column=cfg.series.solve.flux_column, exclude_sharp=True)
    try:
        sol = blind_solve(x, y, flux, shape=frame.shape, pixel_scale_arcsec=pixel_scales[i], config=cfg.blind)
    except SolveError as exc:
        log.warning("field of %s: no pointing and blind solving failed: %s", frame.name, exc.reason)
        return None
    log.info("%s solved blind by %s", frame.name, sol.method)
    frames[i] = dataclasses.replace(frame, wcs=sol.wcs)
    return i, sol.method


@dataclass
class FieldSolution:
    """Each frame's solution, the reference frame's index, the catalogue used, and the settings
    of the attempt that ended the search (scaled by the seeing, widened)."""

    results: list[SolveResult]
    reference: int
    catalog: Table | None
    settings: SolveSettings


def solve_field(
    frames: Sequence[FrameSources],
    counts: Sequence[int],
    *,
    settings: SolveSettings,
    fwhms: Sequence[float | None] = (),
    load_catalog: Callable[[SolveSettings], Table | None],
    name: str = "",
) -> FieldSolution:
    """Solve one field's frames (see the module docstring). ``counts`` are the usable sources of
    each frame (:func:`source_counts`), ``fwhms`` their FWHM [pixel] (None: unknown);
    ``load_catalog(settings)`` gives the reference stars of the cone the settings describe
    (:func:`catalog_cone`), or None without a catalogue.

    The reference frame fails with a reason when even it has fewer than ``min_sources``; a frame
    that failed but came with a header WCS and has too few stars to check it keeps that WCS as
    'marginal'.
    """
    min_sources = settings.series.solve.min_sources
    cfg = scaled_by_fwhm(settings, fwhms)
    for attempt in widening(cfg, frames):
        # pointing keyword -> a growing radius -> the whole catalogue: widen only while the
        # field's reference frame stays unsolved
        catalog = load_catalog(attempt)
        ref = choose_reference(frames, counts, catalog, attempt)
        results = solve_frame_series(
            list(frames), catalog=catalog, reference_index=ref, config=attempt.series
        )
        if (results[ref].ok and results[ref].wcs is not None) or catalog is None:
            break
        log.info(
            "field %s: not solved within %.2f deg of the pointing; widening",
            name,
            attempt.pointing_uncertainty_deg,
        )
    cfg = attempt
    if counts[ref] < min_sources:  # even the best frame has (next to) no stars
        results[ref] = failed_result(
            f"too few stars: {counts[ref]} sources, at least {min_sources} needed "
            "(clouds, wrong exposure, or detection threshold too high?)",
            "reference",
        )
    ref_wcs = results[ref].wcs
    for i, result in enumerate(results):
        if result.ok or i == ref:
            continue
        results[i] = solve_alone(frames[i], result, catalog, ref_wcs, cfg)
    for i, result in enumerate(results):
        if result.quality == "failed" and frames[i].wcs is not None and counts[i] < min_sources:
            # too few stars to check or refine it, but a header WCS is what the frame was given
            results[i] = SolveResult(
                wcs=frames[i].wcs,
                method="header",
                n_matched=0,
                rms_arcsec=float("nan"),
                rms_pix=float("nan"),
                quality="marginal",
                reason=f"header WCS kept unverified: {counts[i]} sources, too few to check it "
                f"(at least {min_sources})",
            )
    return FieldSolution(results, ref, catalog, cfg)
