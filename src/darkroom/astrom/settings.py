"""The ``astrometry.solve`` section of darkroom.yaml (the astrometry stage's settings) and the
parameter models of the solver, the alignment and blind solving.

The models live here, not beside their algorithms, so that reading a configuration imports
pydantic only: the algorithm modules (scipy.spatial, scipy.stats, astropy.wcs) load when a
frame is solved. The algorithm modules re-export the names they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.catalogs.sources import ReferenceCatalogSource

__all__ = [
    "DEFAULT_INDEX_DIRS",
    "AlignConfig",
    "AsterismConfig",
    "BlindConfig",
    "SeriesConfig",
    "SolveConfig",
    "SolveSettings",
]

DEFAULT_INDEX_DIRS = ("/usr/share/astrometry", "/usr/local/astrometry/data", "/usr/local/share/astrometry")


class AsterismConfig(BaseModel):
    """Triangle matching parameters (lengths in units of the target list, normally pixels)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_neighbors: int = Field(6, ge=2, le=12, description="neighbours of each point that form its triangles")
    invariant_tolerance: float = Field(
        0.015, gt=0, le=0.2, description="largest difference of side ratios of two matching triangles"
    )
    match_tolerance: float = Field(
        1.5, gt=0, description="largest distance of a matched point pair after the transform [target units]"
    )
    min_matches: int = Field(6, ge=3, description="fewest matched points that make a match")
    min_side: float = Field(
        5.0, ge=0, description="triangles whose longest side is shorter are ignored [source units]"
    )
    false_match_probability: float = Field(
        1e-6, gt=0, lt=0.1, description="accepted probability that the matched pairs are all chance pairs"
    )
    n_verify: int = Field(40, ge=1, le=1000, description="most popular transform bins that are verified")


class SolveConfig(BaseModel):
    """Parameters of the single-frame solver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_sources: int = Field(5, ge=3, description="fewer detected sources raise SolveError")
    n_match_sources: int = Field(
        40, ge=6, le=500, description="brightest sources used for the asterism match"
    )
    search_radius_deg: float = Field(
        2.0, gt=0, le=30, description="how far the field centre may be from the hint [deg]"
    )
    scale_tolerance: float = Field(
        0.1, gt=0, le=0.5, description="relative uncertainty of the hinted pixel scale"
    )
    allow_reflection: bool = Field(True, description="try both image parities (mirrored optics)")
    catalog_density_factor: float = Field(
        1.5, gt=0.2, le=10, description="reference stars used for matching per source, per image area"
    )
    asterism: AsterismConfig = Field(default_factory=AsterismConfig, description="triangle matching")
    match_radius_pix: float = Field(
        5.0, gt=0, le=200, description="initial cross-match radius of sources and catalog stars [pixels]"
    )
    min_match_radius_pix: float = Field(
        1.0, gt=0, le=50, description="the cross-match radius never shrinks below this [pixels]"
    )
    n_iterations: int = Field(6, ge=1, le=50, description="cross-match and fit rounds")
    clip_sigma: float = Field(3.0, gt=1, le=10, description="pairs beyond this many sigma are rejected")
    sip_order: int | None = Field(
        None, ge=1, le=5, description="polynomial order (1 = TAN); None chooses by the number of stars"
    )
    max_sip_order: int = Field(3, ge=1, le=5, description="highest order the automatic choice may take")
    good_rms_pix: float = Field(0.5, gt=0, description="'good' needs an rms at most this [pixels]")
    marginal_rms_pix: float = Field(1.0, gt=0, description="'marginal' needs an rms at most this [pixels]")
    good_min_matches: int = Field(10, ge=3, description="'good' needs at least this many matched stars")
    marginal_min_matches: int = Field(
        5, ge=3, description="'marginal' needs at least this many matched stars"
    )
    min_match_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="'good' needs this fraction of min(sources, catalog stars in field) matched",
    )
    flux_column: str = Field(
        "flux_aper_adu", description="source column that ranks brightness ('flux' is tried when missing)"
    )
    exclude_sharp: bool = Field(
        True, description="ignore sources flagged 'sharp' (hot pixels, cosmic rays) when 10 others remain"
    )


class AlignConfig(BaseModel):
    """Frame-to-frame alignment parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_match_sources: int = Field(
        50, ge=6, le=1000, description="brightest sources of each frame for the asterism match"
    )
    scale_tolerance: float = Field(
        0.03, gt=0, le=0.5, description="relative scale difference allowed between frames"
    )
    allow_reflection: bool = Field(
        False, description="allow mirrored frames (e.g. after a meridian flip with a mirror)"
    )
    transform: Literal["auto", "affine", "similarity"] = Field(
        "auto",
        description="'affine' (6 parameters), 'similarity' (shift, rotation, scale) or 'auto': affine "
        "from min_affine_pairs matched stars on, similarity below",
    )
    min_affine_pairs: int = Field(
        40, ge=6, description="'auto' fits an affine transform from this many pairs"
    )
    asterism: AsterismConfig = Field(default_factory=AsterismConfig, description="triangle matching")
    match_radius_pix: float = Field(
        3.0, gt=0, le=100, description="initial pair radius after the asterism match [pixels]"
    )
    min_match_radius_pix: float = Field(
        0.5, gt=0, le=20, description="the pair radius never shrinks below [pixels]"
    )
    clip_sigma: float = Field(3.0, gt=1, le=10, description="pairs beyond this many sigma are rejected")
    good_rms_pix: float = Field(0.3, gt=0, description="'good' needs an rms at most this [pixels]")
    marginal_rms_pix: float = Field(1.0, gt=0, description="'marginal' needs an rms at most this [pixels]")
    good_min_matches: int = Field(10, ge=3, description="'good' needs at least this many pairs")
    marginal_min_matches: int = Field(5, ge=3, description="'marginal' needs at least this many pairs")
    flux_column: str = Field("flux_aper_adu", description="source column that ranks brightness")
    exclude_sharp: bool = Field(
        True,
        description="ignore sources flagged 'sharp' (hot pixels stay put between frames) when 10 others remain",
    )


class SeriesConfig(BaseModel):
    """How a series of frames of one field is solved."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    solve: SolveConfig = Field(
        default_factory=SolveConfig, description="single-frame solver (reference frame)"
    )
    align: AlignConfig = Field(default_factory=AlignConfig, description="frame-to-reference alignment")
    refine_with_catalog: bool = Field(
        True,
        description="with a catalog, refine each carried-over WCS against it (method 'relative_refined')",
    )
    max_chain_tries: int = Field(
        3, ge=0, le=20, description="frames that fail to align directly try this many aligned neighbours"
    )
    static_fraction: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="a source found at the same detector pixel in this fraction of the frames whose field "
        "moved is fixed to the detector (hot pixel, bad column) and ignored; None keeps every source",
    )
    static_radius_pix: float = Field(0.7, gt=0, le=5, description="'same detector pixel' tolerance [pixels]")
    static_min_shift_pix: float = Field(
        3.0, gt=0, le=1000, description="frames whose field moved less than this are not compared [pixels]"
    )


class BlindConfig(BaseModel):
    """Blind solving with astrometry.net (both engines optional)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str = Field(
        "auto",
        pattern="^(auto|solve-field|nova|none)$",
        description="auto: local solve-field when installed, else nova when an API key is set; none: off",
    )
    index_dirs: tuple[str, ...] = Field(
        DEFAULT_INDEX_DIRS, description="folders of astrometry.net index files (index-*.fits)"
    )
    scale_tolerance: float = Field(
        0.3, gt=0, lt=1, description="pixel-scale search range: hint x (1 -/+ this) [fraction]"
    )
    min_quad_fraction: float = Field(
        0.1, gt=0, le=1, description="smallest quad scale used, as a fraction of the field's shorter side"
    )
    max_sources: int = Field(300, ge=10, le=5000, description="brightest sources handed to the solver")
    tweak_order: int = Field(
        1,
        ge=0,
        le=4,
        description="SIP order solve-field fits to its matches (1: plain TAN; darkroom's own TAN-SIP fit "
        "against the reference catalogue refines it)",
    )
    cpu_limit_s: int = Field(60, ge=1, le=3600, description="solve-field's CPU limit [s]")
    nova_api_key: str | None = Field(
        None, description="nova.astrometry.net API key (or the environment's ASTROMETRY_NET_API_KEY)"
    )
    nova_api_url: str | None = Field(None, description="service URL; None: nova.astrometry.net")
    nova_timeout_s: int = Field(300, ge=10, le=3600, description="how long to wait for the service [s]")


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
