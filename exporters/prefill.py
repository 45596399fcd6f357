"""The LLM's prompt prefill as an ONNX graph whose KV cache llama.cpp takes over (``--prefill``).

The graph (``llm_prefill.onnx``; see ``runtimes/llamacpp/kv_handoff.py`` for how it is used)::

    input_ids    [1, n] int64    text token ids (any id where media_mask is set)
    media_embeds [1, n, D] f32   encoder + bridge embeddings at media positions
    media_mask   [1, n] bool     True where the position takes media_embeds
    positions    [3, n] int64    M-RoPE text models only (Qwen2-VL, Qwen2.5-VL): each row's t, h, w
      -> logits  [1, V] f32      the last position's
         k       [L, n, C] f16   every layer's keys, one row per position, in llama.cpp's channel
                                 order (the GGUF writer interleaves the rotary halves of llama/mistral)
         v       [L, n, C] f16   every layer's values, one row per position (bundles before 2026-12-01:
                                 [L, C, n], one row per channel; the runtime reads either)

It is built from the same ``TextModel`` the GGUF writer reads, so both hold the same weights; an int8
graph for a GGUF takes that GGUF's own weights, dequantized (``gguf/weights.py``: the hand-over then
differs from llama.cpp's prefill by the graph's rounding alone). ``int8`` quantizes its MatMul weights
and, at run time, their inputs: per tensor (onnxruntime ``quantize_dynamic``) first, per token when
that drifts beyond the budget (``prefill_int8.py``); the token-embedding Gather stays float.

Gates, both recorded in the manifest:
1. the graph's logits against the family's HF model on seeded ids + injected embeddings:
   ``max_abs <= 1e-3`` for fp32; measured and recorded for int8;
2. what users get: the hand-over into the bundle's own GGUF under the runtime's default llama.cpp
   settings, then 16 teacher-forced decode steps (6 prompts, ``CASE_GRIDS``), against llama.cpp's own prefill of the same
   sequences; held to the LLM drift budget (top-1 agreement, mean KL).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgebridge.errors import ExportError, ParityError, UnsupportedModelError
from edgebridge.exporters.gguf.export import N_CTX, SEED, text_logits
from edgebridge.exporters.gguf.archs import arch_spec
from edgebridge.exporters.gguf.weights import gguf_weights
from edgebridge.exporters.gguf.writer import TextModel
from edgebridge.exporters.onnx_files import data_file, save_external
from edgebridge.exporters.prefill_attention import CachedRows, fuse_for_prefill
from edgebridge.exporters.prefill_int8 import SCHEMES, UNSIGNED, quantize as quantize_int8
from edgebridge.manifest import Artifact, Parity, canonical_precision
from edgebridge.parity import enforce, logit_metrics, violations
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from edgebridge.timing import median_ms
from edgebridge.runtimes.llamacpp.kv_handoff import (
    GRAPH_INPUTS,
    GRAPH_OUTPUTS,
    MROPE_INPUT,
    HandoffUnavailable,
    KVHandoff,
    PrefillGraph,
)

PREFILL_PRECISIONS = ("f32", "int8")
STRICT_TOLERANCE = {"max_abs": 1e-3}
OPSET = 17
# The hand-over gate's sample: 6 prompts (text alone; a media run of 12 or 24 rows, as an M-RoPE grid) x
# (the prefill's next token + 16 teacher-forced steps) = 102 next-token distributions. It was 2 x 9 = 18,
# where one flipped token moved top-1 agreement by 0.056: the bench Qwen2.5-VL's q6_k pair was refused at
# 16 of 18 (0.889 < 0.9) on a sample too small to tell 0.89 from 0.95.
CASE_GRIDS = ((0, 0), (3, 4), (0, 0), (3, 4), (4, 6), (4, 6))
TEACHER_STEPS = 16
MAX_GRAPH_BYTES = 1_900_000_000  # one ONNX protobuf holds < 2 GiB; bigger graphs would need external data
FILE_NAME = "llm_prefill.onnx"


class TextCausalLM(torch.nn.Module):
    """A text model transformers has no ``*ForCausalLM`` for (Qwen-VL's ``*_vl_text``): the decoder and
    its output head, under the names the GGUF writer's state dict uses."""

    def __init__(self, config: Any) -> None:
        from transformers import AutoModel

        super().__init__()
        self.config = config
        self.model = AutoModel.from_config(config, attn_implementation="eager", dtype=torch.float32)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()


def causal_lm_from(text: TextModel) -> torch.nn.Module:
    """The text model as a float32 ``*ForCausalLM`` holding exactly the weights the GGUF got."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if text.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        model = AutoModelForCausalLM.from_config(text.config, attn_implementation="eager", dtype=torch.float32)
    else:
        model = TextCausalLM(text.config)
    state = {k: v.detach().to(torch.float32) for k, v in text.state_dict.items() if not k.endswith("inv_freq")}
    if "lm_head.weight" not in state:  # the writer drops a head equal to the embeddings (llama.cpp reuses them)
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UnsupportedModelError(
            f"the {text.model_type} text model's tensors do not fit transformers' own class "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}).", hint="Export without --prefill.")
    return model.eval()


class PrefillModule(torch.nn.Module):
    """``input_ids, media_embeds, media_mask -> logits, k, v`` (shapes in the module docstring). ``lm``'s
    rotary runs as onnxruntime's kernel, its K rows already in llama.cpp's order, and its last layer past
    K/V on the last row (``prefill_attention.fuse_for_prefill``)."""

    def __init__(self, lm: torch.nn.Module, permute_k: bool, mrope: bool = False) -> None:
        super().__init__()
        self.lm = fuse_for_prefill(lm, interleaved=permute_k)
        self.mrope = mrope

    def forward(self, input_ids: torch.Tensor, media_embeds: torch.Tensor, media_mask: torch.Tensor,
                positions: torch.Tensor | None = None):
        tokens = self.lm.get_input_embeddings()(input_ids)
        x = torch.where(media_mask[..., None], media_embeds, tokens)
        # Row indices and the causal mask from tensor ops, so the traced graph keeps ``n`` dynamic
        # (transformers' own mask code turns the example's length into constants when traced). Rows
        # attend causally in order; M-RoPE models rotate by the (t, h, w) ``positions`` ([3, n]), as
        # transformers' Qwen-VL does (llama.cpp masks by t, then h and w: the same order for a prompt).
        pos = torch.cumsum(torch.ones_like(input_ids[0]), 0) - 1  # [n]
        causal = torch.where(pos[None, :] <= pos[:, None], 0.0, torch.finfo(torch.float32).min)  # [n, n]
        rows = CachedRows(len(self.lm.model.layers))
        out = self.lm.model(inputs_embeds=x, attention_mask=causal[None, None],
                            position_ids=positions[:, None, :] if self.mrope else pos[None],
                            cache_position=pos, use_cache=False, cached_rows=rows)
        logits = self.lm.lm_head(out.last_hidden_state[:, -1])
        # [L, n, H * d], f16 before the copy; concatenated along the batch axis each layer's rows have
        # (indexing it away first is a copy per layer and tensor in the graph)
        return logits, torch.cat([k.half() for k in rows.keys]), torch.cat([v.half() for v in rows.values])


def write_graph(text: TextModel, dst: Path, precision: str, scratch: Path, scheme: str = SCHEMES[0]
                ) -> dict[str, Any]:
    """Export the prefill graph of ``text`` to ``dst`` at ``precision`` (int8: in one of
    ``prefill_int8.SCHEMES``); returns the method for the manifest."""
    spec = arch_spec(text.model_type)
    lm = causal_lm_from(text)
    n_bytes = sum(p.numel() * 4 for p in lm.parameters())
    if n_bytes > MAX_GRAPH_BYTES:
        raise UnsupportedModelError(
            f"the text model is {n_bytes / 1e9:.1f} GB in float32; the prefill graph is written as one ONNX "
            "file, which holds less than 2 GB.", hint="Export without --prefill (llama.cpp then prefills).")
    module = PrefillModule(lm, spec.permute_qk, mrope=spec.mrope).eval()
    n, width = 8, int(text.config.hidden_size)
    example = (torch.zeros(1, n, dtype=torch.long), torch.zeros(1, n, width), torch.zeros(1, n, dtype=torch.bool))
    names = list(GRAPH_INPUTS)
    if spec.mrope:
        example, names = example + (torch.arange(n).expand(3, n).contiguous(),), names + [MROPE_INPUT]
    fp32 = scratch / "prefill-f32.onnx"
    with torch.no_grad():
        torch.onnx.export(module, example, str(fp32), input_names=names,
                          output_names=list(GRAPH_OUTPUTS), opset_version=OPSET, dynamo=False,
                          # the positions axis of every input and of K and V (logits: the last row only);
                          # only names the graph has, or torch warns on the terminal
                          dynamic_axes={name: {1: "positions"} for name in (*names, "k", "v")})
    method: dict[str, Any] = {"method": "torch.onnx.export (TorchScript)", "opset": OPSET,
                              "rotary_permuted": spec.permute_qk, "rotary": "com.microsoft.RotaryEmbedding",
                              "last_layer": "K and V of every position; query, attention output and FFN of the last"}
    final = fp32
    if precision == "int8":
        final = scratch / f"prefill-int8-{scheme}.onnx"
        method.update(quantize_int8(fp32, final, scheme), exported_with="torch.onnx.export (TorchScript)")
    method["external_data"] = save_external(final, dst)[1].name
    return method


def _mrope_positions(n_text: int, grid: tuple[int, int]) -> np.ndarray:
    """``[3, n]`` (t, h, w) positions of ``n_text`` tokens, a ``grid`` of media rows at the next t (rows and
    columns from there), ``n_text`` more tokens from the largest + 1: what the prompt plan numbers."""
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    media = np.stack([np.zeros(rows.size, np.int64), rows.reshape(-1), cols.reshape(-1)]) + n_text
    after = int(media.max()) + 1 if media.size else n_text
    return np.concatenate([np.broadcast_to(np.arange(n_text), (3, n_text)), media,
                           np.broadcast_to(np.arange(after, after + n_text), (3, n_text))], axis=1)


def _cases(lm: torch.nn.Module, vocab_rows: int, mrope: bool = False) -> list[dict[str, np.ndarray]]:
    """Seeded prompts (``CASE_GRIDS``): ids alone, or ids + injected embeddings (on M-RoPE models at
    their grid's positions) + ids; each with ``TEACHER_STEPS`` teacher-forced next tokens."""
    gen = torch.Generator().manual_seed(SEED + 1)
    embed = lm.get_input_embeddings().weight.detach()
    scale = float(embed.std())
    width = embed.shape[1]
    cases = []
    for grid in CASE_GRIDS:
        n_media = grid[0] * grid[1]
        ids = torch.randint(0, vocab_rows, (8 + n_media + 8,), generator=gen)
        mask = torch.zeros(ids.shape[0], dtype=torch.bool)
        mask[8:8 + n_media] = True
        media = torch.randn((ids.shape[0], width), generator=gen) * scale * mask[:, None]
        follow = torch.randint(0, vocab_rows, (TEACHER_STEPS,), generator=gen)
        cases.append({"ids": ids.numpy(), "media": media.numpy(), "mask": mask.numpy(), "follow": follow.numpy()})
        if mrope:
            cases[-1]["positions"] = _mrope_positions(8, grid)
    return cases


def _hf_last_logits(lm: torch.nn.Module, case: dict[str, np.ndarray]) -> np.ndarray:
    ids, media, mask = (torch.from_numpy(case[k]) for k in ("ids", "media", "mask"))
    with torch.no_grad():
        x = torch.where(mask[:, None], media, lm.get_input_embeddings()(ids))
        if "positions" not in case:
            return text_logits(lm, inputs_embeds=x[None])[-1]
        out = lm(inputs_embeds=x[None], position_ids=torch.from_numpy(case["positions"])[:, None, :], use_cache=False)
    return out.logits[0, -1].float().numpy()


def _llamacpp_prefill(llm: LlamaCppLLM, case: dict[str, np.ndarray]) -> np.ndarray:
    """llama.cpp's own prefill of a case, in runs of tokens and embeddings; the last logits."""
    llm.reset()
    ids, media, mask = case["ids"], case["media"], case["mask"]
    bounds = [0] + [i for i in range(1, len(ids)) if mask[i] != mask[i - 1]] + [len(ids)]
    logits = None
    for lo, hi in zip(bounds, bounds[1:]):
        want = "last" if hi == len(ids) else "none"
        if mask[lo]:
            positions = case["positions"][:, lo:hi] if "positions" in case else None
            logits = llm.eval_embeddings(media[lo:hi], want, positions)
        else:
            logits = llm.eval_tokens(ids[lo:hi].tolist(), want)
    return logits


def _teacher_forced(llm: LlamaCppLLM, first: np.ndarray, follow: np.ndarray) -> list[np.ndarray]:
    return [first.copy()] + [llm.eval_tokens([int(t)]).copy() for t in follow]


def measure_handoff(graph: PrefillGraph, gguf_path: Path, cases: list[dict[str, np.ndarray]]
                    ) -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Logits after the hand-over (+ teacher-forced steps) vs llama.cpp's own prefill; (metrics, settings,
    speed: the hand-over vs llama.cpp's prefill of the same text positions)."""
    with LlamaCppLLM(gguf_path, LlamaSettings(n_ctx=N_CTX)) as llm:
        try:
            handoff = KVHandoff.attach(llm, graph)
        except HandoffUnavailable as exc:
            raise ExportError(f"the prefill graph cannot hand its KV cache to llama.cpp: {exc}.",
                              hint="Export without --prefill, and report this with the model's config.") from None
        ours, theirs = [], []
        for case in cases:
            theirs += _teacher_forced(llm, _llamacpp_prefill(llm, case), case["follow"])
            first = handoff.prefill(case["ids"], case["media"], case["mask"], case.get("positions"))
            ours += _teacher_forced(llm, first, case["follow"])
        n = N_CTX // 2
        ids, media, mask = np.arange(n) % llm.n_vocab, np.zeros((n, llm.n_embd), np.float32), np.zeros(n, bool)
        speed = {"positions": n,
                 "prefill_ms": round(median_ms(lambda: handoff.prefill(ids, media, mask), runs=3), 3),
                 "llamacpp_prefill_ms": round(median_ms(lambda: (llm.reset(), llm.eval_tokens(ids.tolist())),
                                                        runs=3), 3)}
        settings = {"llama_settings": "default", **handoff.describe()}
    return logit_metrics(np.stack(ours), np.stack(theirs)), settings, speed


def check_supported(model_type: str) -> None:
    """Refuse, before any export work, a text model the prefill graph does not reproduce."""
    spec = arch_spec(model_type)
    if not spec.prefill_graph:
        raise UnsupportedModelError(
            f"the prefill graph reproduces llama, mistral, qwen2 and Qwen2(.5)-VL decoders; {model_type} has parts "
            "it does not write (q/k norms, soft-capping, sliding windows, fused projections, scaled embeddings "
            "or deepstack features).", hint="Export without --prefill: llama.cpp prefills these models.")


@dataclass
class PrefillDraft:
    """A written prefill graph held to transformers, not yet gated against a GGUF (``gate_prefill``)."""

    path: Path
    precision: str
    method: dict[str, Any]
    cases: list[dict[str, np.ndarray]]
    pytorch: dict[str, float]
    graph: PrefillGraph

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size + data_file(self.path).stat().st_size

    @property
    def activations(self) -> str | None:
        """``per-tensor`` or ``per-token`` for an int8 graph (``prefill_int8.py``); None for f32."""
        return self.method.get("activations")

    @property
    def scheme(self) -> str | None:
        """One of ``prefill_int8.SCHEMES`` for an int8 graph; None for f32."""
        return self.method.get("scheme")

    @property
    def label(self) -> str:
        if not self.activations:
            return self.precision
        unsigned = " as 8-bit unsigned" if self.scheme == UNSIGNED else ""
        return f"int8, {self.activations} activations, {self.method['weights']} weights{unsigned}"

    def discard(self) -> None:
        """Close the graph's session and delete its files."""
        self.graph.close()
        self.path.unlink(missing_ok=True)
        data_file(self.path).unlink(missing_ok=True)


def draft_prefill(text: TextModel, reference_lm: torch.nn.Module, dst: Path, precision: str, *,
                  scheme: str = SCHEMES[0], weights: str = "float",
                  step: Callable[[str], None] = lambda _: None) -> PrefillDraft:
    """Write the prefill graph of ``text`` at ``dst`` and check its logits against transformers (the f32
    graph is held to ``STRICT_TOLERANCE``; the int8 one's figures are recorded). ``scheme``: how an int8
    graph quantizes its MatMuls (``prefill_int8.SCHEMES``); ``weights``: what ``text``
    holds, ``float`` or the GGUF type it was read back from (``gguf_weights``), recorded."""
    precision = canonical_precision(precision)  # fp32, the old spelling, still accepted
    if precision not in PREFILL_PRECISIONS:
        raise ExportError(f"unknown prefill precision '{precision}'.",
                          hint=f"Choose from: {', '.join(PREFILL_PRECISIONS)}.")
    if scheme not in SCHEMES:
        raise ExportError(f"unknown int8 scheme '{scheme}'.", hint=f"Choose from: {', '.join(SCHEMES)}.")
    check_supported(text.model_type)
    vocab_rows = min(int(text.config.vocab_size), int(reference_lm.get_input_embeddings().weight.shape[0]))
    cases = _cases(reference_lm, vocab_rows, mrope=arch_spec(text.model_type).mrope)
    with tempfile.TemporaryDirectory(prefix="edgebridge-prefill-") as scratch:
        step(f"prefill graph: exporting ONNX ({precision}{f', {scheme} scheme, {weights} weights' if precision == 'int8' else ''})")
        method = write_graph(text, dst, precision, Path(scratch), scheme)
    method["weights"] = weights
    step("prefill graph: logits against transformers")
    graph = PrefillGraph(dst, precision=precision)
    ours = np.stack([graph.run(c["ids"], c["media"], c["mask"], c.get("positions"))[0] for c in cases])
    reference = np.stack([_hf_last_logits(reference_lm, c) for c in cases])
    pytorch = logit_metrics(ours, reference)
    if precision == "f32":
        enforce("llm prefill graph (f32 ONNX)", pytorch, STRICT_TOLERANCE)
    return PrefillDraft(dst, precision, method, cases, pytorch, graph)


def gate_prefill(draft: PrefillDraft, gguf_path: Path, budget: dict[str, float], *,
                 step: Callable[[str], None] = lambda _: None) -> Artifact:
    """The draft's hand-over into the GGUF at ``gguf_path`` against llama.cpp's own prefill, held to the LLM
    drift budget (``ParityError`` beyond it); the prefill artifact for a bundle with that GGUF."""
    step(f"prefill graph ({draft.label}): KV hand-over into {gguf_path.name} against llama.cpp's own prefill")
    metrics, settings, speed = measure_handoff(draft.graph, gguf_path, draft.cases)
    parity = Parity(reference="llama.cpp prefill (same GGUF)", metrics=metrics, tolerance=dict(budget),
                    passed=not violations(metrics, budget), settings=settings,
                    samples=len(draft.cases) * (TEACHER_STEPS + 1))
    enforce(f"llm prefill graph ({draft.label}; KV hand-over vs llama.cpp's prefill)", metrics, budget,
            hint="Use --prefill f32, or raise the budget (--max-drift llm.kl_mean=...).")
    precision, dst = draft.precision, draft.path
    return Artifact(
        format="onnx", files=[dst.name, data_file(dst).name], precision=precision, parity=parity,
        quantization={"precision": precision, **draft.method, "speed": speed, "bytes": draft.bytes},
        details={"role": "prefill", "inputs": list(GRAPH_INPUTS), "outputs": list(GRAPH_OUTPUTS),
                 "checks": {"pytorch": {"metrics": draft.pytorch,
                                        "tolerance": STRICT_TOLERANCE if precision == "f32" else None,
                                        "samples": len(draft.cases)}}},
    )


def export_prefill(text: TextModel, reference_lm: torch.nn.Module, gguf_path: Path, dst: Path, precision: str,
                   budget: dict[str, float], *, step: Callable[[str], None] = lambda _: None) -> Artifact:
    """Write, gate and describe the prefill artifact for the bundle whose GGUF is ``gguf_path``. An int8
    graph beyond the budget is written again in the next of ``prefill_int8.SCHEMES`` (per-token
    activations: ~10% slower, closer to the float graph; then 8-bit unsigned weights: slower still, closer
    again) before the export refuses it with the last verdict; the artifact's ``quantization.refused``
    keeps the verdicts of the schemes it passed over."""
    weights, schemes = "float", [SCHEMES[0]]
    if canonical_precision(precision) == "int8":  # the f32 graph is held to transformers' float weights
        text, weights = gguf_weights(text, gguf_path)
        schemes = list(SCHEMES)
    refused: dict[str, str] = {}
    for scheme in schemes:
        draft = draft_prefill(text, reference_lm, dst, precision, scheme=scheme, weights=weights, step=step)
        try:
            art = gate_prefill(draft, gguf_path, budget, step=step)
            break
        except ParityError as exc:
            draft.discard()
            if scheme == schemes[-1]:
                raise
            refused[scheme] = exc.message
    if refused:
        art.quantization["refused"] = refused
    return art
