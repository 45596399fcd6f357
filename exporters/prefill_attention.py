"""The prefill graph's attention as one onnxruntime kernel, and its last layer's FFN for the last row only.

Both are swapped into the float ``*ForCausalLM`` that ``prefill.py`` traces (``fuse_for_prefill``); the
graph is then held to transformers' own model by the same gates as before.

**Attention** (``FusedAttention``): transformers' eager attention traces to ~30 nodes a layer (rotary by
Slice / Neg / Concat / Mul / Add, the K rows reordered into llama.cpp's channel order by a Gather, Q.K^T,
the mask, Softmax, .V, Transposes). onnxruntime's ``com.microsoft.GroupQueryAttention`` does the rotary,
the causal attention and hands back the rotated K and V in one CPU kernel. For llama.cpp's NORM rope
(llama, mistral: rotary on interleaved pairs) the Q and K projection rows are written in llama.cpp's
order and the kernel rotates pairs (``rotary_interleaved``), so its K needs no reorder; Q.K is the same
under one permutation of both. NEOX models (qwen2, Qwen-VL) keep transformers' order. Measured on the bench
LLaVA (12x768 llama, 219 positions, 2 threads, onnxruntime 1.32): one layer's rotary + attention + K/V
out in the kernel 0.68 ms, against ~1.3 ms of the traced nodes it replaces (profile: Gather 3.7 ms,
attention MatMuls 4, Softmax 1, rotary and layout ops ~6 for 12 layers).

**Last layer** (``LastRowNorm``): the graph returns the last position's logits and every layer's K/V;
the last layer's FFN feeds only the logits, so it runs on the last row (llama.cpp does the same with
its output ids). The residual add broadcasts that one row over the others, which nothing reads.
"""

from __future__ import annotations

from typing import Any

import torch

CONTRIB_OP = "com.microsoft::GroupQueryAttention"


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """``x [n, heads, d]`` rotated by ``cos / sin [n, d/2]``: pairs ``(2i, 2i+1)`` or halves ``(i, i+d/2)``."""
    c, s = cos[:, None], sin[:, None]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


class GroupQueryAttention(torch.autograd.Function):
    """``q [1, n, H*d], k / v [1, n, Hkv*d], cos / sin [n, d/2]`` -> attention output ``[1, n, H*d]`` and the
    rotated keys and the values ``[1, Hkv, n, d]``: causal, positions 0..n-1 of a new sequence. Eager
    here (the same arithmetic, for tracing and tests); exported as onnxruntime's contrib kernel."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                heads: int, kv_heads: int, interleaved: bool, scale: float):
        n, d = q.shape[1], cos.shape[-1] * 2
        qr = _rotate(q[0].view(n, heads, d), cos, sin, interleaved).transpose(0, 1)
        kr = _rotate(k[0].view(n, kv_heads, d), cos, sin, interleaved).transpose(0, 1)
        vh = v[0].view(n, kv_heads, d).transpose(0, 1)
        group = heads // kv_heads
        out = torch.nn.functional.scaled_dot_product_attention(
            qr, kr.repeat_interleave(group, 0), vh.repeat_interleave(group, 0), is_causal=True, scale=scale)
        return out.transpose(0, 1).reshape(1, n, heads * d), kr[None], vh[None]

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, cos: Any, sin: Any, heads: int, kv_heads: int, interleaved: bool,
                 scale: float):
        from torch.onnx._internal.torchscript_exporter.symbolic_helper import _optional_input_placeholder_tensor

        int32 = 6  # onnx.TensorProto.INT32
        length = g.op("Gather", g.op("Shape", q), g.op("Constant", value_t=torch.tensor(1)), axis_i=0)
        total = g.op("Cast", length, to_i=int32)  # a scalar: the sequence's length
        seqlens = g.op("Reshape", g.op("Sub", total, g.op("Constant", value_t=torch.tensor(1, dtype=torch.int32))),
                       g.op("Constant", value_t=torch.tensor([1])))  # [1]: the last position's index
        none = _optional_input_placeholder_tensor(g)
        out, k_out, v_out = g.op(CONTRIB_OP, q, k, v, none, none, seqlens, total, cos, sin, num_heads_i=heads,
                                 kv_num_heads_i=kv_heads, do_rotary_i=1, rotary_interleaved_i=int(interleaved),
                                 scale_f=scale, outputs=3)
        # the exporter's shape inference does not know the contrib op: give it the shapes ([1, n, H*d] and
        # [1, Hkv, n, d]; n dynamic)
        out.setType(q.type())
        d = None if q.type().varyingSizes()[-1] is None else q.type().varyingSizes()[-1] // heads
        for cache in (k_out, v_out):
            cache.setType(q.type().with_sizes([1, kv_heads, None, d]))
        return out, k_out, v_out


def rotary_order(head_dim: int) -> list[int]:
    """HF channel for each llama.cpp channel within a head (llama.cpp row ``2i + j`` <- HF row
    ``j * d/2 + i``): the order the GGUF writer gives Q and K rows, and so the cached K."""
    half = head_dim // 2
    return [j * half + i for i in range(half) for j in range(2)]


def _rows_in_order(linear: torch.nn.Linear, heads: int, head_dim: int) -> torch.nn.Linear:
    """A copy of ``linear`` whose output rows are in llama.cpp's rotary order within each head."""
    order = torch.tensor([h * head_dim + i for h in range(heads) for i in rotary_order(head_dim)])
    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        out.weight.copy_(linear.weight[order])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[order])
    return out


class FusedAttention(torch.nn.Module):
    """A transformers llama / mistral / qwen2 / Qwen-VL text attention layer as one ``GroupQueryAttention``;
    called as transformers calls it, it writes its rotated K and V into the cache it is given."""

    def __init__(self, attn: torch.nn.Module, config: Any, interleaved: bool) -> None:
        super().__init__()
        self.layer_idx = attn.layer_idx
        self.head_dim = int(attn.head_dim)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.scale = float(attn.scaling)
        self.interleaved = interleaved
        scaling = getattr(attn, "rope_scaling", None) or {}
        self.mrope_section = list(scaling.get("mrope_section") or [])
        self.q_proj = _rows_in_order(attn.q_proj, self.heads, self.head_dim) if interleaved else attn.q_proj
        self.k_proj = _rows_in_order(attn.k_proj, self.kv_heads, self.head_dim) if interleaved else attn.k_proj
        self.v_proj, self.o_proj = attn.v_proj, attn.o_proj

    def _half_angles(self, table: torch.Tensor) -> torch.Tensor:
        """transformers' cos or sin ``[B, n, d]`` (M-RoPE: ``[3, B, n, d]``, one per axis) -> ``[n, d/2]``,
        the angle of each rotary pair (the table's two halves are equal)."""
        if self.mrope_section:  # each channel section takes its axis, as apply_multimodal_rotary_pos_emb does
            sections = table.split(self.mrope_section * 2, dim=-1)
            table = torch.cat([part[i % 3] for i, part in enumerate(sections)], dim=-1)
        return table[0, :, : self.head_dim // 2]

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                attention_mask: torch.Tensor | None = None, past_key_values: Any = None, **_: Any):
        cos, sin = (self._half_angles(t) for t in position_embeddings)
        out, k, v = GroupQueryAttention.apply(self.q_proj(hidden_states), self.k_proj(hidden_states),
                                              self.v_proj(hidden_states), cos, sin, self.heads, self.kv_heads,
                                              self.interleaved, self.scale)
        if past_key_values is not None:
            past_key_values.update(k, v, self.layer_idx)
        return self.o_proj(out), None


class LastRowNorm(torch.nn.Module):
    """A norm that keeps only the last row: put before the last layer's FFN (the module docstring)."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, -1:])


def fuse_for_prefill(lm: torch.nn.Module, interleaved: bool) -> torch.nn.Module:
    """Swap ``lm``'s attention layers for ``FusedAttention`` and its last FFN's norm for ``LastRowNorm``, in
    place (``lm`` is the prefill graph's own copy); ``interleaved``: the GGUF's Q / K rows are in
    llama.cpp's NORM rotary order (``ArchSpec.permute_qk``)."""
    layers = lm.model.layers
    for layer in layers:
        layer.self_attn = FusedAttention(layer.self_attn, lm.config, interleaved)
    layers[-1].post_attention_layernorm = LastRowNorm(layers[-1].post_attention_layernorm)
    return lm
