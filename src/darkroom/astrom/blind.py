"""Blind plate solving with astrometry.net: local ``solve-field`` or the nova.astrometry.net service.

Used when a frame has no usable pointing (or the near-blind search failed). Both engines are
optional and detected at run time; the result says which one solved the frame, and the caller
refines the WCS with darkroom's own TAN-SIP fit against its reference catalogue.

* :func:`solve_field_available` / :func:`solve_with_solve_field` -- the local engine: the
  source list (0-based x, y and a flux) is written as an astrometry.net "xylist" (1-based
  pixels, brightest first) and ``solve-field`` is run with a backend configuration that names
  only the index files whose quad scales fit the field (quads of 10 % to 100 % of the field's
  size, read from each index's SCALE_L / SCALE_U header cards, in radians), so a Debian
  ``astrometry-data-*`` installation with many scales solves quickly.
* :func:`solve_with_nova` -- the web service through ``astroquery.astrometry_net`` with the
  user's API key (``api_url`` may point at a stand-in server in tests).

Pixel positions are 0-based in and out (the returned WCS is used with origin 0, like every
darkroom WCS); astrometry.net's own files are 1-based and converted here.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning

from darkroom.astrom.settings import DEFAULT_INDEX_DIRS, BlindConfig
from darkroom.errors import SolveError

__all__ = [
    "BlindConfig",
    "BlindSolution",
    "IndexFile",
    "blind_solve",
    "index_files",
    "indexes_for_field",
    "solve_field_available",
    "solve_with_nova",
    "solve_with_solve_field",
]

log = logging.getLogger(__name__)

_ARCMIN_PER_RAD = 180.0 * 60.0 / math.pi


@dataclass(frozen=True)
class BlindSolution:
    """A blind solution: the WCS (origin 0), the engine used and the matched-star count when known."""

    wcs: WCS
    method: str  #: "astrometry.net solve-field (index-...)" or "nova.astrometry.net"
    n_matched: int | None = None


@dataclass(frozen=True)
class IndexFile:
    """One astrometry.net index file and the quad scales it holds [arcmin]."""

    path: Path
    quad_min_arcmin: float
    quad_max_arcmin: float


def solve_field_available() -> bool:
    """Whether astrometry.net's ``solve-field`` is on the PATH."""
    return shutil.which("solve-field") is not None


@lru_cache(maxsize=8)
def _scan(dirs: tuple[str, ...]) -> tuple[IndexFile, ...]:
    found = []
    for d in dirs:
        folder = Path(d)
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("index-*.fits")):
            try:
                h = fits.getheader(path, 0)
                lo, hi = float(h["SCALE_L"]), float(h["SCALE_U"])
            except (OSError, KeyError, ValueError) as exc:
                log.debug("index %s skipped: %s", path, exc)
                continue
            found.append(IndexFile(path, lo * _ARCMIN_PER_RAD, hi * _ARCMIN_PER_RAD))
    return tuple(found)


def index_files(dirs: tuple[str, ...] | list[str] = DEFAULT_INDEX_DIRS) -> list[IndexFile]:
    """The index files in ``dirs`` with their quad scales (from SCALE_L / SCALE_U, radians)."""
    return list(_scan(tuple(str(d) for d in dirs)))


def indexes_for_field(
    indexes: list[IndexFile], *, width_arcmin: float, height_arcmin: float, min_fraction: float = 0.1
) -> list[IndexFile]:
    """Index files with quads between ``min_fraction`` of the shorter side and the diagonal."""
    low = min_fraction * min(width_arcmin, height_arcmin)
    high = math.hypot(width_arcmin, height_arcmin)
    return [ix for ix in indexes if ix.quad_max_arcmin > low and ix.quad_min_arcmin < high]


def _brightest(x: np.ndarray, y: np.ndarray, flux: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, flux = x[ok], y[ok], flux[ok]
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    order = np.argsort(-flux, kind="stable")[:n]
    return x[order], y[order], flux[order]


def _read_wcs(path: Path) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        header = fits.getheader(path)
        # astrometry.net writes 1-based CRPIX like every FITS file; astropy handles origin
        return WCS(header, naxis=2)


def solve_with_solve_field(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    shape: tuple[int, int],
    pixel_scale_arcsec: float | None = None,
    ra_deg: float | None = None,
    dec_deg: float | None = None,
    radius_deg: float | None = None,
    config: BlindConfig | None = None,
) -> BlindSolution:
    """Solve a source list (0-based x, y; flux) with the local ``solve-field``.

    ``shape`` is the image's (ny, nx). A ``pixel_scale_arcsec`` hint narrows the scale search
    (and the index files to those fitting the field); without it every installed index and the
    scales 0.1-1000 arcsec/pixel are tried. ``ra_deg, dec_deg, radius_deg`` optionally restrict
    the sky search. Raises :class:`SolveError` with a one-line reason when it does not solve.
    """
    cfg = config or BlindConfig()
    exe = shutil.which("solve-field")
    if exe is None:
        raise SolveError("blind solving: astrometry.net's solve-field is not installed")
    ny, nx = shape
    xs, ys, fs = _brightest(
        np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float), cfg.max_sources
    )
    if xs.size < 4:
        raise SolveError(f"blind solving: {xs.size} sources, at least 4 needed")
    indexes = index_files(cfg.index_dirs)
    if not indexes:
        raise SolveError(f"blind solving: no astrometry.net index files in {', '.join(cfg.index_dirs)}")
    if pixel_scale_arcsec:
        w_arcmin = nx * pixel_scale_arcsec / 60.0
        h_arcmin = ny * pixel_scale_arcsec / 60.0
        chosen = indexes_for_field(
            indexes, width_arcmin=w_arcmin, height_arcmin=h_arcmin, min_fraction=cfg.min_quad_fraction
        )
        if not chosen:
            raise SolveError(
                f"blind solving: no index file has quads for a {w_arcmin:.0f}' x {h_arcmin:.0f}' field "
                f"(installed: {min(i.quad_min_arcmin for i in indexes):.0f}'-"
                f"{max(i.quad_max_arcmin for i in indexes):.0f}')"
            )
        scale_lo = pixel_scale_arcsec * (1.0 - cfg.scale_tolerance)
        scale_hi = pixel_scale_arcsec * (1.0 + cfg.scale_tolerance)
    else:
        chosen, scale_lo, scale_hi = indexes, 0.1, 1000.0
    with tempfile.TemporaryDirectory(prefix="darkroom-blind-") as tmp:
        work = Path(tmp)
        xyls = work / "field.xyls"
        t = Table({"X": xs + 1.0, "Y": ys + 1.0, "FLUX": fs.astype(float)})
        t.write(xyls, format="fits")
        cfg_file = work / "backend.cfg"
        lines = [f"cpulimit {cfg.cpu_limit_s}", "inparallel"] + [f"index {ix.path}" for ix in chosen]
        cfg_file.write_text("\n".join(lines) + "\n")
        cmd = [
            exe,
            "--backend-config",
            str(cfg_file),
            "--no-plots",
            "--overwrite",
            "--no-remove-lines",
            "--uniformize",
            "0",
            "--no-verify-uniformize",
            "--width",
            str(nx),
            "--height",
            str(ny),
            "--x-column",
            "X",
            "--y-column",
            "Y",
            "--sort-column",
            "FLUX",
            "--scale-units",
            "arcsecperpix",
            "--scale-low",
            f"{scale_lo:.6g}",
            "--scale-high",
            f"{scale_hi:.6g}",
            "--cpulimit",
            str(cfg.cpu_limit_s),
            "--tweak-order",
            str(cfg.tweak_order),
            "--dir",
            str(work),
            "--new-fits",
            "none",
            "--rdls",
            "none",
            "--index-xyls",
            "none",
            "--match",
            "none",
            "--solved",
            "none",
            "--corr",
            str(work / "field.corr"),
            "--temp-dir",
            str(work),
        ]
        if ra_deg is not None and dec_deg is not None and radius_deg:
            cmd += ["--ra", f"{ra_deg:.6f}", "--dec", f"{dec_deg:.6f}", "--radius", f"{radius_deg:.4f}"]
        cmd.append(str(xyls))
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=cfg.cpu_limit_s * 2 + 30,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SolveError(f"blind solving: solve-field timed out after {exc.timeout:.0f} s") from None
        wcs_file = work / "field.wcs"
        if not wcs_file.is_file():
            tail = " ".join((proc.stderr or proc.stdout or "").split()[-20:])
            raise SolveError(
                f"blind solving: solve-field found no solution with {len(chosen)} index file(s) and "
                f"{xs.size} sources" + (f" ({tail[:160]})" if proc.returncode else "")
            )
        wcs = _read_wcs(wcs_file)
        n_matched = None
        corr = work / "field.corr"
        if corr.is_file():
            try:
                n_matched = len(Table.read(corr))
            except (OSError, ValueError):
                n_matched = None
        used = next(
            (line.split("index ")[-1] for line in proc.stdout.splitlines() if "solved with index" in line), ""
        )
    name = Path(used.strip().rstrip(".")).name if used else ""
    return BlindSolution(
        wcs=wcs, method=f"astrometry.net solve-field{f' ({name})' if name else ''}", n_matched=n_matched
    )


def solve_with_nova(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    shape: tuple[int, int],
    pixel_scale_arcsec: float | None = None,
    config: BlindConfig | None = None,
) -> BlindSolution:
    """Solve a source list with the nova.astrometry.net service (astroquery), given an API key.

    The key comes from ``config.nova_api_key`` or the environment's ``ASTROMETRY_NET_API_KEY``;
    ``config.nova_api_url`` replaces the service's address (a local stand-in in tests).
    """
    cfg = config or BlindConfig()
    key = cfg.nova_api_key or os.environ.get("ASTROMETRY_NET_API_KEY")
    if not key:
        raise SolveError("blind solving: no nova.astrometry.net API key (blind.nova_api_key)")
    from astroquery.astrometry_net import AstrometryNet
    from astroquery.astrometry_net import conf as nova_conf

    ny, nx = shape
    xs, ys, _ = _brightest(
        np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float), cfg.max_sources
    )
    if xs.size < 4:
        raise SolveError(f"blind solving: {xs.size} sources, at least 4 needed")
    service = AstrometryNet()
    if cfg.nova_api_url:
        base = cfg.nova_api_url.rstrip("/")
        service.URL = base
        service.API_URL = f"{base}/api"
    settings: dict[str, object] = {}
    if pixel_scale_arcsec:
        settings.update(
            scale_units="arcsecperpix",
            scale_type="ul",
            scale_lower=pixel_scale_arcsec * (1.0 - cfg.scale_tolerance),
            scale_upper=pixel_scale_arcsec * (1.0 + cfg.scale_tolerance),
        )
    try:
        with nova_conf.set_temp("api_key", key):  # never left in astroquery's global configuration
            header = service.solve_from_source_list(
                xs + 1.0, ys + 1.0, nx, ny, solve_timeout=cfg.nova_timeout_s, verbose=False, **settings
            )
    except Exception as exc:  # the service raises many kinds (HTTP, timeouts, its own errors)
        raise SolveError(f"blind solving: nova.astrometry.net: {' '.join(str(exc).split())[:160]}") from None
    if not header:
        raise SolveError("blind solving: nova.astrometry.net found no solution")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    return BlindSolution(wcs=wcs, method="nova.astrometry.net")


def blind_solve(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    *,
    shape: tuple[int, int],
    pixel_scale_arcsec: float | None = None,
    config: BlindConfig | None = None,
) -> BlindSolution:
    """Blind-solve with the configured engine (``auto``: solve-field, then nova with a key)."""
    cfg = config or BlindConfig()
    engines: list[str]
    if cfg.engine == "none":
        raise SolveError("blind solving is off (astrometry.solve.blind.engine: none)")
    if cfg.engine == "auto":
        engines = []
        if solve_field_available():
            engines.append("solve-field")
        if cfg.nova_api_key or os.environ.get("ASTROMETRY_NET_API_KEY"):
            engines.append("nova")
        if not engines:
            raise SolveError(
                "blind solving: neither astrometry.net's solve-field nor a nova.astrometry.net API key "
                "is available"
            )
    else:
        engines = [cfg.engine]
    reasons = []
    for engine in engines:
        try:
            if engine == "solve-field":
                return solve_with_solve_field(
                    x, y, flux, shape=shape, pixel_scale_arcsec=pixel_scale_arcsec, config=cfg
                )
            return solve_with_nova(x, y, flux, shape=shape, pixel_scale_arcsec=pixel_scale_arcsec, config=cfg)
        except SolveError as exc:
            reasons.append(exc.reason)
    raise SolveError("; ".join(reasons))
