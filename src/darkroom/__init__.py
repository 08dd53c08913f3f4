"""darkroom: raw astronomical frames in; calibrated images, catalogs, photometry and light curves out.

The algorithm packages (``instruments``, ``calib``, ``detect``, ``astrom``, ``phot``,
``timeseries``, ``catalogs``, ``imaging``, ``sim``) take arrays and headers and return
plain results. ``repo`` owns the registry and the file store; ``pipeline`` wires the
two together; ``cli`` is the command-line face.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("darkroom")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["Repository", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import darkroom` stays cheap for the algorithm layer.
    if name == "Repository":
        from darkroom.repo.repository import Repository

        return Repository
    raise AttributeError(name)
