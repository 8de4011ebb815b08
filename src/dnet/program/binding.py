"""Binding a call's inputs: the one check and the one symbol binding every backend runs through.

Every backend takes the same named numpy arrays and must refuse the same bad calls with the same
one-line errors: a missing or unknown input, an unsafe cast, a shape that does not match its
declaration, a symbol no input fixes, a state that is not the caller's own writeable array. This
module does all of it once; a backend gets back the symbol values and the arrays to read (inputs
cast to their declared dtype and made contiguous; states exactly as given, since they are written
in place).

`InputBinder.of_program(program)` binds a program's inputs (what a compiled backend runs);
`InputBinder.of_graph(graph)` binds a graph's (what the numpy reference interprets).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, bind_shape, shape_str
from dnet.errors import ShapeError
from dnet.program.inputs import input_array
from dnet.program.instructions import STATE, Program

_MAX_REMEMBERED = 4096     # shapes whose binding is remembered; past that the memory starts over


@dataclass(frozen=True)
class InputSpec:
    """One declared input: its name, dtype, (symbolic) shape, and whether it is a state."""
    name: str
    dtype: DType
    shape: tuple
    state: bool = False


@dataclass(frozen=True)
class Bound:
    """A bound call: symbol values and the arrays to read, by input name."""
    env: dict[str, int]
    arrays: dict[str, np.ndarray]


class InputBinder:
    """Checks a call's inputs against their declarations and binds the symbols of their shapes.

    It remembers what each (input, shape) binds alone: a decode step binds the same shapes to dozens
    of states every token, and checking them again is the larger part of a small model's call.
    """

    def __init__(self, specs: Sequence[InputSpec], symbols: Sequence[str] = ()):
        self.specs = tuple(specs)
        self.symbols = tuple(symbols)
        self._names = [s.name for s in self.specs]
        self._remembered: dict[tuple, dict | bool] = {}
        # a dim that is an expression of symbols (2*n, n+1) is checked against the whole binding every call
        self._compound = {s.name: any(isinstance(d, Dim) and not _is_symbol(d) for d in s.shape) for s in self.specs}

    @classmethod
    def of_program(cls, program: Program) -> "InputBinder":
        specs = []
        for name, buf in program.inputs.items():
            b = program.buffers[buf]
            specs.append(InputSpec(name, b.dtype, b.shape, b.kind == STATE))
        return cls(specs, program.symbols)

    @classmethod
    def of_graph(cls, graph: Any) -> "InputBinder":
        from dnet.graph.ops import Op

        specs = []
        for i in graph.inputs:
            node = graph.nodes[i]
            specs.append(InputSpec(node.attrs["name"], node.dtype, node.shape, node.op is Op.STATE))
        return cls(specs, ())

    def bind(self, inputs: Mapping[str, Any], cast: bool = True) -> Bound:
        """Check `inputs` and bind the symbols. `cast=False` checks the inputs' dtypes without
        making converted copies (the numpy reference reads the caller's arrays as they are)."""
        env: dict[str, int] = {}
        arrays: dict[str, np.ndarray] = {}
        for spec in self.specs:
            if spec.name not in inputs:
                raise ShapeError(f"missing input '{spec.name}' of type {spec.dtype}{shape_str(spec.shape)}",
                                 hint="inputs are " + ", ".join(self._names))
            value = inputs[spec.name]
            if spec.state:
                array = state_array(spec.name, value, spec.dtype)
            else:
                array = input_array(spec.name, value, spec.dtype)
                if cast:
                    array = np.ascontiguousarray(array, dtype=spec.dtype.np)
            if not self._bind_shape(spec, array.shape, env):
                raise ShapeError(f"input '{spec.name}' has shape {array.shape}, expected {shape_str(spec.shape)}"
                                 + (f" with {env}" if env else ""))
            arrays[spec.name] = array
        extra = set(inputs) - set(self._names)
        if extra:
            raise ShapeError(f"unknown input(s) {sorted(extra)}", hint="inputs are " + ", ".join(self._names))
        missing = [s for s in self.symbols if s not in env]
        if missing:
            raise ShapeError(f"symbols {missing} are not fixed by the input shapes")
        return Bound(env, arrays)

    def _bind_shape(self, spec: InputSpec, shape: tuple, env: dict[str, int]) -> bool:
        key = (spec.name, shape)
        alone = self._remembered.get(key)
        if alone is None:
            if len(self._remembered) > _MAX_REMEMBERED:      # many prompt lengths seen: start over
                self._remembered.clear()
            alone = {}
            alone = alone if bind_shape(spec.shape, shape, alone) else False
            self._remembered[key] = alone
        if alone is False or any(env.setdefault(k, v) != v for k, v in alone.items()):
            return False
        return bind_shape(spec.shape, shape, env) if self._compound[spec.name] else True


def state_array(name: str, value: Any, dtype: DType) -> np.ndarray:
    """A state is written in place, so it is bound as it is: never a converted copy."""
    if not isinstance(value, np.ndarray) or value.dtype != dtype.np or not value.flags.c_contiguous \
            or not value.flags.writeable:
        raise ShapeError(f"state '{name}' must be a writeable C-contiguous {dtype} numpy array")
    return value


def _is_symbol(d: Dim) -> bool:
    return len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1 and isinstance(d.terms[0][0][0], str)
