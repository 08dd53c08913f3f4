"""Declared stages: provenance follows the declarations, each stage sees only its settings,
families select stages, the thread executor keeps its limit, quarantine is the stage's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from darkroom.config import load_config
from darkroom.errors import BadInputError, ConfigError
from darkroom.pipeline.run import all_stages, section_stages
from darkroom.pipeline.runner import ThreadExecutor, run_stage
from darkroom.pipeline.stage import Stage, Unit
from darkroom.pipeline.stages import STAGES, build_stages, downstream_of, settings_view
from darkroom.repo.models import Exposure, Task
from darkroom.repo.registry import Registry

ROOT = Path("/nonexistent-repo")


def _changed(*overrides: str) -> list[str]:
    before = all_stages(ROOT, load_config(None))
    after = all_stages(ROOT, load_config(None, list(overrides)))
    return [a.name for a, b in zip(before, after, strict=True) if a.provenance_id != b.provenance_id]


def test_flat_clipping_makes_no_new_bias_or_dark_master():
    changed = _changed("calib.masters.flat.n_sigma_high=4.5")
    assert "master_bias" not in changed and "master_dark" not in changed
    # the sky flat stage reads the master flats (it makes a flat only where none serves)
    assert changed[:4] == ["master_flat", "sky_flat", "bad_pixels", "calibrate"]
    assert changed[-1] == "lightcurves"


def test_quality_limit_redoes_the_light_curves_only():
    assert _changed("astrometry.limits.max_ellipticity=0.2") == ["quality", "lightcurves"]


def test_each_family_parameter_changes_its_stage_and_readers():
    assert _changed("astrometry.extract.detect.threshold_sigma=4.0")[0] == "extract"
    assert _changed("astrometry.solve.pointing_uncertainty_deg=0.3") == [
        "astrometry",
        "associate",
        "photometry",
        "lightcurves",
    ]
    assert _changed("photometry.associate.min_snr=7") == ["associate", "photometry", "lightcurves"]
    assert _changed("photometry.measure.limit_n_sigma=3") == ["photometry", "lightcurves"]
    assert _changed("photometry.lightcurves.n_transparency_stars=20") == ["lightcurves"]
    # a target list is an extra input of the lightcurves stage only
    assert _changed("targets=[{name: X, ra_deg: 10, dec_deg: 20}]") == ["lightcurves"]


def test_stage_sees_only_declared_settings():
    cfg = load_config(None, ["calib.masters.flat.n_sigma_high=4.5", "calib.bad_pixels.hot_n_sigma=9"])
    stages = {s.name: s for s in build_stages(ROOT, cfg)}
    assert stages["master_bias"].config.masters.flat.n_sigma_high == 3.0  # undeclared: default
    assert stages["master_flat"].config.masters.flat.n_sigma_high == 4.5
    assert stages["calibrate"].config.bad_pixels.hot_n_sigma != 9
    view, critical = settings_view(cfg, ("calib.masters.bias", "calib.grouping"))
    assert set(critical) == {"calib.masters.bias", "calib.grouping"}
    assert view.masters.flat.n_sigma_high == 3.0


def test_stage_list_is_ordered_by_reads_and_names_unique():
    seen: set[str] = set()
    for cls in STAGES:
        assert cls.name not in seen
        assert set(cls.reads) <= seen, cls.name
        seen.add(cls.name)
    stages = build_stages(ROOT, load_config(None))
    by_name = {s.name: s for s in stages}
    assert by_name["lightcurves"].upstream == tuple(
        by_name[n].provenance_id for n in ("quality", "associate", "photometry")
    )
    assert [s.name for s in downstream_of(stages, "quality")] == ["quality", "lightcurves", "coadd"]
    assert [s.name for s in section_stages(ROOT, load_config(None), "astrometry")] == [
        "extract",
        "quality",
        "astrometry",
    ]


def test_families_select_stages():
    assert all_stages(ROOT, load_config(None, ["run.families=[survey]"])) == []
    night = [cls for cls in STAGES if cls.family == "night"]
    assert len(all_stages(ROOT, load_config(None, ["run.families=[night]"]))) == len(night) == 12
    # the optional coadd stage (family images) runs only when enabled
    assert [s.name for s in all_stages(ROOT, load_config(None, ["run.families=[images]"]))] == []
    enabled = load_config(None, ["run.families=[images]", "coadd.enabled=true"])
    assert [s.name for s in all_stages(ROOT, enabled)] == ["coadd"]
    with pytest.raises(ConfigError, match="unknown"):
        all_stages(ROOT, load_config(None, ["run.families=[nights]"]))


class _Cfg(BaseModel):
    delay_s: float = 0.5


class _SlowStage(Stage):
    """Network-like units: sleep, record the most units seen in flight at once."""

    name = "slow"
    family = "survey"
    executor = "thread"
    max_in_flight = 3

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def plan(self, session):
        return [Unit(key=f"u{i}", payload={"i": i}) for i in range(10)]

    def run(self, unit):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(self.config.delay_s)
        with self.lock:
            self.now -= 1
        if unit.payload["i"] == 7:
            raise BadInputError("archive says no such object")
        return unit.payload["i"]

    def record(self, session, unit, result):
        session.add(Exposure(sha256=f"{result:064d}", path=f"/s/{result}", size_bytes=0, meta={}))

    def quarantine(self, session, unit, reason):
        self.quarantined = (unit.key, reason)


def test_thread_executor_keeps_its_limit_and_stage_quarantines(db_url, tmp_path):
    reg = Registry(db_url)
    reg.upgrade()
    stage = _SlowStage(tmp_path, _Cfg())
    report = run_stage(reg, stage)
    assert 2 <= stage.peak <= 3  # never more than max_in_flight at once, and units did overlap
    assert (report.n_done, report.n_failed) == (9, 1)
    assert stage.quarantined == ("u7", "archive says no such object")
    with reg.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Exposure)) == 9
        assert s.scalar(sa.select(Task.reason).where(Task.state == "failed")) == "archive says no such object"
    reg.dispose()


def test_thread_executor_yields_every_unit():
    ex = ThreadExecutor(2)
    out = sorted(
        r
        for _, r, e in ex.map_units(lambda u: u.payload["i"] * 2, (Unit(f"{i}", {"i": i}) for i in range(7)))
    )
    assert out == [0, 2, 4, 6, 8, 10, 12]


def test_survey_stages_built_from_their_section_have_the_run_provenance():
    from darkroom.pipeline.cutouts import CutoutStage
    from darkroom.pipeline.sdss import SdssDownloader, SdssFieldFinder
    from darkroom.pipeline.ztf import ZtfDownloader

    def provenances(*overrides: str) -> dict[str, str]:
        cfg = load_config(None, ["surveys.run=[ztf, sdss, cutouts]", *overrides])
        by_run = {s.name: s.provenance_id for s in all_stages(ROOT, cfg) if s.family == "survey"}
        # as ``darkroom survey ...`` builds them: from the surveys section alone
        fields = SdssFieldFinder(ROOT, cfg.surveys)
        files = SdssDownloader(ROOT, cfg.surveys, upstream=(fields.provenance_id,))
        by_command = {
            "ztf": ZtfDownloader(ROOT, cfg.surveys).provenance_id,
            "sdss_fields": fields.provenance_id,
            "sdss": files.provenance_id,
            "cutouts": CutoutStage(ROOT, cfg.surveys, upstream=(files.provenance_id,)).provenance_id,
        }
        assert by_command == by_run
        return by_run

    base = provenances("surveys.ztf.mag_limit=20", "surveys.sdss.bands=[g, r]")

    def changed(*overrides: str) -> list[str]:
        after = provenances("surveys.ztf.mag_limit=20", "surveys.sdss.bands=[g, r]", *overrides)
        return [name for name in base if after[name] != base[name]]

    assert changed("surveys.ztf.radius_arcsec=3") == ["ztf"]
    assert changed("surveys.sdss.max_fields=2") == ["sdss_fields", "sdss", "cutouts"]
    assert changed("surveys.cutouts.size=48") == ["cutouts"]
    # not critical: where the cache lives, fsync, the archive's address, threads and HTTP politeness
    for override in (
        "surveys.cache_dir=/elsewhere",
        "surveys.fsync=false",
        "surveys.ztf.base_url=http://mirror.example",
        "surveys.ztf.http.concurrency=16",
        "surveys.cutouts.workers=8",
    ):
        assert changed(override) == [], override
