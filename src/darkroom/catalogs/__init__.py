"""darkroom.catalogs: reference catalogs from local files, sharded folders and online services.

Every reader returns a *reference table* (``ra_deg``, ``dec_deg``, ``mag``,
``pmra_masyr``, ``pmdec_masyr``, ``source_id`` first, brightest first); see
:mod:`darkroom.catalogs.reference`.
"""

from darkroom.catalogs.local import read_catalog_file, read_catalog_shards, read_table
from darkroom.catalogs.online import (
    OnlineCatalogConfig,
    apass_dr9,
    atlas_refcat2,
    gaia_dr3,
    gaia_dr3_vizier,
    query_catalog,
    ucac4,
)
from darkroom.catalogs.reference import (
    STANDARD_COLUMNS,
    CatalogColumns,
    angular_separation_deg,
    cone_select,
    propagate_proper_motion,
    standardize_catalog,
)
from darkroom.catalogs.sources import (
    FileCatalogSource,
    OnlineCatalogSource,
    ReferenceCatalogSource,
    ShardCatalogSource,
    load_reference_catalog,
    resolve_catalog_source,
)

__all__ = [
    "STANDARD_COLUMNS",
    "CatalogColumns",
    "FileCatalogSource",
    "OnlineCatalogConfig",
    "OnlineCatalogSource",
    "ReferenceCatalogSource",
    "ShardCatalogSource",
    "angular_separation_deg",
    "apass_dr9",
    "atlas_refcat2",
    "cone_select",
    "gaia_dr3",
    "gaia_dr3_vizier",
    "load_reference_catalog",
    "propagate_proper_motion",
    "query_catalog",
    "read_catalog_file",
    "read_catalog_shards",
    "read_table",
    "resolve_catalog_source",
    "standardize_catalog",
    "ucac4",
]
