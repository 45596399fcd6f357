"""The prefill graph's rotary as onnxruntime's kernel, and its last layer past K/V for the last row only.

Both are swapped into the float ``*ForCausalLM`` that ``prefill.py`` traces (``fuse_for_prefill``); the
graph is then held to transformers' own model by the same gates as before.

**Attention** (``PrefillAttention``): transformers' eager attention traces to ~30 nodes a layer: rotary by
Slice / Neg / Concat / Mul / Add on Q and K, then a Gather that reorders the cached K rows into llama.cpp's
channel order. Here Q and K are rotated by onnxruntime's ``com.microsoft.RotaryEmbedding`` kernel, and
for llama.cpp's NORM rope (llama, mistral: rotary on interleaved pairs) the Q and K projection rows are
written in llama.cpp's order and the kernel rotates pairs, so K needs no reorder (Q.K is the same under
one permutation of both); NEOX models (qwen2, Qwen-VL) keep transformers' order and rotate halves. The
attention itself stays MatMul / Softmax / MatMul, which onnxruntime fuses and runs faster than its fused
``GroupQueryAttention`` kernel here. Measured on the bench LLaVA (12x768 llama, 219 positions, int8
per-tensor) and Qwen2.5-VL (12x768 qwen2, 4 KV heads, 300 positions, int8 per-token), 2 threads,
onnxruntime 1.32, medians of 20 interleaved runs, both with the last layer's FFN on the last row:
``GroupQueryAttention`` 35.1-35.8 / 48.2-48.3 ms, this 33.0-33.3 / 45.7-45.9 ms; the graph before either
(transformers' attention traced, every FFN on every row) took 40.5 ms on LLaVA.

**Last layer** (``PrefillAttention(last_row_only=True)``, ``LastRowNorm``): the graph returns the last
position's logits and every layer's K/V; past the last layer's K and V only the last row feeds the
logits, so its query, attention output, projection and FFN run on that row (llama.cpp cuts to its output
rows at the same place). The residual adds broadcast that one row over the others, which nothing reads.
"""

from __future__ import annotations

from typing import Any

import torch

from edgebridge.exporters.gguf.writer import permute_rotary

ROTARY_OP = "com.microsoft::RotaryEmbedding"


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``x [n, heads, d]`` rotated by ``cos / sin [n, d/2]``: pairs ``(2i, 2i+1)`` or halves ``(i, i+d/2)``."""
    c, s = cos[:, None], sin[:, None]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


class RotaryEmbedding(torch.autograd.Function):
    """``x [1, m, heads*d]`` rotated by rows ``positions [1, m]`` of ``cos / sin [n, d/2]`` (pairs or halves,
    as ``_rotate``). Eager here; exported as onnxruntime's contrib kernel."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                heads: int, interleaved: bool):
        m = x.shape[1]
        rows = positions[0]
        return _rotate(x[0].view(m, heads, -1), cos[rows], sin[rows], interleaved).reshape(1, m, -1)

    @staticmethod
    def symbolic(g: Any, x: Any, positions: Any, cos: Any, sin: Any, heads: int, interleaved: bool):
        out = g.op(ROTARY_OP, x, positions, cos, sin, interleaved_i=int(interleaved), num_heads_i=heads)
        out.setType(x.type())
        return out


def _rows_in_order(linear: torch.nn.Linear, heads: int) -> torch.nn.Linear:
    """A copy of ``linear`` whose output rows are in llama.cpp's rotary order within each head, as the GGUF
    writer puts them (``permute_rotary``)."""
    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(permute_rotary(linear.weight.numpy(), heads)))
        if linear.bias is not None:
            out.bias.copy_(torch.from_numpy(permute_rotary(linear.bias.numpy(), heads)))
    return out


class PrefillAttention(torch.nn.Module):
    """A transformers llama / mistral / qwen2 / Qwen-VL text attention layer with its rotary as onnxruntime's
    kernel; called as transformers calls it (with the additive causal mask the prefill graph builds), it
    puts its rotated K and its V into the ``cached_rows`` it is given as ``[1, n, Hkv*d]``, one row per
    position (not transformers' ``[1, Hkv, n, d]``: the graph's outputs take them as they are)."""

    def __init__(self, attn: torch.nn.Module, config: Any, interleaved: bool, last_row_only: bool = False) -> None:
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.last_row_only = last_row_only  # the last layer: queries and output for the last position only
        self.head_dim = int(attn.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.scale = float(attn.scaling)
        self.interleaved = interleaved
        scaling = getattr(attn, "rope_scaling", None) or {}
        self.mrope_section = list(scaling.get("mrope_section") or [])
        self.q_proj = _rows_in_order(attn.q_proj, self.heads) if interleaved else attn.q_proj
        self.k_proj = _rows_in_order(attn.k_proj, self.kv_heads) if interleaved else attn.k_proj
        self.v_proj, self.o_proj = attn.v_proj, attn.o_proj

    def _half_angles(self, table: torch.Tensor) -> torch.Tensor:
        """transformers' cos or sin ``[B, n, d]`` (M-RoPE: ``[3, B, n, d]``, one per axis) -> ``[n, d/2]``,
        the angle of each rotary pair (the table's two halves are equal)."""
        if self.mrope_section:  # each channel section takes its axis, as apply_multimodal_rotary_pos_emb does
            sections = table.split(self.mrope_section * 2, dim=-1)
            table = torch.cat([part[i % 3] for i, part in enumerate(sections)], dim=-1)
        return table[0, :, : self.head_dim // 2]

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, cache_position: torch.Tensor | None = None,
                cached_rows: CachedRows | None = None, **_: Any):
        cos, sin = (self._half_angles(t) for t in position_embeddings)
        d = self.head_dim
        # each row's angles: its row of the table (0..n-1, the graph's row indices: computed once for
        # every layer, where a Range per kernel call would repeat them)
        table_rows = (cache_position if cache_position is not None else torch.arange(hidden_states.shape[1]))[None]
        k = RotaryEmbedding.apply(self.k_proj(hidden_states), table_rows, cos, sin, self.kv_heads, self.interleaved)
        rows, q_rows = hidden_states, table_rows
        if self.last_row_only:  # one query, at the last position
            rows, q_rows, attention_mask = hidden_states[:, -1:], table_rows[:, -1:], None
        q = RotaryEmbedding.apply(self.q_proj(rows), q_rows, cos, sin, self.heads, self.interleaved)
        v = self.v_proj(hidden_states)
        if cached_rows is not None:  # one row per position, as llama.cpp's cache holds them: no transposes
            cached_rows.put(self.layer_idx, k, v)
        # shapes as constants with -1 for the length: a traced ``x.shape[1]`` becomes Shape / Gather /
        # Unsqueeze / Concat before every Reshape
        q = q.view(1, -1, self.heads, d).transpose(1, 2)
        k, v = (t.view(1, -1, self.kv_heads, d).transpose(1, 2) for t in (k, v))  # [1, H, n, d]
        group = self.heads // self.kv_heads
        if group > 1:
            k, v = (t[:, :, None].expand(-1, -1, group, -1, -1).reshape(1, self.heads, -1, d) for t in (k, v))
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(out.transpose(1, 2).reshape(1, -1, self.heads * d)), None


class CachedRows:
    """Every layer's rotated K and its V, ``[1, n, Hkv*d]``, as ``PrefillAttention`` makes them (passed to
    the text model as the ``cached_rows`` keyword, which transformers hands on to each attention layer).
    Not transformers' ``DynamicCache``: it concatenates each onto an empty tensor, a Concat node (a copy)
    per layer and tensor in the traced graph."""

    def __init__(self, layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def put(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.keys[layer], self.values[layer] = k, v


class LastRowNorm(torch.nn.Module):
    """A norm that keeps only the last row: put before the last layer's FFN (the module docstring)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, -1:])


def fuse_for_prefill(lm: torch.nn.Module, interleaved: bool) -> torch.nn.Module:
    """Swap ``lm``'s attention layers for ``PrefillAttention`` (the last one on the last row) and its last
    FFN's norm for ``LastRowNorm``, in place (``lm`` is the prefill graph's own copy); ``interleaved``: the
    GGUF's Q / K rows are in llama.cpp's NORM rotary order (``ArchSpec.permute_qk``)."""
    layers = lm.model.layers
    for layer in layers:
        layer.self_attn = PrefillAttention(layer.self_attn, lm.config, interleaved, last_row_only=layer is layers[-1])
    layers[-1].post_attention_layernorm = LastRowNorm(layers[-1].post_attention_layernorm)
    return lm
