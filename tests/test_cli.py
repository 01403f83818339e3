"""cli: `onnxcollide audit` exit codes, output formats, files and one-line errors."""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import tomllib
from builders import (
    DATA,
    MLP,
    MODELS,
    MTCNN,
    assert_one_line_error,
    build_model,
    init,
    make_model,
    token_ids_model,
    value,
)
from builders import run_cli as run
from onnx import helper

from onnxcollide.cli.options import parse_input_shape
from onnxcollide.errors import UsageError

LENET = str(DATA / "lenet5_mnist_torch.onnx")
CNTK = str(DATA / "mnist-8_cntk.onnx")
PADDLE = str(DATA / "ppocr_mobile_v2_cls.onnx")


# ------------------------------------------------------------------ success


def test_audit_default_table():
    """`audit MODEL` exits 0 and prints the layer table and Table 1."""
    result = run("audit", LENET)
    assert result.exit_code == 0, result.stderr
    assert "Table 1" in result.stdout
    assert "Conv" in result.stdout and "Gemm" in result.stdout


def test_audit_json_parses():
    """--format json prints one JSON document with the model's layers."""
    result = run("audit", "--format", "json", LENET)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["models"]) == 1
    assert [layer["rank"] for layer in data["models"][0]["layers"]] == [6, 16, 120, 84, 10]


def test_same_model_twice_gives_identical_json():
    """Two runs on the same model give byte-identical JSON."""
    first = run("audit", "-f", "json", LENET)
    second = run("audit", "-f", "json", LENET)
    assert first.exit_code == second.exit_code == 0
    assert first.stdout_bytes == second.stdout_bytes


@pytest.mark.parametrize("fmt", ["table", "json", "markdown", "csv"])
def test_output_file(tmp_path, fmt):
    """-o writes the report to the file (and says so on stderr), stdout stays empty."""
    out = tmp_path / f"report.{fmt}"
    result = run("audit", "-f", fmt, "-o", str(out), LENET)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert out.exists() and out.read_text(encoding="utf-8").strip()
    assert str(out) in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_output_file_matches_stdout(tmp_path):
    """The file written with -o holds exactly what stdout would show."""
    out = tmp_path / "r.json"
    assert run("audit", "-f", "json", "-o", str(out), LENET).exit_code == 0
    assert out.read_text(encoding="utf-8") == run("audit", "-f", "json", LENET).stdout


def test_output_dash_is_stdout(tmp_path, monkeypatch):
    """-o - writes to standard output, as the usual convention has it: no file named '-'."""
    monkeypatch.chdir(tmp_path)
    result = run("audit", "-f", "json", "-o", "-", LENET)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == run("audit", "-f", "json", LENET).stdout
    assert list(tmp_path.iterdir()) == []


def test_conv_convention_paper():
    """--conv-convention paper: depthwise convs become one k x C matrix."""
    grouped = json.loads(run("audit", "-f", "json", PADDLE).stdout)
    paper = json.loads(run("audit", "-f", "json", "--conv-convention", "paper", PADDLE).stdout)
    assert paper["settings"]["conv_convention"] == "paper"
    g_layers, p_layers = grouped["models"][0]["layers"], paper["models"][0]["layers"]
    changed = [(g, p) for g, p in zip(g_layers, p_layers, strict=True) if g["groups"] > 1]
    assert changed
    for g, p in changed:
        assert p["groups"] == 1 and p["q"] == g["q"] // g["groups"]
    assert any("paper" in note for note in paper["models"][0]["notes"])


def test_rtol_option():
    """--rtol 1e-3: tol = 1e-3 * sigma_max for every layer, recorded in the settings."""
    data = json.loads(run("audit", "-f", "json", "--rtol", "1e-3", LENET).stdout)
    assert data["settings"]["rtol"] == 1e-3
    for layer in data["models"][0]["layers"]:
        assert layer["tol"] == pytest.approx(1e-3 * layer["sigma_max"], rel=1e-12)


def test_atol_option():
    """--atol 10 (above every sigma_max of LeNet): every rank is 0."""
    data = json.loads(run("audit", "-f", "json", "--atol", "10", LENET).stdout)
    assert data["settings"]["atol"] == 10
    assert all(layer["rank"] == 0 for layer in data["models"][0]["layers"])


def test_input_shape_option():
    """--input-shape fixes the P-Net's dynamic NHWC input: blind elements become known."""
    base = json.loads(run("audit", "-f", "json", MTCNN).stdout)
    name = base["models"][0]["first_layer"]["input"]
    assert base["models"][0]["first_layer"]["blind_elements"] is None
    fixed = run("audit", "-f", "json", "--input-shape", f"{name}=1x12x12x3", MTCNN)
    assert fixed.exit_code == 0, fixed.stderr
    data = json.loads(fixed.stdout)
    assert data["models"][0]["first_layer"]["blind_elements"] == 0
    assert data["models"][0]["input_shapes"] == {name: [1, 12, 12, 3]}


def test_input_shape_with_a_model_prefix_applies_to_that_model_only():
    """Two models with different inputs: a prefix by file name fixes the P-Net's shape, one by
    path the MLP's; each model's JSON records its own overrides. Without a prefix an override
    applies to every model, and one that a model lacks is a usage error naming that model."""
    mtcnn_file = os.path.basename(MTCNN)
    result = run("audit", "-f", "json", "--input-shape", f"{mtcnn_file}:input_1=1x12x12x3",
                 "--input-shape", f"{MLP}:input=4x1x16x16", MTCNN, MLP)
    assert result.exit_code == 0, result.stderr
    pnet, mlp = json.loads(result.stdout)["models"]
    assert pnet["input_shapes"] == {"input_1": [1, 12, 12, 3]}
    assert pnet["first_layer"]["input_shape"] == [1, 12, 12, 3]
    assert mlp["input_shapes"] == {"input": [4, 1, 16, 16]}
    assert mlp["first_layer"]["input_shape"] == [4, 1, 16, 16]
    unprefixed = run("audit", "-f", "json", "--input-shape", "input_1=1x12x12x3", MTCNN, MLP)
    assert unprefixed.exit_code == 2
    assert "mlp_dense.onnx" in unprefixed.stderr and "input_1" in unprefixed.stderr


def test_input_shape_prefixes_hold_colons_and_are_checked():
    """A model path with a colon still works as a prefix (longest match), an input name with
    a colon (tf2onnx's 'input_1:0') stays whole, and a prefix that names no model or a file
    name that fits two models is a usage error, not an override of a strange input name."""
    from onnxcollide.cli.options import shapes_per_model
    from onnxcollide.errors import UsageError

    windows = "C:\\models\\m.onnx"
    assert shapes_per_model((f"{windows}:input=1x2",), (windows, "b.onnx")) == {
        windows: (("input", (1, 2)),), "b.onnx": ()}
    assert shapes_per_model(("input_1:0=1x2",), ("a.onnx",)) == {
        "a.onnx": (("input_1:0", (1, 2)),)}
    assert shapes_per_model(("b.onnx:input_1:0=1x2",), ("a.onnx", "d/b.onnx")) == {
        "a.onnx": (), "d/b.onnx": (("input_1:0", (1, 2)),)}
    with pytest.raises(UsageError, match="names none of the models"):
        shapes_per_model(("mlp_dens.onnx:input=1x2",), ("mlp_dense.onnx",))
    with pytest.raises(UsageError, match="names several models"):
        shapes_per_model(("m.onnx:input=1x2",), ("d1/m.onnx", "d2/m.onnx"))
    typo = run("audit", "--input-shape", "mlp_dens.onnx:input=4x1x16x16", MLP)
    assert_one_line_error(typo, 2)


def test_several_models_give_one_summary():
    """Three models: one Table 1 with a row per model (CSV summary and JSON)."""
    result = run("audit", "-f", "csv", "--summary-only", LENET, CNTK, PADDLE)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert [r[0] for r in rows[1:]] == [LENET, CNTK, PADDLE]  # the paths as given
    table = run("audit", "--summary-only", LENET, CNTK, PADDLE).stdout
    assert table.count("Table 1") == 1
    data = json.loads(run("audit", "-f", "json", LENET, CNTK, PADDLE).stdout)
    assert len(data["models"]) == 3


def test_version_and_help():
    """--version and --help work."""
    assert run("--version").exit_code == 0
    assert "audit" in run("--help").stdout
    assert "--conv-convention" in run("audit", "--help").stdout


@pytest.mark.parametrize("limit", [45, 60, 10_000])
def test_the_command_list_matches_each_commands_own_help(limit):
    """`onnxcollide --help` lists the commands from SUMMARIES without importing them; each
    line must read as click makes it from the command's own help, at any width."""
    import click

    from onnxcollide.cli.main import COMMANDS, SUMMARIES, load_command

    assert set(SUMMARIES) == set(COMMANDS)
    for name in COMMANDS:
        assert click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit) == \
            load_command(name).get_short_help_str(limit), name


def test_the_top_level_help_imports_no_command():
    """Listing the commands imports none of them (1.5 s of numpy, scipy and onnx before)."""
    code = ("import sys; from onnxcollide.cli.main import main\n"
            "try:\n    main.main(['--help'], prog_name='onnxcollide')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('onnxcollide.cli.', "
            "'numpy', 'onnx.'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert "Make inputs that collide" in result.stdout
    imported = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert imported <= {"onnxcollide.cli.entry", "onnxcollide.cli.exit_codes",
                        "onnxcollide.cli.main"}, imported


# ------------------------------------------------------------------ model errors: exit 3


@pytest.fixture
def relu_only(tmp_path) -> str:
    """A valid model with no linear layer."""
    return make_model(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                      [value("x", [1, 4])], [value("y", [1, 4])])


def _bad_file(tmp_path, kind: str, relu_only: str) -> str:
    if kind == "missing":
        return str(tmp_path / "missing.onnx")
    if kind == "truncated":
        with open(LENET, "rb") as handle:
            data = handle.read()
        path = tmp_path / "truncated.onnx"
        path.write_bytes(data[: len(data) // 2])
        return str(path)
    if kind == "text":
        path = tmp_path / "notes.onnx"
        path.write_text("this is a text file, not an ONNX model\n", encoding="utf-8")
        return str(path)
    if kind == "no-linear":
        return relu_only
    if kind == "folder":
        folder = tmp_path / "a_folder"
        folder.mkdir()
        return str(folder)
    raise AssertionError(kind)


BAD_KINDS = ["missing", "truncated", "text", "no-linear", "folder"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_model_exits_3_with_one_line(tmp_path, relu_only, kind):
    """Missing, truncated, non-ONNX, nothing-to-audit and folder: exit 3, one 'error:' line."""
    path = _bad_file(tmp_path, kind, relu_only)
    line = assert_one_line_error(run("audit", path), 3)
    assert os.path.basename(path) in line
    assert "internal error" not in line


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_failed_audit_writes_no_output_file(tmp_path, relu_only, kind):
    """With -o, a failing audit leaves no output file (and no temporary file) behind."""
    path = _bad_file(tmp_path, kind, relu_only)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "report.json"
    assert_one_line_error(run("audit", "-f", "json", "-o", str(out), path), 3)
    assert list(out_dir.iterdir()) == []


def test_second_model_failing_fails_the_run(tmp_path):
    """A good model then a missing one: exit 3, nothing printed and nothing written."""
    out = tmp_path / "r.json"
    result = run("audit", "-f", "json", "-o", str(out), LENET, str(tmp_path / "gone.onnx"))
    assert_one_line_error(result, 3)
    assert not out.exists()


def test_missing_external_data_exits_3(tmp_path):
    """A model whose external data file is gone: exit 3 naming the file."""
    model = build_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [value("x", [1, 4])],
                        [value("y", [1, 3])], [init("W", np.ones((4, 3), np.float32))])
    path = str(tmp_path / "ext.onnx")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    os.remove(tmp_path / "w.bin")
    line = assert_one_line_error(run("audit", path), 3)
    assert "w.bin" in line


# ------------------------------------------------------------------ usage errors: exit 2


@pytest.mark.parametrize("args", [
    ["--format", "nope"],
    ["--conv-convention", "diagonal"],
    ["--rtol", "0"],
    ["--rtol", "abc"],
    ["--atol", "-1"],
    ["--no-such-option"],
    ["--rtol", "nan"],
    ["--rtol", "inf"],
    ["--rtol", "1e400"],
    ["--atol", "inf"],
    ["--atol", "nan"],
    ["--seed", "-1"],
], ids=["format", "convention", "rtol-zero", "rtol-text", "atol-negative", "unknown-option",
        "rtol-nan", "rtol-inf", "rtol-overflow", "atol-inf", "atol-nan", "seed-negative"])
def test_bad_option_is_one_line_and_exit_2(args):
    """Options click rejects: one 'error:' line naming the option, exit 2, nothing on stdout.
    A nan tolerance used to run and report rank 0 everywhere; click's usage block was
    several lines."""
    line = assert_one_line_error(run("audit", *args, LENET), 2)
    assert args[0] in line
    assert "audit --help" in line


def test_no_model_exits_2():
    """`audit` with no model is a usage error on one line."""
    line = assert_one_line_error(run("audit"), 2)
    assert "MODEL" in line


@pytest.mark.parametrize("shape", ["bad", "x=", "=1x2", "x=1xax3", "x=0x3", "x=-1x3"])
def test_bad_input_shape_text_exits_2(shape):
    """--input-shape that is not NAME=DIMS: exit 2 with one 'error:' line."""
    line = assert_one_line_error(run("audit", "--input-shape", shape, LENET), 2)
    assert "--input-shape" in line


def test_input_shape_with_non_ascii_digits_is_a_usage_error():
    """'1x\u00b2' passed isdigit() and then failed int(): an internal error (exit 3)."""
    line = assert_one_line_error(run("audit", "--input-shape", "input=1x\u00b2", MLP), 2)
    assert "is not NAME=DIMS" in line


def test_input_shape_with_a_zero_dimension_says_so():
    """x=0x3 said 'is not NAME=DIMS'; it now names the zero dimension."""
    line = assert_one_line_error(run("audit", "--input-shape", "input_0=0x1x28x28", LENET), 2)
    assert "has a dimension 0" in line and "positive integer" in line


@pytest.mark.parametrize("command", ["audit", "collide", "check"])
def test_input_shape_beyond_int64_is_a_usage_error(command):
    """A dim of 1e20 ended in an internal error (protobuf: "Value out of range") in every
    command taking --input-shape; more elements than an int64 counts is refused at parsing."""
    for dims in ("99999999999999999999x1x28x28", "4294967296x4294967296x1x1"):
        line = assert_one_line_error(run(command, LENET, "--input-shape", f"input_0={dims}"), 2)
        assert "has more elements than an int64 counts" in line


def test_input_shape_for_unknown_input_exits_2():
    """--input-shape naming an input the model lacks: exit 2, the line names its real input."""
    line = assert_one_line_error(run("audit", "--input-shape", "unknown_input=1x2", LENET), 2)
    assert "unknown_input" in line and "input_0" in line


def test_input_shape_contradicting_the_model_exits_2():
    """--input-shape with the wrong number of dims: exit 2."""
    assert_one_line_error(run("audit", "--input-shape", "input_0=10x1x28", LENET), 2)


def test_usage_error_writes_no_output_file(tmp_path):
    """A usage error with -o: no file."""
    out = tmp_path / "r.json"
    assert_one_line_error(run("audit", "-o", str(out), "--input-shape", "nope=1x2", LENET), 2)
    assert not out.exists()


def test_parse_input_shape():
    """NAME=DIMS parsing: 'x' and ',' separators, names may contain '=' and ':'."""
    assert parse_input_shape("input=1x3x224x224") == ("input", (1, 3, 224, 224))
    assert parse_input_shape("in:0=1,3,8,8") == ("in:0", (1, 3, 8, 8))
    assert parse_input_shape("a=b=2X3") == ("a=b", (2, 3))
    with pytest.raises(UsageError):
        parse_input_shape("1x3")


def test_output_into_missing_folder_is_a_clear_error(tmp_path):
    """-o missing_dir/r.json: non-zero exit, one 'error:' line naming the folder, not a bug."""
    out = tmp_path / "missing_dir" / "r.json"
    result = run("audit", "-o", str(out), LENET)
    assert result.exit_code in (2, 3)
    line = assert_one_line_error(result, result.exit_code)
    assert "missing_dir" in line
    assert "internal error" not in line
    assert not out.exists()


def test_progress_bar_goes_to_stderr_only():
    """--progress draws on stderr; stdout still holds exactly the JSON report. Where stderr
    is not a terminal (here, and in a CI log), one plain line per layer (a bar left only
    blank lines)."""
    result = run("audit", "--progress", "-f", "json", LENET)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["metrics"]["n"] == 5
    lines = result.stderr.splitlines()
    assert lines == [f"lenet5_mnist_torch.onnx: layer {k}/5 {node}" for k, node in
                     enumerate(["Conv:11", "Conv:14", "Gemm:19", "Gemm:21", "Gemm:23"], 1)]


def test_report_path_that_is_a_model_or_empty_is_a_usage_error(tmp_path):
    """-o naming an input model would replace it with the report (even a read-only one: the
    rename goes around its mode); -o '' wrote to stdout. Both are usage errors before any
    work, and the model is untouched."""
    model = tmp_path / "m.onnx"
    model.write_bytes((DATA / "lenet5_mnist_torch.onnx").read_bytes())
    before = model.read_bytes()
    line = assert_one_line_error(run("audit", str(model), "-o", str(model)), 2)
    assert "the report would replace it" in line
    assert model.read_bytes() == before
    line = assert_one_line_error(run("audit", str(model), "-o", ""), 2)
    assert "needs a file name" in line


def test_report_path_that_is_a_model_s_external_data_is_a_usage_error(tmp_path):
    """-o naming the model's external data file replaced the weights with the report (exit
    0, and the model could no longer be read): a usage error now, the weights untouched."""
    model = build_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [value("x", [1, 4])],
                        [value("y", [1, 3])], [init("W", np.ones((4, 3), np.float32))])
    path = str(tmp_path / "ext.onnx")
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    before = (tmp_path / "w.bin").read_bytes()
    line = assert_one_line_error(run("audit", path, "-o", str(tmp_path / "w.bin"), "-f",
                                     "json"), 2)
    assert f"is an external data file of the model '{path}'" in line
    assert (tmp_path / "w.bin").read_bytes() == before
    assert run("audit", path).exit_code == 0


def test_interrupt_exits_130_and_writes_nothing(tmp_path, monkeypatch):
    """Ctrl-C exited 1, the code of a failed check (a CI gate read a cancelled job as a
    failed gate): it is 130 now, with one line, and no report file."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("onnxcollide.cli.audit.audit_model", interrupted)
    out = tmp_path / "r.json"
    line = assert_one_line_error(run("audit", LENET, "-o", str(out)), 130)
    assert "interrupted" in line
    assert os.listdir(tmp_path) == []


def test_interrupt_while_starting_exits_130_without_a_traceback(monkeypatch, capsys):
    """Ctrl-C while the command line imports numpy/onnx printed a traceback: the console
    script's entry catches it (one line, exit 130)."""
    from onnxcollide.cli import entry

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "onnxcollide.cli.main", Interrupted("onnxcollide.cli.main"))
    with pytest.raises(SystemExit) as stopped:
        entry.run()
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "error: interrupted while starting; nothing was written\n"


def test_python_dash_m_runs_the_cli():
    """`python -m onnxcollide` is the command line (it had no __main__)."""
    done = subprocess.run([sys.executable, "-m", "onnxcollide", "--version"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("onnxcollide, version ")


def test_a_descriptor_that_is_not_open_is_refused_before_any_work():
    """-o /dev/fd/N for a descriptor the shell did not open: a usage error up front (the
    audit's own files, such as ONNX Runtime's cache under --validate, could take the number
    meanwhile and the report would go into them)."""
    line = assert_one_line_error(run("audit", LENET, "-o", "/dev/fd/987"), 2)
    assert "/dev/fd/987: is not an open file descriptor" in line


@pytest.mark.parametrize("path", ["/dev/fd/\u00b2", "/proc/self/fd/\u00b2"])
def test_a_descriptor_number_in_non_ascii_digits_is_not_a_descriptor(path):
    """/dev/fd/² passed isdigit() and failed int(): an internal error (exit 3); and an
    Arabic-Indic 3 was read as descriptor 3. Neither is a descriptor path now: a usage error
    (no such file), exit 2."""
    assert_one_line_error(run("audit", LENET, "-o", path), 2)


def test_console_script_is_the_entry_that_catches_an_early_interrupt():
    """The installed `onnxcollide` command runs onnxcollide.cli.entry:run (which turns a Ctrl-C
    during imports into exit 130), not the CLI group directly."""
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text("utf-8"))["project"]["scripts"]
    assert scripts == {"onnxcollide": "onnxcollide.cli.entry:run"}


def test_a_descriptor_on_the_model_is_refused_and_claimed_ones_are_closed(tmp_path):
    """-o /dev/fd/N open on an input model (3>>model.onnx) would append the report to the
    model: a usage error, the model intact. A claimed descriptor is closed on every path (a
    failed audit leaked one per run)."""
    model = tmp_path / "m.onnx"
    model.write_bytes((DATA / "lenet5_mnist_torch.onnx").read_bytes())
    before = model.read_bytes()
    with open(model, "ab") as appending:
        line = assert_one_line_error(run("audit", str(model), "-o",
                                         f"/dev/fd/{appending.fileno()}"), 2)
    assert "the report would replace it" in line and model.read_bytes() == before
    open_before = len(os.listdir("/proc/self/fd"))
    with open(tmp_path / "report.txt", "wb") as report:
        for _ in range(3):
            run("audit", str(tmp_path / "missing.onnx"), "-o", f"/dev/fd/{report.fileno()}")
        assert len(os.listdir("/proc/self/fd")) == open_before + 1


def test_a_load_error_names_the_file_once(tmp_path, monkeypatch):
    """A file given by a relative path that is not ONNX: its full path is named once (it
    read 'notes.txt, /full/path/notes.txt: not a valid ONNX file')."""
    (tmp_path / "notes.txt").write_text("not a model")
    monkeypatch.chdir(tmp_path)
    line = assert_one_line_error(run("audit", "notes.txt"), 3)
    assert line.count("notes.txt") == 1 and "not a valid ONNX file" in line


def test_errors_name_the_model_file_among_several(tmp_path):
    """A weight error names the file: two models can have a node of the same name."""
    w = np.ones((4, 3), np.float32)
    w[0, 0] = np.nan
    bad = make_model(tmp_path / "bad.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"])],
                     [value("x", [1, 4])], [value("y", [1, 3])], [init("W", w)])
    line = assert_one_line_error(run("audit", LENET, bad), 3)
    assert line.startswith(f"error: {bad}, node 'MatMul:y'") and "NaN or Inf" in line


def test_models_sharing_a_file_name_are_told_apart_in_the_summary(tmp_path):
    """Model zoos call every file model.onnx: where two models of one report share a file
    name, the summary names them by their paths (it showed two identical rows)."""
    copies = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        copy = tmp_path / folder / "model.onnx"
        copy.write_bytes((DATA / "lenet5_mnist_torch.onnx").read_bytes())
        copies.append(str(copy))
    result = run("audit", "-f", "markdown", "--summary-only", *copies, CNTK)
    assert result.exit_code == 0, result.stderr
    names = [line.split(" | ")[0][2:] for line in result.stdout.splitlines()
             if (line.startswith("| ") and " | 5 | " in line) or "| mnist-8" in line]
    assert names == [*copies, "mnist-8_cntk.onnx"]
    table = run("audit", *copies)
    assert f"{copies[0]}: 5 weights" in table.stdout.replace("\n", "")


def test_audit_validate_turns_a_runtime_failure_into_the_verdict(tmp_path):
    """audit --validate on a model ONNX Runtime cannot run (a custom-domain op after the conv):
    the audit still succeeds and the W1 check's verdict says why it was not validated."""
    rng = np.random.default_rng(0)
    path = make_model(
        tmp_path / "custom.onnx",
        [helper.make_node("Conv", ["x", "W"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Mystery", ["c"], ["y"], domain="example.custom")],
        [value("x", [1, 3, 8, 8])], [value("y", [1, 4, 4, 4])],
        [init("W", rng.standard_normal((4, 3, 2, 2)).astype(np.float32))],
        extra_opsets=[("example.custom", 1)], check=False,
    )
    result = run("audit", "--validate", "-f", "json", str(path))
    assert result.exit_code == 0, result.stderr
    check = json.loads(result.stdout)["models"][0]["validation"]
    assert check["verdict"].startswith("not validated:")
    assert check["validation"] is None


def test_audit_validate_on_cuda_without_cuda_is_a_usage_error():
    """--validate --device cuda where ONNX Runtime has no CUDA provider: exit 2 before any
    work, as collide does (the audit ran and the check said 'not validated', exit 0)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    line = assert_one_line_error(run("audit", "--validate", "--device", "cuda", LENET), 2)
    assert "--device cuda" in line


def test_validate_reaches_csv_and_the_summary_only_table():
    """audit --validate: the W1 check is in every format, also the CSVs and the
    --summary-only table (they had no trace of it)."""
    model = str(MODELS / "patch_embed.onnx")
    summary = run("audit", "--validate", "-f", "csv", "--summary-only", model)
    assert summary.exit_code == 0, summary.stderr
    header, row = list(csv.reader(io.StringIO(summary.stdout)))
    assert row[header.index("W1 check")].startswith("PASS")
    layers = run("audit", "--validate", "-f", "csv", model)
    rows = list(csv.DictReader(io.StringIO(layers.stdout)))
    checks = [r["w1_check"] for r in rows]
    assert sum(c.startswith("PASS") for c in checks) == 1 and checks.count("") == len(rows) - 1
    table = run("audit", "--validate", "--summary-only", model)
    assert "W1 check" in table.stdout and "PASS" in table.stdout
    plain = run("audit", "-f", "csv", "--summary-only", model)
    assert "W1 check" not in plain.stdout  # no column without --validate


def test_blind_count_of_a_not_applicable_w1_says_why(tmp_path):
    """A static input whose W1 is 'not applicable' (a Relu first): the blind-element line says
    it is not counted, not 'dynamic input size; pass --input-shape'."""
    rng = np.random.default_rng(0)
    path = make_model(tmp_path / "relu.onnx",
                      [helper.make_node("Relu", ["x"], ["r"]),
                       helper.make_node("MatMul", ["r", "W"], ["y"])],
                      [value("x", [1, 8])], [value("y", [1, 4])],
                      [init("W", rng.standard_normal((8, 4)).astype(np.float32))])
    result = run("audit", str(path))
    assert result.exit_code == 0, result.stderr
    assert "blind input elements: not counted (W1's class is not applicable)" in result.stdout
    assert "dynamic input size" not in result.stdout


def test_validate_verdict_on_token_ids_names_no_collide_option(tmp_path):
    """audit --validate on int64 token ids: the verdict says why it was not checked without
    advising '--input ids=FILE.npy', an option audit does not have."""
    path = token_ids_model(tmp_path)
    result = run("audit", "--validate", "-f", "json", str(path))
    assert result.exit_code == 0, result.stderr
    verdict = json.loads(result.stdout)["models"][0]["validation"]["verdict"]
    assert verdict.startswith("not checked:")
    assert "--input " not in verdict and "FILE.npy" not in verdict


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [("audit", MLP, "-f", "json"),
                                  ("validate", MLP, "A", "B")])
def test_failed_write_to_stdout_is_one_line_exit_2(tmp_path, args):
    """`audit m.onnx -f json > /dev/full` was an 'internal error ... this is a bug', exit 3;
    it is now the line an unwritable -o file gives, exit 2, with no traceback at exit."""
    import subprocess
    import sys

    files = {"A": str(tmp_path / "a.npy"), "B": str(tmp_path / "b.npy")}
    np.save(files["A"], np.zeros((1, 1, 16, 16), np.float32))
    np.save(files["B"], np.ones((1, 1, 16, 16), np.float32))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "onnxcollide.cli.main",
                               *[files.get(v, v) for v in args]],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: standard output: cannot write here (No space left on " \
                          "device).\n"


@pytest.mark.parametrize(("args", "match"), [
    (("--input-shape", "input=1x1x16x16", "--input-shape", "input=1x1x16x16"),
     "--input-shape sets input 'input' of"),
    (("--seed", "5"), "--seed only applies with --validate"),
    (("--seed", "5", "--device", "cpu"), "--seed only applies with --validate"),
    (("--summary-only", "-f", "json"), "--summary-only does not apply to JSON"),
    (("--summary-only", "-o", "{tmp}/r.json"), "--summary-only does not apply to JSON"),
])
def test_audit_options_that_would_be_ignored_are_usage_errors(tmp_path, args, match):
    """A repeated --input-shape (the last won), --seed without --validate and
    --summary-only with JSON (silently unused) are one-line usage errors. (--device without
    --validate applies since issue 16: cuda forms the Gram matrices on the GPU.)"""
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    line = assert_one_line_error(run("audit", MLP, *args), 2)
    assert match in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("suffix", "start"), [(".json", "{"), (".csv", "model,index,"),
                                               (".md", "#"), (".txt", "mlp_dense.onnx")])
def test_audit_report_format_follows_the_output_suffix(tmp_path, suffix, start):
    """-o report.json without -f wrote a table into the .json file; the suffix now picks the
    format (an explicit -f still wins)."""
    out = tmp_path / f"report{suffix}"
    result = run("audit", MLP, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert out.read_text().lstrip().startswith(start)
    fmt = {".json": "json", ".csv": "csv", ".md": "markdown", ".txt": "table"}[suffix]
    assert run("audit", MLP, "-o", str(out), "-f", fmt).exit_code == 0
    assert out.read_text().lstrip().startswith(start)


@pytest.mark.parametrize(("name", "args", "match"), [
    ("r.json", ("-f", "csv"), "--output {out}: -f csv but the file name says json"),
    ("r.md", ("-f", "table"), "--output {out}: -f table but the file name says markdown"),
    ("r.tsv", (), "--output {out}: cannot tell the report format from the suffix '.tsv'"),
    ("r.csv.gz", (), "the suffix '.gz'"),
])
def test_audit_output_suffix_that_contradicts_or_names_no_format_is_a_usage_error(
        tmp_path, name, args, match):
    """-f csv -o r.json wrote CSV into a .json file, and -o r.tsv a box-drawn table: both are
    one-line usage errors now, and nothing is written."""
    out = tmp_path / name
    line = assert_one_line_error(run("audit", MLP, "-o", str(out), *args), 2)
    assert match.replace("{out}", str(out)) in line
    assert os.listdir(tmp_path) == []


def test_audit_suffix_decides_under_dev_and_for_a_hidden_file(tmp_path):
    """A file under /dev (tmpfs /dev/shm) and a file named '.json' are JSON files: the first
    was written as a table (every /dev/ path was taken for a descriptor), the second too (its
    suffix read as empty)."""
    hidden = tmp_path / ".json"
    assert run("audit", MLP, "-o", str(hidden)).exit_code == 0
    assert hidden.read_text().startswith("{")
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        shm = f"/dev/shm/onnxcollide-test-{os.getpid()}.json"
        try:
            assert run("audit", MLP, "-o", shm).exit_code == 0
            with open(shm, encoding="utf-8") as handle:
                assert handle.read().startswith("{")
        finally:
            if os.path.exists(shm):
                os.remove(shm)


def test_audit_txt_or_no_suffix_is_a_table_and_takes_any_format(tmp_path):
    """.txt or no suffix: a table by default; -f json into them is the user's choice."""
    for name in ("report.txt", "report"):
        out = tmp_path / name
        assert run("audit", MLP, "-o", str(out)).exit_code == 0
        assert out.read_text().lstrip().startswith("mlp_dense.onnx")
        assert run("audit", MLP, "-o", str(out), "-f", "json").exit_code == 0
        assert out.read_text().startswith("{")


def _cli_process(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcollide", *args], capture_output=True,
                          text=True, check=False, timeout=120, **options)


def test_a_closed_standard_output_is_one_usage_error(tmp_path):
    """`audit M >&-` ended in an internal error (sys.stdout is None: no isatty); now the
    report meant for it is a usage error, while -o FILE, --help and check's gate (its summary
    left out where the report went to -o) work without it."""
    def close_stdout() -> None:
        os.close(1)

    done = subprocess.run([sys.executable, "-m", "onnxcollide", "audit", MLP],
                          stdout=None, stderr=subprocess.PIPE, text=True, check=False,
                          timeout=120, preexec_fn=close_stdout)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: standard output: cannot write here: it is closed. Keep " \
        "standard output open, or write the report to a file with -o.\n"
    out = tmp_path / "r.json"
    for command, code in ((("audit", MLP, "-o", str(out)), 0), (("--help",), 0),
                          (("check", MLP, "--no-cache", "-o", str(out)), 1)):
        out.unlink(missing_ok=True)
        done = subprocess.run([sys.executable, "-m", "onnxcollide", *command],
                              stderr=subprocess.PIPE, text=True, check=False, timeout=120,
                              preexec_fn=close_stdout)
        assert done.returncode == code, (command, done.stderr)  # check: the gate's 1, not 2
        assert command == ("--help",) or out.read_text("utf-8").startswith("{")


@pytest.mark.parametrize("command", [("audit", MLP), ("compare", MLP, MLP)])
def test_an_ascii_standard_output_gets_ascii_tables(command):
    """PYTHONIOENCODING=ascii (or a legacy console code page) ended in an internal error
    (UnicodeEncodeError) on the tables' box-drawing borders; they are drawn in ASCII now."""
    done = _cli_process(*command, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.isascii() and "| node" in done.stdout and "+---" in done.stdout


def test_empty_paths_and_values_name_what_is_empty(tmp_path):
    """`audit ''` said "file not found" naming nothing, `init-policy ''` "is a folder", and
    `collide --resize ''` dropped the option without a word."""
    assert "the model path is empty" in assert_one_line_error(run("audit", ""), 3)
    assert "the file name is empty" in assert_one_line_error(run("init-policy", ""), 2)
    line = assert_one_line_error(run("collide", MLP, "--resize", "", "-o", str(tmp_path)), 2)
    assert "--resize '' is not HxW" in line


def test_a_model_from_a_pipe_is_read_and_one_nobody_writes_to_does_not_block(tmp_path):
    """A FIFO with no writer given as the model blocked forever (check also hashed it for its
    cache): it now reads as empty. A pipe with a writer (/dev/stdin, <(cat m.onnx)) is read
    whole, as before; a device such as /dev/zero, which never ends, is refused."""
    pipe = tmp_path / "model.onnx"
    os.mkfifo(pipe)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    for command in (("audit", str(pipe)), ("check", str(pipe))):
        done = _cli_process(*command, cwd=tmp_path, env=env)
        assert done.returncode == 3, done.stderr
        assert "not an ONNX model" in done.stderr
    with open(MLP, "rb") as model:
        done = subprocess.run([sys.executable, "-m", "onnxcollide", "audit", "/dev/stdin",
                               "-f", "json"], stdin=model, capture_output=True, text=True,
                              check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["models"][0]["metrics"]["nullity_w1"] == 192
    assert "is a device" in assert_one_line_error(run("audit", "/dev/zero"), 3)
