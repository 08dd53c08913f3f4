"""Benchmark of the astrometry stage alone: the ARCSAT night's 81 lights (one field of 80 frames).

A repository is reduced once up to the stage before astrometry (``quality``), in a temporary
folder (or ``--base DIR``, kept and reused: made there when it does not exist). Each repeat
copies it and runs only the astrometry stage, serially, in a fresh process (nothing parsed or
remembered by one run helps the next), as ``darkroom run`` would run it: reading the
catalogues and headers, solving the field, the solutions' rows, the ``.wcs`` files and the WCS
written into each calibrated image (by a few threads: their CPU is in the stage's).

Rows: the stage's CPU time (``time.process_time``, every thread), its driving thread's
(``time.thread_time``), and its wall time, median over the repeats, in total and per frame.
With ``--src A B``, the children import darkroom from those source folders (e.g. another
checkout's ``src``) in turn, repeat by repeat: one column per folder, measured side by side.
Run: .venv/bin/python bench/bench_astrometry.py [--repeat 3] [--base DIR] [--src SRC [SRC ...]]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_table
from darkroom.testing import shared_data_dir

XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


def make_base(folder: Path) -> None:
    """The ARCSAT night reduced up to the stage before astrometry."""
    from darkroom import _threads  # noqa: F401
    from darkroom.facade import Repository
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage

    repo = Repository.init(folder, overrides=[XO1])
    try:
        ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"])
        for stage in all_stages(repo.root, repo.config):
            if stage.name == "astrometry":
                break
            run_stage(repo.registry, stage)
    finally:
        repo.close()


def one_run(folder: Path) -> dict[str, float]:
    """The astrometry stage of the repository in ``folder`` (in the child process)."""
    # what the stages before it have imported in a night (not the stage's cost)
    import astropy.coordinates
    import astropy.table
    import astropy.wcs  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.spatial  # noqa: F401

    import darkroom.astrom.field  # noqa: F401
    from darkroom import _threads  # noqa: F401
    from darkroom.facade import Repository
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage

    repo = Repository(folder)
    try:
        stage = next(s for s in all_stages(repo.root, repo.config) if s.name == "astrometry")
        gc.freeze()  # as `darkroom run` does before each stage
        cpu0, main0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        report = run_stage(repo.registry, stage)
        out = {
            "cpu": time.process_time() - cpu0,
            "main": time.thread_time() - main0,
            "wall": time.perf_counter() - wall0,
            "failed": report.n_failed,
        }
    finally:
        repo.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--base", type=Path, default=None, help="repository up to quality (made when missing)")
    ap.add_argument("--src", type=Path, nargs="+", default=None, help="darkroom source folders to compare")
    ap.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # the child: one run
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.one)))
        return
    sources = args.src or [None]  # None: the darkroom this interpreter imports
    runs: dict[Path | None, list[dict[str, float]]] = {src: [] for src in sources}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base or Path(tmp) / "base"
        if not base.exists():
            print(f"reducing the night up to quality in {base} ...", file=sys.stderr)
            make_base(base)
        for i in range(args.repeat):
            for src in sources:  # side by side, repeat by repeat: the machine's load changes
                copy = Path(tmp) / f"run{i}"
                shutil.copytree(base, copy, symlinks=True)
                env = dict(os.environ)
                if src is not None:
                    env["PYTHONPATH"] = os.pathsep.join([str(src.resolve()), env.get("PYTHONPATH", "")])
                done = subprocess.run(
                    [sys.executable, __file__, "--one", str(copy)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                runs[src].append(json.loads(done.stdout.strip().splitlines()[-1]))
                shutil.rmtree(copy)
    n_frames = 81
    rows = []
    for key, label in (("cpu", "CPU, all threads"), ("main", "CPU, driving thread"), ("wall", "wall")):
        row: dict[str, object] = {"astrometry stage (median)": label}
        for src in sources:
            name = "this darkroom" if src is None else str(src)
            value = statistics.median(r[key] for r in runs[src])
            row[f"{name} [s]"] = value
            row[f"{name} per frame [ms]"] = 1000 * value / n_frames
        rows.append(row)
    print_table(rows)
    if any(r["failed"] for rs in runs.values() for r in rs):
        print("some units failed", file=sys.stderr)


if __name__ == "__main__":
    main()
