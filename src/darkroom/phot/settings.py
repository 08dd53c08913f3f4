"""The ``photometry.measure`` section of darkroom.yaml (the photometry stage's settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.catalogs import ReferenceCatalogSource
from darkroom.maskbits import MaskBit
from darkroom.phot.aperture import ApertureConfig
from darkroom.phot.calibrate import ZeroPointConfig
from darkroom.phot.psf import PsfConfig

__all__ = ["MeasureSettings"]


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
