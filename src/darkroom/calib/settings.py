"""The ``calib`` section of darkroom.yaml (the calibration stages' settings) and the parameter
models of grouping, combination, masters, bad pixels, overscan, cosmic rays and calibration.

The models live here, not beside their algorithms, so that reading a configuration does not
import scipy or astropy.io.fits; the algorithm modules re-export the names they use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BadPixelConfig",
    "CalibSettings",
    "CalibrationConfig",
    "CombineConfig",
    "CosmicRayConfig",
    "DarkModelConfig",
    "GroupingConfig",
    "MasterComparisonConfig",
    "MasterConfig",
    "OverscanConfig",
    "RequireConfig",
    "RequireMode",
    "SkyFlatConfig",
    "StarGuardConfig",
]

RequireMode = bool | Literal["auto"]


class GroupingConfig(BaseModel):
    """Rules for grouping calibration frames and matching masters to frames."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temp_tolerance_c: float = Field(
        2.0, ge=0, le=100, description="largest |CCD temperature - set point|, and set-point mismatch [deg C]"
    )
    exptime_tolerance_s: float = Field(
        0.5, ge=0, le=3600, description="exposure times closer than this are equal (darks) [s]"
    )
    group_by_night: bool = Field(
        True, description="calibration frames of different nights form separate masters"
    )
    dark_scaling: bool = Field(
        True,
        description="a dark of another exposure time may be used, scaled, when none matches exactly",
    )
    bias_validity_days: float = Field(
        30.0, ge=0, le=3650, description="bias master validity either side [days]"
    )
    dark_validity_days: float = Field(
        30.0, ge=0, le=3650, description="dark master validity either side [days]"
    )
    flat_validity_days: float = Field(
        7.0, ge=0, le=3650, description="flat master validity either side [days]"
    )

    def validity(self, kind: str) -> timedelta:
        return timedelta(days=float(getattr(self, f"{kind}_validity_days")))


class CombineConfig(BaseModel):
    """How a stack of frames is combined."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["mean", "median"] = Field(
        "mean",
        description="statistic of the kept values: mean (lowest noise) or median (most robust)",
    )
    do_clip: bool = Field(True, description="reject outliers around the per-pixel median (needs >= 3 frames)")
    n_sigma_low: float = Field(3.0, gt=0, le=100, description="rejection below the median [expected sigma]")
    n_sigma_high: float = Field(3.0, gt=0, le=100, description="rejection above the median [expected sigma]")
    chunk_mb: float = Field(16.0, ge=1, le=65536, description="memory for the stacked block of rows [MiB]")
    n_noise_rows: int = Field(
        24, ge=4, le=100000, description="rows sampled to measure the noise-versus-level model [rows]"
    )
    n_noise_bins: int = Field(16, ge=1, le=256, description="signal-level bins of the noise model")


class DarkModelConfig(BaseModel):
    """What a bias-subtracted master dark holds: the measured mean, or a model of it.

    ``measured``: the (clipped) mean of the darks, pixel by pixel. Its own noise (a few
    darks) is subtracted from every science frame alike, so it does not average down in a
    coadd or across a light curve. ``denoised``: each pixel takes the posterior mean of its
    dark signal given its measured value and the distribution of all pixels' deviations from
    the smooth local level (medians of ``box_pix`` blocks, bilinear, plus column and row
    profiles), that distribution a mixture of ``n_components`` Gaussians fitted with the
    darks' noise deconvolved (empirical Bayes); its error variance is VAR. A pixel whose
    posterior is at least ``keep_weight`` its own value (hot pixels) keeps the measured
    value and variance. See :func:`darkroom.calib.masters.model_dark`. The master keeps the
    measured mean too (bad pixels and the comparison with the previous master are found on
    it). ``auto`` (the default): ``denoised`` for a master of 2 to ``denoise_below_frames`` - 1
    darks, ``measured`` otherwise (one dark has no measured noise to deconvolve); the master
    records which (``dark_model``, DARKMODL card).

    Why ``auto`` with 10: on ARCSAT's 5 darks, leave-one-out (four darks predict the fifth,
    five folds) errs by 38.5 adu^2 per pixel for the mean of the four and 6.8 adu^2 for the
    denoised model of them; carried into the XO-1 coadd's apertures, 81 against 19 adu^2.
    The mean's error falls as 1/N (~154/N adu^2 a pixel on that CCD), so the model stays the
    more accurate up to ~20 darks; the night's 52-frame coadd gains 2.05 mag with it against
    1.99 with the mean (sqrt(N) law 2.15). From 10 darks on the mean errs by <= ~15 adu^2 a
    pixel, which would cost a coadd like that night's <= ~0.06 mag (scaled from the figures
    above): the model-free mean is kept there, where a model's mis-fit (structure finer than
    its blocks, rows and columns, shrunk toward the level; untested on real darks beyond 5)
    is no longer small against what it gains. On the simulator's darks the model errs by
    0.11 adu^2 a pixel against 17.7 for the mean (tests/test_calib_sim.py).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["auto", "denoised", "measured"] = Field(
        "auto",
        description="denoised: each pixel's posterior mean given the smooth level and the pixels' spread; "
        "measured: the mean; auto: denoised from 2 to denoise_below_frames - 1 darks, measured otherwise",
    )
    denoise_below_frames: int = Field(
        10,
        ge=2,
        le=10000,
        description="auto: a master of fewer darks than this (and at least 2) is denoised [frames]",
    )
    box_pix: int = Field(64, ge=4, le=4096, description="block of the smooth level's medians [pixels]")
    n_components: int = Field(
        5, ge=1, le=20, description="Gaussians in the mixture of the pixels' deviations from the level"
    )
    fit_iterations: int = Field(200, ge=1, le=100000, description="EM steps of the mixture fit")
    keep_weight: float = Field(
        0.99,
        gt=0,
        le=1,
        description="a pixel whose posterior takes at least this weight of its own value keeps it [1]",
    )


class MasterConfig(BaseModel):
    """How masters are combined (one combine config per kind)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bias: CombineConfig = Field(
        default_factory=lambda: CombineConfig(method="mean"),
        description="combine of bias frames (clipped mean: lowest noise)",
    )
    dark: CombineConfig = Field(
        default_factory=lambda: CombineConfig(method="mean"),
        description="combine of bias-subtracted dark frames",
    )
    dark_model: DarkModelConfig = Field(
        default_factory=DarkModelConfig, description="the measured mean or a denoised model (master darks)"
    )
    flat: CombineConfig = Field(
        default_factory=lambda: CombineConfig(method="mean"),
        description="combine of bias/dark-corrected flats normalised by their median",
    )
    min_frames: int = Field(1, ge=1, le=10000, description="fewest frames accepted for a master [frames]")
    flat_min_level: float = Field(
        1e-3,
        gt=0,
        lt=1,
        description="flat pixels below this fraction of the median are set to NaN (vignetted/dead) [1]",
    )
    dark_exptime_tolerance_s: float = Field(
        0.5, ge=0, le=3600, description="largest exposure-time difference within one dark group [s]"
    )


class MasterComparisonConfig(BaseModel):
    """When a new master differs too much from the previous one of its group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_mean_shift_noise: float = Field(
        3.0,
        gt=0,
        le=1000,
        description="largest change of the mean level, in units of the larger master noise [noise]",
    )
    max_noise_ratio: float = Field(
        1.5, gt=1, le=100, description="largest ratio of the two masters' robust spatial noise [1]"
    )
    pixel_n_sigma: float = Field(
        5.0, gt=0, le=1000, description="a pixel has changed beyond this many combined sigma [sigma]"
    )
    max_changed_fraction: float = Field(
        0.01, gt=0, le=1, description="largest fraction of changed pixels [1]"
    )
    max_residual_scatter: float = Field(
        2.0,
        gt=0,
        le=1000,
        description="largest robust std of the difference over its expected sigma (structure change) [1]",
    )


class BadPixelConfig(BaseModel):
    """Thresholds of the bad-pixel detection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hot_n_sigma: float = Field(
        6.0, gt=0, le=1e4, description="hot: dark above local level by this many robust sigma [sigma]"
    )
    hot_min_adu_per_s: float = Field(
        0.0, ge=0, description="hot pixels must also exceed this dark-current excess [adu/s]"
    )
    flat_low: float = Field(
        0.5, gt=0, lt=1, description="low: flat below this fraction of the local level [1]"
    )
    flat_high: float = Field(
        1.5, gt=1, le=100, description="high: flat above this multiple of the local level [1]"
    )
    smooth_box_pix: int = Field(
        64, ge=4, le=4096, description="box of the block-median local level (vignetting, glow) [pixels]"
    )
    line_n_sigma: float = Field(
        6.0,
        gt=0,
        le=1e4,
        description="bad column/row: profile off its sliding median by this many sigma [sigma]",
    )
    line_window_pix: int = Field(
        31, ge=5, le=4001, description="sliding window of the profile median and sigma [pixels]"
    )
    line_min_deviation: float = Field(
        0.0,
        ge=0,
        description="bad lines must also deviate by this much from the sliding median (profile units)",
    )
    n_segments: int = Field(4, ge=1, le=64, description="stripes along the line in which profiles are taken")
    do_columns: bool = Field(True, description="look for bad columns")
    do_rows: bool = Field(True, description="look for bad rows")


class OverscanConfig(BaseModel):
    """How the overscan level is measured and subtracted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    statistic: Literal["median", "clipped_mean"] = Field(
        "clipped_mean",
        description="collapse of the overscan across its short axis: median, or mean clipped at n_sigma",
    )
    n_sigma: float = Field(3.0, gt=0, le=20, description="clipping threshold for clipped_mean [sigma]")
    fit: Literal["constant", "poly", "per_line"] = Field(
        "poly",
        description="model along the long axis: one constant, a polynomial, or each line on its own",
    )
    poly_order: int = Field(3, ge=0, le=10, description="polynomial order when fit='poly'")


class CosmicRayConfig(BaseModel):
    """L.A.Cosmic parameters (astroscrappy's names and defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Literal["sparse", "astroscrappy"] = Field(
        "sparse", description="sparse re-implementation (same decisions, faster) or astroscrappy itself"
    )
    sigclip: float = Field(4.5, gt=0, le=1000, description="Laplacian-to-noise detection limit [sigma]")
    sigfrac: float = Field(0.3, gt=0, le=1, description="neighbour limit as a fraction of sigclip [1]")
    objlim: float = Field(5.0, gt=0, le=1000, description="minimum contrast Laplacian / fine structure [1]")
    niter: int = Field(4, ge=1, le=20, description="L.A.Cosmic iterations")


class StarGuardConfig(BaseModel):
    """How stars are protected from the cosmic-ray step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="clear cosmic-ray flags that a star explains")
    max_fwhm_pix: float = Field(
        3.0,
        gt=0,
        le=50,
        description="flags are checked only on frames whose FWHM is below this [pixel]: L.A.Cosmic's "
        "own fine-structure test protects well-sampled stars",
    )
    detect_sigma: float = Field(3.0, gt=0, le=100, description="source detection limit per pixel [sigma]")
    peak_ratio_margin: float = Field(
        1.6,
        ge=1,
        le=5,
        description="a star's peak/flux may exceed the PSF's pixel-centred value by this factor",
    )
    protect_radius_fwhm: float = Field(
        1.5, gt=0, le=10, description="radius around a star where flags are checked [FWHM]"
    )
    psf_tolerance: float = Field(
        0.7,
        ge=0,
        le=10,
        description="a flagged pixel must exceed (1 + this) x the star model to stay flagged",
    )
    min_width_fraction: float = Field(
        0.7, ge=0, le=1, description="a star's minor axis is at least this fraction of the typical star's"
    )
    max_misfit: float = Field(
        0.6,
        gt=0,
        le=10,
        description="a candidate is a star when the residual power of the PSF fit on its unflagged "
        "pixels is below this fraction of the model's power (plus twice the noise)",
    )
    nsigma: float = Field(5.0, gt=0, le=100, description="and the model by this many sigma [sigma]")
    default_fwhm_pix: float = Field(
        2.0, gt=0.3, le=50, description="FWHM when too few stars measure it [pixel]"
    )


class RequireConfig(BaseModel):
    """Which masters must be present (a missing required master is an error).

    ``True``: required; ``False``: that correction is skipped when no master is given;
    ``"auto"`` (default): the caller decides -- the pipeline goes on without a kind of
    master when the night has no frames of that kind at all (one warning per night) and
    still fails when such frames exist but no master matches; :func:`calibrate_frame`
    alone goes on and notes it in the history.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bias: RequireMode = Field("auto", description="a master bias is required (true, false or auto)")
    dark: RequireMode = Field("auto", description="a master dark is required (true, false or auto)")
    flat: RequireMode = Field("auto", description="a master flat is required (true, false or auto)")


class SkyFlatConfig(BaseModel):
    """A night-sky flat from the lights themselves (:mod:`darkroom.calib.skyflat`), made for a
    night and filter that has no master flat when the field moved enough between frames that
    every pixel saw blank sky in many of them (dithered or drifting)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(
        False,
        description="build a sky flat where a night and filter has no master flat (off by default: on the "
        "hostile preset it did not improve the transit depth, see docs/calibration.md)",
    )
    min_frames: int = Field(20, ge=3, le=100000, description="fewest lights a sky flat is made of [frames]")
    box_pix: int = Field(
        64,
        ge=8,
        le=4096,
        description="block size of each frame's smooth sky (what the flat keeps is below it) [pixel]",
    )
    threshold_sigma: float = Field(
        3.0, gt=0, le=100, description="a pixel this far above the frame's sky is a source [sky sigma]"
    )
    dilate_pix: int = Field(
        4, ge=0, le=50, description="radius by which each frame's source mask is grown [pixel]"
    )
    min_samples: int = Field(
        10, ge=2, le=100000, description="fewest unmasked frames a pixel needs; others get the smooth value 1"
    )
    min_motion_pix: float = Field(
        10.0,
        ge=0,
        le=1e5,
        description="the field must move at least this far (90th percentile of the frames' distances "
        "from their median position) or no sky flat is made: stars on the same pixels would leave "
        "their wings in it [pixel]",
    )
    outlier_sigma: float = Field(
        8.0,
        gt=0,
        le=1000,
        description="pixels this far above the flat's spread are hot pixels: set to 1 [sigma]",
    )
    max_zero_disagreement: float = Field(
        0.2,
        gt=0,
        le=1,
        description="with an unknown zero level, the response scale measured on the two halves of "
        "the rows must agree to this fraction, else no sky flat [1]",
    )


class CalibrationConfig(BaseModel):
    """How a frame is calibrated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    require: RequireConfig = Field(default_factory=RequireConfig, description="masters that must be given")
    do_overscan: bool = Field(True, description="subtract the overscan when the metadata has a section")
    do_trim: bool = Field(True, description="trim to the metadata's trim section")
    overscan: OverscanConfig = Field(default_factory=OverscanConfig)
    default_saturation_adu: float | None = Field(
        65535.0, gt=0, description="saturation when the metadata has none [adu, raw]; None: no SAT flags"
    )
    dark_exptime_tolerance_s: float = Field(
        0.5, ge=0, le=3600, description="largest exptime difference for a dark that includes the bias [s]"
    )
    min_flat: float = Field(
        0.05, gt=0, lt=1, description="flat values below this are treated as no response (BAD) [1]"
    )
    do_interpolate_bad: bool = Field(True, description="interpolate BAD pixels (flag INTRP)")
    estimate_noise: bool = Field(
        True,
        description="without gain or read noise in the header, given or measured on the masters: "
        "estimate them from the sky (flagged in NOISEMOD); false: fail",
    )
    do_cosmic_rays: bool = Field(True, description="detect cosmic rays (needs gain and read noise)")
    do_interpolate_cosmic_rays: bool = Field(True, description="interpolate cosmic-ray pixels (flag INTRP)")
    cosmic_rays: CosmicRayConfig = Field(default_factory=CosmicRayConfig)
    star_guard: StarGuardConfig = Field(
        default_factory=StarGuardConfig, description="keeps cosmic-ray flags off (undersampled) stars"
    )
    sky_box_pix: int = Field(
        64, ge=8, le=4096, description="mesh of the sky model used for cosmic rays [pixels]"
    )


class CalibSettings(BaseModel):
    """The ``calib`` section of darkroom.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grouping: GroupingConfig = Field(default_factory=GroupingConfig)
    masters: MasterConfig = Field(default_factory=MasterConfig)
    comparison: MasterComparisonConfig = Field(default_factory=MasterComparisonConfig)
    bad_pixels: BadPixelConfig = Field(default_factory=BadPixelConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    sky_flat: SkyFlatConfig = Field(
        default_factory=SkyFlatConfig, description="night-sky flats from the lights of a night with no flats"
    )
    user_badpixels: str | None = Field(
        None,
        description="YAML file of bad columns/rows/rectangles (1-based, inclusive); relative to the repository",
    )
    allow_outside_window: bool = Field(
        False, description="use the nearest matching master outside its validity window (with a warning)"
    )
