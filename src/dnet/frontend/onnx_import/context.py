"""What a rule sees of the node it builds: attributes, the builder, and its inputs as tensors or statics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dnet.errors import UnsupportedOpError
from dnet.frontend.onnx_import.values import Missing, Static, dims_of, materialize
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ops import Op

Input = Static | Value | Missing | None  # None: an optional input left out ('')


@dataclass
class Context:
    b: GraphBuilder
    op_type: str
    opset: int
    attrs: dict[str, Any]
    output: str  # the node's first output name: folded values are materialised under it
    n_outputs: int = 1

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def tensor(self, x: Input) -> Value:
        """`x` as a graph node (a static value is materialised once)."""
        if x is None:
            raise UnsupportedOpError("an input it needs is left out")
        if isinstance(x, Missing):
            raise UnsupportedOpError(f"it uses {x.what}, which dnet does not compute")
        return materialize(self.b, x) if isinstance(x, Static) else x

    def static(self, x: Input, what: str) -> Static:
        """`x`, which must be known at import time (a shape, axes, pads)."""
        if isinstance(x, Static):
            return x
        raise UnsupportedOpError(f"its {what} is computed from tensor data",
                                 hint="dnet needs it known at import time, from shapes and constants")

    def ints(self, x: Input, what: str) -> list:
        """A static integer input as a list of ints and dims."""
        return dims_of(self.static(x, what), f"its {what}")

    def axes(self, x: Input = None) -> list | None:
        """Axes given as the `axes` attribute (older opsets) or as an input (newer ones); None if neither."""
        if x is not None:
            return [int(a) for a in self.ints(x, "axes")]
        axes = self.attr("axes")
        return None if axes is None else [int(a) for a in axes]

    def shape(self, x: Input) -> tuple:
        return x.array.shape if isinstance(x, Static) else self.b.shape(x)

    def rank(self, x: Input) -> int:
        return len(self.shape(x))

    def static_out(self, array) -> Static:
        return Static(array, self.output)

    def node(self, op: Op, inputs: list, **attrs: Any) -> Value:
        return self.b.node(op, [self.tensor(i) for i in inputs], **attrs)
