"""Time stamps and airmass of a target seen from a site.

* Input times are MJD in UTC at **mid-exposure** (the registry's convention:
  :attr:`~darkroom.instruments.metadata.FrameMetadata.time_mid_utc`).
* ``bjd_tdb`` is the Barycentric Julian Date in the TDB scale (Eastman et al. 2010):
  ``JD_TDB + Roemer delay`` to the solar-system barycentre, computed with astropy
  (``Time.light_travel_time``, built-in ERFA ephemeris, topocentric site).
* Airmass comes from the time, the site and the target (astropy ``AltAz``, geometric
  altitude without refraction); header AIRMASS keywords are not trusted (ARCSAT's is
  stuck at 13.375 for part of a night, and ACP's OBJCTALT pairs J2000 RA with the
  apparent sidereal time, off by ~0.25 deg in 2025).

A note on ACP's ``BJD-OBS`` keyword: it equals ``HJD-OBS + dT`` with dT = 74.72 s on
2025-06-02, i.e. the heliocentric (not barycentric) UTC date shifted by an
extrapolated Delta-T (Espenak & Meeus polynomial: 62.92 + 0.32217 t + 0.005589 t^2,
t = year - 2000), instead of TDB - UTC = 69.184 s. It therefore differs from a true
BJD_TDB by several seconds (3.1 s for XO-1 on that night). ``HJD-OBS`` itself is the
heliocentric UTC date of the exposure *start* and agrees with :func:`hjd_utc` to 0.02 s.
"""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.time import Time

from darkroom.errors import BadInputError
from darkroom.timeseries.settings import AirmassModel

__all__ = [
    "AirmassModel",
    "airmass",
    "altaz",
    "bjd_tdb",
    "hjd_utc",
    "mid_exposure_mjd",
    "site_location",
]


def site_location(lat_deg: float, lon_deg: float, height_m: float = 0.0) -> EarthLocation:
    """Observatory position from geodetic (WGS84) latitude, east longitude [deg] and height [m]."""
    if not -90.0 <= lat_deg <= 90.0:
        raise BadInputError(f"site latitude {lat_deg} deg is outside -90..90")
    return EarthLocation.from_geodetic(lon=lon_deg * u.deg, lat=lat_deg * u.deg, height=height_m * u.m)


def mid_exposure_mjd(start_mjd_utc: np.ndarray | float, exptime_s: np.ndarray | float) -> np.ndarray:
    """Mid-exposure MJD [UTC] from the start MJD and the exposure time [s]."""
    return np.asarray(start_mjd_utc, float) + 0.5 * np.asarray(exptime_s, float) / 86400.0


def _geocentre() -> EarthLocation:
    return EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)


def _times(mjd_utc: np.ndarray | float, location: EarthLocation | None) -> Time:
    mjd = np.atleast_1d(np.asarray(mjd_utc, dtype=np.float64))
    if not np.all(np.isfinite(mjd)):
        raise BadInputError("mjd_utc contains NaN or inf")
    return Time(mjd, format="mjd", scale="utc", location=location if location is not None else _geocentre())


def _target(ra_deg: float, dec_deg: float) -> SkyCoord:
    if not (np.isfinite(ra_deg) and np.isfinite(dec_deg) and -90.0 <= dec_deg <= 90.0):
        raise BadInputError(f"target position RA={ra_deg}, Dec={dec_deg} deg is not valid")
    return SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")


def bjd_tdb(
    mjd_utc: np.ndarray | float,
    ra_deg: float,
    dec_deg: float,
    *,
    location: EarthLocation | None,
) -> np.ndarray:
    """BJD_TDB [d, full Julian date] of UTC MJDs for an ICRS target seen from ``location``.

    ``location=None`` uses the geocentre (error <= 21 ms).
    """
    t = _times(mjd_utc, location)
    ltt = t.light_travel_time(_target(ra_deg, dec_deg), kind="barycentric")
    tb = t.tdb + ltt
    return np.asarray(tb.jd1, np.float64) + np.asarray(tb.jd2, np.float64)


def hjd_utc(
    mjd_utc: np.ndarray | float,
    ra_deg: float,
    dec_deg: float,
    *,
    location: EarthLocation | None,
) -> np.ndarray:
    """Heliocentric JD in UTC [d] (the older convention of many camera headers)."""
    t = _times(mjd_utc, location)
    ltt = t.light_travel_time(_target(ra_deg, dec_deg), kind="heliocentric")
    th = t.utc + ltt
    return np.asarray(th.jd1, np.float64) + np.asarray(th.jd2, np.float64)


def altaz(
    mjd_utc: np.ndarray | float, ra_deg: float, dec_deg: float, *, location: EarthLocation
) -> tuple[np.ndarray, np.ndarray]:
    """Geometric altitude and azimuth [deg] (no refraction) of the target."""
    t = _times(mjd_utc, location)
    aa = _target(ra_deg, dec_deg).transform_to(AltAz(obstime=t, location=location))
    return np.asarray(aa.alt.deg), np.asarray(aa.az.deg)


def airmass(
    mjd_utc: np.ndarray | float,
    ra_deg: float,
    dec_deg: float,
    *,
    location: EarthLocation,
    model: AirmassModel = "secz",
) -> np.ndarray:
    """Airmass of the target; NaN below the horizon.

    ``"secz"``: sec of the geometric zenith distance (plane-parallel, fine above ~20 deg
    altitude). ``"kasten_young"``: Kasten & Young (1989), finite down to the horizon:
    ``1 / (cos z + 0.50572 (96.07995 - z)^-1.6364)`` with z in degrees.
    """
    alt, _ = altaz(mjd_utc, ra_deg, dec_deg, location=location)
    z = 90.0 - alt
    with np.errstate(invalid="ignore", divide="ignore"):
        if model == "secz":
            am = 1.0 / np.cos(np.radians(z))
        elif model == "kasten_young":
            am = 1.0 / (np.cos(np.radians(z)) + 0.50572 * (96.07995 - z) ** -1.6364)
        else:
            raise BadInputError(f"unknown airmass model {model!r}; use 'secz' or 'kasten_young'")
    return np.where(alt > 0.0, am, np.nan)
