"""`compare`: audit several exports of one network, line up their linear layers, relate their
weights and, when asked, prove in ONNX Runtime that outputs agree and collisions transfer."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from onnxcollide.audit.model import LayerRow, ModelAudit, audit_model
from onnxcollide.compare.align import Alignment, LayerFacts, align_layers, layer_facts
from onnxcollide.compare.relate import WeightFacts, relate_weights
from onnxcollide.compare.results import (
    TRANSFER_DRAW,
    CompareSettings,
    Comparison,
    Difference,
    InputDraw,
    ModelComparison,
    PairedLayer,
    TransferCheck,
    TransferSource,
)
from onnxcollide.errors import UsageError
from onnxcollide.graph.flow import linear_flow, position_in_scope
from onnxcollide.graph.linear_ops import QUANTIZED_OPS
from onnxcollide.graph.load import load_model
from onnxcollide.linalg.spectral import EPS_OF, ToleranceRule, decide_rank

Progress = Callable[[str], None]  # told each step (a model being audited, run, ...)


def _precision(row: LayerRow) -> str:
    """``quantized`` for integer weights, else the type the weight is computed in."""
    layer = row.layer
    if layer.op in QUANTIZED_OPS or layer.stored_dtype.startswith(("int", "uint")):
        return "quantized"
    return layer.compute_dtype


def is_quantized(audit: ModelAudit) -> bool:
    """Whether any weight of the model is quantized."""
    return any(_precision(r) == "quantized" for r in audit.rows)


class _Audits:
    """Each file audited once, however often it is named (``compare a.onnx a.onnx``)."""

    def __init__(self, settings: CompareSettings, progress: Progress | None) -> None:
        self._settings = settings
        self._progress = progress
        self._done: dict[tuple[object, ...], tuple[ModelAudit, list[LayerFacts]]] = {}

    def get(self, path: str) -> tuple[ModelAudit, list[LayerFacts]]:
        shapes = self._settings.shapes_of(path)
        try:
            stat = os.stat(path)
            key: tuple[object, ...] = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size,
                                       shapes)
        except OSError:
            key = (path, shapes)  # the audit reports the missing file
        if key not in self._done:
            if self._progress:
                self._progress(f"auditing {path}")
            settings = replace(self._settings.audit, input_shapes=shapes)
            audit = audit_model(path, settings)
            self._done[key] = (audit, _facts(path, audit))
        audit, facts = self._done[key]
        return (audit if audit.path == path else replace(audit, path=path)), facts


def _facts(path: str, audit: ModelAudit) -> list[LayerFacts]:
    """The audit's rows with their data-flow positions."""
    model = load_model(path)  # cached: the audit just loaded it
    labels = [n for r in audit.rows for n in r.layer.nodes]
    flow = linear_flow(model, labels)
    for row in audit.rows:
        if row.layer.scope != "main" and row.layer.nodes[0] not in flow:
            inner = position_in_scope(row.layer.scope, flow)
            if inner is not None:
                flow[row.layer.nodes[0]] = inner
    return layer_facts(audit.rows, flow)


# ------------------------------------------------------------------ pins


def _pins_for(texts: Sequence[str], paths: Sequence[str], facts: Sequence[list[LayerFacts]]
              ) -> list[list[tuple[int, int]]]:
    """Each other model's pinned (reference index, other index) pairs from ``--match``
    texts ``NODE_A=[MODEL:]NODE_B``: NODE_B is looked up in the model MODEL names (its path
    as given or file name), else in every other model that has it.

    Raises:
        UsageError: a text without ``=``, a node the reference or the named model lacks, a
            node no other model has, or a layer pinned twice.
    """
    pins: list[list[tuple[int, int]]] = [[] for _ in paths[1:]]
    for text in texts:
        node_a, sep, rest = text.partition("=")
        if not sep or not node_a or not rest:
            raise UsageError(f"--match '{text}' is not NODE_A=NODE_B",
                             hint="e.g. --match /fc/Gemm=node_linear")
        i = _index_of(node_a, facts[0])
        if i is None:
            raise UsageError(f"--match '{text}': the reference {paths[0]} has no linear node "
                             f"'{node_a}'", hint=_known(facts[0]))
        targets, node_b = _pin_targets(rest, paths)
        hits = [(k, j) for k in targets
                if (j := _index_of(node_b, facts[k + 1])) is not None]
        if not hits:
            where = paths[targets[0] + 1] if len(targets) == 1 else "any other model"
            raise UsageError(f"--match '{text}': {where} has no linear node '{node_b}'",
                             hint=_known(facts[targets[0] + 1]) if len(targets) == 1 else
                             "name a node of one of the models (see their audit)")
        for k, j in hits:
            if any(p[0] == i or p[1] == j for p in pins[k]):
                raise UsageError(f"--match '{text}': a layer is pinned twice in "
                                 f"{paths[k + 1]}", hint="pin each layer once")
            pins[k].append((i, j))
    return pins


def _pin_targets(text: str, paths: Sequence[str]) -> tuple[list[int], str]:
    """The other models a pin's right side names, and its node label."""
    for k, path in enumerate(paths[1:]):
        for label in dict.fromkeys((path, os.path.basename(path))):
            if text.startswith(label + ":"):
                return [k], text[len(label) + 1:]
    return list(range(len(paths) - 1)), text


def _index_of(label: str, facts: Sequence[LayerFacts]) -> int | None:
    return next((k for k, f in enumerate(facts) if label in f.row.layer.nodes), None)


def _known(facts: Sequence[LayerFacts], shown: int = 4) -> str:
    names = [f.label for f in facts[:shown]]
    more = f" and {len(facts) - shown} more" if len(facts) > shown else ""
    return f"its linear nodes: {', '.join(names)}{more}"


# ------------------------------------------------------------------ comparing


def _paired(ref: Sequence[LayerFacts], other: Sequence[LayerFacts], alignment: Alignment,
            rule: ToleranceRule) -> tuple[PairedLayer, ...]:
    pairs = []
    for match in alignment.matches:
        a, b = ref[match.reference].row, other[match.other].row
        blocks = b.layer.load_blocks()
        relation = relate_weights(a.layer.load_blocks(), blocks,
                                  WeightFacts(_precision(a), a.layer.layout),
                                  WeightFacts(_precision(b), b.layer.layout))
        pairs.append(PairedLayer(a, b, match, relation, _common_rank(a, b, blocks, rule)))
    return tuple(pairs)


def _common_rank(a: LayerRow, b: LayerRow, blocks: object, rule: ToleranceRule) -> int | None:
    """B's rank at A's tolerance, where the ranks differ and the types' eps differ."""
    eps_a = EPS_OF.get(a.layer.compute_dtype, EPS_OF["float"])
    if a.rank == b.rank or eps_a == b.decision.eps:
        return None
    return decide_rank(np.asarray(blocks), eps_a, rule).rank


def _layer_differences(path: str, result: ModelComparison, structure_only: bool
                       ) -> list[Difference]:
    found = []
    for pair in result.pairs:
        a, b = pair.reference, pair.other
        names = (a.layer.nodes[0], b.layer.nodes[0])
        if not pair.same_structure:
            found.append(Difference(path, "rank", *names,
                                    f"{names[1]} (reference {names[0]}): rank {b.rank} and "
                                    f"nullity {b.nullity}, the reference {a.rank} and "
                                    f"{a.nullity}"))
        if not pair.relation.same and not structure_only:
            found.append(Difference(path, "weights", *names,
                                    f"{names[1]} (reference {names[0]}): the weights differ "
                                    f"(max |diff| {pair.relation.max_abs:.3g}, "
                                    f"{pair.relation.max_rel:.3g} of the largest weight)"
                                    + (f": {pair.relation.note}" if pair.relation.note else
                                       "")))
    for row in result.unmatched_reference:
        found.append(Difference(path, "unmatched", row.layer.nodes[0], None,
                                f"reference layer {row.layer.nodes[0]} (q={row.layer.q}, "
                                f"p={row.layer.p}) has no partner in this model"))
    for row in result.unmatched_other:
        found.append(Difference(path, "unmatched", None, row.layer.nodes[0],
                                f"layer {row.layer.nodes[0]} (q={row.layer.q}, p={row.layer.p}) "
                                "has no partner in the reference"))
    return found


def _run_differences(path: str, result: ModelComparison) -> list[Difference]:
    found = []
    if result.run is not None and result.run.agree is False:
        worst = max(result.run.outputs, key=lambda o: o.max_rel, default=None)
        text = "outputs differ on the same inputs" + (
            f" (output '{worst.other}': max rel {worst.max_rel:.3g} > "
            f"{result.run.tolerance:g})" if worst is not None else "")
        found.append(Difference(path, "outputs", None, None, text))
    if result.transfer is not None and result.transfer.verdict == "FAIL":
        t = result.transfer
        found.append(Difference(path, "transfer", None, t.w1,
                                f"the reference's colliding inputs do not collide at W1 "
                                f"({t.w1}): residual {t.layer_residual:.3g} against "
                                f"{t.baseline_residual:.3g} for a random perturbation"))
    return found


def _notes(path: str, result: ModelComparison) -> list[str]:
    notes = []
    for pair in result.pairs:
        if pair.tolerance_only:
            a, b = pair.reference, pair.other
            notes.append(f"{os.path.basename(path)}: {b.layer.nodes[0]} has rank {b.rank} at "
                         f"{b.layer.compute_dtype}'s tolerance (margin "
                         f"{b.decision.margin or 0:.3g}) and {pair.common_rank} at the "
                         f"reference's ({a.layer.compute_dtype}): the ranks differ by the "
                         "tolerance, not by the weight, which relates to the reference's")
    for pair in result.pairs:
        if pair.match.ambiguous_with:
            notes.append(f"{os.path.basename(path)}: {pair.other.layer.nodes[0]} (reference "
                         f"{pair.reference.layer.nodes[0]}) could not be told apart from "
                         f"{', '.join(pair.match.ambiguous_with)}: the match is a best guess")
    for ref_label, other_label in result.crossings:
        notes.append(f"{os.path.basename(path)}: the pair {ref_label} / {other_label} "
                     "contradicts the data-flow order of another pair")
    return notes


def compare_models(paths: Sequence[str], settings: CompareSettings | None = None,
                   progress: Progress | None = None) -> Comparison:
    """Compare every model with the first (the reference).

    Args:
        paths: the reference, then one or more other models.
        settings: audit settings, input shapes, pins, ``run``/``transfer``, seed, device.
        progress: called with a short line before each audit and run.

    Raises:
        UsageError: fewer than two models, a bad ``--match``, a model with no linear layer in
            common with the reference, inputs that cannot be mapped for run/transfer.
        ModelLoadError / UnsupportedModelError: a model that cannot be read or audited.
    """
    settings = settings or CompareSettings()
    if len(paths) < 2:
        raise UsageError("compare needs at least two models", hint="give the reference first, "
                         "then the models to compare with it")
    audits = _Audits(settings, progress)
    loaded = [audits.get(p) for p in paths]
    reference, ref_facts = loaded[0]
    pins = _pins_for(settings.pins, paths, [f for _, f in loaded])
    others = []
    for (audit, facts), pinned, path in zip(loaded[1:], pins, paths[1:], strict=True):
        alignment = align_layers(ref_facts, facts, pinned)
        if not alignment.matches:
            raise UsageError(f"has no linear layer in common with the reference {paths[0]} "
                             "(no layer of the same q, p and groups)", path,
                             "compare exports of one network")
        others.append(ModelComparison(
            audit, _paired(ref_facts, facts, alignment, settings.audit.rule),
            tuple(ref_facts[i].row for i in alignment.unmatched_reference),
            tuple(facts[j].row for j in alignment.unmatched_other), alignment.crossings))
    comparison = Comparison(reference, tuple(others), (), (), settings)
    if settings.run or settings.transfer:
        comparison = _with_runs(comparison, paths, progress)
    return _with_findings(comparison, paths)


def _with_findings(comparison: Comparison, paths: Sequence[str]) -> Comparison:
    """The comparison with its differences (layers first, then runs) and notes."""
    layers, runs, notes = [], [], []
    for path, result in zip(paths[1:], comparison.others, strict=True):
        layers += _layer_differences(path, result, comparison.settings.structure_only)
        runs += _run_differences(path, result)
        notes += _notes(path, result)
    source = comparison.source
    if source is not None and not source.made:
        notes.append(f"--transfer: no exact colliding input was made on the reference: "
                     f"{source.method}")
    ref_check = comparison.reference_transfer
    if ref_check is not None and ref_check.verdict != "PASS":
        notes.append(f"--transfer: the colliding inputs do not pass on the reference itself "
                     f"({ref_check.verdict}{': ' + ref_check.reason if ref_check.reason else ''})")
    return replace(comparison, differences=tuple(layers + runs), notes=tuple(notes))


def _partner(result: ModelComparison, label: str) -> str | None:
    """The label of the layer aligned with the reference layer ``label``, or None."""
    return next((p.other.layer.nodes[0] for p in result.pairs
                 if label in p.reference.layer.nodes), None)


def _with_runs(comparison: Comparison, paths: Sequence[str], progress: Progress | None
               ) -> Comparison:
    """``--run`` and ``--transfer`` on every model (imports ONNX Runtime)."""
    from onnxcollide.compare.runs import (
        Runners,
        make_collisions,
        run_pair,
        seeded_inputs,
        transfer_to,
    )
    from onnxcollide.runtime.session import resolve_device

    settings = comparison.settings
    resolve_device(settings.device)  # ONNX Runtime present, CUDA where asked: before any run
    shapes = dict(settings.shapes_of(paths[0]))
    record: tuple[InputDraw, ...] = ()
    runners = Runners(settings.device)
    others = list(comparison.others)
    ref_quantized = is_quantized(comparison.reference)
    if settings.run:
        feeds, record = seeded_inputs(paths[0], shapes, settings.seed, "run")
        for k, (path, result) in enumerate(zip(paths[1:], others, strict=True)):
            if progress:
                progress(f"running {path}")
            run = run_pair(runners, paths[0], path, feeds,
                           ref_quantized or is_quantized(result.audit))
            others[k] = replace(result, run=run)
    source: TransferSource | None = None
    ref_check: TransferCheck | None = None
    if settings.transfer:
        if progress:
            progress(f"making colliding inputs on {paths[0]}")
        feeds, drawn = seeded_inputs(paths[0], shapes, settings.seed, "transfer",
                                     TRANSFER_DRAW)
        record += drawn
        source, found = make_collisions(paths[0], feeds, settings.count, settings.seed,
                                        settings.audit.rule)
        if found is not None:
            ref_check = transfer_to(runners, paths[0], paths[0], found, settings.seed,
                                    found.w1_node)
            for k, (path, result) in enumerate(zip(paths[1:], others, strict=True)):
                if progress:
                    progress(f"transferring to {path}")
                others[k] = replace(result, transfer=transfer_to(
                    runners, paths[0], path, found, settings.seed,
                    _partner(result, found.w1_node), is_quantized(result.audit)))
    return replace(comparison, others=tuple(others), reference_transfer=ref_check,
                   source=source, inputs=record)
