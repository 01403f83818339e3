"""`audit --validate`: one seeded collision check of W1, proved in ONNX Runtime."""

from __future__ import annotations

from typing import Any

from onnxcollide.errors import OnnxCollideError
from onnxcollide.graph.load import load_model
from onnxcollide.inputs import ImageOptions, load_inputs
from onnxcollide.report.collide_format import verdict_word
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
    settings = SearchSettings(count=1, seed=seed, rule=rule or ToleranceRule())
    try:
        feeds = load_inputs(load_model(path), {}, shapes, seed, ImageOptions())
        found = find_collisions(path, feeds, settings)
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
    from onnxcollide.validation import validate_collisions

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
