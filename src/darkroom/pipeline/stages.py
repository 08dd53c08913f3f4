"""The stages of ``darkroom run``: one ordered list of stage classes, and how they are built.

:data:`STAGES` is read top to bottom (like BANZAI's ORDERED_STAGES): a stage comes
after every stage it reads. :func:`build_stages` makes one object per class from
darkroom.yaml: each gets only its declared settings, the provenance ids of the
stages it declares in ``reads`` (so a change upstream makes new products
downstream, beside the old ones) and its declared extra inputs.

How a new stage joins (e.g. a survey download, an analysis, a coadd)
-------------------------------------------------------------------
1. Write the stage in its own module under ``darkroom/pipeline/`` (wiring only: read
   inputs, call one algorithm from its package, return a result; ``record`` writes
   rows). Subclass :class:`~darkroom.pipeline.stage.Stage` and declare::

       class ZtfDownloadStage(Stage):
           name = "ztf_download"            # unique; used by --only/--until/--redo
           family = "survey"                 # night | survey | analysis | images
           reads = ()                        # names of stages whose products it reads
           settings = ("surveys.ztf",)       # darkroom.yaml keys it reads (enter provenance)
           extra_inputs = ("targets",)       # keys of INPUTS below (enter provenance)
           executor = "thread"               # network-bound: a thread pool ...
           max_in_flight = 4                 # ... with at most 4 units at once

   Its constructor is the base one: ``(root, config, *, upstream, inputs, critical)``;
   ``self.config`` is the model at the settings keys' common prefix (here the
   ``surveys.ztf`` section), ``self.inputs["targets"]`` the resolved input,
   ``self.upstream`` the provenance ids of the stages in ``reads``.
2. Put its settings model next to the code that uses it (its algorithm package, e.g.
   ``darkroom/surveys/settings.py``) and add the section to
   :class:`darkroom.config.DarkroomConfig` (``surveys: SurveySettings = Field(...)``).
3. Add the class to :data:`STAGES` below, after every stage it reads. That is all:
   ``darkroom run`` runs it when its family is selected (``run.families`` in
   darkroom.yaml; all families by default), ``--redo NAME`` forgets it and every stage
   that reads it, and ``darkroom status`` lists its provenance.
4. Write its products one row per product keyed by (thing, provenance) and make
   ``forget_products`` a DELETE by provenance (plus its files).

A stage of a family may read a stage of another family (an analysis reads the
lightcurves stage); the reader's provenance then follows the other's settings even
when only the reader's family is selected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from darkroom.config import DarkroomConfig
from darkroom.errors import ConfigError
from darkroom.pipeline.associate import AssociateStage
from darkroom.pipeline.astrometry import AstrometryStage
from darkroom.pipeline.badpixels import BadPixelStage
from darkroom.pipeline.calibrate import CalibrateStage
from darkroom.pipeline.calibration import MasterBiasStage, MasterDarkStage, MasterFlatStage
from darkroom.pipeline.coadd import CoaddStage
from darkroom.pipeline.cutouts import CutoutStage
from darkroom.pipeline.extract import ExtractStage
from darkroom.pipeline.lightcurves import LightCurvesStage
from darkroom.pipeline.photometry import PhotometryStage
from darkroom.pipeline.quality import QualityStage
from darkroom.pipeline.sdss import SdssDownloader, SdssFieldFinder
from darkroom.pipeline.skyflat import SkyFlatStage
from darkroom.pipeline.stage import Stage, declared_critical
from darkroom.pipeline.ztf import ZtfDownloader

__all__ = [
    "FAMILIES",
    "INPUTS",
    "STAGES",
    "build_stages",
    "downstream_of",
    "reference_catalog",
    "select_families",
    "settings_view",
]

#: Every stage class in the order they run (a stage after every stage it reads).
STAGES: list[type[Stage]] = [
    MasterBiasStage,
    MasterDarkStage,
    MasterFlatStage,
    SkyFlatStage,
    BadPixelStage,
    CalibrateStage,
    ExtractStage,
    QualityStage,
    AstrometryStage,
    AssociateStage,
    PhotometryStage,
    LightCurvesStage,
    CoaddStage,
    # survey family: run when listed in surveys.run (a survey repository)
    ZtfDownloader,
    SdssFieldFinder,
    SdssDownloader,
    CutoutStage,
]

#: The stage families ``run.families`` may select.
FAMILIES = ("night", "survey", "analysis", "images")


def reference_catalog(config: DarkroomConfig) -> Any:
    """The one reference catalogue of a repository: the photometry's own, else the astrometry's.

    None when neither is configured (header WCS only; instrumental magnitudes).
    """
    return config.photometry.measure.reference_catalog or config.astrometry.solve.reference_catalog


#: Extra provenance inputs a stage may declare in ``extra_inputs``: name -> value from the config.
INPUTS: dict[str, Callable[[DarkroomConfig], Any]] = {
    "reference_catalog": reference_catalog,
    "ref_mag_column": lambda config: config.photometry.measure.ref_mag_column,
    "targets": lambda config: tuple(config.targets),
    # a stage that solves and calibrates its own images like the night's (the coadd stage)
    "astrometry_extract": lambda config: config.astrometry.extract,
    "astrometry_solve": lambda config: config.astrometry.solve,
    "photometry_measure": lambda config: config.photometry.measure,
}


def _at(model: Any, dotted: str) -> Any:
    node = model
    for part in [p for p in dotted.split(".") if p]:
        if not hasattr(node, part):
            raise ConfigError(f"stage setting {dotted!r}: no such key in darkroom.yaml")
        node = getattr(node, part)
    return node


def _masked(model: Any, keep: list[tuple[str, ...]]) -> Any:
    """``model`` with every field not on a ``keep`` path reset to its default."""
    if any(not path for path in keep) or not isinstance(model, BaseModel):
        return model
    try:
        defaults = type(model)()
    except Exception:  # a model without defaults everywhere: keep it whole
        return model
    update = {}
    for name in type(model).model_fields:
        sub = [path[1:] for path in keep if path[0] == name]
        value = getattr(model, name)
        update[name] = _masked(value, sub) if sub else getattr(defaults, name)
    return type(model).model_construct(**update)


def settings_view(config: DarkroomConfig, keys: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The settings a stage declared: the section at the keys' common prefix (undeclared fields at
    their defaults) and the critical values of the declared keys (its provenance parameters,
    :func:`~darkroom.pipeline.stage.declared_critical`)."""
    if not keys:
        return None, {}
    paths = [tuple(k.split(".")) for k in keys]
    prefix: tuple[str, ...] = ()
    for parts in zip(*paths, strict=False):
        if len(set(parts)) > 1:
            break
        prefix = (*prefix, parts[0])
    section = _at(config, ".".join(prefix))
    view = _masked(section, [p[len(prefix) :] for p in paths])
    return view, declared_critical(config, keys)


def build_stages(
    root: Path, config: DarkroomConfig, classes: Iterable[type[Stage]] | None = None
) -> list[Stage]:
    """One object per stage class, in order, each with its settings, upstream ids and inputs."""
    built: dict[str, Stage] = {}
    for cls in classes if classes is not None else STAGES:
        missing = [name for name in cls.reads if name not in built]
        if missing:
            raise ConfigError(f"stage {cls.name} reads {', '.join(missing)}, which do not come before it")
        view, critical = settings_view(config, cls.settings)
        inputs = {}
        for name in cls.extra_inputs:
            if name not in INPUTS:
                raise ConfigError(f"stage {cls.name}: unknown input {name!r}; inputs are {', '.join(INPUTS)}")
            inputs[name] = INPUTS[name](config)
        upstream = tuple(built[name].provenance_id for name in cls.reads)
        lineage = tuple(dict.fromkeys([*upstream, *(p for n in cls.reads for p in built[n].lineage)]))
        stage = cls(root, view, upstream=upstream, inputs=inputs, critical=critical)
        stage.lineage = lineage  # set after construction: stage classes may narrow the constructor
        built[cls.name] = stage
    return list(built.values())


def select_families(stages: list[Stage], families: Sequence[str] | None) -> list[Stage]:
    """The stages of the selected families (None: all), in order."""
    if families is None:
        return list(stages)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"run.families: unknown {', '.join(unknown)}; families are {', '.join(FAMILIES)}")
    return [s for s in stages if s.family in families]


def downstream_of(stages: list[Stage], name: str) -> list[Stage]:
    """``name`` and every stage that reads it, directly or through others, in order."""
    doomed = {name}
    for st in stages:
        if any(r in doomed for r in type(st).reads):
            doomed.add(st.name)
    return [s for s in stages if s.name in doomed]
