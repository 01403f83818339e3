"""graph.rewrite: intermediate tensors as extra outputs, and the float64 copy of a model.

Models are tiny and built inline; they run in the ONNX reference evaluator here (sessions in
ONNX Runtime are tested in test_runtime.py). Every float64 copy must pass ONNX's strict type
inference: a copy whose types do not line up is a bug even where a runtime would cope.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import (
    DATA,
    DOUBLE,
    FLOAT,
    FLOAT16,
    INT8,
    REAL_MODELS,
    build_model,
    init,
    ints,
    value,
)
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.errors import UsageError
from onnxcollide.graph.rewrite import inferred_elem_types, to_float64, with_extra_outputs

mk = helper.make_node


def mlp(rng: np.random.Generator, dtype: type = np.float32) -> onnx.ModelProto:
    """x [4, 6] -> Gemm(W1, b1) -> h -> Relu -> Gemm(W2) -> y [4, 3]."""
    elem = FLOAT16 if dtype == np.float16 else FLOAT
    return build_model(
        [mk("Gemm", ["x", "W1", "b1"], ["h"]), mk("Relu", ["h"], ["r"]),
         mk("Gemm", ["r", "W2"], ["y"])],
        [value("x", [4, 6], elem)], [value("y", [4, 3], elem)],
        [init("W1", rng.standard_normal((6, 5)).astype(dtype)),
         init("b1", rng.standard_normal(5).astype(dtype)),
         init("W2", rng.standard_normal((5, 3)).astype(dtype))])


def conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x [2, 3, 8, 8] -> Conv 3x3 (4 filters, bias) -> c -> Relu -> MaxPool 2 -> y."""
    return build_model(
        [mk("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3]), mk("Relu", ["c"], ["r"]),
         mk("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        [value("x", [2, 3, 8, 8])], [value("y", [2, 4, 3, 3])],
        [init("W", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
         init("B", rng.standard_normal(4).astype(np.float32))])


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All graph outputs by name, from the ONNX reference evaluator."""
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, feeds), strict=True))


def strictly_typed(model: onnx.ModelProto) -> None:
    """Fail unless the model passes the checker and strict type inference."""
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def all_float_types(model: onnx.ModelProto) -> set[int]:
    """Element types of every float-ish tensor the model declares or stores (incl. inferred)."""
    floats = {FLOAT, FLOAT16, DOUBLE, TensorProto.BFLOAT16}
    return {t for t in inferred_elem_types(model).values() if t in floats}


# ------------------------------------------------------------------ extra outputs


def test_extra_output_is_added_typed_and_equals_the_layer(rng):
    """h = x @ W1 + b1 becomes an output of element type float; its value is the Gemm's."""
    model = mlp(rng)
    extended = with_extra_outputs(model, ["h"])
    assert [o.name for o in extended.graph.output] == ["y", "h"]
    assert extended.graph.output[1].type.tensor_type.elem_type == FLOAT
    x = rng.standard_normal((4, 6)).astype(np.float32)
    out = run_reference(extended, {"x": x})
    w1, b1 = (numpy_helper.to_array(t) for t in model.graph.initializer[:2])
    np.testing.assert_allclose(out["h"], x @ w1 + b1, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["y"], run_reference(model, {"x": x})["y"])


def test_extra_outputs_do_not_touch_the_input_model_or_repeat_outputs(rng):
    """The model passed in is unchanged; names already outputs, and repeats, are added once."""
    model = mlp(rng)
    before = model.SerializeToString()
    extended = with_extra_outputs(model, ["h", "y", "h", "r"])
    assert model.SerializeToString() == before
    assert [o.name for o in extended.graph.output] == ["y", "h", "r"]


def test_extra_output_of_an_input_or_initializer_is_allowed(rng):
    """Graph inputs and initializers are tensors of the main graph too."""
    extended = with_extra_outputs(mlp(rng), ["x", "W1"])
    assert [o.name for o in extended.graph.output] == ["y", "x", "W1"]


def test_unknown_tensor_is_a_usage_error_naming_it(rng):
    with pytest.raises(UsageError, match="no tensor named 'nope'") as info:
        with_extra_outputs(mlp(rng), ["nope"])
    assert info.value.where == "tensor 'nope'"


def test_tensor_of_a_subgraph_cannot_be_an_extra_output():
    """Only main-graph tensors qualify; an If branch's tensor is refused with a hint."""
    branch = helper.make_graph([mk("Identity", ["x"], ["inner"])], "then", [],
                               [value("inner", [2])])
    model = build_model([mk("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                        [value("c", [], TensorProto.BOOL), value("x", [2])], [value("y", [2])])
    with pytest.raises(UsageError, match="If/Loop/Scan"):
        with_extra_outputs(model, ["inner"])


def test_extra_output_untyped_where_inference_knows_nothing():
    """A tensor made by an op of an unknown domain gets an output without a type."""
    model = build_model([mk("Mystery", ["x"], ["m"], domain="custom.ops"),
                         mk("Relu", ["m"], ["y"])],
                        [value("x", [2])], [value("y", [2])], extra_opsets=[("custom.ops", 1)],
                        check=False)
    extended = with_extra_outputs(model, ["m"])
    assert not extended.graph.output[-1].HasField("type")


# ------------------------------------------------------------------ float64 copy


def test_float64_mlp_is_double_throughout_and_matches_float32(rng):
    """Gemm/Relu MLP: every float tensor double; outputs within 1e-6 of the float32 model."""
    model = mlp(rng)
    double = to_float64(model)
    strictly_typed(double)
    assert all_float_types(double) == {DOUBLE}
    assert all(t.data_type == DOUBLE for t in double.graph.initializer)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y32 = run_reference(model, {"x": x})["y"]
    y64 = run_reference(double, {"x": x.astype(np.float64)})["y"]
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def test_float64_conv_model_matches_float32(rng):
    model = conv_model(rng)
    double = to_float64(model)
    strictly_typed(double)
    assert all_float_types(double) == {DOUBLE}
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y32 = run_reference(model, {"x": x})["y"]
    y64 = run_reference(double, {"x": x.astype(np.float64)})["y"]
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)


def test_float64_of_float16_model(rng):
    """float16 inputs, weights and outputs all become double."""
    double = to_float64(mlp(rng, np.float16))
    strictly_typed(double)
    assert all_float_types(double) == {DOUBLE}


def test_float64_does_not_modify_the_input_model(rng):
    model = mlp(rng)
    before = model.SerializeToString()
    to_float64(model)
    assert model.SerializeToString() == before


def test_float64_converts_casts_constants_and_tensor_attributes():
    """Cast(to=FLOAT), Constant value / value_float / value_floats, ConstantOfShape value."""
    model = build_model(
        [mk("Cast", ["i"], ["f"], to=FLOAT),
         mk("Constant", [], ["c1"], value=numpy_helper.from_array(np.float32(2.0))),
         mk("Constant", [], ["c2"], value_float=3.0),
         mk("Constant", [], ["c3"], value_floats=[1.0, 2.0]),
         mk("ConstantOfShape", ["shape"], ["z"],
            value=numpy_helper.from_array(np.array([0.5], dtype=np.float32))),
         mk("Mul", ["f", "c1"], ["m1"]), mk("Mul", ["m1", "c2"], ["m2"]),
         mk("Add", ["m2", "c3"], ["m3"]), mk("Add", ["m3", "z"], ["y"])],
        [value("i", [2], TensorProto.INT64)], [value("y", [2])], [ints("shape", [2])])
    double = to_float64(model)
    strictly_typed(double)
    cast = next(n for n in double.graph.node if n.op_type == "Cast")
    assert helper.get_attribute_value(cast.attribute[0]) == DOUBLE
    for node in double.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            assert [a.name for a in node.attribute] == ["value"]
            assert node.attribute[0].t.data_type == DOUBLE
    out = run_reference(double, {"i": np.array([1, 2], dtype=np.int64)})["y"]
    np.testing.assert_array_equal(out, [1 * 6 + 1 + 0.5, 2 * 6 + 2 + 0.5])


def test_float64_casts_float_only_inputs_back(rng):
    """Resize takes float scales only: the copy casts them back to float and still runs."""
    scales = init("scales", np.array([1, 1, 2, 2], dtype=np.float32))
    model = build_model(
        [mk("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [value("x", [1, 1, 2, 2])], [value("y", [1, 1, 4, 4])], [scales])
    double = to_float64(model)
    strictly_typed(double)
    resize = next(n for n in double.graph.node if n.op_type == "Resize")
    cast = next(n for n in double.graph.node if n.output[0] == resize.input[2])
    assert cast.op_type == "Cast" and helper.get_attribute_value(cast.attribute[0]) == FLOAT
    x = rng.standard_normal((1, 1, 2, 2))
    out = run_reference(double, {"x": x})["y"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.repeat(2, axis=2).repeat(2, axis=3))


def test_float64_of_weight_only_quantization(rng):
    """DequantizeLinear of an int8 weight: float scale kept, its float output cast to double."""
    w = rng.integers(-5, 6, size=(6, 3)).astype(np.int8)
    model = build_model(
        [mk("DequantizeLinear", ["Wq", "scale"], ["W"]), mk("MatMul", ["x", "W"], ["y"])],
        [value("x", [2, 6])], [value("y", [2, 3])],
        [init("Wq", w), init("scale", np.array(0.5, dtype=np.float32))], opset=19)
    double = to_float64(model)
    strictly_typed(double)
    assert all_float_types(double) >= {DOUBLE}
    x = rng.standard_normal((2, 6))
    out = run_reference(double, {"x": x})["y"]
    np.testing.assert_allclose(out, x @ (w * 0.5), rtol=1e-12)


@pytest.mark.parametrize("op", ["QuantizeLinear", "QLinearConv", "ConvInteger"])
def test_float64_refuses_activation_quantization(op):
    model = build_model([mk(op, ["x", "s"], ["y"], name="q1")], [value("x", [2])],
                        [value("y", [2], INT8)], check=False)
    with pytest.raises(UsageError, match="quantizes activations") as info:
        to_float64(model)
    assert info.value.where == "node 'q1'"
    assert "float32" in info.value.hint


def test_float64_converts_subgraphs():
    """If branches: their Constant values and output types become double."""
    def branch(name: str, number: float) -> onnx.GraphProto:
        const = numpy_helper.from_array(np.full(2, number, dtype=np.float32))
        return helper.make_graph([mk("Constant", [], [f"{name}_c"], value=const),
                                  mk("Add", ["x", f"{name}_c"], [f"{name}_y"])], name, [],
                                 [value(f"{name}_y", [2])])
    model = build_model([mk("If", ["c"], ["y"], then_branch=branch("t", 1.0),
                            else_branch=branch("e", -1.0))],
                        [value("c", [], TensorProto.BOOL), value("x", [2])], [value("y", [2])])
    double = to_float64(model)
    strictly_typed(double)
    x = np.array([1.0, 2.0])
    out = run_reference(double, {"c": np.array(True), "x": x})["y"]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x + 1)


def test_float64_keeps_external_initializers_on_disk(tmp_path, rng):
    """An external float32 weight stays external and float32; a Cast makes the double one."""
    model = mlp(rng)
    onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), str(tmp_path / "m.onnx"),
              save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    lazy = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    double = to_float64(lazy)
    stored = {t.name: t for t in double.graph.initializer}
    assert set(stored) == {"W1__float", "b1__float", "W2__float"}
    assert all(t.data_type == FLOAT and t.data_location == TensorProto.EXTERNAL
               for t in stored.values())
    casts = {n.output[0]: n.input[0] for n in double.graph.node if n.op_type == "Cast"}
    assert casts == {"W1": "W1__float", "b1": "b1__float", "W2": "W2__float"}
    onnx.load_external_data_for_model(double, str(tmp_path))
    strictly_typed(double)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(run_reference(double, {"x": x.astype(np.float64)})["y"],
                               run_reference(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [m for m in REAL_MODELS if "qdq" not in m])
def test_float64_of_real_models_is_strictly_typed(name):
    """Every float model in tests/data converts to a copy ONNX's strict type check accepts."""
    double = to_float64(onnx.load(str(DATA / name)))
    strictly_typed(double)
    assert all_float_types(double) == {DOUBLE}


def test_float64_of_the_qdq_model_is_refused():
    with pytest.raises(UsageError, match="QuantizeLinear"):
        to_float64(onnx.load(str(DATA / "lenet5_mnist_qdq.onnx")))


def test_float64_casts_an_external_constant_value(tmp_path, rng):
    """A Constant whose value lives in an external file keeps it; a Cast follows the node."""
    w = rng.standard_normal((6, 3)).astype(np.float32)
    model = build_model([mk("Constant", [], ["W"], value=numpy_helper.from_array(w)),
                         mk("MatMul", ["x", "W"], ["y"])],
                        [value("x", [2, 6])], [value("y", [2, 3])])
    onnx.save(model, str(tmp_path / "c.onnx"), save_as_external_data=True, location="c.bin",
              size_threshold=0, convert_attribute=True)
    double = to_float64(onnx.load(str(tmp_path / "c.onnx"), load_external_data=False))
    const, cast, _ = double.graph.node
    assert const.output[0] == "W__float" and const.attribute[0].t.data_type == FLOAT
    assert (cast.op_type, list(cast.input), list(cast.output)) == ("Cast", ["W__float"], ["W"])
    onnx.load_external_data_for_model(double, str(tmp_path))
    strictly_typed(double)
