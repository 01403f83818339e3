"""How the weights of two aligned layers relate: equal up to layout, up to a per-output
scaling (BatchNorm folded into a conv), up to fp16 rounding, up to quantization, or not.

Both weights arrive as the audit reads them, ``(groups, q/g, p/g)`` blocks in one convention
(``y = v^T W``), so NCHW/NHWC kernels, a Gemm with transB against a MatMul and a weight stored
transposed already read the same matrix: "equal up to layout" is a plain comparison here.

Each relation is an element-wise bound on the lower-precision side B against the other, A
(scaled per output column by ``c`` where a scaling is tried):

- equal: ``|B - c A| <= EQUAL_ULPS * eps * |B|`` (float rounding of the narrower type);
- fp16: ``|B - c A| <= spacing_fp16(|B|) / 2`` (B is A rounded to float16);
- quantization: ``|B - c A| <= step_j / 2`` (B is A rounded to its quantization grid; the
  step of each output column is read off B's dequantized values, see ``grid_steps``).

A scaling holds when one ``c_j`` per output column meets every bound of that column: the
bounds give an interval for ``c_j`` per element, and their intersection must not be empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from onnxcollide.linalg.spectral import EPS_OF

EQUAL_ULPS = 4.0  # rounding allowed for "equal": a few ulp (folding done in another order)
HALF_STEP_SLACK = 1e-3  # relative slack on half a step (float32 rounding of the values)
GRID_RTOL = 1e-3  # how far value gaps may be from whole multiples of the step
MAX_GRID_DIVISOR = 16  # the step may be the smallest gap divided by up to this
PERMUTE_MAX_ROWS = 1024  # rows matched one to one (an NHWC flatten) only up to this many
PRECISION_ORDER = ("quantized", "float16", "bfloat16", "float", "double")

EQUAL = "equal"
FP16 = "fp16"
QUANTIZATION = "quantization"
DIFFERENT = "different"


@dataclass(frozen=True)
class WeightFacts:
    """What one side's weight is, for choosing the bounds.

    Attributes:
        precision: ``quantized`` (integer weights, dequantized), ``float16``, ``bfloat16``,
            ``float`` or ``double`` (the type the weight is computed in).
        layout: how the audit read the matrix off the tensor, in words.
    """

    precision: str
    layout: str


@dataclass(frozen=True)
class WeightRelation:
    """How the other model's weight B relates to the reference's A.

    Attributes:
        kind: ``equal``, ``fp16``, ``quantization`` or ``different``.
        scaled: whether a per-output scaling ``B = c_j A`` (BatchNorm folded) was needed.
        transform: ``""``, ``transposed`` (q and p swapped) or ``rows permuted`` (the inputs
            in another order, as an NHWC flatten gives).
        max_abs: the largest ``|B - c A|`` (``|B - A|`` for ``different``), in the units of
            the lower-precision side.
        max_rel: ``max_abs / max |that side|``.
        scale_min, scale_max: the smallest and largest ``c_j`` (other = c * reference), None
            without a scaling.
        step_min, step_max: the quantization steps of the quantized side (its own units), None
            unless ``kind`` is ``quantization``.
        max_steps: ``max_abs`` in quantization steps (at most 0.5 for ``quantization``).
        bound: the bound ``max_abs`` was checked against, in words.
        note: why the weights are different (shapes, or the closest relation that failed).
    """

    kind: str
    scaled: bool
    transform: str
    max_abs: float
    max_rel: float
    scale_min: float | None
    scale_max: float | None
    step_min: float | None
    step_max: float | None
    max_steps: float | None
    bound: str
    note: str = ""

    @property
    def same(self) -> bool:
        """Whether the weights are one weight up to the relation (not ``different``)."""
        return self.kind != DIFFERENT

    def label(self) -> str:
        """The relation in a few words, e.g. ``per-output scaling + quantization``."""
        base = {EQUAL: "equal up to layout", FP16: "fp16 rounding",
                QUANTIZATION: "quantization", DIFFERENT: "different"}[self.kind]
        if self.scaled:
            base = "per-output scaling" + ("" if self.kind == EQUAL else f" + {base}")
        return base + (f" ({self.transform})" if self.transform else "")


def _rank(facts: WeightFacts) -> int:
    return PRECISION_ORDER.index(facts.precision) if facts.precision in PRECISION_ORDER else 3


def grid_steps(blocks: np.ndarray) -> np.ndarray | None:
    """The quantization step of each output column of dequantized weights.

    Dequantized values are ``(k - zero_point) * step``: their gaps are whole multiples of the
    step. The step is found for the whole tensor first (per-tensor quantization), else per
    column (per-channel): the smallest gap divided by the smallest k <= MAX_GRID_DIVISOR that
    makes every gap a whole multiple (within GRID_RTOL).

    Args:
        blocks: (g, q/g, p/g) dequantized weights.

    Returns:
        (g, p/g) steps, or None where some column's values lie on no grid (not quantized).
        A column of one value gets the tensor's smallest step found.
    """
    whole = _grid_step(blocks.ravel())
    if whole is not None:
        return np.full((blocks.shape[0], blocks.shape[2]), whole)
    steps = np.full((blocks.shape[0], blocks.shape[2]), np.nan)
    for g in range(blocks.shape[0]):
        for j in range(blocks.shape[2]):
            values = blocks[g, :, j]
            if np.unique(values).size < 2:
                continue
            step = _grid_step(values)
            if step is None:
                return None
            steps[g, j] = step
    if np.all(np.isnan(steps)):
        return None
    return np.where(np.isnan(steps), np.nanmin(steps), steps)


def _grid_step(values: np.ndarray) -> float | None:
    """The largest step whose multiples hold every gap of ``values``, or None."""
    ordered = np.sort(np.asarray(values, dtype=np.float64), axis=None)
    gaps = np.diff(ordered)
    gaps = gaps[gaps > 0]  # the gaps between distinct values
    if gaps.size == 0:
        return None
    smallest = float(gaps.min())
    for divisor in range(1, MAX_GRID_DIVISOR + 1):
        step = smallest / divisor
        ratios = gaps / step
        if float(np.abs(ratios - np.rint(ratios)).max()) <= GRID_RTOL:
            return step
    return None


# ------------------------------------------------------------------ bounds


@dataclass(frozen=True)
class _Bound:
    """An element-wise bound on ``|B - c A|``."""

    kind: str
    half_width: np.ndarray  # (g, q/g, p/g), or (g, 1, p/g) per column: broadcasts
    words: str
    steps: np.ndarray | None = None  # (g, p/g), quantization only


class _Bounds:
    """The bounds that may hold for B, tightest first, each made when first asked for.
    "Equal" allows the rounding of the wider of the two types: a float16 copy of a float32
    weight is fp16 rounding, not equal."""

    def __init__(self, b: np.ndarray, facts_b: WeightFacts, facts_a: WeightFacts) -> None:
        self._b = b
        self._facts_b = facts_b
        self._wider = min((f.precision for f in (facts_a, facts_b) if f.precision in EPS_OF),
                          key=lambda name: EPS_OF[name], default="float")
        self.top = float(np.abs(b).max()) if b.size else 0.0  # the largest |B|
        self._floor = EQUAL_ULPS * EPS_OF[self._wider] * self.top * 2.0**-16
        # A float weight equal to its quantized copy lies on the grid: quantization (0 steps)
        # says so too, so the equal bound is skipped there (one pass less per pair).
        kinds = [] if facts_b.precision == "quantized" != facts_a.precision else [EQUAL]
        if facts_b.precision == "float16":
            kinds.append(FP16)
        if facts_b.precision == "quantized":
            kinds.append(QUANTIZATION)
        self._kinds = kinds
        self._made: dict[str, _Bound | None] = {}

    def __iter__(self) -> Iterator[_Bound]:
        for kind in self._kinds:
            if kind not in self._made:
                self._made[kind] = self._make(kind)
            bound = self._made[kind]
            if bound is not None:
                yield bound

    def _make(self, kind: str) -> _Bound | None:
        b, floor = self._b, self._floor
        if kind == EQUAL:
            return _Bound(EQUAL, EQUAL_ULPS * EPS_OF[self._wider] * np.abs(b) + floor,
                          f"{EQUAL_ULPS:g} ulp of {self._wider}")
        if kind == FP16:
            half = 0.5 * np.spacing(np.abs(b).astype(np.float16)).astype(np.float64)
            return _Bound(FP16, half * (1 + HALF_STEP_SLACK) + floor, "half a float16 step")
        steps = grid_steps(b)
        if steps is None:
            return None
        half = (0.5 * (1 + HALF_STEP_SLACK)) * steps[:, None, :] + floor
        return _Bound(QUANTIZATION, half, "half a quantization step", steps)


def _scales(a: np.ndarray, b: np.ndarray, half: np.ndarray) -> np.ndarray | None:
    """One ``c`` per output column with ``|B - c A| <= half`` everywhere, or None.

    Each element with ``a != 0`` puts ``c`` in ``[(b - h) / a, (b + h) / a]``; elements with
    ``a == 0`` need ``|b| <= h``. The least-squares scale is clipped into the intersection,
    which must not hold 0 (an output that B zeroed is not a scaling).

    Returns:
        (g, p/g) scales (1 for columns of A that are all zero).
    """
    if np.any((a == 0) & (np.abs(b) > half)):
        return None
    nonzero = a != 0
    safe = np.where(nonzero, a, 1.0)
    ends = np.stack([(b - half) / safe, (b + half) / safe])
    low = np.where(nonzero, ends.min(axis=0), -np.inf).max(axis=1)
    high = np.where(nonzero, ends.max(axis=0), np.inf).min(axis=1)
    if np.any(low > high):
        return None
    if np.any((low <= 0) & (high >= 0) & np.any(nonzero, axis=1)):
        return None  # a zero scale: B lost that output, which no scaling explains
    norms = np.sum(a * a, axis=1)
    least = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, np.clip(least, low, high), 1.0)


def _holds(a: np.ndarray, b: np.ndarray, bound: _Bound, scaled: bool
           ) -> tuple[np.ndarray | None, np.ndarray] | None:
    """Where ``bound`` holds: the per-column scales (None when not ``scaled``) and
    ``|B - c A|``; None where it does not hold."""
    if not scaled:
        diff = np.abs(b - a)
        return (None, diff) if bool((diff <= bound.half_width).all()) else None
    scales = _scales(a, b, bound.half_width)
    return None if scales is None else (scales, np.abs(b - scales[:, None, :] * a))


def _relation(diff: np.ndarray, top: float, bound: _Bound, scales: np.ndarray | None,
              transform: str, inverted: bool) -> WeightRelation:
    """The relation that holds, with its figures (``diff``: ``|B - c A|``; ``top``: the
    largest ``|B|``; ``inverted``: A was the lower-precision side, so the reported scale is
    inverted to stay other = c * reference)."""
    max_abs = float(diff.max()) if diff.size else 0.0
    shown = None if scales is None else (1.0 / scales if inverted else scales)
    steps, max_steps = bound.steps, None
    if steps is not None:
        max_steps = float((diff / steps[:, None, :]).max()) if diff.size else 0.0
    return WeightRelation(
        kind=bound.kind, scaled=shown is not None, transform=transform, max_abs=max_abs,
        max_rel=max_abs / top if top > 0 else 0.0,
        scale_min=None if shown is None else float(shown.min()),
        scale_max=None if shown is None else float(shown.max()),
        step_min=None if steps is None else float(steps.min()),
        step_max=None if steps is None else float(steps.max()),
        max_steps=max_steps, bound=bound.words)


def _try(a: np.ndarray, b: np.ndarray, facts: tuple[WeightFacts, WeightFacts],
         transform: str, inverted: bool, scaling: bool = True) -> WeightRelation | None:
    """The first relation that holds: unscaled bounds, tightest first, then scaled ones
    (``facts``: A's, then B's)."""
    bounds = _Bounds(b, facts[1], facts[0])  # both weights are finite (relate_weights)
    for scaled in (False, True) if scaling else (False,):
        for bound in bounds:
            held = _holds(a, b, bound, scaled)
            if held is not None:
                return _relation(held[1], bounds.top, bound, held[0], transform, inverted)
    return None


def _permuted_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """B's rows in the order that matches A's best (one block, q <= PERMUTE_MAX_ROWS, equal
    sorted row norms within 1%), or None."""
    if a.shape[0] != 1 or a.shape[1] > PERMUTE_MAX_ROWS or a.shape[1] < 2:
        return None
    norms_a = np.sort(np.linalg.norm(a[0], axis=1))
    norms_b = np.sort(np.linalg.norm(b[0], axis=1))
    if not np.allclose(norms_a, norms_b, rtol=1e-2, atol=1e-2 * float(norms_a.max(initial=0))):
        return None
    cost = (np.sum(a[0] ** 2, axis=1)[:, None] + np.sum(b[0] ** 2, axis=1)[None, :]
            - 2.0 * a[0] @ b[0].T)
    rows, cols = linear_sum_assignment(cost)
    if np.array_equal(cols, rows):
        return None  # already in order: a permutation adds nothing
    return b[:, cols, :]


def relate_weights(a: np.ndarray, b: np.ndarray, facts_a: WeightFacts,
                   facts_b: WeightFacts) -> WeightRelation:
    """How B (the other model's weight) relates to A (the reference's).

    Args:
        a: (g, q/g, p/g) blocks of the reference's weight, as the audit reads them.
        b: the other model's blocks.
        facts_a, facts_b: what each side is (precision, layout).

    Returns:
        The first relation that holds: equal, fp16, quantization (unscaled), then the same
        with a per-output scaling, then with B's rows permuted; else ``different`` with the
        largest plain difference.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    transform = ""
    if a.shape != b.shape and a.shape == (b.shape[0], b.shape[2], b.shape[1]):
        b, transform = b.transpose(0, 2, 1), "transposed"
    if a.shape != b.shape:
        return _different(a, b, transform, f"the blocks differ in shape: {a.shape[1:]} x "
                          f"{a.shape[0]} against {b.shape[1:]} x {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return _different(a, b, transform, "a weight holds values that are not finite")
    if np.array_equal(a, b):  # the same values: no bound needs computing
        return WeightRelation(EQUAL, False, transform, 0.0, 0.0, None, None, None, None, None,
                              "identical values")
    inverted = _rank(facts_a) < _rank(facts_b)
    low, high = (a, b) if inverted else (b, a)
    facts = (facts_b, facts_a) if inverted else (facts_a, facts_b)
    found = _try(high, low, facts, transform, inverted)
    if found is not None:
        return found
    permuted = _permuted_rows(a, b)
    if permuted is not None:
        low, high = (a, permuted) if inverted else (permuted, a)
        found = _try(high, low, facts, "rows permuted", inverted, scaling=False)
        if found is not None:
            return found
    return _different(a, b, transform, "")


def _different(a: np.ndarray, b: np.ndarray, transform: str, note: str) -> WeightRelation:
    """``different``, with the largest plain difference where the shapes agree."""
    if a.shape == b.shape and a.size:
        diff = np.abs(b - a)
        finite = diff[np.isfinite(diff)]
        max_abs = float(finite.max()) if finite.size else math.inf
        top = float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0))
        max_rel = max_abs / top if top > 0 else math.inf
    else:
        max_abs = max_rel = math.inf
    return WeightRelation(kind=DIFFERENT, scaled=False, transform=transform,
                          max_abs=max_abs, max_rel=max_rel, scale_min=None, scale_max=None,
                          step_min=None, step_max=None, max_steps=None,
                          bound="no relation holds", note=note)
