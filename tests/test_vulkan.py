"""The LLM on a GPU through llama.cpp's Vulkan backend, run for real on Mesa's software Vulkan device.

lavapipe (``mesa-vulkan-drivers``, installed by ``make setup``) is a Vulkan 1.3 device of type CPU: the
same ggml-vulkan code path as a phone's GPU (shaders compiled to SPIR-V, buffers, command queues), only
executed by LLVM on the CPU. ggml-vulkan hides CPU-type devices unless ``GGML_VK_VISIBLE_DEVICES`` lists
them, and the variable must be set before llama.cpp loads, so every check runs in a fresh process.
``VK_ICD_FILENAMES`` pins the driver to lavapipe (a machine with a real GPU tests the same thing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PROMPT, exported, run_cli, run_isolated

LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.x86_64.json")
ON_LAVAPIPE = {"GGML_VK_VISIBLE_DEVICES": "0", "VK_ICD_FILENAMES": str(LAVAPIPE_ICD)}
NO_DEVICE = {"GGML_VK_VISIBLE_DEVICES": "0", "VK_ICD_FILENAMES": "/nonexistent/icd.json"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LAVAPIPE_ICD.exists(), reason="Mesa's software Vulkan driver is not installed "
                                                         "(`make setup` installs mesa-vulkan-drivers as root)"),
]

# One process: the same bundle with the LLM on the CPU and on the GPU, strict settings; logits and 16 greedy ids.
SIDE_BY_SIDE = """
import json, sys
import numpy as np
from edgebridge.pipeline import Pipeline
from edgebridge.runtimes.llamacpp import LlamaSettings
bundle, image, prompt = sys.argv[1:4]
out = {}
for device in ("CPU", "GPU"):
    with Pipeline.from_bundle(bundle, llm_device=device, llm_settings=LlamaSettings.strict(), fast_prefill=False,
                              reuse_prefix=False) as p:
        logits = p.prefill_logits(prompt, images=[image])
        result = p.generate(prompt, images=[image], max_new_tokens=16, stop_at_eos=False)
    out[device] = {"logits": np.asarray(logits, np.float64).tolist(), "ids": result.token_ids,
                   "llm": result.devices["llm"], "warnings": result.warnings}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, photo) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("vulkan") / "photo.png"
    Image.fromarray(photo).save(path)
    return path


def test_llamacpp_lists_the_vulkan_device():
    proc = run_isolated("import json; from edgebridge.runtimes.llamacpp.devices import list_devices; "
                        "print(json.dumps([d.as_dict() for d in list_devices()]))", env=ON_LAVAPIPE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpus = [d for d in json.loads(proc.stdout) if d["backend"] == "Vulkan"]
    assert len(gpus) == 1 and "llvmpipe" in gpus[0]["description"], proc.stdout
    assert gpus[0]["type"] in ("GPU", "IGPU") and gpus[0]["name"] == "Vulkan0"


def _side_by_side(bundle: Path, image: Path, env: dict[str, str], code: str = SIDE_BY_SIDE) -> dict:
    proc = run_isolated(code, str(bundle), str(image), PROMPT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("kind, dtype", [("llava", "f32"), ("llava", "f16"), ("qwen2.5-vl", "f32"), ("gemma3", "f32")])
def test_llm_on_vulkan_equals_the_cpu(workdir, kind, dtype, image_file):
    """Every layer offloaded; embeddings injected (M-RoPE positions for Qwen, a two-way image run for
    Gemma 3): 16 greedy ids equal the CPU's, and the first step is within the LLM drift budget (top-1,
    KL), both as ggml-vulkan runs by default (float16 matrix products where the device has them, as
    lavapipe does) and with GGML_VK_DISABLE_F16=1. Not within the f32 GGUF's 1e-3 max-abs gate: measured
    first-step logits vs transformers 5.0e-3..8.7e-3 with float16, 8.6e-4..4.1e-3 without (the CPU:
    2e-6; see README 'GPU and NPU')."""
    from edgebridge.exporters.quantize import DEFAULT_BUDGET
    from edgebridge.parity import logit_metrics, violations

    exp = exported(workdir, kind, dtype)
    n_layer = exp.manifest.llm.artifacts["gguf"].details["n_layer"]
    for extra, fp16 in (({}, "1"), ({"GGML_VK_DISABLE_F16": "1"}, "0")):
        runs = _side_by_side(exp.bundle, image_file, {**ON_LAVAPIPE, **extra})
        cpu, gpu = runs["CPU"], runs["GPU"]
        assert gpu["ids"] == cpu["ids"], f"{kind} {dtype}, fp16 {fp16}"
        logits_gpu, logits_cpu = np.array(gpu["logits"])[None], np.array(cpu["logits"])[None]
        assert not violations(logit_metrics(logits_gpu, logits_cpu), DEFAULT_BUDGET["llm"])
        assert cpu["llm"]["executed"] == "CPU" and cpu["llm"]["backend"] == "CPU"
        llm = gpu["llm"]
        assert (llm["requested"], llm["executed"], llm["backend"], llm["device"]) == ("GPU", "GPU", "Vulkan", "Vulkan0")
        assert llm["gpu_layers"] == f"{n_layer + 1}/{n_layer + 1}" and "fallback_reason" not in llm
        assert "llvmpipe" in llm["device_description"] and llm["device_features"]["fp16"] == fp16


def test_cli_per_component_devices_and_partial_offload(workdir, image_file):
    exp = exported(workdir, "llava")
    proc = run_cli("run", str(exp.bundle), "-i", str(image_file), "-p", PROMPT, "-n", "4", "--json",
                   "--device", "encoder=CPU,llm=GPU", "--gpu-layers", "1", env=ON_LAVAPIPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    devices = json.loads(proc.stdout)["devices"]
    assert devices["llm"]["executed"] == "CPU+GPU" and devices["llm"]["gpu_layers"].startswith("1/")
    assert all(d["executed"] == "CPU" for name, d in devices.items() if name != "llm")


def test_no_vulkan_device_runs_on_cpu_and_says_so(workdir, image_file):
    exp = exported(workdir, "llava")
    asked = run_cli("run", str(exp.bundle), "-i", str(image_file), "-p", PROMPT, "-n", "4", "--json",
                    "--llm-device", "GPU", env=NO_DEVICE)
    assert asked.returncode == 0, asked.stderr[-3000:]
    llm = json.loads(asked.stdout)["devices"]["llm"]
    assert llm["executed"] == "CPU" and "no GPU device" in llm["fallback_reason"]
    assert "warning:" in asked.stderr and "ran on CPU" in asked.stderr
    auto = run_cli("run", str(exp.bundle), "-i", str(image_file), "-p", PROMPT, "-n", "4", "--json",
                   "--llm-device", "AUTO", env=NO_DEVICE)
    assert auto.returncode == 0, auto.stderr[-3000:]
    llm = json.loads(auto.stdout)["devices"]["llm"]
    assert llm["executed"] == "CPU" and "fallback_reason" not in llm  # AUTO asked for whatever is there


def test_prefill_graph_hands_over_to_an_offloaded_llm(workdir, image_file):
    """The KV hand-over writes llama.cpp's state blob; on a Vulkan context the cache lives on the device."""
    from tests.conftest import exported_llava

    exp = exported_llava(workdir, ("clip", "llama"), "f32", prefill="fp32")
    code = SIDE_BY_SIDE.replace("fast_prefill=False", "fast_prefill=True").replace(
        '"warnings": result.warnings', '"warnings": result.warnings, "engine": result.timings.prefill_engine')
    runs = _side_by_side(exp.bundle, image_file, ON_LAVAPIPE, code)
    assert runs["GPU"]["engine"] == runs["CPU"]["engine"] == "onnxruntime+handoff"
    assert runs["GPU"]["ids"] == runs["CPU"]["ids"] and runs["GPU"]["llm"]["executed"] == "GPU"


def test_profile_puts_cpu_and_vulkan_side_by_side(workdir, image_file, tmp_path):
    exp = exported(workdir, "llava")
    proc = run_cli("profile", str(exp.bundle), "-o", str(tmp_path), "-i", str(image_file), "-p", PROMPT, "-n", "4",
                   "--runs", "1", "--warmup", "0", "--llm-device", "CPU,GPU", env=ON_LAVAPIPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    by_name = {c["name"]: c for c in report["configurations"]}
    assert set(by_name) == {"onnxruntime/CPU", "onnxruntime/CPU/llm=GPU"}
    assert all(c["status"] == "ok" for c in by_name.values())
    assert by_name["onnxruntime/CPU/llm=GPU"]["devices"]["llm"]["device"] == "Vulkan0"
    described = [d["description"] for d in report["environment"]["devices"]["llama.cpp"]]
    assert any("llvmpipe" in d for d in described)
    assert "Vulkan0" in (tmp_path / "report.html").read_text()
