"""Cosmic rays: astroscrappy's GMOS known answer, equality with astroscrappy, recall on synthetic frames."""

from __future__ import annotations

from pathlib import Path

import astroscrappy
import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage as ndi

from darkroom.calib.cosmics import CosmicRayConfig, detect_cosmic_rays
from darkroom.calib.synthetic import synthetic_sky_frame
from darkroom.errors import BadInputError

COSMIC1 = (slice(41, 72), slice(142, 161))  # MANIFEST / test_gmos.py of astroscrappy
COSMIC2 = (slice(117, 147), slice(35, 43))


@pytest.fixture(scope="module")
def gmos(data_dir: Path):
    with fits.open(data_dir / "astroscrappy-gmos-cr" / "gmos.fits") as hdul:
        return (
            hdul["SCI"].data.astype(np.float32),
            hdul["VAR"].data.astype(np.float32),
            hdul["SKYFIT"].data.astype(np.float32),
        )


@pytest.mark.parametrize("use_var", [False, True])
def test_gmos_with_sky_model_finds_exactly_the_two_cosmic_rays(gmos, use_var):
    data, var, sky = gmos
    res = detect_cosmic_rays(
        data, gain_e_per_adu=1.933, read_noise_e=4.24, sky=sky, variance=var if use_var else None
    )
    label, n = ndi.label(res.mask)
    assert n == 2
    objects = ndi.find_objects(label)
    assert objects[0] == COSMIC1
    assert objects[1] == COSMIC2


def test_gmos_without_sky_model_matches_astroscrappy_known_answer(gmos):
    data, _, _ = gmos
    res = detect_cosmic_rays(data, gain_e_per_adu=1.933, read_noise_e=4.24)
    label, n = ndi.label(res.mask)
    assert n == 4
    objects = ndi.find_objects(label)
    assert COSMIC1 in objects and COSMIC2 in objects
    assert sorted(int(np.sum(label == i + 1)) for i in range(n)) == [1, 1, 74, 93]


@pytest.mark.parametrize("kw", [{}, {"sky": True}, {"sky": True, "variance": True}])
def test_sparse_engine_equals_astroscrappy_on_gmos(gmos, kw):
    data, var, sky = gmos
    args = {"sky": sky if kw.get("sky") else None, "variance": var if kw.get("variance") else None}
    ours = detect_cosmic_rays(data, gain_e_per_adu=1.933, read_noise_e=4.24, return_cleaned=True, **args)
    ref_mask, ref_clean = astroscrappy.detect_cosmics(
        data, inbkg=args["sky"], invar=args["variance"], gain=1.933, readnoise=4.24
    )
    np.testing.assert_array_equal(ours.mask, ref_mask)
    np.testing.assert_array_equal(ours.cleaned, ref_clean)


@pytest.fixture(scope="module")
def synthetic():
    # 600 x 520: unequal sides catch x/y mix-ups; stars FWHM 3 px, 250 cosmic-ray tracks
    return synthetic_sky_frame(
        (600, 520),
        seed=11,
        n_stars=150,
        n_cosmic_rays=250,
        sky_adu=300.0,
        gain_e_per_adu=1.5,
        read_noise_e=8.0,
    )


def test_sparse_engine_equals_astroscrappy_on_synthetic_frame(synthetic):
    ours = detect_cosmic_rays(synthetic.data, gain_e_per_adu=1.5, read_noise_e=8.0, saturation_adu=20000)
    ref, _ = astroscrappy.detect_cosmics(synthetic.data, gain=1.5, readnoise=8.0, satlevel=20000 * 1.5)
    assert ours.n_pixels > 500
    np.testing.assert_array_equal(ours.mask, ref)
    # far fewer pixels need the exact statistics than the frame holds
    assert ours.n_candidates < 0.05 * synthetic.data.size


def test_recall_and_false_pixels_on_synthetic_frame(synthetic):
    """Recall >= 95% of the pixels with cosmic-ray charge > 5 sigma; false pixels <= 0.01% of the frame.

    A flagged pixel is false when no pixel within 2 pixels (L.A.Cosmic's growth
    radius) holds cosmic-ray charge above 1 sigma of the noise.
    """
    res = detect_cosmic_rays(
        synthetic.data,
        gain_e_per_adu=1.5,
        read_noise_e=8.0,
        sky=np.full(synthetic.data.shape, synthetic.sky_adu, dtype=np.float32),
    )
    truth = synthetic.cosmic_ray_truth_mask(n_sigma=5)
    recall = (res.mask & truth).sum() / truth.sum()
    near = ndi.binary_dilation(
        synthetic.cosmic_rays > np.sqrt(synthetic.variance),
        structure=np.ones((3, 3), dtype=bool),
        iterations=2,
    )
    false_frac = (res.mask & ~near).sum() / res.mask.size
    assert recall >= 0.95
    assert false_frac <= 1e-4


def test_bad_pixels_are_never_flagged(synthetic):
    bad = synthetic.cosmic_ray_truth_mask(n_sigma=5)
    res = detect_cosmic_rays(synthetic.data, gain_e_per_adu=1.5, read_noise_e=8.0, bad_mask=bad)
    assert not np.any(res.mask & bad)


def test_saturated_star_is_masked():
    frame = synthetic_sky_frame((200, 220), seed=3, n_stars=1, n_cosmic_rays=0, peak_max_adu=10.0)
    data = frame.data.copy()
    data[95:106, 100:111] = 60000.0  # a flat-topped saturated star core
    data[101, 140] = 60000.0  # a saturated cosmic ray away from it (single pixel)
    res = detect_cosmic_rays(data, gain_e_per_adu=1.5, read_noise_e=8.0, saturation_adu=50000)
    assert not res.mask[93:108, 98:113].any()
    ref, _ = astroscrappy.detect_cosmics(data, gain=1.5, readnoise=8.0, satlevel=50000 * 1.5)
    np.testing.assert_array_equal(res.mask, ref)


def test_astroscrappy_engine_and_errors(gmos):
    data, _, sky = gmos
    a = detect_cosmic_rays(data, gain_e_per_adu=1.933, read_noise_e=4.24, sky=sky)
    b = detect_cosmic_rays(
        data, gain_e_per_adu=1.933, read_noise_e=4.24, sky=sky, config=CosmicRayConfig(engine="astroscrappy")
    )
    np.testing.assert_array_equal(a.mask, b.mask)
    with pytest.raises(BadInputError, match="positive gain"):
        detect_cosmic_rays(data, gain_e_per_adu=0.0, read_noise_e=4.0)
    with pytest.raises(BadInputError, match="shape"):
        detect_cosmic_rays(data, gain_e_per_adu=1.0, read_noise_e=4.0, sky=sky[:-1])


def test_the_sparse_cache_keeps_the_last_value_and_forgets():
    from darkroom.calib.cosmics import _Cache

    cache = _Cache((100, 100))
    cache.set(np.array([50, 7, 9000]), np.array([1.5, 2.5, 3.5], dtype=np.float32))
    cache.set(np.array([7, 12]), np.array([4.0, 5.0], dtype=np.float32))  # 7 replaced
    np.testing.assert_array_equal(cache.known(np.array([7, 8, 12, 50, 9000, 9999])), [1, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(cache.get(np.array([9000, 7, 12, 50])), np.float32([3.5, 4.0, 5.0, 1.5]))
    cache.forget(np.array([7, 8, 50]))
    np.testing.assert_array_equal(cache.known(np.array([7, 12, 50, 9000])), [0, 1, 0, 1])
    with pytest.raises(KeyError):
        cache.get(np.array([7]))
