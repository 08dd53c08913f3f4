"""The ``calib`` section of darkroom.yaml (the calibration stages' settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from darkroom.calib.badpix import BadPixelConfig
from darkroom.calib.grouping import GroupingConfig
from darkroom.calib.masters import MasterComparisonConfig, MasterConfig
from darkroom.calib.process import CalibrationConfig

__all__ = ["CalibSettings"]


class CalibSettings(BaseModel):
    """The ``calib`` section of darkroom.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    masters: MasterConfig = Field(default_factory=MasterConfig)
    comparison: MasterComparisonConfig = Field(default_factory=MasterComparisonConfig)
    bad_pixels: BadPixelConfig = Field(default_factory=BadPixelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    user_badpixels: str | None = Field(
        None,
        description="YAML file of bad columns/rows/rectangles (1-based, inclusive); relative to the repository",
    )
    allow_outside_window: bool = Field(
        False, description="use the nearest matching master outside its validity window (with a warning)"
    )
