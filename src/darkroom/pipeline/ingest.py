"""Ingest: register raw files where they are, by checksum, with normalised metadata.

Walks folders, takes files whose names end in a FITS suffix (optionally .gz/.bz2),
skips everything else silently, and for each file not yet registered (by sha256)
reads it, checks it and normalises its header through the instrument profiles.
A file that cannot be used is registered as *quarantined* with a one-line reason,
so re-ingesting it is a no-op too; nothing stops the walk.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from astropy.time import Time
from sqlalchemy import select

from darkroom.config import IngestConfig
from darkroom.errors import DarkroomError
from darkroom.instruments import FrameMetadata, load_profiles, normalize
from darkroom.io.rawfits import ReadLimits, is_fits_name, read_raw, regular_file_problem
from darkroom.repo.models import Exposure
from darkroom.repo.registry import Registry
from darkroom.repo.store import sha256_file

__all__ = ["Examined", "IngestSummary", "check_paths", "examine_file", "find_fits_files", "ingest_paths"]

log = logging.getLogger(__name__)


@dataclass
class Examined:
    """What ingest learnt about one file."""

    path: Path
    sha256: str
    size_bytes: int
    meta: FrameMetadata | None = None
    reason: str | None = None  # set when the file is quarantined
    dropped_cards: tuple[str, ...] = ()  # unparsable header cards left out

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
    #: entries never opened (FIFO, device, unreadable folder...) with the reason
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: keyword -> number of files in which an unparsable card of that keyword was left out
    dropped_cards: Counter = field(default_factory=Counter)

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


def check_paths(paths: Iterable[Path | str]) -> list[Path]:
    """The paths to ingest, each an existing file or folder; else a one-line error.

    A cron line with a typo must fail loudly, not report "0 files seen" for ever.
    """
    out = []
    for p in paths:
        p = Path(p).expanduser()
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            raise DarkroomError(f"{p}: no such file or folder") from None
        except OSError as exc:
            raise DarkroomError(f"{p}: cannot be read ({exc.strerror or exc})") from None
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise DarkroomError(f"{p}: {regular_file_problem(mode)}")
        out.append(p)
    return out


def find_fits_files(
    paths: Iterable[Path | str],
    *,
    suffixes: Iterable[str],
    follow_symlinks: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
) -> Iterator[Path]:
    """Regular FITS files below the given files/folders, sorted per folder.

    Files whose names are not FITS names are passed over silently. A FITS-named entry
    that is not a regular file (FIFO, socket, device, broken link) and a folder that
    cannot be read are reported through ``on_skip(path, reason)`` and never opened:
    reading a FIFO or ``/dev/zero`` would block the night.
    """
    suffixes = tuple(suffixes)

    def skip(path: Path, reason: str) -> None:
        if on_skip is not None:
            on_skip(path, reason)

    def regular(path: Path) -> bool:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            reason = "broken link" if path.is_symlink() else (exc.strerror or str(exc))
            skip(path, f"cannot read file: {reason}")
            return False
        problem = regular_file_problem(mode)
        if problem:
            skip(path, problem)
            return False
        return True

    for p in paths:
        p = Path(p).expanduser()
        try:
            is_dir = stat.S_ISDIR(p.stat().st_mode)
        except OSError as exc:
            skip(p, f"cannot read: {exc.strerror or exc}")
            continue
        if not is_dir:
            if is_fits_name(p.name, suffixes) and regular(p):
                yield p
            continue

        def walk_error(exc: OSError, _top: Path = p) -> None:
            skip(Path(exc.filename or _top), f"cannot read folder: {exc.strerror or exc}")

        for dirpath, dirnames, filenames in os.walk(p, followlinks=follow_symlinks, onerror=walk_error):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if not name.startswith(".") and is_fits_name(name, suffixes):
                    path = Path(dirpath) / name
                    if regular(path):
                        yield path


def examine_file(
    path: Path,
    profiles,
    *,
    sha256: str | None = None,
    checksum: bool = True,
    limits: ReadLimits | None = None,
) -> Examined:
    """Read and classify one file. Never raises for a bad file: the reason is returned.

    ``darkroom inspect`` calls this too (``checksum=False``), so that both commands give
    the same reason for the same file. ``limits`` bound the reading (ingest's configured ones).
    """
    try:
        size = path.stat().st_size
        digest = sha256 or (sha256_file(path) if checksum else "")
    except OSError as exc:
        return Examined(path, "", 0, reason=f"cannot read file: {exc.strerror or exc}")
    item = Examined(path, digest, size)
    try:
        raw = read_raw(path, with_data=True, limits=limits)
        item.dropped_cards = raw.dropped_cards
        meta = normalize(raw.header, filename=path.name, shape=raw.shape, profiles=profiles, data=raw.data)
    except DarkroomError as exc:
        item.reason = exc.reason
        if item.dropped_cards:  # the keyword it missed may be one of them: say so
            item.reason += f" (unparsable header cards left out: {', '.join(item.dropped_cards[:5])})"
        return item
    except Exception as exc:  # a bug or an exotic file must not stop the night
        # The traceback goes to the log file only; the console and registry get one line.
        log.debug("unexpected error reading %s", path, exc_info=True)
        item.reason = f"unreadable file ({exc.__class__.__name__}): {' '.join(str(exc).split())[:160]}"
        return item
    item.meta = meta
    if meta.companion is not None:
        item.reason = f"skipped: a {meta.companion}, not a frame to reduce"
    elif meta.frame_type == "unknown":
        item.reason = (
            f"unknown frame type: no type keyword or file-name hint matched (profile {meta.profile})"
        )
    return item


#: below this many new files, processes cost more to start than they save (~18 ms a 1k x 1k frame)
MIN_FILES_FOR_WORKERS = 16

_worker_args: tuple = ()  # (profiles, limits) in an examining process, set by _start_examiner


def _start_examiner(profiles, limits: ReadLimits) -> None:
    global _worker_args
    _worker_args = (profiles, limits)


def _examine_in_worker(job: tuple[Path, str | None]) -> Examined:
    profiles, limits = _worker_args
    return examine_file(job[0], profiles, sha256=job[1], limits=limits)


def _fork_context():
    """The fork start method where it is safe and cheap (Linux): the children share the parent's
    imported modules and parsed profiles, so each starts in milliseconds. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def examine_files(
    todo: list[tuple[Path, str | None]], profiles, *, limits: ReadLimits | None = None, workers: int = 0
) -> Iterator[Examined]:
    """:func:`examine_file` over ``(path, sha256)`` pairs, yielded in their order.

    With ``workers`` >= 2 and at least :data:`MIN_FILES_FOR_WORKERS` files, the files are read
    in that many forked processes (reading is CPU work: decompression, header parsing, the
    data's conversion); the driver only records. A process that dies (a reader crashing on a
    damaged file) costs nothing already yielded: the files not yet examined are read here.
    """
    context = _fork_context() if workers >= 2 and len(todo) >= MIN_FILES_FOR_WORKERS else None
    done = 0
    if context is not None:
        chunk = max(1, min(8, len(todo) // (4 * workers)))  # few round trips, still balanced
        try:
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=context,
                initializer=_start_examiner,
                initargs=(profiles, limits),
            ) as pool:
                for item in pool.map(_examine_in_worker, todo, chunksize=chunk):
                    done += 1
                    yield item
        except BrokenProcessPool:
            log.warning("an ingest process died; reading the remaining %d files here", len(todo) - done)
    for path, digest in todo[done:]:
        yield examine_file(path, profiles, sha256=digest, limits=limits)


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
    workers: int = 0,
) -> IngestSummary:
    """Register every new FITS file below ``paths``; return what was done.

    ``profile_root`` resolves relative ``config.profile_dirs``; ``profile_dirs`` are more
    folders of user profiles (``darkroom ingest --profiles``), tried before the configured
    ones. ``progress`` is called once per file examined (for a progress bar). ``workers`` >= 2
    reads and checks the new files in that many processes (see :func:`examine_files`); the
    registry gets the same rows in the same order either way.
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

    paths = check_paths(paths)
    limits = ReadLimits(
        max_image_mb=config.max_image_mb, max_hdus=config.max_hdus, timeout_s=config.read_timeout_s
    )
    files = find_fits_files(
        paths,
        suffixes=config.extensions,
        follow_symlinks=config.follow_symlinks,
        on_skip=lambda p, reason: (
            summary.skipped.append((p, reason)),
            log.warning("skipped %s: %s", p, reason),
        ),
    )
    todo: list[tuple[Path, str | None]] = []  # new files, in the walk's order
    for path in files:
        summary.n_files += 1
        try:
            digest = sha256_file(path)
        except OSError:
            digest = None  # examine_file records why
        if digest is not None and digest in known:
            summary.n_known += 1
            if progress:
                progress(path)
            continue
        if digest is not None:
            known.add(digest)  # the same bytes twice in the walk: registered once
        todo.append((path, digest))
    for item in examine_files(todo, profiles, limits=limits, workers=workers):
        path = item.path
        summary.dropped_cards.update(item.dropped_cards)
        if not item.sha256:  # unreadable file: cannot be registered by checksum, report only
            summary.quarantined.append(item)
            if progress:
                progress(path)
            continue
        summary.n_new += 1
        summary.n_bytes += item.size_bytes
        (summary.registered if item.ok else summary.quarantined).append(item)
        if not item.ok:
            log.info("quarantined %s: %s", path, item.reason)  # the summary lists them all
        pending.append(_row(item))
        if len(pending) >= config.batch_size:
            flush()
        if progress:
            progress(path)
    flush()
    if summary.dropped_cards:
        # Once per ingest, not once per file: such cards are common and usually irrelevant.
        log.warning(
            "left out unparsable header cards (they are not used): %s",
            ", ".join(
                f"{k} in {n} file{'s' if n > 1 else ''}" for k, n in sorted(summary.dropped_cards.items())
            ),
        )
    return summary
