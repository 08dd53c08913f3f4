"""Predicted transit times from a published linear ephemeris.

A planet's ephemeris (mid-transit epoch ``T0`` in BJD_TDB, period ``P`` in days, total
duration ``T14`` in hours, as the NASA Exoplanet Archive gives ``pl_tranmid``,
``pl_orbper`` and ``pl_trandur``) predicts the transit nearest a given time: mid-transit
``Tc = T0 + n P`` with ``n`` the nearest whole number of orbits, first contact (ingress
start) ``Tc - T14/2`` and last contact (egress end) ``Tc + T14/2``. All times BJD_TDB
[days].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Ephemeris", "TransitContacts", "predict_transit"]


@dataclass(frozen=True)
class Ephemeris:
    """A linear transit ephemeris: ``t0_bjd_tdb`` [d], ``period_d`` [d], ``duration_h`` [h] (T14)."""

    planet: str
    t0_bjd_tdb: float
    period_d: float
    duration_h: float | None
    reference: str = "NASA Exoplanet Archive"


@dataclass(frozen=True)
class TransitContacts:
    """Predicted times [BJD_TDB, d] of one transit; ingress/egress are None without a duration."""

    epoch: int
    ingress: float | None
    mid: float
    egress: float | None

    def as_dict(self) -> dict[str, float]:
        out = {"mid": self.mid}
        if self.ingress is not None and self.egress is not None:
            out.update(ingress=self.ingress, egress=self.egress)
        return out


def predict_transit(ephemeris: Ephemeris, near_bjd_tdb: float) -> TransitContacts:
    """The transit of ``ephemeris`` nearest ``near_bjd_tdb`` (e.g. the middle of a night)."""
    if not (ephemeris.period_d > 0 and math.isfinite(ephemeris.t0_bjd_tdb)):
        raise ValueError(f"{ephemeris.planet}: the ephemeris needs a positive period and a finite T0")
    epoch = round((near_bjd_tdb - ephemeris.t0_bjd_tdb) / ephemeris.period_d)
    mid = ephemeris.t0_bjd_tdb + epoch * ephemeris.period_d
    if ephemeris.duration_h is None or not math.isfinite(ephemeris.duration_h) or ephemeris.duration_h <= 0:
        return TransitContacts(epoch, None, mid, None)
    half = ephemeris.duration_h / 48.0
    return TransitContacts(epoch, mid - half, mid, mid + half)
