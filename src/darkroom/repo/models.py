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
    "Base",
    "Calib",
    "CalibInput",
    "Exposure",
    "Image",
    "Measurement",
    "Provenance",
    "Source",
    "Task",
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
    """A calibrated exposure (SCI/MASK/VAR file), its quality and solutions."""

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
    quality: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    quality_flag: Mapped[str | None] = mapped_column(String(16), nullable=True)  # good | poor
    astrom: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    astrom_flag: Mapped[str | None] = mapped_column(String(16), nullable=True)  # good | marginal | failed
    photcal: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    catalog_path: Mapped[str | None] = mapped_column(Text, nullable=True)
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
