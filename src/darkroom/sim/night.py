"""Simulate a whole night to disk: raw FITS, a reference catalogue and truth tables.

Layout written under ``out_dir``::

    raw/                          MaxIm-like uint16 FITS (BZERO 32768), one per exposure
    refcat.ecsv                   reference catalogue of the field
    truth/config.json             the SimConfig (JSON)
    truth/summary.json            targets, photometric model, transit and variable parameters
    truth/catalog.ecsv            every simulated star (id 0 = planet host, id 1 = variable)
    truth/frames.ecsv             one row per exposure: times, airmass, seeing, pointing shift, ...
    truth/stars/<stem>.ecsv       per science frame: id, x, y (0-based), flux_e, flux_adu, ...
    truth/wcs/<stem>.wcs.fits     per science frame: header-only FITS with the truth TAN-SIP WCS
    truth/crmask/<stem>.npz       per exposed frame: ``mask`` (bool, ny x nx), ``index`` (raveled
                                  int64 indices of the hit pixels), ``charge_e`` (float32, their charge [e])
    truth/detector.fits           BIAS [adu], DARK_CURRENT [e/s], FLAT (response), BADPIX (uint8)
    truth/defects.ecsv            hot pixels x, y (0-based), rate_e_s; meta: bad_columns
    truth/lightcurve.ecsv         per science frame: bjd_tdb_mid, host_rel_flux, variable_rel_flux

Same config (and seed) -> byte-identical files.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from darkroom.sim.config import SimConfig
from darkroom.sim.detector import DetectorModel
from darkroom.sim.lightcurves import TransitGeometry
from darkroom.sim.render import FrameTruth, render_frame
from darkroom.sim.scene import FRAME_KINDS, SimScene, build_scene

__all__ = ["SimNight", "SimTruth", "load_truth", "simulate_night"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimTruth:
    """The truth of a simulated night (what the files under ``truth/`` hold)."""

    config: SimConfig
    catalog: Table  #: every star: id, ra_deg, dec_deg, r_mag, g_mag, g_r, pmra_mas_yr, pmdec_mas_yr
    frames: Table  #: one row per exposure (see :func:`_frames_table`)
    light_stars: list[Table]  #: per science frame: id, x, y, flux_e, flux_adu, ... (0-based pixels)
    light_wcs_headers: list[fits.Header]  #: per science frame, truth TAN-SIP
    cr_masks: dict[str, np.ndarray]  #: file name -> bool (ny, nx) cosmic-ray mask
    detector: DetectorModel  #: bias, dark current, flat, hot pixels, bad columns
    lightcurve: Table  #: per science frame: bjd_tdb_mid, host_rel_flux, variable_rel_flux
    summary: dict  #: targets, photometric model, transit and variable parameters

    @property
    def host_id(self) -> int:
        return int(self.summary["host_id"])

    @property
    def variable_id(self) -> int:
        return int(self.summary["variable_id"])

    def light_wcs(self, index: int) -> WCS:
        """Truth WCS of science frame ``index``."""
        return WCS(self.light_wcs_headers[index])


@dataclass(frozen=True)
class SimNight:
    """A simulated night on disk, with its truth in memory."""

    out_dir: Path
    raw_paths: dict[str, list[Path]]  #: 'bias', 'dark', 'flat', 'light' -> files in time order
    refcat_path: Path
    truth_dir: Path
    truth: SimTruth
    scene: SimScene

    @property
    def config(self) -> SimConfig:
        return self.scene.config


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps (byte-identical output)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            item = io.BytesIO()
            np.lib.format.write_array(item, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, item.getvalue(), compresslevel=1)
    path.write_bytes(buffer.getvalue())


def _summary(scene: SimScene) -> dict:
    c = scene.config
    g: TransitGeometry = scene.transit
    return {
        "host_id": scene.host_id,
        "variable_id": scene.variable_id,
        "filter": c.filter_name,
        "zero_point_mag": c.zero_point_mag,
        "colour_term": c.colour_term,
        "extinction_mag_per_airmass": c.extinction_mag_per_airmass,
        "photometric_model": "r = -2.5 log10(rate_e_s) + zero_point_mag - extinction_mag_per_airmass * X "
        "+ colour_term * (g - r)",
        "gain_e_per_adu": c.gain_e_per_adu,
        "read_noise_e": c.read_noise_e,
        "saturation_adu": c.saturation_adu,
        "transit": {
            "model": "quadratic limb darkening, circular orbit (Mandel & Agol 2002, numerical integration)",
            "t0_bjd_tdb": scene.transit_t0_bjd,
            "period_d": g.period_d,
            "rp_rs": g.rp_rs,
            "a_rs": g.a_rs,
            "inc_deg": g.inc_deg,
            "impact_parameter": g.impact_parameter,
            "u1": g.u1,
            "u2": g.u2,
            "depth": c.planet.depth,
            "duration_h": c.planet.duration_h,
        },
        "variable": {
            "model": "1 + amplitude * sin(2 pi (t - t_ref) / period + phase)",
            "t_ref_bjd_tdb": scene.variable_t_ref_bjd,
            "period_d": scene.variable_period_d,
            "amplitude": c.variable.amplitude,
            "phase_rad": c.variable.phase_rad,
        },
    }


def _frames_table(scene: SimScene, truths: list[FrameTruth]) -> Table:
    sci = scene.science
    rows = []
    for tr in truths:
        s = tr.spec
        light = s.kind == "light"
        i = s.index
        rows.append(
            {
                "kind": s.kind,
                "index": i,
                "filename": s.filename,
                "date_obs": s.start_utc.isoformat(timespec="milliseconds"),
                "exptime_s": s.exptime_s,
                "jd_utc_mid": float(sci.jd_utc_mid[i]) if light else np.nan,
                "bjd_tdb_mid": float(sci.bjd_tdb_mid[i]) if light else np.nan,
                "airmass": float(sci.airmass[i]) if light else np.nan,
                "fwhm_arcsec": float(sci.fwhm_arcsec[i]) if light else np.nan,
                "fwhm_pix": float(sci.fwhm_arcsec[i]) / scene.config.pixel_scale_arcsec if light else np.nan,
                "shift_x_pix": float(sci.shift_x_pix[i]) if light else np.nan,
                "shift_y_pix": float(sci.shift_y_pix[i]) if light else np.nan,
                "flat_level_adu": tr.flat_level_adu if tr.flat_level_adu is not None else np.nan,
                "n_cr_pixels": len(tr.cr_index),
            }
        )
    table = Table(rows=rows) if rows else Table(names=["kind", "index", "filename"], dtype=[str, int, str])
    table.meta["description"] = (
        "one row per exposure; shift_*_pix = displacement of the stars from the nominal pointing; "
        "fwhm at the detector centre"
    )
    return table


def _lightcurve_table(scene: SimScene) -> Table:
    sci = scene.science
    lights = scene.frames_of("light")
    table = Table(
        {
            "index": np.arange(len(lights), dtype=np.int32),
            "filename": [f.filename for f in lights],
            "bjd_tdb_mid": sci.bjd_tdb_mid,
            "airmass": sci.airmass,
            "host_rel_flux": sci.host_rel_flux,
            "variable_rel_flux": sci.variable_rel_flux,
        }
    )
    table.meta.update(_summary(scene))
    return table


def _refcat(scene: SimScene) -> Table:
    cat = scene.catalog
    keep = np.asarray(cat["r_mag"]) <= scene.config.refcat_mag_limit
    ref = cat[keep]["id", "ra_deg", "dec_deg", "g_mag", "r_mag", "pmra_mas_yr", "pmdec_mas_yr"]
    ref.rename_column("id", "source_id")
    first = scene.frames_of("light")[0].mid_utc if scene.frames_of("light") else scene.config.start_utc
    ref.meta = {
        "description": "darkroom-sim reference catalogue (ICRS); magnitudes are the exact simulation inputs",
        "ref_epoch": first.isoformat(),
        "filter_system": "g, r (AB-like)",
    }
    return ref


def _detector_hdul(det: DetectorModel) -> fits.HDUList:
    badpix = det.bad_pixel_mask().astype(np.uint8)
    hdus = [fits.PrimaryHDU()]
    for name, data, unit in (
        ("BIAS", det.bias_adu, "adu"),
        ("DARK_CURRENT", det.dark_current_e_s, "electron/s"),
        ("FLAT", det.flat, ""),
        ("BADPIX", badpix, ""),
    ):
        hdu = fits.ImageHDU(data=data, name=name)
        hdu.header["BUNIT"] = unit
        hdus.append(hdu)
    hdul = fits.HDUList(hdus)
    hdul[0].header["BADCOLS"] = ",".join(str(c) for c in det.bad_columns)
    return hdul


def simulate_night(out_dir: str | Path, config: SimConfig | None = None) -> SimNight:
    """Simulate a night and write raw frames, the reference catalogue and truth under ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to write into (created if needed); files of the same names are overwritten.
    config
        The night; default ``SimConfig()``.

    Returns
    -------
    SimNight
        Paths of everything written and the in-memory truth.
    """
    config = config or SimConfig()
    out = Path(out_dir)
    raw_dir = out / "raw"
    truth_dir = out / "truth"
    for sub in (raw_dir, truth_dir / "stars", truth_dir / "wcs", truth_dir / "crmask"):
        sub.mkdir(parents=True, exist_ok=True)
    scene = build_scene(config)
    raw_paths: dict[str, list[Path]] = {k: [] for k in FRAME_KINDS}
    truths: list[FrameTruth] = []
    cr_masks: dict[str, np.ndarray] = {}
    light_stars: list[Table] = []
    for spec in scene.frames:
        raw, tr = render_frame(scene, kind=spec.kind, index=spec.index)
        path = raw_dir / spec.filename
        fits.PrimaryHDU(data=raw, header=tr.header).writeto(path, overwrite=True)
        raw_paths[spec.kind].append(path)
        truths.append(tr)
        if spec.kind != "bias":
            mask = tr.cr_mask(config.shape)
            _save_npz(
                truth_dir / "crmask" / f"{spec.stem}.npz",
                mask=mask,
                index=tr.cr_index,
                charge_e=tr.cr_charge_e.astype(np.float32),
            )
            cr_masks[spec.filename] = mask
        if spec.kind == "light":
            assert tr.stars is not None and tr.wcs_header is not None
            tr.stars.write(truth_dir / "stars" / f"{spec.stem}.ecsv", format="ascii.ecsv", overwrite=True)
            fits.PrimaryHDU(header=tr.wcs_header).writeto(
                truth_dir / "wcs" / f"{spec.stem}.wcs.fits", overwrite=True
            )
            light_stars.append(tr.stars)
        log.debug("simulated %s", spec.filename)

    refcat_path = out / "refcat.ecsv"
    _refcat(scene).write(refcat_path, format="ascii.ecsv", overwrite=True)
    summary = _summary(scene)
    frames = _frames_table(scene, truths)
    lightcurve = _lightcurve_table(scene)
    (truth_dir / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    (truth_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    scene.catalog.write(truth_dir / "catalog.ecsv", format="ascii.ecsv", overwrite=True)
    frames.write(truth_dir / "frames.ecsv", format="ascii.ecsv", overwrite=True)
    lightcurve.write(truth_dir / "lightcurve.ecsv", format="ascii.ecsv", overwrite=True)
    defects = scene.detector.hot_pixels.copy()
    defects.meta["bad_columns"] = list(scene.detector.bad_columns)
    defects.write(truth_dir / "defects.ecsv", format="ascii.ecsv", overwrite=True)
    _detector_hdul(scene.detector).writeto(truth_dir / "detector.fits", overwrite=True)
    log.info("simulated night: %d frames in %s", len(scene.frames), raw_dir)

    truth = SimTruth(
        config=config,
        catalog=scene.catalog,
        frames=frames,
        light_stars=light_stars,
        light_wcs_headers=list(scene.science.wcs_headers),
        cr_masks=cr_masks,
        detector=scene.detector,
        lightcurve=lightcurve,
        summary=summary,
    )
    return SimNight(
        out_dir=out,
        raw_paths=raw_paths,
        refcat_path=refcat_path,
        truth_dir=truth_dir,
        truth=truth,
        scene=scene,
    )


def _wcs_cards(header: fits.Header) -> fits.Header:
    """The WCS cards of a header-only FITS file (drops SIMPLE/BITPIX/NAXIS/EXTEND)."""
    out = header.copy()
    for key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND"):
        out.remove(key, ignore_missing=True)
    return out


def load_truth(truth_dir: str | Path) -> SimTruth:
    """Read the truth written by :func:`simulate_night` back into a :class:`SimTruth`."""
    d = Path(truth_dir)
    config = SimConfig.model_validate_json((d / "config.json").read_text())
    summary = json.loads((d / "summary.json").read_text())
    frames = Table.read(d / "frames.ecsv", format="ascii.ecsv")
    lights = [str(f) for f, k in zip(frames["filename"], frames["kind"], strict=True) if k == "light"]
    stems = [name.removesuffix(".fits") for name in lights]
    light_stars = [Table.read(d / "stars" / f"{s}.ecsv", format="ascii.ecsv") for s in stems]
    wcs_headers = [_wcs_cards(fits.getheader(d / "wcs" / f"{s}.wcs.fits")) for s in stems]
    cr_masks = {}
    for name, kind in zip(frames["filename"], frames["kind"], strict=True):
        if kind != "bias":
            with np.load(d / "crmask" / f"{str(name).removesuffix('.fits')}.npz") as npz:
                cr_masks[str(name)] = npz["mask"]
    with fits.open(d / "detector.fits") as hdul:
        bias = hdul["BIAS"].data.astype(np.float32)
        dark = hdul["DARK_CURRENT"].data.astype(np.float32)
        flat = hdul["FLAT"].data.astype(np.float32)
    defects = Table.read(d / "defects.ecsv", format="ascii.ecsv")
    bad_columns = tuple(int(c) for c in defects.meta.get("bad_columns", []))
    hot = defects.copy()
    hot.meta.pop("bad_columns", None)
    detector = DetectorModel(
        bias_adu=bias, dark_current_e_s=dark, flat=flat, hot_pixels=hot, bad_columns=bad_columns
    )
    return SimTruth(
        config=config,
        catalog=Table.read(d / "catalog.ecsv", format="ascii.ecsv"),
        frames=frames,
        light_stars=light_stars,
        light_wcs_headers=wcs_headers,
        cr_masks=cr_masks,
        detector=detector,
        lightcurve=Table.read(d / "lightcurve.ecsv", format="ascii.ecsv"),
        summary=summary,
    )
