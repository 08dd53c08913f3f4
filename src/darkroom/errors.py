"""Typed errors whose message is the one-line reason the runner records.

Every error raised on purpose by darkroom derives from :class:`DarkroomError`. Its
``reason`` is a single line meant for ``darkroom status`` and the registry; the
pipeline quarantines the input when ``quarantine`` is true (the input is at fault),
and only marks the task failed otherwise.
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "CalibrationError",
    "ConfigError",
    "DarkroomError",
    "MissingCalibrationError",
    "ProfileError",
    "RegistryError",
    "SolveError",
]


class DarkroomError(Exception):
    """Base class. ``str(err)`` is a one-line reason."""

    quarantine: bool = False

    def __init__(self, reason: str, **details: object) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the caller passed
        super().__init__(reason)
        self.reason = reason
        self.details = details


class ConfigError(DarkroomError):
    """A configuration value is invalid or unknown."""


class BadInputError(DarkroomError):
    """The input file itself cannot be used (corrupt, empty, no image data, ...)."""

    quarantine = True


class ProfileError(BadInputError):
    """The header lacks what the instrument profile needs (type, exposure, time)."""


class RegistryError(DarkroomError):
    """The registry database cannot be reached, does not exist, or its URL is wrong."""


class MissingCalibrationError(DarkroomError):
    """No master calibration frame matches a frame that needs one."""


class CalibrationError(DarkroomError):
    """Calibration could not be carried out (shape mismatch, all pixels bad, ...)."""


class SolveError(DarkroomError):
    """An astrometric or photometric solution failed (too few stars, no match, ...)."""
