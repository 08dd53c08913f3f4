"""Time stamps: UTC offsets in values, local-vs-UTC keywords, ordered time sources, night."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.time import Time

from darkroom.errors import ProfileError
from darkroom.instruments import load_profiles, normalize

PROFILES = load_profiles()


def _header(**cards: object) -> fits.Header:
    header = fits.Header()
    header["NAXIS"] = 2
    header["NAXIS1"] = 20
    header["NAXIS2"] = 10
    header["IMAGETYP"] = "LIGHT"
    header["EXPTIME"] = 60.0
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    return header


def _profile_dir(tmp_path: Path, text: str, name: str = "site.yaml") -> list:
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return load_profiles(extra_dirs=(folder,))


@pytest.mark.parametrize(
    ("value", "start_utc"),
    [
        ("2019-05-01T23:10:17-06:00", datetime(2019, 5, 2, 5, 10, 17)),  # MDT: the UTC day is the next
        ("2019-05-01T23:10:17+02:00", datetime(2019, 5, 1, 21, 10, 17)),
        ("2019-05-01T23:10:17Z", datetime(2019, 5, 1, 23, 10, 17)),
        ("2019-05-01T23:10:17.25+0530", datetime(2019, 5, 1, 17, 40, 17, 250000)),
        ("2019-05-01T23:10:17", datetime(2019, 5, 1, 23, 10, 17)),  # FITS: no offset = UTC
    ],
)
def test_offset_in_date_obs(value: str, start_utc: datetime) -> None:
    meta = normalize(_header(DATE_OBS=value), profiles=PROFILES)
    assert meta.profile == "generic"
    assert meta.time_start_utc == start_utc
    assert meta.time_mid_utc == start_utc + timedelta(seconds=30)
    if value.endswith(("00", "30", "Z")):
        assert "offset" in meta.time_source


def test_utc_pair_wins_over_local_pair_in_generic() -> None:
    # 23:10:17 MDT on May 1st is 05:10:17 UTC on May 2nd
    header = _header(DATE_OBS="2019-05-02", UT="05:10:17", DATE_LOC="2019-05-01", TIME_LOC="23:10:17")
    meta = normalize(header, profiles=PROFILES)
    assert meta.time_start_utc == datetime(2019, 5, 2, 5, 10, 17)
    assert meta.time_source == "DATE-OBS+UT (UTC)"
    assert meta.warnings == ()  # the local pair has no time zone in generic: skipped, not an oddity


def test_local_pair_with_time_zone(tmp_path: Path) -> None:
    profiles = _profile_dir(
        tmp_path,
        """
name: denver-local
extends: generic
match: [{header: {TELESCOP: '^Denver'}}]
time:
  timezone: America/Denver
  sources:
    - {date: DATE-LOC, time: TIME-LOC, scale: local}
    - {date: DATE-OBS, time: UT}
""",
    )
    summer = _header(TELESCOP="Denver 14in", DATE_OBS="2019-05-02", UT="05:10:17", DATE_LOC="2019-05-01")
    summer["TIME-LOC"] = "23:10:17"
    meta = normalize(summer, profiles=profiles)
    assert meta.profile == "denver-local"
    assert meta.time_start_utc == datetime(2019, 5, 2, 5, 10, 17)
    assert meta.time_source == "DATE-LOC+TIME-LOC (local, UTC-06:00 from time zone America/Denver)"
    assert meta.warnings == ()  # DATE-OBS+UT agrees

    winter = _header(TELESCOP="Denver 14in", DATE_LOC="2019-01-15", TIME_LOC="23:10:17")  # MST, UTC-7
    assert normalize(winter, profiles=profiles).time_start_utc == datetime(2019, 1, 16, 6, 10, 17)

    wrong = summer.copy()
    wrong["UT"] = "04:10:17"  # an hour off: reported, the profile's first source still wins
    meta = normalize(wrong, profiles=profiles)
    assert meta.time_start_utc == datetime(2019, 5, 2, 5, 10, 17)
    assert meta.warnings == (
        "DATE-OBS+UT disagrees with DATE-LOC+TIME-LOC by -60.0 min; used DATE-LOC+TIME-LOC "
        "(first in the profile's time sources)",
    )


@pytest.mark.parametrize("utc_keyword", ["UTC-OBS", "UT"])
def test_local_date_obs_with_utc_time_keyword(tmp_path: Path, utc_keyword: str) -> None:
    profiles = _profile_dir(
        tmp_path,
        f"""
name: local-dateobs
extends: generic
match: [{{header: {{INSTRUME: '^LocalCam$'}}}}]
time:
  sources:
    - {{date: DATE-OBS, scale: local, time: {utc_keyword}, time_scale: utc}}
    - {{date: DATE-OBS, scale: local}}
""",
    )
    # DATE-OBS is local (UTC-6) late evening; the UTC time is already on the next day
    header = _header(INSTRUME="LocalCam", DATE_OBS="2019-05-01T23:10:17")
    header[utc_keyword] = "05:10:17"
    meta = normalize(header, profiles=profiles)
    assert meta.time_start_utc == datetime(2019, 5, 2, 5, 10, 17)
    assert meta.time_source.startswith(f"DATE-OBS+{utc_keyword} (local date, UTC time")
    # and early in the local morning (UTC+9): the UTC day is the previous one
    header["DATE-OBS"] = "2019-05-02T03:00:00"
    header[utc_keyword] = "18:00:00"
    assert normalize(header, profiles=profiles).time_start_utc == datetime(2019, 5, 1, 18, 0, 0)


def test_local_date_only_with_utc_time_uses_site_longitude(tmp_path: Path) -> None:
    profiles = _profile_dir(
        tmp_path,
        """
name: local-date
extends: generic
match: [{header: {INSTRUME: '^LocalCam$'}}]
time:
  sources: [{date: DATE-OBS, scale: local, time: UT, time_scale: utc}]
""",
    )
    # local date May 1st at APO (lon -105.8): 05:10 UTC is 22:07 local solar time on May 1st
    header = _header(INSTRUME="LocalCam", DATE_OBS="2019-05-01", UT="05:10:17", SITELONG="-105 49 13")
    meta = normalize(header, profiles=profiles)
    assert meta.time_start_utc == datetime(2019, 5, 2, 5, 10, 17)
    assert "site longitude" in meta.time_source
    assert meta.night == "2019-05-01"

    del header["SITELONG"]  # no way to check the day: the date is used as is, with a warning
    meta = normalize(header, profiles=profiles)
    assert meta.time_start_utc == datetime(2019, 5, 1, 5, 10, 17)
    assert any("day may be off by one" in w for w in meta.warnings)


def test_local_date_obs_with_jd(tmp_path: Path) -> None:
    jd = Time("2019-05-02T05:10:17", scale="utc").jd
    header = _header(INSTRUME="LocalCam", DATE_OBS="2019-05-01T23:10:17", JD=jd)

    generic = normalize(header, profiles=PROFILES)  # DATE-OBS first, read as UTC; JD disagrees
    assert generic.time_start_utc == datetime(2019, 5, 1, 23, 10, 17)
    assert any(w.startswith("JD disagrees with DATE-OBS by +6.00 h") for w in generic.warnings)

    profiles = _profile_dir(
        tmp_path,
        """
name: jd-first
extends: generic
match: [{header: {INSTRUME: '^LocalCam$'}}]
time:
  sources: [{jd: JD}, {date: DATE-OBS, scale: local}]
  utc_offset_hours: -6
""",
    )
    meta = normalize(header, profiles=profiles)
    assert abs((meta.time_start_utc - datetime(2019, 5, 2, 5, 10, 17)).total_seconds()) < 1e-3
    assert meta.time_source == "JD (UTC)"
    assert meta.warnings == ()  # DATE-OBS at UTC-6 agrees with JD


def test_mid_exposure_source(tmp_path: Path) -> None:
    header = _header(DATE_AVG="2020-01-01T00:00:30")
    meta = normalize(header, profiles=PROFILES)
    assert meta.time_start_utc == datetime(2020, 1, 1, 0, 0, 0)
    assert meta.time_mid_utc == datetime(2020, 1, 1, 0, 0, 30)
    assert "exposure mid" in meta.time_source


def test_no_usable_time_is_a_profile_error() -> None:
    with pytest.raises(ProfileError, match="no usable observation time"):
        normalize(_header(DATE_OBS="2019-05-01"), filename="x.fits", profiles=PROFILES)  # date only
    with pytest.raises(ProfileError, match=r"DATE-OBS.*month must be in 1\.\.12"):
        normalize(_header(DATE_OBS="2019-13-45T00:00:00"), profiles=PROFILES)
    with pytest.raises(ProfileError, match="no usable observation time"):
        normalize(_header(), profiles=PROFILES)
    with pytest.raises(ProfileError, match="timezone"):  # local only, and no zone in generic
        normalize(_header(DATE_LOC="2019-05-01", TIME_LOC="23:10:17"), profiles=PROFILES)


def test_garbage_date_falls_back_with_warning() -> None:
    header = _header(DATE_OBS="last tuesday", MJD_OBS=58604.5)
    meta = normalize(header, profiles=PROFILES)
    assert meta.time_start_utc == datetime(2019, 5, 1, 12, 0, 0)
    assert meta.time_source == "MJD-OBS (UTC)"
    assert any("DATE-OBS ignored" in w for w in meta.warnings)


def test_unknown_type_without_time_is_not_an_error() -> None:
    header = _header(IMAGETYP="FOCUS")
    meta = normalize(header, profiles=PROFILES)  # quarantined by ingest for its type, not here
    assert meta.frame_type == "unknown"
    assert meta.time_mid_utc is None and meta.night is None


def test_timesys_not_utc_is_reported() -> None:
    meta = normalize(_header(DATE_OBS="2019-05-01T23:10:17", TIMESYS="TT"), profiles=PROFILES)
    assert any("TIMESYS='TT'" in w for w in meta.warnings)


@pytest.mark.parametrize(
    ("mid_utc", "lon", "night"),
    [
        ("2025-06-02T04:10:44", -105.82, "2025-06-01"),  # APO, 22:07 local
        ("2025-06-02T17:59:00", -105.82, "2025-06-01"),  # 10:56 local on the 2nd: still the night of the 1st
        ("2025-06-01T19:30:00", -105.82, "2025-06-01"),  # 12:27 local on the 1st: its night has begun
        ("2013-07-12T23:00:00", 20.81, "2013-07-12"),  # SAAO, 00:23 local on the 13th
        ("2013-07-13T09:00:00", 20.81, "2013-07-12"),  # 10:23 local: the night of the 12th
        ("2019-05-01T23:05:12", None, "2019-05-01"),  # no longitude: UTC - 12 h
        ("2019-05-02T11:59:00", None, "2019-05-01"),
    ],
)
def test_night(mid_utc: str, lon: float | None, night: str) -> None:
    mid = datetime.fromisoformat(mid_utc)
    header = _header(DATE_OBS=(mid - timedelta(seconds=30)).isoformat())
    if lon is not None:
        header["LONG-OBS"] = lon
    meta = normalize(header, profiles=PROFILES)
    assert meta.time_mid_utc == mid
    expected = (mid + timedelta(hours=(lon or 0.0) / 15 - 12)).date().isoformat()
    assert meta.night == expected == night
