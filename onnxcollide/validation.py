"""Validate colliding inputs in ONNX Runtime: the one place `collide` and `audit --validate`
share, so both treat float64 and the random baseline the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

from onnxcollide.search import CollisionSet


def validate_collisions(found: CollisionSet, device: str, precision: str, seed: int
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the original and every colliding input; return one validation dict per collision
    (see runtime.validation_dict) and the runtime facts (device, providers, tolerances).

    With ``precision="float64"`` the float64 model copy is fed the float64 perturbation before
    it was rounded to the input dtype (``exact_delta``), which separates the math from float32
    rounding (the paper's Section 6).

    Raises:
        UsageError / UnsupportedModelError: the device cannot be used or the model not run.
    """
    from onnxcollide.runtime import ModelRunner, Tolerances, validate_pair, validation_dict

    runner = ModelRunner(found.model, extra_outputs=[found.w1_output], device=device,
                         precision=precision)
    tolerances = Tolerances.for_run(runner, found.w1_output)
    base = dict(found.feeds)
    if precision == "float64":
        base = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in base.items()}
    results = []
    for collision in found.collisions:
        moved = dict(base)
        moved[found.input_name] = (base[found.input_name] + collision.exact_delta
                                   if precision == "float64" else collision.value)
        check = validate_pair(runner, base, moved, found.w1_output, seed, tolerances)
        results.append(validation_dict(check))
    runtime = {"device": runner.device.used, "requested": device, "precision": precision,
               "computed_in": runner.computed_in, "engine": runner.engine,
               "providers": list(runner.providers),
               "notice": runner.device.notice,
               "tolerances": {"layer_rtol": tolerances.layer_rtol,
                              "output_rtol": tolerances.output_rtol}}
    return results, runtime
