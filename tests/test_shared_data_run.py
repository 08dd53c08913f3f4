"""Every folder of shared real data reduces with ``darkroom run`` and no profile.

For each folder of ../shared/data: its FITS files are ingested in place into a fresh
repository with the default settings (the blind solver given 10 s, not 60), and
``darkroom run`` is invoked. Nothing may crash (exit 0, or 2 with every failure listed
with a one-line reason); every frame that is science (a light that passed ingest) becomes
a calibrated image; every file left out carries its reason. To stay lean, a folder with many frames is cut to at most
``PER_KIND`` files per file-name family (e.g. Bias_*, Dark_*, XO1-b_*), enough for
masters and a few lights.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from darkroom.cli import app
from darkroom.facade import Repository
from darkroom.io.rawfits import is_fits_name
from darkroom.pipeline.ingest import ingest_paths
from darkroom.repo.models import Exposure, Image, Task
from darkroom.testing import shared_data_dir

PER_KIND = 5


def _folders() -> list[str]:
    """The data sets; a missing data folder fails the collection loudly (shared_data_dir)."""
    return sorted(p.name for p in Path(shared_data_dir()).iterdir() if p.is_dir())


def _family(name: str) -> str:
    """A file's family: its name up to the first digit run (Bias_BIN1_2025... -> 'bias_bin')."""
    return re.split(r"\d", name.lower(), maxsplit=1)[0]


def _files(folder: Path) -> list[Path]:
    fits_files = sorted(p for p in folder.rglob("*") if p.is_file() and is_fits_name(p.name))
    by_family: dict[str, list[Path]] = defaultdict(list)
    for p in fits_files:
        by_family[_family(p.name)].append(p)
    return [p for family in sorted(by_family) for p in by_family[family][:PER_KIND]]


@pytest.mark.slow
@pytest.mark.parametrize("folder", _folders())
def test_shared_folder_reduces_with_no_profile(folder: str, tmp_path: Path) -> None:
    files = _files(Path(shared_data_dir()) / folder)
    repo = Repository.init(tmp_path / "repo")
    try:
        summary = ingest_paths(repo.registry, files, config=repo.config.ingest, profile_root=repo.root)
        assert summary.n_files == len(files)
        for item in summary.quarantined:
            assert item.reason and "\n" not in item.reason, item.path
    finally:
        repo.close()

    # The blind solver's CPU budget is cut from 60 s to 10 s: sep's synthetic test image has no
    # sky to solve, and its search would otherwise cost a minute without changing what is checked.
    result = CliRunner().invoke(
        app, ["run", str(tmp_path / "repo"), "--set", "astrometry.solve.blind.cpu_limit_s=10"]
    )
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output

    repo = Repository(tmp_path / "repo")
    try:
        with repo.registry.session() as s:
            exposures = s.scalars(select(Exposure)).all()
            imaged = set(s.scalars(select(Image.exposure_id)))
            failed = s.scalars(select(Task).where(Task.state == "failed")).all()
            for task in failed:
                assert task.reason and "\n" not in task.reason.strip(), task.reason
            for e in exposures:
                if e.state != "ok":
                    assert e.reason, e.path  # every file left out has its reason
            lights = [e for e in exposures if e.state == "ok" and e.frame_type == "light"]
            missing = [Path(e.path).name for e in lights if e.id not in imaged]
            assert not missing, f"science frames without an image: {missing}"
    finally:
        repo.close()


@pytest.mark.parametrize("folder", _folders())
def test_frames_kept_from_ingest_calibrate_as_if_read_again(folder: str, tmp_path: Path) -> None:
    """What ingest keeps in memory for the masters and calibrate (a serial `run --ingest`) gives
    the calibration files of reading each file again, on every camera of the shared data."""
    from darkroom.pipeline.drive import drive_stages, raw_frames_kept
    from darkroom.pipeline.run import section_stages
    from darkroom.repo.store import sha256_file

    files = _files(Path(shared_data_dir()) / folder)
    made = {}
    for name, budget in (("kept", 512.0), ("read_again", 0.0)):
        repo = Repository.init(tmp_path / name)
        cfg = repo.config.ingest.model_copy(update={"keep_in_memory_mb": budget})
        try:
            with raw_frames_kept(cfg, serial=True) as keeper:
                ingest_paths(repo.registry, files, config=cfg, profile_root=repo.root)
                drive_stages(repo.registry, section_stages(repo.root, repo.config, "calib"), quiet=True)
                taken = keeper.n_taken if keeper is not None else None
            with repo.registry.session() as s:
                failed = sorted(
                    (t.key, t.reason) for t in s.scalars(select(Task).where(Task.state == "failed"))
                )
        finally:
            repo.close()
        products = sorted(
            p for d in ("calib", "images") for p in (tmp_path / name / d).rglob("*") if p.is_file()
        )
        made[name] = ({str(p.relative_to(tmp_path / name)): sha256_file(p) for p in products}, failed)
        if budget:
            n_taken = taken
    assert made["kept"] == made["read_again"]
    files_made = made["kept"][0]
    if any(p.startswith("images/") for p in files_made):
        assert n_taken > 0  # a folder with calibrated frames took them from the keeper
