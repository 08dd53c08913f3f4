"""Fill masked pixels from their unmasked neighbours (bad pixels, cosmic rays)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FillPlan",
    "NeighbourFill",
    "fill_plan",
    "interpolate_masked",
    "neighbour_fill",
    "planned_fill",
    "window_touches",
]


def interpolate_masked(
    images: np.ndarray | Sequence[np.ndarray],
    masked: np.ndarray,
    *,
    fill: np.ndarray | None = None,
    radius_pix: int = 2,
    max_radius_pix: int = 32,
    copy: bool = True,
    check_finite: bool = True,
):
    """Replace masked pixels by the inverse-distance-squared mean of usable neighbours.

    Parameters
    ----------
    images
        One image (ny, nx) or several of one shape (e.g. SCI and VAR), filled with
        the same weights.
    masked
        True where a pixel may not be used as a source (and, without ``fill``, is
        filled).
    fill
        The pixels to fill (default: ``masked``); they should be masked too.
    radius_pix, max_radius_pix
        Half-size of the square neighbourhood; pixels with no usable neighbour are
        retried with the radius doubled up to ``max_radius_pix``.
    copy
        Work on float32 copies (default) or in place on the given float32 arrays.
    check_finite
        Treat non-finite pixels as unusable (skip when ``masked`` already covers them).

    Sparse: only the pixels to fill are visited, so 1e5 bad pixels cost
    milliseconds. A single image returns ``(filled, done)``; a sequence returns
    ``done`` (the images are filled in place, or copies when ``copy``: then
    ``(filled_list, done)``). ``done`` marks the filled pixels; pixels with no
    usable neighbour within ``max_radius_pix`` keep their value.
    """
    single = isinstance(images, np.ndarray)
    imgs = [images] if single else list(images)
    if copy:
        imgs = [np.array(im, dtype=np.float32, copy=True) for im in imgs]
    ny, nx = imgs[0].shape
    masked = np.asarray(masked, dtype=bool)
    todo = np.flatnonzero(masked if fill is None else np.asarray(fill, dtype=bool))
    done = np.zeros((ny, nx), dtype=bool)
    r = max(1, int(radius_pix))
    while todo.size and r <= max_radius_pix:
        got, values = _fill_values(imgs, masked, todo, r, nx, ny, check_finite=check_finite)
        for im, val in zip(imgs, values, strict=True):
            im.ravel()[todo[got]] = val.astype(im.dtype)
        done.ravel()[todo[got]] = True
        todo = todo[~got]
        r *= 2
    if single:
        return imgs[0], done
    return (imgs, done) if copy else done


@dataclass(frozen=True)
class NeighbourFill:
    """Fill values of pixels, computed but not written.

    ``targets`` the flat indices of the pixels that found a usable neighbour; ``values`` one
    float64 array per image (the inverse-distance-squared means, in ``targets`` order);
    ``radius`` the half-size of the window each was filled from [pixel].
    """

    targets: np.ndarray
    values: list[np.ndarray]
    radius: np.ndarray


def neighbour_fill(
    images: Sequence[np.ndarray],
    masked: np.ndarray,
    targets: np.ndarray,
    *,
    radius_pix: int = 2,
    max_radius_pix: int = 32,
    check_finite: bool = True,
) -> NeighbourFill:
    """What :func:`interpolate_masked` would write into ``images`` at the flat pixel indices
    ``targets``, which must all be ``masked`` (so that no filled pixel is another's source).

    For a caller that fills the same pixels of the same images twice with a few more
    pixels masked the second time: a pixel whose window held none of those can keep its
    first value (see :func:`darkroom.calib.process.calibrate_frame`).
    """
    imgs = list(images)
    ny, nx = imgs[0].shape
    masked = np.asarray(masked, dtype=bool)
    todo = np.asarray(targets, dtype=np.intp)
    found, values, radius = [], [[] for _ in imgs], []
    r = max(1, int(radius_pix))
    while todo.size and r <= max_radius_pix:
        got, vals = _fill_values(imgs, masked, todo, r, nx, ny, check_finite=check_finite)
        found.append(todo[got])
        for out, v in zip(values, vals, strict=True):
            out.append(v)
        radius.append(np.full(int(np.count_nonzero(got)), r, dtype=np.int32))
        todo = todo[~got]
        r *= 2
    if not found:
        return NeighbourFill(np.zeros(0, np.intp), [np.zeros(0) for _ in imgs], np.zeros(0, np.int32))
    return NeighbourFill(np.concatenate(found), [np.concatenate(v) for v in values], np.concatenate(radius))


@dataclass(frozen=True)
class _Round:
    """One radius of a fill: the pixels ``todo``, their neighbours' flat indices and usability
    ((offsets, pixels) arrays), the offsets' weights, and the usable weights and their sums."""

    todo: np.ndarray
    flat: np.ndarray
    use: np.ndarray
    weight: np.ndarray
    w_use: np.ndarray
    den: np.ndarray
    got: np.ndarray
    r: int


@dataclass(frozen=True)
class FillPlan:
    """Where :func:`neighbour_fill` (``check_finite=False``) takes each pixel's neighbours from,
    for one mask and set of pixels: the same for every image, so made once for many frames
    that share a bad-pixel mask."""

    shape: tuple[int, int]
    rounds: tuple[_Round, ...]


def fill_plan(
    masked: np.ndarray, targets: np.ndarray, *, radius_pix: int = 2, max_radius_pix: int = 32
) -> FillPlan:
    """The :class:`FillPlan` of :func:`neighbour_fill` for ``masked`` and ``targets``."""
    masked = np.asarray(masked, dtype=bool)
    ny, nx = masked.shape
    todo = np.asarray(targets, dtype=np.intp)
    rounds = []
    r = max(1, int(radius_pix))
    while todo.size and r <= max_radius_pix:
        rnd = _round(todo, r, _usable_weights(masked, todo, r, nx, ny))
        rounds.append(rnd)
        todo = todo[~rnd.got]
        r *= 2
    return FillPlan((ny, nx), tuple(rounds))


def planned_fill(images: Sequence[np.ndarray], plan: FillPlan) -> NeighbourFill:
    """:func:`neighbour_fill` (``check_finite=False``) of the mask and pixels ``plan`` was made
    for: only the images' values are gathered and summed, with the same result."""
    imgs = list(images)
    if plan.shape != imgs[0].shape:
        raise ValueError(f"a fill plan for images of {plan.shape}, given {imgs[0].shape}")
    found, values, radius = [], [[] for _ in imgs], []
    for rnd in plan.rounds:
        nums = _image_sums(imgs, rnd.flat, rnd.use, rnd.weight)
        found.append(rnd.todo[rnd.got])
        for out, num in zip(values, nums, strict=True):
            out.append(num[rnd.got] / rnd.den[rnd.got])
        radius.append(np.full(int(np.count_nonzero(rnd.got)), rnd.r, dtype=np.int32))
    if not found:
        return NeighbourFill(np.zeros(0, np.intp), [np.zeros(0) for _ in imgs], np.zeros(0, np.int32))
    return NeighbourFill(np.concatenate(found), [np.concatenate(v) for v in values], np.concatenate(radius))


def window_touches(flags: np.ndarray, pixels: np.ndarray, half: int) -> np.ndarray:
    """For each flat pixel index of ``pixels``: is any of ``flags`` within ``half`` pixels
    (Chebyshev, the pixel itself included)? Indices clipped at the border land on pixels
    inside the window anyway.

    With fewer flags than pixels (a few cosmic rays against thousands of bad pixels) the
    flags' windows are marked and the pixels looked up, instead of gathering every pixel's
    window: the same answer."""
    ny, nx = flags.shape
    d = np.arange(-half, half + 1)
    pixels = np.asarray(pixels, dtype=np.intp)
    found = np.flatnonzero(flags)
    if found.size < pixels.size:
        fj, fi = np.divmod(found, nx)
        near = np.zeros(ny * nx, dtype=bool)
        rows = np.clip(fj[:, None] + d, 0, ny - 1)[:, :, None]
        cols = np.clip(fi[:, None] + d, 0, nx - 1)[:, None, :]
        near[rows * nx + cols] = True
        return near[pixels]
    j, i = np.divmod(pixels, nx)
    rows = np.clip(j[:, None] + d, 0, ny - 1)[:, :, None]
    cols = np.clip(i[:, None] + d, 0, nx - 1)[:, None, :]
    return flags[rows, cols].any(axis=(1, 2))


def _usable_weights(
    masked: np.ndarray, todo: np.ndarray, r: int, nx: int, ny: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat, use, weight): the (offsets, pixels) flat indices of the neighbours within ``r``
    of the pixels ``todo`` (the pixel's index plus the offset's, except for the pixels within r
    of the border, whose outside neighbours read pixel 0, unused), which of them are usable
    (inside, not ``masked``), and the offsets' inverse-square-distance weights."""
    d = np.arange(-r, r + 1)
    dj, di = (o.ravel() for o in np.meshgrid(d, d, indexing="ij"))
    centre = (dj == 0) & (di == 0)
    dj, di = dj[~centre], di[~centre]
    weight = 1.0 / (dj * dj + di * di)
    todo = np.asarray(todo, dtype=np.intp)
    flat = (dj * nx + di)[:, None] + todo[None, :]
    j, i = np.divmod(todo, nx)
    edge = np.flatnonzero((j < r) | (j >= ny - r) | (i < r) | (i >= nx - r))
    inside = None
    if edge.size:
        jj = dj[:, None] + j[edge][None, :]
        ii = di[:, None] + i[edge][None, :]
        inside = (jj >= 0) & (jj < ny) & (ii >= 0) & (ii < nx)
        flat[:, edge] = np.where(inside, jj * nx + ii, 0)
    use = masked.ravel().take(flat)
    np.logical_not(use, out=use)
    if inside is not None:
        use[:, edge] &= inside
    return flat, use, weight


def _round(todo: np.ndarray, r: int, geometry: tuple[np.ndarray, np.ndarray, np.ndarray]) -> _Round:
    flat, use, weight = geometry
    w_use, den = _weight_sums(use, weight)
    return _Round(np.asarray(todo, dtype=np.intp), flat, use, weight, w_use, den, den > 0, r)


def _weight_sums(use: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The usable weights ((offsets, pixels), float64) and their sums, offset by offset."""
    w_use = np.where(use, weight[:, None], 0.0)
    den = np.zeros(use.shape[1], dtype=np.float64)
    for k in range(use.shape[0]):  # offset by offset: the same additions in the same order for any n
        den += w_use[k]
    return w_use, den


#: weighted sums of float32 images in a compiled kernel (:mod:`darkroom.calib._process_kernels`),
#: without gathering the neighbours first; False: the numpy reference (:func:`_weighted_sums`)
COMPILED = True


def _image_sums(
    imgs: list[np.ndarray], flat: np.ndarray, use: np.ndarray, weight: np.ndarray
) -> list[np.ndarray]:
    """:func:`_weighted_sums` of the images' pixels at ``flat`` ((offsets, pixels) flat indices):
    compiled for C-ordered float32 images (bit for bit the same sums), else gathered and summed
    with numpy."""
    flat_c = np.ascontiguousarray(flat, dtype=np.intp)
    if COMPILED and all(im.dtype == np.float32 and im.flags.c_contiguous for im in imgs):
        from ._process_kernels import weighted_sums

        use_c = np.ascontiguousarray(use, dtype=bool)
        w32 = np.ascontiguousarray(weight.astype(np.float32))
        return [
            weighted_sums(im.reshape(-1), flat_c, use_c, w32, np.empty(use.shape[1], dtype=np.float64))
            for im in imgs
        ]
    return _weighted_sums([im.ravel().take(flat_c) for im in imgs], use, weight)


def _weighted_sums(vals: list[np.ndarray], use: np.ndarray, weight: np.ndarray) -> list[np.ndarray]:
    """Each image's sum of weight x pixel over the usable neighbours (float64), offset by offset."""
    # the products in the images' type (weight x pixel, as a Python float times a float32 pixel)
    prods = [np.where(use, weight.astype(v.dtype)[:, None] * v, v.dtype.type(0)) for v in vals]
    nums = [np.zeros(use.shape[1], dtype=np.float64) for _ in vals]
    for k in range(use.shape[0]):
        for num, p in zip(nums, prods, strict=True):
            num += p[k]
    return nums


def _fill_values(
    imgs: list[np.ndarray],
    masked: np.ndarray,
    todo: np.ndarray,
    r: int,
    nx: int,
    ny: int,
    *,
    check_finite: bool,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Which of the flat pixels ``todo`` have a usable neighbour within ``r`` (Chebyshev), and
    their inverse-distance-squared means (float64) for each image.

    The neighbours' pixels are gathered for all offsets at once (only there is ``masked`` or
    finiteness looked at), and the sums run over the offsets in a fixed order (rows, then
    columns), so the result does not depend on how the work is batched.
    """
    flat, use, weight = _usable_weights(masked, todo, r, nx, ny)
    if check_finite:
        # gathered offset by offset ((offsets, pixels) arrays), summed offset by offset
        vals = [im.ravel().take(flat) for im in imgs]
        for v in vals:
            use &= np.isfinite(v)
        _, den = _weight_sums(use, weight)
        nums = _weighted_sums(vals, use, weight)
    else:
        _, den = _weight_sums(use, weight)
        nums = _image_sums(imgs, flat, use, weight)
    got = den > 0
    return got, [num[got] / den[got] for num in nums]
