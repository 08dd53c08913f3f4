"""Photometric calibration across bands (issue 10, item 7): a five-band simulated night with a
reference catalogue of five magnitude columns gives each band its own zero point (within 0.01
mag of the truth); a band with no column stays instrumental and says so."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.phot.calibrate import ref_columns_for_filter
from darkroom.pipeline.products import image_products
from darkroom.repo.models import Exposure
from darkroom.sim import SimConfig, simulate_night

runner = CliRunner()

#: band -> (the sim's zero point for that band's frames, catalogue offset from r) [mag]
BANDS = {"u": (22.1, 1.3), "g": (24.6, 0.45), "r": (25.0, 0.0), "i": (24.7, -0.2), "z": (23.9, -0.35)}


def test_filter_to_column_defaults():
    cols = ["ra", "dec", "u", "u_err", "g", "g_err", "r", "r_err", "i", "i_err", "z", "z_err"]
    assert ref_columns_for_filter("r", cols)[:2] == ("r", "r_err")
    assert ref_columns_for_filter("sdss_g'", cols)[:2] == ("g", "g_err")
    assert ref_columns_for_filter("Ic", cols)[:2] == ("i", "i_err")
    assert ref_columns_for_filter("Halpha", cols)[0] is None
    gaia = ["ra", "dec", "gmag", "e_gmag", "rmag", "e_rmag", "imag", "e_imag"]
    assert ref_columns_for_filter("r", gaia)[:2] == ("rmag", "e_rmag")
    apass = ["RAJ2000", "Vmag", "e_Vmag", "Bmag", "e_Bmag", "r_mag", "e_r_mag"]
    assert ref_columns_for_filter("V", apass)[:2] == ("Vmag", "e_Vmag")
    assert ref_columns_for_filter("r", apass)[:2] == ("r_mag", "e_r_mag")
    assert ref_columns_for_filter("z", cols, mapping={"z": "i"})[:2] == ("i", "i_err")
    assert ref_columns_for_filter("z", cols, mapping={"z": "nope"})[0] is None


@pytest.mark.slow
def test_five_bands_get_their_own_zero_points(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    truth: dict[str, float] = {}
    night = None
    for band, (zp, _) in BANDS.items():
        cfg = SimConfig(
            seed=3,
            shape=(256, 256),
            n_science=2,
            n_bias=2,
            n_dark=2,
            n_flat=2,
            exptime_s=30.0,
            zero_point_mag=zp,
            colour_term=0.0,
        )
        night = simulate_night(tmp_path / f"sim-{band}", config=cfg)
        for kind, paths in night.raw_paths.items():
            for path in paths:
                with fits.open(path) as hdul:
                    if kind in ("light", "flat"):
                        hdul[0].header["FILTER"] = band
                    hdul.writeto(
                        raw / f"{band}_{path.name}" if kind in ("light", "flat") else raw / path.name,
                        overwrite=True,
                    )
        summary = night.truth.summary
        lights = night.truth.frames[night.truth.frames["kind"] == "light"]
        truth[band] = float(
            np.mean(
                summary["zero_point_mag"]
                - summary["extinction_mag_per_airmass"] * np.asarray(lights["airmass"], float)
                - 2.5 * math.log10(summary["gain_e_per_adu"])
            )
        )
    # one catalogue, five columns: band b's magnitude is r + offset_b, so a frame zero-pointed
    # against another band's column is off by the offsets' difference
    ref = Table.read(night.refcat_path)
    for band, (_, offset) in BANDS.items():
        ref[band] = ref["r_mag"] + offset
        ref[f"{band}_err"] = np.full(len(ref), 0.01)
    ref.remove_columns([c for c in ("r_mag", "g_mag") if c in ref.colnames])
    # a sixth band with frames but no column
    for path in sorted(raw.glob("r_*.fits")):
        with fits.open(path) as hdul:
            if str(hdul[0].header.get("IMAGETYP", "")).lower().startswith("light"):
                hdul[0].header["FILTER"] = "Y"
                hdul[0].header["DATE-OBS"] = Time(
                    Time(hdul[0].header["DATE-OBS"]).mjd + 0.001, format="mjd"
                ).isot
                hdul.writeto(raw / f"Y_{path.name}", overwrite=True)
    root = tmp_path / "repo"
    epoch = Time(night.config.start_utc).jyear
    repo = Repository.init(
        root,
        overrides=[
            "astrometry.solve.reference_catalog.kind=file",
            "astrometry.solve.reference_catalog.path=refcat.ecsv",
            "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r, pmra: pmra_mas_yr, "
            f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
            "photometry.measure.ref_mag_columns={u: u, g: g, r: r, i: i, z: z}",
            "calib.calibration.require.flat=false",
        ],
    )
    ref.write(root / "refcat.ecsv")
    repo.close()
    res = runner.invoke(app, ["run", str(root), "--ingest", str(raw), "-q"])
    assert res.exit_code in (0, 2), res.output
    repo = Repository(root)
    with repo.registry.session() as s:
        filters = dict(s.execute(sa.select(Exposure.id, Exposure.filter)).all())
        rows = [(filters[im.exposure_id], im.photcal) for im in image_products(s, None, only_ok=False)]
    repo.close()
    by_band: dict[str, list[dict]] = {}
    for band, pc in rows:
        by_band.setdefault(band, []).append(pc or {})
    assert set(BANDS) <= set(by_band), by_band.keys()
    for band, (_, offset) in BANDS.items():
        zps = [pc["zp"] for pc in by_band[band]]
        assert all(pc["mag_system"] == "calibrated" and pc["zp_source"] for pc in by_band[band])
        dzp = float(np.median(zps)) - (truth[band] + offset)
        print(
            f"band {band}: zero point {np.median(zps):.4f}, truth {truth[band] + offset:.4f}, diff {dzp:+.4f}"
        )
        # each band against its own column: another band's column would be off by >= 0.15 mag
        # (the offsets differ by that much). Issue 10 asks for 0.01; measured here (2 frames of
        # 256 x 256 per band, ~100 stars): u +0.007, g +0.001, r -0.003, i +0.001, z -0.002.
        # Before the aperture correction ignored unseen neighbours (no star of these crowded
        # frames is alone in its 11-px aperture): u +0.002, r +0.03, z +0.03, g +0.06, i +0.07
        assert abs(dzp) < 0.01, (band, dzp)
        assert all(pc.get("zp_flag") is None for pc in by_band[band])
    for pc in by_band.get("Y", []):
        assert (
            pc["mag_system"] == "instrumental"
            and "no reference magnitude column for filter 'Y'" in pc["reason"]
        )
    assert by_band.get("Y"), "the Y frames were not reduced"
