"""darkroom.sim: a synthetic night with truth, for the demo and the tests.

``simulate_night(out_dir, config=SimConfig(...))`` writes MaxIm-like raw frames
(bias, dark, flat, light), a reference catalogue and truth tables; the pure functions
(:func:`render_frame`, :func:`truth_image`, :func:`make_star_catalog`,
:func:`moffat_psf`, :func:`transit_model`, :func:`variable_star`) work without files.
Pixel positions are 0-based (sep convention), shapes ``(ny, nx)``.
"""

from darkroom.sim.catalog import make_star_catalog
from darkroom.sim.config import PointingJump, SimConfig, TransitConfig, VariableConfig
from darkroom.sim.detector import DetectorModel, make_detector
from darkroom.sim.lightcurves import TransitGeometry, solve_transit, transit_model, variable_star
from darkroom.sim.night import SimNight, SimTruth, load_truth, simulate_night
from darkroom.sim.presets import hostile_small_telescope
from darkroom.sim.psf import moffat_psf, render_stars
from darkroom.sim.render import FrameTruth, light_electrons, render_frame, truth_image
from darkroom.sim.scene import FrameSpec, SimScene, build_scene

__all__ = [
    "DetectorModel",
    "FrameSpec",
    "FrameTruth",
    "PointingJump",
    "SimConfig",
    "SimNight",
    "SimScene",
    "SimTruth",
    "TransitConfig",
    "TransitGeometry",
    "VariableConfig",
    "build_scene",
    "hostile_small_telescope",
    "light_electrons",
    "load_truth",
    "make_detector",
    "make_star_catalog",
    "moffat_psf",
    "render_frame",
    "render_stars",
    "simulate_night",
    "solve_transit",
    "transit_model",
    "truth_image",
    "variable_star",
]
