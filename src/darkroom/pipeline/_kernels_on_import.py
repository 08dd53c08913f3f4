"""Imported by the local Dask cluster's fork server (its preload list): loads the stages'
compiled kernels (:func:`darkroom.pipeline.kernels.load_compiled_kernels`) once, so that the
workers forked from the server inherit them ready instead of each paying numba's start-up
(~0.3 s of CPU a worker) on its first frame. The server is a single-threaded fresh
interpreter, which numba's compiled code survives forking from. Best effort: a failure here
(the server would die of it) leaves each worker to load the kernels on first use."""

import logging

try:
    from darkroom.pipeline.kernels import load_compiled_kernels

    load_compiled_kernels()
except Exception:  # anything the preload raises would stop the fork server
    logging.getLogger(__name__).debug("compiled kernels not preloaded", exc_info=True)
