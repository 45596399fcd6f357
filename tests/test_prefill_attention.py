"""The prefill graph's fused attention: our eager arithmetic, onnxruntime's kernel and transformers' layer agree."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgebridge.exporters.prefill_attention import CONTRIB_OP, FusedAttention, GroupQueryAttention, rotary_order


def _kernel(heads: int, kv_heads: int, interleaved: bool) -> ort.InferenceSession:
    """One ``GroupQueryAttention`` node as ``GroupQueryAttention.symbolic`` writes it."""
    domain, op = CONTRIB_OP.split("::")
    node = helper.make_node(op, ["q", "k", "v", "", "", "seqlens", "total", "cos", "sin"], ["out", "k_out", "v_out"],
                            domain=domain, num_heads=heads, kv_num_heads=kv_heads, do_rotary=1,
                            rotary_interleaved=int(interleaved), scale=0.125)
    floats = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("q", "k", "v")]
    ints = [helper.make_tensor_value_info("seqlens", TensorProto.INT32, [1]),
            helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    tables = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("cos", "sin")]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("out", "k_out", "v_out")]
    graph = helper.make_graph([node], "gqa", floats + ints + tables, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("n", [1, 9])
def test_the_eager_arithmetic_is_the_kernels(heads, kv_heads, interleaved, n):
    """What the graph is traced from computes what onnxruntime's kernel computes (rotary by pairs or by
    halves, grouped K/V heads, causal; a one-position prompt too), so the f32 gate against transformers
    tests the kernel."""
    d = 64
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, h * d, generator=gen) for h in (heads, kv_heads, kv_heads))
    angles = torch.arange(n)[:, None] * torch.rand(d // 2, generator=gen)[None]
    ours = GroupQueryAttention.apply(q, k, v, angles.cos(), angles.sin(), heads, kv_heads, interleaved, 0.125)
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "seqlens": np.array([n - 1], np.int32),
            "total": np.array(n, np.int32), "cos": angles.cos().numpy(), "sin": angles.sin().numpy()}
    theirs = _kernel(heads, kv_heads, interleaved).run(None, feed)
    for mine, kernel in zip(ours, theirs):
        np.testing.assert_allclose(mine.numpy(), kernel, atol=2e-5)


def test_the_fused_layer_is_transformers_layer_with_keys_in_llamacpps_order():
    """A llama attention layer (grouped heads) and its ``FusedAttention``: the same output, and the cached
    keys the same up to llama.cpp's rotary order within each head."""
    from transformers import DynamicCache, LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         attn_implementation="eager")
    torch.manual_seed(0)
    attn = LlamaAttention(config, layer_idx=0).eval()
    x = torch.randn(1, 11, 128)
    positions = torch.arange(11)[None]
    cos_sin = LlamaRotaryEmbedding(config)(x, positions)
    causal = torch.full((11, 11), torch.finfo(torch.float32).min).triu(1)[None, None]
    hf_cache, our_cache = DynamicCache(config=config), DynamicCache(config=config)
    with torch.no_grad():
        want, _ = attn(x, cos_sin, causal, past_key_values=hf_cache)
        got, _ = FusedAttention(attn, config, interleaved=True)(x, cos_sin, past_key_values=our_cache)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    order = torch.tensor(rotary_order(32))
    torch.testing.assert_close(our_cache.layers[0].keys, hf_cache.layers[0].keys[..., order], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(our_cache.layers[0].values, hf_cache.layers[0].values)


def test_the_exported_graph_holds_one_kernel_per_layer(tmp_path):
    """A traced module with ``FusedAttention`` exports the contrib node (no per-layer rotary or K reorder)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=2, num_key_value_heads=2, head_dim=32)

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fused = FusedAttention(LlamaAttention(config, layer_idx=0).eval(), config, interleaved=True)
            self.rotary = LlamaRotaryEmbedding(config)

        def forward(self, x):
            positions = (torch.cumsum(torch.ones_like(x[0, :, 0], dtype=torch.long), 0) - 1)[None]
            return self.fused(x, self.rotary(x, positions))[0]

    path, layer = tmp_path / "layer.onnx", Layer().eval()
    with torch.no_grad():
        torch.onnx.export(layer, (torch.randn(1, 5, 64),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {1: "n"}}, opset_version=17, dynamo=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("GroupQueryAttention") == 1 and "Softmax" not in ops and "Neg" not in ops
    x = torch.randn(1, 7, 64)
    with torch.no_grad():
        want = layer(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)  # a length other than the traced one
