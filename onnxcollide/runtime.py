"""Validation in ONNX Runtime: run an input pair and a random baseline, compare, pass or fail.

The only module that imports ``onnxruntime``. Decisions, each with its reason:

- Graph optimizations are off (``ORT_DISABLE_ALL``): the session runs the graph as written, one
  kernel per node, so the extra output is the linear op's own result and adding it changes no
  other output by a single bit. At ``ORT_ENABLE_BASIC`` and above ONNX Runtime folds neighbours
  into a Conv (BatchNormalization, Add, Mul) unless the Conv's output is a graph output, so the
  extra output itself would change the model's numbers (measured: 4e-6 on a Conv+BN model).
- CUDA runs with ``use_tf32=0`` (provider option, checked on the session afterwards),
  ``NVIDIA_TF32_OVERRIDE=0`` for kernels that ignore it, the fixed default cuDNN convolution
  algorithm (no timing-dependent choice) and deterministic compute.
- External data: the main graph's external initializers are memory-mapped
  (``graph.tensors.tensor_to_array``) and handed to the session with
  ``SessionOptions.add_external_initializers``, so the model proto stays small and no weight is
  copied; other external tensors (in subgraphs or attributes, rare) are read into the proto.
  The reference evaluator, a fallback for small models, reads all external data into memory.
- ``precision="float64"`` runs ``graph.rewrite.to_float64``'s copy in ONNX Runtime; when ONNX
  Runtime cannot create that session (its CPU Conv has no double kernel, for one) the copy
  runs in ``onnx.reference.ReferenceEvaluator`` instead, and ``engine`` says so.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.constants import scoped_key
from onnxcollide.graph.linear_ops import node_label, subgraph_label
from onnxcollide.graph.load import LoadedModel, load_model, subgraphs, tensors_in
from onnxcollide.graph.rewrite import to_float64, with_extra_outputs
from onnxcollide.graph.shapes import declared_dims, infer_shapes
from onnxcollide.graph.tensors import is_external, tensor_to_array

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "float64")
INCONCLUSIVE = ("inconclusive: a random perturbation of the same norm also meets the "
                "tolerances, so this pair shows nothing; use a larger perturbation")
HALF_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # 16-bit float types a model may compute in
ENGINE_ORT = "onnxruntime"
ENGINE_REFERENCE = "onnx.reference"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# CUDA EP options: no TF32 (10-bit mantissa products), the fixed default conv algorithm.
CUDA_OPTIONS = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
CUDA_HINT = ("install onnxruntime-gpu (pip install onnxcollide[gpu]) on a machine with an "
             "NVIDIA GPU, or use --device cpu")
TINY = float(np.finfo(np.float64).tiny)
TOP_K = 5

Providers = tuple[tuple[str, dict[str, str]], ...]
Arrays = Mapping[str, np.ndarray]
RUN_CACHE_SIZE = 4  # outputs of the last few distinct feeds are reused (LRU)


# ------------------------------------------------------------------ devices


@dataclass(frozen=True)
class DeviceChoice:
    """Where the sessions run.

    Attributes:
        requested: the ``--device`` value: auto, cpu or cuda.
        used: ``cpu`` or ``cuda``.
        providers: ONNX Runtime providers in priority order, each with its options.
        notice: a line for the user when the choice differs from the request, else None.
    """

    requested: str
    used: str
    providers: Providers
    notice: str | None = None

    @property
    def provider_names(self) -> tuple[str, ...]:
        """The providers' names in priority order."""
        return tuple(name for name, _ in self.providers)


def _cpu_choice(requested: str, notice: str | None = None) -> DeviceChoice:
    return DeviceChoice(requested, "cpu", ((CPU_PROVIDER, {}),), notice)


def resolve_device(device: str) -> DeviceChoice:
    """Decide the device for ``--device auto|cpu|cuda`` from the providers ONNX Runtime offers.

    Raises:
        UsageError: an unknown device, or ``cuda`` without the CUDA execution provider.
    """
    if device not in DEVICES:
        raise UsageError(f"unknown device '{device}'", "--device", "use auto, cpu or cuda")
    if device == "cpu":
        return _cpu_choice(device)
    if CUDA_PROVIDER in ort.get_available_providers():
        providers: Providers = ((CUDA_PROVIDER, dict(CUDA_OPTIONS)), (CPU_PROVIDER, {}))
        return DeviceChoice(device, "cuda", providers)
    if device == "cuda":
        raise UsageError("CUDA was requested but ONNX Runtime has no CUDA execution provider",
                         "--device cuda", CUDA_HINT)
    # No CUDA provider in this build (plain onnxruntime): the CPU is what ``auto`` means here,
    # so no notice on every run; the report's device record says where it ran.
    return _cpu_choice(device)


# ------------------------------------------------------------------ sessions


class _SessionFailed(Exception):
    """ONNX Runtime could not create a session (message: its reason, one line)."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _session_options(external: Mapping[str, Any]) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.use_deterministic_compute = True
    options.log_severity_level = 3  # errors only: no per-initializer warnings on old exports
    if external:
        options.add_external_initializers(list(external), list(external.values()))
    return options


def _create_session(data: bytes, external: Mapping[str, Any], choice: DeviceChoice) -> Any:
    if choice.used == "cuda":
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # for cuBLAS/cuDNN calls that ignore use_tf32
    try:
        return ort.InferenceSession(data, sess_options=_session_options(external),
                                    providers=list(choice.providers))
    except Exception as exc:  # ONNX Runtime raises pybind11-made classes (Fail, NotImplemented)
        raise _SessionFailed(_one_line(exc)) from exc


def _checked_device(session: Any, choice: DeviceChoice, where: str) -> DeviceChoice:
    """Confirm a CUDA session really runs on CUDA with TF32 off; degrade ``auto`` with a notice."""
    if choice.used != "cuda":
        return choice
    if CUDA_PROVIDER not in session.get_providers():
        if choice.requested == "cuda":
            raise UsageError("the CUDA execution provider did not start; ONNX Runtime fell back "
                             "to the CPU", where,
                             "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use "
                             "--device cpu")
        return _cpu_choice(choice.requested, "the CUDA execution provider did not start: "
                                             "running on the CPU")
    tf32 = session.get_provider_options().get(CUDA_PROVIDER, {}).get("use_tf32")
    if tf32 not in (None, "0"):
        raise UsageError(f"ONNX Runtime's CUDA provider reports use_tf32={tf32}, TF32 cannot be "
                         "turned off", where, "upgrade onnxruntime-gpu, or use --device cpu")
    return choice


def _open_session(data: bytes, external: Mapping[str, Any], choice: DeviceChoice,
                  where: str) -> tuple[Any, DeviceChoice]:
    """Create a session; with ``auto``, a CUDA session that cannot be made is retried on the CPU."""
    try:
        session = _create_session(data, external, choice)
    except _SessionFailed as exc:
        if choice.requested != "auto" or choice.used != "cuda":
            raise
        notice = f"the CUDA session failed ({exc}): running on the CPU"
        return _create_session(data, external, _cpu_choice("auto")), _cpu_choice("auto", notice)
    return session, _checked_device(session, choice, where)


def _external_arrays(proto: onnx.ModelProto, base_dir: str) -> dict[str, np.ndarray]:
    """Memory-map the main graph's external initializers; read other external tensors in place.

    Args:
        proto: the model to run (modified: external attribute/subgraph tensors become embedded).
        base_dir: the folder external locations resolve against.

    Returns:
        initializer name -> its values (read-only memmaps of the files' bytes).
    """
    # tensors the session cannot take as external initializers: subgraph ones, attributes
    for tensor in tensors_in(proto.graph, main_initializers=False):
        if is_external(tensor):
            values = np.array(tensor_to_array(tensor, base_dir))
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return {t.name: tensor_to_array(t, base_dir) for t in proto.graph.initializer if is_external(t)}


class BatchNormalization(OpRun):
    """BatchNormalization for the reference evaluator, in inference mode as ONNX Runtime runs it.

    onnx's own opset 9-13 implementation reads a ``momentum`` attribute as a request for
    training mode and normalizes with the batch's statistics; every PyTorch export carries
    ``momentum``, so those models came out wrong (0.08 off on the UltraFace test model).
    In ONNX, training mode means more than one output (opset < 14) or ``training_mode=1``.
    """

    op_domain = ""

    def _run(self, x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
             var: np.ndarray, **attributes: Any) -> tuple[np.ndarray]:
        if len(self.onnx_node.output) > 1 or attributes.get("training_mode"):
            raise NotImplementedError("BatchNormalization in training mode")
        epsilon = attributes.get("epsilon")
        shape = (-1,) + (1,) * (x.ndim - 2)
        y = (scale.reshape(shape) * (x - mean.reshape(shape))
             / np.sqrt(var.reshape(shape) + (1e-5 if epsilon is None else epsilon))
             + bias.reshape(shape))
        return (y.astype(x.dtype),)


def _reference_evaluator(proto: onnx.ModelProto, base_dir: str, where: str,
                         ort_reason: str) -> ReferenceEvaluator:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.load_external_data_for_model(copy, base_dir)
    try:
        return ReferenceEvaluator(copy, new_ops=[BatchNormalization])
    except Exception as exc:  # an op the reference evaluator does not implement, among others
        raise UnsupportedModelError(
            f"cannot run the float64 copy: ONNX Runtime failed ({ort_reason}) and so did the "
            f"ONNX reference evaluator ({_one_line(exc)})", where,
            "validate with --precision float32") from exc


# ------------------------------------------------------------------ the runner


@dataclass(frozen=True)
class InputSpec:
    """A graph input the caller feeds.

    Attributes:
        name: the input's name.
        dtype: its numpy dtype in the model that runs (None for non-tensor inputs).
        shape: its declared dims, None where symbolic or unknown; None if the rank is unknown.
    """

    name: str
    dtype: np.dtype | None
    shape: tuple[int | None, ...] | None

    @property
    def is_float(self) -> bool:
        """Whether the input holds floating-point data."""
        return self.dtype is not None and self.dtype.kind == "f"


def _input_specs(proto: onnx.ModelProto) -> tuple[InputSpec, ...]:
    initializers = {t.name for t in proto.graph.initializer}
    specs = []
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type) if tensor.elem_type else None
        specs.append(InputSpec(value.name, dtype, declared_dims(value.type)))
    return tuple(specs)


def _shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _cast_feed(spec: InputSpec, value: np.ndarray, where: str) -> np.ndarray:
    """Check ``value`` against the input's declared shape and cast it to the input's dtype."""
    array = np.asarray(value)
    if spec.dtype is None:
        return array
    if spec.shape is not None and (
            array.ndim != len(spec.shape)
            or any(d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=True))):
        raise UsageError(f"input '{spec.name}' has shape {list(array.shape)}, the model expects "
                         f"{_shape_text(spec.shape)}", where)
    numeric = spec.is_float and array.dtype.kind in "fiub"
    if array.dtype != spec.dtype and not numeric and not np.can_cast(array.dtype, spec.dtype,
                                                                     "same_kind"):
        raise UsageError(f"input '{spec.name}' is {array.dtype}, the model expects {spec.dtype}",
                         where)
    return np.ascontiguousarray(array.astype(spec.dtype, copy=False))


class ModelRunner:
    """One model, ready to run with some intermediate tensors as extra outputs.

    Attributes:
        path: the model file.
        precision: ``float32`` (the model as stored) or ``float64`` (its float64 copy).
        computed_in: the narrowest float type the run computes in: ``float64`` for the copy,
            else the narrowest float type of the model's activations (``float16`` for an fp16
            model run as stored; see ``compute_type``); the outputs' tolerance follows it, the
            layer's follows ``type_of(layer)``.
        device: where it runs (for the reference evaluator: the CPU, with a notice).
        engine: ``onnxruntime`` or ``onnx.reference``.
        providers: the session's providers as ONNX Runtime reports them (empty for the reference).
        fallback_reason: why ONNX Runtime could not run the float64 copy, else None.
        inputs: the inputs to feed, in graph order.
        model_outputs: the model's own outputs, in graph order.
        extra_outputs: the intermediate tensors added as outputs.
        output_names: every output ``run`` returns: the model's, then the extra ones.
    """

    def __init__(self, model_path: str, extra_outputs: Sequence[str] = (), device: str = "auto",
                 precision: str = "float32") -> None:
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision '{precision}'", "--precision",
                             "use float32 or float64")
        choice = resolve_device(device)
        loaded = load_model(model_path)
        self.path = model_path
        self.precision = precision
        self.model_outputs = tuple(value.name for value in loaded.proto.graph.output)
        try:
            proto = to_float64(loaded.proto) if precision == "float64" else loaded.proto
        except OnnxCollideError as exc:
            raise exc.in_file(model_path) from exc
        self._types = activation_types(loaded) if precision == "float32" else {}
        self.computed_in = compute_type(self._types.values()) if precision == "float32" else \
            precision
        proto = with_extra_outputs(proto, extra_outputs)
        self.extra_outputs = tuple(dict.fromkeys(extra_outputs))
        self.output_names = tuple(value.name for value in proto.graph.output)
        self.inputs = _input_specs(proto)
        self.device = choice
        self.engine = ENGINE_ORT
        self.providers: tuple[str, ...] = ()
        self.fallback_reason: str | None = None
        self._session: Any = None
        self._reference: ReferenceEvaluator | None = None
        self._ort_values: dict[str, Any] = {}
        self._recent: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._start(proto, loaded.base_dir, choice)

    def type_of(self, name: str) -> str:
        """The type a main-graph tensor is computed in (``compute_type`` of its element type;
        ``float64`` for the float64 copy)."""
        if self.precision == "float64":
            return "float64"
        return compute_type([self._types.get(name, "float")])

    def _start(self, proto: onnx.ModelProto, base_dir: str, choice: DeviceChoice) -> None:
        """Open the ONNX Runtime session, or the reference evaluator for a float64 copy."""
        runnable = onnx.ModelProto()
        runnable.CopyFrom(proto)
        arrays = _external_arrays(runnable, base_dir)
        # The session reads these buffers (memmaps of the external files) for its lifetime.
        self._ort_values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()}
        try:
            self._session, self.device = _open_session(
                runnable.SerializeToString(), self._ort_values, choice, self.path)
        except _SessionFailed as exc:
            if self.precision != "float64":
                raise UnsupportedModelError(f"ONNX Runtime cannot load the model ({exc})",
                                            self.path) from exc
            self._ort_values = {}
            self._reference = _reference_evaluator(proto, base_dir, self.path, str(exc))
            self.fallback_reason = str(exc)
            self.device = _cpu_choice(choice.requested,
                                      f"ONNX Runtime cannot run the float64 copy ({exc}): running "
                                      "it in the ONNX reference evaluator on the CPU")
            self.engine = ENGINE_REFERENCE
            return
        self.providers = tuple(self._session.get_providers())

    def prepare(self, feeds: Arrays) -> dict[str, np.ndarray]:
        """Check the feeds against the inputs and cast each to its input's dtype.

        Raises:
            UsageError: an unknown or missing input, a shape or dtype that does not fit.
        """
        names = [spec.name for spec in self.inputs]
        for name in feeds:
            if name not in names:
                raise UsageError(f"'{name}' is not an input of the model", self.path,
                                 f"its inputs are: {', '.join(names) or 'none'}")
        for name in names:
            if name not in feeds:
                raise UsageError(f"no value given for input '{name}'", self.path)
        return {spec.name: _cast_feed(spec, feeds[spec.name], self.path) for spec in self.inputs}

    def run(self, feeds: Arrays) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name -> array, cast to the inputs' dtypes).

        Returns:
            output name -> array for every name in ``output_names``.
        """
        prepared = self.prepare(feeds)
        key = _feeds_key(prepared)
        if key in self._recent:  # the same inputs again: the original of every pair
            self._recent.move_to_end(key)
            return dict(self._recent[key])
        outputs = self._execute(prepared)
        self._recent[key] = outputs
        while len(self._recent) > RUN_CACHE_SIZE:
            self._recent.popitem(last=False)
        return dict(outputs)

    def _execute(self, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.output_names)
        if self._reference is not None:
            try:
                values = self._reference.run(names, prepared)
            except Exception as exc:  # the reference evaluator raises whatever numpy raises
                raise UnsupportedModelError(f"the ONNX reference evaluator failed "
                                            f"({_one_line(exc)})", self.path) from exc
        else:
            try:
                values = self._session.run(names, prepared)
            except Exception as exc:  # pybind11-made ONNX Runtime errors
                raise UsageError(f"ONNX Runtime failed on these inputs ({_one_line(exc)})",
                                 self.path, "check the input shapes and values") from exc
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def _feeds_key(feeds: Mapping[str, np.ndarray]) -> str:
    """A digest of the exact bytes, dtypes and shapes of a feed dict (for the run cache)."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ comparisons


@dataclass(frozen=True)
class OutputComparison:
    """How far one output moved between two runs.

    Attributes:
        name: the output.
        max_abs: max |a - b| (inf when the shapes differ).
        max_rel: max_abs / max(max |a|, tiny).
        argmax_agree: fraction of rows with equal argmax (classifier-like outputs only).
        top5_agree: fraction of rows with equal top-k sets, k = min(5, C) (same outputs).
    """

    name: str
    max_abs: float
    max_rel: float
    argmax_agree: float | None
    top5_agree: float | None


def _rows(values: np.ndarray) -> np.ndarray | None:
    """View a classifier-like output as [N, C] rows, else None.

    Classifier-like: float, and 2-D [N, C] with C >= 2 once every size-1 axis but the first is
    dropped ([N, C, 1, 1] and [1, C] count; [N, 1], [C] and [N, C, H, W] do not).
    """
    if values.dtype.kind != "f" or values.ndim < 2:
        return None
    kept = [values.shape[0]] + [n for n in values.shape[1:] if n != 1]
    if len(kept) != 2 or kept[1] < 2 or kept[0] < 1:
        return None
    return values.reshape(kept[0], kept[1])


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    rows_a, rows_b = _rows(a), _rows(b)
    if rows_a is None or rows_b is None or rows_a.shape != rows_b.shape:
        return None, None
    argmax = float(np.mean(rows_a.argmax(axis=1) == rows_b.argmax(axis=1)))
    k = min(TOP_K, rows_a.shape[1])
    top_a = np.sort(np.argsort(-rows_a, axis=1, kind="stable")[:, :k], axis=1)
    top_b = np.sort(np.argsort(-rows_b, axis=1, kind="stable")[:, :k], axis=1)
    return argmax, float(np.mean(np.all(top_a == top_b, axis=1)))


def _compare(name: str, a: np.ndarray, b: np.ndarray) -> OutputComparison:
    if a.shape != b.shape:
        return OutputComparison(name, math.inf, math.inf, None, None)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    max_abs = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
    scale = float(np.max(np.abs(a64))) if a.size else 0.0
    argmax, top5 = _agreement(a, b)
    return OutputComparison(name, max_abs, max_abs / max(scale, TINY), argmax, top5)


def compare_outputs(a: Arrays, b: Arrays,
                    names: Iterable[str] | None = None) -> tuple[OutputComparison, ...]:
    """Compare two runs output by output (numeric outputs only; others are skipped).

    Args:
        a: the reference run, name -> array.
        b: the other run, name -> array of the same shape.
        names: the outputs to compare, in report order (default: all of ``a``).

    Raises:
        UsageError: a name missing from either run.
    """
    result = []
    for name in (list(a) if names is None else names):
        if name not in a or name not in b:
            raise UsageError(f"output '{name}' is missing from one of the runs")
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind in "fiub" and y.dtype.kind in "fiub":
            result.append(_compare(name, x, y))
    return tuple(result)


# ------------------------------------------------------------------ validation


def activation_types(loaded: LoadedModel) -> dict[str, str]:
    """Element type of every activation shape inference types: graph inputs and the outputs of
    nodes other than Constant, in the main graph (bare names) and in subgraphs (``scope::name``
    keys). Weights are left out: fp16 weights Cast to float32 compute in float32."""
    infos = infer_shapes(loaded, {})
    return {key: infos[key].dtype for key in _activation_keys(loaded.proto.graph, "main")
            if key in infos}


def _activation_keys(graph: onnx.GraphProto, label: str) -> Iterator[str]:
    stored = {t.name for t in graph.initializer}
    yield from (scoped_key(label, v.name) for v in graph.input if v.name not in stored)
    for node in graph.node:
        if node.op_type != "Constant":
            yield from (scoped_key(label, out) for out in node.output)
        for attr_name, sub in subgraphs(node):
            yield from _activation_keys(sub, subgraph_label(node_label(node, label), attr_name))


def compute_type(types: Iterable[str]) -> str:
    """The narrowest of these element types a run computes in: ``bfloat16``, ``float16``, or
    else ``float32`` (also for float64 tensors: validating them against float32's tolerances
    is the looser, safe side)."""
    present = set(types)
    return next((name for name in ("bfloat16", "float16") if name in present), "float32")


@dataclass(frozen=True)
class Tolerances:
    """What a validated collision must meet.

    Attributes:
        layer_rtol: the largest relative residual ||L(B) - L(A)|| / ||L(A)|| at the layer.
        output_rtol: the largest max_rel of any model output.
    """

    layer_rtol: float = 1e-5
    output_rtol: float = 1e-4

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """Defaults by the type the run computes in: float32 1e-5 / 1e-4 (~100 eps32 /
        ~1000 eps32); float64 1e-12 / 1e-10; float16 and bfloat16 10 eps / 100 eps (their
        inputs alone are rounded to eps / 2, so the float32 multiples would admit anything).

        Raises:
            UsageError: an unknown precision.
        """
        if precision == "float32":
            return cls()
        if precision == "float64":
            return cls(layer_rtol=1e-12, output_rtol=1e-10)
        if precision in HALF_EPS:
            return cls(layer_rtol=10 * HALF_EPS[precision], output_rtol=100 * HALF_EPS[precision])
        raise UsageError(f"unknown precision '{precision}'", "--precision",
                         "use float32 or float64")

    @classmethod
    def for_run(cls, runner: ModelRunner, layer: str | None) -> Tolerances:
        """The layer residual's tolerance by the type the layer computes in, the outputs' by
        the narrowest type of the run: a float32 first layer keeps 1e-5 in a model that
        computes in float16 further on."""
        outputs = cls.for_precision(runner.computed_in)
        if layer is None:
            return outputs
        return cls(layer_rtol=cls.for_precision(runner.type_of(layer)).layer_rtol,
                   output_rtol=outputs.output_rtol)


@dataclass(frozen=True)
class PerturbationFigures:
    """The figures of one perturbation of input A.

    Attributes:
        norm: its Frobenius norm over all perturbed inputs, as fed (after dtype casting).
        layer_residual: ||L(A + d) - L(A)||_2 / max(||L(A)||_2, tiny), None without a layer.
        outputs: every model output's comparison with A's run.
        passed: whether these figures meet the tolerances.
    """

    norm: float
    layer_residual: float | None
    outputs: tuple[OutputComparison, ...]
    passed: bool


@dataclass(frozen=True)
class Ratio:
    """What the collision buys over the random baseline for one figure.

    Attributes:
        figure: ``layer_residual`` or ``max_abs``.
        name: the layer or output it concerns.
        collision: the collision's figure.
        baseline: the random baseline's figure.
        ratio: baseline / collision; None when the collision's figure is exactly 0 (see
            ``exact_zero``) or either figure is not finite.
        exact_zero: the collision's figure is exactly 0.
    """

    figure: str
    name: str
    collision: float
    baseline: float
    ratio: float | None
    exact_zero: bool


@dataclass(frozen=True)
class PairValidation:
    """Inputs A and B (B = A + collision) run side by side, with a random baseline.

    Attributes:
        device: where it ran: ``cpu`` or ``cuda``.
        device_requested: the ``--device`` value.
        providers: ONNX Runtime's providers for the session (empty for the reference evaluator).
        precision: ``float32`` or ``float64``.
        engine: ``onnxruntime`` or ``onnx.reference``.
        seed: the seed of the random baseline.
        tolerances: what ``passed`` was decided on.
        layer: the linear op's output the residual is measured at, or None.
        perturbed_inputs: the inputs where A and B differ.
        perturbation_norm: ||B - A||_F over the perturbed inputs, as fed.
        layer_residual: the relative residual at the layer for B, None without a layer.
        outputs: every model output's comparison of B's run with A's.
        baseline: the same figures for A + a random perturbation of the same norm.
        ratios: baseline / collision for the layer residual and each output's max_abs.
        passed: whether B's figures meet the tolerances and the random baseline's do not
            (where both meet them, the perturbation is too small for the pair to show
            anything: a notice says so).
        notices: lines for the user (device fallback, reference evaluator, inconclusive).
        computed_in: the narrowest float type of the run (``ModelRunner.computed_in``).
        meets: whether B's figures meet the tolerances.
    """

    device: str
    device_requested: str
    providers: tuple[str, ...]
    precision: str
    engine: str
    seed: int
    tolerances: Tolerances
    layer: str | None
    perturbed_inputs: tuple[str, ...]
    perturbation_norm: float
    layer_residual: float | None
    outputs: tuple[OutputComparison, ...]
    baseline: PerturbationFigures
    ratios: tuple[Ratio, ...]
    passed: bool
    notices: tuple[str, ...]
    computed_in: str = "float32"
    meets: bool = True


def _perturbed_inputs(runner: ModelRunner, a: Arrays, b: Arrays) -> tuple[str, ...]:
    names = []
    for spec in runner.inputs:
        x, y = a[spec.name], b[spec.name]
        if x.shape != y.shape:
            raise UsageError(f"input '{spec.name}' has shape {list(x.shape)} in A and "
                             f"{list(y.shape)} in B", runner.path)
        if np.array_equal(x, y):
            continue
        if not spec.is_float:
            raise UsageError(f"input '{spec.name}' differs between A and B but is not a float "
                             "tensor", runner.path, "perturb float inputs only")
        names.append(spec.name)
    if not names:
        raise UsageError("inputs A and B are identical after casting to the model's dtypes",
                         runner.path, "the perturbation is zero or below the input precision")
    return tuple(names)


def _norm(a: Arrays, b: Arrays, names: Sequence[str]) -> float:
    squares = sum(float(np.sum((b[n].astype(np.float64) - a[n].astype(np.float64)) ** 2))
                  for n in names)
    return math.sqrt(squares)


def _random_feeds(a: Arrays, names: Sequence[str], norm: float,
                  seed: int) -> dict[str, np.ndarray]:
    """A + Gaussian noise on ``names`` (drawn in that order), scaled to Frobenius norm ``norm``."""
    rng = np.random.default_rng(seed)
    noise = {n: rng.standard_normal(a[n].shape) for n in names}
    scale = norm / max(math.sqrt(sum(float(np.sum(g * g)) for g in noise.values())), TINY)
    feeds = dict(a)
    for n in names:
        feeds[n] = (a[n].astype(np.float64) + scale * noise[n]).astype(a[n].dtype)
    return feeds


def _relative_residual(reference: np.ndarray, other: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    scale = max(float(np.linalg.norm(ref)), TINY)
    return float(np.linalg.norm(other.astype(np.float64) - ref)) / scale


def _meets(layer_residual: float | None, outputs: Sequence[OutputComparison],
           tolerances: Tolerances) -> bool:
    if layer_residual is not None and not layer_residual <= tolerances.layer_rtol:
        return False
    return all(out.max_rel <= tolerances.output_rtol
               and (out.argmax_agree is None or out.argmax_agree == 1.0) for out in outputs)


def _figures(runner: ModelRunner, base: Arrays, other: Arrays, layer: str | None, norm: float,
             tolerances: Tolerances) -> PerturbationFigures:
    residual = None if layer is None else _relative_residual(base[layer], other[layer])
    outputs = compare_outputs(base, other, runner.model_outputs)
    return PerturbationFigures(norm, residual, outputs, _meets(residual, outputs, tolerances))


def _ratio(figure: str, name: str, collision: float, baseline: float) -> Ratio:
    finite = math.isfinite(collision) and math.isfinite(baseline)
    value = baseline / collision if finite and collision != 0.0 else None
    return Ratio(figure, name, collision, baseline, value, collision == 0.0)


def _ratios(layer: str | None, collision: PerturbationFigures,
            baseline: PerturbationFigures) -> tuple[Ratio, ...]:
    ratios = []
    if layer is not None and collision.layer_residual is not None:
        assert baseline.layer_residual is not None
        ratios.append(_ratio("layer_residual", layer, collision.layer_residual,
                             baseline.layer_residual))
    for out, rnd in zip(collision.outputs, baseline.outputs, strict=True):
        ratios.append(_ratio("max_abs", out.name, out.max_abs, rnd.max_abs))
    return tuple(ratios)


def validate_pair(runner: ModelRunner, feeds_a: Arrays, feeds_b: Arrays,
                  layer_output: str | None = None, seed: int = 0,
                  tolerances: Tolerances | None = None) -> PairValidation:
    """Run A, B and a random baseline of B - A's norm; measure and decide.

    Args:
        runner: the model, with ``layer_output`` among its extra outputs.
        feeds_a: input name -> array for every input (the original).
        feeds_b: the same for the colliding input; the inputs that differ are the perturbed ones.
        layer_output: the first linear op's output for the layer residual, or None.
        seed: seeds ``np.random.default_rng`` for the baseline's Gaussian noise.
        tolerances: what B must meet (default: ``Tolerances.for_run(runner, layer_output)``).

    Raises:
        UsageError: A and B do not differ, differ in an integer input or in shape, or the layer
            is not an output of the runner.
    """
    tolerances = tolerances or Tolerances.for_run(runner, layer_output)
    if layer_output is not None and layer_output not in runner.output_names:
        raise UsageError(f"'{layer_output}' is not an output of the runner", runner.path,
                         "create the ModelRunner with extra_outputs=[the layer's output]")
    a, b = runner.prepare(feeds_a), runner.prepare(feeds_b)
    perturbed = _perturbed_inputs(runner, a, b)
    norm = _norm(a, b, perturbed)
    r = _random_feeds(a, perturbed, norm, seed)
    out_a = runner.run(a)
    collision = _figures(runner, out_a, runner.run(b), layer_output, norm, tolerances)
    baseline = _figures(runner, out_a, runner.run(r), layer_output, _norm(a, r, perturbed),
                        tolerances)
    notices = tuple(n for n in (runner.device.notice,) if n)
    if collision.passed and baseline.passed:
        notices += (INCONCLUSIVE,)
    return PairValidation(
        runner.device.used, runner.device.requested, runner.providers, runner.precision,
        runner.engine, seed, tolerances, layer_output, perturbed, norm,
        collision.layer_residual, collision.outputs, baseline,
        _ratios(layer_output, collision, baseline), collision.passed and not baseline.passed,
        notices, runner.computed_in, collision.passed)


# ------------------------------------------------------------------ JSON


def _num(value: float | None) -> float | None:
    """A JSON number: None for None, inf and nan."""
    return value if value is not None and math.isfinite(value) else None


def _output_dict(out: OutputComparison) -> dict[str, Any]:
    return {"name": out.name, "max_abs": _num(out.max_abs), "max_rel": _num(out.max_rel),
            "argmax_agree": _num(out.argmax_agree), "top5_agree": _num(out.top5_agree)}


def validation_dict(v: PairValidation) -> dict[str, Any]:
    """A JSON-ready dict of ``v`` (no inf or nan: those become null), keys in a fixed order."""
    return {
        "passed": v.passed,
        "conclusive": not v.baseline.passed,
        "device": {"requested": v.device_requested, "used": v.device,
                   "providers": list(v.providers)},
        "precision": v.precision,
        "computed_in": v.computed_in,
        "engine": v.engine,
        "seed": v.seed,
        "tolerances": {"layer_rtol": v.tolerances.layer_rtol,
                       "output_rtol": v.tolerances.output_rtol},
        "layer": v.layer,
        "perturbed_inputs": list(v.perturbed_inputs),
        "perturbation_norm": _num(v.perturbation_norm),
        "collision": {"layer_residual": _num(v.layer_residual),
                      "outputs": [_output_dict(o) for o in v.outputs], "passed": v.meets},
        "baseline": {"norm": _num(v.baseline.norm),
                     "layer_residual": _num(v.baseline.layer_residual),
                     "outputs": [_output_dict(o) for o in v.baseline.outputs],
                     "passed": v.baseline.passed},
        "ratios": [{"figure": r.figure, "name": r.name, "collision": _num(r.collision),
                    "baseline": _num(r.baseline), "ratio": _num(r.ratio),
                    "exact_zero": r.exact_zero} for r in v.ratios],
        "notices": list(v.notices),
    }
