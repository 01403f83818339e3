"""inputs: model inputs from .npy / .npz / images or seeded random draws, and their errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from builders import DATA, INT64, init, make_model, token_ids_model, value
from onnx import helper
from PIL import Image

from onnxcollide.collide.inputs import ImageOptions, load_inputs, parse_assignments, read_inputs
from onnxcollide.errors import ModelLoadError, UsageError
from onnxcollide.graph.load import load_model

mk = helper.make_node
MODELS = Path(__file__).parent.parent / "models"
PATCH = load_model(str(MODELS / "patch_embed.onnx"))  # input [N,3,32,32]
MLP = load_model(str(MODELS / "mlp_dense.onnx"))  # input [N,1,16,16]
MTCNN = load_model(str(DATA / "mtcnn_pnet.onnx"))  # input_1 [N,M1,M2,3]
DEFAULT = ImageOptions()


def nhwc_model(tmp_path: Path) -> str:
    """x [1,8,8,3] -> Transpose -> Conv k4 s4 (a channels-last image model)."""
    weight = np.random.default_rng(0).standard_normal((5, 3, 4, 4)).astype(np.float32)
    return make_model(tmp_path / "nhwc.onnx",
                      [mk("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                       mk("Conv", ["t", "W"], ["y"], kernel_shape=[4, 4], strides=[4, 4])],
                      [value("x", [1, 8, 8, 3])], [value("y", [1, 5, 2, 2])], [init("W", weight)])


def png(path: Path, pixels: np.ndarray) -> str:
    """Write an RGB (H, W, 3) or grey (H, W) uint8 PNG."""
    Image.fromarray(pixels).save(path)
    return str(path)


def rgb(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def load(model, files, shapes=None, seed=0, image=DEFAULT, value_range=None):
    return load_inputs(model, files, shapes or {}, seed, image, value_range)


# ------------------------------------------------------------------ array files


def test_npy_file_is_loaded_and_cast_to_the_input_dtype(tmp_path):
    """A float64 .npy of the right shape becomes the float32 feed, values kept."""
    array = np.random.default_rng(1).random((1, 3, 32, 32))
    np.save(tmp_path / "x.npy", array)
    feeds = load(PATCH, {None: str(tmp_path / "x.npy")})
    assert list(feeds) == ["input"]
    assert feeds["input"].dtype == np.float32
    np.testing.assert_array_equal(feeds["input"], array.astype(np.float32))


def test_a_conversion_of_the_stored_type_is_a_notice_with_its_rounding(tmp_path):
    """float64 into a float32 input: a notice with the largest rounding; integers that
    float32 holds exactly: 'exactly'; the input's own type: no notice."""
    values = np.random.default_rng(2).random((1, 3, 32, 32))
    cases = {"f64.npy": values, "i64.npy": np.arange(3072).reshape(1, 3, 32, 32),
             "f32.npy": values.astype(np.float32)}
    notices = {}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        _, records = read_inputs(PATCH, {None: str(tmp_path / name)}, {}, 0, DEFAULT)
        notices[name] = records["input"].get("notice")
    change = np.abs(values.astype(np.float32).astype(np.float64) - values).max()
    assert change > 0
    assert notices["f64.npy"] == (f"{tmp_path / 'f64.npy'} holds float64; converted to float32 "
                                  f"(the type of input 'input'), rounding values by up to "
                                  f"{change:.3g}")
    assert notices["i64.npy"] is not None and notices["i64.npy"].endswith(", exactly")
    assert notices["f32.npy"] is None
    # A run of the float64 copy feeds float64 on purpose: no notice that would misname the
    # input's type as float64.
    _, records = read_inputs(PATCH, {None: str(tmp_path / "f32.npy")}, {}, 0, DEFAULT,
                             precision="float64")
    assert "notice" not in records["input"]


def test_npz_named_key_is_chosen_among_several(tmp_path):
    """A .npz with keys 'other' and 'input': the one named like the model input is used."""
    want = np.full((2, 3, 32, 32), 0.25, np.float32)
    np.savez(tmp_path / "x.npz", other=np.zeros((1, 3, 32, 32), np.float32), input=want)
    feeds = load(PATCH, {"input": str(tmp_path / "x.npz")})
    np.testing.assert_array_equal(feeds["input"], want)


def test_npz_single_key_is_used_whatever_its_name(tmp_path):
    """A .npz with one array (default key arr_0) is that input's value."""
    want = np.random.default_rng(2).random((1, 1, 16, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "x.npz", want)
    np.testing.assert_array_equal(load(MLP, {None: str(tmp_path / "x.npz")})["input"], want)


def test_npz_without_a_matching_key_is_a_usage_error(tmp_path):
    """Two keys, neither the input's name: the error lists the keys and the name."""
    np.savez(tmp_path / "x.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(UsageError, match="'input'"):
        load(PATCH, {None: str(tmp_path / "x.npz")})


def test_wrong_shape_is_a_usage_error(tmp_path):
    """A (1,3,16,16) array for patch_embed's [N,3,32,32] input: shape error naming both."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(UsageError, match=r"1x3x16x16.*\?x3x32x32"):
        load(PATCH, {None: str(tmp_path / "x.npy")})


def test_wrong_rank_is_a_usage_error(tmp_path):
    """A 3-D array for a 4-D input."""
    np.save(tmp_path / "x.npy", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(UsageError, match="expects"):
        load(PATCH, {None: str(tmp_path / "x.npy")})


def test_missing_file_is_a_load_error(tmp_path):
    """A file that does not exist: ModelLoadError 'file not found' naming it."""
    missing = str(tmp_path / "nope.npy")
    with pytest.raises(ModelLoadError, match="file not found") as info:
        load(PATCH, {None: missing})
    assert missing in str(info.value)


def test_unreadable_array_file_is_a_load_error(tmp_path):
    """Garbage bytes in a .npy: ModelLoadError, not a numpy traceback."""
    (tmp_path / "x.npy").write_bytes(b"not an array at all")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load(PATCH, {None: str(tmp_path / "x.npy")})


def test_unknown_input_name_is_a_usage_error(tmp_path):
    """--input nope=FILE and --input-shape nope=...: the model's inputs are listed."""
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UsageError, match=r"no input 'nope'.*input"):
        load(PATCH, {"nope": str(tmp_path / "x.npy")})
    with pytest.raises(UsageError, match="no input 'nope'"):
        load(PATCH, {}, shapes={"nope": (1, 3, 32, 32)})


def test_bare_file_for_a_model_with_several_inputs_is_a_usage_error(tmp_path):
    """Two inputs: a file without NAME= is ambiguous."""
    weight = np.ones((5, 3, 4, 4), np.float32)
    path = make_model(tmp_path / "two.onnx",
                      [mk("Conv", ["x", "W"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
                       mk("Add", ["c", "y"], ["out"])],
                      [value("x", [1, 3, 8, 8]), value("y", [1, 5, 2, 2])],
                      [value("out", [1, 5, 2, 2])], [init("W", weight)])
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    model = load_model(path)
    with pytest.raises(UsageError, match="several inputs"):
        load(model, {None: str(tmp_path / "x.npy")})
    feeds = load(model, {"x": str(tmp_path / "x.npy")}, seed=3)
    assert feeds["x"].shape == (1, 3, 8, 8) and not feeds["x"].any()
    assert feeds["y"].shape == (1, 5, 2, 2) and feeds["y"].dtype == np.float32  # random draw


# ------------------------------------------------------------------ random draws


def test_random_draw_is_seeded_with_batch_one():
    """No file: uniform [0, 1) float32, dynamic batch -> 1; same seed same values."""
    a = load(PATCH, {}, seed=5)["input"]
    b = load(PATCH, {}, seed=5)["input"]
    c = load(PATCH, {}, seed=6)["input"]
    assert a.shape == (1, 3, 32, 32) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() < 1.0
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_draw_shape_override_and_value_range():
    """--input-shape input=2x3x32x32 and a (-1, 1) range: that shape, values inside."""
    x = load(PATCH, {}, shapes={"input": (2, 3, 32, 32)}, value_range=(-1.0, 1.0))["input"]
    assert x.shape == (2, 3, 32, 32)
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < 0.0


def test_random_draw_with_dynamic_spatial_dims_needs_a_shape():
    """mtcnn_pnet's input is [N,M1,M2,3]: without --input-shape the draw is refused."""
    with pytest.raises(UsageError, match="dynamic dims") as info:
        load(MTCNN, {})
    x = load(MTCNN, {}, shapes={"input_1": (1, 12, 12, 3)})["input_1"]
    assert x.shape == (1, 12, 12, 3)
    # The hint keeps the fixed dims where the model has them (channels last here) and names
    # the file; it advised 1x3x224x224, which the model refuses.
    assert "--input-shape input_1=1x224x224x3" in info.value.hint
    assert info.value.where.endswith("mtcnn_pnet.onnx")
    assert load(MTCNN, {}, shapes={"input_1": (1, 224, 224, 3)})["input_1"].shape[3] == 3


def test_random_draw_too_large_for_memory_is_a_usage_error():
    """--input-shape 1x100000x100000x3 would draw 223 GiB: a usage error, not a MemoryError."""
    with pytest.raises(UsageError, match="GiB"):
        load(MTCNN, {}, shapes={"input_1": (1, 100_000, 100_000, 3)})


def test_random_draw_for_an_integer_input_is_refused(tmp_path):
    """int64 token ids: a uniform draw is not meaningful: UsageError asking for --input."""
    path = make_model(tmp_path / "tok.onnx",
                      [mk("Gather", ["E", "ids"], ["e"])], [value("ids", [1, 6], INT64)],
                      [value("e", [1, 6, 8])], [init("E", np.ones((50, 8), np.float32))])
    with pytest.raises(UsageError, match="not float") as info:
        load(load_model(path), {})
    assert "--input" in info.value.hint


# ------------------------------------------------------------------ images


def test_png_auto_layout_nchw_scaled_to_unit_range(tmp_path):
    """RGB 32x32 PNG for patch_embed: (1, 3, 32, 32), pixels / 255, channels first."""
    pixels = rgb(7, 32, 32)
    x = load(PATCH, {None: png(tmp_path / "a.png", pixels)})["input"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], pixels.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_png_is_resized_to_the_model_size(tmp_path):
    """A 10x20 (HxW) PNG becomes 32x32 with Pillow's bilinear resize."""
    pixels = rgb(8, 10, 20)
    x = load(PATCH, {None: png(tmp_path / "a.png", pixels)})["input"]
    assert x.shape == (1, 3, 32, 32)
    expected = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR),
                          np.float64)
    np.testing.assert_allclose(x[0], expected.transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_records_say_how_each_input_was_made(tmp_path):
    """read_inputs' records: a random draw's seed, range, shape and dtype; an array file's
    path and SHA-256; an image's size, resize, mode, layout and normalisation."""
    draws, records = read_inputs(PATCH, {}, {}, 5, DEFAULT, (-1.0, 2.0))
    assert records == {"input": {"source": "random", "seed": 5, "range": [-1.0, 2.0],
                                 "shape": [1, 3, 32, 32], "dtype": "float32"}}
    np.testing.assert_array_equal(draws["input"], load(PATCH, {}, seed=5,
                                                       value_range=(-1.0, 2.0))["input"])
    array = tmp_path / "a.npy"
    np.save(array, np.zeros((1, 3, 32, 32), np.float32))
    _, records = read_inputs(PATCH, {None: str(array)}, {}, 0, DEFAULT)
    assert records["input"] == {"source": "file", "path": str(array),
                                "sha256": hashlib.sha256(array.read_bytes()).hexdigest(),
                                "key": None, "shape": [1, 3, 32, 32], "dtype": "float32"}
    packed = tmp_path / "a.npz"
    np.savez(packed, other=np.zeros((1, 3, 32, 32), np.float64))
    _, records = read_inputs(PATCH, {None: str(packed)}, {}, 0, DEFAULT)
    assert (records["input"]["key"], records["input"]["dtype"]) == ("other", "float64")
    image = png(tmp_path / "a.png", rgb(3, 32, 32))
    options = ImageOptions(mean=(0.5,), std=(0.25, 0.5, 0.75))
    _, records = read_inputs(PATCH, {None: image}, {}, 0, options)
    assert records["input"] == {
        "source": "image", "path": image, "sha256": hashlib.sha256(
            Path(image).read_bytes()).hexdigest(), "image_size": [32, 32], "image_mode": "RGB",
        "resized_to": None, "resample": None, "mode": "RGB", "layout": "nchw",
        "scale": 1.0 / 255.0, "mean": [0.5], "std": [0.25, 0.5, 0.75]}
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(rgba)
    _, records = read_inputs(PATCH, {None: str(rgba)}, {}, 0, DEFAULT)
    assert (records["input"]["image_mode"], records["input"]["mode"]) == ("RGBA", "RGB")


def test_an_image_resized_without_resize_gets_a_notice(tmp_path):
    """A 10x20 PNG for a 32x32 model is resized, and the record says so with a notice; with
    --resize the same resize is the user's choice and carries no notice."""
    image = png(tmp_path / "a.png", rgb(8, 10, 20))
    _, records = read_inputs(PATCH, {None: image}, {}, 0, DEFAULT)
    record = records["input"]
    assert (record["image_size"], record["resized_to"], record["resample"]) == \
        ([10, 20], [32, 32], "bilinear")
    assert "is 10x20; it was resized (bilinear) to the model's 32x32" in record["notice"]
    assert "--resize" in record["notice"]
    _, records = read_inputs(PATCH, {None: image}, {}, 0, ImageOptions(size=(32, 32)))
    assert records["input"]["resized_to"] == [32, 32] and "notice" not in records["input"]


def test_png_explicit_resize_option(tmp_path):
    """ImageOptions(size=(12, 12)) on mtcnn (dynamic H, W): a 12x12 channels-last tensor."""
    pixels = rgb(9, 30, 40)
    x = load(MTCNN, {None: png(tmp_path / "a.png", pixels)},
             image=ImageOptions(size=(12, 12)))["input_1"]
    assert x.shape == (1, 12, 12, 3)


def test_png_mean_std_and_scale(tmp_path):
    """scale 1/255 then (x - mean) / std per channel."""
    pixels = rgb(10, 32, 32)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = load(PATCH, {None: png(tmp_path / "a.png", pixels)},
             image=ImageOptions(mean=mean, std=std))["input"]
    want = (pixels / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x[0], want.transpose(2, 0, 1), rtol=1e-5, atol=1e-6)
    raw = load(PATCH, {None: png(tmp_path / "a.png", pixels)},
               image=ImageOptions(scale=1.0))["input"]
    np.testing.assert_array_equal(raw[0], pixels.transpose(2, 0, 1).astype(np.float32))


def test_png_auto_layout_nhwc(tmp_path):
    """A [1,8,8,3] input is channels-last: the image is (1, 8, 8, 3), not transposed."""
    pixels = rgb(11, 8, 8)
    model = load_model(nhwc_model(tmp_path))
    x = load(model, {None: png(tmp_path / "a.png", pixels)})["x"]
    assert x.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(x[0], pixels / 255.0, rtol=1e-6)
    explicit = load(model, {None: png(tmp_path / "a.png", pixels)},
                    image=ImageOptions(layout="nhwc"))["x"]
    assert np.array_equal(x, explicit)


def test_png_forced_to_the_wrong_layout_is_a_shape_error(tmp_path):
    """layout nchw on a channels-last model gives (1, 3, 8, 8): the shape check refuses it."""
    model = load_model(nhwc_model(tmp_path))
    with pytest.raises(UsageError, match="expects 1x8x8x3"):
        load(model, {None: png(tmp_path / "a.png", rgb(12, 8, 8))},
             image=ImageOptions(layout="nchw"))


def test_png_grey_model_converts_to_one_channel(tmp_path):
    """mlp_dense [N,1,16,16]: an RGB PNG is converted to grey (Pillow 'L')."""
    pixels = rgb(13, 16, 16)
    x = load(MLP, {None: png(tmp_path / "a.png", pixels)})["input"]
    assert x.shape == (1, 1, 16, 16)
    grey = np.asarray(Image.fromarray(pixels).convert("L"), np.float64)
    np.testing.assert_allclose(x[0, 0], grey / 255.0, rtol=1e-6)


def test_unreadable_image_is_a_load_error(tmp_path):
    """A .png holding no image: ModelLoadError."""
    (tmp_path / "a.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ModelLoadError, match="cannot read the image"):
        load(PATCH, {None: str(tmp_path / "a.png")})


# ------------------------------------------------------------------ parse_assignments


def test_parse_assignments_named_and_bare(tmp_path):
    """NAME=VALUE pairs by name; one bare value under None; an existing path with '=' is bare."""
    assert parse_assignments(["a=x.npy", "b=y.npy"], "--input") == {"a": "x.npy", "b": "y.npy"}
    assert parse_assignments(["x.npy"], "--input") == {None: "x.npy"}
    odd = tmp_path / "k=v.npy"
    odd.write_bytes(b"")
    assert parse_assignments([str(odd)], "--input") == {None: str(odd)}


def test_parse_assignments_bare_value_with_others_is_a_usage_error():
    """A bare value is only allowed alone."""
    with pytest.raises(UsageError, match="NAME="):
        parse_assignments(["x.npy", "b=y.npy"], "--input")


# ------------------------------------------------------------------ values a cast would hide


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npy_with_nan_or_inf_is_a_usage_error_naming_file_and_input(tmp_path, bad):
    """A .npy holding NaN/inf: UsageError naming the file and the input (it used to be fed as
    is and surfaced later as a wrong blame on --range or a NaN report)."""
    array = np.random.default_rng(1).random((1, 3, 32, 32))
    array[0, 1, 2, 3] = bad
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(UsageError, match="NaN or infinite") as info:
        load(PATCH, {None: str(tmp_path / "x.npy")})
    assert "x.npy" in info.value.one_line() and "'input'" in info.value.one_line()


@pytest.mark.filterwarnings("error")
def test_complex_npy_is_a_usage_error_not_a_dropped_imaginary_part(tmp_path):
    """A complex .npy: UsageError (the cast used to drop the imaginary part with a
    ComplexWarning)."""
    array = (np.random.default_rng(1).random((1, 3, 32, 32)) + 1j).astype(np.complex64)
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(UsageError, match="complex64") as info:
        load(PATCH, {None: str(tmp_path / "x.npy")})
    assert "x.npy" in info.value.one_line()


@pytest.mark.filterwarnings("error")
def test_values_beyond_float32_are_a_usage_error(tmp_path):
    """float64 1e300 into a float32 input: UsageError, not an inf after the cast."""
    np.save(tmp_path / "x.npy", np.full((1, 3, 32, 32), 1e300))
    with pytest.raises(UsageError, match="beyond the range of float32"):
        load(PATCH, {None: str(tmp_path / "x.npy")})


def test_fractions_for_an_integer_input_are_a_usage_error(tmp_path):
    """1.5 for an int64 input: UsageError (the cast would silently truncate it)."""
    path = token_ids_model(tmp_path, length=2)
    np.save(tmp_path / "ids.npy", np.array([[1.0, 1.5]]))
    with pytest.raises(UsageError, match="fractions"):
        load(load_model(path), {None: str(tmp_path / "ids.npy")})
    np.save(tmp_path / "ids.npy", np.array([[1.0, 2.0]]))
    assert load(load_model(path), {None: str(tmp_path / "ids.npy")})["ids"].tolist() == [[1, 2]]


@pytest.mark.parametrize("option, values", [("mean", (0.5, 0.5)), ("std", (1.0, 1.0, 1.0, 1.0))])
def test_png_mean_or_std_count_must_match_the_channels(tmp_path, option, values):
    """--mean with 2 values on an RGB image: UsageError naming the option and the channel
    count (it used to be a numpy broadcast error, reported as an internal error)."""
    path = png(tmp_path / "a.png", rgb(0, 32, 32))
    with pytest.raises(UsageError, match=f"--{option} .* 3 channel") as info:
        load(PATCH, {None: path}, image=ImageOptions(**{option: values}))
    assert "a.png" in info.value.one_line()


def test_png_single_mean_applies_to_every_channel(tmp_path):
    """One --mean value is subtracted from every channel (still allowed)."""
    path = png(tmp_path / "a.png", rgb(0, 32, 32))
    plain = load(PATCH, {None: path})["input"]
    shifted = load(PATCH, {None: path}, image=ImageOptions(mean=(0.5,)))["input"]
    np.testing.assert_allclose(shifted, plain - 0.5, atol=1e-6)


@pytest.mark.filterwarnings("error")
def test_random_draw_beyond_the_dtype_is_a_usage_error():
    """A value range wider than float32 can hold: UsageError, not inf values and a numpy
    overflow warning."""
    with pytest.raises(UsageError, match="does not fit"):
        load(PATCH, {}, value_range=(-1e300, 1e300))


def test_a_draw_over_the_memory_limit_blames_what_chose_its_shape():
    """A seeded draw too large for the memory limit said "give a smaller --input-shape" even
    where no --input-shape was given (the model declared the shape): then it is the model's
    size (exit 3) and the hint says so; with --input-shape it stays a usage error (exit 2)."""
    from onnxcollide.collide.inputs import random_input
    from onnxcollide.limits import MemoryLimit, ResourceLimitError, memory_limit

    rng, dims = np.random.default_rng(0), [1, 3, 40000, 40000]  # 38 GB as float64
    with memory_limit(MemoryLimit(1 << 30, "--max-memory")):
        with pytest.raises(UsageError) as chosen:
            random_input(dims, (1, 3, 40000, 40000), np.dtype("float32"), "x", rng)
        with pytest.raises(ResourceLimitError) as declared:
            random_input(dims, None, np.dtype("float32"), "x", rng, source="big.onnx")
    assert chosen.value.exit_code == 2 and "--input-shape" in chosen.value.one_line()
    line = declared.value.one_line()
    assert declared.value.exit_code == 3 and "--input-shape" not in line
    assert line.startswith("big.onnx: a random draw for input 'x' of shape 1x3x40000x40000")
    assert "--max-memory" in line
