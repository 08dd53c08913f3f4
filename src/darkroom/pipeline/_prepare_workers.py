"""Imported by the local Dask cluster's fork server (its preload list), so that the workers
forked from it inherit what it sets up once:

- glibc's allocator set as the ``darkroom`` command sets it (:mod:`darkroom._allocator`), with
  one heap for all of a worker's threads (:func:`darkroom._allocator.one_heap`);
- the stages' compiled kernels (:func:`darkroom.pipeline.kernels.load_compiled_kernels`),
  instead of each worker paying numba's start-up (~0.3 s of CPU) on its first frame. The server
  is a single-threaded fresh interpreter, which numba's compiled code survives forking from.

Best effort: a failure here (the server would die of it) leaves each worker to load the
kernels on first use."""

import logging

from darkroom._allocator import keep_freed_memory, one_heap

keep_freed_memory()
one_heap()
try:
    from darkroom.pipeline.kernels import load_compiled_kernels

    load_compiled_kernels()
except Exception:  # anything the preload raises would stop the fork server
    logging.getLogger(__name__).debug("compiled kernels not preloaded", exc_info=True)
