"""PyTorch import: `from_torch(module, example_args)` through torch.export.

torch.export captures the module as an FX graph of core-ATen ops; each op is
rebuilt from dnet operations by a rule (`aten.RULES`, one per ATen overload), and
the result is object IR like every other frontend's. Importing this package needs
torch; `import dnet` does not.
"""
from __future__ import annotations

from typing import Any, Mapping

from dnet.errors import DnetError

try:
    import torch
except ImportError as err:  # pragma: no cover - depends on the environment
    raise DnetError("dnet.from_torch needs PyTorch", hint="pip install 'dnet[torch]'") from err

from dnet.frontend.torch_import.aten import RULES
from dnet.frontend.torch_import.export import TorchExportError, dim_names, export_program
from dnet.frontend.torch_import.importer import import_program
from dnet.objects.ir import ObjectModule

__all__ = ["from_torch", "RULES", "TorchExportError"]


def from_torch(module: torch.nn.Module, example_args: Any, dynamic_shapes: Any = None, *,
               example_kwargs: Mapping[str, Any] | None = None, strict: bool = False) -> ObjectModule:
    """Import `module` as object IR, exported on `example_args` (a tensor or a tuple).

    `dynamic_shapes` is torch.export's: a dim given as `torch.export.Dim('batch')`
    stays a symbol named `batch` in dnet's input types, so one compiled model runs at
    every size; other dims are fixed at the example's size.
    """
    args = example_args if isinstance(example_args, tuple) else (example_args,)
    kwargs = dict(example_kwargs or {})
    program = export_program(module, args, kwargs, dynamic_shapes, strict)
    names = dim_names(program, module, args, kwargs, dynamic_shapes)
    return import_program(program, names, type(module).__name__)
