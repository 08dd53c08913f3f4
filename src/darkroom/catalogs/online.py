"""Reference catalogs from online services (VizieR, TAP services such as the Gaia archive).

Queries are plain HTTP calls to a configurable base URL (so that a mirror, or a
local test server, can stand in for the service); answers are VOTables parsed
with astropy. Each answer is kept in an on-disk cache (``cache_dir``) keyed by the
query, so a night's frames ask the service once per field.

Presets: :func:`gaia_dr3`, :func:`gaia_dr3_vizier`, :func:`atlas_refcat2`,
:func:`apass_dr9`, :func:`ucac4`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.catalogs.reference import CatalogColumns, cone_select, standardize_catalog
from darkroom.errors import BadInputError, DarkroomError

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = [
    "OnlineCatalogConfig",
    "apass_dr9",
    "atlas_refcat2",
    "gaia_dr3",
    "gaia_dr3_vizier",
    "query_catalog",
    "query_table",
    "ucac4",
]

log = logging.getLogger(__name__)

VIZIER_URL = "https://vizier.cds.unistra.fr"
GAIA_TAP_URL = "https://gea.esac.esa.int/tap-server/tap"


class OnlineCatalogConfig(BaseModel):
    """One catalog of one online service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service: Literal["vizier", "tap"] = Field(
        description="'vizier': VizieR ASU VOTable interface (base_url + /viz-bin/votable); "
        "'tap': IVOA TAP synchronous ADQL query (base_url + /sync)"
    )
    base_url: str = Field(description="service root, e.g. https://vizier.cds.unistra.fr")
    catalog: str = Field(description="VizieR table (e.g. J/ApJ/867/105/refcat2) or TAP table name")
    columns: CatalogColumns = Field(
        description="which returned columns hold RA, Dec, magnitude, proper motion"
    )
    out_columns: tuple[str, ...] | None = Field(
        None, description="columns to request; None asks for all of them"
    )
    max_rows: int = Field(100_000, ge=1, le=10_000_000, description="most rows one query returns")
    timeout_s: float = Field(120.0, gt=0, le=3600, description="network timeout of one query [s]")


def gaia_dr3(*, base_url: str = GAIA_TAP_URL) -> OnlineCatalogConfig:
    """Gaia DR3 from the ESA Gaia archive TAP service (positions at epoch 2016.0, G mag)."""
    return OnlineCatalogConfig(
        service="tap",
        base_url=base_url,
        catalog="gaiadr3.gaia_source",
        columns=CatalogColumns(
            ra="ra",
            dec="dec",
            mag="phot_g_mean_mag",
            pmra="pmra",
            pmdec="pmdec",
            epoch_jyear=2016.0,
            source_id="source_id",
        ),
        out_columns=(
            "source_id",
            "ra",
            "dec",
            "pmra",
            "pmdec",
            "parallax",
            "phot_g_mean_mag",
            "phot_bp_mean_mag",
            "phot_rp_mean_mag",
        ),
    )


def gaia_dr3_vizier(*, base_url: str = VIZIER_URL) -> OnlineCatalogConfig:
    """Gaia DR3 (I/355/gaiadr3) through VizieR (positions at epoch 2016.0, G mag)."""
    return OnlineCatalogConfig(
        service="vizier",
        base_url=base_url,
        catalog="I/355/gaiadr3",
        columns=CatalogColumns(
            ra="RA_ICRS",
            dec="DE_ICRS",
            mag="Gmag",
            pmra="pmRA",
            pmdec="pmDE",
            epoch_jyear=2016.0,
            source_id="Source",
        ),
        out_columns=("Source", "RA_ICRS", "DE_ICRS", "pmRA", "pmDE", "Plx", "Gmag", "BPmag", "RPmag"),
    )


def atlas_refcat2(*, base_url: str = VIZIER_URL, mag: str = "rmag") -> OnlineCatalogConfig:
    """ATLAS-RefCat2 (J/ApJ/867/105/refcat2) through VizieR: Gaia DR2 positions (2015.5), g r i z."""
    return OnlineCatalogConfig(
        service="vizier",
        base_url=base_url,
        catalog="J/ApJ/867/105/refcat2",
        columns=CatalogColumns(
            ra="RA_ICRS", dec="DE_ICRS", mag=mag, pmra="pmRA", pmdec="pmDE", epoch_jyear=2015.5
        ),
    )


def apass_dr9(*, base_url: str = VIZIER_URL, mag: str = "Vmag") -> OnlineCatalogConfig:
    """APASS DR9 (II/336/apass9) through VizieR: J2000 positions, no proper motion, B V g' r' i'."""
    return OnlineCatalogConfig(
        service="vizier",
        base_url=base_url,
        catalog="II/336/apass9",
        columns=CatalogColumns(ra="RAJ2000", dec="DEJ2000", mag=mag, epoch_jyear=2000.0),
    )


def ucac4(*, base_url: str = VIZIER_URL, mag: str = "f.mag") -> OnlineCatalogConfig:
    """UCAC4 (I/322A/out) through VizieR: J2000 positions with proper motion."""
    return OnlineCatalogConfig(
        service="vizier",
        base_url=base_url,
        catalog="I/322A/out",
        columns=CatalogColumns(
            ra="RAJ2000",
            dec="DEJ2000",
            mag=mag,
            pmra="pmRA",
            pmdec="pmDE",
            epoch_jyear=2000.0,
            source_id="UCAC4",
        ),
    )


def _request(
    config: OnlineCatalogConfig, ra_deg: float, dec_deg: float, radius_deg: float
) -> urllib.request.Request:
    base = config.base_url.rstrip("/")
    headers = {"User-Agent": "darkroom (astroquery-compatible client)"}
    if config.service == "vizier":
        params = {
            "-source": config.catalog,
            "-c": f"{ra_deg:.7f} {dec_deg:+.7f}",
            "-c.rd": f"{radius_deg:.7f}",
            "-out.max": str(config.max_rows),
            "-oc.form": "d",
        }
        if config.out_columns:
            params["-out"] = ",".join(config.out_columns)
        else:
            params["-out.all"] = "1"
        return urllib.request.Request(
            f"{base}/viz-bin/votable?{urllib.parse.urlencode(params)}", headers=headers
        )
    cols = ", ".join(config.out_columns) if config.out_columns else "*"
    ra_col, dec_col = config.columns.ra, config.columns.dec
    query = (
        f"SELECT TOP {config.max_rows} {cols} FROM {config.catalog} WHERE 1 = CONTAINS("
        f"POINT('ICRS', {ra_col}, {dec_col}), CIRCLE('ICRS', {ra_deg:.7f}, {dec_deg:.7f}, {radius_deg:.7f}))"
    )
    form = {"REQUEST": "doQuery", "LANG": "ADQL", "FORMAT": "votable", "QUERY": query}
    return urllib.request.Request(
        f"{base}/sync", data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST"
    )


def _parse_votable(content: bytes, where: str) -> Table:
    from astropy.io import votable
    from astropy.table import Table

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # services write VOTables with minor schema deviations
        try:
            doc = votable.parse(io.BytesIO(content), verify="ignore")
        except Exception as exc:
            raise DarkroomError(f"answer of {where} is not a VOTable: {exc}") from exc
        for info in getattr(doc, "infos", []):
            if info.name == "QUERY_STATUS" and str(info.value).upper() == "ERROR":
                raise DarkroomError(f"{where} reported an error: {info.content or info.value}")
        for resource in doc.resources:
            for info in resource.infos:
                if info.name == "QUERY_STATUS" and str(info.value).upper() == "ERROR":
                    raise DarkroomError(f"{where} reported an error: {info.content or info.value}")
        tables = list(doc.iter_tables())
        if not tables:
            return Table()
        return tables[0].to_table(use_names_over_ids=True)


def _cache_path(cache_dir: Path, config: OnlineCatalogConfig, ra: float, dec: float, radius: float) -> Path:
    key = json.dumps(
        {
            "service": config.service,
            "base_url": config.base_url.rstrip("/"),
            "catalog": config.catalog,
            "out": list(config.out_columns or []),
            "max_rows": config.max_rows,
            "ra": round(ra, 7),
            "dec": round(dec, 7),
            "radius": round(radius, 7),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    slug = "".join(ch if ch.isalnum() else "_" for ch in config.catalog)
    return cache_dir / f"{config.service}_{slug}_{digest}.ecsv"


def _fetch(config: OnlineCatalogConfig, ra: float, dec: float, radius: float) -> Table:
    request = _request(config, ra, dec, radius)
    where = f"{config.service} {config.base_url}"
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
            content = response.read()
    except urllib.error.HTTPError as exc:
        raise DarkroomError(f"{where} answered HTTP {exc.code} for {config.catalog}: {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DarkroomError(f"cannot reach {where} for {config.catalog}: {exc}") from exc
    table = _parse_votable(content, where)
    log.info(
        "%s: %d rows of %s within %.3f deg of (%.5f, %+.5f)",
        where,
        len(table),
        config.catalog,
        radius,
        ra,
        dec,
    )
    return table


def query_catalog(
    config: OnlineCatalogConfig,
    *,
    ra_deg: float,
    dec_deg: float,
    radius_deg: float,
    epoch_jyear: float | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
) -> Table:
    """Reference table (see :mod:`darkroom.catalogs.reference`) of the stars in a cone.

    Parameters
    ----------
    config
        Service, base URL, catalog and column mapping (see the presets).
    ra_deg, dec_deg, radius_deg
        Cone centre and radius [deg].
    epoch_jyear
        Epoch of the frame [Julian year]; positions are propagated by proper motion.
    cache_dir
        Folder of the on-disk cache (created when missing). The raw answer of each
        distinct query is kept there as ECSV and reused; None disables the cache.
    refresh
        Ask the service again even when the answer is cached.

    Raises
    ------
    DarkroomError
        The service cannot be reached or reports an error (one-line reason).
    """
    from astropy.table import Table

    if not 0 < radius_deg <= 10:
        raise BadInputError(f"query radius must be in (0, 10] deg, got {radius_deg}")
    raw: Table | None = None
    path = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        path = _cache_path(cache, config, ra_deg, dec_deg, radius_deg)
        if path.is_file() and not refresh:
            raw = Table.read(path, format="ascii.ecsv")
            log.debug("catalog cache hit %s", path.name)
    if raw is None:
        raw = _fetch(config, ra_deg, dec_deg, radius_deg)
        if path is not None:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            raw.write(tmp, format="ascii.ecsv", overwrite=True)
            os.replace(tmp, path)
    if len(raw) == 0 and not raw.colnames:
        raise DarkroomError(f"{config.service} {config.base_url} returned no table for {config.catalog}")
    table = standardize_catalog(raw, columns=config.columns, epoch_jyear=epoch_jyear, name=config.catalog)
    # services select on their own epoch; keep the cone exact at the frame epoch too
    return cone_select(table, ra_deg=ra_deg, dec_deg=dec_deg, radius_deg=radius_deg * (1 + 1e-9))


def _table_request(config: OnlineCatalogConfig, constraints: dict[str, str]) -> urllib.request.Request:
    base = config.base_url.rstrip("/")
    params = {"-source": config.catalog, "-out.max": str(config.max_rows), "-oc.form": "d"}
    if config.out_columns:
        params["-out"] = ",".join(config.out_columns)
    else:
        params["-out.all"] = "1"
    params.update(constraints)
    return urllib.request.Request(
        f"{base}/viz-bin/votable?{urllib.parse.urlencode(params)}",
        headers={"User-Agent": "darkroom (astroquery-compatible client)"},
    )


def query_table(
    config: OnlineCatalogConfig,
    *,
    constraints: dict[str, str] | None = None,
    cache_dir: str | Path | None = None,
    refresh: bool = False,
) -> Table:
    """A whole VizieR table (no cone), optionally with column constraints, as the service sends it.

    ``constraints`` are VizieR column conditions, e.g. ``{"Pwd": ">0.75"}``. The answer is kept
    in ``cache_dir`` (ECSV, keyed by the query) and reused unless ``refresh``. The columns are
    not standardised: callers map them (e.g. :mod:`darkroom.surveys.targets`).

    Raises
    ------
    DarkroomError
        Not a VizieR config, the service cannot be reached, or it reports an error.
    """
    from astropy.table import Table

    if config.service != "vizier":
        raise DarkroomError(f"whole-table queries need a VizieR service, not {config.service!r}")
    constraints = dict(constraints or {})
    path = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        key = json.dumps(
            {
                "base_url": config.base_url.rstrip("/"),
                "catalog": config.catalog,
                "out": list(config.out_columns or []),
                "max_rows": config.max_rows,
                "constraints": constraints,
            },
            sort_keys=True,
        )
        slug = "".join(ch if ch.isalnum() else "_" for ch in config.catalog)
        path = cache / f"vizier_table_{slug}_{hashlib.sha256(key.encode()).hexdigest()[:20]}.ecsv"
        if path.is_file() and not refresh:
            log.debug("catalog cache hit %s", path.name)
            return Table.read(path, format="ascii.ecsv")
    where = f"vizier {config.base_url}"
    try:
        with urllib.request.urlopen(
            _table_request(config, constraints), timeout=config.timeout_s
        ) as response:
            content = response.read()
    except urllib.error.HTTPError as exc:
        raise DarkroomError(f"{where} answered HTTP {exc.code} for {config.catalog}: {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DarkroomError(f"cannot reach {where} for {config.catalog}: {exc}") from exc
    table = _parse_votable(content, where)
    if len(table) == 0 and not table.colnames:
        raise DarkroomError(f"{where} returned no table for {config.catalog}")
    if len(table) >= config.max_rows:
        log.warning("%s: %s truncated at max_rows=%d", where, config.catalog, config.max_rows)
    log.info("%s: %d rows of %s", where, len(table), config.catalog)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        table.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    return table
