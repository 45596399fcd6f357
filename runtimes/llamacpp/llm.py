"""The LLM stage on llama.cpp's C API (through llama-cpp-python's ctypes bindings).

One ``LlamaCppLLM`` holds a model, a context and two reusable batches: one for token ids and
one for embeddings (a llama.cpp batch carries tokens or embeddings, never both). Positions are
tracked here. Everything handed to C is validated first, because llama.cpp trusts its caller:

- a batch larger than ``n_batch`` aborts the process  -> we chunk to ``n_batch``;
- an embedding row narrower than ``n_embd_inp`` is read past its end -> we check the width;
- token ids outside the vocabulary index out of bounds -> we check the range;
- a sequence past ``n_ctx`` fails deep inside          -> ``ContextOverflowError`` first.

``n_ctx`` is the most positions a sequence may hold; the KV cache is allocated for what the sequence
needs (``first_cells`` at start, doubled when a decode needs more, the cached cells carried over
through llama.cpp's own sequence state), because llama.cpp clears the whole cache when it creates a
context, so every cell costs resident memory from the start: on the bench LLaVA (12 x 768, f16 KV)
a 4096-cell context held 280 MB after load, a 512-cell one 154 MB, and took 61 vs 9 ms to create.

Positions: one per token, counted from 0, except on M-RoPE models (llama.cpp's ``qwen2vl`` /
``qwen3vl``): an embedding batch there carries four position sections per row (t, h, w and an
unused fourth, section-major, as llama.cpp's mtmd fills them), and text goes on from the largest
position + 1, so the next position (``next_pos``) and the cells in the cache (``n_past``) differ.

Shapes: ``T`` tokens, ``N`` embeddings, ``D`` = ``n_embd_inp``, ``V`` vocabulary size.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from edgebridge.errors import (
    BackendError,
    ContextOverflowError,
    CorruptArtifactError,
    EmbeddingShapeError,
    InputError,
    NonFiniteError,
)
from edgebridge.runtimes.llamacpp._lib import backend_info, captured_log, last_log, llama, weight_buffers
from edgebridge.runtimes.llamacpp.devices import DeviceChoice, choose_device
from edgebridge.runtimes.llamacpp.gguf_check import GgufInfo, check_expected, read_gguf_info
from edgebridge.runtimes.registry import DeviceReport, default_threads

@dataclass(frozen=True)
class KVType:
    ggml_type: int  # ggml.h's type number
    bytes_per_value: float


KV_TYPES = {"f32": KVType(0, 4.0), "f16": KVType(1, 2.0), "q8_0": KVType(8, 34 / 32)}  # q8_0: 34-byte blocks of 32
LOAD_MODE_READ, LOAD_MODE_MMAP = 0, 1  # llama.h: LLAMA_LOAD_MODE_NONE (read into memory), LLAMA_LOAD_MODE_MMAP
MROPE_TYPES = (8, 40)  # llama.h: LLAMA_ROPE_TYPE_MROPE, LLAMA_ROPE_TYPE_IMROPE
MROPE_SECTIONS = 4  # ggml's GGML_MROPE_SECTIONS: positions per embedding row on M-RoPE models
Logits = Literal["last", "all", "none"]


@dataclass(frozen=True)
class LlamaSettings:
    """llama.cpp context settings. ``strict()`` gives f32-exact ones for parity checks."""

    n_ctx: int = 4096  # the limit: a longer sequence is refused
    # KV cells allocated at start (at least n_batch); the cache grows by doubling up to n_ctx. None: n_ctx at once.
    first_cells: int | None = 512
    n_batch: int = 512
    n_ubatch: int = 512
    threads: int | None = None
    # Off by default. Measured here (AVX2, 2 threads, 12x768 llama, q8_0): flash attention prefills
    # 7-20% faster (7-10% at 216 positions), but its CPU decode slows with the context (tok/s with
    # it on vs off): 144 vs 114 at 105 positions, 86 vs 112 at 357, 59 vs 89 at 663. An image
    # prompt alone is 200-300 positions, and decode dominates an answer. None lets llama.cpp decide.
    flash_attn: bool | None = False
    kv_type: str = "f16"
    use_extra_bufts: bool = True  # AMX / repacked weight buffers; needs the crash-free build
    # Off by default: the weights are read into memory that ggml asks for transparent huge pages
    # (patch 0005); a mapped GGUF stays in 4 KiB page-cache pages, and a decode step streams every
    # weight once, so each 4 KiB costs a TLB miss. Measured here (AVX2 VM, 2 threads, bench LLaVA's
    # q8_0 / q6_K llama, 3 paired rounds): 168-192 vs 135-150 tok/s mapped. Mapping shares the pages
    # between processes and starts faster (no copy); the memory held is the same.
    mmap_weights: bool = False
    device: str = "CPU"  # CPU | GPU | AUTO (devices.py: a GPU ggml backend registered, e.g. Vulkan)
    gpu_layers: int | str | None = None  # on a GPU: blocks to offload (None / "all": every one + the output)

    @classmethod
    def strict(cls, **kw: Any) -> "LlamaSettings":
        """No flash attention and an f32 KV cache: an f32 GGUF then matches transformers to ~1e-6."""
        return cls(flash_attn=False, kv_type="f32", **kw)

    def with_(self, **kw: Any) -> "LlamaSettings":
        return replace(self, **kw)


class _Batch:
    """A ``llama_batch`` with numpy views over its arrays (filled without per-element ctypes calls)."""

    def __init__(self, lib: Any, capacity: int, n_embd: int, n_pos: int = 1) -> None:
        self.lib = lib
        self.capacity = capacity
        self.n_embd = n_embd
        self.n_pos = n_pos
        self.batch = lib.llama_batch_init(capacity, n_embd, 1)
        b = self.batch
        self._own_pos = None
        if n_pos > 1:  # llama_batch_init allocates one position per row; M-RoPE rows need n_pos of them
            self._pos_store = np.zeros(capacity * n_pos, np.int32)
            # the address as an int: a pointer read from a Structure field is a view of that field, and
            # would follow the assignment below
            self._own_pos = ctypes.cast(b.pos, ctypes.c_void_p).value
            b.pos = self._pos_store.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
            self.pos = self._pos_store
        else:
            self.pos = np.ctypeslib.as_array(b.pos, shape=(capacity,))
        self.n_seq_id = np.ctypeslib.as_array(b.n_seq_id, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(b.logits, shape=(capacity,))
        self.token = np.ctypeslib.as_array(b.token, shape=(capacity,)) if n_embd == 0 else None
        self.embd = np.ctypeslib.as_array(b.embd, shape=(capacity, n_embd)) if n_embd else None
        for i in range(capacity):
            b.seq_id[i][0] = 0
        self.n_seq_id[:] = 1

    def fill(self, start_pos: int, n: int, want_logits: Logits, positions: np.ndarray | None = None) -> None:
        """Rows ``0..n-1``: positions from ``start_pos`` on (every section the same), or ``positions``
        (``[3, n]`` t/h/w ids, M-RoPE); logits as asked."""
        self.batch.n_tokens = n
        if self.n_pos == 1:
            self.pos[:n] = np.arange(start_pos, start_pos + n, dtype=self.pos.dtype)
        else:  # section-major: pos[j * n + i] is row i's position on section j; the fourth stays 0
            rows = positions if positions is not None else np.broadcast_to(np.arange(start_pos, start_pos + n), (3, n))
            self.pos[:self.n_pos * n] = 0
            self.pos[:3 * n] = np.asarray(rows, dtype=np.int32).reshape(-1)
        self.logits[:n] = 1 if want_logits == "all" else 0
        if want_logits == "last":
            self.logits[n - 1] = 1

    def free(self) -> None:
        if self.batch is not None:
            if self._own_pos is not None:  # llama_batch_free frees what llama_batch_init allocated
                self.batch.pos = ctypes.cast(self._own_pos, ctypes.POINTER(ctypes.c_int32))
            self.lib.llama_batch_free(self.batch)
            self.batch = None


class LlamaCppLLM:
    """A GGUF LLM loaded into llama.cpp, fed with token ids and/or embeddings."""

    def __init__(self, path: str | Path, settings: LlamaSettings | None = None, *,
                 expect_architecture: str | None = None, expect_n_embd: int | None = None) -> None:
        self.path = Path(path)
        self.settings = s = settings or LlamaSettings()
        self.info: GgufInfo = read_gguf_info(self.path)
        check_expected(self.info, self.path, architecture=expect_architecture, n_embd=expect_n_embd)
        if s.n_batch < 1 or s.n_ctx < 8 or (s.first_cells is not None and s.first_cells < 8):
            raise InputError(f"n_batch ({s.n_batch}), n_ctx ({s.n_ctx}) and first_cells ({s.first_cells}) must be "
                             "positive (n_ctx and first_cells >= 8).")
        if s.kv_type not in KV_TYPES:
            raise InputError(f"unknown KV cache type '{s.kv_type}'.", hint=f"Choose one of {', '.join(KV_TYPES)}.")
        self.lib = llama()
        self._model = self._ctx = None
        self._batches: list[_Batch] = []
        self.device = choose_device(s.device, s.gpu_layers)
        load_log = self._load_model()
        self._threads = threads = s.threads or default_threads()
        first = s.n_ctx if s.first_cells is None else min(s.n_ctx, max(s.first_cells, s.n_batch))
        self._create_context(first)
        self._vocab = self.lib.llama_model_get_vocab(self._model)
        self.n_embd = int(self.lib.llama_model_n_embd_inp(self._model))
        self.n_vocab = int(self.lib.llama_vocab_n_tokens(self._vocab))
        # llama.cpp may clamp n_batch down to the context's cells; a batch above the context's
        # real n_batch aborts the process, so read both back (the first context has at least
        # n_batch cells, so later, larger ones keep them). Our limit is the n_ctx asked for.
        self.n_ctx = s.n_ctx
        self.n_batch = int(self.lib.llama_n_batch(self._ctx))
        self.n_ubatch = int(self.lib.llama_n_ubatch(self._ctx))
        self.n_past = 0  # cells in the KV cache
        self.next_pos = 0  # the position of the next token (past M-RoPE media: the largest + 1)
        self.mrope = int(self.lib.llama_model_rope_type(self._model)) in MROPE_TYPES
        self._tokens = _Batch(self.lib, self.n_batch, 0)
        self._embeds = _Batch(self.lib, self.n_batch, self.n_embd, MROPE_SECTIONS if self.mrope else 1)
        self._batches = [self._tokens, self._embeds]
        self._piece_buf = ctypes.create_string_buffer(256)
        self.report = self._device_report(threads, load_log)

    def _load_model(self) -> list[str]:
        """Load the GGUF into llama.cpp; returns llama.cpp's load log (weight buffer sizes)."""
        mparams = self.lib.llama_model_default_params()
        mparams.n_gpu_layers = self.device.gpu_layers
        # an explicit list (empty for the CPU): NULL would mean every GPU llama.cpp registered
        devices = self.device.devices_array()
        mparams.devices = ctypes.cast(devices, ctypes.c_void_p)
        mparams.use_extra_bufts = self.settings.use_extra_bufts
        mparams.load_mode = LOAD_MODE_MMAP if self.settings.mmap_weights else LOAD_MODE_READ
        with captured_log() as load_log:
            self._model = self.lib.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise CorruptArtifactError(
                f"llama.cpp could not load '{self.path.name}' ({last_log()}).",
                hint="The GGUF is corrupt or uses an architecture this llama.cpp does not know.",
            )
        return load_log

    def _create_context(self, cells: int) -> None:
        """A context of ``cells`` KV cells (llama.cpp pads the count up to a multiple of 256)."""
        s = self.settings
        cparams = self.lib.llama_context_default_params()
        cparams.n_ctx = cells
        cparams.n_batch = s.n_batch
        cparams.n_ubatch = min(s.n_ubatch, s.n_batch)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = self._threads
        if s.flash_attn is not None:
            cparams.flash_attn_type = 1 if s.flash_attn else 0
        cparams.type_k = cparams.type_v = KV_TYPES[s.kv_type].ggml_type
        self._ctx = self.lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {cells} cells ({last_log()}).",
                               hint="Lower n_ctx, or free memory.")
        self._mem = self.lib.llama_get_memory(self._ctx)
        self.kv_cells = int(self.lib.llama_n_ctx(self._ctx))

    def _make_room(self, total: int) -> None:
        """Grow the KV cache to hold ``total`` cells (within ``n_ctx``, which ``check_fits`` enforces):
        double it (at least), move the cached cells over through llama.cpp's sequence state.
        The old context is freed before the new one is made, so the two never coexist."""
        if total <= self.kv_cells:
            return
        cells = min(self.n_ctx, max(2 * self.kv_cells, 1 << (total - 1).bit_length()))
        state = self._seq_state() if self.n_past else None
        n_past, next_pos = self.n_past, self.next_pos
        self.lib.llama_free(self._ctx)
        self._ctx = None
        self._create_context(cells)
        if self.kv_cells < total:
            self.close()
            raise BackendError(f"llama.cpp made a context of {self.kv_cells} cells where {total} were asked for.")
        if state is not None:
            read = self.lib.llama_state_seq_set_data(self._ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                     state.size, 0)
            if read != state.size:
                self.close()
                raise BackendError(f"llama.cpp did not take the cache back after growing it to {cells} cells "
                                   f"({last_log()}).", hint="Run with a fixed context (--n-ctx, first_cells=None).")
        self.n_past, self.next_pos = n_past, next_pos

    def _seq_state(self) -> np.ndarray:
        """Sequence 0's cache as llama.cpp serialises it, as uint8 (no copy beyond llama.cpp's write)."""
        size = self.lib.llama_state_seq_get_size(self._ctx, 0)
        buf = np.empty(size, np.uint8)
        written = self.lib.llama_state_seq_get_data(self._ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                    size, 0)
        return buf[:written]

    def _device_report(self, threads: int, load_log: list[str]) -> DeviceReport:
        s = self.settings
        info = backend_info()
        return DeviceReport(
            requested=self.device.requested,
            executed=_executed(self.device, load_log),
            precision=self.precision,
            fallback_reason=self.device.fallback_reason,
            details={**_placement(self.device, load_log), "tensor_types": dict(self.info.tensor_types),
                     "cpu_variant": info["cpu_variant"], "threads": threads, "flash_attn": s.flash_attn,
                     "kv_type": s.kv_type, "n_ctx": self.n_ctx, "kv_cells_at_start": self.kv_cells,
                     "n_batch": self.n_batch,
                     "extra_bufts": s.use_extra_bufts, "mmap_weights": s.mmap_weights,
                     "weight_buffers_mib": weight_buffers(load_log)},
        )

    @property
    def bos_id(self) -> int | None:
        """The vocabulary's BOS token id, or None when it has none."""
        bos = int(self.lib.llama_vocab_bos(self._vocab))
        return bos if bos >= 0 else None

    def bytes_read_per_token(self, n_past: int) -> float:
        """Bytes one decode step reads at ``n_past`` cached positions (weights + this context's K/V cache)."""
        return self.info.bytes_read_per_token(n_past, KV_TYPES[self.settings.kv_type].bytes_per_value)

    # --- description ---------------------------------------------------------------------

    @property
    def precision(self) -> str:
        """The GGUF's file type (``q4_k_m``, ``f16`` ...); tensors llama.cpp could not give that type
        fell back to others, listed in the report's ``tensor_types``."""
        import gguf

        try:
            name = gguf.LlamaFileType(int(self.info.file_type)).name
            return name.replace("MOSTLY_", "").replace("ALL_", "").lower()
        except (TypeError, ValueError):  # no or unknown general.file_type: the most common weight type
            quant = {k: v for k, v in self.info.tensor_types.items() if k != "f32"}
            return max(quant, key=quant.get) if quant else "f32"

    # --- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool = True) -> list[int]:
        """Text -> token ids with the GGUF's own tokenizer (special tokens recognised, like HF)."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (ctypes.c_int32 * cap)()
        n = self.lib.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self.lib.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, parse_special)
        if n < 0:
            raise BackendError("llama.cpp failed to tokenize the prompt.")
        return list(buf[:n])

    def token_bytes(self, token: int, *, special: bool = False, lstrip: int = 0) -> bytes:
        """The token's text; ``lstrip``: leading spaces to drop (an answer's first piece on a vocabulary
        that prefixes spaces, as transformers' decoder drops it)."""
        n = self.lib.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), lstrip, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self._vocab, token, buf, len(buf), lstrip, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self._vocab, token))

    # --- evaluation --------------------------------------------------------------------------

    def reset(self, keep: int = 0, from_pos: int | None = None, *, clear_buffers: bool = True) -> None:
        """Keep the first ``keep`` cells of the KV cache (0: none). ``from_pos``: the position of the first
        cell dropped (default ``keep``; on M-RoPE models positions and cells differ). ``clear_buffers``
        (with ``keep`` 0): zero the cache's tensors too, not only its cells' metadata. Dropped cells are
        masked out of attention, but a masked NaN still spreads (0 x NaN), so a caller may skip the
        memset (0.75 ms on the bench LLaVA's context) only when no call since the last clear produced
        non-finite values (``LLMSession`` tracks that)."""
        keep = max(0, min(keep, self.n_past))
        if keep == 0:
            self.lib.llama_memory_clear(self._mem, clear_buffers)
            from_pos = 0
        else:
            from_pos = keep if from_pos is None else from_pos
            self.lib.llama_memory_seq_rm(self._mem, 0, from_pos, -1)
        self.n_past, self.next_pos = keep, from_pos

    def check_room(self, n: int) -> None:
        """Refuse ``n`` more positions after the current ones when the context cannot hold them, else
        make room for them in the KV cache."""
        self.check_fits(self.n_past + n)
        self._make_room(self.n_past + n)

    def check_fits(self, total: int) -> None:
        """Refuse a sequence of ``total`` positions when the context cannot hold it."""
        if total > self.n_ctx:
            raise ContextOverflowError(
                f"the sequence needs {total} positions, the context holds {self.n_ctx}.",
                hint="Shorten the prompt, use fewer images, or raise n_ctx (--n-ctx).",
            )

    def eval_tokens(self, tokens: Sequence[int], logits: Logits = "last") -> np.ndarray | None:
        """Decode ``T`` token ids at the next positions; returns ``[V]`` (last) or ``[T, V]`` (all) logits."""
        ids = self.validate_tokens(tokens)
        self.check_room(ids.size)
        batch = self._tokens
        return self._run_chunks(ids.size, logits, lambda lo, hi: batch.token.__setitem__(slice(0, hi - lo), ids[lo:hi]), batch)

    def eval_embeddings(self, embeds: np.ndarray, logits: Logits = "last",
                        positions: np.ndarray | None = None, *, causal: bool = True) -> np.ndarray | None:
        """Decode ``[N, D]`` embeddings (image/audio tokens) at the next positions, or, on an M-RoPE
        model, at ``positions`` (``[3, N]`` t/h/w ids, none below ``next_pos``). ``causal=False``: the rows
        attend to each other both ways (llama.cpp's non-causal attention, as mtmd decodes a Gemma 3
        image); they must then fit in one micro-batch, or a later chunk's rows would go unseen."""
        arr = self.validate_embeddings(embeds)
        self.check_room(arr.shape[0])
        if positions is not None:
            positions = self._validate_positions(positions, arr.shape[0])
        batch = self._embeds

        def run() -> np.ndarray | None:
            return self._run_chunks(arr.shape[0], logits,
                                    lambda lo, hi: batch.embd.__setitem__(slice(0, hi - lo), arr[lo:hi]), batch, positions)
        if causal:
            return run()
        one_batch = min(self.n_batch, self.n_ubatch)
        if arr.shape[0] > one_batch:
            raise InputError(f"{arr.shape[0]} embeddings that attend to each other both ways must be decoded in one "
                             f"batch; this context's batch holds {one_batch}.",
                             hint="Use fewer images in one prompt, or (Python API) raise LlamaSettings n_batch and "
                                  "n_ubatch to at least that many rows.")
        self.lib.llama_set_causal_attn(self._ctx, False)
        try:
            return run()
        finally:
            self.lib.llama_set_causal_attn(self._ctx, True)

    def _validate_positions(self, positions: np.ndarray, n: int) -> np.ndarray:
        pos = np.asarray(positions)
        if not self.mrope:
            raise InputError("per-row (t, h, w) positions need an M-RoPE model; this GGUF numbers rows in order.")
        if pos.shape != (3, n) or not np.issubdtype(pos.dtype, np.integer):
            raise InputError(f"M-RoPE positions must be integer [3, {n}], got {pos.dtype} {pos.shape}.")
        if pos.min() < self.next_pos:  # llama.cpp refuses positions behind the cache's (inconsistent sequence)
            raise InputError(f"M-RoPE positions start at {int(pos.min())}, behind the next position {self.next_pos}.")
        return np.ascontiguousarray(pos, dtype=np.int32)

    def step(self, token: int) -> np.ndarray:
        """Decode one token at the next position; returns a *view* of its logits ``[V]`` (valid until the
        next decode). The generation loop's lean path: no batch-level checks beyond the token and room."""
        if not 0 <= token < self.n_vocab:
            raise InputError(f"token id {token} out of range [0, {self.n_vocab}).")
        if self.n_past >= min(self.kv_cells, self.n_ctx):  # the lean path's one test: full, or room to make
            self.check_room(1)
        batch = self._tokens
        batch.token[0] = token
        batch.fill(self.next_pos, 1, "last")
        rc = self.lib.llama_decode(self._ctx, batch.batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} ({last_log()}).")
        self.n_past += 1
        self.next_pos += 1
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self._ctx, 0), shape=(self.n_vocab,))

    def validate_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        """Token ids as int64 ``[T]``, refused when empty or outside the vocabulary."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("no tokens to evaluate.")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise InputError(f"token id out of range [0, {self.n_vocab}): {int(ids.min())}..{int(ids.max())}.")
        return ids

    def validate_embeddings(self, embeds: Any) -> np.ndarray:
        if not isinstance(embeds, np.ndarray):
            raise EmbeddingShapeError(f"embeddings must be a numpy array, got {type(embeds).__name__}.")
        if embeds.ndim != 2 or embeds.shape[1] != self.n_embd:
            raise EmbeddingShapeError(
                f"embeddings have shape {embeds.shape}; the LLM takes [n, {self.n_embd}].",
                hint="The encoder and the LLM do not belong together; use the bundle's own LLM.",
            )
        if embeds.shape[0] == 0:
            raise EmbeddingShapeError("embeddings are empty (0 rows).")
        if not np.issubdtype(embeds.dtype, np.floating):
            raise EmbeddingShapeError(f"embeddings must be floating point, got {embeds.dtype}.")
        arr = np.ascontiguousarray(embeds, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise NonFiniteError("embeddings hold NaN or Inf values.", hint="Check the encoder's input and artifact.")
        return arr

    def _run_chunks(self, n: int, logits: Logits, put, batch: _Batch,
                    positions: np.ndarray | None = None) -> np.ndarray | None:
        rows: list[np.ndarray] = []
        last: np.ndarray | None = None
        for lo in range(0, n, self.n_batch):
            hi = min(n, lo + self.n_batch)
            put(lo, hi)
            final = hi == n
            want: Logits = "all" if logits == "all" else ("last" if final and logits == "last" else "none")
            chunk = positions[:, lo:hi] if positions is not None else None
            batch.fill(self.next_pos, hi - lo, want, chunk)
            rc = self.lib.llama_decode(self._ctx, batch.batch)
            if rc != 0:
                raise BackendError(f"llama_decode failed with code {rc} ({last_log()}).",
                                   hint="The context may be full; raise n_ctx or shorten the prompt.")
            self.n_past += hi - lo
            self.next_pos = int(chunk.max()) + 1 if chunk is not None else self.next_pos + hi - lo
            if want == "all":
                rows.extend(self._logits_row(i) for i in range(hi - lo))
            elif want == "last":
                last = self._logits_row(hi - lo - 1)
        if logits == "all":
            return np.stack(rows)
        return last

    def read_seq_state(self) -> bytes:
        """Sequence 0's KV cache as llama.cpp serialises it (``llama_state_seq_get_data``)."""
        return self._seq_state().tobytes()

    def write_seq_state(self, blob: np.ndarray, n_positions: int, next_pos: int | None = None) -> None:
        """Replace the cache with a serialised sequence 0 (``blob``: uint8 bytes) of ``n_positions``
        cells; the next decode goes on at ``next_pos`` (default ``n_positions``; M-RoPE: past the
        largest position). ``kv_handoff`` builds the blob."""
        data = np.ascontiguousarray(blob, np.uint8)
        self.check_fits(n_positions)
        # the cells' metadata only: the restored cells are overwritten, and whoever may have left non-finite
        # values in the others clears them before (``reset``); a second memset of the whole cache here
        # cost 0.75 ms per call on the bench LLaVA
        self.reset(clear_buffers=False)
        self._make_room(n_positions)
        read = self.lib.llama_state_seq_set_data(self._ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                 data.size, 0)
        if read != data.size:
            self.reset()
            raise BackendError(f"llama.cpp refused the sequence state ({last_log()}).",
                               hint="Run without the prefill graph (fast_prefill=False / --no-fast-prefill).")
        self.n_past, self.next_pos = n_positions, n_positions if next_pos is None else next_pos

    def _logits_row(self, i: int) -> np.ndarray:
        ptr = self.lib.llama_get_logits_ith(self._ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    # --- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        for b in self._batches:
            b.free()
        self._batches = []
        if self._ctx:
            self.lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            self.lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> "LlamaCppLLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def _offloaded(load_log: list[str]) -> tuple[int, int] | None:
    """(layers offloaded, layers offloadable) from llama.cpp's load log."""
    for line in load_log:
        match = _OFFLOADED.search(line)
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def _executed(device: DeviceChoice, load_log: list[str]) -> str:
    """CPU; GPU when every layer is on the device; CPU+GPU when some are (or none: llama.cpp then still
    sends large prefill batches' matrix products to the GPU)."""
    if device.device is None:
        return "CPU"
    done = _offloaded(load_log)
    return "GPU" if done and done[0] == done[1] else "CPU+GPU"


def _placement(device: DeviceChoice, load_log: list[str]) -> dict[str, Any]:
    if device.device is None:
        return {"backend": "CPU"}
    done = _offloaded(load_log)
    return {"backend": device.device.backend, "device": device.device.name,
            "device_description": device.device.description, "device_features": dict(device.device.features),
            "gpu_layers": f"{done[0]}/{done[1]}" if done else "unknown"}
