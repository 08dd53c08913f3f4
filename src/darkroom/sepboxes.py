"""sep's source extraction run in boxes around the pixels that matter, not on the whole frame.

``sep.extract`` filters and scans every pixel of the image it is given: on a 1k x 1k frame with
~25 stars that is ~15 ms, nearly all of it spent on empty sky. Its results for a source depend
only on the pixels of the source's footprint and, through the matched filter, on the kernel's
half-width around them; so sep run on a box that holds a source's footprint with the filter's
reach to spare finds the same pixels, centroid, moments, fluxes, peak and flags as on the whole
frame. :func:`extract_around` runs a caller's extraction on boxes around regions of "seed"
pixels and checks that promise as it goes:

- a box in which a source touches an edge that is not the frame's is grown (and merged with
  the boxes it then overlaps) until none does, so every footprint is whole;
- boxes whose sources could clean one another (sep's cleaning joins a faint source to a bright
  neighbour within ``CLEAN_ZONE`` = 10 times the sum of their semi-major axes) are joined and
  extracted again together;
- when the boxes would cover much of the frame, or their extractions would cost more than the
  whole frame's (a crowded field), the whole frame is extracted once instead.

What can still differ from one extraction of the whole frame: the deblender's random split of
the pixels shared by blended sources (sep restarts its random sequence in every call), and
cleaning by a source that lies in no box. The order of the sources is that of the boxes.

:func:`detectable_cells` finds the seeds of a full detection: the cells of the frame where the
filtered image rises above a fraction of sep's threshold (compiled, :mod:`darkroom._sepboxes_kernels`),
a superset of every pixel sep could detect.

Boxes are ``[y0, y1, x0, x1]``: rows ``y0 <= y < y1`` and columns ``x0 <= x < x1``, 0-based.
sep's tables come back in frame coordinates (``x``, ``y``, ``xmin`` ... ``ycpeak`` shifted).
Shared by the calibration's star guard and the extraction (:mod:`darkroom.calib.starguard`,
:mod:`darkroom.detect.extract`), which stay independent of each other.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import numpy as np

__all__ = [
    "CLEAN_ZONE",
    "concat_sources",
    "detectable_cells",
    "extract_around",
    "load_compiled_kernels",
    "merged_boxes",
    "pixstack",
    "seed_cells",
    "separable",
]

CLEAN_ZONE = 10.0  # sep's CLEAN_ZONE: sources this many (a1 + a2) apart may clean each other

_PIXSTACK_LOCK = threading.Lock()
_COORDINATES = (("x", "xmin", "xmax", "xpeak", "xcpeak"), ("y", "ymin", "ymax", "ypeak", "ycpeak"))

#: a box's extraction: ``(y0, y1, x0, x1) -> (sep table in box coordinates, per-source extra or None)``;
#: it runs with sep's pixel stack set to the box (:func:`pixstack`), and must not set it itself
BoxExtraction = Callable[[int, int, int, int], tuple[np.ndarray, "np.ndarray | None"]]


@contextlib.contextmanager
def pixstack(n_pixels: int) -> Iterator[None]:
    """sep's pixel stack set to ``n_pixels`` for the extractions inside, restored afterwards.

    sep allocates and links its whole pixel stack (300 000 pixels by default) in every call:
    ~0.3 ms, more than a small box's extraction. The size is a process-wide setting: the lock
    keeps another thread from changing it between setting and use.
    """
    import sep

    with _PIXSTACK_LOCK:
        old = sep.get_extract_pixstack()
        sep.set_extract_pixstack(max(int(n_pixels), 64))
        try:
            yield
        finally:
            sep.set_extract_pixstack(old)


def nonzero_2d(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D array (rows, columns in row-major order): the flat indices split,
    ~14x faster than numpy's 2-D nonzero on a sparse 1k x 1k mask."""
    return np.divmod(np.flatnonzero(flags), flags.shape[1])


def concat_sources(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` of sep source tables of one dtype, as whole records: numpy promotes a
    structured dtype field by field in Python (~1 ms a frame for the boxes' tables)."""
    dtype = parts[0].dtype
    if any(p.dtype != dtype for p in parts):
        return np.concatenate(parts)
    record = np.dtype((np.void, dtype.itemsize))
    return np.concatenate([np.ascontiguousarray(p).view(record) for p in parts]).view(dtype)


def merged_boxes(boxes: list[list[int]]) -> list[list[int]]:
    """Boxes ``[y0, y1, x0, x1]`` with every overlapping pair replaced by its union, until none overlap."""
    changed = True
    while changed:
        changed = False
        out: list[list[int]] = []
        for b in boxes:
            for o in out:
                if b[0] < o[1] and o[0] < b[1] and b[2] < o[3] and o[2] < b[3]:
                    o[:] = [min(o[0], b[0]), max(o[1], b[1]), min(o[2], b[2]), max(o[3], b[3])]
                    changed = True
                    break
            else:
                out.append(list(b))
        boxes = out
    return boxes


def seed_cells(seeds: np.ndarray, cell: int) -> np.ndarray:
    """The ``cell x cell`` cells (boolean, ``(ny // cell + 1, nx // cell + 1)``) holding a seed pixel."""
    ny, nx = seeds.shape
    sy, sx = nonzero_2d(seeds)
    cells = np.zeros((ny // cell + 1, nx // cell + 1), dtype=bool)
    cells[sy // cell, sx // cell] = True
    return cells


def separable(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 1-D factors ``(ky, kx)`` of a 2-D filter kernel normalised as sep normalises it (the sum
    of its absolute values 1), float32, ``outer(ky, kx)`` equal to it to 1e-6 of its largest value;
    None when the kernel is not separable (or not odd-sized)."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0 or not np.isfinite(k).all():
        return None
    total = np.abs(k).sum()
    if total <= 0:
        return None
    k = k / total
    u, s, vt = np.linalg.svd(k)
    ky, kx = u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])
    if np.abs(np.outer(ky, kx) - k).max() > 1e-6 * np.abs(k).max():
        return None
    if ky.sum() < 0:
        ky, kx = -ky, -kx
    return ky.astype(np.float32), kx.astype(np.float32)


def detectable_cells(
    image: np.ndarray,
    thresh: float,
    *,
    noise: np.ndarray | float,
    mask: np.ndarray | None,
    kernel: np.ndarray | None,
    cell: int,
    fraction: float = 0.8,
) -> np.ndarray | None:
    """The ``cell x cell`` cells where sep could detect a pixel: the image filtered as sep filters
    it (``kernel`` normalised; None: not filtered) above ``fraction`` x ``thresh`` x the noise.

    ``image`` is float32, background-subtracted, with its masked pixels 0 (as sep sets them
    before filtering); ``noise`` the per-pixel sigma ``(ny, nx)`` float32 or one value;
    ``mask`` True where sep may not detect. sep detects a pixel whose filtered value exceeds
    ``thresh`` x its sigma; filtered here with another order of additions, a value differs from
    sep's by rounding (~1e-7 of the values filtered), far below the margin ``1 - fraction``, so
    every pixel sep detects lies in a marked cell. Returns the cells (boolean,
    ``(ny // cell + 1, nx // cell + 1)``), or None when the kernel is not separable (the caller
    extracts the whole frame).
    """
    from darkroom._sepboxes_kernels import mark_detectable, mark_detectable_7

    if kernel is None:
        factors: tuple[np.ndarray, np.ndarray] | None = (np.ones(1, np.float32), np.ones(1, np.float32))
    else:
        factors = separable(kernel)
    if factors is None:
        return None
    ky, kx = factors
    mark = mark_detectable
    if ky.size <= 7 and kx.size <= 7:  # sep's usual kernels (3x3, 5x5, 7x7): padded to 7 taps
        ky, kx = (np.pad(k, ((7 - k.size) // 2,)) for k in (ky, kx))
        mark = mark_detectable_7
    ny, nx = image.shape
    cells = np.zeros((ny // cell + 1, nx // cell + 1), dtype=bool)
    use_map = isinstance(noise, np.ndarray) and noise.ndim == 2
    noise_map = np.ascontiguousarray(noise, dtype=np.float32) if use_map else np.zeros((1, 1), np.float32)
    mark(
        np.ascontiguousarray(image, dtype=np.float32),
        noise_map,
        use_map,
        0.0 if use_map else float(noise),
        np.zeros((1, 1), bool) if mask is None else np.ascontiguousarray(mask, dtype=bool),
        mask is not None,
        kx,
        ky,
        float(fraction * thresh),
        int(cell),
        cells,
    )
    return cells


def _box_sources(
    box: tuple[int, int, int, int], shape: tuple[int, int], extract: BoxExtraction, reach: int
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """One box's sources (box coordinates), their extra values, and whether a source comes
    within ``reach`` pixels of an edge of the box that is not the frame's (where sep's filter,
    cut off at the box's edge, gives other values than on the frame)."""
    y0, y1, x0, x1 = box
    ny, nx = shape
    with pixstack((y1 - y0) * (x1 - x0) + 64):  # room for every pixel of the box and no more
        objs, extra = extract(y0, y1, x0, x1)
    touches = (
        ((objs["xmin"] < reach) & (x0 > 0))
        | ((objs["ymin"] < reach) & (y0 > 0))
        | ((objs["xmax"] >= x1 - x0 - reach) & (x1 < nx))
        | ((objs["ymax"] >= y1 - y0 - reach) & (y1 < ny))
    )
    return objs, extra, bool(touches.any())


def _in_frame(boxes: list[list[int]], sources: list[np.ndarray]) -> np.ndarray:
    """The boxes' sources in one table, shifted from box to frame coordinates."""
    objs = concat_sources(sources)
    counts = [len(o) for o in sources]
    for keys, axis in zip(_COORDINATES, (2, 0), strict=True):
        offset = np.repeat(np.array([b[axis] for b in boxes]), counts)
        for key in keys:
            objs[key] += offset.astype(objs.dtype[key], copy=False)
    return objs


def _cleaning_neighbours(boxes: list[list[int]], sources: list[np.ndarray]) -> list[list[int]] | None:
    """The boxes with each pair whose sources (frame coordinates, one table a box) could clean
    one another joined into one box (None when no pair can): sep drops a source in the wings of
    a brighter one within ``CLEAN_ZONE`` = 10 times the sum of their semi-major axes, so such
    sources must be extracted together, as on the whole frame."""
    which = np.concatenate([np.full(len(o), k) for k, o in enumerate(sources)])
    if which.size < 2:
        return None
    objs = concat_sources(sources)
    x, y, a = (np.asarray(objs[key], float) for key in ("x", "y", "a"))
    reach = CLEAN_ZONE * (a[:, None] + a[None, :])
    close = (x[:, None] - x[None, :]) ** 2 + (y[:, None] - y[None, :]) ** 2 <= reach * reach
    close &= which[:, None] != which[None, :]
    if not close.any():
        return None
    # union-find of the boxes over the close pairs
    parent = list(range(len(boxes)))

    def root(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for i, j in zip(*np.nonzero(close), strict=True):
        parent[root(int(which[i]))] = root(int(which[j]))
    groups: dict[int, list[int]] = {}
    for k, b in enumerate(boxes):
        g = groups.setdefault(root(k), list(b))
        g[:] = [min(g[0], b[0]), max(g[1], b[1]), min(g[2], b[2]), max(g[3], b[3])]
    return list(groups.values())


def extract_around(
    cells: np.ndarray,
    cell: int,
    shape: tuple[int, int],
    extract: BoxExtraction,
    whole: Callable[[], tuple[np.ndarray, np.ndarray | None]],
    *,
    margin: int,
    reach: int = 1,
    clean: bool = True,
    max_share: float = 0.35,
    max_boxes: int = 400,
    box_cost_pix: int = 6000,
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The sources of the regions of marked ``cells`` (``cell x cell`` pixels each, of a frame of
    ``shape``), extracted in boxes around them; None when no cell is marked.

    Each 8-connected region of cells becomes a box ``margin`` pixels larger on every side; a box
    in which a source comes within ``reach`` pixels of an edge inside the frame (1: touches it;
    the filter kernel's half-width + 1 where the filter reaches further) grows by the margin,
    doubled each time, until none does; with ``clean`` (sep's cleaning on), boxes whose sources could clean one
    another are joined. ``extract`` runs on each box (box coordinates; see
    :data:`BoxExtraction`), ``whole`` on the whole frame (frame coordinates), instead of the
    boxes when there are more than ``max_boxes`` regions, when the boxes would cover more than
    ``max_share`` of the frame, or when their extractions (those done and still to do, each
    counted as its area plus ``box_cost_pix``) would cost more than the whole frame's; ``whole``
    sets sep's pixel stack for the frame itself (:func:`pixstack`). Returns
    the sources (frame coordinates, the boxes in turn) and their extra values (concatenated,
    or None when ``extract`` gives none).
    """
    from scipy import ndimage

    ny, nx = shape
    if not cells.any():
        return None
    regions = ndimage.find_objects(ndimage.label(cells, structure=np.ones((3, 3), bool))[0])
    if len(regions) > max_boxes:
        return whole()
    boxes = [
        [
            r[0].start * cell - margin,
            r[0].stop * cell + margin,
            r[1].start * cell - margin,
            r[1].stop * cell + margin,
        ]
        for r in regions
    ]
    # box -> (sources, extra, touches)
    done: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray | None, bool]] = {}
    spent = 0  # the cost of the boxes extracted so far [whole-frame pixels]

    def area(b) -> int:
        return (b[1] - b[0]) * (b[3] - b[2])

    while True:
        boxes = merged_boxes([[max(0, b[0]), min(ny, b[1]), max(0, b[2]), min(nx, b[3])] for b in boxes])
        # a box that neither grew nor merged keeps its sources
        new = [box for box in map(tuple, boxes) if box not in done]
        pending = sum(area(b) + box_cost_pix for b in new)
        if sum(area(b) for b in boxes) > max_share * ny * nx or spent + pending > ny * nx:
            return whole()
        for box in new:
            done[box] = _box_sources(box, shape, extract, reach)
        spent += pending
        grow = [done[tuple(b)][2] for b in boxes]
        if not any(grow):
            parts = [done[tuple(b)] for b in boxes]
            objs = _in_frame(boxes, [p[0] for p in parts])
            if clean and len(boxes) > 1:
                split = np.cumsum([len(p[0]) for p in parts])[:-1]
                joined = _cleaning_neighbours(boxes, np.split(objs, split))
                if joined is not None:
                    boxes = joined
                    continue
            extras = [p[1] for p in parts]
            return objs, None if any(e is None for e in extras) else np.concatenate(extras)
        margin *= 2
        boxes = [
            [b[0] - margin, b[1] + margin, b[2] - margin, b[3] + margin] if g else b
            for b, g in zip(boxes, grow, strict=True)
        ]


def load_compiled_kernels() -> None:
    """Compile (first time) or load (from numba's cache) the kernel of :func:`detectable_cells`."""
    image = np.zeros((16, 16), np.float32)
    image[8, 8] = 100.0
    detectable_cells(
        image, 3.0, noise=np.ones((16, 16), np.float32), mask=None, kernel=np.ones((3, 3)), cell=8
    )
    detectable_cells(image, 3.0, noise=1.0, mask=np.zeros((16, 16), bool), kernel=None, cell=8)
    detectable_cells(image, 3.0, noise=1.0, mask=None, kernel=np.ones((9, 9)), cell=8)
