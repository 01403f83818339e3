#!/usr/bin/env python3
"""Which BLAS and LAPACK calls let two threads run side by side (they release the GIL).

The rank engine's calls go through scipy's wrappers (dsyrk, dsymv, dpotrf, dpotrs, dsyevd,
dgemm). This times each call twice in a row in one thread, then once in each of two threads
at the same time, every thread with single-threaded BLAS (``linalg.threads``): a speedup near 2
means the call releases the GIL, near 1 that it holds it. numpy's own calls (matmul,
eigvalsh) are timed beside them. Measured on this 2-core machine (n = 768, numpy 2.4.6,
scipy 1.17.1, two runs): every scipy call 0.8 to 1.2, numpy's 1.1 to 1.9 (matmul and
gram @ x 1.4 to 1.9 in both); hence the audit's worker processes (``audit/parallel.py``).

Usage::

    python scripts/bench_gil.py [--size 768]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import numpy as np
import scipy
import scipy.linalg
from scipy.linalg import blas, lapack

from onnxcollide.linalg.threads import set_local_threads


def calls(n: int, seed: int = 0) -> dict[str, Callable[[], object]]:
    """The timed calls on an (n, n) matrix and its Gram matrix."""
    rng = np.random.default_rng(seed)
    a = np.asfortranarray(rng.standard_normal((n, n)))
    gram = np.asfortranarray(a @ a.T + n * np.eye(n))
    factor = lapack.dpotrf(gram)[0]
    block = np.asfortranarray(a[:, :32])
    x = rng.standard_normal(n)
    return {
        "scipy dsyrk": lambda: blas.dsyrk(1.0, a),
        "scipy dsymv x200": lambda: [blas.dsymv(1.0, gram, x) for _ in range(200)],
        "scipy dpotrf": lambda: lapack.dpotrf(gram),
        "scipy dpotrs x20": lambda: [lapack.dpotrs(factor, block) for _ in range(20)],
        "scipy dsyevd": lambda: scipy.linalg.eigvalsh(gram, driver="evd", check_finite=False),
        "scipy dgemm": lambda: blas.dgemm(1.0, a, a),
        "numpy matmul a.T @ a": lambda: a.T @ a,
        "numpy gram @ x x200": lambda: [gram @ x for _ in range(200)],
        "numpy eigvalsh": lambda: np.linalg.eigvalsh(gram),
    }


def speedup(call: Callable[[], object]) -> tuple[float, float]:
    """(two calls in one thread, one call in each of two threads), seconds."""
    def run() -> None:
        set_local_threads(1)
        call()

    run()
    start = time.perf_counter()
    run()
    run()
    serial = time.perf_counter() - start
    threads = [threading.Thread(target=run) for _ in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return serial, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    args = parser.parse_args()
    print(f"n = {args.size}; numpy {np.__version__}, scipy {scipy.__version__}")
    for name, call in calls(args.size).items():
        serial, parallel = speedup(call)
        print(f"{name:22s} 2 in a row {serial:.3f} s, 2 threads {parallel:.3f} s, "
              f"speedup {serial / parallel:.2f}")


if __name__ == "__main__":
    main()
