"""Simulation benchmark: star rendering, one light frame, a whole night.

Star rendering is compared with photutils' ``make_model_image`` + ``MoffatPSF`` on the
same stars (pixel-centre sampling, 25 x 25 model boxes: less work than darkroom's
pixel-integrated, flux-dependent stamps, so the ratio favours photutils).
Times are the best of a few runs; peak memory is traced (tracemalloc) on the first.
Run: .venv/bin/python bench/bench_sim.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from astropy.table import Table
from photutils.datasets import make_model_image
from photutils.psf import MoffatPSF

from _common import max_rss_mb, measure, print_table
from darkroom.sim import SimConfig, build_scene, render_frame, render_stars, simulate_night
from darkroom.sim.catalog import sample_magnitudes
from darkroom.sim.psf import moffat_alpha


def main() -> None:
    shape = (1024, 1024)
    n_stars = 1000
    rng = np.random.Generator(np.random.PCG64(1))
    x = rng.uniform(0, shape[1], n_stars)
    y = rng.uniform(0, shape[0], n_stars)
    r = sample_magnitudes(n_stars, mag_range=(9.5, 20.5), slope=0.3, rng=rng)
    flux = 10 ** (-0.4 * (r - 22.5)) * 60.0
    fwhm = 2.7
    beta = 3.0

    def ours():
        img = np.zeros(shape)
        render_stars(img, x, y, flux, np.full(n_stars, fwhm), beta=beta, oversample=5)
        return img

    def photutils_model():
        params = Table(
            {"x_0": x, "y_0": y, "flux": flux, "alpha": np.full(n_stars, moffat_alpha(fwhm, beta))}
        )
        return make_model_image(shape, MoffatPSF(beta=beta), params, model_shape=(25, 25))

    t_ours, m_ours, img_ours = measure(ours, repeat=3)
    t_phot, m_phot, img_phot = measure(photutils_model, repeat=1)
    config = SimConfig()
    scene = build_scene(config)
    t_scene, m_scene, _ = measure(lambda: build_scene(config), repeat=2)
    t_light, m_light, _ = measure(lambda: render_frame(scene, kind="light", index=0), repeat=3)

    def night():
        with tempfile.TemporaryDirectory() as tmp:
            simulate_night(tmp, config)

    t_night, m_night, _ = measure(night, repeat=2)
    n_frames = config.n_bias + config.n_dark + config.n_flat + config.n_science
    rows = [
        {"stage": "photutils make_model_image (centre)", "size": f"1024^2, {n_stars} stars", "seconds": t_phot,
         "peak MB": m_phot, "ratio": 1.0},
        {"stage": "render_stars (integrated)", "size": f"1024^2, {n_stars} stars", "seconds": t_ours,
         "peak MB": m_ours, "ratio": t_ours / t_phot},
        {"stage": "build_scene", "size": "1024^2, 800 stars", "seconds": t_scene, "peak MB": m_scene, "ratio": ""},
        {"stage": "render_frame light", "size": "1024^2", "seconds": t_light, "peak MB": m_light, "ratio": ""},
        {"stage": "simulate_night (write all)", "size": f"{n_frames} x 1024^2", "seconds": t_night,
         "peak MB": m_night, "ratio": ""},
    ]  # fmt: skip
    print_table(rows)
    print(
        f"flux in image: darkroom {img_ours.sum():.6g} e, photutils {img_phot.sum():.6g} e, input {flux.sum():.6g} e"
    )
    print(f"max RSS {max_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
