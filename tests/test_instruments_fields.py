"""Single fields: frame-type spellings, filters, units and sanity checks, bad values, fuzzing."""

from __future__ import annotations

import string
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darkroom.errors import ProfileError
from darkroom.instruments import FrameMetadata, load_profiles, normalize
from darkroom.instruments._parse import parse_datetime, parse_section, parse_sexagesimal, parse_time_of_day

PROFILES = load_profiles()
GENERIC = [p for p in PROFILES if p.name == "generic"]


def _header(**cards: object) -> dict[str, object]:
    header: dict[str, object] = {
        "NAXIS1": 20,
        "NAXIS2": 10,
        "IMAGETYP": "LIGHT",
        "EXPTIME": 60.0,
        "DATE-OBS": "2020-01-01T03:00:00",
    }
    for key, value in cards.items():
        header[key.replace("_", "-")] = value
    return {k: v for k, v in header.items() if v is not None}


@pytest.mark.parametrize(
    ("value", "frame_type"),
    [
        ("Bias Frame", "bias"),
        ("Dark Frame", "dark"),
        ("Flat Field", "flat"),
        ("Light Frame", "light"),
        ("Tricolor Image", "light"),
        ("BIAS    ", "bias"),
        ("zero", "bias"),
        ("object", "light"),
        ("SKY FLAT", "flat"),
        ("domeflat", "flat"),
        ("COMP", "arc"),
        ("ThAr", "arc"),
    ],
)
def test_maxim_and_iraf_spellings(value: str, frame_type: str) -> None:
    meta = normalize(_header(IMAGETYP=value, SWCREATE="MaxIm DL Version 6.50"), profiles=PROFILES)
    assert meta.profile == "maxim-acp"
    assert (meta.frame_type, meta.type_source) == (frame_type, "IMAGETYP")


@pytest.mark.parametrize(
    ("filename", "frame_type"),
    [
        ("bias1.FIT.gz", "bias"),
        ("flat29.5(2).FIT.gz", "flat"),
        ("Dark_BIN1_001.fits", "dark"),
        ("neon-on-dome-10-sec.fit", "arc"),
        ("ThAr_0003.fits", "arc"),
        ("lamp.fits", "arc"),
        ("comp_12.fits", "arc"),
        ("skyflat_r_01.fits", "flat"),
        ("arcsat_target_001.fits", "unknown"),  # 'arc' inside a word is not a hint
        ("twilight_target.fits", "unknown"),  # nor 'light' inside 'twilight'
        ("m51_r_001.fits", "unknown"),
    ],
)
def test_file_name_hints(filename: str, frame_type: str) -> None:
    meta = normalize(_header(IMAGETYP=None), filename=f"/data/flats/{filename}", profiles=PROFILES)
    assert meta.frame_type == frame_type
    if frame_type == "unknown":
        assert any("frame type unknown" in w for w in meta.warnings)
    else:
        assert meta.type_source == "filename"


def test_keyword_beats_file_name_and_unknown_values_fall_back() -> None:
    assert normalize(_header(IMAGETYP="BIAS", EXPTIME=0.0), filename="flattest.fit").frame_type == "bias"
    meta = normalize(_header(IMAGETYP="FOCUS"), filename="flat_01.fits")
    assert (meta.frame_type, meta.type_source) == ("flat", "filename")
    assert meta.warnings == ("IMAGETYP='FOCUS' not a known frame type; used filename",)
    meta = normalize(_header(IMAGETYP="FOCUS"), filename="m51.fits")
    assert meta.frame_type == "unknown"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("z       ", "z"),
        ("None", None),
        ("", None),
        ("  ", None),
        ("n/a", None),
        ("Clear", "Clear"),
        (48, "48"),
        (2.0, "2"),
    ],
)
def test_filter_normalisation(value: object, expected: str | None) -> None:
    assert normalize(_header(FILTER=value)).filter == expected


def test_exposure_rules() -> None:
    with pytest.raises(ProfileError, match=r"no usable exposure time for a light frame \(EXPTIME/EXPOSURE"):
        normalize(_header(EXPTIME=None), filename="x.fits")
    with pytest.raises(ProfileError, match="no usable exposure time for a dark"):
        normalize(_header(IMAGETYP="DARK", EXPTIME="sixty"))
    with pytest.raises(ProfileError, match="no usable exposure time"):
        normalize(_header(EXPTIME=-1.0))
    with pytest.raises(ProfileError, match="no usable exposure time"):
        normalize(_header(EXPTIME=True))  # a logical is not a number
    bias = normalize(_header(IMAGETYP="BIAS", EXPTIME=None))
    assert bias.exptime_s == 0.0 and bias.warnings == (
        "no exposure time in the header; 0 s assumed for a bias",
    )
    meta = normalize(_header(EXPTIME="+1.5E+001"))
    assert meta.exptime_s == 15.0
    meta = normalize(_header(EXPTIME=60.0, EXPOSURE=61.0))
    assert meta.exptime_s == 60.0 and meta.warnings == (
        "EXPOSURE=61 s disagrees with EXPTIME=60 s; used EXPTIME",
    )


def test_sim_like_header_reads_gain_read_noise_saturation() -> None:
    header = _header(
        TELESCOP="darkroom-sim",
        INSTRUME="simcam",
        EGAIN=1.5,
        RDNOISE=8.0,
        SATURATE=60000.0,
        XBINNING=2,
        YBINNING=2,
        FOCALLEN=1000.0,
        XPIXSZ=18.0,
        YPIXSZ=18.0,
        OBJCTRA="12 00 00.0",
        OBJCTDEC="-30 00 00",
        SITELAT="-30 10 00",
        SITELONG="-70 48 00",
        CCD_TEMP=-10.2,
        SET_TEMP=-10.0,
    )
    meta = normalize(header, shape=(10, 20))
    assert (meta.profile, meta.instrument, meta.telescope) == ("maxim-acp", "simcam", "darkroom-sim")
    assert (meta.gain_e_per_adu, meta.read_noise_e, meta.saturation_adu) == (1.5, 8.0, 60000.0)
    assert (meta.binning_x, meta.binning_y) == (2, 2)
    assert meta.pixel_scale_arcsec == pytest.approx(206.264806 * 18.0 / 1000.0)  # XPIXSZ is after binning
    assert (meta.ra_deg, meta.dec_deg) == (180.0, -30.0)
    assert (meta.ccd_temp_c, meta.set_temp_c) == (-10.2, -10.0)
    assert meta.warnings == ()


def test_pixel_scale_source_order() -> None:
    wcs = {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CD1_1": -1e-4,
        "CD2_2": 1e-4,
        "CD1_2": 0.0,
        "CD2_1": 0.0,
    }
    optics = {"FOCALLEN": 1000.0, "XPIXSZ": 9.0}
    explicit = normalize({**_header(), **wcs, **optics, "PIXSCALE": 1.23})
    assert (explicit.pixel_scale_arcsec, explicit.has_wcs) == (1.23, True)
    from_wcs = normalize({**_header(), **wcs, **optics})
    assert from_wcs.pixel_scale_arcsec == pytest.approx(0.36) and from_wcs.has_wcs
    cdelt = normalize(
        {**_header(), "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CDELT1": -2e-4, "CDELT2": 2e-4}
    )
    assert cdelt.pixel_scale_arcsec == pytest.approx(0.72)
    arcsec_units = {**_header(), **wcs, "CUNIT1": "arcsec", "CUNIT2": "arcsec", "CD1_1": -0.5, "CD2_2": 0.5}
    assert normalize(arcsec_units).pixel_scale_arcsec == pytest.approx(0.5)
    optics_only = normalize({**_header(), **optics})
    assert optics_only.pixel_scale_arcsec == pytest.approx(206.264806 * 9 / 1000) and not optics_only.has_wcs
    linear = normalize({**_header(), "CTYPE1": "LINEAR", "CTYPE2": "LINEAR", "CDELT1": 1.0, "CDELT2": 1.0})
    assert linear.pixel_scale_arcsec is None and not linear.has_wcs
    in_mm = normalize({**_header(), "FOCALLEN": 80.0, "XPIXSZ": 7.4e-3})
    assert (
        in_mm.pixel_scale_arcsec == pytest.approx(206.264806 * 7.4 / 80) and "read as mm" in in_mm.warnings[0]
    )
    absurd = normalize({**_header(), "FOCALLEN": 80.0, "XPIXSZ": 740.0})
    assert absurd.pixel_scale_arcsec is None and "implausible" in absurd.warnings[0]


def test_unbinned_pixel_size_profile(tmp_path) -> None:
    (tmp_path / "cam.yaml").write_text(
        "name: cam\nextends: generic\nmatch: [{header: {INSTRUME: '^Cam'}}]\n"
        "pixel_scale: {pixel_size_binned: false}\n"
    )
    profiles = load_profiles(extra_dirs=(tmp_path,))
    header = _header(INSTRUME="Cam", FOCALLEN=1000.0, XPIXSZ=9.0, XBINNING=2, YBINNING=2)
    assert normalize(header, profiles=profiles).pixel_scale_arcsec == pytest.approx(2 * 206.264806 * 9 / 1000)


def test_binning_variants() -> None:
    assert normalize(_header(CCDSUM="2 2")).binning_x == 2
    meta = normalize(_header(XBINNING=3))
    assert (meta.binning_x, meta.binning_y) == (3, 3)
    meta = normalize(_header(XBINNING="wide"))
    assert (meta.binning_x, meta.binning_y) == (1, 1) and "XBINNING='wide' ignored" in meta.warnings[0]


def test_bad_values_become_warnings() -> None:
    meta = normalize(
        _header(
            GAIN="fast",
            EGAIN=120.0,  # a camera gain setting, not e-/adu
            RDNOISE=-3.0,
            OBJCTRA="25 00 00",
            OBJCTDEC="+95 00 00",
            RA="ten",
            DEC="+10",
            SITELAT="north",
            CCD_TEMP=500.0,
            BIASSEC="[0:10,1:10]",
            TRIMSEC="[1:30,1:10]",
            DATASEC="[2:19,1:10]",
        ),
        shape=(10, 20),
    )
    assert meta.gain_e_per_adu is None
    assert meta.read_noise_e is None
    assert (meta.ra_deg, meta.dec_deg) == (None, None)
    assert meta.site_lat_deg is None
    assert meta.ccd_temp_c is None
    assert meta.overscan_section is None
    assert meta.trim_section == "[2:19,1:10]"  # TRIMSEC is outside the 20x10 image, DATASEC is used
    text = " | ".join(meta.warnings)
    for fragment in (
        "EGAIN=120.0 ignored for gain",
        "GAIN='fast'",
        "RDNOISE=-3.0",
        "OBJCTRA='25 00 00'",
        "RA='ten'",
        "SITELAT='north'",
        "CCD-TEMP=500.0",
        "BIASSEC='[0:10,1:10]'",
        "TRIMSEC='[1:30,1:10]' ignored for trim section: section outside the 20x10 image",
    ):
        assert fragment in text, fragment


def test_kelvin_and_shape_mismatch() -> None:
    meta = normalize(_header(CCD_TEMP=180.2), shape=(11, 20))
    assert meta.ccd_temp_c == pytest.approx(-92.95)
    assert meta.naxis2 == 11
    assert any("kelvin" in w for w in meta.warnings)
    assert any("differs from NAXIS2/NAXIS1" in w for w in meta.warnings)


def test_not_a_header() -> None:
    with pytest.raises(ProfileError, match="not a FITS header"):
        normalize(42)  # type: ignore[arg-type]
    with pytest.raises(ProfileError, match="shape"):
        normalize(_header(), shape="big")  # type: ignore[arg-type]


def test_parsers() -> None:
    assert parse_sexagesimal("-00 18 18") == (pytest.approx(-0.305), True)
    assert parse_sexagesimal("16h02m11.83s")[0] == pytest.approx(16.0366194)
    assert parse_sexagesimal(" 240.5 ") == (240.5, False)
    for bad in ("12 ab", "1 2 3 4", "10 60 00", True, None):
        with pytest.raises(ValueError):
            parse_sexagesimal(bad)
    assert parse_datetime("2025-06-02T03:21:41.04").value == datetime(2025, 6, 2, 3, 21, 41, 40000)
    assert parse_datetime("02/06/95").value == datetime(1995, 6, 2)  # FITS old style: 19YY
    assert not parse_datetime("2019-05-01          ").has_time
    assert parse_datetime("2016-12-31T23:59:60").value == datetime(2017, 1, 1)  # leap second
    assert parse_time_of_day("23:05:12            ")[0].total_seconds() == 83112
    assert parse_time_of_day(4.5)[0].total_seconds() == 16200
    assert parse_section("[  17: 528,   1: 520]", nx=536, ny=520) == "[17:528,1:520]"
    for bad in ("2019-02-30", "2019-05-01T25:00:00", "yesterday", 2019):
        with pytest.raises(ValueError):
            parse_datetime(bad)


_KEYS = [
    "IMAGETYP",
    "EXPTIME",
    "EXPOSURE",
    "DATE-OBS",
    "TIME-OBS",
    "UT",
    "JD",
    "MJD-OBS",
    "FILTER",
    "XBINNING",
    "CCDSUM",
    "CCD-TEMP",
    "SET-TEMP",
    "EGAIN",
    "GAIN",
    "RDNOISE",
    "SATURATE",
    "BIASSEC",
    "TRIMSEC",
    "SITELAT",
    "SITELONG",
    "ALT-OBS",
    "OBJCTRA",
    "OBJCTDEC",
    "RA",
    "DEC",
    "FOCALLEN",
    "XPIXSZ",
    "PIXSCALE",
    "CTYPE1",
    "CTYPE2",
    "CD1_1",
    "CD2_2",
    "CDELT1",
    "CDELT2",
    "PC1_1",
    "CUNIT1",
    "NAXIS1",
    "NAXIS2",
    "BITPIX",
    "BZERO",
    "SWCREATE",
    "TIMESYS",
    "DATE-LOC",
    "TIME-LOC",
    "DATE-AVG",
]
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=string.printable, max_size=30),
    st.sampled_from(
        [
            "2019-05-01T23:10:17-06:00",
            "2019-05-01",
            "23:10:17",
            "16 02 11.83",
            "[1:10,1:10]",
            "RA---TAN",
            "Bias Frame",
            "MaxIm DL",
            "2 2",
            "-105 49 13",
            "1e400",
            "nan",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cards=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=18),
    name=st.sampled_from([None, "flat1.fit", "neon.fit"]),
)
def test_fuzzed_headers_raise_only_profile_error(cards: dict[str, object], name: str | None) -> None:
    header = {k: v for k, v in cards.items() if v is not None}
    try:
        meta = normalize(header, filename=name, profiles=PROFILES)
    except ProfileError as err:
        assert err.reason and "\n" not in err.reason
        return
    assert isinstance(meta, FrameMetadata)
    if meta.frame_type != "unknown":
        assert meta.time_mid_utc is not None and meta.night is not None
