"""layers (through audit_model): each op's weight as W (q x p), groups, rank, nullity, nu, mu.

Every model is tiny and built inline; weights are small-integer matrices of known rank, exact in
every dtype, so the expected rank does not depend on rounding.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from builders import (
    BOOL,
    FLOAT,
    FLOAT16,
    UINT8,
    audit,
    build_model,
    init,
    ints,
    make_model,
    only_row,
    row_summary,
    value,
)
from builders import integer_rank as irank
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import AuditSettings
from onnxcollide.errors import ModelLoadError, UnsupportedModelError

PAPER = AuditSettings(convention=ConvConvention.PAPER)
mk = helper.make_node


def flags(q: int, p: int, rank: int, groups: int = 1) -> tuple:
    """The expected (q, p, groups, rank, nullity, nu, mu) of a row."""
    return (q, p, groups, rank, q - rank, q - rank >= 1, p < q)


def blocks_of(row) -> np.ndarray:
    """The row's weight blocks as float64."""
    return np.asarray(row.layer.load_blocks(), dtype=np.float64)


# ------------------------------------------------------------------ Gemm


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_on_the_right(tmp_path, rng, trans_b):
    """Gemm x @ B: W = B (transB=0) or B^T (transB=1); q=12, p=8, rank 3."""
    w = irank(rng, 12, 8, 3)
    stored = w.T if trans_b else w
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Gemm", ["x", "B"], ["y"], transB=trans_b)],
        [value("x", [1, 12])], [value("y", [1, 8])],
        [init("B", stored.astype(np.float32))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    assert row.layer.op == "Gemm"
    assert row.layer.weight == "B"
    np.testing.assert_array_equal(blocks_of(row), w[None])


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_weight_on_the_left(tmp_path, rng, trans_a):
    """Gemm A @ x with constant A: W = A^T (transA=0) or A (transA=1); q=K=12, p=M=8."""
    w = irank(rng, 12, 8, 3)  # W (K x M)
    stored = w if trans_a else w.T  # A is (M, K) when transA=0, (K, M) when transA=1
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Gemm", ["A", "x"], ["y"], transA=trans_a)],
        [value("x", [12, 5])], [value("y", [8, 5])],
        [init("A", stored.astype(np.float32))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    assert row.layer.weight == "A"
    np.testing.assert_array_equal(blocks_of(row), w[None])


def test_gemm_alpha_is_folded_in(tmp_path, rng):
    """alpha=2 doubles W (and sigma_max); the rank stays."""
    w = irank(rng, 12, 8, 3).astype(np.float32)
    paths = []
    for alpha in (1.0, 2.0):
        paths.append(make_model(
            tmp_path / f"a{alpha}.onnx",
            [mk("Gemm", ["x", "B", "c"], ["y"], alpha=alpha)],
            [value("x", [1, 12])], [value("y", [1, 8])],
            [init("B", w), init("c", np.zeros(8, np.float32))],
        ))
    one, two = (only_row(audit(p)) for p in paths)
    assert row_summary(one) == row_summary(two) == flags(12, 8, 3)
    assert two.decision.sigma_max == pytest.approx(2 * one.decision.sigma_max, rel=1e-12)
    assert two.decision.tol == pytest.approx(2 * one.decision.tol, rel=1e-12)
    np.testing.assert_array_equal(blocks_of(two), 2 * w[None].astype(np.float64))
    assert "alpha=2" in two.layer.layout


# ------------------------------------------------------------------ MatMul


def test_matmul_weight_on_the_right(tmp_path, rng):
    """MatMul x @ B: W = B."""
    w = irank(rng, 12, 8, 5)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "B"], ["y"])],
                      [value("x", [2, 12])], [value("y", [2, 8])],
                      [init("B", w.astype(np.float32))])
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 5)
    np.testing.assert_array_equal(blocks_of(row), w[None])


def test_matmul_weight_on_the_left(tmp_path, rng):
    """MatMul A @ x: W = A^T (q = K = 12 input dim, p = M = 8)."""
    w = irank(rng, 12, 8, 5)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["A", "x"], ["y"])],
                      [value("x", [12, 3])], [value("y", [8, 3])],
                      [init("A", w.T.astype(np.float32))])
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 5)
    np.testing.assert_array_equal(blocks_of(row), w[None])


def test_matmul_wide_weight_has_no_nullity(tmp_path, rng):
    """x @ B with B (8, 12) of full rank 8: nullity 0, neither nu nor mu."""
    w = irank(rng, 8, 12, 8)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "B"], ["y"])],
                      [value("x", [2, 8])], [value("y", [2, 12])],
                      [init("B", w.astype(np.float32))])
    row = only_row(audit(path))
    assert row_summary(row) == (8, 12, 1, 8, 0, False, False)


def test_matmul_1d_weight(tmp_path, rng):
    """x @ b with a 1-D b (12,): W = b as a 12 x 1 matrix, rank 1, nullity 11."""
    b = rng.integers(1, 4, size=12).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "b"], ["y"])],
                      [value("x", [2, 12])], [value("y", [2])], [init("b", b)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 1, 1)
    np.testing.assert_array_equal(blocks_of(row), b.reshape(1, 12, 1))


def _stack_of_rank_one(rng) -> np.ndarray:
    """Three 6 x 4 matrices u v_i^T sharing one u: each rank 1, side by side still rank 1."""
    u = rng.integers(1, 4, size=(6, 1)).astype(np.float64)
    v = rng.integers(-3, 4, size=(3, 1, 4)).astype(np.float64)
    v[:, 0, 0] = 1  # no v_i is zero
    return (u[None] * v).astype(np.float32)  # (3, 6, 4)


def test_matmul_stack_with_matching_data_dims_is_block_diagonal(tmp_path, rng):
    """x (3, 5, 6) @ B (3, 6, 4): 3 diagonal blocks, q=18, p=12, rank 3 (1 per block)."""
    b = _stack_of_rank_one(rng)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "B"], ["y"])],
                      [value("x", [3, 5, 6])], [value("y", [3, 5, 4])], [init("B", b)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(18, 12, 3, groups=3)
    np.testing.assert_array_equal(blocks_of(row), b)
    assert "block diagonal" in row.layer.layout


@pytest.mark.parametrize("data_shape", [[5, 6], [1, 5, 6]], ids=["fewer-dims", "leading-1"])
def test_matmul_stack_with_broadcast_data_is_concat(tmp_path, rng, data_shape):
    """x (5, 6) or (1, 5, 6) @ B (3, 6, 4): one input feeds all three: W = [B1 B2 B3], 6 x 12."""
    b = _stack_of_rank_one(rng)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "B"], ["y"])],
                      [value("x", data_shape)], [value("y", [3, 5, 4])], [init("B", b)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(6, 12, 1, groups=1)
    np.testing.assert_array_equal(blocks_of(row)[0], np.concatenate(list(b), axis=1))


def test_matmul_left_stack_with_shared_data_is_concat(tmp_path, rng):
    """A (3, 4, 6) @ x (6, 5): W = [A1^T A2^T A3^T] (6 x 12), groups 1."""
    a = rng.integers(-2, 3, size=(3, 4, 6)).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["A", "x"], ["y"])],
                      [value("x", [6, 5])], [value("y", [3, 4, 5])], [init("A", a)])
    row = only_row(audit(path))
    expected = np.concatenate([m.T for m in a], axis=1).astype(np.float64)
    assert row.layer.q == 6 and row.layer.p == 12 and row.layer.groups == 1
    np.testing.assert_array_equal(blocks_of(row)[0], expected)
    assert row.rank == np.linalg.matrix_rank(expected)


# ------------------------------------------------------------------ Conv


def conv_weight(matrix: np.ndarray, out_channels: int, per_group: tuple[int, ...]) -> np.ndarray:
    """(C/g * prod k) x O matrix -> (O, C/g, k...) weight (groups=1)."""
    return matrix.T.reshape(out_channels, *per_group)


def test_conv1d_strided_dilated(tmp_path, rng):
    """Conv1d (O=6, C=4, k=3), stride 2, dilation 2: q = 12, p = 6, rank 2."""
    m = irank(rng, 12, 6, 2)
    w = conv_weight(m, 6, (4, 3)).astype(np.float32)
    path = make_model(tmp_path / "m.onnx",
                      [mk("Conv", ["x", "W"], ["y"], strides=[2], dilations=[2])],
                      [value("x", [1, 4, 20])], [value("y", [1, 6, 8])], [init("W", w)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 6, 2)
    np.testing.assert_array_equal(blocks_of(row)[0], m)
    assert row.layer.geometry.strides == (2,)
    assert row.layer.geometry.dilations == (2,)


def test_conv2d_grouped_dilated_strided(tmp_path, rng):
    """Conv2d C=4, O=6, g=2, 3x3, dilation 2, stride 2: 2 blocks of 18 x 3, ranks 1 + 3."""
    blocks = np.stack([irank(rng, 18, 3, 1), irank(rng, 18, 3, 3)])  # (2, 18, 3)
    w = np.concatenate([b.T.reshape(3, 2, 3, 3) for b in blocks]).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Conv", ["x", "W"], ["y"], group=2, dilations=[2, 2], strides=[2, 2])],
        [value("x", [1, 4, 11, 11])], [value("y", [1, 6, 4, 4])], [init("W", w)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(36, 6, 4, groups=2)
    np.testing.assert_array_equal(blocks_of(row), blocks)
    assert row.layer.geometry.groups == 2
    assert row.layer.block_shape == (18, 3)


def test_conv3d(tmp_path, rng):
    """Conv3d (O=4, C=2, 2x2x2): q = 16, p = 4, rank 2."""
    m = irank(rng, 16, 4, 2)
    w = conv_weight(m, 4, (2, 2, 2, 2)).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("Conv", ["x", "W"], ["y"])],
                      [value("x", [1, 2, 5, 5, 5])], [value("y", [1, 4, 4, 4, 4])],
                      [init("W", w)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(16, 4, 2)
    np.testing.assert_array_equal(blocks_of(row)[0], m)


def _depthwise_model(tmp_path, rng, zero_filter: bool = False) -> tuple[str, np.ndarray]:
    """Depthwise 3x3 conv on 4 channels; the 4 filters span a 2-D space."""
    filters = irank(rng, 9, 4, 2)  # column c = filter of channel c
    while not np.all(np.any(filters != 0, axis=0)):  # every filter non-zero
        filters = irank(rng, 9, 4, 2)
    if zero_filter:
        filters[:, 3] = 0
    w = filters.T.reshape(4, 1, 3, 3).astype(np.float32)
    path = make_model(tmp_path / f"dw{int(zero_filter)}.onnx",
                      [mk("Conv", ["x", "W"], ["y"], group=4, pads=[1, 1, 1, 1])],
                      [value("x", [1, 4, 8, 8])], [value("y", [1, 4, 8, 8])], [init("W", w)])
    return path, filters


def test_depthwise_grouped_convention(tmp_path, rng):
    """Depthwise 3x3, C=4, grouped: 4 blocks of 9 x 1, q=36, p=4, rank 4, nullity 32."""
    path, filters = _depthwise_model(tmp_path, rng)
    row = only_row(audit(path))
    assert row_summary(row) == flags(36, 4, 4, groups=4)
    assert row.nullity == 8 * 4
    np.testing.assert_array_equal(blocks_of(row), filters.T[:, :, None])


def test_depthwise_zero_filter_loses_one_rank(tmp_path, rng):
    """A zero filter in the depthwise conv: grouped rank 3, nullity 33."""
    path, _ = _depthwise_model(tmp_path, rng, zero_filter=True)
    row = only_row(audit(path))
    assert row_summary(row) == flags(36, 4, 3, groups=4)


def test_depthwise_paper_convention(tmp_path, rng):
    """Same conv, convention 'paper': one 9 x 4 matrix of rank 2, nullity 7, and a note."""
    path, filters = _depthwise_model(tmp_path, rng)
    result = audit(path, PAPER)
    row = only_row(result)
    assert row_summary(row) == flags(9, 4, 2, groups=1)
    np.testing.assert_array_equal(blocks_of(row)[0], filters)
    assert row.layer.layout.startswith("paper")
    assert any("paper" in note for note in result.notes)
    assert result.settings.convention is ConvConvention.PAPER


def test_conv_transpose_grouped(tmp_path, rng):
    """ConvTranspose (C_in=6, C_out/g=1, 2x2), g=2: 2 blocks of 3 x 4, q=6, p=8, ranks 1+3."""
    blocks = np.stack([irank(rng, 3, 4, 1), irank(rng, 3, 4, 3)])
    w = blocks.reshape(6, 1, 2, 2).astype(np.float32)
    path = make_model(tmp_path / "m.onnx",
                      [mk("ConvTranspose", ["x", "W"], ["y"], group=2, strides=[2, 2])],
                      [value("x", [1, 6, 5, 5])], [value("y", [1, 2, 10, 10])], [init("W", w)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(6, 8, 4, groups=2)
    np.testing.assert_array_equal(blocks_of(row), blocks)
    assert row.layer.geometry.transposed


def test_conv_transpose_rank_deficient(tmp_path, rng):
    """ConvTranspose (C_in=6, C_out=2, 1x1): W is 6 x 2, nullity 4, nu and mu."""
    m = irank(rng, 6, 2, 2)
    w = m.reshape(6, 2, 1, 1).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("ConvTranspose", ["x", "W"], ["y"])],
                      [value("x", [1, 6, 4, 4])], [value("y", [1, 2, 4, 4])], [init("W", w)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(6, 2, 2)


def test_conv_transpose_paper_convention(tmp_path, rng):
    """ConvTranspose g=2, convention 'paper': one C_in x (C_out/g * prod k) = 6 x 4 matrix."""
    blocks = np.stack([irank(rng, 3, 4, 1), irank(rng, 3, 4, 3)])
    w = blocks.reshape(6, 1, 2, 2).astype(np.float32)
    path = make_model(tmp_path / "m.onnx",
                      [mk("ConvTranspose", ["x", "W"], ["y"], group=2, strides=[2, 2])],
                      [value("x", [1, 6, 5, 5])], [value("y", [1, 2, 10, 10])], [init("W", w)])
    row = only_row(audit(path, PAPER))
    matrix = w.reshape(6, 4).astype(np.float64)
    assert row_summary(row) == flags(6, 4, int(np.linalg.matrix_rank(matrix)))
    np.testing.assert_array_equal(blocks_of(row)[0], matrix)


# ------------------------------------------------------------------ quantized ops


def _per_channel(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct positive scales and small int8 zero points for n channels."""
    scales = (0.01 * np.arange(1, n + 1)).astype(np.float32)
    zeros = rng.integers(-3, 4, size=n).astype(np.int8)
    return scales, zeros


def test_qlinearconv_per_channel(tmp_path, rng):
    """QLinearConv int8 weight, per-channel scale and zero point: rank of (w - zp) * scale."""
    m = irank(rng, 18, 4, 2)  # (C*k*k) x O
    scales, zeros = _per_channel(rng, 4)
    w = (m.T.reshape(4, 2, 3, 3) + zeros.reshape(4, 1, 1, 1)).astype(np.int8)
    inits = [
        init("xs", np.float32(0.1)), init("xz", np.uint8(128)), init("W", w),
        init("ws", scales), init("wz", zeros), init("ys", np.float32(0.2)),
        init("yz", np.uint8(128)),
    ]
    path = make_model(
        tmp_path / "m.onnx",
        [mk("QLinearConv", ["x", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["y"])],
        [value("x", [1, 2, 6, 6], UINT8)], [value("y", [1, 4, 4, 4], UINT8)], inits,
    )
    row = only_row(audit(path))
    dequantized = m * scales.astype(np.float64)[None, :]
    assert row_summary(row) == flags(18, 4, 2)
    assert row.rank == np.linalg.matrix_rank(dequantized)
    np.testing.assert_allclose(blocks_of(row)[0], dequantized, rtol=1e-6)
    assert row.layer.stored_dtype == "int8"
    assert row.layer.compute_dtype == "float"
    assert row.decision.eps == 2.0**-23


def test_convinteger_per_channel_zero_point(tmp_path, rng):
    """ConvInteger uint8 weight with per-output-channel zero points: rank of (w - zp)."""
    m = irank(rng, 18, 4, 3)
    zeros = np.array([10, 11, 12, 13], np.uint8)
    w = (m.T.reshape(4, 2, 3, 3) + zeros.reshape(4, 1, 1, 1)).astype(np.uint8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("ConvInteger", ["x", "W", "xz", "wz"], ["y"])],
        [value("x", [1, 2, 6, 6], UINT8)], [value("y", [1, 4, 4, 4], onnx.TensorProto.INT32)],
        [init("W", w), init("xz", np.uint8(0)), init("wz", zeros)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(18, 4, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], m)


def test_qlinearmatmul_per_column(tmp_path, rng):
    """QLinearMatMul with int8 B (12 x 6), per-column scale / zero point: rank 3."""
    m = irank(rng, 12, 6, 3)
    scales, zeros = _per_channel(rng, 6)
    b = (m + zeros[None, :]).astype(np.int8)
    inits = [init("as", np.float32(0.1)), init("az", np.uint8(128)), init("B", b),
             init("bs", scales), init("bz", zeros), init("ys", np.float32(0.3)),
             init("yz", np.uint8(128))]
    path = make_model(
        tmp_path / "m.onnx",
        [mk("QLinearMatMul", ["x", "as", "az", "B", "bs", "bz", "ys", "yz"], ["y"])],
        [value("x", [2, 12], UINT8)], [value("y", [2, 6], UINT8)], inits,
    )
    row = only_row(audit(path))
    dequantized = m * scales.astype(np.float64)[None, :]
    assert row_summary(row) == flags(12, 6, 3)
    np.testing.assert_allclose(blocks_of(row)[0], dequantized, rtol=1e-6)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm_per_column_dequantizes_as_onnx_runtime_computes(tmp_path, rng, trans_b):
    """ONNX Runtime's QGemm (com.microsoft, its QOperator quantizer's Gemm), per-column int8 B
    stored either way round: one row of rank 3 whose matrix, applied to the dequantized
    input, gives what ONNX Runtime's QGemm outputs (it was ignored with no row and no note,
    and W1 moved to the next layer)."""
    import onnxruntime as ort

    m = irank(rng, 12, 6, 3)
    scales, zeros = _per_channel(rng, 6)
    b = (m + zeros[None, :]).astype(np.int8)
    inputs = ["xq", "as", "az", "B", "bs", "bz"]
    path = make_model(
        tmp_path / "m.onnx",
        [mk("QuantizeLinear", ["x", "as", "az"], ["xq"]),
         mk("QGemm", inputs, ["y"], domain="com.microsoft", transB=trans_b, alpha=0.5)],
        [value("x", [2, 12])], [value("y", [2, 6])],
        [init("as", np.float32(0.1)), init("az", np.uint8(128)),
         init("B", b.T.copy() if trans_b else b), init("bs", scales), init("bz", zeros)],
        extra_opsets=[("com.microsoft", 1)], check=False,
    )
    result = audit(path)
    row = only_row(result)
    assert row.layer.op == "QGemm" and row_summary(row) == flags(12, 6, 3)
    assert result.first_layer is not None and result.first_layer.exactness == "dense"
    steps = rng.integers(-128, 128, (2, 12))
    x = (np.float32(0.1) * steps).astype(np.float32)  # on the quantization grid: exact
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(x.astype(np.float64) @ blocks_of(row)[0], expected, rtol=1e-5,
                               atol=1e-4)


def test_matmulinteger_per_column_zero_point(tmp_path, rng):
    """MatMulInteger x @ B with int8 B and per-column zero points: rank of B - zp."""
    m = irank(rng, 12, 6, 4)
    _, zeros = _per_channel(rng, 6)
    b = (m + zeros[None, :]).astype(np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMulInteger", ["x", "B", "xz", "bz"], ["y"])],
        [value("x", [2, 12], UINT8)], [value("y", [2, 6], onnx.TensorProto.INT32)],
        [init("B", b), init("xz", np.uint8(0)), init("bz", zeros)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 6, 4)
    np.testing.assert_array_equal(blocks_of(row)[0], m)


def test_matmulinteger_weight_on_the_left_per_row_zero_point(tmp_path, rng):
    """MatMulInteger A @ x with constant int8 A (6 x 12), per-row zero points: W = (A - zp)^T."""
    m = irank(rng, 12, 6, 2)  # W = (A - zp)^T
    _, zeros = _per_channel(rng, 6)
    a = (m.T + zeros[:, None]).astype(np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMulInteger", ["A", "x", "az", "xz"], ["y"])],
        [value("x", [12, 3], UINT8)], [value("y", [6, 3], onnx.TensorProto.INT32)],
        [init("A", a), init("az", zeros), init("xz", np.uint8(0))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 6, 2)
    np.testing.assert_array_equal(blocks_of(row)[0], m)


def test_qdq_dequantize_chain_into_conv(tmp_path, rng):
    """int8 weight -> DequantizeLinear(axis 0, per-channel) -> Conv: rank of the float weight."""
    m = irank(rng, 18, 4, 2)
    scales, zeros = _per_channel(rng, 4)
    w = (m.T.reshape(4, 2, 3, 3) + zeros.reshape(4, 1, 1, 1)).astype(np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("DequantizeLinear", ["Wq", "ws", "wz"], ["W"], axis=0),
         mk("Conv", ["x", "W"], ["y"])],
        [value("x", [1, 2, 6, 6])], [value("y", [1, 4, 4, 4])],
        [init("Wq", w), init("ws", scales), init("wz", zeros)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(18, 4, 2)
    np.testing.assert_allclose(blocks_of(row)[0], m * scales.astype(np.float64), rtol=1e-6)
    assert row.layer.chain == ("DequantizeLinear",)
    assert row.layer.roots[0] == "Wq"
    assert row.layer.stored_dtype == "int8"
    assert row.layer.compute_dtype == "float"


# ------------------------------------------------------------------ dtypes


def test_fp16_weight_cast_to_float(tmp_path, rng):
    """fp16 initializer -> Cast(float) -> MatMul: stored float16, computed in float (eps 2^-23)."""
    w = irank(rng, 12, 8, 3).astype(np.float16)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Cast", ["W16"], ["W"], to=FLOAT), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 12])], [value("y", [1, 8])], [init("W16", w)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    assert row.layer.stored_dtype == "float16"
    assert row.layer.compute_dtype == "float"
    assert row.layer.chain == ("Cast",)
    assert row.decision.eps == 2.0**-23
    assert row.decision.tol == pytest.approx(row.decision.sigma_max * 12 * 2.0**-23)


def test_native_fp16_model(tmp_path, rng):
    """A float16 model: computed in float16, eps 2^-10, tol = sigma_max * 12 * 2^-10."""
    w = irank(rng, 12, 8, 3).astype(np.float16)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 12], FLOAT16)], [value("y", [1, 8], FLOAT16)],
                      [init("W", w)])
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    assert row.layer.stored_dtype == "float16"
    assert row.layer.compute_dtype == "float16"
    assert row.decision.eps == 2.0**-10
    assert row.decision.tol == pytest.approx(row.decision.sigma_max * 12 * 2.0**-10)


def test_double_model_uses_double_eps(tmp_path, rng):
    """A float64 weight is computed in double: eps 2^-52."""
    w = irank(rng, 12, 8, 3)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 12], onnx.TensorProto.DOUBLE)],
                      [value("y", [1, 8], onnx.TensorProto.DOUBLE)], [init("W", w)])
    row = only_row(audit(path))
    assert row.layer.compute_dtype == "double"
    assert row.decision.eps == 2.0**-52
    assert row.rank == 3


# ------------------------------------------------------------------ where weights come from


def test_constant_node_weight(tmp_path, rng):
    """The weight is a Constant node's output: its root is that output."""
    w = irank(rng, 12, 8, 4).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Constant", [], ["W"], value=onnx.numpy_helper.from_array(w, "Wt")),
         mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 12])], [value("y", [1, 8])],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 4)
    assert row.layer.roots == ("W",)
    assert row.layer.chain == ()
    assert row.layer.stored_dtype == "float"


def test_weight_through_reshape_and_transpose_chain(tmp_path, rng):
    """raw (8, 3, 4) -> Reshape (8, 12) -> Transpose -> (12, 8) -> MatMul: W = raw.reshape.T."""
    w = irank(rng, 12, 8, 3)
    raw = w.T.reshape(8, 3, 4).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Reshape", ["raw", "shape"], ["flat"]),
         mk("Transpose", ["flat"], ["W"], perm=[1, 0]),
         mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 12])], [value("y", [1, 8])],
        [init("raw", raw), ints("shape", [8, 12])],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], w)
    assert row.layer.chain == ("Reshape", "Transpose")
    assert row.layer.roots[0] == "raw"


def test_weight_through_reference_evaluated_op(tmp_path, rng):
    """A chain op outside the numpy folders (Mul by a constant) is folded via onnx.reference."""
    w = irank(rng, 12, 8, 3).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Mul", ["raw", "three"], ["W"]), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 12])], [value("y", [1, 8])],
        [init("raw", w), init("three", np.float32(3.0))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], 3.0 * w.astype(np.float64))


def test_weight_shared_by_two_nodes_is_one_row(tmp_path, rng):
    """x @ W -> Relu -> @ W: one parameter, one row listing both nodes; n = 1."""
    w = irank(rng, 8, 8, 5).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "W"], ["h"], name="mm1"), mk("Relu", ["h"], ["r"]),
         mk("MatMul", ["r", "W"], ["y"], name="mm2")],
        [value("x", [1, 8])], [value("y", [1, 8])], [init("W", w)],
    )
    result = audit(path)
    row = only_row(result)
    assert row.layer.nodes == ("mm1", "mm2")
    assert row_summary(row) == flags(8, 8, 5)
    assert result.metrics.n == 1
    assert result.metrics.nullity_sum == 3


def test_if_subgraph_matmul_with_outer_weight(tmp_path, rng):
    """A MatMul inside an If branch whose weight is an initializer of the main graph."""
    w = irank(rng, 8, 6, 2).astype(np.float32)
    then_graph = helper.make_graph(
        [mk("MatMul", ["x", "W"], ["t"], name="inner_mm")], "then", [], [value("t", [1, 6])])
    else_graph = helper.make_graph(
        [mk("Constant", [], ["e"], value=onnx.numpy_helper.from_array(
            np.zeros((1, 6), np.float32), "z"))], "else", [], [value("e", [1, 6])])
    path = make_model(
        tmp_path / "m.onnx",
        [mk("If", ["cond"], ["y"], name="branch", then_branch=then_graph,
            else_branch=else_graph)],
        [value("cond", [], BOOL), value("x", [1, 8])], [value("y", [1, 6])], [init("W", w)],
    )
    result = audit(path)
    row = only_row(result)
    assert row_summary(row) == flags(8, 6, 2)
    assert row.layer.scope.startswith("branch/then_branch")
    assert row.layer.nodes[0].endswith("inner_mm")
    assert row.layer.roots == ("W",)
    # W1 is not followed into the branch: the report says so in words ("W1: None (row
    # None), reached by x -> ?" before).
    from onnxcollide.report.fields import first_layer_lines

    lines = first_layer_lines(result)
    assert lines[0] == "W1: none reached from input 'x' in the main graph (see the note)"
    assert "If/Loop/Scan bodies are not followed" in lines[2]


def test_loop_body_matmul_with_outer_weight(tmp_path, rng):
    """A MatMul in a Loop body (carried state @ outer initializer) is audited once."""
    w = irank(rng, 8, 8, 3).astype(np.float32)
    body = helper.make_graph(
        [mk("Identity", ["cond_in"], ["cond_out"]),
         mk("MatMul", ["h", "W"], ["h_next"], name="step")],
        "body",
        [value("i", [], onnx.TensorProto.INT64), value("cond_in", [], BOOL), value("h", [1, 8])],
        [value("cond_out", [], BOOL), value("h_next", [1, 8])],
    )
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)],
        [value("x", [1, 8])], [value("y", [1, 8])],
        [init("W", w), init("trips", np.int64(2)), init("go", np.bool_(True))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(8, 8, 3)
    assert row.layer.scope == "loop/body"
    assert row.layer.nodes == ("loop/body/step",)


def test_model_local_function_with_gemm(tmp_path, rng):
    """A Gemm inside a model-local function (weight passed in from the main graph) is found."""
    w = irank(rng, 12, 8, 3).astype(np.float32)
    function = helper.make_function(
        "local.test", "Dense", ["X", "Wf"], ["Y"],
        [mk("Gemm", ["X", "Wf"], ["Y"], transB=0)],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Dense", ["x", "W"], ["y"], domain="local.test")],
        [value("x", [1, 12])], [value("y", [1, 8])], [init("W", w)],
        functions=[function], extra_opsets=[("local.test", 1)],
    )
    row = only_row(audit(path))
    assert row.layer.op == "Gemm"
    assert row_summary(row) == flags(12, 8, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], w.astype(np.float64))


def test_function_with_constant_weight_inside(tmp_path, rng):
    """A model-local function holding its own Constant weight feeding a MatMul."""
    w = irank(rng, 12, 8, 2).astype(np.float32)
    function = helper.make_function(
        "local.test", "Proj", ["X"], ["Y"],
        [mk("Constant", [], ["Wc"], value=onnx.numpy_helper.from_array(w, "Wc")),
         mk("MatMul", ["X", "Wc"], ["Y"])],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = make_model(
        tmp_path / "m.onnx", [mk("Proj", ["x"], ["y"], domain="local.test")],
        [value("x", [1, 12])], [value("y", [1, 8])],
        functions=[function], extra_opsets=[("local.test", 1)],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(12, 8, 2)


# ------------------------------------------------------------------ external data


def _save_pair(tmp_path, rng) -> tuple[str, str]:
    """The same Conv + Gemm model saved inline and with external data in w.bin."""
    conv = conv_weight(irank(rng, 27, 8, 5), 8, (3, 3, 3)).astype(np.float32)
    fc = irank(rng, 8 * 36, 10, 7).astype(np.float32)
    model = build_model(
        [mk("Conv", ["x", "Wc"], ["c"]), mk("Flatten", ["c"], ["f"]),
         mk("MatMul", ["f", "Wf"], ["y"])],
        [value("x", [1, 3, 8, 8])], [value("y", [1, 10])],
        [init("Wc", conv), init("Wf", fc)],
    )
    inline = str(tmp_path / "inline.onnx")
    onnx.save(model, inline)
    ext_dir = tmp_path / "ext"
    ext_dir.mkdir()
    external = str(ext_dir / "model.onnx")
    onnx.save(model, external, save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    return inline, external


def test_external_data_audits_like_inline(tmp_path, rng):
    """Weights in an external w.bin (memory-mapped) give the same rows as inline weights."""
    inline, external = _save_pair(tmp_path, rng)
    assert os.path.exists(os.path.join(os.path.dirname(external), "w.bin"))
    assert os.path.getsize(external) < os.path.getsize(inline)
    a, b = audit(inline), audit(external)
    assert [row_summary(r) for r in a.rows] == [row_summary(r) for r in b.rows]
    assert [r.decision for r in a.rows] == [r.decision for r in b.rows]
    assert a.metrics == b.metrics
    assert [row_summary(r)[3] for r in a.rows] == [5, 7]


def test_external_data_missing_file(tmp_path, rng):
    """w.bin deleted: a ModelLoadError naming the file, not a crash."""
    _, external = _save_pair(tmp_path, rng)
    os.remove(os.path.join(os.path.dirname(external), "w.bin"))
    with pytest.raises(ModelLoadError, match=r"w\.bin"):
        audit(external)


@pytest.mark.parametrize("location", ["../outside.bin", "ABSOLUTE"], ids=["parent", "absolute"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, rng, location):
    """A location that leaves the model's folder is refused, as ONNX and ONNX Runtime do (it
    was read, and '../../usr/bin/ls' gave 'weight contains NaN')."""
    _, external = _save_pair(tmp_path, rng)
    folder = os.path.dirname(external)
    outside = tmp_path / "outside.bin"
    os.replace(os.path.join(folder, "w.bin"), outside)
    model = onnx.load(external, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(outside) if location == "ABSOLUTE" else location
    onnx.save(model, external)
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        audit(external)


def test_external_data_without_a_location_is_named_so(tmp_path, rng):
    """A record with no 'location' entry read as location '' and was reported as pointing
    outside the model's folder; it names the missing location now."""
    _, external = _save_pair(tmp_path, rng)
    model = onnx.load(external, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.key = "lxcation"
    onnx.save(model, external)
    with pytest.raises(ModelLoadError, match="external but its record names no location"):
        audit(external)


@pytest.mark.parametrize("marker", [b"w.bin", b"location"])
def test_external_data_entry_that_is_not_utf8_is_a_corrupt_file(tmp_path, rng, marker):
    """A location (or a key) that is not valid UTF-8 came back from protobuf as bytes, and
    joining it into a path was an internal error (TypeError)."""
    _, external = _save_pair(tmp_path, rng)
    with open(external, "rb") as handle:
        data = handle.read()
    assert marker in data
    with open(external, "wb") as handle:
        handle.write(data.replace(marker, b"\xec" + marker[1:]))
    with pytest.raises(ModelLoadError, match="is not valid UTF-8 text: the file is corrupt"):
        audit(external)


def test_external_data_truncated_file(tmp_path, rng):
    """w.bin cut short: a ModelLoadError saying it is shorter than the tensor needs."""
    _, external = _save_pair(tmp_path, rng)
    bin_path = os.path.join(os.path.dirname(external), "w.bin")
    with open(bin_path, "r+b") as handle:
        handle.truncate(os.path.getsize(bin_path) // 2)
    with pytest.raises(ModelLoadError, match="shorter"):
        audit(external)


def test_external_data_length_that_does_not_fit_the_tensor(tmp_path, rng):
    """A 'length' record that disagrees with the tensor's size is a corrupt model (onnx.load
    refuses it too); it was accepted."""
    _, external = _save_pair(tmp_path, rng)
    model = onnx.load(external, load_external_data=False)
    record = next(e for e in model.graph.initializer[0].external_data if e.key == "length")
    record.value = "999999"
    onnx.save(model, external)
    with pytest.raises(ModelLoadError, match="external data length 999999 does not match"):
        audit(external)


# ------------------------------------------------------------------ what is skipped


def test_dynamic_weight_is_skipped(tmp_path, rng):
    """h @ z with both operands variable (attention-like) is listed in skipped, not audited."""
    w = irank(rng, 8, 8, 8).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "W"], ["h"], name="proj"),
         mk("MatMul", ["h", "z"], ["y"], name="scores")],
        [value("x", [4, 8]), value("z", [8, 4])], [value("y", [4, 4])], [init("W", w)],
    )
    result = audit(path)
    row = only_row(result)
    assert row.layer.nodes == ("proj",)
    assert [(s.label, s.op_type) for s in result.skipped] == [("scores", "MatMul")]
    assert "no operand is constant" in result.skipped[0].reason


def test_constant_times_constant_is_skipped(tmp_path, rng):
    """A MatMul of two initializers is constant folding, not a layer: skipped."""
    w = irank(rng, 8, 8, 8).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["A", "B"], ["W"], name="fold"), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [4, 8])], [value("y", [4, 8])], [init("A", w), init("B", w)],
    )
    result = audit(path)
    assert len(result.rows) == 1
    assert [s.label for s in result.skipped] == ["fold"]
    assert "both operands are constant" in result.skipped[0].reason


def test_weights_of_ops_that_are_not_analysed_are_listed(tmp_path, rng):
    """An LSTM, an Einsum with a weight, ONNX Runtime's MatMulNBits and FusedConv and a
    custom-domain op that read constant matrices are listed as skipped, with their weight
    names and what to do (they vanished without a word). The LSTM's bias and initial states
    are not weights; a Gather of an embedding table and a bias Add are not layers."""
    hidden, size = 3, 4
    w = rng.standard_normal((1, 4 * hidden, size)).astype(np.float32)
    r = rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("LSTM", ["x", "W", "R", "B", "", "h0"], ["seq"], hidden_size=hidden, name="lstm"),
         mk("Einsum", ["x", "E"], ["e"], equation="tbi,ij->tbj", name="einsum"),
         mk("MatMulNBits", ["x", "Q4", "S"], ["n"], domain="com.microsoft", K=4, N=2,
            bits=4, block_size=16, name="nbits"),
         mk("FusedConv", ["img", "K"], ["c"], domain="com.microsoft", name="fused"),
         mk("Mystery", ["x", "M"], ["z"], domain="acme", name="custom"),
         mk("Gather", ["T", "ids"], ["g"], name="embed"), mk("Add", ["x", "x2"], ["a"]),
         mk("MatMul", ["a", "V"], ["y"], name="head")],
        [value("x", [2, 1, size]), value("img", [1, 1, 4, 4]),
         value("ids", [3], onnx.TensorProto.INT64)],
        [value(n, None) for n in ("seq", "e", "n", "c", "z", "g", "y")],
        [init("W", w), init("R", r), init("B", np.zeros((1, 8 * hidden), np.float32)),
         init("h0", np.zeros((1, 1, hidden), np.float32)),
         init("E", np.eye(size, dtype=np.float32)),
         init("Q4", np.zeros((2, 1, 8), np.uint8)), init("S", np.ones((2, 1), np.float32)),
         init("K", np.ones((1, 1, 3, 3), np.float32)), init("M", np.ones((4, 4), np.float32)),
         init("T", np.ones((5, 4), np.float32)), init("x2", np.ones((2, 1, size), np.float32)),
         init("V", np.eye(size, dtype=np.float32))],
        extra_opsets=[("com.microsoft", 1), ("acme", 1)], check=False,
    )
    result = audit(path)
    assert only_row(result).layer.nodes == ("head",)
    skipped = {s.label: s for s in result.skipped}
    assert [s.op_type for s in skipped.values()] == ["LSTM", "Einsum", "MatMulNBits",
                                                     "FusedConv", "acme.Mystery"]
    assert "'W', 'R':" in skipped["lstm"].reason and "'B'" not in skipped["lstm"].reason
    assert "as MatMul or Gemm" in skipped["einsum"].reason
    assert "QDQ format" in skipped["nbits"].reason
    assert "before ONNX Runtime's graph optimizations" in skipped["fused"].reason
    assert "domain 'acme'" in skipped["custom"].reason and "'M'" in skipped["custom"].reason


def test_weight_holding_op_before_w1_hides_nullity_w1(tmp_path, rng):
    """x -> LSTM -> Squeeze -> MatMul: the LSTM holds the model's first weight, which is not
    analysed, so nullity(W1) is not given (it was the MatMul's, 2, unflagged); the summary
    counts the skipped op, and a note says why."""
    hidden = 4
    path = make_model(
        tmp_path / "m.onnx",
        [mk("LSTM", ["x", "W", "R"], ["seq", "h"], hidden_size=hidden, name="lstm"),
         mk("Squeeze", ["h", "axes"], ["s"]), mk("MatMul", ["s", "V"], ["y"], name="head")],
        [value("x", [5, 1, 3])], [value("y", [1, 2])],
        [init("W", rng.standard_normal((1, 4 * hidden, 3)).astype(np.float32)),
         init("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
         ints("axes", [0]), init("V", rng.standard_normal((hidden, 2)).astype(np.float32))],
    )
    result = audit(path)
    assert only_row(result).nullity == 2
    assert result.metrics.nullity_w1 is None
    assert (result.metrics.skipped_weights, result.metrics.unclear) == (1, 0)
    assert any(n.startswith("nullity(W1) is not given: the input passes through LSTM 'lstm'")
               for n in result.notes)


def test_no_w1_reached_with_a_skipped_weight_gives_no_nullity_w1(tmp_path, rng):
    """x -> LSTM, whose output reaches the MatMul only through Shape: no W1 is reached, and
    row 1 (the MatMul) no longer stands in for nullity(W1), since the LSTM's weight may be
    the model's first; the JSON's skipped entries say which hold weights."""
    hidden = 4
    path = make_model(
        tmp_path / "m.onnx",
        [mk("LSTM", ["x", "W", "R"], ["seq", "h"], hidden_size=hidden, name="lstm"),
         mk("Shape", ["h"], ["shape"]), mk("Cast", ["shape"], ["shapef"], to=1),
         mk("Unsqueeze", ["shapef", "axes"], ["u"]), mk("MatMul", ["u", "V"], ["y"]),
         mk("MatMul", ["y", "y2"], ["z"], name="scores")],
        [value("x", [5, 1, 3]), value("y2", [2, 2])], [value("z", [1, 2])],
        [init("W", rng.standard_normal((1, 4 * hidden, 3)).astype(np.float32)),
         init("R", rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32)),
         ints("axes", [0]), init("V", rng.standard_normal((3, 2)).astype(np.float32))],
    )
    result = audit(path)
    assert result.metrics.nullity_w1 is None and result.metrics.skipped_weights == 1
    assert any("no linear op is reached from a model input" in n and "LSTM 'lstm'" in n
               for n in result.notes)
    from onnxcollide.report.json_format import model_dict

    flags = {s["node"]: s["holds_weights"] for s in model_dict(result)["skipped"]}
    assert flags == {"lstm": True, "scores": False}


def test_skipped_op_off_the_input_path_keeps_nullity_w1(tmp_path, rng):
    """An Einsum with a weight on a side branch is counted as skipped, but W1 (reached from
    the input directly) keeps its nullity."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "V"], ["y"], name="head"),
         mk("Einsum", ["y", "E"], ["z"], equation="bi,ij->bj", name="side")],
        [value("x", [1, 6])], [value("y", [1, 4]), value("z", [1, 4])],
        [init("V", irank(rng, 6, 4, 3).astype(np.float32)),
         init("E", np.eye(4, dtype=np.float32))],
    )
    result = audit(path)
    assert (result.metrics.nullity_w1, result.metrics.skipped_weights) == (3, 1)


def test_unclear_rows_are_counted(tmp_path):
    """A singular value 3x above tol (margin 3, under 10) makes a row unclear; the metrics
    count it."""
    eps = float(np.finfo(np.float32).eps)
    sigmas = np.array([1.0, 0.5, 3 * 4 * eps], np.float64)
    w = np.diag(sigmas).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"], name="mm")],
                      [value("x", [1, 3])], [value("y", [1, 3])], [init("W", w)])
    result = audit(path)
    row = only_row(result)
    assert row.rank == 3 and not row.clear
    assert result.metrics.unclear == 1


def test_weight_behind_an_op_that_is_not_evaluated_says_which(tmp_path, rng):
    """An initializer through a custom-domain op into a MatMul: the weight is made of
    constants, but the custom op is not evaluated; the skip names it (it said "no operand is
    constant (e.g. attention scores)")."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Weird", ["T"], ["W"], domain="acme", name="weird"),
         mk("MatMul", ["x", "W"], ["y"], name="mm"), mk("MatMul", ["x", "V"], ["z"])],
        [value("x", [2, 4])], [value("y", None), value("z", None)],
        [init("T", np.ones((4, 3), np.float32)), init("V", np.eye(4, dtype=np.float32))],
        extra_opsets=[("acme", 1)], check=False,
    )
    result = audit(path)
    (skipped,) = result.skipped
    assert skipped.label == "mm"
    assert "computed from constants by acme.Weird 'weird' (domain 'acme')" in skipped.reason


def test_onnx_runtime_ops_without_weights_are_not_listed(tmp_path, rng):
    """ONNX Runtime's EmbedLayerNormalization (embedding tables) and RotaryEmbedding (int64
    position ids, cos/sin caches) hold no layer weights, nor does a custom op's integer index
    table: none is listed as skipped. Its Attention's packed QKV weight is."""
    d = 8
    f32 = np.float32
    path = make_model(
        tmp_path / "m.onnx",
        [mk("EmbedLayerNormalization", ["ids", "", "word", "pos", "", "gamma", "beta"],
            ["emb", "mask"], domain="com.microsoft", name="embed"),
         mk("RotaryEmbedding", ["emb", "pos_ids", "cos", "sin"], ["rot"],
            domain="com.microsoft", name="rotary"),
         mk("Attention", ["rot", "qkv", "qkv_b"], ["att"], domain="com.microsoft", num_heads=2,
            name="attention"),
         mk("Lookup", ["att", "index"], ["looked"], domain="acme", name="lookup"),
         mk("MatMul", ["looked", "W"], ["y"], name="head")],
        [value("ids", [1, 4], onnx.TensorProto.INT32)], [value("y", None)],
        [init("word", np.ones((50, d), f32)), init("pos", np.ones((16, d), f32)),
         init("gamma", np.ones(d, f32)), init("beta", np.zeros(d, f32)),
         init("pos_ids", np.zeros((1, 4), np.int64)), init("cos", np.ones((16, 2), f32)),
         init("sin", np.ones((16, 2), f32)), init("qkv", np.ones((d, 3 * d), f32)),
         init("qkv_b", np.zeros(3 * d, f32)), init("index", np.zeros((4, 2), np.int64)),
         init("W", np.eye(d, dtype=f32))],
        extra_opsets=[("com.microsoft", 1), ("acme", 1)], check=False,
    )
    result = audit(path)
    assert [(s.label, s.holds_weights) for s in result.skipped] == [("attention", True)]
    assert "'qkv'" in result.skipped[0].reason and "'qkv_b'" not in result.skipped[0].reason


def test_deep_graphs_and_reused_values_stay_cheap(tmp_path):
    """1500 nodes before an attention-score MatMul (both operands computed): the walk back
    for an unevaluated op is bounded and iterative (it hit Python's recursion limit). A
    weight built by 40 doublings of one value (a DAG reusing it) gets a short identity at
    once (it grew as 2^40)."""
    nodes = [mk("Relu", ["x" if k == 0 else f"h{k - 1}"], [f"h{k}"]) for k in range(1500)]
    nodes.append(mk("MatMul", ["h1499", "h1499"], ["scores"], name="scores"))
    nodes += [mk("Add", ["w" if k == 0 else f"t{k - 1}"] * 2, [f"t{k}"]) for k in range(40)]
    nodes.append(mk("MatMul", ["scores", "t39"], ["y"], name="proj"))
    path = make_model(tmp_path / "m.onnx", nodes, [value("x", [4, 4])], [value("y", [4, 4])],
                      [init("w", np.eye(4, dtype=np.float32))])
    result = audit(path)
    row = only_row(result)
    assert row.layer.nodes == ("proj",) and len(row.layer.weight_id) < 64
    assert [s.label for s in result.skipped] == ["scores"]


def test_declared_shapes_decide_what_counts_as_a_weight(tmp_path, rng):
    """What the skip rules call a weight comes from declared shapes, without loading values:
    a custom op's Reshape-made float matrix is one; an Einsum's Constant(value_floats) vector
    is not; a Cast without 'to' (an invalid model) is not read and does not crash."""
    f32 = np.float32
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Reshape", ["W16", "shape"], ["Wr"]),
         mk("Foo", ["x", "Wr"], ["a"], domain="my.dom", name="reshaped"),
         mk("Constant", [], ["s"], value_floats=[1.0, 2.0, 3.0, 4.0]),
         mk("Einsum", ["x", "s"], ["b"], equation="bi,i->b", name="vector"),
         mk("Cast", ["V"], ["Vc"]), mk("Bar", ["x", "Vc"], ["c"], domain="my.dom", name="cast"),
         mk("MatMul", ["x", "M"], ["y"], name="mm")],
        [value("x", [2, 4])], [value(n, None) for n in ("a", "b", "c", "y")],
        [init("W16", np.ones(16, f32)), ints("shape", [4, 4]), init("V", np.ones((4, 4), f32)),
         init("M", np.eye(4, dtype=f32))],
        extra_opsets=[("my.dom", 1)], check=False,
    )
    result = audit(path)
    assert [s.label for s in result.skipped] == ["reshaped"]


def test_a_weight_behind_thousands_of_identity_nodes(tmp_path, rng):
    """3000 Identity nodes between an initializer and its MatMul (value() recursed once per
    node and hit Python's limit at about 450)."""
    w = irank(rng, 6, 4, 2).astype(np.float32)
    chain = [mk("Identity", ["W" if k == 0 else f"w{k - 1}"], [f"w{k}"]) for k in range(3000)]
    path = make_model(tmp_path / "m.onnx", [*chain, mk("MatMul", ["x", "w2999"], ["y"])],
                      [value("x", [1, 6])], [value("y", [1, 4])], [init("W", w)])
    assert row_summary(only_row(audit(path))) == flags(6, 4, 2)


def test_a_weight_behind_thousands_of_transpose_nodes(tmp_path, rng):
    """2001 Transpose nodes fold into a MatMul weight (value() recursed once per folded op
    other than Identity and hit Python's limit at about 450); an odd count transposes it."""
    w = irank(rng, 4, 6, 2).astype(np.float32)
    chain = [mk("Transpose", ["W" if k == 0 else f"w{k - 1}"], [f"w{k}"], perm=[1, 0])
             for k in range(2001)]
    path = make_model(tmp_path / "m.onnx", [*chain, mk("MatMul", ["x", "w2000"], ["y"])],
                      [value("x", [1, 6])], [value("y", [1, 4])], [init("W", w)])
    assert row_summary(only_row(audit(path))) == flags(6, 4, 2)


def test_a_weight_built_from_a_value_reused_at_every_level(tmp_path, rng):
    """w_k+1 = w_k + w_k, 40 levels, on a weight too large for the small-value cache: each op
    is evaluated once (recursion evaluated 2^40 of them)."""
    w = irank(rng, 500, 600, 200).astype(np.float32)
    adds = [mk("Add", [f"w{k}", f"w{k}"], [f"w{k + 1}"]) for k in range(40)]
    path = make_model(tmp_path / "m.onnx", [*adds, mk("MatMul", ["x", "w40"], ["y"])],
                      [value("x", [1, 500])], [value("y", [1, 600])], [init("w0", w)])
    assert row_summary(only_row(audit(path))) == flags(500, 600, 200)


def test_a_model_of_unanalysed_ops_says_which_in_its_error(tmp_path, rng):
    """Nothing analysable but an Einsum with a weight: the one-line error names it and why."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Einsum", ["x", "E"], ["y"], equation="bi,ij->bj", name="contract")],
        [value("x", [2, 4])], [value("y", [2, 3])],
        [init("E", rng.standard_normal((4, 3)).astype(np.float32))],
    )
    with pytest.raises(UnsupportedModelError, match="1 op holds weights that are not analysed "
                                                    r"\(Einsum 'contract': holds the weights 'E'"):
        audit(path)
    # A MatMul of two activations holds no weight: the error does not say it does.
    scores = make_model(tmp_path / "s.onnx", [mk("MatMul", ["x", "x"], ["y"])],
                        [value("x", [4, 4])], [value("y", [4, 4])])
    with pytest.raises(UnsupportedModelError) as error:
        audit(scores)
    assert "not analysed" not in str(error.value) and "with a constant weight" in str(error.value)


def test_onnx_runtime_dequantize_linear_chain_is_a_weight(tmp_path, rng):
    """Older ONNX Runtime QDQ exports (16-bit and 4-bit weights) use its com.microsoft
    DequantizeLinear, which computes what ONNX's does: the MatMul's weight is constant (it was
    skipped as computed at run time)."""
    m = irank(rng, 8, 6, 3)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("DequantizeLinear", ["Q", "s"], ["W"], domain="com.microsoft"),
         mk("MatMul", ["x", "W"], ["y"], name="mm")],
        [value("x", [2, 8])], [value("y", [2, 6])],
        [init("Q", m.astype(np.int16)), init("s", np.float32(0.25))],
        extra_opsets=[("com.microsoft", 1)], check=False,
    )
    row = only_row(audit(path))
    assert row.layer.chain == ("DequantizeLinear",)
    assert row_summary(row) == flags(8, 6, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], 0.25 * m)


def test_fused_weight_split_into_three_is_three_rows(tmp_path, rng):
    """qkv (8, 24) -> Split -> Wq, Wk, Wv (ranks 2, 4, 8) -> three MatMuls: three rows."""
    qkv = np.concatenate([irank(rng, 8, 8, r) for r in (2, 4, 8)], axis=1).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Split", ["qkv", "sizes"], ["wq", "wk", "wv"], axis=1),
         mk("MatMul", ["x", "wq"], ["q"], name="mq"), mk("MatMul", ["x", "wk"], ["k"], name="mk"),
         mk("MatMul", ["x", "wv"], ["v"], name="mv"),
         mk("Add", ["q", "k"], ["s"]), mk("Add", ["s", "v"], ["y"])],
        [value("x", [1, 8])], [value("y", [1, 8])], [init("qkv", qkv), ints("sizes", [8, 8, 8])],
    )
    result = audit(path)
    assert [r.layer.nodes for r in result.rows] == [("mq",), ("mk",), ("mv",)]
    assert [r.rank for r in result.rows] == [2, 4, 8]


def test_same_local_name_in_sibling_branches_is_two_parameters(tmp_path, rng):
    """then: Constant 'W' of rank 2; else: another Constant 'W' of rank 5: two rows."""

    def branch(name: str, rank: int) -> onnx.GraphProto:
        w = irank(rng, 8, 6, rank).astype(np.float32)
        return helper.make_graph(
            [mk("Constant", [], ["W"], value=onnx.numpy_helper.from_array(w, "W")),
             mk("MatMul", ["x", "W"], [f"{name}_out"], name="mm")],
            name, [], [value(f"{name}_out", [1, 6])])

    path = make_model(
        tmp_path / "m.onnx",
        [mk("If", ["cond"], ["y"], name="br", then_branch=branch("then", 2),
            else_branch=branch("else", 5))],
        [value("cond", [], BOOL), value("x", [1, 8])], [value("y", [1, 6])],
    )
    result = audit(path)
    assert len(result.rows) == 2
    assert sorted(r.rank for r in result.rows) == [2, 5]


def _constant_branch(rng: np.random.Generator, name: str, rank: int) -> onnx.GraphProto:
    """An If branch: x (outer, [1, 8]) @ Constant 'W' (8 x 6, integer rank ``rank``)."""
    w = irank(rng, 8, 6, rank).astype(np.float32)
    return helper.make_graph(
        [mk("Constant", [], ["W"], value=onnx.numpy_helper.from_array(w, "W")),
         mk("MatMul", ["x", "W"], [f"{name}_out"])], name, [], [value(f"{name}_out", [1, 6])])


def _zeros_branch(name: str) -> onnx.GraphProto:
    """An If branch that outputs zeros [1, 6] (no weight)."""
    return helper.make_graph([mk("Constant", [], [f"{name}_out"], value=onnx.numpy_helper
                                 .from_array(np.zeros((1, 6), np.float32), "z"))],
                             name, [], [value(f"{name}_out", [1, 6])])


def _if_nodes_model(path: os.PathLike, rng: np.random.Generator, blocks: list[tuple[str, int]]
                    ) -> str:
    """One If node per (name, rank) in ``blocks``: its then-branch multiplies x by its own
    Constant 'W' of that rank, its else-branch gives zeros; the outputs are summed."""
    nodes = [mk("If", ["cond"], [f"o{k}"], name=name,
                then_branch=_constant_branch(rng, f"t{k}", rank),
                else_branch=_zeros_branch(f"e{k}"))
             for k, (name, rank) in enumerate(blocks)]
    total = "o0"
    for k in range(1, len(blocks)):
        nodes.append(mk("Add", [total, f"o{k}"], [f"s{k}"]))
        total = f"s{k}"
    return make_model(path, nodes, [value("cond", [], BOOL), value("x", [1, 8])],
                      [value(total, [1, 6])])


def test_same_named_if_nodes_keep_their_branch_weights_apart(tmp_path, rng):
    """Two If nodes named alike (ONNX allows it), each branch with its own Constant 'W' of
    rank 2 and 5: two parameters, not one (their scope labels were both 'blk/then_branch')."""
    result = audit(_if_nodes_model(tmp_path / "m.onnx", rng, [("blk", 2), ("blk", 5)]))
    assert [r.rank for r in result.rows] == [2, 5]
    assert [r.layer.nodes for r in result.rows] == [("blk#0/then_branch/MatMul:t0_out",),
                                                    ("blk#1/then_branch/MatMul:t1_out",)]


def test_renamed_nodes_do_not_take_a_name_already_in_the_graph(tmp_path, rng):
    """If nodes named blk, blk and blk#1: the second 'blk' would become 'blk#1', the third
    node's own name, and two branches' weights merged again; it becomes 'blk#1#1'."""
    result = audit(_if_nodes_model(tmp_path / "m.onnx", rng,
                                   [("blk", 2), ("blk", 5), ("blk#1", 3)]))
    assert [r.rank for r in result.rows] == [2, 5, 3]
    assert [r.layer.nodes[0].split("/")[0] for r in result.rows] == ["blk#0", "blk#1#1",
                                                                      "blk#1"]


def test_w1_row_of_same_named_nodes_is_the_one_reached(tmp_path, rng):
    """Two Gemm nodes both named 'fc': W1 is the one reached first from the input (the second
    in graph order), and the summary's nullity(W1) is its row's, not the first 'fc' row's."""
    far = irank(rng, 6, 8, 2).astype(np.float32)  # reached through two Relus
    near = irank(rng, 6, 8, 5).astype(np.float32)  # reached directly: W1
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Relu", ["x"], ["r1"]), mk("Relu", ["r1"], ["r2"]),
         mk("Gemm", ["r2", "Wfar"], ["a"], name="fc", transB=1),
         mk("Gemm", ["x", "Wnear"], ["b"], name="fc", transB=1),
         mk("Add", ["a", "b"], ["y"])],
        [value("x", [1, 8])], [value("y", [1, 6])], [init("Wfar", far), init("Wnear", near)],
    )
    result = audit(path)
    assert [r.rank for r in result.rows] == [2, 5]
    assert result.first_layer is not None and result.first_layer.node == "fc#3"
    assert result.first_layer.row_index == 2
    assert result.metrics.nullity_w1 == 8 - 5


def test_blocked_dequantize_linear(tmp_path, rng):
    """Opset 21 DequantizeLinear with block_size 2 along axis 0: W equals the reference
    dequantization, and its rank is that of the dequantized matrix."""
    m = irank(rng, 8, 6, 3)
    scale = (0.01 * (1 + rng.integers(0, 5, size=(4, 6)))).astype(np.float32)
    zero = rng.integers(-2, 3, size=(4, 6)).astype(np.int8)
    wq = (m + np.repeat(zero, 2, axis=0)).astype(np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("DequantizeLinear", ["wq", "s", "z"], ["W"], axis=0, block_size=2),
         mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 8])], [value("y", [1, 6])],
        [init("wq", wq), init("s", scale), init("z", zero)], opset=21,
    )
    expected = ReferenceEvaluator(path).run(
        None, {"x": np.eye(8, dtype=np.float32)})[0].astype(np.float64)
    row = only_row(audit(path))
    np.testing.assert_allclose(blocks_of(row)[0], expected, rtol=1e-6)
    assert row.rank == np.linalg.matrix_rank(expected)
    assert row.layer.chain == ("DequantizeLinear",)


def test_dequantize_linear_output_dtype(tmp_path, rng):
    """Opset 23 DequantizeLinear with output_dtype float16 and a float32 scale: W is the
    float32 product rounded once to float16 (as ONNX Runtime and onnx.reference compute it),
    and float16's eps sets the tolerance."""
    wq = rng.integers(-100, 100, size=(8, 6)).astype(np.int8)
    scale = np.array(0.0123456, dtype=np.float32)  # not a float16 value
    path = make_model(
        tmp_path / "m.onnx",
        [mk("DequantizeLinear", ["wq", "s"], ["W"], output_dtype=helper.np_dtype_to_tensor_dtype(
            np.dtype(np.float16))),
         mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 8], onnx.TensorProto.FLOAT16)],
        [value("y", [1, 6], onnx.TensorProto.FLOAT16)],
        [init("wq", wq), init("s", scale)], opset=23,
    )
    expected = (wq.astype(np.float32) * scale).astype(np.float16)
    row = only_row(audit(path))
    assert row.layer.compute_dtype == "float16"
    np.testing.assert_array_equal(blocks_of(row)[0], expected.astype(np.float64))


def test_dequantize_16_bit_weights_to_float16_do_not_overflow(tmp_path, rng):
    """uint16 weights with a float16 scale (opset 21): x * scale is formed in float32 and
    rounded once, so values above float16's range (65504) do not become inf."""
    wq = rng.integers(60000, 65536, size=(8, 6)).astype(np.uint16)
    scale = np.array(1e-4, dtype=np.float16)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("DequantizeLinear", ["wq", "s"], ["W"]), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [1, 8], onnx.TensorProto.FLOAT16)],
        [value("y", [1, 6], onnx.TensorProto.FLOAT16)],
        [init("wq", wq), init("s", scale)], opset=21,
    )
    expected = (wq.astype(np.float32) * np.float32(scale)).astype(np.float16)
    row = only_row(audit(path))
    np.testing.assert_array_equal(blocks_of(row)[0], expected.astype(np.float64))


def test_conv_with_runtime_weight_is_skipped(tmp_path, rng):
    """A Conv whose weight is a graph input is skipped ('not constant'), the rest is audited."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Conv", ["x", "k"], ["c"], name="dynamic_conv"), mk("Flatten", ["c"], ["f"]),
         mk("MatMul", ["f", "W"], ["y"], name="fc")],
        [value("x", [1, 2, 4, 4]), value("k", [3, 2, 3, 3])], [value("y", [1, 5])],
        [init("W", irank(rng, 12, 5, 5).astype(np.float32))],
    )
    result = audit(path)
    assert [r.layer.nodes for r in result.rows] == [("fc",)]
    assert [(s.label, s.op_type) for s in result.skipped] == [("dynamic_conv", "Conv")]
    assert "not constant" in result.skipped[0].reason


def test_conv_groups_not_dividing_the_weight_is_a_clear_error(tmp_path, rng):
    """group=3 with 4 output channels cannot be split into blocks: UnsupportedModelError."""
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    path = make_model(tmp_path / "m.onnx", [mk("Conv", ["x", "W"], ["y"], group=3, name="bad")],
                      [value("x", [1, 3, 8, 8])], [value("y", [1, 4, 6, 6])], [init("W", w)])
    with pytest.raises(UnsupportedModelError, match="divisible"):
        audit(path)


# ----------------------------------------------- review findings (each failed before its fix)


@pytest.mark.parametrize("axis", [-3, 1])
def test_flatten_with_negative_axis_folds_like_onnx(tmp_path, rng, axis):
    """Flatten(axis=-3) of an (8, 5, 1, 1) weight is (8, 5), as Flatten(axis=1): a negative
    axis counts from the rank (it was folded at axis 2, an (8*5, 1) column)."""
    w = irank(rng, 8, 5, 3).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Flatten", ["w4"], ["W"], axis=axis), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [2, 8])], [value("y", [2, 5])], [init("w4", w.reshape(8, 5, 1, 1))],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(8, 5, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], w)


def test_subgraph_initializer_shadowing_a_main_name_has_its_own_shape(tmp_path, rng):
    """An If branch defines its own 'W' (6 x 3, rank 1) while the main graph's 'W' is 8 x 5:
    the branch row is 6 x 3 (shapes were looked up by bare name in the main graph)."""
    main_w, branch_w = irank(rng, 8, 5, 3), irank(rng, 6, 3, 1)
    then_graph = helper.make_graph([mk("MatMul", ["x6", "W"], ["t"], name="inner")], "then", [],
                                   [value("t", [2, 3])], initializer=[init("W", branch_w)])
    else_graph = helper.make_graph([mk("Identity", ["z"], ["e"])], "else", [],
                                   [value("e", [2, 3])])
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "W"], ["y"], name="outer"),
         mk("If", ["cond"], ["y2"], name="branch", then_branch=then_graph,
            else_branch=else_graph)],
        [value("x", [2, 8]), value("x6", [2, 6]), value("z", [2, 3]), value("cond", [], BOOL)],
        [value("y", [2, 5]), value("y2", [2, 3])], [init("W", main_w.astype(np.float32))],
    )
    rows = {r.layer.nodes[0]: r for r in audit(path).rows}
    assert row_summary(rows["outer"]) == flags(8, 5, 3)
    assert row_summary(rows["branch/then_branch/inner"]) == flags(6, 3, 1)


def test_stack_in_a_subgraph_uses_the_subgraph_data_shape(tmp_path, rng):
    """Relu(x) (2, 8) @ W (3, 8, 2) inside an If branch: the data is broadcast, so
    W = [W1 W2 W3] (8 x 6); the shape of the branch's own tensor comes from shape inference
    inside the branch (it was 'unknown', and block diagonal was assumed)."""
    w = np.stack([irank(rng, 8, 2, 2) for _ in range(3)]).astype(np.float32)
    then_graph = helper.make_graph([mk("Relu", ["x"], ["xr"]),
                                    mk("MatMul", ["xr", "W"], ["t"], name="inner")], "then", [],
                                   [value("t", [3, 2, 2])], initializer=[init("W", w)])
    else_graph = helper.make_graph([mk("Identity", ["z"], ["e"])], "else", [],
                                   [value("e", [3, 2, 2])])
    path = make_model(
        tmp_path / "m.onnx",
        [mk("If", ["cond"], ["y"], name="branch", then_branch=then_graph,
            else_branch=else_graph)],
        [value("x", [2, 8]), value("z", [3, 2, 2]), value("cond", [], BOOL)],
        [value("y", [3, 2, 2])],
    )
    row = only_row(audit(path))
    assert row_summary(row) == flags(8, 6, 6)
    assert "side by side" in row.layer.layout


def test_constant_node_with_external_data_loads_from_another_folder(tmp_path, rng, monkeypatch):
    """A Constant node's tensor stored as external data resolves against the model's folder,
    not the working directory (it failed with a raw onnx ValidationError)."""
    w = irank(rng, 8, 5, 3).astype(np.float32)
    model = build_model(
        [mk("Constant", [], ["W"], value=onnx.numpy_helper.from_array(w, "Wt")),
         mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [2, 8])], [value("y", [2, 5])],
    )
    onnx.external_data_helper.convert_model_to_external_data(
        model, location="w.bin", size_threshold=0, convert_attribute=True)
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    row = only_row(audit(str(folder / "m.onnx")))
    assert row_summary(row) == flags(8, 5, 3)
    np.testing.assert_array_equal(blocks_of(row)[0], w)


@pytest.mark.parametrize(("data_shape", "groups", "per_group"),
                         [([2, 1, 2, 8], 2, 3), ([3, 2, 8], 3, 2)],
                         ids=["blocks-then-broadcast", "broadcast-then-blocks"])
def test_matmul_stack_partly_broadcast(tmp_path, rng, data_shape, groups, per_group):
    """W (2, 3, 8, 2) with data that has its own entries along one stack axis and is broadcast
    along the other: one diagonal block per data slice, the broadcast matrices side by side in
    it (one mode for all axes gave 6 blocks, or one 8 x 12 matrix that hid every collision)."""
    w = np.stack([np.stack([irank(rng, 8, 2, 2) for _ in range(3)]) for _ in range(2)])
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", data_shape)], [value("y", [2, 3, 2, 2])],
                      [init("W", w.astype(np.float32))])
    row = only_row(audit(path))
    if groups == 2:  # data axis 0 matches the weight's: block i is [W[i,0] W[i,1] W[i,2]]
        expected = [np.concatenate(list(w[i]), axis=1) for i in range(2)]
    else:  # the data's only stack axis matches the weight's axis 1: block j is [W[0,j] W[1,j]]
        expected = [np.concatenate([w[0, j], w[1, j]], axis=1) for j in range(3)]
    np.testing.assert_array_equal(blocks_of(row), np.stack(expected))
    rank = sum(int(np.linalg.matrix_rank(m)) for m in expected)
    assert row_summary(row) == flags(8 * groups, 12, rank, groups=groups)
    assert f"{groups} diagonal blocks of {per_group} side by side" in row.layer.layout


def test_shared_integer_weight_with_other_zero_points_is_two_rows(tmp_path, rng):
    """Two MatMulInteger nodes share int8 B (rank 2) but one subtracts a zero-point vector:
    they read different matrices, so two rows (they were merged into one of rank 2)."""
    b = irank(rng, 8, 5, 2)
    zeros = np.arange(1, 6, dtype=np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMulInteger", ["x", "B", "", "z0"], ["y1"], name="plain"),
         mk("MatMulInteger", ["x", "B", "", "z1"], ["y2"], name="shifted")],
        [value("x", [2, 8], onnx.TensorProto.INT8)],
        [value("y1", [2, 5], onnx.TensorProto.INT32), value("y2", [2, 5], onnx.TensorProto.INT32)],
        [init("B", b.astype(np.int8)), init("z0", np.zeros(5, np.int8)), init("z1", zeros)],
    )
    rows = {r.layer.nodes: r for r in audit(path).rows}
    assert set(rows) == {("plain",), ("shifted",)}
    assert rows[("plain",)].rank == 2
    assert rows[("shifted",)].rank == np.linalg.matrix_rank(b - zeros[None, :].astype(np.float64))
    assert rows[("shifted",)].rank == 3


def test_gemm_and_matmul_reading_the_same_matrix_are_one_row(tmp_path, rng):
    """Gemm(transB=0) and MatMul both read W = T off one tensor T: one parameter, one row.
    Gemm(transB=1) on the same tensor reads T^T, another matrix (another nullity): its own row."""
    w = irank(rng, 8, 6, 4).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Gemm", ["x", "W"], ["h"], name="gemm"), mk("Relu", ["h"], ["r"]),
         mk("MatMul", ["x", "W"], ["m"], name="mm"), mk("Add", ["r", "m"], ["s"]),
         mk("Gemm", ["s", "W"], ["y"], transB=1, name="gemm_t")],
        [value("x", [1, 8])], [value("y", [1, 8])], [init("W", w)],
    )
    result = audit(path)
    shared, transposed = result.rows
    assert shared.layer.nodes == ("gemm", "mm")
    assert row_summary(shared) == flags(8, 6, 4)
    assert transposed.layer.nodes == ("gemm_t",)
    assert row_summary(transposed) == flags(6, 8, 4)
    assert result.metrics.n == 2


@pytest.mark.parametrize("copy", ["Transpose", "DequantizeLinear"])
def test_per_consumer_copies_of_one_weight_chain_are_one_row(tmp_path, rng, copy):
    """Exporters copy a shared weight's Transpose (torch, constant folding off) or
    DequantizeLinear (QDQ) once per consumer: copies applying the same attributes to the same
    tensors are one parameter (they gave two rows, n and the nullity sum counted it twice).
    A copy with another perm reads another matrix: its own row."""
    w = irank(rng, 12, 16, 4)
    if copy == "Transpose":
        inits = [init("T", w.T.astype(np.float32))]
        chains = [mk("Transpose", ["T"], [f"W{k}"], perm=[1, 0], name=f"t{k}") for k in (1, 2)]
    else:
        inits = [init("Q", w.T.astype(np.int8).T), init("s", np.float32(0.5)),
                 init("z", np.int8(0))]
        chains = [mk("DequantizeLinear", ["Q", "s", "z"], [f"W{k}"], name=f"dq{k}")
                  for k in (1, 2)]
    other = mk("Transpose", ["W1"], ["Wt"], perm=[1, 0], name="other")
    path = make_model(
        tmp_path / "m.onnx",
        [*chains, other, mk("MatMul", ["x", "W1"], ["h1"], name="mm1"),
         mk("MatMul", ["x", "W2"], ["h2"], name="mm2"), mk("Add", ["h1", "h2"], ["h"]),
         mk("MatMul", ["h", "Wt"], ["y"], name="mm3")],
        [value("x", [2, 12])], [value("y", [2, 12])], inits,
    )
    result = audit(path)
    shared, transposed = result.rows
    assert shared.layer.nodes == ("mm1", "mm2")
    assert row_summary(shared) == flags(12, 16, 4)
    assert transposed.layer.nodes == ("mm3",)
    assert result.metrics.n == 2 and result.metrics.nullity_sum == 8 + 12


def test_vector_weight_on_either_side_of_matmul_is_one_row(tmp_path, rng):
    """x @ b and b @ X both read W = b (K x 1): one parameter, one row listing both nodes."""
    b = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "b"], ["right"], name="mv_right"),
         mk("MatMul", ["b", "X"], ["left"], name="mv_left")],
        [value("x", [2, 4]), value("X", [4, 3])], [value("right", [2]), value("left", [3])],
        [init("b", b)],
    )
    row = only_row(audit(path))
    assert row.layer.nodes == ("mv_right", "mv_left")
    assert row_summary(row) == flags(4, 1, 1)


def test_a_stale_value_info_does_not_set_the_weight_shape(tmp_path, rng):
    """value_info declaring Transpose(W)'s output with W's own shape (a leftover that ONNX
    Runtime only warns about): q and p come from the tensor, not the declaration."""
    w = irank(rng, 4, 6, 2).astype(np.float32)
    model = build_model(
        [mk("Transpose", ["W"], ["Wt"], perm=[1, 0]), mk("MatMul", ["x", "Wt"], ["y"])],
        [value("x", [1, 6])], [value("y", [1, 4])], [init("W", w)])
    model.graph.value_info.append(value("Wt", [4, 6]))
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    assert row_summary(only_row(audit(path))) == flags(6, 4, 2)


def _ref_attr(name: str, ref: str) -> onnx.AttributeProto:
    attr = onnx.AttributeProto(name=name, ref_attr_name=ref, type=onnx.AttributeProto.INT)
    return attr


def test_a_function_attribute_default_reaches_the_linear_op(tmp_path, rng):
    """A model-local function whose Gemm reads transB from an attribute with a default
    (attribute_proto, left out at the call): ONNX's inliner drops it, which read B untransposed."""
    gemm = mk("Gemm", ["a", "w"], ["b"])
    gemm.attribute.append(_ref_attr("transB", "tb"))
    function = helper.make_function("local", "lin", ["a", "w"], ["b"], [gemm],
                                    [helper.make_opsetid("", 17)])
    function.attribute_proto.append(helper.make_attribute("tb", 1))
    w = irank(rng, 4, 6, 2).astype(np.float32)  # stored N x K: transB=1 reads W^T (6 x 4)
    path = make_model(tmp_path / "m.onnx", [mk("lin", ["x", "B"], ["y"], domain="local")],
                      [value("x", [1, 6])], [value("y", [1, 4])], [init("B", w)],
                      functions=[function], extra_opsets=[("local", 1)])
    assert row_summary(only_row(audit(path))) == flags(6, 4, 2)


def test_sparse_weights_are_read_dense(tmp_path, rng):
    """A weight in graph.sparse_initializer and one in a Constant's sparse_value (linear and
    coordinate indices): both are rows, with the ranks of their dense values."""
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "S")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(
        np.array([0, 4], np.int64), "S_idx"), [3, 3])  # diag(1, 2, 0): rank 2
    coords = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "c"),
        numpy_helper.from_array(np.array([[0, 0], [1, 1], [2, 0]], np.int64), "c_idx"), [3, 2])
    model = build_model([mk("MatMul", ["x", "S"], ["h"]),
                         mk("Constant", [], ["C"], sparse_value=coords),
                         mk("MatMul", ["h", "C"], ["y"])],
                        [value("x", [1, 3])], [value("y", [1, 2])], check=False)
    model.graph.sparse_initializer.append(sparse)
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    rows = audit(path).rows
    assert [row_summary(r) for r in rows] == [flags(3, 3, 2), flags(3, 2, 2)]
    np.testing.assert_array_equal(blocks_of(rows[1])[0], [[1, 0], [0, 2], [3, 0]])


def test_opset_4_reshape_with_a_shape_attribute_in_a_weight_chain(tmp_path, rng):
    """Reshape in opsets 1 to 4 takes its target shape as an attribute."""
    w = irank(rng, 6, 4, 2).astype(np.float32)
    model = build_model([mk("Reshape", ["Wf"], ["W"], shape=[6, 4]),
                         mk("MatMul", ["x", "W"], ["y"])],
                        [value("x", [1, 6])], [value("y", [1, 4])],
                        [init("Wf", w.reshape(-1))], check=False)
    model.opset_import[0].version = 4
    model.ir_version = 3
    model.graph.input.append(value("Wf", [24]))  # IR 3: initializers are graph inputs
    onnx.checker.check_model(model)
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    assert row_summary(only_row(audit(path))) == flags(6, 4, 2)


def test_integer_matmul_and_more_onnx_runtime_weight_ops_are_listed(tmp_path, rng):
    """An int64 MatMul on a constant (index arithmetic) is skipped, not a stop for the whole
    audit; ONNX Runtime's channels-last QLinearConv and MoE are listed with their weights."""
    f32 = np.float32
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "W"], ["y"], name="dense"),
         mk("MatMul", ["i", "K"], ["j"], name="index"),
         mk("QLinearConv", ["xq", "s", "z", "wq", "s", "z", "s", "z"], ["yq"],
            domain="com.microsoft", channels_last=1, name="nhwc"),
         mk("MoE", ["x", "router", "fc1", "", "fc2"], ["moe"], domain="com.microsoft",
            name="experts")],
        [value("x", [1, 4]), value("i", [1, 3], onnx.TensorProto.INT64),
         value("xq", [1, 5, 5, 2], UINT8), value("router", [1, 2])],
        [value("y", [1, 4]), value("j", None), value("yq", None), value("moe", None)],
        [init("W", np.eye(4, dtype=f32)), init("K", np.ones((3, 2), np.int64)),
         init("s", np.array(0.1, f32)), init("z", np.array(0, np.uint8)),
         init("wq", np.ones((3, 3, 3, 2), np.uint8)), init("fc1", np.ones((2, 4, 8), f32)),
         init("fc2", np.ones((2, 8, 4), f32))],
        extra_opsets=[("com.microsoft", 1)], check=False,
    )
    result = audit(path)
    assert [r.layer.nodes for r in result.rows] == [("dense",)]
    reasons = {s.label: s.reason for s in result.skipped}
    assert "int64: integer arithmetic" in reasons["index"]
    assert "'wq'" in reasons["nhwc"] and "'fc1', 'fc2'" in reasons["experts"]


def test_gemm_alpha_does_not_overflow_a_float16_weight(tmp_path, rng):
    """alpha * W formed in float16 overflowed (max |W| 390, alpha 1000) and was reported as
    corrupt weights; the scaled matrix is formed in float32."""
    w = (irank(rng, 6, 5, 3) * 30).astype(np.float16)
    w[0, 0] = 390
    path = make_model(tmp_path / "m.onnx", [mk("Gemm", ["x", "W"], ["y"], alpha=1000.0)],
                      [value("x", [1, 6], FLOAT16)], [value("y", [1, 5], FLOAT16)],
                      [init("W", w)])
    row = only_row(audit(path))
    expected = np.linalg.svd(w.astype(np.float64) * 1000, compute_uv=False)
    assert row.decision.sigma_max == pytest.approx(expected[0], rel=1e-6)
    assert row.layer.compute_dtype == "float16"


def test_one_matrix_spelled_as_gemm_transb_and_matmul_of_a_transpose_is_one_row(tmp_path, rng):
    """Gemm(x, B, transB=1) and MatMul(x, Transpose(B)) read one matrix, B^T, of one tensor:
    one parameter (two rows counted it twice in n and the nullity sum)."""
    b = irank(rng, 4, 6, 2).astype(np.float32)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Gemm", ["x", "B"], ["h1"], transB=1), mk("Transpose", ["B"], ["Bt"], perm=[1, 0]),
         mk("MatMul", ["x", "Bt"], ["h2"]), mk("Add", ["h1", "h2"], ["y"])],
        [value("x", [1, 6])], [value("y", [1, 4])], [init("B", b)],
    )
    result = audit(path)
    assert [(row_summary(r), len(r.layer.nodes)) for r in result.rows] == [(flags(6, 4, 2), 2)]
    assert result.metrics.n == 1 and result.metrics.nullity_sum == 4


def test_a_conv_of_two_constants_is_constant_folding(tmp_path, rng):
    """A Conv whose data and weight are both constant (e.g. a positional table) is skipped
    like such a MatMul, not counted as a layer."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Conv", ["P", "K"], ["pos"], name="pos"), mk("Flatten", ["pos"], ["pf"]),
         mk("MatMul", ["x", "W"], ["h"]), mk("Add", ["h", "pf"], ["y"])],
        [value("x", [1, 4])], [value("y", [1, 4])],
        [init("P", np.ones((1, 1, 3, 3), np.float32)), init("K", np.ones((4, 1, 3, 3), np.float32)),
         init("W", np.eye(4, dtype=np.float32))],
    )
    result = audit(path)
    assert len(result.rows) == 1 and result.rows[0].layer.op == "MatMul"
    assert [s.label for s in result.skipped] == ["pos"]
    assert "constant folding" in result.skipped[0].reason


def test_matmul_integer_with_an_n_d_zero_point(tmp_path, rng):
    """MatMulInteger's spec allows a (D1, 1, N) zero point for a (D1, K, N) weight: it is
    subtracted by broadcasting (it was refused as 'more than one axis')."""
    bq = rng.integers(0, 255, size=(2, 4, 3)).astype(np.uint8)
    zp = rng.integers(0, 255, size=(2, 1, 3)).astype(np.uint8)
    path = make_model(
        tmp_path / "m.onnx", [mk("MatMulInteger", ["xq", "B", "", "zp"], ["y"])],
        [value("xq", [2, 5, 4], UINT8)], [value("y", [2, 5, 3], onnx.TensorProto.INT32)],
        [init("B", bq), init("zp", zp)],
    )
    row = only_row(audit(path))
    expected = bq.astype(np.float64) - zp
    np.testing.assert_array_equal(blocks_of(row), expected)


@pytest.mark.parametrize("shape, q_p", [((0, 3, 3, 3), (27, 0)), ((0, 4, 3), (0, 0))])
def test_zero_size_conv_and_stacked_weights_have_rank_0(tmp_path, shape, q_p):
    """A conv with no output channels and a stack of no matrices: rank 0 rows (they were
    refused as 'the weight does not fit the op')."""
    conv = len(shape) == 4
    node = mk("Conv", ["x", "W"], ["y"]) if conv else mk("MatMul", ["x", "W"], ["y"])
    x = value("x", [1, 3, 5, 5] if conv else [0, 2, 4])
    path = make_model(tmp_path / "m.onnx", [node], [x], [value("y", None)],
                      [init("W", np.zeros(shape, np.float32))], check=False)
    row = only_row(audit(path))
    assert (row.layer.q, row.layer.p, row.decision.rank) == (*q_p, 0)


def test_paper_convention_layout_names_the_whole_output_axis(tmp_path, rng):
    path = make_model(tmp_path / "m.onnx", [mk("Conv", ["x", "W"], ["y"], group=2)],
                      [value("x", [1, 4, 5, 5])], [value("y", [1, 6, 3, 3])],
                      [init("W", rng.standard_normal((6, 2, 3, 3)).astype(np.float32))])
    row = only_row(audit(path, PAPER))
    assert (row.layer.q, row.layer.p) == (18, 6)
    assert row.layer.layout == "paper: one (C/g * prod k) x O matrix"
