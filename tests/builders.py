"""Small helpers that build tiny ONNX models (and weights of known rank) for the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcollide.audit.model import AuditSettings, LayerRow, ModelAudit, audit_model

DATA = Path(__file__).parent / "data"

# The real models copied into tests/data (sources and licenses in tests/data/README.md).
REAL_MODELS = (
    "lenet5_mnist_torch.onnx",
    "lenet5_mnist_qdq.onnx",
    "mnist-8_cntk.onnx",
    "mtcnn_pnet.onnx",
    "ppocr_mobile_v2_cls.onnx",
    "super_resolution_10.onnx",
    "ultraface_slim320.onnx",
)

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
DOUBLE = TensorProto.DOUBLE
INT64 = TensorProto.INT64
INT8 = TensorProto.INT8
UINT8 = TensorProto.UINT8
BOOL = TensorProto.BOOL

Dims = Sequence[int | str | None] | None


def value(name: str, shape: Dims, elem: int = FLOAT) -> onnx.ValueInfoProto:
    """A graph input/output description (``None`` shape: unknown rank)."""
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer holding ``array`` (its dtype decides the element type)."""
    return numpy_helper.from_array(np.asarray(array), name)


def ints(name: str, values: Sequence[int]) -> onnx.TensorProto:
    """An int64 1-D initializer (shapes, axes, pads)."""
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def build_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    functions: Sequence[onnx.FunctionProto] = (),
    extra_opsets: Sequence[tuple[str, int]] = (),
    check: bool = True,
) -> onnx.ModelProto:
    """A ModelProto of one graph (checked with onnx.checker unless ``check`` is False)."""
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs),
                              initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets, functions=list(functions),
                              producer_name="onnxcollide-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets[:1])
    if check:
        onnx.checker.check_model(model)
    return model


def make_model(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    **kwargs: object,
) -> str:
    """Build a model and save it to ``path`` (a file path); return the path as a string."""
    model = build_model(nodes, inputs, outputs, initializers, opset, **kwargs)  # type: ignore[arg-type]
    onnx.save(model, str(path))
    return str(path)


def token_ids_model(folder: Path, length: int = 6, name: str = "tokens.onnx") -> str:
    """int64 ids [1, length] -> Gather(embedding 50 x 8) -> MatMul(8 x 4), seeded weights."""
    rng = np.random.default_rng(27)
    return make_model(
        folder / name,
        [helper.make_node("Gather", ["E", "ids"], ["e"]),
         helper.make_node("MatMul", ["e", "W"], ["y"])],
        [value("ids", [1, length], INT64)], [value("y", [1, length, 4])],
        [init("E", rng.standard_normal((50, 8)).astype(np.float32)),
         init("W", rng.standard_normal((8, 4)).astype(np.float32))])


def audit(path: str, settings: AuditSettings | None = None) -> ModelAudit:
    """Audit a saved model with the default (or given) settings."""
    return audit_model(path, settings)


def only_row(result: ModelAudit) -> LayerRow:
    """The single row of an audit that must have exactly one."""
    assert len(result.rows) == 1, [r.layer.nodes for r in result.rows]
    return result.rows[0]


def row_summary(row: LayerRow) -> tuple[int, int, int, int, int, bool, bool]:
    """(q, p, groups, rank, nullity, nu, mu) of a row."""
    return (row.layer.q, row.layer.p, row.layer.groups, row.rank, row.nullity, row.nu, row.mu)


def integer_rank(rng: np.random.Generator, q: int, p: int, r: int, high: int = 2) -> np.ndarray:
    """A (q, p) matrix of small integers with rank exactly ``r`` (float64).

    Entries are exact in float16/float32/int8, so the rank is the same in every dtype.
    """
    for _ in range(100):
        if r == 0:
            return np.zeros((q, p))
        left = rng.integers(-high, high + 1, size=(q, r)).astype(np.float64)
        right = rng.integers(-high, high + 1, size=(r, p)).astype(np.float64)
        matrix = left @ right
        if np.linalg.matrix_rank(matrix) == r:
            return matrix
    raise AssertionError("could not draw an integer matrix of the requested rank")


def well_conditioned(rng: np.random.Generator, q: int, p: int, r: int,
                     low: float = 1.0, high: float = 2.0) -> np.ndarray:
    """A (q, p) float64 matrix of rank ``r`` whose non-zero singular values lie in [low, high]."""
    left, _ = np.linalg.qr(rng.standard_normal((q, r)))
    right, _ = np.linalg.qr(rng.standard_normal((p, r)))
    sigmas = np.linspace(high, low, r)
    return (left * sigmas) @ right.T


def float64_rank(matrix: np.ndarray, eps: float, rtol: float | None = None,
                 atol: float | None = None) -> int:
    """Rank of a (q, p) matrix by a float64 SVD with the tool's tolerance rule."""
    m = np.asarray(matrix, dtype=np.float64)
    s = np.linalg.svd(m, compute_uv=False)
    smax = float(s.max()) if s.size else 0.0
    tol = smax * (rtol if rtol is not None else max(m.shape) * eps)
    if atol is not None:
        tol = max(tol, atol)
    return int(np.count_nonzero(s > tol))


# ------------------------------------------------------------------ shared by CLI / search tests

MODELS = Path(__file__).parent.parent / "models"
MLP = str(MODELS / "mlp_dense.onnx")
PATCH = str(MODELS / "patch_embed.onnx")
OVERLAP = str(MODELS / "cnn_overlap.onnx")
MTCNN = str(DATA / "mtcnn_pnet.onnx")


def run_cli(*args: str):
    """Invoke the onnxcollide CLI in-process; stdout and stderr are kept apart."""
    from click.testing import CliRunner

    from onnxcollide.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result, code: int) -> str:
    """Exit ``code``, nothing on stdout, one 'error: ...' line on stderr, no traceback and
    no 'internal error' (a user mistake is never reported as a bug)."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert "Traceback" not in result.stderr
    assert "internal error" not in lines[0]
    return lines[0]
