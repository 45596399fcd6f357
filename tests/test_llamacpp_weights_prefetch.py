"""runtimes/llamacpp/patches/0006: the AVX2 q8_0 and q6_K dot products (a decoded token's weights)
prefetch the row bytes they read next. Prefetching must leave the arithmetic alone.

The check calls the loaded CPU variant's own kernels (``ggml_get_type_traits_cpu(type)->vec_dot``)
on seeded rows and compares each result bit for bit with a numpy model of ggml's AVX2 arithmetic:
exact integer sums per 32-bit lane (four bytes each), one fused multiply-add per block and lane in
float32, then ggml's horizontal sum (high half plus low half, then pairs). A product summed in
another order, a block skipped or a row read from the wrong place fails it. The row batch ends at its
buffer's end, so the last row's prefetches point past the data the kernel may touch.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from edgebridge.runtimes.llamacpp._lib import backend_info, library_dir

GGML_TYPE_Q8_0, GGML_TYPE_Q6_K, GGML_TYPE_Q8_K = 8, 14, 15
AVX2_VARIANTS = ("haswell", "skylakex", "cannonlake", "cascadelake", "icelake", "cooperlake", "zen4",
                 "alderlake", "sapphirerapids")
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", 32)])
Q6_K = np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("scales", "i1", 16), ("d", "<f2")])
Q8_K = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])
VEC_DOT = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t, ctypes.c_void_p,
                           ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class _TraitsCpu(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p), ("vec_dot_type", ctypes.c_int),
                ("nrows", ctypes.c_int64)]


@pytest.fixture(scope="module")
def vec_dot():
    """type -> the loaded CPU variant's vec_dot; skips where that variant is not an AVX2 build."""
    variant, lib_dir = backend_info()["cpu_variant"], library_dir()  # the one the runtime loaded
    if variant not in AVX2_VARIANTS or lib_dir is None:
        pytest.skip(f"the CPU variant here ({variant}) does not run the AVX2 kernels")
    cpu = ctypes.CDLL(str(lib_dir / f"libggml-cpu-{variant}.so"))
    cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(_TraitsCpu)
    cpu.ggml_get_type_traits_cpu.argtypes = [ctypes.c_int]

    def get(ggml_type: int):
        return VEC_DOT(cpu.ggml_get_type_traits_cpu(ggml_type).contents.vec_dot)

    return get


def _kernel(dot, n: int, rows: np.ndarray, column: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), np.float32)
    result = ctypes.c_float()
    for i in range(len(rows)):
        dot(n, ctypes.byref(result), 0, rows[i].ctypes.data, 0, column.ctypes.data, 0, 1)
        out[i] = result.value
    return out


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 a * b + c rounded once (the product of a float32 and an int below 2**24 is exact in float64)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _hsum(acc: np.ndarray) -> np.float32:
    """ggml's hsum_float_8: high four plus low four, then lanes 0+2 and 1+3, then those two."""
    four = acc[4:] + acc[:4]
    return np.float32(four[0] + four[2]) + np.float32(four[1] + four[3])


def _lanes(products: np.ndarray) -> np.ndarray:
    """Integer products of one 32-byte vector -> the 8 int32 lanes maddubs + madd leave (bytes 4l..4l+3)."""
    return products.reshape(8, 4).sum(axis=1)


def _q8_0_model(row: np.ndarray, column: np.ndarray) -> np.float32:
    acc = np.zeros(8, np.float32)
    for x, y in zip(row, column):
        d = np.float32(np.float32(x["d"]) * np.float32(y["d"]))
        lanes = _lanes(x["qs"].astype(np.int32) * y["qs"].astype(np.int32)).astype(np.float32)
        acc = _fma(np.full(8, d, np.float32), lanes, acc)
    return _hsum(acc)


def _q6_values(x) -> np.ndarray:
    """A q6_K block's 256 six-bit values (0..63) in element order."""
    out = np.empty(256, np.int32)
    for half in range(2):
        ql, qh = x["ql"][64 * half:64 * half + 64].astype(np.int32), x["qh"][32 * half:32 * half + 32].astype(np.int32)
        base = 128 * half
        out[base:base + 32] = (ql[:32] & 15) | ((qh & 3) << 4)
        out[base + 32:base + 64] = (ql[32:] & 15) | (((qh >> 2) & 3) << 4)
        out[base + 64:base + 96] = (ql[:32] >> 4) | (((qh >> 4) & 3) << 4)
        out[base + 96:base + 128] = (ql[32:] >> 4) | (((qh >> 6) & 3) << 4)
    return out


def _q6_k_model(row: np.ndarray, column: np.ndarray) -> np.float32:
    acc = np.zeros(8, np.float32)
    for x, y in zip(row, column):
        d = np.float32(y["d"] * np.float32(x["d"]))
        scales = x["scales"].astype(np.int32)
        products = _q6_values(x) * y["qs"].astype(np.int32) * np.repeat(scales, 16)
        sumi = sum(_lanes(products[32 * v:32 * v + 32]) for v in range(8))
        bsums = y["bsums"].astype(np.int32)
        sumi = sumi - ((bsums[0::2] * scales[0::2] + bsums[1::2] * scales[1::2]) << 5)
        acc = _fma(np.full(8, d, np.float32), sumi.astype(np.float32), acc)
    return _hsum(acc)


def _q8_0_case(rng: np.random.Generator, rows: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.zeros((rows, blocks), Q8_0)
    weights["d"] = rng.uniform(0.001, 0.02, (rows, blocks))
    weights["qs"] = rng.integers(-127, 128, (rows, blocks, 32))
    column = np.zeros(blocks, Q8_0)
    column["d"] = rng.uniform(0.001, 0.02, blocks)
    column["qs"] = rng.integers(-127, 128, (blocks, 32))
    return weights, column


def _q6_k_case(rng: np.random.Generator, rows: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.zeros((rows, blocks), Q6_K)
    weights["ql"] = rng.integers(0, 256, (rows, blocks, 128))
    weights["qh"] = rng.integers(0, 256, (rows, blocks, 64))
    weights["scales"] = rng.integers(-128, 128, (rows, blocks, 16))
    weights["d"] = rng.uniform(0.0005, 0.005, (rows, blocks))
    column = np.zeros(blocks, Q8_K)
    column["d"] = rng.uniform(0.001, 0.02, blocks)
    column["qs"] = rng.integers(-127, 128, (blocks, 256))
    column["bsums"] = column["qs"].reshape(blocks, 16, 16).sum(axis=2)
    return weights, column


@pytest.mark.parametrize("name, ggml_type, block, case, model", [
    ("q8_0", GGML_TYPE_Q8_0, 32, _q8_0_case, _q8_0_model),
    ("q6_K", GGML_TYPE_Q6_K, 256, _q6_k_case, _q6_k_model),
])
def test_weights_dot_products_are_ggmls_avx2_arithmetic_bit_for_bit(vec_dot, name, ggml_type, block, case, model):
    rng = np.random.default_rng(6)
    for rows, blocks in ((64, 3), (16, 24), (8, 7)):  # 7: an odd block count (q8_0's tail, if any)
        weights, column = case(rng, rows, blocks)
        got = _kernel(vec_dot(ggml_type), blocks * block, weights, column)
        want = np.array([model(weights[i], column) for i in range(rows)], np.float32)
        assert np.isfinite(got).all()
        mismatched = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
        assert mismatched.size == 0, (f"{name}, {rows} rows of {blocks} blocks: rows {mismatched[:5].tolist()} "
                                      f"differ (kernel {got[mismatched[:3]]}, model {want[mismatched[:3]]})")
