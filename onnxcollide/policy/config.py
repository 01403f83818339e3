"""The policy in effect: rules with their severities and bounds, allow-lists, the audit
settings, and where every value came from (a file, the built-in default, ``--fail-on``).

Policies are TOML, found the way ruff and pytest find theirs: ``--policy FILE``, else the
nearest folder, from the current one up, with a ``pyproject.toml`` holding
``[tool.onnxcollide]`` or an ``onnxcollide.toml`` (the pyproject table first in one folder),
else the built-in default. Unknown keys, wrong types and impossible bounds are usage errors
naming the file and the key.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from onnxcollide.errors import UsageError
from onnxcollide.limits import read_within_limit
from onnxcollide.policy.rules import BY_ID, CATALOGUE, LAYER, METRIC, SEVERITIES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_SOURCE = "default"
POLICY_FILE = "onnxcollide.toml"
PYPROJECT = "pyproject.toml"
CONV_CONVENTIONS = ("grouped", "paper")  # audit.layers.ConvConvention's values (a test checks)
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Provenance:
    """One value of the policy in effect and where it came from.

    Attributes:
        key: dotted key as in the TOML (``rules.nullity_w1.max``).
        value: the value (a string, number, list or None).
        source: ``default``, the file (``pyproject.toml [tool.onnxcollide]``) or the
            ``--fail-on`` option that set it.
    """

    key: str
    value: Any
    source: str


@dataclass(frozen=True)
class RuleSetting:
    """One rule as the policy sets it.

    Attributes:
        id: the id in reports: the catalogue id, or ``layer-nullity/N`` for the N-th layer rule.
        kind: the catalogue id (``layer-nullity`` for every layer rule).
        severity: ``error``, ``warning`` or ``off``.
        max: the bound of a metric or layer rule (the rule fails above it), else None.
        match: the glob of a layer rule, else None.
        source: where the severity came from.
    """

    id: str
    kind: str
    severity: str
    max: float | None = None
    match: str | None = None
    source: str = DEFAULT_SOURCE

    @property
    def enabled(self) -> bool:
        """True unless the severity is ``off``."""
        return self.severity != "off"

    def describe(self) -> str:
        """The rule in a few words, e.g. ``nullity_w1 > 0`` or ``layer-nullity/1 (*fc*) > 0``."""
        if self.match is not None:
            return f"{self.id} ({self.match}) > {_number_text(self.max)}"
        if self.max is not None:
            return f"{self.id} > {_number_text(self.max)}"
        return self.id


@dataclass(frozen=True)
class Allow:
    """An allow-list entry: findings it matches do not fail, and its reason is reported.

    Attributes:
        model: glob over the model's path as given, or its file name (None: every model).
        layer: glob over a layer's node names, weight name or initializers (None: findings
            about the whole model as well as every layer).
        rules: catalogue ids it applies to (empty: every rule but ``unreadable``).
        reason: why, in the policy author's words.
        source: the file it came from.
    """

    model: str | None
    layer: str | None
    rules: tuple[str, ...]
    reason: str
    source: str


@dataclass(frozen=True)
class CheckSettings:
    """The audit settings a policy fixes (they decide the numbers the rules read).

    Attributes:
        conv_convention: ``grouped`` or ``paper``.
        rtol, atol: the rank tolerance overrides (None: the default rule).
        seed: the seed of the ``w1-validated`` check's random input.
        device: its ONNX Runtime device (``auto``, ``cpu``, ``cuda``).
    """

    conv_convention: str = "grouped"
    rtol: float | None = None
    atol: float | None = None
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class Policy:
    """The policy in effect.

    Attributes:
        source: where it was read from (``default`` when no file was found).
        settings: the audit settings.
        rules: every rule, ``off`` ones included: the catalogue's order, then layer rules.
        allow: the allow-list.
        provenance: every value in effect with where it came from.
    """

    source: str
    settings: CheckSettings = field(default_factory=CheckSettings)
    rules: tuple[RuleSetting, ...] = ()
    allow: tuple[Allow, ...] = ()
    provenance: tuple[Provenance, ...] = ()

    def rule(self, rule_id: str) -> RuleSetting:
        """The rule with this id.

        Raises:
            KeyError: there is none.
        """
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    @property
    def enabled(self) -> tuple[RuleSetting, ...]:
        """The rules that are not ``off``."""
        return tuple(r for r in self.rules if r.enabled)

    def is_on(self, rule_id: str) -> bool:
        """Whether the rule with this catalogue id (any of them for layer rules) is on."""
        return any(r.kind == rule_id and r.enabled for r in self.rules)


def _number_text(value: float | None) -> str:
    """``0`` for 0, ``0.5`` for 0.5 (no ``0.0``)."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ------------------------------------------------------------------ defaults


DEFAULT_MAX = 0  # metric and layer rules fail above 0 unless the policy gives a bound


def default_policy() -> Policy:
    """The built-in policy: the catalogue's default severities, every bound 0."""
    rules = tuple(
        RuleSetting(r.id, r.id, r.severity, DEFAULT_MAX if r.kind == METRIC else None)
        for r in CATALOGUE if r.kind != LAYER)
    base = Policy(DEFAULT_SOURCE, CheckSettings(), rules, ())
    return _Reader(base, DEFAULT_SOURCE, DEFAULT_SOURCE).policy(DEFAULT_SOURCE)


# ------------------------------------------------------------------ parsing


class _Reader:
    """Reads one policy table into a Policy, recording where each value came from."""

    def __init__(self, base: Policy, file: str, label: str) -> None:
        self.file = file  # for error messages
        self.label = label  # for provenance
        self.settings = base.settings
        self.rules = {r.id: r for r in base.rules if r.kind != "layer-nullity"}
        self.layers = [r for r in base.rules if r.kind == "layer-nullity"]
        self.allow = list(base.allow)
        self.sources: dict[str, Provenance] = {p.key: p for p in base.provenance}

    def fail(self, key: str, what: str, hint: str = "") -> UsageError:
        """A usage error naming the file and the key."""
        return UsageError(what, f"{self.file}, key '{key}'" if key else self.file, hint)

    def record(self, key: str, value: Any) -> None:
        self.sources[key] = Provenance(key, value, self.label)

    # -------------------------------------------------------------- tables

    def read(self, table: Mapping[str, Any]) -> None:
        known = ("settings", "rules", "allow")
        for key, value in table.items():
            if key not in known:
                raise self.fail(key, "unknown key", f"a policy has the tables {', '.join(known)}"
                                " (see 'onnxcollide init-policy')")
            if key == "allow":
                self.read_allow(value)
            else:
                if not isinstance(value, Mapping):
                    raise self.fail(key, f"must be a table, not {_type_name(value)}",
                                    f"write [{key}] with its keys below it")
                (self.read_settings if key == "settings" else self.read_rules)(value)

    def read_settings(self, table: Mapping[str, Any]) -> None:
        values: dict[str, Any] = {}
        for key, value in table.items():
            full = f"settings.{key}"
            if key == "conv-convention":
                values["conv_convention"] = self.choice(full, value, CONV_CONVENTIONS)
            elif key == "rtol":
                values["rtol"] = self.number(full, value, positive=True)
            elif key == "atol":
                values["atol"] = self.number(full, value, positive=False)
            elif key == "seed":
                values["seed"] = self.integer(full, value, 0, MAX_SEED)
            elif key == "device":
                values["device"] = self.choice(full, value, DEVICES)
            else:
                raise self.fail(full, "unknown key", "[settings] has conv-convention, rtol, "
                                "atol, seed and device")
            self.record(full, value)
        self.settings = replace(self.settings, **values)

    def read_rules(self, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            full = f"rules.{key}"
            info = BY_ID.get(key)
            if info is None:
                raise self.fail(full, "unknown rule", "the rules are " + ", ".join(
                    r.id for r in CATALOGUE))
            if info.kind == LAYER:
                entries = [value] if isinstance(value, Mapping) else value
                if not isinstance(entries, list):
                    raise self.fail(full, f"must be tables, not {_type_name(value)}",
                                    "write [[rules.layer-nullity]] with match, max and "
                                    "severity")
                for number, entry in enumerate(entries, start=1):
                    self.read_layer_rule(f"{full}[{number}]", entry)
            elif info.id == "unreadable":
                raise self.fail(full, "cannot be set: an unreadable model always counts "
                                "(exit code 3 when no error rule failed)",
                                "remove the key")
            else:
                self.read_rule(full, info.id, value)

    def read_rule(self, full: str, rule_id: str, value: Any) -> None:
        rule = self.rules[rule_id]
        keys = ("severity", "max") if BY_ID[rule_id].kind == METRIC else ("severity",)
        if isinstance(value, str):
            value = {"severity": value}
        if not isinstance(value, Mapping):
            raise self.fail(full, f"must be a severity or a table, not {_type_name(value)}",
                            f"write {rule_id} = \"error\", or a table with "
                            f"{' and '.join(keys)}")
        for key, item in value.items():
            if key not in keys:
                raise self.fail(f"{full}.{key}", "unknown key",
                                f"rule {rule_id} takes {' and '.join(keys)}")
            if key == "severity":
                rule = replace(rule, severity=self.choice(f"{full}.{key}", item, SEVERITIES),
                               source=self.label)
            else:
                rule = replace(rule, max=self.bound(f"{full}.{key}", item,
                                                    BY_ID[rule_id].count))
            self.record(f"{full}.{key}", item)
        self.rules[rule_id] = rule

    def read_layer_rule(self, full: str, entry: Any) -> None:
        if not isinstance(entry, Mapping):
            raise self.fail(full, f"must be a table, not {_type_name(entry)}",
                            "write [[rules.layer-nullity]] with match, max and severity")
        unknown = [k for k in entry if k not in ("match", "max", "severity")]
        if unknown:
            raise self.fail(f"{full}.{unknown[0]}", "unknown key",
                            "a layer rule takes match, max and severity")
        if "match" not in entry:
            raise self.fail(full, "needs 'match', a glob over node, weight or initializer "
                            "names", "e.g. match = \"*fc*\"")
        match = self.text(f"{full}.match", entry["match"])
        bound = self.bound(f"{full}.max", entry.get("max", DEFAULT_MAX), True)
        severity = self.choice(f"{full}.severity", entry.get("severity", "error"), SEVERITIES)
        self.add_layer_rule(match, bound, severity)
        for key in ("match", "max", "severity"):
            if key in entry:
                self.record(f"{full}.{key}", entry[key])

    def add_layer_rule(self, match: str, bound: float, severity: str) -> None:
        number = len(self.layers) + 1
        self.layers.append(RuleSetting(f"layer-nullity/{number}", "layer-nullity", severity,
                                       bound, match, self.label))

    def read_allow(self, value: Any) -> None:
        entries = [value] if isinstance(value, Mapping) else value
        if not isinstance(entries, list):
            raise self.fail("allow", f"must be tables, not {_type_name(value)}",
                            "write [[allow]] with model or layer, and reason")
        for number, entry in enumerate(entries, start=1):
            full = f"allow[{number}]"
            if not isinstance(entry, Mapping):
                raise self.fail(full, f"must be a table, not {_type_name(entry)}",
                                "write [[allow]] with model or layer, and reason")
            unknown = [k for k in entry if k not in ("model", "layer", "rules", "reason")]
            if unknown:
                raise self.fail(f"{full}.{unknown[0]}", "unknown key",
                                "an allow entry takes model, layer, rules and reason")
            if "reason" not in entry:
                raise self.fail(full, "needs a 'reason'", "say why the finding is accepted: "
                                "it appears in every report")
            reason = self.text(f"{full}.reason", entry["reason"])
            if "model" not in entry and "layer" not in entry:
                raise self.fail(full, "needs 'model' or 'layer' (a glob)",
                                "e.g. model = \"legacy/*.onnx\" or layer = \"*patch*\"")
            model = self.text(f"{full}.model", entry["model"]) if "model" in entry else None
            layer = self.text(f"{full}.layer", entry["layer"]) if "layer" in entry else None
            rules = self.rule_list(f"{full}.rules", entry.get("rules", []))
            self.allow.append(Allow(model, layer, rules, reason, self.label))
            for key in ("model", "layer", "rules", "reason"):
                if key in entry:
                    self.record(f"{full}.{key}", entry[key])

    # -------------------------------------------------------------- values

    def choice(self, key: str, value: Any, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, f"is {_shown(value)}, not one of {', '.join(choices)}",
                            f"write one of {', '.join(repr(c) for c in choices)}")
        return value

    def text(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, not {_shown(value)}")
        return value

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {_shown(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"is {value}, outside {low}..{high}")
        return value

    def number(self, key: str, value: Any, positive: bool) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, not {_shown(value)}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            wanted = "positive" if positive else "non-negative"
            raise self.fail(key, f"is {value}, which is not a {wanted} finite number")
        return float(value)

    def bound(self, key: str, value: Any, count: bool) -> float:
        """A rule's bound: an integer >= 0 for a count; a number in [0, 1) for a ratio.

        Raises:
            UsageError: a wrong type, or a bound no model could exceed or every model does.
        """
        if count:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"must be an integer (the metric counts), not "
                                f"{_shown(value)}", "e.g. max = 0")
            if value < 0:
                raise self.fail(key, f"is {value}: a count is never negative, so every model "
                                "would fail", "give a bound of 0 or more")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise self.fail(key, f"must be a number in [0, 1), not {_shown(value)}",
                            self._ratio_example())
        if not 0 <= value < 1:
            raise self.fail(key, f"is {value}: a ratio lies in [0, 1], so the rule could "
                            "never fail" if value >= 1 else f"is {value}: a ratio is never "
                            "negative, so every model would fail",
                            f"give a bound in [0, 1): {self._ratio_example()}")
        return float(value)

    def _ratio_example(self) -> str:
        """How to write a ratio's bound where this reader's values come from: a policy file,
        or ``--fail-on`` on the command line (its reader's file is the option)."""
        if self.file.startswith("--fail-on"):
            return "e.g. --fail-on 'nu_ratio>0.5'"
        return 'e.g. max = 0.5, or severity = "off" to turn the rule off'

    def rule_list(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a list of rule names, not {_shown(value)}",
                            "e.g. rules = [\"w1-collision\"]")
        for name in value:
            if name not in BY_ID or name == "unreadable":
                raise self.fail(key, f"names the unknown rule '{name}'" if name not in BY_ID
                                else "cannot allow 'unreadable'", "the rules are " + ", ".join(
                                    r.id for r in CATALOGUE if r.id != "unreadable"))
        return tuple(value)

    def policy(self, source: str) -> Policy:
        rules = tuple(self.rules[r.id] for r in CATALOGUE if r.id in self.rules)
        sources = dict(self.sources)
        for rule in (*rules, *self.layers):  # defaults the file left alone
            sources.setdefault(_severity_key(rule), Provenance(_severity_key(rule),
                                                               rule.severity, DEFAULT_SOURCE))
            if rule.max is not None and rule.match is None:
                sources.setdefault(f"rules.{rule.id}.max",
                                   Provenance(f"rules.{rule.id}.max", rule.max, DEFAULT_SOURCE))
        settings = self.settings
        for name in ("conv_convention", "rtol", "atol", "seed", "device"):
            key = f"settings.{name.replace('_', '-')}"
            sources.setdefault(key, Provenance(key, getattr(settings, name), DEFAULT_SOURCE))
        return Policy(source, settings, (*rules, *self.layers), tuple(self.allow),
                      tuple(sources[k] for k in sorted(sources, key=_key_order)))


def _severity_key(rule: RuleSetting) -> str:
    if rule.match is not None:
        return f"rules.layer-nullity[{rule.id.rsplit('/', 1)[1]}].severity"
    return f"rules.{rule.id}.severity"


def _key_order(key: str) -> tuple[int, str]:
    """settings first, then rules, then allow entries."""
    return ({"settings": 0, "rules": 1, "allow": 2}.get(key.split(".")[0].split("[")[0], 3), key)


def _type_name(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if isinstance(value, (str, bool, int, float)):
        text = repr(value) if not isinstance(value, bool) else str(value).lower()
        return f"{_type_name(value)} {text}"
    return _type_name(value)


def parse_policy(table: Mapping[str, Any], file: str, label: str | None = None) -> Policy:
    """The policy a TOML table gives, on top of the built-in default.

    Args:
        table: the parsed TOML (the whole file, or pyproject's ``[tool.onnxcollide]``).
        file: the file, for error messages and as the policy's source.
        label: how reports name the source (default: ``file``).

    Raises:
        UsageError: an unknown key or rule, a value of the wrong type, an impossible bound.
    """
    reader = _Reader(default_policy(), file, label or file)
    reader.read(table)
    return reader.policy(label or file)


# ------------------------------------------------------------------ --fail-on


def add_fail_on(policy: Policy, texts: tuple[str, ...]) -> Policy:
    """``policy`` with the ``--fail-on`` rules: ``RULE``, ``RULE>BOUND`` (metrics) or
    ``layer-nullity:GLOB>BOUND``, each at severity ``error``.

    Raises:
        UsageError: an unknown rule, a bound that is not a number, an operator other than
            ``>``, a bound on a rule that takes none, an impossible bound.
    """
    if not texts:
        return policy
    reader = _Reader(policy, "--fail-on", "--fail-on")
    for text in texts:
        _apply_fail_on(reader, text)
    return reader.policy(policy.source)


def _apply_fail_on(reader: _Reader, text: str) -> None:
    reader.file = f"--fail-on '{text}'"  # errors quote it, as the shell needs
    reader.label = f"--fail-on {text}"  # provenance, as reports show it
    name, sep, bound_text = text.partition(">")
    glob = None
    if name.startswith("layer-nullity:"):
        name, glob = "layer-nullity", name[len("layer-nullity:"):]
    name = name.strip()
    if any(op in name for op in ("<", "=", "!")) or bound_text.startswith("="):
        raise UsageError(f"'{text}': a rule fails when its value is above the bound",
                         "--fail-on", "write 'RULE>BOUND' (quoted), e.g. --fail-on 'nullity_w1>0'")
    info = BY_ID.get(name)
    if info is None or info.id == "unreadable":
        raise UsageError(f"'{text}' names no rule", "--fail-on", "the rules are " + ", ".join(
            r.id for r in CATALOGUE if r.id != "unreadable"))
    if sep and info.kind not in (METRIC, LAYER):
        raise UsageError(f"'{text}': rule {name} takes no bound", "--fail-on",
                         f"write --fail-on {name}")
    bound = _fail_on_bound(reader, text, bound_text, info.count) if sep else None
    if info.kind == LAYER:
        if not glob:
            raise UsageError(f"'{text}' needs a glob", "--fail-on",
                             "write layer-nullity:GLOB>BOUND, e.g. 'layer-nullity:*fc*>0'")
        reader.add_layer_rule(glob, DEFAULT_MAX if bound is None else bound, "error")
        number = len(reader.layers)
        reader.record(f"rules.layer-nullity[{number}].match", glob)
        reader.record(f"rules.layer-nullity[{number}].max", reader.layers[-1].max)
        reader.record(f"rules.layer-nullity[{number}].severity", "error")
        return
    rule = replace(reader.rules[name], severity="error", source=reader.label)
    reader.record(f"rules.{name}.severity", "error")
    if bound is not None:
        rule = replace(rule, max=bound)
        reader.record(f"rules.{name}.max", bound)
    reader.rules[name] = rule


def _fail_on_bound(reader: _Reader, text: str, bound_text: str, count: bool) -> float:
    try:
        value: Any = int(bound_text) if count else float(bound_text)
    except ValueError:
        kind = "an integer" if count else "a number"
        raise UsageError(f"'{text}': the bound '{bound_text}' is not {kind}", "--fail-on",
                         "e.g. --fail-on 'nullity_w1>0'") from None
    return reader.bound("", value, count)


# ------------------------------------------------------------------ files


def read_toml(path: str, what: str = "the policy file") -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        UsageError: the file is missing, a folder, unreadable, not UTF-8, or not TOML (with
            the line TOML names; nested too deep included).
    """
    try:
        return tomllib.loads(read_within_limit(path, what, limited=False).decode("utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what} does not exist", path, "check the path") from None
    except IsADirectoryError:
        raise UsageError("is a folder", path, "give a TOML file") from None
    except PermissionError:
        raise UsageError(f"cannot read {what} (permission denied)", path,
                         "make it readable, or give another file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} ({exc.strerror or exc})", path) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"is not valid TOML ({exc})", path,
                         "fix the TOML syntax") from None
    except UnicodeDecodeError:
        raise UsageError("is not valid TOML (not UTF-8 text)", path,
                         "save it as UTF-8") from None
    except RecursionError:
        raise UsageError("is not valid TOML: nested too deep", path,
                         "a policy nests a few tables at most") from None
    except ValueError:  # an integer of more digits than Python converts
        raise UsageError("is not valid TOML: a number too large", path,
                         "give bounds as small numbers, e.g. max = 0") from None


def find_policy_file(start: str) -> tuple[str, bool] | None:
    """The policy file for a run in ``start``: (path, is a pyproject.toml) of the nearest
    folder, from ``start`` up, whose ``pyproject.toml`` holds ``[tool.onnxcollide]`` or that
    holds an ``onnxcollide.toml``; None when there is none.

    Raises:
        UsageError: a ``pyproject.toml`` on the way is not valid TOML.
    """
    folder = os.path.abspath(start)
    while True:
        pyproject = os.path.join(folder, PYPROJECT)
        if os.path.isfile(pyproject) and _has_our_table(read_toml(pyproject, "the file")):
            return pyproject, True
        own = os.path.join(folder, POLICY_FILE)
        if os.path.isfile(own):
            return own, False
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _has_our_table(data: Mapping[str, Any]) -> bool:
    tool = data.get("tool")
    return isinstance(tool, Mapping) and "onnxcollide" in tool


def load_policy(path: str | None, fail_on: tuple[str, ...] = (), start: str = ".") -> Policy:
    """The policy in effect: ``path`` (``--policy``), else the one found from ``start`` up,
    else the default; then the ``--fail-on`` rules.

    Raises:
        UsageError: a missing or invalid policy file (naming the file and key), a bad
            ``--fail-on``.
    """
    found = (path, os.path.basename(path) == PYPROJECT) if path is not None else \
        find_policy_file(start)
    if found is None:
        policy = default_policy()
    else:
        file, in_pyproject = found
        shown = os.path.relpath(file) if not os.path.isabs(file) or \
            file.startswith(os.path.abspath(".") + os.sep) else file
        data = read_toml(file)
        if in_pyproject:
            if not _has_our_table(data):
                raise UsageError("has no [tool.onnxcollide] table", file,
                                 "add one, or give --policy an onnxcollide.toml")
            table = data["tool"]["onnxcollide"]
            if not isinstance(table, Mapping):
                raise UsageError("key 'tool.onnxcollide' must be a table", file)
            policy = parse_policy(table, file, f"{shown} [tool.onnxcollide]")
        else:
            policy = parse_policy(data, file, shown)
    return add_fail_on(policy, fail_on)
