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

from onnxcollide.collide.results import Collision, CollisionSet
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


def _collision_row(found: CollisionSet, collision: Collision, x_norm: float,
                   validation: dict[str, Any] | None) -> dict[str, Any]:
    """One colliding input's figures: its scale, the perturbation's size against the input,
    whether it is exact (the set exact and its direction in the kernel), and its validation."""
    delta = collision.delta
    size = int(delta.size)
    norm = float(np.linalg.norm(delta))
    row: dict[str, Any] = {
        "index": collision.index, "beta": collision.beta, "beta_min": collision.beta_min,
        "requested_beta": collision.requested_beta, "basis": collision.basis,
        "exact": found.exact and not collision.approximate,
        "relative_singular_value": collision.relative_sigma,
        "delta_l2": norm,
        "delta_linf": float(np.abs(delta).max()) if size else 0.0,
        "delta_relative": norm / x_norm if x_norm > 0 else None,
        "delta_rms": norm / math.sqrt(size) if size else 0.0,
        "elements": size,
        "changed_elements": int(np.count_nonzero(delta)),
        "baseline_over_limit": _baseline_over_limit(validation),
        "validation": validation,
    }
    return row


def _baseline_over_limit(validation: dict[str, Any] | None) -> float | None:
    """The random baseline's W1 residual as a multiple of the W1 limit (how far a random
    perturbation of the same norm is from passing; near 1, the pair shows little)."""
    if not validation or validation["baseline"]["layer_residual"] is None:
        return None
    return float(validation["baseline"]["layer_residual"]) / \
        float(validation["tolerances"]["layer_rtol"])


def collide_dict(found: CollisionSet, validations: Sequence[dict[str, Any] | None],
                 runtime: dict[str, Any] | None, files: dict[str, str],
                 inputs: dict[str, dict[str, Any]] | None = None,
                 rendering: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole collide report as plain data; ``inputs`` (how each model input was made)
    goes into the settings, ``rendering`` (how each picture was drawn) beside ``files``."""
    x = found.feeds.get(found.input_name) if found.feeds else None
    x_norm = float(np.linalg.norm(np.asarray(x, np.float64))) if x is not None else 0.0
    rows = [_collision_row(found, collision, x_norm, validation)
            for collision, validation in zip(found.collisions, validations, strict=True)]
    tol, tol_digits = resolved(found.tol, found.tol_error)
    return _clean({
        "schema": "onnxcollide.collide", "schema_version": COLLIDE_SCHEMA_VERSION,
        "tool": versions(), "model": found.model, "input": found.input_name,
        "input_shape": list(x.shape) if x is not None else None,
        "settings": settings_dict(found, inputs), "runtime": runtime,
        "w1": {"node": found.w1_node, "output": found.w1_output, "class": found.exactness,
               "method": found.method, "exact": found.exact, "units": found.units,
               "kernel_dims": list(found.kernel_dims), "tol": tol, "tol_digits": tol_digits,
               "operator": found.operator},
        "collisions": rows, "notes": list(found.notes), "files": files,
        "rendering": rendering or {},
    })


def render_json(report: dict[str, Any]) -> str:
    """JSON text of a collide report."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def _trimmed(text: str) -> str:
    """Text without trailing spaces (rich pads a table's title to the table's width)."""
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def _say(console: Console, text: str) -> None:
    """One line of text as it is: never read as markup, never wrapped (a sentence stays whole
    on one line in a file or a pipe)."""
    console.print(text, markup=False, soft_wrap=True)


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
    """A readable summary: W1, how directions were made, one row per colliding input (each
    labelled exact or approximate), notes, and the files written."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system="auto" if color else None,
                      force_terminal=color, highlight=False)
    w1 = report["w1"]
    _say(console, f"W1: {w1['node']} ({w1['class']}); {w1['method']}")
    if report.get("runtime"):
        rt = report["runtime"]
        _say(console, _runtime_line(rt["device"], rt["providers"], _precision(rt), rt["engine"],
                                    rt["tolerances"]["layer_rtol"],
                                    rt["tolerances"]["output_rtol"]))
    if report["collisions"]:
        console.print(collisions_table(report["collisions"],
                                       f"{len(report['collisions'])} colliding input(s) for "
                                       f"'{report['input']}'"))
    for line in approximate_notes(report["collisions"]):
        _say(console, f"note: {line}")
    for note in report["notes"]:
        _say(console, f"note: {note}")
    for kind, path in report["files"].items():
        _say(console, f"wrote {kind}: {path}")
    return _trimmed(buffer.getvalue())


def collisions_table(rows: Sequence[dict[str, Any]], title: str) -> Table:
    """One row per colliding input: exact or approximate, its size, W1's residual and the
    outputs' against a random perturbation of the same norm, the verdict."""
    table = Table(title=Text(title), title_justify="left")  # a name, not markup
    for header in ("#", "kind", "beta", "|d|_2", "|d|/|x|", "W1 residual", "output max|diff|",
                   "argmax agrees", "random W1 residual", "ratio", "verdict"):
        table.add_column(header, justify="left" if header in ("kind", "verdict") else "right")
    for row in rows:
        v = row["validation"] or {}
        hit, base = v.get("collision") or {}, v.get("baseline") or {}
        first = (hit.get("outputs") or [{}])[0]
        layer_ratio = next((r["ratio"] for r in v.get("ratios") or []
                            if r["figure"] == "layer_residual"), None)
        table.add_row(str(row["index"]), "exact" if row["exact"] else "approx.",
                      _fmt(row["beta"]), _fmt(row["delta_l2"]), _fmt(row["delta_relative"]),
                      _fmt(hit.get("layer_residual")), _fmt(first.get("max_abs")),
                      _percent(first.get("argmax_agree")), _fmt(base.get("layer_residual")),
                      _fmt(layer_ratio), verdict_word(v) if v else "-")
    return table


def approximate_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """For each approximate colliding input: its relative singular value, how large its
    perturbation is against the input, and how far the random baseline is from the limit (a
    PASS of a tiny perturbation shows little)."""
    lines = []
    for row in rows:
        if row["exact"]:
            continue
        parts = [f"colliding input {row['index']} is approximate"]
        if row.get("relative_singular_value") is not None:
            parts[0] += f" (relative singular value {_fmt(row['relative_singular_value'])})"
        size = f"|d|_2 = {_fmt(row['delta_l2'])}"
        if row.get("delta_relative") is not None:
            size += f", {_fmt(row['delta_relative'])} of |x|_2"
        size += (f"; RMS {_fmt(row['delta_rms'])} per element over {row['elements']:,} "
                 "elements")
        parts.append(size)
        if row.get("baseline_over_limit") is not None:
            parts.append(f"a random perturbation of the same norm moves W1 by "
                         f"{_fmt(row['baseline_over_limit'])}x the limit")
        lines.append("; ".join(parts))
    return lines


def _runtime_line(device: str, providers: list[str], precision: str, engine: str,
                  layer_rtol: float, output_rtol: float) -> str:
    """``validated on cpu (CPUExecutionProvider), float32, engine onnxruntime; tolerances...``
    (no empty parentheses where the reference evaluator ran)."""
    where = f"{device} ({', '.join(providers)})" if providers else device
    return (f"validated on {where}, {precision}, engine {engine}; tolerances: W1 residual <= "
            f"{layer_rtol:g}, outputs max rel <= {output_rtol:g}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render_validation_table(data: dict[str, Any], width: int = 120) -> str:
    """The result of `onnxcollide validate` on one pair: the verdict, where it ran, and a short
    table of each figure for the pair against a random perturbation of the same norm."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    verdict = verdict_word(data)
    layer = data["layer"] or "-"
    _say(console, f"{verdict}: the inputs {'collide' if data['passed'] else 'do not collide'} "
                  f"(perturbed: {', '.join(data['perturbed_inputs'])}; |B - A|_2 = "
                  f"{_fmt(data['perturbation_norm'])})")
    _say(console, _runtime_line(data["device"]["used"], data["device"]["providers"],
                                _precision(data), data["engine"],
                                data["tolerances"]["layer_rtol"],
                                data["tolerances"]["output_rtol"]))
    table = Table(show_header=True)
    for header in ("figure", "A vs B", "A vs random, same norm", "ratio"):
        table.add_column(header, justify="left" if header == "figure" else "right")
    ratios = {(r["figure"], r["name"]): r["ratio"] for r in data["ratios"]}
    hit, base = data["collision"], data["baseline"]
    if data["layer"]:
        table.add_row(f"W1 residual ({layer})", _fmt(hit["layer_residual"]),
                      _fmt(base["layer_residual"]),
                      _fmt(ratios.get(("layer_residual", data["layer"]))))
    for mine, theirs in zip(hit["outputs"], base["outputs"], strict=True):
        name = mine["name"]
        table.add_row(f"{name}: max |diff|", _fmt(mine["max_abs"]), _fmt(theirs["max_abs"]),
                      _fmt(ratios.get(("max_abs", name))))
        table.add_row(f"{name}: max rel diff", _fmt(mine["max_rel"]), _fmt(theirs["max_rel"]),
                      "")
        if mine["argmax_agree"] is not None:
            table.add_row(f"{name}: argmax agrees", _percent(mine["argmax_agree"]),
                          _percent(theirs["argmax_agree"]), "")
    console.print(table)
    for notice in data["notices"]:
        _say(console, f"note: {notice}")
    return _trimmed(buffer.getvalue())


def render_saved_validations(data: dict[str, Any], width: int = 120) -> str:
    """`onnxcollide validate MODEL collisions.npz`: where it ran, one row per colliding input
    (as in collide's table), the notes."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    rt = data["runtime"]
    checks = data["validations"]
    passed = sum(1 for v in checks if v["passed"])
    _say(console, f"{data['source']['path']}: {passed} of {len(checks)} colliding input(s) "
                  f"for '{data['input']}' pass")
    console.print(_runtime_line(rt["device"], rt["providers"], _precision(rt), rt["engine"],
                                rt["tolerances"]["layer_rtol"], rt["tolerances"]["output_rtol"]),
                  markup=False, soft_wrap=True)
    table = Table(show_header=True)
    for header in ("#", "|B - A|_2", "W1 residual", "output max|diff|", "argmax agrees",
                   "random W1 residual", "ratio", "verdict"):
        table.add_column(header, justify="left" if header == "verdict" else "right")
    for index, v in enumerate(checks):
        hit, base = v["collision"], v["baseline"]
        first = (hit["outputs"] or [{}])[0]
        ratio = next((r["ratio"] for r in v["ratios"] if r["figure"] == "layer_residual"), None)
        table.add_row(str(index), _fmt(v["perturbation_norm"]), _fmt(hit["layer_residual"]),
                      _fmt(first.get("max_abs")), _percent(first.get("argmax_agree")),
                      _fmt(base["layer_residual"]), _fmt(ratio), verdict_word(v))
    console.print(table)
    for notice in dict.fromkeys(n for v in checks for n in v["notices"]):
        _say(console, f"note: {notice}")
    return _trimmed(buffer.getvalue())
