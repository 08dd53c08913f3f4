"""Site names in headers: a known observatory fills a missing position, flips a west-positive
longitude and refuses a contradicting one; a sidereal time in the header outranks the name."""

from __future__ import annotations

import warnings

import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from darkroom.instruments import load_profiles, normalize
from darkroom.instruments.sites import find_site
from darkroom.testing import shared_data_dir

PROFILES = load_profiles()


def _header(**cards: object) -> fits.Header:
    header = fits.Header()
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, 20, 10
    header["IMAGETYP"], header["EXPTIME"] = "LIGHT", 60.0
    header["DATE-OBS"] = "2025-06-02T04:00:00"  # 21:00 on 1 June in Arizona
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    return header


def test_names_match_whole_words_only() -> None:
    assert find_site("Paul P. Feder Observatory")[0].name == "Paul P. Feder Observatory"
    assert find_site("ARCSAT 0.5-m")[0].name == "Apache Point Observatory"
    assert find_site("Gemini-South")[0].name == "Cerro Pachon"
    assert find_site("APOGEE spectrograph") is None and find_site("backyard 8-inch") is None
    assert find_site(None, "", "KPNO 2.1m")[0].lon_deg == pytest.approx(-111.60)


def test_gemini_south_frame_gets_its_site_from_observat() -> None:
    # The astroscrappy GMOS frame names its observatory and gives no position at all.
    path = shared_data_dir() / "astroscrappy-gmos-cr"
    frame = next(p for p in sorted(path.iterdir()) if ".fits" in p.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        header = fits.getheader(frame)
    meta = normalize(header, filename=frame.name, profiles=PROFILES)
    assert (meta.site_lat_deg, meta.site_lon_deg) == pytest.approx((-30.24, -70.74))
    assert any("site position from OBSERVAT='Gemini-South'" in w for w in meta.warnings)


def test_west_positive_longitude_flipped_by_the_site_name() -> None:
    # No sidereal time, no UTC offset: only the name says the site is in Arizona.
    header = _header(OBSERVAT="Fred Lawrence Whipple Observatory", LATITUDE=31.68, LONGITUD=110.88)
    meta = normalize(header, profiles=PROFILES)
    assert meta.site_lon_deg == pytest.approx(-110.88)
    assert any("west-positive" in w and "Whipple" in w for w in meta.warnings)
    assert meta.night == "2025-06-01"  # local night, not the UTC date


def test_contradicting_position_refused_for_the_named_site() -> None:
    header = _header(OBSERVAT="Kitt Peak National Observatory", LATITUDE=31.96, LONGITUD=30.0)
    meta = normalize(header, profiles=PROFILES)
    assert meta.site_lon_deg == pytest.approx(-111.60)
    assert any("refused" in w for w in meta.warnings)


def test_agreeing_position_kept_without_warning() -> None:
    header = _header(OBSERVAT="Kitt Peak", LATITUDE=31.9583, LONGITUD=-111.5967)
    meta = normalize(header, profiles=PROFILES)
    assert meta.site_lon_deg == pytest.approx(-111.5967)
    assert not any("site" in w for w in meta.warnings)


def test_sidereal_time_outranks_the_name() -> None:
    # LST-OBS at 04:00 UTC on 2 June 2025 for a site at -110.88 deg: the header's own clock says
    # Arizona, so a wrong OBSERVAT (Australia) must not move the site there.
    from datetime import datetime

    from darkroom.instruments.sitecheck import gmst_deg

    lst_h = ((gmst_deg(datetime(2025, 6, 2, 4, 0, 30)) - 110.88) % 360.0) / 15.0
    header = _header(OBSERVAT="Siding Spring Observatory", LATITUDE=31.68, LONGITUD=-110.88, LST_OBS=lst_h)
    meta = normalize(header, profiles=PROFILES)
    assert meta.site_lon_deg == pytest.approx(-110.88)
    assert not any("Siding Spring" in w for w in meta.warnings)
