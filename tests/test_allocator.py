"""glibc's allocator thresholds set by the darkroom command (darkroom._allocator)."""

from __future__ import annotations

import subprocess
import sys

from darkroom._allocator import keep_freed_memory

# a child process: the thresholds stay with the process that set them
_PROBE = """
import numpy as np
from darkroom._allocator import keep_freed_memory
print(keep_freed_memory())
for _ in range(20):  # frame-sized temporaries, freed and made again
    a = np.ones((1024, 1024), np.float32) * 2.0
    del a
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_thresholds_are_set_on_linux_unless_the_user_set_them():
    assert _run({}) == str(sys.platform.startswith("linux"))  # glibc's mallopt
    assert _run({"MALLOC_TRIM_THRESHOLD_": "65536"}) == "False"  # the user's setting stays
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}) == "False"


def test_other_systems_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
