"""cli_collide: `onnxcollide collide` and `onnxcollide validate`: files, reports, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import (
    INT64,
    MLP,
    MTCNN,
    OVERLAP,
    PATCH,
    assert_one_line_error,
    init,
    make_model,
    value,
)
from builders import run_cli as run
from onnx import helper
from PIL import Image

mk = helper.make_node


def _runtime_available() -> bool:
    try:
        from onnxcollide.runtime import (  # noqa: F401
            ModelRunner,
            Tolerances,
            validate_pair,
            validation_dict,
        )
    except ImportError:
        return False
    return True


needs_runtime = pytest.mark.skipif(
    not _runtime_available(), reason="onnxcollide.runtime (ONNX Runtime validation) is missing "
                                     "or incomplete")


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def w1_residual(model: str, tensor: str, name: str, a: np.ndarray, b: np.ndarray) -> float:
    """||L(b) - L(a)|| / ||L(a)|| at ``tensor``, run independently in ONNX Runtime."""
    proto = onnx.load(model)
    proto.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(proto.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    la, lb = (np.asarray(session.run([tensor], {name: v})[0], np.float64) for v in (a, b))
    return float(np.linalg.norm(lb - la) / np.linalg.norm(la))


# ------------------------------------------------------------------ collide: files and output


def test_collide_writes_npz_report_and_strips(tmp_path, monkeypatch):
    """`collide patch_embed -n 2 --no-validate` in a fresh folder: exit 0, the default
    collisions/ folder holds collisions.npz, report.json and one strip per input."""
    monkeypatch.chdir(tmp_path)
    result = run("collide", PATCH, "-n", "2", "--no-validate", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "collisions"
    assert sorted(os.listdir(out)) == ["collisions.npz", "report.json", "strip-0.png",
                                       "strip-1.png"]
    assert "W1:" in result.stdout and "patchify" in result.stdout
    assert "wrote report" in result.stdout
    report = report_of(out)
    assert report["schema"] == "onnxcollide.collide"
    assert report["input"] == "input" and report["input_shape"] == [1, 3, 32, 32]
    assert report["w1"]["class"] == "patchify" and report["w1"]["exact"] is True
    assert report["runtime"] is None
    assert [row["validation"] for row in report["collisions"]] == [None, None]
    assert report["settings"]["count"] == 2 and report["settings"]["seed"] == 3
    with np.load(out / "collisions.npz") as data:
        x, colliding, delta = data["original"], data["colliding"], data["delta"]
        assert colliding.shape == (2, 1, 3, 32, 32) and delta.shape == (2, 1, 3, 32, 32)
        np.testing.assert_array_equal(data["beta"], [1.0, 1.0])
        assert json.loads(str(data["settings"])) == report["settings"]
    np.testing.assert_allclose(colliding - x, delta, atol=1e-6)
    for k in range(2):
        assert report["collisions"][k]["delta_l2"] == pytest.approx(np.linalg.norm(delta[k]))
        res = w1_residual(PATCH, report["w1"]["output"], "input", x, colliding[k])
        assert res < 1e-5
    with Image.open(out / "strip-0.png") as strip:
        assert strip.format == "PNG" and strip.size == (488, 160)


def test_collide_json_format_prints_the_report(tmp_path):
    """--format json prints the same JSON document it writes to report.json."""
    out = tmp_path / "o"
    result = run("collide", MLP, "--no-validate", "-o", str(out), "-f", "json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == report_of(out)
    assert printed["w1"]["class"] == "dense"
    assert printed["files"]["report"] == str(out / "report.json")


def test_collide_basis_images(tmp_path):
    """--basis-images 6 on patch_embed writes basis.png: one row of six 96 px tiles."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "--basis-images", "6")
    assert result.exit_code == 0, result.stderr
    with Image.open(out / "basis.png") as image:
        assert image.format == "PNG" and image.size == (600, 100)
    assert report_of(out)["files"]["basis images"] == str(out / "basis.png")


def test_collide_region_and_range_through_the_cli(tmp_path):
    """--region :,0:8,0:8 --range 0,1 --beta 4: only that box moves, values in [0, 1]."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "--region", ":,0:8,0:8",
                 "--range", "0,1", "--beta", "4")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "collisions.npz") as data:
        x, colliding = data["original"], data["colliding"][0]
        assert data["beta_min"][0] < 4.0
    assert colliding.min() >= 0.0 and colliding.max() <= 1.0
    outside = np.ones(x.shape, bool)
    outside[:, :, 0:8, 0:8] = False
    np.testing.assert_array_equal(colliding[outside], x[outside])
    report = report_of(out)
    assert report["settings"]["valid_range"] == [0.0, 1.0]
    assert any("bounded" in note for note in report["notes"])


def test_collide_png_input_with_normalisation(tmp_path):
    """--input a.png --resize 32x32 --mean/--std: the original in the .npz is the normalised
    image."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = tmp_path / "o"
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "--input",
                 str(tmp_path / "a.png"), "--resize", "32x32", "--mean", "0.5,0.5,0.5",
                 "--std", "0.25,0.25,0.25")
    assert result.exit_code == 0, result.stderr
    resized = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR),
                         np.float64)
    with np.load(out / "collisions.npz") as data:
        np.testing.assert_allclose(data["original"][0], ((resized / 255 - 0.5) / 0.25)
                                   .transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


def test_collide_channels_last_model_with_input_shape(tmp_path):
    """mtcnn_pnet (dynamic NHWC) with --input-shape and --mode tiled: an NHWC strip."""
    out = tmp_path / "o"
    result = run("collide", MTCNN, "--no-validate", "-o", str(out), "--input-shape",
                 "input_1=1x12x12x3", "--mode", "tiled")
    assert result.exit_code == 0, result.stderr
    report = report_of(out)
    assert report["w1"]["class"] == "overlapping" and report["w1"]["exact"] is False
    assert report["input_shape"] == [1, 12, 12, 3]
    with Image.open(out / "strip-0.png") as strip:
        assert strip.size == (3 * 156 + 8, 156)  # 12 px upscaled x13 per panel


# ------------------------------------------------------------------ collide: errors


@pytest.mark.parametrize("args, match", [
    (("--range", "1,0"), "LO must be below HI"),
    (("--range", "0"), "needs 2 numbers"),
    (("--range", "a,b"), "not a comma-separated list"),
    (("--basis", "x"), "--basis 'x'"),
    (("--resize", "32"), "--resize '32'"),
    (("--region", ":,99:,:"), "selects no element"),
    (("--input-shape", "input"), "NAME=DIMS"),
])
def test_collide_usage_errors_exit_2(tmp_path, args, match):
    """Bad option values: exit 2, one 'error:' line, nothing written."""
    out = tmp_path / "o"
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "-o", str(out), *args),
                                 2)
    assert match in line
    assert not out.exists()


def test_collide_missing_model_exit_3(tmp_path):
    """A model file that does not exist: exit 3, the line names the file."""
    line = assert_one_line_error(run("collide", str(tmp_path / "nope.onnx"), "--no-validate"), 3)
    assert "nope.onnx" in line and "not found" in line


def test_collide_missing_input_file_exit_3(tmp_path):
    """--input pointing nowhere: exit 3 (a file that cannot be read)."""
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "--input",
                                     str(tmp_path / "x.npy")), 3)
    assert "x.npy" in line


def test_collide_token_ids_exit_3(tmp_path):
    """int64 ids -> Gather -> MatMul with an ids file: exit 3, one line, no output folder."""
    rng = np.random.default_rng(1)
    path = make_model(tmp_path / "tok.onnx",
                      [mk("Gather", ["E", "ids"], ["e"]), mk("MatMul", ["e", "W"], ["y"])],
                      [value("ids", [1, 6], INT64)], [value("y", [1, 6, 4])],
                      [init("E", rng.standard_normal((50, 8)).astype(np.float32)),
                       init("W", rng.standard_normal((8, 4)).astype(np.float32))])
    np.save(tmp_path / "ids.npy", np.arange(6, dtype=np.int64)[None])
    out = tmp_path / "o"
    line = assert_one_line_error(run("collide", path, "--no-validate", "-o", str(out),
                                     "--input", str(tmp_path / "ids.npy")), 3)
    assert "float" in line or "token ids" in line
    assert not out.exists()


def test_collide_out_is_an_existing_file_is_a_usage_error(tmp_path):
    """-o naming an existing file: exit 2 with a one-line usage error."""
    target = tmp_path / "afile"
    target.write_text("keep")
    assert_one_line_error(run("collide", PATCH, "--no-validate", "-o", str(target)), 2)


def test_collide_basis_images_on_a_dense_model_exit_2(tmp_path):
    """--basis-images needs a conv W1: exit 2 with one line."""
    out = tmp_path / "o"
    line = assert_one_line_error(run("collide", MLP, "--no-validate", "-o", str(out),
                                     "--basis-images", "3"), 2)
    assert "--basis-images" in line


def test_collide_basis_images_on_a_dense_model_writes_nothing(tmp_path):
    """A refused --basis-images leaves no output files behind."""
    out = tmp_path / "o"
    result = run("collide", MLP, "--no-validate", "-o", str(out), "--basis-images", "3")
    assert result.exit_code == 2
    assert not out.exists() or os.listdir(out) == [], os.listdir(out)


def _convop_available() -> bool:
    try:
        from onnxcollide import search_operator  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _convop_available(),
                    reason="onnxcollide.convop (conv operator spectrum) is missing or incomplete")
def test_collide_overlapping_auto_reports_without_claiming(tmp_path):
    """cnn_overlap in auto mode: exit 0; either no collision (report says why, no .npz) or
    exact collisions that really collide at W1."""
    out = tmp_path / "o"
    result = run("collide", OVERLAP, "--no-validate", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    report = report_of(out)
    assert report["w1"]["class"] == "overlapping"
    assert report["w1"]["operator"]["input_shape"] == [3, 32, 32]
    if report["w1"]["exact"]:
        with np.load(out / "collisions.npz") as data:
            x, colliding = data["original"], data["colliding"][0]
        assert w1_residual(OVERLAP, report["w1"]["output"], "input", x, colliding) < 1e-5
    else:
        assert report["collisions"] == []
        assert not (out / "collisions.npz").exists()
        assert "no exact collision" in report["w1"]["method"]
        assert "no exact collision" in result.stdout


# ------------------------------------------------------------------ with validation


@needs_runtime
def test_collide_validation_passes_for_patch_embed(tmp_path):
    """Default validation on the CPU: every exact collision passes, far better than random."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "-n", "2", "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "did not pass" not in result.stderr
    report = report_of(out)
    assert report["runtime"]["device"] == "cpu"
    assert report["runtime"]["precision"] == "float32"
    for row in report["collisions"]:
        check = row["validation"]
        assert check["passed"] is True
        assert check["layer"] == report["w1"]["output"]
        assert check["collision"]["layer_residual"] < 1e-5
        assert check["baseline"]["layer_residual"] > 1e3 * check["collision"]["layer_residual"]
        assert check["baseline"]["passed"] is False


@needs_runtime
def test_collide_float64_validation_of_the_unrounded_perturbation(tmp_path):
    """--precision float64 on mlp_dense: the float64 copy sees a W1 residual at 1e-15 level."""
    out = tmp_path / "o"
    result = run("collide", MLP, "-o", str(out), "--device", "cpu", "--precision", "float64")
    assert result.exit_code == 0, result.stderr
    report = report_of(out)
    assert report["runtime"]["precision"] == "float64"
    check = report["collisions"][0]["validation"]
    assert check["passed"] is True
    assert check["collision"]["layer_residual"] < 1e-12
    assert check["baseline"]["layer_residual"] > 1e-3


@needs_runtime
def test_collide_validation_flags_the_tiled_overlapping_case(tmp_path):
    """--mode tiled on cnn_overlap: validation fails, stderr says so; exit stays 0."""
    out = tmp_path / "o"
    result = run("collide", OVERLAP, "--mode", "tiled", "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "did not pass validation" in result.stderr
    check = report_of(out)["collisions"][0]["validation"]
    assert check["passed"] is False
    assert check["collision"]["layer_residual"] > 1e-3


@needs_runtime
def test_collide_table_shows_the_validated_w1_residual(tmp_path):
    """The table row of a validated collision shows its W1 residual and ratio."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    residual = report_of(out)["collisions"][0]["validation"]["collision"]["layer_residual"]
    row = next(line for line in result.stdout.splitlines() if "PASS" in line)
    assert f"{residual:.3g}" in row, row


@needs_runtime
def test_validate_exits_0_for_a_collision_and_1_for_a_random_pair(tmp_path):
    """`validate MODEL a.npy b.npy`: 0 for a colliding pair, 1 for a random pair."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "--no-validate", "-o", str(out)).exit_code == 0
    with np.load(out / "collisions.npz") as data:
        x, colliding = data["original"], data["colliding"][0]
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", colliding)
    noise = np.random.default_rng(0).standard_normal(x.shape)
    norm = np.linalg.norm(colliding.astype(np.float64) - x)
    np.save(tmp_path / "r.npy", (x + noise * norm / np.linalg.norm(noise)).astype(np.float32))
    good = run("validate", PATCH, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
               "--device", "cpu", "-f", "json")
    assert good.exit_code == 0, good.stderr
    data = json.loads(good.stdout)
    assert data["passed"] is True and data["collision"]["layer_residual"] < 1e-5
    bad = run("validate", PATCH, str(tmp_path / "a.npy"), str(tmp_path / "r.npy"),
              "--device", "cpu")
    assert bad.exit_code == 1, bad.stderr
    assert "passed: False" in bad.stdout


@needs_runtime
def test_validate_identical_inputs_is_a_usage_error(tmp_path):
    """A and B equal: nothing to validate: exit 2 with one line."""
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("validate", PATCH, str(tmp_path / "a.npy"),
                                     str(tmp_path / "a.npy"), "--device", "cpu"), 2)
    assert "identical" in line
