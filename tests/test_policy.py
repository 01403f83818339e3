"""policy: the policy file (defaults, discovery, errors naming file and key, --fail-on), the
rules over a model's facts, allow-lists, baselines matched by weight identity."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from builders import MLP, MODELS, PATCH
from check_helpers import mlp

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import audit_model
from onnxcollide.errors import UsageError
from onnxcollide.policy.baseline import compare, read_baseline
from onnxcollide.policy.config import (
    CONV_CONVENTIONS,
    add_fail_on,
    default_policy,
    find_policy_file,
    load_policy,
    parse_policy,
)
from onnxcollide.policy.evaluate import evaluate
from onnxcollide.policy.facts import facts_of_audit, facts_of_record
from onnxcollide.policy.rules import CATALOGUE
from onnxcollide.policy.starter import STARTER_POLICY
from onnxcollide.report.json_format import model_dict, report_dict

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


# ------------------------------------------------------------------ the policy file


def test_default_policy_turns_on_the_catalogue_defaults():
    """Without a file: w1-collision and the baseline rules are errors, unclear and skipped
    weights warnings, the other metrics off; every value's source is 'default'."""
    policy = default_policy()
    on = {r.id: r.severity for r in policy.enabled}
    assert on == {"w1-collision": "error", "unclear": "warning", "skipped_weights": "warning",
                  "baseline-rank": "error", "baseline-new-layer": "error",
                  "baseline-metrics": "warning", "baseline-missing": "warning",
                  "unreadable": "error"}
    assert {p.source for p in policy.provenance} == {"default"}
    assert [r.id for r in policy.rules[:len(CATALOGUE) - 1]] == \
        [r.id for r in CATALOGUE if r.id != "layer-nullity"]


def test_the_starter_policy_reads_as_the_default():
    """init-policy's file sets exactly the default values (comments aside)."""
    policy = parse_policy(tomllib.loads(STARTER_POLICY), "onnxcollide.toml")
    default = default_policy()
    assert policy.rules == tuple(replace(r, source="onnxcollide.toml") if r.id in
                                 [p.key.split(".")[1] for p in policy.provenance
                                  if p.source == "onnxcollide.toml" and "severity" in p.key]
                                 else r for r in default.rules)
    assert policy.settings == default.settings
    assert [(p.key, p.value) for p in policy.provenance] == \
        [(p.key, p.value) for p in default.provenance]


def _toml_blocks(page: Path) -> list[str]:
    """The ```toml blocks of a Markdown page, in order."""
    text = page.read_text("utf-8")
    return [part.split("```", 1)[0] for part in text.split("```toml\n")[1:]]


def test_the_default_policy_check_md_shows_is_the_default():
    """docs/check.md showed an active layer rule and allow entry as the default (init-policy
    writes both commented out) and left out six rules; its block now reads as the default,
    and the next one holds the two commented-out examples init-policy writes."""
    page = Path(__file__).resolve().parents[1] / "docs" / "check.md"
    shown, examples = _toml_blocks(page)[:2]
    policy, default = parse_policy(tomllib.loads(shown), "check.md"), default_policy()
    assert [(r.id, r.severity, r.max) for r in policy.rules] == \
        [(r.id, r.severity, r.max) for r in default.rules]
    assert policy.settings == default.settings and policy.allow == ()
    started = "\n".join(line.removeprefix("# ") for line in STARTER_POLICY.splitlines())
    for table in tomllib.loads(examples):
        assert f"[[{table}" in started


def test_conv_conventions_are_the_audits():
    assert set(CONV_CONVENTIONS) == {c.value for c in ConvConvention}


def test_a_policy_sets_rules_settings_layer_rules_and_allow_entries(tmp_path):
    """Every kind of key, with the file recorded as the source of each value it sets."""
    file = tmp_path / "onnxcollide.toml"
    file.write_text(
        '[settings]\nconv-convention = "paper"\nrtol = 1e-5\n'
        '[rules]\nnullity_w1 = { severity = "error", max = 3 }\nw1-collision = "off"\n'
        'nu_ratio = { severity = "warning", max = 0.5 }\n'
        '[[rules.layer-nullity]]\nmatch = "*fc2*"\nmax = 1\n'
        '[[allow]]\nmodel = "legacy/*.onnx"\nrules = ["nullity_w1"]\nreason = "reviewed"\n')
    policy = load_policy(str(file))
    assert policy.settings.conv_convention == "paper" and policy.settings.rtol == 1e-5
    assert policy.rule("nullity_w1").severity == "error" and policy.rule("nullity_w1").max == 3
    assert policy.rule("w1-collision").severity == "off"
    assert policy.rule("nu_ratio").max == 0.5
    layer = policy.rule("layer-nullity/1")
    assert (layer.match, layer.max, layer.severity) == ("*fc2*", 1, "error")
    assert policy.allow[0].reason == "reviewed" and policy.allow[0].rules == ("nullity_w1",)
    sources = {p.key: p.source for p in policy.provenance}
    assert sources["rules.nullity_w1.max"] == str(file)
    assert sources["settings.conv-convention"] == str(file)
    assert sources["rules.unclear.severity"] == "default"


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[rules]\nnullity_w2 = \"error\"\n", "rules.nullity_w2", "unknown rule"),
    ("[rulez]\n", "rulez", "unknown key"),
    ("[rules]\nnullity_w1 = { severity = \"error\", max = 0.5 }\n", "rules.nullity_w1.max",
     "must be an integer"),
    ("[rules]\nnullity_w1 = { severity = \"error\", max = -1 }\n", "rules.nullity_w1.max",
     "every model would fail"),
    ("[rules]\nmu_ratio = { max = 1.0 }\n", "rules.mu_ratio.max", "could never fail"),
    ("[rules]\nmu_ratio = { max = true }\n", "rules.mu_ratio.max", "must be a number"),
    ("[rules]\nw1-collision = \"fatal\"\n", "rules.w1-collision.severity",
     "not one of error, warning, off"),
    ("[rules]\nw1-collision = { max = 3 }\n", "rules.w1-collision.max", "unknown key"),
    ("[rules]\nunreadable = \"off\"\n", "rules.unreadable", "cannot be set"),
    ("[settings]\nrtol = 0\n", "settings.rtol", "not a positive finite number"),
    ("[settings]\nconv-convention = 3\n", "settings.conv-convention", "not one of"),
    ("[settings]\ntolerance = 3\n", "settings.tolerance", "unknown key"),
    ("[[rules.layer-nullity]]\nmax = 0\n", "rules.layer-nullity[1]", "needs 'match'"),
    ("[[allow]]\nmodel = \"x\"\n", "allow[1]", "needs a 'reason'"),
    ("[[allow]]\nreason = \"r\"\n", "allow[1]", "needs 'model' or 'layer'"),
    ("[[allow]]\nlayer = \"x\"\nreason = \"r\"\nrules = [\"nope\"]\n", "allow[1].rules",
     "unknown rule 'nope'"),
])
def test_bad_policies_name_the_file_and_key(tmp_path, text, key, words):
    """Unknown keys and rules, wrong types, impossible bounds: a usage error (exit 2) whose
    line names the file and the key."""
    file = tmp_path / "p.toml"
    file.write_text(text)
    with pytest.raises(UsageError) as caught:
        load_policy(str(file))
    line = caught.value.one_line()
    assert f"{file}, key '{key}'" in line and words in line, line
    assert caught.value.exit_code == 2


def test_bad_toml_and_missing_files_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules\n")
    with pytest.raises(UsageError, match=r"is not valid TOML .*line 1"):
        load_policy(str(bad))
    with pytest.raises(UsageError, match="does not exist"):
        load_policy(str(tmp_path / "missing.toml"))
    project = tmp_path / "pyproject.toml"
    project.write_text("[project]\nname = 'x'\n")
    with pytest.raises(UsageError, match=r"has no \[tool.onnxcollide\] table"):
        load_policy(str(project))


def test_discovery_takes_the_nearest_folder_pyproject_first(tmp_path):
    """From the start folder up: the first folder with [tool.onnxcollide] in pyproject.toml
    or an onnxcollide.toml wins; in one folder the pyproject table comes first; a
    pyproject.toml without the table is passed over."""
    top, mid, low = tmp_path, tmp_path / "a", tmp_path / "a" / "b"
    low.mkdir(parents=True)
    (top / "onnxcollide.toml").write_text("[rules]\nnullity_w1 = \"error\"\n")
    (mid / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert find_policy_file(str(low)) == (str(top / "onnxcollide.toml"), False)
    (mid / "pyproject.toml").write_text("[tool.onnxcollide.rules]\nnu_ratio = \"warning\"\n")
    (mid / "onnxcollide.toml").write_text("[rules]\nmu_ratio = \"error\"\n")
    assert find_policy_file(str(low)) == (str(mid / "pyproject.toml"), True)
    policy = load_policy(None, start=str(low))
    assert policy.rule("nu_ratio").severity == "warning"
    assert policy.rule("mu_ratio").severity == "off"
    assert policy.source.endswith("pyproject.toml [tool.onnxcollide]")
    (mid / "pyproject.toml").unlink()
    assert find_policy_file(str(low)) == (str(mid / "onnxcollide.toml"), False)


def test_fail_on_adds_error_rules_and_says_so():
    policy = add_fail_on(default_policy(), ("nullity_w1>3", "nu_ratio>0.25", "w1-validated",
                                            "layer-nullity:*fc*>1"))
    assert (policy.rule("nullity_w1").severity, policy.rule("nullity_w1").max) == ("error", 3)
    assert policy.rule("nu_ratio").max == 0.25
    assert policy.rule("w1-validated").severity == "error"
    assert policy.rule("layer-nullity/1").match == "*fc*"
    sources = {p.key: p.source for p in policy.provenance}
    assert sources["rules.nullity_w1.max"] == "--fail-on nullity_w1>3"
    assert sources["rules.layer-nullity[1].match"] == "--fail-on layer-nullity:*fc*>1"


@pytest.mark.parametrize(("text", "words"), [
    ("nullity_w1>=1", "above the bound"), ("nullity_w1<3", "above the bound"),
    ("nope>1", "names no rule"), ("nullity_w1>x", "not an integer"),
    ("nullity_w1>0.5", "not an integer"), ("w1-collision>1", "takes no bound"),
    ("layer-nullity>1", "needs a glob"), ("nu_ratio>2", "could never fail"),
])
def test_bad_fail_on(text, words):
    with pytest.raises(UsageError, match=words):
        add_fail_on(default_policy(), (text,))


# ------------------------------------------------------------------ facts and rules


@pytest.fixture(scope="module")
def audits():
    return {p: audit_model(p) for p in (MLP, PATCH, str(MODELS / "cnn_overlap.onnx"))}


def test_facts_from_an_audit_and_from_its_json_record_are_equal(audits):
    """The rules read the same facts whether the audit ran now or was read from JSON (a
    baseline, a cache entry)."""
    for audit in audits.values():
        record = json.loads(json.dumps(model_dict(audit)))
        assert facts_of_record(record, "r") == facts_of_audit(audit)


def test_w1_collision_fires_on_dense_and_patchify_w1_not_on_overlapping(audits):
    """mlp_dense (dense, nullity 192) and patch_embed (patchify, 144) fail; cnn_overlap's
    overlapping conv has no blind elements and passes."""
    result = evaluate(default_policy(), [(p, facts_of_audit(a)) for p, a in audits.items()])
    failing = {f.model: f for f in result.findings if f.rule == "w1-collision"}
    assert set(failing) == {MLP, PATCH}
    assert failing[MLP].value == 192 and failing[MLP].node == "node_linear"
    assert "dense with nullity(W1) 192 > 0" in failing[MLP].message
    assert result.exit_code == 1


def test_metric_and_layer_rules_compare_with_their_bound(audits):
    facts = facts_of_audit(audits[MLP])
    policy = add_fail_on(default_policy(), ("nullity_w1>191", "layer-nullity:fc2*>20",
                                            "nullity_sum>246"))
    found = {(f.rule, f.weight): f for f in evaluate(policy, [(MLP, facts)]).findings}
    assert found[("nullity_w1", None)].message == "nullity_w1 192 > 191"
    assert ("nullity_sum", None) not in found  # 246 is not above 246
    layer = [f for f in found.values() if f.rule == "layer-nullity/1"]
    assert [f.weight for f in layer] == ["fc2.weight"]
    assert layer[0].value == next(r.nullity for r in audits[MLP].rows
                                  if r.layer.weight == "fc2.weight")


def test_allow_entries_cover_findings_with_their_reason(audits, tmp_path):
    """A model glob covers the model's findings; a layer glob only findings about a matching
    layer; the rules list narrows it; an allowed error does not fail."""
    file = tmp_path / "p.toml"
    file.write_text('[[allow]]\nmodel = "mlp_*.onnx"\nrules = ["w1-collision"]\n'
                    'reason = "toy model"\n'
                    '[[allow]]\nlayer = "patchify.*"\nreason = "patch embedding reviewed"\n')
    policy = load_policy(str(file))
    result = evaluate(policy, [(MLP, facts_of_audit(audits[MLP])),
                               (PATCH, facts_of_audit(audits[PATCH]))])
    by_model = {f.model: f for f in result.findings}
    assert by_model[MLP].allowed == "toy model"
    assert by_model[PATCH].allowed == "patch embedding reviewed"
    assert result.exit_code == 0
    narrow = add_fail_on(load_policy(str(file)), ("nullity_w1>0",))
    result = evaluate(narrow, [(MLP, facts_of_audit(audits[MLP]))])
    metric = next(f for f in result.findings if f.rule == "nullity_w1")
    assert metric.allowed is None and result.exit_code == 1  # the entry lists w1-collision


def test_an_unreadable_model_exits_3_unless_an_error_rule_fails(audits):
    result = evaluate(default_policy(), [("gone.onnx", "gone.onnx: file not found.")])
    assert result.exit_code == 3
    assert result.findings[0].kind == "unreadable"
    both = evaluate(default_policy(), [("gone.onnx", "gone.onnx: file not found."),
                                       (MLP, facts_of_audit(audits[MLP]))])
    assert both.exit_code == 1


# ------------------------------------------------------------------ baselines


def _baseline(tmp_path: Path, audit, name: str = "base.json") -> list:
    path = tmp_path / name
    path.write_text(json.dumps(report_dict([audit])))
    return read_baseline(str(path))


def test_a_retrained_model_that_lost_rank_is_caught_against_its_baseline(tmp_path):
    """fc2.weight falls from rank 4 to 3 after 'retraining' (same initializer names): the
    layer is matched by weight identity and baseline-rank says how it changed; Table 1 got
    worse (nullity_sum); nothing else is reported."""
    before = audit_model(mlp(tmp_path / "v1.onnx", 8, 4))
    after = audit_model(mlp(tmp_path / "v2.onnx", 8, 3, seed=9))
    [baseline] = _baseline(tmp_path, before)
    result = evaluate(default_policy(), [("v2.onnx", facts_of_audit(after))],
                      {"v2.onnx": baseline}, True)
    rank = [f for f in result.findings if f.rule == "baseline-rank"]
    assert len(rank) == 1 and rank[0].weight == "fc2.weight"
    assert "rank 4 -> 3, nullity 4 -> 5" in rank[0].message
    assert "matched by weight identity" in rank[0].message
    metrics = next(f for f in result.findings if f.rule == "baseline-metrics")
    assert "nullity_sum 4 -> 5" in metrics.message
    assert result.exit_code == 1
    same = evaluate(default_policy(), [("v1.onnx", facts_of_audit(before))],
                    {"v1.onnx": baseline}, True)
    assert same.findings == () and same.exit_code == 0


def test_new_layers_and_renamed_weights(tmp_path, audits):
    """A layer the baseline lacks with nullity >= 1 is baseline-new-layer; a layer whose
    initializer was renamed is matched by node name."""
    facts = facts_of_audit(audits[MLP])
    [baseline] = _baseline(tmp_path, audits[MLP])
    fewer = replace(baseline, facts=replace(baseline.facts, layers=baseline.facts.layers[:2]))
    comparison = compare(facts, fewer)
    assert [layer.weight for layer in comparison.new] == [facts.layers[2].weight]
    renamed = replace(facts.layers[0], roots=("renamed",), weight="renamed")
    moved = compare(replace(facts, layers=(renamed, *facts.layers[1:])), baseline)
    assert moved.pairs[0].matched_by == "node name"
    result = evaluate(default_policy(), [(MLP, facts)], {MLP: fewer}, True)
    assert [f.rule for f in result.findings if f.kind.startswith("baseline")] == \
        ["baseline-new-layer"]


def test_a_baseline_of_another_model_is_a_usage_error(tmp_path, audits):
    [baseline] = _baseline(tmp_path, audits[PATCH])
    with pytest.raises(UsageError, match=r"shares 1 of 3 weights with .*another model"):
        compare(facts_of_audit(audits[MLP]), baseline)


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.update({"$schema": "https://example.org/x.json"}), "$schema"),
    (lambda d: d["models"][0]["layers"][0].pop("rank"), "models[0], key 'layers[0].rank'"),
    (lambda d: d["models"][0]["metrics"].update(nu="3"), "models[0], key 'metrics.nu'"),
])
def test_bad_baselines_name_the_file_and_key(tmp_path, audits, edit, key):
    path, caught = _read_edited_baseline(tmp_path, audits, edit)
    assert str(path) in caught.one_line() and key in caught.one_line()


def _read_edited_baseline(tmp_path, audits, edit) -> tuple[Path, UsageError]:
    """mlp_dense's audit as a baseline, edited by ``edit``; the error reading it raises."""
    data = report_dict([audits[MLP]])
    edit(data)
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as caught:
        read_baseline(str(path))
    return path, caught.value


def _layer0(d: dict) -> dict:
    return d["models"][0]["layers"][0]


@pytest.mark.parametrize(("edit", "key", "words"), [
    (lambda d: _layer0(d).update(nullity=-5), "layers[0].nullity", "is -5: it must be 0 or more"),
    (lambda d: _layer0(d).update(rank=-1), "layers[0].rank", "is -1: it must be 0 or more"),
    (lambda d: _layer0(d).update(nullity=_layer0(d)["nullity"] + 1), "layers[0].nullity",
     "is 193, not q - rank (256 - 64)"),
    (lambda d: _layer0(d).update(index=0), "layers[0].index", "is 0: it must be 1 or more"),
    (lambda d: _layer0(d).update(tol=float("inf")), "layers[0].tol",
     "is inf: a tolerance is a finite"),
    (lambda d: d["models"][0]["metrics"].update(nu_ratio=1.5), "metrics.nu_ratio",
     "is 1.5: a ratio lies in [0, 1]"),
    (lambda d: d["models"][0]["metrics"].update(mu_ratio=float("nan")), "metrics.mu_ratio",
     "is nan: a ratio lies in [0, 1]"),
    (lambda d: d["models"][0]["metrics"].update(nullity_w1=-1), "metrics.nullity_w1",
     "is -1: it must be 0 or more"),
    (lambda d: d["models"][0]["first_layer"].update(row_index=0), "first_layer.row_index",
     "is 0: it must be 1 or more"),
])
def test_baselines_with_impossible_numbers_are_refused(tmp_path, audits, edit, key, words):
    """A negative nullity or rank, a ratio outside [0, 1]: read as they were, they gave
    findings such as 'nullity -5 -> 192'."""
    path, caught = _read_edited_baseline(tmp_path, audits, edit)
    assert f"{path}, models[0], key '{key}': {words}" in caught.one_line()
    assert caught.exit_code == 2


def _denied(path, *args, **kwargs):
    raise PermissionError(13, "Permission denied", path)


@pytest.mark.parametrize(("content", "words"), [
    ("[" * 5000 + "]" * 5000, "the baseline is not valid JSON: nested too deep"),
    ('{"a": ' * 5000 + "1" + "}" * 5000, "the baseline is not valid JSON: nested too deep"),
    ("1" * 5000, "the baseline is not valid JSON: a number too large"),
    (b'{"a": "\xff"}', "the baseline is not UTF-8 text. Give an 'onnxcollide audit -f json'"),
    ('{"a": 1}'.encode("utf-16"), "the baseline is not UTF-8 text"),
    (None, "is a folder, not a baseline file. Give the baseline's JSON file, or the folder "
           "as --baseline-dir"),
    ("denied", "cannot read the baseline (permission denied). Make it readable"),
])
def test_unreadable_baselines_say_why_in_one_line(tmp_path, monkeypatch, content, words):
    """A baseline nested 5000 deep or with a 5000-digit integer was an internal error; an
    unreadable or non-UTF-8 one showed Python's message ('utf-8' codec can't decode...)."""
    path = tmp_path / "b.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    if content == "denied":  # chmod does not stop root
        monkeypatch.setattr("onnxcollide.policy.baseline.read_within_limit", _denied)
    with pytest.raises(UsageError) as caught:
        read_baseline(str(path))
    line = caught.value.one_line()
    assert line.startswith(f"{path}: {words}"), line
    assert "codec" not in line and "Errno" not in line


@pytest.mark.parametrize(("content", "words"), [
    ("x = " + "[" * 5000 + "]" * 5000, "is not valid TOML: nested too deep"),
    ("x = " + "{a = " * 3000 + "1" + "}" * 3000, "is not valid TOML: nested too deep"),
    (b'[rules]\nw1-collision = "\xff"\n', "is not valid TOML (not UTF-8 text). Save it as UTF-8"),
    ("[rules]\nnullity_w1 = { severity = \"error\", max = " + "9" * 5000 + " }\n",
     "is not valid TOML: a number too large"),
    ("denied", "cannot read the policy file (permission denied). Make it readable"),
])
def test_unreadable_policies_say_why_in_one_line(tmp_path, monkeypatch, content, words):
    """A policy nested 5000 deep was an internal error (RecursionError), and so was one with
    a 5000-digit bound (Python's integer digit limit)."""
    path = tmp_path / "p.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    if content == "denied":
        monkeypatch.setattr("onnxcollide.policy.config.read_within_limit", _denied)
    with pytest.raises(UsageError) as caught:
        load_policy(str(path))
    line = caught.value.one_line()
    assert line.startswith(f"{path}: {words}"), line
    assert caught.value.exit_code == 2


def test_policy_module_reads_no_file_but_policies_and_baselines():
    """The rules stage is pure: only config (the TOML) and baseline (the JSON) open files."""
    folder = Path(__file__).resolve().parent.parent / "onnxcollide" / "policy"
    opening = sorted(p.name for p in folder.glob("*.py")
                     if any(call in p.read_text("utf-8") for call in ("open(", "read_within")))
    assert opening == ["baseline.py", "config.py"]
    assert os.path.isdir(folder)


def test_the_policy_example_in_docs_check_md_reads(tmp_path):
    """docs/check.md's default policy with its two examples is a valid policy (with the layer
    rule and the allow entry)."""
    page = Path(__file__).resolve().parent.parent / "docs" / "check.md"
    file = tmp_path / "onnxcollide.toml"
    file.write_text("\n".join(_toml_blocks(page)[:2]))
    policy = load_policy(str(file))
    assert policy.rule("layer-nullity/1").match == "*classifier*"
    assert policy.allow[0].reason == "patch embedding reviewed in SEC-123"
