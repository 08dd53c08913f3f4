"""Master bias, dark and flat frames, and the comparison of a master with its predecessor.

All functions take the (overscan-corrected, trimmed) raw frames of one group as
arrays or row-sliceable objects (see :mod:`darkroom.calib.combine`) and return a
:class:`MasterFrame`. Units: bias and dark in adu (the dark is bias-subtracted and
holds the dark signal of one exposure of ``exptime_s``), flat dimensionless with
median 1. Variances are in the square of those units.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError, CalibrationError, MissingCalibrationError

from ._stats import MAD_TO_SIGMA, clipped_mean_std, frame_median, robust_std
from .combine import combine_frames
from .settings import MasterComparisonConfig, MasterConfig

__all__ = [
    "MasterComparison",
    "MasterComparisonConfig",
    "MasterConfig",
    "MasterFrame",
    "MasterKind",
    "compare_masters",
    "make_master_bias",
    "make_master_dark",
    "make_master_flat",
    "master_from_hdus",
    "master_to_hdus",
]

log = logging.getLogger(__name__)

MasterKind = Literal["bias", "dark", "flat"]


@dataclass(frozen=True)
class MasterFrame:
    """A master calibration frame and its figures.

    Attributes
    ----------
    kind : 'bias' | 'dark' | 'flat'
    data, variance : float32 (ny, nx)
        The master [adu, or 1 for flats] and its per-pixel variance.
    n_inputs : int
        Frames combined.
    rejected_fraction : float
        Fraction of input values rejected by the clipping.
    mean, noise : float
        Clipped mean and robust spatial std (MAD) of ``data``.
    exptime_s : float | None
        Exposure time of the inputs (darks: the time the dark signal refers to).
    filter : str | None
        Filter of a flat.
    name : str
        The master's file name, set by whoever stores it; written into the
        BIASCORR/DARKCORR/FLATCORR cards of calibrated frames.
    read_noise_adu : float | None
        Read noise measured on the input biases (bias masters).
    gain_e_per_adu : float | None
        Gain measured on two input flats with the read noise of the bias (flats).
    level_adu : float | None
        Median level of the input flats before normalisation [adu].
    includes_bias : bool
        A dark made without a master bias: it still holds the bias level and can
        only be subtracted unscaled, from frames of the same exposure time.
    """

    kind: MasterKind
    data: np.ndarray
    variance: np.ndarray
    n_inputs: int
    rejected_fraction: float
    mean: float
    noise: float
    exptime_s: float | None = None
    filter: str | None = None
    name: str = ""
    read_noise_adu: float | None = None
    gain_e_per_adu: float | None = None
    level_adu: float | None = None
    includes_bias: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    def with_name(self, name: str) -> MasterFrame:
        """The same master carrying its file name."""
        return replace(self, name=str(name))


def _summary(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise CalibrationError("master has no finite pixel")
    step = max(1, finite.size // 2_000_000)
    sample = finite[::step]
    mean, _, _ = clipped_mean_std(sample, n_sigma=4.0)
    return mean, robust_std(sample)


def _check_count(frames: Sequence, kind: str, cfg: MasterConfig) -> None:
    if len(frames) < cfg.min_frames:
        raise MissingCalibrationError(
            f"master {kind} needs at least {cfg.min_frames} frames, got {len(frames)}",
            kind=kind,
            n_frames=len(frames),
        )


def _central(shape: tuple[int, int], frac: float = 0.5) -> tuple[slice, slice]:
    ny, nx = shape
    dy, dx = int(ny * (1 - frac) / 2), int(nx * (1 - frac) / 2)
    return slice(dy, ny - dy), slice(dx, nx - dx)


def make_master_bias(frames: Sequence[np.ndarray], *, config: MasterConfig | None = None) -> MasterFrame:
    """Combine bias frames [adu] into a master bias [adu].

    The read noise is measured on the differences of consecutive input frames (up
    to four pairs, central half of the frame): ``robust_std(b_i - b_j) / sqrt(2)``.
    """
    cfg = config or MasterConfig()
    _check_count(frames, "bias", cfg)
    res = combine_frames(frames, config=cfg.bias)
    rn = _read_noise_from_pairs(frames)
    mean, noise = _summary(res.data)
    return MasterFrame(
        kind="bias",
        data=res.data,
        variance=res.variance,
        n_inputs=res.n_inputs,
        rejected_fraction=res.rejected_fraction,
        mean=mean,
        noise=noise,
        exptime_s=0.0,
        read_noise_adu=rn,
    )


def _read_noise_from_pairs(frames: Sequence[np.ndarray]) -> float | None:
    if len(frames) < 2:
        return None
    region = _central(tuple(frames[0].shape))
    vals = []
    for i in range(min(4, len(frames) - 1)):
        a = np.asarray(frames[i][region], dtype=np.float64)
        b = np.asarray(frames[i + 1][region], dtype=np.float64)
        _, s, _ = clipped_mean_std(a - b, n_sigma=5.0)
        vals.append(s / np.sqrt(2))
    return float(np.median(vals))


def make_master_dark(
    frames: Sequence[np.ndarray],
    *,
    exptime_s: float | Sequence[float],
    bias: MasterFrame | None,
    config: MasterConfig | None = None,
) -> MasterFrame:
    """Combine dark frames [adu] into a bias-subtracted master dark of ``exptime_s``.

    ``exptime_s`` is one number or one per frame; they must agree within
    ``config.dark_exptime_tolerance_s`` (the dark signal is combined as measured,
    not rescaled). Without ``bias`` the master keeps the bias level
    (``includes_bias=True``). The variance is that of the mean of the dark frames
    only: the master bias subtracted from them cancels against the bias subtracted
    from a science frame, so :func:`~darkroom.calib.process.calibrate_frame` adds
    ``(1 - k)^2 var_bias + k^2 var_dark`` for a dark scaled by ``k``.
    """
    cfg = config or MasterConfig()
    _check_count(frames, "dark", cfg)
    times = np.atleast_1d(np.asarray(exptime_s, dtype=np.float64))
    if times.size == 1:
        times = np.repeat(times, len(frames))
    if times.size != len(frames):
        raise BadInputError(f"make_master_dark got {times.size} exposure times for {len(frames)} frames")
    if np.ptp(times) > cfg.dark_exptime_tolerance_s:
        raise CalibrationError(
            f"dark exposure times span {times.min():g}-{times.max():g} s, more than "
            f"{cfg.dark_exptime_tolerance_s:g} s; group darks by exposure time"
        )
    if bias is not None and bias.shape != tuple(frames[0].shape):
        raise CalibrationError(f"master bias {bias.shape} and darks {tuple(frames[0].shape)} differ in shape")
    res = combine_frames(frames, config=cfg.dark, subtract=None if bias is None else bias.data)
    var = res.variance  # the dark frames' own scatter; the master bias's variance is not included
    mean, noise = _summary(res.data)
    return MasterFrame(
        kind="dark",
        data=res.data,
        variance=var.astype(np.float32),
        n_inputs=res.n_inputs,
        rejected_fraction=res.rejected_fraction,
        mean=mean,
        noise=noise,
        exptime_s=float(np.median(times)),
        includes_bias=bias is None,
    )


def make_master_flat(
    frames: Sequence[np.ndarray],
    *,
    bias: MasterFrame | None,
    dark: MasterFrame | None = None,
    exptime_s: float | Sequence[float] | None = None,
    filter: str | None = None,
    config: MasterConfig | None = None,
) -> MasterFrame:
    """Combine flats into a master flat normalised to median 1.

    Each flat is bias-subtracted, dark-subtracted (the master dark scaled by
    ``exptime_s / dark.exptime_s``; needs ``exptime_s``), divided by its own
    median, and the stack is combined; the result is normalised by its median
    again. Pixels below ``config.flat_min_level`` are NaN. When the master bias
    carries a read noise and there are two flats or more, the gain is measured on
    the two flats closest in level (``gain_e_per_adu``).
    """
    cfg = config or MasterConfig()
    _check_count(frames, "flat", cfg)
    n = len(frames)
    shape = tuple(frames[0].shape)
    for m, what in ((bias, "bias"), (dark, "dark")):
        if m is not None and m.shape != shape:
            raise CalibrationError(f"master {what} {m.shape} and flats {shape} differ in shape")
    if dark is not None and dark.includes_bias:
        raise CalibrationError("master dark still includes the bias; flats need a bias-subtracted dark")
    times = None
    if exptime_s is not None:
        times = np.atleast_1d(np.asarray(exptime_s, dtype=np.float64))
        if times.size == 1:
            times = np.repeat(times, n)
        if times.size != n:
            raise BadInputError(f"make_master_flat got {times.size} exposure times for {n} frames")
    subtract: list[np.ndarray | None] = []
    sub_var: list[np.ndarray | None] = []
    cache: dict[float, tuple[np.ndarray | None, np.ndarray | None]] = {}  # one array per dark scale
    for i in range(n):
        k = 0.0
        if dark is not None:
            if times is None or not dark.exptime_s:
                raise BadInputError("dark correction of flats needs the flats' and the dark's exposure times")
            k = float(times[i] / dark.exptime_s)
        if k not in cache:
            s = None if bias is None else bias.data
            v = None if bias is None else bias.variance * np.float32((1 - k) ** 2)
            if dark is not None:
                s = dark.data * np.float32(k) if s is None else s + dark.data * np.float32(k)
                dv = dark.variance * np.float32(k * k)
                v = dv if v is None else v + dv
            cache[k] = (s, v)
        subtract.append(cache[k][0])
        sub_var.append(cache[k][1])
    levels = []
    for i, f in enumerate(frames):
        sub = subtract[i]
        step = max(1, int(np.ceil(np.sqrt(np.prod(shape) / 1_000_000))))
        a = np.asarray(f[::step], dtype=np.float32)[:, ::step]
        if sub is not None:
            a = a - sub[::step, ::step]
        levels.append(frame_median(a))
    levels_arr = np.asarray(levels)
    if np.any(~np.isfinite(levels_arr)) or np.any(levels_arr <= 0):
        raise BadInputError(
            f"flat levels after bias/dark correction must be positive, got {levels_arr.round(2)}"
        )
    res = combine_frames(
        frames,
        config=cfg.flat,
        subtract=subtract if any(s is not None for s in subtract) else None,
        scales=levels,
    )
    norm = frame_median(res.data)
    data = res.data / np.float32(norm)
    var = res.variance / np.float32(norm**2)
    # the bias/dark noise enters every normalised flat coherently: add it once, scaled by the mean level
    extra = [v for v in sub_var if v is not None]
    if extra:
        mean_level = float(np.mean(levels_arr)) * norm
        var = var + extra[len(extra) // 2] / np.float32(mean_level**2)
    low = ~(data >= cfg.flat_min_level)
    data[low] = np.nan
    var[low] = np.nan
    mean, noise = _summary(data)
    gain = None
    if bias is not None and bias.read_noise_adu and n >= 2:
        from .noise import gain_from_flat_pair

        order = np.argsort(levels_arr)
        pairs = list(itertools.pairwise(order))
        i, j = min(pairs, key=lambda p: abs(levels_arr[p[0]] / levels_arr[p[1]] - 1))
        region = _central(shape)
        fi = np.asarray(frames[i][region], dtype=np.float64) - (
            0 if subtract[i] is None else subtract[i][region]
        )
        fj = np.asarray(frames[j][region], dtype=np.float64) - (
            0 if subtract[j] is None else subtract[j][region]
        )
        try:
            gain = gain_from_flat_pair(fi, fj, read_noise_adu=bias.read_noise_adu)
        except CalibrationError as err:
            log.warning("no gain from the flats: %s", err.reason)
    return MasterFrame(
        kind="flat",
        data=data.astype(np.float32),
        variance=var.astype(np.float32),
        n_inputs=res.n_inputs,
        rejected_fraction=res.rejected_fraction,
        mean=mean,
        noise=noise,
        exptime_s=None if times is None else float(np.median(times)),
        filter=filter,
        gain_e_per_adu=gain,
        level_adu=float(np.median(levels_arr)),
    )


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class MasterComparison:
    """How a new master compares with the previous one of the same group.

    ``mean_shift`` is new - previous mean (master units); ``noise_ratio`` the
    ratio of robust noises; ``changed_fraction`` the fraction of pixels differing
    by more than ``pixel_n_sigma``; ``residual_scatter`` the robust std of the
    difference over its expected sigma (1 when only noise differs). ``flagged``
    is true when any threshold is exceeded; ``reasons`` say which.
    """

    mean_shift: float
    noise_ratio: float
    changed_fraction: float
    residual_scatter: float
    flagged: bool
    reasons: tuple[str, ...]


def compare_masters(
    new: MasterFrame, previous: MasterFrame, *, config: MasterComparisonConfig | None = None
) -> MasterComparison:
    """Compare a master with the previous master of its group; flag large changes."""
    cfg = config or MasterComparisonConfig()
    if new.kind != previous.kind:
        raise BadInputError(f"cannot compare a master {new.kind} with a master {previous.kind}")
    if new.shape != previous.shape:
        raise CalibrationError(f"master shapes differ: {new.shape} and {previous.shape}")
    a = new.data.astype(np.float64)
    b = previous.data.astype(np.float64)
    if new.kind == "dark" and new.exptime_s and previous.exptime_s and new.exptime_s != previous.exptime_s:
        b = b * (new.exptime_s / previous.exptime_s)
    diff = a - b
    sig = np.sqrt(new.variance.astype(np.float64) + previous.variance.astype(np.float64))
    ok = np.isfinite(diff) & np.isfinite(sig) & (sig > 0)
    if not np.any(ok):
        raise CalibrationError("the two masters have no finite pixel in common")
    d = diff[ok]
    z = (d - np.median(d)) / sig[ok]
    changed = float(np.mean(np.abs(z) > cfg.pixel_n_sigma))
    scatter = float(MAD_TO_SIGMA * np.median(np.abs(z - np.median(z))))
    shift = float(new.mean - previous.mean)
    noise_ref = max(new.noise, previous.noise, np.finfo(float).tiny)
    ratio = float(max(new.noise, 1e-300) / max(previous.noise, 1e-300))
    reasons = []
    if abs(shift) > cfg.max_mean_shift_noise * noise_ref:
        reasons.append(
            f"mean level changed by {shift:+.4g} (more than {cfg.max_mean_shift_noise:g} x noise {noise_ref:.4g})"
        )
    if ratio > cfg.max_noise_ratio or ratio < 1 / cfg.max_noise_ratio:
        reasons.append(f"noise changed by a factor {ratio:.3g} (limit {cfg.max_noise_ratio:g})")
    if changed > cfg.max_changed_fraction:
        reasons.append(
            f"{100 * changed:.3g}% of pixels changed by more than {cfg.pixel_n_sigma:g} sigma "
            f"(limit {100 * cfg.max_changed_fraction:.3g}%)"
        )
    if scatter > cfg.max_residual_scatter:
        reasons.append(
            f"difference scatter is {scatter:.3g} x its expected sigma (limit {cfg.max_residual_scatter:g})"
        )
    return MasterComparison(
        mean_shift=shift,
        noise_ratio=ratio,
        changed_fraction=changed,
        residual_scatter=scatter,
        flagged=bool(reasons),
        reasons=tuple(reasons),
    )


# ---------------------------------------------------------------- FITS round trip (no file access)

_CARDS = (
    ("MASTTYPE", "kind", "master type: bias, dark or flat"),
    ("NCOMBINE", "n_inputs", "number of frames combined"),
    ("REJFRAC", "rejected_fraction", "fraction of input values rejected"),
    ("MASTMEAN", "mean", "clipped mean of the master"),
    ("MASTNOIS", "noise", "robust spatial std of the master"),
    ("EXPTIME", "exptime_s", "[s] exposure time of the inputs"),
    ("FILTER", "filter", "filter of the flats"),
    ("RDNOISEA", "read_noise_adu", "[adu] read noise measured on the biases"),
    ("GAINMEAS", "gain_e_per_adu", "[electron/adu] gain measured on two flats"),
    ("FLATLEVL", "level_adu", "[adu] median level of the input flats"),
    ("INCLBIAS", "includes_bias", "dark still holds the bias level"),
)


def master_to_hdus(master: MasterFrame, *, header: fits.Header | None = None) -> fits.HDUList:
    """FITS HDUs of a master: primary (SCI, float32) with the figures as cards, and VAR."""
    h = fits.Header() if header is None else header.copy()
    for key, attr, comment in _CARDS:
        val = getattr(master, attr)
        if val is not None:
            h[key] = (val if not isinstance(val, np.generic) else val.item(), comment)
    h["EXTNAME"] = "SCI"
    prim = fits.PrimaryHDU(data=master.data.astype(np.float32), header=h)
    var = fits.ImageHDU(data=master.variance.astype(np.float32), name="VAR")
    return fits.HDUList([prim, var])


def master_from_hdus(hdul: fits.HDUList, *, name: str = "") -> MasterFrame:
    """Inverse of :func:`master_to_hdus` (``name`` is the file name to carry)."""
    h = hdul[0].header
    if "MASTTYPE" not in h:
        raise BadInputError("not a darkroom master: no MASTTYPE card")
    kw = {attr: h[key] for key, attr, _ in _CARDS if key in h}
    data = np.asarray(hdul[0].data, dtype=np.float32)
    var = np.asarray(hdul["VAR"].data, dtype=np.float32)
    return MasterFrame(
        kind=kw.pop("kind"),
        data=data,
        variance=var,
        n_inputs=int(kw.pop("n_inputs")),
        rejected_fraction=float(kw.pop("rejected_fraction")),
        mean=float(kw.pop("mean")),
        noise=float(kw.pop("noise")),
        name=name,
        **kw,
    )
