"""PSF-fitting photometry for crowded fields (photutils ``PSFPhotometry``).

The PSF is a circular Gaussian of the frame FWHM (pixel-integrated) or an empirical PSF
(ePSF) built from bright isolated stars of the frame. Stars closer than
``group_separation_fwhm`` are fitted together. Positions are 0-based ``(x, y)`` (sep);
fluxes are total PSF fluxes [SCI unit], errors from the VAR plane through the fit
covariance. Background: a map or a constant given by the caller, else a SExtractor
background map of the masked frame (:func:`darkroom.skymesh.sky_background`, sep's values).

photutils (2.x) keeps the model class it builds for a group of n stars in a module-level cache
keyed by n and the parameter names only, and that class holds the PSF it was built with: a
later call with another PSF (the next frame's) could fit its groups with the earlier frame's
PSF, depending on when the garbage collector drops the cached class (different results from
run to run). :func:`psf_photometry` empties that cache before and after each fit, under a lock.

Known limit: for grouped (blended) stars photutils' flux errors come out ~30 % small
(the fitting boxes of a group overlap and shared pixels count more than once); isolated
stars get correct errors (pulls of unit width in the tests).
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np
from astropy.nddata import NDData
from astropy.table import Table
from scipy.spatial import cKDTree

from darkroom.errors import BadInputError, SolveError
from darkroom.phot.aperture import _mask_bits_in_apertures, _native
from darkroom.phot.flags import PhotFlag
from darkroom.phot.settings import PsfConfig
from darkroom.skymesh import sky_background

if TYPE_CHECKING:
    from photutils.psf import ImagePSF

__all__ = ["PsfConfig", "build_epsf", "psf_photometry"]

log = logging.getLogger(__name__)
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)
_PHOTUTILS_FIT_LOCK = threading.Lock()


def _forget_photutils_group_models() -> None:
    """Empty photutils' cache of group model classes (each holds the PSF of the call that made it)."""
    from photutils.psf import _components

    cache = getattr(_components, "_FLAT_MODEL_CACHE", None)
    if cache is not None:
        cache.clear()


def _odd(n: float) -> int:
    k = math.ceil(n)
    return k if k % 2 == 1 else k + 1


def _prepare(
    sci: np.ndarray,
    mask: np.ndarray | None,
    var: np.ndarray | None,
    background: float | np.ndarray | None,
    bits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    sci32 = _native(sci, np.float32)
    bad = ~np.isfinite(sci32)
    if var is not None:
        var32 = _native(var, np.float32)
        bad |= ~np.isfinite(var32) | (var32 <= 0)
    if mask is not None:
        bad |= (_native(mask, np.int32) & bits) != 0
    data = np.where(bad, np.float32(0), sci32)
    if background is None:
        bkg = sky_background(data, mask=bad, bw=64, bh=64, fw=3, fh=3)
        data = data - bkg.back().astype(np.float32)
    else:
        data = data - np.asarray(background, dtype=np.float32)
    err = None
    if var is not None:
        err = np.sqrt(np.where(bad, np.float32(1), _native(var, np.float32)))
    return data, bad, err


def build_epsf(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_pix: float,
    mask: np.ndarray | None = None,
    config: PsfConfig | None = None,
) -> ImagePSF:
    """Empirical PSF from the brightest isolated stars of a background-subtracted image.

    ``x, y`` are candidate star positions (0-based), brightest first is not required:
    stars are ranked by their peak value. ``mask`` is a boolean plane of pixels to ignore.
    Raises :class:`SolveError` with fewer than 5 usable stars.
    """
    config = config or PsfConfig()
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ny, nx = data.shape
    box = _odd(config.epsf_box_fwhm * fwhm_pix)
    half = box // 2
    inside = (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    if config.epsf_isolation_fwhm > 0 and x.size > 1:
        d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        inside &= d[:, 1] > config.epsf_isolation_fwhm * fwhm_pix
    idx = np.flatnonzero(inside)
    if mask is not None and idx.size:
        cx = np.rint(x[idx]).astype(int)
        cy = np.rint(y[idx]).astype(int)
        clean = [
            not mask[j - half : j + half + 1, i - half : i + half + 1].any()
            for i, j in zip(cx, cy, strict=True)
        ]
        idx = idx[np.asarray(clean, bool)]
    if idx.size < 5:
        raise SolveError(f"ePSF: {idx.size} isolated unmasked stars, need 5", n_stars=int(idx.size))
    peaks = data[np.rint(y[idx]).astype(int), np.rint(x[idx]).astype(int)]
    idx = idx[np.argsort(-peaks)][: config.epsf_max_stars]
    from photutils.psf import EPSFBuilder, extract_stars  # photutils (and matplotlib) when used

    stars_tbl = Table({"x": x[idx], "y": y[idx]})
    stars = extract_stars(NDData(data=data.astype(float)), stars_tbl, size=box)
    builder = EPSFBuilder(
        oversampling=config.epsf_oversampling,
        maxiters=config.epsf_maxiters,
        progress_bar=False,
        norm_radius=max(2.5 * fwhm_pix, 3.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epsf, _ = builder(stars)
    return epsf


def psf_photometry(
    sci: np.ndarray,
    mask: np.ndarray | None,
    var: np.ndarray | None,
    x: np.ndarray,
    y: np.ndarray,
    *,
    fwhm_pix: float,
    config: PsfConfig | None = None,
    background: float | np.ndarray | None = None,
    forced: bool = False,
    psf_model: object | None = None,
    exptime_s: float | None = None,
) -> Table:
    """PSF-fitting photometry at (or starting from) the given positions.

    Parameters
    ----------
    sci, mask, var : (ny, nx) arrays
        SCI [U], MASK bit plane (or None), VAR [U^2] (or None: unweighted fit, no errors).
    x, y : arrays
        0-based initial (or, with ``forced=True`` / ``fit_positions=False``, fixed) positions.
    fwhm_pix : float
        Frame FWHM [pixel]: Gaussian model width, fitting box and grouping distance.
    background : float or (ny, nx) array, optional
        Background to subtract [U]; default: a SExtractor background map of the masked frame.
    psf_model : photutils model, optional
        A ready PSF model (e.g. from :func:`build_epsf` on a reference frame).

    Returns
    -------
    astropy.table.Table
        ``x, y`` (fitted) [pixel], ``x_init, y_init``, ``flux, flux_err`` [U] (total
        PSF flux), ``flags`` (:class:`PhotFlag`: mask bits in the fitting box, FORCED,
        NON_POSITIVE, BLENDED for a group of several stars), ``psf_flags`` (photutils'
        own bits), ``qfit``, ``cfit``, ``group_id``, ``group_size``, ``snr``,
        ``mag_inst``, ``mag_inst_err``.
    """
    config = config or PsfConfig()
    if not (fwhm_pix and np.isfinite(fwhm_pix) and fwhm_pix > 0):
        raise BadInputError(f"PSF photometry needs the frame FWHM, got fwhm_pix={fwhm_pix!r}")
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise BadInputError(f"x and y must be non-empty 1-D arrays of one length, got {x.shape}, {y.shape}")
    sci = np.asarray(sci)
    if sci.ndim != 2:
        raise BadInputError(f"SCI must be 2-D, got shape {sci.shape}")
    data, bad, err = _prepare(sci, mask, var, background, config.exclude_bits)

    # photutils (and the matplotlib it imports) load when a PSF fit runs, not with the module
    from photutils.psf import CircularGaussianPRF, PSFPhotometry, SourceGrouper

    model_name = "given" if psf_model is not None else config.model
    if psf_model is None:
        if config.model == "epsf":
            psf_model = build_epsf(data, x, y, fwhm_pix=fwhm_pix, mask=bad, config=config)
        else:
            psf_model = CircularGaussianPRF(fwhm=fwhm_pix)
            psf_model.fwhm.fixed = True
    else:
        psf_model = psf_model.copy()  # type: ignore[attr-defined]
    hold = forced or not config.fit_positions
    psf_model.x_0.fixed = hold  # type: ignore[attr-defined]
    psf_model.y_0.fixed = hold  # type: ignore[attr-defined]
    fit_shape = _odd(2 * config.fit_half_size_fwhm * fwhm_pix)
    grouper = (
        SourceGrouper(min_separation=config.group_separation_fwhm * fwhm_pix)
        if config.group_separation_fwhm > 0
        else None
    )
    phot = PSFPhotometry(
        psf_model,
        (fit_shape, fit_shape),
        grouper=grouper,
        fitter_maxiters=config.fitter_maxiters,
        xy_bounds=None if hold else config.max_shift_pix,
        aperture_radius=fwhm_pix,
        progress_bar=False,
    )
    init = Table({"x": x, "y": y})
    with _PHOTUTILS_FIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _forget_photutils_group_models()
        try:
            res = phot(data, mask=bad, error=err, init_params=init)
        finally:
            _forget_photutils_group_models()
    res.sort("id")
    xf = np.asarray(res["x_fit"], float)
    yf = np.asarray(res["y_fit"], float)
    flux = np.asarray(res["flux_fit"], float)
    flux_err = (
        np.asarray(res["flux_err"], float)
        if "flux_err" in res.colnames and err is not None
        else np.full(x.size, np.nan)
    )
    out = Table()
    out["x"] = xf
    out["y"] = yf
    out["x_init"] = x
    out["y_init"] = y
    out["flux"] = flux
    out["flux_err"] = flux_err
    half = fit_shape / 2.0
    flags = np.zeros(x.size, dtype=np.int64)
    if mask is not None:
        flags |= _mask_bits_in_apertures(_native(mask, np.int32), x, y, np.array([half]))[:, 0]
    if hold:
        flags |= int(PhotFlag.FORCED)
    group_size = (
        np.asarray(res["group_size"], np.int64) if "group_size" in res.colnames else np.ones(x.size, np.int64)
    )
    flags |= np.where(group_size > 1, int(PhotFlag.BLENDED), 0)
    flags |= np.where(~(flux > 0), int(PhotFlag.NON_POSITIVE), 0)
    out["flags"] = flags.astype(np.int32)
    out["psf_flags"] = (
        np.asarray(res["flags"], np.int32) if "flags" in res.colnames else np.zeros(x.size, np.int32)
    )
    for col in ("qfit", "cfit"):
        out[col] = np.asarray(res[col], float) if col in res.colnames else np.full(x.size, np.nan)
    out["group_id"] = (
        np.asarray(res["group_id"], np.int64) if "group_id" in res.colnames else np.arange(x.size)
    )
    out["group_size"] = group_size
    with np.errstate(divide="ignore", invalid="ignore"):
        out["snr"] = flux / flux_err
        rate = flux / exptime_s if exptime_s else flux
        out["mag_inst"] = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, rate, 1.0)), np.nan)
        out["mag_inst_err"] = np.where(flux > 0, _MAG_ERR_FACTOR * flux_err / flux, np.nan)
    out["x"].unit = out["y"].unit = "pix"
    out.meta.update(
        {
            "psf_model": model_name,
            "fwhm_pix": float(fwhm_pix),
            "fit_shape_pix": fit_shape,
            "exptime_s": None if exptime_s is None else float(exptime_s),
            "flag_bits": {flag.name: int(flag) for flag in PhotFlag},
        }
    )
    return out
