"""The prefill graph (``--prefill``) and the KV-cache hand-over to llama.cpp.

Two bundles: a llama text model (rotary rows permuted in the GGUF) with an f32 GGUF and an fp32
graph, where the hand-over must reproduce llama.cpp's own prefill; and a qwen2 text model (no
permutation) with an f16 GGUF and an int8 graph, held to the drift budget. Real onnxruntime and
llama.cpp throughout; the state layout is compared byte for byte with the blob llama.cpp writes.
"""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from edgebridge.errors import CorruptArtifactError, ExportError
from edgebridge.parity import logit_metrics
from edgebridge.pipeline import Pipeline
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from edgebridge.runtimes.llamacpp.kv_handoff import (
    MROPE_INPUT,
    HandoffUnavailable,
    KVHandoff,
    PrefillGraph,
    build_state,
    compare_states,
    parse_layout,
)
from edgebridge.runtimes.llamacpp.session import PrefillSpeed
from edgebridge.testing import BUILDERS
from tests.conftest import PROMPT, exported_llava, run_cli, tiny_llava, tiny_model
from tests.test_torch_free import BLOCKER, HOST_ONLY_MODULES

pytestmark = pytest.mark.slow

SETTINGS = {"default": LlamaSettings(), "strict": LlamaSettings.strict(), "flash_attn": LlamaSettings(flash_attn=True)}


@pytest.fixture(scope="module")
def llama_fp32(workdir):
    return exported_llava(workdir, ("clip", "llama"), "f32", prefill="fp32")


@pytest.fixture(scope="module")
def qwen2_int8(workdir):
    return exported_llava(workdir, ("clip", "qwen2"), "f16", prefill="int8")


@pytest.fixture(scope="module")
def qwen25_vl_fp32(workdir):
    """Qwen2.5-VL (M-RoPE: media rows on (t, h, w) positions) with an f32 GGUF and an fp32 graph."""
    from edgebridge.exporters.api import export_bundle

    model_dir = tiny_model(workdir, "qwen2.5-vl")
    bundle = workdir / "bundle-qwen2.5-vl-prefill-fp32"
    if not (bundle / "edgebridge.json").is_file():
        export_bundle(model_dir, bundle, llm_dtype="f32", encoder_formats=("onnx",), prefill="fp32")
    return bundle


def _files(exp):
    art = exp.manifest.llm.artifacts["prefill"]
    return exp.bundle / exp.manifest.llm.artifacts["gguf"].files[0], exp.bundle / art.files[0], art


def test_manifest_records_both_gates(llama_fp32, qwen2_int8):
    for exp, precision in ((llama_fp32, "f32"), (qwen2_int8, "int8")):  # asked as "fp32", written as "f32"
        _, graph, art = _files(exp)
        assert art.format == "onnx" and art.precision == precision and art.files[0] in exp.manifest.files
        assert art.parity.passed and art.parity.reference == "llama.cpp prefill (same GGUF)"
        assert art.parity.metrics["top1_agreement"] >= art.parity.tolerance["top1_agreement"]
        assert art.parity.metrics["kl_mean"] <= art.parity.tolerance["kl_mean"]
        assert art.quantization["speed"]["prefill_ms"] > 0 and art.parity.settings["probe_cosine"] > 0.99
        pytorch = art.details["checks"]["pytorch"]["metrics"]
        assert pytorch["max_abs"] <= (1e-3 if precision == "f32" else 1.0)
    assert llama_fp32.manifest.llm.artifacts["prefill"].quantization["rotary_permuted"] is True
    assert qwen2_int8.manifest.llm.artifacts["prefill"].quantization["rotary_permuted"] is False


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("which", ["llama_fp32", "qwen2_int8"])
def test_state_equals_llamacpps_own_layout(which, setting, request):
    """Our blob for a 23-position prompt has every layout byte of llama.cpp's own, and K/V values close
    (exact to f16 rounding for the fp32 graph on an f32 GGUF)."""
    gguf, graph_path, art = _files(request.getfixturevalue(which))
    with LlamaCppLLM(gguf, SETTINGS[setting].with_(n_ctx=256)) as llm:
        ids = (np.arange(23) * 7 + 3) % llm.n_vocab
        llm.eval_tokens(ids.tolist(), logits="none")
        theirs = llm.read_seq_state()
        layout, n = parse_layout(theirs)
        assert n == 23 and layout.v_trans == (setting != "flash_attn")
        assert set(layout.k_types) == {0 if setting == "strict" else 1}
        graph = PrefillGraph(graph_path, precision=art.precision)
        _, k, v = graph.run(ids, np.zeros((23, llm.n_embd), np.float32), np.zeros(23, bool))
        cosines = compare_states(build_state(k, v, layout), theirs, layout, n)
    assert len(cosines) == 2 * layout.n_layer
    assert min(cosines) >= (0.99999 if which == "llama_fp32" else 0.99), cosines


def _per_channel_copy(graph_path, folder):
    """The graph with V per channel ``[L, C, n]``: as the export leaves it when flash attention is off
    (``match_values_layout``), and as bundles before 2026-12-01 wrote it."""
    import shutil

    from edgebridge.exporters.runtime_choice import match_values_layout

    folder.mkdir()
    copy = folder / graph_path.name
    for path in (graph_path, graph_path.with_name(graph_path.name + ".data")):
        shutil.copyfile(path, folder / path.name)
    before = copy.read_bytes()
    assert match_values_layout(copy, flash_attn=True) == "per position" and copy.read_bytes() == before
    assert match_values_layout(copy, flash_attn=False) == "per channel"
    return copy


@pytest.mark.parametrize("setting", ["default", "flash_attn"])
def test_graphs_with_values_per_channel_hand_over_the_same_state(llama_fp32, setting, tmp_path):
    """The graph gives V one row per position (llama.cpp's layout with flash attention on); with V per
    channel (flash attention off: the export's layout then, and older bundles') it gives the same
    llama.cpp state byte for byte, with V kept per channel (flash attention off) or per cell."""
    gguf, graph_path, art = _files(llama_fp32)
    new = PrefillGraph(graph_path, precision=art.precision)
    old = PrefillGraph(_per_channel_copy(graph_path, tmp_path / "per-channel"), precision=art.precision)
    assert new.v_per_position and not old.v_per_position
    with LlamaCppLLM(gguf, SETTINGS[setting].with_(n_ctx=256)) as llm:
        ids = (np.arange(23) * 7 + 3) % llm.n_vocab
        llm.eval_tokens(ids.tolist(), logits="none")
        layout, _ = parse_layout(llm.read_seq_state())
        media, mask = np.random.default_rng(0).standard_normal((23, llm.n_embd)).astype(np.float32), ids % 2 == 0
    blobs = [build_state(*graph.run(ids, media, mask)[1:], layout) for graph in (new, old)]
    assert layout.v_trans == (setting == "default") and np.array_equal(blobs[0], blobs[1])


def _pair(bundle, settings, **kw):
    return (Pipeline.from_bundle(bundle, llm_settings=settings, **kw),
            Pipeline.from_bundle(bundle, llm_settings=settings, fast_prefill=False, **kw))


@pytest.mark.parametrize("setting", ["strict", "default", "flash_attn"])
def test_greedy_tokens_equal_llamacpp_prefill(llama_fp32, photo, setting):
    fast, plain = _pair(llama_fp32.bundle, SETTINGS[setting])
    with fast, plain:
        assert not fast.load_warnings
        assert fast.llm.report.details["prefill"]["engine"] == "onnxruntime"
        a = fast.generate(PROMPT, images=[photo], max_new_tokens=16)
        b = plain.generate(PROMPT, images=[photo], max_new_tokens=16)
        assert a.timings["prefill_engine"] == "onnxruntime+handoff" and b.timings["prefill_engine"] == "llama.cpp"
        assert a.devices["llm"]["prefill"]["handoff"] == "llama_state_seq_set_data"
        assert a.token_ids == b.token_ids and len(a.token_ids) == 16
        # a follow-up sharing the prompt prefix reuses the handed-over cache; llama.cpp prefills the rest
        # (kept whatever the export's timing of the graph says: test_a_new_image_after_a_shared_header_...)
        fast.llm.prefill_speed = None
        follow = PROMPT + " A cat. USER: and its colour? ASSISTANT:"
        c = fast.generate(follow, images=[photo], max_new_tokens=8)
        d = plain.generate(follow, images=[photo], max_new_tokens=8)
        assert c.timings["reused_prefix_positions"] >= a.prompt_tokens - 2
        assert c.timings["prefill_engine"] == "llama.cpp"
        assert c.token_ids == d.token_ids


def test_the_first_token_comes_before_the_cache_is_written(llama_fp32, photo):
    """The graph's logits give the first token; its cache goes into llama.cpp's context when the context is
    next used (the second token: every multi-token test here; a follow-up keeping the prefix: below), so a
    one-token answer leaves the context empty while the session counts the prompt, and the follow-up still
    answers as llama.cpp's own prefill does."""
    fast, plain = _pair(llama_fp32.bundle, SETTINGS["strict"])
    with fast, plain:
        fast.llm.prefill_speed = None  # keep the prefix whatever the export's timing says
        one = fast.generate(PROMPT, images=[photo], max_new_tokens=1)
        assert one.timings["prefill_engine"] == "onnxruntime+handoff"
        assert fast.llm.engine.n_past == 0 and fast.llm.n_past == one.prompt_tokens
        assert one.token_ids == plain.generate(PROMPT, images=[photo], max_new_tokens=1).token_ids
        follow = PROMPT + " A cat. USER: and its colour? ASSISTANT:"
        c = fast.generate(follow, images=[photo], max_new_tokens=8)
        assert c.timings["reused_prefix_positions"] >= one.prompt_tokens - 2
        assert c.token_ids == plain.generate(follow, images=[photo], max_new_tokens=8).token_ids


def test_a_new_image_after_a_shared_header_is_prefilled_by_the_graph(llama_fp32, photo):
    """The text before the image is cached from the previous call; keeping it would leave the rest of the
    prompt to llama.cpp's prefill (the graph starts at position 0). Where the graph's rate is the faster
    the prefix yields and the graph prefills everything; where llama.cpp's is, the prefix is kept. The
    rates are set here both ways (the export's measured ones are checked to be the ones loaded)."""
    other = np.ascontiguousarray(photo[:, ::-1])
    fast, plain = _pair(llama_fp32.bundle, LlamaSettings())
    with fast, plain:
        recorded = llama_fp32.manifest.llm.artifacts["prefill"].quantization["speed"]
        assert fast.llm.prefill_speed == PrefillSpeed.from_record(recorded)
        assert "prefix_rule" in fast.llm.report.details["prefill"]
        fast.llm.prefill_speed = PrefillSpeed(128, 10.0, 20.0)
        fast.generate(PROMPT, images=[photo], max_new_tokens=4)
        a = fast.generate(PROMPT, images=[other], max_new_tokens=8)
        b = plain.generate(PROMPT, images=[other], max_new_tokens=8)
        assert a.timings["prefill_engine"] == "onnxruntime+handoff" and a.timings["reused_prefix_positions"] == 0
        assert a.token_ids == b.token_ids
        fast.llm.prefill_speed = PrefillSpeed(128, 20.0, 10.0)
        c = fast.generate(PROMPT, images=[photo], max_new_tokens=8)
        d = plain.generate(PROMPT, images=[photo], max_new_tokens=8)
        assert c.timings["prefill_engine"] == "llama.cpp" and c.timings["reused_prefix_positions"] > 0
        assert c.token_ids == d.token_ids
    assert PrefillSpeed.from_record(None) is None and PrefillSpeed.from_record({"positions": 128}) is None
    assert PrefillSpeed.from_record({"positions": 128, "prefill_ms": 0, "llamacpp_prefill_ms": 5}) is None


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.mark.parametrize("setting", ["strict", "default"])
def test_mrope_handoff_gives_llamacpps_tokens(qwen25_vl_fp32, photo, setting):
    """M-RoPE: the graph rotates media rows by their (t, h, w) positions, the cells carry them (llama.cpp
    writes x, y and the token per cell) and decoding goes on past the largest; the same greedy ids as
    llama.cpp's own prefill for one image, two images of different sizes, and a follow-up question."""
    fast, plain = _pair(qwen25_vl_fp32, SETTINGS[setting])
    small = photo[::3, ::3]
    with fast, plain:
        assert not fast.load_warnings and fast.llm.handoff.graph.mrope
        # the follow-ups test the M-RoPE prefix reuse: keep the prefix whatever the export's timing of the
        # graph against llama.cpp says (that rule: test_a_new_image_after_a_shared_header_...)
        fast.llm.prefill_speed = None
        for prompt, images in ((f"<|im_start|>user\n{QWEN_IMAGE}What is it?<|im_end|>\n<|im_start|>assistant\n",
                                [photo]),
                               (f"{QWEN_IMAGE}and{QWEN_IMAGE}Compare them.", [photo, small])):
            a = fast.generate(prompt, images=images, max_new_tokens=16)
            b = plain.generate(prompt, images=images, max_new_tokens=16)
            assert a.timings["prefill_engine"] == "onnxruntime+handoff" and b.timings["prefill_engine"] == "llama.cpp"
            assert a.token_ids == b.token_ids and len(a.token_ids) == 16
            assert fast.llm.engine.next_pos == plain.llm.engine.next_pos < fast.llm.engine.n_past
            follow = prompt + "A cat.<|im_end|>\n<|im_start|>user\nAnd its colour?<|im_end|>\n<|im_start|>assistant\n"
            c = fast.generate(follow, images=images, max_new_tokens=8)
            d = plain.generate(follow, images=images, max_new_tokens=8)
            assert c.timings["reused_prefix_positions"] > 0 and c.token_ids == d.token_ids


def test_prompts_longer_than_the_graph_takes_stay_with_llamacpp(llama_fp32, photo):
    fast, plain = _pair(llama_fp32.bundle, LlamaSettings(), reuse_prefix=False)
    with fast, plain:
        fast.llm.handoff.max_positions = 10
        a = fast.generate(PROMPT, images=[photo], max_new_tokens=6)
        b = plain.generate(PROMPT, images=[photo], max_new_tokens=6)
    assert a.prompt_tokens > 10 and a.timings["prefill_engine"] == "llama.cpp" and a.token_ids == b.token_ids


def test_int8_graph_stays_within_budget(qwen2_int8, photo):
    fast, plain = _pair(qwen2_int8.bundle, LlamaSettings(), reuse_prefix=False)
    with fast, plain:
        prompts = [PROMPT, "USER: <image>\nDescribe the colours. ASSISTANT:", "<image>\nA photo of"]
        ours = np.stack([fast.prefill_logits(p, images=[photo]) for p in prompts])
        ref = np.stack([plain.prefill_logits(p, images=[photo]) for p in prompts])
        assert fast.generate(prompts[0], images=[photo], max_new_tokens=1).prefill_engine == "onnxruntime+handoff"
    budget = qwen2_int8.manifest.llm.artifacts["prefill"].parity.tolerance
    metrics = logit_metrics(ours, ref)
    # KL, not top-1: a random tiny model's logits are near ties, so three rows make top-1 a coin flip
    # (the export gate measures top-1 over 18 positions)
    assert metrics["kl_mean"] <= budget["kl_mean"] and metrics["max_abs"] < 1.0, metrics


def test_graph_of_another_model_falls_back_with_reason(llama_fp32, qwen2_int8, tmp_path, photo):
    """A prefill graph that does not belong to the GGUF is refused at load, reported, never used."""
    bundle = shutil.copytree(llama_fp32.bundle, tmp_path / "mixed")
    _, graph, _ = _files(llama_fp32)
    shutil.copyfile(_files(qwen2_int8)[1], bundle / graph.name)
    fast, plain = _pair(bundle, LlamaSettings(), verify=False)
    with fast, plain:
        assert any("llama.cpp prefills instead" in w for w in fast.load_warnings), fast.load_warnings
        assert fast.llm.handoff is None and fast.llm.report.details["prefill"] == {"engine": "llama.cpp"}
        a = fast.generate(PROMPT, images=[photo], max_new_tokens=8)
        b = plain.generate(PROMPT, images=[photo], max_new_tokens=8)
    assert a.timings["prefill_engine"] == "llama.cpp" and a.token_ids == b.token_ids
    assert any("llama.cpp prefills instead" in w for w in a.warnings)


def test_quantized_kv_cache_layout_is_refused(llama_fp32):
    """A cache type we do not write (q8_0 here, patched into llama.cpp's own blob) gives a reason."""
    gguf, _, _ = _files(llama_fp32)
    with LlamaCppLLM(gguf, LlamaSettings(n_ctx=64)) as llm:
        llm.eval_tokens([1, 2, 3], logits="none")
        blob = bytearray(llm.read_seq_state())
    parse_layout(bytes(blob))  # as llama.cpp wrote it
    first_k_type = 16 + 12 * 3 + 8
    quantized = bytearray(blob)
    struct.pack_into("<i", quantized, first_k_type, 8)  # GGML_TYPE_Q8_0
    with pytest.raises(HandoffUnavailable, match="K cache type 8"):
        parse_layout(bytes(quantized))
    with pytest.raises(HandoffUnavailable, match="unexplained bytes"):
        parse_layout(bytes(blob) + b"\0")


def test_attach_leaves_the_context_empty(llama_fp32):
    gguf, graph_path, art = _files(llama_fp32)
    with LlamaCppLLM(gguf, LlamaSettings(n_ctx=64)) as llm:
        handoff = KVHandoff.attach(llm, PrefillGraph(graph_path, precision=art.precision))
        assert llm.n_past == 0 and handoff.probe_cosine >= 0.99999


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_prefill_graph_is_a_clear_error(llama_fp32, tmp_path, which):
    """The graph and its external weights file (``llm_prefill.onnx.data``, mapped by onnxruntime): either one
    cut short is onnxruntime's refusal in our words, never a crash."""
    art = llama_fp32.manifest.llm.artifacts["prefill"]
    assert art.files == ["llm_prefill.onnx", "llm_prefill.onnx.data"]
    bundle = shutil.copytree(llama_fp32.bundle, tmp_path / "truncated")
    part = bundle / art.files[which]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 3])
    with pytest.raises(CorruptArtifactError, match="onnxruntime cannot load"):
        Pipeline.from_bundle(bundle, verify=False)


def test_unknown_prefill_precision_is_refused_before_work(tmp_path):
    from edgebridge.exporters.api import export_bundle

    with pytest.raises(ExportError, match="unknown prefill precision 'int4'"):
        export_bundle(tmp_path / "nowhere", tmp_path / "out", prefill="int4")


def test_cli_run_hands_over_without_torch(qwen2_int8, tmp_path, photo):
    """``edgebridge run`` takes the hand-over path on a device without torch/transformers, and says so."""
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(photo).save(image)
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(HOST_ONLY_MODULES)))
    for flag, engine in (("--fast-prefill", "onnxruntime+handoff"), ("--no-fast-prefill", "llama.cpp")):
        proc = run_cli("run", str(qwen2_int8.bundle), "-i", str(image), "-p", PROMPT, "-n", "4", "--json", flag,
                       env={"PYTHONPATH": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["timings"]["prefill_engine"] == engine


def test_profile_report_names_the_prefill_engine(qwen2_int8, photo):
    import jsonschema

    from edgebridge.profiling.html import render_html
    from edgebridge.profiling.runner import profile_bundle
    from tests.test_profile import REPORT_SCHEMA

    report = profile_bundle(qwen2_int8.bundle, prompt=PROMPT, images=[photo], max_new_tokens=2, runs=1, warmup=0)
    jsonschema.validate(report, json.loads(REPORT_SCHEMA.read_text()))
    conf = report["configurations"][0]
    assert conf["status"] == "ok" and conf["devices"]["llm"]["prefill"]["engine"] == "onnxruntime"
    assert "(prefill: onnxruntime int8)" in render_html(report)


# Text models the graph declines (test below), with the words of the reason: Qwen3-VL's (deepstack
# features added inside the decoder), and the gemma decoders (scaled embeddings, soft-capping, sliding
# windows the graph does not write)
DECLINED = {"qwen3-vl": "qwen3_vl_text has parts", "gemma3": "gemma3_text has parts",
            "paligemma": "gemma2 has parts"}


@pytest.mark.parametrize("kind", sorted(set(BUILDERS) - set(DECLINED)))
def test_every_family_gets_a_gated_prefill_graph(workdir, kind, tmp_path):
    """Each family's text model (llama, mistral, qwen2 behind every bridge) as a prefill graph that passes
    both gates against an f32 GGUF of the same weights."""
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.gguf.writer import write_gguf
    from edgebridge.exporters.prefill import export_prefill
    from edgebridge.exporters.quantize import DEFAULT_BUDGET

    model_dir = tiny_model(workdir, kind)
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    text = family.text_model(loaded)
    write_gguf(text, tmp_path / "llm.gguf", "f32")
    art = export_prefill(text, family.causal_lm(loaded), tmp_path / "llm.gguf", tmp_path / "llm_prefill.onnx",
                         "fp32", DEFAULT_BUDGET["llm"])
    assert art.parity.passed and art.details["checks"]["pytorch"]["metrics"]["max_abs"] <= 1e-3
    assert art.quantization["rotary_permuted"] == (text.model_type in ("llama", "mistral"))
    import onnx  # each layer's Q and K rotated by onnxruntime's kernel (prefill_attention.py), no K reorder

    nodes = onnx.load(str(tmp_path / "llm_prefill.onnx"), load_external_data=False).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("RotaryEmbedding") == 2 * text.config.num_hidden_layers and "Neg" not in ops
    # the rotary positions once per angle table (the full one, the last row's), not per layer; no copy
    # of the cached rows (a one-input Concat) and no shape arithmetic (Concat) before each Reshape
    # the rotary's row indices computed once (no Range per kernel call), the cached rows not copied (no
    # one-input Concat), and the attention's Reshapes to constant shapes (no Shape / Gather / Concat each)
    made_by = {out: n for n in nodes for out in n.output}
    reshapes = [n for n in nodes if n.op_type == "Reshape" and "self_attn" in n.name]
    assert "Range" not in ops and not [n.name for n in nodes if n.op_type == "Concat" and len(n.input) == 1]
    assert reshapes and all(made_by[n.input[1]].op_type == "Constant" for n in reshapes)
    assert (MROPE_INPUT in PrefillGraph(tmp_path / "llm_prefill.onnx").session.input_names) == (kind in ("qwen2-vl", "qwen2.5-vl"))


@pytest.mark.parametrize("kind", sorted(DECLINED))
def test_other_text_models_decline_the_prefill_graph_with_the_reason(workdir, kind, tmp_path):
    from edgebridge.errors import UnsupportedModelError
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.prefill import export_prefill
    from edgebridge.exporters.quantize import DEFAULT_BUDGET

    model_dir = tiny_model(workdir, kind)
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    with pytest.raises(UnsupportedModelError, match=DECLINED[kind]):
        export_prefill(family.text_model(loaded), family.causal_lm(loaded), tmp_path / "llm.gguf",
                       tmp_path / "llm_prefill.onnx", "f32", DEFAULT_BUDGET["llm"])


@pytest.fixture(scope="module")
def qwen25_vl_text(workdir, tmp_path_factory):
    """The tiny Qwen2.5-VL's text model, its HF reference and an f32 GGUF of it."""
    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.gguf.writer import write_gguf

    model_dir = tiny_model(workdir, "qwen2.5-vl")
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    text = family.text_model(loaded)
    gguf = tmp_path_factory.mktemp("qwen-text") / "llm.gguf"
    write_gguf(text, gguf, "f32")
    return text, family.causal_lm(loaded), gguf


def test_each_int8_scheme_drifts_less_than_the_last_and_the_export_falls_back_in_order(qwen25_vl_text, tmp_path):
    """Per-token activations hand over closer to llama.cpp's own prefill than per-tensor ones, and 8-bit
    unsigned weights closer than the 7-bit ones; with a budget between two schemes, ``--prefill int8`` keeps
    the first that passes and records the verdicts it passed over; below all, the export refuses with the
    last scheme's figure; above all, per-tensor is kept."""
    from edgebridge.errors import ParityError
    from edgebridge.exporters.prefill import draft_prefill, export_prefill, measure_handoff

    text, reference, gguf = qwen25_vl_text
    kl, size = {}, {}
    for scheme in ("per-tensor", "per-token", "per-token-u8"):
        (tmp_path / scheme).mkdir()
        draft = draft_prefill(text, reference, tmp_path / scheme / "llm_prefill.onnx", "int8", scheme=scheme)
        assert draft.scheme == scheme and draft.activations == scheme.removesuffix("-u8")
        assert ("MatMulIntegerToFloat" in _op_types(draft.path)) == (scheme != "per-tensor")
        low, high = _weight_range(draft.path)  # uint8 around 128 uses all 8 bits; int8 stays within 7
        assert (low, high) == (1, 255) if scheme == "per-token-u8" else -64 <= low < 0 < high <= 64
        kl[scheme], size[scheme] = measure_handoff(draft.graph, gguf, draft.cases)[0]["kl_mean"], draft.bytes
        draft.discard()
    assert 0 < kl["per-token-u8"] < kl["per-token"] < kl["per-tensor"], kl
    dst = tmp_path / "ladder" / "llm_prefill.onnx"
    dst.parent.mkdir()
    between = {"kl_mean": (kl["per-token"] * kl["per-tensor"]) ** 0.5}
    art = export_prefill(text, reference, gguf, dst, "int8", between)
    assert art.quantization["scheme"] == "per-token" and art.parity.passed
    assert list(art.quantization["refused"]) == ["per-tensor"] and "kl_mean" in art.quantization["refused"]["per-tensor"]
    assert art.parity.metrics["kl_mean"] <= between["kl_mean"] and "MatMulIntegerToFloat" in _op_types(dst)
    last = {"kl_mean": (kl["per-token-u8"] * kl["per-token"]) ** 0.5}
    art = export_prefill(text, reference, gguf, dst, "int8", last)
    assert art.quantization["scheme"] == "per-token-u8" and list(art.quantization["refused"]) == ["per-tensor", "per-token"]
    with pytest.raises(ParityError, match="per-token activations.*as 8-bit unsigned.*kl_mean"):
        export_prefill(text, reference, gguf, dst, "int8", {"kl_mean": kl["per-token-u8"] / 2})
    loose = export_prefill(text, reference, gguf, dst, "int8", {"kl_mean": kl["per-tensor"] * 10})
    assert loose.quantization["scheme"] == "per-tensor" and "refused" not in loose.quantization
    assert loose.quantization["bytes"] == size["per-tensor"]  # written over the other files, nothing appended


def _weight_range(graph) -> tuple[int, int]:
    """The smallest and largest integer weight in an int8 graph (int8 or uint8 initializers)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    ints = [numpy_helper.to_array(t).astype(np.int16) for t in model.graph.initializer
            if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) == 2]
    return min(int(w.min()) for w in ints), max(int(w.max()) for w in ints)


def test_the_int8_prefill_graph_is_written_without_library_warnings(workdir, tmp_path, caplog):
    """An export prints its own progress only: writing a llama's graph, torch warned of dynamic axes named
    for inputs the graph lacks (M-RoPE's positions), and onnxruntime's quantize_dynamic logged advice on the
    root logger (shown as ``WARNING:root:...``) between the progress lines."""
    import logging
    import warnings

    from torch.jit import TracerWarning

    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.prefill import draft_prefill

    model_dir = tiny_llava(workdir, ("clip", "llama"))
    family = family_for(model_dir)
    loaded = family.load(model_dir)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as shown:
        # torch hides its tracer's notes from its own modules with a filter added when it is imported; when
        # another test imported it first, pytest's per-test warning capture dropped that filter
        TracerWarning.ignore_lib_warnings()
        draft = draft_prefill(family.text_model(loaded), family.causal_lm(loaded), tmp_path / "llm_prefill.onnx",
                              "int8", scheme="per-tensor")
    draft.discard()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [str(w.message) for w in shown if not issubclass(w.category, DeprecationWarning)]


def _op_types(graph) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(graph), load_external_data=False).graph.node}


@pytest.mark.parametrize("kind", ["qwen2.5-vl", "llava"])
def test_gguf_weights_read_back_the_text_model_through_an_f32_gguf_and_the_quantized_ones_otherwise(
        workdir, kind, tmp_path):
    """``gguf_weights`` maps every matrix back to transformers' name and layout (llama's rotary rows
    un-interleaved): through an f32 GGUF the text model's own tensors, exactly; through q8_0 the
    quantized ones (close, not equal), named by their type; vectors untouched."""
    import torch

    from edgebridge.exporters.families import family_for
    from edgebridge.exporters.gguf.weights import gguf_weights
    from edgebridge.exporters.gguf.writer import write_gguf
    from edgebridge.exporters.quantize.gguf_quant import quantize_gguf

    model_dir = tiny_model(workdir, kind) if kind != "llava" else tiny_llava(workdir, ("clip", "llama"))
    text = family_for(model_dir).text_model(family_for(model_dir).load(model_dir))
    f32, q8 = tmp_path / "f32.gguf", tmp_path / "q8_0.gguf"
    write_gguf(text, f32, "f32")
    quantize_gguf(f32, q8, "q8_0")
    same, kind_f32 = gguf_weights(text, f32)
    near, kind_q8 = gguf_weights(text, q8)
    assert (kind_f32, kind_q8) == ("f32", "q8_0")
    matrices = [k for k, t in text.state_dict.items() if t.ndim >= 2]
    assert any(".self_attn.q_proj." in k for k in matrices)
    for name, want in text.state_dict.items():
        want = want.to(torch.float32)
        torch.testing.assert_close(same.state_dict[name], want, rtol=0, atol=0)
        if name in matrices:
            diff = (near.state_dict[name] - want).abs().max().item()
            assert 0 < diff <= want.abs().max().item() / 100, (name, diff)
        else:
            assert near.state_dict[name] is text.state_dict[name]


def test_an_int8_graph_from_the_ggufs_own_weights_hands_over_closer(qwen25_vl_text, tmp_path):
    """Into a q8_0 GGUF, the graph written from its dequantized weights drifts less from llama.cpp's own
    prefill than the one from the float weights (one rounding instead of two), and says so in its method."""
    from edgebridge.exporters.prefill import draft_prefill, measure_handoff
    from edgebridge.exporters.quantize.gguf_quant import quantize_gguf

    text, reference, f32 = qwen25_vl_text
    q8 = tmp_path / "q8_0.gguf"
    quantize_gguf(f32, q8, "q8_0")
    from edgebridge.exporters.gguf.weights import gguf_weights

    kl = {}
    for label, source in (("float", text), ("q8_0", gguf_weights(text, q8)[0])):
        draft = draft_prefill(source, reference, tmp_path / f"{label}.onnx", "int8", weights=label)
        assert draft.method["weights"] == label and label in draft.label
        kl[label] = measure_handoff(draft.graph, q8, draft.cases)[0]["kl_mean"]
        draft.discard()
    assert 0 < kl["q8_0"] < kl["float"], kl
