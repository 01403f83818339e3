"""Benchmark the whole-operator analysis of a first-layer conv (onnxcollide.linalg.conv_operator).

Default: a seeded random ResNet stem, 7x7 stride 2 pad 3, 64 filters, input 3x224x224.

    python scripts/bench_convop.py                      # ResNet stem at 224
    python scripts/bench_convop.py --size 64 --check    # smaller, checked against a sparse solve
    python scripts/bench_convop.py --weights w.npy --stride 2 --pad 1 --height 240 --width 320
    python scripts/bench_convop.py --targets --repeat 2   # the three timing targets

Prints the time, the k smallest singular values (absolute and relative to sigma_max), the
circular (periodic-border) estimate, the exact count, residuals and the peak resident memory.
``--check`` recomputes the smallest eigenvalues of A^T A by sparse shift-invert (slow; moderate
sizes only) and prints the largest relative difference.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from onnxcollide.linalg.conv_operator import ConvSpec, conv_matrix, output_shape, smallest_singular


def build_spec(args: argparse.Namespace) -> ConvSpec:
    """The conv to analyse, from the command line."""
    rng = np.random.default_rng(args.seed)
    if args.weights:
        weight = np.load(args.weights).astype(np.float64)
    else:
        weight = rng.standard_normal((args.filters, args.channels, args.kernel, args.kernel))
        if args.smooth > 0:
            from scipy.ndimage import gaussian_filter  # only for this synthetic case

            weight = gaussian_filter(weight, sigma=(0, 0, args.smooth, args.smooth),
                                     mode="constant")
    height = args.height or args.size
    width = args.width or args.size
    return ConvSpec(weight=weight, strides=(args.stride, args.stride), dilations=(1, 1),
                    pads=(args.pad,) * 4, groups=1,
                    input_shape=(weight.shape[1], height, width))


def check(spec: ConvSpec, k: int) -> np.ndarray:
    """The k smallest singular values by sparse shift-invert on A^T A (reference)."""
    from scipy.sparse.linalg import eigsh

    a = conv_matrix(spec)
    gram = (a.T @ a).tocsc()
    top = eigsh(gram, k=1, which="LA", return_eigenvectors=False)[0]
    vals = eigsh(gram, k=k, sigma=-1e-3 * top, which="LM", return_eigenvectors=False)
    return np.sqrt(np.abs(np.sort(vals)))


# (arguments, target seconds): the timing targets of docs/performance.md
TARGETS = [
    ("--kernel 7 --stride 2 --pad 3 --filters 64 --channels 3 --size 224", 10.0),
    ("--kernel 3 --stride 1 --pad 1 --filters 64 --channels 3 --size 240", 10.0),
    ("--kernel 7 --stride 1 --pad 3 --filters 32 --channels 4 --size 224", 15.0),
]


def run_targets(parser: argparse.ArgumentParser, repeat: int) -> int:
    """Time each target case (best of ``repeat``); print time, target, met or missed and the
    relative sigmas. Returns 1 if a target was missed."""
    missed = 0
    for line, target in TARGETS:
        args = parser.parse_args(line.split())
        spec = build_spec(args)
        best, result = float("inf"), None
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            result = smallest_singular(spec, k=args.k, seed=args.seed)
            best = min(best, time.perf_counter() - start)
        assert result is not None
        met = best < target
        missed += not met
        print(f"{line}: {best:.2f} s (best of {max(1, repeat)}), target {target:.0f} s: "
              f"{'met' if met else 'MISSED'}; relative sigmas "
              f"{np.array2string(result.relative, precision=6)}, "
              f"{result.iterations} iterations, converged {result.converged}")
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="square input size")
    parser.add_argument("--height", type=int, default=0)
    parser.add_argument("--width", type=int, default=0)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--pad", type=int, default=3)
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="Gaussian blur (pixels) of the random filters, like trained stems")
    parser.add_argument("--weights", default="", help=".npy weight (O, C, k, k) instead")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--targets", action="store_true",
                        help="time the three target cases (best of --repeat) and say if met")
    args = parser.parse_args(argv)
    if args.targets:
        return run_targets(parser, args.repeat)

    spec = build_spec(args)
    n_in = int(np.prod(spec.input_shape))
    n_out = int(np.prod(output_shape(spec)))
    print(f"conv {spec.weight.shape} stride {spec.strides} pads {spec.pads} on "
          f"{spec.input_shape} -> {output_shape(spec)}: n_in={n_in} n_out={n_out}")
    result = None
    for run in range(args.repeat):
        start = time.perf_counter()
        result = smallest_singular(spec, k=args.k, seed=args.seed, max_seconds=args.max_seconds)
        print(f"run {run + 1}: {time.perf_counter() - start:.2f} s")
    assert result is not None
    np.set_printoptions(precision=6, linewidth=100)
    print(f"method     : {result.method}")
    print(f"sigma_max  : {result.sigma_max:.10g}   tol: {result.tol:.4g} "
          f"(relative {result.tol / result.sigma_max:.3g})")
    print(f"sigmas     : {result.sigmas}")
    print(f"relative   : {result.relative}")
    print(f"circular   : {result.circular / result.sigma_max}  (relative, periodic border)")
    print(f"exact      : {result.exact} of {result.sigmas.size}   blind inputs: {result.blind}")
    print(f"residuals  : {result.residuals / result.sigma_max**2}  (relative to sigma_max^2)")
    print(f"converged  : {result.converged}   iterations: {result.iterations}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS   : {peak:.0f} MiB")
    if args.check:
        start = time.perf_counter()
        ref = check(spec, args.k)
        diff = np.max(np.abs(ref - result.sigmas)) / result.sigma_max
        print(f"reference  : {ref}  ({time.perf_counter() - start:.1f} s), "
              f"max |diff| / sigma_max = {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
