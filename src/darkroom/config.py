"""Repository configuration: one ``darkroom.yaml`` with a section per stage.

Each section is a pydantic model that lives next to the code that uses it; this
module only assembles them, reads and writes the YAML (safe loader, no eval), and
applies ``--set section.key=value`` overrides from the command line.

Every field of a stage's section is *critical* (it enters the stage's provenance id,
:func:`darkroom.provenance.provenance_id`) unless it is marked
``json_schema_extra={"critical": False}``: worker counts, progress bars, where the
registry lives.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from darkroom.analysis.finders import AnalysisConfig
from darkroom.astrom.settings import SolveSettings
from darkroom.calib.settings import CalibSettings
from darkroom.detect.settings import ExtractSettings, QualityLimits
from darkroom.errors import ConfigError
from darkroom.imaging.settings import CoaddSettings
from darkroom.phot.settings import MeasureSettings
from darkroom.provenance import critical_params
from darkroom.surveys.settings import SurveysConfig
from darkroom.timeseries.settings import (
    AssociateSettings,
    LightCurveSettings,
    NameResolverConfig,
    TargetConfig,
)

__all__ = [
    "CONFIG_NAME",
    "AstrometrySettings",
    "DarkroomConfig",
    "IngestConfig",
    "PhotometrySettings",
    "RegistryConfig",
    "RunConfig",
    "apply_overrides",
    "critical_params",
    "load_config",
    "save_config",
]

CONFIG_NAME = "darkroom.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RegistryConfig(_Section):
    """Where the registry lives (never part of a product's provenance)."""

    url: str = Field(
        "sqlite:///registry.db",
        description="SQLAlchemy URL; a relative sqlite path is relative to the repository folder",
        json_schema_extra={"critical": False},
    )
    echo: bool = Field(
        False, description="log every SQL statement (debugging)", json_schema_extra={"critical": False}
    )


class IngestConfig(_Section):
    """How raw files are found and registered."""

    extensions: list[str] = Field(
        default_factory=lambda: [".fits", ".fit", ".fts", ".fz"],
        description="FITS file endings (case-insensitive); each may also end in .gz or .bz2",
    )
    profile_dirs: list[str] = Field(
        default_factory=list,
        description="folders of user instrument profiles (YAML); they win over the built-in ones",
    )
    batch_size: int = Field(200, ge=1, description="rows committed per registry transaction")
    follow_symlinks: bool = Field(False, description="descend into symlinked folders")
    max_image_mb: float = Field(
        256.0,
        gt=0,
        description="largest image accepted [MiB, as stored, after expanding gzip/bzip2/fpack]; "
        "larger files (and decompression bombs) are quarantined",
    )
    max_hdus: int = Field(64, ge=1, description="most HDUs a raw file may have")
    read_timeout_s: float = Field(60.0, gt=0, description="time budget for reading one file [s]")
    keep_in_memory_mb: float = Field(
        512.0,
        ge=0,
        description="serial 'darkroom run --ingest': raw frames ingest read, kept in memory for the "
        "masters and calibrate (each file decompressed and parsed once) [MiB; at most a quarter of "
        "the memory available; 0: read them again]",
        json_schema_extra={"critical": False},
    )


class AstrometrySettings(BaseModel):
    """The ``astrometry`` section of darkroom.yaml: one sub-section per stage, so that a change to
    one (e.g. a quality limit) makes new products of that stage and those after it only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extract: ExtractSettings = Field(default_factory=ExtractSettings, description="the extract stage")
    limits: QualityLimits = Field(
        default_factory=QualityLimits, description="the quality stage: limits that flag poor frames"
    )
    solve: SolveSettings = Field(default_factory=SolveSettings, description="the astrometry stage")


class PhotometrySettings(BaseModel):
    """The ``photometry`` section of darkroom.yaml: one sub-section per stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    associate: AssociateSettings = Field(default_factory=AssociateSettings, description="the associate stage")
    measure: MeasureSettings = Field(default_factory=MeasureSettings, description="the photometry stage")
    lightcurves: LightCurveSettings = Field(
        default_factory=LightCurveSettings, description="the lightcurves stage and darkroom lightcurve"
    )


class RunConfig(_Section):
    """What ``darkroom run`` runs (never part of a product's provenance)."""

    families: list[str] | None = Field(
        None,
        description="stage families to run: night (raw frames to light curves), survey, analysis, "
        "images; None: every family",
        json_schema_extra={"critical": False},
    )


class DarkroomConfig(_Section):
    """Every parameter of a repository, defaults filled in."""

    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    calib: CalibSettings = Field(default_factory=CalibSettings)
    astrometry: AstrometrySettings = Field(default_factory=AstrometrySettings)
    photometry: PhotometrySettings = Field(default_factory=PhotometrySettings)
    targets: list[TargetConfig] = Field(
        default_factory=list,
        description="objects whose light curves the lightcurves stage writes (empty: one per observed "
        "OBJECT, see names)",
    )
    names: NameResolverConfig = Field(
        default_factory=NameResolverConfig,
        description="automatic targets: OBJECT names resolved to coordinates (Sesame, cached)",
    )
    surveys: SurveysConfig = Field(
        default_factory=SurveysConfig, description="survey data (ZTF, SDSS) for the registered targets"
    )
    coadd: CoaddSettings = Field(
        default_factory=CoaddSettings, description="coadds per field, filter and night (optional stage)"
    )
    analysis: AnalysisConfig = Field(
        default_factory=AnalysisConfig,
        description="time-domain analysis: quality checks, finders, injections",
    )


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a config dictionary (returns a copy).

    Values are parsed as YAML scalars or flow collections (``3``, ``true``, ``[1, 2]``,
    ``{a: 1}``), so types follow the model after validation.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r} names no key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"override {item!r}: value is not valid YAML ({exc.__class__.__name__})"
            ) from exc
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {key} is not a section")
        node[keys[-1]] = value
    return out


def _suggest(loc: list[str]) -> str:
    """A did-you-mean for an unknown key at ``loc`` (section path + key), or ""."""
    import difflib
    import typing

    model: Any = DarkroomConfig
    for part in loc[:-1]:
        if part.isdigit():
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        ann = fields[part].annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = args[0] if args else ann
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    prefix = ".".join(p for p in loc[:-1])
    if close:
        return f"; did you mean {prefix + '.' if prefix else ''}{close[0]}?"
    return f"; {prefix or 'the top level'} has: {', '.join(names)}" if names else ""


def _validate(
    data: dict[str, Any], source: str, overrides: list[str] | tuple[str, ...] = ()
) -> DarkroomConfig:
    try:
        return DarkroomConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        where = ".".join(loc)
        # Name the --set option that caused it, when one did, rather than the file.
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key == where or key.startswith(where + "."):
                source = f"--set {item}"
                break
        msg = "no such parameter" + _suggest(loc) if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {msg}{more}") from exc


def load_config(path: Path | str | None, overrides: list[str] | tuple[str, ...] = ()) -> DarkroomConfig:
    """Read a ``darkroom.yaml`` (or defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_bytes().decode("utf-8") if path.exists() else None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
            ) from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        try:
            loaded = yaml.safe_load(text) if text is not None else {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
        if loaded is None:
            # An empty file would silently mean "all defaults": a PostgreSQL repository would
            # be detached from its database and start a fresh SQLite registry.
            raise ConfigError(
                f"{path} is empty; restore it (every parameter, with registry.url) or delete it "
                "and run 'darkroom init' to write the defaults"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    return _validate(apply_overrides(data, overrides), source, overrides)


def save_config(config: DarkroomConfig, path: Path | str) -> None:
    """Write every parameter, defaults filled in, atomically."""
    from darkroom.io.atomic import atomic_write_text

    text = "# darkroom repository configuration: every parameter, defaults filled in.\n"
    text += yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    # A registry password makes the file a secret: readable by its owner only.
    atomic_write_text(Path(path), text, mode=0o600 if url_has_password(config.registry.url) else None)


def url_has_password(url: str) -> bool:
    """Does a SQLAlchemy URL carry a password (then darkroom.yaml is written 0600)?"""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return bool(make_url(url).password)
    except ArgumentError:
        return ":" in url.split("@", 1)[0].split("//", 1)[-1] if "@" in url else False
