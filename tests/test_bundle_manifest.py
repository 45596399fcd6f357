"""Manifest parsing and bundle writing/verification (no engines involved)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from edgebridge.bundle import Bundle, BundleWriter, sha256_file
from edgebridge.errors import BundleExistsError, IntegrityError, ManifestError
from edgebridge.manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest


def _manifest_dict() -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "family": "llava",
        "source": {"model_type": "llava"},
        "components": {
            "vision_encoder": {
                "role": "encoder",
                "modality": "image",
                "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 8, 8]}],
                "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": ["batch", 4, 16]}],
                "artifacts": {"onnx": {"format": "onnx", "files": ["enc.onnx"], "precision": "fp32"}},
            },
            "llm": {
                "role": "llm",
                "modality": "text",
                "inputs": [{"name": "inputs_embeds", "dtype": "float32", "shape": ["tokens", 16]}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["tokens", 100]}],
                "artifacts": {"gguf": {"format": "gguf", "files": ["llm.gguf"], "precision": "f16"}},
            },
        },
        "inputs": {
            "image": {"component": "vision_encoder", "preprocessing": {"kind": "resize-crop-normalize"},
                      "placeholder": "<image>", "tokens_per_item": 4}
        },
        "prompt": {"add_bos": True, "stop_token_ids": [2]},
        "files": {"enc.onnx": {"sha256": "0" * 64, "bytes": 1}, "llm.gguf": {"sha256": "0" * 64, "bytes": 1}},
    }


def test_manifest_round_trip():
    m = Manifest.from_dict(_manifest_dict())
    again = Manifest.from_dict(json.loads(m.to_json()))
    assert again == m
    assert m.llm_name == "llm"


@pytest.mark.parametrize(
    "path",
    ["family", "components", "prompt.add_bos", "components.llm.artifacts", "components.vision_encoder.inputs",
     "components.llm.artifacts.gguf.files", "inputs.image.placeholder", "inputs.image.preprocessing.kind", "files"],
)
def test_missing_key_is_named(path):
    data = _manifest_dict()
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    del node[leaf]
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(data)
    assert path in str(info.value)
    assert "re-export" in str(info.value).lower()


def test_newer_schema_is_refused_with_upgrade_hint():
    data = _manifest_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ManifestError, match="Upgrade edgebridge"):
        Manifest.from_dict(data)


def test_wrong_type_and_dangling_reference():
    data = _manifest_dict()
    data["prompt"]["add_bos"] = "yes"
    with pytest.raises(ManifestError, match="prompt.add_bos"):
        Manifest.from_dict(data)
    data = _manifest_dict()
    data["inputs"]["image"]["component"] = "nope"
    with pytest.raises(ManifestError, match="nope"):
        Manifest.from_dict(data)
    data = _manifest_dict()
    del data["files"]["llm.gguf"]
    with pytest.raises(ManifestError, match="llm.gguf"):
        Manifest.from_dict(data)


def _write_bundle(target: Path, payload: bytes = b"x", force: bool = False) -> Path:
    m = Manifest.from_dict(_manifest_dict())
    with BundleWriter(target, force=force) as w:
        w.path("enc.onnx").write_bytes(payload)
        w.path("llm.gguf").write_bytes(payload * 2)
        return w.commit(m)


def test_writer_hashes_files_and_bundle_verifies(tmp_path):
    target = _write_bundle(tmp_path / "b")
    bundle = Bundle.open(target)
    assert bundle.manifest.files["enc.onnx"].sha256 == sha256_file(target / "enc.onnx")
    assert bundle.manifest.files["llm.gguf"].bytes == 2
    assert bundle.verify() == {"enc.onnx": "ok", "llm.gguf": "ok"}


def test_existing_bundle_refused_without_force_and_replaced_with_it(tmp_path):
    target = _write_bundle(tmp_path / "b", b"old")
    with pytest.raises(BundleExistsError, match="--force"):
        BundleWriter(target)
    _write_bundle(target, b"new", force=True)
    assert (target / "enc.onnx").read_bytes() == b"new"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]  # no temp folders left


def test_failed_export_leaves_existing_bundle_untouched(tmp_path):
    target = _write_bundle(tmp_path / "b", b"old")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(RuntimeError):
        with BundleWriter(target, force=True) as w:
            w.path("enc.onnx").write_bytes(b"half-written")
            raise RuntimeError("export failed midway")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_tampered_truncated_and_missing_files(tmp_path):
    target = _write_bundle(tmp_path / "b", b"abc")
    (target / "enc.onnx").write_bytes(b"abd")
    with pytest.raises(IntegrityError, match="sha256"):
        Bundle.open(target)
    (target / "enc.onnx").write_bytes(b"ab")
    with pytest.raises(IntegrityError, match="bytes"):
        Bundle.open(target)
    (target / "enc.onnx").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        Bundle.open(target)


def test_manifest_paths_cannot_escape_the_bundle(tmp_path):
    target = _write_bundle(tmp_path / "b")
    data = json.loads((target / MANIFEST_NAME).read_text())
    evil = copy.deepcopy(data)
    evil["files"]["../outside"] = evil["files"].pop("enc.onnx")
    evil["components"]["vision_encoder"]["artifacts"]["onnx"]["files"] = ["../outside"]
    (target / MANIFEST_NAME).write_text(json.dumps(evil))
    with pytest.raises(ManifestError, match="outside the bundle"):
        Bundle.open(target)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ManifestError, match="not an edgebridge bundle"):
        Bundle.open(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Bundle.open(tmp_path)


# --- bundles written before the typed manifest (0.1.0: encoder precisions spelled fp32) -------------

OLD_MANIFEST = Path(__file__).parent / "fixtures" / "manifest-0.1.0-llava.json"


def test_a_0_1_0_manifest_reads_typed_and_writes_back_the_same_json():
    from edgebridge.manifest import LayoutKind, Role

    raw = json.loads(OLD_MANIFEST.read_text())
    m = Manifest.from_dict(raw)
    assert m.components["vision_encoder"].role is Role.ENCODER and m.llm.role is Role.LLM
    assert {a.precision for a in m.components["vision_encoder"].artifacts.values()} == {"f32"}  # was "fp32"
    assert m.inputs["image"].layout.kind is LayoutKind.REPEAT and m.inputs["image"].preprocessing.kind
    again = json.loads(m.to_json())
    for art in raw["components"]["vision_encoder"]["artifacts"].values():
        art["precision"] = "f32"  # the one spelling, the only difference
    assert again == raw


@pytest.mark.slow
def test_a_0_1_0_bundle_still_opens_and_runs(workdir, tmp_path, photo):
    """The 0.1.0 manifest over a fresh export's files (same tiny model, so the same file names): it
    opens with every hash verified and answers as the fresh bundle does."""
    from edgebridge import Pipeline
    from edgebridge.runtimes.llamacpp import LlamaSettings
    from tests.conftest import copy_bundle, exported

    import onnx

    fresh = exported(workdir, "llava")
    old = copy_bundle(fresh.bundle, tmp_path / "old")
    graph = old / "vision_encoder.onnx"  # one file, weights inside, as 0.1.0 wrote it
    onnx.save_model(onnx.load(str(graph)), str(graph))
    (old / "vision_encoder.onnx.data").unlink()
    raw = json.loads(OLD_MANIFEST.read_text())
    assert set(raw["files"]) == set(fresh.manifest.files) - {"vision_encoder.onnx.data"}
    raw["files"] = {k: {"sha256": sha256_file(old / k), "bytes": (old / k).stat().st_size} for k in raw["files"]}
    (old / "edgebridge.json").write_text(json.dumps(raw))
    prompt = "USER: <image>\nWhat is in this image? ASSISTANT:"
    answers = []
    for bundle in (fresh.bundle, old):
        for backend in ("onnxruntime", "openvino"):
            with Pipeline.from_bundle(bundle, encoder_backend=backend, llm_settings=LlamaSettings.strict()) as pipe:
                answers.append(pipe.generate(prompt, images=[photo], max_new_tokens=16).token_ids)
    assert answers[:2] == answers[2:] and len(answers[0]) == 16
