"""Layer c: frames of one field aligned to a reference frame, and its WCS carried over.

Each frame's sources are matched to the reference frame's sources by triangle
asterisms, then by nearest neighbours with an affine fit and outlier rejection.
The affine transform (frame pixels -> reference pixels, 0-based) gives every frame
a consistent pixel frame; when the reference frame has a WCS, the composition
``reference WCS o transform`` becomes the frame's WCS (fitted as TAN or TAN-SIP on
a grid, exact for an affine transform of a TAN or TAN-SIP reference).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from darkroom.astrom.asterism import match_asterisms, nearest_pairs
from darkroom.astrom.settings import AlignConfig, SeriesConfig
from darkroom.astrom.solve import (
    PointingHint,
    SolveResult,
    check_header_wcs,
    solve_frame,
    source_positions,
)
from darkroom.astrom.transform import AffineTransform, fit_affine, fit_similarity
from darkroom.astrom.wcsfit import fit_tan_sip, pixel_scale_arcsec
from darkroom.errors import SolveError

__all__ = [
    "AlignConfig",
    "Alignment",
    "FrameSources",
    "SeriesConfig",
    "align_sources",
    "detector_fixed_sources",
    "mask_sources",
    "solve_frame_series",
    "wcs_from_alignment",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alignment:
    """Transform of one frame onto a reference frame."""

    transform: AffineTransform  #: frame pixels -> reference pixels (0-based)
    n_matched: int  #: matched source pairs
    rms_pix: float  #: rms distance of the pairs after the transform [reference pixels]
    quality: str  #: good / marginal / failed
    source_index: np.ndarray  #: matched rows of the frame's source table
    reference_index: np.ndarray  #: matched rows of the reference's source table


def align_sources(
    sources: Table, reference_sources: Table, *, config: AlignConfig | None = None
) -> Alignment:
    """Affine (or similarity) transform taking a frame's source positions onto a reference frame's.

    Raises
    ------
    SolveError
        Too few sources or no asterism match.
    """
    config = config or AlignConfig()
    x, y, flux = source_positions(sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp)
    xr, yr, flux_r = source_positions(
        reference_sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp
    )

    def bright(px, py, f):
        ok = np.flatnonzero(np.isfinite(px) & np.isfinite(py))
        order = np.argsort(-np.nan_to_num(f[ok], nan=-np.inf), kind="stable")
        return ok[order[: config.n_match_sources]]

    b = bright(x, y, flux)
    br = bright(xr, yr, flux_r)
    match = match_asterisms(
        np.column_stack([x[b], y[b]]),
        np.column_stack([xr[br], yr[br]]),
        scale=1.0,
        scale_tolerance=config.scale_tolerance,
        allow_reflection=config.allow_reflection,
        config=config.asterism,
    )
    transform = match.transform
    ok = np.isfinite(x) & np.isfinite(y)
    ok_r = np.flatnonzero(np.isfinite(xr) & np.isfinite(yr))
    radius = config.match_radius_pix
    reflect = transform.reflects
    si = ri = np.zeros(0, dtype=int)
    rms = np.inf
    inl = np.zeros(0, dtype=bool)
    for iteration in range(5):
        tx, ty = transform.apply(x, y)
        tx = np.where(ok, tx, np.nan)
        valid = np.flatnonzero(ok)
        s_i, r_i, _ = nearest_pairs(tx[valid], ty[valid], xr[ok_r], yr[ok_r], radius)
        s_i, r_i = valid[s_i], ok_r[r_i]
        if len(s_i) < 3:
            break
        inl = np.ones(len(s_i), dtype=bool)
        for _clip in range(5):
            affine = config.transform == "affine" or (
                config.transform == "auto" and inl.sum() >= config.min_affine_pairs
            )
            if affine and inl.sum() >= 6:
                new_t = fit_affine(x[s_i][inl], y[s_i][inl], xr[r_i][inl], yr[r_i][inl])
            else:
                new_t = fit_similarity(x[s_i][inl], y[s_i][inl], xr[r_i][inl], yr[r_i][inl], reflect=reflect)
            px, py = new_t.apply(x[s_i], y[s_i])
            d = np.hypot(px - xr[r_i], py - yr[r_i])
            sigma = max(float(np.median(d[inl])) / 1.1774, 1e-3)
            new_inl = d <= config.clip_sigma * sigma
            if new_inl.sum() < 3 or np.array_equal(new_inl, inl):
                break
            inl = new_inl
        transform = new_t
        si, ri = s_i[inl], r_i[inl]
        rms = float(np.sqrt(np.mean(d[inl] ** 2)))
        new_radius = max(config.min_match_radius_pix, min(radius, 5.0 * rms))
        if new_radius == radius and iteration > 0:
            break
        radius = new_radius
    n = len(si)
    if n >= config.good_min_matches and rms <= config.good_rms_pix:
        quality = "good"
    elif n >= config.marginal_min_matches and rms <= config.marginal_rms_pix:
        quality = "marginal"
    else:
        quality = "failed"
    return Alignment(
        transform=transform, n_matched=n, rms_pix=rms, quality=quality, source_index=si, reference_index=ri
    )


def wcs_from_alignment(
    transform: AffineTransform, reference_wcs: WCS, *, shape: tuple[int, int], order: int | None = None
) -> WCS:
    """WCS of a frame whose pixels map to the reference frame's by ``transform``.

    The sky positions of a grid of the frame's pixels, through ``transform`` and
    ``reference_wcs``, are fitted with TAN (order 1) or TAN-SIP; ``order`` defaults to
    the reference's SIP order (1 without SIP), which reproduces the composition exactly.
    ``shape`` is the frame's (ny, nx).
    """
    celestial = reference_wcs.celestial
    if order is None:
        order = celestial.sip.a_order if celestial.sip is not None else 1
        if celestial.wcs.get_pv() or celestial.cpdis1 is not None or celestial.det2im1 is not None:
            order = max(order, 3)  # other distortions: approximate them
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 24), np.linspace(0, ny - 1, 24))
    rx, ry = transform.apply(gx.ravel(), gy.ravel())
    ra, dec = celestial.all_pix2world(rx, ry, 0)
    model = fit_tan_sip(
        gx.ravel(), gy.ravel(), ra, dec, order=order, ref_pix=((nx - 1) / 2.0, (ny - 1) / 2.0)
    )
    return model.to_wcs(shape=shape)


@dataclass
class FrameSources:
    """One frame of a field for :func:`solve_frame_series`."""

    sources: Table  #: detected sources with 0-based ``x``, ``y`` and a flux column
    shape: tuple[int, int]  #: image (ny, nx)
    wcs: WCS | None = None  #: header WCS, if any
    hint: PointingHint | None = None  #: pointing hint, if any
    name: str = ""  #: for messages


_Aligned = tuple[Alignment | None, AffineTransform | None, list[str]]


def _align_all(sources: list[Table], ref: int, config: SeriesConfig) -> list[_Aligned]:
    """Align every frame to the reference, directly or through an aligned neighbour."""
    out: list[_Aligned] = [(None, None, []) for _ in sources]
    out[ref] = (None, AffineTransform.identity(), [])
    transforms: dict[int, AffineTransform] = {ref: AffineTransform.identity()}
    for i in sorted(range(len(sources)), key=lambda k: (abs(k - ref), k)):
        if i == ref:
            continue
        reasons: list[str] = []
        alignment = None
        to_ref = None
        try:
            direct = align_sources(sources[i], sources[ref], config=config.align)
            if direct.quality == "failed":
                reasons.append(f"to the reference: {direct.n_matched} pairs, rms {direct.rms_pix:.2f} pix")
            else:
                alignment, to_ref = direct, direct.transform
        except SolveError as exc:
            reasons.append(f"to the reference: {exc.reason}")
        if alignment is None:
            for j in sorted(transforms, key=lambda k: (abs(k - i), k))[: config.max_chain_tries + 1]:
                if j == ref:
                    continue
                try:
                    step = align_sources(sources[i], sources[j], config=config.align)
                except SolveError as exc:
                    reasons.append(f"via frame {j}: {exc.reason}")
                    continue
                if step.quality == "failed":
                    reasons.append(f"via frame {j}: {step.n_matched} pairs, rms {step.rms_pix:.2f} pix")
                    continue
                alignment, to_ref = step, step.transform.then(transforms[j])
                break
        if to_ref is not None:
            transforms[i] = to_ref
        out[i] = (alignment, to_ref, reasons)
    return out


def detector_fixed_sources(
    sources: Sequence[Table],
    transforms: Sequence[AffineTransform | None],
    *,
    fraction: float = 0.5,
    radius_pix: float = 0.7,
    min_shift_pix: float = 3.0,
) -> list[np.ndarray]:
    """Per frame, a boolean mask of the sources fixed to the detector (hot pixels, bad columns).

    ``transforms`` map each frame's pixels to a common (reference) frame; None for a
    frame that was not aligned. A source is fixed when at least ``fraction`` of the
    frames whose field moved by more than ``min_shift_pix`` relative to it have a
    source at the same detector pixel (within ``radius_pix``): a star would have moved
    with the field. Needs 5 such frames; otherwise nothing is masked.
    """
    masks = [np.zeros(len(t), dtype=bool) for t in sources]
    have = [i for i, t in enumerate(transforms) if t is not None]
    if len(have) < 6:
        return masks
    xy = {
        i: np.column_stack(
            [np.asarray(sources[i]["x"], dtype=float), np.asarray(sources[i]["y"], dtype=float)]
        )
        for i in have
    }
    trees = {i: cKDTree(np.nan_to_num(xy[i], nan=-1e9)) for i in have}
    inverse = {i: transforms[i].inverse() for i in have}
    rng = np.random.default_rng(0)
    for i in have:
        if not np.isfinite(xy[i]).any():
            continue
        cx, cy = np.nanmedian(xy[i], axis=0)
        p_ref = transforms[i].apply(cx, cy)
        others = []
        for j in have:
            if j == i:
                continue
            qx, qy = inverse[j].apply(*p_ref)  # where a star at this frame's centre lands in frame j
            if np.hypot(qx - cx, qy - cy) > min_shift_pix:
                others.append(j)
        if len(others) < 5:
            continue
        if len(others) > 30:
            others = [int(j) for j in rng.choice(others, 30, replace=False)]
        hits = np.zeros(len(xy[i]), dtype=int)
        points = np.nan_to_num(xy[i], nan=1e9)
        for j in others:
            dist, _ = trees[j].query(points, k=1, distance_upper_bound=radius_pix)
            hits += np.isfinite(dist)
        masks[i] = hits >= fraction * len(others)
    return masks


def mask_sources(table: Table, mask: np.ndarray) -> Table:
    """Copy of a source table whose masked rows have NaN positions (row numbers are kept)."""
    if not np.any(mask):
        return table
    out = table.copy(copy_data=True)
    out["x"] = np.where(mask, np.nan, np.asarray(table["x"], dtype=float))
    out["y"] = np.where(mask, np.nan, np.asarray(table["y"], dtype=float))
    return out


def _pick_reference(frames: Sequence[FrameSources]) -> int:
    with_wcs = [i for i, f in enumerate(frames) if f.wcs is not None and f.wcs.has_celestial]
    if with_wcs:
        return with_wcs[0]
    return int(np.argmax([len(f.sources) for f in frames]))


def solve_frame_series(
    frames: Sequence[FrameSources],
    *,
    catalog: Table | None = None,
    reference_index: int | None = None,
    config: SeriesConfig | None = None,
) -> list[SolveResult]:
    """Solve the frames of one field: the reference frame absolutely, the others by alignment.

    1. The reference frame (``reference_index``, else the first frame with a WCS, else
       the one with the most sources) is solved by :func:`~darkroom.astrom.solve.solve_frame`
       (its header WCS is kept when there is no catalog).
    2. Sources fixed to the detector (hot pixels, bad columns: at the same pixel in most
       frames although the field moved) are found after a first alignment pass and
       ignored in a second one (``static_fraction``).
    3. Every other frame is aligned to it (directly, or through an already aligned
       neighbour in the sequence when that fails); the transform is in
       ``result.to_reference`` and, when the reference has a WCS, the frame gets
       ``reference WCS o transform`` (method 'relative'), refined against the catalog
       when there is one (method 'relative_refined').

    Other frames' own header WCS are not used. A frame that cannot be aligned gets a
    result with quality 'failed' and the reason; the series goes on.

    Returns
    -------
    list of SolveResult, in the order of ``frames``.
    """
    config = config or SeriesConfig()
    if not frames:
        return []
    ref = _pick_reference(frames) if reference_index is None else int(reference_index)
    if not 0 <= ref < len(frames):
        raise SolveError(f"reference_index {ref} is outside the {len(frames)} frames")
    rf = frames[ref]
    try:
        ref_result = solve_frame(
            rf.sources, shape=rf.shape, catalog=catalog, header_wcs=rf.wcs, hint=rf.hint, config=config.solve
        )
        ref_result.to_reference = AffineTransform.identity()
    except SolveError as exc:
        if rf.wcs is not None or (catalog is not None and rf.hint is not None):
            log.warning("reference frame %s not solved: %s", rf.name or ref, exc.reason)
        ref_result = SolveResult(
            wcs=None,
            method="reference",
            n_matched=len(rf.sources),
            rms_arcsec=float("nan"),
            rms_pix=0.0,
            quality="marginal",
            reason=f"reference frame of the field without absolute WCS ({exc.reason})",
            to_reference=AffineTransform.identity(),
        )
    ref_wcs = ref_result.wcs
    ref_scale = pixel_scale_arcsec(ref_wcs) if ref_wcs is not None else float("nan")

    sources = [f.sources for f in frames]
    aligned = _align_all(sources, ref, config)
    if config.static_fraction is not None:
        static = detector_fixed_sources(
            sources,
            [a[1] for a in aligned],
            fraction=config.static_fraction,
            radius_pix=config.static_radius_pix,
            min_shift_pix=config.static_min_shift_pix,
        )
        if any(mask.any() for mask in static):
            n_static = int(sum(mask.sum() for mask in static))
            log.info(
                "ignoring %d detector-fixed sources (hot pixels, bad columns) in the alignment", n_static
            )
            sources = [mask_sources(t, mask) for t, mask in zip(sources, static, strict=True)]
            aligned = _align_all(sources, ref, config)

    results: list[SolveResult | None] = [None] * len(frames)
    results[ref] = ref_result
    for i, frame in enumerate(frames):
        if i == ref:
            continue
        alignment, to_ref, reasons = aligned[i]
        if alignment is None or to_ref is None:
            results[i] = SolveResult(
                wcs=None,
                method="relative",
                n_matched=0,
                rms_arcsec=float("nan"),
                rms_pix=float("nan"),
                quality="failed",
                reason=f"{frame.name or i} not aligned: " + "; ".join(reasons),
            )
            continue
        wcs = wcs_from_alignment(to_ref, ref_wcs, shape=frame.shape) if ref_wcs is not None else None
        result = SolveResult(
            wcs=wcs,
            method="relative",
            n_matched=alignment.n_matched,
            rms_arcsec=alignment.rms_pix * ref_scale,
            rms_pix=alignment.rms_pix,
            quality=alignment.quality,  # type: ignore[arg-type]
            reason="" if wcs is not None else "aligned to the reference frame, which has no absolute WCS",
            sip_order=(ref_wcs.sip.a_order if ref_wcs is not None and ref_wcs.sip is not None else 1)
            if wcs is not None
            else 0,
            to_reference=to_ref,
        )
        if wcs is not None and catalog is not None and len(catalog) and config.refine_with_catalog:
            refined = check_header_wcs(
                frame.sources, wcs=wcs, shape=frame.shape, catalog=catalog, config=config.solve
            )
            if refined.ok:
                refined.method = "relative_refined"
                refined.to_reference = to_ref
                result = refined
        results[i] = result
    return [r for r in results if r is not None]
