"""BERT WordPiece tokenization in pure Python (the Q-Former's text input, on the device).

Follows the BERT normaliser and pre-tokeniser of HF ``tokenizers`` (``BertTokenizerFast``): drop
control characters and NUL/U+FFFD, map whitespace to spaces, put spaces around CJK ideographs,
lowercase and strip accents when asked, split on whitespace and on every punctuation character,
then greedy longest-match-first WordPiece with ``##`` continuations (a word that cannot be
matched, or is longer than 100 characters, becomes ``[UNK]``). Output: ``[CLS] ... [SEP]``.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from edgebridge.errors import BundleError


def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    def __init__(self, vocab: dict[str, int], *, lowercase: bool = True, strip_accents: bool | None = None,
                 unk: str = "[UNK]", cls: str = "[CLS]", sep: str = "[SEP]", max_chars: int = 100) -> None:
        self.vocab = vocab
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.unk, self.cls, self.sep = vocab[unk], vocab[cls], vocab[sep]
        self.max_chars = max_chars

    @classmethod
    def from_file(cls, path: Path, **options) -> "WordPiece":
        try:
            tokens = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"cannot read the WordPiece vocabulary '{path}' ({exc}).") from None
        return cls({t: i for i, t in enumerate(tokens)}, **options)

    def _normalise(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = "".join(out)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        return text.lower() if self.lowercase else text

    def _words(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in self._normalise(text).split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """``[CLS] pieces [SEP]``, truncated to ``max_length`` (keeping ``[SEP]``) when given."""
        ids = [piece for word in self._words(text) for piece in self._pieces(word)]
        if max_length is not None and len(ids) + 2 > max_length:
            ids = ids[: max(0, max_length - 2)]
        return [self.cls, *ids, self.sep]
