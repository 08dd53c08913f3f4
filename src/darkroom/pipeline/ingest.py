"""Ingest: register raw files where they are, by checksum, with normalised metadata.

Walks folders, takes files whose names end in a FITS suffix (optionally .gz/.bz2),
skips everything else silently, and for each file not yet registered (by sha256)
reads it, checks it and normalises its header through the instrument profiles.
A file that cannot be used is registered as *quarantined* with a one-line reason,
so re-ingesting it is a no-op too; nothing stops the walk.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from astropy.time import Time
from sqlalchemy import select

from darkroom.config import IngestConfig
from darkroom.errors import DarkroomError
from darkroom.instruments import FrameMetadata, load_profiles, normalize
from darkroom.io.rawfits import is_fits_name, read_raw
from darkroom.repo.models import Exposure
from darkroom.repo.registry import Registry
from darkroom.repo.store import sha256_file

__all__ = ["Examined", "IngestSummary", "examine_file", "find_fits_files", "ingest_paths"]

log = logging.getLogger(__name__)


@dataclass
class Examined:
    """What ingest learnt about one file."""

    path: Path
    sha256: str
    size_bytes: int
    meta: FrameMetadata | None = None
    reason: str | None = None  # set when the file is quarantined

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class IngestSummary:
    """The outcome of one ingest call."""

    n_files: int = 0
    n_new: int = 0
    n_known: int = 0
    n_bytes: int = 0
    registered: list[Examined] = field(default_factory=list)
    quarantined: list[Examined] = field(default_factory=list)

    def counts(self, key: Callable[[FrameMetadata], object]) -> Counter:
        return Counter(key(e.meta) for e in self.registered if e.meta is not None)

    def table_rows(self) -> list[tuple[str, str, str, str, int]]:
        """Rows (night, type, filter, exptime, count) of the newly registered files."""
        c = Counter(
            (
                e.meta.night or "?",
                e.meta.frame_type,
                e.meta.filter or "-",
                "-" if e.meta.exptime_s is None else f"{e.meta.exptime_s:g}",
            )
            for e in self.registered
            if e.meta is not None
        )
        return [(*k, n) for k, n in sorted(c.items())]


def find_fits_files(
    paths: Iterable[Path | str], *, suffixes: Iterable[str], follow_symlinks: bool = False
) -> Iterator[Path]:
    """FITS files below the given files/folders, sorted per folder; others are skipped silently."""
    suffixes = tuple(suffixes)
    for p in paths:
        p = Path(p).expanduser()
        if p.is_file():
            if is_fits_name(p.name, suffixes):
                yield p
            continue
        for dirpath, dirnames, filenames in os.walk(p, followlinks=follow_symlinks):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and is_fits_name(name, suffixes):
                    yield Path(dirpath) / name


def examine_file(path: Path, profiles, *, sha256: str | None = None, checksum: bool = True) -> Examined:
    """Read and classify one file. Never raises for a bad file: the reason is returned.

    ``darkroom inspect`` calls this too (``checksum=False``), so that both commands give
    the same reason for the same file.
    """
    try:
        size = path.stat().st_size
        digest = sha256 or (sha256_file(path) if checksum else "")
    except OSError as exc:
        return Examined(path, "", 0, reason=f"cannot read file: {exc.strerror or exc}")
    item = Examined(path, digest, size)
    try:
        raw = read_raw(path, with_data=True)
        meta = normalize(raw.header, filename=path.name, shape=raw.shape, profiles=profiles, data=raw.data)
    except DarkroomError as exc:
        item.reason = exc.reason
        return item
    except Exception as exc:  # a bug or an exotic file must not stop the night
        log.exception("unexpected error reading %s", path)
        item.reason = f"unreadable: {exc.__class__.__name__}: {' '.join(str(exc).split())[:160]}"
        return item
    item.meta = meta
    if meta.companion is not None:
        item.reason = f"skipped: a {meta.companion}, not a frame to reduce"
    elif meta.frame_type == "unknown":
        item.reason = (
            f"unknown frame type: no type keyword or file-name hint matched (profile {meta.profile})"
        )
    return item


def _row(item: Examined) -> Exposure:
    meta = item.meta
    row = Exposure(
        sha256=item.sha256,
        path=str(item.path.resolve()),
        size_bytes=item.size_bytes,
        state="ok" if item.ok else "quarantined",
        reason=item.reason,
        meta={},
    )
    if meta is not None:
        row.profile = meta.profile
        row.frame_type = meta.frame_type
        row.instrument = meta.instrument or None
        row.telescope = meta.telescope or None
        row.object = meta.object or None
        row.filter = meta.filter
        row.exptime_s = meta.exptime_s
        row.binning_x, row.binning_y = meta.binning_x, meta.binning_y
        row.naxis1, row.naxis2 = meta.naxis1, meta.naxis2
        row.ccd_temp_c, row.set_temp_c = meta.ccd_temp_c, meta.set_temp_c
        row.time_mid_utc = meta.time_mid_utc
        row.mjd_mid = Time(meta.time_mid_utc, scale="utc").mjd if meta.time_mid_utc else None
        row.night = meta.night
        row.ra_deg, row.dec_deg = meta.ra_deg, meta.dec_deg
        row.meta = meta.model_dump(mode="json")
    return row


def ingest_paths(
    registry: Registry,
    paths: Iterable[Path | str],
    *,
    config: IngestConfig | None = None,
    profile_root: Path | None = None,
    profile_dirs: Iterable[Path | str] = (),
    progress: Callable[[Path], None] | None = None,
) -> IngestSummary:
    """Register every new FITS file below ``paths``; return what was done.

    ``profile_root`` resolves relative ``config.profile_dirs``; ``profile_dirs`` are more
    folders of user profiles (``darkroom ingest --profiles``), tried before the configured
    ones. ``progress`` is called once per file examined (for a progress bar).
    """
    config = config or IngestConfig()
    dirs = [Path(d).expanduser() for d in profile_dirs] + [
        Path(d) if Path(d).is_absolute() or profile_root is None else profile_root / d
        for d in config.profile_dirs
    ]
    profiles = load_profiles(extra_dirs=tuple(dirs))
    summary = IngestSummary()
    with registry.session() as s:
        known = set(s.scalars(select(Exposure.sha256)))
    pending: list[Exposure] = []

    def flush() -> None:
        if pending:
            with registry.session() as s:
                s.add_all(pending)
            pending.clear()

    for path in find_fits_files(paths, suffixes=config.extensions, follow_symlinks=config.follow_symlinks):
        summary.n_files += 1
        try:
            digest = sha256_file(path)
        except OSError as exc:
            digest = None
            log.warning("cannot read %s: %s", path, exc)
        if digest is not None and digest in known:
            summary.n_known += 1
            if progress:
                progress(path)
            continue
        item = examine_file(path, profiles, sha256=digest)
        if not item.sha256:  # unreadable file: cannot be registered by checksum, report only
            summary.quarantined.append(item)
            if progress:
                progress(path)
            continue
        known.add(item.sha256)
        summary.n_new += 1
        summary.n_bytes += item.size_bytes
        (summary.registered if item.ok else summary.quarantined).append(item)
        if not item.ok:
            log.warning("quarantined %s: %s", path, item.reason)
        pending.append(_row(item))
        if len(pending) >= config.batch_size:
            flush()
        if progress:
            progress(path)
    flush()
    return summary
