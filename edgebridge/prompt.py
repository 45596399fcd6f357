"""Prompts: placeholders, chat templates, and the split into text and media segments.

The prompt is used the way the model's HF processor uses it: each placeholder (``<image>``,
``<|AUDIO|>`` ...) marks where one item's embeddings go. Without placeholders, the items go
first, each placeholder followed by a newline (documented default). Text between placeholders is
tokenized piece by piece, which is what HF tokenizers do around special tokens.

Chat templates are Jinja templates rendered in a sandbox, as transformers renders them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edgebridge.errors import PromptError
from edgebridge.manifest import ModalityInput, PromptLayout


@dataclass(frozen=True)
class Segment:
    """A piece of the prompt: text to tokenize, or the ``index``-th item of a modality."""

    kind: str  # "text" | "media"
    text: str = ""
    modality: str = ""
    index: int = 0


def _placeholders(inputs: dict[str, ModalityInput]) -> dict[str, str]:
    return {spec.placeholder: modality for modality, spec in inputs.items()}


def _wrap(text: str, placeholder: str, before: str, after: str, always: bool) -> str:
    """Put ``before``/``after`` around every placeholder (``always``) or every one that has neither
    (Qwen2-Audio's processor rule)."""
    out, pos = [], 0
    while (i := text.find(placeholder, pos)) >= 0:
        j = i + len(placeholder)
        has = not always and (text[:i].endswith(before) or text[j:].startswith(after))
        out.append(text[pos:i] + (placeholder if has else before + placeholder + after))
        pos = j
    return "".join(out) + text[pos:]


def apply_layouts(text: str, inputs: dict[str, ModalityInput]) -> str:
    """Add the wrapper tokens a modality's layout asks for (``layout.wrap`` / ``layout.wrap_if_missing``)."""
    for spec in inputs.values():
        for key, always in (("wrap", True), ("wrap_if_missing", False)):
            wrap = spec.layout.get(key)
            if wrap:
                text = _wrap(text, spec.placeholder, wrap["before"], wrap["after"], always)
    return text


def _idefics3_grid(layout: dict[str, Any], placeholder: str, info: dict[str, Any]) -> str:
    """Idefics3 / SmolVLM: each tile behind its ``<row_r_col_c>`` token, rows ended by a newline, then
    the global image; one placeholder per tile (each tile is its own run of embeddings)."""
    fake, glob = layout["fake_token"], layout["global_token"]
    rows, cols = info["rows"], info["cols"]
    if rows == 0 and cols == 0:
        return f"{fake}{glob}{placeholder}{fake}"
    grid = "".join(
        "".join(f"{fake}" + layout["row_col_token"].format(row=r + 1, col=c + 1) + placeholder for c in range(cols))
        + "\n" for r in range(rows))
    return f"{grid}\n{fake}{glob}{placeholder}{fake}"


def _idefics2_crops(layout: dict[str, Any], placeholder: str, info: dict[str, Any]) -> str:
    """Idefics2: every crop between fake tokens (doubled fakes are merged after, as the processor does)."""
    fake = layout["fake_token"]
    return f"{fake}{placeholder}{fake}" * info["crops"]


GRID_LAYOUTS = {"idefics3-grid": _idefics3_grid, "idefics2-crops": _idefics2_crops}


def insert_tool_text(text: str, inputs: dict[str, ModalityInput], outputs: dict[str, list[str]]) -> str:
    """Replace each placeholder of a tool modality with that item's text (layout ``text``: ``template``)."""
    for modality, texts in outputs.items():
        spec = inputs[modality]
        template = spec.layout.get("template", "{text}")
        parts = text.split(spec.placeholder)
        if len(parts) - 1 != len(texts):
            raise PromptError(f"{len(parts) - 1} '{spec.placeholder}' placeholders for {len(texts)} {modality} inputs.")
        text = parts[0] + "".join(template.format(text=t) + rest for t, rest in zip(texts, parts[1:]))
    return text


def expand_grids(text: str, inputs: dict[str, ModalityInput], infos: dict[str, list[dict[str, Any]]]) -> str:
    """Replace each placeholder of a tiled modality by its grid text (known once the image is tiled)."""
    for modality, spec in inputs.items():
        expand = GRID_LAYOUTS.get(spec.layout.get("kind", "repeat"))
        if expand is None or modality not in infos:
            continue
        parts = text.split(spec.placeholder)
        if len(parts) - 1 != len(infos[modality]):
            raise PromptError(f"{len(parts) - 1} '{spec.placeholder}' placeholders for {len(infos[modality])} items.")
        text = parts[0] + "".join(expand(spec.layout, spec.placeholder, info) + rest
                                  for info, rest in zip(infos[modality], parts[1:]))
        for doubled, single in spec.layout.get("collapse", []):
            text = text.replace(doubled, single)
    return text


def place_media(prompt: str, inputs: dict[str, ModalityInput], counts: dict[str, int]) -> str:
    """Check placeholder counts against the items given; put missing placeholders first."""
    prefix = ""
    for modality, n in counts.items():
        if n and modality not in inputs:
            raise PromptError(
                f"{n} {modality} input(s) given, but this bundle takes no {modality}.",
                hint=f"It takes: {', '.join(inputs) or 'text only'}.",
            )
        if modality not in inputs:
            continue
        ph = inputs[modality].placeholder
        found = prompt.count(ph)
        if is_prefix(inputs[modality]):
            if found:
                raise PromptError(
                    f"this model puts its {modality} input before the whole prompt; the prompt cannot hold '{ph}'.",
                    hint=f"Remove '{ph}' from the prompt.")
            continue
        if found == 0 and n:
            prefix += (ph + "\n") * n
        elif found != n:
            raise PromptError(
                f"the prompt has {found} '{ph}' placeholder(s) but {n} {modality} input(s) were given.",
                hint=f"Use one '{ph}' per {modality}, or none to put them all before the text.",
            )
    return prefix + prompt


def is_prefix(spec: ModalityInput) -> bool:
    """Layout ``prefix``: the items' embeddings go before the prompt, BOS included (InstructBLIP)."""
    return spec.layout.get("kind") == "prefix"


def prefix_media(text: str, inputs: dict[str, ModalityInput], counts: dict[str, int]) -> str:
    """Put the placeholders of ``prefix`` modalities in front of the (rendered) prompt."""
    head = "".join(spec.placeholder * counts.get(m, 0) for m, spec in inputs.items() if is_prefix(spec))
    return head + text


def split_segments(text: str, inputs: dict[str, ModalityInput]) -> list[Segment]:
    """Split rendered prompt text at placeholders into text and media segments, in order."""
    phs = _placeholders(inputs)
    if not phs:
        return [Segment("text", text=text)] if text else []
    pattern = re.compile("|".join(re.escape(p) for p in sorted(phs, key=len, reverse=True)))
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            segments.append(Segment("text", text=text[pos:m.start()]))
        modality = phs[m.group(0)]
        segments.append(Segment("media", modality=modality, index=seen.get(modality, 0)))
        seen[modality] = seen.get(modality, 0) + 1
        pos = m.end()
    if pos < len(text):
        segments.append(Segment("text", text=text[pos:]))
    return segments


def _chat_parts(prompt: str, inputs: dict[str, ModalityInput]) -> list[dict[str, Any]]:
    parts = []
    for seg in split_segments(prompt, inputs):
        parts.append({"type": seg.modality} if seg.kind == "media" else {"type": "text", "text": seg.text})
    return parts


def render_chat(prompt: str, layout: PromptLayout, inputs: dict[str, ModalityInput],
                system: str | None = None) -> str:
    """The bundle's chat template applied to one user turn (plus an optional system turn)."""
    if not layout.chat_template:
        raise PromptError("this bundle has no chat template.", hint="Run without --chat and write the prompt in full.")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    content: Any = _chat_parts(prompt, inputs) if layout.chat_content == "parts" else prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    try:
        return env.from_string(layout.chat_template).render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=layout.special_tokens.get("bos", ""),
            eos_token=layout.special_tokens.get("eos", ""),
        )
    except TemplateError as exc:
        raise PromptError(f"the bundle's chat template failed: {exc}", hint="Run without --chat.") from None
