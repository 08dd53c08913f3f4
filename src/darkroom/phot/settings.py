"""The ``photometry.measure`` section of darkroom.yaml (the photometry stage's settings) and the
parameter models of aperture photometry, the zero point and PSF photometry.

The models live here, not beside their algorithms, so that reading a configuration does not
import sep, scipy or photutils; the algorithm modules re-export the names they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from darkroom.catalogs.sources import ReferenceCatalogSource
from darkroom.maskbits import MaskBit
from darkroom.phot.flags import DEFAULT_BAD_FLAGS, PhotFlag

__all__ = ["ApertureConfig", "BackgroundStatistic", "MeasureSettings", "PsfConfig", "ZeroPointConfig"]

_ALL_MASK_BITS = int(MaskBit.BAD | MaskBit.SAT | MaskBit.CR | MaskBit.INTRP | MaskBit.EDGE | MaskBit.NO_DATA)
BackgroundStatistic = Literal["median", "mean", "mode"]


class PsfConfig(BaseModel):
    """Settings of :func:`psf_photometry` and :func:`build_epsf`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Literal["gaussian", "epsf"] = Field(
        "gaussian", description="PSF model: Gaussian of the frame FWHM, or an ePSF built from the frame"
    )
    fit_half_size_fwhm: float = Field(
        1.5, gt=0.5, le=10, description="half size of the fitting box [FWHM]; the box is odd-sized"
    )
    fit_positions: bool = Field(True, description="fit x/y; False holds them at the given positions")
    max_shift_pix: float = Field(2.0, gt=0, le=20, description="largest allowed position change [pixel]")
    group_separation_fwhm: float = Field(
        2.5, ge=0, le=20, description="stars closer than this are fitted together [FWHM]; 0: never"
    )
    exclude_bits: int = Field(
        int(MaskBit.BAD | MaskBit.SAT | MaskBit.NO_DATA),
        ge=0,
        description="MASK bits whose pixels are left out of the fit",
    )
    fitter_maxiters: int = Field(100, ge=5, le=10000, description="least-squares iterations per group")
    epsf_oversampling: int = Field(2, ge=1, le=8, description="ePSF oversampling factor")
    epsf_max_stars: int = Field(80, ge=5, le=2000, description="brightest isolated stars used for the ePSF")
    epsf_box_fwhm: float = Field(5.0, ge=2, le=30, description="ePSF cutout size [FWHM] (odd pixels)")
    epsf_isolation_fwhm: float = Field(
        4.0, ge=0, le=50, description="ePSF stars have no other source within this [FWHM]"
    )
    epsf_maxiters: int = Field(10, ge=1, le=100, description="ePSF builder iterations")


class ZeroPointConfig(BaseModel):
    """Matching, star selection and fitting of :func:`calibrate_photometry`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match_radius_arcsec: float = Field(
        2.0, gt=0, le=60, description="match radius, a few times the astrometric rms [arcsec]"
    )
    fit_colour_term: bool = Field(True, description="fit the colour term c; else hold it at colour_term")
    colour_term: float = Field(0.0, ge=-5, le=5, description="colour term used when not fitted [mag/mag]")
    min_colour_range: float = Field(
        0.2, ge=0, description="fit c only when the used stars' colours span this much [mag]"
    )
    clip_sigma: float = Field(3.0, gt=1, le=10, description="residual clipping threshold [robust sigma]")
    max_iters: int = Field(10, ge=1, le=100, description="maximum clipping iterations")
    min_stars: int = Field(3, ge=1, description="fewest stars for a solution [count]")
    max_mag_err: float = Field(
        0.1, gt=0, le=2, description="drop faint stars with a larger instrumental error [mag]"
    )
    ref_mag_min: float | None = Field(None, description="drop reference stars brighter than this [mag]")
    ref_mag_max: float | None = Field(None, description="drop reference stars fainter than this [mag]")
    bad_flags: int = Field(
        DEFAULT_BAD_FLAGS | int(PhotFlag.BLENDED) | int(PhotFlag.CR),
        ge=0,
        description="measurements with any of these PhotFlag bits are not used (saturated, ...)",
    )
    sys_err_mag: float = Field(
        0.01, ge=0, le=1, description="added in quadrature to each star's error in the weights [mag]"
    )
    ra_col: str = Field("ra", description="RA column of the measurement table [deg]")
    dec_col: str = Field("dec", description="Dec column of the measurement table [deg]")
    ref_ra_col: str = Field("ra", description="RA column of the reference catalog [deg]")
    ref_dec_col: str = Field("dec", description="Dec column of the reference catalog [deg]")
    ref_mag_col: str = Field("mag", description="magnitude column of the reference catalog [mag]")
    ref_mag_err_col: str | None = Field("mag_err", description="its error column, if any [mag]")
    ref_colour_col: str | None = Field("colour", description="colour index column, if any [mag]")


class ApertureConfig(BaseModel):
    """Apertures, annulus and flag settings of :func:`aperture_photometry`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    radii_pix: tuple[float, ...] = Field(
        (), description="fixed aperture radii [pixel]; listed first in the output"
    )
    radii_fwhm: tuple[float, ...] = Field(
        (1.0, 1.5, 2.0), description="aperture radii as multiples of the frame FWHM [FWHM]"
    )
    ref_aperture: int = Field(
        1,
        ge=0,
        description="index (fixed radii first, then FWHM multiples) of the aperture copied to flux/flux_err/flags",
    )
    do_local_background: bool = Field(
        True,
        description="subtract the annulus background; off for images whose background is already "
        "subtracted (bkg and bkg_rms are still measured and reported)",
    )
    annulus_in_fwhm: float = Field(4.0, gt=0, le=50, description="inner annulus radius [FWHM]")
    annulus_out_fwhm: float = Field(6.0, gt=0, le=60, description="outer annulus radius [FWHM]")
    annulus_in_pix: float | None = Field(
        None, gt=0, le=500, description="inner annulus radius [pixel]; overrides annulus_in_fwhm"
    )
    annulus_out_pix: float | None = Field(
        None, gt=0, le=600, description="outer annulus radius [pixel]; overrides annulus_out_fwhm"
    )
    annulus_statistic: BackgroundStatistic = Field(
        "median", description="clipped annulus centre: median, mean or mode (2.5 median - 1.5 mean)"
    )
    annulus_clip_sigma: float = Field(3.0, gt=0.5, le=10, description="sigma-clipping threshold [sigma]")
    annulus_clip_iters: int = Field(5, ge=0, le=50, description="maximum clipping iterations")
    annulus_min_pixels: int = Field(
        10, ge=3, description="fewer valid annulus pixels than this sets BKG_POOR [count]"
    )
    annulus_exclude_bits: int = Field(
        _ALL_MASK_BITS, ge=0, description="MASK bits whose pixels are left out of the annulus"
    )
    neighbour_mask_fwhm: float = Field(
        1.5,
        ge=0,
        le=20,
        description="annulus pixels within this distance of another source are left out [FWHM]",
    )
    exclude_bits: int = Field(
        int(MaskBit.BAD | MaskBit.NO_DATA),
        ge=0,
        description="MASK bits whose pixels are left out of aperture sums; the sum is scaled back "
        "to the full area with the mean of the other pixels (sep's correction)",
    )
    blend_margin_fwhm: float = Field(
        1.0, ge=0, le=20, description="BLENDED when a neighbour is within radius + this [FWHM]"
    )
    self_match_pix: float = Field(
        1.0, ge=0, le=10, description="a neighbour closer than this is the source itself [pixel]"
    )

    @model_validator(mode="after")
    def _check(self) -> ApertureConfig:
        n_ap = len(self.radii_pix) + len(self.radii_fwhm)
        if n_ap == 0:
            raise ValueError("radii_pix and radii_fwhm are both empty: give at least one aperture")
        if any(r <= 0 for r in (*self.radii_pix, *self.radii_fwhm)):
            raise ValueError("radii_pix / radii_fwhm: every radius must be > 0")
        if self.ref_aperture >= n_ap:
            raise ValueError(f"ref_aperture={self.ref_aperture} but only {n_ap} apertures are configured")
        if self.annulus_out_fwhm <= self.annulus_in_fwhm:
            raise ValueError("annulus_out_fwhm must be larger than annulus_in_fwhm")
        if (
            self.annulus_in_pix is not None
            and self.annulus_out_pix is not None
            and self.annulus_out_pix <= self.annulus_in_pix
        ):
            raise ValueError("annulus_out_pix must be larger than annulus_in_pix")
        return self

    @property
    def needs_fwhm(self) -> bool:
        """True when some radius is given in FWHM units."""
        return bool(self.radii_fwhm) or self.annulus_in_pix is None or self.annulus_out_pix is None


class MeasureSettings(BaseModel):
    """Apertures, recentring and zero point (the ``photometry`` stage's provenance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aperture: ApertureConfig = Field(
        default_factory=lambda: ApertureConfig(
            radii_fwhm=(1.0, 1.5, 2.0, 4.0),
            ref_aperture=1,
            annulus_in_fwhm=5.0,
            annulus_out_fwhm=7.0,
            exclude_bits=int(MaskBit.NO_DATA),
        ),
        description="aperture radii (fixed and FWHM multiples), annulus, flags; the reference aperture "
        "gives Measurement.flux. Bad and cosmic-ray pixels were interpolated by the calibrate stage: "
        "they are summed (and flagged), only NO_DATA pixels are left out",
    )
    recentre_radius_fwhm: float = Field(
        1.0, gt=0, le=10, description="a detection this close to a source's predicted position is used [FWHM]"
    )
    do_recentre: bool = Field(True, description="measure at the detection's centroid when one matches")
    default_fwhm_pix: float = Field(
        4.0, gt=0, le=100, description="FWHM used when the frame has none measured [pixel]"
    )
    reference_catalog: ReferenceCatalogSource | None = Field(
        None,
        description="reference catalog of the zero point; None: the astrometry's catalog (filled in by "
        "photometry_stages); no catalog at all: instrumental magnitudes",
    )
    ref_mag_column: str = Field("mag", description="reference magnitude column in the filter observed [mag]")
    ref_mag_err_column: str | None = Field(None, description="its error column, if any [mag]")
    ref_mag_columns: dict[str, str] | None = Field(
        None,
        description="filter -> reference magnitude column, e.g. {u: u, g: g, r: r, i: i, z: z}; the error "
        "column beside it (<col>_err, e_<col>, <col>err) is found by name. Filters not listed use the column "
        "named after their band (r, rmag, r_mag, sdss_r; Rc/Ic as r/i), else ref_mag_column when that is "
        "no other band's; a filter with no column stays instrumental and says so",
    )
    max_zp_rms_mag: float = Field(
        0.2,
        gt=0,
        le=5,
        description="a zero point whose star-to-star scatter is larger is flagged (wrong band or "
        "catalogue, clouds) [mag]",
    )
    ref_colour_columns: tuple[str, str] | None = Field(
        None, description="two magnitude columns whose difference is the colour index, e.g. (g_mag, r_mag)"
    )
    zero_point: ZeroPointConfig = Field(
        default_factory=ZeroPointConfig,
        description="matching and fitting of the zero point (its column names are set by this stage)",
    )
    do_aperture_correction: bool = Field(
        True, description="correct magnitudes to the largest aperture before the zero-point fit"
    )
    apcorr_min_snr: float = Field(
        30.0, gt=0, description="stars brighter than this S/N measure the aperture correction"
    )
    limit_n_sigma: float = Field(5.0, gt=0, le=100, description="S/N of the limiting magnitude")
    method: Literal["aperture", "psf"] = Field(
        "aperture",
        description="what gives Measurement.flux and the magnitudes: the reference aperture (aperture-"
        "corrected magnitudes), or a PSF fit at the same fixed positions (total flux, for crowded "
        "fields); the aperture columns stay in the per-image Parquet either way",
    )
    psf_moffat: bool = Field(
        True,
        description="method 'psf': model each frame's PSF as its Moffat fit (FWHM and beta of the extract "
        "stage, catalog meta psf_fwhm_pix, psf_beta), circular, pixel-integrated, of unit total flux; "
        "False, or a frame without a fit: the model of psf.model",
    )
    psf_background_mask_fwhm: float = Field(
        2.0,
        ge=0,
        le=20,
        description="method 'psf': the background map under the fits (sep mesh, 64 pixels) leaves out discs "
        "of this radius around every measured position (crowded fields: star light raises an unmasked "
        "map) [FWHM]; 0: psf_photometry's own unmasked map",
    )
    psf: PsfConfig = Field(
        default_factory=PsfConfig,
        description="method 'psf': fitting box, grouping, excluded mask bits and the model used without a "
        "Moffat fit (a Gaussian of the frame FWHM, or an ePSF: both miss part of a real star's wings, "
        "2-20 %); positions are always held fixed",
    )
