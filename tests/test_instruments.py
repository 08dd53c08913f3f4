"""Instrument profiles on the real headers in /work/shared/data (known answers from the MANIFESTs).

Only headers are read (fits.getheader), so the whole module runs in a few seconds.
"""

from __future__ import annotations

import csv
import re
import warnings
from datetime import datetime
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from darkroom.instruments import FrameMetadata, describe, load_profiles, normalize

PROFILES = load_profiles()
GENERIC_ONLY = [p for p in PROFILES if p.name == "generic"]


def _header(path: Path) -> fits.Header:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)  # the SBIG files have non-standard cards
        return fits.getheader(path)


def _meta(path: Path, profiles=PROFILES) -> FrameMetadata:
    return normalize(_header(path), filename=path.name, profiles=profiles)


# --------------------------------------------------------------------------- msumastro

# (frame type, exposure [s], filter, profile): from the "header:" lines of
# msumastro-header-variants/MANIFEST.txt. flattest.fit really is IMAGETYP='BIAS'; the neon
# frame has no IMAGETYP and is an arc by its name; its FILTER='None' means no filter.
MSUMASTRO = {
    "aspen_trimmed.fit": ("flat", 1.0, "R"),
    "biastest1.fit": ("bias", 0.0, None),
    "biastest2.fit": ("bias", 0.0, None),
    "biastest3.fit": ("bias", 0.0, None),
    "biastest4.fit": ("bias", 0.0, None),
    "biastest5.fit": ("bias", 0.0, None),
    "celestron_nightscape_10100_astro_fx_v106.fit": ("light", 60.0, None),
    "darktest1.fit": ("dark", 30.0, None),
    "darktest2.fit": ("dark", 30.0, None),
    "darktest3.fit": ("dark", 30.0, None),
    "darktest4.fit": ("dark", 30.0, None),
    "darktest5.fit": ("dark", 30.0, None),
    "flattest.fit": ("bias", 0.0, None),
    "maximdl_5_21_header.fit": ("light", 90.0, "R"),
    "maximdl_5_23_header.fit": ("light", 90.0, "B"),
    "maximdl_6_16_header.fit": ("light", 90.0, "B"),
    "maximdl_6_18_header.fit": ("light", 90.0, "r"),
    "neon-on-dome-10-sec-high-res-though-scope.fit": ("arc", 10.0, None),
    "uint16.fit": ("light", 90.0, "R"),
    "uint16_missing_filter.fit": ("light", 90.0, None),
    "uint16_no_pointing.fit": ("light", 90.0, "R"),
    "uint16_not_m101.fit": ("light", 90.0, "R"),
}


def test_msumastro_table_covers_every_file(data_dir: Path) -> None:
    files = {p.name for p in (data_dir / "msumastro-header-variants").glob("*.fit")}
    assert files == set(MSUMASTRO)


@pytest.mark.parametrize("name", sorted(MSUMASTRO))
def test_msumastro_type_exposure_filter(data_dir: Path, name: str) -> None:
    meta = _meta(data_dir / "msumastro-header-variants" / name)
    frame_type, exptime, filter_name = MSUMASTRO[name]
    assert (meta.frame_type, meta.exptime_s, meta.filter) == (frame_type, exptime, filter_name)
    assert meta.profile == "maxim-acp"  # all are MaxIm / SBFITSEXT writers
    assert meta.time_mid_utc is not None
    assert meta.type_source == ("filename" if name.startswith("neon") else "IMAGETYP")


def test_msumastro_details(data_dir: Path) -> None:
    folder = data_dir / "msumastro-header-variants"
    neon = _meta(folder / "neon-on-dome-10-sec-high-res-though-scope.fit")
    # DATE-OBS '2013-01-28T03:08:12.000' / GMT START; NOTE 'Local time:1/27/2013 at 21:08:12'
    assert neon.time_start_utc == datetime(2013, 1, 28, 3, 8, 12)
    assert neon.gain_e_per_adu == pytest.approx(1.74)  # EGAIN
    assert neon.saturation_adu == 65535  # DATAMAX / SATURATION LEVEL
    assert neon.pixel_scale_arcsec == pytest.approx(206.264806 * 9.0 / 3251.2)  # XPIXSZ um, FOCALLEN mm
    assert neon.ccd_temp_c == pytest.approx(4.4559, abs=1e-3)

    no_pointing = _meta(folder / "uint16_no_pointing.fit")
    assert (no_pointing.ra_deg, no_pointing.dec_deg) == (None, None)
    pointing = _meta(folder / "uint16.fit")  # OBJCTRA '14 03 15', OBJCTDEC '+54 21 04'
    assert pointing.ra_deg == pytest.approx((14 + 3 / 60 + 15 / 3600) * 15)
    assert pointing.dec_deg == pytest.approx(54 + 21 / 60 + 4 / 3600)
    assert pointing.site_lon_deg == pytest.approx(-(96 + 27 / 60 + 12 / 3600))  # SITELONG '-96 27 12'

    bias2 = _meta(folder / "biastest2.fit")  # OBJCTDEC '-00 18 18': the sign of a zero degree field
    assert bias2.dec_deg == pytest.approx(-(18 / 60 + 18 / 3600))
    assert bias2.saturation_adu is None  # BITPIX=-32: no integer ceiling
    assert bias2.pixel_scale_arcsec is None  # FOCALLEN = 0: unknown

    acp = _meta(folder / "maximdl_6_18_header.fit")  # PC + CDELT and CD present, equal
    assert acp.has_wcs
    assert acp.pixel_scale_arcsec == pytest.approx(3600 * (1.52533622018e-4**2 + 3.45467829608e-5**2) ** 0.5)
    assert acp.site_name == "Paul P. Feder Observatory"
    assert acp.warnings == ()


# --------------------------------------------------------------------------- ST-7 (CCDSoft)


def _st7_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "st7-ptc-linearity").glob("*.FIT.gz"))


def test_st7_type_and_exposure_from_file_name(data_dir: Path) -> None:
    files = _st7_files(data_dir)
    assert len(files) == 30  # 3 bias + flats at 25 exposure times, 29.5 s three times (MANIFEST)
    kinds = {"bias": 0, "flat": 0}
    for path in files:
        meta = _meta(path)
        kind, nominal = re.match(r"^(bias|flat)([\d.]+?)(?:\(\d\))?\.FIT\.gz$", path.name).groups()
        kinds[kind] += 1
        assert meta.profile == "sbig-ccdsoft"
        assert (meta.frame_type, meta.type_source) == (kind, "filename")
        assert meta.filter is None
        if kind == "bias":
            assert meta.exptime_s == 0.0
        else:  # EXPOSURE keyword; the header rounds to 0.01 s (flat0.5625 -> 0.56)
            assert meta.exptime_s == pytest.approx(float(nominal), abs=0.006)
        assert meta.gain_e_per_adu == pytest.approx(0.46)  # E-GAIN as written
        assert meta.binning_x == meta.binning_y == 1
        assert (meta.naxis1, meta.naxis2) == (657, 495)
        # XPIXSZ 7.4e-3 is in mm (CCDSoft); FOCALLEN 80 mm
        assert meta.pixel_scale_arcsec == pytest.approx(206.264806 * 7.4 / 80.0)
        assert meta.warnings == ()  # the profile knows the unit: no warning
    assert kinds == {"bias": 3, "flat": 27}


def test_st7_date_only_plus_time_obs(data_dir: Path) -> None:
    bias = _meta(
        data_dir / "st7-ptc-linearity" / "bias1.FIT.gz"
    )  # DATE-OBS '2019-05-01', TIME-OBS '23:05:12'
    assert bias.time_start_utc == bias.time_mid_utc == datetime(2019, 5, 1, 23, 5, 12)
    assert bias.time_source.startswith("DATE-OBS+TIME-OBS")
    assert bias.night == "2019-05-01"  # no site longitude: (UTC - 12 h).date()
    flat = _meta(data_dir / "st7-ptc-linearity" / "flat29.5(2).FIT.gz")  # TIME-OBS '23:11:16', 29.5 s
    assert flat.time_mid_utc == datetime(2019, 5, 1, 23, 11, 30, 750000)


def test_st7_with_generic_profile_guesses_pixel_unit(data_dir: Path) -> None:
    meta = _meta(data_dir / "st7-ptc-linearity" / "flat9.FIT.gz", GENERIC_ONLY)
    assert (meta.frame_type, meta.exptime_s) == ("flat", 9.0)
    assert meta.pixel_scale_arcsec == pytest.approx(206.264806 * 7.4 / 80.0)
    assert any("read as mm" in w for w in meta.warnings)


# --------------------------------------------------------------------------- ARCSAT


@pytest.fixture(scope="module")
def arcsat(data_dir: Path) -> dict[str, FrameMetadata]:
    files = sorted((data_dir / "arcsat-xo1b-transit").glob("*.fits.gz"))
    return {p.name: _meta(p) for p in files}


def test_arcsat_counts(arcsat: dict[str, FrameMetadata]) -> None:
    assert len(arcsat) == 96
    by_type: dict[str, list[FrameMetadata]] = {}
    for meta in arcsat.values():
        by_type.setdefault(meta.frame_type, []).append(meta)
    assert {k: len(v) for k, v in by_type.items()} == {"bias": 5, "dark": 5, "flat": 5, "light": 81}
    assert all(m.exptime_s == 0 and m.filter is None for m in by_type["bias"])
    assert all(m.exptime_s == 60 and m.filter is None for m in by_type["dark"])
    # MANIFEST says "76 s"; the five headers hold 76.15, 82.36, 82.69, 82.4 and 82.22 s
    assert sorted(m.exptime_s for m in by_type["flat"]) == [76.15, 82.22, 82.36, 82.4, 82.69]
    assert all(m.filter == "z" for m in by_type["flat"] + by_type["light"])  # FILTER = 'z       '
    assert sorted(m.exptime_s for m in by_type["light"]) == [30.0] + [60.0] * 80  # 43 Bet Com is 30 s
    assert sum(m.has_wcs for m in by_type["light"]) == 56  # PinPoint solved 56 of the 80 XO-1 frames
    for meta in arcsat.values():
        assert meta.profile == "maxim-acp"
        assert meta.night == "2025-06-01"  # local night began on June 1st at APO
        assert meta.site_lon_deg == pytest.approx(-(105 + 49 / 60 + 13 / 3600))
        assert meta.site_lat_deg == pytest.approx(32 + 46 / 60 + 49 / 3600)
        # Per-frame PinPoint solutions (13 stars) scatter 0.669..0.672; FOCALLEN 4014 mm gives 0.668
        assert meta.pixel_scale_arcsec == pytest.approx(0.670, abs=0.0025)
        assert meta.ccd_temp_c == pytest.approx(-25.0, abs=0.2)
        assert meta.set_temp_c == -25.0
        assert meta.gain_e_per_adu is None  # ARCSAT headers carry no gain
        assert meta.warnings == ()  # DATE-OBS, TIME-OBS and JD agree within 2 s on every frame
    scales = sorted(m.pixel_scale_arcsec for m in arcsat.values())
    assert scales[len(scales) // 2] == pytest.approx(0.670, abs=0.001)
    assert sum(abs(s - 0.670) <= 0.002 for s in scales) >= 95


def test_arcsat_xo1_first_frame(arcsat: dict[str, FrameMetadata]) -> None:
    meta = arcsat["XO1-b_z_20250602_041008.fits.gz"]
    assert meta.time_start_utc == datetime(2025, 6, 2, 4, 10, 14, 288000)
    assert meta.time_mid_utc == datetime(2025, 6, 2, 4, 10, 44, 288000)  # + 60 s / 2
    assert meta.time_source == "DATE-OBS (UTC)"
    # OBJCTRA '16 02 11.83', OBJCTDEC '+28 10 10.7'
    assert meta.ra_deg == pytest.approx(240.549292, abs=1e-6)
    assert meta.dec_deg == pytest.approx(28.169639, abs=1e-6)
    # WCS CD matrix: sqrt(|det CD|) * 3600
    assert meta.pixel_scale_arcsec == pytest.approx(
        3600 * (1.85992955690e-4 * 1.86458091338e-4) ** 0.5, rel=1e-6
    )
    assert meta.pixel_scale_arcsec == pytest.approx(0.670, abs=0.002)
    assert meta.site_height_m == 2788.0
    assert (meta.naxis1, meta.naxis2, meta.binning_x, meta.binning_y) == (1024, 1024, 1, 1)
    assert meta.saturation_adu == 65535  # BITPIX 16, BZERO 32768


def test_arcsat_focal_length_scale_without_wcs(arcsat: dict[str, FrameMetadata]) -> None:
    bias = arcsat["Bias_BIN1_20250602_032138.fits.gz"]  # FOCALLEN 4014 mm, XPIXSZ 13 um, no WCS
    assert not bias.has_wcs
    assert bias.pixel_scale_arcsec == pytest.approx(206.264806 * 13 / 4014.0)


# --------------------------------------------------------------------------- SAAO, ccdproc


@pytest.mark.parametrize("which", ["built-in", "generic-only"])
def test_saao_overscan_gain_read_noise(data_dir: Path, which: str) -> None:
    path = data_dir / "ccdproc-saao-and-sip" / "a8280271.fits"
    header = _header(path)
    meta = normalize(
        header,
        filename=path.name,
        shape=(520, 536),
        profiles=PROFILES if which == "built-in" else GENERIC_ONLY,
    )
    assert meta.profile == ("saao" if which == "built-in" else "generic")
    assert meta.overscan_section == "[4:13,1:520]"  # BIASSEC '[   4:  13,   1: 520]'
    assert meta.trim_section == "[17:528,1:520]"  # TRIMSEC '[  17: 528,   1: 520]'
    assert meta.gain_e_per_adu == 1.9
    assert meta.read_noise_e == 5.0
    assert (meta.naxis1, meta.naxis2) == (536, 520)
    assert (meta.frame_type, meta.exptime_s, meta.object) == ("light", 150.04, "rf0420")  # IMAGETYP 'object'
    # DATE-OBS '2013-07-13' (date only) + UT '00:57:33'
    assert meta.time_start_utc == datetime(2013, 7, 13, 0, 57, 33)
    assert meta.ccd_temp_c == pytest.approx(180.2 - 273.15)  # kelvin
    assert meta.ra_deg == pytest.approx((22 + 4 / 60 + 8 / 3600) * 15)
    assert meta.dec_deg == pytest.approx(-(55 / 60 + 31 / 3600))
    if which == "built-in":
        assert meta.warnings == ()
        assert meta.site_lon_deg == pytest.approx(20.8107)
        assert meta.night == "2013-07-12"
    else:  # generic: guesses kelvin, and notices MJD-OBS (date only) disagrees with DATE-OBS+UT
        assert any("kelvin" in w for w in meta.warnings)
        assert any(w.startswith("MJD-OBS disagrees") for w in meta.warnings)


def test_sip_wcs_pixel_scale(data_dir: Path) -> None:
    meta = _meta(data_dir / "ccdproc-saao-and-sip" / "sip-wcs.fit")
    assert meta.has_wcs
    assert meta.pixel_scale_arcsec == pytest.approx(0.558, abs=0.001)  # MANIFEST: 0.558"/px
    assert (meta.frame_type, meta.exptime_s, meta.filter) == ("light", 120.0, "B")


def test_ccdproc_expected_ifc_properties(data_dir: Path) -> None:
    """Headers built from ccdproc's expected_ifc_file_properties.csv read back as listed."""
    with open(data_dir / "ccdproc-saao-and-sip" / "expected_ifc_file_properties.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    for row in rows:
        header = fits.Header()
        header["BITPIX"] = int(row["bitpix"])
        header["NAXIS"] = int(row["naxis"])
        header["NAXIS1"] = int(row["naxis1"])
        header["BSCALE"] = int(row["bscale"])
        header["BZERO"] = int(row["bzero"])
        header["IMAGETYP"] = row["imagetyp"]
        if row["filter"]:
            header["FILTER"] = row["filter"]
        header["EXPOSURE"] = float(row["exposure"])
        header["DATE-OBS"] = "2010-01-01T00:00:00"
        meta = normalize(header, filename=row["file"], profiles=PROFILES)
        assert meta.frame_type == row["imagetyp"].lower()
        assert meta.filter == (row["filter"] or None)
        assert meta.exptime_s == float(row["exposure"])
        assert meta.saturation_adu == 65535  # 16-bit, BZERO 32768
        assert meta.naxis1 == 100


def test_describe_rows(data_dir: Path) -> None:
    meta = _meta(data_dir / "arcsat-xo1b-transit" / "XO1-b_z_20250602_041008.fits.gz")
    rows = dict(describe(meta))
    assert rows["frame type"] == "light (from IMAGETYP)"
    assert rows["exposure"] == "60 s"
    assert rows["mid-exposure (UTC)"] == "2025-06-02 04:10:44.288"
    assert rows["pointing (RA, Dec)"].endswith("(16:02:11.83 +28:10:10.7)")
    assert rows["gain"] == "-"
    assert rows["night"] == "2025-06-01"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in describe(meta))
