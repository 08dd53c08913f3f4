"""Imported last by the local Dask cluster's fork server (its preload list): sets what the
preloaded modules made aside from Python's garbage collector.

The fork server holds the terminal or pipe it inherited until it exits, and it exits after
the driver, through the interpreter's finalisation, whose collections walked every object of
the preloaded libraries (~0.5 s): a command whose output was piped (cron, ``| tee``) ended
that much later. Frozen objects are not walked, and the workers forked from the server
inherit them frozen (they live as long as the cluster).
"""

import gc

gc.freeze()
