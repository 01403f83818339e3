"""Decide which tensors are constant and compute their values lazily.

A tensor is constant when it is an initializer, a Constant node's output, or the output of a
deterministic op whose inputs are all constant (Identity, Cast, Transpose, Reshape, Squeeze,
DequantizeLinear, ...). Subgraphs (If/Loop/Scan bodies) see the constants of enclosing graphs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, helper, numpy_helper

from onnxcollide.errors import OnnxCollideError, UnsupportedModelError
from onnxcollide.graph.tensors import tensor_to_array
from onnxcollide.limits import ResourceLimitError, check_allocation

# Ops never folded: their output is not a function of their inputs alone.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}
# Control flow and ops in other domains are never folded.
_NOT_FOLDED = _NONDETERMINISTIC | {"If", "Loop", "Scan", "SequenceConstruct"}
# Ops whose later inputs are shapes, axes or indices, not weight data: traces follow input 0.
_DATA_INPUT_ONLY = {"Reshape", "Squeeze", "Unsqueeze", "Slice", "Split", "Expand", "Tile", "Pad",
                    "Gather", "Resize", "ConstantOfShape"}
# Arrays up to this many bytes are cached (shape tensors, scales); weights are recomputed.
_CACHE_BYTES = 1 << 20


@dataclass
class Scope:
    """The names one graph defines, with a link to the enclosing graph's scope.

    Attributes:
        initializers: initializer name -> TensorProto.
        producers: output name -> the node of this graph that produces it.
        variables: names that are inputs of this graph and not initializers.
        label: where the graph sits, e.g. ``main`` or ``loop_1/body``.
        parent: the enclosing scope, None for the main graph.
    """

    initializers: dict[str, TensorProto]
    producers: dict[str, NodeProto]
    variables: set[str]
    label: str
    parent: Scope | None = None
    identities: dict[str, str] = field(default_factory=dict)  # ConstantResolver.identity's memo
    constants: dict[str, bool] = field(default_factory=dict)  # ... and is_constant's

    @classmethod
    def of_graph(cls, graph: onnx.GraphProto, label: str, parent: Scope | None) -> Scope:
        """Build the scope of ``graph``."""
        initializers = {t.name: t for t in graph.initializer}
        producers = {out: node for node in graph.node for out in node.output if out}
        variables = {i.name for i in graph.input if i.name not in initializers}
        return cls(initializers, producers, variables, label, parent)


@dataclass(frozen=True)
class ConstantTrace:
    """How a constant was made: its root tensors and the ops applied to them.

    Attributes:
        roots: names of the initializers / Constant outputs it comes from, in first-seen order.
        ops: op types applied on the way, in order from roots to the result.
        stored_dtype: ONNX element type name of the largest root (e.g. ``float16``, ``int8``).
    """

    roots: tuple[str, ...]
    ops: tuple[str, ...]
    stored_dtype: str


@dataclass
class ConstantResolver:
    """Answers ``is_constant`` / ``value`` / ``trace`` for names seen from one scope."""

    scope: Scope
    base_dir: str
    opset_imports: list[onnx.OperatorSetIdProto]
    _cache: dict[str, np.ndarray] = field(default_factory=dict)

    def child(self, scope: Scope) -> ConstantResolver:
        """Resolver for a subgraph scope nested in this one (shares opsets and base dir)."""
        return ConstantResolver(scope, self.base_dir, self.opset_imports)

    def _lookup(self, name: str) -> tuple[Scope, str] | None:
        scope: Scope | None = self.scope
        while scope is not None:
            if name in scope.initializers:
                return scope, "initializer"
            if name in scope.producers:
                return scope, "node"
            if name in scope.variables:
                return scope, "variable"
            scope = scope.parent
        return None

    def is_constant(self, name: str) -> bool:
        """Tell whether ``name`` holds a value known without running the model.

        Memoised in the scope that defines each tensor, and iterative: a chain of thousands
        of nodes before an op costs one visit per tensor and no recursion.
        """
        if name == "":
            return True
        pending: list[tuple[ConstantResolver, str]] = [(self, name)]
        expanded: set[tuple[str, str]] = set()
        while pending:
            resolver, current = pending[-1]
            found = resolver._lookup(current)
            if found is None or found[1] != "node":
                pending.pop()  # a root: answered by _known_constant without a memo
                continue
            scope = found[0]
            if current in scope.constants:
                pending.pop()
                continue
            node = scope.producers[current]
            owner = resolver._resolver_for(scope)
            if not _foldable_domain(node) or node.op_type in _NOT_FOLDED:
                scope.constants[current] = False
            elif node.op_type == "Constant":
                scope.constants[current] = True
            else:
                unknown = [i for i in node.input if owner._known_constant(i) is None]
                if unknown and (scope.label, current) not in expanded:
                    expanded.add((scope.label, current))
                    pending.extend((owner, i) for i in unknown)
                    continue
                # (inputs still unknown after their visit: a cycle, not valid ONNX)
                scope.constants[current] = not unknown and all(
                    owner._known_constant(i) for i in node.input)
            pending.pop()
        return bool(self._known_constant(name))

    def _known_constant(self, name: str) -> bool | None:
        """Whether ``name`` is constant, if known without evaluating a node (None if not)."""
        if name == "":
            return True
        found = self._lookup(name)
        if found is None:
            return False
        scope, kind = found
        if kind != "node":
            return kind == "initializer"
        return scope.constants.get(name)

    def unfolded_op(self, name: str, limit: int = 256) -> NodeProto | None:
        """The op that keeps ``name`` from being a constant although it is computed from
        constants only (an op of another domain, control flow); None when it depends on a
        model input, on a run-time value (a random op), or is constant. The walk back visits
        at most ``limit`` tensors (then None), without recursion."""
        if self.is_constant(name):
            return None
        blocker: NodeProto | None = None
        seen: set[tuple[str, str]] = set()
        pending: list[tuple[ConstantResolver, str]] = [(self, name)]
        while pending:
            resolver, current = pending.pop()
            found = resolver._lookup(current)
            if found is None or found[1] == "variable":
                return None
            scope, kind = found
            if kind != "node" or (scope.label, current) in seen:
                continue
            seen.add((scope.label, current))
            if len(seen) > limit:
                return None
            node = scope.producers[current]
            owner = resolver._resolver_for(scope)
            inputs = [i for i in node.input if i]
            if not inputs:
                return None  # made from nothing (a random op): a run-time value
            variable = [i for i in inputs if not owner.is_constant(i)]
            if not variable:
                blocker = blocker or node
            pending.extend((owner, i) for i in reversed(variable))  # the first input first
        return blocker

    def declared_type(self, name: str) -> tuple[int, int] | None:
        """(number of dimensions, ONNX element type) of a constant, read from the proto
        without loading weight values (see ``declared``); None where unknown."""
        declared = self.declared(name)
        return None if declared is None else (len(declared[0]), declared[1])

    def declared(self, name: str) -> tuple[tuple[int, ...], int] | None:
        """(shape, ONNX element type) of a constant, read from the protos without loading
        weight values: an initializer or a Constant output, seen through Identity, Transpose,
        Cast, DequantizeLinear, Flatten and Reshape (its small shape input is read); None for
        anything else. Never taken from value_info, which a model may carry stale."""
        chain: list[NodeProto] = []
        resolver, current = self, name
        while True:
            found = resolver._lookup(current)
            if found is None or found[1] == "variable":
                return None
            scope, kind = found
            if kind == "initializer":
                tensor = scope.initializers[current]
                declared: tuple[tuple[int, ...], int] | None = (
                    tuple(int(d) for d in tensor.dims), int(tensor.data_type))
                break
            node = scope.producers[current]
            if node.op_type == "Constant":
                declared = _constant_declared(node)
                break
            if node.op_type not in _TYPE_KEEPING_OPS or not node.input or not node.input[0]:
                return None
            chain.append(node)
            resolver, current = resolver._resolver_for(scope), node.input[0]
        for node in reversed(chain):
            if declared is None:
                return None
            declared = self._after(node, declared)
        return declared

    def _after(self, node: NodeProto, declared: tuple[tuple[int, ...], int]
               ) -> tuple[tuple[int, ...], int] | None:
        """The declared (shape, type) of ``node``'s output from its first input's."""
        shape, elem = declared
        if node.op_type == "Cast":
            to = next((a for a in node.attribute if a.name == "to"), None)
            return None if to is None else (shape, int(helper.get_attribute_value(to)))
        if node.op_type == "DequantizeLinear":
            return shape, self._dequantized_type(node)
        if node.op_type == "Transpose":
            perm = _ints_attr(node, "perm") or list(range(len(shape)))[::-1]
            return (tuple(shape[a] for a in perm), elem) if sorted(perm) == list(
                range(len(shape))) else None
        if node.op_type == "Flatten":
            axis = _int_attr(node, "axis", 1)
            axis = axis + len(shape) if axis < 0 else axis
            return (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))), elem
        if node.op_type == "Reshape":
            target = self._reshape_target(node)
            reshaped = None if target is None else _reshaped_shape(
                shape, target, _int_attr(node, "allowzero", 0))
            return None if reshaped is None else (reshaped, elem)
        return shape, elem  # Identity

    def _dequantized_type(self, node: NodeProto) -> int:
        """DequantizeLinear's output type: ``output_dtype`` (opset 23), else the scale's type
        (float where the scale's is not declared)."""
        output_dtype = _int_attr(node, "output_dtype", 0)
        if output_dtype:
            return output_dtype
        scale = self.declared(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        return TensorProto.FLOAT if scale is None else scale[1]

    def _reshape_target(self, node: NodeProto) -> list[int] | None:
        """A Reshape's target shape: its constant shape input (opset 5+) or its ``shape``
        attribute (opsets 1 to 4); None where it cannot be read."""
        if len(node.input) < 2 or not node.input[1]:
            return _ints_attr(node, "shape")
        if not self.is_constant(node.input[1]):
            return None
        try:
            return [int(d) for d in np.asarray(self.value(node.input[1])).reshape(-1)]
        except OnnxCollideError:  # a shape we cannot read (missing external data, ...)
            return None

    def _resolver_for(self, scope: Scope) -> ConstantResolver:
        return self if scope is self.scope else ConstantResolver(
            scope, self.base_dir, self.opset_imports
        )

    def producer(self, name: str) -> NodeProto | None:
        """The node that produces ``name`` in this or an enclosing scope, if any."""
        found = self._lookup(name)
        return found[0].producers[name] if found and found[1] == "node" else None

    def value(self, name: str) -> np.ndarray:
        """Compute the constant ``name`` (memory-mapped where it is external data).

        The chain that makes it is evaluated in order without recursion (exporters can chain
        hundreds of Identity or Transpose nodes), each op once, and an intermediate value is
        released as soon as its last consumer in the chain has been computed.

        Raises:
            UnsupportedModelError: the tensor is not constant or an op cannot be folded.
        """
        if name in self._cache:
            return self._cache[name]
        if self._lookup(name) is None or not self.is_constant(name):
            raise UnsupportedModelError(f"tensor '{name}' is not a constant")
        order, uses = self._fold_order(name)
        target = order[-1][0]
        results: dict[tuple[str, str], np.ndarray] = {}
        for key, resolver, current in order:
            results[key] = resolver._value_of(current, results)
            for used in resolver._input_keys(current):
                uses[used] -= 1
                if uses[used] == 0 and used != target:
                    del results[used]
        result = results[target]
        if result.nbytes <= _CACHE_BYTES:
            self._cache[name] = result
        return result

    def _key(self, name: str) -> tuple[str, str]:
        """``name`` qualified by the label of the scope that defines it."""
        found = self._lookup(name)
        return (found[0].label if found else "", name)

    def _input_keys(self, name: str) -> list[tuple[str, str]]:
        """Keys of the inputs ``name``'s producer reads (none for a root or a cached value)."""
        found = self._lookup(name)
        if found is None or found[1] != "node" or name in self._cache:
            return []
        owner = self._resolver_for(found[0])
        return [owner._key(i) for i in found[0].producers[name].input if i]

    def _fold_order(
        self, name: str
    ) -> tuple[list[tuple[tuple[str, str], ConstantResolver, str]], dict[tuple[str, str], int]]:
        """The tensors that make ``name``, each once, inputs before consumers (``name`` last),
        and how many of them read each one."""
        order: list[tuple[tuple[str, str], ConstantResolver, str]] = []
        uses: dict[tuple[str, str], int] = {}
        seen: set[tuple[str, str]] = set()
        pending: list[tuple[ConstantResolver, str, bool]] = [(self, name, False)]
        while pending:
            resolver, current, inputs_done = pending.pop()
            key = resolver._key(current)
            if inputs_done:
                order.append((key, resolver, current))
                continue
            if key in seen:
                continue
            seen.add(key)
            pending.append((resolver, current, True))
            found = resolver._lookup(current)
            if found is None or found[1] != "node" or current in resolver._cache:
                continue
            owner = resolver._resolver_for(found[0])
            for i in found[0].producers[current].input:
                if i:
                    input_key = owner._key(i)
                    uses[input_key] = uses.get(input_key, 0) + 1
                    pending.append((owner, i, False))
        return order, uses

    def _value_of(self, name: str, inputs: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
        """``name``'s value: a cached value, a root's, or its producer folded on ``inputs``
        (the values of its inputs, by key)."""
        if name in self._cache:
            return self._cache[name]
        found = self._lookup(name)
        if found is None:
            raise UnsupportedModelError(f"tensor '{name}' is not a constant")
        scope, kind = found
        if kind == "initializer":
            return tensor_to_array(scope.initializers[name], self.base_dir)
        node = scope.producers[name]
        owner = self._resolver_for(scope)
        values = [inputs[owner._key(i)] if i else None for i in node.input]
        outputs = fold_node(node, values, self.opset_imports, self.base_dir)
        return outputs[list(node.output).index(name)]

    def trace(self, name: str) -> ConstantTrace:
        """Describe how the constant ``name`` is made (roots, ops, stored dtype).

        Each tensor is visited once (a DAG that reuses a value is not walked once per use)
        and without recursion (a long chain is one step per node): roots in first-seen
        order, ops after their inputs.
        """
        roots: list[str] = []
        ops: list[str] = []
        sizes: dict[str, tuple[int, str]] = {}
        seen: set[tuple[str, str]] = set()
        pending: list[tuple[ConstantResolver, str, bool]] = [(self, name, False)]
        while pending:
            resolver, current, inputs_done = pending.pop()
            found = resolver._lookup(current)
            if found is None or found[1] == "variable":
                continue
            scope, kind = found
            if inputs_done:
                ops.append(scope.producers[current].op_type)
                continue
            if (scope.label, current) in seen:
                continue
            seen.add((scope.label, current))
            node = scope.producers.get(current) if kind == "node" else None
            if node is None or node.op_type == "Constant":
                label = _scoped(scope, current)
                roots.append(label)
                sizes[label] = resolver._root_size(scope, current)
                continue
            owner = resolver._resolver_for(scope)
            data = node.input[:1] if node.op_type in _DATA_INPUT_ONLY else node.input
            pending.append((resolver, current, True))
            pending.extend((owner, i, False) for i in reversed(data) if i)
        biggest = max(roots, key=lambda r: sizes[r][0]) if roots else ""
        stored = sizes[biggest][1] if biggest else "undefined"
        return ConstantTrace(tuple(roots), tuple(ops), stored)

    def _root_size(self, scope: Scope, name: str) -> tuple[int, str]:
        """(element count, element type name) of an initializer or a Constant output."""
        if name in scope.initializers:
            tensor = scope.initializers[name]
            count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
            return count, _elem_name(tensor.data_type)
        value = self._resolver_for(scope).value(name)
        return int(value.size), _numpy_elem_name(value.dtype)

    def qualified(self, name: str) -> str:
        """``name`` keyed by the scope that defines it (``scoped_key``); bare when unknown."""
        found = self._lookup(name)
        return name if found is None else scoped_key(found[0].label, name)

    def identity(self, name: str) -> str:
        """A name for the constant that is the same exactly when it is computed the same way.

        A root (initializer, Constant output, or anything not made by a node here) is
        ``scope::name``, unique across scopes. A computed tensor is its op and a digest of the
        op's attributes and its inputs' identities, so two Transpose (or DequantizeLinear)
        nodes that apply the same attributes to the same tensors give one identity: exporters
        copy such nodes once per consumer of a shared weight. Identity hops are skipped.
        Memoised per scope, and iterative: a long chain or a DAG that reuses a value costs
        one visit per tensor.
        """
        pending: list[tuple[ConstantResolver, str]] = [(self, name)]
        expanded: set[tuple[str, str]] = set()
        while pending:
            resolver, current = pending[-1]
            found = resolver._lookup(current)
            if found is None:
                pending.pop()
                continue
            scope, kind = found
            if current in scope.identities:
                pending.pop()
                continue
            node = scope.producers.get(current) if kind == "node" else None
            if node is None or node.op_type == "Constant" or not node.input:
                scope.identities[current] = f"{scope.label}::{current}"
                pending.pop()
                continue
            owner = resolver._resolver_for(scope)
            inputs = [i for i in node.input if i] if node.op_type != "Identity" else \
                [node.input[0]]
            missing = [(owner, i) for i in inputs if owner._known_identity(i) is None]
            if missing and (scope.label, current) not in expanded:
                expanded.add((scope.label, current))
                pending.extend(missing)
                continue
            if missing:  # its inputs did not resolve: a cycle (not valid ONNX); stop it here
                scope.identities[current] = f"{scope.label}::{current}"
                pending.pop()
                continue
            scope.identities[current] = _computed_identity(node, current, owner)
            pending.pop()
        identity = self._known_identity(name)
        return name if identity is None else identity

    def _known_identity(self, name: str) -> str | None:
        """The memoised identity of ``name`` (its own name when no scope defines it)."""
        found = self._lookup(name)
        return name if found is None else found[0].identities.get(name)


def _computed_identity(node: NodeProto, output: str, owner: ConstantResolver) -> str:
    """Identity of a node's output from its inputs' (memoised) identities: Identity passes
    its input's through; any other op is its type and a digest of attributes and inputs."""
    if node.op_type == "Identity":
        return str(owner._known_identity(node.input[0]))
    digest = hashlib.sha256(f"{node.domain}.{node.op_type}#{list(node.output).index(output)}"
                            .encode())
    for attribute in sorted(node.attribute, key=lambda a: a.name):
        digest.update(attribute.SerializeToString(deterministic=True))
    for item in node.input:
        digest.update(f"|{owner._known_identity(item) if item else ''}".encode())
    return f"{node.op_type}:{digest.hexdigest()[:24]}"


_TYPE_KEEPING_OPS = {"Identity", "Transpose", "Cast", "DequantizeLinear", "Flatten", "Reshape"}


# Constant attributes other than ``value``: (number of dimensions, ONNX element type).
_CONSTANT_ATTRIBUTE_TYPES = {
    "value_float": (0, TensorProto.FLOAT), "value_int": (0, TensorProto.INT64),
    "value_floats": (1, TensorProto.FLOAT), "value_ints": (1, TensorProto.INT64),
}


def _constant_declared(node: NodeProto) -> tuple[tuple[int, ...], int] | None:
    """(shape, ONNX element type) of a Constant node's value, None where not declared
    (``sparse_value`` is made ``value`` when the model is loaded)."""
    for attr in node.attribute:
        if attr.name == "value":
            return tuple(int(d) for d in attr.t.dims), int(attr.t.data_type)
        if attr.name in _CONSTANT_ATTRIBUTE_TYPES:
            ndims, elem = _CONSTANT_ATTRIBUTE_TYPES[attr.name]
            count = len(attr.floats) if attr.name == "value_floats" else len(attr.ints)
            return ((count,) if ndims == 1 else ()), elem
    return None


def _ints_attr(node: NodeProto, name: str) -> list[int] | None:
    attr = next((a for a in node.attribute if a.name == name), None)
    return None if attr is None else [int(v) for v in attr.ints]


def _reshaped_shape(shape: tuple[int, ...], target: list[int], allowzero: int
                    ) -> tuple[int, ...] | None:
    """The shape Reshape gives ``shape`` for ``target`` (0 copies a dim unless allowzero, one
    -1 is inferred); None where the target does not fit."""
    dims = [shape[k] if d == 0 and not allowzero and k < len(shape) else d
            for k, d in enumerate(target)]
    size = int(np.prod(shape, dtype=np.int64))
    if dims.count(-1) == 1:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            return None
        dims[dims.index(-1)] = size // known
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.int64)) != size:
        return None
    return tuple(dims)


def _foldable_domain(node: NodeProto) -> bool:
    """ONNX's own ops, and ONNX Runtime's DequantizeLinear (older QDQ exports of 16-bit and
    4-bit weights), which computes what ONNX's does."""
    return node.domain in ("", "ai.onnx") or (
        node.domain == "com.microsoft" and node.op_type == "DequantizeLinear")


def scoped_key(label: str, name: str) -> str:
    """How tables keyed across scopes name a tensor: bare in the main graph, ``label::name``
    in a subgraph (a subgraph may reuse a main-graph name for a different tensor)."""
    return name if label == "main" else f"{label}::{name}"


def _scoped(scope: Scope, name: str) -> str:
    """Bare name in the main graph, ``scope/name`` inside a subgraph."""
    return name if scope.label == "main" else f"{scope.label}/{name}"


def _elem_name(elem_type: int) -> str:
    return str(TensorProto.DataType.Name(elem_type)).lower()


def _numpy_elem_name(dtype: np.dtype) -> str:
    return _elem_name(helper.np_dtype_to_tensor_dtype(dtype))


# ---------------------------------------------------------------- folding


def _attrs(node: NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: NodeProto, base_dir: str) -> np.ndarray:
    """The value of a Constant node; a tensor stored as external data resolves against
    ``base_dir`` (the model's folder)."""
    kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64, "value_string": object, "value_strings": object}
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_to_array(attr.t, base_dir)
        if attr.name in kinds:
            return np.array(helper.get_attribute_value(attr), dtype=kinds[attr.name])
    raise UnsupportedModelError(
        "Constant node has no value attribute we can read",
        node.name or node.output[0],
    )


def _reshape(x: np.ndarray, shape: np.ndarray, allowzero: int) -> np.ndarray:
    target = [int(d) for d in shape]
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def _squeeze_axes(node: NodeProto, ins: list[np.ndarray | None], opset: int) -> list[int] | None:
    """Axes of Squeeze/Unsqueeze: an input from opset 13, an attribute before."""
    if opset >= 13:
        return None if len(ins) < 2 or ins[1] is None else [int(a) for a in ins[1]]
    axes = _attrs(node).get("axes")
    return None if axes is None else [int(a) for a in axes]  # type: ignore[attr-defined]


def _dequantize(node: NodeProto, ins: list[np.ndarray | None]) -> np.ndarray:
    x, scale = ins[0], ins[1]
    assert x is not None and scale is not None
    zero = ins[2] if len(ins) > 2 and ins[2] is not None else None
    attrs = _attrs(node)
    axis = int(attrs.get("axis", 1))  # type: ignore[call-overload]
    block = int(attrs.get("block_size", 0))  # type: ignore[call-overload]
    output = int(attrs.get("output_dtype", 0))  # type: ignore[call-overload]
    out_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(output)) if output else None
    return dequantize(np.asarray(x), np.asarray(scale), zero, axis, block, out_dtype)


def dequantize(
    x: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, block: int = 0,
    out_dtype: np.dtype | None = None,
) -> np.ndarray:
    """``(x - zero) * scale`` with per-tensor, per-axis or blocked scales (DequantizeLinear).

    Args:
        x: quantized integers, any shape.
        scale: scalar, 1-D of length ``x.shape[axis]``, or blocked (``x`` shape with
            ``x.shape[axis] / block`` along ``axis``).
        zero: zero points shaped like ``scale``, or None.
        axis: the quantization axis for per-axis and blocked scales.
        block: block size for blocked quantization, 0 otherwise.
        out_dtype: the output type (opset 23's ``output_dtype``); None for ``scale``'s.

    Returns:
        Float array of ``x``'s shape in ``out_dtype``: ``(x - zero) * scale`` in float32,
        rounded once to the output type, as ONNX Runtime and the ONNX reference compute it
        (casting ``x - zero`` first would overflow float16 for 16-bit weights).
    """
    if out_dtype is None:
        out_dtype = scale.dtype if scale.dtype.kind == "f" else np.dtype(np.float32)
    xf = x.astype(np.float32)
    zf = None if zero is None else zero.astype(np.float32)
    axis = axis % max(x.ndim, 1)
    if scale.size == 1 and block == 0:
        sf = scale.astype(np.float32).reshape(())
        zf = None if zf is None else zf.reshape(())
    elif block:
        sf = np.repeat(scale.astype(np.float32), block, axis=axis)
        sf = np.take(sf, np.arange(x.shape[axis]), axis=axis)
        if zf is not None:
            zf = np.take(np.repeat(zf, block, axis=axis), np.arange(x.shape[axis]), axis=axis)
    else:
        view = [1] * x.ndim
        view[axis] = -1
        sf = scale.astype(np.float32).reshape(view)
        zf = None if zf is None else zf.reshape(view)
    if zf is not None:
        xf = xf - zf
    return (xf * sf).astype(out_dtype, copy=False)


Inputs = list[np.ndarray | None]
_Fold = Callable[[NodeProto, Inputs, int], np.ndarray]


def _first(inputs: Inputs) -> np.ndarray:
    value = inputs[0]
    assert value is not None
    return value


def _int_attr(node: NodeProto, name: str, default: int) -> int:
    value = _attrs(node).get(name, default)
    return int(value)  # type: ignore[call-overload]


def _fold_cast(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    return _first(inputs).astype(helper.tensor_dtype_to_np_dtype(_int_attr(node, "to", 1)))


def _fold_transpose(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    perm = _attrs(node).get("perm")
    axes = None if perm is None else [int(a) for a in perm]  # type: ignore[attr-defined]
    return np.transpose(_first(inputs), axes)


def _fold_reshape(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    shape = inputs[1] if len(inputs) > 1 else None
    if shape is None:  # opsets 1 to 4: a shape attribute
        shape = np.array(_attrs(node).get("shape"), dtype=np.int64)
    return _reshape(_first(inputs), shape, _int_attr(node, "allowzero", 0))


def _fold_flatten(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    x = _first(inputs)
    axis = _int_attr(node, "axis", 1)  # in [-r, r]: a negative axis counts from r
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _fold_squeeze(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    axes = _squeeze_axes(node, inputs, opset)
    return np.squeeze(_first(inputs), axis=None if axes is None else tuple(axes))


def _fold_unsqueeze(node: NodeProto, inputs: Inputs, opset: int) -> np.ndarray:
    return _unsqueeze(_first(inputs), _squeeze_axes(node, inputs, opset) or [])


_FOLDERS: dict[str, _Fold] = {
    "Identity": lambda node, inputs, opset: _first(inputs),
    "Cast": _fold_cast,
    "Transpose": _fold_transpose,
    "Reshape": _fold_reshape,
    "Flatten": _fold_flatten,
    "Squeeze": _fold_squeeze,
    "Unsqueeze": _fold_unsqueeze,
    "DequantizeLinear": lambda node, inputs, opset: _dequantize(node, inputs),
    "Neg": lambda node, inputs, opset: -_first(inputs),
}


def _unsqueeze(x: np.ndarray, axes: list[int]) -> np.ndarray:
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = np.expand_dims(x, axis)
    return x


def _fold_with_reference(
    node: NodeProto, inputs: list[np.ndarray | None], opsets: list[onnx.OperatorSetIdProto]
) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    feeds = {n: v for n, v in zip(names, inputs, strict=True) if v is not None}
    inner = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))])
    inner.attribute.extend(
        a for a in node.attribute if a.type != AttributeProto.GRAPH
    )
    graph = helper.make_graph(
        [inner],
        "fold",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for n, v in feeds.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in inner.output],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    outputs = ReferenceEvaluator(model).run(None, feeds)
    return [np.asarray(o) for o in outputs]


SIZE_DATA_MAX_ELEMENTS = 64  # inputs this small are handed to shape inference as values


def _check_output_sizes(node: NodeProto, inputs: list[np.ndarray | None],
                        opsets: list[onnx.OperatorSetIdProto], where: str) -> None:
    """Size each output of ``node`` by ONNX's own shape inference on the inputs' actual shapes
    (and values, for small ones such as a ConstantOfShape's shape) and refuse one over the
    memory limit before it is computed. Where inference cannot say, an op that can only
    reshape, cast or slice its input is bounded by its input; others are left to try.

    Raises:
        ResourceLimitError: an output would exceed the limit.
    """
    largest_input = max((v.size for v in inputs if v is not None), default=0)
    for name, elements, itemsize in _inferred_outputs(node, inputs, opsets):
        if elements is None:
            elements = largest_input if node.op_type in _NOT_EXPANDING else None
        if elements is not None:
            check_allocation(elements * itemsize, f"the constant output '{name}' this op "
                             f"makes ({elements:,} elements)", where)


_NOT_EXPANDING = frozenset({"Identity", "Cast", "Transpose", "Reshape", "Flatten", "Squeeze",
                            "Unsqueeze", "DequantizeLinear", "Neg", "Slice", "Gather",
                            "QuantizeLinear", "Abs", "Relu", "Sqrt", "Reciprocal"})


def _inferred_outputs(node: NodeProto, inputs: list[np.ndarray | None],
                      opsets: list[onnx.OperatorSetIdProto]
                      ) -> list[tuple[str, int | None, int]]:
    """(output name, element count or None where unknown, bytes per element) per output."""
    from onnx import defs, shape_inference

    domain = node.domain or ""
    wanted = {domain} if domain else {"", "ai.onnx"}
    version = next((int(o.version) for o in opsets if (o.domain or "") in wanted), 1)
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    values = dict(zip(names, inputs, strict=True))
    try:
        schema = defs.get_schema(node.op_type, version, domain)
        inner = helper.make_node(node.op_type, names, [f"out{k}" for k in range(len(node.output))],
                                 domain=domain or None)
        inner.attribute.extend(a for a in node.attribute if a.type != AttributeProto.GRAPH)
        types = {n: helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(v.dtype),
                                                  v.shape)
                 for n, v in values.items() if n and v is not None}
        data = {n: numpy_helper.from_array(np.asarray(v), n) for n, v in values.items()
                if n and v is not None and v.size <= SIZE_DATA_MAX_ELEMENTS}
        inferred = shape_inference.infer_node_outputs(schema, inner, types, data)
    except Exception:  # no schema, or inference fails on these inputs: nothing to say
        return [(out, None, 8) for out in node.output]
    sized = []
    for k, out in enumerate(node.output):
        found = inferred.get(f"out{k}")
        tensor = found.tensor_type if found is not None else None
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in tensor.shape.dim] if tensor is not None and \
            tensor.HasField("shape") else None
        itemsize = _itemsize(tensor.elem_type) if tensor is not None else 8
        known = dims is not None and all(d is not None and d >= 0 for d in dims)
        sized.append((out, math.prod(dims) if known else None, itemsize))  # type: ignore[arg-type]
    return sized


def _itemsize(elem_type: int) -> int:
    """Bytes per element of an ONNX element type (8 where numpy has no such type)."""
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8


def fold_node(
    node: NodeProto, inputs: list[np.ndarray | None], opsets: list[onnx.OperatorSetIdProto],
    base_dir: str = "",
) -> list[np.ndarray]:
    """Evaluate one node on constant inputs (``base_dir``: the model's folder, against which a
    Constant's external data resolves).

    Common weight-chain ops are computed in numpy (memmaps stay lazy through Identity and
    Transpose); anything else deterministic goes through ``onnx.reference``.

    Raises:
        UnsupportedModelError: the op could not be evaluated.
    """
    if node.op_type == "Constant":
        return [_constant_value(node, base_dir)]
    opset = next((int(o.version) for o in opsets if o.domain in ("", "ai.onnx")), 1)
    where = f"node '{node.name or node.output[0]}' ({node.op_type})"
    _check_output_sizes(node, inputs, opsets, where)
    try:
        if node.op_type in _FOLDERS and len(node.output) == 1:
            return [np.asarray(_FOLDERS[node.op_type](node, inputs, opset))]
        return _fold_with_reference(node, inputs, opsets)
    except UnsupportedModelError:
        raise
    except MemoryError as exc:
        raise ResourceLimitError(
            "the machine ran out of memory computing this constant", where,
            "lower --max-memory so that such constants are refused up front") from exc
    except Exception as exc:
        raise UnsupportedModelError(
            f"cannot compute this constant weight chain ({type(exc).__name__}: {exc})",
            where,
            "report the model to the onnxcollide developers",
        ) from exc
