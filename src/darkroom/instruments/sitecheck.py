"""Cross-checks of a header's site longitude and time system against the header itself.

* :func:`check_longitude` -- a longitude keyword may be written west-positive
  (``LONGITUD=110.88`` for Arizona). The sidereal time (``LST-OBS``, or ``HA`` + RA) at
  a known UTC instant fixes the longitude to a fraction of a degree; a UTC offset in a
  local ``DATE-OBS`` (``-07:00``) fixes its sign. The header value is kept when it agrees,
  flipped when its negation agrees, and replaced by the sidereal-time longitude when
  neither does; each decision comes with a warning.
* :func:`check_named_site` -- a header that names a known observatory (``OBSERVAT``,
  ``TELESCOP``; :mod:`darkroom.instruments.sites`) but gives no position gets the site's;
  one whose longitude is the site's negated is flipped; one that disagrees in either sign
  is refused for the site's position. Used when no sidereal time speaks for the site.
* :func:`utc_from_timesys` -- TAI, TT and GPS time stamps converted to UTC with the
  leap-second table of ERFA (no download).

Angles in degrees, longitude east positive; times naive ``datetime``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from darkroom.instruments.sites import KnownSite

__all__ = ["NamedSiteCheck", "check_longitude", "check_named_site", "gmst_deg", "utc_from_timesys"]

_JD_UNIX0 = 2440587.5
_EPOCH = datetime(1970, 1, 1)
# Sidereal-time longitudes are good to well under a degree; an LST-OBS written at the start
# or middle of a 10-minute exposure differs by 2.5 deg at most.
LST_TOLERANCE_DEG = 3.0
# Civil time zones stray from lon/15 by up to ~3 h (western China, Spain with DST).
OFFSET_TOLERANCE_H = 3.5


def gmst_deg(utc: datetime) -> float:
    """Greenwich mean sidereal time [deg, 0..360] at a UTC instant (UT1 ~ UTC; IAU 1982,
    better than a second of time over this century)."""
    jd = _JD_UNIX0 + (utc - _EPOCH).total_seconds() / 86400.0
    d = jd - 2451545.0
    t = d / 36525.0
    gmst_h = 18.697374558 + 24.06570982441908 * d + 0.000026 * t * t
    return (gmst_h * 15.0) % 360.0


def _wrap(angle: float) -> float:
    """Angle folded into -180..180 [deg]."""
    return (angle + 180.0) % 360.0 - 180.0


def check_longitude(
    lon_deg: float | None,
    *,
    utc: datetime | None,
    lst_deg: float | None = None,
    lst_source: str = "LST-OBS",
    utc_offset_h: float | None = None,
) -> tuple[float | None, str | None]:
    """The site longitude the header supports [deg, east positive] and a warning or None.

    Parameters
    ----------
    lon_deg
        The longitude read from the header, taken as east positive.
    utc
        The UTC instant ``lst_deg`` refers to.
    lst_deg
        Local sidereal time at ``utc`` [deg] (``LST-OBS`` x 15, or hour angle + RA).
    utc_offset_h
        The UTC offset of a local time stamp [h], local = UTC + offset.
    """
    if lst_deg is not None and utc is not None:
        implied = _wrap(lst_deg - gmst_deg(utc))
        if lon_deg is None:
            return implied, f"site longitude {implied:+.2f} deg (east) from {lst_source} and the UTC time"
        if abs(_wrap(lon_deg - implied)) <= LST_TOLERANCE_DEG:
            return lon_deg, None
        if abs(_wrap(-lon_deg - implied)) <= LST_TOLERANCE_DEG:
            return -lon_deg, (
                f"site longitude {lon_deg:+.3f} read as west-positive: {lst_source} gives {implied:+.2f} deg "
                f"east; used {-lon_deg:+.3f}"
            )
        return implied, (
            f"site longitude {lon_deg:+.3f} disagrees with {lst_source} ({implied:+.2f} deg east) in either "
            f"sign: refused, used {implied:+.2f}"
        )
    if utc_offset_h is not None and lon_deg is not None and abs(lon_deg) > 15.0 * OFFSET_TOLERANCE_H:
        zone_lon = 15.0 * utc_offset_h
        if abs(_wrap(lon_deg - zone_lon)) > 15.0 * OFFSET_TOLERANCE_H and (
            abs(_wrap(-lon_deg - zone_lon)) <= 15.0 * OFFSET_TOLERANCE_H
        ):
            return -lon_deg, (
                f"site longitude {lon_deg:+.3f} read as west-positive: the time stamp's UTC offset "
                f"{utc_offset_h:+.1f} h puts the site near {zone_lon:+.0f} deg; used {-lon_deg:+.3f}"
            )
    return lon_deg, None


# A header position this close to its named site's is the same site (an observatory's domes
# spread over a few km; 1 deg in longitude moves the local night by 4 min).
NAMED_SITE_TOLERANCE_DEG = 1.0


@dataclass(frozen=True)
class NamedSiteCheck:
    """The site position after the named-site check [deg east, deg, m] and the warning, if any."""

    lon_deg: float
    lat_deg: float
    height_m: float | None
    warning: str | None


def check_named_site(
    lon_deg: float | None,
    lat_deg: float | None,
    height_m: float | None,
    *,
    site: KnownSite,
    named_by: str,
) -> NamedSiteCheck:
    """Check a header's site position against the known site its name identifies.

    Parameters
    ----------
    lon_deg, lat_deg, height_m
        The header's position (longitude read as east positive) or None where absent.
    site
        The known site ``named_by`` (e.g. ``"OBSERVAT='Paul P. Feder Observatory'"``) matches.
    """
    where = f"{site.name} ({site.lat_deg:+.2f}, {site.lon_deg:+.2f})"
    if lon_deg is None or lat_deg is None:
        return NamedSiteCheck(
            site.lon_deg if lon_deg is None else lon_deg,
            site.lat_deg if lat_deg is None else lat_deg,
            site.height_m if height_m is None else height_m,
            f"site position from {named_by}: {where}",
        )
    lat_ok = abs(lat_deg - site.lat_deg) <= NAMED_SITE_TOLERANCE_DEG
    if lat_ok and abs(_wrap(lon_deg - site.lon_deg)) <= NAMED_SITE_TOLERANCE_DEG:
        return NamedSiteCheck(lon_deg, lat_deg, height_m, None)
    if lat_ok and abs(_wrap(-lon_deg - site.lon_deg)) <= NAMED_SITE_TOLERANCE_DEG:
        return NamedSiteCheck(
            -lon_deg,
            lat_deg,
            height_m,
            f"site longitude {lon_deg:+.3f} read as west-positive: {named_by} is {where}; used {-lon_deg:+.3f}",
        )
    return NamedSiteCheck(
        site.lon_deg,
        site.lat_deg,
        site.height_m,
        f"site position ({lat_deg:+.3f}, {lon_deg:+.3f}) disagrees with {named_by}, {where}, in either sign: "
        "refused, used the named site's",
    )


_TIMESYS_OFFSETS_S = {"GPS": 19.0}  # TAI - GPS [s]
_TT_MINUS_TAI_S = 32.184


def utc_from_timesys(instant: datetime, timesys: str) -> tuple[datetime, float] | None:
    """``(UTC instant, correction in s)`` for a time stamp in TAI, TT (TDT, ET) or GPS;
    None for other time systems (UTC, UT, or ones not converted here)."""
    import erfa

    scale = timesys.strip().upper()
    if scale in ("TT", "TDT", "ET"):
        to_tai = -_TT_MINUS_TAI_S
    elif scale in ("TAI", "IAT"):
        to_tai = 0.0
    elif scale in _TIMESYS_OFFSETS_S:
        to_tai = _TIMESYS_OFFSETS_S[scale]
    else:
        return None
    tai = instant + timedelta(seconds=to_tai)
    # TAI - UTC at that date (the leap second count changes by at most one second per step)
    frac = (tai.hour * 3600 + tai.minute * 60 + tai.second + tai.microsecond / 1e6) / 86400.0
    dat = float(erfa.dat(tai.year, tai.month, tai.day, frac))
    utc = tai - timedelta(seconds=dat)
    return utc, (utc - instant).total_seconds()


def lst_from_hour_angle(ha_deg: float, ra_deg: float) -> float:
    """Local sidereal time [deg] from an hour angle and the RA it refers to [deg]."""
    return (ha_deg + ra_deg) % 360.0
