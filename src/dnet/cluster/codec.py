"""Typed records over dnet's frames: one generic encode and a checked decode for any frozen dataclass.

A frame (`protocol.Message`) carries a kind, a JSON meta object and tensors. A record is a
frozen dataclass (`@record`, a `Record` with its `kind` and the `tensors` it must carry) whose
fields are that meta's entries, so the wire is plain JSON: `encode(record, tensors)` gives the
frame (tensors passed through as they are, never copied), and an `Accepted` table, one per
reading side, gives the record back after checking every field against its annotation. A
missing field, a field of the wrong type, a field the record does not have, a required tensor
that is absent or a kind the table does not hold is a `MessageError` naming the message and the
field (with its path inside lists and nested records: `trace[1][2]`, `next.port`).

Annotations understood: str, int (never a bool), float (an int is taken), bool, Any, `X | None`,
`tuple[X, ...]` and `tuple[X, Y]` (JSON lists), `dict[str, X]` and nested dataclasses. The
checkers are built once per record from them, and the decoder and the meta writer of each record
are made as straight-line code, because every RUN and RESULT of a decode step passes through
them. The cluster's messages themselves are in `dnet.cluster.messages`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

import numpy as np

from dnet.cluster.protocol import Message, MsgType, ProtocolError


class MessageError(ProtocolError):
    """A well-framed message that is not a valid message of its kind: it names the message and the field."""


class _Invalid(Exception):
    """Raised by a checker (cheap, internal): which field, what it should be, what it was. The path is
    built on the way out, only when a check fails ("[2]", ".port", "slots" as the error rises)."""

    def __init__(self, expected: str, value: Any, path: str = ""):
        super().__init__(expected)
        self.path, self.expected, self.value = path, expected, value

    def under(self, prefix: str) -> "_Invalid":
        self.path = prefix + self.path
        return self


_MISSING = object()    # an _Invalid's value: the field is absent
_REFUSED = object()    # an _Invalid's value: the record's own check refused it (its reason in `expected`)
_UNKNOWN = object()    # an _Invalid's value: the record has no such field (the known ones in `expected`)
_REQUIRED = object()
_MADE = object()       # a _Field's default: made by its factory for each value, never shared
Checker = Callable[[Any], Any]   # value -> the value as the record holds it, or raises _Invalid


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _exact(kind: type, name: str) -> Checker:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Invalid(name, value)
        return value
    return check


def _float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:   # JSON writes 2.0 as 2.0, but a hand-made 2 is as good
        return float(value)
    raise _Invalid("a number", value)


def _any(value: Any) -> Any:
    return value


def _where(check: Checker, items: Iterable[tuple[str, Any]]) -> _Invalid:
    """After a container's check failed: the failing item's error, its path prefixed (the slow path only)."""
    for prefix, item in items:
        try:
            check(item)
        except _Invalid as bad:
            return bad.under(prefix)
    raise AssertionError("a check that failed passed on the second look")


def _checker(hint: Any) -> tuple[Checker, str]:
    """A checker for one annotation, and the annotation's name for error messages."""
    if hint is Any:
        return _any, "anything"
    if hint is str:
        return _exact(str, "a string"), "a string"
    if hint is bool:
        return _exact(bool, "true or false"), "true or false"
    if hint is int:
        return _exact(int, "an integer"), "an integer"
    if hint is float:
        return _float, "a number"
    if dataclasses.is_dataclass(hint):
        return (lambda value: _build(hint, value, ".")), f"a {hint.__name__} object"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"messages: only X | None unions, got {hint}")
        check, name = _checker(inner[0])

        def optional(value: Any) -> Any:
            if value is None:
                return None
            try:
                return check(value)
            except _Invalid as bad:
                if not bad.path and bad.value is value:   # the value itself is wrong, not an item of it
                    bad.expected += " or null"
                raise
        return optional, f"{name} or null"
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        check, name = _checker(args[0])

        def sequence(value: Any) -> tuple:
            if type(value) is not list and type(value) is not tuple:
                raise _Invalid(f"a list of {name}", value)
            try:
                return tuple(map(check, value))
            except _Invalid:
                raise _where(check, ((f"[{i}]", item) for i, item in enumerate(value))) from None
        return sequence, f"a list of {name}"
    if origin is tuple:
        checks = [_checker(a) for a in args]
        shape = f"[{', '.join(name for _, name in checks)}]"
        only = [c for c, _ in checks]
        # (stage, worker, seconds) in every RUN's trace: items of these exact types are taken without a call
        kinds = [a if a in (str, int, bool, float) else None for a in args]

        def fixed(value: Any) -> tuple:
            if (type(value) is not list and type(value) is not tuple) or len(value) != len(only):
                raise _Invalid(shape, value)
            for kind, item in zip(kinds, value):
                if type(item) is not kind:
                    break
            else:
                return tuple(value)
            out = []
            for i, item in enumerate(value):
                try:
                    out.append(only[i](item))
                except _Invalid as bad:
                    raise bad.under(f"[{i}]") from None
            return tuple(out)
        return fixed, shape
    if origin is dict and args and args[0] is str:
        check, name = _checker(args[1])

        def mapping(value: Any) -> dict:
            if type(value) is not dict:
                raise _Invalid(f"an object of {name}", value)
            out = {}
            for key, item in value.items():
                if type(key) is not str:   # (JSON keys are strings; a record made in process may not be)
                    raise _Invalid("an object with string keys", key)
                try:
                    out[key] = check(item)
                except _Invalid as bad:
                    raise bad.under(f".{key}") from None
            return out
        return mapping, f"an object of {name}"
    raise TypeError(f"messages: no checker for the annotation {hint}")


@dataclass(frozen=True)
class _Field:
    name: str
    exact: type | None      # a value of exactly this type is taken as it is (the common case, no call)
    check: Checker
    expected: str
    default: Any             # _REQUIRED when the field must be present, _MADE when `factory` makes it
    factory: Callable[[], Any] | None   # a default made afresh for each value (a dict of a nested Device)
    nested: bool             # holds dataclasses: encoded through _to_json (the rest JSON writes as it is)


@dataclass(frozen=True)
class _Spec:
    fields: tuple[_Field, ...]
    names: frozenset[str]
    order: tuple[str, ...]
    post_init: Callable[[Any], None] | None   # the record's own check of its values, if it has one


_SPECS: dict[type, _Spec] = {}


def _spec(cls: type) -> _Spec:
    """The fields of a dataclass as checkers (built on first use, then kept)."""
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            check, expected = _checker(hints[f.name])
            exact = hints[f.name] if hints[f.name] in (str, int, bool, float) else None
            factory = None
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default, factory = _MADE, f.default_factory
            else:
                default = _REQUIRED
            fields.append(_Field(f.name, exact, check, expected, default, factory, _holds_dataclass(hints[f.name])))
        order = tuple(f.name for f in fields)
        spec = _SPECS[cls] = _Spec(tuple(fields), frozenset(order), order, getattr(cls, "__post_init__", None))
    return spec


def _holds_dataclass(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) or any(_holds_dataclass(a) for a in typing.get_args(hint))


def _build(cls: type, meta: Any, sep: str = "") -> Any:
    """An instance of the dataclass `cls` from a JSON object, every field checked. `sep` goes before a field's
    name in an error's path: "" for a message's own fields, "." inside another record."""
    spec = _spec(cls)
    fields, names = spec.fields, spec.names
    if type(meta) is not dict:
        raise _Invalid("an object", meta)
    if not meta.keys() <= names:
        unknown = sorted(set(meta) - names)[0]
        raise _Invalid(", ".join(sorted(names)), _UNKNOWN, sep + unknown)
    values = []
    for f in fields:
        value = meta.get(f.name, _MISSING)
        if value is _MISSING:
            if f.default is _REQUIRED:
                raise _Invalid(f.expected, _MISSING, sep + f.name)
            value = f.factory() if f.factory is not None else f.default
        elif type(value) is not f.exact:
            try:
                value = f.check(value)
            except _Invalid as bad:
                raise bad.under(sep + f.name) from None
        values.append(value)
    # every value is checked already: set the fields as the dataclass's __init__ would, without its cost (a
    # frozen dataclass sets each through object.__setattr__), then run the record's own check
    record = object.__new__(cls)
    record.__dict__.update(zip(spec.order, values))
    if spec.post_init is not None:
        try:
            spec.post_init(record)
        except ValueError as err:
            raise _Invalid(str(err), _REFUSED) from None
    return record


_FAST: dict[type, Callable[[Any], Any]] = {}


def _fast_builder(cls: type) -> Callable[[Any], Any]:
    """`_build(cls, meta)` as straight-line code made for `cls` (as `dataclasses` makes an `__init__`): every
    RUN and RESULT of a decode step is built here, and a loop over field objects costs several times more. It
    takes the common case only (known fields, each present or defaulted, each checked); anything else, and any
    check that fails, goes to `_build`, which raises the error with its path."""
    builder = _FAST.get(cls)
    if builder is not None:
        return builder
    spec = _spec(cls)
    env: dict[str, Any] = {"cls": cls, "names": spec.names, "slow": lambda meta: _build(cls, meta),
                           "new": object.__new__, "post": spec.post_init, "MISSING": _MISSING,
                           "Invalid": _Invalid, "REFUSED": _REFUSED}
    lines = ["def build(meta):",
             "    if type(meta) is not dict or not meta.keys() <= names:",
             "        return slow(meta)",
             "    try:"]
    for i, f in enumerate(spec.fields):
        env[f"check{i}"], env[f"default{i}"], env[f"exact{i}"], env[f"factory{i}"] = f.check, f.default, f.exact, \
            f.factory
        lines.append(f"        v{i} = meta.get({f.name!r}, MISSING)")
        missing = ("return slow(meta)" if f.default is _REQUIRED else
                   f"v{i} = factory{i}()" if f.factory is not None else f"v{i} = default{i}")
        lines.append(f"        if v{i} is MISSING: {missing}")
        lines.append(f"        elif type(v{i}) is not exact{i}: v{i} = check{i}(v{i})")
    if not spec.fields:
        lines.append("        pass")
    lines += ["    except Invalid:",
              "        return slow(meta)",
              "    record = new(cls)",
              "    record.__dict__.update({" + ", ".join(f"{f.name!r}: v{i}" for i, f in enumerate(spec.fields)) + "})"]
    if spec.post_init is not None:
        lines += ["    try:",
                  "        post(record)",
                  "    except ValueError as err:",
                  "        raise Invalid(str(err), REFUSED) from None"]
    lines.append("    return record")
    exec("\n".join(lines), env)   # noqa: S102 - code made here from a dataclass's own field names
    builder = _FAST[cls] = env["build"]
    return builder


def to_json(value: Any) -> Any:
    """A record's value as JSON: nested dataclasses as objects (their None fields left out), the rest as is."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_json(v) for f in dataclasses.fields(value)
                if (v := getattr(value, f.name)) is not None}
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def _meta_writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A record's meta, as straight-line code made for `cls` (like `_fast_builder`): an optional field left
    unset (None) is absent on the wire; nested records are written through `to_json` (JSON writes tuples as
    lists itself)."""
    writer = _WRITERS.get(cls)
    if writer is not None:
        return writer
    fields = _spec(cls).fields
    value = {f.name: f"to_json(record.{f.name})" if f.nested else f"record.{f.name}" for f in fields}
    always = ", ".join(f"{f.name!r}: {value[f.name]}" for f in fields if f.default is not None)
    lines = ["def write(record):", f"    meta = {{{always}}}"]
    for f in fields:
        if f.default is None:
            lines += [f"    if record.{f.name} is not None:", f"        meta[{f.name!r}] = {value[f.name]}"]
    lines.append("    return meta")
    env: dict[str, Any] = {"to_json": to_json}
    exec("\n".join(lines), env)   # noqa: S102 - code made here from a dataclass's own field names
    writer = _WRITERS[cls] = env["write"]
    return writer


_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def encode(record: Any, tensors: Mapping[str, np.ndarray] | None = None) -> Message:
    """The frame of a record; its tensors go as they are (views, not copies)."""
    cls = type(record)
    meta = (_WRITERS.get(cls) or _meta_writer(cls))(record)
    return Message(record.kind, meta, tensors if type(tensors) is dict else dict(tensors or {}))


def parse(hint: Any, value: Any, what: str) -> Any:
    """`value` (JSON) checked against the annotation `hint`: for documents that travel as tensors (LOAD's file
    references). A mismatch is a `MessageError` naming `what` and the field."""
    try:
        return _checker(hint)[0](value)
    except _Invalid as bad:
        raise _error(what, bad) from None


def _error(what: str, bad: _Invalid) -> MessageError:
    bad.path = bad.path.lstrip(".")
    if bad.value is _REFUSED:
        return MessageError(f"{what}: {bad.expected}" + (f" (in '{bad.path}')" if bad.path else ""))
    field = f"field '{bad.path}'" if bad.path else "the value"
    if bad.value is _UNKNOWN:
        return MessageError(f"{what}: unknown {field} (known: {bad.expected or 'none'})")
    if bad.value is _MISSING:
        return MessageError(f"{what}: {field} is missing (it is {bad.expected})")
    return MessageError(f"{what}: {field} must be {bad.expected}, got {_shown(bad.value)}")


R = TypeVar("R")


class Accepted:
    """The messages one side reads, by kind: `decode` turns a frame into its record, checked."""

    def __init__(self, reader: str, records: Iterable[type]):
        self.reader = reader
        self.records: dict[MsgType, type] = {}
        for cls in records:
            if cls.kind in self.records:
                raise TypeError(f"{reader}: two records for {cls.kind.name}")
            self.records[cls.kind] = cls
        # per kind, what decoding needs at hand (every frame a worker reads passes here)
        self._decoders = {kind: (cls, _fast_builder(cls), cls.tensors) for kind, cls in self.records.items()}

    def decode(self, msg: Message) -> Any:
        decoder = self._decoders.get(msg.type)
        if decoder is None:
            raise MessageError(f"{self.reader} does not accept {msg.type.name} messages")
        cls, build, tensors = decoder
        try:
            record = build(msg.meta)
        except _Invalid as bad:
            raise _error(f"{cls.kind.name} message", bad) from None
        for name in tensors:
            if name not in msg.tensors:
                raise MessageError(f"{cls.kind.name} message: tensor '{name}' is missing")
        return record


def decode_as(cls: type[R], msg: Message) -> R:
    """The frame as a record of `cls` (whose kind it must be), every field and required tensor checked."""
    if msg.type is not cls.kind:
        raise MessageError(f"expected a {cls.kind.name} message, got {msg.type.name}")
    try:
        record = (_FAST.get(cls) or _fast_builder(cls))(msg.meta)
    except _Invalid as bad:
        raise _error(f"{cls.kind.name} message", bad) from None
    for name in cls.tensors:
        if name not in msg.tensors:
            raise MessageError(f"{cls.kind.name} message: tensor '{name}' is missing")
    return record


class Record:
    """Base of the records: `kind` is the frame type, `tensors` the tensors a valid one must carry."""

    kind: ClassVar[MsgType]
    tensors: ClassVar[tuple[str, ...]] = ()


def record(cls: type[R]) -> type[R]:
    """A message record: `@dataclass(frozen=True)`, whose `__init__` sets the fields in one step. A frozen
    dataclass's own sets each through `object.__setattr__`, which costs twice as much, and every decode step
    makes a RUN and a RESULT. Same signature, same `__post_init__` call, still frozen."""
    cls = dataclass(frozen=True)(cls)
    params, env = [], {}
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name}: a record's defaults are values, not factories")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            env[f"default{i}"] = f.default
            params.append(f"{f.name}=default{i}")
    fields = ", ".join(f"{f.name!r}: {f.name}" for f in dataclasses.fields(cls))
    lines = [f"def __init__(self, {', '.join(params)}):", f"    self.__dict__.update({{{fields}}})"]
    if hasattr(cls, "__post_init__"):
        lines.append("    self.__post_init__()")
    exec("\n".join(lines), env)   # noqa: S102 - code made here from a dataclass's own field names
    env["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = env["__init__"]
    return cls
