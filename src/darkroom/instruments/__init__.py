"""darkroom.instruments: header profiles -> normalised frame metadata.

Usage::

    from darkroom.instruments import load_profiles, normalize
    profiles = load_profiles(extra_dirs=(Path("~/myprofiles"),))  # user first, built-ins, generic last
    meta = normalize(header, filename="bias1.FIT.gz", shape=(ny, nx), profiles=profiles)

See docs/instruments.md for the YAML profile schema.
"""

from darkroom.instruments.metadata import FRAME_TYPES, FrameMetadata, FrameType
from darkroom.instruments.normalize import describe, normalize
from darkroom.instruments.profile import (
    BUILTIN_DIR,
    BUILTIN_PROFILE_NAMES,
    InstrumentProfile,
    load_profile_file,
    load_profiles,
    match_profile,
)

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_PROFILE_NAMES",
    "FRAME_TYPES",
    "FrameMetadata",
    "FrameType",
    "InstrumentProfile",
    "describe",
    "load_profile_file",
    "load_profiles",
    "match_profile",
    "normalize",
]
