"""Where topologies come from besides files: sources that higher layers provide (a Ray cluster, ...).

The topology layer knows nothing of clusters or Ray. The package root (`dnet/__init__.py`) registers each
source by the dotted path of the function that builds it, and that module is imported only when the source
is first used: `Topology.from_ray()` costs nothing to a user who never calls it.
"""
from __future__ import annotations

import importlib
from typing import Any

from dnet.errors import DnetError, did_you_mean

_SOURCES: dict[str, str] = {}   # name -> "package.module:function"


def register(name: str, target: str) -> None:
    """`target` ("package.module:function") builds a Topology from the source's own arguments."""
    _SOURCES[name] = target


def build(name: str, *args: Any, **kwargs: Any) -> Any:
    """The Topology the named source builds from these arguments."""
    if name not in _SOURCES:
        raise DnetError(f"no topology source '{name}'",
                        hint=did_you_mean(name, _SOURCES) or "sources: " + (", ".join(sorted(_SOURCES)) or "none"))
    module, _, function = _SOURCES[name].partition(":")
    return getattr(importlib.import_module(module), function)(*args, **kwargs)
