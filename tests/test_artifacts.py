"""report.files and report.images: .npz with settings, PNG strips and basis grids, atomic
writes and permissions."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from onnxcollide.errors import UsageError
from onnxcollide.report.files import save_npz, write_atomically, write_text
from onnxcollide.report.images import (
    GAP,
    LINE,
    PANEL,
    basis_png,
    image_layout,
    label_band,
    plan_strip,
    strip_png,
)


def leftovers(folder) -> list[str]:
    """Temporary files of write_atomically left in ``folder``."""
    return [n for n in os.listdir(folder) if n.startswith(".onnxcollide-")]


@pytest.fixture
def umask_022():
    """Run with umask 022 (restored afterwards)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------------ npz


def test_npz_holds_arrays_and_settings_json(tmp_path):
    """original / colliding / delta / beta arrays come back bit for bit; settings is JSON."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 8, 8)).astype(np.float32)
    delta = rng.standard_normal((2, 1, 3, 8, 8))
    arrays = {"original": x, "colliding": (x + delta).astype(np.float32), "delta": delta,
              "beta": np.array([1.0, 0.5]), "beta_min": np.array([1.0, 0.25])}
    settings = {"count": 2, "beta": 1.0, "basis": [], "valid_range": [0.0, 1.0], "seed": 7}
    path = tmp_path / "c.npz"
    save_npz(str(path), arrays, settings)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {*arrays, "settings"}
        for key, array in arrays.items():
            assert data[key].dtype == array.dtype
            np.testing.assert_array_equal(data[key], array)
        assert json.loads(str(data["settings"])) == settings
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ PNG


@pytest.mark.parametrize("shape, layout", [
    ((1, 3, 32, 32), "nchw"), ((1, 8, 8, 3), "nhwc"), ((1, 1, 16, 16), "nchw"),
])
def test_strip_png_is_three_labelled_panels_side_by_side(tmp_path, shape, layout):
    """[original | perturbation | colliding], each upscaled to 160 px, 6 px white gaps, two
    label lines above and the caption under them."""
    rng = np.random.default_rng(1)
    x = rng.random(shape).astype(np.float32)
    moved = np.clip(x + 0.1 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    path = tmp_path / "strip.png"
    plan = plan_strip(x, moved, layout, ("caption line",))
    strip_png(str(path), x, moved, plan)
    top = label_band(2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size[0] >= 3 * PANEL + 2 * GAP
        assert image.size[1] == top + PANEL + LINE * 1 + 6
        pixels = np.asarray(image)
    hwc = x[0].transpose(1, 2, 0) if layout == "nchw" else x[0]
    expected = np.round(hwc[0, 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels[top, 0], np.broadcast_to(expected, (3,)))
    assert (pixels[top:top + PANEL, PANEL:PANEL + GAP] == 255).all()  # the gap
    assert (pixels[:top] < 128).any() and (pixels[top + PANEL:] < 128).any()  # the text
    assert plan.display_range == (0.0, 1.0) and not plan.widened
    assert leftovers(tmp_path) == []


def test_strip_png_zero_perturbation_is_grey(tmp_path):
    """Where nothing changed the middle panel is mid-grey (the perturbation centred on 128)."""
    x = np.random.default_rng(2).random((1, 3, 32, 32)).astype(np.float32)
    moved = x.copy()
    moved[0, :, :8, :8] += 0.05
    path = tmp_path / "strip.png"
    plan = plan_strip(x, moved, "nchw")
    strip_png(str(path), x, moved, plan)
    top = label_band(2)
    pixels = np.asarray(Image.open(path))
    middle = pixels[top:top + PANEL, PANEL + GAP:2 * PANEL + GAP]
    assert (middle[-1, -1] == 128).all()
    assert (middle[0, 0] == 255).all()  # the largest change reaches white


def test_strip_range_widens_instead_of_clipping():
    """A colliding input outside the original's [0, 1] widens the shared display range (it
    was clipped to [0, 1] with no word), and the caption says so."""
    x = np.full((1, 3, 8, 8), 0.5, np.float32)
    moved = x.copy()
    moved[0, 0, 0, 0] = 3.0
    moved[0, 1, 0, 0] = -1.0
    plan = plan_strip(x, moved, "nchw", ("first",))
    assert plan.display_range == (-1.0, 3.0) and plan.widened
    assert plan.caption[0] == "first" and "nothing clipped" in plan.caption[1]
    assert plan.record()["clipped"] is False


def test_basis_png_grid_layout(tmp_path):
    """8 vectors of a (3, 8, 8) patch, 4 repeats, 6 columns: 2 rows of 96 px tiles, each with
    a label line under it."""
    vectors = np.random.default_rng(3).standard_normal((8, 192))
    path = tmp_path / "basis.png"
    basis_png(str(path), vectors, (3, 8, 8), sigmas=np.arange(8) * 1e-16)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == (6 * (96 + GAP), 2 * (96 + 16 + GAP) - GAP)
        pixels = np.asarray(image)
    cell = 96 + 16 + GAP
    assert (pixels[cell:, 2 * (96 + GAP):] == 255).all()  # the second row holds 2 tiles only
    tile = pixels[:96, :96]
    np.testing.assert_array_equal(tile[:24], tile[24:48])  # the patch repeats (8 px * 3)
    assert (pixels[96:96 + 16, :96] < 128).any()  # its label


def test_basis_png_grey_patch(tmp_path):
    """A (1, 5, 5) patch (one channel) is drawn grey (equal RGB channels)."""
    path = tmp_path / "basis.png"
    basis_png(str(path), np.random.default_rng(4).standard_normal((3, 25)), (1, 5, 5))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    tile = pixels[:80, :80]  # 20 px tiled, upscaled x4 -> 80
    assert (tile[:, :, 0] == tile[:, :, 1]).all() and (tile[:, :, 1] == tile[:, :, 2]).all()


def test_basis_png_without_vectors_is_a_usage_error(tmp_path):
    """An empty kernel: nothing to draw, no file written."""
    with pytest.raises(UsageError, match="no basis vectors"):
        basis_png(str(tmp_path / "basis.png"), np.zeros((0, 12)), (3, 2, 2))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("shape, layout", [
    ((1, 3, 32, 32), "nchw"), ((2, 1, 28, 28), "nchw"), ((1, 224, 224, 3), "nhwc"),
    ((1, 256), None), ((1, 16, 16, 16), None), ((1, 3, 4, 4), None),
])
def test_image_layout(shape, layout):
    """Only 4-D tensors with 1 or 3 channels and sides > 4 look like images."""
    assert image_layout(shape) == layout


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_failure_leaves_nothing(tmp_path):
    """The writer raises half way: no target, no temporary file, the error propagates."""
    target = tmp_path / "out.bin"

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomically(str(target), broken)
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    """An existing target is untouched when the new write fails."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(handle):
        handle.write(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(target), broken)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


class _Unconvertible:
    """Fails when numpy turns it into an array (after the first array is written)."""

    def __array__(self, *args, **kwargs):
        raise RuntimeError("cannot convert")


def test_npz_save_failure_leaves_no_file(tmp_path):
    """The second array fails half way through the archive: no .npz, no temporary file."""
    arrays = {"good": np.zeros((64, 64)), "bad": _Unconvertible()}
    with pytest.raises(RuntimeError, match="cannot convert"):
        save_npz(str(tmp_path / "c.npz"), arrays, {})  # type: ignore[dict-item]
    assert os.listdir(tmp_path) == []


def test_atomic_write_into_a_missing_folder_is_a_usage_error(tmp_path):
    """The folder does not exist: UsageError naming the path."""
    with pytest.raises(UsageError, match="cannot write here"):
        write_atomically(str(tmp_path / "no" / "out.bin"), lambda h: h.write(b"x"))


def test_atomic_write_through_a_symlink_replaces_its_target(tmp_path):
    """-o link.json: the link stays a link and its target gets the new bytes (renaming onto
    the link replaced the link with a file and left the target stale)."""
    target = tmp_path / "real.json"
    target.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomically(str(link), lambda h: h.write(b"new"))
    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def test_atomic_write_to_a_fifo_writes_into_it(tmp_path):
    """A path that is not a regular file (a FIFO here, /dev/null in use) is written into,
    not replaced by a regular file."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_atomically(str(fifo), lambda h: h.write(b"report"))
    reader.join(timeout=10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == [b"report"]


def test_atomic_write_keeps_the_mode_of_an_existing_file(tmp_path, umask_022):
    """A private (0600) report stays private when it is rewritten."""
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    write_atomically(str(target), lambda h: h.write(b"new"))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert target.read_bytes() == b"new"


def test_atomic_write_to_a_folder_is_a_usage_error(tmp_path):
    """The path is a folder: UsageError, the folder is untouched."""
    with pytest.raises(UsageError, match="is a folder"):
        write_atomically(str(tmp_path), lambda h: h.write(b"x"))
    assert leftovers(tmp_path) == []


def test_atomic_write_os_error_is_a_usage_error(tmp_path):
    """A write that fails with an OSError (a full disk) is a UsageError naming the path,
    and leaves nothing behind."""
    import errno

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UsageError, match="No space left on device"):
        write_atomically(str(tmp_path / "out.json"), full)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, mask, mode):
    """Files get 0666 & ~umask like any other file (not mkstemp's 0600)."""
    old = os.umask(mask)
    try:
        write_atomically(str(tmp_path / "out.bin"), lambda h: h.write(b"x"))
        save_npz(str(tmp_path / "c.npz"), {"a": np.zeros(2)}, {})
    finally:
        os.umask(old)
    for name in ("out.bin", "c.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


def test_png_files_are_not_private(tmp_path, umask_022):
    """Under umask 022 a strip PNG is 0644, readable by others as usual."""
    x = np.zeros((1, 3, 8, 8), np.float32)
    strip_png(str(tmp_path / "s.png"), x, x + 0.5, plan_strip(x, x + 0.5, "nchw"))
    assert stat.S_IMODE(os.stat(tmp_path / "s.png").st_mode) == 0o644


def test_a_descriptor_path_is_written_through_the_descriptor(tmp_path):
    """``-o /dev/stdout`` (or /dev/fd/N) writes through the open descriptor: into a pipe, and
    appended to a file opened for appending (``>>``). Resolving it to the file and replacing
    that wiped what was there, and failed on a pipe."""
    log = tmp_path / "log.txt"
    log.write_text("FIRST\n")
    with open(log, "a") as appending:
        write_text(f"/dev/fd/{appending.fileno()}", "report\n")
    assert log.read_text() == "FIRST\nreport\n"
    read_end, write_end = os.pipe()
    with os.fdopen(read_end) as reader:
        with os.fdopen(write_end, "w") as writer:
            write_text(f"/proc/self/fd/{writer.fileno()}", "through a pipe\n")
        assert reader.read() == "through a pipe\n"
    with pytest.raises(UsageError, match="is not an open file descriptor"):
        write_text("/dev/fd/987", "nowhere")
