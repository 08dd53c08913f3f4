"""Open a raw FITS file of any common packaging and find its image, defensively.

Handles plain FITS, tile-compressed ``.fz`` (the image is in a CompImageHDU), and
gzip/bzip2-compressed files (recognised by their magic bytes). A raw file comes
from outside and one bad file must never stop a night, so reading is guarded:

* only regular files are opened (a FIFO, a socket or a link to ``/dev/zero`` would
  block or never end);
* gzip and bzip2 streams are read to the end, which verifies their CRCs, and the
  expanded size is capped (:attr:`ReadLimits.max_image_mb`: decompression bombs);
* every header is sanity-checked before any data are touched: pixel type, non-negative
  axis lengths, data sizes against the file's size, a cap on the number of HDUs and
  on the image size;
* ``CHECKSUM``/``DATASUM`` are verified where present (fpack writes them, so
  damaged ``.fz`` tiles are caught), and every tile is decompressed;
* reading has a time budget (:attr:`ReadLimits.timeout_s`);
* header cards that cannot be parsed are dropped and listed
  (:attr:`RawImage.dropped_cards`); a missing keyword that matters is then reported
  by the instrument profile in plain words.

Every problem becomes a :class:`~darkroom.errors.BadInputError` whose reason is one
line in plain words (``truncated FITS: ...``, ``not a regular file (a FIFO)``,
``damaged gzip file: ...``).
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import math
import os
import re
import signal
import stat
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError
from darkroom.io.bayer import bayer_pattern, bin_bayer_to_luminance, luminance_header
from darkroom.io.fitsheader import value_field
from darkroom.io.keep import active_keeper, file_key

__all__ = ["FITS_SUFFIXES", "RawImage", "ReadLimits", "is_fits_name", "read_raw", "regular_file_problem"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
_COMPRESSED = (".gz", ".bz2")
_BLOCK = 2880
_CARD = 80
_MB = 1 << 20
_BITPIX = (8, 16, 32, 64, -32, -64)
#: a header longer than this many 2880-byte blocks (2.9 MB, ~36,000 cards) is not a raw frame's
_MAX_HEADER_BLOCKS = 1000


def is_fits_name(name: str, suffixes: tuple[str, ...] | list[str] = FITS_SUFFIXES) -> bool:
    """True when a file name ends in a FITS suffix, optionally followed by .gz or .bz2."""
    low = name.lower()
    for comp in _COMPRESSED:
        if low.endswith(comp):
            low = low[: -len(comp)]
            break
    return low.endswith(tuple(s.lower() for s in suffixes))


@dataclass(frozen=True)
class ReadLimits:
    """Budgets for reading one raw file (the ``ingest`` section of darkroom.yaml sets them).

    ``max_image_mb``: the largest image (pixels x bytes per pixel, as stored, after
    expanding gzip/bzip2/fpack) and the largest expanded gzip/bzip2 stream, in MiB;
    memory used while reading stays within about three times this.
    ``max_hdus``: the most HDUs a file may have. ``timeout_s``: wall-clock budget.
    """

    max_image_mb: float = 256.0
    max_hdus: int = 64
    timeout_s: float = 60.0


#: limits for re-reading a file ingest already accepted (under its own, configured limits)
_REREAD = ReadLimits(max_image_mb=8192.0, max_hdus=1000, timeout_s=600.0)


@dataclass(frozen=True)
class RawImage:
    """The image of a raw file: header (primary merged with the image extension's) and data."""

    header: fits.Header
    data: np.ndarray | None
    shape: tuple[int, ...]
    hdu_index: int
    #: keywords of header cards that could not be parsed and were left out
    dropped_cards: tuple[str, ...] = field(default=())
    #: the integer type the pixels were stored in when float32 holds every value of it exactly
    #: (8- and 16-bit frames), else None: what the data can be kept in (:mod:`darkroom.io.keep`)
    stored_dtype: np.dtype | None = field(default=None, repr=False, compare=False)


_KIND = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def regular_file_problem(mode: int) -> str | None:
    """``None`` for a regular file's ``st_mode``, else the plain-words reason it is skipped."""
    if stat.S_ISREG(mode):
        return None
    for test, what in _KIND:
        if test(mode):
            return f"not a regular file but {what}; only regular files are read"
    return "not a regular file; only regular files are read"


class _Budget:
    """A wall-clock deadline checked in the reading loops (and by SIGALRM in the main thread)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise BadInputError(f"reading took longer than {self.seconds:g} s (ingest.read_timeout_s)")


@contextlib.contextmanager
def _alarm(budget: _Budget) -> Iterator[None]:
    """Interrupt long library calls (astropy parsing, tile decompression) after the budget.

    Only possible in the main thread of the main interpreter (signals); elsewhere the
    loop checks and the size caps bound the work.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    if signal.getitimer(signal.ITIMER_REAL)[0] > 0:  # someone else's timer: leave it alone
        yield
        return

    def on_alarm(_signum, _frame):
        raise BadInputError(f"reading took longer than {budget.seconds:g} s (ingest.read_timeout_s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(budget.seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _expand(fh: BinaryIO, opener, what: str, limits: ReadLimits, budget: _Budget) -> bytes:
    """Read a whole gzip/bzip2 stream (verifying its CRCs), refusing more than the cap."""
    cap = int(limits.max_image_mb * _MB) + 64 * _BLOCK  # the image plus generous headers
    parts: list[bytes] = []
    size = 0
    try:
        with opener(fh) as stream:
            # pieces of 4 MB joined once at the end: a 1k x 1k 16-bit frame is one piece, no copy
            while chunk := stream.read(4 * _MB):
                parts.append(chunk)
                size += len(chunk)
                if size > cap:
                    raise BadInputError(
                        f"{what} file expands to more than {limits.max_image_mb:g} MB "
                        "(ingest.max_image_mb; a decompression bomb or a frame too large)"
                    )
                budget.check()
    except BadInputError:
        raise
    except EOFError as exc:
        raise BadInputError(f"truncated {what} file: the compressed stream ends early") from exc
    except (OSError, zlib.error, ValueError) as exc:
        text = " ".join(str(exc).split()).lower()
        if "crc" in text:
            raise BadInputError(f"damaged {what} file: checksum (CRC) does not match the data") from exc
        if "not a gzipped file" in text:
            raise BadInputError(f"damaged {what} file: stray bytes after the compressed data") from exc
        raise BadInputError(f"damaged {what} file: the compressed data are corrupt") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _expand_gzip(fh: BinaryIO, limits: ReadLimits, budget: _Budget) -> bytes:
    """A whole gzip stream, read with ISA-L (isal.igzip: the same stream checks, ~2.5x faster
    inflation) when installed. A stream it refuses is read again by the standard library,
    which accepts and refuses the same streams but is the one whose reasons the messages
    below are written for (isal words some of them differently)."""
    try:
        from isal import igzip, isal_zlib
    except ImportError:
        igzip = None
    if igzip is not None:
        try:
            return _expand(fh, lambda f: igzip.GzipFile(fileobj=f, mode="rb"), "gzip", limits, budget)
        except (BadInputError, isal_zlib.IsalError):  # IsalError: corrupt deflate data
            if time.monotonic() > budget.deadline:
                raise  # out of time: no second reading
            fh.seek(0)
    return _expand(fh, lambda f: gzip.GzipFile(fileobj=f, mode="rb"), "gzip", limits, budget)


def _int_value(cards: dict[str, str], key: str, hdu: int) -> int | None:
    text = cards.get(key)
    if text is None:
        return None
    value = text.split("/", 1)[0].strip()
    try:
        return int(value)
    except ValueError:
        raise BadInputError(
            f"corrupt FITS header (HDU {hdu}): {key} = {value!r} is not a whole number"
        ) from None


@dataclass
class _HduPlan:
    index: int
    data_bytes: int
    image_pixels: int  # pixels of the image this HDU holds (0 for none)
    image_bytes: int
    has_checksum: bool


def _scan_headers(read_at, size: int, limits: ReadLimits, budget: _Budget) -> list[_HduPlan]:
    """Walk the HDUs without reading their data; refuse impossible or oversized headers.

    ``read_at(offset, n)`` returns up to ``n`` bytes at ``offset``; ``size`` is the
    (expanded) length of the FITS content.
    """
    plans: list[_HduPlan] = []
    offset = 0
    while offset < size:
        index = len(plans)
        if index >= limits.max_hdus:
            raise BadInputError(
                f"more than {limits.max_hdus} HDUs (ingest.max_hdus): not a raw frame, or a damaged file"
            )
        cards: dict[str, str] = {}
        first = None
        end_found = False
        pos = offset
        for _ in range(_MAX_HEADER_BLOCKS):
            block = read_at(pos, _BLOCK)
            if len(block) < _BLOCK:
                if index > 0 and first is None and not block.strip(b"\0 "):
                    return plans  # short padding after the last HDU
                if first is not None or block.startswith((b"SIMPLE", b"XTENSION")):
                    raise BadInputError(f"truncated FITS: the file ends inside the header of HDU {index}")
                if index == 0:
                    raise BadInputError("not a FITS file: shorter than one 2880-byte header block")
                return plans  # a few stray bytes after the last HDU (astropy ignores them too)
            pos += _BLOCK
            for i in range(0, _BLOCK, _CARD):
                card = block[i : i + _CARD].decode("ascii", "replace")
                key = card[:8].strip().upper()
                if first is None:
                    first = key
                    if index == 0 and key != "SIMPLE":
                        raise BadInputError("not a FITS file: it does not start with SIMPLE")
                    if index == 0 and (card[8:10] != "= " or card[10:].split("/", 1)[0].strip() != "T"):
                        raise BadInputError(
                            "not a FITS file: SIMPLE is not T (the file says it breaks the standard)"
                        )
                    if index > 0 and key != "XTENSION":
                        return plans  # padding or stray bytes after the last HDU: astropy ignores them too
                if key == "END" and not card[3:].strip():
                    end_found = True
                    break
                if card[8:10] == "= " and key not in cards:
                    cards[key] = card[10:]
            if end_found:
                break
            budget.check()
        if not end_found:
            raise BadInputError(f"corrupt FITS header (HDU {index}): no END card")
        header_end = pos
        bitpix = _int_value(cards, "BITPIX", index)
        if bitpix not in _BITPIX:
            raise BadInputError(
                f"corrupt FITS header (HDU {index}): BITPIX = {bitpix} is not a FITS pixel type"
                if bitpix is not None
                else f"corrupt FITS header (HDU {index}): no BITPIX"
            )
        naxis = _int_value(cards, "NAXIS", index)
        if naxis is None or not 0 <= naxis <= 999:
            raise BadInputError(f"corrupt FITS header (HDU {index}): NAXIS = {naxis} is not 0 to 999")
        axes = []
        for n in range(1, naxis + 1):
            length = _int_value(cards, f"NAXIS{n}", index)
            if length is None:
                raise BadInputError(f"corrupt FITS header (HDU {index}): NAXIS = {naxis} but no NAXIS{n}")
            if length < 0:
                raise BadInputError(f"corrupt FITS header (HDU {index}): NAXIS{n} = {length} is negative")
            axes.append(length)
        pcount = _int_value(cards, "PCOUNT", index) or 0
        gcount = _int_value(cards, "GCOUNT", index)
        gcount = 1 if gcount is None else gcount
        if pcount < 0 or gcount < 0:
            raise BadInputError(f"corrupt FITS header (HDU {index}): negative PCOUNT or GCOUNT")
        elements = math.prod(axes) if axes else 0
        if index == 0 and axes and axes[0] == 0:  # random groups: NAXIS1 = 0
            elements = math.prod(axes[1:])
        data_bytes = abs(bitpix) // 8 * gcount * (pcount + elements) if axes else 0
        image_pixels, image_bytes = (elements, abs(bitpix) // 8 * elements) if naxis >= 2 else (0, 0)
        if "ZIMAGE" in cards and cards["ZIMAGE"].split("/", 1)[0].strip() == "T":
            zbitpix = _int_value(cards, "ZBITPIX", index)
            znaxis = _int_value(cards, "ZNAXIS", index)
            if zbitpix not in _BITPIX or znaxis is None or not 0 <= znaxis <= 999:
                raise BadInputError(f"corrupt tile-compressed header (HDU {index}): ZBITPIX/ZNAXIS")
            zaxes = [_int_value(cards, f"ZNAXIS{n}", index) for n in range(1, znaxis + 1)]
            if any(a is None or a < 0 for a in zaxes):
                raise BadInputError(
                    f"corrupt tile-compressed header (HDU {index}): a ZNAXISn is missing or negative"
                )
            image_pixels = math.prod(zaxes) if zaxes else 0
            image_bytes = abs(zbitpix) // 8 * image_pixels
        if image_bytes > limits.max_image_mb * _MB:
            raise BadInputError(
                f"image of {image_bytes / _MB:.0f} MB (HDU {index}) is larger than ingest.max_image_mb = "
                f"{limits.max_image_mb:g} MB; raise it in darkroom.yaml for a larger camera"
            )
        if header_end + data_bytes > size:
            raise BadInputError(
                f"truncated FITS: HDU {index} needs {data_bytes} bytes of data, "
                f"the file has {max(size - header_end, 0)}"
            )
        plans.append(
            _HduPlan(index, data_bytes, image_pixels, image_bytes, "CHECKSUM" in cards or "DATASUM" in cards)
        )
        offset = header_end + (data_bytes + _BLOCK - 1) // _BLOCK * _BLOCK
        budget.check()
    return plans


def _first_image_hdu(hdul: fits.HDUList) -> int:
    for i, hdu in enumerate(hdul):
        if isinstance(hdu, fits.CompImageHDU):
            return i
        if isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU) and hdu.header.get("NAXIS", 0) >= 2:
            return i
    raise BadInputError("no image data: no HDU with a 2-D image")


def _clean_card(card: fits.Card, dropped: list[str]) -> tuple[str, object, str] | None:
    """A card's (keyword, value, comment), or None with its keyword put in ``dropped`` when its
    value does not parse."""
    try:
        return card.keyword, card.value, card.comment
    except Exception:  # astropy's VerifyError and friends on a mangled card
        key = card.rawkeyword.strip() if hasattr(card, "rawkeyword") else str(card)[:8].strip()
        if key and key not in dropped:
            dropped.append(key)
        return None


#: keywords astropy parses its own way (commentary, long-string, HIERARCH cards; END is refused)
_SPECIAL_KEYWORDS = frozenset({"COMMENT", "HISTORY", "END", "CONTINUE", "HIERARCH"})
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8} *")
#: the value and comment forms :func:`_standard_image` reads (columns 11-80 of a card): T or F, an
#: integer, a decimal or exponent number (D or E, either case), or a string without quotes inside;
#: then blanks, and a comment after a slash or nothing
_VALUE = re.compile(
    r" *(?:(?P<bool>[TF])|(?P<int>[+-]?[0-9]+)"
    r"|(?P<float>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[EeDd][+-]?[0-9]+)?)|'(?P<str>[^']*)')"
    r" *(?:/(?P<comment>.*))?"
)


def _card_image(card: fits.Card) -> str | None:
    """The 80 characters a card was read from, when it still says what the card holds (it was
    made from a header's text and not changed since); None otherwise.

    astropy keeps a card read from a file as its image and parses the value on demand; the image
    is not public API except through ``card.image``, which verifies (parses) the card, so the
    attributes are read defensively: a card made any other way, or a future astropy that keeps
    them differently, gives None and takes the parsing path.
    """
    image = getattr(card, "_image", None)
    if type(image) is not str or len(image) != _CARD or getattr(card, "_modified", True):
        return None
    return image


def _standard_image(image: str) -> tuple[str, object, str] | None:
    """(image, value, comment): the value and comment astropy parses from ``image`` and the image
    ``fits.Card(key, value, comment)`` writes for them; None for a card left to astropy's parser.

    Read here: a standard keyword (not COMMENT, HISTORY, CONTINUE, HIERARCH or END) with ``= `` in
    columns 9-10, a value of a :data:`_VALUE` form, printable ASCII throughout. A string value is
    read as astropy does (trailing blanks dropped); the comment is the text after the slash without
    its surrounding blanks. Written as astropy writes: its value field
    (:func:`~darkroom.io.fitsheader.value_field`), then `` / comment``. Left to astropy: free values it reads differently
    (undefined, complex, ``1 2``), strings with quotes or ``: `` (record-valued keyword cards), a
    float outside float range or whose repr is longer than 20 characters, a card that would not fit
    in 80 characters.
    """
    if image[8:10] != "= " or not (image.isascii() and image.isprintable()):
        return None
    key = image[:8].rstrip()
    if not _KEYWORD.fullmatch(image, 0, 8) or key in _SPECIAL_KEYWORDS:
        return None
    m = _VALUE.fullmatch(image, 10)
    if m is None:
        return None
    comment = (m["comment"] or "").strip()
    value: object
    if m["bool"] is not None:
        value = m["bool"] == "T"
    elif m["int"] is not None:
        value = int(m["int"])
    elif m["float"] is not None:
        value = float(m["float"].replace("D", "E").replace("d", "e"))
        if not math.isfinite(value) or len(repr(value)) > 20:
            return None
    else:
        value = m["str"].rstrip()
        if ": " in image:
            return None  # maybe a record-valued keyword card
        if not value and "'" in comment:
            return None  # astropy may end an empty string ('') at a quote in the comment
    written = value_field(value)
    card = f"{key:8}= {written} / {comment}" if comment else f"{key:8}= {written}"
    return (f"{card:80}", value, comment) if len(card) <= _CARD else None


def _merged_header(hdul: fits.HDUList, index: int, dropped: list[str]) -> fits.Header:
    """The image HDU's header over the primary's (DATE-OBS often sits in the primary of .fz/MEF).

    A keyword met again (in the image HDU, or twice in one header) updates the value and comment of
    its first card in place, as ``header[key] = (value, comment)`` does; COMMENT, HISTORY and blank
    cards are left out. The cards are made once and the header is built from the list in one go:
    setting ~100 keywords one by one on a ``fits.Header`` costs a lookup of astropy's configuration
    and an index update per card.

    The header is the one ``fits.Card(key, value, comment)`` of every card's parsed keyword, value
    and comment gives. Nearly every card of a camera's header is of a form read here
    (:func:`_standard_image`): it is made from the image astropy would write for it with its value
    and comment given (:func:`_card_from_image`), the same card without astropy's parse and
    configuration lookups (an ARCSAT frame's merged header 3.1 -> 0.56 ms CPU); astropy parses the
    others, which are made again. A keyword met again is made again, then updated.
    """
    sources = [hdul[0].header] if index == 0 else [hdul[0].header, hdul[index].header]
    # (keyword, value, comment), or (keyword, (image, value, comment)) for a card read here
    items: list[tuple] = []
    for header in sources:
        for card in header.cards:
            image = _card_image(card)
            standard = _standard_image(image) if image is not None else None
            if standard is not None:
                items.append((image[:8].rstrip(), standard))
                continue
            item = _clean_card(card, dropped)
            if item is not None and item[0] not in ("", "COMMENT", "HISTORY"):
                items.append(item)
    if any(len(item[0]) > 8 or "." in item[0] or " " in item[0] for item in items):
        return _merged_header_by_key([_parsed(item) for item in items], dropped)  # HIERARCH, RVKC
    cards: dict[str, fits.Card] = {}
    as_read: set[str] = set()  # keywords whose card is still the one made from its image
    for item in items:
        key = item[0]
        card = cards.get(key)
        if card is None and len(item) == 2:
            cards[key] = _card_from_image(item[1])
            as_read.add(key)
            continue
        key, value, comment = _parsed(item)
        try:
            if card is None:
                cards[key] = fits.Card(key, value, comment)
                continue
            if key in as_read:  # updated below: made again first, as the first card was
                as_read.discard(key)
                card = cards[key] = fits.Card(key, card.value, card.comment)
            card.value = value
            card.comment = comment
            continue
        except Exception:  # a value astropy cannot write back is as good as unparsable
            pass
        if key not in dropped:
            dropped.append(key)
    return fits.Header(list(cards.values()))


def _card_from_image(standard: tuple[str, object, str]) -> fits.Card:
    """The card of a :func:`_standard_image`: made from the image, holding the value and comment
    as a card made from them does, so that reading them (instrument profiles read every card)
    parses nothing.

    The value must be given, not left to astropy's parse of the image: that parse keeps the text
    of a float with the blank before `` / comment``, and a card whose comment is changed later
    writes that text again where a card made from the value writes the float's repr. These are
    astropy's private attributes, as :func:`_card_image`'s; the tests compare every card, and
    every card with its comment changed, with one made from its value.
    """
    image, value, comment = standard
    card = fits.Card.fromstring(image)
    card._value = value
    card._comment = comment
    return card


def _parsed(item: tuple) -> tuple[str, object, str]:
    """(keyword, value, comment) of an item of :func:`_merged_header`."""
    if len(item) == 3:
        return item
    return item[0], item[1][1], item[1][2]


def _merged_header_by_key(items: list[tuple[str, object, str]], dropped: list[str]) -> fits.Header:
    """:func:`_merged_header` by setting one keyword at a time (astropy's own lookup rules)."""
    merged = fits.Header()
    for key, value, comment in items:
        with contextlib.suppress(Exception):  # a value astropy cannot write back is as good as unparsable
            merged[key] = (value, comment)
            continue
        if key not in dropped:
            dropped.append(key)
    return merged


def _checksum_problem(caught: list[warnings.WarningMessage]) -> str | None:
    """A plain-words reason when astropy reported a CHECKSUM/DATASUM mismatch (data first)."""
    texts = [str(w.message).lower() for w in caught]
    if any("datasum verification failed" in t for t in texts):
        return "damaged file: the data do not match their checksum (DATASUM)"
    if any("checksum verification failed" in t for t in texts):
        return "damaged file: the header and data do not match their checksum (CHECKSUM)"
    return None


def read_raw(
    path: Path | str, *, with_data: bool = True, limits: ReadLimits | None = None, debayer: bool = True
) -> RawImage:
    """Read the first 2-D image of a FITS file; raise BadInputError with a one-line reason.

    The data come back as stored after BZERO/BSCALE scaling (float32 for integer
    frames, so 16-bit unsigned frames keep their values), shape ``(ny, nx)``.
    With ``with_data`` the whole array is read (every fpack tile decompressed),
    which also proves the file is not truncated; gzip/bzip2 streams are always read
    to the end. ``limits`` default to generous ones meant for re-reading files that
    ingest accepted under the configured :class:`ReadLimits`.
    A one-shot colour frame (BAYERPAT/COLORTYP) comes back, with ``debayer``, as its 2 x 2
    luminance sum with the header rewritten to match (:mod:`darkroom.io.bayer`), so that every
    frame of the camera is read the same way.
    """
    path = Path(path)
    # only a re-read (no limits given: the file was accepted under them) is served what an
    # earlier read in this process kept (darkroom.io.keep); a first read keeps what it read
    rereading = limits is None
    limits = limits or _REREAD
    budget = _Budget(limits.timeout_s)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror or exc}") from exc
    problem = regular_file_problem(mode)
    if problem:
        raise BadInputError(problem)
    try:
        # O_NONBLOCK: if the name was swapped for a FIFO since the stat, open does not block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BadInputError(f"cannot read file: {exc.strerror or exc}") from exc
    with open(fd, "rb", closefd=True) as fh:
        st = os.fstat(fh.fileno())
        problem = regular_file_problem(st.st_mode)
        if problem:
            raise BadInputError(problem)
        if st.st_size == 0:
            raise BadInputError("empty file (0 bytes)")
        keeper = active_keeper() if with_data else None
        key = file_key(st, "raw", debayer) if keeper is not None else None
        if keeper is not None and rereading:
            kept = keeper.take(key)
            if kept is not None:
                return _unkept(kept)
        with _alarm(budget):
            raw = _read_open(fh, st.st_size, with_data=with_data, limits=limits, budget=budget)
    if debayer and bayer_pattern(raw.header) is not None and min(raw.shape) >= 2:
        if raw.data is not None:
            data, header = bin_bayer_to_luminance(raw.data, raw.header)
        else:
            data, header = None, luminance_header(raw.header, raw.shape)
        raw = dataclasses.replace(
            raw, header=header, data=data, shape=(raw.shape[0] // 2, raw.shape[1] // 2), stored_dtype=None
        )
    if keeper is not None and not rereading:
        _keep(keeper, key, raw)
    return raw


def _keep(keeper, key, raw: RawImage) -> None:
    """Leave a copy of ``raw`` with ``keeper`` (pixels in their stored integer type when that is
    exact: half the memory of float32 for a 16-bit camera)."""
    data, dtype = raw.data, raw.stored_dtype
    nbytes = data.size * (dtype.itemsize if dtype is not None else data.itemsize) + 80 * (len(raw.header) + 4)
    keeper.offer(
        key,
        lambda: dataclasses.replace(
            raw, header=raw.header.copy(), data=data.astype(dtype) if dtype is not None else data.copy()
        ),
        nbytes,
    )


def _unkept(kept: RawImage) -> RawImage:
    """A kept image as :func:`read_raw` returns it (float32 pixels)."""
    if kept.stored_dtype is None:
        return kept
    return dataclasses.replace(kept, data=kept.data.astype(np.float32))


def _read_open(fh: BinaryIO, size: int, *, with_data: bool, limits: ReadLimits, budget: _Budget) -> RawImage:
    magic = fh.read(3)
    fh.seek(0)
    content: BinaryIO
    if magic[:2] == b"\x1f\x8b":
        blob = _expand_gzip(fh, limits, budget)
        content, size = io.BytesIO(blob), len(blob)
    elif magic == b"BZh":
        blob = _expand(fh, lambda f: bz2.BZ2File(f, mode="rb"), "bzip2", limits, budget)
        content, size = io.BytesIO(blob), len(blob)
    else:
        content = fh
    if size == 0:
        raise BadInputError("empty file: the compressed stream holds no bytes")

    def read_at(offset: int, n: int) -> bytes:
        content.seek(offset)
        return content.read(n)

    plans = _scan_headers(read_at, size, limits, budget)
    if not plans:
        raise BadInputError("not a FITS file: no HDU found")
    content.seek(0)
    dropped: list[str] = []
    checksum = any(p.has_checksum for p in plans)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(
                content, memmap=False, lazy_load_hdus=False, ignore_missing_simple=False, checksum=checksum
            ) as hdul:
                budget.check()
                if len(hdul) == 0:
                    raise BadInputError("not a FITS file: no HDU found")
                index = _first_image_hdu(hdul)
                hdu = hdul[index]
                header = _merged_header(hdul, index, dropped)
                shape = tuple(int(n) for n in (hdu.shape or ()))
                if len(shape) < 2 or min(shape) == 0:
                    raise BadInputError(f"no image data: image shape {shape}")
                data = None
                stored = None
                if with_data:
                    raw = hdu.data
                    if raw is None:
                        raise BadInputError("no image data: data section is empty")
                    stored = raw.dtype if raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2 else None
                    data = np.asarray(raw, dtype=np.float32)
                    if data.ndim > 2:
                        data = data.reshape(data.shape[-2:]) if np.prod(data.shape[:-2]) == 1 else data[0]
                    if not np.isfinite(data).any():
                        raise BadInputError("no image data: every pixel is NaN or infinite")
                problem = _checksum_problem(caught)
                if problem:
                    raise BadInputError(problem)
                for w in caught:
                    if "truncated" in str(w.message).lower():
                        raise BadInputError(f"truncated FITS: {_short(w.message)}")
    except BadInputError:
        raise
    except MemoryError as exc:
        raise BadInputError("not enough memory to read the image") from exc
    except Exception as exc:  # astropy raises a wide variety on mangled headers and tiles
        raise BadInputError(_reason(exc)) from exc
    return RawImage(
        header=header,
        data=data,
        shape=shape[-2:],
        hdu_index=index,
        dropped_cards=tuple(dropped),
        stored_dtype=np.dtype(stored).newbyteorder("=") if with_data and stored is not None else None,
    )


def _short(exc: object, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """Plain words for an exception raised by astropy or a decompressor."""
    text = _short(exc)
    low = text.lower()
    if isinstance(exc, KeyError):
        key = str(exc.args[0]) if exc.args else "?"
        return f"corrupt FITS header: keyword {key} is missing"
    if isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile) or "compressed file ended" in low:
        return f"truncated or damaged compressed data: {text}"
    if "decompression" in low or "tile" in low or exc.__class__.__name__ == "CfitsioException":
        return f"damaged tile-compressed (fpack) data: {text}"
    if "truncated" in low or "end of file" in low or "smaller than" in low:
        return f"truncated FITS: {text}"
    if "simple" in low or "empty or corrupt" in low:
        return f"not a FITS file: {text}"
    if "unparsable card" in low or "card" in low:
        return f"corrupt FITS header: {text}"
    return f"unreadable FITS ({exc.__class__.__name__.lower()}): {text}"
