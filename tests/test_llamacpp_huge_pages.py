"""runtimes/llamacpp/patches/0005 and ``LlamaSettings.mmap_weights``: ggml's large CPU buffers are 2 MiB
aligned and advised for transparent huge pages, and the runtime reads the weights into such a buffer
instead of mapping the GGUF (4 KiB page-cache pages), because a decode step streams every weight."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from tests.conftest import ggml_base_library

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE = 2 << 20


def _thp_mode() -> str | None:
    """The bracketed mode of the kernel's transparent huge pages (always / madvise / never), None if absent."""
    if not THP.is_file():
        return None
    found = re.search(r"\[(\w+)\]", THP.read_text())
    return found.group(1) if found else None


def _vm_flags(address: int) -> list[str]:
    """The kernel's VmFlags of the mapping holding ``address`` in this process ("hg": advised for huge pages)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        span = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if span:
            inside = int(span.group(1), 16) <= address < int(span.group(2), 16)
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _ggml_base():
    base = ggml_base_library()
    base.ggml_aligned_malloc.restype, base.ggml_aligned_malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    base.ggml_aligned_free.restype, base.ggml_aligned_free.argtypes = None, [ctypes.c_void_p, ctypes.c_size_t]
    return base


def test_large_buffers_are_huge_page_aligned_and_advised():
    if _thp_mode() not in ("always", "madvise"):
        pytest.skip(f"transparent huge pages are {_thp_mode() or 'absent'} on this kernel")
    base, size = _ggml_base(), 4 * HUGE
    small = base.ggml_aligned_malloc(4096)
    address = base.ggml_aligned_malloc(size)
    try:
        assert address % HUGE == 0, f"{address:#x} is not 2 MiB aligned"
        # advice, not a guarantee: whether the kernel then has huge pages to give depends on its memory
        assert "hg" in _vm_flags(address), _vm_flags(address)
        assert small % 64 == 0  # small buffers as before (their mapping may hold advised neighbours)
    finally:
        base.ggml_aligned_free(address, size)
        base.ggml_aligned_free(small, 4096)


@pytest.mark.parametrize("mapped", [False, True])
def test_weights_are_read_unless_mapping_is_asked(wide_llama_gguf, mapped):
    settings = LlamaSettings(n_ctx=128, mmap_weights=mapped)
    with LlamaCppLLM(wide_llama_gguf, settings) as llm:
        buffers = llm.report.details["weight_buffers_mib"]
        logits = llm.eval_tokens(list(range(1, 9)))
    assert llm.report.details["mmap_weights"] is mapped
    assert ("CPU_Mapped" in buffers) is mapped, buffers  # llama.cpp names a read buffer "CPU"
    assert logits is not None and logits.shape[-1] > 0


def test_read_and_mapped_weights_give_the_same_logits(wide_llama_gguf):
    runs = []
    for mapped in (False, True):
        with LlamaCppLLM(wide_llama_gguf, LlamaSettings(n_ctx=128, mmap_weights=mapped, threads=1)) as llm:
            runs.append(llm.eval_tokens(list(range(1, 9))).copy())
    assert (runs[0] == runs[1]).all()
