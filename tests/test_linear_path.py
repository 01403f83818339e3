"""graph.linear_path: the path to W1 as one sparse operator, checked against ONNX Runtime.

For each op (and each mode of it) a one-path model ``x -> ... -> y`` runs in ONNX Runtime on a
random ``x`` and on zeros: ``y(x) - y(0)`` must equal ``M @ x`` for the operator ``M`` the
module builds, element for element (float32 rounding). Ops that are not linear keep their
one-line answer naming the node; linear ops not handled yet say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import scipy.sparse
from builders import BOOL, FLOAT, INT64, audit, init, ints, make_model, run_cli, value
from onnx import helper
from reference_operator import w1_jacobian

from onnxcollide.errors import UnsupportedModelError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.input_path import DENSE, OVERLAPPING, PATCHIFY
from onnxcollide.graph.linear_path import PathOperator, build_path_operator, path_nodes
from onnxcollide.graph.load import load_model
from onnxcollide.graph.shapes import infer_shapes

mk = helper.make_node


def operator_of(tmp_path: Path, nodes: list, shape: list[int], inits: list = (),
                opset: int = 18, extra: list = (), declared: list | None = None
                ) -> tuple[PathOperator, str]:
    """Save ``x -> nodes -> y`` (``extra``: more graph inputs; ``declared``: x's shape in
    the graph, ``shape`` by default) and build its path operator from x to y."""
    file = make_model(tmp_path / "path.onnx", nodes, [value("x", declared or shape), *extra],
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
                           opset: int = 18, declared: list | None = None) -> PathOperator:
    """``M @ x == y(x) - y(0)`` in ONNX Runtime, for a random x of ``shape`` (batch 1)."""
    operator, file = operator_of(tmp_path, nodes, shape, inits, opset, declared=declared)
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


@pytest.mark.parametrize(("upper", "k"), [(1, None), (0, None), (1, 2), (0, -1), (1, -9),
                                          (0, 7)])
def test_trilu_zeroes_a_triangle(tmp_path, upper, k):
    """Trilu keeps the upper (or lower) triangle from diagonal k of each matrix and writes 0
    elsewhere: a selection whose zeroed elements the input never reaches."""
    inputs = ["x"] if k is None else ["x", "k"]
    inits = [] if k is None else [init("k", np.array(k, np.int64))]
    operator = assert_matches_runtime(tmp_path, [mk("Trilu", inputs, ["y"], upper=upper)],
                                      [1, 2, 4, 5], inits, opset=14)
    offset = np.subtract.outer(np.arange(4), np.arange(5))  # row - column
    kept = np.count_nonzero(-offset >= (k or 0)) if upper else np.count_nonzero(
        -offset <= (k or 0))
    assert operator.selection and operator.kernel_bound() == 2 * (20 - kept)


@pytest.mark.parametrize(("shape", "length"), [([1, 5, 3], 3), ([1, 4, 2, 3], 4), ([1, 4, 2], 0)])
def test_reverse_sequence_permutes_time_steps(tmp_path, shape, length):
    """ReverseSequence (batch axis 0, time axis 1) reverses the first sequence_lens steps of
    each sample: a permutation."""
    nodes = [mk("ReverseSequence", ["x", "lens"], ["y"], batch_axis=0, time_axis=1)]
    operator = assert_matches_runtime(tmp_path, nodes, shape, [ints("lens", [length])],
                                      opset=10)
    assert operator.selection
    assert np.array_equal(np.sort(operator.positions()), np.arange(int(np.prod(shape))))


@pytest.mark.parametrize(("axis", "condition"), [
    (2, [1, 0, 1, 1]), (-1, [0, 1, 1, 0, 1]), (3, [1, 0]), (1, [0, 1, 1, 0, 0, 1, 1]),
])
def test_compress_along_an_axis(tmp_path, axis, condition):
    """Compress keeps the slices where the constant condition is true (a shorter condition
    drops the rest, a longer one is cut to the axis): the others become blind."""
    nodes = [mk("Compress", ["x", "cond"], ["y"], axis=axis)]
    inits = [init("cond", np.array(condition, bool))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 3, 4, 5], inits, opset=11)
    assert operator.selection and operator.kernel_bound() > 0


def test_compress_without_an_axis_flattens_one_sample(tmp_path):
    """Without an axis Compress picks elements of the flattened sample (a 1-D output, put
    back on a batch axis by Unsqueeze as before a Gemm)."""
    condition = np.random.default_rng(4).random(30) > 0.4
    condition[24:] = False  # past one sample: ignored where false
    nodes = [mk("Compress", ["x", "cond"], ["c"]), mk("Unsqueeze", ["c", "ax"], ["y"])]
    inits = [init("cond", condition), ints("ax", [0])]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 4], inits, opset=13)
    assert operator.selection and operator.kernel_bound() == 24 - np.count_nonzero(
        condition[:24])


@pytest.mark.parametrize(("shape", "target", "axes"), [
    ([1, 2, 5, 4], [3, 6], [2, 3]), ([1, 2, 6, 3], [1, 2, 3, 8], None),
    ([1, 3, 4, 7], [2, 4], [-1, -3]), ([1, 2, 4, 4], [4, 4], [-2, -1]),
])
def test_center_crop_pad(tmp_path, shape, target, axes):
    """CenterCropPad crops each axis about its centre or pads it with zeros: a selection."""
    attrs = {} if axes is None else {"axes": axes}
    nodes = [mk("CenterCropPad", ["x", "shape"], ["y"], **attrs)]
    operator = assert_matches_runtime(tmp_path, nodes, shape, [ints("shape", target)])
    assert operator.selection


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


@pytest.mark.parametrize(("coordinates", "opset"), [
    ("half_pixel", 19), ("pytorch_half_pixel", 13), ("align_corners", 11), ("asymmetric", 20),
    ("tf_half_pixel_for_nn", 12),
])
@pytest.mark.parametrize(("scales", "exclude", "coeff"), [
    ((2.0, 0.5), 0, -0.75), ((0.35, 1.7), 1, -0.5), ((3.0, 0.6), 0, -0.5),
    ((0.25, 2.5), 1, -0.75),
])
def test_cubic_resize(tmp_path, coordinates, opset, scales, exclude, coeff):
    """Cubic Resize (Keys' kernel with cubic_coeff_a), opsets 11 to 20: four taps around each
    coordinate; taps outside the input read the edge element, or (exclude_outside) drop out
    and the others are renormalized."""
    nodes = [mk("Resize", ["x", "roi", "scales"], ["y"], mode="cubic", cubic_coeff_a=coeff,
                coordinate_transformation_mode=coordinates, exclude_outside=exclude)]
    inits = [init("roi", np.zeros(0, np.float32)),
             init("scales", np.array([1, 1, *scales], np.float32))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 6, 9], inits, opset=opset)
    assert not operator.selection


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude", [0, 1])
@pytest.mark.parametrize(("coordinates", "scales", "shape"), [
    ("half_pixel", (0.5, 0.35), (6, 9)), ("pytorch_half_pixel", (0.2, 2.5), (9, 3)),
    ("align_corners", (0.25, 0.75), (4, 8)), ("asymmetric", (0.6, 3.0), (5, 1)),
    ("tf_half_pixel_for_nn", (0.3, 0.5), (7, 6)),
])
def test_antialiased_resize(tmp_path, mode, exclude, coordinates, scales, shape):
    """antialias=1 (opset 18+) stretches the linear or cubic filter by 1/scale when
    downscaling; taps outside the input read the edge (or, exclude_outside, drop out) and the
    weights are divided by their sum, as ONNX Runtime does it."""
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode=mode, antialias=1,
                coordinate_transformation_mode=coordinates, exclude_outside=exclude)]
    inits = [init("scales", np.array([1, 1, *scales], np.float32))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, *shape], inits, opset=18)
    assert not operator.selection


@pytest.mark.parametrize(("mode", "antialias"), [("cubic", 0), ("cubic", 1), ("linear", 1)])
def test_cubic_and_antialiased_resize_by_sizes(tmp_path, mode, antialias):
    """Resize to given sizes (one axis down, one up), opset 19."""
    nodes = [mk("Resize", ["x", "", "", "sizes"], ["y"], mode=mode, antialias=antialias)]
    assert_matches_runtime(tmp_path, nodes, [1, 1, 7, 6], [ints("sizes", [1, 1, 3, 10])],
                           opset=19)


@pytest.mark.parametrize(("mode", "antialias", "scales", "shape"), [
    ("linear", 0, (1.1, 1.1), (6, 5)), ("cubic", 0, (1.1, 1.1), (6, 5)),
    ("linear", 1, (1.1, 0.5), (6, 8)), ("cubic", 1, (2.0, 1.1), (4, 5)),
])
def test_resize_copies_axes_that_keep_their_size(tmp_path, mode, antialias, scales, shape):
    """ONNX Runtime copies the input where no axis changes size (a scale of 1.1 on 6 and 5
    elements), and with antialias every axis that keeps its size, where the ONNX reference
    interpolates them: the operator follows ONNX Runtime."""
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode=mode, antialias=antialias)]
    inits = [init("scales", np.array([1, 1, *scales], np.float32))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 1, *shape], inits, opset=18)
    if not antialias:
        assert operator.selection and (operator.matrix != scipy.sparse.identity(30)).nnz == 0


@pytest.mark.parametrize(("coordinates", "exclude", "scales", "shape"), [
    ("pytorch_half_pixel", 1, (1.25, 3.0), (3, 6, 1)), ("half_pixel", 0, (1.1, 2.0), (4, 5, 2)),
])
def test_a_cubic_resize_of_nhwc_layout_copies_axes_that_keep_their_size(
        tmp_path, coordinates, exclude, scales, shape):
    """A cubic Resize scaling axes 1 and 2 of a 4-D input (scales [1, s1, s2, 1]) runs on
    ONNX Runtime's antialiasing kernel: an axis that keeps its size (3 x 1.25 = 3) is
    copied, where the plain cubic matrix resampled it."""
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode="cubic", exclude_outside=exclude,
                coordinate_transformation_mode=coordinates)]
    inits = [init("scales", np.array([1, *scales, 1], np.float32))]
    assert_matches_runtime(tmp_path, nodes, [1, *shape], inits, opset=15)


@pytest.mark.parametrize(("mode", "scales"), [("linear", (2.0, 1.5)), ("nearest", (2.0, 0.6)),
                                              ("nearest", (0.5, 3.0))])
def test_resize_of_opset_10(tmp_path, mode, scales):
    """Resize-10 has no coordinate modes: asymmetric coordinates, and ONNX Runtime's nearest
    pixel is the floor when upscaling, the ceiling when downscaling."""
    nodes = [mk("Resize", ["x", "scales"], ["y"], mode=mode)]
    inits = [init("scales", np.array([1, 1, *scales], np.float32))]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 7, 9], inits, opset=10)


def test_upsample_of_opset_7_with_float_scales(tmp_path):
    """Upsample-7 holds its scales as a float attribute."""
    nodes = [mk("Upsample", ["x"], ["y"], mode="linear", scales=[1.0, 1.0, 2.0, 1.5])]
    assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 4], opset=7)


@pytest.mark.parametrize(("mode", "opset"), [("linear", 19), ("nearest", 19), ("nearest", 10),
                                             ("linear", 9)])
def test_a_resize_s_output_size_is_its_float32_product(tmp_path, mode, opset):
    """ONNX Runtime sizes an axis as the float32 product of its length and scale, truncated:
    5 x 2.6 is 13 (12.9999995 in float64 floored to 12, which gave an operator of 12 columns
    where ONNX Runtime writes 13). ONNX shape inference says 12: where it knows the shape, the
    layers after the Resize would be sized wrong, and the path is refused naming the node."""
    op, inputs = ("Upsample", ["x", "scales"]) if opset < 10 else (
        "Resize", ["x", "scales"] if opset == 10 else ["x", "", "scales"])
    nodes = [mk(op, inputs, ["y"], mode=mode, name="up")]
    inits = [init("scales", np.array([1, 1, 1, 2.6], np.float32))]
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 5], inits, opset=opset,
                                      declared=[1, 2, "h", "w"])
    assert operator.data_shape == (2, 3, 13)
    assert f"node 'up' ({op}): ONNX shape inference gives 'y' the per-sample shape [2, 3, 12] " \
        "where the op makes [2, 3, 13] in ONNX Runtime" in refusal(tmp_path, nodes, inits,
                                                                   (1, 2, 3, 5), opset)


@pytest.mark.parametrize(("n", "value", "coordinates", "rounding"), [
    (6, 0.7, "half_pixel", "round_prefer_floor"),  # 3.5 / 0.7 - 0.5: 4.5 in float32
    (5, 0.6, "half_pixel", "floor"),  # 1.5 / 0.6 - 0.5: 2 in float32, 1.9999999 in float64
    (7, 1, "half_pixel", "floor"),  # the size's scale 1/7 in float32: 0.5 / s - 0.5 < 3
    (7, 2, "asymmetric", "round_prefer_ceil"),  # 1 / (2/7): 3.4999998, a tie
    (20, 6, "half_pixel", "round_prefer_ceil"),  # 14.499999, a tie (ONNX Runtime #28291)
    (9, 2.6, "tf_half_pixel_for_nn", "round_prefer_floor"),  # 19.5 / 2.6: 7.5000005, a tie
])
def test_nearest_rounds_the_float32_coordinate_as_onnx_runtime(tmp_path, n, value,
                                                                coordinates, rounding):
    """A nearest Resize picks its element from the float32 coordinate, a scale given as a
    size being the float32 quotient, and (ONNX Runtime 1.32) a rounded coordinate within 1e-6
    of a half is a tie: float64 coordinates picked the neighbour."""
    sized = isinstance(value, int)
    nodes = [mk("Resize", ["x", "", "", "v"] if sized else ["x", "", "v"], ["y"],
                mode="nearest", coordinate_transformation_mode=coordinates,
                nearest_mode=rounding)]
    inits = [ints("v", [1, 1, 1, value]) if sized else
             init("v", np.array([1, 1, 1, value], np.float32))]
    assert_matches_runtime(tmp_path, nodes, [1, 1, 2, n], inits, opset=19)


@pytest.mark.parametrize(("inputs", "inits", "batch"), [
    (["x", "", "s"], [init("s", np.array([2, 1, 1, 1], np.float32))], 1),
    (["x", "", "", "s"], [ints("s", [2, 2, 4, 4])], "N"),
    (["x", "", "s"], [init("s", np.array([1.5, 1, 2, 2], np.float32))], "N"),
])
def test_a_resize_of_the_batch_axis_is_not_handled(tmp_path, inputs, inits, batch):
    """Scales or sizes that resize the batch axis mix samples: one line naming the node,
    where the operator silently took sizes[0] as 1 (or built a matrix along the batch axis)."""
    nodes = [mk("Resize", inputs, ["y"], mode="nearest", name="n")]
    assert "Resize (node 'n') is linear in the input but not yet handled on the path to W1 " \
        "(it resizes the batch axis)" in refusal(tmp_path, nodes, inits, (batch, 2, 4, 4), 19)


def test_a_resize_that_keeps_a_fixed_batch_is_one_sample_s(tmp_path):
    """sizes naming the model's own batch of 3 keep each sample: the operator is the one of
    a batch of one."""
    nodes = [mk("Resize", ["x", "", "", "s"], ["y"], mode="linear")]
    three, _ = operator_of(tmp_path, nodes, [3, 2, 4, 4], [ints("s", [3, 2, 6, 2])], 19)
    one = assert_matches_runtime(tmp_path, nodes, [1, 2, 4, 4], [ints("s", [1, 2, 6, 2])],
                                 opset=19)
    assert three.data_shape == one.data_shape == (2, 6, 2)
    assert (three.matrix != one.matrix).nnz == 0


@pytest.mark.parametrize(("axis", "exclusive", "reverse"), [
    (3, 0, 0), (-1, 1, 0), (2, 0, 1), (-2, 1, 1), (1, 1, 0),
])
def test_cumsum(tmp_path, axis, exclusive, reverse):
    """CumSum along a constant axis (negative too, int32 or int64), exclusive and reverse:
    each element sums those before (or after) it, which couples them, except an exclusive
    sum over two elements: a shift, (0, x0)."""
    nodes = [mk("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)]
    dtype = np.int32 if axis < 0 else np.int64
    operator = assert_matches_runtime(tmp_path, nodes, [1, 2, 3, 4],
                                      [init("axis", np.array(axis, dtype))], opset=14)
    assert operator.selection == (axis == 1 and exclusive == 1)


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


def refusal(tmp_path: Path, nodes: list, inits: list = (), shape=(1, 2, 4, 4), opset: int = 18,
            extra: list = ()) -> str:
    with pytest.raises(UnsupportedModelError) as info:
        operator_of(tmp_path, nodes, list(shape), inits, opset, extra)
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
    text = refusal(tmp_path, [mk("ScatterND", ["x", "idx", "upd"], ["y"], name="put")],
                   [init("idx", np.array([[0, 1]], np.int64)),
                    init("upd", np.zeros((1, 4, 4), np.float32))])
    assert "ScatterND (node 'put') is linear in the input but not yet handled" in text


@pytest.mark.parametrize(("nodes", "extra", "detail"), [
    ([mk("CumSum", ["x", "a"], ["y"], name="n")], [value("a", [], INT64)],
     "its axis is computed at run time"),
    ([mk("Trilu", ["x", "a"], ["y"], name="n")], [value("a", [], INT64)],
     "its k is computed at run time"),
    ([mk("ReverseSequence", ["x", "a"], ["y"], batch_axis=0, time_axis=1, name="n")],
     [value("a", [1], INT64)], "its sequence_lens is computed at run time"),
    ([mk("Compress", ["x", "a"], ["y"], axis=2, name="n")], [value("a", [4], BOOL)],
     "its condition is computed at run time"),
    ([mk("CenterCropPad", ["x", "a"], ["y"], axes=[2, 3], name="n")], [value("a", [2], INT64)],
     "its shape is computed at run time"),
])
def test_a_parameter_computed_at_run_time_is_not_handled(tmp_path, nodes, extra, detail):
    """An axis, k, condition, shape or sequence_lens from another graph input: one line
    naming the node, not a traceback."""
    text = refusal(tmp_path, nodes, extra=extra)
    op = nodes[-1].op_type
    assert (f"{op} (node 'n') is linear in the input but not yet handled on the path to W1 "
            f"({detail})") in text


@pytest.mark.parametrize(("nodes", "inits", "detail"), [
    ([mk("CumSum", ["x", "a"], ["y"], name="n")], [ints("a", [0])],
     "it sums along the batch axis"),
    ([mk("Compress", ["x", "a"], ["y"], axis=0, name="n")], [init("a", np.array([True]))],
     "it selects along the batch axis"),
    ([mk("Compress", ["x", "a"], ["y"], name="n")], [init("a", np.arange(40) == 35)],
     "its condition selects elements of the next samples"),
    ([mk("CenterCropPad", ["x", "a"], ["y"], name="n")], [ints("a", [2, 2, 4, 4])],
     "it crops or pads the batch axis"),
    ([mk("ReverseSequence", ["x", "a"], ["y"], name="n")], [ints("a", [2, 2])],
     "its time axis is axis 0 and its batch axis axis 1, where axis 0 is taken as the batch"),
    ([mk("ReverseSequence", ["x", "a"], ["y"], batch_axis=0, time_axis=1, name="n")],
     [ints("a", [2, 3])], "its sequence_lens differ between samples"),
])
def test_an_op_across_samples_is_not_handled(tmp_path, nodes, inits, detail):
    assert f"(node 'n') is linear in the input but not yet handled on the path to W1 ({detail})" \
        in refusal(tmp_path, nodes, inits)


@pytest.mark.parametrize("scale", [np.inf, np.nan, 0.0, -2.0, 1e30, 1e-30])
@pytest.mark.parametrize(("mode", "antialias"), [("cubic", 0), ("linear", 1), ("nearest", 0)])
def test_resize_scales_that_do_not_fit_are_one_line(tmp_path, scale, mode, antialias):
    nodes = [mk("Resize", ["x", "", "scales"], ["y"], mode=mode, antialias=antialias,
                name="n")]
    inits = [init("scales", np.array([1, 1, scale, 2], np.float32))]
    assert "Resize (node 'n') has scales or sizes that do not fit its input" in refusal(
        tmp_path, nodes, inits, opset=19)


def test_a_cumsum_or_center_pad_too_large_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("onnxcollide.graph.linear_path.MAX_PATH_ELEMENTS", 100)
    text = refusal(tmp_path, [mk("CumSum", ["x", "a"], ["y"], name="n")], [ints("a", [3])],
                   shape=(1, 1, 2, 20))  # 40 elements, 40 * 21 / 2 terms
    assert "node 'n' (CumSum): its sums would hold more than 100 terms" in text
    text = refusal(tmp_path, [mk("CenterCropPad", ["x", "s"], ["y"], axes=[3], name="n")],
                   [ints("s", [1 << 40])], opset=18)
    assert "node 'n' (CenterCropPad): the path makes a tensor of more than 100 elements" in text


def test_trilu_on_a_matrix_whose_rows_are_the_batch_is_not_handled(tmp_path):
    text = refusal(tmp_path, [mk("Trilu", ["x"], ["y"], name="n")], shape=(1, 6))
    assert "Trilu (node 'n') is linear in the input but not yet handled on the path to W1 " \
        "(its matrices span the batch axis)" in text


def test_a_crop_and_resize_is_linear_but_not_handled(tmp_path):
    nodes = [mk("Resize", ["x", "roi", "scales"], ["y"], mode="cubic", name="up",
                coordinate_transformation_mode="tf_crop_and_resize")]
    inits = [init("roi", np.array([0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9], np.float32)),
             init("scales", np.array([1, 1, 2, 2], np.float32))]
    expected = "Resize (node 'up') is linear in the input but not yet handled on the path to W1"
    assert f"{expected} (coordinate_transformation_mode tf_crop_and_resize)" in refusal(
        tmp_path, nodes, inits)


def test_resize_scales_computed_at_run_time_name_the_node(tmp_path):
    """Scales from another graph input: one line naming the node, not a traceback."""
    nodes = [mk("Resize", ["x", "", "s"], ["y"], mode="cubic", name="up")]
    text = refusal(tmp_path, nodes, extra=[value("s", [4])])
    assert "Resize (node 'up')" in text and "'s'" in text


def test_the_path_nodes_include_every_branch(tmp_path):
    """path_nodes keeps both branches of a Concat and drops a branch that leaves the path."""
    nodes = [mk("Slice", ["x", "s0", "e", "a"], ["p"]), mk("Slice", ["x", "s1", "e", "a"], ["q"]),
             mk("Relu", ["x"], ["side"]), mk("Concat", ["p", "q"], ["y"], axis=1)]
    graph_nodes = [helper.make_node(n.op_type, n.input, n.output) for n in nodes]
    chosen = path_nodes("x", "y", graph_nodes, len(graph_nodes))
    assert [n.op_type for n in chosen] == ["Slice", "Slice", "Concat"]
    assert FLOAT  # the builders' float type is what the models above use


# ------------------------------------------------------------------ W1's class, collide end to end


def conv_after(tmp_path: Path, nodes: list, shape: list[int], inits: list = (), opset: int = 19,
               channels: int | None = None, kernel: int = 3, stride: int = 2) -> str:
    """Save ``x -> nodes -> p -> Conv(one 3x3 filter, stride 2) -> y`` (seeded weight; the
    batch axis of x is dynamic, the rest is ``shape[1:]``)."""
    weight = np.random.default_rng(7).standard_normal(
        (1, channels or shape[1], kernel, kernel)).astype(np.float32)
    conv = mk("Conv", ["p", "W"], ["y"], kernel_shape=[kernel] * 2, strides=[stride] * 2,
              name="conv")
    return make_model(tmp_path / "m.onnx", [*nodes, conv], [value("x", ["N", *shape[1:]])],
                      [value("y", None)], [*inits, init("W", weight)], opset=opset, check=False)


COUPLING = {  # a tiny model per coupling op: nodes ending in 'p', initializers, input shape
    "cubic Resize": ([mk("Resize", ["x", "", "scales"], ["p"], mode="cubic", name="up")],
                     [init("scales", np.array([1, 1, 2, 2], np.float32))], [1, 2, 8, 8]),
    "antialiased Resize": (
        [mk("Resize", ["x", "", "scales"], ["p"], mode="cubic", antialias=1, name="down")],
        [init("scales", np.array([1, 1, 0.5, 0.75], np.float32))], [1, 2, 12, 12]),
    "CumSum": ([mk("CumSum", ["x", "axis"], ["p"], exclusive=1, reverse=1, name="acc")],
               [ints("axis", [-2])], [1, 2, 8, 8]),
}


@pytest.mark.parametrize("case", COUPLING)
def test_a_coupling_op_makes_w1_overlapping_naming_it(tmp_path, case):
    """W1's class is 'overlapping', and the reason names the op and its node."""
    nodes, inits, shape = COUPLING[case]
    first = audit(conv_after(tmp_path, nodes, shape, inits)).first_layer
    assert first is not None and first.exactness == OVERLAPPING
    node = nodes[-1]
    assert f"couples input elements ({node.op_type} (node '{node.name}'))" in first.reason


@pytest.mark.parametrize("case", COUPLING)
def test_collide_on_a_coupling_op_validates_in_onnx_runtime(tmp_path, case):
    """audit, collide and validate end to end: collide's null-space dimension is n_in minus
    the rank of W1 o path measured in ONNX Runtime, and its colliding input passes validate."""
    nodes, inits, shape = COUPLING[case]
    model = conv_after(tmp_path, nodes, shape, inits)
    audited = run_cli("audit", model)
    assert audited.exit_code == 0 and "overlapping" in audited.stdout
    out = tmp_path / "out"
    collided = run_cli("collide", model, "-o", str(out), "--device", "cpu")
    assert collided.exit_code == 0, collided.stderr
    report = json.loads((out / "report.json").read_text())
    jacobian = w1_jacobian(model, "y", shape[1:])
    n_in = int(np.prod(shape[1:]))
    assert report["w1"]["operator"]["null_space_dim"] == n_in - np.linalg.matrix_rank(jacobian)
    (collision,) = report["collisions"]
    assert collision["exact"] and collision["validation"]["passed"]
    validated = run_cli("validate", model, str(out / "collisions.npz"), "--device", "cpu")
    assert validated.exit_code == 0 and "PASS" in validated.stdout and "FAIL" not in \
        validated.stdout


SELECTING = {  # a tiny model per selecting op: nodes ending in 'p', initializers, input shape,
    # the Conv's kernel and stride, W1's class, blind input elements
    "Trilu": ([mk("Trilu", ["x"], ["p"], upper=0, name="tri")], [], [1, 2, 4, 4], 2, 2,
              PATCHIFY, 2 * 6),
    "ReverseSequence": ([mk("ReverseSequence", ["x", "lens"], ["p"], batch_axis=0, time_axis=1)],
                        [ints("lens", [3])], [1, 4, 4, 4], 2, 2, PATCHIFY, 0),
    "Compress": ([mk("Compress", ["x", "cond"], ["p"], axis=3)],
                 [init("cond", np.array([1, 0, 1, 1, 0, 1], bool))], [1, 2, 4, 6], 2, 2,
                 PATCHIFY, 2 * 4 * 2),
    "CenterCropPad": ([mk("CenterCropPad", ["x", "shape"], ["p"], axes=[2, 3])],
                      [ints("shape", [3, 6])], [1, 2, 5, 4], 3, 3, PATCHIFY, 2 * 2 * 4),
    "CenterCropPad overlapping": (
        [mk("CenterCropPad", ["x", "shape"], ["p"], axes=[2, 3])], [ints("shape", [4, 6])],
        [1, 2, 5, 4], 2, 1, OVERLAPPING, 2 * 4),
}


@pytest.mark.parametrize("case", SELECTING)
def test_a_selecting_op_keeps_w1_s_class_and_counts_blind_elements(tmp_path, case):
    """A selection keeps W1's own class; the elements it drops or zeroes are blind."""
    nodes, inits, shape, kernel, stride, exactness, blind = SELECTING[case]
    first = audit(conv_after(tmp_path, nodes, shape, inits, kernel=kernel,
                             stride=stride)).first_layer
    assert first is not None and first.exactness == exactness, first.reason
    assert first.blind_elements == blind


def test_compress_without_an_axis_before_a_gemm_is_dense_with_blind_elements(tmp_path):
    """x -> Compress (no axis) -> Unsqueeze -> Gemm: W1 stays dense and the elements the
    condition drops are blind."""
    condition = np.arange(24) % 3 != 0
    nodes = [mk("Compress", ["x", "cond"], ["c"]), mk("Unsqueeze", ["c", "ax"], ["u"]),
             mk("Gemm", ["u", "W"], ["y"])]
    inits = [init("cond", condition), ints("ax", [0]),
             init("W", np.random.default_rng(8).standard_normal((16, 5)).astype(np.float32))]
    model = make_model(tmp_path / "m.onnx", nodes, [value("x", [1, 2, 3, 4])],
                       [value("y", None)], inits, opset=13, check=False)
    first = audit(model).first_layer
    assert first is not None and first.exactness == DENSE, first.reason
    assert first.blind_elements == 8


@pytest.mark.parametrize("case", [*SELECTING, "Compress without axis"])
def test_collide_on_a_selecting_op_validates_in_onnx_runtime(tmp_path, case):
    """collide then validate end to end through each selecting op (a Compress without axis
    hides W1's input shape from ONNX shape inference: the path operator gives it)."""
    if case == "Compress without axis":
        nodes = [mk("Compress", ["x", "cond"], ["c"]), mk("Unsqueeze", ["c", "ax"], ["u"]),
                 mk("Gemm", ["u", "W"], ["y"])]
        inits = [init("cond", np.arange(24) % 3 != 0), ints("ax", [0]),
                 init("W", np.random.default_rng(8).standard_normal((16, 5)).astype(np.float32))]
        model = make_model(tmp_path / "m.onnx", nodes, [value("x", [1, 2, 3, 4])],
                           [value("y", None)], inits, opset=13, check=False)
    else:
        nodes, inits, shape, kernel, stride, *_ = SELECTING[case]
        model = conv_after(tmp_path, nodes, shape, inits, kernel=kernel, stride=stride)
    out = tmp_path / "out"
    collided = run_cli("collide", model, "-o", str(out), "--device", "cpu")
    assert collided.exit_code == 0, collided.stderr
    (collision,) = json.loads((out / "report.json").read_text())["collisions"]
    assert collision["exact"] and collision["validation"]["passed"]
    validated = run_cli("validate", model, str(out / "collisions.npz"), "--device", "cpu")
    assert validated.exit_code == 0 and "PASS" in validated.stdout


def test_the_differential_checker_finds_nothing_on_a_few_examples():
    """scripts/check_path_ops.py on 40 random configurations (seeded): every accepted one
    equals ONNX Runtime, every refusal is one line naming a node, nothing crashes."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "check_path_ops.py"
    done = subprocess.run([sys.executable, str(script), "--examples", "40", "--seed", "3",
                           "--no-audit"], capture_output=True, text=True, check=False,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("40 examples") and "0 mismatches, 0 crashes" in first
    assert int(first.split(": ")[1].split()[0]) >= 15  # configurations checked
