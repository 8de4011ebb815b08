"""Programs built from graphs: instruction order, liveness, JSON round trip."""
import numpy as np

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
import pytest

from dnet.backends.c.packing import PanelPacker
from dnet.errors import BackendError
from dnet.program.build import build_program
from dnet.program.instructions import TEMP, Alloc, Free, Launch, Program, Recv, Send, segments
from dnet.program.memory import plan_arena


def _graph():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", TensorType(("batch", 8), DType.F32))
    w = b.const("w", rng.standard_normal((8, 8)).astype(np.float32))
    h = C.softmax(b, C.linear(b, x, w), -1)
    b.output("y", C.layer_norm(b, b.reduce(__import__("dnet").graph.ops.Op.SUM, h, 0, keepdim=True)))
    return b.finish()


def test_every_temp_is_allocated_before_use_and_freed_after_its_last_use():
    program = build_program(_graph(), packer=PanelPacker()).program
    live: set[int] = set()
    for ins in program.instrs:
        if isinstance(ins, Alloc):
            live.add(ins.buffer)
        elif isinstance(ins, Free):
            live.remove(ins.buffer)
        elif isinstance(ins, Launch):
            temps = {a for a in ins.args if program.buffers[a].kind == TEMP}
            assert temps <= live
    assert not live


def test_program_round_trips_through_json():
    program = build_program(_graph(), packer=PanelPacker()).program
    again = Program.from_json(program.to_json())
    assert again.instrs == program.instrs and again.buffers == program.buffers
    assert plan_arena(again, {"batch": 3}) == plan_arena(program, {"batch": 3})


def test_transfers_cut_the_stack_into_segments():
    program = Program([], [Launch("a", (), ()), Send(0, "node1"), Recv(1, "node1"), Launch("b", (), ())], [])
    cut = segments(program)
    assert [len(s) for s in cut] == [1, 1, 0, 1, 1]
    assert isinstance(cut[1][0], Send) and isinstance(cut[3][0], Recv)


def test_a_program_with_packed_weights_needs_the_backends_packer():
    with pytest.raises(BackendError, match="reads weight 'w' packed, and no weight packer was given"):
        build_program(_graph())
