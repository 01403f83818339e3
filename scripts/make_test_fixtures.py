"""Export the small test fixtures of ``tests/data/`` that are ours (not copied from elsewhere).

* ``resnet_nhwc_torchscript.onnx``: a ResNet-like stem and one residual block taking an NHWC
  input, exported by PyTorch's TorchScript-based exporter (``dynamo=False``) with only the
  batch dimension dynamic, as a user exports a channels-last ResNet-50: the input passes a
  Transpose, a Cast and a Pad whose pads are computed by a chain of constant ops
  (ConstantOfShape, Concat, Reshape, Slice, Transpose, Reshape, Cast) before the first conv.
  Weights are PyTorch's default initialisation from a seed (no training: the tests need the
  graph's structure, not accuracy).

Usage (torch lives in its own venv, never in the project's)::

    /work/torchenv/bin/python scripts/make_test_fixtures.py [--out tests/data] [--seed 0]

Byte for byte reproducible for the same torch and onnx versions (seeded init, one thread,
doc strings and metadata stripped). Versions used for the committed file: torch 2.13.0+cpu,
onnx 1.23.2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
PRODUCER = "onnxcollide-make-test-fixtures"


class Block(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN, plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class NhwcResNet(nn.Module):
    """NHWC image -> NCHW, explicit pad 3, 7x7/2 conv stem (no padding of its own), BN, ReLU,
    max pool, one block, global mean, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 7, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.block = Block(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32)
        x = F.pad(x, (3, 3, 3, 3))
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 3, 2, 1)
        x = self.block(x)
        return self.fc(x.mean((2, 3)))


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop everything an export writes that could vary from run to run."""
    model.producer_name, model.producer_version = PRODUCER, torch.__version__.split("+")[0]
    model.doc_string = ""
    del model.metadata_props[:]
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    return model


def resnet_nhwc(seed: int) -> bytes:
    """The NHWC ResNet-like fixture as ONNX bytes."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = NhwcResNet().eval()
    example = torch.rand(1, 32, 32, 3)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["input_0"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_0": {0: "N"}, "logits": {0: "N"}})
    proto = _strip(onnx.load_from_string(buffer.getvalue()))
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = resnet_nhwc(args.seed)
    path = args.out / "resnet_nhwc_torchscript.onnx"
    path.write_bytes(data)
    print(f"{hashlib.sha256(data).hexdigest()}  {path.name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
