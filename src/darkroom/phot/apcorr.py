"""Aperture corrections and the PSF-normalisation check, from bright isolated stars of one frame.

Input: the table of :func:`darkroom.phot.aperture_photometry` (``flux_ap<k>``, ``flux_err_ap<k>``,
``flags_ap<k>`` per aperture, meta ``aperture_radii_pix`` and ``ref_aperture``), with the PSF
columns (``flux``, ``flags``, ``group_size``) for :func:`psf_minus_aperture`. Magnitudes.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag
from darkroom.robust import clipped_median

__all__ = ["APCORR_BAD_FLAGS", "aperture_correction", "bright_clean", "psf_minus_aperture"]

#: measurements unfit to measure an aperture correction (or compare PSF and aperture fluxes)
APCORR_BAD_FLAGS = DEFAULT_BAD_FLAGS | int(PhotFlag.BLENDED) | int(PhotFlag.CR) | int(PhotFlag.FORCED)


def bright_clean(phot: Table, *, min_snr: float) -> np.ndarray:
    """Stars that measure aperture corrections: detected, unblended and unflagged in the reference
    and the largest aperture, S/N >= ``min_snr`` in the reference aperture."""
    radii = phot.meta["aperture_radii_pix"]
    ref = int(phot.meta["ref_aperture"])
    big = int(np.argmax(radii))
    f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
    f_big = np.asarray(phot[f"flux_ap{big}"], float)
    flags = np.asarray(phot[f"flags_ap{big}"], np.int64) | np.asarray(phot[f"flags_ap{ref}"], np.int64)
    with np.errstate(all="ignore"):
        snr = f_ref / np.asarray(phot[f"flux_err_ap{ref}"], float)
        return ((flags & APCORR_BAD_FLAGS) == 0) & (snr >= min_snr) & (f_ref > 0) & (f_big > 0)


def psf_minus_aperture(phot: Table, *, min_snr: float) -> tuple[float | None, int]:
    """Median PSF minus largest-aperture magnitude of bright isolated stars [mag]: a check of the
    PSF model's normalisation (~0 when both measure the total flux).

    Isolated: the PSF fluxes of all other measured sources (detected or forced) within the
    largest radius plus one FWHM add up to less than 1 % of the star's; a PSF group of one;
    clean flags in both apertures and the fit.
    """
    if not len(phot):
        return None, 0
    from scipy.spatial import cKDTree

    radii = phot.meta["aperture_radii_pix"]
    big = int(np.argmax(radii))
    reach = float(radii[big]) + float(phot.meta.get("fwhm_pix") or 1.0)
    xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
    flux = np.nan_to_num(np.asarray(phot["flux"], float), nan=0.0).clip(0.0)
    near = cKDTree(xy).query_ball_point(xy, r=reach)
    light = np.array([flux[v].sum() for v in near]) - flux
    use = bright_clean(phot, min_snr=min_snr) & (
        (np.asarray(phot["flags"], np.int64) & APCORR_BAD_FLAGS) == 0
    )
    use &= (np.asarray(phot["group_size"]) == 1) & (light < 0.01 * flux)
    with np.errstate(all="ignore"):
        d = -2.5 * np.log10(
            np.asarray(phot["flux"], float)[use] / np.asarray(phot[f"flux_ap{big}"], float)[use]
        )
    d = d[np.isfinite(d)]
    if d.size < 3:
        return None, int(d.size)
    return float(np.median(d)), int(d.size)


def aperture_correction(phot: Table, *, min_snr: float) -> tuple[float, float | None, int]:
    """Median magnitude difference from the reference to the largest aperture, bright clean stars."""
    radii = phot.meta["aperture_radii_pix"]
    ref = int(phot.meta["ref_aperture"])
    big = int(np.argmax(radii))
    if big == ref or not len(phot):
        return 0.0, None, 0
    f_ref = np.asarray(phot[f"flux_ap{ref}"], float)
    f_big = np.asarray(phot[f"flux_ap{big}"], float)
    use = bright_clean(phot, min_snr=min_snr)
    # only stars with no other detection inside their large aperture and sky annulus: in a
    # crowded field (a globular cluster) the neighbours' light makes every magnitude too bright
    # (SDSS M2, r: 0.05 mag with all bright stars, 0.027 with a flux-sum isolation, 0.007 so)
    from scipy.spatial import cKDTree

    annulus = phot.meta.get("annulus_pix") or [0.0, 0.0]
    reach = float(radii[big]) + max(float(annulus[-1]), float(radii[big]))
    xy = np.column_stack([np.asarray(phot["x"], float), np.asarray(phot["y"], float)])
    if len(xy) > 1:
        dist, _ = cKDTree(xy).query(xy, k=2)
        alone = use & (dist[:, 1] > reach)
        if alone.sum() >= 5:
            use = alone
    with np.errstate(all="ignore"):
        d = -2.5 * np.log10(f_big[use] / f_ref[use])
    if d.size < 3:
        return 0.0, None, int(d.size)
    return clipped_median(d, n_sigma=3.0, floor=1e-3)
