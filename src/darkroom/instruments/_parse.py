"""Parsers for header values: numbers, sexagesimal angles, dates, times of day, sections.

Every parser raises ``ValueError`` with a short message on a value it cannot read;
:mod:`darkroom.instruments.normalize` turns those into warnings or a
:class:`~darkroom.errors.ProfileError`. No parser looks at more than one value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "ParsedDateTime",
    "format_offset",
    "parse_datetime",
    "parse_float",
    "parse_int",
    "parse_section",
    "parse_sexagesimal",
    "parse_time_of_day",
    "value_text",
]

_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eEdD][+-]?\d+)?$")


def value_text(value: object) -> str:
    """A header value as stripped text (whitespace runs collapsed to one space)."""
    if isinstance(value, bool):
        return "T" if value else "F"
    return " ".join(str(value).split())


def parse_float(value: object) -> float:
    """A finite float from a number or a numeric string (``'+1.0E+001'``, ``'1.5D0'``).

    Booleans, NaN, infinities and text that is not a single number raise ``ValueError``.
    """
    if isinstance(value, bool):
        raise ValueError("a logical, not a number")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMBER_RE.match(text):
            raise ValueError("not a number")
        result = float(text.replace("D", "E").replace("d", "e"))
    else:
        raise ValueError(f"not a number ({type(value).__name__})")
    if not math.isfinite(result):
        raise ValueError("not a finite number")
    return result


def parse_int(value: object) -> int:
    """An integer from an int, an integral float or a numeric string."""
    number = parse_float(value)
    if number != round(number):
        raise ValueError("not an integer")
    return round(number)


_SEXA_SEPARATORS = re.compile(r"[:hdms°'\"\s]+", re.IGNORECASE)


def parse_sexagesimal(value: object) -> tuple[float, bool]:
    """Read ``'dd mm ss.s'``, ``'dd:mm:ss'``, ``'16h02m11.83s'`` or a plain number.

    Returns ``(value, sexagesimal)``: the value in the unit of its leading field (hours or
    degrees, the caller knows which) and whether the text had more than one field. The
    sign is read from the text, so ``'-00 18 18'`` is negative. Minutes and seconds must
    be below 60.
    """
    if isinstance(value, bool):
        raise ValueError("a logical, not an angle")
    if isinstance(value, int | float):
        return parse_float(value), False
    if not isinstance(value, str):
        raise ValueError(f"not an angle ({type(value).__name__})")
    text = value.strip()
    if _NUMBER_RE.match(text):
        return parse_float(text), False
    sign = -1.0 if text.startswith("-") else 1.0
    fields = [f for f in _SEXA_SEPARATORS.split(text.lstrip("+-").strip()) if f]
    if not 2 <= len(fields) <= 3 or not all(_NUMBER_RE.match(f) and f[0] not in "+-" for f in fields):
        raise ValueError("not a sexagesimal angle")
    numbers = [float(f) for f in fields] + [0.0]
    if numbers[1] >= 60 or numbers[2] >= 60:
        raise ValueError("minutes or seconds >= 60")
    return sign * (numbers[0] + numbers[1] / 60.0 + numbers[2] / 3600.0), True


@dataclass(frozen=True)
class ParsedDateTime:
    """A date or date-time read from text.

    ``value`` is naive (wall-clock as written). ``offset`` is the UTC offset written in the
    text (``Z`` -> 0), or None when the text carries none. ``has_time`` is False for a
    date alone.
    """

    value: datetime
    offset: timedelta | None
    has_time: bool


_ISO_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T\s](\d{1,2}):(\d{2})(?::(\d{2})(\.\d*)?)?)?"
    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?$",
    re.IGNORECASE,
)
_OLD_DATE_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{2})$")
_TIME_RE = re.compile(
    r"^(\d{1,2})[:\s](\d{1,2})(?:[:\s](\d{1,2})(\.\d*)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?$", re.I
)


def _offset(text: str | None) -> timedelta | None:
    if text is None:
        return None
    if text.upper() == "Z":
        return timedelta(0)
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if hours > 14 or minutes >= 60:
        raise ValueError("UTC offset out of range")
    return sign * timedelta(hours=hours, minutes=minutes)


def _clock(hour: str, minute: str, second: str | None, fraction: str | None) -> timedelta:
    h, m = int(hour), int(minute)
    s = int(second) if second else 0
    if h > 24 or m >= 60 or s > 60 or (h == 24 and (m or s or fraction)):
        raise ValueError("time of day out of range")
    frac = float(fraction) if fraction and fraction != "." else 0.0
    return timedelta(hours=h, minutes=m, seconds=s + frac)  # s == 60: a leap second rolls over


def parse_datetime(value: object) -> ParsedDateTime:
    """Read an ISO 8601 date or date-time, or a FITS old-style ``'DD/MM/YY'`` date.

    Accepts ``'2025-06-02'``, ``'2025-06-02T03:21:41.04'`` (any number of decimals), a
    space instead of ``T``, and a trailing ``Z``, ``+02:00``, ``-0600`` or ``-06``.
    ``'DD/MM/YY'`` is 19YY, as the FITS standard defines it.
    """
    if not isinstance(value, str):
        raise ValueError(f"not a date ({type(value).__name__})")
    text = value.strip()
    match = _ISO_RE.match(text)
    if match:
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            date = datetime(int(year), int(month), int(day))
        except ValueError as err:
            raise ValueError(str(err)) from None
        if hour is None:
            if offset is not None:
                raise ValueError("a UTC offset on a date without time")
            return ParsedDateTime(date, None, False)
        return ParsedDateTime(date + _clock(hour, minute, second, fraction), _offset(offset), True)
    match = _OLD_DATE_RE.match(text)
    if match:
        day, month, year = match.groups()
        try:
            return ParsedDateTime(datetime(1900 + int(year), int(month), int(day)), None, False)
        except ValueError as err:
            raise ValueError(str(err)) from None
    raise ValueError("not an ISO 8601 date")


def parse_time_of_day(value: object) -> tuple[timedelta, timedelta | None]:
    """Read a time of day: ``'23:05:12'``, ``'04 10 14.3'``, ``'05:10:17Z'`` or decimal hours.

    Returns ``(time since midnight, UTC offset written in the text or None)``.
    """
    if isinstance(value, bool):
        raise ValueError("a logical, not a time")
    if isinstance(value, int | float):
        hours = parse_float(value)
        if not 0 <= hours < 24:
            raise ValueError("decimal hours out of range")
        return timedelta(hours=hours), None
    if not isinstance(value, str):
        raise ValueError(f"not a time ({type(value).__name__})")
    text = value.strip()
    if _NUMBER_RE.match(text):
        return parse_time_of_day(parse_float(text))
    match = _TIME_RE.match(text)
    if not match:
        raise ValueError("not a time of day")
    hour, minute, second, fraction, offset = match.groups()
    return _clock(hour, minute, second, fraction), _offset(offset)


def format_offset(offset: timedelta) -> str:
    """``timedelta(hours=-6)`` -> ``'-06:00'``."""
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


_SECTION_RE = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(value: object, *, nx: int = 0, ny: int = 0) -> str:
    """Normalise a FITS section ``'[  17: 528,   1: 520]'`` -> ``'[17:528,1:520]'``.

    Sections are 1-based and inclusive, x (columns) first. With ``nx``/``ny`` (image width
    and height in pixels, 0 = unknown) the section must lie inside the image. A reversed
    range (``[528:17,...]``, IRAF's flip) is kept as written.
    """
    if not isinstance(value, str):
        raise ValueError(f"not a section ({type(value).__name__})")
    match = _SECTION_RE.match(value.strip())
    if not match:
        raise ValueError("not a section [x1:x2,y1:y2]")
    x1, x2, y1, y2 = (int(g) for g in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise ValueError("section starts below pixel 1 (FITS sections are 1-based)")
    if (nx and max(x1, x2) > nx) or (ny and max(y1, y2) > ny):
        raise ValueError(f"section outside the {nx}x{ny} image")
    return f"[{x1}:{x2},{y1}:{y2}]"
