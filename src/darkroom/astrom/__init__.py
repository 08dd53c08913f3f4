"""darkroom.astrom: asterism matching, TAN-SIP fitting and astrometric solving.

Pixel positions are 0-based (sep); WCS objects are astropy's, used with origin 0.
See docs/pixel_conventions.md.
"""

from darkroom.astrom.asterism import AsterismConfig, AsterismMatch, match_asterisms, nearest_pairs
from darkroom.astrom.relative import (
    AlignConfig,
    Alignment,
    FrameSources,
    SeriesConfig,
    align_sources,
    detector_fixed_sources,
    mask_sources,
    solve_frame_series,
    wcs_from_alignment,
)
from darkroom.astrom.solve import (
    PointingHint,
    SolveConfig,
    SolveResult,
    check_header_wcs,
    solve_frame,
    solve_with_hint,
    source_positions,
)
from darkroom.astrom.tangent import from_tangent_plane, to_tangent_plane
from darkroom.astrom.transform import AffineTransform, fit_affine, fit_similarity
from darkroom.astrom.wcsfit import TanSipModel, fit_tan_sip, pixel_scale_arcsec, sip_order_for

__all__ = [
    "AffineTransform",
    "AlignConfig",
    "Alignment",
    "AsterismConfig",
    "AsterismMatch",
    "FrameSources",
    "PointingHint",
    "SeriesConfig",
    "SolveConfig",
    "SolveResult",
    "TanSipModel",
    "align_sources",
    "check_header_wcs",
    "detector_fixed_sources",
    "fit_affine",
    "fit_similarity",
    "fit_tan_sip",
    "from_tangent_plane",
    "mask_sources",
    "match_asterisms",
    "nearest_pairs",
    "pixel_scale_arcsec",
    "sip_order_for",
    "solve_frame",
    "solve_frame_series",
    "solve_with_hint",
    "source_positions",
    "to_tangent_plane",
    "wcs_from_alignment",
]
