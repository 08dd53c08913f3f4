"""Profile files: user folders, precedence, inheritance, matching and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from astropy.io import fits

from darkroom.errors import ConfigError, ProfileError
from darkroom.instruments import (
    BUILTIN_PROFILE_NAMES,
    InstrumentProfile,
    load_profile_file,
    load_profiles,
    match_profile,
    normalize,
)


def _arcsat_like() -> fits.Header:
    """The keywords of an ARCSAT MaxIm/ACP light frame (no GAIN)."""
    header = fits.Header()
    for key, value in {
        "NAXIS": 2,
        "NAXIS1": 1024,
        "NAXIS2": 1024,
        "DATE-OBS": "2025-06-02T04:10:14.288",
        "EXPTIME": 60.0,
        "IMAGETYP": "LIGHT",
        "FILTER": "z       ",
        "SWCREATE": "MaxIm DL Version 6.50 250810 1AJSF",
        "TELESCOP": "ARCSAT 0.5-m",
        "INSTRUME": "dcam-spare",
        "SITELONG": "-105 49 13",
    }.items():
        header[key] = value
    return header


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_builtin_order() -> None:
    profiles = load_profiles()
    names = [p.name for p in profiles]
    assert set(names) == set(BUILTIN_PROFILE_NAMES) >= {"generic", "maxim-acp", "sbig-ccdsoft", "saao"}
    assert names[-1] == "generic"
    assert all(isinstance(p, InstrumentProfile) and p.origin.endswith(".yaml") for p in profiles)
    generic = profiles[-1]
    assert generic.match[0].always
    maxim = next(p for p in profiles if p.name == "maxim-acp")
    assert maxim.extends == "generic"
    assert maxim.exptime.keywords == generic.exptime.keywords  # inherited
    assert [s.label for s in maxim.time.sources][:2] == ["DATE-OBS", "DATE-OBS+TIME-OBS"]  # replaced


def test_user_profile_overrides_builtin(tmp_path: Path) -> None:
    folder = tmp_path / "myprofiles"
    _write(
        folder,
        "maxim.yaml",
        """
# the observatory's own MaxIm profile: same name as the built-in, so it replaces it
name: maxim-acp
extends: maxim-acp          # start from the built-in of the same name
match:
  - header: {SWCREATE: 'MaxIm DL'}
gain:
  default: 1.45             # e-/adu from our photon-transfer curve; the headers have none
read_noise:
  default: 9.5
filter:
  aliases: {z: zs}
""",
    )
    profiles = load_profiles(extra_dirs=(folder,))
    names = [p.name for p in profiles]
    assert names.count("maxim-acp") == 1 and names[0] == "maxim-acp" and names[-1] == "generic"
    assert profiles[0].origin == str(folder / "maxim.yaml")
    meta = normalize(_arcsat_like(), profiles=profiles)
    assert meta.profile == "maxim-acp"
    assert (meta.gain_e_per_adu, meta.read_noise_e, meta.filter) == (1.45, 9.5, "zs")
    assert meta.time_source == "DATE-OBS (UTC)"  # everything else still from the built-in
    assert meta.site_lon_deg == pytest.approx(-105.82028, abs=1e-5)

    builtin = normalize(_arcsat_like(), profiles=load_profiles())
    assert (builtin.gain_e_per_adu, builtin.filter) == (None, "z")


def test_user_profile_comes_first_whatever_its_priority(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    _write(
        folder,
        "arcsat.yaml",
        """
name: arcsat
description: ARCSAT 0.5 m at APO with the dcam-spare camera
priority: -5
extends: maxim-acp
match:
  - header: {TELESCOP: '^ARCSAT', INSTRUME: 'dcam'}
site:
  default_name: APO
gain:
  default: 2.2
""",
    )
    profiles = load_profiles(extra_dirs=(folder,))
    assert [p.name for p in profiles][:2] == ["arcsat", "maxim-acp"]
    meta = normalize(_arcsat_like(), profiles=profiles)
    assert (meta.profile, meta.gain_e_per_adu, meta.site_name) == ("arcsat", 2.2, "APO")
    other = _arcsat_like()
    other["TELESCOP"] = "FEDER"
    assert normalize(other, profiles=profiles).profile == "maxim-acp"  # the user rule does not hold


def test_folders_in_order_and_priority_within(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _write(first, "low.yaml", "name: low\nextends: generic\npriority: 1\nmatch: [{filename: 'cam'}]\n")
    _write(first, "high.yaml", "name: high\nextends: generic\npriority: 9\nmatch: [{filename: 'cam'}]\n")
    _write(second, "other.yaml", "name: other\nextends: generic\npriority: 99\nmatch: [{filename: 'cam'}]\n")
    profiles = load_profiles(extra_dirs=(first, second))
    assert [p.name for p in profiles][:3] == ["high", "low", "other"]
    header = _arcsat_like()
    assert match_profile(header, filename="cam_001.fits", profiles=profiles).name == "high"
    assert (
        match_profile(header, filename="/data/cam/x.fits", profiles=profiles).name == "maxim-acp"
    )  # base name only


def test_match_rules() -> None:
    profiles = load_profiles()
    header = fits.Header()
    header["CCDSFPT"] = 2  # CCDSoft's keyword: any value
    assert match_profile(header, profiles=profiles).name == "sbig-ccdsoft"
    assert (
        match_profile({"telescop": "darkroom-sim"}, profiles=profiles).name == "maxim-acp"
    )  # plain dict, any case
    assert match_profile({"OBSERVAT": "SAAO    "}, profiles=profiles).name == "saao"
    assert match_profile({}, profiles=profiles).name == "generic"
    only_saao = [p for p in profiles if p.name == "saao"]
    with pytest.raises(ProfileError, match=r"no instrument profile matches x\.fits"):
        match_profile({}, filename="x.fits", profiles=only_saao)


def test_load_profile_file(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "p",
        "cam.yaml",
        "name: cam\nextends: sbig-ccdsoft\nmatch: [{header: {INSTRUME: '^Cam'}}]\n",
    )
    profile = load_profile_file(path)
    assert (profile.name, profile.origin, profile.pixel_scale.pixel_size_unit) == ("cam", str(path), "mm")


def test_null_resets_to_schema_default(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "p",
        "nofn.yaml",
        "name: nofn\nextends: generic\nmatch: [{always: true}]\nframe_type: {filename: null}\n",
    ).parent
    profile = load_profiles(extra_dirs=(folder,))[0]
    assert profile.frame_type.filename == {}
    assert profile.frame_type.keywords  # siblings still inherited
    header = fits.Header()
    header["DATE-OBS"] = "2020-01-01T00:00:00"
    meta = normalize(header, filename="bias1.fits", profiles=[profile])
    assert meta.frame_type == "unknown"


# --------------------------------------------------------------------------- bad profiles

BAD_PROFILES = [
    ("name: x\nmatch: [{always: true}\n", r"line \d+: not valid YAML"),
    ("- just\n- a list\n", "must hold a mapping"),
    ("match: [{always: true}]\n", "field 'name'"),
    ("name: x\nextends: generic\n", "field 'match': Field required"),
    ("name: x\nmatch: []\n", "field 'match': List should have at least 1 item"),
    ("name: x\nmatch: [{}]\n", "field 'match.0': a match rule needs"),
    ("name: x\nmatch: [{header: {SWCREATE: 'MaxIm ('}}]\n", "field 'match.0.header': bad regular expression"),
    (
        "name: x\nextends: generic\nmatch: [{always: true}]\nexptme: {keywords: [EXPTIME]}\n",
        "field 'exptme': Extra",
    ),
    (
        "name: x\nextends: generic\nmatch: [{always: true}]\ntime: {sources: [{date: DATE-OBS, jd: JD}]}\n",
        "field 'time.sources.0': give exactly one of 'date', 'jd', 'mjd'",
    ),
    (
        "name: x\nextends: generic\nmatch: [{always: true}]\ntime: {timezone: Mars/Olympus}\n",
        "unknown time zone",
    ),
    ("name: x\nextends: generic\nmatch: [{always: true}]\nexptime: {unit: hours}\n", "field 'exptime.unit'"),
    (
        "name: x\nextends: generic\nmatch: [{always: true}]\ngain: {keywords: ['not a keyword!']}\n",
        "field 'gain.keywords'",
    ),
    (
        "name: x\nextends: no-such-profile\nmatch: [{always: true}]\n",
        "field 'extends': no profile named 'no-such-profile'",
    ),
    ("name: x\nextends: x\nmatch: [{always: true}]\n", "field 'extends': no profile named 'x'"),
    ("name: 'bad name!'\nmatch: [{always: true}]\n", "field 'name'"),
    (
        "name: x\nmatch: [{always: true}]\nframe_type: {values: {science: [light]}}\n",
        "field 'frame_type.values.science",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_PROFILES)
def test_malformed_profile_gives_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "bad", "broken.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_profiles(extra_dirs=(path.parent,))
    reason = info.value.reason
    assert str(path) in reason
    assert re.search(message, reason), reason
    assert "\n" not in reason


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles(extra_dirs=(tmp_path / "missing",))
    folder = tmp_path / "dup"
    _write(folder, "a.yaml", "name: same\nmatch: [{always: true}]\n")
    _write(folder, "b.yml", "name: same\nmatch: [{always: true}]\n")
    with pytest.raises(ConfigError, match=r"b\.yml: field 'name': 'same' also defined in .*a\.yaml"):
        load_profiles(extra_dirs=(folder,))


def test_extends_cycle(tmp_path: Path) -> None:
    folder = tmp_path / "cycle"
    _write(folder, "a.yaml", "name: a\nextends: b\nmatch: [{always: true}]\n")
    _write(folder, "b.yaml", "name: b\nextends: a\nmatch: [{always: true}]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_profiles(extra_dirs=(folder,))


def test_no_code_in_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "evil", "evil.yaml", "!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profiles(extra_dirs=(path.parent,))
