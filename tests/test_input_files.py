"""Input files a user names (collide --input, validate FIRST/SECOND or collisions.npz) that
cannot be used: one line, the right exit code, no internal error, nothing allocated past
--max-memory. Each case was found by a review of the command line's options."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
from builders import MLP, MTCNN, assert_one_line_error
from builders import run_cli as run
from PIL import Image

GOOD = np.random.default_rng(0).random((1, 1, 16, 16)).astype(np.float32)


def _npy(folder, name: str, array: np.ndarray) -> str:
    path = folder / name
    np.save(path, array)
    return str(path)


def _collide(*args: str):
    return run("collide", MLP, "--no-validate", *args)


@pytest.fixture
def files(tmp_path):
    """A folder with an object-array .npz and truncated .npz and .npy files."""
    objects = tmp_path / "objects.npz"
    # an object array, as np.savez writes it
    with zipfile.ZipFile(objects, "w") as archive, archive.open("input.npy", "w") as member:
        np.lib.format.write_array(member, np.array([{"a": 1}], dtype=object),
                                  allow_pickle=True)
    good_npz = tmp_path / "good.npz"
    np.savez(good_npz, input=GOOD)
    (tmp_path / "truncated.npz").write_bytes(good_npz.read_bytes()[:200])
    good_npy = tmp_path / _npy(tmp_path, "good.npy", GOOD)
    (tmp_path / "truncated.npy").write_bytes(good_npy.read_bytes()[:150])
    return tmp_path


@pytest.mark.parametrize("name", ["objects.npz", "truncated.npz", "truncated.npy"])
def test_an_unreadable_array_file_is_one_line_exit_3(files, name):
    """An object array in a .npz and a truncated .npz ended in internal errors (ValueError,
    BadZipFile); a truncated .npy was already caught. All three: exit 3, one line."""
    line = assert_one_line_error(_collide("--input", str(files / name),
                                          "-o", str(files / "out")), 3)
    assert "cannot read the array file" in line and "numpy.save" in line
    assert not (files / "out").exists()


def test_a_folder_or_a_pipe_is_named_as_such(tmp_path):
    """A folder and a FIFO were both "file not found"; a FIFO given to validate alone
    blocked (zipfile read it)."""
    folder = tmp_path / "arrays.npy"
    folder.mkdir()
    line = assert_one_line_error(_collide("--input", str(folder)), 3)
    assert "is a folder" in line
    pipe = tmp_path / "pipe.npy"
    os.mkfifo(pipe)
    for result in (_collide("--input", str(pipe)), run("validate", MLP, str(pipe))):
        assert "is not a regular file" in assert_one_line_error(result, 3)
    missing = assert_one_line_error(run("validate", MLP, str(tmp_path / "missing.npz")), 3)
    assert "file not found" in missing  # it said FIRST must be a collisions.npz


def test_an_empty_batch_and_a_scalar_are_the_users_to_fix(tmp_path):
    """A batch of 0 samples blamed the model ("please report the model", exit 3); a scalar
    printed an empty shape ("has shape , the model expects")."""
    empty = assert_one_line_error(_collide("--input", _npy(tmp_path, "empty.npy",
                                                           GOOD[:0])), 2)
    assert "has shape 0x1x16x16: it holds no value" in empty
    scalar = assert_one_line_error(_collide("--input", _npy(tmp_path, "scalar.npy",
                                                            np.float32(1))), 2)
    assert "has shape () (a scalar), the model expects ?x1x16x16" in scalar


def test_an_array_file_over_the_memory_limit_is_refused_before_it_is_read(tmp_path):
    """--max-memory applied to draws and Gram matrices only; a file's array was read whatever
    its size. Now its size (a .npy's data, a .npz member's) is checked first."""
    big = _npy(tmp_path, "big.npy", np.zeros((64, 1, 16, 16), np.float32))  # 64 KiB
    np.savez(tmp_path / "big.npz", input=np.zeros((64, 1, 16, 16), np.float32))
    for path in (big, str(tmp_path / "big.npz")):
        line = assert_one_line_error(_collide("--input", path, "--max-memory", "4K"), 3)
        assert "over the memory limit of 4.0 KiB (--max-memory 4K)" in line
        assert line.endswith("or give a smaller array or image.")  # not "check the model"


def test_a_resize_the_model_cannot_take_is_refused_before_resizing(tmp_path):
    """--resize 99999x99999 resized first (13 GB, past --max-memory) and only then said the
    model takes 16 x 16; now a size the model fixes otherwise is refused at once, and one it
    leaves open is checked against the memory limit."""
    image = tmp_path / "grey.png"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(image)
    fixed = assert_one_line_error(_collide("--input", str(image), "--resize", "99999x99999"), 2)
    assert "--resize 99999x99999 does not fit the model, whose images are 16x16" in fixed
    open_size = assert_one_line_error(run("collide", MTCNN, "--no-validate", "--input",
                                          str(image), "--resize", "99999x99999",
                                          "--max-memory", "1G"), 2)
    assert "the image resized to 99999x99999" in open_size and "--resize" in open_size


def test_a_count_over_the_memory_limit_is_refused(tmp_path):
    """-n 100000000 grew past --max-memory until it was killed."""
    line = assert_one_line_error(_collide("-n", "100000000", "--max-memory", "1G",
                                          "-o", str(tmp_path / "out")), 2)
    assert "100000000 colliding inputs" in line and "Give a smaller --count" in line
    assert not (tmp_path / "out").exists()


def _saved(tmp_path, model: str = MLP) -> str:
    out = tmp_path / "made"
    assert run("collide", model, "--no-validate", "-o", str(out)).exit_code == 0
    return str(out / "collisions.npz")


def test_a_collisions_file_with_no_colliding_input_is_not_a_pass(tmp_path):
    """0 of 0 colliding inputs passed with exit 0."""
    saved = dict(np.load(_saved(tmp_path)))
    saved["colliding"] = saved["colliding"][:0]
    np.savez(tmp_path / "none.npz", **saved)
    line = assert_one_line_error(run("validate", MLP, str(tmp_path / "none.npz")), 2)
    assert "holds no colliding input" in line


def test_collisions_of_another_model_say_so(tmp_path):
    """Collisions of mlp_dense validated on patch_embed blamed an --input-shape never
    given."""
    from builders import PATCH

    line = assert_one_line_error(run("validate", PATCH, _saved(tmp_path)), 2)
    assert "the model expects ?x3x32x32: were these collisions made for another model?" in line
    assert "--input-shape" not in line


@pytest.mark.parametrize(("layer", "why"), [
    ("fc1.weight", "does not depend on the model's inputs"),
    ("input", "is a model input"), ("", "is empty")])
def test_validate_layer_must_be_a_layers_output(tmp_path, layer, why):
    """--layer fc1.weight reported a residual of 0 (a weight is the same for both inputs);
    so would a tensor computed from weights alone."""
    first, second = _npy(tmp_path, "a.npy", GOOD), _npy(tmp_path, "b.npy", GOOD * 0.5)
    line = assert_one_line_error(run("validate", MLP, first, second, "--layer", layer), 2)
    assert f"--layer '{layer}' {why}" in line


def test_an_empty_input_path_says_so(tmp_path):
    """An empty FIRST, SECOND or --input said "file not found" and named nothing."""
    good = _npy(tmp_path, "a.npy", GOOD)
    for result in (run("validate", MLP, ""), run("validate", MLP, good, ""),
                   _collide("--input", ""), _collide("--input", "input=")):
        assert "an input file's path is empty" in assert_one_line_error(result, 2)


def test_a_large_image_is_judged_by_its_decoded_size_not_pillows_limit(tmp_path):
    """The memory limit decides on an image from its decoded bytes (one byte per grey pixel
    here) and the float64 values at the model's size: a 3000 x 3000 grey image fits 200 MB
    (it was refused, counted as 4 float64 channels), and Pillow's own pixel limit no longer
    refuses what the limit allows."""
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((3000, 3000), np.uint8)).save(image)
    made = run("collide", MLP, "--no-validate", "--input", str(image), "--max-memory", "200M",
               "-o", str(tmp_path / "out"))
    assert made.exit_code == 0, made.stderr
    line = assert_one_line_error(_collide("--input", str(image), "--max-memory", "4M"), 3)
    assert "the decoded image (3000x3000)" in line and "give a smaller array or image" in line
    from PIL import Image as pillow

    saved = pillow.MAX_IMAGE_PIXELS
    pillow.MAX_IMAGE_PIXELS = 100_000  # the 9M-pixel image is past Pillow's bomb limit (2x)
    try:
        done = run("collide", MLP, "--no-validate", "--input", str(image), "-o",
                   str(tmp_path / "again"))
        restored = pillow.MAX_IMAGE_PIXELS  # the loader gives Pillow its limit back
    finally:
        pillow.MAX_IMAGE_PIXELS = saved
    assert done.exit_code == 0, done.stderr
    assert restored == 100_000


@pytest.mark.parametrize(("edit", "code", "words"), [
    (lambda saved: saved.update(settings=np.array("{not json")), 3,
     "its 'settings' entry is not JSON"),
    (lambda saved: saved["colliding"].__setitem__((0, 0, 0, 0, 0), np.nan), 2,
     "its 'colliding' array holds values that are not finite numbers"),
])
def test_a_collisions_file_with_broken_entries_says_which(tmp_path, edit, code, words):
    """A settings entry that is not JSON was "not an .npz file numpy reads"; NaN colliding
    inputs gave a FAIL row (exit 1) where a NaN pair of files is refused (exit 2)."""
    saved = dict(np.load(_saved(tmp_path)))
    edit(saved)
    np.savez(tmp_path / "edited.npz", **saved)
    line = assert_one_line_error(run("validate", MLP, str(tmp_path / "edited.npz")), code)
    assert words in line


def test_collide_with_standard_output_closed_keeps_its_exit_code(tmp_path):
    """collide wrote its outputs, then exited 2 because its table could not be shown; the
    outputs are its result, so the table is left out and the exit code stands."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "onnxcollide", "collide", MLP, "-o",
                           str(tmp_path / "out")], stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False, preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["collisions.npz", "report.json",
                                                    "strip-0.png"]
