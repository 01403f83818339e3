"""report: every format renders; JSON against its schema; CSV, Markdown and table contents."""

from __future__ import annotations

import csv
import io
import json
from importlib import resources

import jsonschema
import numpy as np
import pytest
from builders import DATA, init, make_model, value
from builders import integer_rank as irank
from onnx import helper

from onnxcollide.audit.layers import ConvConvention
from onnxcollide.audit.model import AuditSettings, ModelAudit, audit_model
from onnxcollide.linalg.spectral import ToleranceRule
from onnxcollide.report.csv_format import LAYER_COLUMNS, SETTINGS_COLUMNS
from onnxcollide.report.fields import LAYER_HEADERS, SUMMARY_HEADERS, digits_text, layer_cells
from onnxcollide.report.json_format import SCHEMA_ID, SCHEMA_VERSION, report_dict
from onnxcollide.report.options import Format, RenderOptions
from onnxcollide.report.render import render, renderer

mk = helper.make_node
SCHEMA_FILE = "audit-report-v1.schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    """The JSON schema shipped as package data."""
    text = resources.files("onnxcollide").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    return json.loads(text)


@pytest.fixture(scope="module")
def lenet() -> ModelAudit:
    """The PyTorch LeNet-5 audit."""
    return audit_model(str(DATA / "lenet5_mnist_torch.onnx"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> ModelAudit:
    """A tiny model with a skipped op, a shared weight and a '|' in a node name."""
    rng = np.random.default_rng(7)
    path = make_model(
        tmp_path_factory.mktemp("small") / "small|model.onnx",
        [mk("MatMul", ["x", "W"], ["h"], name="proj|a"), mk("MatMul", ["h", "W"], ["g"],
                                                               name="proj_b"),
         mk("MatMul", ["g", "z"], ["y"], name="scores")],
        [value("x", [2, 6]), value("z", [6, 2])], [value("y", [2, 2])],
        [init("W", irank(rng, 6, 6, 4).astype(np.float32))],
    )
    return audit_model(path)


@pytest.fixture(scope="module")
def ultraface() -> ModelAudit:
    """UltraFace: many layers, one decided with margin < 10."""
    return audit_model(str(DATA / "ultraface_slim320.onnx"))


# ------------------------------------------------------------------ every format


@pytest.mark.parametrize("fmt", list(Format), ids=lambda f: f.value)
@pytest.mark.parametrize("summary_only", [False, True])
def test_every_format_renders(fmt, summary_only, lenet, small):
    """Each Format value has a renderer; one and two models render to text ending in a newline."""
    assert callable(renderer(fmt))
    for audits in ([lenet], [lenet, small]):
        text = render(audits, fmt, RenderOptions(summary_only=summary_only))
        assert text.strip()
        assert text.endswith("\n")
        assert "lenet5_mnist_torch.onnx" in text


def test_format_values_are_the_cli_choices():
    """The enum's values are the names the CLI accepts."""
    assert {f.value for f in Format} >= {"table", "json", "markdown", "csv"}


# ------------------------------------------------------------------ JSON


def test_schema_is_valid_draft_2020_12(schema):
    """The schema is a valid draft 2020-12 schema whose $id is the report's $schema."""
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == SCHEMA_ID


def _object_schemas(node):
    """Every sub-schema that declares properties."""
    if isinstance(node, dict):
        if "properties" in node:
            yield node
        for child in node.values():
            yield from _object_schemas(child)
    elif isinstance(node, list):
        for child in node:
            yield from _object_schemas(child)


def test_schema_requires_every_property_and_forbids_others(schema):
    """Every object in the schema lists all its properties as required, additionalProperties
    false (only input_shapes is an open map)."""
    objects = list(_object_schemas(schema))
    assert len(objects) >= 8
    for obj in objects:
        assert set(obj["required"]) == set(obj["properties"]), obj.get("description")
        assert obj["additionalProperties"] is False


@pytest.mark.parametrize("settings", [
    AuditSettings(),
    AuditSettings(convention=ConvConvention.PAPER, rule=ToleranceRule(rtol=1e-3, atol=1e-9)),
    AuditSettings(input_shapes=(("input_0", (10, 1, 28, 28)),)),
], ids=["default", "paper-rtol-atol", "input-shape"])
def test_json_validates_against_schema(schema, settings):
    """Reports of real models (one and several, all settings) validate against the schema."""
    audits = [audit_model(str(DATA / "lenet5_mnist_torch.onnx"), settings)]
    validator = jsonschema.Draft202012Validator(schema)
    text = render(audits, Format.JSON)
    data = json.loads(text)
    validator.validate(data)
    assert data["$schema"] == SCHEMA_ID
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["settings"]["conv_convention"] == settings.convention.value
    assert data["settings"]["rtol"] == settings.rule.rtol
    assert data["models"][0]["input_shapes"] == {k: list(v) for k, v in settings.input_shapes}


def test_json_of_every_real_model_validates(schema):
    """All real models in one report: valid, one entry per model, one layer entry per row."""
    paths = sorted(DATA.glob("*.onnx"))
    audits = [audit_model(str(p)) for p in paths]
    data = json.loads(render(audits, Format.JSON))
    jsonschema.Draft202012Validator(schema).validate(data)
    assert [m["path"] for m in data["models"]] == [str(p) for p in paths]
    for audit, model in zip(audits, data["models"], strict=True):
        assert len(model["layers"]) == len(audit.rows)
        assert model["metrics"]["n"] == audit.metrics.n


def test_json_carries_the_numbers(small, schema):
    """Layer, skipped and first-layer entries hold the audit's values."""
    data = report_dict([small])
    jsonschema.Draft202012Validator(schema).validate(data)
    model = data["models"][0]
    (layer,) = model["layers"]
    row = small.rows[0]
    assert layer["nodes"] == ["proj|a", "proj_b"]
    assert (layer["q"], layer["p"], layer["rank"], layer["nullity"]) == (6, 6, 4, 2)
    assert layer["nu"] is True and layer["mu"] is False
    shown = row.decision.resolved()
    for name in ("sigma_max", "tol", "smallest_kept", "largest_dropped", "margin"):
        assert (layer[name], layer["digits"][name]) == shown[name]
    digits = layer["digits"]["sigma_max"]
    assert 10 <= digits <= 17  # a float64 SVD of a 6x6 matrix resolves most digits
    assert layer["sigma_max"] == pytest.approx(row.decision.sigma_max, rel=10.0 ** (1 - digits))
    assert layer["eps"] == 2.0**-23
    assert model["skipped"] == [{"node": "scores", "op": "MatMul",
                                 "reason": small.skipped[0].reason, "holds_weights": False}]
    assert model["first_layer"]["exactness"] == "dense"


def test_schema_rejects_bad_reports(schema, small):
    """The schema catches a missing field, an extra field and a wrong type."""
    validator = jsonschema.Draft202012Validator(schema)
    good = report_dict([small])
    validator.validate(good)
    missing = json.loads(json.dumps(good))
    del missing["models"][0]["layers"][0]["rank"]
    extra = json.loads(json.dumps(good))
    extra["models"][0]["metrics"]["extra"] = 1
    wrong = json.loads(json.dumps(good))
    wrong["models"][0]["layers"][0]["q"] = "6"
    bad_class = json.loads(json.dumps(good))
    bad_class["models"][0]["first_layer"]["exactness"] = "maybe"
    for bad in (missing, extra, wrong, bad_class):
        assert not validator.is_valid(bad)


def test_json_is_deterministic(lenet):
    """The same audit renders to the same bytes (no timestamps, fixed key order)."""
    assert render([lenet], Format.JSON) == render([lenet], Format.JSON)


def test_unclear_row_is_marked_in_every_format(ultraface):
    """A margin under 10 gives clear=false in JSON and CSV and a '!' in Markdown and table."""
    unclear = [r for r in ultraface.rows if r.decision.margin is not None
               and r.decision.margin < 10]
    assert unclear
    data = report_dict([ultraface])
    flags = {layer["index"]: layer["clear"] for layer in data["models"][0]["layers"]}
    assert {i for i, clear in flags.items() if not clear} == {r.index for r in unclear}
    rows = list(csv.DictReader(io.StringIO(render([ultraface], Format.CSV))))
    assert {int(r["index"]) for r in rows if r["clear"] == "False"} == {r.index for r in unclear}
    assert " !" in render([ultraface], Format.MARKDOWN)
    assert " !" in render([ultraface], Format.TABLE)


def test_unclear_and_skipped_counts_agree_in_every_format(ultraface, small):
    """Table 1 gains 'skipped' and 'unclear': the count of rows marked '!' (UltraFace had 4 of
    them under a plain sum of nullities), the same in JSON metrics, CSV, Markdown and table."""
    unclear = sum(not r.clear for r in ultraface.rows)
    assert unclear >= 1 and ultraface.metrics.unclear == unclear
    assert report_dict([ultraface])["models"][0]["metrics"]["unclear"] == unclear
    rows = list(csv.DictReader(io.StringIO(render([ultraface, small], Format.CSV,
                                                  RenderOptions(summary_only=True)))))
    assert [(r["skipped"], r["unclear"]) for r in rows] == [("0", str(unclear)), ("0", "0")]
    table1 = _table1_lines(render([ultraface], Format.MARKDOWN))
    assert table1[2].endswith(f"| 0 | {unclear} |")
    for fmt in (Format.MARKDOWN, Format.TABLE):
        assert "unclear: rows whose margin is under 10, marked '!'" in " ".join(
            render([ultraface], fmt, RenderOptions(width=400)).split())


def test_table_cells_keep_trailing_zeros(lenet, ultraface):
    """Table and Markdown cells show up to 4 digits (3 for tol), never more than resolved,
    trailing zeros kept: LeNet's sigma_max 2.4097990 was '2.41', a margin of 4003.5 '4e+03'."""
    checked = 0
    for row in [*lenet.rows, *ultraface.rows]:
        cells = dict(zip(LAYER_HEADERS, layer_cells(row), strict=True))
        for name, most in (("sigma_max", 4), ("tol", 3), ("margin", 4)):
            value, digits = row.decision.resolved()[name]
            if value is None or not digits:
                continue
            shown = cells[name].removesuffix(" !")
            assert _significant_digits(shown) == min(most, digits), (name, shown)
            checked += 1
    assert checked > 30


# ------------------------------------------------------------------ CSV


def test_csv_one_row_per_layer(lenet, small):
    """CSV parses with the csv module: a header, then one row per layer of every model."""
    text = render([lenet, small], Format.CSV)
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == ("model", *LAYER_COLUMNS, *SETTINGS_COLUMNS)
    assert {tuple(r[-2:]) for r in rows[1:]} == {("sigma_max * max(q, p) * eps", "grouped")}
    body = rows[1:]
    assert len(body) == len(lenet.rows) + len(small.rows)
    table = [dict(zip(rows[0], r, strict=True)) for r in body]
    summary = list(csv.reader(io.StringIO(render([lenet], Format.CSV,
                                                 RenderOptions(summary_only=True)))))
    assert summary[1][-2:] == ["sigma_max * max(q, p) * eps", "grouped"]
    for cells, row in zip(table, [*lenet.rows, *small.rows], strict=True):
        assert int(cells["q"]) == row.layer.q
        assert int(cells["p"]) == row.layer.p
        assert int(cells["rank"]) == row.rank
        assert int(cells["nullity"]) == row.nullity
        assert float(cells["tol"]) == row.decision.resolved()["tol"][0]
    assert table[-1]["nodes"] == "proj|a;proj_b"
    assert table[0]["largest_dropped"] == ""  # None renders as an empty cell


def _significant_digits(cell: str) -> int:
    """Significant digits written in a decimal or scientific cell ('0.5320' -> 4)."""
    mantissa = cell.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    return len(mantissa)


def test_csv_cells_keep_their_resolved_digits(ultraface, lenet):
    """A CSV spectral value shows exactly the digits the JSON says are resolved, trailing zeros
    included (CSV wrote 1.8476000628 for a 13-digit 1.847600062800), and reads back as the
    JSON's number."""
    rows = list(csv.DictReader(io.StringIO(render([lenet, ultraface], Format.CSV))))
    layers = [layer for m in report_dict([lenet, ultraface])["models"] for layer in m["layers"]]
    checked = 0
    for cells, layer in zip(rows, layers, strict=True):
        for name, digits in layer["digits"].items():
            if layer[name] is None:
                assert cells[name] == ""
                continue
            assert float(cells[name]) == layer[name]
            if digits:
                assert _significant_digits(cells[name]) == digits, (name, cells[name], digits)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize(("value", "digits", "text"), [
    (0.532, 4, "0.5320"), (1.8476000628, 13, "1.847600062800"), (50.0, 2, "5.0e+01"),
    (50.0, 1, "5e+01"), (123.4, 4, "123.4"), (1.2e-7, 3, "1.20e-07"), (0.0, 17, "0"),
    (74.0, 2, "74"), (4003.5, 4, "4004"), (7.0, 1, "7"), (1200.0, 4, "1.200e+03")])
def test_digits_text(value, digits, text):
    """Exactly the resolved digits; an exact zero (a pruned unit's singular value) is 0."""
    assert digits_text(value, digits) == text
    if value:
        assert _significant_digits(text) == digits


def test_csv_summary_only(lenet, small):
    """--summary-only CSV: the Table 1 header and one row per model, named by its path as
    given, as the per-layer CSV names it (the summary held the file name, the per-layer CSV
    the path)."""
    rows = list(csv.reader(io.StringIO(render([lenet, small], Format.CSV,
                                              RenderOptions(summary_only=True)))))
    assert tuple(rows[0]) == (*SUMMARY_HEADERS, *SETTINGS_COLUMNS)
    assert [r[0] for r in rows[1:]] == [lenet.path, small.path]
    layers = list(csv.reader(io.StringIO(render([lenet, small], Format.CSV, RenderOptions()))))
    assert {r[0] for r in layers[1:]} == {lenet.path, small.path}
    assert rows[1][1:5] == ["5", "5", "1.0", "5"]  # plain values: no '%' or ',' to strip


def test_csv_summary_numbers_are_plain(ultraface):
    """The summary CSV holds numbers a spreadsheet or script reads as numbers: ratios as
    fractions and counts without thousands separators (it had '69%' and '21,391')."""
    rows = list(csv.DictReader(io.StringIO(render([ultraface], Format.CSV,
                                                  RenderOptions(summary_only=True)))))
    m = ultraface.metrics
    assert int(rows[0]["sum nullity"]) == m.nullity_sum > 1000
    assert float(rows[0]["nu/n"]) == m.nu_ratio and float(rows[0]["mu/n"]) == m.mu_ratio


# ------------------------------------------------------------------ Markdown


def _table1_lines(text: str) -> list[str]:
    """The Table 1 table's lines (header, rule, rows) of a Markdown report."""
    lines = text.splitlines()
    start = lines.index("## Table 1") + 2
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def test_markdown_has_table1_with_a_row_per_model(lenet, small):
    """One Table 1 with the paper's header and a row per model, then a section per model."""
    text = render([lenet, small], Format.MARKDOWN)
    assert text.count("## Table 1") == 1
    table = _table1_lines(text)
    assert table[0] == "| " + " | ".join(SUMMARY_HEADERS) + " |"
    assert len(table) == 2 + 2
    assert table[2].startswith("| lenet5_mnist_torch.onnx | 5 | 5 | 100% | 5 | 100% | 543 | 19 |")
    assert "## lenet5_mnist_torch.onnx" in text
    assert "- no weight: scores (MatMul): " in text  # not a weight, so not 'skipped'



def test_markdown_escapes_pipes(small):
    """A '|' in a model or node name does not break the Markdown tables."""
    text = render([small], Format.MARKDOWN)
    assert "small\\|model.onnx" in text
    assert "proj\\|a" in text
    for line in _table1_lines(text):
        assert line.replace("\\|", "").count("|") == len(SUMMARY_HEADERS) + 1


def test_markdown_summary_only(lenet, small):
    """--summary-only Markdown: Table 1 only, no per-model sections."""
    text = render([lenet, small], Format.MARKDOWN, RenderOptions(summary_only=True))
    assert len(_table1_lines(text)) == 4
    assert "## lenet5_mnist_torch.onnx" not in text
    assert "W1:" not in text


def test_markdown_paper_convention_note(tmp_path):
    """With convention 'paper' the report says so."""
    audit = audit_model(str(DATA / "ppocr_mobile_v2_cls.onnx"),
                        AuditSettings(convention=ConvConvention.PAPER))
    text = render([audit], Format.MARKDOWN)
    assert "conv convention: `paper`" in text
    assert "not the operator's rank" in text


# ------------------------------------------------------------------ table


def test_table_has_layers_w1_and_summary(lenet, small):
    """The terminal table lists each model's layers, its W1 and one Table 1 for all models."""
    text = render([lenet, small], Format.TABLE, RenderOptions(width=200))
    assert text.count("Table 1") == 1
    assert "W1: " in text
    assert "lenet5_mnist_torch.onnx: 5 weights" in text
    assert "\x1b[" not in text  # no colour unless asked


def test_table_shows_a_bound_with_two_digits(tmp_path):
    """Two equal columns and rtol 1e-13: the dropped value sits at the noise floor, so the
    margin is a lower bound (resolved digits 0); the table shows it with 2 digits ('>=74'),
    as CSV does, not 4 ('>=74.00')."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 3))
    weight = np.concatenate([base, base[:, :1]], axis=1).astype(np.float32)  # 6 x 4, rank 3
    path = make_model(tmp_path / "m.onnx", [mk("MatMul", ["x", "W"], ["y"])],
                      [value("x", [1, 6])], [value("y", [1, 4])], [init("W", weight)])
    row = audit_model(path, AuditSettings(rule=ToleranceRule(rtol=1e-13))).rows[0]
    bound, digits = row.decision.resolved()["margin"]
    assert digits == 0 and bound is not None
    margin = dict(zip(LAYER_HEADERS, layer_cells(row), strict=True))["margin"]
    assert margin.startswith(">=")
    assert _significant_digits(margin.removeprefix(">=").removesuffix(" !")) == 2
    assert float(margin.removeprefix(">=").removesuffix(" !")) == float(f"{bound:.2g}")


def test_table_lines_are_whole_and_end_without_spaces(ultraface):
    """At a narrow width (a file or pipe gets 160 columns) the W1 sentences stay whole lines
    (they were cut mid-sentence with an unindented rest), and no line ends in spaces."""
    text = render([ultraface], Format.TABLE, RenderOptions(width=100))
    lines = text.splitlines()
    assert not [line for line in lines if line != line.rstrip()]
    reason = ultraface.first_layer.reason if ultraface.first_layer else ""
    assert len(reason) > 100 and any(line.endswith(reason) for line in lines)


def test_table_summary_only(lenet, small):
    """--summary-only table: only Table 1, with both models."""
    text = render([lenet, small], Format.TABLE, RenderOptions(summary_only=True, width=200))
    assert "Table 1" in text
    assert "W1: " not in text
    assert "lenet5_mnist_torch.onnx" in text and "small|model.onnx" in text


# ------------------------------------------------------------------ names from the model


@pytest.fixture(scope="module")
def marked(tmp_path_factory) -> ModelAudit:
    """Node and file names that look like rich markup, and a node name with a newline."""
    rng = np.random.default_rng(3)
    path = make_model(
        tmp_path_factory.mktemp("marked") / "[bold]x[red].onnx",
        [mk("MatMul", ["x", "W"], ["h"], name="[/bold]"),
         mk("MatMul", ["h", "V"], ["g"], name="[red]gemm[/red]"),
         mk("MatMul", ["g", "U"], ["y"], name="two\nlines")],
        [value("x", [2, 6])], [value("y", [2, 6])],
        [init("W", irank(rng, 6, 6, 4).astype(np.float32)),
         init("V", irank(rng, 6, 6, 3).astype(np.float32)),
         init("U", irank(rng, 6, 6, 2).astype(np.float32))],
    )
    return audit_model(path)


def test_table_shows_markup_like_names_verbatim(marked):
    """Names are text, not rich markup: '[/bold]' crashed the table (MarkupError) and
    '[red]gemm[/red]' lost its brackets."""
    text = render([marked], Format.TABLE, RenderOptions(width=250))
    for name in ("[/bold]", "[red]gemm[/red]", "[bold]x[red].onnx"):
        assert name in text


def test_markdown_keeps_a_newline_in_a_name_on_one_row(marked):
    """A newline in a node name would split its table row in two."""
    text = render([marked], Format.MARKDOWN)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "MatMul" in line]
    assert len(rows) == 3
    assert any("two lines" in row for row in rows)
    header = next(line for line in text.splitlines() if line.startswith("| #"))
    assert all(row.count(" | ") == header.count(" | ") for row in rows)
