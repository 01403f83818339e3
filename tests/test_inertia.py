"""inertia: the negative-eigenvalue count and solves of M from a failed Cholesky factorisation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from onnxcollide.linalg.inertia import schur_split


def _indefinite(rng: np.random.Generator, n: int, negatives: int) -> np.ndarray:
    """(n, n) symmetric with ``negatives`` eigenvalues in [-0.1, -1e-3], the rest in [1, 2]."""
    basis, _ = np.linalg.qr(rng.standard_normal((n, n)))
    values = np.linspace(1.0, 2.0, n)
    values[:negatives] = -np.linspace(1e-3, 0.1, negatives)
    return np.asfortranarray((basis * values) @ basis.T)


def _failed_cholesky(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    factor, info = scipy.linalg.lapack.dpotrf(np.array(matrix, order="F"), lower=0, clean=0)
    return factor, int(info)


@pytest.mark.parametrize(("n", "negatives"), [(200, 1), (300, 3), (400, 150)])
def test_schur_split_counts_the_negative_eigenvalues(rng, n, negatives):
    """The Schur complement of the leading block a failed dpotrf leaves has exactly as many
    negative eigenvalues as M (Sylvester), resolved at its rounding."""
    matrix = _indefinite(rng, n, negatives)
    factor, info = _failed_cholesky(matrix)
    assert info > 1
    split = schur_split(matrix, 0.0, 2.0, factor, info)
    assert split is not None
    assert split.resolved
    assert split.negatives == negatives
    assert split.schur_values.size == n - info + 1


def test_schur_split_with_a_shift_solves_the_shifted_matrix(rng):
    """With a shift, the split is of M = G + shift I: solve() applies M^{-1} to a block."""
    n = 250
    matrix = _indefinite(rng, n, 0)  # positive definite ...
    shift = -1.2  # ... until shifted: eigenvalues in [1, 1.2) become negative
    shifted = matrix + shift * np.eye(n)
    factor, info = _failed_cholesky(shifted)
    split = schur_split(np.triu(matrix), shift, 2.0, factor, info)
    assert split is not None
    assert split.negatives == int(np.sum(np.linalg.eigvalsh(shifted) < 0))
    block = rng.standard_normal((n, 3))
    np.testing.assert_allclose(split.solve(block), np.linalg.solve(shifted, block), rtol=1e-8,
                               atol=1e-10)


def test_schur_split_declines_a_wrong_leading_factor(rng):
    """A leading block that is not the Cholesky factor of M11 (another LAPACK could leave
    anything in a failed factorisation's output) is caught by the a posteriori check."""
    matrix = _indefinite(rng, 200, 2)
    factor, info = _failed_cholesky(matrix)
    factor[0, 1] += 1e-6
    assert schur_split(matrix, 0.0, 2.0, factor, info) is None


def test_schur_split_does_not_apply_at_the_first_pivot():
    """dpotrf stopping at pivot 1 leaves no leading block: None (the caller falls back)."""
    matrix = np.asfortranarray(np.diag([-1.0, 2.0, 3.0]))
    factor, info = _failed_cholesky(matrix)
    assert info == 1
    assert schur_split(matrix, 0.0, 3.0, factor, info) is None
