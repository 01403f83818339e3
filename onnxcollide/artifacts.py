"""Files a person can use: colliding inputs (.npz), PNG strips and basis-vector images.

Everything is written to a temporary file first and renamed, so no half-written file is left.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from onnxcollide.errors import UsageError


def write_stdout(text: str) -> None:
    """Print ``text`` on standard output and flush it.

    Raises:
        UsageError: the write failed (a full disk, a closed pipe), as for an ``-o`` file; the
            descriptor is then pointed at /dev/null so the exit's own flush stays quiet.
    """
    import sys

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass  # not a real descriptor (a test's captured stream)
        raise UsageError(f"cannot write here ({exc.strerror or exc})",
                         "standard output") from exc


def write_atomically(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file next to ``path``, then rename it into place.

    A symbolic link is followed (its target is replaced, the link stays), an existing file
    keeps its permission bits, and a path that is not a regular file (``/dev/null``, a FIFO)
    is written directly: renaming over it would replace the device with a file. A path that
    names an open descriptor (``/dev/stdout``, ``/dev/fd/3``) is written through it.

    Raises:
        UsageError: the folder does not exist, ``path`` is a folder, or it cannot be written.
    """
    claimed = claim_descriptor(path)
    if claimed is not None:
        try:
            write_claimed(claimed, path, write)
        finally:
            os.close(claimed)
        return
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise UsageError("is a folder", path, "give a file name")
    try:
        if os.path.exists(target) and not stat.S_ISREG(os.stat(target).st_mode):
            with open(target, "wb") as out:
                write(out)
            return
        _replace_with_temp(target, write)
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from exc


_STANDARD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_DESCRIPTOR_FOLDERS = ("/dev/fd/", "/proc/self/fd/")


def names_descriptor(path: str) -> bool:
    """Whether ``path`` stands for an open descriptor (``/dev/stdout``, ``/dev/fd/3``)."""
    return _open_descriptor(path) is not None


def _open_descriptor(path: str) -> int | None:
    """The file descriptor a path such as ``/dev/stdout`` or ``/dev/fd/3`` names, else None.

    Such a path stands for whatever the descriptor is open on (a pipe, a terminal, a file
    opened for appending by ``>>``): it is written through the descriptor, not resolved to a
    file and replaced (which failed on a pipe and wiped a file being appended to).
    """
    if path in _STANDARD_STREAMS:
        return _STANDARD_STREAMS[path]
    for folder in _DESCRIPTOR_FOLDERS:
        number = path[len(folder):]
        if path.startswith(folder) and number.isascii() and number.isdigit():
            return int(number)
    return None


def claim_descriptor(path: str) -> int | None:
    """A duplicate, taken now, of the descriptor ``path`` names (``/dev/stdout``,
    ``/dev/fd/N``); None for any other path. Take it before any work: a descriptor that was
    not open when the program started may be opened meanwhile on a file of its own (ONNX
    Runtime's cache), and the report would go there.

    Raises:
        UsageError: the descriptor is not open.
    """
    descriptor = _open_descriptor(path)
    if descriptor is None:
        return None
    try:
        return os.dup(descriptor)
    except OSError as exc:
        raise UsageError(f"is not an open file descriptor ({exc.strerror or exc})", path,
                         "open it in the shell (e.g. 3>file) or give a file name") from exc


def write_claimed(claimed: int, path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write through a descriptor from ``claim_descriptor`` (its position and append mode
    are kept); the caller closes it."""
    try:
        with os.fdopen(claimed, "wb", closefd=False) as out:
            write(out)
    except OSError as exc:
        raise UsageError(f"cannot write here ({exc.strerror or exc})", path) from exc


def write_text(path: str, text: str) -> None:
    """Write ``text`` as UTF-8, atomically (see ``write_atomically``)."""
    write_atomically(path, lambda out: out.write(text.encode("utf-8")))


def _replace_with_temp(target: str, write: Callable[[BinaryIO], object]) -> None:
    """Write a temporary file in ``target``'s folder and rename it onto ``target``."""
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".onnxcollide-",
                                    suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the rename makes it the file
        if os.path.exists(target):
            mode = stat.S_IMODE(os.stat(target).st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600; give a new file the usual permissions
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def save_npz(path: str, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> None:
    """Save arrays plus the settings that made them (as a JSON string under ``settings``)."""
    payload = dict(arrays)
    payload["settings"] = np.array(json.dumps(settings, sort_keys=True))
    write_atomically(path, lambda out: np.savez_compressed(out, **payload))  # type: ignore[arg-type]


# ------------------------------------------------------------------ images


def image_layout(shape: tuple[int, ...]) -> str | None:
    """``nchw`` / ``nhwc`` when a 4-D input looks like a batch of images, else None."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3) and shape[2] > 4 and shape[3] > 4:
        return "nchw"
    if shape[3] in (1, 3) and shape[1] > 4 and shape[2] > 4:
        return "nhwc"
    return None


def _hwc(sample: np.ndarray, layout: str) -> np.ndarray:
    """One sample (C, H, W) or (H, W, C) -> (H, W, C)."""
    return sample.transpose(1, 2, 0) if layout == "nchw" else sample


def _to_uint8(panel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((panel - lo) / span * 255.0), 0, 255).astype(np.uint8)


def _upscale(panel: np.ndarray, target: int = 160) -> np.ndarray:
    factor = max(1, target // max(panel.shape[0], panel.shape[1]))
    return panel.repeat(factor, axis=0).repeat(factor, axis=1)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    mode = "L" if pixels.shape[2] == 1 else "RGB"
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def strip_png(path: str, original: np.ndarray, colliding: np.ndarray, layout: str) -> None:
    """Save [original | perturbation | colliding] for sample 0, side by side.

    The original and the colliding image share one display range (the original's, or [0, 1]
    when it lies inside), so what changed is visible; the perturbation is centred on grey and
    scaled so its largest magnitude reaches black or white. Display only: the data in the .npz
    is never clipped.
    """
    a = _hwc(np.asarray(original[0], np.float64), layout)
    b = _hwc(np.asarray(colliding[0], np.float64), layout)
    d = b - a
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scale = float(np.abs(d).max()) or 1.0
    panels = [_to_uint8(a, lo, hi), _to_uint8(d / scale * 0.5 + 0.5, 0.0, 1.0),
              _to_uint8(b, lo, hi)]
    panels = [_upscale(p) for p in panels]
    gap = np.full((panels[0].shape[0], 4, panels[0].shape[2]), 255, np.uint8)
    strip = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    data = _png_bytes(strip)
    write_atomically(path, lambda out: out.write(data))


def basis_png(path: str, vectors: np.ndarray, patch_shape: tuple[int, ...],
              repeats: int = 4, columns: int = 6) -> None:
    """A grid of kernel basis vectors, each shown as its patch repeated ``repeats`` times.

    As in the paper's supplementary Figure 1: a per-patch vector (C * k * k) is reshaped to
    (C, k, k) and repeated over a small image; each tile has its own symmetric display range.

    Args:
        path: PNG file to write.
        vectors: (count, C * prod k) basis vectors.
        patch_shape: (C, k1, k2).
        repeats: tiles per side.
        columns: tiles per row of the grid.
    """
    tiles = []
    for vector in vectors:
        patch = vector.reshape(patch_shape).transpose(1, 2, 0)  # (k, k, C)
        tiled = np.tile(patch, (repeats, repeats, 1))
        bound = float(np.abs(tiled).max()) or 1.0
        tiles.append(_upscale(_to_uint8(tiled, -bound, bound), 96))
    if not tiles:
        raise UsageError("there are no basis vectors to draw (the kernel is trivial)")
    height, width, channels = tiles[0].shape
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (height + 4), min(columns, len(tiles)) * (width + 4), channels),
                   255, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * (height + 4):r * (height + 4) + height,
             c * (width + 4):c * (width + 4) + width] = tile
    data = _png_bytes(grid)
    write_atomically(path, lambda out: out.write(data))
