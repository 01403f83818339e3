"""Real, trained models from several exporters (tests/data, see its README): every layer's rank
against an independent float64 SVD, exporter-specific weight sources, and W1."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import pytest
from builders import DATA, REAL_MODELS, row_summary
from onnx import numpy_helper

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import AuditSettings, ModelAudit, audit_model
from onnxcollide.linalg.spectral import decide_rank

_CACHE: dict[tuple[str, AuditSettings], ModelAudit] = {}


def audited(name: str, settings: AuditSettings | None = None) -> ModelAudit:
    """Audit a model of tests/data once per session and settings."""
    settings = settings or AuditSettings()
    key = (name, settings)
    if key not in _CACHE:
        _CACHE[key] = audit_model(str(DATA / name), settings)
    return _CACHE[key]


def svd_rank(blocks: np.ndarray, eps: float) -> tuple[int, float, float]:
    """(rank, sigma_max, tol) of the block-diagonal matrix by a float64 SVD, NumPy's rule."""
    a = np.asarray(blocks, dtype=np.float64)
    g, qb, pb = a.shape
    s = np.concatenate([np.linalg.svd(b, compute_uv=False) for b in a])
    smax = float(s.max())
    tol = smax * max(g * qb, g * pb) * eps
    return int(np.count_nonzero(s > tol)), smax, tol


def test_readme_lists_every_model_with_its_hash():
    """tests/data/README.md names each model, its source and license, and its SHA-256."""
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    for name in REAL_MODELS:
        digest = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert re.search(rf"^\| {re.escape(name)} \|.*\| (MIT|Apache)", readme, re.M), name
        assert f"{digest}  {name}" in readme, name


@pytest.mark.parametrize("name", REAL_MODELS)
def test_model_audits(name):
    """Each model audits without error: rows numbered 1..n, metrics consistent with the rows."""
    result = audited(name)
    rows = result.rows
    assert rows
    assert [r.index for r in rows] == list(range(1, len(rows) + 1))
    m = result.metrics
    assert m.n == len(rows)
    assert m.nu == sum(r.nullity >= 1 for r in rows)
    assert m.mu == sum(r.layer.p < r.layer.q for r in rows)
    assert m.nullity_sum == sum(r.layer.q - r.rank for r in rows)
    assert result.first_layer is not None and result.first_layer.row_index == 1
    assert m.nullity_w1 == rows[0].nullity
    assert result.sha256 == hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    for row in rows:
        assert 0 <= row.rank <= min(row.layer.q, row.layer.p)
        assert row.layer.q % row.layer.groups == 0 and row.layer.p % row.layer.groups == 0


@pytest.mark.parametrize("name", REAL_MODELS)
def test_every_clear_rank_matches_a_float64_svd(name):
    """For every row decided with margin >= 10: the blocks' float64 SVD with the same rule gives
    the same rank, sigma_max and tol; and decide_rank on the blocks agrees."""
    checked = 0
    for row in audited(name).rows:
        margin = row.decision.margin
        if margin is not None and margin < 10:
            continue
        blocks = row.layer.load_blocks()
        assert blocks.shape == (row.layer.groups, *row.layer.block_shape)
        rank, smax, tol = svd_rank(blocks, row.decision.eps)
        assert row.rank == rank, row.layer.nodes
        assert row.decision.sigma_max == pytest.approx(smax, rel=1e-9)
        assert row.decision.tol == pytest.approx(tol, rel=1e-9)
        assert decide_rank(blocks, row.decision.eps).rank == rank
        checked += 1
    assert checked >= 1


# ------------------------------------------------------------------ independent weight loading


def independent_layers(path: str) -> dict[str, tuple[int, int, int, np.ndarray]]:
    """weight name -> (q, p, groups, blocks) for Conv/Gemm/MatMul fed by a plain initializer,
    read with onnx.numpy_helper alone (not through onnxcollide)."""
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out: dict[str, tuple[int, int, int, np.ndarray]] = {}
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and node.input[1] in inits:
            w = inits[node.input[1]]
            g = int(attrs.get("group", 1))
            blocks = w.reshape(g, w.shape[0] // g, -1).transpose(0, 2, 1)
            out[node.input[1]] = (g * blocks.shape[1], w.shape[0], g, blocks)
        elif node.op_type == "Gemm" and node.input[1] in inits:
            b = inits[node.input[1]]
            w = b.T if attrs.get("transB", 0) else b
            w = w * attrs.get("alpha", 1.0)
            out[node.input[1]] = (w.shape[0], w.shape[1], 1, w[None])
        elif node.op_type == "MatMul" and node.input[1] in inits and inits[node.input[1]].ndim == 2:
            w = inits[node.input[1]]
            out[node.input[1]] = (w.shape[0], w.shape[1], 1, w[None])
    return out


@pytest.mark.parametrize("name", ["lenet5_mnist_torch.onnx", "mnist-8_cntk.onnx",
                                  "mtcnn_pnet.onnx", "super_resolution_10.onnx",
                                  "ultraface_slim320.onnx"])
def test_rows_match_weights_read_independently(name):
    """Weights read with numpy_helper alone give the same q, p, groups and (clear) rank."""
    expected = independent_layers(str(DATA / name))
    rows = {r.layer.weight: r for r in audited(name).rows}
    assert set(expected) == set(rows)
    for weight, (q, p, groups, blocks) in expected.items():
        row = rows[weight]
        assert (row.layer.q, row.layer.p, row.layer.groups) == (q, p, groups), weight
        np.testing.assert_array_equal(row.layer.load_blocks(), blocks)
        if row.decision.margin is None or row.decision.margin >= 10:
            assert row.rank == svd_rank(blocks, 2.0**-23)[0], weight


# ------------------------------------------------------------------ model-specific facts


def test_qdq_lenet_audits_like_float_lenet():
    """The QDQ LeNet (int8 -> DequantizeLinear) has the float LeNet's q, p, rank, nullity and
    metrics, row by row."""
    fp, qdq = audited("lenet5_mnist_torch.onnx"), audited("lenet5_mnist_qdq.onnx")
    assert [row_summary(r) for r in qdq.rows] == [row_summary(r) for r in fp.rows]
    assert [r.layer.op for r in qdq.rows] == [r.layer.op for r in fp.rows]
    assert qdq.metrics == fp.metrics
    assert all(r.layer.chain == ("DequantizeLinear",) for r in qdq.rows)
    assert all(r.layer.stored_dtype in ("int8", "uint8") for r in qdq.rows)
    assert all(r.layer.compute_dtype == "float" for r in qdq.rows)
    assert qdq.first_layer.exactness == fp.first_layer.exactness
    assert [s.op for s in qdq.first_layer.path] == ["QuantizeLinear", "DequantizeLinear"]


def test_lenet_table1():
    """LeNet-5: 5 weights, all with a kernel, nullities 19 + 134 + 280 + 36 + 74."""
    result = audited("lenet5_mnist_torch.onnx")
    assert [(r.layer.q, r.layer.p) for r in result.rows] == [
        (25, 6), (150, 16), (400, 120), (120, 84), (84, 10)]
    m = result.metrics
    assert (m.n, m.nu, m.mu, m.nullity_sum, m.nullity_w1) == (5, 5, 5, 543, 19)


def test_paddle_weights_are_constant_nodes_and_convs_are_depthwise():
    """paddle2onnx: no initializers; every weight's root is a Constant node's output; the model
    has depthwise convs (groups == output channels > 1)."""
    model = onnx.load(str(DATA / "ppocr_mobile_v2_cls.onnx"))
    assert len(model.graph.initializer) == 0
    constants = {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    result = audited("ppocr_mobile_v2_cls.onnx")
    for row in result.rows:
        assert row.layer.roots and set(row.layer.roots) <= constants, row.layer.nodes
        assert row.layer.stored_dtype == "float"
    depthwise = [r for r in result.rows if r.layer.groups > 1]
    assert depthwise
    for row in depthwise:
        assert row.layer.groups == row.layer.p
        k = row.layer.q // row.layer.p  # kernel taps per channel (9 or 25)
        assert k in (9, 25)
        assert row.nullity == (k - 1) * row.layer.p  # every filter non-zero: rank 1 per block
    assert any(r.layer.op == "MatMul" for r in result.rows)


def test_paddle_paper_convention_changes_depthwise_rows_only():
    """Convention 'paper' turns each depthwise conv into one k x C matrix; others are unchanged."""
    grouped = audited("ppocr_mobile_v2_cls.onnx")
    paper = audited("ppocr_mobile_v2_cls.onnx", AuditSettings(convention=ConvConvention.PAPER))
    assert len(paper.rows) == len(grouped.rows)
    for g, pp in zip(grouped.rows, paper.rows, strict=True):
        if g.layer.groups == 1:
            assert row_summary(g) == row_summary(pp)
        else:
            assert pp.layer.groups == 1
            assert pp.layer.q == g.layer.q // g.layer.groups
            assert pp.layer.p == g.layer.p
            assert pp.rank <= min(pp.layer.q, pp.layer.p)


def test_mtcnn_first_layer_goes_through_transpose():
    """keras2onnx P-Net: NHWC input -> Transpose -> Conv; dynamic H, W leave blind unknown."""
    fl = audited("mtcnn_pnet.onnx").first_layer
    assert "Transpose" in [s.op for s in fl.path]
    assert fl.exactness == "overlapping"
    assert fl.blind_elements is None
    assert fl.input_shape[-1] == 3


def test_mtcnn_with_fixed_input_shape():
    """--input-shape 1x12x12x3 on the NHWC P-Net: the 3x3 conv reads everything: 0 blind."""
    name = audited("mtcnn_pnet.onnx").first_layer.input
    fixed = audited("mtcnn_pnet.onnx", AuditSettings(input_shapes=((name, (1, 12, 12, 3)),)))
    assert fixed.first_layer.blind_elements == 0
    assert fixed.first_layer.input_elements == 12 * 12 * 3


def test_cntk_model_with_initializers_listed_as_inputs():
    """CNTK (IR 3): initializers are also graph inputs; W1's input is the real image input."""
    model = onnx.load(str(DATA / "mnist-8_cntk.onnx"))
    inits = {t.name for t in model.graph.initializer}
    assert inits & {i.name for i in model.graph.input}
    result = audited("mnist-8_cntk.onnx")
    assert result.ir_version == 3
    assert result.first_layer.input == "Input3"
    assert result.first_layer.blind_elements == 0  # SAME_UPPER padding reads every pixel
    assert [row_summary(r)[:2] for r in result.rows] == [(25, 8), (200, 16), (256, 10)]
    assert not result.skipped


def test_super_resolution_first_layer_has_no_kernel():
    """The 5x5 conv into 64 channels (25 x 64): full rank 25, nullity(W1) = 0."""
    result = audited("super_resolution_10.onnx")
    assert row_summary(result.rows[0]) == (25, 64, 1, 25, 0, False, False)
    assert result.metrics.nullity_w1 == 0


def test_ultraface_has_an_unclear_row():
    """UltraFace holds a 256 x 256 conv decided with margin < 10: flagged, not hidden."""
    rows = audited("ultraface_slim320.onnx").rows
    unclear = [r for r in rows if r.decision.margin is not None and r.decision.margin < 10]
    assert unclear
    assert all(r.layer.q == r.layer.p == 256 for r in unclear)
