"""Which raw frames make one master, and which master calibrates a frame.

Pure functions over :class:`~darkroom.instruments.metadata.FrameMetadata`-like
records (anything with the same attribute names): the pipeline lists exposures
and masters from its registry, calls these, and wires the result.

A calibration group shares instrument, binning, image size, CCD set point and,
for darks, the exposure time, for flats the filter; by default it also shares the
night. A frame whose CCD temperature is off its set point by more than
``temp_tolerance_c`` is left out (with a reason). Each master is valid for
``<kind>_validity_days`` before its first and after its last input; a frame is
calibrated with the matching master valid at its time whose inputs are nearest in
time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.errors import BadInputError, MissingCalibrationError

from .settings import GroupingConfig

__all__ = [
    "CalibGroup",
    "CalibKey",
    "GroupingConfig",
    "MasterRecord",
    "RejectedFrame",
    "calib_key",
    "describe_key",
    "group_calibration_frames",
    "required_key",
    "select_master",
]

log = logging.getLogger(__name__)

Kind = Literal["bias", "dark", "flat"]
_KINDS: tuple[str, ...] = ("bias", "dark", "flat")


@dataclass(frozen=True)
class CalibKey:
    """What the frames of one master share (and what a frame needs of a master)."""

    kind: str
    instrument: str
    binning_x: int
    binning_y: int
    naxis1: int
    naxis2: int
    set_temp_c: float | None = None
    exptime_s: float | None = None  # darks only
    filter: str | None = None  # flats only


def describe_key(key: CalibKey) -> str:
    """One-line description of a key, for reasons and logs."""
    parts = [
        f"master {key.kind}",
        f"instrument {key.instrument or '?'}",
        f"binning {key.binning_x}x{key.binning_y}",
        f"size {key.naxis1}x{key.naxis2}",
    ]
    if key.kind == "flat":
        parts.append(f"filter {key.filter if key.filter is not None else 'none'}")
    if key.kind == "dark" and key.exptime_s is not None:
        parts.append(f"exptime {key.exptime_s:g} s")
    if key.set_temp_c is not None:
        parts.append(f"set point {key.set_temp_c:g} C")
    return ", ".join(parts)


def _norm_filter(f: str | None) -> str | None:
    return None if f is None else str(f).strip().lower()


def _set_point(meta: Any, cfg: GroupingConfig) -> float | None:
    if getattr(meta, "set_temp_c", None) is not None:
        return round(float(meta.set_temp_c), 1)
    t = getattr(meta, "ccd_temp_c", None)
    if t is None:
        return None
    step = max(cfg.temp_tolerance_c, 0.1)
    return round(round(float(t) / step) * step, 1)


def calib_key(meta: Any, *, config: GroupingConfig | None = None) -> CalibKey:
    """Group key of a bias, dark or flat frame."""
    cfg = config or GroupingConfig()
    kind = meta.frame_type
    if kind not in _KINDS:
        raise BadInputError(f"frame type {kind!r} is not a calibration type (bias, dark, flat)")
    exptime = None
    if kind == "dark":
        if meta.exptime_s is None:
            raise BadInputError("dark frame without exposure time")
        step = max(cfg.exptime_tolerance_s, 1e-3)
        exptime = round(round(float(meta.exptime_s) / step) * step, 3)
    return CalibKey(
        kind=kind,
        instrument=str(meta.instrument or ""),
        binning_x=int(meta.binning_x),
        binning_y=int(meta.binning_y),
        naxis1=int(meta.naxis1),
        naxis2=int(meta.naxis2),
        set_temp_c=_set_point(meta, cfg),
        exptime_s=exptime,
        filter=_norm_filter(meta.filter) if kind == "flat" else None,
    )


def required_key(meta: Any, kind: str, *, config: GroupingConfig | None = None) -> CalibKey:
    """The key of the master of ``kind`` that a (science or flat) frame needs."""
    cfg = config or GroupingConfig()
    if kind not in _KINDS:
        raise BadInputError(f"unknown master kind {kind!r}")
    return CalibKey(
        kind=kind,
        instrument=str(meta.instrument or ""),
        binning_x=int(meta.binning_x),
        binning_y=int(meta.binning_y),
        naxis1=int(meta.naxis1),
        naxis2=int(meta.naxis2),
        set_temp_c=_set_point(meta, cfg),
        exptime_s=None if kind != "dark" or meta.exptime_s is None else float(meta.exptime_s),
        filter=_norm_filter(meta.filter) if kind == "flat" else None,
    )


@dataclass(frozen=True)
class RejectedFrame:
    """A calibration frame left out of every group, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class CalibGroup:
    """Frames that make one master.

    ``indices`` point into the list given to :func:`group_calibration_frames`;
    ``time_first``/``time_last`` are the mid-exposure times of the first and last
    input (None when unknown); ``valid_from``/``valid_to`` the validity window.
    """

    key: CalibKey
    night: str | None
    indices: tuple[int, ...]
    time_first: datetime | None
    time_last: datetime | None
    valid_from: datetime | None
    valid_to: datetime | None

    @property
    def time_mid(self) -> datetime | None:
        if self.time_first is None or self.time_last is None:
            return None
        return self.time_first + (self.time_last - self.time_first) / 2


def group_calibration_frames(
    metas: Sequence[Any], *, config: GroupingConfig | None = None
) -> tuple[list[CalibGroup], list[RejectedFrame]]:
    """Split the calibration frames among ``metas`` into master groups.

    Frames that are not bias/dark/flat are ignored (not rejected). Returns the
    groups (sorted by kind, then time) and the rejected calibration frames.
    """
    cfg = config or GroupingConfig()
    buckets: dict[tuple[CalibKey, str | None], list[int]] = {}
    rejected: list[RejectedFrame] = []
    for i, m in enumerate(metas):
        if m.frame_type not in _KINDS:
            continue
        t, sp = getattr(m, "ccd_temp_c", None), getattr(m, "set_temp_c", None)
        if t is not None and sp is not None and abs(float(t) - float(sp)) > cfg.temp_tolerance_c:
            rejected.append(
                RejectedFrame(
                    i,
                    f"CCD temperature {float(t):.2f} C is {abs(float(t) - float(sp)):.2f} C from the set point "
                    f"{float(sp):g} C (tolerance {cfg.temp_tolerance_c:g} C)",
                )
            )
            continue
        if m.frame_type == "flat" and m.exptime_s is None:
            rejected.append(RejectedFrame(i, "flat without exposure time (needed for the dark correction)"))
            continue
        try:
            key = calib_key(m, config=cfg)
        except BadInputError as err:
            rejected.append(RejectedFrame(i, err.reason))
            continue
        night = getattr(m, "night", None) if cfg.group_by_night else None
        buckets.setdefault((key, night), []).append(i)
    groups = []
    for (key, night), idx in buckets.items():
        times = [metas[i].time_mid_utc for i in idx if metas[i].time_mid_utc is not None]
        first = min(times) if times else None
        last = max(times) if times else None
        v = cfg.validity(key.kind)
        groups.append(
            CalibGroup(
                key=key,
                night=night,
                indices=tuple(sorted(idx, key=lambda k: (metas[k].time_mid_utc or datetime.min, k))),
                time_first=first,
                time_last=last,
                valid_from=None if first is None else first - v,
                valid_to=None if last is None else last + v,
            )
        )
    groups.sort(key=lambda g: (_KINDS.index(g.key.kind), g.time_first or datetime.min, str(g.key)))
    return groups, rejected


class MasterRecord(BaseModel):
    """A stored master as the registry describes it (input of :func:`select_master`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(description="identifier or file name of the master")
    kind: Kind
    instrument: str = ""
    binning_x: int = Field(1, ge=1)
    binning_y: int = Field(1, ge=1)
    naxis1: int = Field(0, ge=0, description="width [pixels]")
    naxis2: int = Field(0, ge=0, description="height [pixels]")
    set_temp_c: float | None = Field(None, description="CCD set point [deg C]")
    exptime_s: float | None = Field(None, ge=0, description="exposure time of the inputs [s]")
    filter: str | None = None
    time_mid_utc: datetime | None = Field(None, description="middle of the inputs' time span, UTC")
    valid_from: datetime | None = Field(None, description="start of validity, UTC (None: open)")
    valid_to: datetime | None = Field(None, description="end of validity, UTC (None: open)")
    includes_bias: bool = Field(False, description="a dark that still holds the bias level")

    @classmethod
    def from_group(cls, group: CalibGroup, name: str) -> MasterRecord:
        """The record of the master made from ``group``."""
        k = group.key
        return cls(
            name=name,
            kind=k.kind,
            instrument=k.instrument,
            binning_x=k.binning_x,
            binning_y=k.binning_y,
            naxis1=k.naxis1,
            naxis2=k.naxis2,
            set_temp_c=k.set_temp_c,
            exptime_s=k.exptime_s,
            filter=k.filter,
            time_mid_utc=group.time_mid,
            valid_from=group.valid_from,
            valid_to=group.valid_to,
        )


def _contains(m: Any, need: CalibKey, origin: tuple[int, int] | None) -> bool:
    """Whether a larger master covers a subframe of ``need``'s size at ``origin`` (x, y, 0-based)."""
    if origin is None or not (m.naxis1 and m.naxis2):
        return False
    x0, y0 = origin
    return x0 + need.naxis1 <= m.naxis1 and y0 + need.naxis2 <= m.naxis2


def _mismatch(
    need: CalibKey, m: Any, cfg: GroupingConfig, origin: tuple[int, int] | None = None
) -> str | None:
    """Why master record ``m`` cannot serve ``need`` (None when it can); a frame read out as a
    subframe at ``origin`` (x, y) is served by a larger master of the same binning covering it."""
    if m.kind != need.kind:
        return "kind"
    if str(m.instrument or "") != need.instrument:
        return f"instrument {m.instrument}"
    if (m.binning_x, m.binning_y) != (need.binning_x, need.binning_y):
        return f"binning {m.binning_x}x{m.binning_y}"
    if (
        (m.naxis1, m.naxis2) != (need.naxis1, need.naxis2)
        and m.naxis1
        and need.naxis1
        and not _contains(m, need, origin)
    ):
        return f"size {m.naxis1}x{m.naxis2}"
    if (
        need.set_temp_c is not None
        and m.set_temp_c is not None
        and abs(float(m.set_temp_c) - need.set_temp_c) > cfg.temp_tolerance_c
    ):
        return f"set point {m.set_temp_c:g} C"
    if need.kind == "flat" and _norm_filter(m.filter) != need.filter:
        return f"filter {m.filter}"
    if need.kind == "dark":
        exact = (
            need.exptime_s is not None
            and m.exptime_s is not None
            and abs(float(m.exptime_s) - need.exptime_s) <= cfg.exptime_tolerance_s
        )
        if not exact and (not cfg.dark_scaling or getattr(m, "includes_bias", False) or not m.exptime_s):
            return f"exptime {m.exptime_s:g} s" if m.exptime_s is not None else "exptime unknown"
    return None


def _valid_at(m: Any, t: datetime | None) -> bool:
    if t is None:
        return True
    if m.valid_from is not None and t < m.valid_from:
        return False
    return not (m.valid_to is not None and t > m.valid_to)


def select_master(
    meta: Any, kind: str, candidates: Sequence[Any], *, config: GroupingConfig | None = None
) -> Any:
    """The master of ``kind`` to calibrate the frame ``meta`` with.

    Among the ``candidates`` (MasterRecord-like) that match the frame's key and
    are valid at its mid-exposure time, the one nearest in time wins; for darks,
    an exact exposure time beats a scaled one. Raises
    :class:`~darkroom.errors.MissingCalibrationError` naming what would match.
    """
    cfg = config or GroupingConfig()
    need = required_key(meta, kind, config=cfg)
    t = getattr(meta, "time_mid_utc", None)
    sx, sy = getattr(meta, "subframe_x", None), getattr(meta, "subframe_y", None)
    origin = None if sx is None and sy is None else (int(sx or 0), int(sy or 0))
    matching = [m for m in candidates if _mismatch(need, m, cfg, origin) is None]
    valid = [m for m in matching if _valid_at(m, t)]
    if valid:

        def rank(m: Any) -> tuple:
            exact = 0
            if kind == "dark" and need.exptime_s is not None and m.exptime_s is not None:
                exact = 0 if abs(float(m.exptime_s) - need.exptime_s) <= cfg.exptime_tolerance_s else 1
            dt = abs((m.time_mid_utc - t).total_seconds()) if (t and m.time_mid_utc) else 0.0
            same_size = 0 if (m.naxis1, m.naxis2) == (need.naxis1, need.naxis2) else 1
            return (same_size, exact, dt, m.name)

        return min(valid, key=rank)
    when = t.isoformat(timespec="seconds") if t else "an unknown time"
    if matching:
        spans = sorted(
            f"{m.name} ({m.valid_from:%Y-%m-%d} to {m.valid_to:%Y-%m-%d})"
            for m in matching
            if m.valid_from is not None and m.valid_to is not None
        )
        reason = (
            f"no {describe_key(need)} valid at {when}: {len(matching)} matching master(s) outside their "
            f"validity window{': ' + '; '.join(spans[:3]) if spans else ''}"
        )
    else:
        same_kind = [m for m in candidates if m.kind == kind]
        near = sorted({_mismatch(need, m, cfg) for m in same_kind} - {None})
        reason = f"no {describe_key(need)} for the frame at {when}" + (
            f"; {len(same_kind)} other {kind} master(s) differ in: {', '.join(near[:4])}" if same_kind else ""
        )
    raise MissingCalibrationError(reason, kind=kind, key=need)
