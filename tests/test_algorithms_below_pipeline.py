"""Known answers for the algorithms that moved out of the pipeline stages (no registry needed):
robust statistics, the Moffat PSF stamp, aperture corrections, blend flags, forced positions,
pointing clusters."""

from __future__ import annotations

import math

import bottleneck as bn
import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from darkroom.astrom import AffineTransform
from darkroom.astrom.pointing import cluster_pointings
from darkroom.catalogs import FileCatalogSource, resolve_catalog_source
from darkroom.errors import SolveError
from darkroom.phot import ApertureConfig, PhotFlag
from darkroom.phot.apcorr import aperture_correction, psf_minus_aperture
from darkroom.phot.blend import blend_flags
from darkroom.phot.forced import predict_positions
from darkroom.phot.psfmodel import disc_mask, moffat_psf_model, psf_noise_area
from darkroom.robust import MAD_TO_SIGMA, clipped_median, median, robust_std


def test_robust_std_and_clipped_median_known_answers():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, 200_000)
    assert robust_std(x) == pytest.approx(2.0, rel=0.01)
    x[:1000] = 1e6  # 0.5 % wild points change neither
    assert robust_std(x) == pytest.approx(2.0, rel=0.02)
    centre, err, n = clipped_median(x, n_sigma=3.0)
    assert centre == pytest.approx(5.0, abs=0.02) and n < x.size - 1000
    assert err == pytest.approx(1.2533 * 2.0 * 0.986 / math.sqrt(n), rel=0.05)  # 3-sigma-truncated std
    assert clipped_median([1.0, 1.0, 1.0, 9.0], floor=0.5)[:3:2] == (1.0, 3)
    assert math.isnan(clipped_median([np.nan])[0]) and pytest.approx(1.4826, abs=1e-4) == MAD_TO_SIGMA


@pytest.mark.parametrize("n", [70_001, 1 << 20])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_is_exactly_numpys(n, dtype):
    rng = np.random.default_rng(n)
    x = (300.0 + 50.0 * rng.standard_normal(n)).astype(dtype)
    sorted_x, rounded = np.sort(x), np.round(x)  # a sorted image, many ties
    tied = x.copy()
    tied[::7] = x[0]
    edge = x.copy()
    edge[: n // 2 + 1] = -1e30  # the median outside the pivots: the fallback
    nan = x.copy()
    nan[n // 3] = np.nan
    for values in (x, sorted_x, rounded, tied, edge, nan, np.full(n, 2.5, dtype), x[:-1]):
        for reference in (np.median, bn.median):  # bottleneck rounds the middle mean its own way
            want, got = reference(values), median(values, middle=reference)
            assert np.asarray(got).dtype == np.asarray(want).dtype
            assert got == want or (np.isnan(got) and np.isnan(want))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_where_is_exactly_numpys_of_the_values_kept(dtype):
    """median(values, where=keep) == np.median(values[keep]), for masks dense and sparse, with
    NaN and infinities among the values left out or kept, ties, and a median outside the pivots."""
    n = 1 << 20
    rng = np.random.default_rng(5)
    x = (300.0 + 50.0 * rng.standard_normal(n)).astype(dtype)
    bad_left_out = x.copy()
    bad_left_out[::97] = np.nan
    bad_left_out[1::97] = np.inf
    keeps = {
        "dense": rng.random(n) > 0.01,
        "half": rng.random(n) > 0.5,
        "sparse": rng.random(n) > 0.97,  # ~31k kept: below the selection's minimum
        "few in the sample": np.arange(n) % 64 == 3,  # 16k kept, none on the sample's stride
        "all": np.ones(n, bool),
        "none": np.zeros(n, bool),
    }
    keeps["no NaN kept"] = keeps["dense"] & np.isfinite(bad_left_out)
    tied = np.round(x)
    edge = x.copy()
    edge[: n // 2 + 1] = -1e30
    for values in (x, bad_left_out, tied, edge):
        for name, keep in keeps.items():
            for reference in (np.median, bn.median):
                with np.errstate(invalid="ignore"):
                    want = reference(values[keep]) if keep.any() else np.float64("nan")
                    got = median(values, middle=reference, where=keep)
                assert np.asarray(got).dtype == np.asarray(want).dtype or not keep.any(), name
                assert got == want or (np.isnan(got) and np.isnan(want)), name
    with pytest.raises(ValueError):
        median(x, where=np.ones(10, bool))


def test_median_where_on_real_frames(data_dir):
    """An ARCSAT raw frame (1k x 1k) and the SAAO frame, with their stars left out or kept alone
    and a bad column left out: median(frame, where=keep) == np.median(frame[keep])."""
    import glob

    from astropy.io import fits

    paths = sorted(glob.glob(str(data_dir / "arcsat-xo1b-transit" / "XO1-b_z_*.fits.gz")))[:1]
    paths.append(str(data_dir / "ccdproc-saao-and-sip" / "a8280271.fits"))
    for path in paths:
        with fits.open(path) as hdul:
            img = np.asarray(hdul[0].data, dtype=np.float32)
        stars = img > np.percentile(img, 99.0)
        column = np.zeros(img.shape, bool)
        column[:, img.shape[1] // 3] = True
        for keep in (~stars, stars | column, ~(stars | column)):
            for reference in (np.median, bn.median):
                assert median(img, middle=reference, where=keep) == reference(img[keep]), path


def test_moffat_stamp_integrates_to_the_enclosed_flux_and_has_its_fwhm():
    fwhm, beta = 4.0, 3.0
    psf = moffat_psf_model(fwhm, beta, half_size_pix=25, oversampling=5)
    data = np.asarray(psf.data)
    # each element is a pixel's fraction of the flux; 25 oversampled elements per pixel area
    total = data.sum() / 25.0
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    r_eff = 25.5 * 2 / math.sqrt(math.pi)  # circle of the square stamp's area
    enclosed = 1 - (1 + r_eff**2 / alpha**2) ** (1 - beta)
    assert total == pytest.approx(enclosed, abs=0.003)
    c = data.shape[0] // 2
    row = data[c] / data[c, c]
    # half maximum (of the pixel-integrated profile, slightly wider than the true one) near FWHM/2
    half = np.interp(0.5, row[c:][::-1], np.arange(row[c:].size)[::-1]) / 5.0
    assert half == pytest.approx(fwhm / 2, rel=0.05)


def test_disc_mask_and_noise_area():
    m = disc_mask((20, 30), np.array([5.0, np.nan]), np.array([10.0, 3.0]), radius_pix=2.0)
    assert m.sum() == 13 and m[10, 5] and not m[10, 8]
    phot = Table({"flux_err": [3.0, 3.0, 30.0, 40.0]})
    assert psf_noise_area(phot, sky_rms=1.5) == pytest.approx(4.0)
    assert psf_noise_area(phot, sky_rms=0.0) is None


def _apertures(ratio: float, n: int = 40) -> Table:
    """Stars whose largest-aperture flux is ``ratio`` x the reference aperture's."""
    f = np.linspace(1e4, 1e5, n)
    t = Table(
        {
            "x": np.arange(n) * 50.0,
            "y": np.zeros(n),
            "flux_ap0": f,
            "flux_err_ap0": np.sqrt(f),
            "flags_ap0": np.zeros(n, np.int32),
            "flux_ap1": f * ratio,
            "flux_err_ap1": np.sqrt(f),
            "flags_ap1": np.zeros(n, np.int32),
            "flux": f * ratio,
            "flags": np.zeros(n, np.int32),
            "group_size": np.ones(n, int),
        }
    )
    t.meta.update(aperture_radii_pix=[3.0, 9.0], ref_aperture=0, fwhm_pix=3.0)
    return t


def test_aperture_correction_known_answer():
    t = _apertures(1.25)
    t["flux_ap1"][0] *= 3  # a blended star far off the correction is clipped
    apcorr, err, n = aperture_correction(t, min_snr=30.0)
    assert apcorr == pytest.approx(-2.5 * math.log10(1.25), abs=1e-9) and n == 39 and 0 < err < 0.005
    t["flags_ap1"][:] = int(PhotFlag.SAT)
    assert aperture_correction(t, min_snr=30.0) == (0.0, None, 0)
    # the PSF flux equal to the largest aperture's: PSF - aperture = 0
    d, n = psf_minus_aperture(_apertures(1.25), min_snr=30.0)
    assert d == pytest.approx(0.0, abs=1e-12) and n == 40


def test_blend_flags_from_neighbours():
    t = _apertures(1.0, n=3)
    t["x"] = [0.0, 10.0, 100.0]
    cfg = ApertureConfig()
    blend_flags(t, np.array([0.0, 10.0, 100.0, 104.0]), np.zeros(4), config=cfg)
    bit = int(PhotFlag.BLENDED)
    margin = cfg.blend_margin_fwhm * 3.0
    # star 0: neighbour at 10 px blends the 9-px aperture only if 10 < 9 + margin
    assert bool(t["flags_ap1"][0] & bit) == (9 + margin > 10) and not t["flags_ap0"][0] & bit
    assert t["flags_ap0"][2] & bit and t["flags_ap1"][2] & bit  # 4 px away blends both


def test_blend_flags_give_the_columns_that_replacing_them_gives():
    """blend_flags writes int32 flag columns without attributes in place; any other column is
    replaced, as before (an int32 column without unit or description)."""
    cfg = ApertureConfig()
    nb = (np.array([0.0, 10.0, 100.0, 104.0]), np.zeros(4))
    plain, odd = _apertures(1.0, n=3), _apertures(1.0, n=3)
    for t in (plain, odd):
        t["x"] = [0.0, 10.0, 100.0]
        for k in range(len(t.meta["aperture_radii_pix"])):
            t[f"flags_ap{k}"] = np.asarray(t[f"flags_ap{k}"], np.int32)
        t["flags"] = t[f"flags_ap{t.meta['ref_aperture']}"]
    odd["flags_ap0"] = np.asarray(odd["flags_ap0"], np.int64)
    odd["flags_ap1"].description = "reference aperture"
    odd["flags"].unit = "adu"
    columns = {name: plain[name] for name in plain.colnames}
    blend_flags(plain, *nb, config=cfg)
    blend_flags(odd, *nb, config=cfg)
    flag_columns = [c for c in plain.colnames if c.startswith("flags")]
    assert all(plain[c] is columns[c] for c in flag_columns)  # written in place
    for c in flag_columns:
        np.testing.assert_array_equal(plain[c], odd[c])
        assert odd[c].dtype == np.int32 and odd[c].unit is None and odd[c].description is None
    assert plain["flags"][2] & int(PhotFlag.BLENDED)


def test_forced_positions_through_wcs_and_reference_transform():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = [51.0, 41.0]  # 1-based: pixel (50, 40) 0-based
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    sources = {"ra": np.array([150.0, np.nan, 151.0]), "dec": np.array([2.0, 2.0, 2.0])}
    x, y, on = predict_positions(sources, coords="sky", wcs=w, to_reference=None, shape=(80, 100))
    assert (x[0], y[0]) == pytest.approx((50.0, 40.0)) and list(on) == [True, False, False]
    shift = AffineTransform(np.eye(2), np.array([5.0, -2.0]))  # frame -> reference
    ref = {"x_ref": np.array([5.0, 200.0]), "y_ref": np.array([-2.0, 0.0])}
    x, y, on = predict_positions(ref, coords="pixel", wcs=None, to_reference=shift, shape=(80, 100))
    assert (x[0], y[0]) == pytest.approx((0.0, 0.0)) and list(on) == [True, False]
    with pytest.raises(SolveError):
        predict_positions(sources, coords="sky", wcs=None, to_reference=None, shape=(80, 100))


def test_pointing_clusters():
    side = 0.2  # deg
    pts = [(10.0, 20.0, side), (10.05, 20.0, side), None, (11.0, 20.0, side), (10.01, 20.0, side)]
    assert cluster_pointings(pts, 0.5) == [[0, 1, 4, 2], [3]]  # the unknown joins the largest
    assert cluster_pointings(pts, None) == [[0, 1, 2, 3, 4]]
    assert cluster_pointings([None, None], 0.5) == [[0, 1]]


def test_reference_catalog_resolved_against_the_repository(tmp_path):
    src = FileCatalogSource(kind="file", path="refcat.ecsv")
    assert resolve_catalog_source(src, tmp_path).path == tmp_path / "refcat.ecsv"
    absolute = FileCatalogSource(kind="file", path=tmp_path / "x.ecsv")
    assert resolve_catalog_source(absolute, "/elsewhere").path == tmp_path / "x.ecsv"
    assert resolve_catalog_source(None, tmp_path) is None


def test_mean_radec_across_ra_zero_and_at_the_pole():
    from darkroom.phot.match import mean_radec

    ra, dec = mean_radec(np.array([359.9, 0.1]), np.array([10.0, 10.0]))
    assert min(ra, 360.0 - ra) < 1e-9 and dec == pytest.approx(10.0, abs=1e-4)  # not RA 180
    ra, dec = mean_radec(np.array([0.0, 90.0, 180.0, 270.0]), np.full(4, 89.0))
    assert dec == pytest.approx(90.0, abs=1e-9)
    ra, dec = mean_radec(np.array([10.0, 20.0]), np.array([0.0, 0.0]))
    assert (ra, dec) == (pytest.approx(15.0), pytest.approx(0.0, abs=1e-12))


def test_solver_scaled_by_seeing_and_the_widening_ladder():
    from darkroom.astrom import FrameSources, PointingHint
    from darkroom.astrom.field import scaled_by_fwhm, widening
    from darkroom.astrom.settings import SolveSettings
    from darkroom.catalogs import FileCatalogSource

    base = SolveSettings()
    assert scaled_by_fwhm(base, [None]) is base and scaled_by_fwhm(base, [1.0]) is base  # sharp: as set
    wide = scaled_by_fwhm(base, [5.0, 6.0, None]).series.solve  # a 5.5-pixel DSLR star
    assert wide.good_rms_pix == pytest.approx(1.1) and wide.match_radius_pix == pytest.approx(8.25)
    hinted = [
        FrameSources(
            sources=Table(), shape=(10, 10), hint=PointingHint(ra_deg=1, dec_deg=2, pixel_scale_arcsec=1)
        )
    ]
    local = base.model_copy(update={"reference_catalog": FileCatalogSource(path="c.ecsv")})
    assert [s.pointing_uncertainty_deg for s in widening(local, hinted)] == [0.1, 0.5, 2.5, 10.0]
    assert [s.series.solve.search_radius_deg >= s.pointing_uncertainty_deg for s in widening(local, hinted)][
        1:
    ] == [True] * 3
    assert len(list(widening(base, hinted))) == 1  # no catalogue: nothing to widen
    placed = [FrameSources(sources=Table(), shape=(10, 10), wcs=WCS(naxis=2))]
    assert len(list(widening(local, placed))) == 1  # a header WCS places the field


def test_catalog_cone_holds_every_frame_of_the_field():
    from darkroom.astrom import FrameSources, PointingHint
    from darkroom.astrom.field import catalog_cone

    def frame(ra, dec):
        return FrameSources(
            sources=Table(),
            shape=(1000, 2000),
            hint=PointingHint(ra_deg=ra, dec_deg=dec, pixel_scale_arcsec=1.8),
        )

    cone = catalog_cone(
        [frame(359.9, 0.0), frame(0.1, 0.0)], [60000.0, 60001.0], pointing_uncertainty_deg=0.1
    )
    half_diagonal = 0.5 * math.hypot(1000, 2000) * 1.8 / 3600
    assert min(cone.ra_deg, 360 - cone.ra_deg) < 1e-9 and abs(cone.dec_deg) < 1e-9
    assert cone.radius_deg == pytest.approx(0.1 + 1.15 * half_diagonal + 0.1, rel=1e-6)
    assert cone.epoch_jyear == pytest.approx(2000.0 + (60000.5 - 51544.5) / 365.25, abs=1e-6)  # mean MJD
    assert (
        catalog_cone([FrameSources(sources=Table(), shape=(10, 10))], [None], pointing_uncertainty_deg=0.1)
        is None
    )


def test_wcs_cards_round_trip_and_replacement_keeps_the_given_wcs():
    from astropy.io import fits

    from darkroom.astrom.wcscards import (
        GIVEN_WCS_EXTNAME,
        given_wcs_header,
        header_wcs,
        replace_wcs_cards,
        wcs_cards,
        wcs_from_cards,
    )

    w = WCS(naxis=2)
    w.wcs.ctype, w.wcs.crval, w.wcs.crpix = ["RA---TAN", "DEC--TAN"], [10.0, 20.0], [50.5, 40.5]
    w.wcs.cd = [[-1e-4, 0.0], [0.0, 1e-4]]
    header = fits.Header({"OBJECT": "M1", "EXPTIME": 30.0})
    header.update(w.to_header())
    again = wcs_from_cards(wcs_cards(header_wcs(header).to_header()))
    np.testing.assert_allclose(again.all_pix2world([0, 99], [0, 79], 0), w.all_pix2world([0, 99], [0, 79], 0))
    assert header_wcs(fits.Header({"OBJECT": "M1"})) is None and wcs_from_cards({}) is None
    given = given_wcs_header(header)
    assert given["EXTNAME"] == GIVEN_WCS_EXTNAME and "OBJECT" not in given and given["CRVAL1"] == 10.0
    solution = w.deepcopy()
    solution.wcs.crval = [10.01, 20.0]
    sol_header = solution.to_header()
    sol_header["ASTQUAL"] = "good"
    replace_wcs_cards(header, sol_header, history="solved")
    assert header["CRVAL1"] == 10.01 and header["ASTQUAL"] == "good" and header["OBJECT"] == "M1"
    assert "solved" in str(header["HISTORY"])


def test_aperture_correction_ignores_unseen_neighbours():
    """Faint stars in the large aperture but not in the source list (undetected, or merged into the
    detection) only add light: most of the stars so contaminated by 5-40 % leave the correction
    at the clean stars' value, where a median of all would be pulled by ~0.05 mag."""
    rng = np.random.default_rng(1)
    t = _apertures(1.12, n=60)
    f = np.asarray(t["flux_ap0"], float)
    t["flux_err_ap1"] = np.sqrt(f) * 2.0  # the large aperture holds ~4x the sky pixels
    t["flux_ap1"] = f * 1.12 + rng.normal(0.0, 1.0, f.size) * np.sqrt(np.asarray(t["flux_err_ap1"]) ** 2 - f)
    hit = rng.random(f.size) < 0.6
    t["flux_ap1"][hit] += f[hit] * rng.uniform(0.05, 0.4, hit.sum())
    apcorr, _, n = aperture_correction(t, min_snr=30.0)
    truth = -2.5 * math.log10(1.12)
    assert abs(apcorr - truth) < 0.005 and n < 60 - 0.5 * hit.sum()
    d = -2.5 * np.log10(np.asarray(t["flux_ap1"]) / f)
    assert np.median(d) - truth < -0.02  # what a median of all stars would give
