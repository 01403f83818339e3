"""cli: `onnxcollide compare` exit codes, --run and --transfer in ONNX Runtime, formats, the
JSON schema and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import pytest
from builders import DATA, assert_one_line_error, build_model, init, value
from builders import run_cli as run
from onnx import helper, numpy_helper

from onnxcollide.compare.model import compare_models
from onnxcollide.report.compare_format import CompareFormat, render_comparison

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "models" / "pairs"
NETWORKS = json.loads((PAIRS / "manifest.json").read_text())["networks"]
SCHEMA = json.loads((ROOT / "onnxcollide" / "schemas" /
                     "compare-report-v1.schema.json").read_text())


def _files(network: str) -> list[str]:
    spec = NETWORKS[network]
    others = sorted(f for f in spec["files"] if f != spec["reference"])
    return [str(PAIRS / spec["reference"])] + [str(PAIRS / f) for f in others]


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_every_copy_runs_alike_and_collisions_transfer(network):
    """Each network against all its copies with --run --transfer: exit 0; float and fp16
    outputs agree within their tolerance; the reference's exact colliding inputs PASS in
    every float copy and at least APPROXIMATE (W1 residual >= 5x below a random
    perturbation's) in the quantized ones; the JSON validates against the schema."""
    done = run("compare", *_files(network), "--run", "--transfer", "-f", "json")
    assert done.exit_code == 0, (done.stdout[-3000:], done.stderr)
    data = json.loads(done.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert data["same"] and data["differences"] == []
    assert data["reference_transfer"]["verdict"] == "PASS"
    for model in data["models"]:
        name = Path(model["path"]).name
        quantized = any(v in name for v in ("qdq", "qop", "dynamic"))
        assert model["run"]["agree"] is (None if quantized else True), name
        verdict = model["transfer"]["verdict"]
        assert verdict in (("PASS", "APPROXIMATE") if quantized or "fp16" in name
                           else ("PASS",)), (name, model["transfer"])
        assert model["transfer"]["ratio"] is None or model["transfer"]["ratio"] >= 5


def test_nhwc_inputs_are_mapped_for_run_and_transfer():
    """The channels-last copy takes the reference's NCHW inputs transposed."""
    done = run("compare", str(PAIRS / "cnn_torchscript.onnx"), str(PAIRS / "cnn_nhwc.onnx"),
               "--run", "--transfer", "-f", "json")
    model = json.loads(done.stdout)["models"][0]
    assert model["run"]["inputs"][0]["layout"] == "NCHW -> NHWC"
    assert model["run"]["inputs"][0]["permutation"] == [0, 2, 3, 1]
    assert model["transfer"]["verdict"] == "PASS"


def test_lenet_pair_exits_0_and_says_why_nothing_transfers():
    """The shared LeNet pair aligns (exit 0); its overlapping 5x5 W1 has no exact colliding
    input on 28x28, which the report says instead of transferring."""
    done = run("compare", str(DATA / "lenet5_mnist_torch.onnx"),
               str(DATA / "lenet5_mnist_qdq.onnx"), "--transfer", "-f", "json")
    assert done.exit_code == 0, done.stderr
    data = json.loads(done.stdout)
    jsonschema.Draft202012Validator(SCHEMA).validate(data)
    assert data["transfer_source"]["made"] is False
    assert data["models"][0]["transfer"] is None
    assert any("no exact colliding input" in n for n in data["notes"])


def _broken_w1(tmp_path: Path) -> Path:
    proto = onnx.load(str(PAIRS / "mlp_torchscript.onnx"))
    for tensor in proto.graph.initializer:
        if tensor.name == "fc1.weight":
            w = numpy_helper.to_array(tensor).copy()
            w += np.random.default_rng(3).standard_normal(w.shape).astype(np.float32) * 0.05
            tensor.CopyFrom(numpy_helper.from_array(w, tensor.name))
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    return path


def test_a_broken_w1_fails_transfer_and_is_named_first(tmp_path):
    """W1's weights changed: exit 1; the weights difference names /fc1/Gemm, and the
    colliding inputs FAIL at W1 in that copy while they PASS in an intact one."""
    done = run("compare", str(PAIRS / "mlp_torchscript.onnx"), str(PAIRS / "mlp_dynamo.onnx"),
               str(_broken_w1(tmp_path)), "--transfer")
    assert done.exit_code == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "2 differences:"
    assert "broken.onnx: /fc1/Gemm (reference /fc1/Gemm): the weights differ" in lines[2]
    assert "do not collide at W1" in lines[3]
    table = done.stdout[done.stdout.index("--transfer: the reference"):]
    assert "mlp_dynamo.onnx" in table and "PASS" in table and "FAIL" in table


def test_every_format_renders_and_differences_come_first(tmp_path):
    """table, json and markdown all render one comparison; the table and Markdown put the
    differences above the layer tables; -o picks the format from the suffix."""
    paths = [str(PAIRS / "mlp_torchscript.onnx"), str(_broken_w1(tmp_path))]
    result = compare_models(paths)
    for fmt in CompareFormat:
        text = render_comparison(result, fmt)
        assert "/fc1/Gemm" in text and text.endswith("\n")
    table = render_comparison(result, CompareFormat.TABLE)
    assert table.index("difference") < table.index("vs broken.onnx")
    markdown = render_comparison(result, CompareFormat.MARKDOWN)
    assert markdown.startswith("# onnxcollide compare")
    assert "| metric | mlp_torchscript.onnx | broken.onnx | same |" in markdown
    report = tmp_path / "report.json"
    done = run("compare", *paths, "-o", str(report))
    assert done.exit_code == 1 and done.stdout == ""
    assert json.loads(report.read_text())["same"] is False


def test_json_is_deterministic():
    """The same comparison twice gives byte-identical JSON."""
    paths = [str(PAIRS / "vit_torchscript.onnx"), str(PAIRS / "vit_qop.onnx")]
    first = run("compare", *paths, "-f", "json").stdout
    assert first == run("compare", *paths, "-f", "json").stdout


def _flat(path: Path, batch: int) -> Path:
    w = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    onnx.save(build_model(nodes, [value("x", [batch, 64])], [value("y", [batch, 8])],
                          [init("w", w)]), str(path))
    return path


@pytest.mark.parametrize(("args", "code", "words"), [
    (["REF"], 2, "at least two models"),
    (["REF", "OTHER", "--match", "nope=mm"], 2, "has no linear node 'nope'"),
    (["REF", "OTHER", "--match", "mm"], 2, "is not NODE_A=NODE_B"),
    (["REF", "OTHER", "--count", "3"], 2, "--count only applies with --transfer"),
    (["REF", "OTHER", "--device", "cpu"], 2, "--device only applies with --run"),
    (["REF", "OTHER", "--seed", "5"], 2, "--seed only applies with --run"),
    (["REF", "OTHER", "--run"], 2, "no layout change"),
    (["REF", "MISSING"], 3, "file not found"),
    (["REF", "VIT"], 2, "no linear layer in common"),
])
def test_bad_input_is_one_line(tmp_path, args, code, words):
    """Usage mistakes exit 2 and an unreadable model 3, each with one 'error:' line."""
    names = {"REF": str(_flat(tmp_path / "ref.onnx", 1)),
             "OTHER": str(_flat(tmp_path / "other.onnx", 2)),
             "MISSING": str(tmp_path / "missing.onnx"),
             "VIT": str(PAIRS / "vit_torchscript.onnx")}
    line = assert_one_line_error(run("compare", *[names.get(a, a) for a in args]), code)
    assert words in line, line


def test_compare_is_listed_by_the_cli():
    """`onnxcollide --help` lists compare."""
    assert "compare" in run("--help").stdout


def test_run_catches_a_changed_bias_that_weights_do_not_compare(tmp_path):
    """Biases are not compared as weights; --run shows their effect: a copy with the head's
    bias shifted has equal weights but outputs that differ (exit 1, kind 'outputs')."""
    proto = onnx.load(str(PAIRS / "cnn_torchscript.onnx"))
    for tensor in proto.graph.initializer:
        if tensor.name == "fc.bias":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 0.5,
                                                    tensor.name))
    other = tmp_path / "bias.onnx"
    onnx.save(proto, str(other))
    paths = [str(PAIRS / "cnn_torchscript.onnx"), str(other)]
    assert compare_models(paths).same
    done = run("compare", *paths, "--run", "-f", "json")
    assert done.exit_code == 1
    data = json.loads(done.stdout)
    assert [d["kind"] for d in data["differences"]] == ["outputs"]
    assert data["models"][0]["run"]["agree"] is False


def test_schema_is_valid_and_rejects_a_bad_report():
    """The schema is valid Draft 2020-12; a report with an unknown key, a missing key or a
    relation kind it does not know is rejected."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    done = run("compare", str(PAIRS / "mlp_torchscript.onnx"), str(PAIRS / "mlp_qdq.onnx"),
               "-f", "json")
    data = json.loads(done.stdout)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.validate(data)
    for broken in ({**data, "extra": 1}, {k: v for k, v in data.items() if k != "same"}):
        assert not validator.is_valid(broken)
    data["models"][0]["pairs"][0]["relation"]["kind"] = "similar"
    assert not validator.is_valid(data)


@pytest.mark.parametrize(("name", "args", "match"), [
    ("c.gz", (), "cannot tell the report format from the suffix '.gz'"),
    ("c.csv", (), "cannot tell the report format from the suffix '.csv'"),
    ("c.md", ("-f", "json"), "-f json but the file name says markdown"),
])
def test_an_output_suffix_naming_no_format_or_another_is_a_usage_error(tmp_path, name, args,
                                                                        match):
    """-o c.gz and -o c.csv wrote a text table under those names (exit 0); both are usage
    errors now, as for audit and check, and nothing is written."""
    out = tmp_path / name
    paths = [str(PAIRS / "mlp_torchscript.onnx"), str(PAIRS / "mlp_dynamo.onnx")]
    line = assert_one_line_error(run("compare", *paths, "-o", str(out), *args), 2)
    assert f"--output {out}: {match}" in line
    assert os.listdir(tmp_path) == []
