"""The path from a model input to W1 as one sparse linear operator on one input sample.

Every op between the input and W1's data operand that is linear in the input (up to a
constant offset, which never matters for a collision) is applied to the rows of a sparse
matrix ``M``: row ``r`` of a path tensor says which combination of input elements its element
``r`` is. Ops that copy elements (Transpose, Reshape, Slice with steps, Pad in every mode,
Concat, Split, Gather with constant indices, Tile, Expand, DepthToSpace, nearest Resize, Trilu,
ReverseSequence, Compress, CenterCropPad, ...) select rows by running the op on an array of
row indices (-1 where the op writes a constant); ops that weigh elements (Mul by a constant,
BatchNormalization, linear and cubic Resize, AveragePool, ReduceMean/ReduceSum, CumSum, Add of
two path tensors) multiply by a sparse matrix.

The result, ``M: (elements of one sample of W1's input, elements of one input sample)``, is
what ``A = W1 o M`` is composed of. Where ``M`` is a *selection* (each row and each column
holds at most one non-zero), a kernel vector of W1 lifts element by element; elsewhere the path
couples input elements (reflect padding, interpolation, pooling) and the whole operator
decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from onnx import NodeProto, helper

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver
from onnxcollide.graph.linear_ops import node_attr, node_float, node_int, node_ints, node_label
from onnxcollide.graph.pad_slice import pad_amounts, slice_sources
from onnxcollide.graph.shapes import TensorInfo

# Ops that are linear in the input but that this module does not apply (yet).
LINEAR_NOT_HANDLED = {
    "Einsum", "DFT", "STFT", "Col2Im", "ScatterND", "ScatterElements", "Scatter", "GridSample",
    "RoiAlign", "MaxUnpool", "SpaceToBatchND",
}
# Elements of W1's input per sample above which the path operator is not built.
MAX_PATH_ELEMENTS = 1 << 24
_NUMPY_PAD = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@dataclass(frozen=True)
class _Tensor:
    """A path tensor: ``rows (size, n_in)`` sparse, ``shape`` with batch 1."""

    rows: scipy.sparse.csr_matrix
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PathOperator:
    """The linear part of the path from one input sample to one sample of W1's data input.

    Attributes:
        matrix: ``(n_data, n_in)`` sparse: W1-input element ``r`` is ``matrix[r] @ x``
            (plus a constant).
        input_shape: per-sample shape of the model input (batch axis dropped).
        data_shape: per-sample shape of W1's data input.
        nodes: the path's nodes in graph order (all branches, for Concat and Add of two).
        coupling: label and op of the first node where the path stops being a selection
            (None for a selection).
    """

    matrix: scipy.sparse.csr_matrix
    input_shape: tuple[int, ...]
    data_shape: tuple[int, ...]
    nodes: tuple[NodeProto, ...]
    coupling: str | None

    @property
    def selection(self) -> bool:
        """Each W1-input element copies (and scales) at most one input element, and each
        input element reaches at most one W1-input element."""
        return self.coupling is None

    def constant_rows(self) -> np.ndarray:
        """``(n_data,)`` bool: W1-input elements no input element reaches (padding)."""
        return np.diff(self.matrix.indptr) == 0

    def positions(self) -> np.ndarray:
        """Selection only: ``(n_in,)`` int64, the W1-input element each input element
        becomes, -1 where it reaches none."""
        coo = self.matrix.tocoo()
        out = np.full(self.matrix.shape[1], -1, dtype=np.int64)
        out[coo.col] = coo.row
        return out

    def pull(self, delta: np.ndarray) -> np.ndarray:
        """Selection only: the input perturbation ``(n_in,)`` that the path maps to ``delta``
        ``(n_data,)`` (which must be 0 where no input element arrives).

        Raises:
            UnsupportedModelError: ``delta`` moves an element that the path fills with a
                constant.
        """
        flat = np.asarray(delta, dtype=np.float64).reshape(-1)
        if np.any(flat[self.constant_rows()]):
            raise UnsupportedModelError("the perturbation moves elements that the path to W1 "
                                        "fills with constants")
        coo = self.matrix.tocoo()
        out = np.zeros(self.matrix.shape[1])
        out[coo.col] = flat[coo.row] / coo.data
        return out

    def kernel_bound(self) -> int:
        """A lower bound of the dimension of the path's own kernel (inputs it maps to 0):
        blind input columns plus ``n_in - n_data`` where that is larger."""
        blind = int(np.count_nonzero(np.diff(self.matrix.tocsc().indptr) == 0))
        return max(blind, self.matrix.shape[1] - self.matrix.shape[0])


# ------------------------------------------------------------------ helpers


def _where(node: NodeProto) -> str:
    return f"node '{node_label(node, 'main')}' ({node.op_type})"


def _fail(node: NodeProto, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(what.format(op=node.op_type, label=node_label(node, "main")))


def _too_large(node: NodeProto) -> UnsupportedModelError:
    return UnsupportedModelError(f"the path makes a tensor of more than {MAX_PATH_ELEMENTS} "
                                 "elements", _where(node))


def _not_handled(node: NodeProto, detail: str = "") -> UnsupportedModelError:
    extra = f" ({detail})" if detail else ""
    return _fail(node, "{op} (node '{label}') is linear in the input but not yet handled on "
                       f"the path to W1{extra}")


def _take_rows(rows: scipy.sparse.csr_matrix, index: np.ndarray) -> scipy.sparse.csr_matrix:
    """Rows ``index`` of ``rows`` (a zero row where ``index`` is -1)."""
    flat = index.reshape(-1)
    keep = np.flatnonzero(flat >= 0)
    pick = scipy.sparse.csr_matrix((np.ones(keep.size), (keep, flat[keep])),
                                   shape=(flat.size, rows.shape[0]))
    return (pick @ rows).tocsr()


def _scaled(rows: scipy.sparse.csr_matrix, factor: np.ndarray) -> scipy.sparse.csr_matrix:
    out = (scipy.sparse.diags(factor.reshape(-1).astype(np.float64)) @ rows).tocsr()
    out.eliminate_zeros()
    return out


def _index_of(tensor: _Tensor) -> np.ndarray:
    return np.arange(int(np.prod(tensor.shape)), dtype=np.int64).reshape(tensor.shape)


def _batch_one(shape: tuple[int | None, ...] | None) -> tuple[int, ...] | None:
    if shape is None or not shape or any(d is None for d in shape[1:]):
        return None
    return (1, *(int(d) for d in shape[1:]))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the evaluator


class _PathEvaluator:
    """Applies the path's nodes to sparse row matrices, one node at a time."""

    def __init__(self, resolver: ConstantResolver, infos: dict[str, TensorInfo],
                 opset: int) -> None:
        self.resolver = resolver
        self.infos = infos
        self.opset = opset
        self.values: dict[str, _Tensor] = {}

    # -- operands

    def constant(self, node: NodeProto, name: str) -> np.ndarray:
        if not self.resolver.is_constant(name):
            raise _fail(node, "{op} (node '{label}') combines the input with another "
                              f"non-constant tensor '{name}'")
        return np.asarray(self.resolver.value(name))

    def operand(self, node: NodeProto, name: str) -> _Tensor | np.ndarray:
        return self.values[name] if name in self.values else self.constant(node, name)

    def batch(self, node: NodeProto) -> int | None:
        """The batch size of the node's first input as shape inference gives it (None where
        it is unknown or symbolic)."""
        info = self.infos.get(node.input[0])
        first = info.shape[0] if info and info.shape else None
        return first if isinstance(first, int) else None

    def fixed(self, node: NodeProto, name: str, what: str) -> np.ndarray:
        """A parameter of the node that must be constant (an axis, ``k``, a condition).

        Raises:
            UnsupportedModelError: it is computed from the input (not linear) or from
                anything else at run time (not handled), naming the node.
        """
        if name in self.values:
            raise _fail(node, "{op} (node '{label}') takes the input as a parameter, which is "
                              "not linear")
        if not self.resolver.is_constant(name):
            raise _not_handled(node, f"its {what} is computed at run time")
        return np.asarray(self.resolver.value(name))

    def axis(self, node: NodeProto, name: str, ndim: int) -> int:
        """A constant axis operand (a scalar or one-element tensor), made non-negative."""
        found = self.fixed(node, name, "axis").reshape(-1)
        if found.size != 1 or found.dtype.kind not in "iu" or not -ndim <= int(found[0]) < ndim:
            raise _fail(node, "{op} (node '{label}') has an axis that does not fit its input")
        return int(found[0]) % ndim

    def ints(self, node: NodeProto, index: int, attr: str) -> list[int] | None:
        """An int list from input ``index`` (newer opsets) or attribute ``attr``."""
        if len(node.input) > index and node.input[index]:
            return [int(v) for v in self.constant(node, node.input[index]).reshape(-1)]
        if any(a.name == attr for a in node.attribute):
            return list(node_ints(node, attr, []))
        return None

    def out_shape(self, node: NodeProto, size: int,
                  given: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Shape inference's shape of the node's output, batch 1; where inference does not
        know it (after a Compress without axis), the shape a Reshape, Flatten, Squeeze or
        Unsqueeze gives the path tensor's own shape ``given``."""
        info = self.infos.get(node.output[0])
        shape = _batch_one(info.shape if info else None)
        if shape is None and given is not None:
            shape = _reshaped(node, self, given)
        if shape is None or int(np.prod(shape)) != size:
            raise UnsupportedModelError(
                f"the shape of '{node.output[0]}' is unknown or moves the batch axis",
                _where(node), "pass --input-shape")
        return shape

    # -- generic forms

    def gather(self, node: NodeProto, operands: list[_Tensor | np.ndarray],
               fn: Callable[..., np.ndarray | list[np.ndarray]]) -> list[_Tensor]:
        """Run ``fn`` on row-index arrays of the operands (-1 for constants)."""
        offset, indices, stacked = 0, [], []
        for value in operands:
            if isinstance(value, _Tensor):
                indices.append(_index_of(value) + offset)
                offset += value.rows.shape[0]
                stacked.append(value.rows)
            else:
                indices.append(np.full(np.shape(value), -1, dtype=np.int64))
        rows = scipy.sparse.vstack(stacked).tocsr()
        result = fn(*indices)
        outs = result if isinstance(result, list) else [result]
        return [_Tensor(_take_rows(rows, np.asarray(o)), tuple(np.shape(o))) for o in outs]

    def along_axes(self, value: _Tensor, matrices: dict[int, scipy.sparse.csr_matrix],
                   out_shape: tuple[int, ...]) -> _Tensor:
        """Apply a 1-D ``(out_a, in_a)`` matrix along each axis ``a`` (separable ops)."""
        rows, shape = value.rows, list(value.shape)
        for axis, matrix in sorted(matrices.items()):
            before = math.prod(shape[:axis])
            after = math.prod(shape[axis + 1:])
            full = scipy.sparse.kron(scipy.sparse.kron(scipy.sparse.identity(before), matrix),
                                     scipy.sparse.identity(after))
            rows = (full.tocsr() @ rows).tocsr()
            shape[axis] = matrix.shape[0]
        if tuple(shape) != tuple(out_shape):
            raise UnsupportedModelError(f"the op gives shape {shape}, not {list(out_shape)}")
        rows.eliminate_zeros()
        return _Tensor(rows, tuple(shape))


# ------------------------------------------------------------------ ops that copy


def _perm(node: NodeProto, ndim: int) -> list[int]:
    return list(node_ints(node, "perm", list(range(ndim))[::-1]))


def _pad_fn(node: NodeProto, ev: _PathEvaluator, ndim: int) -> Callable[..., np.ndarray]:
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % ndim for a in ev.constant(node, node.input[3]).reshape(-1)]
    else:
        axes = list(range(ndim))
    if len(node.input) > 3 and node.input[3]:
        raw = [int(v) for v in ev.constant(node, node.input[1]).reshape(-1)]
    else:
        found = pad_amounts(node, ev.resolver, ev.opset)
        if found is None:
            raise _not_handled(node, "its pads are not constant")
        raw = found
    if len(raw) != 2 * len(axes):
        raise _fail(node, "{op} (node '{label}') has pads that do not fit its input")
    widths = [(0, 0)] * ndim
    for i, axis in enumerate(axes):
        widths[axis] = (raw[i], raw[i + len(axes)])
    mode = str(node_attr(node, "mode", "constant"))
    if mode != "constant" and mode not in _NUMPY_PAD:
        raise _not_handled(node, f"mode {mode}")

    def fn(index: np.ndarray) -> np.ndarray:
        crop = tuple(slice(max(-b, 0), index.shape[a] - max(-e, 0))
                     for a, (b, e) in enumerate(widths))
        index = index[crop]
        grow = [(max(b, 0), max(e, 0)) for b, e in widths]
        if mode == "constant":
            return np.pad(index, grow, constant_values=-1)
        return np.pad(index, grow, mode=_NUMPY_PAD[mode])  # type: ignore[call-overload]

    return fn


def _split_fn(node: NodeProto, ev: _PathEvaluator, ndim: int) -> Callable[..., list[np.ndarray]]:
    axis = node_int(node, "axis", 0) % ndim
    sizes = ev.ints(node, 1, "split")
    count = len(node.output)

    def fn(index: np.ndarray) -> list[np.ndarray]:
        if sizes:
            cuts = np.cumsum(sizes)[:-1]
            return list(np.split(index, cuts, axis=axis))
        length = index.shape[axis]
        step = -(-length // count)
        return [index.take(range(lo, min(lo + step, length)), axis=axis)
                for lo in range(0, length, step)]

    return fn


def _depth_to_space(index: np.ndarray, block: int, mode: str) -> np.ndarray:
    n, c, h, w = index.shape
    if mode == "CRD":
        moved = index.reshape(n, c // block**2, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        moved = index.reshape(n, block, block, c // block**2, h, w).transpose(0, 3, 4, 1, 5, 2)
    return moved.reshape(n, c // block**2, h * block, w * block)


def _space_to_depth(index: np.ndarray, block: int) -> np.ndarray:
    n, c, h, w = index.shape
    moved = index.reshape(n, c, h // block, block, w // block, block).transpose(0, 3, 5, 1, 2, 4)
    return moved.reshape(n, c * block**2, h // block, w // block)


def _trilu_keep(node: NodeProto, ev: _PathEvaluator, shape: tuple[int, ...]) -> np.ndarray:
    """``(rows, cols)`` bool: the elements of each matrix (the last two axes) that Trilu keeps;
    it writes 0 over the others, which the input then never reaches."""
    if len(shape) < 3:
        raise _not_handled(node, "its matrices span the batch axis")
    k = 0
    if len(node.input) > 1 and node.input[1]:
        found = ev.fixed(node, node.input[1], "k").reshape(-1)
        if found.size != 1 or found.dtype.kind not in "iu":
            raise _fail(node, "{op} (node '{label}') has a k that is not one integer")
        k = int(found[0])
    rows, cols = shape[-2:]
    offset = np.arange(cols)[None, :] - np.arange(rows)[:, None]
    return offset >= k if node_int(node, "upper", 1) else offset <= k


def _reverse_sequence_fn(node: NodeProto, ev: _PathEvaluator,
                         shape: tuple[int, ...]) -> Callable[..., np.ndarray]:
    """ReverseSequence over the batch (axis 0) and time (axis 1) axes: each sample's first
    ``sequence_lens`` time steps reversed, a permutation. The lengths must be one number: a
    length per sample is not one operator on a sample."""
    batch_axis, time_axis = node_int(node, "batch_axis", 1), node_int(node, "time_axis", 0)
    if (batch_axis, time_axis) != (0, 1):
        raise _not_handled(node, f"its time axis is axis {time_axis} and its batch axis "
                                 f"axis {batch_axis}, where axis 0 is taken as the batch")
    lengths = ev.fixed(node, node.input[1], "sequence_lens").reshape(-1)
    if lengths.size == 0 or lengths.dtype.kind not in "iu":
        raise _fail(node, "{op} (node '{label}') has sequence_lens that are not integers")
    if np.any(lengths != lengths[0]):
        raise _not_handled(node, "its sequence_lens differ between samples")
    length = int(lengths[0])
    if not 0 <= length <= shape[1]:
        raise _fail(node, "{op} (node '{label}') has sequence_lens outside its time axis")

    def fn(index: np.ndarray) -> np.ndarray:
        out = index.copy()
        out[:, :length] = index[:, :length][:, ::-1]
        return out

    return fn


def _compress_fn(node: NodeProto, ev: _PathEvaluator,
                 shape: tuple[int, ...]) -> Callable[..., np.ndarray]:
    """Compress with a constant condition: the elements (or slices along ``axis``) where it is
    true; entries past the axis are ignored, as ONNX Runtime does. Without ``axis`` the output
    is 1-D, with no batch axis: it is one sample's only for a batch of one, so the condition
    must not select elements of the next samples."""
    condition = ev.fixed(node, node.input[1], "condition").reshape(-1).astype(bool)
    if any(a.name == "axis" for a in node.attribute):
        axis = node_int(node, "axis", 0)
        if not -len(shape) <= axis < len(shape):
            raise _fail(node, "{op} (node '{label}') has an axis that does not fit its input")
        axis %= len(shape)
        if axis == 0:
            raise _not_handled(node, "it selects along the batch axis")
        kept = condition[:shape[axis]]
        return lambda i: np.compress(kept, i, axis=axis)
    per_sample = math.prod(shape)
    if np.any(condition[per_sample:]):
        raise _not_handled(node, "its condition selects elements of the next samples")
    flat = condition[:per_sample]
    return lambda i: np.compress(flat, i.reshape(-1))


def _center_crop_pad_fn(node: NodeProto, ev: _PathEvaluator,
                        shape: tuple[int, ...]) -> Callable[..., np.ndarray]:
    """CenterCropPad to a constant shape: each axis centre-cropped (start ``(n - m) // 2``) or
    zero-padded (``(m - n) // 2`` before) to its target."""
    ndim = len(shape)
    targets = [int(v) for v in ev.fixed(node, node.input[1], "shape").reshape(-1)]
    axes = [a % ndim if -ndim <= a < ndim else ndim
            for a in node_ints(node, "axes", list(range(ndim)))]
    if len(axes) != len(targets) or ndim in axes or min(targets, default=0) < 0:
        raise _fail(node, "{op} (node '{label}') has a shape that does not fit its input")
    batch = ev.batch(node)
    for axis, target in zip(axes, targets, strict=True):
        if axis == 0 and target not in (1, batch):
            raise _not_handled(node, "it crops or pads the batch axis")
    changes = [(a, m) for a, m in zip(axes, targets, strict=True) if a != 0]
    out = list(shape)
    for axis, target in changes:
        out[axis] = target
    if math.prod(out) > MAX_PATH_ELEMENTS:
        raise _too_large(node)

    def fn(index: np.ndarray) -> np.ndarray:
        for axis, target in changes:
            n = index.shape[axis]
            if target < n:
                start = (n - target) // 2
                index = index.take(range(start, start + target), axis=axis)
            elif target > n:
                widths = [(0, 0)] * ndim
                widths[axis] = ((target - n) // 2, target - n - (target - n) // 2)
                index = np.pad(index, widths, constant_values=-1)
        return index

    return fn


def _copy_op(node: NodeProto, ev: _PathEvaluator, first: _Tensor
             ) -> Callable[..., np.ndarray | list[np.ndarray]] | None:
    """The index function of an op that only copies elements, None for other ops."""
    op, ndim = node.op_type, len(first.shape)
    if op in ("Identity", "Dropout"):
        return lambda i, *rest: i
    if op == "Transpose":
        return lambda i: np.transpose(i, _perm(node, ndim))
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        shape = ev.out_shape(node, int(np.prod(first.shape)), first.shape)
        return lambda i, *rest: i.reshape(shape)
    if op == "Slice":
        return lambda i, *rest: i.reshape(-1)[slice_sources(node, ev.resolver, i.shape)]
    if op == "Pad":
        pad = _pad_fn(node, ev, ndim)
        return lambda i, *rest: pad(i)
    if op == "Concat":
        axis = node_int(node, "axis", 0) % ndim
        if axis == 0:
            raise _not_handled(node, "it concatenates along the batch axis")
        return lambda *parts: np.concatenate(parts, axis=axis)
    if op == "Split":
        split = _split_fn(node, ev, ndim)
        return lambda i, *rest: split(i)
    if op == "Tile":
        repeats = [int(r) for r in ev.constant(node, node.input[1]).reshape(-1)]
        if repeats[:1] != [1]:
            raise _not_handled(node, "it tiles along the batch axis")
        return lambda i, *rest: np.tile(i, repeats)
    if op == "Expand":
        return lambda i, *rest: np.broadcast_to(i, _expand_shape(node, ev, i.shape)).copy()
    if op == "DepthToSpace":
        block, mode = node_int(node, "blocksize", 1), str(node_attr(node, "mode", "DCR"))
        return lambda i: _depth_to_space(i, block, mode)
    if op == "SpaceToDepth":
        return lambda i: _space_to_depth(i, node_int(node, "blocksize", 1))
    if op == "Trilu":
        keep = _trilu_keep(node, ev, first.shape)
        return lambda i, *rest: np.where(keep, i, -1)
    if op == "ReverseSequence":
        reverse = _reverse_sequence_fn(node, ev, first.shape)
        return lambda i, *rest: reverse(i)
    if op == "Compress":
        compress = _compress_fn(node, ev, first.shape)
        return lambda i, *rest: compress(i)
    if op == "CenterCropPad":
        crop_pad = _center_crop_pad_fn(node, ev, first.shape)
        return lambda i, *rest: crop_pad(i)
    return None


def _reshaped(node: NodeProto, ev: _PathEvaluator, shape: tuple[int, ...]
              ) -> tuple[int, ...] | None:
    """The shape Reshape / Flatten / Squeeze / Unsqueeze gives ``shape`` (None where its
    parameters do not fit)."""
    op, ndim = node.op_type, len(shape)
    if op == "Flatten":
        axis = node_int(node, "axis", 1)
        axis = axis + ndim if axis < 0 else axis
        return (math.prod(shape[:axis]), math.prod(shape[axis:])) if 0 <= axis <= ndim else None
    if op == "Squeeze":
        axes = {a % max(ndim, 1) for a in ev.ints(node, 1, "axes") or []} or \
            {a for a, n in enumerate(shape) if n == 1}
        return tuple(n for a, n in enumerate(shape) if a not in axes)
    if op == "Unsqueeze":
        out: list[int] = list(shape)
        added = ev.ints(node, 1, "axes") or []
        for axis in sorted(a % (ndim + len(added)) for a in added):
            out.insert(axis, 1)
        return tuple(out)
    target = [int(v) for v in ev.constant(node, node.input[1]).reshape(-1)]
    dims = [shape[k] if d == 0 and not node_int(node, "allowzero", 0) and k < ndim else d
            for k, d in enumerate(target)]
    if dims.count(-1) == 1 and math.prod(d for d in dims if d != -1) > 0:
        dims[dims.index(-1)] = math.prod(shape) // math.prod(d for d in dims if d != -1)
    return tuple(dims) if min(dims, default=0) >= 0 else None


def _expand_shape(node: NodeProto, ev: _PathEvaluator, shape: tuple[int, ...]
                  ) -> tuple[int, ...]:
    target = [int(v) for v in ev.constant(node, node.input[1]).reshape(-1)]
    if len(target) > len(shape):
        raise _not_handled(node, "it adds axes before the batch axis")
    if len(target) == len(shape):
        target[0] = 1  # the batch axis: one sample here
    return tuple(np.broadcast_shapes(shape, tuple(target)))


def _gather_fn(node: NodeProto, ev: _PathEvaluator, data: _Tensor
               ) -> Callable[..., np.ndarray]:
    """Gather / GatherElements with constant indices (data-dependent ones are not linear)."""
    if not ev.resolver.is_constant(node.input[1]):
        raise _fail(node, "{op} (node '{label}') picks elements by indices computed from the "
                          "data, which is not linear in the input")
    indices = np.asarray(ev.constant(node, node.input[1])).astype(np.int64)
    axis = node_int(node, "axis", 0) % len(data.shape)
    if axis == 0:
        raise _not_handled(node, "it gathers along the batch axis")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise _fail(node, "{op} (node '{label}') has indices outside its input")
    indices = indices % size
    if node.op_type == "GatherElements":
        return lambda i: np.take_along_axis(i, np.broadcast_to(
            indices, (1, *indices.shape[1:])) if indices.shape[0] != 1 else indices, axis=axis)
    return lambda i: np.take(i, indices, axis=axis)


# ------------------------------------------------------------------ ops that weigh


def _scaled_size(n: int, scale: float) -> int:
    """The output size ONNX Runtime gives ``n`` elements scaled by ``scale``: their product
    in float32, truncated (``floor(n * scale)`` rounded once more: 2.6 on 5 elements is 13,
    where 12.9999995 in float64 would floor to 12); 0 where it is not a finite number
    (refused by the caller)."""
    with np.errstate(over="ignore", invalid="ignore"):
        product = np.float32(n) * np.float32(scale)
    return int(product) if np.isfinite(product) and product >= 0 else 0


def _size_scale(m: int, n: int) -> float:
    """The scale ONNX Runtime takes for a size ``m`` given to ``n`` elements: their quotient
    in float32 (6 over 7 is 0.857142865657806, not 6/7)."""
    return float(np.float32(m) / np.float32(n)) if n else 1.0


def _resize_parameters(node: NodeProto, ev: _PathEvaluator, shape: tuple[int, ...]
                       ) -> tuple[list[int], list[float]]:
    """Output sizes and per-axis scales (float32 values, as ONNX Runtime holds them) of a
    Resize / Upsample on ``shape``."""
    ndim = len(shape)
    if node.op_type == "Upsample":
        found = ev.constant(node, node.input[1]).reshape(-1) if len(node.input) > 1 else \
            node_attr(node, "scales", [])  # a float list before opset 9
        if not isinstance(found, (list, tuple, np.ndarray)) or len(found) != ndim:
            raise _fail(node, "{op} (node '{label}') has scales that do not fit its input")
        scales = [float(np.float32(v)) for v in found]
        return [_scaled_size(n, s) for n, s in zip(shape, scales, strict=True)], scales
    names = list(node.input) + [""] * 4
    scales_name = names[2] if ev.opset >= 11 else names[1]
    sizes_name = names[3] if ev.opset >= 11 else ""
    axes = list(node_ints(node, "axes", list(range(ndim))))
    if sizes_name and ev.constant(node, sizes_name).size:
        given = [int(v) for v in ev.constant(node, sizes_name).reshape(-1)]
        sizes, scales = list(shape), [1.0] * ndim
        for a, m in zip(axes, given, strict=True):
            sizes[a % ndim], scales[a % ndim] = m, _size_scale(m, shape[a % ndim])
        return sizes, scales
    values = [float(np.float32(v)) for v in ev.constant(node, scales_name).reshape(-1)]
    scales = [1.0] * ndim
    for a, s in zip(axes, values, strict=True):
        scales[a % ndim] = s
    return [_scaled_size(n, s) for n, s in zip(shape, scales, strict=True)], scales


def _keeps_batch(batch: int | None, size: int, scale: float) -> bool:
    """Whether a Resize that gives the batch axis (``batch`` samples, None where unknown)
    ``size`` elements at ``scale`` keeps each sample apart: a scale of exactly 1 copies the
    axis; one sample resized to one is itself (a model of batch one)."""
    return (scale == 1.0 and size == (batch or 1)) or (size == 1 and batch == 1)


def _legacy(node: NodeProto, opset: int) -> bool:
    """Upsample, and Resize before opset 11: asymmetric coordinates, ONNX Runtime's 'simple'
    nearest pixel (floor, ceil when downscaling), no cubic mode."""
    return node.op_type == "Upsample" or opset < 11


def _antialiased(node: NodeProto, opset: int) -> bool:
    """antialias=1 on a linear or cubic Resize of opset 18 or later (the attribute is new in
    opset 18; nearest mode ignores it, as the ONNX spec says, where ONNX Runtime refuses it)."""
    return node.op_type == "Resize" and opset >= 18 and bool(node_int(node, "antialias", 0)) \
        and str(node_attr(node, "mode", "nearest")) != "nearest"


def _source_coordinate(node: NodeProto, opset: int, n_in: int, n_out: int,
                       scale: float) -> np.ndarray:
    """ONNX's coordinate transformation: ``(n_out,)`` float64, the input coordinate of each
    output coordinate, computed in float32 as ONNX Runtime does (a nearest pixel rounds the
    float32 value: with a scale of 0.7, 3.5 / 0.7 - 0.5 is 4.5 in float32, a tie, where
    float64 gives 4.50000007)."""
    mode = "asymmetric" if _legacy(node, opset) else \
        str(node_attr(node, "coordinate_transformation_mode", "half_pixel"))
    out, half, s = np.arange(n_out, dtype=np.float32), np.float32(0.5), np.float32(scale)
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and n_out > 1):
        coord = (out + half) / s - half
    elif mode in ("pytorch_half_pixel", "align_corners") and n_out == 1:
        coord = np.zeros_like(out)
    elif mode == "align_corners":
        coord = out * np.float32(n_in - 1) / np.float32(n_out - 1)
    elif mode == "asymmetric":
        coord = out / s
    elif mode == "tf_half_pixel_for_nn":
        coord = (out + half) / s
    else:
        raise _not_handled(node, f"coordinate_transformation_mode {mode}")
    return coord.astype(np.float64)


# How far from a half (in the float32 coordinate) ONNX Runtime 1.32's round_prefer_floor and
# round_prefer_ceil take a coordinate for a tie: 14.499999 (20 elements to 6, half_pixel) rounds
# as 14.5 does.
NEAREST_TIE = 1e-6


def _nearest(node: NodeProto, opset: int, coord: np.ndarray, scale: float) -> np.ndarray:
    """The input element ONNX Runtime picks for each coordinate ``(n_out,)`` (before the
    clip to the input): floor or ceil; rounded, a coordinate within ``NEAREST_TIE`` of a half
    going down (round_prefer_floor) or up (round_prefer_ceil); before opset 11, the floor
    (the ceiling when downscaling)."""
    if _legacy(node, opset):
        return np.ceil(coord) if scale < 1 else np.floor(coord)
    mode = str(node_attr(node, "nearest_mode", "round_prefer_floor"))
    if mode == "floor":
        return np.floor(coord)
    if mode == "ceil":
        return np.ceil(coord)
    low = np.floor(coord)
    tie = np.abs(coord - low - 0.5) <= NEAREST_TIE
    if mode == "round_prefer_floor":
        return np.where(tie, low, np.floor(coord + 0.5))
    if mode == "round_prefer_ceil":
        return np.where(tie, low + 1, np.floor(coord + 0.5))
    raise _not_handled(node, f"nearest_mode {mode}")


def _cubic_filter(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel (coefficient ``a``) at distances ``x``, 0 beyond 2."""
    d = np.abs(x)
    inner = ((a + 2) * d - (a + 3)) * d * d + 1
    outer = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d < 1, inner, np.where(d < 2, outer, 0.0))


def _cubic_matrix(node: NodeProto, coord: np.ndarray, n_in: int) -> scipy.sparse.csr_matrix:
    """``(n_out, n_in)`` cubic interpolation as ONNX Runtime's CPU kernel does it: four taps
    around each coordinate, those outside the input read as the nearest edge element, or
    (exclude_outside) dropped and the other weights renormalized to sum 1."""
    taps = np.floor(coord).astype(np.int64)[:, None] + np.arange(-1, 3)
    weights = _cubic_filter(taps - coord[:, None], node_float(node, "cubic_coeff_a", -0.75))
    if node_int(node, "exclude_outside", 0):
        weights = np.where((taps >= 0) & (taps < n_in), weights, 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return _taps_matrix(np.clip(taps, 0, n_in - 1), weights, n_in)


def _taps_matrix(taps: np.ndarray, weights: np.ndarray, n_in: int) -> scipy.sparse.csr_matrix:
    """``(n_out, n_in)`` from ``taps`` and ``weights`` ``(n_out, k)`` (repeated taps add up)."""
    rows = np.repeat(np.arange(taps.shape[0]), taps.shape[1])
    matrix = scipy.sparse.csr_matrix((weights.reshape(-1), (rows, taps.reshape(-1))),
                                     shape=(taps.shape[0], n_in))
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def _antialias_matrix(node: NodeProto, coord: np.ndarray, n_in: int, scale: float,
                      cubic: bool) -> scipy.sparse.csr_matrix:
    """``(n_out, n_in)`` antialiased linear or cubic resampling, as ONNX Runtime's CPU kernel
    (upsample_aa.cc, after Pillow) does it: the filter is stretched by ``max(1, 1/scale)``;
    output ``o`` (centre ``coord + 0.5``) reads the taps from ``floor(centre - support + 0.5)``
    up to ``floor(centre + support + 0.5)``, excluded (older ONNX Runtime releases truncated
    toward zero, which drops a left edge tap; 1.32 floors), with weights
    ``filter((tap - coord) / stretch)`` divided by their sum; taps outside the input read the
    nearest edge element, or (exclude_outside) are dropped before the sum is taken."""
    stretch = max(1.0 / scale, 1.0)
    support = (2.0 if cubic else 1.0) * stretch
    centre = coord + 0.5
    low = np.floor(centre - support + 0.5).astype(np.int64)
    high = np.floor(centre + support + 0.5).astype(np.int64)
    if node_int(node, "exclude_outside", 0):
        low, high = np.maximum(low, 0), np.minimum(high, n_in)
    taps = low[:, None] + np.arange(max(int((high - low).max(initial=0)), 1))
    distance = (taps - coord[:, None]) / stretch
    if cubic:
        weights = _cubic_filter(distance, node_float(node, "cubic_coeff_a", -0.75))
    else:
        weights = np.maximum(1.0 - np.abs(distance), 0.0)
    weights = np.where(taps < high[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(total == 0, 1.0, total)
    return _taps_matrix(np.clip(taps, 0, n_in - 1), weights, n_in)


def _resize_matrix(node: NodeProto, opset: int, n_in: int, n_out: int,
                   scale: float, filtered: bool) -> scipy.sparse.csr_matrix:
    """``(n_out, n_in)``: the 1-D nearest, linear or cubic resampling along one axis (with
    ONNX Runtime's antialiasing kernel where ``filtered``)."""
    mode = str(node_attr(node, "mode", "nearest"))
    coord = _source_coordinate(node, opset, n_in, n_out, scale)
    if mode == "nearest":
        cols = np.clip(_nearest(node, opset, coord, scale), 0, n_in - 1).astype(np.int64)
        return _taps_matrix(cols[:, None], np.ones((n_out, 1)), n_in)
    linear = mode in ("linear", "bilinear", "trilinear")
    if not linear and (mode != "cubic" or _legacy(node, opset)):
        raise _not_handled(node, f"mode {mode}")
    if filtered:
        return _antialias_matrix(node, coord, n_in, scale, cubic=not linear)
    if not linear:
        return _cubic_matrix(node, coord, n_in)
    coord = np.clip(coord, 0, n_in - 1)
    low = np.floor(coord).astype(np.int64)
    frac = (coord - low)[:, None]
    return _taps_matrix(np.stack([low, np.minimum(low + 1, n_in - 1)], axis=1),
                        np.hstack([1.0 - frac, frac]), n_in)


def _resize(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    """Resize / Upsample, axis by axis, as ONNX Runtime's CPU kernel computes it. Where it
    differs from the ONNX reference, it is followed: where no axis changes size, it copies the
    input whatever the scales (a scale of 1.1 on 6 elements); with antialias, and in a cubic
    Resize of NHWC layout, it copies every axis that keeps its size (the reference
    interpolates both)."""
    if str(node_attr(node, "keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise _not_handled(node, "keep_aspect_ratio_policy")
    batch = ev.batch(node)
    sizes, scales = _resize_parameters(node, ev, (batch or 1, *value.shape[1:]))
    if not all(math.isfinite(s) and s > 0 for s in scales) or \
            not all(0 < m <= MAX_PATH_ELEMENTS for m in sizes):
        raise _fail(node, "{op} (node '{label}') has scales or sizes that do not fit its input")
    if not _keeps_batch(batch, sizes[0], scales[0]):
        raise _not_handled(node, "it resizes the batch axis")
    sizes[0], scales[0] = 1, 1.0  # one sample in, one sample out
    if tuple(sizes) == value.shape:
        return value
    filtered = _filtered(node, ev.opset, scales)
    matrices = {a: _resize_matrix(node, ev.opset, n, m, s, filtered)
                for a, (n, m, s) in enumerate(zip(value.shape, sizes, scales, strict=True))
                if m != n or (s != 1.0 and not filtered)}
    return ev.along_axes(value, matrices, tuple(sizes))


def _filtered(node: NodeProto, opset: int, scales: list[float]) -> bool:
    """Whether ONNX Runtime resamples with its antialiasing kernel (upsample_aa), which
    copies every axis that keeps its size: antialias=1 on a linear or cubic Resize, and a
    cubic Resize of a 4-D input scaled on axes 1 and 2 (scales ``[1, s1, s2, 1]``, ``s1`` not
    1: the NHWC layout), which ONNX Runtime 1.32 computes with that kernel."""
    if _antialiased(node, opset):
        return True
    return node.op_type == "Resize" and not _legacy(node, opset) and len(scales) == 4 and \
        str(node_attr(node, "mode", "nearest")) == "cubic" and scales[3] == 1.0 and \
        scales[1] != 1.0


def _pool_matrix(n: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int],
                 ceil_mode: bool, include_pad: bool) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """1-D average pooling: ``(n_out, n)`` taps (weight 1) and each window's divisor part."""
    extent = (kernel - 1) * dilation + 1
    span = n + pads[0] + pads[1] - extent
    n_out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n_out - 1) * stride >= n + pads[0]:
        n_out -= 1  # a last window that starts in the end padding is dropped
    rows, cols, divisor = [], [], np.zeros(n_out)
    for o in range(n_out):
        taps = o * stride - pads[0] + np.arange(kernel) * dilation
        valid = taps[(taps >= 0) & (taps < n)]
        rows += [o] * valid.size
        cols += list(valid)
        if include_pad:
            divisor[o] = np.count_nonzero(taps < n + pads[1])
        else:
            divisor[o] = valid.size
    taps_matrix = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_out, n))
    return taps_matrix, divisor


def _average_pool(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    spatial = value.shape[2:]
    axes = len(spatial)
    kernel = node_ints(node, "kernel_shape", [])
    if len(kernel) != axes:
        raise _fail(node, "{op} (node '{label}') has a kernel_shape that does not fit its input")
    strides = node_ints(node, "strides", [1] * axes)
    dilations = node_ints(node, "dilations", [1] * axes)
    auto_pad = str(node_attr(node, "auto_pad", "NOTSET"))
    pads = list(node_ints(node, "pads", [0] * 2 * axes))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for a, n in enumerate(spatial):
            total = max((-(-n // strides[a]) - 1) * strides[a] + (kernel[a] - 1) * dilations[a]
                        + 1 - n, 0)
            small, large = total // 2, total - total // 2
            pads[a], pads[a + axes] = (small, large) if auto_pad == "SAME_UPPER" else \
                (large, small)
    elif auto_pad == "VALID":
        pads = [0] * 2 * axes
    ceil_mode = bool(node_int(node, "ceil_mode", 0))
    include = bool(node_int(node, "count_include_pad", 0))
    matrices, divisors = {}, []
    for a, n in enumerate(spatial):
        taps, divisor = _pool_matrix(n, kernel[a], strides[a], dilations[a],
                                     (pads[a], pads[a + axes]), ceil_mode, include)
        matrices[2 + a] = taps
        divisors.append(divisor)
    out_shape = (*value.shape[:2], *(m.shape[0] for m in matrices.values()))
    summed = ev.along_axes(value, matrices, out_shape)
    grid = divisors[0]
    for d in divisors[1:]:
        grid = np.multiply.outer(grid, d)
    factor = np.broadcast_to(1.0 / np.maximum(grid, 1), out_shape)
    return _Tensor(_scaled(summed.rows, factor), out_shape)


def _reduce(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    """ReduceMean / ReduceSum / GlobalAveragePool as a sparse sum over the reduced axes."""
    ndim = len(value.shape)
    if node.op_type == "GlobalAveragePool":
        axes, keep = list(range(2, ndim)), True
    else:
        found = ev.ints(node, 1, "axes")
        keep = bool(node_int(node, "keepdims", 1))
        if not found and node_int(node, "noop_with_empty_axes", 0):
            return value
        axes = [a % ndim for a in found] if found else list(range(ndim))
    if 0 in axes:
        raise _not_handled(node, "it reduces over the batch axis")
    kept_shape = tuple(1 if a in axes else n for a, n in enumerate(value.shape))
    coords = np.indices(value.shape).reshape(ndim, -1)
    coords[axes] = 0
    target = np.ravel_multi_index(tuple(coords), kept_shape)
    count = math.prod(value.shape[a] for a in axes)
    weight = 1.0 / count if node.op_type in ("ReduceMean", "GlobalAveragePool") else 1.0
    size = target.size
    reduce = scipy.sparse.csr_matrix((np.full(size, weight), (target, np.arange(size))),
                                     shape=(math.prod(kept_shape), size))
    out_shape = kept_shape if keep else tuple(n for a, n in enumerate(value.shape)
                                              if a not in axes)
    return _Tensor((reduce @ value.rows).tocsr(), out_shape)


def _cumsum(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    """CumSum along a constant axis: a triangular 0/1 matrix along it (strictly so where
    exclusive; upper where reverse)."""
    axis = ev.axis(node, node.input[1], len(value.shape))
    if axis == 0:
        raise _not_handled(node, "it sums along the batch axis")
    n = value.shape[axis]
    if value.rows.nnz * (n + 1) // 2 > MAX_PATH_ELEMENTS:
        raise UnsupportedModelError(f"its sums would hold more than {MAX_PATH_ELEMENTS} terms",
                                    _where(node))
    exclusive = 1 if node_int(node, "exclusive", 0) else 0
    if node_int(node, "reverse", 0):
        cols, rows = np.tril_indices(n, -exclusive)  # row r sums the columns from r on
    else:
        rows, cols = np.tril_indices(n, -exclusive)
    matrix = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return ev.along_axes(value, {axis: matrix}, value.shape)


def _batch_norm(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    if node_int(node, "training_mode", 0):
        raise _not_handled(node, "training_mode")
    scale = ev.constant(node, node.input[1]).astype(np.float64)
    var = ev.constant(node, node.input[4]).astype(np.float64)
    eps = node_float(node, "epsilon", 1e-5)
    view = (1, -1) + (1,) * (len(value.shape) - 2)
    factor = np.broadcast_to((scale / np.sqrt(var + eps)).reshape(view), value.shape)
    return _Tensor(_scaled(value.rows, factor), value.shape)


def _quantize(node: NodeProto, ev: _PathEvaluator, value: _Tensor) -> _Tensor:
    """QuantizeLinear / DequantizeLinear as their scale (the rounding is stated elsewhere)."""
    scale = ev.constant(node, node.input[1]).astype(np.float64)
    if scale.ndim == 1 and scale.size > 1:
        axis = node_int(node, "axis", 1) % len(value.shape)
        scale = scale.reshape([-1 if a == axis else 1 for a in range(len(value.shape))])
    factor = 1.0 / scale if node.op_type == "QuantizeLinear" else scale
    return _Tensor(_scaled(value.rows, np.broadcast_to(factor, value.shape)), value.shape)


def _elementwise(node: NodeProto, ev: _PathEvaluator) -> _Tensor:
    """Add, Sub, Mul, Div, Neg, Sum, Mean, Where with constant condition, Cast to float."""
    op = node.op_type
    if op == "Cast" and helper.tensor_dtype_to_np_dtype(node_int(node, "to", 0)).kind != "f":
        raise _fail(node, "Cast (node '{label}') turns the input into integers")
    if op == "Where":
        return _where_op(node, ev)
    names = [n for n in node.input if n] if op in ("Sum", "Mean") else list(node.input[:2])
    if op in ("Neg", "Cast"):
        names = names[:1]
    operands = [ev.operand(node, n) for n in names]
    path = [v for v in operands if isinstance(v, _Tensor)]
    shape = np.broadcast_shapes(*(v.shape if isinstance(v, _Tensor) else np.shape(v)
                                  for v in operands))
    if op in ("Mul", "Div") and len(path) > 1:
        raise _fail(node, "{op} (node '{label}') uses the input twice, which is not affine "
                          "and injective")
    if op == "Div" and not isinstance(operands[0], _Tensor):
        raise _fail(node, "the input is a divisor in Div (node '{label}'), which is not affine")
    signs = {"Sub": [1.0, -1.0], "Neg": [-1.0]}.get(op, [1.0] * len(operands))
    if op == "Mean":
        signs = [1.0 / len(operands)] * len(operands)
    total: scipy.sparse.csr_matrix | None = None
    for value, sign in zip(operands, signs, strict=True):
        if not isinstance(value, _Tensor):
            continue
        index = np.broadcast_to(_index_of(value), shape)
        rows = _scaled(_take_rows(value.rows, index), np.full(int(np.prod(shape)), sign))
        if op in ("Mul", "Div"):
            other = next(v for v in operands if not isinstance(v, _Tensor))
            factor = np.broadcast_to(np.asarray(other, np.float64), shape)
            rows = _scaled(rows, factor if op == "Mul" else 1.0 / factor)
        total = rows if total is None else (total + rows).tocsr()
    assert total is not None  # the node consumes a path tensor
    total.eliminate_zeros()
    return _Tensor(total, tuple(shape))


def _where_op(node: NodeProto, ev: _PathEvaluator) -> _Tensor:
    condition = np.asarray(ev.constant(node, node.input[0])).astype(bool)
    operands = [ev.operand(node, n) for n in node.input[1:3]]
    return ev.gather(node, operands, lambda a, b: np.asarray(np.where(condition, a, b)))[0]


_WEIGHING: dict[str, Callable[[NodeProto, _PathEvaluator, _Tensor], _Tensor]] = {
    "Resize": _resize, "Upsample": _resize, "AveragePool": _average_pool,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "GlobalAveragePool": _reduce, "CumSum": _cumsum,
    "BatchNormalization": _batch_norm, "QuantizeLinear": _quantize,
    "DequantizeLinear": _quantize,
}
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Neg", "Sum", "Mean", "Where", "Cast"}


def _apply(node: NodeProto, ev: _PathEvaluator) -> list[_Tensor]:
    """The node's outputs as path tensors."""
    op = node.op_type
    first_name = next(n for n in node.input if n in ev.values)
    first = ev.values[first_name]
    if op in _ELEMENTWISE:
        return [_elementwise(node, ev)]
    if op in ("Gather", "GatherElements"):
        if node.input[0] not in ev.values:
            raise _fail(node, "the input is used as the indices of {op} (node '{label}'), "
                              "which is not linear")
        return ev.gather(node, [first], _gather_fn(node, ev, first))
    if op in _WEIGHING:
        if first_name != node.input[0]:
            raise _fail(node, "{op} (node '{label}') takes the input as a parameter, which is "
                              "not linear")
        return [_WEIGHING[op](node, ev, first)]
    copy = _copy_op(node, ev, first)
    if copy is None:
        if op in LINEAR_NOT_HANDLED:
            raise _not_handled(node)
        raise _fail(node, "the input passes through {op} (node '{label}') before the first "
                          "linear op")
    data_inputs = list(node.input) if op == "Concat" else [node.input[0]]
    if op != "Concat" and any(n in ev.values for n in node.input[1:]):
        raise _fail(node, "{op} (node '{label}') takes the input as a parameter, which is not "
                          "linear")
    operands = [ev.operand(node, n) for n in data_inputs if n]
    return ev.gather(node, operands, copy)


def _couples(rows: scipy.sparse.csr_matrix) -> bool:
    """Whether some row mixes two input elements or some input element reaches two rows."""
    if rows.nnz == 0:
        return False
    return int(np.diff(rows.indptr).max()) > 1 or int(
        np.bincount(rows.indices, minlength=rows.shape[1]).max()) > 1


def path_nodes(input_name: str, data_input: str, nodes: list[NodeProto],
               stop: int) -> list[NodeProto]:
    """The nodes (before node index ``stop``, W1) that carry the input to ``data_input``:
    reachable from the input and feeding W1's data operand, in graph order."""
    reached = {input_name}
    forward: list[int] = []
    for index, node in enumerate(nodes[:stop]):
        if node.op_type in ("Shape", "Size"):
            continue
        if any(n in reached for n in node.input):
            forward.append(index)
            reached.update(o for o in node.output if o)
    needed = {data_input}
    chosen: list[int] = []
    for index in reversed(forward):
        if any(o in needed for o in nodes[index].output):
            chosen.append(index)
            needed.update(n for n in nodes[index].input if n in reached)
    return [nodes[i] for i in sorted(chosen)]


def _check_inferred(node: NodeProto, name: str, info: TensorInfo | None,
                    shape: tuple[int, ...]) -> None:
    """Refuse a path tensor whose per-sample shape is not the one ONNX shape inference gives
    it (where that is known): the layers after it are sized by shape inference. ONNX shape
    inference sizes a Resize by 2.6 of 5 elements as 12, ONNX Runtime writes 13.

    Raises:
        UnsupportedModelError: the shapes differ, naming the node.
    """
    known = info.shape if info else None
    if known is None or len(known) != len(shape) or \
            not all(isinstance(d, int) for d in known[1:]) or tuple(known[1:]) == shape[1:]:
        return
    raise UnsupportedModelError(
        f"ONNX shape inference gives '{name}' the per-sample shape {list(known[1:])} where the "
        f"op makes {list(shape[1:])} in ONNX Runtime, so the layers after it cannot be followed",
        _where(node))


def build_path_operator(input_name: str, input_shape: tuple[int, ...], data_input: str,
                        nodes: list[NodeProto], resolver: ConstantResolver,
                        infos: dict[str, TensorInfo], opset: int) -> PathOperator:
    """The path from ``input_name`` to ``data_input`` as a sparse operator on one sample.

    Args:
        input_name: the graph input.
        input_shape: its shape (the batch axis first; its size is ignored).
        data_input: W1's data operand.
        nodes: the path's nodes in graph order (``path_nodes``).
        infos: shape inference (the shapes of Reshape-like outputs).

    Raises:
        UnsupportedModelError: an op on the path is not linear in the input (names the node),
            is linear but not handled yet, or the path is too large.
    """
    per_sample = tuple(int(d) for d in input_shape[1:])
    n_in = math.prod(per_sample)
    if n_in > MAX_PATH_ELEMENTS:
        raise UnsupportedModelError(f"the input has {n_in} elements per sample, more than the "
                                    f"{MAX_PATH_ELEMENTS} the path operator takes")
    ev = _PathEvaluator(resolver, infos, opset)
    ev.values[input_name] = _Tensor(scipy.sparse.identity(n_in, format="csr"),
                                    (1, *per_sample))
    coupling: str | None = None
    for node in nodes:
        try:
            outputs = _apply(node, ev)
        except (ValueError, IndexError) as exc:
            raise UnsupportedModelError(f"cannot follow the path through it: {exc}",
                                        _where(node)) from exc
        for name, value in zip(node.output, outputs, strict=False):
            if value.rows.shape[0] > MAX_PATH_ELEMENTS:
                raise _too_large(node)
            _check_inferred(node, name, infos.get(name), value.shape)
            ev.values[name] = value
        if coupling is None and any(_couples(v.rows) for v in outputs):
            coupling = f"{node.op_type} (node '{node_label(node, 'main')}')"
    data = ev.values.get(data_input)
    if data is None:
        raise UnsupportedModelError(f"the path does not reach W1's input '{data_input}'")
    return PathOperator(data.rows, per_sample, tuple(data.shape[1:]), tuple(nodes), coupling)
