"""search: the Null-space search on the real input space, checked independently in ONNX Runtime.

Every collision claimed exact is run through ONNX Runtime with W1's output added as an extra
graph output: the relative residual ||L(x') - L(x)|| / ||L(x)|| must be at float32 rounding
level (<= 1e-5) and at least 1e3 times smaller than for a random perturbation of equal norm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import (
    DATA,
    MLP,
    MTCNN,
    OVERLAP,
    PATCH,
    init,
    ints,
    make_model,
    token_ids_model,
    value,
)
from onnx import helper, numpy_helper

from onnxcollide.collide.results import CollisionSet, SearchSettings
from onnxcollide.collide.search import find_collisions, first_layer_kernel, w1_output_name
from onnxcollide.errors import UnsupportedModelError, UsageError
from onnxcollide.graph.input_path import DENSE, OVERLAPPING, PATCHIFY
from onnxcollide.linalg.spectral import ToleranceRule

mk = helper.make_node
LENET_QDQ = str(DATA / "lenet5_mnist_qdq.onnx")

EXACT_RESIDUAL = 1e-5  # float32 rounding level for these small layers (measured ~4e-7)
EXACT_RATIO = 1e3  # random baseline residual / collision residual


# ------------------------------------------------------------------ independent check


def w1_values(path: str, tensor: str, feeds_list: list[dict[str, np.ndarray]]
              ) -> list[np.ndarray]:
    """Run the model with ``tensor`` as an extra output (plain onnxruntime, no graph fusion)."""
    model = onnx.load(path)
    if tensor not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(session.run([tensor], feeds)[0], np.float64) for feeds in feeds_list]


def random_like(x: np.ndarray, norm: float, seed: int) -> np.ndarray:
    """x plus Gaussian noise of Frobenius norm ``norm``, in x's dtype."""
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    return (x.astype(np.float64) + noise * (norm / np.linalg.norm(noise))).astype(x.dtype)


def residuals(found: CollisionSet) -> list[tuple[float, float]]:
    """(collision residual, random baseline residual) at W1 for every colliding input."""
    x = found.feeds[found.input_name]
    runs = [dict(found.feeds)]
    for c in found.collisions:
        norm = float(np.linalg.norm(c.value.astype(np.float64) - x.astype(np.float64)))
        runs.append({**found.feeds, found.input_name: c.value})
        runs.append({**found.feeds, found.input_name: random_like(x, norm, 100 + c.index)})
    outs = w1_values(found.model, found.w1_output, runs)
    base = outs[0]
    scale = float(np.linalg.norm(base))
    rel = [float(np.linalg.norm(o - base)) / scale for o in outs[1:]]
    return list(zip(rel[0::2], rel[1::2], strict=True))


def assert_exact(found: CollisionSet) -> None:
    """Claimed exact, and every colliding input really collides at W1 in ONNX Runtime."""
    assert found.exact is True
    assert found.collisions
    for index, (res, base) in enumerate(residuals(found)):
        assert res <= EXACT_RESIDUAL, (index, res, base)
        assert base > EXACT_RATIO * max(res, 1e-30), (index, res, base)


def image(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A seeded float32 input in [0, 1)."""
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def conv_weight(seed: int, out_ch: int, in_ch: int, k: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((out_ch, in_ch, k, k)).astype(np.float32)


def patchify_after(tmp_path: Path, name: str, pre: list, pre_inits: list, in_shape: list[int],
                   data: str, channels: int = 3, k: int = 4, out_ch: int = 5) -> str:
    """``pre`` nodes (ending in ``data``) then Conv k x k stride k, ``channels`` -> ``out_ch``."""
    nodes = [*pre, mk("Conv", [data, "W"], ["y"], kernel_shape=[k, k], strides=[k, k])]
    return make_model(tmp_path / name, nodes, [value("x", in_shape)],
                      [value("y", ["n", out_ch, "h", "w"])],
                      [init("W", conv_weight(7, out_ch, channels, k)), *pre_inits])


# ------------------------------------------------------------------ dense and patchify


def test_dense_mlp_three_distinct_exact_collisions():
    """mlp_dense (Reshape -> Gemm 256 -> 64), count=3: three different inputs, all exact at W1."""
    x = image(0, (1, 1, 16, 16))
    found = find_collisions(MLP, {"input": x}, SearchSettings(count=3))
    assert found.exactness == DENSE
    assert found.input_name == "input"
    assert found.units == 1 and found.kernel_dims == (192, 192)
    assert [c.index for c in found.collisions] == [0, 1, 2]
    values = [c.value for c in found.collisions]
    for a in range(3):
        assert values[a].shape == x.shape and values[a].dtype == np.float32
        for b in range(a + 1, 3):
            assert not np.array_equal(values[a], values[b])
    for c in found.collisions:
        assert np.array_equal(c.delta, c.value.astype(np.float64) - x.astype(np.float64))
        assert np.linalg.norm(c.delta) == pytest.approx(1.0, rel=1e-5)  # beta=1, one unit
        assert c.basis is None and c.beta == c.beta_min == c.requested_beta == 1.0
    assert_exact(found)
    assert np.array_equal(found.feeds["input"], x)


def test_dense_batch_of_two_perturbs_each_row():
    """Batch 2 through a dense W1: two units (one per input row), both rows change, exact."""
    x = image(1, (2, 1, 16, 16))
    found = find_collisions(MLP, {"input": x}, SearchSettings())
    assert found.units == 2
    delta = found.collisions[0].delta
    assert all(np.linalg.norm(delta[n]) == pytest.approx(1.0, rel=1e-5) for n in range(2))
    assert_exact(found)


def test_patchify_three_distinct_exact_collisions():
    """patch_embed (Conv k8 s8 on 32x32): 16 windows, each a 144-dim kernel; count=3, exact."""
    x = image(2, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(count=3, beta=0.5))
    assert found.exactness == PATCHIFY
    assert found.units == 16 and found.kernel_dims == (144, 144)
    assert found.method == "kernel of W1 per conv window"
    assert len({c.value.tobytes() for c in found.collisions}) == 3
    for c in found.collisions:  # 16 windows, each a unit vector times beta
        assert np.linalg.norm(c.delta) == pytest.approx(0.5 * 4.0, rel=1e-5)
    assert_exact(found)


def test_exact_delta_is_in_the_kernel_in_float64():
    """Collision.exact_delta (before rounding to float32): W^T v ~ 0 in float64 per window,
    computed from the initializer itself; delta (as realised in float32) differs by rounding."""
    x = image(36, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(count=2))
    tensor = next(t for t in onnx.load(PATCH).graph.initializer if t.name == "patchify.weight")
    matrix = numpy_helper.to_array(tensor).astype(np.float64).reshape(48, 192)
    sigma_max = float(np.linalg.norm(matrix, 2))
    for c in found.collisions:
        assert c.exact_delta.dtype == np.float64 and c.exact_delta.shape == x.shape
        assert np.abs(c.exact_delta - c.delta).max() < 1e-6
        windows = c.exact_delta[0].reshape(3, 4, 8, 4, 8).transpose(1, 3, 0, 2, 4)
        outputs = windows.reshape(16, 192) @ matrix.T
        assert np.abs(outputs).max() < 1e-12 * sigma_max
        assert np.linalg.norm(windows.reshape(16, 192), axis=1) == pytest.approx(np.ones(16))


def test_basis_index_is_the_same_kernel_vector_in_every_window():
    """basis=(0,): every 8x8 window of patch_embed gets the same vector, basis vector 0 of W1."""
    x = image(3, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(basis=(0,), beta=2.0))
    delta = found.collisions[0].delta[0]
    first = delta[:, 0:8, 0:8]
    assert np.abs(first).max() > 0
    np.testing.assert_allclose(delta[:, 8:16, 16:24], first, atol=1e-6)
    np.testing.assert_allclose(delta[:, 24:32, 24:32], first, atol=1e-6)
    vectors, patch, _ = first_layer_kernel(PATCH, {"input": x}, SearchSettings())
    assert patch == (3, 8, 8) and vectors.shape == (144, 192)
    np.testing.assert_allclose(first, 2.0 * vectors[0].reshape(3, 8, 8), atol=1e-6)
    assert found.collisions[0].basis == 0
    assert_exact(found)


def test_basis_indices_cycle_over_colliding_inputs():
    """basis=(0, 5), count=3: inputs use 0, 5, 0; the first and third are identical."""
    x = image(4, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(count=3, basis=(0, 5)))
    assert [c.basis for c in found.collisions] == [0, 5, 0]
    assert np.array_equal(found.collisions[0].value, found.collisions[2].value)
    assert not np.array_equal(found.collisions[0].value, found.collisions[1].value)
    assert_exact(found)


def test_basis_index_beyond_the_nullity_is_refused():
    """basis=(144,) on patch_embed (nullity 144 per window): no unit can use it."""
    with pytest.raises(UsageError, match="basis index 144"):
        find_collisions(PATCH, {"input": image(5, (1, 3, 32, 32))},
                        SearchSettings(basis=(144,)))


def test_region_box_on_patch_embed_changes_only_the_box():
    """region ':,0:8,0:8' = one full window: nothing outside it changes; still exact."""
    x = image(6, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(region=":,0:8,0:8", count=2))
    assert found.units == 1
    for c in found.collisions:
        inside = np.zeros(x.shape, bool)
        inside[:, :, 0:8, 0:8] = True
        assert not np.any(c.delta[~inside])
        assert np.array_equal(c.value[~inside], x[~inside])
        assert np.count_nonzero(c.delta[inside]) > 150
    assert_exact(found)


def test_region_cutting_windows_uses_the_kernel_of_the_kept_rows():
    """region ':,0:4,:' on patch_embed: 4 windows with 96 taps each (W_S 96x48: nullity 48)."""
    x = image(7, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x}, SearchSettings(region=":,0:4,:"))
    assert found.units == 4 and found.kernel_dims == (48, 48)
    delta = found.collisions[0].delta
    assert not np.any(delta[:, :, 4:, :])
    assert_exact(found)


def test_region_on_dense_mlp_changes_only_those_rows():
    """region ':,0:8,:' on mlp_dense: rows 8..15 untouched; W_S is 128 x 64 (nullity 64)."""
    x = image(8, (1, 1, 16, 16))
    found = find_collisions(MLP, {"input": x}, SearchSettings(region=":,0:8,:"))
    assert found.kernel_dims == (64, 64)
    delta = found.collisions[0].delta
    assert not np.any(delta[:, :, 8:, :])
    assert np.count_nonzero(delta[:, :, :8, :]) == 128
    assert_exact(found)


@pytest.mark.parametrize("region, match", [
    (":,5:5,:", "selects no element"),
    ("a:b", "does not fit"),
    (":,0:8,0:8,0:1,0:1", "does not fit"),
    (":,40:50,:", "does not fit"),
    (":,0:112,0:112", "does not fit"),  # numpy clipped it to the whole 32 x 32 image
    (":,-33:,:", "does not fit"),
])
def test_bad_region_is_a_usage_error(region, match):
    """A region outside the input, or not a numpy slice, is a UsageError: bounds beyond an
    axis were clipped by numpy without a word (a 0:112 box on a 32 x 32 input took it all)."""
    with pytest.raises(UsageError, match=match):
        find_collisions(PATCH, {"input": image(9, (1, 3, 32, 32))}, SearchSettings(region=region))


def test_region_counted_from_the_end_is_the_same_box():
    """Negative bounds within the axis are numpy's (from the end): -8: is 24:32."""
    x = image(9, (1, 3, 32, 32))
    ends = find_collisions(PATCH, {"input": x}, SearchSettings(region=":,-8:,-8:", count=1))
    box = find_collisions(PATCH, {"input": x}, SearchSettings(region=":,24:32,24:32", count=1))
    np.testing.assert_array_equal(ends.collisions[0].delta, box.collisions[0].delta)
    assert np.any(ends.collisions[0].delta)


def test_region_too_small_for_any_kernel_is_refused():
    """region ':,0:1,:' gives each window 24 taps < 48 outputs: no kernel anywhere."""
    with pytest.raises(UsageError, match="inside the region"):
        find_collisions(PATCH, {"input": image(10, (1, 3, 32, 32))},
                        SearchSettings(region=":,0:1,:"))


@pytest.mark.parametrize("path, shape", [(PATCH, (1, 3, 32, 32)), (MLP, (1, 1, 16, 16))])
def test_valid_range_bounds_beta_and_never_clips(path, shape):
    """valid_range (0, 1), beta 5: every value in [0, 1], beta bounded per unit, still exact."""
    x = image(11, shape)
    found = find_collisions(path, {"input": x},
                            SearchSettings(count=2, beta=5.0, valid_range=(0.0, 1.0)))
    for c in found.collisions:
        assert c.value.min() >= 0.0 and c.value.max() <= 1.0
        assert c.requested_beta == 5.0
        assert 0.0 < c.beta_min < 5.0
        assert c.beta_min <= c.beta <= 5.0
        assert np.any(c.delta)
    assert any("bounded" in note for note in found.notes)
    assert_exact(found)


@pytest.mark.parametrize("path, shape", [(PATCH, (1, 3, 32, 32)), (MLP, (1, 1, 16, 16))])
def test_valid_range_with_inputs_at_the_bound_still_moves(path, shape):
    """x with 30% exact zeros, valid_range (0, 1): the colliding input must differ from x.

    Elements at a bound can only move inwards; leaving them out of the unit (as a region does)
    keeps a kernel of the free taps (e.g. ~134 free taps of 192 per patch_embed window).
    """
    x = image(37, shape)
    x[x < 0.3] = 0.0
    found = find_collisions(path, {"input": x}, SearchSettings(valid_range=(0.0, 1.0)))
    c = found.collisions[0]
    assert c.value.min() >= 0.0 and c.value.max() <= 1.0
    assert np.any(c.delta), found.notes
    assert_exact(found)


def test_negative_beta_with_range_stays_inside():
    """beta -3 with valid_range (0, 1): the sign is kept and the values stay in range."""
    x = image(12, (1, 3, 32, 32))
    found = find_collisions(PATCH, {"input": x},
                            SearchSettings(beta=-3.0, valid_range=(0.0, 1.0)))
    c = found.collisions[0]
    assert c.beta < 0 and c.beta_min < 0 and c.requested_beta == -3.0
    assert c.value.min() >= 0.0 and c.value.max() <= 1.0
    assert_exact(found)


def test_input_outside_the_valid_range_is_a_usage_error():
    """An input with values above hi cannot be kept inside the range by bounding beta."""
    x = image(13, (1, 3, 32, 32)) * 2.0
    with pytest.raises(UsageError, match="not inside --range"):
        find_collisions(PATCH, {"input": x}, SearchSettings(valid_range=(0.0, 1.0)))


def test_same_seed_same_bytes_different_seed_different():
    """Randomness only through the seed: seed 3 twice gives identical bytes, seed 4 does not."""
    x = image(14, (1, 3, 32, 32))

    def run(seed: int) -> bytes:
        found = find_collisions(PATCH, {"input": x}, SearchSettings(count=2, seed=seed))
        return b"".join(c.value.tobytes() + c.delta.tobytes() for c in found.collisions)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_unknown_mode_is_a_usage_error():
    """mode must be one of auto / approximate / tiled."""
    with pytest.raises(UsageError, match="unknown mode"):
        find_collisions(MLP, {"input": image(15, (1, 1, 16, 16))}, SearchSettings(mode="exact"))


def test_w1_output_name():
    """w1_output_name names W1's output tensor (what validation adds as an extra output)."""
    feeds = {"input": image(16, (1, 3, 32, 32))}
    assert w1_output_name(PATCH, feeds) == find_collisions(PATCH, feeds).w1_output


def _weight(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


W1_SHAPES = {
    # name: (nodes, input shape, weight, units, kernel dims)
    "matmul x@W on [1,4,6]": ([mk("MatMul", ["x", "W"], ["y"])], [1, 4, 6], _weight(1, 6, 3),
                              4, (3, 3)),
    "matmul W@x (columns)": ([mk("MatMul", ["W", "x"], ["y"])], [4, 6], _weight(2, 3, 4), 6,
                             (1, 1)),
    "gemm transA": ([mk("Gemm", ["x", "W"], ["y"], transA=1)], [6, 2], _weight(3, 6, 3), 2,
                    (3, 3)),
    "conv with its own pads": ([mk("Conv", ["x", "W"], ["y"], kernel_shape=[4, 4],
                                   strides=[4, 4], pads=[1, 1, 1, 1])], [1, 2, 6, 6],
                               _weight(4, 5, 2, 4, 4), 4, (13, 13)),
    "grouped conv": ([mk("Conv", ["x", "W"], ["y"], kernel_shape=[4, 4], strides=[4, 4],
                         group=3)], [1, 3, 8, 8], _weight(5, 6, 1, 4, 4), 4, (42, 42)),
    "dilated 1-D conv": ([mk("Conv", ["x", "W"], ["y"], kernel_shape=[2], strides=[2],
                             dilations=[3])], [1, 4, 8], _weight(6, 3, 4, 2), 3, (5, 5)),
    "stride > kernel": ([mk("Conv", ["x", "W"], ["y"], kernel_shape=[2, 2], strides=[3, 3])],
                        [1, 3, 8, 8], _weight(7, 4, 3, 2, 2), 9, (8, 8)),
    "convtranspose": ([mk("ConvTranspose", ["x", "W"], ["y"], kernel_shape=[2, 2],
                          strides=[2, 2])], [1, 6, 3, 3], _weight(8, 6, 1, 2, 2), 9, (2, 2)),
}


@pytest.mark.parametrize("case", list(W1_SHAPES))
def test_exact_collisions_for_other_first_layers(tmp_path, case):
    """Dense and patchify W1 variants: units and kernel dims as computed by hand; exact."""
    nodes, in_shape, weight, units, dims = W1_SHAPES[case]
    path = make_model(tmp_path / "m.onnx", nodes, [value("x", in_shape)], [value("y", None)],
                      [init("W", weight)], check=False)
    x = image(38, tuple(in_shape))
    found = find_collisions(path, {"x": x}, SearchSettings(count=2))
    assert (found.units, found.kernel_dims) == (units, dims)
    assert_exact(found)


def test_blind_elements_are_left_alone(tmp_path):
    """Conv k2 s3 on 8x8 reads rows/cols {0,1,3,4,6,7}: rows/cols 2 and 5 never change."""
    path = make_model(tmp_path / "m.onnx",
                      [mk("Conv", ["x", "W"], ["y"], kernel_shape=[2, 2], strides=[3, 3])],
                      [value("x", [1, 3, 8, 8])], [value("y", None)],
                      [init("W", _weight(7, 4, 3, 2, 2))], check=False)
    found = find_collisions(path, {"x": image(39, (1, 3, 8, 8))})
    delta = found.collisions[0].delta
    assert not delta[:, :, [2, 5], :].any() and not delta[:, :, :, [2, 5]].any()
    assert np.count_nonzero(delta) == 3 * 36


# ------------------------------------------------------------------ paths before W1


def test_channels_last_transpose_then_patchify(tmp_path):
    """NHWC [1,8,8,3] -> Transpose(0,3,1,2) -> Conv k4 s4 3->5: delta in NHWC, exact."""
    path = patchify_after(tmp_path, "nhwc.onnx", [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])],
                          [], [1, 8, 8, 3], "t")
    x = image(17, (1, 8, 8, 3))
    found = find_collisions(path, {"x": x}, SearchSettings(count=2, basis=(0, 1)))
    assert found.exactness == PATCHIFY and found.units == 4 and found.kernel_dims == (43, 43)
    delta = found.collisions[0].delta
    assert delta.shape == (1, 8, 8, 3)
    # the same kernel vector in each window, laid out channels-last
    np.testing.assert_allclose(delta[0, 4:8, 4:8, :], delta[0, 0:4, 0:4, :], atol=1e-6)
    vectors, _, _ = first_layer_kernel(path, {"x": x}, SearchSettings())
    np.testing.assert_allclose(delta[0, 0:4, 0:4, :].transpose(2, 0, 1),
                               vectors[0].reshape(3, 4, 4), atol=1e-6)
    assert_exact(found)


def test_channels_last_region_is_in_the_input_layout(tmp_path):
    """NHWC model, region ':4,:4,:' (H, W, C of the input): exactly the top-left window moves."""
    path = patchify_after(tmp_path, "nhwc.onnx", [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])],
                          [], [1, 8, 8, 3], "t")
    found = find_collisions(path, {"x": image(40, (1, 8, 8, 3))}, SearchSettings(region=":4,:4,:"))
    delta = found.collisions[0].delta
    assert found.units == 1
    assert np.count_nonzero(delta[0, :4, :4, :]) == np.count_nonzero(delta) == 48
    assert_exact(found)


def test_mtcnn_channels_last_overlapping_class_and_tiled_mode():
    """mtcnn_pnet: NHWC input, Transpose, Conv 3x3 s1: overlapping; tiled delta is NHWC, inexact."""
    x = image(18, (1, 12, 12, 3))
    found = find_collisions(MTCNN, {"input_1": x}, SearchSettings(mode="tiled"))
    assert found.exactness == OVERLAPPING
    assert found.exact is False
    assert "tiled" in found.method and "not a collision" in found.method
    assert found.collisions[0].delta.shape == (1, 12, 12, 3)
    assert found.operator is None


def test_mtcnn_auto_mode_uses_the_conv_operator():
    """mtcnn_pnet in auto mode: the conv operator decides; exact only if it really collides."""
    x = image(19, (1, 12, 12, 3))
    found = find_collisions(MTCNN, {"input_1": x}, SearchSettings())
    assert found.exactness == OVERLAPPING
    assert found.operator is not None
    assert found.operator["input_shape"] == [3, 12, 12]
    if found.exact:
        assert_exact(found)
    else:
        assert not found.collisions
        assert "no exact collision" in found.method


def test_sub_div_normalisation_scales_the_perturbation_by_std(tmp_path):
    """(x - mean) / std before a patchify conv: exact at W1, input delta = W1-space delta * std."""
    std = np.array([0.5, 2.0, 4.0], np.float32).reshape(1, 3, 1, 1)
    mean = np.array([0.4, 0.5, 0.6], np.float32).reshape(1, 3, 1, 1)
    path = patchify_after(tmp_path, "norm.onnx",
                          [mk("Sub", ["x", "mean"], ["s"]), mk("Div", ["s", "std"], ["n"])],
                          [init("mean", mean), init("std", std)], [1, 3, 8, 8], "n")
    x = image(20, (1, 3, 8, 8))
    found = find_collisions(path, {"x": x}, SearchSettings(basis=(0,)))
    vectors, _, _ = first_layer_kernel(path, {"x": x}, SearchSettings())
    delta = found.collisions[0].delta[0]
    for rows in (slice(0, 4), slice(4, 8)):
        for cols in (slice(0, 4), slice(4, 8)):
            np.testing.assert_allclose(delta[:, rows, cols], vectors[0].reshape(3, 4, 4) * std[0],
                                       atol=1e-6)
    assert_exact(found)
    # the perturbation seen at W1's input is the kernel vector itself (the Div output moves by it)
    before, after = w1_values(path, "n", [{"x": x}, {"x": found.collisions[0].value}])
    np.testing.assert_allclose((after - before)[0, :, 0:4, 0:4], vectors[0].reshape(3, 4, 4),
                               atol=1e-5)


def test_constant_pad_before_patchify_excludes_padded_taps(tmp_path):
    """Pad 1 (constant 0) on [1,2,6,6] then Conv k4 s4 on 8x8: every window touches padding.

    Each window reads 3x3 real pixels per channel (18 taps, 5 outputs: nullity 13); the padded
    taps are constant and must be left out. The collision is still exact.
    """
    path = patchify_after(tmp_path, "pad.onnx", [mk("Pad", ["x", "pads"], ["p"])],
                          [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], [1, 2, 6, 6], "p", channels=2)
    x = image(21, (1, 2, 6, 6))
    found = find_collisions(path, {"x": x}, SearchSettings(count=2))
    assert found.units == 4 and found.kernel_dims == (13, 13)
    assert found.collisions[0].delta.shape == (1, 2, 6, 6)
    assert_exact(found)


def test_constant_pad_before_patchify_with_a_whole_input_region(tmp_path):
    """The same Pad model with region ':' (the whole input): padded taps excluded, exact.

    A region routes through pull_positions, which knows the Pad: the workaround for the bug above.
    """
    path = patchify_after(tmp_path, "pad.onnx", [mk("Pad", ["x", "pads"], ["p"])],
                          [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], [1, 2, 6, 6], "p", channels=2)
    x = image(21, (1, 2, 6, 6))
    found = find_collisions(path, {"x": x}, SearchSettings(count=2, region=":"))
    assert found.units == 4 and found.kernel_dims == (13, 13)
    assert np.count_nonzero(found.collisions[0].delta) == 2 * 36
    assert_exact(found)


def test_reflect_pad_on_the_path_is_refused_in_tiled_mode(tmp_path):
    """A reflect Pad copies pixels: a perturbation cannot be mapped back; the error names Pad."""
    path = patchify_after(tmp_path, "reflect.onnx", [mk("Pad", ["x", "pads"], ["p"],
                                                        mode="reflect")],
                          [ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], [1, 2, 6, 6], "p", channels=2)
    with pytest.raises(UnsupportedModelError, match="Pad"):
        find_collisions(path, {"x": image(22, (1, 2, 6, 6))}, SearchSettings(mode="tiled"))


def test_slice_with_steps_before_the_conv(tmp_path):
    """Slice (rows ::2, cols 1::2 via axis -1) before Conv k4 s4: only kept elements move."""
    pre = [mk("Slice", ["x", "st", "en", "ax", "sp"], ["s"])]
    inits = [ints("st", [0, 1]), ints("en", [16, 17]), ints("ax", [2, -1]), ints("sp", [2, 2])]
    path = patchify_after(tmp_path, "slice.onnx", pre, inits, [1, 3, 16, 17], "s")
    x = image(23, (1, 3, 16, 17))
    found = find_collisions(path, {"x": x}, SearchSettings(count=2))
    assert found.units == 4
    delta = found.collisions[0].delta
    kept = np.zeros(x.shape, bool)
    kept[:, :, 0::2, 1::2] = True
    assert not np.any(delta[~kept])
    assert np.count_nonzero(delta[kept]) == 192
    assert_exact(found)


def _two_input_model(tmp_path) -> str:
    """x -> Conv (patchify 4x4/4, 3 -> 5) -> Add(y): a model with two float inputs."""
    return make_model(
        tmp_path / "two.onnx",
        [mk("Conv", ["x", "W"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
         mk("Add", ["c", "y"], ["out"])],
        [value("x", [1, 3, 8, 8]), value("y", [1, 5, 2, 2])], [value("out", [1, 5, 2, 2])],
        [init("W", conv_weight(8, 5, 3, 4))])


def test_two_inputs_only_the_perturbed_one_changes(tmp_path):
    """x -> Conv -> Add(y): x is perturbed, y's feed is passed through unchanged."""
    path = _two_input_model(tmp_path)
    x, y = image(24, (1, 3, 8, 8)), image(25, (1, 5, 2, 2))
    found = find_collisions(path, {"x": x, "y": y}, SearchSettings(count=2))
    assert found.input_name == "x"
    assert set(found.feeds) == {"x", "y"}
    assert np.array_equal(found.feeds["y"], y) and np.array_equal(found.feeds["x"], x)
    assert all(c.value.shape == x.shape for c in found.collisions)
    assert_exact(found)


def test_two_inputs_missing_feed_and_unknown_input_name(tmp_path):
    """Every input needs a value; input_name must name one of them."""
    path = _two_input_model(tmp_path)
    x, y = image(24, (1, 3, 8, 8)), image(25, (1, 5, 2, 2))
    with pytest.raises(UsageError, match="no value for input"):
        find_collisions(path, {"x": x})
    with pytest.raises(UsageError, match="no input 'z'"):
        find_collisions(path, {"x": x, "y": y}, SearchSettings(input_name="z"))
    with pytest.raises(UsageError, match="reaches no linear op"):  # y reaches no linear op
        find_collisions(path, {"x": x, "y": y}, SearchSettings(input_name="y"))


def test_batch_normalization_on_the_path(tmp_path):
    """BatchNormalization (inference) before a patchify conv: exact; delta scaled per channel."""
    scale = np.array([0.5, 2.0, -1.5], np.float32)
    var = np.array([0.04, 1.0, 2.5], np.float32)
    inits = [init("g", scale), init("b", np.array([0.1, 0.0, -0.3], np.float32)),
             init("m", np.array([0.4, 0.5, 0.6], np.float32)), init("v", var)]
    pre = [mk("BatchNormalization", ["x", "g", "b", "m", "v"], ["bn"], epsilon=1e-3)]
    path = patchify_after(tmp_path, "bn.onnx", pre, inits, [1, 3, 8, 8], "bn")
    x = image(26, (1, 3, 8, 8))
    found = find_collisions(path, {"x": x}, SearchSettings(basis=(0,)))
    vectors, _, _ = first_layer_kernel(path, {"x": x}, SearchSettings())
    factor = (np.sqrt(var.astype(np.float64) + 1e-3) / scale).reshape(3, 1, 1)
    np.testing.assert_allclose(found.collisions[0].delta[0, :, 4:8, 0:4],
                               vectors[0].reshape(3, 4, 4) * factor, atol=1e-6)
    assert_exact(found)


# ------------------------------------------------------------------ not applicable


def test_full_rank_dense_w1_has_no_exact_collision(tmp_path):
    """Gemm with an 8 x 8 invertible weight: trivial kernel, UnsupportedModelError says so."""
    weight = np.eye(8, dtype=np.float32) * 2.0
    path = make_model(tmp_path / "full.onnx", [mk("Gemm", ["x", "B"], ["y"])],
                      [value("x", [1, 8])], [value("y", [1, 8])], [init("B", weight)])
    with pytest.raises(UnsupportedModelError, match="trivial"):
        find_collisions(path, {"x": image(35, (1, 8))})


def test_token_ids_named_input_says_token_ids_and_gather(tmp_path):
    """input_name='ids': the error says the input is token ids looked up by Gather."""
    feeds = {"ids": np.arange(6, dtype=np.int64)[None]}
    with pytest.raises(UnsupportedModelError, match="token ids") as info:
        find_collisions(token_ids_model(tmp_path), feeds, SearchSettings(input_name="ids"))
    assert "Gather" in str(info.value)


def test_token_ids_error_says_why(tmp_path):
    """int64 ids -> Gather -> MatMul: UnsupportedModelError that names token ids and Gather."""
    feeds = {"ids": np.arange(6, dtype=np.int64)[None]}
    with pytest.raises(UnsupportedModelError) as info:
        find_collisions(token_ids_model(tmp_path), feeds)
    text = str(info.value)
    assert "token ids" in text and "Gather" in text, text


# ------------------------------------------------------------------ overlapping conv


def test_tiled_mode_on_an_overlapping_conv_is_not_a_collision():
    """cnn_overlap, mode tiled: exact False, and its W1 residual is far from a collision's.

    This is what the paper's repetition of a per-patch kernel vector does when windows share
    pixels: the residual is of the order of a random perturbation's (measured 0.05 vs 0.1).
    """
    x = image(28, (1, 3, 32, 32))
    found = find_collisions(OVERLAP, {"input": x}, SearchSettings(mode="tiled", count=2))
    assert found.exactness == OVERLAPPING and found.exact is False
    assert "tiled" in found.method and "not a collision" in found.method
    assert found.units == 256 and found.kernel_dims == (59, 59)
    for res, base in residuals(found):
        assert res > 1e-3, (res, base)
        assert base < 100 * res, (res, base)


def test_tiled_mode_repeats_the_per_patch_vector_entries():
    """Tiled with basis 0: every value (divided by std) is an entry of basis vector 0's channel."""
    x = image(29, (1, 3, 32, 32))
    found = find_collisions(OVERLAP, {"input": x}, SearchSettings(mode="tiled", basis=(0,)))
    vectors, patch, _ = first_layer_kernel(OVERLAP, {"input": x}, SearchSettings())
    assert patch == (3, 5, 5)
    std = np.array([0.229, 0.224, 0.225])
    seen = found.collisions[0].delta[0] / std.reshape(3, 1, 1)
    entries = vectors[0].reshape(3, 25)
    for ch in range(3):
        gap = np.abs(seen[ch].reshape(-1, 1) - entries[ch][None, :]).min(axis=1)
        assert gap.max() < 1e-5


def test_overlapping_auto_never_claims_exact_without_the_operator():
    """cnn_overlap, auto: exact only where the operator's sigma <= tol; else no collision."""
    x = image(30, (1, 3, 32, 32))
    found = find_collisions(OVERLAP, {"input": x}, SearchSettings())
    assert found.exactness == OVERLAPPING
    op = found.operator
    assert op is not None
    assert op["input_shape"] == [3, 32, 32]
    assert op["sigmas"] and op["relative"] and op["tol"] > 0 and op["sigma_max"] > 0
    if found.exact:
        assert op["exact"] >= 1 and op["sigmas"][0] <= op["tol"]
        assert_exact(found)
    else:
        assert not found.collisions
        assert op["exact"] == 0 and op["sigmas"][0] > op["tol"]
        assert "no exact collision" in found.method
        assert any("approximate" in note for note in found.notes)


def test_overlapping_approximate_mode_gives_one_inexact_collision():
    """cnn_overlap, mode approximate: one colliding input, exact False, better than random."""
    x = image(31, (1, 3, 32, 32))
    found = find_collisions(OVERLAP, {"input": x}, SearchSettings(mode="approximate"))
    assert len(found.collisions) == 1
    assert found.operator is not None
    if found.operator["exact"]:
        assert_exact(found)
        return
    assert found.exact is False
    assert "approximate" in found.method
    (res, base), = residuals(found)
    assert res < base, (res, base)


def test_overlapping_region_is_refused():
    """A region cannot be combined with the whole-operator analysis of an overlapping conv."""
    with pytest.raises(UsageError, match="region"):
        find_collisions(OVERLAP, {"input": image(32, (1, 3, 32, 32))},
                        SearchSettings(region=":,0:8,0:8"))


# ------------------------------------------------------------------ QDQ


def test_qdq_lenet_runs_and_reports_its_class():
    """LeNet QDQ (QuantizeLinear/DequantizeLinear -> Conv 5x5 s1): overlapping; tiled runs."""
    x = image(33, (10, 1, 28, 28))
    found = find_collisions(LENET_QDQ, {"input_0": x}, SearchSettings(mode="tiled"))
    assert found.exactness == OVERLAPPING
    assert found.exact is False
    assert found.collisions[0].value.shape == x.shape


def test_qdq_lenet_report_carries_the_quantization_caveat():
    """QuantizeLinear on the path rounds the input: the collision set must say so."""
    found = find_collisions(LENET_QDQ, {"input_0": image(33, (10, 1, 28, 28))},
                            SearchSettings(mode="tiled"))
    text = " ".join([found.method, *found.notes])
    assert "QuantizeLinear" in text or "quantiz" in text.lower(), text


def test_qdq_before_patchify_does_not_claim_an_unqualified_exact_collision(tmp_path):
    """Q/DQ (scale 1/255, uint8) -> Conv k4 s4: either not exact, or the caveat is stated."""
    pre = [mk("QuantizeLinear", ["x", "s", "z"], ["q"]),
           mk("DequantizeLinear", ["q", "s", "z"], ["dq"])]
    inits = [init("s", np.float32(1 / 255)), init("z", np.uint8(0))]
    path = patchify_after(tmp_path, "qdq.onnx", pre, inits, [1, 3, 8, 8], "dq")
    found = find_collisions(path, {"x": image(34, (1, 3, 8, 8))}, SearchSettings(beta=0.2))
    (res, _), = residuals(found)
    assert res > 1e-4  # the rounding really breaks exactness in ONNX Runtime
    assert not found.exact or any("Quantize" in n for n in found.notes), (found.exact,
                                                                          found.notes)


def test_tiled_mode_refuses_a_region():
    """The paper's tiling repeats one vector over the whole input, so --region cannot apply:
    a usage error instead of silently changing every element."""
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    with pytest.raises(UsageError, match="region"):
        find_collisions(OVERLAP, {"input": x}, SearchSettings(mode="tiled", region=":,0:8,0:8"))


# ------------------------------------------------------------------ overlapping ConvTranspose


def conv_transpose_model(tmp_path: Path, shape: list[int], kernel: int = 3,
                         stride: int = 1) -> str:
    """ConvTranspose 6 -> 1 channels, k x k, stride s: per-position W is 6 x k^2."""
    weight = np.random.default_rng(41).standard_normal((6, 1, kernel, kernel))
    return make_model(tmp_path / "convT.onnx",
                      [mk("ConvTranspose", ["x", "W"], ["y"], strides=[stride, stride])],
                      [value("x", shape)], [value("y", None)],
                      [init("W", weight.astype(np.float32))], check=False)


def test_overlapping_conv_transpose_uses_the_whole_operator(tmp_path):
    """The review's convT_s1: 6 -> 1, k3 s1 on 5x5 maps R^150 -> R^49. The per-position
    W (6 x 9) has rank 6 (trivial kernel), but the operator has a 101-dim null space: the
    search used to say 'no exact collision exists'. Now it reports the dimension and makes
    exact collisions, checked in ONNX Runtime."""
    path = conv_transpose_model(tmp_path, [1, 6, 5, 5])
    found = find_collisions(path, {"x": image(42, (1, 6, 5, 5))}, SearchSettings(count=2))
    assert found.exactness == OVERLAPPING
    assert found.operator is not None and found.operator["null_space_dim"] == 101
    assert "null space of dimension 101" in found.method
    assert_exact(found)


def test_conv_transpose_too_large_never_claims_no_collision(tmp_path, monkeypatch):
    """Where the whole ConvTranspose is too large for the dense analysis and the per-position
    kernel is trivial, the error says collisions may exist (at least n_in - n_out of them),
    never that none exists."""
    from onnxcollide.collide import search
    from onnxcollide.linalg import conv_operator as convop

    monkeypatch.setattr(convop, "TRANSPOSED_DENSE_MAX_DIM", 10)
    monkeypatch.setattr(search, "TRANSPOSED_DENSE_MAX_DIM", 10)
    path = conv_transpose_model(tmp_path, [1, 6, 5, 5])
    with pytest.raises(UnsupportedModelError) as caught:
        find_collisions(path, {"x": image(42, (1, 6, 5, 5))})
    text = caught.value.one_line()
    assert "no exact collision exists" not in text
    assert "at least 101 null directions" in text


def test_conv_transpose_spectrum_matches_a_dense_svd():
    """convop.transposed_smallest_singular: the ConvTranspose is the adjoint of the conv, so
    its singular values and null dimension are those of conv_matrix(spec)^T."""
    from onnxcollide.linalg.conv_operator import ConvSpec, conv_matrix, transposed_smallest_singular

    weight = np.random.default_rng(43).standard_normal((6, 2, 3, 3))
    spec = ConvSpec(weight=weight, strides=(2, 2), dilations=(1, 1), pads=(1, 1, 1, 1),
                    groups=1, input_shape=(2, 7, 7))
    spectrum = transposed_smallest_singular(spec, k=3)
    assert spectrum is not None
    t = conv_matrix(spec).toarray().T  # (n_out of T, n_in of T)
    full = np.zeros(t.shape[1])
    s = np.linalg.svd(t, compute_uv=False)
    full[: s.size] = s
    np.testing.assert_allclose(spectrum.sigmas, np.sort(full)[:3], atol=1e-10)
    for v, sigma in zip(spectrum.vectors.reshape(3, -1), spectrum.sigmas, strict=True):
        assert abs(np.linalg.norm(t @ v) - sigma) < 1e-10
    assert spectrum.null_dim == int(np.sum(full <= spectrum.tol))


# ------------------------------------------------------------------ blind elements


def blind_model(tmp_path: Path) -> str:
    """Conv 1 -> 4 channels, k2 s4 on 8x8: W (4 x 4) has full rank, 48 of 64 elements blind."""
    weight = np.random.default_rng(44).standard_normal((4, 1, 2, 2)).astype(np.float32)
    return make_model(tmp_path / "blind.onnx",
                      [mk("Conv", ["x", "W"], ["y"], kernel_shape=[2, 2], strides=[4, 4])],
                      [value("x", [1, 1, 8, 8])], [value("y", None)], [init("W", weight)],
                      check=False)


def test_blind_elements_are_the_collisions_of_an_injective_w1(tmp_path):
    """The review's blind.onnx: W1's per-window kernel is trivial, but 48 input elements are
    read by no window, so moving them is an exact collision; collide used to say none exists.
    Only blind elements move, each by +-beta, and the range bounds each one's own beta."""
    path = blind_model(tmp_path)
    found = find_collisions(path, {"x": image(45, (1, 1, 8, 8))},
                            SearchSettings(count=2, valid_range=(0.0, 1.0)))
    assert found.units == 48 and found.kernel_dims == (1, 1)
    assert "48 blind input element(s)" in found.method
    read = np.zeros((8, 8), dtype=bool)
    read[np.ix_([0, 1, 4, 5], [0, 1, 4, 5])] = True
    for c in found.collisions:
        assert not c.delta[0, 0][read].any() and np.count_nonzero(c.delta) == 48
        assert c.value.min() >= 0.0 and c.value.max() <= 1.0
    assert_exact(found)


def test_blind_elements_outside_the_region_are_named(tmp_path):
    """A region that holds no blind element: a usage error that names the blind elements,
    not 'no exact collision exists'."""
    path = blind_model(tmp_path)
    with pytest.raises(UsageError) as caught:
        find_collisions(path, {"x": image(45, (1, 1, 8, 8))}, SearchSettings(region=":,0:2,0:2"))
    assert "48 blind input element(s)" in caught.value.one_line()
    assert "no exact collision exists" not in caught.value.one_line()


# ------------------------------------------------------------------ float16 W1


def fp16_gemm(tmp_path: Path) -> str:
    """float16 x [1, 40] -> MatMul W (40 x 20, float16) with singular values 4 ... 0.04: the
    float16 tolerance (40 * 2^-10 * 4 = 0.156) drops three values far above float32 rounding,
    beside the 20 structural zeros."""
    rng = np.random.default_rng(47)
    u, _ = np.linalg.qr(rng.standard_normal((40, 20)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    sigmas = np.linspace(4.0, 0.04, 20)
    weight = ((u * sigmas) @ v.T).astype(np.float16)
    return make_model(tmp_path / "fp16.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 40], onnx.TensorProto.FLOAT16)],
                      [value("y", [1, 20], onnx.TensorProto.FLOAT16)], [init("W", weight)])


def test_float16_kernel_at_its_tolerance_is_labelled_approximate(tmp_path):
    """The review's fp16.onnx: collide called kernel vectors at the float16 tolerance exact,
    then validation FAILed them. They are now approximate, with a note naming the largest
    dropped singular value; a float32-level --rtol gives a kernel that is exact."""
    path = fp16_gemm(tmp_path)
    x = {"x": image(48, (1, 40)).astype(np.float16)}
    found = find_collisions(path, x)
    assert found.exact is False and "float16 tolerance (approximate)" in found.method
    assert any("these collisions are approximate" in n for n in found.notes)
    tight = find_collisions(path, x, SearchSettings(rule=ToleranceRule(rtol=1e-6)))
    assert tight.exact is True and tight.kernel_dims == (20, 20)
    assert not any("approximate" in n for n in tight.notes)
