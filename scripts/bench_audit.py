#!/usr/bin/env python3
"""Time `onnxcollide audit` against a naive per-layer numpy.linalg.matrix_rank loop.

Builds seeded random-weight models shaped like AlexNet (five convs; fc 9216x4096, 4096x4096,
4096x1000) and ViT-B/16 (patch conv 768x3x16x16, 12 blocks of qkv/proj/fc1/fc2, head), or takes
any ONNX path, then in fresh subprocesses (so peak memory is measured per phase):
  1. audits the model with onnxcollide (end to end: load, find weights, rank every layer);
  2. times the float64 Gram matrices of the Gram-path blocks alone: the floor of any engine that
     decides in float64 from Gram matrices, so naive / floor is the ceiling on the speedup;
  3. runs numpy.linalg.matrix_rank on every weight matrix (SVD in the weight's dtype);
  4. repeats the issue's lead on the largest weight alone: a float64 Gram matrix (dsyrk) and one
     Cholesky factorisation of G - tol^2 I against matrix_rank on the same matrix, so the ratio
     this machine gives can be set beside the 18x the issue measured;
and checks that the ranks agree layer by layer.

    python scripts/bench_audit.py                 # AlexNet and ViT-B/16 shapes
    python scripts/bench_audit.py --shape vit-b16
    python scripts/bench_audit.py --shape large   # VGG-16 and ViT-L/16 shapes
    python scripts/bench_audit.py --shape heads --naive none  # long 128/256/257-wide heads
    python scripts/bench_audit.py path/to/model.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(fan_in)).astype(np.float32)


def _save(nodes: list, inits: list, inp: tuple[str, list[int]], out: str, path: str) -> None:
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)


def build_alexnet(path: str, seed: int) -> None:
    """AlexNet-shaped model with random weights (external data)."""
    rng = np.random.default_rng(seed)
    convs = [(64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1),
             (256, 256, 3, 1, 1)]
    nodes, inits, x = [], [], "x"
    for k, (o, c, kern, stride, pad) in enumerate(convs):
        w = f"conv{k}.w"
        inits.append(numpy_helper.from_array(_weight(rng, (o, c, kern, kern), c * kern * kern), w))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{k}"], kernel_shape=[kern, kern],
                                      strides=[stride] * 2, pads=[pad] * 4))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        x = f"r{k}"
        if k in (0, 1, 4):
            nodes.append(helper.make_node("MaxPool", [x], [f"p{k}"], kernel_shape=[3, 3],
                                          strides=[2, 2]))
            x = f"p{k}"
    x = _classifier(rng, nodes, inits, x, 9216)
    _save(nodes, inits, ("x", [1, 3, 224, 224]), x, path)


def _classifier(rng: np.random.Generator, nodes: list, inits: list, x: str, features: int
                ) -> str:
    """Flatten, then Gemm features->4096->4096->1000 (weights stored transposed, transB=1);
    returns the output name."""
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    x = "flat"
    for k, (q, p) in enumerate([(features, 4096), (4096, 4096), (4096, 1000)]):
        w = f"fc{k}.w"
        inits.append(numpy_helper.from_array(_weight(rng, (p, q), q), w))
        nodes.append(helper.make_node("Gemm", [x, w], [f"f{k}"], transB=1))
        x = f"f{k}"
    return x


def build_vgg16(path: str, seed: int) -> None:
    """VGG-16-shaped model with random weights (13 3x3 convs; fc 25088x4096, 4096x4096,
    4096x1000; 553 MB of external data)."""
    rng = np.random.default_rng(seed)
    plan = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0]
    nodes, inits, x, channels = [], [], "x", 3
    for k, width in enumerate(plan):
        if width == 0:
            nodes.append(helper.make_node("MaxPool", [x], [f"p{k}"], kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x = f"p{k}"
            continue
        w = f"conv{k}.w"
        inits.append(numpy_helper.from_array(_weight(rng, (width, channels, 3, 3), channels * 9),
                                             w))
        nodes.append(helper.make_node("Conv", [x, w], [f"c{k}"], kernel_shape=[3, 3],
                                      pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        x, channels = f"r{k}", width
    x = _classifier(rng, nodes, inits, x, 25088)
    _save(nodes, inits, ("x", [1, 3, 224, 224]), x, path)


def build_vit_b16(path: str, seed: int, patch_rank: int | None = None) -> None:
    """ViT-B/16-shaped model with random weights (attention replaced by a sum of q, k, v).

    ``patch_rank`` makes the 768 x 768 patch embedding rank-deficient (the trained ViT-B of the
    paper's Table 1 has nullity 13, rank 755); random weights are full rank otherwise.
    """
    build_vit(path, seed, 768, 3072, 12, patch_rank)


def build_vit_l16(path: str, seed: int) -> None:
    """ViT-L/16-shaped model with random weights (width 1024, MLP 4096, 24 blocks)."""
    build_vit(path, seed, 1024, 4096, 24)


def build_vit(path: str, seed: int, d: int, hidden: int, blocks: int,
              patch_rank: int | None = None) -> None:
    """ViT-shaped model (patch 16, width d, MLP hidden, blocks) with random weights."""
    rng = np.random.default_rng(seed)
    patch = _weight(rng, (d, 3 * 16 * 16), 768)
    if patch_rank is not None:
        u, s, vt = np.linalg.svd(patch.astype(np.float64))
        s[patch_rank:] = 0.0
        patch = ((u * s) @ vt).astype(np.float32)
    inits = [numpy_helper.from_array(patch.reshape(d, 3, 16, 16), "patch.w"),
             numpy_helper.from_array(np.array([1, d, 196], np.int64), "tok_shape"),
             numpy_helper.from_array(np.array([d, d, d], np.int64), "qkv_sizes")]
    nodes = [helper.make_node("Conv", ["x", "patch.w"], ["pe"], kernel_shape=[16, 16],
                              strides=[16, 16]),
             helper.make_node("Reshape", ["pe", "tok_shape"], ["pe3"]),
             helper.make_node("Transpose", ["pe3"], ["t0"], perm=[0, 2, 1])]
    x = "t0"
    for b in range(blocks):
        for name, (q, p) in [("qkv", (d, 3 * d)), ("proj", (d, d)), ("fc1", (d, hidden)),
                             ("fc2", (hidden, d))]:
            w = f"b{b}.{name}.w"
            inits.append(numpy_helper.from_array(_weight(rng, (q, p), q), w))
            nodes.append(helper.make_node("MatMul", [x, w], [f"b{b}.{name}"]))
            x = f"b{b}.{name}"
            if name == "qkv":
                nodes.append(helper.make_node("Split", [x, "qkv_sizes"],
                                              [f"{x}.q", f"{x}.k", f"{x}.v"], axis=-1))
                nodes.append(helper.make_node("Sum", [f"{x}.q", f"{x}.k", f"{x}.v"],
                                              [f"{x}.s"]))
                x = f"{x}.s"
            if name == "fc1":
                nodes.append(helper.make_node("Relu", [x], [f"{x}.r"]))
                x = f"{x}.r"
    inits.append(numpy_helper.from_array(_weight(rng, (d, 1000), d), "head.w"))
    nodes.append(helper.make_node("MatMul", [x, "head.w"], ["logits"]))
    _save(nodes, inits, ("x", [1, 3, 224, 224]), "logits", path)


def build_head(path: str, seed: int, q: int, p: int) -> None:
    """One MatMul with a (q, p) random float32 weight (external data): a q-wide projection
    onto p outputs, such as a vocabulary head."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(_weight(rng, (q, p), q), "head.w")]
    _save([helper.make_node("MatMul", ["x", "head.w"], ["logits"])], inits, ("x", [1, q]),
          "logits", path)


SHAPES: dict[str, Callable[[str, int], None]] = {
    "alexnet": build_alexnet, "vit-b16": build_vit_b16, "vgg16": build_vgg16,
    "vit-l16": build_vit_l16,
    # Long SVD-path blocks (streamed QR), and one just over the SVD/Gram switch to compare.
    "head-256x200000": lambda path, seed: build_head(path, seed, 256, 200_000),
    "head-257x200000": lambda path, seed: build_head(path, seed, 257, 200_000),
    "head-128x1000000": lambda path, seed: build_head(path, seed, 128, 1_000_000)}
GROUPS = {"all": ["alexnet", "vit-b16"], "large": ["vgg16", "vit-l16"],
          "heads": ["head-256x200000", "head-257x200000", "head-128x1000000"]}


# ---------------------------------------------------------------- phases (run in subprocesses)


def _peak_mb() -> float:
    """Peak resident memory of this process (VmHWM: it starts afresh at exec, unlike
    ru_maxrss, which a spawned child inherits from its parent on Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def phase_audit(path: str, queue: mp.Queue) -> None:
    """Audit with onnxcollide; report time, peak memory and per-layer ranks."""
    from onnxcollide.audit.model import audit_model

    start = time.perf_counter()
    audit = audit_model(path)
    seconds = time.perf_counter() - start
    ranks = [(r.layer.nodes[0], r.rank, r.decision.margin, r.decision.method) for r in audit.rows]
    queue.put({"seconds": seconds, "peak_mb": _peak_mb(), "ranks": ranks})


def _weight_layers(path: str) -> list:
    """Every linear weight of the model as the audit reads it (default convention)."""
    from onnxcollide.audit.layers import build_layer
    from onnxcollide.audit.model import AuditSettings
    from onnxcollide.graph.linear_ops import find_linear_ops
    from onnxcollide.graph.load import load_model
    from onnxcollide.graph.shapes import infer_shapes

    model = load_model(path)
    infos = infer_shapes(model, {})
    sites, _ = find_linear_ops(model)
    return [build_layer(s, infos, AuditSettings().convention) for s in sites]


def phase_naive(path: str, queue: mp.Queue) -> None:
    """numpy.linalg.matrix_rank on each weight matrix (the same matrices the audit reads).

    ``path`` is ``file|dtype``: dtype ``stored`` runs the SVD in the weight's own dtype (what a
    user gets from matrix_rank on the weights), ``float64`` on a float64 copy (the precision the
    audit's decisions are checked against).
    """
    path, naive_dtype = path.split("|")
    layers = _weight_layers(path)
    start = time.perf_counter()
    ranks = []
    for layer in layers:
        blocks = np.array(layer.load_blocks())
        # The NumPy rule with eps of the dtype the weight is computed in, also for float64 runs.
        rtol = max(layer.q, layer.p) * float(np.finfo(blocks.dtype).eps)
        if naive_dtype == "float64":
            blocks = blocks.astype(np.float64)
        if blocks.shape[0] == 1:
            rank = int(np.linalg.matrix_rank(blocks[0], rtol=rtol))
        else:  # block diagonal: the same rule as matrix_rank on the whole matrix
            sigmas = np.linalg.svd(blocks, compute_uv=False)
            rank = int((sigmas > sigmas.max() * rtol).sum())
        ranks.append((layer.nodes[0], rank))
    queue.put({"seconds": time.perf_counter() - start, "peak_mb": _peak_mb(), "ranks": ranks})


def phase_gram_floor(path: str, queue: mp.Queue) -> None:
    """Time only the float64 Gram matrices the audit forms (blocks with min dim > 256).

    No certified decision can take less than this: it is the ceiling on the speedup
    (naive time / floor) for an engine that decides in float64 from Gram matrices.
    """
    from onnxcollide.linalg.spectral import SVD_MAX_DIM, gram_matrix

    layers = _weight_layers(path)
    seconds = 0.0
    for layer in layers:
        blocks = layer.load_blocks()
        if min(blocks.shape[1:]) <= SVD_MAX_DIM:
            continue
        start = time.perf_counter()
        for block in blocks:
            gram_matrix(block)
        seconds += time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_mb": _peak_mb()})


def phase_lead(path: str, queue: mp.Queue) -> None:
    """The issue's lead on the largest Gram-path weight: Gram + Cholesky vs matrix_rank."""
    import scipy.linalg

    from onnxcollide.linalg.spectral import _largest_eigenvalue, gram_matrix

    layers = [layer for layer in _weight_layers(path) if layer.groups == 1]
    layer = max(layers, key=lambda lay: lay.q * lay.p * min(lay.q, lay.p))
    matrix = layer.load_blocks()[0]
    start = time.perf_counter()
    gram = gram_matrix(matrix)
    gram_s = time.perf_counter() - start
    start = time.perf_counter()
    sigma_max = math.sqrt(max(_largest_eigenvalue(gram)[0], 0.0))
    sigma_max_s = time.perf_counter() - start
    tol = sigma_max * max(matrix.shape) * float(np.finfo(matrix.dtype).eps)
    gram[np.diag_indices(gram.shape[0])] -= tol * tol
    start = time.perf_counter()
    _, info = scipy.linalg.lapack.dpotrf(gram, lower=0, clean=0, overwrite_a=1)
    cholesky_s = time.perf_counter() - start
    start = time.perf_counter()
    rank = int(np.linalg.matrix_rank(matrix))
    naive_s = time.perf_counter() - start
    queue.put({"node": layer.nodes[0], "shape": list(matrix.shape), "gram_s": gram_s,
               "sigma_max_s": sigma_max_s, "cholesky_s": cholesky_s, "full_rank": info == 0,
               "naive_s": naive_s, "naive_rank": rank})


def phase_build(path: str, queue: mp.Queue) -> None:
    """Build one shape (name and seed packed into ``path`` as ``file|name|seed``)."""
    file, name, seed = path.split("|")
    SHAPES[name](file, int(seed))
    queue.put({"peak_mb": _peak_mb()})


def run_phase(target: Callable[[str, mp.Queue], None], path: str) -> dict:
    """Run one phase in a fresh process and return what it reported."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(path, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def bench(name: str, path: str, naive: str) -> dict:
    """Audit and (optionally) naive timings for one model, with a rank comparison."""
    audit = run_phase(phase_audit, path)
    row = {"model": name, "layers": len(audit["ranks"]), "audit_s": audit["seconds"],
           "audit_peak_mb": audit["peak_mb"]}
    print(f"[{name}] onnxcollide audit: {audit['seconds']:.2f} s, peak {audit['peak_mb']:.0f} MB, "
          f"{len(audit['ranks'])} layers", flush=True)
    floor = run_phase(phase_gram_floor, path)
    row["gram_floor_s"] = floor["seconds"]
    print(f"[{name}] float64 Gram matrices alone: {floor['seconds']:.2f} s", flush=True)
    if naive == "none":
        return row
    base = run_phase(phase_naive, f"{path}|{naive}")
    disagree = [(a[0], a[1], b[1], a[2], a[3]) for a, b in
                zip(audit["ranks"], base["ranks"], strict=True) if a[1] != b[1]]
    row.update(naive_dtype=naive, naive_s=base["seconds"], naive_peak_mb=base["peak_mb"],
               speedup=base["seconds"] / audit["seconds"], rank_disagreements=disagree)
    row["speedup_ceiling"] = base["seconds"] / floor["seconds"] if floor["seconds"] else None
    print(f"[{name}] naive matrix_rank loop ({naive}): {base['seconds']:.2f} s, peak "
          f"{base['peak_mb']:.0f} MB; speedup {row['speedup']:.1f}x (ceiling with float64 Gram "
          f"matrices: {row['speedup_ceiling'] or float('nan'):.1f}x); ranks agree on "
          f"{row['layers'] - len(disagree)}/{row['layers']} layers", flush=True)
    for node, ours, theirs, margin, method in disagree:
        print(f"    {node}: onnxcollide {ours} ({method}, margin {margin:.3g}) vs "
              f"matrix_rank {theirs}", flush=True)
    row["lead"] = lead = run_phase(phase_lead, path)
    certificate_s = lead["gram_s"] + lead["cholesky_s"]
    ratio = lead["naive_s"] / certificate_s
    shape = "x".join(map(str, lead["shape"]))
    print(f"[{name}] the issue's lead on the largest weight ({lead['node']}, {shape}): "
          f"matrix_rank {lead['naive_s']:.2f} s; float64 Gram {lead['gram_s']:.2f} s + Cholesky "
          f"{lead['cholesky_s']:.2f} s = {certificate_s:.2f} s ({ratio:.1f}x; "
          f"the issue measured 18x); with sigma_max (Lanczos, {lead['sigma_max_s']:.2f} s) "
          f"{lead['naive_s'] / (certificate_s + lead['sigma_max_s']):.1f}x", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="ONNX files to time instead of built shapes")
    parser.add_argument("--shape", choices=[*SHAPES, *GROUPS], default="all",
                        help="all: the issue's AlexNet and ViT-B/16 shapes; large: VGG-16 and "
                             "ViT-L/16; heads: 256x200000, 257x200000 and 128x1000000 "
                             "projections")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive", choices=["stored", "float64", "none"], default="stored",
                        help="naive loop precision: the weights' own dtype (default), a float64 "
                             "copy, or none")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    import numpy
    import scipy

    print(f"numpy {numpy.__version__}, scipy {scipy.__version__}, {os.cpu_count()} cores",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        targets = [(os.path.basename(m), m) for m in args.models]
        if not targets:
            names = GROUPS.get(args.shape, [args.shape])
            for name in names:
                path = os.path.join(folder, f"{name}.onnx")
                run_phase(phase_build, f"{path}|{name}|{args.seed}")
                targets.append((f"{name} (random, seed {args.seed})", path))
        for name, path in targets:
            rows.append(bench(name, path, args.naive))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
