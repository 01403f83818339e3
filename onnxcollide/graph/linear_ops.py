"""Find every linear op whose weight is constant, in the main graph and in subgraphs."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import NodeProto, TensorProto, helper

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.load import LoadedModel
from onnxcollide.graph.tensors import dtype_name
from onnxcollide.graph.walk import subgraphs

# op type -> (indices of the operands that may be the weight, in order of preference)
LINEAR_OPS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "ConvInteger": (1,),
    "QLinearConv": (3,),
    "Gemm": (1, 0),
    "MatMul": (1, 0),
    "MatMulInteger": (1, 0),
    "QLinearMatMul": (3, 0),
    "QGemm": (3, 0),  # ONNX Runtime's quantized Gemm (com.microsoft), from its QOperator format
}
MS_DOMAIN = "com.microsoft"
# Linear ops outside ONNX's own domain, with the domain they must come from.
_CONTRIB_LINEAR_OPS = {"QGemm": MS_DOMAIN}
# For two-sided ops: weight operand index -> data operand index.
_OTHER_OPERAND = {
    "Gemm": {1: 0, 0: 1},
    "MatMul": {1: 0, 0: 1},
    "MatMulInteger": {1: 0, 0: 1},
    "QLinearMatMul": {3: 0, 0: 3},
    "QGemm": {3: 0, 0: 3},
}
# Ops of ONNX's domain that hold weights but are not analysed: the inputs that may be weights
# (None: any input), and why.
_RECURRENT = ((1, 2), "recurrent weights are not analysed yet (only Conv/Gemm/MatMul and "
                      "their quantized forms are)")
_UNANALYSED_STANDARD: dict[str, tuple[tuple[int, ...] | None, str]] = {
    "LSTM": _RECURRENT,
    "GRU": _RECURRENT,
    "RNN": _RECURRENT,
    "Einsum": (None, "Einsum is not analysed: export the contraction as MatMul or Gemm to "
                     "audit it"),
    "DeformConv": ((1,), "deformable convolution is not analysed"),
}
# Ops of ONNX Runtime's domain that hold weights: their weight inputs and advice. Its other
# ops (normalisations, embeddings, rotary caches, attention on computed q/k/v) hold none.
_FUSION = ("an ONNX Runtime fusion: audit the model as exported, before ONNX Runtime's graph "
           "optimizations")
_NBITS = ("block-quantized n-bit weights are not dequantized here: quantize to QDQ format "
          "(DequantizeLinear with block_size) to audit them")
_DYNAMIC = "ONNX Runtime's dynamic quantization op: audit the float model it was made from"
_UNANALYSED_CONTRIB: dict[str, tuple[tuple[int, ...] | None, str]] = {
    "FusedConv": ((1,), _FUSION),
    "FusedGemm": ((0, 1), _FUSION),
    "FusedMatMul": ((0, 1), _FUSION),
    "NhwcConv": ((1,), _FUSION),
    "Attention": ((1,), "ONNX Runtime's fused attention: its packed QKV weight is not "
                        "analysed; audit the model as exported"),
    "QAttention": ((1,), "ONNX Runtime's quantized attention: its packed QKV weight is not "
                         "analysed; audit the float model it was made from"),
    "MatMulNBits": ((1,), _NBITS),
    "MatMulBnb4": ((1,), _NBITS),
    "MatMulFpQ4": ((1,), _NBITS),
    "DynamicQuantizeMatMul": ((1,), _DYNAMIC),
    "MatMulIntegerToFloat": ((0, 1), _DYNAMIC),
    "DynamicQuantizeLSTM": ((1, 2), _DYNAMIC),
    "QLinearConv": ((3,), "ONNX Runtime's channels-last QLinearConv (from its layout "
                          "optimizations): audit the model as exported"),
    "NhwcFusedConv": ((1,), _FUSION),
    "GemmFastGelu": ((1,), _FUSION),
    "ConvTransposeWithDynamicPads": ((1,), "ONNX Runtime's ConvTranspose with run-time pads is "
                                           "not analysed: export a standard ConvTranspose"),
    "MatMulInteger16": ((0, 1), "16-bit integer MatMul is not analysed: export in QDQ format"),
    "GemmFloat8": ((0, 1), "float8 Gemm is not analysed: export in QDQ format"),
    "DecoderAttention": ((1, 2), "ONNX Runtime's fused decoder attention: its weights are not "
                                 "analysed; audit the model as exported"),
    "LongformerAttention": ((1,), "ONNX Runtime's fused attention: its weight is not analysed; "
                                  "audit the model as exported"),
    "QOrderedMatMul": (None, _DYNAMIC),
    "QOrderedAttention": (None, _DYNAMIC),
    "MoE": (None, "mixture-of-experts weights are not analysed"),
    "QMoE": (None, "mixture-of-experts weights are not analysed"),
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
# Linear ops whose weights are integers by design (dequantized before the analysis).
QUANTIZED_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm"}


@dataclass(frozen=True)
class LinearSite:
    """One linear op with a constant weight operand.

    Attributes:
        label: unique, readable node name (scope-prefixed inside subgraphs).
        node: the NodeProto.
        weight_index: which input of the node is the weight.
        data_input: name of the variable operand.
        resolver: computes the weight and its quantization parameters.
        topo_index: position of the node in its graph (main graph: topological order).
        scope: label of the graph the node sits in (``main`` for the top graph).
    """

    label: str
    node: NodeProto
    weight_index: int
    data_input: str
    resolver: ConstantResolver
    topo_index: int
    scope: str

    @property
    def op_type(self) -> str:
        """The node's op type."""
        return str(self.node.op_type)

    @property
    def weight_name(self) -> str:
        """Name of the weight tensor as the node consumes it."""
        return str(self.node.input[self.weight_index])

    def weight_shape(self) -> tuple[int, ...]:
        """The weight tensor's shape, from the protos that hold it (never from value_info,
        which can be stale), else from its value."""
        declared = self.resolver.declared(self.weight_name)
        if declared is not None:
            return declared[0]
        return tuple(self.resolver.value(self.weight_name).shape)

    @property
    def weight_on_right(self) -> bool:
        """Whether the weight is the right operand (``x @ W``) of a two-sided op: every one
        has its left operand at input 0 (Gemm's B is input 1, QGemm's and QLinearMatMul's 3).
        """
        return self.weight_index != 0


@dataclass(frozen=True)
class SkippedOp:
    """An op that is not analysed, and why: a linear op without a constant operand (e.g.
    attention scores), or an op that holds weights onnxcollide does not read
    (``holds_weights``: LSTM, Einsum, ONNX Runtime's fused ops, a weight behind an op that
    is not evaluated)."""

    label: str
    op_type: str
    reason: str
    holds_weights: bool = False


def node_label(node: NodeProto, scope: str) -> str:
    """A readable, unique-enough name: the node name, else ``OpType:first_output``."""
    name = node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"
    return name if scope == "main" else f"{scope}/{name}"


def subgraph_label(node_label: str, attr_name: str) -> str:
    """The scope label of a node's subgraph, e.g. ``loop_1/body``."""
    return f"{node_label}/{attr_name}"


def _classify(
    node: NodeProto, resolver: ConstantResolver
) -> tuple[int, str] | str:
    """Return (weight index, data input) or a reason why the op is skipped."""
    candidates = LINEAR_OPS[node.op_type]
    inputs = list(node.input)
    if len(inputs) <= max(candidates):
        return "has fewer inputs than the op needs"
    constant = [k for k in candidates if resolver.is_constant(inputs[k])]
    if not constant:
        blocked = _blocked_weight(inputs, candidates, resolver)
        if blocked:
            return blocked
    if node.op_type in _OTHER_OPERAND:
        if len(constant) == len(candidates):
            return "both operands are constant (constant folding, not a layer)"
        if not constant:
            return "no operand is constant (e.g. attention scores): no trainable weight"
        weight = constant[0]
        return _integer_reason(node, inputs[weight], resolver) or (
            weight, inputs[_OTHER_OPERAND[node.op_type][weight]])
    if not constant:
        return "weight is not constant (computed at run time)"
    if resolver.is_constant(inputs[0]):
        return "both operands are constant (constant folding, not a layer)"
    return _integer_reason(node, inputs[constant[0]], resolver) or (constant[0], inputs[0])


def _integer_reason(node: NodeProto, weight: str, resolver: ConstantResolver) -> str | None:
    """Why a float op (Conv, Gemm, MatMul) on an integer weight is skipped: ONNX allows
    integer MatMul and Gemm, which exporters use for index and shape arithmetic."""
    if node.op_type in QUANTIZED_OPS:
        return None
    declared = resolver.declared_type(weight)
    if declared is None or declared[1] in _FLOAT_TYPES:
        return None
    return (f"the weight is {dtype_name(declared[1])}: integer arithmetic (indices, counts), "
            "not a float layer")


BLOCKED_WEIGHT = "the weight"  # how a skip reason for a weight behind an unevaluated op begins


def _blocked_weight(inputs: list[str], candidates: tuple[int, ...],
                    resolver: ConstantResolver) -> str | None:
    """Why a weight operand made from constants only is not read: the op on the way that is
    not evaluated here (an op of another domain, control flow); None if there is none."""
    for k in candidates:
        blocker = resolver.unfolded_op(inputs[k])
        if blocker is not None:
            domain = blocker.domain if blocker.domain not in ("", "ai.onnx") else "ai.onnx"
            return (f"{BLOCKED_WEIGHT} '{inputs[k]}' is computed from constants by "
                    f"{op_name(blocker)} '{node_label(blocker, 'main')}' (domain '{domain}'), "
                    "which is not evaluated here: export with constant folding, or make the "
                    "weight an initializer")
    return None


def is_linear_op(node: NodeProto) -> bool:
    """Whether the node is one of the linear ops analysed (in the domain it must come from)."""
    if node.op_type in _CONTRIB_LINEAR_OPS:
        return node.domain == _CONTRIB_LINEAR_OPS[node.op_type]
    return node.domain in ("", "ai.onnx") and node.op_type in LINEAR_OPS


def _constant_matrices(node: NodeProto, resolver: ConstantResolver,
                       indices: tuple[int, ...] | None, float_only: bool) -> list[str]:
    """The node's weights: constant inputs among ``indices`` (None: all) whose declared
    shape has two or more dimensions, or is not declared (a computed weight), each once.
    ``float_only`` (an op of an unknown domain): declared float tensors only (integer tensors
    there are indices or shapes). None when every input is constant (a node that constant
    folding would remove). No value is loaded."""
    names = [name for name in node.input if name]
    if all(resolver.is_constant(name) for name in names):
        return []
    chosen = names if indices is None else [node.input[k] for k in indices
                                            if k < len(node.input) and node.input[k]]
    matrices: list[str] = []
    for name in dict.fromkeys(chosen):
        if not resolver.is_constant(name):
            continue
        declared = resolver.declared_type(name)
        if float_only:
            if declared is not None and declared[0] >= 2 and declared[1] in _FLOAT_TYPES:
                matrices.append(name)
        elif declared is None or declared[0] >= 2:
            matrices.append(name)
    return matrices


def _unanalysed_reason(node: NodeProto, resolver: ConstantResolver) -> str | None:
    """Why a node that holds weights is not analysed; None for nodes that hold none (ONNX
    ops that are not layers, such as an embedding Gather, and ONNX Runtime ops without
    weights)."""
    standard = node.domain in ("", "ai.onnx")
    if standard:
        known = _UNANALYSED_STANDARD.get(node.op_type)
    elif node.domain == MS_DOMAIN:
        known = _UNANALYSED_CONTRIB.get(node.op_type)
    else:
        known = (None, "")
    if known is None:
        return None
    indices, why = known
    other_domain = not standard and node.domain != MS_DOMAIN
    matrices = _constant_matrices(node, resolver, indices, float_only=other_domain)
    if not matrices:
        return None
    held = ", ".join(f"'{name}'" for name in matrices)
    if not other_domain:
        return f"holds the weights {held}: {why}"
    return (f"an op of domain '{node.domain}' that reads the constant matrices {held}: only "
            "ONNX's Conv/Gemm/MatMul ops (quantized forms included) and ONNX Runtime's QGemm "
            "are analysed")


def op_name(node: NodeProto) -> str:
    """The op type, prefixed with its domain outside ONNX's own and ONNX Runtime's."""
    if node.domain in ("", "ai.onnx", MS_DOMAIN):
        return str(node.op_type)
    return f"{node.domain}.{node.op_type}"


def find_linear_ops(model: LoadedModel) -> tuple[list[LinearSite], list[SkippedOp]]:
    """Walk the graph and its subgraphs; return the analysable linear ops and the skipped ones."""
    root = Scope.of_graph(model.proto.graph, "main", None)
    resolver = ConstantResolver(root, model.base_dir, list(model.proto.opset_import))
    sites: list[SkippedOp | LinearSite] = []
    _walk_graph(model.proto.graph, resolver, sites)
    found = [s for s in sites if isinstance(s, LinearSite)]
    skipped = [s for s in sites if isinstance(s, SkippedOp)]
    return found, skipped


def _walk_graph(
    graph: onnx.GraphProto, resolver: ConstantResolver, out: list[SkippedOp | LinearSite]
) -> None:
    scope_label = resolver.scope.label
    for index, node in enumerate(graph.node):
        label = node_label(node, scope_label)
        if is_linear_op(node):
            verdict = _classify(node, resolver)
            if isinstance(verdict, str):
                blocked = verdict.startswith(BLOCKED_WEIGHT)
                out.append(SkippedOp(label, node.op_type, verdict, holds_weights=blocked))
            else:
                weight, data = verdict
                out.append(LinearSite(label, node, weight, data, resolver, index, scope_label))
        elif (reason := _unanalysed_reason(node, resolver)) is not None:
            out.append(SkippedOp(label, op_name(node), reason, holds_weights=True))
        for attr_name, sub in subgraphs(node):
            sub_scope = Scope.of_graph(sub, subgraph_label(label, attr_name), resolver.scope)
            _walk_graph(sub, resolver.child(sub_scope), out)


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial parameters of a Conv / ConvTranspose (one entry per spatial axis).

    Attributes:
        kernel: kernel size per axis.
        strides: stride per axis.
        dilations: dilation per axis.
        pads: explicit begin pads then end pads (length 2 * axes); auto_pad resolves later.
        auto_pad: ``NOTSET``, ``VALID``, ``SAME_UPPER`` or ``SAME_LOWER``.
        groups: the op's ``group`` attribute.
        transposed: True for ConvTranspose.
    """

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str
    groups: int
    transposed: bool

    def pads_for(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        """(begin, end) padding per spatial axis for an input of this spatial size, with
        auto_pad SAME_UPPER / SAME_LOWER / VALID resolved."""
        axes = len(self.kernel)
        out = []
        for a in range(axes):
            extent = (self.kernel[a] - 1) * self.dilations[a] + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                windows = -(-spatial[a] // self.strides[a])
                total = max(0, (windows - 1) * self.strides[a] + extent - spatial[a])
                small = total // 2
                out.append((small, total - small) if self.auto_pad == "SAME_UPPER"
                           else (total - small, small))
            elif self.auto_pad == "VALID":
                out.append((0, 0))
            else:
                out.append((self.pads[a], self.pads[a + axes]))
        return out


def _bad_attribute(node: NodeProto, name: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"attribute '{name}' {what}",
                                 f"node '{node.name or node.output[0]}' ({node.op_type})",
                                 "the model is corrupt: re-export it")


def node_attr(node: NodeProto, name: str, default: object) -> object:
    """An attribute's value (bytes decoded to str), or ``default`` when absent.

    Raises:
        UnsupportedModelError: the attribute has no value of a known type, or text that is
            not UTF-8.
    """
    for attr in node.attribute:
        if attr.name == name:
            try:
                value = helper.get_attribute_value(attr)
                value = value.decode() if isinstance(value, bytes) else value
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise _bad_attribute(node, name, f"cannot be read ({exc})") from exc
            if value is None:
                raise _bad_attribute(node, name, "has no value of a known type")
            return value
    return default


def node_int(node: NodeProto, name: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent.

    Raises:
        UnsupportedModelError: it holds something else (a float, a list, text).
    """
    value = node_attr(node, name, default)
    if not isinstance(value, int):
        raise _bad_attribute(node, name, f"is {type(value).__name__}, not an integer")
    return value


def node_flag(node: NodeProto, name: str) -> bool:
    """A 0/1 attribute such as Gemm's ``transA``/``transB`` (absent: 0).

    Raises:
        UnsupportedModelError: it is not 0 or 1.
    """
    value = node_int(node, name, 0)
    if value not in (0, 1):
        raise _bad_attribute(node, name, f"is {value}, not 0 or 1")
    return bool(value)


def node_float(node: NodeProto, name: str, default: float) -> float:
    """A float attribute (an integer is taken as one), or ``default`` when absent.

    Raises:
        UnsupportedModelError: it holds something else.
    """
    value = node_attr(node, name, default)
    if not isinstance(value, (int, float)):
        raise _bad_attribute(node, name, f"is {type(value).__name__}, not a number")
    return float(value)


def node_ints(node: NodeProto, name: str, default: list[int]) -> tuple[int, ...]:
    """An integer-list attribute, or ``default`` when absent.

    Raises:
        UnsupportedModelError: it holds something else.
    """
    value = node_attr(node, name, default)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise _bad_attribute(node, name, "is not a list of integers")
    return tuple(int(v) for v in value)


def conv_geometry(site: LinearSite, weight_shape: tuple[int, ...]) -> ConvGeometry:
    """Read kernel, strides, dilations, pads and groups of a conv site.

    Raises:
        UnsupportedModelError: the weight is not (O, C/g, k...).
    """
    axes = len(weight_shape) - 2
    if axes < 1:
        raise UnsupportedModelError(f"conv weight has shape {weight_shape}, need (O, C/g, k...)",
                                    f"node '{site.label}' ({site.op_type})")
    node = site.node
    geometry = ConvGeometry(
        kernel=node_ints(node, "kernel_shape", list(weight_shape[2:])),
        strides=node_ints(node, "strides", [1] * axes),
        dilations=node_ints(node, "dilations", [1] * axes),
        pads=node_ints(node, "pads", [0] * (2 * axes)),
        auto_pad=str(node_attr(node, "auto_pad", "NOTSET")),
        groups=_group_attr(node),
        transposed=site.op_type == "ConvTranspose",
    )
    _check_geometry(geometry, weight_shape, f"node '{site.label}' ({site.op_type})")
    return geometry


def _group_attr(node: NodeProto) -> int:
    """The ``group`` attribute (checked to be an integer; its range by _check_geometry)."""
    return node_int(node, "group", 1)


def _check_geometry(geometry: ConvGeometry, weight_shape: tuple[int, ...], where: str) -> None:
    """A conv's attributes must describe a conv of its weight.

    Raises:
        UnsupportedModelError: group, a stride or a dilation below 1, a negative pad, kernel
            sizes or attribute lengths that disagree with the weight, or output channels
            the groups do not divide.
    """
    axes = len(weight_shape) - 2
    problem = None
    if geometry.groups < 1:
        problem = f"group is {geometry.groups}, not a positive integer"
    elif any(s < 1 for s in geometry.strides) or len(geometry.strides) != axes:
        problem = f"strides {geometry.strides} are not {axes} positive integers"
    elif any(d < 1 for d in geometry.dilations) or len(geometry.dilations) != axes:
        problem = f"dilations {geometry.dilations} are not {axes} positive integers"
    elif any(p < 0 for p in geometry.pads) or len(geometry.pads) != 2 * axes:
        problem = f"pads {geometry.pads} are not {2 * axes} non-negative integers"
    elif tuple(geometry.kernel) != tuple(weight_shape[2:]):
        problem = f"kernel_shape {geometry.kernel} disagrees with the weight {weight_shape}"
    elif not geometry.transposed and weight_shape[0] % geometry.groups:
        problem = f"{weight_shape[0]} output channels are not divisible by group {geometry.groups}"
    if problem is not None:
        raise UnsupportedModelError(f"the conv's attributes are invalid: {problem}", where,
                                    "the model is corrupt: re-export it")


def transposed_output_spatial(site: LinearSite, geometry: ConvGeometry,
                              spatial: tuple[int, ...]) -> tuple[int, ...] | None:
    """A ConvTranspose's output spatial size for the input spatial size ``spatial``, where
    its output geometry is explicit (pads, output_padding); None with auto_pad or
    output_shape."""
    if geometry.auto_pad not in ("NOTSET", "") or \
            node_attr(site.node, "output_shape", None) is not None:
        return None
    axes = len(geometry.kernel)
    extra = node_ints(site.node, "output_padding", [0] * axes)
    return tuple(s * (n - 1) + e + (k - 1) * d + 1 - geometry.pads[a] - geometry.pads[a + axes]
                 for a, (n, k, s, d, e) in enumerate(zip(
                     spatial, geometry.kernel, geometry.strides, geometry.dilations, extra,
                     strict=True)))
