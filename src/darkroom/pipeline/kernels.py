"""The pipeline's compiled (numba) kernels, made ready before they are needed.

The per-frame stages' hot loops are numba kernels, compiled on their first call after
installing and cached on disk: the calibration's full-frame pass (:mod:`darkroom.calib.process`),
the cosmic-ray engine (:mod:`darkroom.calib.cosmics`), the mesh sky background of the
cosmic-ray step and of the extraction (:mod:`darkroom.skymesh`), the detectable cells of the
extraction (:mod:`darkroom.sepboxes`), the Moffat PSF fit (:mod:`darkroom.detect.psf`) and the
annulus backgrounds (:mod:`darkroom.phot.aperture`). Each module's own
``load_compiled_kernels()`` runs them once on a small synthetic input. In a new process the
first call still costs numba's own start-up (~0.3 s, once).
:func:`load_compiled_kernels` pays that now: after installing (``make``: the
compilation is then not part of the first night) and in the fork server of the local workers,
whose workers inherit the loaded kernels instead of each loading them.
"""

from __future__ import annotations

import importlib

__all__ = ["KERNEL_USERS", "load_compiled_kernels"]


#: the algorithm modules whose ``load_compiled_kernels()`` makes their kernels ready, in the
#: order the stages run them
KERNEL_USERS = (
    "darkroom.calib.process",
    "darkroom.calib.cosmics",
    "darkroom.skymesh",
    "darkroom.sepboxes",
    "darkroom.detect.psf",
    "darkroom.phot.aperture",
)


def load_compiled_kernels() -> None:
    """Compile (first time) or load (from numba's cache) every kernel the stages run."""
    for name in KERNEL_USERS:
        importlib.import_module(name).load_compiled_kernels()


if __name__ == "__main__":  # python -m darkroom.pipeline.kernels (the Makefile, after installing)
    load_compiled_kernels()
