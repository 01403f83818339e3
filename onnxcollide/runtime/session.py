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
import os
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.constants import scoped_key
from onnxcollide.graph.linear_ops import node_label, subgraph_label
from onnxcollide.graph.load import LoadedModel, load_model, tensors_in
from onnxcollide.graph.rewrite import to_float64, with_extra_outputs
from onnxcollide.graph.shapes import declared_dims, infer_shapes
from onnxcollide.graph.tensors import is_external, tensor_to_array
from onnxcollide.graph.walk import subgraphs

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("float32", "float64")
HALF_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # 16-bit float types a model may compute in
ENGINE_ORT = "onnxruntime"
ENGINE_REFERENCE = "onnx.reference"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# CUDA EP options: no TF32 (10-bit mantissa products), the fixed default conv algorithm.
CUDA_OPTIONS = {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
RUNTIME_HINT = ("install it with the project: pip install 'onnxcollide[cpu]', or "
                "'onnxcollide[gpu]' on a machine with an NVIDIA GPU (not both)")
CUDA_HINT = ("on a machine with an NVIDIA GPU, install onnxruntime-gpu in place of onnxruntime "
             "(pip uninstall onnxruntime, then pip install 'onnxcollide[gpu]'), or use "
             "--device cpu")

Providers = tuple[tuple[str, dict[str, str]], ...]
Arrays = Mapping[str, np.ndarray]
LOG_FATAL_ONLY = 4  # SessionOptions.log_severity_level: 0 verbose ... 3 error, 4 fatal
RUN_CACHE_SIZE = 4  # outputs of the last few distinct feeds are reused (LRU)


class RunFailedError(UsageError):
    """ONNX Runtime loaded the model but failed to run it on the given inputs: a usage error
    where the user chose the inputs or their shapes, a model error where they were random
    draws of its declared shapes (``model_error``)."""

    def model_error(self) -> UnsupportedModelError:
        """The same failure blamed on the model (exit 3)."""
        return UnsupportedModelError(self.what, self.where, "the inputs were random draws of "
                                     "the model's declared shapes, so a node of the model is "
                                     "one ONNX Runtime rejects: re-export it")


# ------------------------------------------------------------------ devices


def onnxruntime_module() -> Any:
    """The ``onnxruntime`` module, imported on first use (``audit`` never needs it).

    Raises:
        UsageError: ONNX Runtime is not installed (neither extra of the project).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise UsageError("ONNX Runtime is not installed, and this command runs the model in "
                         "it (collide, validate, audit --validate, compare --run or "
                         "--transfer, check's w1-validated rule)", hint=RUNTIME_HINT) from exc
    return onnxruntime


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
    if CUDA_PROVIDER in onnxruntime_module().get_available_providers():
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


ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ([A-Z_]+) : ")


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, ONNX Runtime's status prefix
    (``[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : ``) turned into words at its end."""
    text = " ".join(str(exc).split())
    status = ORT_PREFIX.match(text)
    if status:
        reason = text[status.end():]
        text = f"{reason[:1].lower()}{reason[1:]} ({status.group(1).lower().replace('_', ' ')})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _session_options(external: Mapping[str, Any]) -> Any:
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.use_deterministic_compute = True
    # Fatal only: ONNX Runtime's errors come back as exceptions, which become one error line;
    # its own log would print a second, raw copy (and per-initializer warnings on old exports).
    options.log_severity_level = LOG_FATAL_ONLY
    if external:
        options.add_external_initializers(list(external), list(external.values()))
    return options


def _create_session(data: bytes, external: Mapping[str, Any], choice: DeviceChoice) -> Any:
    if choice.used == "cuda":
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"  # for cuBLAS/cuDNN calls that ignore use_tf32
    try:
        return onnxruntime_module().InferenceSession(data, sess_options=_session_options(external),
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
    return {t.name: _aligned(tensor_to_array(t, base_dir))
            for t in proto.graph.initializer if is_external(t)}


def _aligned(array: np.ndarray) -> np.ndarray:
    """The array, or an aligned copy where its bytes are not aligned to its item size (a
    weight viewed inside a single .onnx file, ``graph.skeleton``, sits wherever protobuf
    put it; ONNX Runtime's kernels may assume aligned buffers)."""
    return array if array.flags.aligned else np.array(array)


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
        to_value = onnxruntime_module().OrtValue.ortvalue_from_numpy
        self._ort_values = {n: to_value(a) for n, a in arrays.items()}
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
                raise RunFailedError(f"ONNX Runtime failed on these inputs ({_one_line(exc)})",
                                     self.path, "check the input shapes and values; if they "
                                     "are the model's declared ones, a node of the model is "
                                     "one ONNX Runtime rejects (re-export it)") from exc
        return {name: np.asarray(value) for name, value in zip(names, values, strict=True)}


def _feeds_key(feeds: Mapping[str, np.ndarray]) -> str:
    """A digest of the exact bytes, dtypes and shapes of a feed dict (for the run cache)."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        value = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------ element types


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
