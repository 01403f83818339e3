"""Pictures of a collision: PNG strips (original | perturbation | colliding input) and W1's
kernel basis vectors, written atomically."""

from __future__ import annotations

import io

import numpy as np

from onnxcollide.errors import UsageError
from onnxcollide.report.files import write_atomically


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
