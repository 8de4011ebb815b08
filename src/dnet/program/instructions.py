"""The per-node program: buffers and a linear stack of instructions.

A program is what one node runs: allocate an intermediate, launch a kernel on
buffers, send or receive a tensor (slots the distributed runtime fills), free. It is
plain data: it prints, serialises to JSON (the compiled artefact's manifest), and any
backend that can launch its kernels can run it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from dnet.core.dtypes import DType
from dnet.core.shapes import dim_from_json, dim_to_json, numel, shape_str

INPUT, OUTPUT, WEIGHT, TEMP, SCRATCH = "input", "output", "weight", "temp", "scratch"
STATE = "state"               # an input the caller keeps across calls, written in place (a KV cache)


@dataclass(frozen=True)
class Buffer:
    id: int
    kind: str                 # input, state, output, weight, temp, scratch
    dtype: DType
    shape: tuple              # of ints and Dims
    name: str = ""            # input/output/weight name

    @property
    def elements(self):
        return numel(self.shape)

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "dtype": self.dtype.value,
                "shape": [dim_to_json(d) for d in self.shape], "name": self.name}

    @staticmethod
    def from_json(obj: dict) -> "Buffer":
        return Buffer(obj["id"], obj["kind"], DType(obj["dtype"]),
                      tuple(dim_from_json(d) for d in obj["shape"]), obj["name"])


@dataclass(frozen=True)
class Alloc:
    buffer: int


@dataclass(frozen=True)
class Free:
    buffer: int


@dataclass(frozen=True)
class Launch:
    kernel: str
    args: tuple[int, ...]     # buffer ids, in the kernel's parameter order
    dims: tuple[str, ...]     # symbolic dims passed after the buffers


@dataclass(frozen=True)
class Send:
    buffer: int
    peer: str


@dataclass(frozen=True)
class Recv:
    buffer: int
    peer: str


@dataclass(frozen=True)
class AllReduce:
    """The buffer holds this member's partial sum; afterwards, the sum over the group's `size` members."""
    buffer: int
    group: str
    size: int


Instr = Union[Alloc, Free, Launch, Send, Recv, AllReduce]
_KINDS = {"alloc": Alloc, "free": Free, "launch": Launch, "send": Send, "recv": Recv, "all_reduce": AllReduce}
EXCHANGES = (Send, Recv, AllReduce)   # what the runner does between runs of launches


@dataclass
class Program:
    buffers: list[Buffer]
    instrs: list[Instr]
    symbols: list[str]                       # symbolic dims, bound from the inputs' shapes
    inputs: dict[str, int] = field(default_factory=dict)     # input name -> buffer id
    outputs: list[tuple[str, int]] = field(default_factory=list)

    def temps(self) -> list[Buffer]:
        return [b for b in self.buffers if b.kind in (TEMP, SCRATCH)]

    def __str__(self) -> str:
        lines = [f"program ({len(self.buffers)} buffers, {len(self.instrs)} instructions)"]
        for b in self.buffers:
            lines.append(f"  %{b.id} {b.kind:8} {b.dtype}{shape_str(b.shape)} {b.name}".rstrip())
        for ins in self.instrs:
            lines.append("  " + instr_str(ins))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"buffers": [b.to_json() for b in self.buffers], "symbols": self.symbols,
                "inputs": self.inputs, "outputs": [list(o) for o in self.outputs],
                "instrs": [_instr_json(i) for i in self.instrs]}

    @staticmethod
    def from_json(obj: dict) -> "Program":
        instrs = []
        for item in obj["instrs"]:
            kind = _KINDS[item.pop("op")]
            if kind is Launch:
                item["args"], item["dims"] = tuple(item["args"]), tuple(item["dims"])
            instrs.append(kind(**item))
        return Program([Buffer.from_json(b) for b in obj["buffers"]], instrs, list(obj["symbols"]),
                       dict(obj["inputs"]), [tuple(o) for o in obj["outputs"]])


def _instr_json(ins: Instr) -> dict:
    op = next(k for k, v in _KINDS.items() if isinstance(ins, v))
    out = {"op": op, **ins.__dict__}
    if isinstance(ins, Launch):
        out["args"], out["dims"] = list(ins.args), list(ins.dims)
    return out


def instr_str(ins: Instr) -> str:
    if isinstance(ins, Launch):
        dims = "".join(f", {d}" for d in ins.dims)
        return f"launch {ins.kernel}(" + ", ".join(f"%{a}" for a in ins.args) + dims + ")"
    if isinstance(ins, (Send, Recv)):
        return f"{type(ins).__name__.lower()} %{ins.buffer} {'->' if isinstance(ins, Send) else '<-'} {ins.peer}"
    if isinstance(ins, AllReduce):
        return f"all_reduce %{ins.buffer} over {ins.group} ({ins.size})"
    return f"{type(ins).__name__.lower()} %{ins.buffer}"


def segments(program: Program) -> list[list[Instr]]:
    """The instruction stack cut at every exchange (Send, Recv, AllReduce): runs of launches a backend
    can fuse into one call.

    Returns alternately a run of launches (possibly empty) and a single exchange, starting and
    ending with a run, so segment 2k is launches and segment 2k+1 is an exchange.
    """
    out: list[list[Instr]] = [[]]
    for ins in program.instrs:
        if isinstance(ins, EXCHANGES):
            out.append([ins])
            out.append([])
        elif isinstance(ins, Launch):
            out[-1].append(ins)
    return out
