"""LinearLayer records: each linear op's weight as matrix blocks in one convention.

Convention (DESIGN.md): a layer acts as ``y = v^T W``, ``v`` in R^q one input vector (for Conv:
one input patch flattened in (channel, kernel...) order), ``W`` in R^{q x p}. Collisions live in
the left kernel ker(W^T), of dimension ``q - rank(W)``. Grouped convs and stacked MatMul weights
are block diagonal: ``groups`` blocks of ``(q / groups) x (p / groups)``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import dequantize
from onnxcollide.graph.linear_ops import (
    QUANTIZED_OPS,
    ConvGeometry,
    LinearSite,
    NodeProto,
    conv_geometry,
    node_attr,
    node_flag,
    node_float,
)
from onnxcollide.graph.shapes import TensorInfo
from onnxcollide.graph.tensors import array_dtype_name, dtype_name


class ConvConvention(str, enum.Enum):
    """How a grouped conv weight becomes a matrix."""

    GROUPED = "grouped"  # block diagonal, one block per group (the operator's true rank)
    PAPER = "paper"  # one (C/g * prod k) x O matrix: a naive reading of the paper, Table 1


@dataclass(frozen=True)
class LinearLayer:
    """One parameter: a constant weight seen as ``groups`` blocks of shape (q/g, p/g).

    Attributes:
        nodes: labels of every node that uses this parameter the same way.
        weight_id: the weight tensor, unique across scopes, the same for copies of one
            constant chain (``ConstantResolver.identity``).
        op: op type of the first node.
        weight: the weight tensor name consumed by the first node.
        roots: initializer / Constant names the weight is computed from.
        chain: ops applied to the roots to make the weight (e.g. ``DequantizeLinear``).
        q: input dimension (rows of W, all blocks).
        p: output dimension (columns of W, all blocks).
        groups: number of diagonal blocks.
        layout: how W was read off the weight tensor, in words.
        stored_dtype: element type the weight is stored in.
        compute_dtype: element type whose eps sets the rank tolerance.
        geometry: conv parameters, None for Gemm/MatMul.
        data_input: the op's variable operand.
        topo_index: node position in its graph.
        scope: graph the node sits in.
        quantization: digest of the scale and zero point values a quantized op dequantizes the
            weight with ("" for float ops): nodes that share an integer weight but dequantize it
            differently read different matrices.
        reading: which matrix is read off the weight tensor, independent of the op's name
            (e.g. ``T^T`` for Gemm with transB=1 and for MatMul with the weight on the left):
            a Gemm and a MatMul that read the same matrix are one parameter.
    """

    nodes: tuple[str, ...]
    weight_id: str
    op: str
    weight: str
    roots: tuple[str, ...]
    chain: tuple[str, ...]
    q: int
    p: int
    groups: int
    layout: str
    stored_dtype: str
    compute_dtype: str
    geometry: ConvGeometry | None
    data_input: str
    topo_index: int
    scope: str
    load_blocks: Callable[[], np.ndarray] = field(compare=False, repr=False)
    quantization: str = ""
    reading: str = ""

    @property
    def block_shape(self) -> tuple[int, int]:
        """Shape (q/g, p/g) of one diagonal block."""
        return self.q // self.groups, self.p // self.groups


# ----------------------------------------------------------------- helpers




def _where(site: LinearSite) -> str:
    return f"node '{site.label}' ({site.op_type})"


def _value(site: LinearSite, index: int) -> np.ndarray | None:
    inputs = list(site.node.input)
    if index >= len(inputs) or not inputs[index]:
        return None
    return np.asarray(site.resolver.value(inputs[index]))


def _info(site: LinearSite, name: str, infos: dict[str, TensorInfo]) -> TensorInfo | None:
    """What shape inference knows of ``name`` as the site's scope sees it."""
    return infos.get(site.resolver.qualified(name))


def _float_dtype(site: LinearSite) -> str:
    """The element type the op computes the weight in (``float``, ``float16``, ...)."""
    declared = site.resolver.declared(site.weight_name)
    if declared is not None:
        return dtype_name(declared[1])
    return array_dtype_name(site.resolver.value(site.weight_name).dtype)


# op -> weight index -> (scale index or None, zero point index or None)
_QPARAMS: dict[str, dict[int, tuple[int | None, int | None]]] = {
    "QLinearConv": {3: (4, 5)},
    "ConvInteger": {1: (None, 3)},
    "QLinearMatMul": {3: (4, 5), 0: (1, 2)},
    "MatMulInteger": {1: (None, 3), 0: (None, 2)},
    "QGemm": {3: (4, 5), 0: (1, 2)},
}


def _quantization_digest(site: LinearSite) -> str:
    """SHA-256 over the dtype, shape and bytes of the weight's scale and zero point."""
    if site.op_type not in QUANTIZED_OPS:
        return ""
    digest = hashlib.sha256()
    for index in _QPARAMS[site.op_type][site.weight_index]:
        value = _value(site, index) if index is not None else None
        if value is None:
            digest.update(b"none;")
            continue
        digest.update(f"{value.dtype.str}{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _float_weight(site: LinearSite, axis: int) -> np.ndarray:
    """The weight as floats: dequantized for integer ops (``(w - zp) * scale`` along ``axis``)."""
    weight = site.resolver.value(site.weight_name)
    if site.op_type not in QUANTIZED_OPS:
        return weight
    scale_i, zero_i = _QPARAMS[site.op_type][site.weight_index]
    scale = _value(site, scale_i) if scale_i is not None else None
    zero = _value(site, zero_i) if zero_i is not None else None
    scale = np.ones((), np.float32) if scale is None else scale.astype(np.float32)
    if scale.ndim > 1 or (zero is not None and zero.ndim > 1):
        return _dequantize_broadcast(site, np.asarray(weight), scale, zero)
    if zero is not None and zero.size > 1 and scale.size == 1:
        scale = np.broadcast_to(scale, zero.shape)
    return dequantize(np.asarray(weight), scale, zero, axis)


def _dequantize_broadcast(site: LinearSite, weight: np.ndarray, scale: np.ndarray,
                          zero: np.ndarray | None) -> np.ndarray:
    """``(w - zero) * scale`` in float32 for N-D quantization parameters that broadcast
    against the weight (MatMulInteger allows e.g. a (D1, D2, 1, N) zero point for a
    (D1, D2, K, N) weight)."""
    shapes = [scale.shape] + ([] if zero is None else [zero.shape])
    try:
        fits = np.broadcast_shapes(weight.shape, *shapes) == weight.shape
    except ValueError:
        fits = False
    if not fits:
        raise UnsupportedModelError(
            f"quantization parameters of shape {' and '.join(map(str, shapes))} do not "
            f"broadcast against the weight's {weight.shape}", _where(site),
            "quantize per tensor or per axis")
    weight_f = weight.astype(np.float32)
    if zero is not None:
        weight_f = weight_f - zero.astype(np.float32)
    return weight_f * scale


# ----------------------------------------------------------------- conv


def _conv_blocks(weight: np.ndarray, groups: int, transposed: bool) -> np.ndarray:
    """Conv (O, C/g, k...) -> (g, C/g*K, O/g); ConvTranspose (C, O/g, k...) -> (g, C/g, O/g*K)."""
    lead = weight.shape[0]
    per_group = weight.reshape(groups, lead // groups, int(np.prod(weight.shape[1:])))
    return per_group if transposed else per_group.transpose(0, 2, 1)


def _conv_layer_parts(
    site: LinearSite, infos: dict[str, TensorInfo], convention: ConvConvention
) -> tuple[int, int, int, str, ConvGeometry, Callable[[], np.ndarray]]:
    wshape = site.weight_shape()
    geometry = conv_geometry(site, wshape)
    g = geometry.groups
    kernel_size = int(np.prod(wshape[2:]))
    if wshape[0] % g:
        raise UnsupportedModelError(f"weight dim 0 ({wshape[0]}) is not divisible by "
                                    f"group={g}", _where(site))
    blocks = 1 if convention is ConvConvention.PAPER else g
    if geometry.transposed:
        q, p = wshape[0], wshape[1] * kernel_size * blocks
        layout = "(C_in/g) x (C_out/g * prod k) per group"
    else:
        q, p = wshape[1] * kernel_size * blocks, wshape[0]
        layout = "(C/g * prod k) x (O/g) per group"
    if convention is ConvConvention.PAPER:  # the group's blocks side by side: O (or C_in) whole
        whole = "C_in x (C_out/g * prod k)" if geometry.transposed else "(C/g * prod k) x O"
        layout = f"paper: one {whole} matrix"
    elif g > 1:
        layout = f"grouped: {g} blocks of " + layout.replace(" per group", "")
    axis = 0  # quantized conv weights are per output channel (axis 0)

    def load() -> np.ndarray:
        return _conv_blocks(_float_weight(site, axis), blocks, geometry.transposed)

    return q, p, blocks, layout, geometry, load


# ----------------------------------------------------------------- gemm / matmul


def _gemm_parts(site: LinearSite, infos: dict[str, TensorInfo]
                ) -> tuple[int, int, int, str, str, Callable[[], np.ndarray]]:
    wshape = site.weight_shape()
    if len(wshape) != 2:
        raise UnsupportedModelError(f"Gemm weight has shape {wshape}, expected 2-D", _where(site))
    alpha = node_float(site.node, "alpha", 1.0)
    on_right = site.weight_on_right
    flag = "transB" if on_right else "transA"
    trans = int(node_flag(site.node, flag))
    # x @ B': W = B' ; A' @ x: W = A'^T.  So W = weight^T exactly when (right and trans) or
    # (left and not trans).
    transpose = trans == 1 if on_right else trans == 0
    # QGemm's per-column scales and zero points run along W's output axis (N of B', M of A').
    output_axis = 0 if transpose else 1
    q, p = (wshape[1], wshape[0]) if transpose else wshape
    side = "B" if on_right else "A"
    layout = f"W = {side}{'^T' if transpose else ''} ({flag}={trans})"
    reading = _matrix_reading(transpose)
    if alpha != 1.0:
        layout += f", alpha={alpha:g}"
        reading += f" * {alpha!r}"

    def load() -> np.ndarray:
        weight = _float_weight(site, output_axis)
        matrix = weight.T if transpose else weight
        if alpha == 1.0:
            return matrix[None]
        # at least float32: alpha * W can overflow float16 (the rank is alpha's to scale)
        return (matrix.astype(np.promote_types(matrix.dtype, np.float32)) * alpha)[None]

    return q, p, 1, layout, reading, load


def _matrix_reading(transpose: bool) -> str:
    """The matrix a 2-D weight tensor T stands for: ``T`` or ``T^T``."""
    return "T^T" if transpose else "T"


def _stack_modes(site: LinearSite, infos: dict[str, TensorInfo], lead: tuple[int, ...]
                 ) -> tuple[str, ...]:
    """Per stack axis of the weight: ``blocks`` when the data operand has its own entries along
    it (one matrix per data slice), ``concat`` when the data is broadcast along it (every
    matrix sees the same input), ``blocks?`` when the data operand's dim is unknown (block
    diagonal is assumed). Axes of size 1 count as ``concat`` (nothing to stack)."""
    info = _info(site, site.data_input, infos)
    data_lead = None if info is None or info.shape is None else info.shape[:-2]
    modes = []
    for axis, size in enumerate(lead):
        offset = axis - len(lead)  # stack dims align from the right, as in numpy broadcasting
        if size == 1:
            modes.append("concat")
        elif data_lead is None:
            modes.append("blocks?")
        elif len(data_lead) < -offset or data_lead[offset] == 1:
            modes.append("concat")
        else:
            modes.append("blocks?" if data_lead[offset] is None else "blocks")
    return tuple(modes)


def _stack_layout(stack: int, modes: tuple[str, ...], groups: int) -> str:
    """The stacking in words, for the layer's layout."""
    assumed = "blocks?" in modes
    if groups == 1:
        how = "side by side: the input is shared"
    elif groups == stack:
        how = "block diagonal" + (", assumed: the data operand's shape is unknown"
                                  if assumed else "")
    else:
        how = (f"{groups} diagonal blocks of {stack // groups} side by side: the input is "
               "shared along the broadcast axes")
        how += "; blocks assumed where the data operand's shape is unknown" if assumed else ""
    return f"{stack} stacked matrices ({how})"


def _arrange_stack(mats: np.ndarray, lead: tuple[int, ...], modes: tuple[str, ...]
                   ) -> np.ndarray:
    """(S, q, p) stacked matrices -> (groups, q, p * per_group): the block axes become
    diagonal blocks, the broadcast (``concat``) axes put matrices side by side in each block."""
    q, p = mats.shape[-2:]
    block_axes = [a for a, m in enumerate(modes) if m != "concat"]
    concat_axes = [a for a, m in enumerate(modes) if m == "concat"]
    groups = int(np.prod([lead[a] for a in block_axes], dtype=np.int64))
    per_group = mats.shape[0] // groups
    ordered = mats.reshape(*lead, q, p).transpose(*block_axes, *concat_axes, len(lead),
                                                  len(lead) + 1)
    return ordered.reshape(groups, per_group, q, p).transpose(0, 2, 1, 3).reshape(
        groups, q, per_group * p)


def _matmul_parts(site: LinearSite, infos: dict[str, TensorInfo]
                  ) -> tuple[int, int, int, str, str, Callable[[], np.ndarray]]:
    wshape = site.weight_shape()
    on_right = site.weight_on_right
    lead: tuple[int, ...] = ()
    if len(wshape) == 1:  # a vector operand: x @ b gives W = b (K x 1); a @ x gives W = a
        q, p, stack = wshape[0], 1, 1
    else:
        k_dim, n_dim = (wshape[-2], wshape[-1]) if on_right else (wshape[-1], wshape[-2])
        lead = wshape[:-2]
        stack = int(np.prod(lead)) if lead else 1
        q, p = k_dim, n_dim
    modes = _stack_modes(site, infos, lead)
    groups = int(np.prod([n for n, m in zip(lead, modes, strict=True) if m != "concat"],
                         dtype=np.int64))
    layout = "W = B" if on_right else "W = A^T"
    # A vector operand is W = that vector (K x 1) on either side; a matrix W = T or T^T.
    reading = "T (vector)" if len(wshape) == 1 else _matrix_reading(not on_right)
    if stack > 1:
        layout += f", {_stack_layout(stack, modes, groups)}"
        reading = f"MatMul {layout}"
    quant_axis = -1 if on_right else -2

    def load() -> np.ndarray:
        weight = _float_weight(site, quant_axis if len(wshape) > 1 else 0)
        if weight.ndim == 1:
            return weight.reshape(1, -1, 1)
        mats = weight.reshape(stack, weight.shape[-2], weight.shape[-1])
        mats = mats if on_right else mats.transpose(0, 2, 1)
        return mats if groups == stack else _arrange_stack(mats, lead, modes)

    return q * groups, p * stack, groups, layout, reading, load


# ----------------------------------------------------------------- public


def build_layer(
    site: LinearSite, infos: dict[str, TensorInfo], convention: ConvConvention
) -> LinearLayer:
    """Turn one linear site into a LinearLayer (the weight itself is loaded later, on demand).

    Raises:
        UnsupportedModelError: the weight's shape does not fit the op.
    """
    trace = site.resolver.trace(site.weight_name)
    geometry = None
    if site.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        q, p, groups, layout, geometry, load = _conv_layer_parts(site, infos, convention)
        reading = f"{site.op_type} {layout}"
    elif site.op_type in ("Gemm", "QGemm"):
        q, p, groups, layout, reading, load = _gemm_parts(site, infos)
    else:
        q, p, groups, layout, reading, load = _matmul_parts(site, infos)
    compute = "float" if site.op_type in QUANTIZED_OPS else _float_dtype(site)
    if site.op_type in QUANTIZED_OPS:
        layout += " (dequantized)"
    weight_id, reading = _matrix_identity(site, reading)
    return LinearLayer(
        nodes=(site.label,), weight_id=weight_id,
        op=site.op_type, weight=site.weight_name, roots=trace.roots,
        chain=trace.ops, q=int(q), p=int(p), groups=int(groups), layout=layout,
        stored_dtype=trace.stored_dtype, compute_dtype=compute, geometry=geometry,
        data_input=site.data_input, topo_index=site.topo_index, scope=site.scope,
        load_blocks=load, quantization=_quantization_digest(site), reading=reading,
    )


def _matrix_identity(site: LinearSite, reading: str) -> tuple[str, str]:
    """(identity, reading) of the matrix a float Gemm/MatMul reads off a 2-D weight, with
    2-D Transpose nodes on the weight folded into the reading: ``Gemm(x, B, transB=1)`` and
    ``MatMul(x, Transpose(B))`` read one matrix, B^T, of one tensor."""
    if site.op_type not in ("Gemm", "MatMul") or reading not in ("T", "T^T"):
        return site.resolver.identity(site.weight_name), reading
    name, flips = site.weight_name, 0
    node = site.resolver.producer(name)
    while node is not None and node.op_type == "Transpose" and _swaps_two_axes(site, node):
        name, flips = node.input[0], flips + 1
        node = site.resolver.producer(name)
    transposed = (reading == "T^T") != (flips % 2 == 1)
    return site.resolver.identity(name), _matrix_reading(transposed)


def _swaps_two_axes(site: LinearSite, node: NodeProto) -> bool:
    """Whether a Transpose node is the plain transpose of a 2-D tensor."""
    declared = site.resolver.declared(node.input[0]) if node.input and node.input[0] else None
    return declared is not None and len(declared[0]) == 2 and \
        node_attr(node, "perm", [1, 0]) == [1, 0]


def parameter_key(layer: LinearLayer) -> tuple[object, ...]:
    """Layers with equal keys are one parameter used by several nodes the same way: the same
    matrix read off the same tensor (whatever the op: a Gemm with transB=0 and a MatMul with
    the weight on the right read the same matrix), and for quantized ops the same scale and
    zero point values."""
    return (layer.weight_id, layer.reading, layer.q, layer.p, layer.groups, layer.quantization)
