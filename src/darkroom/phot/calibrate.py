"""Photometric calibration: zero point and colour term against a reference catalog.

The model is ``m_ref = m_inst + zp + c * colour`` with ``m_inst = -2.5 log10(flux /
exptime_s)`` (so ``zp`` is the magnitude of 1 unit per second, like MaxIm's ZMAG) and
``colour`` the reference catalog's colour index. It is fitted by weighted least squares
with iterative sigma clipping of the residuals. Aperture magnitudes are not corrected
to total: the zero point absorbs the aperture loss of the aperture used.

5-sigma limiting magnitude: the flux whose aperture S/N is ``n_sigma`` given the sky
noise per pixel ``s`` in an aperture of ``n_pix`` pixels with a background from
``n_bkg`` pixels: ``F = n_sigma * sqrt(n_pix s^2 (1 + n_pix / n_bkg))`` (plus the
source's own Poisson noise when the gain is given).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from astropy.table import Table

from darkroom.errors import BadInputError, SolveError
from darkroom.phot.match import match_catalogs
from darkroom.phot.settings import ZeroPointConfig
from darkroom.robust import robust_std

__all__ = [
    "ZeroPointConfig",
    "ZeroPointResult",
    "calibrate_photometry",
    "calibrate_with_unit",
    "fit_zero_point",
    "instrumental_magnitude",
    "limiting_flux",
    "limiting_magnitude",
    "ref_columns_for_filter",
]

log = logging.getLogger(__name__)
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)


@dataclass(frozen=True)
class ZeroPointResult:
    """Outcome of a zero-point fit. ``zp`` is None when no calibration was possible."""

    zp: float | None
    zp_err: float | None
    colour_term: float
    colour_term_err: float | None
    colour_fitted: bool
    n_matched: int
    n_used: int
    rms: float | None
    mag_limit: float | None = None
    reason: str = ""

    @property
    def calibrated(self) -> bool:
        return self.zp is not None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def instrumental_magnitude(
    flux: np.ndarray, flux_err: np.ndarray, *, exptime_s: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``-2.5 log10(flux / exptime_s)`` and ``1.0857 * flux_err / flux`` [mag]; NaN for flux <= 0."""
    flux = np.asarray(flux, dtype=np.float64)
    flux_err = np.asarray(flux_err, dtype=np.float64)
    pos = flux > 0
    safe = np.where(pos, flux, 1.0)
    rate = safe / exptime_s if exptime_s else safe
    mag = np.where(pos, -2.5 * np.log10(rate), np.nan)
    err = np.where(pos, _MAG_ERR_FACTOR * flux_err / safe, np.nan)
    return mag, err


def fit_zero_point(
    m_inst: np.ndarray,
    m_inst_err: np.ndarray,
    m_ref: np.ndarray,
    *,
    m_ref_err: np.ndarray | None = None,
    colour: np.ndarray | None = None,
    config: ZeroPointConfig | None = None,
) -> tuple[ZeroPointResult, np.ndarray]:
    """Fit ``m_ref - m_inst = zp + c * colour`` with sigma clipping.

    Weights are ``1 / (m_inst_err^2 + m_ref_err^2 + sys_err_mag^2)``. Each pass rejects
    stars whose residual lies further from the median residual than ``clip_sigma`` times
    the robust scatter (1.4826 MAD, floored at half the median error) of the stars kept
    (the weighted fit can be pulled by outliers; the median is not); clipping stops when
    the kept set no longer changes. Parameter errors come from the weighted covariance
    scaled by the reduced chi-square when that exceeds 1.

    Returns the result and the boolean array of stars used.
    Raises :class:`SolveError` when fewer than ``min_stars`` stars remain.
    """
    config = config or ZeroPointConfig()
    m_inst = np.asarray(m_inst, float)
    m_inst_err = np.asarray(m_inst_err, float)
    m_ref = np.asarray(m_ref, float)
    n = m_inst.size
    ref_err = np.zeros(n) if m_ref_err is None else np.nan_to_num(np.asarray(m_ref_err, float), nan=0.0)
    col = None if colour is None else np.asarray(colour, float)
    good = np.isfinite(m_inst) & np.isfinite(m_inst_err) & np.isfinite(m_ref)
    fit_c = config.fit_colour_term and col is not None
    if fit_c:
        assert col is not None
        has_col = np.isfinite(col)
        if has_col[good].sum() >= max(config.min_stars, 3):
            good &= has_col
        else:
            fit_c = False
    if fit_c:
        assert col is not None
        span = np.ptp(col[good]) if good.any() else 0.0
        if span < config.min_colour_range:
            log.info("colour range %.3f mag < %.3f: colour term held fixed", span, config.min_colour_range)
            fit_c = False
    c_fixed = config.colour_term
    col_or_zero = np.zeros(n) if col is None else np.nan_to_num(col, nan=0.0)
    y = m_ref - m_inst
    if not fit_c:
        y = y - c_fixed * col_or_zero
    sig2 = m_inst_err**2 + ref_err**2 + config.sys_err_mag**2
    used = good.copy()
    if used.sum() < config.min_stars:
        raise SolveError(
            f"photometric zero point: {int(used.sum())} usable stars, need {config.min_stars}",
            n_stars=int(used.sum()),
        )
    design = np.column_stack([np.ones(n), col_or_zero]) if fit_c else np.ones((n, 1))
    params = np.zeros(design.shape[1])
    cov = np.zeros((design.shape[1], design.shape[1]))
    for _ in range(config.max_iters):
        if used.sum() < max(config.min_stars, design.shape[1] + 1):
            raise SolveError(
                f"photometric zero point: {int(used.sum())} stars left after clipping, "
                f"need {config.min_stars}",
                n_stars=int(used.sum()),
            )
        w = 1.0 / sig2[used]
        a = design[used]
        ata = a.T @ (a * w[:, None])
        params = np.linalg.solve(ata, a.T @ (w * y[used]))
        cov = np.linalg.inv(ata)
        resid = y - design @ params
        r_used = resid[used]
        centre = float(np.median(r_used))
        mad = robust_std(r_used)
        scale = max(mad, float(np.median(np.sqrt(sig2[used]))) * 0.5)
        new_used = good & (np.abs(resid - centre) <= config.clip_sigma * scale)
        if np.array_equal(new_used, used):
            break
        used = new_used
    resid = y - design @ params
    r_used = resid[used]
    dof = max(int(used.sum()) - design.shape[1], 1)
    chi2_red = float(np.sum(r_used**2 / sig2[used]) / dof)
    cov = cov * max(chi2_red, 1.0)
    errs = np.sqrt(np.diag(cov))
    result = ZeroPointResult(
        zp=float(params[0]),
        zp_err=float(errs[0]),
        colour_term=float(params[1]) if fit_c else float(c_fixed),
        colour_term_err=float(errs[1]) if fit_c else None,
        colour_fitted=bool(fit_c),
        n_matched=int(good.sum()),
        n_used=int(used.sum()),
        rms=float(np.sqrt(np.mean(r_used**2))),
    )
    return result, used


def limiting_flux(
    *,
    sky_rms: float,
    radius_pix: float,
    n_sigma: float = 5.0,
    n_bkg_pix: float | None = None,
    gain_e_per_adu: float | None = None,
) -> float:
    """Aperture flux [U] detected at ``n_sigma`` (see the module docstring).

    ``sky_rms`` is the per-pixel sky noise [U]; ``n_bkg_pix`` the number of background
    pixels (None: the background error is neglected); with ``gain_e_per_adu`` the source's
    own Poisson noise (flux [adu] * gain electrons) is included.
    """
    if sky_rms < 0 or radius_pix <= 0 or n_sigma <= 0:
        raise BadInputError(
            f"limiting_flux needs sky_rms >= 0, radius_pix > 0, n_sigma > 0 (got {sky_rms}, {radius_pix}, {n_sigma})"
        )
    n_pix = math.pi * radius_pix**2
    bkg_var = n_pix * sky_rms**2 * (1.0 + (n_pix / n_bkg_pix if n_bkg_pix else 0.0))
    if gain_e_per_adu:
        # F^2 = n^2 (F / g + B)  ->  F = (n^2/g + sqrt(n^4/g^2 + 4 n^2 B)) / 2
        a = n_sigma**2 / gain_e_per_adu
        return float(0.5 * (a + math.sqrt(a * a + 4.0 * n_sigma**2 * bkg_var)))
    return float(n_sigma * math.sqrt(bkg_var))


def limiting_magnitude(
    *,
    zp: float,
    sky_rms: float,
    radius_pix: float,
    n_sigma: float = 5.0,
    n_bkg_pix: float | None = None,
    exptime_s: float | None = None,
    gain_e_per_adu: float | None = None,
) -> float:
    """``zp - 2.5 log10(limiting_flux / exptime_s)`` [mag]; see :func:`limiting_flux`."""
    flux = limiting_flux(
        sky_rms=sky_rms,
        radius_pix=radius_pix,
        n_sigma=n_sigma,
        n_bkg_pix=n_bkg_pix,
        gain_e_per_adu=gain_e_per_adu,
    )
    rate = flux / exptime_s if exptime_s else flux
    return float(zp - 2.5 * math.log10(rate))


def calibrate_photometry(
    phot: Table,
    reference: Table | None,
    *,
    config: ZeroPointConfig | None = None,
    n_sigma_limit: float = 5.0,
) -> tuple[ZeroPointResult, Table]:
    """Match a photometry table to a reference catalog, fit the zero point, add magnitudes.

    ``phot`` is an :func:`~darkroom.phot.aperture.aperture_photometry` table with sky
    positions added (``ra``, ``dec`` [deg]); it needs ``mag_inst``, ``mag_inst_err`` and
    ``flags``. ``reference`` has RA/Dec, a magnitude and optionally its error and a colour
    (column names in the config).

    Returns ``(result, table)``; the table is a copy of ``phot`` with ``ref_index`` (the
    matched reference row, -1 if none), ``colour`` (matched colour, else the median
    colour of the stars used), ``mag`` and ``mag_err`` (``mag_inst + zp + c * colour``,
    errors with ``zp_err`` in quadrature) and ``zp_used`` (a bool for the fit's stars).
    Without a reference catalog or with too few matches, ``mag`` stays instrumental,
    ``result.zp`` is None and ``result.reason`` says why; ``table.meta['mag_system']``
    is ``"calibrated"`` or ``"instrumental"``.
    """
    config = config or ZeroPointConfig()
    out = phot.copy(copy_data=True)
    n = len(out)
    for col in ("mag_inst", "mag_inst_err", "flags"):
        if col not in out.colnames:
            raise BadInputError(f"photometry table lacks column {col!r}")
    m_inst = np.asarray(out["mag_inst"], float)
    m_err = np.asarray(out["mag_inst_err"], float)
    out["ref_index"] = np.full(n, -1, dtype=np.int64)
    out["colour"] = np.full(n, np.nan)
    out["zp_used"] = np.zeros(n, dtype=bool)

    def instrumental(reason: str, n_matched: int = 0) -> tuple[ZeroPointResult, Table]:
        log.info("no photometric calibration: %s", reason)
        out["mag"] = m_inst
        out["mag_err"] = m_err
        out.meta["mag_system"] = "instrumental"
        out.meta["zero_point"] = None
        res = ZeroPointResult(None, None, 0.0, None, False, n_matched, 0, None, None, reason)
        return res, out

    if reference is None or len(reference) == 0:
        return instrumental("no reference catalog")
    for col in (config.ra_col, config.dec_col):
        if col not in out.colnames:
            raise BadInputError(f"photometry table lacks sky column {col!r}: add RA/Dec from the WCS first")
    for col in (config.ref_ra_col, config.ref_dec_col, config.ref_mag_col):
        if col not in reference.colnames:
            raise BadInputError(f"reference catalog lacks column {col!r}")
    i_phot, i_ref, _ = match_catalogs(
        np.asarray(out[config.ra_col], float),
        np.asarray(out[config.dec_col], float),
        np.asarray(reference[config.ref_ra_col], float),
        np.asarray(reference[config.ref_dec_col], float),
        radius_arcsec=config.match_radius_arcsec,
    )
    out["ref_index"][i_phot] = i_ref
    ref_mag = np.asarray(reference[config.ref_mag_col], float)[i_ref]
    ref_err = (
        np.asarray(reference[config.ref_mag_err_col], float)[i_ref]
        if config.ref_mag_err_col and config.ref_mag_err_col in reference.colnames
        else None
    )
    has_colour = bool(config.ref_colour_col and config.ref_colour_col in reference.colnames)
    colour = np.asarray(reference[config.ref_colour_col], float)[i_ref] if has_colour else None
    flags = np.asarray(out["flags"], np.int64)[i_phot]
    sel = (flags & config.bad_flags) == 0
    sel &= np.isfinite(m_inst[i_phot]) & (m_err[i_phot] <= config.max_mag_err)
    if config.ref_mag_min is not None:
        sel &= ref_mag >= config.ref_mag_min
    if config.ref_mag_max is not None:
        sel &= ref_mag <= config.ref_mag_max
    if sel.sum() < config.min_stars:
        return instrumental(
            f"{int(sel.sum())} usable matched stars of {i_phot.size} matches, need {config.min_stars}",
            int(i_phot.size),
        )
    try:
        res, used = fit_zero_point(
            m_inst[i_phot][sel],
            m_err[i_phot][sel],
            ref_mag[sel],
            m_ref_err=None if ref_err is None else ref_err[sel],
            colour=None if colour is None else colour[sel],
            config=config,
        )
    except SolveError as err:
        return instrumental(err.reason, int(i_phot.size))
    if colour is not None:
        out["colour"][i_phot] = colour
    used_rows = i_phot[sel][used]
    out["zp_used"][used_rows] = True
    col_all = np.asarray(out["colour"], float)
    median_colour = float(np.nanmedian(col_all[used_rows])) if has_colour else 0.0
    col_all = np.where(np.isfinite(col_all), col_all, median_colour)
    out["mag"] = m_inst + res.zp + res.colour_term * col_all
    out["mag_err"] = np.sqrt(m_err**2 + (res.zp_err or 0.0) ** 2)
    out["mag"].unit = out["mag_err"].unit = "mag"

    mag_limit = None
    radii = out.meta.get("aperture_radii_pix")
    ref_ap = out.meta.get("ref_aperture", 0)
    if radii and "bkg_rms" in out.colnames and n:
        sky_rms = float(np.nanmedian(np.asarray(out["bkg_rms"], float)))
        n_bkg = (
            float(np.nanmedian(np.asarray(out["n_bkg_pix"], float))) if "n_bkg_pix" in out.colnames else None
        )
        if np.isfinite(sky_rms):
            mag_limit = limiting_magnitude(
                zp=res.zp,  # type: ignore[arg-type]
                sky_rms=sky_rms,
                radius_pix=float(radii[ref_ap]),
                n_sigma=n_sigma_limit,
                n_bkg_pix=n_bkg,
                exptime_s=out.meta.get("exptime_s"),
            )
    res = ZeroPointResult(**{**res.as_dict(), "n_matched": int(i_phot.size), "mag_limit": mag_limit})
    out.meta["mag_system"] = "calibrated"
    out.meta["zero_point"] = res.as_dict()
    return res, out


def calibrate_with_unit(
    phot: Table, unit_zero_point_mag: float, *, exptime_s: float | None = None
) -> tuple[ZeroPointResult, Table]:
    """Magnitudes from the image's own flux unit (an already-calibrated survey frame).

    ``unit_zero_point_mag`` is the AB magnitude of a source whose pixels sum to 1 (22.5 for
    nanomaggies). ``mag_inst`` is ``-2.5 log10(flux / exptime_s)`` (per second, see
    :func:`instrumental_magnitude`), so the zero point in that convention is
    ``unit_zero_point_mag - 2.5 log10(exptime_s)`` and ``mag = unit_zp - 2.5 log10(flux)``.
    The zero point has no error of its own (the survey's calibration is taken as given).
    """
    out = phot.copy(copy_data=True)
    t = exptime_s if exptime_s else None
    zp = float(unit_zero_point_mag) - (2.5 * math.log10(t) if t else 0.0)
    n = len(out)
    out["ref_index"] = np.full(n, -1, dtype=np.int64)
    out["colour"] = np.full(n, np.nan)
    out["zp_used"] = np.zeros(n, dtype=bool)
    out["mag"] = np.asarray(out["mag_inst"], float) + zp
    out["mag_err"] = np.asarray(out["mag_inst_err"], float)
    out["mag"].unit = out["mag_err"].unit = "mag"
    res = ZeroPointResult(zp, 0.0, 0.0, None, False, 0, 0, None, None, "zero point from the image unit")
    out.meta["mag_system"] = "calibrated"
    out.meta["zero_point"] = res.as_dict()
    return res, out


def _band_key(name: str) -> str:
    """A filter or column name reduced to its band: 'sdss_r\'' -> 'r', 'Rc' -> 'rc', 'gmag' -> 'g'."""
    key = name.strip().lower().replace("'", "").replace("prime", "").replace(" ", "").replace("-", "_")
    for prefix in ("sdss_", "sdss", "ps1_", "panstarrs_", "johnson_", "cousins_", "bessell_", "phot_"):
        key = key.removeprefix(prefix)
    for suffix in ("_mean_mag", "_mag", "mag", "_psf", "psf"):
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
            break
    return key


#: filter spellings that name the same band as a catalogue column (after :func:`_band_key`)
_BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "rc": ("r",),
    "ic": ("i",),
    "sr": ("r",),
    "sg": ("g",),
    "si": ("i",),
    "sz": ("z",),
    "su": ("u",),
    "clear": ("g", "r"),
    "cv": ("v", "g"),
    "lum": ("g", "r"),
}

_ERR_PATTERNS = ("{c}_err", "{c}err", "e_{c}", "{c}_error", "{c}_sigma", "e{c}", "{b}_err", "e_{b}", "{b}err")


def ref_columns_for_filter(
    filter_name: str | None,
    columns: list[str],
    *,
    mapping: dict[str, str] | None = None,
) -> tuple[str | None, str | None, str]:
    """The reference catalogue's magnitude and error columns for a frame's filter.

    ``mapping`` (photometry.measure.ref_mag_columns: filter -> column) wins; else a column
    whose name reduces to the filter's band (``r``, ``rmag``, ``r_mag``, ``sdss_r``...; Rc and
    Cousins names to r/i) is taken. The error column is the magnitude column's ``_err``,
    ``err``, ``e_`` ... companion when the catalogue has one.

    Returns ``(mag_column, err_column, how)``; ``mag_column`` is None when no column fits,
    and ``how`` then says why (the frame stays instrumental).
    """
    cols = list(columns)
    lower = {c.lower(): c for c in cols}
    chosen = None
    how = ""
    if filter_name and mapping:
        for key, col in mapping.items():
            if key.strip().lower() == filter_name.strip().lower():
                if col not in cols:
                    return (
                        None,
                        None,
                        f"ref_mag_columns maps {filter_name!r} to {col!r}, not in the catalogue",
                    )
                chosen, how = col, f"ref_mag_columns[{key!r}]"
                break
    if chosen is None and filter_name:
        band = _band_key(filter_name)
        wanted = (band, *_BAND_ALIASES.get(band, ()))
        skip = ("err", "e_", "sigma", "flag", "ra", "dec", "pm", "id")
        for w in wanted:
            for c in cols:
                low = c.lower()
                if low.startswith("e_") or any(t in low for t in ("err", "sigma", "flag")):
                    continue
                if low in skip:
                    continue
                if _band_key(c) == w:
                    chosen, how = c, f"column {c!r} for filter {filter_name!r}"
                    break
            if chosen is not None:
                break
    if chosen is None:
        return (
            None,
            None,
            f"no reference magnitude column for filter {filter_name!r} (set photometry.measure.ref_mag_columns)",
        )
    band = _band_key(chosen)
    err = None
    for pattern in _ERR_PATTERNS:
        cand = pattern.format(c=chosen.lower(), b=band)
        if cand in lower:
            err = lower[cand]
            break
    return chosen, err, how
