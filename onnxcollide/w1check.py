"""`audit --validate`: one seeded collision check of W1, proved in ONNX Runtime."""

from __future__ import annotations

from typing import Any

from onnxcollide.errors import OnnxCollideError
from onnxcollide.graph.load import load_model
from onnxcollide.inputs import ImageOptions, load_inputs
from onnxcollide.search import SearchSettings, find_collisions
from onnxcollide.spectral import ToleranceRule


def check_w1(path: str, shapes: dict[str, tuple[int, ...]], seed: int, device: str,
             precision: str, rule: ToleranceRule | None = None) -> dict[str, Any]:
    """Make one colliding input for a seeded random input and validate it.

    Returns a JSON-ready dict with a one-line ``verdict`` and, where the search applies, the
    collision's figures (``validation``) or the conv-operator facts (``operator``). Reasons the
    search does not apply (token ids, a dynamic input size, an injective W1) become the
    verdict instead of an error, so the audit itself still succeeds.
    """
    from onnxcollide.runtime import ModelRunner, Tolerances, validate_pair, validation_dict

    settings = SearchSettings(count=1, seed=seed, rule=rule or ToleranceRule())
    try:
        feeds = load_inputs(load_model(path), {}, shapes, seed, ImageOptions())
        found = find_collisions(path, feeds, settings)
    except OnnxCollideError as exc:
        return {"verdict": f"not checked: {exc.one_line()}", "seed": seed, "input_shapes": None,
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
    runner = ModelRunner(path, extra_outputs=[found.w1_output], device=device,
                         precision=precision)
    moved = dict(feeds)
    moved[found.input_name] = found.collisions[0].value
    check = validate_pair(runner, feeds, moved, found.w1_output, seed,
                          Tolerances.for_precision(precision))
    result["validation"] = validation_dict(check)
    ratio = next((r.ratio for r in check.ratios if r.figure == "layer_residual"), None)
    shown = "inf" if ratio is None else f"{ratio:.3g}"
    result["verdict"] = (f"{'PASS' if check.passed else 'FAIL'}: W1 residual "
                         f"{check.layer_residual or 0.0:.3g} vs "
                         f"{check.baseline.layer_residual or 0.0:.3g} for a random "
                         f"perturbation of equal norm (ratio {shown})")
    return result
