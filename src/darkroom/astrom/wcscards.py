"""A celestial WCS as FITS header cards: read from a header, recorded as a dict of cards, written into
a calibrated image's header (the frame's own WCS kept aside in a ``GIVENWCS`` extension).

Cards follow FITS: CRPIX is 1-based; use the WCS with ``origin=0`` on darkroom's 0-based pixels.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, WCSHDO_P14, FITSFixedWarning, WCSHDO_all

from darkroom.astrom.transform import AffineTransform
from darkroom.astrom.wcsfit import pixel_scale_arcsec
from darkroom.io.fitsheader import (
    CardImages,
    empty_hdu_bytes,
    empty_hdu_images,
    hdu_keyword,
    plain_card,
    value_field,
)

if TYPE_CHECKING:
    from darkroom.astrom.solve import SolveResult

__all__ = [
    "GIVEN_WCS_EXTNAME",
    "WCS_KEY",
    "SolutionCards",
    "given_wcs_bytes",
    "given_wcs_header",
    "given_wcs_images",
    "header_as_given",
    "header_wcs",
    "header_wcs_images",
    "replace_wcs_cards",
    "replace_wcs_images",
    "solution_cards",
    "solution_header",
    "solution_products",
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
_GIVEN_COMMENT = "the WCS the calibrated frame came with"


def header_wcs(header: fits.Header) -> WCS | None:
    """The celestial WCS of a header, or None when it has none or it is unusable."""
    if "CTYPE1" not in header and "CTYPE2" not in header:
        return None
    # only the cards a celestial WCS reads: astropy parses and "fixes" every card it is given
    # (DATE-OBS, OBSGEO-*, HISTORY): a 215-card ARCSAT header took 9 ms, its WCS cards 1.4 ms,
    # for the same transformation to the last bit
    return _wcs_of(fits.Header([c for c in header.cards if c.keyword and _WCS_READ_KEY.match(c.keyword)]))


def header_wcs_images(cards: CardImages) -> WCS | None:
    """:func:`header_wcs` of a header's card images (:meth:`CardImages.parse`: plain cards, whose
    keyword is their first 8 characters): only the cards the WCS reads are parsed."""
    keywords = cards.keywords()
    if "CTYPE1" not in keywords and "CTYPE2" not in keywords:
        return None
    return _wcs_of(
        fits.Header.fromstring("".join(c for c in cards.cards if _WCS_READ_KEY.match(c[:8].rstrip())))
    )


def _wcs_of(cards: fits.Header) -> WCS | None:
    """The celestial WCS of a header of WCS cards, or None when it has none or it is unusable."""
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


def solution_cards(solution: fits.Header) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``wcs_cards(solution)`` and the cards :func:`replace_wcs_images` sets from ``solution``, as
    (keyword, card image) pairs, reading each card's value once."""
    cards: dict[str, Any] = {}
    images: list[tuple[str, str]] = []
    for card in solution.cards:
        key = card.keyword
        value = card.value
        if key and key not in ("COMMENT", "HISTORY", ""):
            # as Header.items gives it (an undefined value as None)
            cards[key] = None if value == fits.card.UNDEFINED else value
        if (key and WCS_KEY.match(key)) or key == "ASTQUAL":
            images.append((key, _card_image(key, value, card.comment)))
    return cards, images


def transform_dict(t: AffineTransform | None) -> dict[str, Any] | None:
    """An affine transform as JSON: ``matrix`` (2x2) and ``offset`` [pixel]."""
    if t is None:
        return None
    return {"matrix": np.asarray(t.matrix, float).tolist(), "offset": np.asarray(t.offset, float).tolist()}


def given_wcs_header(header: fits.Header) -> fits.Header:
    """The WCS cards of a frame's header as a ``GIVENWCS`` extension header (kept aside before a
    solution replaces them, so another solution starts from what the frame was given)."""
    given = fits.Header([c for c in header.cards if c.keyword and WCS_KEY.match(c.keyword)])
    given["EXTNAME"] = (GIVEN_WCS_EXTNAME, _GIVEN_COMMENT)
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
    given.set([fits.Card("EXTNAME", GIVEN_WCS_EXTNAME, _GIVEN_COMMENT)])
    return given.header()


def given_wcs_bytes(cards: CardImages) -> bytes:
    """The ``GIVENWCS`` extension of :func:`given_wcs_images` as the bytes astropy writes for it
    (``fits.ImageHDU(header=...)``: each card as astropy verifies it, remembered by image)."""
    kept = [c for c in cards.cards if WCS_KEY.match(c[:8].rstrip())]
    given = CardImages(kept)
    given.set_images([("EXTNAME", _card_image("EXTNAME", GIVEN_WCS_EXTNAME, _GIVEN_COMMENT))])
    if any(hdu_keyword(k) for k in given.keywords()):
        return empty_hdu_bytes(given.header(), primary=False)
    return empty_hdu_images([_written(image) for image in given.cards], primary=False)


#: a card image read by astropy -> the image its header writes (verified, fixed if need be)
_WRITTEN: dict[str, str] = {}


def _written(image: str) -> str:
    """``str(fits.Card.fromstring(image))``, remembered."""
    written = _WRITTEN.get(image)
    if written is None:
        if len(_WRITTEN) > 4096:
            _WRITTEN.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            written = _WRITTEN[image] = str(fits.Card.fromstring(image))
    return written


#: card images of (keyword, value type, value repr, comment): a field's frames share most cards
_CARD_IMAGES: dict[tuple[str, type, str, str], str] = {}


def _card_image(keyword: str, value: Any, comment: str) -> str:
    """``fits.Card(keyword, value, comment).image``, remembered (~20 us a card); a number's made
    by :func:`_number_image` (its value differs from frame to frame)."""
    key = (keyword, type(value), repr(value), comment)
    image = _CARD_IMAGES.get(key)
    if image is None:
        image = _number_image(keyword, value, comment)
        if image is not None:
            return image
        if len(_CARD_IMAGES) > 4096:
            _CARD_IMAGES.clear()
        image = _CARD_IMAGES[key] = fits.Card(keyword, value, comment).image
    return image


#: a standard keyword astropy writes as it is (upper case, at most 8 characters), but those whose
#: cards astropy reads and writes its own way (commentary, long strings, HIERARCH, END)
_PLAIN_KEYWORD = re.compile(r"(?!(?:COMMENT|HISTORY|CONTINUE|HIERARCH|END) *$)[A-Z0-9_-]{1,8}")
#: a number as FITS writes it in a fixed-format card (a Python int or float reads it as astropy does)
_FITS_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:E[+-]?\d+)?")


def _number_image(keyword: str, value: Any, comment: str) -> str | None:
    """``fits.Card(keyword, value, comment).image`` of a finite Python int or float and a plain
    keyword, made as astropy makes it (the keyword in 8 characters, ``= ``, astropy's 20-character
    value field, `` / `` and the comment when there is one, blank-padded to 80), without making
    the card (~30 -> ~3 us); None for anything else, or a card that would not fit (astropy
    truncates it with a warning). test_astrom_fast_paths compares it with astropy's cards."""
    if type(value) not in (int, float) or not math.isfinite(value) or not _PLAIN_KEYWORD.fullmatch(keyword):
        return None
    image = f"{keyword:8}= {value_field(value)}" + (f" / {comment}" if comment else "")
    return f"{image:80}" if len(image) <= 80 and comment.isascii() and comment.isprintable() else None


@dataclass(frozen=True)
class SolutionCards:
    """What a solution's header gives (:func:`solution_products`)."""

    cards: dict[str, Any]  #: :func:`wcs_cards` of the header
    images: list[tuple[str, str]]  #: the cards :func:`replace_wcs_images` sets, (keyword, image)
    file_bytes: bytes  #: the header-only FITS file: ``fits.PrimaryHDU(header=header).writeto``'s bytes


def solution_header(result: SolveResult, quality: str) -> fits.Header:
    """``result.to_header()`` with ``ASTQUAL`` set to ``quality``."""
    header = result.to_header()
    header["ASTQUAL"] = quality
    return header


def solution_products(result: SolveResult, quality: str) -> SolutionCards:
    """:class:`SolutionCards` of :func:`solution_header` (a solution with a WCS).

    A TAN solution's header is read as its card images (wcslib's text, each image parsed and
    formatted by astropy once per process): the same values and bytes as astropy's header gives,
    ~0.1 ms instead of ~1. Other headers (SIP, cards this does not place) go through astropy.
    """
    fast = _tan_solution_products(result, quality)
    if fast is not None:
        return fast
    header = solution_header(result, quality)
    cards, images = solution_cards(header)
    return SolutionCards(cards, images, empty_hdu_bytes(header, primary=True))


#: a wcslib card image -> (keyword, value, the image astropy writes, the image astropy sets again)
_PARSED: dict[str, tuple[str, Any, str, str]] = {}


def _parsed(image: str) -> tuple[str, Any, str, str]:
    """What astropy makes of one card image of a header it read (a function of the image alone)."""
    got = _PARSED.get(image)
    if got is None:
        got = _parsed_number(image)
        if got is not None:
            return got
        if len(_PARSED) > 4096:
            _PARSED.clear()
        card = fits.Card.fromstring(image)
        key, value, comment = card.keyword, card.value, card.comment
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            written = str(card)  # verified as Header.tostring verifies it
        got = _PARSED[image] = (key, value, written, _card_image(key, value, comment))
    return got


def _parsed_number(image: str) -> tuple[str, Any, str, str] | None:
    """:func:`_parsed` of a number card as wcslib writes one (a plain keyword, ``= `` in columns
    9-10, the number right-justified up to column 30, `` / `` and a comment): the value as astropy
    reads it (an int when the text is digits only, else a float), the comment without trailing
    blanks, the image itself as it is written (a valid card is written as read), and the image
    astropy makes for the key, value and comment (:func:`_number_image`). The numbers of a frame's
    solution differ from frame to frame, so they are not remembered: ~80 -> ~8 us a card. None
    for any other card (astropy reads it)."""
    key = image[:8].rstrip()
    text = image[10:30].strip()
    comment = image[33:].rstrip()
    if (
        len(image) != 80
        or image[8:10] != "= "
        or image[30:33] != " / "
        or image[:8] != f"{key:8}"
        or not _PLAIN_KEYWORD.fullmatch(key)
        or not _FITS_NUMBER.fullmatch(text)
        or not comment
        or comment[0] == " "
        or not (image.isascii() and image.isprintable())
    ):
        return None
    value: int | float = int(text) if text.lstrip("+-").isdigit() else float(text)
    image_set = _number_image(key, value, comment)
    return None if image_set is None else (key, value, image, image_set)


def _tan_solution_products(result: SolveResult, quality: str) -> SolutionCards | None:
    """:func:`solution_products` of a solution without SIP from wcslib's header text, as
    ``WCS.to_header(relax=True)`` reads it (blank and COMMENT cards dropped), with the figure
    cards after it; None when the text has a card this does not place."""
    wcs = result.wcs
    if wcs is None or wcs.sip is not None:
        return None
    text = wcs.wcs.to_header(WCSHDO_all | WCSHDO_P14)
    if len(text) % 80:
        return None
    parsed = []
    for i in range(0, len(text), 80):
        image = text[i : i + 80]
        key = image[:8].rstrip()
        if key in ("", "COMMENT"):  # WCS.to_header removes these
            continue
        if not plain_card(image) or image[8:10] != "= " or hdu_keyword(key):
            return None
        parsed.append(_parsed(image))
    figures = result.figure_cards()
    figures[-1] = ("ASTQUAL", quality, figures[-1][2])  # header["ASTQUAL"] = quality
    keys = [p[0] for p in parsed] + [f[0] for f in figures]
    if len(set(keys)) != len(keys):
        return None
    cards: dict[str, Any] = {}
    images: list[tuple[str, str]] = []
    written: list[str] = []
    for key, value, image, image_set in parsed:
        cards[key] = None if value == fits.card.UNDEFINED else value
        written.append(image)
        if WCS_KEY.match(key):
            images.append((key, image_set))
    for key, value, comment in figures:
        image = _card_image(key, value, comment)
        if len(image) != 80:
            return None
        cards[key] = value
        written.append(image)
        if key == "ASTQUAL":
            images.append((key, image))
    return SolutionCards(cards, images, empty_hdu_images(written, primary=True))


def replace_wcs_images(
    cards: CardImages, solution: fits.Header | Sequence[tuple[str, str]], *, history: str | None
) -> None:
    """:func:`replace_wcs_cards` on a header's card images: the same bytes as astropy writes
    after it, without parsing the header's other cards (a 200-card calibrated header: ~0.3 ms
    instead of ~6). ``solution`` may be given as :func:`solution_cards`' (keyword, image) pairs."""
    cards.remove({k for k in cards.keywords() if WCS_KEY.match(k)})
    cards.set_images(solution_cards(solution)[1] if isinstance(solution, fits.Header) else solution)
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
