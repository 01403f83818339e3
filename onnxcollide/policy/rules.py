"""The rules `onnxcollide check` knows: ids, what each checks, what a finding means and what
to do about it (the texts SARIF and JUnit reports carry), and their defaults."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "off")

METRIC = "metric"  # a Table 1 metric above a bound
W1 = "w1"  # the first layer admits an exact collision
LAYER = "layer"  # per-layer nullity above a bound, for layers matching a glob
BASELINE = "baseline"  # against an earlier audit of the same model
MODEL = "model"  # the model could not be read


@dataclass(frozen=True)
class RuleInfo:
    """One rule of the catalogue.

    Attributes:
        id: the rule's name in policies, ``--fail-on`` and reports.
        kind: METRIC, W1, LAYER, BASELINE or MODEL.
        short: what fails, in a few words.
        full: what the rule checks, in a sentence or two.
        help: what a finding means and what to do about it.
        severity: the default severity (``error``, ``warning`` or ``off``).
        count: for METRIC rules, True when the metric is a count (bounds are integers),
            False for a ratio in [0, 1].
    """

    id: str
    kind: str
    short: str
    full: str
    help: str
    severity: str
    count: bool = True


_ALLOW_HINT = ("If the finding is accepted, allow-list the model or layer with a written "
               "reason ([[allow]] in the policy).")

CATALOGUE: tuple[RuleInfo, ...] = (
    RuleInfo(
        "w1-collision", W1, "W1 admits exact collisions",
        "The first linear layer W1 admits exact collisions of the whole input: W1 is dense "
        "or a patchify conv with nullity(W1) >= 1, or some input elements are read by no "
        "conv window (blind elements).",
        "Inputs that differ along W1's left kernel (or in blind elements) give the same "
        "features, so the same output (Lemma 1 of Ozbulak et al.): an input can change by a "
        "large amount without the prediction moving. Make W1 injective on the input (at "
        "least as many outputs as inputs, full rank; no stride larger than the kernel), or "
        "prove it with 'onnxcollide collide MODEL'. " + _ALLOW_HINT, "error"),
    RuleInfo(
        "w1-validated", W1, "an exact collision at W1 is proven in ONNX Runtime",
        "One colliding input is made for a seeded random input and run with it through ONNX "
        "Runtime (the check of 'audit --validate'); the rule fails when the collision passes "
        "validation. The finding carries the W1 residual and the output difference.",
        "The model cannot tell the two inputs apart in practice, not only in theory: the W1 "
        "residual is at rounding level and the outputs agree. See 'onnxcollide collide' to "
        "make and save such inputs. " + _ALLOW_HINT, "off"),
    RuleInfo(
        "nullity_w1", METRIC, "nullity(W1) above the bound",
        "The nullity of the first linear layer W1 (the paper's Table 1) is above the bound.",
        "W1 cannot see that many directions of its input. Whether they are collisions of the "
        "whole input depends on W1's class (w1-collision). " + _ALLOW_HINT, "off"),
    RuleInfo(
        "nu_ratio", METRIC, "share of weights with a left kernel above the bound",
        "nu/n, the share of weights with nullity >= 1 (Table 1), is above the bound.",
        "More layers than the policy allows discard directions of their input. "
        + _ALLOW_HINT, "off", count=False),
    RuleInfo(
        "mu_ratio", METRIC, "share of narrowing weights above the bound",
        "mu/n, the share of weights with fewer outputs than inputs (p < q, Lemma 3), is above "
        "the bound.",
        "More layers than the policy allows map to fewer dimensions than they read. "
        + _ALLOW_HINT, "off", count=False),
    RuleInfo(
        "nullity_sum", METRIC, "sum of nullities above the bound",
        "The sum of every weight's nullity (Table 1) is above the bound.",
        "The model as a whole discards more input directions than the policy allows. "
        + _ALLOW_HINT, "off"),
    RuleInfo(
        "unclear", METRIC, "rank decisions too close to call",
        "Rows whose rank decision has a margin under the clear margin (10x): the rank would "
        "change if the tolerance moved that much.",
        "These layers' ranks depend on the tolerance rule. Look at them with 'onnxcollide "
        "audit MODEL' (marked '!') and decide the tolerance (rtol/atol in the policy's "
        "[settings]). " + _ALLOW_HINT, "warning"),
    RuleInfo(
        "skipped_weights", METRIC, "weights that are not analysed",
        "Ops that hold weights the audit does not analyse (an LSTM, a Gather of embeddings): "
        "they are not counted in Table 1.",
        "The audit's numbers leave these weights out; review them by other means. "
        + _ALLOW_HINT, "warning"),
    RuleInfo(
        "layer-nullity", LAYER, "a matching layer's nullity above the bound",
        "A layer whose node name, weight name or initializer matches the rule's glob has a "
        "nullity above the bound.",
        "This layer cannot see that many directions of its input. " + _ALLOW_HINT, "error"),
    RuleInfo(
        "baseline-rank", BASELINE, "a layer lost rank against the baseline",
        "A layer, matched to the baseline by weight identity, has a lower rank or a larger "
        "nullity than in the baseline.",
        "The retrained or re-exported model discards input directions its baseline did not. "
        "If intended, accept it with --update-baseline. " + _ALLOW_HINT, "error"),
    RuleInfo(
        "baseline-new-layer", BASELINE, "a new layer with a left kernel",
        "A layer that the baseline does not have (no weight of the baseline matches it) has "
        "nullity >= 1.",
        "A layer added since the baseline discards directions of its input. If intended, "
        "accept it with --update-baseline. " + _ALLOW_HINT, "error"),
    RuleInfo(
        "baseline-metrics", BASELINE, "Table 1 metrics worse than the baseline",
        "One of nu, nu/n, mu, mu/n, the sum of nullities or nullity(W1) grew against the "
        "baseline.",
        "The model as a whole discards more than its baseline. If intended, accept it with "
        "--update-baseline. " + _ALLOW_HINT, "warning"),
    RuleInfo(
        "baseline-missing", BASELINE, "no baseline for the model",
        "Baselines were given (--baseline, --baseline-dir) but none is for this model.",
        "The model is checked without the baseline rules. Write one with --update-baseline.",
        "warning"),
    RuleInfo(
        "unreadable", MODEL, "the model cannot be read",
        "The model is missing, truncated, not ONNX, has missing external data, or holds "
        "nothing the audit can analyse.",
        "Fix or replace the file; the other models are checked all the same (exit code 3 "
        "when no error rule failed). This rule cannot be turned off.", "error"),
)

BY_ID: dict[str, RuleInfo] = {rule.id: rule for rule in CATALOGUE}
