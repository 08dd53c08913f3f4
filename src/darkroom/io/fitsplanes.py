"""Image planes of a plain FITS file read straight into native-endian arrays.

astropy reads a plane with ``numpy.fromfile`` into a big-endian array, and the caller
then makes a native copy: two passes and two allocations of every plane, 6-10 ms for
the three planes of a 1k x 1k calibrated image. Here each header is scanned for the
few cards that place and shape its data (``BITPIX``, ``NAXISn``, ``EXTNAME``), and the
planes asked for are read into native arrays and byte-swapped in place.

Only the simple case is handled: an uncompressed file of IMAGE extensions with 2-D
integer or float data and no scaling (``BZERO``, ``BSCALE``, ``BLANK``), i.e. what
:func:`darkroom.io.calibrated.write_calibrated` writes. Anything else returns None and
the caller reads the file with astropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["read_planes"]

_BLOCK = 2880  # bytes
_CARD = 80
_TYPES = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}
#: cards whose presence sends the file to astropy (scaled or compressed data, tables)
_UNHANDLED = frozenset({"BZERO", "BSCALE", "BLANK", "ZIMAGE", "THEAP"})


def _header_blocks(fh) -> bytes | None:
    """The raw header at the file position (whole blocks up to END); None at the end of file."""
    blocks = []
    while True:
        block = fh.read(_BLOCK)
        if not block:
            return None if not blocks else b""
        if len(block) < _BLOCK:
            return b""  # truncated
        blocks.append(block)
        for i in range(0, _BLOCK, _CARD):
            if block[i : i + 8] == b"END     ":
                return b"".join(blocks)


def _cards(raw: bytes) -> dict[str, str]:
    """Value text of the fixed-format ``KEYWORD = value`` cards (strings unquoted)."""
    out: dict[str, str] = {}
    for i in range(0, len(raw), _CARD):
        card = raw[i : i + _CARD]
        if card[8:10] != b"= ":
            continue
        key = card[:8].rstrip().decode("ascii", "replace")
        text = card[10:].decode("ascii", "replace").strip()
        if text.startswith("'"):
            end = text.find("'", 1)
            value = text[1:end].rstrip() if end > 0 else text
        else:
            value = text.split("/", 1)[0].strip()
        out.setdefault(key, value)
    return out


def read_planes(
    path: Path | str, names: tuple[str, ...], *, header_of: str | None = None
) -> tuple[dict[str, np.ndarray], fits.Header | None] | None:
    """``({EXTNAME: (ny, nx) native array}, header of extension header_of)`` of the planes in
    ``names`` that the file has (first extension of each name), or None when the file is not
    the simple kind this reader handles (see the module docstring)."""
    planes: dict[str, np.ndarray] = {}
    header = None
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            return None  # gzip
        fh.seek(0)
        first = True
        while True:
            raw = _header_blocks(fh)
            if raw is None:
                break
            if not raw:
                return None
            cards = _cards(raw)
            if _UNHANDLED & cards.keys():
                return None
            if first:
                if cards.get("SIMPLE") != "T":
                    return None
            elif cards.get("XTENSION") != "IMAGE":
                return None
            first = False
            try:
                bitpix = int(cards["BITPIX"])
                naxis = int(cards["NAXIS"])
                shape = tuple(int(cards[f"NAXIS{k}"]) for k in range(naxis, 0, -1))
                if int(cards.get("PCOUNT", "0")) != 0 or int(cards.get("GCOUNT", "1")) != 1:
                    return None
            except (KeyError, ValueError):
                return None
            if bitpix not in _TYPES:
                return None
            n = int(np.prod(shape)) if naxis else 0
            nbytes = n * abs(bitpix) // 8
            name = cards.get("EXTNAME", "").upper()
            if name in names and name not in planes:
                if naxis != 2:
                    return None
                data = np.empty(shape, dtype=np.dtype(_TYPES[bitpix]).newbyteorder("="))
                if fh.readinto(memoryview(data).cast("B")) != nbytes:
                    return None  # truncated
                if np.little_endian and data.dtype.itemsize > 1:
                    data.byteswap(inplace=True)  # FITS is big-endian
                planes[name] = data
                if name == header_of:
                    header = fits.Header.fromstring(raw.decode("ascii"))
                fh.seek(-nbytes % _BLOCK, 1)
            else:
                fh.seek(nbytes + (-nbytes % _BLOCK), 1)
    return planes, header
