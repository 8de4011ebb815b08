"""The arena planner: no two buffers alive at once overlap, and reuse beats one allocation each."""
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.program.instructions import TEMP, Alloc, Buffer, Free, Launch, Program
from dnet.program.memory import ALIGN, bucket, grows_with_symbols, lifetimes, plan_arena


@st.composite
def programs(draw):
    n = draw(st.integers(1, 12))
    buffers = [Buffer(i, TEMP, DType.F32, (draw(st.integers(1, 300)), Sym("n"))) for i in range(n)]
    events = []
    for i in range(n):
        events.append((draw(st.integers(0, 20)), Alloc(i)))
    instrs = []
    for t, ins in sorted(events, key=lambda e: e[0]):
        instrs.append(ins)
        instrs.append(Launch("k", (ins.buffer,), ()))
    order = draw(st.permutations(range(n)))
    for i in order:                       # free each buffer somewhere after its alloc
        pos = next(p for p, ins in enumerate(instrs) if ins == Alloc(i))
        at = draw(st.integers(pos + 1, len(instrs)))
        instrs.insert(at, Free(i))
    return Program(buffers, instrs, ["n"])


@settings(max_examples=80, deadline=None)
@given(program=programs(), n=st.integers(1, 5))
def test_live_buffers_never_overlap(program, n):
    plan = plan_arena(program, {"n": n})
    spans = lifetimes(program)
    sizes = {b.id: b.shape[0] * n * 4 for b in program.buffers}
    for a in program.buffers:
        assert plan.offsets[a.id] % ALIGN == 0
        assert plan.offsets[a.id] + sizes[a.id] <= plan.size
        for b in program.buffers:
            if a.id < b.id and spans[a.id][0] <= spans[b.id][1] and spans[b.id][0] <= spans[a.id][1]:
                lo, hi = sorted([a, b], key=lambda x: plan.offsets[x.id])
                assert plan.offsets[lo.id] + sizes[lo.id] <= plan.offsets[hi.id]
    assert plan.size <= plan.naive


def test_a_chain_reuses_memory():
    bufs = [Buffer(i, TEMP, DType.F32, (1024,)) for i in range(4)]
    instrs = [Alloc(0), Launch("k", (0,), ())]
    for i in range(1, 4):
        instrs += [Alloc(i), Launch("k", (i, i - 1), ()), Free(i - 1)]
    plan = plan_arena(Program(bufs, instrs + [Free(3)], []), {})
    assert plan.size == 2 * 4096 and plan.naive == 4 * 4096


@settings(max_examples=40, deadline=None)
@given(program=programs(), n=st.integers(1, 200))
def test_a_plan_for_the_bucket_holds_every_smaller_binding(program, n):
    """One plan per power-of-two bucket: every buffer of the actual binding fits its planned slot."""
    assert grows_with_symbols(program)
    planned = plan_arena(program, bucket({"n": n}))
    exact = plan_arena(program, {"n": n})
    for b in program.buffers:
        assert b.shape[0] * n * 4 <= b.shape[0] * bucket({"n": n})["n"] * 4
    assert exact.size <= planned.size


def test_a_size_that_shrinks_as_a_symbol_grows_gets_exact_plans():
    grows = Program([Buffer(0, TEMP, DType.F32, (Sym("n") * 3 + 1,))], [Alloc(0), Free(0)], ["n"])
    shrinks = Program([Buffer(0, TEMP, DType.F32, (Sym("ctx") - Sym("seq"),))], [Alloc(0), Free(0)], ["ctx", "seq"])
    assert grows_with_symbols(grows) and not grows_with_symbols(shrinks)
    assert bucket({"n": 17, "m": 1, "k": 0, "j": 64}) == {"n": 32, "m": 1, "k": 1, "j": 64}
