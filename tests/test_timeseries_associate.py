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
