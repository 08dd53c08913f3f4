"""Where a run with workers loses time: each worker's batches and units, timed on the worker.

The ARCSAT night is ingested and its stages before the first one named run serially in this
process (untimed); then the named stages run on a local Dask cluster of ``--workers`` workers as
``darkroom run --workers`` runs them, with every batch timed where it runs. Per stage: its wall
time and the driver's CPU; per worker: units, their mean wall and main-thread CPU, how long after
the stage's start its first unit began (a cluster not ready yet), the compute gaps between its
batches (a batch waiting for its writes, or for the next batch from the driver), how long it
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


def timed_batch(fn, units, log_dir):
    """darkroom.pipeline.executors._run_batch with each unit and the batch timed (on a worker):
    one JSON line per batch in ``log_dir``/<pid>.jsonl."""
    import types

    from darkroom.pipeline import executors

    stage = getattr(fn, "__self__", None)
    per: list[tuple[float, float, float]] = []
    if stage is not None:
        run = type(stage).run

        def timed(self, unit):
            t0, c0 = time.time(), time.thread_time()
            try:
                return run(self, unit)
            finally:
                per.append((t0, time.time(), time.thread_time() - c0))

        fn = types.MethodType(timed, stage)
    t0 = time.time()
    # on a worker its own module's (the driver's is this function's wrapper)
    out = getattr(executors, "_original_run_batch", executors._run_batch)(fn, units)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(Path(log_dir) / f"{os.getpid()}.jsonl", "a") as fh:
        row = {
            "stage": getattr(stage, "name", "?"),
            "t0": t0,
            "t1": time.time(),
            "units": per,
            "minflt": ru.ru_minflt,
            "thread": threading.get_ident(),
        }
        fh.write(json.dumps(row) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--stages", default="calibrate,extract,quality,astrometry,associate,photometry,lightcurves"
    )
    args = ap.parse_args()
    names = args.stages.split(",")
    as_installed()

    import cloudpickle

    from darkroom import _threads  # noqa: F401
    from darkroom._allocator import keep_freed_memory
    from darkroom.facade import Repository
    from darkroom.pipeline import executors
    from darkroom.pipeline.executors import make_executor, prepare_local_workers
    from darkroom.pipeline.ingest import ingest_paths
    from darkroom.pipeline.run import all_stages
    from darkroom.pipeline.runner import run_stage
    from darkroom.testing import shared_data_dir

    keep_freed_memory()
    prepare_local_workers()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import bench/
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp) / "log"
        log_dir.mkdir()
        executors._original_run_batch = executors._run_batch
        executors._run_batch = lambda fn, units: timed_batch(fn, units, str(log_dir))
        repo = Repository.init(Path(tmp) / "repo", overrides=[XO1])
        ingest_paths(repo.registry, [shared_data_dir() / "arcsat-xo1b-transit"], workers=args.workers)
        executor = make_executor(workers=args.workers)
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
        batches = [
            {**json.loads(line), "pid": f.stem}
            for f in log_dir.glob("*.jsonl")
            for line in f.read_text().splitlines()
        ]
    cols = (
        "stage", "worker", "wall [s]", "driver CPU [s]", "units", "unit wall [ms]", "unit CPU [ms]",
        "first unit after [s]", "batch gaps [s]", "idle at end [s]", "page faults", "threads",
    )  # fmt: skip
    rows = []
    for name, (t0, t1, driver_cpu) in spans.items():
        rows.append(
            {**dict.fromkeys(cols, ""), "stage": name, "wall [s]": t1 - t0, "driver CPU [s]": driver_cpu}
        )
        mine = [b for b in batches if b["stage"] == name and b["units"]]
        for pid in sorted({b["pid"] for b in mine}):
            bs = sorted((b for b in mine if b["pid"] == pid), key=lambda b: b["units"][0][0])
            units = [u for b in bs for u in b["units"]]
            gaps = [bs[i + 1]["units"][0][0] - bs[i]["units"][-1][1] for i in range(len(bs) - 1)]
            rows.append(
                {
                    **dict.fromkeys(cols, ""),
                    "stage": "",
                    "worker": pid,
                    "units": len(units),
                    "unit wall [ms]": 1000 * sum(u[1] - u[0] for u in units) / len(units),
                    "unit CPU [ms]": 1000 * sum(u[2] for u in units) / len(units),
                    "first unit after [s]": bs[0]["units"][0][0] - t0,
                    "batch gaps [s]": sum(gaps),
                    "idle at end [s]": t1 - max(b["t1"] for b in bs),
                    "page faults": bs[-1]["minflt"] - bs[0]["minflt"],
                    "threads": len({b["thread"] for b in bs}),
                }
            )
    print_table(rows)
    print("modules the driver imported inside each stage:")
    for name, (n, tops) in imported.items():
        print(f"  {name}: {n} {', '.join(tops[:12])}{' ...' if len(tops) > 12 else ''}")


if __name__ == "__main__":
    main()
