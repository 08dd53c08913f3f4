"""Instrument profiles: the YAML schema, loading, inheritance and matching.

A profile is a YAML file (read with ``yaml.safe_load``, validated by the pydantic models
below) that says which header keywords of one camera hold what. See
``docs/instruments.md`` for the full schema with examples. Rules in short:

* ``match`` -- a list of rules; the profile applies to a frame when *any* rule matches.
  A rule matches when *every* ``header`` regex finds its keyword's value (case-insensitive
  ``re.search`` on the stripped value; an absent keyword never matches; ``'.*'`` means
  "present") and its ``filename`` regex, if given, finds the file's base name.
  ``always: true`` matches every frame (the generic profile).
* ``extends: NAME`` -- start from profile NAME: mappings are merged key by key, lists and
  scalars replace the inherited ones, and a key set to ``null`` returns to the schema
  default. ``name``, ``description``, ``priority`` and ``match`` are never inherited.
* order -- :func:`load_profiles` returns user profiles first (folders in the order given,
  highest ``priority`` first inside a folder), then the built-ins (highest priority first,
  ``generic`` last). A user profile with the name of a built-in replaces it.
  :func:`match_profile` takes the first profile in that list that matches.

Errors in a profile raise :class:`~darkroom.errors.ConfigError` naming the file and the
field (``time.sources.0.date``).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from darkroom.errors import ConfigError, ProfileError
from darkroom.instruments._parse import value_text

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_PROFILE_NAMES",
    "InstrumentProfile",
    "header_view",
    "load_profile_file",
    "load_profiles",
    "match_profile",
]

logger = logging.getLogger(__name__)

KnownFrameType = Literal["bias", "dark", "flat", "light", "arc"]
_NOT_INHERITED = ("name", "description", "priority", "match")
_KEYWORD_RE = re.compile(r"^[A-Z0-9_\-. ]{1,70}$")


def _check_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"bad regular expression {pattern!r}: {err}") from None
    return pattern


def _check_keywords(keywords: list[str]) -> list[str]:
    result = []
    for keyword in keywords:
        upper = keyword.strip().upper()
        if not _KEYWORD_RE.match(upper):
            raise ValueError(f"{keyword!r} is not a FITS keyword")
        result.append(upper)
    return result


Keywords = Annotated[list[str], AfterValidator(_check_keywords)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchRule(_Strict):
    """One way to recognise a camera; every condition given must hold."""

    header: dict[str, str] = Field(
        default_factory=dict, description="keyword -> regex searched in the stripped value (case-insensitive)"
    )
    filename: str | None = Field(
        None, description="regex searched in the file's base name (case-insensitive)"
    )
    always: bool = Field(False, description="match every frame (for fallback profiles)")

    @field_validator("header")
    @classmethod
    def _header(cls, value: dict[str, str]) -> dict[str, str]:
        return {_check_keywords([k])[0]: _check_regex(v) for k, v in value.items()}

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        return None if value is None else _check_regex(value)

    @model_validator(mode="after")
    def _not_empty(self) -> MatchRule:
        if not (self.header or self.filename or self.always):
            raise ValueError("a match rule needs 'header', 'filename' or 'always: true'")
        return self


class FrameTypeSpec(_Strict):
    """Where the frame type is written and how its values are spelled."""

    keywords: Keywords = Field(
        default_factory=list, description="keywords holding the type, first found wins"
    )
    values: dict[KnownFrameType, list[str]] = Field(
        default_factory=dict,
        description="type -> regexes that must match the whole stripped value (case-insensitive)",
    )
    filename: dict[KnownFrameType, list[str]] = Field(
        default_factory=dict,
        description="type -> regexes searched in the file's base name, tried in this order",
    )
    prefer_filename: bool = Field(False, description="try file-name hints before the keywords")
    default: KnownFrameType | None = Field(
        None, description="type of a frame no keyword or file name types (before any inference)"
    )
    infer: bool = Field(
        True,
        description="with no type keyword, file-name hint or default: infer the type from the header "
        "(0 s exposure: bias; target name or pointing: light) and the pixels, with a warning",
    )

    @field_validator("values", "filename")
    @classmethod
    def _regexes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k: [_check_regex(p) for p in patterns] for k, patterns in value.items()}


class NumberSpec(_Strict):
    """A number read from the first of ``keywords`` that holds one, else ``default``.

    A value outside ``[min_value, max_value]`` is ignored with a warning.
    """

    keywords: Keywords = Field(default_factory=list)
    default: float | None = None
    min_value: float | None = None
    max_value: float | None = None


class ExptimeSpec(NumberSpec):
    """Exposure time; ``unit`` is what the keyword holds (s or ms)."""

    unit: Literal["s", "ms"] = "s"


class TemperatureSpec(NumberSpec):
    """A temperature; ``unit`` auto reads values above 100 as kelvin (no CCD runs at 100 C)."""

    unit: Literal["C", "K", "auto"] = "auto"


class SaturationSpec(NumberSpec):
    """Saturation [adu]; ``from_bitpix`` falls back on the integer type's ceiling (65535 for
    16-bit data with BZERO=32768)."""

    from_bitpix: bool = False


class StringSpec(_Strict):
    keywords: Keywords = Field(default_factory=list)
    default: str | None = None


class FilterSpec(StringSpec):
    """Filter name: stripped; ``none_values`` (case-insensitive) mean no filter; ``aliases``
    rename (case-insensitive keys, e.g. ``{Red: R}``)."""

    none_values: list[str] = Field(
        default_factory=lambda: ["", "none", "n/a", "empty", "nofilter", "no filter"]
    )
    aliases: dict[str, str] = Field(default_factory=dict)


class ImageUnitSpec(_Strict):
    """The unit of the pixel values.

    ``keywords`` hold the unit (BUNIT). A calibrated flux-density unit (nanomaggy, maggy, Jy,
    mJy, uJy, nJy; AB) marks the frame as already calibrated: no masters are asked for and its
    zero point follows from the unit (22.5 mag for 1 nanomaggy). ``nanomaggy_per_count``
    keywords (SDSS NMGY) give the zero point of frames still in counts.
    """

    keywords: Keywords = Field(default_factory=list, description="keywords holding the unit (BUNIT)")
    nanomaggy_per_count: Keywords = Field(
        default_factory=list, description="keywords with nanomaggies per count (SDSS NMGY)"
    )


class SubframeSpec(_Strict):
    """Where a subframe read-out says its offset in the full (binned) detector, 0-based pixels
    (MaxIm XORGSUBF/YORGSUBF)."""

    x: Keywords = Field(default_factory=list, description="keywords with the column offset [binned pixels]")
    y: Keywords = Field(default_factory=list, description="keywords with the row offset [binned pixels]")
    detector_section: Keywords = Field(
        default_factory=list,
        description="keywords with the frame's place on the detector, '[x1:x2,y1:y2]' in unbinned "
        "1-based pixels (NOAO DETSEC); read when the offset keywords are absent",
    )
    ltv: Keywords = Field(
        default_factory=list,
        description="IRAF logical-to-physical offset keywords, x then y (LTV1, LTV2): offset -LTV "
        "for an unbinned frame (LTM1_1 absent or 1); read last",
    )


class SectionSpec(StringSpec):
    """A FITS section keyword (1-based, inclusive, x first)."""


class BinningSpec(_Strict):
    x: Keywords = Field(default_factory=list, description="keywords with the x (column) binning")
    y: Keywords = Field(default_factory=list, description="keywords with the y (row) binning")
    pair: Keywords = Field(default_factory=list, description="keywords holding 'bx by' (NOAO CCDSUM)")
    default: int = Field(1, ge=1, le=64)


class TimeSource(_Strict):
    """One way to get the exposure time stamp. Exactly one of ``date``, ``jd``, ``mjd``.

    ``date`` alone must hold a full date-time (a date alone is skipped); with ``time`` the
    date comes from ``date`` and the time of day from ``time``. ``scale`` says whether
    the value is UTC or local wall-clock time (a UTC offset written in the value always
    wins); ``time_scale`` (default: ``scale``) is the scale of the ``time`` keyword. When
    a local date is joined with a UTC time the day is chosen so that the local-UTC offset
    stays below 12 h (the site longitude decides when the local value has no time).
    ``marks`` says which moment of the exposure the value marks.
    """

    date: str | None = None
    time: str | None = None
    jd: str | None = None
    mjd: str | None = None
    scale: Literal["utc", "local"] = "utc"
    time_scale: Literal["utc", "local"] | None = None
    marks: Literal["start", "mid", "end"] = "start"

    @field_validator("date", "time", "jd", "mjd")
    @classmethod
    def _kw(cls, value: str | None) -> str | None:
        return None if value is None else _check_keywords([value])[0]

    @model_validator(mode="after")
    def _one_kind(self) -> TimeSource:
        if sum(x is not None for x in (self.date, self.jd, self.mjd)) != 1:
            raise ValueError("give exactly one of 'date', 'jd', 'mjd'")
        if self.time is not None and self.date is None:
            raise ValueError("'time' needs 'date'")
        if self.time_scale is not None and self.time is None:
            raise ValueError("'time_scale' needs 'time'")
        return self

    @property
    def label(self) -> str:
        """The keyword(s) read, e.g. ``'DATE-OBS+TIME-OBS'``."""
        if self.date is not None:
            return self.date if self.time is None else f"{self.date}+{self.time}"
        return self.jd or self.mjd or ""


class TimeSpec(_Strict):
    """Ordered time sources (the first usable one wins) and the local time zone."""

    sources: list[TimeSource] = Field(default_factory=list)
    timezone: str | None = Field(None, description="IANA zone of local-time keywords, e.g. America/Denver")
    utc_offset_hours: float | None = Field(
        None, ge=-14, le=14, description="fixed UTC offset of local-time keywords [h], local = UTC + offset"
    )
    tolerance_s: float = Field(
        2.0, ge=0, description="warn when another source disagrees with the winner by more than this [s]"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r} (use an IANA name like America/Denver)"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_zone(self) -> TimeSpec:
        if self.timezone is not None and self.utc_offset_hours is not None:
            raise ValueError("give 'timezone' or 'utc_offset_hours', not both")
        return self

    def local_offset(self, wall: Any) -> tuple[timedelta, str] | None:
        """UTC offset of local wall-clock time ``wall`` (naive datetime) and how it was found."""
        if self.timezone is not None:
            offset = wall.replace(tzinfo=ZoneInfo(self.timezone)).utcoffset()
            return offset, f"time zone {self.timezone}"
        if self.utc_offset_hours is not None:
            return timedelta(hours=self.utc_offset_hours), "profile utc_offset_hours"
        return None


class SiteSpec(_Strict):
    """Observatory site: keywords (degrees, sexagesimal or decimal; metres) and fixed defaults."""

    name: Keywords = Field(default_factory=list)
    lat: Keywords = Field(default_factory=list)
    lon: Keywords = Field(default_factory=list)
    height: Keywords = Field(default_factory=list)
    lon_east_positive: bool = Field(True, description="False when the keywords count longitude west-positive")
    default_name: str | None = None
    default_lat_deg: float | None = Field(None, ge=-90, le=90)
    default_lon_deg: float | None = Field(None, ge=-180, le=360, description="east positive")
    default_height_m: float | None = None


class PointingSpec(_Strict):
    """Pointing RA/Dec keyword pairs, first complete pair wins.

    ``ra_unit`` auto: sexagesimal text is hours, a plain number is degrees.
    """

    pairs: list[tuple[str, str]] = Field(default_factory=list)
    ra_unit: Literal["auto", "hour", "deg"] = "auto"

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return [tuple(_check_keywords(list(p))) for p in value]  # type: ignore[misc]


class PixelScaleSpec(_Strict):
    """Pixel scale [arcsec/pixel, binned], sources in order:

    1. ``keywords`` (arcsec/pixel); 2. the header's celestial WCS (``use_wcs``);
    3. ``focal_length`` [mm or m] with ``pixel_size`` [um or mm], ``pixel_size_binned``
    telling whether the size already includes binning (MaxIm: "after binning");
    4. ``default``. ``pixel_size_unit`` auto reads sizes below 0.5 as mm (no pixel is
    0.5 um wide) and warns.
    """

    keywords: Keywords = Field(default_factory=list)
    use_wcs: bool = True
    focal_length: Keywords = Field(default_factory=list)
    focal_length_unit: Literal["mm", "m"] = "mm"
    pixel_size: list[tuple[str, str] | str] = Field(
        default_factory=list, description="keyword pairs (x, y) or single keywords, first found wins"
    )
    pixel_size_unit: Literal["um", "mm", "auto"] = "auto"
    pixel_size_binned: bool = True
    default: float | None = Field(None, gt=0)

    @field_validator("pixel_size")
    @classmethod
    def _sizes(cls, value: list[Any]) -> list[Any]:
        return [
            _check_keywords([v])[0] if isinstance(v, str) else tuple(_check_keywords(list(v))) for v in value
        ]


class InstrumentProfile(_Strict):
    """One camera's header conventions; see the module docstring and docs/instruments.md."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)
    description: str = ""
    priority: int = Field(0, ge=-1000, le=1000, description="higher is tried first within its folder")
    extends: str | None = Field(None, description="name of the profile this one starts from")
    origin: str = Field("", description="file the profile came from (filled by the loader)")
    match: list[MatchRule] = Field(min_length=1)
    frame_type: FrameTypeSpec = FrameTypeSpec()
    exptime: ExptimeSpec = ExptimeSpec()
    filter: FilterSpec = FilterSpec()
    binning: BinningSpec = BinningSpec()
    ccd_temp: TemperatureSpec = TemperatureSpec()
    set_temp: TemperatureSpec = TemperatureSpec()
    time: TimeSpec = TimeSpec()
    gain: NumberSpec = NumberSpec()
    read_noise: NumberSpec = NumberSpec()
    saturation: SaturationSpec = SaturationSpec()
    image_unit: ImageUnitSpec = ImageUnitSpec()
    subframe: SubframeSpec = SubframeSpec()
    software_bias: NumberSpec = Field(
        NumberSpec(),
        description="keywords of a constant added to every raw pixel by software (SDSS SOFTBIAS) [adu]; "
        "subtracted from raw frames, ignored in already-calibrated ones",
    )
    overscan_section: SectionSpec = SectionSpec()
    trim_section: SectionSpec = SectionSpec()
    site: SiteSpec = SiteSpec()
    pointing: PointingSpec = PointingSpec()
    pixel_scale: PixelScaleSpec = PixelScaleSpec()
    instrument: StringSpec = StringSpec()
    telescope: StringSpec = StringSpec()
    object: StringSpec = StringSpec()

    def matches(self, header: Mapping[str, Any], filename: str | None = None) -> bool:
        """Whether any match rule holds for this header (upper-case keys) and file name."""
        base = Path(filename).name if filename else ""
        for rule in self.match:
            if rule.always:
                return True
            if rule.filename is not None and not (base and _rx(rule.filename).search(base)):
                continue
            if all(
                key in header and _rx(pattern).search(value_text(header[key]))
                for key, pattern in rule.header.items()
            ):
                return True
        return False


def header_view(header: Mapping[str, Any]) -> dict[str, Any]:
    """Upper-case keyword -> value, first occurrence kept; COMMENT/HISTORY/blank cards and
    keywords without a value (astropy ``Undefined``) left out."""
    cards = getattr(header, "cards", None) if type(header).__module__.startswith("astropy.io.fits") else None
    # an astropy Header: each card's value read once (Header.items reads it twice, and every read
    # looks up astropy's configuration: ~0.3 ms a raw frame's header); a mapping: its items
    items = ((card.keyword, card.value) for card in cards) if cards is not None else header.items()
    view: dict[str, Any] = {}
    for key, value in items:
        upper = str(key).strip().upper()
        if not upper or upper in ("COMMENT", "HISTORY") or upper in view:
            continue
        if value is None or type(value).__name__ == "Undefined":
            continue
        view[upper] = value
    return view


@functools.lru_cache(maxsize=4096)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


# ------------------------------------------------------------------------------ loading

BUILTIN_DIR = Path(__file__).with_name("profiles")


def _builtin_files() -> list[Path]:
    return sorted(p for p in BUILTIN_DIR.iterdir() if p.suffix in (".yaml", ".yml"))


BUILTIN_PROFILE_NAMES: tuple[str, ...] = tuple(p.stem for p in _builtin_files())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"instrument profile {path}: cannot read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"instrument profile {path}:{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"instrument profile {path}: the file must hold a mapping (name: ..., match: ...)")
    if not isinstance(data.get("name"), str):
        raise ConfigError(f"instrument profile {path}: field 'name': a profile name (text) is required")
    return data


@functools.lru_cache(maxsize=1)
def _builtin_raw() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((str(p), _read_yaml(p)) for p in _builtin_files())


def _merge(base: Any, child: Any) -> Any:
    """Deep-merge ``child`` over ``base``: mappings key by key, anything else replaced; a
    child key set to None is removed (back to the schema default)."""
    if isinstance(base, dict) and isinstance(child, dict):
        merged = dict(base)
        for key, value in child.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    return copy.deepcopy(child)


def _validation_message(path: str, err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:3]:
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"field '{loc}': {msg}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return f"instrument profile {path}: " + "; ".join(parts) + more


def _build(
    entry: tuple[int, str, dict[str, Any]],
    layers: Sequence[Sequence[tuple[int, str, dict[str, Any]]]],
    chain: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The raw mapping of ``entry`` with its ``extends`` chain resolved."""
    layer, path, raw = entry
    name = raw["name"]
    parent_name = raw.get("extends")
    if parent_name is None:
        return raw
    if not isinstance(parent_name, str):
        raise ConfigError(f"instrument profile {path}: field 'extends': must be a profile name")
    if f"{layer}:{name}" in chain:
        raise ConfigError(f"instrument profile {path}: field 'extends': cycle {' -> '.join([*chain, name])}")
    parent = None
    for candidate_layer in range(layer, len(layers)):
        for cand in layers[candidate_layer]:
            if cand[2]["name"] == parent_name and not (cand[0] == layer and parent_name == name):
                parent = cand
                break
        if parent is not None:
            break
    if parent is None:
        raise ConfigError(f"instrument profile {path}: field 'extends': no profile named {parent_name!r}")
    base = _build(parent, layers, (*chain, f"{layer}:{name}"))
    base = {k: v for k, v in base.items() if k not in _NOT_INHERITED and k != "extends"}
    merged = _merge(base, {k: v for k, v in raw.items() if k != "extends"})
    merged["extends"] = parent_name
    return merged


def load_profile_file(path: Path | str, *, extra_dirs: Iterable[Path | str] = ()) -> InstrumentProfile:
    """Load and validate one profile file (its ``extends`` looked up in ``extra_dirs`` and
    the built-ins). Raises :class:`ConfigError` naming the file and field."""
    path = Path(path).expanduser()
    name = _read_yaml(path)["name"]
    for profile in load_profiles(extra_dirs=(path.parent, *extra_dirs)):
        if profile.name == name and Path(profile.origin) == path:
            return profile
    raise ConfigError(f"instrument profile {path}: not loaded")  # pragma: no cover - defensive


def load_profiles(*, extra_dirs: Iterable[Path | str] = ()) -> list[InstrumentProfile]:
    """All instrument profiles, in the order :func:`match_profile` tries them.

    Parameters
    ----------
    extra_dirs
        Folders of user profiles (``*.yaml``/``*.yml``), earlier folders first. A missing
        folder is an error. User profiles come before the built-ins; one with a built-in's
        name replaces it.

    Returns
    -------
    list of InstrumentProfile
        User profiles (by folder, then priority, highest first), then built-ins (by
        priority), the always-matching ``generic`` profile last.
    """
    layers: list[list[tuple[int, str, dict[str, Any]]]] = []
    for dir_ in extra_dirs:
        folder = Path(dir_).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"instrument profile folder {folder} does not exist")
        files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        layers.append([(len(layers), str(p), _read_yaml(p)) for p in files])
    layers.append([(len(layers), path, copy.deepcopy(raw)) for path, raw in _builtin_raw()])

    for layer in layers:
        seen: dict[str, str] = {}
        for _, path, raw in layer:
            if raw["name"] in seen:
                raise ConfigError(
                    f"instrument profile {path}: field 'name': {raw['name']!r} also defined in {seen[raw['name']]}"
                )
            seen[raw["name"]] = path

    result: list[InstrumentProfile] = []
    taken: set[str] = set()
    for layer in layers:
        built: list[InstrumentProfile] = []
        for entry in layer:
            if entry[2]["name"] in taken:
                logger.debug("profile %s (%s) replaced by a user profile", entry[2]["name"], entry[1])
                continue
            data = _build(entry, layers)
            data["origin"] = entry[1]
            try:
                built.append(InstrumentProfile.model_validate(data))
            except ValidationError as err:
                raise ConfigError(_validation_message(entry[1], err)) from None
        built.sort(key=lambda p: (-p.priority, p.name))
        taken.update(p.name for p in built)
        result.extend(built)
    return result


def match_profile(
    header: Mapping[str, Any],
    *,
    filename: str | Path | None = None,
    profiles: Sequence[InstrumentProfile] | None = None,
) -> InstrumentProfile:
    """The first profile in ``profiles`` (default :func:`load_profiles`) matching the frame.

    ``header`` is an astropy Header or a mapping of keyword -> value. Raises
    :class:`ProfileError` when no profile matches (impossible with ``generic`` in the list).
    """
    view = header_view(header)
    name = str(filename) if filename is not None else None
    candidates = load_profiles() if profiles is None else profiles
    for profile in candidates:
        if profile.matches(view, name):
            return profile
    tried = ", ".join(p.name for p in candidates) or "none"
    raise ProfileError(f"no instrument profile matches {name or 'the header'} (tried {tried})")
