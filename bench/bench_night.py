"""Whole-night benchmark: the ARCSAT night (96 frames) from raw files to the XO-1 light curve.

In one invocation, side by side: the careful peer reduction
(``../shared/tools/peer_baseline.py``: ccdproc + photutils + astroscrappy, run from
there in a subprocess with the interpreter of ``.venv-peer``, which ``make bench`` makes
with the peer's own libraries: it needs photutils 3, darkroom pins photutils 2;
``DARKROOM_PEER_PYTHON`` names another interpreter),
then darkroom's ingest and every stage of ``darkroom run`` serially and on 2 local
worker processes (``--workers 2``), each into a fresh repository and in a fresh process (nothing
imported or parsed by one run helps the next), timed from outside as the peer is: the total
includes the interpreter's start-up and imports. Prints the wall time per stage and in total,
and each darkroom run's speed-up over the peer.
Run: .venv/bin/python bench/bench_night.py [--workers N [N ...]] [--skip-serial] [--skip-workers]
[--skip-peer] (e.g. ``--workers 1 2 4``: one run per count). The "driver CPU" row is the
CPU time of the driving process (its threads included: claims, records, handing out batches,
and in a serial run the stages themselves and their writer threads); "workers CPU" that of the
worker processes. "cores busy" is their sum over the wall time: how many of the
machine's cores a run kept busy on average (a serial run already keeps more than one busy with
its writer threads, which bounds what workers can gain on 2 cores). The machine's load average
is printed, since other work changes every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import as_installed, print_table
from darkroom.testing import shared_data_dir

PEER_SCRIPT = Path(__file__).resolve().parents[1].parent / "shared" / "tools" / "peer_baseline.py"
PEER_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peer" / "bin" / "python"
XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


def peer() -> tuple[dict[str, float], float]:
    """The peer script's own per-step wall times and its wall time from outside (start-up included)."""
    script = Path(os.environ.get("DARKROOM_PEER_SCRIPT", PEER_SCRIPT))
    if not script.exists():
        raise SystemExit(f"peer script not found: {script} (set DARKROOM_PEER_SCRIPT, or --skip-peer)")
    python = os.environ.get("DARKROOM_PEER_PYTHON") or str(PEER_PYTHON)
    if not Path(python).exists():
        raise SystemExit(f"no interpreter for the peer at {python}: run 'make bench', or --skip-peer")
    data = shared_data_dir() / "arcsat-xo1b-transit"
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = subprocess.run(
            [python, str(script), "--data", str(data), "--out", tmp],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"peer script failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        summary = json.loads((Path(tmp) / "summary.json").read_text())
    seconds = {f"peer: {k}": float(v) for k, v in summary.get("wall_s", {}).items()}
    seconds["load average (1 min, start)"] = load0
    return seconds, wall


def night(workers: int) -> tuple[dict[str, float], float]:
    """One darkroom run (ingest and every stage) in a fresh process, timed from outside as the
    peer is: the interpreter's start-up and imports are in the total, nothing imported or parsed
    by an earlier run helps. The repository's creation (once per repository, not per night) is
    taken out, and its files are removed after the clock stops, as the peer's are."""
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seconds.json"
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, __file__, "--one", str(workers), "--json", str(out), "--dir", tmp],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"darkroom run failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        if done.stderr.strip():
            print(done.stderr.strip(), file=sys.stderr)
        seconds = json.loads(out.read_text())
    wall -= seconds.pop("repository init (not timed)")
    seconds["start-up and imports (outside stages)"] = wall - seconds["ingest"] - seconds.pop("stages (wall)")
    seconds["load average (1 min, start)"] = load0
    return seconds, wall


def one_night(workers: int, folder: Path) -> dict[str, float]:
    """The run itself (in the child process): per-stage wall seconds and the driver's CPU."""
    from darkroom import _threads  # noqa: F401
    from darkroom._allocator import keep_freed_memory
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import drive_stages, frames_to_calibrate, raw_frames_kept
    from darkroom.pipeline.executors import make_executor, prepare_local_workers
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages

    keep_freed_memory()  # as the darkroom command does first
    if workers:
        prepare_local_workers()  # as `darkroom run --workers` does first
    data = shared_data_dir() / "arcsat-xo1b-transit"
    t0 = time.perf_counter()
    repo = Repository.init(folder / "repo", overrides=[XO1])
    seconds = {"repository init (not timed)": time.perf_counter() - t0}
    # as `darkroom run --ingest` does: serially, the raw frames ingest read are kept for the masters
    # and calibrate
    with raw_frames_kept(repo.config.ingest, serial=workers == 0):
        t0 = time.perf_counter()
        ingest_paths(repo.registry, [data], workers=workers)  # as `darkroom run --ingest --workers` does
        seconds["ingest"] = time.perf_counter() - t0
        executor = make_executor(workers=workers)
        stages = all_stages(repo.root, repo.config)
        if frames_to_calibrate(repo.registry, stages) >= 2:
            executor.start()  # as `darkroom run` does: the workers start while the masters are made
        try:
            t0 = time.perf_counter()
            # the stages as `darkroom run` drives them (objects set aside from the collector before
            # each stage, the kept raw frames let go after calibrate)
            reports = drive_stages(
                repo.registry, stages, executor=executor, quiet=True, freeze_between_stages=True
            )
            seconds["stages (wall)"] = time.perf_counter() - t0
            for report in reports:
                seconds[report.stage] = report.seconds
                if report.n_failed:
                    print(
                        f"  {report.stage}: {report.n_failed} failed, e.g. {report.failures[0]}",
                        file=sys.stderr,
                    )
            workers_cpu = _workers_cpu(executor)
        finally:
            executor.close()
    repo.close()
    seconds["driver CPU"] = time.process_time()
    if workers:
        seconds["workers CPU"] = workers_cpu
    return seconds


def _workers_cpu(executor) -> float:
    """The CPU seconds (user + system, all threads) the local worker processes have used so far;
    nan when none was started (every stage ran in the driver)."""
    import psutil

    pids = executor.worker_pids() if hasattr(executor, "worker_pids") else []
    if not pids:
        return float("nan")
    return float(sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--skip-workers", action="store_true", help="serial only")
    ap.add_argument("--skip-peer", action="store_true", help="do not run the peer script")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the child: one run
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        args.json.write_text(json.dumps(one_night(args.one, args.dir)))
        gc.freeze()  # as the darkroom command ends (darkroom.cli.main): no last walk of every object
        return
    as_installed()
    runs = []
    peer_wall = None
    if not args.skip_peer:
        peer_seconds, peer_wall = peer()
        runs.append(("peer", peer_seconds, peer_wall))
    if not args.skip_serial:
        runs.append(("serial", *night(0)))
    for n in [] if args.skip_workers else args.workers:
        runs.append((f"workers x{n}", *night(n)))
    stages = list(dict.fromkeys(k for _, seconds, _ in runs for k in seconds))
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
    busy = {"stage": "cores busy (driver + workers CPU / wall)", "size": ""}
    for label, seconds, wall in runs:
        cpu = seconds.get("driver CPU", float("nan")) + (seconds.get("workers CPU") or 0.0)
        busy[f"{label} [s]"] = cpu / wall
    rows.append(busy)
    serial = next((r for r in runs if r[0] == "serial"), None)
    for label, _, wall in runs:
        if serial is not None and label.startswith("workers"):
            rows.append({"stage": f"serial / {label}", "size": "", f"{label} [s]": serial[2] / wall})
    if peer_wall is not None:
        ratio = {"stage": f"speed-up vs the peer ({peer_wall:.1f} s)", "size": ""}
        for label, _, wall in runs:
            ratio[f"{label} [s]"] = peer_wall / wall
        rows.append(ratio)
    print_table(rows)


if __name__ == "__main__":
    main()
