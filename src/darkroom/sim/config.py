"""Configuration of a simulated night (:class:`SimConfig`).

Every physical quantity carries its unit in the field name or description. Pixel
positions are 0-based with the centre of the first pixel at (0, 0), as in sep;
shapes are ``(ny, nx)``.

Photometric model (filter r)::

    r_inst = -2.5 log10(rate_e_per_s)
    r      = r_inst + zero_point_mag - extinction_mag_per_airmass * X + colour_term * (g - r)

so a star of catalogue magnitude ``r`` and colour ``g - r`` seen at airmass ``X``
gives ``rate = 10**(-0.4 * (r - zero_point_mag + k X - c (g - r)))`` electrons per
second, times its relative flux (transit, variability) at mid-exposure.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["PointingJump", "SimConfig", "TransitConfig", "VariableConfig"]


class PointingJump(BaseModel):
    """A sudden pointing offset from one science frame on (e.g. a guider re-acquisition)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame_index: int = Field(ge=0, description="first science frame (0-based) that carries the jump")
    dx_pix: float = Field(ge=-500, le=500, description="jump of the star positions along x [pixel]")
    dy_pix: float = Field(ge=-500, le=500, description="jump of the star positions along y [pixel]")


class TransitConfig(BaseModel):
    """The transiting planet: a star injected at the field centre with a known transit.

    The geometry (Rp/Rs, a/Rs, inclination) is solved from the depth, the duration
    and the impact parameter, see :func:`darkroom.sim.lightcurves.solve_transit`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_r_mag: float = Field(13.0, ge=5, le=22, description="host star r magnitude [mag]")
    host_g_r: float = Field(0.5, ge=-0.5, le=2.5, description="host star colour g - r [mag]")
    host_offset_pix: tuple[float, float] = Field(
        (3.3, -2.7),
        description="host position relative to the frame centre at the first frame (dx, dy) [pixel]",
    )
    depth: float = Field(0.015, gt=0, lt=0.5, description="fractional flux drop at mid-transit (1 - F_min)")
    duration_h: float = Field(
        2.0, gt=0.1, le=24, description="total duration T14, first to fourth contact [hour]"
    )
    impact_parameter: float = Field(0.3, ge=0, lt=0.9, description="impact parameter b [stellar radii]")
    period_d: float = Field(3.0, gt=0.2, le=1000, description="orbital period [day]")
    mid_offset_h: float | None = Field(
        None,
        description="mid-transit time after the start of the science sequence [hour]; "
        "None puts it at the middle exposure of the sequence",
    )
    u1: float = Field(0.45, ge=0, le=1, description="quadratic limb-darkening coefficient u1")
    u2: float = Field(0.20, ge=-0.5, le=1, description="quadratic limb-darkening coefficient u2")


class VariableConfig(BaseModel):
    """The variable star: a sinusoid, ``F = 1 + amplitude * sin(2 pi (t - t_ref) / P + phase)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r_mag: float = Field(13.5, ge=5, le=22, description="mean r magnitude [mag]")
    g_r: float = Field(0.8, ge=-0.5, le=2.5, description="colour g - r [mag]")
    offset_frac: tuple[float, float] = Field(
        (0.28, -0.22),
        description="position relative to the frame centre at the first frame, as fractions of (nx, ny)",
    )
    amplitude: float = Field(0.05, ge=0, lt=1, description="semi-amplitude of the relative flux")
    period_h: float = Field(1.7, gt=0.01, le=1e4, description="period [hour]")
    phase_rad: float = Field(0.0, ge=-7, le=7, description="phase at the start of the science sequence [rad]")


class SimConfig(BaseModel):
    """Everything that defines a simulated night; the same config and seed give byte-identical files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- randomness and sequence ------------------------------------------------------------
    seed: int = Field(1, ge=0, le=2**63 - 1, description="seed of every random stream")
    shape: tuple[int, int] = Field((1024, 1024), description="detector shape (ny, nx) [pixel]")
    n_bias: int = Field(5, ge=0, le=200, description="number of bias frames")
    n_dark: int = Field(5, ge=0, le=200, description="number of dark frames")
    dark_exptime_s: float = Field(60.0, gt=0, le=3600, description="dark exposure time [s]")
    n_flat: int = Field(5, ge=0, le=200, description="number of flat frames (filter r)")
    flat_exptime_s: float = Field(10.0, gt=0, le=600, description="flat exposure time [s]")
    flat_level_adu: tuple[float, float] = Field(
        (30000.0, 20000.0),
        description="mean illumination of the first and last flat above bias [adu] (twilight fades)",
    )
    n_science: int = Field(12, ge=0, le=5000, description="number of science (light) frames")
    exptime_s: float = Field(60.0, gt=0, le=3600, description="science exposure time [s]")
    cadence_s: float = Field(
        70.0, gt=0, le=86400, description="start-to-start interval of science frames [s]"
    )
    readout_s: float = Field(12.0, ge=1, le=600, description="dead time between calibration frames [s]")
    start_utc: datetime = Field(
        datetime(2025, 6, 2, 4, 10, 0), description="start of the first science exposure, UTC (naive)"
    )
    calib_lead_min: float = Field(
        50.0, ge=0, le=1440, description="calibration frames start this long before the science [minute]"
    )
    object_name: str = Field(
        "SIM-1b",
        min_length=1,
        max_length=40,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _+.-]*$",
        description="OBJECT keyword, also the start of the science file names",
    )
    filter_name: Literal["r"] = Field("r", description="filter of flats and science frames")
    header_style: Literal["maxim", "minimal"] = Field(
        "maxim",
        description="maxim: MaxIm DL/ACP headers with every keyword; minimal: what a bare small-telescope "
        "driver writes -- no type keyword, gain, read noise, saturation or pixel size, DATE-OBS in local "
        "time with its UTC offset, a west-positive LONGITUD with LST-OBS, RA/DEC, generic file names",
    )
    utc_offset_h: float = Field(
        -7.0, ge=-14, le=14, description="minimal headers: UTC offset of the local DATE-OBS [hour]"
    )

    # --- site --------------------------------------------------------------------------------
    site_name: str = Field("APO-sim", description="observatory name")
    site_lat_deg: float = Field(32.780278, ge=-90, le=90, description="site latitude [deg, +N]")
    site_lon_deg: float = Field(-105.820278, ge=-180, le=180, description="site longitude [deg, +E]")
    site_height_m: float = Field(2788.0, ge=-500, le=6000, description="site height above sea level [m]")

    # --- pointing and astrometry ------------------------------------------------------------
    ra_deg: float = Field(240.55, ge=0, lt=360, description="field centre RA (ICRS) [deg]")
    dec_deg: float = Field(28.17, ge=-89, le=89, description="field centre Dec (ICRS) [deg]")
    pixel_scale_arcsec: float = Field(0.67, gt=0.01, le=60, description="pixel scale [arcsec/pixel]")
    pixel_size_um: float = Field(13.0, gt=1, le=100, description="physical pixel size [micron]")
    rotation_deg: float = Field(
        0.4, ge=-180, le=180, description="sky position angle of the +y axis, E of N [deg]"
    )
    sip_amplitude_pix: float = Field(
        1.5, ge=0, le=50, description="SIP distortion displacement at the frame corner [pixel]"
    )
    drift_pix_per_h: tuple[float, float] = Field(
        (4.0, -2.5), description="pointing drift of star positions (dx, dy) [pixel/hour]"
    )
    jitter_pix: float = Field(
        0.3, ge=0, le=20, description="rms random pointing jitter per frame per axis [pixel]"
    )
    jumps: tuple[PointingJump, ...] = Field((), description="sudden pointing offsets")
    header_pointing_error_arcsec: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="fixed error of OBJCTRA/OBJCTDEC with respect to the true centre [arcsec]",
    )
    header_wcs: Literal["none", "truth", "perturbed"] = Field(
        "none", description="WCS written into science headers: none, the truth TAN-SIP, or a perturbed TAN"
    )
    perturbed_wcs_shift_arcsec: float = Field(
        20.0, ge=0, le=3600, description="CRVAL error of the perturbed header WCS [arcsec]"
    )
    perturbed_wcs_rotation_deg: float = Field(
        0.2, ge=0, le=10, description="rotation error of the perturbed header WCS [deg]"
    )

    # --- detector ----------------------------------------------------------------------------
    gain_e_per_adu: float = Field(1.3, gt=0.05, le=100, description="gain [electron/adu]")
    read_noise_e: float = Field(12.0, ge=0, le=200, description="read noise [electron]")
    bias_level_adu: float = Field(1000.0, ge=0, le=20000, description="mean bias level [adu]")
    bias_column_rms_adu: float = Field(
        4.0, ge=0, le=200, description="rms of the per-column bias offsets [adu]"
    )
    bias_gradient_adu: float = Field(
        3.0, ge=-200, le=200, description="bias change from bottom to top row [adu]"
    )
    dark_current_e_s: float = Field(0.02, ge=0, le=100, description="mean dark current [electron/s/pixel]")
    n_hot_pixels: int = Field(60, ge=0, le=100000, description="number of hot pixels")
    hot_pixel_rate_e_s: tuple[float, float] = Field(
        (2.0, 200.0), description="range of hot-pixel dark currents, log-uniform [electron/s]"
    )
    bad_columns: tuple[int, ...] | None = Field(
        None, description="bad columns, 0-based x; None: two columns at 17 % and 60 % of the width"
    )
    bad_column_response: float = Field(0.6, gt=0, le=1, description="flat response of the bad columns")
    bad_column_dark_e_s: float = Field(
        5.0, ge=0, le=1e4, description="extra dark current of bad columns [e/s]"
    )
    saturation_adu: float = Field(
        60000.0, gt=100, le=65535, description="saturation level of raw pixels [adu]"
    )
    ccd_temp_c: float = Field(-25.0, ge=-150, le=40, description="CCD temperature [deg C]")

    # --- flat field --------------------------------------------------------------------------
    vignetting: float = Field(0.08, ge=0, lt=0.9, description="fractional response loss at the frame corner")
    n_dust_rings: int = Field(4, ge=0, le=100, description="number of dust-ring shadows")
    dust_depth: tuple[float, float] = Field(
        (0.02, 0.06), description="range of dust-ring depths (fractional)"
    )
    dust_radius_pix: tuple[float, float] = Field((8.0, 25.0), description="range of dust-ring radii [pixel]")
    prnu_rms: float = Field(0.005, ge=0, le=0.2, description="rms pixel-to-pixel response non-uniformity")

    # --- sky, seeing, photometry ---------------------------------------------------------------
    sky_e_s: float = Field(3.0, ge=0, le=1e5, description="sky background [electron/s/pixel] at the centre")
    sky_gradient: float = Field(
        0.03, ge=-0.5, le=0.5, description="fractional sky change from left to right edge"
    )
    sky_airmass_slope: float = Field(
        0.0,
        ge=0,
        le=5,
        description="fractional sky brightening per unit of airmass above 1 (a real night sky is "
        "brighter low down: ~0.5 for airglow seen through more atmosphere); 0: the same sky all night",
    )
    seeing_fwhm_arcsec: float = Field(1.8, gt=0.2, le=20, description="mean seeing FWHM [arcsec]")
    seeing_variation: float = Field(0.1, ge=0, le=0.6, description="fractional rms of the seeing over time")
    seeing_field_variation: float = Field(
        0.05, ge=0, le=0.5, description="fractional FWHM increase at the frame corner"
    )
    moffat_beta: float = Field(3.0, gt=1.2, le=20, description="Moffat beta")
    psf_oversample: int = Field(
        5, ge=1, le=15, description="sub-pixel sampling per axis for pixel integration"
    )
    zero_point_mag: float = Field(
        22.5, ge=10, le=35, description="r magnitude giving 1 electron/s above the air"
    )
    extinction_mag_per_airmass: float = Field(0.12, ge=0, le=2, description="extinction k [mag/airmass]")
    colour_term: float = Field(
        0.03, ge=-1, le=1, description="colour term c in r = r_inst + zp - kX + c (g - r)"
    )

    # --- catalogue ---------------------------------------------------------------------------
    n_stars: int = Field(800, ge=0, le=200000, description="catalogue stars over the field and its margin")
    r_mag_range: tuple[float, float] = Field(
        (9.5, 20.5), description="r magnitude range of the catalogue [mag]"
    )
    mag_slope: float = Field(0.3, ge=0, le=1, description="d log10 N / d mag of the number counts")
    catalog_margin_pix: float = Field(
        40.0, ge=0, le=5000, description="catalogue margin beyond the frame [pixel]"
    )
    refcat_mag_limit: float = Field(
        21.0, ge=5, le=30, description="faintest r in the reference catalogue [mag]"
    )

    # --- events ----------------------------------------------------------------------------------
    cosmic_ray_rate_cm2_s: float = Field(
        0.05, ge=0, le=100, description="cosmic-ray rate on the detector [events/cm^2/s]"
    )
    cosmic_ray_e: tuple[float, float] = Field(
        (300.0, 6000.0), description="range of charge per cosmic-ray pixel, log-uniform [electron]"
    )
    planet: TransitConfig = Field(default_factory=TransitConfig, description="the transiting planet")
    variable: VariableConfig = Field(default_factory=VariableConfig, description="the variable star")

    @field_validator("start_utc")
    @classmethod
    def _naive_utc(cls, value: datetime) -> datetime:
        """Aware datetimes are converted to UTC and made naive (the convention of FrameMetadata)."""
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        ny, nx = self.shape
        if not (32 <= ny <= 8192 and 32 <= nx <= 8192):
            raise ValueError(f"shape: {self.shape} must have both sides in 32..8192 pixels")
        if self.cadence_s < self.exptime_s + 1.0:
            raise ValueError(
                f"cadence_s: {self.cadence_s} s must exceed exptime_s ({self.exptime_s} s) by at least 1 s"
            )
        for col in self.bad_columns_x:
            if not 0 <= col < nx:
                raise ValueError(f"bad_columns: column {col} is outside 0..{nx - 1}")
        for name in ("hot_pixel_rate_e_s", "dust_depth", "dust_radius_pix", "r_mag_range", "cosmic_ray_e"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: ({lo}, {hi}) must satisfy 0 < low <= high")
        if (
            min(self.flat_level_adu) <= 0
            or max(self.flat_level_adu) + self.bias_level_adu >= self.saturation_adu
        ):
            raise ValueError(
                f"flat_level_adu: {self.flat_level_adu} must be positive and stay below saturation"
            )
        calib_s = (
            self.n_bias * self.readout_s
            + self.n_dark * (self.dark_exptime_s + self.readout_s)
            + self.n_flat * (self.flat_exptime_s + self.readout_s)
        )
        if calib_s > self.calib_lead_min * 60.0:
            raise ValueError(
                f"calib_lead_min: {self.calib_lead_min} min is shorter than the calibration sequence "
                f"({calib_s / 60.0:.1f} min); raise it or take fewer/shorter calibration frames"
            )
        for jump in self.jumps:
            if jump.frame_index >= max(self.n_science, 1):
                raise ValueError(
                    f"jumps: frame_index {jump.frame_index} is beyond the {self.n_science} frames"
                )
        return self

    @property
    def ny(self) -> int:
        return self.shape[0]

    @property
    def nx(self) -> int:
        return self.shape[1]

    @property
    def bad_columns_x(self) -> tuple[int, ...]:
        """The bad columns (0-based x), with the default resolved for this shape."""
        if self.bad_columns is None:
            return (int(0.17 * self.nx), int(0.6 * self.nx))
        return tuple(sorted(set(self.bad_columns)))

    @property
    def focal_length_mm(self) -> float:
        """Focal length implied by the pixel size and scale [mm]."""
        return self.pixel_size_um * 1e-3 * 206264.806 / self.pixel_scale_arcsec
