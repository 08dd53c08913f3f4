"""Independent, reproducible random streams: one per purpose and frame.

Each stream is ``Generator(PCG64(SeedSequence(seed, spawn_key=(purpose, index))))``,
so a frame can be regenerated alone (see :func:`darkroom.sim.truth_image`) and adding
frames never changes the others.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PURPOSES", "stream"]

PURPOSES: dict[str, int] = {
    "catalog": 1,
    "bias": 2,
    "dark": 3,
    "flat": 4,
    "hot": 5,
    "pointing": 6,
    "seeing": 7,
    "noise_bias": 10,
    "noise_dark": 11,
    "noise_flat": 12,
    "noise_light": 13,
    "cr_dark": 21,
    "cr_flat": 22,
    "cr_light": 23,
    "header": 30,
}


def stream(seed: int, purpose: str, index: int = 0) -> np.random.Generator:
    """The random generator of ``purpose`` (a key of :data:`PURPOSES`) for frame ``index``."""
    seq = np.random.SeedSequence(seed, spawn_key=(PURPOSES[purpose], index))
    return np.random.Generator(np.random.PCG64(seq))
