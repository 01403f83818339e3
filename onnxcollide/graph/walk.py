"""Walking a graph's subgraphs (If/Loop/Scan bodies) without recursion."""

from __future__ import annotations

from collections.abc import Iterator

from onnx import AttributeProto, GraphProto, NodeProto


def graphs_in(graph: GraphProto) -> Iterator[GraphProto]:
    """Yield ``graph`` and every subgraph inside it (If/Loop/Scan bodies at any depth),
    depth first in node order, without recursion."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        inner = [sub for node in current.node for _, sub in subgraphs(node)]
        pending.extend(reversed(inner))


def subgraphs(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    """The node's subgraphs with their attribute labels (``body``, ``branches[1]``)."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for k, graph in enumerate(attr.graphs):
                yield f"{attr.name}[{k}]", graph
