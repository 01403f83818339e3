"""Float64 Gram matrices formed by ONNX Runtime (``audit --device cuda``: on the GPU).

The rank engine forms a float64 Gram matrix of every large weight block by BLAS ``dsyrk`` on
the CPU (``linalg.spectral.gram_matrix``), and that is most of an audit's time. Where
ONNX Runtime's CUDA provider is present, the same chunks can be multiplied on the GPU by
running a one-node graph in double precision through ONNX Runtime itself: no new
dependency. The node is ``Gemm`` with ``transA=1`` (``x^T x`` of a tall chunk) or
``transB=1`` (``x x^T`` of a wide one): one input, the transposition folded into the
product. Each chunk's (m, m) result is added on the host in float64; everything after the
Gram matrix (sigma_max, the Cholesky and LDL decisions, Lanczos) stays on the CPU. Doubles
are never computed in TF32 (cuBLAS's DGEMM), and the provider is asked for ``use_tf32=0``
anyway, as the validation sessions are.

The order of the additions differs from BLAS's, so the Gram matrix differs from the CPU's in
its last bits, within the error the engine already counts for it (``n * eps64 *
sigma_max^2``); a printed value's last digit can round the other way. Reports record the
device (``gram_device``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcollide.errors import UsageError
from onnxcollide.linalg.spectral import GramEngine
from onnxcollide.runtime.session import (
    CPU_PROVIDER,
    CUDA_OPTIONS,
    CUDA_PROVIDER,
    LOG_FATAL_ONLY,
    onnxruntime_module,
    resolve_device,
)

GPU_CHUNK_BYTES = 256 << 20  # float64 bytes per chunk sent to the device


def _gemm_model(tall: bool) -> bytes:
    """A one-node float64 graph: ``gram = x^T x`` (tall) or ``x x^T`` (wide), x (r, c)."""
    node = helper.make_node("Gemm", ["x", "x"], ["gram"], transA=int(tall),
                            transB=int(not tall))
    graph = helper.make_graph(
        [node], "gram", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["r", "c"])],
        [helper.make_tensor_value_info("gram", TensorProto.DOUBLE, ["m", "m"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8)
    return onnx.shape_inference.infer_shapes(model).SerializeToString()


class _GemmSessions:
    """The two sessions (tall and wide chunks) on one provider, made on first use."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._sessions: dict[bool, Any] = {}

    def session(self, tall: bool) -> Any:
        if tall not in self._sessions:
            ort = onnxruntime_module()
            options = ort.SessionOptions()
            options.log_severity_level = LOG_FATAL_ONLY
            providers: list[Any] = [CPU_PROVIDER] if self.provider == CPU_PROVIDER else \
                [(CUDA_PROVIDER, dict(CUDA_OPTIONS))]
            session = ort.InferenceSession(_gemm_model(tall), sess_options=options,
                                           providers=providers)
            if self.provider not in session.get_providers():
                raise UsageError("ONNX Runtime did not start its CUDA execution provider for "
                                 "the Gram matrices", "--device cuda",
                                 "check the CUDA libraries onnxruntime-gpu needs, or leave "
                                 "--device out")
            self._sessions[tall] = session
        return self._sessions[tall]

    def accumulate(self, chunk: np.ndarray, gram: np.ndarray | None, tall: bool
                   ) -> np.ndarray:
        """``gram`` plus the chunk's Gram matrix computed by the session (full (m, m), of
        which the engine reads the upper triangle)."""
        part = self.session(tall).run(None, {"x": np.ascontiguousarray(chunk)})[0]
        if gram is None:
            return np.asfortranarray(part)
        gram += part
        return gram


def onnxruntime_gram(provider: str) -> GramEngine:
    """A GramEngine that forms float64 Gram matrices through ONNX Runtime on ``provider``
    (``CUDAExecutionProvider``, or ``CPUExecutionProvider`` to test the path anywhere)."""
    sessions = _GemmSessions(provider)
    device = "cuda" if provider == CUDA_PROVIDER else "cpu (onnxruntime)"
    return GramEngine(device, sessions.accumulate, GPU_CHUNK_BYTES)


def gram_engine(device: str) -> GramEngine | None:
    """The engine ``audit --device`` asks for: CUDA for ``cuda``, else None (BLAS on the
    CPU: the default, also for ``auto``, so that an audit's numbers do not depend on which
    machine it ran on unless asked for).

    Raises:
        UsageError: ``cuda`` without ONNX Runtime or without its CUDA execution provider.
    """
    if device != "cuda":
        return None
    resolve_device(device)  # a usage error, before any work, where CUDA is not there
    return onnxruntime_gram(CUDA_PROVIDER)
