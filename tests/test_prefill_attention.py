"""The prefill graph's attention: our eager rotary, onnxruntime's kernel and transformers' layer agree."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgebridge.exporters.gguf.writer import permute_rotary
from edgebridge.exporters.prefill_attention import ROTARY_OP, CachedRows, PrefillAttention, RotaryEmbedding


def _kernel(heads: int, interleaved: bool) -> ort.InferenceSession:
    """One ``RotaryEmbedding`` node as ``RotaryEmbedding.symbolic`` writes it."""
    domain, op = ROTARY_OP.split("::")
    node = helper.make_node(op, ["x", "positions", "cos", "sin"], ["y"], domain=domain,
                            interleaved=int(interleaved), num_heads=heads)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
              helper.make_tensor_value_info("positions", TensorProto.INT64, None),
              helper.make_tensor_value_info("cos", TensorProto.FLOAT, None),
              helper.make_tensor_value_info("sin", TensorProto.FLOAT, None)]
    graph = helper.make_graph([node], "rotary", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("n, last_only", [(1, False), (9, False), (9, True)])
def test_the_eager_rotary_is_the_kernels(interleaved, n, last_only):
    """What the graph is traced from computes what onnxruntime's kernel computes (pairs or halves; a
    one-position prompt; the last row alone at its row of the table), so the f32 gate against
    transformers tests the kernel."""
    heads, d = 4, 64
    gen = torch.Generator().manual_seed(3)
    positions = torch.tensor([[n - 1]]) if last_only else torch.arange(n)[None]
    x = torch.randn(1, positions.shape[1], heads * d, generator=gen)
    angles = torch.arange(n)[:, None] * torch.rand(d // 2, generator=gen)[None]
    ours = RotaryEmbedding.apply(x, positions, angles.cos(), angles.sin(), heads, interleaved)
    feed = {"x": x.numpy(), "positions": positions.numpy(), "cos": angles.cos().numpy(), "sin": angles.sin().numpy()}
    np.testing.assert_allclose(ours.numpy(), _kernel(heads, interleaved).run(None, feed)[0], atol=2e-5)


def _llama_attention(heads: int, kv_heads: int, width: int):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=width, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=width // heads, attn_implementation="eager")
    torch.manual_seed(0)
    return config, LlamaAttention(config, layer_idx=0).eval(), LlamaRotaryEmbedding(config)


def _causal(n: int) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]


def test_the_prefill_layer_is_transformers_layer_with_keys_in_llamacpps_order():
    """A llama attention layer (grouped heads) and its ``PrefillAttention``: the same output, and the cached
    keys the same up to llama.cpp's rotary order within each head (rows per position, as llama.cpp caches
    them); as the last layer, the last row's."""
    from transformers import DynamicCache

    config, attn, rotary = _llama_attention(4, 2, 128)
    x = torch.randn(1, 11, 128)
    cos_sin = rotary(x, torch.arange(11)[None])
    hf_cache, ours = DynamicCache(config=config), CachedRows(1)
    with torch.no_grad():
        want, _ = attn(x, cos_sin, _causal(11), past_key_values=hf_cache)
        got, _ = PrefillAttention(attn, config, interleaved=True)(x, cos_sin, _causal(11), cached_rows=ours)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    order = torch.from_numpy(permute_rotary(np.arange(32), 1))  # the HF channel of each llama.cpp channel
    rows = lambda t: t.transpose(1, 2).reshape(1, 11, -1)  # noqa: E731 - [1, H, n, d] -> one row per position
    torch.testing.assert_close(ours.keys[0], rows(hf_cache.layers[0].keys[..., order]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.values[0], rows(hf_cache.layers[0].values))
    # as the last layer: the last row's output alone, the same cached rows
    last_rows = CachedRows(1)
    with torch.no_grad():
        last, _ = PrefillAttention(attn, config, True, last_row_only=True)(x, cos_sin, _causal(11),
                                                                          cached_rows=last_rows)
    assert last.shape == (1, 1, 128)
    torch.testing.assert_close(last, want[:, -1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_rows.keys[0], ours.keys[0])


def test_the_exported_layer_holds_the_kernel_and_runs_at_other_lengths(tmp_path):
    """A traced ``PrefillAttention`` exports the contrib node for Q and K (not transformers' Slice / Neg /
    Concat rotary) and gives the eager layer's output at a length other than the traced one."""
    config, attn, rotary = _llama_attention(2, 2, 64)

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention, self.rotary = PrefillAttention(attn, config, interleaved=True), rotary

        def forward(self, x):
            pos = torch.cumsum(torch.ones_like(x[0, :, 0], dtype=torch.long), 0) - 1
            causal = torch.where(pos[None, :] <= pos[:, None], 0.0, torch.finfo(torch.float32).min)
            return self.attention(x, self.rotary(x, pos[None]), causal[None, None])[0]

    path, layer = tmp_path / "layer.onnx", Layer().eval()
    with torch.no_grad():
        torch.onnx.export(layer, (torch.randn(1, 5, 64),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {1: "n"}}, opset_version=17, dynamo=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("RotaryEmbedding") == 2 and "Neg" not in ops  # transformers' rotate_half negates
    x = torch.randn(1, 7, 64)
    with torch.no_grad():
        want = layer(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
