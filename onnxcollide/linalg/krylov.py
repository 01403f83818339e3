"""Block Lanczos for the largest eigenpairs of a symmetric operator (pure numpy).

The spectral engine applies inverses through Cholesky factors: one triangular solve with
several right-hand sides costs about as much as a solve with one (the factor is read once),
so a block method reaches a given accuracy in far fewer passes over the factor than
single-vector Lanczos. Full reorthogonalisation keeps the basis orthonormal; the basis stays
small (tens to a few hundred columns). Every product goes through scipy's BLAS and LAPACK,
like the operators it is used with: alternating numpy's and scipy's OpenBLAS thread pools in
one loop makes them spin against each other on few cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas

EPS64 = float(np.finfo(np.float64).eps)
START_SEED = 20240607  # fixed start block: the same operator gives the same bytes every run


@dataclass(frozen=True)
class Eigenpairs:
    """Ritz pairs of a symmetric operator, largest first.

    Attributes:
        values: (k,) Ritz values, descending.
        vectors: (n, k) orthonormal Ritz vectors.
        residuals: (k,) norms ||A v - theta v||; an eigenvalue lies within each of its value.
        converged: whether every pair met the requested tolerance.
        errors: (k,) estimated error of each value: min(||r||, 10 ||r||^2 / gap) (the
            Ritz gap can be smaller than the true one), and never below the rounding floor
            ``n * eps * max |value|`` of applying the operator.
    """

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    converged: bool
    errors: np.ndarray


def _mul(a: np.ndarray, b: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """a @ b (or a^T @ b) with scipy's dgemm; Fortran-ordered result."""
    return blas.dgemm(1.0, a, b, trans_a=int(trans_a))


def project_out(known: np.ndarray, block: np.ndarray) -> np.ndarray:
    """block - known known^T block, applied twice (classical Gram-Schmidt, reorthogonalised)."""
    for _ in range(2):
        block = block - _mul(known, _mul(known, block, trans_a=True))
    return block


def _qr(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin QR (n, b) -> (n, b) orthonormal and (b, b) upper triangle."""
    q, r = scipy.linalg.qr(block, mode="economic", check_finite=False)
    return np.asfortranarray(q), r


def _orthonormal_start(n: int, block: int) -> np.ndarray:
    """(n, block) orthonormal start block from a fixed seed."""
    return _qr(np.random.default_rng(START_SEED).standard_normal((n, block)))[0]


def _extend(basis: np.ndarray, filled: int, block: np.ndarray) -> np.ndarray:
    """Orthonormalise ``block`` (n, b) against basis[:, :filled] and itself (each twice).

    Directions the basis already spans (an invariant subspace was found) are replaced by
    fixed-seed draws orthogonalised the same way, so the basis keeps growing.
    """
    known = basis[:, :filled]
    before = float(np.linalg.norm(block, axis=0).max())
    q, r = _qr(project_out(known, block))
    # A column is spanned already when projection left almost nothing of the block's size.
    weak = np.abs(np.diag(r)) <= 1e-10 * max(before, 1e-300)
    q = _qr(project_out(known, q))[0]  # Q of an ill-conditioned block: orthogonalise again
    if np.any(weak):
        draw = np.random.default_rng(START_SEED + filled).standard_normal((known.shape[0],
                                                                           int(weak.sum())))
        fresh = project_out(np.hstack([known, q[:, ~weak]]), draw)
        q[:, weak] = _qr(fresh)[0]
    return q


def _top_ritz_pairs(projected: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``count + 1`` eigenpairs (ascending) of the (k, k) projected matrix; the extra
    value gives the last one's gap. dsyevx, then the full dsyevd if it returns fewer pairs
    (dsyevr can, on nearly scalar matrices)."""
    k = projected.shape[0]
    wanted = min(k, count + 1)
    try:
        values, coords = scipy.linalg.eigh(projected, check_finite=False, driver="evx",
                                           subset_by_index=[k - wanted, k - 1])
    except np.linalg.LinAlgError:
        values = np.zeros(0)
    if values.size != wanted:
        values, coords = scipy.linalg.eigh(projected, check_finite=False, driver="evd")
        values, coords = values[k - wanted:], coords[:, k - wanted:]
    return values, coords


def _value_errors(ritz_values: np.ndarray, count: int, residuals: np.ndarray,
                  safety: float = 1.0) -> np.ndarray:
    """Estimated error of each top Ritz value: min(||r||, safety * ||r||^2 / gap).

    ``||r||`` bounds the distance to some eigenvalue; ``||r||^2 / gap`` is the usual sharper
    estimate, with the gap to the nearest other Ritz value standing in for the spectral gap.
    ``ritz_values`` holds the top ``count`` Ritz values and at most one more, ascending;
    ``residuals`` (count,) the top ones' residual norms, largest value first.
    """
    ordered = ritz_values[::-1]
    errors = residuals.copy()
    for i in range(count):
        others = np.delete(ordered, i)
        if others.size:
            gap = float(np.min(np.abs(others - ordered[i])))
            if gap > 0:
                errors[i] = min(errors[i], safety * residuals[i] ** 2 / gap)
    return errors


def top_eigenpairs(apply: Callable[[np.ndarray], np.ndarray], n: int, count: int,
                   rtol: float, block: int = 8, max_columns: int = 600,
                   values_only: bool = False) -> Eigenpairs:
    """The ``count`` largest eigenpairs of a symmetric operator by block Lanczos.

    Args:
        apply: X (n, b) -> A X (n, b) for a symmetric A.
        n: dimension.
        count: how many of the largest eigenpairs (count <= block is most efficient).
        rtol: stop when every residual is at most ``rtol * |value|`` or, with
            ``values_only``, when every value's estimated error is (an absolute floor of
            ``n * eps * max |value|`` always counts as met).
        block: block size b.
        max_columns: largest basis kept; the pairs found so far are returned (converged False).
        values_only: only the values need ``rtol`` (the vectors may be less accurate).

    Returns:
        The Ritz pairs, largest first.
    """
    block = max(block, count)
    limit = min(n, max(max_columns, 4 * block))
    basis = np.empty((n, limit), order="F")  # columns contiguous: slices are Fortran blocks
    images = np.empty((n, limit), order="F")
    projected = np.zeros((limit, limit))
    basis[:, :block] = _orthonormal_start(n, block) if block < n else np.eye(n)
    filled = 0
    while True:
        width = min(block, limit - filled)
        new = slice(filled, filled + width)
        images[:, new] = apply(basis[:, new])
        filled += width
        projected[:filled, new] = _mul(basis[:, :filled], images[:, new], trans_a=True)
        projected[new, :filled] = projected[:filled, new].T
        ritz_values, ritz_coords = _top_ritz_pairs(projected[:filled, :filled], count)
        values = ritz_values[::-1][:count]
        coords = np.asfortranarray(ritz_coords[:, ::-1][:, :count])
        vectors = _mul(basis[:, :filled], coords)
        residuals = np.linalg.norm(_mul(images[:, :filled], coords) - vectors * values, axis=0)
        # Below n * eps * ||A|| no residual can be resolved: that floor always counts as met.
        floor = n * EPS64 * float(np.abs(values).max())
        errors = _value_errors(ritz_values, count, residuals) if values_only else residuals
        converged = bool(np.all(errors <= rtol * np.abs(values) + floor))
        if converged or filled >= limit:
            # The Ritz gap stands in for the true gap and can be smaller: report 10x.
            reported = np.maximum(_value_errors(ritz_values, count, residuals, 10.0), floor)
            return Eigenpairs(values, vectors, residuals, converged, reported)
        width = min(block, limit - filled)
        basis[:, filled:filled + width] = _extend(basis, filled, images[:, new])[:, :width]
