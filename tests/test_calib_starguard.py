"""Cosmic rays vs undersampled stars: on simulated frames at FWHM 1.5-2.5 px no star above
5 sigma gets a false cosmic-ray flag in its aperture, and real cosmic rays are still found."""

from __future__ import annotations

import numpy as np
import pytest

from darkroom.calib.process import CalibrationConfig, RequireConfig, calibrate_frame
from darkroom.calib.starguard import StarGuardConfig, protect_stars
from darkroom.instruments import normalize
from darkroom.maskbits import MaskBit
from darkroom.sim import SimConfig, build_scene, render_frame

NO_MASTERS = RequireConfig(bias=False, dark=False, flat=False)


def _scene(fwhm_pix: float, seed: int):
    """A 12-bit small-telescope frame: 5 arcsec/px, 1300 stars, frequent cosmic rays."""
    config = SimConfig(
        seed=seed,
        shape=(500, 650),
        n_bias=0,
        n_dark=0,
        n_flat=0,
        n_science=1,
        pixel_scale_arcsec=5.0,
        seeing_fwhm_arcsec=5.0 * fwhm_pix,
        seeing_variation=0.0,
        seeing_field_variation=0.0,
        n_stars=1300,
        r_mag_range=(10.5, 19.5),
        zero_point_mag=22.0,
        cosmic_ray_rate_cm2_s=1.0,
        sip_amplitude_pix=0.0,
        flat_level_adu=(2000.0, 1500.0),
        saturation_adu=4095.0,
        bias_level_adu=100.0,
        sky_e_s=20.0,
        n_hot_pixels=0,
        bad_columns=(),
    )
    return build_scene(config)


def _star_hits_and_recall(fwhm_pix: float, seed: int, guard: bool) -> tuple[int, int, int, int]:
    scene = _scene(fwhm_pix, seed)
    c = scene.config
    raw, truth = render_frame(scene, kind="light", index=0)
    meta = normalize(truth.header, filename="f.fits", shape=raw.shape)
    config = CalibrationConfig(require=NO_MASTERS, star_guard=StarGuardConfig(enabled=guard))
    result = calibrate_frame(raw, meta, config=config)
    flagged = (result.mask & MaskBit.CR) != 0
    real = truth.cr_mask(c.shape)
    stars = truth.stars[truth.stars["in_frame"]]
    radius = 1.5 * fwhm_pix  # a photometry aperture
    npix = np.pi * radius**2
    snr = stars["flux_e"] / np.sqrt(stars["flux_e"] + npix * (c.sky_e_s * c.exptime_s + c.read_noise_e**2))
    stars = stars[snr > 5]
    fy, fx = np.nonzero(flagged & ~real)  # flags no cosmic ray explains
    hits = sum(
        bool(np.any((fx - x) ** 2 + (fy - y) ** 2 <= radius**2))
        for x, y in zip(stars["x"], stars["y"], strict=True)
    )
    real &= raw < c.saturation_adu  # a saturated pixel is flagged SAT, not CR
    return hits, len(stars), int(np.count_nonzero(flagged & real)), int(np.count_nonzero(real))


@pytest.mark.parametrize("fwhm_pix", [1.5, 2.0, 2.5])
def test_no_star_gets_a_cosmic_ray_flag_and_recall_stays_high(fwhm_pix: float) -> None:
    hits, n_stars, found, n_real = _star_hits_and_recall(fwhm_pix, seed=11, guard=True)
    assert n_stars > 500 and n_real > 100
    assert hits == 0, f"{hits} of {n_stars} stars above 5 sigma carry a false CR flag"
    assert found / n_real >= 0.9, f"cosmic-ray recall {found / n_real:.3f}"


def test_without_the_guard_undersampled_stars_are_flagged() -> None:
    """The failure the guard fixes (keeps the test able to fail)."""
    hits, n_stars, _, _ = _star_hits_and_recall(1.5, seed=11, guard=False)
    assert hits > 0.05 * n_stars


def test_guard_keeps_a_cosmic_ray_on_a_star_and_clears_the_core() -> None:
    ny, nx = 41, 41
    yy, xx = np.mgrid[0:ny, 0:nx]
    sigma = 1.6 / 2.3548
    star = 20000.0 / (2 * np.pi * sigma**2) * np.exp(-((xx - 20.2) ** 2 + (yy - 19.8) ** 2) / (2 * sigma**2))
    data = 500.0 + star
    data[22, 20] += 3000.0  # a cosmic ray on the star's wing
    var = np.full((ny, nx), 100.0) + np.clip(star, 0, None)
    flags = np.zeros((ny, nx), bool)
    flags[20, 20] = flags[19, 20] = True  # the star core, wrongly flagged
    flags[22, 20] = True  # the cosmic ray
    others = np.random.default_rng(1)
    for y, x in others.integers(3, 38, (8, 2)):  # more stars, so the frame FWHM is measured
        if abs(y - 20) > 6 or abs(x - 20) > 6:
            data += (
                8000.0 / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
            )
    result = protect_stars(flags, data, np.full((ny, nx), 500.0), var)
    assert not result.mask[20, 20] and not result.mask[19, 20]
    assert result.mask[22, 20]


def test_bright_sources_found_in_boxes_equal_the_whole_frame_extraction(monkeypatch) -> None:
    """find_stars extracts only boxes around the bright pixels: the bright sources (and the FWHM
    they give) are those of one extraction of the whole frame."""
    from darkroom.calib import starguard
    from darkroom.calib.starguard import StarGuardConfig, _extract_around, _sep_extract, find_stars
    from darkroom.robust import median

    monkeypatch.setattr(starguard, "_BOX_COST_PIX", 0)  # boxes, not the whole frame, for 27 stars

    rng = np.random.default_rng(3)
    ny, nx = 400, 500
    yy, xx = np.mgrid[0:ny, 0:nx]
    sigma = 3.0 / 2.3548
    data = np.zeros((ny, nx))
    stars = [(rng.uniform(15, nx - 15), rng.uniform(15, ny - 15), rng.uniform(3e3, 5e4)) for _ in range(25)]
    stars += [(250.0, 200.0, 4e5), (262.0, 203.0, 2e3)]  # a faint neighbour in a bright star's wings
    for x, y, flux in stars:
        data += flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    noise = np.sqrt(100.0 + data)
    work = (data + noise * rng.standard_normal((ny, nx))).astype(np.float32)
    err = noise.astype(np.float32)
    cfg = StarGuardConfig()
    floor = 20 * median(err)
    whole = _sep_extract(work, err, None, cfg)
    boxed = _extract_around(work > floor, work, err, None, cfg)

    def bright(objs):
        objs = objs[objs["peak"] > floor]
        return sorted(
            zip(
                objs["xpeak"].tolist(),
                objs["ypeak"].tolist(),
                objs["npix"].tolist(),
                objs["x"].tolist(),
                strict=True,
            )
        )

    assert len(bright(whole)) >= 20
    assert bright(boxed) == bright(whole)
    fwhm = find_stars(work, np.zeros_like(work), err, config=cfg)[3]
    assert fwhm == pytest.approx(3.0, abs=0.3)


def test_boxes_whose_sources_could_clean_each_other_are_joined() -> None:
    """sep drops a faint source in a brighter one's wings within 10 (a1 + a2): such sources
    must be extracted in one box (on the ARCSAT night a 6-pixel source 30 px from a star)."""
    from darkroom.sepboxes import _cleaning_neighbours

    def sources(*xya):
        return np.array(list(xya), dtype=[("x", "f8"), ("y", "f8"), ("a", "f4")])

    boxes = [[0, 40, 0, 40], [10, 50, 60, 100], [200, 240, 200, 240]]
    far = [sources((20.0, 20.0, 2.4)), sources((80.0, 30.0, 0.6)), sources((220.0, 220.0, 3.0))]
    assert _cleaning_neighbours(boxes, far) is None  # 60 px apart > 10 * (2.4 + 0.6)
    near = [sources((20.0, 20.0, 2.4)), sources((48.0, 30.0, 0.6)), sources((220.0, 220.0, 3.0))]
    assert _cleaning_neighbours(boxes, near) == [[0, 50, 0, 100], [200, 240, 200, 240]]


def _star_field(rng, shape: tuple[int, int], n_stars: int, *, fwhm: float) -> np.ndarray:
    """Gaussian stars of ``fwhm`` [px] and 3e3-3e4 adu at random places, 10 px from the edges."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sigma = fwhm / 2.3548
    data = np.zeros((ny, nx))
    for _ in range(n_stars):
        x, y, flux = rng.uniform(10, nx - 10), rng.uniform(10, ny - 10), rng.uniform(3e3, 3e4)
        data += flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return data


def test_a_frame_full_of_stars_is_extracted_once_for_finding_and_guarding(monkeypatch) -> None:
    """80 stars on 300 x 400 pixels: boxes around each would cost more than the whole frame, so
    the frame is extracted once, and the second ask (the guard's, around the flags) reuses it."""
    from darkroom.calib import starguard
    from darkroom.calib.starguard import StarExtraction, StarGuardConfig, _sep_call, _sep_extract
    from darkroom.robust import median

    rng = np.random.default_rng(8)
    ny, nx = 300, 400
    data = _star_field(rng, (ny, nx), 80, fwhm=2.0)
    noise = np.sqrt(100.0 + data)
    work = (data + noise * rng.standard_normal((ny, nx))).astype(np.float32)
    err = noise.astype(np.float32)
    cfg = StarGuardConfig()
    whole = _sep_extract(work, err, None, cfg)
    calls = []

    def counted(*args):  # every sep call, of a box or of the whole frame
        calls.append(args[0].shape)
        return _sep_call(*args)

    monkeypatch.setattr(starguard, "_sep_call", counted)
    ext = StarExtraction(work, err, None, cfg)
    first = ext.around(work > 20 * median(err))
    flags = np.zeros((ny, nx), bool)
    flags[rng.integers(0, ny, 30), rng.integers(0, nx, 30)] = True
    second = ext.around(flags)
    assert calls == [(ny, nx)]  # one extraction, of the whole frame
    assert first is second and len(first) == len(whole) >= 70
    np.testing.assert_array_equal(np.sort(first["x"]), np.sort(whole["x"]))
    assert ext.around(np.zeros((ny, nx), bool)) is None


def test_an_extraction_from_the_variance_is_the_one_from_its_sigma(monkeypatch) -> None:
    """Given the variance, the sigma is computed only in the boxes extracted (and its median
    from the variance's middle values): the sources, the noise floor and the stars found are
    those of the extraction given the whole sigma plane."""
    from darkroom.calib import starguard
    from darkroom.calib.starguard import StarExtraction, StarGuardConfig, find_stars, noise_from_variance
    from darkroom.robust import median

    monkeypatch.setattr(starguard, "_BOX_COST_PIX", 0)  # boxes, not the whole frame
    rng = np.random.default_rng(11)
    ny, nx = 300, 400
    data = _star_field(rng, (ny, nx), 12, fwhm=2.5)
    var = (100.0 + data).astype(np.float32)
    err = noise_from_variance(var)
    work = (data + err * rng.standard_normal((ny, nx))).astype(np.float32)
    cfg = StarGuardConfig()
    given = StarExtraction(work, err, None, cfg)
    lazy = StarExtraction(work, None, None, cfg, variance=var)
    assert lazy.noise_median() == median(err)
    seeds = work > 20 * median(err)
    np.testing.assert_array_equal(lazy.around(seeds), given.around(seeds))
    assert lazy._err is None  # boxes only: the sigma plane was never made
    sky = np.zeros_like(work)
    for a, b in zip(
        find_stars(work, sky, err, config=cfg, extraction=StarExtraction(work, err, None, cfg)),
        find_stars(
            work, sky, lazy.noise, config=cfg, extraction=StarExtraction(work, None, None, cfg, variance=var)
        ),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(lazy.noise[5:9, 7:12], err[5:9, 7:12])
    np.testing.assert_array_equal(lazy.err, err)
