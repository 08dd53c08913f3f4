"""A celestial WCS as FITS header cards: read from a header, recorded as a dict of cards, written into
a calibrated image's header (the frame's own WCS kept aside in a ``GIVENWCS`` extension).

Cards follow FITS: CRPIX is 1-based; use the WCS with ``origin=0`` on darkroom's 0-based pixels.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.astrom.transform import AffineTransform
from darkroom.astrom.wcsfit import pixel_scale_arcsec
from darkroom.io.fitsheader import CardImages

__all__ = [
    "GIVEN_WCS_EXTNAME",
    "WCS_KEY",
    "given_wcs_header",
    "given_wcs_images",
    "header_as_given",
    "header_wcs",
    "replace_wcs_cards",
    "replace_wcs_images",
    "transform_dict",
    "wcs_cards",
    "wcs_from_cards",
]

log = logging.getLogger(__name__)

#: keywords of a celestial WCS (TAN-SIP included)
WCS_KEY = re.compile(
    r"^(WCSAXES|CTYPE\d|CRVAL\d|CRPIX\d|CDELT\d|CUNIT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+|LONPOLE|LATPOLE|"
    r"RADESYSA?|EQUINOX|A_ORDER|B_ORDER|AP_ORDER|BP_ORDER|A_DMAX|B_DMAX|[AB]P?_\d+_\d+)$"
)

# what header_wcs hands astropy: the WCS cards, the image size, the old spellings it fixes and the
# time and place cards wcslib keeps with a WCS
_WCS_READ_KEY = re.compile(
    WCS_KEY.pattern.removesuffix(")$")
    + r"|NAXIS\d?|RADECSYS|EPOCH|DATE-(OBS|BEG|AVG|END)|MJD-(OBS|BEG|AVG|END)|DATEREF|MJDREF[IF]?|TIMESYS"
    + r"|OBSGEO-[XYZLBH]|TIMEUNIT|SPECSYS|SSYSOBS|VELOSYS|RESTFRQ|RESTWAV)$"
)

#: extension holding the WCS a calibrated frame came with, once a solution replaced it in SCI
GIVEN_WCS_EXTNAME = "GIVENWCS"


def header_wcs(header: fits.Header) -> WCS | None:
    """The celestial WCS of a header, or None when it has none or it is unusable."""
    if "CTYPE1" not in header and "CTYPE2" not in header:
        return None
    # only the cards a celestial WCS reads: astropy parses and "fixes" every card it is given
    # (DATE-OBS, OBSGEO-*, HISTORY): a 215-card ARCSAT header took 9 ms, its WCS cards 1.4 ms,
    # for the same transformation to the last bit
    cards = fits.Header([c for c in header.cards if c.keyword and _WCS_READ_KEY.match(c.keyword)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # RADECSYS, CDELT beside CD, ...
            wcs = WCS(cards, naxis=2)
    except Exception as exc:  # astropy raises many types for broken WCS cards
        log.info("header WCS ignored: %s", exc)
        return None
    if not wcs.has_celestial:
        return None
    scale = pixel_scale_arcsec(wcs)
    return wcs.celestial if np.isfinite(scale) and scale > 0 else None


def wcs_from_cards(cards: Mapping[str, Any] | None) -> WCS | None:
    """The WCS of recorded header cards (None for none)."""
    if not cards:
        return None
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(header, naxis=2)


def wcs_cards(header: fits.Header) -> dict[str, Any]:
    """A header's cards as a dict (no COMMENT/HISTORY/blank cards, no undefined values)."""
    return {
        key: value
        for key, value in header.items()
        if key and key not in ("COMMENT", "HISTORY", "") and not isinstance(value, fits.card.Undefined)
    }


def transform_dict(t: AffineTransform | None) -> dict[str, Any] | None:
    """An affine transform as JSON: ``matrix`` (2x2) and ``offset`` [pixel]."""
    if t is None:
        return None
    return {"matrix": np.asarray(t.matrix, float).tolist(), "offset": np.asarray(t.offset, float).tolist()}


def given_wcs_header(header: fits.Header) -> fits.Header:
    """The WCS cards of a frame's header as a ``GIVENWCS`` extension header (kept aside before a
    solution replaces them, so another solution starts from what the frame was given)."""
    given = fits.Header([c for c in header.cards if c.keyword and WCS_KEY.match(c.keyword)])
    given["EXTNAME"] = (GIVEN_WCS_EXTNAME, "the WCS the calibrated frame came with")
    return given


def replace_wcs_cards(header: fits.Header, solution: fits.Header, *, history: str | None) -> None:
    """Replace the WCS cards of ``header`` (in place) by those of ``solution`` and its ``ASTQUAL``;
    ``history`` (when given) is added as a HISTORY card."""
    for key in [k for k in header if WCS_KEY.match(k)]:
        header.remove(key, ignore_missing=True, remove_all=True)
    for card in solution.cards:
        if (card.keyword and WCS_KEY.match(card.keyword)) or card.keyword == "ASTQUAL":
            header[card.keyword] = (card.value, card.comment)
    if history is not None:
        header.add_history(history)


def given_wcs_images(cards: CardImages) -> fits.Header:
    """:func:`given_wcs_header` of a header's card images (the same bytes, no card parsed)."""
    kept = [c for c in cards.cards if WCS_KEY.match(c[:8].rstrip())]
    given = CardImages(kept)
    given.set([fits.Card("EXTNAME", GIVEN_WCS_EXTNAME, "the WCS the calibrated frame came with")])
    return given.header()


def replace_wcs_images(cards: CardImages, solution: fits.Header, *, history: str | None) -> None:
    """:func:`replace_wcs_cards` on a header's card images: the same bytes as astropy writes
    after it, without parsing the header's other cards (a 200-card calibrated header: ~0.3 ms
    instead of ~6)."""
    cards.remove({k for k in cards.keywords() if WCS_KEY.match(k)})
    cards.set(
        [
            fits.Card(card.keyword, card.value, card.comment)
            for card in solution.cards
            if (card.keyword and WCS_KEY.match(card.keyword)) or card.keyword == "ASTQUAL"
        ]
    )
    if history is not None:
        cards.add_history(history)


def header_as_given(sci: fits.Header, given: fits.Header | None) -> fits.Header:
    """The header a frame came with: ``sci`` (a calibrated image's SCI header) with its WCS cards
    replaced by those of its ``GIVENWCS`` extension ``given`` (None: ``sci`` itself, no solution
    was written into it). The other cards the WCS reads (DATE-OBS, MJD-OBS, TIMESYS, OBSGEO-*)
    stay SCI's, so a solution made again starts from the same WCS as the first one.

    Built in one pass over the cards (given's WCS cards last), not as a copy of SCI edited card
    by card: astropy's removals rescan the header (3.6 ms for a 200-card ARCSAT header with its
    WCS read, 1.4 ms so)."""
    if given is None:
        return sci
    taken = {
        c.keyword for c in given.cards if c.keyword and (WCS_KEY.match(c.keyword) or c.keyword == "ASTQUAL")
    }
    kept = [c for c in sci.cards if not (c.keyword and (WCS_KEY.match(c.keyword) or c.keyword in taken))]
    return fits.Header(kept + [c for c in given.cards if c.keyword in taken])
