"""The audit: per-layer rank rows and the paper's Table 1 metrics (no printing, no exiting)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from onnxcollide.audit.layers import ConvConvention, LinearLayer, build_layer, parameter_key
from onnxcollide.audit.parallel import decide_in_processes, processes_pay
from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.constants import ConstantResolver, Scope
from onnxcollide.graph.input_path import FirstLayerPath, PathStep, trace_input
from onnxcollide.graph.linear_ops import LinearSite, SkippedOp, find_linear_ops
from onnxcollide.graph.load import LoadedModel, load_model
from onnxcollide.graph.shapes import Shape, TensorInfo, infer_shapes, is_float_input, model_inputs
from onnxcollide.limits import check_allocation
from onnxcollide.linalg.spectral import (
    CHUNK_BYTES,
    EPS_OF,
    SVD_MAX_DIM,
    GramEngine,
    RankDecision,
    ToleranceRule,
    decide_rank,
)
from onnxcollide.linalg.threads import local_threads_available, set_local_threads, worker_count

CLEAR_MARGIN = 10.0  # a decision is "clear" when no singular value lies within 10x of tol
ALONE_GRAM_BYTES = 32 << 20  # a layer with a float64 Gram matrix this large is decided alone

ProgressCallback = Callable[[int, int, str], None]  # (done, total, current layer label)


@dataclass(frozen=True)
class AuditSettings:
    """Everything that decides an audit's numbers.

    Attributes:
        convention: how grouped conv weights become matrices.
        rule: the rank tolerance rule.
        input_shapes: user-fixed input shapes, (name, dims) pairs.
        gram: where the float64 Gram matrices are formed (None: BLAS on the CPU;
            ``runtime.gram.gram_engine("cuda")``: the GPU).
    """

    convention: ConvConvention = ConvConvention.GROUPED
    rule: ToleranceRule = field(default_factory=ToleranceRule)
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    gram: GramEngine | None = None


@dataclass(frozen=True)
class LayerRow:
    """One parameter's audit row: its matrix, rank decision and the paper's flags.

    Attributes:
        index: 1-based position among the model's parameters.
        layer: the LinearLayer (nodes, op, weight, q, p, groups, dtypes, layout).
        decision: the rank decision (rank, tol, sigma facts, method).
    """

    index: int
    layer: LinearLayer
    decision: RankDecision

    @property
    def rank(self) -> int:
        """Numerical rank of W (summed over blocks)."""
        return self.decision.rank

    @property
    def nullity(self) -> int:
        """dim ker(W^T) = q - rank: input directions the layer cannot see."""
        return self.layer.q - self.decision.rank

    @property
    def nu(self) -> bool:
        """Lemma 1: the layer has a non-trivial left kernel (nullity >= 1)."""
        return self.nullity >= 1

    @property
    def mu(self) -> bool:
        """Lemma 3: the layer maps to fewer dimensions than it reads (p < q)."""
        return self.layer.p < self.layer.q

    @property
    def clear(self) -> bool:
        """True when the rank would not change if the tolerance moved by less than
        CLEAR_MARGIN (10x): judged on the margin's value, or on its lower bound where a
        noise-floor value sets it (digits 0)."""
        bound, digits = self.decision.resolved()["margin"]
        margin = bound if digits == 0 else self.decision.margin
        return margin is None or margin >= CLEAR_MARGIN


@dataclass(frozen=True)
class ModelMetrics:
    """The paper's Table 1 for one model (Eq. 6), and what its numbers leave out.

    Attributes:
        n, nu, mu, nullity_sum: over the analysed parameters (rows).
        nullity_w1: W1's nullity; None where there is no W1 row, or where the input passes
            through an op whose weights are not analysed (an LSTM) before it.
        skipped_weights: ops holding weights that are not analysed (not counted in n).
        unclear: rows whose rank decision is not clear (margin under CLEAR_MARGIN).
    """

    n: int
    nu: int
    mu: int
    nullity_sum: int
    nullity_w1: int | None
    skipped_weights: int = 0
    unclear: int = 0

    @property
    def nu_ratio(self) -> float:
        """nu / n."""
        return self.nu / self.n if self.n else 0.0

    @property
    def mu_ratio(self) -> float:
        """mu / n."""
        return self.mu / self.n if self.n else 0.0


@dataclass(frozen=True)
class FirstLayer:
    """W1: the first linear op reached from the model's input, and how collisions lift to it.

    Attributes:
        input: graph input name.
        input_dtype: its element type.
        input_shape: shape used (None dims unknown).
        row_index: index of W1's row in the layer table, None if no op is reached.
        node: W1's node label.
        path: nodes from the input to W1.
        exactness: dense / patchify / overlapping / not applicable.
        reason: why, in one sentence.
        blind_elements: input elements per sample that no window reads (None where unknown).
        input_elements: elements per sample (None where unknown).
    """

    input: str
    input_dtype: str
    input_shape: Shape | None
    row_index: int | None
    node: str | None
    path: tuple[PathStep, ...]
    exactness: str
    reason: str
    blind_elements: int | None
    input_elements: int | None


@dataclass(frozen=True)
class ModelAudit:
    """Everything the audit found for one model; reports are rendered from this alone.

    ``validation`` holds the W1 collision check of ``audit --validate`` (see
    runtime.collisions.check_w1), or None.
    """

    path: str
    sha256: str
    producer: str
    ir_version: int
    opset: int
    settings: AuditSettings
    rows: tuple[LayerRow, ...]
    skipped: tuple[SkippedOp, ...]
    first_layer: FirstLayer | None
    metrics: ModelMetrics
    notes: tuple[str, ...]
    validation: dict[str, Any] | None = None


# ------------------------------------------------------------------ assembling


def _unique_layers(layers: list[LinearLayer]) -> list[LinearLayer]:
    """Merge layers that are one parameter used by several nodes (same roots, same matrix)."""
    merged: dict[tuple[object, ...], LinearLayer] = {}
    for layer in layers:
        key = parameter_key(layer)
        if key in merged:
            first = merged[key]
            merged[key] = _with_nodes(first, first.nodes + layer.nodes)
        else:
            merged[key] = layer
    return list(merged.values())


def _with_nodes(layer: LinearLayer, nodes: tuple[str, ...]) -> LinearLayer:
    from dataclasses import replace

    return replace(layer, nodes=nodes)


def _decide(layer: LinearLayer, rule: ToleranceRule, gram: GramEngine | None = None
            ) -> RankDecision:
    eps = EPS_OF.get(layer.compute_dtype)
    where = f"node '{layer.nodes[0]}' ({layer.op}), weight '{layer.weight}'"
    if eps is None:
        raise UnsupportedModelError(f"weight is computed in {layer.compute_dtype}, which has no "
                                    "float epsilon we know", where)
    check_allocation(decision_bytes(layer), f"deciding the rank of this {layer.q} x "
                     f"{layer.p} weight ({layer.groups} block(s)) in float64", where)
    try:
        return decide_rank(layer.load_blocks(), eps, rule, gram)
    except FloatingPointError as exc:
        raise UnsupportedModelError(str(exc), where, "the model's weights are corrupt") from exc
    except OverflowError as exc:
        raise UsageError(str(exc), where, "use a smaller --rtol") from exc
    except ValueError as exc:
        raise UnsupportedModelError(f"the weight does not fit the op ({exc})", where) from exc


def decision_bytes(layer: LinearLayer) -> int:
    """An upper estimate of the float64 working memory the rank engine needs for one block
    of ``layer`` (blocks are decided one at a time): a copy or a chunk of it and, for a Gram
    block, the short side's square matrix with its factors."""
    if layer.groups == 0 or layer.q * layer.p == 0:
        return 0  # an empty weight (a stack of no matrices, a conv without outputs)
    qb, pb = layer.block_shape
    short, long = min(qb, pb), max(qb, pb)
    copy = min(short * long, 2 * CHUNK_BYTES // 8 + short * short)
    if short <= SVD_MAX_DIM:
        return 8 * 2 * copy
    return 8 * (copy + 3 * short * short)


def _decide_alone(layer: LinearLayer) -> bool:
    """Whether a layer is decided with no other beside it: one of its blocks has a float64
    Gram matrix of ALONE_GRAM_BYTES or more (its working set: the Gram matrix and a
    factorisation of it), which then uses every core through BLAS's own threads."""
    if layer.groups == 0:  # an empty weight
        return False
    qb, pb = layer.block_shape
    m = min(qb, pb)
    return 8 * m * m >= ALONE_GRAM_BYTES


def _decide_all(layers: list[LinearLayer], rule: ToleranceRule,
                progress: ProgressCallback | None, gram: GramEngine | None = None
                ) -> list[RankDecision]:
    """Every layer's decision, in order, with every core busy: layers are independent, so
    forked worker processes decide them side by side where the work pays for starting them
    (``audit.parallel``: scipy's LAPACK wrappers hold the GIL), else worker threads (one per
    core), each with single-threaded BLAS; a layer with a large Gram matrix is decided
    alone, with as many BLAS threads as cores. At most one layer per worker is in flight,
    so memory holds at most that many layers' working sets. Where BLAS takes no per-thread
    thread count (``linalg.threads``), one layer at a time. The first error in layer order
    is raised: with threads, layers not yet started are dropped; with worker processes,
    once they have decided every other layer (the large layers and any a worker failed on
    are decided after them, in layer order)."""
    workers = worker_count() if local_threads_available() else 1
    if workers == 1:
        return [_decide_reporting(k, layers, rule, progress, gram)
                for k in range(len(layers))]
    shared = [k for k, layer in enumerate(layers) if not _decide_alone(layer)]
    if gram is None and shared and processes_pay([layers[k] for k in shared]):
        return _decide_forked(layers, shared, rule, progress, workers)
    return _decide_threaded(layers, rule, progress, gram, workers)


def _decide_threaded(layers: list[LinearLayer], rule: ToleranceRule,
                     progress: ProgressCallback | None, gram: GramEngine | None, workers: int
                     ) -> list[RankDecision]:
    """``_decide_all`` by ``workers`` threads."""
    decisions: list[RankDecision] = []
    pending: list[Future[RankDecision]] = []

    def collect(keep: int) -> None:
        while len(pending) > keep:
            decisions.append(pending.pop(0).result())
            if progress:
                upcoming = layers[len(decisions)].nodes[0] if len(decisions) < len(layers) \
                    else ""
                progress(len(decisions), len(layers), upcoming)

    if progress and layers:
        progress(0, len(layers), layers[0].nodes[0])
    with ThreadPoolExecutor(workers, initializer=set_local_threads, initargs=(1,)) as pool:
        try:
            for layer in layers:
                alone = _decide_alone(layer)
                collect(0 if alone else workers - 1)
                pending.append(pool.submit(_decide_with_threads, layer, rule,
                                           workers if alone else 1, gram))
                if alone:
                    collect(0)
            collect(0)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return decisions


def _decide_forked(layers: list[LinearLayer], shared: list[int], rule: ToleranceRule,
                   progress: ProgressCallback | None, workers: int) -> list[RankDecision]:
    """``_decide_all`` with the layers of ``shared`` decided by forked worker processes
    (``audit.parallel``); then, by threads and in layer order, the large layers (alone, with
    every core) and any layer a worker did not decide (its error is raised here)."""
    total = len(layers)
    if progress:
        progress(0, total, layers[shared[0]].nodes[0])
    found = decide_in_processes(layers, shared, functools.partial(_decide, rule=rule),
                                workers, (lambda done: progress(done, total, ""))
                                if progress else None)
    rest = [k for k in range(total) if found.get(k) is None]
    offset = total - len(rest)
    told = (lambda done, _, label: progress(offset + done, total, label)) if progress \
        else None
    redone = dict(zip(rest, _decide_threaded([layers[k] for k in rest], rule, told, None,
                                             workers), strict=True))
    return [found.get(k) or redone[k] for k in range(total)]


def _decide_reporting(k: int, layers: list[LinearLayer], rule: ToleranceRule,
                      progress: ProgressCallback | None, gram: GramEngine | None
                      ) -> RankDecision:
    """Layer ``k``'s decision in this thread, with progress before and after the last."""
    if progress:
        progress(k, len(layers), layers[k].nodes[0])
    decision = _decide(layers[k], rule, gram)
    if progress and k == len(layers) - 1:
        progress(len(layers), len(layers), "")
    return decision


def _decide_with_threads(layer: LinearLayer, rule: ToleranceRule, threads: int,
                         gram: GramEngine | None) -> RankDecision:
    """``_decide`` with this worker's BLAS on ``threads`` threads (back to 1 afterwards)."""
    if threads != 1:
        set_local_threads(threads)
    try:
        return _decide(layer, rule, gram)
    finally:
        if threads != 1:
            set_local_threads(1)


def _first_layer(model: LoadedModel, sites: list[LinearSite], infos: dict[str, TensorInfo],
                 rows: list[LayerRow]) -> tuple[FirstLayer | None, list[str]]:
    main_sites = {s.topo_index: s for s in sites if s.scope == "main"}
    scope = Scope.of_graph(model.proto.graph, "main", None)
    resolver = ConstantResolver(scope, model.base_dir, list(model.proto.opset_import))
    nodes = list(model.proto.graph.node)
    inputs = model_inputs(model)
    ordered = sorted(inputs, key=lambda i: not is_float_input(i))
    traces: list[FirstLayerPath] = [
        trace_input(i.name, nodes, main_sites, infos, resolver, model.opset) for i in ordered
    ]
    reached = [t for t in traces if t.site is not None]
    notes = [f"input '{t.input}' also reaches {t.site.label}" for t in reached[1:]
             if t.site is not None]
    chosen = reached[0] if reached else (traces[0] if traces else None)
    if chosen is None:
        return None, notes
    row = _row_of(chosen.site, rows)
    return FirstLayer(
        input=chosen.input, input_dtype=chosen.input_dtype, input_shape=chosen.input_shape,
        row_index=row.index if row else None, node=chosen.site.label if chosen.site else None,
        path=chosen.path, exactness=chosen.exactness, reason=chosen.reason,
        blind_elements=chosen.blind_elements, input_elements=chosen.input_elements,
    ), notes


def _row_of(site: LinearSite | None, rows: list[LayerRow]) -> LayerRow | None:
    if site is None:
        return None
    return next((r for r in rows if site.label in r.layer.nodes), None)


def _metrics(rows: list[LayerRow], first: FirstLayer | None, skipped: list[SkippedOp],
             hidden_w1: bool) -> ModelMetrics:
    """Table 1 over ``rows``; nullity(W1) is None where ``hidden_w1`` (see ModelMetrics)."""
    w1 = None
    if first is not None and first.row_index is not None:
        w1 = rows[first.row_index - 1].nullity
    elif rows:
        w1 = rows[0].nullity
    return ModelMetrics(
        n=len(rows), nu=sum(r.nu for r in rows), mu=sum(r.mu for r in rows),
        nullity_sum=sum(r.nullity for r in rows), nullity_w1=None if hidden_w1 else w1,
        skipped_weights=sum(s.holds_weights for s in skipped),
        unclear=sum(not r.clear for r in rows),
    )


def _weights_before_w1(first: FirstLayer | None, skipped: list[SkippedOp]) -> str | None:
    """A note where the model's first weight may be one that is not analysed, so W1's
    nullity is not the paper's nullity(W1): the input passes through such an op (an LSTM)
    before W1, or no W1 is reached from the input while such ops exist (row 1 would stand in
    for it). None otherwise."""
    holding = {s.label: s for s in skipped if s.holds_weights}
    if first is not None and first.node is not None:
        before = [holding[step.node] for step in first.path if step.node in holding]
        if not before:
            return None
        return (f"nullity(W1) is not given: the input passes through {before[0].op_type} "
                f"'{before[0].label}', whose weights are not analysed, before W1 "
                f"({first.node}); the paper's W1 is the model's first weight")
    if not holding:
        return None
    op = next(iter(holding.values()))
    return (f"nullity(W1) is not given: no linear op is reached from a model input in the "
            f"main graph, and {len(holding)} op(s) hold weights that are not analysed (the "
            f"first: {op.op_type} '{op.label}'), so the model's first weight is not known")


def _skipped_summary(skipped: list[SkippedOp], shown: int = 3) -> str:
    """``; N ops hold weights that are not analysed (...): <the first one's reason>``, or
    ``""`` when no skipped op holds weights."""
    skipped = [s for s in skipped if s.holds_weights]
    if not skipped:
        return ""
    named = ", ".join(f"{s.op_type} '{s.label}'" for s in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    if len(skipped) == 1:
        return f"; 1 op holds weights that are not analysed ({named}: {skipped[0].reason})"
    return (f"; {len(skipped)} ops hold weights that are not analysed ({named}{more}; the "
            f"first: {skipped[0].reason})")


def audit_model(path: str, settings: AuditSettings | None = None,
                progress: ProgressCallback | None = None) -> ModelAudit:
    """Audit one ONNX file: rank and nullity of every constant linear weight, and Table 1.

    Weights are loaded one parameter at a time (external data memory-mapped), so models larger
    than memory audit layer by layer.

    Raises:
        ModelLoadError: the file cannot be read as ONNX.
        UnsupportedModelError: it holds nothing to audit, or something we cannot analyse.
        UsageError: ``settings.input_shapes`` does not fit the model.

        Each names ``path`` in its location.
    """
    try:
        return _audit(path, settings or AuditSettings(), progress)
    except OnnxCollideError as exc:
        raise exc.in_file(path) from None


def _audit(path: str, settings: AuditSettings, progress: ProgressCallback | None
           ) -> ModelAudit:
    """``audit_model`` without the file name added to its errors."""
    model = load_model(path)
    infos = infer_shapes(model, dict(settings.input_shapes))
    sites, skipped = find_linear_ops(model)
    if not sites:
        raise UnsupportedModelError(
            "no Conv/ConvTranspose/Gemm/MatMul (or quantized variant) with a constant weight"
            + _skipped_summary(skipped), path, "nothing to audit: is this the model you meant?")
    layers = _unique_layers([build_layer(s, infos, settings.convention) for s in sites])
    decisions = _decide_all(layers, settings.rule, progress, settings.gram)
    rows = [LayerRow(k, layer, decision)
            for k, (layer, decision) in enumerate(zip(layers, decisions, strict=True), start=1)]
    first, notes = _first_layer(model, sites, infos, rows)
    hidden_w1 = _weights_before_w1(first, skipped)
    if hidden_w1:
        notes.append(hidden_w1)
    elif first is None or first.row_index is None:
        notes.append("no linear op is reached from a model input in the main graph: "
                     f"nullity(W1) is that of row 1 ({rows[0].layer.nodes[0]}), the first linear "
                     "op in graph order")
    if settings.convention is ConvConvention.PAPER:
        notes.insert(0, "conv convention 'paper': grouped convs are read as one "
                        "(C/g * prod k) x O matrix, as in the paper's Table 1; this is not the "
                        "operator's rank")
    return ModelAudit(
        path=path, sha256=model.sha256,
        producer=f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
        ir_version=int(model.proto.ir_version), opset=model.opset, settings=settings,
        rows=tuple(rows), skipped=tuple(skipped), first_layer=first,
        metrics=_metrics(rows, first, skipped, hidden_w1 is not None), notes=tuple(notes),
    )
