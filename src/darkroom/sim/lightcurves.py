"""True light curves: a limb-darkened transit and a sinusoidal variable.

The transit is the Mandel & Agol (2002) model for quadratic limb darkening,
``I(mu) / I(1) = 1 - u1 (1 - mu) - u2 (1 - mu)^2``, on a circular orbit. Instead of
the closed form with elliptic integrals, the occulted flux is integrated numerically
over the stellar radius: the light blocked is ``int I(r) L(r) r dr`` where ``L(r)``
is the angle of the circle of radius ``r`` (stellar radii) that lies behind the
planet. With the substitution ``r = a + (b - a)(1 - cos theta) / 2`` the square-root
end points are smooth and 256 nodes give the flux to better than 1e-7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

__all__ = ["TransitGeometry", "solve_transit", "transit_model", "variable_star"]

_N_NODES = 256


@dataclass(frozen=True)
class TransitGeometry:
    """Physical parameters of a transit on a circular orbit."""

    rp_rs: float  #: planet-to-star radius ratio
    a_rs: float  #: semi-major axis in stellar radii
    inc_deg: float  #: orbital inclination [deg]
    period_d: float  #: orbital period [day]
    u1: float  #: quadratic limb darkening
    u2: float  #: quadratic limb darkening

    @property
    def impact_parameter(self) -> float:
        return self.a_rs * math.cos(math.radians(self.inc_deg))


def _occulted_fraction(z: np.ndarray, p: float, u1: float, u2: float) -> np.ndarray:
    """Fraction of the stellar flux behind a planet of radius ``p`` at separations ``z``."""
    z = np.asarray(z, dtype=float)
    out = np.zeros_like(z)
    active = z < 1.0 + p
    if not np.any(active):
        return out
    za = z[active]
    lo = np.maximum(za - p, 0.0)
    hi = np.minimum(za + p, 1.0)
    theta = (np.arange(_N_NODES) + 0.5) * (math.pi / _N_NODES)  # midpoint rule in theta
    s = 0.5 * (1.0 - np.cos(theta))
    drds = 0.5 * np.sin(theta) * (math.pi / _N_NODES)
    r = lo[:, None] + (hi - lo)[:, None] * s[None, :]
    w = (hi - lo)[:, None] * drds[None, :]
    mu = np.sqrt(np.clip(1.0 - r * r, 0.0, None))
    intensity = 1.0 - u1 * (1.0 - mu) - u2 * (1.0 - mu) ** 2
    zz = za[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_arg = (r * r + zz * zz - p * p) / (2.0 * r * zz)
    cos_arg = np.where((r * zz) > 0, cos_arg, np.where(r < p - zz, -1.0, 1.0))
    angle = 2.0 * np.arccos(np.clip(cos_arg, -1.0, 1.0))
    blocked = np.sum(intensity * angle * r * w, axis=1)
    total = math.pi * (1.0 - u1 / 3.0 - u2 / 6.0)
    out[active] = blocked / total
    return out


def transit_model(
    t: np.ndarray | float,
    *,
    t0: float,
    period_d: float,
    rp_rs: float,
    a_rs: float,
    inc_deg: float,
    u1: float = 0.45,
    u2: float = 0.20,
) -> np.ndarray:
    """Relative flux of a star transited by a planet on a circular orbit.

    Parameters
    ----------
    t
        Times [day], in the same time scale as ``t0`` (BJD_TDB in the simulation).
    t0
        Mid-transit time [day].
    period_d
        Orbital period [day].
    rp_rs, a_rs
        Planet radius and orbital radius in stellar radii.
    inc_deg
        Inclination [deg] (90 = central transit).
    u1, u2
        Quadratic limb-darkening coefficients.

    Returns
    -------
    numpy.ndarray
        Flux relative to the unocculted star (1 out of transit).
    """
    t = np.atleast_1d(np.asarray(t, dtype=float))
    phase = 2.0 * math.pi * (t - t0) / period_d
    inc = math.radians(inc_deg)
    x = a_rs * np.sin(phase)
    y = a_rs * math.cos(inc) * np.cos(phase)
    z = np.hypot(x, y)
    z = np.where(np.cos(phase) > 0, z, np.inf)  # planet behind the star: no transit
    return 1.0 - _occulted_fraction(z, rp_rs, u1, u2)


def solve_transit(
    *, depth: float, duration_h: float, impact_parameter: float, period_d: float, u1: float, u2: float
) -> TransitGeometry:
    """Geometry giving a transit of the requested depth at mid-transit and total duration T14.

    The depth ``1 - F(t0)`` depends on Rp/Rs and the impact parameter only and is
    solved for Rp/Rs; a/Rs then follows from
    ``sin(pi T14 / P) = sqrt((1 + p)^2 - b^2) / sqrt(a^2 - b^2)``.
    """
    b = impact_parameter

    def excess(p: float) -> float:
        return float(_occulted_fraction(np.array([b]), p, u1, u2)[0]) - depth

    if excess(0.95) < 0:
        raise ValueError(f"depth {depth} cannot be reached with impact parameter {b}")
    p = brentq(excess, 1e-5, 0.95, xtol=1e-12)
    s = math.sin(math.pi * duration_h / 24.0 / period_d)
    a_rs = math.sqrt(((1.0 + p) ** 2 - b * b) / (s * s) + b * b)
    inc = math.degrees(math.acos(b / a_rs))
    return TransitGeometry(rp_rs=p, a_rs=a_rs, inc_deg=inc, period_d=period_d, u1=u1, u2=u2)


def variable_star(
    t: np.ndarray | float, *, amplitude: float, period_d: float, t_ref: float, phase_rad: float = 0.0
) -> np.ndarray:
    """Relative flux ``1 + amplitude * sin(2 pi (t - t_ref) / period_d + phase_rad)``; ``t`` in days."""
    t = np.atleast_1d(np.asarray(t, dtype=float))
    return 1.0 + amplitude * np.sin(2.0 * math.pi * (t - t_ref) / period_d + phase_rad)
