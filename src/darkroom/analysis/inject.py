"""Injection-recovery: events injected into real light curves, matching, efficiency, searched-epoch histograms.

Injected kinds (flux added to the light curve's own baseline, in every band alike):

* ``flare``: a Bazin profile with rise/decline 0.05 (fast rise, exponential decay);
* ``sn``: a Bazin profile with rise/decline 0.2 (supernova-like rise and fall);
* ``microlensing``: a Paczynski (1986) magnification ``A(u) = (u^2 + 2) / (u sqrt(u^2 + 4))``,
  ``u^2 = u0^2 + ((t - t0) / tE)^2`` with ``u0 = 0.3``, diluted by a blend fraction so that the
  requested S/N is met (``duration`` is ``tE``);
* ``transit``: a box dip of the given duration repeating with a period (for BLS).

The *expected S/N* of an injection is the S/N the transient finder would report for the
injected flux on this light curve without its noise
(:meth:`darkroom.analysis.transient.NoiseModel.finder_snr`: its scaled errors, one amplitude
per band, a baseline per band and season, its template bank and the noise factor its
correlated-noise normalisation measures per template): the statistic the finder thresholds
on, so the efficiency curve crosses 50 % near the threshold unless something loses events.
``params["snr_optimal"]`` keeps the S/N of a template of exactly the injected shape (what
the bank's coarseness costs is their ratio). The amplitude is chosen to give an S/N drawn
log-uniformly from ``snr_range``, so efficiency vs S/N is sampled evenly across the
threshold. (Transits, which the transient finder does not search, get the white-noise S/N.)

A detection matches an injection if it is new (not an event of the light curve without the
injection: duration within a factor 3 and peak closer than 1 d or than the longer duration)
and peaks within the tolerance of the injected peak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from darkroom.analysis.transient import (
    Event,
    NoiseModel,
    Shape,
    TransientConfig,
    bank_shape,
    relative_flux,
    template,
)

__all__ = [
    "EFFICIENCY_EDGES_REL",
    "InjectionConfig",
    "InjectionPlan",
    "efficiency_table",
    "event_shape",
    "fit_efficiency",
    "inject",
    "match_events",
    "plan_injection",
    "searched_histograms",
    "write_netcdf_atomic",
]

_KINDS = ("flare", "sn", "microlensing", "transit")
_TRIES = 20  #: peak times drawn for an event before the light curve counts as unsearchable
_MIN_UNIT_SNR = 0.01  #: S/N of an event as bright as the baseline below which it is unsearchable


class InjectionConfig(BaseModel):
    """Distributions the injected events are drawn from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kinds: tuple[str, ...] = Field(("flare", "sn", "microlensing"), description=f"any of {_KINDS}")
    snr_range: tuple[float, float] = Field((1.5, 15.0), description="expected S/N, log-uniform")
    duration_range_d: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "flare": (0.05, 2.0),
            "sn": (5.0, 40.0),
            "microlensing": (2.0, 40.0),
            "transit": (0.05, 0.2),
        },
        description="per kind, log-uniform duration (decline time, tE or box length) [day]",
    )
    transit_period_range_d: tuple[float, float] = (1.0, 10.0)
    seed: int = 0
    match_tolerance: float = Field(
        1.0, gt=0, description="a detection matches if |dt| < tolerance x (injected duration + 1 d)"
    )


@dataclass
class InjectionPlan:
    """One injected event."""

    kind: str
    mjd_peak: float
    duration_d: float
    snr: float  #: expected S/N (module docstring)
    amplitude: float  #: peak flux over the baseline's (depth for transits)
    peak_mag: float  #: magnitude at peak in the brightest band
    base_mag: float = math.nan  #: the baseline: median magnitude of the light curve it was planned on
    params: dict[str, float] = field(default_factory=dict)


_RISE = {"flare": 0.05, "sn": 0.2}  #: rise/decline of the Bazin profiles


def _paczynski(dt: np.ndarray, te: float, u0: float) -> np.ndarray:
    """Microlensing magnification minus 1, relative to its peak value (1 at ``dt = 0``)."""
    u = np.sqrt(u0 * u0 + (np.asarray(dt, float) / te) ** 2)
    a = (u * u + 2.0) / (u * np.sqrt(u * u + 4.0))
    a0 = (u0 * u0 + 2.0) / (u0 * math.sqrt(u0 * u0 + 4.0))
    return (a - 1.0) / (a0 - 1.0)


def event_shape(kind: str, duration_d: float, params: dict[str, float] | None = None) -> Shape:
    """The injected shape of a flare, supernova or microlensing event as a transient-finder
    :class:`~darkroom.analysis.transient.Shape` (its noise factor comes from it)."""
    params = params or {}
    if kind in _RISE:
        return bank_shape(duration_d, _RISE[kind])
    if kind == "microlensing":
        te, u0 = duration_d, params.get("u0", 0.3)
        # A - 1 ~ 2 / u^4 far from the peak: below 1e-6 of the peak beyond u = 40
        return Shape(
            fn=lambda dt: _paczynski(dt, te, u0),
            before=40.0 * te,
            after=40.0 * te,
            extent=(3.0 * te, 3.0 * te),
            step=max(u0 * te / 2.0, 0.01),
            lead=2.0 * te,
            near=(0.0, -te, 0.5 * te),
        )
    raise ValueError(f"no transient-finder shape for injection kind {kind!r}")


def _shape(kind: str, t: np.ndarray, t0: float, d: float, params: dict[str, float]) -> np.ndarray:
    if kind in _RISE:
        return template(t, t0, d, _RISE[kind])
    if kind == "microlensing":
        return _paczynski(np.asarray(t, float) - t0, d, params.get("u0", 0.3))
    if kind == "transit":
        period = params["period_d"]
        phase = ((t - t0 + 0.5 * period) % period) - 0.5 * period
        return -(np.abs(phase) < d / 2).astype(float)
    raise ValueError(f"unknown injection kind {kind!r}; use one of {_KINDS}")


def plan_injection(
    t: np.ndarray,
    mag: np.ndarray,
    magerr: np.ndarray,
    bands: np.ndarray,
    rng: np.random.Generator,
    config: InjectionConfig,
    *,
    kind: str | None = None,
    transient: TransientConfig | None = None,
    difference: bool = False,
    noise: NoiseModel | None = None,
) -> InjectionPlan | None:
    """Draw one event for this light curve (its good epochs; None if too few or unsearchable).

    ``transient``: the finder's settings, whose view of the light curve defines the expected
    S/N (module docstring); ``noise``: that view, made once per light curve, else made here.
    """
    if t.size < 5:
        return None
    t = np.asarray(t, float)
    mag = np.asarray(mag, float)
    kind = kind or str(rng.choice(config.kinds))
    lo, hi = config.duration_range_d[kind]
    d = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    snr = float(math.exp(rng.uniform(*np.log(config.snr_range))))
    params: dict[str, float] = {}
    if kind == "transit":
        params["period_d"] = float(rng.uniform(*config.transit_period_range_d))
    base_mag = float(-2.5 * np.log10(np.median(10 ** (-0.4 * mag))))
    if kind != "transit":
        noise = noise or NoiseModel(t, mag, magerr, bands, difference=difference, config=transient)
    for _ in range(_TRIES):
        # the peak falls on the sampled span: up to half a decline time (at most 0.5 d) before an
        # epoch, so that epoch sees at least 60 % of the peak even of the fastest flare
        t0 = float(rng.choice(t) - rng.uniform(0.0, 0.5) * min(d, 1.0))
        optimal = math.nan
        if kind == "transit" or noise is None:
            unit = _white_snr(t, mag, magerr, bands, _shape(kind, t, t0, d, params))
        else:

            def signal(tt: np.ndarray, t0: float = t0) -> np.ndarray:
                return _shape(kind, tt, t0, d, params)

            unit = noise.finder_snr(signal, t0, base_mag=base_mag)
            optimal = noise.optimal_snr(signal, event_shape(kind, d, params), t0, base_mag=base_mag)
        # an event the search cannot see at any sane brightness (e.g. alone in its season, whose
        # own baseline absorbs it) is drawn again elsewhere
        if unit >= _MIN_UNIT_SNR:
            break
    else:
        return None
    amp = snr / unit
    if kind == "transit":
        amp = min(amp, 0.9)
    else:
        params["snr_optimal"] = amp * optimal
    _x, _sig, m0 = relative_flux(mag, magerr, bands, difference=False)
    brightest = min(m0.values())
    peak_mag = brightest - 2.5 * math.log10(1.0 + amp) if kind != "transit" else brightest
    return InjectionPlan(
        kind=kind,
        mjd_peak=t0,
        duration_d=d,
        snr=snr,
        amplitude=amp,
        peak_mag=peak_mag,
        base_mag=base_mag,
        params=params,
    )


def _white_snr(t: np.ndarray, mag: np.ndarray, magerr: np.ndarray, bands: np.ndarray, s: np.ndarray) -> float:
    """White-noise S/N of a unit-amplitude signal ``s`` with each band's mean fitted."""
    _x, sig, _m0 = relative_flux(mag, magerr, bands, difference=False)
    w = 1.0 / sig**2
    norm2 = 0.0
    for b in np.unique(bands):
        sel = bands == b
        sc = s[sel] - np.sum(w[sel] * s[sel]) / np.sum(w[sel])
        norm2 += float(np.sum(w[sel] * sc * sc))
    return math.sqrt(norm2)


def inject(
    t: np.ndarray, mag: np.ndarray, magerr: np.ndarray, plan: InjectionPlan
) -> tuple[np.ndarray, np.ndarray]:
    """(mag, magerr) with the planned event added: flux ``amplitude * shape`` times the baseline's.

    The baseline is ``plan.base_mag`` (else the median flux of these epochs). The flux error
    is kept (background-limited photometry), so the magnitude error shrinks as the source
    brightens: ``magerr' = magerr * f / f'``.
    """
    s = _shape(plan.kind, np.asarray(t, float), plan.mjd_peak, plan.duration_d, plan.params)
    flux = 10 ** (-0.4 * np.asarray(mag, float))
    # the event adds flux relative to the quiescent level
    base = 10 ** (-0.4 * plan.base_mag) if math.isfinite(plan.base_mag) else np.median(flux)
    new = flux + plan.amplitude * s * base
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(new > 0, -2.5 * np.log10(new), np.nan)
        e = np.asarray(magerr, float) * flux / new
    return m, e


def _same_event(a: Event, b: Event) -> bool:
    """The same event found twice: durations within a factor 3, peaks closer than 1 d or
    than the longer duration (a broad event's peak moves with a little added flux)."""
    ratio = a.duration_d / b.duration_d
    return abs(a.mjd_peak - b.mjd_peak) < max(1.0, a.duration_d, b.duration_d) and 1 / 3 <= ratio <= 3


def match_events(
    plan: InjectionPlan, events: Sequence[Event], config: InjectionConfig, known: Sequence[Event] = ()
) -> int | None:
    """Index of the event matching the injection (closest in time within the tolerance), or None.

    ``known``: the events of the light curve without the injection; finding one of them
    again is no recovery.
    """
    tol = config.match_tolerance * (plan.duration_d + 1.0)
    best, best_dt = None, math.inf
    for k, ev in enumerate(events):
        if any(_same_event(ev, kn) for kn in known):
            continue
        dt = abs(ev.mjd_peak - plan.mjd_peak)
        if dt < tol and dt < best_dt:
            best, best_dt = k, dt
    return best


def efficiency_table(
    snr: np.ndarray, recovered: np.ndarray, edges: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_injected, n_recovered, efficiency) per bin of expected S/N (``edges``)."""
    snr = np.asarray(snr, float)
    rec = np.asarray(recovered, bool)
    n, _ = np.histogram(snr, edges)
    k, _ = np.histogram(snr[rec], edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return n, k, eff


#: efficiency bins of the expected S/N, in units of the finder's threshold
EFFICIENCY_EDGES_REL = (
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.1,
    1.2,
    1.35,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
)


def fit_efficiency(snr: Sequence[float], n: Sequence[int], k: Sequence[int]) -> tuple[float, float]:
    """(S/N at 50 % efficiency, width in ln S/N) of a logistic ``1 / (1 + exp(-(ln snr - ln s50) / w))``
    fitted by maximum likelihood to ``k`` recovered of ``n`` injected at (bin) S/N ``snr``.

    Per injection, pass ``n = 1`` and ``k = 0 or 1``. NaN when nothing or everything was recovered.
    """
    from scipy.optimize import minimize

    x = np.log(np.asarray(snr, float))
    n = np.asarray(n, float)
    k = np.asarray(k, float)
    use = n > 0
    x, n, k = x[use], n[use], k[use]
    if k.sum() == 0 or k.sum() == n.sum():
        return math.nan, math.nan

    def nll(p: np.ndarray) -> float:
        z = (x - p[0]) / math.exp(p[1])
        # log(sigmoid(z)) and log(1 - sigmoid(z)), stably
        return float(np.sum(k * np.logaddexp(0.0, -z) + (n - k) * np.logaddexp(0.0, z)))

    start = np.array([float(np.average(x, weights=n)), math.log(0.2)])
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-5, "fatol": 1e-8})
    return float(math.exp(res.x[0])), float(math.exp(res.x[1]))


def searched_histograms(
    summaries: Sequence[dict[str, object]],
    *,
    mag_edges: Sequence[float] = tuple(np.arange(10.0, 24.01, 0.5)),
    cadence_edges_d: Sequence[float] = (0.0, 0.05, 0.5, 2.0, 5.0, 20.0, 1e9),
    snr_edges: Sequence[float] = (0.0, 3.0, 5.0, 10.0, 30.0, 100.0, 1e9),
    injections: Sequence[dict[str, object]] = (),
    inj_snr_edges: Sequence[float] = tuple(np.round(np.geomspace(1.0, 20.0, 14), 3)),
):
    """Searched epochs and time as an xarray Dataset.

    ``summaries``: one dict per searched light curve with ``band``, ``epochs_mag`` (array of
    magnitudes of the good epochs), ``epochs_snr`` (their single-epoch S/N), ``mjd`` (their
    times). Variables: ``n_epochs(band, mag, snr)``, ``n_epochs_cadence(band, cadence)``
    (by the interval to the previous epoch), ``time_searched_d(band, mag)`` (sum of intervals
    shorter than 20 d, attributed to the light curve's median magnitude) and
    ``n_lightcurves(band)``. With ``injections`` (dicts with ``kind``, ``snr``, ``recovered``),
    also ``n_injected(kind, inj_snr)``, ``n_recovered`` and ``efficiency``.
    """
    import xarray as xr

    bands = sorted({str(s["band"]) for s in summaries}) or ["none"]
    mag_edges = np.asarray(mag_edges, float)
    cad_edges = np.asarray(cadence_edges_d, float)
    snr_e = np.asarray(snr_edges, float)
    n_ep = np.zeros((len(bands), mag_edges.size - 1, snr_e.size - 1), np.int64)
    n_cad = np.zeros((len(bands), cad_edges.size - 1), np.int64)
    t_srch = np.zeros((len(bands), mag_edges.size - 1))
    n_lc = np.zeros(len(bands), np.int64)
    for s in summaries:
        b = bands.index(str(s["band"]))
        m = np.asarray(s["epochs_mag"], float)
        sn = np.asarray(s["epochs_snr"], float)
        tt = np.sort(np.asarray(s["mjd"], float))
        h, _, _ = np.histogram2d(m, sn, [mag_edges, snr_e])
        n_ep[b] += h.astype(np.int64)
        if tt.size > 1:
            gaps = np.diff(tt)
            n_cad[b] += np.histogram(gaps, cad_edges)[0]
            k = np.searchsorted(mag_edges, np.median(m)) - 1
            if 0 <= k < mag_edges.size - 1:
                t_srch[b, k] += float(gaps[gaps < 20.0].sum())
        n_lc[b] += 1
    centres = 0.5 * (mag_edges[1:] + mag_edges[:-1])
    ds = xr.Dataset(
        {
            "n_epochs": (("band", "mag", "snr"), n_ep),
            "n_epochs_cadence": (("band", "cadence"), n_cad),
            "time_searched_d": (("band", "mag"), t_srch),
            "n_lightcurves": (("band",), n_lc),
        },
        coords={
            "band": bands,
            "mag": centres,
            "mag_edges": ("mag_edge", mag_edges),
            "snr": np.arange(snr_e.size - 1),
            "snr_edges": ("snr_edge", snr_e),
            "cadence": np.arange(cad_edges.size - 1),
            "cadence_edges_d": ("cadence_edge", cad_edges),
        },
        attrs={"description": "epochs and time searched by the darkroom transient finder"},
    )
    if injections:
        kinds = sorted({str(i["kind"]) for i in injections})
        ie = np.asarray(inj_snr_edges, float)
        ni = np.zeros((len(kinds), ie.size - 1), np.int64)
        nr = np.zeros_like(ni)
        for k, kind in enumerate(kinds):
            sel = [i for i in injections if i["kind"] == kind]
            n, r, _ = efficiency_table([i["snr"] for i in sel], [bool(i["recovered"]) for i in sel], ie)
            ni[k], nr[k] = n, r
        with np.errstate(invalid="ignore", divide="ignore"):
            eff = np.where(ni > 0, nr / np.maximum(ni, 1), np.nan)
        ds["n_injected"] = (("kind", "inj_snr"), ni)
        ds["n_recovered"] = (("kind", "inj_snr"), nr)
        ds["efficiency"] = (("kind", "inj_snr"), eff)
        ds = ds.assign_coords(
            kind=kinds, inj_snr=0.5 * (ie[1:] + ie[:-1]), inj_snr_edges=("inj_snr_edge", ie)
        )
    return ds


def write_netcdf_atomic(ds, path: str | Path) -> Path:
    """Write an xarray Dataset as netCDF4 (h5netcdf engine) atomically (temp file + rename)."""
    from darkroom.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return path
