"""f16 conversions of the LLVM backend, both ways it has: the CPU's instructions and the integer code used
where the CPU has none (x86 without F16C), against numpy's conversions (round to nearest even)."""
import ctypes

import numpy as np
import pytest

from dnet.backends.llvm.prelude import prelude

ENTRIES = """
define void @widen(ptr %src, ptr %dst, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %p = getelementptr i16, ptr %src, i64 %i
  %h = load i16, ptr %p
  %f = call float @dn_f16_to_f32(i16 %h)
  %q = getelementptr float, ptr %dst, i64 %i
  store float %f, ptr %q
  %i1 = add i64 %i, 1
  %more = icmp slt i64 %i1, %n
  br i1 %more, label %loop, label %done
done:
  ret void
}

define void @narrow(ptr %src, ptr %dst, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [0, %entry], [%i1, %loop]
  %p = getelementptr float, ptr %src, i64 %i
  %f = load float, ptr %p
  %h = call i16 @dn_f32_to_f16(float %f)
  %q = getelementptr i16, ptr %dst, i64 %i
  store i16 %h, ptr %q
  %i1 = add i64 %i, 1
  %more = icmp slt i64 %i1, %n
  br i1 %more, label %loop, label %done
done:
  ret void
}
"""


@pytest.fixture(scope="module", params=[True, False], ids=["native", "portable"])
def convert(request, compile_llvm):
    from dnet.backends.llvm.device import with_pool_symbols
    from dnet.backends.llvm.jit import Compiled

    with_pool_symbols()
    compiled = Compiled(prelude(native_half=request.param) + ENTRIES, "half_test")
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    return compiled, fn(compiled.address("widen")), fn(compiled.address("narrow"))


def test_every_f16_widens_as_numpy_does(convert):
    _, widen, _ = convert
    halves = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, np.float32)
    widen(halves.ctypes.data, out.ctypes.data, 65536)
    want = halves.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
    assert np.isnan(out[np.isnan(want)]).all()


def test_f32_narrows_to_the_nearest_even_f16_as_numpy_does(convert):
    _, _, narrow = convert
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000),
        np.arange(0, 31744, 7, dtype=np.uint16).view(np.float16).astype(np.float32) * np.float32(1.0005),
        np.array([0.0, -0.0, 65504.0, 65520.0, 65519.99, 1e-8, -6e-8, 2.98e-8, np.inf, -np.inf], np.float32)])
    values = np.ascontiguousarray(values[~np.isnan(values)], np.float32)
    out = np.empty(len(values), np.uint16)
    narrow(values.ctypes.data, out.ctypes.data, len(values))
    with np.errstate(over="ignore"):                   # beyond f16's range: inf, as the conversion gives
        want = values.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(out, want)
    nan = np.array([np.nan], np.float32)
    narrow(nan.ctypes.data, out.ctypes.data, 1)
    assert np.isnan(out[:1].view(np.float16)).all()
