"""One BLAS/OpenMP thread per process, set before numpy loads (import this first).

darkroom parallelises with processes (Dask). A fixed thread count keeps
floating-point results, and so product files, identical between serial, parallel
and resumed runs, and avoids oversubscribing the cores.
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
