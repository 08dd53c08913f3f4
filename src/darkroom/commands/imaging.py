"""Image-product commands: ``darkroom coadd``, ``resample``, ``arith``, ``rgb``.

Thin wiring over :mod:`darkroom.imaging` (algorithms) and :mod:`darkroom.pipeline.coadd`
(the stage); errors print as one line and exit 1; ``coadd`` exits 2 when a coadd failed.
Images are given as FITS paths (darkroom SCI/MASK/VAR files or any FITS image with a WCS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from darkroom.errors import BadInputError, ConfigError, DarkroomError

__all__ = ["register"]

console = Console()
err_console = Console(stderr=True)

RepoArg = Annotated[Path, typer.Argument(help="repository folder")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a parameter: section.key=value (repeatable)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars; warnings and errors only")]
MethodOpt = Annotated[
    str, typer.Option("--method", help="bilinear | bicubic | adaptive | exact (the last two flux-conserving)")
]


def _fail(exc: DarkroomError) -> None:
    err_console.print(f"[bold red]error:[/] {escape(exc.reason)}", soft_wrap=True)
    raise typer.Exit(1)


def _write(hdus, path: Path) -> Path:
    from darkroom.io.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        hdus.writeto(tmp, output_verify="silentfix")
    return path


def _resample_config(method: str, conserve_flux: bool = True):
    from pydantic import ValidationError

    from darkroom.imaging import ResampleConfig

    try:
        return ResampleConfig(method=method, conserve_flux=conserve_flux)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"--method {method!r}: use bilinear, bicubic, adaptive or exact") from exc


def _resolve(repo: Path | None, spec: str, field: str | None) -> Path:
    """A FITS path (absolute, relative to the cwd or to REPO) or, with REPO, a filter's latest coadd."""
    path = Path(spec)
    if path.exists():
        return path
    if repo is not None and (repo / spec).exists():
        return repo / spec
    if repo is None:
        raise BadInputError(f"{spec}: no such file")
    from sqlalchemy import select

    from darkroom.facade import Repository
    from darkroom.repo.models import Coadd

    r = Repository(repo)
    try:
        with r.registry.session() as s:
            q = select(Coadd).where(Coadd.filter == spec)
            if field:
                q = q.where(Coadd.field == field)
            row = s.scalars(q.order_by(Coadd.created_utc.desc(), Coadd.id.desc())).first()
            found = r.root / row.path if row is not None else None
    finally:
        r.close()
    if found is None:
        raise BadInputError(f"{spec}: neither a file nor the filter of a coadd in {repo}")
    return found


def coadd(
    repo: RepoArg,
    field: Annotated[
        list[str] | None, typer.Option("--field", help="only this field (OBJECT); repeatable")
    ] = None,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="only this filter; repeatable")
    ] = None,
    nights: Annotated[
        list[str] | None, typer.Option("--nights", help="only these nights (YYYY-MM-DD); repeatable")
    ] = None,
    all_nights: Annotated[
        bool, typer.Option("--all-nights", help="one coadd over the nights (default: one per night)")
    ] = False,
    redo: Annotated[
        bool, typer.Option("--redo", help="forget the coadds of this configuration first")
    ] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Coadd the good, solved images per field, filter and night (written under REPO/coadds/)."""
    from darkroom.facade import Repository
    from darkroom.pipeline.drive import drive_stages, print_reports
    from darkroom.pipeline.run import coadd_family

    overrides = list(set_ or ())
    if all_nights:
        overrides.append("coadd.per=all")
    try:
        r = Repository(repo, overrides=overrides)
        stages = [
            s.restrict(fields=field, filters=filter_, nights=nights) for s in coadd_family(r.root, r.config)
        ]
        if redo:
            with r.registry.session() as s:
                for stage in stages:
                    stage.forget(s)
        reports = drive_stages(r.registry, stages, console=err_console, quiet=quiet)
        rows = _coadd_rows(r, stages)
        r.close()
    except DarkroomError as exc:
        _fail(exc)
    if not quiet:
        print_reports(reports, console)
        t = RichTable(title="coadds")
        for col in ("key", "inputs", "exptime s", "FWHM px", "limit mag", "inputs' limit", "file"):
            t.add_column(col, justify="left" if col in ("key", "file") else "right")
        for row in rows:
            t.add_row(*[escape(str(v)) for v in row])
        console.print(t)
    if any(rep.failures for rep in reports):
        for rep in reports:
            for key, reason in rep.failures:
                err_console.print(
                    f"{rep.stage} {key}: {reason}", soft_wrap=True, markup=False, highlight=False
                )
        raise typer.Exit(2)


def _coadd_rows(r, stages) -> list[tuple]:
    from sqlalchemy import select

    from darkroom.repo.models import Coadd

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    with r.registry.session() as s:
        rows = s.scalars(
            select(Coadd)
            .where(Coadd.provenance_id.in_([st.provenance_id for st in stages]))
            .order_by(Coadd.key)
        ).all()
        return [
            (
                c.key,
                c.n_inputs,
                fmt(c.exptime_s, ".0f"),
                fmt((c.values or {}).get("fwhm_pix")),
                fmt((c.values or {}).get("mag_limit")),
                fmt((c.values or {}).get("inputs_mag_limit_median")),
                c.path,
            )
            for c in rows
        ]


def resample_cmd(
    images: Annotated[list[Path], typer.Argument(help="FITS images to resample")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="folder for the resampled files")],
    like: Annotated[Path | None, typer.Option("--like", help="onto this image's pixel grid")] = None,
    ra: Annotated[float | None, typer.Option("--ra", help="grid centre RA [deg]")] = None,
    dec: Annotated[float | None, typer.Option("--dec", help="grid centre Dec [deg]")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="pixel scale [arcsec/pixel]")] = None,
    size: Annotated[
        str | None, typer.Option("--size", help="NX or NXxNY [pixel] of a grid given by --ra/--dec")
    ] = None,
    rotation: Annotated[
        float | None, typer.Option("--rotation", help="position angle of +y, E of N [deg]")
    ] = None,
    method: MethodOpt = "bilinear",
) -> None:
    """Resample images (SCI/MASK/VAR) onto one grid: --like IMAGE, --ra/--dec/--scale/--size
    [--rotation], or (neither) the common tangent plane covering them all."""
    from darkroom.imaging import (
        grid_covering,
        grid_from_centre,
        grid_of,
        planes_to_hdus,
        read_planes,
        resample,
    )

    try:
        cfg = _resample_config(method)
        if like is not None:
            target = grid_of(read_planes(like))
        elif ra is not None and dec is not None:
            if scale is None or size is None:
                raise ConfigError("--ra/--dec need --scale and --size")
            try:
                parts = [int(v) for v in size.lower().split("x")]
            except ValueError as exc:
                raise ConfigError(f"--size {size!r}: give NX or NXxNY") from exc
            nx, ny = parts[0], parts[-1]
            target = grid_from_centre(
                ra, dec, pixel_scale_arcsec=scale, shape=(ny, nx), rotation_deg=rotation or 0.0
            )
        else:
            heads = [read_planes(p) for p in images]
            missing = [h.name for h in heads if h.wcs is None]
            if missing:
                raise BadInputError(f"no WCS in {', '.join(missing)}")
            target = grid_covering(
                [(h.wcs, h.shape) for h in heads], pixel_scale_arcsec=scale, rotation_deg=rotation
            )
        for path in images:
            planes = read_planes(path)
            res = resample(planes, target, cfg)
            out = res.planes(planes)
            header = out.header.copy()
            header.add_history(f"darkroom resample {method} onto {target.shape[1]}x{target.shape[0]}")
            name = path.name.removesuffix(".bz2").removesuffix(".gz").removesuffix(".fits")
            dest = _write(
                planes_to_hdus(out.sci, out.var, out.mask, header, extra={"COVERAGE": res.coverage}),
                out_dir / f"{name}.resampled.fits",
            )
            console.print(f"{escape(str(path))} -> {escape(str(dest))}", highlight=False)
    except DarkroomError as exc:
        _fail(exc)


def arith(
    a: Annotated[Path, typer.Argument(help="first image")],
    op: Annotated[str, typer.Argument(help="one of + - * / (quote * in a shell)")],
    b: Annotated[str, typer.Argument(help="second image, or a number")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output FITS")],
    b_err: Annotated[float, typer.Option("--err", help="1-sigma error of a number B")] = 0.0,
    continuum: Annotated[
        bool,
        typer.Option("--continuum", help="A - s B with s the stars' flux ratio (continuum subtraction)"),
    ] = False,
    method: MethodOpt = "bilinear",
) -> None:
    """Image arithmetic with MASK/VAR propagated; B is resampled onto A's grid when needed."""
    from darkroom.imaging import continuum_subtract, image_arith, planes_to_hdus, read_planes

    try:
        cfg = _resample_config(method)
        first = read_planes(a)
        try:
            second: object = float(b)
        except ValueError:
            second = read_planes(Path(b))
        if continuum:
            if op != "-" or isinstance(second, float):
                raise ConfigError("--continuum needs A - B with two images")
            res = continuum_subtract(first, second, resample_config=cfg)  # type: ignore[arg-type]
            result = res.image
            console.print(
                f"continuum scale s = {res.scale:.5g} +- {res.scale_err:.2g} from {res.n_stars} stars"
            )
        else:
            result = image_arith(first, op, second, b_err=b_err, resample_config=cfg)  # type: ignore[arg-type]
        header = result.header.copy()
        header.add_history(f"darkroom arith {a.name} {op} {b}")
        _write(planes_to_hdus(result.sci, result.var, result.mask, header), out)
        console.print(f"wrote {escape(str(out))}", highlight=False)
    except DarkroomError as exc:
        _fail(exc)


def rgb(
    repo: Annotated[
        Path | None, typer.Argument(help="repository (filters name its coadds); optional with file paths")
    ] = None,
    red: Annotated[str, typer.Option("--red", help="red image: FITS path or a filter's coadd")] = "",
    green: Annotated[str, typer.Option("--green", help="green image")] = "",
    blue: Annotated[str, typer.Option("--blue", help="blue image")] = "",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG, TIFF or JPEG to write")] = Path("rgb.png"),
    fits_out: Annotated[Path | None, typer.Option("--fits", help="also the stretched cube with WCS")] = None,
    reference: Annotated[str, typer.Option("--reference", help="grid of: red, green or blue")] = "green",
    field: Annotated[str | None, typer.Option("--field", help="field of the coadds named by filter")] = None,
    q: Annotated[float, typer.Option("--q", help="asinh softening (Lupton Q)")] = 8.0,
    stretch_sigma: Annotated[float, typer.Option("--stretch", help="linear range [noise sigma]")] = 30.0,
) -> None:
    """Colour composite (Lupton et al. asinh) of three images on one grid."""
    from darkroom.imaging import RgbConfig, make_rgb, read_planes, rgb_fits_hdus, write_rgb

    try:
        if not (red and green and blue):
            raise ConfigError("give --red, --green and --blue")
        planes = [read_planes(_resolve(repo, spec, field)) for spec in (red, green, blue)]
        image = make_rgb(*planes, reference=reference, config=RgbConfig(q=q, stretch_sigma=stretch_sigma))
        out.parent.mkdir(parents=True, exist_ok=True)
        write_rgb(image, out)
        if fits_out is not None:
            _write(rgb_fits_hdus(image), fits_out)
        ny, nx = image.rgb.shape[:2]
        console.print(
            f"wrote {escape(str(out))} ({nx} x {ny}, grid of the {reference} image)", highlight=False
        )
    except DarkroomError as exc:
        _fail(exc)
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add ``coadd``, ``resample``, ``arith`` and ``rgb`` to the CLI."""
    app.command("coadd")(coadd)
    app.command("resample")(resample_cmd)
    app.command("arith")(arith)
    app.command("rgb")(rgb)
