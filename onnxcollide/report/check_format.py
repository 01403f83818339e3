"""`onnxcollide check`'s reports: the summary lines and the JSON report (versioned schema
onnxcollide/schemas/check-report-v1.schema.json).

The JSON holds the policy in effect with where each value came from, every model's audit
record (the audit report's model schema, so a check report serves as a baseline), how each
model changed against its baseline, and every finding. The same models, policy and settings
give byte-identical JSON, whether the audits were run or read from the cache, in one process
or several.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from onnxcollide.policy.baseline import CHECK_SCHEMA_ID, Comparison
from onnxcollide.policy.config import Policy
from onnxcollide.policy.evaluate import CheckResult, Finding, ModelOutcome
from onnxcollide.policy.facts import LayerFacts

SCHEMA_VERSION = 1


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _one_line(text: str) -> str:
    """``text`` with each run of whitespace (a newline in a path, a reason on two lines) one
    space, as ``error:`` lines are written (OnnxCollideError.one_line)."""
    return " ".join(text.split())


def finding_line(finding: Finding) -> str:
    """One finding in one line: model, severity, rule, node, the numbers and the bound."""
    at = f" at {finding.node}" if finding.node else ""
    allowed = f" (allowed: {finding.allowed})" if finding.allowed else ""
    severity = "allowed" if finding.allowed else finding.severity
    return _one_line(f"{finding.model}: {severity} {finding.rule}{at}: {finding.message}"
                    f"{allowed}")


def policy_line(policy: Policy, baselines: bool = True) -> str:
    """The policy in effect: its source, each rule that is on with where its severity came
    from (the baseline rules only where ``baselines`` were given), and settings that are not
    the default. The JSON, SARIF and JUnit reports hold every value."""
    rules = ", ".join(f"{r.describe()} {r.severity} [{r.source}]" for r in policy.enabled
                      if r.kind != "unreadable"
                      and (baselines or not r.kind.startswith("baseline-")))
    settings = [f"{p.key.removeprefix('settings.')}={p.value} [{p.source}]"
                for p in policy.provenance
                if p.key.startswith("settings.") and p.source != "default"]
    allow = f"; {len(policy.allow)} allow-list entr{'y' if len(policy.allow) == 1 else 'ies'}" \
        if policy.allow else ""
    extra = f"; settings: {', '.join(settings)}" if settings else ""
    return _one_line(f"policy: {policy.source}; rules: {rules or 'none'}{extra}{allow}")


def summary_text(result: CheckResult) -> str:
    """The summary: one line per finding, the policy, and the verdict with its counts."""
    lines = [finding_line(f) for f in result.findings]
    lines.append(policy_line(result.policy, result.baselines_given))
    counts = counts_of(result)
    verdict = {0: "passed", 1: "failed", 3: "incomplete"}[result.exit_code]
    lines.append(
        f"check {verdict}: {counts['models']} model(s), {counts['errors']} error(s), "
        f"{counts['warnings']} warning(s), {counts['allowed']} allowed, "
        f"{counts['unreadable']} unreadable")
    return "\n".join(lines) + "\n"


def counts_of(result: CheckResult) -> dict[str, int]:
    """How many models, errors (that fail), warnings, allowed findings, unreadable models."""
    findings = [f for f in result.findings if f.kind != "unreadable"]
    return {"models": len(result.models),
            "errors": sum(f.fails for f in findings),
            "warnings": sum(f.severity == "warning" and f.allowed is None for f in findings),
            "allowed": sum(f.allowed is not None for f in findings),
            "unreadable": sum(m.error is not None for m in result.models)}


# ------------------------------------------------------------------ JSON


def policy_dict(policy: Policy) -> dict[str, Any]:
    """The policy in effect, with where each value came from."""
    return {
        "source": policy.source,
        "rules": [{"id": r.id, "kind": r.kind, "severity": r.severity, "max": r.max,
                   "match": r.match, "source": r.source} for r in policy.rules],
        "allow": [{"model": a.model, "layer": a.layer, "rules": list(a.rules),
                   "reason": a.reason, "source": a.source} for a in policy.allow],
        "values": [{"key": p.key, "value": p.value, "source": p.source}
                   for p in policy.provenance],
    }


def _layer_ref(layer: LayerFacts) -> dict[str, Any]:
    return {"index": layer.index, "node": layer.nodes[0], "weight": layer.weight,
            "rank": layer.rank, "nullity": layer.nullity}


def comparison_dict(comparison: Comparison | None) -> dict[str, Any] | None:
    """How the model changed against its baseline (null without one)."""
    if comparison is None:
        return None
    return {
        "baseline": comparison.baseline,
        "layers": [{"now": _layer_ref(p.now), "before": _layer_ref(p.before),
                    "matched_by": p.matched_by} for p in comparison.pairs],
        "new": [_layer_ref(layer) for layer in comparison.new],
        "removed": [_layer_ref(layer) for layer in comparison.removed],
        "worse": [{"metric": name, "before": b, "now": n} for name, b, n in comparison.worse],
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    """One finding as plain data."""
    return {"model": finding.model, "rule": finding.rule, "kind": finding.kind,
            "severity": finding.severity, "message": finding.message, "node": finding.node,
            "weight": finding.weight, "value": finding.value, "threshold": finding.threshold,
            "allowed": finding.allowed, "details": dict(finding.details)}


def model_entry(outcome: ModelOutcome, record: Mapping[str, Any] | None) -> dict[str, Any]:
    """One model: its status, its audit record, its baseline comparison."""
    return {"path": outcome.path, "status": "unreadable" if outcome.error else "checked",
            "error": outcome.error, "baseline": comparison_dict(outcome.comparison),
            "audit": None if record is None else dict(record)}


def report_dict(result: CheckResult, records: Mapping[str, Mapping[str, Any]],
                settings: Mapping[str, Any], tool: Mapping[str, str]) -> dict[str, Any]:
    """The whole check as plain data.

    Args:
        result: the evaluated check.
        records: each readable model's audit record (audit-report-v1's model), by path.
        settings: the audit settings (audit-report-v1's settings).
        tool: the versions of onnxcollide and its numerics.
    """
    counts = counts_of(result)
    return {
        "$schema": CHECK_SCHEMA_ID, "schema_version": SCHEMA_VERSION, "tool": dict(tool),
        "settings": dict(settings), "policy": policy_dict(result.policy),
        "models": [model_entry(m, records.get(m.path)) for m in result.models],
        "findings": [finding_dict(f) for f in result.findings],
        "summary": {**counts, "exit_code": result.exit_code},
    }


def render_json(report: Mapping[str, Any]) -> str:
    """JSON text, 2-space indented, keys in insertion order."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def single_model_report(report: Mapping[str, Any], path: str,
                        audit_schema: str) -> dict[str, Any] | None:
    """The audit report (audit-report-v1) of one model of a check report, for
    ``--update-baseline``; None when that model could not be read."""
    record = next((m["audit"] for m in report["models"] if m["path"] == path), None)
    if record is None:
        return None
    from onnxcollide.report.json_format import AUDIT_SETTINGS_KEYS  # numpy: not for cache hits

    return {"$schema": audit_schema, "schema_version": 1, "tool": report["tool"],
            "settings": {k: report["settings"][k] for k in AUDIT_SETTINGS_KEYS},
            "models": [record]}


def multi_model_report(report: Mapping[str, Any], paths: Sequence[str],
                       audit_schema: str) -> dict[str, Any] | None:
    """The audit report of several models of a check report (None if none was read)."""
    records = [m["audit"] for m in report["models"] if m["path"] in paths and m["audit"]]
    if not records:
        return None
    single = single_model_report(report, next(m["path"] for m in report["models"]
                                              if m["audit"] and m["path"] in paths),
                                 audit_schema)
    assert single is not None
    return {**single, "models": records}
