"""``--profile-target``: the export measures every candidate precision and keeps the best one within the
drift and memory budgets, recording why; what the user fixed stays fixed.

The selection rule is checked on the recorded trials of real exports (the timings themselves are this
machine's, so the tests never assume which precision wins), and on a few hand-made trials for the rule's
corners (ties, the memory budget)."""

from __future__ import annotations

import pytest

from edgebridge.bundle import Bundle
from edgebridge.errors import ExportError
from edgebridge.exporters.api import export_bundle
from edgebridge.exporters.quantize import TIE, QuantPlan, Trial, choose, target_defaults
from edgebridge.exporters.quantize.targets import ANSWER_TOKENS, PROMPT_POSITIONS
from tests.conftest import run_cli, tiny_llava

ORDER = {"onnx": ["int8-static", "int8", "f16", "f32"], "openvino": ["int4", "int8-static", "int8", "f16", "f32"],
         "gguf": ["q4_0", "q4_k_m", "q5_k_m", "q6_k", "q8_0-ffn-q6_k", "q8_0", "f16", "f32"]}


def _trial(precision: str, size: int, ms: float, passed: bool = True) -> Trial:
    return Trial(precision, size, {"latency_ms": ms}, {}, {}, passed, "within budget" if passed else "drift")


def _plan(target: str | None, max_memory_mb: float | None = None) -> QuantPlan:
    return QuantPlan(encoder={"onnx": "auto"}, llm="auto", target=target, max_memory_mb=max_memory_mb)


def _choose(trials: list[Trial], plan: QuantPlan, used: int = 0):
    by_name = {t.precision: t for t in trials}
    return choose("enc ({precision})", list(by_name), by_name.__getitem__, None, plan, "encoder", used)


def test_latency_keeps_the_fastest_within_budget_and_says_why():
    trials = [_trial("int8", 100, 9.0, passed=False), _trial("f16", 200, 5.0), _trial("f32", 400, 3.0)]
    kept, tried, selection = _choose(trials, _plan("latency"))
    assert kept.precision == "f32" and len(tried) == 3
    assert selection["within_budget"] == {"f16": 5.0, "f32": 3.0} and selection["target"] == "latency"
    assert selection["reason"].startswith("f32: latency_ms 3") and "2 of 3 candidates" in selection["reason"]


def test_timings_within_the_tie_margin_keep_the_smaller():
    trials = [_trial("f16", 200, 3.0 * (1 + TIE / 2)), _trial("f32", 400, 3.0)]
    kept, _, selection = _choose(trials, _plan("latency"))
    assert kept.precision == "f16" and "so the smallest of 2" in selection["reason"]


def test_memory_budget_refuses_what_does_not_fit_with_the_reason():
    trials = [_trial("f16", 3 * 2**20, 5.0), _trial("f32", 6 * 2**20, 3.0)]
    kept, tried, selection = _choose(trials, _plan("latency", max_memory_mb=8), used=4 * 2**20)
    assert kept.precision == "f16" and "memory budgets" in selection["reason"]
    assert not tried[1].passed and tried[1].verdict == "weights 6.0 MB > 4.0 MB left of --max-memory"
    with pytest.raises(ExportError, match="left of --max-memory") as info:
        _choose([_trial("f32", 6 * 2**20, 3.0)], _plan(None, max_memory_mb=5))
    assert "--max-memory" in info.value.hint


def test_latency_ranks_the_side_by_side_timings_of_those_within_budget():
    trials = [_trial("int8", 100, 9.0, passed=False), _trial("f16", 200, 5.0), _trial("f32", 400, 3.0)]
    seen = []

    def retime(passing):  # the second, side-by-side timing finds f16 the faster
        seen.append([t.precision for t in passing])
        for t in passing:
            t.speed = {"latency_ms": {"f16": 2.0, "f32": 3.0}[t.precision]}
        return "timed again"

    by_name = {t.precision: t for t in trials}
    kept, _, selection = choose("enc ({precision})", list(by_name), by_name.__getitem__, None, _plan("latency"),
                                "encoder", retime=retime)
    assert seen == [["f16", "f32"]] and kept.precision == "f16" and selection["timing"] == "timed again"
    assert selection["within_budget"] == {"f16": 2.0, "f32": 3.0}
    _, _, size = choose("enc ({precision})", list(by_name), by_name.__getitem__, None, _plan("size"), "encoder",
                        retime=retime)
    assert len(seen) == 1 and "timing" not in size  # only a latency target ranks by time


def test_without_a_target_the_first_within_budget_is_kept():
    trials = [_trial("int8", 100, 9.0), _trial("f32", 400, 3.0)]
    kept, tried, selection = _choose(trials, _plan(None))
    assert kept.precision == "int8" and len(tried) == 1 and selection is None


@pytest.mark.parametrize("spec, dtype_given, want", [
    (None, False, {"encoder": {"onnx": "auto", "openvino": "auto"}, "llm": "auto"}),
    ("llm=q8_0", False, {"encoder": {"onnx": "auto", "openvino": "auto"}, "llm": "q8_0"}),
    ("encoder.onnx=int8", True, {"encoder": {"onnx": "int8", "openvino": "auto"}, "llm": "f16"}),
    ("encoder=f32", False, {"encoder": {"onnx": "f32", "openvino": "f32"}, "llm": "auto"}),
])
def test_a_target_chooses_only_what_the_user_left_open(spec, dtype_given, want):
    from edgebridge.exporters.quantize import parse_quantize

    parsed = parse_quantize(spec, ("onnx", "openvino"), "f16")
    assert target_defaults(parsed, spec, ("onnx", "openvino"), dtype_given) == want


@pytest.mark.slow
def test_cli_export_defaults_to_latency_and_records_every_measured_candidate(workdir, tmp_path):
    model = tiny_llava(workdir, ("clip", "llama"))
    proc = run_cli("export", str(model), "-o", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the best of the" in proc.stdout and "measured on this machine" in proc.stdout
    assert "llama.cpp settings: flash attention" in proc.stdout
    assert "vision_encoder engine (--backend auto): " in proc.stdout
    manifest = Bundle.open(tmp_path / "b").manifest
    for comp in manifest.components.values():
        for fmt, art in comp.artifacts.items():
            if comp.role == "llm" and fmt == "prefill":
                continue  # not searched: chosen with the GGUF type
            q = art.quantization
            assert [t["precision"] for t in q["trials"]] == ORDER[fmt]  # every candidate measured
            passing = {t["precision"]: t for t in q["trials"] if t["passed"]}
            values = q["selection"]["within_budget"]
            assert set(values) == set(passing) and art.precision in passing
            # more than one within budget: timed again side by side, and the recorded speeds are those medians
            assert ("alternating rounds" in q["selection"].get("timing", "")) == (len(passing) > 1)
            if fmt == "gguf":  # chosen together with the prefill engine: checked below
                _check_joint_choice(manifest)
                continue
            best = min(values.values())  # the rule, on the recorded figures
            tied = [p for p in values if values[p] <= best * (1 + TIE)]
            assert art.precision == min(tied, key=lambda p: (passing[p]["bytes"], values[p]))


def _check_joint_choice(manifest) -> None:
    """The GGUF type and prefill engine follow the rule on the export's own figures: each type's answer
    time with llama.cpp's prefill (prompt + answer at its measured rates), with the graph that minus the
    graph's measured saving per position (at least the decode); the best pair kept, within the tie margin the fewest bytes."""
    gguf = manifest.llm.artifacts["gguf"]
    q, choice = gguf.quantization, gguf.details["prefill_choice"]
    passing = {t["precision"]: t for t in q["trials"] if t["passed"]}
    alone, with_graph = q["selection"]["within_budget"], q["selection"]["with_prefill_graph"]
    for p, ms in alone.items():
        s = passing[p]["speed"]
        answer = 1000 * (PROMPT_POSITIONS / s["prefill_tokens_per_s"] + ANSWER_TOKENS / s["decode_tokens_per_s"])
        assert ms == pytest.approx(answer, rel=1e-3)
    assert set(with_graph) <= set(choice["gated"]) <= set(passing)
    for p, ms in with_graph.items():
        g = choice["gated"][p]
        saved = PROMPT_POSITIONS * (g["llamacpp_prefill_ms"] - g["prefill_ms"]) / g["positions"]
        decode = 1000 * ANSWER_TOKENS / passing[p]["speed"]["decode_tokens_per_s"]
        assert ms == pytest.approx(max(alone[p] - saved, decode), abs=1e-2)
    options = {(p, False): (ms, passing[p]["bytes"]) for p, ms in alone.items()}
    options |= {(p, True): (ms, passing[p]["bytes"] + choice["gated"][p]["bytes"]) for p, ms in with_graph.items()}
    best = min(ms for ms, _ in options.values())
    tied = [k for k, (ms, _) in options.items() if ms <= best * (1 + TIE)]
    assert (gguf.precision, choice["kept"]) == min(tied, key=lambda k: (options[k][1], options[k][0]))
    assert choice["kept"] == ("prefill" in manifest.llm.artifacts) and choice["gguf"] == gguf.precision
    for p, g in choice["gated"].items():  # each graph was written from its own GGUF type's weights
        assert g["weights"] == p, (p, g)
    if choice["kept"]:
        assert manifest.llm.artifacts["prefill"].quantization["weights"] == gguf.precision


@pytest.mark.slow
def test_size_target_explicit_flags_and_memory_budget(workdir, tmp_path):
    model = tiny_llava(workdir, ("clip", "llama"))
    manifest = export_bundle(model, tmp_path / "size", encoder_formats=["onnx"], profile_target="size",
                             quantize="llm=f16")
    enc, llm = manifest.components["vision_encoder"].artifacts["onnx"], manifest.llm.artifacts["gguf"]
    passing = [t for t in enc.quantization["trials"] if t["passed"]]
    assert next(t["bytes"] for t in passing if t["precision"] == enc.precision) == min(t["bytes"] for t in passing)
    assert llm.precision == "f16" and "trials" not in (llm.quantization or {})  # fixed by the user: not searched
    gguf_bytes = (tmp_path / "size" / "llm.gguf").stat().st_size
    with pytest.raises(ExportError, match="--max-memory"):
        export_bundle(model, tmp_path / "tight", encoder_formats=["onnx"], profile_target="size",
                      quantize="llm=f16", max_memory_mb=(gguf_bytes / 2**20) * 0.9)
    assert not (tmp_path / "tight").exists()
    proc = run_cli("export", str(model), "-o", str(tmp_path / "none"), "--encoder-format", "onnx",
                   "--profile-target", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = Bundle.open(tmp_path / "none").manifest
    assert plain.components["vision_encoder"].artifacts["onnx"].precision == "f32"
    assert plain.llm.artifacts["gguf"].precision == "f16"
    bad = run_cli("export", str(model), "-o", str(tmp_path / "bad"), "--profile-target", "fastest")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


LIFTED = {"encoder": {"cosine_min": 0.0}, "llm": {"top1_agreement": 0.0, "kl_mean": 1e9}}


@pytest.mark.slow
def test_latency_target_decides_the_prefill_engine_and_says_why(workdir, tmp_path):
    """Without --prefill the int8 graph is written, gated and timed; kept only when faster and within the memory
    budget. Under a budget only the f32 GGUF meets the tiny llama's int8 graph is refused (with the figure);
    with the budget lifted every hand-over passes, and the record must agree with its own measurements either
    way: chosen together with the GGUF type when that is searched, for the GGUF as it is when it is fixed."""
    model = tiny_llava(workdir, ("clip", "llama"))
    plain = export_bundle(model, tmp_path / "a", encoder_formats=["onnx"], profile_target="latency",
                          quantize="encoder=f32")
    _check_joint_choice(plain)
    assert plain.llm.artifacts["gguf"].details["prefill_choice"]["kept"] == (tmp_path / "a" / "llm_prefill.onnx").exists()
    # a budget only the f32 GGUF meets (its own logits: KL 0): the int8 graph's hand-over is refused, with the figure
    tight = export_bundle(model, tmp_path / "tight", encoder_formats=["onnx"], profile_target="latency",
                          quantize="encoder=f32", max_drift={"encoder": {"cosine_min": 0.99}, "llm": {"kl_mean": 1e-9}})
    choice = tight.llm.artifacts["gguf"].details["prefill_choice"]
    assert tight.llm.artifacts["gguf"].precision == "f32" and not choice["kept"] and not choice["gated"]
    assert "kl_mean" in choice["graph_verdicts"]["f32"] and "kl_mean" in choice["reason"], choice
    assert "prefill" not in tight.llm.artifacts and not (tmp_path / "tight" / "llm_prefill.onnx").exists()
    lifted = export_bundle(model, tmp_path / "lifted", encoder_formats=["onnx"], profile_target="latency",
                           quantize="encoder=f32", max_drift=LIFTED)  # every hand-over passes: a real choice
    choice = lifted.llm.artifacts["gguf"].details["prefill_choice"]
    assert choice["gated"] and set(lifted.llm.artifacts["gguf"].quantization["selection"]["with_prefill_graph"])
    _check_joint_choice(lifted)
    assert choice["kept"] == (tmp_path / "lifted" / "llm_prefill.onnx").exists()
    assert not list((tmp_path / "lifted").glob("llm_prefill.*.onnx*"))  # the other types' graphs deleted
    fixed = {"encoder_formats": ["onnx"], "profile_target": "latency", "quantize": "encoder=f32,llm=f16",
             "max_drift": LIFTED}  # fixed precisions: the same weights, so the same bytes, in both exports
    free = export_bundle(model, tmp_path / "b", **fixed)
    weights = sum((tmp_path / "b" / f).stat().st_size
                  for f in ("vision_encoder.onnx", "vision_encoder.onnx.data", "llm.gguf"))
    tight = export_bundle(model, tmp_path / "c", **fixed, max_memory_mb=weights / 2**20 + 0.01)
    for name, manifest, budgeted in (("b", free, False), ("c", tight, True)):
        choice = manifest.llm.artifacts["gguf"].details["prefill_choice"]
        faster = choice["graph_ms"] * (1 + TIE) < choice["llamacpp_ms"]
        assert choice["kept"] == (faster and not budgeted), choice
        on_disk = (tmp_path / name / "llm_prefill.onnx").exists()
        assert choice["kept"] == ("prefill" in manifest.llm.artifacts) == on_disk
        assert ("--max-memory" in choice["reason"]) == (faster and budgeted)
        assert ("as fast or faster" in choice["reason"]) == (not faster)


def test_latency_target_records_flash_attention_by_measurement_and_the_runtime_applies_it(workdir, tmp_path,
                                                                                          monkeypatch):
    """Decode is timed with flash attention off and on after each CONTEXTS-position prompt, in pairs; the
    record keeps it on only when the median paired ratio is above 1 at every context, and a pipeline opened
    without its own llama settings runs with the recorded choice (with them, with theirs); the prefill
    graph's values follow the recorded choice."""
    from edgebridge import Pipeline
    from edgebridge.exporters import runtime_choice
    from edgebridge.runtimes.llamacpp import LlamaSettings

    model = tiny_llava(workdir, ("clip", "llama"))
    manifest = export_bundle(model, tmp_path / "a", encoder_formats=["onnx"], profile_target="latency",
                             quantize="encoder=f32,llm=f16", prefill="none")  # the graph's choice: tested above
    runtime = manifest.llm.artifacts["gguf"].details["runtime"]
    measured = runtime["decode_tokens_per_s"]
    assert sorted(measured, key=int) == [str(n) for n in runtime_choice.CONTEXTS]
    assert all(m["on"] > 0 and m["off"] > 0 and m["on_vs_off"] > 0 for m in measured.values())
    assert runtime["flash_attn"] == all(m["on_vs_off"] > 1 for m in measured.values())
    for recorded in (True, False):  # both ways through the runtime, whatever this machine measured
        bundle = tmp_path / f"flash-{recorded}"
        monkeypatch.setattr("edgebridge.exporters.api.choose_runtime", lambda _g, r=recorded: {"flash_attn": r})
        written = export_bundle(model, bundle, encoder_formats=["onnx"], profile_target="latency",
                                quantize="encoder=f32,llm=f16", prefill="fp32")
        # the prefill graph's values in the layout llama.cpp keeps with that setting (copied straight)
        values = "per position" if recorded else "per channel"
        assert written.llm.artifacts["prefill"].quantization["values"] == values
        with Pipeline.from_bundle(bundle) as pipe:
            assert pipe.llm.report.details["flash_attn"] is recorded
            assert pipe.llm.handoff.graph.v_per_position is recorded
        with Pipeline.from_bundle(bundle, llm_settings=LlamaSettings(flash_attn=not recorded)) as pipe:
            assert pipe.llm.report.details["flash_attn"] is (not recorded)
    plain = export_bundle(model, tmp_path / "none", encoder_formats=["onnx"], profile_target="none")
    assert "runtime" not in plain.llm.artifacts["gguf"].details


@pytest.mark.slow
def test_latency_target_keeps_llamacpp_for_text_models_the_graph_declines(workdir, tmp_path):
    from tests.conftest import tiny_model

    manifest = export_bundle(tiny_model(workdir, "qwen3-vl"), tmp_path / "q", encoder_formats=["onnx"],
                             profile_target="latency", quantize="encoder=f32,llm=f16")
    choice = manifest.llm.artifacts["gguf"].details["prefill_choice"]
    assert choice == {"kept": False, "engine": "llama.cpp", "reason": choice["reason"]}
    assert "deepstack" in choice["reason"]


def test_latency_target_records_the_faster_encoder_engine_and_auto_runs_it(workdir, tmp_path, monkeypatch):
    """Both formats' kept artifacts are timed side by side; the record names the faster engine when it is faster
    by more than the tie margin (else onnxruntime), and ``auto`` (the default) runs the recorded engine, an
    explicit backend its own, a bundle without a record onnxruntime."""
    from edgebridge import Pipeline
    from edgebridge.exporters import engine_choice

    model = tiny_llava(workdir, ("clip", "llama"))
    # prefill "none": the prefill graph's choice (tested above) is not this test's subject, and it took
    # most of its six exports' time (120 -> 65 s on the 2-core VM)
    fixed = {"profile_target": "latency", "quantize": "encoder=f32,llm=f16", "prefill": "none"}
    manifest = export_bundle(model, tmp_path / "a", **fixed)
    record = manifest.components["vision_encoder"].engine_choice
    latency = record["latency_ms"]
    assert set(latency) == {"onnxruntime", "openvino"} and engine_choice.ROUNDS >= 3
    fastest = min(latency, key=latency.get)
    clear = all(ms > latency[fastest] * (1 + TIE) for b, ms in latency.items() if b != fastest)
    assert record["backend"] == (fastest if clear else "onnxruntime")
    for recorded in ("openvino", "onnxruntime"):  # both ways through the runtime, whatever this machine measured
        bundle = tmp_path / f"engine-{recorded}"
        monkeypatch.setattr("edgebridge.exporters.encoder_artifacts.choose_engine",
                            lambda *_a, r=recorded: {"backend": r, "latency_ms": {}, "reason": "test"})
        export_bundle(model, bundle, **fixed)
        other = "onnxruntime" if recorded == "openvino" else "openvino"
        for asked, runs in (("auto", recorded), (other, other)):
            with Pipeline.from_bundle(bundle, encoder_backend=asked) as pipe:
                assert pipe.stages["image"].session.backend == runs
                result = pipe.generate("USER: <image>\nWhat is this? ASSISTANT:", images=[_photo()],
                                       max_new_tokens=2)
                assert result.devices["vision_encoder"]["engine"] == runs
    plain = export_bundle(model, tmp_path / "none", profile_target="none")  # (no target: no prefill choice)
    assert plain.components["vision_encoder"].engine_choice is None
    with Pipeline.from_bundle(tmp_path / "none") as pipe:
        assert pipe.stages["image"].session.backend == "onnxruntime"
    ov_only = export_bundle(model, tmp_path / "ov", encoder_formats=["openvino"], **fixed)
    assert ov_only.components["vision_encoder"].engine_choice is None  # nothing to choose between
    with Pipeline.from_bundle(tmp_path / "ov") as pipe:
        assert pipe.stages["image"].session.backend == "openvino"


def _photo():
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.arange(64 * 64 * 3) % 251).astype("uint8").reshape(64, 64, 3))
