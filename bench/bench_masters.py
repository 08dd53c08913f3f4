"""Benchmark: the master stages of the ARCSAT night (master_bias, master_dark, master_flat,
bad_pixels), each run as ``darkroom run`` drives it serially, in fresh processes.

One run: a new repository, the night's ingest with its raw frames kept in memory (as
``darkroom run --ingest`` does serially: the masters read the kept frames), then the four
stages; the child prints each stage's wall and CPU seconds (``time.process_time``: the machine
is shared, CPU time is steadier) and the SHA-256 of each master file. First-call costs (imports,
cached Monte Carlo factors) fall in the stage that pays them, as in a real run. ``--repeat``
runs are made and their medians printed; with ``--other-src DIR`` every run alternates with one
of another source tree (e.g. ``/work/main/src``: the code before a change), the two tables side
by side, and the master files of both must be the same bytes.

    .venv/bin/python bench/bench_masters.py [--repeat 5] [--other-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("master_bias", "master_dark", "master_flat", "bad_pixels")


def one_run(folder: Path) -> dict:
    """The run itself (in the child process)."""
    from darkroom import _threads  # noqa: F401
    from darkroom._allocator import keep_freed_memory
    from darkroom.facade import Repository
    from darkroom.pipeline import drive
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.repo.store import sha256_file
    from darkroom.testing import shared_data_dir

    keep_freed_memory()  # as the darkroom command does first
    repo = Repository.init(folder / "repo")
    out: dict = {}
    run_stage = drive.run_stage

    def timed(*args, **kw):
        c0 = time.process_time()
        report = run_stage(*args, **kw)
        out[f"{report.stage} CPU"] = time.process_time() - c0
        out[f"{report.stage} wall"] = report.seconds
        if report.n_failed:
            raise SystemExit(f"{report.stage}: {report.failures[0]}")
        return report

    drive.run_stage = timed
    with drive.raw_frames_kept(repo.config.ingest, serial=True):
        t0 = time.perf_counter()
        ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"], workers=0)
        out["ingest wall"] = time.perf_counter() - t0
        stages = [s for s in all_stages(repo.root, repo.config) if s.name in STAGES]
        drive.drive_stages(repo.registry, stages, quiet=True, freeze_between_stages=True)
    out["files"] = {p.name: sha256_file(p) for p in sorted((repo.root / "calib").rglob("*.fits"))}
    repo.close()
    return out


def run_in(src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, __file__, "--child", tmp], capture_output=True, text=True, env=env
        )
        if done.returncode != 0:
            raise SystemExit(f"run failed: {done.stderr.strip()[-800:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--other-src", default=None, help="a source tree to alternate with (PYTHONPATH)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one_run(args.child)))
        return
    load0 = os.getloadavg()[0]
    labels = ["this"] + (["other"] if args.other_src else [])
    runs: dict[str, list[dict]] = {k: [] for k in labels}
    for _ in range(args.repeat):
        runs["this"].append(run_in(None))
        if args.other_src:
            runs["other"].append(run_in(args.other_src))
    files = {k: {json.dumps(r["files"], sort_keys=True) for r in v} for k, v in runs.items()}
    keys = [f"{s} {w}" for s in STAGES for w in ("CPU", "wall")] + ["ingest wall"]
    print(f"{'median of ' + str(args.repeat) + ' runs [s]':24s}" + "".join(f"{k:>10s}" for k in labels))
    for key in keys:
        print(f"{key:24s}" + "".join(f"{statistics.median(r[key] for r in runs[k]):10.3f}" for k in labels))
    total = {k: statistics.median(sum(r[f"{s} CPU"] for s in STAGES) for r in runs[k]) for k in labels}
    print(f"{'masters CPU (total)':24s}" + "".join(f"{total[k]:10.3f}" for k in labels))
    print(f"load average (1 min, start): {load0:.2f}")
    identical = len(set().union(*files.values())) == 1
    print("master files: " + ("the same bytes in every run" if identical else "DIFFER between runs"))
    if not identical:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
