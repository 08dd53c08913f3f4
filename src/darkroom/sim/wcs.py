"""The truth astrometry: a TAN projection with SIP distortion and a drifting pointing.

The distortion is fixed to the detector (SIP polynomials about CRPIX, the detector
centre); the pointing drift moves CRVAL. ``CRPIX`` is 1-based as in FITS; every
function here takes and returns 0-based pixel positions (sep convention) and converts
in :func:`sky_to_pixel` / :func:`pixel_to_sky` only.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from darkroom.sim.config import SimConfig

__all__ = ["base_wcs_header", "frame_wcs", "perturbed_wcs", "pixel_to_sky", "sky_to_pixel"]

_SIP_ORDER = 3
_INV_ORDER = 4


def _sip_coefficients(config: SimConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Forward SIP terms A_p_q, B_p_q: a barrel term plus a weaker quadratic one."""
    ny, nx = config.shape
    r_corner = math.hypot(nx / 2.0, ny / 2.0)
    amp = config.sip_amplitude_pix
    kappa = amp / r_corner**3
    quad = 0.25 * amp / r_corner**2
    a = {"A_3_0": kappa, "A_1_2": kappa, "A_2_0": quad, "A_1_1": -0.5 * quad}
    b = {"B_2_1": kappa, "B_0_3": kappa, "B_0_2": -0.5 * quad, "B_1_1": 0.3 * quad}
    return a, b


def _poly(coeffs: dict[str, float], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(u)
    for key, c in coeffs.items():
        _, p, q = key.split("_")
        out += c * u ** int(p) * v ** int(q)
    return out


def _fit_inverse(a: dict[str, float], b: dict[str, float], nx: int, ny: int) -> tuple[dict, dict]:
    """Least-squares AP/BP (order 4) so that ``u = U + AP(U, V)`` where ``U = u + A(u, v)``."""
    u, v = np.meshgrid(np.linspace(-nx / 2 - 20, nx / 2 + 20, 25), np.linspace(-ny / 2 - 20, ny / 2 + 20, 25))
    u, v = u.ravel(), v.ravel()
    uu = u + _poly(a, u, v)
    vv = v + _poly(b, u, v)
    terms = [(p, q) for p in range(_INV_ORDER + 1) for q in range(_INV_ORDER + 1 - p)]
    scale = max(nx, ny) / 2.0
    design = np.stack([(uu / scale) ** p * (vv / scale) ** q for p, q in terms], axis=1)
    cu, *_ = np.linalg.lstsq(design, u - uu, rcond=None)
    cv, *_ = np.linalg.lstsq(design, v - vv, rcond=None)
    ap = {f"AP_{p}_{q}": float(c / scale ** (p + q)) for (p, q), c in zip(terms, cu, strict=True)}
    bp = {f"BP_{p}_{q}": float(c / scale ** (p + q)) for (p, q), c in zip(terms, cv, strict=True)}
    return ap, bp


def base_wcs_header(config: SimConfig, *, crval: tuple[float, float] | None = None) -> fits.Header:
    """TAN-SIP header of the nominal pointing (CRVAL = field centre unless given)."""
    ny, nx = config.shape
    scale = config.pixel_scale_arcsec / 3600.0
    th = math.radians(config.rotation_deg)
    ra, dec = crval if crval is not None else (config.ra_deg, config.dec_deg)
    h = fits.Header()
    h["WCSAXES"] = 2
    h["CTYPE1"] = "RA---TAN-SIP"
    h["CTYPE2"] = "DEC--TAN-SIP"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    h["CRVAL1"] = float(ra)
    h["CRVAL2"] = float(dec)
    h["CRPIX1"] = (nx + 1) / 2.0  # 1-based centre of the detector
    h["CRPIX2"] = (ny + 1) / 2.0
    h["CD1_1"] = -scale * math.cos(th)
    h["CD1_2"] = scale * math.sin(th)
    h["CD2_1"] = scale * math.sin(th)
    h["CD2_2"] = scale * math.cos(th)
    a, b = _sip_coefficients(config)
    ap, bp = _fit_inverse(a, b, nx, ny)
    h["A_ORDER"] = _SIP_ORDER
    for k, val in a.items():
        h[k] = val
    h["B_ORDER"] = _SIP_ORDER
    for k, val in b.items():
        h[k] = val
    h["AP_ORDER"] = _INV_ORDER
    for k, val in ap.items():
        h[k] = val
    h["BP_ORDER"] = _INV_ORDER
    for k, val in bp.items():
        h[k] = val
    return h


def pixel_to_sky(wcs: WCS, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(RA, Dec) [deg] of 0-based pixel positions, SIP included."""
    ra, dec = wcs.all_pix2world(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 0)
    return np.asarray(ra), np.asarray(dec)


def sky_to_pixel(wcs: WCS, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel positions of (RA, Dec) [deg], SIP inverted iteratively to 1e-8 pixel."""
    x, y = wcs.all_world2pix(
        np.asarray(ra, dtype=float), np.asarray(dec, dtype=float), 0, tolerance=1e-8, maxiter=50, quiet=True
    )
    return np.asarray(x), np.asarray(y)


def frame_wcs(base: fits.Header, dx_pix: float, dy_pix: float, *, base_wcs: WCS | None = None) -> fits.Header:
    """Header of a frame whose stars are displaced by (dx, dy) pixels from the base pointing.

    ``base_wcs`` (``WCS(base)``) may be passed to save parsing the header again.
    """
    wcs = base_wcs if base_wcs is not None else WCS(base)
    x0 = base["CRPIX1"] - 1.0 - dx_pix
    y0 = base["CRPIX2"] - 1.0 - dy_pix
    ra, dec = pixel_to_sky(wcs, np.array([x0]), np.array([y0]))
    out = base.copy()
    out["CRVAL1"] = float(ra[0]) % 360.0
    out["CRVAL2"] = float(dec[0])
    return out


def perturbed_wcs(
    truth: fits.Header, *, shift_arcsec: float, rotation_deg: float, rng: np.random.Generator
) -> fits.Header:
    """A plain TAN header (no SIP) off by ``shift_arcsec`` in CRVAL and up to ``rotation_deg`` in angle."""
    out = fits.Header()
    pa = rng.uniform(0, 2 * math.pi)
    d_dec = shift_arcsec / 3600.0 * math.cos(pa)
    d_ra = shift_arcsec / 3600.0 * math.sin(pa) / math.cos(math.radians(truth["CRVAL2"]))
    rot = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    cd = np.array([[truth["CD1_1"], truth["CD1_2"]], [truth["CD2_1"], truth["CD2_2"]]])
    r = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    cd = r @ cd
    out["WCSAXES"] = 2
    out["CTYPE1"] = "RA---TAN"
    out["CTYPE2"] = "DEC--TAN"
    out["CUNIT1"] = "deg"
    out["CUNIT2"] = "deg"
    out["RADESYS"] = "ICRS"
    out["EQUINOX"] = 2000.0
    out["CRVAL1"] = (truth["CRVAL1"] + d_ra) % 360.0
    out["CRVAL2"] = truth["CRVAL2"] + d_dec
    out["CRPIX1"] = truth["CRPIX1"]
    out["CRPIX2"] = truth["CRPIX2"]
    out["CD1_1"], out["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    out["CD2_1"], out["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    return out
