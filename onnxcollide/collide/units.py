"""W1's units: the input vectors a Gemm/MatMul reads, and its weight as one matrix."""

from __future__ import annotations

import numpy as np

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.linear_ops import LinearSite, node_flag


def dense_units(site: LinearSite, shape: tuple[int, ...], q: int) -> np.ndarray:
    """(units, q) flat positions of each input vector of a Gemm/MatMul in its data operand."""
    size = int(np.prod(shape))
    index = np.arange(size).reshape(shape)
    right = site.weight_on_right  # the data operand is then A, on the left
    if site.op_type in ("Gemm", "QGemm"):
        trans = node_flag(site.node, "transA" if right else "transB")
        rows = (not trans) if right else trans
        units = index if rows else index.T
    elif len(shape) == 1:
        units = index.reshape(1, -1)
    elif right:
        units = index.reshape(-1, shape[-1])
    else:
        units = np.swapaxes(index, -1, -2).reshape(-1, shape[-2])
    if units.shape[1] != q:
        raise UnsupportedModelError(f"the data input has shape {list(shape)}, whose vectors of "
                                    f"{units.shape[1]} do not fit the weight's {q} rows",
                                    f"node '{site.label}' ({site.op_type})",
                                    "the model is corrupt: re-export it")
    return units


def block_diagonal(blocks: np.ndarray) -> np.ndarray:
    """The (g*q, g*p) block-diagonal matrix of (g, q, p) blocks (one per group)."""
    g, qb, pb = blocks.shape
    out = np.zeros((g * qb, g * pb))
    for k in range(g):
        out[k * qb:(k + 1) * qb, k * pb:(k + 1) * pb] = blocks[k]
    return out
