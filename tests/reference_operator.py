"""An independent reference for W1's operator over the input path, computed in ONNX Runtime.

``w1_jacobian`` returns J (n_out x n_in, float64): the Jacobian of W1's output (the output
tensor of the first Conv/Gemm/MatMul, named by the caller) with respect to the model's
input. It uses nothing of onnxcollide: ONNX Runtime runs the model's own nodes on unit
vectors (the batch dimension must be dynamic), so it checks whatever onnxcollide derives
from the graph (Slice/Concat/Pad/Resize/AveragePool maps, the conv operator) independently.

ONNX Runtime's CPU provider has no float64 Conv, Resize or AveragePool, so a float64 copy
of the graph cannot run. Instead J is assembled from two float32 runs that are exact:

* A (n_x x n_in): the path from the input to W1's input X, A[:, i] = path(e_i) - path(0).
  Copies (Slice, Concat, Pad in any mode, Transpose, Reshape) move the 1 unchanged, and
  AveragePool / bilinear Resize at scale 2 multiply it by dyadic weights (1/4, 3/4, ...):
  every entry is exact in float32. Otherwise (say 1/3 from a 3x3 average, or an affine
  ``(x - mean) / std``) each entry is rounded once, relative error <= 2^-24 (plus
  2^-24 * |path(0)| for an affine path).
* K (n_out x n_x): W1 alone, without its bias, on unit vectors of X: each output is one
  product ``w * 1`` plus exact zeros, so K holds W1's float32 weights exactly.

J = K @ A is then formed in float64 (relative rounding about n_x * 2^-53). ``method="direct"``
instead runs the model up to W1's output on e_i and 0 (J[:, i] = f(e_i) - f(0) of float32
results), whose rounding is of order 2^-24 * (|bias| + sum |w| |a|) per entry; the tests
use it to cross-check the exact method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import scipy.linalg
import scipy.sparse
from onnx import TensorProto, helper

BATCH = 512  # unit vectors per ONNX Runtime call


@dataclass(frozen=True)
class NullCount:
    """Dimension of J's numerical null space and its number of zero columns (blind inputs)."""

    nullity: int  # n_in - #{sigma > rtol * sigma_max}
    blind: int  # columns of J that are exactly zero (inputs W1 never sees)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A one-thread CPU session that runs the nodes as written (no graph fusions)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


def _producer(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto:
    """The node whose outputs include ``tensor`` (ValueError if none)."""
    for node in graph.node:
        if tensor in node.output:
            return node
    raise ValueError(f"no node of the graph outputs {tensor!r}")


def _with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``outputs`` (float32, any shape)."""
    out = copy.deepcopy(model)
    del out.graph.output[:]
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                            for n in outputs)
    return out


def _data_input(model: onnx.ModelProto) -> str:
    """Name of the model's single non-initializer input."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"expected one model input, found {names}")
    return names[0]


def unit_jacobian(
    run: Callable[[np.ndarray], np.ndarray], shape: Sequence[int], batch: int = BATCH
) -> np.ndarray:
    """Columns ``run(e_i) - run(0)`` for the unit vectors of a per-sample ``shape``.

    ``run`` maps float32 [B, *shape] to float32 [B, ...]; returns float64 (n_out, n_in).
    """
    n_in = int(np.prod(shape))
    base = run(np.zeros((1, *shape), np.float32)).reshape(-1).astype(np.float64)
    jac = np.empty((base.size, n_in))
    for start in range(0, n_in, batch):
        stop = min(start + batch, n_in)
        eye = np.zeros((stop - start, n_in), np.float32)
        eye[np.arange(stop - start), np.arange(start, stop)] = 1.0
        got = run(eye.reshape(-1, *shape)).reshape(stop - start, -1)
        jac[:, start:stop] = (got.astype(np.float64) - base).T
    return jac


def _runner(model: onnx.ModelProto, feed: str, output: str) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> model(x)[output]`` through an ONNX Runtime session."""
    session = _session(_with_outputs(model, [output]))
    return lambda x: np.asarray(session.run([output], {feed: x})[0])


def _w1_alone(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """A one-node model: W1 (Conv, Gemm or MatMul) on its input X, bias dropped."""
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        raise ValueError(f"W1 must be a Conv, Gemm or MatMul, not {node.op_type}")
    inits = {i.name: i for i in model.graph.initializer}
    if node.input[1] not in inits:
        raise ValueError(f"W1's weight {node.input[1]!r} is not an initializer")
    alone = helper.make_node(node.op_type, ["X", "W"], ["Y"])
    alone.attribute.extend(node.attribute)
    weight = copy.deepcopy(inits[node.input[1]])
    weight.name = "W"
    graph = helper.make_graph(
        [alone], "w1", [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [weight])
    opsets = [o for o in model.opset_import if o.domain in ("", "ai.onnx")]
    out = helper.make_model(graph, opset_imports=opsets)
    out.ir_version = model.ir_version
    return out


def w1_jacobian(
    model_path: str | Path,
    w1_output: str,
    input_shape: Sequence[int],
    method: str = "exact",
    batch: int = BATCH,
) -> np.ndarray:
    """J = d(W1's output) / d(input), float64 of shape (n_out, n_in).

    ``input_shape`` is one sample's shape (no batch axis); rows follow W1's output in C
    order ([C, H, W] for a Conv), columns the input's. ``method``: ``"exact"`` (K @ A, see
    the module docstring) or ``"direct"`` (f(e_i) - f(0) of the whole path, float32).
    """
    model = onnx.load(str(model_path))
    feed = _data_input(model)
    if method == "direct":
        return unit_jacobian(_runner(model, feed, w1_output), input_shape, batch)
    if method != "exact":
        raise ValueError(f"unknown method {method!r}")
    node = _producer(model.graph, w1_output)
    x_name = node.input[0]
    if x_name == feed:
        path = np.eye(int(np.prod(input_shape)))
    else:
        path = unit_jacobian(_runner(model, feed, x_name), input_shape, batch)
    x_shape = _runner(model, feed, x_name)(np.zeros((1, *input_shape), np.float32)).shape[1:]
    alone = _w1_alone(model, node)
    session = _session(alone)
    kernel = unit_jacobian(lambda x: np.asarray(session.run(["Y"], {"X": x})[0]), x_shape, batch)
    return kernel @ path


def relative_singular_values(jac: np.ndarray) -> np.ndarray:
    """sigma / sigma_max of J (n_out, n_in), ascending, length n_in.

    When n_out < n_in the n_in - n_out singular values J cannot have are counted as zeros,
    so the length is always the input dimension.
    """
    sigma = np.linalg.svd(jac, compute_uv=False)
    top = sigma[0] if sigma.size and sigma[0] > 0 else 1.0
    missing = np.zeros(jac.shape[1] - sigma.size)
    return np.sort(np.concatenate([missing, sigma / top]))


def gram_relative_singular_values(jac: np.ndarray) -> np.ndarray:
    """sigma / sigma_max of J (n_out, n_in), ascending, from the eigenvalues of J^T J (SciPy's
    sparse product and dense ``eigvalsh``): seconds where a dense SVD of a 16384 x 3072 J
    takes a minute. A Gram eigenvalue is good to about n_in * 2^-52 * sigma_max^2, so a
    relative value below about sqrt(n_in * 2^-52) (6e-7 for 3072 inputs) reads as that floor;
    callers check that their threshold sits in a wide gap of the spectrum.
    """
    sparse = scipy.sparse.csr_matrix(jac)
    values = scipy.linalg.eigvalsh((sparse.T @ sparse).toarray())
    top = values[-1] if values.size and values[-1] > 0 else 1.0
    return np.sqrt(np.clip(values, 0.0, None) / top)


def exact_count(jac: np.ndarray, rtol: float) -> NullCount:
    """Null-space dimension at ``sigma <= rtol * sigma_max`` and the zero columns of J."""
    rel = relative_singular_values(jac)
    blind = int(np.count_nonzero(~jac.any(axis=0)))
    return NullCount(nullity=int(np.count_nonzero(rel <= rtol)), blind=blind)


def conv_rtol(weight_shape: Sequence[int]) -> float:
    """max(q, p) * 2^-23 for a Conv weight [p, C_in, kh, kw] (q = C_in * kh * kw)."""
    p, q = int(weight_shape[0]), int(np.prod(weight_shape[1:]))
    return max(p, q) * 2.0**-23


# ------------------------------------------------------------------ command line


def first_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    """The first Conv node in graph order (ValueError if there is none)."""
    for node in model.graph.node:
        if node.op_type == "Conv":
            return node
    raise ValueError("the model has no Conv")


def op_chain(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    """The nodes ``tensor`` depends on, in graph order (the path from the input to it)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    needed: set[str] = set()
    stack = [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.output[0] not in needed:
            needed.add(node.output[0])
            stack.extend(node.input)
    return [node for node in model.graph.node if node.output[0] in needed]


def describe(node: onnx.NodeProto, model: onnx.ModelProto) -> str:
    """``Op(attr=..., const=[...])``: a node's attributes and small constant inputs."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    parts = [f"{a.name}={helper.get_attribute_value(a)!r}" for a in node.attribute
             if a.name not in ("auto_pad", "group", "dilations") or node.op_type != "Conv"]
    parts += [f"{name}={inits[name].tolist()}" for name in node.input
              if name in inits and inits[name].size <= 8]
    return f"{node.op_type}({', '.join(parts)})"


def report(path: str) -> None:
    """Print the op chain, J's shape, its 5 smallest relative singular values and counts."""
    model = onnx.load(path)
    feed = next(i for i in model.graph.input if i.name == _data_input(model))
    shape = [d.dim_value for d in feed.type.tensor_type.shape.dim][1:]
    conv = first_conv(model)
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    rtol = conv_rtol(weight.dims)
    chain = " -> ".join(describe(n, model) for n in op_chain(model, conv.output[0]))
    jac = w1_jacobian(path, conv.output[0], shape)
    rel = relative_singular_values(jac)
    count = exact_count(jac, rtol)
    print(f"{Path(path).name}: input {shape}, W1 = {conv.output[0]!r}, weight {list(weight.dims)}")
    print(f"  chain: {chain}")
    print(f"  J: {jac.shape[0]} x {jac.shape[1]}; 5 smallest sigma/sigma_max: "
          + ", ".join(f"{v:.3e}" for v in rel[:5]))
    above = rel[rel > rtol]
    print(f"  rtol = {rtol:.3e}: nullity {count.nullity}, blind {count.blind}; "
          f"smallest kept {above[0] if above.size else float('nan'):.3e}")


if __name__ == "__main__":
    import sys

    for arg in sys.argv[1:]:
        report(arg)
