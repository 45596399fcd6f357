"""The encoder's attention as onnxruntime's ``MultiHeadAttention`` kernel, in the onnxruntime artifact.

torch's exporter writes scaled-dot-product attention as ~15 nodes a layer: Q, K and V each reshaped to
heads and transposed, K transposed again (through Shape / Slice / Concat / Reshape), Q and K each
scaled by the square root of the scale, MatMul, Softmax, MatMul, then transposed and reshaped back.
onnxruntime's ``com.microsoft.MultiHeadAttention`` takes the three projections ``[B, S, H*d]`` as they
are and does the rest in one kernel. Bench LLaVA tower (CLIP ViT-B/16, 11 layers, 197 tokens, 2
threads), the same graph with and without the rewrite, interleaved: int8 (dynamic) 31.3 -> 29.9 ms
(11 rounds), int8-static 38.6 -> 34.5, f16 92.7 -> 83.3; outputs within 7e-7 in f32.

OpenVINO has no such kernel and converts the plain graph; the rewrite feeds the onnxruntime artifact
only, and is kept only when the rewritten f32 graph gives the plain one's outputs on the seeded parity
inputs (within the f32 gate's max-abs, ``ENCODER_TOLERANCE``); otherwise the plain graph is used and
the manifest says why (``details.attention``).

Matched: a Softmax over the last axis whose input is ``MatMul(a, b)`` and whose output feeds one
``MatMul(p, v)`` alone, followed by ``Transpose(0, 2, 1, 3)`` and a Reshape; ``a``, ``b`` and ``v`` each
lead back through Reshape / Transpose / Mul-by-a-constant-scalar nodes to a rank-3 tensor (the
projection: an Add or a MatMul), and the head count is the third dimension of the constant 4-D shape
``a`` is reshaped to. Attention with an additive mask or bias between the MatMul and the Softmax
(windowed or padded attention) is not matched and stays as exported. What the walk does not check
(that the transposes make ``a @ b`` the scores of Q and K) the agreement check does.

Host side: onnx and numpy; the check runs onnxruntime through the runtime's session.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebridge.manifest import StaticShape

KERNEL = "com.microsoft.MultiHeadAttention"
LARGE_BYTES = 1_800_000_000  # protobuf's 2 GiB limit, as ``encoder.export_onnx``
_PASS_THROUGH = ("Reshape", "Transpose")
_PROJECTIONS = ("Add", "MatMul")


@dataclass
class _Match:
    q: str
    k: str
    v: str
    out: str  # the Reshape's output the kernel now writes
    heads: int
    scale: float


def fuse_attention(src: Path, dst: Path) -> int:
    """Write ``src`` with every matched attention as the kernel to ``dst``; returns how many were rewritten
    (0: nothing written)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    matches = _matches(model.graph)
    if not matches:
        return 0
    kernels = {m.out: helper.make_node("MultiHeadAttention", [m.q, m.k, m.v], [m.out], domain="com.microsoft",
                                       num_heads=m.heads, scale=m.scale, name=f"attention_{i}")
               for i, m in enumerate(matches)}
    # each kernel where the Reshape that wrote its output was: after the projections it reads
    nodes = [kernels.get(node.output[0], node) if node.output else node for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(_live(nodes, {o.name for o in model.graph.output}))
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    # one file, as the exporter writes it (the f32 artifact is a copy of it), unless protobuf's 2 GiB limit
    large = sum(t.ByteSize() for t in model.graph.initializer) > LARGE_BYTES
    onnx.save_model(model, str(dst), save_as_external_data=large, location=dst.name + ".data")
    return len(matches)


def agrees(plain: Path, fused: Path, cases: list[dict[str, np.ndarray]], max_abs: float,
           static: StaticShape | None = None) -> str | None:
    """None when ``fused`` gives ``plain``'s outputs on every case within ``max_abs`` (a static-shape graph
    run as the runtime runs it: padded or chunked to its shape); else why not, including a rewritten graph
    that onnxruntime refuses to load or run (a kernel whose output shape is not the one it replaced)."""
    from edgebridge.exporters.engine_choice import run_item
    from edgebridge.runtimes.registry import open_encoder

    def outputs(path: Path) -> list[np.ndarray]:
        session = open_encoder("onnxruntime", [path])
        try:  # run_static gives the first output, a plain run the list of outputs
            return [run_item(session, inputs, static) if static else session.run(inputs)[0] for inputs in cases]
        finally:
            session.close()

    want = outputs(plain)
    try:
        got = outputs(fused)
    except Exception as exc:  # noqa: BLE001 - any refusal of the rewrite keeps the exported graph
        return f"onnxruntime does not run the rewritten graph ({str(exc).splitlines()[0][:200]})"
    for w, g in zip(want, got):
        worst = float(np.max(np.abs(g - w))) if w.size else 0.0
        if g.shape != w.shape or not np.isfinite(worst) or worst > max_abs:
            return f"the rewritten graph differs from the exported one by max-abs {worst:.3g} > {max_abs:g}"
    return None


def _matches(graph: Any) -> list[_Match]:
    from onnx import numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})

    def constant(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(constants[name]) if name in constants else None

    def only_consumer(name: str, op: str) -> Any | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    matches = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax"):
        scores = producer.get(softmax.input[0])
        attend = only_consumer(softmax.output[0], "MatMul")
        if scores is None or scores.op_type != "MatMul" or attend is None or attend.input[0] != softmax.output[0]:
            continue
        if _attribute(softmax, "axis", -1) not in (-1, 3):
            continue
        back = only_consumer(attend.output[0], "Transpose")
        out = only_consumer(back.output[0], "Reshape") if back is not None else None
        if out is None or list(_attribute(back, "perm", [])) != [0, 2, 1, 3]:
            continue
        q, k, v = (_projection(name, producer, constant) for name in (scores.input[0], scores.input[1], attend.input[1]))
        if q is None or k is None or v is None or q[2] is None:
            continue
        matches.append(_Match(q[0], k[0], v[0], out.output[0], heads=q[2], scale=q[1] * k[1] * v[1]))
    return matches


def _projection(name: str, producer: dict[str, Any], constant: Any) -> tuple[str, float, int | None] | None:
    """Walk back from ``name`` through Reshape / Transpose / Mul-by-a-scalar to the projection's output:
    (that tensor, the product of the scalars, the head count of the 4-D reshape nearest the projection,
    which splits the heads) or None."""
    scale, heads = 1.0, None
    for _ in range(16):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type in _PROJECTIONS:
            return name, scale, heads
        if node.op_type == "Mul":
            factor = constant(node.input[1])
            if factor is None or factor.size != 1:
                return None
            scale *= float(factor.reshape(()))
        elif node.op_type not in _PASS_THROUGH:
            return None
        elif node.op_type == "Reshape":
            shape = constant(node.input[1])
            if shape is not None and shape.size == 4 and shape[2] > 0:
                heads = int(shape[2])  # met last walking back: the one nearest the projection
        name = node.input[0]
    return None


def _attribute(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _live(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """``nodes`` without those no graph output depends on, in their order."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]
