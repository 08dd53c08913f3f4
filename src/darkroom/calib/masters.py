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

import bottleneck as bn
import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError, CalibrationError, MissingCalibrationError

from ._stats import MAD_TO_SIGMA, clipped_mean_std, frame_median, robust_std
from .badpix import smooth_level
from .combine import combine_frames
from .settings import DarkModelConfig, MasterComparisonConfig, MasterConfig

__all__ = [
    "DarkModelConfig",
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
    "model_dark",
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
    dark_model : str | None
        Darks: 'measured' (``data`` is the mean of the darks) or 'denoised' (``data`` is
        :func:`model_dark`'s model; ``measured``/``measured_variance`` keep the mean).
    modelled_fraction : float | None
        Denoised darks: fraction of the pixels modelled (the others keep the measured mean).
    measured, measured_variance : float32 (ny, nx) | None
        Denoised darks: the measured mean and its variance, for what needs every pixel's
        own measurement (hot pixels, bad columns, the comparison with the previous master).
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
    dark_model: str | None = None
    modelled_fraction: float | None = None
    measured: np.ndarray | None = None
    measured_variance: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def measured_data(self) -> np.ndarray:
        """The measured master: ``measured`` when ``data`` is a model, else ``data``."""
        return self.data if self.measured is None else self.measured

    @property
    def measured_var(self) -> np.ndarray:
        """The variance of :attr:`measured_data`."""
        return self.variance if self.measured_variance is None else self.measured_variance

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

    With ``config.dark_model.method == 'denoised'`` the master is
    ``model_dark(B + D) - B`` where a pixel is modelled (:func:`model_dark`: what a light of
    this exposure time has subtracted, modelled with the master bias's noise cancelled) and
    the measured mean ``D`` elsewhere; ``variance`` is the model's error variance, so the
    same ``(1 - k)^2 var_bias + k^2 var_dark`` holds; ``measured``/``measured_variance`` keep
    the mean and its variance.
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
    var = res.variance.astype(np.float32)  # the darks' own scatter; the master bias's is not included
    mean, noise = _summary(res.data)  # figures of the measured mean (comparison, reports)
    data, model_var, frac = res.data, var, None
    method = cfg.dark_model.method
    if method == "denoised":
        # model what a light of this exposure time has subtracted, master bias included: the
        # bias's noise cancels in it, and the bias's structure is part of what is modelled
        total = res.data if bias is None else res.data + bias.data
        model, model_var, modelled = model_dark(total, var, config=cfg.dark_model)
        if bias is not None:
            model = model - bias.data
        data = np.where(modelled, model, res.data).astype(np.float32)
        frac = float(np.mean(modelled))
    return MasterFrame(
        kind="dark",
        data=data,
        variance=model_var,
        n_inputs=res.n_inputs,
        rejected_fraction=res.rejected_fraction,
        mean=mean,
        noise=noise,
        exptime_s=float(np.median(times)),
        includes_bias=bias is None,
        dark_model=method,
        modelled_fraction=frac,
        measured=None if method == "measured" else res.data,
        measured_variance=None if method == "measured" else var,
    )


def model_dark(
    data: np.ndarray, variance: np.ndarray, *, config: DarkModelConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Denoise the mean of dark frames [adu]: ``(model, model variance, modelled mask)``.

    ``data`` is what a light of the darks' exposure time has subtracted: the mean of the
    darks with their bias (master bias + bias-subtracted master dark), ``variance`` its
    noise (the darks' only). A pixel is ``X = S + t + n``: the structure ``S`` (a smooth
    level, :func:`~darkroom.calib.badpix.smooth_level`'s medians of ``box_pix`` blocks,
    bilinear between block centres, plus the median of each column and then of each row
    of what is left: bias columns, read-out patterns), the pixel's own fixed deviation
    ``t`` (scatter ``tau``: dark-current and bias non-uniformity) and the noise ``n``.
    ``tau^2`` is the variance of ``X - S`` less ``var`` over the modelled pixels (iterated
    from a robust start: the non-uniformity is heavy-tailed). A pixel within
    ``n_sigma * sqrt(var + tau^2)`` of ``S`` is modelled by the best linear estimate of
    ``S + t``, ``S + w (X - S)`` with ``w = tau^2 / (tau^2 + var)`` (``S`` alone when the
    noise explains the whole scatter), and its error variance
    ``w var + (1 - w)^2 var_S`` (``var_S``: ``pi/2`` times the block's and the column's
    and row's mean variance over their pixel counts, medians' variances for Gaussian
    noise). The other pixels (hot, warm, cold, NaN) keep ``X`` and ``var``. The variance is
    per pixel: the structure's small error is shared along blocks, columns and rows.
    """
    cfg = config or DarkModelConfig()
    x = np.asarray(data, dtype=np.float32)
    v = np.asarray(variance, dtype=np.float32)
    if x.shape != v.shape:
        raise BadInputError(f"dark {x.shape} and variance {v.shape} differ in shape")
    ny, nx = x.shape
    structure = smooth_level(x, box_pix=cfg.box_pix)
    cols = bn.nanmedian(x - structure, axis=0).astype(np.float32)  # per column
    structure += np.where(np.isfinite(cols), cols, 0)[None, :]
    rows = bn.nanmedian(x - structure, axis=1).astype(np.float32)  # per row, after the columns
    structure += np.where(np.isfinite(rows), rows, 0)[:, None]
    n_block = min(cfg.box_pix, ny) * min(cfg.box_pix, nx)
    v_mean = np.float32(np.nanmean(v))
    structure_var = (
        smooth_level(v, box_pix=cfg.box_pix) / np.float32(n_block) + v_mean / ny + v_mean / nx
    ) * (np.float32(np.pi / 2))
    resid = x - structure
    ok = np.isfinite(resid) & np.isfinite(v)
    if not np.any(ok):
        raise CalibrationError("master dark has no finite pixel")
    step = max(1, int(np.count_nonzero(ok)) // 2_000_000)
    # tau^2: what X scatters by around its structure beyond the darks' noise (fixed pattern).
    # Dark-current non-uniformity is heavy-tailed (warm pixels): a robust (MAD) variance
    # misses most of it, so tau^2 is the plain excess variance of the pixels that are modelled,
    # found by iterating from the robust value.
    r_s, v_s = resid[ok][::step].astype(np.float64), v[ok][::step].astype(np.float64)
    tau2 = max(0.0, robust_std(r_s) ** 2 - float(np.median(v_s)))
    for _ in range(5):
        inner = np.abs(r_s) < cfg.n_sigma * np.sqrt(v_s + tau2)
        tau2 = max(0.0, float(np.mean(r_s[inner] ** 2) - np.mean(v_s[inner])))
    with np.errstate(invalid="ignore", divide="ignore"):
        modelled = np.abs(resid) < np.float32(cfg.n_sigma) * np.sqrt(v + np.float32(tau2))
        w = np.float32(tau2) / (np.float32(tau2) + v) if tau2 > 0 else np.zeros_like(v)
    w = np.where(np.isfinite(w), w, np.float32(1.0)).astype(np.float32)  # var = 0: the pixel is known
    model = np.where(modelled, structure + w * resid, x).astype(np.float32)
    model_var = np.where(modelled, w * v + (1 - w) ** 2 * structure_var, v).astype(np.float32)
    log.info(
        "dark model: fixed-pattern scatter %.4g adu against noise %.4g; %.4f of the pixels modelled",
        tau2**0.5,
        float(np.median(v[ok][::step])) ** 0.5,
        float(np.mean(modelled)),
    )
    return model, model_var, modelled


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
    # denoised darks are compared on their measured means: a model hides the pixels' changes
    a = new.measured_data.astype(np.float64)
    b = previous.measured_data.astype(np.float64)
    if new.kind == "dark" and new.exptime_s and previous.exptime_s and new.exptime_s != previous.exptime_s:
        b = b * (new.exptime_s / previous.exptime_s)
    diff = a - b
    sig = np.sqrt(new.measured_var.astype(np.float64) + previous.measured_var.astype(np.float64))
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
    ("DARKMODL", "dark_model", "dark: measured mean or denoised model"),
    ("DMODFRAC", "modelled_fraction", "fraction of dark pixels set to the smooth level"),
)


def master_to_hdus(master: MasterFrame, *, header: fits.Header | None = None) -> fits.HDUList:
    """FITS HDUs of a master: primary (SCI, float32) with the figures as cards, and VAR
    (then MEASURED and MEASVAR, the measured mean and its variance, for a denoised dark)."""
    h = fits.Header() if header is None else header.copy()
    for key, attr, comment in _CARDS:
        val = getattr(master, attr)
        if val is not None:
            h[key] = (val if not isinstance(val, np.generic) else val.item(), comment)
    h["EXTNAME"] = "SCI"
    prim = fits.PrimaryHDU(data=master.data.astype(np.float32), header=h)
    var = fits.ImageHDU(data=master.variance.astype(np.float32), name="VAR")
    hdus = [prim, var]
    if master.measured is not None:
        hdus.append(fits.ImageHDU(data=master.measured.astype(np.float32), name="MEASURED"))
    if master.measured_variance is not None:
        hdus.append(fits.ImageHDU(data=master.measured_variance.astype(np.float32), name="MEASVAR"))
    return fits.HDUList(hdus)


def master_from_hdus(hdul: fits.HDUList, *, name: str = "") -> MasterFrame:
    """Inverse of :func:`master_to_hdus` (``name`` is the file name to carry)."""
    h = hdul[0].header
    if "MASTTYPE" not in h:
        raise BadInputError("not a darkroom master: no MASTTYPE card")
    kw = {attr: h[key] for key, attr, _ in _CARDS if key in h}
    data = np.asarray(hdul[0].data, dtype=np.float32)
    var = np.asarray(hdul["VAR"].data, dtype=np.float32)
    names = {h.name for h in hdul}
    for key in ("measured", "measured_variance"):
        ext = "MEASURED" if key == "measured" else "MEASVAR"
        if ext in names:
            kw[key] = np.asarray(hdul[ext].data, dtype=np.float32)
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
