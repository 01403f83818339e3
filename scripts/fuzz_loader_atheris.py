"""Coverage-guided fuzzing of the model loader and the audit with atheris (libFuzzer).

Each input is taken as the bytes of an .onnx file (the corpus starts from the shipped
models), written to a temporary file and audited under a small memory limit. Anything but
our own error (``OnnxCollideError``) is a finding: libFuzzer stops and writes the input
to ``crash-*``. Install with ``pip install 'onnxcollide[fuzz]'`` (atheris 3, Linux x86-64)::

    python scripts/fuzz_loader_atheris.py -max_total_time=600 /tmp/corpus models tests/data

``-runs=N`` bounds the number of inputs instead; every libFuzzer flag works.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import atheris  # noqa: E402

with atheris.instrument_imports():
    from onnxcollide.audit.model import audit_model
    from onnxcollide.errors import OnnxCollideError
    from onnxcollide.limits import MemoryLimit, set_max_memory

FOLDER = tempfile.mkdtemp(prefix="onnxcollide-atheris-")
PATH = os.path.join(FOLDER, "model.onnx")


def one_input(data: bytes) -> None:
    """Audit ``data`` as a model file: our errors are expected, anything else is a bug."""
    with open(PATH, "wb") as handle:
        handle.write(data)
    with contextlib.suppress(OnnxCollideError):
        audit_model(PATH)


def main() -> None:
    set_max_memory(MemoryLimit(256 << 20, "--max-memory 256M (fuzzing)"))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
