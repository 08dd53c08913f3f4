"""MaxIm DL / ACP-like FITS headers for simulated frames."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
from astropy.io import fits

from darkroom.sim._rng import stream
from darkroom.sim.observing import jd_utc, local_sidereal_deg
from darkroom.sim.scene import FrameSpec, SimScene
from darkroom.sim.wcs import perturbed_wcs

__all__ = ["IMAGETYP", "INSTRUME", "SWCREATE", "TELESCOP", "dec_dms", "frame_header", "ra_hms", "sexagesimal"]

TELESCOP = "darkroom-sim"
INSTRUME = "simcam"
SWCREATE = "MaxIm DL Version 6.50 (darkroom sim)"
IMAGETYP = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT", "light": "LIGHT"}


def sexagesimal(value: float, *, decimals: int, signed: bool, width: int = 2) -> str:
    """``[+-]DD MM SS[.s]`` of a value in units (hours or degrees); rounding carries correctly."""
    sign = "-" if value < 0 else ("+" if signed else "")
    scale = 10**decimals
    total = round(abs(value) * 3600.0 * scale)
    whole, frac = divmod(total, scale)
    units, rest = divmod(whole, 3600)
    minutes, seconds = divmod(rest, 60)
    sec = f"{seconds:02d}" if decimals == 0 else f"{seconds:02d}.{frac:0{decimals}d}"
    return f"{sign}{units:0{width}d} {minutes:02d} {sec}"


def ra_hms(ra_deg: float) -> str:
    """'HH MM SS.ss' of a right ascension [deg]."""
    text = sexagesimal((ra_deg % 360.0) / 15.0, decimals=2, signed=False)
    return "00" + text[2:] if text.startswith("24") else text


def dec_dms(dec_deg: float) -> str:
    """'+DD MM SS.s' of a declination [deg]."""
    return sexagesimal(dec_deg, decimals=1, signed=True)


def frame_header(scene: SimScene, spec: FrameSpec, *, flat_level_adu: float | None = None) -> fits.Header:
    """The header MaxIm/ACP would write for ``spec`` (no data-structure cards); with
    ``header_style='minimal'`` what a bare small-telescope driver writes."""
    c = scene.config
    if c.header_style == "minimal":
        return _minimal_header(scene, spec)
    rng = stream(c.seed, "header", 1000 + scene.position(spec))
    h = fits.Header()
    h["DATE-OBS"] = (
        spec.start_utc.isoformat(timespec="milliseconds"),
        "[ISO 8601] UTC date/time of exposure start",
    )
    h["EXPTIME"] = (float(spec.exptime_s), "[sec] Duration of exposure")
    h["EXPOSURE"] = (float(spec.exptime_s), "[sec] Duration of exposure")
    h["SET-TEMP"] = (float(c.ccd_temp_c), "CCD temperature setpoint in C")
    h["CCD-TEMP"] = (
        round(c.ccd_temp_c + rng.normal(0.0, 0.08), 4),
        "CCD temperature at start of exposure in C",
    )
    h["XPIXSZ"] = (float(c.pixel_size_um), "Pixel Width in microns (after binning)")
    h["YPIXSZ"] = (float(c.pixel_size_um), "Pixel Height in microns (after binning)")
    h["XBINNING"] = (1, "Binning level along the X-axis")
    h["YBINNING"] = (1, "Binning level along the Y-axis")
    h["XORGSUBF"] = (0, "Subframe X position in binned pixels")
    h["YORGSUBF"] = (0, "Subframe Y position in binned pixels")
    h["READOUTM"] = ("Monochrome", "Readout mode of image")
    if spec.kind in ("flat", "light"):
        h["FILTER"] = (c.filter_name, "Filter name")
    h["IMAGETYP"] = (IMAGETYP[spec.kind], "Type of image")
    h["FOCALLEN"] = (round(c.focal_length_mm, 1), "Focal length of telescope in mm")
    h["SWCREATE"] = (SWCREATE, "Name of software")
    if spec.kind == "light":
        ra, dec = scene.light_centre_sky(spec.index)
        h["AIRMASS"] = (
            round(float(scene.science.airmass[spec.index]), 6),
            "Airmass (multiple of zenithal airmass)",
        )
        h["OBJCTALT"] = (
            round(float(scene.science.alt_deg[spec.index]), 4),
            "Nominal altitude of center of image",
        )
        h["OBJCTHA"] = (
            sexagesimal(float(scene.science.hour_angle_deg[spec.index]) / 15.0, decimals=2, signed=True),
            "Nominal hour angle of center of image",
        )
    else:
        ra, dec = c.ra_deg, c.dec_deg
    d_ra, d_dec = scene.header_pointing_offset_deg
    ra_hdr = ra + d_ra / max(math.cos(math.radians(dec)), 1e-6)
    dec_hdr = float(np.clip(dec + d_dec, -90.0, 90.0))
    h["OBJCTRA"] = (ra_hms(ra_hdr), "[hms J2000] Target right ascension")
    h["OBJCTDEC"] = (dec_dms(dec_hdr), "[dms +N J2000] Target declination")
    h["SITELAT"] = (sexagesimal(c.site_lat_deg, decimals=0, signed=False), "Latitude of the imaging location")
    h["SITELONG"] = (
        sexagesimal(c.site_lon_deg, decimals=0, signed=False),
        "Longitude of the imaging location",
    )
    h["JD"] = (float(jd_utc(spec.start_utc)[0]), "Julian Date at time of exposure")
    h["OBJECT"] = (c.object_name if spec.kind == "light" else "", "Target object name")
    h["TELESCOP"] = (TELESCOP, "Telescope name")
    h["INSTRUME"] = (INSTRUME, "Detector instrument name")
    h["OBSERVER"] = ("darkroom", "Observer name")
    h["PEDESTAL"] = (0, "Correction to add for zero-based ADU")
    h["EGAIN"] = (float(c.gain_e_per_adu), "Electronic gain in e-/ADU")
    h["RDNOISE"] = (float(c.read_noise_e), "[e-] read noise")
    h["SATURATE"] = (float(c.saturation_adu), "[adu] saturation level")
    h["TIMESYS"] = ("UTC", "Default time system")
    h["LAT-OBS"] = (float(c.site_lat_deg), "[deg +N WGS84] Geodetic latitude")
    h["LONG-OBS"] = (float(c.site_lon_deg), "[deg +E WGS84] Geodetic longitude")
    h["ALT-OBS"] = (float(c.site_height_m), "[metres] Altitude above mean sea level")
    h["OBSERVAT"] = (c.site_name, "Observatory name")
    if flat_level_adu is not None:
        h["FLATLVL"] = (round(flat_level_adu, 1), "[adu] simulated mean flat illumination")
    if spec.kind == "light" and c.header_wcs != "none":
        truth = scene.science.wcs_headers[spec.index]
        if c.header_wcs == "truth":
            wcs_cards = truth
        else:
            wcs_cards = perturbed_wcs(
                truth,
                shift_arcsec=c.perturbed_wcs_shift_arcsec,
                rotation_deg=c.perturbed_wcs_rotation_deg,
                rng=stream(c.seed, "header", 100000 + spec.index),
            )
        h.extend(wcs_cards.cards)
    return h


def _minimal_header(scene: SimScene, spec: FrameSpec) -> fits.Header:
    """No type keyword, no gain/read noise/saturation/pixel size; DATE-OBS in local time with
    its offset; longitude written west-positive (LONGITUD) next to the local sidereal time."""
    c = scene.config
    h = fits.Header()
    local = spec.start_utc + timedelta(hours=c.utc_offset_h)
    sign = "-" if c.utc_offset_h < 0 else "+"
    hh, mm = divmod(round(abs(c.utc_offset_h) * 60), 60)
    h["DATE-OBS"] = (f"{local.isoformat(timespec='seconds')}{sign}{hh:02d}:{mm:02d}", "local time, start")
    h["EXPTIME"] = (float(spec.exptime_s), "[s]")
    if spec.kind == "light":
        ra, dec = scene.light_centre_sky(spec.index)
        d_ra, d_dec = scene.header_pointing_offset_deg
        h["OBJECT"] = c.object_name
        h["RA"] = (ra_hms(ra + d_ra / max(math.cos(math.radians(dec)), 1e-6)).replace(" ", ":"), "hours")
        h["DEC"] = (dec_dms(float(np.clip(dec + d_dec, -90.0, 90.0))).replace(" ", ":"), "degrees")
    if spec.kind in ("flat", "light"):
        h["FILTER"] = c.filter_name
    h["LATITUDE"] = (round(c.site_lat_deg, 4), "degrees")
    h["LONGITUD"] = (round(-c.site_lon_deg, 4), "degrees west")
    lst_h = float(local_sidereal_deg(jd_utc(spec.start_utc), c.site_lon_deg)[0]) / 15.0
    h["LST-OBS"] = (
        sexagesimal(lst_h, decimals=1, signed=False).replace(" ", ":"),
        "local sidereal time, start",
    )
    h["TELESCOP"] = "small-scope"
    h["INSTRUME"] = "cmos-12bit"
    return h
