"""Fuzz the command line with mutated models: many more examples than the test suite runs.

Each example mutates one real or fixture model one way (``tests/fuzz_mutations.py``: an
attribute, an initializer's dims or data type, an input name, a node, the opset, a graph
input's dims or type, external data entries, truncated or bit-flipped bytes, a name made
invalid UTF-8, a cycle, nested subgraphs) and runs ``audit``, ``collide``, ``validate``,
``compare`` and ``check`` on it in worker processes. The property: exit 0, 1, 2 or 3, at
most one ``error:`` line, never a traceback, "internal error", Python warning or signal,
within the time bound, nothing written outside ``-o``. Usage::

    python scripts/fuzz.py --examples 5000 [--seed 0] [--jobs 2] [--kinds not_utf8 ...]

Exits 1 and lists each example that broke the property (with how to make it again).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # small matrices, a busy machine: one BLAS thread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzz_mutations import BASES, KINDS, Worker, run_case  # noqa: E402


def examples(count: int, seed: int, kinds: tuple[str, ...] = KINDS
             ) -> list[tuple[str, str, int]]:
    """(base model, mutation kind, mutation seed) for each example, from one seeded draw."""
    rng = random.Random(seed)
    return [(rng.choice(BASES), rng.choice(kinds), rng.randrange(2**31)) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="mutation kinds to draw from (default: all)")
    args = parser.parse_args()
    todo = examples(args.examples, args.seed, tuple(args.kinds))
    lock = threading.Lock()
    failures: list[str] = []
    counts = {"done": 0, "commands": 0}
    start = time.monotonic()

    def work() -> None:
        worker = Worker()
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    base, kind, seed = todo.pop()
                case, outcomes = run_case(worker, base, kind, seed)
                with lock:
                    counts["done"] += 1
                    counts["commands"] += len(outcomes)
                    for outcome in outcomes:
                        for problem in outcome.problems():
                            failures.append(f"{base} {kind} seed {seed} ({case.description}): "
                                            f"{outcome.command[0]}: {problem}\n"
                                            f"{outcome.stderr.strip()}")
                            print(f"problem: {failures[-1]}", file=sys.stderr, flush=True)
                    if counts["done"] % 50 == 0:
                        print(f"{counts['done']} examples, {len(failures)} problems",
                              file=sys.stderr, flush=True)
        finally:
            worker.close()

    threads = [threading.Thread(target=work) for _ in range(max(1, args.jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        print(failure)
    print(f"{counts['done']} examples, {counts['commands']} commands, {len(failures)} "
          f"problems in {time.monotonic() - start:.0f} s (seed {args.seed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
