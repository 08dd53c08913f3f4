"""Upgrade in place: a registry of revision 0002 (products in JSON slots of the Image row) opens,
is backed up, and every row and product is reachable in the per-product tables of 0003."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.config import CONFIG_NAME, load_config, save_config
from darkroom.facade import Repository
from darkroom.pipeline.products import image_products, poor_image_ids
from darkroom.repo.models import (
    Association,
    AstromSolution,
    Image,
    ImageQuality,
    PhotCal,
    SourceCatalog,
    Transparency,
)
from darkroom.repo.registry import Registry, alembic_config

CALIB = {"gain_e_per_adu": 1.4, "read_noise_e": 9.1, "steps": ["overscan", "bias", "flat"]}


def _old_rows() -> dict[str, list[dict]]:
    """What the 0002-era stages wrote: one field, three frames, every JSON slot in use."""
    now = datetime(2026, 11, 30, 3, 0, 0)
    provs = [
        ("cal0002", "calibrate"),
        ("ext0002", "extract"),
        ("qual0002", "quality"),
        ("ast0002", "astrometry"),
        ("asc0002", "associate"),
        ("pho0002", "photometry"),
        ("lc0002", "lightcurves"),
    ]
    exposures, images = [], []
    for k in range(3):
        exposures.append(
            dict(id=k + 1, sha256=f"{k:064d}", path=f"/raw/f{k}.fits", size_bytes=10, state="ok",
                 ingested_utc=now, frame_type="light", filter="V", mjd_mid=60000.1 + k / 100, meta={})
        )  # fmt: skip
        quality = {
            "calib": CALIB,
            "fwhm_pix": 3.0 + k,
            "ellipticity": 0.1,
            "sky_adu": 100.0,
            "sky_rms_adu": 5.0,
            "n_sources": 40 - k,
            "pixel_scale_arcsec": 0.67,
            "detect": {"provenance_id": "ext0002", "catalog_path": f"catalogs/ext0002/f{k}.parquet"},
            "flag": {"provenance_id": "qual0002", "table": "reports/quality_n.ecsv", "plot": None},
            "poor_reason": None,
        }
        transparency = {"provenance_id": "lc0002", "value": 1.0, "of_clear": 1.0, "low": False}
        flag = "good"
        if k == 2:  # clouds: the 0002 lightcurves stage had marked the good frame poor
            quality["poor_reason"] = "low transparency (0.40 of clear)"
            flag = "poor"
            transparency = {
                "provenance_id": "lc0002",
                "value": 0.4,
                "of_clear": 0.4,
                "low": True,
                "marked_poor": {
                    "previous_flag": "good",
                    "previous_reason": None,
                    "poor_reason": "low transparency (0.40 of clear)",
                },
            }
        if k == 1:  # a frame the quality limits found poor
            quality["poor_reason"] = "fwhm_pix 4.0 > 3.5"
            flag = "poor"
        images.append(
            dict(
                id=k + 1, exposure_id=k + 1, provenance_id="cal0002", path=f"images/cal0002/f{k}.fits",
                sha256="ab" * 32, filter="V", mjd_mid=60000.1 + k / 100, night="2026-11-29", field="F",
                quality=quality, quality_flag=flag,
                astrom={"provenance_id": "ast0002", "method": "hint", "quality": "good", "n_matched": 30,
                        "rms_arcsec": 0.2, "reason": None, "wcs": {"CTYPE1": "RA---TAN"},
                        "wcs_path": f"catalogs/ast0002/f{k}.wcs", "reference_image_id": 1},
                astrom_flag="good",
                photcal={"provenance_id": "pho0002", "mag_system": "calibrated", "zp": 22.0 + k / 10,
                         "zp_err": 0.01, "colour_term": 0.05, "mag_limit": 19.5, "n_used": 25,
                         "association": {"provenance_id": "asc0002", "coords": "sky", "field": "F",
                                         "radius": 1.0},
                         "transparency": transparency},
                catalog_path=f"catalogs/ext0002/f{k}.parquet", created_utc=now,
            )
        )  # fmt: skip
    return {
        "provenance": [
            dict(id=pid, stage=st, params={}, code_version="0.1", upstream=[], created_utc=now)
            for pid, st in provs
        ],
        "exposure": exposures,
        "image": images,
        "source": [
            dict(
                id=1,
                provenance_id="asc0002",
                field="F",
                ra_deg=10.0,
                dec_deg=20.0,
                n_epochs=3,
                mean_mag={"V": 12.0},
            )
        ],
        "measurement": [
            dict(
                source_id=1,
                image_id=k + 1,
                provenance_id="pho0002",
                x=10.0,
                y=20.0,
                flux=1000.0 + k,
                flux_err=10.0,
                mag=12.0,
                mag_err=0.01,
                flags=0,
                forced=False,
                mjd_mid=60000.1 + k / 100,
            )
            for k in range(3)
        ],
    }


def _repository_at_0002(root, url: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    save_config(load_config(None, [f"registry.url={url}"]), root / CONFIG_NAME)
    reg = Registry(url if not url.startswith("sqlite") else f"sqlite:///{root / 'registry.db'}")
    cfg = alembic_config(reg.url)
    with reg.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        meta = sa.MetaData()
        meta.reflect(conn)
        for name, rows in _old_rows().items():
            conn.execute(meta.tables[name].insert(), rows)
    assert reg.revision() == "0002"
    reg.dispose()


def test_registry_of_0002_upgrades_on_open_with_every_product_reachable(db_url, tmp_path):
    root = tmp_path / "repo"
    _repository_at_0002(root, db_url if not db_url.startswith("sqlite") else "sqlite:///registry.db")
    repo = Repository(root)  # upgraded on open, backed up first
    assert repo.registry.is_current()
    assert repo.backup_path is not None and repo.backup_path.is_file() and repo.backup_path.stat().st_size > 0
    assert repo.backup_path.parent == root / "backups"
    with repo.registry.session() as s:
        counts = {
            t.__tablename__: s.scalar(sa.select(sa.func.count()).select_from(t))
            for t in (Image, SourceCatalog, ImageQuality, AstromSolution, Association, PhotCal, Transparency)
        }
        assert counts == dict.fromkeys(counts, 3)
        images = {ip.id: ip for ip in image_products(s, None)}
        assert all(ip.calib == CALIB for ip in images.values())  # what calibration made stays on Image
        assert images[2].catalog_path == "catalogs/ext0002/f1.parquet"
        assert images[2].quality["fwhm_pix"] == 4.0 and images[2].quality["pixel_scale_arcsec"] == 0.67
        assert images[1].astrom["wcs_path"] == "catalogs/ast0002/f0.wcs" and images[1].astrom_flag == "good"
        assert images[1].astrom_row.n_matches == 30 and images[1].astrom_row.rms_arcsec == 0.2
        assert (
            images[3].photcal_row.zp == pytest.approx(22.2)
            and images[3].photcal["association"]["field"] == "F"
        )
        # the quality verdict is the quality stage's again: the transparency mark became a row
        assert (images[3].quality_flag, images[3].quality_row.reason) == ("good", None)
        assert (images[2].quality_flag, images[2].quality_row.reason) == ("poor", "fwhm_pix 4.0 > 3.5")
        assert images[3].transparency.flag == "poor" and images[3].transparency.value == 0.4
        assert poor_image_ids(s, quality=["qual0002"], transparency=["lc0002"]) == {
            2: "fwhm_pix 4.0 > 3.5",
            3: "low transparency (0.40 of clear)",
        }
        assert {r.provenance_id for r in s.scalars(sa.select(SourceCatalog))} == {"ext0002"}
    # measurements and sources of the old provenances, through the Python API
    meas = repo.measurements(source_id=1, provenance_id="pho0002")
    assert list(meas["flux"]) == [1000.0, 1001.0, 1002.0]
    assert len(repo.sources(provenance="asc0002")) == 1
    table = repo.images(provenance=["ext0002", "qual0002", "ast0002", "pho0002", "lc0002"])
    assert list(table["poor"]) == [False, True, True] and list(table["zp"]) == pytest.approx(
        [22.0, 22.1, 22.2]
    )
    provs = repo.provenances()
    assert set(provs["provenance_id"]) >= {"ext0002", "lc0002"} and not any(
        provs[provs["provenance_id"] == "ext0002"]["current"]
    )
    repo.close()
    # opening again changes nothing and makes no new backup
    again = Repository(root)
    assert again.backup_path is None and again.registry.is_current()
    again.close()


def test_upgrade_command_backs_up_and_reports(tmp_path):
    root = tmp_path / "repo"
    _repository_at_0002(root, "sqlite:///registry.db")
    out = CliRunner().invoke(app, ["upgrade", str(root)])
    assert out.exit_code == 0, out.output
    assert "0002" in out.output and "backups" in out.output
    (backup,) = (root / "backups").iterdir()
    assert Registry(f"sqlite:///{backup}").revision() == "0002"  # the copy is the old registry
    out = CliRunner().invoke(app, ["upgrade", str(root)])
    assert out.exit_code == 0 and "up to date" in out.output


def test_init_on_an_old_repository_backs_it_up_before_upgrading(tmp_path):
    root = tmp_path / "repo"
    _repository_at_0002(root, "sqlite:///registry.db")
    out = CliRunner().invoke(app, ["init", str(root)])
    assert out.exit_code == 0, out.output
    (backup,) = (root / "backups").iterdir()
    assert Registry(f"sqlite:///{backup}").revision() == "0002"
    with Repository(root) as repo:
        assert repo.registry.is_current()
