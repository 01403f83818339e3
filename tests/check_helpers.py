"""Small models and runners for the `onnxcollide check` tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from builders import init, make_model, value
from onnx import helper

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "onnxcollide" / "schemas"
SARIF_SCHEMA = Path(__file__).resolve().parent / "schemas" / "sarif-2.1.0" / \
    "sarif-schema-2.1.0.json"


def mlp(path: Path, w1_rank: int = 8, w2_rank: int = 4, seed: int = 3) -> str:
    """x [1, 8] -> MatMul W1 (8 x 8, rank ``w1_rank``) -> Relu -> MatMul W2 (8 x 6, rank
    ``w2_rank``): W1 is dense, so nullity(W1) = 8 - w1_rank; initializers keep their names
    ('fc1.weight', 'fc2.weight') whatever the ranks, as a retrained model's do."""
    rng = np.random.default_rng(seed)

    def of_rank(q: int, p: int, r: int) -> np.ndarray:
        if r < min(q, p):  # small integers: the rank is exact in float32
            return (rng.integers(-2, 3, (q, r)) @ rng.integers(-2, 3, (r, p))).astype(np.float32)
        return (np.eye(q, p) * 2 + rng.integers(-1, 2, (q, p)) * 0.1).astype(np.float32)

    w1, w2 = of_rank(8, 8, w1_rank), of_rank(8, 6, w2_rank)
    return make_model(
        path,
        [helper.make_node("MatMul", ["x", "fc1.weight"], ["h"], name="fc1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2")],
        [value("x", [1, 8])], [value("y", [1, 6])],
        [init("fc1.weight", w1), init("fc2.weight", w2)])


def run_check(*args: str) -> Any:
    """`onnxcollide check ...` in-process (stdout and stderr apart)."""
    from click.testing import CliRunner

    from onnxcollide.cli.main import main

    return CliRunner().invoke(main, ["check", *args], catch_exceptions=False)


def validator(name: str) -> Any:
    """A validator of one of onnxcollide's report schemas (references between them
    resolved)."""
    import jsonschema
    from referencing import Registry, Resource

    schemas = [json.loads(p.read_text("utf-8")) for p in sorted(SCHEMAS.glob("*.json"))]
    registry = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in schemas])
    schema = json.loads((SCHEMAS / name).read_text("utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def sarif_errors(document: Any) -> list[str]:
    """Messages of every way ``document`` breaks the official SARIF 2.1.0 schema."""
    import jsonschema

    schema = json.loads(SARIF_SCHEMA.read_text("utf-8"))
    checker = jsonschema.Draft4Validator(
        schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in checker.iter_errors(document)]
