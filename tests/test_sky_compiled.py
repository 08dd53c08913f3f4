"""The compiled mesh background (darkroom.skymesh, darkroom._skymesh_kernels) against sep.Background,
the reference it transliterates: the same float32 level and rms maps byte for byte and the same
global level and rms, on real frames (ARCSAT raw and calibrated, the other folders' raw frames,
SDSS frames), simulated frames, and edge cases (masks, meshes or images with no valid pixel,
non-finite pixels, sizes that are not multiples of the box, tiny images, boxes larger than the
image, filters of 1 to 7 meshes, filter thresholds). And its callers (extraction, the cosmic-ray
step, SDSS adoption, PSF photometry's default background) give the same products with it as with
sep (``skymesh.COMPILED = False``)."""

from __future__ import annotations

import bz2
import glob
import io

import numpy as np
import pytest
import sep
from astropy.io import fits

import darkroom.skymesh as skymesh
from darkroom.errors import BadInputError
from darkroom.skymesh import sky_background


def _bytes(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def assert_same_as_sep(data, mask=None, **kw) -> None:
    """sky_background(data, mask, **kw) equals sep.Background(data, mask=mask, **kw) bit for bit."""
    ref = sep.Background(data, mask=mask, **kw)
    new = sky_background(data, mask, **kw)
    assert isinstance(new, skymesh.SkyBackground)
    assert _bytes(new.back(np.float32)) == _bytes(ref.back(dtype=np.float32)), "level map"
    assert _bytes(new.rms(np.float32)) == _bytes(ref.rms(dtype=np.float32)), "rms map"
    assert _bytes(np.float32(new.globalback)) == _bytes(np.float32(ref.globalback))
    assert _bytes(np.float32(new.globalrms)) == _bytes(np.float32(ref.globalrms))
    back = new.back()  # the image's dtype by default, as sep
    assert back.dtype == ref.back().dtype and _bytes(back) == _bytes(ref.back())


# ------------------------------------------------------------------ edge cases


def _image(kind: str, shape, rng) -> np.ndarray:
    ny, nx = shape
    if kind == "normal":
        return rng.normal(1000.0, 10.0, shape).astype(np.float32)
    if kind == "poisson":  # integer-valued, a sparse histogram
        return rng.poisson(300.0, shape).astype(np.float32)
    if kind == "tiny values":
        return rng.normal(0.0, 1e-3, shape).astype(np.float32)
    if kind == "stars and gradient":
        yy, xx = np.mgrid[:ny, :nx]
        img = 100.0 + 0.05 * xx + 0.02 * yy + rng.normal(0.0, 5.0, shape)
        for _ in range(6):
            cx, cy = rng.uniform(0, nx), rng.uniform(0, ny)
            img += 5000.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 8.0)
        return img.astype(np.float32)
    if kind == "constant":  # zero sigma everywhere
        return np.full(shape, 7.0, dtype=np.float32)
    if kind == "few levels":
        return rng.integers(0, 4, shape).astype(np.float32)
    raise AssertionError(kind)


KINDS = ("normal", "poisson", "tiny values", "stars and gradient", "constant", "few levels")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "shape,box,filt,fthresh",
    [
        ((256, 256), (64, 64), (3, 3), 0.0),  # multiples of the box
        ((300, 257), (64, 64), (3, 3), 0.0),  # not multiples: narrower last meshes
        ((300, 257), (32, 48), (5, 5), 0.0),
        ((300, 257), (32, 32), (1, 1), 0.0),  # no filter
        ((300, 257), (20, 20), (3, 5), 2.0),  # fthresh > 0: some meshes keep their value
        ((300, 257), (20, 20), (7, 2), 1e9),  # nothing filtered
        ((90, 70), (128, 128), (3, 3), 0.0),  # box larger than the image: one mesh
        ((90, 70), (128, 16), (3, 3), 0.0),  # one row of meshes
        ((90, 70), (16, 128), (3, 3), 0.0),  # one column of meshes
        ((1, 1), (64, 64), (3, 3), 0.0),
        ((3, 5), (2, 2), (3, 3), 0.0),
        ((2, 200), (1, 1), (3, 3), 0.0),  # one-pixel meshes
    ],
)
def test_edge_shapes_equal_sep(kind, shape, box, filt, fthresh):
    rng = np.random.default_rng(abs(hash((kind, shape, box))) % 2**32)
    img = _image(kind, shape, rng)
    kw = dict(bw=box[0], bh=box[1], fw=filt[0], fh=filt[1], fthresh=fthresh)
    assert_same_as_sep(img, **kw)
    assert_same_as_sep(img, rng.random(shape) < 0.3, **kw)


def test_random_configurations_equal_sep():
    """Random images, masks, meshes and filters (seeded)."""
    rng = np.random.default_rng(2)
    for _ in range(150):
        shape = tuple(int(v) for v in rng.integers(1, 300, 2))
        img = _image(KINDS[rng.integers(len(KINDS))], shape, rng)
        mask = None
        style = rng.integers(4)
        if style == 1:
            mask = rng.random(shape) < 0.3
        elif style == 2:  # a block: meshes with no valid pixel, replaced by their neighbours
            mask = np.zeros(shape, dtype=bool)
            mask[: shape[0] // 2, : shape[1] // 3] = True
        elif style == 3:  # most pixels masked: many bad meshes
            mask = rng.random(shape) < 0.7
        kw = dict(
            bw=int(rng.integers(1, 120)),
            bh=int(rng.integers(1, 120)),
            fw=int(rng.choice([1, 2, 3, 4, 5, 7])),
            fh=int(rng.choice([1, 2, 3, 5])),
            fthresh=float(rng.choice([0.0, 0.0, 1.0, 5.0, 1e9])),
        )
        assert_same_as_sep(img, mask, **kw)


def test_masks_and_non_finite_pixels_equal_sep():
    rng = np.random.default_rng(5)
    img = rng.normal(1000.0, 10.0, (200, 170)).astype(np.float32)
    kw = dict(bw=32, bh=32)
    for value in (np.nan, np.inf, -np.inf, -2e30):
        a = img.copy()
        a[rng.random(a.shape) < 0.05] = value
        assert_same_as_sep(a, **kw)  # unmasked: sep leaves NaN, -inf and < -1e30 out
        a[:40, :40] = value
        assert_same_as_sep(a, **kw)
        bad = ~np.isfinite(a) | (a < -1e29)
        assert_same_as_sep(np.where(bad, np.float32(0), a), bad, **kw)  # as the callers do
    assert_same_as_sep(img, np.ones(img.shape, dtype=bool), **kw)  # every mesh bad: 0 and 1
    mask = np.zeros(img.shape, dtype=bool)
    mask[:, :100] = True
    assert_same_as_sep(img, mask, **kw)
    assert_same_as_sep(img, (rng.random(img.shape) < 0.2).astype(np.uint8), **kw)  # mask > 0
    assert_same_as_sep(img.astype(np.float64) * 1.0000001, **kw)  # rounded to float32 as sep
    assert_same_as_sep((img * 3).astype(np.intc), **kw)


def test_bad_inputs_raise():
    with pytest.raises(BadInputError):
        sky_background(np.zeros(5, dtype=np.float32))
    with pytest.raises(BadInputError):
        sky_background(np.zeros((5, 5), dtype=np.float32), np.zeros((5, 4), dtype=bool))
    with pytest.raises(BadInputError):
        sky_background(np.zeros((5, 5), dtype=np.float32), bw=0)


def test_sep_is_the_reference_when_not_compiled(monkeypatch):
    monkeypatch.setattr(skymesh, "COMPILED", False)
    assert isinstance(sky_background(np.ones((8, 8), dtype=np.float32)), sep.Background)


def test_load_compiled_kernels_runs():
    skymesh.load_compiled_kernels()


# ------------------------------------------------------------------ real frames


def _float_frames(paths) -> list[np.ndarray]:
    out = []
    for p in paths:
        with fits.open(p) as hdul:
            hdu = next(h for h in hdul if h.data is not None and h.data.ndim == 2)
            out.append(np.ascontiguousarray(hdu.data, dtype=np.float32))
    return out


def test_arcsat_raw_frames_equal_sep(arcsat_dir):
    """Lights, flats, darks and biases of the night, with the extraction's and the cosmic-ray
    step's settings."""
    paths = []
    for pattern in (
        "XO1-b_z_*.fits.gz",
        "domeflat_z_*.fits.gz",
        "Dark_*.fits.gz",
        "Bias_*.fits.gz",
        "43Bet*.fits.gz",
    ):
        found = sorted(glob.glob(str(arcsat_dir / pattern)))
        assert found, pattern
        paths += found[:: max(1, len(found) // 4)][:4]
    for img in _float_frames(paths):
        assert_same_as_sep(img, bw=64, bh=64, fw=3, fh=3)
        assert_same_as_sep(img, img > np.percentile(img, 99.5), bw=128, bh=128)


OTHER_FRAMES = (
    "ccdproc-saao-and-sip/a8280271.fits",
    "astroscrappy-gmos-cr/gmos.fits",
    "feder-eyuma-astrometry-photcal/thumbnail-image.fit.gz",
    "feder-eyuma-astrometry-photcal/cutout_for_fwhm_test.fits",
    "st7-ptc-linearity/flat0.14.FIT.gz",
    "st7-ptc-linearity/bias1.FIT.gz",
    "msumastro-header-variants/aspen_trimmed.fit",
    "sep-vs-sextractor/image.fits",
)


@pytest.mark.parametrize("name", OTHER_FRAMES)
def test_other_raw_frames_equal_sep(data_dir, name):
    (img,) = _float_frames([data_dir / name])
    assert_same_as_sep(img, bw=64, bh=64, fw=3, fh=3)
    assert_same_as_sep(img, ~np.isfinite(img) | (img > np.percentile(img, 99.0)), bw=50, bh=40, fw=5, fh=5)


def _sdss_frames(data_dir):
    out = []
    for p in sorted(glob.glob(str(data_dir / "sdss-frames-m2" / "frame-*-002583-2-0136.fits.bz2"))):
        with fits.open(io.BytesIO(bz2.decompress(open(p, "rb").read()))) as hdul:
            out.append((hdul[0].data.astype(np.float32), hdul[0].header.copy()))
    assert len(out) == 5
    return out


def test_sdss_frames_equal_sep(data_dir):
    for img, _ in _sdss_frames(data_dir):
        assert_same_as_sep(img, bw=64, bh=64)
        assert_same_as_sep(img, bw=64, bh=64, fw=3, fh=3, fthresh=0.01)


def test_simulated_frames_equal_sep(tmp_path):
    from darkroom.sim import SimConfig, simulate_night

    night = simulate_night(tmp_path, config=SimConfig(shape=(300, 260), n_science=2, n_stars=200, seed=3))
    paths = sorted(str(p) for p in tmp_path.rglob("*.fits*"))
    assert paths, night
    for img in _float_frames(paths[:6]):
        assert_same_as_sep(img, bw=64, bh=64)
        assert_same_as_sep(img, bw=32, bh=32, fw=5, fh=5)


# ------------------------------------------------------------------ the callers' products


def _both(monkeypatch, fn):
    out = []
    for use in (False, True):
        with monkeypatch.context() as m:
            m.setattr(skymesh, "COMPILED", use)
            out.append(fn())
    return out


def test_arcsat_calibrated_extraction_equal_sep(arcsat_images, monkeypatch):
    """estimate_background and the whole extraction of the calibrated night's frames (their
    MASK bits and non-finite pixels) give the same maps and catalogues as with sep."""
    from darkroom.detect import extract_frame
    from darkroom.detect.background import estimate_background, pixel_masks
    from darkroom.io.calibrated import read_calibrated
    from darkroom.io.tables import parquet_bytes

    repo, stage, paths = arcsat_images
    cfg = stage.config
    for i, rel in enumerate(paths):
        image = read_calibrated(repo.root / rel, planes=("SCI", "MASK"))
        masks = pixel_masks(image.sci, image.mask, cfg.background.mask_bits, cfg.detect.mask_bits)
        ref, new = _both(
            monkeypatch,
            lambda image=image, masks=masks: estimate_background(
                image.sci, config=cfg.background, masks=masks
            ),
        )
        assert _bytes(ref.level_adu) == _bytes(new.level_adu)
        assert _bytes(ref.rms_adu) == _bytes(new.rms_adu)
        assert (ref.global_level_adu, ref.global_rms_adu) == (new.global_level_adu, new.global_rms_adu)
        if i % 20 == 0:
            ref, new = _both(
                monkeypatch,
                lambda image=image: extract_frame(
                    image.sci, mask=image.mask, background_config=cfg.background, detect_config=cfg.detect
                ),
            )
            assert parquet_bytes(ref.catalog) == parquet_bytes(new.catalog)


@pytest.mark.parametrize("index", [0, 40, 79])
def test_arcsat_cosmic_ray_step_equal_sep(arcsat_light, arcsat_masters, monkeypatch, index):
    """calibrate_frame with cosmic rays (the sky model of the L.A.Cosmic step): the same SCI,
    MASK and VAR planes and history."""
    from darkroom.calib.process import CalibrationConfig, calibrate_frame

    raw, hdr, meta = arcsat_light(index)
    cfg = CalibrationConfig(do_cosmic_rays=True)
    ref, new = _both(
        monkeypatch,
        lambda: calibrate_frame(np.array(raw, copy=True), meta, header=hdr, config=cfg, **arcsat_masters),
    )
    for plane in ("sci", "mask", "var"):
        assert _bytes(getattr(ref, plane)) == _bytes(getattr(new, plane)), plane
    assert ref.steps == new.steps and ref.n_cosmic_pixels == new.n_cosmic_pixels


def test_sdss_adoption_equal_sep(data_dir, monkeypatch):
    """adopt_calibrated (the VAR plane from the sky rms map and the sources' Poisson term)."""
    from darkroom.calib.process import adopt_calibrated
    from darkroom.instruments.metadata import FrameMetadata

    meta = FrameMetadata(
        profile="test", frame_type="light", precalibrated=True, image_unit="nanomaggy", gain_e_per_adu=4.7
    )
    for img, hdr in _sdss_frames(data_dir)[:2]:
        img = img.copy()
        img[:10, :20] = np.nan  # NO_DATA pixels: masked
        ref, new = _both(monkeypatch, lambda img=img, hdr=hdr: adopt_calibrated(img, meta, header=hdr))
        for plane in ("sci", "mask", "var"):
            assert _bytes(getattr(ref, plane)) == _bytes(getattr(new, plane)), plane
