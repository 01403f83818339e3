"""Train and export the small ONNX fixture models under ``models/``.

Nine tiny classifiers are trained on a seeded synthetic task (seven-segment
digits rendered with numpy, so no data set is downloaded) and exported to ONNX.
Each one has a different kind of first layer, which is what onnxcollide audits:

* ``mlp_dense.onnx``      - dense first layer, Linear(256, 64) on a 16x16 image
* ``cnn_overlap.onnx``    - Sub/Div normalisation, then Conv 5x5 stride 2 (windows overlap)
* ``patch_embed.onnx``    - ViT-style patchify Conv 8x8 stride 8 (windows do not overlap)
* ``depthwise_cnn.onnx``  - MobileNet-like Conv/BN, depthwise Conv, pointwise Conv

and five whose first Conv is reached through a linear chain of ops (issue 18):

* ``focus_cnn.onnx``      - YOLOX Focus (Slice with steps x6, Concat), Conv 12->8 k3 p1
* ``reflect_patch.onnx``  - reflect Pad 2 on a 28x28 image, patchify Conv 4x4 stride 4
* ``zeropad_cnn.onnx``    - explicit constant zero Pad 1, Conv 3x3 (as tf2onnx writes it)
* ``upsample_cnn.onnx``   - bilinear Resize x2, Conv 4x4 stride 4
* ``avgpool_cnn.onnx``    - AveragePool 2x2, Conv 3x3 p1

The output is byte-for-byte reproducible for a given seed and the same torch,
onnxscript and onnx versions: training is seeded, single-threaded, uses
deterministic algorithms and CPU-independent kernels (see ``pin_torch``), and
everything the exporter writes that could vary (doc strings, metadata, stack
traces with file paths) is stripped before saving.

Usage (torch lives in its own venv, never in the project's)::

    /work/torchenv/bin/python scripts/make_models.py [--out models] [--seed 0]
    /work/torchenv/bin/python scripts/make_models.py --check [--only focus_cnn ...]

After export every model is checked with ``onnx.checker`` and run once in ONNX
Runtime, in a separate interpreter that has onnxruntime (``--ort-python``,
by default the project's ``.venv``), against torch's output on the same input.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os

# Pin the CPU code paths before torch (and its MKL) is loaded: by default both
# pick kernels by CPU (AVX2, AVX-512, ...), which changes the trained bits from
# one x86-64 machine to another. See also pin_torch() for oneDNN and NNPACK.
os.environ["ATEN_CPU_CAPABILITY"] = "default"
os.environ["MKL_CBWR"] = "COMPATIBLE"

import subprocess
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import Message
from onnx import helper, numpy_helper
from torch import nn

REPO = Path(__file__).resolve().parent.parent
OPSET = 18
NUM_CLASSES = 10
PRODUCER = "onnxcollide-make-models"
BATCH = 64
N_TRAIN = 8000
N_TEST = 1000

# Which of the seven segments (a b c d e f g) are lit for each digit 0-9.
SEGMENTS = np.array(
    [
        [1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 1],
        [1, 1, 1, 1, 0, 0, 1],
        [0, 1, 1, 0, 0, 1, 1],
        [1, 0, 1, 1, 0, 1, 1],
        [1, 0, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 1, 1],
    ],
    dtype=np.float32,
)


# --------------------------------------------------------------------------- data


def _segment_boxes(
    top: np.ndarray, left: np.ndarray, h: np.ndarray, w: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Boxes (y0, y1, x0, x1) of the 7 segments, shape [N, 7, 4]."""
    mid = top + h // 2
    bottom, right = top + h, left + w
    boxes = [
        (top, top + t, left, right),  # a
        (top, mid + t, right - t, right),  # b
        (mid, bottom, right - t, right),  # c
        (bottom - t, bottom, left, right),  # d
        (mid, bottom, left, left + t),  # e
        (top, mid + t, left, left + t),  # f
        (mid, mid + t, left, right),  # g
    ]
    return np.stack([np.stack(b, axis=-1) for b in boxes], axis=1)


def seven_segment_digits(
    rng: np.random.Generator, n: int, size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` noisy seven-segment digits as float32 images in [0, 1].

    Digit height, width, stroke and position are jittered per sample; colour
    images get a random foreground and background colour.
    """
    labels = rng.integers(0, NUM_CLASSES, n)
    h = rng.integers(int(size * 0.55), int(size * 0.8), n)
    w = (h * rng.uniform(0.5, 0.75, n)).astype(np.int64)
    t = rng.integers(max(1, size // 16), size // 10 + 1, n)
    top = rng.integers(0, size - h, n)
    left = rng.integers(0, size - w, n)
    boxes = _segment_boxes(top, left, h, w, t)[:, :, :, None, None]
    yy = np.arange(size)[:, None]
    xx = np.arange(size)[None, :]
    rows = (yy >= boxes[:, :, 0]) & (yy < boxes[:, :, 1])
    cols = (xx >= boxes[:, :, 2]) & (xx < boxes[:, :, 3])
    inside = rows & cols
    lit = SEGMENTS[labels][:, :, None, None]
    mask = (inside * lit).max(axis=1)[:, None]  # [N, 1, H, W]
    fg = rng.uniform(0.6, 1.0, (n, channels, 1, 1))
    bg = rng.uniform(0.0, 0.35, (n, channels, 1, 1))
    if channels > 1:  # random hue: swap some colours so fg is not always brighter
        swap = rng.random((n, 1, 1, 1)) < 0.3
        fg, bg = np.where(swap, bg, fg), np.where(swap, fg, bg)
    img = bg + (fg - bg) * mask + rng.normal(0.0, 0.08, (n, channels, size, size))
    return np.clip(img, 0.0, 1.0).astype(np.float32), labels.astype(np.int64)


# ------------------------------------------------------------------------- models


class Normalize(nn.Module):
    """``(x - mean) / std`` with constant per-channel statistics."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PatchEmbedNet(nn.Module):
    """Tiny ViT-style classifier: patchify, one pre-norm MLP block, mean pool."""

    def __init__(self, dim: int = 48, patch: int = 8, image: int = 32) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patchify = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # [N, 16, 48]
        tokens = tokens + self.mlp(self.norm(tokens))
        return self.head(tokens.mean(dim=1))


def _sequential(**layers: nn.Module) -> nn.Sequential:
    """``nn.Sequential`` with named layers, so initializers get readable names."""
    return nn.Sequential(OrderedDict(layers))


def mlp_dense() -> nn.Module:
    return _sequential(
        flatten=nn.Flatten(),
        fc1=nn.Linear(256, 64),
        relu1=nn.ReLU(),
        fc2=nn.Linear(64, 32),
        relu2=nn.ReLU(),
        head=nn.Linear(32, NUM_CLASSES),
    )


def cnn_overlap() -> nn.Module:
    return _sequential(
        norm=Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        conv1=nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(16, 32, kernel_size=3, stride=2),
        relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(32, NUM_CLASSES),
    )


def patch_embed() -> nn.Module:
    return PatchEmbedNet()


def depthwise_cnn() -> nn.Module:
    return _sequential(
        conv=nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1, bias=False),
        bn=nn.BatchNorm2d(16),
        relu=nn.ReLU(),
        dw=nn.Conv2d(16, 16, kernel_size=3, padding=1, groups=16, bias=False),
        dw_bn=nn.BatchNorm2d(16),
        dw_relu=nn.ReLU(),
        pw=nn.Conv2d(16, 32, kernel_size=1, bias=False),
        pw_bn=nn.BatchNorm2d(32),
        pw_relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(32, NUM_CLASSES),
    )


class Focus(nn.Module):
    """YOLOX Focus: space-to-depth by four strided slices concatenated on channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1
        )


def _small_tail(channels: int, **first: nn.Module) -> nn.Sequential:
    """``first`` layers, then ReLU, Conv channels->16 k3 s2, ReLU, global pool, Linear(16,10)."""
    return _sequential(
        **first,
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(channels, 16, kernel_size=3, stride=2),
        relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        head=nn.Linear(16, NUM_CLASSES),
    )


def focus_cnn() -> nn.Module:
    return _small_tail(
        8, focus=Focus(), conv1=nn.Conv2d(12, 8, kernel_size=3, stride=1, padding=1)
    )


def reflect_patch() -> nn.Module:
    return _small_tail(
        32, pad=nn.ReflectionPad2d(2), conv1=nn.Conv2d(3, 32, kernel_size=4, stride=4)
    )


def zeropad_cnn() -> nn.Module:
    return _small_tail(16, pad=nn.ZeroPad2d(1), conv1=nn.Conv2d(3, 16, kernel_size=3))


def upsample_cnn() -> nn.Module:
    return _small_tail(
        8,
        up=nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        conv1=nn.Conv2d(3, 8, kernel_size=4, stride=4),
    )


def avgpool_cnn() -> nn.Module:
    return _small_tail(16, pool0=nn.AvgPool2d(2), conv1=nn.Conv2d(3, 16, kernel_size=3, padding=1))


@dataclass(frozen=True)
class Spec:
    """One fixture model: how to build it, its input and how long to train it."""

    name: str
    build: Callable[[], nn.Module]
    channels: int
    size: int
    epochs: int
    lr: float
    explicit_pad: bool = False  # undo the exporter's fusion of a zero Pad into the first Conv


SPECS = (
    Spec("mlp_dense", mlp_dense, channels=1, size=16, epochs=15, lr=3e-3),
    Spec("cnn_overlap", cnn_overlap, channels=3, size=32, epochs=15, lr=3e-3),
    Spec("patch_embed", patch_embed, channels=3, size=32, epochs=25, lr=1e-2),
    Spec("depthwise_cnn", depthwise_cnn, channels=3, size=32, epochs=15, lr=5e-3),
    # A linear chain between the input and the first Conv (issue 18):
    Spec("focus_cnn", focus_cnn, channels=3, size=32, epochs=6, lr=5e-3),
    Spec("reflect_patch", reflect_patch, channels=3, size=28, epochs=6, lr=5e-3),
    Spec("zeropad_cnn", zeropad_cnn, channels=3, size=32, epochs=6, lr=5e-3, explicit_pad=True),
    Spec("upsample_cnn", upsample_cnn, channels=3, size=32, epochs=6, lr=5e-3),
    Spec("avgpool_cnn", avgpool_cnn, channels=3, size=32, epochs=6, lr=5e-3),
)


# ----------------------------------------------------------------------- training


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` (in eval mode) classifies correctly."""
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: Spec, seed: int) -> None:
    """Mini-batch Adam with a seeded shuffle; prints the loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(spec.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=gen).split(BATCH):
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"  {spec.name} epoch {epoch + 1}/{spec.epochs} loss {total / len(x):.4f}")


def train_model(spec: Spec, seed: int) -> tuple[nn.Module, float, float]:
    """Build and train one model; return it (in eval mode), train and test accuracy."""
    rng = np.random.default_rng([seed, SPECS.index(spec)])
    x_np, y_np = seven_segment_digits(rng, N_TRAIN + N_TEST, spec.size, spec.channels)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    torch.manual_seed(seed * 1000 + SPECS.index(spec))
    model = spec.build()
    train(model, x[:N_TRAIN], y[:N_TRAIN], spec, seed)
    train_acc = accuracy(model, x[:N_TRAIN], y[:N_TRAIN])
    test_acc = accuracy(model, x[N_TRAIN:], y[N_TRAIN:])
    return model, train_acc, test_acc


# ------------------------------------------------------------------------- export


def _strip_volatile(msg: Message) -> None:
    """Recursively clear doc strings and metadata (stack traces hold file paths)."""
    for field, value in msg.ListFields():
        if field.name in ("doc_string", "metadata_props"):
            msg.ClearField(field.name)
        elif field.type == field.TYPE_MESSAGE:
            for item in value if field.is_repeated else (value,):
                _strip_volatile(item)


def _name_transposed_weights(proto: onnx.ModelProto, model: nn.Module) -> None:
    """Give the exporter's pre-transposed MatMul weights (``val_8``...) readable names.

    Linear layers on 3-D tokens become MatMul with an initializer holding
    ``weight.T``; it is renamed ``<parameter>.T`` after the parameter it equals.
    """
    params = {k: v.detach().numpy() for k, v in model.state_dict().items() if v.dim() == 2}
    inits = {init.name: init for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        value = numpy_helper.to_array(init)
        match = [k for k, w in params.items() if np.array_equal(w.T, value)]
        if len(match) == 1 and init.name not in params:
            _rename(proto.graph, init.name, f"{match[0]}.T")


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename value ``old`` (initializer, value_info, node inputs) to ``new``."""
    for item in (*graph.initializer, *graph.value_info):
        if item.name == old:
            item.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def _explicit_pad(graph: onnx.GraphProto) -> None:
    """Move the first Conv's ``pads`` back out into a constant-mode ``Pad`` node before it.

    The exporter's optimiser folds ``nn.ZeroPad2d`` (a zero ``Pad``) into the next Conv's
    ``pads``; tf2onnx keeps Keras' ``ZeroPadding2D`` as a separate ``Pad``, as here.
    """
    index, conv = next((i, n) for i, n in enumerate(graph.node) if n.op_type == "Conv")
    attr = next(a for a in conv.attribute if a.name == "pads")
    begin, end = attr.ints[: len(attr.ints) // 2], attr.ints[len(attr.ints) // 2 :]
    pads = np.array([0, 0, *begin, 0, 0, *end], dtype=np.int64)  # ONNX Pad: all begins, all ends
    graph.initializer.append(numpy_helper.from_array(pads, "pad.pads"))
    pad = helper.make_node("Pad", [conv.input[0], "pad.pads"], ["pad"], name="pad", mode="constant")
    graph.node.insert(index, pad)
    conv.input[0] = "pad"
    attr.ints[:] = [0] * len(attr.ints)


def export_onnx(
    model: nn.Module, example: torch.Tensor, name: str, seed: int, explicit_pad: bool = False
) -> onnx.ModelProto:
    """Export with the torch.export-based exporter (dynamic batch), then normalise."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("N")},),
            verbose=False,
        )
    proto = program.model_proto
    if explicit_pad:
        _explicit_pad(proto.graph)
    _strip_volatile(proto)
    _name_transposed_weights(proto, model)
    # Nothing here needs IR 10: declare the lowest IR the opset allows (older ORTs load it).
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    proto.producer_name = PRODUCER
    proto.producer_version = torch.__version__
    proto.doc_string = f"onnxcollide fixture model {name!r} (seed {seed}); see models/README.md"
    onnx.checker.check_model(proto, full_check=True)
    return proto


# ------------------------------------------------------------------- ORT checking

# Run by the ``--ort-python`` interpreter (which needs onnxruntime, not torch):
# compares each model's ONNX Runtime output with torch's, saved next to it.
ORT_CHECK = """
import sys, pathlib, numpy as np, onnxruntime as ort
ok = True
for ref in sorted(pathlib.Path(sys.argv[1]).glob("*.npz")):
    data = np.load(ref)
    sess = ort.InferenceSession(sys.argv[2] + "/" + ref.stem + ".onnx")
    got = sess.run(None, {"input": data["input"]})[0]
    diff = float(np.abs(got - data["logits"]).max())
    good = bool(np.allclose(got, data["logits"], rtol=1e-5, atol=1e-5))
    ok &= good
    verdict = "ok" if good else "MISMATCH"
    print(f"  ORT {ort.__version__} {ref.stem}: max |ort - torch| = {diff:.2e} {verdict}")
sys.exit(0 if ok else 1)
"""


def reference_io(model: nn.Module, spec: Spec, seed: int) -> dict[str, np.ndarray]:
    """A seeded batch of 3 fresh digits and torch's logits for it."""
    rng = np.random.default_rng([seed, len(SPECS) + SPECS.index(spec)])
    x, _ = seven_segment_digits(rng, 3, spec.size, spec.channels)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return {"input": x, "logits": logits}


def check_with_ort(ort_python: str, refs: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    """Run every model in ONNX Runtime (in ``ort_python``) and compare with torch."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, arrays in refs.items():
            np.savez(Path(tmp) / f"{name}.npz", **arrays)
        result = subprocess.run([ort_python, "-c", ORT_CHECK, tmp, str(out)], check=False)
    if result.returncode:
        sys.exit(f"ONNX Runtime check failed (exit {result.returncode}) for the models in {out}")


# --------------------------------------------------------------------------- main


def pin_torch() -> None:
    """Single thread, deterministic kernels, and no CPU-specific conv libraries.

    oneDNN (mkldnn) and NNPACK choose their kernels by CPU; with both off every
    convolution goes through ATen's im2col + MKL GEMM, pinned above.
    """
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(out: Path, seed: int, ort_python: str | None, specs: tuple[Spec, ...]) -> None:
    """Train, export and verify the models of ``specs`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    refs: dict[str, dict[str, np.ndarray]] = {}
    summary = []
    for spec in specs:
        start = time.perf_counter()
        model, train_acc, test_acc = train_model(spec, seed)
        print(f"  {spec.name}: trained in {time.perf_counter() - start:.1f} s")
        example = torch.zeros(2, spec.channels, spec.size, spec.size)
        path = out / f"{spec.name}.onnx"
        onnx.save(export_onnx(model, example, spec.name, seed, spec.explicit_pad), path)
        refs[spec.name] = reference_io(model, spec, seed)
        summary.append(
            f"{path}  {path.stat().st_size} bytes  sha256 {sha256(path)}  "
            f"train acc {train_acc:.3f}  test acc {test_acc:.3f}"
        )
    if ort_python:
        check_with_ort(ort_python, refs, out)
    print("\n".join(summary))


def compare(expected: Path, fresh: Path, specs: tuple[Spec, ...]) -> list[str]:
    """Names of the fixture files that are missing from or differ in ``expected``."""
    bad = []
    for spec in specs:
        name = f"{spec.name}.onnx"
        if not (expected / name).is_file() or sha256(expected / name) != sha256(fresh / name):
            bad.append(name)
    return bad


def default_ort_python() -> str | None:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, init and shuffling")
    parser.add_argument(
        "--check",
        action="store_true",
        help="regenerate into a temporary folder; exit 1 if any file differs from --out",
    )
    parser.add_argument(
        "--ort-python",
        default=default_ort_python(),
        help="python with onnxruntime used to run the exported models (default: REPO/.venv)",
    )
    parser.add_argument("--skip-ort", action="store_true", help="do not run ONNX Runtime")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[spec.name for spec in SPECS],
        help="build (or --check) only these models; the others are not trained",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ort_python = None if args.skip_ort else args.ort_python
    if not args.skip_ort and not ort_python:
        sys.exit("no python with onnxruntime found: pass --ort-python PATH or --skip-ort")
    pin_torch()
    specs = tuple(s for s in SPECS if not args.only or s.name in args.only)
    if not args.check:
        generate(args.out, args.seed, ort_python, specs)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.seed, ort_python, specs)
        bad = compare(args.out, Path(tmp), specs)
    if bad:
        print(f"DIFFERS from {args.out}: {', '.join(bad)}")
        return 1
    print(f"OK: all {len(specs)} models in {args.out} are identical to a fresh build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
