"""Shared fixtures: the real models under tests/data and a seeded random generator."""

from __future__ import annotations

import os

# The tests use small matrices. A multi-threaded OpenBLAS on a small, busy machine spins its
# threads against each other and makes a 400 x 120 SVD ~500x slower; keep BLAS single-threaded
# unless the caller asks otherwise. Must run before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# `onnxcollide check` caches audits in the user's cache folder by default: the tests' runs
# (in-process and in subprocesses) use a folder of their own, removed at the end.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_CACHE_HOME = tempfile.mkdtemp(prefix="onnxcollide-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builders import DATA  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    """A generator with a fixed seed: every test sees the same numbers."""
    return np.random.default_rng(20240521)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the real models (copied from the shared models, see tests/data/README.md)."""
    return DATA


@pytest.fixture(scope="session")
def lenet_path() -> str:
    """The PyTorch LeNet-5 (2 Conv + 3 Gemm)."""
    return str(DATA / "lenet5_mnist_torch.onnx")
