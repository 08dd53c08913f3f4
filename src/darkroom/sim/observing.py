"""Site geometry for the simulation: sidereal time, altitude, airmass, barycentric time.

Closed formulas, no network and no IERS tables, so a night is reproducible offline:
GMST from the IAU 1982 expression with UT1 = UTC, altitude from the J2000
coordinates (precession ignored: < 0.01 in airmass), airmass from Pickering (2002).
BJD_TDB adds the Roemer delay of the geocentre (astropy's built-in ephemeris); the
observer's offset from the geocentre (< 21 ms) is neglected.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
from astropy import units as u
from astropy.coordinates import get_body_barycentric
from astropy.time import Time

__all__ = ["airmass", "altitude_deg", "bjd_tdb", "hour_angle_deg", "jd_utc", "local_sidereal_deg"]

_C_AU_PER_DAY = 173.1446326846693


def jd_utc(times: list[datetime] | datetime) -> np.ndarray:
    """Julian dates (UTC) of naive UTC datetimes."""
    seq = [times] if isinstance(times, datetime) else list(times)
    return np.array([Time(t, scale="utc").jd for t in seq], dtype=float)


def local_sidereal_deg(jd: np.ndarray, lon_deg: float) -> np.ndarray:
    """Local mean sidereal time [deg] at JD (UTC taken as UT1) and east longitude [deg]."""
    d = np.asarray(jd, dtype=float) - 2451545.0
    tc = d / 36525.0
    gmst = 280.46061837 + 360.98564736629 * d + 0.000387933 * tc**2 - tc**3 / 38710000.0
    return np.mod(gmst + lon_deg, 360.0)


def hour_angle_deg(jd: np.ndarray, *, ra_deg: float, lon_deg: float) -> np.ndarray:
    """Hour angle [deg] in (-180, 180] of a target at RA ``ra_deg``."""
    ha = np.mod(local_sidereal_deg(jd, lon_deg) - ra_deg + 180.0, 360.0) - 180.0
    return ha


def altitude_deg(
    jd: np.ndarray, *, ra_deg: float, dec_deg: float, lat_deg: float, lon_deg: float
) -> np.ndarray:
    """Altitude [deg] of a target above the horizon (no refraction)."""
    ha = np.radians(hour_angle_deg(jd, ra_deg=ra_deg, lon_deg=lon_deg))
    lat, dec = math.radians(lat_deg), math.radians(dec_deg)
    sin_alt = math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * np.cos(ha)
    return np.degrees(np.arcsin(np.clip(sin_alt, -1.0, 1.0)))


def airmass(alt_deg: np.ndarray) -> np.ndarray:
    """Relative air mass at altitude ``alt_deg`` [deg] (Pickering 2002); raises below 3 deg."""
    alt = np.asarray(alt_deg, dtype=float)
    if np.any(alt < 3.0):
        raise ValueError(f"target too low for an airmass: altitude {float(alt.min()):.1f} deg < 3 deg")
    return 1.0 / np.sin(np.radians(alt + 244.0 / (165.0 + 47.0 * alt**1.1)))


def bjd_tdb(jd: np.ndarray, *, ra_deg: float, dec_deg: float) -> np.ndarray:
    """Barycentric Julian date (TDB) of UTC Julian dates for a target at (RA, Dec) [deg]."""
    t = Time(np.asarray(jd, dtype=float), format="jd", scale="utc").tdb
    earth = get_body_barycentric("earth", t).xyz.to_value(u.au)  # (3, n)
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    n = np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])
    delay_d = (n @ earth) / _C_AU_PER_DAY
    return t.jd1 + t.jd2 + delay_d
