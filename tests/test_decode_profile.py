"""benchmarks/decode_profile.py: the pieces its decode arithmetic rests on (it asserts nothing itself)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import decode_profile  # noqa: E402

# lines of `perf report --stdio --no-children --sort dso,sym` from a q6_k decode on this machine
REPORT = """
# Overhead  Shared Object        Symbol
    57.36%  libggml-cpu-zen4.so  [.] ggml_vec_dot_q6_K_q8_K
     8.59%  libggml-cpu-zen4.so  [.] ggml_vec_dot_f16
     7.86%  libgomp.so.1.0.0     [.] 0x000000000001f7da
     2.73%  libggml-cpu-zen4.so  [.] ggml_compute_forward_mul_mat
     1.53%  libggml-base.so.0    [.] quantize_row_q8_K_ref
     0.79%  libggml-cpu-zen4.so  [.] (anonymous namespace)::tinyBLAS_Q0_AVX<block_q8_0, block_q8_0, float>::gemm4xN<4>
     0.66%  libggml-cpu-zen4.so  [.] ggml_cpu_fp32_to_fp16
     0.45%  libggml-cpu-zen4.so  [.] ggml_compute_forward_soft_max
     0.39%  libpython3.11.so.1.0 [.] _PyEval_EvalFrameDefault
     0.19%  [kernel.kallsyms]    [k] do_syscall_64
"""


def test_perf_lines_are_split_into_the_decode_stages():
    shares = decode_profile.stage_shares(REPORT)
    assert shares["weights (quantized dot products)"] == pytest.approx(0.5736 + 0.0079)
    assert shares["attention (K/V cache)"] == pytest.approx(0.0859 + 0.0066 + 0.0045)
    assert shares["thread barriers (OpenMP)"] == pytest.approx(0.0786)
    assert shares["activation quantization"] == pytest.approx(0.0153)
    assert shares["other ggml ops"] == pytest.approx(0.0273)
    assert shares[decode_profile.HOST] == pytest.approx(0.0039 + 0.0019)  # Python and the kernel's syscalls
    assert sum(shares.values()) == pytest.approx(sum(float(x.split("%")[0]) for x in REPORT.split("\n")
                                                     if "%" in x) / 100)


def test_each_stage_is_set_against_its_own_byte_limit():
    figures = {"tok_s": 250.0, "weight_bytes": 80e6, "kv_bytes": 10e6}
    shares = {"weights (quantized dot products)": 0.75, "attention (K/V cache)": 0.25}
    rows = {r[0]: r for r in decode_profile.stage_rows(figures, shares, bandwidth=40e9)}
    assert rows["weights (quantized dot products)"][2:] == [pytest.approx(3.0), pytest.approx(2.0), "67%"]
    assert rows["attention (K/V cache)"][2:] == [pytest.approx(1.0), pytest.approx(0.25), "25%"]


def _peers_result(path: Path, model: str, genai_decodes: list[float]) -> None:
    results = {f"OpenVINO GenAI VLMPipeline ({i})": {"cold": {"stages": {"decode_tokens_per_s": {"p50": rate}}}}
               for i, rate in enumerate(genai_decodes)}
    results["edgebridge default export (auto engine)"] = {"cold": {"stages": {"decode_tokens_per_s": {"p50": 999.0}}}}
    path.write_text(json.dumps({"settings": {"model": f"/x/bench-out/{model}"}, "results": results}))


def test_genai_decode_is_the_fastest_form_of_the_newest_run_of_that_model(tmp_path):
    _peers_result(tmp_path / "peers-20261201-050000.json", "llava-clip-llama-bench", [200.0, 240.0])
    _peers_result(tmp_path / "peers-20261201-060000.json", "qwen2.5-vl-bench", [277.0])
    _peers_result(tmp_path / "peers-20261201-040000.json", "llava-clip-llama-bench", [300.0])
    assert decode_profile.genai_decode(tmp_path, "llava") == (240.0, "peers-20261201-050000.json")
    assert decode_profile.genai_decode(tmp_path, "qwen2.5-vl") == (277.0, "peers-20261201-060000.json")
    assert decode_profile.genai_decode(tmp_path / "none", "llava") is None


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
def test_the_read_probe_compiles_and_measures(tmp_path):
    rate, probe = decode_profile.read_bandwidth(1, tmp_path)
    assert probe == "read_bandwidth.c"
    assert 1e8 < rate < 1e13  # between 0.1 GB/s and 10 TB/s: a measurement, not a unit slip
