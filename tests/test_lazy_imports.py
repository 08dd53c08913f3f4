"""Reading the configuration and starting the CLI do not import the numerical libraries.

Each check runs in a fresh interpreter (``sys.modules`` of this test process already holds
everything). Not timed: it checks which modules are loaded, which is what start-up costs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from darkroom.pipeline.kernels import KERNEL_USERS

SRC = Path(__file__).resolve().parents[1] / "src"

#: algorithm libraries no configuration or CLI start-up needs
HEAVY = (
    "astroscrappy",
    "photutils",
    "reproject",
    "dask",
    "distributed",
    "matplotlib",
    "requests",
    "pyarrow",
    "scipy.stats",
    "astropy.visualization",
)

#: settings modules of the algorithm packages: they must not load their algorithms.
SETTINGS = (
    "darkroom.astrom.settings",
    "darkroom.calib.settings",
    "darkroom.detect.settings",
    "darkroom.imaging.settings",
    "darkroom.phot.settings",
    "darkroom.surveys.settings",
    "darkroom.timeseries.settings",
)


def _loaded(code: str) -> set[str]:
    """Module names in sys.modules after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _hits(loaded: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in loaded)


#: astropy's tables and what they pull in (units, time, the ASCII and VOTable readers): the
#: stages' algorithms and the report read and write tables, starting a run does not
TABLES = ("astropy.table", "astropy.units", "astropy.time", "astropy.io.ascii", "astropy.io.votable")


@pytest.mark.parametrize("module", ["darkroom.config", "darkroom.cli"])
def test_config_and_cli_import_no_heavy_library(module: str) -> None:
    loaded = _loaded(f"import {module}")
    assert module in loaded
    assert _hits(loaded, (*HEAVY, *TABLES, "scipy", "sep", "astropy.wcs", "bottleneck")) == []


def test_run_path_imports_no_fitting_library() -> None:
    """What ``darkroom run`` imports before its first unit: the stages, not what they call."""
    loaded = _loaded("import darkroom.cli, darkroom.facade, darkroom.pipeline.run, darkroom.pipeline.drive")
    assert "darkroom.pipeline.stages" in loaded
    assert _hits(loaded, ("photutils", "matplotlib", "scipy.stats", "astroscrappy", "dask", "pyarrow")) == []
    assert _hits(loaded, ("reproject", "scipy.interpolate", "darkroom.imaging.coadd")) == []  # coadd: off
    # the stage modules import their algorithms (source extraction, photometry, WCS, sky
    # matching) when a unit runs: none of these is loaded before the first unit
    assert _hits(loaded, ("sep", "astropy.wcs", "astropy.coordinates", "astropy.nddata", "scipy")) == []
    assert _hits(loaded, ("darkroom.phot.match", "darkroom.phot.frame", "darkroom.detect.extract")) == []
    # the survey stages' HTTP client loads when an archive is asked
    assert _hits(loaded, ("requests", "tenacity", "darkroom.surveys.http")) == []
    assert _hits(loaded, TABLES) == []


def test_run_imports_no_table_library_before_its_first_unit(tmp_path: Path) -> None:
    """What ``darkroom run`` does before handing its first unit to the executor: open the
    repository, choose the targets, read the ephemeris cache, build and select the stages."""
    repo = tmp_path / "repo"
    code = f"""
from pathlib import Path
from darkroom.facade import Repository
from darkroom.pipeline.drive import drive_stages
from darkroom.pipeline.executors import make_executor
from darkroom.pipeline.run import all_stages, select_stages
from darkroom.pipeline.summary import run_summary
from darkroom.pipeline.targets import planet_ephemerides
from darkroom.repo.store import remove_orphan_temps
import darkroom.cli
Repository.init(Path({str(repo)!r}), overrides=["targets=[{{name: XO-1, ra_deg: 240.5, dec_deg: 28.2}}]"]).close()
r = Repository(Path({str(repo)!r}))
remove_orphan_temps(r.root)
r.apply_automatic_targets(online=False)
planet_ephemerides(r.root, [t.name for t in r.config.targets], r.config.names, online=False)
stages = select_stages(all_stages(r.root, r.config))
assert stages and make_executor(workers=0) is not None
"""
    loaded = _loaded(code)
    assert "darkroom.pipeline.stages" in loaded
    assert _hits(loaded, TABLES) == []
    assert "darkroom.pipeline.ingest" not in loaded  # the FITS reader: only with --ingest


def test_settings_modules_import_no_algorithm() -> None:
    loaded = _loaded("\n".join(f"import {m}" for m in SETTINGS))
    assert set(SETTINGS) <= loaded
    assert _hits(loaded, (*HEAVY, "scipy", "sep", "astropy.wcs", "astropy.coordinates", "bottleneck")) == []
    algorithms = {m for m in loaded if m.startswith("darkroom.")} - set(SETTINGS)
    # the packages themselves, their shared foundations and the reference-catalogue source
    # model (darkroom.catalogs, whose readers need astropy.table only) are allowed
    assert not [
        m
        for m in algorithms
        if m.split(".")[1] in {"astrom", "calib", "detect", "imaging", "phot", "surveys", "timeseries"}
        and m.count(".") > 1
        and m != "darkroom.phot.flags"
    ]


def test_lazy_package_exports_resolve() -> None:
    """Every name a package exports loads on first use, from the module that defines it."""
    code = """
import importlib
missing = []
for pkg in ("astrom", "calib", "detect", "phot", "timeseries"):
    mod = importlib.import_module("darkroom." + pkg)
    for name in mod.__all__:
        if getattr(mod, name, None) is None:
            missing.append(pkg + "." + name)
    assert set(mod.__all__) <= set(dir(mod))
    try:
        getattr(mod, "no_such_name")
        missing.append(pkg + ": unknown name did not raise")
    except AttributeError:
        pass
print("MISSING", missing)
from darkroom.astrom import solve_frame
from darkroom.calib import calibrate_frame, CalibrationConfig
from darkroom.calib.process import CalibrationConfig as C2
assert CalibrationConfig is C2
# a submodule imported before its namesake function is asked for does not hide it
import darkroom.timeseries.associate
import darkroom.timeseries as ts
from darkroom.timeseries import associate
assert callable(associate) and ts.associate is associate
"""
    probe = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert "MISSING []" in probe.stdout


def test_matching_a_frame_imports_no_scipy_stats() -> None:
    """An asterism match (every frame the astrometry stage aligns) needs a Poisson quantile,
    not scipy.stats (0.3-0.5 s of imports in every process)."""
    code = """
import numpy as np
from darkroom.astrom import match_asterisms
rng = np.random.default_rng(5)
target = rng.uniform(0, 1000, (60, 2))
match = match_asterisms(target[:50] + 3.0, target, scale=1.0, scale_tolerance=0.05)
assert match.n_matched >= 45
"""
    loaded = _loaded(code)
    assert "darkroom.astrom.asterism" in loaded
    assert "scipy.stats" not in loaded


def test_status_imports_no_table_library(tmp_path: Path) -> None:
    """``darkroom status`` counts rows in the registry (exposures, tasks, provenances): no astropy
    table on the way."""
    repo = tmp_path / "repo"
    code = f"""
import contextlib, io, sys
from pathlib import Path
from darkroom.facade import Repository
Repository.init(Path({str(repo)!r})).close()
from darkroom.cli import main
sys.argv = ["darkroom", "status", {str(repo)!r}]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
"""
    loaded = _loaded(code)
    assert "darkroom.cli" in loaded
    assert _hits(loaded, TABLES) == []


#: modules whose numba kernels are imported by their first frame, not with the module
COMPILED_USERS = ("darkroom.cli", "darkroom.pipeline.stages", *KERNEL_USERS)


def test_numba_is_imported_by_the_first_frame_not_by_the_modules():
    """numba's start-up (~0.3 s) is paid by a command that reaches a frame, never by importing."""
    assert "numba" not in _loaded("import " + ", ".join(COMPILED_USERS))
    assert "numba" in _loaded("from darkroom.detect.psf import load_compiled_kernels as k; k()")
