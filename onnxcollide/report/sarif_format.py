"""SARIF 2.1.0 for `onnxcollide check --sarif`: what GitHub code scanning and other SARIF
viewers read.

One reporting descriptor per rule of the policy in effect (id, short and full description,
help saying what a finding means and what to do), one result per finding with its level from
the severity, the model file as artifact location (relative to the folder the check ran in,
``%SRCROOT%``) and the node as logical location. Allowed findings carry a suppression with the
allow-list's reason. The policy in effect is in the run's property bag.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from onnxcollide.policy.config import RuleSetting
from onnxcollide.policy.evaluate import CheckResult, Finding
from onnxcollide.policy.rules import BY_ID
from onnxcollide.report.check_format import policy_dict

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = ("https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/"
                "sarif-schema-2.1.0.json")
SOURCE_ROOT = "%SRCROOT%"
LEVELS = {"error": "error", "warning": "warning"}


def _rule_descriptor(rule: RuleSetting) -> dict[str, Any]:
    info = BY_ID[rule.kind]
    short = info.short if rule.max is None else f"{info.short} ({rule.describe()})"
    properties: dict[str, Any] = {"tags": ["onnx", "feature-collision", info.kind],
                                  "source": rule.source}
    if rule.max is not None:
        properties["max"] = rule.max
    if rule.match is not None:
        properties["match"] = rule.match
    return {
        "id": rule.id,
        "name": "".join(part.capitalize() for part in
                        rule.kind.replace("-", "_").split("_")),
        "shortDescription": {"text": short},
        "fullDescription": {"text": info.full},
        "help": {"text": info.help},
        "defaultConfiguration": {"level": LEVELS.get(rule.severity, "none"),
                                 "enabled": rule.enabled},
        "properties": properties,
    }


def artifact_uri(path: str, root: str) -> tuple[str, str | None]:
    """(URI, uriBaseId): relative to ``root`` (as ``%SRCROOT%``) when the model lies under it,
    else an absolute ``file:`` URI."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, root)
    if not relative.startswith(os.pardir):
        return urllib.parse.quote(relative.replace(os.sep, "/")), SOURCE_ROOT
    return "file://" + urllib.parse.quote(absolute.replace(os.sep, "/")), None


def _fingerprint(finding: Finding) -> str:
    text = "\0".join((finding.model.replace("\\", "/"), finding.rule, finding.node or "",
                      finding.weight or ""))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _result(finding: Finding, index: int, root: str) -> dict[str, Any]:
    uri, base = artifact_uri(finding.model, root)
    artifact: dict[str, Any] = {"uri": uri}
    if base is not None:
        artifact["uriBaseId"] = base
    location: dict[str, Any] = {"physicalLocation": {"artifactLocation": artifact,
                                                     "region": {"startLine": 1}}}
    if finding.node:
        location["logicalLocations"] = [{
            "name": finding.node, "fullyQualifiedName": f"{finding.model}::{finding.node}",
            "kind": "function"}]
    result: dict[str, Any] = {
        "ruleId": finding.rule, "ruleIndex": index, "level": LEVELS[finding.severity],
        "message": {"text": finding.message}, "locations": [location],
        "partialFingerprints": {"onnxcollideFinding/v1": _fingerprint(finding)},
        "properties": {"value": finding.value, "threshold": finding.threshold,
                       "weight": finding.weight, "details": dict(finding.details)},
    }
    if finding.allowed is not None:
        result["suppressions"] = [{"kind": "external", "status": "accepted",
                                   "justification": finding.allowed}]
    return result


def sarif_dict(result: CheckResult, tool: Mapping[str, str], root: str) -> dict[str, Any]:
    """The SARIF log of one check as plain data (``root``: the folder URIs are relative to)."""
    rules = [r for r in result.policy.rules if r.enabled]
    index = {r.id: k for k, r in enumerate(rules)}
    unreadable = [m for m in result.models if m.error is not None]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "onnxcollide", "version": tool["onnxcollide"],
                            "semanticVersion": tool["onnxcollide"],
                            "rules": [_rule_descriptor(r) for r in rules]}},
        "originalUriBaseIds": {SOURCE_ROOT: {"uri": _folder_uri(root)}},
        "invocations": [{
            "executionSuccessful": not unreadable, "exitCode": result.exit_code,
            "toolExecutionNotifications": [
                {"level": "error", "message": {"text": m.error or ""},
                 "descriptor": {"id": "unreadable"}} for m in unreadable]}],
        "results": [_result(f, index[f.rule], root) for f in result.findings],
        "columnKind": "unicodeCodePoints",
        "properties": {"policy": policy_dict(result.policy), "versions": dict(tool)},
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def _folder_uri(root: str) -> str:
    path = os.path.abspath(root).replace(os.sep, "/").rstrip("/") + "/"
    return "file://" + urllib.parse.quote(path if path.startswith("/") else "/" + path)


def render_sarif(result: CheckResult, tool: Mapping[str, str], root: str) -> str:
    """SARIF JSON text."""
    return json.dumps(sarif_dict(result, tool, root), indent=2, allow_nan=False) + "\n"
