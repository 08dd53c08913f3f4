"""The ``astrometry.extract`` section of darkroom.yaml (the extract stage's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from darkroom.detect.background import BackgroundConfig
from darkroom.detect.extract import DetectConfig
from darkroom.detect.quality import QualityConfig

__all__ = ["ExtractSettings"]


class ExtractSettings(BaseModel):
    """How sources are found and measured (the ``extract`` stage's provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    background: BackgroundConfig = Field(default_factory=BackgroundConfig, description="background mesh")
    detect: DetectConfig = Field(default_factory=DetectConfig, description="source detection")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="which sources are stars for FWHM and ellipticity"
    )
