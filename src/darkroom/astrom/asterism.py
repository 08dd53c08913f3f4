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

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from darkroom.astrom.settings import AsterismConfig
from darkroom.astrom.transform import AffineTransform, fit_similarity
from darkroom.errors import SolveError

__all__ = ["AsterismConfig", "AsterismMatch", "match_asterisms", "nearest_pairs"]

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
    x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one nearest-neighbour pairs closer than ``radius``.

    Returns (index into x/y, index into x_ref/y_ref, distance); when two points share
    a nearest reference point, only the closer one keeps it.
    """
    if len(x) == 0 or len(x_ref) == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros(0)
    tree = cKDTree(np.column_stack([x_ref, y_ref]))
    dist, idx = tree.query(np.column_stack([x, y]), k=1, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    src = np.flatnonzero(ok)
    ref = idx[ok]
    dist = dist[ok]
    order = np.argsort(dist, kind="stable")
    src, ref, dist = src[order], ref[order], dist[order]
    _, first = np.unique(ref, return_index=True)
    first = np.sort(first)
    return src[first], ref[first], dist[first]


def _triangles(xy: np.ndarray, n_neighbors: int, min_side: float):
    """Triangles of each point with pairs of its neighbours: vertices (ordered), invariants, L1, orientation."""
    n = len(xy)
    k = min(n_neighbors, n - 1)
    if k < 2:
        return None
    _, nbr = cKDTree(xy).query(xy, k=k + 1)
    pairs = np.array(list(itertools.combinations(range(1, k + 1), 2)))
    tri = np.column_stack(
        [np.repeat(nbr[:, 0], len(pairs)), nbr[:, pairs[:, 0]].ravel(), nbr[:, pairs[:, 1]].ravel()]
    )
    tri.sort(axis=1)
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


def _count_inliers(
    transform: AffineTransform, src: np.ndarray, tree: cKDTree, tol: float
) -> tuple[int, float]:
    x, y = transform.apply(src[:, 0], src[:, 1])
    dist, _ = tree.query(np.column_stack([x, y]), k=1, distance_upper_bound=tol)
    ok = np.isfinite(dist)
    n = int(ok.sum())
    return n, float(np.sqrt(np.mean(dist[ok] ** 2))) if n else np.inf


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
    target_xy: np.ndarray,
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
    tgt = np.asarray(target_xy, dtype=float).reshape(-1, 2)
    src_ok = np.all(np.isfinite(src), axis=1)
    src_index = np.flatnonzero(src_ok)
    src = src[src_ok]
    tgt_ok = np.all(np.isfinite(tgt), axis=1)
    tgt_index = np.flatnonzero(tgt_ok)
    tgt = tgt[tgt_ok]
    need = max(3, config.min_matches)
    if len(src) < need or len(tgt) < need:
        raise SolveError(
            f"asterism matching needs at least {need} points on each side, got {len(src)} sources and "
            f"{len(tgt)} reference points"
        )
    src_mean = src.mean(axis=0)
    src_c = src - src_mean
    s_tri = _triangles(src_c, config.n_neighbors, config.min_side)
    t_tri = _triangles(tgt, config.n_neighbors, config.min_side * (scale or 0.0) * (1 - scale_tolerance))
    if s_tri is None or t_tri is None or not len(s_tri[0]) or not len(t_tri[0]):
        raise SolveError("asterism matching found no usable triangles (points too few or too close together)")
    s_v, s_inv, s_len, s_or = s_tri
    t_v, t_inv, t_len, t_or = t_tri

    lists = cKDTree(t_inv).query_ball_point(s_inv, r=config.invariant_tolerance)
    counts = np.fromiter((len(v) for v in lists), dtype=int, count=len(lists))
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
    _, inverse, votes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    best_bins = np.argsort(-votes, kind="stable")[: config.n_verify]
    tree = cKDTree(tgt)
    tol = config.match_tolerance
    scored = []
    for bin_id in best_bins:
        members = np.flatnonzero(inverse == bin_id)
        a_med = np.median(a[members].real) + 1j * np.median(a[members].imag)
        b_med = np.median(b[members].real) + 1j * np.median(b[members].imag)
        refl = bool(reflect[members[0]])
        m = np.array([[a_med.real, -a_med.imag], [a_med.imag, a_med.real]])
        if refl:
            m = m @ np.diag([1.0, -1.0])
        transform = AffineTransform(m, np.array([b_med.real, b_med.imag]))
        n_in, rms = _count_inliers(transform, src_c, tree, tol)
        scored.append((n_in, -rms, int(votes[bin_id]), refl, transform))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)

    # refine the leading candidates by least squares on their pairs, keep the best
    best = None
    for n_in, _, n_votes, refl, transform in scored[:5]:
        if n_in < 3:
            continue
        for _ in range(3):
            x, y = transform.apply(src_c[:, 0], src_c[:, 1])
            si, ti, _ = nearest_pairs(x, y, tgt[:, 0], tgt[:, 1], tol)
            if len(si) < 3:
                break
            transform = fit_similarity(src_c[si, 0], src_c[si, 1], tgt[ti, 0], tgt[ti, 1], reflect=refl)
        x, y = transform.apply(src_c[:, 0], src_c[:, 1])
        si, ti, dist = nearest_pairs(x, y, tgt[:, 0], tgt[:, 1], tol)
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
