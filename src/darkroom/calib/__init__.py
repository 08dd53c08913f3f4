"""darkroom.calib: master calibrations and instrument-signature removal.

Pure functions on arrays, headers and :class:`~darkroom.instruments.metadata.FrameMetadata`:

* :mod:`.combine` -- chunked, clipped combination of frames;
* :mod:`.masters` -- master bias/dark/flat, comparison with the previous master;
* :mod:`.grouping` -- which frames make a master, which master calibrates a frame;
* :mod:`.noise` -- gain and read noise (two-frame, photon transfer), linearity;
* :mod:`.badpix` -- hot/dead pixels, bad columns/rows, user regions;
* :mod:`.overscan` -- FITS sections, overscan subtraction, trim;
* :mod:`.cosmics` -- cosmic rays (sparse L.A.Cosmic);
* :mod:`.variance`, :mod:`.interp` -- noise model and masked-pixel filling;
* :mod:`.skyflat` -- a night-sky flat from drifting or dithered lights (no flat frames);
* :mod:`.process` -- calibrate one frame into SCI / MASK / VAR.
"""

from darkroom._lazy import lazy_exports

# what each submodule exports; loaded when first asked for (importing a package's settings
# module must not import its algorithms)
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "settings": [
            "BadPixelConfig",
            "CalibrationConfig",
            "CombineConfig",
            "CosmicRayConfig",
            "GroupingConfig",
            "MasterComparisonConfig",
            "MasterConfig",
            "OverscanConfig",
            "RequireConfig",
            "SkyFlatConfig",
        ],
        "badpix": [
            "BadPixelMask",
            "BadPixelReason",
            "UserBadPixels",
            "build_bad_pixel_mask",
            "parse_user_badpixels",
            "read_user_badpixels",
        ],
        "combine": ["CombineResult", "combine_frames"],
        "cosmics": ["CosmicRayResult", "detect_cosmic_rays"],
        "grouping": ["CalibGroup", "CalibKey", "MasterRecord", "group_calibration_frames", "select_master"],
        "masters": [
            "MasterComparison",
            "MasterFrame",
            "compare_masters",
            "make_master_bias",
            "make_master_dark",
            "make_master_flat",
            "master_from_hdus",
            "master_to_hdus",
        ],
        "noise": [
            "GainReadNoise",
            "LinearityResult",
            "PTCConfig",
            "PTCResult",
            "linearity_from_flats",
            "photon_transfer_curve",
            "two_frame_gain_read_noise",
        ],
        "overscan": ["parse_section", "subtract_overscan", "trim_image"],
        "skyflat": ["SkyFlat", "SkyFlatAccumulator", "make_sky_flat"],
        "process": ["CalibratedFrame", "calibrate_frame", "prepare_raw"],
    },
)
