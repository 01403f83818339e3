"""Rewrites for validation runs: intermediate tensors as graph outputs, and a float64 copy.

Both functions return a new ModelProto and never read external data: a tensor whose bytes live in
an external file stays external (the float64 copy casts it to double inside the graph instead of
converting its bytes), so the rewritten model still refers to the same files and
``onnxcollide.runtime`` decides how a session gets them. Only ``onnx`` is used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, TypeProto, helper, numpy_helper

from onnxcollide.errors import UsageError
from onnxcollide.graph.tensors import dtype_name, is_external
from onnxcollide.graph.walk import graphs_in

DOUBLE = TensorProto.DOUBLE
# Element types the float64 copy turns into double.
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Ops that round activations to integers: a float64 copy cannot take that rounding out.
_QUANTIZING_OPS = frozenset({
    "QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QAttention", "DynamicQuantizeLSTM",
})
# Integer attributes that name the element type of an op's output.
_DTYPE_ATTRS = {
    "Cast": "to",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "EyeLike": "dtype",
    "Bernoulli": "dtype",
    "SequenceEmpty": "dtype",
}
# Embedded float initializers above this size are cast to double in the graph, not in the proto,
# so that the float64 copy stays under protobuf's 2 GiB limit.
_CAST_IN_GRAPH_BYTES = 64 << 20
_DOUBLE_STR = "tensor(double)"


# ------------------------------------------------------------------ extra outputs


def with_extra_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose graph outputs also include the named tensors.

    Each new output carries the element type shape inference gives it (no shape, so a wrong
    static guess cannot clash with what a runtime computes); where inference knows nothing,
    it is added untyped, which ONNX Runtime and the reference evaluator both accept. Names
    that already are graph outputs are not added twice.

    Args:
        model: the model (not modified; external data is not read).
        names: tensors of the main graph: node outputs, graph inputs or initializers.

    Raises:
        UsageError: a name is not a tensor of the main graph.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    present = {value.name for value in graph.output}
    wanted = [name for name in dict.fromkeys(names) if name not in present]
    known = _main_graph_tensors(graph)
    for name in wanted:
        if name not in known:
            raise UsageError(
                f"the model has no tensor named '{name}' in its main graph", f"tensor '{name}'",
                "name a node output of the main graph (tensors inside If/Loop/Scan bodies "
                "cannot be graph outputs)")
    types = inferred_elem_types(copy) if wanted else {}
    for name in wanted:
        elem = types.get(name, 0)
        graph.output.append(helper.make_tensor_value_info(name, elem, None) if elem
                            else onnx.ValueInfoProto(name=name))
    return copy


def _main_graph_tensors(graph: GraphProto) -> set[str]:
    names = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    names |= {out for node in graph.node for out in node.output if out}
    return names


def inferred_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Return tensor name -> ONNX element type for every tensor shape inference types.

    Covers the main graph and every subgraph. Inference is best effort: where it fails (unknown
    domains, a proto over 2 GiB) the types the model declares itself are returned.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # onnx raises plain exceptions from C++; declared types still help
        inferred = model
    types: dict[str, int] = {}
    for graph in graphs_in(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for tensor in graph.initializer:
            types[tensor.name] = tensor.data_type
    return types


# ------------------------------------------------------------------ float64 copy


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a float64 copy of ``model``: the same math with every float tensor in double.

    Float32, float16 and bfloat16 initializers, Constant values (``value``, ``value_float``,
    ``value_floats``) and tensor attributes (ConstantOfShape's ``value``) become double;
    Cast/RandomNormal/EyeLike/... that produce a float type produce double; graph inputs,
    outputs and value_info of float types become double, in the main graph and in subgraphs.
    Model-local functions are inlined first. Where an op's schema does not accept double
    for an input (Resize ``scales``, NonMaxSuppression boxes), the copy casts that input back to
    its original type, and where it cannot produce double it casts the output up to double.
    External initializers (and embedded ones over 64 MiB) keep their float bytes and are cast
    to double by a Cast node, so the copy never reads external data.

    Args:
        model: the float model (not modified).

    Raises:
        UsageError: --precision float64 on a model that quantizes activations (QuantizeLinear,
            QLinearConv, ConvInteger, ...): that rounding is the model's own and float64 cannot
            remove it.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if len(copy.functions) > 0:
        copy = onnx.inliner.inline_local_functions(copy)
    for graph in graphs_in(copy.graph):
        _refuse_quantized(graph)
    context = _Float64Context(
        types=inferred_elem_types(copy),
        opsets={_domain(entry.domain): int(entry.version) for entry in copy.opset_import},
        names=_NameMaker(copy.graph),
    )
    _convert_graph(copy.graph, context)
    return copy


def _refuse_quantized(graph: GraphProto) -> None:
    for node in graph.node:
        if node.op_type in _QUANTIZING_OPS or node.op_type.startswith("QLinear"):
            label = node.name or node.output[0]
            raise UsageError(
                f"--precision float64 cannot make a float64 copy: the model quantizes "
                f"activations ({node.op_type}), "
                "a rounding that float64 cannot take out", f"node '{label}'",
                "validate with --precision float32")


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


class _NameMaker:
    """Hands out tensor and node names no part of the model uses yet."""

    def __init__(self, graph: GraphProto) -> None:
        self._used: set[str] = set()
        for sub in graphs_in(graph):
            self._used |= _main_graph_tensors(sub) | {n.name for n in sub.node}
            self._used |= {name for n in sub.node for name in n.input}

    def fresh(self, base: str) -> str:
        """Return ``base`` or ``base_2``, ``base_3``, ... whichever is unused, and reserve it."""
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def cast(self, source: str, target: str, to: int) -> NodeProto:
        """A Cast node ``source -> target`` to element type ``to``, with a fresh node name."""
        return helper.make_node("Cast", [source], [target], to=to,
                                name=self.fresh(f"onnxcollide_cast_{target}"))


@dataclass(frozen=True)
class _Float64Context:
    """What the float64 conversion needs across graphs.

    Attributes:
        types: tensor name -> element type in the original model.
        opsets: domain ('' for ONNX) -> imported opset version.
        names: the source of fresh names.
    """

    types: dict[str, int]
    opsets: dict[str, int]
    names: _NameMaker


def _convert_graph(graph: GraphProto, context: _Float64Context) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        _retype(value.type)
    nodes = _convert_initializers(graph, context)
    for sparse in graph.sparse_initializer:
        if sparse.values.data_type in FLOAT_TYPES and not is_external(sparse.values):
            _tensor_to_double(sparse.values)
    for node in graph.node:
        nodes.extend(_convert_node(node, context))
    del graph.node[:]
    graph.node.extend(nodes)


def _retype(value_type: TypeProto) -> None:
    """Turn the float element types in ``value_type`` (nested types too) into double."""
    if value_type.HasField("tensor_type"):
        if value_type.tensor_type.elem_type in FLOAT_TYPES:
            value_type.tensor_type.elem_type = DOUBLE
    elif value_type.HasField("sparse_tensor_type"):
        if value_type.sparse_tensor_type.elem_type in FLOAT_TYPES:
            value_type.sparse_tensor_type.elem_type = DOUBLE
    elif value_type.HasField("sequence_type"):
        _retype(value_type.sequence_type.elem_type)
    elif value_type.HasField("optional_type"):
        _retype(value_type.optional_type.elem_type)
    elif value_type.HasField("map_type"):
        _retype(value_type.map_type.value_type)


def _tensor_to_double(tensor: TensorProto) -> None:
    """Convert an embedded float tensor to double in place (name and doc string kept)."""
    values = numpy_helper.to_array(tensor).astype(np.float64)
    name, doc = tensor.name, tensor.doc_string
    tensor.CopyFrom(numpy_helper.from_array(values, name))
    tensor.doc_string = doc


def _nbytes(tensor: TensorProto) -> int:
    count = int(np.prod([int(d) for d in tensor.dims], dtype=np.int64))
    return count * int(helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize)


def _convert_initializers(graph: GraphProto, context: _Float64Context) -> list[NodeProto]:
    """Convert float initializers; return the Cast nodes for those kept in their float type."""
    inputs = {value.name: value for value in graph.input}
    casts: list[NodeProto] = []
    for tensor in graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        if not is_external(tensor) and _nbytes(tensor) <= _CAST_IN_GRAPH_BYTES:
            _tensor_to_double(tensor)
            continue
        stored = context.names.fresh(f"{tensor.name}__{dtype_name(tensor.data_type)}")
        casts.append(context.names.cast(stored, tensor.name, DOUBLE))
        listed = inputs.get(tensor.name)
        if listed is not None:  # an initializer old exporters also list as a graph input
            listed.name = stored
            listed.type.tensor_type.elem_type = tensor.data_type
        tensor.name = stored
    return casts


def _convert_node(node: NodeProto, context: _Float64Context) -> list[NodeProto]:
    """Convert one node; return it with the Cast nodes its schema needs around it."""
    if _is_external_float_constant(node):
        return _cast_outputs_up(node, [0], context)
    _convert_attributes(node, context)
    schema = _schema(node, context.opsets)
    if schema is None:
        return [node]
    before: list[NodeProto] = []
    for k, name in enumerate(node.input):
        original = context.types.get(name) if name else None
        if original in FLOAT_TYPES and not _accepts_double(schema, schema.inputs, k):
            assert original is not None
            narrowed = context.names.fresh(f"{name}__{dtype_name(original)}")
            before.append(context.names.cast(name, narrowed, original))
            node.input[k] = narrowed
    fixed = [k for k, name in enumerate(node.output)
             if name and context.types.get(name) in FLOAT_TYPES
             and not _accepts_double(schema, schema.outputs, k)]
    return [*before, *_cast_outputs_up(node, fixed, context)]


def _cast_outputs_up(node: NodeProto, indices: Sequence[int],
                     context: _Float64Context) -> list[NodeProto]:
    """Rename the node's outputs at ``indices`` and cast them to double under the old names."""
    after: list[NodeProto] = []
    for k in indices:
        name = node.output[k]
        raw = context.names.fresh(f"{name}__{dtype_name(context.types.get(name, 1))}")
        node.output[k] = raw
        after.append(context.names.cast(raw, name, DOUBLE))
    return [node, *after]


def _is_external_float_constant(node: NodeProto) -> bool:
    if node.op_type != "Constant" or _domain(node.domain) != "":
        return False
    return any(attr.name == "value" and attr.type == AttributeProto.TENSOR
               and attr.t.data_type in FLOAT_TYPES and is_external(attr.t)
               for attr in node.attribute)


def _convert_attributes(node: NodeProto, context: _Float64Context) -> None:
    dtype_attr = _DTYPE_ATTRS.get(node.op_type) if _domain(node.domain) == "" else None
    for k, attr in enumerate(node.attribute):
        if attr.type == AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
            _tensor_to_double(attr.t)
        elif attr.type == AttributeProto.TENSORS:
            for tensor in attr.tensors:
                if tensor.data_type in FLOAT_TYPES:
                    _tensor_to_double(tensor)
        elif attr.type == AttributeProto.GRAPH:
            _convert_graph(attr.g, context)
        elif attr.type == AttributeProto.GRAPHS:
            for sub in attr.graphs:
                _convert_graph(sub, context)
        elif attr.name == dtype_attr and attr.type == AttributeProto.INT:
            if attr.i in FLOAT_TYPES:
                attr.i = DOUBLE
        elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
            values = attr.f if attr.name == "value_float" else list(attr.floats)
            tensor = numpy_helper.from_array(np.asarray(values, dtype=np.float64))
            node.attribute[k].CopyFrom(helper.make_attribute("value", tensor))


def _schema(node: NodeProto, opsets: dict[str, int]) -> onnx.defs.OpSchema | None:
    domain = _domain(node.domain)
    version = opsets.get(domain)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:  # an op of another domain (com.microsoft, custom)
        return None


def _accepts_double(schema: onnx.defs.OpSchema,
                    params: Sequence[onnx.defs.OpSchema.FormalParameter], index: int) -> bool:
    """Tell whether the schema lets input/output ``index`` be a double tensor."""
    if index < len(params):
        param = params[index]
    elif params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        param = params[-1]
    else:
        return True  # beyond the schema: leave it to the runtime
    for constraint in schema.type_constraints:
        if constraint.type_param_str == param.type_str:
            return _DOUBLE_STR in constraint.allowed_type_strs
    return bool(param.type_str == _DOUBLE_STR)
