"""Calibration stages on real nights: ARCSAT masters, bad pixels, 81 calibrated frames;
a missing flat fails with a reason; re-running does nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import sqlalchemy as sa
from astropy.io import fits

from darkroom.facade import Repository
from darkroom.maskbits import MaskBit
from darkroom.pipeline.ingest import ingest_paths
from darkroom.pipeline.run import section_stages
from darkroom.pipeline.runner import run_stage
from darkroom.repo.models import Calib, Image, Task
from darkroom.repo.store import sha256_file

pytestmark = pytest.mark.slow


def test_arcsat_masters(arcsat_calibrated):
    repo, reports = arcsat_calibrated
    assert [(r.stage, r.n_done, r.n_failed) for r in reports] == [
        ("master_bias", 1, 0),
        ("master_dark", 1, 0),
        ("master_flat", 1, 0),
        ("sky_flat", 0, 0),  # the night has flats: no sky flat
        ("bad_pixels", 1, 0),
        ("calibrate", 81, 0),
    ]
    with repo.registry.session() as s:
        masters = {c.kind: c for c in s.scalars(sa.select(Calib))}
        n_inputs = {c.kind: len(c.inputs) for c in masters.values()}
    assert n_inputs == {"bias": 5, "dark": 5, "flat": 5, "bpm": 0}
    assert masters["dark"].exptime_s == 60.0
    # five darks: the default (dark_model 'auto') denoises them, and the master says so
    assert masters["dark"].stats["dark_model"] == "denoised"
    assert 0.99 < masters["dark"].stats["modelled_fraction"] < 1.0
    assert fits.getheader(repo.path(masters["dark"].path))["DARKMODL"] == "denoised"
    assert masters["flat"].filter == "z"
    for c in masters.values():
        assert sha256_file(repo.path(c.path)) == c.sha256
    # Gain and read noise measured on the night's own frames (MANIFEST: ~1.3 e-/adu, ~12 adu).
    assert masters["flat"].stats["gain_e_per_adu"] == pytest.approx(1.3, abs=0.1)
    assert masters["bias"].stats["read_noise_adu"] == pytest.approx(12, abs=1.0)


def test_arcsat_master_bias_noise_is_single_over_sqrt5(arcsat_calibrated, arcsat_dir):
    repo, _ = arcsat_calibrated
    with repo.registry.session() as s:
        bias = s.scalars(sa.select(Calib).where(Calib.kind == "bias")).one()
        assert len(bias.inputs) == 5
    master = fits.getdata(repo.path(bias.path)).astype(np.float64)[100:900, 100:900]
    raws = [
        fits.getdata(p).astype(np.float64)[100:900, 100:900]
        for p in sorted(arcsat_dir.glob("Bias_*.fits.gz"))
    ]
    # Random (read) noise of one bias: the fixed pattern cancels in a difference.
    single = np.std(raws[0] - raws[1]) / np.sqrt(2)
    keep = np.all([np.abs(r - np.median(r)) < 8 * single for r in raws], axis=0)
    # The fixed pattern is what independent frames share: its variance is their covariance.
    centred = [r[keep] - r[keep].mean() for r in raws]
    var_fixed = np.mean([np.mean(centred[i] * centred[j]) for i in range(5) for j in range(i + 1, 5)])
    master_random = np.sqrt(np.var(master[keep]) - var_fixed)
    assert master_random == pytest.approx(single / np.sqrt(5), rel=0.15)


def test_arcsat_defect_is_flagged_and_frames_calibrated(arcsat_calibrated):
    repo, _ = arcsat_calibrated
    with repo.registry.session() as s:
        images = s.scalars(sa.select(Image).order_by(Image.id)).all()
    # the session's ARCSAT repository is shared: other modules may add calibrations of their own
    assert len({im.exposure_id for im in images}) == 81
    with fits.open(repo.path(images[10].path)) as hdul:
        names = [h.name for h in hdul[1:]]
        # the astrometry stage (another module's, on the shared repository) may have written its
        # solution into SCI, keeping the frame's own WCS aside as GIVENWCS
        assert names[:3] == ["SCI", "MASK", "VAR"] and set(names[3:]) <= {"GIVENWCS"}
        sci, mask, var = hdul["SCI"].data, hdul["MASK"].data, hdul["VAR"].data
        h = hdul["SCI"].header
        for key in ("BIASCORR", "DARKCORR", "FLATCORR", "BPM", "CRCORR"):
            assert key in h, key
    # The fixed bright defect near (824, 357) (MANIFEST, 0-based x, y) is BAD in every frame.
    assert (mask[352:363, 819:830] & MaskBit.BAD).any()
    assert sci.dtype.kind == var.dtype.kind == "f" and sci.dtype.itemsize == var.dtype.itemsize == 4
    sky = np.median(sci)
    good = (mask == 0) & (np.abs(sci - sky) < 5 * np.sqrt(np.median(var)))
    # The variance plane predicts the sky scatter (within 20%).
    measured = np.var(sci[good][:200000])
    assert np.median(var[good]) == pytest.approx(measured, rel=0.2)


def test_rerun_does_nothing(arcsat_calibrated):
    repo, _ = arcsat_calibrated
    again = [run_stage(repo.registry, st) for st in section_stages(repo.root, repo.config, "calib")]
    assert [r.n_planned for r in again] == [0, 0, 0, 0, 0, 0]


def _night_subset(tmp_path, arcsat_dir, patterns):
    raw = tmp_path / "raw"
    raw.mkdir()
    for pattern in patterns:
        for p in sorted(arcsat_dir.glob(pattern))[:5]:
            shutil.copy(p, raw / p.name)
    for p in sorted(arcsat_dir.glob("XO1-b_*"))[:2]:
        shutil.copy(p, raw / p.name)
    repo = Repository.init(tmp_path / "repo")
    ingest_paths(repo.registry, [raw])
    return repo


def test_night_without_flats_goes_on_by_default_and_says_so(tmp_path, arcsat_dir, caplog):
    """require auto: a night with no flat frames is calibrated without a flat, warned once."""
    repo = _night_subset(tmp_path, arcsat_dir, ["Bias_*", "Dark_*"])
    with caplog.at_level("WARNING"):
        reports = [run_stage(repo.registry, st) for st in section_stages(repo.root, repo.config, "calib")]
    assert (reports[-1].n_done, reports[-1].n_failed) == (2, 0)
    warnings = [r.getMessage() for r in caplog.records if "no flat frames" in r.getMessage()]
    assert len(warnings) == 1 and "calib.calibration.require.flat=auto" in warnings[0]
    with repo.registry.session() as s:
        image = s.scalars(sa.select(Image)).first()
        assert image.calib["skipped_masters"] == ["flat"]
    header = fits.getheader(repo.path(image.path), "SCI")
    assert "FLATCORR" not in header and "BIASCORR" in header and "DARKCORR" in header
    repo.close()


def test_missing_flat_fails_with_a_clear_reason(tmp_path, arcsat_dir):
    _night_subset(tmp_path, arcsat_dir, ["Bias_*", "Dark_*"]).close()
    repo = Repository(tmp_path / "repo", overrides=["calib.calibration.require.flat=true"])
    reports = [run_stage(repo.registry, st) for st in section_stages(repo.root, repo.config, "calib")]
    cal = reports[-1]
    assert (cal.n_done, cal.n_failed) == (0, 2)
    reason = cal.failures[0][1]
    assert reason.startswith("no master flat") and "filter z" in reason
    assert "calib.calibration.require.flat=false" in reason
    assert "\n" not in reason and "Traceback" not in reason
    with repo.registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Task).where(Task.state == "failed")) == 2
    repo.close()


def test_require_lets_a_user_accept_frames_without_dark(tmp_path, arcsat_dir):
    repo = _night_subset(tmp_path, arcsat_dir, ["Bias_*", "domeflat*", "*flat*", "Flat*"])
    with repo.registry.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Calib)) == 0
    repo.close()
    repo = Repository(tmp_path / "repo", overrides=["calib.calibration.require.dark=true"])
    strict = [run_stage(repo.registry, st) for st in section_stages(repo.root, repo.config, "calib")]
    assert (strict[-1].n_done, strict[-1].n_failed) == (0, 2)
    assert strict[-1].failures[0][1].startswith("no master dark")
    repo.close()
    lenient = Repository(tmp_path / "repo", overrides=["calib.calibration.require.dark=false"])
    reports = [
        run_stage(lenient.registry, st) for st in section_stages(lenient.root, lenient.config, "calib")
    ]
    assert (reports[-1].n_done, reports[-1].n_failed) == (2, 0)
    with lenient.registry.session() as s:
        image = s.scalars(sa.select(Image)).first()
    assert "DARKCORR" not in fits.getheader(lenient.path(image.path), "SCI")
    lenient.close()


def test_new_master_is_compared_with_the_previous_one_of_its_group(tmp_path):
    from datetime import datetime

    from darkroom.sim import SimConfig, simulate_night

    nights = [
        simulate_night(
            tmp_path / "a",
            config=SimConfig(seed=1, n_science=2, shape=(128, 160), start_utc=datetime(2025, 6, 2, 4, 10)),
        ),
        simulate_night(
            tmp_path / "b",
            config=SimConfig(
                seed=2,
                n_science=2,
                shape=(128, 160),
                bias_level_adu=1100,
                start_utc=datetime(2025, 6, 9, 4, 10),
            ),
        ),
    ]
    repo = Repository.init(tmp_path / "repo")
    for night in nights:
        ingest_paths(repo.registry, night.raw_paths["bias"])
    bias_stage = section_stages(repo.root, repo.config, "calib")[0]
    report = run_stage(repo.registry, bias_stage)
    assert report.n_done == 2
    with repo.registry.session() as s:
        first, second = s.scalars(sa.select(Calib).order_by(Calib.night)).all()
    assert first.flag is None and "comparison" not in first.stats
    # The bias level moved by 100 adu, far beyond the masters' noise: flagged, with the figures kept.
    assert second.stats["comparison"]["mean_shift"] == pytest.approx(100, abs=5)
    assert second.flag and "mean level changed" in second.flag
    repo.close()
