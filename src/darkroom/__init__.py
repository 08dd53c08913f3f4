"""darkroom: raw astronomical frames in; calibrated images, catalogs, photometry and light curves out.

The algorithm packages (``instruments``, ``calib``, ``detect``, ``astrom``, ``phot``,
``timeseries``, ``catalogs``, ``imaging``, ``sim``) take arrays and headers and return
plain results. ``repo`` owns the registry and the file store; ``pipeline`` wires the
two together; ``cli`` is the command-line face.
"""

from darkroom.constants import __version__

__all__ = ["Repository", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import darkroom` stays cheap for the algorithm layer.
    if name == "Repository":
        from darkroom.facade import Repository

        return Repository
    raise AttributeError(name)
