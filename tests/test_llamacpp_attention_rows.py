"""runtimes/llamacpp/patches/0004: a decoded token's attention scores (K's f16 rows of the head size
against the one query) are computed a block of rows per call, with the query's vectors loaded once.

Each row's arithmetic is meant to be ``ggml_vec_dot_f16``'s, in its order. The check runs ggml's real
matrix product through its C API on the attention's own layout (K a strided view of the cache, one
query column per head) and compares it bit for bit with the same product on rows one element longer
(a zero appended to K and to the query): 65 and 129 are not multiples of the SIMD step, so that product
takes ``ggml_vec_dot_f16`` row by row, and the appended zero adds an exact 0.0. A row skipped, read from
the wrong place or summed in another order fails it.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from edgebridge.runtimes.llamacpp._lib import ggml_library
from tests.conftest import ggml_base_library

GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1
GGML_BACKEND_DEVICE_TYPE_CPU = 0


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _sig(lib, name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


class _Ggml:
    """The few ggml calls a one-product graph needs (ggml-base for the graph, libggml for the CPU backend)."""

    def __init__(self) -> None:
        base, registry = ggml_base_library(), ggml_library()
        p, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        self.init = _sig(base, "ggml_init", p, _InitParams)
        self.free = _sig(base, "ggml_free", None, p)
        self.new_3d = _sig(base, "ggml_new_tensor_3d", p, p, ctypes.c_int, i64, i64, i64)
        self.view_3d = _sig(base, "ggml_view_3d", p, p, p, i64, i64, i64, sz, sz, sz)
        self.mul_mat = _sig(base, "ggml_mul_mat", p, p, p, p)
        self.new_graph = _sig(base, "ggml_new_graph", p, p)
        self.expand = _sig(base, "ggml_build_forward_expand", None, p, p)
        self.data = _sig(base, "ggml_get_data", p, p)
        dev = _sig(registry, "ggml_backend_dev_by_type", p, ctypes.c_int)(GGML_BACKEND_DEVICE_TYPE_CPU)
        if not dev:
            pytest.skip("no ggml CPU device registered")
        self.backend = _sig(registry, "ggml_backend_dev_init", p, p, ctypes.c_char_p)(dev, None)
        self.compute = _sig(registry, "ggml_backend_graph_compute", ctypes.c_int, p, p)
        self.backend_free = _sig(registry, "ggml_backend_free", None, p)
        reg = _sig(registry, "ggml_backend_dev_backend_reg", p, p)(dev)
        proc = _sig(registry, "ggml_backend_reg_get_proc_address", p, p, ctypes.c_char_p)(
            reg, b"ggml_backend_set_n_threads")
        self.set_threads = ctypes.CFUNCTYPE(None, p, ctypes.c_int)(proc)

    def scores(self, cache: np.ndarray, query: np.ndarray, heads: int, threads: int) -> np.ndarray:
        """ggml_mul_mat(K, q) as llama.cpp's attention builds it: ``cache`` (n_kv, heads * d) f16, one
        cell per row, viewed as (heads, n_kv, d); ``query`` (heads, d) f32. Returns (heads, n_kv)."""
        n_kv, d = cache.shape[0], cache.shape[1] // heads
        ctx = self.init(_InitParams(64 << 20, None, False))
        try:
            k_cache = self.new_3d(ctx, GGML_TYPE_F16, heads * d, n_kv, 1)
            ctypes.memmove(self.data(k_cache), np.ascontiguousarray(cache, np.float16).ctypes.data, cache.nbytes)
            k = self.view_3d(ctx, k_cache, d, n_kv, heads, heads * d * 2, d * 2, 0)
            q = self.new_3d(ctx, GGML_TYPE_F32, d, 1, heads)
            ctypes.memmove(self.data(q), np.ascontiguousarray(query, np.float32).ctypes.data, query.nbytes)
            kq = self.mul_mat(ctx, k, q)
            graph = self.new_graph(ctx)
            self.expand(graph, kq)
            self.set_threads(self.backend, threads)
            assert self.compute(self.backend, graph) == 0
            out = np.empty((heads, n_kv), np.float32)
            ctypes.memmove(out.ctypes.data, self.data(kq), out.nbytes)
            return out
        finally:
            self.free(ctx)

    def close(self) -> None:
        self.backend_free(self.backend)


@pytest.fixture(scope="module")
def ggml():
    lib = _Ggml()
    yield lib
    lib.close()


def _zero_appended(x: np.ndarray) -> np.ndarray:
    """``x`` with a zero appended to its last axis."""
    return np.concatenate([x, np.zeros((*x.shape[:-1], 1), x.dtype)], axis=-1)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("threads", [1, 2])
def test_block_of_rows_gives_vec_dot_f16_bit_for_bit(ggml, head_dim, threads):
    heads, n_kv = 6, 203  # 203 cells: 12 full blocks of 16 rows and a 11-row tail
    rng = np.random.default_rng(head_dim + threads)
    cache = rng.standard_normal((n_kv, heads * head_dim)).astype(np.float16)
    query = rng.standard_normal((heads, head_dim)).astype(np.float32)

    fast = ggml.scores(cache, query, heads, threads)
    cells = cache.reshape(n_kv, heads, head_dim)
    row_by_row = ggml.scores(_zero_appended(cells).reshape(n_kv, -1), _zero_appended(query), heads, threads)

    reference = np.einsum("chd,hd->hc", cells.astype(np.float64),
                          query.astype(np.float16).astype(np.float64))
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-4)  # the right rows, heads and query
    assert np.array_equal(fast, row_by_row), f"max diff {np.abs(fast - row_by_row).max()}"
