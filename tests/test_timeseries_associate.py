"""Association of measurements across frames on synthetic truth (sky and pixel modes)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table, vstack

from darkroom.errors import BadInputError
from darkroom.timeseries import AssociationConfig, associate


def _detections(
    seed: int, *, n_frames: int = 100, n_stars: int = 1000, sky: bool = True, field_seed: int = 0
):
    """Stars (field from ``field_seed``) seen in many frames with 0.15" (or 0.2 px) position
    noise, 90 % completeness and 2 % spurious detections; two filters alternating."""
    rng = np.random.default_rng(field_seed)
    if sky:
        ra0, dec0 = 359.9, 45.0  # across RA = 0
        ra = ra0 + rng.uniform(-0.15, 0.15, n_stars) / np.cos(np.radians(dec0))
        dec = dec0 + rng.uniform(-0.15, 0.15, n_stars)
        noise = 0.15 / 3600
    else:
        ra = rng.uniform(0, 2000, n_stars)
        dec = rng.uniform(0, 2000, n_stars)
        noise = 0.2
    mag = rng.uniform(12, 19, n_stars)
    rng = np.random.default_rng(seed)
    rows = []
    for f in range(n_frames):
        seen = rng.random(n_stars) < 0.9
        idx = np.flatnonzero(seen)
        scale = np.cos(np.radians(dec[idx])) if sky else 1.0
        p1 = ra[idx] + rng.normal(0, noise, idx.size) / scale
        p2 = dec[idx] + rng.normal(0, noise, idx.size)
        band = "g" if f % 2 == 0 else "r"
        m = mag[idx] + (0.5 if band == "r" else 0.0) + rng.normal(0, 0.02, idx.size)
        n_fake = n_stars // 50
        if sky:
            fake1 = 359.9 + rng.uniform(-0.2, 0.2, n_fake)
            fake2 = 45.0 + rng.uniform(-0.15, 0.15, n_fake)
        else:
            fake1 = rng.uniform(0, 2000, n_fake)
            fake2 = rng.uniform(0, 2000, n_fake)
        rows.append(
            Table(
                {
                    "image_id": np.full(idx.size + n_fake, f),
                    "mjd_utc": np.full(idx.size + n_fake, 60000.0 + f * 0.01),
                    "p1": np.concatenate([p1 % 360 if sky else p1, fake1 % 360 if sky else fake1]),
                    "p2": np.concatenate([p2, fake2]),
                    "mag": np.concatenate([m, rng.uniform(19, 20, n_fake)]),
                    "mag_err": np.full(idx.size + n_fake, 0.02),
                    "filter": np.full(idx.size + n_fake, band),
                    "truth": np.concatenate([idx, np.full(n_fake, -1)]),
                }
            )
        )
    t = vstack(rows)
    if sky:
        t.rename_columns(["p1", "p2"], ["ra", "dec"])
    else:
        t.rename_columns(["p1", "p2"], ["x", "y"])
    return t, ra % 360 if sky else ra, dec, mag


def _purity(t: Table, sid: np.ndarray) -> tuple[float, float]:
    """Fraction of true stars whose measurements all share one id, and of ids holding one star."""
    truth = np.asarray(t["truth"])
    real = truth >= 0
    one_id = [np.unique(sid[real & (truth == k)]).size == 1 for k in np.unique(truth[real])]
    stars_per_id = {}
    for s, k in zip(sid[real], truth[real], strict=True):
        stars_per_id.setdefault(s, set()).add(k)
    return float(np.mean(one_id)), float(np.mean([len(v) == 1 for v in stars_per_id.values()]))


def test_sky_association_100_frames_1000_stars():
    t, ra, dec, mag = _detections(1)
    res = associate(t, config=AssociationConfig(radius_arcsec=1.0))
    sid = res.source_id
    assert sid.shape == (len(t),) and np.all(sid >= 0)
    complete, pure = _purity(t, sid)
    assert complete > 0.99 and pure > 0.99
    src = res.sources
    # the true stars' sources: ~90 epochs each, mean position within 0.1", per-filter mean magnitudes
    truth = np.asarray(t["truth"])
    for k in range(0, 1000, 97):
        s = np.bincount(sid[truth == k]).argmax()
        row = src[np.searchsorted(src["source_id"], s)]
        assert 75 <= row["n_epochs"] <= 100
        d_arcsec = np.hypot((row["ra"] - ra[k] + 180) % 360 - 180, 0) * np.cos(np.radians(dec[k])) * 3600
        assert d_arcsec < 0.1 and abs(row["dec"] - dec[k]) * 3600 < 0.1
        assert row["mag_g"] == pytest.approx(mag[k], abs=0.02) and row["mag_r"] == pytest.approx(
            mag[k] + 0.5, abs=0.02
        )
        assert row["n_g"] + row["n_r"] == row["n_epochs"]
    # no frame contributes two measurements to one source
    pairs = np.column_stack([sid, np.asarray(t["image_id"])])
    assert np.unique(pairs, axis=0).shape[0] == len(t)


def test_pixel_association_and_known_sources():
    t, _x, _y, _ = _detections(2, n_frames=30, n_stars=400, sky=False)
    cfg = AssociationConfig(coords="pixel", radius_pix=1.0)
    res = associate(t, config=cfg)
    complete, pure = _purity(t, res.source_id)
    assert complete > 0.99 and pure > 0.99
    # a second night matched to the first night's sources keeps their ids
    t2, _, _, _ = _detections(3, n_frames=5, n_stars=400, sky=False)
    res2 = associate(t2, config=cfg, sources=res.sources)
    truth1 = np.asarray(t["truth"])
    truth2 = np.asarray(t2["truth"])
    for k in (0, 50, 399):
        id1 = np.bincount(res.source_id[truth1 == k]).argmax()
        id2 = np.unique(res2.source_id[truth2 == k])
        assert list(id2) == [id1]
    assert set(np.asarray(res.sources["source_id"])) <= set(np.asarray(res2.sources["source_id"]))
    with pytest.raises(BadInputError, match="ra"):
        associate(t, config=AssociationConfig(coords="sky"))


def test_custom_column_names_and_seeding_from_a_summary():
    t, _, _, _ = _detections(4, n_frames=6, n_stars=200)
    t.rename_columns(["ra", "dec", "image_id"], ["ra_deg", "dec_deg", "frame"])
    cfg = AssociationConfig(ra_col="ra_deg", dec_col="dec_deg", image_col="frame", radius_arcsec=1.0)
    first = associate(t[t["frame"] < 3], config=cfg)
    assert "ra" in first.sources.colnames  # summaries always use ra/dec
    second = associate(t[t["frame"] >= 3], config=cfg, sources=first.sources)
    truth = np.asarray(t["truth"])
    early = np.asarray(t["frame"]) < 3
    for k in (0, 77, 199):
        assert set(second.source_id[truth[~early] == k]) == set(first.source_id[truth[early] == k])
    with pytest.raises(BadInputError, match="source_id"):
        associate(t, config=cfg, sources=first.sources[["ra", "dec"]])


# --- from an association to sources (timeseries.sources) -----------------------------------------


def test_match_radius_min_epochs_and_usable_detections():
    from darkroom.timeseries.settings import AssociateSettings
    from darkroom.timeseries.sources import match_radius, min_epochs_for, usable_detections

    s = AssociateSettings(radius_rms_factor=3.0, min_radius_arcsec=1.0, max_radius_arcsec=4.0,
                          min_radius_pix=1.5, max_radius_pix=5.0, min_snr=5.0, exclude_sharp=True,
                          min_epochs=3, min_epoch_fraction=0.5)  # fmt: skip
    assert match_radius([0.2, 0.4, None, float("nan")], s, "sky") == 1.0  # 0.9 raised to the floor
    assert match_radius([1.0, 2.0], s, "sky") == 4.0  # 4.5 capped
    assert match_radius([1.0], s, "pixel") == 3.0 and match_radius([], s, "pixel") == 1.5
    assert min_epochs_for(s, 10, new_field=False) == 5 and min_epochs_for(s, 4, new_field=False) == 3
    assert min_epochs_for(s, 2, new_field=True) == 2  # a new field seen twice keeps what both show
    cat = Table(
        {
            "x": [1.0, 2.0, np.nan, 4.0, 5.0],
            "y": [1.0, 2.0, 3.0, 4.0, 5.0],
            "snr": [50.0, 4.0, 50.0, 50.0, np.nan],
            "sharp": [False, False, False, True, False],
            "flux_aper_adu": [1000.0, 10.0, 10.0, 10.0, 10.0],
        }
    )
    x, y, mag = usable_detections(cat.columns, s, exptime_s=10.0)
    assert list(x) == list(y) == [1.0] and mag[0] == pytest.approx(-2.5 * np.log10(100.0))
    cat.remove_column("flux_aper_adu")
    assert np.isnan(usable_detections(cat.columns, s)[2]).all()


def test_field_sources_new_updated_and_merged_means():
    from darkroom.timeseries.sources import SourceMeans, field_sources, merge_means

    summary = Table(
        {
            "source_id": [7, 8, 9],
            "n_epochs": [2, 3, 1],
            "ra": [10.0, 11.0, 12.0],
            "dec": [20.0, 21.0, 22.0],
            "mag_V": [12.0, np.nan, 14.0],
            "mag_all": [12.0, 13.0, 14.0],
        }
    )
    sid = np.array([7, 7, 8, 8, 8, 9])
    x = np.array([1.0, 3.0, 10.0, 11.0, 12.0, 50.0])
    new, updated = field_sources(summary, sid, x, x * 2, coords="sky", known_ids={7}, min_epochs=2)
    assert [u["source_id"] for u in updated] == [7] and [n["source_id"] for n in new] == [8]  # 9: one frame
    assert (
        updated[0]["x_ref"] == 2.0
        and updated[0]["y_ref"] == 4.0
        and updated[0]["mean_mag"] == {"V": 12.0, "": 12.0}
    )
    assert new[0]["mean_mag"] == {"": 13.0} and new[0]["ra"] == 11.0
    pixel_new, _ = field_sources(summary, sid, x, x, coords="pixel", known_ids=set(), min_epochs=1)
    assert all(n["ra"] is None for n in pixel_new) and len(pixel_new) == 3
    # a known source seen again: positions as the mean unit vector, magnitudes weighted by frames
    merged = merge_means(
        SourceMeans(359.9999, 0.0, 2, {"V": 12.0}), SourceMeans(0.0001, 0.0, 2, {"V": 12.2, "B": 13.0})
    )
    assert merged.n_epochs == 4 and merged.mean_mag == {"V": pytest.approx(12.1), "B": 13.0}
    assert min(merged.ra_deg, 360 - merged.ra_deg) < 1e-9 and abs(merged.dec_deg) < 1e-12
    first = merge_means(SourceMeans(None, None, 0, {}), SourceMeans(5.0, 6.0, 3, {"V": 11.0}))
    assert (first.ra_deg, first.n_epochs, first.mean_mag) == (None, 3, {"V": 11.0})  # kept: no old position


def test_reference_stars_on_the_frames_that_no_source_holds():
    from astropy.wcs import WCS

    from darkroom.timeseries.sources import on_any_frame, undetected_reference_stars

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [100.0, 10.0], [50.5, 50.5], [-1 / 3600, 1 / 3600]
    ra = np.array([100.0, 100.0 + 10 / 3600, 100.0, 101.0])
    dec = np.array([10.0, 10.0, 10.0 + 20 / 3600, 10.0])  # the last one far off the 100" frame
    on = on_any_frame(ra, dec, [(w, 100, 100)])
    assert list(on) == [True, True, True, False]
    sel = undetected_reference_stars(
        ra, dec, on_frames=on, have_ra=np.array([100.0, np.nan]), have_dec=np.array([10.0 + 0.3 / 3600, 0.0]),
        radius_arcsec=0.5,
    )  # fmt: skip
    assert list(sel) == [1, 2]  # star 0 is a source already (within max(0.5, 1) arcsec)
