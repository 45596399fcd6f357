"""Running static-shape encoder graphs (``edgebridge export --static``) on inputs of other sizes.

Accelerators that compile fixed shapes get graphs whose every dimension is fixed. The runtime
then adapts the inputs, and refuses what it cannot adapt:

- the batch axis (images, tiles, audio windows): rows are independent, so the batch is cut into
  chunks of the static size, the last one padded with zero rows whose outputs are dropped;
- axes listed in ``pad_axes`` (a token axis with its attention mask): padded with zeros, which
  the mask marks as padding; longer inputs are refused;
- any other axis must match exactly, else ``StaticShapeError`` says what the bundle takes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgebridge.errors import StaticShapeError
from edgebridge.manifest import StaticShape


def _pad_axis(arr: np.ndarray, axis: int, size: int, name: str) -> np.ndarray:
    if arr.shape[axis] > size:
        raise StaticShapeError(
            f"input '{name}' has {arr.shape[axis]} entries on axis {axis}; this static-shape bundle takes at most {size}.",
            hint="Shorten the input, or use a bundle exported without --static.")
    if arr.shape[axis] == size:
        return arr
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (0, size - arr.shape[axis])
    return np.pad(arr, widths)


def conform(inputs: dict[str, np.ndarray], static: StaticShape) -> dict[str, np.ndarray]:
    """Pad the padable axes and check the fixed ones (the batch axis is left to ``run_static``)."""
    shapes, pad_axes = static.inputs, static.pad_axes
    out = {}
    for name, arr in inputs.items():
        shape = shapes.get(name)
        if shape is None:
            out[name] = arr
            continue
        if arr.ndim != len(shape):
            raise StaticShapeError(f"input '{name}' has {arr.ndim} dimensions, the static bundle takes {len(shape)}.")
        for axis in pad_axes.get(name, []):
            arr = _pad_axis(arr, axis, shape[axis], name)
        for axis in range(1, arr.ndim):
            if arr.shape[axis] != shape[axis]:
                raise StaticShapeError(
                    f"input '{name}' has shape {tuple(arr.shape)}; this static-shape bundle takes {tuple(shape)} "
                    f"(batch {shape[0]}).",
                    hint="Re-export without --static for inputs of other sizes.")
        out[name] = arr
    return out


def run_static(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], inputs: dict[str, np.ndarray],
               static: StaticShape) -> np.ndarray:
    """``run`` over chunks of the static batch size; returns the first output for the real rows."""
    inputs = conform(inputs, static)
    batch = static.batch
    rows = next(iter(inputs.values())).shape[0]
    outs = []
    for lo in range(0, rows, batch):
        chunk = {k: v[lo:lo + batch] for k, v in inputs.items()}
        real = next(iter(chunk.values())).shape[0]
        if real < batch:
            chunk = {k: np.concatenate([v, np.zeros((batch - real, *v.shape[1:]), v.dtype)]) for k, v in chunk.items()}
        outs.append(run(chunk)[0][:real])
    return np.concatenate(outs)
