"""Start-up: how long ``darkroom run`` takes before its first unit starts, and ``darkroom status``.

The ARCSAT night is ingested once into a temporary repository; each repeat copies it
(a fresh registry, so the first unit is always master_bias) and runs
``python -m darkroom.cli run COPY`` in a new interpreter whose serial executor stops
the process when the first unit is handed to it. ``darkroom status`` runs to its end.

Columns: command, wall seconds from spawning the interpreter (best and median of
--repeat), the child's CPU seconds at that point (interpreter start included), and the
number of modules imported by then. DARKROOM_OFFLINE=1 is set: a name or ephemeris
query to the network is not start-up. The machine's load average is printed, since
other work on shared cores changes every figure.

Run: .venv/bin/python bench/bench_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
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

from _common import as_installed, print_table

XO1 = "targets=[{name: XO-1, ra_deg: 240.549333, dec_deg: 28.169556}]"

# Runs in the child: stop at the first unit and report when that was.
_HARNESS = r"""
import json, os, sys, time
import darkroom.pipeline.runner as runner

def _first(self, fn, units):
    for unit in units:
        print(json.dumps({"t": time.time(), "cpu": time.process_time(), "n_modules": len(sys.modules),
                          "stage": getattr(fn, "__self__", None).__class__.__name__}), flush=True)
        os._exit(0)
    yield from ()

runner.SerialExecutor.map_units = _first
sys.argv = ["darkroom", *sys.argv[1:]]
from darkroom.cli import main
main()
"""

_STATUS = r"""
import json, sys, time
from darkroom.cli import main
sys.argv = ["darkroom", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps({"t": time.time(), "cpu": time.process_time(), "n_modules": len(sys.modules)}), flush=True)
"""


def _child(code: str, args: list[str]) -> dict[str, float]:
    env = {**os.environ, "DARKROOM_OFFLINE": "1"}
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise SystemExit(f"child failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    out = json.loads(lines[-1])
    out["wall"] = out.pop("t") - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    as_installed()
    from darkroom.testing import shared_data_dir

    data = shared_data_dir() / "arcsat-xo1b-transit"
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        for cmd in (["init", str(base), "--set", XO1], ["ingest", str(base), str(data), "--quiet"]):
            subprocess.run(
                [sys.executable, "-m", "darkroom.cli", *cmd], check=True, capture_output=True, text=True
            )
        runs: dict[str, list[dict[str, float]]] = {"run (to first unit)": [], "status": []}
        for i in range(args.repeat):
            copy = Path(tmp) / f"copy{i}"
            shutil.copytree(base, copy)
            runs["run (to first unit)"].append(_child(_HARNESS, ["run", str(copy), "--quiet"]))
            runs["status"].append(_child(_STATUS, ["status", str(copy)]))
            shutil.rmtree(copy)
        for name, got in runs.items():
            walls = [g["wall"] for g in got]
            rows.append(
                {
                    "command": name,
                    "wall s (best)": min(walls),
                    "wall s (median)": statistics.median(walls),
                    "CPU s (median)": statistics.median(g["cpu"] for g in got),
                    "modules": int(statistics.median(g["n_modules"] for g in got)),
                }
            )
    print(f"load average at start: {load0:.2f} (2 shared cores)")
    print_table(rows)


if __name__ == "__main__":
    main()
