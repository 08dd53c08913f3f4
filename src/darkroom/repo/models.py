"""Registry tables (SQLAlchemy 2 declarative models).

Times are naive ``datetime`` in UTC (``*_utc``) plus MJD floats for fast range
queries. Every product row names the file it describes (relative to the
repository root) and its sha256, and the provenance id of the stage run that made
it. The natural key of each table carries a unique constraint, so a repeated
insert is an error rather than a silent duplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Association",
    "AstromSolution",
    "Base",
    "Calib",
    "CalibInput",
    "Coadd",
    "CoaddInput",
    "Detection",
    "Download",
    "Exposure",
    "Image",
    "ImageQuality",
    "Injection",
    "Lightcurve",
    "Measurement",
    "PhotCal",
    "Properties",
    "Provenance",
    "Source",
    "SourceCatalog",
    "Target",
    "Task",
    "Transparency",
]

# Deterministic constraint names make Alembic migrations portable across backends.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Now, UTC, naive (the registry stores naive UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict] = {dict[str, Any]: JSON, list[Any]: JSON}


class Provenance(Base):
    """One configuration of one stage: the id that products carry."""

    __tablename__ = "provenance"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    code_version: Mapped[str] = mapped_column(String(32))
    upstream: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Exposure(Base):
    """One raw file, registered where it is, with its normalised metadata."""

    __tablename__ = "exposure"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), index=True, default="ok")  # ok | quarantined
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    ingested_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    profile: Mapped[str | None] = mapped_column(String(64), nullable=True)
    frame_type: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    instrument: Mapped[str | None] = mapped_column(String(128), nullable=True)
    telescope: Mapped[str | None] = mapped_column(String(128), nullable=True)
    object: Mapped[str | None] = mapped_column(String(128), nullable=True)
    filter: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exptime_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    binning_x: Mapped[int | None] = mapped_column(Integer, nullable=True)
    binning_y: Mapped[int | None] = mapped_column(Integer, nullable=True)
    naxis1: Mapped[int | None] = mapped_column(Integer, nullable=True)
    naxis2: Mapped[int | None] = mapped_column(Integer, nullable=True)
    ccd_temp_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    set_temp_c: Mapped[float | None] = mapped_column(Float, nullable=True)
    time_mid_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    mjd_mid: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    night: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True)
    ra_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    dec_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Calib(Base):
    """A master calibration frame: its group, validity window and inputs."""

    __tablename__ = "calib"
    __table_args__ = (UniqueConstraint("group_key", "night", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)  # bias | dark | flat | bpm | ptc
    group_key: Mapped[str] = mapped_column(String(256))
    night: Mapped[str | None] = mapped_column(String(10), nullable=True)
    instrument: Mapped[str | None] = mapped_column(String(128), nullable=True)
    filter: Mapped[str | None] = mapped_column(String(32), nullable=True)
    exptime_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    binning_x: Mapped[int | None] = mapped_column(Integer, nullable=True)
    binning_y: Mapped[int | None] = mapped_column(Integer, nullable=True)
    valid_from_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    valid_to_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)  # NULL: open-ended
    mjd_mid: Mapped[float | None] = mapped_column(Float, nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_inputs: Mapped[int] = mapped_column(Integer, default=0)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flag: Mapped[str | None] = mapped_column(Text, nullable=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"))
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    inputs: Mapped[list[CalibInput]] = relationship(back_populates="calib", cascade="all, delete-orphan")


class CalibInput(Base):
    """Which raw exposures went into which master."""

    __tablename__ = "calib_input"
    calib_id: Mapped[int] = mapped_column(ForeignKey("calib.id", ondelete="CASCADE"), primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposure.id"), primary_key=True)
    calib: Mapped[Calib] = relationship(back_populates="inputs")


class Image(Base):
    """A calibrated exposure (SCI/MASK/VAR file) and what calibration made of it."""

    __tablename__ = "image"
    __table_args__ = (UniqueConstraint("exposure_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    exposure_id: Mapped[int] = mapped_column(ForeignKey("exposure.id"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    filter: Mapped[str | None] = mapped_column(String(32), nullable=True)
    time_mid_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    mjd_mid: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    night: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True)
    field: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    # What calibration made: gain, read noise, saturation, masters used, steps, counts.
    # Every later product has its own table keyed by (image, provenance).
    calib: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Source(Base):
    """An astronomical object seen in one or more images of a field."""

    __tablename__ = "source"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    field: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    ra_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    dec_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    x_ref: Mapped[float | None] = mapped_column(Float, nullable=True)  # 0-based, field reference frame
    y_ref: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_epochs: Mapped[int] = mapped_column(Integer, default=0)
    mean_mag: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # filter -> mean magnitude
    __table_args__ = (Index("ix_source_radec", "dec_deg", "ra_deg"),)


class Measurement(Base):
    """One source measured in one image (bulk rows; indexed by source and image)."""

    __tablename__ = "measurement"
    __table_args__ = (UniqueConstraint("source_id", "image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No index of its own: the unique (source_id, image_id, provenance_id) constraint's
    # index serves light-curve queries, and one index fewer speeds bulk inserts ~35%.
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id"))
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), index=True)
    provenance_id: Mapped[str] = mapped_column(String(32))
    x: Mapped[float] = mapped_column(Float)  # 0-based pixel in the image
    y: Mapped[float] = mapped_column(Float)
    ra_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    dec_deg: Mapped[float | None] = mapped_column(Float, nullable=True)
    flux: Mapped[float | None] = mapped_column(Float, nullable=True)  # adu, best aperture
    flux_err: Mapped[float | None] = mapped_column(Float, nullable=True)
    mag: Mapped[float | None] = mapped_column(Float, nullable=True)
    mag_err: Mapped[float | None] = mapped_column(Float, nullable=True)
    flags: Mapped[int] = mapped_column(Integer, default=0)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    mjd_mid: Mapped[float | None] = mapped_column(Float, nullable=True)


class Task(Base):
    """One unit of work of one stage: pending, running, done or failed (with the reason)."""

    __tablename__ = "task"
    __table_args__ = (UniqueConstraint("stage", "key", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(64), index=True)
    key: Mapped[str] = mapped_column(String(256))
    provenance_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128), nullable=True)
    started_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_utc: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


# --- one row per product, keyed by (image, provenance) -------------------------------
# A product of one provenance never overwrites another's: changing a critical parameter
# adds rows beside the old ones, and forgetting a provenance is a DELETE by provenance.


class ImageQuality(Base):
    """Image-quality figures of one calibrated image under one quality provenance."""

    __tablename__ = "image_quality"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    fwhm_pix: Mapped[float | None] = mapped_column(Float, nullable=True)
    ellipticity: Mapped[float | None] = mapped_column(Float, nullable=True)
    sky_adu: Mapped[float | None] = mapped_column(Float, nullable=True)
    sky_rms_adu: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_sources: Mapped[int | None] = mapped_column(Integer, nullable=True)
    flag: Mapped[str | None] = mapped_column(String(16), nullable=True)  # good | poor
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AstromSolution(Base):
    """The astrometric solution of one image under one astrometry provenance."""

    __tablename__ = "astrom_solution"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    method: Mapped[str | None] = mapped_column(
        String(32), nullable=True
    )  # header | hinted | relative | blind ...
    wcs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # FITS WCS cards
    n_matches: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rms_arcsec: Mapped[float | None] = mapped_column(Float, nullable=True)
    flag: Mapped[str | None] = mapped_column(String(16), nullable=True)  # good | marginal | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SourceCatalog(Base):
    """The per-image source catalogue file (Parquet) of one extract provenance."""

    __tablename__ = "source_catalog"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_sources: Mapped[int | None] = mapped_column(Integer, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PhotCal(Base):
    """Photometric calibration of one image (one band) under one photometry provenance."""

    __tablename__ = "photcal"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    band: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ref_column: Mapped[str | None] = mapped_column(String(64), nullable=True)  # catalogue column used
    zp: Mapped[float | None] = mapped_column(Float, nullable=True)  # mag for 1 unit/s (instrumental if NULL)
    zp_err: Mapped[float | None] = mapped_column(Float, nullable=True)
    colour_term: Mapped[float | None] = mapped_column(Float, nullable=True)
    mag_limit: Mapped[float | None] = mapped_column(Float, nullable=True)  # 5 sigma
    n_stars: Mapped[int | None] = mapped_column(Integer, nullable=True)
    flag: Mapped[str | None] = mapped_column(
        String(32), nullable=True
    )  # calibrated | instrumental | implausible
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Transparency(Base):
    """Relative transparency of one image under one light-curve provenance."""

    __tablename__ = "transparency"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # flux ratio to the clear-sky level
    flag: Mapped[str | None] = mapped_column(String(16), nullable=True)  # clear | poor
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Association(Base):
    """How one image's sources were tied to the field's sources under one associate provenance."""

    __tablename__ = "association"
    __table_args__ = (UniqueConstraint("image_id", "provenance_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id", ondelete="CASCADE"), index=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    field: Mapped[str | None] = mapped_column(String(128), nullable=True)
    segment: Mapped[int | None] = mapped_column(Integer, nullable=True)  # pointing segment in the field
    n_matched: Mapped[int | None] = mapped_column(Integer, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict
    )  # e.g. transform to the reference frame
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- targets, survey data, light curves and analysis -----------------------------------


class Target(Base):
    """An object we were asked to follow, from a catalogue (or named in darkroom.yaml)."""

    __tablename__ = "target"
    __table_args__ = (UniqueConstraint("catalog", "name"), Index("ix_target_radec", "dec_deg", "ra_deg"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    catalog: Mapped[str] = mapped_column(String(128))  # where it came from (file stem, 'wd', 'config')
    name: Mapped[str] = mapped_column(String(128))
    ra_deg: Mapped[float] = mapped_column(Float)  # ICRS, at epoch
    dec_deg: Mapped[float] = mapped_column(Float)
    epoch_jyear: Mapped[float | None] = mapped_column(Float, nullable=True)  # Julian year of ra/dec
    pmra_masyr: Mapped[float | None] = mapped_column(Float, nullable=True)  # mu_alpha* (cos dec included)
    pmdec_masyr: Mapped[float | None] = mapped_column(Float, nullable=True)
    parallax_mas: Mapped[float | None] = mapped_column(Float, nullable=True)
    mags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # band -> magnitude
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Download(Base):
    """One request to a survey archive for one target: done (raw reply kept), empty or failed."""

    __tablename__ = "download"
    __table_args__ = (UniqueConstraint("survey", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey: Mapped[str] = mapped_column(String(32), index=True)  # ztf | sdss | ...
    key: Mapped[str] = mapped_column(String(256))  # what was asked (target and query parameters)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("target.id"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # done | empty | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)  # raw reply, byte for byte
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    n_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fetched_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Lightcurve(Base):
    """One object, one band, one season or night: from a survey or our own photometry.

    The points live in the file (Parquet/ECSV; time as MJD in the scale named in ``time_scale``);
    survey light curves need no Image row.
    """

    __tablename__ = "lightcurve"
    __table_args__ = (UniqueConstraint("provenance_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    key: Mapped[str] = mapped_column(String(256))  # survey:object:band:season, unique per provenance
    target_id: Mapped[int | None] = mapped_column(ForeignKey("target.id"), nullable=True, index=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("source.id"), nullable=True, index=True)
    survey: Mapped[str] = mapped_column(String(32))  # darkroom | ztf | import ...
    object_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the survey's own id
    band: Mapped[str | None] = mapped_column(String(32), nullable=True)
    season: Mapped[str | None] = mapped_column(String(32), nullable=True)  # season index or night
    time_scale: Mapped[str] = mapped_column(String(16), default="utc")  # of the file's mjd column
    mjd_start: Mapped[float | None] = mapped_column(Float, nullable=True)
    mjd_end: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_points: Mapped[int] = mapped_column(Integer, default=0)
    n_flagged: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Injection(Base):
    """An event injected into a light curve by the simulator (injection-recovery)."""

    __tablename__ = "injection"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    lightcurve_id: Mapped[int | None] = mapped_column(
        ForeignKey("lightcurve.id", ondelete="CASCADE"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(32))  # transit | flare | microlensing | sn ...
    mjd_peak: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_d: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_mag: Mapped[float | None] = mapped_column(Float, nullable=True)
    snr: Mapped[float | None] = mapped_column(Float, nullable=True)  # expected S/N of the injected event
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    recovered: Mapped[bool] = mapped_column(Boolean, default=False)
    detection_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Detection(Base):
    """An event found in a light curve or an image: real, or recovered from an injection."""

    __tablename__ = "detection"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    finder: Mapped[str] = mapped_column(String(64))
    lightcurve_id: Mapped[int | None] = mapped_column(
        ForeignKey("lightcurve.id", ondelete="CASCADE"), nullable=True, index=True
    )
    image_id: Mapped[int | None] = mapped_column(ForeignKey("image.id"), nullable=True, index=True)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("target.id"), nullable=True, index=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("source.id"), nullable=True)
    mjd: Mapped[float | None] = mapped_column(Float, nullable=True)  # time of peak
    duration_d: Mapped[float | None] = mapped_column(Float, nullable=True)
    peak_mag: Mapped[float | None] = mapped_column(Float, nullable=True)
    snr: Mapped[float | None] = mapped_column(Float, nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    injection_id: Mapped[int | None] = mapped_column(ForeignKey("injection.id"), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Properties(Base):
    """Summary statistics of one object under one analysis provenance."""

    __tablename__ = "properties"
    __table_args__ = (UniqueConstraint("provenance_id", "object_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    object_key: Mapped[str] = mapped_column(String(128))  # 'target:<id>' or 'source:<id>'
    target_id: Mapped[int | None] = mapped_column(ForeignKey("target.id"), nullable=True, index=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("source.id"), nullable=True, index=True)
    n_epochs: Mapped[int] = mapped_column(Integer, default=0)
    period_d: Mapped[float | None] = mapped_column(Float, nullable=True)
    period_fap: Mapped[float | None] = mapped_column(Float, nullable=True)
    best_snr: Mapped[float | None] = mapped_column(Float, nullable=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # per band mean/rms, chi2, scores
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Coadd(Base):
    """A coadded image of one field and filter (one night, or several)."""

    __tablename__ = "coadd"
    __table_args__ = (UniqueConstraint("provenance_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provenance_id: Mapped[str] = mapped_column(ForeignKey("provenance.id"), index=True)
    key: Mapped[str] = mapped_column(String(256))  # field:filter:night(s)
    field: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    filter: Mapped[str | None] = mapped_column(String(32), nullable=True)
    night: Mapped[str | None] = mapped_column(String(10), nullable=True)  # NULL: several nights
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n_inputs: Mapped[int] = mapped_column(Integer, default=0)
    exptime_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # total
    mjd_start: Mapped[float | None] = mapped_column(Float, nullable=True)
    mjd_end: Mapped[float | None] = mapped_column(Float, nullable=True)
    mjd_mid: Mapped[float | None] = mapped_column(Float, nullable=True)  # exposure-weighted
    wcs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_utc: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    inputs: Mapped[list[CoaddInput]] = relationship(back_populates="coadd", cascade="all, delete-orphan")


class CoaddInput(Base):
    """Which calibrated images went into which coadd, with their weight."""

    __tablename__ = "coadd_input"
    coadd_id: Mapped[int] = mapped_column(ForeignKey("coadd.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("image.id"), primary_key=True)
    weight: Mapped[float | None] = mapped_column(Float, nullable=True)
    coadd: Mapped[Coadd] = relationship(back_populates="inputs")
