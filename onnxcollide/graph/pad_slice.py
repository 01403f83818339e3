"""What Pad and Slice nodes on the path to W1 do to element positions.

One reading of each node's (constant) parameters, shared by the blind-element count
(``graph.input_path``) and the exact pull-back of perturbations (``graph.path_map``).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver
from onnxcollide.graph.linear_ops import node_ints


def pad_amounts(node: NodeProto, resolver: ConstantResolver, opset: int) -> list[int] | None:
    """Pads of a Pad node (begins then ends, all axes), None where they are not constant."""
    if opset < 11:
        for name in ("pads", "paddings"):
            if any(attr.name == name for attr in node.attribute):
                return list(node_ints(node, name, []))
        return None
    if len(node.input) > 3 and node.input[3]:
        return None  # axes input: not needed by exporters we know
    return _ints(node, resolver, node.input[1])


def _ints(node: NodeProto, resolver: ConstantResolver, name: str) -> list[int]:
    """A constant parameter input (pads, starts, axes, ...) as a list of ints.

    Raises:
        UnsupportedModelError: it is not a 1-D tensor of integers.
    """
    value = np.asarray(resolver.value(name))
    if value.ndim > 1 or value.dtype.kind not in "iu":
        raise UnsupportedModelError(f"parameter '{name}' is a {value.dtype} tensor of shape "
                                    f"{list(value.shape)}, not a list of integers",
                                    f"node '{node.name or node.output[0]}' ({node.op_type})",
                                    "the model is corrupt: re-export it")
    return [int(v) for v in value.reshape(-1)]


def _slice_parameters(node: NodeProto, resolver: ConstantResolver
                      ) -> tuple[list[int], list[int], list[int], list[int]]:
    """starts, ends, axes, steps of a Slice: inputs from opset 10, attributes before."""
    if len(node.input) >= 3:
        starts = _ints(node, resolver, node.input[1])
        ends = _ints(node, resolver, node.input[2])
        axes = _ints(node, resolver, node.input[3]) \
            if len(node.input) > 3 and node.input[3] else list(range(len(starts)))
        steps = _ints(node, resolver, node.input[4]) \
            if len(node.input) > 4 and node.input[4] else [1] * len(starts)
        return starts, ends, axes, steps
    starts = list(node_ints(node, "starts", []))
    ends = list(node_ints(node, "ends", []))
    axes = list(node_ints(node, "axes", list(range(len(starts)))))
    return starts, ends, axes, [1] * len(starts)


def slice_sources(node: NodeProto, resolver: ConstantResolver,
                  in_shape: tuple[int, ...]) -> np.ndarray:
    """For each element of the Slice's output, the flat index of the input element it copies.

    Args:
        in_shape: the sliced input's shape.

    Returns:
        int64 array of the output's shape.
    """
    sources = np.arange(int(np.prod(in_shape)), dtype=np.int64).reshape(in_shape)
    slicer = [slice(None)] * len(in_shape)
    for start, end, axis, step in zip(*_slice_parameters(node, resolver), strict=True):
        slicer[axis % len(in_shape)] = slice(start, end, step)
    return sources[tuple(slicer)]


def scatter_to(values: np.ndarray, sources: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """An array of ``in_shape``: ``values`` where ``sources`` points, zero elsewhere."""
    out = np.zeros(in_shape, dtype=values.dtype)
    out.reshape(-1)[sources.reshape(-1)] = values.reshape(-1)
    return out
