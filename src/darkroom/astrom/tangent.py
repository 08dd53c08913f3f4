"""Gnomonic (TAN) projection between the sky and the tangent plane at a point.

Standard coordinates (xi, eta) are in degrees: xi grows towards the east (increasing
RA), eta towards the north. They equal the FITS intermediate world coordinates of a
TAN WCS whose CRVAL is the tangent point (LONPOLE 180).
"""

from __future__ import annotations

import numpy as np

__all__ = ["from_tangent_plane", "to_tangent_plane"]


def to_tangent_plane(
    ra_deg: np.ndarray, dec_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (xi, eta) [deg] of (ra, dec) [deg] about the tangent point (ra0, dec0).

    Points 90 deg or more from the tangent point have no projection and come back NaN.
    """
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    dra = ra - ra0
    cos_dec = np.cos(dec)
    denom = np.sin(dec) * np.sin(dec0) + cos_dec * np.cos(dec0) * np.cos(dra)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = cos_dec * np.sin(dra) / denom
        eta = (np.sin(dec) * np.cos(dec0) - cos_dec * np.sin(dec0) * np.cos(dra)) / denom
    bad = denom <= 0
    xi = np.where(bad, np.nan, xi)
    eta = np.where(bad, np.nan, eta)
    return np.degrees(xi), np.degrees(eta)


def from_tangent_plane(
    xi_deg: np.ndarray, eta_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) [deg] of standard coordinates (xi, eta) [deg] about the tangent point (ra0, dec0)."""
    xi = np.radians(np.asarray(xi_deg, dtype=float))
    eta = np.radians(np.asarray(eta_deg, dtype=float))
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.mod(np.degrees(ra), 360.0), np.degrees(dec)
