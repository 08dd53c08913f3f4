"""Astrometric solutions of single frames: header WCS check/refinement and hinted asterism solving.

Layers (tried in this order by :func:`solve_frame`):

a. a header WCS is checked against the reference catalog and refined (TAN-SIP fit);
   without a catalog it is kept, unverified, as the field's reference;
b. a pointing hint (RA, Dec, pixel scale) leads to a triangle-asterism match of the
   brightest sources with the catalog stars within ``search_radius_deg``, then to an
   iterative cross-match and TAN-SIP fit with outlier rejection.

Source positions are 0-based pixel centres (``x``, ``y`` columns of a
:func:`darkroom.detect.detect_sources` catalog); the returned WCS follows astropy
(use ``origin=0`` with these positions). See ``docs/pixel_conventions.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from pydantic import BaseModel, ConfigDict, Field

from darkroom.astrom.asterism import match_asterisms, nearest_pairs
from darkroom.astrom.settings import SolveConfig
from darkroom.astrom.tangent import from_tangent_plane, to_tangent_plane
from darkroom.astrom.transform import AffineTransform
from darkroom.astrom.wcsfit import TanSipModel, fit_tan_sip, pixel_scale_arcsec, sip_order_for
from darkroom.catalogs.reference import angular_separation_deg
from darkroom.errors import BadInputError, SolveError

__all__ = [
    "PointingHint",
    "SolveConfig",
    "SolveResult",
    "check_header_wcs",
    "solve_frame",
    "solve_with_hint",
    "source_positions",
]

log = logging.getLogger(__name__)

#: half-light radius [pixels] of a Gaussian star of FWHM 2 pixels, as sep measures it on the pixel
#: grid (sigma^2 + 1/12 pixel^2): the smallest size of a well-sampled star
_R_HALF_FWHM_2_PIX = math.sqrt(2.0 * math.log(2.0)) * math.sqrt((2.0 / 2.3548200450309493) ** 2 + 1.0 / 12.0)

Quality = Literal["good", "marginal", "failed"]
Method = Literal["header", "header_refined", "hint", "relative", "relative_refined", "reference"]


class PointingHint(BaseModel):
    """Roughly where the telescope pointed and the pixel scale."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ra_deg: float = Field(ge=0, lt=360, description="RA of the image centre (ICRS) [deg]")
    dec_deg: float = Field(ge=-90, le=90, description="Dec of the image centre [deg]")
    pixel_scale_arcsec: float = Field(gt=0, le=3600, description="pixel scale [arcsec/pixel]")


@dataclass
class SolveResult:
    """Outcome of solving one frame."""

    wcs: WCS | None  #: the solution (astropy; origin=0 with darkroom positions); None without one
    method: Method  #: how it was obtained
    n_matched: int  #: matched stars (catalog stars, or reference-frame stars for 'relative')
    rms_arcsec: float  #: rms distance of the matched pairs [arcsec]; NaN when unknown
    rms_pix: float  #: the same [pixels]
    quality: Quality  #: graded by SolveConfig's thresholds
    reason: str = ""  #: why the quality is not 'good' (one line), or what was done
    sip_order: int = 0  #: polynomial order of the fit (1 = TAN, 0 = not fitted)
    to_reference: AffineTransform | None = None  #: pixels of this frame -> pixels of the reference frame
    matches: Table | None = field(
        default=None, repr=False
    )  #: matched pairs (source/catalog indices, residuals)

    @property
    def ok(self) -> bool:
        return self.quality != "failed"

    def to_header(self) -> fits.Header:
        """FITS cards of the solution: the WCS (1-based CRPIX, SIP when fitted) and its figures.

        ``ASTMETH`` method, ``ASTNMAT`` matched stars, ``ASTRMS`` rms [arcsec],
        ``ASTQUAL`` good/marginal/failed. No WCS cards when there is no WCS.
        """
        header = self.wcs.to_header(relax=True) if self.wcs is not None else fits.Header()
        for keyword, value, comment in self.figure_cards():
            header[keyword] = (value, comment)
        return header

    def figure_cards(self) -> list[tuple[str, str | int | float, str]]:
        """(keyword, value, comment) of the cards :meth:`to_header` puts after the WCS."""
        return [
            ("ASTMETH", self.method, "darkroom astrometric method"),
            ("ASTNMAT", int(self.n_matched), "matched stars"),
            (
                "ASTRMS",
                float(self.rms_arcsec) if np.isfinite(self.rms_arcsec) else -1.0,
                "[arcsec] rms of matched stars (-1: unknown)",
            ),
            ("ASTQUAL", self.quality, "good / marginal / failed"),
        ]


def source_columns(*flux_columns: str) -> tuple[str, ...]:
    """The columns of a source table that :func:`source_positions` reads with these flux columns
    (a caller reading a catalogue file need not read the others)."""
    return tuple(dict.fromkeys(("x", "y", *flux_columns, "flux", "sharp", "r_half_pix", "fwhm_pix")))


def source_positions(
    sources: Table, *, flux_column: str = "flux_aper_adu", exclude_sharp: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, flux) of a source table as float arrays; flux is NaN when no flux column exists.

    With ``exclude_sharp``, sources flagged ``sharp`` (hot pixels, cosmic rays) get NaN
    positions, so that every step ignores them, when the image is well sampled: at least
    10 other sources whose median half-light radius ``r_half_pix`` is that of a Gaussian
    of FWHM 2 pixels or more (or, without that column, whose median ``fwhm_pix`` is 2
    pixels or more). In an undersampled image real stars are sharp too, and all sources
    are kept.
    """
    for col in ("x", "y"):
        if col not in sources.colnames:
            raise BadInputError(f"source table has no {col!r} column (0-based pixel positions)")
    x = np.array(sources["x"], dtype=float)
    y = np.array(sources["y"], dtype=float)
    if flux_column in sources.colnames:
        flux = np.asarray(sources[flux_column], dtype=float)
    elif "flux" in sources.colnames:
        flux = np.asarray(sources["flux"], dtype=float)
    else:
        flux = np.full(len(x), np.nan)
    if exclude_sharp and "sharp" in sources.colnames:
        sharp = np.asarray(sources["sharp"], dtype=bool)
        others = ~sharp & np.isfinite(x) & np.isfinite(y)
        if "r_half_pix" in sources.colnames and others.any():
            r_half = float(np.nanmedian(np.asarray(sources["r_half_pix"], dtype=float)[others]))
            well_sampled = r_half >= _R_HALF_FWHM_2_PIX
        elif "fwhm_pix" in sources.colnames and others.any():
            well_sampled = float(np.nanmedian(np.asarray(sources["fwhm_pix"], dtype=float)[others])) >= 2.0
        else:
            well_sampled = True
        if np.count_nonzero(others) >= 10 and well_sampled:
            x[sharp] = np.nan
            y[sharp] = np.nan
    return x, y, flux


def _brightest(x: np.ndarray, y: np.ndarray, flux: np.ndarray, n: int) -> np.ndarray:
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = np.argsort(-np.nan_to_num(flux[ok], nan=-np.inf), kind="stable")
    return ok[order[:n]]


@dataclass
class _Fit:
    model: TanSipModel
    src_index: np.ndarray
    cat_index: np.ndarray
    resid_arcsec: np.ndarray
    dra_arcsec: np.ndarray
    ddec_arcsec: np.ndarray
    n_sources: int
    n_catalog_in_field: int
    radius_pix: float
    chance: float


def _local_scale_deg(forward: Callable, x0: float, y0: float) -> float:
    ra0, dec0 = forward(np.array([x0, x0 + 1.0, x0]), np.array([y0, y0, y0 + 1.0]))
    sx = angular_separation_deg(ra0[0], dec0[0], ra0[1], dec0[1])
    sy = angular_separation_deg(ra0[0], dec0[0], ra0[2], dec0[2])
    return float(np.sqrt(sx * sy))


def _refine(
    x: np.ndarray,
    y: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    forward: Callable,
    *,
    shape: tuple[int, int],
    config: SolveConfig,
) -> _Fit | None:
    """Cross-match sources with catalog stars and fit TAN-SIP, starting from ``forward`` (pixel -> sky)."""
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    with np.errstate(invalid="ignore"):
        ra_c, dec_c = (float(np.ravel(v)[0]) for v in forward(np.array([cx]), np.array([cy])))
        scale_deg = _local_scale_deg(forward, cx, cy)
    if not (np.isfinite(ra_c) and np.isfinite(dec_c) and np.isfinite(scale_deg) and scale_deg > 0):
        return None
    field_radius = 0.5 * math.hypot(nx, ny) * scale_deg
    sep = angular_separation_deg(ra_c, dec_c, cat_ra, cat_dec)
    in_field = np.flatnonzero(sep <= 1.15 * field_radius)
    n_src = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    in_field = in_field[: max(3 * n_src, 300)]  # catalog is brightest first
    if len(in_field) < 3:
        return None
    c_ra, c_dec = cat_ra[in_field], cat_dec[in_field]
    ref_pix = (cx, cy)
    radius = config.match_radius_pix
    model: TanSipModel | None = None
    crval = (ra_c, dec_c)
    previous: tuple | None = None
    fit: _Fit | None = None
    for _ in range(config.n_iterations):
        if model is None:
            with np.errstate(invalid="ignore"):
                s_ra, s_dec = forward(x, y)
            s_xi, s_eta = to_tangent_plane(s_ra, s_dec, *crval)
        else:
            crval = model.crval_deg
            s_xi, s_eta = model.pixel_to_tangent(x, y)
        c_xi, c_eta = to_tangent_plane(c_ra, c_dec, *crval)
        ok_s = np.flatnonzero(np.isfinite(s_xi) & np.isfinite(s_eta))
        ok_c = np.flatnonzero(np.isfinite(c_xi) & np.isfinite(c_eta))
        si, ci, _ = nearest_pairs(
            s_xi[ok_s] / scale_deg,
            s_eta[ok_s] / scale_deg,
            c_xi[ok_c] / scale_deg,
            c_eta[ok_c] / scale_deg,
            radius,
        )
        si, ci = ok_s[si], ok_c[ci]
        if len(si) < 3:
            return fit
        order = config.sip_order or sip_order_for(len(si), max_order=config.max_sip_order)
        while order > 1 and len(si) < (order + 1) * (order + 2) // 2 + 3:
            order -= 1
        inl = np.ones(len(si), dtype=bool)
        for _clip in range(6):
            model = fit_tan_sip(
                x[si][inl],
                y[si][inl],
                c_ra[ci][inl],
                c_dec[ci][inl],
                order=order,
                ref_pix=ref_pix,
                crval_deg=crval,
            )
            m_ra, m_dec = model.pixel_to_world(x[si], y[si])
            dra = (m_ra - c_ra[ci] + 180.0) % 360.0 - 180.0
            dra_arcsec = dra * np.cos(np.radians(c_dec[ci])) * 3600.0
            ddec_arcsec = (m_dec - c_dec[ci]) * 3600.0
            resid = np.hypot(dra_arcsec, ddec_arcsec)
            sigma = max(float(np.median(resid[inl])) / 1.1774, 1e-4)
            new = resid <= config.clip_sigma * sigma
            if new.sum() < max(3, (order + 1) * (order + 2) // 2) or np.array_equal(new, inl):
                break
            inl = new
        scale_deg = model.pixel_scale_arcsec / 3600.0
        rms_pix = float(np.sqrt(np.mean(resid[inl] ** 2))) / model.pixel_scale_arcsec
        density = len(in_field) / (nx * ny)
        fit = _Fit(
            model=model,
            src_index=si[inl],
            cat_index=in_field[ci[inl]],
            resid_arcsec=resid[inl],
            dra_arcsec=dra_arcsec[inl],
            ddec_arcsec=ddec_arcsec[inl],
            n_sources=n_src,
            n_catalog_in_field=len(in_field),
            radius_pix=radius,
            chance=n_src * density * math.pi * radius**2,
        )
        key = (tuple(fit.src_index), tuple(fit.cat_index), order)
        if key == previous:
            break
        previous = key
        radius = max(config.min_match_radius_pix, min(radius, 5.0 * rms_pix))
    return fit


def _grade(fit: _Fit, config: SolveConfig) -> tuple[Quality, str]:
    n = len(fit.src_index)
    rms_pix = float(np.sqrt(np.mean(fit.resid_arcsec**2))) / fit.model.pixel_scale_arcsec
    possible = max(1, min(fit.n_sources, fit.n_catalog_in_field))
    fraction = n / possible
    if n <= 3.0 * fit.chance + 2:
        return "failed", f"{n} matched stars are no more than chance pairs ({fit.chance:.1f} expected)"
    if (
        n >= config.good_min_matches
        and rms_pix <= config.good_rms_pix
        and fraction >= config.min_match_fraction
    ):
        return "good", ""
    if n >= config.marginal_min_matches and rms_pix <= config.marginal_rms_pix:
        return "marginal", (
            f"{n} matched stars ({fraction:.0%} of {possible}), rms {rms_pix:.2f} pix: below the 'good' thresholds"
        )
    return "failed", f"only {n} matched stars with rms {rms_pix:.2f} pix"


def _result(
    fit: _Fit, method: Method, *, shape: tuple[int, int], config: SolveConfig, catalog: Table
) -> SolveResult:
    quality, reason = _grade(fit, config)
    rms_arcsec = float(np.sqrt(np.mean(fit.resid_arcsec**2)))
    matches = Table(
        {
            "source_index": fit.src_index,
            "catalog_index": fit.cat_index,
            "source_id": np.asarray(catalog["source_id"])[fit.cat_index]
            if "source_id" in catalog.colnames
            else fit.cat_index.astype(str),
            "dra_arcsec": fit.dra_arcsec,
            "ddec_arcsec": fit.ddec_arcsec,
        }
    )
    matches["dra_arcsec"].description = "(solution - catalog) RA * cos(Dec) [arcsec]"
    matches["ddec_arcsec"].description = "(solution - catalog) Dec [arcsec]"
    return SolveResult(
        wcs=fit.model.to_wcs(shape=shape),
        method=method,
        n_matched=len(fit.src_index),
        rms_arcsec=rms_arcsec,
        rms_pix=rms_arcsec / fit.model.pixel_scale_arcsec,
        quality=quality,
        reason=reason,
        sip_order=fit.model.order,
        matches=matches,
    )


def _check_sources(x: np.ndarray, y: np.ndarray, config: SolveConfig) -> None:
    n = int(np.count_nonzero(np.isfinite(x) & np.isfinite(y)))
    if n < config.min_sources:
        raise SolveError(
            f"too few stars to solve: {n} sources detected, at least {config.min_sources} needed "
            "(clouds, wrong exposure, or detection threshold too high?)",
            n_sources=n,
        )


def _catalog_arrays(catalog: Table) -> tuple[np.ndarray, np.ndarray]:
    for col in ("ra_deg", "dec_deg"):
        if col not in catalog.colnames:
            raise BadInputError(f"reference catalog has no {col!r} column; read it with darkroom.catalogs")
    return np.asarray(catalog["ra_deg"], dtype=float), np.asarray(catalog["dec_deg"], dtype=float)


def check_header_wcs(
    sources: Table,
    *,
    wcs: WCS,
    shape: tuple[int, int],
    catalog: Table | None = None,
    config: SolveConfig | None = None,
) -> SolveResult:
    """Layer a: check a header WCS against the catalog and refine it (TAN-SIP fit).

    Without a catalog (None or empty) the header WCS is kept, unverified, with
    method 'header' and quality 'marginal'. A header WCS that matches no catalog
    stars comes back with quality 'failed' (and the header WCS, for reference).
    """
    config = config or SolveConfig()
    if wcs is None or not wcs.has_celestial:
        raise BadInputError("the header WCS has no celestial axes")
    celestial = wcs.celestial
    if catalog is None or len(catalog) == 0:
        return SolveResult(
            wcs=celestial.deepcopy(),
            method="header",
            n_matched=0,
            rms_arcsec=float("nan"),
            rms_pix=float("nan"),
            quality="marginal",
            reason="header WCS kept unverified: no reference catalog",
            sip_order=0,
        )
    x, y, _ = source_positions(sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp)
    _check_sources(x, y, config)
    cat_ra, cat_dec = _catalog_arrays(catalog)

    def forward(px, py):
        return celestial.all_pix2world(px, py, 0)

    try:
        fit = _refine(x, y, cat_ra, cat_dec, forward, shape=shape, config=config)
    except (ValueError, np.linalg.LinAlgError) as exc:  # a broken header WCS
        fit = None
        log.debug("header WCS refinement failed: %s", exc)
    if fit is None:
        return SolveResult(
            wcs=celestial.deepcopy(),
            method="header",
            n_matched=0,
            rms_arcsec=float("nan"),
            rms_pix=float("nan"),
            quality="failed",
            reason="header WCS matches no catalog stars within "
            f"{config.match_radius_pix:g} pix (wrong or for another field/binning)",
        )
    result = _result(fit, "header_refined", shape=shape, config=config, catalog=catalog)
    if result.quality == "failed":
        result.reason = f"header WCS does not fit the catalog: {result.reason}"
    return result


def _hint_from_wcs(wcs: WCS, shape: tuple[int, int]) -> PointingHint | None:
    try:
        ny, nx = shape
        ra, dec = wcs.celestial.all_pix2world([(nx - 1) / 2.0], [(ny - 1) / 2.0], 0)
        scale = pixel_scale_arcsec(wcs)
        if np.isfinite(ra[0]) and np.isfinite(dec[0]) and np.isfinite(scale) and scale > 0:
            return PointingHint(ra_deg=float(ra[0]) % 360.0, dec_deg=float(dec[0]), pixel_scale_arcsec=scale)
    except (ValueError, np.linalg.LinAlgError):
        return None
    return None


def solve_with_hint(
    sources: Table,
    *,
    catalog: Table,
    hint: PointingHint,
    shape: tuple[int, int],
    config: SolveConfig | None = None,
) -> SolveResult:
    """Layer b: asterism match around a pointing hint, then TAN-SIP fit with outlier rejection.

    The catalog must cover ``search_radius_deg`` plus the field around the hint
    (a reference table from :mod:`darkroom.catalogs`, brightest first).

    Raises
    ------
    SolveError
        Too few sources, or no asterism match within the search radius.
    """
    config = config or SolveConfig()
    x, y, flux = source_positions(sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp)
    _check_sources(x, y, config)
    cat_ra, cat_dec = _catalog_arrays(catalog)
    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    scale_deg = hint.pixel_scale_arcsec / 3600.0
    field_radius = 0.5 * math.hypot(nx, ny) * scale_deg
    sep = angular_separation_deg(hint.ra_deg, hint.dec_deg, cat_ra, cat_dec)
    xi, eta = to_tangent_plane(cat_ra, cat_dec, hint.ra_deg, hint.dec_deg)
    full_radius = config.search_radius_deg + field_radius
    radii = sorted({min(full_radius, 2.0 * field_radius + 0.02), full_radius})
    n_src = config.n_match_sources
    # (number of sources, reference stars per source and image area): first the nominal
    # densities, then more sources, then a shallower and a deeper catalog
    attempts = [(n_src, 1.0), (2 * n_src, 1.0), (n_src, 0.5), (2 * n_src, 2.0)]
    reasons = []
    for radius in radii:
        in_cone = np.flatnonzero((sep <= radius) & np.isfinite(xi))
        if len(in_cone) < config.asterism.min_matches:
            reasons.append(f"{len(in_cone)} catalog stars within {radius:.2f} deg of the hint")
            continue
        uv = np.column_stack([xi[in_cone] / scale_deg, eta[in_cone] / scale_deg])
        # the part of the cone the catalog covers [pixel^2]: the cone, or less for a catalog extract
        span = np.ptp(uv, axis=0)
        footprint = min(math.pi * (radius / scale_deg) ** 2, float(span[0] * span[1]))
        tried = set()
        for n_use, factor in attempts:
            bright = _brightest(x, y, flux, n_use)
            n_keep = max(
                config.asterism.min_matches,
                math.ceil(config.catalog_density_factor * factor * len(bright) * footprint / (nx * ny)),
            )
            n_keep = min(n_keep, len(in_cone))
            if (len(bright), n_keep) in tried:
                continue
            tried.add((len(bright), n_keep))
            src_xy = np.column_stack([x[bright] - cx, y[bright] - cy])
            try:
                match = match_asterisms(
                    src_xy,
                    uv[:n_keep],
                    scale=1.0,
                    scale_tolerance=config.scale_tolerance,
                    allow_reflection=config.allow_reflection,
                    config=config.asterism,
                )
            except SolveError as exc:
                reasons.append(
                    f"within {radius:.2f} deg, {len(bright)} sources vs {n_keep} stars: {exc.reason}"
                )
                continue
            transform = match.transform

            def forward(px, py, transform=transform):
                u, v = transform.apply(np.asarray(px, float) - cx, np.asarray(py, float) - cy)
                return from_tangent_plane(u * scale_deg, v * scale_deg, hint.ra_deg, hint.dec_deg)

            fit = _refine(x, y, cat_ra, cat_dec, forward, shape=shape, config=config)
            if fit is None:
                reasons.append(f"within {radius:.2f} deg: asterism match did not survive the cross-match")
                continue
            result = _result(fit, "hint", shape=shape, config=config, catalog=catalog)
            if result.quality != "failed":
                log.debug(
                    "hint solve: %d stars, rms %.3f arcsec, order %d",
                    result.n_matched,
                    result.rms_arcsec,
                    result.sip_order,
                )
                return result
            reasons.append(f"within {radius:.2f} deg: {result.reason}")
    raise SolveError(
        f"no astrometric solution near RA {hint.ra_deg:.4f} Dec {hint.dec_deg:+.4f} at "
        f"{hint.pixel_scale_arcsec:.3g} arcsec/pix: " + "; ".join(reasons),
        n_sources=len(x),
    )


def solve_frame(
    sources: Table,
    *,
    shape: tuple[int, int],
    catalog: Table | None = None,
    header_wcs: WCS | None = None,
    hint: PointingHint | None = None,
    config: SolveConfig | None = None,
) -> SolveResult:
    """Solve one frame with what is at hand: header WCS check/refinement (a), then hint (b).

    - header WCS and no catalog: the header WCS is kept (method 'header', unverified);
    - header WCS and catalog: checked and refined ('header_refined'); when it does not
      fit, its centre and scale (or ``hint``) seed the asterism match ('hint');
    - hint and catalog: asterism match ('hint').

    Raises
    ------
    SolveError
        Too few stars, nothing to solve with, or every layer failed (the reason lists why).
    """
    config = config or SolveConfig()
    x, y, _ = source_positions(sources, flux_column=config.flux_column, exclude_sharp=config.exclude_sharp)
    _check_sources(x, y, config)
    reasons = []
    if header_wcs is not None and header_wcs.has_celestial:
        result = check_header_wcs(sources, wcs=header_wcs, shape=shape, catalog=catalog, config=config)
        if result.ok:
            return result
        reasons.append(result.reason)
        log.info("header WCS rejected: %s", result.reason)
        if hint is None:
            hint = _hint_from_wcs(header_wcs, shape)
    if catalog is None or len(catalog) == 0:
        raise SolveError(
            "cannot solve: no reference catalog"
            + ("" if header_wcs is not None else " and no header WCS")
            + "; give a catalog and a pointing hint, or align the frame to a solved one"
        )
    if hint is None:
        raise SolveError("cannot solve: no pointing hint (RA, Dec, pixel scale) and no usable header WCS")
    try:
        return solve_with_hint(sources, catalog=catalog, hint=hint, shape=shape, config=config)
    except SolveError as exc:
        raise SolveError("; ".join([*reasons, exc.reason]), n_sources=len(x)) from exc
