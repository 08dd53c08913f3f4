"""Render frames of a simulated night, and the noiseless truth images.

Signal chain of a raw frame (all per pixel, electrons unless stated)::

    expected = (sky + stars) * flat + dark_current * t        (lights)
             = level_adu * gain * flat + dark_current * t     (flats)
             = dark_current * t                               (darks);  0 (biases)
    charge   = Poisson(expected) + cosmic rays                 (no cosmic rays in biases)
    raw_adu  = min(bias_adu + charge / gain + N(0, rn / gain), saturation), rounded, uint16

so a perfectly calibrated light, ``(raw - bias - dark_current t / gain) / flat``, has
expectation ``(sky + stars) / gain`` adu: :func:`truth_image` with ``calibrated=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.table import Table

from darkroom.sim._rng import stream
from darkroom.sim.config import SimConfig
from darkroom.sim.detector import cosmic_rays, to_adu
from darkroom.sim.headers import frame_header
from darkroom.sim.psf import render_stars
from darkroom.sim.scene import FrameKind, FrameSpec, SimScene, build_scene
from darkroom.sim.wcs import sky_to_pixel

__all__ = ["FrameTruth", "flat_level_adu", "light_electrons", "render_frame", "truth_image"]


@dataclass(frozen=True)
class FrameTruth:
    """What went into one raw frame."""

    spec: FrameSpec
    header: fits.Header  #: the MaxIm-like header written with the frame
    cr_index: np.ndarray  #: raveled indices of cosmic-ray pixels (sorted, unique)
    cr_charge_e: np.ndarray  #: charge deposited in those pixels [electron]
    stars: Table | None = None  #: lights only: per-star truth (see :func:`light_electrons`)
    wcs_header: fits.Header | None = None  #: lights only: truth TAN-SIP WCS
    flat_level_adu: float | None = None  #: flats only: mean illumination above bias [adu]

    def cr_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean ``(ny, nx)`` mask of the pixels hit by cosmic rays."""
        mask = np.zeros(shape, dtype=bool)
        mask.ravel()[self.cr_index] = True
        return mask


def _scene_of(obj: object) -> SimScene:
    if isinstance(obj, SimScene):
        return obj
    if isinstance(obj, SimConfig):
        return build_scene(obj)
    scene = getattr(obj, "scene", None)
    if isinstance(scene, SimScene):
        return scene
    config = getattr(obj, "config", None)
    if isinstance(config, SimConfig):
        return build_scene(config)
    raise TypeError(f"expected a SimNight, SimTruth, SimScene or SimConfig, got {type(obj).__name__}")


def flat_level_adu(config: SimConfig, index: int) -> float:
    """Mean illumination of flat ``index`` above bias [adu]: linear from the first to the last level."""
    a, b = config.flat_level_adu
    frac = index / (config.n_flat - 1) if config.n_flat > 1 else 0.0
    return a + (b - a) * frac


def light_electrons(scene: SimScene, index: int) -> tuple[np.ndarray, Table]:
    """Noiseless sky + stars of science frame ``index`` [electron], before the flat field.

    Returns
    -------
    image
        ``(ny, nx)`` float64 electrons per pixel.
    stars
        One row per star whose stamp touches the detector: ``id``, ``x``, ``y`` (0-based,
        sep convention), ``flux_e`` (total electrons of the star in the exposure, i.e.
        the sum over a perfectly calibrated frame times the gain), ``flux_adu``
        (= flux_e / gain), ``frac_on_chip``, ``peak_e``, ``fwhm_pix``, ``r_mag``, ``g_r``,
        ``rel_flux``, ``in_frame`` (centre inside the pixel grid), ``saturated`` (the
        expected raw value of its brightest pixel reaches saturation).
    """
    c = scene.config
    sci = scene.science
    ny, nx = c.shape
    cat = scene.catalog
    x, y = sky_to_pixel(scene.science.wcs[index], np.asarray(cat["ra_deg"]), np.asarray(cat["dec_deg"]))
    rel = np.ones(len(cat))
    rel[scene.host_id] = sci.host_rel_flux[index]
    rel[scene.variable_id] = sci.variable_rel_flux[index]
    r_mag = np.asarray(cat["r_mag"], dtype=float)
    g_r = np.asarray(cat["g_r"], dtype=float)
    mag_inst = (
        r_mag - c.zero_point_mag + c.extinction_mag_per_airmass * sci.airmass[index] - c.colour_term * g_r
    )
    flux = 10.0 ** (-0.4 * mag_inst) * c.exptime_s * rel
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    r2 = ((x - xc) ** 2 + (y - yc) ** 2) / (xc**2 + yc**2)
    fwhm_pix = sci.fwhm_arcsec[index] / c.pixel_scale_arcsec * (1.0 + c.seeing_field_variation * r2)
    sky_level = c.sky_e_s * c.exptime_s * (1.0 + c.sky_airmass_slope * (float(sci.airmass[index]) - 1.0))
    sky_row = sky_level * (1.0 + c.sky_gradient * (np.arange(nx) / max(nx - 1, 1) - 0.5))
    image = np.repeat(sky_row[None, :], ny, axis=0)
    frac, peak = render_stars(
        image, x, y, flux, fwhm_pix, beta=c.moffat_beta, oversample=c.psf_oversample, wing_tolerance=1.0
    )
    sel = frac > 0
    ix = np.clip(np.floor(x + 0.5).astype(int), 0, nx - 1)
    iy = np.clip(np.floor(y + 0.5).astype(int), 0, ny - 1)
    det = scene.detector
    peak_raw = (
        det.bias_adu[iy, ix]
        + ((peak + sky_row[ix]) * det.flat[iy, ix] + det.dark_current_e_s[iy, ix] * c.exptime_s)
        / c.gain_e_per_adu
    )
    stars = Table(
        {
            "id": np.asarray(cat["id"])[sel],
            "x": x[sel],
            "y": y[sel],
            "flux_e": flux[sel],
            "flux_adu": flux[sel] / c.gain_e_per_adu,
            "frac_on_chip": frac[sel],
            "peak_e": peak[sel],
            "fwhm_pix": fwhm_pix[sel],
            "r_mag": r_mag[sel],
            "g_r": g_r[sel],
            "rel_flux": rel[sel],
            "in_frame": ((x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5))[sel],
            "saturated": (peak_raw >= c.saturation_adu)[sel],
        }
    )
    units = {"x": "pix", "y": "pix", "flux_e": "electron", "flux_adu": "adu", "peak_e": "electron"}
    for name, unit in units.items():
        stars[name].unit = unit
    stars["fwhm_pix"].unit = "pix"
    stars["r_mag"].unit = "mag"
    stars["g_r"].unit = "mag"
    stars.meta.update(
        {
            "frame_index": int(index),
            "filename": scene.frame("light", index).filename,
            "bjd_tdb_mid": float(sci.bjd_tdb_mid[index]),
            "airmass": float(sci.airmass[index]),
            "exptime_s": float(c.exptime_s),
            "gain_e_per_adu": float(c.gain_e_per_adu),
            "convention": "x, y 0-based pixel centres (sep); flux_e before flat field and noise",
        }
    )
    return image, stars


def truth_image(night_or_config: object, frame_index: int, *, calibrated: bool = True) -> np.ndarray:
    """Noiseless image of science frame ``frame_index`` [adu], regenerated deterministically.

    Parameters
    ----------
    night_or_config
        A :class:`~darkroom.sim.SimNight`, :class:`~darkroom.sim.SimTruth`, scene or
        :class:`SimConfig` (the last rebuilds the scene, ~0.2 s for 1k x 1k).
    frame_index
        0-based index of the science frame.
    calibrated
        True: ``(sky + stars) / gain``, what a perfectly calibrated frame shows on
        average. False: the expected raw frame, ``bias + ((sky + stars) flat +
        dark t) / gain`` clipped at saturation (no cosmic rays, no noise).

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32 [adu].
    """
    scene = _scene_of(night_or_config)
    c = scene.config
    image, _ = light_electrons(scene, frame_index)
    if calibrated:
        return (image / c.gain_e_per_adu).astype(np.float32)
    det = scene.detector
    raw = det.bias_adu + (image * det.flat + det.dark_current_e_s * c.exptime_s) / c.gain_e_per_adu
    return np.minimum(raw, c.saturation_adu).astype(np.float32)


def render_frame(
    scene_or_config: SimScene | SimConfig, *, kind: FrameKind = "light", index: int = 0
) -> tuple[np.ndarray, FrameTruth]:
    """Raw ``(ny, nx)`` uint16 frame and its truth, for the ``index``-th frame of ``kind``.

    Deterministic: each frame has its own random streams, so any frame can be rendered
    alone and gives the same pixels as in :func:`~darkroom.sim.simulate_night`.
    """
    scene = _scene_of(scene_or_config)
    c = scene.config
    det = scene.detector
    spec = scene.frame(kind, index)
    t = spec.exptime_s
    stars = None
    wcs_header = None
    level = None
    if kind == "bias":
        expected = None
    elif kind == "dark":
        expected = det.dark_current_e_s.astype(np.float64) * t
    elif kind == "flat":
        level = flat_level_adu(c, index)
        expected = level * c.gain_e_per_adu * det.flat.astype(np.float64) + det.dark_current_e_s * t
    else:
        image, stars = light_electrons(scene, index)
        expected = image * det.flat + det.dark_current_e_s * t
        wcs_header = scene.science.wcs_headers[index]
    rng = stream(c.seed, f"noise_{kind}", index)
    if expected is None:
        charge = np.zeros(c.shape, dtype=np.float32)
        cr_index, cr_charge = np.zeros(0, dtype=np.int64), np.zeros(0)
    else:
        charge = rng.poisson(expected).astype(np.float32)
        cr_index, cr_charge = cosmic_rays(c, t, stream(c.seed, f"cr_{kind}", index))
        charge.ravel()[cr_index] += cr_charge.astype(np.float32)
    raw = to_adu(charge, det.bias_adu, c, rng)
    header = frame_header(scene, spec, flat_level_adu=level)
    truth = FrameTruth(
        spec=spec,
        header=header,
        cr_index=cr_index,
        cr_charge_e=cr_charge,
        stars=stars,
        wcs_header=wcs_header,
        flat_level_adu=level,
    )
    return raw, truth
