"""Aperture photometry on SCI/MASK/VAR planes with a local annulus background.

Pixel convention (as sep): arrays are ``(ny, nx)``; positions are ``(x, y)`` with
``x`` along the second (fast) axis and ``(0.0, 0.0)`` the centre of the first pixel.
Convert FITS/WCS 1-based positions before calling (``wcs.all_world2pix(ra, dec, 0)``
already gives 0-based ones, see :func:`darkroom.phot.match.sky_to_pixel`).

Sums use exact circle/pixel overlaps (``sep.sum_circle`` with ``subpix=0``). The
background is the sigma-clipped median of the pixels whose centres fall in an annulus
around each source, computed here for all sources at once. Flux errors come from the
VAR plane (the sum of VAR over the aperture, same overlap weights) plus the error of
the background estimate, ``area * annulus_rms / sqrt(n_annulus)``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree

from darkroom.errors import BadInputError, ConfigError
from darkroom.maskbits import MaskBit
from darkroom.phot.flags import PhotFlag
from darkroom.phot.settings import ApertureConfig, BackgroundStatistic

__all__ = [
    "ApertureConfig",
    "BackgroundStatistic",
    "aperture_photometry",
    "aperture_radii",
    "clipped_annulus_stats",
]

log = logging.getLogger(__name__)

_MAG_ERR_FACTOR = 2.5 / math.log(10.0)


def aperture_radii(config: ApertureConfig, fwhm_pix: float | None) -> tuple[np.ndarray, list[str]]:
    """Aperture radii [pixel] and their names (``"r3.00px"``, ``"1.50fwhm"``), output order."""
    if config.radii_fwhm and not (fwhm_pix and np.isfinite(fwhm_pix) and fwhm_pix > 0):
        raise BadInputError(f"apertures in FWHM units need the frame FWHM, got fwhm_pix={fwhm_pix!r}")
    radii = [float(r) for r in config.radii_pix] + [float(k * fwhm_pix) for k in config.radii_fwhm]  # type: ignore[operator]
    names = [f"r{r:.2f}px" for r in config.radii_pix] + [f"{k:.2f}fwhm" for k in config.radii_fwhm]
    return np.asarray(radii, dtype=np.float64), names


def _annulus_radii(config: ApertureConfig, fwhm_pix: float | None) -> tuple[float, float]:
    def pick(pix: float | None, mult: float) -> float:
        if pix is not None:
            return float(pix)
        if not (fwhm_pix and np.isfinite(fwhm_pix) and fwhm_pix > 0):
            raise BadInputError(f"an annulus in FWHM units needs the frame FWHM, got fwhm_pix={fwhm_pix!r}")
        return float(mult * fwhm_pix)

    return pick(config.annulus_in_pix, config.annulus_in_fwhm), pick(
        config.annulus_out_pix, config.annulus_out_fwhm
    )


def _native(a: np.ndarray, dtype: type) -> np.ndarray:
    """C-contiguous, native byte order copy-if-needed (sep rejects big-endian FITS data)."""
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("="))


#: planes of at most this many pixels convert into a buffer the thread keeps between calls
_SCRATCH_MAX_PIXELS = 1 << 22
_scratch = threading.local()


def _scratch_plane(slot: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[np.ndarray, list]:
    """A zero plane kept by the calling thread in ``slot`` from one call to the next, and the list
    of squares to zero again before its next use (fill it before writing them). Its pages stay
    mapped: a fresh 1k x 1k plane costs ~1 ms of page faults when only its squares are written."""
    planes = getattr(_scratch, "planes", None)
    if planes is None:
        planes = _scratch.planes = {}
    entry = planes.get(slot)
    if entry is None or entry[0].shape != shape or entry[0].dtype != dtype:
        entry = planes[slot] = (np.zeros(shape, dtype), [])
    out, written = entry
    for y0, y1, x0, x1 in written:
        out[y0:y1, x0:x1] = 0
    written.clear()
    return out, written


def _native_near(
    a: np.ndarray, dtype: type, squares: list[tuple[int, int, int, int]], *, slot: int
) -> np.ndarray | None:
    """:func:`_native` of ``a`` in ``squares`` (:func:`_squares`), zero elsewhere; None when
    converting the whole plane is the cheaper (many sources) or costs nothing (``a`` already
    native and of the type).

    For planes read as big-endian views of a mapped file: the photometry of a few tens of
    sources reads ~10% of a 1k x 1k frame, and converts only that. Planes up to
    ``_SCRATCH_MAX_PIXELS`` go into the thread's scratch plane ``slot`` (one per plane of a
    call: valid until the thread's next call), larger ones into a new array.
    """
    want = np.dtype(dtype).newbyteorder("=")
    if a.dtype == want and a.flags.c_contiguous:
        return None
    area = sum((y1 - y0) * (x1 - x0) + 3000 for y0, y1, x0, x1 in squares)
    if area > a.size // 2:  # ~3 us of Python a square, ~1 ns a pixel
        return None
    if a.size <= _SCRATCH_MAX_PIXELS:
        out, written = _scratch_plane(slot, a.shape, want)
        written.extend(squares)  # before writing: zeroed next time whatever happens now
    else:
        out = np.zeros(a.shape, dtype=want)
    for y0, y1, x0, x1 in squares:
        out[y0:y1, x0:x1] = a[y0:y1, x0:x1]
    return out


def _stencil(r_min: float, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (dy, dx) of pixels whose centre may lie at r_min..r_max from a point
    anywhere inside the central pixel."""
    n = math.ceil(r_max + 1.0)
    dy, dx = np.mgrid[-n : n + 1, -n : n + 1]
    d = np.hypot(dx, dy)
    keep = (d >= r_min - 0.75) & (d <= r_max + 0.75)
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


def clipped_annulus_stats(
    values: np.ndarray,
    *,
    clip_sigma: float = 3.0,
    max_iters: int = 5,
    statistic: BackgroundStatistic = "median",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped centre, standard deviation and count of each row of ``values``.

    ``values`` is ``(n_rows, n)`` with NaN for pixels that do not count. Clipping is
    cumulative (as ``astropy.stats.sigma_clip``: centre = median, spread = population
    std, values outside ``median +- clip_sigma * std`` leave the set for good) and stops
    when no row changes or after ``max_iters`` passes. Rows are sorted once; each pass
    only moves the two ends of a contiguous run, so the cost is one sort. The passes run
    compiled (:mod:`darkroom.phot._aperture_kernels`), each row on its own.

    The centre is the clipped ``"median"``, ``"mean"``, or ``"mode"`` (SExtractor:
    ``2.5 median - 1.5 mean``, or the median where ``|mean - median| > 0.3 std``, a
    crowded annulus). The mean and mode avoid the half-integer steps of a median of
    integer-valued (raw) pixels.

    Returns ``(centre, std, n_used)``; rows with no valid value get NaN and 0.
    """
    codes = {"median": 0, "mean": 1, "mode": 2}
    if statistic not in codes:
        raise ConfigError(f"unknown background statistic {statistic!r}; use median, mean or mode")
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise BadInputError(f"values must be 2-D (n_rows, n), got shape {values.shape}")
    s = np.sort(values, axis=1)  # NaN last
    if s.shape[1] == 0:
        return np.full(s.shape[0], np.nan), np.full(s.shape[0], np.nan), np.zeros(s.shape[0], dtype=np.int64)
    from darkroom.phot._aperture_kernels import clipped_sorted_rows

    return clipped_sorted_rows(s, float(clip_sigma), int(max_iters), codes[statistic])


def _annulus_background(
    sci: np.ndarray,
    mask: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    *,
    config: ApertureConfig,
    nb_x: np.ndarray,
    nb_y: np.ndarray,
    nb_mask_radius: float,
    chunk: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clipped annulus statistics of every source, ``chunk`` sources at a time.

    Each source's annulus is a fixed stencil of pixel offsets around its nearest pixel;
    a pixel counts when its centre lies at ``r_in <= d < r_out``, it is inside the image,
    finite, free of ``annulus_exclude_bits`` and farther than ``nb_mask_radius`` from
    every other source's centre. Neighbour discs are marked through a look-up table from
    offset to stencil column, so crowding costs ~(disc area) per pair, not a stencil each.
    """
    dy, dx = _stencil(r_in, r_out)
    half = int(max(np.abs(dx).max(), np.abs(dy).max()))
    lut = np.full((2 * half + 1, 2 * half + 1), -1, dtype=np.int64)
    lut[dy + half, dx + half] = np.arange(dx.size)
    dxf = dx.astype(np.float32)
    dyf = dy.astype(np.float32)
    r_in2, r_out2 = np.float32(r_in * r_in), np.float32(r_out * r_out)
    from darkroom.phot._aperture_kernels import annulus_values

    sci32 = np.ascontiguousarray(sci, dtype=np.float32)
    use_mask = mask is not None and bool(config.annulus_exclude_bits)
    mask32 = np.ascontiguousarray(mask, dtype=np.int32) if use_mask else np.zeros((1, 1), np.int32)
    bits = int(config.annulus_exclude_bits) if use_mask else 0
    med = np.empty(x.size)
    std = np.empty(x.size)
    cnt = np.empty(x.size, dtype=np.int64)
    tree = None
    if nb_mask_radius > 0 and nb_x.size:
        tree = cKDTree(np.column_stack([nb_x, nb_y]))
        rad = math.ceil(nb_mask_radius) + 1
        gy, gx = np.mgrid[-rad : rad + 1, -rad : rad + 1]
        disc_dy, disc_dx = gy.ravel(), gx.ravel()
    for start in range(0, x.size, chunk):
        sl = slice(start, min(start + chunk, x.size))
        xs, ys = x[sl], y[sl]
        cx = np.rint(xs).astype(np.int64)
        cy = np.rint(ys).astype(np.int64)
        fx = (xs - cx).astype(np.float32)
        fy = (ys - cy).astype(np.float32)
        vals = annulus_values(sci32, mask32, use_mask, bits, cx, cy, fx, fy, dx, dy, dxf, dyf, r_in2, r_out2)
        if tree is not None:
            pairs = tree.query_ball_point(np.column_stack([xs, ys]), r_out + nb_mask_radius + 1.0)
            counts = np.fromiter((len(p) for p in pairs), dtype=np.int64, count=len(pairs))
            if counts.sum():
                rows = np.repeat(np.arange(len(pairs)), counts)
                nbr = np.fromiter((j for p in pairs for j in p), dtype=np.int64, count=int(counts.sum()))
                far = (nb_x[nbr] - xs[rows]) ** 2 + (nb_y[nbr] - ys[rows]) ** 2 > config.self_match_pix**2
                rows, nbr = rows[far], nbr[far]
                if rows.size:
                    # pixels of a disc around each neighbour, as offsets from the source's centre pixel
                    px = np.rint(nb_x[nbr]).astype(np.int64)[:, None] + disc_dx[None, :]
                    py = np.rint(nb_y[nbr]).astype(np.int64)[:, None] + disc_dy[None, :]
                    near = (px - nb_x[nbr][:, None]) ** 2 + (py - nb_y[nbr][:, None]) ** 2 < nb_mask_radius**2
                    ox = px - cx[rows][:, None] + half
                    oy = py - cy[rows][:, None] + half
                    near &= (ox >= 0) & (ox <= 2 * half) & (oy >= 0) & (oy <= 2 * half)
                    r_idx = np.broadcast_to(rows[:, None], near.shape)[near]
                    col = lut[oy[near], ox[near]]
                    hit = col >= 0
                    vals[r_idx[hit], col[hit]] = np.nan
        m, s, c = clipped_annulus_stats(
            vals,
            clip_sigma=config.annulus_clip_sigma,
            max_iters=config.annulus_clip_iters,
            statistic=config.annulus_statistic,
        )
        med[sl], std[sl], cnt[sl] = m, s, c
    return med, std, cnt


def _squares(
    x: np.ndarray, y: np.ndarray, reach: float, shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of the square around each position (its nearest pixel +- ``ceil(reach) +
    1``, clipped to the frame): every pixel an aperture or annulus reaching ``reach`` pixels can
    touch. Tested and converted as slices: the photometry stage's unit on the ARCSAT night (27
    sources a frame) went from 19.9 to 17.8 ms (CPU median) when they replaced gathering the
    squares' ~95k pixels by flat index (the index and three gathers)."""
    ny, nx = shape
    n = math.ceil(reach) + 1
    cx, cy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    return list(
        zip(
            np.clip(cy - n, 0, ny).tolist(),
            np.clip(cy + n + 1, 0, ny).tolist(),
            np.clip(cx - n, 0, nx).tolist(),
            np.clip(cx + n + 1, 0, nx).tolist(),
            strict=True,
        )
    )


def _all_finite(planes: list[np.ndarray], squares: list[tuple[int, int, int, int]]) -> bool:
    """Whether every pixel of the squares is finite in every plane."""
    return all(np.isfinite(p[y0:y1, x0:x1]).all() for p in planes for y0, y1, x0, x1 in squares)


def _mask_bits_in_apertures(
    mask: np.ndarray, x: np.ndarray, y: np.ndarray, radii: np.ndarray, *, local: bool = False
) -> np.ndarray:
    """OR of the MASK bits of every pixel that overlaps each aperture: ``(n_src, n_radii)``.

    ``local``: the set bits are looked for in a square slice around each position (the
    pixels its apertures can touch) rather than in the whole frame.
    """
    out = np.zeros((x.size, radii.size), dtype=np.int64)
    rmax = float(radii.max())
    ny, nx = mask.shape
    n = math.ceil(rmax + 1.0)
    if local:
        # the set pixels (few) of each source's square, (ix, iy) as the grid below would give them
        found = []
        cxs, cys = np.rint(x).astype(np.int64).tolist(), np.rint(y).astype(np.int64).tolist()
        for i, (cx, cy) in enumerate(zip(cxs, cys, strict=True)):
            x0, y0 = max(cx - n, 0), max(cy - n, 0)
            sub = mask[y0 : min(cy + n + 1, ny), x0 : min(cx + n + 1, nx)]
            if sub.any():
                r_, c_ = np.nonzero(sub)
                found.append((np.full(r_.size, i), c_ + x0, r_ + y0, sub[r_, c_]))
        if not found:
            return out
        row, px, py, bits = (np.concatenate(parts) for parts in zip(*found, strict=True))
        cand = np.arange(x.size)
        bits = bits.astype(np.int64)
        xs, ys = x, y
    else:
        anymask = mask != 0
        if not anymask.any():
            return out
        touched, _, _ = sep.sum_circle(anymask, x, y, rmax, subpix=0)
        cand = np.flatnonzero(touched > 0)
        if cand.size == 0:
            return out
        gy, gx = np.mgrid[-n : n + 1, -n : n + 1]
        gy = gy.ravel()
        gx = gx.ravel()
        xs, ys = x[cand], y[cand]
        ix = np.rint(xs).astype(np.int64)[:, None] + gx[None, :]
        iy = np.rint(ys).astype(np.int64)[:, None] + gy[None, :]
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        m = np.where(inside, mask[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)], 0)
        # only the pixels with a bit set matter (few)
        row, col = np.nonzero(m)
        if not row.size:
            return out
        bits = m[row, col].astype(np.int64)
        px, py = ix[row, col], iy[row, col]
    # the distance from the centre to the nearest point of the pixel square decides which
    # apertures a set pixel overlaps
    ex = np.maximum(np.abs(px - xs[row]) - 0.5, 0.0)
    ey = np.maximum(np.abs(py - ys[row]) - 0.5, 0.0)
    dist = np.hypot(ex, ey)
    for k, r in enumerate(radii):
        sel = dist < r
        acc = np.zeros(cand.size, dtype=np.int64)
        np.bitwise_or.at(acc, row[sel], bits[sel])
        out[cand, k] = acc
    return out


def _in_image_area(x: float, y: float, r: float, shape: tuple[int, int]) -> float:
    """Exact area [pixel^2] of the part of a circle inside the image rectangle."""
    ny, nx = shape
    x0 = max(0, math.floor(x - r) - 1)
    x1 = min(nx, math.ceil(x + r) + 2)
    y0 = max(0, math.floor(y - r) - 1)
    y1 = min(ny, math.ceil(y + r) + 2)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    ones = np.ones((y1 - y0, x1 - x0), dtype=np.float32)
    area, _, _ = sep.sum_circle(ones, [x - x0], [y - y0], r, subpix=0)
    return float(area[0])


def aperture_photometry(
    sci: np.ndarray,
    mask: np.ndarray | None,
    var: np.ndarray | None,
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    fwhm_pix: float | None = None,
    config: ApertureConfig | None = None,
    forced: bool | Sequence[bool] | np.ndarray = False,
    neighbour_x: Sequence[float] | np.ndarray | None = None,
    neighbour_y: Sequence[float] | np.ndarray | None = None,
    exptime_s: float | None = None,
) -> Table:
    """Exact circular-aperture photometry with a local sigma-clipped annulus background.

    Parameters
    ----------
    sci : (ny, nx) array
        Image [adu or any unit U]; NaN pixels are treated as NO_DATA.
    mask : (ny, nx) integer array or None
        :class:`~darkroom.maskbits.MaskBit` plane.
    var : (ny, nx) array or None
        Variance [U^2]. Without it the flux error holds only the background term.
    x, y : arrays
        0-based pixel positions (see the module docstring).
    fwhm_pix : float, optional
        Frame FWHM [pixel]; needed for radii and annuli given in FWHM units.
    config : ApertureConfig
    forced : bool or bool array
        Positions measured as given (sets the FORCED flag and the ``forced`` column).
    neighbour_x, neighbour_y : arrays, optional
        Positions of every known source in the frame (0-based pixels), used for the
        BLENDED flag and to keep neighbours out of the annulus. Default: ``x, y``. For
        forced photometry pass the frame's detections here.
    exptime_s : float, optional
        Exposure time [s]; ``mag_inst`` is then per second.

    Returns
    -------
    astropy.table.Table
        One row per position, in input order. Columns: ``x, y`` [pixel], ``forced``,
        ``bkg`` [U/pixel], ``bkg_rms`` [U/pixel], ``n_bkg_pix``; per aperture k
        ``flux_ap{k}``, ``flux_err_ap{k}`` [U], ``flags_ap{k}`` (:class:`PhotFlag`);
        the reference aperture copied to ``flux, flux_err, flags``; ``snr``,
        ``mag_inst = -2.5 log10(flux [/exptime_s])`` and ``mag_inst_err`` [mag].
        ``meta`` holds the radii, annulus radii, FWHM and the flag names.
    """
    config = config or ApertureConfig()
    sci = np.asarray(sci)
    if sci.ndim != 2 or sci.size == 0:
        raise BadInputError(f"SCI must be a non-empty 2-D array, got shape {sci.shape}")
    shape = sci.shape
    if mask is not None and np.shape(mask) != shape:
        raise BadInputError(f"MASK shape {np.shape(mask)} differs from SCI shape {shape}")
    if var is not None and np.shape(var) != shape:
        raise BadInputError(f"VAR shape {np.shape(var)} differs from SCI shape {shape}")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise BadInputError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise BadInputError("x/y contain NaN or inf positions")
    n_src = x.size
    forced_arr = np.broadcast_to(np.asarray(forced, dtype=bool), (n_src,)).copy()

    radii, names = aperture_radii(config, fwhm_pix)
    r_in, r_out = _annulus_radii(config, fwhm_pix)
    if r_in < radii.max():
        raise ConfigError(
            f"annulus inner radius {r_in:.2f} px is inside the largest aperture ({radii.max():.2f} px); "
            "raise annulus_in_fwhm/annulus_in_pix or shrink the apertures"
        )
    scale = float(fwhm_pix) if fwhm_pix and np.isfinite(fwhm_pix) and fwhm_pix > 0 else 1.0

    # Only the pixels within reach of an annulus or aperture count (a square around each source):
    # they are tested rather than the frame (a few thousand pixels a source against a million),
    # and with few sources only they are converted to native float32 / int32 (planes read as big-endian
    # views of a mapped file); the whole-frame treatment of non-finite pixels, and the frame's
    # spread when no annulus is usable, convert the whole planes first.
    squares = _squares(x, y, r_out + 1.0, shape) if n_src else []
    near = {
        name: None if a is None or not n_src else _native_near(a, t, squares, slot=slot)
        for slot, (name, a, t) in enumerate(
            (("sci", sci, np.float32), ("mask", mask, np.int32), ("var", var, np.float32))
        )
    }
    windowed = any(a is not None for a in near.values())
    sci32 = near["sci"] if near["sci"] is not None else _native(sci, np.float32)
    mask_i = None if mask is None else near["mask"] if near["mask"] is not None else _native(mask, np.int32)
    var32 = None if var is None else near["var"] if near["var"] is not None else _native(var, np.float32)
    if not _all_finite([sci32] if var32 is None else [sci32, var32], squares):
        if windowed:
            sci32 = _native(sci, np.float32)
            mask_i = None if mask is None else _native(mask, np.int32)
            var32 = None if var is None else _native(var, np.float32)
            windowed = False
        bad_pix = ~np.isfinite(sci32)
        if var32 is not None:
            bad_pix |= ~np.isfinite(var32)
        sci32 = np.where(bad_pix, np.float32(0), sci32)
        if var32 is not None:
            var32 = np.where(bad_pix, np.float32(0), var32)
        base = np.zeros(shape, np.int32) if mask_i is None else mask_i
        mask_i = base | np.where(bad_pix, np.int32(MaskBit.NO_DATA), np.int32(0))

    if neighbour_x is None or neighbour_y is None:
        nb_x, nb_y = x, y
    else:
        nb_x = np.atleast_1d(np.asarray(neighbour_x, dtype=np.float64))
        nb_y = np.atleast_1d(np.asarray(neighbour_y, dtype=np.float64))

    # --- background -----------------------------------------------------------------
    if n_src:
        bkg, bkg_rms, n_bkg = _annulus_background(
            sci32,
            mask_i,
            x,
            y,
            r_in,
            r_out,
            config=config,
            nb_x=nb_x,
            nb_y=nb_y,
            nb_mask_radius=config.neighbour_mask_fwhm * scale,
        )
    else:
        bkg = bkg_rms = np.zeros(0)
        n_bkg = np.zeros(0, dtype=np.int64)
    poor = n_bkg < config.annulus_min_pixels
    if poor.any():
        good = ~poor
        fallback_bkg = float(np.median(bkg[good])) if good.any() else 0.0
        if good.any():
            fallback_rms = float(np.median(bkg_rms[good]))
        else:  # the whole frame's spread
            frame = _native(sci, np.float32) if windowed else sci32
            fallback_rms = float(np.nanstd(np.where(np.isfinite(frame), frame, np.float32(0))))
        log.debug("%d of %d sources have a poor annulus; frame median background used", poor.sum(), n_src)
        bkg = np.where(poor, fallback_bkg, bkg)
        bkg_rms = np.where(poor, fallback_rms, bkg_rms)
    n_bkg_eff = np.maximum(n_bkg, config.annulus_min_pixels)
    bkg_sub = bkg if config.do_local_background else np.zeros(n_src)

    # --- sums -----------------------------------------------------------------------
    excl = None
    if mask_i is not None and config.exclude_bits:
        # sep reads the exclusion mask inside the apertures only: set it there
        bits = np.int32(config.exclude_bits)
        for y0, y1, x0, x1 in squares:
            hit = (mask_i[y0:y1, x0:x1] & bits) != 0
            if hit.any():
                if excl is None:
                    excl = np.zeros(shape, dtype=bool)
                excl[y0:y1, x0:x1] |= hit
    maskbits = (
        _mask_bits_in_apertures(mask_i, x, y, radii, local=True)
        if mask_i is not None and n_src
        else np.zeros((n_src, radii.size), dtype=np.int64)
    )
    if n_src and nb_x.size:
        tree = cKDTree(np.column_stack([nb_x, nb_y]))
        # nearest neighbour that is not the source itself
        k = min(3, nb_x.size)
        dists, _ = tree.query(np.column_stack([x, y]), k=k)
        dists = np.asarray(dists).reshape(n_src, k)
        dists = np.where(dists <= config.self_match_pix, np.inf, dists)
        nn_dist = dists.min(axis=1)
    else:
        nn_dist = np.full(n_src, np.inf)

    table = Table()
    table["x"] = x
    table["y"] = y
    table["forced"] = forced_arr
    table["bkg"] = bkg.astype(np.float64)
    table["bkg_rms"] = bkg_rms.astype(np.float64)
    table["n_bkg_pix"] = n_bkg.astype(np.int32)
    base_flags = np.where(poor, int(PhotFlag.BKG_POOR), 0) | np.where(forced_arr, int(PhotFlag.FORCED), 0)
    margin = config.blend_margin_fwhm * scale
    for k, r in enumerate(radii):
        if n_src:
            s, e, f = sep.sum_circle(sci32, x, y, r, var=var32, mask=excl, maskthresh=0.0, subpix=0)
        else:
            s = e = np.zeros(0)
            f = np.zeros(0, dtype=np.int16)
        f = np.asarray(f)
        area = np.full(n_src, math.pi * r * r)
        trunc = (f & sep.APER_TRUNC) != 0
        for i in np.flatnonzero(trunc):
            area[i] = _in_image_area(x[i], y[i], r, shape)
        all_masked = (f & sep.APER_ALLMASKED) != 0
        flux = np.asarray(s, dtype=np.float64) - area * bkg_sub
        var_sum = np.asarray(e, dtype=np.float64) ** 2 if var32 is not None else np.zeros(n_src)
        bkg_term = (area * bkg_rms) ** 2 / n_bkg_eff if config.do_local_background else 0.0
        flux_err = np.sqrt(var_sum + bkg_term)
        flux = np.where(all_masked, np.nan, flux)
        flux_err = np.where(all_masked, np.nan, flux_err)
        flags = base_flags | maskbits[:, k]
        flags = flags | np.where(trunc, int(PhotFlag.TRUNCATED), 0)
        flags = flags | np.where(all_masked, int(PhotFlag.ALL_MASKED), 0)
        flags = flags | np.where(nn_dist < r + margin, int(PhotFlag.BLENDED), 0)
        flags = flags | np.where(~(flux > 0), int(PhotFlag.NON_POSITIVE), 0)
        table[f"flux_ap{k}"] = flux
        table[f"flux_err_ap{k}"] = flux_err
        table[f"flags_ap{k}"] = flags.astype(np.int32)
        table[f"flux_ap{k}"].description = f"background-subtracted flux in aperture {k} ({names[k]})"
    ref = config.ref_aperture
    table["flux"] = table[f"flux_ap{ref}"]
    table["flux_err"] = table[f"flux_err_ap{ref}"]
    table["flags"] = table[f"flags_ap{ref}"]
    flux = np.asarray(table["flux"], dtype=np.float64)
    flux_err = np.asarray(table["flux_err"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["snr"] = flux / flux_err
        rate = flux / exptime_s if exptime_s else flux
        table["mag_inst"] = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, rate, 1.0)), np.nan)
        table["mag_inst_err"] = np.where(flux > 0, _MAG_ERR_FACTOR * flux_err / flux, np.nan)
    table["x"].unit = table["y"].unit = "pix"
    table["mag_inst"].unit = table["mag_inst_err"].unit = "mag"
    table["x"].description = "0-based pixel x (fast axis)"
    table["bkg"].description = f"sigma-clipped annulus {config.annulus_statistic} per pixel" + (
        "" if config.do_local_background else " (measured, not subtracted)"
    )
    table["bkg_rms"].description = "clipped annulus standard deviation per pixel"
    table["mag_inst"].description = "-2.5 log10(flux" + (" / exptime_s)" if exptime_s else ")")
    table.meta.update(
        {
            "aperture_radii_pix": [float(r) for r in radii],
            "aperture_names": names,
            "ref_aperture": ref,
            "annulus_pix": [r_in, r_out],
            "fwhm_pix": None if fwhm_pix is None else float(fwhm_pix),
            "exptime_s": None if exptime_s is None else float(exptime_s),
            "flag_bits": {flag.name: int(flag) for flag in PhotFlag},
        }
    )
    return table


def load_compiled_kernels() -> None:
    """Compile the annulus kernels (:mod:`darkroom.phot._aperture_kernels`), or load them from
    numba's disk cache, now: measures one synthetic star with a MASK plane, as the photometry
    stage's frames are (float32 SCI, int32 MASK); the first photometry in a process otherwise
    pays numba's start-up there. Used after installing and by a fork server whose workers then
    inherit the loaded kernels."""
    yy, xx = np.mgrid[0:48, 0:48]
    sci = (100.0 + 1000.0 * np.exp(-((xx - 24.2) ** 2 + (yy - 23.7) ** 2) / 4.5)).astype(np.float32)
    aperture_photometry(sci, np.zeros(sci.shape, np.int32), None, [24.2], [23.7], fwhm_pix=2.5)
