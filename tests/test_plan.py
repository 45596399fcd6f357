"""The prompt plan: placement, layouts, BOS, prefix media, tool text and the KV-prefix arithmetic.

Fast (no export, no engine): the layouts are written here as each family's exporter writes them
(``exporters/families/*.py``), the tokenizer is a stand-in that maps each character to its code
point, so every expected run can be read off the prompt. That the real engines read these plans
as transformers reads the processors' prompts is what the families' parity tests check (16 greedy
ids identical per family).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from edgebridge.caching import KVPrefix
from edgebridge.errors import PromptError
from edgebridge.manifest import Layout, LayoutKind, ModalityInput, PromptLayout
from edgebridge.plan import MediaItems, MediaRun, Positions, TextRun, build_plan, render_prompt

BOS = 1


def chars(text: str) -> list[int]:
    return [ord(c) for c in text]


def spec(placeholder: str, tokens: int = 4, pre: str = "image-clip", **layout) -> ModalityInput:
    return ModalityInput(component="enc", preprocessing={"kind": pre}, placeholder=placeholder,
                         tokens_per_item=tokens, layout={"kind": "repeat", **layout})


LAYOUT = PromptLayout(add_bos=True, stop_token_ids=[2])

# Every registered family's prompt placement, as its exporter writes it.
FAMILY_INPUTS = {
    "llava": {"image": spec("<image>")},
    "mobilevlm": {"image": spec("<image>")},
    "llava-next": {"image": spec("<image>", pre="llava-anyres")},  # counts per image from its grid
    "llava-onevision": {"image": spec("<image>", pre="llava-anyres")},
    "internvl": {"image": spec("<IMG_CONTEXT>", wrap={"before": "<img>", "after": "</img>"})},
    "paligemma": {"image": spec("<image>", **{"kind": "prefix"})},
    "gemma3": {"image": spec("<start_of_image>", pre="gemma3-images", bidirectional=True, **{
        "kind": "pan-and-scan", "wrap": {"before": "\n\n", "after": "<end_of_image>\n\n"}})},
    "idefics3": {"image": spec("<image>", pre="idefics3-tiles", **{
        "kind": "idefics3-grid", "fake_token": "<fake>", "global_token": "<global>", "row_col_token": "<r{row}c{col}>"})},
    "idefics2": {"image": spec("<image>", pre="idefics2-resize", **{
        "kind": "idefics2-crops", "fake_token": "<fake>", "collapse": [["<fake><fake>", "<fake>"]]})},
    "instructblip": {"image": spec("<image>", **{"kind": "prefix"})},
    "qwen2-audio": {"audio": spec("<|AUDIO|>", pre="whisper-logmel",
                                  wrap_if_missing={"before": "<|audio_bos|>", "after": "<|audio_eos|>"})},
    "voxtral": {"audio": spec("[AUDIO]", pre="whisper-logmel")},
    "qwen2-vl": {"image": spec("<|image_pad|>", pre="qwen-vl-patches", positions="mrope",
                               wrap_if_missing={"before": "<|vision_start|>", "after": "<|vision_end|>"})},
    "qwen2.5-vl": {"image": spec("<|image_pad|>", pre="qwen-vl-patches", positions="mrope",
                                 wrap_if_missing={"before": "<|vision_start|>", "after": "<|vision_end|>"})},
    "qwen3-vl": {"image": spec("<|image_pad|>", pre="qwen-vl-patches", positions="mrope",
                               wrap_if_missing={"before": "<|vision_start|>", "after": "<|vision_end|>"})},
    "assistant": {"audio": spec("<audio>", 0, pre="whisper-logmel", **{"kind": "text", "template": "{text}"}),
                  "image": spec("<image>", 0, **{"kind": "text", "template": "a photo of {text}"})},
}


def plan_for(family: str, prompt: str, media: dict[str, MediaItems], bos: int | None = BOS, chat=False):
    inputs = FAMILY_INPUTS[family]
    counts = {m: len(items.texts if items.texts is not None else items.infos or items.run_lengths)
              for m, items in media.items()}
    rendered = render_prompt(prompt, inputs, LAYOUT, counts, chat=chat)
    return build_plan(rendered, inputs, media, chars, bos)


def images(*lengths: int, **info) -> MediaItems:
    return MediaItems(run_lengths=lengths, infos=tuple({**info} for _ in lengths))


def text_of(run: TextRun) -> str:
    return "".join(chr(t) for t in run.token_ids)


def describe(plan) -> list:
    """A readable form: BOS as 'BOS', text runs as strings, media runs as (modality, index, n)."""
    out = []
    for run in plan.runs:
        if isinstance(run, MediaRun):
            out.append((run.modality, run.index, run.n_positions))
        else:
            out.append("BOS" if run.token_ids == (BOS,) else text_of(run))
    return out


def test_every_registered_family_has_a_plan_test():
    names = set()
    for path in (Path(__file__).resolve().parents[1] / "exporters" / "families").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["name"] \
                    and isinstance(node.value, ast.Constant) and node.value.value:
                names.add(node.value.value)
    assert names == set(FAMILY_INPUTS)


@pytest.mark.parametrize("family", ["llava", "mobilevlm", "llava-next", "llava-onevision"])
def test_repeat_layout_puts_embeddings_where_the_placeholder_stands(family):
    plan = plan_for(family, "USER: <image>\nWhat? ASSISTANT:", {"image": images(4)})
    assert describe(plan) == ["BOS", "USER: ", ("image", 0, 4), "\nWhat? ASSISTANT:"]
    starts = [r.positions.start for r in plan.runs]
    assert starts == [0, 1, 7, 11] and plan.n_positions == 1 + 6 + 4 + 17


def test_missing_placeholders_put_the_items_first_each_on_its_own_line():
    plan = plan_for("llava", "Compare them.", {"image": images(3, 5)})
    assert describe(plan) == ["BOS", ("image", 0, 3), "\n", ("image", 1, 5), "\nCompare them."]


def test_images_of_different_sizes_get_their_own_positions():
    plan = plan_for("llava", "<image> and <image>", {"image": images(3, 7)})
    media = plan.media_runs("image")
    assert [(r.index, r.n_positions, r.positions.start) for r in media] == [(0, 3, 1), (1, 7, 9)]
    assert plan.n_positions == 1 + 3 + 5 + 7


@pytest.mark.parametrize("prompt, n", [("<image><image>", 1), ("<image>", 2), ("<image> no image", 0)])
def test_placeholder_and_media_counts_must_agree(prompt, n):
    with pytest.raises(PromptError, match="placeholder"):
        plan_for("llava", prompt, {"image": images(*[4] * n)} if n else {})


def test_no_bos_when_the_model_adds_none():
    assert describe(plan_for("llava", "hi <image>", {"image": images(2)}, bos=None)) == ["hi ", ("image", 0, 2)]


def test_gemma3_keeps_its_start_of_image_token_and_marks_the_image_bidirectional():
    plan = plan_for("gemma3", "Compare <start_of_image> and <start_of_image>.", {"image": images(4, 4, crops=0)})
    assert describe(plan) == ["BOS", "Compare \n\n<start_of_image>", ("image", 0, 4),
                              "<end_of_image>\n\n and \n\n<start_of_image>", ("image", 1, 4), "<end_of_image>\n\n."]
    assert [run.bidirectional for run in plan.media_runs()] == [True, True]


def test_gemma3_pan_and_scan_writes_the_processors_sentence_around_the_crops():
    media = {"image": MediaItems(run_lengths=(4, 4, 4), infos=({"crops": 2},))}
    plan = plan_for("gemma3", "<start_of_image>Describe.", media)
    image = "\n\n<start_of_image>"
    assert describe(plan) == [
        "BOS", f"Here is the original image {image}", ("image", 0, 4),
        f"<end_of_image>\n\n and here are some crops to help you see better {image}", ("image", 1, 4),
        f"<end_of_image>\n\n {image}", ("image", 2, 4), "<end_of_image>\n\nDescribe."]
    assert not plan_for("llava", "<image>", {"image": images(4)}).media_runs()[0].bidirectional


def test_paligemma_puts_the_image_before_bos_and_a_newline_after_the_prompt():
    layout = PromptLayout(add_bos=True, stop_token_ids=[2], prompt_suffix="\n", prefix_lm=True)
    inputs = FAMILY_INPUTS["paligemma"]
    rendered = render_prompt("caption en", inputs, layout, {"image": 1})
    plan = build_plan(rendered, inputs, {"image": images(4)}, chars, BOS)
    assert describe(plan) == [("image", 0, 4), "BOS", "caption en\n"]


def test_internvl_wraps_every_placeholder():
    plan = plan_for("internvl", "<IMG_CONTEXT>\nDescribe.", {"image": images(6)})
    assert describe(plan) == ["BOS", "<img>", ("image", 0, 6), "</img>\nDescribe."]


def test_qwen2_audio_wraps_only_bare_placeholders():
    plan = plan_for("qwen2-audio", "<|audio_bos|><|AUDIO|><|audio_eos|> and <|AUDIO|>",
                    {"audio": MediaItems(run_lengths=(5, 7), infos=({}, {}))})
    assert describe(plan) == ["BOS", "<|audio_bos|>", ("audio", 0, 5), "<|audio_eos|> and <|audio_bos|>",
                              ("audio", 1, 7), "<|audio_eos|>"]


def test_voxtral_places_each_clip():
    plan = plan_for("voxtral", "[AUDIO]What was said?", {"audio": MediaItems(run_lengths=(375,), infos=({},))})
    assert describe(plan) == ["BOS", ("audio", 0, 375), "What was said?"]


def test_instructblip_prefix_media_go_before_bos():
    plan = plan_for("instructblip", "What is this?", {"image": images(32)})
    assert describe(plan) == [("image", 0, 32), "BOS", "What is this?"]
    assert plan.runs[1].positions.start == 32
    with pytest.raises(PromptError, match="before the whole prompt"):
        plan_for("instructblip", "<image> What?", {"image": images(32)})


def test_idefics3_grid_one_run_per_tile_then_the_global_image():
    media = MediaItems(run_lengths=(2,) * 5, infos=({"rows": 2, "cols": 2},))
    plan = plan_for("idefics3", "<image>Hi", {"image": media})
    assert describe(plan) == [
        "BOS", "<fake><r1c1>", ("image", 0, 2), "<fake><r1c2>", ("image", 1, 2), "\n<fake><r2c1>", ("image", 2, 2),
        "<fake><r2c2>", ("image", 3, 2), "\n\n<fake><global>", ("image", 4, 2), "<fake>Hi"]


def test_idefics3_small_image_is_the_global_image_alone():
    plan = plan_for("idefics3", "<image>", {"image": MediaItems(run_lengths=(2,), infos=({"rows": 0, "cols": 0},))})
    assert describe(plan) == ["BOS", "<fake><global>", ("image", 0, 2), "<fake>"]


def test_idefics2_crops_between_fake_tokens_doubled_fakes_merged():
    media = MediaItems(run_lengths=(3,) * 5, infos=({"crops": 5},))
    plan = plan_for("idefics2", "User:<image>Hi", {"image": media})
    assert describe(plan) == ["BOS", "User:<fake>", *[x for i in range(5) for x in (("image", i, 3), "<fake>")][:-1],
                              "<fake>Hi"]


def test_tool_text_replaces_the_placeholder_and_is_never_parsed():
    media = {"audio": MediaItems(infos=({},), texts=("what is on <image>?",)),
             "image": MediaItems(infos=({},), texts=("a cat",))}
    plan = plan_for("assistant", "<audio> <image>", media)
    assert describe(plan) == ["BOS", "what is on <image>? a photo of a cat"]
    assert not plan.media_runs()


def test_chat_template_renders_parts_and_placeholders():
    layout = PromptLayout(add_bos=False, stop_token_ids=[], chat_content="parts",
                          chat_template="{% for m in messages %}{% for p in m['content'] %}"
                                        "{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}{% endif %}"
                                        "{% endfor %}{% endfor %}!")
    inputs = FAMILY_INPUTS["llava"]
    rendered = render_prompt("<image>hi", inputs, layout, {"image": 1}, chat=True)
    assert rendered.text == "<image>hi!" and rendered.instruction == "<image>hi!"
    plan = build_plan(rendered, inputs, {"image": images(2)}, chars, None)
    assert describe(plan) == [("image", 0, 2), "hi!"]


def test_empty_text_pieces_make_no_runs():
    assert describe(plan_for("llava", "<image>", {"image": images(2)})) == ["BOS", ("image", 0, 2)]


def test_media_for_a_bundle_without_that_modality_is_refused():
    with pytest.raises(PromptError, match="takes no audio"):
        render_prompt("hi", FAMILY_INPUTS["llava"], LAYOUT, {"audio": 1})


# --- positions and the KV-prefix arithmetic ---------------------------------------------------------


def test_after_skips_whole_runs_and_cuts_the_one_in_between():
    plan = plan_for("llava", "USER: <image>\nWhat?", {"image": images(4)})  # runs of 1, 6, 4, 6 positions
    assert [(type(r).__name__, off) for r, off in plan.after(0)] == [("TextRun", 0), ("TextRun", 0),
                                                                     ("MediaRun", 0), ("TextRun", 0)]
    assert [(type(r).__name__, off) for r, off in plan.after(7)] == [("MediaRun", 0), ("TextRun", 0)]
    assert [(type(r).__name__, off) for r, off in plan.after(9)] == [("MediaRun", 2), ("TextRun", 0)]
    assert [(type(r).__name__, off) for r, off in plan.after(16)] == [("TextRun", 5)]
    assert plan.after(17) == []
    with pytest.raises(ValueError):
        plan.after(-1)


def test_signature_shares_a_prefix_exactly_as_far_as_prompts_agree():
    a = plan_for("llava", "USER: <image>\nWhat?", {"image": images(4)})
    b = plan_for("llava", "USER: <image>\nWhy?", {"image": images(4)})
    kv = KVPrefix()
    kv.set(a.signature({("image", 0): "cat"}))
    same_image = b.signature({("image", 0): "cat"})
    other_image = b.signature({("image", 0): "dog"})
    assert kv.keep_for(same_image) == 1 + 6 + 4 + len("\nWh")
    assert kv.keep_for(other_image) == 1 + 6  # BOS and "USER: " only
    assert kv.keep_for(a.signature({("image", 0): "cat"})) == a.n_positions - 1  # the last position is recomputed
    skip = kv.keep_for(same_image)
    (first, offset), *_ = b.after(skip)
    assert text_of(first)[offset:] == "y?"


def test_qwen_vl_images_take_grid_positions_and_text_goes_on_after_the_largest():
    media = MediaItems(run_lengths=(6, 4), infos=({}, {}), grids=((1, 2, 3), (1, 2, 2)))
    plan = plan_for("qwen2-vl", "Hi<|image_pad|>and<|image_pad|>?", {"image": media})
    assert describe(plan) == ["BOS", "Hi<|vision_start|>", ("image", 0, 6), "<|vision_end|>and<|vision_start|>",
                              ("image", 1, 4), "<|vision_end|>?"]
    first, second = plan.media_runs()
    start = 1 + len("Hi<|vision_start|>")
    assert first.positions.ids().tolist() == [[start] * 6, [start] * 3 + [start + 1] * 3,
                                              [start, start + 1, start + 2] * 2]
    after = plan.runs[3]  # the text after the first image goes on from its largest position + 1
    assert after.positions.start == start + 3 and second.positions.start == after.positions.start + after.n_positions
    assert plan.multi_axis and plan.next_position == second.positions.stop + len("<|vision_end|>?")
    assert plan.n_positions == sum(r.n_positions for r in plan.runs) > plan.next_position


def test_qwen3_vl_video_frames_each_behind_their_time():
    wrap = {"before": "<|vision_start|>", "after": "<|vision_end|>"}
    inputs = {"video": spec("<|video_pad|>", pre="qwen-vl-video", positions="mrope", wrap_if_missing=wrap,
                            **{"kind": "timestamped-frames"})}
    media = {"video": MediaItems(run_lengths=(4, 4), infos=({"timestamps": [0.25, 1.25]},),
                                 grids=((1, 2, 2), (1, 2, 2)), t_index=((0,), (0,)))}
    for prompt in ("<|vision_start|><|video_pad|><|vision_end|>Why?", "<|video_pad|>Why?"):  # wrapped or bare
        rendered = render_prompt(prompt, inputs, LAYOUT, {"video": 1})
        plan = build_plan(rendered, inputs, media, chars, None)
        assert describe(plan) == ["<0.2 seconds><|vision_start|>", ("video", 0, 4),
                                  "<|vision_end|><1.2 seconds><|vision_start|>", ("video", 1, 4), "<|vision_end|>Why?"]
        first, second = plan.media_runs()  # each patch like a one-frame image: t stays at its start
        assert first.positions.ids()[0].tolist() == [first.positions.start] * 4
        assert second.positions.start == first.positions.stop + len("<|vision_end|><1.2 seconds><|vision_start|>")


def test_multi_axis_positions_continue_after_the_largest():
    axes = np.array([[5, 5, 5, 5], [5, 5, 6, 6], [5, 6, 5, 6]], np.int32)  # t, h, w of a 2x2 grid
    pos = Positions(5, 4, axes)
    assert pos.stop == 7 and pos.ids().shape == (3, 4)
    assert Positions(3, 2).stop == 5 and Positions(3, 2).ids().tolist() == [[3, 4]]


def test_layout_reads_old_manifests_and_writes_them_back():
    raw = {"kind": "idefics2-crops", "fake_token": "<f>", "collapse": [["<f><f>", "<f>"]]}
    layout = Layout.from_dict(raw, "layout")
    assert layout.kind is LayoutKind.IDEFICS2_CROPS and layout.to_dict() == raw and layout["fake_token"] == "<f>"
    assert Layout.from_dict({"kind": "text", "template": "{text}"}, "l").to_dict() == {"kind": "text",
                                                                                       "template": "{text}"}
