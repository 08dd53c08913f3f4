"""Transits: Box Least Squares search and a transit-model fit with honest uncertainties.

Fit model: ``F(t) = T(t; t_c, Rp/Rs, a/Rs, i, u1, u2) * B(t)`` with ``T`` the Mandel & Agol
quadratic limb-darkened transit (batman-package, circular orbit, known period) and ``B`` the
baseline: ``c0 + c1 (t - t_mid)`` (``detrend='linear'``), ``c0 + c1 (X - X_mid)``
(``'airmass'``, X the airmass) or ``c0`` (``'none'``). Times are BJD_TDB [day].

Priors: uniform ``Rp/Rs`` in (0, 0.5); ``a/Rs`` and ``i`` Gaussian when given (the
literature values), else uniform (``a/Rs`` in 1.5-100, impact parameter below 1 + Rp/Rs);
limb darkening either fixed (from the filter and star, passed by the caller) or fitted as
Kipping (2013) ``q1, q2`` uniform in (0, 1); ``t_c`` uniform within the prior window.

Uncertainties: the posterior is sampled with emcee (affine-invariant ensemble; medians and
16/84 percentiles) after the errors are scaled by ``sqrt(chi^2_nu)`` of the best fit when
that exceeds 1 (white-noise excess). ``method='laplace'`` instead uses the least-squares
covariance (Jacobian at the optimum, same error scaling), fast and calibrated for full
transits; the test suite checks the pulls of both on simulated nights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import least_squares

from darkroom.errors import BadInputError

__all__ = ["BLSResult", "TransitFit", "TransitFitConfig", "aavso_report", "bls_search", "fit_transit"]


class TransitFitConfig(BaseModel):
    """Settings of :func:`fit_transit`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["mcmc", "laplace"] = "mcmc"
    detrend: Literal["linear", "airmass", "none"] = "linear"
    fit_limb_darkening: bool = Field(False, description="fit q1, q2; else use the given u1, u2")
    n_walkers: int = Field(24, ge=8)
    n_steps: int = Field(1500, ge=100, description="emcee steps per walker (the first third is burn-in)")
    seed: int = 1
    scale_errors: bool = Field(True, description="scale errors by sqrt(chi2_nu) of the best fit if > 1")


@dataclass
class TransitFit:
    """Result of :func:`fit_transit` (times BJD_TDB [day])."""

    t_c: float
    t_c_err: float
    rp_rs: float
    rp_rs_err: float
    a_rs: float
    a_rs_err: float
    inc_deg: float
    inc_deg_err: float
    depth: float  #: (Rp/Rs)^2
    depth_err: float
    u1: float
    u2: float
    baseline: list[float]
    residual_rms: float  #: of (data / model - 1)
    chi2_nu: float  #: before error scaling
    error_scale: float
    n_points: int
    method: str
    t_ingress: float  #: first contact T1 [BJD_TDB]
    t_ingress_err: float
    t14_d: float
    model: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    samples: dict[str, np.ndarray] = field(repr=False, default_factory=dict)


def _t14(period: float, rp: float, a: float, inc_deg: float) -> float:
    b = a * math.cos(math.radians(inc_deg))
    arg = math.sqrt(max((1 + rp) ** 2 - b * b, 0.0)) / (a * math.sin(math.radians(inc_deg)))
    return period / math.pi * math.asin(min(arg, 1.0))


def fit_transit(
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    period_d: float,
    t_c_guess: float,
    t_c_window_d: float = 0.1,
    rp_rs_guess: float = 0.1,
    a_rs_prior: tuple[float, float] | None = None,
    inc_prior: tuple[float, float] | None = None,
    a_rs_guess: float = 10.0,
    inc_guess: float = 88.0,
    u: tuple[float, float] = (0.4, 0.25),
    airmass: np.ndarray | None = None,
    config: TransitFitConfig | None = None,
) -> TransitFit:
    """Fit one night's transit (module docstring).

    Parameters
    ----------
    t, flux, flux_err
        BJD_TDB [day], relative flux and its 1-sigma error.
    period_d
        Orbital period [day] (fixed).
    t_c_guess, t_c_window_d
        Predicted mid-transit [BJD_TDB] and the half-width of its uniform prior [day].
    a_rs_prior, inc_prior
        (mean, sigma) Gaussian priors on a/Rs and inclination [deg]; None: uniform.
    u
        Quadratic limb darkening (fixed unless ``config.fit_limb_darkening``).
    airmass
        Per-point airmass for ``detrend='airmass'``.
    """
    import batman

    config = config or TransitFitConfig()
    t = np.asarray(t, float)
    y = np.asarray(flux, float)
    e = np.asarray(flux_err, float)
    ok = np.isfinite(t) & np.isfinite(y) & np.isfinite(e) & (e > 0)
    if airmass is not None:
        airmass = np.asarray(airmass, float)
        ok &= np.isfinite(airmass)
    if ok.sum() < 10:
        raise BadInputError(f"{int(ok.sum())} usable points, fewer than 10 for a transit fit")
    t, y, e = t[ok], y[ok], e[ok]
    if config.detrend == "airmass":
        if airmass is None:
            raise BadInputError("detrend='airmass' needs the airmass of each point")
        xdet = airmass[ok] - np.median(airmass[ok])
    else:
        xdet = t - np.median(t)
    n_base = {"none": 1, "linear": 2, "airmass": 2}[config.detrend]
    params = batman.TransitParams()
    params.t0, params.per, params.rp, params.a, params.inc = (
        t_c_guess,
        period_d,
        rp_rs_guess,
        a_rs_guess,
        inc_guess,
    )
    params.ecc, params.w, params.limb_dark, params.u = 0.0, 90.0, "quadratic", list(u)
    tm = batman.TransitModel(params, t)
    fit_ld = config.fit_limb_darkening
    names = [
        "t_c",
        "rp_rs",
        "a_rs",
        "inc",
        *(["q1", "q2"] if fit_ld else []),
        *[f"c{k}" for k in range(n_base)],
    ]

    def unpack(p: np.ndarray) -> tuple[float, float, float, float, float, float, np.ndarray]:
        tc, rp, a, inc = p[:4]
        if fit_ld:
            q1, q2 = p[4], p[5]
            sq = math.sqrt(max(q1, 0.0))
            u1, u2 = 2 * sq * q2, sq * (1 - 2 * q2)
            base = p[6:]
        else:
            u1, u2 = u
            base = p[4:]
        return tc, rp, a, inc, u1, u2, base

    def model(p: np.ndarray) -> np.ndarray:
        tc, rp, a, inc, u1, u2, base = unpack(p)
        params.t0, params.rp, params.a, params.inc, params.u = tc, rp, a, inc, [u1, u2]
        b = base[0] + (base[1] * xdet if base.size > 1 else 0.0)
        return tm.light_curve(params) * b

    def in_bounds(p: np.ndarray) -> bool:
        tc, rp, a, inc = p[:4]
        if not (abs(tc - t_c_guess) < t_c_window_d and 0 < rp < 0.5 and 1.5 < a < 100 and 0 < inc <= 90):
            return False
        if a * math.cos(math.radians(inc)) > 1 + rp:
            return False
        return not (fit_ld and not (0 < p[4] < 1 and 0 < p[5] < 1))

    def prior_resid(p: np.ndarray) -> list[float]:
        r = []
        if a_rs_prior is not None:
            r.append((p[2] - a_rs_prior[0]) / a_rs_prior[1])
        if inc_prior is not None:
            r.append((p[3] - inc_prior[0]) / inc_prior[1])
        return r

    scale = [1.0]

    def resid(p: np.ndarray) -> np.ndarray:
        return np.concatenate([(y - model(p)) / (e * scale[0]), prior_resid(p)])

    a0 = a_rs_prior[0] if a_rs_prior else a_rs_guess
    i0 = inc_prior[0] if inc_prior else inc_guess
    p0 = [t_c_guess, rp_rs_guess, a0, min(i0, 89.9)]
    lo = [t_c_guess - t_c_window_d, 1e-3, 1.5, 60.0]
    hi = [t_c_guess + t_c_window_d, 0.5, 100.0, 90.0]
    if fit_ld:
        q1 = (u[0] + u[1]) ** 2
        p0 += [min(max(q1, 0.01), 0.99), min(max(u[0] / (2 * (u[0] + u[1])), 0.01), 0.99)]
        lo += [0.0, 0.0]
        hi += [1.0, 1.0]
    p0 += [float(np.median(y))] + [0.0] * (n_base - 1)
    lo += [-np.inf] * n_base
    hi += [np.inf] * n_base
    # a few starting mid-times over the window: partial transits have local optima
    best = None
    for dt in np.linspace(-0.6, 0.6, 5) * t_c_window_d:
        start = np.array(p0, float)
        start[0] = t_c_guess + dt
        sol = least_squares(resid, start, bounds=(lo, hi), x_scale="jac")
        if best is None or sol.cost < best.cost:
            best = sol
    assert best is not None
    pbest = best.x
    chi2 = float(np.sum(((y - model(pbest)) / e) ** 2))
    dof = max(t.size - len(names), 1)
    chi2_nu = chi2 / dof
    scale[0] = math.sqrt(chi2_nu) if config.scale_errors and chi2_nu > 1 else 1.0
    samples: dict[str, np.ndarray] = {}
    if config.method == "laplace":
        sol = least_squares(resid, pbest, bounds=(lo, hi), x_scale="jac")
        jac = sol.jac
        cov = np.linalg.pinv(jac.T @ jac)
        pbest = sol.x
        err = np.sqrt(np.clip(np.diag(cov), 0, None))
        center = pbest
        rng = np.random.default_rng(config.seed)
        draws = rng.multivariate_normal(center, cov, size=4000, check_valid="ignore")
    else:
        import emcee

        def log_prob(p: np.ndarray) -> float:
            if not in_bounds(p):
                return -np.inf
            r = resid(p)
            return -0.5 * float(r @ r)

        rng = np.random.default_rng(config.seed)
        ndim = len(names)
        width = np.array(
            [1e-3, 1e-3, 0.05, 0.05, *([0.01, 0.01] if fit_ld else []), 1e-4, *([1e-4] * (n_base - 1))]
        )
        start = pbest.copy()
        if not in_bounds(start):
            start[3] = min(start[3], 89.99)
        walkers = start + width * rng.standard_normal((config.n_walkers, ndim))
        for k in range(config.n_walkers):
            while not in_bounds(walkers[k]):
                walkers[k] = start + 0.1 * width * rng.standard_normal(ndim)
        sampler = emcee.EnsembleSampler(config.n_walkers, ndim, log_prob)
        sampler.random_state = np.random.RandomState(config.seed).get_state()
        sampler.run_mcmc(walkers, config.n_steps, progress=False)
        draws = sampler.get_chain(discard=config.n_steps // 3, flat=True)
        center = np.median(draws, axis=0)
        err = 0.5 * (np.percentile(draws, 84, axis=0) - np.percentile(draws, 16, axis=0))
    for k, nm in enumerate(names):
        samples[nm] = draws[:, k]
    # derived quantities from the draws
    t14 = np.array([_t14(period_d, d[1], d[2], d[3]) for d in draws[:: max(1, draws.shape[0] // 2000)]])
    t1 = draws[:: max(1, draws.shape[0] // 2000), 0] - t14 / 2
    depth_draws = draws[:, 1] ** 2
    pc = center if config.method == "mcmc" else pbest
    tc, rp, a, inc, u1, u2, base = unpack(pc)
    m = model(pc)
    return TransitFit(
        t_c=float(tc),
        t_c_err=float(err[0]),
        rp_rs=float(rp),
        rp_rs_err=float(err[1]),
        a_rs=float(a),
        a_rs_err=float(err[2]),
        inc_deg=float(inc),
        inc_deg_err=float(err[3]),
        depth=float(np.median(depth_draws)) if config.method == "mcmc" else float(rp * rp),
        depth_err=float(0.5 * (np.percentile(depth_draws, 84) - np.percentile(depth_draws, 16))),
        u1=float(u1),
        u2=float(u2),
        baseline=[float(v) for v in base],
        residual_rms=float(np.std(y / m - 1.0)),
        chi2_nu=chi2_nu,
        error_scale=scale[0],
        n_points=int(t.size),
        method=config.method,
        t_ingress=float(np.median(t1)),
        t_ingress_err=float(0.5 * (np.percentile(t1, 84) - np.percentile(t1, 16))),
        t14_d=float(np.median(t14)),
        model=m,
        samples=samples,
    )


def aavso_report(
    fit: TransitFit,
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    star: str,
    planet: str,
    filter_name: str,
    exposure_s: float,
    obscode: str = "",
    priors: dict[str, str] | None = None,
    detrend: np.ndarray | None = None,
) -> str:
    """The night in the AAVSO Exoplanet Database / Exoplanet Watch upload format.

    Header lines ``#KEY=value`` (TYPE, OBSCODE, SOFTWARE, DELIM, DATE_TYPE, OBSTYPE,
    STAR_NAME, EXOPLANET_NAME, BINNING, EXPOSURE_TIME, FILTER, DETREND_PARAMETERS,
    MEASUREMENT_TYPE, PRIORS, RESULTS, NOTES) then ``#DATE,DIFF,ERR,DETREND_1`` and one
    row per point (BJD_TDB, normalised differential flux, its error, the detrend value).
    """
    from darkroom.constants import __version__

    det = np.full(len(t), np.nan) if detrend is None else np.asarray(detrend, float)
    base = fit.baseline[0] if fit.baseline else 1.0
    prior_txt = ",".join(f"{k}={v}" for k, v in (priors or {}).items())
    lines = [
        "#TYPE=EXOPLANET",
        f"#OBSCODE={obscode}",
        f"#SOFTWARE=darkroom {__version__}",
        "#DELIM=,",
        "#DATE_TYPE=BJD_TDB",
        "#OBSTYPE=CCD",
        f"#STAR_NAME={star}",
        f"#EXOPLANET_NAME={planet}",
        "#BINNING=1x1",
        f"#EXPOSURE_TIME={exposure_s:g}",
        f"#FILTER={filter_name}",
        "#DETREND_PARAMETERS=" + ("AIRMASS" if detrend is not None else "LINEAR TIME"),
        "#MEASUREMENT_TYPE=Rnflux",
        f"#PRIORS={prior_txt}",
        (
            f"#RESULTS=Tc={fit.t_c:.6f} +/- {fit.t_c_err:.6f},Rp/R*={fit.rp_rs:.5f} +/- {fit.rp_rs_err:.5f},"
            f"a/R*={fit.a_rs:.3f} +/- {fit.a_rs_err:.3f},inc={fit.inc_deg:.3f} +/- {fit.inc_deg_err:.3f},"
            f"Am1={base:.6f}"
        ),
        f"#NOTES=fit {fit.method}; residual scatter {fit.residual_rms * 1e3:.2f} ppt; chi2_nu {fit.chi2_nu:.2f}",
        "#DATE,DIFF,ERR,DETREND_1",
    ]
    for ti, fi, ei, di in zip(t, flux, flux_err, det, strict=True):
        lines.append(f"{ti:.7f},{fi / base:.6f},{ei / base:.6f},{di:.5f}")
    return "\n".join(lines) + "\n"


@dataclass
class BLSResult:
    """Best box of a Box Least Squares search."""

    period_d: float
    t0: float
    duration_d: float
    depth: float
    depth_snr: float
    power: float


def bls_search(
    t: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    min_period_d: float = 0.5,
    max_period_d: float = 20.0,
    durations_d: tuple[float, ...] = (0.04, 0.06, 0.09, 0.13, 0.2),
) -> BLSResult:
    """Box Least Squares (astropy ``BoxLeastSquares``) over periods ``min..max`` [day]."""
    from astropy.timeseries import BoxLeastSquares

    t = np.asarray(t, float)
    ok = np.isfinite(t) & np.isfinite(flux) & np.isfinite(flux_err)
    if ok.sum() < 20:
        raise BadInputError(f"{int(ok.sum())} usable points, too few for BLS")
    bls = BoxLeastSquares(t[ok], np.asarray(flux, float)[ok], np.asarray(flux_err, float)[ok])
    baseline = float(np.ptp(t[ok]))
    max_p = min(max_period_d, baseline / 2)
    periods = np.exp(np.linspace(math.log(min_period_d), math.log(max_p), 5000))
    res = bls.power(periods, [d for d in durations_d if d < min_period_d], objective="snr")
    i = int(np.argmax(res.power))
    return BLSResult(
        period_d=float(res.period[i]),
        t0=float(res.transit_time[i]),
        duration_d=float(res.duration[i]),
        depth=float(res.depth[i]),
        depth_snr=float(res.depth_snr[i]),
        power=float(res.power[i]),
    )
