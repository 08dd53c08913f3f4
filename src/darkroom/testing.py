"""Helpers for tests and benchmarks: where the shared real data lives."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]

_ENV = "DARKROOM_DATA"


def shared_data_dir() -> Path:
    """Folder of the real data sets (``../shared/data`` beside the checkout).

    ``DARKROOM_DATA`` overrides it. Raises ``FileNotFoundError`` with the paths tried:
    tests on the real data must fail loudly, never skip, when it is missing.
    """
    if _ENV in os.environ:
        path = Path(os.environ[_ENV]).expanduser()
    else:
        root = Path(__file__).resolve().parents[2]  # src/darkroom/testing.py -> checkout
        path = root.parent / "shared" / "data"
    if not path.is_dir():
        raise FileNotFoundError(
            f"shared test data not found at {path}; set {_ENV} to the folder holding arcsat-xo1b-transit etc."
        )
    return path
