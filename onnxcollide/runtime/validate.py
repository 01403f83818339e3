"""Compare two runs of a model: the residual at W1, every output, a random baseline of equal norm.

PASS needs W1's relative residual and every output's max relative difference within the
tolerances of the type the run computes in, argmax agreement, and a random perturbation of
the same norm that does not meet them too (else the pair shows nothing: INCONCLUSIVE).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcollide.errors import UsageError
from onnxcollide.runtime.session import HALF_EPS, Arrays, ModelRunner

INCONCLUSIVE = ("inconclusive: a random perturbation of the same norm also meets the "
                "tolerances, so this pair shows nothing; use a larger perturbation")
TINY = float(np.finfo(np.float64).tiny)
TOP_K = 5


@dataclass(frozen=True)
class OutputComparison:
    """How far one output moved between two runs.

    Attributes:
        name: the output.
        max_abs: max |a - b| (inf when the shapes differ).
        max_rel: max_abs / max(max |a|, tiny).
        argmax_agree: fraction of rows with equal argmax (classifier-like outputs only),
            over the rows whose first output has one largest class (None where every row is
            an exact tie).
        top5_agree: fraction of rows with equal top-k sets, k = min(5, C) (same outputs).
    """

    name: str
    max_abs: float
    max_rel: float
    argmax_agree: float | None
    top5_agree: float | None


def _rows(values: np.ndarray) -> np.ndarray | None:
    """View a classifier-like output as [N, C] rows, else None.

    Classifier-like: float, and 2-D [N, C] with C >= 2 once every size-1 axis but the first is
    dropped ([N, C, 1, 1] and [1, C] count; [N, 1], [C] and [N, C, H, W] do not).
    """
    if values.dtype.kind != "f" or values.ndim < 2:
        return None
    kept = [values.shape[0]] + [n for n in values.shape[1:] if n != 1]
    if len(kept) != 2 or kept[1] < 2 or kept[0] < 1:
        return None
    return values.reshape(kept[0], kept[1])


def _labelled_rows(rows: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows of an (N, C) output whose largest value is at one class only. A row
    whose top is an exact tie (a constant output, a dead last layer) has no predicted class:
    its argmax is the tied class with the lowest index, which any rounding can move."""
    with np.errstate(invalid="ignore"):
        return np.count_nonzero(rows == rows.max(axis=1, keepdims=True), axis=1) == 1


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    rows_a, rows_b = _rows(a), _rows(b)
    if rows_a is None or rows_b is None or rows_a.shape != rows_b.shape:
        return None, None
    labelled = _labelled_rows(rows_a)
    argmax = float(np.mean(rows_a[labelled].argmax(axis=1) == rows_b[labelled].argmax(axis=1))) \
        if labelled.any() else None
    k = min(TOP_K, rows_a.shape[1])
    top_a = np.sort(np.argsort(-rows_a, axis=1, kind="stable")[:, :k], axis=1)
    top_b = np.sort(np.argsort(-rows_b, axis=1, kind="stable")[:, :k], axis=1)
    return argmax, float(np.mean(np.all(top_a == top_b, axis=1)))


def _compare(name: str, a: np.ndarray, b: np.ndarray) -> OutputComparison:
    """One output of two runs. An output that overflowed (inf - inf) or holds NaN compares as
    NaN, which no tolerance accepts; numpy's "invalid" flag for it is not a warning."""
    if a.shape != b.shape:
        return OutputComparison(name, math.inf, math.inf, None, None)
    with np.errstate(invalid="ignore"):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        max_abs = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
    scale = float(np.max(np.abs(a64))) if a.size else 0.0
    argmax, top5 = _agreement(a, b)
    with np.errstate(invalid="ignore"):  # inf / inf: NaN, as above
        max_rel = max_abs / max(scale, TINY)
    return OutputComparison(name, max_abs, max_rel, argmax, top5)


def compare_outputs(a: Arrays, b: Arrays,
                    names: Iterable[str] | None = None) -> tuple[OutputComparison, ...]:
    """Compare two runs output by output (numeric outputs only; others are skipped).

    Args:
        a: the reference run, name -> array.
        b: the other run, name -> array of the same shape.
        names: the outputs to compare, in report order (default: all of ``a``).

    Raises:
        UsageError: a name missing from either run.
    """
    result = []
    for name in (list(a) if names is None else names):
        if name not in a or name not in b:
            raise UsageError(f"output '{name}' is missing from one of the runs")
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.dtype.kind in "fiub" and y.dtype.kind in "fiub":
            result.append(_compare(name, x, y))
    return tuple(result)


@dataclass(frozen=True)
class Tolerances:
    """What a validated collision must meet.

    Attributes:
        layer_rtol: the largest relative residual ||L(B) - L(A)|| / ||L(A)|| at the layer.
        output_rtol: the largest max_rel of any model output.
    """

    layer_rtol: float = 1e-5
    output_rtol: float = 1e-4

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """Defaults by the type the run computes in: float32 1e-5 / 1e-4 (~100 eps32 /
        ~1000 eps32); float64 1e-12 / 1e-10; float16 and bfloat16 10 eps / 100 eps (their
        inputs alone are rounded to eps / 2, so the float32 multiples would admit anything).

        Raises:
            UsageError: an unknown precision.
        """
        if precision == "float32":
            return cls()
        if precision == "float64":
            return cls(layer_rtol=1e-12, output_rtol=1e-10)
        if precision in HALF_EPS:
            return cls(layer_rtol=10 * HALF_EPS[precision], output_rtol=100 * HALF_EPS[precision])
        raise UsageError(f"unknown precision '{precision}'", "--precision",
                         "use float32 or float64")

    @classmethod
    def for_run(cls, runner: ModelRunner, layer: str | None) -> Tolerances:
        """The layer residual's tolerance by the type the layer computes in, the outputs' by
        the narrowest type of the run: a float32 first layer keeps 1e-5 in a model that
        computes in float16 further on."""
        outputs = cls.for_precision(runner.computed_in)
        if layer is None:
            return outputs
        return cls(layer_rtol=cls.for_precision(runner.type_of(layer)).layer_rtol,
                   output_rtol=outputs.output_rtol)


@dataclass(frozen=True)
class PerturbationFigures:
    """The figures of one perturbation of input A.

    Attributes:
        norm: its Frobenius norm over all perturbed inputs, as fed (after dtype casting).
        layer_residual: ||L(A + d) - L(A)||_2 / max(||L(A)||_2, tiny), None without a layer.
        outputs: every model output's comparison with A's run.
        passed: whether these figures meet the tolerances.
    """

    norm: float
    layer_residual: float | None
    outputs: tuple[OutputComparison, ...]
    passed: bool


@dataclass(frozen=True)
class Ratio:
    """What the collision buys over the random baseline for one figure.

    Attributes:
        figure: ``layer_residual`` or ``max_abs``.
        name: the layer or output it concerns.
        collision: the collision's figure.
        baseline: the random baseline's figure.
        ratio: baseline / collision; None when the collision's figure is exactly 0 (see
            ``exact_zero``) or either figure is not finite.
        exact_zero: the collision's figure is exactly 0.
    """

    figure: str
    name: str
    collision: float
    baseline: float
    ratio: float | None
    exact_zero: bool


@dataclass(frozen=True)
class PairValidation:
    """Inputs A and B (B = A + collision) run side by side, with a random baseline.

    Attributes:
        device: where it ran: ``cpu`` or ``cuda``.
        device_requested: the ``--device`` value.
        providers: ONNX Runtime's providers for the session (empty for the reference evaluator).
        precision: ``float32`` or ``float64``.
        engine: ``onnxruntime`` or ``onnx.reference``.
        seed: the seed of the random baseline.
        tolerances: what ``passed`` was decided on.
        layer: the linear op's output the residual is measured at, or None.
        perturbed_inputs: the inputs where A and B differ.
        perturbation_norm: ||B - A||_F over the perturbed inputs, as fed.
        layer_residual: the relative residual at the layer for B, None without a layer.
        outputs: every model output's comparison of B's run with A's.
        baseline: the same figures for A + a random perturbation of the same norm.
        ratios: baseline / collision for the layer residual and each output's max_abs.
        passed: whether B's figures meet the tolerances and the random baseline's do not
            (where both meet them, the perturbation is too small for the pair to show
            anything: a notice says so).
        notices: lines for the user (device fallback, reference evaluator, inconclusive).
        computed_in: the narrowest float type of the run (``ModelRunner.computed_in``).
        meets: whether B's figures meet the tolerances.
    """

    device: str
    device_requested: str
    providers: tuple[str, ...]
    precision: str
    engine: str
    seed: int
    tolerances: Tolerances
    layer: str | None
    perturbed_inputs: tuple[str, ...]
    perturbation_norm: float
    layer_residual: float | None
    outputs: tuple[OutputComparison, ...]
    baseline: PerturbationFigures
    ratios: tuple[Ratio, ...]
    passed: bool
    notices: tuple[str, ...]
    computed_in: str = "float32"
    meets: bool = True


def _perturbed_inputs(runner: ModelRunner, a: Arrays, b: Arrays) -> tuple[str, ...]:
    names = []
    for spec in runner.inputs:
        x, y = a[spec.name], b[spec.name]
        if x.shape != y.shape:
            raise UsageError(f"input '{spec.name}' has shape {list(x.shape)} in A and "
                             f"{list(y.shape)} in B", runner.path)
        if np.array_equal(x, y):
            continue
        if not spec.is_float:
            raise UsageError(f"input '{spec.name}' differs between A and B but is not a float "
                             "tensor", runner.path, "perturb float inputs only")
        names.append(spec.name)
    if not names:
        raise UsageError("inputs A and B are identical after casting to the model's dtypes",
                         runner.path, "the perturbation is zero or below the input precision")
    return tuple(names)


def _norm(a: Arrays, b: Arrays, names: Sequence[str]) -> float:
    squares = sum(float(np.sum((b[n].astype(np.float64) - a[n].astype(np.float64)) ** 2))
                  for n in names)
    return math.sqrt(squares)


def _random_feeds(a: Arrays, names: Sequence[str], norm: float,
                  seed: int) -> dict[str, np.ndarray]:
    """A + Gaussian noise on ``names`` (drawn in that order), scaled to Frobenius norm ``norm``."""
    rng = np.random.default_rng(seed)
    noise = {n: rng.standard_normal(a[n].shape) for n in names}
    scale = norm / max(math.sqrt(sum(float(np.sum(g * g)) for g in noise.values())), TINY)
    feeds = dict(a)
    for n in names:
        feeds[n] = (a[n].astype(np.float64) + scale * noise[n]).astype(a[n].dtype)
    return feeds


def _relative_residual(reference: np.ndarray, other: np.ndarray) -> float:
    """||other - reference|| / ||reference||; NaN where either overflowed (no tolerance
    accepts it), without numpy's "invalid" warning."""
    with np.errstate(invalid="ignore", over="ignore"):
        ref = reference.astype(np.float64)
        scale = max(float(np.linalg.norm(ref)), TINY)
        return float(np.linalg.norm(other.astype(np.float64) - ref)) / scale


def _meets(layer_residual: float | None, outputs: Sequence[OutputComparison],
           tolerances: Tolerances) -> bool:
    if layer_residual is not None and not layer_residual <= tolerances.layer_rtol:
        return False
    return all(out.max_rel <= tolerances.output_rtol
               and (out.argmax_agree is None or out.argmax_agree == 1.0) for out in outputs)


def _figures(runner: ModelRunner, base: Arrays, other: Arrays, layer: str | None, norm: float,
             tolerances: Tolerances) -> PerturbationFigures:
    residual = None if layer is None else _relative_residual(base[layer], other[layer])
    outputs = compare_outputs(base, other, runner.model_outputs)
    return PerturbationFigures(norm, residual, outputs, _meets(residual, outputs, tolerances))


def _ratio(figure: str, name: str, collision: float, baseline: float) -> Ratio:
    finite = math.isfinite(collision) and math.isfinite(baseline)
    value = baseline / collision if finite and collision != 0.0 else None
    return Ratio(figure, name, collision, baseline, value, collision == 0.0)


def _ratios(layer: str | None, collision: PerturbationFigures,
            baseline: PerturbationFigures) -> tuple[Ratio, ...]:
    ratios = []
    if layer is not None and collision.layer_residual is not None:
        assert baseline.layer_residual is not None
        ratios.append(_ratio("layer_residual", layer, collision.layer_residual,
                             baseline.layer_residual))
    for out, rnd in zip(collision.outputs, baseline.outputs, strict=True):
        ratios.append(_ratio("max_abs", out.name, out.max_abs, rnd.max_abs))
    return tuple(ratios)


def validate_pair(runner: ModelRunner, feeds_a: Arrays, feeds_b: Arrays,
                  layer_output: str | None = None, seed: int = 0,
                  tolerances: Tolerances | None = None) -> PairValidation:
    """Run A, B and a random baseline of B - A's norm; measure and decide.

    Args:
        runner: the model, with ``layer_output`` among its extra outputs.
        feeds_a: input name -> array for every input (the original).
        feeds_b: the same for the colliding input; the inputs that differ are the perturbed ones.
        layer_output: the first linear op's output for the layer residual, or None.
        seed: seeds ``np.random.default_rng`` for the baseline's Gaussian noise.
        tolerances: what B must meet (default: ``Tolerances.for_run(runner, layer_output)``).

    Raises:
        UsageError: A and B do not differ, differ in an integer input or in shape, or the layer
            is not an output of the runner.
    """
    tolerances = tolerances or Tolerances.for_run(runner, layer_output)
    if layer_output is not None and layer_output not in runner.output_names:
        raise UsageError(f"'{layer_output}' is not an output of the runner", runner.path,
                         "create the ModelRunner with extra_outputs=[the layer's output]")
    a, b = runner.prepare(feeds_a), runner.prepare(feeds_b)
    perturbed = _perturbed_inputs(runner, a, b)
    norm = _norm(a, b, perturbed)
    r = _random_feeds(a, perturbed, norm, seed)
    out_a = runner.run(a)
    collision = _figures(runner, out_a, runner.run(b), layer_output, norm, tolerances)
    baseline = _figures(runner, out_a, runner.run(r), layer_output, _norm(a, r, perturbed),
                        tolerances)
    notices = tuple(n for n in (runner.device.notice,) if n)
    if collision.passed and baseline.passed:
        notices += (INCONCLUSIVE,)
    return PairValidation(
        runner.device.used, runner.device.requested, runner.providers, runner.precision,
        runner.engine, seed, tolerances, layer_output, perturbed, norm,
        collision.layer_residual, collision.outputs, baseline,
        _ratios(layer_output, collision, baseline), collision.passed and not baseline.passed,
        notices, runner.computed_in, collision.passed)


def _num(value: float | None) -> float | None:
    """A JSON number: None for None, inf and nan."""
    return value if value is not None and math.isfinite(value) else None


def _output_dict(out: OutputComparison) -> dict[str, Any]:
    return {"name": out.name, "max_abs": _num(out.max_abs), "max_rel": _num(out.max_rel),
            "argmax_agree": _num(out.argmax_agree), "top5_agree": _num(out.top5_agree)}


def validation_dict(v: PairValidation) -> dict[str, Any]:
    """A JSON-ready dict of ``v`` (no inf or nan: those become null), keys in a fixed order."""
    return {
        "passed": v.passed,
        "conclusive": not v.baseline.passed,
        "device": {"requested": v.device_requested, "used": v.device,
                   "providers": list(v.providers)},
        "precision": v.precision,
        "computed_in": v.computed_in,
        "engine": v.engine,
        "seed": v.seed,
        "tolerances": {"layer_rtol": v.tolerances.layer_rtol,
                       "output_rtol": v.tolerances.output_rtol},
        "layer": v.layer,
        "perturbed_inputs": list(v.perturbed_inputs),
        "perturbation_norm": _num(v.perturbation_norm),
        "collision": {"layer_residual": _num(v.layer_residual),
                      "outputs": [_output_dict(o) for o in v.outputs], "passed": v.meets},
        "baseline": {"norm": _num(v.baseline.norm),
                     "layer_residual": _num(v.baseline.layer_residual),
                     "outputs": [_output_dict(o) for o in v.baseline.outputs],
                     "passed": v.baseline.passed},
        "ratios": [{"figure": r.figure, "name": r.name, "collision": _num(r.collision),
                    "baseline": _num(r.baseline), "ratio": _num(r.ratio),
                    "exact_zero": r.exact_zero} for r in v.ratios],
        "notices": list(v.notices),
    }


def verdict_word(validation: dict[str, Any]) -> str:
    """PASS, FAIL or INCONCLUSIVE for one ``validation_dict``."""
    if validation["passed"]:
        return "PASS"
    return "FAIL" if validation["conclusive"] else "INCONCLUSIVE"
