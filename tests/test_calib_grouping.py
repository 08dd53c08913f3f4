"""Grouping of calibration frames and the choice of master for a frame (pure functions on metadata)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from darkroom.calib.grouping import (
    GroupingConfig,
    MasterRecord,
    calib_key,
    group_calibration_frames,
    select_master,
)
from darkroom.errors import MissingCalibrationError
from darkroom.instruments.metadata import FrameMetadata

T0 = datetime(2025, 6, 2, 3, 20)


def meta(kind, minutes, *, exptime=0.0, filt=None, binning=1, temp=-25.0, night="2025-06-01", **kw):
    return FrameMetadata(
        profile="test",
        frame_type=kind,
        instrument="dcam-spare",
        exptime_s=exptime,
        filter=filt,
        binning_x=binning,
        binning_y=binning,
        naxis1=1024 // binning,
        naxis2=1024 // binning,
        ccd_temp_c=temp,
        set_temp_c=-25.0,
        time_mid_utc=T0 + timedelta(minutes=minutes),
        night=night,
        **kw,
    )


@pytest.fixture
def night():
    frames = [meta("bias", i) for i in range(5)]
    frames += [meta("bias", 10, binning=2)]
    frames += [meta("dark", 20 + i, exptime=60.0) for i in range(5)]
    frames += [meta("dark", 30, exptime=60.2)]  # same group within the 0.5 s tolerance
    frames += [meta("dark", 31, exptime=300.0)]
    frames += [meta("flat", 40 + i, exptime=76.15, filt="z") for i in range(5)]
    frames += [meta("flat", 50, exptime=20.0, filt="Z")]  # filter names compare case-insensitively
    frames += [meta("flat", 51, exptime=20.0, filt="r")]
    frames += [meta("dark", 60, exptime=60.0, temp=-19.0)]  # 6 C off the set point
    frames += [meta("light", 70, exptime=60.0, filt="z")]  # not a calibration frame
    return frames


def test_groups_split_by_type_binning_exptime_filter(night):
    groups, rejected = group_calibration_frames(night)
    summary = sorted(
        (g.key.kind, g.key.binning_x, g.key.exptime_s, g.key.filter, len(g.indices)) for g in groups
    )
    assert summary == [
        ("bias", 1, None, None, 5),
        ("bias", 2, None, None, 1),
        ("dark", 1, 60.0, None, 6),
        ("dark", 1, 300.0, None, 1),
        ("flat", 1, None, "r", 1),
        ("flat", 1, None, "z", 6),
    ]
    assert len(rejected) == 1 and rejected[0].index == 20
    assert "6.00 C from the set point" in rejected[0].reason
    bias = groups[0]
    assert bias.time_first == T0 and bias.time_last == T0 + timedelta(minutes=4)
    assert bias.valid_to - bias.time_last == timedelta(days=30)


def test_nights_are_separate_groups():
    frames = [meta("bias", 0), meta("bias", 1), meta("bias", 60 * 24, night="2025-06-02")]
    groups, _ = group_calibration_frames(frames)
    assert [len(g.indices) for g in groups] == [2, 1]
    groups, _ = group_calibration_frames(frames, config=GroupingConfig(group_by_night=False))
    assert [len(g.indices) for g in groups] == [3]


def test_calib_key_rounds_set_point_and_exptime():
    k1 = calib_key(meta("dark", 0, exptime=60.0))
    k2 = calib_key(meta("dark", 0, exptime=60.2))
    assert k1 == k2 and k1.set_temp_c == -25.0


def _record(name, kind, minutes, *, days=30, **kw):
    t = T0 + timedelta(minutes=minutes)
    base = dict(instrument="dcam-spare", naxis1=1024, naxis2=1024, set_temp_c=-25.0)
    base.update(kw)
    return MasterRecord(
        name=name,
        kind=kind,
        time_mid_utc=t,
        valid_from=t - timedelta(days=days),
        valid_to=t + timedelta(days=days),
        **base,
    )


def test_select_nearest_valid_master():
    light = meta("light", 0, exptime=60.0, filt="z")
    cands = [
        _record("flat_z_old", "flat", -60 * 24 * 3, filter="z", days=7),
        _record("flat_z_new", "flat", -60, filter="z", days=7),
        _record("flat_r", "flat", -10, filter="r", days=7),
        _record("flat_z_expired", "flat", -60 * 24 * 20, filter="z", days=7),
        _record("flat_z_2x2", "flat", -5, filter="z", binning_x=2, binning_y=2, naxis1=512, naxis2=512),
    ]
    assert select_master(light, "flat", cands).name == "flat_z_new"


def test_dark_exact_exptime_beats_scaled_one():
    light = meta("light", 0, exptime=60.0, filt="z")
    cands = [_record("dark300", "dark", -1, exptime_s=300.0), _record("dark60", "dark", -600, exptime_s=60.0)]
    assert select_master(light, "dark", cands).name == "dark60"
    assert select_master(light, "dark", cands[:1]).name == "dark300"  # scaled
    with pytest.raises(MissingCalibrationError, match="exptime 300 s"):
        select_master(light, "dark", cands[:1], config=GroupingConfig(dark_scaling=False))


def test_missing_master_reason_names_what_would_match():
    light = meta("light", 0, exptime=60.0, filt="z")
    cands = [_record("flat_r", "flat", -10, filter="r")]
    with pytest.raises(MissingCalibrationError) as err:
        select_master(light, "flat", cands)
    reason = err.value.reason
    assert reason.startswith("no master flat, instrument dcam-spare, binning 1x1, size 1024x1024, filter z")
    assert "filter r" in reason and "\n" not in reason
    expired = [_record("flat_z", "flat", -60 * 24 * 30, filter="z", days=7)]
    with pytest.raises(MissingCalibrationError, match="outside their validity window"):
        select_master(light, "flat", expired)
    warm = [_record("bias_warm", "bias", -5, set_temp_c=-10.0)]
    with pytest.raises(MissingCalibrationError, match="set point -10 C"):
        select_master(light, "bias", warm)
