"""Fill masked pixels from their unmasked neighbours (bad pixels, cosmic rays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["interpolate_masked"]


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
    usable = ~np.asarray(masked, dtype=bool)
    if check_finite:
        for im in imgs:
            usable &= np.isfinite(im)
    target = np.asarray(masked if fill is None else fill, dtype=bool)
    todo = np.flatnonzero(target)
    done = np.zeros((ny, nx), dtype=bool)
    r = max(1, int(radius_pix))
    while todo.size and r <= max_radius_pix:
        j, i = np.divmod(todo, nx)
        den = np.zeros(todo.size, dtype=np.float64)
        nums = [np.zeros(todo.size, dtype=np.float64) for _ in imgs]
        for dj in range(-r, r + 1):
            j2 = j + dj
            okj = (j2 >= 0) & (j2 < ny)
            for di in range(-r, r + 1):
                if dj == 0 and di == 0:
                    continue
                i2 = i + di
                ok = okj & (i2 >= 0) & (i2 < nx)
                sel = np.flatnonzero(ok)
                jj, ii = j2[sel], i2[sel]
                use = usable[jj, ii]
                sel, jj, ii = sel[use], jj[use], ii[use]
                w = 1.0 / (dj * dj + di * di)
                den[sel] += w
                for num, im in zip(nums, imgs, strict=True):
                    num[sel] += w * im[jj, ii]
        got = den > 0
        for num, im in zip(nums, imgs, strict=True):
            im.ravel()[todo[got]] = (num[got] / den[got]).astype(im.dtype)
        done.ravel()[todo[got]] = True
        todo = todo[~got]
        r *= 2
    if single:
        return imgs[0], done
    return (imgs, done) if copy else done
