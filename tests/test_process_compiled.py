"""calibrate_frame's compiled kernels (calib._process_kernels: the full-frame pass of bias, dark,
VAR, flat and the MASK plane's NO_DATA / BAD / SAT bits; the weighted sums of the bad-pixel and
cosmic-ray fills) equal their numpy reference (``process.COMPILED = interp.COMPILED = False``)
byte for byte: SCI, MASK, VAR, the header and the history.

On the ARCSAT night (masters made from its raw calibration frames), the SAAO frame (overscan and
trim, no masters), a simulated night with its masters, and small synthetic frames for every
combination of masters, non-finite pixels, dead flat pixels, saturation and the numpy fallbacks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import darkroom.calib.interp as interp
import darkroom.calib.process as process
from darkroom.calib.badpix import BadPixelMask
from darkroom.calib.masters import MasterFrame
from darkroom.calib.process import CalibrationConfig, RequireConfig, calibrate_frame
from darkroom.instruments.metadata import FrameMetadata
from darkroom.sim import SimConfig

NO_CR = CalibrationConfig(do_cosmic_rays=False)
OPTIONAL = RequireConfig(bias=False, dark=False, flat=False)


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _calibrate_both(monkeypatch, raw, meta, *, expect_compiled=True, **kw):
    """``calibrate_frame`` with the numpy reference, then with the kernel (which must have run,
    or not, as ``expect_compiled`` says); both results."""
    calls = []
    compiled = process._remove_signature_compiled

    def spy(*args):
        calls.append(1)
        return compiled(*args)

    out = []
    for use in (False, True):
        with monkeypatch.context() as m:
            m.setattr(process, "COMPILED", use)
            m.setattr(interp, "COMPILED", use)
            m.setattr(process, "_remove_signature_compiled", spy)
            out.append(calibrate_frame(np.array(raw, copy=True), meta, **kw))
    assert len(calls) == (1 if expect_compiled else 0)
    return out


def _assert_same_frame(ref, new) -> None:
    assert _same(ref.sci, new.sci)
    assert _same(ref.mask, new.mask)
    assert _same(ref.var, new.var)
    assert ref.header.tostring() == new.header.tostring()
    assert ref.steps == new.steps
    assert (ref.n_bad_pixels, ref.n_saturated, ref.n_cosmic_pixels) == (
        new.n_bad_pixels,
        new.n_saturated,
        new.n_cosmic_pixels,
    )


# ------------------------------------------------------------------ real frames


@pytest.mark.parametrize("index,cosmic_rays", [(0, True), (41, False), (79, False)])
def test_arcsat_frames_calibrate_identically(arcsat_light, arcsat_masters, monkeypatch, index, cosmic_rays):
    raw, hdr, meta = arcsat_light(index)
    cfg = CalibrationConfig(do_cosmic_rays=cosmic_rays)
    ref, new = _calibrate_both(monkeypatch, raw, meta, header=hdr, config=cfg, **arcsat_masters)
    _assert_same_frame(ref, new)
    assert new.n_bad_pixels > 0


def test_saao_frame_calibrates_identically(saao_frame, monkeypatch):
    """Overscan subtraction and trim, no masters: the variance from the overscan-subtracted level."""
    raw, hdr, meta = saao_frame
    cfg = CalibrationConfig(require=OPTIONAL)
    ref, new = _calibrate_both(monkeypatch, raw, meta, header=hdr, config=cfg)
    _assert_same_frame(ref, new)


# ------------------------------------------------------------------ simulated night


@pytest.fixture(scope="module")
def sim_night(tmp_path_factory, simulate_calibration):
    cfg = SimConfig(shape=(256, 300), n_science=2, n_stars=150, seed=7, cosmic_ray_rate_cm2_s=5.0)
    _night, masters, lights = simulate_calibration(tmp_path_factory.mktemp("simnight"), cfg)
    return cfg, masters, lights


@pytest.mark.parametrize("cosmic_rays", [True, False])
def test_simulated_night_calibrates_identically(sim_night, monkeypatch, cosmic_rays):
    _cfg, masters, lights = sim_night
    for raw, hdr, meta in lights:
        config = CalibrationConfig(do_cosmic_rays=cosmic_rays)
        ref, new = _calibrate_both(monkeypatch, raw, meta, header=hdr, config=config, **masters)
        _assert_same_frame(ref, new)
        assert new.n_bad_pixels > 0


# ------------------------------------------------------------------ synthetic frames


def _synthetic(seed: int = 0, shape=(40, 52)):
    rng = np.random.default_rng(seed)
    raw = (1000.0 + 300.0 + 20.0 * rng.standard_normal(shape)).astype(np.float32)
    raw[3, 4] = 70000.0  # saturated
    raw[5, 6] = 2.0  # below the bias: the Poisson term clipped at 0
    raw[7, 8] = np.nan  # NO_DATA
    raw[9, 10] = np.inf

    def master(kind, level, noise, **kw):
        data = (level + noise * rng.standard_normal(shape)).astype(np.float32)
        var = np.full(shape, noise**2, dtype=np.float32)
        return MasterFrame(
            kind=kind,
            data=data,
            variance=var,
            n_inputs=5,
            rejected_fraction=0.0,
            mean=level,
            noise=noise,
            **kw,
        )

    bias = master("bias", 1000.0, 3.0, read_noise_adu=5.0)
    dark = master("dark", 10.0, 1.0, exptime_s=120.0)
    flat = master("flat", 1.0, 0.01)
    flat.data[11, 12] = 0.0  # no response: BAD
    flat.data[13, 14] = np.nan
    flat.data[7, 8] = 0.01  # under a NO_DATA pixel: NO_DATA only
    reasons = np.zeros(shape, dtype=np.uint8)
    reasons[15, :] = 1
    reasons[9, 10] = 2
    bpm = BadPixelMask(reasons=reasons, name="bpm.fits")
    meta = FrameMetadata(
        profile="test",
        frame_type="light",
        exptime_s=60.0,
        naxis1=shape[1],
        naxis2=shape[0],
        gain_e_per_adu=1.7,
        read_noise_e=8.0,
        saturation_adu=65535.0,
    )
    return raw, meta, {"bias": bias, "dark": dark, "flat": flat, "bad_pixels": bpm}


@pytest.mark.parametrize(
    "use",
    [
        ("bias", "dark", "flat", "bad_pixels"),
        ("bias", "dark", "flat"),
        ("bias", "flat", "bad_pixels"),
        ("dark", "flat", "bad_pixels"),
        ("bias", "dark"),
        ("bias",),
        ("dark",),
        ("flat",),
        ("bad_pixels",),
        (),
    ],
)
@pytest.mark.parametrize("dark_exptime", [120.0, 60.0])  # scaled by 0.5, and not scaled
def test_synthetic_frames_calibrate_identically(monkeypatch, use, dark_exptime):
    raw, meta, masters = _synthetic(1)
    masters["dark"] = dataclasses.replace(masters["dark"], exptime_s=dark_exptime)
    kw = {k: v for k, v in masters.items() if k in use}
    cfg = CalibrationConfig(require=OPTIONAL, do_cosmic_rays=False)
    ref, new = _calibrate_both(monkeypatch, raw, meta, config=cfg, **kw)
    _assert_same_frame(ref, new)
    assert np.isnan(new.sci[7, 8]) and np.isnan(new.var[9, 10])


def test_dark_with_the_bias_calibrates_identically(monkeypatch):
    raw, meta, masters = _synthetic(2)
    dark = dataclasses.replace(masters["dark"], includes_bias=True, exptime_s=60.0)
    cfg = CalibrationConfig(require=OPTIONAL, do_cosmic_rays=False)
    ref, new = _calibrate_both(monkeypatch, raw, meta, config=cfg, dark=dark, flat=masters["flat"])
    _assert_same_frame(ref, new)


def test_float64_master_takes_the_numpy_way(monkeypatch):
    raw, meta, masters = _synthetic(3)
    bias64 = dataclasses.replace(masters["bias"], data=masters["bias"].data.astype(np.float64))
    cfg = CalibrationConfig(require=OPTIONAL, do_cosmic_rays=False)
    ref, new = _calibrate_both(monkeypatch, raw, meta, config=cfg, expect_compiled=False, bias=bias64)
    _assert_same_frame(ref, new)


@pytest.mark.parametrize("use", [(), ("flat", "bad_pixels"), ("dark",)])
def test_empirical_sky_model_calibrates_identically(monkeypatch, use):
    """No gain, no read noise, no zero level: VAR from the sky noise above the sky level (with a
    dark that holds the bias, from the dark's way instead)."""
    raw, meta, masters = _synthetic(4)
    masters["dark"] = dataclasses.replace(masters["dark"], includes_bias=True, exptime_s=60.0)
    bare = meta.model_copy(update={"gain_e_per_adu": None, "read_noise_e": None})
    cfg = CalibrationConfig(require=OPTIONAL, do_cosmic_rays=False)
    kw = {k: v for k, v in masters.items() if k in use}
    ref, new = _calibrate_both(monkeypatch, raw, bare, config=cfg, **kw)
    _assert_same_frame(ref, new)
    assert new.noise_model.startswith("noise estimated")


def test_fill_sums_equal_the_numpy_ones():
    """The kernel's weighted sums of float32 images against the gathered numpy sums, with
    signed zeros, NaN and inf among the unusable neighbours and pixels at the border."""
    rng = np.random.default_rng(6)
    img = rng.normal(0.0, 1e3, (30, 40)).astype(np.float32)
    img[rng.random(img.shape) < 0.05] = -0.0
    img[2, 3], img[4, 5], img[0, 0] = np.nan, np.inf, -np.inf
    masked = rng.random(img.shape) < 0.3
    masked[2, 3] = masked[4, 5] = masked[0, 0] = True
    targets = np.flatnonzero(masked)
    for r in (1, 2, 4):
        flat, use, weight = interp._usable_weights(masked, targets, r, 40, 30)
        ref = interp._weighted_sums([img.ravel().take(flat)], use, weight)[0]
        (new,) = interp._image_sums([img], flat, use, weight)
        assert _same(ref, new)


def test_load_compiled_kernels_runs():
    process.load_compiled_kernels()
