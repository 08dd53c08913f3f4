"""``darkroom catalog REPO --image RAWFILE -o FILE``: one calibrated image's sources as a table.

Columns: ``ra``, ``dec`` [deg, ICRS, from the image's astrometric solution], ``x``, ``y``
[pixels, 0-based], ``mag``, ``mag_err`` [mag, in the frame's filter: calibrated where the image
has a zero point, instrumental ``-2.5 log10(flux / exptime)`` otherwise], ``flags`` (PhotFlag
bits). The metadata carry the filter, the magnitude system, the zero point and where it came
from. The format follows the suffix: ``.csv`` (metadata as ``#`` comment lines), ``.ecsv``,
``.parquet``. Errors print as one line and exit 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape

from darkroom.errors import BadInputError, DarkroomError

if TYPE_CHECKING:  # astropy.table costs 0.4 s to import: every --help would pay it
    from astropy.table import Table

__all__ = ["image_catalog", "register", "write_catalog"]

console = Console()
err_console = Console(stderr=True)

_FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".parquet": "parquet"}


def _fail(exc: DarkroomError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.reason)}", soft_wrap=True)
    raise typer.Exit(1)


def _find_image(session, raw: Path):
    """The newest calibrated image of a raw file (matched by resolved path, else by checksum)."""
    from sqlalchemy import select

    from darkroom.repo.models import Exposure, Image
    from darkroom.repo.store import sha256_file

    resolved = str(raw.expanduser().resolve())
    exp = session.scalars(select(Exposure).where(Exposure.path == resolved)).first()
    if exp is None and raw.is_file():
        exp = session.scalars(select(Exposure).where(Exposure.sha256 == sha256_file(raw))).first()
    if exp is None:
        raise BadInputError(f"{raw} is not registered in this repository (darkroom ingest it first)")
    if exp.state != "ok":
        raise BadInputError(f"{raw.name} was quarantined: {exp.reason}")
    image = session.scalars(
        select(Image).where(Image.exposure_id == exp.id).order_by(Image.id.desc())
    ).first()
    if image is None:
        raise BadInputError(f"{raw.name} has no calibrated image yet (darkroom run)")
    from darkroom.pipeline.products import image_products

    # the image with its newest products (catalogue, solution, zero point)
    (products,) = image_products(session, None, image_ids=[image.id], only_ok=False)
    return products, exp.exptime_s


def image_catalog(root: Path, image, *, exptime_s: float | None = None) -> Table:
    """The source table of one image with its products (:class:`~darkroom.pipeline.products.ImageProducts`, see the module docstring);
    ``exptime_s`` [s] scales the instrumental magnitudes of an image without photometry."""
    from astropy.table import Table

    from darkroom.pipeline._products import raw_stem
    from darkroom.pipeline.astrometry import wcs_from_astrom

    photcal: dict[str, Any] = dict(image.photcal or {})
    prov = photcal.get("provenance_id")
    phot_path = root / "catalogs" / str(prov) / f"{raw_stem(image.path)}.phot.parquet" if prov else None
    if phot_path is not None and phot_path.is_file():
        t = Table.read(phot_path)
        keep = ~np.asarray(t["forced"], bool) if "forced" in t.colnames else np.ones(len(t), bool)
        t = t[keep]
        out = Table()
        for col in ("ra", "dec", "x", "y", "mag", "mag_err", "flags"):
            out[col] = t[col] if col in t.colnames else np.full(len(t), np.nan)
        system = photcal.get("mag_system") or "instrumental"
    else:
        if not image.catalog_path:
            raise BadInputError(f"image {image.id} has no source catalogue yet (darkroom run)")
        from darkroom.catalogs import read_table

        t = read_table(root / image.catalog_path)
        flux = np.asarray(t["flux_aper_adu"] if "flux_aper_adu" in t.colnames else t["flux"], float)
        err = np.asarray(
            t["flux_aper_err_adu"] if "flux_aper_err_adu" in t.colnames else np.full(len(t), np.nan), float
        )
        exptime = exptime_s or 1.0
        with np.errstate(all="ignore"):
            mag = np.where(flux > 0, -2.5 * np.log10(np.where(flux > 0, flux, 1.0) / exptime), np.nan)
            mag_err = np.where(flux > 0, 2.5 / math.log(10.0) * err / np.where(flux > 0, flux, 1.0), np.nan)
        out = Table()
        out["x"], out["y"] = np.asarray(t["x"], float), np.asarray(t["y"], float)
        wcs = wcs_from_astrom(image.astrom or {})
        if wcs is not None:
            ra, dec = wcs.all_pix2world(out["x"], out["y"], 0)
            out["ra"], out["dec"] = ra % 360.0, dec
        else:
            out["ra"] = out["dec"] = np.full(len(out), np.nan)
        out["mag"], out["mag_err"] = mag, mag_err
        out["flags"] = np.asarray(t["flag"], np.int64) if "flag" in t.colnames else np.zeros(len(t), np.int64)
        out = out["ra", "dec", "x", "y", "mag", "mag_err", "flags"]
        system = "instrumental"
    for col, unit in (
        ("ra", "deg"),
        ("dec", "deg"),
        ("x", "pix"),
        ("y", "pix"),
        ("mag", "mag"),
        ("mag_err", "mag"),
    ):
        out[col].unit = unit
    out.meta.update(
        {
            "image_id": image.id,
            "image": image.path,
            "filter": image.filter or "",
            "mag_system": system,
            "zero_point_mag": photcal.get("zp") if system == "calibrated" else None,
            "zero_point_err_mag": photcal.get("zp_err") if system == "calibrated" else None,
            "zero_point_source": photcal.get("zp_source") if system == "calibrated" else None,
            "zero_point_flag": photcal.get("zp_flag"),
            "mag_convention": "mag = -2.5 log10(flux / exptime_s) + zero_point_mag",
            "astrometry": (image.astrom or {}).get("quality") or image.astrom_flag,
            "pixel_origin": 0,
            "mjd_mid_utc": image.mjd_mid,
        }
    )
    return out


def write_catalog(table: Table, path: Path) -> Path:
    """Write ``table`` in the format of ``path``'s suffix (.csv, .ecsv, .parquet), atomically."""
    from darkroom.io.atomic import atomic_path

    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInputError(f"-o {path.name}: use a .csv, .ecsv or .parquet file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table.copy(copy_data=False)
    if fmt == "ascii.csv":  # CSV has no metadata block: the figures go in comment lines
        out.meta = {"comments": [f"{k}: {v}" for k, v in table.meta.items()]}
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            out.write(tmp, format=fmt, overwrite=True)
        elif fmt == "ascii.csv":
            out.write(tmp, format=fmt, overwrite=True, comment="# ")
        else:
            out.write(tmp, format=fmt, overwrite=True)
    return path


def register(app: typer.Typer) -> None:
    """Add ``darkroom catalog`` to the command line."""

    @app.command("catalog")
    def catalog(
        repo: Annotated[Path, typer.Argument(help="repository folder")],
        image: Annotated[Path, typer.Option("--image", help="the raw FITS file of the image")],
        output: Annotated[Path, typer.Option("-o", "--output", help="FILE.csv, FILE.ecsv or FILE.parquet")],
    ) -> None:
        """One calibrated image's sources: ra, dec, x, y (0-based), mag, mag_err, flags."""
        from darkroom.facade import Repository

        try:
            r = Repository(repo)
            try:
                with r.registry.session() as s:
                    row, exptime = _find_image(s, image)
                    table = image_catalog(r.root, row, exptime_s=exptime)
            finally:
                r.close()
            write_catalog(table, output)
        except DarkroomError as exc:
            _fail(exc)
        zp = table.meta.get("zero_point_mag")
        console.print(
            f"{len(table)} sources of {image.name} ({table.meta['filter'] or 'no filter'}, "
            f"{table.meta['mag_system']}{f', zero point {zp:.3f} mag' if zp is not None else ''}) -> {output}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
