"""Static shapes of every tensor, from ONNX shape inference with user-fixed input dims."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcollide.errors import UsageError
from onnxcollide.graph.constants import ConstantResolver, Scope, scoped_key
from onnxcollide.graph.linear_ops import node_label, subgraph_label
from onnxcollide.graph.load import LoadedModel
from onnxcollide.graph.tensors import dtype_name
from onnxcollide.graph.walk import subgraphs

Shape = tuple[int | None, ...]


def declared_dims(value_type: onnx.TypeProto) -> Shape | None:
    """A tensor type's declared dims (None for symbolic or unset ones), None if no shape."""
    if not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    dims = value_type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in dims)


def model_inputs(model: LoadedModel) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs by old exporters)."""
    initializers = {t.name for t in model.proto.graph.initializer}
    return [i for i in model.proto.graph.input if i.name not in initializers]


def is_float_input(value: onnx.ValueInfoProto) -> bool:
    """Tell whether a graph input carries floating-point data."""
    elem = value.type.tensor_type.elem_type
    return elem in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE,
                    TensorProto.BFLOAT16)


def _apply_overrides(proto: onnx.ModelProto, overrides: dict[str, tuple[int, ...]],
                     model: LoadedModel) -> None:
    inputs = {i.name: i for i in model_inputs(model)}
    for name, dims in overrides.items():
        if name not in inputs:
            known = ", ".join(inputs) or "none"
            raise UsageError(f"--input-shape names input '{name}', which the model does not "
                             f"have", model.path, f"its inputs are: {known}")
        target = next(i for i in proto.graph.input if i.name == name)
        shape = target.type.tensor_type.shape
        if len(shape.dim) and len(shape.dim) != len(dims):
            raise UsageError(f"--input-shape gives {len(dims)} dims for '{name}', the model "
                             f"declares {len(shape.dim)}", model.path)
        fixed = declared_dims(target.type) or ()
        for k, (have, want) in enumerate(zip(fixed, dims, strict=False)):
            if have is not None and have != want:
                raise UsageError(f"--input-shape sets dim {k} of '{name}' to {want}, the model "
                                 f"fixes it to {have}", model.path)
        shape.ClearField("dim")
        for d in dims:
            shape.dim.add().dim_value = d


@dataclass(frozen=True)
class TensorInfo:
    """What shape inference knows of a tensor: its shape (None dims unknown) and element type."""

    shape: Shape | None
    dtype: str


def infer_shapes(
    model: LoadedModel, overrides: dict[str, tuple[int, ...]]
) -> dict[str, TensorInfo]:
    """Return name -> TensorInfo for every tensor shape inference reaches.

    Main-graph tensors are keyed by their name, subgraph tensors by ``scope::name``
    (``ConstantResolver.qualified`` gives the key of a name seen from a scope).

    Args:
        model: the loaded model (its proto is not modified).
        overrides: input name -> full shape fixed by the user (``--input-shape``).

    Raises:
        UsageError: an override names an unknown input or contradicts a fixed dim.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    _apply_overrides(proto, overrides, model)
    _fold_shape_operands(proto.graph, model)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # shape inference is best effort; an unknown shape is reported as such
        inferred = proto
    infos: dict[str, TensorInfo] = {}
    _collect(inferred.graph, "main", infos)
    return infos


# Operands that decide an op's output shape (by index): shape inference needs their values,
# which exporters often compute with chains of constant ops (PyTorch's TorchScript exporter
# builds F.pad's pads from ConstantOfShape, Concat, Reshape, Slice, Transpose and Cast).
SHAPE_OPERANDS = {"Pad": (1, 2, 3), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,),
                  "Tile": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "ConstantOfShape": (0,),
                  "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "ReduceMean": (1,),
                  "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "Range": (0, 1, 2)}
FOLD_MAX_ELEMENTS = 4096  # only small tensors (shapes, pads, axes) are folded


def _fold_shape_operands(graph: onnx.GraphProto, model: LoadedModel) -> None:
    """Replace the constant-only chain behind each shape operand of the main graph by a
    Constant node holding its value, so shape inference knows the output shapes of the ops
    they feed (in this copy only; unfoldable or large operands are left alone)."""
    scope = Scope.of_graph(model.proto.graph, "main", None)
    resolver = ConstantResolver(scope, model.base_dir, list(model.proto.opset_import))
    stored = {t.name for t in graph.initializer}
    producers = {out: k for k, node in enumerate(graph.node) for out in node.output}
    for node in list(graph.node):
        for index in SHAPE_OPERANDS.get(node.op_type, ()):
            name = node.input[index] if index < len(node.input) else ""
            k = producers.get(name)
            if not name or name in stored or k is None or graph.node[k].op_type == "Constant" \
                    or len(graph.node[k].output) != 1:
                continue
            value = _small_constant(resolver, name)
            if value is not None:
                folded = helper.make_node("Constant", [], [name],
                                          value=numpy_helper.from_array(value, name))
                graph.node[k].CopyFrom(folded)


def _small_constant(resolver: ConstantResolver, name: str) -> np.ndarray | None:
    """The value of a constant-only tensor with few elements, else None (never an error:
    folding only helps shape inference)."""
    try:
        if not resolver.is_constant(name):
            return None
        value = np.asarray(resolver.value(name))
    except Exception:  # anything the reference evaluator raises: leave it
        return None
    return value if value.size <= FOLD_MAX_ELEMENTS else None


def _collect(graph: onnx.GraphProto, label: str, infos: dict[str, TensorInfo]) -> None:
    """Record the tensors of ``graph`` and, keyed by their scope, of its subgraphs."""
    for value in [*graph.input, *graph.value_info, *graph.output]:
        elem = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
        infos[scoped_key(label, value.name)] = TensorInfo(declared_dims(value.type),
                                                          dtype_name(elem))
    for tensor in graph.initializer:
        infos[scoped_key(label, tensor.name)] = TensorInfo(tuple(int(d) for d in tensor.dims),
                                                           dtype_name(tensor.data_type))
    for node in graph.node:
        for attr_name, sub in subgraphs(node):
            _collect(sub, subgraph_label(node_label(node, label), attr_name), infos)
