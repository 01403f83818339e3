"""What `compare` is asked for and what it finds: frozen dataclasses, no printing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxcollide.audit.model import AuditSettings, LayerRow, ModelAudit
from onnxcollide.compare.align import Match
from onnxcollide.compare.relate import WeightRelation

DEFAULT_TRANSFER_COUNT = 2
INPUT_RANGE = (0.0, 1.0)  # the seeded inputs' range; colliding inputs stay inside it
TRANSFER_DRAW = (0.25, 0.75)  # --transfer's inputs: room for colliding inputs of useful size
TRANSFER_RATIO = 5.0  # W1 residuals this many times below the random one's: APPROXIMATE


@dataclass(frozen=True)
class CompareSettings:
    """Everything that decides a comparison's numbers.

    Attributes:
        audit: the audit settings shared by every model (conv convention, tolerance rule);
            input shapes are per model, in ``input_shapes``.
        input_shapes: (model path, ((input, dims), ...)) for each model.
        pins: ``--match`` texts, ``NODE_A=[MODEL:]NODE_B``.
        run: run every model on the same seeded inputs (``--run``).
        transfer: run the reference's exact colliding inputs through every model
            (``--transfer``).
        count: colliding inputs made for ``transfer``.
        seed: seeds the inputs, the colliding inputs and the random baselines.
        device: ONNX Runtime device for ``run`` and ``transfer``.
        structure_only: only rank, nullity and unmatched layers are differences (weights
            that relate as ``different`` are reported, not counted).
    """

    audit: AuditSettings = field(default_factory=AuditSettings)
    input_shapes: tuple[tuple[str, tuple[tuple[str, tuple[int, ...]], ...]], ...] = ()
    pins: tuple[str, ...] = ()
    run: bool = False
    transfer: bool = False
    count: int = DEFAULT_TRANSFER_COUNT
    seed: int = 0
    device: str = "auto"
    structure_only: bool = False

    def shapes_of(self, path: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The input shapes given for ``path`` (none where none were)."""
        return next((shapes for p, shapes in self.input_shapes if p == path), ())


@dataclass(frozen=True)
class PairedLayer:
    """A reference layer and its partner in another model.

    Attributes:
        reference: the reference's audit row.
        other: the other model's audit row.
        match: how the pair was found (cost, confidence, basis, ambiguity).
        relation: how the other's weight relates to the reference's.
        common_rank: where the ranks differ and the two weights are computed in different
            types, the other weight's rank at the reference's tolerance (the reference
            type's eps); None otherwise.
    """

    reference: LayerRow
    other: LayerRow
    match: Match
    relation: WeightRelation
    common_rank: int | None = None

    @property
    def same_rank(self) -> bool:
        """Same rank and nullity as decided by each audit (q and p agree as a multiset by
        construction)."""
        return (self.reference.rank == self.other.rank
                and self.reference.nullity == self.other.nullity)

    @property
    def tolerance_only(self) -> bool:
        """The ranks differ only through the tolerance: at the reference's tolerance the
        other weight, which relates to the reference's (fp16, quantization), has its rank."""
        return (not self.same_rank and self.relation.same
                and self.common_rank == self.reference.rank
                and self.other.layer.q == self.reference.layer.q)

    @property
    def same_structure(self) -> bool:
        """Same rank and nullity, or a difference explained by the tolerance alone."""
        return self.same_rank or self.tolerance_only


@dataclass(frozen=True)
class InputDraw:
    """One seeded input drawn on the reference for ``--run`` or ``--transfer``.

    Attributes:
        purpose: ``run`` or ``transfer``.
        name: the reference's input.
        shape, dtype: as drawn.
        low, high: the uniform range (``--transfer`` draws from TRANSFER_DRAW, so colliding
            inputs of useful size stay inside INPUT_RANGE).
        seed: the generator's seed.
    """

    purpose: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    low: float
    high: float
    seed: int


@dataclass(frozen=True)
class InputMap:
    """How one reference input is fed to another model.

    Attributes:
        reference: the reference's input name.
        other: the other model's input name (inputs are paired by position).
        permutation: axes of the reference's array in the other's order, None for as is.
        layout: the change in words (``NCHW -> NHWC``), ``""`` for none.
    """

    reference: str
    other: str
    permutation: tuple[int, ...] | None
    layout: str


@dataclass(frozen=True)
class OutputAgreement:
    """One output of another model against the reference's, on the same inputs.

    Attributes:
        reference, other: the outputs' names (paired by position).
        layout: how the other's output was brought into the reference's layout (``""``).
        max_abs: max |reference - other| (inf where no layout change fits the shapes).
        max_rel: max_abs / max |reference|.
        argmax_agree, top5_agree: for classifier-like outputs, else None.
    """

    reference: str
    other: str
    layout: str
    max_abs: float
    max_rel: float
    argmax_agree: float | None
    top5_agree: float | None


@dataclass(frozen=True)
class RunComparison:
    """``--run``: one model against the reference on the same seeded inputs.

    Attributes:
        inputs: how each input was fed.
        outputs: every output's agreement.
        computed_in: the narrowest float type of the two runs.
        tolerance: the largest max_rel allowed, None where not judged (quantized weights).
        judged: why that tolerance (``float32``, ``float16``) or why none.
        agree: whether every output is within the tolerance (with argmax agreement); None
            where not judged.
    """

    inputs: tuple[InputMap, ...]
    outputs: tuple[OutputAgreement, ...]
    computed_in: str
    tolerance: float | None
    judged: str
    agree: bool | None


@dataclass(frozen=True)
class TransferCheck:
    """``--transfer``: the reference's colliding inputs run through one model.

    Attributes:
        w1: the model's W1 output tensor the residual is measured at (None: none reached).
        checks: one ``runtime.validate.validation_dict`` per colliding input.
        layer_residual: the largest W1 residual over the colliding inputs.
        baseline_residual: the smallest W1 residual of their random perturbations.
        ratio: the smallest baseline / collision W1 residual ratio (None: a residual of 0).
        output_max_rel: the largest output max_rel over the colliding inputs.
        verdict: ``PASS`` (collides within the tolerances), ``APPROXIMATE`` (not within
            them, but every W1 residual at least TRANSFER_RATIO times below the random
            perturbation's: quantization or fp16 rounding), ``FAIL``, ``INCONCLUSIVE`` (the
            random perturbation meets the tolerances too) or ``NOT CHECKED``.
        reason: why it was not checked, else ``""``.
    """

    w1: str | None
    checks: tuple[dict[str, Any], ...]
    layer_residual: float | None
    baseline_residual: float | None
    ratio: float | None
    output_max_rel: float | None
    verdict: str
    reason: str = ""


@dataclass(frozen=True)
class TransferSource:
    """The colliding inputs made on the reference for ``--transfer``.

    Attributes:
        made: whether exact colliding inputs were made.
        input: the perturbed input of the reference.
        count: how many.
        method: how (the search's words), or why none were made.
        exactness: W1's class on the input shape.
        norms: each colliding input's perturbation norm.
    """

    made: bool
    input: str | None
    count: int
    method: str
    exactness: str | None
    norms: tuple[float, ...] = ()


@dataclass(frozen=True)
class ModelComparison:
    """One other model against the reference.

    Attributes:
        audit: the other model's audit.
        pairs: aligned layers, in the reference's row order.
        unmatched_reference: reference layers with no partner in this model.
        unmatched_other: this model's layers with no partner in the reference.
        crossings: pairs that contradict the data-flow order (see align.Alignment).
        run: ``--run`` figures, or None.
        transfer: ``--transfer`` figures, or None.
    """

    audit: ModelAudit
    pairs: tuple[PairedLayer, ...]
    unmatched_reference: tuple[LayerRow, ...]
    unmatched_other: tuple[LayerRow, ...]
    crossings: tuple[tuple[str, str], ...] = ()
    run: RunComparison | None = None
    transfer: TransferCheck | None = None


@dataclass(frozen=True)
class Difference:
    """One thing that differs from the reference (these decide exit code 1).

    Attributes:
        model: the other model's path.
        kind: ``unmatched``, ``rank``, ``weights``, ``outputs`` or ``transfer``.
        reference_node: the reference layer concerned, or None.
        other_node: the other model's layer concerned, or None.
        text: one line for people.
    """

    model: str
    kind: str
    reference_node: str | None
    other_node: str | None
    text: str


@dataclass(frozen=True)
class Comparison:
    """Every model against the reference; reports are rendered from this alone.

    Attributes:
        reference: the reference's audit.
        others: each other model's comparison, in the order given.
        differences: what differs, in report order (decides the exit code).
        notes: ambiguities, crossings and anything else to know.
        settings: what decided the numbers.
        reference_transfer: the reference's own ``--transfer`` check (None without it).
        source: the colliding inputs made for ``--transfer`` (None without it).
        inputs: the seeded inputs drawn for ``--run`` and ``--transfer``, empty without
            them.
    """

    reference: ModelAudit
    others: tuple[ModelComparison, ...]
    differences: tuple[Difference, ...]
    notes: tuple[str, ...]
    settings: CompareSettings
    reference_transfer: TransferCheck | None = None
    source: TransferSource | None = None
    inputs: tuple[InputDraw, ...] = ()

    @property
    def same(self) -> bool:
        """No difference: exit code 0."""
        return not self.differences
