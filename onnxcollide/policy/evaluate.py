"""Rules over the facts of each model (and its baseline) -> findings; the exit code they give.

Pure: no file is read or written here.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from onnxcollide.policy.baseline import Baseline, Comparison, compare
from onnxcollide.policy.config import Allow, Policy, RuleSetting
from onnxcollide.policy.facts import LayerFacts, ModelFacts
from onnxcollide.policy.rules import BY_ID, METRIC

EXACT_CLASSES = ("dense", "patchify")  # W1 classes whose kernel vectors lift to the input

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_UNREADABLE = 3


@dataclass(frozen=True)
class Finding:
    """One rule that fails for one model (or one of its layers).

    Attributes:
        model: the model's path as given.
        rule: the policy rule's id (``nullity_w1``, ``layer-nullity/2``).
        kind: the catalogue id (``layer-nullity``).
        severity: ``error`` or ``warning``.
        message: one line with the numbers and the bound.
        node: the node concerned (W1's, or the layer's first), None for the whole model.
        weight: the layer's weight, None for the whole model.
        value: the number that failed (None where several did).
        threshold: the bound it exceeded (None for rules without a bound).
        allowed: the allow-list reason when an entry covers the finding (it does not fail).
        details: the figures behind it (residuals, the baseline's numbers), JSON-ready.
        names: every name of the layer concerned (for allow-list globs).
    """

    model: str
    rule: str
    kind: str
    severity: str
    message: str
    node: str | None = None
    weight: str | None = None
    value: float | None = None
    threshold: float | None = None
    allowed: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    @property
    def fails(self) -> bool:
        """An error that no allow-list entry covers."""
        return self.severity == "error" and self.allowed is None


@dataclass(frozen=True)
class ModelOutcome:
    """One model of the check.

    Attributes:
        path: as given.
        facts: what the audit found (None when the model could not be read).
        error: the one-line reason it could not be read, else None.
        baseline: the baseline it was compared with, if any.
        comparison: how it changed against that baseline.
    """

    path: str
    facts: ModelFacts | None
    error: str | None = None
    baseline: Baseline | None = None
    comparison: Comparison | None = None


@dataclass(frozen=True)
class CheckResult:
    """The policy, every model and every finding, in the order the models were given.

    Attributes:
        policy: the policy in effect.
        models: one outcome per model.
        findings: model by model, in the policy's rule order.
        baselines_given: whether --baseline or --baseline-dir was given (the baseline rules
            apply, and ``baseline-missing`` to models without one).
    """

    policy: Policy
    models: tuple[ModelOutcome, ...]
    findings: tuple[Finding, ...]
    baselines_given: bool = False

    @property
    def exit_code(self) -> int:
        """1 when an error rule fails, else 3 when a model could not be read, else 0."""
        if any(f.fails for f in self.findings if f.kind != "unreadable"):
            return EXIT_FAILED
        if any(m.error is not None for m in self.models):
            return EXIT_UNREADABLE
        return EXIT_PASSED

    def rules_for(self, outcome: ModelOutcome) -> tuple[RuleSetting, ...]:
        """The rules evaluated on one model (the enabled ones that apply to it): one test case
        each in JUnit."""
        if outcome.error is not None:
            return tuple(r for r in self.policy.rules if r.kind == "unreadable")
        chosen = []
        for rule in self.policy.enabled:
            if rule.kind == "unreadable":
                continue
            if rule.kind == "baseline-missing":
                if self.baselines_given and outcome.baseline is None:
                    chosen.append(rule)
            elif rule.kind.startswith("baseline-"):
                if outcome.baseline is not None:
                    chosen.append(rule)
            else:
                chosen.append(rule)
        return tuple(chosen)

    def findings_of(self, path: str, rule_id: str | None = None) -> tuple[Finding, ...]:
        """The findings of one model (and one rule)."""
        return tuple(f for f in self.findings
                     if f.model == path and (rule_id is None or f.rule == rule_id))


# ------------------------------------------------------------------ evaluation


def evaluate(policy: Policy, models: Sequence[tuple[str, ModelFacts | str]],
             baselines: Mapping[str, Baseline] | None = None,
             baselines_given: bool = False) -> CheckResult:
    """Evaluate ``policy`` on each model.

    Args:
        policy: the policy in effect.
        models: (path as given, its facts, or the one-line reason it could not be read), in
            the order to report them.
        baselines: the baseline of each path that has one.
        baselines_given: whether baselines were asked for (``baseline-missing`` applies).

    Raises:
        UsageError: a baseline shares no weight with its model (another model's baseline).
    """
    baselines = baselines or {}
    outcomes: list[ModelOutcome] = []
    findings: list[Finding] = []
    for path, facts in models:
        if isinstance(facts, str):
            outcomes.append(ModelOutcome(path, None, facts))
            findings.append(Finding(path, "unreadable", "unreadable", "error", facts))
            continue
        baseline = baselines.get(path)
        comparison = compare(facts, baseline) if baseline is not None else None
        outcomes.append(ModelOutcome(path, facts, None, baseline, comparison))
        for rule in policy.enabled:
            found = _rule_findings(rule, path, facts, comparison, baselines_given)
            findings += [_allowed(f, policy.allow) for f in found]
    return CheckResult(policy, tuple(outcomes), tuple(findings), baselines_given)


def _rule_findings(rule: RuleSetting, path: str, facts: ModelFacts,
                   comparison: Comparison | None, baselines_given: bool) -> list[Finding]:
    """The findings of one rule on one model."""
    if rule.kind == "w1-collision":
        return _w1_collision(rule, path, facts)
    if rule.kind == "w1-validated":
        return _w1_validated(rule, path, facts)
    if rule.kind == "layer-nullity":
        return [_layer_finding(rule, path, layer) for layer in facts.layers
                if layer.nullity > (rule.max or 0)
                and any(fnmatch.fnmatchcase(n, rule.match or "") for n in layer.names)]
    if rule.kind == "baseline-missing":
        return [] if comparison is not None or not baselines_given else [Finding(
            path, rule.id, rule.kind, rule.severity,
            "no baseline for this model: the baseline rules were not checked")]
    if rule.kind.startswith("baseline-"):
        return [] if comparison is None else _baseline_findings(rule, path, comparison)
    if _is_metric(rule):
        return _metric(rule, path, facts)
    return []


def _is_metric(rule: RuleSetting) -> bool:
    return BY_ID[rule.kind].kind == METRIC


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def _metric(rule: RuleSetting, path: str, facts: ModelFacts) -> list[Finding]:
    value = facts.metrics.value(rule.kind)
    bound = rule.max or 0
    if value is None or value <= bound:
        return []
    node = facts.first_layer.node if rule.kind == "nullity_w1" and facts.first_layer else None
    return [Finding(path, rule.id, rule.kind, rule.severity,
                    f"{rule.kind} {_number(value)} > {_number(bound)}", node=node, value=value,
                    threshold=bound)]


def _w1_collision(rule: RuleSetting, path: str, facts: ModelFacts) -> list[Finding]:
    first = facts.first_layer
    nullity = facts.metrics.nullity_w1
    if first is None:
        return []
    reasons = []
    if first.exactness in EXACT_CLASSES and nullity is not None and nullity >= 1:
        where = "its input" if first.exactness == "dense" else "each window of its input"
        reasons.append(f"W1 is {first.exactness} with nullity(W1) {nullity} > 0: {nullity} "
                       f"direction(s) of {where} give the same features")
    if first.blind_elements:
        reasons.append(f"{first.blind_elements} of {first.input_elements} input elements are "
                       "read by no window")
    if not reasons:
        return []
    row = next((lay for lay in facts.layers if lay.index == first.row_index), None)
    return [Finding(path, rule.id, rule.kind, rule.severity,
                    "exact collisions of the whole input: " + "; ".join(reasons),
                    node=first.node, weight=row.weight if row else None, value=nullity,
                    threshold=0, details={"class": first.exactness, "nullity_w1": nullity,
                                          "blind_elements": first.blind_elements,
                                          "input_elements": first.input_elements},
                    names=row.names if row else ())]


def _w1_validated(rule: RuleSetting, path: str, facts: ModelFacts) -> list[Finding]:
    check = facts.validation
    figures = check.get("validation") if check else None
    if not figures or not figures.get("passed"):
        return []
    residual = figures["collision"]["layer_residual"]
    baseline = figures["baseline"]["layer_residual"]
    outputs = [o["max_abs"] for o in figures["collision"]["outputs"] if o["max_abs"] is not None]
    details = {"verdict": check["verdict"] if check else "", "seed": check["seed"] if check
               else None, "w1_residual": residual, "random_w1_residual": baseline,
               "output_max_abs": max(outputs) if outputs else None,
               "device": figures["device"]["used"], "precision": figures["precision"],
               "tolerances": figures["tolerances"]}
    first = facts.first_layer
    shown_out = "-" if details["output_max_abs"] is None else f"{details['output_max_abs']:.3g}"
    return [Finding(path, rule.id, rule.kind, rule.severity,
                    f"a colliding input passed validation in ONNX Runtime: W1 residual "
                    f"{_sci(residual)} (a random perturbation of equal norm: {_sci(baseline)}), "
                    f"outputs differ by at most {shown_out} (seed {details['seed']}, "
                    f"{details['device']}, {details['precision']})",
                    node=first.node if first else None, value=residual,
                    threshold=figures["tolerances"]["layer_rtol"], details=details)]


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _layer_finding(rule: RuleSetting, path: str, layer: LayerFacts) -> Finding:
    return Finding(path, rule.id, rule.kind, rule.severity,
                   f"nullity {layer.nullity} > {_number(rule.max)} (rank {layer.rank} of "
                   f"q={layer.q}, p={layer.p}; matches '{rule.match}')",
                   node=layer.nodes[0], weight=layer.weight, value=layer.nullity,
                   threshold=rule.max, details={"rank": layer.rank, "q": layer.q, "p": layer.p,
                                                "tol": layer.tol},
                   names=layer.names)


def _baseline_findings(rule: RuleSetting, path: str, comparison: Comparison) -> list[Finding]:
    found = []
    if rule.kind == "baseline-rank":
        for pair in comparison.pairs:
            now, before = pair.now, pair.before
            if now.rank < before.rank or now.nullity > before.nullity:
                found.append(Finding(
                    path, rule.id, rule.kind, rule.severity,
                    f"rank {before.rank} -> {now.rank}, nullity {before.nullity} -> "
                    f"{now.nullity} (q {before.q} -> {now.q}; matched by {pair.matched_by} to "
                    f"{before.label} in {comparison.baseline})",
                    node=now.nodes[0], weight=now.weight, value=now.nullity,
                    threshold=before.nullity,
                    details={"before": _layer_numbers(before), "now": _layer_numbers(now),
                             "matched_by": pair.matched_by, "baseline": comparison.baseline},
                    names=now.names))
    elif rule.kind == "baseline-new-layer":
        for layer in comparison.new:
            if layer.nullity >= 1:
                found.append(Finding(
                    path, rule.id, rule.kind, rule.severity,
                    f"new layer (no weight of {comparison.baseline} matches it) with nullity "
                    f"{layer.nullity} > 0 (rank {layer.rank} of q={layer.q})",
                    node=layer.nodes[0], weight=layer.weight, value=layer.nullity, threshold=0,
                    details={"now": _layer_numbers(layer), "baseline": comparison.baseline},
                    names=layer.names))
    elif rule.kind == "baseline-metrics" and comparison.worse:
        changes = ", ".join(f"{name} {_number(b)} -> {_number(n)}"
                            for name, b, n in comparison.worse)
        found.append(Finding(
            path, rule.id, rule.kind, rule.severity,
            f"Table 1 worse than {comparison.baseline}: {changes}",
            details={"worse": [{"metric": name, "before": b, "now": n}
                               for name, b, n in comparison.worse],
                     "baseline": comparison.baseline}))
    return found


def _layer_numbers(layer: LayerFacts) -> dict[str, Any]:
    return {"index": layer.index, "node": layer.nodes[0], "weight": layer.weight,
            "q": layer.q, "p": layer.p, "rank": layer.rank, "nullity": layer.nullity,
            "tol": layer.tol}


# ------------------------------------------------------------------ allow-lists


def _allowed(finding: Finding, allow: Sequence[Allow]) -> Finding:
    """The finding with the reason of the first allow entry that covers it."""
    for entry in allow:
        if _covers(entry, finding):
            return replace(finding, allowed=entry.reason)
    return finding


def _covers(entry: Allow, finding: Finding) -> bool:
    if entry.rules and finding.kind not in entry.rules:
        return False
    if entry.model is not None and not model_matches(entry.model, finding.model):
        return False
    if entry.layer is not None:
        return any(fnmatch.fnmatchcase(n, entry.layer) for n in finding.names)
    return True


def model_matches(glob: str, path: str) -> bool:
    """Whether ``glob`` matches a model: its path as given, relative to the current folder,
    or its file name (``/`` separators; ``*`` also crosses folders)."""
    given = path.replace("\\", "/")
    relative = os.path.relpath(os.path.abspath(path)).replace("\\", "/")
    return any(fnmatch.fnmatchcase(p, glob) for p in (given, relative, given.rsplit("/", 1)[-1]))
