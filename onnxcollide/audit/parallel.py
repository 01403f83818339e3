"""Deciding many layers side by side in forked worker processes.

The rank engine's LAPACK and BLAS calls go through scipy's wrappers, which hold the GIL:
two threads of dsyevd, dpotrf, dpotrs or dsymv ran no faster than one
(``python scripts/bench_gil.py``). Worker threads therefore left the second core idle on
models of many mid-sized layers (ViT-B/16's decisions: 4.7 s with two threads, 2.2 s with
two processes: ``scripts/bench_audit.py --threads``). Forked processes each run their own
interpreter: they inherit the parsed model and its memory-mapped weights without copying
them, decide one layer at a time with single-threaded BLAS, and send back only the small
``RankDecision``.

A layer a worker could not decide (any exception, a worker killed for memory) is decided
again in the calling process, in layer order, so its error is raised there with its usual
one-line message. Where ``fork`` is not offered (Windows, macOS's default) or the work is
too small to pay for starting the processes, the caller keeps its threads.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from onnxcollide.audit.layers import LinearLayer
from onnxcollide.linalg.spectral import RankDecision
from onnxcollide.linalg.threads import set_local_threads

# Forked workers pay for themselves above this much float64 work (multiply-adds of the Gram
# matrices or SVDs, about 0.2 s on one core); below it, starting them costs more than it saves.
PROCESS_MIN_WORK = 2_000_000_000

Decide = Callable[[LinearLayer], RankDecision]
_JOB: tuple[Decide, Sequence[LinearLayer]] | None = None  # set before the fork, read by workers


def fork_available() -> bool:
    """Whether this process should fork worker processes: the platform offers ``fork`` and
    this is not itself a worker process (``check --jobs``' workers are sized to the cores
    already, and daemonic ones may have no children)."""
    return "fork" in multiprocessing.get_all_start_methods() and \
        multiprocessing.parent_process() is None


def layer_work(layer: LinearLayer) -> int:
    """Multiply-adds of the layer's float64 decision: ``g * long * short^2`` (the Gram matrix
    or the SVD of each of its g blocks)."""
    if layer.groups == 0:
        return 0
    qb, pb = layer.block_shape
    return layer.groups * max(qb, pb) * min(qb, pb) ** 2


def processes_pay(layers: Sequence[LinearLayer]) -> bool:
    """Whether deciding ``layers`` in worker processes is worth starting them."""
    return fork_available() and sum(layer_work(layer) for layer in layers) >= PROCESS_MIN_WORK


def _start_worker() -> None:
    """A worker's setup: one BLAS thread; Ctrl-C left to the calling process (which stops the
    workers); its own standard streams, so no lock another thread of the calling process held
    at the fork (the progress bar's, a hashing thread's) is ever waited for here."""
    set_local_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the worker's life


def _decide_in_worker(index: int) -> tuple[int, RankDecision | None]:
    """Layer ``index``'s decision, or None where it raised (the caller decides it again)."""
    assert _JOB is not None
    decide, layers = _JOB
    try:
        return index, decide(layers[index])
    except Exception:  # raised again in the calling process, in layer order
        return index, None


def decide_in_processes(layers: Sequence[LinearLayer], indices: Sequence[int],
                        decide: Decide, workers: int,
                        progress: Callable[[int], None] | None = None
                        ) -> dict[int, RankDecision | None]:
    """The decisions of ``layers[k]`` for k in ``indices``, by ``workers`` forked processes.

    The costliest layers start first, so the last to finish is a short one. At most
    ``workers`` layers are decided at once, so memory holds at most that many working sets.

    Args:
        layers: every layer (the workers read them through the fork).
        indices: the layers to decide.
        decide: one layer's decision (``audit.model._decide`` with its rule).
        workers: worker processes.
        progress: called with the number of layers done after each one.

    Returns:
        index -> decision, or None for a layer no worker decided (it raised, or the pool
        broke): the caller decides those itself.
    """
    global _JOB
    import scipy.sparse.linalg  # noqa: F401  (ARPACK, imported on use: once, before the fork)

    order = sorted(indices, key=lambda k: -layer_work(layers[k]))
    results: dict[int, RankDecision | None] = {k: None for k in indices}
    _JOB = (decide, layers)
    context = multiprocessing.get_context("fork")
    try:
        with ProcessPoolExecutor(workers, mp_context=context,
                                 initializer=_start_worker) as pool:
            decided = 0
            try:
                futures: list[Future[tuple[int, RankDecision | None]]] = [
                    pool.submit(_decide_in_worker, k) for k in order]
                for future in as_completed(futures):
                    index, decision = future.result()
                    results[index] = decision
                    decided += decision is not None
                    if progress and decision is not None:
                        progress(decided)
            except BrokenProcessPool:
                pass  # a worker died (killed for memory): what it had not sent back is None
            except BaseException:  # Ctrl-C: stop the workers, start no further layer
                _stop(pool)
                raise
    finally:
        _JOB = None
    return results


def _stop(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers and cancel what they have not started."""
    workers = getattr(pool, "_processes", None) or {}  # ProcessPoolExecutor's own table
    for process in list(workers.values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
