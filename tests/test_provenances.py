"""One row per product: for each stage family, a changed critical parameter makes a second
provenance whose rows live beside the first one's, both queryable; ``--redo`` of one removes
only its rows and files. On a small simulated night through ``darkroom run``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.time import Time
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.pipeline.run import all_stages, forget_from
from darkroom.repo.models import (
    Association,
    AstromSolution,
    ImageQuality,
    Lightcurve,
    Measurement,
    PhotCal,
    Source,
    SourceCatalog,
    Transparency,
)
from darkroom.sim import SimConfig, simulate_night

pytestmark = pytest.mark.slow
runner = CliRunner()

SIM = SimConfig(
    seed=11, shape=(256, 288), n_science=6, n_bias=3, n_dark=3, n_flat=3, exptime_s=30.0, cadence_s=40.0
)

#: stage -> (an override of one of its critical parameters, the tables its rows live in)
CHANGES = {
    "extract": ("astrometry.extract.detect.threshold_sigma=4.0", (SourceCatalog,)),
    "quality": ("astrometry.limits.max_ellipticity=0.25", (ImageQuality,)),
    "astrometry": ("astrometry.solve.pointing_uncertainty_deg=0.2", (AstromSolution,)),
    "associate": ("photometry.associate.min_snr=6", (Association, Source)),
    "photometry": ("photometry.measure.limit_n_sigma=4", (PhotCal, Measurement)),
    "lightcurves": ("photometry.lightcurves.n_transparency_stars=20", (Transparency, Lightcurve)),
}


@pytest.fixture(scope="module")
def night_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("provenances")
    night = simulate_night(base / "night", config=SIM)
    host = night.truth.catalog[night.truth.catalog["id"] == night.truth.host_id][0]
    epoch = Time(SIM.start_utc).jyear
    overrides = [
        "astrometry.solve.reference_catalog.kind=file",
        "astrometry.solve.reference_catalog.path=refcat.ecsv",
        "astrometry.solve.reference_catalog.columns={ra: ra_deg, dec: dec_deg, mag: r_mag, pmra: pmra_mas_yr, "
        f"pmdec: pmdec_mas_yr, source_id: source_id, epoch_jyear: {epoch:.5f}}}",
        "photometry.measure.ref_mag_column=r_mag",
        f"targets=[{{name: SIM-1b, ra_deg: {host['ra_deg']:.8f}, dec_deg: {host['dec_deg']:.8f}}}]",
    ]
    root = base / "repo"
    Repository.init(root, overrides=overrides).close()
    shutil.copy(night.refcat_path, root / "refcat.ecsv")
    raw = night.raw_paths["light"][0].parent
    out = runner.invoke(app, ["run", str(root), "--ingest", str(raw), "-q"])
    assert out.exit_code == 0, out.output
    return root


def _count(repo: Repository, table, provenance: str) -> int:
    with repo.registry.session() as s:
        return s.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.provenance_id == provenance)
        )


def _files(repo: Repository, provenance: str) -> set[str]:
    return {
        str(p.relative_to(repo.root)) for p in repo.root.rglob("*") if p.is_file() and provenance in str(p)
    }


@pytest.mark.parametrize("stage", list(CHANGES))
def test_changed_parameter_gives_rows_beside_the_old_and_redo_removes_only_its_own(
    night_repo, stage, tmp_path
):
    root = tmp_path / "repo"
    shutil.copytree(night_repo, root)
    override, tables = CHANGES[stage]
    old_repo = Repository(root)
    old = {st.name: st.provenance_id for st in all_stages(old_repo.root, old_repo.config)}
    old_counts = {t.__tablename__: _count(old_repo, t, old[stage]) for t in tables}
    assert all(old_counts.values()), old_counts
    old_lc = old_repo.lightcurve(name="SIM-1b")
    old_repo.close()

    out = runner.invoke(app, ["run", str(root), "-q", "--set", override])
    assert out.exit_code == 0, out.output
    repo = Repository(root, overrides=[override])
    stages = all_stages(repo.root, repo.config)
    new = {st.name: st.provenance_id for st in stages}
    assert new[stage] != old[stage]
    for t in tables:  # both provenances' rows exist
        assert _count(repo, t, old[stage]) == old_counts[t.__tablename__]
        assert _count(repo, t, new[stage]) > 0
    provs = repo.provenances()
    assert {old[stage], new[stage]} <= set(provs["provenance_id"])
    assert bool(provs[provs["provenance_id"] == new[stage]]["current"][0])
    # the Python API reads either provenance's light curve
    lc_new = repo.lightcurve(name="SIM-1b")
    lc_old = repo.lightcurve(name="SIM-1b", provenance=old["photometry"])
    assert len(lc_new) == len(old_lc) == len(lc_old)
    np.testing.assert_allclose(lc_old["flux"], old_lc["flux"])
    # --redo of the new provenance removes only its rows and files (and its readers')
    new_files = _files(repo, new[stage])
    forgotten = forget_from(repo.registry, stages, stage)
    assert forgotten[0] == stage
    for t in tables:
        assert _count(repo, t, new[stage]) == 0
        assert _count(repo, t, old[stage]) == old_counts[t.__tablename__]
    removable = {f for f in new_files if not f.startswith("reports/")}
    assert not any(
        (root / f).exists() for f in removable if f.endswith((".parquet", ".wcs", ".ecsv", ".png"))
    )
    # the old provenance's files stay (quality and associate write rows only)
    assert _files(repo, old[stage]) or stage in ("quality", "associate")
    repo.close()
