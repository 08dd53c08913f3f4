"""Known observatory sites, looked up by the names headers give them.

A header's ``OBSERVAT`` (or ``SITENAME``, ``TELESCOP``) often names a well-known site while
its longitude keyword is missing, west-positive or simply wrong. astropy's site registry
needs a download, so darkroom keeps a small table of its own for cross-checks and for frames
that name their site but give no position. Positions are the observatories' published
geodetic coordinates rounded to 0.01 deg (~1 km: an airmass error below 1e-3 and a night
boundary error of 2 s of time), heights to 10 m.

Longitude east positive [deg], latitude [deg], height above sea level [m].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["KNOWN_SITES", "KnownSite", "find_site"]


@dataclass(frozen=True)
class KnownSite:
    """An observatory site and the names (and telescopes) that identify it in headers."""

    name: str
    lat_deg: float
    lon_deg: float  # east positive
    height_m: float
    aliases: tuple[str, ...]


KNOWN_SITES: tuple[KnownSite, ...] = (
    KnownSite("Apache Point Observatory", 32.78, -105.82, 2790, ("apache point", "apo", "arcsat", "sdss")),
    KnownSite(
        "Kitt Peak National Observatory", 31.96, -111.60, 2100, ("kitt peak", "kpno", "wiyn", "mayall")
    ),
    KnownSite("Cerro Tololo", -30.17, -70.81, 2210, ("cerro tololo", "ctio", "blanco", "decam", "smarts")),
    KnownSite("Cerro Pachon", -30.24, -70.74, 2720, ("cerro pachon", "gemini south", "soar", "rubin")),
    KnownSite(
        "Mauna Kea", 19.82, -155.47, 4210, ("mauna kea", "gemini north", "keck", "subaru", "cfht", "ukirt")
    ),
    KnownSite("La Silla", -29.26, -70.73, 2350, ("la silla", "ntt", "eso 3 6m", "trappist")),
    KnownSite("Paranal", -24.63, -70.40, 2640, ("paranal", "vlt", "vista", "vst")),
    KnownSite(
        "Las Campanas Observatory", -29.01, -70.69, 2380, ("las campanas", "magellan", "du pont", "swope")
    ),
    KnownSite(
        "Palomar Observatory", 33.36, -116.86, 1710, ("palomar", "ztf", "hale telescope", "p48", "p60")
    ),
    KnownSite("Lick Observatory", 37.34, -121.64, 1280, ("lick", "mount hamilton", "mt hamilton")),
    KnownSite("McDonald Observatory", 30.67, -104.02, 2080, ("mcdonald", "hobby eberly")),
    KnownSite("Mount Wilson Observatory", 34.22, -118.06, 1740, ("mount wilson", "mt wilson")),
    KnownSite("Lowell Observatory, Anderson Mesa", 35.10, -111.54, 2160, ("anderson mesa",)),
    KnownSite("Lowell Discovery Telescope", 34.74, -111.42, 2360, ("lowell discovery", "ldt", "happy jack")),
    KnownSite(
        "Fred Lawrence Whipple Observatory",
        31.68,
        -110.88,
        2610,
        ("whipple", "mount hopkins", "mt hopkins", "flwo", "mmt"),
    ),
    KnownSite(
        "Mount Graham International Observatory", 32.70, -109.89, 3180, ("mount graham", "mt graham", "lbt")
    ),
    KnownSite("Mount Lemmon", 32.44, -110.79, 2790, ("mount lemmon", "mt lemmon")),
    KnownSite("Haleakala", 20.71, -156.26, 3050, ("haleakala", "pan starrs", "faulkes telescope north")),
    KnownSite(
        "Roque de los Muchachos",
        28.76,
        -17.89,
        2370,
        (
            "roque de los muchachos",
            "la palma",
            "william herschel",
            "isaac newton",
            "liverpool telescope",
            "gtc",
        ),
    ),
    KnownSite("Teide Observatory", 28.30, -16.51, 2390, ("teide", "izana")),
    KnownSite("Calar Alto", 37.22, -2.55, 2170, ("calar alto", "caha")),
    KnownSite(
        "Siding Spring Observatory", -31.27, 149.06, 1160, ("siding spring", "anglo australian", "skymapper")
    ),
    KnownSite("South African Astronomical Observatory", -32.38, 20.81, 1800, ("saao", "sutherland", "salt")),
    KnownSite("Paul P. Feder Observatory", 46.87, -96.45, 310, ("feder",)),
    KnownSite("San Pedro Martir", 31.04, -115.46, 2830, ("san pedro martir",)),
    KnownSite("Observatoire de Haute-Provence", 43.93, 5.71, 650, ("haute provence", "ohp")),
    KnownSite("Pic du Midi", 42.94, 0.14, 2880, ("pic du midi",)),
    KnownSite("Xinglong Station", 40.40, 117.58, 960, ("xinglong",)),
    KnownSite("Indian Astronomical Observatory, Hanle", 32.78, 78.96, 4500, ("hanle",)),
    KnownSite("Wise Observatory", 30.60, 34.76, 880, ("wise observatory",)),
)


def _words(text: str) -> str:
    """Lower-case words of ``text`` separated by single spaces, padded for whole-word search."""
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def find_site(*names: str | None) -> tuple[KnownSite, str] | None:
    """The known site the first matching name identifies, with that name; None when none does.

    A name matches a site when one of the site's aliases appears in it as whole words
    ('Paul P. Feder Observatory' -> Feder; 'ARCSAT 0.5-m' -> Apache Point), so a short alias
    never matches inside another word ('APOGEE' is not 'APO'). Names are tried in order, so
    pass the most specific keyword (OBSERVAT) first.
    """
    for name in names:
        if not name or not name.strip():
            continue
        words = _words(name)
        for site in KNOWN_SITES:
            if any(_words(alias) in words for alias in site.aliases):
                return site, name
    return None
