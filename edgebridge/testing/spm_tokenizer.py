"""Offline SentencePiece BPE tokenizers for tiny test models: Gemma's form and the legacy Llama form.

Gemma's real tokenizer is a SentencePiece BPE model that transformers converts to a ``tokenizer.json``
(``GemmaConverter``): spaces normalized to U+2581 (nothing prepended), byte fallback to ``<0xNN>``
pieces, merges generated from the piece scores by transformers' own ``generate_merges``. We train a
small piece vocabulary on the shared corpus and convert it the same way, so the GGUF writer's SPM path
(scores recovered from merges, llama.cpp's ``llama`` tokenizer) is exercised as for a real checkpoint.
The legacy Llama form (``LlamaConverter``, Llama 2 / Mistral / Phi-3 / Vicuna): ``<unk> <s> </s>`` first,
U+2581 prepended to every piece of text between special tokens, then spaces replaced.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from edgebridge.testing.tokenizer import CORPUS

SPACE = "\u2581"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0-3, as in Gemma's vocabulary
TURN_TOKENS = ["<start_of_turn>", "<end_of_turn>"]

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def _trained_pieces(n_pieces: int) -> list[str]:
    """Pieces of a BPE trained on the corpus with spaces as U+2581 attached to the following word,
    in training order (characters first, then merges): SentencePiece's score order."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(f"{SPACE}?[^{SPACE}\\d]+|\\d|{SPACE}+"), behavior="isolated"),
    ])
    trainer = trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False)
    lines = [line for line in CORPUS.strip().splitlines() if line]
    trainer_tok.train_from_iterator(lines * 4, trainer=trainer)
    vocab = trainer_tok.get_vocab()
    return sorted(vocab, key=vocab.get)


LLAMA_SPECIALS = ["<unk>", "<s>", "</s>"]


def build_spm_tokenizer(extra_special: list[str], n_pieces: int = 360, form: str = "gemma") -> Tokenizer:
    """The converted tokenizer: specials, 256 byte pieces, trained pieces; merges as transformers makes them."""
    from transformers.convert_slow_tokenizer import generate_merges

    pieces = [p for p in _trained_pieces(n_pieces) if p not in ("\t",)]
    specials = LLAMA_SPECIALS if form == "llama" else SPECIALS + TURN_TOKENS
    bos = "<s>" if form == "llama" else "<bos>"
    table = specials + list(extra_special) + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(table)}
    scores = {}
    for rank, piece in enumerate(pieces):
        if piece not in vocab:
            vocab[piece] = len(vocab)
            scores[piece] = -float(rank)
    merges = generate_merges(vocab, scores)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if form == "llama":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
        tok.decoder = decoders.Sequence([*decode, decoders.Strip(" ", 1, 0)])
    else:
        tok.normalizer = normalizers.Replace(" ", SPACE)
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
        tok.decoder = decoders.Sequence(decode)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + list(extra_special)])
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, vocab[bos])])
    return tok


def hf_llama_spm_tokenizer(extra_special: list[str], chat_template: str | None = None):
    """The legacy Llama form as transformers' ``LlamaTokenizerFast``."""
    from transformers import LlamaTokenizerFast

    return LlamaTokenizerFast(tokenizer_object=build_spm_tokenizer(extra_special, form="llama"),
                              bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
                              additional_special_tokens=list(extra_special), add_bos_token=True,
                              add_eos_token=False, legacy=True, chat_template=chat_template,
                              model_max_length=4096, clean_up_tokenization_spaces=False)


def hf_spm_tokenizer(extra_special: list[str], chat_template: str = GEMMA_CHAT_TEMPLATE,
                     named: dict[str, str] | None = None):
    """Wrap it as transformers' ``GemmaTokenizerFast`` (what Gemma checkpoints load); ``named``: special
    tokens the processor reads as tokenizer attributes (Gemma 3's ``boi_token``, ``image_token``...)."""
    from transformers import GemmaTokenizerFast

    return GemmaTokenizerFast(
        tokenizer_object=build_spm_tokenizer(extra_special),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=TURN_TOKENS + list(extra_special),
        add_bos_token=True, add_eos_token=False,
        chat_template=chat_template, model_max_length=4096, clean_up_tokenization_spaces=False,
        **({"extra_special_tokens": named} if named else {}),
    )
