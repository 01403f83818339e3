"""Benchmark ``onnxcollide compare`` against the two audits it runs.

The target (issue 15): comparing two models costs their two audits plus at most 10% for the
alignment and weight relations. Measured on

* the ViT-like pair of ``models/pairs`` (the TorchScript export against its QDQ copy), and
* a 100-layer pair built here: a chain of 100 MatMul(256 x 256) + ReLU, against the same
  network written as Gemm with ``transB=1`` (weights stored transposed) and renamed nodes.

For each pair: the median over ``--repeat`` interleaved runs of (a) ``audit_model`` of each
model and (b) ``compare_models`` of the pair, every run with the model cache cleared, so both
load the files. The overhead is (b) - (a), as a share of (a), in CPU time of this process
(BLAS single-threaded), which a busy machine disturbs less than wall time; wall times are
printed too. Exit 1 when an overhead is over 10%.

Usage::

    python scripts/bench_compare.py [--repeat 5] [--layers 100] [--width 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxcollide.audit.model import audit_model  # noqa: E402
from onnxcollide.compare.model import compare_models  # noqa: E402
from onnxcollide.graph.load import _load_cached  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PAIRS = REPO / "models" / "pairs"


def chain(path: Path, layers: int, width: int, as_gemm: bool, seed: int = 0) -> Path:
    """A chain of ``layers`` linear layers of ``width`` x ``width`` with ReLU between."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for k in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        out = f"h{k}"
        if as_gemm:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"g{k}.weight"))
            nodes.append(helper.make_node("Gemm", [current, f"g{k}.weight"], [out], transB=1,
                                          name=f"gemm_{k}"))
        else:
            inits.append(numpy_helper.from_array(w, f"w{k}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{k}"], [out], name=f"mm{k}"))
        if k < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{k}"], name=f"relu{k}"))
            out = f"r{k}"
        current = out
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``action``, the model cache cleared first."""
    _load_cached.cache_clear()
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, a: Path, b: Path, repeat: int) -> float:
    """Print and return compare's CPU-time overhead over the two audits (medians of
    ``repeat`` interleaved runs: audits, then compare, so a busy machine's load hits both
    alike; CPU time of this process, BLAS single-threaded, is what the target is judged on)."""
    audits, compares = [], []
    for _ in range(repeat):
        audits.append(_timed(lambda: (audit_model(str(a)), audit_model(str(b)))))
        compares.append(_timed(lambda: compare_models([str(a), str(b)])))
    wall_a, cpu_a = (statistics.median(t[k] for t in audits) for k in (0, 1))
    wall_c, cpu_c = (statistics.median(t[k] for t in compares) for k in (0, 1))
    result = compare_models([str(a), str(b)])
    share = (cpu_c - cpu_a) / cpu_a
    print(f"{name}: CPU 2 audits {cpu_a * 1000:.1f} ms, compare {cpu_c * 1000:.1f} ms, "
          f"overhead {(cpu_c - cpu_a) * 1000:.1f} ms = {share:.1%}; wall {wall_a * 1000:.1f} "
          f"/ {wall_c * 1000:.1f} ms ({len(result.others[0].pairs)} layers aligned, "
          f"same={result.same})")
    return share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    print(f"median of {args.repeat} runs each; numpy {np.__version__}, "
          f"BLAS threads {os.environ['OPENBLAS_NUM_THREADS']}")
    shares = [bench("vit (torchscript vs qdq)", PAIRS / "vit_torchscript.onnx",
                    PAIRS / "vit_qdq.onnx", args.repeat)]
    with tempfile.TemporaryDirectory() as tmp:
        a = chain(Path(tmp) / "chain_matmul.onnx", args.layers, args.width, as_gemm=False)
        b = chain(Path(tmp) / "chain_gemm.onnx", args.layers, args.width, as_gemm=True)
        shares.append(bench(f"{args.layers}-layer chain ({args.width}x{args.width}, MatMul "
                            "vs Gemm transB)", a, b, args.repeat))
    return 0 if max(shares) <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
