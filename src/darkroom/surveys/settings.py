"""The ``surveys`` section of darkroom.yaml: the shared cache, what ``darkroom run`` does for a
survey repository, and one sub-section per archive."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.surveys.cutouts import CutoutConfig
from darkroom.surveys.sdss import SdssConfig
from darkroom.surveys.ztf import ZtfConfig

__all__ = ["SurveysConfig"]


class SurveysConfig(BaseModel):
    """Survey downloads and products of a repository (``surveys`` in darkroom.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cache_dir: str = Field(
        "~/.cache/darkroom/surveys",
        description="raw archive replies, shared between repositories (relative: to the repository)",
        json_schema_extra={"critical": False},
    )
    fsync: bool = Field(
        True,
        description="fsync every reply and light-curve file (False: faster for many small files; a kill -9 "
        "still leaves no half-written file, a power cut may lose the newest ones)",
        json_schema_extra={"critical": False},
    )
    run: list[Literal["ztf", "sdss", "cutouts"]] = Field(
        default_factory=list, description="survey steps 'darkroom run' carries out (a survey repository)"
    )
    ztf: ZtfConfig = Field(default_factory=ZtfConfig)
    sdss: SdssConfig = Field(default_factory=SdssConfig)
    cutouts: CutoutConfig = Field(default_factory=CutoutConfig)
