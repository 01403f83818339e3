"""Where each linear op sits along the data flow: its depth and the linear ops upstream of it.

Exporters rename nodes and may list independent branches in another order (ONNX Runtime's
optimizer moves a ResNet shortcut conv ahead of the main branch), but they keep the data flow:
which linear ops feed which. ``linear_flow`` measures that, so layers of two exports of one
network can be lined up without trusting names or node order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from onnx import NodeProto

from onnxcollide.graph.linear_ops import node_label
from onnxcollide.graph.load import LoadedModel
from onnxcollide.graph.walk import subgraphs


@dataclass(frozen=True)
class FlowPosition:
    """One linear op's place in the data flow.

    Attributes:
        depth: linear ops on the longest path from a graph input to this op's data input
            (0 for a first layer).
        upstream: labels of the linear ops whose outputs reach this op's data input.
    """

    depth: int
    upstream: frozenset[str]


def _outer_names(node: NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing graphs (If/Loop bodies see outer
    tensors without listing them as the node's inputs)."""
    names: set[str] = set()
    for _, graph in subgraphs(node):
        produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        produced |= {t.name for t in graph.initializer}
        for inner in graph.node:
            names |= {i for i in inner.input if i and i not in produced}
            names |= _outer_names(inner)
    return names


def linear_flow(model: LoadedModel, labels: Iterable[str]) -> dict[str, FlowPosition]:
    """The data-flow position of every main-graph node among ``labels`` (node labels as
    ``graph.linear_ops.node_label`` writes them).

    A node in ``labels`` adds one to the depth of what flows out of it; every other node
    passes on the deepest of its inputs. Constant inputs (weights) have depth 0, so a
    weight's constant chain never counts.

    Returns:
        label -> FlowPosition for each label that names a main-graph node, and for each
        main-graph node that holds subgraphs (``position_in_scope`` places the linear ops
        inside them).
    """
    wanted = set(labels)
    bit_of: dict[str, int] = {}  # upstream sets as bit masks: one bit per wanted label
    reached: dict[str, tuple[int, int]] = {}  # tensor -> (depth, upstream mask)
    masks: dict[str, tuple[int, int]] = {}
    wiring = model.wiring
    holders = set(wiring.holders)
    for index, node in enumerate(model.proto.graph.node):
        reads = wiring.inputs[index]
        holds = index in holders
        if holds:
            reads += tuple(sorted(_outer_names(node)))
        depth = mask = 0
        for name in reads:
            seen = reached.get(name)
            if seen is not None:  # else a graph input or a constant
                depth = max(depth, seen[0])
                mask |= seen[1]
        label = node_label(node, "main")
        if label in wanted:
            masks[label] = (depth, mask)
            bit = bit_of.setdefault(label, 1 << len(bit_of))
            depth, mask = depth + 1, mask | bit
        elif holds:  # holds subgraphs: place the linear ops inside them
            masks[label] = (depth, mask)
        for output in wiring.outputs[index]:
            reached[output] = (depth, mask)
    names = list(bit_of)
    return {label: FlowPosition(depth, _labels_in(mask, names))
            for label, (depth, mask) in masks.items()}


def _labels_in(mask: int, names: list[str]) -> frozenset[str]:
    """The labels whose bits are set in ``mask`` (bit k: ``names[k]``)."""
    found = []
    while mask:
        low = mask & -mask
        found.append(names[low.bit_length() - 1])
        mask ^= low
    return frozenset(found)


def position_in_scope(scope: str, main: dict[str, FlowPosition]) -> FlowPosition | None:
    """The position of a node inside a subgraph: that of the main-graph node holding the
    subgraph (scope labels start with the holder's label and ``/``), the longest such label
    winning. None when no main-graph label of ``main`` holds it."""
    holders = [label for label in main if scope.startswith(label + "/")]
    return main[max(holders, key=len)] if holders else None
