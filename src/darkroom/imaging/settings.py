"""The ``coadd`` section of darkroom.yaml (the optional coadd stage of ``darkroom run``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.imaging.coadd import CoaddConfig

__all__ = ["CoaddSettings"]


class CoaddSettings(BaseModel):
    """Which images are coadded, per field, filter and night (or all nights), and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="run the coadd stage in `darkroom run` (`darkroom coadd` runs it in any case)",
        json_schema_extra={"critical": False},
    )
    per: Literal["night", "all"] = Field("night", description="one coadd per night, or one over all nights")
    min_inputs: int = Field(3, ge=1, description="fewest good images that make a coadd")
    quality: Literal["good", "any"] = Field(
        "good", description="good: only frames whose quality flag is good (clouds, seeing excluded)"
    )
    combine: CoaddConfig = Field(default_factory=CoaddConfig, description="how the images are combined")
    aperture_fwhm: float = Field(
        1.0, gt=0.2, le=10, description="radius of the depth apertures [median input FWHM]"
    )
    n_sigma: float = Field(5.0, gt=0, description="significance of the limiting magnitude")
    rgb_filters: tuple[str, str, str] | None = Field(
        None, description="filters of the red, green and blue planes of the night's colour composite"
    )
