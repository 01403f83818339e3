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
from dataclasses import dataclass, field, replace

import numpy as np
from onnx import NodeProto, helper

from onnxcollide.errors import UnsupportedModelError, UsageError
from onnxcollide.graph.constants import ConstantResolver
from onnxcollide.graph.linear_ops import (
    LinearSite,
    conv_geometry,
    node_attr,
    node_int,
    node_ints,
    node_label,
    transposed_output_spatial,
)
from onnxcollide.graph.linear_path import PathOperator, build_path_operator, path_nodes
from onnxcollide.graph.pad_slice import pad_amounts, scatter_to, slice_sources
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
# Linear ops that read their data operand as whole vectors (every element, once).
_MATRIX_OPS = ("Gemm", "QGemm", "MatMul", "MatMulInteger", "QLinearMatMul")


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
        nodes: the path's NodeProtos, in order (for mapping perturbations back).
        operator: the path as one sparse operator on a sample, where the path is not a chain
            of the injective ops that ``graph.path_map`` inverts node by node (Concat, Pad
            that copies, Resize, pooling, ...); None for such a chain.
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
    nodes: tuple[NodeProto, ...] = field(default=(), compare=False, repr=False)
    operator: PathOperator | None = field(default=None, compare=False, repr=False)


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
    """Breadth-first from the input; return the linear op reached in the fewest steps through
    its data operand (ties: the first in node order), and the node path to it.

    A linear op the input reaches only through another operand (Gemm's bias C, a scale) is
    not a first layer of the input; the walk goes on through it like through any other op.
    """
    consumers = _consumers(nodes)
    previous: dict[int, int | None] = {}
    queue: deque[tuple[str, int | None]] = deque([(input_name, None)])
    while queue:
        tensor, parent = queue.popleft()
        for index in consumers.get(tensor, []):
            if index in sites and sites[index].data_input == tensor:
                previous[index] = parent  # (also where it was walked through before)
                return sites[index], _path_to(index, previous)
            if index in previous or nodes[index].op_type in SHAPE_ONLY_OPS:
                continue
            previous[index] = parent
            queue.extend((out, index) for out in nodes[index].output if out)
    return None, []


def _path_to(index: int, previous: dict[int, int | None]) -> list[int]:
    """The nodes before ``index`` on the walk that reached it, in order."""
    path: list[int] = []
    cursor = previous[index]
    while cursor is not None:
        path.append(cursor)
        cursor = previous[cursor]
    return path[::-1]


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
    if op != "Add" and list(node.input).count(came_from) > 1:  # x * x, x / x, x - x
        return f"{op} (node '{label}') uses the input twice, which is not affine and injective"
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
    if op == "BatchNormalization" and np.any(np.asarray(resolver.value(node.input[1])) == 0):
        return f"BatchNormalization (node '{label}') has a zero scale, which wipes out a channel"
    if op == "Cast":
        target = node_int(node, "to", 0)
        if helper.tensor_dtype_to_np_dtype(target).kind != "f":
            return f"Cast (node '{label}') turns the input into integers"
    return None


def _path_tensors(input_name: str, path: list[NodeProto]) -> list[str]:
    """The tensor each path node consumes from the previous one (starting at the input)."""
    if not path:
        return []
    return [input_name] + [node.output[0] for node in path[:-1]]


# ------------------------------------------------------------------ geometry


def window_reads(size: int, kernel: int, stride: int, dilation: int,
                 pads: tuple[int, int]) -> np.ndarray:
    """How many windows read each of ``size`` positions along one axis: (size,) int array.

    Tap ``t`` of window ``i`` reads ``u = t * dilation - pads[0] + i * stride``: per tap, the
    windows that land inside the axis are one strided slice of it, found in Python integers
    (a pad or dilation of 2^40 costs nothing, where a loop over windows never ended).
    """
    extent = (kernel - 1) * dilation + 1
    windows = (size + pads[0] + pads[1] - extent) // stride + 1
    counts = np.zeros(size, dtype=np.int64)
    for tap in range(kernel if windows > 0 else 0):
        first = tap * dilation - pads[0]  # position read by window 0
        lowest = max(0, -(first // stride))  # first window whose read is >= 0
        highest = min(windows - 1, (size - 1 - first) // stride)  # last one whose read < size
        if highest >= lowest:
            start = first + lowest * stride
            counts[start:start + (highest - lowest) * stride + 1:stride] += 1
    return counts


def windows_can_overlap(kernel: int, stride: int, dilation: int) -> bool:
    """On an unbounded axis, two windows share an element iff t*dilation % stride == 0, 0<t<k."""
    return any((t * dilation) % stride == 0 for t in range(1, kernel))


def transpose_reach(size: int, kernel: int, stride: int, dilation: int,
                    pads: tuple[int, int], output_padding: int) -> np.ndarray:
    """ConvTranspose: how many output positions each of ``size`` inputs reaches on one axis."""
    out_len = stride * (size - 1) + output_padding + (kernel - 1) * dilation + 1 - sum(pads)
    taps = np.arange(size)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pads[0]
    return ((taps >= 0) & (taps < out_len)).sum(axis=1).astype(np.int64)


MAX_COUNTED_ELEMENTS = 1 << 25  # read counts (int64) are kept per element up to this per sample


def _countable(shape: tuple[int, ...]) -> bool:
    """Whether per-element read counts of a per-sample ``shape`` fit in memory comfortably."""
    return int(np.prod(shape, dtype=np.int64)) <= MAX_COUNTED_ELEMENTS


def _grid(per_axis: list[np.ndarray], channels: int) -> np.ndarray:
    """Outer product of per-axis counts, repeated over channels: (C, *spatial) int64."""
    grid = per_axis[0]
    for counts in per_axis[1:]:
        grid = np.multiply.outer(grid, counts)
    return np.broadcast_to(grid, (channels, *grid.shape)).copy()


def _conv_reads(site: LinearSite, shape: Shape) -> np.ndarray | None:
    """Per-sample read counts over a conv's data input (None where the size is unknown).

    For Conv: how many windows read each element. For ConvTranspose: how many output
    positions each element reaches (0 means it is cropped away entirely).
    """
    geometry = conv_geometry(site, site.weight_shape())
    axes = len(geometry.kernel)
    known = _known(shape)
    if known is None or len(known) != axes + 2 or not _countable(known[1:]):
        return None
    spatial = known[2:]
    per_axis = []
    for a in range(axes):
        size, k, s, d = spatial[a], geometry.kernel[a], geometry.strides[a], geometry.dilations[a]
        if geometry.transposed:
            if geometry.auto_pad not in ("NOTSET", "") or node_attr(site.node, "output_shape",
                                                                    None) is not None:
                return None
            extra = node_attr(site.node, "output_padding", [0] * axes)
            pads = (geometry.pads[a], geometry.pads[a + axes])
            per_axis.append(transpose_reach(size, k, s, d, pads, int(extra[a])))  # type: ignore[index]
        else:
            per_axis.append(window_reads(size, k, s, d, geometry.pads_for(spatial)[a]))
    return _grid(per_axis, known[1])


def _geometric_overlap(site: LinearSite) -> bool:
    """Whether windows can share an element, judged from kernel, stride and dilation alone."""
    geometry = conv_geometry(site, site.weight_shape())
    return any(windows_can_overlap(k, s, d) for k, s, d in
               zip(geometry.kernel, geometry.strides, geometry.dilations, strict=True))


# ------------------------------------------------------------------ read-count pull-back

_NUMPY_PAD_MODES: dict[str, str] = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pull_counts(counts: np.ndarray, node: NodeProto, in_shape: tuple[int, ...],
                 resolver: ConstantResolver, opset: int) -> np.ndarray | None:
    """Map per-sample read counts on ``node``'s output back to its (path) input.

    Each input element gets the number of times the first linear op reads it, through every
    copy the node makes of it (a reflect Pad copies border elements). None where the node's
    layout cannot be followed.
    """
    op = node.op_type
    per_sample = in_shape[1:]
    if op == "Transpose":
        perm = list(node_ints(node, "perm", list(range(counts.ndim + 1))[::-1]))
        if perm[0] != 0:
            return None  # the batch axis moves: per-sample counts do not apply
        return np.transpose(counts, np.argsort([p - 1 for p in perm[1:]]))
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return counts.reshape(per_sample) if counts.size == int(np.prod(per_sample)) else None
    if op == "Pad":
        return _unpad(counts, node, in_shape, resolver, opset)
    if op == "Slice":
        return _unslice(counts, node, in_shape, resolver)
    if counts.shape == per_sample:
        return counts  # elementwise: Identity, Cast, Sub/Add/Mul/Div, BatchNormalization, Q/DQ
    return None


def _unpad(counts: np.ndarray, node: NodeProto, in_shape: tuple[int, ...],
           resolver: ConstantResolver, opset: int) -> np.ndarray | None:
    pads = pad_amounts(node, resolver, opset)
    axes = len(in_shape)
    if pads is None or len(pads) != 2 * axes or any(p < 0 for p in pads) or pads[0] or pads[axes]:
        return None
    mode = str(node_attr(node, "mode", "constant"))
    widths = [(pads[a], pads[a + axes]) for a in range(1, axes)]
    if mode == "constant":
        kept = zip(widths, in_shape[1:], strict=True)
        return counts[tuple(slice(b, b + n) for (b, _), n in kept)]
    if mode not in _NUMPY_PAD_MODES:
        return None
    size = int(np.prod(in_shape[1:]))
    source = np.pad(np.arange(size).reshape(in_shape[1:]), widths,
                    mode=_NUMPY_PAD_MODES[mode])  # type: ignore[call-overload]
    if source.shape != counts.shape:
        return None
    pulled = np.bincount(source.ravel(), weights=counts.ravel(), minlength=size)
    return pulled.astype(np.int64).reshape(in_shape[1:])


def _unslice(counts: np.ndarray, node: NodeProto, in_shape: tuple[int, ...],
             resolver: ConstantResolver) -> np.ndarray | None:
    sources = slice_sources(node, resolver, (1, *in_shape[1:]))[0]  # one sample
    if sources.shape != counts.shape:
        return None
    return scatter_to(counts, sources, in_shape[1:])


# ------------------------------------------------------------------ public


def _known(shape: Shape | None) -> tuple[int, ...] | None:
    if shape is None or any(d is None for d in shape[1:]):
        return None
    return (1, *(int(d) for d in shape[1:]))  # type: ignore[arg-type]


def _input_reads(path: list[NodeProto], input_name: str, infos: dict[str, TensorInfo],
                 reads: np.ndarray | None, resolver: ConstantResolver,
                 opset: int) -> np.ndarray | None:
    """Read counts per model-input element (per sample), pulled back along the path."""
    if reads is None:
        return None
    counts = reads
    tensors = _path_tensors(input_name, path)
    for node, tensor in zip(reversed(path), reversed(tensors), strict=True):
        info = infos.get(tensor)
        shape = _known(info.shape if info else None)
        if shape is None:
            return None
        pulled = _pull_counts(counts, node, shape, resolver, opset)
        if pulled is None:
            return None
        counts = pulled
    return counts


def _blind(counts: np.ndarray | None) -> int | None:
    return None if counts is None else int(counts.size - np.count_nonzero(counts))


def trace_input(
    input_name: str, nodes: list[NodeProto], sites: dict[int, LinearSite],
    infos: dict[str, TensorInfo], resolver: ConstantResolver, opset: int
) -> FirstLayerPath:
    """Find and classify the first linear op that ``input_name`` reaches in the main graph."""
    site, path_idx = _reach_first_linear(input_name, nodes, sites)
    chain = [nodes[i] for i in path_idx]
    traced = _trace(input_name, site, chain, infos, resolver, opset)
    if site is not None and traced.exactness != NOT_APPLICABLE and not _needs_operator(
            traced.reason, chain):
        return replace(traced, nodes=tuple(chain))
    if site is None or traced.input_dtype not in _FLOAT_TYPES or traced.reason.startswith(
            _DISCRETE):
        return replace(traced, nodes=tuple(chain))
    return _trace_operator(traced, path_nodes(input_name, site.data_input, nodes,
                                              site.topo_index), infos, resolver, opset)


def _trace(
    input_name: str, site: LinearSite | None, path_nodes: list[NodeProto],
    infos: dict[str, TensorInfo], resolver: ConstantResolver, opset: int
) -> FirstLayerPath:
    info = infos.get(input_name)
    dtype = info.dtype if info else "undefined"
    shape = info.shape if info else None
    elements = _elements_per_sample(shape, site, path_nodes)
    steps = tuple(PathStep(node_label(n, "main"), n.op_type) for n in path_nodes)
    if site is None:
        return FirstLayerPath(input_name, dtype, shape, None, steps, NOT_APPLICABLE,
                              "the input reaches no linear op with a constant weight in the "
                              "main graph (ops inside If/Loop/Scan bodies are not followed)",
                              None, elements)
    if dtype not in _FLOAT_TYPES:
        return FirstLayerPath(input_name, dtype, shape, site, steps, NOT_APPLICABLE,
                              _discrete_reason(dtype, path_nodes), None, elements)
    came_from = input_name
    for node in path_nodes:
        blocking = _blocking_reason(node, came_from, resolver)
        if blocking:
            return FirstLayerPath(input_name, dtype, shape, site, steps, NOT_APPLICABLE,
                                  blocking, None, elements)
        came_from = node.output[0]
    return _classify_site(input_name, dtype, shape, site, path_nodes, steps, infos,
                          resolver, opset, elements)


_FLOAT_TYPES = ("float", "float16", "double", "bfloat16")
_DISCRETE = "the input is "  # how _discrete_reason's answers start


def _needs_operator(reason: str, chain: list[NodeProto]) -> bool:
    """Whether a chain that passed the node-by-node checks still needs the path operator: a
    Pad that copies elements (reflect, edge, wrap) cannot be inverted node by node."""
    return any(n.op_type == "Pad" and node_attr(n, "mode", "constant") != "constant"
               for n in chain)


def _trace_operator(traced: FirstLayerPath, nodes: list[NodeProto],
                    infos: dict[str, TensorInfo], resolver: ConstantResolver,
                    opset: int) -> FirstLayerPath:
    """Classify a path that is not a chain of injective ops from its sparse operator: a
    selection lifts like a chain; a path that couples input elements needs W1 o path whole."""
    site = traced.site
    assert site is not None
    steps = tuple(PathStep(node_label(n, "main"), n.op_type) for n in nodes)
    base = replace(traced, path=steps, nodes=tuple(nodes))
    shape = _known(traced.input_shape)
    if shape is None:
        return replace(base, exactness=NOT_APPLICABLE, reason=(
            "the path to W1 needs the input's shape to be followed: pass --input-shape"))
    try:
        operator = build_path_operator(traced.input, shape, site.data_input, nodes, resolver,
                                       infos, opset)
    except UnsupportedModelError as exc:
        where = f" ({exc.where})" if exc.where else ""
        return replace(base, exactness=NOT_APPLICABLE, reason=f"{exc.what}{where}")
    reads = _w1_reads(site, infos, operator)
    counts = None
    if reads is not None and reads.size == operator.matrix.shape[0]:
        pattern = abs(operator.matrix).T
        counts = np.rint(pattern.sign() @ reads.reshape(-1)).astype(np.int64).reshape(
            operator.input_shape)
    base = replace(base, operator=operator, blind_elements=_blind(counts))
    if not operator.selection:
        return replace(base, exactness=OVERLAPPING, reason=(
            f"the path to W1 couples input elements ({operator.coupling}): W1 and the path "
            "are analysed as one operator at the real input size."))
    if site.op_type in _MATRIX_OPS:
        return replace(base, exactness=DENSE, reason=(
            f"{site.op_type} acts on a selection of the input's elements: every kernel vector "
            "of W1 lifts exactly."))
    if counts is not None and int(counts.max(initial=0)) > 1:
        return replace(base, exactness=OVERLAPPING, reason=(
            "conv windows share input elements: a tiled per-patch kernel vector is not a "
            "collision of the whole operator; analyse the conv operator on the real input "
            "size."))
    return replace(base, exactness=PATCHIFY, reason=(
        "conv windows never share an input element: per-patch kernel vectors lift exactly, "
        "patch by patch."))


def _elements_per_sample(shape: Shape | None, site: LinearSite | None,
                         path_nodes: list[NodeProto]) -> int | None:
    """Elements of one sample of the input: all but dim 0 (the batch), except for a 2-D
    input read directly as the right operand (``A @ x``, x (K, N)): its columns are the
    samples, K elements each."""
    per_sample = _known(shape)
    if per_sample is None or shape is None:
        return None
    if site is not None and not path_nodes and not site.weight_on_right and len(shape) == 2 \
            and site.op_type in _MATRIX_OPS \
            and shape[0] is not None:
        return int(shape[0])
    return int(np.prod(per_sample))


def _discrete_reason(dtype: str, path: list[NodeProto]) -> str:
    """Why an integer input is out of scope, in terms of what it is (token ids, pixels)."""
    first = path[0] if path else None
    if first is not None and first.op_type == "Gather":
        return (f"the input is {dtype} token ids looked up by Gather (node "
                f"'{node_label(first, 'main')}'): there is no continuous input to perturb")
    if first is not None and first.op_type == "Cast":
        return (f"the input is {dtype} (discrete values, e.g. pixels) and is Cast to float "
                f"(node '{node_label(first, 'main')}'): exact collisions would need integer "
                "perturbations in the kernel, which the Null-space search does not build")
    return f"the input is {dtype}, not a continuous space to perturb"


def _classify_site(input_name: str, dtype: str, shape: Shape | None, site: LinearSite,
                   path_nodes: list[NodeProto], steps: tuple[PathStep, ...],
                   infos: dict[str, TensorInfo], resolver: ConstantResolver, opset: int,
                   elements: int | None) -> FirstLayerPath:
    caveat = (" QuantizeLinear on the path rounds the input, so a collision must also survive "
              "that rounding." if any(n.op_type == "QuantizeLinear" for n in path_nodes) else "")
    data_info = infos.get(site.data_input)
    data_shape = _known(data_info.shape if data_info else None)

    def result(exactness: str, reason: str, counts: np.ndarray | None) -> FirstLayerPath:
        return FirstLayerPath(input_name, dtype, shape, site, steps, exactness, reason + caveat,
                              _blind(counts), elements)

    if site.op_type in _MATRIX_OPS:
        counts = _input_reads(path_nodes, input_name, infos, _w1_reads(site, infos), resolver,
                              opset)
        return result(DENSE, f"{site.op_type} acts on the input directly: every kernel vector "
                             "of W1 lifts exactly.", counts)
    _check_window_fits(input_name, shape, site, data_shape)
    counts = _input_reads(path_nodes, input_name, infos, _w1_reads(site, infos), resolver, opset)
    if site.op_type == "ConvTranspose":
        if _transpose_outputs_overlap(site, data_shape):
            return result(OVERLAPPING, "ConvTranspose outputs of neighbouring input positions "
                                       "overlap: per-position kernel vectors still lift exactly, "
                                       "but combinations across positions can cancel too, so "
                                       "analyse the whole operator on the real input size.",
                          counts)
        return result(PATCHIFY, "ConvTranspose adds up independent contributions v^T W of each "
                                "input position: per-position kernel vectors lift exactly.",
                      counts)
    copies = [n.op_type for n in path_nodes
              if n.op_type == "Pad" and node_attr(n, "mode", "constant") != "constant"]
    if counts is not None:
        overlap = int(counts.max(initial=0)) > 1
    else:
        overlap = _geometric_overlap(site) or bool(copies)
    if overlap:
        return result(OVERLAPPING, "conv windows share input elements: a tiled per-patch kernel "
                                   "vector is not a collision of the whole operator; analyse the "
                                   "conv operator on the real input size.", counts)
    return result(PATCHIFY, "conv windows never share an input element: per-patch kernel "
                            "vectors lift exactly, patch by patch.", counts)


def _transpose_outputs_overlap(site: LinearSite, data_shape: tuple[int, ...] | None) -> bool:
    """Whether two input positions of a ConvTranspose write to one kept output element.

    On an axis of known size, an output position (inside the cropped output) written by two
    input positions makes neighbouring positions overlap; where the size or the output
    geometry is unknown, the kernel, stride and dilation decide (as for Conv).
    """
    geometry = conv_geometry(site, site.weight_shape())
    axes = len(geometry.kernel)
    if data_shape is None or len(data_shape) != axes + 2:
        return _geometric_overlap(site)
    outputs = transposed_output_spatial(site, geometry, tuple(data_shape[2:]))
    if outputs is None:
        return _geometric_overlap(site)
    for a, out_len in enumerate(outputs):
        size, k, s, d = data_shape[2 + a], geometry.kernel[a], geometry.strides[a], \
            geometry.dilations[a]
        taps = (np.arange(size)[:, None] * s + np.arange(k)[None, :] * d - geometry.pads[a]).ravel()
        taps = taps[(taps >= 0) & (taps < out_len)]
        if taps.size and int(np.bincount(taps).max()) > 1:
            return True
    return False


def input_read_counts(route: FirstLayerPath, infos: dict[str, TensorInfo],
                      resolver: ConstantResolver, opset: int) -> np.ndarray | None:
    """How often W1 reads each element of one sample of the model input: per-sample shape
    (e.g. (C, H, W)) int64, 0 for a blind element; None where it cannot be followed."""
    if route.site is None:
        return None
    if route.operator is not None:
        reads = _w1_reads(route.site, infos, route.operator)
        if reads is None or reads.size != route.operator.matrix.shape[0]:
            return None
        pattern = abs(route.operator.matrix).T.sign()
        return np.rint(pattern @ reads.reshape(-1)).astype(np.int64).reshape(
            route.operator.input_shape)
    return _input_reads(list(route.nodes), route.input, infos, _w1_reads(route.site, infos),
                        resolver, opset)


def _w1_reads(site: LinearSite, infos: dict[str, TensorInfo],
              operator: PathOperator | None = None) -> np.ndarray | None:
    """How often W1 reads each element of one sample of its own data input: all ones for a
    matrix op, the window counts for a conv; None where the shape is unknown (shape inference
    does not know it, nor the path ``operator`` where given: after a Compress)."""
    data_info = infos.get(site.data_input)
    shape = data_info.shape if data_info else None
    if _known(shape) is None and operator is not None:
        shape = (1, *operator.data_shape)
    if site.op_type in _MATRIX_OPS:
        data_shape = _known(shape)
        return np.ones(data_shape[1:], np.int64) if data_shape and _countable(
            data_shape[1:]) else None
    return _conv_reads(site, shape) if shape else None


def _check_window_fits(input_name: str, shape: Shape | None, site: LinearSite,
                       data_shape: tuple[int, ...] | None) -> None:
    """A conv W1 whose (padded) input is smaller than its window has no output at all.

    Raises:
        UsageError: names the input, its shape, the node and the window (the input shape is
            the user's --input-shape or the model's own).
    """
    if site.op_type == "ConvTranspose" or data_shape is None:
        return
    geometry = conv_geometry(site, site.weight_shape())
    spatial = data_shape[2:]
    if len(spatial) != len(geometry.kernel):
        return
    extents = [(k - 1) * d + 1 for k, d in zip(geometry.kernel, geometry.dilations, strict=True)]
    padded = [n + b + e for n, (b, e) in zip(spatial, geometry.pads_for(spatial), strict=True)]
    if all(p >= e for p, e in zip(padded, extents, strict=True)):
        return
    dims = "x".join("?" if d is None else str(d) for d in shape) if shape else "?"
    raise UsageError(
        f"the input '{input_name}' ({dims}) is smaller than W1's window: node '{site.label}' "
        f"({site.op_type}) reads {'x'.join(map(str, extents))} from its input "
        f"'{site.data_input}', which is {'x'.join(map(str, padded))} with padding",
        hint=f"give '{input_name}' a larger --input-shape")
