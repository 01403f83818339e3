#!/usr/bin/env python3
"""Time `onnxcollide check` on a folder of models against their `onnxcollide audit` times.

The issue's targets: cold, within 1.3x of the sum of the models' audit times on one core;
faster than that sum with --jobs 2; warm (every model from the cache) under 1 s in all.

Copies the models (default: the 7 shared real models, as copied into tests/data/, and the 4 of
models/) into a temporary folder, then, each a fresh process:
  1. `onnxcollide audit MODEL -f json -o /dev/null` per model, pinned to one core (taskset
     where there is one), summed: what a CI script auditing each model would take;
  2. `onnxcollide audit` of all models in one process (one core): the stricter comparison;
  3. `onnxcollide check FOLDER --no-cache --jobs 1`, one core (cold);
  4. `onnxcollide check FOLDER --no-cache --jobs 2` (cold, two processes, every core);
  5. `onnxcollide check FOLDER --cache-dir TMP` twice: the second run is warm.
BLAS runs one thread per process throughout (as the test suite does). Exit codes of check are
1 (two shipped models break the default policy); that is expected.

    python scripts/bench_check.py              # one run of each
    python scripts/bench_check.py --repeat 3   # the median of three
    python scripts/bench_check.py folder/      # other models
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The 7 real models of ../shared/models/ (copied into tests/data/ with their sources) and those
# of models/ (4 when the issue was filed, 9 now). tests/data/'s other fixtures are left out.
SHARED = ("lenet5_mnist_qdq.onnx", "lenet5_mnist_torch.onnx", "mnist-8_cntk.onnx",
          "mtcnn_pnet.onnx", "ppocr_mobile_v2_cls.onnx", "super_resolution_10.onnx",
          "ultraface_slim320.onnx")
DEFAULT_MODELS = [*(ROOT / "tests" / "data" / name for name in SHARED),
                  *sorted((ROOT / "models").glob("*.onnx"))]


def _one_core() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def _timed(args: list[str], cwd: str, pin: bool) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    command = [*(_one_core() if pin else []), sys.executable, "-m", "onnxcollide", *args]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def _median(times: list[float]) -> float:
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model files or folders (default: the 11)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (the median)")
    options = parser.parse_args()
    models = [Path(p) for m in options.models for p in
              (glob.glob(f"{m}/**/*.onnx", recursive=True) if os.path.isdir(m) else [m])] \
        or DEFAULT_MODELS
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "models"
        folder.mkdir()
        for model in models:
            shutil.copy(model, folder / model.name)
        names = sorted(p.name for p in folder.glob("*.onnx"))
        rows: dict[str, list[float]] = {k: [] for k in
                                        ("sum", "one", "cold1", "cold2", "warm")}
        for _ in range(options.repeat):
            rows["sum"].append(sum(_timed(["audit", f"models/{n}", "-f", "json", "-o",
                                           os.devnull], work, True) for n in names))
            rows["one"].append(_timed(["audit", *[f"models/{n}" for n in names], "-f", "json",
                                       "-o", os.devnull], work, True))
            rows["cold1"].append(_timed(["check", "models", "--no-cache", "--jobs", "1"],
                                        work, True))
            rows["cold2"].append(_timed(["check", "models", "--no-cache", "--jobs", "2"],
                                        work, False))
            cache = Path(work) / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            _timed(["check", "models", "--cache-dir", str(cache)], work, False)
            rows["warm"].append(_timed(["check", "models", "--cache-dir", str(cache)], work,
                                       False))
    total = _median(rows["sum"])
    print(f"{len(names)} models, {options.repeat} run(s) each (median), "
          f"{os.cpu_count()} cores, taskset: {'yes' if _one_core() else 'no'}")
    print(f"sum of {len(names)} 'audit MODEL' runs, one core     {total:7.2f} s")
    print(f"one 'audit' of all models, one core          {_median(rows['one']):7.2f} s")
    for key, label in (("cold1", "check --no-cache --jobs 1, one core"),
                       ("cold2", "check --no-cache --jobs 2"),
                       ("warm", "check, warm cache")):
        value = _median(rows[key])
        print(f"{label:<44} {value:7.2f} s  ({value / total:.2f}x the sum)")
    cold1, cold2, warm = (_median(rows[k]) for k in ("cold1", "cold2", "warm"))
    print(f"targets: cold <= 1.3x sum: {'met' if cold1 <= 1.3 * total else 'NOT met'}; "
          f"--jobs 2 < sum: {'met' if cold2 < total else 'NOT met'}; warm < 1 s: "
          f"{'met' if warm < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
