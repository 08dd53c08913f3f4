"""darkroom.astrom's quick paths give what the plain numpy and astropy calls they replace give, to the bit.

The astrometry stage's products (solution rows, .wcs files, calibrated images) must not change
when its steps get quicker: each quick path is checked here against the plain call (numpy's
median and unique, astropy's header and HDU classes, a per-frame loop) on inputs with ties,
zeros, NaN and the shared real headers.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from darkroom.astrom import AffineTransform, FrameSources, SolveResult, match_asterisms, nearest_pairs
from darkroom.astrom.asterism import AsterismTarget, _bin_medians, _triangles, _unique_rows
from darkroom.astrom.field import choose_reference
from darkroom.astrom.relative import LazyWcsFrame, detector_fixed_sources
from darkroom.astrom.settings import SolveSettings
from darkroom.astrom.wcscards import (
    WCS_KEY,
    given_wcs_bytes,
    given_wcs_header,
    solution_cards,
    solution_header,
    solution_products,
    wcs_cards,
)
from darkroom.io.fitsheader import CardImages, empty_hdu_bytes, hdu_keyword, header_bytes
from darkroom.testing import shared_data_dir


def _nearest_pairs_plain(x, y, x_ref, y_ref, radius):
    """nearest_pairs as first written: np.unique's first index of each reference point."""
    if len(x) == 0 or len(x_ref) == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros(0)
    dist, idx = cKDTree(np.column_stack([x_ref, y_ref])).query(
        np.column_stack([x, y]), k=1, distance_upper_bound=radius
    )
    ok = np.isfinite(dist)
    src, ref, dist = np.flatnonzero(ok), idx[ok], dist[ok]
    order = np.argsort(dist, kind="stable")
    src, ref, dist = src[order], ref[order], dist[order]
    _, first = np.unique(ref, return_index=True)
    first = np.sort(first)
    return src[first], ref[first], dist[first]


def test_nearest_pairs_equal_the_plain_form_with_ties():
    rng = np.random.default_rng(1)
    for trial in range(400):
        x, y = rng.uniform(0, 40, (2, int(rng.integers(0, 60))))
        xr, yr = rng.uniform(0, 40, (2, int(rng.integers(0, 60))))
        if trial % 2:  # integer positions: equal distances
            x, y, xr, yr = np.round(x), np.round(y), np.round(xr), np.round(yr)
        expected = _nearest_pairs_plain(x, y, xr, yr, 3.0)
        tree = cKDTree(np.column_stack([xr, yr])) if len(xr) else None
        for got in (nearest_pairs(x, y, xr, yr, 3.0), nearest_pairs(x, y, xr, yr, 3.0, tree=tree)):
            for a, b in zip(expected, got, strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)


def test_bin_medians_equal_numpy_median():
    rng = np.random.default_rng(2)
    for trial in range(300):
        n = int(rng.integers(1, 300))
        parts = [rng.normal(size=n) for _ in range(4)]
        if trial % 3 == 0:
            parts = [np.round(p) for p in parts]  # ties, +0.0 and -0.0
        if trial % 7 == 0:
            parts[1][int(rng.integers(n))] = np.nan
        if trial % 11 == 0:
            parts[2][int(rng.integers(n))] = np.inf
        owner = rng.integers(0, int(rng.integers(1, 40)), n)
        members = [np.flatnonzero(owner == k) for k in np.unique(owner)]
        got = _bin_medians(parts, members)
        for part, medians in zip(parts, got, strict=True):
            for m, value in zip(members, medians, strict=True):
                expected = np.median(part[m])
                assert np.array(value).tobytes() == np.array(expected).tobytes()


def test_unique_rows_and_triangles_equal_numpy_unique_over_rows():
    rng = np.random.default_rng(3)
    for trial in range(200):
        keys = rng.integers(-40, 40, (int(rng.integers(0, 400)), 5)).astype(np.int64)
        if trial % 5 == 0 and len(keys):
            keys[0, 1] = np.iinfo(np.int64).min  # from a floor of NaN: the general path
        if len(keys):
            _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
            got_inverse, got_counts = _unique_rows(keys)
            np.testing.assert_array_equal(inverse.ravel(), got_inverse)
            np.testing.assert_array_equal(counts, got_counts)
        xy = rng.uniform(0, 100, (int(rng.integers(3, 150)), 2))
        if trial % 2:
            xy = np.round(xy / 5) * 5  # coincident points
        got = _triangles(xy, 6, 1.0)
        vertices = _triangles_vertices_plain(xy, 6)
        np.testing.assert_array_equal(np.sort(got[0], axis=1), vertices[_kept(xy, vertices, 1.0)])


def _triangles_vertices_plain(xy, n_neighbors):
    _, nbr = cKDTree(xy).query(xy, k=min(n_neighbors, len(xy) - 1) + 1)
    k = nbr.shape[1] - 1
    pairs = np.array([(i, j) for i in range(1, k + 1) for j in range(i + 1, k + 1)])
    tri = np.column_stack(
        [np.repeat(nbr[:, 0], len(pairs)), nbr[:, pairs[:, 0]].ravel(), nbr[:, pairs[:, 1]].ravel()]
    )
    tri.sort(axis=1)
    return np.unique(tri, axis=0)


def _kept(xy, tri, min_side):
    p0, p1, p2 = xy[tri[:, 0]], xy[tri[:, 1]], xy[tri[:, 2]]
    sides = np.sort(
        np.column_stack([np.hypot(*(p1 - p2).T), np.hypot(*(p0 - p2).T), np.hypot(*(p0 - p1).T)]), axis=1
    )
    return (sides[:, 2] >= max(min_side, 1e-9)) & (sides[:, 0] > 0)


def test_a_prepared_target_gives_the_same_match():
    rng = np.random.default_rng(4)
    target = rng.uniform(0, 1000, (80, 2))
    angle = 0.3
    m = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = (m.T @ (target[:60] - [12.0, -7.0]).T).T + rng.normal(0, 0.2, (60, 2))
    plain = match_asterisms(source, target)
    prepared = match_asterisms(source, AsterismTarget.of(target))
    assert plain.transform.matrix.tobytes() == prepared.transform.matrix.tobytes()
    assert plain.transform.offset.tobytes() == prepared.transform.offset.tobytes()
    np.testing.assert_array_equal(plain.source_index, prepared.source_index)
    assert plain.rms == prepared.rms and plain.n_votes == prepared.n_votes
    with pytest.raises(ValueError, match="other settings"):
        match_asterisms(source, AsterismTarget.of(target), scale_tolerance=0.2)


def _random_wcs(rng, sip: bool) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.crval = [rng.uniform(0, 360), rng.uniform(-89, 89)]
    wcs.wcs.crpix = rng.uniform(1, 2048, 2)
    wcs.wcs.cd = rng.normal(0, 2e-4, (2, 2))
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    wcs.pixel_shape = (2048, 1024)
    if sip:
        from astropy.wcs import Sip

        a = np.zeros((3, 3))
        b = np.zeros((3, 3))
        a[2, 0], b[0, 2] = rng.normal(0, 1e-6, 2)
        wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


@pytest.mark.parametrize("sip", [False, True])
def test_solution_products_equal_astropys_header(sip):
    rng = np.random.default_rng(5 + sip)
    for trial in range(60):
        result = SolveResult(
            wcs=_random_wcs(rng, sip),
            method="relative",
            n_matched=int(rng.integers(0, 500)),
            rms_arcsec=float(rng.uniform(0, 2)) if trial % 5 else float("nan"),
            rms_pix=0.1,
            quality="good",
        )
        quality = ["good", "marginal", "failed"][trial % 3]
        header = solution_header(result, quality)
        buffer = io.BytesIO()
        fits.PrimaryHDU(header=header).writeto(buffer)
        got = solution_products(result, quality)
        cards = wcs_cards(header)
        assert got.cards == cards and list(got.cards) == list(cards)
        assert [type(v) for v in got.cards.values()] == [type(v) for v in cards.values()]
        assert got.images == [
            (c.keyword, fits.Card(c.keyword, c.value, c.comment).image)
            for c in header.cards
            if WCS_KEY.match(c.keyword) or c.keyword == "ASTQUAL"
        ]
        assert solution_cards(header) == (cards, got.images)
        assert got.file_bytes == buffer.getvalue()


def _shared_headers():
    headers = []
    for folder in (
        "arcsat-xo1b-transit",
        "msumastro-header-variants",
        "sdss-frames-m2",
        "ccdproc-saao-and-sip",
    ):
        for path in sorted((shared_data_dir() / folder).glob("*.fit*"))[:4]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with fits.open(path) as hdul:
                        headers += [hdu.header.copy() for hdu in hdul]
                except OSError:
                    continue
    return headers


def test_empty_hdu_bytes_equal_astropys_hdus_on_real_headers():
    headers = _shared_headers()
    assert len(headers) > 10
    n = 0
    for header in headers:
        own = fits.Header([c for c in header.cards if not hdu_keyword(c.keyword)])
        for h in (given_wcs_header(header), own, header):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                buffer = io.BytesIO()
                try:
                    fits.PrimaryHDU(header=h).writeto(buffer)
                except (fits.VerifyError, ValueError):
                    continue  # a card astropy will not write as it is
                assert empty_hdu_bytes(h, primary=True) == buffer.getvalue()
                assert empty_hdu_bytes(h, primary=False) == header_bytes(fits.ImageHDU(header=h).header)
                n += 1
    assert n > 20


def test_given_wcs_bytes_equal_astropys_extension_on_real_headers():
    n = 0
    for header in _shared_headers():
        cards = CardImages.parse(header.tostring())
        if cards is None:
            continue
        expected = header_bytes(
            fits.ImageHDU(header=given_wcs_header(fits.Header.fromstring(header.tostring()))).header
        )
        assert given_wcs_bytes(cards) == expected
        n += 1
    assert n > 10


def _detector_fixed_plain(sources, transforms, *, fraction=0.5, radius_pix=0.7, min_shift_pix=3.0):
    """detector_fixed_sources as first written: one frame after the other, one tree query per pair."""
    masks = [np.zeros(len(t), dtype=bool) for t in sources]
    have = [i for i, t in enumerate(transforms) if t is not None]
    if len(have) < 6:
        return masks
    xy = {
        i: np.column_stack([np.asarray(sources[i]["x"], float), np.asarray(sources[i]["y"], float)])
        for i in have
    }
    trees = {i: cKDTree(np.nan_to_num(xy[i], nan=-1e9)) for i in have}
    inverse = {i: transforms[i].inverse() for i in have}
    rng = np.random.default_rng(0)
    for i in have:
        if not np.isfinite(xy[i]).any():
            continue
        cx, cy = np.nanmedian(xy[i], axis=0)
        p_ref = transforms[i].apply(cx, cy)
        others = [
            j
            for j in have
            if j != i and np.hypot(*(np.subtract(inverse[j].apply(*p_ref), (cx, cy)))) > min_shift_pix
        ]
        if len(others) < 5:
            continue
        if len(others) > 30:
            others = [int(j) for j in rng.choice(others, 30, replace=False)]
        hits = np.zeros(len(xy[i]), dtype=int)
        for j in others:
            dist, _ = trees[j].query(np.nan_to_num(xy[i], nan=1e9), k=1, distance_upper_bound=radius_pix)
            hits += np.isfinite(dist)
        masks[i] = hits >= fraction * len(others)
    return masks


def test_detector_fixed_sources_equal_the_frame_by_frame_form():
    rng = np.random.default_rng(6)
    n_masked = 0
    for trial in range(12):
        stars = rng.uniform(0, 1000, (120, 2))
        hot = rng.uniform(0, 1000, (10, 2))
        tables, transforms = [], []
        for k in range(int(rng.integers(6, 45))):
            t = AffineTransform(
                np.array([[1.0, 1e-4], [-1e-4, 1.0]]), rng.normal(0, 2.5 if trial % 2 else 10, 2)
            )
            sx, sy = t.inverse().apply(stars[:, 0], stars[:, 1])
            x = np.concatenate([sx, hot[:, 0] + rng.normal(0, 0.2, 10)])
            y = np.concatenate([sy, hot[:, 1] + rng.normal(0, 0.2, 10)])
            if k % 7 == 3:
                x[:5] = np.nan
            tables.append(Table({"x": x, "y": y}))
            transforms.append(None if k % 11 == 5 else t)
        expected = _detector_fixed_plain(tables, transforms)
        got = detector_fixed_sources(tables, transforms)
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a, b)
        n_masked += sum(int(m.sum()) for m in got)
    assert n_masked > 0  # the hot pixels were found


def test_lazy_frames_make_only_the_wcs_the_reference_choice_needs():
    made = []

    def frame(i: int, count: int, has_wcs: bool) -> LazyWcsFrame:
        def make():
            made.append(i)
            return _random_wcs(np.random.default_rng(i), False) if has_wcs else None

        return LazyWcsFrame(sources=Table({"x": [0.0] * count}), shape=(10, 10), make_wcs=make)

    counts = [5, 9, 9, 3, 7]
    frames = [frame(i, c, has_wcs=i != 1) for i, c in enumerate(counts)]
    plain = [FrameSources(sources=f.sources, shape=f.shape, wcs=f.wcs) for f in frames]
    expected = choose_reference(plain, counts, None, SolveSettings())
    made.clear()
    frames = [frame(i, c, has_wcs=i != 1) for i, c in enumerate(counts)]
    assert choose_reference(frames, counts, None, SolveSettings()) == expected == 2
    assert made == [1, 2]  # the most sources first: frame 1 has no WCS, frame 2 has one


def test_number_cards_read_and_made_as_astropy_does():
    """wcscards._parsed_number (a number card of wcslib's header text) and _number_image (a
    number's card) give what astropy's Card gives: keyword, value and its type, the image as
    written, the image made again; on the cards of 400 random solutions (PC and CD forms,
    crpix integral or not, every sky position) and on numbers of every size, sign and type."""
    from astropy.io.fits.card import _format_value
    from astropy.wcs import WCSHDO_P14, WCSHDO_all

    from darkroom.astrom.wcscards import _number_image, _parsed_number

    def astropy_parsed(image: str):
        card = fits.Card.fromstring(image)
        key, value, comment = card.keyword, card.value, card.comment
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            written = str(card)
        return key, value, written, fits.Card(key, value, comment).image

    rng = np.random.default_rng(17)
    n_fast = 0
    for trial in range(400):
        wcs = _random_wcs(rng, sip=False)
        if trial % 2:
            wcs.wcs.crpix = np.round(wcs.wcs.crpix) + [0.0, 0.5][trial % 4 // 2]
            wcs.wcs.crval = [rng.choice([0.0, 180.0, 359.9999999999]), rng.choice([-89.5, 0.0, 1e-12])]
        text = wcs.wcs.to_header(WCSHDO_all | WCSHDO_P14)
        for i in range(0, len(text), 80):
            image = text[i : i + 80]
            fast = _parsed_number(image)
            if fast is not None:
                n_fast += 1
                expected = astropy_parsed(image)
                assert fast == expected and type(fast[1]) is type(expected[1]), image
    assert n_fast > 400 * 8  # CRPIX, PC, CDELT, CRVAL, LONPOLE, LATPOLE, MJDREF: the fast path
    assert (
        _parsed_number(f"{'CTYPE1':8}= 'RA---TAN'           / Right ascension, gnomonic projection") is None
    )
    values = [
        *rng.normal(0, 1, 500),
        *(10.0 ** rng.uniform(-300, 300, 500) * rng.choice([-1, 1], 500)),
        0.0,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        *[int(v) for v in rng.integers(-(10**15), 10**15, 200)],
        0,
        -1,
        10**19,
    ]
    comments = [
        "",
        "[deg] Coordinate value at reference point",
        "rms of the matched pairs [arcsec]",
        "x" * 60,
    ]
    for v in values:
        v = float(v) if isinstance(v, np.floating) else v
        for key, comment in zip(("ASTRMS", "CRVAL1", "PC1_2", "A"), comments, strict=True):
            image = _number_image(key, v, comment)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", fits.verify.VerifyWarning)
                expected = fits.Card(key, v, comment).image
            assert image is None or image == expected, (key, v, comment)
            # None only for a card that does not fit (astropy truncates its comment)
            assert image is not None or len(f"{key:8}= {_format_value(v)} / {comment}") > 80
    for other in (True, np.float64(1.5), float("nan"), "text"):
        assert _number_image("ASTRMS", other, "x") is None
    for key in ("COMMENT", "HISTORY", "CONTINUE", "HIERARCH", "END", "lower", "TOOLONGKEY"):
        assert _number_image(key, 1.5, "x") is None
        assert _parsed_number(f"{key:8}= {1.5:>20} / x".ljust(80)) is None
    assert _number_image("ENDX", 1.5, "x") == fits.Card("ENDX", 1.5, "x").image
