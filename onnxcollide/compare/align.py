"""Line up the linear layers of two models without trusting names.

Exporters rename every node and may list independent branches in another order, but they
keep the data flow and the weights' shapes. So a pair of layers (a, b) is a candidate only
where its invariants agree: the multiset {q, p} (so q * p too) and the number of groups.
Among candidates a cost decides (``scipy.optimize.linear_sum_assignment``):

- position: the difference of the depths along the data flow (``graph.flow``) in levels,
  divided by one more than the difference of the models' largest depths, at most 1;
- content, only where position cannot decide (several candidates of one shape at one depth:
  a transformer's q/k/v projections, parallel branches): the distance between the column-normalised
  weights (invariant under a per-output scaling such as BatchNorm folding, close under
  quantization and fp16), or, where that finds no close partner (a permuted copy), the
  distance between the leading singular values of the column-normalised weights, which
  permutations and transposes leave alone;
- op family: a small penalty where a conv faces a Gemm/MatMul.

The order is kept: a match may not put a layer upstream of one it feeds in the other model;
crossing pairs are re-solved with the costlier pair forbidden. Each match gets a confidence
from the gap to the next-best choice; pairs within AMBIGUOUS_GAP of another are reported as
ambiguous with the layers they could not be told from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from onnxcollide.audit.model import LayerRow
from onnxcollide.errors import UsageError
from onnxcollide.graph.flow import FlowPosition

FORBIDDEN = 1e6  # cost of a pair whose invariants disagree
FAMILY_PENALTY = 0.5  # a conv against a Gemm/MatMul of the same shape
CONFIDENT_GAP = 0.5  # a next-best choice this much costlier gives confidence 1
AMBIGUOUS_GAP = 0.02  # closer than this, two choices cannot be told apart
CLOSE_CONTENT = 0.3  # a column-normalised distance below this is a close partner
SPECTRUM_VALUES = 3  # leading singular values compared where weights are not close
SPECTRUM_MAX_ELEMENTS = 4_000_000  # larger weights get no spectrum (their SVD would dominate)
MAX_RESOLVES = 10  # rounds of forbidding crossing pairs


@dataclass(frozen=True)
class LayerFacts:
    """One layer's invariants for the alignment.

    Attributes:
        row: the audit row.
        label: its first node's label.
        family: ``conv``, ``conv-transpose`` or ``dense``.
        shape: sorted (q, p) and groups.
        depth: depth along the data flow (see ``graph.flow``), None where unknown.
        upstream: labels of the linear layers that feed it.
        order: its position in the audit's row order (the tie-breaker).
    """

    row: LayerRow
    label: str
    family: str
    shape: tuple[int, int, int]
    depth: int | None
    upstream: frozenset[str]
    order: int


def layer_facts(rows: Sequence[LayerRow], flow: dict[str, FlowPosition]) -> list[LayerFacts]:
    """The facts of every row; depth from ``flow`` (by any of the row's node labels)."""
    facts = []
    for order, row in enumerate(rows):
        layer = row.layer
        position = next((flow[n] for n in layer.nodes if n in flow), None)
        geometry = layer.geometry
        family = "dense" if geometry is None else (
            "conv-transpose" if geometry.transposed else "conv")
        q, p = sorted((layer.q, layer.p))
        facts.append(LayerFacts(row, layer.nodes[0], family, (q, p, layer.groups),
                                None if position is None else position.depth,
                                frozenset() if position is None else position.upstream,
                                order))
    return facts


@dataclass(frozen=True)
class Match:
    """One aligned pair.

    Attributes:
        reference: index of the reference layer (in its facts list).
        other: index of the other model's layer.
        cost: the pair's cost.
        confidence: the next-best choice's extra cost / CONFIDENT_GAP, clipped to [0, 1]:
            1 where the next-best (another partner for either layer, or a swap of partners
            with another pair) costs CONFIDENT_GAP more or there is none, 0 where it costs
            the same.
        basis: what decided it: ``only candidate``, ``position``, ``weights``, ``spectrum`` or
            ``pinned``.
        ambiguous_with: labels (in either model) of layers this pair could not be told from.
    """

    reference: int
    other: int
    cost: float
    confidence: float
    basis: str
    ambiguous_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alignment:
    """The layers of one other model lined up against the reference's.

    Attributes:
        matches: aligned pairs, in the reference's row order.
        unmatched_reference: reference layers with no partner (indices).
        unmatched_other: the other model's layers with no partner (indices).
        crossings: pairs that still contradict the data-flow order after re-solving, as
            (reference label, other label) couples.
    """

    matches: tuple[Match, ...]
    unmatched_reference: tuple[int, ...]
    unmatched_other: tuple[int, ...]
    crossings: tuple[tuple[str, str], ...] = field(default=())


# ------------------------------------------------------------------ costs


def _depths(facts: Sequence[LayerFacts]) -> np.ndarray:
    """Each layer's depth; rows without a depth use their row order instead."""
    if all(f.depth is not None for f in facts):
        return np.array([f.depth for f in facts], dtype=np.float64)
    return np.array([f.order for f in facts], dtype=np.float64)


def position_costs(ref: Sequence[LayerFacts], other: Sequence[LayerFacts]) -> np.ndarray:
    """(len(ref), len(other)) position costs: the depth difference in levels, divided by one
    more than the difference of the models' largest depths (a model with an extra layer
    shifts what follows it by a level), at most 1."""
    da, db = _depths(ref), _depths(other)
    spread = 1.0 + abs(float(da.max(initial=0)) - float(db.max(initial=0)))
    return np.minimum(np.abs(da[:, None] - db[None, :]) / spread, 1.0)


def _column_normalised(blocks: np.ndarray) -> np.ndarray:
    """(g, q/g, p/g) -> the same with every column of unit norm (zero columns stay zero)."""
    norms = np.linalg.norm(blocks, axis=1, keepdims=True)
    return blocks / np.where(norms > 0, norms, 1.0)


def _normalised_distance(na: np.ndarray, nb: np.ndarray, present: np.ndarray | None = None
                         ) -> float:
    """``weight_distance`` of two column-normalised weights of one shape: unit columns give
    ``|na_j - s_j nb_j|^2 = 2 - 2 |<na_j, nb_j>|`` with the sign s_j that matches them
    (``present``: (g, p/g), where ``na``'s columns are not zero, if known)."""
    dots = np.abs(np.sum(na * nb, axis=1))
    if present is None:
        present = _present(na)
    columns = max(int(np.count_nonzero(present)), 1)
    return float(np.sqrt(max(float(np.where(present, 2.0 - 2.0 * dots, 0.0).sum()), 0.0)
                         / columns))


def _present(normal: np.ndarray) -> np.ndarray:
    """(g, p/g): which columns of a column-normalised weight are not zero."""
    return np.sum(normal * normal, axis=1) > 0


def weight_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Relative distance of two weights' column-normalised forms, each column's sign
    matched: 0 for one weight up to a per-output scaling, ~sqrt(2) for unrelated ones.
    ``inf`` where the shapes differ (transposed weights are compared transposed)."""
    if a.shape != b.shape and a.shape == (b.shape[0], b.shape[2], b.shape[1]):
        b = b.transpose(0, 2, 1)
    if a.shape != b.shape:
        return math.inf
    return _normalised_distance(_column_normalised(a), _column_normalised(b))


def leading_values(blocks: np.ndarray) -> np.ndarray | None:
    """The SPECTRUM_VALUES largest singular values of the column-normalised weight (over all
    blocks), or None for weights over SPECTRUM_MAX_ELEMENTS."""
    if blocks.size > SPECTRUM_MAX_ELEMENTS:
        return None
    values = np.concatenate([np.linalg.svd(block, compute_uv=False)
                             for block in _column_normalised(blocks)])
    return np.sort(values)[::-1][:SPECTRUM_VALUES]


def spectrum_distance(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """The largest |log| ratio of two leading-value lists (inf where either is missing)."""
    if a is None or b is None or a.shape != b.shape or np.any(a <= 0) or np.any(b <= 0):
        return math.inf
    return float(np.max(np.abs(np.log(a) - np.log(b))))


class _Content:
    """Normalised weights and spectra made once per layer, only for layers that need them."""

    def __init__(self) -> None:
        self._normal: dict[tuple[int, int], np.ndarray] = {}
        self._present: dict[int, np.ndarray] = {}  # the reference's nonzero columns
        self._spectra: dict[tuple[int, int], np.ndarray | None] = {}

    def normalised(self, side: int, index: int, fact: LayerFacts) -> np.ndarray:
        key = (side, index)
        if key not in self._normal:
            blocks = np.asarray(fact.row.layer.load_blocks(), dtype=np.float64)
            self._normal[key] = _column_normalised(blocks)
        return self._normal[key]

    def distance(self, i: int, fa: LayerFacts, j: int, fb: LayerFacts) -> float:
        na, nb = self.normalised(0, i, fa), self.normalised(1, j, fb)
        if na.shape != nb.shape and na.shape == (nb.shape[0], nb.shape[2], nb.shape[1]):
            nb = nb.transpose(0, 2, 1)
        if na.shape != nb.shape:
            return math.inf
        if i not in self._present:
            self._present[i] = _present(na)
        return _normalised_distance(na, nb, self._present[i])

    def spectrum(self, side: int, index: int, fact: LayerFacts) -> np.ndarray | None:
        key = (side, index)
        if key not in self._spectra:
            normal = self.normalised(side, index, fact)
            self._spectra[key] = None if normal.size > SPECTRUM_MAX_ELEMENTS else np.sort(
                np.concatenate([np.linalg.svd(b, compute_uv=False) for b in normal])
            )[::-1][:SPECTRUM_VALUES]
        return self._spectra[key]


def _cost_matrix(ref: Sequence[LayerFacts], other: Sequence[LayerFacts]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(cost, basis code) matrices: 0 position only, 1 weights, 2 spectrum.

    A content cost is added only where position cannot decide: a reference layer with
    several candidates within AMBIGUOUS_GAP of its best position, or a candidate that
    another reference layer of the same shape sits as close to.
    """
    position = position_costs(ref, other)
    shapes_a = [f.shape for f in ref]
    same = np.array([[fb.shape == sa for fb in other] for sa in shapes_a], dtype=bool)
    cost = np.where(same, position, FORBIDDEN)
    families = np.array([[fb.family != fa.family for fb in other] for fa in ref], dtype=bool)
    cost = np.where(same & families, cost + FAMILY_PENALTY, cost)
    basis = np.zeros(cost.shape, dtype=np.int64)
    content = _Content()
    near = same & (position - np.where(same, position, np.inf).min(axis=1, initial=np.inf,
                                                                    keepdims=True)
                   < AMBIGUOUS_GAP)
    crowded = (near.sum(axis=1, keepdims=True) > 1) | (near.sum(axis=0, keepdims=True) > 1)
    for i, j in zip(*np.nonzero(near & crowded), strict=True):
        basis[i, j] = 1
    rows = sorted({int(i) for i in np.nonzero(basis)[0]})
    for i in rows:
        cols = [int(j) for j in np.nonzero(basis[i])[0]]
        distances = {j: content.distance(i, ref[i], j, other[j]) for j in cols}
        close = min(distances.values(), default=math.inf) <= CLOSE_CONTENT
        for j in cols:
            if close:
                extra, code = min(distances[j], 1.0), 1
            else:
                extra = min(spectrum_distance(content.spectrum(0, i, ref[i]),
                                              content.spectrum(1, j, other[j])), 1.0)
                code = 2
            cost[i, j] += extra
            basis[i, j] = code
    return cost, basis


# ------------------------------------------------------------------ solving


def _feeds(facts: Sequence[LayerFacts]) -> np.ndarray:
    """(n, n) booleans: ``[a, b]`` where layer a's output reaches layer b's data input."""
    index = {f.label: k for k, f in enumerate(facts)}
    feeds = np.zeros((len(facts), len(facts)), dtype=bool)
    for b, fact in enumerate(facts):
        feeds[[index[label] for label in fact.upstream if label in index], b] = True
    return feeds


def _crossing(feeds_ref: np.ndarray, feeds_other: np.ndarray, pairs: list[tuple[int, int]]
              ) -> tuple[int, int] | None:
    """Two pairs (by their index in ``pairs``) that contradict the data flow: a1 feeds a2
    while b2 feeds b1 (``feeds_*``: see ``_feeds``)."""
    if not pairs:
        return None
    a, b = np.array(pairs, dtype=np.int64).T
    crossing = feeds_ref[a[:, None], a[None, :]] & feeds_other[b[None, :], b[:, None]]
    found = np.argwhere(crossing)
    return (int(found[0, 0]), int(found[0, 1])) if len(found) else None


def _solve(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost pairs, forbidden ones dropped."""
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)
            if cost[r, c] < FORBIDDEN]


def _confidences(cost: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Each pair's confidence and rivals (``pairs``: (n, 2) reference and other indices).

    A pair (i, j)'s next-best choice is another partner for i or for j, or a swap of partners
    with another pair (i2, j2); the confidence is its extra cost / CONFIDENT_GAP, clipped.

    Returns:
        (n,) confidences; (n, len(other)) rivals for i among the other model's layers and
        (n, len(ref)) rivals for j among the reference's: choices within AMBIGUOUS_GAP.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    here = cost[i, j][:, None]  # (n, 1)
    every = np.arange(len(pairs))
    rows = cost[i, :].copy()  # (n, len(other)): other partners for i
    rows[every, j] = FORBIDDEN
    cols = cost[:, j].T.copy()  # (n, len(ref)): other partners for j
    cols[every, i] = FORBIDDEN
    gives = cost[i[:, None], j[None, :]]  # [x, y]: pair x's reference layer with y's partner
    takes = cost[i[None, :], j[:, None]]  # [x, y]: y's reference layer with x's partner
    usable = (gives < FORBIDDEN) & (takes < FORBIDDEN) & ~np.eye(len(pairs), dtype=bool)
    swap = np.where(usable, gives + takes - here - here.T, np.inf)
    gaps = np.concatenate([np.where(rows < FORBIDDEN, rows - here, np.inf),
                           np.where(cols < FORBIDDEN, cols - here, np.inf), swap], axis=1)
    gap = gaps.min(axis=1, initial=np.inf)
    confidence = np.where(gap >= CONFIDENT_GAP, 1.0, np.maximum(gap, 0.0) / CONFIDENT_GAP)
    return (confidence, (rows < FORBIDDEN) & (rows - here < AMBIGUOUS_GAP),
            (cols < FORBIDDEN) & (cols - here < AMBIGUOUS_GAP))


def _sole(cost: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(n,) whether each pair's layers have no other candidate in either model."""
    allowed = cost < FORBIDDEN
    i, j = pairs[:, 0], pairs[:, 1]
    return (allowed[i, :].sum(axis=1) <= 1) & (allowed[:, j].sum(axis=0) <= 1)


def align_layers(ref: Sequence[LayerFacts], other: Sequence[LayerFacts],
                 pins: Sequence[tuple[int, int]] = ()) -> Alignment:
    """Line up ``other``'s layers against ``ref``'s (see the module's docstring).

    Args:
        ref, other: each model's layer facts.
        pins: (reference index, other index) pairs the user fixed (``--match``).

    Raises:
        UsageError: a pin whose layers' shapes cannot be one layer's.
    """
    cost, basis = _cost_matrix(ref, other)
    pinned = set()
    for i, j in pins:
        if ref[i].shape != other[j].shape:
            raise UsageError(f"--match pairs '{ref[i].label}' ({_shape(ref[i])}) with "
                             f"'{other[j].label}' ({_shape(other[j])}): their shapes differ, "
                             "so they cannot be one layer", hint="pin layers of equal shape")
        cost[i, :] = FORBIDDEN
        cost[:, j] = FORBIDDEN
        cost[i, j] = 0.0
        pinned.add((i, j))
    pairs = _solve(cost)
    feeds = (_feeds(ref), _feeds(other))
    for _ in range(MAX_RESOLVES):
        crossing = _crossing(*feeds, pairs)
        if crossing is None:
            break
        worse = max(crossing, key=lambda k: (pairs[k] not in pinned, cost[pairs[k]]))
        if pairs[worse] in pinned:
            break
        cost[pairs[worse]] = FORBIDDEN
        pairs = _solve(cost)
    crossing = _crossing(*feeds, pairs)
    crossings = () if crossing is None else tuple(
        (ref[pairs[k][0]].label, other[pairs[k][1]].label) for k in crossing)
    ordered = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    confidence, rival_b, rival_a = _confidences(cost, ordered)
    sole = _sole(cost, ordered)
    matches = []
    for k, (i, j) in enumerate(ordered.tolist()):
        names = [other[int(b)].label for b in np.nonzero(rival_b[k])[0]] + \
            [ref[int(a)].label for a in np.nonzero(rival_a[k])[0]]
        sure = float(confidence[k])
        if (i, j) in pinned:
            how, sure, names = "pinned", 1.0, []
        elif sole[k]:
            how = "only candidate"
        else:
            how = ("position", "weights", "spectrum")[int(basis[i, j])]
        matches.append(Match(i, j, float(cost[i, j]), sure, how, tuple(names)))
    used_a = {i for i, _ in pairs}
    used_b = {j for _, j in pairs}
    return Alignment(tuple(matches), tuple(i for i in range(len(ref)) if i not in used_a),
                     tuple(j for j in range(len(other)) if j not in used_b), crossings)


def _shape(fact: LayerFacts) -> str:
    layer = fact.row.layer
    groups = f", {layer.groups} groups" if layer.groups > 1 else ""
    return f"q={layer.q}, p={layer.p}{groups}"
