"""Resident memory: the KV cache grows with the sequence, and a closed pipeline holds nothing.

``n_ctx`` is a limit, not an allocation.

llama.cpp clears a context's whole cache when it creates it, so every cell costs resident memory from
the start; ``LlamaCppLLM`` allocates ``first_cells`` (llama.cpp pads to 256) and doubles when a decode
needs more, carrying the cached cells over through llama.cpp's sequence state. What must hold: the
same logits and ids as a context allocated at once, across growth in a prompt, in the decode loop and
on an M-RoPE model (cells and positions differ); the limit still refused; memory actually saved.
``Pipeline.close`` frees every engine at once.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgebridge.errors import ContextOverflowError
from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings
from tests.conftest import exported, run_isolated

SMALL = dict(first_cells=8, n_batch=64, n_ubatch=64)  # first context: llama.cpp's 256 cells


def _greedy(llm: LlamaCppLLM, prompt: list[int], n: int) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Logits of every prompt position, ``n`` greedy ids, the last step's logits."""
    rows = llm.eval_tokens(prompt, logits="all")
    ids, last = [], rows[-1]
    for _ in range(n):
        ids.append(int(np.argmax(last)))
        last = llm.step(ids[-1]).copy()
    return rows, ids, last


def test_growing_cache_gives_what_one_allocation_gives(clip_llama_f32):
    gguf = clip_llama_f32.bundle / "llm.gguf"
    prompt = np.random.default_rng(0).integers(1, 200, 300).tolist()  # past the first 256 cells
    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=1024, first_cells=None)) as whole:
        want = _greedy(whole, prompt, 300)
        assert whole.kv_cells >= 1024
    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=1024, **SMALL)) as grown:
        assert grown.kv_cells == 256 and grown.report.details["kv_cells_at_start"] == 256
        got = _greedy(grown, prompt, 300)  # 300 prompt cells: 512; the decode loop passes 512: 1024
        assert grown.kv_cells == 1024
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    assert got[1] == want[1]
    np.testing.assert_allclose(got[2], want[2], atol=1e-5)


def test_limit_is_refused_and_cache_kept_after_growth(clip_llama_f32):
    gguf = clip_llama_f32.bundle / "llm.gguf"
    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=300, **SMALL)) as llm:
        llm.eval_tokens(list(range(1, 200)))
        llm.eval_tokens(list(range(1, 90)))  # grows to 300 (the limit) within one call
        assert llm.kv_cells >= 300 and llm.n_past == 288
        with pytest.raises(ContextOverflowError, match="context holds 300"):
            llm.eval_tokens(list(range(1, 20)))
        for _ in range(12):
            llm.step(5)
        with pytest.raises(ContextOverflowError):
            llm.step(5)
        llm.reset(keep=199)  # the first 199 cells survived the growth: the same next-token logits
        np.testing.assert_allclose(llm.eval_tokens([7]), _after(gguf, list(range(1, 200)) + [7]), atol=1e-4)


def _after(gguf, ids: list[int]) -> np.ndarray:
    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=512, first_cells=None)) as llm:
        return llm.eval_tokens(ids)


def test_mrope_cells_and_positions_survive_growth(workdir):
    """Qwen2.5-VL: media rows share positions, so ``next_pos`` trails ``n_past``; both carry over."""
    gguf = exported(workdir, "qwen2.5-vl").bundle / "llm.gguf"
    rng = np.random.default_rng(1)

    def run(settings: LlamaSettings) -> tuple[list[int], int, int]:
        with LlamaCppLLM(gguf, settings) as llm:
            llm.eval_tokens(rng_ids(llm, 5))
            grid = np.stack(np.meshgrid(np.arange(12), np.arange(20), indexing="ij")).reshape(2, -1)
            pos = np.vstack([np.zeros(240, np.int64), grid]) + llm.next_pos
            llm.eval_embeddings(emb.astype(np.float32), positions=pos)
            _, ids, _ = _greedy(llm, rng_ids(llm, 40), 40)
            return ids, llm.n_past, llm.next_pos

    def rng_ids(llm, n):
        return np.random.default_rng(n).integers(1, llm.n_vocab - 1, n).tolist()

    with LlamaCppLLM(gguf, LlamaSettings.strict(n_ctx=64)) as probe:
        emb = rng.standard_normal((240, probe.n_embd)) * 0.5
    want = run(LlamaSettings.strict(n_ctx=1024, first_cells=None))
    got = run(LlamaSettings.strict(n_ctx=1024, **SMALL))
    assert got == want and want[1] == 325 and want[2] < want[1]


def test_resident_memory_follows_the_cache_in_use(clip_llama_f32):
    """What the change is for, measured in a fresh process: the 4096-position default no longer
    costs its whole cache at load (llama.cpp clears it: every page touched)."""
    code = (
        "import sys\n"
        "from edgebridge.runtimes.llamacpp import LlamaCppLLM, LlamaSettings\n"
        "def anon():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon'))\n"
        "before = anon()\n"
        "llm = LlamaCppLLM(sys.argv[1], LlamaSettings(n_ctx=8192, first_cells=None if sys.argv[2] == 'all' else 512))\n"
        "print(anon() - before, llm.kv_cells)\n"
    )
    gguf = str(clip_llama_f32.bundle / "llm.gguf")
    (all_kib, all_cells), (grow_kib, grow_cells) = (
        map(int, run_isolated(code, gguf, mode).stdout.split()) for mode in ("all", "grow"))
    with LlamaCppLLM(gguf, LlamaSettings(n_ctx=64)) as llm:
        per_cell = llm.info.bytes_read_per_token(1, 2.0) - llm.info.bytes_read_per_token(0, 2.0)
    assert (all_cells, grow_cells) == (8192, 512)
    saved = (all_kib - grow_kib) * 1024
    assert saved >= 0.8 * per_cell * (8192 - 512), (saved, per_cell)



def test_close_frees_every_engine_at_once(workdir, clip_llama_f32, photo):
    """``Pipeline.close`` drops the encoder sessions, the prefill graph and llama.cpp's context at once,
    not when the garbage collector finds the pipeline (the collector is off here): a process opening one
    pipeline after another must not hold both (the bench LLaVA's pipeline held 259 MB after close before)."""
    import gc
    import weakref

    from edgebridge import Pipeline
    from tests.conftest import exported_llava

    graph_bundle = exported_llava(workdir, ("clip", "qwen2"), "f16", prefill="int8").bundle
    gc.collect()
    gc.disable()
    try:
        for bundle, backend in ((graph_bundle, "onnxruntime"), (clip_llama_f32.bundle, "openvino")):
            pipe = Pipeline.from_bundle(bundle, encoder_backend=backend)
            pipe.generate("USER: <image>\nWhat is it? ASSISTANT:", images=[photo], max_new_tokens=4)
            engines = [stage.session.session if backend == "onnxruntime" else stage.session.compiled
                       for stage in pipe.stages.values()]
            if backend == "onnxruntime":
                assert pipe.llm.handoff is not None
                engines.append(pipe.llm.handoff.graph.session.session)
            refs = [weakref.ref(engine) for engine in engines]
            del engines
            assert all(ref() is not None for ref in refs)
            pipe.close()
            assert [ref() for ref in refs] == [None] * len(refs), backend
            assert pipe.llm.engine._ctx is None and pipe.embedding_cache._items == {}
    finally:
        gc.enable()


def test_released_file_pages_are_read_back_unchanged_and_written_ones_are_kept(tmp_path):
    """``release_file_pages`` drops the resident pages of a read-only mapping (they are read again from
    the file when touched) and leaves a writable mapping alone (dropping it would lose the writes)."""
    import mmap

    from edgebridge.runtimes.mapped_pages import mapped_ranges, release_file_pages

    data = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    path.write_bytes(data.tobytes())

    def resident() -> int:
        return sum(r for *_, r in mapped_ranges(path))

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        view = np.frombuffer(m, np.uint8)
        assert int(view.sum(dtype=np.int64)) == int(data.sum(dtype=np.int64))  # every page touched
        before = resident()
        assert before == data.nbytes
        assert release_file_pages(path) == before
        assert resident() == 0
        assert np.array_equal(view, data)  # mapped again from the file
        del view
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_WRITE) as m:
        m[:4] = b"edge"
        assert mapped_ranges(path) == [] and release_file_pages(path) == 0
        assert m[:4] == b"edge"


def test_openvino_encoder_is_warmed_up_at_load_and_hands_back_its_weight_pages(clip_llama_f32, photo):
    """An OpenVINO tower runs once at load on a neutral image, then its ``.bin`` pages are handed back:
    none resident after load, and the encoder's output on a real image is the same before and after
    another release. An onnxruntime tower is not warmed up (it maps no weights)."""
    from edgebridge import Pipeline
    from edgebridge.runtimes.mapped_pages import mapped_ranges

    with Pipeline.from_bundle(clip_llama_f32.bundle, encoder_backend="openvino") as pipe:
        stage = pipe.stages["image"]
        details = stage.report.details
        assert details["warm_up_ms"] > 0 and details["released_file_mb"] > 0
        bin_path = next(clip_llama_f32.bundle.glob("*.bin"))
        assert mapped_ranges(bin_path) and sum(r for *_, r in mapped_ranges(bin_path)) == 0
        inputs = stage.prepare([photo]).inputs
        first = stage.session.run(inputs)[0]
        stage.session.release_file_pages()
        np.testing.assert_array_equal(stage.session.run(inputs)[0], first)
    with Pipeline.from_bundle(clip_llama_f32.bundle, encoder_backend="onnxruntime") as pipe:
        assert "warm_up_ms" not in pipe.stages["image"].report.details
