"""Coadd images of one field and filter onto one grid.

Each input, in turn (only one is in memory at a time, plus ``n_workers - 1`` in flight):

1. **background**: its mesh background (:func:`darkroom.detect.estimate_background`) is
   subtracted (``background: match`` adds the weighted mean of the inputs' scaled sky
   levels back at the end, so the coadd looks like a deep exposure; ``subtract`` leaves
   it at zero; ``none`` keeps every frame's own sky);
2. **resample** onto the target grid (:mod:`darkroom.imaging.resample`, MASK and VAR
   carried);
3. **flux scale** ``s_i`` to the reference (first) input: ``exptime`` scales by
   ``t_ref / t_i``; ``stars`` by the stellar flux ratio to the reference frame measured
   on the resampled images (clouds, airmass; falls back to ``exptime`` with fewer than 3
   stars and says so); ``none`` keeps 1;
4. **weight** ``w_i``: ``ivar`` the inverse of the median background variance of the
   scaled frame, ``exptime`` its exposure time, ``equal`` 1.

The scaled planes go to a stack (in memory, or memory-mapped files in a temporary folder
when larger than ``memory_limit_mb``) and are combined by row blocks: per pixel the
inputs whose MASK has none of ``exclude_bits`` are **sigma-clipped** about their median
(``|x_i - med| > k sqrt(VAR_i + (ampfrac med)^2)``, the second term as SWarp's
CLIP_AMPFRAC so seeing differences do not clip star cores; no clipping with fewer than 3
inputs), then averaged with the weights (``mean``, ``VAR = sum(w^2 VAR_i) / sum(w)^2``)
or their median taken (``median``, VAR pi/2 times the mean's).

With the coadd comes a **half-difference** image (``CoaddResult.noise``): the even and the odd
inputs combined apart (same kept samples and weights), differenced and scaled to the coadd's
random noise. Sky, sources and anything common to all inputs cancel in it, among them
detector-fixed noise (the master dark's and bias's own noise, subtracted from every frame
alike, and fringes): its depth is the part of the coadd's depth that averages down with the
inputs; the coadd's own depth also holds the common part, which only the pointing drift
between the inputs spreads (:func:`darkroom.imaging.depth.detector_noise_in_coadd`).

Units: SCI is the weighted mean scaled to the **total** exposure time ``T = sum(t_i)``
(header EXPTIME), so ``SCI / EXPTIME`` is the count rate of the reference frame and
photometry with ``-2.5 log10(flux / EXPTIME)`` works as on a single frame. VAR, WEIGHT
(``sum w`` of the inputs kept per pixel, in units of the scaled frames' 1/adu^2), EXPMAP
(seconds of exposure kept per pixel) and NIMG (inputs kept) come with it; MASK has
``NO_DATA`` where no input was kept and ``SAT`` where any input was saturated.

Times: MJD (UTC); ``mjd_start``/``mjd_end`` the first start and last end of the inputs'
exposures, ``mjd_mid`` their exposure-weighted mean mid-time.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import bottleneck as bn
import numpy as np
from astropy.io import fits
from astropy.time import Time

from darkroom.detect import estimate_background
from darkroom.detect.background import BackgroundConfig
from darkroom.errors import BadInputError, SolveError
from darkroom.imaging.arith import reference_stars, stellar_flux_ratio
from darkroom.imaging.planes import ImagePlanes
from darkroom.imaging.resample import (
    TargetGrid,
    grid_covering,
    resample,
)
from darkroom.imaging.settings import CoaddConfig
from darkroom.maskbits import MaskBit

__all__ = ["CoaddConfig", "CoaddInputInfo", "CoaddResult", "coadd_grid", "coadd_images"]


@dataclass(frozen=True)
class CoaddInputInfo:
    """What one input contributed."""

    name: str
    scale: float  #: flux scale s_i applied
    scale_method: str  #: stars | exptime | none (stars -> exptime on failure)
    weight: float  #: w_i
    background_adu: float  #: global background subtracted (input unit)
    exptime_s: float | None
    mjd_mid: float | None
    n_pixels: int = 0  #: pixels of the coadd this input was kept in
    n_clipped: int = 0  #: of its good pixels, how many the clipping rejected
    note: str = ""


@dataclass
class CoaddResult:
    """The coadd planes, its grid, header cards and per-input figures."""

    sci: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    weight: np.ndarray
    exposure: np.ndarray  #: EXPMAP [s]
    nimg: np.ndarray
    grid: TargetGrid
    inputs: list[CoaddInputInfo]
    exptime_s: float | None  #: total exposure T [s]
    mjd_start: float | None
    mjd_end: float | None
    mjd_mid: float | None
    gain_e_per_adu: float | None
    header: fits.Header = field(default_factory=fits.Header)
    #: half-difference (jackknife) image, SCI's unit and scaling: the even and the odd inputs
    #: (in input order) combined apart with the same kept samples and weights, differenced and
    #: scaled by ``sqrt(W_even W_odd) / W`` so its variance is the coadd's random variance.
    #: The sky, the sources and anything fixed on the detector or the sky (master-frame noise,
    #: fringes) cancel: its depth is the coadd's random depth. NaN where a half has no input.
    noise: np.ndarray | None = None

    def to_hdus(self) -> fits.HDUList:
        """``[primary, SCI, MASK, VAR, WEIGHT, EXPMAP, NIMG]``."""
        from darkroom.imaging.planes import planes_to_hdus

        return planes_to_hdus(
            self.sci,
            self.var,
            self.mask,
            self.header,
            extra={"WEIGHT": self.weight, "EXPMAP": self.exposure, "NIMG": self.nimg.astype(np.float32)},
        )

    def planes(self, name: str = "coadd") -> ImagePlanes:
        return ImagePlanes(
            sci=self.sci,
            var=self.var,
            mask=self.mask,
            wcs=self.grid.wcs,
            header=self.header,
            name=name,
            exptime_s=self.exptime_s,
            mjd_mid=self.mjd_mid,
            gain_e_per_adu=self.gain_e_per_adu,
        )


def coadd_grid(images: Sequence[ImagePlanes], **kwargs) -> TargetGrid:
    """The common tangent-plane grid covering ``images`` (:func:`grid_covering`)."""
    missing = [im.name for im in images if im.wcs is None]
    if missing:
        raise BadInputError(f"no WCS: {', '.join(missing[:5])}")
    return grid_covering([(im.wcs, im.shape) for im in images], **kwargs)


class _Stack:
    """N planes of one grid, in memory or memory-mapped under a temporary folder."""

    def __init__(self, n: int, shape: tuple[int, int], limit_mb: float, workdir: Path | None) -> None:
        size_mb = n * shape[0] * shape[1] * (4 + 4 + 1) / 1e6
        self._tmp = None
        if size_mb <= limit_mb:
            self.sci = np.empty((n, *shape), np.float32)
            self.var = np.empty((n, *shape), np.float32)
            self.mask = np.empty((n, *shape), np.uint8)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="darkroom-coadd-", dir=workdir)
            root = Path(self._tmp.name)
            self.sci = np.lib.format.open_memmap(root / "sci.npy", "w+", np.float32, (n, *shape))
            self.var = np.lib.format.open_memmap(root / "var.npy", "w+", np.float32, (n, *shape))
            self.mask = np.lib.format.open_memmap(root / "mask.npy", "w+", np.uint8, (n, *shape))

    @property
    def on_disk(self) -> bool:
        return self._tmp is not None

    def close(self) -> None:
        if self._tmp is not None:
            del self.sci, self.var, self.mask
            self._tmp.cleanup()


def _frame_weight(var: np.ndarray, good: np.ndarray, how: str, exptime: float | None) -> float:
    if how == "equal":
        return 1.0
    if how == "exptime":
        if not exptime:
            raise BadInputError("weight 'exptime' needs EXPTIME on every input")
        return float(exptime)
    v = var[good]
    if v.size == 0:
        return 0.0
    med = float(np.median(v[:: max(1, v.size // 500_000)]))
    return 1.0 / med if med > 0 and math.isfinite(med) else 0.0


def _clip_block(
    x: np.ndarray, v: np.ndarray, valid: np.ndarray, cfg: CoaddConfig, sky: float = 0.0
) -> np.ndarray:
    """Kept samples of one block ``(n, rows, nx)`` after sigma clipping about the median.

    ``sky`` is the level still in ``x`` (background ``none``): the signal term is the median above it.
    """
    keep = valid.copy()
    n_valid = valid.sum(axis=0)
    if cfg.clip_sigma <= 0:
        return keep
    can = n_valid >= 3
    for _ in range(cfg.clip_iters):
        xs = np.where(keep, x, np.float32(np.nan))
        with np.errstate(all="ignore"):
            med = bn.nanmedian(xs, axis=0)  # NaN where nothing is left (no warning, unlike numpy)
            sig = np.sqrt(v + (cfg.clip_ampfrac * (med - sky)) ** 2)
            new = valid & (np.abs(x - med) <= cfg.clip_sigma * sig)
        new |= valid & ~can  # too few inputs to tell which one is wrong
        # never clip everything: keep the pixel's valid samples when all would go
        empty = (new.sum(axis=0) == 0) & (n_valid > 0)
        new |= valid & empty
        if np.array_equal(new, keep):
            break
        keep = new
    return keep


def coadd_images(
    images: Sequence[ImagePlanes | Callable[[], ImagePlanes]],
    target: TargetGrid,
    config: CoaddConfig | None = None,
    *,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CoaddResult:
    """Coadd ``images`` (planes, or loaders returning planes) onto ``target``.

    Inputs that cannot be used (no WCS, no overlap) are skipped with their reason in
    ``inputs[...].note`` and weight 0; :class:`BadInputError` when none is left.
    """
    cfg = config or CoaddConfig()
    n = len(images)
    if n == 0:
        raise BadInputError("nothing to coadd")
    stack = _Stack(n, target.shape, cfg.memory_limit_mb, workdir)
    infos: list[CoaddInputInfo] = []
    weights = np.zeros(n)
    sky_levels = np.zeros(n)
    exptimes: list[float | None] = []
    gains: list[float] = []
    have_reference = False  # the first usable input is the flux reference (only its stars are kept)
    ref_stars = None
    t_ref: float | None = None
    try:
        for i, item in enumerate(images):
            planes = item() if callable(item) else item
            name = planes.name or f"input{i}"
            try:
                bkg = estimate_background(
                    planes.sci, mask=planes.mask, config=BackgroundConfig(box_size_pix=cfg.background_box_pix)
                )
                sci = planes.sci
                if cfg.background != "none":
                    sci = (planes.sci - bkg.level_adu).astype(np.float32)
                res = resample(planes.with_planes(sci, planes.var, planes.mask), target, cfg.resample)
            except BadInputError as exc:
                infos.append(
                    CoaddInputInfo(
                        name,
                        0.0,
                        "none",
                        0.0,
                        float("nan"),
                        planes.exptime_s,
                        planes.mjd_mid,
                        note=exc.reason,
                    )
                )
                stack.mask[i] = MaskBit.NO_DATA
                exptimes.append(None)
                continue
            t_i = planes.exptime_s
            if t_ref is None and t_i:
                t_ref = t_i
            scale, method, note = 1.0, cfg.flux_scale, ""
            if cfg.flux_scale in ("exptime", "stars"):
                if t_i and t_ref:
                    scale = t_ref / t_i
                elif cfg.flux_scale == "exptime":
                    method, note = "none", "no EXPTIME: not scaled"
            resampled = planes.with_planes(res.sci, res.var, res.mask, wcs=target.wcs)
            if cfg.flux_scale == "stars":
                # the mesh background is off the inputs already (unless ``background: none``)
                sky_off = cfg.background != "none"
                if not have_reference:
                    have_reference = True
                    method = "stars"
                    try:  # the reference's good stars, summed on it once, measured on every later input
                        own = stellar_flux_ratio(
                            resampled, resampled, config=cfg.flux_ratio, sky_subtracted=sky_off
                        )
                        ref_stars = reference_stars(
                            resampled,
                            config=cfg.flux_ratio,
                            positions=(own.x, own.y),
                            radius_pix=own.radius_pix,
                            sky_subtracted=sky_off,
                        )
                    except (SolveError, BadInputError) as exc:
                        note = f"reference stars: {exc.reason}"
                else:
                    try:
                        if ref_stars is None:
                            raise SolveError("no stars on the reference input")
                        ratio = stellar_flux_ratio(
                            resampled, config=cfg.flux_ratio, reference=ref_stars, sky_subtracted=sky_off
                        )
                        scale = 1.0 / ratio.ratio
                        note = f"flux ratio {ratio.ratio:.4f} +- {ratio.err:.4f} from {ratio.n_stars} stars"
                    except (SolveError, BadInputError) as exc:
                        method, note = "exptime", f"stars: {exc.reason}; scaled by exposure time"
            good = (res.mask & cfg.exclude_bits) == 0
            s2 = np.float32(scale * scale)
            stack.sci[i] = res.sci * np.float32(scale)
            stack.var[i] = res.var * s2
            stack.mask[i] = (res.mask & 0xFF).astype(np.uint8)
            w = _frame_weight(stack.var[i], good, cfg.weight, t_i)
            weights[i] = w
            sky_levels[i] = bkg.global_level_adu * scale
            exptimes.append(t_i)
            if planes.gain_e_per_adu:
                gains.append(planes.gain_e_per_adu)
            infos.append(
                CoaddInputInfo(
                    name, float(scale), method, float(w), bkg.global_level_adu, t_i, planes.mjd_mid, note=note
                )
            )
            if progress:
                progress(name)
        if not np.any(weights > 0):
            raise BadInputError(
                "no input could be used: " + "; ".join(f"{i.name}: {i.note}" for i in infos[:3])
            )
        sky_in = float(np.sum(weights * sky_levels) / np.sum(weights)) if cfg.background == "none" else 0.0
        result = _combine(stack, weights, exptimes, target, cfg, sky_in)
    finally:
        stack.close()
    sci, var, mask, wsum, expmap, nimg, kept, clipped, half = result
    used = weights > 0
    # the sky level put back, and the scaling to the total exposure time
    t_known = [t for t, u in zip(exptimes, used, strict=True) if u and t]
    total = float(sum(t_known)) if len(t_known) == int(used.sum()) and t_ref else None
    factor = total / t_ref if total and t_ref else 1.0
    sky = (
        float(np.sum(weights[used] * sky_levels[used]) / np.sum(weights[used]))
        if cfg.background == "match"
        else 0.0
    )
    sci = (sci + np.float32(sky)) * np.float32(factor)
    var = var * np.float32(factor * factor)
    sci[(mask & MaskBit.NO_DATA) != 0] = np.nan
    half *= np.float32(factor)
    for k, info in enumerate(infos):
        infos[k] = CoaddInputInfo(**{**info.__dict__, "n_pixels": int(kept[k]), "n_clipped": int(clipped[k])})
    times = _time_span(infos)
    header = _header(
        target, infos, cfg, total, t_ref, times, float(np.median(gains)) if gains else None, sky * factor
    )
    return CoaddResult(
        sci=sci,
        var=var,
        mask=mask,
        weight=wsum,
        exposure=expmap,
        nimg=nimg,
        grid=target,
        inputs=infos,
        exptime_s=total,
        mjd_start=times[0],
        mjd_end=times[1],
        mjd_mid=times[2],
        gain_e_per_adu=float(np.median(gains)) if gains else None,
        header=header,
        noise=half,
    )


def _combine(
    stack: _Stack,
    weights: np.ndarray,
    exptimes: list[float | None],
    target: TargetGrid,
    cfg: CoaddConfig,
    sky: float,
):
    ny, nx = target.shape
    n = len(weights)
    sci = np.full((ny, nx), np.nan, np.float32)
    var = np.full((ny, nx), np.nan, np.float32)
    mask = np.zeros((ny, nx), np.int32)
    wsum_map = np.zeros((ny, nx), np.float32)
    expmap = np.zeros((ny, nx), np.float32)
    nimg = np.zeros((ny, nx), np.int16)
    kept_count = np.zeros(n, np.int64)
    clipped_count = np.zeros(n, np.int64)
    used = np.flatnonzero(weights > 0)
    w = weights[used].astype(np.float32)[:, None, None]
    half = np.full((ny, nx), np.nan, np.float32)
    t = np.array([exptimes[i] or 0.0 for i in used], np.float32)[:, None, None]
    excl = np.uint8(cfg.exclude_bits & 0xFF)
    for r0 in range(0, ny, cfg.block_rows):
        r1 = min(ny, r0 + cfg.block_rows)
        x = np.asarray(stack.sci[used, r0:r1])
        v = np.asarray(stack.var[used, r0:r1])
        m = np.asarray(stack.mask[used, r0:r1])
        valid = ((m & excl) == 0) & np.isfinite(x) & np.isfinite(v)
        keep = _clip_block(x, v, valid, cfg, sky)
        ws = np.where(keep, w, np.float32(0.0))
        sw = ws.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            wx = np.where(keep, x, np.float32(0.0)) * ws
            swx = wx.sum(axis=0)
            if cfg.combine == "mean":
                out = swx / sw
            else:
                out = bn.nanmedian(np.where(keep, x, np.float32(np.nan)), axis=0)
            vout = (ws * ws * np.where(keep, v, 0.0)).sum(axis=0) / (sw * sw)
            # half-difference: the even inputs' weighted mean minus the odd ones' (alternate
            # inputs, so both halves span the night and its drift on the detector)
            sw_a, sw_b = ws[0::2].sum(axis=0), ws[1::2].sum(axis=0)
            diff = wx[0::2].sum(axis=0) / sw_a - wx[1::2].sum(axis=0) / sw_b
            half[r0:r1] = np.where((sw_a > 0) & (sw_b > 0), diff * np.sqrt(sw_a * sw_b) / sw, np.nan)
        if cfg.combine == "median":
            vout = vout * np.float32(math.pi / 2.0)
        nk = keep.sum(axis=0)
        none = nk == 0
        sci[r0:r1] = np.where(none, np.nan, out)
        var[r0:r1] = np.where(none, np.nan, vout)
        bits = np.zeros(nk.shape, np.int32)
        bits |= np.where(none, np.int32(MaskBit.NO_DATA), 0)
        sat = np.any((m & np.uint8(MaskBit.SAT)) != 0, axis=0)
        bits |= np.where(sat, np.int32(MaskBit.SAT), 0)
        kept_bits = np.bitwise_or.reduce(np.where(keep, m, 0).astype(np.int32), axis=0)
        bits |= kept_bits & int(MaskBit.INTRP | MaskBit.EDGE)
        mask[r0:r1] = bits
        wsum_map[r0:r1] = sw
        expmap[r0:r1] = (np.where(keep, t, 0.0)).sum(axis=0)
        nimg[r0:r1] = nk
        kept_count[used] += keep.sum(axis=(1, 2))
        clipped_count[used] += (valid & ~keep).sum(axis=(1, 2))
    return sci, var, mask, wsum_map, expmap, nimg, kept_count, clipped_count, half


def _time_span(infos: list[CoaddInputInfo]) -> tuple[float | None, float | None, float | None]:
    rows = [(i.mjd_mid, i.exptime_s or 0.0) for i in infos if i.weight > 0 and i.mjd_mid is not None]
    if not rows:
        return None, None, None
    mids = np.array([r[0] for r in rows])
    ts = np.array([r[1] for r in rows])
    start = float(np.min(mids - ts / 2.0 / 86400.0))
    end = float(np.max(mids + ts / 2.0 / 86400.0))
    mid = float(np.average(mids, weights=ts)) if ts.sum() > 0 else float(np.mean(mids))
    return start, end, mid


def _iso(mjd: float) -> str:
    return Time(mjd, format="mjd", scale="utc").isot


def _header(
    target: TargetGrid,
    infos: list[CoaddInputInfo],
    cfg: CoaddConfig,
    total: float | None,
    t_ref: float | None,
    times: tuple[float | None, float | None, float | None],
    gain: float | None,
    sky: float,
) -> fits.Header:
    h = fits.Header()
    h.update(target.wcs.to_header(relax=True))
    used = [i for i in infos if i.weight > 0]
    h["NCOMBINE"] = (len(used), "number of images combined")
    if total is not None:
        h["EXPTIME"] = (total, "[s] total exposure time; SCI is scaled to it")
    if t_ref is not None:
        h["EXPREF"] = (t_ref, "[s] exposure time of the reference input")
    start, end, mid = times
    if start is not None:
        h["MJD-OBS"] = (start, "[d] MJD (UTC) start of the first exposure")
        h["MJD-END"] = (end, "[d] MJD (UTC) end of the last exposure")
        h["MJD-MID"] = (mid, "[d] MJD (UTC) exposure-weighted mean mid-time")
        h["DATE-OBS"] = (_iso(start), "UTC start of the first exposure")
        h["DATE-END"] = (_iso(end), "UTC end of the last exposure")
        h["DATE-MID"] = (_iso(mid), "UTC exposure-weighted mean mid-time")
        h["TSPAN"] = ((end - start) * 24.0, "[h] time span of the inputs")
    if gain is not None:
        h["GAIN"] = (gain, "[e/adu] median gain of the inputs")
    h["SKYLEVEL"] = (sky, "sky level put back into SCI")
    h["COADMETH"] = (cfg.combine, "combination of the inputs")
    h["COADWGT"] = (cfg.weight, "input weights")
    h["COADSCAL"] = (cfg.flux_scale, "flux scaling to the reference input")
    h["CLIPSIG"] = (cfg.clip_sigma, "[sigma] clip threshold (0: none)")
    h["RESAMPL"] = (cfg.resample.method, "resampling method")
    for k, info in enumerate(used, start=1):
        if k > 999:
            break
        h[f"IMCMB{k:03d}"] = (info.name[-68:], "input image")
    for info in infos:
        h.add_history(
            f"{info.name}: scale {info.scale:.5g} ({info.scale_method}) weight {info.weight:.4g} "
            f"kept {info.n_pixels} clipped {info.n_clipped} {info.note}"[:3000]
        )
    return h
