"""The master stages' faster statistics (issue 15) give the masters of the code they replaced,
byte for byte: the SCI/VAR (and MEASURED/MEASVAR) planes and the header of every master, the
bad-pixel mask and every figure recorded with them.

The replaced code is kept here as the reference: bottleneck's median over the stack (the
combine's clipping centre, now a comparator network), ``np.median`` / ``bn.nanmedian`` over every
value (now :func:`darkroom.robust.median`'s two-pivot selection), the noise model's pass per
level bin (now one stable sort), ``np.nonzero``'s index pair of the clipped pixels, and the
clipped mean's separate ``robust_std`` and last recomputed pass. Whole masters are compared with
the references patched back in, on the ARCSAT night's raw calibration frames and on simulated
nights (also with few frames, an even count, NaN pixels, and without darks or flats).
"""

from __future__ import annotations

import glob
import hashlib
import io
import math

import bottleneck as bn
import numpy as np
import pytest
from astropy.io import fits

import darkroom.calib._stats as calib_stats
import darkroom.calib.badpix as badpix
import darkroom.calib.combine as combine
import darkroom.calib.masters as masters
import darkroom.robust as robust
from darkroom.calib._stats import subsample_rows
from darkroom.calib.badpix import build_bad_pixel_mask
from darkroom.calib.combine import CombineConfig, NoiseModel, combine_frames
from darkroom.calib.masters import make_master_bias, make_master_dark, make_master_flat, master_to_hdus
from darkroom.errors import CalibrationError
from darkroom.sim import SimConfig, simulate_night

# ---------------------------------------------------------------- the replaced code (references)


def _ref_stack_median(st):
    return bn.median(st, axis=0)


def _ref_frame_median(data, *, max_pixels: int = 1_000_000) -> float:
    a = np.asarray(data)
    step = max(1, int(np.ceil(np.sqrt(a.size / max_pixels))))
    sub = a[::step, ::step] if a.ndim == 2 else a.ravel()[:: step * step]
    return float(bn.nanmedian(sub))


def _ref_whole_median(values, *, middle=np.median):
    """What the selection replaced: the median function over every value."""
    return middle(np.asarray(values).ravel())


def _ref_clipped_mean_std(values, *, n_sigma: float = 4.0, n_iter: int = 5):
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    center = float(robust.median(v))
    dev = np.subtract(v, center)
    np.abs(dev, out=dev)
    scale = robust.MAD_TO_SIGMA * float(robust.median(dev))
    if scale == 0:
        scale = float(np.std(v))
    truncation = robust._truncation_factor(n_sigma)
    keep = np.ones(v.size, dtype=bool)
    work = np.empty_like(v)
    kept = v
    for _ in range(n_iter):
        np.subtract(v, center, out=dev)
        np.abs(dev, out=dev)
        new_keep = dev <= n_sigma * scale
        if int(np.count_nonzero(new_keep)) < 2:
            break
        kept = v[new_keep]
        center, std = robust._mean_std(kept, work)
        scale = std / truncation
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if kept.size != int(np.count_nonzero(keep)):
        kept = v[keep]
    mean, std = robust._mean_std(kept, work)
    return mean, std / truncation, int(kept.size)


def _ref_summary(data):
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        raise CalibrationError("master has no finite pixel")
    step = max(1, finite.size // 2_000_000)
    sample = finite[::step]
    mean, _, _ = _ref_clipped_mean_std(sample, n_sigma=4.0)
    return mean, robust.robust_std(sample)


def _ref_clipped_mean_fast(st, med, lo, hi):
    n = st.shape[0]
    dirty = st.max(axis=0) > hi
    dirty |= st.min(axis=0) < lo
    res = st.sum(axis=0, dtype=np.float32)
    res *= np.float32(1.0 / n)
    jj, ii = np.nonzero(dirty)
    if jj.size == 0:
        return res, jj, ii, np.zeros(0, dtype=np.uint16)
    sub = st[:, jj, ii]
    keep = (sub >= lo[jj, ii]) & (sub <= hi[jj, ii])
    c = keep.sum(axis=0).astype(np.uint16)
    s = np.where(keep, sub, np.float32(0.0)).sum(axis=0, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        res[jj, ii] = np.where(c > 0, s / c, med[jj, ii])
    return res, jj, ii, np.maximum(c, 1).astype(np.uint16)


def _ref_load_rows(dst, frame, r0, r1, sub, scale) -> None:
    dst[...] = np.asarray(frame[r0:r1], dtype=np.float32)
    if sub is not None:
        dst -= sub[r0:r1] if isinstance(sub, np.ndarray) else np.float32(sub)
    if scale != 1.0:
        dst *= np.float32(1.0 / scale)


def _ref_read_noise_from_pairs(frames):
    if len(frames) < 2:
        return None
    region = masters._central(tuple(frames[0].shape))
    vals = []
    for i in range(min(4, len(frames) - 1)):
        a = np.asarray(frames[i][region], dtype=np.float64)
        b = np.asarray(frames[i + 1][region], dtype=np.float64)
        _, s, _ = _ref_clipped_mean_std(a - b, n_sigma=5.0)
        vals.append(s / np.sqrt(2))
    return float(np.median(vals))


def _ref_noise_model(frames, subs, sc, cfg: CombineConfig) -> NoiseModel:
    n = len(frames)
    ny, nx = frames[0].shape
    rows = subsample_rows((ny, nx), cfg.n_noise_rows)
    sample = np.empty((n, rows.size, nx), dtype=np.float32)
    for k, r in enumerate(rows):
        for i, f in enumerate(frames):
            _ref_load_rows(sample[i, k : k + 1], f, int(r), int(r) + 1, subs[i], sc[i])
    med = bn.nanmedian(sample, axis=0)
    dev = np.abs(sample - med)
    good = np.isfinite(med) & np.all(np.isfinite(sample), axis=0)
    med = med[good]
    dev = dev[:, good]
    if med.size == 0:
        raise CalibrationError("no finite pixels in the sampled rows of the stack")
    factor = combine._mad_factor(n)
    n_bins = int(min(cfg.n_noise_bins, max(1, med.size // 200)))
    edges = np.quantile(med, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, med, side="right") - 1, 0, n_bins - 1)
    levels, sigmas = [], []
    for b in range(n_bins):
        sel = which == b
        if sel.sum() < 20:
            continue
        d = dev[:, sel]
        s_b = float(np.median(d)) / factor
        if s_b == 0:
            s_b = float(np.sqrt(np.mean(d.astype(np.float64) ** 2) * n / max(n - 1, 1)))
        levels.append(float(np.median(med[sel])))
        sigmas.append(s_b)
    if not levels:
        levels, sigmas = [float(np.median(med))], [float(np.median(dev)) / factor]
    lv = np.asarray(levels)
    sg = np.asarray(sigmas)
    order = np.argsort(lv)
    lv, sg = lv[order], sg[order]
    var_b = sg**2
    slope = 0.0
    if lv.size >= 3 and lv[-1] - lv[0] > 0:
        slope = float(np.polyfit(lv - lv[0], var_b, 1)[0])
    if slope > 0:
        read_var = float(np.polyfit(lv - lv[0], var_b, 1)[1])
        if read_var <= 0:
            read_var = float(var_b[0])
    else:
        slope, read_var = 0.0, float(np.median(var_b))
    read_var = max(read_var, float(np.finfo(np.float32).tiny))
    return NoiseModel(read_var=read_var, slope=slope, level_min=float(lv[0]), level_bins=lv, sigma_bins=sg)


def _use_references(m: pytest.MonkeyPatch) -> None:
    """Patch the replaced code back in (the modules look these names up when called)."""
    m.setattr(combine, "_stack_median", _ref_stack_median)
    m.setattr(combine, "_clipped_mean_fast", _ref_clipped_mean_fast)
    m.setattr(combine, "_noise_model", _ref_noise_model)
    m.setattr(combine, "_load_rows", _ref_load_rows)
    m.setattr(masters, "_read_noise_from_pairs", _ref_read_noise_from_pairs)
    m.setattr(masters, "_summary", _ref_summary)
    m.setattr(masters, "clipped_mean_std", _ref_clipped_mean_std)
    m.setattr(masters, "frame_median", _ref_frame_median)
    m.setattr(masters, "median", _ref_whole_median)
    m.setattr(badpix, "median", _ref_whole_median)


# ---------------------------------------------------------------- comparisons


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return bool(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())


def _fits_digest(master) -> str:
    """sha256 of the master's FITS file (a digest: pytest would diff two files' bytes at length)."""
    buf = io.BytesIO()
    master_to_hdus(master).writeto(buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


_FIGURES = (
    "n_inputs",
    "rejected_fraction",
    "mean",
    "noise",
    "exptime_s",
    "read_noise_adu",
    "gain_e_per_adu",
    "level_adu",
    "includes_bias",
    "dark_model",
    "modelled_fraction",
)


def _make_all(bias_frames, dark_frames, flat_frames, dark_t, flat_t, config=None):
    """Master bias, dark (when there are darks), flat (when there are flats) and the bad-pixel
    mask, as the stages make them."""
    out = {"bias": make_master_bias(bias_frames, config=config)}
    if dark_frames:
        out["dark"] = make_master_dark(dark_frames, exptime_s=dark_t, bias=out["bias"], config=config)
    if flat_frames:
        out["flat"] = make_master_flat(
            flat_frames, bias=out["bias"], dark=out.get("dark"), exptime_s=flat_t, filter="z", config=config
        )
    dark, flat = out.get("dark"), out.get("flat")
    out["bpm"] = build_bad_pixel_mask(
        out["bias"].shape,
        dark=None if dark is None else dark.measured_data,
        dark_exptime_s=None if dark is None else dark.exptime_s,
        flat=None if flat is None else flat.data,
    )
    return out


def _assert_masters_identical(monkeypatch, *args, **kw) -> None:
    new = _make_all(*args, **kw)
    with monkeypatch.context() as m:
        _use_references(m)
        ref = _make_all(*args, **kw)
    assert new.keys() == ref.keys()
    for kind in new:
        if kind == "bpm":
            assert _same(new[kind].reasons, ref[kind].reasons)
            assert new[kind].bad_columns == ref[kind].bad_columns
            assert new[kind].bad_rows == ref[kind].bad_rows
            assert new[kind].counts == ref[kind].counts
            continue
        assert _fits_digest(new[kind]) == _fits_digest(ref[kind]), kind
        for name in _FIGURES:
            a, b = getattr(new[kind], name), getattr(ref[kind], name)
            assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), (kind, name, a, b)


@pytest.fixture(scope="module")
def arcsat_raw(arcsat_dir):
    """The ARCSAT night's bias, dark and flat frames (float32, as read) and exposure times."""

    def read(pattern):
        paths = sorted(glob.glob(str(arcsat_dir / pattern)))
        frames = [fits.getdata(p).astype(np.float32) for p in paths]
        times = [float(fits.getheader(p).get("EXPTIME", 0.0)) for p in paths]
        return frames, times

    return read("Bias_BIN1_*.fits.gz"), read("Dark_BIN1_*.fits.gz"), read("domeflat_z_*.fits.gz")


def test_arcsat_masters_identical(monkeypatch, arcsat_raw):
    (b, _), (d, dt), (f, ft) = arcsat_raw
    _assert_masters_identical(monkeypatch, b, d, f, dt, ft)
    # an even number of frames (the network's mean of two middle values), and a NaN column
    nan_col = [x.copy() for x in b[:4]]
    for x in nan_col:
        x[:, 7] = np.nan
    _assert_masters_identical(monkeypatch, nan_col, d[:4], f[:4], dt[:4], ft[:4])
    # no darks; no flats
    _assert_masters_identical(monkeypatch, b, [], f, None, ft)
    _assert_masters_identical(monkeypatch, b, d, [], dt, None)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_bias": 3, "n_dark": 4, "n_flat": 7},
        {"n_dark": 0},
        {"n_flat": 0},
        {"n_dark": 0, "n_flat": 0},
    ],
)
def test_simulated_masters_identical(monkeypatch, tmp_path, overrides):
    cfg = SimConfig(shape=(256, 320), n_science=1, **overrides)
    night = simulate_night(tmp_path, config=cfg)

    def read(kind):
        return [fits.getdata(p).astype(np.float32) for p in night.raw_paths[kind]]

    _assert_masters_identical(
        monkeypatch, read("bias"), read("dark"), read("flat"), cfg.dark_exptime_s, cfg.flat_exptime_s
    )


# ---------------------------------------------------------------- the pieces, bit for bit


@pytest.mark.parametrize("n", [*range(1, 20), 31, 32, 33, 64, 65])
def test_stack_median_is_bottleneck(n):
    rng = np.random.default_rng(n)
    st = rng.normal(0, 1, (n, 37, 450)).astype(np.float32)
    st[:, :5] = np.round(st[:, :5])  # ties
    st[:, 5, :40] = 0.0
    st[rng.integers(0, n, 30), rng.integers(0, 37, 30), rng.integers(0, 450, 30)] = np.nan
    st[rng.integers(0, n, 10), rng.integers(0, 37, 10), rng.integers(0, 450, 10)] = np.inf
    st[rng.integers(0, n, 10), rng.integers(0, 37, 10), rng.integers(0, 450, 10)] = -np.inf
    ref = bn.median(st, axis=0)
    assert np.array_equal(combine._stack_median(st), ref, equal_nan=True)
    assert combine._stack_median(st).dtype == ref.dtype


def test_stack_median_on_the_arcsat_frames(arcsat_raw):
    (b, _), (d, _), (f, _) = arcsat_raw
    for frames in (b, d, f, b[:4]):
        st = np.stack([x[:300] for x in frames])
        assert _same(combine._stack_median(st), bn.median(st, axis=0))


def test_column_medians_of_a_contiguous_copy(arcsat_raw):
    """model_dark's column medians, taken on a transposed contiguous copy, are bottleneck's along
    axis 0: on the ARCSAT dark's residuals from its smooth level, and with NaN and ties."""
    from darkroom.calib.badpix import smooth_level

    (b, _), (d, _), _ = arcsat_raw
    x = np.mean(d, axis=0, dtype=np.float32) - np.mean(b, axis=0, dtype=np.float32)
    rng = np.random.default_rng(2)
    tied = np.round(rng.normal(0, 2, (300, 257))).astype(np.float32)
    tied[rng.integers(0, 300, 400), rng.integers(0, 257, 400)] = np.nan
    tied[:, 3] = np.nan
    for y in (x - smooth_level(x), x, tied):
        assert _same(bn.nanmedian(np.ascontiguousarray(y.T), axis=1), bn.nanmedian(y, axis=0))


def test_frame_median_is_bn_nanmedian(arcsat_raw):
    (b, _), (_, _), (f, _) = arcsat_raw
    rng = np.random.default_rng(3)
    cases = [b[0], f[1], f[1][::3], rng.normal(0, 1, 4001).astype(np.float32), np.arange(10.0)]
    with_nan = f[2].copy()
    with_nan[rng.integers(0, 1024, 500), rng.integers(0, 1024, 500)] = np.nan
    cases += [with_nan, np.full((40, 40), np.nan, dtype=np.float32)]
    for a in cases:
        new, ref = calib_stats.frame_median(a), _ref_frame_median(a)
        assert new == ref or (math.isnan(new) and math.isnan(ref))


def test_clipped_mean_std_mad_is_both_statistics(arcsat_raw):
    (b, _), _, (f, _) = arcsat_raw
    rng = np.random.default_rng(5)
    cases = [b[0], b[0][256:768, 256:768].astype(np.float64) - b[1][256:768, 256:768], f[0] / 1e4]
    cases += [rng.standard_t(3, 20_000), np.r_[np.zeros(50), 1.0], np.ones(3), np.array([1.0]), np.array([])]
    for v in cases:
        for n_sigma, n_iter in ((4.0, 5), (5.0, 5), (2.0, 1), (3.0, 0)):
            with np.errstate(invalid="ignore", divide="ignore"):  # the std of one value is NaN
                mean, std, n, mad = robust.clipped_mean_std_mad(v, n_sigma=n_sigma, n_iter=n_iter)
                ref = _ref_clipped_mean_std(v, n_sigma=n_sigma, n_iter=n_iter)
                again = robust.clipped_mean_std(v, n_sigma=n_sigma, n_iter=n_iter)
            assert np.array_equal([mean, std, n], list(ref), equal_nan=True)
            assert np.array_equal(mad, robust.robust_std(v), equal_nan=True)
            assert np.array_equal(again, ref, equal_nan=True)


def test_combine_identical_with_quantised_frames(monkeypatch):
    """The noise model's rms fallback (a bin of quantised data with MAD 0) and the median method."""
    rng = np.random.default_rng(9)
    frames = [np.round(rng.normal(100, 0.3, (120, 90))).astype(np.float32) for _ in range(6)]
    for cfg in (CombineConfig(), CombineConfig(method="median"), CombineConfig(do_clip=False)):
        new = combine_frames(frames, config=cfg)
        with monkeypatch.context() as m:
            _use_references(m)
            ref = combine_frames(frames, config=cfg)
        for name in ("data", "variance", "n_used"):
            assert _same(getattr(new, name), getattr(ref, name))
        assert new.rejected_fraction == ref.rejected_fraction
        assert new.noise_model == ref.noise_model or (
            _same(new.noise_model.sigma_bins, ref.noise_model.sigma_bins)
            and new.noise_model.read_var == ref.noise_model.read_var
        )


def test_prepare_pixels_is_prepare_raw_data(saao_frame, arcsat_dir):
    """The masters' frame preparation (no saturation mask; in place with ``overwrite``) gives
    prepare_raw's pixels: overscan and trim (SAAO), a software bias, a float64 frame, and the
    ARCSAT frames as read_raw gives them."""

    from darkroom.calib.process import CalibrationConfig, prepare_pixels, prepare_raw
    from darkroom.instruments.metadata import FrameMetadata
    from darkroom.io.rawfits import read_raw

    raw, _, meta = saao_frame
    arcsat = read_raw(sorted(glob.glob(str(arcsat_dir / "Dark_BIN1_*.fits.gz")))[0]).data
    arcsat_meta = FrameMetadata(profile="test", frame_type="dark", exptime_s=60.0)
    cases = [
        (raw, meta, CalibrationConfig()),
        (raw, meta.model_copy(update={"software_bias_adu": 100.0}), None),
        (raw.astype(np.float64), meta, CalibrationConfig(do_trim=False)),
        (raw, meta, CalibrationConfig(do_overscan=False)),
        (arcsat, arcsat_meta, None),
    ]
    for data, m, cfg in cases:
        ref = prepare_raw(np.array(data, copy=True), m, config=cfg).data
        assert _same(prepare_pixels(np.array(data, copy=True), m, config=cfg), ref)
        own = np.array(data, copy=True)
        out = prepare_pixels(own, m, config=cfg, overwrite=True)
        assert _same(np.ascontiguousarray(out), ref)
        assert np.shares_memory(out, own) == (data.dtype == np.float32)
