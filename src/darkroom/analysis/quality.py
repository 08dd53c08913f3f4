"""Quality checker: flags bad epochs of a light curve into a ``qflag`` bit column.

Bits (:class:`QFlag`): the survey's own flag bits (``catflags & survey_mask``), darkroom's
photometry flags (``flags & phot_mask``), unusable values, outliers against their
neighbours in time (or against a single same-band exposure minutes away), position offsets beyond ``k`` robust sigma, poor seeing, low
transparency and high airmass. Every test is configurable; a test whose column is absent
is skipped. The checker never removes rows: the finders use ``qflag == 0``.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["QFlag", "QualityConfig", "check_quality"]


class QFlag(enum.IntFlag):
    """Epoch quality bits (0 = good)."""

    SURVEY = 1  #: the survey's flag bits (e.g. ZTF catflags) within ``survey_mask``
    PHOT = 2  #: darkroom photometry flags within ``phot_mask``
    BAD_VALUE = 4  #: non-finite magnitude or error, or error <= 0 or > ``max_magerr``
    OUTLIER = 8  #: disagrees with its neighbours in time
    POSITION = 16  #: position offset beyond ``position_k`` robust sigma
    SEEING = 32  #: FWHM above ``max_fwhm_ratio`` times the median
    TRANSPARENCY = 64  #: transparency below ``min_transparency``
    AIRMASS = 128  #: airmass above ``max_airmass``
    SHALLOW = 256  #: image limiting magnitude within ``min_depth_mag`` of the object's median


class QualityConfig(BaseModel):
    """Settings of :func:`check_quality`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    survey_mask: int = Field(0xFFFF, description="catflags bits that make an epoch bad (ZTF: any bit)")
    phot_mask: int = Field(0xFFFFFFFF, description="darkroom PhotFlag bits that make an epoch bad")
    max_magerr: float = Field(1.0, gt=0, description="larger magnitude errors are unusable [mag]")
    outlier_k: float = Field(
        6.0, gt=0, description="epoch deviating from its neighbours' median by more than k sigma"
    )
    outlier_window_d: float = Field(
        0.3, gt=0, description="neighbours: same band within this time [day]; at least 2 needed"
    )
    pair_window_d: float = Field(
        0.01,
        ge=0,
        description="an epoch with a single same-band neighbour this close in time [day] is tested "
        "against it (the one farther from the band's median is flagged); 0: off",
    )
    position_k: float | None = Field(5.0, gt=0, description="robust sigmas of the position offset; None: off")
    max_fwhm_ratio: float | None = Field(2.0, gt=1, description="FWHM over its median; None: off")
    min_transparency: float | None = Field(0.5, gt=0, description="None: off")
    max_airmass: float | None = Field(2.5, gt=1, description="None: off")
    min_depth_mag: float | None = Field(
        None,
        description="an epoch whose limiting magnitude (limitmag) is brighter than the band's median "
        "magnitude + this is flagged: near the limit only upward fluctuations are measured "
        "(Malmquist bias), which mimic flares; None: off, since the transient finder already gives "
        "such epochs the image's noise (TransientConfig.limit_snr) "
        "(a cut on depth follows the observing conditions and can make periodicities: on the IRSA "
        "reply, 0.5 gives a 0.16-d period with FAP 0.8 %, 0.75 a 0.5-d one with FAP 1e-11)",
    )


def _robust_sigma(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    if x.size < 3:
        return float("nan")
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def check_quality(table: Table, config: QualityConfig | None = None) -> np.ndarray:
    """``qflag`` per row of a light curve (module docstring); columns as in :mod:`.lcfile`."""
    config = config or QualityConfig()
    n = len(table)
    q = np.zeros(n, np.int64)
    cols = table.colnames
    mag = np.asarray(table["mag"], float)
    err = np.asarray(table["magerr"], float)
    if "catflags" in cols:
        q[(np.asarray(table["catflags"], np.int64) & config.survey_mask) != 0] |= QFlag.SURVEY
    if "flags" in cols:
        q[(np.asarray(table["flags"], np.int64) & config.phot_mask) != 0] |= QFlag.PHOT
    bad = ~np.isfinite(mag) | ~np.isfinite(err) | (err <= 0) | (err > config.max_magerr)
    q[bad] |= QFlag.BAD_VALUE
    t = np.asarray(table["mjd"], float)
    bands = np.asarray(table["band"]).astype(str) if "band" in cols else np.zeros(n, "<U1")
    good = q == 0
    for band in np.unique(bands):
        idx = np.flatnonzero((bands == band) & good)
        if idx.size < 3:
            continue
        order = idx[np.argsort(t[idx])]
        tt = t[order]
        lo = np.searchsorted(tt, tt - config.outlier_window_d, "left")
        hi = np.searchsorted(tt, tt + config.outlier_window_d, "right")
        centre = float(np.median(mag[order]))
        for i, (a, c) in enumerate(zip(lo, hi, strict=True)):
            nb = np.r_[order[a:i], order[i + 1 : c]]
            if nb.size == 1 and abs(t[nb[0]] - tt[i]) <= config.pair_window_d:
                # two exposures minutes apart see the same flux of any event the finder can
                # resolve: when they disagree, the one farther from the band's usual level is
                # the artefact (a flare in one and not in the other cannot be told from one)
                j, k = nb[0], order[i]
                if (
                    abs(mag[k] - mag[j]) > config.outlier_k * np.hypot(err[k], err[j])
                    and abs(mag[k] - centre) / err[k] > abs(mag[j] - centre) / err[j]
                ):
                    q[k] |= QFlag.OUTLIER
                continue
            if nb.size < 2:
                continue
            ref = np.median(mag[nb])
            spread = np.hypot(err[order[i]], np.median(err[nb]) / np.sqrt(nb.size))
            if abs(mag[order[i]] - ref) > config.outlier_k * spread:
                q[order[i]] |= QFlag.OUTLIER
    if config.position_k is not None and "ra" in cols and "dec" in cols:
        ra = np.asarray(table["ra"], float)
        dec = np.asarray(table["dec"], float)
        dra = (ra - np.nanmedian(ra) + 180.0) % 360.0 - 180.0
        off = np.hypot(dra * np.cos(np.radians(np.nanmedian(dec))), dec - np.nanmedian(dec)) * 3600.0
        s = _robust_sigma(off)
        if np.isfinite(s) and s > 0:
            q[off > np.nanmedian(off) + config.position_k * s] |= QFlag.POSITION
    if config.max_fwhm_ratio is not None and "fwhm" in cols:
        fwhm = np.asarray(table["fwhm"], float)
        q[fwhm > config.max_fwhm_ratio * np.nanmedian(fwhm)] |= QFlag.SEEING
    if config.min_transparency is not None and "transparency" in cols:
        q[np.asarray(table["transparency"], float) < config.min_transparency] |= QFlag.TRANSPARENCY
    if config.max_airmass is not None and "airmass" in cols:
        q[np.asarray(table["airmass"], float) > config.max_airmass] |= QFlag.AIRMASS
    if config.min_depth_mag is not None and "limitmag" in cols:
        lim = np.asarray(table["limitmag"], float)
        for band in np.unique(bands):
            sel = bands == band
            ok = sel & np.isfinite(mag)
            if ok.sum() == 0:
                continue
            shallow = sel & np.isfinite(lim) & (lim < np.median(mag[ok]) + config.min_depth_mag)
            q[shallow] |= QFlag.SHALLOW
    return q
