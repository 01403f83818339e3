"""Differential check of the path operator against ONNX Runtime on random configurations.

Each example draws one or two ops among Resize (nearest, linear, cubic; every coordinate
mode, nearest_mode, cubic_coeff_a, exclude_outside, antialias, axes, scales or sizes, NCHW
and NHWC layouts), Upsample, CumSum, Trilu, ReverseSequence, Compress and CenterCropPad, on
an input of 0 to 3 spatial axes (sizes 1 to 9), at an opset where the op exists (7 to 21),
and builds the model ``x -> op(s) -> Conv or Gemm``. It then builds ``onnxcollide``'s sparse
operator ``M`` from ``x`` to W1's data input (as tests/test_linear_path.py does), runs the
model in ONNX Runtime with that input as a graph output, and checks ``M @ x == y(x) - y(0)``
element by element (and, for a dynamic batch axis, each sample of a batch of two on its
own). Each model is also audited in-process. Usage::

    python scripts/check_path_ops.py --examples 2000 [--seed 0] [--cli 8] [--keep DIR]

It prints how many configurations were checked, refused by onnxcollide (with their
messages), refused by ONNX Runtime, mismatches and crashes (any exception other than
UnsupportedModelError, or a refusal that is not one line naming a node), and exits 1 on a
mismatch or a crash. ``--cli N`` also runs ``onnxcollide audit``, ``collide`` and
``validate`` on N accepted coupling and N selecting examples. ``--case K`` reruns example K
of a seed alone, verbosely. The reference is the installed ONNX Runtime's CPU kernel.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxcollide.audit.model import audit_model  # noqa: E402
from onnxcollide.errors import OnnxCollideError, UnsupportedModelError  # noqa: E402
from onnxcollide.graph.constants import ConstantResolver, Scope  # noqa: E402
from onnxcollide.graph.linear_path import PathOperator, build_path_operator, path_nodes  # noqa: E402
from onnxcollide.graph.load import load_model  # noqa: E402
from onnxcollide.graph.shapes import infer_shapes  # noqa: E402

mk = helper.make_node
ort.set_default_logger_severity(3)
OPS = ("Resize", "Upsample", "CumSum", "Trilu", "ReverseSequence", "Compress", "CenterCropPad")
SINCE = {"Resize": 10, "CumSum": 11, "Trilu": 14, "ReverseSequence": 10, "Compress": 9,
         "CenterCropPad": 18}
SCALES = (1.0, 2.0, 3.0, 0.5, 1.5, 0.75, 0.6, 0.7, 1.1, 1.25, 0.35, 2.5, 0.8, 1.3, 0.9, 1.7,
          0.25, 0.3, 0.4, 1.05, 0.95, 2.2, 0.45)
COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@dataclass
class Case:
    """One drawn configuration: the path's nodes (``x`` to ``p``) and their initializers."""

    opset: int
    shape: tuple[int, ...]  # the input's shape, batch 1
    dynamic: bool  # whether the model's batch axis is symbolic
    batch: int = 1  # the model's batch where it is not symbolic
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    no_batch: bool = False  # a Compress without axis: a model of batch one only


@dataclass
class Tally:
    """What the examples gave."""

    checked: int = 0
    selections: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    ort_refused: int = 0
    ort_refused_accepted: int = 0
    batch_one: int = 0
    empty: int = 0
    mismatches: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    per_op: collections.Counter[str] = field(default_factory=collections.Counter)


# ------------------------------------------------------------------ drawing configurations


def _f32(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _i64(name: str, values: list[int] | int, dtype: type = np.int64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _maybe(rng: np.random.Generator, attrs: dict[str, object], name: str,
           choices: tuple[object, ...], p: float = 0.7) -> None:
    """Set ``attrs[name]`` to one of ``choices`` with probability ``p`` (else the default)."""
    if rng.random() < p:
        attrs[name] = choices[rng.integers(len(choices))]


def _axis_scale(rng: np.random.Generator, n: int) -> tuple[float, int]:
    """A scale for one axis of ``n`` elements (1 now and then, often a decimal whose float32
    value puts a coordinate next to a half), and a size for the same axis."""
    draw = rng.random()
    if draw < 0.1:
        scale = 1.0
    elif draw < 0.8:
        scale = float(SCALES[rng.integers(len(SCALES))])
    else:
        scale = round(float(rng.uniform(0.15, 3.5)), int(rng.integers(1, 4)))
    size = n if rng.random() < 0.2 else int(rng.integers(1, 3 * n + 3))
    return scale, size


def draw_resize(rng: np.random.Generator, case: Case, shape: tuple[int, ...], src: str,
                dst: str, tag: str) -> None:
    """Resize at ``case.opset`` (10 to 21): mode, coordinate and nearest modes, cubic
    coefficient, exclude_outside, antialias, axes, scales or sizes, keep_aspect_ratio_policy."""
    opset, rank = case.opset, len(shape)
    attrs: dict[str, object] = {}
    modes = ("nearest", "linear", "cubic")  # cubic before opset 11: refused, or by ORT
    attrs["mode"] = modes[rng.integers(len(modes))] if rng.random() < 0.95 else "bilinear"
    if opset >= 11:
        coordinates = COORDINATES + (("half_pixel_symmetric",) if opset >= 19 else ())
        if rng.random() < 0.04:
            coordinates = ("tf_crop_and_resize",)
        _maybe(rng, attrs, "coordinate_transformation_mode", coordinates, 0.85)
        _maybe(rng, attrs, "nearest_mode", NEAREST, 0.6)
        if rng.random() < 0.6:
            attrs["cubic_coeff_a"] = float(np.float32(
                (-0.75, -0.5, -0.6, round(float(rng.uniform(-1.0, -0.1)), 3))[rng.integers(4)]))
    axes = list(range(rank))
    if opset >= 18:
        _maybe(rng, attrs, "antialias", (0, 1, 1), 0.6 if attrs["mode"] != "nearest" else 0.05)
    if opset >= 11:  # ONNX Runtime takes it for cubic, or linear with antialias
        useful = attrs["mode"] == "cubic" or attrs.get("antialias") == 1
        _maybe(rng, attrs, "exclude_outside", (0, 1), 0.6 if useful else 0.05)
    if opset >= 18 and rng.random() < 0.35:
        chosen = sorted(rng.choice(np.arange(1, rank), size=int(rng.integers(1, rank)),
                                   replace=False).tolist())
        if rng.random() < 0.2 and rank > 2:
            chosen = chosen[::-1]
        axes = [a - rank if rng.random() < 0.4 else a for a in chosen]
        attrs["axes"] = axes
    sized = opset >= 11 and rng.random() < 0.4
    if sized and opset >= 18 and rng.random() < 0.1:
        attrs["keep_aspect_ratio_policy"] = ("not_larger", "not_smaller", "stretch")[
            rng.integers(3)]
    scales, sizes = [], []
    nhwc = rank == 4 and "axes" not in attrs and rng.random() < 0.15  # [1, s, s, 1]
    for a in axes:
        n = shape[a % rank]
        scale, size = _axis_scale(rng, n)
        still = (a % rank == 0 and rng.random() < 0.97) or (
            a % rank == 1 and rank > 2 and not nhwc and rng.random() < 0.85) or (
            nhwc and a == 3)
        scales.append(1.0 if still else scale)
        sizes.append(n if still else size)
    roi_name = f"roi{tag}"
    crop = attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize"
    roi = _f32(roi_name, [0.1] * len(axes) + [0.9] * len(axes) if crop else [])
    if opset == 10:
        case.inits.append(_f32(f"scales{tag}", scales))
        inputs = [src, f"scales{tag}"]
    elif sized:
        case.inits += [_i64(f"sizes{tag}", sizes), _f32(f"scales{tag}", [])]
        if opset >= 13 and not crop and rng.random() < 0.6:
            inputs = [src, "", "", f"sizes{tag}"]
        else:
            inputs = [src, roi_name, f"scales{tag}", f"sizes{tag}"]
            case.inits.append(roi)
    else:
        case.inits.append(_f32(f"scales{tag}", scales))
        if opset >= 13 and not crop and rng.random() < 0.6:
            inputs = [src, "", f"scales{tag}"]
        else:
            inputs = [src, roi_name, f"scales{tag}"]
            case.inits.append(roi)
    case.nodes.append(mk("Resize", inputs, [dst], name=f"resize{tag}", **attrs))
    shown = {k: v for k, v in attrs.items()}
    shown["sizes" if sized else "scales"] = sizes if sized else scales
    case.labels.append(f"Resize-{opset}{shown}")


def draw_upsample(rng: np.random.Generator, case: Case, shape: tuple[int, ...], src: str,
                  dst: str, tag: str) -> None:
    """Upsample-7 (float list attribute) or -9 (scales input), nearest or linear."""
    rank = len(shape)
    mode = ("nearest", "linear", "bilinear")[rng.integers(3)] if rng.random() < 0.95 else "cubic"
    scales = [1.0 if a == 0 or (a == 1 and rank > 2 and rng.random() < 0.85)
              else (1.0, 2.0, 3.0, 1.5, 2.5, 0.5, 1.3)[rng.integers(7)] for a in range(rank)]
    if case.opset < 9:
        case.nodes.append(mk("Upsample", [src], [dst], mode=mode, scales=scales,
                             name=f"upsample{tag}"))
    else:
        case.inits.append(_f32(f"scales{tag}", scales))
        case.nodes.append(mk("Upsample", [src, f"scales{tag}"], [dst], mode=mode,
                             name=f"upsample{tag}"))
    case.labels.append(f"Upsample-{case.opset}(mode={mode}, scales={scales})")


def draw_cumsum(rng: np.random.Generator, case: Case, shape: tuple[int, ...], src: str,
                dst: str, tag: str) -> None:
    rank = len(shape)
    axis = int(rng.integers(-rank, rank)) if rng.random() < 0.95 else 0
    dtype = (np.int64, np.int32)[rng.integers(2)]
    value: list[int] | int = [axis] if rng.random() < 0.3 else axis
    case.inits.append(_i64(f"axis{tag}", value, dtype))
    attrs: dict[str, object] = {}
    _maybe(rng, attrs, "exclusive", (0, 1))
    _maybe(rng, attrs, "reverse", (0, 1))
    case.nodes.append(mk("CumSum", [src, f"axis{tag}"], [dst], name=f"cumsum{tag}", **attrs))
    case.labels.append(f"CumSum(axis={value} {np.dtype(dtype).name}, {attrs})")


def draw_trilu(rng: np.random.Generator, case: Case, shape: tuple[int, ...], src: str,
               dst: str, tag: str) -> None:
    attrs: dict[str, object] = {}
    _maybe(rng, attrs, "upper", (0, 1))
    inputs = [src]
    k = None
    if rng.random() < 0.7:
        k = int(rng.integers(-10, 11))
        case.inits.append(_i64(f"k{tag}", [k] if rng.random() < 0.2 else k))
        inputs.append(f"k{tag}")
    case.nodes.append(mk("Trilu", inputs, [dst], name=f"trilu{tag}", **attrs))
    case.labels.append(f"Trilu(k={k}, {attrs})")


def draw_reverse_sequence(rng: np.random.Generator, case: Case, shape: tuple[int, ...],
                          src: str, dst: str, tag: str) -> None:
    batch_axis, time_axis = (0, 1) if rng.random() < 0.9 else (1, 0)
    steps = shape[time_axis]
    length = int(rng.integers(0, steps + 1))
    count = shape[batch_axis]
    case.inits.append(_i64(f"lens{tag}", [length] * count))
    case.nodes.append(mk("ReverseSequence", [src, f"lens{tag}"], [dst], batch_axis=batch_axis,
                         time_axis=time_axis, name=f"reverse{tag}"))
    case.labels.append(f"ReverseSequence(batch_axis={batch_axis}, time_axis={time_axis}, "
                       f"lens={[length] * count})")


def draw_compress(rng: np.random.Generator, case: Case, shape: tuple[int, ...], src: str,
                  dst: str, tag: str) -> None:
    rank = len(shape)
    attrs: dict[str, object] = {}
    if rng.random() < 0.75:
        low = -rank if case.opset >= 11 else 0
        axis = int(rng.integers(low, rank)) if rng.random() < 0.95 else 0
        attrs["axis"] = axis
        n = shape[axis % rank]
    else:  # one sample's elements, now and then the whole batch's
        n = int(np.prod(shape[1:])) * (shape[0] if rng.random() < 0.2 else 1)
    length = max(0, n + int(rng.integers(-2, 3)))
    condition = rng.random(length) < rng.uniform(0.2, 0.9)
    if length > n and rng.random() < 0.7:
        condition[n:] = False
    case.inits.append(numpy_helper.from_array(condition, f"cond{tag}"))
    case.nodes.append(mk("Compress", [src, f"cond{tag}"], [dst], name=f"compress{tag}",
                         **attrs))
    case.no_batch = case.no_batch or "axis" not in attrs
    case.labels.append(f"Compress({attrs}, condition={condition.astype(int).tolist()})")


def draw_center_crop_pad(rng: np.random.Generator, case: Case, shape: tuple[int, ...],
                         src: str, dst: str, tag: str) -> None:
    rank = len(shape)
    attrs: dict[str, object] = {}
    if rng.random() < 0.3:
        axes = list(range(rank))
        targets = [shape[0] if rng.random() < 0.5 else 1] + [
            int(rng.integers(1, 10)) for _ in range(rank - 1)]
    else:
        chosen = sorted(rng.choice(np.arange(1, rank), size=int(rng.integers(1, rank)),
                                   replace=False).tolist())
        axes = [a - rank if rng.random() < 0.4 else a for a in chosen]
        if rng.random() < 0.05:
            axes.append(axes[0] - rank if axes[0] >= 0 else axes[0] + rank)  # twice
        attrs["axes"] = axes
        targets = [shape[a] if rng.random() < 0.2 else int(rng.integers(1, 10)) for a in axes]
    case.inits.append(_i64(f"shape{tag}", targets))
    case.nodes.append(mk("CenterCropPad", [src, f"shape{tag}"], [dst], name=f"crop{tag}",
                         **attrs))
    case.labels.append(f"CenterCropPad({attrs}, shape={targets})")


DRAW = {"Resize": draw_resize, "Upsample": draw_upsample, "CumSum": draw_cumsum,
        "Trilu": draw_trilu, "ReverseSequence": draw_reverse_sequence,
        "Compress": draw_compress, "CenterCropPad": draw_center_crop_pad}


def draw_case(seed: int, index: int) -> tuple[Case, list[str]]:
    """Example ``index`` of ``seed``: its case (without the ops after the first; those are
    drawn once the first's output shape is known) and the ops chosen."""
    rng = np.random.default_rng([seed, index])
    op = "Resize" if rng.random() < 0.3 else OPS[rng.integers(len(OPS))]
    opset = int(rng.integers(7, 10)) if op == "Upsample" else \
        int(rng.integers(max(SINCE[op], 10), 22))
    spatial = int(rng.integers(0, 4)) if rng.random() < 0.6 else 2  # 2: what cubic needs
    shape = (1, int(rng.integers(1, 4)), *(int(rng.choice([1, 2, *range(1, 10)]))
                                           for _ in range(spatial)))
    if spatial == 0:
        shape = (1, int(rng.integers(1, 10)))
    ops = [op]
    if op != "Upsample" and rng.random() < 0.4:
        later = [o for o in OPS if o != "Upsample" and SINCE[o] <= opset]
        ops.append(later[rng.integers(len(later))])
    kind = rng.random()  # a symbolic batch, a batch of one, a fixed batch of three
    return Case(opset, shape, bool(kind < 0.45), 3 if kind > 0.85 else 1), ops


# ------------------------------------------------------------------ models and runs


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _model(case: Case, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto],
           outputs: list[str]) -> onnx.ModelProto:
    batch: list[int | str] = ["N"] if case.dynamic else [case.batch]
    graph = helper.make_graph(
        nodes, "check", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                       [*batch, *case.shape[1:]])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits)
    opsets = [helper.make_opsetid("", case.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="check_path_ops")
    model.ir_version = min(helper.find_min_ir_version_for(opsets), 10)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    return _session(model).run(names, {"x": x})  # type: ignore[no-any-return]


def output_shape(case: Case) -> tuple[int, ...] | None:
    """The path output's shape in ONNX Runtime (on the model's batch, 1 where symbolic), None
    where it refuses the model."""
    try:
        out = _run(_model(case, case.nodes, case.inits, ["p"]),
                   np.zeros((case.batch, *case.shape[1:]), np.float32), ["p"])[0]
    except Exception:  # any ONNX Runtime refusal
        return None
    return tuple(out.shape)


def build_case(seed: int, index: int) -> tuple[Case, tuple[int, ...] | None]:
    """Draw example ``index``: the path ops (a second one drawn on the first's output)."""
    case, ops = draw_case(seed, index)
    rng = np.random.default_rng([seed, index, 1])
    shape: tuple[int, ...] | None = (case.batch, *case.shape[1:])
    for k, op in enumerate(ops):
        assert shape is not None
        src = "x" if k == 0 else f"p{k - 1}"
        DRAW[op](rng, case, shape, src, f"p{k}", str(k))
        case.nodes[-1].output[0] = "p"
        shape = output_shape(case)
        if shape is None or k == len(ops) - 1 or 0 in shape or len(shape) < 2:
            break
        case.nodes[-1].output[0] = f"p{k}"
    return case, shape


def with_w1(case: Case, shape: tuple[int, ...], rng: np.random.Generator
            ) -> tuple[onnx.ModelProto, str]:
    """The path then W1: a 1x1 (or 2-wide) Conv with one filter where the path output has
    1 to 3 spatial axes, else Flatten (or Unsqueeze) and a Gemm with 3 outputs. Returns the
    model and W1's data input."""
    nodes, inits = list(case.nodes), list(case.inits)
    rank = len(shape)
    if 3 <= rank <= 5 and rng.random() < 0.7:
        kernel = [int(rng.integers(1, min(n, 2) + 1)) for n in shape[2:]]
        weight = rng.standard_normal((1, shape[1], *kernel)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "W"))
        nodes.append(mk("Conv", ["p", "W"], ["y"], kernel_shape=kernel, name="w1"))
        return _model(case, nodes, inits, ["y"]), "p"
    if rank == 1:
        if case.opset >= 13:
            inits.append(_i64("zero", [0]))
            nodes.append(mk("Unsqueeze", ["p", "zero"], ["flat"], name="unsqueeze"))
        else:
            nodes.append(mk("Unsqueeze", ["p"], ["flat"], axes=[0], name="unsqueeze"))
        features = shape[0]
    else:
        nodes.append(mk("Flatten", ["p"], ["flat"], axis=1, name="flatten"))
        features = int(np.prod(shape[1:]))
    weight = rng.standard_normal((features, 3)).astype(np.float32)
    inits += [numpy_helper.from_array(weight, "W"), _f32("C", [0.5, -1.0, 2.0])]
    nodes.append(mk("Gemm", ["flat", "W", "C"], ["y"], name="w1"))
    return _model(case, nodes, inits, ["y"]), "flat"


def path_operator(file: str, data_input: str, shape: tuple[int, ...]) -> PathOperator:
    """onnxcollide's operator from x to ``data_input``, as tests/test_linear_path.py builds
    it."""
    loaded = load_model(file)
    infos = infer_shapes(loaded, {})
    resolver = ConstantResolver(Scope.of_graph(loaded.proto.graph, "main", None),
                                loaded.base_dir, list(loaded.proto.opset_import))
    graph_nodes = list(loaded.proto.graph.node)
    stop = next(i for i, n in enumerate(graph_nodes) if n.name == "w1")
    chosen = path_nodes("x", data_input, graph_nodes, stop)
    return build_path_operator("x", shape, data_input, chosen, resolver, infos, loaded.opset)


def compare(operator: PathOperator, model: onnx.ModelProto, data_input: str, case: Case,
            rng: np.random.Generator) -> str | None:
    """None where ``M @ x`` equals ONNX Runtime's path output (less its value at 0) for each
    sample of a random x (of the model's batch; of one and of two where it is symbolic);
    BATCH_ONE where the output of a batch of several is not as many samples; else what
    differs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.insert(0, helper.make_tensor_value_info(data_input, TensorProto.FLOAT,
                                                               None))
    try:
        session = _session(model)
    except Exception as exc:
        return f"ONNX Runtime refused the full model: {exc}"
    batches = [1, 2] if case.dynamic and not case.no_batch else [case.batch]
    for batch in batches:
        x = rng.uniform(-1, 1, (batch, *case.shape[1:])).astype(np.float32)
        try:
            got = session.run([data_input], {"x": x})[0].astype(np.float64)
            zero = session.run([data_input], {"x": np.zeros_like(x)})[0].astype(np.float64)
        except Exception as exc:
            if batch == case.batch:
                return f"ONNX Runtime failed on the full model: {exc}"
            continue  # a parameter sized for one sample (ReverseSequence's lengths)
        if batch > 1 and got.shape[:1] != (batch,):
            return BATCH_ONE
        if got.shape != (batch, *operator.data_shape):
            return f"batch {batch}: shape {got.shape} in ONNX Runtime, operator " \
                   f"{operator.data_shape}"
        for b in range(batch):
            mapped = operator.matrix @ x[b].astype(np.float64).reshape(-1)
            bound = abs(operator.matrix) @ np.abs(x[b].astype(np.float64).reshape(-1))
            error = np.abs(mapped - (got[b] - zero[b]).reshape(-1))
            if error.size == 0:
                continue
            worst = int(np.argmax(error - 1e-5 * (1 + bound)))
            if error[worst] > 1e-5 * (1 + bound[worst]):
                return f"batch {batch} sample {b}: element {worst} of {error.size} is " \
                       f"{mapped[worst]:.7g} in the operator, " \
                       f"{(got[b] - zero[b]).reshape(-1)[worst]:.7g} in ONNX Runtime " \
                       f"({int(np.count_nonzero(error > 1e-5 * (1 + bound)))} differ)"
    return None


BATCH_ONE = "the model's output for a batch of several is not as many samples"


def _template(message: str) -> str:
    """A refusal message with its numbers and node names generalised, for counting."""
    text = re.sub(r"'[^']*'", "'…'", message)
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", text)


def check_one(seed: int, index: int, folder: Path, tally: Tally, verbose: bool,
              audit: bool) -> tuple[str, str, tuple[int, ...]] | None:
    """Run example ``index``; return (kind, model file, input shape) where it is a coupling
    or selecting case of batch one (or a symbolic batch) that ONNX Runtime accepts and the
    operator matched (for the CLI checks)."""
    case, shape = build_case(seed, index)
    batch = " batch N" if case.dynamic else f" batch {case.batch}" if case.batch > 1 else ""
    label = f"#{index} opset {case.opset} x{list(case.shape)}{batch}: " \
            f"{' -> '.join(case.labels)}"
    if verbose:
        print(label)
    for node in case.nodes:
        tally.per_op[node.op_type] += 1
    rng = np.random.default_rng([seed, index, 2])
    file = str(folder / f"case{index}.onnx")
    if shape is not None and 0 in shape:
        tally.empty += 1  # nothing reaches W1: not a model to check
        return None
    if shape is not None and len(shape) >= 1:
        model, data_input = with_w1(case, shape, rng)
    else:
        model, data_input = _model(case, list(case.nodes), list(case.inits), ["p"]), "p"
        model.graph.node.append(mk("Identity", ["p"], ["q"], name="w1"))
    onnx.save(model, file)
    try:
        operator = path_operator(file, data_input, case.shape)
    except UnsupportedModelError as exc:
        text = exc.one_line()
        names = [n.name for n in model.graph.node]
        if "\n" in text or not any(f"'{n}'" in text for n in names):
            tally.crashes.append(f"{label}\n    refusal not one line naming a node: {text}")
        if shape is None:
            tally.ort_refused += 1
        else:
            tally.refused[_template(text)] += 1
        if verbose:
            print("   refused:", text)
        return None
    except Exception:  # a crash is what this looks for
        tally.crashes.append(f"{label}\n    {traceback.format_exc(limit=4)}")
        return None
    if shape is None:
        tally.ort_refused += 1
        tally.ort_refused_accepted += 1
        if verbose:
            print("   ONNX Runtime refuses it, onnxcollide accepts it")
        return None
    if audit:
        try:
            audit_model(file)
        except OnnxCollideError:
            pass
        except Exception:
            tally.crashes.append(f"{label}\n    audit: {traceback.format_exc(limit=4)}")
    problem = compare(operator, model, data_input, case, rng)
    tally.checked += 1
    if problem == BATCH_ONE:
        tally.batch_one += 1
        if verbose:
            print("   " + BATCH_ONE)
        problem = compare(operator, model, data_input, replace(case, dynamic=False), rng) \
            if case.dynamic else None  # a fixed batch of three: no batch of one to run
    tally.selections += operator.selection
    if problem:
        tally.mismatches.append(f"{label}\n    {problem}")
        if verbose:
            print("   MISMATCH:", problem)
        return None
    if verbose:
        print("   matches:", "selection" if operator.selection else operator.coupling)
    if case.batch > 1 or case.no_batch:
        return None
    return ("selection" if operator.selection else "coupling"), file, case.shape


# ------------------------------------------------------------------ the command line


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxcollide", *args], capture_output=True,
                          text=True, check=False, timeout=300)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> bool:
    lines = done.stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in done.stderr


def jacobian_nullity(file: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The dimension of the null space of x -> W1's output on one sample, and how many input
    elements it does not read at all (zero columns), from ONNX Runtime run on each unit
    vector (singular values and columns under 1e-5 of the largest count as zero)."""
    session = _session(onnx.load(file))
    n = int(np.prod(shape[1:]))
    zero = session.run(["y"], {"x": np.zeros(shape, np.float32)})[0].reshape(-1)
    unit = np.eye(n, dtype=np.float32).reshape(n, 1, *shape[1:])
    columns = [session.run(["y"], {"x": unit[i]})[0].reshape(-1) - zero for i in range(n)]
    jacobian = np.stack(columns, axis=1).astype(np.float64)
    sigmas = np.linalg.svd(jacobian, compute_uv=False)
    top = float(sigmas.max(initial=0.0))
    if top == 0:
        return n, n
    blind = int(np.count_nonzero(np.linalg.norm(jacobian, axis=0) <= 1e-5 * top))
    return n - int(np.count_nonzero(sigmas > 1e-5 * top)), blind


def _argmax_tie_only(report_file: Path) -> bool:
    """Whether validation failed only on argmax agreement (an output whose row is tied: the
    collision's W1 residual and outputs are within tolerance)."""
    report = json.loads(report_file.read_text())
    for collision in report.get("collisions", []):
        figures = collision["validation"]["collision"]
        tolerances = collision["validation"]["tolerances"]
        if figures["layer_residual"] is not None and \
                figures["layer_residual"] > tolerances["layer_rtol"]:
            return False
        if any(o["max_rel"] > tolerances["output_rtol"] for o in figures["outputs"]):
            return False
    return True


def check_cli(file: str, folder: Path, shape: tuple[int, ...]) -> tuple[str, str | None]:
    """audit exits 0, or 3 with one error line; collide exits 0 and validate PASSes, or
    collide finds no exact collision and ONNX Runtime's Jacobian has no null space either
    (but for input elements W1 never reads, which collide does not perturb). Returns the
    outcome ('PASS', 'audit refused', 'no collision', 'argmax tie': validation failed on
    argmax agreement alone, a tied output) and what broke the property (None where nothing
    did)."""
    audited = _cli("audit", file)
    if audited.returncode == 3 and _one_error_line(audited):
        return "audit refused", None
    if audited.returncode != 0 or "Traceback" in audited.stderr:
        return "", f"audit exit {audited.returncode}: {audited.stderr.strip()[-500:]}"
    out = folder / (Path(file).stem + "-out")
    collided = _cli("collide", file, "-o", str(out), "--device", "cpu")
    none = (collided.returncode in (2, 3) and _one_error_line(collided)) or (
        collided.returncode == 0 and "no exact collision" in collided.stdout)
    if none:
        nullity, blind = jacobian_nullity(file, shape)
        if nullity == 0:
            return "no collision", None
        if nullity == blind:
            return f"blind only ({blind} input elements W1 never reads)", None
        return "", f"collide finds no exact collision, ONNX Runtime's Jacobian has nullity " \
                   f"{nullity} ({blind} blind input elements)"
    if collided.returncode == 1 and _argmax_tie_only(out / "report.json"):
        return "argmax tie", None
    if collided.returncode != 0:
        return "", f"collide exit {collided.returncode}: {collided.stderr.strip()[-500:]}"
    validated = _cli("validate", file, str(out / "collisions.npz"), "--device", "cpu")
    if validated.returncode != 0 or "PASS" not in validated.stdout or \
            "FAIL" in validated.stdout:
        return "", f"validate exit {validated.returncode}: " \
                   f"{validated.stdout.strip()[-500:]}{validated.stderr.strip()[-300:]}"
    return "PASS", None


def report(tally: Tally, examples: int, seconds: float) -> None:
    print(f"{examples} examples in {seconds:.0f} s: {tally.checked} configurations checked "
          f"against ONNX Runtime ({tally.selections} selections, "
          f"{tally.checked - tally.selections} coupling), "
          f"{sum(tally.refused.values())} refused by onnxcollide, {tally.ort_refused} refused "
          f"by ONNX Runtime ({tally.ort_refused_accepted} of them accepted by onnxcollide), "
          f"{len(tally.mismatches)} mismatches, {len(tally.crashes)} crashes")
    print(f"({tally.empty} examples with an empty path output skipped; {tally.batch_one} "
          "where ONNX Runtime's output for a batch of several is not as many samples, as where "
          "a Resize's sizes or a CenterCropPad's shape fix the batch at 1: checked on a batch "
          "of one where the batch is symbolic, not checked where it is fixed)")
    print("ops drawn:", ", ".join(f"{op} {n}" for op, n in tally.per_op.most_common()))
    if tally.refused:
        print("refusals:")
        for text, n in tally.refused.most_common():
            print(f"  {n:5d}  {text}")
    for title, found in (("MISMATCHES", tally.mismatches), ("CRASHES", tally.crashes)):
        if found:
            print(f"{title}:")
            for item in found[:40]:
                print("  " + item)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=None,
                        help="rerun example K of the seed alone, verbosely")
    parser.add_argument("--cli", type=int, default=0,
                        help="also run audit, collide and validate on this many accepted "
                             "examples of each kind (coupling, selection)")
    parser.add_argument("--no-audit", action="store_true",
                        help="skip the in-process audit of each model")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the models in this folder (default: a temporary one)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    tally = Tally()
    start = time.monotonic()
    indices = [args.case] if args.case is not None else list(range(args.examples))
    cli_done = collections.Counter[str]()
    cli_problems: list[str] = []
    cli_notes: list[str] = []
    cli_outcomes = collections.Counter[str]()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for index in indices:
            found = check_one(args.seed, index, folder, tally,
                              args.verbose or args.case is not None, not args.no_audit)
            if found and cli_done[found[0]] < args.cli:
                cli_done[found[0]] += 1
                outcome, problem = check_cli(found[1], folder, found[2])
                cli_outcomes[f"{found[0]}: {outcome.split(' (')[0] or 'problem'}"] += 1
                if problem:
                    cli_problems.append(f"#{index} ({found[0]}): {problem}")
                elif outcome != "PASS":
                    cli_notes.append(f"#{index} ({found[0]}): {outcome}")
        report(tally, len(indices), time.monotonic() - start)
    if args.cli:
        print(f"command line: {sum(cli_done.values())} models through audit, collide and "
              f"validate: {', '.join(f'{k} {n}' for k, n in sorted(cli_outcomes.items()))}; "
              f"{len(cli_problems)} problems")
        for line in cli_notes + cli_problems:
            print("  " + line)
    return 1 if tally.mismatches or tally.crashes or cli_problems else 0


if __name__ == "__main__":
    sys.exit(main())
