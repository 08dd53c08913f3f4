"""What a profile-less header leaves open: frame type, companion maps, site longitude, time system."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from darkroom.instruments import load_profiles, normalize
from darkroom.instruments.infer import companion_kind, type_from_pixels
from darkroom.instruments.sitecheck import gmst_deg, utc_from_timesys

PROFILES = load_profiles()


def _header(**cards: object) -> dict[str, object]:
    header: dict[str, object] = {
        "NAXIS1": 64,
        "NAXIS2": 48,
        "EXPTIME": 60.0,
        "DATE-OBS": "2024-03-05T04:00:00",
    }
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    return {k: v for k, v in header.items() if v is not None}


def test_light_inferred_from_target_name_and_pointing() -> None:
    meta = normalize(_header(OBJECT="WASP-12", RA="06:30:32.8", DEC="+29:40:20"), filename="img_0001.fits")
    assert (meta.frame_type, meta.type_source) == ("light", "inferred from header")
    assert any("inferred light from the header" in w and "OBJECT 'WASP-12'" in w for w in meta.warnings)


def test_zero_exposure_is_a_bias_and_calibration_names_are_not_targets() -> None:
    assert normalize(_header(EXPTIME=0.0), filename="img_0002.fits").frame_type == "bias"
    meta = normalize(_header(OBJECT="dome flat"), filename="img_0003.fits")
    assert meta.frame_type == "unknown"  # no pointing, and 'dome flat' names no target


def test_unrecognised_type_keyword_is_respected() -> None:
    meta = normalize(_header(IMAGETYP="FOCUS", OBJECT="M51", RA=202.47, DEC=47.2))
    assert meta.frame_type == "unknown"


def test_profile_default_type(tmp_path) -> None:
    (tmp_path / "cam.yaml").write_text(
        "name: cam\nextends: generic\nmatch: [{header: {INSTRUME: mycam}}]\nframe_type: {default: light}\n"
    )
    profiles = load_profiles(extra_dirs=(tmp_path,))
    meta = normalize(_header(INSTRUME="mycam"), profiles=profiles)
    assert (meta.frame_type, meta.type_source) == ("light", "profile default")


def _frames(rng: np.random.Generator) -> dict[str, np.ndarray]:
    ny, nx = 300, 400
    bias = 300.0 + rng.normal(0, 5, (ny, nx))
    dark = bias + rng.poisson(2.0, (ny, nx))
    dark[rng.integers(0, ny, 40), rng.integers(0, nx, 40)] += 800  # hot pixels: single, not sources
    yy, xx = np.mgrid[0:ny, 0:nx]
    vignette = 1 - 0.1 * (((xx - nx / 2) / nx) ** 2 + ((yy - ny / 2) / ny) ** 2)
    flat = 300.0 + rng.poisson(25000.0 * vignette).astype(float)
    light = dark + rng.poisson(200.0, (ny, nx))
    for x, y, f in zip(
        rng.uniform(5, nx - 5, 60), rng.uniform(5, ny - 5, 60), rng.uniform(2e3, 5e4, 60), strict=True
    ):
        light += f / (2 * np.pi * 0.9**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 0.9**2))
    return {"bias": bias, "dark": dark, "flat": flat, "light": light}


def test_type_from_pixels_tells_dark_flat_and_light() -> None:
    frames = _frames(np.random.default_rng(5))
    for kind, data in frames.items():
        verdict = type_from_pixels(data, exptime_s=0.0 if kind == "bias" else 30.0, saturation_adu=65535)
        assert verdict is not None and verdict.frame_type == kind, (kind, verdict)


def test_normalize_uses_the_pixels_when_the_header_is_silent() -> None:
    frames = _frames(np.random.default_rng(6))
    meta = normalize(_header(BITPIX=16, BZERO=32768), filename="a.fits", data=frames["flat"])
    assert (meta.frame_type, meta.type_source) == ("flat", "inferred from pixels")
    assert any("inferred flat from the pixels" in w for w in meta.warnings)


@pytest.mark.parametrize(
    ("name", "cards", "kind"),
    [
        ("c4d_140101_012345_oow_g_v1.fits.fz", {}, "weight map"),
        ("c4d_140101_012345_ood_g_v1.fits.fz", {}, "data-quality mask"),
        ("m51_drz.wht.fits", {}, "weight map"),
        ("legacysurvey-1234p567-invvar-r.fits.fz", {}, "inverse-variance map"),
        ("field_mask.fits", {}, "mask"),
        ("frame.fits", {"PRODTYPE": "wtmap"}, "weight map"),
        ("frame.fits", {"PRODTYPE": "expmap"}, "exposure map"),
    ],
)
def test_companion_maps_are_recognised(name: str, cards: dict, kind: str) -> None:
    found = companion_kind({k.upper(): v for k, v in cards.items()}, name)
    assert found is not None and found[0] == kind
    meta = normalize(_header(OBJECT="M51", RA=202.47, DEC=47.2, **cards), filename=name)
    assert meta.frame_type == "unknown" and meta.companion is not None and kind in meta.companion


@pytest.mark.parametrize("name", ["c4d_140101_012345_ooi_g_v1.fits.fz", "wasp12_r_001.fits", "masked.fits"])
def test_science_names_are_not_companions(name: str) -> None:
    assert companion_kind({"PRODTYPE": "image"}, name) is None


def _lst_hours(utc: datetime, lon_east: float) -> float:
    return ((gmst_deg(utc) + lon_east) % 360.0) / 15.0


def test_west_positive_longitude_flipped_by_lst() -> None:
    start = datetime(2024, 3, 5, 4, 0, 0)
    lst = _lst_hours(start, -110.88)
    meta = normalize(
        _header(LONGITUD=110.88, LATITUDE=31.68, IMAGETYP="LIGHT", LST_OBS=f"{lst:.5f}"), profiles=PROFILES
    )
    assert meta.site_lon_deg == pytest.approx(-110.88)
    assert any("west-positive" in w and "LST-OBS" in w for w in meta.warnings)
    assert meta.night == "2024-03-04"  # 21:00 local on the 4th
    # an east longitude that agrees with LST-OBS is kept, silently
    lst_east = _lst_hours(start, 110.88)
    meta = normalize(_header(LONGITUD=110.88, IMAGETYP="LIGHT", LST_OBS=lst_east), profiles=PROFILES)
    assert meta.site_lon_deg == pytest.approx(110.88)
    assert not any("longitude" in w for w in meta.warnings)


def test_west_positive_longitude_flipped_by_utc_offset_and_night_is_local() -> None:
    # 20:30 local (UTC-7) on Mar 4 to 03:30 local on Mar 5: one night, even across UTC midnight
    nights = set()
    for hours in (0.0, 3.5, 7.0):
        local = datetime(2024, 3, 4, 20, 30) + timedelta(hours=hours)
        meta = normalize(
            _header(DATE_OBS=local.isoformat() + "-07:00", LONGITUD=110.88, IMAGETYP="LIGHT"),
            profiles=PROFILES,
        )
        assert meta.site_lon_deg == pytest.approx(-110.88)
        nights.add(meta.night)
    assert nights == {"2024-03-04"}


def test_timesys_tai_and_tt_are_converted_to_utc() -> None:
    utc, delta = utc_from_timesys(datetime(2008, 10, 3, 5, 0, 33), "TAI")
    assert utc == datetime(2008, 10, 3, 5, 0, 0) and delta == pytest.approx(-33.0)
    meta = normalize(_header(DATE_OBS="2019-05-01T23:10:17", TIMESYS="TT", IMAGETYP="LIGHT"))
    assert meta.time_start_utc == datetime(2019, 5, 1, 23, 9, 7, 816000)  # TT - UTC = 69.184 s
    meta = normalize(_header(DATE_OBS="2019-05-01T23:10:17", TIMESYS="UTC", IMAGETYP="LIGHT"))
    assert meta.time_start_utc == datetime(2019, 5, 1, 23, 10, 17)
