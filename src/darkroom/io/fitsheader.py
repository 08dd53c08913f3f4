"""Read and change the headers of a FITS file without decoding its data.

Writing a solved WCS into a calibrated image used to read every plane through
astropy, copy it, and write it all again (tens of ms and two 12 MB passes per
1k x 1k frame). A header lives in whole 2880-byte blocks before its data, so the
new file is the old bytes with that header's blocks swapped: the data blocks are
copied as bytes, never converted, and the result is byte-identical to what astropy
would write for the same header. The file is replaced atomically (temporary name,
fsync, rename), or its header blocks overwritten in place when the new header fits them,
and its SHA-256 is computed part by part as the bytes are written (no joined copy of the
file). Planning a rewrite reads the header blocks only; the old data are read by the
writer (:class:`FileRange`), so a thread that writes and hashes also does that reading.

The HDUs are placed by scanning each header for the cards that size its data
(``BITPIX``, ``NAXISn``, ``PCOUNT``, ``GCOUNT``) and ``EXTNAME``; only the header asked
for is parsed by astropy. A file this scan does not account for exactly (random
groups, bytes after the last HDU, a header without END) is handled by astropy's
reader instead, as before.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from astropy.io import fits
from astropy.io.fits.card import _format_value  # private: wrapped by value_field only

from darkroom.errors import BadInputError
from darkroom.io.atomic import HASH_CHUNK, atomic_write_bytes

__all__ = [
    "END_CARD",
    "CardImageError",
    "CardImages",
    "FileRange",
    "HduSpan",
    "HeaderRewrite",
    "empty_hdu_bytes",
    "empty_hdu_images",
    "hdu_keyword",
    "header_blocks",
    "header_bytes",
    "keep_room",
    "plain_card",
    "plan_card_rewrite",
    "plan_header_rewrite",
    "read_header_texts",
    "read_headers",
    "rewrite_header",
    "scan_hdus",
    "value_field",
]

_BLOCK = 2880  # FITS block [bytes]
_CARD = 80  # FITS card [bytes]
END_CARD = b"END" + b" " * 77  #: the END card's 80 bytes
#: the cards that size and scale an HDU's data: a header rewrite must leave them as they are
_STRUCTURAL = ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "BSCALE")
#: headers longer than this many blocks are not a calibrated image's; astropy's reader decides
_MAX_HEADER_BLOCKS = 1000


def header_blocks(cards: bytes) -> bytes:
    """Card images (80 bytes each, END not among them) as a header's FITS blocks: the cards, END,
    then blanks to a whole number of 2880-byte blocks."""
    raw = cards + END_CARD
    return raw + b" " * (-len(raw) % _BLOCK)


def header_bytes(header: fits.Header) -> bytes:
    """The header as FITS blocks (80-character cards, END, blank-padded to 2880 bytes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        text = header.tostring(sep="", endcard=True, padding=True)
    raw = text.encode("ascii")
    if len(raw) % _BLOCK:  # tostring pads; this is a guard against a change of behaviour
        raise ValueError("header does not fill whole FITS blocks")
    return raw


def keep_room(header: fits.Header, n_cards: int) -> None:
    """End ``header`` with at least ``n_cards`` blank cards (in place): room for cards added
    later without moving the data (astropy's ``Header.append`` fills trailing blank cards
    first; :func:`rewrite_header` then writes the header over its old blocks)."""
    trailing = 0
    for card in reversed(header.cards):
        if not card.is_blank:
            break
        trailing += 1
    for _ in range(n_cards - trailing):
        header.append(fits.Card(), useblanks=False, bottom=True)


def _fill_to(header_raw: bytes, size: int) -> bytes | None:
    """``header_raw`` (whole blocks, ending in END) grown to ``size`` bytes by blank cards before
    END; None when it is longer than ``size``."""
    if len(header_raw) > size:
        return None
    end = header_raw.rfind(END_CARD, 0, len(header_raw))
    while end % _CARD:  # END must start a card
        end = header_raw.rfind(END_CARD, 0, end)
    cards = header_raw[:end]
    return cards + b" " * (size - len(cards) - _CARD) + END_CARD


#: keywords that astropy's HDU classes place, strip or check themselves
_HDU_KEY = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|GROUPS|BSCALE|BZERO|BLANK|END|TFIELDS"
    r"|T(FORM|SCAL|ZERO|NULL|TYPE|UNIT|DISP|DIM|HEAP|BCOL)\d*)$"
)
_HDU_PREFIX: dict[bool, str] = {}


def hdu_keyword(keyword: str) -> bool:
    """Whether astropy's HDU classes place, strip or check this keyword themselves (BITPIX, NAXISn...)."""
    return _HDU_KEY.match(keyword) is not None


def plain_card(image: str) -> bool:
    """Whether a card image is one :class:`CardImages` takes: 80 ASCII characters, a standard
    keyword (its first 8 characters) with a value, or a commentary card."""
    return len(image) == _CARD and image.isascii() and _PLAIN_NOT_LONG.match(image) is not None


def _hdu_prefix(primary: bool) -> str:
    prefix = _HDU_PREFIX.get(primary)
    if prefix is None:  # astropy's own cards of an empty HDU, asked once
        empty = fits.PrimaryHDU(header=fits.Header()) if primary else fits.ImageHDU(header=fits.Header())
        prefix = _HDU_PREFIX[primary] = "".join(str(card) for card in empty.header.cards)
    return prefix


def empty_hdu_images(images: Sequence[str], *, primary: bool) -> bytes:
    """:func:`empty_hdu_bytes` of a header given as the card images it writes (80 characters
    each, no END, no card of the HDU's own: :func:`hdu_keyword`)."""
    return header_blocks((_hdu_prefix(primary) + "".join(images)).encode("ascii"))


def empty_hdu_bytes(header: fits.Header, *, primary: bool) -> bytes:
    """``header_bytes(fits.PrimaryHDU(header=header).header)`` (or ``fits.ImageHDU``'s: an IMAGE
    extension) with no data, NAXIS = 0: the cards astropy puts first for such an HDU, then
    ``header``'s, without building the HDU (~0.5 ms). A header with a card of the HDU's own
    (BITPIX, NAXISn, EXTEND...) goes through astropy's HDU."""
    if any(_HDU_KEY.match(k) for k in header):
        hdu = fits.PrimaryHDU(header=header) if primary else fits.ImageHDU(header=header)
        return header_bytes(hdu.header)
    prefix = _hdu_prefix(primary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        text = prefix + header.tostring(sep="", endcard=False, padding=False)
    return header_blocks(text.encode("ascii"))


def _empty_extension(header: fits.Header) -> bytes:
    """An IMAGE extension with no data (NAXIS = 0) carrying ``header``'s cards."""
    return empty_hdu_bytes(header, primary=False)


class CardImageError(ValueError):
    """An edit :class:`CardImages` does not make (a card longer than 80 characters)."""


_BLANK = " " * _CARD
_END_CARD = END_CARD.decode("ascii")
_COMMENTARY = ("", "COMMENT", "HISTORY")
#: a card whose keyword astropy reads from its first 8 characters as they are: a standard
#: keyword followed by "= " and a value, or a commentary card
_PLAIN_CARD = re.compile(r"^(?:[A-Z0-9_-]{1,8} *= .*|(?:COMMENT |HISTORY | {8}).*| {80})$", re.DOTALL)
#: a plain card that is not a CONTINUE or HIERARCH card
_PLAIN_NOT_LONG = re.compile(r"^(?!CONTINUE|HIERARCH)" + _PLAIN_CARD.pattern.removeprefix("^"), re.DOTALL)


class CardImages:
    """A header as its 80-character card images (END left out), edited where astropy's
    :class:`~astropy.io.fits.Header` would put the same cards, without parsing any card: the
    cards left alone keep their exact bytes, and the bytes come out as astropy would write them.

    Made by :meth:`parse`, which refuses (None) a header this placement is not proven on
    (HIERARCH, CONTINUE, record-valued or lower-case keywords, a card not of 80 ASCII
    characters): the caller edits a ``fits.Header`` then.
    """

    def __init__(self, cards: list[str]) -> None:
        self.cards = cards

    @classmethod
    def parse(cls, text: str) -> CardImages | None:
        """The cards of a header's text (whole cards, END and what follows it dropped)."""
        cards = [text[i : i + _CARD] for i in range(0, len(text) - _CARD + 1, _CARD)]
        try:
            cards = cards[: cards.index(_END_CARD)]
        except ValueError:
            return None  # no END
        return cls(cards) if all(map(_PLAIN_NOT_LONG.match, cards)) else None

    def keywords(self) -> list[str]:
        return [c[:8].rstrip() for c in self.cards]

    def remove(self, keywords: set[str]) -> None:
        """Remove every card of these keywords (``Header.remove(k, remove_all=True)``)."""
        self.cards = [c for c in self.cards if c[:8].rstrip() not in keywords]

    def _blanks_at_end(self) -> int:
        # Header._countblanks: the first card is never counted
        for n in range(1, len(self.cards)):
            if self.cards[-n] != _BLANK:
                return n - 1
        return 0

    def _use_blank(self) -> None:
        if self.cards and self.cards[-1] == _BLANK:
            del self.cards[-1]

    def set(self, cards: Sequence[fits.Card]) -> None:
        """``header[c.keyword] = (c.value, c.comment)`` for each card, in order (one-card,
        non-commentary keywords): a keyword's first card is rewritten in place; a new one goes
        after the last card that is neither blank nor commentary, taking a trailing blank
        card's place."""
        self.set_images([(card.keyword, card.image) for card in cards])

    def set_images(self, cards: Sequence[tuple[str, str]]) -> None:
        """:meth:`set` of cards given as (keyword, card image) pairs."""
        keys = self.keywords()
        first = {key: i for i, key in zip(range(len(keys) - 1, -1, -1), reversed(keys), strict=True)}
        new: dict[str, str] = {}
        for key, image in cards:
            if len(image) != _CARD or key in _COMMENTARY:
                raise CardImageError(f"{key}: only a one-card, non-commentary keyword can be set")
            if key in first:
                self.cards[first[key]] = image
            else:
                new[key] = image  # set twice: the second value, at the first one's place
        idx = len(self.cards) - 1
        while idx >= 0 and self.cards[idx] == _BLANK:
            idx -= 1
        while idx >= 0 and self.cards[idx][:8].rstrip() in _COMMENTARY:
            idx -= 1
        for image in new.values():
            idx += 1
            self.cards.insert(idx, image)
            if self._blanks_at_end():
                self._use_blank()

    def add_history(self, text: str) -> None:
        """``header.add_history(text)`` for a text of one card (72 characters at most)."""
        image = _history_image(text)
        if len(image) != _CARD:
            raise CardImageError("a HISTORY text longer than one card")
        keys = self.keywords()
        if "HISTORY" in keys:  # after the last HISTORY card
            idx = len(keys) - 1 - keys[::-1].index("HISTORY") + 1
            if idx >= len(self.cards):
                self.cards.append(image)
            else:
                self.cards.insert(idx, image)
                self._use_blank()
            return
        idx = len(self.cards) - 1  # after the last card that is not blank
        while idx >= 0 and self.cards[idx] == _BLANK:
            idx -= 1
        self.cards.insert(idx + 1, image)
        if self._blanks_at_end():
            self._use_blank()

    def to_bytes(self) -> bytes:
        """The header as FITS blocks (END, blank-padded to 2880 bytes)."""
        return header_blocks("".join(self.cards).encode("ascii"))

    def header(self) -> fits.Header:
        """The cards as an astropy header (parsed lazily, card by card, as astropy reads a file)."""
        return fits.Header.fromstring("".join(self.cards))


@functools.lru_cache(maxsize=64)
def _history_image(text: str) -> str:
    """``fits.Card("HISTORY", text).image`` (a stage adds the same text to every frame)."""
    return fits.Card("HISTORY", text).image


@dataclass(frozen=True)
class HduSpan:
    """Where one HDU lies in a file [byte offsets]: its header from ``header_start`` to
    ``data_start`` (whole blocks, END included), its data zero-padded up to ``end``."""

    name: str  # EXTNAME upper-cased and stripped ('' when the HDU has none)
    header_start: int
    data_start: int
    end: int


def _value(card: bytes) -> str:
    """The value text of a fixed-format ``KEYWORD = value / comment`` card (strings unquoted)."""
    text = card[10:].decode("ascii", "replace").strip()
    if text.startswith("'"):
        stop = text.find("'", 1)
        return text[1:stop].strip() if stop > 0 else text
    return text.split("/", 1)[0].strip()


_NAXES = tuple(f"NAXIS{n}" for n in range(1, 1000))
#: the first 8 characters of the cards :func:`_scan` reads (the keyword, blank-padded)
_SCANNED = frozenset(
    k.ljust(8).encode("ascii")
    for k in ("SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "GROUPS", "EXTNAME", *_NAXES)
)
#: header blocks :func:`_scan` reads at once
_SCAN_BLOCKS = 8


def _scan(read_at: Callable[[int, int], bytes], size: int) -> list[HduSpan] | None:
    """The HDUs of ``size`` bytes read through ``read_at(offset, n)``, or None when the content is
    not a plain sequence of HDUs that tiles the file exactly (astropy's reader decides then)."""
    spans: list[HduSpan] = []
    offset = 0
    while offset < size:
        cards: dict[str, str] = {}
        pos, end_found = offset, False
        chunk, at = b"", 0  # blocks read ahead, from pos
        for _ in range(_MAX_HEADER_BLOCKS):
            if at >= len(chunk):
                chunk, at = bytes(read_at(pos, _SCAN_BLOCKS * _BLOCK)), 0
            block = chunk[at : at + _BLOCK]
            at += _BLOCK
            if len(block) < _BLOCK:
                return None
            pos += _BLOCK
            end = block.find(END_CARD)  # the first END card (at a card's start)
            while end >= 0 and end % _CARD:
                end = block.find(END_CARD, end + 1)
            for i in range(0, _BLOCK if end < 0 else end, _CARD):
                if block[i : i + 8] in _SCANNED and block[i + 8 : i + 10] == b"= ":
                    key = block[i : i + 8].rstrip().decode("ascii", "replace")
                    if key not in cards:
                        cards[key] = _value(block[i : i + _CARD])
            if end >= 0:
                end_found = True
                break
        if not end_found:
            return None
        first = "SIMPLE" if not spans else "XTENSION"
        if first not in cards or (not spans and cards["SIMPLE"] != "T") or "GROUPS" in cards:
            return None
        try:
            bitpix, naxis = int(cards["BITPIX"]), int(cards["NAXIS"])
            axes = [int(cards[f"NAXIS{k}"]) for k in range(1, naxis + 1)]
            pcount, gcount = int(cards.get("PCOUNT", "0")), int(cards.get("GCOUNT", "1"))
        except (KeyError, ValueError):
            return None
        if bitpix not in (8, 16, 32, 64, -32, -64) or min([pcount, gcount, *axes], default=0) < 0:
            return None
        nbytes = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes)) if naxis else 0
        end = pos + nbytes + (-nbytes % _BLOCK)
        if end > size:
            return None
        spans.append(HduSpan(cards.get("EXTNAME", "").strip().upper(), offset, pos, end))
        offset = end
    return spans if offset == size else None


def scan_hdus(raw: bytes | memoryview) -> list[HduSpan] | None:
    """The HDUs of a FITS file's bytes in memory (see :func:`_scan`)."""
    view = memoryview(raw)
    return _scan(lambda offset, n: view[offset : offset + n], len(view))


def _index(spans: list[HduSpan], extname: str | int) -> int | None:
    """The index of ``extname`` as astropy's ``HDUList.index_of`` finds it (first HDU of that name;
    'PRIMARY' or 0 the first HDU; an int is an index); None when the file has none."""
    if isinstance(extname, int):
        return extname if 0 <= extname < len(spans) else None
    key = extname.strip().upper()
    for i, span in enumerate(spans):
        if span.name == key or (i == 0 and key == "PRIMARY"):
            return i
    return None


def read_headers(path: Path | str, names: Sequence[str | int]) -> dict[str | int, fits.Header]:
    """The headers of the extensions in ``names`` that the file has (as ``fits.open(path)[name].header``
    gives them), reading the header blocks only; the data are skipped. Raises ``OSError`` when the
    file cannot be read and ``KeyError`` when it is not a FITS file this scan places."""
    texts = read_header_texts(path, names)
    if texts is None:
        with fits.open(path, memmap=False) as hdul:
            return {n: hdul[n].header.copy() for n in names if _has(hdul, n)}
    return {name: fits.Header.fromstring(text) for name, text in texts.items()}


def read_header_texts(path: Path | str, names: Sequence[str | int]) -> dict[str | int, str] | None:
    """The text of the headers of the extensions in ``names`` that the file has (whole blocks, END
    included), reading the header blocks only; None when the file is not a sequence of HDUs
    this scan places (:func:`read_headers` then reads it with astropy). Raises ``OSError`` when
    the file cannot be read and ``UnicodeDecodeError`` for a header that is not ASCII."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        spans = _scan(_reader(fh), size)
        if spans is None:
            return None
        out: dict[str | int, str] = {}
        for name in names:
            index = _index(spans, name)
            if index is not None:
                span = spans[index]
                fh.seek(span.header_start)
                out[name] = fh.read(span.data_start - span.header_start).decode("ascii")
        return out


def _reader(fh: BinaryIO) -> Callable[[int, int], bytes]:
    def read_at(offset: int, n: int) -> bytes:
        fh.seek(offset)
        return fh.read(n)

    return read_at


def _has(hdul: fits.HDUList, name: str | int) -> bool:
    if isinstance(name, int):
        return 0 <= name < len(hdul)
    return name in hdul


def _astropy_layout(path: Path, extnames: tuple[str | int, ...]) -> tuple[int, int, fits.Header, list[str]]:
    """(header start, data start, header copy, EXTNAMEs) of the first of ``extnames`` the file has,
    through astropy's reader."""
    with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
        present = [n for n in extnames if _has(hdul, n)]
        index = hdul.index_of(present[0] if present else extnames[0])
        info = hdul.fileinfo(index)
        return info["hdrLoc"], info["datLoc"], hdul[index].header.copy(), [h.name for h in hdul]


@dataclass(frozen=True)
class FileRange:
    """Bytes ``start:stop`` of a file, read when a :class:`HeaderRewrite` is written (in the
    writer's thread) rather than when it is planned: the data of a 1k x 1k calibrated image
    (12 MB) are not read by the thread that edits its header."""

    path: Path
    start: int
    stop: int

    def chunks(self, size: int = HASH_CHUNK) -> Iterator[bytes]:
        """The bytes in pieces of at most ``size`` (hashed while in the CPU's cache);
        ``OSError`` when the file is shorter."""
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            left = self.stop - self.start
            while left > 0:
                piece = fh.read(min(size, left))
                if not piece:
                    raise OSError(f"{self.path.name} ended {left} bytes early")
                left -= len(piece)
                yield piece


def _pieces(part: bytes | memoryview | FileRange) -> Iterator[bytes | memoryview]:
    return part.chunks() if isinstance(part, FileRange) else iter((part,))


@dataclass(frozen=True)
class HeaderRewrite:
    """A file's new bytes, in parts (old bytes before and after the new header blocks), ready
    to be written by :meth:`write`; made by :func:`plan_header_rewrite`."""

    path: Path
    #: (bytes before the header, the header blocks, the data after them, appended extensions);
    #: old bytes of the file as :class:`FileRange`, read by :meth:`write`
    parts: tuple[bytes | memoryview | FileRange, ...]
    #: where the header starts when it fits its old blocks (written in place), else None
    header_at: int | None = None

    def write(self, *, durable: bool = True) -> str:
        """Write the new bytes (fsynced when ``durable``) and return the file's SHA-256 (hex).

        In place (``header_at``): the extensions are appended, then the header blocks are
        overwritten, each in one system call: the data are not copied, and a run killed in
        between finds the frame's own WCS kept aside and the header as it was. Otherwise the
        whole file is written under a temporary name and renamed over the old one.
        Only hashing and file I/O, no astropy: threads can write several files at once.
        """
        digest = hashlib.sha256()
        if self.header_at is not None:
            try:
                for part in self.parts:
                    for piece in _pieces(part):
                        digest.update(piece)
            except OSError as exc:
                raise BadInputError(f"cannot rewrite the header of {self.path.name}: {exc}") from exc
            try:
                with open(self.path, "r+b") as fh:
                    if self.parts[3]:
                        fh.seek(0, 2)
                        fh.write(self.parts[3])
                        fh.flush()
                    os.pwrite(fh.fileno(), self.parts[1], self.header_at)
                    if durable:
                        os.fsync(fh.fileno())
            except OSError as exc:
                raise BadInputError(f"cannot rewrite the header of {self.path.name}: {exc}") from exc
            return digest.hexdigest()

        def write(fh: BinaryIO) -> None:
            for part in self.parts:  # hashed while in cache, written without a joined copy
                for piece in _pieces(part):
                    digest.update(piece)
                    fh.write(piece)

        atomic_write_bytes(self.path, write, durable=durable)
        return digest.hexdigest()


def rewrite_header(
    path: Path | str,
    extname: str | int | tuple[str | int, ...],
    update: Callable[[fits.Header], None],
    *,
    append: Sequence[fits.Header] | Callable[[fits.Header, list[str]], Sequence[fits.Header]] = (),
    durable: bool = True,
) -> str:
    """Replace the header of extension ``extname`` by ``update(header)`` (which edits a copy in
    place), append an empty IMAGE extension per header in ``append``, and return the new file's
    SHA-256: :func:`plan_header_rewrite`, then :meth:`HeaderRewrite.write`."""
    return plan_header_rewrite(path, extname, update, append=append).write(durable=durable)


def plan_header_rewrite(
    path: Path | str,
    extname: str | int | tuple[str | int, ...],
    update: Callable[[fits.Header], None],
    *,
    append: Sequence[fits.Header] | Callable[[fits.Header, list[str]], Sequence[fits.Header]] = (),
) -> HeaderRewrite:
    """The new bytes of a file whose extension ``extname`` gets the header ``update(header)``
    (which edits a copy in place) and an empty IMAGE extension per header in ``append``; the
    file is read, not changed. Every data block is copied unchanged. ``extname`` may be a tuple
    of names: the first one the file has is rewritten.

    When the new header fits the old one's blocks (blank cards are room: :func:`keep_room`),
    :meth:`HeaderRewrite.write` appends the extensions and overwrites the header in place;
    otherwise it writes the whole file anew under a temporary name and renames it over the old.

    ``append`` may be a function of (the extension's header before ``update``, the file's
    extension names, upper case) that returns the headers to append, so that the caller need not
    open the file a second time to decide.

    ``update`` must not change the data's shape or type (BITPIX, NAXISn, BZERO/BSCALE): the
    bytes that follow the header are the old data. Raises
    :class:`~darkroom.errors.BadInputError` when the file cannot be read or has no such extension.
    """
    path = Path(path)
    file_size, hdr_loc, dat_loc, text, header, names = _locate(path, extname)
    if header is None:
        try:
            header = fits.Header.fromstring(text)
        except ValueError as exc:
            raise BadInputError(f"cannot read the header of {path.name}: {exc}") from exc
    extra = append(header.copy(), names) if callable(append) else append
    structural = {k: header.get(k) for k in _STRUCTURAL}
    update(header)
    changed = [k for k, v in structural.items() if header.get(k) != v]
    if changed:
        raise ValueError(f"rewrite_header cannot change the data layout ({', '.join(changed)})")
    return _plan(path, file_size, hdr_loc, dat_loc, header_bytes(header), extra)


def _plan(
    path: Path,
    file_size: int,
    hdr_loc: int,
    dat_loc: int,
    new_header: bytes,
    extra: Sequence[fits.Header | bytes],
) -> HeaderRewrite:
    # an extension is given by its header, or as its bytes already made (empty_hdu_images)
    extensions = b"".join(h if isinstance(h, bytes) else _empty_extension(h) for h in extra)
    size = dat_loc - hdr_loc
    in_place = new_header if len(new_header) == size else _fill_to(new_header, size)
    before, after = FileRange(path, 0, hdr_loc), FileRange(path, dat_loc, file_size)
    if in_place is not None:
        return HeaderRewrite(path, (before, in_place, after, extensions), header_at=hdr_loc)
    return HeaderRewrite(path, (before, new_header, after, extensions))


def _locate(
    path: Path, extname: str | int | tuple[str | int, ...]
) -> tuple[int, int, int, str, fits.Header | None, list[str]]:
    """(file size, header start, data start, header text, header or None, EXTNAMEs) of the first
    of ``extname`` the file has, reading the header blocks only (astropy's reader, which also
    gives the header, when the scan does not place the HDUs)."""
    candidates = extname if isinstance(extname, tuple) else (extname,)
    try:
        with open(path, "rb") as fh:
            file_size = fh.seek(0, 2)
            spans = _scan(_reader(fh), file_size)
            if spans is not None:
                found = [i for i in (_index(spans, n) for n in candidates) if i is not None]
                if not found:
                    raise KeyError(f"Extension {candidates[0]!r} not found.")
                span = spans[found[0]]
                fh.seek(span.header_start)
                text = fh.read(span.data_start - span.header_start).decode("ascii")
                names = [s.name or ("PRIMARY" if i == 0 else "") for i, s in enumerate(spans)]
                return file_size, span.header_start, span.data_start, text, None, names
        hdr_loc, dat_loc, header, names = _astropy_layout(path, candidates)
        return file_size, hdr_loc, dat_loc, header.tostring(), header, names
    except (OSError, KeyError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read the header of {path.name}: {exc}") from exc


def plan_card_rewrite(
    path: Path | str,
    extname: str | int | tuple[str | int, ...],
    edit: Callable[[CardImages, list[str]], Sequence[fits.Header | bytes]],
) -> HeaderRewrite | None:
    """:func:`plan_header_rewrite` on card images: ``edit(cards, names)`` changes the
    extension's :class:`CardImages` in place and returns the headers of the empty IMAGE
    extensions to append, or their bytes (:func:`empty_hdu_images`) (``names``: the file's
    extension names, upper case). No card is parsed
    unless the edit does, so a 200-card header is rewritten in a fraction of a millisecond.
    None when :meth:`CardImages.parse` refuses the header (the caller uses
    :func:`plan_header_rewrite`). Raises as :func:`plan_header_rewrite` does.
    """
    path = Path(path)
    file_size, hdr_loc, dat_loc, text, _, names = _locate(path, extname)
    cards = CardImages.parse(text)
    if cards is None:
        return None
    structural = [c for c in cards.cards if c[:8].rstrip() in _STRUCTURAL]
    try:
        extra = edit(cards, names)
    except CardImageError:
        return None
    if [c for c in cards.cards if c[:8].rstrip() in _STRUCTURAL] != structural:
        raise ValueError("plan_card_rewrite cannot change the data layout (BITPIX, NAXISn, BZERO/BSCALE)")
    return _plan(path, file_size, hdr_loc, dat_loc, cards.to_bytes(), extra)


def value_field(value: object) -> str:
    """The value field astropy writes for ``value`` in a fixed-format card: what follows
    ``KEYWORD = `` in ``fits.Card(keyword, value).image`` (a number or T/F right-justified in
    20 characters, a string quoted and padded to 8 and to 20, ``''`` for an empty one).

    It is astropy's own formatting (``astropy.io.fits.card._format_value``, which ``Card.image``
    calls; a private function, so it is reached from here only): the card images darkroom makes
    without building a Card (raw headers, WCS solutions, frame WCS numbers) stay astropy's bytes.
    """
    return _format_value(value)
