"""The LLM to GGUF, with its parity gates.

1. Write an f32 GGUF and hold it to transformers with strict llama.cpp settings (no flash
   attention, f32 KV cache) on seeded inputs: token ids alone, and tokens / injected embeddings /
   tokens in one sequence (how image embeddings reach the LLM). max-abs of logits <= 1e-3.
2. Check the GGUF's tokenizer (llama.cpp's) against the HF tokenizer on a fixed text set:
   every id must match.
3. For an f16 file, measure what users get (the runtime's default settings: flash attention,
   f16 KV cache) against transformers, and hold it to a drift budget (top-1 agreement, KL).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgebridge.errors import ParityError
from edgebridge.exporters.families.base import Family, Loaded
from edgebridge.exporters.gguf.writer import TextModel, write_gguf
from edgebridge.manifest import Artifact, Parity, PromptLayout
from edgebridge.parity import enforce, logit_metrics, violations
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings

STRICT_TOLERANCE = {"max_abs": 1e-3}
# f16 weights + flash attention + f16 KV against the f32 reference (over all checked positions)
DEFAULT_DRIFT_TOLERANCE = {"top1_agreement": 0.95, "kl_mean": 0.01}
N_TOKENS = 24
N_EMBEDS = 10
SEED = 4321

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


def text_logits(loaded: Loaded, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> np.ndarray:
    """The HF model's logits ``[T, V]`` for one sequence of ids or embeddings (no media)."""
    with torch.no_grad():
        out = loaded.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
    return out.logits[0].float().numpy()


def _reference_cases(loaded: Loaded, vocab_rows: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Seeded sequences and HF logits: ids only; ids + embeddings + ids."""
    gen = torch.Generator().manual_seed(SEED)
    embed = loaded.model.get_input_embeddings()
    ids_a = torch.randint(0, vocab_rows, (N_TOKENS,), generator=gen)
    ids_b = torch.randint(0, vocab_rows, (6,), generator=gen)
    ids_c = torch.randint(0, vocab_rows, (6,), generator=gen)
    scale = float(embed.weight.detach().std())
    fake_media = torch.randn((N_EMBEDS, embed.weight.shape[1]), generator=gen) * scale
    with torch.no_grad():
        mixed = torch.cat([embed(ids_b), fake_media, embed(ids_c)])
    ref = np.concatenate([
        text_logits(loaded, input_ids=ids_a[None]),
        text_logits(loaded, inputs_embeds=mixed[None]),
    ])
    segments = [
        [("tokens", ids_a.numpy())],
        [("tokens", ids_b.numpy()), ("embeds", fake_media.numpy()), ("tokens", ids_c.numpy())],
    ]
    return segments, ref


def run_llamacpp(llm: LlamaCppLLM, cases: list[list[tuple[str, np.ndarray]]]) -> np.ndarray:
    rows = []
    for case in cases:
        llm.reset()
        for kind, data in case:
            if kind == "tokens":
                rows.append(llm.eval_tokens(data.tolist(), logits="all"))
            else:
                rows.append(llm.eval_embeddings(data, logits="all"))
    return np.concatenate(rows)


def tokenizer_mismatches(llm: LlamaCppLLM, tokenizer: Any, add_bos: bool) -> list[str]:
    bad = []
    for text in TOKENIZER_TEXTS:
        ref = tokenizer(text, add_special_tokens=True)["input_ids"]
        got = llm.tokenize(text, add_bos=add_bos)
        if list(ref) != got:
            bad.append(text)
    return bad


def measure(path: Path, settings: LlamaSettings, cases, reference: np.ndarray, tolerance: dict[str, float],
            label: str) -> Parity:
    with LlamaCppLLM(path, settings) as llm:
        metrics = logit_metrics(run_llamacpp(llm, cases), reference)
        report = llm.report.as_dict()
    return Parity(
        reference="pytorch",
        metrics=metrics,
        tolerance=dict(tolerance),
        passed=not violations(metrics, tolerance),
        settings={"llama_settings": label, **report},
        samples=int(reference.shape[0]),
    )


def export_llm(
    family: Family,
    loaded: Loaded,
    layout: PromptLayout,
    out_path: Path,
    dtype: str,
    *,
    drift_tolerance: dict[str, float] | None = None,
    step: Callable[[str], None] = lambda _: None,
) -> tuple[Artifact, TextModel]:
    """Write the LLM GGUF at ``out_path`` in ``dtype`` ("f32" or "f16"), gated; returns its artifact."""
    text = family.text_model(loaded)
    tokenizer = loaded.processor.tokenizer if hasattr(loaded.processor, "tokenizer") else loaded.processor
    vocab_rows = min(len(tokenizer), text.config.vocab_size)
    cases, reference = _reference_cases(loaded, vocab_rows)
    n_ctx = 128
    with tempfile.TemporaryDirectory(prefix="edgebridge-gguf-") as scratch:
        f32_path = out_path if dtype == "f32" else Path(scratch) / "llm-f32.gguf"
        step("writing f32 GGUF")
        details = write_gguf(text, f32_path, "f32")
        step("checking GGUF f32 logits against transformers (strict settings)")
        strict = measure(f32_path, LlamaSettings.strict(n_ctx=n_ctx), cases, reference, STRICT_TOLERANCE, "strict")
        enforce("llm (GGUF f32, strict llama.cpp settings)", strict.metrics, STRICT_TOLERANCE)
        with LlamaCppLLM(f32_path, LlamaSettings.strict(n_ctx=n_ctx)) as llm:
            bad = tokenizer_mismatches(llm, tokenizer, layout.add_bos)
        if bad:
            raise ParityError(
                "llm tokenizer", "texts tokenized differently", len(bad), 0,
                hint=f"llama.cpp's '{text.vocab.pre}' pre-tokenizer disagrees with the HF tokenizer on: {bad[0]!r}.",
            )
        checks = {"strict_f32": strict.__dict__, "tokenizer_texts_matched": len(TOKENIZER_TEXTS)}
        if dtype == "f32":
            parity = strict
        else:
            step(f"writing {dtype} GGUF")
            details = write_gguf(text, out_path, dtype)
            step(f"measuring {dtype} GGUF drift (default llama.cpp settings)")
            tol = drift_tolerance or DEFAULT_DRIFT_TOLERANCE
            parity = measure(out_path, LlamaSettings(n_ctx=n_ctx), cases, reference, tol, "default")
            enforce(f"llm (GGUF {dtype}, default llama.cpp settings)", parity.metrics, tol,
                    hint="Export with --llm-dtype f32, or raise the budget with --max-drift llm=...")
    details["checks"] = checks
    artifact = Artifact(format="gguf", files=[out_path.name], precision=dtype, parity=parity, details=details)
    return artifact, text
