"""Overscan subtraction and trimming.

Sections follow the FITS/IRAF convention of :class:`FrameMetadata`: strings
``'[x1:x2,y1:y2]'``, 1-based and inclusive, x first. :func:`parse_section` is the
one place where they become 0-based numpy slices ``(rows, cols)``; nothing else in
``darkroom.calib`` deals with 1-based pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from darkroom.errors import BadInputError, CalibrationError

from ._stats import MAD_TO_SIGMA
from .settings import OverscanConfig

__all__ = [
    "OverscanConfig",
    "OverscanResult",
    "format_section",
    "overscan_levels",
    "parse_section",
    "subtract_overscan",
    "trim_image",
]

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(section: str, *, shape: tuple[int, int] | None = None) -> tuple[slice, slice]:
    """Turn a FITS section ``'[x1:x2,y1:y2]'`` (1-based, inclusive) into ``(rows, cols)`` slices.

    Reversed ranges (``x1 > x2``, a flipped readout) are accepted and mean the
    same pixels. With ``shape`` (ny, nx) the section must lie inside the image.

    >>> parse_section("[17:528,1:520]")
    (slice(0, 520, None), slice(16, 528, None))
    """
    m = _SECTION.match(str(section).strip())
    if not m:
        raise BadInputError(f"section {section!r} is not of the form '[x1:x2,y1:y2]' (1-based, inclusive)")
    x1, x2, y1, y2 = (int(g) for g in m.groups())
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x1 < 1 or y1 < 1:
        raise BadInputError(f"section {section!r} starts below pixel 1 (FITS sections are 1-based)")
    if shape is not None:
        ny, nx = shape
        if x2 > nx or y2 > ny:
            raise BadInputError(f"section {section!r} exceeds the image of {nx}x{ny} pixels (nx x ny)")
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def format_section(rows: slice, cols: slice) -> str:
    """Inverse of :func:`parse_section` for 0-based slices with explicit start and stop."""
    return f"[{cols.start + 1}:{cols.stop},{rows.start + 1}:{rows.stop}]"


@dataclass(frozen=True)
class OverscanResult:
    """Overscan-subtracted image (still untrimmed) and what was subtracted.

    ``level_adu`` holds one value per line (row or column along the long axis of
    the overscan strip); ``noise_adu`` is the robust pixel scatter in the strip
    (a read-noise estimate in adu when the strip is free of signal).
    """

    data: np.ndarray
    level_adu: np.ndarray
    axis: Literal["rows", "columns"]
    noise_adu: float

    @property
    def mean_level_adu(self) -> float:
        return float(np.mean(self.level_adu))


def overscan_levels(
    data: np.ndarray, overscan_section: str, *, config: OverscanConfig | None = None
) -> tuple[np.ndarray, Literal["rows", "columns"], float]:
    """The overscan model: one level per row (tall strip) or per column (wide strip) [adu].

    Returns ``(levels, axis, noise_adu)``: ``levels`` has one value for every row
    (or column) of the image, lines outside the strip's extent taking the nearest
    model value; ``noise_adu`` is the robust pixel scatter in the strip.
    """
    cfg = config or OverscanConfig()
    img = np.asarray(data)
    if img.ndim != 2:
        raise BadInputError(f"overscan needs a 2-D image, got shape {img.shape}")
    rows, cols = parse_section(overscan_section, shape=img.shape)
    strip = img[rows, cols].astype(np.float64)
    tall = strip.shape[0] >= strip.shape[1]
    lines = strip if tall else strip.T  # one line per row (tall) or per column (wide)
    if lines.shape[1] < 1 or lines.shape[0] < 1:
        raise CalibrationError(f"overscan section {overscan_section} is empty")
    med = np.median(lines, axis=1, keepdims=True)
    dev = lines - med
    noise = float(MAD_TO_SIGMA * np.median(np.abs(dev)))
    if cfg.statistic == "median":
        per_line = med[:, 0]
    else:
        scale = noise if noise > 0 else (float(np.std(dev)) or 1.0)
        keep = np.abs(dev) <= cfg.n_sigma * scale
        n_keep = keep.sum(1)
        per_line = np.where(n_keep > 0, (lines * keep).sum(1) / np.maximum(n_keep, 1), med[:, 0])
    n_lines = per_line.size
    if cfg.fit == "constant":
        model = np.full(n_lines, np.median(per_line))
    elif cfg.fit == "per_line":
        model = per_line
    else:
        t = np.linspace(-1, 1, n_lines)
        order = min(cfg.poly_order, max(n_lines - 1, 0))
        model = per_line.copy()
        keep = np.ones(n_lines, dtype=bool)
        for _ in range(3):  # reject lines hit by cosmic rays or bleeding
            coef = np.polynomial.legendre.legfit(t[keep], per_line[keep], order)
            model = np.polynomial.legendre.legval(t, coef)
            resid = per_line - model
            s = MAD_TO_SIGMA * np.median(np.abs(resid[keep])) or 1e-12
            new_keep = np.abs(resid) <= 4 * s
            if np.array_equal(new_keep, keep) or new_keep.sum() <= order + 1:
                break
            keep = new_keep
    line_slice = rows if tall else cols
    n_full = img.shape[0] if tall else img.shape[1]
    full = np.interp(np.arange(n_full), np.arange(line_slice.start, line_slice.stop), model)
    return full.astype(np.float32), ("rows" if tall else "columns"), noise


def subtract_overscan(
    data: np.ndarray, overscan_section: str, *, config: OverscanConfig | None = None
) -> OverscanResult:
    """Subtract the overscan level from every pixel.

    The strip is collapsed across its short axis: a tall strip (more rows than
    columns) gives one level per row, subtracted from that row; a wide strip one
    level per column. The levels are then modelled along the strip
    (``config.fit``). Returns a new float32 array of the input shape [adu].
    """
    levels, axis, noise = overscan_levels(data, overscan_section, config=config)
    img = np.asarray(data, dtype=np.float32)
    out = img - (levels[:, None] if axis == "rows" else levels[None, :])
    return OverscanResult(data=out, level_adu=levels, axis=axis, noise_adu=noise)


def trim_image(data: np.ndarray, trim_section: str) -> np.ndarray:
    """The pixels of ``trim_section`` (FITS 1-based inclusive), as a view."""
    a = np.asarray(data)
    rows, cols = parse_section(trim_section, shape=a.shape)
    return a[rows, cols]
