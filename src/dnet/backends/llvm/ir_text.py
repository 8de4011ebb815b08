"""Writing LLVM IR as text: one function's instructions, fresh names, blocks, loops.

The renderer and the GEMM emitter both build functions through `Function`: `op(...)` appends an
instruction and returns its SSA name, `loop(...)` opens a counted loop (a phi-based header, the
body, the latch) and `if_(...)` a conditional block. Values whose address is taken nowhere but
that change inside loops (accumulators) live in `alloca`s placed in the entry block, which LLVM's
SROA turns into registers.
"""
from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from dnet.core.dtypes import DType

# the type a value of each dtype is computed in, and the type it is stored in
COMPUTE = {DType.F32: "float", DType.F16: "float", DType.BF16: "float", DType.I8: "i8", DType.I32: "i32",
           DType.I64: "i64", DType.BOOL: "i1", **{d: "float" for d in DType if d.is_block}}
STORAGE = {DType.F32: "float", DType.F16: "i16", DType.BF16: "i16", DType.I8: "i8", DType.I32: "i32",
           DType.I64: "i64", DType.BOOL: "i8", **{d: "i8" for d in DType if d.is_block}}
INT_BITS = {"i1": 1, "i8": 8, "i16": 16, "i32": 32, "i64": 64}


def float_literal(value: float) -> str:
    """An f32 constant in LLVM's spelling: the double with the same value, in hex (exact, NaN and inf too)."""
    v = float(np.float32(value))
    if math.isnan(v):
        return "0x7FF8000000000000"
    return "0x%016X" % struct.unpack("<Q", struct.pack("<d", v))[0]


def quote(name: str) -> str:
    """A global name as LLVM reads it, whatever characters the kernel name has."""
    return '@"' + name.replace("\\", "\\5C").replace('"', "\\22") + '"'


class Function:
    """One function being written: its signature, entry allocas, instructions and current block."""

    def __init__(self, signature: str, prefix: str = "t"):
        self.signature = signature
        self.prefix = prefix
        self.lines: list[str] = []
        self.allocas: list[str] = []
        self.count = 0
        self.block = "entry"

    def fresh(self, hint: str = "") -> str:
        self.count += 1
        return f"%{self.prefix}{self.count}{hint}"

    def op(self, text: str, hint: str = "") -> str:
        """Append `%x = text`; returns %x."""
        name = self.fresh(hint)
        self.lines.append(f"  {name} = {text}")
        return name

    def emit(self, text: str) -> None:
        self.lines.append(f"  {text}")

    def alloca(self, ty: str, init: str | None = None) -> str:
        """A stack slot in the entry block (promoted to a register by SROA); `init` stored first."""
        name = self.fresh("slot")
        self.allocas.append(f"  {name} = alloca {ty}, align 64")
        if init is not None:
            self.emit(f"store {ty} {init}, ptr {name}")
        return name

    def label(self, hint: str) -> str:
        self.count += 1
        return f"{hint}{self.count}"

    def start(self, label: str) -> None:
        self.lines.append(f"{label}:")
        self.block = label

    def branch(self, label: str) -> None:
        self.emit(f"br label %{label}")

    @contextmanager
    def loop(self, start: str, end: str, step: int | str = 1, hint: str = "i", metadata: str = "") -> Iterator[str]:
        """for (v = start; v < end; v += step): yields v (an i64 SSA value) inside the body."""
        pre, head, body, done = self.block, self.label("head"), self.label("body"), self.label("done")
        var, nxt = self.fresh(hint), self.fresh(hint + "n")
        self.branch(head)
        self.start(head)
        latch_at = len(self.lines)
        self.lines.append("")                       # the phi, filled in once the latch is known
        cond = self.op(f"icmp slt i64 {var}, {end}")
        self.emit(f"br i1 {cond}, label %{body}, label %{done}")
        self.start(body)
        yield var
        self.lines.append(f"  {nxt} = add nsw i64 {var}, {step}")
        self.lines.append(f"  br label %{head}" + (f", {metadata}" if metadata else ""))
        self.lines[latch_at] = f"  {var} = phi i64 [{start}, %{pre}], [{nxt}, %{self.block}]"
        self.start(done)

    @contextmanager
    def while_(self, cond) -> Iterator[None]:
        """while (cond()) { body }: `cond` is called in the loop's header and returns an i1."""
        head, body, done = self.label("whead"), self.label("wbody"), self.label("wdone")
        self.branch(head)
        self.start(head)
        self.emit(f"br i1 {cond()}, label %{body}, label %{done}")
        self.start(body)
        yield
        self.branch(head)
        self.start(done)

    @contextmanager
    def if_(self, cond: str) -> Iterator[None]:
        """if (cond) { body }"""
        then, done = self.label("then"), self.label("endif")
        self.emit(f"br i1 {cond}, label %{then}, label %{done}")
        self.start(then)
        yield
        self.branch(done)
        self.start(done)

    # -- small integer helpers ---------------------------------------------------------
    def imin(self, a: str, b: str) -> str:
        return self.op(f"select i1 {self.op(f'icmp slt i64 {a}, {b}')}, i64 {a}, i64 {b}")

    def imax(self, a: str, b: str) -> str:
        return self.op(f"select i1 {self.op(f'icmp sgt i64 {a}, {b}')}, i64 {a}, i64 {b}")

    def add(self, a: str, b: str) -> str:
        if a == "0":
            return b
        if b == "0":
            return a
        return self.op(f"add nsw i64 {a}, {b}")

    def mul(self, a: str, b: str) -> str:
        if a == "1":
            return b
        if b == "1":
            return a
        if a == "0" or b == "0":
            return "0"
        return self.op(f"mul nsw i64 {a}, {b}")

    def sub(self, a: str, b: str) -> str:
        return a if b == "0" else self.op(f"sub nsw i64 {a}, {b}")

    def ceil_div(self, a: str, b: int | str) -> str:
        return self.op(f"sdiv i64 {self.add(a, self.sub(str(b), '1') if isinstance(b, str) else str(b - 1))}, {b}")

    def gep(self, ty: str, base: str, index: str) -> str:
        if index == "0":
            return base
        return self.op(f"getelementptr inbounds {ty}, ptr {base}, i64 {index}")

    def text(self) -> str:
        return "\n".join([self.signature + " {", "entry:", *self.allocas, *self.lines, "}"])
