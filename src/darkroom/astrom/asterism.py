"""Asterism matching of two point lists with triangle invariants (astroalign's idea, own code).

Every point and pairs of its nearest neighbours form triangles. A triangle's side
ratios (L2/L1, L3/L1), with L1 >= L2 >= L3, do not change under shifts, rotations,
scaling or reflection. Triangles of the two lists with the same ratios (and, when
the scale is known, sides in the expected ratio) propose a similarity transform;
proposals are binned in (scale, rotation, reflection, shift), the most popular ones
are verified by counting the points they bring together, and the winner is refined
by least squares on its matched pairs.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from darkroom.astrom.settings import AsterismConfig
from darkroom.astrom.transform import AffineTransform, fit_similarity
from darkroom.errors import SolveError

__all__ = ["AsterismConfig", "AsterismMatch", "AsterismTarget", "match_asterisms", "nearest_pairs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsterismMatch:
    """A similarity transform from source to target positions and the pairs it matches."""

    transform: AffineTransform  #: source (x, y) -> target (x, y)
    source_index: np.ndarray  #: indices of matched source points
    target_index: np.ndarray  #: indices of the target points they match
    rms: float  #: rms distance of the pairs after the transform [target units]
    n_votes: int  #: triangle pairs that proposed the winning transform

    @property
    def n_matched(self) -> int:
        return len(self.source_index)


def nearest_pairs(
    x: np.ndarray,
    y: np.ndarray,
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    radius: float,
    *,
    tree: cKDTree | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one nearest-neighbour pairs closer than ``radius``.

    Returns (index into x/y, index into x_ref/y_ref, distance); when two points share
    a nearest reference point, only the closer one keeps it. ``tree``: a ``cKDTree`` of
    ``(x_ref, y_ref)`` already built (a caller matching many lists to one reference).
    """
    if len(x) == 0 or len(x_ref) == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros(0)
    if tree is None:
        tree = cKDTree(np.column_stack([x_ref, y_ref]))
    dist, idx = tree.query(np.column_stack([x, y]), k=1, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    src = np.flatnonzero(ok)
    ref = idx[ok]
    dist = dist[ok]
    order = np.argsort(dist, kind="stable")
    src, ref, dist = src[order], ref[order], dist[order]
    # the first (closest) pair of each reference point: np.unique(ref, return_index=True)'s
    # indices (a stable sort by reference point), in pair order
    by_ref = np.argsort(ref, kind="stable")
    ref_sorted = ref[by_ref]
    new = np.empty(len(ref_sorted), dtype=bool)
    new[:1] = True
    np.not_equal(ref_sorted[1:], ref_sorted[:-1], out=new[1:])
    first = np.sort(by_ref[new])
    return src[first], ref[first], dist[first]


def _triangles(xy: np.ndarray, n_neighbors: int, min_side: float):
    """Triangles of each point with pairs of its neighbours: vertices (ordered), invariants, L1, orientation."""
    n = len(xy)
    k = min(n_neighbors, n - 1)
    if k < 2:
        return None
    _, nbr = cKDTree(xy).query(xy, k=k + 1)
    pairs = _neighbour_pairs(k)
    tri = np.column_stack(
        [np.repeat(nbr[:, 0], len(pairs)), nbr[:, pairs[:, 0]].ravel(), nbr[:, pairs[:, 1]].ravel()]
    )
    tri.sort(axis=1)
    if n**3 < 2**62:
        # np.unique(tri, axis=0): the rows as one number each (vertex indices are below n), in
        # the same order
        code = np.unique((tri[:, 0] * n + tri[:, 1]) * n + tri[:, 2])
        tri = np.column_stack([code // (n * n), code // n % n, code % n])
    else:
        tri = np.unique(tri, axis=0)
    p0, p1, p2 = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    opposite = np.column_stack(
        [np.hypot(*(p1 - p2).T), np.hypot(*(p0 - p2).T), np.hypot(*(p0 - p1).T)]
    )  # side opposite each vertex
    order = np.argsort(-opposite, axis=1, kind="stable")
    tri = np.take_along_axis(tri, order, axis=1)
    sides = np.take_along_axis(opposite, order, axis=1)
    keep = (sides[:, 0] >= max(min_side, 1e-9)) & (sides[:, 2] > 0)
    tri, sides = tri[keep], sides[keep]
    inv = np.column_stack([sides[:, 1] / sides[:, 0], sides[:, 2] / sides[:, 0]])
    a, b, c = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return tri, inv, sides[:, 0], np.sign(cross)


@functools.cache
def _neighbour_pairs(k: int) -> np.ndarray:
    """The pairs of a point's neighbours 1..k, as :func:`_triangles` takes them."""
    pairs = np.array(list(itertools.combinations(range(1, k + 1), 2)))
    pairs.flags.writeable = False
    return pairs


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, axis=0, return_inverse=True, return_counts=True)``'s inverse and counts for
    rows of integers: each row as one number in mixed radix (the same order), when that fits."""
    if len(keys):
        lo = keys.min(axis=0)
        spans = [int(h) - int(l_) + 1 for h, l_ in zip(keys.max(axis=0), lo, strict=True)]
        if math.prod(spans) < 2**62:
            code = np.zeros(len(keys), dtype=np.int64)
            for column, span in enumerate(spans):
                code = code * span + (keys[:, column] - lo[column])
            _, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
            return inverse.ravel(), counts
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return inverse.ravel(), counts


def _count_inliers(
    transforms: list[AffineTransform], src: np.ndarray, tree: cKDTree, tol: float
) -> list[tuple[int, float]]:
    """(points within ``tol`` of a target point, their rms distance) for each transform of ``src``:
    one tree query for all of them (each point's nearest neighbour is its own)."""
    if not transforms:
        return []
    # AffineTransform.apply of every transform at once (the same products and sums)
    m = np.array([t.matrix for t in transforms])
    o = np.array([t.offset for t in transforms])
    x, y = src[:, 0], src[:, 1]
    moved_x = m[:, 0, 0, None] * x + m[:, 0, 1, None] * y + o[:, 0, None]
    moved_y = m[:, 1, 0, None] * x + m[:, 1, 1, None] * y + o[:, 1, None]
    dist, _ = tree.query(np.stack([moved_x.ravel(), moved_y.ravel()], axis=1), k=1, distance_upper_bound=tol)
    out = []
    for d in dist.reshape(len(transforms), len(src)):
        ok = np.isfinite(d)
        n = int(ok.sum())
        out.append((n, float(np.sqrt(np.mean(d[ok] ** 2))) if n else np.inf))
    return out


def _bin_medians(parts: list[np.ndarray], members: list[np.ndarray]) -> list[list[np.floating]]:
    """``np.median(part[m])`` for each part and index array ``m``, all sorted at once: each is the
    middle value (or the mean of the two middle ones) of its sorted members. Parts with a zero
    (0.0 and -0.0 compare equal, so which one is the middle would depend on the sort) or a value
    that is not finite are left to ``np.median``."""
    sizes = np.array([len(m) for m in members])
    index = np.concatenate(members) if members else np.zeros(0, dtype=int)
    flat = np.array([part[index] for part in parts])
    if not len(sizes) or sizes.min() < 1 or not (np.isfinite(flat).all() and flat.all()):
        return [[np.median(part[m]) for m in members] for part in parts]
    # the members of bin k in row k, padded with +inf (after every finite value)
    padded = np.full((len(parts), len(members), int(sizes.max())), np.inf)
    rows = np.repeat(np.arange(len(members)), sizes)
    cols = np.arange(len(index)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    padded[:, rows, cols] = flat
    padded.sort(axis=2)
    k = np.arange(len(members))
    upper = padded[:, k, sizes // 2]
    lower = padded[:, k, np.maximum(sizes // 2 - 1, 0)]
    odd = (sizes % 2 == 1)[None, :]
    medians = np.where(odd, upper, np.add(lower, upper) / np.intp(2))
    return [list(row) for row in medians]


@dataclass(frozen=True)
class AsterismTarget:
    """The target side of :func:`match_asterisms` prepared once (its finite points, triangles and
    trees), for a caller that matches many point lists to one target; made by :meth:`of`."""

    xy: np.ndarray  #: the finite target points (n, 2)
    index: np.ndarray  #: their rows in the caller's target list
    triangles: tuple | None  #: :func:`_triangles` of ``xy``
    settings: tuple | None  #: (scale, scale_tolerance, config) it was made with
    tree: cKDTree | None  #: of ``xy`` (None without points)
    invariant_tree: cKDTree | None  #: of the triangles' invariants (None without triangles)

    @classmethod
    def of(
        cls,
        target_xy: np.ndarray,
        *,
        scale: float | None = 1.0,
        scale_tolerance: float = 0.1,
        config: AsterismConfig | None = None,
    ) -> AsterismTarget:
        config = config or AsterismConfig()
        tgt = np.asarray(target_xy, dtype=float).reshape(-1, 2)
        tgt_ok = np.all(np.isfinite(tgt), axis=1)
        index = np.flatnonzero(tgt_ok)
        tgt = tgt[tgt_ok]
        min_side = config.min_side * (scale or 0.0) * (1 - scale_tolerance)
        need = max(3, config.min_matches)
        tri = _triangles(tgt, config.n_neighbors, min_side) if len(tgt) >= need else None
        return cls(
            xy=tgt,
            index=index,
            triangles=tri,
            settings=(scale, scale_tolerance, config),
            tree=cKDTree(tgt) if len(tgt) else None,
            invariant_tree=cKDTree(tri[1]) if tri is not None and len(tri[0]) else None,
        )


def _poisson_isf(q: float, mu: float) -> float:
    """Smallest count ``k`` with P(N > k) <= ``q`` for a Poisson mean ``mu`` (0 < q < 1, mu >= 0).

    scipy.stats.poisson.isf's own formula (its ``_ppf`` at ``1 - q``: the continuous inverse
    rounded up, then one lower when that still reaches ``1 - q``), on scipy.special alone:
    scipy.stats costs 0.3-0.5 s to import in every process that matches a frame.
    """
    from scipy.special import pdtr, pdtrik

    p = 1.0 - q
    upper = math.ceil(float(pdtrik(p, mu)))
    lower = max(upper - 1, 0)
    return float(lower if float(pdtr(lower, mu)) >= p else upper)


def match_asterisms(
    source_xy: np.ndarray,
    target_xy: np.ndarray | AsterismTarget,
    *,
    scale: float | None = 1.0,
    scale_tolerance: float = 0.1,
    allow_reflection: bool = True,
    config: AsterismConfig | None = None,
) -> AsterismMatch:
    """Similarity transform that maps ``source_xy`` onto ``target_xy`` (both ``(n, 2)``).

    Parameters
    ----------
    source_xy, target_xy
        Point lists, brightest first is not required; 10-100 points each work best.
        ``target_xy`` may be an :class:`AsterismTarget` made with the same ``scale``,
        ``scale_tolerance`` and ``config`` (the same result, without preparing the target again).
    scale
        Expected target/source length ratio; None when unknown.
    scale_tolerance
        Allowed relative deviation from ``scale``.
    allow_reflection
        Also try transforms that mirror the source (unknown image parity).
    config
        Matching tolerances.

    Raises
    ------
    SolveError
        Too few points, or no transform brings ``config.min_matches`` pairs together.
    """
    config = config or AsterismConfig()
    src = np.asarray(source_xy, dtype=float).reshape(-1, 2)
    src_ok = np.all(np.isfinite(src), axis=1)
    src_index = np.flatnonzero(src_ok)
    src = src[src_ok]
    target = (
        target_xy
        if isinstance(target_xy, AsterismTarget)
        else AsterismTarget.of(target_xy, scale=scale, scale_tolerance=scale_tolerance, config=config)
    )
    if target.settings is not None and target.settings != (scale, scale_tolerance, config):
        raise ValueError("the AsterismTarget was prepared with other settings")
    tgt, tgt_index = target.xy, target.index
    need = max(3, config.min_matches)
    if len(src) < need or len(tgt) < need:
        raise SolveError(
            f"asterism matching needs at least {need} points on each side, got {len(src)} sources and "
            f"{len(tgt)} reference points"
        )
    src_mean = src.mean(axis=0)
    src_c = src - src_mean
    s_tri = _triangles(src_c, config.n_neighbors, config.min_side)
    t_tri = target.triangles
    if s_tri is None or t_tri is None or not len(s_tri[0]) or not len(t_tri[0]):
        raise SolveError("asterism matching found no usable triangles (points too few or too close together)")
    s_v, s_inv, s_len, s_or = s_tri
    t_v, _, t_len, t_or = t_tri

    lists = target.invariant_tree.query_ball_point(s_inv, r=config.invariant_tolerance)
    counts = np.fromiter(map(len, lists), dtype=int, count=len(lists))
    if counts.sum() == 0:
        raise SolveError("no triangle of the sources matches one of the reference (different fields?)")
    i_idx = np.repeat(np.arange(len(lists)), counts)
    j_idx = np.fromiter(itertools.chain.from_iterable(lists), dtype=int, count=int(counts.sum()))
    ratio = t_len[j_idx] / s_len[i_idx]
    keep = np.ones(len(i_idx), dtype=bool)
    if scale is not None:
        keep &= np.abs(ratio / scale - 1.0) <= scale_tolerance
    reflect = s_or[i_idx] != t_or[j_idx]
    if not allow_reflection:
        keep &= ~reflect
    i_idx, j_idx, reflect = i_idx[keep], j_idx[keep], reflect[keep]
    if not len(i_idx):
        raise SolveError("no triangle pair has the expected scale (check the pixel scale hint)")

    # one similarity per triangle pair, from its three vertex correspondences (complex least squares)
    zs = src_c[s_v[i_idx]]
    z = zs[..., 0] + 1j * zs[..., 1]
    z = np.where(reflect[:, None], np.conj(z), z)
    wt = tgt[t_v[j_idx]]
    w = wt[..., 0] + 1j * wt[..., 1]
    zc = z - z.mean(axis=1, keepdims=True)
    wc = w - w.mean(axis=1, keepdims=True)
    a = np.sum(wc * np.conj(zc), axis=1) / np.sum(np.abs(zc) ** 2, axis=1)
    b = w.mean(axis=1) - a * z.mean(axis=1)  # image of the source centroid (origin of src_c)

    # vote in (log scale, angle, reflection, shift) bins
    shift_bin = 4.0 * config.match_tolerance
    keys = np.column_stack(
        [
            np.floor(np.log(np.abs(a)) / 0.02),
            np.floor(np.angle(a) / 0.03),
            reflect.astype(float),
            np.floor(b.real / shift_bin),
            np.floor(b.imag / shift_bin),
        ]
    ).astype(np.int64)
    inverse, votes = _unique_rows(keys)
    best_bins = np.argsort(-votes, kind="stable")[: config.n_verify]
    tree = target.tree
    tol = config.match_tolerance
    # each bin's members in index order (a stable sort by bin)
    by_bin = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[by_bin], [best_bins, best_bins + 1])
    members = [by_bin[lo:hi] for lo, hi in zip(bounds[0].tolist(), bounds[1].tolist(), strict=True)]
    medians = _bin_medians([a.real, a.imag, b.real, b.imag], members)
    candidates = []
    for k, bin_id in enumerate(best_bins):
        a_med = medians[0][k] + 1j * medians[1][k]
        b_med = medians[2][k] + 1j * medians[3][k]
        refl = bool(reflect[members[k][0]])
        m = np.array([[a_med.real, -a_med.imag], [a_med.imag, a_med.real]])
        if refl:
            m = m @ np.diag([1.0, -1.0])
        candidates.append((int(votes[bin_id]), refl, AffineTransform(m, np.array([b_med.real, b_med.imag]))))
    scored = [
        (n_in, -rms, n_votes, refl, transform)
        for (n_in, rms), (n_votes, refl, transform) in zip(
            _count_inliers([c[2] for c in candidates], src_c, tree, tol), candidates, strict=True
        )
    ]
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)

    # refine the leading candidates by least squares on their pairs, keep the best
    best = None
    # Up to 3 least-squares steps per candidate. The same pairs give the same fit, so a step whose
    # pairs are the previous step's would only refit the transform it came from: the steps stop
    # there, and those pairs are remembered with where they end (a fit that pairs the same
    # stars again), so that a candidate reaching them later ends there at once.
    settled: dict[tuple[bool, bytes, bytes], tuple] = {}
    for n_in, _, n_votes, refl, transform in scored[:5]:
        if n_in < 3:
            continue
        previous = None
        for _ in range(3):
            x, y = transform.apply(src_c[:, 0], src_c[:, 1])
            si, ti, dist = nearest_pairs(x, y, tgt[:, 0], tgt[:, 1], tol, tree=tree)
            if len(si) < 3:
                break
            key = (refl, si.tobytes(), ti.tobytes())
            if key in settled:
                si, ti, transform, x, y, dist = settled[key]
                break
            if previous is not None and key == previous:
                settled[key] = (si, ti, transform, x, y, dist)
                break
            previous = key
            transform = fit_similarity(src_c[si, 0], src_c[si, 1], tgt[ti, 0], tgt[ti, 1], reflect=refl)
        else:
            x, y = transform.apply(src_c[:, 0], src_c[:, 1])
            si, ti, dist = nearest_pairs(x, y, tgt[:, 0], tgt[:, 1], tol, tree=tree)
            if (refl, si.tobytes(), ti.tobytes()) == previous:
                settled[previous] = (si, ti, transform, x, y, dist)
        rms = float(np.sqrt(np.mean(dist**2))) if len(si) else np.inf
        if best is None or (len(si), -rms) > (len(best[0]), -best[3]):
            best = (si, ti, transform, rms, refl, n_votes, x, y)
    if best is None:
        raise SolveError(
            f"no asterism match: no transform pairs 3 stars ({len(src)} sources, {len(tgt)} reference points)"
        )
    si, ti, transform, rms, refl, n_votes, x, y = best

    # chance pairs: sources that land on the reference footprint, times the reference density there
    lo, hi = tgt.min(axis=0) - tol, tgt.max(axis=0) + tol
    area = float(np.prod(hi - lo))
    on_footprint = int(np.count_nonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1])))
    chance = on_footprint * len(tgt) / area * np.pi * tol**2
    need = max(config.min_matches, int(_poisson_isf(config.false_match_probability, chance)) + 1)
    if len(si) < need:
        raise SolveError(
            f"no asterism match: best transform pairs {len(si)} stars, {need} needed against "
            f"{chance:.1f} chance pairs ({len(src)} sources, {len(tgt)} reference points)"
        )
    dist = np.hypot(x[si] - tgt[ti, 0], y[si] - tgt[ti, 1])
    # back to the caller's source frame: x_src_c = x_src - mean
    shift_back = AffineTransform(np.eye(2), -src_mean)
    full = shift_back.then(transform)
    log.debug(
        "asterism match: %d pairs, rms %.3f, scale %.4f, rotation %.2f deg, reflect %s, %d votes",
        len(si),
        float(np.sqrt(np.mean(dist**2))),
        full.scale,
        full.rotation_deg,
        refl,
        n_votes,
    )
    return AsterismMatch(
        transform=full,
        source_index=src_index[si],
        target_index=tgt_index[ti],
        rms=float(np.sqrt(np.mean(dist**2))),
        n_votes=n_votes,
    )
