"""Structural checks of a parsed graph before anything walks it: a model nobody has checked
yet (broken or hostile) gets one line naming the node instead of a wrong audit or a crash.

Checked, in the main graph and every subgraph, without recursion: names that are not text,
an attribute given twice on one node, names defined twice, node inputs that nothing defines
(outer-scope names count for a subgraph), and cycles. Node order is not checked: an unsorted
graph without a cycle is fine. How deep subgraphs may nest is
bounded by protobuf's own parser (If bodies about 32 deep), which refuses deeper files before
anything here runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from onnx import GraphProto, ModelProto, NodeProto, TensorProto

from onnxcollide.errors import ModelLoadError
from onnxcollide.graph.walk import subgraphs


@dataclass(frozen=True)
class GraphWiring:
    """The main graph's nodes as plain tuples, read off the protobuf once at load (its field
    reads are slow, and the data flow is walked again by ``compare``).

    Attributes:
        inputs: per node (in graph order), its non-empty input names.
        outputs: per node, its non-empty output names.
        holders: indices of the nodes that hold subgraphs (If/Loop/Scan bodies), ascending.
    """

    inputs: tuple[tuple[str, ...], ...]
    outputs: tuple[tuple[str, ...], ...]
    holders: tuple[int, ...]


@dataclass(frozen=True)
class _Scope:
    """One graph to check: the names its enclosing graphs define, and its label."""

    graph: GraphProto
    outer: frozenset[str]
    label: str


def check_graph(proto: ModelProto, path: str) -> GraphWiring:
    """Refuse a model whose graph cannot be what it claims.

    Returns:
        The main graph's wiring.

    Raises:
        ModelLoadError: a name that is not text, an attribute given twice on one node, a
            tensor name defined twice in one graph, a node input nothing defines, or a cycle
            (each names the node).
    """
    pending = [_Scope(proto.graph, frozenset(), "main graph")]
    main: GraphWiring | None = None
    while pending:
        scope = pending.pop()
        wiring = _wiring(scope)
        _check_names_are_text(scope, wiring, path)
        _check_attributes_once(scope, path)
        main = main or wiring
        known = _defined_once(scope, wiring, path)
        _check_order(scope, wiring, known | scope.outer, path)
        visible = scope.outer | known
        for index in wiring.holders:
            node = scope.graph.node[index]
            for attr_name, sub in subgraphs(node):
                pending.append(_Scope(sub, visible, f"{_name(node)}/{attr_name}"))
    assert main is not None
    return main


def _wiring(scope: _Scope) -> GraphWiring:
    """The graph's node inputs, outputs and subgraph holders, read once."""
    inputs, outputs, holders = [], [], []
    for index, node in enumerate(scope.graph.node):
        inputs.append(tuple(name for name in node.input if name))
        outputs.append(tuple(name for name in node.output if name))
        if next(subgraphs(node), None) is not None:
            holders.append(index)
    return GraphWiring(tuple(inputs), tuple(outputs), tuple(holders))


def _check_names_are_text(scope: _Scope, wiring: GraphWiring, path: str) -> None:
    """Every name is text. Protobuf hands back bytes for a name that is not valid UTF-8 (a
    flipped bit in a file), which no lookup by name finds: a graph input nothing could feed,
    an attribute read as absent. (Initializer names were checked at load with every stored
    tensor's.)

    Raises:
        ModelLoadError: naming the graph input, output, value_info or node.
    """
    graph = scope.graph
    fields = (("graph input", graph.input), ("graph output", graph.output),
              ("value_info", graph.value_info))
    for kind, entries in fields:
        for entry in entries:
            if not isinstance(entry.name, str):
                raise not_text_error(f"the {kind} name {entry.name!r}", f"{path}, "
                                     f"{_where(scope)}")
    for k, node in enumerate(graph.node):
        texts = [("tensor name", name) for name in (*wiring.inputs[k], *wiring.outputs[k])]
        texts += [("node name", node.name), ("op type", node.op_type), ("domain", node.domain)]
        texts += [("attribute name", attribute.name) for attribute in node.attribute]
        for kind, text in texts:
            if not isinstance(text, str):
                raise not_text_error(f"the {kind} {text!r}", f"{path}, {_where(scope, node)}")


def _check_attributes_once(scope: _Scope, path: str) -> None:
    """Each attribute name at most once on a node: which of two 'pads' a reader takes is
    arbitrary, and ONNX's checker and ONNX Runtime refuse such a node.

    Raises:
        ModelLoadError: naming the node and the attribute.
    """
    for node in scope.graph.node:
        twice = _repeated([attribute.name for attribute in node.attribute])
        if twice is not None:
            raise ModelLoadError(f"the attribute '{twice}' appears more than once",
                                 f"{path}, {_where(scope, node)}",
                                 "the model is corrupt: re-export it")


def not_text_error(what: str, where: str) -> ModelLoadError:
    """The error for a text field that protobuf handed back as bytes (not valid UTF-8)."""
    return ModelLoadError(f"{what} is not valid UTF-8 text: the file is corrupt", where,
                          "re-export or copy the model again")


def _name(node: NodeProto) -> str:
    return node.name or f"{node.op_type}:{node.output[0] if node.output else '?'}"


def _where(scope: _Scope, node: NodeProto | None = None) -> str:
    place = "" if scope.label == "main graph" else f" in {scope.label}"
    return f"node '{_name(node)}' ({node.op_type}){place}" if node is not None else \
        scope.label


def _defined_once(scope: _Scope, wiring: GraphWiring, path: str) -> frozenset[str]:
    """Every name the graph itself defines (inputs, initializers, node outputs).

    Raises:
        ModelLoadError: a node output that another node, an input or an initializer of the
            same graph defines too.
    """
    graph = scope.graph
    # (The load has made sparse initializers dense already; a caller may not have.)
    initializers = [t.name for t in graph.initializer] + \
        [t.values.name for t in graph.sparse_initializer]
    twice = _repeated([v.name for v in graph.input])
    if twice is not None:  # one name both an input and an initializer is an old default
        raise ModelLoadError(f"the graph input '{twice}' is listed twice (ONNX names are "
                             "single assignments; ONNX Runtime refuses the model)",
                             f"{path}, {_where(scope)}", "the model is corrupt: re-export it")
    twice = _differing_initializer(graph)
    if twice is not None:
        raise ModelLoadError(f"the initializer '{twice}' is defined twice with different "
                             "contents (ONNX's checker refuses the model, ONNX Runtime takes "
                             "the last copy)", f"{path}, {_where(scope)}",
                             "the model is corrupt: re-export it")
    defined = {v.name for v in graph.input} | set(initializers)
    for k, outputs in enumerate(wiring.outputs):
        for out in outputs:
            if out in defined:
                raise ModelLoadError(f"the tensor '{out}' is defined twice (ONNX names are "
                                     "single assignments)",
                                     f"{path}, {_where(scope, graph.node[k])}",
                                     "the model is corrupt: re-export it")
            defined.add(out)
    return frozenset(defined)


def _differing_initializer(graph: GraphProto) -> str | None:
    """The first initializer name held by two tensors that differ (in dims, type, values or
    where they are stored); None where every repeated name holds identical copies (harmless:
    any reader gets the same tensor)."""
    first: dict[str, TensorProto] = {}
    for tensor in graph.initializer:
        seen = first.setdefault(tensor.name, tensor)
        if seen is not tensor and seen.SerializeToString() != tensor.SerializeToString():
            return str(tensor.name)
    return None


def _repeated(names: list[str]) -> str | None:
    """The first name that occurs a second time in ``names``; None if each occurs once."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _check_order(scope: _Scope, wiring: GraphWiring, names: frozenset[str], path: str
                 ) -> None:
    """Every node's inputs are defined, and the nodes have an order without a cycle (Kahn's
    algorithm on the graph's own nodes).

    Raises:
        ModelLoadError: an input defined nowhere, or a cycle (naming a node on it).
    """
    nodes = scope.graph.node  # read only to name a node in an error
    producer = {out: k for k, outputs in enumerate(wiring.outputs) for out in outputs}
    waiting = [0] * len(wiring.inputs)
    readers: dict[int, list[int]] = {}
    for k, inputs in enumerate(wiring.inputs):
        for name in inputs:
            if name not in names:
                raise ModelLoadError(f"the input '{name}' is defined nowhere (no node, "
                                     "initializer or graph input makes it)",
                                     f"{path}, {_where(scope, nodes[k])}",
                                     "the model is corrupt: re-export it")
            if name in producer and producer[name] != k:
                waiting[k] += 1
                readers.setdefault(producer[name], []).append(k)
            elif name in producer:
                raise ModelLoadError("the node reads its own output (a cycle)",
                                     f"{path}, {_where(scope, nodes[k])}",
                                     "the model is corrupt: re-export it")
    ready = deque(k for k, count in enumerate(waiting) if count == 0)
    done = 0
    while ready:
        k = ready.popleft()
        done += 1
        for reader in readers.get(k, ()):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done < len(waiting):
        stuck = next(k for k, count in enumerate(waiting) if count > 0)
        raise ModelLoadError("the graph has a cycle: this node depends on its own output "
                             "through other nodes", f"{path}, {_where(scope, nodes[stuck])}",
                             "the model is corrupt: re-export it")

