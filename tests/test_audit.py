"""audit: Table 1 metrics, exporter-independence (channels-last), settings, errors."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from builders import audit, build_model, init, ints, make_model, row_summary, value
from builders import integer_rank as irank
from builders import well_conditioned as wellc
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnxcollide.audit.model import AuditSettings, audit_model
from onnxcollide.errors import ModelLoadError, UnsupportedModelError
from onnxcollide.linalg.spectral import ToleranceRule

mk = helper.make_node


def flags(q: int, p: int, rank: int, groups: int = 1) -> tuple:
    """The expected (q, p, groups, rank, nullity, nu, mu) of a row."""
    return (q, p, groups, rank, q - rank, q - rank >= 1, p < q)


# ------------------------------------------------------------------ metrics


def test_metrics_follow_eq6(tmp_path, rng):
    """Table 1: n, nu, mu, their ratios, sum of nullities and nullity(W1) for a 3-layer MLP."""
    w1, w2, w3 = irank(rng, 16, 8, 6), irank(rng, 8, 12, 8), irank(rng, 12, 4, 4)
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "W1"], ["a"]), mk("Relu", ["a"], ["b"]),
         mk("MatMul", ["b", "W2"], ["c"]), mk("Relu", ["c"], ["d"]),
         mk("MatMul", ["d", "W3"], ["y"])],
        [value("x", [1, 16])], [value("y", [1, 4])],
        [init("W1", w1.astype(np.float32)), init("W2", w2.astype(np.float32)),
         init("W3", w3.astype(np.float32))],
    )
    result = audit(path)
    assert [row_summary(r) for r in result.rows] == [
        flags(16, 8, 6), (8, 12, 1, 8, 0, False, False), flags(12, 4, 4)]
    m = result.metrics
    assert (m.n, m.nu, m.mu, m.nullity_sum, m.nullity_w1) == (3, 2, 2, 10 + 8, 10)
    assert m.nu_ratio == pytest.approx(2 / 3)
    assert m.mu_ratio == pytest.approx(2 / 3)
    assert [r.index for r in result.rows] == [1, 2, 3]
    assert result.first_layer.row_index == 1


def test_audit_records_model_facts(tmp_path, rng):
    """path, sha256 of the bytes, producer, IR version, opset and settings are recorded."""
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 4])], [value("y", [1, 3])],
                      [init("W", irank(rng, 4, 3, 2).astype(np.float32))], opset=13)
    settings = AuditSettings(rule=ToleranceRule(rtol=1e-3))
    result = audit_model(path, settings)
    with open(path, "rb") as handle:
        assert result.sha256 == hashlib.sha256(handle.read()).hexdigest()
    assert result.path == path
    assert result.opset == 13
    assert result.ir_version == onnx.load(path).ir_version == 7
    assert result.producer == "onnxcollide-tests"
    assert result.settings is settings
    assert result.rows[0].decision.tol == pytest.approx(1e-3 * result.rows[0].decision.sigma_max)


def test_progress_callback(tmp_path, rng):
    """The progress callback sees (done, total, label) for every layer and a final call."""
    path = make_model(
        tmp_path / "m.onnx",
        [mk("MatMul", ["x", "A"], ["h"], name="first"), mk("MatMul", ["h", "B"], ["y"],
                                                              name="second")],
        [value("x", [1, 4])], [value("y", [1, 2])],
        [init("A", irank(rng, 4, 3, 2).astype(np.float32)),
         init("B", irank(rng, 3, 2, 2).astype(np.float32))],
    )
    calls: list[tuple[int, int, str]] = []
    audit_model(path, progress=lambda done, total, label: calls.append((done, total, label)))
    assert calls == [(0, 2, "first"), (1, 2, "second"), (2, 2, "")]


def test_audit_is_deterministic(lenet_path):
    """Two audits of one model are equal, number for number."""
    a, b = audit_model(lenet_path), audit_model(lenet_path)
    assert [r.decision for r in a.rows] == [r.decision for r in b.rows]
    assert a.metrics == b.metrics
    assert a.first_layer == b.first_layer


# ------------------------------------------------------------------ errors


def test_model_without_linear_layers(tmp_path):
    """A model with only a Relu: UnsupportedModelError ('nothing to audit')."""
    path = make_model(tmp_path / "m.onnx", [mk("Relu", ["x"], ["y"])],
                      [value("x", [1, 4])], [value("y", [1, 4])])
    with pytest.raises(UnsupportedModelError, match=r"(?i)nothing to audit"):
        audit(path)


def test_nan_weight_is_a_clear_error(tmp_path, rng):
    """A NaN in a weight becomes an UnsupportedModelError naming the node and weight."""
    w = irank(rng, 4, 3, 2).astype(np.float32)
    w[1, 1] = np.nan
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"], name="mm")],
                      [value("x", [1, 4])], [value("y", [1, 3])], [init("W", w)])
    with pytest.raises(UnsupportedModelError, match="NaN") as info:
        audit(path)
    assert "mm" in str(info.value) and "'W'" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"this is not an onnx model\n", b"\x08\x07"],
                         ids=["empty", "text", "ir-only"])
def test_not_onnx_files(tmp_path, content):
    """Empty, text and graph-less files are ModelLoadErrors."""
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        audit(str(path))


def test_missing_file_and_folder(tmp_path):
    """A missing path and a folder are ModelLoadErrors saying which."""
    with pytest.raises(ModelLoadError, match="not found"):
        audit(str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelLoadError, match="folder"):
        audit(str(tmp_path))


def test_truncated_model(tmp_path, lenet_path):
    """The first half of a real model's bytes is a ModelLoadError."""
    with open(lenet_path, "rb") as handle:
        data = handle.read()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        audit(str(path))


# ------------------------------------------------------------------ channels-last exporters


def _torch_style(rng_weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """NCHW input -> Conv (OIHW) -> Flatten -> Gemm(transB=1), as PyTorch exports it."""
    return build_model(
        [mk("Conv", ["x", "conv_w"], ["c"]), mk("Flatten", ["c"], ["f"]),
         mk("Gemm", ["f", "fc_w"], ["y"], transB=1)],
        [value("x", [1, 3, 8, 8])], [value("y", [1, 10])],
        [init("conv_w", rng_weights["oihw"]), init("fc_w", rng_weights["fc"])],
    )


def _keras_style(rng_weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """NHWC input -> Transpose -> Conv (HWIO initializer -> Transpose) -> Transpose back to
    NHWC -> Flatten -> MatMul with (in, out) rows in NHWC order, as tf2onnx exports it."""
    oihw, fc = rng_weights["oihw"], rng_weights["fc"]
    hwio = oihw.transpose(2, 3, 1, 0)
    out_c, hw = oihw.shape[0], 6
    # fc is (10, C*H*W) in NCHW flatten order; the NHWC model flattens (H, W, C).
    nhwc_rows = fc.T.reshape(out_c, hw, hw, 10).transpose(1, 2, 0, 3).reshape(-1, 10)
    return build_model(
        [mk("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
         mk("Transpose", ["kernel_hwio"], ["kernel_oihw"], perm=[3, 2, 0, 1]),
         mk("Conv", ["x_nchw", "kernel_oihw"], ["c"]),
         mk("Transpose", ["c"], ["c_nhwc"], perm=[0, 2, 3, 1]),
         mk("Reshape", ["c_nhwc", "flat"], ["f"]),
         mk("MatMul", ["f", "dense_kernel"], ["y"])],
        [value("x", [1, 8, 8, 3])], [value("y", [1, 10])],
        [init("kernel_hwio", hwio), init("dense_kernel", np.ascontiguousarray(nhwc_rows)),
         ints("flat", [1, -1])],
    )


def test_channels_last_export_audits_like_channels_first(tmp_path, rng):
    """The same weights exported PyTorch-style and keras/tf2onnx-style (NHWC, HWIO, permuted
    dense rows) give identical (q, p, groups, rank, nullity, sigma_max, tol) per row."""
    weights = {
        "oihw": wellc(rng, 27, 4, 3).T.reshape(4, 3, 3, 3).astype(np.float32),
        "fc": wellc(rng, 144, 10, 6).T.astype(np.float32),
    }
    torch_model, keras_model = _torch_style(weights), _keras_style(weights)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    y_torch = ReferenceEvaluator(torch_model).run(None, {"x": x})[0]
    y_keras = ReferenceEvaluator(keras_model).run(None, {"x": x.transpose(0, 2, 3, 1)})[0]
    np.testing.assert_allclose(y_keras, y_torch, rtol=1e-4, atol=1e-4)  # same network

    onnx.save(torch_model, str(tmp_path / "torch.onnx"))
    onnx.save(keras_model, str(tmp_path / "keras.onnx"))
    a, b = audit(str(tmp_path / "torch.onnx")), audit(str(tmp_path / "keras.onnx"))
    assert len(a.rows) == len(b.rows) == 2
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert row_summary(ra) == row_summary(rb)
        assert ra.decision.sigma_max == pytest.approx(rb.decision.sigma_max, rel=1e-6)
        assert ra.decision.tol == pytest.approx(rb.decision.tol, rel=1e-6)
    assert [row_summary(r) for r in a.rows] == [flags(27, 4, 3), flags(144, 10, 6)]
    assert a.metrics == b.metrics
    assert b.rows[0].layer.chain == ("Transpose",)
    assert a.first_layer.exactness == b.first_layer.exactness == "overlapping"
    assert [s.op for s in b.first_layer.path] == ["Transpose"]
    assert a.first_layer.blind_elements == b.first_layer.blind_elements == 0


def test_zero_initialised_large_weight(tmp_path):
    """x @ W with W = zeros(300, 300): rank 0, nullity 300."""
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 300])], [value("y", [1, 300])],
                      [init("W", np.zeros((300, 300), np.float32))])
    row = audit(path).rows[0]
    assert (row.rank, row.nullity) == (0, 300)
