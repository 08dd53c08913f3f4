"""Least-squares TAN and TAN-SIP fits of pixel positions to sky positions.

The model: standard coordinates (xi, eta) [deg] about CRVAL are polynomials of
u = x - x_ref, v = y - y_ref, where (x_ref, y_ref) is the 0-based reference pixel.
The linear terms are the CD matrix, the higher ones (times CD^-1) are SIP's A and B;
CRVAL is moved until the constant terms vanish. :meth:`TanSipModel.to_wcs` is the one
place where the 0-based reference pixel becomes the 1-based FITS CRPIX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import proj_plane_pixel_scales

from darkroom.astrom.tangent import from_tangent_plane, to_tangent_plane
from darkroom.errors import SolveError

__all__ = ["TanSipModel", "fit_tan_sip", "pixel_scale_arcsec", "sip_order_for"]


def _terms(order: int) -> list[tuple[int, int]]:
    return [(p, total - p) for total in range(order + 1) for p in range(total, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, terms: list[tuple[int, int]]) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in terms])


def sip_order_for(n_stars: int, *, max_order: int = 3) -> int:
    """Polynomial order a fit of ``n_stars`` pairs supports: >= 8 stars per coefficient per axis.

    Order 1 (plain TAN: 3 coefficients) below 48 stars, order 2 (6) from 48, order 3 (10)
    from 80, order 4 (15) from 120, order 5 (21) from 168; capped at ``max_order``.
    """
    order = 1
    for o in range(2, max_order + 1):
        if n_stars >= 8 * (o + 1) * (o + 2) // 2:
            order = o
    return order


@dataclass(frozen=True)
class TanSipModel:
    """Polynomial tangent-plane model (see the module doc)."""

    crval_deg: tuple[float, float]  #: tangent point (RA, Dec) [deg]
    ref_pix: tuple[float, float]  #: reference pixel (x, y), 0-based
    order: int  #: polynomial order (1 = plain TAN)
    coef_xi: np.ndarray  #: coefficients of xi [deg] for the terms of _terms(order)
    coef_eta: np.ndarray  #: coefficients of eta [deg]

    def pixel_to_tangent(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standard coordinates (xi, eta) [deg] about CRVAL of 0-based pixels."""
        u = np.asarray(x, float) - self.ref_pix[0]
        v = np.asarray(y, float) - self.ref_pix[1]
        design = _design(u.ravel(), v.ravel(), _terms(self.order))
        return (design @ self.coef_xi).reshape(u.shape), (design @ self.coef_eta).reshape(u.shape)

    def pixel_to_world(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(RA, Dec) [deg] of 0-based pixels."""
        xi, eta = self.pixel_to_tangent(x, y)
        return from_tangent_plane(xi, eta, *self.crval_deg)

    @property
    def cd(self) -> np.ndarray:
        """CD matrix [deg/pixel]."""
        terms = _terms(self.order)
        i10, i01 = terms.index((1, 0)), terms.index((0, 1))
        return np.array([[self.coef_xi[i10], self.coef_xi[i01]], [self.coef_eta[i10], self.coef_eta[i01]]])

    @property
    def pixel_scale_arcsec(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.cd))) * 3600.0)

    def to_wcs(self, *, shape: tuple[int, int] | None = None) -> WCS:
        """astropy WCS (TAN, or TAN-SIP with forward A/B and fitted inverse AP/BP).

        ``shape`` (ny, nx) sets the image size and the region where AP/BP are fitted.
        """
        terms = _terms(self.order)
        cd = self.cd
        wcs = WCS(naxis=2)
        wcs.wcs.crval = list(self.crval_deg)
        wcs.wcs.crpix = [self.ref_pix[0] + 1.0, self.ref_pix[1] + 1.0]  # 0-based -> FITS 1-based
        wcs.wcs.cd = cd
        wcs.wcs.radesys = "ICRS"
        if shape is not None:
            wcs.pixel_shape = (int(shape[1]), int(shape[0]))
        if self.order < 2:
            wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
            wcs.wcs.set()
            return wcs
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        cd_inv = np.linalg.inv(cd)
        a = np.zeros((self.order + 1, self.order + 1))
        b = np.zeros_like(a)
        for k, (p, q) in enumerate(terms):
            if p + q >= 2:
                f, g = cd_inv @ np.array([self.coef_xi[k], self.coef_eta[k]])
                a[p, q], b[p, q] = f, g
        # inverse polynomials on a grid over the image (or the fitted region)
        if shape is not None:
            ny, nx = shape
            gx, gy = np.meshgrid(np.linspace(-0.5, nx - 0.5, 40), np.linspace(-0.5, ny - 0.5, 40))
        else:
            half = 1000.0
            gx, gy = np.meshgrid(np.linspace(-half, half, 40), np.linspace(-half, half, 40))
            gx, gy = gx + self.ref_pix[0], gy + self.ref_pix[1]
        u = gx.ravel() - self.ref_pix[0]
        v = gy.ravel() - self.ref_pix[1]
        sip_terms = [t for t in terms if t[0] + t[1] >= 2]
        du = sum(a[p, q] * u**p * v**q for p, q in sip_terms)
        dv = sum(b[p, q] * u**p * v**q for p, q in sip_terms)
        big_u, big_v = u + du, v + dv
        inv_order = self.order + 1
        inv_terms = _terms(inv_order)
        norm = max(np.max(np.abs(big_u)), np.max(np.abs(big_v)), 1.0)
        design = _design(big_u / norm, big_v / norm, inv_terms)
        cu = np.linalg.lstsq(design, u - big_u, rcond=None)[0]
        cv = np.linalg.lstsq(design, v - big_v, rcond=None)[0]
        ap = np.zeros((inv_order + 1, inv_order + 1))
        bp = np.zeros_like(ap)
        for k, (p, q) in enumerate(inv_terms):
            ap[p, q] = cu[k] / norm ** (p + q)
            bp[p, q] = cv[k] / norm ** (p + q)
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
        wcs.wcs.set()
        return wcs


def fit_tan_sip(
    x: np.ndarray,
    y: np.ndarray,
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    *,
    order: int,
    ref_pix: tuple[float, float],
    crval_deg: tuple[float, float] | None = None,
    weights: np.ndarray | None = None,
) -> TanSipModel:
    """Least-squares TAN (order 1) or TAN-SIP (order >= 2) model of pixel -> sky.

    Parameters
    ----------
    x, y
        0-based pixel positions.
    ra_deg, dec_deg
        Their sky positions [deg].
    order
        Polynomial order: 1 = TAN (CD matrix only), 2..5 = SIP of that order.
    ref_pix
        Reference pixel (x, y), 0-based; the image centre keeps SIP terms small.
    crval_deg
        Starting tangent point; the mean sky position when None.
    weights
        Relative weights of the pairs.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ra = np.asarray(ra_deg, float)
    dec = np.asarray(dec_deg, float)
    terms = _terms(order)
    if len(x) < len(terms):
        raise SolveError(f"a TAN-SIP fit of order {order} needs {len(terms)} stars, got {len(x)}")
    if crval_deg is None:
        vec = np.column_stack(
            [
                np.cos(np.radians(dec)) * np.cos(np.radians(ra)),
                np.cos(np.radians(dec)) * np.sin(np.radians(ra)),
                np.sin(np.radians(dec)),
            ]
        ).mean(axis=0)
        crval = (
            float(np.degrees(np.arctan2(vec[1], vec[0])) % 360.0),
            float(np.degrees(np.arcsin(vec[2] / np.linalg.norm(vec)))),
        )
    else:
        crval = (float(crval_deg[0]), float(crval_deg[1]))
    u = x - ref_pix[0]
    v = y - ref_pix[1]
    norm = max(float(np.max(np.abs(u))), float(np.max(np.abs(v))), 1.0)
    design = _design(u / norm, v / norm, terms)
    w = np.ones_like(x) if weights is None else np.sqrt(np.asarray(weights, float))
    design_w = design * w[:, None]
    scale = np.array([norm ** -(p + q) for p, q in terms])
    for _ in range(8):
        xi, eta = to_tangent_plane(ra, dec, *crval)
        c_xi = np.linalg.lstsq(design_w, xi * w, rcond=None)[0] * scale
        c_eta = np.linalg.lstsq(design_w, eta * w, rcond=None)[0] * scale
        if abs(c_xi[0]) < 1e-11 and abs(c_eta[0]) < 1e-11:
            break
        # the sky position of the reference pixel becomes the new tangent point
        new = from_tangent_plane(c_xi[0], c_eta[0], *crval)
        crval = (float(new[0]), float(new[1]))
    c_xi[0] = 0.0
    c_eta[0] = 0.0
    return TanSipModel(
        crval_deg=crval,
        ref_pix=(float(ref_pix[0]), float(ref_pix[1])),
        order=order,
        coef_xi=c_xi,
        coef_eta=c_eta,
    )


def pixel_scale_arcsec(wcs: WCS) -> float:
    """Mean pixel scale [arcsec/pixel] of a celestial WCS at its reference point."""
    # a WCS of the two celestial axes in order is its own celestial part (no copy made)
    celestial = wcs if wcs.naxis == 2 and wcs.wcs.lng == 0 and wcs.wcs.lat == 1 else wcs.celestial
    scales = proj_plane_pixel_scales(celestial)
    return float(np.sqrt(scales[0] * scales[1]) * 3600.0)
