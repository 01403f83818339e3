#!/usr/bin/env python3
"""Time the Null-space search end to end: make and validate colliding inputs, and the conv
operator analysis of an overlapping first conv.

Cases (random weights, seed 0, 224x224 inputs):
  vit-b16    ViT-B/16 shape (patchify W1, patch embedding of rank 755 like the trained ViT-B
             of the paper's Table 1): make and validate 16 exact colliding inputs.
  resnet50   ResNet-50 shape (7x7/2 W1, overlapping): operator analysis, then 16 colliding
             inputs in --mode approximate (there is no exact collision), validated.
  operator   the operator analysis alone: 7x7/2 pad 3 conv, 64 filters, 3x224x224.

    python scripts/bench_collide.py            # all three
    python scripts/bench_collide.py --case vit-b16 --count 16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_models


def build_vit_b16(path: str, seed: int, patch_rank: int) -> None:
    """ViT-B/16 as ``bench_models`` writes it (one file), its 768 x 768 patch embedding cut
    to ``patch_rank`` (the trained ViT-B of the paper's Table 1 has rank 755, nullity 13;
    random weights are full rank)."""
    bench_models.build_vit_b16(path, seed, False)
    model = onnx.load(path)
    patch = next(t for t in model.graph.initializer if tuple(t.dims) == (768, 3, 16, 16))
    weight = numpy_helper.to_array(patch).reshape(768, -1).astype(np.float64)
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    s[patch_rank:] = 0.0
    cut = ((u * s) @ vt).astype(np.float32).reshape(768, 3, 16, 16)
    patch.CopyFrom(numpy_helper.from_array(cut, patch.name))
    onnx.save(model, path)


def _conv_bn(nodes: list, inits: list, rng: np.random.Generator, x: str, name: str,
             c_in: int, c_out: int, k: int, stride: int, relu: bool = True) -> str:
    w = f"{name}.w"
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / (c_in * k * k)))
        .astype(np.float32), w))
    nodes.append(helper.make_node("Conv", [x, w], [f"{name}.c"], kernel_shape=[k, k],
                                  strides=[stride] * 2, pads=[k // 2] * 4))
    params = [rng.uniform(0.5, 1.5, c_out), rng.normal(0, 0.1, c_out),
              rng.normal(0, 0.1, c_out), rng.uniform(0.5, 1.5, c_out)]
    names = [f"{name}.{p}" for p in ("scale", "bias", "mean", "var")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(params, names,
                                                                              strict=True)]
    nodes.append(helper.make_node("BatchNormalization", [f"{name}.c", *names], [f"{name}.bn"]))
    if not relu:
        return f"{name}.bn"
    nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.r"]))
    return f"{name}.r"


def build_resnet50(path: str, seed: int) -> None:
    """ResNet-50-shaped model with random weights and inference BatchNormalization."""
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    x = _conv_bn(nodes, inits, rng, "x", "stem", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, c_in = "pool", 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for b in range(blocks):
            stride = 2 if b == 0 and stage > 0 else 1
            name = f"s{stage}b{b}"
            h = _conv_bn(nodes, inits, rng, x, f"{name}.1", c_in, width, 1, 1)
            h = _conv_bn(nodes, inits, rng, h, f"{name}.2", width, width, 3, stride)
            h = _conv_bn(nodes, inits, rng, h, f"{name}.3", width, 4 * width, 1, 1, relu=False)
            skip = x
            if b == 0:
                skip = _conv_bn(nodes, inits, rng, x, f"{name}.down", c_in, 4 * width, 1,
                                stride, relu=False)
            nodes.append(helper.make_node("Add", [h, skip], [f"{name}.sum"]))
            nodes.append(helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"]))
            x, c_in = f"{name}.out", 4 * width
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((1000, 2048)) / np.sqrt(2048)).astype(np.float32), "fc.w"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet50", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)


def run_search(path: str, count: int, mode: str, seed: int) -> None:
    """Make and validate ``count`` colliding inputs; print the timing and verdicts."""
    from onnxcollide.collide.results import SearchSettings
    from onnxcollide.collide.search import find_collisions
    from onnxcollide.runtime.session import ModelRunner
    from onnxcollide.runtime.validate import Tolerances, validate_pair

    x = np.random.default_rng(seed).random((1, 3, 224, 224)).astype(np.float32)
    feeds = {"x": x}
    start = time.perf_counter()
    found = find_collisions(path, feeds, SearchSettings(count=count, seed=seed, mode=mode,
                                                        valid_range=(0.0, 1.0), beta=1.0))
    made = time.perf_counter() - start
    runner = ModelRunner(path, extra_outputs=[found.w1_output], device="cpu")
    checks = [validate_pair(runner, feeds, {"x": c.value}, found.w1_output, seed,
                            Tolerances.for_run(runner, found.w1_output))
              for c in found.collisions]
    total = time.perf_counter() - start
    residuals = [c.layer_residual for c in checks]
    passed = sum(c.passed for c in checks)
    print(f"  {found.method}")
    print(f"  made {len(found.collisions)} colliding inputs in {made:.2f} s; made + validated in "
          f"{total:.2f} s; W1 residual max {max(residuals, default=float('nan')):.3g}; "
          f"{passed}/{len(checks)} pass", flush=True)
    if found.operator:
        op = found.operator
        print(f"  operator: smallest relative singular values {op['relative'][:4]}, exact "
              f"{op['exact']}", flush=True)


def run_operator(size: int, seed: int) -> None:
    """The conv operator analysis of a 7x7/2 pad 3 conv with 64 filters at size x size."""
    from onnxcollide.linalg.conv_operator import ConvSpec, smallest_singular

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((64, 3, 7, 7)) / np.sqrt(147)
    spec = ConvSpec(weight=weight, strides=(2, 2), dilations=(1, 1), pads=(3, 3, 3, 3),
                    groups=1, input_shape=(3, size, size))
    start = time.perf_counter()
    result = smallest_singular(spec, k=4, seed=seed)
    seconds = time.perf_counter() - start
    print(f"  operator analysis 7x7/2, 64 filters, 3x{size}x{size}: {seconds:.2f} s; "
          f"relative sigma_min {result.relative[:4]}, exact {result.exact}, residuals "
          f"{np.asarray(result.residuals).max():.2g}, method {result.method}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["vit-b16", "resnet50", "operator", "all"],
                        default="all")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=224, help="operator case input size")
    args = parser.parse_args(argv)
    cases = ["vit-b16", "resnet50", "operator"] if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory() as folder:
        for case in cases:
            print(f"[{case}]", flush=True)
            if case == "operator":
                run_operator(args.size, args.seed)
                continue
            path = os.path.join(folder, f"{case}.onnx")
            if case == "vit-b16":
                build_vit_b16(path, args.seed, patch_rank=755)
            else:
                build_resnet50(path, args.seed)
            start = time.perf_counter()
            run_search(path, args.count, "auto" if case == "vit-b16" else "approximate",
                       args.seed)
            print(f"  {case} total {time.perf_counter() - start:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
