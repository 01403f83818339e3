"""scripts/bench_phases.py: its step names are the engine's, and its times are exclusive."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from onnx import helper

import onnxcollide.linalg.spectral as spectral
from onnxcollide.linalg.threads import set_local_threads
from tests.builders import init, make_model, value

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_phases.py"


@pytest.fixture(scope="module")
def phases() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("bench_phases", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_phases"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_phases"]


def test_every_step_is_an_engine_function(phases: ModuleType) -> None:
    for name in phases.PHASES:
        assert callable(getattr(spectral, name, None)), name


def test_nested_time_is_counted_once(phases: ModuleType, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    now = [0.0]
    monkeypatch.setattr(phases.time, "perf_counter", lambda: now[0])
    clock = phases.PhaseClock()

    def inner() -> None:
        now[0] += 2.0

    timed_inner = clock.wrap("inner", inner)

    def outer() -> None:
        now[0] += 1.0
        timed_inner()
        now[0] += 3.0

    clock.wrap("outer", outer)()
    assert clock.spent == {"outer": 4.0, "inner": 2.0}


def test_a_gram_layer_gets_a_row_with_its_phases(phases: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    weight = np.random.default_rng(0).uniform(-1, 1, (300, 600)).astype(np.float32)
    path = make_model(tmp_path / "wide.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 300])], [value("y", [1, 600])], [init("W", weight)])
    try:
        seconds, rows = phases.profile(path, 1, 256, monkeypatch.setattr)
    finally:
        set_local_threads(1)  # conftest's setting for this thread
    assert len(rows) == 1 and seconds > 0
    row = rows[0]
    assert row.shape == "300 x 600" and row.method == "gram-cholesky"
    assert row.phases["gram"] > 0 and row.phases["rank cholesky"] > 0
    assert set(row.phases) <= set(phases.COLUMNS)
    assert row.total >= sum(row.phases.values())  # exclusive times never count twice
    assert len(row.cells()) == 6 + len(phases.COLUMNS)
