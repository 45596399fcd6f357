"""The prompt plan: what the LLM reads, position by position, built once per ``generate``.

``render_prompt`` works on text, where the model's own tools do: it checks the placeholders
against the media given, puts missing ones first, applies the chat template (a Jinja sandbox,
as transformers does), puts ``prefix`` media in front and adds the layout's wrapper tokens.
``build_plan`` then parses that text once into text and media slots and resolves everything
that depends on the media themselves (grids and crops known after tiling, a tool's text, each
item's number of embeddings), tokenizes the text pieces and numbers every position. The result,
a ``PromptPlan``, is an ordered tuple of runs:

- ``TextRun(token_ids, positions)``: token ids to feed;
- ``MediaRun(modality, index, n_positions, positions)``: the ``index``-th embedding run of a
  modality (an image, a tile, an audio clip), ``n_positions`` rows of its encoder output.

Nothing downstream reads the prompt text again. ``Positions`` is a plain range today; it can
carry per-token ids on several axes (M-RoPE's t/h/w) for families whose positions need them.

Rules kept from the HF processors (and tested in ``tests/test_plan.py``):
- BOS (when the model adds one) is its own first run, after any ``prefix`` media (InstructBLIP's
  query embeddings precede BOS, as its processor writes them);
- text between placeholders is tokenized piece by piece, as HF tokenizers do around special tokens;
- a tool's text replaces its placeholder and is never parsed for placeholders itself.

Imports no torch and no transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Hashable, Mapping, Sequence, Union

import numpy as np

from edgebridge.errors import PromptError
from edgebridge.manifest import LayoutKind, ModalityInput, PositionKind, PromptLayout

Tokenize = Callable[[str], list[int]]


@dataclass(frozen=True)
class Positions:
    """Where a run sits: ``count`` positions from ``start`` (one axis), or explicit per-token ids.

    ``axes`` (``[n_axes, count]`` int32), when given, holds each token's position on every axis
    (M-RoPE families: temporal, height, width); text after such a run continues at ``stop``.
    """

    start: int
    count: int
    axes: np.ndarray | None = field(default=None, compare=False)

    @property
    def stop(self) -> int:
        """The first position after this run (the largest id + 1 when ``axes`` is given)."""
        if self.axes is not None and self.count:
            return int(self.axes.max()) + 1
        return self.start + self.count

    def ids(self) -> np.ndarray:
        """``[n_axes, count]`` position ids (one axis for a plain range)."""
        if self.axes is not None:
            return self.axes
        return np.arange(self.start, self.start + self.count, dtype=np.int32)[None]


@dataclass(frozen=True)
class TextRun:
    token_ids: tuple[int, ...]
    positions: Positions

    @property
    def n_positions(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class MediaRun:
    modality: str
    index: int  # the modality's embedding run (an item, or one tile of an item), in prompt order
    n_positions: int
    positions: Positions
    bidirectional: bool = False  # its rows attend to each other both ways during prefill (Gemma 3)


Run = Union[TextRun, MediaRun]


@dataclass(frozen=True)
class PromptPlan:
    """The prompt as the LLM reads it: runs in order, every position numbered."""

    runs: tuple[Run, ...]

    @property
    def n_positions(self) -> int:
        return sum(run.n_positions for run in self.runs)

    @property
    def multi_axis(self) -> bool:
        """Whether some run's positions are per-token ids on several axes (M-RoPE)."""
        return any(run.positions.axes is not None for run in self.runs)

    @property
    def next_position(self) -> int:
        """The position of the first token after the prompt (where decoding goes on)."""
        return self.runs[-1].positions.stop if self.runs else 0

    def media_runs(self, modality: str | None = None) -> list[MediaRun]:
        return [r for r in self.runs if isinstance(r, MediaRun) and modality in (None, r.modality)]

    def signature(self, media_keys: Mapping[tuple[str, int], Hashable]) -> list[Hashable]:
        """One hashable per position: ``("t", id)`` for a token, ``("e", key, row)`` for row ``row`` of
        the media run whose content key (the embedding cache's key of its inputs, else a digest of its
        embeddings) is ``media_keys[(modality, index)]``.
        Two prompts share KV-cache entries exactly as far as their signatures agree."""
        out: list[Hashable] = []
        for run in self.runs:
            if isinstance(run, TextRun):
                out.extend(("t", t) for t in run.token_ids)
            else:
                key = media_keys.get((run.modality, run.index), "")
                out.extend(("e", key, r) for r in range(run.n_positions))
        return out

    def after(self, skip: int) -> list[tuple[Run, int]]:
        """The runs still to feed when the first ``skip`` positions are already in the KV cache, each
        with the offset of its first position to feed (non-zero only for a run cut by ``skip``)."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        out = []
        for run in self.runs:
            n = run.n_positions
            if skip >= n:
                skip -= n
                continue
            out.append((run, skip))
            skip = 0
        return out


# --- phase 1: text ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPrompt:
    """The prompt with placeholders where media go (``text``), and the user's prompt as the chat
    template rendered it (``instruction``: what an encoder that reads the prompt sees, a Q-Former)."""

    text: str
    instruction: str


def render_prompt(prompt: str, inputs: Mapping[str, ModalityInput], layout: PromptLayout,
                  counts: Mapping[str, int], *, chat: bool = False, system: str | None = None) -> RenderedPrompt:
    """Placeholders checked and placed, chat template applied, prefix media and wrappers added."""
    text = place_media(prompt, inputs, counts)
    text = render_chat(text, layout, inputs, system) if chat else text
    text += layout.prompt_suffix  # PaliGemma's processor ends every prompt with a newline
    return RenderedPrompt(apply_wraps(prefix_media(text, inputs, counts), inputs), text)


def place_media(prompt: str, inputs: Mapping[str, ModalityInput], counts: Mapping[str, int]) -> str:
    """Check placeholder counts against the items given; put missing placeholders first."""
    for modality, n in counts.items():
        if n and modality not in inputs:
            raise PromptError(f"{n} {modality} input(s) given, but this bundle takes no {modality}.",
                              hint=f"It takes: {', '.join(inputs) or 'text only'}.")
    prefix = ""
    for modality, spec in inputs.items():
        n, ph = counts.get(modality, 0), spec.placeholder
        found = prompt.count(ph) if ph else 0
        if spec.layout.kind is LayoutKind.PREFIX:
            if found:
                raise PromptError(
                    f"this model puts its {modality} input before the whole prompt; the prompt cannot hold '{ph}'.",
                    hint=f"Remove '{ph}' from the prompt.")
        elif found == 0 and n:
            prefix += (ph + "\n") * n
        elif found != n:
            raise PromptError(
                f"the prompt has {found} '{ph}' placeholder(s) but {n} {modality} input(s) were given.",
                hint=f"Use one '{ph}' per {modality}, or none to put them all before the text.")
    return prefix + prompt


def prefix_media(text: str, inputs: Mapping[str, ModalityInput], counts: Mapping[str, int]) -> str:
    """Put the placeholders of ``prefix`` modalities in front of the (rendered) prompt."""
    head = "".join(spec.placeholder * counts.get(m, 0) for m, spec in inputs.items()
                   if spec.layout.kind is LayoutKind.PREFIX)
    return head + text


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


def apply_wraps(text: str, inputs: Mapping[str, ModalityInput]) -> str:
    """Add the wrapper tokens a modality's layout asks for (``wrap`` / ``wrap_if_missing``)."""
    for spec in inputs.values():
        for wrap, always in ((spec.layout.wrap, True), (spec.layout.wrap_if_missing, False)):
            if wrap is not None and spec.placeholder:
                text = _wrap(text, spec.placeholder, wrap.before, wrap.after, always)
    return text


def render_chat(prompt: str, layout: PromptLayout, inputs: Mapping[str, ModalityInput],
                system: str | None = None) -> str:
    """The bundle's chat template applied to one user turn (plus an optional system turn)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return render_messages(messages, layout, inputs)


def render_messages(messages: Sequence[Mapping[str, str]], layout: PromptLayout,
                    inputs: Mapping[str, ModalityInput]) -> str:
    """The bundle's chat template applied to a conversation (``role``, ``content``: text with a
    placeholder where each media item goes), ending with the assistant's turn to answer."""
    if not layout.chat_template:
        raise PromptError("this bundle has no chat template.", hint="Run without --chat and write the prompt in full.")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    parts = layout.chat_content == "parts"
    turns = [{"role": m["role"], "content": _chat_parts(m["content"], inputs) if parts and m["role"] == "user"
              else m["content"]} for m in messages]
    try:
        return env.from_string(layout.chat_template).render(
            messages=turns, add_generation_prompt=True,
            bos_token=layout.special_tokens.get("bos", ""), eos_token=layout.special_tokens.get("eos", ""))
    except TemplateError as exc:
        raise PromptError(f"the bundle's chat template failed: {exc}", hint="Run without --chat.") from None


def _chat_parts(prompt: str, inputs: Mapping[str, ModalityInput]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": piece} if isinstance(piece, str) else {"type": piece.modality}
            for piece in parse_slots(prompt, inputs)]


# --- phase 2: slots, then runs --------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Where one media item's embeddings go in the parsed prompt."""

    modality: str
    index: int


Piece = Union[str, Slot]


def parse_slots(text: str, inputs: Mapping[str, ModalityInput]) -> list[Piece]:
    """Split text at placeholders into text pieces and slots (numbered per modality, in order)."""
    phs = {spec.placeholder: modality for modality, spec in inputs.items() if spec.placeholder}
    if not phs:
        return [text] if text else []
    pattern = re.compile("|".join(re.escape(p) for p in sorted(phs, key=len, reverse=True)))
    pieces: list[Piece] = []
    seen: dict[str, int] = {}
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        modality = phs[m.group(0)]
        pieces.append(Slot(modality, seen.get(modality, 0)))
        seen[modality] = seen.get(modality, 0) + 1
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


@dataclass(frozen=True)
class MediaItems:
    """What preprocessing (or a tool) made of one modality's items, as the plan needs it.

    ``run_lengths``: positions of each embedding run (one per item, or per tile); ``infos``: per
    item, what a grid layout needs (rows, cols, crops); ``texts``: a tool's text per item;
    ``grids``: per run, its (t, h, w) token grid, for M-RoPE positions; ``t_index``: per run, each
    temporal patch's t offset (default its index; Qwen2.5-VL videos count it in time).
    """

    run_lengths: tuple[int, ...] = ()
    infos: tuple[Mapping[str, Any], ...] = ()
    texts: tuple[str, ...] | None = None
    grids: tuple[tuple[int, int, int], ...] = ()
    t_index: tuple[tuple[int, ...], ...] = ()


def _idefics3_grid(spec: ModalityInput, slot: Slot, info: Mapping[str, Any]) -> list[Piece]:
    """Idefics3 / SmolVLM: each tile behind its ``<row_r_col_c>`` token, rows ended by a newline, then
    the global image; one slot per tile (each tile is its own run of embeddings)."""
    lay = spec.layout
    fake, glob = lay.fake_token, lay.global_token
    rows, cols = int(info["rows"]), int(info["cols"])
    pieces: list[Piece] = []
    if rows or cols:
        for r in range(rows):
            for c in range(cols):
                pieces += [fake + lay.row_col_token.format(row=r + 1, col=c + 1), slot]
            pieces.append("\n")
        pieces.append("\n")
    return pieces + [fake + glob, slot, fake]


def _idefics2_crops(spec: ModalityInput, slot: Slot, info: Mapping[str, Any]) -> list[Piece]:
    """Idefics2: every crop between fake tokens (doubled fakes are merged after, as the processor does)."""
    fake = spec.layout.fake_token
    return [fake, slot, fake] * int(info["crops"])


def _timestamped_frames(spec: ModalityInput, slot: Slot, info: Mapping[str, Any]) -> list[Piece]:
    """Qwen3-VL video: ``<T seconds>`` then the wrapped tokens of each temporal patch (the slot's own
    wrapper, which ``wrap_if_missing`` guarantees, is taken off by ``_expand``)."""
    wrap = spec.layout.wrap_if_missing
    pieces: list[Piece] = []
    for t in info["timestamps"]:
        pieces += [f"<{t:.1f} seconds>{wrap.before}", slot, wrap.after]
    return pieces


def _pan_and_scan(spec: ModalityInput, slot: Slot, info: Mapping[str, Any]) -> list[Piece]:
    """Gemma 3: the image in its wrap; with pan-and-scan crops, ``Gemma3Processor``'s sentence around the
    image and its crops, each crop in a wrap of its own (the placeholder kept before each)."""
    wrap = spec.layout.wrap
    image: list[Piece] = [wrap.before + spec.placeholder, slot, wrap.after]
    crops = int(info.get("crops", 0))
    if not crops:
        return image
    pieces: list[Piece] = ["Here is the original image ", *image, " and here are some crops to help you see better "]
    for i in range(crops):
        pieces += [" "] * bool(i) + image
    return pieces


GRID_LAYOUTS = {LayoutKind.IDEFICS3_GRID: _idefics3_grid, LayoutKind.IDEFICS2_CROPS: _idefics2_crops,
                LayoutKind.TIMESTAMPED_FRAMES: _timestamped_frames, LayoutKind.PAN_AND_SCAN: _pan_and_scan}
UNWRAPPED = {LayoutKind.TIMESTAMPED_FRAMES, LayoutKind.PAN_AND_SCAN}  # kinds whose expansion brings its own wrappers


def _expand(pieces: list[Piece], inputs: Mapping[str, ModalityInput], media: Mapping[str, MediaItems]) -> list[Piece]:
    """Tool slots become their text; grid slots become their tiles' text and slots (renumbered)."""
    out: list[Piece] = []
    strip_next = ""
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece[len(strip_next):] if strip_next and piece.startswith(strip_next) else piece)
            strip_next = ""
            continue
        spec, items = inputs[piece.modality], media.get(piece.modality, MediaItems())
        if items.texts is not None:
            out.append(spec.layout.template.format(text=items.texts[piece.index]))
        elif spec.layout.kind in GRID_LAYOUTS:
            if spec.layout.kind in UNWRAPPED:  # the expansion wraps each part itself
                wrap = spec.layout.wrap or spec.layout.wrap_if_missing
                if out and isinstance(out[-1], str) and out[-1].endswith(wrap.before):
                    out[-1] = out[-1][:len(out[-1]) - len(wrap.before)]
                strip_next = wrap.after
            out += GRID_LAYOUTS[spec.layout.kind](spec, piece, items.infos[piece.index])
        else:
            out.append(piece)
    seen: dict[str, int] = {}
    for i, piece in enumerate(out):
        if isinstance(piece, Slot):
            out[i] = Slot(piece.modality, seen.get(piece.modality, 0))
            seen[piece.modality] = seen.get(piece.modality, 0) + 1
    return out


def _merge_text(pieces: list[Piece], inputs: Mapping[str, ModalityInput], media: Mapping[str, MediaItems]) -> list[Piece]:
    """Adjacent text pieces joined, with the ``collapse`` pairs of the layouts in use applied to each."""
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    pairs = [pair for m, spec in inputs.items() if m in media for pair in spec.layout.collapse]
    for i, piece in enumerate(merged):
        if isinstance(piece, str):
            for doubled, single in pairs:
                piece = piece.replace(doubled, single)
            merged[i] = piece
    return merged


def _check_counts(pieces: list[Piece], inputs: Mapping[str, ModalityInput], media: Mapping[str, MediaItems]) -> None:
    for modality in inputs:
        items = media.get(modality, MediaItems())
        found = sum(1 for p in pieces if isinstance(p, Slot) and p.modality == modality)
        have = len(items.texts) if items.texts is not None else len(items.infos) or len(items.run_lengths)
        if found != have:
            raise PromptError(f"{found} '{inputs[modality].placeholder}' placeholder(s) for {have} {modality} "
                              "input(s).", hint=f"Use one '{inputs[modality].placeholder}' per {modality} input.")


def build_plan(rendered: RenderedPrompt, inputs: Mapping[str, ModalityInput], media: Mapping[str, MediaItems],
               tokenize: Tokenize, bos_id: int | None) -> PromptPlan:
    """The plan for a rendered prompt, given what each modality's items became."""
    pieces = parse_slots(rendered.text, inputs)
    _check_counts(pieces, inputs, media)
    pieces = _merge_text(_expand(pieces, inputs, media), inputs, media)
    lead = 0  # prefix media go before BOS
    while lead < len(pieces) and isinstance(pieces[lead], Slot) and \
            inputs[pieces[lead].modality].layout.kind is LayoutKind.PREFIX:
        lead += 1
    ordered: list[Piece | list[int]] = list(pieces[:lead]) + ([[bos_id]] if bos_id is not None else [])
    for piece in pieces[lead:]:
        ids = tokenize(piece) if isinstance(piece, str) else None
        if ids is None:
            ordered.append(piece)
        elif ids:
            ordered.append(list(ids))
    return PromptPlan(tuple(_number(ordered, inputs, media)))


def _number(ordered: Sequence[Piece | list[int]], inputs: Mapping[str, ModalityInput],
            media: Mapping[str, MediaItems]) -> list[Run]:
    runs: list[Run] = []
    at = 0
    for piece in ordered:
        if isinstance(piece, Slot):
            lengths = media[piece.modality].run_lengths
            if piece.index >= len(lengths):
                raise PromptError(f"{piece.modality} slot {piece.index} has no embeddings "
                                  f"({len(lengths)} embedding runs).")
            n = int(lengths[piece.index])
            positions = Positions(at, n)
            if inputs[piece.modality].layout.positions is PositionKind.MROPE:
                items = media[piece.modality]
                t_index = items.t_index[piece.index] if items.t_index else None
                positions = mrope_positions(at, items.grids[piece.index], n, t_index)
            run: Run = MediaRun(piece.modality, piece.index, n, positions,
                                bidirectional=inputs[piece.modality].layout.bidirectional)
        else:
            run = TextRun(tuple(int(t) for t in piece), Positions(at, len(piece)))
        runs.append(run)
        at = run.positions.stop
    return runs


def mrope_positions(start: int, grid: Sequence[int], n: int, t_index: Sequence[int] | None = None) -> Positions:
    """M-RoPE positions of a ``(t, h, w)`` token grid placed at ``start`` (Qwen-VL's ``get_rope_index``):
    token (i, j, k) sits at ``start + (t_index[i], j, k)`` on the (t, h, w) axes, in raster order per
    frame (``t_index`` defaults to ``i``)."""
    t, h, w = (int(x) for x in grid)
    if t * h * w != n or (t_index is not None and len(t_index) != t):
        raise PromptError(f"an image grid of {t}x{h}x{w} tokens does not match its {n} embeddings.",
                          hint="The bundle's preprocessing and its encoder disagree; re-export it.")
    frames = np.asarray(t_index if t_index is not None else np.arange(t))
    axes = np.stack([np.repeat(frames, h * w), np.tile(np.repeat(np.arange(h), w), t), np.tile(np.arange(w), t * h)])
    return Positions(start, n, (axes + start).astype(np.int32))
