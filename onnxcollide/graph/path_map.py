"""Map a perturbation of the first linear op's input back to the model's input.

Every op on the path from the input to W1 is affine and injective on the perturbation
(``graph.input_path.PASS_OPS``), so a perturbation ``d`` of W1's data input has exactly one
preimage ``d_in`` with ``path(x + d_in) - path(x) = d``, when one exists at all: a perturbation
that touches constant padding, or that differs between copies a broadcast made, has none.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver
from onnxcollide.graph.linear_ops import node_attr, node_float, node_int, node_ints, node_label
from onnxcollide.graph.pad_slice import pad_amounts, scatter_to, slice_sources

UNCHANGED = {"Identity", "Cast"}


def _where(node: NodeProto) -> str:
    return f"node '{node_label(node, 'main')}' ({node.op_type})"


def _constant_operand(node: NodeProto, came_from: str, resolver: ConstantResolver) -> np.ndarray:
    other = node.input[1] if node.input[0] == came_from else node.input[0]
    return np.asarray(resolver.value(other), dtype=np.float64)


def _checked(delta: np.ndarray, in_shape: tuple[int, ...], node: NodeProto) -> np.ndarray:
    if delta.shape != in_shape:
        raise UnsupportedModelError(
            f"the op broadcasts the input from {in_shape} to {delta.shape}; a perturbation of "
            "its output cannot be mapped back", _where(node))
    return delta


def _invert_elementwise(node: NodeProto, delta: np.ndarray, came_from: str,
                        resolver: ConstantResolver) -> np.ndarray:
    op = node.op_type
    if op == "Add" and list(node.input).count(came_from) > 1:
        return delta / 2.0  # x + x
    if op in UNCHANGED or op == "Add":
        return delta
    if op == "Sub":
        return delta if node.input[0] == came_from else -delta
    if op == "Mul":
        return delta / _constant_operand(node, came_from, resolver)
    if op == "Div":
        return delta * _constant_operand(node, came_from, resolver)
    if op in ("QuantizeLinear", "DequantizeLinear"):  # y = x / s + zp  or  y = (x - zp) * s
        scale = np.asarray(resolver.value(node.input[1]), np.float64)
        if scale.ndim == 1 and scale.size > 1:
            axis = node_int(node, "axis", 1) % delta.ndim
            scale = scale.reshape([-1 if a == axis else 1 for a in range(delta.ndim)])
        return delta * scale if op == "QuantizeLinear" else delta / scale
    if op == "BatchNormalization":
        scale = np.asarray(resolver.value(node.input[1]), np.float64)
        var = np.asarray(resolver.value(node.input[4]), np.float64)
        eps = node_float(node, "epsilon", 1e-5)
        view = (1, -1) + (1,) * (delta.ndim - 2)
        return delta * (np.sqrt(var + eps) / scale).reshape(view)
    raise UnsupportedModelError(f"cannot map a perturbation back through {op}", _where(node))


def _invert_pad(node: NodeProto, delta: np.ndarray, in_shape: tuple[int, ...],
                resolver: ConstantResolver, opset: int) -> np.ndarray:
    pads = pad_amounts(node, resolver, opset)
    mode = str(node_attr(node, "mode", "constant"))
    if pads is None or mode != "constant" or any(p < 0 for p in pads):
        raise UnsupportedModelError(
            f"cannot map a perturbation back through Pad (mode {mode})", _where(node),
            "only constant padding is supported on the path to W1")
    axes = len(in_shape)
    inner = tuple(slice(pads[a], pads[a] + in_shape[a]) for a in range(axes))
    outside = delta.copy()
    outside[inner] = 0.0
    if np.any(outside):
        raise UnsupportedModelError(
            "the perturbation reaches elements that Pad adds (they are constant)", _where(node),
            "choose a region away from the border")
    return delta[inner]


def _invert_slice(node: NodeProto, delta: np.ndarray, in_shape: tuple[int, ...],
                  resolver: ConstantResolver) -> np.ndarray:
    sources = slice_sources(node, resolver, in_shape)
    if sources.shape != delta.shape:
        raise UnsupportedModelError("Slice output does not match the perturbation's shape",
                                    _where(node))
    return scatter_to(delta, sources, in_shape)


def _undo_layout(node: NodeProto, array: np.ndarray, in_shape: tuple[int, ...]
                 ) -> np.ndarray | None:
    """Inverse of a layout-only op (Transpose, Reshape/Flatten/Squeeze/Unsqueeze), else None."""
    if node.op_type == "Transpose":
        perm = list(node_ints(node, "perm", list(range(array.ndim))[::-1]))
        return np.transpose(array, np.argsort(perm))
    if node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return array.reshape(in_shape)
    return None


def invert_node(node: NodeProto, delta: np.ndarray, came_from: str, in_shape: tuple[int, ...],
                resolver: ConstantResolver, opset: int) -> np.ndarray:
    """The perturbation of ``came_from`` (shape ``in_shape``) that ``node`` maps to ``delta``.

    Raises:
        UnsupportedModelError: no such perturbation exists or the op is not supported.
    """
    op = node.op_type
    moved = _undo_layout(node, delta, in_shape)
    if moved is not None:
        return moved
    if op == "Pad":
        return _invert_pad(node, delta, in_shape, resolver, opset)
    if op == "Slice":
        return _invert_slice(node, delta, in_shape, resolver)
    return _checked(_invert_elementwise(node, delta, came_from, resolver), in_shape, node)


def pull_delta(path: Sequence[NodeProto], input_name: str, delta: np.ndarray,
               shapes: dict[str, tuple[int, ...]], resolver: ConstantResolver,
               opset: int) -> np.ndarray:
    """Map a perturbation of W1's data input back along ``path`` to the model input.

    Args:
        path: the nodes from the input to W1, in order.
        input_name: the graph input the path starts at.
        delta: perturbation of W1's data input, full shape (batch included).
        shapes: exact shape (batch included) of every tensor on the path.
        resolver: constant values of the path ops' other operands.
        opset: default-domain opset (Pad reads its pads from an input from opset 11).

    Returns:
        The perturbation of the model input, shape ``shapes[input_name]``, float64.
    """
    consumed = [input_name] + [node.output[0] for node in path[:-1]] if path else []
    out = np.asarray(delta, dtype=np.float64)
    for node, tensor in zip(reversed(path), reversed(consumed), strict=True):
        if tensor not in shapes:
            raise UnsupportedModelError(f"the shape of '{tensor}' is unknown",
                                        _where(node), "pass --input-shape")
        out = invert_node(node, out, tensor, shapes[tensor], resolver, opset)
    return out


def _positions_through(node: NodeProto, grid: np.ndarray, in_shape: tuple[int, ...],
                       resolver: ConstantResolver, opset: int) -> np.ndarray:
    op = node.op_type
    moved = _undo_layout(node, grid, in_shape)
    if moved is not None:
        return moved
    if op == "Pad":
        pads = pad_amounts(node, resolver, opset)
        if pads is None or any(p < 0 for p in pads):
            raise UnsupportedModelError("cannot follow positions through this Pad", _where(node))
        axes = len(in_shape)
        return grid[tuple(slice(pads[a], pads[a] + in_shape[a]) for a in range(axes))]
    if op == "Slice":
        moved = _invert_slice(node, grid.astype(np.float64) + 1.0, in_shape, resolver)
        return moved.astype(np.int64) - 1
    if grid.shape != in_shape:
        raise UnsupportedModelError("the op broadcasts its input", _where(node))
    return grid


def pull_positions(path: Sequence[NodeProto], input_name: str, data_shape: tuple[int, ...],
                   shapes: dict[str, tuple[int, ...]], resolver: ConstantResolver,
                   opset: int) -> np.ndarray:
    """For each model-input element, the flat index of the W1 data-input element it becomes.

    Returns:
        int64 array of the model input's shape; -1 where the element does not reach W1's
        input (sliced away).
    """
    consumed = [input_name] + [node.output[0] for node in path[:-1]] if path else []
    grid = np.arange(int(np.prod(data_shape)), dtype=np.int64).reshape(data_shape)
    for node, tensor in zip(reversed(path), reversed(consumed), strict=True):
        if tensor not in shapes:
            raise UnsupportedModelError(f"the shape of '{tensor}' is unknown", _where(node),
                                        "pass --input-shape")
        grid = _positions_through(node, grid, shapes[tensor], resolver, opset)
    return grid
