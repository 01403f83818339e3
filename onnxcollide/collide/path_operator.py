"""W1 composed with the path from the input: where perturbations live and how they lift.

Where the path is one sparse operator ``M`` (``graph.linear_path``), a perturbation of W1's
input lifts to the model input through ``M`` (a selection: element by element), and the whole
operator ``A = W1 o M`` is analysed on the real input space where ``M`` couples elements. A
conv W1 behind a selection that only adds a constant border (a zero Pad, a Focus permutation)
keeps the structured conv solver: the border becomes the conv's own zero padding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse

from onnxcollide.collide.context import SearchContext
from onnxcollide.collide.units import block_diagonal, dense_units
from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.linear_path import PathOperator
from onnxcollide.graph.path_map import pull_delta, pull_positions
from onnxcollide.linalg.conv_operator import ConvSpec, conv_matrix
from onnxcollide.linalg.matrix_operator import (
    DENSE_MAX_COLUMNS,
    count_at_most,
    gram_eigen,
    top_singular,
)

# A direction the path maps below this times its largest singular value is in its kernel: the
# path's entries are copies and small dyadic or 1/k weights, so its nonzero singular values sit
# far above this, and its kernel vectors map to about eps (1e-16) of it.
PATH_RTOL = 1e-9

ToInput = Callable[[np.ndarray], np.ndarray]


def positions_at_input(ctx: SearchContext, data_shape: tuple[int, ...]) -> np.ndarray:
    """For each model-input element (all samples), the flat index of the W1-input element it
    becomes; -1 where it reaches none. Int64 of the model input's shape."""
    operator = ctx.operator
    if operator is None:
        return pull_positions(ctx.route.nodes, ctx.route.input, data_shape, ctx.shapes,
                              ctx.resolver, ctx.model.opset)
    _require_selection(operator, "follow input elements to W1's input")
    per_sample = operator.positions()
    samples = data_shape[0]
    step = int(np.prod(data_shape[1:]))
    out = per_sample[None, :] + step * np.arange(samples)[:, None]
    out[:, per_sample < 0] = -1
    return out.reshape(samples, *operator.input_shape)


def pull_to_input(ctx: SearchContext, delta: np.ndarray) -> np.ndarray:
    """The model-input perturbation that the path maps to ``delta`` (W1's input, all samples).

    Raises:
        UnsupportedModelError: ``delta`` moves constant elements, or the path couples input
            elements (then only the whole operator's vectors lift).
    """
    operator = ctx.operator
    if operator is None:
        return pull_delta(ctx.route.nodes, ctx.route.input, delta, ctx.shapes, ctx.resolver,
                          ctx.model.opset)
    _require_selection(operator, "lift a perturbation of W1's input element by element")
    rows = np.asarray(delta, dtype=np.float64).reshape(delta.shape[0], -1)
    return np.stack([operator.pull(row) for row in rows]).reshape(
        delta.shape[0], *operator.input_shape)


def _require_selection(operator: PathOperator, what: str) -> None:
    if not operator.selection:
        raise UnsupportedModelError(
            f"the path to W1 couples input elements ({operator.coupling}), so the search cannot "
            f"{what}", hint="use --mode auto (the whole operator W1 o path is analysed)")


def broadcast_to_input(vector: np.ndarray, x_shape: tuple[int, ...]) -> np.ndarray:
    """One sample's perturbation repeated over the batch: ``x_shape``."""
    return np.array(np.broadcast_to(vector.reshape(x_shape[1:]), x_shape))


# ------------------------------------------------------------------ a conv behind a border


def folded_conv(spec: ConvSpec, operator: PathOperator, x_shape: tuple[int, ...]
                ) -> tuple[ConvSpec, ToInput, bool] | None:
    """The conv ``spec`` (on W1's whole input) seen from the model input, where the path is a
    bijective selection plus a constant border on the spatial axes: the border joins the
    conv's zero padding. Returns the folded spec, the map of its input vectors to the model
    input and whether there was a border at all; None for any other path."""
    if not operator.selection or operator.kernel_bound() > 0:
        return None
    reached = ~operator.constant_rows().reshape(spec.input_shape)
    box = _bounding_box(reached)
    if box is None or box[0] != (0, spec.input_shape[0]):
        return None
    inner = tuple(hi - lo for lo, hi in box)
    if int(reached.sum()) != int(np.prod(inner)):
        return None  # constants inside the box: not a border
    axes = len(inner) - 1
    begin = [spec.pads[a] + box[a + 1][0] for a in range(axes)]
    end = [spec.pads[a + axes] + spec.input_shape[a + 1] - box[a + 1][1] for a in range(axes)]
    folded = ConvSpec(weight=spec.weight, strides=spec.strides, dilations=spec.dilations,
                      pads=(*begin, *end), groups=spec.groups, input_shape=inner)
    where = tuple(slice(lo, hi) for lo, hi in box)

    def to_input(vector: np.ndarray) -> np.ndarray:
        data = np.zeros(spec.input_shape)
        data[where] = vector.reshape(inner)
        return broadcast_to_input(operator.pull(data.reshape(-1)), x_shape)

    return folded, to_input, inner != spec.input_shape


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Per axis, the half-open range of indices where ``mask`` holds; None if it never does."""
    if not mask.any():
        return None
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return box


# ------------------------------------------------------------------ W1 o path


def w1_matrix(ctx: SearchContext, data_shape: tuple[int, ...],
              conv: ConvSpec | None, transposed: ConvSpec | None) -> scipy.sparse.csr_matrix:
    """W1 on one sample of its input as a sparse ``(outputs, inputs)`` matrix.

    Args:
        conv: W1 as a ConvSpec where it is a Conv.
        transposed: the conv a ConvTranspose W1 is the adjoint of (None for other ops).

    Raises:
        UnsupportedModelError: a ConvTranspose whose output geometry is not explicit.
    """
    if conv is not None:
        return conv_matrix(conv)
    if ctx.site.op_type == "ConvTranspose":
        if transposed is None:
            raise UnsupportedModelError("the ConvTranspose's output geometry is not explicit, "
                                        "so W1 o path cannot be formed", f"node "
                                        f"'{ctx.site.label}'")
        return conv_matrix(transposed).T.tocsr()
    matrix = block_diagonal(np.asarray(ctx.layer.load_blocks(), dtype=np.float64))  # (q, p)
    units = dense_units(ctx.site, (1, *data_shape[1:]), matrix.shape[0])  # (U, q)
    q, p = matrix.shape
    rows = (np.arange(units.shape[0])[:, None, None] * p + np.arange(p)[None, None, :])
    rows = np.broadcast_to(rows, (units.shape[0], q, p))
    cols = np.broadcast_to(units[:, :, None], rows.shape)
    values = np.broadcast_to(matrix[None], rows.shape)
    return scipy.sparse.csr_matrix((values.reshape(-1), (rows.reshape(-1), cols.reshape(-1))),
                                   shape=(units.shape[0] * p, int(np.prod(data_shape[1:]))))


def path_kernel_words(operator: PathOperator) -> str | None:
    """How many input directions the path itself maps to zero (collisions before W1), in
    words; None where it maps none that we can see."""
    matrix = operator.matrix.tocsr()
    if matrix.shape[1] <= DENSE_MAX_COLUMNS:
        values, vectors = gram_eigen(matrix)
        count = count_at_most(matrix, values, vectors, PATH_RTOL * top_singular(values))
        exact = True
    else:
        count, exact = operator.kernel_bound(), False
    if count <= 0:
        return None
    size = f"{count}" if exact else f"at least {count}"
    return (f"the path itself maps {size} input direction(s) to zero before W1 is reached "
            f"({operator.coupling or 'elements it drops'}): those inputs "
            "collide whatever W1 is, and they are part of the null space found")
