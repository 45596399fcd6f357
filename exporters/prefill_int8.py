"""The int8 prefill graph's three schemes: activations with one scale per MatMul input or one per prompt
position, and the latter with full 8-bit unsigned weights.

``per-tensor`` is onnxruntime's ``quantize_dynamic``: int8 weights, and each MatMul's whole input
quantized to uint8 at run time with one scale (``DynamicQuantizeMatMul``). One row far from the others
(a media row, a large-norm position) sets the scale for all of them.

``per-token`` (written here): int8 weights (within +-63, below) with one scale per output channel, and
each MatMul's input quantized with one scale per row, i.e. per prompt position; the granularity llama.cpp
(blocks of 32 within a row) and OpenVINO's dynamic quantization (groups of 32) use for their activations. Each MatMul
``x [.., n, K] @ W [K, N]`` (W a constant) becomes::

    s  = max(|x|) / 127 over each row, at least 1e-12       [.., n, 1]
    q  = QuantizeLinear(x, s per row, zero point 128)        uint8, round half to even
    y  = MatMulIntegerToFloat(q, Wq, 1, sw, 128) * s         the integer GEMM and the channel scales in one
                                                             onnxruntime kernel, then the row scales

The MatMuls that read one input (Q, K and V; the FFN's gate and up) share its quantized rows.

``per-token-u8`` is ``per-token`` with weights of the full 8 bits, stored as uint8 around zero point 128
(+-127), so onnxruntime runs its uint8 x uint8 GEMM: exact on every x86 CPU, where uint8 x int8 needs the
7-bit weights (below), but 1.38-2.02x slower on the prefill shapes of an AVX2-only EPYC (measured
2026-12-02: 220 x 2048 x 768 7.8 vs 3.9 ms). Tried last, when the 7-bit schemes drift beyond the budget:
on that CPU the 7-bit graphs into the bench LLaVA's q8_0 and q8_0-ffn-q6_k GGUFs were refused (top-1
0.873-0.892 against the 0.9 gate) and llama.cpp prefilled its 219 positions in 543 ms; the 8-bit one passed
(0.96) and prefilled them in 273 ms, so a slower graph can still answer sooner (the export measures it).

uint8 with zero point 128 rather than int8: onnxruntime's int8 x int8 integer GEMM has no fast kernel on
this CPU (258 vs 36 ms for the bench Qwen2.5-VL's 128 positions). Symmetric rows keep one zero point, so
the fused kernel takes it.

Measured 2026-11-30 on the bench models (102 next-token distributions of the hand-over gate, 2 threads):
Qwen2.5-VL (12x768 qwen2), hand-over into q8_0 against llama.cpp's own q8_0 prefill: per-tensor top-1
0.853 KL 4.2e-4, per-token 0.912 KL 2.8e-4 (against the f32 GGUF: 0.843 -> 0.961); LLaVA (12x768 llama)
into q8_0 against the f32 GGUF: 0.922 KL 3.6e-4 -> 0.961 KL 1.8e-4. The cost: +8-10% graph time (196
positions 30.4 -> 33.1 ms, 219 positions 39.5 -> 42.8 ms). So the export tries per-tensor first and
per-token when per-tensor is beyond the drift budget (``prefill.py``, ``prefill_choice.py``). Those
figures are of +-127 weights on a VNNI CPU; since 2026-12-01 the weights are 7-bit (``WEIGHT_LEVELS``),
which an AVX2-only CPU needs: there the +-127 per-token graph drifted 25x more than per-tensor (KL 3.6e-2
vs 1.5e-3 on the tiny Qwen2.5-VL of ``tests/test_kv_handoff.py``), the int16 saturation below.

Host side: onnx and numpy only.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.exporters.quantize.onnx_quant import WEIGHTS_7BIT

WEIGHTS_8BIT_UNSIGNED = "uint8 around 128, +-127 (8 bits: onnxruntime's uint8 x uint8 GEMM, exact on every x86 CPU)"

UNSIGNED = "per-token-u8"  # the scheme whose weights are uint8 (the label and the kernel inputs differ)
SCHEMES = ("per-tensor", "per-token", UNSIGNED)  # in the order the export tries them: fastest first
ZERO_POINT = 128
EPS = 1e-12
CONTRIB = "com.microsoft"  # MatMulIntegerToFloat: an onnxruntime CPU kernel
# 7-bit weights: uint8 rows around zero point 128 times +-127 saturate the int16 pair sums of MLAS's
# u8s8 GEMM on CPUs without VNNI (``quantize/onnx_quant.py``, WEIGHTS_7BIT, measured there).
WEIGHT_LEVELS = 63


def _not_preprocessing_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Please consider to run pre-processing before quantization")


@contextlib.contextmanager
def _without_preprocessing_advice():
    """onnxruntime logs advice to run its pre-processing first, on the root logger, for every graph quantized
    without it; the prefill graph is quantized as exported (the gates measure that graph), so the advice would
    only interrupt the export's progress lines."""
    root = logging.getLogger()
    root.addFilter(_not_preprocessing_advice)
    try:
        yield
    finally:
        root.removeFilter(_not_preprocessing_advice)


def quantize(src: Path, dst: Path, scheme: str) -> dict[str, Any]:
    """Write the f32 graph ``src`` as an int8 graph at ``dst`` (one file, for ``save_external`` to split) in
    one of ``SCHEMES``; returns the method for the manifest."""
    if scheme == "per-tensor":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _without_preprocessing_advice():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             reduce_range=True)
        return {"method": "onnxruntime.quantization.quantize_dynamic", "scheme": scheme,
                "weights": f"{WEIGHTS_7BIT}, one scale per tensor",
                "activations": "per-tensor", "activation_type": "uint8, quantized at run time"}
    if scheme in SCHEMES[1:]:
        unsigned = scheme == UNSIGNED
        n = _per_token(src, dst, unsigned)
        weights = WEIGHTS_8BIT_UNSIGNED if unsigned else WEIGHTS_7BIT
        return {"method": "edgebridge per-token int8 (exporters/prefill_int8.py)", "scheme": scheme,
                "weights": f"{weights}, one scale per output channel", "activations": "per-token",
                "activation_type": "uint8 (symmetric, zero point 128), one scale per position, quantized at "
                                   "run time", "matmuls": n}
    raise ValueError(f"unknown int8 scheme {scheme!r}; expected one of {SCHEMES}")


def _per_token(src: Path, dst: Path, unsigned: bool) -> int:
    """Rewrite every MatMul by a constant 2-D weight in ``src``; returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes, replaced, rows = [], set(), {}
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        wq, sw = _weights(numpy_helper.to_array(w), unsigned)
        name = f"{node.name or node.output[0]}_int8"
        graph.initializer.extend([numpy_helper.from_array(wq, name + "_w"), numpy_helper.from_array(sw, name + "_ws")])
        replaced.add(node.input[1])
        x = node.input[0]
        if x not in rows:  # Q, K and V (the FFN's gate and up) read one input: quantize it once
            rows[x] = name
            nodes += _quantized_rows(helper, x, name)
        nodes += _integer_matmul(helper, rows[x], node.output[0], name, unsigned)
    graph.initializer.extend([numpy_helper.from_array(np.array(1 / 127, np.float32), "pt_inv127"),
                              numpy_helper.from_array(np.array(EPS, np.float32), "pt_eps"),
                              numpy_helper.from_array(np.array([-1], np.int64), "pt_flat"),
                              numpy_helper.from_array(np.array(1.0, np.float32), "pt_one"),
                              numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "pt_zero")])
    used = {name for n in nodes for name in n.input}  # a float weight another node reads (a tied table) stays
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == CONTRIB for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    onnx.save_model(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return len(replaced)


def _weights(w: np.ndarray, unsigned: bool) -> tuple[np.ndarray, np.ndarray]:
    """``W [K, N]`` -> (integer weights, one f32 scale per output channel); symmetric: int8 within
    +-``WEIGHT_LEVELS``, or (``unsigned``) +-127 stored as uint8 around ``ZERO_POINT``."""
    levels = 127 if unsigned else WEIGHT_LEVELS
    w = w.astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=0), EPS) / levels
    q = np.clip(np.rint(w / scale), -levels, levels)
    q = (q + ZERO_POINT).astype(np.uint8) if unsigned else q.astype(np.int8)
    return q, scale.astype(np.float32)


def _node(helper: Any, op: str, inputs: list[str], out: str, **attrs: Any) -> Any:
    return helper.make_node(op, inputs, [out], **attrs)


def _quantized_rows(helper: Any, x: str, name: str) -> list[Any]:
    """The nodes quantizing ``x`` per row (the module docstring): ``{name}_q`` uint8 and ``{name}_s`` [.., n, 1]."""
    t = lambda s: f"{name}_{s}"
    return [
        _node(helper, "Abs", [x], t("abs")),
        _node(helper, "ReduceMax", [t("abs")], t("amax"), axes=[-1], keepdims=1),
        _node(helper, "Mul", [t("amax"), "pt_inv127"], t("s0")),
        _node(helper, "Max", [t("s0"), "pt_eps"], t("s")),                  # [.., n, 1]
        _node(helper, "Reshape", [t("s"), "pt_flat"], t("s_rows")),         # [n] (batch 1): the per-axis scale
        _node(helper, "Shape", [t("s_rows")], t("n")),
        _node(helper, "Expand", ["pt_zero", t("n")], t("zero_rows")),
        _node(helper, "QuantizeLinear", [x, t("s_rows"), t("zero_rows")], t("q"), axis=-2),
    ]


def _integer_matmul(helper: Any, rows: str, y: str, name: str, unsigned: bool) -> list[Any]:
    """``y = x @ W`` from ``x``'s quantized rows (``_quantized_rows`` under the name ``rows``) and ``name``'s
    integer weights: the integer GEMM and the channel scales in one onnxruntime kernel, then the row scales.
    Unsigned weights take the zero point too (``pt_zero``, 128)."""
    inputs = [f"{rows}_q", f"{name}_w", "pt_one", f"{name}_ws", "pt_zero"] + (["pt_zero"] if unsigned else [])
    return [
        _node(helper, "MatMulIntegerToFloat", inputs, f"{name}_y0", domain=CONTRIB),
        _node(helper, "Mul", [f"{name}_y0", f"{rows}_s"], y),
    ]
