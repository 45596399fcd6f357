"""Preprocessing kinds, looked up by the manifest's ``preprocessing.kind``.

Each module in this package may register kinds with ``@register_preprocessor``; modules are
imported on first lookup, so a new kind is one new file. A preprocessor turns a list of user
items (images, audio clips) into the encoder graph's input arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from edgebridge.errors import InputError, ManifestError
from edgebridge.registry import discover


@dataclass
class Prepared:
    """Encoder inputs for a batch of items, and what each item becomes in the prompt."""

    inputs: dict[str, np.ndarray]
    tokens_per_item: list[int] | None = None  # None: the manifest's fixed count for every item
    info: list[dict[str, Any]] = field(default_factory=list)  # per item, e.g. original size, tiles
    item_rows: list[slice] | None = None  # encoder batch rows of each item (None: item i is row i)
    runs: list[dict[str, np.ndarray]] | None = None  # inputs too different to batch: one encoder run each
    run_items: list[int] | None = None  # with runs: how many items each run's output holds (default one)
    # the host side of a bridge (LLaVA-NeXT's unpad + newlines): (item's output rows, its info, the
    # component's bridge record) -> its embeddings
    pack: Callable[[np.ndarray, dict[str, Any], Mapping[str, Any]], np.ndarray] | None = None
    cache_key: str | None = None  # the embedding cache's key, once computed (``EncoderStage.run``)

    def item_embeddings(self, out: np.ndarray, fixed_tokens: int,
                        bridge: Mapping[str, Any] | None = None) -> list[np.ndarray]:
        """Split the encoder output ``[rows, N, D]`` into one ``[n_i, D]`` array per item."""
        rows = self.item_rows or [slice(i, i + 1) for i in range(out.shape[0])]
        counts = self.tokens_per_item or [fixed_tokens] * len(rows)
        if self.pack is not None:
            items = [self.pack(out[r], info, bridge or {}) for r, info in zip(rows, self.info)]
            for item, n in zip(items, counts):
                if item.shape[0] != n:  # the plan numbered n positions for it
                    raise ManifestError(f"the packed image has {item.shape[0]} embeddings, the prompt plan {n}.",
                                        hint="The bundle's anyres settings disagree with its graph; re-export it.")
            return items
        return [out[r].reshape(-1, out.shape[-1])[:n] for r, n in zip(rows, counts)]


@dataclass(frozen=True)
class MediaOptions:
    """One call's choices about how its media are cut; a preprocessing kind declares which it takes.

    ``min_image_tokens`` / ``max_image_tokens``: the LLM positions one image may cost (native-resolution
    models; default: the model's processor config). ``video_fps`` / ``max_frames``: how a video is sampled.
    ``pan_and_scan``: Gemma 3's extra crops of an elongated image (off unless asked, as its processor).
    """

    min_image_tokens: int | None = None
    max_image_tokens: int | None = None
    video_fps: float | None = None
    max_frames: int | None = None
    pan_and_scan: bool | None = None

    def given(self) -> list[str]:
        return [name for name, value in self.__dict__.items() if value is not None]

    def check(self) -> "MediaOptions":
        for name in self.given():
            value = getattr(self, name)
            if name == "pan_and_scan":
                if not isinstance(value, bool):
                    raise InputError(f"pan_and_scan must be true or false, got {value!r}.")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value != value:
                raise InputError(f"{name} must be a positive number, got {value!r}.")
        if self.min_image_tokens and self.max_image_tokens and self.min_image_tokens > self.max_image_tokens:
            raise InputError(f"min_image_tokens ({self.min_image_tokens}) is above max_image_tokens "
                             f"({self.max_image_tokens}).")
        return self


Preprocessor = Callable[..., Prepared]  # (items, spec) -> Prepared; kinds that take options: (items, spec, options)
_KINDS: dict[str, Preprocessor] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}  # kind -> the MediaOptions it takes


def register_preprocessor(kind: str, options: tuple[str, ...] = ()) -> Callable[[Preprocessor], Preprocessor]:
    def deco(fn: Preprocessor) -> Preprocessor:
        _KINDS[kind] = fn
        _OPTIONS[kind] = options
        return fn

    return deco


def get_preprocessor(kind: str) -> Preprocessor:
    discover(__name__, __path__)
    if kind not in _KINDS:
        raise ManifestError(
            f"the bundle needs preprocessing kind '{kind}', which this edgebridge does not have.",
            hint=f"Known kinds: {', '.join(sorted(_KINDS))}. Upgrade edgebridge.",
        )
    return _KINDS[kind]


def preprocess(kind: str, items: list[Any], spec: dict[str, Any], options: MediaOptions | None = None) -> Prepared:
    """Run the ``kind`` preprocessor; ``options`` it does not take are refused, by name."""
    fn = get_preprocessor(kind)
    given = (options or MediaOptions()).check().given()
    refused = [name for name in given if name not in _OPTIONS[kind]]
    if refused:
        raise InputError(f"{', '.join(refused)} does not apply to this bundle: its '{kind}' preprocessing does "
                         "not take it.", hint="Leave the option out for this bundle.")
    try:
        return fn(items, spec, options) if _OPTIONS[kind] else fn(items, spec)
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError) as exc:  # not ours: the bundle's numbers
        raise ManifestError(f"the bundle's '{kind}' preprocessing settings are invalid "
                            f"({type(exc).__name__}: {str(exc)[:200]}).", hint="Re-export the bundle.") from None
