"""graph.linear_path: the path to W1 as one sparse operator, checked against ONNX Runtime.

For each op (and each mode of it) a one-path model ``x -> ... -> y`` runs in ONNX Runtime on a
random ``x`` and on zeros: ``y(x) - y(0)`` must equal ``M @ x`` for the operator ``M`` the
module builds, element for element (float32 rounding). Ops that are not linear keep their
one-line answer naming the node; linear ops not handled yet say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import FLOAT, init, ints, make_model, value
from onnx import helper

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.linear_path import PathOperator, build_path_operator, path_nodes
from onnxcollide.graph.load import load_model
from onnxcollide.graph.shapes import infer_shapes

mk = helper.make_node


def operator_of(tmp_path: Path, nodes: list, shape: list[int], inits: list = (),
                opset: int = 18) -> tuple[PathOperator, str]:
    """Save ``x -> nodes -> y`` and build its path operator from x to y."""
    file = make_model(tmp_path / "path.onnx", nodes, [value("x", shape)],
                      [value("y", None)], list(inits), opset=opset, check=False)
    loaded = load_model(file)
    infos = infer_shapes(loaded, {})
    resolver = ConstantResolver(Scope.of_graph(loaded.proto.graph, "main", None),
                                loaded.base_dir, list(loaded.proto.opset_import))
    graph_nodes = list(loaded.proto.graph.node)
    chosen = path_nodes("x", "y", graph_nodes, len(graph_nodes))
    return build_path_operator("x", tuple(shape), "y", chosen, resolver, infos,
                               loaded.opset), file


def assert_matches_runtime(tmp_path: Path, nodes: list, shape: list[int], inits: list = (),
                           opset: int = 18) -> PathOperator:
    """``M @ x == y(x) - y(0)`` in ONNX Runtime, for a random x of ``shape`` (batch 1)."""
    operator, file = operator_of(tmp_path, nodes, shape, inits, opset)
    session = ort.InferenceSession(file, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    y = session.run(["y"], {"x": x})[0].astype(np.float64)
    y0 = session.run(["y"], {"x": np.zeros_like(x)})[0].astype(np.float64)
    assert operator.data_shape == y.shape[1:]
    mapped = operator.matrix @ x.astype(np.float64).reshape(-1)
    np.testing.assert_allclose(mapped, (y - y0).reshape(-1), atol=2e-6, rtol=1e-5)
    return operator


# ------------------------------------------------------------------ ops that copy


def test_a_focus_block_is_a_permutation(tmp_path):
    """YOLOX Focus: four strided Slices concatenated on channels, a bijective selection."""
    starts = [(0, 0), (1, 0), (0, 1), (1, 1)]
    nodes, inits = [], [ints("axes", [2, 3]), ints("steps", [2, 2]), ints("ends", [99, 99])]
    for i, (h, w) in enumerate(starts):
        inits.append(ints(f"s{i}", [h, w]))
        nodes.append(mk("Slice", ["x", f"s{i}", "ends", "axes", "steps"], [f"p{i}"]))
    nodes.append(mk("Concat", [f"p{i}" for i in range(4)], ["y"], axis=1))
    operator = assert_matches_runtime(tmp_path, nodes, [1, 3, 8, 8], inits)
    assert operator.selection and operator.data_shape == (12, 4, 4)
    assert np.array_equal(np.sort(operator.positions()), np.arange(3 * 64))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_in_every_mode(tmp_path, mode):
    """Pad copies border elements (reflect, edge, wrap) or writes constants (constant)."""
    nodes = [mk("Pad", ["x", "pads", "value"], ["y"], mode=mode)]
    inits = [ints("pads", [0, 0, 2, 1, 0, 0, 1, 2]), init("value", np.float32(0.5))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 5, 6], inits)
    assert operator.selection == (mode == "constant")
    assert int(operator.constant_rows().sum()) == (2 * 8 * 9 - 2 * 30 if mode == "constant"
                                                   else 0)


def test_a_negative_pad_crops(tmp_path):
    """Negative pads remove elements: they become blind columns of the operator."""
    nodes = [mk("Pad", ["x", "pads"], ["y"])]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 1, 5, 5],
                                      [ints("pads", [0, 0, -1, 1, 0, 0, 0, -2])])
    assert operator.kernel_bound() == 5 + 2 * 5 - 2


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back(tmp_path, mode):
    """SpaceToDepth then DepthToSpace: permutations."""
    nodes = [mk("SpaceToDepth", ["x"], ["s"], blocksize=2),
             mk("DepthToSpace", ["s"], ["y"], blocksize=2, mode=mode)]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 4, 6])
    assert operator.selection


def test_split_reordered_by_concat(tmp_path):
    """Split into three and Concat in another order."""
    nodes = [mk("Split", ["x", "sizes"], ["a", "b", "c"], axis=2),
             mk("Concat", ["c", "a", "b"], ["y"], axis=2)]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 6, 3], [ints("sizes", [1, 2, 3])])


def test_tile_expand_and_gather_duplicate_elements(tmp_path):
    """Tile, Expand and Gather with repeated constant indices copy elements: coupling."""
    nodes = [mk("Tile", ["x", "reps"], ["t"]), mk("Expand", ["t", "shape"], ["e"]),
             mk("Gather", ["e", "idx"], ["g"], axis=3),
             mk("GatherElements", ["g", "gidx"], ["y"], axis=2)]
    gidx = np.random.default_rng(1).integers(-4, 4, (1, 2, 4, 3))
    inits = [ints("reps", [1, 1, 2, 1]), ints("shape", [1, 2, 1, 1]),
             ints("idx", [2, -1, 2]), init("gidx", gidx.astype(np.int64))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 1, 2, 3], inits)
    assert not operator.selection


def test_concat_with_a_constant_and_where(tmp_path):
    """Concat of the input with a constant block; Where with a constant condition."""
    cond = np.random.default_rng(2).random((1, 3, 4)) > 0.5
    nodes = [mk("Concat", ["x", "block"], ["c"], axis=1),
             mk("Where", ["cond", "c", "c2"], ["y"]), mk("Neg", ["x"], ["n"]),
             mk("Concat", ["n", "block"], ["c2"], axis=1)]
    nodes = [nodes[0], nodes[2], nodes[3], nodes[1]]
    inits = [init("block", np.ones((1, 1, 4), np.float32)), init("cond", cond)]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 4], inits)


# ------------------------------------------------------------------ ops that weigh


@pytest.mark.parametrize(("mode", "coordinates", "scale"), [
    ("nearest", "asymmetric", 2.0), ("nearest", "half_pixel", 3.0),
    ("linear", "half_pixel", 2.0), ("linear", "align_corners", 2.0),
    ("linear", "pytorch_half_pixel", 2.0), ("linear", "asymmetric", 1.5),
    ("linear", "half_pixel", 0.5), ("nearest", "half_pixel", 0.5),
])
def test_resize(tmp_path, mode, coordinates, scale):
    """Resize by scales, up and down, nearest and (bi)linear, several coordinate modes."""
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode=mode,
                coordinate_transformation_mode=coordinates)]
    inits = [init("scales", np.array([1, 1, scale, scale], np.float32))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 6, 4], inits)
    assert operator.selection == (mode == "nearest" and scale < 1)


def test_resize_by_sizes(tmp_path):
    """Resize to given sizes (linear, align_corners)."""
    nodes = [mk("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                coordinate_transformation_mode="align_corners")]
    assert_matches_runtime(tmp_path, nodes, [1, 1, 5, 7], [ints("sizes", [1, 1, 9, 4])])


def test_upsample_of_opset_9(tmp_path):
    """The old Upsample op (nearest)."""
    nodes = [mk("Upsample", ["x", "scales"], ["y"], mode="nearest")]
    inits = [init("scales", np.array([1, 1, 2, 2], np.float32))]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 3], inits, opset=9)


@pytest.mark.parametrize(("kernel", "stride", "pads", "include", "ceil"), [
    (2, 2, 0, 0, 0), (3, 1, 1, 0, 0), (3, 1, 1, 1, 0), (3, 2, 1, 0, 1), (2, 2, 0, 0, 1),
])
def test_average_pool(tmp_path, kernel, stride, pads, include, ceil):
    """AveragePool with padding counted or not, ceil mode."""
    nodes = [mk("AveragePool", ["x"], ["y"], kernel_shape=[kernel, kernel],
                strides=[stride, stride], pads=[pads] * 4, count_include_pad=include,
                ceil_mode=ceil)]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 7, 6])
    assert not operator.selection or kernel == 1


def test_reductions_and_global_pool(tmp_path):
    """ReduceMean (axes input, opset 18), ReduceSum without keepdims, GlobalAveragePool."""
    nodes = [mk("ReduceMean", ["x", "ax"], ["m"], keepdims=1),
             mk("ReduceSum", ["x", "ax3"], ["s"], keepdims=0),
             mk("GlobalAveragePool", ["x"], ["g"]),
             mk("Flatten", ["m"], ["mf"]), mk("Flatten", ["g"], ["gf"]),
             mk("Flatten", ["s"], ["sf"]), mk("Concat", ["mf", "sf", "gf"], ["y"], axis=1)]
    inits = [ints("ax", [2]), ints("ax3", [3])]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 4], inits)


def test_affine_ops_and_two_functions_of_the_input_added(tmp_path):
    """Sub/Mul/Div by constants, BatchNormalization, and Add of two path tensors."""
    rng = np.random.default_rng(3)
    nodes = [mk("Sub", ["x", "mean"], ["a"]), mk("Div", ["a", "std"], ["b"]),
             mk("BatchNormalization", ["b", "sc", "bi", "mu", "var"], ["c"]),
             mk("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
             mk("Transpose", ["t"], ["u"], perm=[0, 1, 3, 2]),
             mk("Mul", ["u", "half"], ["h"]), mk("Add", ["c", "h"], ["y"])]
    inits = [init("mean", rng.random((1, 2, 1, 1)).astype(np.float32)),
             init("std", rng.uniform(0.5, 1, (1, 2, 1, 1)).astype(np.float32)),
             init("sc", rng.uniform(0.5, 2, 2).astype(np.float32)),
             init("bi", rng.random(2).astype(np.float32)),
             init("mu", rng.random(2).astype(np.float32)),
             init("var", rng.uniform(0.5, 2, 2).astype(np.float32)),
             init("half", np.float32(0.5))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 3], inits)
    assert operator.selection  # x*s + 0.5*x*s is still one element per element


# ------------------------------------------------------------------ refusals


def refusal(tmp_path: Path, nodes: list, inits: list = (), shape=(1, 2, 4, 4)) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        operator_of(tmp_path, nodes, list(shape), inits)
    return info.value.one_line()


def test_a_non_linear_op_names_its_node(tmp_path):
    assert "passes through Relu (node 'act')" in refusal(
        tmp_path, [mk("Relu", ["x"], ["y"], name="act")])


def test_the_input_times_itself_is_not_linear(tmp_path):
    assert "uses the input twice" in refusal(tmp_path, [mk("Mul", ["x", "x"], ["y"])])


def test_a_data_dependent_gather_is_not_linear(tmp_path):
    nodes = [mk("ArgMax", ["x"], ["i"], axis=3, keepdims=0),
             mk("Gather", ["x", "i"], ["y"], axis=2, name="pick")]
    text = refusal(tmp_path, nodes)
    assert "ArgMax" in text or "indices computed from the data" in text


def test_a_linear_op_not_handled_says_so(tmp_path):
    text = refusal(tmp_path, [mk("CumSum", ["x", "axis"], ["y"], name="acc")],
                   [ints("axis", [3])])
    assert "CumSum (node 'acc') is linear in the input but not yet handled" in text


def test_a_cubic_resize_is_linear_but_not_handled(tmp_path):
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode="cubic", name="up")]
    text = refusal(tmp_path, nodes, [init("scales", np.array([1, 1, 2, 2], np.float32))])
    expected = "Resize (node 'up') is linear in the input but not yet handled on the path to W1"
    assert f"{expected} (mode cubic)" in text


def test_the_path_nodes_include_every_branch(tmp_path):
    """path_nodes keeps both branches of a Concat and drops a branch that leaves the path."""
    nodes = [mk("Slice", ["x", "s0", "e", "a"], ["p"]), mk("Slice", ["x", "s1", "e", "a"], ["q"]),
             mk("Relu", ["x"], ["side"]), mk("Concat", ["p", "q"], ["y"], axis=1)]
    graph_nodes = [helper.make_node(n.op_type, n.input, n.output) for n in nodes]
    chosen = path_nodes("x", "y", graph_nodes, len(graph_nodes))
    assert [n.op_type for n in chosen] == ["Slice", "Slice", "Concat"]
    assert FLOAT  # the builders' float type is what the models above use
