"""One configuration type for every kind of reference catalog, and one loader."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.catalogs.local import read_catalog_file, read_catalog_shards
from darkroom.catalogs.online import OnlineCatalogConfig, query_catalog
from darkroom.catalogs.reference import CatalogColumns

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "FileCatalogSource",
    "OnlineCatalogSource",
    "ReferenceCatalogSource",
    "ShardCatalogSource",
    "load_reference_catalog",
    "resolve_catalog_source",
]


class FileCatalogSource(BaseModel):
    """A reference catalog in one local file (FITS, ECSV, CSV, Parquet)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["file"] = "file"
    path: Path = Field(description="catalog file")
    columns: CatalogColumns = Field(default_factory=CatalogColumns, description="column mapping")


class ShardCatalogSource(BaseModel):
    """A reference catalog split over the files of a folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["shards"] = "shards"
    folder: Path = Field(description="folder of catalog files")
    pattern: str = Field("*", description="glob pattern of the shard files")
    columns: CatalogColumns = Field(default_factory=CatalogColumns, description="column mapping")


class OnlineCatalogSource(BaseModel):
    """A reference catalog queried from an online service (cached on disk)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["online"] = "online"
    online: OnlineCatalogConfig = Field(description="service, catalog and columns")


ReferenceCatalogSource = Annotated[
    FileCatalogSource | ShardCatalogSource | OnlineCatalogSource, Field(discriminator="kind")
]


def resolve_catalog_source(source, root: Path | str | None):
    """The one place a configured reference catalogue is tied to a repository: a file or folder of
    shards given relative to the repository ``root`` becomes absolute; anything else is returned
    as it is (None stays None)."""
    if root is None or source is None:
        return source
    root = Path(root)
    if isinstance(source, FileCatalogSource) and not Path(source.path).is_absolute():
        return source.model_copy(update={"path": root / source.path})
    if isinstance(source, ShardCatalogSource) and not Path(source.folder).is_absolute():
        return source.model_copy(update={"folder": root / source.folder})
    return source


def load_reference_catalog(
    source: FileCatalogSource | ShardCatalogSource | OnlineCatalogSource,
    *,
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    epoch_jyear: float | None = None,
    cache_dir: str | Path | None = None,
) -> Table:
    """Reference table of the stars within ``radius_deg`` of (ra_deg, dec_deg) [deg].

    Positions are propagated to ``epoch_jyear`` [Julian year] when given. ``cache_dir``
    is used by online sources only.
    """
    if isinstance(source, FileCatalogSource):
        return read_catalog_file(
            source.path,
            columns=source.columns,
            ra_deg=ra_deg,
            dec_deg=dec_deg,
            radius_deg=radius_deg,
            epoch_jyear=epoch_jyear,
        )
    if isinstance(source, ShardCatalogSource):
        return read_catalog_shards(
            source.folder,
            columns=source.columns,
            ra_deg=ra_deg,
            dec_deg=dec_deg,
            radius_deg=radius_deg,
            epoch_jyear=epoch_jyear,
            pattern=source.pattern,
        )
    return query_catalog(
        source.online,
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        radius_deg=radius_deg,
        epoch_jyear=epoch_jyear,
        cache_dir=cache_dir,
    )
