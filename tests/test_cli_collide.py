"""cli.collide and cli.validate: `onnxcollide collide` and `onnxcollide validate`: files,
reports, exit codes."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import (
    MLP,
    MTCNN,
    OVERLAP,
    PATCH,
    assert_one_line_error,
    init,
    make_model,
    token_ids_model,
    value,
)
from builders import run_cli as run
from onnx import helper
from PIL import Image

mk = helper.make_node


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
        # three 160 px panels, 6 px gaps; labels above, the caption under them
        assert strip.format == "PNG" and strip.size == (3 * 160 + 2 * 6, 250)


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
        # six 96 px tiles, 6 px gaps, a label line under each
        assert image.format == "PNG" and image.size == (6 * 102, 96 + 16)
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


def test_collide_records_the_image_and_tells_of_a_resize(tmp_path):
    """A 20x24 PNG for the 32x32 model without --resize: a one-line notice on stderr, and
    report.json (and the .npz) record the file, its hash, both sizes and the scaling."""
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = tmp_path / "o"
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "--input",
                 str(tmp_path / "a.png"))
    assert result.exit_code == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and "is 20x24; it was resized (bilinear) to the model's 32x32" \
        in notices[0]
    record = report_of(out)["settings"]["inputs"]["input"]
    assert record["source"] == "image" and record["path"] == str(tmp_path / "a.png")
    assert record["sha256"] == hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert (record["image_size"], record["resized_to"], record["scale"]) == \
        ([20, 24], [32, 32], 1.0 / 255.0)
    with np.load(out / "collisions.npz") as data:
        assert json.loads(str(data["settings"]))["inputs"] == {"input": record}


def test_collide_records_a_random_input_s_seed_and_range(tmp_path):
    """Without --input the report records the draw: seed, range, shape, dtype; no notice."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "--seed", "4",
                 "--range", "0,2")
    assert result.exit_code == 0, result.stderr
    assert "notice:" not in result.stderr
    assert report_of(out)["settings"]["inputs"] == {"input": {
        "source": "random", "seed": 4, "range": [0.0, 2.0], "shape": [1, 3, 32, 32],
        "dtype": "float32"}}


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
        # 12 px upscaled x13 per panel, 6 px gaps (wider where the caption is longer)
        assert strip.size[0] >= 3 * 156 + 2 * 6
        assert strip.size[1] - 156 == 250 - 160  # the same bands of labels and caption


# ------------------------------------------------------------------ collide: errors


def _png(folder: Path) -> str:
    """A 20x24 RGB PNG in ``folder``."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    return str(folder / "a.png")


@pytest.mark.parametrize("args, match", [
    (("--range", "1,0"), "LO must be below HI"),
    (("--range", "0"), "needs 2 numbers"),
    (("--range", "a,b"), "not a comma-separated list"),
    (("--basis", "x"), "--basis 'x'"),
    (("--resize", "32"), "--resize '32'"),
    (("--region", ":,8:8,:"), "selects no element"),
    (("--region", ":,99:,:"), "does not fit"),
    (("--input-shape", "input"), "NAME=DIMS"),
    (("--seed", "-1"), "--seed"),
    (("--basis", "-1"), "--basis '-1'"),
    (("--basis", "0,-2"), "negative index"),
    (("--resize", "0x32", "--input", "{png}"), "--resize '0x32'"),
    (("--resize", "2x\u00b2", "--input", "{png}"), "is not HxW"),
    (("--mean", "0.5,0.5", "--input", "{png}"), "3 channel"),
    (("--std", "1,1", "--input", "{png}"), "--std"),
    (("--std", "0,1,1", "--input", "{png}"), "--std '0,1,1'"),
    (("--std", "nan,1,1", "--input", "{png}"), "not a finite number"),
    (("--mean", "inf,0,0", "--input", "{png}"), "not a finite number"),
    (("--scale", "nan", "--input", "{png}"), "--scale"),
    (("--beta", "nan"), "--beta"),
    (("--beta", "inf"), "--beta"),
    (("--beta", "-inf"), "--beta"),
    (("--beta", "0"), "--beta 0"),
    (("--beta", "1e-300"), "too small"),
    (("--beta", "1e300"), "overflow"),
    (("--rtol", "nan"), "--rtol"),
    (("--atol", "inf"), "--atol"),
    (("--range", "-inf,inf"), "not a finite number"),
    (("--range", "0,nan"), "not a finite number"),
    (("--range", "-1e300,1e300"), "does not fit"),
])
@pytest.mark.filterwarnings("error")
def test_collide_bad_values_are_one_line_usage_errors(tmp_path, args, match):
    """Bad option values, among them some that used to be internal errors (negative seed or
    basis index, a zero --resize, a --mean of the wrong length), pass silently (nan/inf beta,
    std, scale, rtol, atol) or blame --range (--beta 0 or too small): exit 2, one line naming
    the option, no numpy warning, nothing written."""
    out = tmp_path / "o"
    args = tuple(a.replace("{png}", _png(tmp_path)) for a in args)
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "-o", str(out), *args),
                                 2)
    assert match in line
    assert "--range" not in line or "--range" in args
    assert not out.exists()


@pytest.mark.parametrize("content, match", [
    (np.full((1, 3, 32, 32), np.inf, np.float32), "NaN or infinite"),
    (np.where(np.eye(32, dtype=bool), np.nan, 0.5).astype(np.float32)[None, None]
     .repeat(3, axis=1), "NaN or infinite"),
    ((np.full((1, 3, 32, 32), 0.5) + 0.5j).astype(np.complex64), "complex64"),
])
@pytest.mark.filterwarnings("error")
def test_collide_input_file_with_nan_inf_or_complex_is_a_usage_error(tmp_path, content, match):
    """--input x.npy holding inf/NaN or complex numbers: exit 2 naming the file and the input
    (inf used to be blamed on --range, NaN and complex went through with a wrong number)."""
    np.save(tmp_path / "x.npy", content)
    out = tmp_path / "o"
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "-o", str(out),
                                     "--input", str(tmp_path / "x.npy")), 2)
    assert match in line and "x.npy" in line and "'input'" in line
    assert "--range" not in line
    assert not out.exists()


def test_validate_negative_seed_is_a_usage_error(tmp_path):
    """validate --seed -1: exit 2 naming --seed (numpy's ValueError used to surface as an
    internal error)."""
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    np.save(tmp_path / "b.npy", np.ones((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("validate", PATCH, str(tmp_path / "a.npy"),
                                     str(tmp_path / "b.npy"), "--device", "cpu", "--seed",
                                     "-1"), 2)
    assert "--seed" in line


def test_collide_out_in_a_folder_that_cannot_be_written_fails_first(tmp_path, monkeypatch):
    """-o ro/out where ro refuses new entries (PermissionError): exit 2 naming --out before
    any search runs (it used to be an internal error after all the work)."""
    import errno

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(os.fspath(path)).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran before the output folder was checked")

    monkeypatch.setattr(os, "mkdir", refuse)
    monkeypatch.setattr("onnxcollide.cli.collide.find_collisions", no_search)
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "-o",
                                     str(ro / "out")), 2)
    assert "--out" in line and "Permission denied" in line
    assert os.listdir(ro) == []


def test_collide_output_named_folder_is_a_usage_error_before_writing(tmp_path):
    """out/report.json is a folder: exit 2 naming it, and no collisions.npz is written
    (it used to write the .npz and then fail with an internal error)."""
    out = tmp_path / "o"
    (out / "report.json").mkdir(parents=True)
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", "-o", str(out)), 2)
    assert "report.json" in line
    assert os.listdir(out) == ["report.json"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of ``folder`` (hidden ones too) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_collide_failed_write_leaves_the_previous_outputs(tmp_path, monkeypatch):
    """A write that fails half way (the second strip: a full disk) leaves the folder exactly
    as the previous run left it: no new .npz beside an old report, no temporary files."""
    import errno

    from onnxcollide.report import images

    out = tmp_path / "o"
    assert run("collide", PATCH, "--no-validate", "-o", str(out), "-n", "3").exit_code == 0
    before = _snapshot(out)
    calls = []

    def failing_strip(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        images.strip_png(path, *args, **kwargs)

    monkeypatch.setattr("onnxcollide.cli.collide.strip_png", failing_strip)
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "-n", "2", "--seed", "5")
    line = assert_one_line_error(result, 2)
    assert "No space left on device" in line
    assert _snapshot(out) == before


def test_collide_rerun_replaces_the_previous_set_and_keeps_other_files(tmp_path):
    """A rerun with a smaller --count and no --basis-images removes the old strip-1/2.png and
    basis.png: the folder holds exactly what the new report lists, plus the user's files."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "--no-validate", "-o", str(out), "-n", "3",
               "--basis-images", "2").exit_code == 0
    assert "strip-2.png" in os.listdir(out) and "basis.png" in os.listdir(out)
    (out / "notes.txt").write_text("mine")
    (out / "strip-old.png").write_text("mine too")
    result = run("collide", PATCH, "--no-validate", "-o", str(out), "-n", "1")
    assert result.exit_code == 0, result.stderr
    listed = {os.path.basename(p) for p in report_of(out)["files"].values()}
    assert listed == {"collisions.npz", "report.json", "strip-0.png"}
    assert sorted(os.listdir(out)) == sorted(listed | {"notes.txt", "strip-old.png"})
    assert (out / "notes.txt").read_text() == "mine"


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
    path = token_ids_model(tmp_path)
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


def test_collide_validation_flags_the_tiled_overlapping_case(tmp_path):
    """--mode tiled on cnn_overlap: validation fails, stderr says so; exit stays 0."""
    out = tmp_path / "o"
    result = run("collide", OVERLAP, "--mode", "tiled", "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "did not pass validation" in result.stderr
    check = report_of(out)["collisions"][0]["validation"]
    assert check["passed"] is False
    assert check["collision"]["layer_residual"] > 1e-3


def test_collide_table_shows_the_validated_w1_residual(tmp_path):
    """The table row of a validated collision shows its W1 residual and ratio."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    residual = report_of(out)["collisions"][0]["validation"]["collision"]["layer_residual"]
    row = next(line for line in result.stdout.splitlines() if "PASS" in line)
    assert f"{residual:.3g}" in row, row


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
    assert data["inputs"]["first"]["input"]["path"] == str(tmp_path / "a.npy")
    assert data["inputs"]["second"]["input"]["sha256"] == hashlib.sha256(
        (tmp_path / "b.npy").read_bytes()).hexdigest()
    bad = run("validate", PATCH, str(tmp_path / "a.npy"), str(tmp_path / "r.npy"),
              "--device", "cpu")
    assert bad.exit_code == 1, bad.stderr
    assert bad.stdout.startswith("FAIL: the inputs do not collide")


def test_validate_table_is_short_and_names_each_figure(tmp_path):
    """`validate -f table` was ~50 `key: value` lines: it is a verdict line, where it ran and a
    short table of each figure for the pair against the random baseline, with W1's residual
    as in the JSON and the argmax agreement as a percentage (not a number that reads like a
    class index)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((1, 3, 32, 32), dtype=np.float32))
    np.save(tmp_path / "b.npy", rng.random((1, 3, 32, 32), dtype=np.float32))
    result = run("validate", PATCH, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
                 "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    data = json.loads(run("validate", PATCH, str(tmp_path / "a.npy"), str(tmp_path / "b.npy"),
                          "--device", "cpu", "-f", "json").stdout)
    lines = result.stdout.splitlines()
    assert len(lines) <= 15, result.stdout
    assert lines[0].startswith("FAIL: the inputs do not collide (perturbed: input;")
    assert lines[1].startswith("validated on cpu (CPUExecutionProvider), float32")
    assert "{" not in result.stdout and "'" not in result.stdout  # no Python dict or list
    residual = data["collision"]["layer_residual"]
    row = next(line for line in lines if line.startswith("│ W1 residual"))
    assert f"{residual:.3g}" in row
    argmax = next(line for line in lines if "argmax agrees" in line)
    assert "%" in argmax


def test_validate_reads_collides_npz_and_checks_every_colliding_input(tmp_path):
    """`validate MODEL collisions.npz`: collide's own output, original against each colliding
    input, without extracting arrays; exit 0 when all pass, and the JSON lists each."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "--no-validate", "-o", str(out), "-n", "3").exit_code == 0
    result = run("validate", PATCH, str(out / "collisions.npz"), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "3 of 3 colliding input(s) for 'input' pass" in result.stdout
    assert result.stdout.count("PASS") == 3
    data = json.loads(run("validate", PATCH, str(out / "collisions.npz"), "--device", "cpu",
                          "-f", "json").stdout)
    assert [v["passed"] for v in data["validations"]] == [True] * 3
    assert data["source"]["sha256"] == hashlib.sha256(
        (out / "collisions.npz").read_bytes()).hexdigest()
    assert data["input"] == "input"


def test_validate_one_file_that_is_not_collides_npz_is_a_usage_error(tmp_path):
    """With FIRST alone, FIRST must be collide's collisions.npz: a plain .npy says so."""
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("validate", PATCH, str(tmp_path / "a.npy"),
                                     "--device", "cpu"), 2)
    assert "collisions.npz" in line and "validate MODEL FIRST SECOND" in line


def test_validate_identical_inputs_is_a_usage_error(tmp_path):
    """A and B equal: nothing to validate: exit 2 with one line."""
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("validate", PATCH, str(tmp_path / "a.npy"),
                                     str(tmp_path / "a.npy"), "--device", "cpu"), 2)
    assert "identical" in line


def _digits_match(value: float, digits: int, exact: float) -> bool:
    """``value`` is ``exact`` rounded to ``digits`` significant digits."""
    return value == float(f"{exact:.{digits}g}")


def test_collide_report_prints_only_the_resolved_digits_of_tol(tmp_path):
    """The W1 tolerance in report.json is rounded to the digits its float64 SVD resolves
    (max(q, p) * eps64 relative): 13 for the MLP's 256 x 64 W1, not all 17."""
    from onnxcollide.audit.model import audit_model

    out = tmp_path / "o"
    assert run("collide", MLP, "--no-validate", "-o", str(out)).exit_code == 0
    w1 = report_of(out)["w1"]
    row = next(r for r in audit_model(MLP).rows if r.layer.nodes[0] == w1["node"])
    assert (row.layer.q, row.layer.p) == (256, 64)
    assert w1["tol_digits"] == 13 == math.floor(-math.log10(256 * np.finfo(np.float64).eps))
    assert _digits_match(w1["tol"], 13, row.decision.tol)


def test_collide_operator_facts_print_resolved_digits(tmp_path):
    """The conv operator's sigma_max and tol carry the digits their Lanczos residual resolves
    (fewer than 17, at least the 6 that LANCZOS_RTOL = 1e-6 asks for), and tol in the W1 facts
    is the operator's, by the audit's rule for W1 (max(q, p) = 75 for its 3 x 5 x 5 kernel)."""
    out = tmp_path / "o"
    assert run("collide", OVERLAP, "--no-validate", "-o", str(out)).exit_code == 0
    w1 = report_of(out)["w1"]
    op = w1["operator"]
    assert 6 <= op["sigma_max_digits"] < 17 and 6 <= op["tol_digits"] < 17
    assert (w1["tol"], w1["tol_digits"]) == (op["tol"], op["tol_digits"])
    assert op["tol"] == pytest.approx(op["sigma_max"] * 75 * 2.0**-23,
                                      rel=10.0 ** (1 - op["sigma_max_digits"]))


def _fp16_mlp(path: Path, cast_weights: bool) -> str:
    """x (1, 64) -> W1 (64 x 32, rank 32) -> Relu -> W2 (32 x 10). ``cast_weights``: the
    weights are fp16 initializers Cast to float32 and every activation is float32; otherwise
    the whole model (input, weights, activations) is fp16."""
    from builders import FLOAT, FLOAT16, init, make_model, value

    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal(s).astype(np.float16) for s in ((64, 32), (32, 10)))
    elem = FLOAT if cast_weights else FLOAT16
    nodes = [helper.make_node("MatMul", ["x", "W1c" if cast_weights else "W1"], ["h"],
                              name="mm1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2c" if cast_weights else "W2"], ["y"],
                              name="mm2")]
    if cast_weights:
        nodes = [helper.make_node("Cast", ["W1"], ["W1c"], to=FLOAT),
                 helper.make_node("Cast", ["W2"], ["W2c"], to=FLOAT), *nodes]
    return make_model(path, nodes, [value("x", [1, 64], elem)], [value("y", [1, 10], elem)],
                      [init("W1", w1), init("W2", w2)])


def test_fp16_model_is_validated_against_float16_tolerances(tmp_path):
    """An fp16 model run as stored computes in float16: its true collisions (W1 residual a
    fraction of eps16, hundreds of times below a random perturbation's) PASS against
    10 eps16 / 100 eps16 and the report says so; float32's 1e-5 would FAIL every one."""
    model = _fp16_mlp(tmp_path / "fp16.onnx", cast_weights=False)
    out = tmp_path / "o"
    result = run("collide", model, "-n", "2", "--device", "cpu", "-o", str(out))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "float32 (as stored: computes in float16)" in result.stdout
    report = report_of(out)
    eps16 = 2.0**-10
    assert report["runtime"]["computed_in"] == "float16"
    assert report["runtime"]["tolerances"] == {"layer_rtol": 10 * eps16,
                                               "output_rtol": 100 * eps16}
    for row in report["collisions"]:
        check = row["validation"]
        assert check["passed"] and check["computed_in"] == "float16"
        assert 1e-5 < check["collision"]["layer_residual"] < eps16
        assert check["ratios"][0]["ratio"] > 100


def test_fp16_weights_cast_to_float32_keep_float32_tolerances(tmp_path):
    """fp16 weights Cast to float32 before the op: the activations are float32, so the run
    computes in float32 and the float32 tolerances apply."""
    model = _fp16_mlp(tmp_path / "cast.onnx", cast_weights=True)
    out = tmp_path / "o"
    assert run("collide", model, "--device", "cpu", "-o", str(out)).exit_code == 0
    runtime = report_of(out)["runtime"]
    assert runtime["computed_in"] == "float32"
    assert runtime["tolerances"] == {"layer_rtol": 1e-5, "output_rtol": 1e-4}


def test_collide_atol_alone_only_adds_a_floor_to_the_operator_tolerance(tmp_path):
    """On an overlapping conv, `--atol 1e-12` (below the relative part) leaves the operator's
    tolerance as it is without it; it once switched the relative part to the whole operator's
    max(n_in, n_out) * eps, 55 times larger."""
    tols = []
    for extra in ((), ("--atol", "1e-12")):
        out = tmp_path / f"o{len(extra)}"
        assert run("collide", OVERLAP, "--no-validate", "-o", str(out), *extra).exit_code == 0
        tols.append(report_of(out)["w1"]["tol"])
    assert tols[0] == tols[1]


# ------------------------------------------------------------------ broken weights, bad shapes


def _external_copy(tmp_path: Path) -> Path:
    """mlp_dense with every tensor in one external data file, 'ext.onnx.data'."""
    model = onnx.load(MLP)
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    return path


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_collide_and_validate_name_missing_external_data(tmp_path, damage):
    """A missing or truncated external data file: collide used to advise --input-shape (the
    shapes were unknown because the Reshape target was unreadable) and validate named no
    model; both now give the audit's line, with the model path, exit 3."""
    path = _external_copy(tmp_path)
    data = tmp_path / "ext.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:100])
    line = assert_one_line_error(run("collide", str(path), "-o", str(tmp_path / "out"),
                                     "--input-shape", "input=1x1x16x16"), 3)
    assert str(path) in line and "ext.onnx.data" in line and "--input-shape" not in line
    a = tmp_path / "a.npy"
    np.save(a, np.zeros((1, 1, 16, 16), np.float32))
    np.save(tmp_path / "b.npy", np.ones((1, 1, 16, 16), np.float32))
    line = assert_one_line_error(run("validate", str(path), str(a), str(tmp_path / "b.npy")), 3)
    assert str(path) in line and "ext.onnx.data" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tensor", ["fc1.weight", "fc2.weight"])
def test_collide_refuses_nan_weights_like_the_audit(tmp_path, tensor):
    """NaN in W1 crashed the SVD ('internal error'); NaN in a later layer ran and FAILed
    (exit 1). Both are now the audit's exit-3 line naming node and weight."""
    model = onnx.load(MLP)
    for t in model.graph.initializer:
        if t.name == tensor:
            array = onnx.numpy_helper.to_array(t).copy()
            array[0, 0] = np.nan
            t.CopyFrom(onnx.numpy_helper.from_array(array, t.name))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    line = assert_one_line_error(run("collide", str(path), "-o", str(tmp_path / "out")), 3)
    assert "weight contains NaN or Inf" in line and f"weight '{tensor}'" in line
    assert str(path) in line
    audit = assert_one_line_error(run("audit", str(path)), 3)
    assert audit.split(": ", 2)[-1] == line.split(": ", 2)[-1]


@pytest.mark.parametrize("command", [("collide", "-o", "OUT"), ("audit",),
                                     ("audit", "--validate", "--summary-only")])
def test_input_smaller_than_the_first_window_is_a_usage_error(tmp_path, command):
    """mtcnn_pnet (3x3 first conv) at 2x2: audit reported a 'patchify' W1 and exit 0,
    collide and --validate crashed ('window shape cannot be larger'). Now exit 2, one line
    naming the input, the node and the window."""
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command]
    line = assert_one_line_error(run(*args[:1], MTCNN, *args[1:], "--input-shape",
                                     "input_1=1x2x2x3"), 2)
    assert "'input_1' (1x2x2x3) is smaller than W1's window" in line
    assert "node 'conv2d' (Conv) reads 3x3" in line and MTCNN in line


# ------------------------------------------------------------------ hints that fit the command


def _two_inputs(tmp_path: Path) -> str:
    """x [1, 8] -> Gemm (3 x 8, transB) -> + m [1, 3]: only x reaches a linear op."""
    from builders import init, make_model, value

    weight = np.random.default_rng(46).standard_normal((3, 8)).astype(np.float32)
    return make_model(tmp_path / "two_in.onnx",
                      [mk("Gemm", ["x", "w"], ["g"], transB=1), mk("Add", ["g", "m"], ["y"])],
                      [value("x", [1, 8]), value("m", [1, 3])], [value("y", [1, 3])],
                      [init("w", weight)])


def test_hints_name_what_each_command_takes(tmp_path):
    """collide's --input-shape error no longer suggests MODEL:NAME=DIMS (audit's form, which
    collide rejects); validate on a two-input model says to write FIRST as NAME=FILE, not
    --input (which validate lacks)."""
    line = assert_one_line_error(run("collide", PATCH, "-o", str(tmp_path / "o"),
                                     "--input-shape", "patch_embed.onnx:input=1x3x32x32"), 2)
    assert "MODEL:NAME=DIMS" not in line and "Its inputs are: input" in line
    path = _two_inputs(tmp_path)
    for name, fill in (("a.npy", 0.0), ("b.npy", 1.0)):
        np.save(tmp_path / name, np.full((1, 8), fill, np.float32))
    line = assert_one_line_error(run("validate", path, str(tmp_path / "a.npy"),
                                     str(tmp_path / "b.npy")), 2)
    assert "Write FIRST as NAME=FILE (inputs: x, m)" in line and "--input" not in line


def test_input_name_that_reaches_no_linear_op_is_a_usage_error(tmp_path):
    """--input-name m, where m only joins after the Gemm: it said 'no input reaches a linear
    op' (exit 3), though x does. Now exit 2 naming m and the input to use."""
    line = assert_one_line_error(run("collide", _two_inputs(tmp_path), "-o",
                                     str(tmp_path / "o"), "--input-name", "m"), 2)
    assert "--input-name 'm': that input reaches no linear op" in line and "Use 'x'" in line


def test_float64_on_a_quantized_model_names_the_file_exit_2(tmp_path):
    """--precision float64 on a QDQ model with QuantizeLinear: an option that does not fit
    the model (exit 2, not 3), and the line names the model file."""
    from builders import DATA

    model = str(DATA / "lenet5_mnist_qdq.onnx")
    line = assert_one_line_error(run("collide", model, "-o", str(tmp_path / "o"),
                                     "--precision", "float64", "--mode", "approximate"), 2)
    assert model in line and "quantizes activations" in line
    assert not (tmp_path / "o").exists()


def test_collide_exit_1_only_when_a_claimed_exact_collision_fails(tmp_path, monkeypatch):
    """Exit codes as documented: an exact collision that fails validation exits 1 with a line
    that says it was claimed exact (approximate and tiled FAILs exit 0, test above)."""
    import onnxcollide.cli.collide as collide_cli

    real = collide_cli.validate_collisions

    def failing(found, *args, **kwargs):
        done, runtime = real(found, *args, **kwargs)
        return [{**d, "passed": False} for d in done], runtime

    monkeypatch.setattr(collide_cli, "validate_collisions", failing)
    result = run("collide", PATCH, "-o", str(tmp_path / "o"), "--device", "cpu")
    assert result.exit_code == 1, result.stderr
    assert "claimed exact did not pass validation" in result.stderr


def test_collide_help_shows_no_empty_range():
    """--beta has no bounds: its help said '[default: 1.0; x<=None]'."""
    result = run("collide", "--help")
    assert "None" not in result.stdout and "[default: 1.0]" in result.stdout


@pytest.mark.parametrize(("args", "match"), [
    (("--input", "input=A", "--input", "input=B"), "--input gives input 'input' twice"),
    (("--input", "A", "--input-shape", "input=2x3x32x32"),
     "--input-shape and --input both give input 'input'"),
    (("--input", "A", "--resize", "16x16", "--mean", "9,9,9"),
     "--resize, --mean apply to image inputs (PNG/JPEG), and no input is an image"),
    (("--input-shape", "input=1x3x32x32", "--input-shape", "input=1x3x32x32"),
     "--input-shape sets input 'input' twice"),
])
def test_collide_options_that_would_be_ignored_are_usage_errors(tmp_path, args, match):
    """Repeated --input (the last won), --input with --input-shape (the shape was ignored),
    image options with a .npy input (ignored) and a repeated --input-shape: exit 2, one line,
    nothing written."""
    for name in ("A", "B"):
        np.save(tmp_path / f"{name}.npy", np.zeros((1, 3, 32, 32), np.float32))
    files = {"A": str(tmp_path / "A.npy"), "B": str(tmp_path / "B.npy")}
    given = [a.replace("=A", "=" + files["A"]).replace("=B", "=" + files["B"]) if "=" in a
             else files.get(a, a) for a in args]
    line = assert_one_line_error(run("collide", PATCH, "-o", str(tmp_path / "o"),
                                     "--no-validate", *given), 2)
    assert match in line
    assert not (tmp_path / "o").exists()


def test_a_node_onnx_runtime_rejects_at_run_time_gives_one_line_only(tmp_path):
    """A conv after W1 whose kernel_shape disagrees with its weight loads in ONNX Runtime and
    fails when it runs: the command prints its one error line and nothing of ONNX Runtime's
    own log (a second, raw copy of the error written by the C++ library to stderr). On a
    random draw of the declared shape the model is at fault (exit 3); on an input the user
    gave, the input may be (exit 2)."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    path = make_model(
        tmp_path / "bad_conv.onnx",
        [helper.make_node("Conv", ["x", "W1"], ["h"], kernel_shape=[4, 4], strides=[4, 4]),
         helper.make_node("Conv", ["h", "W2"], ["y"], kernel_shape=[3, 7])],
        [value("x", [1, 3, 16, 16])], [value("y", None)],
        [init("W1", rng.random((4, 3, 4, 4)).astype(np.float32)),
         init("W2", rng.random((8, 4, 3, 3)).astype(np.float32))], check=False)
    done = subprocess.run([sys.executable, "-m", "onnxcollide", "collide", path, "-o",
                           str(tmp_path / "out"), "--no-progress"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "kernel_shape is not compatible" in lines[0] and "re-export it" in lines[0]
    assert not (tmp_path / "out").exists()
    np.save(tmp_path / "x.npy", rng.random((1, 3, 16, 16)).astype(np.float32))
    given = run("collide", path, "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o"))
    assert "check the input shapes and values" in assert_one_line_error(given, 2).lower()
