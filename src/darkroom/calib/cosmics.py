"""Cosmic-ray detection: L.A.Cosmic (van Dokkum 2001), evaluated only where it matters.

``engine="sparse"`` (default) reproduces astroscrappy's ``detect_cosmics`` with its
defaults (``sepmed=True``, ``fsmode="median"``, ``cleantype="meanmask"``) decision
for decision, but computes the expensive median filters only at the pixels that
can be cosmic rays:

1. The Laplacian term ``L+`` (the 2x-subsampled Laplacian clipped at zero and
   rebinned) is computed for the whole frame directly at the original
   resolution (four clipped differences per pixel). A lower bound of the noise
   (the 7x7 minimum of the variance image instead of its separable median)
   gives an upper bound of the detection statistic; only pixels whose bound
   exceeds ``sigclip`` (typically 1e-3 of the frame: star cores, cosmic rays)
   are candidates.
2. At the candidates the exact statistic ``s - sepmed7(s)``, the noise
   (``sepmed7`` of the variance) and the fine-structure image
   (``sepmed5`` - ``sepmed9(sepmed5)``) are computed on 13x13 patches, with
   astroscrappy's border conventions.
3. Growth into neighbouring pixels and the cleaning of flagged pixels (masked
   5x5 mean) follow astroscrappy; later iterations only revisit pixels within 6
   pixels of a pixel changed by the cleaning, since nothing else can change.

The hot steps (the candidate scan, the exact statistics, the cleaning means, the zones)
run as numba kernels (:mod:`darkroom.calib._cosmics_kernels`, compiled on first use and
cached on disk) that give the numpy methods' results bit for bit; the numpy methods are
the reference (``COMPILED = False`` runs them) and run for images that are not finite.

``engine="astroscrappy"`` calls astroscrappy itself. Input data are in adu and
include the sky; ``sky`` (adu) and ``variance`` (adu^2) are optional models of
the background and of the variance (see astroscrappy's ``inbkg`` / ``invar``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from darkroom.errors import BadInputError
from darkroom.robust import median

from .settings import CosmicRayConfig

__all__ = ["CosmicRayConfig", "CosmicRayResult", "detect_cosmic_rays"]

log = logging.getLogger(__name__)

_F32 = np.float32
_BATCH = 8192  # candidates evaluated together (bounds the patch memory to ~60 MB)
#: use the compiled kernels (darkroom.calib._cosmics_kernels, numba) for the sparse engine;
#: False keeps every step in numpy (the reference the kernels are tested against)
COMPILED = True


@dataclass(frozen=True)
class CosmicRayResult:
    """Cosmic-ray mask (True = hit), the cleaned image [adu] and counts."""

    mask: np.ndarray
    cleaned: np.ndarray | None
    n_pixels: int
    n_iterations: int
    n_candidates: int
    engine: str


def detect_cosmic_rays(
    data: np.ndarray,
    *,
    gain_e_per_adu: float,
    read_noise_e: float,
    sky: np.ndarray | None = None,
    variance: np.ndarray | None = None,
    bad_mask: np.ndarray | None = None,
    saturation_adu: float | None = None,
    config: CosmicRayConfig | None = None,
    return_cleaned: bool = False,
) -> CosmicRayResult:
    """Find cosmic rays in ``data`` (adu, sky included, shape (ny, nx)).

    Parameters
    ----------
    gain_e_per_adu, read_noise_e
        Detector gain [electron/adu] and read noise [electron].
    sky
        Background model [adu] subtracted before detection (astroscrappy ``inbkg``).
    variance
        Variance model [adu^2] used instead of the gain/read-noise model (``invar``).
    bad_mask
        True for pixels to ignore (bad pixels); they are never flagged.
    saturation_adu
        Saturation level [adu]; saturated stars are masked (default: none).
    return_cleaned
        Also return the image with the flagged pixels replaced (astroscrappy's
        masked 5x5 mean) [adu].
    """
    cfg = config or CosmicRayConfig()
    img = np.asarray(data)
    if img.ndim != 2:
        raise BadInputError(f"cosmic-ray detection needs a 2-D image, got shape {img.shape}")
    if not gain_e_per_adu or gain_e_per_adu <= 0:
        raise BadInputError(f"cosmic-ray detection needs a positive gain, got {gain_e_per_adu!r}")
    if read_noise_e is None or read_noise_e < 0:
        raise BadInputError(f"cosmic-ray detection needs a read noise >= 0, got {read_noise_e!r}")
    for name, arr in (("sky", sky), ("variance", variance), ("bad_mask", bad_mask)):
        if arr is not None and np.shape(arr) != img.shape:
            raise BadInputError(f"{name} has shape {np.shape(arr)}, the image {img.shape}")
    satlevel = np.inf if saturation_adu is None else float(saturation_adu) * gain_e_per_adu
    if cfg.engine == "astroscrappy":
        import astroscrappy

        m, cleaned = astroscrappy.detect_cosmics(
            img.astype(_F32),
            inmask=None if bad_mask is None else np.asarray(bad_mask, dtype=bool),
            inbkg=None if sky is None else np.asarray(sky, dtype=_F32),
            invar=None if variance is None else np.asarray(variance, dtype=_F32),
            sigclip=cfg.sigclip,
            sigfrac=cfg.sigfrac,
            objlim=cfg.objlim,
            gain=gain_e_per_adu,
            readnoise=read_noise_e,
            satlevel=satlevel if np.isfinite(satlevel) else 1e30,
            niter=cfg.niter,
            sepmed=True,
            cleantype="meanmask",
            fsmode="median",
        )
        return CosmicRayResult(
            mask=m,
            cleaned=cleaned if return_cleaned else None,
            n_pixels=int(m.sum()),
            n_iterations=cfg.niter,
            n_candidates=-1,
            engine="astroscrappy",
        )
    return _SparseLACosmic(
        img, gain_e_per_adu, read_noise_e, sky, variance, bad_mask, satlevel, cfg, compiled=COMPILED
    ).run(return_cleaned=return_cleaned)


# --------------------------------------------------------------------------- helpers

_S3 = np.ones((3, 3), dtype=bool)
_S5 = np.ones((5, 5), dtype=bool)
_S5[0, 0] = _S5[0, 4] = _S5[4, 0] = _S5[4, 4] = False
_BLOCK = 8  # block size of the noise lower bound (>= 2 * 3 + 1 would not be needed; any size works)
_SAFETY = _F32(1.0 - 1e-4)  # margin on the candidate bound against float32 rounding


def _dilate(mask: np.ndarray, half: int, structure: np.ndarray, iterations: int = 1) -> np.ndarray:
    """astroscrappy's dilation: a ``half``-pixel border ring is copied from the input."""
    # scipy loads when a frame is cleaned, not when `darkroom run` imports the stages
    from scipy import ndimage as ndi

    out = mask
    for _ in range(iterations):
        prev = out
        out = ndi.binary_dilation(prev, structure=structure)
        out[:half] = prev[:half]
        out[-half:] = prev[-half:]
        out[:, :half] = prev[:, :half]
        out[:, -half:] = prev[:, -half:]
    return out


def _median_last(a: np.ndarray) -> np.ndarray:
    return bn.median(a, axis=-1)


def _lplus_patch(c: np.ndarray) -> np.ndarray:
    """Exact ``L+`` (astroscrappy's rebinned clipped Laplacian of the 2x subsampled image).

    ``c`` holds (n, k+2, k+2) pixel values (zero outside the image); returns the
    (n, k, k) values for the inner pixels, with astroscrappy's float32 arithmetic
    order: per sub-pixel ``((((4v - right) - left) - up) - down)`` clipped at 0, then
    ``(p00 + p01 + p11 + p10) / 4``.
    """
    v = c[:, 1:-1, 1:-1]
    left = c[:, 1:-1, :-2]
    right = c[:, 1:-1, 2:]
    down = c[:, :-2, 1:-1]  # row - 1
    up = c[:, 2:, 1:-1]  # row + 1
    four = v * _F32(4.0)

    def sub(r, lft, u, d):
        q = four - r
        q -= lft
        q -= u
        q -= d
        np.maximum(q, _F32(0.0), out=q)
        return q

    out = sub(v, left, v, down)  # sub-pixel (0, 0)
    out += sub(v, left, up, v)  # (0, 1)
    out += sub(right, v, up, v)  # (1, 1)
    out += sub(right, v, v, down)  # (1, 0)
    out /= _F32(4.0)
    return out


def _block_min(a: np.ndarray, b: int) -> np.ndarray:
    """Minimum over ``b`` x ``b`` blocks (partial blocks at the far edges included)."""
    ny, nx = a.shape
    nby, nbx = -(-ny // b), -(-nx // b)
    if ny % b or nx % b:
        a = np.pad(a, ((0, nby * b - ny), (0, nbx * b - nx)), mode="edge")
    # rows first (a reduction over a middle axis with a long contiguous inner one), then the
    # columns as b strided minima: numpy reduces a short inner axis ~25x slower than this
    rows = a.reshape(nby, b, nbx * b).min(axis=1)
    out = rows[:, 0::b].copy()
    for k in range(1, b):
        np.minimum(out, rows[:, k::b], out=out)
    return out


def _flat(idx: np.ndarray) -> np.ndarray:
    """Flat pixel indices as the kernels take them (int64, contiguous)."""
    return np.ascontiguousarray(idx, dtype=np.int64)


def _sorted_isin(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted ``sorted_set``."""
    if sorted_set.size == 0:
        return np.zeros(values.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[pos] == values


class _Cache:
    """Values known at some pixels of an image (flat indices), kept as sorted indices and their
    values: a few thousand pixels, whereas frame-sized arrays written at scattered pixels
    would fault in most of their pages (~2.5 ms a 1k x 1k frame for the two caches)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self._keys = np.zeros(0, dtype=np.intp)
        self._vals = np.zeros(0, dtype=_F32)

    def _find(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, known) of the flat indices ``idx`` among the keys."""
        idx = np.asarray(idx, dtype=np.intp)
        pos = np.searchsorted(self._keys, idx)
        found = pos < self._keys.size
        found[found] = self._keys[pos[found]] == idx[found]
        return pos, found

    def known(self, idx: np.ndarray) -> np.ndarray:
        return self._find(idx)[1]

    def get(self, idx: np.ndarray) -> np.ndarray:
        """The values at ``idx`` (every one of them known)."""
        pos, found = self._find(idx)
        if not found.all():
            raise KeyError("value asked for at a pixel not known")
        return self._vals[pos]

    def set(self, idx: np.ndarray, values: np.ndarray) -> None:
        """Know ``values`` at the distinct flat indices ``idx`` (replacing what was known there)."""
        idx = np.asarray(idx, dtype=np.intp)
        vals = np.asarray(values).astype(_F32, copy=False)
        if self._keys.size:
            pos, found = self._find(idx)
            self._vals[pos[found]] = vals[found]
            idx, vals = idx[~found], vals[~found]
        keys = np.concatenate([self._keys, idx])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._vals = np.concatenate([self._vals, vals])[order]

    def forget(self, idx: np.ndarray) -> None:
        pos, found = self._find(idx)
        if found.any():
            keep = np.ones(self._keys.size, dtype=bool)
            keep[pos[found]] = False
            self._keys, self._vals = self._keys[keep], self._vals[keep]


class _SparseLACosmic:
    """State of one sparse L.A.Cosmic run (arrays in electrons, float32).

    ``clean_in`` (data - sky), ``var_in`` and ``bkg_in`` are the (ny, nx) images in
    electrons; patches are gathered with clipped indices (astroscrappy's
    conventions make the clipped values irrelevant, except for the Laplacian,
    which reads zeros outside the image). Pixel sets are flat indices.

    With ``compiled`` the hot steps run as numba kernels (:mod:`._cosmics_kernels`) that
    compute what the numpy methods compute, bit for bit; the numpy methods are the
    reference, and run when ``compiled`` is False or an image is not finite.
    """

    def __init__(
        self, img, gain, rn, sky, var, bad, satlevel, cfg: CosmicRayConfig, *, compiled: bool = False
    ) -> None:
        self.cfg = cfg
        self.gain = float(gain)
        ny, nx = img.shape
        self.ny, self.nx = ny, nx
        # patch offsets (flat, in the padded frame) for radius 6, 4 (L+ input) and 3
        self._o = {r: np.arange(-r, r + 1) for r in (1, 2, 3, 4, 6)}
        self._bg_level: float | None = None
        self._bg_var_level: float | None = None
        self.sigclow = _F32(cfg.sigfrac * cfg.sigclip)
        self._k = None  # the kernels module when compiled and the images are finite
        self._block_mins: tuple[np.ndarray, np.ndarray] | None = None
        if compiled:
            from . import _cosmics_kernels as kernels

            if kernels.BLOCK != _BLOCK:  # pragma: no cover - a constant of both modules
                raise AssertionError("cosmics._BLOCK and the kernels' BLOCK differ")
            if self._init_compiled(kernels, img, gain, sky, var, bad, satlevel):
                return
        self._init_numpy(img, gain, rn, sky, var, bad, satlevel)
        if compiled and all(
            kernels.all_finite(a) for a in (self.clean_in, self.var_in, self.bkg_in) if a is not None
        ):
            self._k = kernels

    def _init_compiled(self, kernels, img, gain, sky, var, bad, satlevel) -> bool:
        """The images in electrons by one kernel pass (with a sky and a variance model, float32
        C-ordered, no saturation level); False when the numpy set-up must run instead."""
        arrays = (img, sky, var)
        if np.isfinite(satlevel) or not all(
            type(a) is np.ndarray and a.dtype == _F32 and a.flags.c_contiguous and a.shape == img.shape
            for a in arrays
        ):
            return False
        # each product typed as numpy promotes it (a Python float with float32: float32)
        g = np.result_type(img, gain).type(gain)
        g_sky = np.result_type(sky, gain).type(gain)
        gg = gain * gain
        g_var = np.result_type(var, gg).type(gg)
        if not all(np.dtype(type(x)) in (np.float32, np.float64) for x in (g, g_sky, g_var)):
            return False
        clean, var_e, bkg = (np.empty(img.shape, dtype=_F32) for _ in range(3))
        vmin, bkgmin = (
            np.empty((-(-self.ny // _BLOCK), -(-self.nx // _BLOCK)), dtype=_F32) for _ in range(2)
        )
        if not kernels.electrons(img, g, sky, g_sky, var, g_var, clean, var_e, bkg, vmin, bkgmin):
            return False
        self.clean_in, self.var_in, self.bkg_in = clean, var_e, bkg
        self._block_mins = (vmin, bkgmin)  # of the images as set up: _candidates_full's
        mask = np.zeros(img.shape, dtype=bool) if bad is None else np.asarray(bad, dtype=bool)
        self.mask = self._update_mask(mask, satlevel)
        self._k = kernels
        return True

    def _init_numpy(self, img, gain, rn, sky, var, bad, satlevel) -> None:
        self.clean_in = np.asarray(img * gain, dtype=_F32)
        if self.clean_in is img:
            self.clean_in = self.clean_in.copy()
        bkg_in = None if sky is None else np.asarray(np.asarray(sky) * gain, dtype=_F32)
        if var is not None:
            var_in = np.asarray(np.asarray(var) * (gain * gain), dtype=_F32)
            if bkg_in is not None:
                var_in -= bkg_in
        elif bkg_in is not None:
            var_in = self.clean_in - bkg_in
            var_in += _F32(rn * rn)
        else:
            var_in = self.clean_in + _F32(rn * rn)
        self.var_in = var_in
        self.bkg_in = bkg_in
        mask = np.zeros(img.shape, dtype=bool) if bad is None else np.asarray(bad, dtype=bool)
        self.mask = self._update_mask(mask, satlevel)
        if bkg_in is not None:
            self.clean_in -= bkg_in

    @property
    def _bkg(self) -> np.ndarray:
        """The sky in electrons for the kernels: a (0, 0) array without a sky model."""
        return self.bkg_in if self.bkg_in is not None else np.zeros((0, 0), dtype=_F32)

    # ---------------------------------------------------------------- utilities
    def _patch(self, arr: np.ndarray, flat: np.ndarray, r: int, *, zero_outside: bool = False) -> np.ndarray:
        """(n, 2r+1, 2r+1) values of ``arr`` around the pixels ``flat``.

        Indices are clipped to the image; with ``zero_outside`` the positions outside
        it read 0 (astroscrappy's Laplacian padding).
        """
        j, i = np.divmod(flat, self.nx)
        o = self._o[r]
        jj = j[:, None] + o
        ii = i[:, None] + o
        idx = np.clip(jj, 0, self.ny - 1)[:, :, None] * self.nx + np.clip(ii, 0, self.nx - 1)[:, None, :]
        vals = arr.ravel().take(idx)
        if zero_outside:
            inside = ((jj >= 0) & (jj < self.ny))[:, :, None] & ((ii >= 0) & (ii < self.nx))[:, None, :]
            vals = np.where(inside, vals, _F32(0.0))
        return vals

    def _inner(self, flat: np.ndarray, h: int) -> np.ndarray:
        j, i = np.divmod(flat, self.nx)
        return (j >= h) & (j < self.ny - h) & (i >= h) & (i < self.nx - h)

    # ---------------------------------------------------------------- astroscrappy's update_mask
    def _update_mask(self, mask: np.ndarray, satlevel: float) -> np.ndarray:
        grow = _dilate(mask, 1, _S3) if mask.any() else mask.copy()
        if not np.isfinite(satlevel):
            return grow
        sat_idx = np.flatnonzero(self.clean_in >= _F32(satlevel))
        if sat_idx.size:
            inner = self._inner(sat_idx, 3)
            m5 = self.clean_in.ravel()[sat_idx].copy()
            if inner.any():
                patch = self._patch(self.clean_in, sat_idx[inner], 3)
                m5[inner] = _median_last(_median_last(patch))
            keep = sat_idx[m5 > _F32(satlevel / 10.0)]
            sat = np.zeros(mask.shape, dtype=bool)
            sat.ravel()[keep] = True
            if keep.size:
                sat = _dilate(sat, 2, _S5, iterations=2)
            grow = grow | sat
        return grow

    # ---------------------------------------------------------------- candidate bound
    def _block_noise_floor(self) -> np.ndarray:
        """Per pixel-block lower bound of ``sepmed7(var) + bkg`` over every 7x7 window touching the block."""
        self._vmin = _block_min(self.var_in, _BLOCK)
        if self.bkg_in is not None:
            self._bkgmin = _block_min(self.bkg_in, _BLOCK)
        return self._floor_from_blocks()

    def _floor_from_blocks(self) -> np.ndarray:
        bmin = self._vmin if self.bkg_in is None else self._vmin + self._bkgmin
        from scipy import ndimage as ndi

        # a 7x7 window around a pixel lies within its block and the 8 neighbouring blocks
        return ndi.minimum_filter(bmin, size=3, mode="nearest")

    def _block_noise_floor_update(self, changed: np.ndarray) -> np.ndarray:
        """Lower the block minima where the cleaning changed the variance (a lower bound stays one)."""
        j, i = np.divmod(changed, self.nx)
        np.minimum.at(self._vmin, (j // _BLOCK, i // _BLOCK), self.var_in.ravel()[changed])
        if self._k is not None:
            floor, self._thr = self._compiled_thresholds()
            return floor
        return self._floor_from_blocks()

    def _compiled_thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        """(floor, block thresholds) from the block minima (kernel of _floor_from_blocks and
        _block_thresholds)."""
        bkgmin = self._bkgmin if self.bkg_in is not None else np.zeros((0, 0), dtype=_F32)
        return self._k.block_thresholds(self._vmin, bkgmin, _F32(2.0 * self.cfg.sigclip), _SAFETY)

    def _block_thresholds(self, floor: np.ndarray) -> np.ndarray:
        """The candidate threshold of each pixel block: 2 sigclip sqrt(floor), less the margin."""
        return _F32(2.0 * self.cfg.sigclip) * np.sqrt(np.maximum(floor, _F32(1e-5))) * _SAFETY

    def _candidates_full(self) -> np.ndarray:
        """Flat indices of the pixels whose L+ upper bound exceeds 2 sigclip times the noise floor."""
        if self._k is not None:
            k = self._k
            if self._block_mins is not None:  # made with the images (unchanged since)
                (self._vmin, self._bkgmin), self._block_mins = self._block_mins, None
            else:
                self._vmin = k.block_min(self.var_in)
                if self.bkg_in is not None:
                    self._bkgmin = k.block_min(self.bkg_in)
            _, self._thr = self._compiled_thresholds()
            return k.candidates_full(
                self.clean_in, self.var_in, self._bkg, self._thr, self.mask, _F32(self.cfg.sigclip)
            )
        floor = self._block_noise_floor()
        thr_b = self._block_thresholds(floor)
        out = []
        chunk = 16 * _BLOCK  # rows at a time (whole blocks)
        ny, nx = self.ny, self.nx
        nbx = thr_b.shape[1]
        c = np.zeros((chunk + 2, nx + 2), dtype=_F32)  # one row/column of zeros around (Laplacian padding)
        # the chunk's work arrays, reused: no page of new memory per chunk
        ub_buf = np.empty((chunk, nx), dtype=_F32)
        t_buf = np.empty((chunk, nx), dtype=_F32)
        hit_buf = np.empty((chunk, nx), dtype=bool)
        for r0 in range(0, ny, chunk):
            r1 = min(ny, r0 + chunk)
            k = r1 - r0
            c[1 : k + 1, 1:-1] = self.clean_in[r0:r1]
            c[0, 1:-1] = self.clean_in[r0 - 1] if r0 > 0 else 0
            c[k + 1, 1:-1] = self.clean_in[r1] if r1 < ny else 0
            cc = c[: k + 2]
            v = cc[1:-1, 1:-1]
            # ub = ((v + v) - min(left, right)) - min(down, up), in float32 as before
            ub, t, hit = ub_buf[:k], t_buf[:k], hit_buf[:k]
            np.add(v, v, out=ub)
            np.minimum(cc[1:-1, :-2], cc[1:-1, 2:], out=t)
            ub -= t
            np.minimum(cc[:-2, 1:-1], cc[2:, 1:-1], out=t)
            ub -= t
            b0 = r0 // _BLOCK
            if k % _BLOCK == 0 and nx % _BLOCK == 0:  # each block's threshold broadcast over its pixels
                np.greater(
                    ub.reshape(k // _BLOCK, _BLOCK, nbx, _BLOCK),
                    thr_b[b0 : b0 + k // _BLOCK, None, :, None],
                    out=hit.reshape(k // _BLOCK, _BLOCK, nbx, _BLOCK),
                )
            else:
                rows = thr_b[np.arange(r0, r1) // _BLOCK]
                np.greater(ub, np.repeat(rows, _BLOCK, axis=1)[:, :nx], out=hit)
            out.append(np.flatnonzero(hit) + r0 * self.nx)  # hit is rows r0..r1 of the frame
        idx = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        return self._filter_candidates(idx, floor)

    def _candidates_zone(self, zone: np.ndarray, floor: np.ndarray) -> np.ndarray:
        """Candidate test restricted to the flat indices ``zone``."""
        if self._k is not None:
            return self._k.candidates_at(
                zone, self.clean_in, self.var_in, self._bkg, self._thr, self.mask, _F32(self.cfg.sigclip)
            )
        c = self.clean_in
        j, i = np.divmod(zone, self.nx)
        v = c[j, i]
        zero = _F32(0.0)
        left = np.where(i > 0, c[j, np.maximum(i - 1, 0)], zero)
        right = np.where(i < self.nx - 1, c[j, np.minimum(i + 1, self.nx - 1)], zero)
        down = np.where(j > 0, c[np.maximum(j - 1, 0), i], zero)
        up = np.where(j < self.ny - 1, c[np.minimum(j + 1, self.ny - 1), i], zero)
        th = np.minimum(left, right)
        tv = np.minimum(down, up)
        ub = v + v - th - tv
        thr = _F32(2.0 * self.cfg.sigclip) * np.sqrt(np.maximum(floor[j // _BLOCK, i // _BLOCK], _F32(1e-5)))
        return self._filter_candidates(zone[ub > thr * _SAFETY], floor)

    def _filter_candidates(self, idx: np.ndarray, floor: np.ndarray) -> np.ndarray:
        good = ~self.mask.ravel()[idx]
        idx = idx[good & self._inner(idx, 3)]  # sp == 0 within 3 pixels of the border
        # sp = s - sepmed7(s) <= s (s >= 0): the exact s at the pixel is a cheap, tighter bound
        return idx[self._exact_s(idx) > _F32(self.cfg.sigclip)]

    # ---------------------------------------------------------------- exact statistics
    def _noise7(self, flat: np.ndarray) -> np.ndarray:
        """astroscrappy's noise (sqrt of sepmed7(var) + bkg, floored) at offsets -3..3: (n, 7, 7)."""
        cv = self._patch(self.var_in, flat, 6)
        rowmed = _median_last(sliding_window_view(cv, 7, axis=2))  # (n, 13, 7)
        sep = _median_last(sliding_window_view(rowmed, 7, axis=1))  # (n, 7, 7)
        j, i = np.divmod(flat, self.nx)
        o = np.arange(-3, 4)
        y = (j[:, None] + o)[:, :, None]
        x = (i[:, None] + o)[:, None, :]
        border = (y < 3) | (y >= self.ny - 3) | (x < 3) | (x >= self.nx - 3)
        m5 = np.where(border, cv[:, 3:10, 3:10], sep).astype(_F32)
        if self.bkg_in is not None:
            m5 += self._patch(self.bkg_in, flat, 3)
        np.maximum(m5, _F32(1e-5), out=m5)
        return np.sqrt(m5)

    def _exact_s(self, flat: np.ndarray) -> np.ndarray:
        """astroscrappy's s = L+ / (2 noise) at the pixels themselves (an upper bound of sp)."""
        if self._k is not None:
            return self._k.exact_s(_flat(flat), self.clean_in, self.var_in, self._bkg)
        out = np.empty(flat.size, dtype=_F32)
        for b0 in range(0, flat.size, _BATCH):
            f = flat[b0 : b0 + _BATCH]
            cv = self._patch(self.var_in, f, 3)  # (n, 7, 7)
            sep = _median_last(_median_last(cv))
            j, i = np.divmod(f, self.nx)
            border = (j < 3) | (j >= self.ny - 3) | (i < 3) | (i >= self.nx - 3)
            m5 = np.where(border, cv[:, 3, 3], sep).astype(_F32)
            if self.bkg_in is not None:
                m5 += self.bkg_in.ravel()[f]
            np.maximum(m5, _F32(1e-5), out=m5)
            lp = _lplus_patch(self._patch(self.clean_in, f, 1))[:, 0, 0]
            out[b0 : b0 + _BATCH] = lp / (_F32(2.0) * np.sqrt(m5))
        return out

    def _exact_sp(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sp, noise at the pixel) for pixels at least 3 from the border."""
        if self._k is not None:
            return self._k.exact_sp(_flat(flat), self.clean_in, self.var_in, self._bkg)
        n = flat.size
        sp = np.empty(n, dtype=_F32)
        nc = np.empty(n, dtype=_F32)
        for b0 in range(0, n, _BATCH):
            f = flat[b0 : b0 + _BATCH]
            noise = self._noise7(f)
            lp = _lplus_patch(self._patch(self.clean_in, f, 4, zero_outside=True))  # (n, 7, 7)
            s = lp / (_F32(2.0) * noise)
            sp[b0 : b0 + _BATCH] = s[:, 3, 3] - _median_last(_median_last(s))
            nc[b0 : b0 + _BATCH] = noise[:, 3, 3]
        return sp, nc

    def _exact_f(self, flat: np.ndarray, noise_c: np.ndarray) -> np.ndarray:
        """astroscrappy's fine-structure ratio denominator f at the pixels."""
        if self._k is not None:
            return self._k.exact_f(_flat(flat), np.ascontiguousarray(noise_c, dtype=_F32), self.clean_in)
        n = flat.size
        out = np.empty(n, dtype=_F32)
        o = np.arange(-4, 5)
        for b0 in range(0, n, _BATCH):
            fl = flat[b0 : b0 + _BATCH]
            cl = self._patch(self.clean_in, fl, 6)
            rowmed = _median_last(sliding_window_view(cl, 5, axis=2))  # (n, 13, 9)
            f5 = _median_last(sliding_window_view(rowmed, 5, axis=1))  # (n, 9, 9)
            j, i = np.divmod(fl, self.nx)
            y = (j[:, None] + o)[:, :, None]
            x = (i[:, None] + o)[:, None, :]
            b2 = (y < 2) | (y >= self.ny - 2) | (x < 2) | (x >= self.nx - 2)
            f5 = np.where(b2, cl[:, 2:11, 2:11], f5).astype(_F32)
            f5c = f5[:, 4, 4]
            m7 = _median_last(_median_last(f5))
            b4 = (j < 4) | (j >= self.ny - 4) | (i < 4) | (i >= self.nx - 4)
            m7 = np.where(b4, f5c, m7).astype(_F32)
            f = (f5c - m7) / noise_c[b0 : b0 + _BATCH]
            f[f < _F32(0.01)] = _F32(0.01)
            out[b0 : b0 + _BATCH] = f
        return out

    # ---------------------------------------------------------------- growth and cleaning
    def _neighbours(self, seeds: np.ndarray) -> np.ndarray:
        """astroscrappy's dilate3 of a pixel set, as flat indices (border ring not dilated)."""
        j, i = np.divmod(seeds, self.nx)
        ring = (j == 0) | (j == self.ny - 1) | (i == 0) | (i == self.nx - 1)
        out = [seeds[ring]]
        jj, ii = j[~ring], i[~ring]
        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                j2, i2 = jj + dj, ii + di
                # a dilated pixel on the ring keeps its input value (False here: not a seed)
                ok = (j2 > 0) & (j2 < self.ny - 1) & (i2 > 0) & (i2 < self.nx - 1)
                out.append(j2[ok] * self.nx + i2[ok])
        return np.unique(np.concatenate(out))

    def _grow(
        self, seeds: np.ndarray, sp_cache: np.ndarray, s_cache: np.ndarray, limit: np.float32
    ) -> np.ndarray:
        """dilate3(seeds) & good & (sp > limit); sp is computed only where s > limit (sp <= s)."""
        if seeds.size == 0:
            return seeds
        nb = self._neighbours(seeds)
        nb = nb[~self.mask.ravel()[nb] & self._inner(nb, 3)]
        unknown = nb[~sp_cache.known(nb)]
        if unknown.size:
            no_s = unknown[~s_cache.known(unknown)]
            if no_s.size:
                s_cache.set(no_s, self._exact_s(no_s))
            rest = unknown[s_cache.get(unknown) > limit]
            if rest.size:
                sp_cache.set(rest, self._exact_sp(rest)[0])
        has = sp_cache.known(nb)
        keep = np.zeros(nb.size, dtype=bool)
        keep[has] = sp_cache.get(nb[has]) > limit
        return nb[keep]

    def _clean(self, cr_idx: np.ndarray, crmask: np.ndarray) -> np.ndarray:
        """Masked 5x5 mean of the unflagged neighbours into the flagged pixels; flat indices changed."""
        idx = cr_idx[self._inner(cr_idx, 2)]
        if idx.size == 0:
            return idx
        if self._k is not None:
            return self._clean_compiled(_flat(idx), crmask)
        j, i = np.divmod(idx, self.nx)
        o = np.arange(-2, 3)
        R = (j[:, None] + o)[:, :, None]
        C = (i[:, None] + o)[:, None, :]
        usable = ~(crmask[R, C] | self.mask[R, C])
        cnt = usable.sum(axis=(1, 2)).astype(_F32)
        changed = np.zeros(idx.size, dtype=bool)
        for arr, which in ((self.clean_in, "data"), (self.var_in, "var")):
            vals = self._patch(arr, idx, 2)
            s = np.zeros(idx.size, dtype=_F32)
            for a in range(5):  # float32 sum in astroscrappy's order: rows, then columns
                for b in range(5):
                    s += np.where(usable[:, a, b], vals[:, a, b], _F32(0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                new = (s / cnt).astype(_F32)
            if np.any(cnt == 0):
                new[cnt == 0] = self._background(which)
            flat_a = arr.ravel()
            changed |= new != flat_a[idx]
            flat_a[idx] = new
        return idx[changed]

    def _clean_compiled(self, idx: np.ndarray, crmask: np.ndarray) -> np.ndarray:
        """_clean's means from the kernel (every value read before any is written, as there)."""
        new_d, new_v, cnt = self._k.clean_means(idx, self.clean_in, self.var_in, crmask, self.mask)
        changed = np.zeros(idx.size, dtype=bool)
        for arr, which, new in ((self.clean_in, "data", new_d), (self.var_in, "var", new_v)):
            if np.any(cnt == 0):
                new[cnt == 0] = self._background(which)
            flat_a = arr.ravel()
            changed |= new != flat_a[idx]
            flat_a[idx] = new
        return idx[changed]

    def _background(self, which: str) -> np.float32:
        good = ~self.mask
        if which == "data":
            if self._bg_level is None:
                self._bg_level = _F32(median(self.clean_in, middle=bn.median, where=good))
            return self._bg_level
        if self._bg_var_level is None:
            self._bg_var_level = _F32(median(self.var_in, middle=bn.median, where=good))
        return self._bg_var_level

    def _zone(self, changed: np.ndarray) -> np.ndarray:
        """Pixels within 6 (Chebyshev) of a changed pixel: the only ones whose statistics change."""
        if self._k is not None:
            return self._k.zone(_flat(changed), np.zeros((self.ny, self.nx), dtype=bool))
        marks = np.zeros((self.ny, self.nx), dtype=bool)
        d = np.arange(-6, 7)
        for b0 in range(0, changed.size, _BATCH):  # 169 marks per pixel: bounded memory
            j, i = np.divmod(changed[b0 : b0 + _BATCH], self.nx)
            # indices clipped at the border land on pixels within 6 of the changed one anyway
            rows = np.clip(j[:, None] + d, 0, self.ny - 1)[:, :, None]
            cols = np.clip(i[:, None] + d, 0, self.nx - 1)[:, None, :]
            marks[rows, cols] = True
        return np.flatnonzero(marks)

    # ---------------------------------------------------------------- driver
    def run(self, *, return_cleaned: bool) -> CosmicRayResult:
        cfg = self.cfg
        shape = (self.ny, self.nx)
        crmask = np.zeros(shape, dtype=bool)
        # the primary and flagged pixels as sorted flat indices too (a few hundred): no scan of
        # the whole frame for them in every iteration
        primary = np.zeros(0, dtype=np.intp)
        flagged = np.zeros(0, dtype=np.intp)
        sp_cache = _Cache(shape)
        s_cache = _Cache(shape)
        zone = None
        changed = np.zeros(0, dtype=np.int64)
        n_iter = 0
        n_cand = 0
        for _ in range(cfg.niter):
            n_iter += 1
            if zone is None:
                cand = self._candidates_full()
            else:
                primary = primary[~_sorted_isin(primary, zone)]
                sp_cache.forget(zone)
                s_cache.forget(zone)
                floor = self._block_noise_floor_update(changed)
                cand = self._candidates_zone(zone, floor)
            n_cand += cand.size
            if cand.size:
                sp, noise_c = self._exact_sp(cand)
                sp_cache.set(cand, sp)
                above = sp > _F32(cfg.sigclip)
                if above.any():
                    f = self._exact_f(cand[above], noise_c[above])
                    hit = cand[above][(sp[above] / f) > _F32(cfg.objlim)]
                    primary = np.union1d(primary, hit)
            g1 = self._grow(primary, sp_cache, s_cache, _F32(cfg.sigclip))
            cosmics = self._grow(g1, sp_cache, s_cache, self.sigclow)
            if cosmics.size == 0:
                break
            crmask.ravel()[cosmics] = True
            flagged = np.union1d(flagged, cosmics)
            changed = self._clean(flagged, crmask)
            if n_iter == cfg.niter or changed.size == 0:
                break  # unchanged images would give this iteration's result again
            zone = self._zone(changed)
        cleaned = None
        if return_cleaned:
            cleaned = self.clean_in + self.bkg_in if self.bkg_in is not None else self.clean_in.copy()
            cleaned /= _F32(self.gain)
        n_pixels = int(np.count_nonzero(crmask))
        log.debug("sparse L.A.Cosmic: %d pixels, %d iterations, %d candidates", n_pixels, n_iter, n_cand)
        return CosmicRayResult(
            mask=crmask,
            cleaned=cleaned,
            n_pixels=n_pixels,
            n_iterations=n_iter,
            n_candidates=int(n_cand),
            engine="sparse",
        )


def load_compiled_kernels() -> None:
    """Compile the sparse engine's numba kernels, or load them from numba's disk cache, now.

    Runs :func:`detect_cosmic_rays` on a small synthetic frame (float32 image, sky and variance
    models, and a few hits) so that every kernel of a frame's detection is made ready: the
    first call in a process otherwise pays numba's start-up there (~0.3 s; ~8 s the first
    time after installing, when the kernels are compiled and cached). Used after installing
    and by a fork server whose workers then inherit the loaded kernels.
    """
    rng = np.random.default_rng(0)
    sky = np.full((64, 64), 100.0, dtype=_F32)
    img = (sky + rng.normal(0.0, 10.0, sky.shape)).astype(_F32)
    img[10, 12] += 2000.0
    img[40, 30:32] += 1500.0
    variance = np.full(sky.shape, 100.0, dtype=_F32)
    detect_cosmic_rays(img, gain_e_per_adu=1.0, read_noise_e=10.0, sky=sky, variance=variance)
