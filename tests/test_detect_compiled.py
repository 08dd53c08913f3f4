"""The extraction's compiled frame passes (darkroom.detect._extract_kernels) against the numpy
code they replaced (kept here as the reference): pixel_masks gives the same planes, and the
catalogues of ARCSAT, SDSS and simulated frames encode to the same Parquet bytes."""

from __future__ import annotations

import bz2
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

import darkroom.detect.background as background
import darkroom.detect.extract as extract
from darkroom.detect import extract_frame
from darkroom.io.tables import parquet_bytes
from darkroom.maskbits import MaskBit


def _reference_subtracted(arr, level, bad):
    """detect_sources' background-subtracted image as numpy made it."""
    sub = arr - level
    if bad is not None:
        sub[bad] = 0.0
    return sub


def _same_masks(a, b) -> None:
    assert a.finite == b.finite
    for name in ("background", "detect", "saturated"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype == bool and x.shape == y.shape and np.array_equal(x, y), name


def _reference_masks(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(background, "_compiled_scan", lambda data, mask: False)
        return background.pixel_masks(*args)


@pytest.mark.parametrize("mask_dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("data_dtype", [np.float32, np.float64])
def test_compiled_pixel_masks_match_the_reference(mask_dtype, data_dtype, monkeypatch):
    rng = np.random.default_rng(3)
    shape = (37, 53)
    bits_sets = [
        (int(MaskBit.BAD | MaskBit.CR), int(MaskBit.BAD | MaskBit.SAT | MaskBit.CR)),
        (int(MaskBit.BAD), int(MaskBit.BAD)),
        (0, 1 << 40),  # none, and a bit above every mask's width
        (-1, 7),
    ]
    for trial in range(12):
        data = rng.normal(100.0, 10.0, shape).astype(data_dtype)
        if trial % 3 == 1:
            data[rng.random(shape) < 0.01] = np.nan
        if trial % 4 == 2:
            data[3, 4] = -np.inf
        mask = np.zeros(shape, mask_dtype)
        if trial % 5:
            hit = rng.random(shape) < 0.05
            mask[hit] = rng.integers(1, 256, hit.sum()).astype(mask_dtype)
        if trial % 6 == 5:
            mask[0, 0] = np.iinfo(mask_dtype).max
        for bg_bits, det_bits in bits_sets:
            assert background._compiled_scan(data, mask)
            got = background.pixel_masks(data, mask, bg_bits, det_bits)
            _same_masks(_reference_masks(monkeypatch, data, mask, bg_bits, det_bits), got)


def test_compiled_subtraction_matches_the_reference():
    rng = np.random.default_rng(4)
    level = rng.normal(1000.0, 3.0, (40, 30)).astype(np.float32)
    bad = rng.random(level.shape) < 0.1
    for dtype in (np.float32, np.float64):
        arr = rng.normal(1000.0, 30.0, level.shape).astype(dtype)
        arr[bad & (rng.random(level.shape) < 0.5)] = np.nan
        got = extract._subtracted(arr, level, bad)
        ref = _reference_subtracted(arr, level, bad)
        assert got.dtype == ref.dtype and got.tobytes() == ref.tobytes()


def _both(monkeypatch, image, mask, **kwargs) -> tuple[bytes, bytes]:
    """The catalogue's Parquet bytes through the compiled and the reference passes."""
    compiled = parquet_bytes(extract_frame(image, mask=mask, **kwargs).catalog)
    with monkeypatch.context() as m:
        m.setattr(background, "_compiled_scan", lambda data, mask: False)
        m.setattr(extract, "_subtracted", _reference_subtracted)
        reference = parquet_bytes(extract_frame(image, mask=mask, **kwargs).catalog)
    return compiled, reference


def test_catalogues_match_the_reference_on_arcsat_frames(arcsat_images, monkeypatch):
    """Every 10th calibrated frame of the night, extracted as the extract stage does."""
    from darkroom.io.calibrated import read_calibrated

    repo, stage, paths = arcsat_images
    paths = paths[::10]
    assert len(paths) >= 5
    cfg = stage.config
    for path in paths:
        image = read_calibrated(repo.root / path, planes=("SCI", "MASK"))
        assert background._compiled_scan(image.sci, image.mask)
        compiled, reference = _both(
            monkeypatch, image.sci, image.mask, background_config=cfg.background, detect_config=cfg.detect
        )
        assert compiled == reference


def _bad_pixels(shape, seed: int) -> np.ndarray:
    """A uint8 MASK plane: hot pixels, a bad column, a few saturated pixels."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    mask[rng.random(shape) < 0.003] = int(MaskBit.BAD)
    mask[:, shape[1] // 3] |= int(MaskBit.BAD)
    mask[rng.random(shape) < 0.0005] |= int(MaskBit.SAT)
    return mask


def test_catalogues_match_the_reference_on_sdss_frames(data_dir, monkeypatch):
    """An SDSS frame of M2 (r), with a MASK plane of bad and saturated pixels."""
    path = data_dir / "sdss-frames-m2" / "frame-r-002583-2-0136.fits.bz2"
    with bz2.open(path) as f, fits.open(f) as hdul:
        image = hdul[0].data.astype(np.float32)
    compiled, reference = _both(monkeypatch, image, _bad_pixels(image.shape, 1))
    assert compiled == reference


@pytest.mark.parametrize("preset", ["default", "hostile"])
def test_catalogues_match_the_reference_on_simulated_frames(preset, monkeypatch):
    """darkroom.sim's default night and its hostile small-telescope preset, with a MASK plane."""
    from darkroom.sim import SimConfig, build_scene, hostile_small_telescope, truth_image

    if preset == "default":
        config = SimConfig(n_science=2, n_bias=0, n_dark=0, n_flat=0, seed=3)
    else:
        config = hostile_small_telescope(n_science=2, seed=3)
    scene = build_scene(config)
    for i in range(2):
        image = truth_image(scene, i)
        noise = np.sqrt(
            np.maximum(image, 0) / config.gain_e_per_adu + (config.read_noise_e / config.gain_e_per_adu) ** 2
        )
        image = (image + np.random.default_rng(i).normal(0.0, 1.0, image.shape) * noise).astype(np.float32)
        if i:
            image[5:7, 10:12] = np.nan
        compiled, reference = _both(
            monkeypatch, image, _bad_pixels(image.shape, i), pixel_scale_arcsec=config.pixel_scale_arcsec
        )
        assert compiled == reference


def test_numba_is_imported_by_the_first_masked_frame_only():
    code = (
        "import sys, numpy as np\n"
        "import darkroom.detect.background as b\n"
        "assert 'numba' not in sys.modules\n"
        "b.pixel_masks(np.ones((8, 8), np.float32), np.zeros((8, 8), np.uint8), 1, 1)\n"
        "assert 'darkroom.detect._extract_kernels' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
