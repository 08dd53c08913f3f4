"""The ``names`` section of darkroom.yaml: how observed OBJECT names become coordinates.

The settings live here, below the configuration, so that :mod:`darkroom.config` imports no
pipeline module; :mod:`darkroom.pipeline.targets` does the resolving.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["NameResolverConfig"]


class NameResolverConfig(BaseModel):
    """The ``names`` section of darkroom.yaml: how OBJECT names become coordinates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    automatic_targets: bool = Field(
        True, description="with no targets: in darkroom.yaml, make one per observed OBJECT"
    )
    online: bool = Field(True, description="ask the Sesame name resolver (CDS) about names not in the cache")
    sesame_urls: list[str] | None = Field(
        None, description="Sesame mirrors to ask (None: astropy's defaults, CDS then CfA)"
    )
    timeout_s: float = Field(5.0, gt=0, description="time allowed per Sesame request [s]")
    ephemerides: bool = Field(
        True, description="predicted transit times of known planets (NASA Exoplanet Archive) on the plots"
    )
    exoplanet_archive_tap: str | None = Field(
        None, description="TAP service of the NASA Exoplanet Archive (None: astroquery's default)"
    )
