"""input_path (through audit_model().first_layer): W1's class and blind input elements."""

from __future__ import annotations

import numpy as np
import pytest
from builders import (
    INT64,
    UINT8,
    audit,
    init,
    integer_rank,
    ints,
    make_model,
    token_ids_model,
    value,
)
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.audit.model import AuditSettings
from onnxcollide.errors import UsageError
from onnxcollide.graph.input_path import (
    DENSE,
    NOT_APPLICABLE,
    OVERLAPPING,
    PATCHIFY,
    window_reads,
    windows_can_overlap,
)

mk = helper.make_node


def conv_w(rng, out_ch: int, in_ch: int, *kernel: int) -> np.ndarray:
    """A random float32 conv weight (O, C, k...)."""
    return rng.standard_normal((out_ch, in_ch, *kernel)).astype(np.float32)


def conv_model(tmp_path, rng, in_shape, kernel, stride, name="m.onnx", pre=(), pre_inits=(),
               data="x", out_ch=4, **conv_attrs) -> str:
    """Optional ``pre`` nodes (ending in ``data``) then one Conv; output shape left to inference."""
    axes = len(kernel)
    channels = in_shape[1] if data == "x" else conv_attrs.pop("channels")
    nodes = [*pre, mk("Conv", [data, "W"], ["y"], kernel_shape=list(kernel),
                      strides=[stride] * axes if isinstance(stride, int) else list(stride),
                      **conv_attrs)]
    out_shape = [f"y{k}" for k in range(axes + 2)]
    return make_model(tmp_path / name, nodes, [value("x", in_shape)], [value("y", out_shape)],
                      [init("W", conv_w(rng, out_ch, channels, *kernel)), *pre_inits])


def first(path: str, settings: AuditSettings | None = None):
    """The audit's FirstLayer (never None for these models)."""
    result = audit(path, settings)
    assert result.first_layer is not None
    return result.first_layer


# ------------------------------------------------------------------ dense


def test_mlp_is_dense_with_no_blind_elements(tmp_path, rng):
    """(1, 1, 28, 28) -> Flatten -> Gemm: dense, 0 of 784 blind, path [Flatten]."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Flatten", ["x"], ["f"]), mk("Gemm", ["f", "B"], ["y"], transB=1)],
        [value("x", [1, 1, 28, 28])], [value("y", [1, 10])],
        [init("B", rng.standard_normal((10, 784)).astype(np.float32))],
    )
    fl = first(path)
    assert fl.exactness == DENSE
    assert fl.blind_elements == 0
    assert fl.input_elements == 784
    assert [s.op for s in fl.path] == ["Flatten"]
    assert fl.row_index == 1
    assert fl.input == "x"
    assert fl.input_dtype == "float"


# ------------------------------------------------------------------ conv classes


def test_patchify_conv(tmp_path, rng):
    """k=16, s=16 on 32x32: windows tile the image: patchify, nothing blind."""
    fl = first(conv_model(tmp_path, rng, [1, 3, 32, 32], (16, 16), 16))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 0
    assert fl.input_elements == 3 * 32 * 32


def test_overlapping_conv(tmp_path, rng):
    """k=3, s=1: neighbouring windows share pixels: overlapping."""
    fl = first(conv_model(tmp_path, rng, [1, 3, 16, 16], (3, 3), 1))
    assert fl.exactness == OVERLAPPING
    assert fl.blind_elements == 0


@pytest.mark.parametrize(("kernel", "stride", "expected"), [((16, 16), 16, PATCHIFY),
                                                            ((3, 3), 1, OVERLAPPING)])
def test_huge_input_is_classified_without_counting_each_element(tmp_path, rng, kernel, stride,
                                                                expected):
    """--input-shape 1x3x100000x100000 (3e10 elements): the class comes from the geometry and
    the blind count is unknown, instead of a 74 GiB MemoryError."""
    path = conv_model(tmp_path, rng, ["N", 3, "H", "W"], kernel, stride)
    fl = first(path, AuditSettings(input_shapes=(("x", (1, 3, 100_000, 100_000)),)))
    assert fl.exactness == expected
    assert fl.blind_elements is None
    assert fl.input_elements == 3 * 100_000 * 100_000


def test_stride_larger_than_kernel_leaves_blind_elements(tmp_path, rng):
    """k=2, s=3 on 1x1x8x8: rows/cols {0,1,3,4,6,7} are read: 36 read, 28 blind, patchify."""
    fl = first(conv_model(tmp_path, rng, [1, 1, 8, 8], (2, 2), 3))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 64 - 6 * 6 == 28
    assert fl.input_elements == 64


def test_remainder_rows_and_columns_are_blind(tmp_path, rng):
    """k=16, s=16 on 3x30x30: one window per axis reads 16 of 30: 3 * (900 - 256) blind."""
    fl = first(conv_model(tmp_path, rng, [1, 3, 30, 30], (16, 16), 16))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 3 * (30 * 30 - 16 * 16) == 1932


def test_same_upper_padding_is_resolved(tmp_path, rng):
    """auto_pad SAME_UPPER, k=3, s=4 on 9x9: pads (1, 1); per axis {0,1,3,4,5,7,8} read."""
    fl = first(conv_model(tmp_path, rng, [1, 1, 9, 9], (3, 3), 4, auto_pad="SAME_UPPER"))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 81 - 7 * 7


def test_dilated_kernel_overlaps(tmp_path, rng):
    """1-D k=2, dilation 2, s=2 on 8: windows {0,2},{2,4},{4,6} share taps: overlapping, 4 blind."""
    fl = first(conv_model(tmp_path, rng, [1, 1, 8], (2,), 2, dilations=[2]))
    assert fl.exactness == OVERLAPPING
    assert fl.blind_elements == 4


def test_dilated_kernel_interleaves_without_sharing(tmp_path, rng):
    """1-D k=2, dilation 3, s=2 on 8: windows {0,3},{2,5},{4,7}: no shared tap, {1,6} blind."""
    fl = first(conv_model(tmp_path, rng, [1, 1, 8], (2,), 2, dilations=[3]))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 2


def test_conv_transpose_first_reads_everything(tmp_path, rng):
    """A ConvTranspose as W1 scatters every input element: nothing blind."""
    path = make_model(tmp_path / "m.onnx",
                      [mk("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2])],
                      [value("x", [1, 3, 4, 4])], [value("y", ["n", "c", "h", "w"])],
                      [init("W", conv_w(rng, 3, 2, 2, 2))])
    fl = first(path)
    assert fl.blind_elements == 0
    assert fl.exactness == PATCHIFY


# ------------------------------------------------------------------ the path before W1


def test_normalisation_and_transpose_keep_the_class(tmp_path, rng):
    """NHWC -> Sub mean -> Div std -> Transpose -> Conv k=2 s=3: patchify, blind 3 * 28."""
    pre = [mk("Sub", ["x", "mean"], ["a"]), mk("Div", ["a", "std"], ["b"]),
           mk("Transpose", ["b"], ["c"], perm=[0, 3, 1, 2])]
    inits = [init("mean", np.array([0.4, 0.5, 0.6], np.float32)),
             init("std", np.array([0.2, 0.25, 0.3], np.float32))]
    fl = first(conv_model(tmp_path, rng, [1, 8, 8, 3], (2, 2), 3, pre=pre, pre_inits=inits,
                          data="c", channels=3))
    assert fl.exactness == PATCHIFY
    assert [s.op for s in fl.path] == ["Sub", "Div", "Transpose"]
    assert fl.blind_elements == 3 * 28
    assert fl.input_elements == 192


def test_channels_last_blind_mask_is_transposed_back(tmp_path, rng):
    """NHWC (1, 8, 5, 2) -> Transpose -> Conv k=(2,1) s=(3,1): rows {2,5} blind in every col/ch."""
    pre = [mk("Transpose", ["x"], ["c"], perm=[0, 3, 1, 2])]
    fl = first(conv_model(tmp_path, rng, [1, 8, 5, 2], (2, 1), (3, 1), pre=pre, data="c",
                          channels=2))
    assert fl.blind_elements == 2 * 5 * 2


def test_relu_before_first_linear_op(tmp_path, rng):
    """x -> Relu -> Gemm: not applicable, and the reason names Relu."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Relu", ["x"], ["r"], name="act"), mk("Gemm", ["r", "B"], ["y"])],
        [value("x", [1, 16])], [value("y", [1, 4])],
        [init("B", rng.standard_normal((16, 4)).astype(np.float32))],
    )
    fl = first(path)
    assert fl.exactness == NOT_APPLICABLE
    assert "Relu" in fl.reason
    assert fl.blind_elements is None
    assert fl.node is not None and fl.row_index == 1


def test_token_ids_through_gather(tmp_path, rng):
    """int64 token ids -> Gather(embedding) -> MatMul: not applicable (ids are not continuous)."""
    fl = first(token_ids_model(tmp_path, length=5))
    assert fl.exactness == NOT_APPLICABLE
    assert fl.input_dtype == "int64"
    assert "int64" in fl.reason and "Gather" in fl.reason
    assert [s.op for s in fl.path] == ["Gather"]


@pytest.mark.parametrize(
    "pre,inits,needle",
    [
        ([mk("Div", ["c", "x"], ["d"])], [("c", np.float32(2.0))], "divisor"),
        ([mk("Cast", ["x"], ["d"], to=INT64)], [], "integers"),
        ([mk("Relu", ["x"], ["h"]), mk("Add", ["x", "h"], ["d"])], [], "Relu"),
        ([mk("MaxPool", ["x"], ["d"], kernel_shape=[2, 2])], [], "MaxPool"),
    ],
    ids=["input-as-divisor", "cast-to-int", "add-variable", "maxpool"],
)
def test_path_ops_that_block(tmp_path, rng, pre, inits, needle):
    """Ops that are not affine and injective on the input make W1 'not applicable'."""
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, data="d",
                          channels=3, pre_inits=[init(n, v) for n, v in inits]))
    assert fl.exactness == NOT_APPLICABLE
    assert needle in fl.reason


def test_a_channel_scaled_by_zero_is_blind(tmp_path, rng):
    """Mul by a constant with a zero drops that channel: its elements are blind (each an
    exact collision), the rest of the path is a selection, so the class is W1's own."""
    pre = [mk("Mul", ["x", "c"], ["d"])]
    inits = [init("c", np.array([1, 0, 1], np.float32).reshape(1, 3, 1, 1))]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, data="d",
                          channels=3, pre_inits=inits))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 64


def test_quantize_dequantize_on_the_path_adds_a_caveat(tmp_path, rng):
    """x -> QuantizeLinear -> DequantizeLinear -> Conv: class kept, reason warns about rounding."""
    pre = [mk("QuantizeLinear", ["x", "s", "z"], ["q"]),
           mk("DequantizeLinear", ["q", "s", "z"], ["d"])]
    inits = [init("s", np.float32(0.05)), init("z", np.uint8(128))]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, pre_inits=inits,
                          data="d", channels=3))
    assert fl.exactness == PATCHIFY
    assert "QuantizeLinear" in fl.reason
    assert fl.blind_elements == 0


def test_uint8_quantized_model_input_is_not_applicable(tmp_path, rng):
    """A uint8 input feeding QLinearConv directly is not a continuous space."""
    w = rng.integers(-5, 6, size=(4, 2, 3, 3)).astype(np.int8)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("QLinearConv", ["x", "xs", "xz", "W", "ws", "wz", "ys", "yz"], ["y"])],
        [value("x", [1, 2, 6, 6], UINT8)], [value("y", [1, 4, 4, 4], UINT8)],
        [init("xs", np.float32(0.1)), init("xz", np.uint8(128)), init("W", w),
         init("ws", np.float32(0.1)), init("wz", np.int8(0)), init("ys", np.float32(0.1)),
         init("yz", np.uint8(128))],
    )
    fl = first(path)
    assert fl.exactness == NOT_APPLICABLE
    assert fl.input_dtype == "uint8"


def test_zero_pad_before_conv(tmp_path, rng):
    """1x1x8x8 -> zero Pad 1 -> Conv k=2 s=3: padded reads {0,1,3,4,6,7} = input {0,2,3,5,6}."""
    pre = [mk("Pad", ["x", "pads"], ["p"])]
    fl = first(conv_model(tmp_path, rng, [1, 1, 8, 8], (2, 2), 3, pre=pre, data="p",
                          channels=1, pre_inits=[ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])]))
    assert fl.exactness == PATCHIFY
    assert [s.op for s in fl.path] == ["Pad"]
    assert fl.blind_elements == 64 - 5 * 5


def test_slice_before_conv_counts_sliced_away_elements(tmp_path, rng):
    """1x1x10x10 -> Slice [1:9, 1:9] -> Conv k=2 s=2: the 36 sliced-away elements are blind."""
    pre = [mk("Slice", ["x", "starts", "ends", "axes"], ["s"])]
    inits = [ints("starts", [1, 1]), ints("ends", [9, 9]), ints("axes", [2, 3])]
    fl = first(conv_model(tmp_path, rng, [1, 1, 10, 10], (2, 2), 2, pre=pre, data="s",
                          channels=1, pre_inits=inits))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 100 - 64


def test_attribute_slice_before_opset_10_counts_blind_elements(tmp_path, rng):
    """Slice-1 (opset 9, starts/ends/axes as attributes) [1:9, 1:9] -> Conv k=2 s=2: the 36
    sliced-away elements are blind, as with the input form."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Slice", ["x"], ["s"], starts=[1, 1], ends=[9, 9], axes=[2, 3]),
         mk("Conv", ["s", "W"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        [value("x", [1, 1, 10, 10])], [value("y", [1, 4, 4, 4])],
        [init("W", conv_w(rng, 4, 1, 2, 2))], opset=9)
    fl = first(path)
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 100 - 64


def test_strided_slice_before_dense(tmp_path, rng):
    """(1, 10) -> Slice step 2 -> MatMul: the 5 odd positions are never read."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Slice", ["x", "st", "en", "ax", "sp"], ["s"]), mk("MatMul", ["s", "W"], ["y"])],
        [value("x", [1, 10])], [value("y", [1, 3])],
        [ints("st", [0]), ints("en", [10]), ints("ax", [1]), ints("sp", [2]),
         init("W", rng.standard_normal((5, 3)).astype(np.float32))],
    )
    fl = first(path)
    assert fl.exactness == DENSE
    assert fl.blind_elements == 5


def test_transpose_of_the_batch_axis_makes_blind_unknown(tmp_path, rng):
    """A Transpose that moves the batch axis: per-sample masks do not apply, blind is None."""
    pre = [mk("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3])]
    fl = first(conv_model(tmp_path, rng, [3, 1, 8, 8], (2, 2), 2, pre=pre, data="t",
                          channels=3))
    assert fl.blind_elements is None


# ------------------------------------------------------------------ dynamic shapes


def dynamic_model(tmp_path, rng, kernel: int, stride: int) -> str:
    """Input ('N', 3, 'H', 'W') into one conv."""
    return conv_model(tmp_path, rng, ["N", 3, "H", "W"], (kernel, kernel), stride,
                      name=f"dyn{kernel}_{stride}.onnx")


def test_dynamic_spatial_dims_leave_blind_unknown(tmp_path, rng):
    """H, W unknown: blind None, input_elements None, class from the geometry alone."""
    fl = first(dynamic_model(tmp_path, rng, 3, 1))
    assert fl.exactness == OVERLAPPING
    assert fl.blind_elements is None
    assert fl.input_elements is None
    assert fl.input_shape == (None, 3, None, None)
    assert first(dynamic_model(tmp_path, rng, 16, 16)).exactness == PATCHIFY


def test_input_shape_override_makes_blind_known(tmp_path, rng):
    """AuditSettings(input_shapes=...) fixes H, W: k=2 s=3 on 8x8 gives 3 * 28 blind."""
    path = dynamic_model(tmp_path, rng, 2, 3)
    fl = first(path, AuditSettings(input_shapes=(("x", (1, 3, 8, 8)),)))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 3 * 28
    assert fl.input_elements == 192
    assert fl.input_shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    "override,needle",
    [(("nope", (1, 3, 8, 8)), "does not have"), (("x", (1, 3, 8)), "gives 3 dims"),
     (("x", (1, 4, 8, 8)), "fixes it to 3")],
    ids=["unknown-input", "wrong-rank", "contradicts-fixed-dim"],
)
def test_bad_input_shape_override(tmp_path, rng, override, needle):
    """An override naming an unknown input or contradicting the model is a UsageError."""
    path = dynamic_model(tmp_path, rng, 2, 3)
    with pytest.raises(UsageError, match=needle):
        audit(path, AuditSettings(input_shapes=(override,)))


# ------------------------------------------------------------------ several inputs


def test_float_input_is_preferred_and_others_are_noted(tmp_path, rng):
    """Two float inputs each reach a MatMul: W1 is the first one's, a note names the other."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["a", "Wa"], ["ya"], name="mma"), mk("MatMul", ["b", "Wb"], ["yb"],
                                                               name="mmb"),
         mk("Add", ["ya", "yb"], ["y"])],
        [value("a", [1, 6]), value("b", [1, 5])], [value("y", [1, 4])],
        [init("Wa", rng.standard_normal((6, 4)).astype(np.float32)),
         init("Wb", rng.standard_normal((5, 4)).astype(np.float32))],
    )
    result = audit(path)
    assert result.first_layer.node == "mma"
    assert any("'b'" in note and "mmb" in note for note in result.notes)


def test_input_reaching_no_linear_op(tmp_path, rng):
    """Linear op only inside an If branch: W1 is 'not applicable', nullity(W1) from row 1."""
    then_graph = helper.make_graph([mk("MatMul", ["x", "W"], ["t"])], "then", [],
                                   [value("t", [1, 3])])
    else_graph = helper.make_graph([mk("Identity", ["z"], ["e"])], "else", [],
                                   [value("e", [1, 3])])
    path = make_model(
        tmp_path / "m.onnx",
        [mk("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        [value("cond", [], 9), value("x", [1, 6])], [value("y", [1, 3])],
        [init("W", rng.standard_normal((6, 3)).astype(np.float32)),
         init("z", np.zeros((1, 3), np.float32))],
    )
    result = audit(path)
    assert result.first_layer.exactness == NOT_APPLICABLE
    assert result.first_layer.row_index is None
    assert result.metrics.nullity_w1 == result.rows[0].nullity == 3
    assert any("nullity(W1) is that of row 1" in note for note in result.notes)


# ------------------------------------------------------------------ known bugs


def test_reflect_pad_before_conv_is_not_patchify(tmp_path, rng):
    """Reflect Pad 1 then k=2 s=2 on 8: padded [a1 a0 .. a7 a6]: a1 is read by two windows."""
    pre = [mk("Pad", ["x", "pads"], ["p"], mode="reflect")]
    fl = first(conv_model(tmp_path, rng, [1, 1, 8], (2,), 2, pre=pre, data="p", channels=1,
                          pre_inits=[ints("pads", [0, 0, 1, 0, 0, 1])]))
    assert fl.exactness != PATCHIFY


def test_reflect_pad_blind_count(tmp_path, rng):
    """Reflect Pad 2 then k=1 s=3 on 8: padded positions 0,3,6,9 = inputs 2,1,4,7: 4 blind."""
    pre = [mk("Pad", ["x", "pads"], ["p"], mode="reflect")]
    fl = first(conv_model(tmp_path, rng, [1, 1, 8], (1,), 3, pre=pre, data="p", channels=1,
                          pre_inits=[ints("pads", [0, 0, 2, 0, 0, 2])]))
    assert fl.blind_elements in (None, 4)


def test_batchnorm_with_zero_scale_makes_a_blind_channel_like_mul_by_zero(tmp_path, rng):
    """BN(scale=[1, 0, 1]) before the conv zeroes channel 1: its 64 elements are blind."""
    pre = [mk("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"])]
    inits = [init("s", np.array([1, 0, 1], np.float32)), init("b", np.zeros(3, np.float32)),
             init("m", np.zeros(3, np.float32)), init("v", np.ones(3, np.float32))]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, pre_inits=inits,
                          data="n", channels=3))
    assert fl.exactness == PATCHIFY
    assert fl.blind_elements == 64


# ------------------------------------------------------------------ geometry helpers


def test_window_reads_counts():
    """window_reads: k=2 s=3 on 8 reads {0,1,3,4,6,7} once; k=3 s=1 reads the middle 3 times."""
    np.testing.assert_array_equal(window_reads(8, 2, 3, 1, (0, 0)), [1, 1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(window_reads(5, 3, 1, 1, (0, 0)), [1, 2, 3, 2, 1])
    np.testing.assert_array_equal(window_reads(4, 3, 1, 1, (1, 1)), [2, 3, 3, 2])
    np.testing.assert_array_equal(window_reads(3, 5, 1, 1, (0, 0)), [0, 0, 0])


@pytest.mark.parametrize(
    "kernel,stride,dilation,expected",
    [(16, 16, 1, False), (3, 1, 1, True), (2, 3, 1, False), (3, 2, 1, True), (1, 1, 1, False),
     (2, 2, 2, True), (2, 2, 3, False), (7, 2, 1, True)],
)
def test_windows_can_overlap(kernel, stride, dilation, expected):
    """Two windows share a tap iff t * dilation is a multiple of the stride for some 0 < t < k."""
    assert windows_can_overlap(kernel, stride, dilation) is expected


def test_input_added_to_itself_is_still_affine(tmp_path, rng):
    """x + x = 2x is affine and injective in x: the class is kept."""
    pre = [mk("Add", ["x", "x"], ["d"])]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, data="d",
                          channels=3))
    assert fl.exactness == PATCHIFY


def test_conv_transpose_kernel_lifts_pixel_by_pixel(tmp_path, rng):
    """ConvTranspose C_in=8 -> 1, k=2, s=1 (outputs overlap), W 8 x 4 of rank 3: perturbing
    every pixel by its own multiple of a ker(W^T) vector leaves the output unchanged, yet W1
    is 'overlapping': combinations across positions can cancel too, so the per-position
    kernel is not all there is (the class's reason says both)."""
    m = integer_rank(rng, 8, 4, 3)
    path = make_model(tmp_path / "m.onnx", [mk("ConvTranspose", ["x", "W"], ["y"])],
                      [value("x", [1, 8, 5, 5])], [value("y", [1, 1, 6, 6])],
                      [init("W", m.reshape(8, 1, 2, 2).astype(np.float32))])
    delta = np.linalg.svd(m)[0][:, -1]  # m^T delta = 0
    x = rng.standard_normal((1, 8, 5, 5))
    moved = x + 3.0 * delta[None, :, None, None] * rng.standard_normal((1, 1, 5, 5))
    evaluator = ReferenceEvaluator(path)
    y0 = evaluator.run(None, {"x": x.astype(np.float32)})[0]
    y1 = evaluator.run(None, {"x": moved.astype(np.float32)})[0]
    np.testing.assert_allclose(y1, y0, atol=1e-4 * np.abs(y0).max())  # an exact collision
    fl = first(path)
    assert fl.exactness == OVERLAPPING
    assert "per-position kernel vectors still lift exactly" in fl.reason


@pytest.mark.parametrize(("kernel", "stride", "pads", "shape", "expected"), [
    (3, 1, [0, 0, 0, 0], [1, 6, 5, 5], OVERLAPPING),  # the review's convT_s1
    (2, 2, [0, 0, 0, 0], [1, 6, 5, 5], PATCHIFY),  # outputs tile the image
    (3, 2, [0, 0, 0, 0], [1, 6, 5, 5], OVERLAPPING),  # k > s: shared border rows
    (3, 1, [0, 0, 0, 0], [1, 6, 1, 1], PATCHIFY),  # one position: nothing to share
    (3, 2, [0, 0, 0, 0], ["n", 6, "h", "w"], OVERLAPPING),  # size unknown: k, s decide
])
def test_conv_transpose_overlap_is_decided_on_the_output(tmp_path, rng, kernel, stride, pads,
                                                         shape, expected):
    """ConvTranspose is 'overlapping' exactly when two input positions write to one kept
    output element (stride < kernel on an axis with at least two positions)."""
    path = make_model(tmp_path / "m.onnx",
                      [mk("ConvTranspose", ["x", "W"], ["y"], strides=[stride, stride],
                          pads=pads)],
                      [value("x", shape)], [value("y", None)],
                      [init("W", rng.standard_normal((6, 1, kernel, kernel)).astype(np.float32))],
                      check=False)
    assert first(path).exactness == expected


def test_the_input_minus_itself_makes_every_element_blind(tmp_path, rng):
    """x - x is the zero map: W1 never sees the input, so every element collides (blind)."""
    pre = [mk("Sub", ["x", "x"], ["d"])]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, data="d",
                          channels=3))
    assert fl.blind_elements == 192


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_input_used_twice_by_a_non_additive_op_is_not_applicable(tmp_path, rng, op):
    """x * x and x / x are not affine: W1 is 'not applicable', naming the node, and the
    audit itself still succeeds (it used to stop with 'x is not a constant')."""
    pre = [mk(op, ["x", "x"], ["d"])]
    fl = first(conv_model(tmp_path, rng, [1, 3, 8, 8], (2, 2), 2, pre=pre, data="d",
                          channels=3))
    assert fl.exactness == NOT_APPLICABLE
    assert "uses the input twice" in fl.reason


def test_an_input_added_as_gemm_bias_does_not_make_that_gemm_w1(tmp_path, rng):
    """y = Gemm(Tanh(x), W, C=x): x reaches W's operand only through Tanh; as C it is added,
    not multiplied by W. W1 is that Gemm through Tanh (not applicable), not a dense Gemm on x."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("Tanh", ["x"], ["t"]), mk("Gemm", ["t", "W", "x"], ["y"])],
        [value("x", [1, 4])], [value("y", [1, 4])],
        [init("W", rng.standard_normal((4, 4)).astype(np.float32))],
    )
    fl = first(path)
    assert fl.exactness == NOT_APPLICABLE and [s.op for s in fl.path] == ["Tanh"]


@pytest.mark.parametrize("relu_first", [True, False])
def test_w1_does_not_depend_on_the_order_nodes_are_listed_in(tmp_path, rng, relu_first):
    """x feeds MatMul(W2) directly and MatMul(W) through Relu: W1 is the direct one in both
    topological orders (it was the one listed first)."""
    through_relu = [mk("Relu", ["x"], ["r"]), mk("MatMul", ["r", "W"], ["a"], name="a")]
    direct = [mk("MatMul", ["x", "W2"], ["b"], name="b")]
    path = make_model(
        tmp_path / "m.onnx",
        [*through_relu, *direct, mk("Add", ["a", "b"], ["y"])] if relu_first
        else [*direct, *through_relu, mk("Add", ["a", "b"], ["y"])],
        [value("x", [1, 4])], [value("y", [1, 3])],
        [init("W", integer_rank(rng, 4, 3, 2).astype(np.float32)),
         init("W2", integer_rank(rng, 4, 3, 3).astype(np.float32))],
    )
    result = audit(path)
    fl = result.first_layer
    assert fl is not None and (fl.node, fl.exactness) == ("b", DENSE)
    assert result.metrics.nullity_w1 == 1


def test_a_two_d_input_read_as_the_right_operand_has_columns_as_samples(tmp_path, rng):
    """MatMul(A, x) with x (7, 2): two input vectors of 7 elements (dim 0 is not a batch)."""
    path = make_model(
        tmp_path / "m.onnx", [mk("MatMul", ["A", "x"], ["y"])],
        [value("x", [7, 2])], [value("y", [3, 2])],
        [init("A", rng.standard_normal((3, 7)).astype(np.float32))],
    )
    fl = first(path)
    assert (fl.exactness, fl.input_elements, fl.blind_elements) == (DENSE, 7, 0)


def _reads_by_window(size, kernel, stride, dilation, pads):
    """window_reads by looping over every window (the definition)."""
    extent = (kernel - 1) * dilation + 1
    counts = np.zeros(size, dtype=np.int64)
    for i in range(max((size + pads[0] + pads[1] - extent) // stride + 1, 0)):
        for t in range(kernel):
            u = i * stride + t * dilation - pads[0]
            if 0 <= u < size:
                counts[u] += 1
    return counts


def test_window_reads_equal_a_loop_over_windows_and_take_no_time_for_huge_pads():
    """Pads of 2^40 (a fuzzed model) looped over 2^41 windows: audit never ended."""
    import itertools

    for size, k, st, d, p0, p1 in itertools.product(range(1, 7), range(1, 4), range(1, 4),
                                                   range(1, 3), range(4), range(4)):
        np.testing.assert_array_equal(window_reads(size, k, st, d, (p0, p1)),
                                      _reads_by_window(size, k, st, d, (p0, p1)))
    np.testing.assert_array_equal(window_reads(5, 3, 1, 1, (2**40, 2**40)), np.full(5, 3))
    np.testing.assert_array_equal(window_reads(5, 3, 2**40, 1, (0, 0)), [1, 1, 1, 0, 0])
