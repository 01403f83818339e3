"""JSON report with a versioned schema (onnxcollide/schemas/audit-report-v1.schema.json).

Holds every number and every setting, so a report can be reproduced from the report alone.
The same model and settings give byte-identical JSON: no timestamps, keys in a fixed order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from onnxcollide.audit.model import CLEAR_MARGIN, FirstLayer, LayerRow, ModelAudit, ModelMetrics
from onnxcollide.linalg.spectral import GRAM_TRUST, SVD_MAX_DIM, ToleranceRule
from onnxcollide.report.options import RenderOptions

SCHEMA_ID = "https://onnxcollide.dev/schemas/audit-report-v1.schema.json"
SCHEMA_VERSION = 1


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def versions() -> dict[str, str]:
    """Versions of onnxcollide and the libraries whose numerics decide the results."""
    import numpy
    import scipy

    from onnxcollide._version import __version__
    from onnxcollide.graph.load import ONNX_VERSION

    return {"onnxcollide": __version__, "onnx": ONNX_VERSION, "numpy": numpy.__version__,
            "scipy": scipy.__version__}


def layer_dict(row: LayerRow) -> dict[str, Any]:
    """Every number of one layer row; spectral values rounded to the significant digits
    their error estimates resolve (``digits``), so no printed digit is noise."""
    layer, d = row.layer, row.decision
    shown = d.resolved()
    return {
        "index": row.index, "nodes": list(layer.nodes), "op": layer.op, "weight": layer.weight,
        "roots": list(layer.roots), "chain": list(layer.chain), "scope": layer.scope,
        "layout": layer.layout, "q": layer.q, "p": layer.p, "groups": layer.groups,
        "rank": row.rank, "nullity": row.nullity, "nu": row.nu, "mu": row.mu,
        "stored_dtype": layer.stored_dtype, "compute_dtype": layer.compute_dtype,
        "eps": _num(d.eps), **{name: value for name, (value, _) in shown.items()},
        "digits": {name: digits for name, (_, digits) in shown.items()},
        "clear": row.clear, "method": d.method,
    }


def first_layer_dict(first: FirstLayer | None) -> dict[str, Any] | None:
    """W1 and its input path."""
    if first is None:
        return None
    return {
        "input": first.input, "input_dtype": first.input_dtype,
        "input_shape": None if first.input_shape is None else list(first.input_shape),
        "row_index": first.row_index, "node": first.node,
        "path": [{"node": s.node, "op": s.op} for s in first.path],
        "exactness": first.exactness, "reason": first.reason,
        "blind_elements": first.blind_elements, "input_elements": first.input_elements,
    }


def model_dict(audit: ModelAudit) -> dict[str, Any]:
    """One model's full audit."""
    return {
        "path": audit.path, "sha256": audit.sha256, "producer": audit.producer,
        "ir_version": audit.ir_version, "opset": audit.opset,
        "input_shapes": {name: list(dims) for name, dims in audit.settings.input_shapes},
        "metrics": metrics_dict(audit.metrics),
        "first_layer": first_layer_dict(audit.first_layer),
        "layers": [layer_dict(r) for r in audit.rows],
        "skipped": [{"node": s.label, "op": s.op_type, "reason": s.reason,
                     "holds_weights": s.holds_weights} for s in audit.skipped],
        "notes": list(audit.notes),
        "validation": audit.validation,
    }


def metrics_dict(m: ModelMetrics) -> dict[str, Any]:
    """A model's Table 1 metrics as the reports write them."""
    return {"n": m.n, "nu": m.nu, "nu_ratio": m.nu_ratio, "mu": m.mu, "mu_ratio": m.mu_ratio,
            "nullity_sum": m.nullity_sum, "nullity_w1": m.nullity_w1,
            "skipped_weights": m.skipped_weights, "unclear": m.unclear}


def settings_dict(audits: Sequence[ModelAudit]) -> dict[str, Any]:
    """The settings every number was decided with (the same for every audit of one call;
    input shapes, which are per model, are in each model's record)."""
    settings = audits[0].settings
    return settings_record(settings.convention.value, settings.rule,
                           "cpu" if settings.gram is None else settings.gram.device)


def settings_record(convention: str, rule: ToleranceRule, gram_device: str = "cpu"
                    ) -> dict[str, Any]:
    """The audit report's ``settings`` (keys AUDIT_SETTINGS_KEYS) for these choices."""
    return {
        "conv_convention": convention, "tolerance_rule": rule.describe(),
        "rtol": rule.rtol, "atol": rule.atol,
        "svd_max_dim": SVD_MAX_DIM, "gram_trust": GRAM_TRUST, "clear_margin": CLEAR_MARGIN,
        "gram_device": gram_device,
    }


AUDIT_SETTINGS_KEYS = ("conv_convention", "tolerance_rule", "rtol", "atol", "svd_max_dim",
                       "gram_trust", "clear_margin", "gram_device")


def report_dict(audits: Sequence[ModelAudit]) -> dict[str, Any]:
    """The whole report as plain data."""
    return {
        "$schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION, "tool": versions(),
        "settings": settings_dict(audits), "models": [model_dict(a) for a in audits],
    }


def render(audits: Sequence[ModelAudit], options: RenderOptions) -> str:
    """JSON text, 2-space indented, keys in insertion order."""
    return json.dumps(report_dict(audits), indent=2, allow_nan=False) + "\n"
