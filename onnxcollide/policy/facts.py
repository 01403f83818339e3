"""What the rules read about one model: Table 1, W1 and every layer's rank, from an audit
(``ModelAudit``) or from its JSON record (an ``audit -f json`` model, a ``check`` report's
audit, a cache entry). Both give equal facts (a test checks it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onnxcollide.errors import UsageError

if TYPE_CHECKING:
    from onnxcollide.audit.model import ModelAudit


@dataclass(frozen=True)
class LayerFacts:
    """One weight's rank decision.

    Attributes:
        index: 1-based row of the audit.
        nodes: the nodes that use the weight.
        op: the first node's op type.
        weight: the tensor the first node consumes.
        roots: the initializers / Constants the weight is made from.
        chain: the ops applied to the roots (``DequantizeLinear``, ``Transpose``, ...).
        scope: the graph the node sits in.
        q, p: W's shape (inputs x outputs).
        rank, nullity: the decision (nullity = q - rank).
        tol: the tolerance it was decided with.
    """

    index: int
    nodes: tuple[str, ...]
    op: str
    weight: str
    roots: tuple[str, ...]
    chain: tuple[str, ...]
    scope: str
    q: int
    p: int
    rank: int
    nullity: int
    tol: float

    @property
    def identity(self) -> tuple[str, ...]:
        """The weight's identity across versions of a model: its scope, the initializers it
        is made from and the ops that make it (the weight's own name where it has no
        initializer)."""
        if self.roots:
            return (self.scope, *self.roots, "|", *self.chain)
        return (self.scope, self.weight, "|", *self.chain)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a glob may match: nodes, the weight, its initializers."""
        return (*self.nodes, self.weight, *self.roots)

    @property
    def label(self) -> str:
        """How reports name the layer: its first node and its weight."""
        return f"{self.nodes[0]} (weight {self.weight})"


@dataclass(frozen=True)
class FirstLayerFacts:
    """W1: which node, its class, and the input elements no window reads.

    Attributes:
        node: W1's node (None where no linear op is reached from an input).
        row_index: W1's row (None likewise).
        exactness: ``dense``, ``patchify``, ``overlapping`` or ``not applicable``.
        blind_elements: input elements per sample that no window reads (None: unknown).
        input_elements: elements per sample (None: unknown).
    """

    node: str | None
    row_index: int | None
    exactness: str
    blind_elements: int | None
    input_elements: int | None


@dataclass(frozen=True)
class MetricFacts:
    """Table 1 (Eq. 6) of one model; see ``audit.model.ModelMetrics``."""

    n: int
    nu: int
    nu_ratio: float
    mu: int
    mu_ratio: float
    nullity_sum: int
    nullity_w1: int | None
    skipped_weights: int
    unclear: int

    def value(self, name: str) -> float | None:
        """The metric called ``name`` (a rule id such as ``nu_ratio``)."""
        value: float | None = getattr(self, name)
        return value


@dataclass(frozen=True)
class ModelFacts:
    """Everything the rules read about one model.

    Attributes:
        path: the model's path as given.
        sha256: of the .onnx file's bytes.
        metrics: Table 1.
        first_layer: W1 (None: the model has no graph input).
        layers: one per weight, in audit order.
        validation: the W1 check of ``audit --validate`` (JSON-ready), None without it.
    """

    path: str
    sha256: str
    metrics: MetricFacts
    first_layer: FirstLayerFacts | None
    layers: tuple[LayerFacts, ...]
    validation: Mapping[str, Any] | None = None


# ------------------------------------------------------------------ from an audit


def facts_of_audit(audit: ModelAudit) -> ModelFacts:
    """The facts of a ``ModelAudit``."""
    m = audit.metrics
    first = audit.first_layer
    return ModelFacts(
        path=audit.path, sha256=audit.sha256,
        metrics=MetricFacts(m.n, m.nu, m.nu_ratio, m.mu, m.mu_ratio, m.nullity_sum,
                            m.nullity_w1, m.skipped_weights, m.unclear),
        first_layer=None if first is None else FirstLayerFacts(
            first.node, first.row_index, first.exactness, first.blind_elements,
            first.input_elements),
        layers=tuple(LayerFacts(r.index, r.layer.nodes, r.layer.op, r.layer.weight,
                                r.layer.roots, r.layer.chain, r.layer.scope, r.layer.q,
                                r.layer.p, r.rank, r.nullity, _tol(r))
                     for r in audit.rows),
        validation=audit.validation,
    )


# ------------------------------------------------------------------ from a JSON record


class _Record:
    """Typed reads from a JSON record; a missing or mistyped key is a UsageError naming
    ``where`` and the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, what: str) -> UsageError:
        return UsageError(what, f"{self.where}, key '{key}'",
                          "give an 'onnxcollide audit -f json' or 'onnxcollide check -f json' "
                          "report")

    def get(self, data: Any, key: str, full: str, kinds: tuple[type, ...],
            optional: bool = False) -> Any:
        if not isinstance(data, Mapping) or key not in data:
            raise self.fail(full, "is missing")
        value = data[key]
        if value is None and optional:
            return None
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            raise self.fail(full, f"has the wrong type ({type(value).__name__})")
        return value

    def count(self, data: Any, key: str, full: str, low: int = 0,
              optional: bool = False) -> Any:
        """An integer ``low`` or more (None where ``optional`` and null)."""
        value = self.get(data, key, full, (int,), optional)
        if value is not None and value < low:
            raise self.fail(full, f"is {value}: it must be {low} or more")
        return value

    def ratio(self, data: Any, key: str, full: str) -> float:
        """A number in [0, 1]."""
        value = self.get(data, key, full, (int, float))
        if not 0 <= value <= 1:  # NaN too
            raise self.fail(full, f"is {value}: a ratio lies in [0, 1]")
        return float(value)

    def tolerance(self, data: Any, key: str, full: str) -> float:
        """A finite number, 0 or more."""
        value = self.get(data, key, full, (int, float))
        if not 0 <= value < math.inf:  # NaN too
            raise self.fail(full, f"is {value}: a tolerance is a finite number, 0 or more")
        return float(value)

    def strings(self, data: Any, key: str, full: str) -> tuple[str, ...]:
        values = self.get(data, key, full, (list,))
        if not all(isinstance(v, str) for v in values):
            raise self.fail(full, "must be a list of strings")
        return tuple(values)


def facts_of_record(record: Mapping[str, Any], where: str) -> ModelFacts:
    """The facts of one model record of an audit JSON report (schema audit-report-v1).

    Args:
        record: the model's record.
        where: how errors name it (``baseline.json, models[0]``).

    Raises:
        UsageError: a key the rules need is missing or has the wrong type.
    """
    read = _Record(where)
    metrics = read.get(record, "metrics", "metrics", (dict,))
    counts = {name: read.count(metrics, name, f"metrics.{name}", optional=name == "nullity_w1")
              for name in ("n", "nu", "mu", "nullity_sum", "nullity_w1", "skipped_weights",
                           "unclear")}
    facts_metrics = MetricFacts(
        **counts, nu_ratio=read.ratio(metrics, "nu_ratio", "metrics.nu_ratio"),
        mu_ratio=read.ratio(metrics, "mu_ratio", "metrics.mu_ratio"))
    first = read.get(record, "first_layer", "first_layer", (dict,), optional=True)
    first_facts = None if first is None else FirstLayerFacts(
        read.get(first, "node", "first_layer.node", (str,), optional=True),
        read.count(first, "row_index", "first_layer.row_index", 1, optional=True),
        read.get(first, "exactness", "first_layer.exactness", (str,)),
        read.count(first, "blind_elements", "first_layer.blind_elements", optional=True),
        read.count(first, "input_elements", "first_layer.input_elements", optional=True))
    layers = read.get(record, "layers", "layers", (list,))
    validation = read.get(record, "validation", "validation", (dict,), optional=True)
    return ModelFacts(
        path=read.get(record, "path", "path", (str,)),
        sha256=read.get(record, "sha256", "sha256", (str,)),
        metrics=facts_metrics, first_layer=first_facts,
        layers=tuple(_layer(read, layer, k) for k, layer in enumerate(layers)),
        validation=validation)


def _layer(read: _Record, layer: Any, k: int) -> LayerFacts:
    key = f"layers[{k}]"
    nodes = read.strings(layer, "nodes", f"{key}.nodes")
    if not nodes:
        raise read.fail(f"{key}.nodes", "is empty")
    facts = LayerFacts(
        index=read.count(layer, "index", f"{key}.index", 1), nodes=nodes,
        op=read.get(layer, "op", f"{key}.op", (str,)),
        weight=read.get(layer, "weight", f"{key}.weight", (str,)),
        roots=read.strings(layer, "roots", f"{key}.roots"),
        chain=read.strings(layer, "chain", f"{key}.chain"),
        scope=read.get(layer, "scope", f"{key}.scope", (str,)),
        q=read.count(layer, "q", f"{key}.q"), p=read.count(layer, "p", f"{key}.p"),
        rank=read.count(layer, "rank", f"{key}.rank"),
        nullity=read.count(layer, "nullity", f"{key}.nullity"),
        tol=read.tolerance(layer, "tol", f"{key}.tol"))
    if facts.nullity != facts.q - facts.rank:
        raise read.fail(f"{key}.nullity", f"is {facts.nullity}, not q - rank "
                        f"({facts.q} - {facts.rank})")
    return facts


def _tol(row: Any) -> float:
    """The tolerance as reports write it (rounded to the digits it resolves)."""
    value = row.decision.resolved()["tol"][0]
    return float(value)
