"""The ``surveys`` section of darkroom.yaml: the shared cache, what ``darkroom run`` does for a
survey repository, and one sub-section per archive.

The models live here, not beside their clients, so that reading a configuration does not
import requests, tenacity or astropy; the client modules re-export the names they use.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SDSS_BANDS", "CutoutConfig", "HttpConfig", "SdssConfig", "SurveysConfig", "ZtfConfig"]

SDSS_BANDS = ("u", "g", "r", "i", "z")


class HttpConfig(BaseModel):
    """How hard and how fast to ask an archive. None of these change a product (not critical)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    timeout_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="connect and read timeout of one attempt [s]",
        json_schema_extra={"critical": False},
    )
    max_attempts: int = Field(
        4,
        ge=1,
        le=20,
        description="attempts per request (1 = no retry)",
        json_schema_extra={"critical": False},
    )
    backoff_s: float = Field(
        2.0,
        ge=0,
        le=600,
        description="first retry wait, doubled each attempt, plus jitter [s]",
        json_schema_extra={"critical": False},
    )
    backoff_max_s: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="longest wait between attempts [s]",
        json_schema_extra={"critical": False},
    )
    concurrency: int = Field(
        4, ge=1, le=256, description="requests in flight at once", json_schema_extra={"critical": False}
    )
    rate_per_s: float = Field(
        4.0,
        gt=0,
        le=100000,
        description="most request starts per second (politeness)",
        json_schema_extra={"critical": False},
    )
    credentials_file: str | None = Field(
        None,
        description="file 'user:password' readable only by its owner (mode 0600); public data needs none",
        json_schema_extra={"critical": False},
    )
    credentials_env: str = Field(
        "DARKROOM_IRSA",
        description="credentials from environment variables <PREFIX>_USER and <PREFIX>_PASSWORD",
        json_schema_extra={"critical": False},
    )


class SdssConfig(BaseModel):
    """SDSS frames for the targets (``surveys.sdss`` in darkroom.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_url: str = Field(
        "https://data.sdss.org/sas",
        description="Science Archive Server root; a mirror or a local test server can stand in",
        json_schema_extra={"critical": False},
    )
    search_url: str = Field(
        "https://skyserver.sdss.org/dr17",
        description="SkyServer root whose SQL search finds the fields covering a target",
        json_schema_extra={"critical": False},
    )
    field_table: list[str] = Field(
        default_factory=list,
        description="local field tables (photoField files) used instead of the search service",
        json_schema_extra={"critical": False},
    )
    data_release: str = Field("dr17", description="SAS data release folder")
    rerun: int = Field(301, description="photometric rerun of the frames")
    bands: list[str] = Field(default_factory=lambda: list(SDSS_BANDS), description="bands to download")
    max_fields: int = Field(1, ge=1, le=20, description="covering fields kept per target (best first)")
    photoobj: bool = Field(True, description="also download each field's photoObj object table")
    fpm: bool = Field(True, description="also download each frame's fpM mask (saturation, cosmic rays)")
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="timeouts, retries, concurrency, rate limit"
    )


class ZtfConfig(BaseModel):
    """The ZTF light-curve download and its reduction (``surveys.ztf`` in darkroom.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    base_url: str = Field(
        "https://irsa.ipac.caltech.edu",
        description="IRSA root; a mirror or a local test server can stand in",
        json_schema_extra={"critical": False},
    )
    collection: str = Field("ztf_dr23", description="ZTF data release (COLLECTION)")
    bands: list[str] = Field(
        default_factory=lambda: ["g", "r", "i"], description="filters asked for (BANDNAME)"
    )
    bad_catflags_mask: int = Field(
        0, ge=0, le=65535, description="catflags bits the server drops (BAD_CATFLAGS_MASK); 0 keeps all"
    )
    radius_arcsec: float = Field(2.0, gt=0, le=600, description="cone radius around the target [arcsec]")
    epoch_jyear: float = Field(
        2020.5,
        ge=2017,
        le=2040,
        description="epoch the target is moved to by proper motion (mid-survey) [yr]",
    )
    half_span_yr: float = Field(
        3.0,
        ge=0,
        le=20,
        description="the radius grows by proper motion x this, to hold the whole survey [yr]",
    )
    dec_min_deg: float = Field(-31.0, ge=-90, le=90, description="targets south of this are skipped [deg]")
    mag_band: str | None = Field(
        "G",
        description="catalogue band for the magnitude limit and consistency cut (None: no magnitude rules)",
    )
    mag_limit: float = Field(21.5, description="targets fainter than this (mag_band) are skipped [mag]")
    max_distance_arcsec: float = Field(
        1.5, gt=0, le=600, description="objects whose median position is farther are left out [arcsec]"
    )
    max_mag_offset: float = Field(
        1.5, gt=0, description="objects whose median mag differs more from the catalogue's are left out [mag]"
    )
    season_gap_days: float = Field(
        40.0, gt=0, description="a longer gap between epochs starts a new season [day]"
    )
    flag_mask: int = Field(65535, ge=0, le=65535, description="catflags bits that mark an epoch flagged")
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="timeouts, retries, concurrency, rate limit"
    )


class CutoutConfig(BaseModel):
    """Cutout cubes of the targets (``surveys.cutouts`` in darkroom.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    size: int = Field(32, ge=4, le=1024, description="side of each stamp [pixel]")
    bands: str = Field("ugriz", min_length=1, description="bands, one letter each, in cube order")
    out_dir: str = Field(
        "products/cutouts",
        description="where cubes, the HDF5 set and the index go (relative: to the repository)",
        json_schema_extra={"critical": False},
    )
    workers: int = Field(
        2, ge=1, le=64, description="threads cutting cubes", json_schema_extra={"critical": False}
    )


class SurveysConfig(BaseModel):
    """Survey downloads and products of a repository (``surveys`` in darkroom.yaml)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    cache_dir: str = Field(
        "~/.cache/darkroom/surveys",
        description="raw archive replies, shared between repositories (relative: to the repository)",
        json_schema_extra={"critical": False},
    )
    fsync: bool = Field(
        True,
        description="fsync every reply and light-curve file (False: faster for many small files; a kill -9 "
        "still leaves no half-written file, a power cut may lose the newest ones)",
        json_schema_extra={"critical": False},
    )
    run: list[Literal["ztf", "sdss", "cutouts"]] = Field(
        default_factory=list, description="survey steps 'darkroom run' carries out (a survey repository)"
    )
    ztf: ZtfConfig = Field(default_factory=ZtfConfig)
    sdss: SdssConfig = Field(default_factory=SdssConfig)
    cutouts: CutoutConfig = Field(default_factory=CutoutConfig)
