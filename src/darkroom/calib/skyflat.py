"""A night-sky flat: the pixel response measured on the blank sky of the lights themselves.

When a night has no flat frames but the field moved between exposures (dithered, or a
telescope that drifts), every detector pixel saw blank sky in most frames, and the sky
is a flat illumination. Per frame: the sources are masked (pixels ``threshold_sigma``
above the frame's smooth sky, or whose 3 x 3 mean is, grown by ``dilate_pix``), the
frame is divided by its smooth sky (block medians of ``box_pix`` over the unmasked
pixels), and per pixel the mean of that ratio over the frames where it is unmasked is
the response. Frames are streamed (one at a time in memory).

What the flat holds: the pixel-to-pixel response, on scales below ``box_pix`` (dividing
by each frame's smooth sky removes the large scales). The large-scale pattern seen on
the sky of lights is a mix of vignetting and sky gradients that lights alone cannot
split; it is left to the light curve's illumination fit from the stars.

The zero level. The response multiplies what the sky adds above the zero level (bias,
pedestal). With the zero level subtracted (a master bias, an overscan) the mean ratio is
the response. Without it, a frame holds ``P_i + f_i S`` (pedestal ``P`` per pixel, sky
``S``) and the mean ratio is ``1 + a (f_i - 1)`` plus the pedestal's structure divided
by the level, with ``a = S / (P + S)`` unknown. The pedestal's structure (a bias
pattern: column and row offsets, gradients) is removed with the column and row profiles
of the flat, and ``a`` is measured from the sky's change during the night: per pixel,
the slope of the pixel's value against its frame's sky level is ``f_i`` with no
pedestal in it (noisy, but unbiased; the frame's median sky level is the regressor,
the smooth shape is divided out afterwards), and ``a`` is the ratio of the mean ratio's
pixel-to-pixel covariance with that slope to the slope's (noise-corrected) signal, on
all pixels at once. When the sky did not change enough to measure ``a`` (the two
halves of the rows disagree) no flat is made, and the reason says so.

Safe on a static field: a pixel unmasked in fewer than ``min_samples`` frames gets the
smooth value 1, and when the field moved less than ``min_motion_pix`` (the 90th
percentile of the frames' distances from their median position, measured by
cross-correlating the source masks) no flat is made at all, since the wings of stars
that sit on the same pixels would otherwise be taken for response.

Units: frames in adu (any consistent unit); the flat is dimensionless, median 1;
its variance in the same unit squared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from darkroom.errors import BadInputError

from ._stats import robust_std
from .badpix import smooth_level
from .settings import SkyFlatConfig

__all__ = ["SkyFlat", "SkyFlatAccumulator", "SkyFlatConfig", "make_sky_flat", "source_mask"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkyFlat:
    """A sky flat and how it was made.

    Attributes
    ----------
    flat, variance : float32 (ny, nx) | None
        The response (median 1; 1 where a pixel had too few samples or is a hot pixel)
        and its variance [1]. None when no flat was made (``reason`` says why).
    n_frames : int
        Lights accumulated.
    samples_median : float
        Median over pixels of the frames in which a pixel was blank sky.
    filled_fraction, outlier_fraction : float
        Pixels given the smooth value 1 for too few samples, and as hot pixels.
    motion_pix : float
        90th percentile of the frames' distances from their median position [pixel].
    sky_variation : float
        Relative spread (std / mean) of the frames' sky levels [1].
    response_scale : float | None
        ``a``: the fraction of the level that the response multiplies (1 with the zero
        level known; measured with it unknown).
    zero_level : str
        'known' (frames had the zero level subtracted) or 'unknown'.
    noise : float | None
        Median per-pixel standard deviation of the flat [1].
    reason : str | None
        Why no flat was made (None when it was).
    """

    flat: np.ndarray | None
    variance: np.ndarray | None
    n_frames: int
    samples_median: float
    filled_fraction: float
    outlier_fraction: float
    motion_pix: float
    sky_variation: float
    response_scale: float | None
    zero_level: str
    noise: float | None
    reason: str | None = None

    @property
    def made(self) -> bool:
        return self.flat is not None

    def describe(self) -> str:
        """One line: what was made from what, or why not."""
        if not self.made:
            return f"no sky flat from {self.n_frames} lights: {self.reason}"
        return (
            f"sky flat from {self.n_frames} lights ({self.samples_median:.0f} blank-sky samples per pixel, "
            f"noise {100 * (self.noise or 0):.2f} %, field moved {self.motion_pix:.0f} px, zero level "
            f"{self.zero_level}, response scale {self.response_scale:.3f})"
        )


def source_mask(
    frame: np.ndarray, usable: np.ndarray, *, config: SkyFlatConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(grown source mask, ungrown source mask) of one frame [bool (ny, nx)].

    A pixel is a source when it stands ``threshold_sigma`` sky sigmas above the frame's
    smooth sky, or its 3 x 3 mean does (faint extended wings); the mask is then grown by
    ``dilate_pix``. ``usable`` marks the pixels to use (finite, not saturated or bad).
    """
    from scipy import ndimage as ndi  # loaded when a sky flat is made, not at start-up

    cfg = config or SkyFlatConfig()
    sky = smooth_level(np.where(usable, frame, np.nan), box_pix=cfg.box_pix)
    resid = np.where(usable, frame - sky, 0.0).astype(np.float32)
    sample = resid[::4, ::4][usable[::4, ::4]]
    sigma = robust_std(sample) if sample.size else 0.0
    if not sigma > 0:
        raise BadInputError("a light with no sky noise: no source mask")
    hot = resid > cfg.threshold_sigma * sigma
    hot |= ndi.uniform_filter(resid, size=3) > cfg.threshold_sigma * sigma / 3.0
    # a square grown mask: a separable maximum filter, ~10x faster than a disc's binary dilation
    grown = ndi.maximum_filter(hot, size=2 * cfg.dilate_pix + 1) if cfg.dilate_pix else hot
    return grown, hot


_BLOCK = 4  # the source masks are cross-correlated in blocks of 4 x 4 pixels: motion to ~4 px


def _blocks(mask: np.ndarray) -> np.ndarray:
    ny, nx = (d // _BLOCK * _BLOCK for d in mask.shape)
    m = mask[:ny, :nx].reshape(ny // _BLOCK, _BLOCK, nx // _BLOCK, _BLOCK)
    return m.sum(axis=(1, 3), dtype=np.float32)


def _shift(ref_fft: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(dy, dx) [pixel] of ``mask`` relative to the mask whose block FFT is ``ref_fft`` (circular
    cross-correlation peak)."""
    b = _blocks(mask)
    cc = np.fft.irfft2(np.fft.rfft2(b) * np.conj(ref_fft), s=b.shape)
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
    ny, nx = b.shape
    return float(iy if iy <= ny // 2 else iy - ny) * _BLOCK, float(ix if ix <= nx // 2 else ix - nx) * _BLOCK


class SkyFlatAccumulator:
    """Accumulates lights one at a time (:meth:`add`), then :meth:`result` makes the flat.

    ``zero_known``: the frames had their zero level (bias, overscan) subtracted.
    """

    def __init__(self, shape: tuple[int, int], *, zero_known: bool, config: SkyFlatConfig | None = None):
        self.cfg = config or SkyFlatConfig()
        self.shape = (int(shape[0]), int(shape[1]))
        self.zero_known = bool(zero_known)
        z = np.zeros(self.shape, dtype=np.float64)
        # sums per parity of the frame's index (even, odd): two independent halves of the night
        self._n = [np.zeros(self.shape, dtype=np.int32) for _ in range(2)]
        self._sr = [z.copy() for _ in range(2)]
        self._sr2 = [z.copy() for _ in range(2)]
        # the slope of each pixel against its frame's smooth sky (zero level unknown)
        self._sb = self._sb2 = self._sy = self._syb = None
        if not self.zero_known:
            self._sb, self._sb2, self._sy, self._syb = ([z.copy() for _ in range(2)] for _ in range(4))
        self._ref_fft: np.ndarray | None = None
        self._shifts: list[tuple[float, float]] = []
        self._levels: list[float] = []

    @property
    def n_frames(self) -> int:
        return len(self._levels)

    def add(self, frame: np.ndarray, bad: np.ndarray | None = None) -> None:
        """Add one light [adu] (``bad``: pixels not to use, e.g. saturated)."""
        y = np.asarray(frame, dtype=np.float32)
        if y.shape != self.shape:
            raise BadInputError(f"sky flat: a light of shape {y.shape} among lights of {self.shape}")
        usable = np.isfinite(y)
        if bad is not None:
            usable &= ~np.asarray(bad, dtype=bool)
        grown, sources = source_mask(y, usable, config=self.cfg)
        use = usable & ~grown
        sky = smooth_level(np.where(use, y, np.nan), box_pix=self.cfg.box_pix).astype(np.float64)
        if not np.all(sky > 0):
            log.warning("sky flat: a light whose sky is not above zero everywhere is left out")
            return
        yd = np.where(use, y, 0.0).astype(np.float64)
        r = yd / sky
        h = self.n_frames % 2
        self._n[h] += use
        self._sr[h] += r
        self._sr2[h] += r * r
        level = float(np.median(sky[::8, ::8]))
        if self._sb is not None:
            # against the frame's one sky level, not the local smooth sky: the block medians move
            # with the faint stars drifting through them, which would dilute the slopes
            b = np.where(use, level, 0.0)
            self._sb[h] += b
            self._sb2[h] += b * b
            self._sy[h] += yd
            self._syb[h] += yd * b
        if self._ref_fft is None:
            self._ref_fft = np.fft.rfft2(_blocks(sources))
            self._shifts.append((0.0, 0.0))
        else:
            self._shifts.append(_shift(self._ref_fft, sources))
        self._levels.append(level)

    def _motion(self) -> float:
        if len(self._shifts) < 2:
            return 0.0
        s = np.asarray(self._shifts)
        d = np.hypot(*(s - np.median(s, axis=0)).T)
        return float(np.percentile(d, 90))

    def result(self) -> SkyFlat:
        """The flat (or the reason there is none)."""
        cfg = self.cfg
        n_frames = self.n_frames
        levels = np.asarray(self._levels) if self._levels else np.zeros(1)
        variation = float(np.std(levels) / np.mean(levels)) if np.mean(levels) > 0 else 0.0
        motion = self._motion()
        n = self._n[0] + self._n[1]
        enough = n >= max(cfg.min_samples, 2)

        def refuse(reason: str, **kw) -> SkyFlat:
            return SkyFlat(
                flat=None,
                variance=None,
                n_frames=n_frames,
                samples_median=float(np.median(n)),
                filled_fraction=float(1.0 - enough.mean()),
                outlier_fraction=0.0,
                motion_pix=motion,
                sky_variation=variation,
                response_scale=kw.get("a"),
                zero_level="known" if self.zero_known else "unknown",
                noise=None,
                reason=reason,
            )

        if n_frames < cfg.min_frames:
            return refuse(f"{n_frames} lights, fewer than {cfg.min_frames}")
        if motion < cfg.min_motion_pix:
            return refuse(
                f"the field moved {motion:.1f} px (less than {cfg.min_motion_pix:g}): stars sit on the "
                "same pixels, whose wings would be taken for response"
            )
        if enough.mean() < 0.25:
            return refuse(f"only {100 * enough.mean():.0f} % of the pixels were blank sky in enough lights")
        nn = np.maximum(n, 1).astype(np.float64)
        mean = (self._sr[0] + self._sr[1]) / nn
        var_mean = np.maximum((self._sr2[0] + self._sr2[1]) / nn - mean * mean, 0.0) / np.maximum(
            nn - 1.0, 1.0
        )
        m = _high_pass(mean, enough, box_pix=cfg.box_pix, profiles=not self.zero_known)
        a = 1.0
        if not self.zero_known:
            # each half's mean ratio and slope: their noises are independent of the other half's
            ok = enough & (self._n[0] >= 2) & (self._n[1] >= 2)
            ms, slopes = [], []
            for h in range(2):
                nh = np.maximum(self._n[h], 1).astype(np.float64)
                ms.append(_high_pass(self._sr[h] / nh, ok, box_pix=cfg.box_pix, profiles=True))
                sxx = self._sb2[h] - self._sb[h] * self._sb[h] / nh
                sxy = self._syb[h] - self._sy[h] * self._sb[h] / nh
                good = ok & (sxx > 0)
                slope = np.where(good, sxy / np.where(good, sxx, 1.0), 1.0)
                slopes.append(_high_pass(slope, good, box_pix=cfg.box_pix, profiles=True))
                ok = good
            halves = [
                _response_scale(ms, slopes, ok, rows) for rows in (slice(0, None, 2), slice(1, None, 2))
            ]
            a = _response_scale(ms, slopes, ok, slice(None))
            if not all(np.isfinite(halves)) or not np.isfinite(a) or not 0.02 < a <= 1.5:
                return refuse(
                    f"the zero level is unknown and the sky changed by {100 * variation:.1f} % over the "
                    f"lights, too little to measure the response scale (got {a:.3g})",
                    a=a,
                )
            if abs(halves[0] - halves[1]) > cfg.max_zero_disagreement * a:
                return refuse(
                    f"the zero level is unknown and the sky changed by {100 * variation:.1f} % over the "
                    f"lights: the response scale is not measured (halves {halves[0]:.3g}, {halves[1]:.3g})",
                    a=a,
                )
        flat = 1.0 + (m - 1.0) / a
        var = var_mean / (a * a)
        spread = robust_std((flat[enough] - 1.0)[:: max(1, int(enough.sum()) // 500_000)])
        # hot pixels add charge (dark current) that lights cannot tell from response: only high ones
        outliers = enough & (flat - 1.0 > cfg.outlier_sigma * max(spread, 1e-6))
        fill = ~enough | outliers
        flat[fill] = 1.0
        var[fill] = 0.0
        norm = float(np.median(flat))
        flat /= norm
        var /= norm * norm
        noise = float(np.median(np.sqrt(var[~fill]))) if (~fill).any() else None
        return SkyFlat(
            flat=flat.astype(np.float32),
            variance=var.astype(np.float32),
            n_frames=n_frames,
            samples_median=float(np.median(n)),
            filled_fraction=float((~enough).mean()),
            outlier_fraction=float(outliers.mean()),
            motion_pix=motion,
            sky_variation=variation,
            response_scale=float(a),
            zero_level="known" if self.zero_known else "unknown",
            noise=noise,
        )


def _high_pass(image: np.ndarray, good: np.ndarray, *, box_pix: int, profiles: bool) -> np.ndarray:
    """``image`` divided by its smooth level over the ``good`` pixels; with ``profiles``, its
    column and row profiles (a bias pattern's structure, not a response) removed too."""
    smooth = smooth_level(np.where(good, image, np.nan), box_pix=box_pix).astype(np.float64)
    out = np.where(good, image / smooth, 1.0)
    if profiles:
        d = np.where(good, out - 1.0, np.nan)
        col = np.nanmedian(d, axis=0)
        d = d - np.nan_to_num(col)[None, :]
        row = np.nanmedian(d, axis=1)
        d = d - np.nan_to_num(row)[:, None]
        out = np.where(good, 1.0 + d, 1.0)
    return out


def _response_scale(ms: list[np.ndarray], slopes: list[np.ndarray], good: np.ndarray, rows: slice) -> float:
    """``a`` in ``m - 1 = a (f - 1)``, from two independent halves of the frames: the covariance of
    the halves' mean ratios (``a^2 var f``) over that of one half's mean ratio with the other's
    slope (an unbiased, noisy ``f``: ``a var f``); independent noises leave both unbiased."""
    g = good[rows]
    m0, m1 = (m[rows][g] - 1.0 for m in ms)
    s0, s1 = (s[rows][g] - 1.0 for s in slopes)
    if m0.size < 100:
        return float("nan")
    # hot pixels and wild slopes are not the response's spread
    keep = np.ones(m0.size, dtype=bool)
    for v in (m0, m1, s0, s1):
        keep &= np.abs(v - np.median(v)) < 5 * max(robust_std(v), 1e-12)
    m0, m1, s0, s1 = (v[keep] - v[keep].mean() for v in (m0, m1, s0, s1))
    num = float(np.mean(m0 * m1))
    den = 0.5 * float(np.mean(m0 * s1) + np.mean(m1 * s0))
    if not num > 0 or not den > 0:
        return float("nan")
    return num / den


def make_sky_flat(
    frames: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray | None]],
    *,
    zero_known: bool,
    config: SkyFlatConfig | None = None,
) -> SkyFlat:
    """A sky flat from lights (arrays, or ``(array, bad_mask)`` pairs), streamed one at a time."""
    acc: SkyFlatAccumulator | None = None
    for item in frames:
        data, bad = item if isinstance(item, tuple) else (item, None)
        if acc is None:
            acc = SkyFlatAccumulator(np.shape(data), zero_known=zero_known, config=config)
        acc.add(data, bad)
    if acc is None:
        raise BadInputError("a sky flat needs lights; none given")
    return acc.result()
