"""Export: the bundle's contents, the parity gates, and that a failed gate writes nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgebridge.bundle import Bundle
from edgebridge.errors import BundleExistsError, ParityError, UnsupportedModelError
from edgebridge.exporters.api import export_bundle
from edgebridge.exporters.families import family_for
from edgebridge.manifest import MANIFEST_NAME
from tests.conftest import tiny_llava

pytestmark = pytest.mark.slow


def test_bundle_contents_and_recorded_parity(clip_llama_f16):
    bundle = Bundle.open(clip_llama_f16.bundle)  # verifies every sha256
    m = bundle.manifest
    assert set(m.files) == {"vision_encoder.onnx", "vision_encoder.onnx.data", "vision_encoder.xml", "vision_encoder.bin",
                            "llm.gguf"}
    assert m.components["vision_encoder"].artifacts["onnx"].files == ["vision_encoder.onnx", "vision_encoder.onnx.data"]
    onnx.checker.check_model(str(clip_llama_f16.bundle / "vision_encoder.onnx"), full_check=True)
    enc = m.components["vision_encoder"]
    assert enc.inputs[0].shape == ["batch", 3, 64, 64]
    assert enc.outputs[0].shape == ["batch", 64, 64]
    for fmt in ("onnx", "openvino"):
        parity = enc.artifacts[fmt].parity
        assert parity.passed and parity.tolerance == {"max_abs": 1e-4, "cosine_min": 0.99999}
        assert parity.metrics["max_abs"] <= 1e-4 and parity.metrics["cosine_min"] >= 0.99999
        assert parity.samples == 5 * 64  # batches of 2 and 3, 64 embedding vectors each
    assert enc.artifacts["openvino"].parity.settings["precision"] == "f32"
    assert {k: v for k, v in enc.bridge.items() if k != "graph_nodes"} == {
        "type": "mlp", "survey_group": "converter", "feature_layer": -2, "select_strategy": "default"}
    # the projector's nodes (two linear layers and the activation), for splitting profiles
    assert len(enc.bridge["graph_nodes"]) >= 5 and enc.bridge["graph_nodes"][-1] == "image_embeds"
    graph = onnx.load(str(clip_llama_f16.bundle / "vision_encoder.onnx")).graph
    assert not any(n.metadata_props for n in graph.node)  # no torch stack traces (local paths) in bundles
    llm = m.components["llm"].artifacts["gguf"]
    assert llm.precision == "f16" and llm.details["tensor_types"]["f16"] > 0
    strict = llm.details["checks"]["strict_f32"]
    assert strict["passed"] and strict["metrics"]["max_abs"] <= 1e-3
    assert llm.parity.settings["llama_settings"] == "default"
    image = m.inputs["image"]
    assert image.placeholder == "<image>" and image.tokens_per_item == 64
    assert image.preprocessing["resample"] == "bicubic" and image.preprocessing["center_crop"] == {"height": 64,
                                                                                                    "width": 64}
    assert m.prompt.add_bos and m.prompt.chat_template and m.prompt.chat_content == "parts"


def test_existing_bundle_is_refused_without_force(clip_llama_f16):
    with pytest.raises(BundleExistsError):
        export_bundle(clip_llama_f16.model_dir, clip_llama_f16.bundle)


def test_failed_gate_names_component_and_leaves_old_bundle(workdir, clip_llama_f16, tmp_path):
    import shutil

    target = tmp_path / "bundle"
    shutil.copytree(clip_llama_f16.bundle, target)
    before = (target / MANIFEST_NAME).read_text()
    with pytest.raises(ParityError) as info:
        export_bundle(clip_llama_f16.model_dir, target, encoder_formats=["onnx"], force=True,
                      encoder_tolerance={"max_abs": 1e-12, "cosine_min": 0.99999})
    assert info.value.component.startswith("vision_encoder")
    assert "max_abs" in str(info.value)
    assert (target / MANIFEST_NAME).read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temp folders left behind


def test_unknown_model_type_lists_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="llava"):
        family_for(tmp_path)
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        family_for(tmp_path / "missing")


def test_gguf_rotary_permutation_matters(workdir, monkeypatch, tmp_path):
    """Without llama.cpp's Q/K permutation the strict gate fails: the gate can fail, and does."""
    import edgebridge.exporters.gguf.writer as writer

    model_dir = tiny_llava(workdir, ("clip", "llama"))
    monkeypatch.setattr(writer, "permute_rotary", lambda w, n_head: w)
    with pytest.raises(ParityError, match="GGUF f32") as info:
        export_bundle(model_dir, tmp_path / "b", encoder_formats=["onnx"], llm_dtype="f32")
    assert info.value.figure == "max_abs" and info.value.value > 1e-2
    assert not (tmp_path / "b").exists()


def test_wrong_pre_tokenizer_is_caught(workdir, monkeypatch, tmp_path):
    """Labelling the llama-bpe tokenizer as qwen2 (digits split differently) fails the tokenizer check."""
    import edgebridge.exporters.gguf.vocab as vocab

    model_dir = tiny_llava(workdir, ("clip", "llama"))
    monkeypatch.setattr(vocab, "_detect_pre", lambda pre: "qwen2")
    with pytest.raises(ParityError, match="tokenizer"):
        export_bundle(model_dir, tmp_path / "b", encoder_formats=["onnx"], llm_dtype="f32")


def test_seeded_builder_is_deterministic(tmp_path):
    from safetensors.numpy import load_file

    from edgebridge.testing import make_tiny

    a = make_tiny("llava", tmp_path / "a", vision="siglip", text="qwen2", seed=3)
    b = make_tiny("llava", tmp_path / "b", vision="siglip", text="qwen2", seed=3)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_every_tiny_builder_gives_the_same_files_in_any_process(tmp_path):
    # Two interpreters with different hash seeds (and so different hash-map orders, in Python and in
    # the tokenizers library): a seeded tiny model must not depend on either.
    from tests.conftest import run_isolated

    code = ("import sys\nfrom edgebridge.testing import BUILDERS, make_tiny\n"
            "for kind in BUILDERS:\n    make_tiny(kind, f'{sys.argv[1]}/{kind}')\n")
    trees = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        proc = run_isolated(code, str(out), env={"PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr[-2000:]
        trees.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert trees[0].keys() == trees[1].keys() and len(trees[0]) > 8
    assert [name for name in trees[0] if trees[0][name] != trees[1][name]] == []
