"""collide on the models whose path to W1 is not a chain of copies (issue 18): a Focus
space-to-depth (strided Slice + Concat), a reflect Pad, an explicit zero Pad, a bilinear
Upsample and an AveragePool before the first Conv (models/README.md).

Each count is checked against the independent reference of tests/reference_operator.py:
the Jacobian of W1's output with respect to the input, measured in ONNX Runtime on unit
vectors, and its singular values from NumPy. None of onnxcollide is used for it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from builders import MODELS
from builders import run_cli as run
from reference_operator import conv_rtol, gram_relative_singular_values, w1_jacobian

SHAPES = {"focus_cnn": (3, 32, 32), "reflect_patch": (3, 28, 28), "zeropad_cnn": (3, 32, 32),
          "upsample_cnn": (3, 32, 32), "avgpool_cnn": (3, 32, 32)}
W1_WEIGHTS = {"focus_cnn": (8, 12, 3, 3), "reflect_patch": (32, 3, 4, 4),
              "zeropad_cnn": (16, 3, 3, 3), "upsample_cnn": (8, 3, 4, 4),
              "avgpool_cnn": (16, 3, 3, 3)}


@cache
def reference(name: str) -> tuple[int, float]:
    """(nullity of J at the conv rule's rtol, J's smallest relative singular value).

    The rtol must sit in a wide gap of J's spectrum (a factor 100 each side), so that the
    Gram eigenvalues' rounding (about 6e-7 relative) cannot move the count.
    """
    jac = w1_jacobian(MODELS / f"{name}.onnx", "conv2d", SHAPES[name])
    relative = gram_relative_singular_values(jac)
    rtol = conv_rtol(W1_WEIGHTS[name])
    nullity = int(np.count_nonzero(relative <= rtol))
    assert not np.any((relative > rtol / 100) & (relative < rtol * 100)), "no clear gap"
    return nullity, float(relative[0])


@cache
def collided(name: str, out: str) -> tuple[int, str, str, dict]:
    """Run ``collide`` once per model (exit code, stdout, stderr, report.json)."""
    result = run("collide", str(MODELS / f"{name}.onnx"), "-o", out, "--device", "cpu")
    report = json.loads((Path(out) / "report.json").read_text())
    return result.exit_code, result.stdout, result.stderr, report


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("paths")


@pytest.mark.parametrize("name", ["focus_cnn", "reflect_patch", "upsample_cnn", "avgpool_cnn"])
def test_exact_collisions_on_every_path_prove_in_onnx_runtime(name: str, out_dir: Path) -> None:
    code, stdout, stderr, report = collided(name, str(out_dir / name))
    assert code == 0, stderr
    assert "PASS" in stdout and "FAIL" not in stdout
    (collision,) = report["collisions"]
    assert collision["exact"] and collision["validation"]["passed"]
    assert collision["validation"]["collision"]["layer_residual"] <= 1e-5
    assert collision["changed_elements"] > 0


@pytest.mark.parametrize("name", ["reflect_patch", "upsample_cnn", "avgpool_cnn"])
def test_null_space_dimension_equals_the_reference_jacobian(name: str, out_dir: Path) -> None:
    """These paths couple input elements, so W1 o path is analysed whole: every eigenvalue
    is computed and the dimension is exact (384, 1024 and 2304 in models/README.md)."""
    operator = collided(name, str(out_dir / name))[3]["w1"]["operator"]
    nullity, _ = reference(name)
    assert operator["null_space_dim"] == nullity
    assert nullity in (384, 1024, 2304)


def test_focus_permutation_gives_the_reference_count_as_a_lower_bound(out_dir: Path) -> None:
    """Focus only permutes pixels: the conv solver runs on the permuted input and says
    'at least' (it seeks the few smallest values); the bound is the reference dimension."""
    report = collided("focus_cnn", str(out_dir / "focus_cnn"))[3]
    operator = report["w1"]["operator"]
    assert operator["null_space_dim"] is None
    assert operator["null_space_at_least"] == reference("focus_cnn")[0] == 1024
    assert "through the path's permutation of the input" in report["w1"]["method"]


def test_avgpool_kernel_is_reported_as_the_path_colliding_before_w1(out_dir: Path) -> None:
    report = collided("avgpool_cnn", str(out_dir / "avgpool_cnn"))[3]
    (note,) = [n for n in report["notes"] if "the path itself" in n]
    assert "maps 2304 input direction(s) to zero" in note and "AveragePool" in note


def test_zero_pad_folds_into_the_conv_and_finds_no_exact_collision(out_dir: Path) -> None:
    """An explicit zero Pad before a pads=0 Conv is the conv with zero padding: full column
    rank, so the tool says there is no exact collision and names the smallest relative
    singular value, which the reference reproduces."""
    code, stdout, stderr, report = collided("zeropad_cnn", str(out_dir / "zeropad_cnn"))
    assert code == 0, stderr
    assert report["collisions"] == []
    assert "no exact collision at this layer" in stdout + stderr
    assert "the path's constant border as its zero padding" in report["w1"]["method"]
    nullity, smallest = reference("zeropad_cnn")
    assert nullity == 0
    np.testing.assert_allclose(report["w1"]["operator"]["relative"][0], smallest, rtol=1e-6)
