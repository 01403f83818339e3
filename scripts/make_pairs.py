"""Export small networks several ways, as fixtures for ``onnxcollide compare``.

Three seeded networks (no training: seeded initialisation, BatchNorm statistics drawn from
the seed), each exported as the copies users meet in practice:

* ``mlp``  - Flatten -> Linear(256, 32) -> ReLU -> Linear(32, 16) -> ReLU -> Linear(16, 10)
* ``cnn``  - ResNet-like: patchify stem Conv 4x4/4 + BN, a basic block (two 3x3 convs + BN),
             a downsampling block with a 1x1/2 shortcut conv + BN, mean pool, Linear
* ``vit``  - ViT-like: Conv 8x8/8 patch embedding, one pre-norm block with separate q, k, v
             projections (2 heads), output projection, MLP (GELU), mean pool, Linear

and for each network (``<net>_<variant>.onnx`` in ``models/pairs/``):

* ``torchscript`` - the reference: the TorchScript exporter (``dynamo=False``), BatchNorm kept
  as BatchNormalization nodes (``training=TrainingMode.PRESERVE`` on the eval model);
* ``dynamo``      - the torch.export-based exporter (folds BatchNorm into the convs);
* ``ortbasic``    - the reference after ONNX Runtime's basic graph optimization (saved with
  ``optimized_model_filepath``: BatchNorm folded, constants folded);
* ``qdq``, ``qop``, ``dynamic`` - ``onnxruntime.quantization``: static QDQ, static QOperator
  (QLinearConv/QGemm), dynamic (ConvInteger/MatMulInteger), after ``quant_pre_process``;
* ``fp16``        - ``onnxruntime.transformers.float16`` (float16 weights and inputs);
* ``nhwc``        - a channels-last input ([N, H, W, C]) permuted in front (dynamo exporter);
* ``cnn_keras``   - the same CNN weights in Keras (channels-last), exported by tf2onnx, made
  only where ``--keras-python`` names a Python with tensorflow and tf2onnx.

``models/pairs/manifest.json`` records, for every file, which torch module each linear node
computes: found by comparing the node's (dequantized) weight with the module's weight (and
its BatchNorm-folded form) by cosine similarity, never by names or positions, so the tests
can check ``compare``'s alignment against it.

The output is byte-for-byte reproducible for a given seed and the same torch, onnx,
onnxscript and onnxruntime versions (``--check`` rebuilds into a temporary folder and
compares). Usage::

    /work/torchenv/bin/python scripts/make_pairs.py [--out models/pairs] [--seed 0]
        [--keras-python /path/to/tf/python]
    /work/torchenv/bin/python scripts/make_pairs.py --check [--keras-python ...]
"""

from __future__ import annotations

import os

os.environ["ATEN_CPU_CAPABILITY"] = "default"
os.environ["MKL_CBWR"] = "COMPATIBLE"

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import Message
from onnx import helper, numpy_helper
from torch import nn

REPO = Path(__file__).resolve().parent.parent
OPSET = 17
PRODUCER = "onnxcollide-make-pairs"
NUM_CLASSES = 10
CALIBRATION = 8  # seeded inputs for static quantization
LINEAR = {"Conv", "Gemm", "MatMul", "QLinearConv", "QGemm", "ConvInteger", "MatMulInteger",
          "QLinearMatMul"}
WEIGHT_INPUT = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}


# --------------------------------------------------------------------------- networks


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(256, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.head(torch.relu(self.fc2(x)))


class Block(nn.Module):
    """A ResNet basic block; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc: nn.Module | None = None
        self.sb: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.sc = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.sb = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        short = x if self.sc is None or self.sb is None else self.sb(self.sc(x))
        return torch.relu(y + short)


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, 4, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.l1 = Block(8, 8, 1)
        self.l2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        return self.fc(self.l2(self.l1(x)).mean((2, 3)))


class Vit(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.n1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.n2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, s, d = t.shape
        return t.reshape(n, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        h = self.n1(t)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
        mixed = (att @ v).transpose(1, 2).reshape(t.shape)
        t = t + self.proj(mixed)
        t = t + self.down(torch.nn.functional.gelu(self.up(self.n2(t))))
        return self.head(t.mean(1))


class ChannelsLast(nn.Module):
    """The same network taking an [N, H, W, C] input (a Transpose in front)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


NETWORKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (Mlp, (1, 16, 16)),
    "cnn": (Cnn, (3, 32, 32)),
    "vit": (Vit, (3, 32, 32)),
}


def build(name: str, seed: int) -> nn.Module:
    """The network, seeded; BatchNorm statistics and affine parameters drawn from the seed."""
    torch.manual_seed(seed * 1000 + sorted(NETWORKS).index(name))
    model = NETWORKS[name][0]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


# --------------------------------------------------------------------------- export


def _strip_volatile(msg: Message) -> None:
    """Recursively clear doc strings and metadata (stack traces hold file paths)."""
    for field, value in msg.ListFields():
        if field.name in ("doc_string", "metadata_props"):
            msg.ClearField(field.name)
        elif field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else (value,):
                _strip_volatile(item)


def _finish(proto: onnx.ModelProto, name: str, seed: int, producer_version: str
            ) -> onnx.ModelProto:
    _strip_volatile(proto)
    proto.producer_name = PRODUCER
    proto.producer_version = producer_version
    proto.doc_string = f"onnxcollide compare fixture {name!r} (seed {seed}); see README.md"
    onnx.checker.check_model(proto)
    return proto


def export_torchscript(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """TorchScript exporter, BatchNorm kept (PRESERVE on an eval model), dynamic batch."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "m.onnx")
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
        return onnx.load(path)


def export_dynamo(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """The torch.export-based exporter with its default graph optimization, dynamic batch."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("N")},),
                                    verbose=False)
    proto = program.model_proto
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    return proto


def ort_basic(source: Path, target: Path) -> None:
    """ONNX Runtime's basic graph optimization, saved with optimized_model_filepath."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def calibration(shape: tuple[int, ...], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    return [rng.random((1, *shape), dtype=np.float32) for _ in range(CALIBRATION)]


def quantize(source: Path, out: dict[str, Path], shape: tuple[int, ...], seed: int) -> None:
    """Static QDQ and QOperator, and dynamic quantization, of ``source``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x} for x in calibration(shape, seed)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(source), str(pre))
        quantize_static(str(pre), str(out["qdq"]), Reader(), quant_format=QuantFormat.QDQ)
        # QOperator and dynamic run uint8 activations against int8 weights, whose x86
        # kernels without VNNI saturate 16-bit sums: 7-bit weights (reduce_range) keep the
        # results independent of the CPU.
        quantize_static(str(pre), str(out["qop"]), Reader(),
                        quant_format=QuantFormat.QOperator, reduce_range=True)
        quantize_dynamic(str(pre), str(out["dynamic"]), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["Conv", "MatMul", "Gemm"], reduce_range=True)


def fp16(source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=False),
              str(target))


# --------------------------------------------------------------------------- Keras

KERAS_SCRIPT = r'''
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
import numpy as np, tensorflow as tf, tf2onnx, onnx
w = np.load(sys.argv[1])
L = tf.keras.layers
def conv(x, name, stride, pad):
    k = w[name + ".weight"].transpose(2, 3, 1, 0)
    if pad:
        x = L.ZeroPadding2D(pad)(x)
    layer = L.Conv2D(k.shape[3], k.shape[:2], strides=stride, padding="valid", use_bias=False)
    y = layer(x)
    layer.set_weights([k])
    return y
def bn(x, name):
    layer = L.BatchNormalization(epsilon=1e-5)
    y = layer(x)
    layer.set_weights([w[name + s] for s in (".weight", ".bias", ".running_mean", ".running_var")])
    return y
def block(x, p, stride, short):
    y = L.ReLU()(bn(conv(x, p + ".c1", stride, 1), p + ".b1"))
    y = bn(conv(y, p + ".c2", 1, 1), p + ".b2")
    s = bn(conv(x, p + ".sc", stride, 0), p + ".sb") if short else x
    return L.ReLU()(L.Add()([y, s]))
inp = tf.keras.Input((32, 32, 3), name="input")
x = L.ReLU()(bn(conv(inp, "stem", 4, 0), "bn"))
x = block(block(x, "l1", 1, False), "l2", 2, True)
x = L.GlobalAveragePooling2D()(x)
dense = L.Dense(10)
out = dense(x)
dense.set_weights([w["fc.weight"].T, w["fc.bias"]])
model = tf.keras.Model(inp, out)
spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input"),)
proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(sys.argv[3]))
x = np.load(sys.argv[4])
np.save(sys.argv[5], model(x.transpose(0, 2, 3, 1)).numpy())
onnx.save(proto, sys.argv[2])
print(f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}")
'''


def keras_export(model: nn.Module, python: str, target: Path, probe: np.ndarray
                 ) -> tuple[onnx.ModelProto, np.ndarray, str] | None:
    """The CNN rebuilt in Keras with the same weights, exported by tf2onnx; None (with a
    message) where the interpreter lacks tensorflow or tf2onnx."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        np.savez(Path(tmp) / "w.npz", **weights)
        np.save(Path(tmp) / "x.npy", probe)
        done = subprocess.run([python, "-c", KERAS_SCRIPT, str(Path(tmp) / "w.npz"),
                               str(Path(tmp) / "k.onnx"), str(OPSET), str(Path(tmp) / "x.npy"),
                               str(Path(tmp) / "y.npy")],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"  cnn_keras: not made ({python} failed: "
                  f"{done.stderr.strip().splitlines()[-1:]})")
            return None
        return (onnx.load(str(Path(tmp) / "k.onnx")), np.load(Path(tmp) / "y.npy"),
                done.stdout.strip())


# --------------------------------------------------------------------------- manifest


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """A constant tensor: an initializer, or one behind Identity/Cast/Transpose/
    DequantizeLinear/Reshape/Constant nodes."""
    inits = {t.name: t for t in graph.initializer}
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = next((n for n in graph.node if name in n.output), None)
    if node is None:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Constant":
        return numpy_helper.to_array(attrs["value"])
    args = [_constant(graph, i) if i else None for i in node.input]
    if args[0] is None:
        return None
    if node.op_type in ("Identity", "Cast"):
        return args[0].astype(np.float64)
    if node.op_type == "Transpose":
        return args[0].transpose(attrs.get("perm"))
    if node.op_type == "Reshape" and args[1] is not None:
        return args[0].reshape(args[1])
    if node.op_type == "DequantizeLinear":
        scale, zero = args[1], args[2] if len(args) > 2 and args[2] is not None else 0
        axis = attrs.get("axis", 1) % max(args[0].ndim, 1)
        shape = [1] * args[0].ndim
        if np.ndim(scale) and args[0].ndim:
            shape[axis if args[0].shape[axis] == np.size(scale) else 0] = -1
        return (args[0].astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape)
    return None


def _node_weight(graph: onnx.GraphProto, node: onnx.NodeProto) -> np.ndarray | None:
    index = WEIGHT_INPUT.get(node.op_type, 1)
    value = _constant(graph, node.input[index]) if len(node.input) > index else None
    if value is None and node.op_type in ("MatMul", "Gemm", "MatMulInteger"):
        value = _constant(graph, node.input[0])
    if value is None:
        return None
    value = value.astype(np.float64)
    if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        value = value.T
    return value


def _module_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Each linear module's weight and its BatchNorm-folded form, keyed by module name."""
    found = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d | nn.Linear):
            found[name] = module.weight.detach().double().numpy()
    return found


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    a, b = a.ravel(), b.ravel()
    return float(abs(a @ b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def _per_output_cosine(weight: np.ndarray, target: np.ndarray) -> float:
    """The smallest |cosine| over output channels (rows of the torch weight), so that a
    per-output scaling (BatchNorm folding) does not matter."""
    w = weight.reshape(weight.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    return min(_cosine(w[k], t[k]) for k in range(w.shape[0]))


def manifest_of(proto: onnx.ModelProto, model: nn.Module, file: str) -> dict[str, str]:
    """node label -> torch module, by the weights' values alone."""
    modules = _module_weights(model)
    found: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type not in LINEAR:
            continue
        weight = _node_weight(proto.graph, node)
        if weight is None:
            continue
        scores = {}
        for name, target in modules.items():
            options = [weight] + ([weight.T] if weight.ndim == 2 else [])
            scores[name] = max(_per_output_cosine(w, target) for w in options
                               if w.shape == target.shape) if any(
                w.shape == target.shape for w in options) else 0.0
        ranked = sorted(scores.items(), key=lambda kv: -kv[1])
        best, second = ranked[0], ranked[1] if len(ranked) > 1 else ("", 0.0)
        if best[1] < 0.98 or second[1] > 0.9:
            sys.exit(f"{file}: node {node.name or node.op_type} matches no module clearly "
                     f"({ranked[:2]})")
        label = node.name or f"{node.op_type}:{node.output[0]}"
        found[label] = best[0]
    if sorted(found.values()) != sorted(modules):
        sys.exit(f"{file}: modules {sorted(modules)} but found {sorted(found.values())}")
    return found


# --------------------------------------------------------------------------- main


def pin_torch() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def _check_outputs(path: Path, probe: np.ndarray, expected: np.ndarray, tolerance: float
                   ) -> float:
    """Run ``path`` in ONNX Runtime on ``probe`` and compare with torch's logits."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = probe.transpose(0, 2, 3, 1) if "nhwc" in path.name or "keras" in path.name else probe
    x = x.astype(np.float16 if spec.type == "tensor(float16)" else np.float32)
    got = session.run(None, {spec.name: x})[0].astype(np.float64)
    diff = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
    if diff > tolerance:
        sys.exit(f"{path.name}: ONNX Runtime differs from torch by {diff:.3g} (> {tolerance})")
    return diff


TOLERANCE = {"torchscript": 1e-5, "dynamo": 1e-5, "ortbasic": 1e-5, "nhwc": 1e-5,
             "keras": 1e-4, "fp16": 1e-2, "qdq": 0.2, "qop": 0.2, "dynamic": 0.2}


def generate(out: Path, seed: int, keras_python: str | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, object] = {"seed": seed, "torch": torch.__version__,
                                   "onnxruntime": ort.__version__, "networks": {}}
    networks: dict[str, object] = {}
    for name, (_, shape) in NETWORKS.items():
        model = build(name, seed)
        example = torch.zeros(2, *shape)
        probe = calibration(shape, seed + 1)[0].repeat(2, axis=0) * np.array(
            [1.0, 0.5], dtype=np.float32).reshape(2, *([1] * len(shape)))
        with torch.no_grad():
            expected = model(torch.from_numpy(probe)).double().numpy()
        paths = {v: out / f"{name}_{v}.onnx" for v in
                 ("torchscript", "dynamo", "ortbasic", "qdq", "qop", "dynamic", "fp16",
                  "nhwc")}
        onnx.save(_finish(export_torchscript(model, example), name, seed, torch.__version__),
                  paths["torchscript"])
        onnx.save(_finish(export_dynamo(model, example), name, seed, torch.__version__),
                  paths["dynamo"])
        nhwc = ChannelsLast(model).eval()
        onnx.save(_finish(export_dynamo(nhwc, example.permute(0, 2, 3, 1).contiguous()), name,
                          seed, torch.__version__), paths["nhwc"])
        ort_basic(paths["torchscript"], paths["ortbasic"])
        quantize(paths["torchscript"], paths, shape, seed)
        fp16(paths["torchscript"], paths["fp16"])
        if name == "cnn" and keras_python:
            made = keras_export(model, keras_python, out / "cnn_keras.onnx", probe)
            if made is not None:
                proto, keras_out, versions = made
                paths["keras"] = out / "cnn_keras.onnx"
                onnx.save(_finish(proto, name, seed, versions), paths["keras"])
                keras_diff = float(np.max(np.abs(keras_out - expected)))
                print(f"  cnn_keras: Keras vs torch max |diff| {keras_diff:.3g} ({versions})")
        for variant, path in paths.items():
            if variant in ("ortbasic", "qdq", "qop", "dynamic", "fp16"):  # written by ORT
                _refinish(path, name, seed)
        files = {}
        for variant, path in paths.items():
            diff = _check_outputs(path, probe, expected, TOLERANCE[variant])
            files[path.name] = manifest_of(onnx.load(str(path)), model, path.name)
            print(f"  {path.name}: {path.stat().st_size} bytes, ORT vs torch max rel diff "
                  f"{diff:.2g}, sha256 {sha256(path)[:16]}")
        networks[name] = {"reference": paths["torchscript"].name, "input_shape": list(shape),
                          "files": files}
    manifest["networks"] = networks
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _refinish(path: Path, name: str, seed: int) -> None:
    """Strip what ONNX Runtime's tools leave that could vary; name the producer."""
    proto = onnx.load(str(path))
    version = f"{proto.producer_name} {proto.producer_version}".strip()
    onnx.save(_finish(proto, name, seed, f"{torch.__version__}; {version}"), str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keras-python", help="a Python with tensorflow and tf2onnx: also "
                                               "make cnn_keras.onnx")
    parser.add_argument("--check", action="store_true",
                        help="rebuild into a temporary folder; exit 1 if any file differs")
    args = parser.parse_args(argv)
    pin_torch()
    if not args.check:
        generate(args.out, args.seed, args.keras_python)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.seed, args.keras_python)
        names = sorted(p.name for p in Path(tmp).iterdir())
        bad = [n for n in names if not (args.out / n).is_file()
               or sha256(args.out / n) != sha256(Path(tmp) / n)]
    if bad:
        print(f"DIFFERS from {args.out}: {', '.join(bad)}")
        return 1
    print(f"OK: all {len(names)} files in {args.out} are identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
