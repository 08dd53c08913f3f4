"""Provenance ids: which code and which parameters made a product.

``provenance_id = sha256(stage, critical parameters, code version, upstream ids)``,
shortened to 16 hex digits. Changing a critical parameter gives a new id, so new
products are made beside the old ones; the same parameters give the same id, so a
re-run skips what is done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from darkroom import __version__

__all__ = ["code_version", "provenance_id"]


def code_version() -> str:
    """The code version that enters provenance: the package's major.minor.

    Patch releases fix bugs without changing products on purpose; a change that
    alters products bumps the minor version.
    """
    parts = __version__.split("+")[0].split(".")
    return ".".join(parts[:2])


def provenance_id(
    stage: str,
    critical: Mapping[str, Any],
    *,
    upstream: Iterable[str] = (),
    version: str | None = None,
) -> str:
    """Deterministic id of a stage's products (16 hex digits)."""
    payload = {
        "stage": stage,
        "critical": critical,
        "version": version if version is not None else code_version(),
        "upstream": sorted(set(upstream)),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
