"""The ONNX Runtime reference for W1's operator (reference_operator.py) on hand-made models
whose Jacobian is known in closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import init, ints, make_model, value
from onnx import helper
from reference_operator import NullCount, conv_rtol, exact_count, w1_jacobian


def conv_matrix(weight: np.ndarray, height: int, width: int, stride: int = 1) -> np.ndarray:
    """Valid (unpadded) correlation of a [p, 1, k, k] kernel on a 1 x height x width image.

    Rows: outputs [p, oh, ow] in C order; columns: input pixels in C order.
    """
    p, _, k, _ = weight.shape
    oh, ow = (height - k) // stride + 1, (width - k) // stride + 1
    mat = np.zeros((p, oh, ow, height, width))
    for f in range(p):
        for y in range(oh):
            for x in range(ow):
                mat[f, y, x, y * stride:y * stride + k, x * stride:x * stride + k] = weight[f, 0]
    return mat.reshape(p * oh * ow, height * width)


def conv_model(path: Path, weight: np.ndarray, side: int, prefix: list, extra: list,
               x: str = "input", opset: int = 18, **conv_attrs: object) -> str:
    """input [N, 1, side, side] -> prefix nodes -> Conv(x, W, B) -> "w1"."""
    w = weight.astype(np.float32)
    conv = helper.make_node("Conv", [x, "W", "B"], ["w1"], **conv_attrs)
    return make_model(path, [*prefix, conv], [value("input", ["N", 1, side, side])],
                      [value("w1", ["N", None, None, None])],
                      [init("W", w), init("B", np.full(w.shape[0], 5.25, np.float32)), *extra],
                      opset=opset)


def test_patchify_2x2_stride_2_two_filters(tmp_path: Path) -> None:
    weight = np.array([[[[1, 2], [3, 4]]], [[[0, 1], [1, 0]]]], np.float64)
    path = conv_model(tmp_path / "m.onnx", weight, 4, [], [], kernel_shape=[2, 2],
                      strides=[2, 2])
    jac = w1_jacobian(path, "w1", (1, 4, 4))
    assert jac.shape == (8, 16)
    np.testing.assert_array_equal(jac, conv_matrix(weight, 4, 4, stride=2))  # bias dropped
    # Four disjoint 2x2 windows, two independent filters each: 4 * (4 - 2) null directions.
    assert exact_count(jac, 1e-6) == NullCount(nullity=8, blind=0)
    direct = w1_jacobian(path, "w1", (1, 4, 4), method="direct")
    np.testing.assert_allclose(direct, jac, atol=1e-6)


def test_stride_skipping_pixels_makes_blind_columns(tmp_path: Path) -> None:
    weight = np.array([[[[3.0]]]])
    path = conv_model(tmp_path / "m.onnx", weight, 4, [], [], kernel_shape=[1, 1],
                      strides=[2, 2])
    jac = w1_jacobian(path, "w1", (1, 4, 4), batch=5)  # batches that do not divide 16
    np.testing.assert_array_equal(jac, conv_matrix(weight, 4, 4, stride=2))
    assert exact_count(jac, 1e-6) == NullCount(nullity=12, blind=12)


def test_constant_pad_then_conv_is_a_kronecker_product(tmp_path: Path) -> None:
    # Kernel outer([1,0,1], [0,1,0]) on a zero-padded 3x3 image: J = kron(T, I3) with
    # T = [[0,1,0],[1,0,1],[0,1,0]] of rank 2, so rank 6 and nullity 9 - 6 = 3.
    weight = np.outer([1, 0, 1], [0, 1, 0]).reshape(1, 1, 3, 3).astype(np.float64)
    pad = helper.make_node("Pad", ["input", "pads"], ["padded"], mode="constant")
    path = conv_model(tmp_path / "m.onnx", weight, 3, [pad], [ints("pads", [0, 0, 1, 1] * 2)],
                      x="padded", kernel_shape=[3, 3])
    jac = w1_jacobian(path, "w1", (1, 3, 3))
    t = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float64)
    np.testing.assert_array_equal(jac, np.kron(t, np.eye(3)))
    assert exact_count(jac, 1e-6) == NullCount(nullity=3, blind=0)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_modes_match_numpy_pad(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(3)
    weight = rng.integers(-3, 4, (2, 1, 3, 3)).astype(np.float64)
    pad = helper.make_node("Pad", ["input", "pads"], ["padded"], mode=mode)
    path = conv_model(tmp_path / "m.onnx", weight, 4, [pad], [ints("pads", [0, 0, 2, 1] * 2)],
                      x="padded", kernel_shape=[3, 3], strides=[2, 2])
    jac = w1_jacobian(path, "w1", (1, 4, 4))
    padding = np.stack([np.pad(e.reshape(4, 4), ((2, 2), (1, 1)), mode=mode).reshape(-1)
                        for e in np.eye(16)], axis=1)  # (8*6, 16)
    np.testing.assert_array_equal(jac, conv_matrix(weight, 8, 6, stride=2) @ padding)


def test_average_pool_kernel_collides_before_w1(tmp_path: Path) -> None:
    pool = helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[2, 2],
                            strides=[2, 2])
    path = conv_model(tmp_path / "m.onnx", np.array([[[[2.0]]]]), 4, [pool], [], x="pooled",
                      kernel_shape=[1, 1])
    jac = w1_jacobian(path, "w1", (1, 4, 4))
    window = np.kron(np.eye(2), np.ones((1, 2)))  # 1-D 2-to-1 sums
    np.testing.assert_array_equal(jac, 2 * 0.25 * np.kron(window, window))
    assert exact_count(jac, 1e-6) == NullCount(nullity=12, blind=0)


def test_bilinear_resize_weights_are_exact(tmp_path: Path) -> None:
    resize = helper.make_node("Resize", ["input", "", "scales"], ["up"], mode="linear",
                              coordinate_transformation_mode="half_pixel")
    scales = init("scales", np.array([1, 1, 2, 2], np.float32))
    path = conv_model(tmp_path / "m.onnx", np.array([[[[1.0]]]]), 2, [resize], [scales],
                      x="up", kernel_shape=[1, 1])
    jac = w1_jacobian(path, "w1", (1, 2, 2))
    # half_pixel: output x samples input (x + 0.5) / 2 - 0.5 = -0.25 (clamped), 0.25, 0.75, 1.25.
    r = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_array_equal(jac, np.kron(r, r))
    assert exact_count(jac, 1e-6) == NullCount(nullity=0, blind=0)


def test_affine_path_and_direct_method_agree(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    weight = rng.standard_normal((3, 1, 2, 2))
    nodes = [helper.make_node("Sub", ["input", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["normed"])]
    extra = [init("mean", np.array(0.45, np.float32)), init("std", np.array(0.226, np.float32))]
    path = conv_model(tmp_path / "m.onnx", weight, 4, nodes, extra, x="normed",
                      kernel_shape=[2, 2])
    jac = w1_jacobian(path, "w1", (1, 4, 4))
    expected = conv_matrix(weight.astype(np.float32).astype(np.float64), 4, 4) / 0.226
    np.testing.assert_allclose(jac, expected, rtol=1e-6, atol=0)
    direct = w1_jacobian(path, "w1", (1, 4, 4), method="direct")
    np.testing.assert_allclose(direct, jac, rtol=0, atol=1e-5 * np.abs(jac).max())


def test_exact_count_counts_missing_singular_values_as_zero() -> None:
    jac = np.diag([1.0, 1e-3, 1e-9, 0.0])
    assert exact_count(jac, 1e-6) == NullCount(nullity=2, blind=1)
    assert exact_count(np.array([[1.0, 0.0, 0.0]]), 1e-6) == NullCount(nullity=2, blind=2)
    assert conv_rtol((8, 12, 3, 3)) == 108 * 2.0**-23


def test_unknown_w1_output_is_an_error(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "m.onnx", np.ones((1, 1, 1, 1)), 2, [], [], kernel_shape=[1, 1])
    with pytest.raises(ValueError, match="no node of the graph outputs 'nope'"):
        w1_jacobian(path, "nope", (1, 2, 2))


MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize(("name", "shape"), [("focus_cnn", (3, 32, 32)),
                                             ("reflect_patch", (3, 28, 28)),
                                             ("avgpool_cnn", (3, 32, 32))])
def test_fixture_paths_exact_and_direct_agree(name: str, shape: tuple[int, ...]) -> None:
    # The split K @ A and the whole path's f(e_i) - f(0) (bias included, float32) must agree
    # to float32 rounding; every input reaches W1 (no blind columns) in these fixtures.
    path = MODELS / f"{name}.onnx"
    exact = w1_jacobian(path, "conv2d", shape)
    direct = w1_jacobian(path, "conv2d", shape, method="direct")
    assert exact.shape[1] == int(np.prod(shape))
    np.testing.assert_allclose(direct, exact, rtol=0, atol=1e-6 * np.abs(exact).max())
    assert exact.any(axis=0).all()
