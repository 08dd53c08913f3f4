"""BJD_TDB, HJD and airmass against the ARCSAT headers and independent computations."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.constants import c as speed_of_light
from astropy.coordinates import FK5, SkyCoord, get_body_barycentric
from astropy.io import fits
from astropy.time import Time

from darkroom.errors import BadInputError
from darkroom.timeseries import airmass, altaz, bjd_tdb, hjd_utc, mid_exposure_mjd, site_location

# ARCSAT (APO), from the header keywords LAT-OBS / LONG-OBS / ALT-OBS
SITE = site_location(32.78028, -105.82028, 2788.0)
XO1 = SkyCoord("16 02 11.83 +28 10 10.7", unit=(u.hourangle, u.deg))
FIRST = "XO1-b_z_20250602_041008.fits.gz"  # JD-OBS 2460828.6737765 (exposure start)
STUCK = "XO1-b_z_20250602_053800.fits.gz"  # AIRMASS = 13.375 (header bug)
JD_TO_MJD = 2400000.5


@pytest.fixture(scope="module")
def first_header(arcsat_dir):
    return fits.getheader(arcsat_dir / FIRST)


def _independent_bjd_tdb(jd_utc: float) -> float:
    """BJD_TDB = JD_TDB + (r_observer . n) / c with the observer's barycentric position
    from get_body_barycentric (Earth) plus the site's GCRS position: no light_travel_time."""
    t = Time(jd_utc, format="jd", scale="utc")
    earth = get_body_barycentric("earth", t.tdb).xyz.to_value(u.m)
    site = SITE.get_gcrs_posvel(t)[0].xyz.to_value(u.m)
    ra, dec = XO1.ra.rad, XO1.dec.rad
    n = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    delay_s = float(np.dot(earth + site, n) / speed_of_light.to_value(u.m / u.s))
    return t.tdb.jd1 + t.tdb.jd2 + delay_s / 86400.0


def test_bjd_tdb_against_independent_sum_and_acp(first_header):
    h = first_header
    mjd_start = h["JD-OBS"] - JD_TO_MJD
    ours = bjd_tdb(mjd_start, XO1.ra.deg, XO1.dec.deg, location=SITE)[0]
    # independent sum of the Roemer delay: agrees to 1 ms
    assert abs(ours - _independent_bjd_tdb(h["JD-OBS"])) * 86400 < 0.001
    # ACP's HJD-OBS is the heliocentric UTC date of the exposure start: ours agrees within 0.05 s
    assert abs(hjd_utc(mjd_start, XO1.ra.deg, XO1.dec.deg, location=SITE)[0] - h["HJD-OBS"]) * 86400 < 0.05
    # ACP's BJD-OBS = HJD-OBS + 74.72 s (an extrapolated Delta-T, not TDB-UTC = 69.184 s, and no
    # helio -> bary change), so a true BJD_TDB is 3.1 s earlier than BJD-OBS for XO-1 on 2025-06-02
    assert (h["BJD-OBS"] - h["HJD-OBS"]) * 86400 == pytest.approx(74.72, abs=0.02)
    assert (ours - h["BJD-OBS"]) * 86400 == pytest.approx(-3.08, abs=0.05)
    assert abs(ours - h["BJD-OBS"]) < 4e-5  # the brief's 1e-5 d cannot hold against ACP's recipe
    # mid-exposure (the light-curve time) is half the 60 s exposure later
    mid = mid_exposure_mjd(mjd_start, h["EXPTIME"])
    assert (bjd_tdb(mid, XO1.ra.deg, XO1.dec.deg, location=SITE)[0] - ours) * 86400 == pytest.approx(
        30.0, abs=1e-3
    )
    # without a site: geocentric, within 21 ms
    geo = bjd_tdb(mjd_start, XO1.ra.deg, XO1.dec.deg, location=None)[0]
    assert abs(geo - ours) * 86400 < 0.021


def test_airmass_against_spherical_trig_and_header(first_header):
    h = first_header
    mjd = h["JD-OBS"] - JD_TO_MJD
    t = Time(h["JD-OBS"], format="jd", scale="utc")
    alt, az = altaz(mjd, XO1.ra.deg, XO1.dec.deg, location=SITE)
    am = airmass(mjd, XO1.ra.deg, XO1.dec.deg, location=SITE)[0]
    # independent: sin(alt) = sin(phi) sin(dec) + cos(phi) cos(dec) cos(H) with coordinates of date
    # (FK5, equinox of date) and the apparent sidereal time; differs from AltAz by aberration only
    of_date = XO1.transform_to(FK5(equinox=t))
    lst = t.sidereal_time("apparent", longitude=SITE.lon).rad
    ha = lst - of_date.ra.rad
    phi, dec = SITE.lat.rad, of_date.dec.rad
    sin_alt = np.sin(phi) * np.sin(dec) + np.cos(phi) * np.cos(dec) * np.cos(ha)
    assert alt[0] == pytest.approx(np.degrees(np.arcsin(sin_alt)), abs=0.01)
    assert am == pytest.approx(1.0 / np.cos(np.radians(90 - alt[0])))
    assert am == pytest.approx(1.1420, abs=0.0005)
    # the header: OBJCTALT=61.372, AIRMASS=1.1392 are ACP's J2000 RA/Dec with the apparent
    # hour angle (HA keyword), 0.25 deg high; its azimuth agrees with ours
    ha_hdr = np.radians(-(2 + 11 / 60 + 40.99 / 3600) * 15)
    acp_alt = np.degrees(
        np.arcsin(np.sin(phi) * np.sin(XO1.dec.rad) + np.cos(phi) * np.cos(XO1.dec.rad) * np.cos(ha_hdr))
    )
    assert acp_alt == pytest.approx(h["OBJCTALT"], abs=0.001)
    assert az[0] == pytest.approx(h["OBJCTAZ"], abs=0.01)
    assert am == pytest.approx(h["AIRMASS"], abs=0.004)  # 0.25 % apart, for the reason above


def test_airmass_where_the_header_is_stuck(arcsat_dir):
    h = fits.getheader(arcsat_dir / STUCK)
    assert h["AIRMASS"] == pytest.approx(13.3748, abs=1e-3)
    am = airmass(h["JD-OBS"] - JD_TO_MJD, XO1.ra.deg, XO1.dec.deg, location=SITE)[0]
    assert am == pytest.approx(1 / np.sin(np.radians(h["OBJCTALT"])), abs=0.004)
    assert am < 1.1


def test_airmass_models_and_horizon():
    mjd = np.array([60828.1737765, 60828.6])  # XO-1 up at 04:10 UTC, below the horizon ~14:24 UTC
    secz = airmass(mjd, XO1.ra.deg, XO1.dec.deg, location=SITE)
    ky = airmass(mjd, XO1.ra.deg, XO1.dec.deg, location=SITE, model="kasten_young")
    assert np.isnan(secz[1]) and np.isnan(ky[1])
    assert ky[0] == pytest.approx(secz[0], rel=1e-3)
    with pytest.raises(BadInputError):
        airmass(mjd, XO1.ra.deg, XO1.dec.deg, location=SITE, model="bogus")  # type: ignore[arg-type]
    with pytest.raises(BadInputError):
        bjd_tdb([np.nan], 10.0, 10.0, location=SITE)
    with pytest.raises(BadInputError):
        site_location(95.0, 0.0)
