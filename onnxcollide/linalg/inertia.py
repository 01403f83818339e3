"""Inertia of ``M = G + shift I`` from a Cholesky factorisation that failed (pure numpy/scipy).

When LAPACK's ``dpotrf`` stops at pivot ``k``, the leading ``j = k - 1`` rows and columns of
its output hold the Cholesky factor ``R11`` of M's leading block, which is positive definite.
With ``R12 = R11^{-T} M12`` and the Schur complement ``S = M22 - R12^T R12`` (u x u, u = n - j),

    M = T^T diag(I, S) T,   T = [R11 R12; 0 I],

a congruence, so (Sylvester) M has exactly as many negative eigenvalues as S. For a Gram matrix
with a few eigenvalues below tol^2 the factorisation fails near the end, S is small, and this
gives the count at the cost of the one failed factorisation plus a triangular solve with u
right-hand sides. ``T`` is written over the failed factorisation's own array (no copy of the
n x n factor), and the same factors apply ``M^{-1}`` for shift-invert Lanczos.
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
        triangle: (n, n) upper triangular T = [R11 R12; 0 I] (Fortran order; its strict lower
            part is not used). R11 is (j, j), the Cholesky factor of M's leading block;
            R12 = R11^{-T} M12 is (j, u).
        schur_values: (u,) eigenvalues of S, ascending.
        schur_vectors: (u, u) orthonormal eigenvectors of S.
        error: estimated bound on the rounding error of ``schur_values``.
    """

    triangle: np.ndarray
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
        """X (n, b) -> M^{-1} X = T^{-1} diag(I, S^{-1}) T^{-T} X."""
        j = self.triangle.shape[0] - self.schur_values.size
        middle = blas.dtrsm(1.0, self.triangle, block, lower=0, trans_a=1)
        vectors = self.schur_vectors
        middle[j:] = blas.dgemm(1.0, vectors, blas.dgemm(1.0, vectors, middle[j:], trans_a=1)
                                / self.schur_values[:, None])
        return np.asarray(blas.dtrsm(1.0, self.triangle, middle, lower=0, overwrite_b=1))


def _set_trailing(triangle: np.ndarray, j: int, coupling: np.ndarray | None) -> None:
    """Write ``[coupling; I]`` (upper part) into the columns j: of ``triangle``: rows :j get
    ``coupling`` (zeros when None), the trailing block the identity."""
    n = triangle.shape[0]
    triangle[:j, j:] = 0.0 if coupling is None else coupling
    trailing = triangle[j:, j:]
    trailing[np.triu_indices(n - j)] = 0.0
    trailing[np.diag_indices(n - j)] = 1.0


def _leading_factor_holds(matrix: np.ndarray, shift: float, triangle: np.ndarray, j: int,
                          norm: float) -> bool:
    """Check R11^T R11 = M11 on a few random columns (what a failed dpotrf leaves in its
    output is LAPACK's behaviour, not its documented contract). ``triangle`` is diag(R11, I):
    probes padded with zeros pick out R11 and M11 without copying either."""
    n = matrix.shape[0]
    probe = np.zeros((n, CHECK_COLUMNS), order="F")
    probe[:j] = np.random.default_rng(CHECK_SEED).standard_normal((j, CHECK_COLUMNS))
    applied = blas.dsymm(1.0, matrix, probe, side=0, lower=0)[:j] + shift * probe[:j]
    rebuilt = blas.dtrmm(1.0, triangle, blas.dtrmm(1.0, triangle, probe, lower=0), lower=0,
                         trans_a=1)[:j]
    return bool(np.linalg.norm(rebuilt - applied)
                <= 8.0 * n * EPS64 * norm * np.linalg.norm(probe))


def schur_split(matrix: np.ndarray, shift: float, norm: float, factor: np.ndarray,
                failed_at: int) -> SchurSplit | None:
    """Split ``M = matrix + shift I`` after ``dpotrf`` failed on it at pivot ``failed_at``.

    Args:
        matrix: (n, n) symmetric matrix, upper triangle valid (Fortran order).
        shift: the diagonal shift.
        norm: an estimate of ``||M||_2`` (the rounding errors scale with it).
        factor: (n, n) the failed ``dpotrf`` output (upper, ``clean=0``, Fortran order); it is
            overwritten with T.
        failed_at: LAPACK's ``info`` (1-based pivot where it stopped), > 0.

    Returns:
        The split, or None where it does not apply (failure at the first pivot) or the
        leading factor does not check out.
    """
    n, j = matrix.shape[0], failed_at - 1
    if j < 1:
        return None
    _set_trailing(factor, j, None)  # diag(R11, I)
    if not _leading_factor_holds(matrix, shift, factor, j, norm):
        return None
    padded = np.zeros((n, n - j), order="F")
    padded[:j] = matrix[:j, j:]
    coupling = blas.dtrsm(1.0, factor, padded, lower=0, trans_a=1, overwrite_b=1)[:j]
    _set_trailing(factor, j, coupling)
    cross = blas.dsyrk(1.0, coupling, trans=1, lower=0)  # upper triangle of R12^T R12
    upper = np.triu(matrix[j:, j:]) + shift * np.eye(n - j) - cross
    schur = np.triu(upper) + np.triu(upper, 1).T
    values, vectors = scipy.linalg.eigh(schur, check_finite=False)
    coupling_norm2 = float(scipy.linalg.eigvalsh(cross, lower=False, check_finite=False)[-1])
    # Backward error of the block factorisation: ~ n eps (||M|| + ||R12||^2), times a safety.
    error = ERROR_SAFETY * n * EPS64 * (norm + max(coupling_norm2, 0.0))
    return SchurSplit(factor, values, np.asfortranarray(vectors), error)
