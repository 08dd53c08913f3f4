"""darkroom.astrom: asterism matching, TAN-SIP fitting and astrometric solving.

Pixel positions are 0-based (sep); WCS objects are astropy's, used with origin 0.
See docs/pixel_conventions.md.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (importing a package's settings
# module must not import its algorithms)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": ["AlignConfig", "AsterismConfig", "SeriesConfig", "SolveConfig"],
        "asterism": ["AsterismMatch", "match_asterisms", "nearest_pairs"],
        "relative": [
            "Alignment",
            "FrameSources",
            "align_sources",
            "detector_fixed_sources",
            "mask_sources",
            "solve_frame_series",
            "wcs_from_alignment",
        ],
        "solve": [
            "PointingHint",
            "SolveResult",
            "check_header_wcs",
            "solve_frame",
            "solve_with_hint",
            "source_positions",
        ],
        "tangent": ["from_tangent_plane", "to_tangent_plane"],
        "transform": ["AffineTransform", "fit_affine", "fit_similarity"],
        "wcsfit": ["TanSipModel", "fit_tan_sip", "pixel_scale_arcsec", "sip_order_for"],
    },
)
