"""Prefill with onnxruntime, decode with llama.cpp: the prompt's KV cache handed over in memory.

On CPUs without fast int8 dot products in ggml's kernels (AVX2 without VNNI), llama.cpp prefills
at roughly sgemm speed whatever the GGUF type, while onnxruntime's int8 GEMM runs the same
matmuls ~2.5x faster. A bundle exported with ``--prefill int8`` carries the LLM's prefill graph
(``components.llm.artifacts.prefill``): token ids, media embeddings and their mask in; the last
position's logits and every layer's K and V out, already in llama.cpp's cache layout. This module
turns those into llama.cpp's sequence-state blob and loads it with ``llama_state_seq_set_data``;
llama.cpp decodes on from there. The first token needs only the graph's logits, so the LLM session
takes them from ``run_prompt`` and writes the cache (``install``) when the context is next used.

The blob follows llama.cpp's own writer (``llama-context.cpp`` / ``llama-kv-cache.cpp``):

    magic u32 | seq_id i32 | n_stream u32 | cell_count u32
    per cell: pos i32 | n_seq u32 | seq_id i32
              (M-RoPE contexts: pos i32 | n_seq u32 | x i32 | y i32 | tok i32 | seq_id i32: the cell's
              t position, its w and h positions, and its token id or -1 for an embedding row)
    v_trans u32 | n_layer u32
    per layer K: type i32 | row_bytes u64 | cell_count rows
    per layer V: v_trans == 0: like K
                 v_trans == 1: type i32 | el_bytes u32 | n_embd_v u32 | n_embd_v rows of cell_count values

Nothing is assumed about the context: ``KVHandoff.attach`` has llama.cpp prefill a short probe
prompt, parses the blob it writes (layer count, types, widths, V transposed or not, which flash
attention decides), builds ours for the same prompt from the graph, and requires every byte that
is not K/V data to be equal and the first layer's K and V values to agree (cosine >=
``PROBE_COSINE``, which a wrong rotary order, head layout or model fails). Any difference gives
a reason instead of a hand-over; the pipeline then prefills with llama.cpp and reports why.

On M-RoPE models (Qwen2-VL, Qwen2.5-VL: llama.cpp's ``qwen2vl``) the graph also takes each row's
(t, h, w) positions (``positions [3, n]``) and the hand-over writes them into the cells; decoding
goes on from the largest + 1, as after llama.cpp's own prefill.

Shapes: L layers, n positions, C = KV heads x head dim, D = the LLM's embedding width, V vocabulary.
Imports no torch and no transformers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebridge.errors import BackendError, BackendUnavailableError, InputError
from edgebridge.runtimes.llamacpp.llm import KV_TYPES, LlamaCppLLM
from edgebridge.runtimes.registry import EncoderSession, open_encoder

STATE_MAGIC = 0xAF143CD8  # llama-context.cpp: io_magic
GGML_DTYPES = {KV_TYPES["f32"].ggml_type: np.float32, KV_TYPES["f16"].ggml_type: np.float16}  # what we write
PROBE_COSINE = 0.98  # first-layer K/V of the probe prompt, ours vs llama.cpp's (quantized GGUFs included)
PROBE_TOKENS = 6
# The graph's eager attention holds [heads, n, n] float32 scores per layer (16 MiB per head at 2048
# positions), where llama.cpp prefills in n_batch chunks; longer prompts stay with llama.cpp.
MAX_POSITIONS = 2048

GRAPH_INPUTS = ("input_ids", "media_embeds", "media_mask")  # [1, n] int64, [1, n, D] f32, [1, n] bool
MROPE_INPUT = "positions"  # [3, n] int64 (t, h, w) per row: M-RoPE graphs only
TOKEN_NULL = -1  # llama.h: LLAMA_TOKEN_NULL, an embedding row's token in an M-RoPE cell
GRAPH_OUTPUTS = ("logits", "k", "v")  # [1, V] f32, [L, n, C] f16, [L, n, C] f16 (older graphs: [L, C, n])


class HandoffUnavailable(BackendUnavailableError):
    """This context's cache cannot take our state; the message says why (the pipeline reports it and
    lets llama.cpp prefill)."""


@dataclass(frozen=True)
class StateLayout:
    """What llama.cpp's sequence state looks like in this context (read from its own blob)."""

    v_trans: bool
    k_types: tuple[int, ...]  # ggml type per layer
    v_types: tuple[int, ...]
    k_width: tuple[int, ...]  # channels per layer (C)
    v_width: tuple[int, ...]
    cell_ext: bool = False  # M-RoPE: each cell also holds its x, y and token

    @property
    def n_layer(self) -> int:
        return len(self.k_types)

    @property
    def cell_ints(self) -> int:
        """int32 fields per cell: pos, n_seq, (x, y, tok,) seq_id."""
        return 6 if self.cell_ext else 3

    def data_spans(self, n: int) -> list[tuple[int, int]]:
        """Byte ranges of K/V values in a blob of ``n`` cells, every layer's K then every layer's V
        (everything else is layout; the blob ends where the last span does)."""
        spans, off = [], 16 + 4 * self.cell_ints * n + 8
        for t, c in zip(self.k_types + self.v_types, self.k_width + self.v_width):
            size = n * c * np.dtype(GGML_DTYPES[t]).itemsize
            spans.append((off + 12, off + 12 + size))  # a 12-byte header per layer, either V layout
            off += 12 + size
        return spans


def parse_layout(blob: bytes, cell_ext: bool = False) -> tuple[StateLayout, int]:
    """(layout, cell count) of a llama.cpp sequence-state blob for one sequence at positions 0..n-1;
    ``cell_ext``: the context's cells carry M-RoPE's x, y and token."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HandoffUnavailable(f"llama.cpp's sequence state differs from the layout edgebridge writes ({what})")

    need(len(blob) >= 24, "too short")
    magic, _seq, n_stream, n = struct.unpack_from("<IiII", blob, 0)
    need(magic == STATE_MAGIC, f"magic {magic:#x}")
    need(n_stream == 1, f"{n_stream} streams")
    ints = 6 if cell_ext else 3
    need(len(blob) >= 16 + 4 * ints * n + 8, "too short for its cells")
    meta = np.frombuffer(blob, np.int32, count=ints * n, offset=16).reshape(n, ints)
    need(bool((meta[:, 0] == np.arange(n)).all() and (meta[:, 1] == 1).all() and (meta[:, -1] == 0).all()),
         "cell metadata")
    off = 16 + 4 * ints * n
    v_trans, n_layer = struct.unpack_from("<II", blob, off)
    need(n_layer > 0, "no layers")
    off += 8
    k_types, k_width, v_types, v_width = [], [], [], []
    for _ in range(n_layer):
        typ, row = struct.unpack_from("<iQ", blob, off)
        need(typ in GGML_DTYPES, f"K cache type {typ}; edgebridge writes f32 and f16 caches")
        k_types.append(typ)
        k_width.append(row // np.dtype(GGML_DTYPES[typ]).itemsize)
        off += 12 + n * row
    for _ in range(n_layer):
        if v_trans:
            typ, el, width = struct.unpack_from("<iII", blob, off)
            need(typ in GGML_DTYPES and el == np.dtype(GGML_DTYPES[typ]).itemsize, f"V cache type {typ}")
        else:
            typ, row = struct.unpack_from("<iQ", blob, off)
            need(typ in GGML_DTYPES, f"V cache type {typ}")
            width = row // np.dtype(GGML_DTYPES[typ]).itemsize
        v_types.append(typ)
        v_width.append(width)
        off += 12 + n * width * np.dtype(GGML_DTYPES[typ]).itemsize
    need(off == len(blob), f"{len(blob) - off} unexplained bytes")
    layout = StateLayout(bool(v_trans), tuple(k_types), tuple(v_types), tuple(k_width), tuple(v_width), cell_ext)
    return layout, n


def cell_fields(ids: np.ndarray, mask: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """``[n, 4]`` int32 per cell: t position, x (w), y (h), token (-1 for an embedding row), as llama.cpp
    stores them (a text row's three positions are one); without ``positions``: 0..n-1."""
    n = ids.shape[0]
    pos = np.broadcast_to(np.arange(n), (3, n)) if positions is None else positions
    return np.stack([pos[0], pos[2], pos[1], np.where(mask, TOKEN_NULL, ids)], axis=1).astype(np.int32)


def build_state(k: np.ndarray, v: np.ndarray, layout: StateLayout, cells: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's sequence state (seq 0) from ``k [L, n, C]`` and ``v [L, C, n]``, written straight into
    one buffer (bytes as uint8); ``cells`` (``cell_fields``): positions 0..n-1 when not given."""
    layers, n, _ = k.shape
    if layers != layout.n_layer or v.shape[0] != layers or v.shape[2] != n:
        raise HandoffUnavailable(f"the prefill graph gives {layers} layers, llama.cpp's cache has {layout.n_layer}")
    if cells is None:
        cells = np.stack([np.arange(n)] * 3 + [np.full(n, TOKEN_NULL)], axis=1)
    buf = np.empty(layout.data_spans(n)[-1][1], np.uint8)
    struct.pack_into("<IiII", buf, 0, STATE_MAGIC, 0, 1, n)
    off = 16 + 4 * layout.cell_ints * n
    meta = buf[16:off].view(np.int32).reshape(n, layout.cell_ints)
    meta[:, 0] = cells[:, 0]  # pos
    meta[:, 1] = 1  # one sequence per cell
    if layout.cell_ext:
        meta[:, 2:5] = cells[:, 1:4]  # x, y, token
    meta[:, -1] = 0  # sequence 0
    struct.pack_into("<II", buf, off, int(layout.v_trans), layers)
    off += 8
    for layer in range(layers):
        dtype, width = GGML_DTYPES[layout.k_types[layer]], layout.k_width[layer]
        _check_width(k.shape[2], width, "K")
        struct.pack_into("<iQ", buf, off, layout.k_types[layer], width * np.dtype(dtype).itemsize)
        off = _put(buf, off + 12, k[layer], dtype)
    for layer in range(layers):
        dtype, width = GGML_DTYPES[layout.v_types[layer]], layout.v_width[layer]
        _check_width(v.shape[1], width, "V")
        size = np.dtype(dtype).itemsize
        if layout.v_trans:  # one row per channel: the graph's [C, n] as it is
            struct.pack_into("<iII", buf, off, layout.v_types[layer], size, width)
            off = _put(buf, off + 12, v[layer], dtype)
        else:  # one row per cell
            struct.pack_into("<iQ", buf, off, layout.v_types[layer], width * size)
            off = _put(buf, off + 12, v[layer].T, dtype)
    return buf


def _check_width(got: int, want: int, which: str) -> None:
    if got != want:
        raise HandoffUnavailable(f"the prefill graph's {which} rows hold {got} channels, llama.cpp's hold {want}")


TRANSPOSE_BLOCK = 32  # columns per block; 32 f16 are one 64-byte cache line


def _put(buf: np.ndarray, off: int, values: np.ndarray, dtype: type) -> int:
    """Copy ``values`` (cast to ``dtype``) into ``buf`` at ``off``; the offset after it. A transposed view
    (V between the graph's layout and llama.cpp's) is copied in blocks of columns: for the bench LLaVA's
    12 x [219, 768] f16 values 0.53 ms against 1.45 ms in one strided copy (2048 x 1024: 15 vs 67 ms).
    The whole state with V transposed so still takes 0.9-1.2 ms against 0.24 ms straight (the fresh
    buffer's page faults come on top of the scattered writes): the export writes the graph's V in the
    layout its recorded flash-attention setting keeps (``runtime_choice.match_values_layout``), so the
    transposed copy is paid here only when the caller's settings differ from the recorded ones."""
    size = values.size * np.dtype(dtype).itemsize
    dst = buf[off:off + size].view(dtype).reshape(values.shape)
    if values.ndim == 2 and values.T.flags.c_contiguous and not values.flags.c_contiguous:
        for col in range(0, values.shape[1], TRANSPOSE_BLOCK):
            dst[:, col:col + TRANSPOSE_BLOCK] = values[:, col:col + TRANSPOSE_BLOCK]
    else:
        dst[...] = values
    return off + size


def compare_states(ours: np.ndarray, theirs: bytes, layout: StateLayout, n: int) -> list[float]:
    """Cosine of our K/V values vs llama.cpp's per tensor (every layer's K, then every layer's V);
    raises ``HandoffUnavailable`` when a layout byte differs."""
    theirs_arr = np.frombuffer(theirs, np.uint8)
    if ours.size != theirs_arr.size:
        raise HandoffUnavailable(f"our state is {ours.size} bytes, llama.cpp's {theirs_arr.size}")
    start, cosines = 0, []
    types = layout.k_types + layout.v_types
    for (lo, hi), typ in zip(layout.data_spans(n), types):
        if not np.array_equal(ours[start:lo], theirs_arr[start:lo]):
            raise HandoffUnavailable(f"layout bytes {start}..{lo} differ from llama.cpp's")
        a = ours[lo:hi].view(GGML_DTYPES[typ]).astype(np.float64)
        b = theirs_arr[lo:hi].view(GGML_DTYPES[typ]).astype(np.float64)
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b)))
        start = hi
    if not np.array_equal(ours[start:], theirs_arr[start:]):
        raise HandoffUnavailable("trailing bytes differ from llama.cpp's")
    return cosines


class PrefillGraph:
    """The bundle's prefill graph on onnxruntime (CPU)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str = "int8") -> None:
        self.session: EncoderSession = open_encoder("onnxruntime", [Path(path)], threads=threads,
                                                    artifact_precision=precision)
        names = tuple(self.session.input_names)
        if names not in (GRAPH_INPUTS, GRAPH_INPUTS + (MROPE_INPUT,)) or \
                tuple(self.session.output_names) != GRAPH_OUTPUTS:
            raise BackendError(
                f"'{Path(path).name}' is not an edgebridge prefill graph (inputs {self.session.input_names}, "
                f"outputs {self.session.output_names}).", hint="Re-export the bundle with --prefill.")
        self.precision = precision
        self.mrope = MROPE_INPUT in names
        # v [L, n, C] (one row per position) or [L, C, n] (per channel: flash attention recorded off, or a
        # graph before 2026-12-01): the dynamic axis tells
        v_shape = self.session.output_shapes[2]
        if len(v_shape) != 3 or (v_shape[1] is None) == (v_shape[2] is None):
            raise BackendError(f"'{Path(path).name}' gives values of shape {v_shape}; expected [L, n, C] or [L, C, n] "
                               "with n dynamic.", hint="Re-export the bundle with --prefill.")
        self.v_per_position = v_shape[1] is None

    def run(self, ids: np.ndarray, media: np.ndarray, mask: np.ndarray, positions: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``ids [n]``, ``media [n, D]``, ``mask [n]`` (True where ``media`` holds the position's embedding),
        on an M-RoPE graph ``positions [3, n]`` (default 0..n-1 on every axis) -> logits ``[V]``,
        k ``[L, n, C]``, v ``[L, C, n]``."""
        feed = {"input_ids": np.ascontiguousarray(ids, np.int64)[None],
                "media_embeds": np.ascontiguousarray(media, np.float32)[None],
                "media_mask": np.ascontiguousarray(mask, bool)[None]}
        if self.mrope:
            n = ids.shape[0]
            feed[MROPE_INPUT] = np.ascontiguousarray(np.broadcast_to(np.arange(n), (3, n)) if positions is None
                                                     else positions, np.int64)
        elif positions is not None:
            raise InputError("this prefill graph numbers positions in order; it takes no (t, h, w) positions.")
        logits, k, v = self.session.run(feed)
        # [L, C, n] as a view: build_state copies V per position (flash attention's cache) without a
        # transpose from a per-position graph, and transposes once where llama.cpp keeps V per channel
        return logits[0], k, v.transpose(0, 2, 1) if self.v_per_position else v

    def close(self) -> None:
        self.session.close()


@dataclass(frozen=True)
class PendingState:
    """A prompt's cache from the prefill graph, not yet written into llama.cpp's context
    (``KVHandoff.run_prompt``): ``k [L, n, C]``, ``v [L, C, n]``, the cells' fields, ``n`` cells, and
    the position decoding goes on at."""

    k: np.ndarray
    v: np.ndarray
    cells: np.ndarray
    n: int
    next_pos: int


class KVHandoff:
    """A prefill graph bound to one llama.cpp context whose cache layout it was checked against."""

    def __init__(self, llm: LlamaCppLLM, graph: PrefillGraph, layout: StateLayout, probe_cosine: float) -> None:
        self.llm, self.graph, self.layout, self.probe_cosine = llm, graph, layout, probe_cosine
        self.max_positions = MAX_POSITIONS

    def takes(self, n: int) -> bool:
        """Whether a prompt of ``n`` positions goes through the graph (else llama.cpp prefills it)."""
        return 0 < n <= self.max_positions

    @classmethod
    def attach(cls, llm: LlamaCppLLM, graph: PrefillGraph) -> "KVHandoff":
        """Probe the context (it is left empty); raises ``HandoffUnavailable`` with the reason."""
        ids = np.arange(1, PROBE_TOKENS + 1, dtype=np.int64) % llm.n_vocab
        llm.reset()
        try:
            llm.eval_tokens(ids.tolist(), logits="none")
            theirs = llm.read_seq_state()
        finally:
            llm.reset()
        if graph.mrope != llm.mrope:
            raise HandoffUnavailable("the prefill graph and the GGUF disagree on M-RoPE positions")
        layout, n = parse_layout(theirs, cell_ext=llm.mrope)
        if n != ids.size:
            raise HandoffUnavailable(f"llama.cpp's state holds {n} cells for a {ids.size}-token probe")
        no_media = np.zeros(ids.size, bool)
        try:
            _, k, v = graph.run(ids, np.zeros((ids.size, llm.n_embd), np.float32), no_media)
        except BackendError as exc:  # e.g. a graph of another width
            raise HandoffUnavailable(f"the prefill graph does not run on this LLM's inputs ({exc.message})") from None
        cosines = compare_states(build_state(k, v, layout, cell_fields(ids, no_media, None)), theirs, layout, n)
        # The first layer's K and V see one layer of weight rounding, so they agree closely whatever the
        # GGUF type when the channel order and layout are right, and not at all when they are wrong;
        # deeper layers add each type's rounding (0.94 at q4_0 on random weights), the export gate's business.
        cosine = min(cosines[0], cosines[layout.n_layer])
        if cosine < PROBE_COSINE:
            raise HandoffUnavailable(f"the prefill graph's KV cache disagrees with llama.cpp's (cosine {cosine:.4f} "
                                     f"< {PROBE_COSINE}): the graph and the GGUF do not belong together")
        return cls(llm, graph, layout, cosine)

    def prefill(self, ids: np.ndarray, media: np.ndarray, mask: np.ndarray,
                positions: np.ndarray | None = None) -> np.ndarray:
        """Replace the context's cache with the prompt's (positions 0..n-1, or on an M-RoPE model
        ``positions [3, n]``); the last logits ``[V]``."""
        logits, state = self.run_prompt(ids, media, mask, positions)
        self.install(state)
        return logits

    def run_prompt(self, ids: np.ndarray, media: np.ndarray, mask: np.ndarray,
                   positions: np.ndarray | None = None) -> tuple[np.ndarray, PendingState]:
        """The graph on the prompt: its last logits ``[V]`` and its cache, not yet in the context
        (``install``); ``prefill`` does both."""
        n = int(ids.shape[0])
        if n == 0:
            raise InputError("no positions to prefill.")
        if positions is not None and (np.shape(positions) != (3, n) or not np.issubdtype(positions.dtype, np.integer)):
            raise InputError(f"M-RoPE positions must be integer [3, {n}], got {np.shape(positions)}.")
        self.llm.check_fits(n)
        logits, k, v = self.graph.run(ids, media, mask, positions)
        if k.shape[0] != self.layout.n_layer or v.shape[0] != k.shape[0] or k.shape[1] != n or v.shape[2] != n:
            raise BackendError(f"the prefill graph gave K {k.shape} / V {v.shape} for {n} positions; llama.cpp's "
                               f"cache has {self.layout.n_layer} layers.", hint="Re-export the bundle.")
        next_pos = n if positions is None else int(positions.max()) + 1
        return logits, PendingState(k, v, cell_fields(ids, mask, positions), n, next_pos)

    def install(self, state: PendingState) -> None:
        """Write ``state`` into the context, replacing its cache (1.3-2.9 ms on the bench LLaVA: the
        state built, then ``llama_state_seq_set_data``)."""
        try:
            blob = build_state(state.k, state.v, self.layout, state.cells)
        except HandoffUnavailable as exc:
            raise BackendError(f"the prefill graph's output does not fit llama.cpp's cache ({exc}).") from None
        self.llm.write_seq_state(blob, state.n, next_pos=state.next_pos)

    def describe(self) -> dict[str, object]:
        return {"engine": "onnxruntime", "precision": self.graph.precision, "handoff": "llama_state_seq_set_data",
                "cache_written": "when the context is next used (the second token, a prompt keeping the prefix)",
                "v_trans": self.layout.v_trans, "probe_cosine": round(self.probe_cosine, 6),
                "max_positions": self.max_positions}
