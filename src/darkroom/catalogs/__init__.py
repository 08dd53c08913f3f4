"""darkroom.catalogs: reference catalogs from local files, sharded folders and online services.

Every reader returns a *reference table* (``ra_deg``, ``dec_deg``, ``mag``,
``pmra_masyr``, ``pmdec_masyr``, ``source_id`` first, brightest first); see
:mod:`darkroom.catalogs.reference`.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (the configuration's catalogue
# source models must not load astropy's units, tables and VOTable reader)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "local": ["read_catalog_file", "read_catalog_shards", "read_table"],
        "online": [
            "OnlineCatalogConfig",
            "apass_dr9",
            "atlas_refcat2",
            "gaia_dr3",
            "gaia_dr3_vizier",
            "query_catalog",
            "ucac4",
        ],
        "reference": [
            "STANDARD_COLUMNS",
            "CatalogColumns",
            "angular_separation_deg",
            "cone_select",
            "propagate_proper_motion",
            "standardize_catalog",
        ],
        "sources": [
            "FileCatalogSource",
            "OnlineCatalogSource",
            "ReferenceCatalogSource",
            "ShardCatalogSource",
            "load_reference_catalog",
            "resolve_catalog_source",
        ],
    },
)
