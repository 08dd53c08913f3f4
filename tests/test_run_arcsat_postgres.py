"""The ARCSAT night with one `darkroom run` on PostgreSQL gives what the stage-by-stage path
gave on SQLite: the same masters and calibrated frames (byte for byte) and the same light curve."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from darkroom.facade import Repository
from darkroom.pipeline.run import all_stages
from darkroom.pipeline.runner import run_stage
from darkroom.repo.models import Calib, Exposure, Image
from darkroom.repo.registry import Registry

pytestmark = pytest.mark.slow
XO1 = dict(ra=240.549333, dec=28.169556)


def _products(registry: Registry) -> dict[str, set]:
    with registry.session() as s:
        calibs = {(c.kind, c.path, c.sha256) for c in s.scalars(sa.select(Calib))}
        images = set(
            s.execute(
                sa.select(Exposure.sha256, Image.path, Image.sha256).join(
                    Exposure, Image.exposure_id == Exposure.id
                )
            )
        )
    return {"calibs": calibs, "images": images}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_arcsat_run_on_postgresql_equals_stage_by_stage_on_sqlite(
    arcsat_calibrated, arcsat_dir, tmp_path, db_url
):
    sqlite_repo, _ = arcsat_calibrated
    for stage in all_stages(sqlite_repo.root, sqlite_repo.config):  # stage by stage (no-ops once done)
        assert run_stage(sqlite_repo.registry, stage).n_failed == 0
    expected_lc = sqlite_repo.lightcurve(**XO1, differential=True)

    root = tmp_path / "pg"
    cmd = [sys.executable, "-m", "darkroom.cli"]
    subprocess.run([*cmd, "init", str(root), "--db", db_url], check=True, capture_output=True, timeout=120)
    run = subprocess.run(
        [*cmd, "run", str(root), "--ingest", str(arcsat_dir), "-q"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    pg_repo = Repository(root)
    assert pg_repo.registry.backend == "postgresql"
    assert _products(pg_repo.registry) == _products(sqlite_repo.registry)
    lc = pg_repo.lightcurve(**XO1, differential=True)
    pg_repo.close()
    assert len(lc) == len(expected_lc) >= 50
    np.testing.assert_array_equal(np.asarray(lc["mjd_utc"]), np.asarray(expected_lc["mjd_utc"]))
    for col in ("flux", "rel_flux", "rel_flux_err", "bjd_tdb", "airmass"):
        np.testing.assert_allclose(
            np.asarray(lc[col], float), np.asarray(expected_lc[col], float), rtol=1e-9, err_msg=col
        )
