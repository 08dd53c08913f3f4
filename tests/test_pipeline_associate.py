"""The associate stage's per-frame WCS (pipeline.associate.FrameWcs): the same transformation,
to the last bit, as building each frame's WCS from its recorded cards."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from darkroom.astrom.wcscards import wcs_cards
from darkroom.pipeline.associate import FrameWcs
from darkroom.pipeline.astrometry import wcs_from_astrom


def _solution(rng: np.random.Generator, *, sip: bool = False) -> dict:
    """Recorded cards of a TAN (or TAN-SIP) solution near XO-1, with the solution's own cards."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [512.5 + rng.normal(0, 3), 512.5 + rng.normal(0, 3)]
    w.wcs.crval = [240.55 + rng.normal(0, 0.01), 28.18 + rng.normal(0, 0.01)]
    scale = 0.67 / 3600 * (1 + rng.normal(0, 1e-3))
    rot = rng.normal(0, 2e-3)
    w.wcs.pc = scale * np.array([[-np.cos(rot), np.sin(rot)], [np.sin(rot), np.cos(rot)]]) * [[1, 1], [1, -1]]
    w.wcs.radesys = "ICRS"
    header = w.to_header(relax=True)
    cards = wcs_cards(header)
    if sip:
        cards.update({"A_ORDER": 2, "B_ORDER": 2, "A_2_0": rng.normal(0, 1e-6), "B_0_2": rng.normal(0, 1e-6)})
    # raw floats of 17 digits (astropy's card keeps 20 characters of them)
    cards["CRVAL1"] = float(cards["CRVAL1"]) + 1.234567890123e-9
    cards["PC1_2"] = float(cards["PC1_2"]) * (1 + 1.1e-13)
    cards.update({"ASTMETH": "relative", "ASTNMAT": int(rng.integers(5, 50)), "ASTRMS": float(rng.random())})
    return cards


def _same(a: WCS, b: WCS) -> None:
    yy, xx = np.mgrid[-60:1100:23.7, -60:1100:29.3]
    x, y = xx.ravel(), yy.ravel()
    ra_a, dec_a = a.all_pix2world(x, y, 0)
    ra_b, dec_b = b.all_pix2world(x, y, 0)
    assert np.array_equal(ra_a, ra_b) and np.array_equal(dec_a, dec_b)
    assert np.array_equal(
        np.array(a.all_world2pix(ra_a, dec_a, 0)), np.array(b.all_world2pix(ra_a, dec_a, 0))
    )
    assert a.to_header(relax=True).tostring() == b.to_header(relax=True).tostring()


def test_frame_wcs_equals_the_recorded_cards_wcs():
    rng = np.random.default_rng(7)
    frame_wcs = FrameWcs()
    solutions = [_solution(rng) for _ in range(12)] + [_solution(rng, sip=True) for _ in range(4)]
    no_poles = {k: v for k, v in _solution(rng).items() if k not in ("LONPOLE", "LATPOLE")}
    for cards in [*solutions, no_poles, solutions[0]]:
        _same(frame_wcs(cards), wcs_from_astrom({"wcs": cards}))
    # the TAN frames share a layout (its first frame built astropy's way); the SIP terms differ
    # from frame to frame: each of those is built astropy's way
    assert len(frame_wcs._built) == 1 + 4
    assert frame_wcs(None) is None and frame_wcs({}) is None


def test_frame_wcs_copies_do_not_share_state():
    rng = np.random.default_rng(3)
    frame_wcs = FrameWcs()
    a, b = _solution(rng), _solution(rng)
    first = frame_wcs(a)
    first.wcs.crval = [0.0, 0.0]  # a caller changing its own WCS does not change the next frames'
    _same(frame_wcs(b), wcs_from_astrom({"wcs": b}))
    _same(frame_wcs(a), wcs_from_astrom({"wcs": a}))


def test_card_number_is_the_number_in_astropys_card():
    """card_number(v) == float(Card(key, v).image[10:30]) to the bit: floats of every size and
    sign (-0.0, subnormal, 17 digits), the numbers of the ARCSAT night's solutions, ints."""
    import struct

    from astropy.io.fits import Card

    from darkroom.pipeline.associate import card_number

    rng = np.random.default_rng(11)
    values = [
        *rng.normal(0, 1, 3000),
        *(rng.normal(0, 1, 3000) * 1e-4),  # PC/CDELT of a 0.67"/pix frame
        *rng.uniform(0, 360, 3000),
        *rng.uniform(-1e3, 3e3, 3000),
        *(10.0 ** rng.uniform(-320, 308, 3000) * rng.choice([-1, 1], 3000)),
        0.0,
        -0.0,
        5e-324,
        1.7976931348623157e308,
        180.0,
        0.1 + 0.2,
    ]
    for v in [float(v) for v in values] + [0, 1, -5, 2048, 10**15]:
        for key in ("CRVAL1", "PC1_2", "LONPOLE"):
            expected = float(Card(key, v).image[10:30])
            assert struct.pack("<d", card_number(v)) == struct.pack("<d", expected), (key, v)
