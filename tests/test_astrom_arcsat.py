"""A real night (ARCSAT, XO-1b, 80 z-band frames): one PinPoint WCS carried to every frame by alignment.

56 of the 80 frames carry a PinPoint TAN WCS (13 USNO-A2 stars, 0.27 arcsec residuals),
the last 24 none. The first frame's WCS is kept as the field's reference and the others'
are removed; darkroom aligns every frame to the reference and carries the WCS over.

The PinPoint solutions are not mutually consistent to better than ~0.6 arcsec: the same
stars, through frame i's and the reference's PinPoint WCS, land 0.64 arcsec apart (median
over frames; USNO-A2 positions carry ~70 years of proper motion), and each solution lies
0.62 arcsec (median) from the consensus of all 56, mostly by its rotation (0.09 deg rms).
No WCS carried from one frame, whichever frame, can match every other PinPoint solution to
0.3 arcsec (the best choice of reference reaches 0.58; docs/astrometry_arcsat.md), so the
tests check (a) that the carried solutions agree with PinPoint to within PinPoint's own
scatter, (b) that scatter and its nature, and (c) the consistency that alignment can
guarantee: the same star gets the same sky position in every frame, and chained transforms
agree with direct ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from darkroom.astrom import (
    FrameSources,
    align_sources,
    detector_fixed_sources,
    fit_affine,
    mask_sources,
    solve_frame_series,
    to_tangent_plane,
)
from darkroom.detect import DetectConfig, extract_frame


@pytest.fixture(scope="module")
def night(arcsat_dir):
    """Sources (raw frames, background-subtracted by detect) and PinPoint WCS of the 80 frames."""
    files = sorted(arcsat_dir.glob("XO1-b_z_*.fits.gz"))
    assert len(files) == 80
    frames, pinpoint, names = [], [], []
    config = DetectConfig(threshold_sigma=3.0, filter_fwhm_pix=4.0)
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RADECSYS, CDELT+CD in PinPoint headers
            with fits.open(path) as hdul:
                data = hdul[0].data.astype(np.float32)
                header = hdul[0].header
                wcs = WCS(header) if "CTYPE1" in header else None
        sources = extract_frame(data, detect_config=config).catalog
        frames.append(FrameSources(sources=sources, shape=data.shape, name=path.name))
        pinpoint.append(wcs)
        names.append(path.name)
    assert sum(w is not None for w in pinpoint) == 56
    assert all(w is None for w in pinpoint[56:])
    frames[0].wcs = pinpoint[0]  # the field's reference; the other 55 PinPoint WCS are withheld
    results = solve_frame_series(frames, reference_index=0)
    # the tests' own cross-checks ignore hot pixels and bad columns the same way
    fixed = detector_fixed_sources([f.sources for f in frames], [r.to_reference for r in results])
    for frame, mask in zip(frames, fixed, strict=True):
        frame.sources = mask_sources(frame.sources, mask)
    return frames, pinpoint, names, results


def _star_sky_difference(frames, results, pinpoint_ref, i):
    """Median distance [arcsec] between frame i's stars through its WCS and the same stars in the reference."""
    alignment = align_sources(frames[i].sources, frames[0].sources)
    src, ref = frames[i].sources, frames[0].sources
    a = results[i].wcs.all_pix2world(src["x"][alignment.source_index], src["y"][alignment.source_index], 0)
    b = pinpoint_ref.all_pix2world(
        ref["x"][alignment.reference_index], ref["y"][alignment.reference_index], 0
    )
    return float(np.median(SkyCoord(*a, unit="deg").separation(SkyCoord(*b, unit="deg")).arcsec))


def test_all_80_frames_solved(night):
    _frames, _pinpoint, names, results = night
    assert len(results) == 80
    assert all(r.quality != "failed" for r in results), [
        (n, r.reason) for n, r in zip(names, results, strict=True) if not r.ok
    ]
    assert results[0].method == "header"
    assert all(r.method == "relative" for r in results[1:])
    assert all(r.wcs is not None for r in results)
    assert sum(r.quality == "good" for r in results[1:]) >= 70
    # across the re-pointings (~04:40 and ~05:15 UT) the frames jump on the detector
    shift = np.array([r.to_reference.offset for r in results])
    before = names.index("XO1-b_z_20250602_043713.fits.gz")
    assert np.hypot(*(shift[before + 1] - shift[before])) > 20.0
    before = names.index("XO1-b_z_20250602_051244.fits.gz")
    assert np.hypot(*(shift[before + 1] - shift[before])) > 5.0


def test_recovers_pinpoint_within_its_own_scatter(night):
    frames, pinpoint, _names, results = night
    gx, gy = np.meshgrid(np.linspace(0, 1023, 12), np.linspace(0, 1023, 12))
    ours, theirs = [], []
    for i in range(1, 56):
        a = results[i].wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
        b = pinpoint[i].all_pix2world(gx.ravel(), gy.ravel(), 0)
        ours.append(np.median(SkyCoord(*a, unit="deg").separation(SkyCoord(*b, unit="deg")).arcsec))
        # PinPoint against PinPoint on the same stars: frame i's WCS vs the reference's
        alignment = align_sources(frames[i].sources, frames[0].sources)
        src, ref = frames[i].sources, frames[0].sources
        p_i = pinpoint[i].all_pix2world(src["x"][alignment.source_index], src["y"][alignment.source_index], 0)
        p_0 = pinpoint[0].all_pix2world(
            ref["x"][alignment.reference_index], ref["y"][alignment.reference_index], 0
        )
        theirs.append(np.median(SkyCoord(*p_i, unit="deg").separation(SkyCoord(*p_0, unit="deg")).arcsec))
    ours, theirs = np.array(ours), np.array(theirs)
    # measured: ours 0.69 arcsec median (max 1.14), PinPoint-vs-PinPoint 0.64 arcsec median
    assert np.median(theirs) > 0.4  # the floor any carried solution inherits
    assert np.median(ours) <= 0.8
    assert np.max(ours) <= 1.5
    assert np.median(ours) <= 1.2 * np.median(theirs)
    # scale within 0.3 %; rotation within PinPoint's own frame-to-frame scatter (measured up to
    # 0.22 deg between PinPoint solutions), while the mount keeps the field's rotation to 0.01 deg
    for i in range(1, 56):
        cd_ours = results[i].wcs.pixel_scale_matrix
        cd_pp = pinpoint[i].pixel_scale_matrix
        assert abs(np.sqrt(abs(np.linalg.det(cd_ours)) / abs(np.linalg.det(cd_pp))) - 1) < 3e-3
        rot = np.degrees(np.arctan2(cd_ours[1, 0], cd_ours[0, 0]) - np.arctan2(cd_pp[1, 0], cd_pp[0, 0]))
        assert abs((rot + 180.0) % 360.0 - 180.0) < 0.3
        assert abs(results[i].to_reference.rotation_deg) < 0.02


def test_pinpoint_solutions_scatter_about_their_consensus(night):
    """Why 0.3 arcsec is out of reach: PinPoint's own solutions scatter by twice that.

    Every PinPoint WCS, mapped into the reference frame's pixels through darkroom's alignment,
    predicts the sky positions of a 12 x 12 pixel grid; exact solutions would coincide.
    """
    _frames, pinpoint, _names, results = night
    gx, gy = np.meshgrid(np.linspace(0, 1023, 12), np.linspace(0, 1023, 12))
    gx, gy = gx.ravel(), gy.ravel()
    ra0, dec0 = (float(v[0]) for v in pinpoint[0].all_pix2world([511.5], [511.5], 0))

    def tangent_arcsec(wcs, x, y):
        return np.column_stack(to_tangent_plane(*wcs.all_pix2world(x, y, 0), ra0, dec0)) * 3600.0

    # frame i's prediction for the reference frame's grid, in arcsec on the tangent plane
    predicted = np.array(
        [tangent_arcsec(pinpoint[i], *results[i].to_reference.inverse().apply(gx, gy)) for i in range(56)]
    )
    consensus = np.median(predicted, axis=0)
    deviation = np.median(np.hypot(*(predicted - consensus).transpose(2, 0, 1)), axis=1)
    # measured 0.62 arcsec: even the consensus as the reference would miss PinPoint by 2 x 0.3
    assert np.median(deviation) > 0.5
    # the disagreements are affine (shift, rotation, scale): measured 0.04 arcsec remain after one
    # affine fit per frame, so alignment and PinPoint agree on everything but those 6 numbers
    remainder, rotation_deg = [], []
    for i in range(56):
        fit = fit_affine(consensus[:, 0], consensus[:, 1], predicted[i, :, 0], predicted[i, :, 1])
        rx, ry = fit.apply(consensus[:, 0], consensus[:, 1])
        remainder.append(np.median(np.hypot(rx - predicted[i, :, 0], ry - predicted[i, :, 1])))
        rotation_deg.append(fit.rotation_deg)
    assert np.median(remainder) < 0.1
    # PinPoint's rotation scatters by 0.09 deg rms (max 0.23) while the field holds within 0.02 deg
    assert np.std(rotation_deg) > 0.05
    assert max(abs(r.to_reference.rotation_deg) for r in results[1:56]) < 0.02
    # no reference frame brings the carried solutions within 0.3 arcsec of PinPoint: carrying frame
    # r's WCS to frame i through the alignment, on the reference frame's grid (measured: the best
    # r = 40 at 0.57 arcsec, frame 0 at 0.67; on each frame's own grid 0.58 and 0.69)
    best = np.inf
    for r in range(56):
        per_frame = [np.median(np.hypot(*(predicted[r] - predicted[i]).T)) for i in range(56) if i != r]
        best = min(best, float(np.median(per_frame)))
    assert best > 0.5


def test_same_star_same_sky_in_every_frame(night):
    frames, pinpoint, _names, results = night
    # solved and unsolved frames alike: a star's sky position through the frame's carried WCS
    # equals that of the same star in the reference frame (measured 0.02-0.14 arcsec)
    diffs = [_star_sky_difference(frames, results, pinpoint[0], i) for i in range(1, 80)]
    assert np.max(diffs) <= 0.25


def test_unsolved_frames_consistent_with_their_neighbours(night):
    frames, _pinpoint, _names, results = night
    last_solved = 55
    gx, gy = np.meshgrid(np.linspace(0, 1023, 8), np.linspace(0, 1023, 8))
    for k in range(56, 80):
        # the transform chain through the last PinPoint frame vs the direct alignment
        step = align_sources(frames[k].sources, frames[last_solved].sources)
        chained = step.transform.then(results[last_solved].to_reference)
        dx, dy = np.subtract(
            chained.apply(gx.ravel(), gy.ravel()), results[k].to_reference.apply(gx.ravel(), gy.ravel())
        )
        assert np.max(np.hypot(dx, dy)) * 0.67 <= 0.5  # arcsec (0.67 arcsec/pixel)
        # and the neighbouring frames' WCS put the same stars at the same place
        src, nb = frames[k].sources, frames[k - 1].sources
        pair = align_sources(frames[k].sources, frames[k - 1].sources)
        a = results[k].wcs.all_pix2world(src["x"][pair.source_index], src["y"][pair.source_index], 0)
        b = results[k - 1].wcs.all_pix2world(nb["x"][pair.reference_index], nb["y"][pair.reference_index], 0)
        sep = SkyCoord(*a, unit="deg").separation(SkyCoord(*b, unit="deg")).arcsec
        assert np.median(sep) <= 0.5
