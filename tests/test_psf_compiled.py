"""The compiled Moffat PSF fit (darkroom.detect._psf_kernels) against the numpy reference.

The reference is the batched numpy fit the kernels replaced (:func:`_reference_fit`: its
model and Jacobian, run by :func:`darkroom.detect.psf._levenberg_marquardt`, the same
driver as the Gaussian fit). Both fit the stamps of real frames (the ARCSAT night
calibrated by the pipeline, SDSS frames) and of simulated ones (darkroom.sim's default
night and its hostile preset), as detection hands them over: the same parameters, chi^2
and convergence to rounding (1e-8 relative), the same number of steps per star, the same
public results of fit_moffat_stamps and measure_psf. Not timed.
"""

from __future__ import annotations

import bz2
import math

import numpy as np
import pytest
from astropy.io import fits

import darkroom.detect.psf as psf
from darkroom.detect import detect_sources, estimate_background, extract_frame
from darkroom.detect.background import pixel_masks

RTOL = 1e-8

_MIN_GAMMA, _MAX_GAMMA = 1e-3, 1.0 / 1.3


def _reference_fit(params, data, weight, gx, gy, sub, max_iter):
    """The numpy Moffat fit as it was before the kernels (model, Jacobian, bounds verbatim).

    Returns the parameters, chi^2, convergence flags and steps per star.
    """
    n = len(params)
    os_ = len(sub)
    size = gx.shape[1]
    sx = gx[:, :, None] + sub[None, None, :]
    sy = gy[:, :, None] + sub[None, None, :]
    n_side = size * os_
    buf_u = np.empty((n, n_side, n_side))
    buf_log = np.empty((n, n_side, n_side))
    buf_m = np.empty((n, n_side, n_side))
    buf_left = np.empty((n, n_side, 3))
    buf_left[:, :, 2] = 1.0
    buf_right = np.empty((n, 3, n_side))
    buf_right[:, 0] = 1.0
    buf_xw = np.empty((n, size, 3, os_))  # dx^a of the x samples, per x pixel
    buf_xw[:, :, 0] = 1.0
    buf_yw = np.empty((n, size, os_, 3))  # dy^b / os^2 of the y samples, per y pixel
    buf_yw[..., 0] = 1.0 / (os_ * os_)
    x_mean = np.full((1, os_), 1.0 / (os_ * os_))
    y_sum = np.ones(os_)
    buf_coef = np.zeros((n, 9, 9))
    model_rows, model_cols = np.array([0, 2, 4, 6])[:, None], np.array([0, 3, 4, 5, 6, 8])[None, :]
    own_rows, own_cols = np.array([3, 1, 3, 1]), np.array([1, 1, 2, 2])
    added_rows, added_cols = np.array([6, 4, 2, 6, 4, 2]), np.array([3, 4, 5, 6, 6, 6])
    buf_added = np.empty((n, 6))
    buf_added[:, :3] = [-1.0, -2.0, -1.0]

    def func(p, idx):
        k = len(p)
        flux, x0, y0, qxx, qxy, qyy, gamma, const = p.T
        dx = sx[idx] - x0[:, None, None]
        dy = sy[idx] - y0[:, None, None]
        g = gamma[:, None]
        left, right = buf_left[:k], buf_right[:k]
        left[:, :, 1] = (2.0 * g * qxy[:, None]) * dx.reshape(k, -1)
        left[:, :, 0] = (g * qxx[:, None]) * dx.reshape(k, -1) ** 2 + 1.0
        right[:, 1] = dy.reshape(k, -1)
        right[:, 2] = (g * qyy[:, None]) * dy.reshape(k, -1) ** 2
        u = np.matmul(left, right, out=buf_u[:k])
        log_u = np.log(u, out=buf_log[:k])
        ms = buf_m[:k]
        for i, power in enumerate(-1.0 / gamma):
            np.multiply(log_u[i], power, out=ms[i])
        np.exp(ms, out=ms)
        over_x = np.matmul(x_mean, np.multiply(ms, log_u, out=log_u).reshape(k, size, os_, n_side))
        s_mlog = (over_x.reshape(-1, os_) @ y_sum).reshape(k, size, size).transpose(0, 2, 1).reshape(k, -1)
        mu = np.divide(ms, u, out=u)
        x_weights, y_weights = buf_xw[:k], buf_yw[:k]
        x_weights[:, :, 1] = dx
        np.multiply(dx, dx, out=x_weights[:, :, 2])
        np.multiply(dy, 1.0 / (os_ * os_), out=y_weights[..., 1])
        np.multiply(y_weights[..., 1], dy, out=y_weights[..., 2])
        over_x = np.matmul(x_weights, mu.reshape(k, size, os_, n_side))
        by_y = over_x.reshape(k, 3 * size, size, os_).transpose(0, 2, 1, 3)
        sums = np.matmul(by_y, y_weights).reshape(k, size * size, 9)
        q = p[:, 3:6]
        expand = np.empty((k, 4))
        expand[:, 0] = 1.0
        np.multiply(g, q[:, ::-1] * [1.0, 2.0, 1.0], out=expand[:, 1:])
        det = qxx * qyy - qxy**2
        c = (1.0 - gamma) * np.sqrt(np.maximum(det, 1e-30)) / math.pi
        cf = c * flux
        scale = np.empty((k, 6))
        scale[:, 0] = c
        np.multiply((cf / (2.0 * det))[:, None], q[:, ::-1] * [1.0, -2.0, 1.0], out=scale[:, 1:4])
        scale[:, 4] = -cf / (1.0 - gamma)
        scale[:, 5] = cf
        coef = buf_coef[:k]
        coef[:, model_rows, model_cols] = expand[:, :, None] * scale[:, None, :]
        coef[:, own_rows, own_cols] = (2.0 * cf)[:, None] * q[:, [0, 1, 1, 2]]
        added = buf_added[:k]
        np.divide(q * [-1.0, -2.0, -1.0], g, out=added[:, 3:])
        coef[:, added_rows, added_cols] += cf[:, None] * added
        out = sums @ coef
        jac = out[:, :, :8]
        jac[:, :, 6] += (cf / gamma**2)[:, None] * s_mlog
        jac[:, :, 7] = 1.0
        return out[:, :, 8] + const[:, None], jac

    def valid(p):
        return (
            (p[:, [0, 3, 5]] > 0.0).all(axis=1)
            & (p[:, 3] * p[:, 5] - p[:, 4] ** 2 > 0)
            & (p[:, 6] >= _MIN_GAMMA)
            & (p[:, 6] <= _MAX_GAMMA)
        )

    return psf._levenberg_marquardt(func, params, data, weight, valid, max_iter=max_iter)


class _Recorder:
    """fit_moffat_stamps' calls made by the detection (its arguments), to be replayed."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.original = psf.fit_moffat_stamps

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.original(*args, **kwargs)


def _replay(calls, monkeypatch) -> dict[str, float]:
    """Each call through the kernels and through the reference: equal to rounding.

    Returns the largest relative difference per output (public fields and parameters).
    """
    from darkroom.detect import _psf_kernels

    assert calls, "no PSF fit on these frames"
    worst: dict[str, float] = {}

    def note(name: str, a: np.ndarray, b: np.ndarray, scale: np.ndarray | None = None) -> None:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        assert np.array_equal(np.isfinite(a), np.isfinite(b)), name
        fin = np.isfinite(a)
        ref = np.abs(a[fin]) if scale is None else np.asarray(scale, dtype=float)[fin]
        rel = np.abs(a[fin] - b[fin]) / np.maximum(ref, 1e-300)
        worst[name] = max(worst.get(name, 0.0), float(rel.max(initial=0.0)))

    for args, kwargs in calls:
        runs = {}
        for label, fit in (("compiled", _psf_kernels.fit_moffat), ("reference", _reference_fit)):
            seen = []

            def through(params, data, weight, gx, gy, sub, *, max_iter, fit=fit, seen=seen):
                out = fit(params, data, weight, gx, gy, sub, max_iter)
                seen.append(out)
                return out[:3]

            with monkeypatch.context() as m:
                m.setattr(psf, "_fit_moffat", through)
                fits_ = psf.fit_moffat_stamps(*args, **kwargs)
            (internal,) = seen
            runs[label] = (fits_, internal)
        (fc, (pc, chi_c, conv_c, it_c)), (fr, (pr, chi_r, conv_r, it_r)) = runs["compiled"], runs["reference"]
        assert np.array_equal(conv_c, conv_r)
        assert np.array_equal(it_c, it_r), (it_c, it_r)
        assert np.array_equal(fc.ok, fr.ok)
        for i, name in enumerate(("flux", "x0", "y0", "qxx", "qxy", "qyy", "gamma", "const")):
            if name == "qxy":  # near zero for round stars: relative to the other terms of Q
                note("p." + name, pr[:, i], pc[:, i], np.sqrt(pr[:, 3] * pr[:, 5]))
            elif name == "const":  # near zero: relative to the residuals' norm sqrt(chi^2)
                note("p." + name, pr[:, i], pc[:, i], np.sqrt(chi_r))
            else:
                note("p." + name, pr[:, i], pc[:, i])
        note("chi2", chi_r, chi_c)
        for name in ("x", "y", "fwhm_pix", "fwhm_major_pix", "fwhm_minor_pix", "beta", "flux_adu", "rms_adu"):
            note(name, getattr(fr, name), getattr(fc, name))
        note("theta_rad", fr.theta_rad, fc.theta_rad, np.full(len(fr.ok), math.pi))  # an angle: of pi
    bad = {k: v for k, v in worst.items() if not v <= RTOL}
    assert not bad, bad
    return worst


def _detect_recorded(monkeypatch, frames) -> _Recorder:
    """Run ``frames()`` (which detects sources) with fit_moffat_stamps' calls recorded."""
    recorder = _Recorder()
    with monkeypatch.context() as m:
        m.setattr(psf, "fit_moffat_stamps", recorder)
        frames()
    return recorder


@pytest.mark.slow
def test_compiled_fit_matches_the_reference_on_arcsat_frames(arcsat_images, monkeypatch):
    """Every 8th calibrated frame of the night, detected as the extract stage does."""
    from darkroom.io.calibrated import read_calibrated

    repo, stage, paths = arcsat_images
    paths = paths[::8]
    assert len(paths) >= 8
    cfg = stage.config

    def frames() -> None:
        for path in paths:
            image = read_calibrated(repo.root / path, planes=("SCI", "MASK"))
            masks = pixel_masks(image.sci, image.mask, cfg.background.mask_bits, cfg.detect.mask_bits)
            bkg = estimate_background(image.sci, config=cfg.background, masks=masks)
            cat = detect_sources(image.sci, background=bkg, config=cfg.detect, masks=masks)
            assert cat.meta["n_psf_stars"] >= 5

    recorder = _detect_recorded(monkeypatch, frames)
    assert len(recorder.calls) == len(paths)
    _replay(recorder.calls, monkeypatch)
    # and measure_psf's frame figures, through both
    args, kwargs = recorder.calls[0]
    compiled = psf.measure_psf(
        args[0], args[1], args[2], fwhm_pix=kwargs["fwhm_pix"], candidates=np.ones(len(args[1]), bool),
        brightness=np.arange(len(args[1]))[::-1],
    )  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr(psf, "_fit_moffat", lambda *a, max_iter: _reference_fit(*a, max_iter)[:3])
        reference = psf.measure_psf(
            args[0], args[1], args[2], fwhm_pix=kwargs["fwhm_pix"], candidates=np.ones(len(args[1]), bool),
            brightness=np.arange(len(args[1]))[::-1],
        )  # fmt: skip
    assert np.array_equal(compiled.index, reference.index)
    for name in ("fwhm_pix", "beta", "ellipticity"):
        assert getattr(compiled, name) == pytest.approx(getattr(reference, name), rel=RTOL)


def test_compiled_fit_matches_the_reference_on_sdss_frames(data_dir, monkeypatch):
    """SDSS frames (calibrated, sky-subtracted nanomaggies) of M2 in r and i."""
    paths = [data_dir / "sdss-frames-m2" / f"frame-{band}-002583-2-0136.fits.bz2" for band in "ri"]

    def frames() -> None:
        for path in paths:
            with bz2.open(path) as f, fits.open(f) as hdul:
                image = hdul[0].data.astype(np.float32)
            assert extract_frame(image).catalog.meta["n_psf_stars"] >= 5

    recorder = _detect_recorded(monkeypatch, frames)
    assert len(recorder.calls) == len(paths)
    _replay(recorder.calls, monkeypatch)


@pytest.mark.parametrize("preset", ["default", "hostile"])
def test_compiled_fit_matches_the_reference_on_simulated_frames(preset, monkeypatch):
    """darkroom.sim's default night and its hostile small-telescope preset, two frames each."""
    from darkroom.sim import SimConfig, build_scene, hostile_small_telescope, truth_image

    if preset == "default":
        config = SimConfig(n_science=2, n_bias=0, n_dark=0, n_flat=0, seed=3)
    else:
        config = hostile_small_telescope(n_science=2, seed=3)
    scene = build_scene(config)

    def frames() -> None:
        for i in range(2):
            image = truth_image(scene, i)
            noise = np.sqrt(
                np.maximum(image, 0) / config.gain_e_per_adu
                + (config.read_noise_e / config.gain_e_per_adu) ** 2
            )
            image = (image + np.random.default_rng(i).normal(0.0, 1.0, image.shape) * noise).astype(
                np.float32
            )
            extract_frame(image, pixel_scale_arcsec=config.pixel_scale_arcsec)

    recorder = _detect_recorded(monkeypatch, frames)
    assert len(recorder.calls) == 2
    _replay(recorder.calls, monkeypatch)


def test_compiled_fit_of_awkward_stamps(monkeypatch):
    """Stamps off the image edge, with masked pixels, an empty one and a NaN start: as the reference."""
    rng = np.random.default_rng(7)
    image = rng.normal(0.0, 3.0, (80, 90)).astype(np.float32)
    yy, xx = np.mgrid[:80, :90]
    stars = [(2.2, 40.3, 5e3), (45.6, 1.1, 8e3), (60.2, 50.7, 2e4), (30.4, 30.6, 1e4)]
    for x0, y0, f in stars:
        image += (f * 0.5 / math.pi / 4.0 * (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / 4.0) ** -2.5).astype(
            np.float32
        )
    bad = np.zeros(image.shape, bool)
    bad[28:33, 25:29] = True
    x = np.array([s[0] for s in stars] + [70.0, 85.0])
    y = np.array([s[1] for s in stars] + [70.0, 75.0])
    image[68:73, 68:73] = np.nan  # an empty stamp centre
    fwhm = np.array([3.0, 3.0, 3.0, np.nan, 3.0, 3.0])
    _replay([((image, x, y), {"fwhm_pix": fwhm, "bad": bad})], monkeypatch)
    _replay(
        [((image, x, y), {"fwhm_pix": 2.0, "half_size_pix": 4, "oversample": 5, "max_iter": 3})], monkeypatch
    )
