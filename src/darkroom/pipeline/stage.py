"""What a pipeline stage is: plan units on the driver, run them on workers, record results.

A stage object holds only its settings, the repository root, the provenance ids
of the stages it reads and its own provenance id, so it pickles to a Dask worker.
``plan`` and ``record`` get a registry session and run on the driver only (the
single writer); ``run`` gets a :class:`Unit` and returns a picklable result after
writing its product files atomically under deterministic names, so a unit that is
run twice (after a crash between the file and the row) overwrites its own file and
leaves no orphan.

A stage class *declares* what it depends on (see :mod:`darkroom.pipeline.stages`
for the ordered list and how a new stage joins it):

``name``
    unique stage name (``darkroom run --only/--until/--redo NAME``, task rows).
``family``
    which family it belongs to (``night``, ``survey``, ``analysis``, ``images``);
    ``run.families`` in darkroom.yaml selects the families ``darkroom run`` runs.
``reads``
    names of the stages whose products it reads; their provenance ids become this
    stage's ``upstream`` and enter its provenance id, so changing a critical
    parameter of any of them makes new products of this stage too.
``settings``
    dotted keys of darkroom.yaml this stage reads (``("astrometry.extract",)``, or
    several keys below one section such as ``("calib.grouping", "calib.masters.bias")``).
    Only those values enter its provenance id; the stage receives the section at the
    keys' common prefix with every undeclared field at its default, so it cannot
    depend on a setting it did not declare.
``extra_inputs``
    names of extra provenance inputs that are not its own settings (``reference_catalog``,
    ``targets``), resolved by :data:`darkroom.pipeline.stages.INPUTS`; they arrive in
    ``self.inputs`` and enter the provenance id unless :meth:`Stage.critical` leaves
    them out.
``executor`` / ``max_in_flight``
    ``"default"`` runs on the executor ``darkroom run`` was given (serial or Dask);
    ``"thread"`` runs the stage's units on a thread pool with at most ``max_in_flight``
    units at once (network-bound work: downloads from a survey archive).
``reads_raw_files``
    the stage reads raw frames (the masters, the sky flat, calibrate): once no stage left in a
    run does, what ingest kept of them in memory is let go (:mod:`darkroom.io.keep`).
``min_units_for_workers``
    fewer units than this run in the driver even when workers were given: for a stage whose
    units are few and light, shipping them costs more than it saves (a worker first imports
    the stage's libraries, the driver mostly has them).
:meth:`Stage.unit_weight`
    how much work a unit is, relative to the stage's others (by default the frames a unit over a
    field holds, else 1): when one unit holds nearly all of a stage's work, workers cannot
    shorten the stage, and the stage runs in the driver (:func:`darkroom.pipeline.runner.run_stage`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from darkroom.errors import ConfigError
from darkroom.provenance import code_version, critical_params, plain_value, provenance_id
from darkroom.repo.models import Exposure, Provenance

__all__ = ["Stage", "Unit", "declared_critical", "quarantine_exposure"]


@dataclass(frozen=True)
class Unit:
    """One unit of work: a key unique within the stage, and the inputs ``run`` needs."""

    key: str
    payload: dict[str, Any] = field(default_factory=dict)


def quarantine_exposure(session: Session, exposure_id: int | None, reason: str) -> bool:
    """Mark a raw exposure quarantined with the reason (the input is at fault); True if marked."""
    exp = session.get(Exposure, exposure_id) if exposure_id is not None else None
    if exp is None:
        return False
    exp.state, exp.reason = "quarantined", reason
    return True


def declared_critical(config: BaseModel, keys: Sequence[str], *, below: str = "") -> dict[str, Any]:
    """The provenance parameters of the declared settings ``keys``: declared key -> critical value.

    ``keys`` are dotted from the top of darkroom.yaml (``"surveys.ztf"``); ``config`` is the
    section at ``below`` (``""``: the whole configuration; ``"surveys"``: the surveys section),
    so a stage built from its section alone gets the same parameters, hence the same provenance,
    as one built from the whole file. A section contributes its critical fields
    (:func:`~darkroom.provenance.critical_params`); a declared field marked
    ``json_schema_extra={"critical": False}`` (a cache folder, fsync) contributes nothing.
    """
    prefix = tuple(p for p in below.split(".") if p)
    out: dict[str, Any] = {}
    for key in keys:
        parts = tuple(p for p in key.split(".") if p)
        if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
            raise ConfigError(f"stage setting {key!r} is not below {below!r}")
        node: Any = config
        for part in parts[len(prefix) : -1]:
            node = getattr(node, part, None)
        leaf = parts[-1]
        fields = type(node).model_fields if isinstance(node, BaseModel) else {}
        if leaf not in fields:
            raise ConfigError(f"stage setting {key!r}: no such key in darkroom.yaml")
        extra = fields[leaf].json_schema_extra
        if isinstance(extra, dict) and extra.get("critical", True) is False:
            continue
        value = getattr(node, leaf)
        out[key] = critical_params(value) if isinstance(value, BaseModel) else plain_value(value)
    return out


class Stage(ABC):
    """Base class of every stage (see the module docstring for the declarations)."""

    name: ClassVar[str]
    family: ClassVar[str] = "night"
    reads: ClassVar[tuple[str, ...]] = ()
    settings: ClassVar[tuple[str, ...]] = ()
    extra_inputs: ClassVar[tuple[str, ...]] = ()
    executor: ClassVar[str] = "default"  # default | thread
    max_in_flight: ClassVar[int] = 4
    min_units_for_workers: ClassVar[int] = 2
    reads_raw_files: ClassVar[bool] = False

    @staticmethod
    def unit_weight(unit: Unit) -> float:
        """How much work ``unit`` is relative to the stage's other units: the frames of a unit
        over a field (``payload["frames"]``), else 1."""
        frames = unit.payload.get("frames")
        return float(max(len(frames), 1)) if isinstance(frames, list | tuple) else 1.0

    def __init__(
        self,
        root: Path,
        config: BaseModel,
        *,
        upstream: tuple[str, ...] = (),
        inputs: dict[str, Any] | None = None,
        critical: dict[str, Any] | None = None,
        lineage: tuple[str, ...] | None = None,
    ) -> None:
        self.root = Path(root)
        self.config = config
        self.upstream = tuple(upstream)
        #: every provenance upstream of this stage, directly or through others (reads of reads)
        self.lineage = tuple(lineage) if lineage is not None else self.upstream
        self.inputs: dict[str, Any] = dict(inputs or {})
        self._critical = critical
        self.provenance_id = provenance_id(self.name, self.critical(), upstream=self.upstream)

    @classmethod
    def enabled(cls, config: Any) -> bool:
        """Whether ``darkroom run`` runs this stage under ``config`` (an optional stage overrides)."""
        return True

    @property
    def upstream_by_name(self) -> dict[str, str]:
        """The provenance id of each stage in ``reads`` (built by ``build_stages``), else empty."""
        return (
            dict(zip(self.reads, self.upstream, strict=True)) if len(self.reads) == len(self.upstream) else {}
        )

    def critical(self) -> dict[str, Any]:
        """The parameters that enter the provenance id: the declared settings and the inputs.

        ``build_stages`` hands in the declared settings' values (``critical``); a stage made
        by hand uses its whole config. Override to leave out an input the settings do not use.
        """
        out = dict(self._critical) if self._critical is not None else critical_params(self.config)
        for key, value in sorted(self.inputs.items()):
            out[f"input:{key}"] = plain_value(value)
        return out

    def ensure_provenance(self, session: Session) -> None:
        """Record this stage's provenance row once."""
        if session.get(Provenance, self.provenance_id) is None:
            session.add(
                Provenance(
                    id=self.provenance_id,
                    stage=self.name,
                    params=self.critical(),
                    code_version=code_version(),
                    upstream=list(self.upstream),
                )
            )
            session.flush()

    @abstractmethod
    def plan(self, session: Session) -> list[Unit]:
        """Units whose products do not exist yet for this provenance (driver side)."""

    @abstractmethod
    def run(self, unit: Unit) -> Any:
        """Compute one unit and write its product files (worker side, no registry)."""

    @abstractmethod
    def record(self, session: Session, unit: Unit, result: Any) -> None:
        """Write the unit's result into the registry (driver side)."""

    #: whether :meth:`run` can leave its product file being written when it returns (see
    #: :meth:`begin_deferred_writes`): in the driver's own process, and within a batch of units
    #: on a Dask worker (settled there before the batch's results are shipped)
    defers_writes: ClassVar[bool] = False

    def begin_deferred_writes(self) -> None:
        """From now on :meth:`run` may return before its file is written and durable, with
        :meth:`settle` to wait for it: the runner records a unit only after the next one has
        run, so the write of one frame overlaps the computing of the next. Called by the
        runner for stages with ``defers_writes`` run in its own process, and by a Dask
        worker around a batch (which settles every result before returning it)."""
        return None

    def end_deferred_writes(self) -> None:
        """Wait for every write still going and stop deferring (the runner calls it at the end
        of the stage, also when the stage is interrupted)."""
        return None

    def writes_done(self, timeout: float = 0.0) -> bool:
        """Whether every write still going (deferred by :meth:`run`) has ended, waiting at most
        ``timeout`` seconds for them. True by default (nothing deferred)."""
        return True

    def settle(self, result: Any) -> Any:
        """The result of :meth:`run` with its product file written and durable (waits for a
        deferred write; raises what the write raised). The identity by default."""
        return result

    def quarantine(self, session: Session, unit: Unit, reason: str) -> None:
        """The unit failed because its input is bad: set the input aside (override).

        Called by the runner when a unit raises a :class:`~darkroom.errors.DarkroomError`
        with ``quarantine`` set; the default keeps nothing aside (the failed task with
        its reason is the record). A stage whose unit is one raw exposure quarantines it
        with :func:`quarantine_exposure`.
        """
        return None

    def forget(self, session: Session) -> None:
        """Remove this provenance's registry rows (products and tasks) so ``--redo`` runs it again.

        Product files are removed by :meth:`forget_products` where the stage knows them
        (rows deleted by provenance); files not removed are overwritten by the next run.
        """
        from sqlalchemy import delete

        from darkroom.repo.models import Task

        self.forget_products(session)
        session.execute(delete(Task).where(Task.stage == self.name, Task.provenance_id == self.provenance_id))

    def forget_products(self, session: Session) -> None:
        """Delete the product rows this stage recorded under its provenance (override)."""
        return None

    def product_path(self, *parts: str) -> Path:
        """Absolute path of a product below the repository root."""
        return self.root.joinpath(*parts)

    def relative(self, path: Path) -> str:
        """A product path as recorded in the registry (relative to the root)."""
        return str(Path(path).relative_to(self.root))

    def remove_files(self, paths: list[str | None]) -> int:
        """Delete product files (recorded relative paths) of this stage; returns how many went."""
        n = 0
        for rel in paths:
            if not rel:
                continue
            p = self.root / rel
            try:
                p.unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n
