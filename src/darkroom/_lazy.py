"""Package exports loaded on first use (PEP 562), so that importing one light module of a
package (its ``settings``) does not import every algorithm module beside it.

A package ``__init__`` lists what it exports and where each name lives::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"solve": ["solve_frame", ...]})

``from darkroom.astrom import solve_frame`` and ``darkroom.astrom.solve_frame`` work as
before; the submodule is imported the first time one of its names is asked for.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


class _LazyPackage(types.ModuleType):
    """A package whose exports win over its submodules of the same name.

    Importing ``pkg.associate`` binds the module to ``pkg.associate``; when the package
    exports a function ``associate`` (darkroom.timeseries), the function must stay what
    ``pkg.associate`` means, as it did when ``__init__`` imported it eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        where = self.__dict__.get("_lazy_where", {})
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{where.get(name)}":
            if name in self.__dict__:
                return  # the export is already bound
            value = getattr(value, name, value)
        super().__setattr__(name, value)


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package`` and its ``__all__``.

    ``exports`` maps a submodule name (relative to ``package``) to the names it exports.
    A name is looked up once and then kept in the package's namespace.
    """
    where = {name: sub for sub, names in exports.items() for name in names}
    module = sys.modules[package]
    module.__dict__["_lazy_where"] = where
    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(where))

    return __getattr__, __dir__, sorted(where)
