"""graph.path_map: perturbations and positions pulled back from W1's input to the model input.

Each pull-back is checked against the forward graph run in onnx.reference (float64): for a
perturbation ``d`` of the path's output, ``f(x + pull_delta(d)) - f(x) == d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import DOUBLE, FLOAT, init, ints, make_model, value
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.load import load_model
from onnxcollide.graph.path_map import pull_delta, pull_positions
from onnxcollide.graph.shapes import infer_shapes

mk = helper.make_node


@dataclass
class Path_:
    """A path model: its nodes (input 'x' to the last node's output), shapes and constants."""

    file: str
    nodes: list[onnx.NodeProto]
    shapes: dict[str, tuple[int, ...]]
    resolver: ConstantResolver
    opset: int

    @property
    def out(self) -> str:
        return self.nodes[-1].output[0]

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(ReferenceEvaluator(self.file).run([self.out], {"x": x})[0])

    def pull(self, delta: np.ndarray) -> np.ndarray:
        return pull_delta(self.nodes, "x", delta, self.shapes, self.resolver, self.opset)

    def positions(self) -> np.ndarray:
        return pull_positions(self.nodes, "x", self.shapes[self.out], self.shapes,
                              self.resolver, self.opset)


def path_model(tmp_path: Path, nodes: list, in_shape: list[int], inits: list = (),
               elem: int = DOUBLE, name: str = "path.onnx", opset: int = 17) -> Path_:
    """Save a model x -> nodes, then load it the way the search does."""
    file = make_model(tmp_path / name, nodes, [value("x", in_shape, elem)],
                      [value(nodes[-1].output[0], None, elem)], list(inits), opset=opset,
                      check=False)
    loaded = load_model(file)
    infos = infer_shapes(loaded, {})
    shapes = {n: tuple(int(d) for d in i.shape) for n, i in infos.items()  # type: ignore[misc]
              if i.shape is not None and all(d is not None for d in i.shape)}
    resolver = ConstantResolver(Scope.of_graph(loaded.proto.graph, "main", None),
                                loaded.base_dir, list(loaded.proto.opset_import))
    return Path_(file, list(loaded.proto.graph.node), shapes, resolver, loaded.opset)


def check_round_trip(p: Path_, seed: int = 0) -> np.ndarray:
    """f(x + pull(d)) - f(x) == d for a random d of the path output's shape; returns pull(d)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(p.shapes["x"])
    d = rng.standard_normal(p.shapes[p.out])
    d_in = p.pull(d)
    assert d_in.shape == p.shapes["x"] and d_in.dtype == np.float64
    np.testing.assert_allclose(p.forward(x + d_in) - p.forward(x), d, atol=1e-12)
    return d_in


def f64(values, shape=None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(shape) if shape is not None else array


# ------------------------------------------------------------------ pull_delta


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 3, 1, 2], None])
def test_transpose_is_inverted(tmp_path, perm):
    """Transpose (NCHW<->NHWC, and the default reversed perm) maps back by the inverse perm."""
    attrs = {} if perm is None else {"perm": perm}
    p = path_model(tmp_path, [mk("Transpose", ["x"], ["t"], **attrs)], [1, 2, 3, 4])
    check_round_trip(p)


def test_reshape_flatten_squeeze_unsqueeze(tmp_path):
    """Reshape -> Unsqueeze -> Squeeze -> Flatten: a pure relabelling, inverted by reshapes."""
    nodes = [mk("Reshape", ["x", "shape"], ["r"]), mk("Unsqueeze", ["r", "ax"], ["u"]),
             mk("Squeeze", ["u", "ax"], ["s"]), mk("Flatten", ["s"], ["f"], axis=1)]
    p = path_model(tmp_path, nodes, [2, 3, 4, 5], [ints("shape", [2, 12, 5]), ints("ax", [1])])
    check_round_trip(p)


def test_identity_and_cast_leave_the_perturbation(tmp_path):
    """Identity and a float->float Cast change nothing."""
    nodes = [mk("Identity", ["x"], ["i"]), mk("Cast", ["i"], ["c"], to=DOUBLE)]
    p = path_model(tmp_path, nodes, [1, 3, 4])
    d = np.random.default_rng(1).standard_normal((1, 3, 4))
    assert np.array_equal(p.pull(d), d)
    check_round_trip(p)


@pytest.mark.parametrize("op, swap", [("Sub", False), ("Sub", True), ("Add", False),
                                      ("Add", True), ("Mul", False), ("Mul", True),
                                      ("Div", False)])
def test_elementwise_with_a_per_channel_constant(tmp_path, op, swap):
    """x op c and c op x with c of shape [1, 3, 1, 1]: c - x flips the sign, Mul/Div scale."""
    inputs = ["c", "x"] if swap else ["x", "c"]
    p = path_model(tmp_path, [mk(op, inputs, ["y"])], [1, 3, 2, 2],
                   [init("c", f64([0.5, -2.0, 4.0], (1, 3, 1, 1)))])
    check_round_trip(p)
    d = np.random.default_rng(6).standard_normal((1, 3, 2, 2))
    if op == "Sub" and swap:
        np.testing.assert_array_equal(p.pull(d), -d)
    elif op in ("Sub", "Add"):
        np.testing.assert_array_equal(p.pull(d), d)


def test_normalisation_chain(tmp_path):
    """Transpose (NHWC in) -> Sub(mean) -> Div(std): d_in = (d * std) laid out channels-last."""
    std = f64([0.229, 0.224, 0.225], (1, 3, 1, 1))
    nodes = [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), mk("Sub", ["t", "m"], ["s"]),
             mk("Div", ["s", "std"], ["n"])]
    p = path_model(tmp_path, nodes, [1, 4, 4, 3],
                   [init("m", f64([0.485, 0.456, 0.406], (1, 3, 1, 1))), init("std", std)])
    d = np.random.default_rng(2).standard_normal((1, 3, 4, 4))
    np.testing.assert_allclose(p.pull(d), (d * std).transpose(0, 2, 3, 1))
    check_round_trip(p)


def test_batch_normalization_scales_by_sqrt_var_over_scale(tmp_path):
    """Inference BatchNormalization: d_in = d * sqrt(var + eps) / scale per channel."""
    scale, var = f64([0.5, 2.0, -1.5]), f64([0.04, 1.0, 2.5])
    inits = [init("g", scale), init("b", f64([0.1, 0.0, -0.3])), init("m", f64([0.4, 0.5, 0.6])),
             init("v", var)]
    p = path_model(tmp_path, [mk("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"],
                                 epsilon=1e-3)], [1, 3, 2, 2], inits)
    d = np.random.default_rng(3).standard_normal((1, 3, 2, 2))
    np.testing.assert_allclose(p.pull(d), d * (np.sqrt(var + 1e-3) / scale).reshape(1, 3, 1, 1))
    check_round_trip(p)


def test_constant_pad_interior_perturbation_is_cropped(tmp_path):
    """Pad 1 on each spatial side: a perturbation inside the original area maps back."""
    p = path_model(tmp_path, [mk("Pad", ["x", "pads"], ["y"])], [1, 2, 3, 3],
                   [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])
    rng = np.random.default_rng(4)
    d = np.zeros((1, 2, 5, 5))
    d[:, :, 1:4, 1:4] = rng.standard_normal((1, 2, 3, 3))
    d_in = p.pull(d)
    assert np.array_equal(d_in, d[:, :, 1:4, 1:4])
    x = rng.standard_normal((1, 2, 3, 3))
    np.testing.assert_allclose(p.forward(x + d_in) - p.forward(x), d, atol=1e-12)


def test_constant_pad_refuses_a_perturbation_of_the_padding(tmp_path):
    """A perturbation of an element Pad adds has no preimage: UnsupportedModelError."""
    p = path_model(tmp_path, [mk("Pad", ["x", "pads"], ["y"])], [1, 2, 3, 3],
                   [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])
    d = np.zeros((1, 2, 5, 5))
    d[0, 0, 0, 2] = 1.0
    with pytest.raises(UnsupportedModelError, match="Pad adds"):
        p.pull(d)


def test_reflect_pad_is_refused(tmp_path):
    """A reflect Pad makes copies: mapping back is refused, naming the mode."""
    p = path_model(tmp_path, [mk("Pad", ["x", "pads"], ["y"], mode="reflect")], [1, 2, 3, 3],
                   [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])
    with pytest.raises(UnsupportedModelError, match="reflect"):
        p.pull(np.zeros((1, 2, 5, 5)))


def test_slice_with_steps_and_negative_axis(tmp_path):
    """Slice rows 1:7:2 and cols ::3 (axis -1): sliced-away elements get a zero perturbation."""
    nodes = [mk("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
    inits = [ints("st", [1, 0]), ints("en", [7, 9]), ints("ax", [2, -1]), ints("sp", [2, 3])]
    p = path_model(tmp_path, nodes, [1, 2, 8, 9], inits)
    d_in = check_round_trip(p)
    kept = np.zeros((1, 2, 8, 9), bool)
    kept[:, :, 1:7:2, ::3] = True
    assert not np.any(d_in[~kept])
    assert np.all(d_in[kept] != 0)


def test_slice_with_attributes_before_opset_10(tmp_path):
    """Slice-1 (opset 9) reads starts / ends / axes from attributes, not inputs."""
    nodes = [mk("Slice", ["x"], ["y"], starts=[1, 2], ends=[3, 6], axes=[2, 3])]
    p = path_model(tmp_path, nodes, [1, 2, 4, 7], opset=9)
    d_in = check_round_trip(p)
    kept = np.zeros((1, 2, 4, 7), bool)
    kept[:, :, 1:3, 2:6] = True
    assert not np.any(d_in[~kept])
    assert np.all(d_in[kept] != 0)


def test_quantize_dequantize_pair_passes_the_perturbation(tmp_path):
    """QuantizeLinear then DequantizeLinear (per-channel scale): the scales cancel."""
    nodes = [mk("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             mk("DequantizeLinear", ["q", "s", "z"], ["dq"], axis=1)]
    inits = [init("s", np.array([0.5, 0.25, 2.0], np.float32)),
             init("z", np.zeros(3, np.int8))]
    p = path_model(tmp_path, nodes, [1, 3, 2, 2], inits, elem=FLOAT)
    d = np.random.default_rng(5).standard_normal((1, 3, 2, 2))
    np.testing.assert_allclose(p.pull(d), d)


def test_broadcast_on_the_path_is_refused(tmp_path):
    """x [1,3,1,1] + c [1,3,4,4] broadcasts: a per-copy perturbation has no preimage."""
    p = path_model(tmp_path, [mk("Add", ["x", "c"], ["y"])], [1, 3, 1, 1],
                   [init("c", np.zeros((1, 3, 4, 4)))])
    with pytest.raises(UnsupportedModelError, match="broadcasts"):
        p.pull(np.ones((1, 3, 4, 4)))


def test_non_linear_op_is_refused(tmp_path):
    """Relu is not invertible on the perturbation: the error names the op."""
    p = path_model(tmp_path, [mk("Relu", ["x"], ["y"])], [1, 4])
    with pytest.raises(UnsupportedModelError, match="Relu"):
        p.pull(np.ones((1, 4)))


def test_unknown_shape_asks_for_input_shape(tmp_path):
    """A tensor on the path without a known shape: the hint is --input-shape."""
    p = path_model(tmp_path, [mk("Transpose", ["x"], ["t"], perm=[1, 0])], [2, 3])
    del p.shapes["x"]
    with pytest.raises(UnsupportedModelError, match="input-shape"):
        p.pull(np.ones((3, 2)))


def test_empty_path_returns_the_perturbation():
    """W1 reads the input directly: nothing to invert."""
    d = np.arange(6.0).reshape(1, 6)
    resolver = ConstantResolver(Scope({}, {}, {"x"}, "main"), ".", [])
    assert np.array_equal(pull_delta([], "x", d, {"x": (1, 6)}, resolver, 17), d)


# ------------------------------------------------------------------ pull_positions


def check_positions(p: Path_) -> np.ndarray:
    """Run the path on x = 1..n: data.flat[positions[i]] == i + 1; -1 elements never arrive."""
    shape = p.shapes["x"]
    x = np.arange(1, int(np.prod(shape)) + 1, dtype=np.float64).reshape(shape)
    data = p.forward(x).reshape(-1)
    positions = p.positions()
    assert positions.shape == shape and positions.dtype == np.int64
    reached = positions >= 0
    assert np.array_equal(data[positions[reached]], x[reached])
    assert not np.isin(x[~reached], data).any()
    return positions


def test_positions_through_transpose_reshape(tmp_path):
    """NHWC -> Transpose -> Reshape: every input element reaches exactly one data position."""
    nodes = [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             mk("Reshape", ["t", "shape"], ["r"])]
    p = path_model(tmp_path, nodes, [1, 4, 4, 3], [ints("shape", [1, 48])])
    positions = check_positions(p)
    assert sorted(positions.reshape(-1).tolist()) == list(range(48))


def test_positions_through_pad_skip_the_padding(tmp_path):
    """Pad: input elements land inside the padded tensor, padding positions are never hit."""
    nodes = [mk("Sub", ["x", "m"], ["s"]), mk("Pad", ["s", "pads"], ["y"])]
    p = path_model(tmp_path, nodes, [1, 2, 3, 3],
                   [init("m", np.zeros((1, 2, 1, 1))), ints("pads", [0, 0, 1, 2, 0, 0, 2, 1])])
    # Sub by zero keeps the values 1..n for the check
    positions = check_positions(p)
    assert (positions >= 0).all()
    padded = np.zeros((1, 2, 6, 6), bool)
    padded.reshape(-1)[positions.reshape(-1)] = True
    assert padded.sum() == 18 and not padded[:, :, 0, :].any()


def test_positions_through_slice_mark_dropped_elements(tmp_path):
    """Slice every other row: the dropped rows are -1."""
    nodes = [mk("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
    inits = [ints("st", [0]), ints("en", [6]), ints("ax", [2]), ints("sp", [2])]
    p = path_model(tmp_path, nodes, [1, 1, 6, 4], inits)
    positions = check_positions(p)
    assert (positions[:, :, 1::2, :] == -1).all()
    assert (positions[:, :, 0::2, :] >= 0).all()
