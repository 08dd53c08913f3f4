"""What a pipeline stage is: plan units on the driver, run them on workers, record results.

A stage object holds only its configuration, the repository root and its
provenance id, so it pickles to a Dask worker. ``plan`` and ``record`` get a
registry session and run on the driver only (the single writer); ``run`` gets a
:class:`Unit` and returns a picklable result after writing its product files
atomically under deterministic names, so a unit that is run twice (after a crash
between the file and the row) overwrites its own file and leaves no orphan.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from darkroom.provenance import code_version, critical_params, provenance_id
from darkroom.repo.models import Provenance

__all__ = ["Stage", "Unit"]


@dataclass(frozen=True)
class Unit:
    """One unit of work: a key unique within the stage, and the inputs ``run`` needs."""

    key: str
    payload: dict[str, Any] = field(default_factory=dict)
    exposure_id: int | None = None  # the raw exposure to quarantine when the input is at fault


class Stage(ABC):
    """Base class of every stage (see the module docstring)."""

    name: ClassVar[str]
    depends_on: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: Path, config: BaseModel, *, upstream: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.config = config
        self.upstream = tuple(upstream)
        self.provenance_id = provenance_id(self.name, critical_params(config), upstream=self.upstream)

    def ensure_provenance(self, session: Session) -> None:
        """Record this stage's provenance row once."""
        if session.get(Provenance, self.provenance_id) is None:
            session.add(
                Provenance(
                    id=self.provenance_id,
                    stage=self.name,
                    params=critical_params(self.config),
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

    def forget(self, session: Session) -> None:
        """Remove this provenance's registry rows (products and tasks) so ``--redo`` runs it again.

        Files are left in place and overwritten by the new run (same names).
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
