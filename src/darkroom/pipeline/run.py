"""``darkroom run``: every stage in dependency order over all that is registered.

The stage list is read top to bottom like BANZAI's ORDERED_STAGES; each stage
carries the provenance of the stages it depends on, so changing a critical
parameter upstream gives new products downstream too, beside the old ones.
"""

from __future__ import annotations

from pathlib import Path

from darkroom.config import DarkroomConfig
from darkroom.errors import ConfigError
from darkroom.pipeline.astrometry import astrometry_stages
from darkroom.pipeline.calibration import calibration_stages
from darkroom.pipeline.coadd import coadd_stages
from darkroom.pipeline.photometry import photometry_stages
from darkroom.pipeline.stage import Stage
from darkroom.repo.registry import Registry

__all__ = ["all_stages", "coadd_family", "forget_from", "select_stages", "stage_names"]


def all_stages(root: Path, config: DarkroomConfig) -> list[Stage]:
    """Every stage, in the order they must run."""
    calib = calibration_stages(root, config.calib)
    astrom = astrometry_stages(root, config.astrometry, upstream=(calib[-1].provenance_id,))
    phot = photometry_stages(
        root,
        config.photometry,
        upstream=(astrom[-1].provenance_id,),
        reference_catalog=config.astrometry.solve.reference_catalog,
        targets=config.targets,
    )
    stages = [*calib, *astrom, *phot]
    if config.coadd.enabled:
        stages += coadd_stages(
            root,
            config.coadd,
            upstream=(phot[-1].provenance_id,),
            astrometry_provenance=astrom[-1].provenance_id,
        )
    return stages


def coadd_family(root: Path, config: DarkroomConfig) -> list[Stage]:
    """The coadd stages wired after every other stage, whether or not ``coadd.enabled``."""
    stages = all_stages(
        root, config.model_copy(update={"coadd": config.coadd.model_copy(update={"enabled": False})})
    )
    astrom = next(s for s in stages if s.name == "astrometry")
    return coadd_stages(
        root, config.coadd, upstream=(stages[-1].provenance_id,), astrometry_provenance=astrom.provenance_id
    )


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
    """For ``--redo NAME``: forget the products of NAME and of every stage after it.

    Downstream stages go first (their rows refer to NAME's rows). Returns the
    names forgotten.
    """
    names = stage_names(stages)
    if name not in names:
        raise ConfigError(f"--redo {name!r}: no such stage; stages are {', '.join(names)}")
    doomed = stages[names.index(name) :]
    with registry.session() as s:
        for stage in reversed(doomed):
            stage.forget(s)
    return [s.name for s in doomed]
