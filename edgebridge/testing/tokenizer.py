"""Offline byte-level BPE tokenizers for tiny test models.

Trained in-process on a fixed English corpus, so a test never needs a hub. Two flavours
mirror the pre-tokenizers of real model families, so the GGUF tokenizer path is exercised
the way it is for real checkpoints:

- ``"llama-bpe"``: the Llama 3 split regex, adds a BOS token;
- ``"qwen2"``: the Qwen2 split regex (single digits), no BOS.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Split regexes as the families' tokenizer.json files spell them.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = """
The cat sat on the mat and looked at the picture. What is in this image? Describe the photo in detail.
A person is standing next to a red car on a sunny day. The sky is blue and there are white clouds.
There is a cup of coffee on the table, and a rocket is launching into space in the distance.
Question: how many animals are there in the picture? Answer: there are two dogs and one cat.
The astronaut floats above the earth. The camera shows a man holding a camera on a field of grass.
User: what colour is the cat? Assistant: the cat is orange with dark stripes and green eyes.
Numbers like 1, 2, 3, 10, 42, 100, 2024 and 3.14159 appear in text; so do symbols: #, @, %, &, (, ), [, ].
Please listen to the audio and transcribe it. The speaker says hello world, how are you today?
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.
Edge devices run small models quickly: phones, laptops, cameras and cars all need fast answers.
"""

SPECIAL_TOKENS = {
    "bos": "<|begin_of_text|>",
    "eos": "<|end_of_text|>",
    "pad": "<|pad|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
}

def chatml_template(image: str = "<image>", audio: str = "<|AUDIO|>") -> str:
    """A ChatML chat template (the style both families use); content is a string or a list of parts,
    and image/audio parts render as the model's placeholder."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif part['type'] == 'audio' %}{{ '" + audio + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chatml_template()


def build_tokenizer(flavour: str, extra_special: list[str], vocab_size: int = 480) -> Tokenizer:
    """A trained byte-level BPE ``Tokenizer`` with the family's pre-tokenizer and special tokens."""
    split = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}.get(flavour)
    if split is None:
        raise ValueError(f"unknown tokenizer flavour {flavour!r}")
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values()) + list(extra_special)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.strip().splitlines() if line]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    if flavour == "llama-bpe":
        bos = SPECIAL_TOKENS["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def hf_tokenizer(flavour: str, extra_special: list[str], chat_template: str = CHAT_TEMPLATE):
    """Wrap the trained tokenizer as a transformers ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    tok = build_tokenizer(flavour, extra_special)
    has_bos = flavour == "llama-bpe"
    eos = SPECIAL_TOKENS["im_end"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"] if has_bos else None,
        eos_token=eos,
        pad_token=SPECIAL_TOKENS["pad"],
        additional_special_tokens=[SPECIAL_TOKENS["im_start"], SPECIAL_TOKENS["im_end"], *extra_special],
        chat_template=chat_template,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )
