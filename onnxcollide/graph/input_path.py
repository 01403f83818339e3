"""Trace each graph input to the first linear op and classify how a collision lifts to it.

Classes (DESIGN.md, "The first layer and the real input space"):
    dense        Gemm/MatMul on the (reshaped) input: every kernel vector lifts exactly.
    patchify     conv whose windows never share an input element: lifts patch by patch.
    overlapping  conv whose windows share elements: a tiled per-patch kernel vector is not a
                 collision of the whole operator.
    not applicable  the input reaches the op through something that is not affine and
                 injective on it (a non-linearity, token ids into Gather, ...).
Blind elements are input elements no window reads; they are counted by pulling a "read" mask
back through the path ops.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, helper

from onnxcollide.graph.constants import ConstantResolver
from onnxcollide.graph.linear_ops import LinearSite, conv_geometry, node_attr, node_label
from onnxcollide.graph.shapes import Shape, TensorInfo

# Ops that are affine and injective on the perturbation when their other operands are constant.
PASS_OPS = {
    "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Sub", "Add",
    "Mul", "Div", "Pad", "BatchNormalization", "Slice",
}
# Round-trips that keep the geometry but round the values.
ROUNDING_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Consumers that read only the shape, never the values.
SHAPE_ONLY_OPS = {"Shape", "Size"}

DENSE, PATCHIFY, OVERLAPPING, NOT_APPLICABLE = "dense", "patchify", "overlapping", "not applicable"


@dataclass(frozen=True)
class PathStep:
    """One node on the way from the input to the first linear op."""

    node: str
    op: str


@dataclass(frozen=True)
class FirstLayerPath:
    """How one graph input reaches its first linear op, and what that means for collisions.

    Attributes:
        input: the graph input's name.
        input_dtype: its element type (``float``, ``int64``, ...).
        input_shape: its shape as used (user overrides applied; None dims unknown).
        site: the first linear op reached, None if the input reaches none.
        path: nodes between the input and the op, in order.
        exactness: one of dense / patchify / overlapping / not applicable.
        reason: why, in one sentence.
        blind_elements: input elements no window reads (per sample), None where unknown.
        input_elements: elements per sample of the input, None where unknown.
    """

    input: str
    input_dtype: str
    input_shape: Shape | None
    site: LinearSite | None
    path: tuple[PathStep, ...]
    exactness: str
    reason: str
    blind_elements: int | None
    input_elements: int | None


# ------------------------------------------------------------------ search


def _consumers(nodes: list[NodeProto]) -> dict[str, list[int]]:
    table: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name:
                table.setdefault(name, []).append(index)
    return table


def _reach_first_linear(
    input_name: str, nodes: list[NodeProto], sites: dict[int, LinearSite]
) -> tuple[LinearSite | None, list[int]]:
    """Breadth-first from the input; return the earliest linear op reached and the node path."""
    consumers = _consumers(nodes)
    previous: dict[int, int | None] = {}
    queue: deque[tuple[str, int | None]] = deque([(input_name, None)])
    while queue:
        tensor, parent = queue.popleft()
        for index in consumers.get(tensor, []):
            if index in previous or nodes[index].op_type in SHAPE_ONLY_OPS:
                continue
            previous[index] = parent
            if index in sites:
                continue  # the walk ends at a linear op
            queue.extend((out, index) for out in nodes[index].output if out)
    reached = sorted(i for i in previous if i in sites)
    if not reached:
        return None, []
    path: list[int] = []
    cursor = previous[reached[0]]
    while cursor is not None:
        path.append(cursor)
        cursor = previous[cursor]
    return sites[reached[0]], path[::-1]


# ------------------------------------------------------------------ path checks


def _blocking_reason(node: NodeProto, came_from: str, resolver: ConstantResolver) -> str | None:
    """None if ``node`` is affine and injective in ``came_from``, else why not."""
    op = node.op_type
    label = node_label(node, "main")
    if op in ROUNDING_OPS:
        return None
    if op not in PASS_OPS:
        return f"the input passes through {op} (node '{label}') before the first linear op"
    others = [i for i in node.input if i and i != came_from]
    if op == "Div" and node.input[0] != came_from:
        return f"the input is a divisor in Div (node '{label}'), which is not affine"
    if op in ("Mul", "Div", "Add", "Sub", "Pad", "BatchNormalization", "Slice"):
        variable = [i for i in others if i and not resolver.is_constant(i)]
        if variable:
            return (f"{op} (node '{label}') combines the input with another non-constant "
                    f"tensor '{variable[0]}'")
    if op in ("Mul", "Div"):
        factor = resolver.value(node.input[1] if node.input[0] == came_from else node.input[0])
        if np.any(np.asarray(factor) == 0):
            return f"{op} (node '{label}') scales some elements by zero"
    if op == "Cast":
        target = int(node_attr(node, "to", 0))  # type: ignore[call-overload]
        if helper.tensor_dtype_to_np_dtype(target).kind != "f":
            return f"Cast (node '{label}') turns the input into integers"
    return None


def _path_tensors(input_name: str, path: list[NodeProto]) -> list[str]:
    """The tensor each path node consumes from the previous one (starting at the input)."""
    if not path:
        return []
    return [input_name] + [node.output[0] for node in path[:-1]]


# ------------------------------------------------------------------ geometry


def _resolved_pads(geometry_pads: tuple[int, ...], auto_pad: str, size: int, axis: int,
                   axes: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    extent = (kernel - 1) * dilation + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + extent - size)
        small = total // 2
        return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)
    if auto_pad == "VALID":
        return 0, 0
    return geometry_pads[axis], geometry_pads[axis + axes]


def window_reads(size: int, kernel: int, stride: int, dilation: int,
                 pads: tuple[int, int]) -> np.ndarray:
    """How many windows read each of ``size`` positions along one axis: (size,) int array."""
    extent = (kernel - 1) * dilation + 1
    windows = (size + pads[0] + pads[1] - extent) // stride + 1
    counts = np.zeros(size, dtype=np.int64)
    for i in range(max(windows, 0)):
        taps = i * stride + np.arange(kernel) * dilation - pads[0]
        taps = taps[(taps >= 0) & (taps < size)]
        np.add.at(counts, taps, 1)
    return counts


def windows_can_overlap(kernel: int, stride: int, dilation: int) -> bool:
    """On an unbounded axis, two windows share an element iff t*dilation % stride == 0, 0<t<k."""
    return any((t * dilation) % stride == 0 for t in range(1, kernel))


def _conv_reads(site: LinearSite, shape: Shape) -> tuple[np.ndarray | None, bool]:
    """Read-count mask over the conv input (per sample) and whether windows overlap."""
    weight_shape = tuple(site.resolver.value(site.weight_name).shape)
    geometry = conv_geometry(site, weight_shape)
    axes = len(geometry.kernel)
    spatial = shape[2:] if len(shape) == axes + 2 else None
    if geometry.transposed:  # every input element scatters into the output
        known = _known(shape)
        overlap = any(windows_can_overlap(k, s, d) for k, s, d in
                      zip(geometry.kernel, geometry.strides, geometry.dilations, strict=True))
        return (np.ones(known[1:], np.int64) if known else None), overlap
    if spatial is None or any(d is None for d in spatial) or shape[1] is None:
        overlap = any(windows_can_overlap(k, s, d) for k, s, d in
                      zip(geometry.kernel, geometry.strides, geometry.dilations, strict=True))
        return None, overlap
    per_axis = []
    for a in range(axes):
        pads = _resolved_pads(geometry.pads, geometry.auto_pad, int(spatial[a]), a, axes,  # type: ignore[arg-type]
                              geometry.kernel[a], geometry.strides[a], geometry.dilations[a])
        per_axis.append(window_reads(int(spatial[a]), geometry.kernel[a],  # type: ignore[arg-type]
                                     geometry.strides[a], geometry.dilations[a], pads))
    overlap = any(int(c.max(initial=0)) > 1 for c in per_axis)
    grid = per_axis[0]
    for counts in per_axis[1:]:
        grid = np.multiply.outer(grid, counts)
    return np.broadcast_to(grid, (int(shape[1]), *grid.shape)).copy(), overlap


# ------------------------------------------------------------------ mask pull-back


def _pull_mask(mask: np.ndarray, node: NodeProto, in_shape: tuple[int, ...],
               resolver: ConstantResolver, opset: int) -> np.ndarray | None:
    """Map a per-sample boolean mask on ``node``'s output back to its (path) input."""
    op = node.op_type
    if op == "Transpose":
        perm = [int(p) for p in node_attr(node, "perm", list(range(mask.ndim + 1))[::-1])]  # type: ignore[attr-defined]
        if perm[0] != 0:
            return None  # the batch axis moves: per-sample masks do not apply
        return np.transpose(mask, np.argsort([p - 1 for p in perm[1:]]))
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        per_sample = in_shape[1:]
        return mask.reshape(per_sample) if mask.size == int(np.prod(per_sample)) else None
    if op == "Pad":
        pads = _pad_amounts(node, resolver, opset)
        if pads is None or any(p < 0 for p in pads):
            return None
        axes = len(in_shape)
        cut = tuple(slice(pads[a], pads[a] + in_shape[a]) for a in range(1, axes))
        return mask[cut]
    if op == "Slice":
        return _unslice(mask, node, in_shape, resolver)
    if mask.shape == in_shape[1:]:
        return mask  # elementwise: Identity, Cast, Sub/Add/Mul/Div, BatchNormalization, Q/DQ
    return None


def _pad_amounts(node: NodeProto, resolver: ConstantResolver, opset: int) -> list[int] | None:
    if opset < 11:
        pads = node_attr(node, "pads", node_attr(node, "paddings", None))
        return None if pads is None else [int(p) for p in pads]  # type: ignore[attr-defined]
    if len(node.input) > 3 and node.input[3]:
        return None  # axes input: not needed by exporters we know
    pads = [int(v) for v in resolver.value(node.input[1])]
    return pads


def _unslice(mask: np.ndarray, node: NodeProto, in_shape: tuple[int, ...],
             resolver: ConstantResolver) -> np.ndarray | None:
    if len(node.input) < 3:
        return None
    index = np.arange(int(np.prod(in_shape[1:]))).reshape(in_shape[1:])
    full = index[None]
    starts, ends = resolver.value(node.input[1]), resolver.value(node.input[2])
    axes = resolver.value(node.input[3]) if len(node.input) > 3 and node.input[3] else \
        np.arange(len(starts))
    steps = resolver.value(node.input[4]) if len(node.input) > 4 and node.input[4] else \
        np.ones(len(starts), np.int64)
    slicer = [slice(None)] * full.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        slicer[int(a) % full.ndim] = slice(int(s), int(e), int(st))
    picked = full[tuple(slicer)][0]
    if picked.shape != mask.shape:
        return None
    out = np.zeros(in_shape[1:], dtype=bool)
    out.reshape(-1)[picked.reshape(-1)] = mask.reshape(-1)
    return out


# ------------------------------------------------------------------ public


def _known(shape: Shape | None) -> tuple[int, ...] | None:
    if shape is None or any(d is None for d in shape[1:]):
        return None
    return (1, *(int(d) for d in shape[1:]))  # type: ignore[arg-type]


def _blind_count(site: LinearSite, path: list[NodeProto], input_name: str,
                 infos: dict[str, TensorInfo], read: np.ndarray | None,
                 resolver: ConstantResolver, opset: int) -> int | None:
    if read is None:
        return None
    mask = read > 0
    tensors = _path_tensors(input_name, path)
    for node, tensor in zip(reversed(path), reversed(tensors), strict=True):
        info = infos.get(tensor)
        shape = _known(info.shape if info else None)
        if shape is None:
            return None
        pulled = _pull_mask(mask, node, shape, resolver, opset)
        if pulled is None:
            return None
        mask = pulled
    return int(mask.size - np.count_nonzero(mask))


def trace_input(
    input_name: str, nodes: list[NodeProto], sites: dict[int, LinearSite],
    infos: dict[str, TensorInfo], resolver: ConstantResolver, opset: int
) -> FirstLayerPath:
    """Find and classify the first linear op that ``input_name`` reaches in the main graph."""
    info = infos.get(input_name)
    dtype = info.dtype if info else "undefined"
    shape = info.shape if info else None
    per_sample = _known(shape)
    elements = int(np.prod(per_sample)) if per_sample else None
    site, path_idx = _reach_first_linear(input_name, nodes, sites)
    path_nodes = [nodes[i] for i in path_idx]
    steps = tuple(PathStep(node_label(n, "main"), n.op_type) for n in path_nodes)
    if site is None:
        return FirstLayerPath(input_name, dtype, shape, None, steps, NOT_APPLICABLE,
                              "the input reaches no linear op with a constant weight",
                              None, elements)
    if dtype not in ("float", "float16", "double", "bfloat16"):
        first = path_nodes[0].op_type if path_nodes else site.op_type
        return FirstLayerPath(input_name, dtype, shape, site, steps, NOT_APPLICABLE,
                              f"the input is {dtype} (e.g. token ids) and enters through "
                              f"{first}, not a continuous space to perturb", None, elements)
    came_from = input_name
    for node in path_nodes:
        blocking = _blocking_reason(node, came_from, resolver)
        if blocking:
            return FirstLayerPath(input_name, dtype, shape, site, steps, NOT_APPLICABLE,
                                  blocking, None, elements)
        came_from = node.output[0]
    return _classify_site(input_name, dtype, shape, site, path_nodes, steps, infos,
                          resolver, opset, elements)


def _classify_site(input_name: str, dtype: str, shape: Shape | None, site: LinearSite,
                   path_nodes: list[NodeProto], steps: tuple[PathStep, ...],
                   infos: dict[str, TensorInfo], resolver: ConstantResolver, opset: int,
                   elements: int | None) -> FirstLayerPath:
    rounding = [n.op_type for n in path_nodes if n.op_type in ROUNDING_OPS]
    caveat = (" QuantizeLinear on the path rounds the input, so a collision must also survive "
              "that rounding." if "QuantizeLinear" in rounding else "")
    data_info = infos.get(site.data_input)
    data_shape = data_info.shape if data_info else None
    if site.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
        read = np.ones(_known(data_shape)[1:], np.int64) if _known(data_shape) else None  # type: ignore[index]
        blind = _blind_count(site, path_nodes, input_name, infos, read, resolver, opset)
        return FirstLayerPath(input_name, dtype, shape, site, steps, DENSE,
                              f"{site.op_type} acts on the input directly: every kernel vector "
                              f"of W1 lifts exactly.{caveat}", blind, elements)
    read, overlap = _conv_reads(site, data_shape) if data_shape else (None, True)
    blind = _blind_count(site, path_nodes, input_name, infos, read, resolver, opset)
    if overlap:
        return FirstLayerPath(input_name, dtype, shape, site, steps, OVERLAPPING,
                              "conv windows share input elements: a tiled per-patch kernel "
                              "vector is not a collision of the whole operator; analyse the "
                              f"conv operator on the real input size.{caveat}", blind, elements)
    return FirstLayerPath(input_name, dtype, shape, site, steps, PATCHIFY,
                          "conv windows never share an input element: per-patch kernel "
                          f"vectors lift exactly, patch by patch.{caveat}", blind, elements)
