"""The compiled annulus pixels and clipped annulus statistics (darkroom.phot._aperture_kernels)
against the numpy implementation they replaced (kept here as the reference): the same values
bit for bit, on random rows and through ``aperture_photometry`` on real (ARCSAT, SDSS) and
simulated frames, whose tables must encode to the same Parquet bytes."""

from __future__ import annotations

import bz2
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import darkroom.phot._aperture_kernels as kernels
import darkroom.phot.aperture as aperture
from darkroom.detect import extract_frame
from darkroom.errors import ConfigError
from darkroom.io.tables import parquet_bytes
from darkroom.phot import ApertureConfig, aperture_photometry


def _reference_stats(values, *, clip_sigma=3.0, max_iters=5, statistic="median"):
    """clipped_annulus_stats as it was in numpy (before the numba kernel)."""
    values = np.asarray(values, dtype=np.float64)
    n_rows = values.shape[0]
    s = np.sort(values, axis=1)  # NaN last
    n_valid = np.count_nonzero(~np.isnan(s), axis=1)
    rows = np.arange(n_rows)
    ref = np.where(n_valid > 0, s[rows, np.maximum(n_valid - 1, 0) // 2], 0.0)
    z = np.nan_to_num(s - ref[:, None], nan=0.0)
    c1 = np.zeros((n_rows, s.shape[1] + 1))
    c2 = np.zeros_like(c1)
    np.cumsum(z, axis=1, out=c1[:, 1:])
    np.cumsum(z * z, axis=1, out=c2[:, 1:])
    lo = np.zeros(n_rows, dtype=np.int64)
    hi = n_valid.astype(np.int64)

    def stats(lo, hi):
        cnt = hi - lo
        safe = np.maximum(cnt, 1)
        i1 = lo + (safe - 1) // 2
        i2 = lo + safe // 2
        med = 0.5 * (z[rows, np.minimum(i1, s.shape[1] - 1)] + z[rows, np.minimum(i2, s.shape[1] - 1)])
        mean = (c1[rows, hi] - c1[rows, lo]) / safe
        var = (c2[rows, hi] - c2[rows, lo]) / safe - mean * mean
        return med, np.sqrt(np.maximum(var, 0.0)), cnt, mean

    med, std, cnt, mean = stats(lo, hi)
    zc = np.where(np.arange(s.shape[1])[None, :] < n_valid[:, None], z, np.nan) if max_iters > 0 else z
    for _ in range(max_iters):
        thr_lo = (med - clip_sigma * std)[:, None]
        thr_hi = (med + clip_sigma * std)[:, None]
        new_lo = np.maximum(lo, np.count_nonzero(zc < thr_lo, axis=1))
        new_hi = np.minimum(hi, np.count_nonzero(zc <= thr_hi, axis=1))
        new_hi = np.maximum(new_hi, new_lo)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
        med, std, cnt, mean = stats(lo, hi)
    if statistic == "mean":
        centre = mean
    elif statistic == "mode":
        skewed = np.abs(mean - med) > 0.3 * std
        centre = np.where(skewed, med, 2.5 * med - 1.5 * mean)
    else:
        centre = med
    empty = cnt == 0
    centre = np.where(empty, np.nan, centre + ref)
    std = np.where(empty, np.nan, std)
    return centre, std, cnt


def _reference_annulus_values(
    sci, mask, use_mask, exclude_bits, cx, cy, fx, fy, dx, dy, dxf, dyf, r_in2, r_out2
):
    """The annulus pixels of _annulus_background as they were gathered in numpy."""
    ny, nx = sci.shape
    d2 = (dxf[None, :] - fx[:, None]) ** 2 + (dyf[None, :] - fy[:, None]) ** 2
    ix = cx[:, None] + dx[None, :]
    iy = cy[:, None] + dy[None, :]
    ok = (d2 >= r_in2) & (d2 < r_out2) & (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    np.clip(ix, 0, nx - 1, out=ix)
    np.clip(iy, 0, ny - 1, out=iy)
    flat = iy * nx + ix
    vals = sci.ravel().take(flat).astype(np.float64)
    ok &= np.isfinite(vals)
    if use_mask:
        ok &= (mask.ravel().take(flat) & exclude_bits) == 0
    vals[~ok] = np.nan
    return vals


def _same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), (x, y)


@pytest.mark.parametrize("statistic", ["median", "mean", "mode"])
def test_compiled_stats_match_the_reference_on_random_rows(statistic):
    rng = np.random.default_rng(11)
    for trial in range(150):
        n, m = int(rng.integers(0, 6)), int(rng.integers(1, 60))
        values = rng.normal(100.0, 5.0, (n, m))
        if trial % 3 == 0:  # integer-valued (raw) pixels: ties and half-integer medians
            values = np.round(values)
        values[rng.random((n, m)) < 0.3] = np.nan
        values[rng.random((n, m)) < 0.05] = 1e4  # outliers to clip
        if trial % 7 == 0 and n:
            values[0] = np.nan  # a row without values
        for iters in (0, 1, 5):
            for clip in (2.5, 3.0):
                with np.errstate(all="ignore"):
                    expected = _reference_stats(values, clip_sigma=clip, max_iters=iters, statistic=statistic)
                got = aperture.clipped_annulus_stats(
                    values, clip_sigma=clip, max_iters=iters, statistic=statistic
                )
                _same(expected, got)


def test_compiled_stats_reject_an_unknown_statistic():
    with pytest.raises(ConfigError):
        aperture.clipped_annulus_stats(np.ones((2, 3)), statistic="mid")


def _both(monkeypatch, *args, **kwargs) -> tuple[bytes, bytes]:
    """aperture_photometry's Parquet bytes through the compiled and the reference kernels."""
    compiled = parquet_bytes(aperture_photometry(*args, **kwargs))
    with monkeypatch.context() as m:
        m.setattr(aperture, "clipped_annulus_stats", _reference_stats)
        m.setattr(kernels, "annulus_values", _reference_annulus_values)
        reference = parquet_bytes(aperture_photometry(*args, **kwargs))
    return compiled, reference


CONFIGS = [
    ApertureConfig(),
    ApertureConfig(annulus_exclude_bits=0, neighbour_mask_fwhm=0.0),
    ApertureConfig(annulus_statistic="mode", annulus_clip_sigma=2.5),
    ApertureConfig(annulus_statistic="mean", annulus_clip_iters=1),
]


def test_aperture_photometry_matches_the_reference_on_arcsat_frames(arcsat_images, monkeypatch):
    """Every 10th calibrated frame of the night (SCI, MASK, VAR as read: big-endian planes), at
    the positions the extract stage detects."""
    from darkroom.io.calibrated import read_calibrated

    repo, stage, paths = arcsat_images
    paths = paths[::10]
    assert len(paths) >= 5
    cfg = stage.config
    for path in paths:
        image = read_calibrated(repo.root / path, planes=("SCI", "MASK", "VAR"))
        cat = extract_frame(
            image.sci, mask=image.mask, background_config=cfg.background, detect_config=cfg.detect
        ).catalog
        assert len(cat) >= 5
        fwhm = float(np.nanmedian(cat["fwhm_pix"]))
        for config in CONFIGS:
            compiled, reference = _both(
                monkeypatch,
                image.sci,
                image.mask,
                image.var,
                cat["x"],
                cat["y"],
                fwhm_pix=fwhm,
                config=config,
            )
            assert compiled == reference


def test_aperture_photometry_matches_the_reference_on_sdss_frames(data_dir, monkeypatch):
    """SDSS frames of M2 (crowded, sky-subtracted nanomaggies) in r and i, no mask or variance."""
    for band in "ri":
        path = data_dir / "sdss-frames-m2" / f"frame-{band}-002583-2-0136.fits.bz2"
        with bz2.open(path) as f, fits.open(f) as hdul:
            image = hdul[0].data.astype(np.float32)
        cat = extract_frame(image).catalog
        assert len(cat) >= 100
        fwhm = float(np.nanmedian(cat["fwhm_pix"]))
        for config in CONFIGS:
            compiled, reference = _both(
                monkeypatch, image, None, None, cat["x"], cat["y"], fwhm_pix=fwhm, config=config
            )
            assert compiled == reference


@pytest.mark.parametrize("preset", ["default", "hostile"])
def test_aperture_photometry_matches_the_reference_on_simulated_frames(preset, monkeypatch):
    """darkroom.sim's default night and its hostile small-telescope preset, with a MASK plane
    (NaN and saturated pixels) and a variance plane."""
    from darkroom.maskbits import MaskBit
    from darkroom.sim import SimConfig, build_scene, hostile_small_telescope, truth_image

    if preset == "default":
        config = SimConfig(n_science=2, n_bias=0, n_dark=0, n_flat=0, seed=3)
    else:
        config = hostile_small_telescope(n_science=2, seed=3)
    scene = build_scene(config)
    rng = np.random.default_rng(5)
    for i in range(2):
        image = truth_image(scene, i)
        var = (
            np.maximum(image, 0) / config.gain_e_per_adu + (config.read_noise_e / config.gain_e_per_adu) ** 2
        )
        image = (image + rng.normal(0.0, 1.0, image.shape) * np.sqrt(var)).astype(np.float32)
        cat = extract_frame(image, pixel_scale_arcsec=config.pixel_scale_arcsec).catalog
        mask = np.zeros(image.shape, np.int32)
        hit = rng.random(image.shape) < 0.002
        mask[hit] = int(MaskBit.SAT)
        if i:
            image[rng.random(image.shape) < 0.001] = np.nan
        fwhm = float(np.nanmedian(cat["fwhm_pix"]))
        for cfg in CONFIGS:
            compiled, reference = _both(
                monkeypatch,
                image,
                mask,
                var.astype(np.float32),
                cat["x"],
                cat["y"],
                fwhm_pix=fwhm,
                config=cfg,
            )
            assert compiled == reference


def test_numba_is_imported_by_the_first_annulus_statistics_only():
    code = (
        "import sys, numpy as np\n"
        "import darkroom.phot.aperture as a\n"
        "assert 'numba' not in sys.modules\n"
        "a.aperture_photometry(np.ones((40, 40), np.float32), None, None, [20.0], [20.0], fwhm_pix=2.0)\n"
        "assert 'darkroom.phot._aperture_kernels' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
