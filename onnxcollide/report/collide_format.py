"""Reports of `onnxcollide collide` / `validate`: JSON (every figure and setting) and a table."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxcollide.collide.results import CollisionSet
from onnxcollide.linalg.spectral import resolved
from onnxcollide.report.json_format import versions
from onnxcollide.runtime.validate import verdict_word

COLLIDE_SCHEMA_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe copy: tuples -> lists, numpy scalars -> Python, inf/nan -> None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def settings_dict(found: CollisionSet, inputs: dict[str, dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The search settings as plain data, with how each model input was made (``inputs``:
    the records of ``inputs.read_inputs``) where given."""
    data = asdict(found.settings)
    if inputs is not None:
        data["inputs"] = inputs
    data["rule"] = found.settings.rule.describe()
    data["rtol"], data["atol"] = found.settings.rule.rtol, found.settings.rule.atol
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def collide_dict(found: CollisionSet, validations: Sequence[dict[str, Any] | None],
                 runtime: dict[str, Any] | None, files: dict[str, str],
                 inputs: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The whole collide report as plain data; ``inputs`` (how each model input was made)
    goes into the settings."""
    rows = []
    for collision, validation in zip(found.collisions, validations, strict=True):
        rows.append({
            "index": collision.index, "beta": collision.beta, "beta_min": collision.beta_min,
            "requested_beta": collision.requested_beta, "basis": collision.basis,
            "delta_l2": float(np.linalg.norm(collision.delta)),
            "delta_linf": float(np.abs(collision.delta).max()) if collision.delta.size else 0.0,
            "changed_elements": int(np.count_nonzero(collision.delta)),
            "validation": validation,
        })
    tol, tol_digits = resolved(found.tol, found.tol_error)
    return _clean({
        "schema": "onnxcollide.collide", "schema_version": COLLIDE_SCHEMA_VERSION,
        "tool": versions(), "model": found.model, "input": found.input_name,
        "input_shape": list(found.feeds[found.input_name].shape) if found.feeds else None,
        "settings": settings_dict(found, inputs), "runtime": runtime,
        "w1": {"node": found.w1_node, "output": found.w1_output, "class": found.exactness,
               "method": found.method, "exact": found.exact, "units": found.units,
               "kernel_dims": list(found.kernel_dims), "tol": tol, "tol_digits": tol_digits,
               "operator": found.operator},
        "collisions": rows, "notes": list(found.notes), "files": files,
    })


def render_json(report: dict[str, Any]) -> str:
    """JSON text of a collide report."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _precision(runtime: dict[str, Any]) -> str:
    """``float32``, or ``float32 (as stored: computes in float16)`` for an fp16 model."""
    computed = runtime.get("computed_in", runtime["precision"])
    return runtime["precision"] + ("" if computed == runtime["precision"] else
                                   f" (as stored: computes in {computed})")


def render_table(report: dict[str, Any], width: int = 120, color: bool = False) -> str:
    """A readable summary: W1, how directions were made, one row per colliding input."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="auto" if color else None,
                      force_terminal=color, highlight=False)
    w1 = report["w1"]
    console.print(f"W1: {w1['node']} ({w1['class']}); {w1['method']}", markup=False)
    if report.get("runtime"):
        rt = report["runtime"]
        console.print(f"validated on {rt['device']} ({', '.join(rt['providers'])}), "
                      f"{_precision(rt)}, engine {rt['engine']}; tolerances: W1 residual <= "
                      f"{rt['tolerances']['layer_rtol']:g}, outputs max rel <= "
                      f"{rt['tolerances']['output_rtol']:g}", markup=False)
    table = Table(title=Text(f"{len(report['collisions'])} colliding input(s) for "
                             f"'{report['input']}'"), title_justify="left")  # a name, not markup
    for header in ("#", "beta", "|d|_2", "W1 residual", "output max|diff|", "argmax",
                   "random W1 residual", "ratio", "verdict"):
        table.add_column(header, justify="left" if header == "verdict" else "right")
    for row in report["collisions"]:
        v = row["validation"] or {}
        hit, base = v.get("collision") or {}, v.get("baseline") or {}
        first = (hit.get("outputs") or [{}])[0]
        layer_ratio = next((r["ratio"] for r in v.get("ratios") or []
                            if r["figure"] == "layer_residual"), None)
        verdict = verdict_word(v) if v else "-"
        table.add_row(str(row["index"]), _fmt(row["beta"]), _fmt(row["delta_l2"]),
                      _fmt(hit.get("layer_residual")), _fmt(first.get("max_abs")),
                      _fmt(first.get("argmax_agree")), _fmt(base.get("layer_residual")),
                      _fmt(layer_ratio), verdict)
    if report["collisions"]:
        console.print(table)
    for note in report["notes"]:
        console.print(f"note: {note}", markup=False)
    for kind, path in report["files"].items():
        console.print(f"wrote {kind}: {path}", markup=False)
    return buffer.getvalue()


def _flat(prefix: str, value: Any) -> list[tuple[str, str]]:
    """(dotted key, shown value) pairs: dicts by ``key.sub``, lists of dicts by ``key[i]``,
    lists of plain values joined by commas."""
    if isinstance(value, dict):
        return [pair for key, item in value.items()
                for pair in _flat(f"{prefix}.{key}" if prefix else str(key), item)]
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple))
                                                 for v in value):
        return [pair for k, item in enumerate(value) for pair in _flat(f"{prefix}[{k}]", item)]
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(_fmt(v) for v in value) if value else "-")]
    return [(prefix, _fmt(value))]


def render_validation_table(data: dict[str, Any]) -> str:
    """The result of `onnxcollide validate` as ``key: value`` lines, one per figure (nested
    values flattened to ``device.used``, ``collision.outputs[0].max_abs``), with the number
    format of the collide table."""
    return "".join(f"{key}: {shown}\n" for key, shown in _flat("", data))
