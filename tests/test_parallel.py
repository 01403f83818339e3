"""Forked worker processes decide layers as threads do (audit.parallel): the same decisions,
errors raised in layer order, a killed worker costing nothing but time."""

from __future__ import annotations

import os

import numpy as np
import pytest
from builders import init, make_model, value
from builders import integer_rank as irank
from onnx import helper

import onnxcollide.audit.model as audit_module
from onnxcollide.audit import parallel
from onnxcollide.audit.model import audit_model
from onnxcollide.errors import UnsupportedModelError

pytestmark = pytest.mark.skipif(not parallel.fork_available(), reason="no fork on this platform")

RANKS = [(40, 30, 12), (30, 50, 30), (50, 20, 7), (20, 20, 20), (20, 10, 3)]


def _chain(tmp_path, rng, poison: set[int] = frozenset()) -> str:
    """A chain of MatMuls of the RANKS shapes and ranks; weights in ``poison`` hold a NaN."""
    nodes, inits, current = [], [], "x"
    for k, (q, p, r) in enumerate(RANKS):
        w = irank(rng, q, p, r).astype(np.float32)
        if k in poison:
            w[0, 0] = np.nan
        inits.append(init(f"W{k}", w))
        nodes.append(helper.make_node("MatMul", [current, f"W{k}"], [f"h{k}"], name=f"mm{k}"))
        current = f"h{k}"
    return make_model(tmp_path / "chain.onnx", nodes, [value("x", [1, RANKS[0][0]])],
                      [value(current, [1, RANKS[-1][1]])], inits)


@pytest.fixture
def forked(monkeypatch):
    """Worker processes for any amount of work; returns the indices the pool was given."""
    given: list[list[int]] = []
    real = parallel.decide_in_processes

    def spy(layers, indices, *args, **kwargs):
        given.append(list(indices))
        return real(layers, indices, *args, **kwargs)

    monkeypatch.setattr(parallel, "PROCESS_MIN_WORK", 0)
    monkeypatch.setattr(audit_module, "decide_in_processes", spy)
    monkeypatch.setattr(audit_module, "worker_count", lambda: 2)
    monkeypatch.setattr(audit_module, "local_threads_available", lambda: True)
    return given


def test_worker_processes_decide_as_threads_do(tmp_path, rng, forked, monkeypatch):
    """Every decision from the forked workers equals the threads' one, number for number, and
    the progress callback ends at (total, total)."""
    path = _chain(tmp_path, rng)
    calls: list[tuple[int, int, str]] = []
    by_processes = audit_model(path, progress=lambda *call: calls.append(call))
    assert forked == [list(range(len(RANKS)))]
    assert calls[0][:2] == (0, len(RANKS)) and calls[-1][:2] == (len(RANKS), len(RANKS))
    monkeypatch.setattr(audit_module, "processes_pay", lambda layers: False)
    by_threads = audit_model(path)
    assert [r.decision for r in by_processes.rows] == [r.decision for r in by_threads.rows]
    assert [r.rank for r in by_processes.rows] == [r for _, _, r in RANKS]


def test_the_first_failing_layer_in_order_is_reported(tmp_path, rng, forked):
    """Layers 1 and 3 hold a NaN: the workers cannot decide them, and the error raised is
    layer 1's, with the usual message, as without workers."""
    path = _chain(tmp_path, rng, poison={1, 3})
    with pytest.raises(UnsupportedModelError) as raised:
        audit_model(path)
    assert "node 'mm1'" in str(raised.value) and "mm3" not in str(raised.value)
    assert forked


def test_a_worker_killed_mid_layer_costs_only_time(tmp_path, rng, forked, monkeypatch):
    """A worker that dies (as one killed for memory does) breaks the pool: the layers it had
    not sent back are decided in this process, with the same results."""
    path = _chain(tmp_path, rng)
    expected = [r.decision for r in audit_model(path).rows]
    parent, real = os.getpid(), audit_module._decide

    def dies_on_the_third(layer, rule, gram=None):
        if os.getpid() != parent and layer.nodes[0] == "mm2":
            os._exit(9)
        return real(layer, rule, gram)

    monkeypatch.setattr(audit_module, "_decide", dies_on_the_third)
    calls: list[tuple[int, int, str]] = []
    redone = audit_model(path, progress=lambda *call: calls.append(call))
    assert [r.decision for r in redone.rows] == expected
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and done[-1] == len(RANKS)  # never backwards, then all


def _in_a_worker(path: str) -> tuple[bool, list[int]]:
    return parallel.fork_available(), [r.rank for r in audit_model(path).rows]


def test_an_audit_inside_a_worker_process_keeps_its_threads(tmp_path, rng, forked):
    """check --jobs audits in worker processes sized to the cores already (and daemonic
    ones may have no children): there the audit decides with threads, and still right."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = _chain(tmp_path, rng)
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        may_fork, ranks = pool.submit(_in_a_worker, path).result()
    assert not may_fork and ranks == [r for _, _, r in RANKS]
    with context.Pool(1) as daemonic:  # multiprocessing.Pool's workers are daemonic
        may_fork, ranks = daemonic.apply(_in_a_worker, (path,))
    assert not may_fork and ranks == [r for _, _, r in RANKS]
