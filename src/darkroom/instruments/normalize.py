"""Header + file name -> :class:`FrameMetadata`, driven by an :class:`InstrumentProfile`.

Conventions (see also :mod:`darkroom.instruments.metadata`):

* times are naive ``datetime`` in UTC; ``time_mid_utc = time_start_utc + exptime/2``;
* sections are FITS-style, 1-based inclusive ``[x1:x2,y1:y2]``, x (columns) first;
* ``shape`` is ``(ny, nx)`` as numpy gives it; ``naxis1 = nx``, ``naxis2 = ny``;
* angles in degrees (RA 0..360, longitude east positive, -180..180), temperatures in
  deg C, gain in electron/adu, read noise in electron, saturation in adu, pixel scale in
  arcsec per (binned) pixel.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from darkroom.errors import ProfileError
from darkroom.instruments._parse import (
    ParsedDateTime,
    format_offset,
    parse_datetime,
    parse_float,
    parse_int,
    parse_section,
    parse_sexagesimal,
    parse_time_of_day,
    value_text,
)
from darkroom.instruments.infer import companion_kind, type_from_header, type_from_pixels
from darkroom.instruments.metadata import FrameMetadata
from darkroom.instruments.profile import (
    InstrumentProfile,
    NumberSpec,
    SectionSpec,
    StringSpec,
    TemperatureSpec,
    TimeSource,
    TimeSpec,
    _rx,
    header_view,
    match_profile,
)
from darkroom.instruments.sitecheck import check_longitude, check_named_site, utc_from_timesys
from darkroom.instruments.sites import KnownSite, find_site

__all__ = ["describe", "normalize"]

logger = logging.getLogger(__name__)

_NEEDS_EXPTIME = ("dark", "flat", "light", "arc")
#: calibrated flux-density units (BUNIT, lower case, no spaces) -> (name, AB magnitude of one unit)
_AB_UNITS: dict[str, tuple[str, float]] = {
    **dict.fromkeys(("nanomaggy", "nanomaggies", "nmgy", "nmaggy"), ("nanomaggy", 22.5)),
    **dict.fromkeys(("maggy", "maggies"), ("maggy", 0.0)),
    "jy": ("Jy", 8.9),
    "mjy": ("mJy", 16.4),
    **dict.fromkeys(("ujy", "microjy", "µjy", "μjy"), ("uJy", 23.9)),
    "njy": ("nJy", 31.4),
}
_JD_UNIX0 = 2440587.5  # JD of 1970-01-01T00:00 UTC
_EPOCH = datetime(1970, 1, 1)
_ARCSEC_PER_RAD_OVER_1000 = 206.264806  # arcsec per radian / 1000: scale = this * pixel_um / focal_mm


def _as_float(value: object) -> float | None:
    """A header value as a number, or None when it is not one."""
    try:
        return parse_float(value)
    except ValueError:
        return None


class _Skip(Exception):
    """A time source that cannot be used for a reason that is no fault of the header."""


class _Reader:
    """Reads one header through one profile, collecting warnings."""

    def __init__(self, view: dict[str, Any], profile: InstrumentProfile, filename: str | None) -> None:
        self.view = view
        self.profile = profile
        self.filename = filename
        self.warnings: list[str] = []
        self.unknown_type_note = ""
        self.type_keyword_unrecognised = False

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def present(self, keyword: str) -> bool:
        value = self.view.get(keyword)
        return value is not None and not (isinstance(value, str) and not value.strip())

    def show(self, keyword: str) -> str:
        text = repr(self.view[keyword])
        return f"{keyword}={text[:40]}{'...' if len(text) > 40 else ''}"

    # ---------------------------------------------------------------- simple fields

    def text(self, spec: StringSpec) -> str | None:
        for keyword in spec.keywords:
            if self.present(keyword):
                return value_text(self.view[keyword])
        return spec.default

    def number(self, spec: NumberSpec, what: str) -> tuple[float | None, str | None]:
        for keyword in spec.keywords:
            if not self.present(keyword):
                continue
            try:
                value = parse_float(self.view[keyword])
            except ValueError as err:
                self.warn(f"{self.show(keyword)} ignored for {what}: {err}")
                continue
            if (spec.min_value is not None and value < spec.min_value) or (
                spec.max_value is not None and value > spec.max_value
            ):
                self.warn(
                    f"{self.show(keyword)} ignored for {what}: outside the plausible "
                    f"range {spec.min_value}..{spec.max_value}"
                )
                continue
            return value, keyword
        return spec.default, None

    def temperature(self, spec: TemperatureSpec, what: str) -> float | None:
        plain = NumberSpec(keywords=spec.keywords, default=None)
        value, keyword = self.number(plain, what)
        if value is None or keyword is None:
            return spec.default
        kelvin = spec.unit == "K" or (spec.unit == "auto" and value > 100)
        celsius = value - 273.15 if kelvin else value
        low = max(-273.15, spec.min_value if spec.min_value is not None else -273.15)
        high = min(100.0, spec.max_value if spec.max_value is not None else 100.0)
        if not low <= celsius <= high:
            self.warn(f"{self.show(keyword)} ignored for {what}: implausible temperature")
            return spec.default
        if kelvin and spec.unit == "auto":
            self.warn(f"{self.show(keyword)} read as kelvin ({celsius:.1f} C)")
        return celsius

    def section(self, spec: SectionSpec, nx: int, ny: int, what: str) -> str | None:
        for keyword in [*spec.keywords, None]:
            raw = spec.default if keyword is None else self.view.get(keyword)
            if raw is None or (keyword is not None and not self.present(keyword)):
                continue
            try:
                return parse_section(raw, nx=nx, ny=ny)
            except ValueError as err:
                where = self.show(keyword) if keyword else f"profile default {raw!r}"
                self.warn(f"{where} ignored for {what}: {err}")
        return None

    # ---------------------------------------------------------------- frame type

    def frame_type(self) -> tuple[str, str]:
        spec = self.profile.frame_type
        unrecognised: list[str] = []

        def from_keywords() -> tuple[str, str] | None:
            for keyword in spec.keywords:
                if not self.present(keyword):
                    continue
                text = value_text(self.view[keyword])
                for ftype, patterns in spec.values.items():
                    if any(_fullmatch(p, text) for p in patterns):
                        return ftype, keyword
                unrecognised.append(self.show(keyword))
            return None

        def from_filename() -> tuple[str, str] | None:
            if not self.filename:
                return None
            base = Path(self.filename).name
            for ftype, patterns in spec.filename.items():
                if any(_search(p, base) for p in patterns):
                    return ftype, "filename"
            return None

        order = (from_filename, from_keywords) if spec.prefer_filename else (from_keywords, from_filename)
        for step in order:
            found = step()
            if found is not None:
                if unrecognised:
                    self.warn(f"{', '.join(unrecognised)} not a known frame type; used {found[1]}")
                return found
        if spec.default is not None and not unrecognised:
            self.warn(
                f"no type keyword or file-name hint: {spec.default} (profile {self.profile.name} default)"
            )
            return spec.default, "profile default"
        self.type_keyword_unrecognised = bool(unrecognised)
        if unrecognised:
            self.unknown_type_note = (
                f"frame type unknown: {', '.join(unrecognised)} not recognised and no file-name hint"
            )
        else:
            keys = "/".join(spec.keywords) or "no type keyword in the profile"
            self.unknown_type_note = f"frame type unknown: no {keys} and no file-name hint"
        return "unknown", ""

    # ---------------------------------------------------------------- exposure

    def exptime(self) -> float | None:
        spec = self.profile.exptime
        scale = 1e-3 if spec.unit == "ms" else 1.0
        found: list[tuple[str, float]] = []
        for keyword in spec.keywords:
            if not self.present(keyword):
                continue
            try:
                value = parse_float(self.view[keyword]) * scale
            except ValueError as err:
                self.warn(f"{self.show(keyword)} ignored for exposure time: {err}")
                continue
            if value < 0 or (spec.max_value is not None and value > spec.max_value):
                self.warn(f"{self.show(keyword)} ignored for exposure time: out of range")
                continue
            found.append((keyword, value))
        if not found:
            return spec.default
        first_kw, first = found[0]
        for keyword, value in found[1:]:
            if abs(value - first) > 1e-3 * max(1.0, first):
                self.warn(f"{keyword}={value:g} s disagrees with {first_kw}={first:g} s; used {first_kw}")
        return first

    # ---------------------------------------------------------------- binning

    def binning(self) -> tuple[int, int]:
        spec = self.profile.binning

        def one(keywords: Sequence[str]) -> int | None:
            for keyword in keywords:
                if not self.present(keyword):
                    continue
                try:
                    value = parse_int(self.view[keyword])
                except ValueError as err:
                    self.warn(f"{self.show(keyword)} ignored for binning: {err}")
                    continue
                if 1 <= value <= 64:
                    return value
                self.warn(f"{self.show(keyword)} ignored for binning: out of range 1..64")
            return None

        bx, by = one(spec.x), one(spec.y)
        if bx is None and by is None:
            for keyword in spec.pair:
                if not self.present(keyword):
                    continue
                parts = value_text(self.view[keyword]).replace("x", " ").replace("X", " ").split()
                try:
                    values = [parse_int(p) for p in parts]
                except ValueError:
                    values = []
                if len(values) == 2 and all(1 <= v <= 64 for v in values):
                    return values[0], values[1]
                self.warn(f"{self.show(keyword)} ignored for binning: expected two integers 'bx by'")
        if bx is None and by is None:
            return spec.default, spec.default
        return (bx or by or spec.default), (by or bx or spec.default)

    # ---------------------------------------------------------------- site, pointing

    def angle(self, keyword: str, *, lo: float, hi: float, what: str) -> float | None:
        try:
            value, _ = parse_sexagesimal(self.view[keyword])
        except ValueError as err:
            self.warn(f"{self.show(keyword)} ignored for {what}: {err}")
            return None
        if not lo <= value <= hi:
            self.warn(f"{self.show(keyword)} ignored for {what}: outside {lo:g}..{hi:g} deg")
            return None
        return value

    def first_angle(self, keywords: Sequence[str], *, lo: float, hi: float, what: str) -> float | None:
        for keyword in keywords:
            if self.present(keyword):
                value = self.angle(keyword, lo=lo, hi=hi, what=what)
                if value is not None:
                    return value
        return None

    def site(self) -> tuple[str | None, float | None, float | None, float | None]:
        spec = self.profile.site
        name = (
            next((value_text(self.view[k]) for k in spec.name if self.present(k)), None) or spec.default_name
        )
        lat = self.first_angle(spec.lat, lo=-90, hi=90, what="latitude")
        if lat is None:
            lat = spec.default_lat_deg
        lon = self.first_angle(spec.lon, lo=-360, hi=360, what="longitude")
        if lon is not None and not spec.lon_east_positive:
            lon = -lon
        if lon is None:
            lon = spec.default_lon_deg
        if lon is not None:
            lon = (lon + 180.0) % 360.0 - 180.0
        height, _ = self.number(
            NumberSpec(keywords=spec.height, min_value=-500, max_value=10000), "site height"
        )
        if height is None:
            height = spec.default_height_m
        return name, lat, lon, height

    def pointing(self) -> tuple[float | None, float | None]:
        spec = self.profile.pointing
        for ra_key, dec_key in spec.pairs:
            if not (self.present(ra_key) and self.present(dec_key)):
                continue
            try:
                ra, sexagesimal = parse_sexagesimal(self.view[ra_key])
            except ValueError as err:
                self.warn(f"{self.show(ra_key)} ignored for pointing: {err}")
                continue
            in_hours = spec.ra_unit == "hour" or (spec.ra_unit == "auto" and sexagesimal)
            limit = 24.0 if in_hours else 360.0
            if not 0 <= ra <= limit:
                self.warn(f"{self.show(ra_key)} ignored for pointing: outside 0..{limit:g}")
                continue
            dec = self.angle(dec_key, lo=-90, hi=90, what="pointing")
            if dec is None:
                continue
            return (ra * 15.0 if in_hours else ra) % 360.0, dec
        return None, None

    # ---------------------------------------------------------------- pixel scale

    def wcs_scale(self) -> float | None:
        """arcsec/pixel from a celestial WCS (PC*CDELT, else CD, else CDELT), or None."""
        view = self.view
        c1, c2 = str(view.get("CTYPE1", "")).upper(), str(view.get("CTYPE2", "")).upper()
        celestial = {("RA", "DEC"), ("DEC", "RA"), ("GLON", "GLAT"), ("ELON", "ELAT"), ("GLAT", "GLON")}
        if (c1[:4].rstrip("-"), c2[:4].rstrip("-")) not in celestial:
            return None
        units = {"DEG": 1.0, "ARCMIN": 1 / 60, "ARCSEC": 1 / 3600, "RAD": 180 / math.pi}

        def num(key: str, default: float | None) -> float | None:
            if key not in view:
                return default
            return parse_float(view[key])

        try:
            u1 = units[str(view.get("CUNIT1", "deg")).strip().upper() or "DEG"]
            u2 = units[str(view.get("CUNIT2", "deg")).strip().upper() or "DEG"]
            if any(k in view for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2")):
                d1, d2 = num("CDELT1", 1.0), num("CDELT2", 1.0)
                m = [
                    [num("PC1_1", 1.0) * d1, num("PC1_2", 0.0) * d1],  # type: ignore[operator]
                    [num("PC2_1", 0.0) * d2, num("PC2_2", 1.0) * d2],  # type: ignore[operator]
                ]
            elif any(k in view for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")):
                m = [[num("CD1_1", 0.0), num("CD1_2", 0.0)], [num("CD2_1", 0.0), num("CD2_2", 0.0)]]
            elif "CDELT1" in view and "CDELT2" in view:
                m = [[num("CDELT1", None), 0.0], [0.0, num("CDELT2", None)]]
            else:
                return None
        except (KeyError, ValueError) as err:
            self.warn(f"celestial WCS ignored: {err}")
            return None
        det = abs(m[0][0] * m[1][1] - m[0][1] * m[1][0]) * u1 * u2  # type: ignore[operator]
        if not det > 0:
            self.warn("celestial WCS ignored: singular pixel-to-sky matrix")
            return None
        return math.sqrt(det) * 3600.0

    def pixel_scale(self, binning: tuple[int, int]) -> tuple[float | None, bool]:
        spec = self.profile.pixel_scale
        value, _ = self.number(
            NumberSpec(keywords=spec.keywords, min_value=1e-4, max_value=1e5), "pixel scale"
        )
        wcs = self.wcs_scale() if spec.use_wcs else None
        if value is not None:
            return value, wcs is not None
        if wcs is not None:
            return wcs, True
        focal, _ = self.number(NumberSpec(keywords=spec.focal_length), "focal length")
        if focal is not None and focal > 0:
            focal_mm = focal * (1000.0 if spec.focal_length_unit == "m" else 1.0)
            size_um = self.pixel_size_um()
            if size_um is not None:
                if not spec.pixel_size_binned:
                    size_um *= math.sqrt(binning[0] * binning[1])
                return _ARCSEC_PER_RAD_OVER_1000 * size_um / focal_mm, False
        return spec.default, False

    def pixel_size_um(self) -> float | None:
        spec = self.profile.pixel_scale
        for entry in spec.pixel_size:
            keys = (entry,) if isinstance(entry, str) else entry
            if not self.present(keys[0]):
                continue
            sizes = []
            for key in keys:
                if not self.present(key):
                    continue
                try:
                    sizes.append(parse_float(self.view[key]))
                except ValueError as err:
                    self.warn(f"{self.show(key)} ignored for pixel size: {err}")
            if not sizes or min(sizes) <= 0:
                continue
            size = math.sqrt(sizes[0] * sizes[-1])
            if spec.pixel_size_unit == "mm":
                size *= 1000.0
            elif spec.pixel_size_unit == "auto" and size < 0.5:
                self.warn(f"{self.show(keys[0])} read as mm ({size * 1000:g} um): no pixel is below 0.5 um")
                size *= 1000.0
            if not 0.5 <= size <= 100:
                self.warn(f"{self.show(keys[0])} ignored for pixel size: {size:g} um is implausible")
                continue
            return size
        return None

    # ---------------------------------------------------------------- saturation

    def saturation(self) -> float | None:
        spec = self.profile.saturation
        value, _ = self.number(spec, "saturation")
        if value is not None and value > 0:
            return value
        if not spec.from_bitpix:
            return None
        try:
            bitpix = parse_int(self.view.get("BITPIX", 0))
            bzero = parse_float(self.view.get("BZERO", 0))
            bscale = parse_float(self.view.get("BSCALE", 1))
        except ValueError:
            return None
        if bitpix not in (8, 16, 32, 64) or bscale != 1:
            return None  # floating-point data or scaled integers: no fixed ceiling
        ceiling = (255.0 if bitpix == 8 else 2.0 ** (bitpix - 1) - 1) + bzero
        return ceiling if ceiling > 0 else None

    # ---------------------------------------------------------------- unit, software bias

    def image_unit(self) -> tuple[str | None, bool, float | None]:
        """(normalised unit, already calibrated, AB zero point of one unit) from the profile's keywords."""
        spec = self.profile.image_unit
        unit = next((value_text(self.view[k]) for k in spec.keywords if self.present(k)), None)
        key = None if unit is None else unit.strip().lower().replace(" ", "")
        if key in _AB_UNITS:
            name, zp = _AB_UNITS[key]
            return name, True, zp
        for keyword in spec.nanomaggy_per_count:
            if not self.present(keyword):
                continue
            try:
                per_count = parse_float(self.view[keyword])
            except ValueError as err:
                self.warn(f"{self.show(keyword)} ignored for the zero point: {err}")
                continue
            if per_count > 0:
                return unit, False, 22.5 - 2.5 * math.log10(per_count)
            self.warn(f"{self.show(keyword)} ignored for the zero point: not positive")
        return unit, False, None

    def subframe(self) -> tuple[int | None, int | None]:
        """(x, y) offset of a subframe read-out in the full binned detector, 0-based; None where
        no offset keyword is present."""
        spec = self.profile.subframe
        out: list[int | None] = []
        for keywords in (spec.x, spec.y):
            value = None
            for keyword in keywords:
                if not self.present(keyword):
                    continue
                try:
                    value = parse_int(self.view[keyword])
                except ValueError as err:
                    self.warn(f"{self.show(keyword)} ignored for the subframe offset: {err}")
                    continue
                if value < 0:
                    self.warn(f"{self.show(keyword)} ignored for the subframe offset: negative")
                    value = None
                    continue
                break
            out.append(value)
        if out[0] is None and out[1] is None:
            return self._subframe_from_sections()
        return out[0], out[1]

    def _subframe_from_sections(self) -> tuple[int | None, int | None]:
        """The offset from a detector section (DETSEC, unbinned 1-based) or IRAF's LTV; (None,
        None) when neither says the frame is a cut (a zero offset is a full frame)."""
        spec = self.profile.subframe
        bx, by = self.binning()
        for keyword in spec.detector_section:
            if not self.present(keyword):
                continue
            try:
                x1, x2, y1, y2 = (int(v) for v in re.findall(r"-?\d+", parse_section(self.view[keyword])))
            except ValueError as err:
                self.warn(f"{self.show(keyword)} ignored for the subframe offset: {err}")
                continue
            x0, y0 = (min(x1, x2) - 1) // bx, (min(y1, y2) - 1) // by
            return (x0, y0) if (x0 or y0) else (None, None)
        if len(spec.ltv) == 2 and all(self.present(k) for k in spec.ltv):
            if (bx, by) != (1, 1) or any(
                self.present(k) and _as_float(self.view[k]) not in (None, 1.0) for k in ("LTM1_1", "LTM2_2")
            ):
                self.warn("LTV1/LTV2 ignored for the subframe offset: binned or scaled (LTM) frames")
                return None, None
            try:
                x0, y0 = (-parse_float(self.view[k]) for k in spec.ltv)
            except ValueError as err:
                self.warn(f"LTV1/LTV2 ignored for the subframe offset: {err}")
                return None, None
            if x0 < 0 or y0 < 0 or abs(x0 - round(x0)) > 1e-6 or abs(y0 - round(y0)) > 1e-6:
                self.warn("LTV1/LTV2 ignored for the subframe offset: not a whole, non-negative pixel shift")
                return None, None
            x0, y0 = round(x0), round(y0)
            return (x0, y0) if (x0 or y0) else (None, None)
        return None, None

    def software_bias(self, precalibrated: bool) -> float | None:
        value, keyword = self.number(self.profile.software_bias, "software bias")
        if value is None or keyword is None:
            return None
        if precalibrated:
            self.warn(f"{self.show(keyword)} not subtracted: the image is already calibrated")
            return None
        return value

    # ---------------------------------------------------------------- time

    def time(self, exptime_s: float | None, lon_deg: float | None) -> tuple[datetime, str] | tuple[None, str]:
        """Start of exposure (UTC) from the first usable time source, and how it was read.

        Returns ``(None, reasons)`` when no source is usable.
        """
        spec = self.profile.time
        found: list[tuple[TimeSource, datetime, str]] = []
        notes: list[str] = []
        for source in spec.sources:
            try:
                result = _read_time_source(self, source, spec, lon_deg)
            except _Skip as skip:
                notes.append(f"{source.label}: {skip}")
                continue
            except ValueError as err:
                notes.append(f"{source.label}: {err}")
                self.warn(f"time source {source.label} ignored: {err}")
                continue
            if result is None:
                continue
            instant, how = result
            if source.marks != "start":
                if exptime_s is None:
                    notes.append(
                        f"{source.label}: marks the exposure {source.marks} but the exposure time is unknown"
                    )
                    continue
                instant -= timedelta(seconds=exptime_s / (2.0 if source.marks == "mid" else 1.0))
                how = f"{how}, exposure {source.marks}"
            found.append((source, instant, how))
        if not found:
            if notes:
                return None, "; ".join(notes)
            blank = sorted(
                {k for s in spec.sources for k in (s.date, s.time, s.jd, s.mjd) if k and k in self.view}
            )
            if blank:
                return None, f"{', '.join(blank)} blank"
            labels = [s.label for s in spec.sources]
            tried = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
            return None, f"no time keyword in the header; tried {tried or 'none'}"
        winner, start, how = found[0]
        for source, other, _ in found[1:]:
            delta = (other - start).total_seconds()
            if abs(delta) > spec.tolerance_s:
                self.warn(
                    f"{source.label} disagrees with {winner.label} by {_fmt_seconds(delta)}; "
                    f"used {winner.label} (first in the profile's time sources)"
                )
        return start, how


def _fullmatch(pattern: str, text: str) -> bool:
    return _rx(pattern).fullmatch(text) is not None


def _search(pattern: str, text: str) -> bool:
    return _rx(pattern).search(text) is not None


def _fmt_seconds(seconds: float) -> str:
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    if seconds < 120:
        return f"{sign}{seconds:.1f} s"
    if seconds < 7200:
        return f"{sign}{seconds / 60:.1f} min"
    return f"{sign}{seconds / 3600:.2f} h"


def _from_jd(jd: float) -> datetime:
    if not 2415020.5 <= jd <= 2488070.5:
        raise ValueError(f"JD {jd:.5f} outside the years 1900-2100")
    return _EPOCH + timedelta(days=jd - _JD_UNIX0)


def _offset_for(
    reader: _Reader, spec: TimeSpec, scale: str, explicit: timedelta | None, wall: datetime
) -> tuple[timedelta, str]:
    """UTC offset (local = UTC + offset) of a value and a short description."""
    if explicit is not None:
        return explicit, f"offset {format_offset(explicit)} in value"
    if scale == "utc":
        return timedelta(0), "UTC"
    local = spec.local_offset(wall)
    if local is None:
        raise _Skip("local time but the profile gives no 'timezone' or 'utc_offset_hours'")
    offset, where = local
    return offset, f"local, UTC{format_offset(offset)} from {where}"


def _read_time_source(
    reader: _Reader, source: TimeSource, spec: TimeSpec, lon_deg: float | None
) -> tuple[datetime, str] | None:
    """(UTC instant the source gives, description), None if its keywords are absent.

    Raises ValueError for an unreadable value and _Skip when the value cannot be used
    with this profile (a date without time, local time without a time zone).
    """
    view = reader.view
    if source.jd is not None or source.mjd is not None:
        key = source.jd or source.mjd or ""
        if not reader.present(key):
            return None
        number = parse_float(view[key])
        wall = _from_jd(number if source.jd else number + 2400000.5)
        offset, how = _offset_for(reader, spec, source.scale, None, wall)
        return wall - offset, f"{key} ({how})"

    assert source.date is not None
    if not reader.present(source.date) or (source.time is not None and not reader.present(source.time)):
        return None
    parsed: ParsedDateTime = parse_datetime(view[source.date])
    if source.time is None:
        if not parsed.has_time:
            raise _Skip(f"{view[source.date]!r} is a date without a time of day")
        offset, how = _offset_for(reader, spec, source.scale, parsed.offset, parsed.value)
        return parsed.value - offset, f"{source.date} ({how})"

    time_of_day, time_offset = parse_time_of_day(view[source.time])
    day = datetime.combine(parsed.value.date(), datetime.min.time())
    time_scale = source.time_scale or source.scale
    date_kind = ("offset", parsed.offset) if parsed.offset is not None else (source.scale, None)
    time_kind = ("offset", time_offset) if time_offset is not None else (time_scale, None)

    if date_kind == time_kind:  # date and time in the same frame: simply join them
        wall = day + time_of_day
        offset, how = _offset_for(reader, spec, time_scale, time_offset, wall)
        return wall - offset, f"{source.label} ({how})"

    # Date and time in different frames (e.g. local date, UTC time): the calendar day of
    # the time's frame may differ from the date's by one.
    def instant(candidate_day: datetime) -> tuple[datetime, str]:
        wall = candidate_day + time_of_day
        offset, how = _offset_for(reader, spec, time_scale, time_offset, wall)
        return wall - offset, how

    candidates = [instant(day + timedelta(days=k)) for k in (-1, 0, 1)]
    try:
        date_offset, _ = _offset_for(reader, spec, source.scale, parsed.offset, parsed.value)
    except _Skip:
        date_offset = None
    if parsed.has_time:
        # The date keyword's own clock: its UTC instant is known up to its offset (< 12 h
        # in magnitude when unknown), so the nearest candidate is the right day.
        reference = parsed.value - (date_offset or timedelta(0))
        best = min(candidates, key=lambda c: abs((c[0] - reference).total_seconds()))
        note = "day from the date keyword's clock"
    else:
        if date_offset is None and lon_deg is not None:
            date_offset = timedelta(hours=lon_deg / 15.0)
            note = "day from the site longitude"
        else:
            note = "day from the date's time zone"
        if date_offset is None:
            reader.warn(
                f"{source.date} (local date) joined with {source.time} (UTC) without a time zone or "
                "site longitude: the day may be off by one"
            )
            best = candidates[1]
            note = "day unchecked"
        else:
            matching = [c for c in candidates if (c[0] + date_offset).date() == parsed.value.date()]
            best = matching[0] if matching else candidates[1]
    instant_utc, how = best
    return instant_utc, f"{source.label} ({source.scale} date, {how} time; {note})"


# ------------------------------------------------------------------------------ public


def normalize(
    header: Mapping[str, Any],
    *,
    filename: str | Path | None = None,
    shape: tuple[int, int] | None = None,
    profiles: Sequence[InstrumentProfile] | None = None,
    data: np.ndarray | None = None,
) -> FrameMetadata:
    """Normalised metadata of one raw frame.

    Parameters
    ----------
    header
        The frame's primary (or image) header: an astropy ``Header`` or a mapping of
        keyword -> value. Keywords are compared case-insensitively.
    filename
        The file's name or path; only its base name is used (frame-type hints, matching).
    shape
        The image shape ``(ny, nx)`` in pixels; defaults to NAXIS2/NAXIS1 of the header.
    profiles
        Profiles to choose from, in order (default: :func:`load_profiles` with the
        built-ins only); the first whose match rules hold is used.

    Returns
    -------
    FrameMetadata
        Times are UTC (naive datetimes); ``time_mid_utc = time_start_utc + exptime/2``.
        ``night`` is the local calendar date on which the night began:
        ``(time_mid_utc + site_lon_deg/15 h - 12 h).date()`` when the site longitude is
        known (east positive), else ``(time_mid_utc - 12 h).date()``. A frame whose type
        cannot be found gets ``frame_type='unknown'`` (ingest quarantines it); non-fatal
        oddities are listed in ``warnings``.

    Raises
    ------
    ProfileError
        With a one-line reason, when the header is unusable: no usable time stamp, no
        usable exposure time for a dark, flat, light or arc, or values that cannot be read
        at all. No other exception escapes for a bad header.
    """
    if not isinstance(header, Mapping) and not hasattr(header, "items"):
        raise ProfileError(f"header is a {type(header).__name__}, not a FITS header or mapping")
    name = str(filename) if filename is not None else None
    label = Path(name).name if name else "frame"
    try:
        view = header_view(header)
        profile = match_profile(view, filename=name, profiles=profiles)
        return _normalize(view, profile, name, shape, data)
    except ProfileError:
        raise
    except (ValueError, TypeError, ArithmeticError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ProfileError(f"{label}: header not readable: {reason}") from err


def _normalize(
    view: dict[str, Any],
    profile: InstrumentProfile,
    filename: str | None,
    shape: tuple[int, int] | None,
    data: np.ndarray | None = None,
) -> FrameMetadata:
    reader = _Reader(view, profile, filename)
    label = Path(filename).name if filename else "frame"

    nx, ny = 0, 0
    try:
        nx, ny = parse_int(view.get("NAXIS1", 0)), parse_int(view.get("NAXIS2", 0))
    except ValueError:
        reader.warn("NAXIS1/NAXIS2 not integers")
    if shape is not None:
        try:
            sy, sx = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ProfileError(f"{label}: shape {shape!r} is not (ny, nx)") from None
        if (nx or ny) and (sx, sy) != (nx, ny):
            reader.warn(f"data shape (ny, nx)=({sy}, {sx}) differs from NAXIS2/NAXIS1=({ny}, {nx})")
        nx, ny = sx, sy
    nx, ny = max(nx, 0), max(ny, 0)

    companion = companion_kind(view, filename)
    if companion is not None:
        frame_type, type_source = "unknown", ""
        reader.warn(f"a {companion[0]} ({companion[1]}), not a frame to reduce")
    else:
        frame_type, type_source = reader.frame_type()

    exptime = reader.exptime()
    image_unit, precalibrated, unit_zp = reader.image_unit()
    if frame_type == "unknown" and companion is None and precalibrated:
        # a frame in a calibrated flux unit is a science product, whatever else the header says
        frame_type, type_source = "light", f"BUNIT={image_unit}"
        reader.warn(f"frame type: light (already calibrated, in {image_unit})")
    if frame_type == "unknown" and companion is None:
        frame_type, type_source = _infer_type(reader, exptime, data)
    if exptime is None:
        if frame_type in _NEEDS_EXPTIME:
            keys = "/".join(profile.exptime.keywords) or "none in the profile"
            raise ProfileError(f"{label}: no usable exposure time for a {frame_type} frame ({keys})")
        if frame_type == "bias":
            exptime = 0.0
            reader.warn("no exposure time in the header; 0 s assumed for a bias")
    elif frame_type == "bias" and exptime > 0:
        reader.warn(f"bias frame with a {exptime:g} s exposure")
    elif frame_type == "dark" and exptime == 0:
        reader.warn("dark frame with a 0 s exposure (a bias?)")

    site_name, lat, lon, height = reader.site()
    named = _named_site(reader, profile)
    if named is not None and (lon is None or lat is None):
        # the name is all there is: the site's position serves the time and the night
        lon, lat, height, site_name = _apply_named_site(reader, named, lon, lat, height, site_name)
        named = None

    start, how = reader.time(exptime, lon)
    mid = night = None
    if start is None:
        if frame_type != "unknown":
            raise ProfileError(f"{label}: no usable observation time ({how})")
        reader.warn(f"no usable observation time ({how})")
        how = ""
    else:
        start = _honour_timesys(reader, start, how)
        lon, sidereal = _cross_check_longitude(reader, lon, start)
        if sidereal:
            named = None  # the telescope's own sidereal time outranks a name
        mid = start + timedelta(seconds=(exptime or 0.0) / 2.0)

    if named is not None:
        lon, lat, height, site_name = _apply_named_site(reader, named, lon, lat, height, site_name)
    if mid is not None:
        # the local night at the site, once its longitude is settled
        local_h = lon / 15.0 if lon is not None else _explicit_offset_h(reader)
        night_date: date = (mid + timedelta(hours=(local_h or 0.0) - 12.0)).date()
        night = night_date.isoformat()

    binning = reader.binning()
    filter_name = _filter(reader)
    gain, _ = reader.number(profile.gain, "gain")
    read_noise, _ = reader.number(profile.read_noise, "read noise")
    ra, dec = reader.pointing()
    scale, has_wcs = reader.pixel_scale(binning)
    instrument = reader.text(profile.instrument) or profile.name

    try:
        return FrameMetadata(
            profile=profile.name,
            frame_type=frame_type,  # type: ignore[arg-type]
            type_source=type_source,
            instrument=instrument,
            telescope=reader.text(profile.telescope) or "",
            object=reader.text(profile.object) or "",
            exptime_s=exptime,
            filter=filter_name,
            binning_x=binning[0],
            binning_y=binning[1],
            naxis1=nx,
            naxis2=ny,
            ccd_temp_c=reader.temperature(profile.ccd_temp, "CCD temperature"),
            set_temp_c=reader.temperature(profile.set_temp, "CCD set point"),
            time_start_utc=start,
            time_mid_utc=mid,
            time_source=how,
            night=night,
            gain_e_per_adu=gain if gain is not None and gain > 0 else None,
            read_noise_e=read_noise if read_noise is not None and read_noise >= 0 else None,
            saturation_adu=reader.saturation(),
            overscan_section=reader.section(profile.overscan_section, nx, ny, "overscan section"),
            trim_section=reader.section(profile.trim_section, nx, ny, "trim section"),
            site_name=site_name,
            site_lat_deg=lat,
            site_lon_deg=lon,
            site_height_m=height,
            ra_deg=ra,
            dec_deg=dec,
            pixel_scale_arcsec=scale,
            has_wcs=has_wcs,
            subframe_x=reader.subframe()[0],
            subframe_y=reader.subframe()[1],
            image_unit=image_unit,
            precalibrated=precalibrated,
            unit_zero_point_mag=unit_zp,
            software_bias_adu=reader.software_bias(precalibrated),
            companion=None if companion is None else f"{companion[0]} ({companion[1]})",
            warnings=tuple(reader.warnings),
        )
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"{label}: {field} {first['msg']} (profile {profile.name})") from None


_LST_KEYWORDS = ("LST-OBS", "LST", "LOCALST", "SIDEREAL", "ST")
_HA_KEYWORDS = ("HA", "OBJCTHA", "HOURANG", "HA-OBS")


def _honour_timesys(reader: _Reader, start: datetime, how: str) -> datetime:
    """Convert a TAI/TT/GPS time stamp (TIMESYS) to UTC; other non-UTC systems are reported."""
    timesys = value_text(reader.view.get("TIMESYS", "UTC")).upper()
    if timesys in ("UTC", "UT", "") or "local" in how or "offset" in how:
        return start
    converted = utc_from_timesys(start, timesys)
    if converted is None:
        reader.warn(f"TIMESYS={timesys!r}: times read as UTC (not converted)")
        return start
    utc, delta = converted
    reader.warn(f"TIMESYS={timesys!r}: time stamps converted to UTC ({delta:+.3f} s)")
    return utc


def _explicit_offset_h(reader: _Reader) -> float | None:
    """UTC offset [h] written in the DATE-OBS value itself ('2025-06-02T21:10:00-07:00'), or None."""
    for key in ("DATE-OBS", "DATE-BEG", "DATE-LOC"):
        if reader.present(key):
            try:
                parsed = parse_datetime(reader.view[key])
            except ValueError:
                continue
            if parsed.offset is not None:
                return parsed.offset.total_seconds() / 3600.0
    return None


def _named_site(reader: _Reader, profile: InstrumentProfile) -> tuple[KnownSite, str] | None:
    """The known site the header's site name (then its telescope name) identifies, with the
    keyword and value that named it (``"OBSERVAT='ARCSAT'"``)."""
    for keyword in [*profile.site.name, *profile.telescope.keywords]:
        if reader.present(keyword):
            value = value_text(reader.view[keyword])
            found = find_site(value)
            if found is not None:
                return found[0], f"{keyword}={value!r}"
    return None


def _apply_named_site(
    reader: _Reader,
    named: tuple[KnownSite, str],
    lon: float | None,
    lat: float | None,
    height: float | None,
    site_name: str | None,
) -> tuple[float, float, float | None, str]:
    """The position after checking it against the named site (a warning when it changed)."""
    site, named_by = named
    checked = check_named_site(lon, lat, height, site=site, named_by=named_by)
    if checked.warning:
        reader.warn(checked.warning)
    return checked.lon_deg, checked.lat_deg, checked.height_m, site_name or site.name


def _cross_check_longitude(reader: _Reader, lon: float | None, start: datetime) -> tuple[float | None, bool]:
    """The site longitude, checked against the sidereal time or the UTC offset the header gives,
    and whether a sidereal time (LST or hour angle) was there to check it."""
    lst_deg = source = None
    for key in _LST_KEYWORDS:
        if reader.present(key):
            try:
                value, sexagesimal = parse_sexagesimal(reader.view[key])
            except ValueError:
                continue
            if 0 <= value <= 24 or sexagesimal:
                lst_deg, source = (value * 15.0) % 360.0, key
                break
            if 0 <= value <= 360:
                lst_deg, source = value, key
                break
    if lst_deg is None:
        ra, _ = reader.pointing()
        for key in _HA_KEYWORDS:
            if ra is None or not reader.present(key):
                continue
            try:
                value, sexagesimal = parse_sexagesimal(reader.view[key])
            except ValueError:
                continue
            ha_deg = value * 15.0 if (sexagesimal or abs(value) <= 12) else value
            lst_deg, source = (ha_deg + ra) % 360.0, f"{key} + RA"
            break
    if lst_deg is None and lon is None:
        return None, False
    offset_h = _explicit_offset_h(reader)
    checked, note = check_longitude(
        lon, utc=start, lst_deg=lst_deg, lst_source=source or "", utc_offset_h=offset_h
    )
    if note:
        reader.warn(note)
    return checked, lst_deg is not None


def _infer_type(reader: _Reader, exptime: float | None, data: np.ndarray | None) -> tuple[str, str]:
    """Frame type from the header's content, then the pixels, when nothing names it.

    A type keyword with an unrecognised value (e.g. IMAGETYP='FOCUS') is respected: such
    a frame stays unknown. Every inference is written into the warnings.
    """
    spec = reader.profile.frame_type
    if spec.infer and not reader.type_keyword_unrecognised:
        ra, dec = reader.pointing()
        found = type_from_header(
            exptime_s=exptime,
            object_name=reader.text(reader.profile.object),
            has_pointing=ra is not None and dec is not None,
            has_wcs=reader.wcs_scale() is not None,
        )
        if found is not None:
            reader.warn(f"no frame-type keyword: inferred {found[0]} from the header ({found[1]})")
            return found[0], "inferred from header"
        if data is not None:
            verdict = type_from_pixels(data, exptime_s=exptime, saturation_adu=reader.saturation())
            if verdict is not None:
                reader.warn(
                    f"no frame-type keyword: inferred {verdict.frame_type} from the pixels ({verdict.reason})"
                )
                return verdict.frame_type, "inferred from pixels"
    reader.warn(reader.unknown_type_note)
    return "unknown", ""


def _filter(reader: _Reader) -> str | None:
    spec = reader.profile.filter
    keyword = next((k for k in spec.keywords if reader.present(k)), None)
    if keyword is None:
        value = spec.default
    else:
        raw = reader.view[keyword]
        is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
        value = f"{float(raw):g}" if is_number else value_text(raw)
    if value is None or value.lower() in {v.lower() for v in spec.none_values}:
        return None
    aliases = {k.lower(): v for k, v in spec.aliases.items()}
    return aliases.get(value.lower(), value)


def _sexagesimal(value: float, *, hours: bool) -> str:
    total = value / 15.0 if hours else abs(value)
    sign = "" if hours else ("-" if value < 0 else "+")
    units = round(total * 3600 * (100 if hours else 10))
    per = 100 if hours else 10
    whole_seconds, frac = divmod(units, per)
    h, rem = divmod(whole_seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h:02d}:{m:02d}:{s:02d}.{frac:0{2 if hours else 1}d}"


def describe(meta: FrameMetadata) -> list[tuple[str, str]]:
    """Rows ``(field, value)`` describing a frame, for ``darkroom inspect``.

    Units are in the values; a dash marks what the header does not say.
    """

    def fmt(value: object, unit: str = "", spec: str = "g") -> str:
        if value is None:
            return "-"
        text = format(value, spec) if isinstance(value, float) else str(value)
        return f"{text} {unit}".rstrip()

    def when(value: datetime | None) -> str:
        return value.isoformat(sep=" ", timespec="milliseconds") if value is not None else "-"

    temp = fmt(meta.ccd_temp_c, "C", ".1f")
    if meta.set_temp_c is not None:
        temp += f" (set point {meta.set_temp_c:.1f} C)"
    site_parts = [
        meta.site_name or "",
        f"lat {meta.site_lat_deg:+.4f}" if meta.site_lat_deg is not None else "",
        f"lon {meta.site_lon_deg:+.4f}" if meta.site_lon_deg is not None else "",
        f"{meta.site_height_m:.0f} m" if meta.site_height_m is not None else "",
    ]
    site = ", ".join(p for p in site_parts if p) or "-"
    if meta.ra_deg is not None and meta.dec_deg is not None:
        pointing = (
            f"{meta.ra_deg:.6f} {meta.dec_deg:+.6f} deg "
            f"({_sexagesimal(meta.ra_deg, hours=True)} {_sexagesimal(meta.dec_deg, hours=False)})"
        )
    else:
        pointing = "-"
    rows = [
        ("profile", meta.profile),
        (
            "frame type",
            f"{meta.frame_type} (from {meta.type_source})" if meta.type_source else meta.frame_type,
        ),
        ("instrument", meta.instrument or "-"),
        ("telescope", meta.telescope or "-"),
        ("object", meta.object or "-"),
        ("exposure", fmt(meta.exptime_s, "s")),
        ("filter", meta.filter or "-"),
        ("binning", f"{meta.binning_x}x{meta.binning_y}"),
        ("size (nx x ny)", f"{meta.naxis1} x {meta.naxis2} px"),
        ("CCD temperature", temp),
        ("start (UTC)", when(meta.time_start_utc)),
        ("mid-exposure (UTC)", when(meta.time_mid_utc)),
        ("time source", meta.time_source or "-"),
        ("night", meta.night or "-"),
        ("gain", fmt(meta.gain_e_per_adu, "e-/adu")),
        ("read noise", fmt(meta.read_noise_e, "e-")),
        ("saturation", fmt(meta.saturation_adu, "adu")),
        ("overscan section", meta.overscan_section or "-"),
        ("trim section", meta.trim_section or "-"),
        ("site", site),
        ("pointing (RA, Dec)", pointing),
        ("pixel scale", fmt(meta.pixel_scale_arcsec, "arcsec/px", ".4f")),
        ("WCS in header", "yes" if meta.has_wcs else "no"),
        (
            "pixel unit",
            (meta.image_unit or "-") + (" (already calibrated)" if meta.precalibrated else ""),
        ),
        ("unit zero point", fmt(meta.unit_zero_point_mag, "mag (AB, 1 unit)", ".3f")),
        ("software bias", fmt(meta.software_bias_adu, "adu")),
        (
            "subframe offset",
            "-"
            if meta.subframe_x is None and meta.subframe_y is None
            else f"x {meta.subframe_x or 0}, y {meta.subframe_y or 0} px",
        ),
    ]
    rows.extend(("warning", w) for w in meta.warnings)
    return rows
