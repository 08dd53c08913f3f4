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
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from darkroom.constants import __version__

__all__ = ["code_version", "critical_params", "plain_value", "provenance_id"]


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


def critical_params(model: BaseModel) -> dict[str, Any]:
    """The parameters of a config section that enter provenance (recursively), as JSON values.

    Every field counts unless it is marked ``json_schema_extra={"critical": False}``
    (worker counts, progress bars, paths of the registry): forgetting a mark then
    makes new products rather than silently mixing products of two settings.
    """
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("critical", True) is False:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = critical_params(value)
            if sub:
                out[name] = sub
        else:
            out[name] = plain_value(value)
    return out


def plain_value(value: Any) -> Any:
    """A setting's value as plain JSON types (models dumped, paths as text)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value
