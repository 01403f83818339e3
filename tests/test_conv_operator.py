"""convop: the whole conv as an operator (forward, exact adjoint) and its smallest singulars."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import scipy.sparse.linalg as sla
from builders import DATA
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.errors import UsageError
from onnxcollide.linalg import conv_operator as convop
from onnxcollide.linalg.conv_operator import (
    ConvSpec,
    OperatorSpectrum,
    blind_inputs,
    conv_adjoint,
    conv_forward,
    conv_matrix,
    output_shape,
    smallest_singular,
)

EPS32 = 2.0**-23


def make_spec(rng: np.random.Generator, out_ch: int, in_ch: int, kernel: tuple[int, ...],
              spatial: tuple[int, ...], strides: tuple[int, ...] | None = None,
              dilations: tuple[int, ...] | None = None, pads: tuple[int, ...] | None = None,
              groups: int = 1) -> ConvSpec:
    """A conv with standard-normal weights."""
    d = len(kernel)
    return ConvSpec(weight=rng.standard_normal((out_ch, in_ch // groups, *kernel)),
                    strides=strides or (1,) * d, dilations=dilations or (1,) * d,
                    pads=pads or (0,) * (2 * d), groups=groups, input_shape=(in_ch, *spatial))


# 1-D, 2-D stride 2, dilation 2, groups 2, asymmetric padding, remainder rows, 3-D
GEOMETRIES = {
    "1d-stride2-pad": dict(out_ch=4, in_ch=2, kernel=(5,), spatial=(23,), strides=(2,),
                           pads=(2, 1)),
    "2d-resnet-stem": dict(out_ch=8, in_ch=3, kernel=(7, 7), spatial=(16, 16), strides=(2, 2),
                           pads=(3, 3, 3, 3)),
    "2d-dilation2": dict(out_ch=5, in_ch=2, kernel=(3, 3), spatial=(13, 12), dilations=(2, 2),
                         pads=(2, 2, 2, 2)),
    "2d-groups2": dict(out_ch=6, in_ch=4, kernel=(3, 3), spatial=(9, 10), strides=(2, 1),
                       pads=(1, 0, 1, 1), groups=2),
    "2d-remainder": dict(out_ch=3, in_ch=2, kernel=(3, 2), spatial=(11, 10), strides=(3, 3)),
    "3d": dict(out_ch=2, in_ch=2, kernel=(2, 3, 2), spatial=(5, 6, 7), strides=(2, 1, 2),
               dilations=(1, 2, 1), pads=(0, 1, 1, 1, 0, 1)),
}


def onnx_conv(spec: ConvSpec, x: np.ndarray) -> np.ndarray:
    """The same conv run by onnx.reference (a one-node model, float64)."""
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(spec.strides),
                            dilations=list(spec.dilations), pads=list(spec.pads),
                            group=spec.groups)
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[numpy_helper.from_array(np.asarray(spec.weight, np.float64), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ReferenceEvaluator(model).run(None, {"x": x[None]})[0][0]


def dense_svd(spec: ConvSpec) -> tuple[np.ndarray, np.ndarray]:
    """All singular values of A (ascending, zeros for a wide matrix) and the matching right
    singular vectors (rows), from the dense matrix built column by column."""
    a = conv_matrix(spec).toarray()
    _, s, vt = np.linalg.svd(a, full_matrices=True)
    sig = np.zeros(a.shape[1])
    sig[:s.size] = s
    return sig[::-1], vt[::-1]


def sparse_smallest(spec: ConvSpec, k: int) -> tuple[np.ndarray, float]:
    """Reference: the k smallest singular values by sparse shift-invert on A^T A, and sigma_max."""
    a = conv_matrix(spec)
    gram = (a.T @ a).tocsc()
    top = float(sla.eigsh(gram, k=1, which="LA", return_eigenvectors=False)[0])
    vals = sla.eigsh(gram, k=k, sigma=-1e-3 * top, which="LM", return_eigenvectors=False)
    return np.sqrt(np.abs(np.sort(vals))), math.sqrt(top)


def assert_certified(spec: ConvSpec, res: OperatorSpectrum) -> None:
    """Each returned vector is unit-norm, sign-fixed, and ||A v|| equals its sigma."""
    for s, v, r in zip(res.sigmas, res.vectors, res.residuals, strict=True):
        assert np.linalg.norm(v) == pytest.approx(1.0, abs=1e-12)
        flat = v.ravel()
        assert flat[np.argmax(np.abs(flat))] > 0
        assert np.linalg.norm(conv_forward(spec, v)) == pytest.approx(s, abs=1e-9 * res.sigma_max)
        atav = conv_adjoint(spec, conv_forward(spec, v))
        assert np.linalg.norm(atav - s**2 * v) == pytest.approx(r, abs=1e-10 * res.sigma_max**2)


@pytest.fixture
def iterative(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the iterative (LOBPCG) path even for operators small enough for a dense SVD."""
    monkeypatch.setattr(convop, "DENSE_MAX_DIM", 0)


# --- the operator ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint_is_exact(rng: np.random.Generator, name: str) -> None:
    """<A x, y> == <x, A^T y> to 1e-10 in float64 for every geometry."""
    spec = make_spec(rng, **GEOMETRIES[name])
    x = rng.standard_normal(spec.input_shape)
    y = rng.standard_normal(output_shape(spec))
    lhs = float(np.vdot(conv_forward(spec, x), y))
    rhs = float(np.vdot(x, conv_adjoint(spec, y)))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_forward_matches_onnx_reference(rng: np.random.Generator, name: str) -> None:
    """conv_forward equals onnx.reference's Conv (zero padding, no bias) on random data."""
    spec = make_spec(rng, **GEOMETRIES[name])
    x = rng.standard_normal(spec.input_shape)
    expected = onnx_conv(spec, x)
    got = conv_forward(spec, x)
    assert got.shape == expected.shape == output_shape(spec)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_conv_matrix_matches_forward(rng: np.random.Generator, name: str) -> None:
    """The sparse matrix of the conv applies like conv_forward."""
    spec = make_spec(rng, **GEOMETRIES[name])
    x = rng.standard_normal(spec.input_shape)
    np.testing.assert_allclose(conv_matrix(spec) @ x.ravel(), conv_forward(spec, x).ravel(),
                               atol=1e-12)


def test_bad_shapes_raise_usage_error(rng: np.random.Generator) -> None:
    """Shapes that do not fit give a UsageError, not a numpy traceback."""
    spec = make_spec(rng, 4, 3, (3, 3), (8, 8))
    with pytest.raises(UsageError):
        conv_forward(spec, np.zeros((3, 8, 9)))
    with pytest.raises(UsageError):
        conv_adjoint(spec, np.zeros((4, 5, 5)))
    with pytest.raises(UsageError):
        output_shape(ConvSpec(spec.weight, (1, 1), (1, 1), (0, 0, 0, 0), 1, (2, 8, 8)))
    with pytest.raises(UsageError):
        output_shape(ConvSpec(spec.weight, (1, 1), (1, 1), (0, 0, 0, 0), 1, (3, 2, 2)))
    with pytest.raises(UsageError):
        smallest_singular(spec, k=0)
    nan = ConvSpec(np.full((2, 1, 2, 2), np.nan), (1, 1), (1, 1), (0, 0, 0, 0), 1, (1, 8, 8))
    with pytest.raises(UsageError):
        smallest_singular(nan)


# --- smallest singular values: small operators against a dense SVD ----------------------


@pytest.mark.parametrize("out_ch", [3, 12])
@pytest.mark.parametrize("path", ["dense", "iterative"])
def test_small_matches_dense_svd(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                 out_ch: int, path: str) -> None:
    """C=2, 9x9 (and 2x20x20 for the iterative path), 3x3 stride 2: the k smallest singular
    values equal those of the dense matrix to 1e-8; vectors agree up to sign (distinct values)
    or span the same subspace (the kernel when O=3 makes A wide)."""
    if path == "iterative":
        monkeypatch.setattr(convop, "DENSE_MAX_DIM", 0)
    size = 9 if path == "dense" else 20
    spec = make_spec(rng, out_ch, 2, (3, 3), (size, size), strides=(2, 2), pads=(1, 1, 1, 1))
    k = 4
    res = smallest_singular(spec, k=k)
    sig, vecs = dense_svd(spec)
    assert res.sigma_max == pytest.approx(sig[-1], rel=1e-9)
    np.testing.assert_allclose(res.sigmas, sig[:k], atol=1e-8 * sig[-1])
    assert res.converged
    assert_certified(spec, res)
    got = res.vectors.reshape(k, -1)
    if np.all(np.diff(sig[:k + 1]) > 1e-3 * sig[-1]):  # distinct: each vector up to sign
        np.testing.assert_allclose(np.abs(np.sum(got * vecs[:k], axis=1)), 1.0, atol=1e-6)
    else:  # a degenerate cluster (here the kernel): the returned vectors lie in its span
        cluster = vecs[sig <= sig[k - 1] + 1e-6 * sig[-1]]
        np.testing.assert_allclose(np.linalg.norm(got @ cluster.T, axis=1), 1.0, atol=1e-6)
    assert res.exact == int(np.sum(res.sigmas <= res.tol))


def test_one_d_matches_dense_svd(rng: np.random.Generator, iterative: None) -> None:
    """A 1-D conv (stride 2, pads 2/1) on 300 samples through the iterative path."""
    spec = make_spec(rng, 5, 2, (5,), (300,), strides=(2,), pads=(2, 1))
    res = smallest_singular(spec, k=3)
    sig, _ = dense_svd(spec)
    np.testing.assert_allclose(res.sigmas, sig[:3], atol=1e-8 * sig[-1])
    assert_certified(spec, res)


def test_groups_are_solved_separately(rng: np.random.Generator, iterative: None) -> None:
    """A grouped conv is block diagonal: the merged result equals the dense SVD and each vector
    lives in one group's channels."""
    spec = make_spec(rng, 8, 4, (3, 3), (14, 14), strides=(2, 2), pads=(1, 1, 1, 1), groups=2)
    res = smallest_singular(spec, k=4)
    sig, _ = dense_svd(spec)
    np.testing.assert_allclose(res.sigmas, sig[:4], atol=1e-8 * sig[-1])
    assert_certified(spec, res)
    for v in res.vectors:
        energy = np.sum(v**2, axis=(1, 2))
        assert min(energy[:2].sum(), energy[2:].sum()) < 1e-20
    assert "2 groups" in res.method


# --- exact collisions ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["dense", "iterative"])
def test_patchify_has_exact_zeros(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                  path: str) -> None:
    """Patchify 4x4 stride 4, C=3, O=8 on 16x16: the per-patch kernel (48 - 8 = 40) lifts patch
    by patch, 16 patches -> 640 zero singular values; k=4 must return 4 exact zeros."""
    if path == "iterative":
        monkeypatch.setattr(convop, "DENSE_MAX_DIM", 0)
    spec = make_spec(rng, 8, 3, (4, 4), (16, 16), strides=(4, 4))
    sig, _ = dense_svd(spec)
    assert int(np.sum(sig <= sig[-1] * 768 * EPS32)) == 640
    res = smallest_singular(spec, k=4)
    assert res.exact == 4
    assert np.all(res.sigmas <= 1e-12 * res.sigma_max)
    assert res.sigma_max == pytest.approx(sig[-1], rel=1e-9)
    assert_certified(spec, res)


def test_blind_pixels_are_exact_zeros(rng: np.random.Generator, iterative: None) -> None:
    """Stride 3 > kernel 2 leaves pixels no window reads: sigma_min = 0 exactly with unit
    vectors on blind pixels, found from diag(A^T A) and counted."""
    spec = make_spec(rng, 8, 3, (2, 2), (30, 30), strides=(3, 3))
    mask = blind_inputs(spec)
    assert int(mask.sum()) == 3 * (900 - 400)
    res = smallest_singular(spec, k=4)
    assert res.exact == 4 and res.blind == 1500
    np.testing.assert_array_equal(res.sigmas, 0.0)
    for v in res.vectors:
        assert np.all(v[~mask] == 0.0)


def test_remainder_rows_are_blind(rng: np.random.Generator) -> None:
    """Input 10 with a 3-wide kernel at stride 3 and no padding never reads the last row/column."""
    spec = make_spec(rng, 4, 1, (3, 3), (10, 10), strides=(3, 3))
    mask = blind_inputs(spec)[0]
    assert mask[9].all() and mask[:, 9].all() and int(mask.sum()) == 19
    res = smallest_singular(spec, k=2)
    assert res.exact == 2 and res.blind == 19


# --- real size behaviour ------------------------------------------------------------------


def test_resnet_stem_is_injective(rng: np.random.Generator) -> None:
    """A ResNet-like 7x7/2 pad 3 stem with random weights at 3x64x64, 64 filters: no exact
    collision (sigma_min far above tol) and converged residuals; the smallest singular vectors
    sit at the border, below the circular (periodic) estimate."""
    spec = make_spec(rng, 64, 3, (7, 7), (64, 64), strides=(2, 2), pads=(3, 3, 3, 3))
    res = smallest_singular(spec, k=4)
    assert res.exact == 0
    assert res.relative[0] > 10 * res.tol / res.sigma_max
    assert res.converged
    assert np.all(res.residuals <= convop.RESIDUAL_RTOL * res.sigma_max**2)
    assert res.sigmas[0] < res.circular[0]
    assert np.all(np.diff(res.sigmas) >= 0)
    assert_certified(spec, res)


def test_resnet_stem_matches_sparse_reference(rng: np.random.Generator) -> None:
    """7x7/2 pad 3 at 3x32x32 (iterative path): the values equal a sparse shift-invert solve."""
    spec = make_spec(rng, 32, 3, (7, 7), (32, 32), strides=(2, 2), pads=(3, 3, 3, 3))
    res = smallest_singular(spec, k=4)
    ref, smax = sparse_smallest(spec, 4)
    assert res.sigma_max == pytest.approx(smax, rel=1e-6)
    np.testing.assert_allclose(res.sigmas, ref, atol=1e-8 * smax)


def test_trained_stem_finds_border_modes() -> None:
    """The trained 3x3/2 stem of UltraFace on a 3x40x48 input: its smallest singular vectors
    are edge modes 3x below the circular estimate; they must be found, not the plane waves."""
    model = onnx.load(str(DATA / "ultraface_slim320.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    spec = ConvSpec(weights[conv.input[1]].astype(np.float64), (2, 2), (1, 1), (1, 1, 1, 1), 1,
                    (3, 40, 48))
    res = smallest_singular(spec, k=4)
    ref, smax = sparse_smallest(spec, 4)
    np.testing.assert_allclose(res.sigmas, ref, atol=1e-8 * smax, rtol=1e-6)
    assert res.circular[0] > 2 * res.sigmas[0]
    assert res.converged


def test_same_seed_same_arrays(rng: np.random.Generator) -> None:
    """Determinism: the same seed gives identical arrays; the seed is recorded."""
    spec = make_spec(rng, 16, 3, (5, 5), (30, 28), strides=(2, 2), pads=(2, 2, 1, 1))
    first = smallest_singular(spec, k=3, seed=7)
    second = smallest_singular(spec, k=3, seed=7)
    for name in ("sigmas", "vectors", "residuals", "relative", "circular"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.sigma_max == second.sigma_max and first.seed == 7
    assert first.iterations == second.iterations and first.method == second.method


def test_tolerance_overrides(rng: np.random.Generator) -> None:
    """tol follows the NumPy rule by default; rtol replaces it, atol is a floor."""
    spec = make_spec(rng, 16, 2, (3, 3), (12, 12), strides=(2, 2), pads=(1, 1, 1, 1))
    base = smallest_singular(spec, k=2)
    n = max(2 * 144, 16 * 36)
    assert base.tol == pytest.approx(base.sigma_max * n * EPS32)
    loose = smallest_singular(spec, k=2, rtol=0.99)
    assert loose.tol == pytest.approx(0.99 * base.sigma_max) and loose.exact == 2
    floor = smallest_singular(spec, k=2, atol=1e9)
    assert floor.tol == 1e9 and floor.exact == 2


def test_time_limit_returns_honest_result(rng: np.random.Generator) -> None:
    """With no time for the eigensolver the result is still a valid certificate (||A v|| =
    sigma, upper bounds of the true values) and says whether it converged."""
    spec = make_spec(rng, 32, 3, (7, 7), (48, 48), strides=(2, 2), pads=(3, 3, 3, 3))
    quick = smallest_singular(spec, k=2, max_seconds=0.0)
    full = smallest_singular(spec, k=2)
    assert np.all(quick.sigmas >= full.sigmas - 1e-9 * full.sigma_max)
    assert_certified(spec, quick)
    if not quick.converged:
        assert "time limit" in quick.method


def test_null_space_count_is_a_lower_bound_unless_every_value_is_known(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3/2 pad 1 conv 3 -> 2 channels on 12x12 maps 432 values to 72: its null space has
    dimension 360. The dense SVD knows it (null_dim 360); the iterative path seeks only k=4
    values, so its 'exact' (4) is a search limit and null_at_least is n_in - n_out = 360,
    never 4 (the review's ppocr case: 'N exact directions' was k, not the dimension)."""
    spec = make_spec(rng, 2, 3, (3, 3), (12, 12), strides=(2, 2), pads=(1, 1, 1, 1))
    dense = smallest_singular(spec, k=4)
    assert (dense.exact, dense.null_dim, dense.null_at_least) == (4, 360, 360)
    monkeypatch.setattr(convop, "DENSE_MAX_DIM", 0)
    sought = smallest_singular(spec, k=4)
    assert (sought.exact, sought.null_dim, sought.null_at_least) == (4, None, 360)


# --- the fast pieces of the iterative path ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_fft_gram_equals_im2col(rng: np.random.Generator, name: str) -> None:
    """A^T A by FFT on the polyphase grid, less the left-out windows, equals forward then
    adjoint by im2col to rounding, for every geometry (per group)."""
    spec = make_spec(rng, **GEOMETRIES[name])
    geo = convop._geometry(spec)
    if geo.g > 1:
        pytest.skip("groups are solved one by one")
    w = convop._weight64(spec)
    x = rng.standard_normal((3, geo.n_in))
    expected = convop._normal_op(geo, w)(x)
    got = convop._Gram(geo, w)(x)
    np.testing.assert_allclose(got, expected, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("case", [
    dict(out_ch=24, in_ch=3, kernel=(7, 7), spatial=(40, 38), strides=(2, 2), pads=(3,) * 4),
    dict(out_ch=24, in_ch=2, kernel=(5, 5), spatial=(41, 47), strides=(2, 3), pads=(2, 1, 0, 2)),
    dict(out_ch=4, in_ch=2, kernel=(5,), spatial=(80,), strides=(2,), pads=(2, 1)),
])
def test_patch_coupling_equals_im2col(rng: np.random.Generator, case: dict) -> None:
    """Each boundary patch's block of A^T A (patch x reach box), gathered from the free-space
    Gram less the left-out windows, equals the local convs applied to unit vectors; a batched,
    coloured sweep returns the residual it claims (O >= C s^D and no blind
    inputs: non-singular local problems, else the exact local solves amplify rounding)."""
    spec = make_spec(rng, **case)
    geo = convop._geometry(spec)
    w = convop._weight64(spec)
    patches = convop._Patches(geo, w)
    assert patches.coupled and patches.patches
    for patch in patches.patches:
        nl = patch.local.n_in
        eye = np.eye(nl).reshape(nl, geo.c, *patches.size)
        ref = convop._adjoint_batch(patch.back, w, convop._forward_batch(patch.local, w, eye))
        np.testing.assert_allclose(patches._reach_gram(patch), ref.reshape(nl, -1),
                                   atol=1e-12 * np.abs(ref).max())
    r = rng.standard_normal((2, *spec.input_shape))
    shift = 0.5 * patches.lowest()
    x, rest = patches.sweep(r, shift, backward=False)
    flat = x.reshape(2, -1)
    claimed = r.reshape(2, -1) - convop._Gram(geo, w)(flat) + shift * flat
    np.testing.assert_allclose(rest.reshape(2, -1), claimed, atol=1e-9 * np.abs(r).max())


def test_patch_sweep_without_stored_coupling(rng: np.random.Generator, iterative: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With no memory for the coupling matrices the sweep runs patch by patch (im2col) and
    finds the same values as the batched sweep."""
    spec = make_spec(rng, 24, 3, (7, 7), (40, 40), strides=(2, 2), pads=(3, 3, 3, 3))
    batched = smallest_singular(spec, k=3)
    monkeypatch.setattr(convop, "COUPLING_MAX_BYTES", 0)
    assert not convop._Patches(convop._geometry(spec), convop._weight64(spec)).coupled
    plain = smallest_singular(spec, k=3)
    np.testing.assert_allclose(plain.sigmas, batched.sigmas, atol=1e-8 * batched.sigma_max)
    assert plain.converged and batched.converged


@pytest.mark.parametrize("path", ["dense", "iterative"])
def test_a_stride_past_the_input_is_one_window(rng: np.random.Generator,
                                               monkeypatch: pytest.MonkeyPatch,
                                               path: str) -> None:
    """A stride of 2^40 (a fuzzed model) asked the FFT Gram for 2^80 polyphase channels; one
    window per axis is the same operator at any stride that large, so the values equal those
    of the dense matrix at stride 7 on a 6x6 input (one window of 3x3 too)."""
    if path == "iterative":
        monkeypatch.setattr(convop, "DENSE_MAX_DIM", 0)
    huge = make_spec(rng, 3, 2, (3, 3), (6, 6), strides=(2**40, 2**40), pads=(0, 0, 0, 0))
    small = ConvSpec(huge.weight, (7, 7), huge.dilations, huge.pads, huge.groups,
                     huge.input_shape)
    assert output_shape(huge) == output_shape(small) == (3, 1, 1)
    sig, _ = dense_svd(small)
    res = smallest_singular(huge, k=4)
    np.testing.assert_allclose(res.sigmas, sig[:4], atol=1e-8 * sig[-1])


def test_iterative_path_with_fewer_outputs_than_values_sought(rng: np.random.Generator,
                                                              iterative: None) -> None:
    """A 1 x 20 x 20 input, one 18x18 filter at stride 2: 2 x 2 = 4 outputs, so A has a null
    space of 396 and 7 smallest values are 0. The final Rayleigh-Ritz SVD of A X (4 rows)
    must keep the directions it maps to zero: all 7 come back, orthonormal, each in the
    kernel (a thin SVD returned only 4, so `collide --basis 6` said 4 were found)."""
    spec = make_spec(rng, 1, 1, (18, 18), (20, 20), strides=(2, 2), pads=(0, 0, 0, 0))
    res = smallest_singular(spec, k=7)
    got = res.vectors.reshape(7, -1)
    assert got.shape == (7, 400)
    np.testing.assert_allclose(got @ got.T, np.eye(7), atol=1e-10)
    assert np.all(res.sigmas <= res.tol) and res.exact == 7
    assert_certified(spec, res)
