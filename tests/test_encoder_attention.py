"""The onnxruntime artifact's attention as onnxruntime's kernel (exporters/encoder_attention.py): every
family's tower either rewritten and agreeing with the exported graph, or left as exported; a rewrite
that disagrees is refused."""

from __future__ import annotations

import onnx
import pytest

from edgebridge.exporters.encoder import ENCODER_TOLERANCE, export_onnx
from edgebridge.exporters.encoder_attention import KERNEL, agrees, fuse_attention
from edgebridge.exporters.families import family_for
from edgebridge.testing import BUILDERS
from tests.conftest import exported_llava, tiny_llava, tiny_model


def _tower(folder, tmp_path):
    """A family's first encoder exported as the exporter writes it, and seeded inputs at two batch sizes."""
    family = family_for(folder)
    enc = family.encoders(family.load(folder))[0]
    path = tmp_path / "f32.onnx"
    export_onnx(enc, path)
    cases = [{k: v.numpy() for k, v in enc.make_inputs(batch, seed).items()} for batch, seed in ((1, 0), (2, 1))]
    return path, cases


def _ops(path):
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_clip_attention_becomes_the_kernel_and_agrees(workdir, tmp_path):
    """The tiny LLaVA's CLIP tower: every layer's Softmax attention becomes one kernel node, and the
    rewritten graph gives the exported one's outputs at two batch sizes."""
    plain, cases = _tower(tiny_llava(workdir, ("clip", "llama")), tmp_path)
    fused = tmp_path / "fused.onnx"
    layers = fuse_attention(plain, fused)
    ops = _ops(fused)
    assert layers == _ops(plain).count("Softmax") > 0
    assert ops.count("MultiHeadAttention") == layers and "Softmax" not in ops and len(ops) < len(_ops(plain))
    assert agrees(plain, fused, cases, ENCODER_TOLERANCE["max_abs"]) is None


def test_the_bundle_says_what_its_onnx_attention_is(workdir):
    """The export records the rewrite on the ONNX artifact, whose graph holds the kernel; the OpenVINO IR is
    converted from the graph as exported (it has no such kernel)."""
    exp = exported_llava(workdir, ("clip", "llama"))
    art = exp.manifest.components["vision_encoder"].artifacts["onnx"]
    assert art.details["attention"] == {"kernel": KERNEL, "layers": 2}
    assert "MultiHeadAttention" in _ops(exp.bundle / art.files[0])
    assert "openvino" in exp.manifest.components["vision_encoder"].artifacts


def test_a_rewrite_that_disagrees_is_refused(workdir, tmp_path):
    """What the pattern walk does not check, the agreement check does: the same rewrite with a wrong head
    count gives other outputs and is refused with the difference; one onnxruntime cannot run is refused
    too (the exported graph is then kept, not the export failed)."""
    plain, cases = _tower(tiny_llava(workdir, ("clip", "llama")), tmp_path)
    fused = tmp_path / "fused.onnx"
    assert fuse_attention(plain, fused)
    model = onnx.load(str(fused))
    for node in (n for n in model.graph.node if n.op_type == "MultiHeadAttention"):
        heads = next(a for a in node.attribute if a.name == "num_heads")
        heads.i = 1
    onnx.save(model, str(fused))
    why = agrees(plain, fused, cases, ENCODER_TOLERANCE["max_abs"])
    assert why is not None and "differs from the exported one by max-abs" in why
    for node in (n for n in model.graph.node if n.op_type == "MultiHeadAttention"):
        next(a for a in node.attribute if a.name == "num_heads").i = 5  # does not divide the width
    onnx.save(model, str(fused))
    why = agrees(plain, fused, cases, ENCODER_TOLERANCE["max_abs"])
    assert why is not None and why.startswith("onnxruntime does not run the rewritten graph")


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_every_tower_is_rewritten_where_it_agrees_or_left_alone(workdir, tmp_path, kind):
    """Each family's tower: the layers the walk matches become the kernel and agree, or none match (masked
    or windowed attention, Q-Formers' cross-attention with other shapes) and nothing is written."""
    plain, cases = _tower(tiny_model(workdir, kind), tmp_path)
    fused = tmp_path / "fused.onnx"
    layers = fuse_attention(plain, fused)
    if layers:
        assert _ops(fused).count("MultiHeadAttention") == layers
        assert agrees(plain, fused, cases, ENCODER_TOLERANCE["max_abs"]) is None, kind
    else:
        assert not fused.exists()
