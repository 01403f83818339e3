"""Make the pictures of the docs: an example input image and the collide strip the README shows.

The input is drawn with numpy (a seven-segment "4" on a two-colour background, like the
fixture models' training task; no data is downloaded), then ``onnxcollide collide`` runs on
``models/patch_embed.onnx`` and its first strip is copied to ``docs/images/``::

    python scripts/make_docs_images.py

Re-running gives the same files (the collide run is seeded): W1 residual 3.77e-07, outputs
within 9.54e-07, as the README's caption says.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"
INPUT = IMAGES / "example-input.png"
STRIP = IMAGES / "collision-strip.png"
COLLIDE = ["collide", "models/patch_embed.onnx", "--input", "docs/images/example-input.png",
           "--beta", "6", "--range", "0,1", "--seed", "0"]

# Segments of a seven-segment digit as (row0, row1, col0, col1) in a 32x32 image.
SEGMENTS = {"top": (5, 8, 9, 23), "upper_left": (5, 16, 9, 12), "upper_right": (5, 16, 20, 23),
            "middle": (14, 17, 9, 23), "lower_left": (15, 27, 9, 12),
            "lower_right": (15, 27, 20, 23), "bottom": (24, 27, 9, 23)}
FOUR = ("upper_left", "upper_right", "middle", "lower_right")


def example_input() -> np.ndarray:
    """A 32x32 RGB uint8 image: a light "4" on a blue-grey background, with noise (mid tones
    leave the perturbation room inside [0, 1])."""
    rng = np.random.default_rng(0)
    image = np.empty((32, 32, 3))
    image[:] = (0.30, 0.42, 0.50)
    for name in FOUR:
        r0, r1, c0, c1 = SEGMENTS[name]
        image[r0:r1, c0:c1] = (0.72, 0.64, 0.38)
    image += rng.normal(0.0, 0.04, image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help
    IMAGES.mkdir(parents=True, exist_ok=True)
    Image.fromarray(example_input(), mode="RGB").save(INPUT, optimize=True)
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-m", "onnxcollide", *COLLIDE, "-o", out],
                              cwd=REPO, capture_output=True, text=True, check=False)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            return done.returncode
        shutil.copyfile(Path(out) / "strip-0.png", STRIP)
    print(f"wrote {INPUT.relative_to(REPO)} and {STRIP.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
