"""Where a run with workers loses time: each worker's batches and units, timed on the worker.

The ARCSAT night is ingested and its stages before the first one named run serially in this
process (untimed); then the named stages run on ``--workers`` local worker processes as
``darkroom run --workers`` runs them (:mod:`darkroom.pipeline.local_workers`), with every unit
timed where it runs. Per stage: its wall
time and the driver's CPU; per worker: units, their mean wall and main-thread CPU, how long after
the stage's start its first unit began (workers not ready yet), the gaps between its units (in a
batch: the unit's bookkeeping; between batches: waiting for the next batch), how long it
idled at the stage's end (uneven batches), and its page faults. Then what the driver imported
inside each stage (a stage that stays in the driver imports what the workers' stages loaded in
a serial run). The machine is shared: repeat, and compare CPU before wall.

Run: .venv/bin/python bench/profile_workers.py [--workers 2] [--stages calibrate,extract,photometry]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import as_installed, print_table

XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"


class TimedRun:
    """A stage's ``run`` with each unit timed where it runs (on a worker): one JSON line per unit
    in ``log_dir``/<pid>.jsonl. It passes for the bound method (``__self__`` is the stage), so a
    worker defers and settles the stage's writes as it would."""

    def __init__(self, stage, log_dir: str) -> None:
        self.__self__ = stage
        self.log_dir = log_dir

    def __call__(self, unit):
        t0, c0 = time.time(), time.thread_time()
        try:
            return self.__self__.run(unit)
        finally:
            t1, cpu = time.time(), time.thread_time() - c0
            row = {
                "stage": self.__self__.name,
                "t0": t0,
                "t1": t1,
                "cpu": cpu,
                "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                "thread": threading.get_ident(),
            }
            with open(Path(self.log_dir) / f"{os.getpid()}.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--stages", default="calibrate,extract,quality,astrometry,associate,photometry,lightcurves"
    )
    args = ap.parse_args()
    names = args.stages.split(",")
    as_installed()

    from darkroom import _threads  # noqa: F401
    from darkroom._allocator import keep_freed_memory
    from darkroom.facade import Repository
    from darkroom.pipeline.executors import prepare_local_workers
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.local_workers import LocalWorkersExecutor
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.testing import shared_data_dir

    keep_freed_memory()
    prepare_local_workers()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp) / "log"
        log_dir.mkdir()

        class Timed(LocalWorkersExecutor):  # the workers run each stage's units timed
            def map_units(self, fn, units):
                return super().map_units(TimedRun(fn.__self__, str(log_dir)), units)

        repo = Repository.init(Path(tmp) / "repo", overrides=[XO1])
        ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"], workers=args.workers)
        executor = Timed(args.workers)  # what `darkroom run --workers` runs on
        executor.start()
        stages = all_stages(repo.root, repo.config)
        first = min(i for i, st in enumerate(stages) if st.name in names)
        for st in stages[:first]:
            run_stage(repo.registry, st)
        spans, imported = {}, {}
        try:
            for st in stages[first:]:
                if st.name not in names:
                    break
                gc.freeze()
                before = set(sys.modules)
                t0, c0 = time.time(), time.process_time()
                run_stage(repo.registry, st, executor)
                spans[st.name] = (t0, time.time(), time.process_time() - c0)
                new = set(sys.modules) - before
                imported[st.name] = (len(new), sorted({m.split(".")[0] for m in new}))
        finally:
            executor.close()
            repo.close()
        timed = [
            {**json.loads(line), "pid": f.stem}
            for f in log_dir.glob("*.jsonl")
            for line in f.read_text().splitlines()
        ]
    cols = (
        "stage", "worker", "wall [s]", "driver CPU [s]", "units", "unit wall [ms]", "unit CPU [ms]",
        "first unit after [s]", "gaps between units [s]", "idle at end [s]", "page faults", "threads",
    )  # fmt: skip
    rows = []
    for name, (t0, t1, driver_cpu) in spans.items():
        rows.append(
            {**dict.fromkeys(cols, ""), "stage": name, "wall [s]": t1 - t0, "driver CPU [s]": driver_cpu}
        )
        mine = [u for u in timed if u["stage"] == name]
        for pid in sorted({u["pid"] for u in mine}):
            units = sorted((u for u in mine if u["pid"] == pid), key=lambda u: u["t0"])
            gaps = [units[i + 1]["t0"] - units[i]["t1"] for i in range(len(units) - 1)]
            rows.append(
                {
                    **dict.fromkeys(cols, ""),
                    "stage": "",
                    "worker": pid,
                    "units": len(units),
                    "unit wall [ms]": 1000 * sum(u["t1"] - u["t0"] for u in units) / len(units),
                    "unit CPU [ms]": 1000 * sum(u["cpu"] for u in units) / len(units),
                    "first unit after [s]": units[0]["t0"] - t0,
                    "gaps between units [s]": sum(gaps),
                    "idle at end [s]": t1 - units[-1]["t1"],
                    "page faults": units[-1]["minflt"] - units[0]["minflt"],
                    "threads": len({u["thread"] for u in units}),
                }
            )
    print_table(rows)
    print("modules the driver imported inside each stage:")
    for name, (n, tops) in imported.items():
        print(f"  {name}: {n} {', '.join(tops[:12])}{' ...' if len(tops) > 12 else ''}")


if __name__ == "__main__":
    main()
