"""The ``astrometry.solve`` section of darkroom.yaml (the astrometry stage's settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from darkroom.astrom.blind import BlindConfig
from darkroom.astrom.relative import SeriesConfig
from darkroom.catalogs import ReferenceCatalogSource

__all__ = ["SolveSettings"]


class SolveSettings(BaseModel):
    """Reference catalog and solver (the ``astrometry`` stage's provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_catalog: ReferenceCatalogSource | None = Field(
        None,
        description="reference catalog: a file, a folder of shards or an online service (kind: file, "
        "shards, online); relative paths are relative to the repository, online answers are cached in "
        "catalogs/cache; None: header WCS and relative alignment only",
    )
    pointing_uncertainty_deg: float = Field(
        0.1,
        ge=0,
        le=30,
        description="how far a frame's centre may be from its pointing hint or header WCS; widens the "
        "reference-catalog cone [deg]",
    )
    use_header_wcs: bool = Field(True, description="check and refine the WCS found in the image headers")
    blind: BlindConfig = Field(
        default_factory=BlindConfig,
        description="blind solving with astrometry.net (local solve-field or nova.astrometry.net, detected at "
        "run time) of a field none of whose frames has a header WCS or a pointing; the solution is then "
        "refined like a header WCS",
    )
    series: SeriesConfig = Field(
        default_factory=SeriesConfig, description="single-frame solver and frame-to-reference alignment"
    )
    max_reference_tries: int = Field(
        3, ge=1, le=50, description="frames tried, most sources first, to find a field's reference frame"
    )
    split_field_fraction: float | None = Field(
        0.5,
        gt=0,
        le=100,
        description="frames of one field and night whose pointings differ by more than this fraction of "
        "the frame's shorter side are solved as separate fields; None never splits",
    )
