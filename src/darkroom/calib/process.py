"""Instrument-signature removal for one frame: raw adu in, SCI / MASK / VAR out.

Steps, in order (each recorded in the header):

1. saturation: raw pixels at or above the saturation level get ``SAT``;
2. overscan subtraction and trim, where the metadata defines the sections;
3. bias subtraction, dark subtraction scaled by ``exptime / dark exptime``,
   flat division;
4. the variance plane from the noise model (:mod:`darkroom.calib.variance`);
5. bad pixels (``BAD``) interpolated (``INTRP``); NaN input pixels ``NO_DATA``;
6. cosmic rays (``CR``), found with the sky model and the variance plane, and
   interpolated (``INTRP``).

A master that is needed but not given raises
:class:`~darkroom.errors.MissingCalibrationError`, unless ``config.require`` lets
that step be skipped. Pixel values stay in adu (``BUNIT``); the flat is normalised
to median 1.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError, CalibrationError, MissingCalibrationError
from darkroom.maskbits import MaskBit, mask_header_cards
from darkroom.robust import median
from darkroom.skymesh import sky_background

from .badpix import BadPixelMask
from .cosmics import detect_cosmic_rays
from .grouping import describe_key, required_key
from .interp import FillPlan, NeighbourFill, fill_plan, neighbour_fill, planned_fill, window_touches
from .masters import MasterFrame
from .noise import sky_level_and_noise
from .overscan import overscan_levels, parse_section
from .settings import CalibrationConfig, RequireConfig, RequireMode
from .starguard import StarExtraction, find_stars, protect_stars, tuned_objlim
from .variance import divide_by_flat, poisson_read_variance

__all__ = [
    "CalibratedFrame",
    "CalibrationConfig",
    "PreparedFrame",
    "RequireConfig",
    "RequireMode",
    "adopt_calibrated",
    "calibrate_frame",
    "cut_masters_to_subframe",
    "prepare_pixels",
    "prepare_raw",
    "trimmed_shape",
]

log = logging.getLogger(__name__)

_F32 = np.float32
MASK_DTYPE = np.int32
_FILL_RADIUS = 2  # half-size of the first window a masked pixel is filled from [pixel]


@dataclass(frozen=True)
class PreparedFrame:
    """A raw frame after overscan subtraction and trimming.

    ``data`` float32 [adu]; ``saturated`` the raw pixels at or above saturation;
    ``offset`` the (row, column) of the trimmed frame's first pixel in the raw
    frame (0-based); ``overscan_level_adu`` the mean overscan level (None without);
    ``overscan_noise_adu`` the robust scatter of the overscan strip.
    """

    data: np.ndarray
    saturated: np.ndarray
    offset: tuple[int, int]
    overscan_level_adu: float | None
    overscan_noise_adu: float | None
    history: tuple[str, ...]
    saturation_adu: float | None = None  #: the raw saturation level used for ``saturated``


def prepare_raw(
    data: np.ndarray,
    meta,
    *,
    config: CalibrationConfig | None = None,
    saturation_adu: float | None = None,
) -> PreparedFrame:
    """Overscan-subtract and trim a raw frame (any type: also bias, dark, flat frames).

    ``meta`` is a :class:`~darkroom.instruments.metadata.FrameMetadata`; its
    ``overscan_section`` and ``trim_section`` (FITS, 1-based) are used when set.
    """
    cfg = config or CalibrationConfig()
    raw = np.asarray(data)
    if raw.ndim != 2:
        raise BadInputError(f"expected a 2-D image, got shape {raw.shape}")
    sat_level = saturation_adu
    if sat_level is None:
        sat_level = meta.saturation_adu if meta.saturation_adu is not None else cfg.default_saturation_adu
    history: list[str] = []
    ceiling = _adc_ceiling(raw, sat_level)
    if ceiling is not None:
        history.append(f"saturation {ceiling:g} adu: the frame's pixels stop at this ADC ceiling")
        sat_level = ceiling
    rows, cols = slice(0, raw.shape[0]), slice(0, raw.shape[1])
    if cfg.do_trim and meta.trim_section:
        rows, cols = parse_section(meta.trim_section, shape=raw.shape)
    view = raw[rows, cols]
    with np.errstate(invalid="ignore"):
        saturated = view >= sat_level if sat_level is not None else np.zeros(view.shape, dtype=bool)
    img = view.astype(_F32)  # the only full copy
    level, noise = _remove_offsets(img, raw, rows, cols, meta, cfg, history)
    if cfg.do_trim and meta.trim_section:
        history.append(f"trimmed to {meta.trim_section}")
    return PreparedFrame(
        data=img,
        saturated=np.ascontiguousarray(saturated),
        offset=(rows.start, cols.start),
        overscan_level_adu=level,
        overscan_noise_adu=noise,
        history=tuple(history),
        saturation_adu=sat_level,
    )


def prepare_pixels(
    data: np.ndarray, meta, *, config: CalibrationConfig | None = None, overwrite: bool = False
):
    """:func:`prepare_raw`'s ``data`` alone: the trimmed frame less its software bias and overscan,
    float32 [adu], the same values. What the masters combine, who need no saturation mask: the
    ADC-ceiling scan, the mask and the copies behind them are not made (ARCSAT: 2.4 -> 0.6 ms a
    frame, 0 with ``overwrite``). With ``overwrite`` a float32 frame (read_raw's, which the caller
    owns) is corrected in place and its trimmed view returned, instead of a copy."""
    cfg = config or CalibrationConfig()
    raw = np.asarray(data)
    if raw.ndim != 2:
        raise BadInputError(f"expected a 2-D image, got shape {raw.shape}")
    rows, cols = slice(0, raw.shape[0]), slice(0, raw.shape[1])
    if cfg.do_trim and meta.trim_section:
        rows, cols = parse_section(meta.trim_section, shape=raw.shape)
    view = raw[rows, cols]
    img = view if overwrite and view.dtype == _F32 else view.astype(_F32)
    _remove_offsets(img, raw, rows, cols, meta, cfg, [])
    return img


def _remove_offsets(
    img: np.ndarray,
    raw: np.ndarray,
    rows: slice,
    cols: slice,
    meta,
    cfg: CalibrationConfig,
    history: list[str],
) -> tuple[float | None, float | None]:
    """Subtract the software bias, then the overscan level, from ``img`` (float32, the pixels
    ``raw[rows, cols]``, possibly a view of ``raw``) in place; append what was done to
    ``history``. Returns the mean overscan level and the overscan's noise [adu] (None without)."""
    levels = noise = None
    if cfg.do_overscan and meta.overscan_section:
        # measured before img changes: img may be a view of raw
        levels, axis, noise = overscan_levels(raw, meta.overscan_section, config=cfg.overscan)
    softbias = getattr(meta, "software_bias_adu", None)
    if softbias:
        # a constant the acquisition software added (SDSS SOFTBIAS): not signal, no Poisson noise
        img -= _F32(softbias)
        history.append(f"software bias {softbias:g} adu subtracted")
    level = None
    if levels is not None:
        if axis == "rows":
            img -= levels[rows][:, None]
        else:
            img -= levels[cols][None, :]
        level = float(np.mean(levels))
        history.append(
            f"overscan {meta.overscan_section} subtracted ({cfg.overscan.statistic}, {cfg.overscan.fit}); "
            f"mean {level:.2f} adu"
        )
    return level, noise


def trimmed_shape(
    shape: tuple[int, ...], meta, *, config: CalibrationConfig | None = None
) -> tuple[int, int]:
    """The (ny, nx) :func:`prepare_raw` gives a raw frame of ``shape``, without touching pixels."""
    cfg = config or CalibrationConfig()
    if len(shape) != 2:
        raise BadInputError(f"expected a 2-D image, got shape {tuple(shape)}")
    if not (cfg.do_trim and meta.trim_section):
        return int(shape[0]), int(shape[1])
    rows, cols = parse_section(meta.trim_section, shape=(int(shape[0]), int(shape[1])))
    return rows.stop - rows.start, cols.stop - cols.start


def _adc_ceiling(raw: np.ndarray, sat_level: float | None) -> float | None:
    """The saturation of a camera with fewer bits than its file (a 12- or 14-bit ADC written
    as 16-bit FITS): the data's maximum when it is 2^n - 1 (8 <= n < 16), below the level
    assumed, and reached by at least 3 pixels. None otherwise."""
    if raw.dtype.kind not in "iuf" or raw.size == 0:
        return None
    top = float(raw.max())  # NaN only when a pixel is NaN: then the NaN-aware maximum
    if math.isnan(top):
        top = float(np.nanmax(raw))
    if not np.isfinite(top) or (sat_level is not None and top >= sat_level):
        return None
    n = round(math.log2(top + 1.0)) if top > 0 else 0
    if not (8 <= n < 16 and top == 2.0**n - 1.0):
        return None
    if int(np.count_nonzero(raw == top)) < 3:
        return None
    return top


@dataclass(frozen=True)
class CalibratedFrame:
    """A calibrated frame.

    Attributes
    ----------
    sci : float32 (ny, nx)
        Calibrated pixels [adu] (NaN where ``NO_DATA``).
    mask : int32 (ny, nx)
        :class:`~darkroom.maskbits.MaskBit` bits.
    var : float32 (ny, nx)
        Variance of ``sci`` [adu^2].
    header : astropy.io.fits.Header
        The input header with the calibration cards and history.
    gain_e_per_adu, read_noise_e, saturation_adu : float | None
        The noise figures used, and the raw saturation level.
    noise_model : str
        Where the noise figures come from: ``'header'``, ``'gain from the flat'``, or an
        estimate from the sky (the product is flagged so: also in the NOISEMOD card).
    n_cosmic_pixels, n_bad_pixels, n_saturated : int
    """

    sci: np.ndarray
    mask: np.ndarray
    var: np.ndarray
    header: fits.Header
    gain_e_per_adu: float
    read_noise_e: float
    saturation_adu: float | None
    n_cosmic_pixels: int
    n_bad_pixels: int
    n_saturated: int
    steps: tuple[str, ...] = field(default_factory=tuple)
    noise_model: str = "header"

    def to_hdus(self) -> fits.HDUList:
        """HDUs ``[primary, SCI, MASK, VAR]`` (not written anywhere)."""
        sci_h = self.header.copy()
        sci_h["EXTNAME"] = "SCI"
        mask_h = fits.Header()
        mask_h["EXTNAME"] = "MASK"
        for key, value, comment in mask_header_cards():
            mask_h[key] = (value, comment)
        var_h = fits.Header()
        var_h["EXTNAME"] = "VAR"
        var_h["BUNIT"] = ("adu2", "variance of SCI")
        return fits.HDUList(
            [
                fits.PrimaryHDU(),
                fits.ImageHDU(self.sci, header=sci_h),
                fits.ImageHDU(self.mask, header=mask_h),
                fits.ImageHDU(self.var, header=var_h),
            ]
        )


@dataclass(frozen=True)
class _FlatPlanes:
    """A master flat as every frame of its night divides by it: pixels below ``min_flat`` (or
    NaN: no response, flagged BAD) set to 1 with variance 0, and the square of the result."""

    data: np.ndarray
    variance: np.ndarray
    square: np.ndarray
    no_response: np.ndarray | None  # None: every pixel responds

    @property
    def nbytes(self) -> int:
        """Memory of the arrays made here (not the master's own)."""
        made = [self.square]
        if self.no_response is not None:  # else data and variance are the master's
            made += [self.data, self.variance, self.no_response]
        return sum(a.nbytes for a in made)


_flat_cache: dict[tuple[int, float], tuple[weakref.ref, _FlatPlanes]] = {}
_FLAT_CACHE_BYTES = 256 << 20


def _cache_bytes() -> int:
    return sum(planes.nbytes for _, planes in _flat_cache.values())


def _flat_planes(flat: MasterFrame, min_flat: float) -> _FlatPlanes:
    """:class:`_FlatPlanes` of ``flat``, made once per master (the same object is given for
    every frame of a night) instead of once per frame."""
    key = (id(flat), float(min_flat))
    hit = _flat_cache.get(key)
    if hit is not None and hit[0]() is flat:
        return hit[1]
    no_resp = ~(flat.data >= min_flat)  # NaN or dead
    if no_resp.any():
        data = np.where(no_resp, _F32(1.0), flat.data)
        variance = np.where(no_resp, _F32(0.0), flat.variance)
    else:
        data, variance, no_resp = flat.data, flat.variance, None
    planes = _FlatPlanes(data, variance, np.square(np.asarray(data, dtype=_F32)), no_resp)
    for k in [k for k, (ref, _) in _flat_cache.items() if ref() is None]:
        del _flat_cache[k]  # masters no longer alive
    # the oldest entries go while the cache would hold more than _FLAT_CACHE_BYTES (one
    # 4k x 4k flat's planes are ~200 MB; a night of 1k x 1k frames in 4 filters fits)
    while _flat_cache and _cache_bytes() + planes.nbytes > _FLAT_CACHE_BYTES:
        _flat_cache.pop(next(iter(_flat_cache)))
    _flat_cache[key] = (weakref.ref(flat), planes)
    return planes


def _missing(meta, kind: str) -> MissingCalibrationError:
    need = describe_key(required_key(meta, kind))
    return MissingCalibrationError(
        f"missing master {kind}: a {need} is needed (set require.{kind}=False to skip {kind} correction)",
        kind=kind,
    )


def _check_shape(master_shape: tuple[int, int], shape: tuple[int, int], what: str) -> None:
    if tuple(master_shape) != tuple(shape):
        raise CalibrationError(
            f"master {what} has shape {tuple(master_shape)} but the trimmed frame has {tuple(shape)}"
        )


def calibrate_frame(
    data: np.ndarray,
    meta,
    *,
    bias: MasterFrame | None = None,
    dark: MasterFrame | None = None,
    flat: MasterFrame | None = None,
    bad_pixels: BadPixelMask | None = None,
    header: fits.Header | None = None,
    gain_e_per_adu: float | None = None,
    read_noise_e: float | None = None,
    config: CalibrationConfig | None = None,
) -> CalibratedFrame:
    """Calibrate one raw frame.

    Parameters
    ----------
    data
        Raw pixels [adu] (ny, nx), untrimmed.
    meta
        The frame's :class:`~darkroom.instruments.metadata.FrameMetadata`.
    bias, dark, flat
        Masters (trimmed to the science area); ``name`` of each is written into
        BIASCORR / DARKCORR / FLATCORR.
    bad_pixels
        Bad-pixel mask of the trimmed frame; its ``name`` goes into BPM.
    header
        The raw header, copied into the result with the calibration cards.
    gain_e_per_adu, read_noise_e
        Override the metadata; when both are missing the gain measured on the
        flat (``flat.gain_e_per_adu``) and the read noise of the bias
        (``bias.read_noise_adu``, else the overscan scatter) are used.
    """
    cfg = config or CalibrationConfig()
    skipped = []
    for kind, master in (("bias", bias), ("dark", dark), ("flat", flat)):
        if master is None and getattr(cfg.require, kind) is True:
            raise _missing(meta, kind)
        if master is None and getattr(cfg.require, kind) == "auto":
            skipped.append(kind)
        if master is not None and master.kind != kind:
            raise BadInputError(f"the {kind} argument holds a master {master.kind}")
    sat_level = meta.saturation_adu if meta.saturation_adu is not None else cfg.default_saturation_adu
    prep = prepare_raw(data, meta, config=cfg, saturation_adu=sat_level)
    sat_level = prep.saturation_adu
    shape = prep.data.shape
    history = list(prep.history)
    cards: list[tuple[str, object, str]] = []
    if skipped:
        history.append(f"no master {'/'.join(skipped)}: that correction skipped (require auto)")

    # noise figures
    gain = gain_e_per_adu or meta.gain_e_per_adu or (flat.gain_e_per_adu if flat is not None else None)
    noise_model = "header" if (gain_e_per_adu or meta.gain_e_per_adu) else "gain from the flat"
    rn_e = read_noise_e if read_noise_e is not None else meta.read_noise_e
    if rn_e is None and bias is not None and bias.read_noise_adu is not None and gain:
        rn_e = bias.read_noise_adu * gain
    if rn_e is None and prep.overscan_noise_adu is not None and gain:
        rn_e = prep.overscan_noise_adu * gain
    sky_model: tuple[float, float] | None = None  # (sky level, sky noise) [adu] of the empirical model
    if not gain or rn_e is None:
        if not cfg.estimate_noise:
            what = "gain" if not gain else "read noise"
            raise CalibrationError(
                f"no {what}: not in the header, not given, not measured on the masters or overscan "
                "(calib.calibration.estimate_noise=true estimates it from the sky)"
            )
        gain, rn_e, sky_model, noise_model = _estimate_noise(prep, bias, gain)
        log.warning("%s", noise_model)
        history.append(noise_model)
    rn_adu = rn_e / gain

    sci = prep.data  # raw - overscan [adu], float32, a fresh array we own
    scale = 0.0
    if bias is not None:
        _check_shape(bias.shape, shape, "bias")
        history.append(f"bias subtracted: {bias.name or 'master bias'}")
        cards.append(("BIASCORR", bias.name or "T", "master bias subtracted"))
    if dark is not None:
        _check_shape(dark.shape, shape, "dark")
        if dark.includes_bias:
            if bias is not None:
                raise CalibrationError("the master dark includes the bias and a master bias was also given")
            if (
                meta.exptime_s is None
                or dark.exptime_s is None
                or abs(meta.exptime_s - dark.exptime_s) > (cfg.dark_exptime_tolerance_s)
            ):
                raise CalibrationError(
                    f"a dark that includes the bias ({dark.exptime_s} s) cannot be scaled to {meta.exptime_s} s"
                )
            scale = 1.0
        else:
            if meta.exptime_s is None or not dark.exptime_s:
                raise BadInputError(
                    "dark scaling needs the exposure times of the frame and of the master dark"
                )
            scale = float(meta.exptime_s) / float(dark.exptime_s)
        history.append(f"dark x {scale:.4g} subtracted: {dark.name or 'master dark'}")
        cards.append(("DARKCORR", dark.name or "T", f"master dark subtracted, scaled by {scale:.4g}"))
    if bias is None and dark is None and sky_model is None and prep.overscan_level_adu is None:
        log.warning("no bias, dark or overscan: the Poisson term of VAR uses the raw level")
    planes = None
    if flat is not None:
        _check_shape(flat.shape, shape, "flat")
        planes = _flat_planes(flat, cfg.min_flat)
        history.append(f"flat divided: {flat.name or 'master flat'}")
        cards.append(("FLATCORR", flat.name or "T", "master flat divided"))
    if bad_pixels is not None:
        _check_shape(bad_pixels.shape, shape, "bad-pixel mask")
        history.append(
            f"bad pixels flagged: {bad_pixels.name or 'bad-pixel mask'} ({bad_pixels.n_bad} pixels)"
        )
        cards.append(("BPM", bad_pixels.name or "T", "bad-pixel mask applied"))
    removal = _remove_signature_numpy
    if COMPILED and _compilable(sci, prep.saturated, bias, dark, planes, bad_pixels):
        removal = _remove_signature_compiled
    # sci in place; var, mask (NO_DATA, BAD, SAT), nodata, bad made
    var, mask, nodata, any_nodata, bad, n_bad = removal(
        sci, prep.saturated, bias, dark, scale, planes, bad_pixels, gain, rn_adu, sky_model
    )
    n_cr = 0
    fill = bad if cfg.do_interpolate_bad else np.zeros(shape, dtype=bool)
    unusable = (bad | nodata) if any_nodata else bad
    first = None  # the unusable pixels' fills from the usable ones (SCI, VAR)
    added = None  # pixels unusable for the final fills that were usable for the first ones
    if cfg.do_cosmic_rays:
        # detect on an image whose bad pixels are already filled, so that cosmic rays next to a bad
        # column are found; the final interpolation below uses only good, unflagged pixels
        # (filled in place for the detection and put back after it: no copy of the frame)
        kept = None
        if n_bad:
            first = planned_fill([sci, var], _first_fill_plan(unusable))
            kept = sci.ravel()[first.targets]
            sci.ravel()[first.targets] = first.values[0].astype(_F32)
        try:
            cr = _cosmic_rays(sci, var, nodata, gain, rn_e, cfg, history, cards, saturated=prep.saturated)
        finally:
            if kept is not None:
                sci.ravel()[first.targets] = kept
        n_cr = int(np.count_nonzero(cr))
        np.bitwise_or(mask, MASK_DTYPE(MaskBit.CR), out=mask, where=cr)
        if cfg.do_interpolate_cosmic_rays and n_cr:
            fill = fill | cr
            unusable = unusable | cr
            added = cr
    if n_bad or n_cr:
        done = _fill(sci, var, unusable, fill, first, added)
        np.bitwise_or(mask, MASK_DTYPE(MaskBit.INTRP), out=mask, where=done)
        history.append(f"{int(np.count_nonzero(done))} pixels interpolated (bad pixels and cosmic rays)")

    h = fits.Header() if header is None else header.copy()
    for key in ("BZERO", "BSCALE", "BLANK", "DATAMIN", "DATAMAX"):
        h.remove(key, ignore_missing=True, remove_all=True)
    _shift_wcs(h, prep.offset)
    h["BUNIT"] = ("adu", "calibrated, bias/dark subtracted, flat divided")
    h["GAIN"] = (float(gain), "[electron/adu] gain used for VAR")
    h["RDNOISE"] = (float(rn_e), "[electron] read noise used for VAR")
    h["NOISEMOD"] = (noise_model[:68], "where GAIN and RDNOISE come from")
    if sat_level is not None:
        h["SATURATE"] = (float(sat_level), "[adu] raw saturation level (SAT mask bit)")
    for key, value, comment in cards:
        h[key] = (value, comment)
    for line in history:
        h.add_history(f"darkroom.calib: {line}")
    return CalibratedFrame(
        sci=sci.astype(_F32, copy=False),
        mask=mask,
        var=var.astype(_F32, copy=False),
        header=h,
        gain_e_per_adu=float(gain),
        read_noise_e=float(rn_e),
        saturation_adu=None if sat_level is None else float(sat_level),
        n_cosmic_pixels=n_cr,
        n_bad_pixels=n_bad,
        n_saturated=int(np.count_nonzero(prep.saturated)),
        steps=tuple(history),
        noise_model=noise_model,
    )


#: the full-frame steps (bias, dark, variance, flat, MASK bits) in one compiled pass
#: (:mod:`darkroom.calib._process_kernels`) when the arrays allow it; False: the numpy reference
COMPILED = True

_NO_F32 = np.zeros(0, dtype=_F32)
_NO_BOOL = np.zeros(0, dtype=bool)
_NO_U8 = np.zeros(0, dtype=np.uint8)
_BITS = np.array([MaskBit.NO_DATA, MaskBit.BAD, MaskBit.SAT], dtype=MASK_DTYPE)


def _remove_signature_numpy(
    sci: np.ndarray,
    saturated: np.ndarray,
    bias: MasterFrame | None,
    dark: MasterFrame | None,
    scale: float,
    planes: _FlatPlanes | None,
    bad_pixels: BadPixelMask | None,
    gain: float,
    rn_adu: float,
    sky_model: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray, int]:
    """Bias, dark (x ``scale``), VAR [adu^2], flat and the MASK plane's NO_DATA, BAD and SAT
    bits of ``sci`` [adu] (float32, in place): ``(var, mask, nodata, any nodata, bad, n_bad)``.

    The numpy reference of :func:`_remove_signature_compiled`."""
    shape = sci.shape
    var = None
    if bias is not None:
        sci -= bias.data
        # the Poisson term: everything above the bias (sky, objects, dark current)
        var = poisson_read_variance(sci, gain_e_per_adu=gain, read_noise_adu=rn_adu)
    if dark is not None:
        if scale == 1.0:
            sci -= dark.data
        else:
            sci -= dark.data * _F32(scale)
        if var is None:  # a dark with the bias in it: the dark current's shot noise is not counted
            var = poisson_read_variance(sci, gain_e_per_adu=gain, read_noise_adu=rn_adu)
        # the master dark had the master bias subtracted: sci = raw - (1-k) B - k D_frames
        var += dark.variance if scale == 1.0 else dark.variance * _F32(scale * scale)
    if var is None and sky_model is not None:
        # the zero level is unknown: the sky's measured noise plus the Poisson noise of what
        # stands above the sky
        level, sky_sigma = sky_model
        var = poisson_read_variance(sci - _F32(level), gain_e_per_adu=gain, read_noise_adu=sky_sigma)
    if var is None:
        var = poisson_read_variance(sci, gain_e_per_adu=gain, read_noise_adu=rn_adu)
    if bias is not None and scale != 1.0:
        var += bias.variance * _F32((1.0 - scale) ** 2)

    nodata = ~np.isfinite(sci)
    any_nodata = bool(nodata.any())
    bad = np.zeros(shape, dtype=bool)
    if planes is not None:
        if planes.no_response is not None:
            bad |= planes.no_response
        # sci /= F, then var = (var + sci^2 var_F) / F^2 (variance.flat_divided_variance), by rows
        divide_by_flat(sci, var, planes.data, planes.variance, planes.square)
    if bad_pixels is not None:
        bad |= bad_pixels.mask
    mask = np.zeros(shape, dtype=MASK_DTYPE)
    if any_nodata:
        bad &= ~nodata
        mask[nodata] |= MaskBit.NO_DATA
        sci[nodata] = np.nan
        var[nodata] = np.nan
    np.bitwise_or(mask, MASK_DTYPE(MaskBit.BAD), out=mask, where=bad)
    np.bitwise_or(mask, MASK_DTYPE(MaskBit.SAT), out=mask, where=saturated)
    return var, mask, nodata, any_nodata, bad, int(np.count_nonzero(bad))


def _compilable(sci, saturated, bias, dark, planes, bad_pixels) -> bool:
    """Whether :func:`_remove_signature_compiled` takes these arrays: float32 planes (the
    no-response and the saturation masks bool, the bad-pixel reasons uint8), C-ordered, of
    ``sci``'s shape (anything else, e.g. a float64 master, goes the numpy way)."""
    arrays = [(sci, _F32), (saturated, np.bool_)]
    if bias is not None:
        arrays += [(bias.data, _F32), (bias.variance, _F32)]
    if dark is not None:
        arrays += [(dark.data, _F32), (dark.variance, _F32)]
    if planes is not None:
        arrays += [(planes.data, _F32), (planes.square, _F32)]
        if planes.variance is not None:
            arrays.append((planes.variance, _F32))
        if planes.no_response is not None:
            arrays.append((planes.no_response, np.bool_))
    if bad_pixels is not None:
        arrays.append((bad_pixels.reasons, np.uint8))
    return sci.ndim == 2 and all(
        isinstance(a, np.ndarray) and a.dtype == dt and a.shape == sci.shape and a.flags.c_contiguous
        for a, dt in arrays
    )


def _remove_signature_compiled(
    sci: np.ndarray,
    saturated: np.ndarray,
    bias: MasterFrame | None,
    dark: MasterFrame | None,
    scale: float,
    planes: _FlatPlanes | None,
    bad_pixels: BadPixelMask | None,
    gain: float,
    rn_adu: float,
    sky_model: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray, int]:
    """:func:`_remove_signature_numpy` in one pass (:func:`darkroom.calib._process_kernels.
    remove_signature`), bit for bit."""
    from ._process_kernels import remove_signature

    sky = sky_model is not None and bias is None and dark is None  # VAR from the sky model
    level, rn = sky_model if sky else (0.0, rn_adu)
    shape = sci.shape
    var = np.empty(shape, dtype=_F32)
    mask = np.empty(shape, dtype=MASK_DTYPE)
    nodata = np.empty(shape, dtype=bool)
    bad = np.empty(shape, dtype=bool)
    has_flat_var = planes is not None and planes.variance is not None
    has_no_resp = planes is not None and planes.no_response is not None
    flags = np.array(
        [
            bias is not None,
            dark is not None,
            scale != 1.0,
            bias is not None and scale != 1.0,
            planes is not None,
            has_flat_var,
            has_no_resp,
            bad_pixels is not None,
            sky,
        ],
        dtype=bool,
    )
    n_nodata, n_bad = remove_signature(
        sci.reshape(-1),
        var.reshape(-1),
        mask.reshape(-1),
        nodata.reshape(-1),
        bad.reshape(-1),
        _NO_F32 if bias is None else bias.data.reshape(-1),
        _NO_F32 if bias is None else bias.variance.reshape(-1),
        _F32((1.0 - scale) ** 2),
        _NO_F32 if dark is None else dark.data.reshape(-1),
        _F32(scale),
        _NO_F32 if dark is None else dark.variance.reshape(-1),
        _F32(scale * scale),
        _F32(1.0 / gain),  # as variance.poisson_read_variance rounds them
        _F32(rn**2),
        _F32(level),
        _NO_F32 if planes is None else planes.data.reshape(-1),
        planes.variance.reshape(-1) if has_flat_var else _NO_F32,
        _NO_F32 if planes is None else planes.square.reshape(-1),
        planes.no_response.reshape(-1) if has_no_resp else _NO_BOOL,
        _NO_U8 if bad_pixels is None else bad_pixels.reasons.reshape(-1),
        saturated.reshape(-1),
        flags,
        _BITS,
    )
    return var, mask, nodata, bool(n_nodata), bad, int(n_bad)


#: the last first-fill mask and its plan: the frames of a night share their bad pixels
_first_fill: tuple[np.ndarray, FillPlan] | None = None


def _first_fill_plan(unusable: np.ndarray) -> FillPlan:
    """The :func:`~darkroom.calib.interp.fill_plan` of every unusable pixel from the usable ones
    (radius ``_FILL_RADIUS`` first), made once while frames come with the same unusable pixels."""
    global _first_fill
    hit = _first_fill
    if hit is not None and hit[0].shape == unusable.shape and np.array_equal(hit[0], unusable):
        return hit[1]
    plan = fill_plan(unusable, np.flatnonzero(unusable), radius_pix=_FILL_RADIUS)
    _first_fill = (unusable.copy(), plan)
    return plan


def _fill(
    sci: np.ndarray,
    var: np.ndarray,
    unusable: np.ndarray,
    fill: np.ndarray,
    first: NeighbourFill | None,
    added: np.ndarray | None,
) -> np.ndarray:
    """Fill the ``fill`` pixels of SCI and VAR in place from the pixels that are not ``unusable``
    (as :func:`~darkroom.calib.interp.interpolate_masked` does); returns the pixels filled.

    ``first`` holds fills made before the cosmic rays were known, from all but ``added`` of
    those sources: a pixel keeps its first fill when it came from the smallest window and no
    pixel of ``added`` lies in that window (the same sources, the same values, bit for bit);
    the cosmic rays and the bad pixels next to them are filled anew.
    """
    targets = np.flatnonzero(fill)
    fills = []
    if first is not None and first.targets.size:
        reuse = fill.ravel()[first.targets] & (first.radius == _FILL_RADIUS)
        if added is not None:
            reuse[reuse] = ~window_touches(added, first.targets[reuse], _FILL_RADIUS)
        fills.append((first.targets[reuse], [v[reuse] for v in first.values]))
        again = np.ones(fill.size, dtype=bool)
        again[fills[0][0]] = False
        targets = targets[again[targets]]
    new = neighbour_fill([sci, var], unusable, targets, radius_pix=_FILL_RADIUS, check_finite=False)
    fills.append((new.targets, new.values))
    done = np.zeros(fill.shape, dtype=bool)
    for pixels, values in fills:
        for im, v in zip((sci, var), values, strict=True):
            im.ravel()[pixels] = v.astype(im.dtype)
        done.ravel()[pixels] = True
    return done


def _estimate_noise(
    prep: PreparedFrame, bias: MasterFrame | None, gain: float | None
) -> tuple[float, float, tuple[float, float] | None, str]:
    """(gain [e/adu], read noise [e], empirical (sky level, sky noise) [adu] or None, description).

    With the zero level known (a master bias or an overscan): the sky of S adu above zero
    with variance V gives ``gain = S / V`` (read noise taken as part of the sky noise, so
    the gain is a lower bound) and the read noise from the master bias or the overscan.
    Without it the sky level is unknown: the VAR plane is then the measured sky noise
    plus the Poisson noise of what stands above the sky, with the header gain or an
    assumed 1 e/adu.
    """
    base = prep.data
    if bias is not None:
        base = base - bias.data
    level, sky_sigma = sky_level_and_noise(base)
    floor = ""
    if not sky_sigma > 1.0 / math.sqrt(12.0):
        # a noiseless (synthetic or constant) frame: an integer pixel is uncertain by its rounding
        sky_sigma, floor = 1.0 / math.sqrt(12.0), " (the rounding floor: no noise measurable)"
    zero_known = bias is not None or prep.overscan_level_adu is not None
    rn_adu = None
    if bias is not None and bias.read_noise_adu is not None:
        rn_adu = bias.read_noise_adu
    elif prep.overscan_noise_adu is not None:
        rn_adu = prep.overscan_noise_adu
    if zero_known and level > 0:
        if not gain:
            gain = level / max(sky_sigma**2 - (rn_adu or 0.0) ** 2, 1e-6 * sky_sigma**2)
            what = (
                f"gain {gain:.3g} e/adu estimated from the sky ({level:.1f} adu, noise {sky_sigma:.2f} adu)"
            )
        else:
            what = "read noise estimated from the sky"
        if rn_adu is None:
            rn_adu = math.sqrt(max(sky_sigma**2 - level / gain, 0.0))
        return gain, rn_adu * gain, None, f"noise estimated: {what}"
    assumed = not gain
    gain = gain or 1.0
    what = "gain 1 e/adu assumed" if assumed else f"header gain {gain:.3g} e/adu"
    return (
        gain,
        sky_sigma * gain,
        (level, sky_sigma),
        f"noise estimated: zero level unknown, VAR from the sky noise {sky_sigma:.2f} adu{floor}; {what}",
    )


def _cosmic_rays(
    sci, var, nodata, gain, rn_e, cfg: CalibrationConfig, history, cards, *, saturated=None
) -> np.ndarray:
    """Cosmic-ray mask of ``sci`` (bad pixels already filled; ``nodata`` the NO_DATA pixels), with a
    SExtractor sky model (:func:`darkroom.skymesh.sky_background`) and the VAR plane."""
    # saturated pixels take part: on a 12-bit camera many cosmic-ray pixels saturate, and
    # ignoring them would leave their neighbours unflagged; saturated star cores are
    # cleared again by the star guard below
    ignore = nodata  # NO_DATA
    any_ignore = bool(ignore.any())
    work = np.ascontiguousarray(sci, dtype=_F32)
    v = np.ascontiguousarray(var, dtype=_F32)
    if any_ignore:  # NaN (NO_DATA) pixels: give them harmless values, they are masked
        work = np.where(ignore, _F32(0.0), work)
        v = np.where(ignore, np.float32(median(var, where=~ignore)) if not ignore.all() else _F32(1.0), v)
    box = int(min(cfg.sky_box_pix, *work.shape))
    sky = sky_background(work, mask=ignore if any_ignore else None, bw=box, bh=box).back()
    cr_cfg = cfg.cosmic_rays
    stars = noise = extraction = None
    if cfg.star_guard.enabled:
        # one set of sep sources for finding the stars and for guarding them; the noise (the
        # square root of VAR) is computed only where they look (boxes around the stars)
        extraction = StarExtraction(
            work - sky, None, ignore if any_ignore else None, cfg.star_guard, variance=v
        )
        noise = extraction.noise
        stars = find_stars(
            work,
            sky,
            noise,
            ignore=ignore if any_ignore else None,
            saturated=saturated,
            config=cfg.star_guard,
            extraction=extraction,
        )
        objlim = tuned_objlim(cr_cfg.objlim, stars[3])
        if objlim != cr_cfg.objlim:
            cr_cfg = cr_cfg.model_copy(update={"objlim": objlim})
    res = detect_cosmic_rays(
        work,
        gain_e_per_adu=gain,
        read_noise_e=rn_e,
        sky=sky,
        variance=v,
        bad_mask=ignore if any_ignore else None,
        config=cr_cfg,
    )
    cr = res.mask & ~ignore if any_ignore else res.mask
    guard = protect_stars(
        cr,
        work,
        sky,
        v,
        ignore=ignore if any_ignore else None,
        saturated=saturated,
        config=cfg.star_guard,
        stars=stars,
        noise=noise,
        extraction=extraction,
    )
    # saturated pixels took part in the detection but keep their SAT flag only
    cr = guard.mask if saturated is None else guard.mask & ~saturated
    n_cr = int(np.count_nonzero(cr))
    history.append(
        f"cosmic rays: {n_cr} pixels ({res.engine} L.A.Cosmic, objlim {cr_cfg.objlim:.3g}, "
        f"{res.n_iterations} iterations); "
        f"{guard.n_cleared} flags on {guard.n_stars} stars cleared (FWHM {guard.fwhm_pix:.2f} px)"
    )
    cards.append(("CRCORR", f"{res.engine} L.A.Cosmic: {n_cr} px", "cosmic rays flagged (CR)"))
    return cr


def _shift_wcs(h: fits.Header, offset: tuple[int, int]) -> None:
    """Move the WCS reference pixel (and IRAF LTV) by the trim offset (rows, cols)."""
    dy, dx = offset
    if dx == 0 and dy == 0:
        return
    for key, d in (("CRPIX1", dx), ("CRPIX2", dy)):
        if key in h:
            h[key] = h[key] - d
    for key, d in (("LTV1", dx), ("LTV2", dy)):
        h[key] = (h.get(key, 0.0) - d, "offset of the trimmed image (IRAF)")


def adopt_calibrated(
    data: np.ndarray,
    meta,
    *,
    header: fits.Header | None = None,
    gain_e_per_adu: float | None = None,
) -> CalibratedFrame:
    """SCI / MASK / VAR of a frame that is already calibrated (``meta.precalibrated``: a
    flux-density unit such as SDSS nanomaggies); no master is used and the pixels are kept.

    MASK: ``NO_DATA`` where a pixel is not finite. VAR [unit^2]: the sky variance (robust,
    from a SExtractor background rms map, :func:`darkroom.skymesh.sky_background`) plus, when the gain and the counts-per-unit factor are
    known (GAIN and NMGY: ``var += sci * NMGY / gain``), the sources' Poisson term; without
    them VAR holds the sky term only (said in the header and the history). The gain recorded
    is in electrons per image unit (``gain / NMGY``), or None when unknown.
    """
    sci = np.array(data, dtype=_F32, copy=True)
    if sci.ndim != 2:
        raise BadInputError(f"expected a 2-D image, got shape {sci.shape}")
    nodata = ~np.isfinite(sci)
    if nodata.all():
        raise BadInputError("no image data: every pixel is NaN or infinite")
    work = np.where(nodata, _F32(0.0), sci) if nodata.any() else sci
    box = int(min(64, *sci.shape))
    bkg = sky_background(work, mask=nodata if nodata.any() else None, bw=box, bh=box)
    var = np.square(bkg.rms()).astype(_F32)
    history = [f"already calibrated ({meta.image_unit}): pixels kept, no masters"]
    h = fits.Header() if header is None else header.copy()
    per_count = None
    for key in ("NMGY", "BSCALE_CAL"):
        if key in h:
            try:
                per_count = float(h[key])
                break
            except (TypeError, ValueError):
                pass
    gain = gain_e_per_adu or meta.gain_e_per_adu
    gain_unit = None
    if gain and per_count and per_count > 0:
        gain_unit = float(gain) / per_count  # electrons per image unit
        var += np.clip(sci - bkg.back(), 0.0, None) / _F32(gain_unit)
        history.append(f"VAR: sky rms map + Poisson term (gain {gain:g} e-/count, {per_count:g} unit/count)")
    else:
        history.append(
            "VAR: sky rms map only (no gain and counts-per-unit factor: source Poisson noise left out)"
        )
    mask = np.zeros(sci.shape, dtype=MASK_DTYPE)
    if nodata.any():
        mask[nodata] |= MaskBit.NO_DATA
        sci[nodata] = np.nan
        var[nodata] = np.nan
    for key in ("BZERO", "BSCALE", "BLANK"):
        h.remove(key, ignore_missing=True, remove_all=True)
    h["BUNIT"] = (meta.image_unit or h.get("BUNIT", ""), "already calibrated; kept as given")
    h["PRECALIB"] = (True, "the input was already calibrated: no masters applied")
    if meta.unit_zero_point_mag is not None:
        h["UNITZP"] = (float(meta.unit_zero_point_mag), "[mag] AB magnitude of 1 image unit (summed)")
    if gain_unit is not None:
        h["GAIN"] = (gain_unit, "[electron/unit] effective gain used for VAR")
    else:
        h.remove("GAIN", ignore_missing=True)
        h["VARSKY"] = (True, "VAR holds the sky noise only (no gain)")
    for line in history:
        h.add_history(f"darkroom.calib: {line}")
    return CalibratedFrame(
        sci=sci,
        mask=mask,
        var=var,
        header=h,
        gain_e_per_adu=gain_unit,  # type: ignore[arg-type]
        read_noise_e=0.0,
        saturation_adu=None,
        n_cosmic_pixels=0,
        n_bad_pixels=0,
        n_saturated=0,
        steps=tuple(history),
    )


def cut_masters_to_subframe(
    meta,
    shape: tuple[int, int],
    *,
    bias: MasterFrame | None = None,
    dark: MasterFrame | None = None,
    flat: MasterFrame | None = None,
    bad_pixels: BadPixelMask | None = None,
) -> tuple[MasterFrame | None, MasterFrame | None, MasterFrame | None, BadPixelMask | None]:
    """Full-frame masters cut to a subframe read-out (``meta.subframe_x/y``, binned 0-based
    pixels; ``shape`` the frame's (ny, nx) after trimming). Masters of the frame's own shape are
    returned as they are; one that does not cover the subframe raises CalibrationError."""
    import dataclasses

    x0, y0 = int(meta.subframe_x or 0), int(meta.subframe_y or 0)
    ny, nx = shape
    sl = (slice(y0, y0 + ny), slice(x0, x0 + nx))

    def cut_master(m: MasterFrame | None) -> MasterFrame | None:
        if m is None or tuple(m.data.shape) == (ny, nx):
            return m
        if y0 + ny > m.data.shape[0] or x0 + nx > m.data.shape[1]:
            raise CalibrationError(
                f"master {m.kind} {m.data.shape} does not cover the subframe {nx}x{ny} at x={x0}, y={y0}"
            )
        return dataclasses.replace(
            m,
            data=np.ascontiguousarray(m.data[sl]),
            variance=np.ascontiguousarray(m.variance[sl]),
            name=f"{m.name}[{x0 + 1}:{x0 + nx},{y0 + 1}:{y0 + ny}]" if m.name else m.name,
        )

    bpm = bad_pixels
    if bpm is not None and tuple(bpm.reasons.shape) != (ny, nx):
        if y0 + ny > bpm.reasons.shape[0] or x0 + nx > bpm.reasons.shape[1]:
            raise CalibrationError(f"bad-pixel mask {bpm.reasons.shape} does not cover the subframe")
        bpm = dataclasses.replace(
            bpm,
            reasons=np.ascontiguousarray(bpm.reasons[sl]),
            bad_columns=tuple(c - x0 for c in bpm.bad_columns if x0 <= c < x0 + nx),
            bad_rows=tuple(r - y0 for r in bpm.bad_rows if y0 <= r < y0 + ny),
        )
    return cut_master(bias), cut_master(dark), cut_master(flat), bpm


def load_compiled_kernels() -> None:
    """Compile calibrate_frame's kernels (:mod:`darkroom.calib._process_kernels`: the
    signature removal and the fills' weighted sums), or load them from numba's disk cache, now:
    one small synthetic frame with a bias, a scaled dark, a flat and a bad-pixel mask, and one
    bad pixel filled (each kernel's one signature). Called by
    :func:`darkroom.pipeline.kernels.load_compiled_kernels`."""
    shape = (8, 8)
    sci = np.full(shape, 100.0, dtype=_F32)
    ones = np.ones(shape, dtype=_F32)
    planes = _FlatPlanes(ones, ones * _F32(1e-4), ones, np.zeros(shape, dtype=bool))

    def master(kind: str) -> MasterFrame:
        return MasterFrame(
            kind=kind, data=ones, variance=ones, n_inputs=1, rejected_fraction=0.0, mean=1.0, noise=1.0
        )

    var = _remove_signature_compiled(
        sci,
        np.zeros(shape, dtype=bool),
        master("bias"),
        master("dark"),
        0.5,
        planes,
        BadPixelMask(reasons=np.zeros(shape, dtype=np.uint8)),
        1.5,
        4.0,
        None,
    )[0]
    masked = np.zeros(shape, dtype=bool)
    masked[3, 4] = True
    neighbour_fill([sci, var], masked, np.flatnonzero(masked), radius_pix=_FILL_RADIUS, check_finite=False)
