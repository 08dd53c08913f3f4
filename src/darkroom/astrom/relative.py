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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from darkroom.astrom.asterism import AsterismTarget, match_asterisms, nearest_pairs
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
    "LazyWcsFrame",
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


class _Prepared:
    """One frame's side of :func:`align_sources`, made once per frame and settings: its positions
    and fluxes and its brightest points; as a reference, also their asterisms and trees (made
    when first used)."""

    def __init__(self, sources: Table, config: AlignConfig) -> None:
        self.config = config
        self.x, self.y, flux = source_positions(
            sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp
        )
        #: rows with finite positions
        self.ok = np.flatnonzero(np.isfinite(self.x) & np.isfinite(self.y))
        order = np.argsort(-np.nan_to_num(flux[self.ok], nan=-np.inf), kind="stable")
        #: rows of the brightest finite sources, brightest first
        self.bright = self.ok[order[: config.n_match_sources]]

    @cached_property
    def target(self) -> AsterismTarget:
        """The brightest points as an asterism target."""
        b = self.bright
        return AsterismTarget.of(
            np.column_stack([self.x[b], self.y[b]]),
            scale=1.0,
            scale_tolerance=self.config.scale_tolerance,
            config=self.config.asterism,
        )

    @cached_property
    def tree(self) -> cKDTree | None:
        """A tree of the finite positions (None without any)."""
        ok = self.ok
        return cKDTree(np.column_stack([self.x[ok], self.y[ok]])) if len(ok) else None


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
    return _align(_Prepared(sources, config), _Prepared(reference_sources, config), config)


def _align(frame: _Prepared, reference: _Prepared, config: AlignConfig) -> Alignment:
    """:func:`align_sources` of prepared frames (a reference prepared once serves every frame)."""
    x, y, b = frame.x, frame.y, frame.bright
    xr, yr = reference.x, reference.y
    match = match_asterisms(
        np.column_stack([x[b], y[b]]),
        reference.target,
        scale=1.0,
        scale_tolerance=config.scale_tolerance,
        allow_reflection=config.allow_reflection,
        config=config.asterism,
    )
    transform = match.transform
    ok = np.isfinite(x) & np.isfinite(y)
    ok_r = reference.ok
    radius = config.match_radius_pix
    reflect = transform.reflects
    si = ri = np.zeros(0, dtype=int)
    rms = np.inf
    inl = np.zeros(0, dtype=bool)
    valid = np.flatnonzero(ok)
    fitted: tuple[bytes, bytes, AffineTransform, np.ndarray, np.ndarray] | None = None
    for iteration in range(5):
        tx, ty = transform.apply(x, y)
        tx = np.where(ok, tx, np.nan)
        s_i, r_i, _ = nearest_pairs(tx[valid], ty[valid], xr[ok_r], yr[ok_r], radius, tree=reference.tree)
        s_i, r_i = valid[s_i], ok_r[r_i]
        if len(s_i) < 3:
            break
        if fitted is not None and fitted[0] == s_i.tobytes() and fitted[1] == r_i.tobytes():
            new_t, inl, d = fitted[2:]  # the same pairs as the step before: the same fit
        else:
            inl = np.ones(len(s_i), dtype=bool)
            for _clip in range(5):
                affine = config.transform == "affine" or (
                    config.transform == "auto" and inl.sum() >= config.min_affine_pairs
                )
                if affine and inl.sum() >= 6:
                    new_t = fit_affine(x[s_i][inl], y[s_i][inl], xr[r_i][inl], yr[r_i][inl])
                else:
                    new_t = fit_similarity(
                        x[s_i][inl], y[s_i][inl], xr[r_i][inl], yr[r_i][inl], reflect=reflect
                    )
                px, py = new_t.apply(x[s_i], y[s_i])
                d = np.hypot(px - xr[r_i], py - yr[r_i])
                sigma = max(float(np.median(d[inl])) / 1.1774, 1e-3)
                new_inl = d <= config.clip_sigma * sigma
                if new_inl.sum() < 3 or np.array_equal(new_inl, inl):
                    break
                inl = new_inl
            fitted = (s_i.tobytes(), r_i.tobytes(), new_t, inl, d)
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
    return _wcs_from_alignment(
        transform, celestial, shape=shape, order=_alignment_order(celestial) if order is None else order
    )


def _alignment_order(celestial: WCS) -> int:
    """:func:`wcs_from_alignment`'s default order for a reference's celestial WCS."""
    order = celestial.sip.a_order if celestial.sip is not None else 1
    if celestial.wcs.get_pv() or celestial.cpdis1 is not None or celestial.det2im1 is not None:
        order = max(order, 3)  # other distortions: approximate them
    return order


def _wcs_from_alignment(
    transform: AffineTransform, celestial: WCS, *, shape: tuple[int, int], order: int
) -> WCS:
    """:func:`wcs_from_alignment` with the reference's celestial WCS made once for every frame."""
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


class LazyWcsFrame(FrameSources):
    """A :class:`FrameSources` whose header WCS is made when first asked for (``make_wcs``, a
    function giving the WCS or None): a field solved against its reference frame reads the WCS
    of few frames (~1.4 ms each to make)."""

    def __init__(self, *args: Any, make_wcs: Callable[[], WCS | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._make_wcs = make_wcs

    @property  # type: ignore[override]
    def wcs(self) -> WCS | None:
        if self._make_wcs is not None:
            self._wcs, self._make_wcs = self._make_wcs(), None
        return self._wcs

    @wcs.setter
    def wcs(self, value: WCS | None) -> None:
        self._wcs, self._make_wcs = value, None


_Aligned = tuple[Alignment | None, AffineTransform | None, list[str]]


def _align_all(sources: list[Table], ref: int, config: SeriesConfig) -> list[_Aligned]:
    """Align every frame to the reference, directly or through an aligned neighbour."""
    out: list[_Aligned] = [(None, None, []) for _ in sources]
    out[ref] = (None, AffineTransform.identity(), [])
    transforms: dict[int, AffineTransform] = {ref: AffineTransform.identity()}
    prepared: dict[int, _Prepared] = {}

    def align(i: int, j: int) -> Alignment:  # align_sources(sources[i], sources[j]), each side made once
        for k in (i, j):
            if k not in prepared:
                prepared[k] = _Prepared(sources[k], config.align)
        return _align(prepared[i], prepared[j], config.align)

    for i in sorted(range(len(sources)), key=lambda k: (abs(k - ref), k)):
        if i == ref:
            continue
        reasons: list[str] = []
        alignment = None
        to_ref = None
        try:
            direct = align(i, ref)
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
                    step = align(i, j)
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
    # the inverse transforms side by side: where a point of the common frame lands in each frame
    inv = [transforms[i].inverse() for i in have]
    inv_m = np.array([t.matrix for t in inv])
    inv_o = np.array([t.offset for t in inv])
    have_arr = np.array(have)
    rng = np.random.default_rng(0)
    # the frames each frame is compared with (in frame order, then as the generator draws them)
    compared: dict[int, list[int]] = {}
    for i in have:
        if not np.isfinite(xy[i]).any():
            continue
        cx, cy = np.nanmedian(xy[i], axis=0)
        px, py = transforms[i].apply(cx, cy)
        # where a star at this frame's centre lands in every frame (AffineTransform.apply's sums)
        qx = inv_m[:, 0, 0] * px + inv_m[:, 0, 1] * py + inv_o[:, 0]
        qy = inv_m[:, 1, 0] * px + inv_m[:, 1, 1] * py + inv_o[:, 1]
        shift = np.hypot(qx - cx, qy - cy)
        moved = shift > min_shift_pix
        for k in np.flatnonzero(np.abs(shift - min_shift_pix) < 1e-9 * max(min_shift_pix, 1.0)):
            moved[k] = np.hypot(qx[k] - cx, qy[k] - cy) > min_shift_pix  # at the limit: one by one
        others = [int(j) for j in have_arr[moved] if j != i]
        if len(others) < 5:
            continue
        if len(others) > 30:
            others = [int(j) for j in rng.choice(others, 30, replace=False)]
        compared[i] = others
    # each frame's tree is asked once, about every frame compared with it (a point's nearest
    # neighbour does not depend on the other points asked)
    asking: dict[int, list[int]] = {}
    for i, others in compared.items():
        for j in others:
            asking.setdefault(j, []).append(i)
    points = {i: np.nan_to_num(xy[i], nan=1e9) for i in compared}
    hits = {i: np.zeros(len(xy[i]), dtype=int) for i in compared}
    for j, askers in asking.items():
        dist, _ = trees[j].query(
            np.concatenate([points[i] for i in askers]), k=1, distance_upper_bound=radius_pix
        )
        found = np.isfinite(dist)
        start = 0
        for i in askers:
            hits[i] += found[start : start + len(points[i])]
            start += len(points[i])
    for i, others in compared.items():
        masks[i] = hits[i] >= fraction * len(others)
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
    if ref_wcs is not None:  # the reference's celestial WCS, made once for every frame
        ref_celestial = ref_wcs.celestial
        ref_order = _alignment_order(ref_celestial)
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
        wcs = (
            _wcs_from_alignment(to_ref, ref_celestial, shape=frame.shape, order=ref_order)
            if ref_wcs is not None
            else None
        )
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
