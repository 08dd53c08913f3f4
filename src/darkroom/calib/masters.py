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

from ._stats import MAD_TO_SIGMA, clipped_mean_std, clipped_mean_std_mad, frame_median, median
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
    "dark_model_method",
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
    # the clipped mean and the MAD sigma (robust_std's number) from one set of medians
    mean, _, _, noise = clipped_mean_std_mad(sample, n_sigma=4.0)
    return mean, noise


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
    # each frame's region converted once (a frame is in two pairs)
    central = [np.asarray(f[region], dtype=np.float64) for f in frames[: min(5, len(frames))]]
    vals = []
    for i in range(len(central) - 1):
        _, s, _ = clipped_mean_std(central[i] - central[i + 1], n_sigma=5.0)
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

    With ``config.dark_model.method == 'denoised'`` (``'auto'``: from 2 to
    ``denoise_below_frames`` - 1 darks, see :class:`DarkModelConfig`) the master is
    ``model_dark(B + D) - B`` where a pixel is modelled (:func:`model_dark`: what a light of
    this exposure time has subtracted, modelled with the master bias's noise cancelled) and
    the measured mean ``D`` elsewhere; ``variance`` is the model's error variance, so the
    same ``(1 - k)^2 var_bias + k^2 var_dark`` holds; ``measured``/``measured_variance`` keep
    the mean and its variance. ``dark_model`` records the method used.
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
    method = dark_model_method(cfg.dark_model, res.n_inputs)
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


def dark_model_method(config: DarkModelConfig, n_frames: int) -> Literal["denoised", "measured"]:
    """The method a master dark of ``n_frames`` darks uses under ``config`` (resolves ``auto``)."""
    if config.method != "auto":
        return config.method
    return "denoised" if 2 <= n_frames < config.denoise_below_frames else "measured"


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
    ``t`` (dark-current and bias non-uniformity: a narrow core, a population of warm
    pixels offset above it, a tail of hot pixels) and the noise ``n ~ N(0, var)``.

    Empirical Bayes: the distribution of ``t`` is a mixture of ``n_components`` Gaussians
    (weights ``pi_k``, means ``mu_k``, variances ``tau_k^2``) fitted to the residuals
    ``r = X - S`` with their noise deconvolved (extreme deconvolution, Bovy, Hogg & Roweis
    2011: ``fit_iterations`` EM steps from fixed starting widths, on every pixel binned by
    residual and noise). That noise is ``var + var_S``: ``var_S``, the structure's error
    (``pi/2`` times the block's and the column's and row's mean variance over their pixel
    counts, medians' variances for Gaussian noise), is in every residual too. Each pixel
    takes ``S`` plus the posterior mean of ``t``: per component ``mu_k + w_k (r - mu_k)``,
    ``w_k = tau_k^2 / (tau_k^2 + var + var_S)``, averaged with the components' posterior
    probabilities. Its error variance is ``Var(t | r) + (1 - 2 w) var_S`` (``w`` the
    posterior weight of the pixel's own residual; the structure's error enters the model
    once directly and once, with weight ``-w``, through ``r``); that part of it is shared
    along blocks, columns and rows. A pixel whose posterior takes ``w >= keep_weight`` of
    its own residual (hot pixels, whose component is far wider than the noise), or that is
    NaN, keeps ``X`` and ``var``: the model would change it by a negligible fraction.
    ``modelled`` marks the others.
    """
    cfg = config or DarkModelConfig()
    x = np.asarray(data, dtype=np.float32)
    v = np.asarray(variance, dtype=np.float32)
    if x.shape != v.shape:
        raise BadInputError(f"dark {x.shape} and variance {v.shape} differ in shape")
    ny, nx = x.shape
    structure = smooth_level(x, box_pix=cfg.box_pix)
    # per column, each column's values contiguous (the same values in the same order: the same
    # medians as along axis 0, ~1.5x faster)
    cols = bn.nanmedian(np.ascontiguousarray((x - structure).T), axis=1).astype(np.float32)
    structure += np.where(np.isfinite(cols), cols, 0)[None, :]
    rows = bn.nanmedian(x - structure, axis=1).astype(np.float32)  # per row, after the columns
    structure += np.where(np.isfinite(rows), rows, 0)[:, None]
    n_block = min(cfg.box_pix, ny) * min(cfg.box_pix, nx)
    v_mean = np.float32(np.nanmean(v))
    structure_var = (
        smooth_level(v, box_pix=cfg.box_pix) / np.float32(n_block) + v_mean / ny + v_mean / nx
    ) * (np.float32(np.pi / 2))
    resid = x - structure
    ok = np.isfinite(resid) & np.isfinite(v) & (v > 0)
    if not np.any(ok):
        raise CalibrationError("master dark has no finite pixel")
    idx = np.flatnonzero(ok)
    # the residual holds the structure's error too (shared along blocks, columns, rows): its
    # noise is var + var_S, or the spread of the structure's error would pass for the pixels'
    noise = (v + structure_var).ravel()
    prior = _fit_deconvolved_mixture(
        *_binned_residuals(resid.ravel()[idx], noise[idx]),
        n_components=cfg.n_components,
        iterations=cfg.fit_iterations,
    )
    model = x.copy()
    model_var = v.copy()
    modelled = np.zeros(x.shape, dtype=bool)
    flat_model, flat_var, flat_mod = model.ravel(), model_var.ravel(), modelled.ravel()
    s_flat, sv_flat = structure.ravel(), structure_var.ravel()
    r_flat, v_flat = resid.ravel(), v.ravel()
    for start in range(0, idx.size, _POSTERIOR_CHUNK):  # bounded memory: K values per pixel
        j = idx[start : start + _POSTERIOR_CHUNK]
        mean, var, w = _mixture_posterior(r_flat[j].astype(np.float64), noise[j].astype(np.float64), prior)
        use = w < cfg.keep_weight
        ju = j[use]
        flat_model[ju] = (s_flat[ju] + mean[use]).astype(np.float32)
        # S + E[t|r] errs by e_S + (E[t|r] - t); r holds -e_S with weight w: Var(t|r) + (1 - 2w) var_S
        err = var[use] + (1.0 - 2.0 * w[use]) * sv_flat[ju]
        flat_var[ju] = np.maximum(err, 0.0).astype(np.float32)
        flat_mod[ju] = True
    pi, mu, tau2 = prior
    log.info(
        "dark model: deviation prior %s (weight, mean, sigma [adu]) against noise %.4g adu; "
        "%.4f of the pixels modelled",
        ", ".join(f"({p:.3g}, {m:.3g}, {t**0.5:.3g})" for p, m, t in zip(pi, mu, tau2, strict=True)),
        float(median(v_flat[idx])) ** 0.5,
        float(np.mean(modelled)),
    )
    return model, model_var, modelled


_POSTERIOR_CHUNK = 1 << 20


def _binned_residuals(r: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pixel's ``(residual, variance)`` compressed to ``(r, v, count)`` per bin.

    Residuals are binned in ``asinh(r / noise)`` (``_R_BINS`` bins: a small fraction of the
    noise wide at the core, relatively as fine in the tail), variances in up to ``_V_BINS``
    quantile bins; each bin stands at its pixels' mean values. The mixture fit then weighs
    bins by their counts: all pixels enter, and an EM step costs the bins, not the pixels.
    """
    noise = float(np.sqrt(median(v)))  # median(): np.median's value (and dtype), faster
    u = np.arcsinh(r.astype(np.float64) / noise)
    lo, hi = float(u.min()), float(u.max())
    ri = np.minimum(((u - lo) / max(hi - lo, 1e-12) * _R_BINS).astype(np.int64), _R_BINS - 1)
    edges = np.unique(np.quantile(v, np.linspace(0, 1, _V_BINS + 1)[1:-1]))
    vi = np.searchsorted(edges, v, side="right")
    key = vi * _R_BINS + ri
    count = np.bincount(key)
    used = np.flatnonzero(count)
    n = count[used].astype(np.float64)
    r_mean = np.bincount(key, weights=r.astype(np.float64))[used] / n
    v_mean = np.bincount(key, weights=v.astype(np.float64))[used] / n
    return r_mean, v_mean, n


_R_BINS = 4096
_V_BINS = 8


def _fit_deconvolved_mixture(
    r: np.ndarray, v: np.ndarray, count: np.ndarray, *, n_components: int, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian mixture ``(pi, mu, tau2)`` of the true deviations behind ``r = t + n``,
    ``n ~ N(0, v)`` per value, each value counted ``count`` times: maximum likelihood by EM.

    The M-step maximises each component's weighted likelihood of ``N(mu, tau2 + v)``
    by Fisher scoring (for equal ``v`` one step is exact: ``tau2`` = the weighted variance
    less ``v``). Extreme deconvolution's classic EM step (Bovy, Hogg & Roweis 2011) moves
    ``tau2`` by only ~``tau2^2 / v`` per step, far too slowly for a narrow core under the
    noise. Starting widths are spaced geometrically from a third of the noise to the largest
    deviation, with zero means and equal weights, so the fit is deterministic; a width stays
    positive (1e-12 of the noise's variance) so a component may shrink to a point.

    Exactly ``iterations`` steps: no convergence test. On ARCSAT's darks the fit is still
    moving at 200 (a component leaves the width floor after ~100 steps of slow change), so a
    stop on a small change would stop on that plateau and change the model. Arrays are
    ``(component, value)``: sums over components are row-wise, sums over values contiguous;
    ``tau2 + v`` and its reciprocal serve the E-step and the first scoring step alike.
    """
    noise = float(np.sqrt(np.average(v, weights=count)))
    top = max(float(np.max(np.abs(r))), 3.0 * noise)
    tau2 = np.geomspace(noise / 3.0, top, n_components) ** 2
    mu = np.zeros(n_components)
    pi = np.full(n_components, 1.0 / n_components)
    floor = 1e-12 * noise**2
    for _ in range(iterations):
        s2 = tau2[:, None] + v
        inv = 1.0 / s2
        with np.errstate(divide="ignore"):
            q = _log_likelihoods(r, s2, inv, np.log(pi), mu)
        q -= q.max(axis=0)
        np.exp(q, out=q)
        q *= count / q.sum(axis=0)  # responsibilities times the counts
        nk = np.maximum(q.sum(axis=1), 1e-300)
        pi = nk / nk.sum()
        for step_i in range(_SCORING_STEPS):
            if step_i:
                s2 = tau2[:, None] + v
                inv = 1.0 / s2
            qs = q * inv
            mu = (qs * r).sum(axis=1) / np.maximum(qs.sum(axis=1), 1e-300)
            d = r - mu[:, None]
            d *= d
            d -= s2  # (r - mu)^2 - s2
            qs *= inv
            step = (qs * d).sum(axis=1) / np.maximum(qs.sum(axis=1), 1e-300)
            tau2 = np.maximum(tau2 + step, floor)
    return pi, mu, tau2


_SCORING_STEPS = 2


def _log_likelihoods(r: np.ndarray, s2: np.ndarray, inv: np.ndarray, log_pi: np.ndarray, mu: np.ndarray):
    """``log pi_k + log N(r; mu_k, s2)`` less ``log(2 pi) / 2``, ``(component, value)``; ``inv = 1 / s2``."""
    d = r - mu[:, None]
    out = np.log(s2)
    d *= d
    d *= inv
    out += d
    out *= -0.5
    out += log_pi[:, None]
    return out


def _mixture_posterior(r: np.ndarray, v: np.ndarray, prior) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and variance of ``t`` and the weight of the measurement ``r`` in it.

    Per block of ``_POSTERIOR_BLOCK`` values, ``(component, value)`` arrays: the
    temporaries stay in cache and the sums over components are row-wise.
    """
    pi, mu, tau2 = prior
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi)
    tau2c, muc = tau2[:, None], mu[:, None]
    mean, var, weight = np.empty(r.size), np.empty(r.size), np.empty(r.size)
    for a in range(0, r.size, _POSTERIOR_BLOCK):
        rb, vb = r[a : a + _POSTERIOR_BLOCK], v[a : a + _POSTERIOR_BLOCK]
        s2 = tau2c + vb
        inv = 1.0 / s2
        q = _log_likelihoods(rb, s2, inv, log_pi, mu)
        q -= q.max(axis=0)
        np.exp(q, out=q)
        q /= q.sum(axis=0)  # posterior probability of each component
        w = tau2c * inv  # weight of r in each component's posterior mean
        b = rb - muc
        b *= w
        b += muc  # each component's posterior mean
        m = (q * b).sum(axis=0)
        b *= b
        b += w * vb  # each component's posterior second moment
        mean[a : a + _POSTERIOR_BLOCK] = m
        var[a : a + _POSTERIOR_BLOCK] = np.maximum((q * b).sum(axis=0) - m * m, 0.0)
        weight[a : a + _POSTERIOR_BLOCK] = (q * w).sum(axis=0)
    return mean, var, weight


_POSTERIOR_BLOCK = 1 << 14


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
    ("DMODFRAC", "modelled_fraction", "fraction of dark pixels modelled"),
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
