"""ZTF light curves from IRSA's public light-curve service, and their reduction.

The service (``{base_url}/cgi-bin/ZTF/nph_light_curves``) answers a cone
``POS=CIRCLE ra dec radius`` [deg] with every epoch of every ZTF object in it, as CSV
(``FORMAT=CSV``); ``BANDNAME`` chooses the filters, ``BAD_CATFLAGS_MASK`` lets the server drop
epochs with those catalogue flags, and ``COLLECTION`` the data release (``ztf_dr23``). Public
releases need no login.

The raw reply is the provenance: it is kept byte for byte in a cache folder shared between
repositories, binned by integer RA degree so that no folder grows without bound::

    CACHE/ztf/<collection>/ra<DDD>/<hash of the request>.csv

A reply with a header and no rows means "no ZTF data here" (an *empty* target).

Reduction (:func:`reduce_reply`) turns a reply into light curves, one per ZTF object id,
band and season: seasons are cut at gaps longer than ``season_gap_days`` over all epochs of
the reply, so season numbers agree across objects and bands. Objects whose median position
is farther than ``max_distance_arcsec`` from the target, or whose median magnitude is more
than ``max_mag_offset`` from the catalogue magnitude, are left out (and named in the result).
Flagged epochs (``catflags & flag_mask``) are kept, with ``flagged`` set, for the quality
checks downstream.

Light-curve columns (the format of :mod:`darkroom.analysis.lcfile`): ``mjd`` (UTC, mid-exposure:
the service's start-of-exposure MJD plus half the exposure time), ``mag``, ``magerr`` [mag],
``band`` (g, r, i), ``catflags`` (IRSA's bits, 0 = good), ``ra``, ``dec`` [deg], ``oid`` (the
ZTF object id), and ``expid``, ``programid``, ``limitmag`` [mag], ``airmass`` when the reply
has them.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from darkroom.errors import BadInputError
from darkroom.surveys.settings import ZtfConfig

if TYPE_CHECKING:
    from astropy.table import Table

    from darkroom.surveys.http import HttpClient, Reply

__all__ = [
    "LIGHTCURVE_COLUMNS",
    "ReducedLightCurve",
    "Reduction",
    "ZtfConfig",
    "ZtfQuery",
    "cache_path",
    "fetch_lightcurves",
    "parse_reply",
    "query_for_target",
    "reduce_reply",
    "season_ids",
    "skip_reason",
]

log = logging.getLogger(__name__)

SERVICE_PATH = "/cgi-bin/ZTF/nph_light_curves"
LIGHTCURVE_COLUMNS = ("mjd", "mag", "magerr", "band", "catflags", "ra", "dec", "oid")
_EXTRA_COLUMNS = ("expid", "programid", "limitmag", "airmass")
_NEEDED = ("oid", "mjd", "mag", "magerr", "catflags", "filtercode", "ra", "dec")


@dataclass(frozen=True)
class ZtfQuery:
    """One cone asked of the service: position at ``epoch_jyear`` [deg] and radius [deg]."""

    ra_deg: float
    dec_deg: float
    radius_deg: float
    bands: tuple[str, ...]
    bad_catflags_mask: int
    collection: str

    def params(self) -> dict[str, str]:
        """The service's query parameters."""
        params = {
            "POS": f"CIRCLE {self.ra_deg:.7f} {self.dec_deg:+.7f} {self.radius_deg:.7f}",
            "BANDNAME": ",".join(self.bands),
            "FORMAT": "CSV",
            "COLLECTION": self.collection,
        }
        if self.bad_catflags_mask:
            params["BAD_CATFLAGS_MASK"] = str(self.bad_catflags_mask)
        return params

    def digest(self) -> str:
        """Stable hash of what is asked (names the cached reply)."""
        blob = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def query_for_target(
    config: ZtfConfig,
    *,
    ra_deg: float,
    dec_deg: float,
    pmra_masyr: float = 0.0,
    pmdec_masyr: float = 0.0,
    epoch_jyear: float | None = None,
) -> ZtfQuery:
    """The cone for one target: moved to ``config.epoch_jyear`` by proper motion, with the radius
    grown by the motion over ``half_span_yr`` so the whole survey's epochs fall inside."""
    from darkroom.surveys.targets import propagate_space_motion

    pmra = 0.0 if not np.isfinite(pmra_masyr) else float(pmra_masyr)
    pmdec = 0.0 if not np.isfinite(pmdec_masyr) else float(pmdec_masyr)
    if epoch_jyear is not None and np.isfinite(epoch_jyear):
        ra, dec = propagate_space_motion(
            ra_deg, dec_deg, pmra, pmdec, from_epoch_jyear=epoch_jyear, to_epoch_jyear=config.epoch_jyear
        )
        ra_deg, dec_deg = float(ra), float(dec)
        grow_arcsec = np.hypot(pmra, pmdec) * config.half_span_yr / 1000.0
    else:
        grow_arcsec = 0.0
    return ZtfQuery(
        ra_deg=float(ra_deg) % 360.0,
        dec_deg=float(dec_deg),
        radius_deg=(config.radius_arcsec + grow_arcsec) / 3600.0,
        bands=tuple(config.bands),
        bad_catflags_mask=config.bad_catflags_mask,
        collection=config.collection,
    )


def skip_reason(config: ZtfConfig, *, dec_deg: float, mag: float | None = None) -> str | None:
    """Why a target is not asked for (``None``: ask): south of ``dec_min_deg`` [deg], where ZTF
    never looks, or fainter than ``mag_limit`` in ``mag_band`` (``mag``: the catalogue's
    magnitude in that band, None or NaN when unknown: no magnitude rule)."""
    if dec_deg < config.dec_min_deg:
        return f"skipped: Dec {dec_deg:+.2f} deg south of dec_min_deg {config.dec_min_deg:+.1f}"
    if config.mag_band and mag is not None and np.isfinite(mag) and mag > config.mag_limit:
        return f"skipped: {config.mag_band} = {mag:.2f} fainter than mag_limit {config.mag_limit:.2f}"
    return None


def cache_path(cache_dir: str | Path, query: ZtfQuery) -> Path:
    """Where the raw reply of ``query`` lives in the shared cache (binned by integer RA degree)."""
    ra_bin = int(np.floor(query.ra_deg)) % 360
    return Path(cache_dir) / "ztf" / query.collection / f"ra{ra_bin:03d}" / f"{query.digest()}.csv"


def fetch_lightcurves(client: HttpClient, config: ZtfConfig, query: ZtfQuery) -> Reply:
    """Ask the service for one cone (retries, timeouts and politeness are the client's)."""
    return client.get(config.base_url.rstrip("/") + SERVICE_PATH, params=query.params())


def parse_reply(content: bytes) -> Table:
    """The reply CSV as a Table (a header without rows gives an empty Table with the columns).

    Raises
    ------
    BadInputError
        The reply is not the service's CSV (an HTML error page, a truncated file, ...).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from astropy.table import Table

    text_start = content[:200].lstrip().lower()
    if not content.strip():
        raise BadInputError("reply is empty (not even a CSV header)")
    if text_start.startswith((b"<", b"error", b"[struct")):
        first = content.strip().splitlines()[0][:120].decode("utf-8", "replace")
        raise BadInputError(f"reply is not a light-curve CSV: {first}")
    try:
        arrow = pacsv.read_csv(
            io.BytesIO(content),
            # reader threads only pay off on big replies (most are a few rows, or none)
            read_options=pacsv.ReadOptions(use_threads=len(content) > (1 << 20)),
            convert_options=pacsv.ConvertOptions(column_types={"oid": pa.int64(), "filtercode": pa.string()}),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise BadInputError(f"reply is not a readable CSV: {' '.join(str(exc).split())[:160]}") from exc
    missing = [c for c in _NEEDED if c not in arrow.column_names]
    if missing:
        raise BadInputError(f"reply lacks the columns {', '.join(missing)}")
    cols: dict[str, np.ndarray] = {}
    for name in arrow.column_names:
        if not name:  # a leading index column written by pandas
            continue
        if arrow.num_rows == 0:
            kind = np.int64 if name in ("oid", "catflags") else ("U2" if name == "filtercode" else float)
            cols[name] = np.zeros(0, dtype=kind)
        else:
            cols[name] = arrow.column(name).to_numpy(zero_copy_only=False)
    # one Table built at once (adding columns one by one costs more than the parse)
    return Table(cols, copy=False)


def season_ids(mjd: np.ndarray, *, gap_days: float) -> np.ndarray:
    """Season number (0, 1, ...) of each time: a new season after every gap > ``gap_days``."""
    mjd = np.asarray(mjd, dtype=float)
    if mjd.size == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(mjd, kind="stable")
    steps = np.concatenate([[0], np.cumsum(np.diff(mjd[order]) > gap_days)])
    out = np.empty(mjd.size, np.int64)
    out[order] = steps
    return out


@dataclass
class ReducedLightCurve:
    """One object, one band, one season."""

    object_id: str
    band: str
    season: int
    table: Table
    flagged: np.ndarray  #: catflags & flag_mask != 0, per epoch

    @property
    def key(self) -> str:
        return f"ztf:{self.object_id}:{self.band}:s{self.season}"

    @property
    def n_flagged(self) -> int:
        return int(np.sum(self.flagged))


@dataclass
class Reduction:
    """What one reply reduced to: the light curves, and the objects left out with the reason."""

    lightcurves: list[ReducedLightCurve]
    n_epochs: int
    rejected: dict[str, str] = field(default_factory=dict)
    n_seasons: int = 0


def reduce_reply(
    table: Table,
    *,
    ra_deg: float,
    dec_deg: float,
    config: ZtfConfig,
    catalogue_mag: float | None = None,
) -> Reduction:
    """Light curves per object id, band and season from one parsed reply (see the module doc).

    Parameters
    ----------
    table
        :func:`parse_reply` output.
    ra_deg, dec_deg
        The target at the query epoch [deg].
    catalogue_mag
        The target's catalogue magnitude in ``config.mag_band`` [mag]; None or NaN skips the
        magnitude-consistency cut.
    """
    import astropy.units as u
    from astropy.table import Table

    n = len(table)
    if n == 0:
        return Reduction([], 0)
    oid = np.asarray(table["oid"]).astype(np.int64)
    mag = np.asarray(table["mag"], dtype=float)
    ra = np.asarray(table["ra"], dtype=float)
    dec = np.asarray(table["dec"], dtype=float)
    rejected: dict[str, str] = {}
    keep = np.zeros(n, bool)
    for obj in np.unique(oid):
        sel = oid == obj
        # median offset on the tangent plane: safe across RA 0/360
        dx = (np.mod(ra[sel] - ra_deg + 180.0, 360.0) - 180.0) * np.cos(np.radians(dec_deg))
        dist = 3600.0 * float(np.hypot(np.median(dx), np.median(dec[sel] - dec_deg)))
        if dist > config.max_distance_arcsec:
            rejected[str(obj)] = f"median position {dist:.2f} arcsec from the target"
            continue
        med_mag = float(np.nanmedian(mag[sel])) if np.any(np.isfinite(mag[sel])) else np.nan
        comparable = catalogue_mag is not None and np.isfinite(catalogue_mag) and np.isfinite(med_mag)
        if comparable and abs(med_mag - catalogue_mag) > config.max_mag_offset:
            rejected[str(obj)] = f"median mag {med_mag:.2f} vs catalogue {catalogue_mag:.2f}"
            continue
        keep[sel] = True
    if not keep.any():
        return Reduction([], n, rejected)
    # plain arrays from here on: astropy row slicing per group costs more than the arithmetic
    kept = {name: np.asarray(table[name])[keep] for name in table.colnames}
    n_kept = int(keep.sum())
    exptime = np.asarray(kept["exptime"], dtype=float) if "exptime" in kept else np.zeros(n_kept)
    mjd_mid = np.asarray(kept["mjd"], dtype=float) + 0.5 * np.nan_to_num(exptime) / 86400.0
    seasons = season_ids(mjd_mid, gap_days=config.season_gap_days)
    codes = kept["filtercode"].astype(str)
    bands = np.where(np.char.startswith(codes, "z"), np.char.lstrip(codes, "z"), codes)
    catflags = np.asarray(kept["catflags"]).astype(np.int64)
    kept_oid = np.asarray(kept["oid"]).astype(np.int64)
    mag_k = np.asarray(kept["mag"], dtype=float)
    magerr_k = np.asarray(kept["magerr"], dtype=float)
    ra_k = np.asarray(kept["ra"], dtype=float)
    dec_k = np.asarray(kept["dec"], dtype=float)
    out: list[ReducedLightCurve] = []
    groups = sorted({(int(o), str(b), int(s)) for o, b, s in zip(kept_oid, bands, seasons, strict=True)})
    for obj, band, season in groups:
        sel = (kept_oid == obj) & (bands == band) & (seasons == season)
        order = np.argsort(mjd_mid[sel], kind="stable")
        idx = np.flatnonzero(sel)[order]
        data = {
            "mjd": mjd_mid[idx],
            "mag": mag_k[idx],
            "magerr": magerr_k[idx],
            "band": np.full(idx.size, band),
            "catflags": catflags[idx],
            "ra": ra_k[idx],
            "dec": dec_k[idx],
            "oid": np.full(idx.size, obj, dtype=np.int64),
        }
        for extra in _EXTRA_COLUMNS:
            if extra in kept:
                data[extra] = np.asarray(kept[extra])[idx]
        lc = Table(data, copy=False)
        lc["mjd"].unit, lc["mjd"].description = u.day, "MJD (UTC) at mid-exposure"
        for name, unit in (("mag", u.mag), ("magerr", u.mag), ("ra", u.deg), ("dec", u.deg)):
            lc[name].unit = unit
        lc.meta.update(
            {"survey": "ztf", "time_scale": "utc", "object": str(obj), "band": band, "season": season}
        )
        out.append(ReducedLightCurve(str(obj), band, season, lc, (catflags[idx] & config.flag_mask) != 0))
    return Reduction(out, n, rejected, n_seasons=int(seasons.max()) + 1)
