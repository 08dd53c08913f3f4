"""``darkroom demo``: a simulated night, end to end, printed as it goes.

Simulates a small night with known truth, makes a repository beside it, ingests
the raw frames and runs every stage that exists, then prints what was done.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

__all__ = ["run_demo"]


def run_demo(
    out: Path, *, n_science: int = 12, seed: int = 1, console: Console | None = None, quiet: bool = False
) -> dict:
    """Run the demo into ``out`` (created); return the figures it printed."""
    from darkroom.cli import print_ingest_summary
    from darkroom.pipeline.calibration import calibration_stages
    from darkroom.pipeline.drive import drive_stages, print_reports
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.repo.repository import Repository
    from darkroom.sim import SimConfig, simulate_night

    console = console or Console()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw_dir = out / "raw"
    repo_dir = out / "repo"

    t0 = time.perf_counter()
    night = simulate_night(raw_dir, config=SimConfig(seed=seed, n_science=n_science))
    n_raw = sum(len(v) for v in night.raw_paths.values())
    t_sim = time.perf_counter() - t0
    console.print(f"[bold]1. simulated[/] a night of {n_raw} raw frames in {t_sim:.1f} s -> {raw_dir}")

    repo = Repository.init(repo_dir)
    console.print(f"[bold]2. repository[/] {repo.root} ({repo.registry.backend} registry)")

    t0 = time.perf_counter()
    raw_files = [p for paths in night.raw_paths.values() for p in paths]  # not the truth tables beside them
    summary = ingest_paths(repo.registry, raw_files, config=repo.config.ingest, profile_root=repo.root)
    console.print("[bold]3. ingest[/]")
    print_ingest_summary(summary, time.perf_counter() - t0)
    figures = {
        "n_raw": n_raw,
        "n_registered": len(summary.registered),
        "n_quarantined": len(summary.quarantined),
    }

    console.print("[bold]4. calibration[/] (masters, bad pixels, calibrated frames)")
    reports = drive_stages(repo.registry, calibration_stages(repo.root, repo.config.calib), quiet=quiet)
    print_reports(reports, console)
    figures["n_calibrated"] = reports[-1].n_done
    figures["n_failed"] = sum(r.n_failed for r in reports)
    repo.close()
    console.print(
        f"done: {figures['n_registered']} frames registered, {figures['n_calibrated']} calibrated "
        f"in {repo_dir}; try 'darkroom status {repo_dir}'"
    )
    return figures
