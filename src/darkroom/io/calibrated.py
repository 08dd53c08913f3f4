"""The calibrated-image file: one reader and one writer for every stage.

A calibrated exposure is a FITS file with an empty primary HDU and three image
extensions: ``SCI`` (float32, adu; its header carries the raw header's cards and any
WCS, and is written with room for a WCS solution: blank cards before END), ``MASK`` (integer bit plane, :class:`darkroom.maskbits.MaskBit`, the bits named in
its header; stored as unsigned bytes, FITS BITPIX 8, when its values fit, as darkroom's six bits
always do: a quarter of the bytes of int32 to write, hash and read) and ``VAR`` (float32, adu^2, the variance of SCI). Shapes ``(ny, nx)``.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from darkroom.errors import BadInputError
from darkroom.io.atomic import HASH_CHUNK, atomic_path, sha256_file
from darkroom.io.fitsheader import END_CARD, header_blocks, header_bytes, keep_room
from darkroom.io.fitsplanes import read_planes
from darkroom.maskbits import mask_header_cards

__all__ = [
    "CalibratedImage",
    "EncodedImage",
    "encode_calibrated",
    "read_calibrated",
    "write_calibrated",
    "write_encoded",
]

_BLOCK = 2880  # FITS block [bytes]
_CARD = 80  # FITS card [bytes]
_BLANK = b" " * _CARD
#: blank cards kept free in SCI's header: the astrometry stage writes its solution (a TAN-SIP
#: WCS up to order 4 and its quality cards) in place instead of copying the whole file
SCI_HEADER_ROOM = 72


@dataclass(frozen=True)
class CalibratedImage:
    """The planes of a calibrated exposure (``mask`` / ``var`` None when the file has none)."""

    sci: np.ndarray
    header: fits.Header | None  #: SCI's header (None when not asked for)
    mask: np.ndarray | None = None
    var: np.ndarray | None = None


def read_calibrated(
    path: Path | str, *, planes: tuple[str, ...] = ("SCI", "MASK", "VAR"), header: bool = True
) -> CalibratedImage:
    """Read the planes asked for (SCI always) and, with ``header``, SCI's header (parsing it
    costs ~1 ms a frame); a file that cannot be read raises
    :class:`~darkroom.errors.BadInputError` with a one-line reason."""
    path = Path(path)
    try:
        fast = read_planes(path, ("SCI", *planes), header_of="SCI" if header else None)
    except OSError as exc:
        raise BadInputError(f"cannot read calibrated image {path.name}: {exc}") from exc
    except ValueError:  # a card astropy's parser rejects: its reader gives the reason below
        fast = None
    if fast is not None and "SCI" in fast[0] and (fast[1] is not None or not header):
        found, sci_header = fast
        sci = found["SCI"]
        var = found.get("VAR") if "VAR" in planes else None
        return CalibratedImage(
            sci=sci if sci.dtype == np.float32 else sci.astype(np.float32),
            header=sci_header,
            mask=found.get("MASK") if "MASK" in planes else None,
            var=var if var is None or var.dtype == np.float32 else var.astype(np.float32),
        )
    try:
        with fits.open(path, memmap=False) as hdul:
            sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
            sci_header = hdul["SCI"].header.copy() if header else None
            mask = np.asarray(hdul["MASK"].data) if "MASK" in planes and "MASK" in hdul else None
            var = (
                np.asarray(hdul["VAR"].data, dtype=np.float32) if "VAR" in planes and "VAR" in hdul else None
            )
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"cannot read calibrated image {path.name}: {exc}") from exc
    return CalibratedImage(sci=sci, header=sci_header, mask=mask, var=var)


def calibrated_hdus(image: CalibratedImage) -> fits.HDUList:
    """HDUs ``[primary, SCI, MASK, VAR]`` of a calibrated image (not written anywhere)."""
    sci = _sci_hdu(image)
    keep_room(sci.header, SCI_HEADER_ROOM)
    hdus = [fits.PrimaryHDU(), sci]
    if image.mask is not None:
        hdus.append(fits.ImageHDU(stored_mask(image.mask), header=_mask_header()))
    if image.var is not None:
        hdus.append(fits.ImageHDU(image.var, header=_var_header()))
    return fits.HDUList(hdus)


def stored_mask(mask: np.ndarray) -> np.ndarray:
    """The MASK plane as it is written: unsigned bytes when every value is in 0-255 (the bits of
    :class:`~darkroom.maskbits.MaskBit`), else as it is. Readers get it back as uint8 and use
    it as any integer bit plane."""
    mask = np.asarray(mask)
    if mask.dtype == np.uint8 or mask.dtype.kind not in "iu" or mask.size == 0:
        return mask
    if int(mask.min()) >= 0 and int(mask.max()) <= 255:
        return mask.astype(np.uint8)
    return mask


def _sci_hdu(image: CalibratedImage) -> fits.ImageHDU:
    """The SCI HDU with its EXTNAME (without the room :func:`keep_room` adds)."""
    # ImageHDU copies the header; EXTNAME set on its copy lands where it would on the caller's
    # (after the last non-commentary card, or in place), so the caller's header is copied once
    sci = fits.ImageHDU(image.sci, header=image.header)
    sci.header["EXTNAME"] = "SCI"
    return sci


def _mask_header() -> fits.Header:
    mask_h = fits.Header()
    mask_h["EXTNAME"] = "MASK"
    for key, value, comment in mask_header_cards():
        mask_h[key] = (value, comment)
    return mask_h


def _var_header() -> fits.Header:
    var_h = fits.Header()
    var_h["EXTNAME"] = "VAR"
    var_h["BUNIT"] = ("adu2", "variance of SCI")
    return var_h


@functools.lru_cache(maxsize=32)
def _fixed_header_bytes(kind: str, shape: tuple[int, ...], dtype: np.dtype) -> bytes | None:
    """The header blocks of the primary HDU (``kind`` 'PRIMARY') or of a MASK or VAR plane of
    ``shape`` and ``dtype``, as astropy builds, verifies and formats them: the same for every
    frame, so made once. None when astropy would not write that HDU as it is (:func:`_direct`)."""
    if kind == "PRIMARY":
        hdu = fits.PrimaryHDU()
    else:
        header = _mask_header() if kind == "MASK" else _var_header()
        hdu = fits.ImageHDU(_shaped(shape, dtype), header=header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        hdus = fits.HDUList([fits.PrimaryHDU(), hdu] if kind != "PRIMARY" else [hdu])
        hdus.verify("exception")
        return header_bytes(hdu.header) if _direct(hdu) else None


def _shaped(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of ``shape`` and ``dtype`` holding no memory (every element the same zero): for
    building the header of a plane, never written."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype=dtype), shape, (0,) * len(shape))


#: cards the SCI HDU's header gets from astropy (ImageHDU strips them from the given header,
#: the first of each); a second one would update the new card in place: astropy's path then
_STRIPPED = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND")
#: cards that take astropy's path: structure, scaling, checksums, EXTNAME, or unusual
_ASTROPYS = frozenset(
    (
        *("XTENSION", "PCOUNT", "GCOUNT", "GROUPS", "TFIELDS", "THEAP", "BSCALE", "BZERO", "BLANK"),
        *("CHECKSUM", "DATASUM", "EXTNAME", "END", "CONTINUE"),
    )
)
_COMMENTARY = frozenset(("", "COMMENT", "HISTORY", "END"))  # astropy's commentary keywords


@functools.lru_cache(maxsize=32)
def _structure_and_extname(shape: tuple[int, ...], dtype: np.dtype) -> tuple[bytes, bytes]:
    """The images of the cards astropy starts an IMAGE extension of ``shape`` and ``dtype``
    with (XTENSION, BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT), and of EXTNAME = 'SCI'."""
    hdu = fits.ImageHDU(_shaped(shape, dtype))
    hdu.header["EXTNAME"] = "SCI"
    cards = [str(c).encode("ascii") for c in hdu.header.cards]
    if hdu.header.cards[-1].keyword != "EXTNAME" or len(cards) != 6 + len(shape):
        raise RuntimeError("unexpected IMAGE extension header from astropy")
    return b"".join(cards[:-1]), cards[-1]


def _sci_header_direct(image: CalibratedImage) -> bytes | None:
    """SCI's header blocks, room included, as :func:`encode_calibrated`'s astropy path makes
    them (``ImageHDU(sci, header)``, EXTNAME, verification, :func:`keep_room`), written from
    the cards without building the HDU (its header copy, strip, merge and the card index
    updates: ~2 ms a frame). None when the header has cards this does not follow astropy for
    (structure, scaling, checksums, EXTNAME, a second SIMPLE/BITPIX/NAXIS/EXTEND, stray
    NAXISn, trailing blank cards) or a card fails verification: the astropy path then."""
    header, sci = image.header, image.sci
    if header is None or sci.dtype not in _DIRECT:
        return None
    kept: list[fits.Card] = []
    stripped: dict[str, fits.Card] = {}
    naxis_cards: list[str] = []
    for card in header.cards:
        keyword = card.keyword
        if keyword in _ASTROPYS:
            return None
        if keyword in _STRIPPED:
            if keyword in stripped:
                return None
            stripped[keyword] = card
        elif keyword.startswith("NAXIS"):
            naxis_cards.append(keyword)
        else:
            kept.append(card)
    naxis = stripped["NAXIS"].value if "NAXIS" in stripped else 0
    if not (isinstance(naxis, int) and not isinstance(naxis, bool) and 0 <= naxis <= 999):
        return None
    if len(set(naxis_cards)) != len(naxis_cards) or not set(naxis_cards) <= {
        f"NAXIS{k}" for k in range(1, naxis + 1)
    }:
        return None  # strip removes NAXIS1..NAXISn only
    if kept and kept[-1].is_blank:
        return None  # EXTNAME would take a trailing blank card's place
    # astropy verifies every card of the header it writes; the structural ones are its own
    try:
        for card in kept:
            card.verify("exception")
    except fits.VerifyError:
        return None
    structure, extname = _structure_and_extname(sci.shape, sci.dtype)
    # EXTNAME goes after the last card that is not commentary (astropy's Header.append)
    at = len(kept)
    while at > 0 and kept[at - 1].keyword in _COMMENTARY:
        at -= 1
    images = [str(card).encode("ascii") for card in kept]
    cards = structure + b"".join(images[:at]) + extname + b"".join(images[at:])
    return header_blocks(cards + _BLANK * SCI_HEADER_ROOM)


def _blank_cards_to_add(header: fits.Header, n_cards: int) -> int:
    """How many blank cards :func:`keep_room` appends to ``header`` for ``n_cards`` of room."""
    trailing = 0
    for card in reversed(header.cards):
        if trailing >= n_cards or not card.is_blank:
            break
        trailing += 1
    return max(0, n_cards - trailing)


def _with_blank_cards(header_raw: bytes, n_add: int) -> bytes:
    """Header blocks (ending in END) with ``n_add`` blank cards before END: the bytes of the
    header with that many blank cards appended."""
    end = len(header_raw) - _CARD
    while header_raw[end : end + _CARD] != END_CARD:  # the blank padding after END
        end -= _CARD
    return header_blocks(header_raw[:end] + _BLANK * n_add)


#: pixel types written directly (FITS BITPIX for each); others go through astropy's writer
_DIRECT = {
    np.dtype(np.float32): ">f4",
    np.dtype(np.float64): ">f8",
    np.dtype(np.int16): ">i2",
    np.dtype(np.int32): ">i4",
    np.dtype(np.int64): ">i8",
    np.dtype(np.uint8): "u1",
}


#: cards astropy rewrites on the way out (checksums over the new data, integer scaling)
_REWRITTEN = ("CHECKSUM", "DATASUM", "BZERO", "BSCALE")


def _direct(hdu) -> bool:
    """True when astropy would write ``hdu``'s header as it is and its data as big-endian bytes."""
    if any(key in hdu.header for key in _REWRITTEN):
        return False
    return hdu.data is None or hdu.data.dtype in _DIRECT


def _hdu_chunks(
    planes: tuple[np.ndarray | None, ...], headers: tuple[bytes, ...]
) -> Iterator[bytes | memoryview]:
    """The file's bytes, HDU by HDU, as astropy writes them: header blocks, then the data
    (``planes``, None for none) in big-endian order zero-padded to whole 2880-byte blocks
    (every HDU :func:`_direct`).

    A plane goes out in blocks of rows converted into one small reused buffer (hashed and
    written while in cache, no whole big-endian copy): each chunk must be consumed before
    the next is asked for.
    """
    for data, header in zip(planes, headers, strict=True):
        yield header
        if data is None:
            continue
        rows = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)
        step = max(1, HASH_CHUNK // max(1, rows.shape[1] * data.itemsize))
        buf = np.empty((min(step, rows.shape[0]), rows.shape[1]), dtype=_DIRECT[data.dtype])
        for r0 in range(0, rows.shape[0], step):
            part = buf[: min(step, rows.shape[0] - r0)]
            part[...] = rows[r0 : r0 + step]
            yield memoryview(part).cast("B")
        if pad := -data.nbytes % _BLOCK:
            yield bytes(pad)


@dataclass(frozen=True)
class EncodedImage:
    """A calibrated image ready to be written: each HDU's header bytes and data (``planes``,
    None for the primary HDU), or, when an HDU needs astropy's own writer (checksums, integer
    scaling, other pixel types), astropy's HDUs, verified (``headers`` None).

    Made by :func:`encode_calibrated` in the calling thread because astropy warns while it
    formats cards ("Card is too long, comment will be truncated"), and Python's warning
    filters and recorders are process-wide: a warning raised in a writer thread lands in
    whatever ``catch_warnings`` another thread has open (a raw file's reader records every
    warning to detect truncation). :func:`write_encoded` with header bytes emits none and
    may run in another thread.
    """

    hdus: fits.HDUList | None
    headers: tuple[bytes, ...] | None
    planes: tuple[np.ndarray | None, ...] = ()


def encode_calibrated(image: CalibratedImage) -> EncodedImage:
    """The HDUs of ``image`` verified as astropy's writer would, and their header bytes (long
    header cards truncated quietly).

    Only SCI's header changes from frame to frame: the primary, MASK and VAR headers are
    astropy's for that shape and pixel type, made once (:func:`_fixed_header_bytes`), and
    the room after SCI's cards is added to its bytes (:func:`_with_blank_cards`) rather than
    as 72 cards to the header."""
    fixed = [_fixed_header_bytes("PRIMARY", (), np.dtype(np.float32))]
    planes: list[np.ndarray | None] = [None, image.sci]
    mask = None if image.mask is None else stored_mask(image.mask)
    for kind, plane in (("MASK", mask), ("VAR", image.var)):
        if plane is not None:
            fixed.append(_fixed_header_bytes(kind, plane.shape, plane.dtype))
            planes.append(plane)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        sci_bytes = _sci_header_direct(image) if all(h is not None for h in fixed) else None
        if sci_bytes is None:
            sci = _sci_hdu(image)
            # what astropy's writeto checks first (the fixed HDUs were checked when made)
            fits.HDUList([fits.PrimaryHDU(), sci]).verify("exception")
            if any(h is None for h in fixed) or not _direct(sci):
                hdus = calibrated_hdus(image)
                hdus.verify("exception")
                return EncodedImage(hdus, None)
            room = _blank_cards_to_add(sci.header, SCI_HEADER_ROOM)
            sci_bytes = _with_blank_cards(header_bytes(sci.header), room)
    headers = (fixed[0], sci_bytes, *fixed[1:])
    return EncodedImage(None, headers, tuple(planes))


def write_encoded(path: Path | str, encoded: EncodedImage) -> str:
    """Write an encoded image atomically (temporary name, fsync, rename) and return the file's
    SHA-256 (hex), computed from the bytes as they are written rather than by reading the file
    back. With header bytes (the usual case) no warning is raised and any thread may call it;
    otherwise astropy writes the file (warnings silenced here: call it from the thread that
    encoded) and it is read back for its checksum."""
    path = Path(path)
    if encoded.headers is None:
        assert encoded.hdus is not None
        with warnings.catch_warnings(), atomic_path(path) as tmp:
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            encoded.hdus.writeto(tmp)
        return sha256_file(path)
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for chunk in _hdu_chunks(encoded.planes, encoded.headers):
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def write_calibrated(path: Path | str, image: CalibratedImage) -> str:
    """Write a calibrated image atomically (temporary name, fsync, rename) and return the file's
    SHA-256 (hex): :func:`encode_calibrated` then :func:`write_encoded`.

    The bytes are astropy's (the HDUs built and verified by astropy, their headers as astropy
    formats them, the planes converted to big-endian) written directly; HDUs whose cards astropy
    rewrites on the way out (checksums, integer scaling) or of other pixel types go through
    astropy's own writer and the file is read back for its checksum.
    """
    return write_encoded(path, encode_calibrated(image))
