"""The ``astrometry.extract`` section of darkroom.yaml (the extract stage's settings), the quality
stage's limits, and the parameter models of the background, detection and star selection.

The models live here, not beside their algorithms, so that reading a configuration does not
import sep or astropy.stats; the algorithm modules re-export the names they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.maskbits import MaskBit

__all__ = [
    "DEFAULT_MASK_BITS",
    "BackgroundConfig",
    "DetectConfig",
    "ExtractSettings",
    "QualityConfig",
    "QualityLimits",
]

DEFAULT_MASK_BITS = int(MaskBit.BAD | MaskBit.SAT | MaskBit.CR | MaskBit.EDGE | MaskBit.NO_DATA)


class QualityConfig(BaseModel):
    """Which sources count as stars for the FWHM and ellipticity of a frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_snr: float = Field(20.0, gt=0, description="minimum aperture signal-to-noise of a star")
    min_fwhm_pix: float = Field(
        0.8, ge=0, description="smaller sources are hot pixels or cosmic rays [pixels]"
    )
    isolation_fwhm: float = Field(
        3.0, ge=0, description="stars with a neighbour closer than this many FWHM are ignored [FWHM]"
    )
    edge_margin_pix: float = Field(5.0, ge=0, description="stars closer to the edge are ignored [pixels]")
    clip_sigma: float = Field(3.0, gt=0, description="sigma clipping of the per-star FWHM and ellipticity")
    min_fwhm_for_shape_pix: float = Field(
        1.5,
        ge=0,
        description="below this median FWHM stars are undersampled and their shape is the pixel grid's: "
        "the ellipticity is not reported [pixels]",
    )


class QualityLimits(BaseModel):
    """Limits beyond which a frame is poor; None switches a limit off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_fwhm_arcsec: float | None = Field(None, gt=0, description="largest acceptable FWHM [arcsec]")
    max_fwhm_pix: float | None = Field(None, gt=0, description="largest acceptable FWHM [pixels]")
    max_ellipticity: float | None = Field(0.3, ge=0, le=1, description="largest acceptable 1 - b/a")
    min_n_sources: int | None = Field(10, ge=0, description="fewest acceptable detected sources")
    max_sky_adu: float | None = Field(None, description="brightest acceptable sky level [adu]")
    max_fwhm_ratio: float | None = Field(
        None, gt=1, description="largest acceptable FWHM relative to the night's median FWHM [pixels/pixels]"
    )


class DetectConfig(BaseModel):
    """Detection and measurement parameters (SExtractor names in brackets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold_sigma: float = Field(
        3.0, gt=0, le=1000, description="detection threshold, multiples of the background rms [DETECT_THRESH]"
    )
    noise: Literal["map", "global"] = Field(
        "map", description="threshold and errors use the rms map or its global value"
    )
    min_area_pix: int = Field(
        5, ge=1, le=10000, description="minimum pixels above threshold [DETECT_MINAREA]"
    )
    filter: Literal["gauss", "sextractor_default", "none"] = Field(
        "gauss",
        description="matched filter: a Gaussian of filter_fwhm_pix, SExtractor's 3x3 default.conv, or none",
    )
    filter_fwhm_pix: float = Field(3.0, gt=0.5, le=30, description="FWHM of the Gaussian filter [pixels]")
    deblend_n_thresh: int = Field(32, ge=1, le=256, description="deblending sub-thresholds [DEBLEND_NTHRESH]")
    deblend_cont: float = Field(
        0.005, ge=0, le=1, description="minimum contrast to deblend; 1 turns deblending off [DEBLEND_MINCONT]"
    )
    clean: bool = Field(True, description="remove spurious detections near bright ones [CLEAN]")
    clean_param: float = Field(1.0, gt=0, le=10, description="cleaning efficiency [CLEAN_PARAM]")
    mask_bits: int = Field(
        int(MaskBit.BAD | MaskBit.CR | MaskBit.NO_DATA),
        ge=0,
        description="MASK bits whose pixels cannot be detected (default BAD|CR|NO_DATA; SAT is kept so "
        "saturated stars are found and counted)",
    )
    aperture_radius_pix: float = Field(
        5.0, gt=0, le=200, description="radius of the quick aperture flux [pixels] [PHOT_APERTURES/2]"
    )
    window_centroid: bool = Field(
        True, description="refine centroids with a Gaussian window of the source's size [XWIN_IMAGE]"
    )
    centroid_fit: Literal["auto", "always", "never"] = Field(
        "auto",
        description="replace the centroid by a pixel-integrated Gaussian fit: always, never, or (auto) when "
        "the stars are undersampled (median FWHM below undersampled_fwhm_pix), where windowed centroids "
        "lock onto pixel centres",
    )
    undersampled_fwhm_pix: float = Field(
        2.0,
        ge=0,
        le=20,
        description="'auto' centroid fits below this median half-light FWHM of bright stars [pixels]",
    )
    psf_n_stars: int = Field(
        30,
        ge=0,
        le=500,
        description="brightest isolated unsaturated stars fitted with a Moffat profile for the FWHM; "
        "0 = no fit (fwhm_pix is then that of a Gaussian with the half-light radius)",
    )
    psf_min_snr: float = Field(
        20.0, gt=0, le=1e6, description="minimum aperture signal-to-noise of a star fitted for the PSF"
    )
    psf_isolation_fwhm: float = Field(
        3.0, ge=0, le=50, description="stars fitted for the PSF have no detected neighbour within this [FWHM]"
    )
    sharp_fwhm_pix: float = Field(
        1.0,
        ge=0,
        le=10,
        description="sources whose half-light radius is that of a Gaussian with a smaller FWHM are flagged "
        "'sharp' (hot pixels, cosmic rays) [pixels]",
    )
    max_sources: int = Field(
        200_000, ge=1, description="keep at most this many sources (the brightest by aperture flux)"
    )


class BackgroundConfig(BaseModel):
    """How the background mesh is built (SExtractor BACK_SIZE / BACK_FILTERSIZE)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    box_size_pix: int = Field(64, ge=4, le=4096, description="mesh box width and height [pixels]")
    filter_size: int = Field(3, ge=1, le=15, description="median filter over mesh boxes [boxes]")
    filter_threshold_adu: float = Field(
        0.0, ge=0, description="only filter boxes that differ from the median by more than this [adu]"
    )
    mask_bits: int = Field(
        DEFAULT_MASK_BITS,
        ge=0,
        description="MASK bits whose pixels are left out (default BAD|SAT|CR|EDGE|NO_DATA)",
    )


class ExtractSettings(BaseModel):
    """How sources are found and measured (the ``extract`` stage's provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    background: BackgroundConfig = Field(default_factory=BackgroundConfig, description="background mesh")
    detect: DetectConfig = Field(default_factory=DetectConfig, description="source detection")
    quality: QualityConfig = Field(
        default_factory=QualityConfig, description="which sources are stars for FWHM and ellipticity"
    )
