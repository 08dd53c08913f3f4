"""Frames of one field grouped by where the telescope pointed."""

from __future__ import annotations

from collections.abc import Sequence

from darkroom.catalogs import angular_separation_deg

__all__ = ["cluster_pointings"]


def cluster_pointings(
    pointings: Sequence[tuple[float, float, float] | None], fraction: float | None
) -> list[list[int]]:
    """Indices of frames grouped by pointing, in order of first appearance.

    ``pointings[i]`` is ``(ra_deg, dec_deg, side_deg)`` of frame i (its hinted centre and the
    length of its shorter side) or None when unknown. A frame joins the first group whose
    first frame (the seed) lies within ``fraction * side_deg`` of it; frames without a
    pointing join the largest group with one (alignment decides), or form a group of their
    own when no frame has a pointing. ``fraction`` None: one group.
    """
    if fraction is None:
        return [list(range(len(pointings)))]
    clusters: list[tuple[tuple[float, float] | None, list[int]]] = []
    for i, p in enumerate(pointings):
        centre = (p[0], p[1]) if p is not None else None
        for seed, members in clusters:
            if centre is None or seed is None:
                if centre is None and seed is None:
                    members.append(i)
                    break
                continue
            limit = fraction * p[2]
            if float(angular_separation_deg(seed[0], seed[1], centre[0], centre[1])) <= limit:
                members.append(i)
                break
        else:
            clusters.append((centre, [i]))
    unplaced = [c for c in clusters if c[0] is None]
    placed = [c for c in clusters if c[0] is not None]
    if unplaced and placed:
        largest = max(placed, key=lambda c: len(c[1]))
        for _, members in unplaced:
            largest[1].extend(members)
        clusters = placed
    return [members for _, members in clusters]
