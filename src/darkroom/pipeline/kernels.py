"""The pipeline's compiled (numba) kernels, made ready before they are needed.

The cosmic-ray engine (:mod:`darkroom.calib.cosmics`), the Moffat PSF fit
(:mod:`darkroom.detect.psf`), the extraction's frame passes (:mod:`darkroom.detect.extract`)
and the annulus pixels and statistics of the aperture photometry (:mod:`darkroom.phot.aperture`)
run numba kernels, compiled on their first call after installing
and cached on disk; in a new process the first call still costs numba's own start-up (~0.3 s
for both, once). :func:`load_compiled_kernels` pays that now: after installing (``make``: the
compilation is then not part of the first night) and in the fork server of a local cluster,
whose workers inherit the loaded kernels instead of each loading them.
"""

from __future__ import annotations

__all__ = ["load_compiled_kernels"]


def load_compiled_kernels() -> None:
    """Compile (first time) or load (from numba's cache) every kernel the stages run."""
    from darkroom.calib.cosmics import load_compiled_kernels as cosmic_ray_kernels
    from darkroom.detect.extract import load_compiled_kernels as extract_kernels
    from darkroom.detect.psf import load_compiled_kernels as psf_kernels
    from darkroom.phot.aperture import load_compiled_kernels as aperture_kernels

    cosmic_ray_kernels()
    psf_kernels()
    extract_kernels()
    aperture_kernels()


if __name__ == "__main__":  # python -m darkroom.pipeline.kernels (the Makefile, after installing)
    load_compiled_kernels()
