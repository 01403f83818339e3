"""JUnit XML for `onnxcollide check --junit`: what Jenkins, GitLab and other CI test-report
tabs read.

One test suite per model, one test case per (model, rule evaluated on it): a failure for an
error-severity finding (its text in the failure), a pass with the text in ``system-out`` for a
warning, skipped with the reason for an allowed finding, and an error test case for a model
that could not be read. The policy in effect is in each suite's properties.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from onnxcollide.policy.evaluate import CheckResult, Finding, ModelOutcome


def _case(suite: ET.Element, model: str, rule: str, findings: tuple[Finding, ...]
          ) -> tuple[int, int]:
    """Add one test case; return (failures, skipped) it counts."""
    case = ET.SubElement(suite, "testcase", {"classname": model, "name": rule, "time": "0"})
    failing = [f for f in findings if f.fails]
    allowed = [f for f in findings if f.allowed is not None]
    warnings = [f for f in findings if f.severity == "warning" and f.allowed is None]
    if failing:
        failure = ET.SubElement(case, "failure", {"message": failing[0].message,
                                                  "type": rule})
        failure.text = "\n".join(_text(f) for f in failing)
    elif allowed and not warnings:
        ET.SubElement(case, "skipped", {"message": "allowed: " + "; ".join(
            sorted({f.allowed or "" for f in allowed}))})
        return 0, 1
    if warnings or (failing and allowed):
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(_text(f) for f in (*warnings, *allowed))
    return (1 if failing else 0), 0


def _text(finding: Finding) -> str:
    node = f" at {finding.node}" if finding.node else ""
    allowed = f" (allowed: {finding.allowed})" if finding.allowed else ""
    return f"{finding.severity} {finding.rule}{node}: {finding.message}{allowed}"


def _suite(root: ET.Element, result: CheckResult, outcome: ModelOutcome,
           properties: Mapping[str, str]) -> None:
    suite = ET.SubElement(root, "testsuite", {"name": outcome.path})
    props = ET.SubElement(suite, "properties")
    for name, value in properties.items():
        ET.SubElement(props, "property", {"name": name, "value": value})
    tests = failures = errors = skipped = 0
    if outcome.error is not None:
        case = ET.SubElement(suite, "testcase", {"classname": outcome.path,
                                                 "name": "unreadable", "time": "0"})
        error = ET.SubElement(case, "error", {"message": outcome.error, "type": "unreadable"})
        error.text = outcome.error
        tests, errors = 1, 1
    else:
        for rule in result.rules_for(outcome):
            failed, skip = _case(suite, outcome.path, rule.id,
                                 result.findings_of(outcome.path, rule.id))
            tests, failures, skipped = tests + 1, failures + failed, skipped + skip
    suite.attrib.update({"tests": str(tests), "failures": str(failures),
                         "errors": str(errors), "skipped": str(skipped), "time": "0"})


def _value(value: object) -> str:
    """A policy value as text: strings as they are, anything else as JSON (``null``)."""
    return value if isinstance(value, str) else json.dumps(value)


def render_junit(result: CheckResult) -> str:
    """JUnit XML text."""
    root = ET.Element("testsuites", {"name": "onnxcollide check"})
    policy = result.policy
    properties = {"policy": policy.source}
    properties.update({p.key: f"{_value(p.value)} ({p.source})" for p in policy.provenance})
    for outcome in result.models:
        _suite(root, result, outcome, properties)
    totals = {key: sum(int(s.get(key, "0")) for s in root)
              for key in ("tests", "failures", "errors", "skipped")}
    root.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"
