#!/usr/bin/env python3
"""Where the rank engine spends its time on a model's large layers, phase by phase.

Each layer is decided in this process, one at a time, with BLAS on ``--threads`` threads (no
worker processes), and the engine's steps are timed exclusively (a step called inside another
is counted once, in the inner one):

- ``gram``: the float64 Gram matrix (reading the weight, the float64 copy, dsyrk): the floor's
  work;
- ``sigma_max lanczos``: sigma_max's Lanczos (ARPACK, dsymv products);
- ``sigma_max cert``: the Cholesky factorisation that proves no eigenvalue lies above it;
- ``rank cholesky``: the factorisation of ``G - tol^2 I`` (the rank's certificate);
- ``kept lanczos``: the smallest kept value, by block Lanczos through that factor;
- ``schur/ldl``: the Schur-complement split and its Lanczos (when that factorisation fails);
- ``deflated``, ``eigh``, ``svd``: the fallbacks.

It prints one row per layer whose short side is at least ``--min-width``, with the time above
the floor (everything but ``gram``) and that time over ``gram``. Run it with ``--threads 1``
and ``--threads 2`` to see which steps gain from BLAS's second thread.

Usage::

    python scripts/bench_phases.py MODEL.onnx [--threads 2] [--min-width 1024]

The step names are the engine's private functions (``linalg/spectral.py``); if one is
renamed, this script says which and stops.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import scipy.sparse.linalg  # noqa: F401  (the engine imports ARPACK on use: not in a phase)

import onnxcollide.audit.model as audit_model
import onnxcollide.linalg.spectral as spectral
from onnxcollide.audit.layers import LinearLayer
from onnxcollide.errors import OnnxCollideError
from onnxcollide.linalg.spectral import RankDecision, ToleranceRule
from onnxcollide.linalg.threads import set_local_threads

PHASES = {  # engine function -> the phase its own time counts as
    "gram_matrix": "gram",
    "_largest_eigenvalue": "sigma_max lanczos",
    "_nothing_above": "sigma_max cert",
    "_cholesky": "rank cholesky",
    "_smallest_eigenvalue_from_cholesky": "kept lanczos",
    "_ldl_after_failure": "schur/ldl",
    "_deflated_rank": "deflated",
    "_upper_eigvalsh": "eigh",
    "_svd_singular_values": "svd",
}
COLUMNS = list(dict.fromkeys(PHASES.values()))


class PhaseClock:
    """Exclusive time per phase: a timed call nested in another is subtracted from it."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self._stack: list[float] = []  # time spent in nested timed calls, per open call

    def wrap(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` timed into ``phase``."""
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                nested = self._stack.pop()
                self.spent[phase] = self.spent.get(phase, 0.0) + total - nested
                if self._stack:
                    self._stack[-1] += total
        return timed


def install(clock: PhaseClock, patch: Callable[[Any, str, Any], None] = setattr) -> None:
    """Time the engine's steps (the functions of PHASES) through ``clock``; ``patch`` sets
    each wrapped function (``setattr``, or a test's ``monkeypatch.setattr``)."""
    missing = [name for name in PHASES if not hasattr(spectral, name)] + \
        [f"audit.model.{name}" for name in ("_decide", "worker_count")
         if not hasattr(audit_model, name)]
    if missing:
        sys.exit(f"bench_phases: the engine has no {', '.join(missing)}: update this "
                 "script to its current names")
    for name, phase in PHASES.items():
        patch(spectral, name, clock.wrap(phase, getattr(spectral, name)))


def timed_decide(clock: PhaseClock, min_width: int, rows: list[LayerTimes]
                 ) -> Callable[..., RankDecision]:
    """``audit.model._decide`` that records a row per wide layer."""
    decide = audit_model._decide

    def decide_and_record(layer: LinearLayer, rule: ToleranceRule, gram: Any = None
                          ) -> RankDecision:
        clock.spent.clear()
        start = time.perf_counter()
        decision = decide(layer, rule, gram)
        total = time.perf_counter() - start
        if layer.groups and min(layer.block_shape) >= min_width:
            rows.append(LayerTimes(layer.nodes[0], f"{layer.q} x {layer.p}", decision.method,
                                   total, dict(clock.spent)))
        return decision

    return decide_and_record


@dataclass(frozen=True)
class LayerTimes:
    """One wide layer's decision: seconds in all and per phase (exclusive)."""

    node: str
    shape: str
    method: str
    total: float
    phases: dict[str, float]

    def cells(self) -> list[str]:
        """The table row: the layer, its method, the seconds of each phase, the time above
        the floor (everything but ``gram``) and that over ``gram``."""
        gram = self.phases.get("gram", 0.0)
        above = self.total - gram
        return [self.node, self.shape, self.method, f"{self.total:.2f}",
                *(f"{self.phases.get(phase, 0.0):.2f}" for phase in COLUMNS),
                f"{above:.2f}", f"{above / gram:.2f}" if gram else "-"]


def profile(model: str, threads: int, min_width: int,
            patch: Callable[[Any, str, Any], None] = setattr) -> tuple[float, list[LayerTimes]]:
    """Audit ``model`` one layer at a time with BLAS on ``threads`` threads; the in-process
    seconds (loading included) and a row per layer whose short side is at least
    ``min_width``. ``patch`` sets the timed functions (``setattr``; a test's monkeypatch)."""
    clock, rows = PhaseClock(), list[LayerTimes]()
    install(clock, patch)
    patch(audit_model, "_decide", timed_decide(clock, min_width, rows))
    patch(audit_model, "worker_count", lambda: 1)  # one layer at a time, in this process
    if not set_local_threads(threads):
        print(f"bench_phases: this BLAS takes no per-thread count; --threads {threads} is "
              "ignored (set OPENBLAS_NUM_THREADS instead)", file=sys.stderr)
    start = time.perf_counter()
    audit_model.audit_model(model)
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an ONNX file")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    parser.add_argument("--min-width", type=int, default=1024,
                        help="show layers whose blocks' short side is at least this")
    args = parser.parse_args()
    try:
        seconds, rows = profile(args.model, args.threads, args.min_width)
    except OnnxCollideError as exc:
        sys.exit(f"error: {exc}")
    print(f"{args.model}: audit {seconds:.2f} s in-process (loading included), "
          f"BLAS threads {args.threads}")
    head = ["node", "q x p", "method", "total s", *COLUMNS, "above floor s", "above / gram"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


if __name__ == "__main__":
    main()
