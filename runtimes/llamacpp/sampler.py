"""llama.cpp's sampler chain on any logits (ours come from llama.cpp or from the prefill graph).

The chain is llama.cpp's own (penalties, top-k, top-p, min-p, temperature, a seeded draw), applied to a
token-data array filled from the logits with one numpy copy (``llama_sampler_apply``), so a seed gives
the same tokens as in llama.cpp's tools and no sampler is written by hand. One ``Sampler`` serves one
generation: it keeps the generated tokens the penalties look at, and is freed at the end.
"""

from __future__ import annotations

import ctypes
import random

import numpy as np

from edgebridge.errors import BackendError
from edgebridge.runtimes.llamacpp._lib import llama
from edgebridge.sampling import GenerationConfig

TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama.h: llama_token_data


class Sampler:
    def __init__(self, config: GenerationConfig, n_vocab: int) -> None:
        self.lib = lib = llama()
        self.n_vocab = n_vocab
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if not self.chain:
            raise BackendError("llama.cpp could not create a sampler chain.")
        links = []
        if config.repetition_penalty != 1 or config.presence_penalty or config.frequency_penalty:
            links.append(lib.llama_sampler_init_penalties(n_vocab, config.penalty_last_n, config.repetition_penalty,
                                                          config.frequency_penalty, config.presence_penalty))
        if config.top_k:
            links.append(lib.llama_sampler_init_top_k(config.top_k))
        if config.top_p < 1:
            links.append(lib.llama_sampler_init_top_p(config.top_p, 1))
        if config.min_p > 0:
            links.append(lib.llama_sampler_init_min_p(config.min_p, 1))
        links.append(lib.llama_sampler_init_temp(config.temperature))
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 32)
        links.append(lib.llama_sampler_init_dist(seed))
        for link in links:
            lib.llama_sampler_chain_add(self.chain, link)  # the chain owns its links
        self.data = np.empty(n_vocab, TOKEN_DATA)
        self.data["id"] = np.arange(n_vocab, dtype=np.int32)
        self.array = self.lib.llama_token_data_array(
            data=self.data.ctypes.data_as(ctypes.POINTER(self.lib.llama_token_data)), size=n_vocab,
            selected=-1, sorted=False)

    def choose(self, logits: np.ndarray) -> int:
        """The next token for ``logits [V]``; remembered for the penalties."""
        self.data["id"] = np.arange(self.n_vocab, dtype=np.int32)  # samplers sort and cut the array in place
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.array.data = self.data.ctypes.data_as(ctypes.POINTER(self.lib.llama_token_data))
        self.array.size, self.array.selected, self.array.sorted = self.n_vocab, -1, False
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(self.array))
        if not 0 <= self.array.selected < self.array.size:
            raise BackendError("llama.cpp's sampler chain selected no token.")
        token = int(self.array.data[self.array.selected].id)
        self.lib.llama_sampler_accept(self.chain, token)
        return token

    def close(self) -> None:
        if self.chain:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
