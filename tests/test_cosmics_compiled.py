"""The compiled kernels of the sparse L.A.Cosmic engine (calib._cosmics_kernels, numba) equal
its numpy reference (``_SparseLACosmic(..., compiled=False)``) bit for bit.

On real frames (the ARCSAT night, the SAAO and GMOS frames) and simulated ones (a simulated
night with many cosmic rays, the hostile 12-bit preset, darkroom.calib.synthetic frames):
the calibrated SCI / MASK / VAR of both paths, the engine's images, its statistics ``s``,
``sp``, the noise and ``f`` at every candidate and at pixels near the border, the candidates,
the cleaning means, the zones, and the final cosmic-ray mask and cleaned image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

import darkroom.calib.cosmics as cosmics
import darkroom.calib.process as process
from darkroom.calib.cosmics import CosmicRayConfig, _SparseLACosmic, detect_cosmic_rays
from darkroom.calib.process import CalibrationConfig, RequireConfig, calibrate_frame
from darkroom.calib.synthetic import synthetic_sky_frame
from darkroom.instruments.metadata import FrameMetadata
from darkroom.sim import SimConfig, build_scene, hostile_small_telescope, render_frame


def _same(a, b) -> bool:
    """Equal bit for bit (dtype, shape and bytes)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _calibrate_both(monkeypatch, raw, meta, **kw):
    """``calibrate_frame`` with the numpy reference, then with the kernels; the inputs of each
    cosmic-ray detection of the compiled run are recorded."""
    seen = []

    def spy(data, **args):
        seen.append((np.array(data, copy=True), args))
        return detect_cosmic_rays(data, **args)

    out = []
    for compiled in (False, True):
        monkeypatch.setattr(cosmics, "COMPILED", compiled)
        with monkeypatch.context() as m:
            if compiled:
                m.setattr(process, "detect_cosmic_rays", spy)
            out.append(calibrate_frame(raw, meta, **kw))
    return out[0], out[1], seen


def _assert_same_frame(ref, new) -> None:
    assert _same(ref.sci, new.sci)
    assert _same(ref.mask, new.mask)
    assert _same(ref.var, new.var)
    assert ref.n_cosmic_pixels == new.n_cosmic_pixels
    assert ref.steps == new.steps


def _engines(data, args):
    """The numpy and the compiled engine for ``detect_cosmic_rays(data, **args)``'s inputs."""
    gain = args["gain_e_per_adu"]
    sat = args.get("saturation_adu")
    satlevel = np.inf if sat is None else float(sat) * gain
    cfg = args.get("config") or CosmicRayConfig()
    made = []
    for compiled in (False, True):
        made.append(
            _SparseLACosmic(
                np.asarray(data),
                gain,
                args["read_noise_e"],
                args.get("sky"),
                args.get("variance"),
                args.get("bad_mask"),
                satlevel,
                cfg,
                compiled=compiled,
            )
        )
    return made


def _assert_same_engine(data, args, rng) -> int:
    """Every compiled step against its numpy method on the same state; returns the number of
    cosmic-ray pixels found."""
    ref, new = _engines(data, args)
    assert ref._k is None and new._k is not None
    for name in ("clean_in", "var_in", "bkg_in", "mask"):
        a, b = getattr(ref, name), getattr(new, name)
        assert (a is None and b is None) or _same(a, b), name
    ny, nx = ref.ny, ref.nx
    cand = ref._candidates_full()
    assert _same(cand, new._candidates_full())
    assert _same(ref._vmin, new._vmin)
    assert ref.bkg_in is None or _same(ref._bkgmin, new._bkgmin)
    # the statistics at the candidates, random pixels and the pixels 3 to 5 from each border
    jj, ii = np.mgrid[3 : ny - 3, 3 : nx - 3]
    near = (np.minimum(jj - 3, ny - 4 - jj) < 3) | (np.minimum(ii - 3, nx - 4 - ii) < 3)
    inner = (jj * nx + ii).ravel()
    pixels = np.unique(
        np.concatenate([cand, rng.choice(inner, min(3000, inner.size), replace=False), inner[near.ravel()]])
    )
    assert _same(ref._exact_s(pixels), new._exact_s(pixels))
    sp_ref, noise_ref = ref._exact_sp(pixels)
    sp_new, noise_new = new._exact_sp(pixels)
    assert _same(sp_ref, sp_new) and _same(noise_ref, noise_new)
    assert _same(ref._exact_f(pixels, noise_ref), new._exact_f(pixels, noise_new))
    # the zone test: every pixel of a band, with the floor lowered as after a cleaning
    changed = np.sort(rng.choice(inner, 50, replace=False))
    assert _same(ref._zone(changed), new._zone(changed))
    zone = ref._zone(changed)
    floor_ref = ref._block_noise_floor_update(changed)
    floor_new = new._block_noise_floor_update(changed)
    assert _same(floor_ref, floor_new)
    assert _same(ref._candidates_zone(zone, floor_ref), new._candidates_zone(zone, floor_new))
    # the cleaning of a mask of scattered flags and of the candidates (images written alike)
    crmask = np.zeros((ny, nx), dtype=bool)
    flags = np.unique(np.concatenate([cand, rng.choice(ny * nx, 200, replace=False)]))
    crmask.ravel()[flags] = True
    crmask[ny // 2 - 3 : ny // 2 + 4, nx // 2 - 3 : nx // 2 + 4] = True  # a core with no usable pixel
    flags = np.flatnonzero(crmask)
    assert _same(ref._clean(flags, crmask), new._clean(flags, crmask))
    assert _same(ref.clean_in, new.clean_in) and _same(ref.var_in, new.var_in)
    # whole runs from fresh engines
    ref, new = _engines(data, args)
    a, b = ref.run(return_cleaned=True), new.run(return_cleaned=True)
    assert _same(a.mask, b.mask) and _same(a.cleaned, b.cleaned)
    assert (a.n_pixels, a.n_iterations, a.n_candidates) == (b.n_pixels, b.n_iterations, b.n_candidates)
    return a.n_pixels


# ------------------------------------------------------------------ real frames


@pytest.mark.parametrize("index", [0, 27, 53, 79])
def test_arcsat_frames_calibrate_identically(arcsat_light, arcsat_masters, monkeypatch, index):
    raw, hdr, meta = arcsat_light(index)
    ref, new, seen = _calibrate_both(monkeypatch, raw, meta, header=hdr, **arcsat_masters)
    _assert_same_frame(ref, new)
    assert new.n_cosmic_pixels > 0
    ((data, args),) = seen
    assert _assert_same_engine(data, args, np.random.default_rng(index)) > 0


def test_saao_frame_calibrates_identically(saao_frame, monkeypatch):
    raw, hdr, meta = saao_frame
    cfg = CalibrationConfig(require=RequireConfig(bias=False, dark=False, flat=False))
    ref, new, seen = _calibrate_both(monkeypatch, raw, meta, header=hdr, config=cfg)
    _assert_same_frame(ref, new)
    ((data, args),) = seen
    _assert_same_engine(data, args, np.random.default_rng(5))


@pytest.mark.parametrize("kw", [{}, {"sky": True}, {"sky": True, "variance": True}])
def test_gmos_frame_detects_identically(data_dir: Path, kw):
    with fits.open(data_dir / "astroscrappy-gmos-cr" / "gmos.fits") as hdul:
        data = hdul["SCI"].data.astype(np.float32)
        var = hdul["VAR"].data.astype(np.float32)
        sky = hdul["SKYFIT"].data.astype(np.float32)
    args = {
        "gain_e_per_adu": 1.933,
        "read_noise_e": 4.24,
        "sky": sky if kw.get("sky") else None,
        "variance": var if kw.get("variance") else None,
    }
    assert _assert_same_engine(data, args, np.random.default_rng(1)) > 0


# ------------------------------------------------------------------ simulated frames


@pytest.mark.parametrize(
    "config",
    [
        # test_calib_sim's night: a cosmic-ray rate 100x the default
        SimConfig(shape=(512, 600), n_science=2, n_stars=400, seed=3, cosmic_ray_rate_cm2_s=5.0),
        # the hostile preset: 12-bit camera (cosmic rays and star cores saturate), undersampled
        hostile_small_telescope(n_science=2, cosmic_ray_rate_cm2_s=5.0),
    ],
    ids=["sim-night", "hostile"],
)
def test_simulated_frames_calibrate_identically(config, monkeypatch):
    scene = build_scene(config)
    for index in range(config.n_science):
        raw, truth = render_frame(scene, kind="light", index=index)
        meta = FrameMetadata(
            profile="sim",
            frame_type="light",
            exptime_s=config.exptime_s,
            naxis1=config.nx,
            naxis2=config.ny,
            gain_e_per_adu=config.gain_e_per_adu,
            read_noise_e=config.read_noise_e,
            saturation_adu=config.saturation_adu,
        )
        cfg = CalibrationConfig(require=RequireConfig(bias=False, dark=False, flat=False))
        ref, new, seen = _calibrate_both(monkeypatch, raw, meta, header=truth.header, config=cfg)
        _assert_same_frame(ref, new)
        assert new.n_cosmic_pixels > 0
        ((data, args),) = seen
        _assert_same_engine(data, args, np.random.default_rng(index))


@pytest.mark.parametrize(
    "kw",
    [
        {},  # no sky, no variance model: the numpy set-up, then the kernels
        {"sky": True},
        {"sky": True, "variance": True},
        {"sky": True, "variance": True, "saturation_adu": 2000.0},  # saturated stars masked
        {"sky": True, "variance": True, "bad": True},
    ],
)
def test_synthetic_frames_detect_identically(kw):
    frame = synthetic_sky_frame(
        (300, 340),
        seed=4,
        n_stars=150,
        n_cosmic_rays=120,
        sky_adu=300.0,
        gain_e_per_adu=1.5,
        read_noise_e=8.0,
        fwhm_pix=2.0,
    )
    rng = np.random.default_rng(0)
    bad = np.zeros(frame.data.shape, dtype=bool)
    bad.ravel()[rng.choice(bad.size, 100, replace=False)] = True
    bad[:, 77] = True
    args = {
        "gain_e_per_adu": 1.5,
        "read_noise_e": 8.0,
        "sky": np.full(frame.data.shape, frame.sky_adu, dtype=np.float32) if kw.get("sky") else None,
        "variance": frame.variance.astype(np.float32) if kw.get("variance") else None,
        "bad_mask": bad if kw.get("bad") else None,
        "saturation_adu": kw.get("saturation_adu"),
    }
    assert _assert_same_engine(frame.data.astype(np.float32), args, rng) > 0


def test_non_finite_images_fall_back_to_numpy():
    """An infinite or NaN value (the kernels' medians assume none): the numpy steps run."""
    frame = synthetic_sky_frame((120, 130), seed=1, n_stars=20, n_cosmic_rays=30, sky_adu=200.0)
    data = frame.data.astype(np.float32)
    var = frame.variance.astype(np.float32)
    sky = np.full(data.shape, frame.sky_adu, dtype=np.float32)
    for bad_value in (np.inf, np.nan):
        v = var.copy()
        v[60, 60] = bad_value
        args = {"gain_e_per_adu": 1.5, "read_noise_e": 8.0, "sky": sky, "variance": v}
        ref, new = _engines(data, args)
        assert new._k is None
        a, b = ref.run(return_cleaned=True), new.run(return_cleaned=True)
        assert _same(a.mask, b.mask) and _same(a.cleaned, b.cleaned)
