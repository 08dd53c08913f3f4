"""Analysis settings and user finders.

A user's own finder is a class named by dotted path in darkroom.yaml
(``analysis.user_finders: ["mypkg.finders:DipFinder"]``); it is imported with
:mod:`importlib` (never ``exec``), made with no arguments and called on each object's
quality-checked light curve::

    class DipFinder:
        name = "dips"                       # goes to detection.finder

        def find(self, table):              # astropy Table: mjd, mag, magerr, band (qflag == 0 rows)
            import numpy as np
            m = np.asarray(table["mag"]); e = np.asarray(table["magerr"])
            z = (m - np.median(m)) / e      # fainter than usual by > 5 sigma
            return [
                {"mjd": float(table["mjd"][i]), "snr": float(z[i]), "duration_d": 0.0,
                 "peak_mag": float(m[i]), "score": float(z[i])}
                for i in np.flatnonzero(z > 5)
            ]

Each returned dict becomes a ``detection`` row (keys ``mjd, snr, duration_d, peak_mag,
score``; others go to ``meta``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from darkroom.analysis.inject import InjectionConfig
from darkroom.analysis.periodic import PeriodConfig
from darkroom.analysis.quality import QualityConfig
from darkroom.analysis.transient import TransientConfig
from darkroom.errors import ConfigError

__all__ = ["AnalysisConfig", "Finder", "load_finder"]


class Finder(Protocol):
    """What a user finder provides."""

    name: str

    def find(self, table: Any) -> list[dict[str, Any]]: ...


class AnalysisConfig(BaseModel):
    """The ``analysis`` section of darkroom.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    season_gap_days: float = Field(100.0, gt=0, description="import: a longer gap starts a new season [day]")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    period: PeriodConfig = Field(default_factory=PeriodConfig)
    transient: TransientConfig = Field(default_factory=TransientConfig)
    injection: InjectionConfig = Field(default_factory=InjectionConfig)
    user_finders: tuple[str, ...] = Field((), description="dotted paths 'package.module:Class'")


def load_finder(path: str) -> Finder:
    """Import ``package.module:Class`` (or ``package.module.Class``) and make one (no arguments)."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"user finder {path!r}: write it as 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"user finder {path!r}: cannot import {module_name!r} ({exc})") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"user finder {path!r}: {module_name!r} has no {attr!r}")
    finder = cls()
    if not callable(getattr(finder, "find", None)):
        raise ConfigError(f"user finder {path!r}: the class has no find(table) method")
    if not getattr(finder, "name", None):
        finder.name = attr  # type: ignore[attr-defined]
    return finder
