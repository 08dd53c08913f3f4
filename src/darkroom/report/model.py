"""The data a night report shows, independent of where it came from.

The pipeline layer fills a :class:`NightReport` from the registry; :mod:`darkroom.report.html`
renders it. Nothing here opens a database or reads a file.

Frames are an astropy Table, one row per exposure, with the columns of
:data:`FRAME_COLUMNS` (missing columns are added empty; any cell may be masked or
None). Times are UTC (``datetime``, ISO string, astropy ``Time`` or MJD float).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.time import Time
from pydantic import BaseModel, ConfigDict, Field

from darkroom.constants import __version__
from darkroom.errors import BadInputError

__all__ = [
    "FRAME_COLUMNS",
    "LIGHTCURVE_TIME_COLUMNS",
    "AnalysisSummary",
    "FrameStatus",
    "MasterSummary",
    "NightReport",
    "QuarantinedFile",
    "ReportConfig",
    "TargetLightCurve",
    "TaskFailure",
    "cell",
    "float_column",
    "frame_status",
    "frame_times_mjd",
]

#: Frame-table columns in display order: (name, header label with unit).
FRAME_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_id", "image"),
    ("file", "file"),
    ("time_utc", "time [UTC]"),
    ("filter", "filter"),
    ("exptime_s", "exptime [s]"),
    ("fwhm_arcsec", "FWHM [arcsec]"),
    ("ellipticity", "ellipticity"),
    ("sky_adu", "sky [adu]"),
    ("n_sources", "sources"),
    ("zero_point", "zero point [mag]"),
    ("zero_point_err", "zp err [mag]"),
    ("astrom_rms_arcsec", "astrom rms [arcsec]"),
    ("astrom_flag", "astrometry"),
    ("quality_flag", "quality"),
    ("state", "state"),
)

#: Time columns a light-curve table may have, in order of preference (days).
LIGHTCURVE_TIME_COLUMNS: tuple[str, ...] = ("bjd_tdb", "mjd_utc")

_NIGHT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FAILED_STATES = frozenset({"failed", "quarantined", "error"})


class ReportConfig(BaseModel):
    """How a night report is drawn."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thumbnail_max_pix: int = Field(
        256, ge=16, le=2048, description="longest side of a master thumbnail after block averaging [pixels]"
    )
    lightcurve_bin_minutes: float = Field(
        10.0, gt=0, le=1440, description="bin width of the binned light curve [minutes]"
    )
    plot_dpi: int = Field(100, ge=50, le=300, description="resolution of the plots [dots per inch]")


@dataclass(frozen=True)
class MasterSummary:
    """One master calibration frame.

    ``thumbnail`` is a 2-D image, shape (ny, nx), row 0 at the bottom (FITS order);
    it is block-averaged and z-scaled when drawn. ``flag`` is a one-line warning
    (e.g. "too few inputs") or None.
    """

    kind: str
    name: str
    n_inputs: int
    stats: Mapping[str, Any] = field(default_factory=dict)
    thumbnail: np.ndarray | None = None
    flag: str | None = None

    def __post_init__(self) -> None:
        if self.thumbnail is not None:
            thumb = np.asarray(self.thumbnail, dtype=float)
            if thumb.ndim != 2 or thumb.size == 0:
                raise BadInputError(
                    f"master {self.name!r}: thumbnail must be a non-empty 2-D array, got shape {thumb.shape}"
                )
            object.__setattr__(self, "thumbnail", thumb)
        object.__setattr__(self, "stats", dict(self.stats or {}))


@dataclass(frozen=True)
class TaskFailure:
    """A task of a stage that failed on one unit of work, with its one-line reason."""

    stage: str
    unit: str
    reason: str


@dataclass(frozen=True)
class QuarantinedFile:
    """A raw file set aside at ingest or later, with its one-line reason."""

    file: str
    reason: str


@dataclass(frozen=True)
class TargetLightCurve:
    """The light curve of one target.

    ``table`` has a time column (``bjd_tdb`` or ``mjd_utc``, days), ``rel_flux`` and
    ``rel_flux_err``, and optionally ``flags`` (int bits of
    :class:`~darkroom.timeseries.quality.LightCurveFlag` and the photometry flags),
    ``filter`` and the comparison ensemble's flux ``ensemble_flux`` (or ``ens_flux``).
    """

    name: str
    table: Table
    #: predicted transit times [BJD_TDB, d] ("ingress", "mid", "egress") from a published ephemeris
    contacts: dict[str, float] | None = None
    #: where ``contacts`` come from (drawn in the legend)
    contacts_source: str = ""
    #: times (the table's time scale, days) of frames left out of the light curve (clouds,
    #: poor frames): drawn as grey crosses along the top of the plot
    excluded_times: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.table, Table):
            raise BadInputError(f"light curve {self.name!r}: expected an astropy Table")
        if self.time_column is None:
            raise BadInputError(
                f"light curve {self.name!r} has no time column (one of {', '.join(LIGHTCURVE_TIME_COLUMNS)})"
            )
        missing = [c for c in ("rel_flux", "rel_flux_err") if c not in self.table.colnames]
        if missing:
            raise BadInputError(f"light curve {self.name!r} lacks column(s) {', '.join(missing)}")

    @property
    def time_column(self) -> str | None:
        """Name of the time column used (days)."""
        return next((c for c in LIGHTCURVE_TIME_COLUMNS if c in self.table.colnames), None)

    @property
    def ensemble_column(self) -> str | None:
        """Name of the ensemble-flux column, if any."""
        return next((c for c in ("ensemble_flux", "ens_flux") if c in self.table.colnames), None)


@dataclass(frozen=True)
class NightPicture:
    """A picture shown in the report (a coadd's thumbnail, a colour composite): PNG bytes."""

    title: str
    png: bytes
    caption: str = ""


def _coerce(items: Iterable[Any] | None, cls: type) -> list[Any]:
    out = []
    for item in items or ():
        if isinstance(item, cls):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(cls(**item))
        else:
            out.append(cls(*item))
    return out


def _empty_frames() -> Table:
    return Table(names=[name for name, _ in FRAME_COLUMNS], dtype=[object] * len(FRAME_COLUMNS))


@dataclass(frozen=True)
class AnalysisSummary:
    """What one analysis (one provenance of ``darkroom analyze``) searched, found and could find.

    ``snr_centre``, ``n_injected`` and ``n_recovered`` are per bin of the injections' expected
    S/N (geometric bin centres); ``snr50`` is the S/N where half are recovered (NaN without
    injections); ``snr_threshold`` the transient finder's detection threshold.
    """

    provenance_id: str
    n_lightcurves: int
    n_epochs: int
    days_searched: float
    n_detections: int
    snr_threshold: float
    snr_centre: np.ndarray
    n_injected: np.ndarray
    n_recovered: np.ndarray
    snr50: float
    histograms: str = ""  #: where the searched-epoch histograms (netCDF) are

    @property
    def efficiency(self) -> np.ndarray:
        """Recovered fraction per S/N bin (NaN where nothing was injected)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n_injected > 0, self.n_recovered / np.maximum(self.n_injected, 1), np.nan)


@dataclass
class NightReport:
    """Everything one night's report shows.

    Parameters
    ----------
    night
        The night's label, used in the file name ``night-<night>.html`` (letters,
        digits, ``_ . -``; normally ``YYYY-MM-DD``, the local date at dusk).
    repository
        Path of the data repository the night belongs to (shown, never opened).
    frames
        One row per exposure, columns of :data:`FRAME_COLUMNS`; missing ones are added
        empty (the input table is not modified).
    masters, failures, quarantined, light_curves
        Lists of :class:`MasterSummary`, :class:`TaskFailure`, :class:`QuarantinedFile`,
        :class:`TargetLightCurve`; plain tuples or dicts of their fields are converted.
    summary
        Free-form headline figures (label -> text or number), shown first.
    generated_utc
        When the report was made (UTC); defaults to now.
    software_version
        darkroom version that made it.
    """

    night: str
    repository: Path | str
    _: KW_ONLY
    frames: Table = field(default_factory=_empty_frames)
    masters: list[MasterSummary] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)
    quarantined: list[QuarantinedFile] = field(default_factory=list)
    light_curves: list[TargetLightCurve] = field(default_factory=list)
    pictures: list[NightPicture] = field(default_factory=list)  #: coadds and colour composites
    summary: dict[str, str | float] = field(default_factory=dict)
    generated_utc: datetime = field(default_factory=lambda: datetime.now(UTC))
    software_version: str = __version__

    def __post_init__(self) -> None:
        self.night = str(self.night)
        if not _NIGHT_RE.match(self.night):
            raise BadInputError(
                f"night label {self.night!r} is not usable in a file name (letters, digits, _ . - only)"
            )
        if not isinstance(self.frames, Table):
            raise BadInputError(f"frames must be an astropy Table, got {type(self.frames).__name__}")
        frames = self.frames.copy(copy_data=False)
        for name, _label in FRAME_COLUMNS:
            if name not in frames.colnames:
                frames[name] = np.full(len(frames), None, dtype=object)
        self.frames = frames
        self.masters = _coerce(self.masters, MasterSummary)
        self.failures = _coerce(self.failures, TaskFailure)
        self.quarantined = _coerce(self.quarantined, QuarantinedFile)
        self.light_curves = _coerce(self.light_curves, TargetLightCurve)
        self.summary = dict(self.summary or {})
        if self.generated_utc.tzinfo is None:
            self.generated_utc = self.generated_utc.replace(tzinfo=UTC)


# -- cell access shared by plots and html ------------------------------------------------


def cell(table: Table, column: str, row: int) -> Any:
    """Value of one cell, or None when masked, None or a non-finite float."""
    col = table[column]
    value = col[row]
    if value is None or value is np.ma.masked:
        return None
    if getattr(col, "mask", None) is not None and np.ndim(col.mask) == 1 and bool(col.mask[row]):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def float_column(table: Table, column: str) -> np.ndarray:
    """A column as float64 with NaN where masked, None or not a number."""
    out = np.full(len(table), np.nan)
    for i in range(len(table)):
        value = cell(table, column, i)
        if value is None or isinstance(value, str | bytes):
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _to_mjd(value: Any) -> float:
    if value is None:
        return np.nan
    if isinstance(value, Time):
        return float(value.utc.mjd)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return float(Time(value, scale="utc").mjd)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return np.nan
        try:
            return _to_mjd(datetime.fromisoformat(text))
        except ValueError:
            pass
        try:
            return float(Time(text, scale="utc").mjd)
        except ValueError:
            return np.nan
    return np.nan


def frame_times_mjd(frames: Table) -> np.ndarray:
    """UTC times of the frames as MJD (NaN where missing or unparsable)."""
    if "time_utc" not in frames.colnames:
        return np.full(len(frames), np.nan)
    col = frames["time_utc"]
    if isinstance(col, Time):
        mjd = np.array(col.utc.mjd, dtype=float, ndmin=1)
        mask = np.ma.getmaskarray(col.mjd) if hasattr(col.mjd, "mask") else np.zeros(len(col), bool)
        mjd[mask] = np.nan
        return mjd
    return np.array([_to_mjd(cell(frames, "time_utc", i)) for i in range(len(frames))], dtype=float)


class FrameStatus:
    """Row status of a frame in the report (CSS class names)."""

    OK = "ok"
    WARN = "warn"  #: marginal astrometry
    POOR = "poor"  #: quality flag poor or astrometry failed
    FAILED = "failed"  #: state failed or quarantined


def frame_status(frames: Table, row: int) -> str:
    """:class:`FrameStatus` of one frame from its ``state``, ``quality_flag`` and ``astrom_flag``."""

    def text(column: str) -> str:
        value = cell(frames, column, row) if column in frames.colnames else None
        return str(value).strip().lower() if value is not None else ""

    if text("state") in _FAILED_STATES:
        return FrameStatus.FAILED
    if text("quality_flag") == "poor" or text("astrom_flag") == "failed":
        return FrameStatus.POOR
    if text("astrom_flag") == "marginal":
        return FrameStatus.WARN
    return FrameStatus.OK
