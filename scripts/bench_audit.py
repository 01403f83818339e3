#!/usr/bin/env python3
"""Time `onnxcollide audit` on models shaped like real PyTorch exports, against its floor.

For each architecture (AlexNet, VGG-16, ViT-B/16, ResNet-50 by default; ViT-L/16 with external
data too) it writes the model as PyTorch exports it (``bench_models.py``: one ``.onnx`` file,
default initialisation; and the external-data variant), then, each in a fresh process:

1. **audit**: ``onnxcollide audit MODEL -f json -o FILE`` as a user runs it; the whole process
   is timed (starting Python, importing, loading, deciding, writing), and its peak memory is
   read as it exits: its own peak resident memory (VmHWM) plus, for each worker process that
   decided layers, how far the worker's peak rose above what it started with (an upper
   bound: as if all peaked at once);
2. **floor**: the least work any engine that certifies every rank in float64 does: read and
   parse the file (``onnx.load``, external data included, each weight as an array), then one
   float64 copy and one ``dsyrk`` Gram matrix (short side squared) of every weight block;
   timed alone, after the audit, in the same run;
3. **naive**: ``numpy.linalg.matrix_rank``'s work on every weight matrix (the SVD in the
   weight's dtype, its singular values compared with ``max(q, p) * eps * sigma_max``), once
   per architecture (the single-file and external variants hold the same weights).

It prints one row per model: audit, floor, audit/floor against the target (audit within
1.5 x floor + 1 s), naive and naive/audit, peak memory against the file size (at most
1.5 x file + 300 MB for a single file; under 600 MB with external data; ViT-L/16: under 60 s
and 1 GB), and whether the ranks equal the naive loop's wherever its decision is clear (its
own margin min(kept / tol, tol / dropped) at least 10).

    python scripts/bench_audit.py                          # the four architectures, both variants
    python scripts/bench_audit.py --models resnet50 vit-b16 --variants single
    python scripts/bench_audit.py --models vit-l16 --variants external
    python scripts/bench_audit.py --keep /tmp/bench-models # reuse the written models next time
    python scripts/bench_audit.py path/to/model.onnx       # any model
    python scripts/bench_audit.py --device cuda            # Gram matrices on the GPU (issue 16)
    python scripts/bench_audit.py --threads --models resnet50 vit-b16  # workers vs BLAS threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import BUILDERS

DEFAULT_MODELS = ["alexnet", "vgg16", "vit-b16", "resnet50", "vit-l16"]
SINGLE_ONLY_SKIP = {"vit-l16"}  # ViT-L/16: external data only (the target)
CLEAR = 10.0  # a naive decision is clear when its own margin is at least this

# Run in a fresh interpreter: the CLI as a user runs it, its peak memory written at exit.
# The audit forks worker processes (audit.parallel); each records, after every layer, how far
# its peak resident memory rose above what it had when it started (the pages it shares with
# the audit process are counted there), and the peak written is the audit process's own
# (VmHWM) plus every worker's largest rise: an upper bound, as if all peaked at once.
AUDIT_WRAPPER = """
import atexit, os, sys
def _kb(key):
    with open('/proc/self/status') as status:
        return next(int(l.split()[1]) for l in status if l.startswith(key))
_rises = os.environ['BENCH_PEAK_FILE'] + '.workers'
import onnxcollide.audit.parallel as parallel
_start, _decide, _base = parallel._start_worker, parallel._decide_in_worker, [0]
def _start_worker():
    _start()
    _base[0] = _kb('VmRSS:')
def _decide_in_worker(index):
    result = _decide(index)
    with open(_rises, 'a') as out:
        out.write(f'{os.getpid()} {_kb("VmHWM:") - _base[0]}\\n')
    return result
parallel._start_worker, parallel._decide_in_worker = _start_worker, _decide_in_worker
def _peak():
    rises = {}
    if os.path.exists(_rises):
        with open(_rises) as handle:
            for line in handle:
                pid, rise = line.split()
                rises[pid] = max(rises.get(pid, 0), int(rise))
        os.remove(_rises)
    with open(os.environ['BENCH_PEAK_FILE'], 'w') as out:
        out.write(str(_kb('VmHWM:') + sum(rises.values())))
atexit.register(_peak)
sys.argv = ['onnxcollide', *sys.argv[1:]]
from onnxcollide.cli.entry import run
run()
"""


@dataclass
class Row:
    """The figures of one model."""

    model: str
    variant: str
    file_mb: float
    audit_s: float = 0.0
    audit_cpu_s: float = 0.0
    peak_mb: float = 0.0
    floor_s: float = 0.0
    floor_read_s: float = 0.0
    floor_gram_s: float = 0.0
    naive_s: float | None = None
    layers: int = 0
    clear: int = 0
    agree_clear: int = 0
    agree_all: int = 0
    disagreements: list[str] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)

    @property
    def time_target_s(self) -> float:
        return 60.0 if self.model == "vit-l16" else 1.5 * self.floor_s + 1.0

    @property
    def peak_target_mb(self) -> float:
        if self.model == "vit-l16":
            return 1000.0
        return 600.0 if self.variant == "external" else 1.5 * self.file_mb + 300.0

    @property
    def met(self) -> bool:
        ranks = self.agree_clear == self.clear
        return self.audit_s <= self.time_target_s and self.peak_mb <= self.peak_target_mb \
            and ranks


# ---------------------------------------------------------------- phases


def _file_mb(path: str) -> float:
    size = os.path.getsize(path)
    data = path + ".data"
    if os.path.exists(data):
        size += os.path.getsize(data)
    return size / 1e6


def run_audit(path: str, device: str) -> dict:
    """The CLI in a fresh process: wall time, CPU time, peak memory, the JSON it wrote (in a
    temporary folder, removed after: nothing is written beside the model)."""
    with tempfile.TemporaryDirectory(prefix="bench_audit-") as folder:
        return _timed_audit(path, os.path.join(folder, "audit.json"),
                            os.path.join(folder, "peak"), device)


def _timed_audit(path: str, out_json: str, peak_path: str, device: str) -> dict:
    """``run_audit`` with its report and peak-memory files named."""
    args = [sys.executable, "-c", AUDIT_WRAPPER, "audit", path, "-f", "json", "-o", out_json,
            "--no-progress"]
    if device != "cpu":
        args += ["--device", device]
    env = {**os.environ, "BENCH_PEAK_FILE": peak_path}
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode() if process.stderr else ""
    process.stderr.close() if process.stderr else None
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"audit of {path} failed ({process.returncode}): {stderr.strip()}")
    with open(peak_path) as handle:
        peak_mb = int(handle.read()) / 1024.0
    with open(out_json) as handle:
        report = json.load(handle)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": peak_mb,
            "layers": report["models"][0]["layers"]}


def _in_child(function: str, *args: str) -> dict:
    """Run ``function(*args)`` of this script in a fresh interpreter; its JSON result."""
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})"
            f"; import bench_audit; print(json.dumps(bench_audit.{function}(*sys.argv[1:])))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{function} failed: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weight_arrays(proto: object) -> dict:
    """Initializer name -> array (onnx.numpy_helper), as a parse-based tool reads them."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}  # type: ignore


def floor(path: str) -> dict:
    """Read and parse the file, then a float64 copy and a dsyrk Gram matrix of every weight
    block; returns the two times (the blocks are located first, untimed)."""
    import numpy as np
    import onnx
    from scipy.linalg import blas

    blocks = _block_plan(path)
    start = time.perf_counter()
    proto = onnx.load_model(path)  # reads external data too
    arrays = _weight_arrays(proto)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    for name, groups, transposed in blocks:
        weight = arrays[name]
        matrix = weight.reshape(weight.shape[0], -1)
        for part in np.split(matrix, groups, axis=0):
            as64 = np.array(part.T if transposed else part, dtype=np.float64, order="C")
            rows, cols = as64.shape  # C order: as64.T is a Fortran view, no copy
            blas.dsyrk(1.0, as64.T, trans=1 if rows <= cols else 0, lower=0)
    gram_s = time.perf_counter() - start
    return {"read_s": read_s, "gram_s": gram_s}


def _block_plan(path: str) -> list[tuple[str, int, bool]]:
    """(initializer, groups, transposed) of every weight the audit reads from one initializer
    (the Gram matrix's size does not depend on the transposition; it is kept for the copy)."""
    from onnxcollide.audit.layers import build_layer
    from onnxcollide.audit.model import AuditSettings, _unique_layers
    from onnxcollide.graph.linear_ops import find_linear_ops
    from onnxcollide.graph.load import load_model
    from onnxcollide.graph.shapes import infer_shapes

    model = load_model(path)
    infos = infer_shapes(model, {})
    sites, _ = find_linear_ops(model)
    layers = _unique_layers([build_layer(s, infos, AuditSettings().convention) for s in sites])
    plan = []
    for layer in layers:
        if len(layer.roots) != 1:
            continue
        plan.append((layer.roots[0].split("::")[-1], layer.groups, "^T" not in layer.layout))
    return plan


def naive(path: str) -> dict:
    """numpy.linalg.matrix_rank's work (SVD in the weight's dtype, NumPy's rule) on every
    weight matrix; the time, and each rank with its own margin."""
    import numpy as np

    from onnxcollide.audit.layers import build_layer
    from onnxcollide.audit.model import AuditSettings, _unique_layers
    from onnxcollide.graph.linear_ops import find_linear_ops
    from onnxcollide.graph.load import load_model
    from onnxcollide.graph.shapes import infer_shapes

    model = load_model(path)
    sites, _ = find_linear_ops(model)
    infos = infer_shapes(model, {})
    layers = _unique_layers([build_layer(s, infos, AuditSettings().convention) for s in sites])
    start = time.perf_counter()
    ranks = []
    for layer in layers:
        blocks = np.array(layer.load_blocks())
        rtol = max(layer.q, layer.p) * float(np.finfo(blocks.dtype).eps)
        sigmas = np.linalg.svd(blocks, compute_uv=False).ravel()  # what matrix_rank does
        tol = float(sigmas.max()) * rtol
        kept, dropped = sigmas[sigmas > tol], sigmas[sigmas <= tol]
        ratios = ([float(kept.min()) / tol] if kept.size else []) + \
            ([tol / float(dropped.max())] if dropped.size and dropped.max() > 0 else [])
        ranks.append([layer.nodes[0], int(kept.size), min(ratios) if ratios else None])
    return {"seconds": time.perf_counter() - start, "ranks": ranks}


def threads(path: str, mode: str) -> dict:
    """Decide every layer of the model (loading untimed) one way: ``blas``, one layer at a
    time with BLAS's own threads (run with OPENBLAS_NUM_THREADS unset); ``threads``, one
    worker thread per core with single-threaded BLAS; or ``workers``, the audit's way (worker
    processes where the work pays for them, ``audit.parallel``)."""
    import onnxcollide.audit.model as audit_module
    from onnxcollide.audit.layers import build_layer
    from onnxcollide.audit.model import (
        AuditSettings,
        _decide,
        _decide_all,
        _unique_layers,
    )
    from onnxcollide.graph.linear_ops import find_linear_ops
    from onnxcollide.graph.load import load_model
    from onnxcollide.graph.shapes import infer_shapes
    from onnxcollide.linalg.spectral import ToleranceRule

    model = load_model(path)
    sites, _ = find_linear_ops(model)
    infos = infer_shapes(model, {})
    layers = _unique_layers([build_layer(s, infos, AuditSettings().convention)
                             for s in sites])
    rule = ToleranceRule()
    if mode == "threads":
        audit_module.processes_pay = lambda _layers: False  # type: ignore[assignment]
    start, cpu = time.perf_counter(), time.process_time()
    if mode == "blas":
        ranks = [_decide(layer, rule).rank for layer in layers]
    else:
        ranks = [d.rank for d in _decide_all(layers, rule, None)]
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "ranks": ranks}


def compare_threads(name: str, path: str) -> None:
    """Print the decisions' time each way (``threads``), each in a fresh process."""
    blas = _in_child("threads", path, "blas")
    threaded = _in_child("threads", path, "threads")
    workers = _in_child("threads", path, "workers")
    same = "same ranks" if blas["ranks"] == threaded["ranks"] == workers["ranks"] else \
        "RANKS DIFFER"
    print(f"  {name}: decisions one layer at a time with BLAS's threads {blas['seconds']:.2f} s "
          f"(cpu {blas['cpu_s']:.2f} s); one worker thread per core, single-threaded BLAS "
          f"{threaded['seconds']:.2f} s (cpu {threaded['cpu_s']:.2f} s); the audit's workers "
          f"(processes where they pay) {workers['seconds']:.2f} s; {same}", flush=True)


# ---------------------------------------------------------------- one model


def bench_model(name: str, variant: str, path: str, naive_result: dict | None,
                device: str) -> Row:
    """Audit and floor of one file; ranks compared with ``naive_result`` where given."""
    row = Row(name, variant, _file_mb(path))
    audit = run_audit(path, device)
    row.audit_s, row.audit_cpu_s, row.peak_mb = audit["seconds"], audit["cpu_s"], \
        audit["peak_mb"]
    floor_result = _in_child("floor", path)
    row.floor_read_s, row.floor_gram_s = floor_result["read_s"], floor_result["gram_s"]
    row.floor_s = row.floor_read_s + row.floor_gram_s
    layers = audit["layers"]
    row.layers = len(layers)
    for layer in layers:
        row.methods[layer["method"]] = row.methods.get(layer["method"], 0) + 1
    if naive_result is not None:
        row.naive_s = naive_result["seconds"]
        for layer, (node, rank, margin) in zip(layers, naive_result["ranks"], strict=True):
            clear = margin is None or margin >= CLEAR
            same = layer["rank"] == rank
            row.clear += clear
            row.agree_clear += clear and same
            row.agree_all += same
            if not same:
                row.disagreements.append(
                    f"{node}: audit {layer['rank']} ({layer['method']}, margin "
                    f"{layer['margin']}), naive {rank} (margin {margin:.4g})")
    return row


def _ranks_cell(row: Row) -> str:
    """How many ranks equal the naive loop's ("-": the loop was not run)."""
    if row.naive_s is None:
        return "- (not compared)"
    return f"{row.agree_clear}/{row.clear} clear, {row.agree_all}/{row.layers} all"


def compile_bytecode() -> bool:
    """Compile onnxcollide's modules to bytecode, as ``pip install`` does and as the first
    run does wherever Python may write it. Without it, a machine that sets
    PYTHONDONTWRITEBYTECODE (this one does) recompiles every module in each timed process,
    about 0.25 s that no user's installed copy pays. True if every module compiled."""
    import compileall

    import onnxcollide

    folder = os.path.dirname(os.path.abspath(onnxcollide.__file__))
    return bool(compileall.compile_dir(folder, quiet=1))


def _print_row(row: Row) -> None:
    naive_s = f"{row.naive_s:.2f} s" if row.naive_s is not None else "-"
    ratio = f"{row.naive_s / row.audit_s:.1f}x" if row.naive_s is not None else "-"
    print(f"| {row.model} ({row.variant}) | {row.file_mb:.0f} MB | {row.audit_s:.2f} s "
          f"(cpu {row.audit_cpu_s:.2f} s) | {row.floor_s:.2f} s (read {row.floor_read_s:.2f} + "
          f"Gram {row.floor_gram_s:.2f}) | {row.audit_s / row.floor_s:.2f}x "
          f"(<= {row.time_target_s:.2f} s) | {naive_s} | {ratio} | {row.peak_mb:.0f} MB "
          f"(<= {row.peak_target_mb:.0f} MB) | {_ranks_cell(row)} | "
          f"{'met' if row.met else 'NOT MET'} |",
          flush=True)


HEADER = ("| model | file | audit (whole process) | floor | audit/floor (target) | naive "
          "loop | naive/audit | peak memory (target) | ranks = naive | targets |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def _model_path(folder: str, name: str, variant: str, seed: int) -> str:
    suffix = "-ext" if variant == "external" else ""
    return os.path.join(folder, f"{name}-seed{seed}{suffix}.onnx")


def _ensure_model(folder: str, name: str, variant: str, seed: int) -> str:
    """The model file, written by bench_models.py unless it is there already."""
    path = _model_path(folder, name, variant, seed)
    if not os.path.exists(path):
        start = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__),
                                                     "bench_models.py"),
                        name, "--out", folder, "--seed", str(seed), "--name", path]
                       + (["--external"] if variant == "external" else []), check=True,
                       stdout=subprocess.DEVNULL)
        print(f"wrote {path} in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="ONNX files to time instead of built models")
    parser.add_argument("--models", nargs="+", choices=list(BUILDERS), default=DEFAULT_MODELS)
    parser.add_argument("--variants", nargs="+", choices=["single", "external"],
                        default=["single", "external"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naive", choices=["yes", "no"], default="yes",
                        help="run the naive matrix_rank loop (once per architecture)")
    parser.add_argument("--keep", metavar="DIR",
                        help="write the models here and reuse them (default: a temporary "
                             "folder, removed at the end)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the audit forms its Gram matrices (audit --device)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--threads", action="store_true",
                        help="only compare the decisions' time with BLAS's own threads, "
                             "one worker thread per core and the audit's workers (single files)")
    args = parser.parse_args(argv)
    import numpy
    import scipy

    print(f"numpy {numpy.__version__}, scipy {scipy.__version__}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the start; onnxcollide's bytecode "
          f"{'compiled' if compile_bytecode() else 'NOT compiled'} first (as pip install "
          "does)", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or scratch
        os.makedirs(folder, exist_ok=True)
        if args.threads:
            for name in args.models:
                variant = "external" if name in SINGLE_ONLY_SKIP else "single"
                compare_threads(name, _ensure_model(folder, name, variant, args.seed))
            return 0
        print(HEADER, flush=True)
        for path in args.paths:
            result = _in_child("naive", path) if args.naive == "yes" else None
            rows.append(bench_model(os.path.basename(path), "given", path, result,
                                    args.device))
            _print_row(rows[-1])
        for name in [] if args.paths else args.models:
            variants = [v for v in args.variants
                        if not (v == "single" and name in SINGLE_ONLY_SKIP)]
            result = None
            for variant in variants:
                path = _ensure_model(folder, name, variant, args.seed)
                if result is None and args.naive == "yes":
                    result = _in_child("naive", path)
                rows.append(bench_model(name, variant, path, result, args.device))
                _print_row(rows[-1])
    for row in rows:
        for line in row.disagreements:
            print(f"  {row.model} ({row.variant}) rank differs: {line}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (2 cores: above 2, other "
          "processes share them and the times are not a quiet machine's)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(r) for r in rows], out, indent=2)
    return 0 if all(r.met for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
