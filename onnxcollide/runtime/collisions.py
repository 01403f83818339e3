"""Validate colliding inputs in ONNX Runtime: the one place `collide` and `audit --validate`
(``check_w1``: one seeded collision check of W1) share, so both treat float64 and the random
baseline the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from onnxcollide.collide.inputs import ImageOptions, load_inputs
from onnxcollide.collide.results import CollisionSet, SearchSettings
from onnxcollide.collide.search import find_collisions
from onnxcollide.errors import OnnxCollideError
from onnxcollide.graph.load import load_model
from onnxcollide.linalg.spectral import ToleranceRule
from onnxcollide.runtime.session import ModelRunner
from onnxcollide.runtime.validate import Tolerances, validate_pair, validation_dict, verdict_word

StepCallback = Callable[[int, int], None]  # (inputs validated, of how many)


def validate_collisions(found: CollisionSet, device: str, precision: str, seed: int,
                        progress: StepCallback | None = None
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the original and every colliding input; return one validation dict per collision
    (see runtime.validation_dict) and the runtime facts (device, providers, tolerances).

    With ``precision="float64"`` the float64 model copy is fed the float64 perturbation before
    it was rounded to the input dtype (``exact_delta``), which separates the math from float32
    rounding (the paper's Section 6). ``progress(done, total)`` is told after each input.

    Raises:
        UsageError / UnsupportedModelError: the device cannot be used or the model not run.
    """
    x = found.feeds[found.input_name]
    moved = [float64_value(x, c.exact_delta) if precision == "float64" else c.value
             for c in found.collisions]
    return validate_moved(found.model, found.feeds, found.input_name, moved, found.w1_output,
                          device, precision, seed, progress)


def float64_value(x: np.ndarray, exact_delta: np.ndarray) -> np.ndarray:
    """The colliding input a float64 run proves: ``x + exact_delta`` in float64, before any
    rounding to the input's dtype (what ``collide --precision float64`` saves)."""
    return np.asarray(x, np.float64) + exact_delta


def validate_moved(model: str, feeds: dict[str, np.ndarray], input_name: str,
                   moved: Sequence[np.ndarray], layer: str | None, device: str,
                   precision: str, seed: int, progress: StepCallback | None = None
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Validate ``feeds`` against ``feeds`` with ``input_name`` replaced by each of ``moved``
    (a colliding input, same shape); one validation dict each and the runtime facts.

    Raises:
        UsageError / UnsupportedModelError: the device cannot be used or the model not run.
    """
    runner = ModelRunner(model, extra_outputs=[layer] if layer else [], device=device,
                         precision=precision)
    tolerances = Tolerances.for_run(runner, layer)
    base = dict(feeds)
    if precision == "float64":
        base = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in base.items()}
    results = []
    for number, value in enumerate(moved):
        pair = {**base, input_name: value}
        results.append(validation_dict(validate_pair(runner, base, pair, layer, seed,
                                                     tolerances)))
        if progress is not None:
            progress(number + 1, len(moved))
    runtime = {"device": runner.device.used, "requested": device, "precision": precision,
               "computed_in": runner.computed_in, "engine": runner.engine,
               "providers": list(runner.providers),
               "notice": runner.device.notice,
               "tolerances": {"layer_rtol": tolerances.layer_rtol,
                              "output_rtol": tolerances.output_rtol}}
    return results, runtime


def check_w1(path: str, shapes: dict[str, tuple[int, ...]], seed: int, device: str,
             precision: str, rule: ToleranceRule | None = None,
             on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make one colliding input for a seeded random input and validate it.

    Returns a JSON-ready dict with a one-line ``verdict`` and, where the search applies, the
    collision's figures (``validation``) or the conv-operator facts (``operator``). Reasons the
    search does not apply (token ids, a dynamic input size, an injective W1) become the
    verdict instead of an error, so the audit itself still succeeds.
    """
    settings = SearchSettings(count=1, seed=seed, rule=rule or ToleranceRule())
    try:
        feeds = load_inputs(load_model(path), {}, shapes, seed, ImageOptions())
        found = find_collisions(path, feeds, settings, on_phase)
    except OnnxCollideError as exc:
        # Without the hint: it may name a collide option (--input) that audit does not have.
        reason = OnnxCollideError(exc.what, exc.where).one_line()
        return {"verdict": f"not checked: {reason}", "seed": seed, "input_shapes": None,
                "class": None, "method": None, "exact": None, "operator": None,
                "validation": None}
    result: dict[str, Any] = {
        "verdict": "", "seed": seed,
        "input_shapes": {k: list(v.shape) for k, v in feeds.items()},
        "class": found.exactness, "method": found.method, "exact": found.exact,
        "operator": found.operator, "validation": None,
    }
    if not found.collisions:
        result["verdict"] = found.method
        return result
    try:
        checks, _ = validate_collisions(found, device, precision, seed)
    except OnnxCollideError as exc:
        result["verdict"] = f"not validated: {exc.one_line()}"
        return result
    check = checks[0]
    result["validation"] = check
    ratio = next((r["ratio"] for r in check["ratios"] if r["figure"] == "layer_residual"), None)
    shown = "inf" if ratio is None else f"{ratio:.3g}"
    residual = check["collision"]["layer_residual"] or 0.0
    baseline = check["baseline"]["layer_residual"] or 0.0
    result["verdict"] = (f"{verdict_word(check)}: W1 residual {residual:.3g} "
                         f"vs {baseline:.3g} for a random perturbation of equal norm (ratio "
                         f"{shown})")
    return result
