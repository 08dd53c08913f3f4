"""Normalised frame metadata: what every stage knows about a raw frame.

An instrument profile turns a camera's header (and file name) into one
:class:`FrameMetadata`. Conventions:

* times are UTC; ``time_mid_utc`` is the middle of the exposure (start + exptime/2);
* sections are FITS-style strings, 1-based and inclusive, ``[x1:x2,y1:y2]``;
* angles in degrees, temperatures in degrees Celsius, gain in electron/adu,
  read noise in electrons, saturation in adu (raw pixel values after BZERO/BSCALE);
* ``night`` is the local calendar date on which the night began (YYYY-MM-DD),
  from the site longitude when known, else from UTC - 12 h.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FRAME_TYPES", "FrameMetadata", "FrameType"]

FrameType = Literal["bias", "dark", "flat", "light", "arc", "unknown"]
FRAME_TYPES: tuple[str, ...] = ("bias", "dark", "flat", "light", "arc", "unknown")


class FrameMetadata(BaseModel):
    """Normalised description of one raw frame."""

    model_config = ConfigDict(frozen=True)

    profile: str = Field(description="name of the instrument profile that matched")
    frame_type: FrameType = Field(description="bias, dark, flat, light, arc or unknown")
    type_source: str = Field("", description="where the type came from: a keyword name or 'filename'")
    instrument: str = Field("", description="camera name (INSTRUME or the profile's name)")
    telescope: str = ""
    object: str = ""
    exptime_s: float | None = Field(None, ge=0, description="exposure time [s]")
    filter: str | None = Field(None, description="normalised filter name; None when the camera has none")
    binning_x: int = Field(1, ge=1)
    binning_y: int = Field(1, ge=1)
    naxis1: int = Field(0, ge=0, description="image width [pixels]")
    naxis2: int = Field(0, ge=0, description="image height [pixels]")
    ccd_temp_c: float | None = Field(None, description="CCD temperature [deg C]")
    set_temp_c: float | None = Field(None, description="CCD set point [deg C]")
    time_start_utc: datetime | None = Field(None, description="start of exposure, UTC, naive")
    time_mid_utc: datetime | None = Field(None, description="middle of exposure, UTC, naive")
    time_source: str = Field("", description="keyword(s) the time came from and how they were read")
    night: str | None = Field(None, description="local date the night began, YYYY-MM-DD")
    gain_e_per_adu: float | None = Field(None, gt=0, description="gain [electron/adu]")
    read_noise_e: float | None = Field(None, ge=0, description="read noise [electron]")
    saturation_adu: float | None = Field(None, gt=0, description="saturation level [adu]")
    overscan_section: str | None = Field(None, description="FITS section, 1-based inclusive")
    trim_section: str | None = Field(None, description="FITS section, 1-based inclusive")
    site_name: str | None = None
    site_lat_deg: float | None = Field(None, ge=-90, le=90)
    site_lon_deg: float | None = Field(None, ge=-180, le=360, description="east positive")
    site_height_m: float | None = None
    ra_deg: float | None = Field(None, ge=0, lt=360, description="pointing RA (ICRS/J2000) [deg]")
    dec_deg: float | None = Field(None, ge=-90, le=90, description="pointing Dec [deg]")
    pixel_scale_arcsec: float | None = Field(
        None, gt=0, description="pixel scale after binning [arcsec/pixel]"
    )
    has_wcs: bool = Field(False, description="the header carries a celestial WCS")
    subframe_x: int | None = Field(
        None,
        ge=0,
        description="column of the frame's first pixel in the full detector (binned, 0-based); "
        "None: not a subframe read-out (no offset keyword)",
    )
    subframe_y: int | None = Field(
        None, ge=0, description="row of the frame's first pixel in the full detector (binned, 0-based)"
    )
    image_unit: str | None = Field(None, description="unit of the pixel values (BUNIT), normalised")
    precalibrated: bool = Field(
        False, description="the pixels are already calibrated (a flux-density unit): no masters needed"
    )
    unit_zero_point_mag: float | None = Field(
        None,
        description="AB magnitude of a source whose pixel values sum to 1 (not per second): 22.5 for "
        "nanomaggies, 22.5 - 2.5 log10(NMGY) for SDSS counts; None: only a reference catalogue gives one",
    )
    software_bias_adu: float | None = Field(
        None,
        description="constant added to raw pixels by software (SOFTBIAS), subtracted by calibration [adu]",
    )
    companion: str | None = Field(
        None,
        description="set when the file is a companion map of a science frame (weight, mask, "
        "inverse variance, exposure map) rather than a frame: what it is and why that is known",
    )
    warnings: tuple[str, ...] = Field((), description="non-fatal oddities found while reading the header")
