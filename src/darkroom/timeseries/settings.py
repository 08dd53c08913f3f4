"""The ``photometry.associate`` and ``photometry.lightcurves`` sections and the ``targets`` list of
darkroom.yaml (the associate and lightcurves stages' settings), and the parameter models of the
comparison ensemble, the transparency flags and the light curve.

The models live here, not beside their algorithms, so that reading a configuration does not
import astropy.coordinates or scipy; the algorithm modules re-export the names they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag

__all__ = [
    "AirmassModel",
    "AssociateSettings",
    "ComparisonConfig",
    "LightCurveConfig",
    "LightCurveSettings",
    "NameResolverConfig",
    "TargetConfig",
    "TransparencyConfig",
]

AirmassModel = Literal["secz", "kasten_young"]


class TransparencyConfig(BaseModel):
    """Thresholds of :func:`transparency_flags`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fraction: float = Field(0.8, gt=0, lt=1, description="flag below this fraction of the reference level")
    reference_percentile: float = Field(
        90.0, ge=50, le=100, description="percentile of the series taken as the clear-sky level [%]"
    )
    window_epochs: int = Field(
        0, ge=0, description="running window for the reference level [epochs]; 0 = whole series"
    )


class ComparisonConfig(BaseModel):
    """Choice and weighting of the comparison ensemble (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_max: int = Field(20, ge=1, le=500, description="most comparison stars kept [count]")
    min_comparisons: int = Field(2, ge=1, description="never reject below this many [count]")
    min_coverage: float = Field(
        1.0, gt=0, le=1, description="fraction of epochs a candidate must be measured in, unflagged"
    )
    max_mag_diff: float = Field(2.5, gt=0, le=20, description="|m_comp - m_target| limit [mag]")
    max_colour_diff: float | None = Field(
        0.5, gt=0, description="|colour_comp - colour_target| limit when both are known [mag]"
    )
    colour_weight: float = Field(1.0, ge=0, description="ranking penalty per mag of colour difference")
    bad_flags: int = Field(
        DEFAULT_BAD_FLAGS, ge=0, description="PhotFlag bits that make a measurement unusable"
    )
    weighting: Literal["inverse_variance", "flux"] = Field(
        "inverse_variance", description="ensemble weights: 1/scatter^2, or flux (plain sum)"
    )
    excess_factor: float = Field(
        2.0, gt=1, le=100, description="reject at scatter/expected > this times the ensemble median"
    )
    max_scatter: float | None = Field(
        None, gt=0, description="also reject any star whose relative-flux scatter exceeds this [fraction]"
    )
    clip_sigma: float = Field(4.0, gt=1, le=20, description="outlier clipping in each star's scatter [sigma]")
    detrend_order: int = Field(
        0, ge=0, le=3, description="polynomial in time removed per segment before measuring scatter"
    )
    reject_named: bool = Field(False, description="apply rejection to user-named comparison stars too")


class IlluminationConfig(BaseModel):
    """Settings of :func:`darkroom.timeseries.illumination.fit_illumination` (a drifting field's
    illumination pattern measured by its stars)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="auto: correct when the fitted pattern is significant; on: always; off: never",
    )
    order: int = Field(2, ge=1, le=4, description="polynomial order in the detector position")
    min_motion_pix: float = Field(
        10.0,
        ge=0,
        description="stars must move at least this much over the night to measure anything [pixel]",
    )
    min_chi2_drop: float = Field(
        30.0, gt=0, description="chi-square drop (scaled to a reduced chi-square of 1) needed to correct"
    )
    prior_amplitude: float = Field(
        0.1, gt=0, description="prior width of each polynomial coefficient [ln flux over the half field]"
    )
    max_star_err_mag: float = Field(
        0.05, gt=0, description="stars noisier than this per epoch are not used [mag]"
    )
    error_floor_mag: float = Field(0.001, ge=0, description="added in quadrature to each error [mag]")
    clip_sigma: float = Field(5.0, gt=1, description="residuals beyond this are left out of the fit [sigma]")


class LightCurveConfig(BaseModel):
    """Settings of :func:`build_lightcurve`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    differential: bool = Field(True, description="compute rel_flux against a comparison ensemble")
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    transparency: TransparencyConfig = Field(default_factory=TransparencyConfig)
    airmass_model: AirmassModel = Field("secz", description="'secz' or 'kasten_young'")
    illumination: IlluminationConfig = Field(default_factory=IlluminationConfig)
    segment_jump_pix: float | None = Field(
        5.0,
        gt=0,
        description="a jump of the target's x/y larger than this starts a new pointing segment [pixel]; "
        "None: one segment",
    )


class AssociateSettings(BaseModel):
    """How detections become sources (the ``associate`` stage's provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    coords: Literal["auto", "sky", "pixel"] = Field(
        "auto",
        description="match on the sky (needs a WCS), in the reference frame's pixels, or auto: sky when the "
        "field's frames have an absolute WCS",
    )
    radius_rms_factor: float = Field(
        5.0, gt=0, le=100, description="match radius = this x the frames' median astrometric rms"
    )
    min_radius_arcsec: float = Field(1.0, gt=0, le=60, description="smallest sky match radius [arcsec]")
    max_radius_arcsec: float = Field(4.0, gt=0, le=120, description="largest sky match radius [arcsec]")
    min_radius_pix: float = Field(1.5, gt=0, le=50, description="smallest pixel match radius [pixel]")
    max_radius_pix: float = Field(5.0, gt=0, le=100, description="largest pixel match radius [pixel]")
    min_snr: float = Field(5.0, ge=0, le=1000, description="detections below this S/N are not associated")
    exclude_sharp: bool = Field(
        True, description="leave out detections narrower than a star (hot pixels, CRs)"
    )
    min_epochs: int = Field(
        3,
        ge=1,
        le=100000,
        description="a new source must be detected in at least this many frames (in all of them when a "
        "new field has fewer) [count]",
    )
    min_epoch_fraction: float = Field(
        0.0, ge=0, le=1, description="... and in at least this fraction of the field's frames"
    )
    reference_stars_mag_max: float | None = Field(
        None,
        ge=-5,
        le=35,
        description="reference-catalog stars down to this magnitude (in the photometry's ref_mag_column) "
        "become sources, measured by forced photometry where not detected [mag]; None: detections only",
    )


class TargetConfig(BaseModel):
    """An object whose light curve the ``lightcurves`` stage writes (``targets`` in darkroom.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=80, description="target name, also the product file name")
    ra_deg: float = Field(ge=0, lt=360, description="right ascension (ICRS) [deg]")
    dec_deg: float = Field(ge=-90, le=90, description="declination (ICRS) [deg]")
    comparison_ids: list[int] | None = Field(
        None, description="source ids of user-chosen comparison stars; None: automatic ensemble"
    )
    search_radius_arcsec: float | None = Field(
        None,
        gt=0,
        description="a position known only roughly (e.g. the frames' pointing): the source at it, else "
        "the brightest source within this radius [arcsec] is the target; None: the exact position",
    )


class LightCurveSettings(BaseModel):
    """How light curves are assembled (the ``lightcurves`` stage and ``darkroom lightcurve``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lightcurve: LightCurveConfig = Field(
        default_factory=lambda: LightCurveConfig(
            comparison=ComparisonConfig(bad_flags=DEFAULT_BAD_FLAGS & ~int(PhotFlag.BAD)),
            segment_jump_pix=5.0,
        ),
        description="comparison ensemble, light-curve transparency flags, airmass model, pointing segments; "
        "a BAD pixel in an aperture does not disqualify a comparison star (the calibrate stage "
        "interpolated it)",
    )
    match_radius_arcsec: float = Field(
        3.0, gt=0, le=600, description="largest distance from a requested position to its source [arcsec]"
    )
    match_radius_pix: float = Field(
        4.0, gt=0, le=500, description="the same in a field without absolute WCS [pixel]"
    )
    pool_mag_margin: float = Field(
        0.5,
        ge=0,
        le=10,
        description="comparison pool: sources within the widest window + this of the target's mean magnitude "
        "[mag]",
    )
    min_candidates: int = Field(
        4,
        ge=1,
        le=500,
        description="the comparison magnitude window grows from comparison.max_mag_diff in 0.25 mag steps "
        "(up to max_mag_diff_limit) until this many stars qualify (a sparse field) [count]",
    )
    max_mag_diff_limit: float = Field(
        4.0, gt=0, le=20, description="widest comparison magnitude window [mag]"
    )
    frame_transparency: TransparencyConfig = Field(
        default_factory=lambda: TransparencyConfig(fraction=0.85, reference_percentile=90.0),
        description="frames whose transparency falls below fraction x the reference level are flagged",
    )
    n_transparency_stars: int = Field(
        30, ge=1, le=1000, description="brightest unflagged stars that measure a frame's transparency"
    )
    exclude_poor_frames: bool = Field(
        False, description="also leave out frames the quality stage marked poor (FWHM, shape, sources)"
    )
    keep_flagged: bool = Field(False, description="keep flagged frames in the light curve (flags set)")
    season_gap_days: float | None = Field(
        60.0, gt=0, description="a gap longer than this starts a new season [day]; None: one season"
    )
    bin_minutes: float = Field(10.0, gt=0, le=1440, description="bin width of the plotted curve [minute]")
    earth_orientation_cache_dir: str = Field(
        "~/.cache/darkroom/iers",
        description="astropy's parsed IERS table, shared between repositories (relative: to the "
        "repository; the repository's own cache is used too)",
        json_schema_extra={"critical": False},
    )


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
    pointing_search_radius_arcsec: float = Field(
        120.0,
        gt=0,
        description="a target placed at its frames' pointing (OBJECT not resolved) is the source at the "
        "pointing, else the brightest source within this radius of it [arcsec]",
    )
    ephemerides: bool = Field(
        True, description="predicted transit times of known planets (NASA Exoplanet Archive) on the plots"
    )
    exoplanet_archive_tap: str | None = Field(
        None, description="TAP service of the NASA Exoplanet Archive (None: astroquery's default)"
    )
