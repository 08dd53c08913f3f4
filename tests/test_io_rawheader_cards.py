"""The raw reader's merged header, made from the card images where they stand as written, is the
header the card-by-card parse made before: same cards in the same order, same values (and types)
and comments, same bytes, same dropped keywords. Compared on every raw FITS file of the shared
data, on simulated frames (both header styles, the hostile preset among them), on hand-made
mangled headers and on seeded random cards."""

from __future__ import annotations

import bz2
import gzip
import io
import random
import warnings

import numpy as np
import pytest
from astropy.io import fits

from darkroom.instruments.profile import header_view
from darkroom.io import rawfits
from darkroom.io.rawfits import _first_image_hdu, _merged_header, _merged_header_by_key, is_fits_name
from darkroom.sim import SimConfig, build_scene, hostile_small_telescope
from darkroom.sim.headers import frame_header
from darkroom.testing import shared_data_dir


def _reference_clean_cards(header: fits.Header, dropped: list[str]) -> list[tuple[str, object, str]]:
    """The cards whose values parse; the keywords of the others go to ``dropped`` (the reader's
    code before the card images were used, kept as the reference)."""
    out = []
    for card in header.cards:
        try:
            key, value, comment = card.keyword, card.value, card.comment
        except Exception:
            key = card.rawkeyword.strip() if hasattr(card, "rawkeyword") else str(card)[:8].strip()
            if key and key not in dropped:
                dropped.append(key)
            continue
        out.append((key, value, comment))
    return out


def _reference_merged_header(hdul: fits.HDUList, index: int, dropped: list[str]) -> fits.Header:
    """The merged header as it was made before: every card parsed, then made again."""
    sources = [hdul[0].header] if index == 0 else [hdul[0].header, hdul[index].header]
    items = [
        item
        for header in sources
        for item in _reference_clean_cards(header, dropped)
        if item[0] not in ("", "COMMENT", "HISTORY")
    ]
    if any(len(key) > 8 or "." in key or " " in key for key, _, _ in items):
        return _merged_header_by_key(items, dropped)
    cards: dict[str, fits.Card] = {}
    for key, value, comment in items:
        try:
            card = cards.get(key)
            if card is None:
                cards[key] = fits.Card(key, value, comment)
            else:
                card.value = value
                card.comment = comment
            continue
        except Exception:
            pass
        if key not in dropped:
            dropped.append(key)
    return fits.Header(list(cards.values()))


def _expanded(blob: bytes) -> bytes:
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:3] == b"BZh":
        return bz2.decompress(blob)
    return blob


def _merge(blob: bytes, merge) -> tuple[fits.Header, list[str]] | None:
    """``merge`` on the file's HDUs opened as the reader opens them (None: no image to merge)."""
    dropped: list[str] = []
    with fits.open(io.BytesIO(blob), memmap=False, lazy_load_hdus=False) as hdul:
        try:
            index = _first_image_hdu(hdul)
        except rawfits.BadInputError:
            return None
        return merge(hdul, index, dropped), dropped


def _described(header: fits.Header) -> list[tuple]:
    return [(c.keyword, type(c.value), repr(c.value), c.comment, c.image) for c in header.cards]


def _typed(view: dict) -> list[tuple]:
    return [(key, type(value), repr(value)) for key, value in view.items()]


def _assert_same(blob: bytes, what: str) -> bool:
    """The new and the reference merge of one file agree in every respect; False: no image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mangled cards make astropy warn; both paths alike
        ref = _merge(blob, _reference_merged_header)
        new = _merge(blob, _merged_header)
        if ref is None:
            assert new is None, what
            return False
        (ref_header, ref_dropped), (new_header, new_dropped) = ref, new
        assert new_dropped == ref_dropped, what
        assert new_header.tostring() == ref_header.tostring(), what
        assert _described(new_header) == _described(ref_header), what
        assert new_header.copy().tostring() == ref_header.copy().tostring(), what
        # what instrument profiles read: the Header's cards, or its items as a mapping
        assert _typed(header_view(new_header)) == _typed(header_view(dict(ref_header.items()))), what
        # a card changed later is written the same way too (a float keeps the same text)
        for header in (ref_header, new_header):
            for card in header.cards:
                card.comment = "changed"
        assert new_header.tostring() == ref_header.tostring(), what
    return True


def test_every_raw_fits_file_of_the_shared_data():
    root = shared_data_dir()
    paths = sorted(p for p in root.rglob("*") if p.is_file() and is_fits_name(p.name))
    compared = set()
    for path in paths:
        try:
            blob = _expanded(path.read_bytes())
        except (OSError, EOFError):
            continue
        try:
            same = _assert_same(blob, str(path))
        except OSError:  # not a FITS file astropy opens (a reference table's name, say)
            continue
        if same:
            compared.add(path.relative_to(root).parts[0])
    folders = {p.relative_to(root).parts[0] for p in paths}
    assert len(compared) >= 8 and compared >= {"arcsat-xo1b-transit", "msumastro-header-variants"}, sorted(
        folders - compared
    )


def _fits_with(header: fits.Header) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(np.zeros((3, 4), np.uint16), header=header).writeto(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "config",
    [SimConfig(shape=(64, 80), n_science=4), hostile_small_telescope(n_science=6)],
    ids=["maxim", "hostile"],
)
def test_simulated_frames(config):
    scene = build_scene(config)
    for spec in scene.frames:
        assert _assert_same(_fits_with(frame_header(scene, spec)), spec.filename)


def _card(text: str) -> bytes:
    return text.encode("latin-1").ljust(80)[:80]


def _raw_file(*headers: list[bytes], extend: str | None = "T") -> bytes:
    """A FITS file of raw card images: one HDU per header, the last one with a 3 x 2 image (the
    primary has no data when extensions follow, and EXTEND = ``extend`` unless None)."""
    out = b""
    for n, cards in enumerate(headers):
        last = n == len(headers) - 1
        structure = [
            _card("SIMPLE  =                    T") if n == 0 else _card("XTENSION= 'IMAGE   '"),
            _card("BITPIX  =                   16"),
            _card("NAXIS   =                    2") if last else _card("NAXIS   =                    0"),
        ]
        if last:
            structure += [_card("NAXIS1  =                    3"), _card("NAXIS2  =                    2")]
        if n == 0 and extend is not None:
            structure.append(_card(f"EXTEND  =                    {extend}"))
        if n > 0:
            structure += [_card("PCOUNT  =                    0"), _card("GCOUNT  =                    1")]
        text = b"".join(structure + list(cards)) + _card("END")
        out += text.ljust(-(-len(text) // 2880) * 2880)
        if last:
            out += bytes(12).ljust(2880, b"\0")
    return out


#: cards astropy writes itself, and every other way of writing a value or comment seen or imagined
MANGLED = [
    "EXPTIME =                 30.0 / exposure [s]",
    "EXPTIME = 30.0",
    "EXPTIME =                  30. / free-format float",
    "EXPTIME =              3.0E+01",
    "EXPTIME =              1.5D+01 / Fortran exponent",
    "EXPTIME =              1.5e+01",
    "SMALL   =              1.5E-05",
    "BIG     =                1E+16",
    "ZERO    =                  0.0",
    "NEGZERO =                 -0.0",
    "NEGINT  =                   -0",
    "PLUS    =                   +5",
    "OCTAL   =                  007",
    "HUGEINT =  1234567890123456789",
    "HUGER   = 123456789012345678901234",
    "LONGFLT = 0.12345678901234567890123",
    "BOOL    =                    T / true",
    "BOOLF   =                    F",
    "LEFTBOOL= T",
    "IMAGETYP= 'Bias    '           / type",
    "IMAGETYP= 'Light Frame'        / longer than 8",
    "IMAGETYP= 'Light Frame'",
    "SHORT   = 'Bias'",
    "TRAIL   = 'Bias       '",
    "LEAD    = '  lead  '",
    "EMPTY   = ''",
    "EMPTY2  = '' / empty string",
    "EMPTY3  = ''                   / padded empty string",
    "EMPTY4  = '' / it's a quote in the comment",
    "EMPTY5  = '' / a comment that ends in 'quotes'",
    "EMPTY6  = '' / a 'b' / c",
    "BLANKSTR= '        '",
    "BLANKQ  = '        ' / ends 'quoted'",
    "QUOTE   = 'it''s    '",
    "QUOTE2  = 'a'' / b' / c",
    "COLON   = 'ra: 10  ' / comment: with colon",
    "COLON2  = 'plain   ' / comment: with colon",
    "UNDEF   =",
    "UNDEF2  =                      / undefined with a comment",
    "CPLX    =           (1.0, 2.0)",
    "NOSPACE =                   30 /no space after the slash",
    "TWOSP   =                   30 /  two spaces",
    "SLASHONL=                   30 /",
    "SLASHES =                   30 / a / b // c",
    "FULL    =                   30 / " + "c" * 47,
    "FULLSTR = '" + "s" * 68 + "'",
    "BADVAL  =                12abc / unparsable number",
    "BADSTR  = 'unterminated string",
    "BADTOKEN= 1.2.3",
    "TAB     =                   30 / a\ttab",
    "LATIN   =                   30 / caf\xe9",
    "LATINSTR= 'caf\xe9    '",
    "lower   =                   30 / lower-case keyword",
    "        =                   30 / blank keyword with a value",
    "COMMENT = 'not a value'",
    "COMMENT   a comment card",
    "HISTORY   a history card",
    "HISTORY =                   30",
    "                                   blank keyword commentary",
    "",
    "NOEQUAL  30",
    "EQ8     =30",
    "EQ9      = 30",
    "END     =                   3",
    "DATE-OBS= '2025-06-02T04:10:08.123' / [ISO 8601] UTC",
    "RA      = '16 02 11.84'        / Nominal Right Ascension of center of image",
    "OBJECT  = 'XO-1    '           / a transit",
    "FILTER  = 'z       '",
    "FILTER  = 'i       '           / the same keyword again",
    "EXPTIME =                   31 / again, now an int",
    "ZERO    =                 -0.0 / -0.0 after 0.0",
    "BOOL    =                    1 / an int after a bool",
    "NEGZERO =                  0.0 / 0.0 after -0.0",
    "IMAGETYP= 'Bias    '           / same value, other comment",
]


#: cards whose keywords send the whole header through ``header[key] = ...`` one at a time
BY_KEY = ["RVKC    = 'AXIS.1: 1'", "A B     =                   30 / space inside", "EQ7    = 30"]


@pytest.mark.parametrize("split", [None, 20, 45])
@pytest.mark.parametrize("extend", ["T", "F", None])
@pytest.mark.parametrize("by_key", [False, True])
def test_hand_made_mangled_headers(split, extend, by_key):
    """In one header, or split between the primary and the image extension (astropy adds EXTEND to
    a primary without it, or sets it to T: a card changed since it was read); with a record-valued keyword or one with a blank inside, the
    header is made key by key."""
    if not by_key:  # the cards themselves are merged, not set one at a time
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            keys = [fits.Card.fromstring(_card(text).decode("latin-1")).keyword for text in MANGLED]
        assert not [k for k in keys if len(k) > 8 or "." in k or " " in k]
    cards = [_card(text) for text in MANGLED + (BY_KEY if by_key else [])]
    headers = [cards] if split is None else [cards[:split], cards[split:]]
    assert _assert_same(_raw_file(*headers, extend=extend), f"split {split}")


def test_long_strings_hierarch_and_record_valued_keywords():
    long_value = "a long string value that does not fit on one card, " * 3
    header = fits.Header()
    header["EXPTIME"] = (30.0, "exposure")
    header["LONGSTR"] = (long_value, "and a comment that is long too " * 3)
    header["OBJECT"] = "XO-1"
    header.add_history("a history card " * 8)
    plain = _fits_with(header)
    assert _assert_same(plain, "CONTINUE")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header["HIERARCH ESO DET CHIP NAME"] = ("A", "a HIERARCH card")
    assert _assert_same(_fits_with(header), "HIERARCH")
    rvkc = [_card("DP1     = 'AXIS.1: 1'"), _card("DP1     = 'AXIS.2: 2'"), _card("EXPTIME =  30.")]
    assert _assert_same(_raw_file(rvkc), "record-valued")
    assert _assert_same(_raw_file([_card("EXPTIME =  30.")], rvkc[:1]), "record-valued in the extension")


_KEYS = ["EXPTIME", "FILTER", "IMAGETYP", "GAIN", "DATE-OBS", "CCD-TEMP", "X", "OBJECT", "NAXIS3", "A_B-C"]


def _random_float(rng: random.Random) -> str:
    special = [0.0, -0.0, 1e16, 1.5e-5, 2460828.6737765046, -1.2345678901234567e-300]
    x = rng.choice([*special, rng.uniform(-1e4, 1e4), rng.uniform(0, 1) * 10 ** rng.randrange(-30, 30)])
    forms = [repr(x), repr(x).upper(), f"{x:.11E}", f"{x:.16f}", f"{x:g}", f"{x:.3f}", f"{x:.6e}"]
    text = rng.choice(forms)
    if rng.random() < 0.2:  # exponents as Fortran and MaxIm write them
        text = rng.choice([text.replace("E", "D"), text.replace("e", "d"), text.replace("E+0", "E+00")])
    return rng.choice([text, text, "+" + text, "1E999", "-1E999", "1E-400", ".5", "1.", "007.5", "1.5 E 3"])


def _random_value(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(["T", "F", "t", "1", "0", "-0", "+3", "007", str(rng.randrange(-(10**12), 10**12))])
    if kind == 1:
        return _random_float(rng)
    if kind == 2:
        text = "".join(rng.choice("ab Z09-:'/&") for _ in range(rng.randrange(0, 14)))
        return "'" + text.replace("'", rng.choice(["''", "'"])) + "'"
    if kind == 3:
        return rng.choice(["", "(1, 2)", "1 2", "12abc", "'open", "\xe9", "TRUE", "30x", "'a'b"])
    text = rng.choice(["Bias", "LIGHT", "Light Frame", "", "  lead", "a/b", "x" * rng.randrange(8, 75)])
    return "'" + text.ljust(rng.choice([0, 8, 12])) + "'"


def _random_card(rng: random.Random) -> bytes:
    key = rng.choice(_KEYS)
    value = _random_value(rng)
    width = rng.choice([0, 20, 20, 20, len(value) + rng.randrange(0, 4)])
    value = value.rjust(width) if not value.startswith("'") else value.ljust(width)
    comments = ["", "", " / a comment", " /comment", " /  spaced", " / ", " / it's: odd", " / ends 'quoted'"]
    comment = rng.choice(
        [*comments, " /   Readout mode", " / x" * 20, " / " + "c" * rng.randrange(30, 60), "/tight"]
    )
    equals = rng.choice(["= ", "= ", "= ", "= ", "=", " ="])
    return _card(f"{key:8}{equals}{value}{comment}")


def test_seeded_random_cards():
    rng = random.Random(15)
    for n in range(400):
        headers = [
            [_random_card(rng) for _ in range(rng.randrange(5, 30))] for _ in range(rng.choice([1, 2]))
        ]
        assert _assert_same(_raw_file(*headers, extend=("T", "F", None)[n % 3]), f"random file {n}")


def test_the_cards_of_a_camera_are_read_without_astropy_parsing_them():
    """Every value card of the ARCSAT frames (MaxIm DL: ``/comment``, ``6.00000000000E+001``) is of
    a form the reader writes itself, so the merged header is made without astropy's parse."""
    night = shared_data_dir() / "arcsat-xo1b-transit"
    read, total = 0, 0
    for path in sorted(night.glob("*.fits.gz"))[:12]:
        with fits.open(io.BytesIO(gzip.decompress(path.read_bytes()))) as hdul:
            for card in hdul[0].header.cards:
                image = rawfits._card_image(card)
                assert image is not None
                if image[:8].rstrip() not in ("", "COMMENT", "HISTORY"):
                    total += 1
                    read += rawfits._standard_image(image) is not None
    assert total > 600 and read == total
