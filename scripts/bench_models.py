"""Benchmark models shaped like PyTorch's own ONNX exports (for ``bench_audit.py``).

Each builder writes, with ``onnx.helper``, the graph that ``torch.onnx.export(..., dynamo=True)``
(torch 2.13) gives for the torchvision architecture in eval mode, with PyTorch's default
initialisation, so that no torch is needed to rerun the benchmark:

* weights and biases of ``nn.Linear`` and ``nn.Conv2d`` uniform in +-1/sqrt(fan_in) (what
  their ``reset_parameters`` gives: kaiming_uniform with a = sqrt(5));
  ``nn.MultiheadAttention``'s packed in-projection xavier-uniform, its biases 0;
* BatchNormalization folded into the conv before it, as the exporter's optimizer does
  (default statistics: the weight times 1/sqrt(1 + 1e-5), a zero bias);
* a Linear on a 2-D input is ``Gemm(transB=1)`` on the stored (out, in) weight; on a 3-D input
  ``MatMul`` with an (in, out) initializer (the exporter folds the Transpose) and an ``Add``;
* the whole model in one ``.onnx`` file (raw data inline), or the external-data variant
  (``onnx.save(..., save_as_external_data=True)``, one ``.data`` file).

The graphs are the exported ones up to node names and the attention's reshapes; every weight
the audit reads (shape, layout, dtype, values' distribution) is as in an export.

    python scripts/bench_models.py --out /tmp/models resnet50 vit-b16
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20  # torch 2.13's default
BN_EPS = 1e-5


@dataclass
class Graph:
    """A graph under construction: nodes, initializers and a seeded generator."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, prefix: str) -> str:
        """A fresh tensor name."""
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, name: str, value: np.ndarray) -> str:
        """Add an initializer; return its name."""
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        """Add a one-output node; return its output's name."""
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def uniform(self, shape: tuple[int, ...], bound: float) -> np.ndarray:
        """float32 values uniform in [-bound, bound)."""
        draw = self.rng.random(shape, dtype=np.float32)
        return ((2.0 * draw - 1.0) * np.float32(bound)).astype(np.float32)

    # ------------------------------------------------------------ layers

    def conv(self, x: str, name: str, out_ch: int, in_ch: int, kernel: int, stride: int = 1,
             pad: int = 0, batch_norm: bool = False) -> str:
        """nn.Conv2d (bias unless followed by BatchNorm, which is folded into it)."""
        fan_in = in_ch * kernel * kernel
        bound = 1.0 / np.sqrt(fan_in)
        weight = self.uniform((out_ch, in_ch, kernel, kernel), bound)
        if batch_norm:  # gamma 1, beta 0, mean 0, var 1: w / sqrt(1 + eps), bias 0
            weight = (weight / np.float32(np.sqrt(1.0 + BN_EPS))).astype(np.float32)
            bias = np.zeros(out_ch, np.float32)
        else:
            bias = self.uniform((out_ch,), bound)
        w = self.const(f"{name}.weight", weight)
        b = self.const(f"{name}.bias", bias)
        return self.node("Conv", [x, w, b], kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[pad] * 4, dilations=[1, 1], group=1)

    def linear_2d(self, x: str, name: str, out_f: int, in_f: int) -> str:
        """nn.Linear on a (N, in) input: Gemm(transB=1) on the (out, in) weight."""
        bound = 1.0 / np.sqrt(in_f)
        w = self.const(f"{name}.weight", self.uniform((out_f, in_f), bound))
        b = self.const(f"{name}.bias", self.uniform((out_f,), bound))
        return self.node("Gemm", [x, w, b], transB=1, alpha=1.0, beta=1.0)

    def linear_3d(self, x: str, name: str, out_f: int, in_f: int,
                  weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> str:
        """nn.Linear on a (N, L, in) input: MatMul with the (in, out) transposed weight (the
        exporter folds the Transpose into a new initializer), then Add of the bias."""
        bound = 1.0 / np.sqrt(in_f)
        weight = self.uniform((out_f, in_f), bound) if weight is None else weight
        bias = self.uniform((out_f,), bound) if bias is None else bias
        w = self.const(self.name(f"{name}.weight_t"), np.ascontiguousarray(weight.T))
        b = self.const(f"{name}.bias", bias)
        return self.node("Add", [self.node("MatMul", [x, w]), b])

    def shape(self, dims: list[int]) -> str:
        """An int64 shape initializer (shape inference reads it)."""
        return self.const(self.name("shape"), np.array(dims, np.int64))

    def save(self, inputs: list[tuple[str, list[int]]], output: str, path: str,
             external: bool) -> None:
        """Write the model: one file, or with every tensor over 1 KB in ``PATH.data``."""
        graph = helper.make_graph(
            self.nodes, "main_graph",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in inputs],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  ir_version=10, producer_name="pytorch",
                                  producer_version="2.13.0 (bench_models.py)")
        if external:
            data = os.path.basename(path) + ".data"
            if os.path.exists(os.path.join(os.path.dirname(path), data)):
                os.remove(os.path.join(os.path.dirname(path), data))
            onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data, size_threshold=1024)
        else:
            onnx.save(model, path)


IMAGE = ("x", [1, 3, 224, 224])


def _classifier(g: Graph, x: str, features: int, classes: int = 1000) -> str:
    """Flatten, Linear features->4096, ReLU, 4096->4096, ReLU, 4096->classes (dropout is
    gone in eval mode)."""
    x = g.node("Flatten", [x], axis=1)
    x = g.node("Relu", [g.linear_2d(x, "classifier.1", 4096, features)])
    x = g.node("Relu", [g.linear_2d(x, "classifier.4", 4096, 4096)])
    return g.linear_2d(x, "classifier.6", classes, 4096)


def build_alexnet(path: str, seed: int, external: bool) -> None:
    """torchvision AlexNet: 5 convs, fc 9216x4096, 4096x4096, 4096x1000 (61.1M parameters)."""
    g = Graph(np.random.default_rng(seed))
    x = "x"
    plan = [(64, 3, 11, 4, 2, True), (192, 64, 5, 1, 2, True), (384, 192, 3, 1, 1, False),
            (256, 384, 3, 1, 1, False), (256, 256, 3, 1, 1, True)]
    for k, (out_ch, in_ch, kernel, stride, pad, pool) in enumerate(plan):
        x = g.node("Relu", [g.conv(x, f"features.{k}", out_ch, in_ch, kernel, stride, pad)])
        if pool:
            x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
    x = _classifier(g, x, 256 * 6 * 6)  # the 6x6 adaptive pool is the identity at 224
    g.save([IMAGE], x, path, external)


def build_vgg16(path: str, seed: int, external: bool) -> None:
    """torchvision VGG-16: 13 3x3 convs, fc 25088x4096, 4096x4096, 4096x1000 (138.4M)."""
    g = Graph(np.random.default_rng(seed))
    x, channels = "x", 3
    for k, width in enumerate([64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0,
                               512, 512, 512, 0]):
        if width == 0:
            x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
            continue
        x = g.node("Relu", [g.conv(x, f"features.{k}", width, channels, 3, 1, 1)])
        channels = width
    x = _classifier(g, x, 512 * 7 * 7)  # the 7x7 adaptive pool is the identity at 224
    g.save([IMAGE], x, path, external)


def build_resnet50(path: str, seed: int, external: bool) -> None:
    """torchvision ResNet-50 (v1.5: stride on the 3x3 conv), BatchNorm folded (25.6M)."""
    g = Graph(np.random.default_rng(seed))
    x = g.node("Relu", [g.conv("x", "conv1", 64, 3, 7, 2, 3, batch_norm=True)])
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    in_ch = 64
    for stage, (width, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 6, 2),
                                                     (512, 3, 2)], start=1):
        for b in range(blocks):
            name, s = f"layer{stage}.{b}", stride if b == 0 else 1
            y = g.node("Relu", [g.conv(x, f"{name}.conv1", width, in_ch, 1, batch_norm=True)])
            y = g.node("Relu", [g.conv(y, f"{name}.conv2", width, width, 3, s, 1,
                                       batch_norm=True)])
            y = g.conv(y, f"{name}.conv3", 4 * width, width, 1, batch_norm=True)
            if b == 0:
                x = g.conv(x, f"{name}.downsample.0", 4 * width, in_ch, 1, s, batch_norm=True)
            x = g.node("Relu", [g.node("Add", [y, x])])
            in_ch = 4 * width
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    g.save([IMAGE], g.linear_2d(x, "fc", 1000, 2048), path, external)


def _attention(g: Graph, x: str, name: str, d: int, heads: int, tokens: int) -> str:
    """nn.MultiheadAttention(d, heads, batch_first=True) on (1, tokens, d), self-attention:
    the packed (d, 3d) in-projection as MatMul + Add, scaled dot products, out-projection as
    Gemm(transB=1) on the (tokens, d) view, as the exporter writes it."""
    bound = np.sqrt(6.0 / (d + 3 * d))  # xavier_uniform_ of the (3d, d) in_proj_weight
    qkv = g.linear_3d(x, f"{name}.in_proj", 3 * d, d, weight=g.uniform((3 * d, d), bound),
                      bias=np.zeros(3 * d, np.float32))
    head = d // heads
    split = g.node("Reshape", [qkv, g.shape([1, tokens, 3, heads, head])])
    perm = g.node("Transpose", [split], perm=[2, 0, 3, 1, 4])  # (3, 1, heads, tokens, head)
    q, k, v = (g.node("Gather", [perm, g.const(g.name("index"), np.array(i, np.int64))],
                      axis=0) for i in range(3))
    scores = g.node("MatMul", [g.node("Mul", [q, g.const(g.name("scale"), np.array(
        1.0 / np.sqrt(head), np.float32))]), g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    mixed = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])
    joined = g.node("Reshape", [g.node("Transpose", [mixed], perm=[0, 2, 1, 3]),
                                g.shape([tokens, d])])
    out_bound = 1.0 / np.sqrt(d)
    w = g.const(f"{name}.out_proj.weight", g.uniform((d, d), out_bound))
    b = g.const(f"{name}.out_proj.bias", np.zeros(d, np.float32))
    out = g.node("Gemm", [joined, w, b], transB=1, alpha=1.0, beta=1.0)
    return g.node("Reshape", [out, g.shape([1, tokens, d])])


def _layer_norm(g: Graph, x: str, name: str, d: int) -> str:
    scale = g.const(f"{name}.weight", np.ones(d, np.float32))
    bias = g.const(f"{name}.bias", np.zeros(d, np.float32))
    return g.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-6)


def build_vit(path: str, seed: int, external: bool, d: int, mlp: int, layers: int,
              heads: int) -> None:
    """torchvision VisionTransformer, patch 16 at 224 (197 tokens): conv_proj, class token,
    position embedding, encoder blocks (LayerNorm, attention, LayerNorm, MLP with GELU), a
    final LayerNorm and the head on the class token."""
    g = Graph(np.random.default_rng(seed))
    tokens = 197
    x = g.conv("x", "conv_proj", d, 3, 16, 16)
    x = g.node("Transpose", [g.node("Reshape", [x, g.shape([1, d, 196])])], perm=[0, 2, 1])
    cls = g.const("class_token", np.zeros((1, 1, d), np.float32))
    x = g.node("Concat", [cls, x], axis=1)
    pos = g.const("encoder.pos_embedding",
                  (0.02 * g.rng.standard_normal((1, tokens, d))).astype(np.float32))
    x = g.node("Add", [x, pos])
    for k in range(layers):
        name = f"encoder.layers.encoder_layer_{k}"
        y = _attention(g, _layer_norm(g, x, f"{name}.ln_1", d), f"{name}.self_attention", d,
                       heads, tokens)
        x = g.node("Add", [x, y])
        y = _layer_norm(g, x, f"{name}.ln_2", d)
        y = g.node("Gelu", [g.linear_3d(y, f"{name}.mlp.0", mlp, d)])
        x = g.node("Add", [x, g.linear_3d(y, f"{name}.mlp.3", d, mlp)])
    x = _layer_norm(g, x, "encoder.ln", d)
    first = g.node("Gather", [x, g.const("class_index", np.array(0, np.int64))], axis=1)
    g.save([IMAGE], g.linear_2d(first, "heads.head", 1000, d), path, external)


def build_vit_b16(path: str, seed: int, external: bool) -> None:
    """ViT-B/16: width 768, MLP 3072, 12 layers, 12 heads (86.6M parameters)."""
    build_vit(path, seed, external, 768, 3072, 12, 12)


def build_vit_l16(path: str, seed: int, external: bool) -> None:
    """ViT-L/16: width 1024, MLP 4096, 24 layers, 16 heads (304.3M parameters)."""
    build_vit(path, seed, external, 1024, 4096, 24, 16)


BUILDERS: dict[str, Callable[[str, int, bool], None]] = {
    "alexnet": build_alexnet, "vgg16": build_vgg16, "vit-b16": build_vit_b16,
    "resnet50": build_resnet50, "vit-l16": build_vit_l16}


def main(argv: list[str] | None = None) -> int:
    """Write the named models (single file, and with ``--external`` the external variant)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=list(BUILDERS))
    parser.add_argument("--out", required=True, help="folder to write NAME.onnx into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--external", action="store_true",
                        help="weights in NAME-ext.onnx.data next to NAME-ext.onnx")
    parser.add_argument("--name", help="the file to write (one model only)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.name and len(args.names) != 1:
        parser.error("--name takes one model")
    for name in args.names:
        file = f"{name}-ext.onnx" if args.external else f"{name}.onnx"
        path = args.name or os.path.join(args.out, file)
        BUILDERS[name](path, args.seed, args.external)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
