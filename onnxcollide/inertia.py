"""Inertia of ``M = G + shift I`` from a Cholesky factorisation that failed (pure numpy/scipy).

When LAPACK's ``dpotrf`` stops at pivot ``k``, the leading ``j = k - 1`` rows and columns of
its output hold the Cholesky factor ``R11`` of M's leading block, which is positive definite.
With ``R12 = R11^{-T} M12`` and the Schur complement ``S = M22 - R12^T R12`` (u x u, u = n - j),

    M = [R11^T 0; R12^T I] [I 0; 0 S] [R11 R12; 0 I],

a congruence, so (Sylvester) M has exactly as many negative eigenvalues as S. For a Gram matrix
with a few eigenvalues below tol^2 the factorisation fails near the end, S is small, and this
gives the count at the cost of the one failed factorisation plus a triangular solve with u
right-hand sides. The same factors apply ``M^{-1}`` for shift-invert Lanczos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import blas

EPS64 = float(np.finfo(np.float64).eps)
ERROR_SAFETY = 4.0  # factor on the rounding estimate of S's eigenvalues
CHECK_COLUMNS = 4  # random columns that check the leading factor a posteriori
CHECK_SEED = 20240608


@dataclass(frozen=True)
class SchurSplit:
    """M split at a positive definite leading block.

    Attributes:
        leading: (j, j) upper Cholesky factor R11 of M's leading block (Fortran order).
        coupling: (j, u) R12 = R11^{-T} M12.
        schur_values: (u,) eigenvalues of S, ascending.
        schur_vectors: (u, u) orthonormal eigenvectors of S.
        error: estimated bound on the rounding error of ``schur_values``.
    """

    leading: np.ndarray
    coupling: np.ndarray
    schur_values: np.ndarray
    schur_vectors: np.ndarray
    error: float

    @property
    def negatives(self) -> int:
        """How many eigenvalues of M are negative (those of S)."""
        return int(np.count_nonzero(self.schur_values < 0))

    @property
    def resolved(self) -> bool:
        """Whether every eigenvalue of S is farther from 0 than its error: the count holds."""
        return bool(np.all(np.abs(self.schur_values) > self.error))

    def solve(self, block: np.ndarray) -> np.ndarray:
        """X (n, b) -> M^{-1} X through the block factors."""
        j = self.leading.shape[0]
        top = blas.dtrsm(1.0, self.leading, np.asfortranarray(block[:j]), lower=0, trans_a=1)
        rest = block[j:] - blas.dgemm(1.0, self.coupling, top, trans_a=1)
        vectors = self.schur_vectors
        rest = blas.dgemm(1.0, vectors, blas.dgemm(1.0, vectors, rest, trans_a=1)
                          / self.schur_values[:, None])
        top = top - blas.dgemm(1.0, self.coupling, rest)
        top = blas.dtrsm(1.0, self.leading, np.asfortranarray(top), lower=0)
        return np.asfortranarray(np.vstack([top, rest]))


def _leading_factor_holds(matrix: np.ndarray, shift: float, leading: np.ndarray,
                          norm: float) -> bool:
    """Check R11^T R11 = M11 on a few random columns (what a failed dpotrf leaves in its
    output is LAPACK's behaviour, not its documented contract)."""
    j = leading.shape[0]
    probe = np.random.default_rng(CHECK_SEED).standard_normal((j, CHECK_COLUMNS))
    upper = np.asfortranarray(matrix[:j, :j])
    applied = blas.dsymm(1.0, upper, probe, side=0, lower=0) + shift * probe
    rebuilt = blas.dtrmm(1.0, leading, blas.dtrmm(1.0, leading, probe, lower=0), lower=0,
                         trans_a=1)
    return bool(np.linalg.norm(rebuilt - applied)
                <= 8.0 * j * EPS64 * norm * np.linalg.norm(probe))


def schur_split(matrix: np.ndarray, shift: float, norm: float, factor: np.ndarray,
                failed_at: int) -> SchurSplit | None:
    """Split ``M = matrix + shift I`` after ``dpotrf`` failed on it at pivot ``failed_at``.

    Args:
        matrix: (n, n) symmetric matrix, upper triangle valid (Fortran order).
        shift: the diagonal shift.
        norm: an estimate of ``||M||_2`` (the rounding errors scale with it).
        factor: (n, n) the failed ``dpotrf`` output (upper, ``clean=0``).
        failed_at: LAPACK's ``info`` (1-based pivot where it stopped), > 0.

    Returns:
        The split, or None where it does not apply (failure at the first pivot) or the
        leading factor does not check out.
    """
    n, j = matrix.shape[0], failed_at - 1
    if j < 1:
        return None
    leading = np.asfortranarray(np.triu(factor[:j, :j]))
    if not _leading_factor_holds(matrix, shift, leading, norm):
        return None
    coupling = blas.dtrsm(1.0, leading, np.asfortranarray(matrix[:j, j:]), lower=0, trans_a=1)
    cross = blas.dsyrk(1.0, coupling, trans=1, lower=0)  # upper triangle of R12^T R12
    upper = np.triu(matrix[j:, j:]) + shift * np.eye(n - j) - cross
    schur = np.triu(upper) + np.triu(upper, 1).T
    values, vectors = scipy.linalg.eigh(schur, check_finite=False)
    coupling_norm2 = float(scipy.linalg.eigvalsh(cross, lower=False, check_finite=False)[-1])
    # Backward error of the block factorisation: ~ n eps (||M|| + ||R12||^2), times a safety.
    error = ERROR_SAFETY * n * EPS64 * (norm + max(coupling_norm2, 0.0))
    return SchurSplit(leading, coupling, values, np.asfortranarray(vectors), error)
