"""One frame's photometry after the apertures: PSF fluxes at the aperture positions, and the
frame's calibration (aperture correction, zero point or the image's own unit, limiting magnitude).

Input is an :func:`~darkroom.phot.aperture.aperture_photometry` table (sky positions added as
``ra``, ``dec`` [deg]); fluxes in the SCI unit (adu), magnitudes per second of exposure
(``-2.5 log10(flux / exptime_s)`` plus the zero point), pixels 0-based.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from astropy.table import Table

from darkroom.detect import estimate_background
from darkroom.phot.apcorr import aperture_correction, psf_minus_aperture
from darkroom.phot.calibrate import calibrate_photometry, calibrate_with_unit, limiting_magnitude
from darkroom.phot.flags import PhotFlag
from darkroom.phot.match import pixel_to_sky
from darkroom.phot.psf import psf_photometry
from darkroom.phot.psfmodel import disc_mask, moffat_psf_model, psf_noise_area
from darkroom.phot.settings import MeasureSettings

__all__ = ["calibrate_frame", "frame_cone", "psf_fluxes_at_apertures"]

log = logging.getLogger(__name__)


def frame_cone(wcs: Any, shape: tuple[int, int], *, margin: float = 1.1) -> tuple[float, float, float]:
    """RA, Dec of a frame's centre and the radius [deg] of a cone holding the whole frame: its
    half diagonal times ``margin``, through its WCS; ``shape`` is ``(ny, nx)``."""
    ny, nx = shape
    ra0, dec0 = pixel_to_sky(wcs, np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0]))
    scale_arcsec = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    return float(ra0[0]), float(dec0[0]), margin * 0.5 * math.hypot(nx, ny) * scale_arcsec / 3600.0


def psf_fluxes_at_apertures(
    phot: Table,
    sci: np.ndarray,
    mask: np.ndarray | None,
    var: np.ndarray | None,
    *,
    fwhm_pix: float,
    settings: MeasureSettings,
    exptime_s: float | None = None,
    moffat_fwhm_pix: float | None = None,
    moffat_beta: float | None = None,
) -> dict[str, Any]:
    """PSF fit at the aperture positions (held fixed) replaces the measurement columns (in place).

    The model is the frame's Moffat fit (``moffat_fwhm_pix``, ``moffat_beta``: pixel-integrated,
    unit total flux) when ``settings.psf_moffat`` and the fit exists, else ``settings.psf.model``;
    the background a mesh with every source masked out to ``psf_background_mask_fwhm`` FWHM.
    ``flux, flux_err`` [adu] (total PSF flux), ``snr``, ``mag_inst, mag_inst_err`` and ``flags``
    come from :func:`~darkroom.phot.psf_photometry`; FORCED keeps its meaning here (no detection
    matched), BLENDED means a star fitted together with others. The aperture columns
    (``flux_ap{k}``, ...) stay, the reference aperture's magnitude as ``mag_inst_ap``; the fit adds
    ``psf_flags`` (photutils' bits), ``qfit``, ``cfit``, ``group_id``, ``group_size``. Returns the
    entries of the frame's calibration record that describe the fit.
    """
    model = None
    info: dict[str, Any] = {"psf_model": settings.psf.model}
    m_fwhm = float(moffat_fwhm_pix or np.nan)
    beta = float(moffat_beta or np.nan)
    if settings.psf_moffat and np.isfinite(m_fwhm) and np.isfinite(beta) and m_fwhm > 0 and beta > 1:
        fwhm_pix = m_fwhm
        model = moffat_psf_model(fwhm_pix, beta, half_size_pix=math.ceil(4.0 * fwhm_pix) + 1)
        info = {"psf_model": "moffat", "psf_beta": beta}
    elif settings.psf_moffat:
        log.warning("no Moffat fit in the frame's catalog: PSF model %r instead", settings.psf.model)
    x = np.asarray(phot["x"], float)
    y = np.asarray(phot["y"], float)
    background = None
    if settings.psf_background_mask_fwhm > 0:
        bad = disc_mask(sci.shape, x, y, radius_pix=settings.psf_background_mask_fwhm * fwhm_pix)
        if mask is not None:
            bad |= (np.asarray(mask).astype(np.int64) & settings.psf.exclude_bits) != 0
        if not bad.all():
            background = estimate_background(sci, mask=bad).level_adu
    fit = psf_photometry(
        sci,
        mask,
        var,
        x,
        y,
        fwhm_pix=fwhm_pix,
        config=settings.psf,
        background=background,
        forced=True,
        psf_model=model,
        exptime_s=exptime_s,
    )
    forced_bit = int(PhotFlag.FORCED)
    flags = np.asarray(fit["flags"], np.int64) & ~forced_bit
    flags |= np.where(np.asarray(phot["forced"], bool), forced_bit, 0)
    phot["mag_inst_ap"] = phot["mag_inst"]
    for col in ("flux", "flux_err", "snr", "mag_inst", "mag_inst_err"):
        phot[col] = np.asarray(fit[col], float)
    phot["flags"] = flags.astype(np.int32)
    for col in ("psf_flags", "qfit", "cfit", "group_id", "group_size"):
        phot[col] = fit[col]
    info["psf_fwhm_pix"] = fwhm_pix
    info["psf_fit_shape_pix"] = int(fit.meta["fit_shape_pix"])
    info["n_psf_blended"] = int(np.count_nonzero(np.asarray(fit["group_size"]) > 1))
    phot.meta.update(info)
    return info


#: the columns :func:`calibrate_photometry` and :func:`calibrate_with_unit` read (sky position,
#: instrumental magnitude, flags, annulus statistics for the limiting magnitude)
_CALIBRATION_READS = ("ra", "dec", "mag_inst", "mag_inst_err", "flags", "bkg_rms", "n_bkg_pix")


def calibrate_frame(
    phot: Table,
    reference: Table | None,
    *,
    settings: MeasureSettings,
    unit_zero_point_mag: float | None = None,
    exptime_s: float | None = None,
    gain_e_per_adu: float | None = None,
    zp_source: str = "",
    reason: str = "",
) -> dict[str, Any]:
    """Calibrate one frame's photometry; adds ``mag, mag_err, ref_index, colour, zp_used`` to ``phot``.

    Aperture magnitudes are first corrected to the largest aperture (``apcorr_mag``); PSF
    fluxes (``settings.method == "psf"``) are total, so the correction then only describes the
    aperture columns, beside the PSF-minus-aperture check of the PSF normalisation. The zero
    point is the image unit's (``unit_zero_point_mag``: an already-calibrated survey frame),
    else fitted with colour term against ``reference`` (columns ``ra, dec, mag`` [, ``mag_err``,
    ``colour``]), else none (instrumental magnitudes). ``zp_flag`` names an implausible
    zero-point scatter (over ``max_zp_rms_mag``). The ``limit_n_sigma`` limiting magnitude uses the
    reference aperture, or for PSF fluxes a disc of the fit's noise-equivalent area.
    ``zp_source`` and ``reason`` say where the reference came from / why there is none.
    Returns the frame's calibration record (JSON-able values).
    """
    cfg = settings
    psf = cfg.method == "psf"
    apcorr, apcorr_err, n_apcorr = (0.0, None, 0)
    if cfg.do_aperture_correction:
        apcorr, apcorr_err, n_apcorr = aperture_correction(phot, min_snr=cfg.apcorr_min_snr)
    extra: dict[str, Any] = {}
    if psf:
        extra["aperture_apcorr_mag"] = apcorr
        extra["psf_minus_aperture_mag"], extra["n_psf_aperture"] = psf_minus_aperture(
            phot, min_snr=cfg.apcorr_min_snr
        )
        apcorr = 0.0
    else:
        phot["mag_inst_ap"] = phot["mag_inst"]
        phot["mag_inst"] = np.asarray(phot["mag_inst"], float) + apcorr
    # both calibrations return a copy of their input with five columns added: hand them only the
    # columns they read (a third of a frame's ~30; each column copied costs ~40 us) and the meta
    read = [c for c in _CALIBRATION_READS if c in phot.colnames]
    slim = Table([phot[c] for c in read], names=read, meta=phot.meta, copy=False)
    if unit_zero_point_mag is not None:
        result, calibrated = calibrate_with_unit(slim, float(unit_zero_point_mag), exptime_s=exptime_s)
        zp_source, reason = "image unit", ""
    else:
        zp_cfg = cfg.zero_point.model_copy(
            update={
                "ra_col": "ra",
                "dec_col": "dec",
                "ref_ra_col": "ra",
                "ref_dec_col": "dec",
                "ref_mag_col": "mag",
                "ref_mag_err_col": "mag_err"
                if reference is not None and "mag_err" in reference.colnames
                else None,
                "ref_colour_col": "colour" if cfg.ref_colour_columns else None,
            }
        )
        result, calibrated = calibrate_photometry(
            slim, reference, config=zp_cfg, n_sigma_limit=cfg.limit_n_sigma
        )
    zp_flag = None
    if result.zp is not None and result.rms is not None and result.rms > cfg.max_zp_rms_mag:
        zp_flag = (
            f"implausible zero-point scatter: rms {result.rms:.3f} mag > {cfg.max_zp_rms_mag:g} "
            f"({zp_source}; wrong band or catalogue?)"
        )
    for col in ("mag", "mag_err", "ref_index", "colour", "zp_used"):
        phot[col] = calibrated[col]
    mag_limit = result.mag_limit
    radii = phot.meta["aperture_radii_pix"]
    ref_ap = int(phot.meta["ref_aperture"])
    if len(phot) and np.isfinite(np.asarray(phot["bkg_rms"], float)).any():
        sky_rms = float(np.nanmedian(np.asarray(phot["bkg_rms"], float)))
        radius_pix = float(radii[ref_ap])
        n_bkg: float | None = float(np.median(np.asarray(phot["n_bkg_pix"], float)))
        if psf:
            # a PSF fit's sky noise is that of an aperture of the PSF's noise-equivalent area
            noise_area = psf_noise_area(phot, sky_rms)
            extra["psf_noise_area_pix"] = noise_area
            radius_pix = math.sqrt(noise_area / math.pi) if noise_area else radius_pix
            n_bkg = None
        mag_limit = limiting_magnitude(
            zp=(result.zp if result.zp is not None else 0.0) + apcorr,
            sky_rms=sky_rms,
            radius_pix=radius_pix,
            n_sigma=cfg.limit_n_sigma,
            n_bkg_pix=n_bkg,
            exptime_s=exptime_s,
            gain_e_per_adu=gain_e_per_adu,
        )
    return {
        "mag_system": "calibrated" if result.zp is not None else "instrumental",
        "zp": result.zp,
        "zp_err": result.zp_err,
        "colour_term": result.colour_term if result.zp is not None else None,
        "colour_term_err": result.colour_term_err,
        "colour_fitted": result.colour_fitted,
        "n_matched": result.n_matched,
        "n_used": result.n_used,
        "rms_mag": result.rms,
        "mag_limit": mag_limit,
        "limit_n_sigma": cfg.limit_n_sigma,
        "apcorr_mag": apcorr,
        "apcorr_err": apcorr_err,
        "n_apcorr": n_apcorr,
        "reason": reason or result.reason,
        "zp_source": zp_source if result.zp is not None else None,
        "zp_flag": zp_flag,
        "aperture_radii_pix": [float(r) for r in radii],
        "ref_aperture": ref_ap,
        "fwhm_pix": phot.meta.get("fwhm_pix"),
        **extra,
    }
