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
* :mod:`.process` -- calibrate one frame into SCI / MASK / VAR.
"""

from .badpix import (
    BadPixelConfig,
    BadPixelMask,
    BadPixelReason,
    UserBadPixels,
    build_bad_pixel_mask,
    parse_user_badpixels,
    read_user_badpixels,
)
from .combine import CombineConfig, CombineResult, combine_frames
from .cosmics import CosmicRayConfig, CosmicRayResult, detect_cosmic_rays
from .grouping import (
    CalibGroup,
    CalibKey,
    GroupingConfig,
    MasterRecord,
    group_calibration_frames,
    select_master,
)
from .masters import (
    MasterComparison,
    MasterComparisonConfig,
    MasterConfig,
    MasterFrame,
    compare_masters,
    make_master_bias,
    make_master_dark,
    make_master_flat,
    master_from_hdus,
    master_to_hdus,
)
from .noise import (
    GainReadNoise,
    LinearityResult,
    PTCConfig,
    PTCResult,
    linearity_from_flats,
    photon_transfer_curve,
    two_frame_gain_read_noise,
)
from .overscan import OverscanConfig, parse_section, subtract_overscan, trim_image
from .process import CalibratedFrame, CalibrationConfig, RequireConfig, calibrate_frame, prepare_raw

__all__ = [
    "BadPixelConfig",
    "BadPixelMask",
    "BadPixelReason",
    "CalibGroup",
    "CalibKey",
    "CalibratedFrame",
    "CalibrationConfig",
    "CombineConfig",
    "CombineResult",
    "CosmicRayConfig",
    "CosmicRayResult",
    "GainReadNoise",
    "GroupingConfig",
    "LinearityResult",
    "MasterComparison",
    "MasterComparisonConfig",
    "MasterConfig",
    "MasterFrame",
    "MasterRecord",
    "OverscanConfig",
    "PTCConfig",
    "PTCResult",
    "RequireConfig",
    "UserBadPixels",
    "build_bad_pixel_mask",
    "calibrate_frame",
    "combine_frames",
    "compare_masters",
    "detect_cosmic_rays",
    "group_calibration_frames",
    "linearity_from_flats",
    "make_master_bias",
    "make_master_dark",
    "make_master_flat",
    "master_from_hdus",
    "master_to_hdus",
    "parse_section",
    "parse_user_badpixels",
    "photon_transfer_curve",
    "prepare_raw",
    "read_user_badpixels",
    "select_master",
    "subtract_overscan",
    "trim_image",
    "two_frame_gain_read_noise",
]
