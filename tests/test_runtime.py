"""runtime: devices, ModelRunner (extra outputs, float64, external data), comparisons, validation.

The exact collisions are built by hand: for a dense first layer x -> x @ W with W of rank r < q,
any phi with phi^T W = 0 (the left kernel, from an SVD) gives B = A + phi with L(B) = L(A) in
exact arithmetic; a random perturbation of the same norm moves L by about ||phi|| ||W||.
No GPU is needed: CUDA tests skip with a reason where ONNX Runtime has no CUDA provider.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import DATA, build_model, init, integer_rank, value
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.errors import ModelLoadError, UnsupportedModelError, UsageError
from onnxcollide.runtime import session, validate
from onnxcollide.runtime.session import DeviceChoice, ModelRunner, resolve_device
from onnxcollide.runtime.validate import (
    OutputComparison,
    Tolerances,
    compare_outputs,
    validate_pair,
    validation_dict,
)

mk = helper.make_node
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
NO_CUDA = "ONNX Runtime here has no CUDAExecutionProvider (onnxruntime-gpu / GPU absent)"
Q, P, RANK, N, C = 16, 6, 4, 5, 10


def dense_classifier(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """x [N, Q] -> Gemm(W, b) -> h -> Relu -> Gemm(W2, b2) -> logits [N, C]; W has rank 4.

    W is a small-integer matrix, exact in float32, so its rank and kernel are exact too.
    """
    w = integer_rank(rng, Q, P, RANK).astype(np.float32)
    model = build_model(
        [mk("Gemm", ["x", "W", "b"], ["h"]), mk("Relu", ["h"], ["r"]),
         mk("Gemm", ["r", "W2", "b2"], ["logits"])],
        [value("x", [N, Q])], [value("logits", [N, C])],
        [init("W", w), init("b", rng.standard_normal(P).astype(np.float32)),
         init("W2", rng.standard_normal((P, C)).astype(np.float32)),
         init("b2", rng.standard_normal(C).astype(np.float32))])
    return model, w


def left_kernel(w: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ker(W^T) (phi^T W = 0), from a float64 SVD."""
    u, s, _ = np.linalg.svd(w.astype(np.float64))
    rank = int(np.count_nonzero(s > s.max() * max(w.shape) * 1e-12))
    return u[:, rank:]


def collision(rng: np.random.Generator, w: np.ndarray, x: np.ndarray,
              beta: float = 1.0) -> np.ndarray:
    """x plus, in every row, a kernel vector of norm beta * ||row||."""
    basis = left_kernel(w)
    phi = basis @ rng.standard_normal((basis.shape[1], x.shape[0]))
    phi *= beta * np.linalg.norm(x, axis=1) / np.linalg.norm(phi, axis=0)
    return (x + phi.T).astype(np.float32)


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def dense(tmp_path, rng) -> tuple[str, np.ndarray, np.ndarray]:
    """(model path, W, input A)."""
    model, w = dense_classifier(rng)
    return save(model, tmp_path / "dense.onnx"), w, rng.standard_normal((N, Q)).astype(np.float32)


# ------------------------------------------------------------------ devices


def test_cpu_device_has_no_notice():
    choice = resolve_device("cpu")
    assert (choice.used, choice.notice, choice.provider_names) == (
        "cpu", None, ("CPUExecutionProvider",))


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here: auto picks it")
def test_auto_without_a_cuda_provider_runs_on_the_cpu_quietly():
    """A CPU-only onnxruntime is what ``auto`` expects on most machines: no notice on every
    run (the report's device record says where it ran)."""
    choice = resolve_device("auto")
    assert (choice.requested, choice.used, choice.notice) == ("auto", "cpu", None)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here: --device cuda is valid")
def test_cuda_without_a_gpu_is_a_usage_error():
    with pytest.raises(UsageError, match="no CUDA execution provider") as info:
        resolve_device("cuda")
    assert info.value.exit_code == 2
    assert "pip install 'onnxcollide[gpu]'" in info.value.hint
    assert "--device cpu" in info.value.hint


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_cuda_provider_options_turn_tf32_off(monkeypatch, device):
    """With a CUDA provider on offer, CUDA comes first with use_tf32=0, then the CPU."""
    monkeypatch.setattr(session.onnxruntime_module(), "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    choice = resolve_device(device)
    assert choice.used == "cuda" and choice.notice is None
    assert choice.provider_names == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert choice.providers[0][1]["use_tf32"] == "0"


class FakeSession:
    """Stands in for a session whose CUDA provider did or did not start."""

    def __init__(self, providers: list[str], tf32: str = "0") -> None:
        self.providers, self.tf32 = providers, tf32

    def get_providers(self) -> list[str]:
        return self.providers

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {p: {"use_tf32": self.tf32} for p in self.providers if p.startswith("CUDA")}


def cuda_choice(requested: str) -> DeviceChoice:
    return DeviceChoice(requested, "cuda", (("CUDAExecutionProvider", {"use_tf32": "0"}),
                                            ("CPUExecutionProvider", {})))


def test_a_session_that_left_cuda_is_caught():
    """cuda: the silent fallback to the CPU is an error; auto: it becomes a notice."""
    cpu_only = FakeSession(["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="did not start"):
        session._checked_device(cpu_only, cuda_choice("cuda"), "m.onnx")
    auto = session._checked_device(cpu_only, cuda_choice("auto"), "m.onnx")
    assert auto.used == "cpu" and "did not start" in (auto.notice or "")
    both = FakeSession(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session._checked_device(both, cuda_choice("cuda"), "m.onnx").used == "cuda"
    with pytest.raises(UsageError, match="use_tf32=1"):
        session._checked_device(FakeSession(both.providers, tf32="1"), cuda_choice("cuda"), "m")


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_cuda_session_runs_on_cuda_without_tf32(dense):
    path, _, x = dense
    runner = ModelRunner(path, ["h"], device="cuda")
    assert runner.providers[0] == "CUDAExecutionProvider"
    options = runner._session.get_provider_options()["CUDAExecutionProvider"]
    assert options["use_tf32"] == "0"
    cpu = ModelRunner(path, ["h"], device="cpu")
    np.testing.assert_allclose(runner.run({"x": x})["h"], cpu.run({"x": x})["h"], rtol=1e-5,
                               atol=1e-5)


# ------------------------------------------------------------------ the runner


def test_extra_output_equals_the_layer(dense):
    """The extra output h is x @ W + b; the model's own output is listed first."""
    path, w, x = dense
    runner = ModelRunner(path, ["h"], device="cpu")
    assert runner.output_names == ("logits", "h")
    assert (runner.model_outputs, runner.extra_outputs) == (("logits",), ("h",))
    out = runner.run({"x": x})
    b = numpy_helper.to_array(onnx.load(path).graph.initializer[1])
    np.testing.assert_allclose(out["h"], x.astype(np.float64) @ w + b, rtol=1e-5, atol=1e-5)
    assert out["h"].dtype == np.float32


def conv_bn(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Conv -> c -> BatchNormalization -> Relu -> y: a pattern ORT fuses when allowed."""
    def channel(lo: float) -> np.ndarray:
        return (rng.random(4) + lo).astype(np.float32)
    return build_model(
        [mk("Conv", ["x", "W"], ["c"], kernel_shape=[3, 3]),
         mk("BatchNormalization", ["c", "s", "bb", "m", "v"], ["z"]), mk("Relu", ["z"], ["y"])],
        [value("x", [2, 3, 8, 8])], [value("y", [2, 4, 6, 6])],
        [init("W", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)), init("s", channel(0.5)),
         init("bb", channel(-0.5)), init("m", channel(-0.5)), init("v", channel(0.5))])


def test_extra_output_changes_no_other_output(tmp_path, rng):
    """Optimizations off: with or without the extra output, y is the same to the bit."""
    path = save(conv_bn(rng), tmp_path / "cbn.onnx")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    plain = ModelRunner(path, device="cpu").run({"x": x})["y"]
    extended = ModelRunner(path, ["c"], device="cpu").run({"x": x})
    np.testing.assert_array_equal(extended["y"], plain)
    reference = ReferenceEvaluator(onnx.load(path)).run(["c"], {"x": x})[0]
    np.testing.assert_allclose(extended["c"], reference, rtol=1e-5, atol=1e-5)


def test_float64_mlp_runs_in_onnx_runtime(dense):
    """Gemm/Relu have double kernels: the float64 copy runs in ORT and matches float32."""
    path, _, x = dense
    f32 = ModelRunner(path, ["h"], device="cpu")
    f64 = ModelRunner(path, ["h"], device="cpu", precision="float64")
    assert (f64.engine, f64.fallback_reason) == ("onnxruntime", None)
    assert f64.inputs[0].dtype == np.float64
    a, b = f32.run({"x": x}), f64.run({"x": x})
    assert {v.dtype for v in b.values()} == {np.dtype(np.float64)}
    for name in ("h", "logits"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5)


def test_float64_conv_falls_back_to_the_reference_evaluator(tmp_path, rng):
    """ORT's CPU Conv has no double kernel: the engine and the reason are recorded."""
    path = save(conv_bn(rng), tmp_path / "cbn.onnx")
    runner = ModelRunner(path, ["c"], device="cpu", precision="float64")
    assert runner.engine == "onnx.reference"
    assert "Conv" in (runner.fallback_reason or "")
    assert runner.device.used == "cpu" and "reference evaluator" in (runner.device.notice or "")
    assert runner.providers == ()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    out64 = runner.run({"x": x})
    out32 = ModelRunner(path, ["c"], device="cpu").run({"x": x})
    for name in ("c", "y"):
        assert out64[name].dtype == np.float64
        np.testing.assert_allclose(out64[name], out32[name], rtol=1e-5, atol=1e-5)


def test_reference_batch_norm_is_in_inference_mode(tmp_path, rng):
    """A momentum attribute (every PyTorch export has one) must not switch to batch statistics."""
    model = conv_bn(rng)
    model.graph.node[1].attribute.append(helper.make_attribute("momentum", 0.9))
    path = save(model, tmp_path / "cbn_momentum.onnx")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    f64 = ModelRunner(path, device="cpu", precision="float64").run({"x": x})["y"]
    f32 = ModelRunner(path, device="cpu").run({"x": x})["y"]
    np.testing.assert_allclose(f64, f32, rtol=1e-5, atol=1e-5)


def test_bad_feeds_are_usage_errors(dense):
    path, _, x = dense
    runner = ModelRunner(path, device="cpu")
    with pytest.raises(UsageError, match="'z' is not an input") as info:
        runner.run({"x": x, "z": x})
    assert "its inputs are: x" in info.value.hint
    with pytest.raises(UsageError, match="no value given for input 'x'"):
        runner.run({})
    with pytest.raises(UsageError, match=r"shape \[5, 3\], the model expects \[5, 16\]"):
        runner.run({"x": x[:, :3]})
    with pytest.raises(UsageError, match="is <U1"):
        runner.run({"x": np.full((N, Q), "a")})


def test_feeds_are_cast_to_the_input_dtype(dense):
    path, _, x = dense
    runner = ModelRunner(path, device="cpu")
    prepared = runner.prepare({"x": x.astype(np.float64)})
    assert prepared["x"].dtype == np.float32


def test_runner_option_errors(dense):
    path, _, _ = dense
    with pytest.raises(UsageError, match="unknown precision 'float16'"):
        ModelRunner(path, precision="float16")
    with pytest.raises(UsageError, match="no tensor named 'nope'"):
        ModelRunner(path, ["nope"])
    with pytest.raises(ModelLoadError):
        ModelRunner(path + ".missing")


def test_model_onnx_runtime_cannot_load_is_unsupported(tmp_path):
    """A custom-domain op: float32 has no fallback, so it is an UnsupportedModelError."""
    model = build_model([mk("Mystery", ["x"], ["y"], domain="custom.ops")],
                        [value("x", [2])], [value("y", [2])], extra_opsets=[("custom.ops", 1)],
                        check=False)
    path = save(model, tmp_path / "custom.onnx")
    with pytest.raises(UnsupportedModelError, match="ONNX Runtime cannot load the model"):
        ModelRunner(path, device="cpu")
    with pytest.raises(UnsupportedModelError, match="reference evaluator"):
        ModelRunner(path, device="cpu", precision="float64")


# ------------------------------------------------------------------ comparisons


def test_compare_outputs_figures_and_agreement():
    """4 rows of 7 classes: row 1's argmax moves, row 3's top-5 set changes."""
    a = np.array([[9, 8, 7, 6, 5, 1, 0],
                  [1, 9, 2, 3, 4, 5, 0],
                  [0, 1, 2, 3, 4, 5, 9],
                  [7, 6, 5, 4, 3, 2, 1]], dtype=np.float32)
    b = a.copy()
    b[1, 5] = 10   # argmax 1 -> 5; top-5 stays {1, 2, 3, 4, 5}
    b[3, 6] = 3.5  # top-5 {0, 1, 2, 3, 4} -> {0, 1, 2, 3, 6}
    (cmp,) = compare_outputs({"y": a}, {"y": b})
    assert cmp == OutputComparison("y", 5.0, 5.0 / 9.0, 0.75, 0.75)


@pytest.mark.parametrize(("shape", "classifier"), [
    ((3, 4), True), ((3, 4, 1, 1), True), ((1, 4), True), ((1, 1, 4), True),
    ((3, 1), False), ((4,), False), ((2, 3, 4, 4), False), ((3, 1, 1), False)])
def test_which_outputs_are_classifier_like(shape, classifier, rng):
    a = rng.standard_normal(shape)
    (cmp,) = compare_outputs({"y": a}, {"y": a})
    assert (cmp.argmax_agree is not None) == classifier
    assert (cmp.top5_agree is not None) == classifier
    assert (cmp.max_abs, cmp.max_rel) == (0.0, 0.0)


def test_compare_outputs_edge_cases():
    """Integer outputs compare but have no agreement; shape changes are inf; objects skip."""
    ints = {"k": np.array([[1, 2]]), "o": np.array([{"a": 1}], dtype=object),
            "z": np.zeros((2, 2)), "s": np.ones(3)}
    other = {"k": np.array([[1, 4]]), "o": ints["o"], "z": np.zeros((2, 2)), "s": np.ones(2)}
    k, z, s = compare_outputs(ints, other)
    assert (k.max_abs, k.max_rel, k.argmax_agree) == (2.0, 1.0, None)
    assert (z.max_abs, z.max_rel) == (0.0, 0.0)
    assert s.max_abs == np.inf and s.argmax_agree is None
    assert compare_outputs(ints, other, ["z"]) == (z,)
    with pytest.raises(UsageError, match="'nope' is missing"):
        compare_outputs(ints, other, ["nope"])


def test_an_overflowed_output_compares_as_nan_and_fails_without_a_warning():
    """Outputs with inf at the same place (an overflow in both runs) or NaN: inf - inf raised
    numpy's "invalid" RuntimeWarning beside collide's report. They compare as NaN, which no
    tolerance accepts, and nothing is printed."""
    a = np.array([[1.0, np.inf, 3.0]], np.float32)
    b = np.array([[1.0, np.inf, 3.5]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (cmp,) = compare_outputs({"y": a}, {"y": b})
    assert math.isnan(cmp.max_abs) and math.isnan(cmp.max_rel)
    assert not cmp.max_rel <= Tolerances().output_rtol


# ------------------------------------------------------------------ validation


def test_exact_collision_passes_and_beats_the_random_baseline(dense, rng):
    """B = A + kernel vectors of W^T: residual ~1e-7, passes; the baseline fails by > 1e3."""
    path, w, x = dense
    runner = ModelRunner(path, ["h"], device="cpu")
    v = validate_pair(runner, {"x": x}, {"x": collision(rng, w, x)}, "h", seed=7,
                      tolerances=Tolerances())
    assert v.passed and v.layer_residual is not None and v.layer_residual < 1e-6
    assert v.perturbed_inputs == ("x",)
    assert v.perturbation_norm > 1.0
    assert not v.baseline.passed
    assert v.baseline.layer_residual is not None and v.baseline.layer_residual > 1e-2
    assert v.baseline.norm == pytest.approx(v.perturbation_norm, rel=1e-5)
    layer_ratio = v.ratios[0]
    assert (layer_ratio.figure, layer_ratio.name) == ("layer_residual", "h")
    assert layer_ratio.ratio is not None and layer_ratio.ratio > 1e3
    (logits,) = v.outputs
    assert logits.argmax_agree == 1.0 and logits.max_rel <= 1e-4
    assert (v.device, v.device_requested, v.engine, v.precision) == (
        "cpu", "cpu", "onnxruntime", "float32")
    assert v.providers == ("CPUExecutionProvider",)
    assert v.tolerances == Tolerances(1e-5, 1e-4) and v.seed == 7


def test_non_collision_fails(dense, rng):
    """B = A + random noise of the same size: the layer moves and validation fails."""
    path, _, x = dense
    runner = ModelRunner(path, ["h"], device="cpu")
    b = x + rng.standard_normal(x.shape).astype(np.float32)
    v = validate_pair(runner, {"x": x}, {"x": b}, "h", seed=0)
    assert not v.passed
    assert v.layer_residual is not None and v.layer_residual > 1e-2
    assert v.ratios[0].ratio is not None and 0.1 < v.ratios[0].ratio < 10


def test_float64_collision_is_exact_to_double_rounding(dense, rng):
    """The same pair in float64: residual ~1e-16, passes the tighter float64 tolerances."""
    path, w, x = dense
    runner = ModelRunner(path, ["h"], device="cpu", precision="float64")
    b = x.astype(np.float64) + (collision(rng, w, x) - x).astype(np.float64)
    phi = left_kernel(w)
    b = x + (b - x) @ phi @ phi.T  # exactly in ker(W^T) up to double rounding
    v = validate_pair(runner, {"x": x}, {"x": b}, "h", seed=1)
    assert v.tolerances == Tolerances.for_precision("float64") == Tolerances(1e-12, 1e-10)
    assert v.passed and v.layer_residual is not None and v.layer_residual < 1e-13
    assert not v.baseline.passed


def test_baseline_is_reproducible_from_the_seed(dense, rng):
    path, w, x = dense
    runner = ModelRunner(path, ["h"], device="cpu")
    b = collision(rng, w, x)
    first = validate_pair(runner, {"x": x}, {"x": b}, "h", seed=3)
    assert validate_pair(runner, {"x": x}, {"x": b}, "h", seed=3) == first
    other = validate_pair(runner, {"x": x}, {"x": b}, "h", seed=4)
    assert other.baseline != first.baseline


def two_input_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x1 [N, 8] @ W1 + x2 [N, 5] @ W2 -> Relu -> Gemm -> y [N, 4]; W1 (8x3), W2 (5x3)."""
    w1 = integer_rank(rng, 8, 3, 3).astype(np.float32)
    w2 = integer_rank(rng, 5, 3, 2).astype(np.float32)
    model = build_model(
        [mk("MatMul", ["x1", "W1"], ["h1"]), mk("MatMul", ["x2", "W2"], ["h2"]),
         mk("Add", ["h1", "h2"], ["s"]), mk("Relu", ["s"], ["r"]),
         mk("Gemm", ["r", "W3"], ["y"])],
        [value("x1", [N, 8]), value("x2", [N, 5])], [value("y", [N, 4])],
        [init("W1", w1), init("W2", w2),
         init("W3", rng.standard_normal((3, 4)).astype(np.float32))])
    return model, w1, w2


def test_two_inputs_only_the_perturbed_one_counts(tmp_path, rng):
    model, w1, w2 = two_input_model(rng)
    runner = ModelRunner(save(model, tmp_path / "two.onnx"), ["h1"], device="cpu")
    a = {"x1": rng.standard_normal((N, 8)).astype(np.float32),
         "x2": rng.standard_normal((N, 5)).astype(np.float32)}
    b1 = collision(rng, w1, a["x1"])
    v = validate_pair(runner, a, {"x1": b1, "x2": a["x2"]}, "h1", seed=0)
    assert v.perturbed_inputs == ("x1",) and v.passed and not v.baseline.passed
    assert v.perturbation_norm == pytest.approx(np.linalg.norm(b1 - a["x1"]), rel=1e-6)
    b2 = collision(rng, w2, a["x2"])
    both = validate_pair(runner, a, {"x1": b1, "x2": b2}, "h1", seed=0)
    assert both.perturbed_inputs == ("x1", "x2") and both.passed
    joint = np.sqrt(np.sum((b1 - a["x1"]) ** 2.0) + np.sum((b2 - a["x2"]) ** 2.0))
    assert both.perturbation_norm == pytest.approx(joint, rel=1e-6)
    assert both.baseline.norm == pytest.approx(joint, rel=1e-5)


def test_validation_input_errors(dense, rng):
    path, w, x = dense
    runner = ModelRunner(path, ["h"], device="cpu")
    with pytest.raises(UsageError, match="identical"):
        validate_pair(runner, {"x": x}, {"x": x.copy()}, "h")
    with pytest.raises(UsageError, match="'r' is not an output of the runner"):
        validate_pair(runner, {"x": x}, {"x": collision(rng, w, x)}, "r")


def test_validation_without_a_layer(dense, rng):
    path, w, x = dense
    v = validate_pair(ModelRunner(path, device="cpu"), {"x": x}, {"x": collision(rng, w, x)})
    assert v.layer is None and v.layer_residual is None and v.passed
    assert [r.figure for r in v.ratios] == ["max_abs"]


def test_ratio_of_an_exact_zero_is_flagged(dense):
    """A perturbation the layer cannot see at all (zero rows of W): figure 0, ratio None."""
    path, _, x = dense
    model = onnx.load(path)
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w[3] = 0.0  # input element 3 is invisible to the layer
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    runner = ModelRunner(save(model, Path(path).with_name("blind.onnx")), ["h"], device="cpu")
    b = x.copy()
    b[:, 3] += 5.0
    v = validate_pair(runner, {"x": x}, {"x": b}, "h", seed=0)
    assert v.layer_residual == 0.0 and v.passed
    assert all(r.exact_zero and r.ratio is None for r in v.ratios)
    record = validation_dict(v)
    assert record["ratios"][0] == {"figure": "layer_residual", "name": "h", "collision": 0.0,
                                   "baseline": v.baseline.layer_residual, "ratio": None,
                                   "exact_zero": True}


def test_validation_dict_is_strict_json_in_a_fixed_order(dense, rng):
    path, w, x = dense
    v = validate_pair(ModelRunner(path, ["h"], device="auto"), {"x": x},
                      {"x": collision(rng, w, x)}, "h", seed=0)
    record = validation_dict(v)
    text = json.dumps(record, allow_nan=False)
    assert list(record) == ["passed", "conclusive", "device", "precision", "computed_in",
                            "engine", "seed", "tolerances", "layer", "perturbed_inputs",
                            "perturbation_norm", "collision", "baseline", "ratios", "notices"]
    assert json.loads(text)["collision"]["outputs"][0]["name"] == "logits"
    if not HAS_CUDA:
        assert record["notices"] == []
        assert record["device"] == {"requested": "auto", "used": "cpu",
                                    "providers": ["CPUExecutionProvider"]}


def test_non_finite_figures_become_null():
    comparison = OutputComparison("y", float("nan"), float("inf"), None, None)
    assert validate._output_dict(comparison) == {"name": "y", "max_abs": None, "max_rel": None,
                                                "argmax_agree": None, "top5_agree": None}


# ------------------------------------------------------------------ external data, real models


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_external_data_model_validates(tmp_path, rng, precision):
    """Weights in an external file: memory-mapped into the session, same numbers as embedded."""
    model, w = dense_classifier(rng)
    embedded = save(model, tmp_path / "embedded.onnx")
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    assert onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False) \
        .graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    x = rng.standard_normal((N, Q)).astype(np.float32)
    runner = ModelRunner(str(tmp_path / "ext.onnx"), ["h"], device="cpu", precision=precision)
    assert runner.engine == "onnxruntime"
    v = validate_pair(runner, {"x": x}, {"x": collision(rng, w, x)}, "h", seed=0,
                      tolerances=Tolerances())
    assert v.passed and not v.baseline.passed
    same = ModelRunner(embedded, ["h"], device="cpu", precision=precision).run({"x": x})
    for name, array in runner.run({"x": x}).items():
        np.testing.assert_array_equal(array, same[name])


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_external_constant_node_values_are_read(tmp_path, rng, precision):
    """Weights in Constant nodes (paddle2onnx style) saved externally still reach the session."""
    w = rng.standard_normal((Q, P)).astype(np.float32)
    model = build_model(
        [mk("Constant", [], ["W"], value=numpy_helper.from_array(w)),
         mk("MatMul", ["x", "W"], ["y"])], [value("x", [N, Q])], [value("y", [N, P])])
    onnx.save(model, str(tmp_path / "c.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="c.weights", size_threshold=0,
              convert_attribute=True)
    stored = onnx.load(str(tmp_path / "c.onnx"), load_external_data=False)
    assert stored.graph.node[0].attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    x = rng.standard_normal((N, Q)).astype(np.float32)
    y = ModelRunner(str(tmp_path / "c.onnx"), device="cpu", precision=precision).run({"x": x})
    np.testing.assert_allclose(y["y"], x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)


def test_external_data_file_missing_is_a_load_error(tmp_path, rng):
    model, _ = dense_classifier(rng)
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(ModelLoadError, match="not found"):
        ModelRunner(str(tmp_path / "ext.onnx"), device="cpu")


def first_conv_output(path: str) -> str:
    return next(n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Conv")


def test_lenet_smoke(lenet_path, rng):
    """LeNet-5 (batch 10): first Conv as extra output; a random pair fails, JSON is strict."""
    layer = first_conv_output(lenet_path)
    runner = ModelRunner(lenet_path, [layer], device="cpu")
    x = rng.random((10, 1, 28, 28)).astype(np.float32)
    out = runner.run({"input_0": x})
    assert out[layer].shape == (10, 6, 28, 28)  # 5x5, padding 2
    reference = ReferenceEvaluator(onnx.load(lenet_path)).run([layer], {"input_0": x})[0]
    np.testing.assert_allclose(out[layer], reference, rtol=1e-4, atol=1e-5)
    b = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    v = validate_pair(runner, {"input_0": x}, {"input_0": b}, layer, seed=0)
    assert not v.passed and v.outputs[0].argmax_agree is not None
    json.dumps(validation_dict(v), allow_nan=False)


def test_lenet_float64_matches_float32(lenet_path, rng):
    """The float64 copy (reference evaluator: Conv) agrees with float32 ORT to ~1e-6."""
    x = rng.random((10, 1, 28, 28)).astype(np.float32)
    f64 = ModelRunner(lenet_path, device="cpu", precision="float64")
    assert f64.engine == "onnx.reference"
    y64 = f64.run({"input_0": x})["output_0"]
    y32 = ModelRunner(lenet_path, device="cpu").run({"input_0": x})["output_0"]
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def test_ultraface_float64_matches_float32(rng):
    """BatchNormalization (opset 9, momentum attribute) and two outputs, in float64."""
    path = str(DATA / "ultraface_slim320.onnx")
    x = rng.random((1, 3, 240, 320)).astype(np.float32)
    y64 = ModelRunner(path, device="cpu", precision="float64").run({"input": x})
    y32 = ModelRunner(path, device="cpu").run({"input": x})
    for cmp in compare_outputs(y32, y64):
        assert cmp.max_rel < 1e-5, cmp


def test_run_cache_reuses_outputs_of_repeated_feeds_only():
    """The runner reuses outputs for byte-identical feeds (the original of every pair) and
    recomputes for any change, however small; the cache holds at most RUN_CACHE_SIZE feeds."""
    from onnxcollide.runtime.session import RUN_CACHE_SIZE, ModelRunner

    path = str(Path(__file__).parent.parent / "models" / "mlp_dense.onnx")
    runner = ModelRunner(path, device="cpu")
    x = np.random.default_rng(3).random((1, 1, 16, 16)).astype(np.float32)
    first = runner.run({"input": x})
    again = runner.run({"input": x.copy()})
    np.testing.assert_array_equal(first["logits"], again["logits"])
    assert len(runner._recent) == 1
    nudged = x.copy()
    nudged[0, 0, 0, 0] = np.nextafter(nudged[0, 0, 0, 0], np.float32(2))
    runner.run({"input": nudged})
    assert len(runner._recent) == 2
    for k in range(RUN_CACHE_SIZE + 2):
        runner.run({"input": x + np.float32(k + 1)})
    assert len(runner._recent) == RUN_CACHE_SIZE


def test_commands_leave_the_cached_model_proto_untouched(tmp_path):
    """load_model caches the parsed model per file; the search, the float64 copy and the extra
    outputs must all work on copies, so the cached proto stays byte-identical."""
    from onnxcollide.collide.results import SearchSettings
    from onnxcollide.collide.search import find_collisions
    from onnxcollide.graph.load import load_model
    from onnxcollide.runtime.session import ModelRunner

    path = str(Path(__file__).parent.parent / "models" / "patch_embed.onnx")
    before = load_model(path).proto.SerializeToString()
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    found = find_collisions(path, {"input": x}, SearchSettings(count=1))
    ModelRunner(path, extra_outputs=[found.w1_output], device="cpu", precision="float64")
    ModelRunner(path, extra_outputs=[found.w1_output], device="cpu")
    assert load_model(path).proto is load_model(path).proto  # one parse per file
    assert load_model(path).proto.SerializeToString() == before


def test_a_pair_a_random_perturbation_matches_too_is_inconclusive(dense, rng):
    """B = A + noise far below float32's tolerances: B meets them, but so does the random
    baseline of the same norm, so the pair proves nothing: passed False, conclusive False,
    a notice says why (it once passed)."""
    path, _, x = dense
    noise = rng.standard_normal(x.shape).astype(np.float32)
    tiny = x + 1e-7 * np.linalg.norm(x) * noise / np.linalg.norm(noise)
    v = validate_pair(ModelRunner(path, ["h"], device="cpu"), {"x": x}, {"x": tiny}, "h")
    record = validation_dict(v)
    assert record["collision"]["passed"] and record["baseline"]["passed"]
    assert record["passed"] is False and record["conclusive"] is False
    assert any(note.startswith("inconclusive") for note in record["notices"])


def test_float32_first_layer_keeps_float32_tolerance_in_a_float16_model(tmp_path, rng):
    """W1 computes in float32, the rest in float16 (a Cast after W1): the layer residual is
    held to float32's 1e-5, the outputs to 100 eps16; a 0.2% random change fails at W1."""
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    w2 = rng.standard_normal((8, 4)).astype(np.float16)
    model = build_model(
        [helper.make_node("MatMul", ["x", "W1"], ["h"]),
         helper.make_node("Cast", ["h"], ["h16"], to=TensorProto.FLOAT16),
         helper.make_node("MatMul", ["h16", "W2"], ["y"])],
        [value("x", [1, 16])], [value("y", [1, 4], TensorProto.FLOAT16)],
        [init("W1", w1), init("W2", w2)])
    path = save(model, tmp_path / "mixed.onnx")
    runner = ModelRunner(path, ["h"], device="cpu")
    assert runner.computed_in == "float16" and runner.type_of("h") == "float32"
    x = rng.standard_normal((1, 16)).astype(np.float32)
    noise = rng.standard_normal(x.shape).astype(np.float32)
    moved = x + 2e-3 * np.linalg.norm(x) * noise / np.linalg.norm(noise)
    v = validate_pair(runner, {"x": x}, {"x": moved}, "h")
    assert v.tolerances == Tolerances(layer_rtol=1e-5, output_rtol=100 * 2.0**-10)
    assert v.layer_residual is not None and v.layer_residual > 1e-5
    assert not v.passed


def test_float16_inside_a_subgraph_counts(tmp_path):
    """An If whose branches round through float16 computes in float16 although every
    main-graph tensor is float32: the runner looks into subgraphs."""
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Cast", ["x"], [f"{name}16"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", [f"{name}16"], [f"{name}_out"], to=TensorProto.FLOAT)],
            name, [], [value(f"{name}_out", [1, 4])])

    model = build_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"),
                          else_branch=branch("else"))],
        [value("cond", [], TensorProto.BOOL), value("x", [1, 4])], [value("y", [1, 4])])
    runner = ModelRunner(save(model, tmp_path / "if16.onnx"), device="cpu")
    assert runner.computed_in == "float16"
    assert session.compute_type(["float", "double"]) == "float32"


def test_argmax_agreement_leaves_out_exactly_tied_rows():
    """Row 0 ties at its top (argmax is index order): a rounding-level move of class 2 flips
    it and is not a disagreement; row 1's real flip is. All rows tied: no agreement figure."""
    a = np.array([[1.0, 3.0, 3.0, 0.0], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    b = a.copy()
    b[0, 2] = np.nextafter(np.float32(3.0), np.float32(4.0))
    b[1, 1] = 5.0
    (cmp,) = compare_outputs({"y": a}, {"y": b})
    assert cmp.argmax_agree == 0.0
    b[1, 1] = 3.0
    (cmp,) = compare_outputs({"y": a}, {"y": b})
    assert cmp.argmax_agree == 1.0 and cmp.top5_agree == 1.0
    flat = np.zeros((2, 4), dtype=np.float32)
    (cmp,) = compare_outputs({"y": flat}, {"y": flat + np.eye(2, 4, dtype=np.float32)})
    assert cmp.argmax_agree is None and cmp.top5_agree is not None
