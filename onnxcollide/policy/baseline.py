"""Baselines: earlier ``audit -f json`` or ``check -f json`` reports of the same models, which
model each is for, and how a model changed against its baseline (layers matched by weight
identity)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from onnxcollide.errors import UsageError
from onnxcollide.limits import read_within_limit
from onnxcollide.policy.config import CheckSettings
from onnxcollide.policy.facts import LayerFacts, ModelFacts, facts_of_record

AUDIT_SCHEMA_ID = "https://onnxcollide.dev/schemas/audit-report-v1.schema.json"
CHECK_SCHEMA_ID = "https://onnxcollide.dev/schemas/check-report-v1.schema.json"
SCHEMAS = {AUDIT_SCHEMA_ID: "audit", CHECK_SCHEMA_ID: "check"}
WORSE_IF_HIGHER = ("nu", "nu_ratio", "mu", "mu_ratio", "nullity_sum", "nullity_w1")
_HINT = "give an 'onnxcollide audit -f json' or 'onnxcollide check -f json' report"


@dataclass(frozen=True)
class Baseline:
    """One model's record in a baseline file.

    Attributes:
        file: the baseline file.
        key: where in it (``models[0]``).
        facts: the model's facts then.
        settings: the audit settings it was made with (conv_convention, rtol, atol).
    """

    file: str
    key: str
    facts: ModelFacts
    settings: Mapping[str, Any]

    @property
    def name(self) -> str:
        """The file name of the model the record is for."""
        return file_name(self.facts.path)


def file_name(path: str) -> str:
    """A path's last part (``/`` or ``\\`` separated)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def read_baseline(path: str) -> list[Baseline]:
    """Every model record of a baseline file.

    Raises:
        UsageError: the file is missing or unreadable, not JSON, of another schema or schema
            version, or a record lacks what the rules read (naming the file and key).
    """
    data = _load_json(path)
    if not isinstance(data, Mapping):
        raise UsageError("the baseline is not a JSON object", path, _HINT)
    kind = SCHEMAS.get(data.get("$schema"))  # type: ignore[arg-type]
    if kind is None:
        raise UsageError(f"the baseline's schema {data.get('$schema')!r} is not an onnxcollide "
                         "audit or check report", f"{path}, key '$schema'", _HINT)
    if data.get("schema_version") != 1:
        raise UsageError(f"schema version {data.get('schema_version')!r} is not one this "
                         "onnxcollide reads (1)", f"{path}, key 'schema_version'",
                         "write the baseline again with this version (--update-baseline)")
    settings = data.get("settings")
    models = data.get("models")
    if not isinstance(settings, Mapping):
        raise UsageError("is missing or not an object", f"{path}, key 'settings'", _HINT)
    if not isinstance(models, list):
        raise UsageError("is missing or not a list", f"{path}, key 'models'", _HINT)
    found = []
    for k, model in enumerate(models):
        record = model.get("audit") if kind == "check" and isinstance(model, Mapping) else model
        if kind == "check" and record is None:
            continue  # a model the check could not read
        if not isinstance(record, Mapping):
            raise UsageError("is not an object", f"{path}, key 'models[{k}]'", _HINT)
        key = f"models[{k}]" + (".audit" if kind == "check" else "")
        found.append(Baseline(path, key, facts_of_record(record, f"{path}, {key}"), settings))
    return found


def _load_json(path: str) -> Any:
    """The JSON of a baseline file.

    Raises:
        UsageError: the file is missing, a folder, unreadable, not UTF-8, or not JSON (nested
            too deep, or a number too large, included).
    """
    try:
        return json.loads(read_within_limit(path, "the baseline").decode("utf-8"))
    except FileNotFoundError:
        raise UsageError("the baseline does not exist", path,
                         "check the path, or write it with --update-baseline") from None
    except IsADirectoryError:
        raise UsageError("is a folder, not a baseline file", path,
                         "give the baseline's JSON file, or the folder as --baseline-dir") \
            from None
    except PermissionError:
        raise UsageError("cannot read the baseline (permission denied)", path,
                         "make it readable, or give another baseline") from None
    except OSError as exc:
        raise UsageError(f"cannot read the baseline ({exc.strerror or exc})", path) from None
    except UnicodeDecodeError:
        raise UsageError("the baseline is not UTF-8 text", path, _HINT) from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"the baseline is not JSON ({exc})", path, _HINT) from None
    except RecursionError:
        raise UsageError("the baseline is not valid JSON: nested too deep", path, _HINT) \
            from None
    except ValueError:  # an integer of more digits than Python converts
        raise UsageError("the baseline is not valid JSON: a number too large", path, _HINT) \
            from None


def check_settings(baseline: Baseline, settings: CheckSettings) -> None:
    """Refuse a baseline whose numbers were decided with other settings.

    Raises:
        UsageError: its conv convention, rtol or atol differs from ``settings``.
    """
    ours = {"conv_convention": settings.conv_convention, "rtol": settings.rtol,
            "atol": settings.atol}
    for key, value in ours.items():
        theirs = baseline.settings.get(key)
        if theirs != value:
            raise UsageError(f"was audited with {key} {theirs!r}, this check uses {value!r}: "
                             "the ranks are not comparable", f"{baseline.file}, key "
                             f"'settings.{key}'", "check with the baseline's settings "
                             "([settings] in the policy), or write a new baseline with "
                             "--update-baseline")


# ------------------------------------------------------------------ which model


def baseline_path(folder: str, model: str) -> str:
    """The baseline file of ``model`` in ``--baseline-dir`` ``folder``: the model's path
    relative to the current folder (its file name when it lies outside) plus ``.json``."""
    relative = os.path.relpath(os.path.abspath(model))
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        relative = os.path.basename(model)
    return os.path.join(folder, relative + ".json")


def _label_matches(label: str, model: str) -> bool:
    return label in (model, os.path.basename(model)) or \
        os.path.abspath(label) == os.path.abspath(model)


def split_spec(spec: str, models: Sequence[str]) -> tuple[str | None, str]:
    """``MODEL=FILE`` -> (the model, FILE) where MODEL names one of ``models`` (its path as
    given or its file name); else (None, the whole text).

    Raises:
        UsageError: MODEL names several models.
    """
    label, sep, file = spec.partition("=")
    if not sep:
        return None, spec
    named = [m for m in models if _label_matches(label, m)]
    if not named:
        if label.endswith(".onnx"):
            raise UsageError(f"'{label}' names none of the models checked", f"--baseline {spec}",
                             "write MODEL=FILE with a model's path or file name")
        return None, spec
    if len(named) > 1:
        raise UsageError(f"'{label}' names several models", f"--baseline {spec}",
                         "use the model's path as given")
    return named[0], file


def assign_baselines(models: Sequence[str], specs: Sequence[str], folder: str | None
                     ) -> dict[str, Baseline]:
    """The baseline of each model that has one.

    ``--baseline FILE`` records are matched to models by file name; ``--baseline MODEL=FILE``
    pairs explicitly (FILE's only record, or its record of that file name);
    ``--baseline-dir`` looks for ``baseline_path(folder, model)``.

    Raises:
        UsageError: an unreadable baseline, one that matches none of the models (a baseline of
            other models), two baselines for one model.
    """
    chosen: dict[str, Baseline] = {}

    def give(model: str, baseline: Baseline, option: str) -> None:
        if model in chosen and chosen[model] != baseline:
            raise UsageError(f"gives a second baseline for {model} (the first: "
                             f"{chosen[model].file})", option, "give one baseline per model")
        chosen[model] = baseline

    for spec in specs:
        model, file = split_spec(spec, models)
        records = read_baseline(file)
        if model is not None:
            give(model, _record_for(model, records, file), f"--baseline {spec}")
            continue
        matched = False
        for baseline in records:
            for candidate in models:
                if file_name(candidate) == baseline.name:
                    give(candidate, baseline, f"--baseline {spec}")
                    matched = True
        if not matched:
            names = ", ".join(sorted({b.name for b in records})) or "no model"
            raise UsageError(f"is a baseline of {names}, none of the models checked",
                             file, "pair it with MODEL=FILE if the model was renamed")
    if folder is not None:
        for model in models:
            path = baseline_path(folder, model)
            if model not in chosen and os.path.isfile(path):
                chosen[model] = _record_for(model, read_baseline(path), path)
    return chosen


def _record_for(model: str, records: list[Baseline], file: str) -> Baseline:
    if len(records) == 1:
        return records[0]
    named = [b for b in records if b.name == file_name(model)]
    if len(named) != 1:
        raise UsageError(f"holds {len(records)} models and {len(named)} named "
                         f"{file_name(model)}", file, "give a baseline of that model alone")
    return named[0]


# ------------------------------------------------------------------ how a model changed


@dataclass(frozen=True)
class LayerPair:
    """A layer and its baseline counterpart.

    Attributes:
        now: the layer in the model checked.
        before: the baseline's layer.
        matched_by: ``weight identity``, ``weight name`` or ``node name``.
    """

    now: LayerFacts
    before: LayerFacts
    matched_by: str


@dataclass(frozen=True)
class Comparison:
    """How a model changed against its baseline.

    Attributes:
        baseline: the baseline file and key (``base.json, models[0]``).
        pairs: layers found in both.
        new: layers the baseline does not have.
        removed: baseline layers the model no longer has.
        worse: Table 1 metrics that grew: (name, before, now).
    """

    baseline: str
    pairs: tuple[LayerPair, ...]
    new: tuple[LayerFacts, ...]
    removed: tuple[LayerFacts, ...]
    worse: tuple[tuple[str, float, float], ...]


def compare(now: ModelFacts, baseline: Baseline) -> Comparison:
    """Match the model's layers to the baseline's and list what changed.

    Layers are matched by weight identity (scope, initializers and the ops that make the
    weight), then, for those left, by weight name, then by first node name.

    Raises:
        UsageError: fewer than half of the model's weights match by identity or name (node
            names alone, such as an exporter's ``node_linear``, say little): the baseline is
            of another model.
    """
    before = baseline.facts
    left = list(before.layers)
    found: dict[int, LayerPair] = {}
    for how, key in _MATCH_KEYS:  # every layer by identity first, then the fallbacks
        for layer in now.layers:
            if layer.index in found:
                continue
            k = next((k for k, c in enumerate(left) if key(c) == key(layer)), None)
            if k is not None:
                found[layer.index] = LayerPair(layer, left.pop(k), how)
    pairs = [found[layer.index] for layer in now.layers if layer.index in found]
    unmatched = [layer for layer in now.layers if layer.index not in found]
    where = f"{baseline.file}, {baseline.key}"
    named = sum(p.matched_by != "node name" for p in pairs)
    if 2 * named < len(now.layers):
        raise UsageError(f"shares {named} of {len(now.layers)} weights with {now.path}: it is a "
                         "baseline of another model", where, "give the baseline of this model, "
                         "or write one with --update-baseline")
    worse = tuple((name, b, n) for name in WORSE_IF_HIGHER
                  if (b := before.metrics.value(name)) is not None
                  and (n := now.metrics.value(name)) is not None and n > b)
    return Comparison(where, tuple(pairs), tuple(unmatched), tuple(left), worse)


_MATCH_KEYS: tuple[tuple[str, Callable[[LayerFacts], tuple[str, ...]]], ...] = (
    ("weight identity", lambda x: x.identity),
    ("weight name", lambda x: (x.scope, x.weight)),
    ("node name", lambda x: (x.scope, x.nodes[0])),
)
