"""``--run`` and ``--transfer``: the models in ONNX Runtime on the same inputs, mapped across
NCHW/NHWC layouts, and the reference's exact colliding inputs run through every model.

Imports ONNX Runtime (through ``runtime``) only when called: ``compare`` without these options
needs none installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from onnxcollide.collide.inputs import ImageOptions, read_inputs
from onnxcollide.collide.results import CollisionSet, SearchSettings
from onnxcollide.compare.results import (
    INPUT_RANGE,
    TRANSFER_RATIO,
    InputDraw,
    InputMap,
    OutputAgreement,
    RunComparison,
    TransferCheck,
    TransferSource,
)
from onnxcollide.errors import OnnxCollideError, UnsupportedModelError, UsageError
from onnxcollide.graph.linear_ops import node_label
from onnxcollide.graph.load import load_model
from onnxcollide.linalg.spectral import ToleranceRule
from onnxcollide.runtime.session import InputSpec, ModelRunner, compute_type
from onnxcollide.runtime.validate import (
    Tolerances,
    compare_outputs,
    validate_pair,
    validation_dict,
)


def _layouts(rank: int) -> list[tuple[tuple[int, ...] | None, str]]:
    """Layout changes tried, in order: none, channels first -> last, channels last -> first."""
    found: list[tuple[tuple[int, ...] | None, str]] = [(None, "")]
    if rank >= 3:
        found.append(((0, *range(2, rank), 1), "NCHW -> NHWC"))
        found.append(((0, rank - 1, *range(1, rank - 1)), "NHWC -> NCHW"))
    return found


def _fits(shape: tuple[int, ...], declared: tuple[int | None, ...] | None) -> bool:
    if declared is None:
        return True
    return len(shape) == len(declared) and all(d is None or d == n
                                               for d, n in zip(declared, shape, strict=True))


def _shape_text(shape: Sequence[int | None] | None) -> str:
    if shape is None:
        return "[unknown rank]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def map_inputs(feeds: dict[str, np.ndarray], reference: Sequence[InputSpec],
               other: Sequence[InputSpec], path: str) -> tuple[InputMap, ...]:
    """Pair the reference's inputs with another model's by position and find the layout
    change that makes each reference array fit the other's declared shape.

    Raises:
        UsageError: the models have different numbers of inputs, or an input whose shape no
            layout change (none, NCHW -> NHWC, NHWC -> NCHW) explains, or a float input fed
            to an integer one.
    """
    if len(reference) != len(other):
        raise UsageError(f"has {len(other)} input(s), the reference {len(reference)}: the "
                         "inputs cannot be mapped", path, "compare exports of one network")
    maps = []
    for ref, oth in zip(reference, other, strict=True):
        shape = tuple(feeds[ref.name].shape)
        if ref.is_float != oth.is_float:
            raise UsageError(f"input '{oth.name}' is {oth.dtype}, the reference's '{ref.name}' "
                             f"{ref.dtype}: the inputs cannot be mapped", path,
                             "compare exports of one network")
        for perm, words in _layouts(len(shape)):
            moved = shape if perm is None else tuple(shape[k] for k in perm)
            if _fits(moved, oth.shape):
                maps.append(InputMap(ref.name, oth.name, perm, words))
                break
        else:
            raise UsageError(
                f"input '{oth.name}' {_shape_text(oth.shape)} cannot take the reference's "
                f"'{ref.name}' {_shape_text(shape)}: no layout change (NCHW <-> NHWC) explains "
                "the shapes", path, "compare exports of one network, or fix the reference's "
                "input shape with --input-shape")
    return tuple(maps)


def apply_maps(feeds: dict[str, np.ndarray], maps: Sequence[InputMap]) -> dict[str, np.ndarray]:
    """The reference's feeds renamed and transposed for another model."""
    out = {}
    for m in maps:
        value = feeds[m.reference]
        out[m.other] = value if m.permutation is None else np.ascontiguousarray(
            value.transpose(m.permutation))
    return out


def seeded_inputs(path: str, shapes: dict[str, tuple[int, ...]], seed: int, purpose: str,
                  value_range: tuple[float, float] = INPUT_RANGE
                  ) -> tuple[dict[str, np.ndarray], tuple[InputDraw, ...]]:
    """The reference's seeded uniform draws in ``value_range`` (batch 1 where dynamic) and
    their record."""
    feeds, records = read_inputs(load_model(path), {}, shapes, seed, ImageOptions(),
                                 value_range)
    return feeds, tuple(InputDraw(purpose, name, tuple(r["shape"]), r["dtype"], value_range[0],
                                  value_range[1], seed) for name, r in records.items())


def _to_reference_layout(value: np.ndarray, shape: tuple[int, ...]
                         ) -> tuple[np.ndarray | None, str]:
    """Another model's output brought into the reference output's shape, with the change."""
    if value.shape == shape:
        return value, ""
    for perm, words in _layouts(value.ndim)[1:]:
        if perm is not None and tuple(value.shape[k] for k in perm) == shape:
            return np.transpose(value, perm), words
    return None, ""


def _agreements(ref_out: dict[str, np.ndarray], ref_names: Sequence[str],
                out: dict[str, np.ndarray], names: Sequence[str]) -> tuple[OutputAgreement, ...]:
    found = []
    for ref_name, name in zip(ref_names, names, strict=False):
        value, words = _to_reference_layout(np.asarray(out[name]), ref_out[ref_name].shape)
        if value is None:
            found.append(OutputAgreement(ref_name, name, "", math.inf, math.inf, None, None))
            continue
        compared = compare_outputs({"x": ref_out[ref_name]}, {"x": value})
        if not compared:  # not numeric
            continue
        c = compared[0]
        found.append(OutputAgreement(ref_name, name, words, c.max_abs, c.max_rel,
                                     c.argmax_agree, c.top5_agree))
    return tuple(found)


class Runners:
    """ONNX Runtime sessions, one per (model, extra outputs), opened once per comparison."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._open: dict[tuple[str, tuple[str, ...]], ModelRunner] = {}

    def get(self, path: str, extra: tuple[str, ...] = ()) -> ModelRunner:
        """The runner of ``path`` with ``extra`` outputs."""
        key = (path, extra)
        if key not in self._open:
            self._open[key] = ModelRunner(path, extra_outputs=list(extra), device=self.device)
        return self._open[key]


def run_pair(runners: Runners, reference: str, other: str, feeds: dict[str, np.ndarray],
             quantized: bool) -> RunComparison:
    """Run both models on the reference's ``feeds`` (mapped) and compare every output.

    Args:
        quantized: either model has quantized weights (its outputs are not judged).

    Raises:
        UsageError: inputs that cannot be mapped, or a run that fails.
    """
    ref_runner, runner = runners.get(reference), runners.get(other)
    maps = map_inputs(feeds, ref_runner.inputs, runner.inputs, other)
    ref_out = ref_runner.run(feeds)
    out = runner.run(apply_maps(feeds, maps))
    outputs = _agreements(ref_out, ref_runner.model_outputs, out, runner.model_outputs)
    computed = compute_type([ref_runner.computed_in, runner.computed_in])
    if quantized:
        return RunComparison(maps, outputs, computed, None,
                             "not judged: quantized weights (figures only)", None)
    tolerance = Tolerances.for_precision(computed).output_rtol
    agree = len(ref_runner.model_outputs) == len(runner.model_outputs) and all(
        o.max_rel <= tolerance and o.argmax_agree in (None, 1.0) for o in outputs)
    return RunComparison(maps, outputs, computed, tolerance, computed, agree)


def make_collisions(reference: str, feeds: dict[str, np.ndarray], count: int, seed: int,
                    rule: ToleranceRule) -> tuple[TransferSource, CollisionSet | None]:
    """The reference's exact colliding inputs (the ``collide`` search, kept inside
    INPUT_RANGE like the seeded inputs, so a quantized copy's input range does not clip
    them), or why none.

    Raises:
        OnnxCollideError: the model's weights cannot be read.
    """
    from onnxcollide.collide.search import find_collisions

    settings = SearchSettings(count=count, seed=seed, rule=rule, valid_range=INPUT_RANGE)
    try:
        found = find_collisions(reference, feeds, settings)
    except UnsupportedModelError as exc:
        reason = OnnxCollideError(exc.what, exc.where).one_line()
        return TransferSource(False, None, 0, reason, None), None
    if not found.exact or not found.collisions:
        return TransferSource(False, found.input_name, 0, f"no exact colliding input: "
                              f"{found.method}", found.exactness), None
    norms = tuple(float(np.linalg.norm(c.delta)) for c in found.collisions)
    return TransferSource(True, found.input_name, len(found.collisions), found.method,
                          found.exactness, norms), found


def output_of(path: str, label: str) -> str | None:
    """The first output tensor of the main-graph node labelled ``label``, or None.

    For ConvInteger/MatMulInteger (dynamic quantization) it is the dequantized output, after
    the Cast and Mul by the scales that follow: the integer output is in units of an input
    scale computed from each input itself, so two inputs' integer outputs do not compare.
    """
    nodes = load_model(path).proto.graph.node
    node = next((n for n in nodes if node_label(n, "main") == label and n.output), None)
    if node is None:
        return None
    output = str(node.output[0])
    if node.op_type not in ("ConvInteger", "MatMulInteger"):
        return output
    for _ in range(2):  # Cast, then Mul
        readers = [n for n in nodes if output in n.input]
        if len(readers) != 1 or readers[0].op_type not in ("Cast", "Mul"):
            break
        output = str(readers[0].output[0])
        if readers[0].op_type == "Mul":
            break
    return output


def transfer_to(runners: Runners, reference: str, path: str, found: CollisionSet,
                seed: int, w1_label: str | None, quantized: bool = False) -> TransferCheck:
    """Run the reference's colliding inputs (mapped) through ``path`` and measure the residual
    at ``w1_label``, the node aligned with the reference's W1 (found by the alignment, not by
    tracing the input: a dynamically quantized copy reaches its W1 through
    DynamicQuantizeLinear, which no collision path crosses). With ``quantized`` (the model
    has quantized weights), a W1 residual within TRANSFER_RATIO of the random one's is
    INCONCLUSIVE, not FAIL: quantization noise then hides the collision, and the weights'
    relation is what tells whether W1 is the reference's."""
    if w1_label is None:
        return _not_checked(None, "the reference's W1 has no partner in this model")
    w1 = output_of(path, w1_label)
    if w1 is None:
        return _not_checked(None, f"W1's partner {w1_label} is not in the main graph")
    maps = map_inputs(found.feeds, runners.get(reference).inputs, runners.get(path).inputs,
                      path)  # inputs that cannot be mapped are a usage error (exit 2)
    base = apply_maps(found.feeds, maps)
    try:
        runner = runners.get(path, (w1,))
        tolerances = Tolerances.for_run(runner, w1)
        checks = []
        for collision in found.collisions:
            moved = dict(found.feeds)
            moved[found.input_name] = collision.value
            checks.append(validation_dict(validate_pair(
                runner, base, apply_maps(moved, maps), w1, seed, tolerances)))
    except OnnxCollideError as exc:  # e.g. a perturbation lost in the copy's input type
        return _not_checked(w1, exc.one_line())
    return _summary(w1, checks, quantized)


def _not_checked(w1: str | None, reason: str) -> TransferCheck:
    return TransferCheck(w1, (), None, None, None, None, "NOT CHECKED", reason)


def _summary(w1: str, checks: list[dict[str, Any]], quantized: bool) -> TransferCheck:
    residuals = [c["collision"]["layer_residual"] for c in checks]
    baselines = [c["baseline"]["layer_residual"] for c in checks]
    ratios = [r["ratio"] for c in checks for r in c["ratios"] if r["figure"] == "layer_residual"]
    outputs = [o["max_rel"] for c in checks for o in c["collision"]["outputs"]]
    residual = max((r for r in residuals if r is not None), default=None)
    ratio = min((r for r in ratios if r is not None), default=None)
    if all(c["passed"] for c in checks):
        verdict = "PASS"
    elif any(c["baseline"]["passed"] for c in checks):
        verdict = "INCONCLUSIVE"
    elif all(r["ratio"] is None or r["ratio"] >= TRANSFER_RATIO
             for c in checks for r in c["ratios"] if r["figure"] == "layer_residual"):
        verdict = "APPROXIMATE"
    else:
        verdict = "INCONCLUSIVE" if quantized else "FAIL"
    reason = ("quantization noise is as large as a random perturbation's effect at W1"
              if verdict == "INCONCLUSIVE" and quantized else "")
    return TransferCheck(
        w1, tuple(checks), residual, min((b for b in baselines if b is not None), default=None),
        ratio, max((o for o in outputs if o is not None), default=None), verdict, reason)
