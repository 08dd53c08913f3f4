"""Everything about a night that does not depend on per-pixel noise: the schedule,
the detector, the catalogue, the pointing, the seeing and the light curves.

:func:`build_scene` is deterministic from the config; rendering a frame only adds the
frame's own noise and cosmic rays (see :mod:`darkroom.sim.render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS

from darkroom.errors import ConfigError
from darkroom.sim._rng import stream
from darkroom.sim.catalog import make_star_catalog
from darkroom.sim.config import SimConfig
from darkroom.sim.detector import DetectorModel, make_detector
from darkroom.sim.lightcurves import TransitGeometry, solve_transit, transit_model, variable_star
from darkroom.sim.observing import airmass, altitude_deg, bjd_tdb, hour_angle_deg, jd_utc
from darkroom.sim.wcs import base_wcs_header, frame_wcs, pixel_to_sky

__all__ = ["FrameKind", "FrameSpec", "ScienceState", "SimScene", "build_scene"]

FrameKind = Literal["bias", "dark", "flat", "light"]
FRAME_KINDS: tuple[FrameKind, ...] = ("bias", "dark", "flat", "light")
_ISOLATION_PIX = 15.0  # random stars closer than this to the planet host or the variable are dropped
_N_SEEING_MODES = 4


@dataclass(frozen=True)
class FrameSpec:
    """One exposure of the night."""

    kind: FrameKind
    index: int  #: 0-based index among the frames of this kind
    start_utc: datetime  #: start of the exposure, UTC, naive, millisecond resolution
    exptime_s: float  #: exposure time [s]
    filename: str  #: MaxIm-like file name

    @property
    def stem(self) -> str:
        return self.filename.removesuffix(".fits")

    @property
    def mid_utc(self) -> datetime:
        return self.start_utc + timedelta(seconds=self.exptime_s / 2.0)


@dataclass(frozen=True)
class ScienceState:
    """Per-science-frame conditions, arrays of length ``n_science``."""

    jd_utc_mid: np.ndarray  #: Julian date (UTC) at mid-exposure
    bjd_tdb_mid: np.ndarray  #: barycentric Julian date (TDB) at mid-exposure
    alt_deg: np.ndarray  #: altitude of the field centre [deg]
    hour_angle_deg: np.ndarray  #: hour angle of the field centre [deg]
    airmass: np.ndarray  #: airmass of the field centre
    fwhm_arcsec: np.ndarray  #: seeing FWHM at the frame centre [arcsec]
    shift_x_pix: np.ndarray  #: displacement of the stars from the nominal pointing along x [pixel]
    shift_y_pix: np.ndarray  #: ... along y [pixel]
    host_rel_flux: np.ndarray  #: true relative flux of the planet host
    variable_rel_flux: np.ndarray  #: true relative flux of the variable star
    wcs_headers: tuple[fits.Header, ...]  #: truth TAN-SIP WCS of each frame
    wcs: tuple[WCS, ...]  #: the same as WCS objects (shared: do not modify, use SimScene.light_wcs)


@dataclass(frozen=True)
class SimScene:
    """A night before noise: the input of every renderer."""

    config: SimConfig
    detector: DetectorModel
    catalog: Table  #: all stars: id, ra_deg, dec_deg, r_mag, g_mag, g_r, pm...
    base_wcs: fits.Header  #: TAN-SIP of the nominal pointing
    frames: tuple[FrameSpec, ...]  #: every exposure in time order
    science: ScienceState
    transit: TransitGeometry
    transit_t0_bjd: float  #: mid-transit time, BJD_TDB
    variable_t_ref_bjd: float  #: reference time of the variable's phase, BJD_TDB
    variable_period_d: float  #: variable's period [day]
    host_id: int
    variable_id: int
    header_pointing_offset_deg: tuple[float, float]  #: (dRA cos Dec, dDec) error of OBJCTRA/OBJCTDEC [deg]
    _by_kind: dict[str, list[FrameSpec]] = field(default_factory=dict, repr=False)
    _position: dict[str, int] = field(default_factory=dict, repr=False)

    def position(self, spec: FrameSpec) -> int:
        """0-based position of ``spec`` in the night's time-ordered frame list."""
        return self._position[spec.filename]

    def frames_of(self, kind: FrameKind) -> list[FrameSpec]:
        """Frames of one kind in time order."""
        return self._by_kind[kind]

    def frame(self, kind: FrameKind, index: int) -> FrameSpec:
        """The ``index``-th frame of ``kind``; raises IndexError with the count when out of range."""
        frames = self._by_kind[kind]
        if not 0 <= index < len(frames):
            raise IndexError(f"{kind} frame {index} does not exist: the night has {len(frames)}")
        return frames[index]

    def light_wcs(self, index: int) -> WCS:
        """Truth WCS of science frame ``index`` (0-based pixels via ``all_world2pix(..., 0)``)."""
        return WCS(self.science.wcs_headers[index])

    def light_centre_sky(self, index: int) -> tuple[float, float]:
        """(RA, Dec) [deg] of the detector centre in science frame ``index``."""
        ny, nx = self.config.shape
        ra, dec = pixel_to_sky(
            self.science.wcs[index], np.array([(nx - 1) / 2.0]), np.array([(ny - 1) / 2.0])
        )
        return float(ra[0]), float(dec[0])


def _schedule(config: SimConfig) -> tuple[FrameSpec, ...]:
    rng = stream(config.seed, "header")
    frames: list[FrameSpec] = []
    t = config.start_utc - timedelta(minutes=config.calib_lead_min)

    def add(kind: FrameKind, index: int, nominal: datetime, exptime: float) -> None:
        stamp = nominal.strftime("%Y%m%d_%H%M%S")
        name = {
            "bias": f"Bias_BIN1_{stamp}.fits",
            "dark": f"Dark_BIN1_{stamp}.fits",
            "flat": f"Flat_{config.filter_name}_{stamp}.fits",
            "light": f"{config.object_name}_{config.filter_name}_{stamp}.fits",
        }[kind]
        if config.header_style == "minimal":  # a driver's running names: no type hint in them
            name = f"frame_{stamp}.fits"
        start = nominal + timedelta(milliseconds=int(rng.integers(0, 900)))
        frames.append(FrameSpec(kind=kind, index=index, start_utc=start, exptime_s=exptime, filename=name))

    for i in range(config.n_bias):
        add("bias", i, t, 0.0)
        t += timedelta(seconds=config.readout_s)
    for i in range(config.n_dark):
        add("dark", i, t, config.dark_exptime_s)
        t += timedelta(seconds=config.dark_exptime_s + config.readout_s)
    for i in range(config.n_flat):
        add("flat", i, t, config.flat_exptime_s)
        t += timedelta(seconds=config.flat_exptime_s + config.readout_s)
    for i in range(config.n_science):
        add("light", i, config.start_utc + timedelta(seconds=i * config.cadence_s), config.exptime_s)
    names = [f.filename for f in frames]
    if len(set(names)) != len(names):
        raise ConfigError("two simulated frames would share a file name; lengthen readout_s or cadence_s")
    return tuple(frames)


def _seeing(config: SimConfig, hours: np.ndarray) -> np.ndarray:
    """Smooth seeing curve: a sum of a few random sinusoids with 15 min .. 2 h periods."""
    rng = stream(config.seed, "seeing")
    periods = rng.uniform(0.25, 2.0, _N_SEEING_MODES)
    phases = rng.uniform(0.0, 2 * math.pi, _N_SEEING_MODES)
    s = np.zeros_like(hours)
    for p, ph in zip(periods, phases, strict=True):
        s += math.sqrt(2.0 / _N_SEEING_MODES) * np.sin(2 * math.pi * hours / p + ph)
    return config.seeing_fwhm_arcsec * np.maximum(1.0 + config.seeing_variation * s, 0.4)


def _shifts(config: SimConfig, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = stream(config.seed, "pointing")
    n = len(hours)
    jitter = rng.normal(0.0, config.jitter_pix, (2, n)) if config.jitter_pix > 0 else np.zeros((2, n))
    dx = config.drift_pix_per_h[0] * hours + jitter[0]
    dy = config.drift_pix_per_h[1] * hours + jitter[1]
    for jump in config.jumps:
        dx[jump.frame_index :] += jump.dx_pix
        dy[jump.frame_index :] += jump.dy_pix
    return dx, dy


def _bjd(config: SimConfig, when: datetime) -> float:
    return float(bjd_tdb(jd_utc(when), ra_deg=config.ra_deg, dec_deg=config.dec_deg)[0])


def _injected_star(star_id: int, ra: float, dec: float, r_mag: float, g_r: float, like: Table) -> Table:
    row = Table(
        {
            "id": np.array([star_id], dtype=np.int32),
            "ra_deg": [ra % 360.0],
            "dec_deg": [dec],
            "r_mag": [r_mag],
            "g_mag": [r_mag + g_r],
            "g_r": [g_r],
            "pmra_mas_yr": [0.0],
            "pmdec_mas_yr": [0.0],
        }
    )
    for name in row.colnames:
        row[name].unit = like[name].unit
    return row


def build_scene(config: SimConfig) -> SimScene:
    """Schedule, detector, catalogue, pointing, seeing and light curves of a night."""
    frames = _schedule(config)
    lights = [f for f in frames if f.kind == "light"]
    ny, nx = config.shape

    # --- conditions per science frame ---
    mids = [f.mid_utc for f in lights]
    jd_mid = jd_utc(mids) if mids else np.zeros(0)
    bjd_mid = bjd_tdb(jd_mid, ra_deg=config.ra_deg, dec_deg=config.dec_deg) if mids else np.zeros(0)
    alt = altitude_deg(
        jd_mid,
        ra_deg=config.ra_deg,
        dec_deg=config.dec_deg,
        lat_deg=config.site_lat_deg,
        lon_deg=config.site_lon_deg,
    )
    if np.any(alt < 3.0):
        worst = int(np.argmin(alt))
        raise ConfigError(
            f"field (RA {config.ra_deg}, Dec {config.dec_deg}) is at altitude {alt[worst]:.1f} deg "
            f"at {mids[worst].isoformat()} UTC; choose another start_utc or field"
        )
    x_air = airmass(alt)
    ha = hour_angle_deg(jd_mid, ra_deg=config.ra_deg, lon_deg=config.site_lon_deg)
    t0_mid = config.start_utc + timedelta(seconds=config.exptime_s / 2.0)
    hours = np.array([(m - t0_mid).total_seconds() / 3600.0 for m in mids])
    fwhm = _seeing(config, hours)
    dx, dy = _shifts(config, hours)
    base = base_wcs_header(config)
    base_wcs = WCS(base)
    wcs_headers = tuple(
        frame_wcs(base, float(a), float(b), base_wcs=base_wcs) for a, b in zip(dx, dy, strict=True)
    )

    # --- light curves ---
    pc = config.planet
    transit = solve_transit(
        depth=pc.depth,
        duration_h=pc.duration_h,
        impact_parameter=pc.impact_parameter,
        period_d=pc.period_d,
        u1=pc.u1,
        u2=pc.u2,
    )
    if pc.mid_offset_h is None:
        middle = config.start_utc + timedelta(seconds=(max(config.n_science, 1) - 1) / 2.0 * config.cadence_s)
        t0_when = middle + timedelta(seconds=config.exptime_s / 2.0)
    else:
        t0_when = config.start_utc + timedelta(hours=pc.mid_offset_h)
    t0_bjd = _bjd(config, t0_when)
    host_flux = transit_model(
        bjd_mid,
        t0=t0_bjd,
        period_d=transit.period_d,
        rp_rs=transit.rp_rs,
        a_rs=transit.a_rs,
        inc_deg=transit.inc_deg,
        u1=transit.u1,
        u2=transit.u2,
    )
    vc = config.variable
    t_ref = _bjd(config, config.start_utc)
    var_period_d = vc.period_h / 24.0
    var_flux = variable_star(
        bjd_mid, amplitude=vc.amplitude, period_d=var_period_d, t_ref=t_ref, phase_rad=vc.phase_rad
    )

    # --- catalogue: random stars plus the two targets, placed in the first science frame ---
    wcs_objects = tuple(WCS(h) for h in wcs_headers)
    first = wcs_objects[0] if wcs_objects else base_wcs
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    hx, hy = xc + pc.host_offset_pix[0], yc + pc.host_offset_pix[1]
    vx, vy = xc + vc.offset_frac[0] * nx, yc + vc.offset_frac[1] * ny
    (h_ra, v_ra), (h_dec, v_dec) = pixel_to_sky(first, np.array([hx, vx]), np.array([hy, vy]))
    span = float(np.max(np.hypot(dx, dy))) if len(dx) else 0.0
    random_stars = make_star_catalog(
        config.n_stars,
        wcs=base_wcs,
        shape=config.shape,
        margin_pix=config.catalog_margin_pix + span,
        r_mag_range=config.r_mag_range,
        mag_slope=config.mag_slope,
        rng=stream(config.seed, "catalog"),
    )
    cos_dec = math.cos(math.radians(config.dec_deg))
    keep = np.ones(len(random_stars), dtype=bool)
    limit_deg = _ISOLATION_PIX * config.pixel_scale_arcsec / 3600.0
    for ra0, dec0 in ((h_ra, h_dec), (v_ra, v_dec)):
        d_ra = (np.asarray(random_stars["ra_deg"]) - ra0 + 180.0) % 360.0 - 180.0
        sep = np.hypot(d_ra * cos_dec, np.asarray(random_stars["dec_deg"]) - dec0)
        keep &= sep > limit_deg
    random_stars = random_stars[keep]
    catalog = vstack(
        [
            _injected_star(0, float(h_ra), float(h_dec), pc.host_r_mag, pc.host_g_r, random_stars),
            _injected_star(1, float(v_ra), float(v_dec), vc.r_mag, vc.g_r, random_stars),
            random_stars,
        ],
        metadata_conflicts="silent",
    )
    catalog["id"] = np.arange(len(catalog), dtype=np.int32)
    catalog.meta["description"] = (
        "truth catalogue: ICRS positions at the epoch of the night; id 0 is the planet host, id 1 the variable"
    )

    hrng = stream(config.seed, "header", 1)
    pa = hrng.uniform(0.0, 2 * math.pi)
    err = config.header_pointing_error_arcsec / 3600.0
    offset = (err * math.sin(pa), err * math.cos(pa))

    science = ScienceState(
        jd_utc_mid=jd_mid,
        bjd_tdb_mid=bjd_mid,
        alt_deg=alt,
        hour_angle_deg=ha,
        airmass=x_air,
        fwhm_arcsec=fwhm,
        shift_x_pix=dx,
        shift_y_pix=dy,
        host_rel_flux=host_flux if mids else np.zeros(0),
        variable_rel_flux=var_flux if mids else np.zeros(0),
        wcs_headers=wcs_headers,
        wcs=wcs_objects,
    )
    by_kind: dict[str, list[FrameSpec]] = {k: [f for f in frames if f.kind == k] for k in FRAME_KINDS}
    return SimScene(
        config=config,
        detector=make_detector(config),
        catalog=catalog,
        base_wcs=base,
        frames=frames,
        science=science,
        transit=transit,
        transit_t0_bjd=t0_bjd,
        variable_t_ref_bjd=t_ref,
        variable_period_d=var_period_d,
        host_id=0,
        variable_id=1,
        header_pointing_offset_deg=offset,
        _by_kind=by_kind,
        _position={f.filename: i for i, f in enumerate(frames)},
    )
