"""`collide` and `validate` as people use them (issue 17): proofs the saved files reproduce,
pictures that show what they claim, honest exact/approximate labels, ranges in pixels, channel
notices, options that would be ignored, progress, and the smaller messages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from builders import DATA, MLP, OVERLAP, PATCH, assert_one_line_error
from builders import run_cli as run
from PIL import Image

NHWC = str(DATA / "resnet_nhwc_torchscript.onnx")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def report_of(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def _image(path: Path, mode: str = "RGB", size: int = 32, seed: int = 0) -> str:
    """A seeded random PNG of ``mode`` (RGB or L), ``size`` x ``size``, values 0..255."""
    channels = 3 if mode == "RGB" else 1
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), np.uint8)
    Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode).save(path)
    return str(path)


# ------------------------------------------------------------------ 1. float64 proofs


def test_a_float64_collision_is_saved_as_proven_and_validates_again(tmp_path):
    """`collide --precision float64` saved float32 `colliding` (the float64 perturbation that
    was proven was lost) and `validate --precision float64` on the saved pair gave FAIL: the
    .npz now holds the float64 input, and validate reproduces PASS from the files, from the
    .npz and from the pair extracted as .npy."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--precision", "float64", "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "PASS" in result.stdout
    with np.load(out / "collisions.npz") as saved:
        original, colliding, delta = saved["original"], saved["colliding"], saved["delta"]
    assert colliding.dtype == np.float64 and delta.dtype == np.float64
    np.testing.assert_allclose(colliding[0] - original, delta[0], rtol=0, atol=1e-15)
    again = run("validate", PATCH, str(out / "collisions.npz"), "--precision", "float64",
                "--device", "cpu", "-f", "json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["validations"][0]["collision"]["layer_residual"] < 1e-12
    np.save(tmp_path / "o.npy", original)
    np.save(tmp_path / "c.npy", colliding[0])
    pair = run("validate", PATCH, str(tmp_path / "o.npy"), str(tmp_path / "c.npy"),
               "--precision", "float64", "--device", "cpu", "-f", "json")
    assert pair.exit_code == 0, pair.stdout
    assert json.loads(pair.stdout)["collision"]["layer_residual"] < 1e-12


def test_float64_collisions_validated_in_float32_get_a_notice(tmp_path):
    """A float64 .npz checked in float32 is rounded first: validate says so."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "--precision", "float64", "-o", str(out),
               "--device", "cpu").exit_code == 0
    result = run("validate", PATCH, str(out / "collisions.npz"), "--device", "cpu")
    assert "holds float64 colliding inputs" in result.stderr
    assert "--precision float64" in result.stderr


# ------------------------------------------------------------------ 2. shapes through the path


def test_a_pytorch_nhwc_export_has_known_shapes_after_its_pad(tmp_path):
    """A TorchScript export with an NHWC input (Transpose, Cast, a Pad whose pads come from
    a chain of constant ops) said W1's input shape is unknown and to pass --input-shape, which
    did not help: the shapes flow through the path now, so the audit counts blind elements
    and no message suggests --input-shape. The constant Pad folds into the conv's zero
    padding, so collide analyses the whole conv operator and says honestly that it has no
    exact collision (full column rank, smallest relative singular value about 0.048)."""
    audited = run("audit", NHWC, "-f", "json")
    assert audited.exit_code == 0, audited.stderr
    first = json.loads(audited.stdout)["models"][0]["first_layer"]
    assert first["blind_elements"] == 0 and first["input_elements"] == 32 * 32 * 3
    result = run("collide", NHWC, "-o", str(tmp_path / "o"), "--device", "cpu")
    assert "--input-shape" not in result.stderr and "unknown" not in result.stderr
    assert result.exit_code == 0, result.stderr
    assert "no exact collision at this layer" in result.stdout + result.stderr
    w1 = report_of(tmp_path / "o")["w1"]
    assert "the path's constant border as its zero padding" in w1["method"]
    assert w1["operator"]["null_space_at_least"] == 0
    assert 0.01 < w1["operator"]["relative"][0] < 0.1


# ------------------------------------------------------------------ 3. pictures


def _panels(png: Path) -> tuple[np.ndarray, int]:
    """The strip as an (H, W, 3) array and the row where the panels start (below labels)."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    white = np.all(pixels == 255, axis=(1, 2))
    first_panel_row = int(np.argmax(~white[20:])) + 20
    return pixels, first_panel_row


def test_strips_are_labelled_and_never_clip_a_colliding_input(tmp_path):
    """With `--basis 0,3 --beta 8` the colliding input leaves [0, 1]: the strip showed
    clip(colliding, 0, 1) with no word. Now both inputs are shown in a range that holds both,
    the report records how each strip was drawn, and every panel and figure is labelled."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--basis", "0,3", "--count", "3", "--beta", "8", "-o",
                 str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "collisions.npz") as saved:
        colliding = saved["colliding"]
    report = report_of(out)
    for k in range(3):
        drawn = report["rendering"][f"strip-{k}.png"]
        lo, hi = drawn["display_range"]
        assert lo <= float(colliding[k].min()) and hi >= float(colliding[k].max())
        assert drawn["widened_to_avoid_clipping"] is True and drawn["clipped"] is False
        assert any("nothing clipped" in line for line in drawn["caption"])
        assert any("PASS" in line for line in drawn["caption"])
    pixels, top = _panels(out / "strip-0.png")
    assert top > 10  # a band of labels above the panels
    assert (pixels[:top] < 128).any()  # the labels are drawn (dark text on white)
    assert (pixels[-30:] < 128).any()  # and the figures under the panels


def test_the_strip_caption_and_labels_name_the_perturbations_scale(tmp_path):
    """The perturbation panel says which value is black and which white; the caption has
    beta, |d|, W1's residual against the random baseline and the verdict."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "-o", str(out), "--device", "cpu").exit_code == 0
    drawn = report_of(out)["rendering"]["strip-0.png"]
    scale = drawn["perturbation_black_white"][1]
    with np.load(out / "collisions.npz") as saved:
        assert scale == pytest.approx(float(np.abs(saved["delta"][0]).max()))
    caption = " ".join(drawn["caption"])
    for word in ("beta", "|d|_2", "W1 residual", "random", "PASS", "exact"):
        assert word in caption


def test_basis_image_labels_each_vector_with_its_singular_value(tmp_path):
    """basis.png had bare tiles: each is labelled with its index and ||W^T v||, and the
    report lists those values."""
    out = tmp_path / "o"
    assert run("collide", PATCH, "-o", str(out), "--no-validate",
               "--basis-images", "4").exit_code == 0
    sigmas = report_of(out)["rendering"]["basis.png"]["sigmas"]
    assert len(sigmas) == 4 and max(sigmas) < 1e-10  # the exact kernel: 0 up to rounding
    pixels = np.asarray(Image.open(out / "basis.png").convert("RGB"))
    assert (pixels[-14:] < 128).any()  # label text under the tiles


# ------------------------------------------------------------------ 4, 5. exact or approximate


def test_approximate_rows_say_so_in_every_format(tmp_path):
    """`--mode approximate` printed plain PASS/FAIL rows: every row says exact or
    approximate, and an approximate one states its size against the input and how far the
    random baseline is from the limit."""
    out = tmp_path / "o"
    result = run("collide", OVERLAP, "--mode", "approximate", "-o", str(out), "--device",
                 "cpu")
    assert result.exit_code == 0, result.stderr
    row = report_of(out)["collisions"][0]
    assert row["exact"] is False and row["relative_singular_value"] > 0
    assert 0 < row["delta_relative"] < 1 and row["elements"] == 3 * 32 * 32
    assert row["baseline_over_limit"] > 1
    assert "│ approx. │" in result.stdout
    assert "colliding input 0 is approximate" in result.stdout
    assert "of |x|_2" in result.stdout and "x the limit" in result.stdout
    exact = run("collide", PATCH, "-o", str(tmp_path / "p"), "--device", "cpu")
    assert "│ exact │" in exact.stdout and report_of(tmp_path / "p")["collisions"][0]["exact"]


def test_a_loose_rtol_labels_its_collisions_approximate(tmp_path):
    """`--rtol 0.05` reported `"exact": true` and both inputs FAILed with exit 1: directions
    whose singular values sit above float32 rounding are approximate, so the FAIL is a note
    (exit 0) and the report says why."""
    out = tmp_path / "o"
    result = run("collide", PATCH, "--rtol", "0.05", "--count", "2", "-o", str(out),
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    report = report_of(out)
    assert report["w1"]["exact"] is False
    assert all(not row["exact"] for row in report["collisions"])
    assert any("above float32 rounding" in note for note in report["notes"])
    assert "not claimed exact" in result.stderr


def test_approximate_collisions_are_distinct_and_a_basis_index_works(tmp_path):
    """`--count 3 --mode approximate` gave identical (or negated) inputs and `--basis 1`
    failed although 4 small singular values were listed: each input takes its own direction,
    and the report says how many distinct ones there are."""
    out = tmp_path / "o"
    result = run("collide", OVERLAP, "--mode", "approximate", "-n", "3", "-o", str(out),
                 "--no-validate")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "collisions.npz") as saved:
        deltas = saved["delta"].reshape(3, -1)
    for i in range(3):
        for j in range(i + 1, 3):
            cosine = deltas[i] @ deltas[j] / np.linalg.norm(deltas[i]) / np.linalg.norm(deltas[j])
            assert abs(cosine) < 0.99, (i, j, cosine)
    assert any("distinct approximate direction" in n for n in report_of(out)["notes"])
    basis = run("collide", OVERLAP, "--mode", "approximate", "--basis", "1", "-o",
                str(tmp_path / "b"), "--no-validate")
    assert basis.exit_code == 0, basis.stderr


# ------------------------------------------------------------------ 6, 7. ranges, channels


def test_range_is_in_pixel_units_for_an_image_with_mean_and_std(tmp_path):
    """`--range 0,1` on a normalised image input exited 2 ('not inside'): for an image it is
    in image units (pixel x --scale) and mapped per channel through --mean/--std, so every
    colliding input maps back into [0, 1]; --range-space model keeps the model's units."""
    png = _image(tmp_path / "x.png")
    norm = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
    out = tmp_path / "o"
    result = run("collide", PATCH, "--input", png, *norm, "--range", "0,1", "-n", "2",
                 "--beta", "40", "-o", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "collisions.npz") as saved:
        colliding = saved["colliding"].astype(np.float64)
    pixels = colliding * np.reshape(STD, (1, 1, 3, 1, 1)) + np.reshape(MEAN, (1, 1, 3, 1, 1))
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert pixels.min() < 0.01 or pixels.max() > 0.99  # the bound did limit beta
    settings = report_of(out)["settings"]
    assert settings["channel_range"]["axis"] == 1 and len(settings["channel_range"]["low"]) == 3
    model_units = run("collide", PATCH, "--input", png, *norm, "--range", "0,1",
                      "--range-space", "model", "-o", str(tmp_path / "m"), "--no-validate")
    assert "not inside --range" in assert_one_line_error(model_units, 2)
    assert "image units" in run("collide", "--help").stdout


def test_range_space_image_needs_an_image_input(tmp_path):
    """--range-space image for a random draw would be ignored: a usage error."""
    line = assert_one_line_error(run("collide", PATCH, "--range", "0,1", "--range-space",
                                     "image", "-o", str(tmp_path / "o"), "--no-validate"), 2)
    assert "not read from an image file" in line


def test_channel_conversions_are_told(tmp_path):
    """A grey PNG into a 3-channel model, or RGB into a 1-channel one, was converted with no
    notice (a resize got one): each gets a notice line now."""
    grey = _image(tmp_path / "g.png", "L")
    result = run("collide", PATCH, "--input", grey, "-o", str(tmp_path / "a"), "--no-validate")
    assert result.exit_code == 0, result.stderr
    assert "notice:" in result.stderr and "converted to RGB" in result.stderr
    colour = _image(tmp_path / "c.png", "RGB", size=16)
    result = run("collide", MLP, "--input", colour, "-o", str(tmp_path / "b"), "--no-validate")
    assert result.exit_code == 0, result.stderr
    assert "converted to L" in result.stderr


def test_mean_for_a_one_channel_model_talks_about_the_models_channels(tmp_path):
    """--mean with 3 values on a grey-input model said 'the image has 1 channel(s)' for an
    RGB photo: the message is about the model's input."""
    colour = _image(tmp_path / "c.png", "RGB", size=16)
    line = assert_one_line_error(run("collide", MLP, "--input", colour, "--mean",
                                     "0.5,0.5,0.5", "-o", str(tmp_path / "o"),
                                     "--no-validate"), 2)
    assert "the model's input takes 1 channel" in line
    assert "the image has" not in line


# ------------------------------------------------------------------ 10, 11. options, progress


@pytest.mark.parametrize("option", [("--device", "cpu"), ("--precision", "float64")])
def test_validation_options_with_no_validate_are_usage_errors(tmp_path, option):
    """--device/--precision with --no-validate were accepted and ignored."""
    line = assert_one_line_error(run("collide", PATCH, "--no-validate", *option, "-o",
                                     str(tmp_path / "o")), 2)
    assert option[0] in line and "--no-validate" in line
    assert not (tmp_path / "o").exists()


def test_progress_names_each_phase(tmp_path):
    """collide took 25-50 s on real models with nothing on screen: --progress names each
    phase on stderr (one line each where stderr is not a terminal)."""
    result = run("collide", PATCH, "--progress", "-n", "2", "-o", str(tmp_path / "o"),
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for phase in ("loading the model", "the kernel of W1", "validating 2 colliding",
                  "2/2", "writing the outputs"):
        assert phase in result.stderr, result.stderr
    quiet = run("collide", PATCH, "--no-progress", "-o", str(tmp_path / "q"), "--device", "cpu")
    assert quiet.stderr == ""
    overlap = run("collide", OVERLAP, "--progress", "-o", str(tmp_path / "r"), "--no-validate")
    assert "analysing W1's whole operator" in overlap.stderr


# ------------------------------------------------------------------ 12. smaller ones


def test_a_reference_evaluator_run_names_no_empty_providers_and_no_raw_status(tmp_path):
    """'validated on cpu ()' and a raw `[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED` in the
    float64 notice."""
    result = run("collide", OVERLAP, "--mode", "approximate", "--precision", "float64", "-o",
                 str(tmp_path / "o"), "--device", "cpu")
    assert "validated on cpu, float64, engine onnx.reference" in result.stdout
    assert "()" not in result.stdout
    assert "[ONNXRuntimeError]" not in result.stderr and "(not implemented)" in result.stderr


def test_one_image_option_is_named_in_the_singular(tmp_path):
    """'--mean apply to image inputs' read wrong: one option 'applies'."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("collide", PATCH, "--input", str(tmp_path / "x.npy"),
                                     "--mean", "0.5", "-o", str(tmp_path / "o")), 2)
    assert "--mean applies to image inputs" in line and "drop --mean" in line.lower()


def test_a_text_file_named_npy_gets_no_pickle_advice(tmp_path):
    """numpy's message advises allow_pickle for a file it cannot parse: never suggest loading
    pickles from an untrusted file."""
    (tmp_path / "x.npy").write_text("not an array\n")
    line = assert_one_line_error(run("collide", PATCH, "--input", str(tmp_path / "x.npy"),
                                     "-o", str(tmp_path / "o")), 3)
    assert "pickle" in line and "allow_pickle" not in line
    assert "reads without pickles" in line


def test_no_movable_unit_without_region_does_not_ask_for_a_larger_region(tmp_path):
    """'Choose a larger region' when no --region was given: an input sitting on the bounds
    of --range leaves no element free to move, and the message says that."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    line = assert_one_line_error(run("collide", PATCH, "--input", str(tmp_path / "x.npy"),
                                     "--range", "0,1", "-o", str(tmp_path / "o"),
                                     "--no-validate"), 2)
    assert "region" not in line and "bound of --range" in line
    assert "widen --range" in line.lower()


def test_a_range_note_for_one_unit_prints_one_value(tmp_path):
    """A dense W1 on one sample is one unit: its bounded beta printed as '[0.1759, 0.1759]'."""
    out = tmp_path / "o"
    result = run("collide", MLP, "--range", "0,1", "--beta", "50", "-o", str(out),
                 "--no-validate")
    assert result.exit_code == 0, result.stderr
    note = next(n for n in report_of(out)["notes"] if "bounded" in n)
    assert "bounded to " in note and "[" not in note.split("bounded to ")[1].split(" to ")[0]


def test_summary_shows_a_large_nullity_w1_with_a_thousands_separator(tmp_path):
    """nullity(W1) lacked the separator the other counts have."""
    import onnx
    from onnx import TensorProto, helper

    weight = np.random.default_rng(0).standard_normal((2000, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [onnx.numpy_helper.from_array(weight, "w")])
    path = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = run("audit", str(path), "--summary-only")
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "wide.onnx" in line)
    assert "1,990" in row
    assert io.StringIO(row).read().count("1,990") == 2  # sum of nullities and nullity(W1)
