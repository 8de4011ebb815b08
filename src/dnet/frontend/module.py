"""dnet.Module and dnet.Parameter: models written in Python, in the style PyTorch users know.

A Module's attributes become member symbols of its object: Parameters become
parameters, child Modules become child objects, ints/floats/bools/strings become
constants. `trace` runs `forward` on symbolic tensors and records object IR.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import DnetError, Location, WeightError
from dnet.frontend import trace as tr
from dnet.objects.ir import Argument, Call, Function, Object, ObjectModule, Ref
from dnet.objects.symbols import SymbolFlag, SymbolKind


# How a Module called on arrays (not while tracing) runs. The API layer above sets it (compile
# for these inputs, then run), so that this layer need not import the one above it.
EagerCall = Callable[["Module", tuple, dict], Any]
_eager_call: EagerCall | None = None


def set_eager_call(run: EagerCall) -> None:
    global _eager_call
    _eager_call = run


class Parameter:
    """A weight: a declared type, and data once loaded."""

    def __init__(self, data: np.ndarray | None = None, *, shape: Sequence | None = None,
                 dtype: DType | str = DType.F32):
        if data is not None:
            data = np.ascontiguousarray(data)
            self.type = TensorType(tuple(data.shape), DType.from_numpy(data.dtype))
        else:
            if shape is None:
                raise WeightError("a Parameter needs data or a shape")
            self.type = TensorType(tuple(shape), DType.parse(dtype) if isinstance(dtype, str) else dtype)
        self.data = data

    def load(self, array: np.ndarray, name: str = "") -> None:
        array = np.asarray(array)
        if tuple(array.shape) != tuple(self.type.shape):
            raise WeightError(f"weight '{name}' has shape {tuple(array.shape)}, the model expects "
                              f"{tuple(self.type.shape)}")
        if DType.from_numpy(array.dtype) != self.type.dtype:
            raise WeightError(f"weight '{name}' has dtype {DType.from_numpy(array.dtype)}, the model expects "
                              f"{self.type.dtype}")
        self.data = np.ascontiguousarray(array)

    def __repr__(self) -> str:
        return f"Parameter({self.type}{', loaded' if self.data is not None else ''})"


_CONSTANT_TYPES = (int, float, bool, str)


class Module:
    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_trace_info", None)

    # -- attributes --------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise DnetError(f"{type(self).__name__}.__init__ must call super().__init__() before setting '{name}'",
                            tr.user_location())
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("_parameters", {})
        if name in params:
            info = self.__dict__.get("_trace_info")
            if info is not None and tr.tracing():
                return _parameter_tensor(self, name, info)
            return params[name]
        modules = self.__dict__.get("_modules", {})
        if name in modules:
            return modules[name]
        raise AttributeError(f"'{type(self).__name__}' has no attribute '{name}'")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise DnetError(f"{type(self).__name__} defines no forward", tr.user_location(),
                        "define forward(self, ...) to say what the module computes")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if tr.tracing():
            return _traced_call(self, args, kwargs)
        if _eager_call is None:
            raise DnetError(f"{type(self).__name__} is called on arrays outside tracing; compile it with "
                            "dnet.compile (importing dnet makes such a call compile and run it)")
        return _eager_call(self, args, kwargs)

    # -- structure -----------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for path, m in self.named_modules():
            for name, p in m._parameters.items():
                yield (f"{path}.{name}" if path else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def constants(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("_") and isinstance(v, _CONSTANT_TYPES)}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: p.data for name, p in self.named_parameters() if p.data is not None}

    def load_state_dict(self, weights: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Load weights by dotted name; every mismatch is a WeightError naming the weight."""
        params = dict(self.named_parameters())
        if strict:
            missing = sorted(set(params) - set(weights))
            unexpected = sorted(set(weights) - set(params))
            if missing:
                raise WeightError(f"missing weight(s): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                raise WeightError(f"unexpected weight(s): {', '.join(unexpected[:8])}"
                                  + (" ..." if len(unexpected) > 8 else ""))
        for name, array in weights.items():
            if name in params:
                params[name].load(array, name)

    def trace(self, *inputs: TensorType, **named: TensorType) -> ObjectModule:
        return trace_module(self, *inputs, **named)


class ModuleList(Module):
    """Child modules addressed by index ('layers.0', 'layers.1', ...)."""

    def __init__(self, modules: Sequence[Module] = ()):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i: int) -> Module:
        if not -len(self) <= i < len(self):  # IndexError, as for any Python sequence (and torch's ModuleList)
            raise IndexError(f"index {i} is out of range for a {type(self).__name__} of {len(self)} modules")
        return self._modules[str(i % len(self))]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def append(self, m: Module) -> None:
        setattr(self, str(len(self)), m)


class Sequential(ModuleList):
    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


# -- tracing -------------------------------------------------------------------------------
class _TraceInfo:
    def __init__(self, obj: Object, path: str):
        self.obj, self.path = obj, path


def _build_objects(module: Module, path: str) -> Object:
    obj = Object(type(module).__name__, path)
    object.__setattr__(module, "_trace_info", _TraceInfo(obj, path))
    for name, value in module.constants().items():
        obj.add_constant(name, value)
    for name, p in module._parameters.items():
        obj.add_parameter(name, p.type, p.data)
    for name, child in module._modules.items():
        obj.add_child(name, _build_objects(child, f"{path}.{name}" if path else name))
    return obj


def _clear_trace_info(module: Module) -> None:
    for _, m in module.named_modules():
        object.__setattr__(m, "_trace_info", None)


def _parameter_tensor(module: Module, name: str, info: _TraceInfo) -> tr.Tensor:
    p = module._parameters[name]
    st = tr.state()
    path = f"{info.path}.{name}" if info.path else name
    # The shadow graph only needs types: a zero-stride stand-in costs no memory.
    data = p.data if p.data is not None else np.broadcast_to(np.zeros((), p.type.dtype.np), _static(p.type, path))
    return tr.Tensor(Ref(name), st.shadow.const(path, data))


def _static(t: TensorType, path: str) -> tuple[int, ...]:
    if not all(isinstance(d, int) for d in t.shape):
        raise WeightError(f"parameter shapes must be static, got {t}", Location(symbol=path))
    return tuple(t.shape)


def _argument(name: str, value: Any) -> Argument:
    if isinstance(value, tr.Tensor):
        return Argument(name, SymbolKind.TENSOR, SymbolFlag.EXTERNAL, value.type)
    if value is None:
        return Argument(name, SymbolKind.TENSOR, SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL)
    return Argument(name, SymbolKind.SCALAR, SymbolFlag.EXTERNAL)


def _record_forward(module: Module, info: _TraceInfo, params: list[tuple[str, Any]]) -> tuple[str, Any]:
    """Trace `module.forward` into a function of its object; returns (function name, traced result)."""
    fn = Function("forward", [_argument(n, v) for n, v in params])
    local_args = [tr.Tensor(Ref(n), v.value) if isinstance(v, tr.Tensor) else v for n, v in params]
    st = tr.state()
    with tr.recording(fn, info.path), st.shadow.at(info.path or type(module).__name__):
        out = module.forward(*local_args)
        fn.result = tr.to_expr(out)
    return info.obj.add_or_reuse_function(fn), out


def _traced_call(module: Module, args: tuple, kwargs: dict) -> Any:
    info: _TraceInfo | None = module._trace_info
    if info is None:
        raise DnetError(f"module {type(module).__name__} is called while tracing but is not part of the traced "
                        "model (assign it as an attribute of its parent)", tr.user_location())
    sig = inspect.signature(module.forward)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    params = list(bound.arguments.items())
    caller = tr.state().current
    name, out = _record_forward(module, info, params)
    target = _relative(info.path, caller.owner_path) + "." + name
    call = Call(target, tuple(tr.to_expr(v) for _, v in params))
    return _rebind(call, out)


def _relative(path: str, caller_path: str) -> str:
    if caller_path:
        if not path.startswith(caller_path + "."):
            raise DnetError(f"module '{path}' is called from '{caller_path}', which does not own it",
                            tr.user_location())
        return path[len(caller_path) + 1:]
    return path


def _rebind(call: Call, out: Any) -> Any:
    """Bind the call's result in the caller; traced outputs keep their shadow values."""
    if isinstance(out, tuple) and all(isinstance(o, tr.Tensor) for o in out):
        return tr.bind(call, tuple(o.value for o in out), "r")
    if isinstance(out, tr.Tensor):
        return tr.bind(call, out.value, "r")
    if out is None or isinstance(out, (int, float, bool)):
        return out
    raise DnetError(f"forward returned {type(out).__name__}; return a tensor or a tuple of tensors",
                    tr.user_location())


def trace_module(module: Module, *inputs: TensorType, **named: TensorType) -> ObjectModule:
    """Trace `module.forward` on tensors of the given types into an ObjectModule."""
    try:
        bound = inspect.signature(module.forward).bind(*inputs, **named)
    except TypeError as err:
        raise DnetError(f"cannot call {type(module).__name__}.forward with these inputs: {err}",
                        tr.user_location()) from None
    root = _build_objects(module, "")
    try:
        with tr.new_trace() as st:
            params = []
            for name, t in bound.arguments.items():
                if isinstance(t, TensorType):
                    params.append((name, tr.Tensor(Ref(name), st.shadow.input(name, t))))
                elif isinstance(t, np.ndarray):
                    raise DnetError(f"input '{name}' is an array; compiling takes the types of the inputs",
                                    tr.user_location(), f"give dnet.TensorType({tuple(t.shape)}, "
                                    f"dnet.{DType.from_numpy(t.dtype).name.lower()})")
                else:
                    params.append((name, t))
            with tr.recording(Function("<caller>")):
                entry, _ = _record_forward(module, module._trace_info, params)
        result = ObjectModule(root, entry=entry)
        result.shadow = st.shadow.graph  # type: ignore[attr-defined]
        return result
    finally:
        _clear_trace_info(module)
