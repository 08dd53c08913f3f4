"""Automatic targets: a light curve for each observed field without writing darkroom.yaml.

When ``targets:`` is empty, each distinct OBJECT of the usable light frames becomes
a target, placed (in this order of preference):

1. at the coordinates the Sesame name resolver (CDS: SIMBAD, NED, VizieR; through
   :func:`astropy.coordinates.get_icrs_coordinates`) gives for the OBJECT name, or for
   a common re-spelling of it (``XO1-b`` -> ``XO-1b``, ``XO-1``); answers, and names
   that could not be resolved, are cached in ``REPO/catalogs/names.json`` so a night is
   resolved once and later runs need no network;
2. else at the median pointing the frames' headers give (OBJCTRA/OBJCTDEC, RA/DEC...);
3. else nowhere: the reason is returned, and the run's summary says it.

``DARKROOM_OFFLINE=1`` in the environment keeps the public resolvers out (the test suite
sets it; a stand-in server given in ``names.sesame_urls`` is still asked).

Each choice comes with a one-line note naming what was chosen; the caller shows it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from darkroom.repo.models import Exposure
from darkroom.repo.registry import Registry
from darkroom.timeseries.settings import NameResolverConfig, TargetConfig

__all__ = [
    "AutoTarget",
    "NameResolverConfig",
    "automatic_targets",
    "name_variants",
    "planet_ephemerides",
    "planet_name",
    "resolve_object_name",
]

log = logging.getLogger(__name__)

CACHE_NAME = "names.json"


@dataclass(frozen=True)
class AutoTarget:
    """A target made from the frames, and a one-line note on how it was placed."""

    target: TargetConfig
    how: str  # "sesame", "pointing"
    note: str


def name_variants(name: str) -> list[str]:
    """The OBJECT name and common re-spellings to try with a name resolver.

    ``XO1-b`` -> ``XO-1b``, ``XO-1 b``, ``XO-1`` (survey + number, planet letter last);
    ``WASP 12b`` -> ``WASP-12b`` ...; duplicates dropped, order kept.
    """
    base = " ".join(name.split())
    out = [base]
    m = re.fullmatch(r"([A-Za-z]+)[\s_-]*(\d+)[\s_-]*([a-z])?", base)
    if m:
        survey, number, planet = m.groups()
        if planet:
            out += [f"{survey}-{number}{planet}", f"{survey}-{number} {planet}", f"{survey}-{number}"]
        else:
            out += [f"{survey}-{number}", f"{survey} {number}"]
    seen: list[str] = []
    for v in out:
        if v and v not in seen:
            seen.append(v)
    return seen


def resolve_object_name(name: str, config: NameResolverConfig) -> tuple[float, float, str] | None:
    """(RA, Dec [deg, ICRS], the spelling that worked) from Sesame, or None if no spelling resolves.

    Network errors count as "not resolved" (logged); nothing is raised.
    """
    from astropy.coordinates import get_icrs_coordinates, name_resolve
    from astropy.utils import data

    with data.conf.set_temp("remote_timeout", config.timeout_s):
        ctx = name_resolve.sesame_url.set(config.sesame_urls) if config.sesame_urls else None
        try:
            for spelling in name_variants(name):
                try:
                    coord = get_icrs_coordinates(spelling)
                except Exception as exc:  # NameResolveError, network trouble: try the next spelling
                    log.debug("Sesame: %s: %s", spelling, " ".join(str(exc).split())[:200])
                    continue
                return float(coord.ra.deg), float(coord.dec.deg), spelling
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    return None


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def automatic_targets(
    registry: Registry, root: Path, config: NameResolverConfig, *, online: bool | None = None
) -> tuple[list[AutoTarget], list[str]]:
    """Targets for the OBJECTs of the usable light frames, and the reasons for those left out.

    ``online`` (default ``config.online``) allows Sesame requests for names not cached;
    without it only the cache and the pointing keywords are used (``darkroom status``,
    ``lightcurve``, ``report`` never touch the network).
    """
    from darkroom.io.atomic import atomic_write_text

    online = config.online if online is None else online
    if online and config.sesame_urls is None and os.environ.get("DARKROOM_OFFLINE"):
        online = False  # the test suite (and air-gapped sites) never reach the public resolvers
    with registry.session() as s:
        rows = s.execute(
            select(Exposure.object, Exposure.ra_deg, Exposure.dec_deg).where(
                Exposure.state == "ok", Exposure.frame_type == "light"
            )
        ).all()
    fields: dict[str, list[tuple[float | None, float | None]]] = {}
    for obj, ra, dec in rows:
        name = " ".join((obj or "").split())
        if name:
            fields.setdefault(name, []).append((ra, dec))
    cache_path = Path(root) / "catalogs" / CACHE_NAME
    cache = _load_cache(cache_path)
    changed = False
    targets: list[AutoTarget] = []
    left_out: list[str] = []
    for name, pointings in sorted(fields.items()):
        entry = cache.get(name)
        if entry is None and online:
            found = resolve_object_name(name, config)
            entry = (
                {"ra_deg": found[0], "dec_deg": found[1], "as": found[2], "by": "sesame"}
                if found
                else {"unresolved": True}
            )
            cache[name] = entry
            changed = True
        if entry and not entry.get("unresolved"):
            spelled = f" (as {entry['as']!r})" if entry.get("as") and entry["as"] != name else ""
            targets.append(
                AutoTarget(
                    TargetConfig(name=name, ra_deg=entry["ra_deg"], dec_deg=entry["dec_deg"]),
                    "sesame",
                    f"target {name}: OBJECT resolved by Sesame{spelled} to RA {entry['ra_deg']:.5f}, "
                    f"Dec {entry['dec_deg']:+.5f}",
                )
            )
            continue
        ras = np.array([p[0] for p in pointings if p[0] is not None and p[1] is not None], dtype=float)
        decs = np.array([p[1] for p in pointings if p[0] is not None and p[1] is not None], dtype=float)
        if len(ras):
            # Median through unit vectors: safe across RA = 0.
            ra = float(
                np.degrees(np.arctan2(np.median(np.sin(np.radians(ras))), np.median(np.cos(np.radians(ras)))))
                % 360
            )
            dec = float(np.median(decs))
            why = "not resolved by Sesame" if entry else "not looked up (offline)"
            radius = config.pointing_search_radius_arcsec
            targets.append(
                AutoTarget(
                    TargetConfig(name=name, ra_deg=ra, dec_deg=dec, search_radius_arcsec=radius),
                    "pointing",
                    f"target {name}: OBJECT {why}; using the pointing of its frames' headers "
                    f"(OBJCTRA/OBJCTDEC or RA/DEC) at RA {ra:.5f}, Dec {dec:+.5f}: the source there, "
                    f"else the brightest within {radius:g} arcsec",
                )
            )
        else:
            left_out.append(
                f"no light curve for {name}: the name is not resolved and the frames carry no pointing; "
                "add it under targets: in darkroom.yaml"
            )
    if changed:
        try:
            atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("cannot write the name cache %s: %s", cache_path, exc.strerror or exc)
    return targets, left_out


# ----------------------------------------------------------------------------- ephemerides

EPHEMERIS_CACHE = "ephemerides.json"
_PLANET = re.compile(r"([A-Za-z]+(?:-[A-Za-z]+)?)[\s_-]*(\d+)[\s_-]*([b-i])")


def planet_name(name: str) -> str | None:
    """The NASA Exoplanet Archive spelling of a planet name (``XO1-b`` -> ``XO-1 b``), else None.

    Only names of the form survey, number, planet letter qualify; the result holds only
    letters, digits, hyphens and one space, so it is safe inside an ADQL string literal.
    """
    m = _PLANET.fullmatch(" ".join(name.split()))
    if not m:
        return None
    survey, number, letter = m.groups()
    return f"{survey}-{number} {letter}"


def _query_archive(planet: str, config: NameResolverConfig) -> dict:
    """One row of the archive's pscomppars table for ``planet`` (cache entry form)."""
    import concurrent.futures

    from astroquery.ipac.nexsci.nasa_exoplanet_archive import NasaExoplanetArchiveClass

    def ask():
        archive = NasaExoplanetArchiveClass()
        # pscomppars is served by TAP (archive documentation); saying so spares astroquery a
        # listing of every TAP table from the default host before each query.
        archive._tap_tables = ["ps", "pscomppars"]
        if config.exoplanet_archive_tap:
            archive.URL_TAP = config.exoplanet_archive_tap
        return archive.query_criteria(
            table="pscomppars",
            select="pl_name,pl_tranmid,pl_orbper,pl_trandur",
            where=f"pl_name = '{planet}'",
        )

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        # The TAP client has no timeout of its own: a silent network must not stall the night.
        table = pool.submit(ask).result(timeout=max(config.timeout_s * 3, 5.0))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if len(table) == 0:
        return {"none": f"{planet} is not in the NASA Exoplanet Archive"}

    def num(col: str) -> float | None:
        value = table[col][0]
        value = getattr(value, "value", value)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if np.isfinite(value) else None

    t0, period = num("pl_tranmid"), num("pl_orbper")
    if t0 is None or period is None:
        return {"none": f"{planet}: the archive gives no transit ephemeris"}
    return {
        "planet": str(table["pl_name"][0]),
        "t0_bjd_tdb": t0,
        "period_d": period,
        "duration_h": num("pl_trandur"),
    }


def planet_ephemerides(root: Path, names: list[str], config: NameResolverConfig, *, online: bool) -> dict:
    """``{target name: Ephemeris}`` for the targets that are known transiting planets.

    Answers (and "not a planet") are cached in ``REPO/catalogs/ephemerides.json``; without
    ``online`` only the cache is read. Network trouble is logged and leaves the name
    uncached, to be asked again next run.
    """
    from darkroom.io.atomic import atomic_write_text
    from darkroom.timeseries.ephemeris import Ephemeris

    if online and config.exoplanet_archive_tap is None and os.environ.get("DARKROOM_OFFLINE"):
        online = False
    path = Path(root) / "catalogs" / EPHEMERIS_CACHE
    cache = _load_cache(path)
    names_cache = _load_cache(Path(root) / "catalogs" / CACHE_NAME)
    changed = False
    out = {}
    for name in names:
        entry = cache.get(name)
        if entry is None and online and config.ephemerides:
            spelled = (names_cache.get(name) or {}).get("as") or name
            planet = planet_name(spelled) or planet_name(name)
            if planet is None:
                entry = {"none": "not a planet name"}
            else:
                try:
                    entry = _query_archive(planet, config)
                except Exception as exc:
                    log.warning(
                        "no ephemeris for %s: the NASA Exoplanet Archive did not answer (%s)",
                        name,
                        " ".join(str(exc).split())[:160] or exc.__class__.__name__,
                    )
                    entry = None
            if entry is not None:
                cache[name] = entry
                changed = True
        if entry and "t0_bjd_tdb" in entry:
            out[name] = Ephemeris(
                entry["planet"], entry["t0_bjd_tdb"], entry["period_d"], entry.get("duration_h")
            )
    if changed:
        try:
            atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError as exc:
            log.warning("cannot write the ephemeris cache %s: %s", path, exc.strerror or exc)
    return out
