"""The ``coadd`` section of darkroom.yaml (the optional coadd stage of ``darkroom run``) and the
settings models of the imaging algorithms it nests (light: no algorithm module is imported, so
reading darkroom.yaml does not load reproject, scipy or sep)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.maskbits import MaskBit

__all__ = ["DEFAULT_EXCLUDE_BITS", "CoaddConfig", "CoaddSettings", "FluxRatioConfig", "ResampleConfig"]


DEFAULT_EXCLUDE_BITS = int(MaskBit.BAD | MaskBit.SAT | MaskBit.CR | MaskBit.NO_DATA)


class ResampleConfig(BaseModel):
    """How images are resampled (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["bilinear", "bicubic", "adaptive", "exact"] = Field(
        "bilinear",
        description="bilinear (fast, exact VAR), bicubic (reproject_interp), "
        "adaptive or exact (reproject's flux-conserving methods)",
    )
    conserve_flux: bool = Field(True, description="scale by the Jacobian so pixel sums (fluxes) are kept")
    exclude_bits: int = Field(
        DEFAULT_EXCLUDE_BITS, ge=0, description="MASK bits whose pixels get no weight (BAD|SAT|CR|NO_DATA)"
    )
    min_coverage: float = Field(
        0.5, gt=0, le=1, description="good-pixel weight below which an output pixel is NO_DATA"
    )
    grid_step_pix: int = Field(
        16, ge=1, le=256, description="spacing of the exactly mapped coarse grid [output pixel]"
    )
    block_rows: int = Field(256, ge=8, le=8192, description="output rows computed at once (bounds memory)")


class FluxRatioConfig(BaseModel):
    """Which stars measure a flux ratio, and how."""

    model_config = ConfigDict(extra="forbid")

    threshold_sigma: float = Field(10.0, gt=0, description="detection threshold on the den image [sigma]")
    snr_min: float = Field(30.0, gt=0, description="minimum S/N of a star on both images")
    radius_fwhm: float = Field(2.5, gt=0.5, le=10, description="aperture radius [FWHM]")
    isolation_fwhm: float = Field(5.0, ge=0, description="no other detection within this [FWHM]")
    max_elongation: float = Field(1.5, ge=1, description="largest a/b of a star (rejects galaxies, trails)")
    exclude_bits: int = Field(
        DEFAULT_EXCLUDE_BITS, ge=0, description="MASK bits a star's aperture may not hold"
    )
    max_stars: int = Field(300, ge=3, description="brightest stars used at most")
    clip_sigma: float = Field(3.0, gt=0, description="clip of the per-star ratios [sigma]")


class CoaddConfig(BaseModel):
    """How a coadd is made (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    combine: Literal["mean", "median"] = Field("mean", description="sigma-clipped weighted mean, or median")
    clip_sigma: float = Field(3.0, ge=0, description="clip threshold [sigma]; 0 turns clipping off")
    clip_iters: int = Field(3, ge=1, le=20, description="clipping iterations")
    clip_ampfrac: float = Field(
        0.3, ge=0, le=10, description="fraction of the signal added to the clip noise (seeing differences)"
    )
    weight: Literal["ivar", "exptime", "equal"] = Field("ivar", description="input weights")
    background: Literal["match", "subtract", "none"] = Field("match", description="background treatment")
    background_box_pix: int = Field(64, ge=8, le=4096, description="background mesh box [input pixel]")
    flux_scale: Literal["stars", "exptime", "none"] = Field("stars", description="photometric scaling")
    flux_ratio: FluxRatioConfig = Field(
        default_factory=FluxRatioConfig, description="stars of the flux scale"
    )
    exclude_bits: int = Field(DEFAULT_EXCLUDE_BITS, ge=0, description="MASK bits never combined")
    resample: ResampleConfig = Field(default_factory=ResampleConfig, description="resampling")
    block_rows: int = Field(128, ge=8, le=8192, description="output rows combined at once")
    memory_limit_mb: float = Field(
        1024.0, gt=0, description="stack size above which the stack goes to memory-mapped files"
    )


class CoaddSettings(BaseModel):
    """Which images are coadded, per field, filter and night (or all nights), and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        False,
        description="run the coadd stage in `darkroom run` (`darkroom coadd` runs it in any case)",
        json_schema_extra={"critical": False},
    )
    per: Literal["night", "all"] = Field("night", description="one coadd per night, or one over all nights")
    min_inputs: int = Field(3, ge=1, description="fewest good images that make a coadd")
    quality: Literal["good", "any"] = Field(
        "good", description="good: only frames whose quality flag is good (clouds, seeing excluded)"
    )
    combine: CoaddConfig = Field(default_factory=CoaddConfig, description="how the images are combined")
    aperture_fwhm: float = Field(
        1.0, gt=0.2, le=10, description="radius of the depth apertures [median input FWHM]"
    )
    n_sigma: float = Field(5.0, gt=0, description="significance of the limiting magnitude")
    rgb_filters: tuple[str, str, str] | None = Field(
        None, description="filters of the red, green and blue planes of the night's colour composite"
    )
