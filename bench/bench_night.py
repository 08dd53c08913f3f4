"""Whole-night benchmark: the ARCSAT night (96 frames) from raw files to the XO-1 light curve.

Runs ingest and every stage of ``darkroom run`` serially and on a local Dask
cluster of 2 workers, each into a fresh repository, and prints the wall time per
stage and in total, next to the ccdproc + photutils + astroscrappy tutorial stack
(227 s wall on this machine for the same night, 106 s without cosmic rays: the
issue's measured figure, not re-run here).
Run: .venv/bin/python bench/bench_night.py [--workers N [N ...]] [--skip-serial] [--skip-dask]
(e.g. ``--workers 1 2 4``: one Dask run per count). The "driver CPU" row is the CPU time of
the driving process (claims, records, scheduling): what --workers cannot spread out. The
machine's load average is printed, since other work changes every figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import max_rss_mb, print_table
from darkroom import _threads  # noqa: F401
from darkroom.facade import Repository
from darkroom.pipeline.executors import make_executor
from darkroom.pipeline.ingest import ingest_paths
from darkroom.pipeline.run import all_stages
from darkroom.pipeline.runner import run_stage
from darkroom.testing import shared_data_dir

TUTORIAL_STACK_S = 227.0
XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


def night(workers: int) -> tuple[dict[str, float], float]:
    import os

    cpu0 = time.process_time()
    load0 = os.getloadavg()[0]
    data = shared_data_dir() / "arcsat-xo1b-transit"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repository.init(Path(tmp) / "repo", overrides=[XO1])
        t_all = time.perf_counter()
        t0 = time.perf_counter()
        ingest_paths(repo.registry, [data])
        seconds = {"ingest": time.perf_counter() - t0}
        executor = make_executor(workers=workers)
        try:
            for stage in all_stages(repo.root, repo.config):
                report = run_stage(repo.registry, stage, executor)
                seconds[stage.name] = report.seconds
                if report.n_failed:
                    print(
                        f"  {stage.name}: {report.n_failed} failed, e.g. {report.failures[0]}",
                        file=sys.stderr,
                    )
        finally:
            executor.close()
        total = time.perf_counter() - t_all
        repo.close()
    seconds["driver CPU"] = time.process_time() - cpu0
    seconds["load average (1 min, start)"] = load0
    return seconds, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--skip-dask", action="store_true", help="serial only")
    args = ap.parse_args()
    runs = []
    if not args.skip_serial:
        runs.append(("serial", *night(0)))
    for n in [] if args.skip_dask else args.workers:
        runs.append((f"dask x{n}", *night(n)))
    stages = list(runs[0][1])
    rows = []
    for name in stages:
        row = {"stage": name, "size": "96 frames 1024^2"}
        for label, seconds, _ in runs:
            row[f"{label} [s]"] = seconds.get(name, float("nan"))
        rows.append(row)
    total = {"stage": "total (wall)", "size": "96 frames 1024^2"}
    for label, _, wall in runs:
        total[f"{label} [s]"] = wall
    rows.append(total)
    ratio = {"stage": f"speed-up vs tutorial stack ({TUTORIAL_STACK_S:.0f} s)", "size": ""}
    for label, _, wall in runs:
        ratio[f"{label} [s]"] = TUTORIAL_STACK_S / wall
    rows.append(ratio)
    print_table(rows)
    print(f"max RSS of the driver {max_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
