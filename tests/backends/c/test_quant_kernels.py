"""The C kernels on GGUF block formats (`dnet.backends.c.quant`) against gguf's numpy dequantizer.

Each path the host supports is built (portable; AVX2 without VNNI; 256-bit AVX-VNNI; AVX-512 VNNI) by
the macros that force it, and checked on the same cases:
- dn_dq_<name> equals gguf's value for every element, bit for bit;
- the portable matmul equals x @ dequantize(w).T to f32 rounding (relative to |x| @ |w|.T);
- an integer path equals the same product with x quantized per 32-block to int8 (emulated here in numpy,
  the rounding llama.cpp's Q8_1 does), to f32 rounding; and the raw product within the bound that 8-bit
  activations allow: per element, half a step of its block's scale, times |w|;
- dn_qmatmul16_<name> (int16 activations, steps of max|x| / 32767) the same against its own emulation, and
  the raw product within its bound, 258 times tighter.
"""
import ctypes
import dataclasses

import numpy as np
import pytest

from dnet.backends.c.compiler import compile_shared, find_compiler
from dnet.backends.c.prelude import PRELUDE
from dnet.backends.c.quant import quant_support
from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, QUANTIZABLE, dequantize, quantize

FORCED = {"native": (), "no-avx512": ("-DDN_QUANT_NO_AVX512",), "no-vnni": ("-DDN_QUANT_NO_VNNI",),
          "portable": ("-DDN_QUANT_PORTABLE",)}

_WRAPPERS = """
const char* test_path(void) { return dn_quant_path(); }
"""
_PER_DTYPE = """
void test_qmatmul_{name}(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const uint8_t* w,
                         float* y, int64_t ldy) {{ dn_qmatmul_{name}(m, n, k, x, ldx, w, y, ldy); }}
void test_qmatmul16_{name}(int64_t m, int64_t n, int64_t k, const float* x, int64_t ldx, const uint8_t* w,
                           float* y, int64_t ldy) {{ dn_qmatmul16_{name}(m, n, k, x, ldx, w, y, ldy); }}
void test_dq_{name}(const uint8_t* w, int64_t count, float* out) {{
    for (int64_t i = 0; i < count; ++i) out[i] = dn_dq_{name}(w, i);
}}
"""


def build(tmp_path, flags: tuple[str, ...]) -> ctypes.CDLL:
    compiler = find_compiler()
    compiler = dataclasses.replace(compiler, flags=compiler.flags + flags)
    source = PRELUDE + quant_support(BLOCK_DTYPES) + _WRAPPERS
    source += "".join(_PER_DTYPE.format(name=d.value) for d in BLOCK_DTYPES)
    (tmp_path / "quant.c").write_text(source)
    compile_shared(compiler, tmp_path / "quant.c", tmp_path / "quant.so")
    lib = ctypes.CDLL(str(tmp_path / "quant.so"))
    lib.test_path.restype = ctypes.c_char_p
    for d in BLOCK_DTYPES:
        for entry in ("qmatmul", "qmatmul16"):
            getattr(lib, f"test_{entry}_{d.value}").argtypes = [ctypes.c_int64] * 3 + [
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        getattr(lib, f"test_dq_{d.value}").argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
    return lib


@pytest.fixture(scope="module", params=list(FORCED))
def lib(request, tmp_path_factory):
    return build(tmp_path_factory.mktemp(f"quant-{request.param}"), FORCED[request.param])


def random_weights(rng, dtype: DType, n: int, k: int) -> np.ndarray:
    """uint8 storage (n, k / block * block_bytes) of valid blocks: quantized normals, or random K-quant bytes
    with finite f16 scales."""
    if dtype in QUANTIZABLE:
        return quantize(rng.standard_normal((n, k)).astype(np.float32), dtype)
    blocks = rng.integers(0, 256, (n, k // dtype.block, dtype.block_bytes), dtype=np.uint8)
    scales = (rng.uniform(0.002, 0.02, (n, k // dtype.block, 2)) * rng.choice([-1, 1], (n, k // dtype.block, 2)))
    halves = scales.astype(np.float16).view(np.uint8)
    if dtype is DType.Q6_K:
        blocks[..., 208:210] = halves[..., :2]          # d at the end
    else:
        blocks[..., 0:4] = halves                        # d, dmin at the start
    return blocks.reshape(n, -1)


# the largest step count of each activation precision: int8 and int16 per 32-block
TOP = {8: 127, 16: 32767}
ENTRY = {8: "qmatmul", 16: "qmatmul16"}


def emulate_quantized(x: np.ndarray, bits: int) -> np.ndarray:
    """x after the kernels' activation quantization: per 32-block, steps of max|x| / TOP[bits] (in f32),
    rounded to nearest even."""
    top = np.float32(TOP[bits])
    b = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / top
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, top / amax, np.float32(0)).astype(np.float32)
    return (np.round(b * inv) * d).reshape(x.shape)


def qmatmul(lib, dtype, x, w, n, ldy=None, bits=8):
    m, k = x.shape
    ldy = ldy or n
    y = np.full((m, ldy), np.nan, dtype=np.float32)
    getattr(lib, f"test_{ENTRY[bits]}_{dtype.value}")(m, n, k, x.ctypes.data, x.strides[0] // 4, w.ctypes.data,
                                                       y.ctypes.data, ldy)
    return y


def k_sizes(dtype: DType) -> list[int]:
    """one, two and three blocks, and several thousand elements"""
    b = dtype.block
    return [b, 2 * b, 3 * b, b * (4096 // b) + (b if b == 32 else 0)]


CASES = [(1, 5), (2, 9), (3, 33), (4, 32), (5, 47), (37, 70)]


@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=lambda d: d.value)
def test_dq_equals_gguf_for_every_element(lib, dtype):
    rng = np.random.default_rng(1)
    w = random_weights(rng, dtype, 3, 2 * dtype.block)
    want = dequantize(w, dtype).reshape(-1)
    got = np.empty(want.size, dtype=np.float32)
    getattr(lib, f"test_dq_{dtype.value}")(w.ctypes.data, want.size, got.ctypes.data)
    np.testing.assert_array_equal(got, want)


# the error an integer path may add to the product of the quantized x, relative to |xq| @ |w|.T: f32 rounding
# of the partial sums (int8: the old kernels' figure; int16's products are exact and summed in f32 as well)
ROUNDING = {8: 2e-5, 16: 1e-6}


@pytest.mark.parametrize("bits", [8, 16], ids=lambda b: f"int{b}")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", BLOCK_DTYPES, ids=lambda d: d.value)
def test_qmatmul_matches_the_dequantized_product(lib, dtype, threads, bits):
    lib.dnet_set_threads(threads)
    rng = np.random.default_rng(2)
    portable = lib.test_path() == b"portable"
    for k in k_sizes(dtype):
        for m, n in CASES:
            if k > 1024 and m > 5:
                continue      # the long rows: decode-like shapes only, to keep the test quick
            w = random_weights(rng, dtype, n, k)
            x = rng.standard_normal((m, k)).astype(np.float32)
            wf = dequantize(w, dtype, (n, k)).astype(np.float64)
            got = qmatmul(lib, dtype, x, w, n, bits=bits).astype(np.float64)
            scale = np.abs(x) @ np.abs(wf).T
            where = f"{dtype.value} int{bits} m={m} n={n} k={k} path={lib.test_path().decode()}"
            if portable:
                assert np.all(np.abs(got - x @ wf.T) <= 1e-5 * scale + 1e-30), where
                continue
            xq = emulate_quantized(x, bits).astype(np.float64)
            rounding = ROUNDING[bits]
            assert np.all(np.abs(got - xq @ wf.T) <= rounding * (np.abs(xq) @ np.abs(wf).T) + 1e-30), where
            half_step = np.repeat(np.abs(x).reshape(m, -1, 32).max(axis=-1) / (2 * TOP[bits]), 32, axis=1)
            bound = half_step @ np.abs(wf).T
            assert np.all(np.abs(got - x @ wf.T) <= 1.001 * bound + rounding * scale), where


@pytest.mark.parametrize("bits", [8, 16], ids=lambda b: f"int{b}")
@pytest.mark.parametrize("m", [1, 2, 6])
def test_qmatmul_reads_and_writes_strided_rows(lib, m, bits):
    """ldx > k and ldy > n: only each row's first k (n) entries are read (written)."""
    rng = np.random.default_rng(3)
    for dtype in (DType.Q4_1, DType.Q8_0, DType.Q6_K):
        n, k = 41, 2 * dtype.block
        w = random_weights(rng, dtype, n, k)
        xs = rng.standard_normal((m, k + 13)).astype(np.float32)
        y = qmatmul(lib, dtype, xs[:, :k], w, n, ldy=n + 7, bits=bits)
        want = qmatmul(lib, dtype, np.ascontiguousarray(xs[:, :k]), w, n, bits=bits)
        np.testing.assert_array_equal(y[:, :n], want)
        assert np.isnan(y[:, n:]).all()


@pytest.mark.parametrize("bits", [8, 16], ids=lambda b: f"int{b}")
@pytest.mark.parametrize("m", [1, 5])
def test_qmatmul_zero_rows_of_x_give_zeros(lib, m, bits):
    """A block of zeros in x quantizes with scale 0 (no division by zero)."""
    for dtype in (DType.Q8_0, DType.Q4_1):
        n, k = 16, 96
        w = random_weights(np.random.default_rng(4), dtype, n, k)
        y = qmatmul(lib, dtype, np.zeros((m, k), dtype=np.float32), w, n, bits=bits)
        np.testing.assert_array_equal(y, np.zeros((m, n), dtype=np.float32))


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("dtype", [DType.Q4_1, DType.Q8_0, DType.Q4_K], ids=lambda d: d.value)
def test_int16_activations_are_closer_to_the_exact_product_than_int8(lib, dtype, m):
    """The point of dn_qmatmul16: on the same inputs its error is a small fraction of int8's (decode, prefill)."""
    if lib.test_path() == b"portable":
        pytest.skip("the portable path computes in f32 for both")
    rng = np.random.default_rng(5)
    n, k = 64, 768
    w = random_weights(rng, dtype, n, k)
    x = rng.standard_normal((m, k)).astype(np.float32)
    exact = x.astype(np.float64) @ dequantize(w, dtype, (n, k)).astype(np.float64).T
    err8 = np.abs(qmatmul(lib, dtype, x, w, n, bits=8) - exact).max()
    err16 = np.abs(qmatmul(lib, dtype, x, w, n, bits=16) - exact).max()
    assert err16 < err8 / 50
