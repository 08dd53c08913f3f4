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
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from darkroom.repo.models import Exposure
from darkroom.repo.registry import Registry
from darkroom.timeseries.settings import TargetConfig

__all__ = ["AutoTarget", "NameResolverConfig", "automatic_targets", "name_variants", "resolve_object_name"]

log = logging.getLogger(__name__)

CACHE_NAME = "names.json"


class NameResolverConfig(BaseModel):
    """The ``names`` section of darkroom.yaml: how OBJECT names become coordinates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    automatic_targets: bool = Field(
        True, description="with no targets: in darkroom.yaml, make one per observed OBJECT"
    )
    online: bool = Field(True, description="ask the Sesame name resolver (CDS) about names not in the cache")
    sesame_urls: list[str] | None = Field(
        None, description="Sesame mirrors to ask (None: astropy's defaults, CDS then CfA)"
    )
    timeout_s: float = Field(5.0, gt=0, description="time allowed per Sesame request [s]")


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
            targets.append(
                AutoTarget(
                    TargetConfig(name=name, ra_deg=ra, dec_deg=dec),
                    "pointing",
                    f"target {name}: OBJECT {why}; using the pointing of its frames' headers "
                    f"(OBJCTRA/OBJCTDEC or RA/DEC) at RA {ra:.5f}, Dec {dec:+.5f}",
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
