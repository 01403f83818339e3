"""runtime/gram.py: float64 Gram matrices through ONNX Runtime (audit --device cuda)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from builders import FLOAT, assert_one_line_error, init, make_model, run_cli, value

from onnxcollide.audit.model import AuditSettings, audit_model
from onnxcollide.linalg.spectral import decide_rank, gram_matrix
from onnxcollide.runtime.gram import gram_engine, onnxruntime_gram

EPS32 = float(np.finfo(np.float32).eps)
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
NO_CUDA = "no GPU here: ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu " \
    "on a machine with an NVIDIA GPU to run this test)"


def _weight(rng: np.random.Generator, q: int, p: int, rank: int) -> np.ndarray:
    """(q, p) float32 weight of rank ``rank`` with singular values in [1, 2]."""
    left, _ = np.linalg.qr(rng.standard_normal((q, rank)))
    right, _ = np.linalg.qr(rng.standard_normal((p, rank)))
    return ((left * np.linspace(2.0, 1.0, rank)) @ right.T).astype(np.float32)


@pytest.mark.parametrize("shape", [(700, 300), (300, 700)])
def test_onnxruntime_gram_equals_blas(rng, shape):
    """The one-node Gemm graph (tall: x^T x; wide: x x^T), chunk by chunk, gives BLAS's
    upper triangle within float64 rounding (run on the CPU provider: no GPU needed)."""
    w = rng.standard_normal(shape).astype(np.float32)
    engine = onnxruntime_gram("CPUExecutionProvider")
    ours = np.triu(gram_matrix(w, engine.accumulate, chunk_bytes=8 * 300 * 64))  # 11 chunks
    blas = np.triu(gram_matrix(w))
    assert ours.shape == blas.shape == (300, 300)
    assert np.abs(ours - blas).max() <= 1e-13 * np.abs(blas).max()


def test_decisions_through_onnxruntime_match_blas(rng):
    """A Gram-path weight (rank 280 of 300) decided from ONNX Runtime's Gram matrix: the same
    rank and method, and each value within the decision's own error of the BLAS run's."""
    w = _weight(rng, 600, 300, 280)
    ours = decide_rank(w[None], EPS32, gram=onnxruntime_gram("CPUExecutionProvider"))
    blas = decide_rank(w[None], EPS32)
    assert (ours.rank, ours.method) == (blas.rank, blas.method) == (280, "gram-ldl")
    assert abs(ours.sigma_max - blas.sigma_max) <= ours.sigma_max_error + blas.sigma_max_error
    assert ours.kept_error is not None and blas.kept_error is not None
    assert abs(ours.smallest_kept - blas.smallest_kept) <= ours.kept_error + blas.kept_error


def test_the_report_records_where_the_gram_matrices_were_formed(tmp_path, rng):
    """JSON settings name where the Gram matrices were formed ('gram_device': 'cpu' by
    default); nothing else in the settings differs."""
    from onnxcollide.report.json_format import report_dict

    path = make_model(tmp_path / "mm.onnx", [_matmul()], [value("x", [1, 600])],
                      [value("y", [1, 300])], [init("w", _weight(rng, 600, 300, 300))])
    engine = onnxruntime_gram("CPUExecutionProvider")
    moved = report_dict([audit_model(path, AuditSettings(gram=engine))])["settings"]
    plain = report_dict([audit_model(path)])["settings"]
    assert moved["gram_device"] == "cpu (onnxruntime)"
    assert plain["gram_device"] == "cpu"
    assert {k: v for k, v in moved.items() if k != "gram_device"} == \
        {k: v for k, v in plain.items() if k != "gram_device"}


def _matmul():
    from onnx import helper

    return helper.make_node("MatMul", ["x", "w"], ["y"])


def test_default_and_auto_devices_form_gram_matrices_with_blas():
    """Only --device cuda moves the Gram matrices (off by default)."""
    assert gram_engine("auto") is None
    assert gram_engine("cpu") is None


@pytest.mark.skipif(HAS_CUDA, reason="this machine has the CUDA execution provider")
def test_audit_device_cuda_without_cuda_is_a_usage_error(tmp_path, rng):
    """audit --device cuda (no --validate) where ONNX Runtime has no CUDA provider: one
    usage-error line naming --device cuda, exit 2, before any work."""
    path = make_model(tmp_path / "mm.onnx", [_matmul()], [value("x", [1, 600], FLOAT)],
                      [value("y", [1, 300])], [init("w", _weight(rng, 600, 300, 300))])
    line = assert_one_line_error(run_cli("audit", path, "--device", "cuda"), 2)
    assert "--device cuda" in line


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_audit_on_cuda_decides_as_on_the_cpu(tmp_path, rng):
    """audit --device cuda: every rank and method as on the CPU, sigma_max within its
    error, and the JSON says gram_device cuda."""
    path = make_model(tmp_path / "mm.onnx", [_matmul()], [value("x", [1, 2000], FLOAT)],
                      [value("y", [1, 600])], [init("w", _weight(rng, 2000, 600, 590))])
    on_gpu = run_cli("audit", path, "--device", "cuda", "-f", "json")
    on_cpu = run_cli("audit", path, "-f", "json")
    assert on_gpu.exit_code == on_cpu.exit_code == 0, on_gpu.stderr
    gpu, cpu = json.loads(on_gpu.stdout), json.loads(on_cpu.stdout)
    assert gpu["settings"]["gram_device"] == "cuda"
    for ours, theirs in zip(gpu["models"][0]["layers"], cpu["models"][0]["layers"],
                            strict=True):
        assert (ours["rank"], ours["method"]) == (theirs["rank"], theirs["method"])
        assert ours["sigma_max"] == pytest.approx(theirs["sigma_max"], rel=1e-9)
