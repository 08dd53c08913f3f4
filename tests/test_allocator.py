"""glibc's allocator thresholds set by the darkroom command (darkroom._allocator)."""

from __future__ import annotations

import subprocess
import sys

from darkroom._allocator import keep_freed_memory, one_heap

# a child process: the thresholds stay with the process that set them
_PROBE = """
import numpy as np
from darkroom._allocator import keep_freed_memory, one_heap
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


# a child process: how many heaps (glibc arenas) its threads allocate from, by malloc_stats
_ARENAS = """
import ctypes, sys, threading
import numpy as np
from darkroom._allocator import one_heap
print(one_heap() if sys.argv[1] == "one" else None)
kept = []
def work():
    kept.append(np.ones((512, 512)))  # a thread's allocation
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.stdout.flush()
if sys.platform.startswith("linux"):
    ctypes.CDLL(None).malloc_stats()  # one "Arena N:" paragraph per heap, on stderr
"""


def _arenas(mode: str, env_extra: dict[str, str]) -> tuple[str, int]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_one_heap_for_every_thread_unless_the_user_chose():
    if not sys.platform.startswith("linux"):  # glibc's allocator only
        assert _arenas("one", {})[0] == "False"
        return
    assert _arenas("one", {}) == ("True", 1)
    before, n_default = _arenas("default", {})
    assert before == "None" and n_default > 1  # glibc's own choice: a heap per thread
    assert _arenas("one", {"MALLOC_ARENA_MAX": "4"})[0] == "False"  # the user's setting stays


def test_one_heap_leaves_other_systems_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert one_heap() is False
