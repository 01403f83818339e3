"""Record what the CLI writes for every shipped model, to check a change leaves behaviour alone.

Runs, in one folder per model of ``models/`` and ``tests/data/``:

* ``onnxcollide audit MODEL -f json`` (and the table, CSV and Markdown, ``--summary-only`` too),
* ``onnxcollide collide MODEL --seed 0 --count 2`` (its ``report.json``, ``collisions.npz`` and
  PNGs), where the search applies, else its exit code and error line,
* ``onnxcollide validate`` on the first saved pair,

and writes every output file, each command's exit code, stdout and stderr, and a manifest of
SHA-256 sums. Run it before and after a change and compare the two folders::

    python scripts/snapshot_outputs.py --out /tmp/before
    ... change ...
    python scripts/snapshot_outputs.py --out /tmp/after
    python scripts/snapshot_outputs.py --compare /tmp/before /tmp/after

Output paths are relative to the repository root, so the two snapshots differ only where
behaviour does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_DIRS = ("models", "tests/data")
WORK = ".snapshot-work"  # collide writes here (a fixed path, so reports match)
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(args: list[str], folder: Path, name: str) -> int:
    """Run ``onnxcollide ARGS`` from the repository root; keep its exit code and streams."""
    env = {**os.environ, **BLAS_ENV, "COLUMNS": "160"}
    done = subprocess.run([sys.executable, "-m", "onnxcollide", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    (folder / f"{name}.stdout").write_text(done.stdout)
    (folder / f"{name}.stderr").write_text(done.stderr)
    (folder / f"{name}.rc").write_text(f"{done.returncode}\n")
    return done.returncode


def _snapshot_model(model: str, out: Path) -> None:
    """All the outputs for one model, under ``out / model``."""
    folder = out / model
    folder.mkdir(parents=True)
    for fmt in ("json", "table", "csv", "markdown"):
        _run(["audit", model, "-f", fmt, "--no-progress"], folder, f"audit-{fmt}")
    for fmt in ("table", "csv", "markdown"):
        _run(["audit", model, "-f", fmt, "--summary-only", "--no-progress"], folder,
             f"audit-summary-{fmt}")
    work = REPO / WORK
    if work.exists():
        shutil.rmtree(work)
    for fmt in ("json", "table"):
        rc = _run(["collide", model, "--seed", "0", "--count", "2", "-o", f"{WORK}/{fmt}",
                   "-f", fmt], folder, f"collide-{fmt}")
    npz = work / "json" / "collisions.npz"
    if rc in (0, 1) and npz.exists():
        _validate_saved(model, npz, folder)
    if work.exists():
        shutil.move(work, folder / "collide")


def _validate_saved(model: str, npz: Path, folder: Path) -> None:
    """``onnxcollide validate`` on the original and the first colliding input collide saved."""
    import numpy as np

    with np.load(npz) as saved:
        keys = [k for k in saved.files if k != "settings"]
        pairs = {k: saved[k] for k in keys}
    first = [k for k in keys if k.startswith("original")]
    second = [k for k in keys if k.startswith("colliding")]
    if len(first) != 1 or len(second) != 1:
        return
    np.save(REPO / WORK / "a.npy", pairs[first[0]])
    np.save(REPO / WORK / "b.npy", pairs[second[0]][0])
    for fmt in ("json", "table"):
        _run(["validate", model, f"{WORK}/a.npy", f"{WORK}/b.npy", "-f", fmt], folder,
             f"validate-{fmt}")


def _manifest(out: Path) -> dict[str, str]:
    """SHA-256 of every file under ``out``, by relative path."""
    sums: dict[str, str] = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "MANIFEST.json":
            sums[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def snapshot(out: Path) -> None:
    """Write the snapshot of every shipped model into ``out`` (replaced)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for folder in MODEL_DIRS:
        for model in sorted((REPO / folder).glob("*.onnx")):
            rel = str(model.relative_to(REPO))
            print(f"snapshot {rel}", file=sys.stderr)
            _snapshot_model(rel, out)
    sums = _manifest(out)
    (out / "MANIFEST.json").write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    print(f"{len(sums)} files in {out}")


def compare(before: Path, after: Path) -> int:
    """Print every file that differs between two snapshots; 0 when none does."""
    a = json.loads((before / "MANIFEST.json").read_text())
    b = json.loads((after / "MANIFEST.json").read_text())
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for key in differ:
        how = "only before" if key not in b else "only after" if key not in a else "content"
        print(f"differs: {key} ({how})")
    print(f"{len(a)} files before, {len(b)} after, {len(differ)} differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder to write the snapshot into")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out FOLDER or --compare BEFORE AFTER")
    snapshot(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
