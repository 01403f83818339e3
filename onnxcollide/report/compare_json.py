"""JSON report of `compare` with a versioned schema
(onnxcollide/schemas/compare-report-v1.schema.json).

Holds every number of the comparison and every setting and threshold it was decided with; the
same models and settings give byte-identical JSON (no timestamps, keys in a fixed order).
"""

from __future__ import annotations

import json
import math
from typing import Any

from onnxcollide.audit.model import LayerRow, ModelAudit
from onnxcollide.compare import align, relate
from onnxcollide.compare.relate import WeightRelation
from onnxcollide.compare.results import (
    INPUT_RANGE,
    TRANSFER_DRAW,
    TRANSFER_RATIO,
    Comparison,
    ModelComparison,
    PairedLayer,
    RunComparison,
    TransferCheck,
    TransferSource,
)
from onnxcollide.report.json_format import first_layer_dict, metrics_dict, versions

SCHEMA_ID = "https://onnxcollide.dev/schemas/compare-report-v1.schema.json"
SCHEMA_VERSION = 1


def _num(value: float | None) -> float | None:
    """A JSON number: None for None, inf and nan."""
    return None if value is None or not math.isfinite(value) else float(value)


def layer_summary(row: LayerRow) -> dict[str, Any]:
    """One layer's facts as the comparison shows them (the audit's values and digits)."""
    layer, shown = row.layer, row.decision.resolved()
    return {
        "index": row.index, "nodes": list(layer.nodes), "op": layer.op, "layout": layer.layout,
        "q": layer.q, "p": layer.p, "groups": layer.groups, "rank": row.rank,
        "nullity": row.nullity, "sigma_max": shown["sigma_max"][0], "tol": shown["tol"][0],
        "margin": shown["margin"][0], "margin_digits": shown["margin"][1], "clear": row.clear,
        "method": row.decision.method, "stored_dtype": layer.stored_dtype,
        "compute_dtype": layer.compute_dtype,
    }


def relation_dict(relation: WeightRelation) -> dict[str, Any]:
    """How the other weight relates to the reference's, every figure."""
    return {
        "kind": relation.kind, "label": relation.label(), "scaled": relation.scaled,
        "transform": relation.transform, "max_abs": _num(relation.max_abs),
        "max_rel": _num(relation.max_rel), "scale_min": _num(relation.scale_min),
        "scale_max": _num(relation.scale_max), "step_min": _num(relation.step_min),
        "step_max": _num(relation.step_max), "max_steps": _num(relation.max_steps),
        "bound": relation.bound, "note": relation.note,
    }


def _pair_dict(pair: PairedLayer) -> dict[str, Any]:
    m = pair.match
    return {
        "reference": layer_summary(pair.reference), "other": layer_summary(pair.other),
        "same_structure": pair.same_structure, "common_rank": pair.common_rank,
        "match": {"cost": _num(m.cost), "confidence": _num(m.confidence), "basis": m.basis,
                  "ambiguous_with": list(m.ambiguous_with)},
        "relation": relation_dict(pair.relation),
    }


def run_dict(run: RunComparison | None) -> dict[str, Any] | None:
    """``--run`` figures of one model."""
    if run is None:
        return None
    return {
        "inputs": [{"reference": m.reference, "other": m.other, "layout": m.layout,
                    "permutation": None if m.permutation is None else list(m.permutation)}
                   for m in run.inputs],
        "outputs": [{"reference": o.reference, "other": o.other, "layout": o.layout,
                     "max_abs": _num(o.max_abs), "max_rel": _num(o.max_rel),
                     "argmax_agree": _num(o.argmax_agree), "top5_agree": _num(o.top5_agree)}
                    for o in run.outputs],
        "computed_in": run.computed_in, "tolerance": _num(run.tolerance),
        "judged": run.judged, "agree": run.agree,
    }


def transfer_dict(check: TransferCheck | None) -> dict[str, Any] | None:
    """``--transfer`` figures of one model, with each colliding input's validation."""
    if check is None:
        return None
    return {
        "w1_output": check.w1, "verdict": check.verdict, "reason": check.reason,
        "layer_residual": _num(check.layer_residual),
        "baseline_residual": _num(check.baseline_residual), "ratio": _num(check.ratio),
        "output_max_rel": _num(check.output_max_rel), "checks": list(check.checks),
    }


def _source_dict(source: TransferSource | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {"made": source.made, "input": source.input, "count": source.count,
            "method": source.method, "exactness": source.exactness,
            "norms": [_num(n) for n in source.norms]}


def _model_head(audit: ModelAudit) -> dict[str, Any]:
    return {
        "path": audit.path, "sha256": audit.sha256, "producer": audit.producer,
        "opset": audit.opset,
        "input_shapes": {name: list(dims) for name, dims in audit.settings.input_shapes},
        "metrics": metrics_dict(audit.metrics),
        "first_layer": first_layer_dict(audit.first_layer),
    }


def _model_dict(result: ModelComparison) -> dict[str, Any]:
    return {
        **_model_head(result.audit),
        "pairs": [_pair_dict(p) for p in result.pairs],
        "unmatched_reference": [layer_summary(r) for r in result.unmatched_reference],
        "unmatched_other": [layer_summary(r) for r in result.unmatched_other],
        "crossings": [list(c) for c in result.crossings],
        "run": run_dict(result.run), "transfer": transfer_dict(result.transfer),
    }


def settings_dict(comparison: Comparison) -> dict[str, Any]:
    """Every setting and threshold the comparison's numbers were decided with."""
    s = comparison.settings
    return {
        "conv_convention": s.audit.convention.value, "tolerance_rule": s.audit.rule.describe(),
        "rtol": s.audit.rule.rtol, "atol": s.audit.rule.atol, "seed": s.seed, "run": s.run,
        "transfer": s.transfer, "count": s.count, "device": s.device,
        "structure_only": s.structure_only, "pins": list(s.pins),
        "alignment": {"family_penalty": align.FAMILY_PENALTY,
                      "confident_gap": align.CONFIDENT_GAP,
                      "ambiguous_gap": align.AMBIGUOUS_GAP,
                      "close_content": align.CLOSE_CONTENT,
                      "spectrum_values": align.SPECTRUM_VALUES},
        "relations": {"equal_ulps": relate.EQUAL_ULPS,
                      "half_step_slack": relate.HALF_STEP_SLACK,
                      "grid_rtol": relate.GRID_RTOL},
        "input_range": list(INPUT_RANGE), "transfer_draw": list(TRANSFER_DRAW),
        "transfer_ratio": TRANSFER_RATIO,
    }


def compare_dict(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison as plain data."""
    return {
        "$schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION, "tool": versions(),
        "settings": settings_dict(comparison), "same": comparison.same,
        "differences": [{"model": d.model, "kind": d.kind, "reference_node": d.reference_node,
                         "other_node": d.other_node, "text": d.text}
                        for d in comparison.differences],
        "notes": list(comparison.notes),
        "inputs": [{"purpose": d.purpose, "name": d.name, "shape": list(d.shape),
                     "dtype": d.dtype, "range": [d.low, d.high], "seed": d.seed}
                    for d in comparison.inputs],
        "reference": {**_model_head(comparison.reference),
                      "layers": [layer_summary(r) for r in comparison.reference.rows]},
        "models": [_model_dict(r) for r in comparison.others],
        "transfer_source": _source_dict(comparison.source),
        "reference_transfer": transfer_dict(comparison.reference_transfer),
    }


def render_json(comparison: Comparison) -> str:
    """JSON text, 2-space indented, keys in insertion order."""
    return json.dumps(compare_dict(comparison), indent=2, allow_nan=False) + "\n"
