"""Pictures of a collision: labelled PNG strips (original | perturbation | colliding input) and
W1's kernel basis vectors, written atomically.

No picture is ever clipped silently: where a colliding input leaves the original's display
range, both are shown in a range wide enough for both, and the strip says so; how each strip
was drawn is recorded (``StripRendering.record``) for ``report.json``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxcollide.errors import UsageError
from onnxcollide.report.files import write_atomically

PANEL = 160  # pixels: each panel of a strip is scaled up (nearest) to about this size
TILE = 112  # pixels: each basis tile
GAP = 6  # pixels between panels
FONT_SIZE = 12
LINE = FONT_SIZE + 4  # pixels per line of text
TEXT = (20, 20, 20)
BACKGROUND = (255, 255, 255)


def image_layout(shape: tuple[int, ...]) -> str | None:
    """``nchw`` / ``nhwc`` when a 4-D input looks like a batch of images, else None."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3) and shape[2] > 4 and shape[3] > 4:
        return "nchw"
    if shape[3] in (1, 3) and shape[1] > 4 and shape[2] > 4:
        return "nhwc"
    return None


@dataclass(frozen=True)
class StripRendering:
    """How one strip shows sample 0 of an input and its colliding input.

    Attributes:
        layout: ``nchw`` or ``nhwc``.
        display_range: (lo, hi) of the model's values shown as black..white in the original
            and colliding panels (shared, so what changed is visible).
        widened: True where the colliding input leaves the original's range (or [0, 1]) and
            the display range was widened to hold both, so nothing is clipped.
        perturbation_scale: the perturbation's largest magnitude, shown as black (-) and
            white (+) around mid-grey (0).
        caption: the figures printed under the strip.
    """

    layout: str
    display_range: tuple[float, float]
    widened: bool
    perturbation_scale: float
    caption: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """The rendering as plain data for ``report.json``."""
        return {"sample": 0, "layout": self.layout, "display_range": list(self.display_range),
                "widened_to_avoid_clipping": self.widened, "clipped": False,
                "perturbation_black_white": [-self.perturbation_scale,
                                             self.perturbation_scale],
                "caption": list(self.caption)}


def _hwc(sample: np.ndarray, layout: str) -> np.ndarray:
    """One sample (C, H, W) or (H, W, C) -> (H, W, C)."""
    return sample.transpose(1, 2, 0) if layout == "nchw" else sample


def plan_strip(original: np.ndarray, colliding: np.ndarray, layout: str,
               caption: tuple[str, ...] = ()) -> StripRendering:
    """Decide how a strip shows ``original`` (N, ...) and ``colliding`` (N, ...), sample 0.

    The display range is the original's own, or [0, 1] when it lies inside; where the
    colliding input leaves it, both panels use the range of both (never a clip).
    """
    a = np.asarray(original[0], np.float64)
    b = np.asarray(colliding[0], np.float64)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    widened = bool(b.min() < lo or b.max() > hi)
    if widened:
        lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
    scale = float(np.abs(b - a).max()) or 1.0
    lines = list(caption)
    if widened:
        lines.append(f"shown in [{lo:.3g}, {hi:.3g}]: the colliding input leaves the "
                     "original's range (nothing clipped)")
    return StripRendering(layout, (lo, hi), widened, scale, tuple(lines))


def _to_uint8(panel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    span = hi - lo if hi > lo else 1.0
    return np.clip(np.round((panel - lo) / span * 255.0), 0, 255).astype(np.uint8)


def _upscale(panel: np.ndarray, target: int = PANEL) -> np.ndarray:
    factor = max(1, target // max(panel.shape[0], panel.shape[1]))
    return panel.repeat(factor, axis=0).repeat(factor, axis=1)


def _rgb(panel: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) uint8 -> (H, W, 3)."""
    return np.repeat(panel, 3, axis=2) if panel.shape[2] == 1 else panel


def _font(size: int) -> Any:
    """Pillow's own scalable font (FreeType), else its small bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # Pillow without FreeType, or before 10.1
        return ImageFont.load_default()


def label_band(lines: int) -> int:
    """Height in pixels of the band of ``lines`` label lines above a strip's panels."""
    return LINE * lines + 4


def _labelled(panels: list[np.ndarray], labels: Sequence[tuple[str, ...]],
              caption: tuple[str, ...]) -> bytes:
    """Panels side by side (each (H, W, 3) uint8, same H), each with its label lines above,
    the caption lines under them: PNG bytes."""
    from PIL import Image, ImageDraw

    font = _font(FONT_SIZE)
    line = LINE
    head = label_band(max(len(lab) for lab in labels))
    height = panels[0].shape[0]
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    text_width = max([0, *(int(font.getlength(t)) for t in caption)]) + 8
    canvas = Image.new("RGB", (max(width, text_width), head + height + line * len(caption)
                               + 6), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, lines in zip(panels, labels, strict=True):
        canvas.paste(Image.fromarray(panel, mode="RGB"), (x, head))
        for row, text in enumerate(lines):
            draw.text((x + 2, 2 + row * line), text, fill=TEXT, font=font)
        x += panel.shape[1] + GAP
    for row, text in enumerate(caption):
        draw.text((2, head + height + 3 + row * line), text, fill=TEXT, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def strip_png(path: str, original: np.ndarray, colliding: np.ndarray,
              rendering: StripRendering) -> None:
    """Save [original | perturbation | colliding] of sample 0, labelled, as ``rendering``
    says: the two inputs share one display range; the perturbation is centred on grey with
    its largest magnitude at black or white. Display only: the saved arrays are never
    clipped."""
    a = _hwc(np.asarray(original[0], np.float64), rendering.layout)
    b = _hwc(np.asarray(colliding[0], np.float64), rendering.layout)
    lo, hi = rendering.display_range
    s = rendering.perturbation_scale
    panels = [_to_uint8(a, lo, hi), _to_uint8((b - a) / s * 0.5 + 0.5, 0.0, 1.0),
              _to_uint8(b, lo, hi)]
    shown = f"[{lo:.3g}, {hi:.3g}]"
    labels = [("original", shown), ("perturbation", f"-{s:.3g} black, +{s:.3g} white"),
              ("colliding input", shown)]
    data = _labelled([_rgb(_upscale(p)) for p in panels], labels, rendering.caption)
    write_atomically(path, lambda out: out.write(data))


def basis_png(path: str, vectors: np.ndarray, patch_shape: tuple[int, ...],
              sigmas: np.ndarray | None = None, repeats: int = 4, columns: int = 6) -> None:
    """A grid of kernel basis vectors, each shown as its patch repeated ``repeats`` times and
    labelled with its index and ``sigma = ||W^T v||`` (0 up to rounding for a vector of the
    exact kernel).

    As in the paper's supplementary Figure 1: a per-patch vector (C * k * k) is reshaped to
    (C, k, k) and repeated over a small image; each tile has its own symmetric display range.

    Args:
        path: PNG file to write.
        vectors: (count, C * prod k) basis vectors.
        patch_shape: (C, k1, k2).
        sigmas: (count,) ``||W^T v||`` of each vector, or None.
        repeats: tiles per side.
        columns: tiles per row of the grid.
    """
    if vectors.shape[0] == 0:
        raise UsageError("there are no basis vectors to draw (the kernel is trivial)")
    from PIL import Image, ImageDraw

    tiles = []
    for vector in vectors:
        patch = vector.reshape(patch_shape).transpose(1, 2, 0)  # (k, k, C)
        tiled = np.tile(patch, (repeats, repeats, 1))
        bound = float(np.abs(tiled).max()) or 1.0
        tiles.append(_rgb(_upscale(_to_uint8(tiled, -bound, bound), TILE)))
    font = _font(11)
    height, width = tiles[0].shape[:2]
    label_height = 16
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(width, 96) + GAP, height + label_height + GAP
    canvas = Image.new("RGB", (min(columns, len(tiles)) * cell_w, rows * cell_h - GAP),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas.paste(Image.fromarray(tile, mode="RGB"), (c * cell_w, r * cell_h))
        label = f"#{k}" if sigmas is None else f"#{k}  sigma {float(sigmas[k]):.2g}"
        draw.text((c * cell_w + 1, r * cell_h + height + 2), label, fill=TEXT, font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=False)
    data = buffer.getvalue()
    write_atomically(path, lambda out: out.write(data))
