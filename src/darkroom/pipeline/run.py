"""``darkroom run``: the declared stages (:mod:`darkroom.pipeline.stages`) over all that is registered.

Which stages run: the families selected in darkroom.yaml (``run.families``), cut by
``--only`` / ``--until``; ``--redo NAME`` forgets NAME's products and those of every
stage that reads them (by declaration, not list position).
"""

from __future__ import annotations

from pathlib import Path

from darkroom.config import DarkroomConfig
from darkroom.errors import ConfigError
from darkroom.pipeline.stage import Stage
from darkroom.pipeline.stages import build_stages, downstream_of, select_families
from darkroom.repo.registry import Registry

__all__ = ["all_stages", "coadd_family", "forget_from", "section_stages", "select_stages", "stage_names"]


def all_stages(root: Path, config: DarkroomConfig) -> list[Stage]:
    """Every stage of the selected families, in the order they must run."""
    stages = select_families(build_stages(root, config), config.run.families)
    return [st for st in stages if type(st).enabled(config)]


def coadd_family(root: Path, config: DarkroomConfig) -> list[Stage]:
    """The image-products family (coadds), whether or not ``coadd.enabled`` (``darkroom coadd``)."""
    return [st for st in build_stages(root, config) if st.family == "images"]


def section_stages(root: Path, config: DarkroomConfig, section: str) -> list[Stage]:
    """The stages whose settings live in one darkroom.yaml section (``calib``, ``astrometry``...).

    ``darkroom calibrate`` and ``darkroom astrometry`` run these; the provenance chain is
    the same as ``darkroom run``'s.
    """
    return [st for st in build_stages(root, config) if any(k.split(".")[0] == section for k in st.settings)]


def stage_names(stages: list[Stage]) -> list[str]:
    return [s.name for s in stages]


def select_stages(stages: list[Stage], *, until: str | None = None, only: str | None = None) -> list[Stage]:
    """The stages to run for ``--until`` / ``--only`` (names checked, with the list in the error)."""
    names = stage_names(stages)
    for opt, value in (("--until", until), ("--only", only)):
        if value is not None and value not in names:
            raise ConfigError(f"{opt} {value!r}: no such stage; stages are {', '.join(names)}")
    if only is not None:
        return [s for s in stages if s.name == only]
    if until is not None:
        return stages[: names.index(until) + 1]
    return list(stages)


def forget_from(registry: Registry, stages: list[Stage], name: str) -> list[str]:
    """For ``--redo NAME``: forget the products of NAME and of every stage that reads them.

    Readers go first (their rows refer to NAME's rows). Returns the names forgotten.
    """
    names = stage_names(stages)
    if name not in names:
        raise ConfigError(f"--redo {name!r}: no such stage; stages are {', '.join(names)}")
    doomed = downstream_of(stages, name)
    with registry.session() as s:
        for stage in reversed(doomed):
            stage.forget(s)
    return [s.name for s in doomed]
