"""The LLM to GGUF, with its parity gates and quantization.

1. Write an f32 GGUF and hold it to transformers with strict llama.cpp settings (no flash
   attention, f32 KV cache) on seeded inputs: token ids alone, and tokens / injected embeddings /
   tokens in one sequence (how image embeddings reach the LLM). max-abs of logits <= 1e-3.
2. Check the GGUF's tokenizer (llama.cpp's) against the HF tokenizer on a fixed text set:
   every id must match.
3. For any other precision (f16, q8_0 ... q4_0, or ``auto``), measure what users get: next-token
   distributions at every position of a reference text set under the runtime's default settings,
   against the f32 GGUF under the same settings (top-1 agreement, KL), held to the drift budget.

``import_gguf`` takes a GGUF the user already has instead: validated in Python (architecture,
tensors, embedding width) before llama.cpp sees it, then held to the same tokenizer check and to
the drift budget against the HF text model.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgebridge.errors import ExportError, ParityError
from edgebridge.exporters.families.base import Family, Loaded
from edgebridge.exporters.gguf.archs import arch_spec
from edgebridge.exporters.gguf.writer import TextModel, write_gguf
from edgebridge.exporters.quantize import TIMING_ROUNDS, QuantPlan, Trial, check_memory, choose, verdict
from edgebridge.exporters.quantize.gguf_quant import quantize_gguf, tensor_types
from edgebridge.exporters.quantize.targets import ANSWER_TOKENS
from edgebridge.manifest import Artifact, Parity, PromptLayout
from edgebridge.parity import enforce, logit_metrics, violations
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from edgebridge.runtimes.llamacpp.gguf_check import check_expected, read_gguf_info
from edgebridge.timing import alternating_medians

STRICT_TOLERANCE = {"max_abs": 1e-3}
N_TOKENS = 24
N_EMBEDS = 10
SEED = 4321
N_CTX = 256
# Greedy steps timed per GGUF candidate: the answer a latency target ranks by. With 16, the first steps after
# the prefill (slower by up to 50% on this machine) weighed too much in the rate.
DECODE_STEPS = ANSWER_TOKENS

TOKENIZER_TEXTS = [
    "Hello world",
    "What is in this image? Describe it in detail.",
    " leading space and  double  spaces\tand a tab",
    "Numbers: 1, 22, 333, 4444, 3.14159 and 2024-11-26.",
    "Line one\nLine two\n\nLine four\r\n",
    "Unicode: café, naïve, Straße, 東京, emoji 🚀!",
    "don't, I'm, they're, we've, she'll, he'd, IT'S",
    "<|im_start|>user\nWhat colour is the cat?<|im_end|>\n<|im_start|>assistant\n",
    "symbols #@%&()[]{} <tag> </tag> a+b=c",
]

# The fixed reference text set for LLM drift: next-token distributions at every position.
REFERENCE_TEXTS = [
    "The quick brown fox jumps over the lazy dog. A photograph shows a cat sitting on a red chair next to "
    "a window, with the afternoon sun falling across the floor.",
    "Question: what is the capital of France? Answer: the capital of France is Paris, a city on the Seine.",
    "Edge devices such as phones, cameras and cars run small language models so that answers arrive quickly "
    "and private data never leaves the device. In 2024 there were 3 new chips and 12 new boards.",
    "User: describe the image in one sentence.\nAssistant: a rocket lifts off from the launch pad into a "
    "clear blue sky, leaving a trail of white smoke behind it.",
]


def text_logits(lm: torch.nn.Module, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> np.ndarray:
    """The HF model's logits ``[T, V]`` for one sequence of ids or embeddings (no media)."""
    with torch.no_grad():
        out = lm(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
    return out.logits[0].float().numpy()


def _reference_cases(lm: torch.nn.Module, vocab_rows: int) -> tuple[list[Any], np.ndarray]:
    """Seeded sequences and HF logits: ids only; ids + embeddings + ids."""
    gen = torch.Generator().manual_seed(SEED)
    embed = lm.get_input_embeddings()
    ids_a = torch.randint(0, vocab_rows, (N_TOKENS,), generator=gen)
    ids_b = torch.randint(0, vocab_rows, (6,), generator=gen)
    ids_c = torch.randint(0, vocab_rows, (6,), generator=gen)
    scale = float(embed.weight.detach().std())
    fake_media = torch.randn((N_EMBEDS, embed.weight.shape[1]), generator=gen) * scale
    with torch.no_grad():
        mixed = torch.cat([embed(ids_b), fake_media, embed(ids_c)])
    ref = np.concatenate([
        text_logits(lm, input_ids=ids_a[None]),
        text_logits(lm, inputs_embeds=mixed[None]),
    ])
    segments = [
        [("tokens", ids_a.numpy())],
        [("tokens", ids_b.numpy()), ("embeds", fake_media.numpy()), ("tokens", ids_c.numpy())],
    ]
    return segments, ref


def run_llamacpp(llm: LlamaCppLLM, cases: list[list[tuple[str, np.ndarray]]]) -> np.ndarray:
    """All-position logits of each case (a list of token / embedding segments), concatenated. Embeddings
    narrower than the LLM's input rows (deepstack slices) get zero slices: what text tokens carry."""
    rows = []
    for case in cases:
        llm.reset()
        for kind, data in case:
            if kind == "tokens":
                rows.append(llm.eval_tokens(np.asarray(data).tolist(), logits="all"))
            else:
                data = np.pad(data, ((0, 0), (0, llm.n_embd - data.shape[1])))
                rows.append(llm.eval_embeddings(data, logits="all"))
    return np.concatenate(rows)


def tokenizer_mismatches(llm: LlamaCppLLM, tokenizer: Any, add_bos: bool) -> list[str]:
    bad = []
    for text in TOKENIZER_TEXTS:
        ref = tokenizer(text, add_special_tokens=True)["input_ids"]
        if list(ref) != llm.tokenize(text, add_bos=add_bos):
            bad.append(text)
    return bad


def _tokenizer_of(loaded: Loaded) -> Any:
    return loaded.processor.tokenizer if hasattr(loaded.processor, "tokenizer") else loaded.processor


def _check_tokenizer(llm: LlamaCppLLM, loaded: Loaded, layout: PromptLayout, pre: str) -> None:
    """llama.cpp's tokenizer against the HF tokenizer, each adding BOS as the HF tokenizer does (a processor
    that writes BOS itself, as PaliGemma's, has a tokenizer that adds none)."""
    tokenizer = _tokenizer_of(loaded)
    bos = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]
    bad = tokenizer_mismatches(llm, tokenizer, adds_bos)
    if bad:
        raise ParityError(
            "llm tokenizer", "texts tokenized differently", len(bad), 0,
            hint=f"llama.cpp's '{pre}' tokenizer disagrees with the HF tokenizer on: {bad[0]!r}.",
        )


def _measure(path: Path, settings: LlamaSettings, cases, reference: np.ndarray, tolerance: dict[str, float],
             label: str, reference_name: str = "pytorch") -> Parity:
    with LlamaCppLLM(path, settings) as llm:
        metrics = logit_metrics(run_llamacpp(llm, cases), reference)
        report = llm.report.as_dict()
    return Parity(reference=reference_name, metrics=metrics, tolerance=dict(tolerance),
                  passed=not violations(metrics, tolerance), settings={"llama_settings": label, **report},
                  samples=int(reference.shape[0]))


def reference_text_cases(path: Path, add_bos: bool) -> list[list[tuple[str, np.ndarray]]]:
    """The reference texts tokenized by the GGUF's own tokenizer (one case per text)."""
    with LlamaCppLLM(path, LlamaSettings(n_ctx=N_CTX)) as llm:
        return [[("tokens", np.asarray(llm.tokenize(t, add_bos=add_bos)[: N_CTX - 1]))] for t in REFERENCE_TEXTS]


def _speed(path: Path, cases) -> dict[str, float]:
    """Prefill tokens/s over the reference texts and greedy decode tokens/s (``DECODE_STEPS``), default settings."""
    with LlamaCppLLM(path, LlamaSettings(n_ctx=N_CTX)) as llm:
        tokens = [int(t) for case in cases for kind, data in case for t in data][: N_CTX - DECODE_STEPS]
        llm.eval_tokens(tokens, logits="none")  # warm-up
        llm.reset()
        start = time.perf_counter()
        logits = llm.eval_tokens(tokens)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(DECODE_STEPS):
            logits = llm.eval_tokens([int(np.argmax(logits))])
        decode = time.perf_counter() - start
    return {"prefill_tokens_per_s": round(len(tokens) / prefill, 1),
            "decode_tokens_per_s": round(DECODE_STEPS / decode, 1)}


@dataclass
class GGUFCandidate:
    """One GGUF type written and measured by the search; its file lives until ``export_llm`` returns."""

    trial: Trial
    path: Path
    parity: Parity
    method: dict[str, Any]


# (the search's pick, every candidate within the budgets, its selection record) -> (the one to keep, its
# record): a profile target's second look at the search, e.g. the latency target's joint choice with the
# prefill engine
Pairing = Callable[[GGUFCandidate, list[GGUFCandidate], dict[str, Any]], tuple[GGUFCandidate, dict[str, Any]]]


def export_llm(family: Family, loaded: Loaded, layout: PromptLayout, out_path: Path, plan: QuantPlan, *,
               step: Callable[[str], None] = lambda _: None, used_bytes: int = 0,
               pairing: Pairing | None = None, text: TextModel | None = None) -> Artifact:
    """Write the gated LLM GGUF at ``out_path`` at the plan's precision (or the one ``auto`` picks).
    ``pairing``: when a profile target searched several types, it has the last word among those within
    the budgets; ``text``: the family's text model if the caller already built it."""
    text = text or family.text_model(loaded)
    with tempfile.TemporaryDirectory(prefix="edgebridge-gguf-") as scratch:
        f32_path = Path(scratch) / "llm-f32.gguf"
        details, strict = _write_strict_f32(family, loaded, layout, text, f32_path, step)
        details["checks"] = {"strict_f32": strict.__dict__, "tokenizer_texts_matched": len(TOKENIZER_TEXTS)}
        if plan.candidates("llm") == ["f32"]:
            check_memory(plan, "llm (GGUF f32)", f32_path.stat().st_size, used_bytes)
            shutil.copyfile(f32_path, out_path)
            return Artifact(format="gguf", files=[out_path.name], precision="f32", parity=strict,
                            details=details)
        chosen, quantization = _choose_precision(text, f32_path, layout, plan, Path(scratch), step, used_bytes,
                                                 pairing)
        shutil.copyfile(chosen.path, out_path)
    details["tensor_types"] = _type_counts(chosen.method.get("tensor_types") or tensor_types(out_path))
    artifact = Artifact(format="gguf", files=[out_path.name], precision=chosen.trial.precision,
                        parity=chosen.parity, quantization=quantization, details=details)
    return artifact


def _write_strict_f32(family: Family, loaded: Loaded, layout: PromptLayout, text: TextModel, path: Path,
                      step: Callable[[str], None]) -> tuple[dict[str, Any], Parity]:
    """The f32 GGUF, held to transformers (strict settings) and to the HF tokenizer; (writer details, parity)."""
    vocab_rows = min(len(_tokenizer_of(loaded)), text.config.vocab_size)
    cases, reference = _reference_cases(family.causal_lm(loaded), vocab_rows)
    step("writing f32 GGUF")
    details = write_gguf(text, path, "f32")
    step("checking GGUF f32 logits against transformers (strict settings)")
    tolerance, reason = strict_tolerance(text.model_type)
    strict = _measure(path, LlamaSettings.strict(n_ctx=N_CTX), cases, reference, tolerance, "strict")
    if reason:
        strict.settings["tolerance_reason"] = reason
    enforce("llm (GGUF f32, strict llama.cpp settings)", strict.metrics, tolerance)
    with LlamaCppLLM(path, LlamaSettings.strict(n_ctx=N_CTX)) as llm:
        _check_tokenizer(llm, loaded, layout, text.vocab.pre)
    return details, strict


def strict_tolerance(model_type: str) -> tuple[dict[str, float], str]:
    """The f32 gate's tolerance for this architecture and, where it is not the default, why."""
    spec = arch_spec(model_type)
    if spec.strict_max_abs == STRICT_TOLERANCE["max_abs"]:
        return dict(STRICT_TOLERANCE), ""
    return {"max_abs": spec.strict_max_abs}, spec.strict_reason


def _choose_precision(text: TextModel, f32_path: Path, layout: PromptLayout, plan: QuantPlan, scratch: Path,
                      step: Callable[[str], None], used_bytes: int = 0, pairing: Pairing | None = None
                      ) -> tuple[GGUFCandidate, dict[str, Any]]:
    """Try the plan's GGUF types against the f32 GGUF on the reference texts; (kept, its quantization record).
    ``used_bytes``: the encoders' weights, already counted against the memory budget."""
    text_cases = reference_text_cases(f32_path, layout.add_bos)
    with LlamaCppLLM(f32_path, LlamaSettings(n_ctx=N_CTX)) as llm:
        ref_logits = run_llamacpp(llm, text_cases)
    budget = plan.budget["llm"]
    tried: dict[str, GGUFCandidate] = {}

    def evaluate(precision: str) -> Trial:
        step(f"LLM {precision}: writing and measuring drift against the f32 GGUF")
        tried[precision] = _gguf_trial(text, f32_path, scratch / f"candidate-{precision}.gguf", precision, text_cases,
                                       ref_logits, budget)
        return tried[precision].trial

    def retime(passing: list[Trial]) -> str:
        speeds = alternating_medians([t.precision for t in passing], lambda p: _speed(tried[p].path, text_cases),
                                     TIMING_ROUNDS)
        for t in passing:
            t.speed = {k: round(v, 1) for k, v in speeds[t.precision].items()}
        return (f"the {len(passing)} types within budget timed again side by side: medians of {TIMING_ROUNDS} "
                "alternating rounds")

    candidates = plan.candidates("llm")
    kept, trials, selection = choose("llm (GGUF {precision})", candidates, evaluate,
                                     "Raise the budget (--max-drift llm.kl_mean=..., llm.top1_agreement=...) "
                                     "or choose a larger precision (--quantize llm=q8_0).", plan, "llm", used_bytes,
                                     retime)
    chosen = tried[kept.precision]
    if pairing is not None and selection is not None:
        chosen, selection = pairing(chosen, [tried[t.precision] for t in trials if t.passed], selection)
    kept = chosen.trial
    quantization = {
        "precision": kept.precision,
        **{k: v for k, v in chosen.method.items() if k != "tensor_type_counts"},
        "drift_reference": "f32 GGUF, default llama.cpp settings, reference text set",
        "reference_positions": int(ref_logits.shape[0]),
        "speed": kept.speed,
        "bytes": kept.bytes,
    }
    if len(candidates) > 1:
        quantization["trials"] = [t.as_dict() for t in trials]
    if selection is not None:
        quantization["selection"] = selection
    return chosen, quantization


def _gguf_trial(text: TextModel, f32_path: Path, path: Path, precision: str, cases, ref_logits: np.ndarray,
                budget: dict[str, float]) -> GGUFCandidate:
    """Write the GGUF at ``precision`` and measure its drift and speed under default settings."""
    if precision == "f32":
        shutil.copyfile(f32_path, path)
        method: dict[str, Any] = {"method": "none"}
    elif precision == "f16":
        write_gguf(text, path, "f16")
        method = {"method": "edgebridge gguf writer", "tensor_types": tensor_types(path)}
    else:
        method = quantize_gguf(f32_path, path, precision)
    parity = _measure(path, LlamaSettings(n_ctx=N_CTX), cases, ref_logits, budget, "default",
                      reference_name="gguf-f32")
    passed, why = verdict(parity.metrics, budget)
    trial = Trial(precision, path.stat().st_size, _speed(path, cases), parity.metrics, dict(budget), passed, why)
    return GGUFCandidate(trial, path, parity, method)


def _type_counts(types: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    return counts


def import_gguf(gguf_path: Path, family: Family, loaded: Loaded, layout: PromptLayout, out_path: Path,
                plan: QuantPlan, n_embd: int, *, step: Callable[[str], None] = lambda _: None) -> Artifact:
    """Use an existing GGUF as the bundle's LLM, validated and held to the drift budget vs transformers."""
    gguf_path = Path(gguf_path)
    step(f"validating {gguf_path.name}")
    info = read_gguf_info(gguf_path)  # Python only: nothing reaches llama.cpp before these checks
    check_expected(info, gguf_path, n_embd=n_embd)
    step("checking the GGUF tokenizer against the HF tokenizer")
    with LlamaCppLLM(gguf_path, LlamaSettings.strict(n_ctx=N_CTX)) as llm:
        _check_tokenizer(llm, loaded, layout, "gguf")
        cases = [[("tokens", np.asarray(llm.tokenize(t, add_bos=layout.add_bos)[: N_CTX - 1]))]
                 for t in REFERENCE_TEXTS]
    step("measuring the GGUF's drift against the HF text model")
    lm = family.causal_lm(loaded)
    reference = np.concatenate([text_logits(lm, input_ids=torch.from_numpy(c[0][1]).long()[None]) for c in cases])
    budget = plan.budget["llm"]
    parity = _measure(gguf_path, LlamaSettings(n_ctx=N_CTX), cases, reference, budget, "default")
    enforce(f"llm (existing GGUF {gguf_path.name})", parity.metrics, budget,
            hint="The GGUF does not behave like the HF folder's text model; pass the matching GGUF, or raise "
                 "the budget with --max-drift llm.kl_mean=...")
    shutil.copyfile(gguf_path, out_path)
    precision = max((k for k in info.tensor_types if k not in ("f32",)), key=info.tensor_types.get, default="f32")
    return Artifact(
        format="gguf", files=[out_path.name], precision=precision, parity=parity,
        quantization={"precision": precision, "method": "existing GGUF", "source": gguf_path.name,
                      "speed": _speed(out_path, cases)},
        details={**info.as_dict(), "n_ctx_train": info.n_ctx_train,
                 "checks": {"tokenizer_texts_matched": len(TOKENIZER_TEXTS)}},
    )


def validate_existing_gguf(path: Path, n_embd: int) -> None:
    """Python-only checks of a user GGUF (raise before any export work or C call)."""
    if not Path(path).is_file():
        raise ExportError(f"--llm-gguf file '{path}' does not exist.")
    check_expected(read_gguf_info(Path(path)), Path(path), n_embd=n_embd)
