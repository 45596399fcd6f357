"""Quantization: every precision of every engine exports, loads, runs, and records its drift.

Tiny random models (64 wide, std-0.15 weights) are far harder to quantize than real ones: a
64-wide row cannot take K-quants (llama.cpp falls back), and int4 groups hold few weights. So the
exports here use a loose drift budget, and the tests check the recorded drift lies in the range
each precision gives on such models, and that the ranking of precisions is the expected one.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from PIL import Image

from edgebridge import Pipeline
from edgebridge.bundle import Bundle
from edgebridge.errors import CorruptArtifactError, ExportError, ParityError
from edgebridge.exporters.api import export_bundle
from edgebridge.exporters.quantize import DEFAULT_BUDGET, parse_budget, parse_quantize
from edgebridge.runtimes.llamacpp import LlamaSettings
from tests.conftest import PROMPT, run_cli, tiny_llava
from tests.reference import hf_reference

pytestmark = pytest.mark.slow

LOOSE = ["encoder.cosine_min=0.7", "llm.top1_agreement=0.3", "llm.kl_mean=1.0"]
PLANS = {
    "a": "encoder.onnx=fp16,encoder.openvino=int4,llm=q4_0",  # fp16: the old spelling of f16, still accepted
    "b": "encoder.onnx=int8,encoder.openvino=int8,llm=q4_k_m",
    "c": "encoder.onnx=int8-static,encoder.openvino=int8-static,llm=q5_k_m",
    "d": "encoder.openvino=f16,llm=q6_k",
    "e": "llm=q8_0",
}
# worst-vector cosine each encoder precision reaches on the tiny model (f32 is the strict gate)
ENCODER_FLOOR = {"f32": 0.99999, "f16": 0.9999, "int8": 0.95, "int8-static": 0.9, "int4": 0.75}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("calib")
    for name in ("astronaut", "coffee", "rocket", "chelsea", "immunohistochemistry", "colorwheel"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def quantized(workdir, calib_dir):
    model = tiny_llava(workdir, ("clip", "llama"))
    bundles = {}
    for key, plan in PLANS.items():
        target = workdir / f"quant-{key}"
        if not target.exists():
            export_bundle(model, target, quantize=plan, max_drift=LOOSE,
                          calibration=calib_dir if key == "c" else None)
        bundles[key] = Bundle.open(target)
    return bundles


def _artifacts(quantized):
    for key, bundle in quantized.items():
        for name, comp in bundle.manifest.components.items():
            for fmt, art in comp.artifacts.items():
                yield key, bundle, name, fmt, art


def test_every_precision_is_covered(quantized):
    seen = {(fmt, art.precision) for _, _, _, fmt, art in _artifacts(quantized)}
    expected = {("onnx", p) for p in ("f32", "f16", "int8", "int8-static")}
    expected |= {("openvino", p) for p in ("f32", "f16", "int8", "int4", "int8-static")}
    expected |= {("gguf", p) for p in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")}
    assert expected <= seen


def test_encoder_drift_is_recorded_and_in_range(quantized):
    for key, bundle, name, fmt, art in _artifacts(quantized):
        if fmt == "gguf":
            continue
        parity = art.parity
        assert parity.passed and parity.reference == "pytorch"
        assert parity.metrics["cosine_min"] >= ENCODER_FLOOR[art.precision], (key, fmt, art.precision, parity.metrics)
        if art.precision == "f32":
            assert parity.tolerance == {"max_abs": 1e-4, "cosine_min": 0.99999}
            continue
        q = art.quantization
        assert q["precision"] == art.precision and q["method"] != "none"
        assert q["bytes"] == sum(bundle.manifest.files[f].bytes for f in art.files)
        assert q["speed"]["latency_ms"] > 0
        assert parity.tolerance == {"cosine_min": 0.7}  # the budget it was held to
        # held-out photos x 64 image tokens: 7 of the 14 default photos, or half the --calibration folder
        assert parity.samples == len(q["calibration"]["evaluate"]) * 64
        assert len(q["calibration"]["evaluate"]) == (3 if key == "c" else 7)
        if art.precision == "int8-static":
            assert q["calibration"]["source"] != "default"  # plan c used the --calibration folder
            assert len(q["calibration"]["calibrate"]) == 3 + 6  # half the folder + 6 synthetic images


def test_int8_static_keeps_the_boundary_layers_float(quantized):
    """The first layer (reads the pixels) and the last (writes the LLM's embeddings) are not quantized."""
    import onnx

    bundle = quantized["c"]
    for fmt in ("onnx", "openvino"):
        art = bundle.manifest.components["vision_encoder"].artifacts[fmt]
        kept = art.quantization["kept_float"]
        assert len(kept) == 2 and kept[0] != kept[1], (fmt, kept)
    onnx_art = bundle.manifest.components["vision_encoder"].artifacts["onnx"]
    graph = onnx.load(str(bundle.path(onnx_art.files[0]))).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}
    quantized_ops = [n for n in graph.node if n.op_type in ("MatMul", "Conv", "Gemm")
                     and any(producers.get(i) == "DequantizeLinear" for i in n.input)]
    assert quantized_ops, "int8-static quantized nothing"
    for name in onnx_art.quantization["kept_float"]:
        assert nodes[name].op_type in ("MatMul", "Conv", "Gemm")
        assert all(producers.get(i) != "DequantizeLinear" for i in nodes[name].input), name


def test_llm_drift_and_tensor_types_are_recorded(quantized):
    kl = {}
    for key, bundle, name, fmt, art in _artifacts(quantized):
        if fmt != "gguf":
            continue
        q = art.quantization
        assert art.parity.reference == "gguf-f32" and art.parity.passed
        assert q["method"] == "llama_model_quantize"
        types = q["tensor_types"]  # what every tensor really got, read back from the file
        names = [t.name for t in gguf.GGUFReader(str(bundle.path("llm.gguf"))).tensors]
        assert set(types) == set(names)
        counts = {t: list(types.values()).count(t) for t in set(types.values())}
        assert art.details["tensor_types"] == counts
        kl[art.precision] = art.parity.metrics["kl_mean"]
        assert q["speed"]["decode_tokens_per_s"] > 0
    assert kl["q8_0"] < kl["q4_0"] and kl["q6_k"] < kl["q4_0"]
    assert kl["q8_0"] < 0.01


def test_q8_0_tensors_really_are_q8_0(quantized):
    art = quantized["e"].manifest.components["llm"].artifacts["gguf"]
    types = art.quantization["tensor_types"]
    assert types["blk.0.attn_q.weight"] == "q8_0"
    assert types["output_norm.weight"] == "f32"  # norms stay f32 whatever the file type


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("key", sorted(PLANS))
def test_quantized_bundles_run_end_to_end(quantized, photo, backend, key):
    with Pipeline.from_bundle(quantized[key].root, encoder_backend=backend) as pipe:
        result = pipe.generate(PROMPT, images=[photo], max_new_tokens=8)
    assert len(result.token_ids) == 8
    art = quantized[key].manifest.components["vision_encoder"].artifacts["onnx" if backend == "onnxruntime"
                                                                         else "openvino"]
    assert result.devices["vision_encoder"]["executed"] == "CPU"
    assert result.devices["llm"]["precision"] == quantized[key].manifest.components["llm"].artifacts["gguf"].precision
    assert art.precision in ENCODER_FLOOR


def test_q8_0_bundle_still_matches_transformers_tokens(workdir, quantized, photo):
    # Teacher-forced: q8_0 predicts each of transformers' 16 greedy tokens from the same prefix. Free-running
    # greedy would turn one near-tie (a random tiny model has top-2 gaps of ~0.05) into 16 different tokens.
    ref = hf_reference(tiny_llava(workdir, ("clip", "llama")), PROMPT, {"image": [Image.fromarray(photo)]},
                       max_new_tokens=16)
    with Pipeline.from_bundle(quantized["e"].root, llm_settings=LlamaSettings()) as pipe:
        first = pipe.prefill_logits(PROMPT, images=[photo])
        rest = pipe.llm.engine.eval_tokens(ref.token_ids[:-1], "all")
    predicted = np.argmax(np.vstack([first[None], rest]), axis=-1)
    assert np.mean(predicted == np.array(ref.token_ids)) >= 0.75
    assert np.abs(first - ref.first_logits).max() < 0.2 * ref.first_logits.std()  # q8_0 0.08 here, q4_k_m 0.38


def test_inspect_shows_precision_size_and_drift(quantized):
    proc = run_cli("inspect", str(quantized["a"].root))
    assert proc.returncode == 0, proc.stderr
    for needle in ("int4", "f16", "q4_0", "gguf-f32", "cosine_min", "kl_mean", "latency_ms"):
        assert needle in proc.stdout, needle


def test_auto_keeps_the_first_candidate_within_budget(workdir, tmp_path):
    model = tiny_llava(workdir, ("clip", "llama"))
    budget = ["encoder.cosine_min=0.995", "llm.top1_agreement=0.9", "llm.kl_mean=0.05"]
    proc = run_cli("export", str(model), "-o", str(tmp_path / "auto"), "--quantize", "auto", "--profile-target",
                   "none", *[a for b in budget for a in ("--max-drift", b)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "auto: vision_encoder (onnx)" in proc.stdout and "refused" in proc.stdout and "kept" in proc.stdout
    manifest = Bundle.open(tmp_path / "auto").manifest
    for comp in manifest.components.values():
        for fmt, art in comp.artifacts.items():
            trials = art.quantization["trials"]
            assert trials[-1]["precision"] == art.precision and trials[-1]["passed"]
            assert all(not t["passed"] for t in trials[:-1])  # everything smaller was refused, with a reason
            assert all(t["verdict"] != "within budget" for t in trials[:-1])
            order = {"onnx": ["int8-static", "int8", "f16", "f32"],
                     "openvino": ["int4", "int8-static", "int8", "f16", "f32"],
                     "gguf": ["q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0-ffn-q6_k", "q8_0", "f16", "f32"]}[fmt]
            assert [t["precision"] for t in trials] == order[: len(trials)]


def test_tight_budget_fails_cleanly(workdir, tmp_path):
    model = tiny_llava(workdir, ("clip", "llama"))
    with pytest.raises(ParityError) as info:
        export_bundle(model, tmp_path / "b", encoder_formats=["onnx"], quantize="encoder=int8",
                      max_drift=["encoder.cosine_min=0.99999"])
    assert info.value.component == "vision_encoder (onnx int8)" and info.value.figure == "cosine_min"
    assert not (tmp_path / "b").exists()
    proc = run_cli("export", str(model), "-o", str(tmp_path / "c"), "--encoder-format", "onnx",
                   "--quantize", "llm=q4_0", "--max-drift", "llm.kl_mean=0.000001")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "llm (GGUF q4_0)" in proc.stderr and "kl_mean" in proc.stderr and "--max-drift" in proc.stderr
    assert not (tmp_path / "c").exists()


def _write_gguf_of_width(path, model_dir, width: int) -> None:
    import torch
    from transformers import LlamaConfig

    from edgebridge.exporters.gguf.vocab import vocab_from_folder
    from edgebridge.exporters.gguf.writer import TextModel, write_gguf

    cfg = LlamaConfig(vocab_size=480, hidden_size=width, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    state = {k: v for k, v in __import__("transformers").LlamaForCausalLM(cfg).state_dict().items()}
    write_gguf(TextModel(cfg, state, vocab_from_folder(model_dir, 480, eos_id=None)), path, "f32")


def test_existing_gguf_with_wrong_width_is_refused_before_any_c_call(workdir, tmp_path, monkeypatch):
    import edgebridge.runtimes.llamacpp.llm as llm_module

    model = tiny_llava(workdir, ("clip", "llama"))
    wrong = tmp_path / "narrow.gguf"
    _write_gguf_of_width(wrong, model, 32)

    def no_c_calls():
        raise AssertionError("llama.cpp was reached")

    monkeypatch.setattr(llm_module, "llama", no_c_calls)
    with pytest.raises(CorruptArtifactError, match="embedding width 32"):
        export_bundle(model, tmp_path / "b", llm_gguf=wrong)
    assert not (tmp_path / "b").exists()


def test_existing_gguf_is_used_and_checked(workdir, clip_llama_f32, photo, tmp_path):
    model = tiny_llava(workdir, ("clip", "llama"))
    target = tmp_path / "from-gguf"
    manifest = export_bundle(model, target, encoder_formats=["onnx"], llm_gguf=clip_llama_f32.bundle / "llm.gguf")
    art = manifest.components["llm"].artifacts["gguf"]
    assert art.quantization["method"] == "existing GGUF" and art.details["architecture"] == "llama"
    assert art.parity.reference == "pytorch" and art.parity.metrics["top1_agreement"] >= 0.99
    ref = hf_reference(model, PROMPT, {"image": [Image.fromarray(photo)]}, max_new_tokens=8)
    with Pipeline.from_bundle(target, llm_settings=LlamaSettings.strict()) as pipe:
        assert pipe.generate(PROMPT, images=[photo], max_new_tokens=8).token_ids == ref.token_ids


def test_plan_and_budget_parsing():
    assert parse_quantize("auto", ("onnx", "openvino")) == {"encoder": {"onnx": "auto", "openvino": "auto"},
                                                              "llm": "auto"}
    assert parse_quantize("encoder=int8,llm=q4_k_m", ("onnx",)) == {"encoder": {"onnx": "int8"}, "llm": "q4_k_m"}
    with pytest.raises(ExportError, match="onnx encoders cannot be quantized to 'int4'"):
        parse_quantize("encoder=int4", ("onnx", "openvino"))
    with pytest.raises(ExportError, match="unknown LLM precision"):
        parse_quantize("llm=q3", ("onnx",))
    with pytest.raises(ExportError, match="COMPONENT=PRECISION"):
        parse_quantize("int8", ("onnx",))
    budget = parse_budget(["encoder.cosine_min=0.98,llm.kl_mean=0.1"])
    assert budget["encoder"]["cosine_min"] == 0.98 and budget["llm"] == {**DEFAULT_BUDGET["llm"], "kl_mean": 0.1}
    with pytest.raises(ExportError, match="unknown metric"):
        parse_budget(["llm.accuracy=1"])


def test_audio_encoder_quantizes_with_speech_calibration(workdir, speech, tmp_path):
    from tests.conftest import tiny_model

    model = tiny_model(workdir, "qwen2-audio")
    manifest = export_bundle(model, tmp_path / "qa", quantize="encoder.onnx=int8-static,encoder.openvino=int8",
                             max_drift=LOOSE)
    for fmt, precision in (("onnx", "int8-static"), ("openvino", "int8")):
        art = manifest.components["audio_encoder"].artifacts[fmt]
        assert art.precision == precision and art.parity.passed
        assert art.parity.metrics["cosine_mean"] > 0.95
        names = art.quantization["calibration"]["calibrate"] + art.quantization["calibration"]["evaluate"]
        assert any(n.startswith("espeak-ng:") for n in names) and any(n.startswith("synthetic") for n in names)
    prompt = "<|im_start|>user\n<|AUDIO|>What is said?<|im_end|>\n<|im_start|>assistant\n"
    for backend in ("onnxruntime", "openvino"):
        with Pipeline.from_bundle(tmp_path / "qa", encoder_backend=backend) as pipe:
            assert len(pipe.generate(prompt, audio=[speech[0]], max_new_tokens=4).token_ids) == 4


EXTRA_BUFTS_CHILD = r"""
import json, sys
import numpy as np
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

path, flag = sys.argv[1], sys.argv[2] == "on"
llm = LlamaCppLLM(path, LlamaSettings(n_ctx=256, use_extra_bufts=flag))
logits = llm.eval_tokens(llm.tokenize("USER: describe the weather today. ASSISTANT:", add_bos=True))
first, tokens = logits.astype(float).tolist(), []
for _ in range(12):
    tokens.append(int(np.argmax(logits)))
    logits = llm.step(tokens[-1])
print(json.dumps({"tokens": tokens, "first": first, "buffers": llm.report.details["weight_buffers_mib"],
                  "variant": llm.report.details["cpu_variant"]}))
llm.close()
"""
# Which ggml CPU variants have extra-buffer kernels for a type: q4_0 is repacked on every AVX2
# variant (CPU_REPACK); q8_0 only has the AMX path (sapphirerapids). Elsewhere the plain path runs.
NO_AVX2 = {"x64", "sse42", "sandybridge"}
EXTRA_KERNELS = {"a": lambda variant: variant not in NO_AVX2, "e": lambda variant: variant == "sapphirerapids"}


@pytest.mark.parametrize("key", ["a", "e"])  # q4_0, q8_0: the types with repack / AMX kernels
def test_quantized_gguf_decodes_with_extra_buffer_types_and_exits_cleanly(quantized, key):
    """The set-up's llama.cpp build decodes quantized GGUFs through the extra buffer types (repacked
    or AMX weights) without crashing, even at process exit, and gives the plain path's answer."""
    import json

    from tests.conftest import run_isolated

    gguf_path = str(quantized[key].path("llm.gguf"))
    runs = {}
    for flag in ("on", "off"):
        proc = run_isolated(EXTRA_BUFTS_CHILD, gguf_path, flag)
        assert proc.returncode == 0, (flag, proc.returncode, proc.stderr[-2000:])  # a crash exits with -11 / -6
        runs[flag] = json.loads(proc.stdout.strip().splitlines()[-1])
    on, off = runs["on"], runs["off"]
    plain = {"CPU", "CPU_Mapped"}
    assert set(off["buffers"]) <= plain, off["buffers"]
    if EXTRA_KERNELS[key](on["variant"]):
        assert set(on["buffers"]) - plain, f"no extra buffer type used on {on['variant']}: {on['buffers']}"
    first_on, first_off = np.array(on["first"]), np.array(off["first"])
    assert np.abs(first_on - first_off).max() <= 0.05 * first_off.std(), np.abs(first_on - first_off).max()
    assert on["tokens"] == off["tokens"]


def test_a_mix_keeps_its_base_type_and_puts_the_ffn_at_its_own(tmp_path):
    """``q8_0-ffn-q6_k``: llama.cpp's quantizer with per-tensor overrides; on a llama whose FFN rows take
    K-quant blocks (256 wide), every FFN matrix is q6_k and every other matrix q8_0, the record says so,
    and llama.cpp runs it with logits close to the f32 GGUF's."""
    from edgebridge.exporters.quantize.gguf_quant import quantize_gguf, tensor_types
    from edgebridge.runtimes.llamacpp import LlamaCppLLM
    from tests.test_text_archs import _causal_lm, _gguf

    model, _ = _causal_lm("llama", tmp_path, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=64)
    f32 = _gguf("llama", tmp_path, model)
    record = quantize_gguf(f32, tmp_path / "mix.gguf", "q8_0-ffn-q6_k")
    matrices = {name: kind for name, kind in tensor_types(tmp_path / "mix.gguf").items()
                if name.startswith("blk.") and name.endswith(".weight") and "norm" not in name}
    assert matrices and record["overrides"] == {"ffn_(up|gate|down)": "q6_k"}
    assert {kind for name, kind in matrices.items() if ".ffn_" in name} == {"q6_k"}
    assert {kind for name, kind in matrices.items() if ".attn_" in name} == {"q8_0"}
    ids = list(range(1, 30))
    logits = []
    for path in (f32, tmp_path / "mix.gguf"):
        with LlamaCppLLM(path, LlamaSettings(n_ctx=64)) as llm:
            logits.append(np.array(llm.eval_tokens(ids)))
    assert np.isfinite(logits[1]).all() and 0 < np.abs(logits[1] - logits[0]).max() < 0.1 * np.abs(logits[0]).max()
    with pytest.raises(ExportError, match="q8_0-ffn-q6_k"):
        quantize_gguf(f32, tmp_path / "bad.gguf", "q7_x")


def test_int8_weights_are_seven_bit_so_cpus_without_vnni_do_not_saturate(quantized):
    """Every int8 weight the encoder graphs hold is within +-64 (``WEIGHTS_7BIT``); the engine facts behind
    it and the prefill graph's ``per-token-u8`` scheme: onnxruntime's uint8 x int8 GEMM is exact with +-63
    weights on every x86 CPU (AVX2's int16 pair sums saturate at +-127; a VNNI CPU is exact either way),
    and its uint8 x uint8 GEMM with the full 8 bits (1-255 around zero point 128)."""
    import onnx
    from onnx import numpy_helper

    for key in ("c", "b"):
        comp = quantized[key].manifest.components["vision_encoder"].artifacts["onnx"]
        graph = onnx.load(str(quantized[key].path(comp.files[0]))).graph
        int8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
        assert int8 and max(int(np.abs(w.astype(np.int16)).max()) for w in int8) <= 64, key
    rng = np.random.default_rng(0)
    a = rng.integers(1, 256, (8, 256)).astype(np.uint8)
    signed = rng.integers(-63, 64, (256, 64)).astype(np.int8)
    np.testing.assert_array_equal(_integer_product(a, signed), (a.astype(np.int64) - 128) @ signed.astype(np.int64))
    extremes = np.where(rng.random((256, 64)) < 0.5, 1, 255).astype(np.uint8)  # the largest pair sums
    np.testing.assert_array_equal(_integer_product(a, extremes),
                                  (a.astype(np.int64) - 128) @ (extremes.astype(np.int64) - 128))


def _integer_product(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``(a - 128) @ (w - zero)`` through onnxruntime's MatMulIntegerToFloat (zero: 128 for uint8 ``w``)."""
    from onnx import TensorProto, helper, numpy_helper

    import onnxruntime as ort

    consts = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "one"),
              numpy_helper.from_array(np.ones(w.shape[1], np.float32), "ws"),
              numpy_helper.from_array(np.array(128, np.uint8), "z")]
    inputs = ["a", "w", "one", "ws", "z"] + (["z"] if w.dtype == np.uint8 else [])
    node = helper.make_node("MatMulIntegerToFloat", inputs, ["y"], domain="com.microsoft")
    model = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, list(a.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [a.shape[0], w.shape[1]])], consts),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
