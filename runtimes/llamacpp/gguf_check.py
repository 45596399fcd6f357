"""GGUF validation in Python, before llama.cpp sees the file.

llama.cpp fails cleanly on truncated or garbage files, but a *valid* GGUF with the wrong
architecture label runs and answers wrong, and a wrong embedding width over-reads the heap when
embeddings are injected. We read the header and tensor table with gguf-py's reader and check
what the bundle expects: architecture, embedding width, the tensors every decoder needs, and
that every tensor's data lies inside the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.errors import CorruptArtifactError

GGUF_MAGIC = b"GGUF"
REQUIRED_TENSORS = ("token_embd.weight", "output_norm.weight")


@dataclass
class GgufInfo:
    architecture: str
    n_embd: int
    n_layer: int
    n_ctx_train: int
    vocab_size: int
    file_type: int | None
    tensor_types: dict[str, int]
    n_tensors: int
    name: str | None
    n_head: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    weight_bytes: int = 0  # every tensor's data
    token_embd_bytes: int = 0
    output_tied: bool = False  # no output.weight: token_embd doubles as the output matrix
    n_deepstack: int = 0  # qwen3vl: input rows carry this many more n_embd-wide slices
    # SentencePiece vocabulary that prepends U+2581 to text (llama.cpp's default for SPM): the first piece
    # of an answer then starts with a space that transformers' decoder strips
    space_prefix: bool = False

    @property
    def n_embd_inp(self) -> int:
        """The width of one input embedding row (llama.cpp's ``n_embd_inp``)."""
        return self.n_embd * (1 + self.n_deepstack)

    def bytes_read_per_token(self, n_past: int, kv_bytes_per_value: float) -> float:
        """Bytes a decode step reads: every weight except the embedding rows it does not gather
        (one row; all of it when tied to the output), plus the K and V caches up to ``n_past``."""
        weights = self.weight_bytes - (0 if self.output_tied else self.token_embd_bytes)
        kv = 2 * self.n_layer * self.n_head_kv * self.head_dim * n_past * kv_bytes_per_value
        return float(weights + kv)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    return value


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse the GGUF header and tensor table; raise ``CorruptArtifactError`` on anything odd."""
    path = Path(path)
    reader = _open_reader(path)
    try:
        info, names = _describe(reader, path.stat().st_size)
    except Exception as exc:  # gguf-py raises ValueError/IndexError/struct errors on bad data
        raise CorruptArtifactError(
            f"GGUF file '{path.name}' is corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]}).",
            hint="Re-export the bundle or re-download the GGUF.",
        ) from None
    _check_decoder(info, names, reader, path)
    _check_hyperparameters(reader, info, path)
    return info


def _open_reader(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise CorruptArtifactError(f"GGUF file '{path}' does not exist.")
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise CorruptArtifactError(
                f"'{path.name}' is not a GGUF file (bad magic).", hint="Pass a .gguf file written by llama.cpp tools."
            )
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # noqa: BLE001 - any parse failure of the header is a corrupt file
        raise CorruptArtifactError(
            f"GGUF file '{path.name}' is corrupt or truncated ({type(exc).__name__}: {str(exc)[:200]}).",
            hint="Re-export the bundle or re-download the GGUF.",
        ) from None


def _describe(reader: Any, size: int) -> tuple[GgufInfo, set[str]]:
    """(the header's facts, the tensor names); raises ``ValueError`` on a tensor past the end of the file."""
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ValueError("no general.architecture")
    types: dict[str, int] = {}
    names = set()
    weight_bytes = embd_bytes = 0
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise ValueError(f"tensor {t.name} extends past the end of the file")
        types[t.tensor_type.name.lower()] = types.get(t.tensor_type.name.lower(), 0) + 1
        names.add(t.name)
        weight_bytes += int(t.n_bytes)
        if t.name == "token_embd.weight":
            embd_bytes = int(t.n_bytes)
    n_embd = _field(reader, f"{arch}.embedding_length")
    n_layer = _field(reader, f"{arch}.block_count")
    n_head = int(_field(reader, f"{arch}.attention.head_count") or 0)
    key_length = _field(reader, f"{arch}.attention.key_length")
    info = GgufInfo(
        architecture=arch,
        n_embd=int(n_embd) if n_embd is not None else -1,
        n_layer=int(n_layer) if n_layer is not None else -1,
        n_ctx_train=int(_field(reader, f"{arch}.context_length") or 0),
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in reader.fields else 0,
        file_type=_field(reader, "general.file_type"),
        tensor_types=types,
        n_tensors=len(reader.tensors),
        name=_field(reader, "general.name"),
        n_head=n_head,
        n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv") or n_head),
        head_dim=int(key_length) if key_length else (int(n_embd) // n_head if n_head and n_embd else 0),
        weight_bytes=weight_bytes,
        token_embd_bytes=embd_bytes,
        output_tied="output.weight" not in names,
        n_deepstack=int(_field(reader, f"{arch}.n_deepstack_layers") or 0),
        space_prefix=_field(reader, "tokenizer.ggml.model") == "llama"
        and bool(_field(reader, "tokenizer.ggml.add_space_prefix") in (None, True, 1)),
    )
    return info, names


def _check_decoder(info: GgufInfo, names: set[str], reader: Any, path: Path) -> None:
    """Refuse a GGUF that lacks what a decoder LLM with embedding input needs."""
    missing = [t for t in REQUIRED_TENSORS if t not in names]
    if missing or info.n_embd <= 0 or info.n_layer <= 0 or info.vocab_size <= 0:
        raise CorruptArtifactError(
            f"GGUF file '{path.name}' lacks what a decoder LLM needs "
            f"(missing tensors: {missing or 'none'}, n_embd={info.n_embd}, n_layer={info.n_layer}, "
            f"vocab={info.vocab_size}).",
            hint="Pass a decoder LLM GGUF with its tokenizer.",
        )
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    if int(np.asarray(token_embd.shape)[0]) != info.n_embd:
        raise CorruptArtifactError(
            f"GGUF file '{path.name}': token_embd width {int(token_embd.shape[0])} differs from "
            f"embedding_length {info.n_embd}."
        )


def _check_hyperparameters(reader: Any, info: GgufInfo, path: Path) -> None:
    """Refuse the values llama.cpp asserts on (an abort kills the process) or silently misreads."""
    arch = info.architecture
    problems = []
    for key in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = _field(reader, f"{arch}.{key}")
        if eps is not None and not (isinstance(eps, (int, float)) and 0 < float(eps) < 1):
            problems.append(f"{key} = {eps!r} (must be in (0, 1))")
    base = _field(reader, f"{arch}.rope.freq_base")
    if base is not None and not (isinstance(base, (int, float)) and np.isfinite(base) and base > 0):
        problems.append(f"rope.freq_base = {base!r} (must be positive)")
    if info.n_head <= 0 or info.n_head_kv <= 0 or info.n_head % info.n_head_kv:
        problems.append(f"head_count {info.n_head} / head_count_kv {info.n_head_kv} (positive, kv dividing heads)")
    if info.head_dim <= 0 or info.head_dim % 2:
        problems.append(f"head dimension {info.head_dim} (positive and even)")
    if not 0 < info.n_layer <= 4096 or not 0 < info.n_ctx_train <= 1 << 24:
        problems.append(f"block_count {info.n_layer} / context_length {info.n_ctx_train} out of range")
    sections = _field(reader, f"{arch}.rope.dimension_sections")
    if sections is not None and (any(int(s) < 0 for s in sections) or sum(int(s) for s in sections) > info.head_dim // 2):
        problems.append(f"rope.dimension_sections {list(sections)} (non-negative, at most head_dim / 2 in all)")
    if problems:
        raise CorruptArtifactError(f"GGUF file '{path.name}' has hyperparameters llama.cpp cannot run: "
                                   f"{'; '.join(problems)}.", hint="The GGUF is damaged or was edited; re-export it.")


def check_expected(info: GgufInfo, path: Path, *, architecture: str | None = None, n_embd: int | None = None) -> None:
    """Refuse a GGUF whose architecture or width differs from what the bundle expects."""
    if architecture is not None and info.architecture != architecture:
        raise CorruptArtifactError(
            f"GGUF file '{Path(path).name}' is labelled architecture '{info.architecture}', "
            f"the bundle expects '{architecture}'.",
            hint="A GGUF with the wrong architecture label runs but answers wrong; re-export the bundle.",
        )
    if n_embd is not None and info.n_embd_inp != n_embd:
        raise CorruptArtifactError(
            f"GGUF file '{Path(path).name}' has embedding width {info.n_embd_inp}, the bundle's encoders "
            f"produce {n_embd}.",
            hint="Use the LLM the encoders were trained with.",
        )
