"""Positional cross-matching (KD-tree on unit vectors) and sky/pixel conversion.

Sky positions are ICRS degrees. Matching uses the chord distance between unit vectors,
which is exact for any separation and has no trouble at RA = 0/360 or at the poles.
"""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from darkroom.errors import BadInputError

__all__ = [
    "chord_from_arcsec",
    "match_catalogs",
    "match_points",
    "match_xy",
    "mean_radec",
    "pixel_to_sky",
    "radec_to_unit",
    "sky_to_pixel",
    "unit_to_radec",
]


def radec_to_unit(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Unit vectors ``(n, 3)`` of RA/Dec [deg]."""
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    cd = np.cos(dec)
    return np.column_stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)])


def mean_radec(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[float, float]:
    """The mean direction of sky positions [deg]: RA in [0, 360) and Dec of the sum of their unit
    vectors (right across RA 0 and near the poles, where averaging the angles is not)."""
    ra, dec = unit_to_radec(radec_to_unit(ra_deg, dec_deg).sum(axis=0, keepdims=True))
    return float(ra[0]), float(dec[0])


def unit_to_radec(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA [0, 360) and Dec [deg] of (not necessarily normalised) vectors ``(n, 3)``."""
    v = np.asarray(v, dtype=np.float64)
    norm = np.linalg.norm(v, axis=1)
    ra = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(v[:, 2] / norm, -1.0, 1.0)))
    return ra, dec


def chord_from_arcsec(radius_arcsec: float) -> float:
    """Chord length between unit vectors separated by ``radius_arcsec``."""
    return float(2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0))


def _arcsec_from_chord(chord: np.ndarray) -> np.ndarray:
    return np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))) * 3600.0


def match_points(
    tree_points: np.ndarray, query_points: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-neighbour pairs within ``radius``, each point used at most once.

    Candidate pairs are taken closest first; a pair is kept when neither member has
    been used. Returns ``(i_query, i_tree, distance)`` sorted by ``i_query``.
    """
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    if len(tree_points) == 0 or len(query_points) == 0:
        return empty
    tree = cKDTree(tree_points)
    k = min(4, len(tree_points))
    dist, idx = tree.query(query_points, k=k, distance_upper_bound=radius)
    dist = np.asarray(dist).reshape(len(query_points), k)
    idx = np.asarray(idx).reshape(len(query_points), k)
    qi = np.repeat(np.arange(len(query_points)), k)
    dist = dist.ravel()
    idx = idx.ravel()
    ok = np.isfinite(dist)
    qi, idx, dist = qi[ok], idx[ok], dist[ok]
    order = np.argsort(dist, kind="stable")
    used_q = np.zeros(len(query_points), dtype=bool)
    used_t = np.zeros(len(tree_points), dtype=bool)
    keep = []
    for o in order:
        a, b = qi[o], idx[o]
        if not used_q[a] and not used_t[b]:
            used_q[a] = used_t[b] = True
            keep.append(o)
    keep = np.asarray(keep, dtype=np.int64)
    if keep.size == 0:
        return empty
    out_q, out_t, out_d = qi[keep], idx[keep], dist[keep]
    order = np.argsort(out_q, kind="stable")
    return out_q[order], out_t[order], out_d[order]


def match_catalogs(
    ra1_deg: np.ndarray,
    dec1_deg: np.ndarray,
    ra2_deg: np.ndarray,
    dec2_deg: np.ndarray,
    *,
    radius_arcsec: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one sky match of catalog 1 against catalog 2.

    Returns ``(idx1, idx2, sep_arcsec)``: row indices of matched pairs and their
    separations [arcsec], closest pairs first taken, sorted by ``idx1``.
    """
    if radius_arcsec <= 0:
        raise BadInputError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    v1 = radec_to_unit(ra1_deg, dec1_deg)
    v2 = radec_to_unit(ra2_deg, dec2_deg)
    i1, i2, chord = match_points(v2, v1, chord_from_arcsec(radius_arcsec))
    return i1, i2, _arcsec_from_chord(chord)


def match_xy(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, *, radius_pix: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one match in pixel coordinates; returns ``(idx1, idx2, distance_pix)``."""
    if radius_pix <= 0:
        raise BadInputError(f"radius_pix must be > 0, got {radius_pix}")
    p1 = np.column_stack([np.asarray(x1, float), np.asarray(y1, float)])
    p2 = np.column_stack([np.asarray(x2, float), np.asarray(y2, float)])
    return match_points(p2, p1, float(radius_pix))


def sky_to_pixel(wcs: WCS, ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel ``(x, y)`` of RA/Dec [deg] (SIP and distortions included)."""
    x, y = wcs.all_world2pix(np.asarray(ra_deg, float), np.asarray(dec_deg, float), 0)
    return np.asarray(x), np.asarray(y)


def pixel_to_sky(wcs: WCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA/Dec [deg] of 0-based pixel positions."""
    ra, dec = wcs.all_pix2world(np.asarray(x, float), np.asarray(y, float), 0)
    return np.asarray(ra) % 360.0, np.asarray(dec)
